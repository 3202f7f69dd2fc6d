//! The feature job next to DuckDB on the same Parquet: builds (or reuses) a synthetic world,
//! times redflower's feature build for one as-of date, then DuckDB running the same family
//! queries (benches/duckdb_features.py), and prints both times, the ratio, rows/s and peak
//! memory. Needs `python3 -m pip install duckdb`.
//!
//!     cargo bench --bench features -- --users 200000
//!
//! Record results in benches/README.md.

use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};
use chrono::NaiveDate;
use clap::Parser;
use redflower::features::{self, FeatureConfig, FeatureDictionary};
use redflower::nightly::{self, Pipelines};
use redflower::sources;
use redflower::store::Store;
use redflower::synth::{self, WorldConfig};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 200_000)]
    users: u64,
    #[arg(long, default_value_t = 180)]
    days: u32,
    /// local root to build the world in, or reuse if it already holds this world
    #[arg(long, default_value = "/tmp/redflower-bench-features")]
    root: String,
    #[arg(long, default_value = "python3")]
    python: String,
    /// cargo bench passes --bench; accept and ignore it
    #[arg(long, hide = true)]
    bench: bool,
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmHWM:"))?.to_string();
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Runtime::new()?;
    let end = NaiveDate::from_ymd_opt(2026, 11, 1).context("date")?;
    let world = WorldConfig {
        users: args.users,
        days: args.days,
        end,
        seed: 42,
    };
    let (store, raw_rows, seconds, feature_rows, distinct, queries) = runtime.block_on(async {
        let store = Store::open(&args.root)?;
        if synth::read_world(&store).await?.as_ref() != Some(&world) {
            eprintln!(
                "building a {}-user world in {} ...",
                args.users,
                store.url()
            );
            synth::generate(&store, &world).await?;
        }
        let pipelines = Pipelines::builtin();
        let ctx = nightly::session(&pipelines.nightly.engine)?;
        let reports = sources::validate_and_register(&ctx, &store, end, 0.01).await?;
        let raw_rows: u64 = reports.iter().map(|r| r.rows).sum();
        let config: &FeatureConfig = &pipelines.features;
        let mut dictionary = FeatureDictionary::default();
        let started = Instant::now();
        let set = features::build(&ctx, &store, config, &mut dictionary, end).await?;
        let seconds = started.elapsed().as_secs_f64();
        let snapshot = sources::snapshot_before(&store, "profiles", end).await?;
        let queries = features::family_queries(config, end, snapshot);
        anyhow::Ok((
            store,
            raw_rows,
            seconds,
            set.nnz(),
            set.distinct_features(),
            queries,
        ))
    })?;
    let redflower_peak = peak_rss_mib();

    let queries_file = std::env::temp_dir().join("redflower-family-queries.json");
    std::fs::write(&queries_file, serde_json::to_vec(&queries)?)?;
    let local_root = store.url().trim_start_matches("file://").to_string();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/duckdb_features.py");
    let output = Command::new(&args.python)
        .args([
            script,
            &local_root,
            &queries_file.display().to_string(),
            &threads.to_string(),
        ])
        .output()
        .with_context(|| format!("running {} {script}", args.python))?;
    if !output.status.success() {
        bail!(
            "DuckDB side failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let duck: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let duck_seconds = duck["seconds"].as_f64().context("DuckDB seconds")?;

    println!(
        "feature job, {} users, {} days, {raw_rows} raw rows, {} family queries, {threads} threads, as of {end}",
        args.users,
        args.days,
        queries.len()
    );
    println!("| engine | seconds | raw rows/s | result | peak RSS |");
    println!("|---|---:|---:|---|---:|");
    println!(
        "| redflower (DataFusion) | {seconds:.1} | {:.0} | {feature_rows} non-zeros, {distinct} features | {redflower_peak:.0} MiB |",
        raw_rows as f64 / seconds
    );
    println!(
        "| DuckDB {} | {duck_seconds:.1} | {:.0} | {} grouped rows | {:.0} MiB |",
        duck["duckdb"].as_str().unwrap_or("?"),
        raw_rows as f64 / duck_seconds,
        duck["rows"],
        duck["peak_rss_mib"].as_f64().unwrap_or(f64::NAN)
    );
    println!();
    println!("redflower / DuckDB time: {:.2}", seconds / duck_seconds);
    Ok(())
}
