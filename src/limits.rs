//! The limit policy: turns each user's PD into a credit limit with `pipelines/limits.toml`:
//! PD -> grade -> base limit, plus a boost for verified certificates, never above the ceiling
//! a user asked for, with reason codes for every decision.
//!
//! Reads scores and the clean `certificates`, `certificate_types` and `limit_requests` tables;
//! writes nothing (publish does). The policy itself is a pure function, tested on its own.

use std::collections::HashMap;

use chrono::NaiveDate;
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type, Int32Type, UInt64Type};
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionContext;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{file}: {error}")]
    Parse { file: String, error: String },
    #[error("{file}: {problem}")]
    Invalid { file: String, problem: String },
    #[error("reading policy inputs: {error}\n  query: {sql}")]
    Query { sql: String, error: DataFusionError },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitPolicy {
    /// Recorded in every published manifest.
    pub version: String,
    /// Limits are rounded down to a multiple of this.
    pub rounding: f64,
    /// Grades from best to worst; a PD above the last `max_pd` gets no credit.
    #[serde(rename = "grade")]
    pub grades: Vec<Grade>,
    pub certificate_boost: CertificateBoost,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grade {
    pub name: String,
    pub max_pd: f64,
    pub base_limit: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateBoost {
    /// Boost for certificate tiers 1, 2, 3, ...; each between 100 and 3,000.
    pub tier_boosts: Vec<f64>,
    /// Only certificates the recognizer read with at least this confidence count.
    pub min_confidence: f64,
    /// The sum of a user's boosts is capped here.
    pub max_total: f64,
}

impl LimitPolicy {
    pub fn load(path: &std::path::Path) -> Result<LimitPolicy, PolicyError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError::Parse {
            file: file.clone(),
            error: e.to_string(),
        })?;
        Self::parse(&text, &file)
    }

    pub fn builtin() -> LimitPolicy {
        Self::parse(
            include_str!("../pipelines/limits.toml"),
            "pipelines/limits.toml",
        )
        .expect("the shipped limits.toml is valid")
    }

    pub fn parse(text: &str, file: &str) -> Result<LimitPolicy, PolicyError> {
        let policy: LimitPolicy = toml::from_str(text).map_err(|e| PolicyError::Parse {
            file: file.to_string(),
            error: e.to_string(),
        })?;
        let invalid = |problem: String| PolicyError::Invalid {
            file: file.to_string(),
            problem,
        };
        if policy.grades.is_empty() {
            return Err(invalid("at least one [[grade]] is needed".into()));
        }
        for pair in policy.grades.windows(2) {
            if pair[1].max_pd <= pair[0].max_pd || pair[1].base_limit > pair[0].base_limit {
                return Err(invalid(format!(
                    "grade '{}' must have a higher max_pd and no higher base_limit than '{}': limits must never rise as PD rises",
                    pair[1].name, pair[0].name
                )));
            }
        }
        let boost = &policy.certificate_boost;
        if let Some(bad) = boost
            .tier_boosts
            .iter()
            .find(|b| !(100.0..=3000.0).contains(*b))
        {
            return Err(invalid(format!(
                "certificate_boost.tier_boosts: {bad} is outside 100..=3000"
            )));
        }
        if !(0.0..=1.0).contains(&boost.min_confidence)
            || boost.max_total < 0.0
            || policy.rounding <= 0.0
        {
            return Err(invalid(
                "min_confidence must be in [0, 1], max_total >= 0 and rounding > 0".into(),
            ));
        }
        Ok(policy)
    }
}

/// A verified certificate as the policy sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct HeldCertificate {
    pub cert_type_id: u32,
    pub name: String,
    pub family: String,
    pub tier: i32,
    pub confidence: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub grade: String,
    pub base_limit: f64,
    pub certificate_boost: f64,
    pub user_cap: Option<f64>,
    pub credit_limit: f64,
    pub reasons: Vec<String>,
}

impl LimitPolicy {
    /// The limit of one user. Pure: the same inputs always give the same decision.
    pub fn decide(
        &self,
        pd: f64,
        certificates: &[HeldCertificate],
        user_cap: Option<f64>,
    ) -> Decision {
        let mut reasons = Vec::new();
        let grade = self.grades.iter().find(|g| pd <= g.max_pd);
        let (grade_name, base_limit) = match grade {
            Some(g) => {
                reasons.push(format!("grade:{}", g.name));
                (g.name.clone(), g.base_limit)
            }
            None => {
                reasons.push("pd_above_policy_max".to_string());
                ("decline".to_string(), 0.0)
            }
        };
        let mut boost = 0.0;
        if grade.is_some() {
            // one boost per certificate type, the best tiers first, until the cap
            let mut held: Vec<&HeldCertificate> = certificates
                .iter()
                .filter(|c| c.confidence >= self.certificate_boost.min_confidence)
                .collect();
            held.sort_by(|a, b| {
                b.tier
                    .cmp(&a.tier)
                    .then(a.cert_type_id.cmp(&b.cert_type_id))
            });
            held.dedup_by_key(|c| c.cert_type_id);
            for cert in held {
                let room = self.certificate_boost.max_total - boost;
                let tier_boost = self.tier_boost(cert.tier);
                if room <= 0.0 || tier_boost <= 0.0 {
                    break;
                }
                boost += tier_boost.min(room);
                reasons.push(format!("certificate_boost:{}:{}", cert.family, cert.name));
            }
        }
        let mut limit = base_limit + boost;
        if let Some(cap) = user_cap
            && cap < limit
        {
            limit = cap.max(0.0);
            reasons.push("capped_by_user_request".to_string());
        }
        let limit = (limit / self.rounding).floor() * self.rounding;
        Decision {
            grade: grade_name,
            base_limit,
            certificate_boost: boost,
            user_cap,
            credit_limit: limit,
            reasons,
        }
    }

    fn tier_boost(&self, tier: i32) -> f64 {
        let tiers = &self.certificate_boost.tier_boosts;
        if tier < 1 || tiers.is_empty() {
            return 0.0;
        }
        tiers[(tier as usize - 1).min(tiers.len() - 1)]
    }
}

/// What the policy needs besides the score, as known before the run date.
#[derive(Debug, Default)]
pub struct PolicyInputs {
    pub certificates: HashMap<u64, Vec<HeldCertificate>>,
    /// ceiling from each user's latest request; a lifted request leaves no entry
    pub caps: HashMap<u64, f64>,
}

pub async fn load_inputs(
    ctx: &SessionContext,
    run_date: NaiveDate,
) -> Result<PolicyInputs, PolicyError> {
    let certificates_sql = format!(
        "SELECT c.user_id, c.cert_type_id, t.name, t.family, t.tier, CAST(c.confidence AS DOUBLE) \
         FROM certificates c JOIN certificate_types t ON c.cert_type_id = t.cert_type_id \
         WHERE c.recognized AND c.verified AND CAST(c.uploaded_at AS DATE) < DATE '{run_date}' \
         ORDER BY c.user_id, c.cert_type_id, c.certificate_no"
    );
    let caps_sql = format!(
        "SELECT user_id, requested_limit FROM ( \
           SELECT user_id, requested_limit, ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY requested_at DESC) AS newest \
           FROM limit_requests WHERE CAST(requested_at AS DATE) < DATE '{run_date}') \
         WHERE newest = 1 AND requested_limit IS NOT NULL"
    );
    let mut inputs = PolicyInputs::default();
    for batch in query(ctx, &certificates_sql).await? {
        let users = batch.column(0).as_primitive::<UInt64Type>();
        let types = cast(batch.column(1), &DataType::UInt32)
            .map_err(|e| arrow_error(&certificates_sql, e))?;
        let types = types.as_primitive::<datafusion::arrow::datatypes::UInt32Type>();
        let names = cast(batch.column(2), &DataType::Utf8)
            .map_err(|e| arrow_error(&certificates_sql, e))?;
        let families = cast(batch.column(3), &DataType::Utf8)
            .map_err(|e| arrow_error(&certificates_sql, e))?;
        let tiers = batch.column(4).as_primitive::<Int32Type>();
        let confidence = batch.column(5).as_primitive::<Float64Type>();
        for row in 0..batch.num_rows() {
            inputs
                .certificates
                .entry(users.value(row))
                .or_default()
                .push(HeldCertificate {
                    cert_type_id: types.value(row),
                    name: names.as_string::<i32>().value(row).to_string(),
                    family: families.as_string::<i32>().value(row).to_string(),
                    tier: tiers.value(row),
                    confidence: confidence.value(row),
                });
        }
    }
    for batch in query(ctx, &caps_sql).await? {
        let users = batch.column(0).as_primitive::<UInt64Type>();
        let caps = batch.column(1).as_primitive::<Float64Type>();
        for row in 0..batch.num_rows() {
            if !caps.is_null(row) {
                inputs.caps.insert(users.value(row), caps.value(row));
            }
        }
    }
    Ok(inputs)
}

fn arrow_error(sql: &str, e: datafusion::arrow::error::ArrowError) -> PolicyError {
    PolicyError::Query {
        sql: sql.to_string(),
        error: e.into(),
    }
}

async fn query(
    ctx: &SessionContext,
    sql: &str,
) -> Result<Vec<datafusion::arrow::array::RecordBatch>, PolicyError> {
    crate::sql::collect(ctx, sql)
        .await
        .map_err(|error| PolicyError::Query {
            sql: sql.to_string(),
            error,
        })
}

/// How many users got each limit band, lowest band first, for summaries.
pub fn distribution(limits: &[f64]) -> Vec<(String, usize)> {
    const BANDS: [(f64, &str); 6] = [
        (1.0, "0"),
        (1000.0, "1-999"),
        (5000.0, "1,000-4,999"),
        (10000.0, "5,000-9,999"),
        (20000.0, "10,000-19,999"),
        (f64::INFINITY, "20,000+"),
    ];
    let mut counts = [0usize; BANDS.len()];
    for &limit in limits {
        let band = BANDS
            .iter()
            .position(|(upper, _)| limit < *upper)
            .unwrap_or(BANDS.len() - 1);
        counts[band] += 1;
    }
    BANDS
        .iter()
        .zip(counts)
        .map(|((_, name), n)| (name.to_string(), n))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(id: u32, tier: i32, confidence: f64) -> HeldCertificate {
        HeldCertificate {
            cert_type_id: id,
            name: format!("type{id}"),
            family: "professional".into(),
            tier,
            confidence,
        }
    }

    #[test]
    fn the_shipped_policy_loads() {
        let policy = LimitPolicy::builtin();
        assert!(policy.grades.len() >= 3);
    }

    #[test]
    fn a_user_cap_is_a_hard_ceiling_even_with_boosts() {
        let policy = LimitPolicy::builtin();
        let d = policy.decide(0.001, &[cert(1, 5, 0.99)], Some(1500.0));
        assert_eq!(d.credit_limit, 1500.0);
        assert!(d.reasons.contains(&"capped_by_user_request".to_string()));
    }

    #[test]
    fn boosts_need_confidence_are_per_type_and_capped() {
        let policy = LimitPolicy::builtin();
        let none = policy.decide(0.001, &[cert(1, 5, 0.1)], None);
        assert_eq!(none.certificate_boost, 0.0);
        let many: Vec<_> = (0..10).map(|i| cert(i, 5, 0.99)).collect();
        let capped = policy.decide(0.001, &many, None);
        assert_eq!(capped.certificate_boost, policy.certificate_boost.max_total);
        let twice = policy.decide(0.001, &[cert(1, 1, 0.99), cert(1, 1, 0.95)], None);
        assert_eq!(
            twice.certificate_boost,
            policy.certificate_boost.tier_boosts[0]
        );
    }

    #[test]
    fn limits_never_rise_with_pd() {
        let policy = LimitPolicy::builtin();
        let mut last = f64::INFINITY;
        for step in 0..=1000 {
            let limit = policy
                .decide(step as f64 / 1000.0, &[cert(1, 3, 0.9)], None)
                .credit_limit;
            assert!(limit <= last, "limit rose at pd {}", step as f64 / 1000.0);
            last = limit;
        }
        assert_eq!(last, 0.0);
    }

    #[test]
    fn boosts_outside_100_to_3000_are_refused() {
        let text = include_str!("../pipelines/limits.toml")
            .replace("tier_boosts = [", "tier_boosts = [5000, ");
        let err = LimitPolicy::parse(&text, "l.toml").unwrap_err().to_string();
        assert!(err.contains("l.toml") && err.contains("5000"), "{err}");
    }
}
