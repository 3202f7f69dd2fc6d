//! `pipelines/`: the three configuration files of a run (features, limit policy, nightly
//! settings), parsed and checked once, and the DataFusion session the engine settings make.

use std::path::Path;
use std::sync::Arc;

use datafusion::execution::config::SessionConfig;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::SessionContext;
use serde::{Deserialize, Serialize};

use crate::dataset::LabelConfig;
use crate::features::FeatureConfig;
use crate::limits::LimitPolicy;
use crate::model::TrainingConfig;
use crate::model::evaluation::EvaluationConfig;
use crate::publish::PublishConfig;

#[derive(Debug, thiserror::Error)]
#[error("{file}: {error}")]
pub struct PipelinesError {
    pub file: String,
    pub error: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NightlyConfig {
    pub engine: EngineConfig,
    pub label: LabelConfig,
    pub validation: ValidationConfig,
    pub training: TrainingConfig,
    #[serde(default)]
    pub evaluation: EvaluationConfig,
    #[serde(default)]
    pub publish: PublishConfig,
}

/// How DataFusion may use this machine.
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
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            memory_limit_mb: 4096,
            target_partitions: 0,
            spill_dir: String::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValidationConfig {
    pub max_bad_share: f64,
}

/// The three files of `pipelines/`.
#[derive(Debug, Clone)]
pub struct Pipelines {
    pub features: FeatureConfig,
    pub policy: LimitPolicy,
    pub nightly: NightlyConfig,
}

impl Pipelines {
    /// The configuration shipped with redflower, compiled in.
    pub fn builtin() -> Pipelines {
        Pipelines {
            features: FeatureConfig::builtin(),
            policy: LimitPolicy::builtin(),
            nightly: parse_nightly(
                include_str!("../pipelines/nightly.toml"),
                "pipelines/nightly.toml",
            )
            .expect("the shipped nightly.toml is valid"),
        }
    }

    /// `features.toml`, `limits.toml` and `nightly.toml` from a folder.
    pub fn load(dir: &Path) -> Result<Pipelines, PipelinesError> {
        let config = |e: &dyn std::fmt::Display| PipelinesError {
            file: dir.display().to_string(),
            error: e.to_string(),
        };
        let nightly_file = dir.join("nightly.toml");
        let text = std::fs::read_to_string(&nightly_file).map_err(|e| PipelinesError {
            file: nightly_file.display().to_string(),
            error: e.to_string(),
        })?;
        Ok(Pipelines {
            features: FeatureConfig::load(&dir.join("features.toml")).map_err(|e| config(&e))?,
            policy: LimitPolicy::load(&dir.join("limits.toml")).map_err(|e| config(&e))?,
            nightly: parse_nightly(&text, &nightly_file.display().to_string())?,
        })
    }
}

fn parse_nightly(text: &str, file: &str) -> Result<NightlyConfig, PipelinesError> {
    toml::from_str(text).map_err(|e| PipelinesError {
        file: file.to_string(),
        error: e.to_string(),
    })
}

/// A DataFusion session under the engine's memory limit, spilling to disk past it.
pub fn session(engine: &EngineConfig) -> Result<SessionContext, PipelinesError> {
    let partitions = match engine.target_partitions {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };
    let config = SessionConfig::new()
        .with_target_partitions(partitions)
        .set_bool("datafusion.execution.parquet.pushdown_filters", true);
    let mut runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(FairSpillPool::new(engine.memory_limit_mb << 20)));
    if !engine.spill_dir.is_empty() {
        runtime = runtime.with_temp_file_path(&engine.spill_dir);
    }
    let runtime = runtime.build_arc().map_err(|e| PipelinesError {
        file: "nightly.toml [engine]".into(),
        error: e.to_string(),
    })?;
    Ok(SessionContext::new_with_config_rt(config, runtime))
}
