//! Publishing: writes the nightly limit table so readers see a new version all at once or not
//! at all. Data goes to a fresh, never-reused prefix `published/limits/data/<run>/`; then the
//! manifest `published/limits/_manifests/<version>.json` is written with a create-only put.
//! That put is the commit: readers take the highest manifest, a second writer of the same
//! version fails cleanly, and a run that fails before it leaves the last table as it was.
//!
//! `publish` is the only writer under `published/`.

use std::sync::Arc;

use chrono::{NaiveDate, Utc};
use datafusion::arrow::array::{Float64Array, RecordBatch, StringArray, UInt64Array};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::info;

use crate::limits::Decision;
use crate::schema;
use crate::store::{Store, StoreError};

pub const MANIFESTS: &str = "published/limits/_manifests";

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "version {version} was published by another writer while this run was writing; nothing of this run is visible"
    )]
    Conflict { version: u64 },
    #[error("manifest {path}: {problem}")]
    Manifest { path: String, problem: String },
    #[error("{path}: checksum {found} does not match the manifest's {expected}")]
    Checksum {
        path: String,
        expected: String,
        found: String,
    },
    #[error("building the limit table: {0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataFile {
    /// relative to the store root
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub version: u64,
    #[serde(with = "crate::serde_date")]
    pub as_of: NaiveDate,
    /// RFC 3339, UTC
    pub published_at: String,
    pub row_count: u64,
    pub model_version: String,
    pub policy_version: String,
    pub mean_limit: f64,
    pub files: Vec<DataFile>,
}

/// One user's published row.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitRow {
    pub user_id: u64,
    pub pd: f64,
    pub decision: Decision,
}

pub fn manifest_path(version: u64) -> String {
    format!("{MANIFESTS}/{version:020}.json")
}

/// The newest committed manifest, if any.
pub async fn latest(store: &Store) -> Result<Option<Manifest>, PublishError> {
    let newest = store
        .list(MANIFESTS)
        .await?
        .into_iter()
        .map(|(path, _)| path)
        .filter(|p| p.ends_with(".json"))
        .max();
    let Some(path) = newest else {
        return Ok(None);
    };
    read_manifest(store, &path).await.map(Some)
}

async fn read_manifest(store: &Store, path: &str) -> Result<Manifest, PublishError> {
    let bytes = store
        .get(path)
        .await?
        .ok_or_else(|| PublishError::Manifest {
            path: path.to_string(),
            problem: "vanished while reading".into(),
        })?;
    serde_json::from_slice(&bytes).map_err(|e| PublishError::Manifest {
        path: path.to_string(),
        problem: e.to_string(),
    })
}

fn to_batch(rows: &[LimitRow]) -> Result<RecordBatch, PublishError> {
    let reasons: Vec<String> = rows.iter().map(|r| r.decision.reasons.join(";")).collect();
    Ok(RecordBatch::try_new(
        schema::LIMITS.arrow(),
        vec![
            Arc::new(UInt64Array::from_iter_values(
                rows.iter().map(|r| r.user_id),
            )),
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.pd))),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.decision.grade.as_str()),
            )),
            Arc::new(Float64Array::from_iter_values(
                rows.iter().map(|r| r.decision.base_limit),
            )),
            Arc::new(Float64Array::from_iter_values(
                rows.iter().map(|r| r.decision.certificate_boost),
            )),
            Arc::new(Float64Array::from_iter(
                rows.iter().map(|r| r.decision.user_cap),
            )),
            Arc::new(Float64Array::from_iter_values(
                rows.iter().map(|r| r.decision.credit_limit),
            )),
            Arc::new(StringArray::from_iter_values(reasons.iter())),
        ],
    )?)
}

/// Publishes `rows` (sorted by user) as the next version. Returns the committed manifest.
pub async fn publish(
    store: &Store,
    rows: &[LimitRow],
    as_of: NaiveDate,
    model_version: &str,
    policy_version: &str,
) -> Result<Manifest, PublishError> {
    let version = latest(store).await?.map_or(1, |m| m.version + 1);
    publish_version(store, version, rows, as_of, model_version, policy_version).await
}

/// Publishes `rows` as `version`; fails with `Conflict` if that version is already committed
/// (another writer that read the same latest version got there first).
pub async fn publish_version(
    store: &Store,
    version: u64,
    rows: &[LimitRow],
    as_of: NaiveDate,
    model_version: &str,
    policy_version: &str,
) -> Result<Manifest, PublishError> {
    let now = Utc::now();
    // unique even for two writers of one version: the loser's files are never visible
    let run = format!(
        "v{version:08}-{}-{}-{}",
        as_of,
        now.format("%Y%m%dT%H%M%S%.6f"),
        std::process::id()
    );
    let path = format!("published/limits/data/{run}/part-00000.parquet");
    let batch = to_batch(rows)?;
    let size = store.write_parquet(&path, batch.schema(), &[batch]).await?;
    // read back what the store holds: the manifest vouches only for durable bytes
    let written = store
        .get(&path)
        .await?
        .ok_or_else(|| PublishError::Manifest {
            path: path.clone(),
            problem: "data file missing right after writing".into(),
        })?;
    let manifest = Manifest {
        version,
        as_of,
        published_at: now.to_rfc3339(),
        row_count: rows.len() as u64,
        model_version: model_version.to_string(),
        policy_version: policy_version.to_string(),
        mean_limit: rows.iter().map(|r| r.decision.credit_limit).sum::<f64>()
            / rows.len().max(1) as f64,
        files: vec![DataFile {
            path,
            bytes: size,
            sha256: format!("{:x}", Sha256::digest(&written)),
        }],
    };
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| PublishError::Manifest {
        path: manifest_path(version),
        problem: e.to_string(),
    })?;
    match store
        .put_if_absent(&manifest_path(version), json.into())
        .await
    {
        Ok(()) => {}
        Err(StoreError::AlreadyExists { .. }) => return Err(PublishError::Conflict { version }),
        Err(e) => return Err(e.into()),
    }
    info!(version, rows = rows.len(), "limit table published");
    Ok(manifest)
}

/// Reads the table a manifest points at, checking every file's checksum.
pub async fn read_table(
    store: &Store,
    manifest: &Manifest,
) -> Result<Vec<RecordBatch>, PublishError> {
    let mut batches = Vec::new();
    for file in &manifest.files {
        let bytes = store
            .get(&file.path)
            .await?
            .ok_or_else(|| PublishError::Manifest {
                path: manifest_path(manifest.version),
                problem: format!("data file {} is missing", file.path),
            })?;
        let found = format!("{:x}", Sha256::digest(&bytes));
        if found != file.sha256 {
            return Err(PublishError::Checksum {
                path: file.path.clone(),
                expected: file.sha256.clone(),
                found,
            });
        }
        batches.extend(store.read_parquet(&file.path).await?);
    }
    Ok(batches)
}
