//! Erasure: users who withdrew consent. `erasures/user=<id>.json` records a request with a
//! create-only put, so a request is never lost or overwritten (a second one for the same user
//! is answered with the first). Once recorded, every stage that reads user rows leaves the
//! user out: validation (so features, labels, training sets, scores, decision records and
//! published tables of later runs never hold them) and every read of a published table
//! (`serve`, `show`, the Redis sink, `explain`, rollbacks). Data derived before the request
//! is rewritten without the user by `audit::erase::apply` (the next night, or `redflower erase
//! --apply`), which then records `erasures/applied/user=<id>.json`.
//!
//! Raw sources (`raw/`, `reference/`) and a synthetic world's `truth/` belong to the source
//! systems that wrote them: erasing there is theirs to do. Owns `erasures/`; reads nothing else.

use std::collections::BTreeSet;

use chrono::Utc;
use datafusion::arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use datafusion::arrow::compute::{cast, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, UInt64Type};
use datafusion::arrow::error::ArrowError;
use serde::{Deserialize, Serialize};

use crate::cause::{Cause, Classify};
use crate::store::{Store, StoreError, layout};

#[derive(Debug, thiserror::Error)]
pub enum ErasureError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{path}: {problem}")]
    Record { path: String, problem: String },
    #[error("an erasure needs a reason (what the user asked, the ticket): --reason TEXT")]
    NoReason,
}

impl Classify for ErasureError {
    fn cause(&self) -> Cause {
        match self {
            ErasureError::Store(e) => e.cause(),
            ErasureError::Record { .. } => Cause::Input,
            ErasureError::NoReason => Cause::Configuration,
        }
    }
}

/// One erasure request, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErasureRecord {
    pub user_id: u64,
    pub reason: String,
    /// RFC 3339, UTC
    pub requested_at: String,
}

/// Records that `user_id` is to be erased. Returns the record and whether it is new (false:
/// the user's earlier request stands, unchanged).
pub async fn request(
    store: &Store,
    user_id: u64,
    reason: &str,
) -> Result<(ErasureRecord, bool), ErasureError> {
    if reason.trim().is_empty() {
        return Err(ErasureError::NoReason);
    }
    let record = ErasureRecord {
        user_id,
        reason: reason.trim().to_string(),
        requested_at: Utc::now().to_rfc3339(),
    };
    let path = layout::erasure(user_id);
    let json = serde_json::to_vec_pretty(&record).expect("plain data always serializes");
    match store.put_if_absent(&path, json.into()).await {
        Ok(()) => Ok((record, true)),
        Err(StoreError::AlreadyExists { .. }) => Ok((read(store, &path).await?, false)),
        Err(e) => Err(e.into()),
    }
}

async fn read(store: &Store, path: &str) -> Result<ErasureRecord, ErasureError> {
    let problem = |problem: String| ErasureError::Record {
        path: path.to_string(),
        problem,
    };
    let bytes = store
        .get(path)
        .await?
        .ok_or_else(|| problem("vanished while reading".into()))?;
    serde_json::from_slice(&bytes).map_err(|e| problem(e.to_string()))
}

fn ids_under(listing: Vec<(String, u64)>) -> BTreeSet<u64> {
    listing
        .iter()
        .filter_map(|(path, _)| layout::erased_user_of(path))
        .collect()
}

/// Every user with an erasure request (from the record names: one listing, no reads).
pub async fn erased(store: &Store) -> Result<BTreeSet<u64>, ErasureError> {
    let requested = store.list(layout::ERASURES).await?;
    Ok(ids_under(
        requested
            .into_iter()
            .filter(|(path, _)| !path.starts_with(layout::ERASURES_APPLIED))
            .collect(),
    ))
}

/// Erased users whose already derived data is not yet rewritten without them.
pub async fn pending(store: &Store) -> Result<BTreeSet<u64>, ErasureError> {
    let applied = ids_under(store.list(layout::ERASURES_APPLIED).await?);
    Ok(erased(store)
        .await?
        .into_iter()
        .filter(|user| !applied.contains(user))
        .collect())
}

/// Records that every derived object now lacks `users`.
pub async fn mark_applied(store: &Store, users: &BTreeSet<u64>) -> Result<(), ErasureError> {
    let at = Utc::now().to_rfc3339();
    for &user in users {
        let note = format!("{{\"user_id\": {user}, \"applied_at\": \"{at}\"}}\n");
        store
            .put(&layout::erasure_applied(user), note.into())
            .await?;
    }
    Ok(())
}

/// `batches` without the rows of erased users (by their `user_id` column, numbers or text),
/// and how many rows that removed. Batches without a `user_id` column are kept whole.
pub fn without(
    batches: Vec<RecordBatch>,
    erased: &BTreeSet<u64>,
) -> Result<(Vec<RecordBatch>, usize), ArrowError> {
    if erased.is_empty() {
        return Ok((batches, 0));
    }
    let mut removed = 0;
    let mut kept = Vec::with_capacity(batches.len());
    for batch in batches {
        let Some(column) = batch.column_by_name("user_id") else {
            kept.push(batch);
            continue;
        };
        let keep: BooleanArray = match column.data_type() {
            DataType::UInt64 => column
                .as_primitive::<UInt64Type>()
                .iter()
                .map(|id| Some(!id.is_some_and(|id| erased.contains(&id))))
                .collect(),
            _ => {
                let text = cast(column, &DataType::Utf8)?;
                text.as_string::<i32>()
                    .iter()
                    .map(|id| {
                        let id = id.and_then(|id| id.trim().parse::<u64>().ok());
                        Some(!id.is_some_and(|id| erased.contains(&id)))
                    })
                    .collect()
            }
        };
        removed += keep.iter().filter(|k| *k == Some(false)).count();
        kept.push(filter_record_batch(&batch, &keep)?);
    }
    Ok((kept, removed))
}

/// Rewrites the Parquet file `from` into `to` (the same path to replace it) without erased
/// users' rows; writes nothing and returns 0 when it holds none of them.
pub async fn rewrite_file(
    store: &Store,
    from: &str,
    to: &str,
    erased: &BTreeSet<u64>,
) -> Result<usize, ErasureError> {
    let batches = store.read_parquet(from).await?;
    let Some(schema) = batches.first().map(|b| b.schema()) else {
        return Ok(0);
    };
    let (kept, removed) = without(batches, erased).map_err(|e| ErasureError::Record {
        path: from.to_string(),
        problem: e.to_string(),
    })?;
    if removed > 0 {
        store.write_parquet(to, schema, &kept).await?;
    }
    Ok(removed)
}

/// `user_id NOT IN (...)` for a table with a `user_id` column; None when nobody is erased.
pub fn sql_exclusion(erased: &BTreeSet<u64>) -> Option<String> {
    (!erased.is_empty()).then(|| {
        let ids: Vec<String> = erased.iter().map(u64::to_string).collect();
        format!("user_id NOT IN ({})", ids.join(", "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_is_recorded_once_and_pending_until_applied() {
        let store = Store::open("memory://erasure").unwrap();
        assert!(erased(&store).await.unwrap().is_empty());
        let (first, new) = request(&store, 42, "withdrew consent, ticket 7")
            .await
            .unwrap();
        assert!(new);
        let (again, new) = request(&store, 42, "a second ticket").await.unwrap();
        assert!(!new);
        assert_eq!(again, first, "the first request stands");
        request(&store, 7, "x").await.unwrap();
        assert!(matches!(
            request(&store, 8, " ").await,
            Err(ErasureError::NoReason)
        ));
        assert_eq!(erased(&store).await.unwrap(), BTreeSet::from([7, 42]));
        mark_applied(&store, &BTreeSet::from([42])).await.unwrap();
        assert_eq!(pending(&store).await.unwrap(), BTreeSet::from([7]));
        assert_eq!(erased(&store).await.unwrap(), BTreeSet::from([7, 42]));
        assert_eq!(
            sql_exclusion(&BTreeSet::from([7, 42])).as_deref(),
            Some("user_id NOT IN (7, 42)")
        );
    }
}
