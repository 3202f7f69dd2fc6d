//! What a run did, for the command's summary and for schedulers: `runs/<date>/report.json`,
//! written last, after the table is published (its presence means the date is done).

use std::time::Instant;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use tracing::info;

use super::NightlyError;
use super::parts::Decided;
use super::stages::{Featured, Progress, Run, Trained};
use crate::features::FeatureReport;
use crate::features::stats::{Drift, Strength};
use crate::model::Metrics;
use crate::model::metrics::SegmentMetrics;
use crate::publish::Manifest;
use crate::sources::SourceReport;
use crate::store::{Store, layout};

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
    /// the promotion gates tonight's model failed, promoted anyway with --force
    #[serde(default)]
    pub forced_past: Vec<String>,
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
    /// tonight's approval rate and mean limit by segment (`[evaluation] segments` and the
    /// protected attributes), with the scoring model's holdout AUC per segment, each with its
    /// ratio to the best segment of its family
    pub fairness: Vec<SegmentMetrics>,
    /// the families of `fairness` that are protected attributes
    pub protected: Vec<String>,
    /// erasure requests applied tonight to the data derived before them
    pub erasures: crate::audit::erase::Erased,
    pub manifest: Manifest,
    /// the run that published: its checkpoints are under runs/<date>/checkpoints/
    pub run_id: String,
    /// stages a resumed run took from the interrupted run's checkpoints
    pub resumed_stages: Vec<String>,
    /// stage times of this process (skipped stages are not listed)
    pub stages: Vec<StageTime>,
    pub seconds: f64,
}

/// Stage times of one process.
pub(super) struct Stopwatch {
    started: Instant,
    stage: Instant,
    stages: Vec<StageTime>,
}

impl Stopwatch {
    pub fn new() -> Stopwatch {
        Stopwatch {
            started: Instant::now(),
            stage: Instant::now(),
            stages: Vec::new(),
        }
    }

    /// Stage times measured elsewhere (summed over user parts), then a new lap from now.
    pub fn record(&mut self, times: &[(&str, f64)]) {
        for (stage, seconds) in times {
            info!(stage, seconds, "stage done");
            self.stages.push(StageTime {
                stage: stage.to_string(),
                seconds: *seconds,
            });
        }
        self.stage = Instant::now();
    }

    pub fn lap(&mut self, stage: &str) -> f64 {
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

impl NightlyReport {
    pub(super) fn new(
        run: &Run<'_>,
        sources: Vec<SourceReport>,
        featured: Featured,
        trained: Trained,
        decided: &Decided,
        manifest: Manifest,
        progress: Progress,
    ) -> NightlyReport {
        let counts = &decided.counts;
        NightlyReport {
            root: run.store.url().to_string(),
            run_date: run.run_date,
            training_as_of: run.training_as_of,
            sources,
            features: featured.reports,
            strongest_features: featured.strongest,
            drift_baseline: featured.drift_baseline,
            most_drifted: featured.most_drifted,
            training_rows: trained.training_rows,
            training_defaults: trained.training_defaults,
            model_version: trained.model_version,
            trained_tonight: trained.trained_tonight,
            forced_past: trained.forced_past,
            holdout: trained.holdout,
            oracle_auc: trained.oracle_auc,
            visible_oracle_auc: trained.visible_oracle_auc,
            scored_users: decided.totals.rows as usize,
            limit_distribution: decided.totals.bands.clone(),
            capped_by_request: counts.capped_by_request,
            boosted: counts.boosted,
            boosts_withheld_for_fraud: counts.boosts_withheld_for_fraud,
            with_scenario_limits: counts.with_scenario_limits,
            fairness: Vec::new(),
            protected: Vec::new(),
            erasures: Default::default(),
            manifest,
            run_id: progress.checkpoints.run.run_id.clone(),
            resumed_stages: progress.resumed,
            stages: progress.clock.stages.clone(),
            seconds: progress.clock.started.elapsed().as_secs_f64(),
        }
    }
}

/// The families a fairness view reports: the configured segments, then the protected
/// attributes not among them.
pub(super) fn segment_families(run: &Run<'_>) -> Vec<String> {
    let mut families = run.pipelines.nightly.evaluation.segments.clone();
    for family in run.pipelines.features.protected_families() {
        if !families.contains(&family) {
            families.push(family);
        }
    }
    families
}

/// Writes `runs/<date>/report.json`: the last write of a run that published.
pub(super) async fn write(store: &Store, report: &NightlyReport) -> Result<(), NightlyError> {
    let path = layout::run_report(report.run_date);
    let json = serde_json::to_vec_pretty(report).map_err(|e| NightlyError::Checkpoint {
        path: path.clone(),
        error: e.to_string(),
    })?;
    store.put(&path, json.into()).await?;
    Ok(())
}
