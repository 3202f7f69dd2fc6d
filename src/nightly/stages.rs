//! The stages of one run, in order, each a function of its own. `run_stages` moves their
//! outputs from one to the next; `Progress::checkpointed` is the one way a stage is skipped
//! on `--resume` (its checkpoint read back) or run and checkpointed, keyed by `Stage`.
//! Limits and suggestions are not checkpointed: they are pure functions of the stored scores.

use std::collections::HashMap;
use std::time::Instant;

use burn::tensor::Device;
use chrono::NaiveDate;
use datafusion::prelude::SessionContext;
use rayon::prelude::*;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing::info;

use super::checkpoint::Checkpoints;
use super::lease::Lease;
use super::report::{self, Stopwatch};
use super::{NightlyError, RunOptions, RunOutcome, Stage, shard};
use crate::audit;
use crate::config::Pipelines;
use crate::dataset::{self, Csr};
use crate::features::stats::{self, Drift, Strength};
use crate::features::{self, FeatureDictionary, FeatureReport, FeatureSet};
use crate::model::evaluation::segment_values;
use crate::model::metrics::SegmentMetrics;
use crate::model::{self, Metrics, Model};
use crate::policy::{Decision, PolicyInputs, Reason, UserFacts};
use crate::publish::{self, LimitRow, Lineage, Manifest};
use crate::scoring::{self, Scores};
use crate::sources::{self, SourceReport};
use crate::store::{Store, layout};
use crate::suggestions;
use crate::training::{self, OracleAuc, Promote};

/// What every stage of one run reads: where, when, with which configuration and options.
pub(super) struct Run<'a> {
    pub ctx: &'a SessionContext,
    pub store: &'a Store,
    pub run_date: NaiveDate,
    pub training_as_of: NaiveDate,
    pub pipelines: &'a Pipelines,
    pub options: &'a RunOptions,
    pub device: Device,
    /// the date's lease: checked before every stage and right before the publish commits
    pub lease: &'a Lease,
}

impl<'a> Run<'a> {
    pub fn new(
        ctx: &'a SessionContext,
        store: &'a Store,
        run_date: NaiveDate,
        pipelines: &'a Pipelines,
        options: &'a RunOptions,
        lease: &'a Lease,
    ) -> Result<Run<'a>, NightlyError> {
        Ok(Run {
            ctx,
            store,
            run_date,
            training_as_of: dataset::training_as_of(run_date, &pipelines.nightly.label),
            pipelines,
            options,
            device: options.device.device()?,
            lease,
        })
    }

    /// Ok while the run still holds its lease (see `lease`'s fencing).
    fn still_leased(&self) -> Result<(), NightlyError> {
        Ok(self.lease.check()?)
    }

    fn stops_after(&self, stage: Stage) -> bool {
        self.options.stop_after == Some(stage)
    }
}

/// Where a run is: its checkpoints, the stages it took from them, and its stage times.
pub(super) struct Progress {
    pub checkpoints: Checkpoints,
    pub resumed: Vec<String>,
    pub clock: Stopwatch,
}

impl Progress {
    /// `compute`'s output, or, when this run checkpointed `stage` before, the checkpoint's
    /// (`compute` is then dropped unpolled, so it does nothing). True when resumed.
    async fn checkpointed<T: Serialize + DeserializeOwned>(
        &mut self,
        stage: Stage,
        compute: impl Future<Output = Result<T, NightlyError>>,
    ) -> Result<(T, bool), NightlyError> {
        if let Some(done) = self.checkpoints.get::<T>(stage.name()).await? {
            self.resumed.push(stage.name().to_string());
            return Ok((done, true));
        }
        let output = compute.await?;
        self.checkpoints.put(stage.name(), &output).await?;
        self.clock.lap(stage.name());
        Ok((output, false))
    }

    fn stopped(&self, after: Stage) -> RunOutcome {
        RunOutcome::Stopped {
            after,
            run_id: self.checkpoints.run.run_id.clone(),
        }
    }
}

/// What the train stage leaves for the others.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Trained {
    pub model_version: String,
    pub trained_tonight: bool,
    /// the promotion gates the model trained tonight failed, promoted anyway with --force
    #[serde(default)]
    pub forced_past: Vec<String>,
    pub holdout: Metrics,
    pub oracle_auc: Option<f64>,
    /// absent from checkpoints written before it
    #[serde(default)]
    pub visible_oracle_auc: Option<f64>,
    pub training_rows: usize,
    pub training_defaults: usize,
    /// the holdout's metrics by segment (for the AUC per segment of the run's fairness view)
    #[serde(default)]
    pub holdout_segments: Vec<SegmentMetrics>,
}

/// What the features stage leaves for the report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Featured {
    pub reports: Vec<FeatureReport>,
    pub strongest: Vec<Strength>,
    #[serde(with = "crate::serde_date::optional")]
    pub drift_baseline: Option<NaiveDate>,
    pub most_drifted: Vec<Drift>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Scored {
    pub users: usize,
    /// set when the scores are the merge of this many shards
    pub shards: Option<usize>,
}

/// What the features stage leaves in memory for the stages after it in the same process
/// (the same data a resumed run reads back from the store).
struct Built {
    training: FeatureSet,
    scoring: FeatureSet,
    labels: HashMap<u64, bool>,
    dictionary: FeatureDictionary,
}

/// Every stage of `run`, in order, from its checkpoints where a resumed run has them.
pub(super) async fn run_stages(run: &Run<'_>) -> Result<RunOutcome, NightlyError> {
    run.still_leased()?;
    let mut progress = start(run).await?;
    let sources = validate(run, &mut progress).await?;
    if run.stops_after(Stage::Validate) {
        return Ok(progress.stopped(Stage::Validate));
    }
    let mut built = None;
    run.still_leased()?;
    let (featured, _) = progress
        .checkpointed(Stage::Features, features_stage(run, &mut built))
        .await?;
    if run.stops_after(Stage::Features) {
        return Ok(progress.stopped(Stage::Features));
    }
    let dictionary = match &built {
        Some(built) => built.dictionary.clone(),
        None => FeatureDictionary::load(run.store).await?,
    };
    run.still_leased()?;
    let (trained, _) = progress
        .checkpointed(Stage::Train, train_stage(run, &dictionary, built.as_ref()))
        .await?;
    if run.stops_after(Stage::Train) {
        return Ok(progress.stopped(Stage::Train));
    }
    let model = model::load(run.store, &trained.model_version, &run.device).await?;
    model.check_dictionary(&dictionary)?;
    let scoring_rows = Csr::from_features(&match built {
        Some(built) => built.scoring,
        None => features::read(run.store, run.run_date).await?,
    });
    run.still_leased()?;
    let scores = score(run, &mut progress, &model, &scoring_rows, &dictionary).await?;
    if run.stops_after(Stage::Score) {
        return Ok(progress.stopped(Stage::Score));
    }
    run.still_leased()?;
    let (inputs, facts, decisions) = limits(run, &scores).await?;
    progress.clock.lap(Stage::Limits.name());
    if run.stops_after(Stage::Limits) {
        return Ok(progress.stopped(Stage::Limits));
    }
    run.still_leased()?;
    let rows = suggest(
        run,
        &model,
        &scoring_rows,
        &dictionary,
        &scores,
        &inputs,
        &facts,
        decisions,
    )
    .await?;
    progress.clock.lap(Stage::Suggest.name());
    if run.stops_after(Stage::Suggest) {
        return Ok(progress.stopped(Stage::Suggest));
    }
    run.still_leased()?;
    let audit = AuditInputs {
        model: &model,
        rows: &scoring_rows,
        dictionary: &dictionary,
        scores: &scores,
        facts: &facts,
    };
    let manifest = publish(run, &mut progress, &rows, audit).await?;
    // data derived before an erasure request is rewritten without the user, tonight
    let erasures = audit::erase::apply(run.store).await?;
    let fairness = report::fairness(run, &scoring_rows, &dictionary, &rows, &trained);
    let mut report =
        report::NightlyReport::new(run, sources, featured, trained, &rows, manifest, progress);
    (report.fairness, report.erasures) = (fairness, erasures);
    report.protected = run.pipelines.features.protected_families();
    report::write(run.store, &report).await?;
    Ok(RunOutcome::Published(Box::new(report)))
}

/// This run's checkpoints: the interrupted run's on `--resume` (a fresh run when there is
/// none), else a new run, which is unfinished until it finishes again.
async fn start(run: &Run<'_>) -> Result<Progress, NightlyError> {
    let (store, date) = (run.store, run.run_date);
    let resumed = match run.options.resume {
        true => Checkpoints::resume(store, date, run.pipelines).await?,
        false => {
            store.delete(&layout::run_report(date)).await?;
            None
        }
    };
    let checkpoints = match resumed {
        Some(checkpoints) => checkpoints,
        None => {
            if run.options.resume {
                info!("no interrupted run of this date to resume: starting one");
            }
            Checkpoints::start(store, date, run.pipelines).await?
        }
    };
    let folder = layout::run_folder(date, &checkpoints.run.run_id);
    audit::lineage::record_inputs(store, date, &folder).await?;
    Ok(Progress {
        checkpoints,
        resumed: Vec::new(),
        clock: Stopwatch::new(),
    })
}

/// Validated sources registered on the session; a resumed run registers them again.
async fn validate(
    run: &Run<'_>,
    progress: &mut Progress,
) -> Result<Vec<SourceReport>, NightlyError> {
    let max_bad_share = run.pipelines.nightly.validation.max_bad_share;
    let compute = async {
        let validated =
            sources::validate_and_register(run.ctx, run.store, run.run_date, max_bad_share).await?;
        Ok::<_, NightlyError>(validated)
    };
    let (reports, resumed) = progress.checkpointed(Stage::Validate, compute).await?;
    if resumed {
        sources::register(run.ctx, run.store, run.run_date).await?;
    }
    Ok(reports)
}

/// Features as of the training date and the run date, written with their stats; what they
/// are in memory goes to `built` for the stages after.
async fn features_stage(
    run: &Run<'_>,
    built: &mut Option<Built>,
) -> Result<Featured, NightlyError> {
    let (store, ctx) = (run.store, run.ctx);
    let mut dictionary = FeatureDictionary::load(store).await?;
    let mut reports = Vec::new();
    let mut sets = Vec::new();
    for as_of in [run.training_as_of, run.run_date] {
        let started = Instant::now();
        let set =
            features::build(ctx, store, &run.pipelines.features, &mut dictionary, as_of).await?;
        reports.push((as_of, started.elapsed().as_secs_f64()));
        sets.push(set);
    }
    // ids are committed before any feature file uses them; a writer that lost the race
    // appended to the winner's dictionary, and its features take the ids committed
    let remap = dictionary.commit(store).await?;
    let mut reports: Vec<FeatureReport> = reports
        .into_iter()
        .zip(&mut sets)
        .map(|((as_of, seconds), set)| {
            set.remap(&remap);
            FeatureReport {
                as_of,
                users: set.users.len(),
                rows: set.nnz(),
                distinct_features: set.distinct_features(),
                dictionary_size: dictionary.len(),
                seconds,
            }
        })
        .collect();
    for (set, report) in sets.iter().zip(&mut reports) {
        let started = Instant::now();
        features::write(store, set).await?;
        report.seconds += started.elapsed().as_secs_f64();
    }
    let [training, scoring]: [FeatureSet; 2] = sets.try_into().expect("two as-of dates");
    let labels = dataset::labels(ctx, run.training_as_of, &run.pipelines.nightly.label).await?;
    let featured = feature_stats(run, reports, &training, &scoring, &labels, &dictionary).await?;
    *built = Some(Built {
        training,
        scoring,
        labels,
        dictionary,
    });
    Ok(featured)
}

/// Stats of both feature sets: IV and AUC where labels exist (the training date), PSI
/// against the newest earlier stats (normally the previous night's).
async fn feature_stats(
    run: &Run<'_>,
    reports: Vec<FeatureReport>,
    training: &FeatureSet,
    scoring: &FeatureSet,
    labels: &HashMap<u64, bool>,
    dictionary: &FeatureDictionary,
) -> Result<Featured, NightlyError> {
    let store = run.store;
    let (_, before_training) = stats::previous(store, run.training_as_of).await?;
    let training_stats = stats::compute(training, Some(labels), &before_training);
    stats::write(store, run.training_as_of, &training_stats, dictionary).await?;
    let (drift_baseline, before_tonight) = stats::previous(store, run.run_date).await?;
    let tonight_stats = stats::compute(scoring, None, &before_tonight);
    stats::write(store, run.run_date, &tonight_stats, dictionary).await?;
    Ok(Featured {
        reports,
        strongest: stats::strongest(&training_stats, dictionary, 10),
        drift_baseline,
        most_drifted: stats::most_drifted(&tonight_stats, dictionary, 10),
    })
}

/// The champion, or a model trained and promoted tonight when the root has none, with how it
/// does on the holdout of tonight's training set (the newest labels).
async fn train_stage(
    run: &Run<'_>,
    dictionary: &FeatureDictionary,
    built: Option<&Built>,
) -> Result<Trained, NightlyError> {
    let (store, device) = (run.store, &run.device);
    let config = &run.pipelines.nightly;
    let training_set = match built {
        Some(built) => dataset::training_set(&built.training, &built.labels)?,
        None => {
            let features = features::read(store, run.training_as_of).await?;
            let labels = dataset::labels(run.ctx, run.training_as_of, &config.label).await?;
            dataset::training_set(&features, &labels)?
        }
    };
    let (model, trained_tonight, forced_past) =
        scoring_model(run, dictionary, &training_set).await?;
    let (holdout_rows, holdout_labels) = training::holdout(&training_set, &config.training);
    let holdout_pd = model.pd(&holdout_rows, device);
    let holdout_segments = report::segment_families(run)
        .iter()
        .flat_map(|family| {
            let values = segment_values(&holdout_rows, dictionary, family);
            model::metrics::by_segment(family, &values, &holdout_pd, &holdout_labels, &[])
        })
        .collect();
    let (oracle_auc, visible_oracle_auc) =
        OracleAuc::split(training::oracle_auc(store, &holdout_rows.users, &holdout_labels).await?);
    Ok(Trained {
        model_version: model.card.version.clone(),
        trained_tonight,
        forced_past,
        holdout: model::metrics::evaluate(&holdout_pd, &holdout_labels),
        oracle_auc,
        visible_oracle_auc,
        training_rows: training_set.labels.len(),
        training_defaults: training_set.positives(),
        holdout_segments,
    })
}

/// The champion; or, on a root without one, a model trained and promoted now (true), with
/// the promotion gates it failed if `--force` promoted it past them.
async fn scoring_model(
    run: &Run<'_>,
    dictionary: &FeatureDictionary,
    training_set: &dataset::TrainingSet,
) -> Result<(Model, bool, Vec<String>), NightlyError> {
    let (store, device) = (run.store, &run.device);
    if let Some(champion) = model::champion(store).await? {
        let model = model::load(store, &champion.version, device).await?;
        model.check_dictionary(dictionary)?;
        info!(model = %champion.version, "scoring with the champion");
        return Ok((model, false, Vec::new()));
    }
    info!("no champion under models/: training one");
    let data = format!(
        "the redflower world at {}: {}",
        store.url(),
        dataset::describe_window(run.training_as_of, &run.pipelines.nightly.label)
    );
    let (model, outcome) = training::train_and_register(
        store,
        training_set,
        dictionary,
        data,
        run.pipelines,
        device,
        Promote::FirstModel {
            force: run.options.force,
        },
    )
    .await?;
    let forced_past = match outcome.promotion.forced {
        true => outcome.promotion.refusals,
        false => Vec::new(),
    };
    Ok((model, true, forced_past))
}

/// Every user's scores: the merge of the shards when all of one count completed, else
/// scored here; written to `scores/`. A resumed run reads them back.
async fn score(
    run: &Run<'_>,
    progress: &mut Progress,
    model: &Model,
    rows: &Csr,
    dictionary: &FeatureDictionary,
) -> Result<Scores, NightlyError> {
    let (store, run_date) = (run.store, run.run_date);
    let shards = shard::complete_shards(store, &progress.checkpoints, run_date).await?;
    let mut computed = None;
    let compute = async {
        let scores = match shards {
            Some(count) => {
                info!(shards = count, "merging the scores of {count} shards");
                scoring::merge_shards(store, run_date, count).await?
            }
            None => {
                let withheld = run.pipelines.features.protected_families();
                let reasons = scoring::ReasonCodes {
                    per_user: run.pipelines.nightly.evaluation.reasons_per_user,
                    withheld_families: &withheld,
                };
                scoring::score(model, rows, dictionary, reasons, &run.device)
            }
        };
        if scores.users != rows.users {
            return Err(NightlyError::NotReady(format!(
                "the scores of {run_date} cover {} users, the features {}: rerun the shards",
                scores.users.len(),
                rows.users.len()
            )));
        }
        scoring::write(store, run_date, &scores).await?;
        let scored = Scored {
            users: scores.users.len(),
            shards,
        };
        computed = Some(scores);
        Ok::<_, NightlyError>(scored)
    };
    progress.checkpointed(Stage::Score, compute).await?;
    match computed {
        Some(scores) => Ok(scores),
        None => Ok(scoring::read(store, run_date).await?),
    }
}

/// The policy's decision for every scored user, with the facts it weighed.
async fn limits(
    run: &Run<'_>,
    scores: &Scores,
) -> Result<(PolicyInputs, Vec<UserFacts>, Vec<Decision>), NightlyError> {
    let (store, run_date) = (run.store, run.run_date);
    let policy = &run.pipelines.policy;
    let snapshot = sources::snapshot_before(store, "profiles", run_date).await?;
    let inputs = crate::policy::load_inputs(run.ctx, run_date, snapshot, policy).await?;
    let previous = publish::limits_before(store, run_date).await?;
    let facts: Vec<UserFacts> = scores
        .users
        .par_iter()
        .map(|user| inputs.facts(*user, previous.get(user)))
        .collect();
    let decisions: Vec<Decision> = (0..scores.users.len())
        .into_par_iter()
        .map(|i| policy.decide(scores.pd[i], &facts[i]))
        .collect();
    Ok((inputs, facts, decisions))
}

/// The published rows: each decision with the model's reasons after the policy's, and the
/// certificates that would raise the limit.
#[allow(clippy::too_many_arguments)]
async fn suggest(
    run: &Run<'_>,
    model: &Model,
    rows: &Csr,
    dictionary: &FeatureDictionary,
    scores: &Scores,
    inputs: &PolicyInputs,
    facts: &[UserFacts],
    decisions: Vec<Decision>,
) -> Result<Vec<LimitRow>, NightlyError> {
    let candidates = suggestions::representatives(&inputs.certificates);
    let what_ifs = suggestions::what_ifs(
        &run.pipelines.features,
        dictionary,
        &candidates,
        run.run_date,
    )
    .await?;
    let suggested = suggestions::suggest(
        model,
        rows,
        &run.pipelines.policy,
        facts,
        &decisions,
        &candidates,
        &what_ifs,
        &run.device,
        run.pipelines.nightly.evaluation.suggestions_per_user,
    );
    Ok(decisions
        .into_par_iter()
        .zip(suggested.into_par_iter())
        .enumerate()
        .map(|(i, (mut decision, suggestions))| {
            let model_reasons = scores.reasons[i].iter().cloned().map(Reason::Model);
            decision.reasons.extend(model_reasons);
            LimitRow {
                user_id: scores.users[i],
                pd: scores.pd[i],
                decision,
                suggestions,
            }
        })
        .collect())
}

/// What the decision records and the lineage of a publish are made of.
struct AuditInputs<'a> {
    model: &'a Model,
    rows: &'a Csr,
    dictionary: &'a FeatureDictionary,
    scores: &'a Scores,
    facts: &'a [UserFacts],
}

/// Every user's decision record in the run's folder, and the lineage the manifest keeps.
async fn record(
    run: &Run<'_>,
    run_id: &str,
    audit: &AuditInputs<'_>,
) -> Result<Lineage, NightlyError> {
    let folder = layout::run_folder(run.run_date, run_id);
    let reasons =
        audit::records::model_reasons(audit.model, audit.rows, audit.dictionary, audit.scores);
    let decisions =
        audit::records::write(run.store, &folder, audit.scores, audit.facts, &reasons).await?;
    let lineage = audit::lineage::RunLineage {
        run_date: run.run_date,
        run_id,
        lease_holder: run.lease.holder(),
        pipelines: run.pipelines,
        dictionary: audit.dictionary,
        model_version: &audit.model.card.version,
        decisions,
        training_as_of: run.training_as_of,
    };
    Ok(audit::lineage::capture(run.store, lineage).await?)
}

/// The committed manifest: this run's earlier commit when it crashed between the commit and
/// its checkpoint (the commit carries the run id), else a gated publish now, after the
/// run's decision records and lineage are written.
async fn publish(
    run: &Run<'_>,
    progress: &mut Progress,
    rows: &[LimitRow],
    audit: AuditInputs<'_>,
) -> Result<Manifest, NightlyError> {
    let store = run.store;
    let run_id = progress.checkpoints.run.run_id.clone();
    let mut recovered = false;
    let compute = async {
        if let Some(manifest) = publish::published_by_run(store, &run_id).await? {
            recovered = true;
            return Ok::<_, NightlyError>(manifest);
        }
        let lineage = record(run, &run_id, &audit).await?;
        let fence = || run.lease.check().map_err(|e| e.to_string());
        let publication = publish::Publication {
            as_of: run.run_date,
            model_version: &audit.model.card.version,
            policy_version: &run.pipelines.policy.version,
            run_id: Some(&run_id),
            lineage: Some(&lineage),
            fence: Some(&fence),
        };
        let config = &run.pipelines.nightly.publish;
        let published =
            publish::publish_gated(store, rows, &publication, config, run.options.force).await;
        if published.is_err() {
            // nothing refers to the records of a publish that did not happen; a later try
            // writes them again
            let written = std::iter::once(&lineage.decisions).chain(&lineage.outputs);
            for file in written {
                if let Err(error) = store.delete(&file.path).await {
                    tracing::warn!(%error, "could not remove the records of a failed publish");
                }
            }
        }
        Ok(published?)
    };
    let (manifest, _) = progress.checkpointed(Stage::Publish, compute).await?;
    if recovered {
        progress.resumed.push(Stage::Publish.name().to_string());
    }
    Ok(manifest)
}
