//! Checkpoints of one date's run, so a run that crashed continues where it stopped.
//!
//! A fresh run writes `runs/<date>/run.json` (a new run id and the fingerprint of its
//! configuration) and forgets older checkpoints. After each stage it writes
//! `runs/<date>/checkpoints/<stage>.json` with what later stages need from it; the stage's
//! data (features, model, scores) is already in the store by then. `--resume` reads them back
//! and skips the stages they cover; it refuses when the configuration changed since, because
//! the finished stages were computed under the old one.

use chrono::{NaiveDate, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::info;

use super::NightlyError;
use crate::config::Pipelines;
use crate::store::{Store, layout};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunRecord {
    pub run_id: String,
    #[serde(with = "crate::serde_date")]
    pub run_date: NaiveDate,
    pub config_fingerprint: String,
    pub started_at: String,
}

#[derive(Serialize, Deserialize)]
struct Checkpoint<T> {
    run_id: String,
    stage: String,
    completed_at: String,
    output: T,
}

/// The checkpoints of one run of one date.
pub struct Checkpoints {
    store: Store,
    pub run: RunRecord,
}

/// A fingerprint of the parsed configuration (its types hold no hash maps, so their debug
/// form is stable); a comment or a README edited in `pipelines/` does not change it.
pub fn fingerprint(pipelines: &Pipelines) -> String {
    let parsed = format!(
        "{:?}{:?}{:?}",
        pipelines.features, pipelines.policy, pipelines.nightly
    );
    format!("{:x}", Sha256::digest(parsed.as_bytes()))[..16].to_string()
}

fn json<T: Serialize>(value: &T, path: &str) -> Result<Vec<u8>, NightlyError> {
    serde_json::to_vec_pretty(value).map_err(|e| NightlyError::Checkpoint {
        path: path.to_string(),
        error: e.to_string(),
    })
}

impl Checkpoints {
    /// Starts a new run of `date`: a new run id, no checkpoints.
    pub async fn start(
        store: &Store,
        date: NaiveDate,
        pipelines: &Pipelines,
    ) -> Result<Checkpoints, NightlyError> {
        store.delete_prefix(&layout::checkpoints(date)).await?;
        let now = Utc::now();
        let run = RunRecord {
            run_id: format!(
                "{date}-{}-{}",
                now.format("%Y%m%dT%H%M%S%.3f"),
                std::process::id()
            ),
            run_date: date,
            config_fingerprint: fingerprint(pipelines),
            started_at: now.to_rfc3339(),
        };
        store
            .put(&layout::run_file(date), json(&run, "run.json")?.into())
            .await?;
        info!(run_id = %run.run_id, "run started");
        Ok(Checkpoints {
            store: store.clone(),
            run,
        })
    }

    /// The interrupted run of `date`, if there is one to continue.
    pub async fn resume(
        store: &Store,
        date: NaiveDate,
        pipelines: &Pipelines,
    ) -> Result<Option<Checkpoints>, NightlyError> {
        let Some(bytes) = store.get(&layout::run_file(date)).await? else {
            return Ok(None);
        };
        let path = format!("{}/{}", store.url(), layout::run_file(date));
        let run: RunRecord =
            serde_json::from_slice(&bytes).map_err(|e| NightlyError::Checkpoint {
                path: path.clone(),
                error: e.to_string(),
            })?;
        let now = fingerprint(pipelines);
        if run.config_fingerprint != now {
            return Err(NightlyError::Resume(format!(
                "{path}: the configuration changed since run {} started (fingerprint {} -> {now}); its finished stages would not match. Run without --resume to start the date over",
                run.run_id, run.config_fingerprint
            )));
        }
        info!(run_id = %run.run_id, "resuming");
        Ok(Some(Checkpoints {
            store: store.clone(),
            run,
        }))
    }

    fn path(&self, stage: &str) -> String {
        layout::checkpoint(self.run.run_date, stage)
    }

    /// What `stage` left for later stages, if it completed in this run.
    pub async fn get<T: DeserializeOwned>(&self, stage: &str) -> Result<Option<T>, NightlyError> {
        let path = self.path(stage);
        let Some(bytes) = self.store.get(&path).await? else {
            return Ok(None);
        };
        let checkpoint: Checkpoint<T> =
            serde_json::from_slice(&bytes).map_err(|e| NightlyError::Checkpoint {
                path: format!("{}/{path}", self.store.url()),
                error: e.to_string(),
            })?;
        Ok((checkpoint.run_id == self.run.run_id).then_some(checkpoint.output))
    }

    /// Records that `stage` completed, with what later stages need from it.
    pub async fn put<T: Serialize>(&self, stage: &str, output: &T) -> Result<(), NightlyError> {
        let checkpoint = Checkpoint {
            run_id: self.run.run_id.clone(),
            stage: stage.to_string(),
            completed_at: Utc::now().to_rfc3339(),
            output,
        };
        self.store
            .put(&self.path(stage), json(&checkpoint, stage)?.into())
            .await?;
        Ok(())
    }
}
