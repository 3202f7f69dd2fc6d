//! The `redflower` command: parses arguments, sets up logging, calls the library, prints a
//! summary, and exits with the code the error's cause gives (README, "exit codes"). Nothing
//! here decides anything about data: each command's file only turns flags into library calls.

mod args;
mod cluster;
mod demo;
mod erase;
mod evaluate;
mod explain;
mod models;
mod nightly;
mod print;
mod publish;
mod score;
mod serve;
mod show;
mod synth;
mod train;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use redflower::cause::{Cause, Classify};

/// jemalloc, not the system's malloc: with glibc's the 1,000,000-user night held twice its
/// live heap as RSS (freed memory kept by its per-thread arenas), and more with every
/// million users; jemalloc gives freed pages back (docs/SCALING.md, "The allocator").
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at its start (`_RJEM_MALLOC_CONF` in the environment still wins).
/// Background threads give freed pages back to the system after the 10 s decay, also from
/// arenas whose threads stopped allocating: without them, what the feature stage's DataFusion
/// workers freed stayed resident through the user parts (docs/SCALING.md, "Freed pages
/// returned").
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
#[unsafe(export_name = "_rjem_malloc_conf")]
#[allow(non_upper_case_globals)]
static malloc_conf: &[u8; 23] = b"background_thread:true\0";

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
    Synth(synth::SynthArgs),
    /// Run the nightly job for one date: validate, features, train, score, limits, publish.
    ///
    /// Example: redflower nightly --root ./data --date 2026-11-01
    Nightly(nightly::NightlyArgs),
    /// Answer GET /v1/limits/{user_id} over HTTP from the newest published table, following
    /// new versions as they are committed. Stop with Ctrl-C (or SIGTERM).
    ///
    /// Example: redflower serve --root ./data --addr 127.0.0.1:8080
    Serve(serve::ServeArgs),
    /// Build a 50,000-user world in ./data and run the nightly job on it.
    ///
    /// Example: redflower demo
    Demo(demo::DemoArgs),
    /// Train a model on the newest labelled window of a world (or on your own table), register
    /// it under models/ with its metrics and HTML report.
    ///
    /// Examples: redflower train --root ./data --date 2026-11-01 --promote
    ///           redflower train --root ./byo --table ./loans.csv --label defaulted
    Train(train::TrainArgs),
    /// Score a table of your own with a model trained on one (`train --table`): PD, points and
    /// reason codes per row, through the encoding stored with the model.
    ///
    /// Example: redflower score --root ./byo --model 2026-12-04-3f2a9c1b7d4e --table ./new.csv --out ./scores.csv
    Score(score::ScoreArgs),
    /// Evaluate a registered model on the holdout of a date's training window, next to the
    /// champion; writes models/<version>/evaluations/<date>/.
    ///
    /// Example: redflower evaluate --root ./data --model 2026-08-03-e10e27e0ff12 --date 2026-11-01
    Evaluate(evaluate::EvaluateArgs),
    /// List published versions, roll back to one, apply retention, or load one into Redis.
    Publish {
        #[command(subcommand)]
        action: publish::PublishAction,
    },
    /// List, compare and promote registered models.
    Models {
        #[command(subcommand)]
        action: models::ModelsAction,
    },
    /// Print a user's answer from the newest published limit table (what `serve` returns).
    ///
    /// Example: redflower show --root ./data --user 42
    Show(show::ShowArgs),
    /// The audit record behind one user's published limit: every policy step replayed from
    /// the run's decision record, the model's reasons with their feature values, the
    /// certificates counted and the version's lineage. Any retained version.
    ///
    /// Example: redflower explain --root ./data --user 42 --date 2026-11-01 [--json]
    Explain(explain::ExplainArgs),
    /// Erase a user who withdrew consent: records the request (create-only), after which no
    /// run reads them and no read path answers for them; their earlier derived data is
    /// rewritten by the next night, or now with --apply.
    ///
    /// Example: redflower erase --root ./data --user 42 --reason "withdrew consent, ticket 1234" --apply
    Erase(erase::EraseArgs),
    /// Run one process of a Ballista cluster for `nightly --engine ballista://HOST:PORT`:
    /// a scheduler, or an executor serving one (docs/CLUSTER.md).
    ///
    /// Example: redflower cluster scheduler --bind 0.0.0.0:50050
    Cluster {
        #[command(subcommand)]
        role: cluster::ClusterRole,
    },
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
            ExitCode::from(cause_of(&e).exit_code())
        }
    }
}

async fn execute(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Synth(args) => synth::run(args).await,
        Command::Nightly(args) => nightly::run(args).await,
        Command::Serve(args) => serve::run(args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Train(args) => train::run(args).await,
        Command::Score(args) => score::run(args).await,
        Command::Evaluate(args) => evaluate::run(args).await,
        Command::Publish { action } => publish::run(action).await,
        Command::Models { action } => models::run(action).await,
        Command::Show(args) => show::run(args).await,
        Command::Explain(args) => explain::run(args).await,
        Command::Erase(args) => erase::run(args).await,
        Command::Cluster { role } => cluster::run(role).await,
    }
}

/// The cause of the first error in the chain that knows its cause; anything else (a file
/// the command itself could not write, say) is taken as transient.
fn cause_of(error: &anyhow::Error) -> Cause {
    use redflower::{
        audit, config, engine, features, model, nightly, policy, publish, sink, sources, store,
        synth, table, training,
    };
    for cause in error.chain() {
        macro_rules! classified {
            ($($kind:ty),*) => {
                $(if let Some(e) = cause.downcast_ref::<$kind>() {
                    return e.cause();
                })*
            };
        }
        classified!(
            nightly::NightlyError,
            audit::AuditError,
            redflower::erasure::ErasureError,
            redflower::cluster::ClusterError,
            training::TrainingError,
            publish::PublishError,
            publish::snapshot::SnapshotError,
            sink::SinkError,
            redflower::serve::ServeError,
            model::ModelError,
            table::train::TableTrainingError,
            table::score::ScoreTableError,
            table::TableError,
            synth::SynthError,
            sources::SourceError,
            features::FeatureError,
            policy::PolicyError,
            config::PipelinesError,
            engine::EngineError,
            store::StoreError,
            store::keys::KeyError
        );
    }
    Cause::Transient
}
