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

/// Queries one shared scan feeds at once, each with its own hash aggregation in the engine's
/// pool. Four ran out of the 4 GB pool at 1,000,000 users while the distinct count of
/// merchants kept a hash set per user; since it rides on the merchant query, four fit (peak
/// RSS 5.9 GiB) and all four event groups decode events once.
const QUERIES_PER_SHARED_SCAN: usize = 4;

fn sql_date(date: NaiveDate) -> String {
    format!("DATE '{date}'")
}

/// How a family's rows are placed in time: the expression compared with as-of bounds (also
/// what days-since-last takes the newest of) and the literal type it compares with.
struct KnownAt<'a> {
    compared: String,
    table: Option<&'a schema::TableSchema>,
}

impl KnownAt<'_> {
    fn of<'t>(family: &FeatureFamily, table: &'t schema::TableSchema) -> Option<KnownAt<'t>> {
        if let Some(time) = &family.time {
            return Some(KnownAt {
                compared: format!("CAST(({time}) AS DATE)"),
                table: None,
            });
        }
        let column = table.time_column.as_ref()?;
        Some(KnownAt {
            compared: column.clone(),
            table: Some(table),
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

/// The key a family's rows are grouped by. A distinct count without a key is grouped by its
/// value: one indicator per (user, value) that assembly counts per user. DataFusion keeps a
/// hash set per group for COUNT(DISTINCT), and the value is often a key another family
/// already groups by (distinct merchants next to visits per merchant), so the count then
/// costs one more aggregate column in that query, not a query of its own.
fn grouping_key(family: &FeatureFamily) -> Option<&str> {
    match (family.aggregate, &family.key) {
        (Aggregate::DistinctCount, None) => family.value.as_deref(),
        (_, key) => key.as_deref(),
    }
}

/// Whether member `family` of a group keyed by `key` is a distinct count taken over the key.
fn counts_keys(family: &FeatureFamily, key: Option<&str>) -> bool {
    family.aggregate == Aggregate::DistinctCount
        && family.key.is_none()
        && key.is_some()
        && key == family.value.as_deref()
}

fn query_groups(config: &FeatureConfig) -> Vec<QueryGroup<'_>> {
    let mut groups: Vec<QueryGroup> = Vec::new();
    for family in &config.families {
        let (source, key, time) = (
            family.source.as_str(),
            grouping_key(family),
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
    group_sql_on(group, group.source, &[], as_of, snapshot)
}

/// `group_sql` reading `table` (the source's rows, or a superset of them) instead, whose
/// rows already meet `held` (a shared scan's conditions): those are not evaluated again.
fn group_sql_on(
    group: &QueryGroup,
    table: &str,
    held: &[String],
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
    conditions.retain(|condition| !held.contains(condition));
    // rows no member wants are dropped before the aggregation
    let filters: Option<Vec<String>> = group
        .members
        .iter()
        .map(|(family, _)| family.filter.as_ref().map(|f| format!("({f})")))
        .collect();
    // a condition the WHERE clause already holds for every row is not evaluated again per
    // member: one shared filter, or the window that bounds the scan
    let mut shared_filter = false;
    if let Some(mut filters) = filters {
        filters.sort();
        filters.dedup();
        shared_filter = filters.len() == 1;
        conditions.push(format!("({})", filters.join(" OR ")));
    }
    let longest_window = group
        .members
        .iter()
        .map(|(_, w)| *w)
        .max_by_key(|w| w.unwrap_or(u32::MAX))
        .flatten();

    let columns: Vec<String> = group
        .members
        .iter()
        .enumerate()
        .map(|(i, (family, window))| {
            let mut wanted = Vec::new();
            if let (Some(filter), false) = (&family.filter, shared_filter) {
                wanted.push(format!("({filter})"));
            }
            if let (Some(days), Some(known_at)) = (window, &known_at) {
                if *window != longest_window {
                    let from = as_of - Duration::days(*days as i64);
                    wanted.push(format!("{} >= {}", known_at.compared, known_at.bound(from)));
                }
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
                Aggregate::DistinctCount if counts_keys(family, group.key) => {
                    format!("MAX(1){only}")
                }
                Aggregate::DistinctCount => format!("NULLIF(COUNT(DISTINCT {value}){only}, 0)"),
                Aggregate::Indicator => format!("MAX(1){only}"),
                // divided by the user's total over all keys when the result is assembled
                Aggregate::Share => format!("SUM({value}){only}"),
                // the newest time per group first, then its day: one cast per group, not per
                // row (a day is monotone in its time, so the newest day is the newest time's)
                Aggregate::DaysSinceLast => format!(
                    "{} - CAST(CAST(MAX({}){only} AS DATE) AS INT)",
                    (as_of - NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid")).num_days(),
                    known_at
                        .as_ref()
                        .expect("validated: days_since_last needs time")
                        .compared
                ),
            };
            format!("CAST({aggregate} AS DOUBLE) AS c{i}")
        })
        .collect();
    let group_by = match group.key {
        Some(k) => format!("user_id, {k}"),
        None => "user_id".to_string(),
    };
    let conditions = if conditions.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conditions.join(" AND "))
    };
    format!(
        "SELECT user_id, {key} AS k, {columns} FROM {table}{conditions} GROUP BY {group_by}",
        columns = columns.join(", "),
    )
}

/// Groups that can share one scan: two to `at_most` on one windowed source with one notion
/// of time (by index into `groups`). Every query of a cluster runs at once, so `at_most`
/// bounds the hash aggregations sharing the engine's memory pool (see
/// QUERIES_PER_SHARED_SCAN).
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

/// The conditions of the one scan a cluster shares: the source's rows in the union of its
/// groups' time ranges.
fn shared_scan_conditions(
    groups: &[QueryGroup],
    cluster: &[usize],
    as_of: NaiveDate,
) -> Vec<String> {
    let first = &groups[cluster[0]];
    let known_at = KnownAt::of(first.members[0].0, source_schema(first.source))
        .expect("clusters hold windowed sources");
    let windows = cluster
        .iter()
        .flat_map(|&g| groups[g].members.iter().map(|(_, w)| *w));
    let mut conditions = vec!["user_id IS NOT NULL".to_string()];
    conditions.extend(time_conditions(&known_at, first.time, windows, as_of));
    conditions
}

/// The shared scan itself: every column of `source`'s rows that meet `conditions`.
fn shared_scan_sql(source: &str, conditions: &[String]) -> String {
    format!("SELECT * FROM {source} WHERE {}", conditions.join(" AND "))
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

/// The SQL redflower runs as of `as_of` (`fused`; a share's division and the count of a
/// distinct count's keys happen after it, in assembly), or one query per family and window as
/// a plain SQL job would write it (COUNT(DISTINCT), a share divided by a window total), each
/// with a label naming its features; for tools that run the same aggregations elsewhere (the
/// DuckDB benchmark).
pub fn family_queries(
    config: &FeatureConfig,
    as_of: NaiveDate,
    snapshot: NaiveDate,
    fused: bool,
) -> Vec<(String, String)> {
    if fused {
        return query_groups(config)
            .iter()
            .map(|group| (group.label(), group_sql(group, as_of, Some(snapshot))))
            .collect();
    }
    config
        .families
        .iter()
        .flat_map(|family| {
            family
                .window_days()
                .into_iter()
                .map(move |window| QueryGroup {
                    source: family.source.as_str(),
                    key: family.key.as_deref(),
                    time: family.time.as_deref(),
                    members: vec![(family, window)],
                })
        })
        .map(|group| {
            let sql = group_sql(&group, as_of, Some(snapshot));
            let sql = match group.members[0].0.aggregate {
                Aggregate::Share => format!(
                    "SELECT user_id, k, c0 / NULLIF(SUM(c0) OVER (PARTITION BY user_id), 0) AS c0 \
                     FROM ({sql})"
                ),
                _ => sql,
            };
            (group.label(), sql)
        })
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
    // a share divides by the user's total over all keys, before support and top-k drop any
    let totals = (family.aggregate == Aggregate::Share)
        .then(|| per_user_sum(result, value_column, |value| value));
    let before = out.values.len();
    for (batch, keys) in result.batches.iter().zip(&result.row_keys) {
        let users = batch.column(0).as_primitive::<UInt64Type>();
        let values = batch.column(value_column).as_primitive::<Float64Type>();
        for (row, key) in keys.iter().enumerate() {
            if let (true, Some(id)) = (values.is_valid(row), ids[*key as usize]) {
                let user = users.value(row);
                let value = match &totals {
                    None => values.value(row),
                    Some(totals) => match totals.get(&user) {
                        Some(&total) if total != 0.0 => values.value(row) / total,
                        _ => continue,
                    },
                };
                out.user_ids.push(user);
                out.feature_ids.push(id);
                out.values.push(apply(family.transform, value));
            }
        }
    }
    out.values.len() - before
}

/// Per user, the sum over all keys of `weigh` of a result column's non-null values.
fn per_user_sum(
    result: &GroupResult,
    value_column: usize,
    weigh: impl Fn(f64) -> f64,
) -> HashMap<u64, f64> {
    let mut sums: HashMap<u64, f64> = HashMap::new();
    for batch in &result.batches {
        let users = batch.column(0).as_primitive::<UInt64Type>();
        let values = batch.column(value_column).as_primitive::<Float64Type>();
        for row in 0..batch.num_rows() {
            if values.is_valid(row) {
                *sums.entry(users.value(row)).or_default() += weigh(values.value(row));
            }
        }
    }
    sums
}

/// Adds a distinct count taken over its group's key: per user, how many keys have the
/// member's indicator (`counts_keys`). One feature, with the support of the users it counts.
fn add_key_count(
    result: &GroupResult,
    column: usize,
    family: &FeatureFamily,
    window: Option<u32>,
    dictionary: &mut FeatureDictionary,
    out: &mut LongRows,
) -> usize {
    let counts = per_user_sum(result, column + 2, |_| 1.0);
    if counts.is_empty() || (counts.len() as u64) < family.min_support {
        return 0;
    }
    let id = dictionary.id_or_insert(&feature_name(family, window, None), &family.name);
    let rows = counts.len();
    for (user, count) in counts {
        out.user_ids.push(user);
        out.feature_ids.push(id);
        out.values.push(apply(family.transform, count));
    }
    rows
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

    // In this process, up to QUERIES_PER_SHARED_SCAN groups on one source share one scan of
    // it (see `shared_scan`) and run at once, fed by it. The other groups run a few at a time
    // so small ones (profiles, certificates) overlap the big ones. Results are assembled in
    // config order so dictionary ids stay deterministic.
    let groups = query_groups(config);
    let in_process = ctx
        .state()
        .config()
        .get_extension::<crate::pipelines::InProcess>()
        .is_some();
    let clusters = if in_process {
        shared_scan_clusters(&groups, QUERIES_PER_SHARED_SCAN)
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
    // per cluster once started: the scan, its SQL, the SQL of the queries it feeds, when
    type Started = (
        shared_scan::SharedScan,
        String,
        Vec<String>,
        std::time::Instant,
    );
    let mut scans: Vec<Option<Started>> = clusters.iter().map(|_| None).collect();
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
                    let held = shared_scan_conditions(&groups, cluster, as_of);
                    let scan_sql = shared_scan_sql(groups[cluster[0]].source, &held);
                    let queries: Vec<(String, String)> = cluster
                        .iter()
                        .map(|&g| {
                            let table = shared_table(&groups[g], g);
                            let sql =
                                group_sql_on(&groups[g], &table, &held, as_of, Some(snapshot));
                            (table, sql)
                        })
                        .collect();
                    let fed: Vec<String> = queries.iter().map(|(_, sql)| sql.clone()).collect();
                    let started = std::time::Instant::now();
                    let scan =
                        shared_scan::start(ctx, &scan_sql, queries)
                            .await
                            .map_err(|error| FeatureError::Query {
                                family: format!("{} (shared scan)", groups[cluster[0]].source),
                                sql: scan_sql.clone(),
                                error,
                            })?;
                    scans[c] = Some((scan, scan_sql, fed, started));
                }
                let (scan, scan_sql, fed, started) = scans[c].as_mut().expect("started above");
                let batches = scan
                    .result(position)
                    .await
                    .map_err(|error| FeatureError::Query {
                        family: label.clone(),
                        sql: format!("{scan_sql}\n  feeding: {}", fed[position]),
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
            rows += if counts_keys(family, group.key) {
                add_key_count(&result, column, family, *window, dictionary, &mut long)
            } else {
                add_member(&result, column, family, *window, dictionary, &mut long)
            };
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

    Ok(in_user_order(
        as_of,
        users,
        LongRows {
            user_ids,
            feature_ids,
            values,
        },
    ))
}

/// Where each user of a sorted population sits in it: a slot per id when ids are packed
/// (synthetic and most real worlds number users densely), a hash map otherwise.
enum UserSlots {
    Dense { first: u64, slots: Vec<u32> },
    Sparse(HashMap<u64, u32>),
}

impl UserSlots {
    fn new(users: &[u64]) -> UserSlots {
        match (users.first(), users.last()) {
            (Some(&first), Some(&last)) if last - first < 4 * users.len() as u64 + 1024 => {
                let mut slots = vec![u32::MAX; (last - first + 1) as usize];
                for (position, &user) in users.iter().enumerate() {
                    slots[(user - first) as usize] = position as u32;
                }
                UserSlots::Dense { first, slots }
            }
            _ => UserSlots::Sparse(
                users
                    .iter()
                    .enumerate()
                    .map(|(position, &user)| (user, position as u32))
                    .collect(),
            ),
        }
    }

    fn of(&self, user: u64) -> Option<u32> {
        match self {
            UserSlots::Dense { first, slots } => user
                .checked_sub(*first)
                .and_then(|offset| slots.get(offset as usize))
                .copied()
                .filter(|&slot| slot != u32::MAX),
            UserSlots::Sparse(map) => map.get(&user).copied(),
        }
    }
}

/// The rows of the population's users in (user, feature) order, so CSR rows come straight
/// off the table; rows of users that do not exist at `as_of` (no profile) are nobody's
/// features. A counting sort by user, then each user's few rows by feature: linear in the
/// rows, where a comparison sort of all of them was the largest cost of assembly.
fn in_user_order(as_of: NaiveDate, users: Vec<u64>, rows: LongRows) -> FeatureSet {
    let slots = UserSlots::new(&users);
    let LongRows {
        user_ids,
        feature_ids,
        values,
    } = rows;
    let positions: Vec<u32> = user_ids
        .par_iter()
        .map(|&user| slots.of(user).unwrap_or(u32::MAX))
        .collect();
    drop(user_ids);
    let mut starts = vec![0usize; users.len() + 1];
    for &position in positions.iter().filter(|&&p| p != u32::MAX) {
        starts[position as usize + 1] += 1;
    }
    for i in 1..starts.len() {
        starts[i] += starts[i - 1];
    }
    let mut next = starts.clone();
    let mut placed = vec![(0u32, 0f32); starts[users.len()]];
    for (i, &position) in positions.iter().enumerate() {
        if position != u32::MAX {
            let at = &mut next[position as usize];
            placed[*at] = (feature_ids[i], values[i]);
            *at += 1;
        }
    }
    drop((positions, feature_ids, values));
    let mut per_user: Vec<&mut [(u32, f32)]> = Vec::with_capacity(users.len());
    let mut rest = placed.as_mut_slice();
    for bounds in starts.windows(2) {
        let (mine, others) = rest.split_at_mut(bounds[1] - bounds[0]);
        per_user.push(mine);
        rest = others;
    }
    per_user
        .par_iter_mut()
        .for_each(|rows| rows.sort_unstable_by_key(|&(feature, _)| feature));
    drop(per_user);
    let mut user_ids = Vec::with_capacity(placed.len());
    for (position, bounds) in starts.windows(2).enumerate() {
        user_ids.extend(std::iter::repeat_n(users[position], bounds[1] - bounds[0]));
    }
    let (feature_ids, values) = placed.into_iter().unzip();
    FeatureSet {
        as_of,
        users,
        user_ids,
        feature_ids,
        values,
    }
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
        let held = shared_scan_conditions(
            &groups,
            &[0, 1, 3],
            NaiveDate::from_ymd_opt(2026, 6, 30).unwrap(),
        );
        let scan = shared_scan_sql(groups[0].source, &held);
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
    fn a_share_is_divided_in_assembly_and_by_a_window_total_in_the_plain_export() {
        let c = config(
            "[[family]]\nname='share'\nsource='events'\nkey='category'\naggregate='share'\nvalue='amount'\nwindows=['90d']",
        );
        let sql = &sql(&c)[0];
        assert!(!sql.contains("OVER"), "{sql}");
        assert!(sql.contains("GROUP BY user_id, category"), "{sql}");
        let day = NaiveDate::from_ymd_opt(2026, 6, 30).unwrap();
        let plain = &family_queries(&c, day, day, false)[0].1;
        assert!(
            plain.contains("c0 / NULLIF(SUM(c0) OVER (PARTITION BY user_id), 0) AS c0"),
            "{plain}"
        );
    }

    #[test]
    fn conditions_the_where_clause_holds_are_not_repeated_per_member() {
        let c = config(
            "[[family]]\nname='spend'\nsource='events'\nfilter=\"kind = 'purchase'\"\nkey='category'\naggregate='sum'\nvalue='amount'\nwindows=['30d','90d']\n\
             [[family]]\nname='recency'\nsource='events'\nfilter=\"kind = 'purchase'\"\nkey='category'\naggregate='days_since_last'\nwindows=['90d']",
        );
        let sql = &sql(&c)[0];
        assert!(sql.contains("WHERE user_id IS NOT NULL"), "{sql}");
        assert!(sql.contains("AND ((kind = 'purchase'))"), "{sql}");
        assert!(
            sql.contains(
                "SUM(amount) FILTER (WHERE event_time >= TIMESTAMP '2026-05-31 00:00:00') AS DOUBLE) AS c0"
            ),
            "{sql}"
        );
        assert!(sql.contains("CAST(SUM(amount) AS DOUBLE) AS c1"), "{sql}");
        // the newest time per group, then its day
        assert!(
            sql.contains("CAST(CAST(MAX(event_time) AS DATE) AS INT) AS DOUBLE) AS c2"),
            "{sql}"
        );
    }

    #[test]
    fn a_distinct_count_rides_on_the_group_keyed_by_its_value() {
        let c = config(
            "[[family]]\nname='visits'\nsource='events'\nkey='merchant_id'\naggregate='count'\nwindows=['90d']\n\
             [[family]]\nname='merchants'\nsource='events'\naggregate='distinct_count'\nvalue='merchant_id'\nwindows=['30d']\n\
             [[family]]\nname='categories'\nsource='events'\nkey='kind'\naggregate='distinct_count'\nvalue='category'",
        );
        let queries = sql(&c);
        assert_eq!(queries.len(), 2, "{queries:?}");
        assert!(
            queries[0].contains("GROUP BY user_id, merchant_id"),
            "{}",
            queries[0]
        );
        assert!(
            queries[0].contains("CAST(MAX(1) FILTER (WHERE event_time >= TIMESTAMP '2026-05-31 00:00:00') AS DOUBLE) AS c1"),
            "{}",
            queries[0]
        );
        // a distinct count within a key stays a COUNT(DISTINCT)
        assert!(
            queries[1].contains("COUNT(DISTINCT category)"),
            "{}",
            queries[1]
        );
        let day = NaiveDate::from_ymd_opt(2026, 6, 30).unwrap();
        let plain = family_queries(&c, day, day, false);
        assert!(
            plain[1].1.contains("COUNT(DISTINCT merchant_id)"),
            "{}",
            plain[1].1
        );
        assert!(plain[1].1.contains("GROUP BY user_id"), "{}", plain[1].1);
    }

    #[test]
    fn rows_come_out_by_user_then_feature_without_users_that_do_not_exist() {
        // packed ids take the slot table, scattered ones the hash map: the same answer
        for users in [vec![3u64, 4, 5, 7], vec![3, 4, 5, 7_000_000_000]] {
            let last = *users.last().unwrap();
            let rows = LongRows {
                user_ids: vec![last, 3, 6, last, 3, 5, 2, 3],
                feature_ids: vec![9, 4, 1, 2, 1, 8, 1, 7],
                values: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0],
            };
            let day = NaiveDate::from_ymd_opt(2026, 6, 30).unwrap();
            let set = in_user_order(day, users.clone(), rows);
            assert_eq!(set.users, users);
            assert_eq!(set.user_ids, vec![3, 3, 3, 5, last, last]);
            assert_eq!(set.feature_ids, vec![1, 4, 7, 8, 2, 9]);
            assert_eq!(set.values, vec![5.0, 2.0, 8.0, 6.0, 4.0, 1.0]);
        }
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
