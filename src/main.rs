//! The `redflower` command: parses arguments, sets up logging, calls the library, prints a
//! summary. Nothing here decides anything about data.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use chrono::NaiveDate;
use clap::{Parser, Subcommand};
use datafusion::arrow::util::pretty::pretty_format_batches;
use tracing_subscriber::EnvFilter;

use redflower::model::evaluation::Evaluation;
use redflower::model::{self, DeviceKind, ModelCard};
use redflower::nightly::{self, NightlyReport, Pipelines, RunOptions};
use redflower::store::Store;
use redflower::synth::{self, WorldConfig};
use redflower::training::{self, Promote};

/// Nightly credit limits from fragmented evidence.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// how logs on stderr look: text for people, json (one object per line) for collectors
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Build a synthetic world of raw fragments (and its true PD) under a root.
    ///
    /// Example: redflower synth --users 50000 --days 180 --out ./data
    Synth {
        #[arg(long, default_value_t = 50_000)]
        users: u64,
        /// days of history, ending the day before --end
        #[arg(long, default_value_t = 180)]
        days: u32,
        /// first day without data; nightly runs for this date see the whole world
        #[arg(long, default_value = "2026-11-01")]
        end: NaiveDate,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// root URL: a local path, file:///abs/path or memory://name
        #[arg(long, default_value = "./data")]
        out: String,
    },
    /// Run the nightly job for one date: validate, features, train, score, limits, publish.
    ///
    /// Example: redflower nightly --root ./data --date 2026-11-01
    Nightly {
        #[arg(long)]
        root: String,
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
        /// folder with features.toml, limits.toml and nightly.toml (default: the shipped ones)
        #[arg(long)]
        pipelines: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "cpu")]
        device: DeviceKind,
        /// publish even if the gates of nightly.toml [publish] refuse (recorded in the manifest)
        #[arg(long)]
        force: bool,
        /// continue the interrupted run of the date from its checkpoints (runs/<date>/checkpoints/)
        #[arg(long, conflicts_with = "rerun")]
        resume: bool,
        /// stop after this stage's checkpoint (validate, features, train, score, limits,
        /// suggest); `--resume` continues. `--stop-after train` prepares sharded scoring
        #[arg(long)]
        stop_after: Option<nightly::Stage>,
        /// score only slice INDEX of COUNT (0-based) of a run stopped after train, then exit;
        /// when every shard is done, `--resume` merges them and publishes one table
        #[arg(long, conflicts_with_all = ["from", "to", "stop_after"])]
        shard: Option<redflower::scoring::Shard>,
        /// where the DataFusion queries run: local, ballista://HOST:PORT (a Ballista
        /// scheduler), or ballista://standalone (a scheduler and executor in this process)
        #[arg(long, default_value = "local")]
        engine: nightly::Engine,
        /// seconds the date's lease lasts without renewal (a run renews it every third)
        #[arg(long, default_value_t = 600)]
        lease_seconds: u64,
        /// print the run report as JSON instead of the summary
        #[arg(long)]
        json: bool,
        /// also load the published table into Redis (redis://[:PASSWORD@]HOST[:PORT][/DB])
        #[arg(long)]
        sink: Option<String>,
    },
    /// Answer GET /v1/limits/{user_id} over HTTP from the newest published table, following
    /// new versions as they are committed. Stop with Ctrl-C (or SIGTERM).
    ///
    /// Example: redflower serve --root ./data --addr 127.0.0.1:8080
    Serve {
        #[arg(long)]
        root: String,
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: std::net::SocketAddr,
        /// require `Authorization: Bearer TOKEN` on /v1/
        #[arg(long, env = "REDFLOWER_SERVE_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// how often to look for a newer committed version, in milliseconds
        #[arg(long, default_value_t = 1000)]
        poll_ms: u64,
    },
    /// Build a 50,000-user world in ./data and run the nightly job on it.
    ///
    /// Example: redflower demo
    Demo {
        #[arg(long, default_value = "./data")]
        root: String,
        #[arg(long, default_value_t = 50_000)]
        users: u64,
        #[arg(long, value_enum, default_value = "cpu")]
        device: DeviceKind,
    },
    /// Train a model on the newest labelled window of a world (or on your own table), register
    /// it under models/ with its metrics and HTML report.
    ///
    /// Examples: redflower train --root ./data --date 2026-11-01 --promote
    ///           redflower train --root ./byo --table ./loans.csv --label defaulted
    Train {
        #[arg(long)]
        root: String,
        /// the run date whose training window to use (features as of date - horizon)
        #[arg(long, required_unless_present = "table")]
        date: Option<NaiveDate>,
        /// train on this Parquet or CSV table instead of the world (path or URL)
        #[arg(long, requires = "label")]
        table: Option<String>,
        /// the 0/1 label column of --table
        #[arg(long, requires = "table")]
        label: Option<String>,
        #[arg(long)]
        pipelines: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "cpu")]
        device: DeviceKind,
        /// make the new model the champion the nightly job scores with
        #[arg(long)]
        promote: bool,
        #[arg(long)]
        json: bool,
    },
    /// Evaluate a registered model on the holdout of a date's training window, next to the
    /// champion; writes models/<version>/evaluations/<date>/.
    ///
    /// Example: redflower evaluate --root ./data --model 2026-08-03-e10e27e0ff12 --date 2026-11-01
    Evaluate {
        #[arg(long)]
        root: String,
        #[arg(long)]
        model: String,
        #[arg(long)]
        date: NaiveDate,
        #[arg(long)]
        pipelines: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "cpu")]
        device: DeviceKind,
    },
    /// List published versions, roll back to one, or apply retention.
    Publish {
        #[command(subcommand)]
        action: PublishAction,
    },
    /// List, compare and promote registered models.
    Models {
        #[command(subcommand)]
        action: ModelsAction,
    },
    /// Print a user's row from the newest published limit table.
    ///
    /// Example: redflower show --root ./data --user 42
    Show {
        #[arg(long)]
        root: String,
        #[arg(long)]
        user: u64,
    },
}

#[derive(Subcommand)]
enum PublishAction {
    /// Every committed version, oldest first; the newest is what readers see.
    ///
    /// Example: redflower publish list --root ./data
    List {
        #[arg(long)]
        root: String,
    },
    /// Make an older version's table visible again (commits a new version pointing at it).
    ///
    /// Example: redflower publish rollback --root ./data --to 3
    Rollback {
        #[arg(long)]
        root: String,
        #[arg(long)]
        to: u64,
    },
    /// Keep the newest N versions; delete older manifests and data no kept version needs.
    ///
    /// Example: redflower publish retain --root ./data --keep 14
    Retain {
        #[arg(long)]
        root: String,
        #[arg(long)]
        keep: usize,
    },
    /// Load the newest committed table into Redis under versioned keys, then switch
    /// `<prefix>:current` to it; versions past the newest --keep are deleted.
    ///
    /// Example: redflower publish sink --root ./data --sink redis://127.0.0.1:6379
    Sink {
        #[arg(long)]
        root: String,
        #[arg(long)]
        sink: String,
        #[arg(long, default_value = "redflower:limits")]
        prefix: String,
        #[arg(long, default_value_t = 2)]
        keep: usize,
    },
}

#[derive(Subcommand)]
enum ModelsAction {
    /// Every registered model, newest first; the champion is marked.
    ///
    /// Example: redflower models list --root ./data
    List {
        #[arg(long)]
        root: String,
    },
    /// Two models on the same held-out users of a date's training window.
    ///
    /// Example: redflower models compare --root ./data --date 2026-11-01 A B
    Compare {
        #[arg(long)]
        root: String,
        #[arg(long)]
        date: NaiveDate,
        #[arg(long)]
        pipelines: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "cpu")]
        device: DeviceKind,
        first: String,
        second: String,
    },
    /// Make a model the champion the nightly job scores with.
    ///
    /// Example: redflower models promote --root ./data 2026-08-03-e10e27e0ff12
    Promote {
        #[arg(long)]
        root: String,
        version: String,
    },
}

/// What `evaluate` and `models compare` both need: the root, the configuration, the device
/// and the date's labelled window.
async fn evaluation_setup(
    root: &str,
    date: NaiveDate,
    pipelines: Option<PathBuf>,
    device: DeviceKind,
) -> Result<(
    Store,
    Pipelines,
    burn::tensor::Device,
    training::LabelledWindow,
)> {
    let store = Store::open(root)?;
    let pipelines = load_pipelines(pipelines)?;
    let device = device.device()?;
    let window = training::labelled_window(&store, date, &pipelines).await?;
    Ok((store, pipelines, device, window))
}

fn load_pipelines(dir: Option<PathBuf>) -> Result<Pipelines> {
    Ok(match dir {
        Some(dir) => Pipelines::load(&dir)?,
        None => Pipelines::builtin(),
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("warn,redflower=info")),
        )
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            // a failed nightly run says what kind of failure it was (see the README)
            match e.downcast_ref::<RunFailed>() {
                Some(failed) => ExitCode::from(nightly::exit_code(&failed.error)),
                None => ExitCode::FAILURE,
            }
        }
    }
}

/// A nightly run that failed, kept whole so the exit code can tell the scheduler what to do.
#[derive(Debug)]
struct RunFailed {
    date: NaiveDate,
    root: String,
    error: nightly::NightlyError,
}

impl std::fmt::Display for RunFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "nightly run for {} on {} failed; the last published table is unchanged: {}",
            self.date, self.root, self.error
        )
    }
}

impl std::error::Error for RunFailed {}

async fn execute(command: Command) -> Result<()> {
    match command {
        Command::Synth {
            users,
            days,
            end,
            seed,
            out,
        } => {
            let store = Store::open(&out)?;
            let world = WorldConfig {
                users,
                days,
                end,
                seed,
            };
            let started = std::time::Instant::now();
            let summary = synth::generate(&store, &world).await?;
            println!(
                "synth: {} users, {} events, {} certificates, {} statements, {} limit requests in {} files under {} ({:.1}s); mean true PD {:.3}",
                summary.users,
                summary.events,
                summary.certificates,
                summary.repayments,
                summary.limit_requests,
                summary.files,
                store.url(),
                started.elapsed().as_secs_f64(),
                summary.mean_true_pd
            );
        }
        Command::Nightly {
            root,
            date,
            from,
            to,
            rerun,
            pipelines,
            device,
            force,
            resume,
            stop_after,
            shard,
            engine,
            lease_seconds,
            json,
            sink,
        } => {
            let store = Store::open(&root)?;
            let pipelines = load_pipelines(pipelines)?;
            let lease_ttl = std::time::Duration::from_secs(lease_seconds.max(3));
            let failed = |date: NaiveDate| {
                let root = store.url().to_string();
                move |error| RunFailed { date, root, error }
            };
            if let (Some(shard), Some(date)) = (shard, date) {
                let report =
                    nightly::score_shard(&store, date, &pipelines, device, shard, lease_ttl)
                        .await
                        .map_err(failed(date))?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    println!(
                        "nightly {date}: shard {} scored {} users with {} ({:.1}s); run `redflower nightly --root {root} --date {date} --resume` once every shard is done",
                        report.shard, report.users, report.model_version, report.seconds
                    );
                }
                return Ok(());
            }
            let options = RunOptions {
                force,
                resume,
                stop_after,
                engine,
                lease_ttl,
                ..RunOptions::new(device)
            };
            let dates: Vec<NaiveDate> = match (date, from, to) {
                (Some(date), _, _) => vec![date],
                (None, Some(from), Some(to)) if from <= to => {
                    from.iter_days().take_while(|d| *d <= to).collect()
                }
                _ => anyhow::bail!("--from must not be after --to"),
            };
            for date in dates {
                if !rerun && !resume && nightly::finished(&store, date).await? {
                    println!(
                        "nightly {date}: already done on {} (runs/{date}/report.json); nothing to do (--rerun runs it again)",
                        store.url()
                    );
                    continue;
                }
                let outcome = nightly::run_with(&store, date, &pipelines, &options)
                    .await
                    .map_err(failed(date))?;
                let report = match outcome {
                    nightly::RunOutcome::Published(report) => report,
                    nightly::RunOutcome::Stopped { after, run_id } => {
                        println!(
                            "nightly {date}: run {run_id} stopped after {after} as asked; `--resume` continues it"
                        );
                        continue;
                    }
                };
                if let Some(sink) = &sink {
                    let load = sink_table(&store, sink, "redflower:limits", 2).await?;
                    println!(
                        "  redis       version {} loaded as {} keys into {} ({:.1}s)",
                        load.version, load.keys, load.address, load.seconds
                    );
                }
                if json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    print_summary(&report);
                }
            }
        }
        Command::Demo {
            root,
            users,
            device,
        } => {
            let store = Store::open(&root)?;
            let world = WorldConfig {
                users,
                days: 180,
                end: NaiveDate::from_ymd_opt(2026, 11, 1).context("demo date")?,
                seed: 42,
            };
            if synth::holds_world(&store, &world).await? {
                println!(
                    "demo: reusing the {users}-user world already in {}",
                    store.url()
                );
            } else {
                println!(
                    "demo: generating a {users}-user world in {} ...",
                    store.url()
                );
                let started = std::time::Instant::now();
                let summary = synth::generate(&store, &world).await?;
                println!(
                    "demo: {} events, {} certificates, {} statements in {:.1}s",
                    summary.events,
                    summary.certificates,
                    summary.repayments,
                    started.elapsed().as_secs_f64()
                );
            }
            let report = nightly::run(&store, world.end, &Pipelines::builtin(), device).await?;
            print_summary(&report);
        }
        Command::Train {
            root,
            date,
            table,
            label,
            pipelines,
            device,
            promote,
            json,
        } => {
            let store = Store::open(&root)?;
            let pipelines = load_pipelines(pipelines)?;
            let device = device.device()?;
            let promote = if promote {
                Promote::Always
            } else {
                Promote::Never
            };
            let started = std::time::Instant::now();
            let outcome = match (table, label, date) {
                (Some(table), Some(label), _) => {
                    let byo = redflower::table::training_set(&table, &label).await?;
                    println!(
                        "table {table}: {} rows ({} without a label, left out), {} numeric and {} categorical columns -> {} features{}",
                        byo.rows,
                        byo.unlabelled,
                        byo.numeric_columns.len(),
                        byo.categorical_columns.len(),
                        byo.dictionary.len(),
                        if byo.skipped_columns.is_empty() {
                            String::new()
                        } else {
                            format!("; constant, skipped: {}", byo.skipped_columns.join(", "))
                        }
                    );
                    training::train_and_register(
                        &store,
                        &byo.set,
                        &byo.dictionary,
                        false,
                        format!("table {table}, label column '{label}'"),
                        &pipelines,
                        &device,
                        promote,
                    )
                    .await?
                    .1
                }
                (_, _, Some(date)) => {
                    let window = training::labelled_window(&store, date, &pipelines).await?;
                    training::train_and_register(
                        &store,
                        &window.set,
                        &window.dictionary,
                        true,
                        window.data.clone(),
                        &pipelines,
                        &device,
                        promote,
                    )
                    .await?
                    .1
                }
                _ => anyhow::bail!("train needs --date, or --table with --label"),
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&outcome)?);
            } else {
                print_evaluation(&outcome.card, &outcome.evaluation, &outcome.report);
                println!(
                    "  champion    {}",
                    if outcome.promoted {
                        "promoted: the nightly job scores with this model from now on"
                    } else {
                        "not promoted (redflower models promote to make it the champion)"
                    }
                );
                println!("  took        {:.1}s", started.elapsed().as_secs_f64());
            }
        }
        Command::Evaluate {
            root,
            model,
            date,
            pipelines,
            device,
        } => {
            let (store, pipelines, device, window) =
                evaluation_setup(&root, date, pipelines, device).await?;
            let (card, evaluation, report) =
                training::evaluate(&store, &window, &model, &pipelines, &device).await?;
            print_evaluation(&card, &evaluation, &report);
        }
        Command::Models { action } => models(action).await?,
        Command::Publish { action } => publish_command(action).await?,
        Command::Serve {
            root,
            addr,
            token,
            poll_ms,
        } => serve(&root, addr, token, poll_ms).await?,
        Command::Show { root, user } => {
            let store = Store::open(&root)?;
            let manifest = redflower::publish::latest(&store)
                .await?
                .with_context(|| format!("nothing is published under {}", store.url()))?;
            let ctx = nightly::session(&Default::default())?;
            let batches = redflower::publish::read_table(&store, &manifest).await?;
            let table =
                datafusion::datasource::MemTable::try_new(batches[0].schema(), vec![batches])?;
            ctx.register_table("limits", std::sync::Arc::new(table))?;
            let rows = ctx
                .sql(&format!("SELECT * FROM limits WHERE user_id = {user}"))
                .await?
                .collect()
                .await?;
            if rows.iter().all(|b| b.num_rows() == 0) {
                anyhow::bail!(
                    "user {user} is not in version {} of the limit table",
                    manifest.version
                );
            }
            println!(
                "version {} (as of {}, model {}, policy {})",
                manifest.version, manifest.as_of, manifest.model_version, manifest.policy_version
            );
            println!("{}", pretty_format_batches(&rows)?);
        }
    }
    Ok(())
}

async fn serve(
    root: &str,
    addr: std::net::SocketAddr,
    token: Option<String>,
    poll_ms: u64,
) -> Result<()> {
    let store = Store::open(root)?;
    let server = redflower::serve::start(
        store.clone(),
        redflower::serve::ServeConfig {
            addr,
            token,
            poll: std::time::Duration::from_millis(poll_ms.max(10)),
        },
    )
    .await?;
    println!(
        "serving {} on http://{} (table version {}); GET /v1/limits/{{user_id}}, /healthz, /metrics",
        store.url(),
        server.addr(),
        server
            .version()
            .map_or("none yet".to_string(), |v| v.to_string())
    );
    shutdown_signal().await;
    let stats = server.stop().await?;
    println!(
        "serve stopped after {:.0}s: {} answered, {} unknown users, {} refused; {} table swaps ({} failed); last version {}",
        stats.seconds,
        stats.answered,
        stats.not_found,
        stats.refused,
        stats.reloads,
        stats.reload_failures,
        stats.version.map_or("none".to_string(), |v| v.to_string())
    );
    Ok(())
}

/// Ctrl-C or SIGTERM (what a service manager sends).
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}

async fn sink_table(
    store: &Store,
    sink: &str,
    prefix: &str,
    keep: usize,
) -> Result<redflower::sink::RedisLoad> {
    let target = redflower::sink::RedisTarget::parse(sink, prefix)?;
    let manifest = redflower::publish::latest(store)
        .await?
        .with_context(|| format!("nothing is published under {}", store.url()))?;
    let snapshot = redflower::serve::Snapshot::load(store, manifest).await?;
    Ok(redflower::sink::load(&target, &snapshot, keep).await?)
}

async fn publish_command(action: PublishAction) -> Result<()> {
    match action {
        PublishAction::List { root } => {
            let store = Store::open(&root)?;
            let versions = redflower::publish::versions(&store).await?;
            if versions.is_empty() {
                println!("nothing is published under {}", store.url());
            }
            println!(
                "{:>8}  {:<10}  {:>9}  {:>10}  {:<26}  {:<10}  notes",
                "version", "as of", "rows", "mean limit", "model", "policy"
            );
            for m in &versions {
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
        PublishAction::Rollback { root, to } => {
            let store = Store::open(&root)?;
            let manifest = redflower::publish::rollback(&store, to).await?;
            println!(
                "version {} committed: readers now see version {to}'s table ({} rows, as of {})",
                manifest.version, manifest.row_count, manifest.as_of
            );
        }
        PublishAction::Sink {
            root,
            sink,
            prefix,
            keep,
        } => {
            let store = Store::open(&root)?;
            let load = sink_table(&store, &sink, &prefix, keep).await?;
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
        PublishAction::Retain { root, keep } => {
            let store = Store::open(&root)?;
            let report = redflower::publish::retain(&store, keep).await?;
            println!(
                "kept the newest {keep} versions: deleted {} manifests and {} data files",
                report.manifests_deleted, report.data_files_deleted
            );
        }
    }
    Ok(())
}

async fn models(action: ModelsAction) -> Result<()> {
    match action {
        ModelsAction::List { root } => {
            let store = Store::open(&root)?;
            let champion = model::champion(&store).await?.map(|c| c.version);
            let cards = model::list(&store).await?;
            if cards.is_empty() {
                println!("no models under {}/models/", store.url());
            }
            println!(
                "{:<2}{:<26} {:<15} {:>9} {:>8} {:>8} {:>8}  data",
                "", "version", "kind", "features", "AUC", "KS", "ECE"
            );
            for card in cards {
                let mark = if champion.as_deref() == Some(card.version.as_str()) {
                    "*"
                } else {
                    ""
                };
                println!(
                    "{mark:<2}{:<26} {:<15} {:>9} {:>8.4} {:>8.4} {:>8.4}  {}",
                    card.version,
                    card.kind,
                    card.n_features,
                    card.holdout.auc,
                    card.holdout.ks,
                    card.holdout.ece,
                    card.data
                );
            }
            println!("(* = champion; AUC, KS, ECE on each model's own holdout)");
        }
        ModelsAction::Compare {
            root,
            date,
            pipelines,
            device,
            first,
            second,
        } => {
            let (store, pipelines, device, window) =
                evaluation_setup(&root, date, pipelines, device).await?;
            let (_, a, _) =
                training::evaluate(&store, &window, &first, &pipelines, &device).await?;
            let (_, b, _) =
                training::evaluate(&store, &window, &second, &pipelines, &device).await?;
            println!("on {} users of {}:", a.metrics.rows, a.rows_evaluated);
            println!("{:<12} {:>26} {:>26}", "", first, second);
            let line = |name: &str, x: f64, y: f64| println!("{name:<12} {x:>26.5} {y:>26.5}");
            line("AUC", a.metrics.auc, b.metrics.auc);
            line("Gini", a.metrics.gini, b.metrics.gini);
            line("KS", a.metrics.ks, b.metrics.ks);
            line("log loss", a.metrics.log_loss, b.metrics.log_loss);
            line("Brier", a.metrics.brier, b.metrics.brier);
            line("ECE", a.metrics.ece, b.metrics.ece);
            line("mean PD", a.metrics.mean_pd, b.metrics.mean_pd);
            if let Some(oracle) = a.oracle_auc {
                println!("oracle AUC on the same users: {oracle:.4}");
            }
            if let Some(visible) = a.visible_oracle_auc {
                println!("oracle AUC without hidden risk (visible PD), same users: {visible:.4}");
            }
        }
        ModelsAction::Promote { root, version } => {
            let store = Store::open(&root)?;
            let champion = model::promote(&store, &version).await?;
            println!(
                "champion is now {} (was {}); the next nightly run scores with it",
                champion.version,
                champion.previous.as_deref().unwrap_or("none")
            );
        }
    }
    Ok(())
}

fn print_evaluation(card: &ModelCard, e: &Evaluation, report: &str) {
    let m = &e.metrics;
    println!();
    println!("model {} ({}) on {}", card.version, card.kind, card.data);
    println!(
        "  evaluated   on {} ({} rows, {} defaults)",
        e.rows_evaluated, m.rows, m.positives
    );
    let mut oracle = e.oracle_auc.map_or(String::new(), |o| {
        format!(", oracle AUC {o:.4} (ratio {:.3})", m.auc / o)
    });
    if let Some(v) = e.visible_oracle_auc {
        oracle.push_str(&format!(
            ", without hidden risk {v:.4} (ratio {:.3})",
            m.auc / v
        ));
    }
    println!(
        "  ranking     AUC {:.4}, Gini {:.4}, KS {:.4}{oracle}",
        m.auc, m.gini, m.ks
    );
    let before = e.uncalibrated.map_or(String::new(), |u| {
        format!(" (before calibration {:.4})", u.ece)
    });
    println!(
        "  calibration ECE {:.4}{before}; mean PD {:.4} vs default rate {:.4}; log loss {:.4}, Brier {:.4}",
        m.ece, m.mean_pd, m.default_rate, m.log_loss, m.brier
    );
    if let Some(top) = e.deciles.first() {
        println!(
            "  lift        riskiest decile: default rate {:.3}, lift {:.2}",
            top.default_rate, top.lift
        );
    }
    if let Some(c) = &e.champion {
        println!(
            "  champion    {}: AUC {:.4}; PSI of PD against it {:.4}",
            c.version, c.auc, c.score_psi
        );
    }
    println!("  report      {report}");
}

fn print_summary(report: &NightlyReport) {
    println!();
    println!(
        "nightly run {} on {} ({:.1}s)",
        report.run_date, report.root, report.seconds
    );
    let quarantined: u64 = report.sources.iter().map(|s| s.quarantined).sum();
    let rows: u64 = report.sources.iter().map(|s| s.rows).sum();
    println!("  sources     {rows} raw rows, {quarantined} quarantined (see quarantine/)");
    for source in report.sources.iter().filter(|s| s.quarantined > 0) {
        let reasons: Vec<String> = source
            .reasons
            .iter()
            .map(|(r, n)| format!("{n} {r}"))
            .collect();
        println!("              {}: {}", source.source, reasons.join(", "));
    }
    for f in &report.features {
        println!(
            "  features    as of {}: {} users, {} non-zeros, {} distinct features ({:.1}s)",
            f.as_of, f.users, f.rows, f.distinct_features, f.seconds
        );
    }
    if let Some(last) = report.features.last() {
        println!("  dictionary  {} features", last.dictionary_size);
    }
    println!("  strongest   (information value, univariate AUC on the training set)");
    for s in report.strongest_features.iter().take(5) {
        println!(
            "              {:<44} IV {:.3}  AUC {:.3}",
            s.name, s.information_value, s.univariate_auc
        );
    }
    match report.drift_baseline {
        None => println!(
            "  drift       no earlier feature stats to compare with (first run on this root)"
        ),
        Some(baseline) => {
            println!("  drift       PSI against the stats of {baseline}, highest first");
            for d in report.most_drifted.iter().take(5) {
                println!("              {:<44} PSI {:.3}", d.name, d.psi);
            }
        }
    }
    println!(
        "  training    as of {}: {} users, {} defaults ({:.2}%)",
        report.training_as_of,
        report.training_rows,
        report.training_defaults,
        100.0 * report.training_defaults as f64 / report.training_rows.max(1) as f64
    );
    let oracle = report
        .oracle_auc
        .map_or(
            "n/a (no truth in this root)".to_string(),
            |a| match report.visible_oracle_auc {
                Some(v) => format!("{a:.4} ({v:.4} without hidden risk)"),
                None => format!("{a:.4}"),
            },
        );
    println!(
        "  model       {} ({}): holdout AUC {:.4}, oracle AUC {} on {} held-out users; ECE {:.4}, log loss {:.4}",
        report.model_version,
        if report.trained_tonight {
            "no champion yet: trained and promoted tonight"
        } else {
            "the champion"
        },
        report.holdout.auc,
        oracle,
        report.holdout.rows,
        report.holdout.ece,
        report.holdout.log_loss
    );
    println!(
        "  limits      {} users scored; {} boosted by certificates ({} withheld by fraud checks); {} capped by their own request; {} with scenario limits",
        report.scored_users,
        report.boosted,
        report.boosts_withheld_for_fraud,
        report.capped_by_request,
        report.with_scenario_limits
    );
    for (band, count) in &report.limit_distribution {
        println!("              {band:>14}: {count}");
    }
    println!(
        "  published   version {} ({} rows, mean limit {:.0}) at {}/{}",
        report.manifest.version,
        report.manifest.row_count,
        report.manifest.mean_limit,
        report.root,
        redflower::publish::manifest_path(report.manifest.version)
    );
    let stages: Vec<String> = report
        .stages
        .iter()
        .map(|s| format!("{} {:.1}s", s.stage, s.seconds))
        .collect();
    println!("  stages      {}", stages.join(", "));
    if !report.resumed_stages.is_empty() {
        println!(
            "  resumed     run {}: took {} from its checkpoints",
            report.run_id,
            report.resumed_stages.join(", ")
        );
    }
}
