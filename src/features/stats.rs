//! Feature statistics: per feature support, mean, min and max over the population; with
//! labels, information value and univariate AUC; and the population stability index (PSI)
//! against the previous night's stats, to show which features drifted.
//!
//! Stats are written next to the features as `features/dt=<as_of>/stats.parquet`. Every
//! feature is binned the same way: bin 0 holds the users without the feature (value 0), bins
//! 1-4 split its non-zero values at their quartiles. PSI reuses yesterday's edges.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::NaiveDate;
use datafusion::arrow::array::{
    Array, AsArray, Float32Array, Float64Array, RecordBatch, StringArray, UInt8Array, UInt32Array,
    UInt64Array,
};
use datafusion::arrow::datatypes::{
    DataType, Field, Float32Type, Float64Type, Schema, SchemaRef, UInt8Type, UInt32Type, UInt64Type,
};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{FeatureDictionary, FeatureError, FeatureSet};
use crate::spill::{PartSpill, SpillFolder};
use crate::store::{Store, layout};
use crate::user_index::Labels;

pub const BINS: usize = 5;

#[derive(Debug, Clone, PartialEq)]
pub struct FeatureStats {
    pub feature_id: u32,
    /// users with a non-zero value
    pub support: u64,
    /// over the whole population, users without the feature counting as 0
    pub mean: f64,
    pub min: f64,
    pub max: f64,
    /// upper edges of bins 1..=3 (bin 4 is open above)
    pub edges: [f64; 3],
    /// share of the population in each bin
    pub shares: [f64; BINS],
    pub information_value: Option<f64>,
    pub univariate_auc: Option<f64>,
    pub psi: Option<f64>,
}

/// A feature that moved most against the previous night.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Drift {
    pub name: String,
    pub psi: f64,
}

fn bin_of(value: f64, edges: &[f64; 3]) -> usize {
    if value == 0.0 {
        0
    } else {
        1 + edges.iter().take_while(|&&e| value > e).count()
    }
}

fn quartile_edges(sorted: &[f64]) -> [f64; 3] {
    if sorted.is_empty() {
        return [0.0; 3];
    }
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    [at(0.25), at(0.5), at(0.75)]
}

/// PSI between two bin distributions; empty bins are smoothed so the log stays finite.
pub fn psi(expected: &[f64; BINS], actual: &[f64; BINS]) -> f64 {
    const FLOOR: f64 = 1e-4;
    expected
        .iter()
        .zip(actual)
        .map(|(&e, &a)| {
            let (e, a) = (e.max(FLOOR), a.max(FLOOR));
            (a - e) * (a / e).ln()
        })
        .sum()
}

/// AUC of a score made of groups (value, positives, negatives), ties counted half.
fn grouped_auc(mut groups: Vec<(f64, f64, f64)>) -> Option<f64> {
    groups.sort_by(|a, b| a.0.total_cmp(&b.0));
    let positives: f64 = groups.iter().map(|g| g.1).sum();
    let negatives: f64 = groups.iter().map(|g| g.2).sum();
    if positives == 0.0 || negatives == 0.0 {
        return None;
    }
    let mut below = 0.0;
    let mut wins = 0.0;
    let mut i = 0;
    while i < groups.len() {
        let (mut pos, mut neg) = (0.0, 0.0);
        let value = groups[i].0;
        while i < groups.len() && groups[i].0 == value {
            pos += groups[i].1;
            neg += groups[i].2;
            i += 1;
        }
        wins += pos * (below + 0.5 * neg);
        below += neg;
    }
    Some(wins / (positives * negatives))
}

/// Stats of every feature present in `set`, in memory. `labels` (by user) adds IV and AUC;
/// `previous` (yesterday's stats by feature id) adds PSI.
pub fn compute(
    set: &FeatureSet,
    labels: Option<&Labels>,
    previous: &HashMap<u32, FeatureStats>,
) -> Result<Vec<FeatureStats>, FeatureError> {
    let mut gathered = Gathered::new(1)?;
    gathered.add(set, labels)?;
    gathered.compute(labels.is_some(), previous)
}

/// A row's label, for IV and AUC (stored as its discriminant while set aside).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Label {
    Unknown = 0,
    Default = 1,
    Repaid = 2,
}

impl Label {
    fn from_u8(code: u8) -> Label {
        match code {
            1 => Label::Default,
            2 => Label::Repaid,
            _ => Label::Unknown,
        }
    }
}

/// What stats are computed from, gathered one user part at a time: the population and its
/// label counts, and every feature row's value with its user's label, set aside by feature
/// (`crate::spill`: a feature's rows all land in one of `buckets` files, 13 bytes a row) so
/// that computing holds one bucket of features at a time. The stats are exact and the same
/// for any number of buckets or parts.
pub struct Gathered {
    population: u64,
    positives: f64,
    negatives: f64,
    buckets: u32,
    values: PartSpill,
    _folder: Option<SpillFolder>,
}

fn spill_error(error: impl std::fmt::Display) -> FeatureError {
    FeatureError::Spill(format!("feature stats: {error}"))
}

fn values_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        // column 0 is what `PartSpill` buckets by: here the feature, not the user
        Field::new("feature_id", DataType::UInt64, false),
        Field::new("value", DataType::Float32, false),
        Field::new("label", DataType::UInt8, false),
    ]))
}

impl Gathered {
    /// Values set aside in `buckets` buckets of features (kept in memory for one).
    pub fn new(buckets: u32) -> Result<Gathered, FeatureError> {
        let buckets = buckets.max(1);
        let folder = match buckets {
            1 => None,
            _ => Some(SpillFolder::create("stats").map_err(spill_error)?),
        };
        Ok(Gathered {
            population: 0,
            positives: 0.0,
            negatives: 0.0,
            buckets,
            values: PartSpill::new("values", buckets, folder.as_ref()),
            _folder: folder,
        })
    }

    /// Adds the users of `set` (a part: no user in two) with `labels`.
    pub fn add(&mut self, set: &FeatureSet, labels: Option<&Labels>) -> Result<(), FeatureError> {
        let label = |user: u64| match labels.and_then(|labels| labels.get(user)) {
            Some(true) => Label::Default,
            Some(false) => Label::Repaid,
            None => Label::Unknown,
        };
        self.population += set.users.len() as u64;
        for &user in &set.users {
            match label(user) {
                Label::Default => self.positives += 1.0,
                Label::Repaid => self.negatives += 1.0,
                Label::Unknown => {}
            }
        }
        if set.nnz() == 0 {
            return Ok(());
        }
        let features = UInt64Array::from_iter_values(set.feature_ids.iter().map(|&f| u64::from(f)));
        // rows come by user: one lookup a user, not a row
        let mut last: Option<(u64, Label)> = None;
        let labels = UInt8Array::from_iter_values(set.user_ids.iter().map(|&user| {
            let of_user = match last {
                Some((previous, known)) if previous == user => known,
                _ => label(user),
            };
            last = Some((user, of_user));
            of_user as u8
        }));
        let batch = RecordBatch::try_new(
            values_schema(),
            vec![
                Arc::new(features),
                Arc::new(Float32Array::from(set.values.clone())),
                Arc::new(labels),
            ],
        )
        .map_err(spill_error)?;
        self.values.push(batch).map_err(spill_error)
    }

    /// The stats of every feature added, sorted by feature id; IV and AUC when `labelled`.
    pub fn compute(
        mut self,
        labelled: bool,
        previous: &HashMap<u32, FeatureStats>,
    ) -> Result<Vec<FeatureStats>, FeatureError> {
        self.values.finish().map_err(spill_error)?;
        let population = Population {
            users: self.population as f64,
            positives: self.positives,
            negatives: self.negatives,
        };
        let mut stats = Vec::new();
        for bucket in 0..self.buckets {
            let by_feature = by_feature(&self.values.part(bucket).map_err(spill_error)?)?;
            let computed: Vec<FeatureStats> = by_feature
                .into_par_iter()
                .map(|(feature_id, rows)| {
                    let before = previous.get(&feature_id);
                    feature_stats(feature_id, rows, &population, labelled, before)
                })
                .collect();
            stats.extend(computed);
        }
        stats.sort_by_key(|s| s.feature_id);
        Ok(stats)
    }
}

/// One bucket's rows by feature: its non-zero values with their labels, in the order added
/// (a feature whose rows are all zero is present with none).
fn by_feature(batches: &[RecordBatch]) -> Result<HashMap<u32, Vec<(f32, Label)>>, FeatureError> {
    let mut by_feature: HashMap<u32, Vec<(f32, Label)>> = HashMap::new();
    for batch in batches {
        let columns = (
            batch.column(0).as_primitive_opt::<UInt64Type>(),
            batch.column(1).as_primitive_opt::<Float32Type>(),
            batch.column(2).as_primitive_opt::<UInt8Type>(),
        );
        let (Some(features), Some(values), Some(labels)) = columns else {
            return Err(spill_error(
                "a bucket read back does not have the columns written",
            ));
        };
        for ((&feature, &value), &label) in features
            .values()
            .iter()
            .zip(values.values())
            .zip(labels.values())
        {
            let rows = by_feature.entry(feature as u32).or_default();
            if value != 0.0 {
                rows.push((value, Label::from_u8(label)));
            }
        }
    }
    Ok(by_feature)
}

/// The population a feature's stats are over: users, and those with each label.
struct Population {
    users: f64,
    positives: f64,
    negatives: f64,
}

/// One feature's stats from its non-zero `rows` (value, label); PSI against `before`.
fn feature_stats(
    feature_id: u32,
    mut rows: Vec<(f32, Label)>,
    population: &Population,
    labelled: bool,
    before: Option<&FeatureStats>,
) -> FeatureStats {
    rows.sort_by(|a, b| a.0.total_cmp(&b.0));
    let users = population.users;
    let nonzero: Vec<f64> = rows.iter().map(|r| r.0 as f64).collect();
    let support = nonzero.len() as u64;
    let zeros = users - support as f64;
    let sum: f64 = nonzero.iter().sum();
    let (lo, hi) = (
        nonzero.first().copied().unwrap_or(0.0),
        nonzero.last().copied().unwrap_or(0.0),
    );
    let (min, max) = if zeros > 0.0 {
        (lo.min(0.0), hi.max(0.0))
    } else {
        (lo, hi)
    };
    let edges = quartile_edges(&nonzero);
    let shares_on = |edges: &[f64; 3]| {
        let mut counts = [0.0; BINS];
        counts[0] = zeros;
        for v in &nonzero {
            counts[bin_of(*v, edges)] += 1.0;
        }
        counts.map(|c| c / users.max(1.0))
    };
    let shares = shares_on(&edges);
    let (information_value, univariate_auc) = match labelled {
        true => separation(&rows, &edges, (population.positives, population.negatives)),
        false => (None, None),
    };
    // tonight's population binned on yesterday's edges
    let psi = before.map(|before| psi(&before.shares, &shares_on(&before.edges)));
    FeatureStats {
        feature_id,
        support,
        mean: sum / users.max(1.0),
        min,
        max,
        edges,
        shares,
        information_value,
        univariate_auc,
        psi,
    }
}

/// How well one feature separates defaulters: its information value over the bins of `edges`
/// and its univariate AUC. `rows` are (non-zero value, label) sorted by value; `all` the
/// population's (defaults, non-defaults), so users without the feature count in the zero bin.
fn separation(
    rows: &[(f32, Label)],
    edges: &[f64; 3],
    all: (f64, f64),
) -> (Option<f64>, Option<f64>) {
    let (all_positives, all_negatives) = all;
    let mut pos = [0.0; BINS];
    let mut neg = [0.0; BINS];
    let mut groups = Vec::with_capacity(rows.len() + 1);
    for &(value, label) in rows {
        let value = value as f64;
        match label {
            Label::Default => {
                pos[bin_of(value, edges)] += 1.0;
                groups.push((value, 1.0, 0.0));
            }
            Label::Repaid => {
                neg[bin_of(value, edges)] += 1.0;
                groups.push((value, 0.0, 1.0));
            }
            Label::Unknown => {}
        }
    }
    pos[0] = all_positives - pos[1..].iter().sum::<f64>();
    neg[0] = all_negatives - neg[1..].iter().sum::<f64>();
    groups.push((0.0, pos[0], neg[0]));
    let univariate_auc = grouped_auc(groups);
    let information_value = (all_positives > 0.0 && all_negatives > 0.0).then(|| {
        pos.iter()
            .zip(&neg)
            .map(|(&p, &n)| {
                let dp = (p + 0.5) / (all_positives + 0.5 * BINS as f64);
                let dn = (n + 0.5) / (all_negatives + 0.5 * BINS as f64);
                (dp - dn) * (dp / dn).ln()
            })
            .sum()
    });
    (information_value, univariate_auc)
}

/// A feature that separates defaulters best on the training set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Strength {
    pub name: String,
    pub information_value: f64,
    pub univariate_auc: f64,
}

/// The `n` features with the highest information value.
pub fn strongest(
    stats: &[FeatureStats],
    dictionary: &FeatureDictionary,
    n: usize,
) -> Vec<Strength> {
    let mut strong: Vec<Strength> = stats
        .iter()
        .filter_map(|s| {
            Some(Strength {
                name: dictionary.name(s.feature_id).to_string(),
                information_value: s.information_value?,
                univariate_auc: s.univariate_auc?,
            })
        })
        .collect();
    strong.sort_by(|a, b| {
        b.information_value
            .total_cmp(&a.information_value)
            .then(a.name.cmp(&b.name))
    });
    strong.truncate(n);
    strong
}

/// The `n` features with the highest PSI.
pub fn most_drifted(
    stats: &[FeatureStats],
    dictionary: &FeatureDictionary,
    n: usize,
) -> Vec<Drift> {
    let mut drifted: Vec<Drift> = stats
        .iter()
        .filter_map(|s| {
            s.psi.map(|psi| Drift {
                name: dictionary.name(s.feature_id).to_string(),
                psi,
            })
        })
        .collect();
    drifted.sort_by(|a, b| b.psi.total_cmp(&a.psi).then(a.name.cmp(&b.name)));
    drifted.truncate(n);
    drifted
}

fn schema() -> SchemaRef {
    let mut fields = vec![
        Field::new("feature_id", DataType::UInt32, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("support", DataType::UInt64, false),
        Field::new("mean", DataType::Float64, false),
        Field::new("min", DataType::Float64, false),
        Field::new("max", DataType::Float64, false),
    ];
    fields.extend((1..=3).map(|i| Field::new(format!("edge_{i}"), DataType::Float64, false)));
    fields.extend((0..BINS).map(|i| Field::new(format!("share_{i}"), DataType::Float64, false)));
    fields.extend(
        ["information_value", "univariate_auc", "psi"]
            .map(|n| Field::new(n, DataType::Float64, true)),
    );
    Arc::new(Schema::new(fields))
}

pub async fn write(
    store: &Store,
    as_of: NaiveDate,
    stats: &[FeatureStats],
    dictionary: &FeatureDictionary,
) -> Result<(), FeatureError> {
    let column = |f: &dyn Fn(&FeatureStats) -> f64| -> Arc<dyn Array> {
        Arc::new(Float64Array::from_iter_values(stats.iter().map(f)))
    };
    let optional = |f: &dyn Fn(&FeatureStats) -> Option<f64>| -> Arc<dyn Array> {
        Arc::new(Float64Array::from_iter(stats.iter().map(f)))
    };
    let mut columns: Vec<Arc<dyn Array>> = vec![
        Arc::new(UInt32Array::from_iter_values(
            stats.iter().map(|s| s.feature_id),
        )),
        Arc::new(StringArray::from_iter_values(
            stats.iter().map(|s| dictionary.name(s.feature_id)),
        )),
        Arc::new(UInt64Array::from_iter_values(
            stats.iter().map(|s| s.support),
        )),
        column(&|s| s.mean),
        column(&|s| s.min),
        column(&|s| s.max),
    ];
    for i in 0..3 {
        columns.push(column(&move |s: &FeatureStats| s.edges[i]));
    }
    for i in 0..BINS {
        columns.push(column(&move |s: &FeatureStats| s.shares[i]));
    }
    columns.push(optional(&|s| s.information_value));
    columns.push(optional(&|s| s.univariate_auc));
    columns.push(optional(&|s| s.psi));
    let batch = RecordBatch::try_new(schema(), columns).map_err(|e| FeatureError::Result {
        family: "feature stats".into(),
        problem: e.to_string(),
    })?;
    store
        .write_parquet(&layout::feature_stats_file(as_of), batch.schema(), &[batch])
        .await?;
    Ok(())
}

/// The newest stats written before `as_of` (normally the previous night's), by feature id,
/// with the date they are from.
pub async fn previous(
    store: &Store,
    as_of: NaiveDate,
) -> Result<(Option<NaiveDate>, HashMap<u32, FeatureStats>), FeatureError> {
    let newest = store
        .list("features")
        .await?
        .into_iter()
        .filter_map(|(path, _)| layout::stats_date(&path))
        .filter(|d| *d < as_of)
        .max();
    let Some(day) = newest else {
        return Ok((None, HashMap::new()));
    };
    let mut out = HashMap::new();
    for batch in store.read_parquet(&layout::feature_stats_file(day)).await? {
        let f64s = |name: &str| {
            batch
                .column_by_name(name)
                .map(|c| c.as_primitive::<Float64Type>().clone())
        };
        let (Some(ids), Some(e1), Some(e2), Some(e3)) = (
            batch
                .column_by_name("feature_id")
                .map(|c| c.as_primitive::<UInt32Type>().clone()),
            f64s("edge_1"),
            f64s("edge_2"),
            f64s("edge_3"),
        ) else {
            return Err(FeatureError::Result {
                family: "feature stats".into(),
                problem: format!(
                    "{} lacks feature_id or edge columns",
                    layout::feature_stats_file(day)
                ),
            });
        };
        let shares: Option<Vec<_>> = (0..BINS).map(|i| f64s(&format!("share_{i}"))).collect();
        let shares = shares.ok_or_else(|| FeatureError::Result {
            family: "feature stats".into(),
            problem: format!("{} lacks share columns", layout::feature_stats_file(day)),
        })?;
        for row in 0..batch.num_rows() {
            out.insert(
                ids.value(row),
                FeatureStats {
                    feature_id: ids.value(row),
                    support: 0,
                    mean: 0.0,
                    min: 0.0,
                    max: 0.0,
                    edges: [e1.value(row), e2.value(row), e3.value(row)],
                    shares: std::array::from_fn(|i| shares[i].value(row)),
                    information_value: None,
                    univariate_auc: None,
                    psi: None,
                },
            );
        }
    }
    Ok((Some(day), out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(users: Vec<u64>, rows: Vec<(u64, u32, f32)>) -> FeatureSet {
        FeatureSet {
            as_of: NaiveDate::from_ymd_opt(2026, 1, 1).unwrap(),
            users,
            user_ids: rows.iter().map(|r| r.0).collect(),
            feature_ids: rows.iter().map(|r| r.1).collect(),
            values: rows.iter().map(|r| r.2).collect(),
        }
    }

    #[test]
    fn support_mean_and_range_count_users_without_the_feature_as_zero() {
        let s = set(vec![1, 2, 3, 4], vec![(1, 0, 2.0), (2, 0, 4.0)]);
        let stats = compute(&s, None, &HashMap::new()).unwrap();
        assert_eq!(stats[0].support, 2);
        assert_eq!(stats[0].mean, 1.5);
        assert_eq!((stats[0].min, stats[0].max), (0.0, 4.0));
        assert!((stats[0].shares.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert_eq!(stats[0].shares[0], 0.5);
    }

    #[test]
    fn a_feature_held_only_by_defaulters_has_perfect_auc_and_positive_iv() {
        let users: Vec<u64> = (1..=100).collect();
        let rows: Vec<(u64, u32, f32)> = (1..=10).map(|u| (u, 0, 1.0)).collect();
        let labels: Labels = users.iter().map(|&u| (u, u <= 10)).collect();
        let stats = compute(&set(users, rows), Some(&labels), &HashMap::new()).unwrap();
        assert_eq!(stats[0].univariate_auc, Some(1.0));
        assert!(stats[0].information_value.unwrap() > 1.0);
    }

    #[test]
    fn psi_is_zero_for_the_same_distribution_and_grows_with_drift() {
        let users: Vec<u64> = (1..=100).collect();
        let before = compute(
            &set(users.clone(), (1..=50).map(|u| (u, 0, u as f32)).collect()),
            None,
            &HashMap::new(),
        )
        .unwrap();
        let previous: HashMap<u32, FeatureStats> =
            before.into_iter().map(|s| (s.feature_id, s)).collect();
        let same = compute(
            &set(users.clone(), (1..=50).map(|u| (u, 0, u as f32)).collect()),
            None,
            &previous,
        )
        .unwrap();
        assert!(same[0].psi.unwrap().abs() < 1e-12);
        let drifted = compute(
            &set(users, (1..=90).map(|u| (u, 0, 100.0)).collect()),
            None,
            &previous,
        )
        .unwrap();
        assert!(drifted[0].psi.unwrap() > 0.25, "{:?}", drifted[0].psi);
    }

    #[test]
    fn stats_gathered_in_parts_and_buckets_of_features_equal_the_stats_of_the_whole_set() {
        let users: Vec<u64> = (1..=300).collect();
        let rows: Vec<(u64, u32, f32)> = users
            .iter()
            .flat_map(|&u| {
                (0..12u32)
                    .filter(move |f| (u + *f as u64) % 3 != 0)
                    .map(move |f| (u, f, ((u * 7 + f as u64 * 13) % 23) as f32 - 4.0))
            })
            .collect();
        let labels: Labels = users.iter().map(|&u| (u, u % 5 == 0)).collect();
        let whole = compute(
            &set(users.clone(), rows.clone()),
            Some(&labels),
            &HashMap::new(),
        );
        let whole = whole.unwrap();
        assert_eq!(whole.len(), 12);
        let previous: HashMap<u32, FeatureStats> =
            whole.iter().map(|s| (s.feature_id, s.clone())).collect();
        let mut gathered = Gathered::new(5).unwrap();
        for part in 0..3u64 {
            let part_users: Vec<u64> = users.iter().copied().filter(|u| u % 3 == part).collect();
            let part_rows = rows.iter().copied().filter(|r| r.0 % 3 == part).collect();
            gathered
                .add(&set(part_users, part_rows), Some(&labels))
                .unwrap();
        }
        let in_parts = gathered.compute(true, &previous).unwrap();
        let expected: Vec<FeatureStats> = whole
            .into_iter()
            .map(|s| FeatureStats {
                psi: Some(0.0),
                ..s
            })
            .collect();
        assert_eq!(in_parts, expected);
    }

    #[test]
    fn grouped_auc_matches_the_pairwise_definition() {
        // scores 0 (1 pos, 2 neg), 1 (1 pos, 1 neg), 2 (1 pos, 0 neg)
        let auc = grouped_auc(vec![(0.0, 1.0, 2.0), (1.0, 1.0, 1.0), (2.0, 1.0, 0.0)]).unwrap();
        // pairs: 3 pos x 3 neg = 9; wins: pos@0: 0 + 0.5*2 = 1; pos@1: 2 + 0.5 = 2.5; pos@2: 3
        assert!((auc - 6.5 / 9.0).abs() < 1e-12);
    }
}
