//! Features: runs the families of `pipelines/features.toml` as DataFusion aggregations over
//! the validated sources and assembles the long sparse table (user_id, feature_id, value).
//!
//! Reads the clean source tables registered by `sources`; writes `features/dt=<as_of>/` and
//! appends to `features/dictionary.parquet`. Point in time: a feature as of T uses only rows
//! known strictly before T. It never reads labels or truth.

pub mod config;
pub mod dictionary;
pub mod stats;

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{Duration, NaiveDate};
use datafusion::arrow::array::{
    Array, AsArray, Float32Array, RecordBatch, UInt32Array, UInt64Array,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type, UInt64Type};
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;
use rayon::prelude::*;
use tracing::info;

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
#[derive(Debug, Clone, serde::Serialize)]
pub struct FeatureReport {
    #[serde(with = "crate::serde_date")]
    pub as_of: NaiveDate,
    pub users: usize,
    pub rows: usize,
    pub distinct_features: usize,
    pub dictionary_size: usize,
    pub seconds: f64,
}

fn sql_date(date: NaiveDate) -> String {
    format!("DATE '{date}'")
}

/// The SQL of one family and window; output columns: user_id, k (key or NULL), v.
fn family_sql(
    family: &FeatureFamily,
    window: Option<u32>,
    as_of: NaiveDate,
    snapshot: Option<NaiveDate>,
) -> String {
    let table = schema::all()
        .into_iter()
        .find(|t| t.name == family.source)
        .expect("validated at load");
    let key = family
        .key
        .as_ref()
        .map_or("CAST(NULL AS VARCHAR)".to_string(), |k| {
            format!("CAST(({k}) AS VARCHAR)")
        });
    let value = family.value.as_deref().unwrap_or("1");
    let mut conditions = vec!["user_id IS NOT NULL".to_string()];
    if let Some(k) = &family.key {
        conditions.push(format!("({k}) IS NOT NULL"));
    }
    if let Some(filter) = &family.filter {
        conditions.push(format!("({filter})"));
    }
    let known_at = match (&family.time, &table.time_column) {
        (Some(time), _) => Some(format!("CAST(({time}) AS DATE)")),
        (None, Some(column)) => Some(format!("CAST({column} AS DATE)")),
        (None, None) => None,
    };
    match (&known_at, snapshot) {
        (Some(known_at), _) => {
            conditions.push(format!("{known_at} < {}", sql_date(as_of)));
            // partitions hold rows by their own time, never later than when they are known
            conditions.push(format!("dt < '{as_of}'"));
            if let Some(days) = window {
                let from = as_of - Duration::days(days as i64);
                conditions.push(format!("{known_at} >= {}", sql_date(from)));
                if family.time.is_none() {
                    conditions.push(format!("dt >= '{from}'"));
                }
            }
        }
        (None, Some(snapshot)) => {
            conditions.push(format!("dt = '{snapshot}'"));
            conditions.push(format!("signup_date < {}", sql_date(as_of)));
        }
        (None, None) => unreachable!("snapshot sources get a snapshot date"),
    }
    let aggregate = match family.aggregate {
        Aggregate::Count => "COUNT(*)".to_string(),
        Aggregate::Sum => format!("SUM({value})"),
        Aggregate::Mean => format!("AVG({value})"),
        Aggregate::Max => format!("MAX({value})"),
        Aggregate::Min => format!("MIN({value})"),
        Aggregate::DistinctCount => format!("COUNT(DISTINCT {value})"),
        Aggregate::Indicator => "MAX(1)".to_string(),
        // the window sums the per-key sums of one user: shares over all keys, before support
        // and top-k drop rare keys
        Aggregate::Share => {
            format!("SUM({value}) / NULLIF(SUM(SUM({value})) OVER (PARTITION BY user_id), 0)")
        }
        Aggregate::DaysSinceLast => format!(
            "{} - MAX(CAST({} AS INT))",
            (as_of - NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid")).num_days(),
            known_at
                .as_deref()
                .expect("validated: days_since_last needs time")
        ),
    };
    let group_by = if family.key.is_some() {
        format!("user_id, {key}")
    } else {
        "user_id".to_string()
    };
    format!(
        "SELECT user_id, {key} AS k, CAST({aggregate} AS DOUBLE) AS v FROM {source} WHERE {conditions} GROUP BY {group_by}",
        source = family.source,
        conditions = conditions.join(" AND "),
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

/// The SQL of every family and window as of `as_of`, labelled `family_<window>`; for tools
/// that run the same aggregations elsewhere (the DuckDB benchmark).
pub fn family_queries(
    config: &FeatureConfig,
    as_of: NaiveDate,
    snapshot: NaiveDate,
) -> Vec<(String, String)> {
    config
        .families
        .iter()
        .flat_map(|family| {
            family.window_days().into_iter().map(move |window| {
                let label = feature_name(family, window, None);
                (label, family_sql(family, window, as_of, Some(snapshot)))
            })
        })
        .collect()
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
    let mut user_ids = Vec::new();
    let mut feature_ids = Vec::new();
    let mut values = Vec::new();

    for family in &config.families {
        for window in family.window_days() {
            let sql = family_sql(family, window, as_of, Some(snapshot));
            let batches = run(ctx, &family.name, &sql).await?;
            // (user, key, value) rows, then keep the keys with enough support
            let mut rows: Vec<(u64, Option<String>, f64)> = Vec::new();
            for batch in &batches {
                let keys =
                    cast(batch.column(1), &DataType::Utf8).map_err(|e| FeatureError::Result {
                        family: family.name.clone(),
                        problem: e.to_string(),
                    })?;
                let keys = keys.as_string::<i32>();
                let users = batch.column(0).as_primitive::<UInt64Type>();
                let vals = batch.column(2).as_primitive::<Float64Type>();
                for row in 0..batch.num_rows() {
                    if vals.is_null(row) {
                        continue;
                    }
                    let key = (!keys.is_null(row)).then(|| keys.value(row).to_string());
                    rows.push((users.value(row), key, vals.value(row)));
                }
            }
            let mut support: HashMap<Option<&str>, u64> = HashMap::new();
            for (_, key, _) in &rows {
                *support.entry(key.as_deref()).or_default() += 1;
            }
            let mut kept: Vec<(Option<&str>, u64)> = support
                .into_iter()
                .filter(|(_, n)| *n >= family.min_support)
                .collect();
            kept.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            if let Some(k) = family.top_k {
                kept.truncate(k);
            }
            // ids are assigned in a stable order: by key, not by hash-map order
            kept.sort_by(|a, b| a.0.cmp(&b.0));
            let ids: HashMap<Option<&str>, u32> = kept
                .iter()
                .map(|(key, _)| {
                    let name = feature_name(family, window, *key);
                    (*key, dictionary.id_or_insert(&name, &family.name))
                })
                .collect();
            for (user, key, value) in &rows {
                if let Some(id) = ids.get(&key.as_deref()) {
                    user_ids.push(*user);
                    feature_ids.push(*id);
                    values.push(apply(family.transform, *value));
                }
            }
        }
    }

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
    let alive: std::collections::HashSet<u64> = users.iter().copied().collect();
    let mut set = FeatureSet {
        as_of,
        users,
        user_ids: Vec::with_capacity(order.len()),
        feature_ids: Vec::with_capacity(order.len()),
        values: Vec::with_capacity(order.len()),
    };
    for i in order {
        let i = i as usize;
        // rows of users that do not exist yet at as_of (no profile) are not features of anyone
        if alive.contains(&user_ids[i]) {
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
    info!(as_of = %set.as_of, rows = set.nnz(), "features written");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn family(toml_text: &str) -> FeatureFamily {
        FeatureConfig::parse(toml_text, "t.toml")
            .unwrap()
            .families
            .remove(0)
    }

    #[test]
    fn windowed_sql_bounds_time_on_both_sides_and_prunes_partitions() {
        let f = family(
            "[[family]]\nname='visits'\nsource='events'\nkey='merchant_id'\naggregate='count'\nwindows=['30d']",
        );
        let as_of = NaiveDate::from_ymd_opt(2026, 6, 30).unwrap();
        let sql = family_sql(&f, Some(30), as_of, None);
        assert!(
            sql.contains("CAST(event_time AS DATE) < DATE '2026-06-30'"),
            "{sql}"
        );
        assert!(
            sql.contains("CAST(event_time AS DATE) >= DATE '2026-05-31'"),
            "{sql}"
        );
        assert!(
            sql.contains("dt >= '2026-05-31'") && sql.contains("dt < '2026-06-30'"),
            "{sql}"
        );
    }

    #[test]
    fn a_known_at_override_bounds_on_it_and_keeps_only_the_safe_partition_bound() {
        let f = family(
            "[[family]]\nname='late'\nsource='repayments'\naggregate='count'\ntime=\"due_date + INTERVAL '30' DAY\"\nwindows=['120d']",
        );
        let as_of = NaiveDate::from_ymd_opt(2026, 6, 30).unwrap();
        let sql = family_sql(&f, Some(120), as_of, None);
        assert!(
            sql.contains("CAST((due_date + INTERVAL '30' DAY) AS DATE) < DATE '2026-06-30'"),
            "{sql}"
        );
        assert!(!sql.contains("dt >="), "{sql}");
    }

    #[test]
    fn share_divides_by_the_users_total_over_all_keys() {
        let f = family(
            "[[family]]\nname='share'\nsource='events'\nkey='category'\naggregate='share'\nvalue='amount'\nwindows=['90d']",
        );
        let sql = family_sql(
            &f,
            Some(90),
            NaiveDate::from_ymd_opt(2026, 6, 30).unwrap(),
            None,
        );
        assert!(
            sql.contains("SUM(amount) / NULLIF(SUM(SUM(amount)) OVER (PARTITION BY user_id), 0)"),
            "{sql}"
        );
        assert!(
            sql.contains("GROUP BY user_id, CAST((category) AS VARCHAR)"),
            "{sql}"
        );
    }

    #[test]
    fn names_read_like_the_docs() {
        let f = family(
            "[[family]]\nname='visits'\nsource='events'\nkey='merchant_id'\naggregate='count'\nwindows=['30d']",
        );
        assert_eq!(
            feature_name(&f, Some(30), Some("8812")),
            "visits_30d[merchant_id=8812]"
        );
    }
}
