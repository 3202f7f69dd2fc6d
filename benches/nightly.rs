//! Whole-job benchmark: builds a synthetic world and runs the nightly job on it, then prints
//! a table of stage times, throughput and peak memory.
//!
//!     cargo bench --bench nightly -- --users 200000
//!
//! Results and the command that produced them go in benches/README.md.

use std::time::Instant;

use clap::Parser;
use redflower::config::Pipelines;
use redflower::model::DeviceKind;
use redflower::nightly;
use redflower::store::Store;
use redflower::synth::{self, WorldConfig};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = synth::DEMO_USERS)]
    users: u64,
    #[arg(long, default_value_t = synth::DEMO_DAYS)]
    days: u32,
    /// root to build the world in (default: a fresh temporary folder)
    #[arg(long)]
    root: Option<String>,
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceKind,
    /// cargo bench passes --bench; accept and ignore it
    #[arg(long, hide = true)]
    bench: bool,
}

/// Peak resident memory of this process, from /proc (Linux).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let temp = tempfile::tempdir()?;
    let root = args
        .root
        .unwrap_or_else(|| temp.path().display().to_string());
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let store = Store::open(&root)?;
        let end = WorldConfig::demo(args.users).end;
        let world = WorldConfig {
            days: args.days,
            ..WorldConfig::demo(args.users)
        };
        let started = Instant::now();
        let summary = synth::generate(&store, &world).await?;
        let synth_seconds = started.elapsed().as_secs_f64();
        let report = nightly::run(&store, end, &Pipelines::builtin(), args.device).await?;

        println!(
            "redflower nightly benchmark: {} users, {} days, {} events, device {:?}",
            args.users, args.days, summary.events, args.device
        );
        println!("| stage | seconds | throughput |");
        println!("|---|---:|---|");
        println!(
            "| synth | {synth_seconds:.1} | {:.0} events/s |",
            summary.events as f64 / synth_seconds
        );
        let raw_rows: u64 = report.sources.iter().map(|s| s.rows).sum();
        for stage in &report.stages {
            let throughput = match stage.stage.as_str() {
                "validate" => format!("{:.0} raw rows/s", raw_rows as f64 / stage.seconds),
                "features" => format!(
                    "{:.0} raw rows/s (two as-of dates)",
                    2.0 * raw_rows as f64 / stage.seconds
                ),
                "train" => format!("{} users", report.training_rows),
                "score" | "limits" => {
                    format!("{:.0} users/s", report.scored_users as f64 / stage.seconds)
                }
                _ => String::new(),
            };
            println!(
                "| {} | {:.1} | {} |",
                stage.stage, stage.seconds, throughput
            );
        }
        println!("| nightly total | {:.1} | |", report.seconds);
        println!();
        println!(
            "holdout AUC {:.4}, oracle AUC {}, {} distinct features, peak RSS {}",
            report.holdout.auc,
            report
                .oracle_auc
                .map_or("n/a".into(), |a| format!("{a:.4}")),
            report.features.last().map_or(0, |f| f.dictionary_size),
            peak_rss_mib().map_or("n/a".into(), |m| format!("{m:.0} MiB"))
        );
        anyhow::Ok(())
    })
}
