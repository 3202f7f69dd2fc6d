//! Turning model logits into PDs that mean what they say, and PDs into scorecard points.
//!
//! Platt scaling fits `pd = sigmoid(slope * logit + intercept)` on a validation split the
//! network did not train on: it keeps the ranking (AUC unchanged) and removes the bias that
//! class weighting and L2 shrinkage put into raw outputs.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Platt {
    pub slope: f64,
    pub intercept: f64,
}

impl Default for Platt {
    fn default() -> Self {
        Platt {
            slope: 1.0,
            intercept: 0.0,
        }
    }
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

impl Platt {
    /// Maximum-likelihood fit by Newton's method on the two parameters, with step halving so
    /// the log loss never rises. Starts from the identity, so a calibrated model stays put.
    pub fn fit(logits: &[f64], labels: &[f32]) -> Platt {
        let loss = |p: &Platt| -> f64 {
            logits
                .iter()
                .zip(labels)
                .map(|(&z, &y)| {
                    let s = p.slope * z + p.intercept;
                    // log(1 + e^s) - y s, stable for large |s|
                    s.max(0.0) + (-s.abs()).exp().ln_1p() - y as f64 * s
                })
                .sum()
        };
        let mut current = Platt::default();
        let mut current_loss = loss(&current);
        for _ in 0..100 {
            let (mut g_a, mut g_b, mut h_aa, mut h_ab, mut h_bb) = (0.0, 0.0, 0.0, 0.0, 0.0);
            for (&z, &y) in logits.iter().zip(labels) {
                let p = sigmoid(current.slope * z + current.intercept);
                let r = p - y as f64;
                let w = (p * (1.0 - p)).max(1e-12);
                g_a += r * z;
                g_b += r;
                h_aa += w * z * z;
                h_ab += w * z;
                h_bb += w;
            }
            let det = h_aa * h_bb - h_ab * h_ab;
            if det.abs() < 1e-12 {
                break;
            }
            let step_a = (h_bb * g_a - h_ab * g_b) / det;
            let step_b = (h_aa * g_b - h_ab * g_a) / det;
            let mut scale = 1.0;
            let mut improved = false;
            while scale > 1e-6 {
                let next = Platt {
                    slope: current.slope - scale * step_a,
                    intercept: current.intercept - scale * step_b,
                };
                let next_loss = loss(&next);
                if next_loss <= current_loss {
                    improved = current_loss - next_loss > 1e-10 * current_loss.abs().max(1.0);
                    current = next;
                    current_loss = next_loss;
                    break;
                }
                scale /= 2.0;
            }
            if !improved {
                break;
            }
        }
        current
    }

    pub fn pd(&self, logit: f64) -> f64 {
        sigmoid(self.slope * logit + self.intercept)
    }
}

/// Scorecard points: `base_points` at odds (good:bad) of `base_odds`, and `points_to_double`
/// more points each time the odds of being good double (PDO). Higher is safer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scorecard {
    pub base_points: f64,
    pub base_odds: f64,
    pub points_to_double: f64,
}

#[cfg(test)]
impl Default for Scorecard {
    fn default() -> Self {
        Scorecard {
            base_points: 600.0,
            base_odds: 50.0,
            points_to_double: 20.0,
        }
    }
}

impl Scorecard {
    pub fn points(&self, pd: f64) -> f64 {
        let pd = pd.clamp(1e-9, 1.0 - 1e-9);
        let factor = self.points_to_double / std::f64::consts::LN_2;
        let offset = self.base_points - factor * self.base_odds.ln();
        (offset + factor * ((1.0 - pd) / pd).ln()).round()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platt_recovers_a_known_distortion() {
        // true pd = sigmoid(0.5 z - 1); the model's logits are z
        let logits: Vec<f64> = (0..4000).map(|i| (i as f64 / 4000.0) * 8.0 - 4.0).collect();
        let labels: Vec<f32> = logits
            .iter()
            .enumerate()
            .map(|(i, &z)| {
                let p = sigmoid(0.5 * z - 1.0);
                // a deterministic, well-spread draw
                let u = ((i as f64 * 0.618_033_988_75) % 1.0 + 0.5 * (i % 7) as f64 / 7.0) % 1.0;
                if u < p { 1.0 } else { 0.0 }
            })
            .collect();
        let fit = Platt::fit(&logits, &labels);
        assert!((fit.slope - 0.5).abs() < 0.15, "{fit:?}");
        assert!((fit.intercept + 1.0).abs() < 0.15, "{fit:?}");
    }

    #[test]
    fn points_follow_the_pdo_definition() {
        let card = Scorecard::default();
        // odds 50:1 -> 600 points; odds 100:1 -> 620
        assert_eq!(card.points(1.0 / 51.0), 600.0);
        assert_eq!(card.points(1.0 / 101.0), 620.0);
        assert!(card.points(0.5) < card.points(0.1));
    }
}
