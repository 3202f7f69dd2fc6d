//! The limit policy: turns each user's PD into a credit limit with `pipelines/limits.toml`:
//! PD -> grade -> base limit (scaled by income band), plus boosts for verified certificates
//! (withheld from users the fraud checks flag, and above a PD bound), within a floor and a
//! ceiling, moving at most a configured step from last night's limit, never above the ceiling
//! a user asked for; an APR by grade; reason codes for every decision.
//!
//! This file owns the policy's configuration and its validation; `decide` is the pure policy
//! (one user's facts and PD in, a `Decision` out, tested on its own), `fraud` the checks that
//! withhold boosts, and `inputs` the one place that reads what the policy weighs besides the
//! score (the clean `certificates`, `certificate_types`, `limit_requests`, `profiles` and
//! `events` tables). Writes nothing: publish does.

pub mod decide;
pub mod fraud;
pub mod inputs;

use datafusion::error::DataFusionError;
use serde::{Deserialize, Serialize};

use crate::cause::{Cause, Classify};

pub use decide::{
    Decision, Grade, HeldCertificate, PolicyStep, PreviousDecision, Reason, ScenarioGrant,
    UserFacts, Withheld,
};
pub use fraud::FraudFlag;
pub use inputs::{InputsByPart, PolicyInputs, load_inputs, load_inputs_by_part};

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{file}: {error}")]
    Parse { file: String, error: String },
    #[error("{file}: {problem}")]
    Invalid { file: String, problem: String },
    #[error("reading policy inputs: {error}\n  query: {sql}")]
    Query { sql: String, error: DataFusionError },
}

impl Classify for PolicyError {
    fn cause(&self) -> Cause {
        match self {
            PolicyError::Parse { .. } | PolicyError::Invalid { .. } => Cause::Configuration,
            PolicyError::Query { error, .. } => crate::engine::cause_of(error),
        }
    }
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
    pub grades: Vec<GradeRule>,
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

/// One `[[grade]]`: users with PD up to `max_pd` (and above the grade before) get it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GradeRule {
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
            include_str!("../../pipelines/limits.toml"),
            "pipelines/limits.toml",
        )
        .expect("the shipped limits.toml is valid")
    }

    pub fn parse(text: &str, file: &str) -> Result<LimitPolicy, PolicyError> {
        let policy: LimitPolicy = toml::from_str(text).map_err(|e| PolicyError::Parse {
            file: file.to_string(),
            error: e.to_string(),
        })?;
        policy.check().map_err(|problem| PolicyError::Invalid {
            file: file.to_string(),
            problem,
        })?;
        Ok(policy)
    }

    /// What the policy must hold for `decide`'s guarantees (limits never rise with PD, boosts
    /// in 100..=3000) to be true.
    fn check(&self) -> Result<(), String> {
        if let Some(name) = self.non_finite() {
            return Err(format!("{name} must be a number"));
        }
        if self.max_nightly_change < self.rounding {
            return Err(
                "max_nightly_change must be at least rounding: a smaller step cannot move a rounded limit"
                    .into(),
            );
        }
        if self.grades.is_empty() {
            return Err("at least one [[grade]] is needed".into());
        }
        if let Some(grade) = self.grades.iter().find(|g| g.name == Grade::DECLINE) {
            return Err(format!(
                "grade '{}': the name is kept for users the policy declines",
                grade.name
            ));
        }
        for pair in self.grades.windows(2) {
            if pair[1].max_pd <= pair[0].max_pd || pair[1].base_limit > pair[0].base_limit {
                return Err(format!(
                    "grade '{}' must have a higher max_pd and no higher base_limit than '{}': limits must never rise as PD rises",
                    pair[1].name, pair[0].name
                ));
            }
        }
        let multipliers = &self.income_multipliers;
        if multipliers.is_empty()
            || multipliers.windows(2).any(|w| w[1] < w[0])
            || multipliers.iter().any(|m| *m <= 0.0)
        {
            return Err(
                "income_multipliers must be positive and non-decreasing, one per income band"
                    .into(),
            );
        }
        if !(0.0 <= self.floor && self.floor <= self.ceiling) || self.max_nightly_change <= 0.0 {
            return Err("need 0 <= floor <= ceiling and max_nightly_change > 0".into());
        }
        if let Some(scenario) = self
            .scenarios
            .iter()
            .find(|s| s.amount <= 0.0 || s.valid_days == 0)
        {
            return Err(format!(
                "scenario '{}': amount and valid_days must be positive",
                scenario.category
            ));
        }
        let boost = &self.certificate_boost;
        if let Some(bad) = boost
            .tier_boosts
            .iter()
            .find(|b| !(100.0..=3000.0).contains(*b))
        {
            return Err(format!(
                "certificate_boost.tier_boosts: {bad} is outside 100..=3000"
            ));
        }
        if !(0.0..=1.0).contains(&boost.min_confidence)
            || boost.max_total < 0.0
            || self.rounding <= 0.0
        {
            return Err("min_confidence must be in [0, 1], max_total >= 0 and rounding > 0".into());
        }
        Ok(())
    }

    /// The first number of the policy that is NaN or infinite (TOML allows `nan` and `inf`),
    /// by its key. The ceiling may not be infinite either: limits are rounded from it.
    fn non_finite(&self) -> Option<String> {
        let boost = &self.certificate_boost;
        let fraud = &self.fraud;
        let mut numbers: Vec<(String, f64)> = vec![
            ("rounding".into(), self.rounding),
            ("floor".into(), self.floor),
            ("ceiling".into(), self.ceiling),
            ("max_nightly_change".into(), self.max_nightly_change),
            ("apr_floor".into(), self.apr_floor),
            (
                "certificate_boost.min_confidence".into(),
                boost.min_confidence,
            ),
            ("certificate_boost.max_total".into(), boost.max_total),
            ("certificate_boost.max_pd".into(), boost.max_pd),
            (
                "fraud.near_threshold_margin".into(),
                fraud.near_threshold_margin,
            ),
            (
                "fraud.near_threshold_share".into(),
                fraud.near_threshold_share,
            ),
        ];
        numbers.extend(
            self.income_multipliers
                .iter()
                .map(|m| ("income_multipliers".into(), *m)),
        );
        for grade in &self.grades {
            for (key, value) in [
                ("max_pd", grade.max_pd),
                ("base_limit", grade.base_limit),
                ("apr", grade.apr),
            ] {
                numbers.push((format!("grade '{}' {key}", grade.name), value));
            }
        }
        for scenario in &self.scenarios {
            for (key, value) in [("amount", scenario.amount), ("max_pd", scenario.max_pd)] {
                numbers.push((format!("scenario '{}' {key}", scenario.category), value));
            }
        }
        numbers
            .into_iter()
            .find(|(_, value)| !value.is_finite())
            .map(|(name, _)| name)
    }
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

    #[test]
    fn the_shipped_policy_loads() {
        let policy = LimitPolicy::builtin();
        assert!(policy.grades.len() >= 3);
    }

    #[test]
    fn boosts_outside_100_to_3000_are_refused() {
        let text = include_str!("../../pipelines/limits.toml")
            .replace("tier_boosts = [", "tier_boosts = [5000, ");
        let err = LimitPolicy::parse(&text, "l.toml").unwrap_err().to_string();
        assert!(err.contains("l.toml") && err.contains("5000"), "{err}");
    }

    #[test]
    fn a_grade_named_decline_is_refused() {
        let policy = LimitPolicy::builtin();
        let first = &policy.grades[0].name;
        let text = include_str!("../../pipelines/limits.toml")
            .replace(&format!("name = \"{first}\""), "name = \"decline\"");
        let err = LimitPolicy::parse(&text, "l.toml").unwrap_err().to_string();
        assert!(err.contains("l.toml") && err.contains("decline"), "{err}");
    }
}
