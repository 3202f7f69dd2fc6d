//! The nightly job, stage by stage: validate sources -> features as of the training date and
//! the run date -> labels -> train -> score -> limits -> publish. Writes a JSON run report to
//! `runs/<date>/report.json` and returns it for the command's summary.
//!
//! This module only orders the stages and moves their outputs between them; each stage owns
//! its own reads and writes.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use chrono::NaiveDate;
use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::{Float64Type, UInt64Type};
use datafusion::execution::config::SessionConfig;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::SessionContext;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::dataset::{self, Csr, DatasetError, LabelConfig};
use crate::features::stats::{self, Drift, Strength};
use crate::features::{self, FeatureConfig, FeatureDictionary, FeatureError, FeatureReport};
use crate::limits::{self, LimitPolicy, PolicyError};
use crate::model::{self, DeviceKind, Metrics, ModelError, TrainingConfig};
use crate::publish::{self, LimitRow, Manifest, PublishError};
use crate::sources::{self, SourceError, SourceReport};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum NightlyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Feature(#[from] FeatureError),
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error("{file}: {error}")]
    Config { file: String, error: String },
    #[error("reading truth: {0}")]
    Truth(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NightlyConfig {
    pub engine: EngineConfig,
    pub label: LabelConfig,
    pub validation: ValidationConfig,
    pub training: TrainingConfig,
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
    pub fn load(dir: &Path) -> Result<Pipelines, NightlyError> {
        let config = |e: &dyn std::fmt::Display| NightlyError::Config {
            file: dir.display().to_string(),
            error: e.to_string(),
        };
        let nightly_file = dir.join("nightly.toml");
        let text = std::fs::read_to_string(&nightly_file).map_err(|e| NightlyError::Config {
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

fn parse_nightly(text: &str, file: &str) -> Result<NightlyConfig, NightlyError> {
    toml::from_str(text).map_err(|e| NightlyError::Config {
        file: file.to_string(),
        error: e.to_string(),
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct StageTime {
    pub stage: String,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct NightlyReport {
    pub root: String,
    #[serde(with = "crate::serde_date")]
    pub run_date: NaiveDate,
    #[serde(with = "crate::serde_date")]
    pub training_as_of: NaiveDate,
    pub sources: Vec<SourceReport>,
    pub features: Vec<FeatureReport>,
    /// features that separate defaulters best on the training set
    pub strongest_features: Vec<Strength>,
    /// the date of the stats tonight's PSI compares against (normally yesterday)
    #[serde(serialize_with = "serialize_optional_date")]
    pub drift_baseline: Option<NaiveDate>,
    pub most_drifted: Vec<Drift>,
    pub training_rows: usize,
    pub training_defaults: usize,
    pub model_version: String,
    pub holdout: Metrics,
    /// AUC of the true PD on the same held-out users, when the root has a synthetic truth
    pub oracle_auc: Option<f64>,
    pub scored_users: usize,
    pub limit_distribution: Vec<(String, usize)>,
    pub capped_by_request: usize,
    pub boosted: usize,
    pub manifest: Manifest,
    pub stages: Vec<StageTime>,
    pub seconds: f64,
}

fn serialize_optional_date<S: serde::Serializer>(
    date: &Option<NaiveDate>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match date {
        Some(date) => serializer.collect_str(date),
        None => serializer.serialize_none(),
    }
}

struct Stopwatch {
    started: Instant,
    stage: Instant,
    stages: Vec<StageTime>,
}

impl Stopwatch {
    fn new() -> Stopwatch {
        Stopwatch {
            started: Instant::now(),
            stage: Instant::now(),
            stages: Vec::new(),
        }
    }

    fn lap(&mut self, stage: &str) -> f64 {
        let seconds = self.stage.elapsed().as_secs_f64();
        info!(stage, seconds, "stage done");
        self.stages.push(StageTime {
            stage: stage.to_string(),
            seconds,
        });
        self.stage = Instant::now();
        seconds
    }
}

/// A DataFusion session under the engine's memory limit, spilling to disk past it.
pub fn session(engine: &EngineConfig) -> Result<SessionContext, NightlyError> {
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
    let runtime = runtime.build_arc().map_err(|e| NightlyError::Config {
        file: "nightly.toml [engine]".into(),
        error: e.to_string(),
    })?;
    Ok(SessionContext::new_with_config_rt(config, runtime))
}

/// Runs the whole chain for `run_date` on the root `store`.
pub async fn run(
    store: &Store,
    run_date: NaiveDate,
    pipelines: &Pipelines,
    device: DeviceKind,
) -> Result<NightlyReport, NightlyError> {
    let mut clock = Stopwatch::new();
    let device = device.device()?;
    let ctx = session(&pipelines.nightly.engine)?;
    let config = &pipelines.nightly;

    let sources =
        sources::validate_and_register(&ctx, store, run_date, config.validation.max_bad_share)
            .await?;
    clock.lap("validate");

    let training_as_of = dataset::training_as_of(run_date, &config.label);
    let mut dictionary = FeatureDictionary::load(store).await?;
    let mut feature_reports = Vec::new();
    let mut sets = Vec::new();
    for as_of in [training_as_of, run_date] {
        let started = Instant::now();
        let set = features::build(&ctx, store, &pipelines.features, &mut dictionary, as_of).await?;
        features::write(store, &set).await?;
        feature_reports.push(FeatureReport {
            as_of,
            users: set.users.len(),
            rows: set.nnz(),
            distinct_features: set.distinct_features(),
            dictionary_size: dictionary.len(),
            seconds: started.elapsed().as_secs_f64(),
        });
        sets.push(set);
    }
    dictionary.save(store).await?;
    let scoring_features = sets.pop().expect("two sets built");
    let training_features = sets.pop().expect("two sets built");
    let labels = dataset::labels(&ctx, training_as_of, &config.label).await?;

    // Stats: IV and AUC where labels exist (the training date), PSI against the newest
    // earlier stats (normally the previous night's).
    let (_, before_training) = stats::previous(store, training_as_of).await?;
    let training_stats = stats::compute(&training_features, Some(&labels), &before_training);
    stats::write(store, training_as_of, &training_stats, &dictionary).await?;
    let (drift_baseline, before_tonight) = stats::previous(store, run_date).await?;
    let tonight_stats = stats::compute(&scoring_features, None, &before_tonight);
    stats::write(store, run_date, &tonight_stats, &dictionary).await?;
    let strongest_features = stats::strongest(&training_stats, &dictionary, 10);
    let most_drifted = stats::most_drifted(&tonight_stats, &dictionary, 10);
    clock.lap("features");

    let training_set = dataset::training_set(&training_features, &labels)?;
    let trained = model::train(&training_set, dictionary.len(), &config.training, &device);
    let model = model::register(
        store,
        &trained,
        &dictionary,
        training_as_of,
        &config.training,
    )
    .await?;
    let oracle_auc = oracle_auc(store, &trained.holdout_users, &trained.holdout_labels).await?;
    clock.lap("train");

    let scoring_rows = Csr::from_features(&scoring_features);
    let pd = model::predict(&model.network, &scoring_rows, &device, 4096);
    clock.lap("score");

    let inputs = limits::load_inputs(&ctx, run_date).await?;
    let policy = &pipelines.policy;
    let rows: Vec<LimitRow> = scoring_rows
        .users
        .par_iter()
        .zip(pd.par_iter())
        .map(|(&user_id, &pd)| LimitRow {
            user_id,
            pd,
            decision: policy.decide(
                pd,
                inputs
                    .certificates
                    .get(&user_id)
                    .map_or(&[][..], |c| c.as_slice()),
                inputs.caps.get(&user_id).copied(),
            ),
        })
        .collect();
    clock.lap("limits");

    let manifest =
        publish::publish(store, &rows, run_date, &model.card.version, &policy.version).await?;
    clock.lap("publish");

    let credit: Vec<f64> = rows.iter().map(|r| r.decision.credit_limit).collect();
    let report = NightlyReport {
        root: store.url().to_string(),
        run_date,
        training_as_of,
        sources,
        features: feature_reports,
        strongest_features,
        drift_baseline,
        most_drifted,
        training_rows: training_set.labels.len(),
        training_defaults: training_set.positives(),
        model_version: model.card.version.clone(),
        holdout: trained.holdout,
        oracle_auc,
        scored_users: rows.len(),
        limit_distribution: limits::distribution(&credit),
        capped_by_request: rows
            .iter()
            .filter(|r| {
                r.decision
                    .reasons
                    .iter()
                    .any(|x| x == "capped_by_user_request")
            })
            .count(),
        boosted: rows
            .iter()
            .filter(|r| r.decision.certificate_boost > 0.0)
            .count(),
        manifest,
        stages: clock.stages.clone(),
        seconds: clock.started.elapsed().as_secs_f64(),
    };
    let json = serde_json::to_vec_pretty(&report).map_err(|e| NightlyError::Config {
        file: "report".into(),
        error: e.to_string(),
    })?;
    store
        .put(&format!("runs/{run_date}/report.json"), json.into())
        .await?;
    Ok(report)
}

/// AUC of the synthetic world's true PD on the given users, if the root has `truth/`.
async fn oracle_auc(
    store: &Store,
    users: &[u64],
    labels: &[f32],
) -> Result<Option<f64>, NightlyError> {
    let batches = store.read_parquet_dir("truth/true_pd").await?;
    if batches.is_empty() {
        return Ok(None);
    }
    let mut truth = HashMap::new();
    for batch in &batches {
        crate::schema::TRUTH
            .check("truth/true_pd", &batch.schema())
            .map_err(|e| NightlyError::Truth(e.to_string()))?;
        let ids = batch.column(0).as_primitive::<UInt64Type>();
        let pd = batch.column(1).as_primitive::<Float64Type>();
        for row in 0..batch.num_rows() {
            truth.insert(ids.value(row), pd.value(row));
        }
    }
    let scores: Option<Vec<f64>> = users.iter().map(|u| truth.get(u).copied()).collect();
    Ok(scores.and_then(|s| model::metrics::auc(&s, labels)))
}
