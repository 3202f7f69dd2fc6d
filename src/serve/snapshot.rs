//! One published limit table held in memory for lookups by user id, and the JSON answer a
//! reader gets for a user (the same document the HTTP server returns and the Redis sink
//! stores, so both read paths agree).

use std::collections::HashMap;
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

/// A committed version's table, laid out for lookups by user id: an index from id to row,
/// one record per row with its numbers inline, and the row's text (grade, scenario limits,
/// suggestions, reasons) in one run of an arena. A lookup touches three places in memory
/// instead of a cell in each of twelve Arrow columns after a binary search; at a million
/// users those cache misses were a third of a request's time (benches/README.md).
pub struct Snapshot {
    pub manifest: Manifest,
    versions: Versions,
    /// in table order
    users: Vec<u64>,
    index: RowIndex,
    records: Vec<Record>,
    text: String,
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

/// A row's numbers, and where its text is in the arena.
struct Record {
    credit_limit: f64,
    policy_limit: f64,
    base_limit: f64,
    certificate_boost: f64,
    pd: f64,
    user_cap: Option<f64>,
    apr: Option<f64>,
    text_start: usize,
    /// lengths of grade, scenario limits, suggestions and reasons, in that order
    text_lengths: [u32; 4],
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

        let pd = f64s("pd")?;
        let base_limit = f64s("base_limit")?;
        let certificate_boost = f64s("certificate_boost")?;
        let user_cap = f64s("user_cap")?;
        let policy_limit = f64s("policy_limit")?;
        let credit_limit = f64s("credit_limit")?;
        let apr = f64s("apr")?;
        let texts = [
            strings("grade")?,
            strings("scenario_limits")?,
            strings("suggestions")?,
            strings("reasons")?,
        ];
        let optional = |a: &Float64Array, row: usize| (!a.is_null(row)).then(|| a.value(row));
        let mut text = String::with_capacity(texts.iter().map(|t| t.values().len()).sum());
        let records = (0..users.len())
            .map(|row| {
                let text_start = text.len();
                let text_lengths = texts.each_ref().map(|column| {
                    let value = column.value(row);
                    text.push_str(value);
                    value.len() as u32
                });
                Record {
                    credit_limit: credit_limit.value(row),
                    policy_limit: policy_limit.value(row),
                    base_limit: base_limit.value(row),
                    certificate_boost: certificate_boost.value(row),
                    pd: pd.value(row),
                    user_cap: optional(&user_cap, row),
                    apr: optional(&apr, row),
                    text_start,
                    text_lengths,
                }
            })
            .collect();
        Ok(Snapshot {
            versions: Versions {
                table: manifest.version,
                as_of: manifest.as_of.to_string(),
                model: manifest.model_version.clone(),
                policy: manifest.policy_version.clone(),
            },
            users,
            index,
            records,
            text,
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

    /// The JSON of `answer(user_id)`: what the server sends.
    pub fn answer_json(&self, user_id: u64) -> Option<Vec<u8>> {
        self.index
            .row_of(user_id)
            .map(|row| self.answer_json_at(row))
    }

    /// The JSON of the table's `row`-th row, written from the record without building an
    /// owned answer (what the server sends and the Redis sink stores: both read paths agree).
    pub fn answer_json_at(&self, row: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(640);
        // a struct of numbers and strings always serializes into a Vec
        let _ = serde_json::to_writer(&mut out, &self.view(row));
        out
    }

    /// The answer for the table's `row`-th row.
    pub fn answer_at(&self, row: usize) -> LimitAnswer {
        let view = self.view(row);
        LimitAnswer {
            user_id: view.user_id,
            credit_limit: view.credit_limit,
            policy_limit: view.policy_limit,
            base_limit: view.base_limit,
            certificate_boost: view.certificate_boost,
            user_cap: view.user_cap,
            grade: view.grade.to_string(),
            apr: view.apr,
            pd: view.pd,
            scenario_limits: view
                .scenario_limits
                .items()
                .map(|s| ScenarioLimit {
                    category: s.category.to_string(),
                    amount: s.amount,
                    valid_until: s.valid_until.to_string(),
                })
                .collect(),
            suggestions: view
                .suggestions
                .items()
                .map(|s| Suggestion {
                    family: s.family.to_string(),
                    adds: s.adds,
                })
                .collect(),
            reasons: view.reasons.items().map(str::to_string).collect(),
            versions: self.versions.clone(),
        }
    }

    fn view(&self, row: usize) -> AnswerView<'_> {
        let record = &self.records[row];
        let mut start = record.text_start;
        let [grade, scenario_limits, suggestions, reasons] = record.text_lengths.map(|length| {
            let part = &self.text[start..start + length as usize];
            start += length as usize;
            part
        });
        AnswerView {
            user_id: self.users[row],
            credit_limit: record.credit_limit,
            policy_limit: record.policy_limit,
            base_limit: record.base_limit,
            certificate_boost: record.certificate_boost,
            user_cap: record.user_cap,
            grade,
            apr: record.apr,
            pd: record.pd,
            scenario_limits: Listed(scenario_limits, parse_scenario),
            suggestions: Listed(suggestions, parse_suggestion),
            reasons: Listed(reasons, Some),
            versions: &self.versions,
        }
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
