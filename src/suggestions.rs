//! Interactive suggestions: for each user, the certificate families that would raise their
//! limit most tonight, with the amount each would add. What-if scoring, not a guess: the
//! user's feature row gets every feature a verified upload of the family's certificate would
//! change (`features::WhatIf`: its type's indicator, the count of verified certificates, ...),
//! the model scores it again, and the policy decides again with the certificate held; the
//! suggestion is the difference.
//!
//! Reads the model, CSR rows, the policy and its inputs; writes nothing (publish encodes the
//! suggestions into the table).

use std::collections::HashMap;

use burn::tensor::Device;
use rayon::prelude::*;

use std::sync::Arc;

use chrono::NaiveDate;
use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Date32Array, Float32Array, RecordBatch, StringArray,
    TimestampMicrosecondArray, UInt32Array, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use tracing::warn;

use crate::dataset::Csr;
use crate::features::{FeatureConfig, FeatureDictionary, FeatureError, WhatIf};
use crate::model::Model;
use crate::policy::{Decision, HeldCertificate, LimitPolicy, UserFacts};
use crate::{schema, sources};

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
    let mut counted = HeldCounts::default();
    counted.add(held);
    counted.representatives()
}

/// Certificates held, counted by (family, type) over one user part after another.
#[derive(Debug, Default)]
pub struct HeldCounts {
    counts: HashMap<(String, u32), (usize, HeldCertificate)>,
}

impl HeldCounts {
    pub fn add(&mut self, held: &HashMap<u64, Vec<HeldCertificate>>) {
        for certificate in held.values().flatten() {
            self.counts
                .entry((certificate.family.clone(), certificate.cert_type_id))
                .or_insert_with(|| (0, certificate.clone()))
                .0 += 1;
        }
    }

    /// Per family, the type held most (the lower id on a tie), read with full confidence.
    pub fn representatives(&self) -> Vec<HeldCertificate> {
        let mut best: HashMap<&str, (usize, &HeldCertificate)> = HashMap::new();
        for ((family, _), (n, certificate)) in &self.counts {
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
}

/// A verified, unrevoked upload of `certificate`, learned the day before `as_of`, as one row
/// of the certificates source's clean view.
fn upload_row(
    certificate: &HeldCertificate,
    as_of: NaiveDate,
) -> Result<RecordBatch, FeatureError> {
    let day_before = (as_of - chrono::Duration::days(1))
        .and_hms_opt(12, 0, 0)
        .expect("noon exists")
        .and_utc()
        .timestamp_micros();
    let at = || -> ArrayRef {
        Arc::new(TimestampMicrosecondArray::from(vec![day_before]).with_timezone("UTC"))
    };
    let none = || -> ArrayRef {
        Arc::new(TimestampMicrosecondArray::from(vec![None::<i64>]).with_timezone("UTC"))
    };
    let mut fields: Vec<Field> = schema::CERTIFICATES
        .raw_arrow()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new("dt", DataType::Utf8, true));
    fields.push(Field::new(
        sources::SUPERSEDED_AT,
        fields[3].data_type().clone(),
        true,
    ));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from(vec![0u64])),
        Arc::new(StringArray::from(vec!["what-if"])),
        Arc::new(UInt32Array::from(vec![certificate.cert_type_id])),
        at(),
        Arc::new(BooleanArray::from(vec![true])),
        at(),
        none(),
        Arc::new(StringArray::from(vec![None::<&str>])),
        Arc::new(Date32Array::from(vec![None::<i32>])),
        Arc::new(Float32Array::from(vec![certificate.confidence as f32])),
        at(),
        Arc::new(StringArray::from(vec![
            (as_of - chrono::Duration::days(1)).to_string(),
        ])),
        none(),
    ];
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|error| {
        FeatureError::Result {
            family: "certificates".into(),
            problem: format!("the what-if upload row: {error}"),
        }
    })
}

/// For each candidate, what a verified upload of it changes in anyone's features as of
/// `as_of`, with a warning for families a merge cannot follow.
pub async fn what_ifs(
    config: &FeatureConfig,
    dictionary: &FeatureDictionary,
    candidates: &[HeldCertificate],
    as_of: NaiveDate,
) -> Result<Vec<WhatIf>, FeatureError> {
    let mut out = Vec::with_capacity(candidates.len());
    for candidate in candidates {
        let row = upload_row(candidate, as_of)?;
        let what_if = WhatIf::of_row(config, dictionary, "certificates", row, as_of).await?;
        if !what_if.unmodelled.is_empty() {
            warn!(
                certificate = %candidate.name,
                families = ?what_if.unmodelled,
                "suggestions leave these features as they are: one more row cannot be merged into their aggregate"
            );
        }
        out.push(what_if);
    }
    Ok(out)
}

/// `rows` with `what_if` applied to every row.
fn with_upload(rows: &Csr, what_if: &WhatIf) -> Csr {
    let mut out = Csr {
        users: rows.users.clone(),
        offsets: Vec::with_capacity(rows.offsets.len()),
        ..Default::default()
    };
    out.offsets.push(0);
    for r in 0..rows.len() {
        let (ids, values) = rows.row(r);
        let (ids, values) = what_if.apply(ids, values);
        out.ids.extend(ids);
        out.values.extend(values);
        out.offsets.push(out.ids.len());
    }
    out
}

/// For every row, the families that would raise the limit, largest amount first, at most
/// `keep`. `facts` and `decisions` are tonight's, in the order of `rows`; `what_ifs` are the
/// candidates' (see `what_ifs`).
#[allow(clippy::too_many_arguments)]
pub fn suggest(
    model: &Model,
    rows: &Csr,
    policy: &LimitPolicy,
    facts: &[UserFacts],
    decisions: &[Decision],
    candidates: &[HeldCertificate],
    what_ifs: &[WhatIf],
    device: &Device,
    keep: usize,
) -> Vec<Vec<Suggestion>> {
    let mut out: Vec<Vec<Suggestion>> = vec![Vec::new(); rows.len()];
    for (candidate, what_if) in candidates.iter().zip(what_ifs) {
        // the model's view: every row as if the certificate were uploaded and verified
        let pd = model.pd(&with_upload(rows, what_if), device);
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
