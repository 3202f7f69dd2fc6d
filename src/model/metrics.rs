//! Model quality measures that need no tensors: AUC, log loss, Brier score.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub auc: f64,
    pub log_loss: f64,
    pub brier: f64,
    pub rows: usize,
    pub positives: usize,
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
    Metrics {
        auc: auc(pd, labels).unwrap_or(f64::NAN),
        log_loss,
        brier,
        rows: pd.len(),
        positives: labels.iter().filter(|l| **l > 0.5).count(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
