//! This machine's part of a Ballista cluster, started the way operators start one:
//! `redflower cluster scheduler` plans the feature queries a run submits
//! (`--engine ballista://HOST:PORT`) and hands their tasks to `redflower cluster executor`
//! processes, which read the root themselves and exchange shuffles over Arrow Flight.
//!
//! Owns the object stores the cluster's processes open on their own (a run's client
//! registers its root; a scheduler listing files and an executor reading them open the same
//! `s3://` bucket from the same AWS_* variables, the way `store` opens a root) and the
//! heartbeat and timeout settings that bound how long a lost executor holds a query.
//! Reads and writes no data of a run itself.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ballista::prelude::SessionConfigExt;
use ballista_core::config::TaskSchedulingPolicy;
use ballista_core::error::BallistaError;
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::start_server;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::prelude::SessionConfig;
use object_store::ObjectStore;
use url::Url;

use crate::cause::{Cause, Classify};
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster {role}: {problem}")]
    Settings { role: &'static str, problem: String },
    #[error("cluster executor: no scheduler answers at {address} after {waited_s} s: {error}")]
    NoScheduler {
        address: String,
        waited_s: u64,
        error: std::io::Error,
    },
    #[error("cluster {role} stopped: {source}")]
    Stopped {
        role: &'static str,
        source: BallistaError,
    },
}

impl Classify for ClusterError {
    fn cause(&self) -> Cause {
        match self {
            ClusterError::Settings { .. } => Cause::Configuration,
            ClusterError::NoScheduler { .. } => Cause::Transient,
            // a port taken or a scheduler gone: starting again later may work
            ClusterError::Stopped { .. } => Cause::Transient,
        }
    }
}

/// Executors ask for work: tasks reset from a lost executor are taken by the next poll of
/// those left (pushed tasks waited for an event that never came; docs/CLUSTER.md).
const TASK_POLICY: TaskSchedulingPolicy = TaskSchedulingPolicy::PullStaged;

/// How a scheduler listens and how soon it gives up on an executor that stopped answering.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    pub bind: SocketAddr,
    /// A silent executor is declared lost after this long: its tasks and the shuffle output
    /// it held are scheduled again on the executors left.
    pub executor_timeout: Duration,
}

/// Runs a scheduler until the process is stopped.
pub async fn run_scheduler(options: SchedulerOptions) -> Result<(), ClusterError> {
    let timeout = options.executor_timeout.as_secs().max(2);
    let mut config = SchedulerConfig {
        bind_host: options.bind.ip().to_string(),
        bind_port: options.bind.port(),
        executor_timeout_seconds: timeout,
        // check a few times within the timeout, so a lost executor is found in about `timeout`
        expire_dead_executor_interval_seconds: (timeout / 4).max(1),
        no_executors_grace_period_seconds: timeout,
        scheduling_policy: TASK_POLICY,
        ..SchedulerConfig::default()
    };
    config.override_config_producer = Some(Arc::new(SessionConfig::new_with_ballista));
    config.override_session_builder = Some(Arc::new(|session_config: SessionConfig| {
        Ok(SessionStateBuilder::new()
            .with_default_features()
            .with_config(session_config)
            .with_runtime_env(runtime_with_root_stores(None)?)
            .build())
    }));
    let stopped = |source| ClusterError::Stopped {
        role: "scheduler",
        source,
    };
    let cluster = BallistaCluster::new_from_config(&config)
        .await
        .map_err(stopped)?;
    tracing::info!(bind = %options.bind, executor_timeout_s = timeout, "scheduler listening");
    start_server(cluster, options.bind, Arc::new(config))
        .await
        .map_err(stopped)
}

/// Where an executor listens, which scheduler it serves, and what it may use of its machine.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    pub scheduler_host: String,
    pub scheduler_port: u16,
    /// The address other executors and the run fetch shuffle output from (Arrow Flight);
    /// the gRPC port the scheduler pushes tasks to is the next one.
    pub bind: SocketAddr,
    /// The host name others reach this executor by, when `bind` is not it (0.0.0.0, NAT).
    pub external_host: Option<String>,
    /// Tasks run at once.
    pub slots: usize,
    /// Memory all running tasks may hold together before they spill.
    pub memory_limit_mb: Option<u64>,
    /// Where shuffle output and spills go; a fresh temporary folder when None.
    pub work_dir: Option<String>,
    /// How often it tells the scheduler it is alive (below the scheduler's timeout).
    pub heartbeat: Duration,
    /// How long it waits at start for the scheduler to listen (one started beside it, by
    /// compose or a test, may come up a little later).
    pub scheduler_wait: Duration,
}

/// Runs an executor until the process is stopped or its scheduler tells it to stop.
pub async fn run_executor(options: ExecutorOptions) -> Result<(), ClusterError> {
    let settings = |problem: String| ClusterError::Settings {
        role: "executor",
        problem,
    };
    if options.slots == 0 {
        return Err(settings("--slots must be at least 1".into()));
    }
    let grpc_port = options
        .bind
        .port()
        .checked_add(1)
        .ok_or_else(|| settings(format!("no port after {} for gRPC", options.bind.port())))?;
    let work_dir = options.work_dir.clone();
    let mut config = ExecutorProcessConfig {
        bind_host: options.bind.ip().to_string(),
        external_host: options.external_host.clone(),
        port: options.bind.port(),
        grpc_port,
        scheduler_host: options.scheduler_host.clone(),
        scheduler_port: options.scheduler_port,
        // one try: `wait_listening` has waited (Ballista 55's own wait never ends, its
        // clock is `Instant::now().elapsed()`)
        scheduler_connect_timeout_seconds: 0,
        vcores: options.slots,
        task_scheduling_policy: TASK_POLICY,
        work_dir: options.work_dir.clone(),
        executor_heartbeat_interval_seconds: options.heartbeat.as_secs().max(1),
        memory_pool_size: options.memory_limit_mb.map(|mb| mb.saturating_mul(1 << 20)),
        ..ExecutorProcessConfig::default()
    };
    config.override_config_producer = Some(Arc::new(SessionConfig::new_with_ballista));
    config.override_runtime_producer = Some(Arc::new(move |_: &SessionConfig| {
        runtime_with_root_stores(work_dir.as_deref())
    }));
    let (host, port, wait) = (
        &options.scheduler_host,
        options.scheduler_port,
        options.scheduler_wait,
    );
    crate::engine::wait_listening(host, port, wait)
        .await
        .map_err(|error| ClusterError::NoScheduler {
            address: format!("{host}:{port}"),
            waited_s: wait.as_secs(),
            error,
        })?;
    tracing::info!(
        bind = %options.bind,
        scheduler = %format!("{}:{}", options.scheduler_host, options.scheduler_port),
        slots = options.slots,
        "executor starting"
    );
    start_executor_process(Arc::new(config))
        .await
        .map_err(|source| ClusterError::Stopped {
            role: "executor",
            source,
        })
}

/// A runtime whose object stores open the way `store` opens a root, its merges of spill
/// files bounded as the job's own (`EngineConfig::spill_merge_fan_in`).
fn runtime_with_root_stores(temp_dir: Option<&str>) -> DfResult<Arc<RuntimeEnv>> {
    let mut runtime = RuntimeEnvBuilder::new()
        .with_object_store_registry(Arc::new(RootStores::default()))
        .with_max_spill_merge_fan_in(crate::engine::DEFAULT_SPILL_MERGE_FAN_IN);
    if let Some(dir) = temp_dir {
        runtime = runtime.with_temp_file_path(dir);
    }
    runtime.build_arc()
}

/// DataFusion's registry (local files, whatever a session registers), opening an `s3://`
/// bucket on first use with `Store`'s settings: AWS_* variables, http endpoints allowed.
#[derive(Debug, Default)]
struct RootStores {
    known: DefaultObjectStoreRegistry,
}

impl ObjectStoreRegistry for RootStores {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        self.known.register_store(url, store)
    }

    fn deregister_store(&self, url: &Url) -> DfResult<Arc<dyn ObjectStore>> {
        self.known.deregister_store(url)
    }

    fn get_store(&self, url: &Url) -> DfResult<Arc<dyn ObjectStore>> {
        if let Ok(store) = self.known.get_store(url) {
            return Ok(store);
        }
        if url.scheme() != "s3" {
            return Err(DataFusionError::Configuration(format!(
                "a cluster process cannot open '{url}': roots on a cluster are s3:// or a \
                 folder every executor mounts at the same path (memory:// is one process's)"
            )));
        }
        let bucket = url.host_str().unwrap_or_default();
        let root = Store::open(&format!("s3://{bucket}"))
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let (base, store) = root.registration();
        self.known.register_store(&base, store.clone());
        Ok(store)
    }
}
