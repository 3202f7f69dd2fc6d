//! Features: runs the families of `pipelines/features.toml` as DataFusion aggregations over
//! the validated sources and assembles the long sparse table (user_id, feature_id, value).
//!
//! Reads the clean source tables registered by `sources`; writes `features/dt=<as_of>/` and
//! appends to `features/dictionary.parquet`. Point in time: a feature as of T uses only rows
//! known strictly before T. It never reads labels or truth.

pub mod config;
pub mod dictionary;
mod shared_scan;
pub mod stats;

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{Duration, NaiveDate};
use datafusion::arrow::array::{
    Array, AsArray, Float32Array, RecordBatch, UInt32Array, UInt64Array,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type, UInt32Type, UInt64Type};
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use rayon::prelude::*;
use tracing::{debug, info};

pub use config::{Aggregate, FeatureConfig, FeatureFamily, Transform};
pub use dictionary::FeatureDictionary;

use crate::schema;
use crate::sources::{self, SourceError};
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum FeatureError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("feature family '{family}': {error}\n  query: {sql}")]
    Query {
        family: String,
        sql: String,
        error: DataFusionError,
    },
    #[error("feature family '{family}': {problem}")]
    Result { family: String, problem: String },
}

/// Features of every user alive at `as_of`, as CSR-ready long rows sorted by user then id.
#[derive(Debug, Clone)]
pub struct FeatureSet {
    pub as_of: NaiveDate,
    /// every user that exists at `as_of`, sorted; users without any feature included
    pub users: Vec<u64>,
    pub user_ids: Vec<u64>,
    pub feature_ids: Vec<u32>,
    pub values: Vec<f32>,
}

impl FeatureSet {
    pub fn nnz(&self) -> usize {
        self.values.len()
    }

    pub fn distinct_features(&self) -> usize {
        let mut seen = vec![false; self.feature_ids.iter().max().map_or(0, |m| *m as usize + 1)];
        self.feature_ids
            .iter()
            .for_each(|&f| seen[f as usize] = true);
        seen.into_iter().filter(|s| *s).count()
    }
}

/// Counts for the run report.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct FeatureReport {
    #[serde(with = "crate::serde_date")]
    pub as_of: NaiveDate,
    pub users: usize,
    pub rows: usize,
    pub distinct_features: usize,
    pub dictionary_size: usize,
    pub seconds: f64,
}

/// Feature queries in flight at once: enough to overlap small queries with big scans, few
/// enough that their hash tables share the engine's memory pool without spilling.
const QUERIES_AT_ONCE: usize = 3;

fn sql_date(date: NaiveDate) -> String {
    format!("DATE '{date}'")
}

/// How a family's rows are placed in time: the expression compared with as-of bounds, the
/// literal type it compares with, and the day it became known (for days-since-last).
struct KnownAt<'a> {
    compared: String,
    table: Option<&'a schema::TableSchema>,
    day: String,
}

impl KnownAt<'_> {
    fn of<'t>(family: &FeatureFamily, table: &'t schema::TableSchema) -> Option<KnownAt<'t>> {
        if let Some(time) = &family.time {
            let day = format!("CAST(({time}) AS DATE)");
            return Some(KnownAt {
                compared: day.clone(),
                table: None,
                day,
            });
        }
        let column = table.time_column.as_ref()?;
        Some(KnownAt {
            compared: column.clone(),
            table: Some(table),
            day: format!("CAST({column} AS DATE)"),
        })
    }

    fn bound(&self, date: NaiveDate) -> String {
        self.table
            .and_then(|t| t.time_literal(date))
            .unwrap_or_else(|| sql_date(date))
    }
}

/// Families that read one source with one key and one notion of time run as a single query:
/// one scan and one hash aggregation, with a FILTERed aggregate column per family and window.
/// Windows and families that differ only in filter or aggregate cost no extra pass.
struct QueryGroup<'a> {
    source: &'a str,
    key: Option<&'a str>,
    time: Option<&'a str>,
    /// column `c{i}` of the result is `members[i]`
    members: Vec<(&'a FeatureFamily, Option<u32>)>,
}

impl QueryGroup<'_> {
    fn label(&self) -> String {
        let names: Vec<String> = self
            .members
            .iter()
            .map(|(family, window)| feature_name(family, *window, None))
            .collect();
        format!(
            "{}[{}]: {}",
            self.source,
            self.key.unwrap_or("user"),
            names.join(", ")
        )
    }
}

fn query_groups(config: &FeatureConfig) -> Vec<QueryGroup<'_>> {
    let mut groups: Vec<QueryGroup> = Vec::new();
    for family in &config.families {
        let (source, key, time) = (
            family.source.as_str(),
            family.key.as_deref(),
            family.time.as_deref(),
        );
        let index = match groups
            .iter()
            .position(|g| (g.source, g.key, g.time) == (source, key, time))
        {
            Some(index) => index,
            None => {
                groups.push(QueryGroup {
                    source,
                    key,
                    time,
                    members: Vec::new(),
                });
                groups.len() - 1
            }
        };
        for window in family.window_days() {
            groups[index].members.push((family, window));
        }
    }
    groups
}

/// The conditions that place a group's rows in time as of `as_of`: known strictly before it,
/// and within the longest of `windows` (all history when one of them is `None`).
fn time_conditions(
    known_at: &KnownAt,
    time: Option<&str>,
    windows: impl Iterator<Item = Option<u32>>,
    as_of: NaiveDate,
) -> Vec<String> {
    let mut conditions = vec![
        format!("{} < {}", known_at.compared, known_at.bound(as_of)),
        // partitions hold rows by their own time, never later than when they are known
        format!("dt < '{as_of}'"),
    ];
    if let Some(Some(longest)) = windows.max_by_key(|w| w.unwrap_or(u32::MAX)) {
        let from = as_of - Duration::days(longest as i64);
        conditions.push(format!("{} >= {}", known_at.compared, known_at.bound(from)));
        if time.is_none() {
            conditions.push(format!("dt >= '{from}'"));
        }
    }
    conditions
}

fn source_schema(source: &str) -> &'static schema::TableSchema {
    schema::all()
        .into_iter()
        .find(|t| t.name == source)
        .expect("validated at load")
}

/// The SQL of one group; output columns: user_id, k (the key, NULL without one), then one
/// DOUBLE column `c{i}` per member, NULL where the member has no row for that user and key.
fn group_sql(group: &QueryGroup, as_of: NaiveDate, snapshot: Option<NaiveDate>) -> String {
    group_sql_on(group, group.source, as_of, snapshot)
}

/// `group_sql` reading `table` (the source's rows, or a superset of them) instead.
fn group_sql_on(
    group: &QueryGroup,
    table: &str,
    as_of: NaiveDate,
    snapshot: Option<NaiveDate>,
) -> String {
    let known_at = KnownAt::of(group.members[0].0, source_schema(group.source));
    let key = group.key.unwrap_or("CAST(NULL AS VARCHAR)");
    let mut conditions = vec!["user_id IS NOT NULL".to_string()];
    if let Some(k) = group.key {
        conditions.push(format!("({k}) IS NOT NULL"));
    }
    match (&known_at, snapshot) {
        (Some(known_at), _) => conditions.extend(time_conditions(
            known_at,
            group.time,
            group.members.iter().map(|(_, w)| *w),
            as_of,
        )),
        (None, Some(snapshot)) => {
            conditions.push(format!("dt = '{snapshot}'"));
            conditions.push(format!("signup_date < {}", sql_date(as_of)));
        }
        (None, None) => unreachable!("snapshot sources get a snapshot date"),
    }
    // rows no member wants are dropped before the aggregation
    let filters: Option<Vec<String>> = group
        .members
        .iter()
        .map(|(family, _)| family.filter.as_ref().map(|f| format!("({f})")))
        .collect();
    if let Some(mut filters) = filters {
        filters.dedup();
        conditions.push(format!("({})", filters.join(" OR ")));
    }

    let mut shares = Vec::new();
    let columns: Vec<String> = group
        .members
        .iter()
        .enumerate()
        .map(|(i, (family, window))| {
            let mut wanted = Vec::new();
            if let Some(filter) = &family.filter {
                wanted.push(format!("({filter})"));
            }
            if let (Some(days), Some(known_at)) = (window, &known_at) {
                let from = as_of - Duration::days(*days as i64);
                wanted.push(format!("{} >= {}", known_at.compared, known_at.bound(from)));
            }
            let only = if wanted.is_empty() {
                String::new()
            } else {
                format!(" FILTER (WHERE {})", wanted.join(" AND "))
            };
            let value = family.value.as_deref().unwrap_or("1");
            let aggregate = match family.aggregate {
                // a count of no rows is no feature, as for every other aggregate
                Aggregate::Count => format!("NULLIF(COUNT(*){only}, 0)"),
                Aggregate::Sum => format!("SUM({value}){only}"),
                Aggregate::Mean => format!("AVG({value}){only}"),
                Aggregate::Max => format!("MAX({value}){only}"),
                Aggregate::Min => format!("MIN({value}){only}"),
                Aggregate::DistinctCount => format!("NULLIF(COUNT(DISTINCT {value}){only}, 0)"),
                Aggregate::Indicator => format!("MAX(1){only}"),
                Aggregate::Share => {
                    shares.push(i);
                    format!("SUM({value}){only}")
                }
                Aggregate::DaysSinceLast => format!(
                    "{} - MAX(CAST({} AS INT)){only}",
                    (as_of - NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid")).num_days(),
                    known_at
                        .as_ref()
                        .expect("validated: days_since_last needs time")
                        .day
                ),
            };
            format!("CAST({aggregate} AS DOUBLE) AS c{i}")
        })
        .collect();
    let group_by = match group.key {
        Some(k) => format!("user_id, {k}"),
        None => "user_id".to_string(),
    };
    let grouped = format!(
        "SELECT user_id, {key} AS k, {columns} FROM {table} WHERE {conditions} GROUP BY {group_by}",
        columns = columns.join(", "),
        conditions = conditions.join(" AND "),
    );
    if shares.is_empty() {
        return grouped;
    }
    // a share divides by the user's total over all keys, before support and top-k drop any
    let outer: Vec<String> = (0..group.members.len())
        .map(|i| {
            if shares.contains(&i) {
                format!("c{i} / NULLIF(SUM(c{i}) OVER (PARTITION BY user_id), 0) AS c{i}")
            } else {
                format!("c{i}")
            }
        })
        .collect();
    format!("SELECT user_id, k, {} FROM ({grouped})", outer.join(", "))
}

/// Groups that can share one scan: two to `at_most` on one windowed source with one notion
/// of time (by index into `groups`). Every query of a cluster runs at once, so `at_most`
/// bounds the hash aggregations sharing the engine's memory pool, as for unshared queries
/// (with all four event groups at once, the 1,000,000-user job ran out of a 4 GB pool).
fn shared_scan_clusters(groups: &[QueryGroup], at_most: usize) -> Vec<Vec<usize>> {
    let mut clusters: Vec<Vec<usize>> = Vec::new();
    for (index, group) in groups.iter().enumerate() {
        if KnownAt::of(group.members[0].0, source_schema(group.source)).is_none() {
            continue; // snapshot sources: one small partition each
        }
        match clusters.iter_mut().find(|c| {
            let first = &groups[c[0]];
            (first.source, first.time) == (group.source, group.time)
        }) {
            Some(cluster) => cluster.push(index),
            None => clusters.push(vec![index]),
        }
    }
    let mut chunks: Vec<Vec<usize>> = clusters
        .iter()
        .flat_map(|c| c.chunks(at_most.max(1)).map(<[usize]>::to_vec))
        .collect();
    chunks.retain(|c| c.len() > 1);
    chunks
}

/// The in-memory table through which a shared scan feeds group `index`.
fn shared_table(group: &QueryGroup, index: usize) -> String {
    format!("{}__shared_{index}", group.source)
}

/// The one scan a cluster shares: the source's rows in the union of its groups' time ranges.
fn shared_scan_sql(groups: &[QueryGroup], cluster: &[usize], as_of: NaiveDate) -> String {
    let first = &groups[cluster[0]];
    let known_at = KnownAt::of(first.members[0].0, source_schema(first.source))
        .expect("clusters hold windowed sources");
    let windows = cluster
        .iter()
        .flat_map(|&g| groups[g].members.iter().map(|(_, w)| *w));
    let mut conditions = vec!["user_id IS NOT NULL".to_string()];
    conditions.extend(time_conditions(&known_at, first.time, windows, as_of));
    format!(
        "SELECT * FROM {} WHERE {}",
        first.source,
        conditions.join(" AND ")
    )
}

fn feature_name(family: &FeatureFamily, window: Option<u32>, key: Option<&str>) -> String {
    let mut name = family.name.clone();
    if let Some(days) = window {
        name.push_str(&format!("_{days}d"));
    }
    if let Some(key) = key {
        name.push_str(&format!("[{}={key}]", family.key_label()));
    }
    name
}

fn apply(transform: Transform, v: f64) -> f32 {
    match transform {
        Transform::None => v as f32,
        Transform::Log1p => v.max(0.0).ln_1p() as f32,
    }
}

/// Users that exist at `as_of`: in the newest profile snapshot before it, signed up before it.
pub async fn population(
    ctx: &SessionContext,
    snapshot: NaiveDate,
    as_of: NaiveDate,
) -> Result<Vec<u64>, FeatureError> {
    let sql = format!(
        "SELECT DISTINCT user_id FROM profiles WHERE dt = '{snapshot}' AND signup_date < {} ",
        sql_date(as_of)
    );
    let batches = run(ctx, "population", &sql).await?;
    let mut users: Vec<u64> = batches
        .iter()
        .flat_map(|b| b.column(0).as_primitive::<UInt64Type>().values().to_vec())
        .collect();
    users.sort_unstable();
    Ok(users)
}

async fn run(
    ctx: &SessionContext,
    family: &str,
    sql: &str,
) -> Result<Vec<RecordBatch>, FeatureError> {
    crate::sql::collect(ctx, sql)
        .await
        .map_err(|error| FeatureError::Query {
            family: family.to_string(),
            sql: sql.to_string(),
            error,
        })
}

/// The SQL redflower runs as of `as_of` (`fused`), or one query per family and window as a
/// plain SQL job would, each with a label naming its features; for tools that run the same
/// aggregations elsewhere (the DuckDB benchmark).
pub fn family_queries(
    config: &FeatureConfig,
    as_of: NaiveDate,
    snapshot: NaiveDate,
    fused: bool,
) -> Vec<(String, String)> {
    let groups = if fused {
        query_groups(config)
    } else {
        query_groups(config)
            .into_iter()
            .flat_map(|g| {
                let (source, key, time) = (g.source, g.key, g.time);
                g.members.into_iter().map(move |member| QueryGroup {
                    source,
                    key,
                    time,
                    members: vec![member],
                })
            })
            .collect()
    };
    groups
        .iter()
        .map(|group| (group.label(), group_sql(group, as_of, Some(snapshot))))
        .collect()
}

/// One query's result with its keys interned: `row_keys[b][r]` indexes `keys` for row r of
/// batch b, so support counting and id lookup never touch strings per row.
struct GroupResult {
    batches: Vec<RecordBatch>,
    keys: Vec<Option<String>>,
    row_keys: Vec<Vec<u32>>,
}

fn intern_keys(label: &str, batches: Vec<RecordBatch>) -> Result<GroupResult, FeatureError> {
    let problem = |e: datafusion::arrow::error::ArrowError| FeatureError::Result {
        family: label.to_string(),
        problem: e.to_string(),
    };
    let mut keys: Vec<Option<String>> = vec![None];
    let mut index: HashMap<String, u32> = HashMap::new();
    let mut row_keys = Vec::with_capacity(batches.len());
    for batch in &batches {
        // Arrow packs each batch's keys into a dictionary (hashing native values, not text);
        // only its few distinct values are turned into text and looked up here.
        let column = batch.column(1);
        let value_type = match column.data_type() {
            DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 | DataType::Null => {
                DataType::Utf8
            }
            other => other.clone(),
        };
        let packed = cast(
            column,
            &DataType::Dictionary(Box::new(DataType::UInt32), Box::new(value_type)),
        )
        .map_err(problem)?;
        let packed = packed.as_dictionary::<UInt32Type>();
        let values = cast(packed.values(), &DataType::Utf8).map_err(problem)?;
        let values = values.as_string::<i32>();
        let global: Vec<u32> = (0..values.len())
            .map(|i| {
                if values.is_null(i) {
                    return 0;
                }
                let key = values.value(i);
                if let Some(&id) = index.get(key) {
                    return id;
                }
                let id = keys.len() as u32;
                keys.push(Some(key.to_string()));
                index.insert(key.to_string(), id);
                id
            })
            .collect();
        let rows = packed
            .keys()
            .iter()
            .map(|key| key.map_or(0, |k| global[k as usize]))
            .collect();
        row_keys.push(rows);
    }
    Ok(GroupResult {
        batches,
        keys,
        row_keys,
    })
}

/// Long rows being assembled: (user, feature id, value).
#[derive(Default)]
struct LongRows {
    user_ids: Vec<u64>,
    feature_ids: Vec<u32>,
    values: Vec<f32>,
}

/// Adds the features of member column `c{column}`: keys with enough support, at most top-k,
/// ids from the dictionary in key order so they do not depend on hash order.
fn add_member(
    result: &GroupResult,
    column: usize,
    family: &FeatureFamily,
    window: Option<u32>,
    dictionary: &mut FeatureDictionary,
    out: &mut LongRows,
) -> usize {
    let value_column = column + 2;
    let mut support = vec![0u64; result.keys.len()];
    for (batch, keys) in result.batches.iter().zip(&result.row_keys) {
        let values = batch.column(value_column).as_primitive::<Float64Type>();
        for (row, key) in keys.iter().enumerate() {
            if values.is_valid(row) {
                support[*key as usize] += 1;
            }
        }
    }
    let mut kept: Vec<u32> = (0..support.len() as u32)
        .filter(|&k| support[k as usize] > 0 && support[k as usize] >= family.min_support)
        .collect();
    kept.sort_by(|&a, &b| {
        support[b as usize]
            .cmp(&support[a as usize])
            .then_with(|| result.keys[a as usize].cmp(&result.keys[b as usize]))
    });
    if let Some(k) = family.top_k {
        kept.truncate(k);
    }
    kept.sort_by(|&a, &b| result.keys[a as usize].cmp(&result.keys[b as usize]));
    let mut ids: Vec<Option<u32>> = vec![None; result.keys.len()];
    for k in &kept {
        let name = feature_name(family, window, result.keys[*k as usize].as_deref());
        ids[*k as usize] = Some(dictionary.id_or_insert(&name, &family.name));
    }
    let before = out.values.len();
    for (batch, keys) in result.batches.iter().zip(&result.row_keys) {
        let users = batch.column(0).as_primitive::<UInt64Type>();
        let values = batch.column(value_column).as_primitive::<Float64Type>();
        for (row, key) in keys.iter().enumerate() {
            if let (true, Some(id)) = (values.is_valid(row), ids[*key as usize]) {
                out.user_ids.push(users.value(row));
                out.feature_ids.push(id);
                out.values.push(apply(family.transform, values.value(row)));
            }
        }
    }
    out.values.len() - before
}

/// Builds the features of every user alive at `as_of`. The sources must already be
/// registered with `ctx` (see `sources::validate_and_register`).
pub async fn build(
    ctx: &SessionContext,
    store: &Store,
    config: &FeatureConfig,
    dictionary: &mut FeatureDictionary,
    as_of: NaiveDate,
) -> Result<FeatureSet, FeatureError> {
    let snapshot = sources::snapshot_before(store, "profiles", as_of).await?;
    let users = population(ctx, snapshot, as_of).await?;
    let mut long = LongRows::default();

    // In this process, up to QUERIES_AT_ONCE groups on one source share one scan of it (see
    // `shared_scan`) and run at once, fed by it. The other groups run a few at a time so small ones
    // (profiles, certificates) overlap the big ones. Results are assembled in config order
    // so dictionary ids stay deterministic.
    let groups = query_groups(config);
    let in_process = ctx
        .state()
        .config()
        .get_extension::<crate::pipelines::InProcess>()
        .is_some();
    let clusters = if in_process {
        shared_scan_clusters(&groups, QUERIES_AT_ONCE)
    } else {
        Vec::new()
    };
    // group index -> (cluster, position among its queries); a cluster's scan starts when
    // the loop below first needs one of its groups
    let mut shared: HashMap<usize, (usize, usize)> = HashMap::new();
    for (c, cluster) in clusters.iter().enumerate() {
        for (position, &g) in cluster.iter().enumerate() {
            shared.insert(g, (c, position));
        }
    }
    let mut scans: Vec<Option<(shared_scan::SharedScan, String, std::time::Instant)>> =
        clusters.iter().map(|_| None).collect();
    let mut results = futures::stream::iter(
        groups
            .iter()
            .enumerate()
            .filter(|(g, _)| !shared.contains_key(g))
            .map(|(_, group)| async move {
                let label = group.label();
                let sql = group_sql(group, as_of, Some(snapshot));
                let started = std::time::Instant::now();
                let batches = run(ctx, &label, &sql).await?;
                Ok::<_, FeatureError>((label, batches, started.elapsed().as_secs_f64()))
            }),
    )
    .buffered(QUERIES_AT_ONCE);
    // drawn only on a terminal; the scheduler's logs get the debug lines instead
    let progress = indicatif::ProgressBar::new(groups.len() as u64).with_style(
        indicatif::ProgressStyle::with_template(
            "features as of {msg} {bar:40} {pos}/{len} queries  {elapsed}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    progress.set_message(as_of.to_string());
    for (g, group) in groups.iter().enumerate() {
        let (label, batches, query_seconds) = match shared.get(&g) {
            Some(&(c, position)) => {
                let label = group.label();
                if scans[c].is_none() {
                    let cluster = &clusters[c];
                    let scan_sql = shared_scan_sql(&groups, cluster, as_of);
                    let queries = cluster
                        .iter()
                        .map(|&g| {
                            let table = shared_table(&groups[g], g);
                            let sql = group_sql_on(&groups[g], &table, as_of, Some(snapshot));
                            (table, sql)
                        })
                        .collect();
                    let started = std::time::Instant::now();
                    let scan =
                        shared_scan::start(ctx, &scan_sql, queries)
                            .await
                            .map_err(|error| FeatureError::Query {
                                family: format!("{} (shared scan)", groups[cluster[0]].source),
                                sql: scan_sql.clone(),
                                error,
                            })?;
                    scans[c] = Some((scan, scan_sql, started));
                }
                let (scan, scan_sql, started) = scans[c].as_mut().expect("started above");
                let batches = scan
                    .result(position)
                    .await
                    .map_err(|error| FeatureError::Query {
                        family: label.clone(),
                        sql: format!(
                            "{scan_sql}\n  feeding: {}",
                            group_sql_on(group, &shared_table(group, g), as_of, Some(snapshot))
                        ),
                        error,
                    })?;
                (label, batches, started.elapsed().as_secs_f64())
            }
            None => results.next().await.expect("one result per group")?,
        };
        progress.inc(1);
        let started = std::time::Instant::now();
        let result = intern_keys(&label, batches)?;
        let mut rows = 0;
        for (column, (family, window)) in group.members.iter().enumerate() {
            rows += add_member(&result, column, family, *window, dictionary, &mut long);
        }
        debug!(
            group = %label,
            rows,
            query_seconds,
            assemble_seconds = started.elapsed().as_secs_f64(),
            "feature group built"
        );
    }
    progress.finish_and_clear();
    let LongRows {
        mut user_ids,
        mut feature_ids,
        mut values,
    } = long;

    for ratio in &config.ratios {
        let (Some(numerator), Some(denominator)) = (
            dictionary.id(&ratio.numerator),
            dictionary.id(&ratio.denominator),
        ) else {
            continue; // a side with no support tonight: no ratio either
        };
        let denominators: HashMap<u64, f32> = (0..user_ids.len())
            .filter(|&i| feature_ids[i] == denominator && values[i] != 0.0)
            .map(|i| (user_ids[i], values[i]))
            .collect();
        let ratios: Vec<(u64, f32)> = (0..user_ids.len())
            .filter(|&i| feature_ids[i] == numerator)
            .filter_map(|i| Some((user_ids[i], values[i] / denominators.get(&user_ids[i])?)))
            .collect();
        if ratios.is_empty() {
            continue;
        }
        let id = dictionary.id_or_insert(&ratio.name, &ratio.name);
        for (user, value) in ratios {
            user_ids.push(user);
            feature_ids.push(id);
            values.push(value);
        }
    }

    // Sort by (user, feature) so CSR rows come straight off the table.
    let mut order: Vec<u32> = (0..user_ids.len() as u32).collect();
    order.par_sort_unstable_by_key(|&i| (user_ids[i as usize], feature_ids[i as usize]));
    let mut set = FeatureSet {
        as_of,
        users,
        user_ids: Vec::with_capacity(order.len()),
        feature_ids: Vec::with_capacity(order.len()),
        values: Vec::with_capacity(order.len()),
    };
    // rows of users that do not exist yet at as_of (no profile) are not features of anyone;
    // both lists are sorted by user, so one walk finds who is alive
    let mut next_alive = set.users.iter().copied().peekable();
    for i in order {
        let i = i as usize;
        let user = user_ids[i];
        while next_alive.next_if(|&alive| alive < user).is_some() {}
        if next_alive.peek() == Some(&user) {
            set.user_ids.push(user_ids[i]);
            set.feature_ids.push(feature_ids[i]);
            set.values.push(values[i]);
        }
    }
    Ok(set)
}

/// Writes the long table to `features/dt=<as_of>/part-00000.parquet`, replacing a rerun's.
pub async fn write(store: &Store, set: &FeatureSet) -> Result<(), FeatureError> {
    let folder = format!("features/dt={}", set.as_of);
    store.delete_prefix(&folder).await?;
    let schema = schema::FEATURES.arrow();
    let mut batches = Vec::new();
    let chunk = 1 << 20;
    for start in (0..set.nnz()).step_by(chunk) {
        let end = (start + chunk).min(set.nnz());
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(UInt64Array::from(set.user_ids[start..end].to_vec())),
                Arc::new(UInt32Array::from(set.feature_ids[start..end].to_vec())),
                Arc::new(Float32Array::from(set.values[start..end].to_vec())),
            ],
        )
        .map_err(|e| FeatureError::Result {
            family: "features table".into(),
            problem: e.to_string(),
        })?;
        batches.push(batch);
    }
    store
        .write_parquet(&format!("{folder}/part-00000.parquet"), schema, &batches)
        .await?;
    // users without any feature are scored too: keep the population next to the rows
    let users_schema = Arc::new(datafusion::arrow::datatypes::Schema::new(vec![
        datafusion::arrow::datatypes::Field::new("user_id", DataType::UInt64, false),
    ]));
    let users = RecordBatch::try_new(
        users_schema.clone(),
        vec![Arc::new(UInt64Array::from(set.users.clone()))],
    )
    .map_err(|e| FeatureError::Result {
        family: "population".into(),
        problem: e.to_string(),
    })?;
    store
        .write_parquet(&users_file(set.as_of), users_schema, &[users])
        .await?;
    info!(as_of = %set.as_of, rows = set.nnz(), "features written");
    Ok(())
}

fn users_file(as_of: NaiveDate) -> String {
    format!("features/dt={as_of}/users.parquet")
}

/// Reads back what `write` wrote for `as_of`: the set a resumed run continues with.
pub async fn read(store: &Store, as_of: NaiveDate) -> Result<FeatureSet, FeatureError> {
    let problem = |problem: String| FeatureError::Result {
        family: format!("features/dt={as_of}"),
        problem,
    };
    let mut set = FeatureSet {
        as_of,
        users: Vec::new(),
        user_ids: Vec::new(),
        feature_ids: Vec::new(),
        values: Vec::new(),
    };
    for batch in store.read_parquet(&users_file(as_of)).await? {
        let users = batch
            .column(0)
            .as_primitive_opt::<UInt64Type>()
            .ok_or_else(|| problem("users.parquet: user_id is not UInt64".into()))?;
        set.users.extend(users.values().iter());
    }
    for batch in store
        .read_parquet(&format!("features/dt={as_of}/part-00000.parquet"))
        .await?
    {
        let (Some(users), Some(ids), Some(values)) = (
            batch.column(0).as_primitive_opt::<UInt64Type>(),
            batch
                .column(1)
                .as_primitive_opt::<datafusion::arrow::datatypes::UInt32Type>(),
            batch
                .column(2)
                .as_primitive_opt::<datafusion::arrow::datatypes::Float32Type>(),
        ) else {
            return Err(problem(
                "part-00000.parquet does not have the features schema".into(),
            ));
        };
        set.user_ids.extend(users.values().iter());
        set.feature_ids.extend(ids.values().iter());
        set.values.extend(values.values().iter());
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml_text: &str) -> FeatureConfig {
        FeatureConfig::parse(toml_text, "t.toml").unwrap()
    }

    fn sql(config: &FeatureConfig) -> Vec<String> {
        let as_of = NaiveDate::from_ymd_opt(2026, 6, 30).unwrap();
        query_groups(config)
            .iter()
            .map(|g| group_sql(g, as_of, None))
            .collect()
    }

    #[test]
    fn windowed_sql_bounds_time_on_both_sides_and_prunes_partitions() {
        let c = config(
            "[[family]]\nname='visits'\nsource='events'\nkey='merchant_id'\naggregate='count'\nwindows=['30d']",
        );
        let sql = &sql(&c)[0];
        assert!(
            sql.contains("event_time < TIMESTAMP '2026-06-30 00:00:00'"),
            "{sql}"
        );
        assert!(
            sql.contains("event_time >= TIMESTAMP '2026-05-31 00:00:00'"),
            "{sql}"
        );
        assert!(
            sql.contains("dt >= '2026-05-31'") && sql.contains("dt < '2026-06-30'"),
            "{sql}"
        );
    }

    #[test]
    fn groups_on_one_windowed_source_share_scans_of_at_most_the_given_size() {
        let c = config(
            "[[family]]\nname='a'\nsource='events'\nkey='merchant_id'\naggregate='count'\nwindows=['30d']\n\
             [[family]]\nname='b'\nsource='events'\nkey='category'\naggregate='count'\nwindows=['90d']\n\
             [[family]]\nname='c'\nsource='profiles'\nkey='region'\naggregate='indicator'\n\
             [[family]]\nname='d'\nsource='events'\naggregate='count'\nwindows=['7d']\n\
             [[family]]\nname='e'\nsource='events'\nkey='kind'\naggregate='count'\nwindows=['30d']",
        );
        let groups = query_groups(&c);
        // profiles (a snapshot) never shares; a lone leftover runs on its own
        assert_eq!(shared_scan_clusters(&groups, 3), vec![vec![0, 1, 3]]);
        assert_eq!(
            shared_scan_clusters(&groups, 2),
            vec![vec![0, 1], vec![3, 4]]
        );
        assert!(shared_scan_clusters(&groups, 1).is_empty());
        // the scan covers the longest window of its groups, and every row they could want
        let scan = shared_scan_sql(
            &groups,
            &[0, 1, 3],
            NaiveDate::from_ymd_opt(2026, 6, 30).unwrap(),
        );
        assert!(scan.contains("dt >= '2026-04-01'"), "{scan}");
        assert!(
            scan.starts_with("SELECT * FROM events WHERE user_id IS NOT NULL"),
            "{scan}"
        );
        assert!(!scan.contains("merchant_id"), "{scan}");
    }

    #[test]
    fn families_on_one_source_and_key_share_one_query_with_a_filtered_column_each() {
        let c = config(
            "[[family]]\nname='spend'\nsource='events'\nfilter=\"kind = 'purchase'\"\nkey='category'\naggregate='sum'\nvalue='amount'\nwindows=['30d','90d']\n\
             [[family]]\nname='visits'\nsource='events'\nfilter=\"kind = 'visit'\"\nkey='category'\naggregate='count'\nwindows=['7d']\n\
             [[family]]\nname='merchants'\nsource='events'\nkey='merchant_id'\naggregate='count'",
        );
        let queries = sql(&c);
        assert_eq!(queries.len(), 2, "{queries:?}");
        let fused = &queries[0];
        assert!(
            fused.contains(
                "SUM(amount) FILTER (WHERE (kind = 'purchase') AND event_time >= TIMESTAMP '2026-05-31 00:00:00') AS DOUBLE) AS c0"
            ),
            "{fused}"
        );
        assert!(
            fused.contains("AS c1") && fused.contains("AS c2"),
            "{fused}"
        );
        // the longest window bounds the scan; rows no member wants are dropped up front
        assert!(fused.contains("dt >= '2026-04-01'"), "{fused}");
        assert!(
            fused.contains("((kind = 'purchase') OR (kind = 'visit'))"),
            "{fused}"
        );
        assert!(
            fused.contains("NULLIF(COUNT(*) FILTER (WHERE (kind = 'visit')"),
            "{fused}"
        );
    }

    #[test]
    fn a_known_at_override_bounds_on_it_and_keeps_only_the_safe_partition_bound() {
        let c = config(
            "[[family]]\nname='late'\nsource='repayments'\naggregate='count'\ntime=\"due_date + INTERVAL '30' DAY\"\nwindows=['120d']",
        );
        let sql = &sql(&c)[0];
        assert!(
            sql.contains("CAST((due_date + INTERVAL '30' DAY) AS DATE) < DATE '2026-06-30'"),
            "{sql}"
        );
        assert!(!sql.contains("dt >="), "{sql}");
    }

    #[test]
    fn share_divides_by_the_users_total_over_all_keys() {
        let c = config(
            "[[family]]\nname='share'\nsource='events'\nkey='category'\naggregate='share'\nvalue='amount'\nwindows=['90d']",
        );
        let sql = &sql(&c)[0];
        assert!(
            sql.contains("c0 / NULLIF(SUM(c0) OVER (PARTITION BY user_id), 0) AS c0"),
            "{sql}"
        );
        assert!(sql.contains("GROUP BY user_id, category"), "{sql}");
    }

    #[test]
    fn names_read_like_the_docs() {
        let c = config(
            "[[family]]\nname='visits'\nsource='events'\nkey='merchant_id'\naggregate='count'\nwindows=['30d']",
        );
        assert_eq!(
            feature_name(&c.families[0], Some(30), Some("8812")),
            "visits_30d[merchant_id=8812]"
        );
    }
}
