//! The limit policy: turns each user's PD into a credit limit with `pipelines/limits.toml`:
//! PD -> grade -> base limit (scaled by income band), plus boosts for verified certificates
//! (withheld from users the fraud checks flag, and above a PD bound), within a floor and a
//! ceiling, moving at most a configured step from last night's limit, never above the ceiling
//! a user asked for; an APR by grade; reason codes for every decision.
//!
//! Reads scores, the clean `certificates`, `certificate_types`, `limit_requests` and
//! `profiles` tables and the last published table; writes nothing (publish does). The policy
//! itself is a pure function, tested on its own.

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
    /// Multiplies the grade's base limit for income bands 1, 2, ...; non-decreasing.
    pub income_multipliers: Vec<f64>,
    /// Every user the policy grants credit gets at least this (before a user's own cap).
    pub floor: f64,
    /// Nobody gets more than this, boosts included.
    pub ceiling: f64,
    /// A limit moves at most this far from last night's published one (a user's own cap
    /// and a decline apply at once).
    pub max_nightly_change: f64,
    /// No APR below this, whatever the grade says.
    pub apr_floor: f64,
    /// Grades from best to worst; a PD above the last `max_pd` gets no credit.
    #[serde(rename = "grade")]
    pub grades: Vec<Grade>,
    pub certificate_boost: CertificateBoost,
    pub fraud: FraudChecks,
    /// Category-scoped temporary amounts, spendable only in that category.
    #[serde(rename = "scenario", default)]
    pub scenarios: Vec<Scenario>,
}

/// A category-scoped limit: `amount` more, spendable only at merchants of `category`, for
/// `valid_days` from the run, for users with PD at most `max_pd` who bought in the category
/// at least `min_purchases_90d` times in the last 90 days.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub category: String,
    pub amount: f64,
    pub max_pd: f64,
    pub min_purchases_90d: u32,
    pub valid_days: u32,
}

/// A scenario limit granted to one user.
#[derive(Debug, Clone, PartialEq)]
pub struct ScenarioLimit {
    pub category: String,
    pub amount: f64,
    pub valid_days: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grade {
    pub name: String,
    pub max_pd: f64,
    pub base_limit: f64,
    /// annual percentage rate of the grade, as a fraction
    pub apr: f64,
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
    /// No boost for a PD above this.
    pub max_pd: f64,
}

/// Checks run before any boost; a flagged user gets no boost and a reason code.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FraudChecks {
    /// a certificate number uploaded by more users than this flags every one of them
    pub max_users_per_certificate_number: usize,
    /// more uploads than this on one day flags the user
    pub max_uploads_per_day: usize,
    /// certificates read with confidence in [min_confidence, min_confidence + margin)
    pub near_threshold_margin: f64,
    /// a user with at least `near_threshold_min_count` certificates, at least this share of
    /// them just over the threshold, is flagged
    pub near_threshold_share: f64,
    pub near_threshold_min_count: usize,
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
        if policy.income_multipliers.is_empty()
            || policy.income_multipliers.windows(2).any(|w| w[1] < w[0])
            || policy.income_multipliers.iter().any(|m| *m <= 0.0)
        {
            return Err(invalid(
                "income_multipliers must be positive and non-decreasing, one per income band"
                    .into(),
            ));
        }
        if !(0.0 <= policy.floor && policy.floor <= policy.ceiling)
            || policy.max_nightly_change <= 0.0
        {
            return Err(invalid(
                "need 0 <= floor <= ceiling and max_nightly_change > 0".into(),
            ));
        }
        for scenario in &policy.scenarios {
            if scenario.amount <= 0.0 || scenario.valid_days == 0 {
                return Err(invalid(format!(
                    "scenario '{}': amount and valid_days must be positive",
                    scenario.category
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

/// Everything about one user the policy weighs besides the PD.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserFacts {
    /// recognized and verified certificates uploaded before the run date
    pub certificates: Vec<HeldCertificate>,
    /// the ceiling the user asked for, until they lift it
    pub cap: Option<f64>,
    pub income_band: Option<i32>,
    /// the policy limit (before the user's cap) in the last published table
    pub previous_limit: Option<f64>,
    /// fraud checks this user failed (no boost while any)
    pub fraud_flags: Vec<String>,
    /// purchases per merchant category in the 90 days before the run
    pub category_purchases: HashMap<String, u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub grade: String,
    pub base_limit: f64,
    pub certificate_boost: f64,
    pub user_cap: Option<f64>,
    /// what the policy gives before the user's cap; the next night's step starts from it
    pub policy_limit: f64,
    pub credit_limit: f64,
    /// None for a decline
    pub apr: Option<f64>,
    /// category-scoped amounts on top of the credit limit
    pub scenarios: Vec<ScenarioLimit>,
    pub reasons: Vec<String>,
}

impl LimitPolicy {
    fn round_down(&self, x: f64) -> f64 {
        (x / self.rounding).floor() * self.rounding
    }

    fn round_up(&self, x: f64) -> f64 {
        (x / self.rounding).ceil() * self.rounding
    }

    fn income_multiplier(&self, band: Option<i32>) -> f64 {
        let m = &self.income_multipliers;
        match band {
            Some(band) if band >= 1 => m[(band as usize - 1).min(m.len() - 1)],
            Some(_) => m[0],
            None => 1.0,
        }
    }

    /// The limit of one user. Pure: the same inputs always give the same decision.
    pub fn decide(&self, pd: f64, facts: &UserFacts) -> Decision {
        let mut reasons = Vec::new();
        let Some(grade) = self.grades.iter().find(|g| pd <= g.max_pd) else {
            // a decline applies at once, whatever last night's limit was
            reasons.push("pd_above_policy_max".to_string());
            return Decision {
                grade: "decline".to_string(),
                base_limit: 0.0,
                certificate_boost: 0.0,
                user_cap: facts.cap,
                policy_limit: 0.0,
                credit_limit: 0.0,
                apr: None,
                scenarios: Vec::new(),
                reasons,
            };
        };
        reasons.push(format!("grade:{}", grade.name));
        let base_limit = grade.base_limit * self.income_multiplier(facts.income_band);
        if let Some(band) = facts.income_band {
            reasons.push(format!("income_band:{band}"));
        }

        let boost_rules = &self.certificate_boost;
        let mut boost = 0.0;
        if !facts.certificates.is_empty() {
            if let Some(flag) = facts.fraud_flags.first() {
                reasons.push(format!("certificate_boost_withheld:{flag}"));
            } else if pd > boost_rules.max_pd {
                reasons.push("certificate_boost_withheld:pd_above_boost_bound".to_string());
            } else {
                // one boost per certificate type, the best tiers first, until the cap
                let mut held: Vec<&HeldCertificate> = facts
                    .certificates
                    .iter()
                    .filter(|c| c.confidence >= boost_rules.min_confidence)
                    .collect();
                held.sort_by(|a, b| {
                    b.tier
                        .cmp(&a.tier)
                        .then(a.cert_type_id.cmp(&b.cert_type_id))
                });
                held.dedup_by_key(|c| c.cert_type_id);
                for cert in held {
                    let room = boost_rules.max_total - boost;
                    let tier_boost = self.tier_boost(cert.tier);
                    if room <= 0.0 || tier_boost <= 0.0 {
                        break;
                    }
                    boost += tier_boost.min(room);
                    reasons.push(format!("certificate_boost:{}:{}", cert.family, cert.name));
                }
            }
        }

        let ceiling = self.round_down(self.ceiling);
        let mut limit = self.round_down((base_limit + boost).clamp(self.floor, self.ceiling));
        if base_limit + boost > self.ceiling {
            reasons.push("policy_ceiling".to_string());
        } else if base_limit + boost < self.floor {
            reasons.push("policy_floor".to_string());
        }
        if let Some(previous) = facts.previous_limit {
            let lowest = self.round_up(previous - self.max_nightly_change).max(0.0);
            let highest = self.round_down(previous + self.max_nightly_change);
            if limit < lowest || limit > highest {
                limit = limit.clamp(lowest, highest);
                reasons.push("limited_by_nightly_step".to_string());
            }
        }
        // the ceiling is hard: it wins over the step (a previous limit above a lowered ceiling)
        if limit > ceiling {
            limit = ceiling;
            if !reasons.iter().any(|r| r == "policy_ceiling") {
                reasons.push("policy_ceiling".to_string());
            }
        }
        // the step moves the policy's limit; the user's own cap applies (and lifts) at once
        let policy_limit = limit;
        if let Some(cap) = facts.cap
            && cap < limit
        {
            limit = self.round_down(cap.max(0.0));
            reasons.push("capped_by_user_request".to_string());
        }
        // a user who asked for a lower limit gets no extra credit in any category
        let scenarios = self
            .scenarios
            .iter()
            .filter(|s| {
                pd <= s.max_pd
                    && facts.cap.is_none()
                    && facts
                        .category_purchases
                        .get(&s.category)
                        .copied()
                        .unwrap_or(0)
                        >= s.min_purchases_90d
            })
            .map(|s| ScenarioLimit {
                category: s.category.clone(),
                amount: s.amount,
                valid_days: s.valid_days,
            })
            .collect::<Vec<_>>();
        for s in &scenarios {
            reasons.push(format!("scenario:{}", s.category));
        }
        Decision {
            grade: grade.name.clone(),
            base_limit,
            certificate_boost: boost,
            user_cap: facts.cap,
            policy_limit,
            credit_limit: limit,
            apr: Some(grade.apr.max(self.apr_floor)),
            scenarios,
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
) -> HashMap<u64, Vec<String>> {
    let mut flags: HashMap<u64, Vec<String>> = HashMap::new();
    let mut flag = |user: u64, what: &str| {
        let list = flags.entry(user).or_default();
        if !list.iter().any(|f| f == what) {
            list.push(what.to_string());
        }
    };
    let mut holders: HashMap<&str, std::collections::BTreeSet<u64>> = HashMap::new();
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
                flag(user, "shared_certificate_number");
            }
        }
    }
    for ((user, _), count) in &per_day {
        if *count > checks.max_uploads_per_day {
            flag(*user, "upload_burst");
        }
    }
    for (user, (total, just_over)) in &near {
        if *total >= checks.near_threshold_min_count
            && *just_over as f64 >= checks.near_threshold_share * *total as f64
        {
            flag(*user, "confidence_just_over_threshold");
        }
    }
    for list in flags.values_mut() {
        list.sort();
    }
    flags
}

/// What the policy needs besides the score, as known before the run date.
#[derive(Debug, Default)]
pub struct PolicyInputs {
    pub certificates: HashMap<u64, Vec<HeldCertificate>>,
    /// ceiling from each user's latest request; a lifted request leaves no entry
    pub caps: HashMap<u64, f64>,
    /// from the newest profile snapshot before the run date
    pub income_bands: HashMap<u64, i32>,
    /// users the fraud checks flag
    pub fraud: HashMap<u64, Vec<String>>,
    /// purchases per scenario category in the 90 days before the run
    pub category_purchases: HashMap<u64, HashMap<String, u32>>,
}

impl PolicyInputs {
    pub fn facts(&self, user: u64, previous_limit: Option<f64>) -> UserFacts {
        UserFacts {
            certificates: self.certificates.get(&user).cloned().unwrap_or_default(),
            cap: self.caps.get(&user).copied(),
            income_band: self.income_bands.get(&user).copied(),
            previous_limit,
            fraud_flags: self.fraud.get(&user).cloned().unwrap_or_default(),
            category_purchases: self
                .category_purchases
                .get(&user)
                .cloned()
                .unwrap_or_default(),
        }
    }
}

pub async fn load_inputs(
    ctx: &SessionContext,
    run_date: NaiveDate,
    profile_snapshot: NaiveDate,
    policy: &LimitPolicy,
) -> Result<PolicyInputs, PolicyError> {
    let before = format!("uploaded_at < TIMESTAMP '{run_date} 00:00:00'");
    let certificates_sql = format!(
        "SELECT c.user_id, c.cert_type_id, t.name, t.family, t.tier, CAST(c.confidence AS DOUBLE) \
         FROM certificates c JOIN certificate_types t ON c.cert_type_id = t.cert_type_id \
         WHERE c.recognized AND c.verified AND c.{before} \
         ORDER BY c.user_id, c.cert_type_id, c.certificate_no"
    );
    let uploads_sql = format!(
        "SELECT user_id, certificate_no, CAST(uploaded_at AS DATE) AS day, CAST(confidence AS DOUBLE) \
         FROM certificates WHERE recognized AND {before}"
    );
    let caps_sql = format!(
        "SELECT user_id, requested_limit FROM ( \
           SELECT user_id, requested_limit, ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY requested_at DESC) AS newest \
           FROM limit_requests WHERE requested_at < TIMESTAMP '{run_date} 00:00:00') \
         WHERE newest = 1 AND requested_limit IS NOT NULL"
    );
    let bands_sql = format!(
        "SELECT user_id, CAST(income_band AS INT) FROM profiles WHERE dt = '{profile_snapshot}'"
    );
    let mut inputs = PolicyInputs::default();
    if !policy.scenarios.is_empty() {
        let categories: Vec<String> = policy
            .scenarios
            .iter()
            .map(|s| format!("'{}'", s.category.replace('\'', "''")))
            .collect();
        let from = run_date - chrono::Duration::days(90);
        let purchases_sql = format!(
            "SELECT user_id, category, COUNT(*) FROM events \
             WHERE kind = 'purchase' AND category IN ({}) \
             AND event_time >= TIMESTAMP '{from} 00:00:00' AND event_time < TIMESTAMP '{run_date} 00:00:00' \
             AND dt >= '{from}' AND dt < '{run_date}' GROUP BY user_id, category",
            categories.join(", ")
        );
        for batch in query(ctx, &purchases_sql).await? {
            let users = batch.column(0).as_primitive::<UInt64Type>();
            let category = cast(batch.column(1), &DataType::Utf8)
                .map_err(|e| arrow_error(&purchases_sql, e))?;
            let category = category.as_string::<i32>();
            let counts = batch
                .column(2)
                .as_primitive::<datafusion::arrow::datatypes::Int64Type>();
            for row in 0..batch.num_rows() {
                inputs
                    .category_purchases
                    .entry(users.value(row))
                    .or_default()
                    .insert(category.value(row).to_string(), counts.value(row) as u32);
            }
        }
    }
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
    let mut uploads = Vec::new();
    for batch in query(ctx, &uploads_sql).await? {
        let users = batch.column(0).as_primitive::<UInt64Type>();
        let numbers =
            cast(batch.column(1), &DataType::Utf8).map_err(|e| arrow_error(&uploads_sql, e))?;
        let numbers = numbers.as_string::<i32>();
        let days = batch
            .column(2)
            .as_primitive::<datafusion::arrow::datatypes::Date32Type>();
        let confidence = batch.column(3).as_primitive::<Float64Type>();
        for row in 0..batch.num_rows() {
            let Some(day) = days.value_as_date(row) else {
                continue;
            };
            uploads.push(Upload {
                user_id: users.value(row),
                certificate_no: numbers.value(row).to_string(),
                day,
                confidence: confidence.value(row),
            });
        }
    }
    inputs.fraud = fraud_flags(
        &uploads,
        &policy.fraud,
        policy.certificate_boost.min_confidence,
    );
    for batch in query(ctx, &caps_sql).await? {
        let users = batch.column(0).as_primitive::<UInt64Type>();
        let caps = batch.column(1).as_primitive::<Float64Type>();
        for row in 0..batch.num_rows() {
            if !caps.is_null(row) {
                inputs.caps.insert(users.value(row), caps.value(row));
            }
        }
    }
    for batch in query(ctx, &bands_sql).await? {
        let users = batch.column(0).as_primitive::<UInt64Type>();
        let bands = batch.column(1).as_primitive::<Int32Type>();
        for row in 0..batch.num_rows() {
            if !bands.is_null(row) {
                inputs
                    .income_bands
                    .insert(users.value(row), bands.value(row));
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
    use proptest::prelude::*;

    fn cert(id: u32, tier: i32, confidence: f64) -> HeldCertificate {
        HeldCertificate {
            cert_type_id: id,
            name: format!("type{id}"),
            family: "professional".into(),
            tier,
            confidence,
        }
    }

    fn with_certs(certificates: Vec<HeldCertificate>) -> UserFacts {
        UserFacts {
            certificates,
            ..Default::default()
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
        let facts = UserFacts {
            cap: Some(1500.0),
            ..with_certs(vec![cert(1, 5, 0.99)])
        };
        let d = policy.decide(0.001, &facts);
        assert_eq!(d.credit_limit, 1500.0);
        assert!(d.reasons.contains(&"capped_by_user_request".to_string()));
    }

    #[test]
    fn lifting_a_cap_restores_what_the_policy_gives_at_once_and_no_more() {
        let policy = LimitPolicy::builtin();
        let capped = UserFacts {
            cap: Some(1000.0),
            income_band: Some(5),
            ..Default::default()
        };
        let night1 = policy.decide(0.005, &capped);
        assert_eq!(night1.credit_limit, 1000.0);
        let lifted = UserFacts {
            cap: None,
            previous_limit: Some(night1.policy_limit),
            ..capped
        };
        let night2 = policy.decide(0.005, &lifted);
        assert_eq!(night2.credit_limit, night1.policy_limit);
        assert!(
            !night2
                .reasons
                .iter()
                .any(|r| r == "limited_by_nightly_step")
        );
    }

    #[test]
    fn scenario_limits_need_low_pd_recent_purchases_and_no_cap() {
        let policy = LimitPolicy::builtin();
        let rule = policy
            .scenarios
            .first()
            .expect("the shipped policy has scenarios");
        let buyer = UserFacts {
            category_purchases: [(rule.category.clone(), rule.min_purchases_90d)]
                .into_iter()
                .collect(),
            ..Default::default()
        };
        let granted = policy.decide(rule.max_pd, &buyer);
        assert!(
            granted
                .scenarios
                .iter()
                .any(|s| s.category == rule.category && s.amount == rule.amount)
        );
        assert!(
            policy
                .decide(rule.max_pd + 0.001, &buyer)
                .scenarios
                .iter()
                .all(|s| s.category != rule.category)
        );
        assert!(
            policy
                .decide(0.001, &UserFacts::default())
                .scenarios
                .is_empty()
        );
        let capped = UserFacts {
            cap: Some(5000.0),
            ..buyer
        };
        assert!(policy.decide(0.001, &capped).scenarios.is_empty());
    }

    #[test]
    fn boosts_need_confidence_are_per_type_and_capped() {
        let policy = LimitPolicy::builtin();
        let none = policy.decide(0.001, &with_certs(vec![cert(1, 5, 0.1)]));
        assert_eq!(none.certificate_boost, 0.0);
        let many: Vec<_> = (0..10).map(|i| cert(i, 5, 0.99)).collect();
        let capped = policy.decide(0.001, &with_certs(many));
        assert_eq!(capped.certificate_boost, policy.certificate_boost.max_total);
        let twice = policy.decide(0.001, &with_certs(vec![cert(1, 1, 0.99), cert(1, 1, 0.95)]));
        assert_eq!(
            twice.certificate_boost,
            policy.certificate_boost.tier_boosts[0]
        );
    }

    #[test]
    fn flagged_users_and_risky_users_get_no_boost_and_a_reason() {
        let policy = LimitPolicy::builtin();
        let flagged = UserFacts {
            fraud_flags: vec!["upload_burst".into()],
            ..with_certs(vec![cert(1, 5, 0.99)])
        };
        let d = policy.decide(0.001, &flagged);
        assert_eq!(d.certificate_boost, 0.0);
        assert!(
            d.reasons
                .contains(&"certificate_boost_withheld:upload_burst".to_string())
        );
        let risky = policy.decide(
            policy.certificate_boost.max_pd + 0.001,
            &with_certs(vec![cert(1, 5, 0.99)]),
        );
        assert_eq!(risky.certificate_boost, 0.0);
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
        assert_eq!(flags[&1], vec!["shared_certificate_number"]);
        assert_eq!(flags[&2], vec!["shared_certificate_number"]);
        assert_eq!(flags[&3], vec!["upload_burst"]);
        assert_eq!(flags[&4], vec!["confidence_just_over_threshold"]);
        assert!(!flags.contains_key(&9));
    }

    #[test]
    fn limits_never_rise_with_pd() {
        let policy = LimitPolicy::builtin();
        let mut last = f64::INFINITY;
        for step in 0..=1000 {
            let limit = policy
                .decide(step as f64 / 1000.0, &with_certs(vec![cert(1, 3, 0.9)]))
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

    fn facts() -> impl Strategy<Value = UserFacts> {
        (
            proptest::collection::vec((0u32..20, 1i32..=5, 0.5f64..1.0), 0..5),
            proptest::option::of(0.0f64..40_000.0),
            proptest::option::of(1i32..=8),
            proptest::option::of((0u32..400).prop_map(|x| x as f64 * 100.0)),
            any::<bool>(),
        )
            .prop_map(|(certs, cap, band, previous, flagged)| UserFacts {
                certificates: certs
                    .into_iter()
                    .map(|(id, tier, confidence)| cert(id, tier, confidence))
                    .collect(),
                cap,
                income_band: band,
                previous_limit: previous,
                fraud_flags: if flagged {
                    vec!["upload_burst".into()]
                } else {
                    Vec::new()
                },
                category_purchases: [("furniture".to_string(), 2u32)].into_iter().collect(),
            })
    }

    proptest! {
        #[test]
        fn every_decision_keeps_the_policy_invariants(
            pd in 0.0f64..0.5,
            other_pd in 0.0f64..0.5,
            facts in facts(),
        ) {
            let policy = LimitPolicy::builtin();
            let d = policy.decide(pd, &facts);
            // a user's cap is a hard ceiling
            if let Some(cap) = facts.cap {
                prop_assert!(d.credit_limit <= cap, "{d:?}");
            }
            // boosts only for unflagged users with a certificate read confidently enough
            // (HeldCertificate is already verified and of a recognized type: load_inputs
            // keeps only those) and a PD under the bound
            let confident = facts
                .certificates
                .iter()
                .any(|c| c.confidence >= policy.certificate_boost.min_confidence);
            if !facts.fraud_flags.is_empty() || !confident || pd > policy.certificate_boost.max_pd {
                prop_assert_eq!(d.certificate_boost, 0.0, "{:?}", d);
            }
            prop_assert!(d.certificate_boost <= policy.certificate_boost.max_total);
            // within the ceiling always; within floor and the nightly step unless the user's
            // cap, a decline or the ceiling (over a previous limit above it) decides
            prop_assert!(d.credit_limit <= policy.ceiling);
            prop_assert!(d.credit_limit <= d.policy_limit);
            if d.grade != "decline" {
                if let Some(previous) = facts.previous_limit.filter(|p| *p <= policy.ceiling) {
                    prop_assert!((d.policy_limit - previous).abs() <= policy.max_nightly_change, "{d:?}");
                } else {
                    prop_assert!(d.policy_limit >= policy.floor.min(policy.ceiling) - policy.rounding, "{d:?}");
                }
            }
            // monotone: for the same facts, a higher PD never gets a higher limit
            let e = policy.decide(other_pd, &facts);
            if other_pd >= pd {
                prop_assert!(e.credit_limit <= d.credit_limit, "{d:?} vs {e:?}");
            }
            // APR never below the floor
            if let Some(apr) = d.apr {
                prop_assert!(apr >= policy.apr_floor);
            }
            // scenario limits only for qualifying users, never past a user's own cap
            for s in &d.scenarios {
                let rule = policy.scenarios.iter().find(|r| r.category == s.category).unwrap();
                prop_assert!(pd <= rule.max_pd && facts.cap.is_none());
            }
        }
    }
}
