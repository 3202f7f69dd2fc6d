//! The overlay: what users asked for since the served table was decided (a certificate they
//! uploaded, a lower limit), laid over the table's answers until a newer table accounts for
//! it. Not a second truth: every accepted request is first a raw row in the store (`writes`
//! puts it there before answering), which the next night reads like any other row; the overlay
//! only answers for it until a table decided from it is served.
//!
//! Decided here, at once, from what the night precomputed: an upload's provisional boost is
//! the user's suggestion for the certificate's family (the night's what-if: the model and the
//! policy run again with a verified certificate of that family), refused by the checks the
//! batch's fraud rules make on one upload (confidence under the policy's threshold, a number
//! another user holds, more uploads in a day than allowed). A limit request is a ceiling in
//! force at the next GET. Pure: no I/O.

use std::collections::{HashMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::policy::LimitPolicy;
use crate::publish::snapshot::LimitAnswer;

/// `POST /v1/users/{id}/certificates`: what the upstream recognizer read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateUpload {
    /// the caller's id for this request: a retry with the same id is answered the same and
    /// recorded once
    pub request_id: String,
    pub cert_type_id: u32,
    pub certificate_no: String,
    /// the recognizer's confidence in [0, 1]
    pub confidence: f64,
    /// the first day it no longer counts, if it expires
    #[serde(default)]
    pub valid_until: Option<NaiveDate>,
}

/// `POST /v1/users/{id}/limit-request`: a ceiling the user wants, or null to lift theirs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitRequest {
    pub request_id: String,
    pub requested_limit: Option<f64>,
}

/// A request as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Request {
    Certificate(CertificateUpload),
    LimitRequest(LimitRequest),
}

impl Request {
    pub fn request_id(&self) -> &str {
        match self {
            Request::Certificate(upload) => &upload.request_id,
            Request::LimitRequest(request) => &request.request_id,
        }
    }

    /// The raw source its row goes to.
    pub fn source(&self) -> &'static str {
        match self {
            Request::Certificate(_) => "certificates",
            Request::LimitRequest(_) => "limit_requests",
        }
    }
}

/// Why a request was refused (nothing recorded), or why an accepted upload raises nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteReason {
    /// refused: the request id is not 1-64 of `A-Z a-z 0-9 _ -`
    BadRequestId,
    /// refused: the same request id was used for a different request
    RequestIdReused,
    /// refused: not a type in the certificate catalog
    UnknownCertificateType,
    /// refused: the confidence is outside [0, 1]
    ConfidenceOutOfRange,
    /// refused: read with less confidence than the policy's boosts need
    ConfidenceBelowThreshold,
    /// refused: the number is held by as many other users as the policy allows
    CertificateNumberClaimedByAnotherUser,
    /// refused: more uploads today than the policy allows a user
    UploadBurst,
    /// refused: a requested limit must be a number >= 0, or null
    BadRequestedLimit,
    /// accepted, no provisional boost: tonight's table promises nothing for this family
    /// (the user holds one already, gets no boosts, or it is not among their suggestions)
    NoSuggestionForFamily,
    /// accepted, no provisional boost: an upload of this family raised the limit already
    FamilyAlreadyRaised,
    /// accepted, no provisional boost: the boosts reach the policy's maximum
    BoostCapReached,
}

impl WriteReason {
    pub fn refuses(self) -> bool {
        !matches!(
            self,
            WriteReason::NoSuggestionForFamily
                | WriteReason::FamilyAlreadyRaised
                | WriteReason::BoostCapReached
        )
    }
}

/// The answer to a write, stored with the raw row so that a retry is answered the same.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WriteAnswer {
    pub request_id: String,
    pub user_id: u64,
    pub accepted: bool,
    /// why it was refused, or why an accepted upload raises nothing now
    pub reason: Option<WriteReason>,
    /// what an accepted upload raises the limit by until the next night decides (0 for a
    /// limit request, a refusal, or an upload that raises nothing now)
    pub provisional_boost: f64,
    /// the user's own ceiling in force once the request is taken into account (null: none)
    pub user_cap: Option<f64>,
    /// the limit in force once the request is taken into account
    pub credit_limit: f64,
    /// when it was recorded (RFC 3339, UTC): its row's `known_at`; null when refused
    pub known_at: Option<String>,
    /// the table version it was decided on
    pub table_version: u64,
}

/// An accepted request: its row is in the store.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    pub user_id: u64,
    pub known_at: DateTime<Utc>,
    pub request: Request,
    /// an upload's family and the boost it was granted
    pub family: Option<String>,
    pub boost: f64,
    pub answer: WriteAnswer,
}

/// A type of the certificate catalog.
#[derive(Debug, Clone, PartialEq)]
pub struct CertificateType {
    pub name: String,
    pub family: String,
}

/// `provisional` of a GET answer: the fields requests changed since the table was decided,
/// and those requests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provisional {
    pub fields: Vec<String>,
    pub requests: Vec<ProvisionalRequest>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProvisionalRequest {
    pub request_id: String,
    /// `certificate` or `limit_request`
    pub kind: String,
    pub known_at: String,
    /// a certificate's provisional boost (null for a limit request)
    pub boost: Option<f64>,
    /// a limit request's ceiling (null lifts the user's; null for a certificate)
    pub requested_limit: Option<f64>,
}

/// A GET answer with the overlay applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OverlaidAnswer {
    #[serde(flatten)]
    pub answer: LimitAnswer,
    pub provisional: Provisional,
}

/// The rules a decision takes from the policy the served table was decided with.
#[derive(Debug, Clone)]
pub struct Rules {
    pub policy: LimitPolicy,
    pub catalog: HashMap<u32, CertificateType>,
}

/// How long past the table that accounts for it an accepted request is still answered as a
/// retry (and replayed on start for that).
pub const RETRY_DAYS: u64 = 7;

/// Accepted requests, by request id and by user, and the certificate numbers users hold.
pub struct Overlay {
    rules: Rules,
    /// by (source, request id): the overlay's requests and, for `RETRY_DAYS`, those a table
    /// accounts for, so that a late retry is answered, not recorded again
    accepted: HashMap<(&'static str, String), Accepted>,
    /// keys of the requests the table does not account for, by user
    by_user: HashMap<u64, Vec<(&'static str, String)>>,
    /// holders of each certificate number (by the number's hash)
    claims: HashMap<u64, Vec<u64>>,
    /// the served table accounts for what was known before this
    accounted_before: DateTime<Utc>,
}

fn number_key(certificate_no: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    certificate_no.trim().hash(&mut hasher);
    hasher.finish()
}

fn valid_request_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// What the overlay decided about a new request.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// answered before: the stored answer, nothing recorded again
    Retry(WriteAnswer),
    Refused(WriteAnswer),
    /// to record (`writes` stores the row, then `Overlay::insert`)
    Accept(Accepted),
}

impl Overlay {
    /// An empty overlay over a table that accounts for what was known before
    /// `accounted_before`.
    pub fn new(rules: Rules, accounted_before: DateTime<Utc>) -> Overlay {
        Overlay {
            rules,
            accepted: HashMap::new(),
            by_user: HashMap::new(),
            claims: HashMap::new(),
            accounted_before,
        }
    }

    /// Users the overlay changes an answer of.
    pub fn users(&self) -> usize {
        self.by_user.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_user.is_empty()
    }

    /// `user_id` holds `certificate_no` (an upload the store already has).
    pub fn claim(&mut self, certificate_no: &str, user_id: u64) {
        let holders = self.claims.entry(number_key(certificate_no)).or_default();
        if !holders.contains(&user_id) {
            holders.push(user_id);
        }
    }

    /// A newer table is served: it accounts for what was known before `accounted_before`,
    /// decided with `rules`. Its requests leave the overlay; they are still answered as
    /// retries for `RETRY_DAYS`.
    pub fn account(&mut self, rules: Rules, accounted_before: DateTime<Utc>) {
        self.rules = rules;
        self.accounted_before = accounted_before;
        let retried_since = accounted_before
            .checked_sub_days(chrono::Days::new(RETRY_DAYS))
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        self.accepted.retain(|_, a| a.known_at >= retried_since);
        let accepted = &self.accepted;
        self.by_user.retain(|_, keys| {
            keys.retain(|key| {
                accepted
                    .get(key)
                    .is_some_and(|a| a.known_at >= accounted_before)
            });
            !keys.is_empty()
        });
    }

    /// Records a request whose row is in the store (accepted now, or replayed on start). One
    /// the served table accounts for already is kept for retries only.
    pub fn insert(&mut self, accepted: Accepted) {
        if let Request::Certificate(upload) = &accepted.request {
            self.claim(&upload.certificate_no, accepted.user_id);
        }
        let key = (
            accepted.request.source(),
            accepted.request.request_id().to_string(),
        );
        if self.accepted.contains_key(&key) {
            return;
        }
        if accepted.known_at >= self.accounted_before {
            self.by_user
                .entry(accepted.user_id)
                .or_default()
                .push(key.clone());
        }
        self.accepted.insert(key, accepted);
    }

    /// The requests of `user_id` the served table does not account for, in order.
    fn of_user(&self, user_id: u64) -> Vec<&Accepted> {
        let mut of_user: Vec<&Accepted> = self
            .by_user
            .get(&user_id)
            .into_iter()
            .flatten()
            .filter_map(|key| self.accepted.get(key))
            .collect();
        of_user.sort_by_key(|a| a.known_at);
        of_user
    }

    /// `answer` (the table's) with the user's requests applied, or `None` when they have none.
    pub fn apply(&self, answer: &LimitAnswer) -> Option<OverlaidAnswer> {
        self.apply_requests(answer, &self.of_user(answer.user_id))
    }

    /// `answer` with `requests` (its user's, in the order they were known) applied.
    fn apply_requests(
        &self,
        answer: &LimitAnswer,
        requests: &[&Accepted],
    ) -> Option<OverlaidAnswer> {
        if requests.is_empty() {
            return None;
        }
        let mut answer = answer.clone();
        let mut fields = Vec::new();
        let boost: f64 = requests.iter().map(|a| a.boost).sum();
        if boost > 0.0 {
            answer.certificate_boost += boost;
            answer.policy_limit += boost;
            fields.extend(["certificate_boost", "policy_limit"]);
        }
        let cap = requests.iter().rev().find_map(|a| match &a.request {
            Request::LimitRequest(request) => Some(request.requested_limit),
            Request::Certificate(_) => None,
        });
        if let Some(cap) = cap {
            answer.user_cap = cap;
            fields.push("user_cap");
            // the policy grants scenario limits only to users without a ceiling of their own
            if cap.is_some() && !answer.scenario_limits.is_empty() {
                answer.scenario_limits.clear();
                fields.push("scenario_limits");
            }
        }
        let limit = self
            .rules
            .policy
            .capped_limit(answer.policy_limit, answer.user_cap);
        if limit != answer.credit_limit {
            answer.credit_limit = limit;
            fields.push("credit_limit");
        }
        let requests = requests.iter().map(|a| provisional_request(a)).collect();
        let fields = fields.into_iter().map(String::from).collect();
        Some(OverlaidAnswer {
            answer,
            provisional: Provisional { fields, requests },
        })
    }

    /// The answer refusing request `request_id` of `answer`'s user for `reason`.
    pub fn refusal(
        &self,
        answer: &LimitAnswer,
        request_id: &str,
        reason: WriteReason,
        table_version: u64,
    ) -> WriteAnswer {
        let (credit_limit, user_cap) = self.limit_now(answer);
        WriteAnswer {
            request_id: request_id.to_string(),
            user_id: answer.user_id,
            accepted: false,
            reason: Some(reason),
            provisional_boost: 0.0,
            user_cap,
            credit_limit,
            known_at: None,
            table_version,
        }
    }

    /// The limit and ceiling `answer`'s user has now, the overlay included.
    fn limit_now(&self, answer: &LimitAnswer) -> (f64, Option<f64>) {
        let now = self
            .apply(answer)
            .map_or_else(|| answer.clone(), |overlaid| overlaid.answer);
        (now.credit_limit, now.user_cap)
    }

    /// What to do with `request` from the user of `answer` (the served table's), made at `now`.
    pub fn decide(
        &self,
        answer: &LimitAnswer,
        request: Request,
        now: DateTime<Utc>,
        table_version: u64,
    ) -> Verdict {
        let user_id = answer.user_id;
        let refuse = |reason| {
            let id = request.request_id();
            Verdict::Refused(self.refusal(answer, id, reason, table_version))
        };
        if !valid_request_id(request.request_id()) {
            return refuse(WriteReason::BadRequestId);
        }
        let key = (request.source(), request.request_id().to_string());
        if let Some(before) = self.accepted.get(&key) {
            return match before.user_id == user_id && before.request == request {
                true => Verdict::Retry(before.answer.clone()),
                false => refuse(WriteReason::RequestIdReused),
            };
        }
        let decided = match &request {
            Request::Certificate(upload) => self.decide_upload(answer, upload, now),
            Request::LimitRequest(limit) => match limit.requested_limit {
                Some(cap) if !cap.is_finite() || cap < 0.0 => Err(WriteReason::BadRequestedLimit),
                _ => Ok((None, 0.0, None)),
            },
        };
        let (family, boost, reason) = match decided {
            Ok(decided) => decided,
            Err(reason) => return refuse(reason),
        };
        let mut accepted = Accepted {
            user_id,
            known_at: now,
            request,
            family,
            boost,
            answer: WriteAnswer {
                request_id: key.1,
                user_id,
                accepted: true,
                reason,
                provisional_boost: boost,
                user_cap: None,
                credit_limit: 0.0,
                known_at: Some(now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
                table_version,
            },
        };
        (accepted.answer.credit_limit, accepted.answer.user_cap) =
            self.limit_with(answer, &accepted);
        Verdict::Accept(accepted)
    }

    /// The limit and ceiling once `accepted` joins the user's requests.
    fn limit_with(&self, answer: &LimitAnswer, accepted: &Accepted) -> (f64, Option<f64>) {
        let mut requests = self.of_user(answer.user_id);
        requests.push(accepted);
        let now = self
            .apply_requests(answer, &requests)
            .map_or_else(|| answer.clone(), |overlaid| overlaid.answer);
        (now.credit_limit, now.user_cap)
    }

    /// An upload's family, provisional boost and (when it raises nothing) why; or why it is
    /// refused.
    fn decide_upload(
        &self,
        answer: &LimitAnswer,
        upload: &CertificateUpload,
        now: DateTime<Utc>,
    ) -> Result<(Option<String>, f64, Option<WriteReason>), WriteReason> {
        let policy = &self.rules.policy;
        let Some(kind) = self.rules.catalog.get(&upload.cert_type_id) else {
            return Err(WriteReason::UnknownCertificateType);
        };
        if !(0.0..=1.0).contains(&upload.confidence) {
            return Err(WriteReason::ConfidenceOutOfRange);
        }
        if upload.confidence < policy.certificate_boost.min_confidence {
            return Err(WriteReason::ConfidenceBelowThreshold);
        }
        let others = self
            .claims
            .get(&number_key(&upload.certificate_no))
            .map_or(0, |holders| {
                holders.iter().filter(|&&u| u != answer.user_id).count()
            });
        if others >= policy.fraud.max_users_per_certificate_number {
            return Err(WriteReason::CertificateNumberClaimedByAnotherUser);
        }
        let requests = self.of_user(answer.user_id);
        let uploads_today = requests
            .iter()
            .filter(|a| a.family.is_some() && a.known_at.date_naive() == now.date_naive())
            .count();
        if uploads_today >= policy.fraud.max_uploads_per_day {
            return Err(WriteReason::UploadBurst);
        }
        let family = kind.family.clone();
        let raised: HashSet<&str> = requests
            .iter()
            .filter(|a| a.boost > 0.0)
            .filter_map(|a| a.family.as_deref())
            .collect();
        let promised = answer
            .suggestions
            .iter()
            .find(|s| s.family == family)
            .map(|s| s.adds);
        let boosted: f64 = requests.iter().map(|a| a.boost).sum();
        let room = policy.certificate_boost.max_total - answer.certificate_boost - boosted;
        let (boost, reason) = match promised {
            None => (0.0, Some(WriteReason::NoSuggestionForFamily)),
            Some(_) if raised.contains(family.as_str()) => {
                (0.0, Some(WriteReason::FamilyAlreadyRaised))
            }
            Some(_) if room <= 0.0 => (0.0, Some(WriteReason::BoostCapReached)),
            Some(adds) => (adds.min(room), None),
        };
        Ok((Some(family), boost, reason))
    }
}

fn provisional_request(accepted: &Accepted) -> ProvisionalRequest {
    let (kind, boost, requested_limit) = match &accepted.request {
        Request::Certificate(_) => ("certificate", Some(accepted.boost), None),
        Request::LimitRequest(r) => ("limit_request", None, r.requested_limit),
    };
    ProvisionalRequest {
        request_id: accepted.request.request_id().to_string(),
        kind: kind.to_string(),
        known_at: accepted
            .known_at
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        boost,
        requested_limit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publish::snapshot::{ScenarioLimit, Suggestion, Versions};

    fn table_answer(user_id: u64, credit_limit: f64, suggestions: &[(&str, f64)]) -> LimitAnswer {
        LimitAnswer {
            user_id,
            credit_limit,
            policy_limit: credit_limit,
            base_limit: credit_limit,
            certificate_boost: 0.0,
            user_cap: None,
            grade: "B".into(),
            apr: Some(0.2),
            pd: 0.03,
            scenario_limits: Vec::new(),
            suggestions: suggestions
                .iter()
                .map(|(family, adds)| Suggestion {
                    family: family.to_string(),
                    adds: *adds,
                })
                .collect(),
            reasons: Vec::new(),
            versions: Versions {
                table: 1,
                as_of: "2026-11-01".into(),
                model: "m".into(),
                policy: "p".into(),
            },
        }
    }

    fn overlay() -> Overlay {
        let catalog = [(7, "language"), (8, "language"), (9, "professional")]
            .into_iter()
            .map(|(id, family)| {
                (
                    id,
                    CertificateType {
                        name: format!("type {id}"),
                        family: family.into(),
                    },
                )
            })
            .collect();
        let rules = Rules {
            policy: LimitPolicy::builtin(),
            catalog,
        };
        Overlay::new(rules, at(0))
    }

    fn at(hour: u32) -> DateTime<Utc> {
        NaiveDate::from_ymd_opt(2026, 11, 2)
            .unwrap()
            .and_hms_opt(hour, 0, 0)
            .unwrap()
            .and_utc()
    }

    fn upload(id: &str, type_id: u32, number: &str) -> Request {
        Request::Certificate(CertificateUpload {
            request_id: id.into(),
            cert_type_id: type_id,
            certificate_no: number.into(),
            confidence: 0.97,
            valid_until: None,
        })
    }

    fn accept(
        overlay: &mut Overlay,
        answer: &LimitAnswer,
        request: Request,
        hour: u32,
    ) -> WriteAnswer {
        match overlay.decide(answer, request, at(hour), 1) {
            Verdict::Accept(accepted) => {
                let answer = accepted.answer.clone();
                overlay.insert(accepted);
                answer
            }
            other => panic!("not accepted: {other:?}"),
        }
    }

    fn refused(overlay: &Overlay, answer: &LimitAnswer, request: Request) -> WriteReason {
        match overlay.decide(answer, request, at(5), 1) {
            Verdict::Refused(answer) => answer.reason.unwrap(),
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn an_upload_raises_the_limit_by_the_suggestion_once_per_family_and_a_retry_is_answered_the_same()
     {
        let mut overlay = overlay();
        let table = table_answer(1, 5000.0, &[("language", 300.0), ("professional", 800.0)]);
        let first = accept(&mut overlay, &table, upload("r1", 7, "L-1"), 1);
        assert_eq!(
            (first.provisional_boost, first.credit_limit),
            (300.0, 5300.0)
        );
        let served = overlay.apply(&table).unwrap();
        assert_eq!(served.answer.credit_limit, 5300.0);
        assert_eq!(
            served.provisional.fields,
            ["certificate_boost", "policy_limit", "credit_limit"]
        );
        let second = accept(&mut overlay, &table, upload("r2", 8, "L-2"), 2);
        assert_eq!(second.provisional_boost, 0.0);
        assert_eq!(second.reason, Some(WriteReason::FamilyAlreadyRaised));
        assert_eq!(
            overlay.decide(&table, upload("r1", 7, "L-1"), at(9), 1),
            Verdict::Retry(first)
        );
        assert_eq!(
            refused(&overlay, &table, upload("r1", 9, "P-1")),
            WriteReason::RequestIdReused
        );
        let unpromised = table_answer(2, 5000.0, &[]);
        let none = accept(&mut overlay, &unpromised, upload("r3", 9, "P-2"), 3);
        assert_eq!(none.reason, Some(WriteReason::NoSuggestionForFamily));
        assert_eq!(
            overlay.apply(&unpromised).unwrap().answer.credit_limit,
            5000.0
        );
    }

    #[test]
    fn uploads_are_refused_for_a_number_held_by_another_user_low_confidence_or_a_burst() {
        let mut overlay = overlay();
        overlay.claim("TAKEN", 9);
        let table = table_answer(1, 5000.0, &[("language", 300.0)]);
        let reason = refused(&overlay, &table, upload("a", 7, "TAKEN"));
        assert_eq!(reason, WriteReason::CertificateNumberClaimedByAnotherUser);
        let mut low = upload("b", 7, "N-1");
        if let Request::Certificate(u) = &mut low {
            u.confidence = 0.5;
        }
        assert_eq!(
            refused(&overlay, &table, low),
            WriteReason::ConfidenceBelowThreshold
        );
        assert_eq!(
            refused(&overlay, &table, upload("c", 99, "N-2")),
            WriteReason::UnknownCertificateType
        );
        assert_eq!(
            refused(&overlay, &table, upload("bad id!", 7, "N-3")),
            WriteReason::BadRequestId
        );
        for k in 0..overlay.rules.policy.fraud.max_uploads_per_day {
            accept(
                &mut overlay,
                &table,
                upload(&format!("d{k}"), 9, &format!("B-{k}")),
                1,
            );
        }
        assert_eq!(
            refused(&overlay, &table, upload("e", 9, "B-x")),
            WriteReason::UploadBurst
        );
        // the user's own number again is not another user's
        assert!(matches!(
            overlay.decide(
                &table_answer(9, 1.0, &[]),
                upload("f", 7, "TAKEN"),
                at(1),
                1
            ),
            Verdict::Accept(_)
        ));
    }

    #[test]
    fn a_lower_limit_applies_at_once_and_a_newer_table_accounts_for_the_requests() {
        let mut overlay = overlay();
        let mut table = table_answer(1, 5000.0, &[]);
        table.scenario_limits.push(ScenarioLimit {
            category: "furniture".into(),
            amount: 3000.0,
            valid_until: "2026-12-01".into(),
        });
        let lower = |id: &str, limit| {
            Request::LimitRequest(LimitRequest {
                request_id: id.into(),
                requested_limit: limit,
            })
        };
        let answer = accept(&mut overlay, &table, lower("l1", Some(2050.0)), 1);
        // rounded down to the policy's rounding, as the night does
        assert_eq!(
            (answer.credit_limit, answer.user_cap),
            (2000.0, Some(2050.0))
        );
        let served = overlay.apply(&table).unwrap();
        assert_eq!(
            (served.answer.credit_limit, served.answer.user_cap),
            (2000.0, Some(2050.0))
        );
        assert!(
            served.answer.scenario_limits.is_empty(),
            "no scenario limit under a cap"
        );
        assert!(
            served
                .provisional
                .fields
                .contains(&"scenario_limits".to_string())
        );
        assert_eq!(
            accept(&mut overlay, &table, lower("l2", None), 2).credit_limit,
            5000.0
        );
        let bad = refused(&overlay, &table, lower("l3", Some(-1.0)));
        assert_eq!(bad, WriteReason::BadRequestedLimit);
        let rules = overlay.rules.clone();
        overlay.account(rules, at(2));
        // l1 is accounted for, l2 (known at 02:00) is not
        let served = overlay.apply(&table).unwrap();
        assert_eq!(served.provisional.requests.len(), 1);
        overlay.account(overlay.rules.clone(), at(3));
        assert!(overlay.is_empty() && overlay.apply(&table).is_none());
        // still answered as a retry, not recorded again
        assert!(matches!(
            overlay.decide(&table, lower("l1", Some(2050.0)), at(4), 2),
            Verdict::Retry(_)
        ));
    }
}
