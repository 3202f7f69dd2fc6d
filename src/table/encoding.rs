//! How a table's columns become features, learned once on the training rows and stored with
//! the model as `models/<version>/encoding.json`, so any later table is encoded the same way.
//!
//! - A numeric column: its standardized value (`<column>`), `<column>=null` where missing,
//!   and, with bins, one indicator per value range (`<column> in (a, b]`) as scorecard tools
//!   do: quantile bins, merged into monotone ones where the training labels support a
//!   monotone trend (a likelihood-ratio test at 5%).
//! - A text, boolean or date column: one indicator per value (`<column>=<value>`), the
//!   `MAX_LEVELS` most frequent ones, and `<column>=null`.
//!
//! Scoring a table: a value the training rows never had (a new level, a null where training
//! had none) adds no feature, so the row scores as the average row does on that column; a
//! column the table lacks is missing on every row. Both are counted in the scoring summary.
//!
//! Feature ids follow the encoding's order, so the encoding alone rebuilds the dictionary the
//! model was trained with (and its prefix hash checks that it did).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::features::FeatureDictionary;

/// Values kept per categorical column; rarer ones share no feature.
pub const MAX_LEVELS: usize = 1000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableEncoding {
    /// the label column, which is never an input
    pub label: String,
    pub columns: Vec<ColumnEncoding>,
    /// columns constant on the training rows, which carry nothing
    pub skipped: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ColumnEncoding {
    Numeric {
        name: String,
        mean: f64,
        /// 0: the column's present values were all equal, and only `=null` is a feature
        std: f64,
        /// whether training rows had missing values (and so a `=null` feature)
        with_null: bool,
        /// upper bounds of every bin but the last, ascending; empty: no bins. Each lies
        /// halfway between two values seen in training, so no value sits on one.
        bin_edges: Vec<f64>,
    },
    Categorical {
        name: String,
        levels: Vec<String>,
        with_null: bool,
    },
}

/// A column's values, as the encoding reads them.
pub enum ColumnValues {
    Numbers(Vec<Option<f64>>),
    Text(Vec<Option<String>>),
}

impl ColumnEncoding {
    pub fn name(&self) -> &str {
        match self {
            ColumnEncoding::Numeric { name, .. } | ColumnEncoding::Categorical { name, .. } => name,
        }
    }

    pub fn is_numeric(&self) -> bool {
        matches!(self, ColumnEncoding::Numeric { .. })
    }

    /// Learns a column's encoding from the values of `training` rows; None for a column
    /// constant there.
    pub fn learn(
        name: &str,
        values: &ColumnValues,
        training: &[usize],
        labels: &[Option<f64>],
        bins: usize,
    ) -> Option<ColumnEncoding> {
        match values {
            ColumnValues::Numbers(values) => {
                let present: Vec<(f64, f64)> = training
                    .iter()
                    .filter_map(|&r| Some((values[r]?, labels[r]?)))
                    .collect();
                let with_null = present.len() < training.len();
                let n = present.len().max(1) as f64;
                let mean = present.iter().map(|(v, _)| v).sum::<f64>() / n;
                let var = present.iter().map(|(v, _)| (v - mean).powi(2)).sum::<f64>() / n;
                let std = var.sqrt();
                if std == 0.0 && !with_null {
                    return None;
                }
                let bin_edges = match bins {
                    0 => Vec::new(),
                    _ => monotone_or_quantile_edges(present, bins),
                };
                Some(ColumnEncoding::Numeric {
                    name: name.to_string(),
                    mean,
                    std,
                    with_null,
                    bin_edges,
                })
            }
            ColumnValues::Text(values) => learn_levels(name, values, training),
        }
    }

    /// Adds this column's features to `dictionary`, in a fixed order.
    fn name_features(&self, dictionary: &mut FeatureDictionary) {
        let name = self.name();
        match self {
            ColumnEncoding::Numeric {
                std,
                with_null,
                bin_edges,
                ..
            } => {
                if *std > 0.0 {
                    dictionary.id_or_insert(name, name);
                }
                if *with_null {
                    dictionary.id_or_insert(&format!("{name}=null"), name);
                }
                for bin in 0..bin_edges.len() + usize::from(!bin_edges.is_empty()) {
                    dictionary.id_or_insert(&bin_name(name, bin_edges, bin), name);
                }
            }
            ColumnEncoding::Categorical {
                levels, with_null, ..
            } => {
                for level in levels {
                    dictionary.id_or_insert(&format!("{name}={level}"), name);
                }
                if *with_null {
                    dictionary.id_or_insert(&format!("{name}=null"), name);
                }
            }
        }
    }

    /// Appends each row's (feature id, value) pairs for this column; `values` None: the
    /// table lacks the column.
    pub fn encode(
        &self,
        values: Option<&ColumnValues>,
        dictionary: &FeatureDictionary,
        rows: &mut [Vec<(u32, f32)>],
    ) {
        let name = self.name();
        let id = |feature: &str| dictionary.id(feature);
        let null = id(&format!("{name}=null"));
        match (self, values) {
            (
                ColumnEncoding::Numeric {
                    mean,
                    std,
                    bin_edges,
                    ..
                },
                Some(ColumnValues::Numbers(values)),
            ) => {
                let standardized = id(name).filter(|_| *std > 0.0);
                let bins: Vec<Option<u32>> = (0..=bin_edges.len())
                    .map(|bin| id(&bin_name(name, bin_edges, bin)))
                    .collect();
                for (row, value) in rows.iter_mut().zip(values) {
                    match value {
                        Some(v) => {
                            if let Some(feature) = standardized {
                                row.push((feature, ((v - mean) / std) as f32));
                            }
                            let bin = bin_edges.partition_point(|edge| edge < v);
                            if let Some(feature) = bins[bin] {
                                row.push((feature, 1.0));
                            }
                        }
                        None => row.extend(null.map(|f| (f, 1.0))),
                    }
                }
            }
            (ColumnEncoding::Categorical { .. }, Some(ColumnValues::Text(values))) => {
                for (row, value) in rows.iter_mut().zip(values) {
                    let feature = match value {
                        Some(v) => id(&format!("{name}={v}")),
                        None => null,
                    };
                    row.extend(feature.map(|f| (f, 1.0)));
                }
            }
            // a missing column (or, never reached, values of the other kind): missing values
            _ => rows
                .iter_mut()
                .for_each(|row| row.extend(null.map(|f| (f, 1.0)))),
        }
    }
}

impl TableEncoding {
    /// The dictionary the encoding's features make, in id order.
    pub fn dictionary(&self) -> FeatureDictionary {
        let mut dictionary = FeatureDictionary::default();
        for column in &self.columns {
            column.name_features(&mut dictionary);
        }
        dictionary
    }
}

/// `<column> in (a, b]`, with `<=`/`>` for the two open-ended bins.
fn bin_name(column: &str, edges: &[f64], bin: usize) -> String {
    match (bin.checked_sub(1).map(|i| edges[i]), edges.get(bin)) {
        (None, Some(upper)) => format!("{column}<={upper}"),
        (Some(lower), None) => format!("{column}>{lower}"),
        (Some(lower), Some(upper)) => format!("{column} in ({lower}, {upper}]"),
        (None, None) => format!("{column} (any)"),
    }
}

fn learn_levels(
    name: &str,
    values: &[Option<String>],
    training: &[usize],
) -> Option<ColumnEncoding> {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    let mut with_null = false;
    for &row in training {
        match &values[row] {
            Some(v) => *counts.entry(v.as_str()).or_default() += 1,
            None => with_null = true,
        }
    }
    if counts.len() <= 1 && !with_null {
        return None;
    }
    let mut levels: Vec<(&str, usize)> = counts.into_iter().collect();
    levels.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    levels.truncate(MAX_LEVELS);
    let mut levels: Vec<String> = levels.into_iter().map(|(v, _)| v.to_string()).collect();
    levels.sort();
    Some(ColumnEncoding::Categorical {
        name: name.to_string(),
        levels,
        with_null,
    })
}

/// A bin's rows and defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct BinCount {
    rows: f64,
    defaults: f64,
}

impl BinCount {
    fn add(self, other: BinCount) -> BinCount {
        BinCount {
            rows: self.rows + other.rows,
            defaults: self.defaults + other.defaults,
        }
    }

    fn rate(&self) -> f64 {
        self.defaults / self.rows
    }

    /// The Bernoulli log-likelihood of the bin's labels at its own default rate.
    fn log_likelihood(&self) -> f64 {
        let p = self.rate();
        let term = |k: f64, q: f64| if k > 0.0 { k * q.ln() } else { 0.0 };
        term(self.defaults, p) + term(self.rows - self.defaults, 1.0 - p)
    }
}

/// Quantile bins of `(value, label)` pairs (at most `bins`), merged into the monotone bins
/// pool-adjacent-violators gives in the better-fitting direction when a likelihood-ratio test
/// does not reject monotonicity at 5%. Edges lie halfway between neighbouring values.
fn monotone_or_quantile_edges(mut present: Vec<(f64, f64)>, bins: usize) -> Vec<f64> {
    present.sort_by(|a, b| a.0.total_cmp(&b.0));
    // each bin ends at a value; its edge is halfway to the next distinct value
    let mut ends: Vec<usize> = (1..bins)
        .map(|q| (q * present.len() / bins).saturating_sub(1))
        .collect();
    ends.dedup();
    let mut edges: Vec<(usize, f64)> = Vec::new();
    for end in ends {
        let value = present[end].0;
        let next = present[end..].iter().position(|(v, _)| *v > value);
        if let Some(step) = next {
            let edge = (value + present[end + step].0) / 2.0;
            if edges.last().is_none_or(|(_, last)| *last < edge) {
                edges.push((end + step, edge));
            }
        }
    }
    if edges.is_empty() {
        return Vec::new();
    }
    let mut counts = Vec::new();
    let mut start = 0;
    for end in edges
        .iter()
        .map(|(next_start, _)| *next_start)
        .chain([present.len()])
    {
        counts.push(
            present[start..end]
                .iter()
                .fold(BinCount::default(), |c, (_, y)| {
                    c.add(BinCount {
                        rows: 1.0,
                        defaults: *y,
                    })
                }),
        );
        start = end;
    }
    let full: f64 = counts.iter().map(BinCount::log_likelihood).sum();
    let best = [true, false]
        .map(|increasing| pool_adjacent_violators(&counts, increasing))
        .into_iter()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .expect("two directions");
    let (groups, monotone) = best;
    let df = (counts.len() - groups.len()) as f64;
    let edge_values: Vec<f64> = edges.iter().map(|(_, e)| *e).collect();
    if df == 0.0 || 2.0 * (full - monotone) <= chi_square_95(df) {
        // keep the edge after each merged group but the last
        let mut kept = Vec::new();
        let mut bin = 0;
        for size in &groups[..groups.len() - 1] {
            bin += size;
            kept.push(edge_values[bin - 1]);
        }
        kept
    } else {
        edge_values
    }
}

/// Merges adjacent bins until their default rates rise (or fall) monotonically; the sizes of
/// the merged groups in order, and the log-likelihood of the merged bins.
fn pool_adjacent_violators(counts: &[BinCount], increasing: bool) -> (Vec<usize>, f64) {
    let mut pools: Vec<(BinCount, usize)> = Vec::new();
    for &count in counts {
        pools.push((count, 1));
        while pools.len() > 1 {
            let (last, before) = (pools[pools.len() - 1].0, pools[pools.len() - 2].0);
            let violates = match increasing {
                true => before.rate() > last.rate(),
                false => before.rate() < last.rate(),
            };
            if !violates {
                break;
            }
            let (merged, size) = pools.pop().expect("two pools");
            let previous = pools.last_mut().expect("two pools");
            *previous = (previous.0.add(merged), previous.1 + size);
        }
    }
    let likelihood = pools.iter().map(|(c, _)| c.log_likelihood()).sum();
    (
        pools.into_iter().map(|(_, size)| size).collect(),
        likelihood,
    )
}

/// The chi-square distribution's 95th percentile with `df` degrees of freedom
/// (Wilson-Hilferty: 3.75 for 3.84 at df = 1, within 1% from df = 3).
fn chi_square_95(df: f64) -> f64 {
    let a = 2.0 / (9.0 * df);
    df * (1.0 - a + 1.644_853_6 * a.sqrt()).powi(3)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbers(values: &[f64]) -> ColumnValues {
        ColumnValues::Numbers(values.iter().map(|v| Some(*v)).collect())
    }

    /// Bin counts of `(value, label)` pairs under `edges`, as default rates.
    fn rates(pairs: &[(f64, f64)], edges: &[f64]) -> Vec<f64> {
        let mut counts = vec![(0.0, 0.0); edges.len() + 1];
        for (v, y) in pairs {
            let bin = edges.partition_point(|e| e < v);
            counts[bin].0 += 1.0;
            counts[bin].1 += y;
        }
        counts.iter().map(|(n, d)| d / n).collect()
    }

    #[test]
    fn bins_merge_into_monotone_ones_only_where_the_labels_allow_it() {
        // default rate rising with the value, with noise that breaks monotonicity a little
        let rising: Vec<(f64, f64)> = (0..2000)
            .map(|i| {
                let v = i as f64;
                let p = 0.05 + 0.3 * v / 2000.0;
                let u = ((i as u64 * 2654435761) % 1000) as f64 / 1000.0;
                (v, f64::from(u < p))
            })
            .collect();
        let edges = monotone_or_quantile_edges(rising.clone(), 10);
        let merged = rates(&rising, &edges);
        assert!(merged.windows(2).all(|w| w[0] <= w[1]), "{merged:?}");
        assert!(
            edges.len() >= 2,
            "a clear trend keeps several bins: {edges:?}"
        );
        // every edge lies between two values, never on one
        assert!(edges.iter().all(|e| e.fract() == 0.5), "{edges:?}");

        // a U shape is far from monotone: the ten quantile bins stay
        let u_shaped: Vec<(f64, f64)> = (0..2000)
            .map(|i| {
                let v = i as f64;
                let p = if (400..1600).contains(&i) { 0.05 } else { 0.5 };
                let u = ((i as u64 * 2654435761) % 1000) as f64 / 1000.0;
                (v, f64::from(u < p))
            })
            .collect();
        assert_eq!(monotone_or_quantile_edges(u_shaped, 10).len(), 9);
    }

    #[test]
    fn an_encoding_learns_on_training_rows_and_scores_unseen_values_as_nothing() {
        let labels = vec![Some(0.0), Some(1.0), Some(0.0), Some(1.0), Some(0.0)];
        let training = [0, 1, 2, 3];
        let city = ColumnValues::Text(
            ["north", "south", "north", "south", "mars"]
                .iter()
                .map(|c| Some(c.to_string()))
                .collect(),
        );
        let column = ColumnEncoding::learn("city", &city, &training, &labels, 0).unwrap();
        // the holdout row's value is not a level
        assert_eq!(
            column,
            ColumnEncoding::Categorical {
                name: "city".into(),
                levels: vec!["north".into(), "south".into()],
                with_null: false
            }
        );
        let income = numbers(&[1.0, 2.0, 3.0, 4.0, 1000.0]);
        let income = ColumnEncoding::learn("income", &income, &training, &labels, 0).unwrap();
        let ColumnEncoding::Numeric { mean, .. } = income else {
            panic!("{income:?}")
        };
        assert_eq!(mean, 2.5, "the holdout's 1000 is not in the mean");
        let encoding = TableEncoding {
            label: "y".into(),
            columns: vec![column, income],
            skipped: Vec::new(),
        };
        let dictionary = encoding.dictionary();
        let names: Vec<&str> = (0..dictionary.len() as u32)
            .map(|i| dictionary.name(i))
            .collect();
        assert_eq!(names, ["city=north", "city=south", "income"]);
        let mut rows = vec![Vec::new(); 5];
        encoding.columns[0].encode(Some(&city), &dictionary, &mut rows);
        assert_eq!(rows[4], vec![], "mars adds no feature");
        assert_eq!(rows[1], vec![(1, 1.0)]);
        // a missing column: nothing, as no training row was missing
        let mut rows = vec![Vec::new(); 2];
        encoding.columns[1].encode(None, &dictionary, &mut rows);
        assert_eq!(rows, vec![vec![]; 2]);
    }

    #[test]
    fn a_constant_column_is_skipped_unless_it_has_missing_values() {
        let labels = vec![Some(0.0), Some(1.0), Some(0.0)];
        let constant = numbers(&[5.0, 5.0, 5.0]);
        assert!(ColumnEncoding::learn("c", &constant, &[0, 1, 2], &labels, 10).is_none());
        let sometimes = ColumnValues::Numbers(vec![Some(5.0), None, Some(5.0)]);
        let column = ColumnEncoding::learn("c", &sometimes, &[0, 1, 2], &labels, 10).unwrap();
        let encoding = TableEncoding {
            label: "y".into(),
            columns: vec![column],
            skipped: Vec::new(),
        };
        let dictionary = encoding.dictionary();
        assert_eq!(dictionary.len(), 1);
        assert_eq!(dictionary.name(0), "c=null");
    }
}
