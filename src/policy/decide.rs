//! The policy itself: one user's PD and facts in, a `Decision` out, with the reasons for it.
//! Pure: no I/O, no clock, no randomness; the same inputs always give the same decision, so
//! the invariants users rely on are property-tested here.
//!
//! Grades, reasons and withheld boosts are enums; their `Display` is the text the published
//! table stores (`grade:A`, `certificate_boost_withheld:upload_burst`, ...). `trace` is the
//! same decision with every step that moved the number, for the audit record (`explain`).

use std::collections::HashMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::{FraudFlag, GradeRule, LimitPolicy};

/// A verified certificate as the policy sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldCertificate {
    pub cert_type_id: u32,
    pub name: String,
    pub family: String,
    pub tier: i32,
    pub confidence: f64,
}

/// What tonight's decision continues from: last night's published policy limit and
/// certificate boosts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PreviousDecision {
    pub policy_limit: f64,
    /// the `certificate_boost:<family>:<name>` reason codes
    pub boosts: Vec<String>,
}

/// Everything about one user the policy weighs besides the PD (kept per run in the audit
/// record, so a decision can be replayed years later).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UserFacts {
    /// recognized certificates whose newest version known before the run date is verified,
    /// unrevoked and unexpired
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<HeldCertificate>,
    /// verified certificates whose newest version known before the run date is revoked
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub revoked_certificates: Vec<HeldCertificate>,
    /// the certificate boosts of the last published decision (`certificate_boost:<family>:
    /// <name>` reason codes): a boost gone tonight because of a revocation says so
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub previous_boosts: Vec<String>,
    /// the ceiling the user asked for, until they lift it
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cap: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub income_band: Option<i32>,
    /// the policy limit (before the user's cap) in the last published table
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_limit: Option<f64>,
    /// fraud checks this user failed (no boost while any)
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fraud_flags: Vec<FraudFlag>,
    /// purchases per merchant category in the 90 days before the run
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    pub category_purchases: HashMap<String, u32>,
}

/// The grade a decision gives: one of the policy's, or a decline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grade {
    Granted(String),
    Decline,
}

impl Grade {
    /// The stored name of a decline (no policy grade may take it).
    pub const DECLINE: &'static str = "decline";

    pub fn as_str(&self) -> &str {
        match self {
            Grade::Granted(name) => name,
            Grade::Decline => Grade::DECLINE,
        }
    }
}

impl fmt::Display for Grade {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a certificate boost was not given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Withheld {
    Fraud(FraudFlag),
    PdAboveBoostBound,
}

/// One reason code of a decision, in the order `decide` adds them; the model's adverse
/// reasons (`model:<feature>`) follow the policy's.
#[derive(Debug, Clone, PartialEq)]
pub enum Reason {
    PdAbovePolicyMax,
    Grade(String),
    IncomeBand(i32),
    BoostWithheld(Withheld),
    CertificateBoost {
        family: String,
        name: String,
    },
    /// last night's boost for this certificate type is withdrawn: the certificate was revoked
    CertificateRevoked(String),
    PolicyCeiling,
    PolicyFloor,
    LimitedByNightlyStep,
    CappedByUserRequest,
    Scenario(String),
    Model(String),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::PdAbovePolicyMax => f.write_str("pd_above_policy_max"),
            Reason::Grade(name) => write!(f, "grade:{name}"),
            Reason::IncomeBand(band) => write!(f, "income_band:{band}"),
            Reason::BoostWithheld(Withheld::Fraud(flag)) => {
                write!(f, "certificate_boost_withheld:{flag}")
            }
            Reason::BoostWithheld(Withheld::PdAboveBoostBound) => {
                f.write_str("certificate_boost_withheld:pd_above_boost_bound")
            }
            Reason::CertificateBoost { family, name } => {
                write!(f, "certificate_boost:{family}:{name}")
            }
            Reason::CertificateRevoked(name) => write!(f, "certificate_revoked:{name}"),
            Reason::PolicyCeiling => f.write_str("policy_ceiling"),
            Reason::PolicyFloor => f.write_str("policy_floor"),
            Reason::LimitedByNightlyStep => f.write_str("limited_by_nightly_step"),
            Reason::CappedByUserRequest => f.write_str("capped_by_user_request"),
            Reason::Scenario(category) => write!(f, "scenario:{category}"),
            Reason::Model(feature) => write!(f, "model:{feature}"),
        }
    }
}

/// A scenario limit granted to one user: `amount` more in `category` for `valid_days`.
#[derive(Debug, Clone, PartialEq)]
pub struct ScenarioGrant {
    pub category: String,
    pub amount: f64,
    pub valid_days: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub grade: Grade,
    pub base_limit: f64,
    pub certificate_boost: f64,
    pub user_cap: Option<f64>,
    /// what the policy gives before the user's cap; the next night's step starts from it
    pub policy_limit: f64,
    pub credit_limit: f64,
    /// None for a decline
    pub apr: Option<f64>,
    /// category-scoped amounts on top of the credit limit
    pub scenarios: Vec<ScenarioGrant>,
    pub reasons: Vec<Reason>,
}

impl Decision {
    fn decline(cap: Option<f64>) -> Decision {
        Decision {
            grade: Grade::Decline,
            base_limit: 0.0,
            certificate_boost: 0.0,
            user_cap: cap,
            policy_limit: 0.0,
            credit_limit: 0.0,
            apr: None,
            scenarios: Vec::new(),
            reasons: vec![Reason::PdAbovePolicyMax],
        }
    }
}

/// One step of a decision that set or moved the number: what it was and the limit after it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyStep {
    pub step: String,
    pub detail: String,
    pub limit: f64,
}

/// Where a decision records its steps: nowhere for the nightly's millions of users, a list
/// for one user's audit record.
type Trace = Option<Vec<PolicyStep>>;

fn note(trace: &mut Trace, step: &str, limit: f64, detail: impl FnOnce() -> String) {
    if let Some(steps) = trace {
        steps.push(PolicyStep {
            step: step.to_string(),
            detail: detail(),
            limit,
        });
    }
}

/// `certificate_revoked:<name>` for each boost of the last published decision that tonight's
/// reasons no longer give, where a certificate of that type was revoked.
fn withdrawn_boosts(facts: &UserFacts, reasons: &mut Vec<Reason>) {
    let mut withdrawn: Vec<&HeldCertificate> = facts
        .revoked_certificates
        .iter()
        .filter(|revoked| {
            let boost = Reason::CertificateBoost {
                family: revoked.family.clone(),
                name: revoked.name.clone(),
            };
            facts.previous_boosts.contains(&boost.to_string()) && !reasons.contains(&boost)
        })
        .collect();
    withdrawn.sort_by_key(|c| c.cert_type_id);
    withdrawn.dedup_by_key(|c| c.cert_type_id);
    reasons.extend(
        withdrawn
            .into_iter()
            .map(|c| Reason::CertificateRevoked(c.name.clone())),
    );
}

impl LimitPolicy {
    /// The limit of one user. Pure: the same inputs always give the same decision.
    pub fn decide(&self, pd: f64, facts: &UserFacts) -> Decision {
        self.decide_traced(pd, facts, &mut None)
    }

    /// `decide`, with every step that set or moved the limit.
    pub fn trace(&self, pd: f64, facts: &UserFacts) -> (Decision, Vec<PolicyStep>) {
        let mut trace = Some(Vec::new());
        let decision = self.decide_traced(pd, facts, &mut trace);
        (decision, trace.unwrap_or_default())
    }

    fn decide_traced(&self, pd: f64, facts: &UserFacts, trace: &mut Trace) -> Decision {
        // a decline applies at once, whatever last night's limit was
        let Some(grade) = self.grades.iter().find(|g| pd <= g.max_pd) else {
            note(trace, "decline", 0.0, || {
                format!("PD {pd:.4} is above every grade's max_pd")
            });
            return Decision::decline(facts.cap);
        };
        let mut reasons = vec![Reason::Grade(grade.name.clone())];
        note(trace, "grade", grade.base_limit, || {
            format!(
                "grade {} (PD {pd:.4} <= {}): base limit {}",
                grade.name, grade.max_pd, grade.base_limit
            )
        });
        let base_limit = grade.base_limit * self.income_multiplier(facts.income_band);
        if let Some(band) = facts.income_band {
            reasons.push(Reason::IncomeBand(band));
            note(trace, "income_band", base_limit, || {
                let multiplier = self.income_multiplier(Some(band));
                format!("income band {band}: base limit x {multiplier}")
            });
        }
        let boost = self.certificate_boost(pd, facts, &mut reasons, base_limit, trace);
        withdrawn_boosts(facts, &mut reasons);
        let policy_limit = self.policy_limit(
            base_limit + boost,
            facts.previous_limit,
            &mut reasons,
            trace,
        );
        // the step moves the policy's limit; the user's own cap applies (and lifts) at once
        let credit_limit = self.capped_limit(policy_limit, facts.cap);
        if let Some(cap) = facts.cap
            && cap < policy_limit
        {
            reasons.push(Reason::CappedByUserRequest);
            note(trace, "user_request", credit_limit, || {
                format!("the user asked for at most {cap}")
            });
        }
        let scenarios = self.scenarios_for(pd, facts);
        for s in &scenarios {
            reasons.push(Reason::Scenario(s.category.clone()));
            note(trace, "scenario", credit_limit, || {
                format!(
                    "+{} for {} for {} days (on top of the limit)",
                    s.amount, s.category, s.valid_days
                )
            });
        }
        Decision {
            grade: Grade::Granted(grade.name.clone()),
            base_limit,
            certificate_boost: boost,
            user_cap: facts.cap,
            policy_limit,
            credit_limit,
            apr: Some(self.apr(grade)),
            scenarios,
            reasons,
        }
    }

    /// The limit in force: the policy's, under the user's own ceiling when that is lower
    /// (rounded down to the policy's rounding). Serve applies a ceiling asked for since the
    /// night with the same rule.
    pub fn capped_limit(&self, policy_limit: f64, cap: Option<f64>) -> f64 {
        match cap {
            Some(cap) if cap < policy_limit => self.round_down(cap.max(0.0)),
            _ => policy_limit,
        }
    }

    fn apr(&self, grade: &GradeRule) -> f64 {
        grade.apr.max(self.apr_floor)
    }

    /// One boost per certificate type, the best tiers first, up to the cap; none for a
    /// flagged user or a PD above the bound.
    fn certificate_boost(
        &self,
        pd: f64,
        facts: &UserFacts,
        reasons: &mut Vec<Reason>,
        base_limit: f64,
        trace: &mut Trace,
    ) -> f64 {
        let rules = &self.certificate_boost;
        if facts.certificates.is_empty() {
            return 0.0;
        }
        let withheld = match facts.fraud_flags.first() {
            Some(flag) => Some(Withheld::Fraud(*flag)),
            None => (pd > rules.max_pd).then_some(Withheld::PdAboveBoostBound),
        };
        if let Some(why) = withheld {
            let reason = Reason::BoostWithheld(why);
            note(trace, "boost_withheld", base_limit, || reason.to_string());
            reasons.push(reason);
            return 0.0;
        }
        let mut held: Vec<&HeldCertificate> = facts
            .certificates
            .iter()
            .filter(|c| c.confidence >= rules.min_confidence)
            .collect();
        held.sort_by(|a, b| {
            b.tier
                .cmp(&a.tier)
                .then(a.cert_type_id.cmp(&b.cert_type_id))
        });
        held.dedup_by_key(|c| c.cert_type_id);
        let mut boost = 0.0;
        for cert in held {
            let room = rules.max_total - boost;
            let tier_boost = self.tier_boost(cert.tier);
            if room <= 0.0 || tier_boost <= 0.0 {
                break;
            }
            boost += tier_boost.min(room);
            note(trace, "certificate_boost", base_limit + boost, || {
                format!(
                    "+{} for {} ({}, tier {}, type {}, confidence {})",
                    tier_boost.min(room),
                    cert.name,
                    cert.family,
                    cert.tier,
                    cert.cert_type_id,
                    cert.confidence
                )
            });
            reasons.push(Reason::CertificateBoost {
                family: cert.family.clone(),
                name: cert.name.clone(),
            });
        }
        boost
    }

    /// The policy's limit for `wanted` (base plus boosts): within floor and ceiling, at most
    /// one nightly step from last night's, and never above the ceiling.
    fn policy_limit(
        &self,
        wanted: f64,
        previous: Option<f64>,
        reasons: &mut Vec<Reason>,
        trace: &mut Trace,
    ) -> f64 {
        let ceiling = self.round_down(self.ceiling);
        let mut limit = self.round_down(wanted.clamp(self.floor, self.ceiling));
        if wanted > self.ceiling {
            reasons.push(Reason::PolicyCeiling);
            note(trace, "ceiling", limit, || {
                format!("{wanted:.2} is above the ceiling {}", self.ceiling)
            });
        } else if wanted < self.floor {
            reasons.push(Reason::PolicyFloor);
            note(trace, "floor", limit, || {
                format!("{wanted:.2} is below the floor {}", self.floor)
            });
        } else if limit != wanted {
            note(trace, "rounding", limit, || {
                format!(
                    "{wanted:.2} rounded down to a multiple of {}",
                    self.rounding
                )
            });
        }
        if let Some(previous) = previous {
            let lowest = self.round_up(previous - self.max_nightly_change).max(0.0);
            let highest = self.round_down(previous + self.max_nightly_change);
            if limit < lowest || limit > highest {
                let wanted = limit;
                limit = limit.clamp(lowest, highest);
                reasons.push(Reason::LimitedByNightlyStep);
                note(trace, "nightly_step", limit, || {
                    format!(
                        "{wanted:.2} is more than max_nightly_change {} from last night's {previous:.2}",
                        self.max_nightly_change
                    )
                });
            }
        }
        // the ceiling is hard: it wins over the step (a previous limit above a lowered ceiling)
        if limit > ceiling {
            limit = ceiling;
            note(trace, "ceiling", limit, || {
                format!("the ceiling {} wins over the nightly step", self.ceiling)
            });
            if !reasons.contains(&Reason::PolicyCeiling) {
                reasons.push(Reason::PolicyCeiling);
            }
        }
        limit
    }

    /// The scenario limits a user qualifies for. A user who asked for a lower limit gets no
    /// extra credit in any category.
    fn scenarios_for(&self, pd: f64, facts: &UserFacts) -> Vec<ScenarioGrant> {
        if facts.cap.is_some() {
            return Vec::new();
        }
        self.scenarios
            .iter()
            .filter(|s| {
                pd <= s.max_pd
                    && facts
                        .category_purchases
                        .get(&s.category)
                        .copied()
                        .unwrap_or(0)
                        >= s.min_purchases_90d
            })
            .map(|s| ScenarioGrant {
                category: s.category.clone(),
                amount: s.amount,
                valid_days: s.valid_days,
            })
            .collect()
    }

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

    fn tier_boost(&self, tier: i32) -> f64 {
        let tiers = &self.certificate_boost.tier_boosts;
        if tier < 1 || tiers.is_empty() {
            return 0.0;
        }
        tiers[(tier as usize - 1).min(tiers.len() - 1)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{FraudFlag, LimitPolicy};
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

    #[test]
    fn a_boost_withdrawn_by_a_revocation_says_so_once() {
        let policy = LimitPolicy::builtin();
        let last_night = policy.decide(0.001, &with_certs(vec![cert(7, 3, 0.99)]));
        let boosts: Vec<String> = last_night
            .reasons
            .iter()
            .filter(|r| matches!(r, Reason::CertificateBoost { .. }))
            .map(Reason::to_string)
            .collect();
        assert_eq!(boosts, ["certificate_boost:professional:type7"]);
        let revoked = UserFacts {
            revoked_certificates: vec![cert(7, 3, 0.99)],
            previous_boosts: boosts.clone(),
            ..Default::default()
        };
        let tonight = policy.decide(0.001, &revoked);
        assert_eq!(tonight.certificate_boost, 0.0);
        let texts: Vec<String> = tonight.reasons.iter().map(Reason::to_string).collect();
        assert!(
            texts.contains(&"certificate_revoked:type7".to_string()),
            "{texts:?}"
        );
        // still held through another certificate of the type: the boost stays, no reason
        let still = UserFacts {
            certificates: vec![cert(7, 3, 0.99)],
            ..revoked.clone()
        };
        let d = policy.decide(0.001, &still);
        assert!(
            !d.reasons
                .iter()
                .any(|r| matches!(r, Reason::CertificateRevoked(_)))
        );
        // the night after, last night's table has no boost left to withdraw
        let after = UserFacts {
            previous_boosts: Vec::new(),
            ..revoked
        };
        let d = policy.decide(0.001, &after);
        assert!(
            !d.reasons
                .iter()
                .any(|r| matches!(r, Reason::CertificateRevoked(_)))
        );
    }

    fn with_certs(certificates: Vec<HeldCertificate>) -> UserFacts {
        UserFacts {
            certificates,
            ..Default::default()
        }
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
        assert!(d.reasons.contains(&Reason::CappedByUserRequest));
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
        assert!(!night2.reasons.contains(&Reason::LimitedByNightlyStep));
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
            fraud_flags: vec![FraudFlag::UploadBurst],
            ..with_certs(vec![cert(1, 5, 0.99)])
        };
        let d = policy.decide(0.001, &flagged);
        assert_eq!(d.certificate_boost, 0.0);
        assert!(d.reasons.contains(&Reason::BoostWithheld(Withheld::Fraud(
            FraudFlag::UploadBurst
        ))));
        assert_eq!(
            d.reasons.last().unwrap().to_string(),
            "certificate_boost_withheld:upload_burst"
        );
        let risky = policy.decide(
            policy.certificate_boost.max_pd + 0.001,
            &with_certs(vec![cert(1, 5, 0.99)]),
        );
        assert_eq!(risky.certificate_boost, 0.0);
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
                    vec![FraudFlag::UploadBurst]
                } else {
                    Vec::new()
                },
                category_purchases: [("furniture".to_string(), 2u32)].into_iter().collect(),
                ..Default::default()
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
            // the audit's trace is the same decision, and its steps end at the limit given
            let (traced, steps) = policy.trace(pd, &facts);
            prop_assert_eq!(&traced, &d);
            prop_assert_eq!(steps.last().map(|s| s.limit), Some(d.credit_limit), "{:?}", steps);
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
            if d.grade != Grade::Decline {
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
