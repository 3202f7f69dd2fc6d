//! Where the DataFusion queries of a command run, and the one way stages run a statement:
//! sessions in this process (under `[engine]`'s memory limit, spilling past it) or on an
//! Apache DataFusion Ballista cluster (`--engine ballista://...`), and `collect`.
//!
//! Owns the classification of DataFusion's errors by cause, so every stage that queries says
//! the same thing about a lost object store, a corrupt file or a statement that does not plan.
//! Reads and writes no data itself.

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::execution::config::SessionConfig;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::cause::{Cause, Classify};
use crate::store;

/// `EngineConfig::spill_merge_fan_in` when `nightly.toml` does not say, and on executors.
pub const DEFAULT_SPILL_MERGE_FAN_IN: usize = 16;

/// How DataFusion may use this machine (`[engine]` in `pipelines/nightly.toml`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// Memory DataFusion's operators may hold; past it, sorts and aggregations spill to disk.
    pub memory_limit_mb: usize,
    /// Parallel partitions per query; 0 means one per core.
    pub target_partitions: usize,
    /// Where spill files go; empty means the system temp folder.
    #[serde(default)]
    pub spill_dir: String,
    /// Spill files one merge pass of a sort or aggregation reads at once (0: as many as its
    /// memory reservation allows). Each open file holds a decoded batch and a read buffer that
    /// the pool does not account: at 5,000,000 users the feature queries' merges had about
    /// 440 open at once, 0.6 GB beyond the pool. More files take more passes.
    #[serde(default = "EngineConfig::default_spill_merge_fan_in")]
    pub spill_merge_fan_in: usize,
}

impl EngineConfig {
    /// The most memory `[engine]` may give (1 PiB): its byte count cannot overflow.
    const MAX_MEMORY_MB: usize = 1 << 30;

    fn default_spill_merge_fan_in() -> usize {
        DEFAULT_SPILL_MERGE_FAN_IN
    }

    /// What `nightly.toml` must hold for sessions to be built; the error names the key.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=Self::MAX_MEMORY_MB).contains(&self.memory_limit_mb) {
            return Err(format!(
                "memory_limit_mb must be between 1 and {}",
                Self::MAX_MEMORY_MB
            ));
        }
        if self.spill_merge_fan_in == 1 {
            return Err("spill_merge_fan_in must be 0 (no bound) or at least 2".into());
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("nightly.toml [engine]: {0}")]
    Settings(DataFusionError),
    #[error("--engine {engine}: {error}")]
    Cluster {
        engine: String,
        error: DataFusionError,
    },
    #[error("--engine {engine}: the scheduler does not answer: {error}")]
    Unreachable {
        engine: String,
        error: std::io::Error,
    },
}

impl Classify for EngineError {
    fn cause(&self) -> Cause {
        match self {
            EngineError::Settings(_) => Cause::Configuration,
            EngineError::Unreachable { .. } => Cause::Transient,
            // a scheduler that does not answer now may answer on the next try
            EngineError::Cluster { error, .. } => match cause_of(error) {
                Cause::Configuration => Cause::Configuration,
                _ => Cause::Transient,
            },
        }
    }
}

/// Where the DataFusion queries of a run execute.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Engine {
    /// in this process, under `[engine]`'s memory limit
    #[default]
    Local,
    /// on the Ballista cluster whose scheduler listens at this host:port
    Ballista { host: String, port: u16 },
    /// on a Ballista scheduler and executor started inside this process (tests, trials)
    BallistaStandalone,
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Engine::Local => f.write_str("local"),
            Engine::Ballista { host, port } => write!(f, "ballista://{host}:{port}"),
            Engine::BallistaStandalone => f.write_str("ballista://standalone"),
        }
    }
}

impl std::str::FromStr for Engine {
    type Err = String;

    /// `local`, `ballista://HOST:PORT` or `ballista://standalone`.
    fn from_str(text: &str) -> Result<Engine, String> {
        if text == "local" {
            return Ok(Engine::Local);
        }
        let Some(address) = text.strip_prefix("ballista://") else {
            return Err(format!(
                "unknown engine '{text}': use local, ballista://HOST:PORT or ballista://standalone"
            ));
        };
        let address = address.trim_end_matches('/');
        if address == "standalone" {
            return Ok(Engine::BallistaStandalone);
        }
        let (host, port) = address.rsplit_once(':').unwrap_or((address, "50050"));
        let port = port
            .parse()
            .map_err(|_| format!("engine '{text}': '{port}' is not a port"))?;
        if host.is_empty() {
            return Err(format!("engine '{text}': no scheduler host"));
        }
        Ok(Engine::Ballista {
            host: host.to_string(),
            port,
        })
    }
}

/// A session on `engine`, with `[engine]`'s settings. On Ballista, the executors read the
/// store themselves: local roots must be on a filesystem they share, `s3://` roots need
/// the same AWS_* variables in the executors' environment.
pub async fn session_for(
    config: &EngineConfig,
    engine: &Engine,
) -> Result<SessionContext, EngineError> {
    use ballista::prelude::{SessionConfigExt, SessionContextExt};
    use datafusion::execution::SessionStateBuilder;
    let failed = |error| EngineError::Cluster {
        engine: engine.to_string(),
        error,
    };
    let state = || -> Result<_, EngineError> {
        let (session_config, runtime) = local_parts(config)?;
        Ok(SessionStateBuilder::new()
            .with_default_features()
            .with_config(session_config.upgrade_for_ballista())
            .with_runtime_env(runtime)
            .build())
    };
    match engine {
        Engine::Local => session(config),
        Engine::Ballista { host, port } => {
            // the client connects lazily, at the first query: say here which engine is gone
            wait_listening(host, *port, Duration::ZERO)
                .await
                .map_err(|error| EngineError::Unreachable {
                    engine: engine.to_string(),
                    error,
                })?;
            SessionContext::remote_with_state(&format!("df://{host}:{port}"), state()?)
                .await
                .map_err(failed)
        }
        Engine::BallistaStandalone => SessionContext::standalone_with_state(state()?)
            .await
            .map_err(failed),
    }
}

/// One connection attempt gives up after this long (a host that drops packets).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Returns once something accepts connections at `host:port` (a Ballista scheduler): tried
/// at once, then every half second until `wait` has passed; the last try's error otherwise.
pub async fn wait_listening(host: &str, port: u16, wait: Duration) -> std::io::Result<()> {
    let started = std::time::Instant::now();
    loop {
        let connect = tokio::net::TcpStream::connect((host, port));
        let error = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(error)) => error,
            Err(_) => std::io::ErrorKind::TimedOut.into(),
        };
        if started.elapsed() >= wait {
            return Err(error);
        }
        tracing::debug!(%error, "{host}:{port} does not answer yet");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn local_parts(engine: &EngineConfig) -> Result<(SessionConfig, Arc<RuntimeEnv>), EngineError> {
    let partitions = match engine.target_partitions {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };
    let config = SessionConfig::new()
        .with_target_partitions(partitions)
        // Row-level filter pushdown into the Parquet decoder measured slower here (50k-user
        // feature job 2.8 s with it, 2.4 s without; validation 1.9 s and 1.7 s): most rows
        // pass the clean-view predicates, so decoding in two passes costs more than it saves.
        // Row groups are still pruned by their statistics either way.
        .set_bool("datafusion.execution.parquet.pushdown_filters", false);
    let mut runtime = RuntimeEnvBuilder::new().with_memory_pool(Arc::new(FairSpillPool::new(
        engine.memory_limit_mb.saturating_mul(1 << 20),
    )));
    if !engine.spill_dir.is_empty() {
        runtime = runtime.with_temp_file_path(&engine.spill_dir);
    }
    let runtime = runtime
        .with_max_spill_merge_fan_in(engine.spill_merge_fan_in)
        .build_arc()
        .map_err(EngineError::Settings)?;
    Ok((config, runtime))
}

/// Marks a session whose plans run in this process, so a stage may feed them from its own
/// channels (the feature job's shared scans); Ballista sessions do not carry it.
#[derive(Debug)]
pub struct InProcess;

/// A DataFusion session in this process, under the engine's memory limit, spilling to disk
/// past it.
pub fn session(engine: &EngineConfig) -> Result<SessionContext, EngineError> {
    let (config, runtime) = local_parts(engine)?;
    let config = config.with_extension(Arc::new(InProcess));
    Ok(SessionContext::new_with_config_rt(config, runtime))
}

/// Runs one SQL statement and collects its batches: the one way the stages query their
/// tables, so each stage only adds its own error context.
pub async fn collect(ctx: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>, DataFusionError> {
    ctx.sql(sql).await?.collect().await
}

/// Runs one SQL statement and hands its batches to `take` as they stream, so the result is
/// never held whole (the feature queries' sinks, the policy inputs set aside by part, labels).
pub async fn for_each_batch(
    ctx: &SessionContext,
    sql: &str,
    mut take: impl FnMut(RecordBatch) -> Result<(), DataFusionError>,
) -> Result<(), DataFusionError> {
    let mut stream = ctx.sql(sql).await?.execute_stream().await?;
    while let Some(batch) = stream.next().await {
        take(batch?)?;
    }
    Ok(())
}

/// Why a query failed. A statement that does not parse or plan needs a person (its SQL comes
/// from `pipelines/` or from code); a file that does not decode is bad input; the object
/// store, memory and the executors may do better on a later try.
pub fn cause_of(error: &DataFusionError) -> Cause {
    use DataFusionError as E;
    match error {
        E::Context(_, inner) | E::Diagnostic(_, inner) => cause_of(inner),
        E::Shared(inner) => cause_of(inner),
        E::Collection(errors) => errors.first().map_or(Cause::Transient, cause_of),
        E::ObjectStore(inner) => store::object_cause(inner),
        E::ParquetError(inner) => store::parquet_cause(inner),
        E::SQL(..) | E::Plan(_) | E::SchemaError(..) | E::Configuration(_) => Cause::Configuration,
        E::NotImplemented(_) => Cause::Configuration,
        E::External(inner) => {
            if let Some(inner) = inner.downcast_ref::<DataFusionError>() {
                cause_of(inner)
            } else if let Some(inner) = inner.downcast_ref::<object_store::Error>() {
                store::object_cause(inner)
            } else if let Some(inner) = inner.downcast_ref::<parquet::errors::ParquetError>() {
                store::parquet_cause(inner)
            } else {
                Cause::Transient
            }
        }
        _ => Cause::Transient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_urls_parse_and_print_back() {
        for text in ["local", "ballista://standalone", "ballista://sched:50051"] {
            let engine: Engine = text.parse().unwrap();
            assert_eq!(engine.to_string(), text);
        }
        assert!("spark://x".parse::<Engine>().is_err());
        assert!("ballista://:1".parse::<Engine>().is_err());
    }

    #[test]
    fn datafusion_failures_are_classified_by_cause() {
        let plan = DataFusionError::Plan("no column x".into());
        assert_eq!(cause_of(&plan), Cause::Configuration);
        let lost = DataFusionError::ObjectStore(Box::new(object_store::Error::Generic {
            store: "S3",
            source: "connection reset".into(),
        }));
        assert_eq!(cause_of(&lost), Cause::Transient);
        let wrapped = DataFusionError::Context("reading raw".into(), Box::new(lost));
        assert_eq!(cause_of(&wrapped), Cause::Transient);
        let corrupt = DataFusionError::ParquetError(Box::new(
            parquet::errors::ParquetError::General("invalid footer".into()),
        ));
        assert_eq!(cause_of(&corrupt), Cause::Input);
        // what a shared scan hands each query it feeds
        let fed = DataFusionError::Context(
            "shared scan".into(),
            Box::new(DataFusionError::Shared(std::sync::Arc::new(corrupt))),
        );
        assert_eq!(cause_of(&fed), Cause::Input);
        let denied = DataFusionError::External(Box::new(object_store::Error::PermissionDenied {
            path: "raw/x".into(),
            source: "403".into(),
        }));
        assert_eq!(cause_of(&denied), Cause::Configuration);
        assert_eq!(
            cause_of(&DataFusionError::ResourcesExhausted("memory".into())),
            Cause::Transient
        );
    }
}
