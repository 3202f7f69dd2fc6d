//! The nightly job, stage by stage: validate sources -> features as of the training date and
//! the run date -> labels -> train -> score -> limits -> suggest -> publish. Writes a JSON run
//! report to `runs/<date>/report.json` and returns it for the command's summary.
//!
//! A run holds the date's `lease` while it works and records a `checkpoint` after each stage
//! whose output is in the store (validate, features, train, score, publish), so `--resume`
//! continues an interrupted run; limits and suggestions are recomputed from the stored scores
//! (they are pure functions of them). Scoring can be split over machines with `score_shard`;
//! the resumed run merges the shards and publishes them as one table.
//!
//! This module only orders the stages and moves their outputs between them; each stage owns
//! its own reads and writes.

pub mod checkpoint;
pub mod lease;

use std::time::{Duration, Instant};

use chrono::NaiveDate;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tracing::info;

pub use crate::pipelines::{
    Engine, EngineConfig, NightlyConfig, Pipelines, PipelinesError, ValidationConfig, session,
    session_for,
};

use crate::dataset::{self, Csr, DatasetError};
use crate::features::stats::{self, Drift, Strength};
use crate::features::{self, FeatureDictionary, FeatureError, FeatureReport};
use crate::limits::{self, Decision, PolicyError, UserFacts};
use crate::model::{self, DeviceKind, Metrics, ModelError};
use crate::publish::{self, LimitRow, Manifest, PublishError};
use crate::scoring::{self, Scores, ScoringError, Shard};
use crate::sources::{self, SourceError, SourceReport};
use crate::store::{Store, StoreError};
use crate::suggestions;
use crate::training::{self, OracleAuc, Promote, TrainingError, oracle_auc};

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
    #[error(transparent)]
    Scoring(#[from] ScoringError),
    #[error(transparent)]
    Training(#[from] TrainingError),
    #[error(transparent)]
    Pipelines(#[from] PipelinesError),
    #[error(transparent)]
    Lease(#[from] lease::LeaseError),
    #[error("{file}: {error}")]
    Config { file: String, error: String },
    #[error("cannot resume: {0}")]
    Resume(String),
    #[error("{0}")]
    NotReady(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
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
    #[serde(with = "crate::serde_date::optional")]
    pub drift_baseline: Option<NaiveDate>,
    pub most_drifted: Vec<Drift>,
    pub training_rows: usize,
    pub training_defaults: usize,
    /// the model that scored tonight: the champion, or one trained and promoted tonight
    /// because the root had none
    pub model_version: String,
    pub trained_tonight: bool,
    /// the scoring model on the holdout of tonight's training set (the newest labels)
    pub holdout: Metrics,
    /// AUC of the true PD on the same held-out users, when the root has a synthetic truth
    pub oracle_auc: Option<f64>,
    /// AUC of the world's PD without its hidden parts, same users
    pub visible_oracle_auc: Option<f64>,
    pub scored_users: usize,
    pub limit_distribution: Vec<(String, usize)>,
    pub capped_by_request: usize,
    pub boosted: usize,
    /// users whose boosts the fraud checks withheld
    pub boosts_withheld_for_fraud: usize,
    /// users granted at least one category-scoped scenario limit
    pub with_scenario_limits: usize,
    pub manifest: Manifest,
    /// the run that published: its checkpoints are under runs/<date>/checkpoints/
    pub run_id: String,
    /// stages a resumed run took from the interrupted run's checkpoints
    pub resumed_stages: Vec<String>,
    /// stage times of this process (skipped stages are not listed)
    pub stages: Vec<StageTime>,
    pub seconds: f64,
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

/// The stages of a run, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    Validate,
    Features,
    Train,
    Score,
    Limits,
    Suggest,
    Publish,
}

impl Stage {
    pub const ALL: [Stage; 7] = [
        Stage::Validate,
        Stage::Features,
        Stage::Train,
        Stage::Score,
        Stage::Limits,
        Stage::Suggest,
        Stage::Publish,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Validate => "validate",
            Stage::Features => "features",
            Stage::Train => "train",
            Stage::Score => "score",
            Stage::Limits => "limits",
            Stage::Suggest => "suggest",
            Stage::Publish => "publish",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Stage {
    type Err = String;

    fn from_str(text: &str) -> Result<Stage, String> {
        Stage::ALL
            .into_iter()
            .find(|s| s.name() == text)
            .ok_or_else(|| {
                let names: Vec<&str> = Stage::ALL.iter().map(|s| s.name()).collect();
                format!("unknown stage '{text}': one of {}", names.join(", "))
            })
    }
}

/// How a run may behave beyond its configuration.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub device: DeviceKind,
    /// publish even when the gates of `[publish]` refuse; recorded in the manifest
    pub force: bool,
    /// continue the interrupted run of the date from its checkpoints (a fresh run when there
    /// is none)
    pub resume: bool,
    /// stop once this stage's checkpoint is written (e.g. `train`, before sharded scoring)
    pub stop_after: Option<Stage>,
    /// where the DataFusion queries run
    pub engine: Engine,
    /// how long the date's lease lasts without renewal
    pub lease_ttl: Duration,
}

impl RunOptions {
    pub fn new(device: DeviceKind) -> RunOptions {
        RunOptions {
            device,
            force: false,
            resume: false,
            stop_after: None,
            engine: Engine::Local,
            lease_ttl: Duration::from_secs(600),
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone)]
pub enum RunOutcome {
    Published(Box<NightlyReport>),
    /// `stop_after` reached; `--resume` continues
    Stopped {
        after: Stage,
        run_id: String,
    },
}

/// What the train stage leaves for the others.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Trained {
    model_version: String,
    trained_tonight: bool,
    holdout: Metrics,
    oracle_auc: Option<f64>,
    /// absent from checkpoints written before it
    #[serde(default)]
    visible_oracle_auc: Option<f64>,
    training_rows: usize,
    training_defaults: usize,
}

/// What the features stage leaves for the report.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Featured {
    reports: Vec<FeatureReport>,
    strongest: Vec<Strength>,
    #[serde(with = "crate::serde_date::optional")]
    drift_baseline: Option<NaiveDate>,
    most_drifted: Vec<Drift>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Scored {
    users: usize,
    /// set when the scores are the merge of this many shards
    shards: Option<usize>,
}

/// Runs the whole chain for `run_date` on the root `store`.
pub async fn run(
    store: &Store,
    run_date: NaiveDate,
    pipelines: &Pipelines,
    device: DeviceKind,
) -> Result<NightlyReport, NightlyError> {
    match run_with(store, run_date, pipelines, &RunOptions::new(device)).await? {
        RunOutcome::Published(report) => Ok(*report),
        RunOutcome::Stopped { after, .. } => Err(NightlyError::NotReady(format!(
            "the run stopped after {after}"
        ))),
    }
}

/// The report of a finished run of `run_date`, if there is one: `runs/<date>/report.json` is
/// written last, after the table is published, so its presence means the date is done.
pub async fn finished(store: &Store, run_date: NaiveDate) -> Result<bool, NightlyError> {
    Ok(store
        .get(&format!("runs/{run_date}/report.json"))
        .await?
        .is_some())
}

/// What a scheduler should do about a failed run, as the process exit code says it.
pub fn exit_code(error: &NightlyError) -> u8 {
    match error {
        // the input data was refused: fix it (see quarantine/), then run again
        NightlyError::Source(SourceError::TooManyBadRows { .. })
        | NightlyError::Source(SourceError::Schema(_)) => 3,
        // the new table was refused by the gates: look, then rerun with --force or fix
        NightlyError::Publish(PublishError::GateRefused { .. }) => 4,
        // another writer published this version first: retry later
        NightlyError::Publish(PublishError::Conflict { .. }) => 5,
        // configuration: fix pipelines/
        NightlyError::Config { .. } | NightlyError::Pipelines(_) | NightlyError::Policy(_) => 6,
        // another run of the date holds its lease: do not start a second one
        NightlyError::Lease(lease::LeaseError::Held { .. }) => 7,
        // --resume cannot continue (configuration changed) or a shard came before training:
        // run the date from the start, or run the missing step first
        NightlyError::Resume(_) | NightlyError::NotReady(_) => 8,
        // anything else, transient object-store errors included: retry with backoff
        _ => 1,
    }
}

/// `run` with options: holds the date's lease for the whole run.
pub async fn run_with(
    store: &Store,
    run_date: NaiveDate,
    pipelines: &Pipelines,
    options: &RunOptions,
) -> Result<RunOutcome, NightlyError> {
    let lease = lease::acquire(store, &format!("runs/{run_date}/lease"), options.lease_ttl).await?;
    let outcome = match session_for(&pipelines.nightly.engine, &options.engine).await {
        Ok(ctx) => {
            // a killed run's leftovers; never fails the run that finds them
            if let Err(error) =
                sources::sweep_stale_staging(store, &ctx, sources::STALE_STAGING).await
            {
                tracing::warn!(%error, "could not sweep stale staged sources");
            }
            let outcome = run_stages(&ctx, store, run_date, pipelines, options).await;
            // whether the run published, stopped or failed: a resumed run stages its own
            if let Err(error) = sources::drop_staging(store, &ctx).await {
                tracing::warn!(%error, "could not remove this run's staged sources");
            }
            outcome
        }
        Err(error) => Err(error.into()),
    };
    if let Err(error) = lease.release().await {
        // the lease expires on its own; the run's own outcome matters more
        tracing::warn!(%error, "could not release the lease");
    }
    outcome
}

async fn run_stages(
    ctx: &datafusion::prelude::SessionContext,
    store: &Store,
    run_date: NaiveDate,
    pipelines: &Pipelines,
    options: &RunOptions,
) -> Result<RunOutcome, NightlyError> {
    let mut clock = Stopwatch::new();
    let device = options.device.device()?;
    let config = &pipelines.nightly;
    let checkpoints = match options.resume {
        true => match checkpoint::Checkpoints::resume(store, run_date, pipelines).await? {
            Some(checkpoints) => checkpoints,
            None => {
                info!("no interrupted run of this date to resume: starting one");
                checkpoint::Checkpoints::start(store, run_date, pipelines).await?
            }
        },
        false => {
            // a rerun is unfinished until it finishes again
            store
                .delete(&format!("runs/{run_date}/report.json"))
                .await?;
            checkpoint::Checkpoints::start(store, run_date, pipelines).await?
        }
    };
    let run_id = checkpoints.run.run_id.clone();
    let mut resumed = Vec::new();
    let stopped = |after: Stage| {
        Ok(RunOutcome::Stopped {
            after,
            run_id: run_id.clone(),
        })
    };

    let sources = match checkpoints.get::<Vec<SourceReport>>("validate").await? {
        Some(sources) => {
            sources::register(&ctx, store, run_date).await?;
            resumed.push("validate".to_string());
            sources
        }
        None => {
            let sources = sources::validate_and_register(
                &ctx,
                store,
                run_date,
                config.validation.max_bad_share,
            )
            .await?;
            checkpoints.put("validate", &sources).await?;
            clock.lap("validate");
            sources
        }
    };
    if options.stop_after == Some(Stage::Validate) {
        return stopped(Stage::Validate);
    }

    let training_as_of = dataset::training_as_of(run_date, &config.label);
    // what the features stage built in this process; a resumed run reads it back instead
    let mut built: Option<Built> = None;
    let featured = match checkpoints.get::<Featured>("features").await? {
        Some(featured) => {
            resumed.push("features".to_string());
            featured
        }
        None => {
            let (featured, sets) =
                features_stage(store, &ctx, pipelines, training_as_of, run_date).await?;
            built = Some(sets);
            checkpoints.put("features", &featured).await?;
            clock.lap("features");
            featured
        }
    };
    if options.stop_after == Some(Stage::Features) {
        return stopped(Stage::Features);
    }
    let dictionary = match &built {
        Some(built) => built.dictionary.clone(),
        None => FeatureDictionary::load(store).await?,
    };

    let trained = match checkpoints.get::<Trained>("train").await? {
        Some(trained) => {
            resumed.push("train".to_string());
            trained
        }
        None => {
            let read;
            let (training_features, labels) = match &built {
                Some(built) => (&built.training, Some(&built.labels)),
                None => {
                    read = features::read(store, training_as_of).await?;
                    (&read, None)
                }
            };
            let trained = train_stage(
                store,
                &ctx,
                pipelines,
                &dictionary,
                training_features,
                labels,
                training_as_of,
                &device,
            )
            .await?;
            checkpoints.put("train", &trained).await?;
            clock.lap("train");
            trained
        }
    };
    if options.stop_after == Some(Stage::Train) {
        return stopped(Stage::Train);
    }
    let model = model::load(store, &trained.model_version, &device).await?;
    model.check_dictionary(&dictionary)?;

    let scoring_features = match built {
        Some(built) => built.scoring,
        None => features::read(store, run_date).await?,
    };
    let scoring_rows = Csr::from_features(&scoring_features);
    let scores = match checkpoints.get::<Scored>("score").await? {
        Some(_) => {
            resumed.push("score".to_string());
            scoring::read(store, run_date).await?
        }
        None => {
            let (scores, shards) = match complete_shards(store, &checkpoints, run_date).await? {
                Some(count) => {
                    info!(shards = count, "merging the scores of {count} shards");
                    (
                        scoring::merge_shards(store, run_date, count).await?,
                        Some(count),
                    )
                }
                None => (
                    scoring::score(
                        &model,
                        &scoring_rows,
                        &dictionary,
                        &config.evaluation,
                        &device,
                    ),
                    None,
                ),
            };
            if scores.users != scoring_rows.users {
                return Err(NightlyError::NotReady(format!(
                    "the scores of {run_date} cover {} users, the features {}: rerun the shards",
                    scores.users.len(),
                    scoring_rows.users.len()
                )));
            }
            scoring::write(store, run_date, &scores).await?;
            checkpoints
                .put(
                    "score",
                    &Scored {
                        users: scores.users.len(),
                        shards,
                    },
                )
                .await?;
            clock.lap("score");
            scores
        }
    };
    if options.stop_after == Some(Stage::Score) {
        return stopped(Stage::Score);
    }

    let snapshot = sources::snapshot_before(store, "profiles", run_date).await?;
    let policy = &pipelines.policy;
    let inputs = limits::load_inputs(&ctx, run_date, snapshot, policy).await?;
    let previous = publish::limits_before(store, run_date).await?;
    let facts: Vec<UserFacts> = scores
        .users
        .par_iter()
        .map(|user| inputs.facts(*user, previous.get(user).copied()))
        .collect();
    let decisions: Vec<Decision> = (0..scores.users.len())
        .into_par_iter()
        .map(|i| policy.decide(scores.pd[i], &facts[i]))
        .collect();
    clock.lap("limits");
    if options.stop_after == Some(Stage::Limits) {
        return stopped(Stage::Limits);
    }

    let candidates = suggestions::representatives(&inputs.certificates);
    let suggested = suggestions::suggest(
        &model,
        &scoring_rows,
        &dictionary,
        policy,
        &facts,
        &decisions,
        &candidates,
        &device,
        config.evaluation.suggestions_per_user,
    );
    let rows: Vec<LimitRow> = decisions
        .into_par_iter()
        .zip(suggested.into_par_iter())
        .enumerate()
        .map(|(i, (mut decision, suggested))| {
            decision
                .reasons
                .extend(scores.reasons[i].iter().map(|code| format!("model:{code}")));
            LimitRow {
                user_id: scores.users[i],
                pd: scores.pd[i],
                decision,
                suggestions: suggestions::format(&suggested),
            }
        })
        .collect();
    clock.lap("suggest");
    if options.stop_after == Some(Stage::Suggest) {
        return stopped(Stage::Suggest);
    }

    let manifest = match checkpoints.get::<Manifest>("publish").await? {
        Some(manifest) => {
            resumed.push("publish".to_string());
            manifest
        }
        // a crash between the commit and its checkpoint: the commit carries the run id
        None => match publish::published_by_run(store, &run_id).await? {
            Some(manifest) => {
                resumed.push("publish".to_string());
                checkpoints.put("publish", &manifest).await?;
                manifest
            }
            None => {
                let manifest = publish::publish_gated(
                    store,
                    &rows,
                    &publish::Publication {
                        as_of: run_date,
                        model_version: &model.card.version,
                        policy_version: &policy.version,
                        run_id: Some(&run_id),
                    },
                    &config.publish,
                    options.force,
                )
                .await?;
                checkpoints.put("publish", &manifest).await?;
                clock.lap("publish");
                manifest
            }
        },
    };

    let credit: Vec<f64> = rows.iter().map(|r| r.decision.credit_limit).collect();
    let count = |reason: &dyn Fn(&str) -> bool| {
        rows.iter()
            .filter(|r| r.decision.reasons.iter().any(|x| reason(x)))
            .count()
    };
    let report = NightlyReport {
        root: store.url().to_string(),
        run_date,
        training_as_of,
        sources,
        features: featured.reports,
        strongest_features: featured.strongest,
        drift_baseline: featured.drift_baseline,
        most_drifted: featured.most_drifted,
        training_rows: trained.training_rows,
        training_defaults: trained.training_defaults,
        model_version: trained.model_version,
        trained_tonight: trained.trained_tonight,
        holdout: trained.holdout,
        oracle_auc: trained.oracle_auc,
        visible_oracle_auc: trained.visible_oracle_auc,
        scored_users: rows.len(),
        limit_distribution: limits::distribution(&credit),
        capped_by_request: count(&|x| x == "capped_by_user_request"),
        boosted: rows
            .iter()
            .filter(|r| r.decision.certificate_boost > 0.0)
            .count(),
        boosts_withheld_for_fraud: count(&|x| {
            x.starts_with("certificate_boost_withheld:") && !x.ends_with("pd_above_boost_bound")
        }),
        with_scenario_limits: rows
            .iter()
            .filter(|r| !r.decision.scenarios.is_empty())
            .count(),
        manifest,
        run_id,
        resumed_stages: resumed,
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
    Ok(RunOutcome::Published(Box::new(report)))
}

/// What the features stage leaves in memory for the stages after it in the same process
/// (the same data a resumed run reads back from the store).
struct Built {
    training: features::FeatureSet,
    scoring: features::FeatureSet,
    labels: std::collections::HashMap<u64, bool>,
    dictionary: FeatureDictionary,
}

/// Features as of the training date and the run date, written with their stats.
async fn features_stage(
    store: &Store,
    ctx: &datafusion::prelude::SessionContext,
    pipelines: &Pipelines,
    training_as_of: NaiveDate,
    run_date: NaiveDate,
) -> Result<(Featured, Built), NightlyError> {
    let config = &pipelines.nightly;
    let mut dictionary = FeatureDictionary::load(store).await?;
    let mut reports = Vec::new();
    let mut build = async |as_of: NaiveDate, dictionary: &mut FeatureDictionary| {
        let started = Instant::now();
        let set = features::build(ctx, store, &pipelines.features, dictionary, as_of).await?;
        features::write(store, &set).await?;
        reports.push(FeatureReport {
            as_of,
            users: set.users.len(),
            rows: set.nnz(),
            distinct_features: set.distinct_features(),
            dictionary_size: dictionary.len(),
            seconds: started.elapsed().as_secs_f64(),
        });
        Ok::<_, NightlyError>(set)
    };
    let training_features = build(training_as_of, &mut dictionary).await?;
    let scoring_features = build(run_date, &mut dictionary).await?;
    dictionary.save(store).await?;
    let labels = dataset::labels(ctx, training_as_of, &config.label).await?;

    // Stats: IV and AUC where labels exist (the training date), PSI against the newest
    // earlier stats (normally the previous night's).
    let (_, before_training) = stats::previous(store, training_as_of).await?;
    let training_stats = stats::compute(&training_features, Some(&labels), &before_training);
    stats::write(store, training_as_of, &training_stats, &dictionary).await?;
    let (drift_baseline, before_tonight) = stats::previous(store, run_date).await?;
    let tonight_stats = stats::compute(&scoring_features, None, &before_tonight);
    stats::write(store, run_date, &tonight_stats, &dictionary).await?;
    let featured = Featured {
        reports,
        strongest: stats::strongest(&training_stats, &dictionary, 10),
        drift_baseline,
        most_drifted: stats::most_drifted(&tonight_stats, &dictionary, 10),
    };
    let built = Built {
        training: training_features,
        scoring: scoring_features,
        labels,
        dictionary,
    };
    Ok((featured, built))
}

/// The champion, or a model trained and promoted tonight when the root has none, with how it
/// does on the holdout of tonight's training set (the newest labels).
async fn train_stage(
    store: &Store,
    ctx: &datafusion::prelude::SessionContext,
    pipelines: &Pipelines,
    dictionary: &FeatureDictionary,
    training_features: &features::FeatureSet,
    labels: Option<&std::collections::HashMap<u64, bool>>,
    training_as_of: NaiveDate,
    device: &burn::tensor::Device,
) -> Result<Trained, NightlyError> {
    let config = &pipelines.nightly;
    let queried;
    let labels = match labels {
        Some(labels) => labels,
        None => {
            queried = dataset::labels(ctx, training_as_of, &config.label).await?;
            &queried
        }
    };
    let training_set = dataset::training_set(training_features, labels)?;
    let (model, trained_tonight) = match model::champion(store).await? {
        Some(champion) => {
            let model = model::load(store, &champion.version, device).await?;
            model.check_dictionary(dictionary)?;
            info!(model = %champion.version, "scoring with the champion");
            (model, false)
        }
        None => {
            info!("no champion under models/: training one");
            let (model, _) = training::train_and_register(
                store,
                &training_set,
                dictionary,
                true,
                format!(
                    "the redflower world at {}: {}",
                    store.url(),
                    dataset::describe_window(training_as_of, &config.label)
                ),
                pipelines,
                device,
                Promote::IfNoChampion,
            )
            .await?;
            (model, true)
        }
    };
    let (holdout_rows, holdout_labels) = training::holdout(&training_set, &config.training);
    let holdout_pd = model.pd(&holdout_rows, device);
    let (oracle_auc, visible_oracle_auc) =
        OracleAuc::split(oracle_auc(store, &holdout_rows.users, &holdout_labels).await?);
    Ok(Trained {
        model_version: model.card.version.clone(),
        trained_tonight,
        holdout: model::metrics::evaluate(&holdout_pd, &holdout_labels),
        oracle_auc,
        visible_oracle_auc,
        training_rows: training_set.labels.len(),
        training_defaults: training_set.positives(),
    })
}

fn shard_stage(shard: Shard) -> String {
    format!("score-shard-{:05}-of-{:05}", shard.index, shard.count)
}

/// The shard count whose shards all completed in this run, if any.
async fn complete_shards(
    store: &Store,
    checkpoints: &checkpoint::Checkpoints,
    run_date: NaiveDate,
) -> Result<Option<usize>, NightlyError> {
    let mut counts: Vec<usize> = store
        .list(&format!("runs/{run_date}/checkpoints"))
        .await?
        .into_iter()
        .filter_map(|(path, _)| {
            let name = path.rsplit('/').next()?.strip_suffix(".json")?;
            name.strip_prefix("score-shard-")?
                .split_once("-of-")?
                .1
                .parse()
                .ok()
        })
        .collect();
    counts.sort_unstable();
    counts.dedup();
    for count in counts.into_iter().rev() {
        let mut complete = true;
        for index in 0..count {
            let stage = shard_stage(Shard { index, count });
            if checkpoints.get::<Scored>(&stage).await?.is_none() {
                complete = false;
                break;
            }
        }
        if complete {
            return Ok(Some(count));
        }
    }
    Ok(None)
}

/// What one shard scored.
#[derive(Debug, Clone, Serialize)]
pub struct ShardReport {
    #[serde(with = "crate::serde_date")]
    pub run_date: NaiveDate,
    pub shard: String,
    pub run_id: String,
    pub users: usize,
    pub model_version: String,
    pub seconds: f64,
}

/// Scores one slice of `run_date`'s users with the model the run's train stage chose, for
/// runs that spread scoring over machines (or GPUs): after `nightly --stop-after train`, each
/// machine runs one shard; `nightly --resume` then merges them and publishes one table.
pub async fn score_shard(
    store: &Store,
    run_date: NaiveDate,
    pipelines: &Pipelines,
    device: DeviceKind,
    shard: Shard,
    lease_ttl: Duration,
) -> Result<ShardReport, NightlyError> {
    let started = Instant::now();
    let lease = lease::acquire(
        store,
        &format!(
            "runs/{run_date}/lease-shard-{:05}-of-{:05}",
            shard.index, shard.count
        ),
        lease_ttl,
    )
    .await?;
    let outcome = async {
        let not_ready = || {
            NightlyError::NotReady(format!(
                "shard {shard} of {run_date}: the run has not finished its train stage on {}; run `redflower nightly --date {run_date} --stop-after train` first",
                store.url()
            ))
        };
        let checkpoints = checkpoint::Checkpoints::resume(store, run_date, pipelines)
            .await?
            .ok_or_else(not_ready)?;
        let trained = checkpoints
            .get::<Trained>("train")
            .await?
            .ok_or_else(not_ready)?;
        let device = device.device()?;
        let dictionary = FeatureDictionary::load(store).await?;
        let model = model::load(store, &trained.model_version, &device).await?;
        model.check_dictionary(&dictionary)?;
        let rows = Csr::from_features(&features::read(store, run_date).await?);
        let slice: Vec<usize> = shard.rows(rows.len()).collect();
        let scores: Scores = scoring::score(
            &model,
            &rows.select(&slice),
            &dictionary,
            &pipelines.nightly.evaluation,
            &device,
        );
        scoring::write_shard(store, run_date, shard, &scores).await?;
        checkpoints
            .put(
                &shard_stage(shard),
                &Scored {
                    users: scores.users.len(),
                    shards: None,
                },
            )
            .await?;
        Ok(ShardReport {
            run_date,
            shard: shard.to_string(),
            run_id: checkpoints.run.run_id.clone(),
            users: scores.users.len(),
            model_version: trained.model_version,
            seconds: started.elapsed().as_secs_f64(),
        })
    }
    .await;
    if let Err(error) = lease.release().await {
        tracing::warn!(%error, "could not release the shard lease");
    }
    outcome
}
