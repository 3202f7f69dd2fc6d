//! Features: runs the families of `pipelines/features.toml` as DataFusion aggregations over
//! the validated sources and assembles the long sparse table (user_id, feature_id, value).
//!
//! Reads the clean source tables registered by `sources`; writes `features/dt=<as_of>/` and
//! commits the dictionary's new names (`features/dictionary/`) before the features using them.
//! Point in time: a feature as of T uses only rows known strictly before T. It never reads
//! labels or truth.
//!
//! Two steps, so that the nightly job never holds every user's features: `query` runs the
//! queries of one as-of date, streaming each result into a `spill` sink that counts its keys
//! over all users and sets its rows aside by user part, and decides which keys become which
//! ids; `QueriedFeatures::part` then assembles one user part at a time. `plan` turns families
//! into SQL, `shared_scan` feeds several queries from one scan, `assemble` decides ids and
//! turns rows into long rows, `io` writes and reads the table, `stats` describes it,
//! `what_if` merges one more row into a user's features (for suggestions).

mod assemble;
pub mod config;
pub mod dictionary;
mod io;
mod plan;
mod shared_scan;
mod spill;
pub mod stats;
mod what_if;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use chrono::NaiveDate;
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use futures::stream::BoxStream;
use tracing::debug;

pub use config::{Aggregate, FeatureConfig, FeatureFamily, Ratio, Transform};
pub use dictionary::FeatureDictionary;
pub use io::{clear, read, read_part, write, write_part, write_population};
pub use plan::{family_queries, population};
pub use what_if::WhatIf;

use crate::cause::{Cause, Classify};
use crate::sources::{self, SourceError};
use crate::spill::SpillFolder;
use crate::store::{Store, StoreError};
use crate::user_index::{UserIndex, UserShard};
use assemble::{LongRows, MemberIds, RatioIds};
use plan::QueryGroup;
use spill::{GroupSink, GroupTally};

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
    #[error("features: cannot set rows aside on local disk: {0}")]
    Spill(String),
}

impl Classify for FeatureError {
    fn cause(&self) -> Cause {
        match self {
            FeatureError::Store(e) => e.cause(),
            FeatureError::Source(e) => e.cause(),
            // a family's SQL comes from features.toml: one that does not plan is configuration
            FeatureError::Query { error, .. } => crate::engine::cause_of(error),
            FeatureError::Result { .. } => Cause::Configuration,
            // the machine's temp dir: full or gone, maybe not on the next try
            FeatureError::Spill(_) => Cause::Transient,
        }
    }
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

    /// Gives every feature id `remap[id]` (what `FeatureDictionary::commit` returns when
    /// another writer committed first), keeping rows sorted by user then id.
    pub fn remap(&mut self, remap: &[u32]) {
        if remap
            .iter()
            .enumerate()
            .all(|(old, new)| old as u32 == *new)
        {
            return;
        }
        let mut start = 0;
        while start < self.user_ids.len() {
            let user = self.user_ids[start];
            let end = start + self.user_ids[start..].partition_point(|u| *u == user);
            let mut row: Vec<(u32, f32)> = (start..end)
                .map(|i| (remap[self.feature_ids[i] as usize], self.values[i]))
                .collect();
            row.sort_unstable_by_key(|(id, _)| *id);
            for (i, (id, value)) in (start..end).zip(row) {
                self.feature_ids[i] = id;
                self.values[i] = value;
            }
            start = end;
        }
    }

    /// Orders the rows by user, keeping each user's rows in their order (rows read from
    /// several parts, each sorted, every user in one of them).
    pub fn sort_by_user(&mut self) {
        let mut order: Vec<usize> = (0..self.nnz()).collect();
        order.sort_by_key(|&i| self.user_ids[i]);
        self.user_ids = order.iter().map(|&i| self.user_ids[i]).collect();
        self.feature_ids = order.iter().map(|&i| self.feature_ids[i]).collect();
        self.values = order.iter().map(|&i| self.values[i]).collect();
    }

    pub fn distinct_features(&self) -> usize {
        let mut present = Present::default();
        present.add(self);
        present.count()
    }
}

/// The features present in any of several sets (the parts of one date).
#[derive(Debug, Default)]
pub struct Present {
    seen: Vec<bool>,
}

impl Present {
    pub fn add(&mut self, set: &FeatureSet) {
        for &id in &set.feature_ids {
            if id as usize >= self.seen.len() {
                self.seen.resize(id as usize + 1, false);
            }
            self.seen[id as usize] = true;
        }
    }

    pub fn count(&self) -> usize {
        self.seen.iter().filter(|s| **s).count()
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

/// One as-of date's features, queried over all users with the ids they take decided (which
/// keys are kept, in which order), and their rows set aside by user part for `part` to
/// assemble one part at a time: no step holds every user's rows at once when `parts` > 1.
pub struct QueriedFeatures<'c> {
    pub as_of: NaiveDate,
    pub parts: u32,
    /// every user that exists at `as_of`, sorted
    pub population: Vec<u64>,
    groups: Vec<QueryGroup<'c>>,
    tallies: Vec<GroupTally>,
    ids: Vec<Vec<MemberIds>>,
    ratios: Vec<RatioIds>,
    /// removed with the rows spilled in it when the features are dropped
    _spill: Option<SpillFolder>,
}

/// Queries the features of every user alive at `as_of` and decides their ids in
/// `dictionary`, setting the rows aside in `parts` user parts (`UserShard`). The sources
/// must already be registered with `ctx` (see `sources::validate_and_register`). Results are
/// decided in config order so dictionary ids stay deterministic.
pub async fn query<'c>(
    ctx: &SessionContext,
    store: &Store,
    config: &'c FeatureConfig,
    dictionary: &mut FeatureDictionary,
    as_of: NaiveDate,
    parts: u32,
) -> Result<QueriedFeatures<'c>, FeatureError> {
    let snapshot = sources::snapshot_before(store, "profiles", as_of).await?;
    let population = population(ctx, snapshot, as_of).await?;
    let slots = UserIndex::build(&population).map_err(|user| FeatureError::Result {
        family: "population".into(),
        problem: format!("user {user} appears twice"),
    })?;
    let parts = parts.max(1);
    let spill = match parts {
        1 => None,
        _ => Some(SpillFolder::create("features").map_err(|e| FeatureError::Spill(e.to_string()))?),
    };
    let groups = plan::query_groups(config);
    let sinks = plan::group_sinks(
        &groups,
        Arc::new(slots),
        population.len(),
        parts,
        spill.as_ref(),
    );
    let mut queries = GroupQueries::new(ctx, &groups, sinks, as_of, snapshot);
    let (mut tallies, mut ids) = (Vec::new(), Vec::new());
    let progress = progress_bar(groups.len(), as_of);
    for (g, group) in groups.iter().enumerate() {
        let (label, tally, query_seconds) = queries.result(g).await?;
        progress.inc(1);
        ids.push(assemble::decide_group(group, &tally, dictionary));
        debug!(group = %label, rows = tally.rows, query_seconds, "feature group queried");
        tallies.push(tally);
    }
    progress.finish_and_clear();
    drop(queries);
    let ratios = assemble::decide_ratios(&config.ratios, ids.iter().map(Vec::as_slice), dictionary);
    Ok(QueriedFeatures {
        as_of,
        parts,
        population,
        groups,
        tallies,
        ids,
        ratios,
        _spill: spill,
    })
}

impl QueriedFeatures<'_> {
    /// The features of user part `index` (the users `UserShard::of` puts there), their ids
    /// passed through `remap` (what the dictionary's commit returned; empty: as decided).
    pub fn part(&self, index: u32, remap: &[u32]) -> Result<FeatureSet, FeatureError> {
        let started = Instant::now();
        let mut long = LongRows::default();
        for ((group, tally), ids) in self.groups.iter().zip(&self.tallies).zip(&self.ids) {
            let (batches, row_keys) = tally.part(index).map_err(|error| FeatureError::Query {
                family: group.label(),
                sql: "(its rows spilled by user part, read back)".into(),
                error,
            })?;
            assemble::add_group_part(
                group,
                ids,
                &assemble::PartResult { batches, row_keys },
                &mut long,
            );
        }
        assemble::add_ratios(&self.ratios, &mut long);
        if !remap.is_empty() {
            long.feature_ids
                .iter_mut()
                .for_each(|id| *id = remap[*id as usize]);
        }
        let users: Vec<u64> = match self.parts {
            1 => self.population.clone(),
            count => self
                .population
                .iter()
                .copied()
                .filter(|&u| UserShard::of(u, count) == index)
                .collect(),
        };
        let slots = UserIndex::build(&users).expect("the population has no user twice");
        let set = assemble::in_user_order(self.as_of, users, &slots, long);
        debug!(as_of = %self.as_of, part = index, rows = set.nnz(), seconds = started.elapsed().as_secs_f64(), "feature part assembled");
        Ok(set)
    }
}

/// Builds the features of every user alive at `as_of` in memory, as one part: for tests,
/// benches and `train`, whose sets fit; the nightly job assembles part by part (`query`).
pub async fn build(
    ctx: &SessionContext,
    store: &Store,
    config: &FeatureConfig,
    dictionary: &mut FeatureDictionary,
    as_of: NaiveDate,
) -> Result<FeatureSet, FeatureError> {
    query(ctx, store, config, dictionary, as_of, 1)
        .await?
        .part(0, &[])
}

/// Drawn only on a terminal; the scheduler's logs get the debug lines instead.
fn progress_bar(queries: usize, as_of: NaiveDate) -> indicatif::ProgressBar {
    let progress = indicatif::ProgressBar::new(queries as u64).with_style(
        indicatif::ProgressStyle::with_template(
            "features as of {msg} {bar:40} {pos}/{len} queries  {elapsed}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    progress.set_message(as_of.to_string());
    progress
}

/// A group's result: its label, tally, and seconds since its query started.
type GroupOutput = (String, GroupTally, f64);

/// Runs the groups' queries. In this process, up to QUERIES_PER_SHARED_SCAN groups on one
/// source share one scan of it (see `shared_scan`), started when the first of them is asked
/// for, and run at once, fed by it; the other groups run QUERIES_AT_ONCE at a time so small
/// ones (profiles, certificates) overlap the big ones.
struct GroupQueries<'a> {
    ctx: &'a SessionContext,
    groups: &'a [QueryGroup<'a>],
    as_of: NaiveDate,
    snapshot: NaiveDate,
    /// the groups that share no scan, in order
    alone: BoxStream<'a, Result<GroupOutput, FeatureError>>,
    /// the sinks of the groups whose scan has not started
    sinks: Vec<Option<GroupSink>>,
    clusters: Vec<Vec<usize>>,
    /// group index -> (cluster, position among its queries)
    shared: HashMap<usize, (usize, usize)>,
    scans: Vec<Option<StartedScan>>,
}

/// A cluster's scan once started, with its SQL and the SQL of the queries it feeds.
struct StartedScan {
    scan: shared_scan::SharedScan,
    sql: String,
    fed: Vec<String>,
    started: Instant,
}

impl<'a> GroupQueries<'a> {
    fn new(
        ctx: &'a SessionContext,
        groups: &'a [QueryGroup<'a>],
        sinks: Vec<GroupSink>,
        as_of: NaiveDate,
        snapshot: NaiveDate,
    ) -> GroupQueries<'a> {
        let in_process = ctx
            .state()
            .config()
            .get_extension::<crate::engine::InProcess>()
            .is_some();
        let clusters = match in_process {
            true => plan::shared_scan_clusters(groups, QUERIES_PER_SHARED_SCAN),
            false => Vec::new(),
        };
        let mut shared = HashMap::new();
        for (c, cluster) in clusters.iter().enumerate() {
            for (position, &g) in cluster.iter().enumerate() {
                shared.insert(g, (c, position));
            }
        }
        let mut sinks: Vec<Option<GroupSink>> = sinks.into_iter().map(Some).collect();
        let alone: Vec<(&'a QueryGroup<'a>, GroupSink)> = groups
            .iter()
            .enumerate()
            .filter(|(g, _)| !shared.contains_key(g))
            .map(|(g, group)| (group, sinks[g].take().expect("one sink per group")))
            .collect();
        let alone = futures::stream::iter(alone)
            .map(move |(group, sink)| async move {
                let label = group.label();
                let sql = plan::group_sql(group, as_of, Some(snapshot));
                let started = Instant::now();
                let tally = plan::run_into(ctx, &label, &sql, sink).await?;
                Ok((label, tally, started.elapsed().as_secs_f64()))
            })
            .buffered(QUERIES_AT_ONCE)
            .boxed();
        let scans = clusters.iter().map(|_| None).collect();
        GroupQueries {
            ctx,
            groups,
            as_of,
            snapshot,
            alone,
            sinks,
            clusters,
            shared,
            scans,
        }
    }

    /// Group `g`'s result; groups must be asked for in order.
    async fn result(&mut self, g: usize) -> Result<GroupOutput, FeatureError> {
        let Some(&(c, position)) = self.shared.get(&g) else {
            return self.alone.next().await.expect("one result per group");
        };
        if self.scans[c].is_none() {
            self.scans[c] = Some(self.start_scan(c).await?);
        }
        let label = self.groups[g].label();
        let started = self.scans[c].as_mut().expect("started above");
        let tally = started
            .scan
            .result(position)
            .await
            .map_err(|error| FeatureError::Query {
                family: label.clone(),
                sql: format!("{}\n  feeding: {}", started.sql, started.fed[position]),
                error,
            })?;
        Ok((label, tally, started.started.elapsed().as_secs_f64()))
    }

    async fn start_scan(&mut self, c: usize) -> Result<StartedScan, FeatureError> {
        let (groups, cluster) = (self.groups, &self.clusters[c]);
        let held = plan::shared_scan_conditions(groups, cluster, self.as_of);
        let sql = plan::shared_scan_sql(groups[cluster[0]].source, &held);
        let queries: Vec<(String, String, GroupSink)> = cluster
            .iter()
            .map(|&g| {
                let table = plan::shared_table(&groups[g], g);
                let sql =
                    plan::group_sql_on(&groups[g], &table, &held, self.as_of, Some(self.snapshot));
                let sink = self.sinks[g].take().expect("one sink per group");
                (table, sql, sink)
            })
            .collect();
        let fed = queries.iter().map(|(_, sql, _)| sql.clone()).collect();
        let started = Instant::now();
        let scan = shared_scan::start(self.ctx, &sql, queries).await.map_err(
            |error: DataFusionError| FeatureError::Query {
                family: format!("{} (shared scan)", groups[cluster[0]].source),
                sql: sql.clone(),
                error,
            },
        )?;
        Ok(StartedScan {
            scan,
            sql,
            fed,
            started,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::assemble::*;
    use super::plan::*;
    use super::*;

    #[test]
    fn a_remapped_set_keeps_each_user_s_ids_sorted() {
        let mut set = FeatureSet {
            as_of: NaiveDate::from_ymd_opt(2026, 1, 1).unwrap(),
            users: vec![1, 2],
            user_ids: vec![1, 1, 1, 2],
            feature_ids: vec![0, 1, 2, 1],
            values: vec![0.5, 1.5, 2.5, 3.5],
        };
        // another writer took ids 1 and 2: ours moved to 3 and 4, and 0 stayed
        set.remap(&[0, 4, 3]);
        assert_eq!(set.feature_ids, [0, 3, 4, 4]);
        assert_eq!(set.values, [0.5, 2.5, 1.5, 3.5]);
    }

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
        // read what was known before the as-of date, count what happened in the window
        assert!(
            sql.contains("known_at < TIMESTAMP '2026-06-30 00:00:00'"),
            "{sql}"
        );
        assert!(
            !sql.contains("superseded_at"),
            "events have no versions: {sql}"
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
    fn a_time_override_windows_on_it_reads_the_newest_known_version_and_keeps_only_the_safe_partition_bound()
     {
        let c = config(
            "[[family]]\nname='late'\nsource='repayments'\naggregate='count'\ntime=\"due_date\"\nfilter='days_past_due >= 30'\nwindows=['120d']",
        );
        let sql = &sql(&c)[0];
        assert!(
            sql.contains("CAST((due_date) AS DATE) >= DATE '2026-03-02'"),
            "{sql}"
        );
        assert!(
            sql.contains("known_at < TIMESTAMP '2026-06-30 00:00:00'")
                && sql.contains(
                    "(superseded_at IS NULL OR superseded_at >= TIMESTAMP '2026-06-30 00:00:00')"
                ),
            "{sql}"
        );
        // a statement due in the window may have been issued, and landed, before it
        assert!(!sql.contains("dt >="), "{sql}");
    }

    #[test]
    fn as_of_in_a_filter_is_the_as_of_day() {
        let c = config(
            "[[family]]\nname='valid'\nsource='certificates'\naggregate='count'\nfilter='valid_until IS NULL OR valid_until > {as_of}'",
        );
        let sql = &sql(&c)[0];
        assert!(
            sql.contains("(valid_until IS NULL OR valid_until > DATE '2026-06-30')"),
            "{sql}"
        );
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
            let slots = UserIndex::build(&users).unwrap();
            let set = in_user_order(day, users.clone(), &slots, rows);
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
