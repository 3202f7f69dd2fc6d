//! Planning: the feature families of `features.toml` as DataFusion SQL. Families on one
//! source with one key and one notion of time share one query; groups on one windowed source
//! can share one scan (`shared_scan`). Point in time: every query reads only rows known
//! strictly before the as-of date. Builds strings; runs only `population` and `run`.

use std::sync::Arc;

use chrono::{Duration, NaiveDate};
use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::UInt64Type;
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;

use super::spill::{GroupSink, GroupTally, MemberKind};
use super::{Aggregate, FeatureConfig, FeatureError, FeatureFamily};
use crate::schema;
use crate::spill::SpillFolder;
use crate::user_index::UserIndex;

pub(super) fn sql_date(date: NaiveDate) -> String {
    format!("DATE '{date}'")
}

/// Where a family's rows fall in its windows: the expression window bounds compare with (the
/// family's `time`, else the source's time column: when the fact happened), also what
/// days-since-last takes the newest of, and the literal type it compares with. Whether a row
/// may be read at all is `sources::known_before`: when the bank learned it.
pub(super) struct FactTime<'a> {
    compared: String,
    table: Option<&'a schema::TableSchema>,
}

impl FactTime<'_> {
    fn of<'t>(family: &FeatureFamily, table: &'t schema::TableSchema) -> Option<FactTime<'t>> {
        if let Some(time) = &family.time {
            return Some(FactTime {
                compared: format!("CAST(({time}) AS DATE)"),
                table: None,
            });
        }
        let column = table.time_column.as_ref()?;
        Some(FactTime {
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

/// A family's filter as of `as_of`: `{as_of}` in it is the as-of day (for facts with an end,
/// such as a certificate's `valid_until`).
pub(super) fn filter_as_of(filter: &str, as_of: NaiveDate) -> String {
    format!("({})", filter.replace("{as_of}", &sql_date(as_of)))
}

/// Families that read one source with one key and one notion of time run as a single query:
/// one scan and one hash aggregation, with a FILTERed aggregate column per family and window.
/// Windows and families that differ only in filter or aggregate cost no extra pass.
pub(super) struct QueryGroup<'a> {
    pub source: &'a str,
    pub key: Option<&'a str>,
    pub time: Option<&'a str>,
    /// column `c{i}` of the result is `members[i]`
    pub members: Vec<(&'a FeatureFamily, Option<u32>)>,
}

impl QueryGroup<'_> {
    pub fn label(&self) -> String {
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
pub(super) fn grouping_key(family: &FeatureFamily) -> Option<&str> {
    match (family.aggregate, &family.key) {
        (Aggregate::DistinctCount, None) => family.value.as_deref(),
        (_, key) => key.as_deref(),
    }
}

/// Whether member `family` of a group keyed by `key` is a distinct count taken over the key.
pub(super) fn counts_keys(family: &FeatureFamily, key: Option<&str>) -> bool {
    family.aggregate == Aggregate::DistinctCount
        && family.key.is_none()
        && key.is_some()
        && key == family.value.as_deref()
}

pub(super) fn query_groups(config: &FeatureConfig) -> Vec<QueryGroup<'_>> {
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

/// The conditions that place a group's rows in time as of `as_of`: known strictly before it
/// (the newest such version of a versioned fact), and happened before it, within the longest
/// of `windows` (all history when one of them is `None`).
pub(super) fn time_conditions(
    source: &str,
    happened: &FactTime,
    time: Option<&str>,
    windows: impl Iterator<Item = Option<u32>>,
    as_of: NaiveDate,
) -> Vec<String> {
    let mut conditions = crate::sources::known_before(source, as_of);
    // partitions hold rows by the day they became known
    conditions.push(format!("dt < '{as_of}'"));
    // known is not enough: a statement issued before the as-of date may fall due after it
    conditions.push(format!("{} < {}", happened.compared, happened.bound(as_of)));
    if let Some(Some(longest)) = windows.max_by_key(|w| w.unwrap_or(u32::MAX)) {
        let from = as_of - Duration::days(longest as i64);
        conditions.push(format!("{} >= {}", happened.compared, happened.bound(from)));
        // a row is never known before its source's time column (validation holds that), so
        // its partition day is at least that; a family's own `time` promises nothing
        if time.is_none() {
            conditions.push(format!("dt >= '{from}'"));
        }
    }
    conditions
}

pub(super) fn source_schema(source: &str) -> &'static schema::TableSchema {
    schema::all()
        .into_iter()
        .find(|t| t.name == source)
        .expect("validated at load")
}

/// The SQL of one group; output columns: user_id, k (the key, NULL without one), then one
/// DOUBLE column `c{i}` per member, NULL where the member has no row for that user and key.
pub(super) fn group_sql(
    group: &QueryGroup,
    as_of: NaiveDate,
    snapshot: Option<NaiveDate>,
) -> String {
    group_sql_on(group, group.source, &[], as_of, snapshot)
}

/// `group_sql` reading `table` (the source's rows, or a superset of them) instead, whose
/// rows already meet `held` (a shared scan's conditions): those are not evaluated again.
pub(super) fn group_sql_on(
    group: &QueryGroup,
    table: &str,
    held: &[String],
    as_of: NaiveDate,
    snapshot: Option<NaiveDate>,
) -> String {
    let happened = FactTime::of(group.members[0].0, source_schema(group.source));
    let key = group.key.unwrap_or("CAST(NULL AS VARCHAR)");
    let (conditions, shared_filter) =
        group_conditions(group, happened.as_ref(), held, as_of, snapshot);
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
                wanted.push(filter_as_of(filter, as_of));
            }
            if let (Some(days), Some(happened)) = (window, &happened)
                && *window != longest_window
            {
                let from = as_of - Duration::days(*days as i64);
                wanted.push(format!("{} >= {}", happened.compared, happened.bound(from)));
            }
            let only = if wanted.is_empty() {
                String::new()
            } else {
                format!(" FILTER (WHERE {})", wanted.join(" AND "))
            };
            let aggregate = member_aggregate(family, group.key, happened.as_ref(), &only, as_of);
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

/// The WHERE conditions of a group not already `held`, and whether they include the one
/// filter every member shares (then no member repeats it).
fn group_conditions(
    group: &QueryGroup,
    happened: Option<&FactTime>,
    held: &[String],
    as_of: NaiveDate,
    snapshot: Option<NaiveDate>,
) -> (Vec<String>, bool) {
    let mut conditions = vec!["user_id IS NOT NULL".to_string()];
    if let Some(k) = group.key {
        conditions.push(format!("({k}) IS NOT NULL"));
    }
    match (happened, snapshot) {
        (Some(happened), _) => conditions.extend(time_conditions(
            group.source,
            happened,
            group.time,
            group.members.iter().map(|(_, w)| *w),
            as_of,
        )),
        (None, Some(snapshot)) => {
            conditions.push(format!("dt = '{snapshot}'"));
            conditions.push(format!("signup_date < {}", sql_date(as_of)));
            conditions.extend(crate::sources::known_before(group.source, as_of));
        }
        (None, None) => unreachable!("snapshot sources get a snapshot date"),
    }
    conditions.retain(|condition| !held.contains(condition));
    // rows no member wants are dropped before the aggregation
    let filters: Option<Vec<String>> = group
        .members
        .iter()
        .map(|(family, _)| family.filter.as_ref().map(|f| filter_as_of(f, as_of)))
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
    (conditions, shared_filter)
}

/// The aggregate of one member, restricted by `only` (its FILTER clause, or nothing).
fn member_aggregate(
    family: &FeatureFamily,
    key: Option<&str>,
    happened: Option<&FactTime>,
    only: &str,
    as_of: NaiveDate,
) -> String {
    let value = family.value.as_deref().unwrap_or("1");
    match family.aggregate {
        // a count of no rows is no feature, as for every other aggregate
        Aggregate::Count => format!("NULLIF(COUNT(*){only}, 0)"),
        Aggregate::Sum => format!("SUM({value}){only}"),
        Aggregate::Mean => format!("AVG({value}){only}"),
        Aggregate::Max => format!("MAX({value}){only}"),
        Aggregate::Min => format!("MIN({value}){only}"),
        Aggregate::DistinctCount if counts_keys(family, key) => format!("MAX(1){only}"),
        Aggregate::DistinctCount => format!("NULLIF(COUNT(DISTINCT {value}){only}, 0)"),
        Aggregate::Indicator => format!("MAX(1){only}"),
        // divided by the user's total over all keys when the result is assembled
        Aggregate::Share => format!("SUM({value}){only}"),
        // the newest time per group first, then its day: one cast per group, not per row (a
        // day is monotone in its time, so the newest day is the newest time's)
        Aggregate::DaysSinceLast => format!(
            "{} - CAST(CAST(MAX({}){only} AS DATE) AS INT)",
            (as_of - NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid")).num_days(),
            happened
                .expect("validated: days_since_last needs time")
                .compared
        ),
    }
}

/// Groups that can share one scan: two to `at_most` on one windowed source with one notion
/// of time (by index into `groups`). Every query of a cluster runs at once, so `at_most`
/// bounds the hash aggregations sharing the engine's memory pool (see
/// QUERIES_PER_SHARED_SCAN).
pub(super) fn shared_scan_clusters(groups: &[QueryGroup], at_most: usize) -> Vec<Vec<usize>> {
    let mut clusters: Vec<Vec<usize>> = Vec::new();
    for (index, group) in groups.iter().enumerate() {
        if FactTime::of(group.members[0].0, source_schema(group.source)).is_none() {
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
pub(super) fn shared_table(group: &QueryGroup, index: usize) -> String {
    format!("{}__shared_{index}", group.source)
}

/// The conditions of the one scan a cluster shares: the source's rows in the union of its
/// groups' time ranges.
pub(super) fn shared_scan_conditions(
    groups: &[QueryGroup],
    cluster: &[usize],
    as_of: NaiveDate,
) -> Vec<String> {
    let first = &groups[cluster[0]];
    let happened = FactTime::of(first.members[0].0, source_schema(first.source))
        .expect("clusters hold windowed sources");
    let windows = cluster
        .iter()
        .flat_map(|&g| groups[g].members.iter().map(|(_, w)| *w));
    let mut conditions = vec!["user_id IS NOT NULL".to_string()];
    conditions.extend(time_conditions(
        first.source,
        &happened,
        first.time,
        windows,
        as_of,
    ));
    conditions
}

/// The shared scan itself: every column of `source`'s rows that meet `conditions`.
pub(super) fn shared_scan_sql(source: &str, conditions: &[String]) -> String {
    format!("SELECT * FROM {source} WHERE {}", conditions.join(" AND "))
}

pub(super) fn feature_name(
    family: &FeatureFamily,
    window: Option<u32>,
    key: Option<&str>,
) -> String {
    let mut name = family.name.clone();
    if let Some(days) = window {
        name.push_str(&format!("_{days}d"));
    }
    if let Some(key) = key {
        name.push_str(&format!("[{}={key}]", family.key_label()));
    }
    name
}

/// Users that exist at `as_of`: in the newest profile snapshot before it, signed up before it.
pub async fn population(
    ctx: &SessionContext,
    snapshot: NaiveDate,
    as_of: NaiveDate,
) -> Result<Vec<u64>, FeatureError> {
    let sql = format!(
        "SELECT DISTINCT user_id FROM profiles WHERE dt = '{snapshot}' AND signup_date < {} AND {}",
        sql_date(as_of),
        crate::sources::known_before("profiles", as_of).join(" AND ")
    );
    let batches = run(ctx, "population", &sql).await?;
    let mut users: Vec<u64> = batches
        .iter()
        .flat_map(|b| b.column(0).as_primitive::<UInt64Type>().values().to_vec())
        .collect();
    users.sort_unstable();
    Ok(users)
}

/// One sink per group, in group order, for a population indexed by `slots` and rows set
/// aside in `parts` user parts (spilled to `folder` when more than one).
pub(super) fn group_sinks(
    groups: &[QueryGroup],
    slots: Arc<UserIndex>,
    population: usize,
    parts: u32,
    folder: Option<&SpillFolder>,
) -> Vec<GroupSink> {
    groups
        .iter()
        .enumerate()
        .map(|(g, group)| {
            let kinds = group
                .members
                .iter()
                .map(|(family, _)| match counts_keys(family, group.key) {
                    true => MemberKind::CountsKeys,
                    false => MemberKind::Keyed,
                })
                .collect();
            GroupSink::new(g, kinds, slots.clone(), population, parts, folder)
        })
        .collect()
}

/// Runs a group's query, its result streamed into `sink`.
pub(super) async fn run_into(
    ctx: &SessionContext,
    family: &str,
    sql: &str,
    sink: GroupSink,
) -> Result<GroupTally, FeatureError> {
    stream_into(ctx, sql, sink)
        .await
        .map_err(|error| FeatureError::Query {
            family: family.to_string(),
            sql: sql.to_string(),
            error,
        })
}

/// Streams `sql`'s result into `sink`, batch by batch, so the result is never held whole.
pub(super) async fn stream_into(
    ctx: &SessionContext,
    sql: &str,
    mut sink: GroupSink,
) -> Result<GroupTally, DataFusionError> {
    crate::engine::for_each_batch(ctx, sql, |batch| sink.push(batch)).await?;
    sink.finish()
}

pub(super) async fn run(
    ctx: &SessionContext,
    family: &str,
    sql: &str,
) -> Result<Vec<RecordBatch>, FeatureError> {
    crate::engine::collect(ctx, sql)
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
