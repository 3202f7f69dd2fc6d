//! The nightly job, stage by stage: validate sources -> features as of the training date and
//! the run date -> labels -> train -> score -> limits -> suggest -> publish. Writes a JSON run
//! report to `runs/<date>/report.json` and returns it for the command's summary.
//!
//! A run holds the date's `lease` while it works and records a `checkpoint` after each stage
//! whose output is in the store (validate, features, train, each user part, publish), so
//! `--resume` continues an interrupted run. The per-user stages (score, limits, suggest) run
//! one user part at a time (`parts`), so the job's node never holds every user's rows; the
//! parts can be spread over machines with `decide_shard`, and the resumed run publishes them
//! as one table.
//!
//! This module owns the run's options, outcome and error; `stages` orders the stages and
//! moves their outputs between them, `report` writes what a run did. Each stage's module owns
//! its own reads and writes.

pub mod checkpoint;
mod holdout;
pub mod lease;
mod parts;
mod report;
mod stages;

use std::time::Duration;

use chrono::NaiveDate;

use crate::audit::AuditError;
use crate::cause::{Cause, Classify};
use crate::config::{Pipelines, PipelinesError};
use crate::dataset::DatasetError;
use crate::engine::{self, Engine, EngineError};
use crate::features::FeatureError;
use crate::model::{DeviceKind, ModelError};
use crate::policy::PolicyError;
use crate::publish::PublishError;
use crate::scoring::ScoringError;
use crate::sources::{self, SourceError};
use crate::store::{Store, StoreError, layout};
use crate::training::TrainingError;

pub use parts::{ShardReport, decide_shard};
pub use report::{NightlyReport, StageTime};

#[derive(Debug, thiserror::Error)]
pub enum NightlyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Engine(#[from] EngineError),
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
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// a run record or checkpoint that does not read back
    #[error("{path}: {error}")]
    Checkpoint { path: String, error: String },
    #[error("cannot resume: {0}")]
    Resume(String),
    /// a user part's files no longer match what its checkpoint recorded (overwritten by a
    /// holder that lost its lease, or removed); the checkpoint is dropped so a resume redoes it
    #[error(
        "user part {part} changed after it was decided ({problem}); its checkpoint is removed: `redflower nightly --resume` decides it again"
    )]
    PartChanged { part: String, problem: String },
    #[error("{0}")]
    NotReady(String),
}

impl Classify for NightlyError {
    /// The cause of the failure inside, whatever stage it came from.
    fn cause(&self) -> Cause {
        match self {
            NightlyError::Store(e) => e.cause(),
            NightlyError::Engine(e) => e.cause(),
            NightlyError::Source(e) => e.cause(),
            NightlyError::Feature(e) => e.cause(),
            NightlyError::Dataset(e) => e.cause(),
            NightlyError::Model(e) => e.cause(),
            NightlyError::Policy(e) => e.cause(),
            NightlyError::Publish(e) => e.cause(),
            NightlyError::Scoring(e) => e.cause(),
            NightlyError::Training(e) => e.cause(),
            NightlyError::Pipelines(e) => e.cause(),
            NightlyError::Lease(e) => e.cause(),
            NightlyError::Audit(e) => e.cause(),
            NightlyError::PartChanged { .. } => Cause::Transient,
            // a damaged run record cannot be continued; the date can be run from the start
            NightlyError::Checkpoint { .. }
            | NightlyError::Resume(_)
            | NightlyError::NotReady(_) => Cause::StartOver,
        }
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
    /// run a date again although it finished (`nothing_to_do` is then false)
    pub rerun: bool,
    /// stop once this stage's checkpoint is written (e.g. `train`, before sharded user parts;
    /// `score`, `limits` and `suggest` run together part by part: each stops after them all)
    pub stop_after: Option<Stage>,
    /// where the DataFusion queries run
    pub engine: Engine,
    /// how long the date's lease lasts without renewal
    pub lease_ttl: Duration,
}

impl RunOptions {
    /// The lease a run holds when nobody says otherwise (`--lease-seconds`).
    pub const LEASE_TTL: Duration = Duration::from_secs(600);

    pub fn new(device: DeviceKind) -> RunOptions {
        RunOptions {
            device,
            force: false,
            resume: false,
            rerun: false,
            stop_after: None,
            engine: Engine::Local,
            lease_ttl: Self::LEASE_TTL,
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

/// Whether `run_date` finished: `runs/<date>/report.json` is written last, after the table
/// is published, so its presence means the date is done.
pub async fn finished(store: &Store, run_date: NaiveDate) -> Result<bool, NightlyError> {
    Ok(store.get(&layout::run_report(run_date)).await?.is_some())
}

/// Whether a scheduled run of `run_date` has nothing to do: the date finished, and neither a
/// rerun nor a resume was asked for.
pub async fn nothing_to_do(
    store: &Store,
    run_date: NaiveDate,
    options: &RunOptions,
) -> Result<bool, NightlyError> {
    Ok(!options.rerun && !options.resume && finished(store, run_date).await?)
}

/// The dates of a backfill from `from` to `to`, both included, in order; None when `from` is
/// after `to`.
pub fn backfill_dates(from: NaiveDate, to: NaiveDate) -> Option<Vec<NaiveDate>> {
    (from <= to).then(|| from.iter_days().take_while(|d| *d <= to).collect())
}

/// `run` with options: holds the date's lease for the whole run.
pub async fn run_with(
    store: &Store,
    run_date: NaiveDate,
    pipelines: &Pipelines,
    options: &RunOptions,
) -> Result<RunOutcome, NightlyError> {
    if store.write_key_id().is_none() {
        tracing::warn!(
            keys = %pipelines.nightly.encryption.keys,
            "no data keys: features, scores, limits and decision records are written in plaintext"
        );
    }
    let lease = lease::acquire(store, &layout::run_lease(run_date), options.lease_ttl).await?;
    let outcome = match engine::session_for(&pipelines.nightly.engine, &options.engine).await {
        Ok(ctx) => {
            // a killed run's leftovers; never fails the run that finds them
            if let Err(error) =
                sources::sweep_stale_staging(store, &ctx, sources::STALE_STAGING).await
            {
                tracing::warn!(%error, "could not sweep stale staged sources");
            }
            let run = stages::Run::new(&ctx, store, run_date, pipelines, options, &lease)?;
            let outcome = stages::run_stages(&run).await;
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
