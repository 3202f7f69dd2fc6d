//! `redflower show`: one user's answer from the newest published table, read through the
//! same snapshot code `serve` answers from.

use anyhow::{Context, Result};
use clap::Args;

use redflower::publish::Snapshot;

use crate::args::RootArg;

#[derive(Args)]
pub struct ShowArgs {
    #[command(flatten)]
    root: RootArg,
    #[arg(long)]
    user: u64,
}

pub async fn run(args: ShowArgs) -> Result<()> {
    let store = args.root.open()?;
    let snapshot = Snapshot::latest(&store)
        .await?
        .with_context(|| format!("nothing is published under {}", store.url()))?;
    let manifest = &snapshot.manifest;
    let answer = snapshot.answer(args.user).with_context(|| {
        format!(
            "user {} is not in version {} of the limit table ({} rows)",
            args.user,
            manifest.version,
            snapshot.len()
        )
    })?;
    println!(
        "version {} (as of {}, model {}, policy {})",
        manifest.version, manifest.as_of, manifest.model_version, manifest.policy_version
    );
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(())
}
