//! The stages of one run, in order, each a function of its own. `run_stages` moves their
//! outputs from one to the next; `Progress::checkpointed` is the one way a stage is skipped
//! on `--resume` (its checkpoint read back) or run and checkpointed, keyed by `Stage`.
//! The per-user stages (score, limits, suggest) run in `parts`, one user part at a time, each
//! part checkpointed on its own.

use std::time::Instant;

use burn::tensor::Device;
use chrono::NaiveDate;
use datafusion::prelude::SessionContext;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing::info;

use super::checkpoint::Checkpoints;
use super::holdout::{LabelledSize, ScoredHoldout};
use super::lease::Lease;
use super::parts::{self, Decided};
use super::report::{self, Stopwatch};
use super::{NightlyError, RunOptions, RunOutcome, Stage};
use crate::audit;
use crate::config::Pipelines;
use crate::dataset;
use crate::features::stats::{self, Drift, Strength};
use crate::features::{self, FeatureDictionary, FeatureReport};
use crate::model::metrics::SegmentMetrics;
use crate::model::{self, Metrics, Model};
use crate::publish::{self, Lineage, Manifest};
use crate::sources::{self, SourceReport};
use crate::store::{Store, layout};
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
    pub(super) fn still_leased(&self) -> Result<(), NightlyError> {
        Ok(self.lease.check()?)
    }

    /// How many user parts the run's features, scores, records and table are written in
    /// (`[publish] parts`; at least 1).
    pub(super) fn user_parts(&self) -> u32 {
        self.pipelines.nightly.publish.parts.max(1)
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

/// Every stage of `run`, in order, from its checkpoints where a resumed run has them.
pub(super) async fn run_stages(run: &Run<'_>) -> Result<RunOutcome, NightlyError> {
    run.still_leased()?;
    let mut progress = start(run).await?;
    let sources = validate(run, &mut progress).await?;
    if run.stops_after(Stage::Validate) {
        return Ok(progress.stopped(Stage::Validate));
    }
    let mut labels = None;
    run.still_leased()?;
    let (featured, _) = progress
        .checkpointed(Stage::Features, features_stage(run, &mut labels))
        .await?;
    if run.stops_after(Stage::Features) {
        return Ok(progress.stopped(Stage::Features));
    }
    let dictionary = FeatureDictionary::load(run.store).await?;
    run.still_leased()?;
    let (trained, _) = progress
        .checkpointed(Stage::Train, train_stage(run, &dictionary, labels.take()))
        .await?;
    if run.stops_after(Stage::Train) {
        return Ok(progress.stopped(Stage::Train));
    }
    run.still_leased()?;
    let model = model::load(run.store, &trained.model_version, &run.device).await?;
    model.check_dictionary(&dictionary)?;
    let decided = decide_users(run, &mut progress, &model, &dictionary, &trained).await?;
    // score, limits and suggest run together, part by part: each stops after all three
    if let Some(stage @ (Stage::Score | Stage::Limits | Stage::Suggest)) = run.options.stop_after {
        return Ok(progress.stopped(stage));
    }
    run.still_leased()?;
    let manifest = publish(run, &mut progress, &decided, &model, &dictionary).await?;
    // data derived before an erasure request is rewritten without the user, tonight
    let erasures = audit::erase::apply(run.store).await?;
    let fairness = decided.fairness(run, &trained);
    let mut report = report::NightlyReport::new(
        run, sources, featured, trained, &decided, manifest, progress,
    );
    (report.fairness, report.erasures) = (fairness, erasures);
    report.protected = run.pipelines.features.protected_families();
    report::write(run.store, &report).await?;
    Ok(RunOutcome::Published(Box::new(report)))
}

/// The per-user stages, one user part at a time (`parts`): every part's scores, limits and
/// suggestions decided and written, or taken from its checkpoint. Their times, summed over
/// the parts, are the score, limits and suggest stages' and "write parts" (decision records
/// and table parts).
async fn decide_users(
    run: &Run<'_>,
    progress: &mut Progress,
    model: &Model,
    dictionary: &FeatureDictionary,
    trained: &Trained,
) -> Result<Decided, NightlyError> {
    let count = run.user_parts();
    let checkpoints = &progress.checkpoints;
    let parts = parts::decide_parts(run, checkpoints, model, dictionary, count, None).await?;
    let decided = Decided::of(parts, &trained.model_version)?;
    if decided.resumed > 0 {
        progress
            .resumed
            .push(format!("{} of {count} user parts", decided.resumed));
    }
    let seconds = &decided.seconds;
    progress.clock.record(&[
        (Stage::Score.name(), seconds.score),
        (Stage::Limits.name(), seconds.limits),
        (Stage::Suggest.name(), seconds.suggest),
        ("write parts", seconds.write),
    ]);
    Ok(decided)
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
            // a fresh run decides every user part again: an earlier run's score parts (maybe
            // of another part count) must not sit beside its own
            crate::scoring::clear(store, date).await?;
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

/// Features as of the training date and the run date, one date after the other: each
/// queried over all users (its new ids committed to the dictionary before any feature file
/// uses them), then assembled, written and gathered for its stats one user part at a time,
/// so no step holds every user's features (the train stage reads the training set back).
/// The training labels go to `labels` for the train stage.
async fn features_stage(
    run: &Run<'_>,
    labels: &mut Option<dataset::Labels>,
) -> Result<Featured, NightlyError> {
    let (store, ctx) = (run.store, run.ctx);
    let parts = run.user_parts();
    let training_labels =
        dataset::labels(ctx, run.training_as_of, &run.pipelines.nightly.label).await?;
    let mut dictionary = FeatureDictionary::load(store).await?;
    let mut reports = Vec::new();
    let mut stats = Vec::new();
    for as_of in [run.training_as_of, run.run_date] {
        let started = Instant::now();
        let config = &run.pipelines.features;
        let queried = features::query(ctx, store, config, &mut dictionary, as_of, parts).await?;
        // a writer that lost the race appended to the winner's dictionary: its features take
        // the ids committed (ids committed before keep theirs)
        let remap = dictionary.commit(store).await?;
        let labelled = (as_of == run.training_as_of).then_some(&training_labels);
        let mut gathered = stats::Gathered::new(parts)?;
        let (mut rows, mut present) = (0, features::Present::default());
        features::clear(store, as_of).await?;
        for part in 0..parts {
            let set = queried.part(part, &remap)?;
            features::write_part(store, &set, part, parts).await?;
            rows += set.nnz();
            present.add(&set);
            gathered.add(&set, labelled)?;
        }
        features::write_population(store, as_of, &queried.population).await?;
        reports.push(FeatureReport {
            as_of,
            users: queried.population.len(),
            rows,
            distinct_features: present.count(),
            dictionary_size: dictionary.len(),
            seconds: started.elapsed().as_secs_f64(),
        });
        drop(queried);
        stats.push(feature_stats(run, as_of, gathered, labelled.is_some(), &dictionary).await?);
    }
    *labels = Some(training_labels);
    let [(_, training_stats), (drift_baseline, tonight_stats)]: [_; 2] =
        stats.try_into().expect("two as-of dates");
    Ok(Featured {
        reports,
        strongest: stats::strongest(&training_stats, &dictionary, 10),
        drift_baseline,
        most_drifted: stats::most_drifted(&tonight_stats, &dictionary, 10),
    })
}

/// Stats of one date's features, gathered part by part, written: IV and AUC where labels
/// exist (the training date), PSI against the newest earlier stats (normally the previous
/// night's), whose date comes along.
async fn feature_stats(
    run: &Run<'_>,
    as_of: NaiveDate,
    gathered: stats::Gathered,
    labelled: bool,
    dictionary: &FeatureDictionary,
) -> Result<(Option<NaiveDate>, Vec<stats::FeatureStats>), NightlyError> {
    let (baseline, before) = stats::previous(run.store, as_of).await?;
    let computed = gathered.compute(labelled, &before)?;
    stats::write(run.store, as_of, &computed, dictionary).await?;
    Ok((baseline, computed))
}

/// The champion, or a model trained and promoted tonight when the root has none, with how it
/// does on the holdout of tonight's training set (the newest labels).
async fn train_stage(
    run: &Run<'_>,
    dictionary: &FeatureDictionary,
    labels: Option<dataset::Labels>,
) -> Result<Trained, NightlyError> {
    let (store, config) = (run.store, &run.pipelines.nightly);
    // read back, not kept from the features stage: the run date's features were built
    // without the training set beside them
    let labels = match labels {
        Some(labels) => labels,
        // a resumed run, or one whose features were built by an earlier try
        None => dataset::labels(run.ctx, run.training_as_of, &config.label).await?,
    };
    let (model, trained_tonight, forced_past, holdout, size) = match model::champion(store).await? {
        // with a champion only the holdout is used: it is scored one user part at a time
        Some(champion) => {
            let model = champion_model(run, &champion, dictionary).await?;
            let (holdout, size) = ScoredHoldout::by_part(run, &model, &labels, dictionary).await?;
            (model, false, Vec::new(), holdout, size)
        }
        None => {
            let features = features::read(store, run.training_as_of).await?;
            let set = dataset::training_set(&features, &labels)?;
            drop(features);
            let (model, forced_past) = first_model(run, dictionary, &set).await?;
            let holdout = ScoredHoldout::of_set(run, &model, &set, dictionary);
            let (rows, defaults) = (set.labels.len(), set.positives());
            (
                model,
                true,
                forced_past,
                holdout,
                LabelledSize { rows, defaults },
            )
        }
    };
    drop(labels);
    let (oracle_auc, visible_oracle_auc) =
        OracleAuc::split(training::oracle_auc(store, &holdout.users, &holdout.labels).await?);
    Ok(Trained {
        model_version: model.card.version.clone(),
        trained_tonight,
        forced_past,
        holdout: holdout.metrics(),
        oracle_auc,
        visible_oracle_auc,
        training_rows: size.rows,
        training_defaults: size.defaults,
        holdout_segments: holdout.by_segment(),
    })
}

/// The champion, checked against tonight's dictionary.
async fn champion_model(
    run: &Run<'_>,
    champion: &model::Champion,
    dictionary: &FeatureDictionary,
) -> Result<Model, NightlyError> {
    let model = model::load(run.store, &champion.version, &run.device).await?;
    model.check_dictionary(dictionary)?;
    info!(model = %champion.version, "scoring with the champion");
    Ok(model)
}

/// A model trained and promoted now, on a root without a champion, with the promotion gates
/// it failed if `--force` promoted it past them.
async fn first_model(
    run: &Run<'_>,
    dictionary: &FeatureDictionary,
    training_set: &dataset::TrainingSet,
) -> Result<(Model, Vec<String>), NightlyError> {
    let (store, device) = (run.store, &run.device);
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
    Ok((model, forced_past))
}

/// The run's lineage (the decision records the parts wrote, copies of its features and
/// scores, its configuration) for the manifest.
async fn record(
    run: &Run<'_>,
    run_id: &str,
    decided: &Decided,
    model: &Model,
    dictionary: &FeatureDictionary,
) -> Result<Lineage, NightlyError> {
    let lineage = audit::lineage::RunLineage {
        run_date: run.run_date,
        run_id,
        lease_holder: run.lease.holder(),
        pipelines: run.pipelines,
        dictionary,
        model_version: &model.card.version,
        decisions: decided.decisions.clone(),
        training_as_of: run.training_as_of,
    };
    Ok(audit::lineage::capture(run.store, lineage).await?)
}

/// The committed manifest: this run's earlier commit when it crashed between the commit and
/// its checkpoint (the commit carries the run id), else a gated commit now of the parts the
/// per-user stages wrote, after the run's lineage is written.
async fn publish(
    run: &Run<'_>,
    progress: &mut Progress,
    decided: &Decided,
    model: &Model,
    dictionary: &FeatureDictionary,
) -> Result<Manifest, NightlyError> {
    let store = run.store;
    let run_id = progress.checkpoints.run.run_id.clone();
    let mut recovered = false;
    let compute = async {
        if let Some(manifest) = publish::published_by_run(store, &run_id).await? {
            recovered = true;
            return Ok::<_, NightlyError>(manifest);
        }
        decided.verify(store, run.run_date).await?;
        let lineage = record(run, &run_id, decided, model, dictionary).await?;
        let fence = || run.lease.check().map_err(|e| e.to_string());
        let publication = publish::Publication {
            as_of: run.run_date,
            model_version: &model.card.version,
            policy_version: &run.pipelines.policy.version,
            run_id: Some(&run_id),
            lineage: Some(&lineage),
            fence: Some(&fence),
        };
        let config = &run.pipelines.nightly.publish;
        let tables = decided.tables.clone();
        let force = run.options.force;
        let published = publish::commit_parts_gated(
            store,
            tables,
            &decided.totals,
            &publication,
            config,
            force,
        )
        .await;
        if published.is_err() {
            // nothing refers to the copies of a publish that did not happen; a later try
            // copies again (the parts' own files stay: their checkpoints name them)
            for file in &lineage.outputs {
                if let Err(error) = store.delete(&file.path).await {
                    tracing::warn!(%error, "could not remove the copies of a failed publish");
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
