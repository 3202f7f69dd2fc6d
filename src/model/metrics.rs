//! Model quality measures that need no tensors, the ones risk teams read: AUC and Gini, KS,
//! log loss, Brier, expected calibration error, a calibration table, lift by decile, PSI of a
//! score against another population, and the same headline numbers per segment.

use serde::{Deserialize, Serialize};

/// Bins of the calibration table and the ECE: equal-count bins of the predicted PD, since
/// PDs crowd near zero and equal-width bins would put almost everyone in the first.
pub const CALIBRATION_BINS: usize = 10;

/// Every number can be NaN (an AUC of a holdout without defaults, say): JSON has no NaN, so
/// serde_json writes `null`, and each field reads `null` back as NaN (see `nan_as_null`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    #[serde(deserialize_with = "nan_as_null::read")]
    pub auc: f64,
    /// 2 AUC - 1
    #[serde(default, deserialize_with = "nan_as_null::read")]
    pub gini: f64,
    /// largest gap between the cumulative score distributions of defaults and non-defaults
    #[serde(default, deserialize_with = "nan_as_null::read")]
    pub ks: f64,
    #[serde(deserialize_with = "nan_as_null::read")]
    pub log_loss: f64,
    #[serde(deserialize_with = "nan_as_null::read")]
    pub brier: f64,
    /// expected calibration error over `CALIBRATION_BINS` equal-count bins
    #[serde(default, deserialize_with = "nan_as_null::read")]
    pub ece: f64,
    /// mean predicted PD and observed default rate
    #[serde(default, deserialize_with = "nan_as_null::read")]
    pub mean_pd: f64,
    #[serde(default, deserialize_with = "nan_as_null::read")]
    pub default_rate: f64,
    pub rows: usize,
    pub positives: usize,
}

/// Reads a number written by serde_json, which writes a non-finite one as `null`.
pub(super) mod nan_as_null {
    use serde::{Deserialize, Deserializer};

    pub fn read<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(deserializer)?.unwrap_or(f64::NAN))
    }
}

/// Area under the ROC curve by ranks, ties sharing their average rank.
/// `None` when one class is missing.
pub fn auc(scores: &[f64], labels: &[f32]) -> Option<f64> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let positives = labels.iter().filter(|l| **l > 0.5).count() as f64;
    let negatives = labels.len() as f64 - positives;
    if positives == 0.0 || negatives == 0.0 {
        return None;
    }
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let average_rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            if labels[k] > 0.5 {
                rank_sum += average_rank;
            }
        }
        i = j + 1;
    }
    Some((rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives))
}

/// Points of the ROC curve from the highest score down, one per distinct score:
/// (false positive rate, true positive rate), starting at (0, 0) and ending at (1, 1).
pub fn roc(scores: &[f64], labels: &[f32]) -> Vec<(f64, f64)> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let positives = labels.iter().filter(|l| **l > 0.5).count().max(1) as f64;
    let negatives = (labels.len() as f64 - positives).max(1.0);
    let mut points = vec![(0.0, 0.0)];
    let (mut tp, mut fp) = (0.0, 0.0);
    for (n, &i) in order.iter().enumerate() {
        if labels[i] > 0.5 {
            tp += 1.0;
        } else {
            fp += 1.0;
        }
        let last_of_tie = order
            .get(n + 1)
            .is_none_or(|&next| scores[next] != scores[i]);
        if last_of_tie {
            points.push((fp / negatives, tp / positives));
        }
    }
    points
}

/// Kolmogorov-Smirnov statistic: the largest TPR - FPR over all thresholds.
pub fn ks(scores: &[f64], labels: &[f32]) -> f64 {
    roc(scores, labels)
        .into_iter()
        .map(|(fpr, tpr)| tpr - fpr)
        .fold(0.0, f64::max)
}

/// Row indices sorted by score, cut into `bins` groups of (nearly) equal size.
fn equal_count_bins(scores: &[f64], bins: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let bins = bins.max(1);
    (0..bins)
        .map(|b| order[b * order.len() / bins..(b + 1) * order.len() / bins].to_vec())
        .filter(|rows| !rows.is_empty())
        .collect()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationBin {
    pub rows: usize,
    pub min_pd: f64,
    pub max_pd: f64,
    pub mean_pd: f64,
    pub default_rate: f64,
}

/// Predicted against observed, per equal-count bin of PD, lowest PD first.
pub fn calibration_table(pd: &[f64], labels: &[f32], bins: usize) -> Vec<CalibrationBin> {
    equal_count_bins(pd, bins)
        .into_iter()
        .map(|rows| {
            let n = rows.len() as f64;
            CalibrationBin {
                rows: rows.len(),
                min_pd: pd[rows[0]],
                max_pd: pd[rows[rows.len() - 1]],
                mean_pd: rows.iter().map(|&i| pd[i]).sum::<f64>() / n,
                default_rate: rows.iter().map(|&i| labels[i] as f64).sum::<f64>() / n,
            }
        })
        .collect()
}

/// Expected calibration error: the row-weighted mean gap between predicted and observed.
pub fn ece(pd: &[f64], labels: &[f32], bins: usize) -> f64 {
    let total = pd.len().max(1) as f64;
    calibration_table(pd, labels, bins)
        .iter()
        .map(|b| b.rows as f64 / total * (b.mean_pd - b.default_rate).abs())
        .sum()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decile {
    /// 1 = the riskiest tenth of users
    pub decile: usize,
    pub rows: usize,
    pub defaults: usize,
    pub default_rate: f64,
    /// default rate over the overall rate
    pub lift: f64,
    /// share of all defaults caught in this and riskier deciles
    pub cumulative_capture: f64,
}

pub fn lift_by_decile(pd: &[f64], labels: &[f32]) -> Vec<Decile> {
    let total_defaults = labels.iter().filter(|l| **l > 0.5).count().max(1) as f64;
    let overall = total_defaults / labels.len().max(1) as f64;
    let mut caught = 0.0;
    let mut bins = equal_count_bins(pd, 10);
    bins.reverse();
    bins.into_iter()
        .enumerate()
        .map(|(i, rows)| {
            let defaults = rows.iter().filter(|&&r| labels[r] > 0.5).count();
            caught += defaults as f64;
            let rate = defaults as f64 / rows.len() as f64;
            Decile {
                decile: i + 1,
                rows: rows.len(),
                defaults,
                default_rate: rate,
                lift: rate / overall,
                cumulative_capture: caught / total_defaults,
            }
        })
        .collect()
}

/// Population stability index of `actual` against `expected`, on ten bins cut at the
/// deciles of `expected`; empty bins count as half a row so the logarithm stays finite.
/// Below 0.1 reads as stable, above 0.25 as a shift worth a look.
pub fn psi(expected: &[f64], actual: &[f64]) -> f64 {
    if expected.is_empty() || actual.is_empty() {
        return 0.0;
    }
    let mut sorted = expected.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mut edges: Vec<f64> = (1..10).map(|d| sorted[d * sorted.len() / 10]).collect();
    edges.dedup();
    let shares = |values: &[f64]| {
        let mut counts = vec![0.0; edges.len() + 1];
        for v in values {
            counts[edges.partition_point(|e| e <= v)] += 1.0;
        }
        counts
            .into_iter()
            .map(|c: f64| c.max(0.5) / values.len() as f64)
            .collect::<Vec<f64>>()
    };
    let (e, a) = (shares(expected), shares(actual));
    e.iter().zip(&a).map(|(e, a)| (a - e) * (a / e).ln()).sum()
}

/// The share of the oracle's lift over a coin flip that a model captures:
/// (AUC - 0.5) / (oracle AUC - 0.5). Unlike AUC / oracle, a model no better than chance
/// scores 0 whatever the world's oracle.
pub fn lift_share(auc: f64, oracle_auc: f64) -> f64 {
    (auc - 0.5) / (oracle_auc - 0.5)
}

pub fn evaluate(pd: &[f64], labels: &[f32]) -> Metrics {
    let n = pd.len().max(1) as f64;
    let clamp = |p: f64| p.clamp(1e-7, 1.0 - 1e-7);
    let log_loss = pd
        .iter()
        .zip(labels)
        .map(|(&p, &y)| -(y as f64 * clamp(p).ln() + (1.0 - y as f64) * (1.0 - clamp(p)).ln()))
        .sum::<f64>()
        / n;
    let brier = pd
        .iter()
        .zip(labels)
        .map(|(&p, &y)| (p - y as f64).powi(2))
        .sum::<f64>()
        / n;
    let auc = auc(pd, labels).unwrap_or(f64::NAN);
    let positives = labels.iter().filter(|l| **l > 0.5).count();
    Metrics {
        auc,
        gini: 2.0 * auc - 1.0,
        ks: ks(pd, labels),
        log_loss,
        brier,
        ece: ece(pd, labels, CALIBRATION_BINS),
        mean_pd: pd.iter().sum::<f64>() / n,
        default_rate: positives as f64 / n,
        rows: pd.len(),
        positives,
    }
}

/// The headline metrics of one segment value (a city tier, an age band, an occupation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentMetrics {
    pub segment: String,
    pub value: String,
    pub rows: usize,
    pub defaults: usize,
    pub default_rate: f64,
    pub mean_pd: f64,
    /// None where the segment has only one class
    pub auc: Option<f64>,
    /// share of the segment's rows the policy grants a limit (where decisions were given)
    #[serde(default)]
    pub approval_rate: Option<f64>,
    #[serde(default)]
    pub mean_limit: Option<f64>,
    /// each of the three divided by the best segment's of the same family (1 for the best;
    /// the four-fifths rule reads `approval_ratio` below 0.8 as adverse impact)
    #[serde(default)]
    pub approval_ratio: Option<f64>,
    #[serde(default)]
    pub limit_ratio: Option<f64>,
    #[serde(default)]
    pub auc_ratio: Option<f64>,
}

/// What the policy did for one row: whether it granted a limit, and the limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    pub approved: bool,
    pub limit: f64,
}

/// Metrics per value of a segment; `values[i]` is row i's value (None: not in the segment).
/// `labels` and `outcomes` may be empty (no labels tonight; no decisions on a table of
/// your own): the metrics that need them are then left out.
pub fn by_segment<S: AsRef<str>>(
    segment: &str,
    values: &[Option<S>],
    pd: &[f64],
    labels: &[f32],
    outcomes: &[Outcome],
) -> Vec<SegmentMetrics> {
    let mut groups: std::collections::BTreeMap<&str, Vec<usize>> = Default::default();
    for (i, v) in values.iter().enumerate() {
        if let Some(v) = v {
            groups.entry(v.as_ref()).or_default().push(i);
        }
    }
    let mut segments: Vec<SegmentMetrics> = groups
        .into_iter()
        .map(|(value, rows)| {
            let n = rows.len() as f64;
            let pd: Vec<f64> = rows.iter().map(|&i| pd[i]).collect();
            let labels: Vec<f32> = rows
                .iter()
                .filter_map(|&i| labels.get(i).copied())
                .collect();
            let defaults = labels.iter().filter(|l| **l > 0.5).count();
            let decided: Vec<Outcome> = rows
                .iter()
                .filter_map(|&i| outcomes.get(i).copied())
                .collect();
            let decided_share = |f: &dyn Fn(&Outcome) -> f64| {
                (!decided.is_empty()).then(|| decided.iter().map(f).sum::<f64>() / n)
            };
            SegmentMetrics {
                segment: segment.to_string(),
                value: value.to_string(),
                rows: rows.len(),
                defaults,
                default_rate: defaults as f64 / n,
                mean_pd: pd.iter().sum::<f64>() / n,
                auc: (labels.len() == pd.len())
                    .then(|| auc(&pd, &labels))
                    .flatten(),
                approval_rate: decided_share(&|o| o.approved as u8 as f64),
                mean_limit: decided_share(&|o| o.limit),
                approval_ratio: None,
                limit_ratio: None,
                auc_ratio: None,
            }
        })
        .collect();
    set_ratios(&mut segments);
    segments
}

/// Each segment's approval rate, mean limit and AUC over the best segment's (of one family).
pub fn set_ratios(segments: &mut [SegmentMetrics]) {
    let best = |f: fn(&SegmentMetrics) -> Option<f64>, all: &[SegmentMetrics]| {
        all.iter()
            .filter_map(f)
            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))))
    };
    let ratio = |x: Option<f64>, best: Option<f64>| match (x, best) {
        (Some(x), Some(b)) if b > 0.0 => Some(x / b),
        _ => None,
    };
    let approval = best(|s| s.approval_rate, segments);
    let limit = best(|s| s.mean_limit, segments);
    let auc = best(|s| s.auc, segments);
    for s in segments {
        s.approval_ratio = ratio(s.approval_rate, approval);
        s.limit_ratio = ratio(s.mean_limit, limit);
        s.auc_ratio = ratio(s.auc, auc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lift_share_is_zero_for_a_coin_flip_and_one_for_the_oracle() {
        assert_eq!(lift_share(0.5, 0.8), 0.0);
        assert!((lift_share(0.8, 0.8) - 1.0).abs() < 1e-12);
        assert!((lift_share(0.74, 0.77) - 0.24 / 0.27).abs() < 1e-12);
    }

    #[test]
    fn a_nan_metric_survives_being_written_as_json_and_read_back() {
        // a holdout without a default: no AUC
        let metrics = evaluate(&[0.1, 0.2, 0.3], &[0.0, 0.0, 0.0]);
        assert!(metrics.auc.is_nan());
        let json = serde_json::to_string(&metrics).unwrap();
        assert!(json.contains("\"auc\":null"), "{json}");
        let back: Metrics = serde_json::from_str(&json).unwrap();
        assert!(back.auc.is_nan());
        assert_eq!(back.rows, 3);
    }

    #[test]
    fn auc_of_perfect_random_and_inverted_rankings() {
        let labels = [0.0, 0.0, 1.0, 1.0];
        assert_eq!(auc(&[0.1, 0.2, 0.8, 0.9], &labels), Some(1.0));
        assert_eq!(auc(&[0.9, 0.8, 0.2, 0.1], &labels), Some(0.0));
        assert_eq!(auc(&[0.5, 0.5, 0.5, 0.5], &labels), Some(0.5));
        assert_eq!(auc(&[0.5, 0.5], &[0.0, 0.0]), None);
    }

    #[test]
    fn auc_counts_ties_as_half() {
        // one positive tied with one negative, above the other negative
        let auc = auc(&[0.3, 0.7, 0.7], &[0.0, 0.0, 1.0]).unwrap();
        assert!((auc - 0.75).abs() < 1e-12);
    }

    #[test]
    fn ks_is_one_for_a_perfect_split_and_the_roc_ends_at_one_one() {
        let labels = [0.0, 0.0, 1.0, 1.0];
        assert!((ks(&[0.1, 0.2, 0.8, 0.9], &labels) - 1.0).abs() < 1e-12);
        let curve = roc(&[0.1, 0.2, 0.8, 0.9], &labels);
        assert_eq!(curve.first(), Some(&(0.0, 0.0)));
        assert_eq!(curve.last(), Some(&(1.0, 1.0)));
    }

    #[test]
    fn ece_is_zero_when_predictions_match_observed_rates_and_grows_with_bias() {
        // in every bin of ten rows, exactly as many defaults as the bin's PD predicts
        let mut pd = Vec::new();
        let mut labels = Vec::new();
        for bin in 0..10 {
            for row in 0..10 {
                pd.push(bin as f64 / 10.0);
                labels.push(if row < bin { 1.0 } else { 0.0 });
            }
        }
        assert!(ece(&pd, &labels, 10) < 1e-12);
        let doubled: Vec<f64> = pd.iter().map(|p| (p * 2.0).min(1.0)).collect();
        assert!(ece(&doubled, &labels, 10) > 0.2);
    }

    #[test]
    fn deciles_start_with_the_riskiest_and_capture_everything() {
        let pd: Vec<f64> = (0..100).map(|i| i as f64 / 100.0).collect();
        let labels: Vec<f32> = (0..100).map(|i| if i >= 90 { 1.0 } else { 0.0 }).collect();
        let deciles = lift_by_decile(&pd, &labels);
        assert_eq!(deciles[0].defaults, 10);
        assert!((deciles[0].lift - 10.0).abs() < 1e-9);
        assert!((deciles[9].cumulative_capture - 1.0).abs() < 1e-12);
    }

    #[test]
    fn psi_is_zero_for_the_same_population_and_large_for_a_shift() {
        let a: Vec<f64> = (0..1000).map(|i| i as f64 / 1000.0).collect();
        assert!(psi(&a, &a) < 1e-12);
        let shifted: Vec<f64> = a.iter().map(|x| x * 0.5).collect();
        assert!(psi(&a, &shifted) > 0.25);
    }
}
