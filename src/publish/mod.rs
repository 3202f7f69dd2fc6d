//! Publishing: writes the nightly limit table so readers see a new version all at once or not
//! at all. Data goes to a fresh, never-reused prefix `published/limits/data/<run>/`; then the
//! manifest `published/limits/_manifests/<version>.json` is written with a create-only put.
//! That put is the commit: readers take the highest manifest, a second writer of the same
//! version fails cleanly, and a run that fails before it leaves the last table as it was.
//!
//! Before the commit, gates compare the new table with the last published one and refuse a
//! row count that drops or a mean limit that moves more than `[publish]` allows (`force`
//! overrides and is recorded in the manifest). A rollback commits a new version that points
//! at an older version's files; retention deletes manifests past the newest N and the data no
//! kept manifest needs.
//!
//! `publish` is the only writer under `published/`. `table` is the only encoder and decoder
//! of a limit row; `snapshot` holds a committed table for lookups and renders the answer
//! document both read paths (the HTTP server and the Redis sink) return.

pub mod snapshot;
pub mod table;

pub use snapshot::{LimitAnswer, Snapshot};
pub use table::LimitRow;

use bytes::Bytes;
use chrono::{NaiveDate, Utc};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::error::ArrowError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::info;

use crate::cause::{Cause, Classify};
use crate::store::{Store, StoreError, layout};
use crate::user_index::UserShard;

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
    #[error(
        "refusing to publish over version {previous}: {}; the published table is unchanged (rerun with --force to publish anyway)",
        violations.join("; ")
    )]
    GateRefused {
        previous: u64,
        violations: Vec<String>,
    },
    #[error(
        "refusing to publish: {field} of user {user_id} is {value}, not a finite number; the published table is unchanged"
    )]
    NotFinite {
        user_id: u64,
        field: &'static str,
        value: f64,
    },
    #[error("not publishing: {0}; the published table is unchanged")]
    Fenced(String),
    #[error("no published version {version} under {root} (latest is {latest})")]
    UnknownVersion {
        version: u64,
        root: String,
        latest: String,
    },
}

impl PublishConfig {
    /// Gate shares that compare, and at least one kept version; the error names the key.
    pub fn check(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.max_row_drop_share) {
            return Err("max_row_drop_share must be between 0 and 1".into());
        }
        if !(self.max_mean_limit_change.is_finite() && self.max_mean_limit_change >= 0.0) {
            return Err("max_mean_limit_change must be a number >= 0".into());
        }
        if self.retain_versions == 0 {
            return Err("retain_versions must be at least 1: the newest version is served".into());
        }
        if !(1..=MAX_PARTS).contains(&self.parts) {
            return Err(format!("parts must be between 1 and {MAX_PARTS}"));
        }
        Ok(())
    }
}

impl Classify for PublishError {
    fn cause(&self) -> Cause {
        match self {
            PublishError::Store(e) => e.cause(),
            PublishError::Conflict { .. } => Cause::Conflict,
            // the writer's lease is gone: another run of the date took over
            PublishError::Fenced(_) => Cause::Busy,
            PublishError::GateRefused { .. } => Cause::GateRefused,
            // a damaged manifest or data file, or numbers no limit can be: the data is bad
            PublishError::Manifest { .. }
            | PublishError::Checksum { .. }
            | PublishError::NotFinite { .. } => Cause::Input,
            PublishError::UnknownVersion { .. } => Cause::Configuration,
            PublishError::Arrow(_) => Cause::Transient,
        }
    }
}

/// The most part files one table is written as.
pub const MAX_PARTS: u32 = 4096;

/// `[publish]` in `pipelines/nightly.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishConfig {
    /// refuse when the row count falls by more than this share of the last published table's
    pub max_row_drop_share: f64,
    /// refuse when the mean limit moves (either way) by more than this share
    pub max_mean_limit_change: f64,
    /// committed versions kept at least; older manifests, and data no kept manifest needs,
    /// are deleted unless `keep_days` keeps them
    pub retain_versions: usize,
    /// versions (with their data and decision records) younger than this many days are kept
    /// whatever their number
    pub keep_days: u32,
    /// the table is written as this many part files, part i holding the users of shard i
    /// (`UserShard`): a server of shard i/N with N dividing `parts` reads only its parts
    pub parts: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataFile {
    /// relative to the store root
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
    /// a limit table's part file: the `INDEX/COUNT` shard of the users it holds
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
    /// a limit table's part file: its rows, checked when it is read
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
}

impl DataFile {
    /// The shard of the users this part file holds, when it is one.
    pub fn user_shard(&self) -> Option<UserShard> {
        self.shard.as_deref()?.parse().ok()
    }
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
    /// mean PD and users per limit band, for gates and dashboards
    #[serde(default)]
    pub mean_pd: f64,
    #[serde(default)]
    pub limit_distribution: Vec<(String, usize)>,
    /// gate violations a `--force` publish went past
    #[serde(default)]
    pub forced_past: Vec<String>,
    /// set on a rollback: the version whose files this one points at again
    #[serde(default)]
    pub rollback_of: Option<u64>,
    /// the nightly run that committed this version (lets a resumed run see that its
    /// publish already happened)
    #[serde(default)]
    pub run_id: Option<String>,
    /// what the version rests on (absent from versions published before it was recorded, and
    /// from tables published outside a nightly run)
    #[serde(default)]
    pub lineage: Option<Lineage>,
    /// when the version's files were rewritten without erased users, and how many rows that
    /// removed: the one change a committed version ever sees
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub erasures: Vec<String>,
    /// the id of the data key the version's files are encrypted with (None: plaintext)
    #[serde(default)]
    pub encryption_key: Option<String>,
}

impl Manifest {
    /// Every file the version names: its table, and its run's decision records and copies.
    pub fn data_files(&self) -> impl Iterator<Item = &DataFile> {
        let lineage = self.lineage.iter();
        self.files
            .iter()
            .chain(lineage.flat_map(|l| l.decisions.iter().chain(&l.outputs)))
    }

    /// [`Manifest::data_files`], to rewrite in place (erasure), in the same order.
    fn data_files_mut(&mut self) -> impl Iterator<Item = &mut DataFile> {
        let lineage = self.lineage.iter_mut();
        self.files
            .iter_mut()
            .chain(lineage.flat_map(|l| l.decisions.iter_mut().chain(l.outputs.iter_mut())))
    }
}

/// What a published version rests on, so a limit can be explained and its inputs traced years
/// later. Everything here is a fingerprint or a path to an object the run never rewrites.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lineage {
    /// the crate version the run was built as
    pub code_version: String,
    /// the git commit it was built from (`+dirty` when built with uncommitted changes)
    pub git_commit: String,
    pub run_id: String,
    /// who held the date's lease (host, pid and the holder's random id)
    pub lease_holder: String,
    /// every file of the `pipelines/` folder the run was configured from
    pub pipelines: Vec<FileDigest>,
    pub dictionary_version: u64,
    /// sha256 of the dictionary's names in id order
    pub dictionary_hash: String,
    pub model_version: String,
    pub model_weights_sha256: String,
    /// the raw and reference objects the run could read when it started
    pub inputs: InputsDigest,
    /// the run's own folder: its input listing, effective policy and decision records
    pub run_folder: String,
    /// every user's decision record (the facts the policy weighed, the model's reasons with
    /// the feature values behind them): one file, or one per user part (each with its shard
    /// and rows); written as one object when there is one, as versions before parts did
    #[serde(with = "one_or_many")]
    pub decisions: Vec<DataFile>,
    /// the run's own copies of the features (as of the training date and the run date) and
    /// scores the version was decided from: a rerun of the date replaces `features/` and
    /// `scores/`, never these
    #[serde(default)]
    pub outputs: Vec<DataFile>,
}

/// A list of files kept as one object when it holds one (what readers older than the list
/// expect), as an array otherwise.
mod one_or_many {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::DataFile;

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(DataFile),
        Many(Vec<DataFile>),
    }

    pub fn serialize<S: Serializer>(files: &[DataFile], to: S) -> Result<S::Ok, S::Error> {
        match files {
            [one] => one.serialize(to),
            many => many.serialize(to),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(from: D) -> Result<Vec<DataFile>, D::Error> {
        Ok(match OneOrMany::deserialize(from)? {
            OneOrMany::One(file) => vec![file],
            OneOrMany::Many(files) => files,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDigest {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputsDigest {
    pub objects: usize,
    pub bytes: u64,
    /// sha256 of the listing (one `path bytes modified etag` line per object, sorted)
    pub sha256: String,
    /// where the listing itself is kept
    pub listing: String,
}

/// What a published table is, besides its rows.
#[derive(Clone, Copy)]
pub struct Publication<'a> {
    pub as_of: NaiveDate,
    pub model_version: &'a str,
    pub policy_version: &'a str,
    pub run_id: Option<&'a str>,
    pub lineage: Option<&'a Lineage>,
    /// asked right before the manifest is committed: an error (why this writer may no longer
    /// publish, e.g. its lease was lost) stops the commit, so nothing becomes visible
    pub fence: Option<Fence<'a>>,
}

/// A writer's last check before its commit; see [`Publication::fence`].
pub type Fence<'a> = &'a (dyn Fn() -> Result<(), String> + Send + Sync);

/// The newest committed manifest, if any.
pub async fn latest(store: &Store) -> Result<Option<Manifest>, PublishError> {
    let newest = store
        .list(layout::MANIFESTS)
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

/// Version `version`'s manifest as committed now (erasure may have rewritten it since a
/// reader loaded it).
pub async fn manifest_of(store: &Store, version: u64) -> Result<Manifest, PublishError> {
    read_manifest(store, &layout::manifest(version)).await
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
    let publication = Publication {
        as_of,
        model_version,
        policy_version,
        run_id: None,
        lineage: None,
        fence: None,
    };
    write_and_commit(store, version, rows, &publication, Vec::new(), 1).await
}

async fn write_and_commit(
    store: &Store,
    version: u64,
    rows: &[LimitRow],
    publication: &Publication<'_>,
    forced_past: Vec<String>,
    parts: u32,
) -> Result<Manifest, PublishError> {
    table::refuse_non_finite(rows)?;
    let run = table_run(version, publication.as_of);
    let files = write_parts(store, &run, rows, publication.as_of, parts).await?;
    let totals = TableTotals::of(rows);
    let written = Written::ForThisCommit;
    commit_files(
        store,
        version,
        files,
        &totals,
        publication,
        forced_past,
        written,
    )
    .await
}

/// Whose the files of a commit are: a fenced-off writer removes files it wrote for the commit,
/// never parts a run checkpointed (the run's next holder commits those).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Written {
    ForThisCommit,
    Checkpointed,
}

/// A folder name for the data of `version` unique even for two writers of one version: the
/// loser's files are never visible.
fn table_run(version: u64, as_of: NaiveDate) -> String {
    format!(
        "v{version:08}-{as_of}-{}-{}",
        Utc::now().format("%Y%m%dT%H%M%S%.6f"),
        std::process::id()
    )
}

/// Commits `files` (written, checked by their writers) as `version`, with `totals` for the
/// manifest's figures; a fenced-off writer's files are removed instead when they were
/// `written` for this commit.
async fn commit_files(
    store: &Store,
    version: u64,
    files: Vec<DataFile>,
    totals: &TableTotals,
    publication: &Publication<'_>,
    forced_past: Vec<String>,
    written: Written,
) -> Result<Manifest, PublishError> {
    let manifest = Manifest {
        version,
        as_of: publication.as_of,
        published_at: Utc::now().to_rfc3339(),
        row_count: totals.rows,
        model_version: publication.model_version.to_string(),
        policy_version: publication.policy_version.to_string(),
        mean_limit: totals.mean_limit(),
        files,
        mean_pd: totals.pd_sum / totals.rows.max(1) as f64,
        limit_distribution: totals.bands.clone(),
        forced_past,
        rollback_of: None,
        run_id: publication.run_id.map(str::to_string),
        lineage: publication.lineage.cloned(),
        erasures: Vec::new(),
        encryption_key: store.write_key_id().map(str::to_string),
    };
    if let Some(fence) = publication.fence
        && let Err(why) = fence()
    {
        // unreferenced, so never visible; retention would remove them later if this fails
        let removable = manifest
            .files
            .iter()
            .filter(|_| written == Written::ForThisCommit);
        for file in removable {
            if let Err(error) = store.delete(&file.path).await {
                tracing::warn!(%error, "could not remove a fenced writer's data file");
            }
        }
        return Err(PublishError::Fenced(why));
    }
    commit(store, &manifest).await?;
    info!(version, rows = totals.rows, "limit table published");
    Ok(manifest)
}

/// `rows` as `parts` files, part i holding the users of shard i/parts (one file, the table
/// as it always was, when `parts` is 1), each with its checksum and row count.
async fn write_parts(
    store: &Store,
    run: &str,
    rows: &[LimitRow],
    as_of: NaiveDate,
    parts: u32,
) -> Result<Vec<DataFile>, PublishError> {
    let parts = parts.clamp(1, MAX_PARTS);
    let mut split: Vec<Vec<&LimitRow>> = vec![Vec::new(); parts as usize];
    for row in rows {
        split[UserShard::of(row.user_id, parts) as usize].push(row);
    }
    let mut written = Vec::with_capacity(split.len());
    for (index, part) in split.into_iter().enumerate() {
        let shard = UserShard {
            index: index as u32,
            count: parts,
        };
        written.push(write_part(store, run, shard, &part, as_of).await?);
    }
    Ok(written)
}

/// Writes the rows of the users of `shard` as that part of the table in the folder `run`
/// (`layout::published_part`); returns the file with its checksum, shard and row count.
pub async fn write_part<R: std::borrow::Borrow<LimitRow>>(
    store: &Store,
    run: &str,
    shard: UserShard,
    rows: &[R],
    as_of: NaiveDate,
) -> Result<DataFile, PublishError> {
    table::refuse_non_finite(rows)?;
    let path = layout::published_part(run, shard.index, shard.count);
    let batch = table::to_batch(rows, as_of)?;
    store.write_parquet(&path, batch.schema(), &[batch]).await?;
    Ok(DataFile {
        shard: (shard.count > 1).then(|| shard.to_string()),
        rows: Some(rows.len() as u64),
        ..data_file(store, &path).await?
    })
}

/// What a manifest and the gates need of a table: sums a writer of parts adds up part by part.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TableTotals {
    pub rows: u64,
    pub limit_sum: f64,
    pub pd_sum: f64,
    /// users per limit band (`policy::distribution`)
    pub bands: Vec<(String, usize)>,
}

impl TableTotals {
    pub fn of<'a>(rows: impl IntoIterator<Item = &'a LimitRow>) -> TableTotals {
        let rows: Vec<&LimitRow> = rows.into_iter().collect();
        let limits: Vec<f64> = rows.iter().map(|r| r.decision.credit_limit).collect();
        TableTotals {
            rows: rows.len() as u64,
            limit_sum: limits.iter().sum(),
            pd_sum: rows.iter().map(|r| r.pd).sum(),
            bands: crate::policy::distribution(&limits),
        }
    }

    /// These totals and `other`'s, as of one table holding both parts' rows.
    pub fn add(&mut self, other: &TableTotals) {
        self.rows += other.rows;
        self.limit_sum += other.limit_sum;
        self.pd_sum += other.pd_sum;
        if self.bands.is_empty() {
            self.bands = other.bands.clone();
        } else {
            for ((_, count), (_, more)) in self.bands.iter_mut().zip(&other.bands) {
                *count += more;
            }
        }
    }

    pub fn mean_limit(&self) -> f64 {
        self.limit_sum / self.rows.max(1) as f64
    }
}

/// The create-only put of a manifest: the moment a version becomes visible.
async fn commit(store: &Store, manifest: &Manifest) -> Result<(), PublishError> {
    let version = manifest.version;
    let json = serde_json::to_vec_pretty(manifest).map_err(|e| PublishError::Manifest {
        path: layout::manifest(version),
        problem: e.to_string(),
    })?;
    let path = layout::manifest(version);
    match store.put_if_absent(&path, json.clone().into()).await {
        Ok(()) => Ok(()),
        // a retried put whose first response was lost finds the manifest it wrote itself:
        // that is this commit, not another writer's (the commit time makes two writers'
        // manifests differ)
        Err(StoreError::AlreadyExists { .. }) => match store.get(&path).await? {
            Some(found) if found[..] == json[..] => Ok(()),
            _ => Err(PublishError::Conflict { version }),
        },
        Err(e) => Err(e.into()),
    }
}

/// What the gates find wrong with publishing a table of `totals` over `previous`; empty
/// when it may go.
pub fn gate_violations(
    previous: &Manifest,
    totals: &TableTotals,
    config: &PublishConfig,
) -> Vec<String> {
    let mut violations = Vec::new();
    let (before, now) = (previous.row_count as f64, totals.rows as f64);
    if before > 0.0 && (before - now) / before > config.max_row_drop_share {
        violations.push(format!(
            "row count {} is {:.1}% below version {}'s {} (max_row_drop_share {:.1}%)",
            totals.rows,
            100.0 * (before - now) / before,
            previous.version,
            previous.row_count,
            100.0 * config.max_row_drop_share
        ));
    }
    let (before, now) = (previous.mean_limit, totals.mean_limit());
    if before > 0.0 && ((now - before) / before).abs() > config.max_mean_limit_change {
        violations.push(format!(
            "mean limit {now:.0} moved {:+.1}% from version {}'s {before:.0} (max_mean_limit_change {:.1}%)",
            100.0 * (now - before) / before,
            previous.version,
            100.0 * config.max_mean_limit_change
        ));
    }
    violations
}

/// The next version's number if the gates pass a table of `totals` against the last published
/// table, with what it went past when `force` publishes anyway.
async fn gated_version(
    store: &Store,
    totals: &TableTotals,
    config: &PublishConfig,
    force: bool,
) -> Result<(u64, Vec<String>), PublishError> {
    let previous = latest(store).await?;
    let violations = previous
        .as_ref()
        .map(|p| gate_violations(p, totals, config))
        .unwrap_or_default();
    if let Some(previous) = &previous
        && !violations.is_empty()
        && !force
    {
        return Err(PublishError::GateRefused {
            previous: previous.version,
            violations,
        });
    }
    let version = previous.as_ref().map_or(1, |m| m.version + 1);
    if !violations.is_empty() {
        tracing::warn!(version, ?violations, "publishing past the gates (--force)");
    }
    Ok((version, violations))
}

/// Publishes `rows` as the next version if the gates pass against the last published table;
/// with `force`, publishes anyway and records what it went past. Then applies retention.
pub async fn publish_gated(
    store: &Store,
    rows: &[LimitRow],
    publication: &Publication<'_>,
    config: &PublishConfig,
    force: bool,
) -> Result<Manifest, PublishError> {
    let (version, forced_past) =
        gated_version(store, &TableTotals::of(rows), config, force).await?;
    let manifest =
        write_and_commit(store, version, rows, publication, forced_past, config.parts).await?;
    retain(store, config.keep()).await?;
    Ok(manifest)
}

/// Commits a table its writer already wrote part by part (`files`, each with its shard and
/// row count, adding up to `totals`) as the next version, gated as [`publish_gated`] is.
pub async fn commit_parts_gated(
    store: &Store,
    files: Vec<DataFile>,
    totals: &TableTotals,
    publication: &Publication<'_>,
    config: &PublishConfig,
    force: bool,
) -> Result<Manifest, PublishError> {
    let counted: u64 = files.iter().filter_map(|f| f.rows).sum();
    if counted != totals.rows {
        return Err(PublishError::Manifest {
            path: "the parts of the table to commit".to_string(),
            problem: format!(
                "the parts hold {counted} rows, their totals say {}",
                totals.rows
            ),
        });
    }
    let (version, forced_past) = gated_version(store, totals, config, force).await?;
    let written = Written::Checkpointed;
    let manifest = commit_files(
        store,
        version,
        files,
        totals,
        publication,
        forced_past,
        written,
    )
    .await?;
    retain(store, config.keep()).await?;
    Ok(manifest)
}

/// The version committed by the nightly run `run_id`, if it got that far.
pub async fn published_by_run(
    store: &Store,
    run_id: &str,
) -> Result<Option<Manifest>, PublishError> {
    Ok(versions(store)
        .await?
        .into_iter()
        .rev()
        .find(|m| m.run_id.as_deref() == Some(run_id)))
}

/// Every committed manifest, oldest first.
pub async fn versions(store: &Store) -> Result<Vec<Manifest>, PublishError> {
    let mut paths: Vec<String> = store
        .list(layout::MANIFESTS)
        .await?
        .into_iter()
        .map(|(path, _)| path)
        .filter(|p| p.ends_with(".json"))
        .collect();
    paths.sort();
    let mut out = Vec::new();
    for path in paths {
        out.push(read_manifest(store, &path).await?);
    }
    Ok(out)
}

/// Makes version `to`'s table the visible one again, by committing a new version that points
/// at its files (history stays: nothing is rewritten). Its files must still be there.
pub async fn rollback(store: &Store, to: u64) -> Result<Manifest, PublishError> {
    let all = versions(store).await?;
    let latest = all.last().map(|m| m.version);
    let Some(target) = all.iter().find(|m| m.version == to) else {
        return Err(PublishError::UnknownVersion {
            version: to,
            root: store.url().to_string(),
            latest: latest.map_or("none".into(), |v| v.to_string()),
        });
    };
    // the checksums are verified before the commit, not after
    read_table(store, target).await?;
    let manifest = Manifest {
        version: latest.unwrap_or(0) + 1,
        published_at: Utc::now().to_rfc3339(),
        forced_past: Vec::new(),
        rollback_of: Some(to),
        run_id: None,
        ..target.clone()
    };
    commit(store, &manifest).await?;
    info!(version = manifest.version, rollback_of = to, "rolled back");
    Ok(manifest)
}

/// What rewriting the published versions without erased users did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PublishedErasure {
    pub manifests_rewritten: usize,
    pub files_rewritten: usize,
    pub rows_removed: usize,
}

/// Rewrites every file a retained version names (its table, its run's decision records and
/// its copies of features and scores)
/// without the `erased` users, into new files, then the manifests that name them, then deletes
/// the old files: a rollback to any version can no longer bring the users back. A manifest
/// is otherwise never rewritten; this one change is recorded in its `erasures`.
pub async fn erase(
    store: &Store,
    erased: &std::collections::BTreeSet<u64>,
) -> Result<PublishedErasure, PublishError> {
    let mut report = PublishedErasure::default();
    let stamp = Utc::now();
    let suffix = stamp.format("%Y%m%dT%H%M%S%.6f").to_string();
    // old path -> (the new file, rows removed), shared by manifests naming the same file
    let mut moved: std::collections::HashMap<String, (DataFile, usize)> = Default::default();
    for mut manifest in versions(store).await? {
        let (mut removed_rows, mut changed) = (0, false);
        let tables = manifest.files.len();
        for (i, file) in manifest.data_files_mut().enumerate() {
            if !moved.contains_key(&file.path) {
                let renamed = erased_path(&file.path, &suffix);
                let rewrite = crate::erasure::rewrite_file(store, &file.path, &renamed, erased);
                let removed = rewrite.await.map_err(|e| PublishError::Manifest {
                    path: file.path.clone(),
                    problem: e.to_string(),
                })?;
                let new = match removed {
                    0 => file.clone(),
                    _ => DataFile {
                        shard: file.shard.clone(),
                        rows: file.rows.map(|rows| rows.saturating_sub(removed as u64)),
                        ..data_file(store, &renamed).await?
                    },
                };
                moved.insert(file.path.clone(), (new, removed));
            }
            let (new, removed) = &moved[&file.path];
            if *removed > 0 {
                changed = true;
                if i < tables {
                    removed_rows += removed;
                }
                *file = new.clone();
            }
        }
        if changed {
            manifest.row_count -= removed_rows as u64;
            manifest.erasures.push(format!(
                "{}: {removed_rows} rows removed",
                stamp.to_rfc3339()
            ));
            let json =
                serde_json::to_vec_pretty(&manifest).map_err(|e| PublishError::Manifest {
                    path: layout::manifest(manifest.version),
                    problem: e.to_string(),
                })?;
            store
                .put(&layout::manifest(manifest.version), json.into())
                .await?;
            report.manifests_rewritten += 1;
        }
    }
    for (old, (new, removed)) in &moved {
        if *removed > 0 && new.path != *old {
            store.delete(old).await?;
            report.files_rewritten += 1;
            report.rows_removed += removed;
        }
    }
    info!(?report, "published versions rewritten without erased users");
    Ok(report)
}

/// `.../part-00000.parquet` -> `.../part-00000-erased-<stamp>.parquet`, in the same folder
/// (so retention still reads the version from the folder name).
fn erased_path(path: &str, suffix: &str) -> String {
    let stem = path.strip_suffix(".parquet").unwrap_or(path);
    let stem = stem.split("-erased-").next().unwrap_or(stem);
    format!("{stem}-erased-{suffix}.parquet")
}

/// A file just written, as the store holds it: its size and checksum (a manifest vouches only
/// for durable bytes).
pub async fn data_file(store: &Store, path: &str) -> Result<DataFile, PublishError> {
    let bytes = store
        .get(path)
        .await?
        .ok_or_else(|| PublishError::Manifest {
            path: path.to_string(),
            problem: "missing right after writing".into(),
        })?;
    Ok(DataFile {
        path: path.to_string(),
        bytes: bytes.len() as u64,
        sha256: format!("{:x}", Sha256::digest(&bytes)),
        shard: None,
        rows: None,
    })
}

/// What retention deleted.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Retention {
    pub manifests_deleted: usize,
    pub data_files_deleted: usize,
    /// run folders (decision records, input listings) no kept version rests on
    pub run_folders_deleted: usize,
}

/// How long published versions are kept: a version goes once it is neither among the newest
/// `versions` nor younger than `days` (by its publish time). Age keeps the records a lender
/// must show for an adverse decision; the count keeps rollbacks possible.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Keep {
    pub versions: usize,
    pub days: u32,
}

impl PublishConfig {
    pub fn keep(&self) -> Keep {
        Keep {
            versions: self.retain_versions,
            days: self.keep_days,
        }
    }
}

/// Deletes the versions `keep` lets go (never the newest), then the data files no kept version
/// needs that are older than the oldest kept version (a writer still writing a newer version
/// is never touched), and the run folders (decision records) only deleted versions named.
pub async fn retain(store: &Store, keep: Keep) -> Result<Retention, PublishError> {
    let all = versions(store).await?;
    let now = Utc::now();
    let young = |m: &Manifest| {
        chrono::DateTime::parse_from_rfc3339(&m.published_at).map_or(true, |at| {
            (now - at.with_timezone(&Utc)).num_days() < keep.days as i64
        })
    };
    // versions are committed in time order, so what is kept is a newest run of them
    let by_count = all.len().saturating_sub(keep.versions.max(1));
    let first_kept = all
        .iter()
        .position(young)
        .unwrap_or(all.len())
        .min(by_count);
    if first_kept == 0 {
        return Ok(Retention::default());
    }
    let (old, kept) = all.split_at(first_kept);
    let oldest_kept = kept[0].version;
    let mut report = Retention::default();
    for manifest in old {
        store.delete(&layout::manifest(manifest.version)).await?;
        report.manifests_deleted += 1;
    }
    let needed: std::collections::HashSet<&str> = kept
        .iter()
        .flat_map(|m| m.files.iter().map(|f| f.path.as_str()))
        .collect();
    for (path, _) in store.list(layout::PUBLISHED_DATA).await? {
        let version = layout::published_file_version(&path);
        if version.is_some_and(|v| v < oldest_kept) && !needed.contains(path.as_str()) {
            store.delete(&path).await?;
            report.data_files_deleted += 1;
        }
    }
    let kept_runs: std::collections::HashSet<&str> = kept
        .iter()
        .filter_map(|m| m.lineage.as_ref().map(|l| l.run_folder.as_str()))
        .collect();
    // a folder a manifest names belongs to a run that committed, so no writer is still in it
    for manifest in old {
        if let Some(lineage) = &manifest.lineage
            && !kept_runs.contains(lineage.run_folder.as_str())
        {
            store.delete_prefix(&lineage.run_folder).await?;
            report.run_folders_deleted += 1;
        }
    }
    info!(?report, "retention applied");
    Ok(report)
}

/// The newest table published for a date before `run_date`: where tonight's nightly step
/// starts (None when there is none). A rerun of a date starts from the same table as its
/// first run, so it decides the same.
pub async fn table_before(
    store: &Store,
    run_date: NaiveDate,
) -> Result<Option<Manifest>, PublishError> {
    Ok(versions(store)
        .await?
        .into_iter()
        .filter(|m| m.as_of < run_date)
        .max_by_key(|m| m.version))
}

/// user_id -> policy limit (before the user's own cap) and certificate boosts of the users of
/// `shard` in the table `previous` (`table_before`), for the policy's nightly step and its
/// withdrawn boosts.
pub async fn limits_in(
    store: &Store,
    previous: &Manifest,
    shard: UserShard,
) -> Result<std::collections::HashMap<u64, crate::policy::PreviousDecision>, PublishError> {
    Ok(table::previous_decisions(
        &read_shard(store, previous, shard).await?,
    ))
}

/// The rows of the users of `shard` in the table `manifest` points at, decoded a batch at a
/// time and read only from the parts that can hold them.
pub async fn read_shard(
    store: &Store,
    manifest: &Manifest,
    shard: UserShard,
) -> Result<Vec<RecordBatch>, PublishError> {
    let parts = parts_of(&manifest.files, shard);
    let keep = &mut |batch| keep_shard(&batch, shard);
    read_files_map(store, manifest, &parts, keep).await
}

/// The files of a table that can hold users of `shard`: its parts whose shard maps onto it
/// when the table was written in a multiple of `shard.count` parts (a user of part j of P is
/// in shard j mod N of N when N divides P), else every file.
fn parts_of(files: &[DataFile], shard: UserShard) -> Vec<DataFile> {
    let parts: Option<Vec<UserShard>> = files.iter().map(DataFile::user_shard).collect();
    match parts {
        Some(parts)
            if parts
                .iter()
                .all(|part| part.count == parts[0].count && part.count % shard.count == 0) =>
        {
            files
                .iter()
                .zip(parts)
                .filter(|(_, part)| part.index % shard.count == shard.index)
                .map(|(file, _)| file.clone())
                .collect()
        }
        _ => files.to_vec(),
    }
}

/// The rows of `batch` whose user is in `shard`.
fn keep_shard(batch: &RecordBatch, shard: UserShard) -> Result<RecordBatch, ArrowError> {
    use datafusion::arrow::array::{AsArray, BooleanArray};
    use datafusion::arrow::datatypes::UInt64Type;
    let users = batch
        .column_by_name("user_id")
        .and_then(|column| column.as_primitive_opt::<UInt64Type>())
        .ok_or_else(|| ArrowError::SchemaError("no unsigned user_id column".into()))?;
    let keep: BooleanArray = users
        .values()
        .iter()
        .map(|&user| Some(shard.contains(user)))
        .collect();
    datafusion::arrow::compute::filter_record_batch(batch, &keep)
}

/// Reads the table a manifest points at, checking every file's checksum.
pub async fn read_table(
    store: &Store,
    manifest: &Manifest,
) -> Result<Vec<RecordBatch>, PublishError> {
    read_table_map(store, manifest, &mut Ok).await
}

/// [`read_table`], passing each batch through `map` as it is decoded (a server keeping one
/// shard of the users never holds the whole table decoded).
pub async fn read_table_map(
    store: &Store,
    manifest: &Manifest,
    map: &mut (dyn FnMut(RecordBatch) -> Result<RecordBatch, ArrowError> + Send),
) -> Result<Vec<RecordBatch>, PublishError> {
    read_files_map(store, manifest, &manifest.files, map).await
}

/// The table files of `manifest` among `files` (a server's parts), checksums and row counts
/// verified, each batch passed through `map` as it is decoded.
pub async fn read_files_map(
    store: &Store,
    manifest: &Manifest,
    files: &[DataFile],
    map: &mut (dyn FnMut(RecordBatch) -> Result<RecordBatch, ArrowError> + Send),
) -> Result<Vec<RecordBatch>, PublishError> {
    let mut batches = Vec::new();
    for file in files {
        batches.extend(read_counted(store, file, &layout::manifest(manifest.version), map).await?);
    }
    Ok(batches)
}

/// One file's batches through `map`, its checksum and row count (when it records one)
/// verified; `named_by` is what names the file (a manifest) in the errors.
async fn read_counted(
    store: &Store,
    file: &DataFile,
    named_by: &str,
    map: &mut (dyn FnMut(RecordBatch) -> Result<RecordBatch, ArrowError> + Send),
) -> Result<Vec<RecordBatch>, PublishError> {
    let bytes = checked_bytes(store, file, named_by).await?;
    let mut decoded = 0u64;
    let mut count = |batch: RecordBatch| {
        decoded += batch.num_rows() as u64;
        map(batch)
    };
    let batches = store.decode_parquet_map(&file.path, bytes, &mut count)?;
    if let Some(expected) = file.rows
        && expected != decoded
    {
        return Err(PublishError::Manifest {
            path: named_by.to_string(),
            problem: format!(
                "{} holds {decoded} rows, the manifest says {expected}",
                file.path
            ),
        });
    }
    Ok(batches)
}

/// Checks that each of `files` (written by the per-user stages, maybe on other machines) is
/// there with the checksum and row count its writer recorded, before a commit names them.
pub async fn verify_files(store: &Store, files: &[DataFile]) -> Result<(), PublishError> {
    for file in files {
        let keep_nothing = &mut |batch: RecordBatch| Ok(batch.slice(0, 0));
        read_counted(store, file, "the parts to commit", keep_nothing).await?;
    }
    Ok(())
}

/// Reads one file version `version`'s manifest names, checking its checksum first.
pub async fn read_checked(
    store: &Store,
    file: &DataFile,
    version: u64,
) -> Result<Vec<RecordBatch>, PublishError> {
    let bytes = checked_bytes(store, file, &layout::manifest(version)).await?;
    // decode the bytes just checked: a second download could differ from them
    Ok(store.decode_parquet(&file.path, bytes)?)
}

/// The bytes of one file `named_by` names (a manifest), their checksum verified.
async fn checked_bytes(
    store: &Store,
    file: &DataFile,
    named_by: &str,
) -> Result<Bytes, PublishError> {
    let bytes = store
        .get(&file.path)
        .await?
        .ok_or_else(|| PublishError::Manifest {
            path: named_by.to_string(),
            problem: format!(
                "data file {} is missing (deleted by retention, or never written)",
                file.path
            ),
        })?;
    let found = format!("{:x}", Sha256::digest(&bytes));
    if found != file.sha256 {
        return Err(PublishError::Checksum {
            path: file.path.clone(),
            expected: file.sha256.clone(),
            found,
        });
    }
    Ok(bytes)
}
