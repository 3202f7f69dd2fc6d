//! Fraud checks on certificate uploads: numbers shared between users, bursts of uploads, and
//! users whose certificates are read just over the confidence threshold. A flagged user gets
//! no certificate boost, and the reason code says which check flagged them. Pure.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use chrono::NaiveDate;

use super::FraudChecks;

/// A fraud check a user failed. Declared in the order of their stored names, so a user's
/// sorted flags read the same as before they were an enum.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum FraudFlag {
    ConfidenceJustOverThreshold,
    SharedCertificateNumber,
    UploadBurst,
}

impl FraudFlag {
    pub fn as_str(self) -> &'static str {
        match self {
            FraudFlag::ConfidenceJustOverThreshold => "confidence_just_over_threshold",
            FraudFlag::SharedCertificateNumber => "shared_certificate_number",
            FraudFlag::UploadBurst => "upload_burst",
        }
    }
}

impl fmt::Display for FraudFlag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One upload as the fraud checks see it: every recognized certificate, verified or not.
#[derive(Debug, Clone, PartialEq)]
pub struct Upload {
    pub user_id: u64,
    pub certificate_no: String,
    pub day: NaiveDate,
    pub confidence: f64,
}

/// Users the fraud checks flag, with the checks they failed.
pub fn fraud_flags(
    uploads: &[Upload],
    checks: &FraudChecks,
    min_confidence: f64,
) -> HashMap<u64, Vec<FraudFlag>> {
    let mut flags: HashMap<u64, Vec<FraudFlag>> = HashMap::new();
    let mut flag = |user: u64, what: FraudFlag| {
        let list = flags.entry(user).or_default();
        if !list.contains(&what) {
            list.push(what);
        }
    };
    let mut holders: HashMap<&str, BTreeSet<u64>> = HashMap::new();
    let mut per_day: HashMap<(u64, NaiveDate), usize> = HashMap::new();
    let mut near: HashMap<u64, (usize, usize)> = HashMap::new();
    for u in uploads {
        holders
            .entry(&u.certificate_no)
            .or_default()
            .insert(u.user_id);
        *per_day.entry((u.user_id, u.day)).or_default() += 1;
        let entry = near.entry(u.user_id).or_default();
        entry.0 += 1;
        if u.confidence >= min_confidence
            && u.confidence < min_confidence + checks.near_threshold_margin
        {
            entry.1 += 1;
        }
    }
    for users in holders.values() {
        if users.len() > checks.max_users_per_certificate_number {
            for &user in users {
                flag(user, FraudFlag::SharedCertificateNumber);
            }
        }
    }
    for ((user, _), count) in &per_day {
        if *count > checks.max_uploads_per_day {
            flag(*user, FraudFlag::UploadBurst);
        }
    }
    for (user, (total, just_over)) in &near {
        if *total >= checks.near_threshold_min_count
            && *just_over as f64 >= checks.near_threshold_share * *total as f64
        {
            flag(*user, FraudFlag::ConfidenceJustOverThreshold);
        }
    }
    for list in flags.values_mut() {
        list.sort();
    }
    flags
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::LimitPolicy;

    #[test]
    fn flags_sort_by_their_stored_names() {
        let mut flags = vec![
            FraudFlag::UploadBurst,
            FraudFlag::ConfidenceJustOverThreshold,
            FraudFlag::SharedCertificateNumber,
        ];
        flags.sort();
        let names: Vec<&str> = flags.iter().map(|f| f.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
    }

    #[test]
    fn fraud_checks_flag_shared_numbers_bursts_and_threshold_hugging() {
        let policy = LimitPolicy::builtin();
        let day = NaiveDate::from_ymd_opt(2026, 10, 1).unwrap();
        let upload = |user, no: &str, day, confidence| Upload {
            user_id: user,
            certificate_no: no.into(),
            day,
            confidence,
        };
        let mut uploads = vec![
            upload(1, "SHARED", day, 0.95),
            upload(2, "SHARED", day, 0.95),
            upload(9, "OWN-9", day, 0.97),
        ];
        for k in 0..=policy.fraud.max_uploads_per_day {
            uploads.push(upload(3, &format!("B{k}"), day, 0.97));
        }
        for k in 0..4 {
            let d = day + chrono::Duration::days(k);
            uploads.push(upload(
                4,
                &format!("N{k}"),
                d,
                policy.certificate_boost.min_confidence + 0.001,
            ));
        }
        let flags = fraud_flags(
            &uploads,
            &policy.fraud,
            policy.certificate_boost.min_confidence,
        );
        assert_eq!(flags[&1], vec![FraudFlag::SharedCertificateNumber]);
        assert_eq!(flags[&2], vec![FraudFlag::SharedCertificateNumber]);
        assert_eq!(flags[&3], vec![FraudFlag::UploadBurst]);
        assert_eq!(flags[&4], vec![FraudFlag::ConfidenceJustOverThreshold]);
        assert!(!flags.contains_key(&9));
    }
}
