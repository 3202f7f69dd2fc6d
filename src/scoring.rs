//! Scoring: calibrated PD, scorecard points and adverse reason codes for every user, with one
//! registered model. Reads CSR rows and the model; writes `scores/dt=<date>/`.

use std::sync::Arc;

use burn::tensor::Device;
use chrono::NaiveDate;
use datafusion::arrow::array::{Float64Array, RecordBatch, StringArray, UInt64Array};
use rayon::prelude::*;

use crate::cause::{Cause, Classify};
use crate::dataset::Csr;
use crate::features::FeatureDictionary;
use crate::model::{Model, logits, reasons};
use crate::schema;
use crate::store::{Store, StoreError, layout};
use crate::user_index::UserShard;

#[derive(Debug, thiserror::Error)]
pub enum ScoringError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("scores table: {0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
}

impl Classify for ScoringError {
    fn cause(&self) -> Cause {
        match self {
            ScoringError::Store(e) => e.cause(),
            ScoringError::Arrow(_) => Cause::Input,
        }
    }
}

/// One night's scores, in the order of the rows scored.
#[derive(Debug, Clone, Default)]
pub struct Scores {
    pub model_version: String,
    pub users: Vec<u64>,
    pub pd: Vec<f64>,
    pub points: Vec<f64>,
    pub wide_logit: Vec<f64>,
    pub deep_logit: Vec<f64>,
    /// adverse reason codes (feature names), largest contribution first
    pub reasons: Vec<Vec<String>>,
}

/// Which reason codes a score gives: how many per user, and the feature families never given
/// (protected attributes: `protected = true` in features.toml).
#[derive(Debug, Clone, Copy)]
pub struct ReasonCodes<'a> {
    pub per_user: usize,
    pub withheld_families: &'a [String],
}

pub fn score(
    model: &Model,
    rows: &Csr,
    dictionary: &FeatureDictionary,
    reasons: ReasonCodes,
    device: &Device,
) -> Scores {
    let logits = logits(&model.network, rows, device, 4096);
    let (weights, bias) = model.network.coefficients();
    let explained = reasons::explain(&weights, bias, rows, &logits);
    let withheld = dictionary.family_mask(reasons.withheld_families);
    let may_give = |id: u32| !withheld.get(id as usize).copied().unwrap_or(false);
    let pd: Vec<f64> = logits
        .par_iter()
        .map(|&z| model.card.calibration.pd(z))
        .collect();
    Scores {
        model_version: model.card.version.clone(),
        users: rows.users.clone(),
        points: pd
            .par_iter()
            .map(|&p| model.card.scorecard.points(p))
            .collect(),
        pd,
        wide_logit: explained.iter().map(|e| e.wide_logit).collect(),
        deep_logit: explained.iter().map(|e| e.deep_logit).collect(),
        reasons: explained
            .par_iter()
            .map(|e| {
                e.adverse_among(reasons.per_user, may_give)
                    .into_iter()
                    .map(|(id, _)| dictionary.name(id).to_string())
                    .collect()
            })
            .collect(),
    }
}

/// Writes the scores of the users of `shard` as part `shard` of `date`'s scores; returns the
/// file written.
pub async fn write_part(
    store: &Store,
    date: NaiveDate,
    shard: UserShard,
    scores: &Scores,
) -> Result<String, ScoringError> {
    let path = layout::scores_part(date, shard.index, shard.count);
    write_file(store, &path, scores).await?;
    Ok(path)
}

/// Removes the scores of `date` (a new run writes its parts over none of a rerun's).
pub async fn clear(store: &Store, date: NaiveDate) -> Result<(), ScoringError> {
    Ok(store.delete_prefix(&layout::scores(date)).await?)
}

async fn write_file(store: &Store, path: &str, scores: &Scores) -> Result<(), ScoringError> {
    let schema = schema::SCORES.arrow();
    let mut batches = Vec::new();
    let chunk = 1 << 18;
    for start in (0..scores.users.len()).step_by(chunk) {
        let end = (start + chunk).min(scores.users.len());
        let reasons: Vec<String> = scores.reasons[start..end]
            .iter()
            .map(|r| r.join(";"))
            .collect();
        batches.push(RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(UInt64Array::from(scores.users[start..end].to_vec())),
                Arc::new(Float64Array::from(scores.pd[start..end].to_vec())),
                Arc::new(Float64Array::from(scores.points[start..end].to_vec())),
                Arc::new(Float64Array::from(scores.wide_logit[start..end].to_vec())),
                Arc::new(Float64Array::from(scores.deep_logit[start..end].to_vec())),
                Arc::new(StringArray::from(reasons)),
                Arc::new(StringArray::from(vec![
                    scores.model_version.as_str();
                    end - start
                ])),
            ],
        )?);
    }
    store.write_parquet(path, schema, &batches).await?;
    Ok(())
}
