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
    #[error("scores: {0}")]
    Parts(String),
}

impl Classify for ScoringError {
    fn cause(&self) -> Cause {
        match self {
            ScoringError::Store(e) => e.cause(),
            ScoringError::Arrow(_) => Cause::Input,
            ScoringError::Parts(_) => Cause::StartOver,
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

/// Reads every part of the scores of `date`, in part order.
pub async fn read(store: &Store, date: NaiveDate) -> Result<Scores, ScoringError> {
    let mut merged = Scores::default();
    for file in store.row_parts(&layout::scores(date)).await? {
        let part = read_file(store, &file).await?;
        if !merged.model_version.is_empty() && part.model_version != merged.model_version {
            return Err(ScoringError::Parts(format!(
                "{file} was scored by model {}, the parts before it by {}",
                part.model_version, merged.model_version
            )));
        }
        merged.model_version = part.model_version;
        merged.users.extend(part.users);
        merged.pd.extend(part.pd);
        merged.points.extend(part.points);
        merged.wide_logit.extend(part.wide_logit);
        merged.deep_logit.extend(part.deep_logit);
        merged.reasons.extend(part.reasons);
    }
    Ok(merged)
}

async fn read_file(store: &Store, path: &str) -> Result<Scores, ScoringError> {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::{Float64Type, UInt64Type};
    let mut scores = Scores::default();
    let bad = |column: &str| {
        ScoringError::Parts(format!("{path}: column {column} is missing or mistyped"))
    };
    for batch in store.read_parquet(path).await? {
        let f64s = |name: &str| {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_primitive_opt::<Float64Type>())
                .ok_or_else(|| bad(name))
        };
        let strings = |name: &str| {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_string_opt::<i32>())
                .ok_or_else(|| bad(name))
        };
        let users = batch
            .column_by_name("user_id")
            .and_then(|c| c.as_primitive_opt::<UInt64Type>())
            .ok_or_else(|| bad("user_id"))?;
        scores.users.extend(users.values().iter());
        scores.pd.extend(f64s("pd")?.values().iter());
        scores.points.extend(f64s("points")?.values().iter());
        scores
            .wide_logit
            .extend(f64s("wide_logit")?.values().iter());
        scores
            .deep_logit
            .extend(f64s("deep_logit")?.values().iter());
        scores.reasons.extend(strings("reasons")?.iter().map(|r| {
            r.unwrap_or_default()
                .split(';')
                .filter(|code| !code.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        }));
        if let Some(version) = strings("model_version")?.iter().flatten().next() {
            scores.model_version = version.to_string();
        }
    }
    Ok(scores)
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
