//! Raw inputs: checks every raw Parquet file against `schemas/`, moves bad rows to
//! `quarantine/<source>/run=<date>/` with a reason, and registers the clean rows with a
//! DataFusion session as tables named after their source.
//!
//! Reads `raw/` and `reference/`; writes only `quarantine/` and, for sources deduplicated by a
//! unique key, their checked rows under `staging/` for the session (see `stage`). A file with
//! the wrong schema stops the run with an error naming the file and column; a bad row never
//! stops it alone, and never disappears: it is counted and kept in quarantine. Too many bad
//! rows stop the run.

use std::sync::Arc;

use chrono::NaiveDate;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::DataType;
use datafusion::error::DataFusionError;
use datafusion::prelude::{ParquetReadOptions, SessionContext};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::cause::{Cause, Classify};
use crate::schema::{self, KNOWN_AT, SchemaError, TableSchema, TypeName};
use crate::store::{Store, StoreError, layout};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Erasure(#[from] crate::erasure::ErasureError),
    #[error(transparent)]
    Schema(#[from] SchemaError),
    #[error("no files under {0}: is this a redflower root? (run `redflower synth` to make one)")]
    Empty(String),
    #[error("no {source_name} snapshot before {before} under raw/{source_name}/")]
    NoSnapshot {
        source_name: String,
        before: NaiveDate,
    },
    #[error("validating {source_name}: {error}")]
    Query {
        source_name: String,
        error: DataFusionError,
    },
    #[error(
        "{source_name}: {counted} of {total} rows ({share:.3}%) failed validation, above the limit of {limit:.3}%; see {quarantine}"
    )]
    TooManyBadRows {
        source_name: String,
        /// the bad rows counted, and "at least" when counting stopped past the limit
        counted: String,
        bad: u64,
        total: u64,
        share: f64,
        limit: f64,
        quarantine: String,
    },
}

impl Classify for SourceError {
    fn cause(&self) -> Cause {
        match self {
            SourceError::Store(e) => e.cause(),
            SourceError::Erasure(e) => e.cause(),
            SourceError::Schema(_) | SourceError::TooManyBadRows { .. } => Cause::Input,
            // a root without the files a run needs is the wrong root, or data not yet landed
            SourceError::Empty(_) | SourceError::NoSnapshot { .. } => Cause::Input,
            SourceError::Query { error, .. } => crate::engine::cause_of(error),
        }
    }
}

/// One raw source: its schema and the rules that send a row to quarantine.
pub struct Source {
    pub table: &'static TableSchema,
    /// SQL CASE arms (`WHEN cond THEN 'reason'`), tried in order over the raw columns.
    rules: Vec<(String, String)>,
    /// joined after the raw table, for rules that look up reference data
    lookup: &'static str,
    /// Columns that name one fact. Each `known_at` of a key is a version of that fact that
    /// supersedes the versions known before it; a repeat of a key *and* its `known_at` is a
    /// duplicate. Events have none: two identical purchases can both be real.
    unique_key: Option<&'static str>,
}

impl Source {
    pub fn name(&self) -> &str {
        &self.table.name
    }

    /// Facts with versions: as of a date, each key reads its newest version known before it.
    pub fn versioned(&self) -> bool {
        self.unique_key.is_some()
    }
}

/// The rules every source shares, tried before its own: a row must say when it was learned,
/// never before it happened, and carry only finite numbers (NaN and infinities pass every
/// comparison rule below and would reach features, then stop every publish).
fn common_rules(table: &TableSchema) -> Vec<(String, String)> {
    let mut rules = vec![(format!("{KNOWN_AT} IS NULL"), format!("null {KNOWN_AT}"))];
    for field in &table.fields {
        if matches!(field.data_type, TypeName::Float32 | TypeName::Float64) {
            let c = &field.name;
            rules.push((
                format!("isnan({c}) OR abs({c}) = CAST('Infinity' AS DOUBLE)"),
                format!("non-finite {c}"),
            ));
        }
    }
    if let Some(time) = &table.time_column {
        rules.push((
            format!("{time} > {KNOWN_AT}"),
            format!("{time} after {KNOWN_AT}"),
        ));
    }
    rules
}

fn rules_of(table: &TableSchema, own: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut rules = common_rules(table);
    rules.extend(own.iter().map(|(c, r)| (c.to_string(), r.to_string())));
    rules
}

/// Certificates: versions of one upload as it is verified and, now and then, revoked.
fn certificates() -> Source {
    Source {
        table: &schema::CERTIFICATES,
        rules: rules_of(
            &schema::CERTIFICATES,
            &[
                ("user_id IS NULL", "null user_id"),
                ("uploaded_at IS NULL", "null uploaded_at"),
                ("known_type_id IS NULL", "unknown certificate type"),
                (
                    "confidence NOT BETWEEN 0 AND 1",
                    "confidence outside [0, 1]",
                ),
                ("verified_at > known_at", "verified_at after known_at"),
                ("revoked_at > known_at", "revoked_at after known_at"),
                (
                    "revoked_at IS NOT NULL AND (revoked_reason IS NULL OR revoked_reason NOT IN ('forged', 'withdrawn'))",
                    "revoked_reason not forged or withdrawn",
                ),
            ],
        ),
        lookup: "LEFT JOIN (SELECT cert_type_id AS known_type_id FROM certificate_types) known \
                 ON cert_type_id = known.known_type_id",
        unique_key: Some("user_id, certificate_no"),
    }
}

pub fn sources() -> Vec<Source> {
    vec![
        Source {
            table: &schema::PROFILES,
            rules: rules_of(
                &schema::PROFILES,
                &[
                    ("user_id IS NULL", "null user_id"),
                    ("signup_date IS NULL", "null signup_date"),
                    (
                        "income_band NOT BETWEEN 1 AND 8",
                        "income_band outside 1..8",
                    ),
                ],
            ),
            lookup: "",
            // a snapshot's row of a user, corrected by a later known_at
            unique_key: Some("user_id, dt"),
        },
        Source {
            table: &schema::EVENTS,
            rules: rules_of(
                &schema::EVENTS,
                &[
                    ("user_id IS NULL", "null user_id"),
                    ("event_time IS NULL", "null event_time"),
                    (
                        "kind IS NULL OR kind NOT IN ('purchase', 'visit', 'transfer', 'rent', 'utility')",
                        "unknown kind",
                    ),
                    ("amount < 0", "negative amount"),
                ],
            ),
            lookup: "",
            unique_key: None,
        },
        certificates(),
        Source {
            table: &schema::REPAYMENTS,
            rules: rules_of(
                &schema::REPAYMENTS,
                &[
                    ("user_id IS NULL", "null user_id"),
                    ("due_date IS NULL", "null due_date"),
                    ("amount_due < 0 OR amount_paid < 0", "negative amount"),
                    ("days_past_due < 0", "negative days_past_due"),
                ],
            ),
            lookup: "",
            unique_key: Some("user_id, due_date"),
        },
        Source {
            table: &schema::LIMIT_REQUESTS,
            rules: rules_of(
                &schema::LIMIT_REQUESTS,
                &[
                    ("user_id IS NULL", "null user_id"),
                    ("requested_at IS NULL", "null requested_at"),
                    ("requested_limit < 0", "negative requested_limit"),
                ],
            ),
            lookup: "",
            unique_key: Some("user_id, requested_at"),
        },
    ]
}

/// The conditions that pick, from a source's clean view, what was known strictly before
/// `as_of`: rows learned before it and, of a versioned fact, only the version no row learned
/// before `as_of` supersedes (an as-of join, precomputed as `superseded_at` when staged).
pub fn known_before(source: &str, as_of: NaiveDate) -> Vec<String> {
    let bound = format!("TIMESTAMP '{as_of} 00:00:00'");
    let mut conditions = vec![format!("{KNOWN_AT} < {bound}")];
    if sources()
        .iter()
        .any(|s| s.name() == source && s.versioned())
    {
        conditions.push(format!(
            "({SUPERSEDED_AT} IS NULL OR {SUPERSEDED_AT} >= {bound})"
        ));
    }
    conditions
}

/// Column of a versioned source's clean view: when the next version of its key became known.
pub const SUPERSEDED_AT: &str = "superseded_at";

/// Counts for one source, for the run report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SourceReport {
    pub source: String,
    pub files: usize,
    pub rows: u64,
    pub quarantined: u64,
    pub reasons: Vec<(String, u64)>,
}

/// Checks the footer schema of every Parquet file under `folder`; returns how many there are.
pub async fn check_files(
    store: &Store,
    folder: &str,
    table: &TableSchema,
) -> Result<usize, SourceError> {
    let files: Vec<String> = store
        .list(folder)
        .await?
        .into_iter()
        .map(|(path, _)| path)
        .filter(|path| path.ends_with(".parquet"))
        .collect();
    if files.is_empty() {
        return Err(SourceError::Empty(format!("{}/{folder}", store.url())));
    }
    for file in &files {
        let found = store.parquet_schema(file).await?;
        table.check(&format!("{}/{file}", store.url()), &found)?;
    }
    Ok(files.len())
}

async fn register_raw(
    ctx: &SessionContext,
    store: &Store,
    name: &str,
    folder: &str,
    table: &TableSchema,
    partitioned: bool,
) -> Result<(), SourceError> {
    let schema = table.raw_arrow();
    let mut options = ParquetReadOptions::default().schema(&schema);
    if partitioned {
        options = options.table_partition_cols(vec![("dt".to_string(), DataType::Utf8)]);
    }
    ctx.register_parquet(name, store.table_url(folder), options)
        .await
        .map_err(|error| SourceError::Query {
            source_name: name.to_string(),
            error,
        })
}

/// Rows per staged file: bounds what staging holds in memory at once.
const STAGED_ROWS_PER_FILE: usize = 1 << 20;

/// Where a session stages its sources: one folder per DataFusion session, so a nightly run
/// and an ML engineer's `redflower train` on the same root and date never share (or delete)
/// each other's files.
fn session_staging(ctx: &SessionContext) -> String {
    layout::staging(&format!("session={}", ctx.session_id()))
}

/// Writes a deduplicated source's rows once, each with its quarantine reason (NULL for a
/// clean row), under `session_staging`, and registers them as `table`. Numbering copies sorts
/// the whole source; as part of a view it was sorted again by validation and by every feature
/// query that read it (eight on the shipped config), and the staged files also replace many
/// small daily files. Rewritten at every registration, so a resumed run never reads another
/// run's rows; `drop_staging` removes it when the session is done with its sources (a run
/// that crashes leaves its folder, which is safe to delete once no run is going).
async fn stage(
    ctx: &SessionContext,
    store: &Store,
    name: &str,
    table: &str,
    checked_sql: &str,
) -> Result<(), SourceError> {
    let failed = |error| SourceError::Query {
        source_name: name.to_string(),
        error,
    };
    let folder = format!("{}/{name}", session_staging(ctx));
    store.delete_prefix(&folder).await?;
    let frame = ctx.sql(checked_sql).await.map_err(failed)?;
    let schema = Arc::new(frame.schema().as_arrow().clone());
    let mut stream = frame.execute_stream().await.map_err(failed)?;
    let (mut buffered, mut rows, mut files, mut staged) = (Vec::new(), 0, 0, 0);
    loop {
        let next = stream.next().await.transpose().map_err(failed)?;
        let done = next.is_none();
        if let Some(batch) = next {
            rows += batch.num_rows();
            buffered.push(batch);
        }
        // an empty source still gets one (empty) file, so the table has its schema
        if rows >= STAGED_ROWS_PER_FILE || (done && (rows > 0 || files == 0)) {
            store
                .write_parquet(
                    &format!("{folder}/part-{files:05}.parquet"),
                    schema.clone(),
                    &buffered,
                )
                .await?;
            staged += rows;
            files += 1;
            (buffered, rows) = (Vec::new(), 0);
        }
        if done {
            break;
        }
    }
    let _ = ctx.deregister_table(table);
    ctx.register_parquet(
        table,
        store.table_url(&folder),
        ParquetReadOptions::default().schema(&schema),
    )
    .await
    .map_err(failed)?;
    info!(source = name, rows = staged, files, "checked rows staged");
    Ok(())
}

/// Removes what `register` staged for this session; its sources cannot be read after it.
pub async fn drop_staging(store: &Store, ctx: &SessionContext) -> Result<(), SourceError> {
    store.delete_prefix(&session_staging(ctx)).await?;
    Ok(())
}

/// How long staged files may sit untouched before a nightly run takes them for a killed
/// run's leftovers: far beyond any run (a run rewrites its staging at every registration).
pub const STALE_STAGING: chrono::Duration = chrono::Duration::hours(24);

/// Deletes the staging folders of other sessions whose newest file is older than
/// `older_than`: what runs killed before `drop_staging` (SIGKILL, a lost machine) left.
/// `ctx`'s own folder is never touched. Returns the sessions removed.
pub async fn sweep_stale_staging(
    store: &Store,
    ctx: &SessionContext,
    older_than: chrono::Duration,
) -> Result<Vec<String>, SourceError> {
    let own = session_staging(ctx);
    let mut newest: std::collections::BTreeMap<String, chrono::DateTime<chrono::Utc>> =
        Default::default();
    for (path, modified) in store.list_modified(layout::STAGING).await? {
        let Some(session) = path.split('/').nth(1).filter(|s| s.starts_with("session=")) else {
            continue;
        };
        let folder = layout::staging(session);
        let entry = newest.entry(folder).or_insert(modified);
        *entry = (*entry).max(modified);
    }
    let cutoff = chrono::Utc::now() - older_than;
    let mut removed = Vec::new();
    for (folder, modified) in newest {
        if folder != own && modified < cutoff {
            store.delete_prefix(&folder).await?;
            warn!(%folder, last_written = %modified, "removed a stale session's staged sources");
            removed.push(folder);
        }
    }
    Ok(removed)
}

async fn query(
    ctx: &SessionContext,
    source: &str,
    sql: &str,
) -> Result<Vec<RecordBatch>, SourceError> {
    crate::engine::collect(ctx, sql)
        .await
        .map_err(|error| SourceError::Query {
            source_name: source.to_string(),
            error,
        })
}

/// The `dt` partitions of a source, sorted.
pub async fn partitions(store: &Store, source: &str) -> Result<Vec<NaiveDate>, SourceError> {
    let mut days: Vec<NaiveDate> = store
        .list(&layout::raw(source))
        .await?
        .into_iter()
        .filter_map(|(path, _)| {
            let dt = path.split('/').find_map(|part| part.strip_prefix("dt="))?;
            NaiveDate::parse_from_str(dt, "%Y-%m-%d").ok()
        })
        .collect();
    days.sort();
    days.dedup();
    Ok(days)
}

/// The newest snapshot of a snapshot source (profiles) taken strictly before `before`.
pub async fn snapshot_before(
    store: &Store,
    source: &str,
    before: NaiveDate,
) -> Result<NaiveDate, SourceError> {
    partitions(store, source)
        .await?
        .into_iter()
        .rev()
        .find(|d| *d < before)
        .ok_or(SourceError::NoSnapshot {
            source_name: source.to_string(),
            before,
        })
}

/// A source registered with a session: its clean view is queryable by its name.
#[derive(Debug, Clone)]
pub struct RegisteredSource {
    pub name: String,
    /// Parquet files found under `raw/<name>/`
    pub files: usize,
    raw: String,
    /// every candidate row with its quarantine reason (NULL when clean)
    checked: String,
}

/// Registers `certificate_types` and one clean view per source with `ctx`, for data before
/// `run_date`, without counting or quarantining anything: what a resumed run needs after the
/// validation of the same date has passed.
pub async fn register(
    ctx: &SessionContext,
    store: &Store,
    run_date: NaiveDate,
) -> Result<Vec<RegisteredSource>, SourceError> {
    store.register(ctx);
    check_files(store, layout::CERTIFICATE_TYPES, &schema::CERTIFICATE_TYPES).await?;
    register_raw(
        ctx,
        store,
        "certificate_types",
        layout::CERTIFICATE_TYPES,
        &schema::CERTIFICATE_TYPES,
        false,
    )
    .await?;

    let exclusion = crate::erasure::sql_exclusion(&crate::erasure::erased(store).await?);
    let mut registered = Vec::new();
    for source in sources() {
        let exclusion = exclusion.as_deref();
        registered.push(register_source(ctx, store, &source, run_date, exclusion).await?);
    }
    Ok(registered)
}

/// The SQL of one source's validation as of `run_date`: every candidate row with its
/// quarantine reason (`checked`), the rows it reads (`candidates`), and the conditions a
/// clean row meets.
struct Checks {
    /// the source's columns, comma-separated
    columns: String,
    checked: String,
    candidates: String,
    clean_conditions: Vec<String>,
}

fn checks(source: &Source, raw: &str, run_date: NaiveDate, exclusion: Option<&str>) -> Checks {
    let columns: Vec<&str> = source
        .table
        .fields
        .iter()
        .map(|f| f.name.as_str())
        .collect();
    let columns = columns.join(", ");
    let mut arms: String = source
        .rules
        .iter()
        .map(|(cond, reason)| format!(" WHEN {cond} THEN '{}'", reason.replace('\'', "''")))
        .collect();
    // the clean view is read by every feature query: plain predicates, no CASE strings,
    // so the Parquet reader can evaluate them while decoding
    let mut clean_conditions: Vec<String> = source
        .rules
        .iter()
        .map(|(cond, _)| format!("NOT COALESCE(({cond}), FALSE)"))
        .collect();
    // dt is the day a row landed, so a row learned on or after the run date under an earlier
    // partition has a broken clock: it can never be read as of any date, so it is kept aside
    let bound = format!("TIMESTAMP '{run_date} 00:00:00'");
    arms.push_str(&format!(
        " WHEN {KNOWN_AT} >= {bound} THEN '{KNOWN_AT} on or after the run date'"
    ));
    clean_conditions.push(format!("NOT COALESCE({KNOWN_AT} >= {bound}, FALSE)"));
    // numbering copies of a version in a fixed order keeps the same copy every night
    let copy_no = match source.unique_key {
        Some(key) => {
            arms.push_str(" WHEN copy_no > 1 THEN 'duplicate of an earlier row'");
            format!(
                ", ROW_NUMBER() OVER (PARTITION BY {key}, {KNOWN_AT} ORDER BY dt, {columns}) AS copy_no"
            )
        }
        None => String::new(),
    };
    // erased users' rows are not read at all: no stage after this one ever sees them
    let erased = match exclusion {
        Some(exclusion) if source.table.fields.iter().any(|f| f.name == "user_id") => {
            format!(" AND {exclusion}")
        }
        _ => String::new(),
    };
    let candidates = format!(
        "(SELECT {columns}, dt{copy_no} FROM {raw} WHERE dt < '{run_date}'{erased}) {lookup}",
        lookup = source.lookup
    );
    Checks {
        checked: format!(
            "SELECT {columns}, dt, CASE{arms} ELSE NULL END AS quarantine_reason FROM {candidates}"
        ),
        columns,
        candidates,
        clean_conditions,
    }
}

/// Registers one source's raw files and its clean view (`<name>`).
async fn register_source(
    ctx: &SessionContext,
    store: &Store,
    source: &Source,
    run_date: NaiveDate,
    exclusion: Option<&str>,
) -> Result<RegisteredSource, SourceError> {
    let name = source.name().to_string();
    let folder = layout::raw(&name);
    let files = check_files(store, &folder, source.table).await?;
    let raw = format!("raw_{name}");
    register_raw(ctx, store, &raw, &folder, source.table, true).await?;
    let Checks {
        columns,
        mut checked,
        candidates,
        clean_conditions,
    } = checks(source, &raw, run_date, exclusion);
    let clean = if let Some(key) = source.unique_key {
        // numbered once, into staged files that both validation and the clean view read;
        // each clean version carries when the next clean version of its key became known
        let staged = format!("{name}_checked");
        let versioned = format!(
            "SELECT {columns}, dt, CASE WHEN quarantine_reason IS NULL THEN \
             LEAD({KNOWN_AT}) OVER (PARTITION BY {key}, quarantine_reason IS NULL ORDER BY {KNOWN_AT}) \
             END AS {SUPERSEDED_AT}, quarantine_reason FROM ({checked})"
        );
        stage(ctx, store, &name, &staged, &versioned).await?;
        checked = format!("SELECT {columns}, dt, quarantine_reason FROM {staged}");
        format!(
            "SELECT {columns}, dt, {SUPERSEDED_AT} FROM {staged} WHERE quarantine_reason IS NULL"
        )
    } else {
        format!(
            "SELECT {columns}, dt FROM {candidates} WHERE {}",
            clean_conditions.join(" AND ")
        )
    };
    query(
        ctx,
        &name,
        &format!("CREATE OR REPLACE VIEW {name} AS {clean}"),
    )
    .await?;
    Ok(RegisteredSource {
        name,
        files,
        raw,
        checked,
    })
}

/// The rows of `checked` that validation refuses, read as they come until more than
/// `allowed` have come (the run stops then, and counting the rest would only cost time and
/// memory): the batches read, and whether they are all of them.
async fn bad_rows(
    ctx: &SessionContext,
    source: &str,
    checked: &str,
    allowed: u64,
) -> Result<(Vec<RecordBatch>, bool), SourceError> {
    let sql = format!("SELECT * FROM ({checked}) WHERE quarantine_reason IS NOT NULL");
    let failed = |error| SourceError::Query {
        source_name: source.to_string(),
        error,
    };
    let mut stream = ctx
        .sql(&sql)
        .await
        .map_err(failed)?
        .execute_stream()
        .await
        .map_err(failed)?;
    let (mut batches, mut rows) = (Vec::new(), 0u64);
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(failed)?;
        rows += batch.num_rows() as u64;
        batches.push(batch);
        if rows > allowed {
            return Ok((batches, false));
        }
    }
    Ok((batches, true))
}

/// Replaces `folder` with the refused rows (each with its reason), and counts the reasons.
async fn quarantine(
    store: &Store,
    folder: &str,
    bad: &[RecordBatch],
) -> Result<std::collections::BTreeMap<String, u64>, SourceError> {
    store.delete_prefix(folder).await?;
    let mut reasons = std::collections::BTreeMap::<String, u64>::new();
    let Some(first) = bad.iter().find(|b| b.num_rows() > 0) else {
        return Ok(reasons);
    };
    for batch in bad {
        let column = batch.column(batch.num_columns() - 1);
        let column = datafusion::arrow::array::cast::as_string_array(column);
        for reason in column.iter().flatten() {
            *reasons.entry(reason.to_string()).or_default() += 1;
        }
    }
    let schema = Arc::clone(&first.schema());
    store
        .write_parquet(&format!("{folder}/part-00000.parquet"), schema, bad)
        .await?;
    Ok(reasons)
}

/// Validates every source with data before `run_date`, writes quarantines, and registers
/// `certificate_types` and one clean table per source with `ctx`.
pub async fn validate_and_register(
    ctx: &SessionContext,
    store: &Store,
    run_date: NaiveDate,
    max_bad_share: f64,
) -> Result<Vec<SourceReport>, SourceError> {
    let mut reports = Vec::new();
    for source in register(ctx, store, run_date).await? {
        let RegisteredSource {
            name,
            files,
            raw,
            checked,
        } = source;
        let total = query(
            ctx,
            &name,
            &format!("SELECT COUNT(*) FROM {raw} WHERE dt < '{run_date}'"),
        )
        .await?;
        let total = total
            .first()
            .and_then(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<datafusion::arrow::array::Int64Array>()
            })
            .map(|a| a.value(0) as u64)
            .unwrap_or(0);
        // more bad rows than this stop the run: no need to count (or hold) the rest
        let allowed = (max_bad_share * total as f64).floor() as u64;
        let (bad, complete) = bad_rows(ctx, &name, &checked, allowed).await?;
        let quarantined: u64 = bad.iter().map(|b| b.num_rows() as u64).sum();
        let quarantine_folder = layout::quarantine(&name, run_date);
        let reasons = quarantine(store, &quarantine_folder, &bad).await?;
        if quarantined > 0 {
            warn!(source = %name, quarantined, ?reasons, "rows quarantined");
        }
        let share = if total == 0 {
            0.0
        } else {
            quarantined as f64 / total as f64
        };
        if share > max_bad_share {
            return Err(SourceError::TooManyBadRows {
                source_name: name,
                counted: if complete {
                    quarantined.to_string()
                } else {
                    format!("at least {quarantined}")
                },
                bad: quarantined,
                total,
                share: share * 100.0,
                limit: max_bad_share * 100.0,
                quarantine: format!("{}/{quarantine_folder}", store.url()),
            });
        }
        info!(source = %name, files, rows = total, quarantined, "source validated");
        reports.push(SourceReport {
            source: name,
            files,
            rows: total,
            quarantined,
            reasons: reasons.into_iter().collect(),
        });
    }
    Ok(reports)
}
