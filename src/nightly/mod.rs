//! The nightly job, stage by stage: validate sources -> features as of the training date and
//! the run date -> labels -> train -> score -> limits -> publish. Writes a JSON run report to
//! `runs/<date>/report.json` and returns it for the command's summary.
//!
//! This module only orders the stages and moves their outputs between them; each stage owns
//! its own reads and writes.

use std::time::Instant;

use chrono::NaiveDate;
use rayon::prelude::*;
use serde::Serialize;
use tracing::info;

pub use crate::pipelines::{
    EngineConfig, NightlyConfig, Pipelines, PipelinesError, ValidationConfig, session,
};

use crate::dataset::{self, Csr, DatasetError};
use crate::features::stats::{self, Drift, Strength};
use crate::features::{self, FeatureDictionary, FeatureError, FeatureReport};
use crate::limits::{self, Decision, PolicyError, UserFacts};
use crate::model::{self, DeviceKind, Metrics, ModelError};
use crate::publish::{self, LimitRow, Manifest, PublishError};
use crate::scoring::{self, ScoringError};
use crate::sources::{self, SourceError, SourceReport};
use crate::store::{Store, StoreError};
use crate::suggestions;
use crate::training::{self, Promote, TrainingError, oracle_auc};

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
    #[error("{file}: {error}")]
    Config { file: String, error: String },
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
    /// the model that scored tonight: the champion, or one trained and promoted tonight
    /// because the root had none
    pub model_version: String,
    pub trained_tonight: bool,
    /// the scoring model on the holdout of tonight's training set (the newest labels)
    pub holdout: Metrics,
    /// AUC of the true PD on the same held-out users, when the root has a synthetic truth
    pub oracle_auc: Option<f64>,
    pub scored_users: usize,
    pub limit_distribution: Vec<(String, usize)>,
    pub capped_by_request: usize,
    pub boosted: usize,
    /// users whose boosts the fraud checks withheld
    pub boosts_withheld_for_fraud: usize,
    /// users granted at least one category-scoped scenario limit
    pub with_scenario_limits: usize,
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

/// Runs the whole chain for `run_date` on the root `store`.
pub async fn run(
    store: &Store,
    run_date: NaiveDate,
    pipelines: &Pipelines,
    device: DeviceKind,
) -> Result<NightlyReport, NightlyError> {
    run_with(
        store,
        run_date,
        pipelines,
        &RunOptions {
            device,
            force: false,
        },
    )
    .await
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
        // anything else, transient object-store errors included: retry with backoff
        _ => 1,
    }
}

/// How a run may behave beyond its configuration.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    pub device: DeviceKind,
    /// publish even when the gates of `[publish]` refuse; recorded in the manifest
    pub force: bool,
}

/// `run` with options.
pub async fn run_with(
    store: &Store,
    run_date: NaiveDate,
    pipelines: &Pipelines,
    options: &RunOptions,
) -> Result<NightlyReport, NightlyError> {
    let device = options.device;
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
    let (model, trained_tonight) = match model::champion(store).await? {
        Some(champion) => {
            let model = model::load(store, &champion.version, &device).await?;
            model.check_dictionary(&dictionary)?;
            info!(model = %champion.version, "scoring with the champion");
            (model, false)
        }
        None => {
            info!("no champion under models/: training one");
            let (model, _) = training::train_and_register(
                store,
                &training_set,
                &dictionary,
                true,
                format!(
                    "the redflower world at {}: {}",
                    store.url(),
                    dataset::describe_window(training_as_of, &config.label)
                ),
                pipelines,
                &device,
                Promote::IfNoChampion,
            )
            .await?;
            (model, true)
        }
    };
    // how the scoring model does on the newest labels, night after night
    let (holdout_rows, holdout_labels) = training::holdout(&training_set, &config.training);
    let holdout_pd = model.pd(&holdout_rows, &device);
    let holdout = model::metrics::evaluate(&holdout_pd, &holdout_labels);
    let oracle_auc = oracle_auc(store, &holdout_rows.users, &holdout_labels).await?;
    clock.lap("train");

    let scoring_rows = Csr::from_features(&scoring_features);
    let scores = scoring::score(
        &model,
        &scoring_rows,
        &dictionary,
        &config.evaluation,
        &device,
    );
    scoring::write(store, run_date, &scores).await?;
    clock.lap("score");

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

    let manifest = publish::publish_gated(
        store,
        &rows,
        run_date,
        &model.card.version,
        &policy.version,
        &config.publish,
        options.force,
    )
    .await?;
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
        trained_tonight,
        holdout,
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
        boosts_withheld_for_fraud: rows
            .iter()
            .filter(|r| {
                r.decision.reasons.iter().any(|x| {
                    x.starts_with("certificate_boost_withheld:")
                        && !x.ends_with("pd_above_boost_bound")
                })
            })
            .count(),
        with_scenario_limits: rows
            .iter()
            .filter(|r| !r.decision.scenarios.is_empty())
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
