//! `redflower erase`: records a user's erasure request (create-only, never lost), and with
//! `--apply` rewrites the data already derived without every erased user now instead of at
//! the next night (and deletes their keys from Redis with `--sink`).

use anyhow::{Result, bail};
use clap::Args;

use redflower::audit;
use redflower::erasure;
use redflower::sink;

use crate::args::RootArg;

#[derive(Args)]
pub struct EraseArgs {
    #[command(flatten)]
    root: RootArg,
    /// the user to erase (leave out with --apply to apply the requests already recorded)
    #[arg(long, requires = "reason")]
    user: Option<u64>,
    /// why: what the user asked, the ticket (kept in the record)
    #[arg(long)]
    reason: Option<String>,
    /// rewrite features, scores, quarantine copies, published tables and decision records
    /// without every erased user now
    #[arg(long)]
    apply: bool,
    /// also delete erased users' keys from every version loaded into this Redis
    #[arg(
        long,
        env = "REDFLOWER_SINK_URL",
        hide_env_values = true,
        requires = "apply"
    )]
    sink: Option<String>,
    #[arg(long, default_value = sink::DEFAULT_PREFIX)]
    prefix: String,
}

pub async fn run(args: EraseArgs) -> Result<()> {
    let store = args.root.open()?;
    if args.user.is_none() && !args.apply {
        bail!("nothing to do: give --user ID --reason TEXT, or --apply");
    }
    if let Some(user) = args.user {
        let reason = args.reason.as_deref().unwrap_or_default();
        let (record, new) = erasure::request(&store, user, reason).await?;
        match new {
            true => println!(
                "erasure of user {user} recorded at {}/{} ({}); from now on no run reads them and no read path answers for them",
                store.url(),
                redflower::store::layout::erasure(user),
                record.requested_at
            ),
            false => println!(
                "user {user}'s erasure was already recorded on {} ({}); it stands",
                record.requested_at, record.reason
            ),
        }
    }
    if !args.apply {
        println!("their earlier data is rewritten by the next nightly run, or now with --apply");
        return Ok(());
    }
    let erased = audit::erase::apply(&store).await?;
    println!(
        "applied {} pending erasures: {} rows removed from {} feature, score and quarantine files; {} rows from {} published files, {} versions rewritten",
        erased.users.len(),
        erased.rows_removed,
        erased.files_rewritten,
        erased.published.rows_removed,
        erased.published.files_rewritten,
        erased.published.manifests_rewritten
    );
    if let Some(url) = &args.sink {
        let target = crate::args::sink_target(url, &args.prefix)?;
        let deleted = sink::erase(&target, &erasure::erased(&store).await?).await?;
        println!(
            "deleted {deleted} keys of erased users from Redis at {}",
            target.address
        );
    }
    println!(
        "raw sources (raw/, reference/) and a synthetic world's truth/ are the source systems' to erase"
    );
    Ok(())
}
