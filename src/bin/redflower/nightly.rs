//! `redflower nightly`: one date, a backfill of dates, or one scoring shard.

use std::time::Duration;

use anyhow::{Context, Result};
use chrono::NaiveDate;
use clap::{Args, CommandFactory};

use redflower::engine::Engine;
use redflower::nightly::{self, RunOptions, RunOutcome, Stage};
use redflower::sink;
use redflower::store::Store;
use redflower::user_index::UserShard;

use crate::args::{DeviceArg, PipelinesArg, RootArg};
use crate::print;

#[derive(Args)]
pub struct NightlyArgs {
    #[command(flatten)]
    root: RootArg,
    /// the run date: features use only data from before it
    #[arg(long, required_unless_present = "from", conflicts_with_all = ["from", "to"])]
    date: Option<NaiveDate>,
    /// backfill: run every date from --from to --to (inclusive), in order
    #[arg(long, requires = "to")]
    from: Option<NaiveDate>,
    #[arg(long, requires = "from")]
    to: Option<NaiveDate>,
    /// run a date again even if it finished (runs/<date>/report.json exists)
    #[arg(long)]
    rerun: bool,
    #[command(flatten)]
    pipelines: PipelinesArg,
    #[command(flatten)]
    device: DeviceArg,
    /// publish even if the gates of nightly.toml [publish] refuse (recorded in the manifest)
    #[arg(long)]
    force: bool,
    /// continue the interrupted run of the date from its checkpoints (runs/<date>/checkpoints/)
    #[arg(long, conflicts_with = "rerun")]
    resume: bool,
    /// stop after this stage's checkpoint (validate, features, train, score, limits,
    /// suggest: the last three run together, one user part at a time); `--resume` continues.
    /// `--stop-after train` prepares sharded user parts
    #[arg(long)]
    stop_after: Option<Stage>,
    /// decide only the user parts j with j mod COUNT == INDEX ([publish] parts) of a run
    /// stopped after train: their scores, limits, suggestions, decision records and table
    /// parts; then exit. `--resume` does any part left and publishes one table
    #[arg(long, conflicts_with_all = ["from", "to", "stop_after"])]
    shard: Option<UserShard>,
    /// where the DataFusion queries run: local, ballista://HOST:PORT (a Ballista
    /// scheduler), or ballista://standalone (a scheduler and executor in this process)
    #[arg(long, default_value = "local")]
    engine: Engine,
    /// seconds the date's lease lasts without renewal (a run renews it every third)
    #[arg(long, default_value_t = RunOptions::LEASE_TTL.as_secs())]
    lease_seconds: u64,
    /// print the run report as JSON instead of the summary
    #[arg(long)]
    json: bool,
    /// also load the published table into Redis (redis://[[USER]:PASSWORD@]HOST[:PORT][/DB];
    /// or from REDFLOWER_SINK_URL, which keeps the password off the command line)
    #[arg(long, env = "REDFLOWER_SINK_URL", hide_env_values = true)]
    sink: Option<String>,
}

pub async fn run(args: NightlyArgs) -> Result<()> {
    let pipelines = args.pipelines.load()?;
    let store = args.root.open_with(&pipelines)?;
    let options = RunOptions {
        force: args.force,
        resume: args.resume,
        rerun: args.rerun,
        stop_after: args.stop_after,
        engine: args.engine.clone(),
        lease_ttl: Duration::from_secs(args.lease_seconds.max(3)),
        ..RunOptions::new(args.device.device)
    };
    if let (Some(shard), Some(date)) = (args.shard, args.date) {
        let report = nightly::decide_shard(&store, date, &pipelines, &options, shard)
            .await
            .map_err(|error| failed(&store, date, error))?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            println!(
                "nightly {date}: shard {} decided {} users in {} user parts ({} done before) with {} ({:.1}s); run `redflower nightly --root {} --date {date} --resume` once every shard is done",
                report.shard,
                report.users,
                report.parts.len(),
                report.parts_resumed,
                report.model_version,
                report.seconds,
                args.root.root
            );
        }
        return Ok(());
    }
    for date in dates(&args) {
        if nightly::nothing_to_do(&store, date, &options).await? {
            println!(
                "nightly {date}: already done on {} (runs/{date}/report.json); nothing to do (--rerun runs it again)",
                store.url()
            );
            continue;
        }
        let outcome = nightly::run_with(&store, date, &pipelines, &options)
            .await
            .map_err(|error| failed(&store, date, error))?;
        match outcome {
            RunOutcome::Published(report) => {
                if let Some(url) = &args.sink {
                    let target = crate::args::sink_target(url, sink::DEFAULT_PREFIX)?;
                    // the date is done once published: the load is retried on its own
                    let load = sink::load_latest(&store, &target, sink::DEFAULT_KEEP)
                        .await
                        .with_context(|| {
                            format!(
                                "the table is published, but not loaded into Redis: run `redflower publish sink --root {} --sink <url>` (it resumes where this load stopped)",
                                store.url()
                            )
                        })?;
                    println!(
                        "  redis       version {} loaded as {} keys into {} ({:.1}s)",
                        load.version, load.keys, load.address, load.seconds
                    );
                }
                if args.json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    print::nightly_summary(&report);
                }
            }
            RunOutcome::Stopped { after, run_id } => println!(
                "nightly {date}: run {run_id} stopped after {after} as asked; `--resume` continues it"
            ),
        }
    }
    Ok(())
}

/// `--date`, or every date of `--from` .. `--to`; a backwards range is a usage error (exit 2).
fn dates(args: &NightlyArgs) -> Vec<NaiveDate> {
    match (args.date, args.from, args.to) {
        (Some(date), _, _) => vec![date],
        (None, Some(from), Some(to)) => nightly::backfill_dates(from, to).unwrap_or_else(|| {
            crate::Cli::command()
                .error(
                    clap::error::ErrorKind::ValueValidation,
                    format!("--from {from} is after --to {to}"),
                )
                .exit()
        }),
        // clap requires --date or both of --from and --to
        _ => Vec::new(),
    }
}

/// The run's error, kept whole (its cause sets the exit code), saying what stayed as it was.
fn failed(store: &Store, date: NaiveDate, error: nightly::NightlyError) -> anyhow::Error {
    anyhow::Error::new(error).context(format!(
        "nightly run for {date} on {} failed; the last published table is unchanged",
        store.url()
    ))
}
