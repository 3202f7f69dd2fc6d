//! Decision records: one row per user and run with what the limit policy weighed (the
//! user's facts) and why the model scored as it did (each adverse reason with the feature
//! value behind it and its share of the logit). Written by the nightly run into its folder,
//! read back one user at a time by `explain`. Schema: `schemas/decisions.json`.

use std::sync::Arc;

use datafusion::arrow::array::{AsArray, Float64Array, RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::datatypes::{Float64Type, UInt64Type};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::AuditError;
use crate::dataset::Csr;
use crate::features::FeatureDictionary;
use crate::model::Model;
use crate::policy::UserFacts;
use crate::publish::DataFile;
use crate::schema;
use crate::scoring::Scores;
use crate::store::{Store, layout};
use crate::user_index::UserShard;

/// One adverse reason as the model gave it: the feature, its value in the user's row and its
/// share of the logit (the wide weight times the value).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelReason {
    pub feature: String,
    pub value: f64,
    pub contribution: f64,
}

/// One user's decision record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRecord {
    pub user_id: u64,
    pub pd: f64,
    pub wide_logit: f64,
    pub deep_logit: f64,
    pub facts: UserFacts,
    pub model_reasons: Vec<ModelReason>,
}

/// The reasons of every scored user with their values and contributions; `rows` are the
/// rows `scores` were computed from, in the same order.
pub fn model_reasons(
    model: &Model,
    rows: &Csr,
    dictionary: &FeatureDictionary,
    scores: &Scores,
) -> Vec<Vec<ModelReason>> {
    let (weights, _) = model.network.coefficients();
    (0..scores.users.len())
        .into_par_iter()
        .map(|i| {
            let (ids, values) = rows.row(i);
            scores.reasons[i]
                .iter()
                .map(|feature| {
                    let id = dictionary.id(feature);
                    let value = id
                        .and_then(|id| ids.iter().position(|&x| x == id))
                        .map_or(0.0, |at| values[at] as f64);
                    let weight = id.and_then(|id| weights.get(id as usize)).copied();
                    ModelReason {
                        feature: feature.clone(),
                        value,
                        contribution: weight.unwrap_or(0.0) as f64 * value,
                    }
                })
                .collect()
        })
        .collect()
}

fn json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("plain data always serializes")
}

/// Writes the records of one part of the users (`shard`, of the run's parts) into the run's
/// `folder`; returns the file with its checksum, shard and rows (what the manifest's lineage
/// vouches for).
pub async fn write(
    store: &Store,
    folder: &str,
    shard: UserShard,
    scores: &Scores,
    facts: &[UserFacts],
    reasons: &[Vec<ModelReason>],
) -> Result<DataFile, AuditError> {
    let facts: Vec<String> = facts.par_iter().map(json).collect();
    let reasons: Vec<String> = reasons
        .par_iter()
        .map(|r| {
            let tuples: Vec<(&str, f64, f64)> = r
                .iter()
                .map(|m| (m.feature.as_str(), m.value, m.contribution))
                .collect();
            json(&tuples)
        })
        .collect();
    let batch = RecordBatch::try_new(
        schema::DECISIONS.arrow(),
        vec![
            Arc::new(UInt64Array::from(scores.users.clone())),
            Arc::new(Float64Array::from(scores.pd.clone())),
            Arc::new(Float64Array::from(scores.wide_logit.clone())),
            Arc::new(Float64Array::from(scores.deep_logit.clone())),
            Arc::new(StringArray::from_iter_values(facts)),
            Arc::new(StringArray::from_iter_values(reasons)),
        ],
    )?;
    let path = layout::decisions_part(folder, shard.index, shard.count);
    store.write_parquet(&path, batch.schema(), &[batch]).await?;
    Ok(DataFile {
        shard: (shard.count > 1).then(|| shard.to_string()),
        rows: Some(scores.users.len() as u64),
        ..crate::publish::data_file(store, &path).await?
    })
}

/// The file of `files` (a version's decision records, one or in parts) that holds `user_id`.
pub fn file_of(files: &[DataFile], user_id: u64) -> Option<&DataFile> {
    files.iter().find(|file| {
        file.user_shard()
            .is_none_or(|shard| shard.contains(user_id))
    })
}

/// The record of `user_id` in `file` (named by version `version`'s manifest), checked against
/// the file's checksum first.
pub async fn read_user(
    store: &Store,
    file: &DataFile,
    version: u64,
    user_id: u64,
) -> Result<Option<DecisionRecord>, AuditError> {
    let problem = |what: &str| AuditError::Record {
        path: file.path.clone(),
        problem: what.to_string(),
    };
    for batch in crate::publish::read_checked(store, file, version).await? {
        schema::DECISIONS
            .check(&file.path, batch.schema().as_ref())
            .map_err(|e| problem(&e.to_string()))?;
        let users = batch.column(0).as_primitive::<UInt64Type>();
        let Some(row) = (0..users.len()).find(|&r| users.value(r) == user_id) else {
            continue;
        };
        let number = |c: usize| batch.column(c).as_primitive::<Float64Type>().value(row);
        let text = |c: usize| batch.column(c).as_string::<i32>().value(row).to_string();
        let facts: UserFacts = serde_json::from_str(&text(4))
            .map_err(|e| problem(&format!("user {user_id}'s facts: {e}")))?;
        let tuples: Vec<(String, f64, f64)> = serde_json::from_str(&text(5))
            .map_err(|e| problem(&format!("user {user_id}'s model reasons: {e}")))?;
        return Ok(Some(DecisionRecord {
            user_id,
            pd: number(1),
            wide_logit: number(2),
            deep_logit: number(3),
            facts,
            model_reasons: tuples
                .into_iter()
                .map(|(feature, value, contribution)| ModelReason {
                    feature,
                    value,
                    contribution,
                })
                .collect(),
        }));
    }
    Ok(None)
}
