//! Reason codes: why a user's PD is what it is. The wide part of the network is additive, so
//! each feature's weight times value is its exact share of the logit; the adverse reasons
//! are the features that raised it most. The deep part is not additive and is reported as
//! one number beside them.

use rayon::prelude::*;

use crate::dataset::Csr;

/// One user's logit taken apart: `bias + sum(contributions) == wide_logit`, and
/// `wide_logit + deep_logit` is the model's logit.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    pub wide_logit: f64,
    pub deep_logit: f64,
    /// (feature id, weight * value) of every known feature in the row
    pub contributions: Vec<(u32, f64)>,
}

impl Explanation {
    /// The `k` features that raised the logit most, largest first (ties by feature id).
    pub fn adverse(&self, k: usize) -> Vec<(u32, f64)> {
        self.adverse_among(k, |_| true)
    }

    /// The `k` features `may_give` allows that raised the logit most, largest first: a
    /// withheld feature (a protected attribute) is passed over, not replaced by nothing.
    pub fn adverse_among(&self, k: usize, may_give: impl Fn(u32) -> bool) -> Vec<(u32, f64)> {
        let mut adverse: Vec<(u32, f64)> = self
            .contributions
            .iter()
            .copied()
            .filter(|(id, c)| *c > 0.0 && may_give(*id))
            .collect();
        adverse.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        adverse.truncate(k);
        adverse
    }
}

/// Explains every row of `rows` given the wide weights and bias and each row's full logit.
pub fn explain(weights: &[f32], bias: f32, rows: &Csr, logits: &[f64]) -> Vec<Explanation> {
    (0..rows.len())
        .into_par_iter()
        .map(|r| {
            let (ids, values) = rows.row(r);
            let contributions: Vec<(u32, f64)> = ids
                .iter()
                .zip(values)
                .filter(|(id, _)| (**id as usize) < weights.len())
                .map(|(&id, &value)| (id, weights[id as usize] as f64 * value as f64))
                .collect();
            let wide_logit = bias as f64 + contributions.iter().map(|(_, c)| c).sum::<f64>();
            Explanation {
                wide_logit,
                deep_logit: logits[r] - wide_logit,
                contributions,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contributions_add_up_to_the_wide_logit_and_adverse_ones_come_first() {
        let rows = Csr {
            users: vec![1],
            offsets: vec![0, 3],
            ids: vec![0, 1, 2],
            values: vec![1.0, 2.0, 1.0],
        };
        let weights = [0.5, -0.25, 0.75];
        let explained = explain(&weights, -2.0, &rows, &[-0.5]);
        let e = &explained[0];
        assert!((e.wide_logit - (-2.0 + 0.5 - 0.5 + 0.75)).abs() < 1e-12);
        assert!((e.wide_logit + e.deep_logit - (-0.5)).abs() < 1e-12);
        assert_eq!(e.adverse(5), vec![(2, 0.75), (0, 0.5)]);
        assert_eq!(e.adverse_among(1, |id| id != 2), vec![(0, 0.5)]);
    }
}
