//! Promotion gates: what a model must show on its holdout before it becomes the champion the
//! nightly job scores everyone with. A challenger must rank about as well as the champion on
//! the same rows and be calibrated; the first model of a root, with no champion to compare
//! with, must clear absolute floors. A person can override with `--force`, which the
//! champion record keeps.
//!
//! Reads evaluations and cards; writes nothing (the registry records the promotion).

use serde::{Deserialize, Serialize};

use super::ModelCard;
use super::evaluation::Evaluation;

/// `[promotion]` of nightly.toml.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromotionConfig {
    /// a challenger's holdout AUC may trail the champion's on the same rows by at most this
    pub max_auc_drop: f64,
    /// the most expected calibration error a champion may have on its holdout
    pub max_ece: f64,
    /// the least holdout AUC a model must reach to become champion when there is none to
    /// compare with (the first night of a root) or it cannot be compared on the same rows
    pub min_auc: f64,
    /// the least approval rate of any segment of a protected attribute, as a share of the
    /// best segment's (0.8: the four-fifths rule), on the holdout under the policy
    pub min_approval_ratio: f64,
    /// segments with fewer holdout rows are reported, not gated (their rates are noise)
    pub min_segment_rows: usize,
}

impl PromotionConfig {
    pub fn check(&self) -> Result<(), String> {
        let share = |x: f64| (0.0..=1.0).contains(&x);
        if !share(self.max_auc_drop) || !share(self.max_ece) || !share(self.min_auc) {
            return Err("max_auc_drop, max_ece and min_auc must be between 0 and 1".into());
        }
        if !share(self.min_approval_ratio) {
            return Err("min_approval_ratio must be between 0 and 1".into());
        }
        Ok(())
    }

    /// Segments of a protected attribute (`evaluation.protected`) with at least
    /// `min_segment_rows` rows whose approval rate is under `min_approval_ratio` of the best
    /// such segment's.
    pub fn disparity_refusals(&self, evaluation: &Evaluation) -> Vec<String> {
        let mut refusals = Vec::new();
        for family in &evaluation.protected {
            let gated: Vec<_> = evaluation
                .segments
                .iter()
                .filter(|s| &s.segment == family && s.rows >= self.min_segment_rows)
                .filter_map(|s| Some((s, s.approval_rate?)))
                .collect();
            let Some(&(best, best_rate)) = gated.iter().max_by(|a, b| a.1.total_cmp(&b.1)) else {
                continue;
            };
            for &(s, rate) in &gated {
                if best_rate > 0.0 && rate / best_rate < self.min_approval_ratio {
                    refusals.push(format!(
                        "{family}={}: approval rate {rate:.3} is {:.3} of {family}={}'s {best_rate:.3} (below [promotion] min_approval_ratio {})",
                        s.value,
                        rate / best_rate,
                        best.value,
                        self.min_approval_ratio
                    ));
                }
            }
        }
        refusals
    }

    /// Why a model with this holdout evaluation may not become champion; empty: it may. The
    /// champion comparison is the evaluation's own (the champion's AUC on the same rows);
    /// without one, the AUC floor applies.
    pub fn refusals(&self, evaluation: &Evaluation) -> Vec<String> {
        let m = &evaluation.metrics;
        match &evaluation.champion {
            Some(champion) if champion.auc.is_finite() => {
                let mut refusals = Vec::new();
                if below(m.auc, champion.auc - self.max_auc_drop) {
                    refusals.push(format!(
                        "holdout AUC {:.4} is more than {} below champion {}'s {:.4} on the same rows",
                        m.auc, self.max_auc_drop, champion.version, champion.auc
                    ));
                }
                refusals.extend(self.ece_refusal(m.ece));
                refusals.extend(self.disparity_refusals(evaluation));
                refusals
            }
            _ => {
                let mut refusals = self.floor_refusals(m.auc, m.ece);
                refusals.extend(self.disparity_refusals(evaluation));
                refusals
            }
        }
    }

    /// The floors alone, on a registered model's card (for `models promote`, which has no
    /// rows to compare the champion on).
    pub fn card_refusals(&self, card: &ModelCard) -> Vec<String> {
        self.floor_refusals(card.holdout.auc, card.holdout.ece)
    }

    fn floor_refusals(&self, auc: f64, ece: f64) -> Vec<String> {
        let mut refusals = Vec::new();
        if below(auc, self.min_auc) {
            refusals.push(format!(
                "holdout AUC {auc:.4} is below the floor {} ([promotion] min_auc)",
                self.min_auc
            ));
        }
        refusals.extend(self.ece_refusal(ece));
        refusals
    }

    fn ece_refusal(&self, ece: f64) -> Option<String> {
        (ece.is_nan() || ece > self.max_ece).then(|| {
            format!(
                "holdout ECE {ece:.4} is above {} ([promotion] max_ece)",
                self.max_ece
            )
        })
    }
}

/// Below `floor`, or not a number (which no gate lets through).
fn below(value: f64, floor: f64) -> bool {
    value.is_nan() || value < floor
}

/// What happened to a trained model's promotion.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PromotionDecision {
    pub promoted: bool,
    /// the gates it failed (promoted anyway when `forced`)
    pub refusals: Vec<String>,
    pub forced: bool,
}
