//! Interactive suggestions: for each user, the certificate families that would raise their
//! limit most tonight, with the amount each would add. What-if scoring, not a guess: the
//! user's feature row gets the family's certificate feature, the model scores it again, and
//! the policy decides again with the certificate held; the suggestion is the difference.
//!
//! Reads the model, CSR rows, the policy and its inputs; writes nothing (publish encodes the
//! suggestions into the table).

use std::collections::HashMap;

use burn::tensor::Device;
use rayon::prelude::*;

use crate::dataset::Csr;
use crate::features::FeatureDictionary;
use crate::model::Model;
use crate::policy::{Decision, HeldCertificate, LimitPolicy, UserFacts};

/// One suggestion: upload a certificate of `family` (such as `name`) for `amount` more.
#[derive(Debug, Clone, PartialEq)]
pub struct Suggestion {
    pub family: String,
    pub certificate: HeldCertificate,
    pub amount: f64,
}

/// The certificate a user of each family would most likely upload: the verified type most
/// users already hold, read with full confidence. Families in name order.
pub fn representatives(held: &HashMap<u64, Vec<HeldCertificate>>) -> Vec<HeldCertificate> {
    let mut counts: HashMap<(String, u32), (usize, &HeldCertificate)> = HashMap::new();
    for certificate in held.values().flatten() {
        counts
            .entry((certificate.family.clone(), certificate.cert_type_id))
            .or_insert((0, certificate))
            .0 += 1;
    }
    let mut best: HashMap<&str, (usize, &HeldCertificate)> = HashMap::new();
    for ((family, _), (n, certificate)) in &counts {
        let entry = best.entry(family.as_str()).or_insert((*n, certificate));
        if (*n, std::cmp::Reverse(certificate.cert_type_id))
            > (entry.0, std::cmp::Reverse(entry.1.cert_type_id))
        {
            *entry = (*n, certificate);
        }
    }
    let mut out: Vec<HeldCertificate> = best
        .into_values()
        .map(|(_, c)| HeldCertificate {
            confidence: 1.0,
            ..c.clone()
        })
        .collect();
    out.sort_by(|a, b| a.family.cmp(&b.family));
    out
}

/// The feature a held certificate of this type produces, if the dictionary has it.
fn certificate_feature(dictionary: &FeatureDictionary, cert_type_id: u32) -> Option<u32> {
    dictionary.id(&format!("certificate[cert_type_id={cert_type_id}]"))
}

/// `rows` with feature `id` set to 1 in every row (rows that have it keep theirs).
fn with_feature(rows: &Csr, id: u32) -> Csr {
    let mut out = Csr {
        users: rows.users.clone(),
        offsets: Vec::with_capacity(rows.offsets.len()),
        ids: Vec::with_capacity(rows.ids.len() + rows.len()),
        values: Vec::with_capacity(rows.values.len() + rows.len()),
    };
    out.offsets.push(0);
    for r in 0..rows.len() {
        let (ids, values) = rows.row(r);
        let at = ids.partition_point(|&x| x < id);
        out.ids.extend_from_slice(&ids[..at]);
        out.values.extend_from_slice(&values[..at]);
        out.ids.push(id);
        out.values.push(1.0);
        let rest = if ids.get(at) == Some(&id) { at + 1 } else { at };
        out.ids.extend_from_slice(&ids[rest..]);
        out.values.extend_from_slice(&values[rest..]);
        out.offsets.push(out.ids.len());
    }
    out
}

/// For every row, the families that would raise the limit, largest amount first, at most
/// `keep`. `facts` and `decisions` are tonight's, in the order of `rows`.
#[allow(clippy::too_many_arguments)]
pub fn suggest(
    model: &Model,
    rows: &Csr,
    dictionary: &FeatureDictionary,
    policy: &LimitPolicy,
    facts: &[UserFacts],
    decisions: &[Decision],
    candidates: &[HeldCertificate],
    device: &Device,
    keep: usize,
) -> Vec<Vec<Suggestion>> {
    let mut out: Vec<Vec<Suggestion>> = vec![Vec::new(); rows.len()];
    for candidate in candidates {
        // the model's view: the certificate's feature added to every row
        let pd = match certificate_feature(dictionary, candidate.cert_type_id) {
            Some(id) => model.pd(&with_feature(rows, id), device),
            None => model.pd(rows, device),
        };
        let gains: Vec<Option<f64>> = (0..rows.len())
            .into_par_iter()
            .map(|r| {
                let held = facts[r]
                    .certificates
                    .iter()
                    .any(|c| c.cert_type_id == candidate.cert_type_id);
                if held {
                    return None;
                }
                let mut what_if = facts[r].clone();
                what_if.certificates.push(candidate.clone());
                let gain = policy.decide(pd[r], &what_if).credit_limit - decisions[r].credit_limit;
                (gain > 0.0).then_some(gain)
            })
            .collect();
        for (r, gain) in gains.into_iter().enumerate() {
            if let Some(amount) = gain {
                out[r].push(Suggestion {
                    family: candidate.family.clone(),
                    certificate: candidate.clone(),
                    amount,
                });
            }
        }
    }
    for list in &mut out {
        list.sort_by(|a, b| b.amount.total_cmp(&a.amount).then(a.family.cmp(&b.family)));
        list.truncate(keep);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adding_a_feature_keeps_rows_sorted_and_sets_it_to_one() {
        let rows = Csr {
            users: vec![1, 2],
            offsets: vec![0, 2, 3],
            ids: vec![1, 5, 3],
            values: vec![0.5, 2.0, 4.0],
        };
        let out = with_feature(&rows, 3);
        assert_eq!(out.row(0), (&[1, 3, 5][..], &[0.5, 1.0, 2.0][..]));
        assert_eq!(out.row(1), (&[3][..], &[1.0][..]));
    }

    #[test]
    fn the_most_held_type_represents_its_family() {
        let cert = |id, family: &str| HeldCertificate {
            cert_type_id: id,
            name: format!("t{id}"),
            family: family.into(),
            tier: 2,
            confidence: 0.9,
        };
        let held: HashMap<u64, Vec<HeldCertificate>> = [
            (1, vec![cert(7, "language"), cert(3, "professional")]),
            (2, vec![cert(7, "language")]),
            (3, vec![cert(8, "language")]),
        ]
        .into_iter()
        .collect();
        let reps = representatives(&held);
        assert_eq!(reps.len(), 2);
        assert_eq!((reps[0].cert_type_id, reps[0].confidence), (7, 1.0));
        assert_eq!(reps[1].family, "professional");
    }
}
