//! One published limit table held in memory for lookups by user id, and the JSON answer a
//! reader gets for a user (the same document the HTTP server returns and the Redis sink
//! stores, so both read paths agree).

use bytes::Bytes;
use chrono::NaiveDate;
use datafusion::arrow::array::{Array, Float64Array, RecordBatch};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::table::{self, LimitColumns, ScenarioItem, SuggestionItem};
use super::{Manifest, PublishError};
use crate::cause::{Cause, Classify};
use crate::store::Store;
use crate::user_index::{UserIndex, UserShard};

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
    #[error(transparent)]
    Erasure(#[from] crate::erasure::ErasureError),
    #[error("published table version {version}: {problem}")]
    Table { version: u64, problem: String },
}

impl Classify for SnapshotError {
    fn cause(&self) -> Cause {
        match self {
            SnapshotError::Publish(e) => e.cause(),
            SnapshotError::Erasure(e) => e.cause(),
            SnapshotError::Table { .. } => Cause::Input,
        }
    }
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
    index: UserIndex,
    /// every row's answer, in table order
    answers: Bytes,
    /// where row `r`'s answer ends in `answers`; it starts where row `r - 1`'s ends
    answer_ends: Vec<usize>,
    /// the day the answers were rendered for: scenario limits that end on or before it
    /// are left out
    rendered_for: NaiveDate,
    /// the first day after `rendered_for` on which some user's scenario limit ends, when the
    /// answers must be rendered again (see [`Snapshot::stale_on`])
    next_expiry: Option<NaiveDate>,
    /// the erased users left out at load; a reader loads again when more are erased
    pub erased: usize,
}

/// Rows rendered per parallel task at load.
const RENDER_CHUNK: usize = 16 * 1024;

/// `LimitAnswer` of the table's `row`-th row on `day` (`YYYY-MM-DD`), borrowing from its
/// columns.
fn view<'a>(
    columns: &'a LimitColumns,
    row: usize,
    versions: &'a Versions,
    day: &'a str,
) -> AnswerView<'a> {
    let optional = |a: &Float64Array| (!a.is_null(row)).then(|| a.value(row));
    AnswerView {
        user_id: columns.users[row],
        credit_limit: columns.credit_limit.value(row),
        policy_limit: columns.policy_limit.value(row),
        base_limit: columns.base_limit.value(row),
        certificate_boost: columns.certificate_boost.value(row),
        user_cap: optional(&columns.user_cap),
        grade: columns.grade.value(row),
        apr: optional(&columns.apr),
        pd: columns.pd.value(row),
        scenario_limits: Scenarios {
            text: columns.scenario_limits.value(row),
            day,
        },
        suggestions: Listed(columns.suggestions.value(row), table::parse_suggestion),
        reasons: Listed(columns.reasons.value(row), Some),
        versions,
    }
}

/// Every row's answer on `day` as JSON, one after another, and where each ends. Rendered in
/// parallel chunks, then laid end to end.
fn render(columns: &LimitColumns, versions: &Versions, day: &str) -> (Vec<u8>, Vec<usize>) {
    let rows = columns.users.len();
    let chunks: Vec<(Vec<u8>, Vec<usize>)> = (0..rows.div_ceil(RENDER_CHUNK))
        .into_par_iter()
        .map(|chunk| {
            let rows = chunk * RENDER_CHUNK..rows.min((chunk + 1) * RENDER_CHUNK);
            let mut json = Vec::with_capacity(rows.len() * 640);
            let mut ends = Vec::with_capacity(rows.len());
            for row in rows {
                // a struct of numbers and strings always serializes into a Vec
                let _ = serde_json::to_writer(&mut json, &view(columns, row, versions, day));
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
    (answers, answer_ends)
}

/// The first end of a scenario limit after `day` (`YYYY-MM-DD`), over every row.
fn next_expiry(columns: &LimitColumns, day: &str) -> Option<NaiveDate> {
    (0..columns.users.len())
        .into_par_iter()
        .filter_map(|row| {
            table::items(columns.scenario_limits.value(row))
                .filter_map(table::parse_scenario)
                .map(|item| item.valid_until)
                .filter(|until| *until > day)
                .min()
        })
        .min()
        .and_then(|until| until.parse().ok())
}

impl Snapshot {
    /// The newest committed table, loaded; None when nothing is published yet.
    pub async fn latest(store: &Store) -> Result<Option<Snapshot>, SnapshotError> {
        match super::latest(store).await? {
            Some(manifest) => Ok(Some(Snapshot::load(store, manifest).await?)),
            None => Ok(None),
        }
    }

    /// Reads the table `manifest` commits (checksums verified) and indexes it, rendered for
    /// today (UTC). Indexing and rendering run on a blocking thread, off the async workers
    /// that answer requests.
    pub async fn load(store: &Store, manifest: Manifest) -> Result<Snapshot, SnapshotError> {
        Snapshot::load_for(store, manifest, chrono::Utc::now().date_naive()).await
    }

    /// [`Snapshot::load`] rendered for `day`: scenario limits that end on or before it are
    /// not in the answers.
    pub async fn load_for(
        store: &Store,
        manifest: Manifest,
        day: NaiveDate,
    ) -> Result<Snapshot, SnapshotError> {
        Snapshot::load_part(store, manifest, day, None).await
    }

    /// [`Snapshot::load_for`] holding only the users of `shard` (all when None): what one
    /// server of a sharded read path keeps.
    pub async fn load_part(
        store: &Store,
        manifest: Manifest,
        day: NaiveDate,
        shard: Option<UserShard>,
    ) -> Result<Snapshot, SnapshotError> {
        let version = manifest.version;
        let problem = |problem: String| SnapshotError::Table { version, problem };
        let batches = match shard {
            Some(shard) => super::read_shard(store, &manifest, shard).await?,
            None => super::read_table(store, &manifest).await?,
        };
        // an erased user is never answered, whatever version (or rollback) is read
        let erased = crate::erasure::erased(store).await?;
        let (batches, _) =
            crate::erasure::without(batches, &erased).map_err(|e| problem(e.to_string()))?;
        let indexed = tokio::task::spawn_blocking(move || {
            Snapshot::from_batches_for(manifest, &batches, day)
        })
        .await
        .map_err(|error| SnapshotError::Table {
            version,
            problem: format!("indexing stopped: {error}"),
        })?;
        indexed.map(|snapshot| Snapshot {
            erased: erased.len(),
            ..snapshot
        })
    }

    /// The table in `batches`, rendered for today (UTC).
    pub fn from_batches(
        manifest: Manifest,
        batches: &[RecordBatch],
    ) -> Result<Snapshot, SnapshotError> {
        Snapshot::from_batches_for(manifest, batches, chrono::Utc::now().date_naive())
    }

    pub fn from_batches_for(
        manifest: Manifest,
        batches: &[RecordBatch],
        day: NaiveDate,
    ) -> Result<Snapshot, SnapshotError> {
        let version = manifest.version;
        let problem = |problem: String| SnapshotError::Table { version, problem };
        let columns = LimitColumns::decode(batches).map_err(problem)?;
        if columns.users.len() >= UserIndex::MAX_USERS {
            return Err(problem(format!(
                "{} rows is more than one table holds",
                columns.users.len()
            )));
        }
        let index = UserIndex::build(&columns.users)
            .map_err(|user| problem(format!("user id {user} appears twice")))?;
        let versions = Versions {
            table: manifest.version,
            as_of: manifest.as_of.to_string(),
            model: manifest.model_version.clone(),
            policy: manifest.policy_version.clone(),
        };
        let day_text = day.to_string();
        let (answers, answer_ends) = render(&columns, &versions, &day_text);
        let next_expiry = next_expiry(&columns, &day_text);
        Ok(Snapshot {
            users: columns.users,
            index,
            answers: Bytes::from(answers),
            answer_ends,
            manifest,
            rendered_for: day,
            next_expiry,
            erased: 0,
        })
    }

    /// Whether some answer shows a scenario limit that has ended by `day`, so the table must
    /// be rendered again for it (the server does, with [`Snapshot::load_for`]).
    pub fn stale_on(&self, day: NaiveDate) -> bool {
        day > self.rendered_for && self.next_expiry.is_some_and(|expiry| expiry <= day)
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
        self.index.position(user_id).map(|row| self.answer_at(row))
    }

    /// The JSON of `answer(user_id)`: what the server sends, sharing the snapshot's buffer.
    pub fn answer_json(&self, user_id: u64) -> Option<Bytes> {
        self.index
            .position(user_id)
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
    scenario_limits: Scenarios<'a>,
    suggestions: Listed<'a, SuggestionItem<'a>>,
    reasons: Listed<'a, &'a str>,
    versions: &'a Versions,
}

/// A row's scenario limits that still apply on `day`, serialized as a JSON array.
struct Scenarios<'a> {
    text: &'a str,
    day: &'a str,
}

impl Serialize for Scenarios<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // ISO dates order as text; `valid_until` is the first day a limit no longer applies
        serializer.collect_seq(
            table::items(self.text)
                .filter_map(table::parse_scenario)
                .filter(|item: &ScenarioItem| item.valid_until > self.day),
        )
    }
}

/// A `;`-separated published list, serialized as a JSON array of its parsed items.
struct Listed<'a, T>(&'a str, fn(&'a str) -> Option<T>);

impl<'a, T: 'a> Listed<'a, T> {
    fn items(&self) -> impl Iterator<Item = T> + 'a {
        table::items(self.0).filter_map(self.1)
    }
}

impl<'a, T: Serialize + 'a> Serialize for Listed<'a, T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.items())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_items_skip_empty_parts() {
        assert_eq!(table::items(";a;;b;").collect::<Vec<_>>(), vec!["a", "b"]);
    }
}
