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
use clap::Parser;
use redflower::config::Pipelines;
use redflower::features::{self, FeatureConfig, FeatureDictionary};
use redflower::sources;
use redflower::store::Store;
use redflower::synth::{self, WorldConfig};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 200_000)]
    users: u64,
    #[arg(long, default_value_t = synth::DEMO_DAYS)]
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
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Runtime::new()?;
    let end = WorldConfig::demo(args.users).end;
    let world = WorldConfig {
        days: args.days,
        ..WorldConfig::demo(args.users)
    };
    let (store, raw_rows, seconds, feature_rows, distinct, queries, validation_seconds) =
        runtime.block_on(async {
            let store = Store::open(&args.root)?;
            synth::ensure_world(&store, &world).await?;
            let pipelines = Pipelines::builtin();
            let ctx = redflower::engine::session(&pipelines.nightly.engine)?;
            // not in the feature job's time, as DuckDB's queries skip validation; printed beside it
            let validating = Instant::now();
            let reports = sources::validate_and_register(&ctx, &store, end, 0.01).await?;
            let validation_seconds = validating.elapsed().as_secs_f64();
            let raw_rows: u64 = reports.iter().map(|r| r.rows).sum();
            let config: &FeatureConfig = &pipelines.features;
            let mut dictionary = FeatureDictionary::default();
            let started = Instant::now();
            let set = features::build(&ctx, &store, config, &mut dictionary, end).await?;
            let seconds = started.elapsed().as_secs_f64();
            sources::drop_staging(&store, &ctx).await?;
            let snapshot = sources::snapshot_before(&store, "profiles", end).await?;
            let queries =
                [true, false].map(|fused| features::family_queries(config, end, snapshot, fused));
            anyhow::Ok((
                store,
                raw_rows,
                seconds,
                set.nnz(),
                set.distinct_features(),
                queries,
                validation_seconds,
            ))
        })?;
    let redflower_peak = peak_rss_mib();

    let local_root = store.url().trim_start_matches("file://").to_string();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let [fused, per_family] = &queries;
    let duck_fused = run_duckdb(&args.python, &local_root, fused, threads)?;
    let duck_per_family = run_duckdb(&args.python, &local_root, per_family, threads)?;

    println!(
        "feature job, {} users, {} days, {raw_rows} raw rows, {threads} threads, as of {end}",
        args.users, args.days,
    );
    println!(
        "redflower's validation before it (quarantine, clean tables, staging of deduplicated sources): {validation_seconds:.1} s"
    );
    println!("| engine | queries | seconds | raw rows/s | result | peak RSS |");
    println!("|---|---:|---:|---:|---|---:|");
    println!(
        "| redflower (DataFusion) | {} fused | {seconds:.1} | {:.0} | {feature_rows} non-zeros, {distinct} features | {redflower_peak:.0} MiB |",
        fused.len(),
        raw_rows as f64 / seconds
    );
    for (duck, plan, n) in [
        (&duck_fused, "fused", fused.len()),
        (&duck_per_family, "per family", per_family.len()),
    ] {
        println!(
            "| DuckDB {} | {n} {plan} | {:.1} | {:.0} | {} grouped rows | {:.0} MiB |",
            duck.version,
            duck.seconds,
            raw_rows as f64 / duck.seconds,
            duck.rows,
            duck.peak_rss_mib
        );
    }
    println!();
    println!(
        "redflower / DuckDB time: {:.2} (DuckDB on redflower's fused queries), {:.2} (DuckDB on one query per family and window)",
        seconds / duck_fused.seconds,
        seconds / duck_per_family.seconds
    );
    Ok(())
}

struct DuckRun {
    seconds: f64,
    rows: u64,
    peak_rss_mib: f64,
    version: String,
}

/// Runs benches/duckdb_features.py on `queries` in a fresh Python process.
fn run_duckdb(
    python: &str,
    root: &str,
    queries: &[(String, String)],
    threads: usize,
) -> anyhow::Result<DuckRun> {
    let queries_file = std::env::temp_dir().join("redflower-family-queries.json");
    std::fs::write(&queries_file, serde_json::to_vec(queries)?)?;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/duckdb_features.py");
    let output = Command::new(python)
        .args([
            script,
            root,
            &queries_file.display().to_string(),
            &threads.to_string(),
        ])
        .output()
        .with_context(|| format!("running {python} {script}"))?;
    if !output.status.success() {
        bail!(
            "DuckDB side failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let duck: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    Ok(DuckRun {
        seconds: duck["seconds"].as_f64().context("DuckDB seconds")?,
        rows: duck["rows"].as_u64().context("DuckDB rows")?,
        peak_rss_mib: duck["peak_rss_mib"].as_f64().unwrap_or(f64::NAN),
        version: duck["duckdb"].as_str().unwrap_or("?").to_string(),
    })
}
