//! ML engineers' workflows on a root: train a model on the newest labelled window of a world,
//! evaluate a registered model on it, compare two. Orders validate -> features -> labels the
//! way the nightly job does, then hands the model stage a training set; writes `models/`
//! (plus the feature tables and dictionary the feature stage writes).

use burn::tensor::Device;
use chrono::NaiveDate;
use serde::Serialize;
use tracing::info;

use crate::cause::{Cause, Classify};
use crate::config::{Pipelines, PipelinesError};
use crate::dataset::DatasetError;
use crate::dataset::{self, Csr, TrainingSet};
use crate::engine::{self, EngineError};
use crate::features::FeatureError;
use crate::features::{self, FeatureDictionary, FeatureSet};
use crate::model::ModelError;
use crate::model::evaluation::{self, Evaluation, EvaluationInput};
use crate::model::metrics::Outcome;
use crate::model::promotion::PromotionDecision;
use crate::model::{
    self, Model, ModelCard, Provenance, Split, TrainedModel, TrainingConfig, report,
};
use crate::policy::{Grade, LimitPolicy, UserFacts};
use crate::sources::{self, SourceError};
use crate::store::{Store, StoreError, layout};
use crate::synth::{SynthError, truth};

#[derive(Debug, thiserror::Error)]
pub enum TrainingError {
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
    Pipelines(#[from] PipelinesError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("reading truth: {0}")]
    Truth(#[from] SynthError),
    #[error("{path}: {error}")]
    Write { path: String, error: String },
    #[error(
        "model {version} did not pass the promotion gates: {}; it is registered but not the champion (see its report; --force promotes it anyway)",
        refusals.join("; ")
    )]
    PromotionRefused {
        version: String,
        refusals: Vec<String>,
    },
}

impl Classify for TrainingError {
    fn cause(&self) -> Cause {
        match self {
            TrainingError::Store(e) => e.cause(),
            TrainingError::Source(e) => e.cause(),
            TrainingError::Feature(e) => e.cause(),
            TrainingError::Dataset(e) => e.cause(),
            TrainingError::Model(e) => e.cause(),
            TrainingError::Pipelines(e) => e.cause(),
            TrainingError::Engine(e) => e.cause(),
            TrainingError::Truth(e) => e.cause(),
            TrainingError::Write { .. } => Cause::Transient,
            TrainingError::PromotionRefused { .. } => Cause::GateRefused,
        }
    }
}

/// Features as of the training date of `run_date`, and labels known by `run_date`.
pub struct LabelledWindow {
    /// where the rows come from and the data window, for the model card
    pub data: String,
    pub run_date: NaiveDate,
    pub dictionary: FeatureDictionary,
    pub features: FeatureSet,
    pub set: TrainingSet,
}

/// What building a labelled window may leave in the root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writes {
    /// quarantine, the features and the dictionary's new names: a model trained on the
    /// window will be registered, and its feature ids must mean the same to every reader
    Everything,
    /// nothing but its session's staging (removed when done): evaluations and comparisons
    /// read the root as it is, beside whatever run is writing it; names the dictionary
    /// lacks get ids in memory only, which no registered model knows
    Nothing,
}

pub async fn labelled_window(
    store: &Store,
    run_date: NaiveDate,
    pipelines: &Pipelines,
    writes: Writes,
) -> Result<LabelledWindow, TrainingError> {
    let config = &pipelines.nightly;
    let ctx = engine::session(&config.engine)?;
    match writes {
        Writes::Everything => {
            let limit = config.validation.max_bad_share;
            sources::validate_and_register(&ctx, store, run_date, limit).await?;
        }
        // the clean views hold the same rows; only the counting and the quarantine are skipped
        Writes::Nothing => {
            sources::register(&ctx, store, run_date).await?;
        }
    }
    let as_of = dataset::training_as_of(run_date, &config.label);
    let mut dictionary = FeatureDictionary::load(store).await?;
    let mut features =
        features::build(&ctx, store, &pipelines.features, &mut dictionary, as_of).await?;
    if writes == Writes::Everything {
        features.remap(&dictionary.commit(store).await?);
        features::write(store, &features, pipelines.nightly.publish.parts).await?;
    }
    let labels = dataset::labels(&ctx, as_of, &config.label).await?;
    sources::drop_staging(store, &ctx).await?;
    let set = dataset::training_set(&features, &labels)?;
    Ok(LabelledWindow {
        data: format!(
            "the redflower world at {}: {}",
            store.url(),
            dataset::describe_window(as_of, &config.label)
        ),
        run_date,
        dictionary,
        features,
        set,
    })
}

/// The held-out rows of a training set (never trained on) and their labels.
pub fn holdout(set: &TrainingSet, config: &TrainingConfig) -> (Csr, Vec<f32>) {
    let rows: Vec<usize> = (0..set.rows.len())
        .filter(|&i| Split::of(set.rows.users[i], config) == Split::Holdout)
        .collect();
    (
        set.rows.select(&rows),
        rows.iter().map(|&i| set.labels[i]).collect(),
    )
}

/// When `train` makes its model the champion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Promote {
    /// if it passes the promotion gates (`train --promote`)
    IfGatesPass,
    /// whatever the gates say, recording the ones it failed (`train --promote --force`)
    Force,
    /// if the root has no champion and it clears the floors (the first night); an error
    /// otherwise, unless `force`
    FirstModel {
        force: bool,
    },
    Never,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrainOutcome {
    pub card: ModelCard,
    pub evaluation: Evaluation,
    pub promoted: bool,
    /// the gates' verdict (refusals empty: passed)
    pub promotion: PromotionDecision,
    pub report: String,
}

/// Saves an evaluation as `metrics.json` and `report.html` under `folder`.
pub async fn write_evaluation(
    store: &Store,
    folder: &str,
    card: &ModelCard,
    evaluation: &Evaluation,
) -> Result<String, TrainingError> {
    let json = serde_json::to_vec_pretty(evaluation).map_err(|e| TrainingError::Write {
        path: format!("{folder}/metrics.json"),
        error: e.to_string(),
    })?;
    store
        .put(&format!("{folder}/metrics.json"), json.into())
        .await?;
    let html = report::render(card, evaluation);
    let path = format!("{folder}/report.html");
    store.put(&path, html.into_bytes().into()).await?;
    Ok(format!("{}/{path}", store.url()))
}

/// The champion's PD on `rows`, if there is a champion other than `except` that can read
/// tonight's dictionary.
async fn champion_pd(
    store: &Store,
    rows: &Csr,
    dictionary: Option<&FeatureDictionary>,
    except: &str,
    device: &Device,
) -> Result<Option<(String, Vec<f64>)>, TrainingError> {
    let Some(champion) = model::champion(store).await? else {
        return Ok(None);
    };
    if champion.version == except {
        return Ok(None);
    }
    let model = model::load(store, &champion.version, device).await?;
    if let Some(dictionary) = dictionary
        && model.check_dictionary(dictionary).is_err()
    {
        return Ok(None);
    }
    Ok(Some((champion.version, model.pd(rows, device))))
}

/// What registering a trained model records besides the model itself.
pub struct Registration<'a> {
    /// where the rows come from, for the model card
    pub data: String,
    pub trained_as_of: NaiveDate,
    pub dictionary: &'a FeatureDictionary,
    /// the settings it was trained with (`l2` as the trainer chose it goes on the card)
    pub training: &'a TrainingConfig,
    /// rows of a redflower world: users with segments in the dictionary and, where the root
    /// has `truth/`, an oracle; false for a table of your own, whose row numbers are nobody
    pub from_world: bool,
    /// more for the card's limitations
    pub notes: Vec<String>,
    /// files saved beside the weights: (name, JSON)
    pub attachments: Vec<(String, serde_json::Value)>,
}

/// Trains on a world's training set, registers the model with its evaluation and report,
/// and promotes it as asked.
pub async fn train_and_register(
    store: &Store,
    set: &TrainingSet,
    dictionary: &FeatureDictionary,
    data: String,
    pipelines: &Pipelines,
    device: &Device,
    promote: Promote,
) -> Result<(Model, TrainOutcome), TrainingError> {
    let config = &pipelines.nightly;
    let l2_scales = config.training.l2_scales(dictionary.families());
    let excluded = match config.training.exclude_protected {
        true => pipelines.features.protected_families(),
        false => Vec::new(),
    };
    let (trained, notes) = match excluded.is_empty() {
        true => (
            model::train(set, &l2_scales, &config.training, device),
            Vec::new(),
        ),
        false => (
            train_without(
                set,
                dictionary,
                &excluded,
                &l2_scales,
                &config.training,
                device,
            ),
            vec![format!(
                "Protected attributes left out ([training] exclude_protected): {}; trained without them and their parameters are zero, so no score depends on them (a correlated feature still can stand in for one).",
                excluded.join(", ")
            )],
        ),
    };
    let registration = Registration {
        data,
        trained_as_of: set.as_of,
        dictionary,
        training: &config.training,
        from_world: true,
        notes,
        attachments: Vec::new(),
    };
    register_trained(store, &trained, registration, pipelines, device, promote).await
}

/// Trains on `set` without the features of the `excluded` families, then zeroes their
/// parameters, so the model reads the same on rows that still carry them.
fn train_without(
    set: &TrainingSet,
    dictionary: &FeatureDictionary,
    excluded: &[String],
    l2_scales: &[f32],
    config: &TrainingConfig,
    device: &Device,
) -> TrainedModel {
    let drop = dictionary.family_mask(excluded);
    let without = TrainingSet {
        as_of: set.as_of,
        rows: set.rows.without(&drop),
        labels: set.labels.clone(),
    };
    let trained = model::train(&without, l2_scales, config, device);
    TrainedModel {
        network: trained.network.without_features(&drop),
        // the rows as they are, so the champion is compared on what it reads
        holdout_rows: holdout(set, config).0,
        ..trained
    }
}

/// What the policy gives each PD on its own (no income band, certificates, caps or last
/// night's limit): the model's part in approvals and limits, for the fairness view.
pub fn policy_outcomes(policy: &LimitPolicy, pd: &[f64]) -> Vec<Outcome> {
    let facts = UserFacts::default();
    pd.iter()
        .map(|&p| {
            let decision = policy.decide(p, &facts);
            Outcome {
                approved: decision.grade != Grade::Decline,
                limit: decision.credit_limit,
            }
        })
        .collect()
}

/// Registers a trained model with its evaluation on the holdout (next to the champion, when
/// the champion reads the same dictionary) and its report, and promotes it as asked.
pub async fn register_trained(
    store: &Store,
    trained: &TrainedModel,
    registration: Registration<'_>,
    pipelines: &Pipelines,
    device: &Device,
    promote: Promote,
) -> Result<(Model, TrainOutcome), TrainingError> {
    let config = &pipelines.nightly;
    let dictionary = registration.dictionary;
    let oracle = match registration.from_world {
        true => oracle_auc(store, &trained.holdout_users, &trained.holdout_labels).await?,
        false => None,
    };
    let (oracle_auc, visible_oracle_auc) = OracleAuc::split(oracle);
    let provenance = Provenance {
        data: registration.data,
        trained_as_of: registration.trained_as_of,
        training: registration.training,
        scorecard: config.evaluation.scorecard,
        oracle_auc,
        visible_oracle_auc,
        notes: registration.notes,
        attachments: registration.attachments,
    };
    let model = model::register(store, trained, dictionary, &provenance).await?;
    let version = model.card.version.clone();
    let holdout = &trained.holdout_rows;
    let champion = champion_pd(store, holdout, Some(dictionary), &version, device).await?;
    let evaluation = evaluation::evaluate(EvaluationInput {
        model_version: &version,
        rows_evaluated: format!(
            "the holdout of the training set as of {}",
            registration.trained_as_of
        ),
        pd: &trained.holdout_pd,
        uncalibrated: Some(trained.holdout_raw),
        labels: &trained.holdout_labels,
        rows: holdout,
        dictionary: registration.from_world.then_some(dictionary),
        config: &config.evaluation,
        oracle_auc,
        visible_oracle_auc,
        champion: champion.as_ref().map(|(v, pd)| (v.as_str(), pd.as_slice())),
        outcomes: &policy_outcomes(&pipelines.policy, &trained.holdout_pd),
        protected: &pipelines.features.protected_families(),
    });
    let report =
        write_evaluation(store, &layout::model(&version), &model.card, &evaluation).await?;
    let promotion = decide_promotion(store, &version, &evaluation, promote, config).await?;
    let outcome = TrainOutcome {
        card: model.card.clone(),
        evaluation,
        promoted: promotion.promoted,
        promotion,
        report,
    };
    Ok((model, outcome))
}

/// Applies the promotion gates to a registered model's holdout evaluation and promotes it as
/// `promote` asks.
async fn decide_promotion(
    store: &Store,
    version: &str,
    evaluation: &Evaluation,
    promote: Promote,
    config: &crate::config::NightlyConfig,
) -> Result<PromotionDecision, TrainingError> {
    let refusals = config.promotion.refusals(evaluation);
    let passed = refusals.is_empty();
    let (promoted, forced) = match promote {
        Promote::Never => (false, false),
        Promote::IfGatesPass => (passed, false),
        Promote::Force => (true, !passed),
        Promote::FirstModel { force } => {
            if model::champion(store).await?.is_some() {
                (false, false)
            } else if !passed && !force {
                return Err(TrainingError::PromotionRefused {
                    version: version.to_string(),
                    refusals,
                });
            } else {
                (true, !passed)
            }
        }
    };
    if promoted {
        model::promote(store, version, forced.then(|| refusals.clone())).await?;
        info!(model = %version, forced, "promoted to champion");
    }
    Ok(PromotionDecision {
        promoted,
        refusals,
        forced,
    })
}

/// Evaluates a registered model on the holdout of `window`, next to the champion, and saves
/// the result under `models/<version>/evaluations/<run date>/`.
pub async fn evaluate(
    store: &Store,
    window: &LabelledWindow,
    version: &str,
    pipelines: &Pipelines,
    device: &Device,
) -> Result<(ModelCard, Evaluation, String), TrainingError> {
    let config = &pipelines.nightly;
    let model = model::load(store, version, device).await?;
    model.check_dictionary(&window.dictionary)?;
    let (rows, labels) = holdout(&window.set, &config.training);
    let pd = model.pd(&rows, device);
    let (oracle_auc, visible_oracle_auc) =
        OracleAuc::split(oracle_auc(store, &rows.users, &labels).await?);
    let champion = champion_pd(store, &rows, Some(&window.dictionary), version, device).await?;
    let evaluation = evaluation::evaluate(EvaluationInput {
        model_version: version,
        rows_evaluated: format!(
            "the holdout of the training set as of {} (run date {})",
            window.set.as_of, window.run_date
        ),
        pd: &pd,
        uncalibrated: None,
        labels: &labels,
        rows: &rows,
        dictionary: Some(&window.dictionary),
        config: &config.evaluation,
        oracle_auc,
        visible_oracle_auc,
        champion: champion.as_ref().map(|(v, pd)| (v.as_str(), pd.as_slice())),
        outcomes: &policy_outcomes(&pipelines.policy, &pd),
        protected: &pipelines.features.protected_families(),
    });
    let report = write_evaluation(
        store,
        &layout::evaluation(version, window.run_date),
        &model.card,
        &evaluation,
    )
    .await?;
    Ok((model.card, evaluation, report))
}

/// AUC of a synthetic world's true PD on some users, and of its PD without the hidden
/// parts (`visible_pd` in schemas/truth.json), when the world has it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OracleAuc {
    pub true_pd: f64,
    pub visible_pd: Option<f64>,
}

impl OracleAuc {
    /// (oracle AUC, visible oracle AUC): the two fields cards, evaluations and checkpoints
    /// store.
    pub fn split(oracle: Option<OracleAuc>) -> (Option<f64>, Option<f64>) {
        (oracle.map(|o| o.true_pd), oracle.and_then(|o| o.visible_pd))
    }
}

/// The oracle AUCs on the given users, if the root has `truth/`.
pub async fn oracle_auc(
    store: &Store,
    users: &[u64],
    labels: &[f32],
) -> Result<Option<OracleAuc>, TrainingError> {
    let Some(found) = truth::read(store, users).await? else {
        return Ok(None);
    };
    let true_pd: Vec<f64> = found.iter().map(|f| f.true_pd).collect();
    let visible_pd: Option<Vec<f64>> = found.iter().map(|f| f.visible_pd).collect();
    Ok(model::metrics::auc(&true_pd, labels).map(|auc| OracleAuc {
        true_pd: auc,
        visible_pd: visible_pd.and_then(|v| model::metrics::auc(&v, labels)),
    }))
}
