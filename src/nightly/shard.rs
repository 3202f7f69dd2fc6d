//! Sharded scoring: after `nightly --stop-after train`, each machine (or GPU) scores one slice
//! of the run date's users with the model the train stage chose and checkpoints it; the
//! resumed run finds a complete set of shards and merges them into one table.

use std::time::{Duration, Instant};

use chrono::NaiveDate;
use serde::Serialize;

use super::NightlyError;
use super::checkpoint::Checkpoints;
use super::lease;
use super::stages::{Scored, Trained};
use crate::config::Pipelines;
use crate::dataset::Csr;
use crate::features::{self, FeatureDictionary};
use crate::model::{self, DeviceKind};
use crate::scoring::{self, Shard};
use crate::store::{Store, layout};

fn shard_stage(shard: Shard) -> String {
    layout::shard_stage(shard.index, shard.count)
}

/// The shard count whose shards all completed in this run, if any.
pub(super) async fn complete_shards(
    store: &Store,
    checkpoints: &Checkpoints,
    run_date: NaiveDate,
) -> Result<Option<usize>, NightlyError> {
    let mut counts: Vec<usize> = store
        .list(&layout::checkpoints(run_date))
        .await?
        .into_iter()
        .filter_map(|(path, _)| layout::shard_count_of_checkpoint(&path))
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
    let folder = layout::shard_lease(run_date, shard.index, shard.count);
    let lease = lease::acquire(store, &folder, lease_ttl).await?;
    let outcome = score_one_shard(store, run_date, pipelines, device, shard, &lease).await;
    if let Err(error) = lease.release().await {
        tracing::warn!(%error, "could not release the shard lease");
    }
    outcome
}

/// Scores and writes one shard while `lease` holds: a holder that lost it (paused past its
/// expiry, taken over) writes neither the shard nor its checkpoint.
async fn score_one_shard(
    store: &Store,
    run_date: NaiveDate,
    pipelines: &Pipelines,
    device: DeviceKind,
    shard: Shard,
    lease: &lease::Lease,
) -> Result<ShardReport, NightlyError> {
    let started = Instant::now();
    let not_ready = || {
        NightlyError::NotReady(format!(
            "shard {shard} of {run_date}: the run has not finished its train stage on {}; run `redflower nightly --date {run_date} --stop-after train` first",
            store.url()
        ))
    };
    let checkpoints = Checkpoints::resume(store, run_date, pipelines)
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
    let withheld = pipelines.features.protected_families();
    let reasons = scoring::ReasonCodes {
        per_user: pipelines.nightly.evaluation.reasons_per_user,
        withheld_families: &withheld,
    };
    let scores = scoring::score(&model, &rows.select(&slice), &dictionary, reasons, &device);
    lease.check()?;
    scoring::write_shard(store, run_date, shard, &scores).await?;
    let scored = Scored {
        users: scores.users.len(),
        shards: None,
    };
    lease.check()?;
    checkpoints.put(&shard_stage(shard), &scored).await?;
    Ok(ShardReport {
        run_date,
        shard: shard.to_string(),
        run_id: checkpoints.run.run_id.clone(),
        users: scores.users.len(),
        model_version: trained.model_version,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nightly::{RunOptions, Stage, run_with};

    /// A shard holder stalled past its lease's expiry (another machine may have taken the
    /// shard over) scores, finds the lease gone, and writes neither scores nor checkpoint.
    #[tokio::test]
    async fn a_shard_that_lost_its_lease_writes_nothing() {
        let store = Store::open("memory://shard-fencing").unwrap();
        let run_date = NaiveDate::from_ymd_opt(2026, 11, 1).unwrap();
        let world = crate::synth::WorldConfig {
            users: 600,
            days: 150,
            end: run_date,
            seed: 3,
        };
        crate::synth::generate(&store, &world).await.unwrap();
        let pipelines = Pipelines::builtin();
        let options = RunOptions {
            stop_after: Some(Stage::Train),
            ..RunOptions::new(DeviceKind::Cpu)
        };
        run_with(&store, run_date, &pipelines, &options)
            .await
            .unwrap();
        let shard = Shard { index: 0, count: 2 };
        let ttl = Duration::from_millis(300);
        let folder = layout::shard_lease(run_date, shard.index, shard.count);
        let stalled = lease::acquire(&store, &folder, ttl).await.unwrap();
        stalled.stall();
        tokio::time::sleep(ttl + Duration::from_millis(100)).await;
        let error = score_one_shard(
            &store,
            run_date,
            &pipelines,
            DeviceKind::Cpu,
            shard,
            &stalled,
        )
        .await
        .unwrap_err();
        assert!(matches!(error, NightlyError::Lease(_)), "{error}");
        assert_eq!(store.get(&shard.file(run_date)).await.unwrap(), None);
        assert!(
            store
                .list(&layout::checkpoints(run_date))
                .await
                .unwrap()
                .iter()
                .all(|(path, _)| layout::shard_count_of_checkpoint(path).is_none())
        );
    }
}
