//! One published limit table held in memory for lookups by user id, and the JSON answer a
//! reader gets for a user (the same document the HTTP server returns and the Redis sink
//! stores, so both read paths agree).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use datafusion::arrow::array::{Array, AsArray, Float64Array, RecordBatch, StringArray};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{Float64Type, UInt64Type};
use rayon::prelude::*;
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

/// A committed version's table, laid out for lookups by user id: an index from id to row and
/// every row's answer already written as JSON, one after another in one buffer. A lookup is
/// an index probe and a slice of that buffer, shared with the response without a copy: no
/// number is formatted and no list parsed per request. The answers take about as much
/// memory as Redis holding the same documents (~600 bytes a user; benches/README.md).
pub struct Snapshot {
    pub manifest: Manifest,
    /// in table order
    users: Vec<u64>,
    index: RowIndex,
    /// every row's answer, in table order
    answers: Bytes,
    /// where row `r`'s answer ends in `answers`; it starts where row `r - 1`'s ends
    answer_ends: Vec<usize>,
}

/// Where a user's row is.
enum RowIndex {
    /// ids packed in a span at most about twice the row count (the usual case: ids are
    /// assigned in sequence): a slot per id, `NO_ROW` where the table has no such user
    Dense { first: u64, rows: Vec<u32> },
    /// anything else
    Sparse(HashMap<u64, u32>),
}

const NO_ROW: u32 = u32::MAX;

/// Rows rendered per parallel task at load.
const RENDER_CHUNK: usize = 16 * 1024;

impl RowIndex {
    /// Fails on the first id that appears twice.
    fn build(users: &[u64]) -> Result<RowIndex, u64> {
        let (Some(&min), Some(&max)) = (users.iter().min(), users.iter().max()) else {
            return Ok(RowIndex::Sparse(HashMap::new()));
        };
        let span = max - min;
        if span < 2 * users.len() as u64 + 1024 {
            let mut rows = vec![NO_ROW; span as usize + 1];
            for (row, &user) in users.iter().enumerate() {
                let slot = &mut rows[(user - min) as usize];
                if *slot != NO_ROW {
                    return Err(user);
                }
                *slot = row as u32;
            }
            Ok(RowIndex::Dense { first: min, rows })
        } else {
            let mut rows = HashMap::with_capacity(users.len());
            for (row, &user) in users.iter().enumerate() {
                if rows.insert(user, row as u32).is_some() {
                    return Err(user);
                }
            }
            Ok(RowIndex::Sparse(rows))
        }
    }

    fn row_of(&self, user_id: u64) -> Option<usize> {
        let row = match self {
            RowIndex::Dense { first, rows } => *rows.get(user_id.checked_sub(*first)? as usize)?,
            RowIndex::Sparse(rows) => *rows.get(&user_id)?,
        };
        (row != NO_ROW).then_some(row as usize)
    }
}

/// The limits table's columns, typed, for rendering answers.
struct Columns {
    users: Vec<u64>,
    credit_limit: Float64Array,
    policy_limit: Float64Array,
    base_limit: Float64Array,
    certificate_boost: Float64Array,
    pd: Float64Array,
    user_cap: Float64Array,
    apr: Float64Array,
    grade: StringArray,
    scenario_limits: StringArray,
    suggestions: StringArray,
    reasons: StringArray,
}

impl Columns {
    fn view<'a>(&'a self, row: usize, versions: &'a Versions) -> AnswerView<'a> {
        let optional = |a: &Float64Array| (!a.is_null(row)).then(|| a.value(row));
        AnswerView {
            user_id: self.users[row],
            credit_limit: self.credit_limit.value(row),
            policy_limit: self.policy_limit.value(row),
            base_limit: self.base_limit.value(row),
            certificate_boost: self.certificate_boost.value(row),
            user_cap: optional(&self.user_cap),
            grade: self.grade.value(row),
            apr: optional(&self.apr),
            pd: self.pd.value(row),
            scenario_limits: Listed(self.scenario_limits.value(row), parse_scenario),
            suggestions: Listed(self.suggestions.value(row), parse_suggestion),
            reasons: Listed(self.reasons.value(row), Some),
            versions,
        }
    }
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
        if users.len() >= NO_ROW as usize {
            return Err(problem(format!(
                "{} rows is more than one table holds",
                users.len()
            )));
        }
        let index = RowIndex::build(&users)
            .map_err(|user| problem(format!("user id {user} appears twice")))?;
        let rows = users.len();
        let columns = Columns {
            credit_limit: f64s("credit_limit")?,
            policy_limit: f64s("policy_limit")?,
            base_limit: f64s("base_limit")?,
            certificate_boost: f64s("certificate_boost")?,
            pd: f64s("pd")?,
            user_cap: f64s("user_cap")?,
            apr: f64s("apr")?,
            grade: strings("grade")?,
            scenario_limits: strings("scenario_limits")?,
            suggestions: strings("suggestions")?,
            reasons: strings("reasons")?,
            users,
        };
        // JSON has no NaN or infinity: such a number would be written as null and the answer
        // would not read back as a `LimitAnswer`.
        for (name, values) in [
            ("credit_limit", &columns.credit_limit),
            ("policy_limit", &columns.policy_limit),
            ("base_limit", &columns.base_limit),
            ("certificate_boost", &columns.certificate_boost),
            ("pd", &columns.pd),
            ("user_cap", &columns.user_cap),
            ("apr", &columns.apr),
        ] {
            if let Some(row) =
                (0..rows).find(|&row| !values.is_null(row) && !values.value(row).is_finite())
            {
                return Err(problem(format!(
                    "{name} of user {} is {}, not a finite number",
                    columns.users[row],
                    values.value(row)
                )));
            }
        }
        let versions = Versions {
            table: manifest.version,
            as_of: manifest.as_of.to_string(),
            model: manifest.model_version.clone(),
            policy: manifest.policy_version.clone(),
        };

        // Render in parallel chunks, then lay the chunks end to end.
        let chunks: Vec<(Vec<u8>, Vec<usize>)> = (0..rows.div_ceil(RENDER_CHUNK))
            .into_par_iter()
            .map(|chunk| {
                let rows = chunk * RENDER_CHUNK..rows.min((chunk + 1) * RENDER_CHUNK);
                let mut json = Vec::with_capacity(rows.len() * 640);
                let mut ends = Vec::with_capacity(rows.len());
                for row in rows {
                    // a struct of numbers and strings always serializes into a Vec
                    let _ = serde_json::to_writer(&mut json, &columns.view(row, &versions));
                    ends.push(json.len());
                }
                (json, ends)
            })
            .collect();
        let mut answers = Vec::with_capacity(chunks.iter().map(|(json, _)| json.len()).sum());
        let mut answer_ends = Vec::with_capacity(rows);
        for (json, ends) in chunks {
            let offset = answers.len();
            answers.extend_from_slice(&json);
            answer_ends.extend(ends.into_iter().map(|end| offset + end));
        }
        Ok(Snapshot {
            users: columns.users,
            index,
            answers: Bytes::from(answers),
            answer_ends,
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

    /// The answer for `user_id`, or `None` when the table has no such user.
    pub fn answer(&self, user_id: u64) -> Option<LimitAnswer> {
        self.index.row_of(user_id).map(|row| self.answer_at(row))
    }

    /// The JSON of `answer(user_id)`: what the server sends, sharing the snapshot's buffer.
    pub fn answer_json(&self, user_id: u64) -> Option<Bytes> {
        self.index
            .row_of(user_id)
            .map(|row| self.answer_json_at(row))
    }

    /// The JSON of the table's `row`-th row (what the server sends and the Redis sink
    /// stores: both read paths agree).
    pub fn answer_json_at(&self, row: usize) -> Bytes {
        let start = row
            .checked_sub(1)
            .map_or(0, |before| self.answer_ends[before]);
        self.answers.slice(start..self.answer_ends[row])
    }

    /// The answer for the table's `row`-th row.
    pub fn answer_at(&self, row: usize) -> LimitAnswer {
        serde_json::from_slice(&self.answer_json_at(row))
            .expect("the snapshot rendered this JSON from a LimitAnswer's fields")
    }
}

/// `LimitAnswer` borrowing from the snapshot: the same fields in the same order, so it
/// serializes to the same bytes (a test holds the two together).
#[derive(Serialize)]
struct AnswerView<'a> {
    user_id: u64,
    credit_limit: f64,
    policy_limit: f64,
    base_limit: f64,
    certificate_boost: f64,
    user_cap: Option<f64>,
    grade: &'a str,
    apr: Option<f64>,
    pd: f64,
    scenario_limits: Listed<'a, ScenarioView<'a>>,
    suggestions: Listed<'a, SuggestionView<'a>>,
    reasons: Listed<'a, &'a str>,
    versions: &'a Versions,
}

/// A `;`-separated published list, serialized as a JSON array of its parsed items.
struct Listed<'a, T>(&'a str, fn(&'a str) -> Option<T>);

impl<'a, T: 'a> Listed<'a, T> {
    fn items(&self) -> impl Iterator<Item = T> + 'a {
        split(self.0).filter_map(self.1)
    }
}

impl<'a, T: Serialize + 'a> Serialize for Listed<'a, T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.items())
    }
}

#[derive(Debug, PartialEq, Serialize)]
struct ScenarioView<'a> {
    category: &'a str,
    amount: f64,
    valid_until: &'a str,
}

#[derive(Debug, PartialEq, Serialize)]
struct SuggestionView<'a> {
    family: &'a str,
    adds: f64,
}

fn split(text: &str) -> impl Iterator<Item = &str> {
    text.split(';').filter(|part| !part.is_empty())
}

/// `furniture=2000 until 2026-12-01`
fn parse_scenario(text: &str) -> Option<ScenarioView<'_>> {
    let (category, rest) = text.split_once('=')?;
    let (amount, until) = rest.split_once(" until ")?;
    Some(ScenarioView {
        category,
        amount: amount.trim().parse().ok()?,
        valid_until: until.trim(),
    })
}

/// `language=+800`
fn parse_suggestion(text: &str) -> Option<SuggestionView<'_>> {
    let (family, adds) = text.split_once('=')?;
    Some(SuggestionView {
        family,
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
            Some(ScenarioView {
                category: "furniture",
                amount: 2000.0,
                valid_until: "2026-12-01"
            })
        );
        assert_eq!(
            parse_suggestion("language=+800"),
            Some(SuggestionView {
                family: "language",
                adds: 800.0
            })
        );
        assert_eq!(split(";a;;b;").collect::<Vec<_>>(), vec!["a", "b"]);
    }

    #[test]
    fn the_index_finds_every_row_and_nothing_else() {
        // in sequence, shuffled, and spread far apart (the hash map)
        for users in [
            vec![10, 11, 12, 14],
            vec![14, 10, 12, 11],
            vec![7, u64::MAX - 1, 1 << 40, 3],
        ] {
            let index = RowIndex::build(&users).unwrap();
            assert_eq!(
                matches!(index, RowIndex::Dense { .. }),
                users[1] < 1000,
                "{users:?}"
            );
            for (row, &user) in users.iter().enumerate() {
                assert_eq!(index.row_of(user), Some(row));
            }
            for absent in [0, 9, 13, 15, 1 << 41, u64::MAX] {
                assert_eq!(index.row_of(absent), None, "{absent} in {users:?}");
            }
        }
        assert!(RowIndex::build(&[]).unwrap().row_of(0).is_none());
    }

    #[test]
    fn an_id_twice_is_refused_by_either_index() {
        assert_eq!(RowIndex::build(&[5, 6, 5]).err(), Some(5));
        assert_eq!(RowIndex::build(&[1 << 50, 3, 1 << 50]).err(), Some(1 << 50));
    }
}
