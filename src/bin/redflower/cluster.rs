//! `redflower cluster scheduler|executor`: one process of a Ballista cluster that runs a
//! night's DataFusion queries (`nightly --engine ballista://HOST:PORT`); docs/CLUSTER.md.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Result;
use clap::Subcommand;

use redflower::cluster::{self, ExecutorOptions, SchedulerOptions};

#[derive(Subcommand)]
pub enum ClusterRole {
    /// Plan the queries runs submit and hand their tasks to executors.
    ///
    /// Example: redflower cluster scheduler --bind 0.0.0.0:50050
    Scheduler {
        /// address the scheduler's gRPC service listens on (what `--engine ballista://` names)
        #[arg(long, default_value = "127.0.0.1:50050")]
        bind: SocketAddr,
        /// seconds without a heartbeat after which an executor is lost and its tasks and
        /// shuffle output are scheduled again on the others
        #[arg(long, default_value_t = 60)]
        executor_timeout_seconds: u64,
    },
    /// Run query tasks for a scheduler; reads the root itself (s3:// roots from the AWS_*
    /// variables, as every redflower command does).
    ///
    /// Example: redflower cluster executor --scheduler 10.0.0.5:50050 --bind 0.0.0.0:50051 --slots 16
    Executor {
        /// the scheduler's host:port
        #[arg(long, default_value = "127.0.0.1:50050")]
        scheduler: String,
        /// address shuffle output is served from (Arrow Flight); the next port takes tasks
        #[arg(long, default_value = "127.0.0.1:50051")]
        bind: SocketAddr,
        /// host name the scheduler and other executors reach this one by, when --bind is a
        /// wildcard or behind NAT
        #[arg(long)]
        external_host: Option<String>,
        /// tasks run at once (default: one per core)
        #[arg(long)]
        slots: Option<usize>,
        /// memory running tasks may hold together before they spill (default: 70% of the
        /// machine's memory)
        #[arg(long)]
        memory_limit_mb: Option<u64>,
        /// folder for shuffle output and spills (default: a temporary folder)
        #[arg(long)]
        work_dir: Option<String>,
        /// seconds between heartbeats; keep it well below the scheduler's executor timeout
        #[arg(long, default_value_t = 10)]
        heartbeat_seconds: u64,
        /// seconds to wait at start for the scheduler to listen before giving up (exit 1)
        #[arg(long, default_value_t = 30)]
        scheduler_wait_seconds: u64,
    },
}

pub async fn run(role: ClusterRole) -> Result<()> {
    match role {
        ClusterRole::Scheduler {
            bind,
            executor_timeout_seconds,
        } => {
            eprintln!("scheduler listening on {bind} (runs use --engine ballista://{bind})");
            cluster::run_scheduler(SchedulerOptions {
                bind,
                executor_timeout: Duration::from_secs(executor_timeout_seconds),
            })
            .await?;
        }
        ClusterRole::Executor {
            scheduler,
            bind,
            external_host,
            slots,
            memory_limit_mb,
            work_dir,
            heartbeat_seconds,
            scheduler_wait_seconds,
        } => {
            let (host, port) = scheduler.rsplit_once(':').unwrap_or((&scheduler, "50050"));
            let scheduler_port = port
                .parse()
                .map_err(|_| anyhow::anyhow!("--scheduler {scheduler}: '{port}' is not a port"))?;
            let slots = slots.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(2, |cores| cores.get())
            });
            eprintln!("executor on {bind} with {slots} slots, serving scheduler {scheduler}");
            cluster::run_executor(ExecutorOptions {
                scheduler_host: host.to_string(),
                scheduler_port,
                bind,
                external_host,
                slots,
                memory_limit_mb,
                work_dir,
                heartbeat: Duration::from_secs(heartbeat_seconds),
                scheduler_wait: Duration::from_secs(scheduler_wait_seconds),
            })
            .await?;
        }
    }
    eprintln!("stopped");
    Ok(())
}
