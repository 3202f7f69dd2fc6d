//! `redflower publish`: list versions, roll back, apply retention, load into Redis.

use anyhow::Result;
use clap::Subcommand;

use redflower::publish::{self, Manifest};
use redflower::sink;

use crate::args::RootArg;

#[derive(Subcommand)]
pub enum PublishAction {
    /// Every committed version, oldest first; the newest is what readers see.
    ///
    /// Example: redflower publish list --root ./data
    List(RootArg),
    /// Make an older version's table visible again (commits a new version pointing at it).
    ///
    /// Example: redflower publish rollback --root ./data --to 3
    Rollback {
        #[command(flatten)]
        root: RootArg,
        #[arg(long)]
        to: u64,
    },
    /// Keep the newest N versions and every version younger than D days; delete older
    /// manifests, and the data and run folders (decision records) no kept version needs.
    ///
    /// Example: redflower publish retain --root ./data --keep 14 --keep-days 760
    Retain {
        #[command(flatten)]
        root: RootArg,
        #[arg(long)]
        keep: usize,
        /// versions younger than this are kept whatever their number
        #[arg(long, default_value_t = 0)]
        keep_days: u32,
    },
    /// Load the newest committed table into Redis under versioned keys, then switch
    /// `<prefix>:current` to it; versions past the newest --keep are deleted.
    ///
    /// Example: redflower publish sink --root ./data --sink redis://127.0.0.1:6379
    Sink {
        #[command(flatten)]
        root: RootArg,
        /// redis://[[USER]:PASSWORD@]HOST[:PORT][/DB], or REDFLOWER_SINK_URL
        #[arg(long, env = "REDFLOWER_SINK_URL", hide_env_values = true)]
        sink: String,
        #[arg(long, default_value = sink::DEFAULT_PREFIX)]
        prefix: String,
        #[arg(long, default_value_t = sink::DEFAULT_KEEP)]
        keep: usize,
    },
}

pub async fn run(action: PublishAction) -> Result<()> {
    match action {
        PublishAction::List(root) => {
            let store = root.open()?;
            let versions = publish::versions(&store).await?;
            if versions.is_empty() {
                println!("nothing is published under {}", store.url());
            }
            print_versions(&versions);
        }
        PublishAction::Rollback { root, to } => {
            let manifest = publish::rollback(&root.open()?, to).await?;
            println!(
                "version {} committed: readers now see version {to}'s table ({} rows, as of {})",
                manifest.version, manifest.row_count, manifest.as_of
            );
        }
        PublishAction::Retain {
            root,
            keep,
            keep_days,
        } => {
            let policy = publish::Keep {
                versions: keep,
                days: keep_days,
            };
            let report = publish::retain(&root.open()?, policy).await?;
            println!(
                "kept the newest {keep} versions and those younger than {keep_days} days: deleted {} manifests, {} data files and {} run folders",
                report.manifests_deleted, report.data_files_deleted, report.run_folders_deleted
            );
        }
        PublishAction::Sink {
            root,
            sink: url,
            prefix,
            keep,
        } => {
            let target = crate::args::sink_target(&url, &prefix)?;
            let load = sink::load_latest(&root.open()?, &target, keep).await?;
            println!(
                "version {} loaded into Redis at {} as {} keys ({prefix}:v{}:<user id, 12 digits>) and switched {prefix}:current to it in {:.1}s; deleted versions {:?}",
                load.version,
                load.address,
                load.keys,
                load.version,
                load.seconds,
                load.versions_deleted
            );
        }
    }
    Ok(())
}

fn print_versions(versions: &[Manifest]) {
    println!(
        "{:>8}  {:<10}  {:>9}  {:>10}  {:<26}  {:<10}  notes",
        "version", "as of", "rows", "mean limit", "model", "policy"
    );
    for m in versions {
        let mut notes = Vec::new();
        if let Some(from) = m.rollback_of {
            notes.push(format!("rollback to version {from}"));
        }
        if !m.forced_past.is_empty() {
            notes.push(format!("forced past: {}", m.forced_past.join("; ")));
        }
        println!(
            "{:>8}  {:<10}  {:>9}  {:>10.0}  {:<26}  {:<10}  {}",
            m.version,
            m.as_of,
            m.row_count,
            m.mean_limit,
            m.model_version,
            m.policy_version,
            notes.join("; ")
        );
    }
}
