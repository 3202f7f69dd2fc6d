//! Fraud checks on certificate uploads: numbers shared between users, bursts of uploads, and
//! users whose certificates are read just over the confidence threshold. A flagged user gets
//! no certificate boost, and the reason code says which check flagged them. Builds the checks
//! as one SQL statement, so the engine aggregates every user's uploads under its memory limit
//! and only the flagged users come back; runs nothing itself.

use std::fmt;

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

/// The fraud checks over `uploads`, a query of every recognized upload (verified or not)
/// with columns `user_id`, `certificate_no`, `day` (DATE) and `confidence` (DOUBLE): one
/// statement a check, each giving the users (`user_id`, once each) who fail it.
/// - a certificate number uploaded by more than `max_users_per_certificate_number` users
///   flags every one of them;
/// - more than `max_uploads_per_day` uploads on one day flag the user;
/// - a user with at least `near_threshold_min_count` uploads, at least
///   `near_threshold_share` of them read in [min_confidence, min_confidence + margin), is
///   flagged.
///
/// Three plain aggregations, not one statement over a UNION: Ballista 55 refused the task
/// statuses of one of that statement's stages and never finished the job.
pub fn checks_sql(
    uploads: &str,
    checks: &FraudChecks,
    min_confidence: f64,
) -> [(FraudFlag, String); 3] {
    let FraudChecks {
        max_users_per_certificate_number,
        max_uploads_per_day,
        near_threshold_margin,
        near_threshold_share,
        near_threshold_min_count,
    } = checks;
    let just_over_from = min_confidence;
    let just_over_to = min_confidence + near_threshold_margin;
    // Floats are written with `{:?}`, which reads back as the same f64.
    [
        (
            FraudFlag::SharedCertificateNumber,
            format!(
                "SELECT user_id FROM ({uploads}) WHERE certificate_no IN ( \
                   SELECT certificate_no FROM ({uploads}) GROUP BY certificate_no \
                   HAVING COUNT(DISTINCT user_id) > {max_users_per_certificate_number}) \
                 GROUP BY user_id"
            ),
        ),
        (
            FraudFlag::UploadBurst,
            format!(
                "SELECT user_id FROM ( \
                   SELECT user_id, COUNT(*) AS uploads FROM ({uploads}) GROUP BY user_id, day) \
                 WHERE uploads > {max_uploads_per_day} GROUP BY user_id"
            ),
        ),
        (
            FraudFlag::ConfidenceJustOverThreshold,
            format!(
                "SELECT user_id FROM ({uploads}) GROUP BY user_id \
                 HAVING COUNT(*) >= {near_threshold_min_count} \
                   AND CAST(SUM(CASE WHEN confidence >= {just_over_from:?} AND confidence < {just_over_to:?} THEN 1 ELSE 0 END) AS DOUBLE) \
                       >= {near_threshold_share:?} * CAST(COUNT(*) AS DOUBLE)"
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use chrono::NaiveDate;
    use datafusion::arrow::array::{
        AsArray, Date32Array, Float64Array, RecordBatch, StringArray, UInt64Array,
    };
    use datafusion::arrow::datatypes::{DataType, Field, Schema, UInt64Type};
    use datafusion::prelude::SessionContext;

    use super::*;
    use crate::policy::LimitPolicy;

    #[test]
    fn flags_sort_by_their_stored_names() {
        use FraudFlag::*;
        let mut flags = vec![
            UploadBurst,
            SharedCertificateNumber,
            ConfidenceJustOverThreshold,
        ];
        flags.sort();
        let names: Vec<&str> = flags.iter().map(|f| f.as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
    }

    /// Runs `checks_sql` over the given uploads (user, number, day, confidence).
    async fn flags_of(
        uploads: &[(u64, String, NaiveDate, f64)],
        policy: &LimitPolicy,
    ) -> BTreeMap<u64, Vec<FraudFlag>> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::UInt64, false),
            Field::new("certificate_no", DataType::Utf8, false),
            Field::new("day", DataType::Date32, false),
            Field::new("confidence", DataType::Float64, false),
        ]));
        let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(UInt64Array::from_iter_values(uploads.iter().map(|u| u.0))),
                Arc::new(StringArray::from_iter_values(uploads.iter().map(|u| &u.1))),
                Arc::new(Date32Array::from_iter_values(
                    uploads.iter().map(|u| (u.2 - epoch).num_days() as i32),
                )),
                Arc::new(Float64Array::from_iter_values(uploads.iter().map(|u| u.3))),
            ],
        )
        .unwrap();
        let ctx = SessionContext::new();
        ctx.register_batch("certificate_uploads", batch).unwrap();
        let checks = checks_sql(
            "SELECT * FROM certificate_uploads",
            &policy.fraud,
            policy.certificate_boost.min_confidence,
        );
        let mut flags = BTreeMap::<u64, Vec<FraudFlag>>::new();
        for (flag, sql) in checks {
            for batch in ctx.sql(&sql).await.unwrap().collect().await.unwrap() {
                for user in batch.column(0).as_primitive::<UInt64Type>().values() {
                    flags.entry(*user).or_default().push(flag);
                }
            }
        }
        flags.values_mut().for_each(|list| list.sort());
        flags
    }

    #[tokio::test]
    async fn fraud_checks_flag_shared_numbers_bursts_and_threshold_hugging() {
        let policy = LimitPolicy::builtin();
        let fraud = &policy.fraud;
        let (min, margin) = (
            policy.certificate_boost.min_confidence,
            fraud.near_threshold_margin,
        );
        let (just_over, at_margin, clear) = (min + margin / 2.0, min + margin, 0.99);
        let day =
            |k: usize| NaiveDate::from_ymd_opt(2026, 10, 1).unwrap() + chrono::Days::new(k as u64);
        let mut uploads = Vec::new();
        // user `user`'s own certificates, one per (day, confidence)
        let mut own = |user: u64, reads: &[(usize, f64)]| {
            for (k, (on, confidence)) in reads.iter().enumerate() {
                uploads.push((user, format!("{user}-{k}"), day(*on), *confidence));
            }
        };
        let (per_day, min_count) = (fraud.max_uploads_per_day, fraud.near_threshold_min_count);
        own(3, &vec![(0, clear); per_day + 1]); // one more in a day than allowed
        own(
            5,
            &[vec![(0, clear); per_day], vec![(1, clear); per_day]].concat(),
        ); // allowed
        let hugging: Vec<(usize, f64)> = (0..min_count).map(|k| (k, just_over)).collect();
        own(4, &hugging);
        own(6, &hugging[1..]); // too few to judge
        // exactly the share just over (2 of 4 with the shipped policy), and just under it
        let share_of = |n: usize| (fraud.near_threshold_share * n as f64).ceil() as usize;
        let n = min_count + 1;
        let mixed = |over: usize| -> Vec<(usize, f64)> {
            (0..n)
                .map(|k| (k, if k < over { just_over } else { at_margin }))
                .collect()
        };
        own(7, &mixed(share_of(n)));
        own(8, &mixed(share_of(n) - 1));
        // one number uploaded by two users; two versions of one upload are one holder
        uploads.push((1, "SHARED".into(), day(0), clear));
        uploads.push((2, "SHARED".into(), day(1), clear));
        uploads.push((9, "OWN-9".into(), day(0), clear));
        uploads.push((9, "OWN-9".into(), day(0), clear));
        assert_eq!(
            fraud.max_users_per_certificate_number, 1,
            "the test shares with two users"
        );

        let flags = flags_of(&uploads, &policy).await;
        use FraudFlag::*;
        let expected = BTreeMap::from([
            (1, vec![SharedCertificateNumber]),
            (2, vec![SharedCertificateNumber]),
            (3, vec![UploadBurst]),
            (4, vec![ConfidenceJustOverThreshold]),
            (7, vec![ConfidenceJustOverThreshold]),
        ]);
        assert_eq!(flags, expected);
    }
}
