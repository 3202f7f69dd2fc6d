//! One published limit table held in memory for lookups by user id, and the JSON answer a
//! reader gets for a user (the same document the HTTP server returns and the Redis sink
//! stores, so both read paths agree).

use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, Float64Array, RecordBatch, StringArray};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{Float64Type, UInt64Type};
use serde::{Deserialize, Serialize};

use crate::publish::{self, Manifest, PublishError};
use crate::schema;
use crate::store::Store;

/// A category-scoped amount, spendable only in that category until it expires.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioLimit {
    pub category: String,
    pub amount: f64,
    /// YYYY-MM-DD, the first day it no longer applies
    pub valid_until: String,
}

/// A certificate family that would raise the limit tonight, and by how much.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Suggestion {
    pub family: String,
    pub adds: f64,
}

/// The table, model and policy an answer comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Versions {
    pub table: u64,
    /// the run date of the table, YYYY-MM-DD
    pub as_of: String,
    pub model: String,
    pub policy: String,
}

/// `GET /v1/limits/{user_id}`: one user's published limit, explained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LimitAnswer {
    pub user_id: u64,
    /// the limit in force
    pub credit_limit: f64,
    /// what the policy gives before the user's own cap
    pub policy_limit: f64,
    /// the grade's base limit for the user's income band
    pub base_limit: f64,
    /// added for verified certificates
    pub certificate_boost: f64,
    /// the ceiling the user asked for, if any
    pub user_cap: Option<f64>,
    pub grade: String,
    /// annual percentage rate; null for a decline
    pub apr: Option<f64>,
    /// calibrated probability of default
    pub pd: f64,
    pub scenario_limits: Vec<ScenarioLimit>,
    pub suggestions: Vec<Suggestion>,
    /// reason codes: policy reasons, then `model:<feature>` for the model's adverse reasons
    pub reasons: Vec<String>,
    pub versions: Versions,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error("published table version {version}: {problem}")]
    Table { version: u64, problem: String },
}

/// A committed version's table, columns typed once, rows findable by user id.
pub struct Snapshot {
    pub manifest: Manifest,
    versions: Versions,
    users: Vec<u64>,
    /// row of the i-th smallest user id, when the table is not sorted by user
    order: Option<Vec<u32>>,
    pd: Float64Array,
    grade: StringArray,
    base_limit: Float64Array,
    certificate_boost: Float64Array,
    user_cap: Float64Array,
    policy_limit: Float64Array,
    credit_limit: Float64Array,
    apr: Float64Array,
    scenario_limits: StringArray,
    suggestions: StringArray,
    reasons: StringArray,
}

impl Snapshot {
    /// Reads the table `manifest` commits (checksums verified) and indexes it.
    pub async fn load(store: &Store, manifest: Manifest) -> Result<Snapshot, SnapshotError> {
        let batches = publish::read_table(store, &manifest).await?;
        Snapshot::from_batches(manifest, &batches)
    }

    pub fn from_batches(
        manifest: Manifest,
        batches: &[RecordBatch],
    ) -> Result<Snapshot, SnapshotError> {
        let version = manifest.version;
        let problem = |problem: String| SnapshotError::Table { version, problem };
        let table = concat_batches(&schema::LIMITS.arrow(), batches)
            .map_err(|e| problem(format!("does not have the limits schema: {e}")))?;
        let column = |name: &str| {
            table
                .column_by_name(name)
                .cloned()
                .ok_or_else(|| problem(format!("column {name} is missing")))
        };
        let f64s = |name: &str| -> Result<Float64Array, SnapshotError> {
            column(name)?
                .as_primitive_opt::<Float64Type>()
                .cloned()
                .ok_or_else(|| problem(format!("column {name} is not Float64")))
        };
        let strings = |name: &str| -> Result<StringArray, SnapshotError> {
            column(name)?
                .as_string_opt::<i32>()
                .cloned()
                .ok_or_else(|| problem(format!("column {name} is not Utf8")))
        };
        let users: Vec<u64> = column("user_id")?
            .as_primitive_opt::<UInt64Type>()
            .ok_or_else(|| problem("column user_id is not UInt64".into()))?
            .values()
            .to_vec();
        let order = if users.windows(2).all(|w| w[0] < w[1]) {
            None
        } else {
            let mut order: Vec<u32> = (0..users.len() as u32).collect();
            order.sort_by_key(|&i| users[i as usize]);
            if order
                .windows(2)
                .any(|w| users[w[0] as usize] == users[w[1] as usize])
            {
                return Err(problem("a user id appears twice".into()));
            }
            Some(order)
        };
        Ok(Snapshot {
            versions: Versions {
                table: manifest.version,
                as_of: manifest.as_of.to_string(),
                model: manifest.model_version.clone(),
                policy: manifest.policy_version.clone(),
            },
            users,
            order,
            pd: f64s("pd")?,
            grade: strings("grade")?,
            base_limit: f64s("base_limit")?,
            certificate_boost: f64s("certificate_boost")?,
            user_cap: f64s("user_cap")?,
            policy_limit: f64s("policy_limit")?,
            credit_limit: f64s("credit_limit")?,
            apr: f64s("apr")?,
            scenario_limits: strings("scenario_limits")?,
            suggestions: strings("suggestions")?,
            reasons: strings("reasons")?,
            manifest,
        })
    }

    pub fn version(&self) -> u64 {
        self.manifest.version
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Every user id of the table, in table order.
    pub fn user_ids(&self) -> &[u64] {
        &self.users
    }

    fn row_of(&self, user_id: u64) -> Option<usize> {
        match &self.order {
            None => self.users.binary_search(&user_id).ok(),
            Some(order) => order
                .binary_search_by_key(&user_id, |&i| self.users[i as usize])
                .ok()
                .map(|k| order[k] as usize),
        }
    }

    /// The answer for `user_id`, or `None` when the table has no such user.
    pub fn answer(&self, user_id: u64) -> Option<LimitAnswer> {
        self.row_of(user_id).map(|row| self.answer_at(row))
    }

    /// The JSON of `answer(user_id)`: what the server sends and the Redis sink stores.
    /// (Writing it straight from the columns, without the owned answer, was measured and
    /// did not make lookups faster: benches/README.md.)
    pub fn answer_json(&self, user_id: u64) -> Option<Vec<u8>> {
        // a struct of numbers and strings always serializes
        serde_json::to_vec(&self.answer(user_id)?).ok()
    }

    /// The answer for the table's `row`-th row.
    pub fn answer_at(&self, row: usize) -> LimitAnswer {
        let optional = |a: &Float64Array| (!a.is_null(row)).then(|| a.value(row));
        LimitAnswer {
            user_id: self.users[row],
            credit_limit: self.credit_limit.value(row),
            policy_limit: self.policy_limit.value(row),
            base_limit: self.base_limit.value(row),
            certificate_boost: self.certificate_boost.value(row),
            user_cap: optional(&self.user_cap),
            grade: self.grade.value(row).to_string(),
            apr: optional(&self.apr),
            pd: self.pd.value(row),
            scenario_limits: split(self.scenario_limits.value(row))
                .filter_map(parse_scenario)
                .collect(),
            suggestions: split(self.suggestions.value(row))
                .filter_map(parse_suggestion)
                .collect(),
            reasons: split(self.reasons.value(row)).map(str::to_string).collect(),
            versions: self.versions.clone(),
        }
    }
}

fn split(text: &str) -> impl Iterator<Item = &str> {
    text.split(';').filter(|part| !part.is_empty())
}

/// `furniture=2000 until 2026-12-01`
fn parse_scenario(text: &str) -> Option<ScenarioLimit> {
    let (category, rest) = text.split_once('=')?;
    let (amount, until) = rest.split_once(" until ")?;
    Some(ScenarioLimit {
        category: category.to_string(),
        amount: amount.trim().parse().ok()?,
        valid_until: until.trim().to_string(),
    })
}

/// `language=+800`
fn parse_suggestion(text: &str) -> Option<Suggestion> {
    let (family, adds) = text.split_once('=')?;
    Some(Suggestion {
        family: family.to_string(),
        adds: adds.trim().trim_start_matches('+').parse().ok()?,
    })
}

/// A shareable snapshot.
pub type SharedSnapshot = Arc<Snapshot>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_strings_parse_back_into_fields() {
        assert_eq!(
            parse_scenario("furniture=2000 until 2026-12-01"),
            Some(ScenarioLimit {
                category: "furniture".into(),
                amount: 2000.0,
                valid_until: "2026-12-01".into()
            })
        );
        assert_eq!(
            parse_suggestion("language=+800"),
            Some(Suggestion {
                family: "language".into(),
                adds: 800.0
            })
        );
        assert_eq!(split(";a;;b;").collect::<Vec<_>>(), vec!["a", "b"]);
    }
}
