//! The synthetic world: a deterministic generator of raw fragments for N users over D days,
//! written as partitioned Parquet under `raw/`, plus `reference/certificate_types` and the
//! latent truth under `truth/` (which no training or scoring code reads).
//!
//! Each user has a true probability of going 30+ days past due within 90 days. A few strong
//! facts (occupation, region, income band) move it a lot; thousands of weak fragments (which
//! merchants they frequent, each moving it by 1-2 points) move it a little each; a hidden
//! "stability" shows up faintly in rent and utility payments, and a part no row shows moves
//! it too; verified certificates lower it and fake ones raise it. Every number of that risk
//! model, and why, is in `story.rs`. Statements go 30+ days late at a monthly hazard chosen
//! so that two statements in a row contain a delinquency with exactly that probability.
//!
//! Every row has two times: when the fact happened and when the bank learned it (`known_at`,
//! which also names its partition). Statements are re-sent as days past due grow and when
//! they are paid; certificates are verified days after upload, and some are revoked later;
//! language scores expire; a few percent of events land days late (`timeline_rates`).
//!
//! A small, fixed share of malformed rows (negative, NaN and infinite amounts, missing ids,
//! unknown certificate types, timestamps a year ahead, versions sent twice) is written on
//! purpose so that validation and quarantine run on every world.

mod catalog;
pub mod random;
pub mod story;
pub mod truth;

use std::sync::Arc;

use chrono::{Datelike, Duration, NaiveDate};
use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Date32Array, Float32Array, Float64Array, Int32Array, StringArray,
    TimestampMicrosecondArray, UInt32Array, UInt64Array,
};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use tracing::info;

pub use catalog::{CERTIFICATE_FAMILIES, Catalog};
use random::{normal, pick_cdf, pick_weighted, poisson, sigmoid, stream_seed};
use story::{
    AGE_EFFECT, BASE_LOG_ODDS, CERTIFICATE_FLOOR, FAKE_CERTIFICATE_EFFECT, FAVOURITES_EXTRA_MEAN,
    FAVOURITES_MIN, HIDDEN_EFFECT, INCOME_EFFECT, STABILITY_EFFECT,
    VERIFIED_CERTIFICATE_EFFECT_PER_TIER,
};

use crate::cause::{Cause, Classify};
use crate::schema::{self, TableSchema};
use crate::store::{Store, StoreError, layout};

#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("building a {table} batch: {source}")]
    Arrow { table: String, source: ArrowError },
    #[error("invalid world: {0}")]
    Invalid(String),
}

impl Classify for SynthError {
    fn cause(&self) -> Cause {
        match self {
            SynthError::Store(e) => e.cause(),
            SynthError::Arrow { .. } => Cause::Transient,
            // a world description or truth file that does not read back
            SynthError::Invalid(_) => Cause::Input,
        }
    }
}

/// What a world is; stored as `raw/_world.json` so later commands know what they read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorldConfig {
    pub users: u64,
    /// days of history, ending the day before `end`
    pub days: u32,
    /// first day with no data: the world is as known on the morning of `end`
    #[serde(with = "crate::serde_date")]
    pub end: NaiveDate,
    pub seed: u64,
}

/// The demo world: what `redflower demo` builds, and the default of `redflower synth`, the
/// benches and the tests' larger worlds.
pub const DEMO_USERS: u64 = 50_000;
pub const DEMO_DAYS: u32 = 180;
/// The demo world's first day without data (its nightly run date), as the command line takes it.
pub const DEMO_END: &str = "2026-11-01";
pub const DEMO_SEED: u64 = 42;

impl WorldConfig {
    /// The demo world with `users` users.
    pub fn demo(users: u64) -> WorldConfig {
        WorldConfig {
            users,
            days: DEMO_DAYS,
            end: NaiveDate::parse_from_str(DEMO_END, "%Y-%m-%d").expect("DEMO_END is a date"),
            seed: DEMO_SEED,
        }
    }

    pub fn start(&self) -> NaiveDate {
        self.end - Duration::days(self.days as i64)
    }
}

use crate::store::layout::WORLD_FILE;
/// Bumped whenever the generator writes other data for the same [`WorldConfig`], so that a
/// root holding an older world is generated again rather than reused. 2: ~8 favourite
/// merchants a user (was ~20), smaller hidden parts. 3: two timelines (`known_at` on every
/// row, partitions by the day a row landed): statements re-sent as days past due grow and
/// cure, certificates verified days after upload and some revoked, language scores that
/// expire, events landing days late, non-finite amounts and duplicate versions. 4: the risk
/// model from the story (`story.rs`): merchants' own effects sd 0.3 (was 0.04), stability
/// 0.3 (was 0.2), a hidden part no row shows (sd 0.5), the intercept keeping the mean PD ~8%.
pub const GENERATOR_VERSION: u64 = 4;
const USERS_PER_CHUNK: u64 = 50_000;
const MICROS_PER_DAY: i64 = 86_400_000_000;

struct ProfileRow {
    user_id: u64,
    signup_day: i32,
    occupation: &'static str,
    region: usize,
    income_band: i32,
    age: i32,
}

struct EventRow {
    user_id: Option<u64>,
    micros: i64,
    known_micros: i64,
    kind: &'static str,
    merchant: Option<u32>,
    category: Option<&'static str>,
    amount: Option<f64>,
}

#[derive(Clone)]
struct CertificateRow {
    user_id: u64,
    number: String,
    type_id: u32,
    micros: i64,
    recognized: bool,
    verified_micros: Option<i64>,
    revoked: Option<(i64, &'static str)>,
    valid_until_day: Option<i32>,
    confidence: f32,
    known_micros: i64,
}

#[derive(Clone, Copy)]
struct RepaymentRow {
    user_id: u64,
    statement_day: i32,
    due_day: i32,
    amount_due: f64,
    amount_paid: f64,
    days_past_due: i32,
    known_micros: i64,
}

struct RequestRow {
    user_id: u64,
    micros: i64,
    requested_limit: Option<f64>,
    known_micros: i64,
}

#[derive(Default)]
struct ChunkRows {
    profiles: Vec<ProfileRow>,
    /// (user, true PD, PD without the hidden parts)
    truth: Vec<(u64, f64, f64)>,
    events: Vec<EventRow>,
    certificates: Vec<CertificateRow>,
    repayments: Vec<RepaymentRow>,
    requests: Vec<RequestRow>,
}

const MICROS_PER_MINUTE: i64 = 60_000_000;
const MICROS_PER_HOUR: i64 = 60 * MICROS_PER_MINUTE;

/// The timelines of generator 3: how late facts land and how often rows break. Each rate is
/// set from what the rows stand for, never from any model's score.
mod timeline_rates {
    /// Merchant batches that land days after the purchase (1 to 5 days): a few percent.
    pub const LATE_EVENT: f64 = 0.03;
    /// Amounts an upstream sends as NaN, +inf or -inf: rare enough to be bugs, frequent
    /// enough that every demo world has them.
    pub const NAN_AMOUNT: f64 = 0.000_03;
    pub const INFINITE_AMOUNT: f64 = 0.000_02;
    /// Issuers confirm a certificate 1 to 14 days after upload.
    pub const MAX_VERIFY_DAYS: i64 = 14;
    /// Forged certificates that got verified are found out and revoked far more often than
    /// genuine ones are withdrawn.
    pub const FORGED_REVOKED: f64 = 0.7;
    pub const GENUINE_WITHDRAWN: f64 = 0.02;
    /// A certificate version sent twice.
    pub const CERTIFICATE_SENT_TWICE: f64 = 0.002;
}

/// When a fact that happened at `micros` lands: minutes to two hours later, or for a few
/// percent (a late merchant batch) one to five days later.
fn landed(micros: i64, timeline: &mut ChaCha8Rng) -> i64 {
    if timeline.random::<f64>() < timeline_rates::LATE_EVENT {
        micros
            + timeline.random_range(1..=5) * MICROS_PER_DAY
            + timeline.random_range(0..MICROS_PER_HOUR)
    } else {
        micros + timeline.random_range(30_000_000..2 * MICROS_PER_HOUR)
    }
}

/// An amount as an upstream sends it: now and then NaN or an infinity.
fn broken_amount(amount: f64, timeline: &mut ChaCha8Rng) -> f64 {
    let draw: f64 = timeline.random();
    if draw < timeline_rates::NAN_AMOUNT {
        f64::NAN
    } else if draw < timeline_rates::NAN_AMOUNT + timeline_rates::INFINITE_AMOUNT {
        if draw < timeline_rates::NAN_AMOUNT + timeline_rates::INFINITE_AMOUNT / 2.0 {
            f64::INFINITY
        } else {
            f64::NEG_INFINITY
        }
    } else {
        amount
    }
}

/// A certificate's versions: the upload; for one the issuer confirms, the verification days
/// later; and for some verified ones, a revocation (forged ones far more often).
fn certificate_life(
    upload: CertificateRow,
    verified: bool,
    genuine: bool,
    timeline: &mut ChaCha8Rng,
) -> Vec<CertificateRow> {
    let mut versions = vec![upload.clone()];
    if verified {
        let at = upload.known_micros
            + timeline.random_range(1..=timeline_rates::MAX_VERIFY_DAYS) * MICROS_PER_DAY
            + timeline.random_range(0..MICROS_PER_DAY);
        let confirmed = CertificateRow {
            verified_micros: Some(at),
            known_micros: at,
            ..upload
        };
        versions.push(confirmed.clone());
        let (revoke_share, reason) = if genuine {
            (timeline_rates::GENUINE_WITHDRAWN, "withdrawn")
        } else {
            (timeline_rates::FORGED_REVOKED, "forged")
        };
        if timeline.random::<f64>() < revoke_share {
            let at = at + timeline.random_range(3..=60) * MICROS_PER_DAY;
            versions.push(CertificateRow {
                revoked: Some((at, reason)),
                known_micros: at,
                ..confirmed
            });
        }
    }
    if timeline.random::<f64>() < timeline_rates::CERTIFICATE_SENT_TWICE {
        let again = versions[versions.len() - 1].clone();
        versions.push(again);
    }
    versions
}

/// One monthly statement and how it ends: paid on time (`late` 0) or `late` days after the
/// due date.
struct Statement {
    user_id: u64,
    due_day: i32,
    amount_due: f64,
    late: i32,
}

impl Statement {
    /// The statement as the bank learns it: issued 20 days before it is due; then paid on
    /// the due date, or unpaid and days past due growing (1, 10, 30, 60, 90 days), until
    /// paid in full `late` days after it was due (cured). Each version the day it is true.
    fn versions(&self, timeline: &mut ChaCha8Rng) -> Vec<RepaymentRow> {
        let version =
            |day: i32, days_past_due: i32, paid: bool, timeline: &mut ChaCha8Rng| RepaymentRow {
                user_id: self.user_id,
                statement_day: self.due_day - 20,
                due_day: self.due_day,
                amount_due: self.amount_due,
                amount_paid: if paid { self.amount_due } else { 0.0 },
                days_past_due,
                known_micros: day as i64 * MICROS_PER_DAY
                    + timeline.random_range(0..MICROS_PER_DAY),
            };
        let mut versions = vec![version(self.due_day - 20, 0, false, timeline)];
        if self.late == 0 {
            versions.push(version(self.due_day, 0, true, timeline));
            return versions;
        }
        for checkpoint in [1, 10, 30, 60, 90] {
            if checkpoint < self.late {
                versions.push(version(
                    self.due_day + checkpoint,
                    checkpoint,
                    false,
                    timeline,
                ));
            }
        }
        versions.push(version(self.due_day + self.late, self.late, true, timeline));
        versions
    }
}

/// What `generate` wrote, for the summary.
#[derive(Debug, Default, Serialize)]
pub struct SynthSummary {
    pub users: u64,
    pub events: u64,
    pub certificates: u64,
    pub repayments: u64,
    pub limit_requests: u64,
    pub files: u64,
    pub mean_true_pd: f64,
}

fn epoch_day(date: NaiveDate) -> i32 {
    (date - NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid")).num_days() as i32
}

fn date_of(day: i32) -> NaiveDate {
    NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid") + Duration::days(day as i64)
}

fn generate_user(world: &WorldConfig, catalog: &Catalog, user_id: u64) -> ChunkRows {
    let mut rng = ChaCha8Rng::seed_from_u64(stream_seed(world.seed, user_id, 1));
    // when the bank learns each fact draws from its own stream: the user and their risk are
    // those of generator 2 whatever the timelines do
    let mut timeline = ChaCha8Rng::seed_from_u64(stream_seed(world.seed, user_id, 2));
    let start = epoch_day(world.start());
    let end = epoch_day(world.end);
    let mut out = ChunkRows::default();

    // Big-picture facts.
    let signup_day = if rng.random::<f64>() < 0.04 {
        end - rng.random_range(1..=60)
    } else {
        end - rng.random_range(61..=5 * 365)
    };
    let occupation_index = rng.random_range(0..catalog.occupations.len());
    let occupation = &catalog.occupations[occupation_index];
    let income_band = (occupation.income_band + 1.2 * normal(&mut rng))
        .round()
        .clamp(1.0, 8.0) as i32;
    let region = pick_weighted(&mut rng, &catalog.region_weights());
    let age = (22.0 + 10.0 * normal(&mut rng).abs() + rng.random_range(0.0..20.0)).min(75.0) as i32;
    let stability = normal(&mut rng);
    let activity = 0.55 * (0.5 * normal(&mut rng)).exp();

    // Weak fragments: the merchants this user frequents. Few enough that the ~40 merchant visits
    // of 90 days show nearly all of them (with ~20, about one in eight went unseen).
    let favourites: Vec<u32> = (0..FAVOURITES_MIN + poisson(&mut rng, FAVOURITES_EXTRA_MEAN))
        .map(|_| pick_cdf(&mut rng, &catalog.merchant_cdf) as u32)
        .collect();
    let fragment_effect: f64 = favourites
        .iter()
        .map(|&m| catalog.merchants[m as usize].effect)
        .sum::<f64>();
    // the part of those nudges that each merchant's category explains
    let category_effect: f64 = favourites
        .iter()
        .map(|&m| catalog.categories[catalog.merchants[m as usize].category].effect)
        .sum::<f64>();

    // Certificates: mostly genuine, some fake; only genuine verified ones lower risk.
    let mut certificate_effect = 0.0;
    let certificate_count = if rng.random::<f64>() < 0.35 {
        1 + poisson(&mut rng, 0.6)
    } else {
        0
    };
    for k in 0..certificate_count {
        let family = if rng.random::<f64>() < 0.6 {
            occupation.certificate_family
        } else {
            rng.random_range(0..CERTIFICATE_FAMILIES.len())
        };
        let types = &catalog.types_by_family[family];
        let kind = &catalog.certificate_types[types[rng.random_range(0..types.len())]];
        let genuine = rng.random::<f64>() < 0.9;
        let (recognized, verified, confidence) = if genuine {
            let recognized = rng.random::<f64>() < 0.95;
            let verified = recognized && rng.random::<f64>() < 0.85;
            (recognized, verified, rng.random_range(0.82..1.0))
        } else {
            let recognized = rng.random::<f64>() < 0.6;
            (
                recognized,
                rng.random::<f64>() < 0.05,
                rng.random_range(0.5..0.9),
            )
        };
        if genuine && verified {
            certificate_effect -= VERIFIED_CERTIFICATE_EFFECT_PER_TIER * kind.tier as f64;
        } else if !genuine {
            certificate_effect += FAKE_CERTIFICATE_EFFECT;
        }
        let day = rng.random_range(signup_day.max(start)..end);
        let type_id = if rng.random::<f64>() < 0.002 {
            999_999
        } else {
            kind.id
        };
        let uploaded = day as i64 * MICROS_PER_DAY + rng.random_range(0..MICROS_PER_DAY);
        let upload = CertificateRow {
            user_id,
            number: format!("C{:010}{}", user_id, k),
            type_id,
            micros: uploaded,
            recognized,
            verified_micros: None,
            revoked: None,
            // a language score counts for two years from the exam, taken before the upload
            valid_until_day: (CERTIFICATE_FAMILIES[family] == "language")
                .then(|| day - timeline.random_range(0..700) + 730),
            confidence: confidence as f32,
            known_micros: uploaded + timeline.random_range(MICROS_PER_MINUTE..MICROS_PER_HOUR),
        };
        out.certificates
            .extend(certificate_life(upload, verified, genuine, &mut timeline));
    }

    // what no row shows, from a stream of its own so the user's other draws stay those of
    // generator 3
    let hidden = normal(&mut ChaCha8Rng::seed_from_u64(stream_seed(
        world.seed, user_id, 3,
    )));
    let logit = BASE_LOG_ODDS + occupation.effect + catalog.regions[region].effect
        - INCOME_EFFECT * (income_band as f64 - 4.5)
        + AGE_EFFECT * (35.0 - age as f64)
        - STABILITY_EFFECT * stability
        + HIDDEN_EFFECT * hidden
        + fragment_effect
        + certificate_effect.max(CERTIFICATE_FLOOR);
    let true_pd = sigmoid(logit);
    // The same risk without what no feature shows directly: stability at its mean, nothing
    // hidden, and every merchant nudging by its category's amount. A reference for what is
    // learnable.
    let visible_pd = sigmoid(
        logit + STABILITY_EFFECT * stability - HIDDEN_EFFECT * hidden - fragment_effect
            + category_effect,
    );
    // P(at least one 30+ dpd among two monthly statements) = true_pd.
    let monthly_hazard = 1.0 - (1.0 - true_pd).sqrt();

    out.profiles.push(ProfileRow {
        user_id,
        signup_day,
        occupation: occupation.name,
        region,
        income_band,
        age,
    });
    out.truth.push((user_id, true_pd, visible_pd));

    // Daily behaviour.
    let first_day = signup_day.max(start);
    let rent_day = rng.random_range(1..=28);
    let pays_rent = rng.random::<f64>() < sigmoid(0.3 + 0.9 * stability);
    let pays_utilities = rng.random::<f64>() < sigmoid(0.8 + 0.9 * stability);
    let spend_scale = 0.6 + 0.12 * income_band as f64;
    for day in first_day..end {
        let date = date_of(day);
        let at = |rng: &mut ChaCha8Rng| {
            day as i64 * MICROS_PER_DAY + rng.random_range(0..MICROS_PER_DAY)
        };
        for _ in 0..poisson(&mut rng, activity) {
            let draw: f64 = rng.random();
            let micros = at(&mut rng);
            if draw < 0.82 {
                let merchant = favourites[rng.random_range(0..favourites.len())];
                let category = &catalog.categories[catalog.merchants[merchant as usize].category];
                let purchase = draw < 0.62;
                let amount = purchase.then(|| {
                    let amount =
                        category.typical_amount * spend_scale * (0.6 * normal(&mut rng)).exp();
                    // a few broken upstream rows
                    if rng.random::<f64>() < 0.0001 {
                        -amount
                    } else {
                        amount
                    }
                });
                let known_micros = landed(micros, &mut timeline);
                let amount = amount.map(|a| broken_amount(a, &mut timeline));
                // an upstream clock bug now and then stamps a row a year ahead
                let micros = if rng.random::<f64>() < 0.000_01 {
                    micros + 400 * MICROS_PER_DAY
                } else {
                    micros
                };
                out.events.push(EventRow {
                    user_id: (rng.random::<f64>() >= 0.00005).then_some(user_id),
                    micros,
                    known_micros,
                    kind: if purchase { "purchase" } else { "visit" },
                    merchant: Some(merchant),
                    category: Some(category.name),
                    amount,
                });
            } else {
                out.events.push(EventRow {
                    user_id: Some(user_id),
                    micros,
                    known_micros: landed(micros, &mut timeline),
                    kind: "transfer",
                    merchant: None,
                    category: None,
                    amount: Some(50.0 * (normal(&mut rng)).exp()),
                });
            }
        }
        if date.day() == rent_day {
            let on_time_share = sigmoid(1.0 + stability);
            if pays_rent && rng.random::<f64>() < on_time_share {
                let micros = at(&mut rng);
                out.events.push(EventRow {
                    user_id: Some(user_id),
                    micros,
                    known_micros: landed(micros, &mut timeline),
                    kind: "rent",
                    merchant: None,
                    category: None,
                    amount: Some(400.0 * spend_scale),
                });
            }
            if pays_utilities && rng.random::<f64>() < on_time_share {
                let micros = at(&mut rng);
                out.events.push(EventRow {
                    user_id: Some(user_id),
                    micros,
                    known_micros: landed(micros, &mut timeline),
                    kind: "utility",
                    merchant: None,
                    category: None,
                    amount: Some(60.0 * spend_scale),
                });
            }
        }
    }

    // Monthly statements, due on the user's due day; the snapshot is as of `end`.
    let due_dom = rng.random_range(1..=28);
    let mut month = world.start().with_day(1).expect("day 1 exists");
    while month < world.end {
        let due = month.with_day(due_dom).expect("day <= 28 exists");
        month = month
            .checked_add_months(chrono::Months::new(1))
            .expect("in range");
        let due_day = epoch_day(due);
        if due_day < first_day + 30 || due_day < start || due_day >= end {
            continue;
        }
        let amount_due = (200.0 * spend_scale * (0.5 * normal(&mut rng)).exp()).round();
        let late = if rng.random::<f64>() < monthly_hazard {
            30 + poisson(&mut rng, 20.0) as i32
        } else if rng.random::<f64>() < 0.08 {
            rng.random_range(1..10)
        } else {
            0
        };
        // an upstream that sometimes sends a statement twice (the draw of generator 2)
        let sent_twice = rng.random::<f64>() < 0.001;
        let statement = Statement {
            user_id,
            due_day,
            amount_due,
            late,
        };
        for version in statement.versions(&mut timeline) {
            if sent_twice {
                out.repayments.push(version);
            }
            out.repayments.push(version);
        }
    }

    // Some users ask for a lower limit; a few later lift the request.
    if rng.random::<f64>() < 0.06 {
        let day = rng.random_range(first_day..end);
        let limits = [500.0, 1000.0, 2000.0, 3000.0, 5000.0];
        let micros = day as i64 * MICROS_PER_DAY + rng.random_range(0..MICROS_PER_DAY);
        out.requests.push(RequestRow {
            user_id,
            micros,
            requested_limit: Some(limits[rng.random_range(0..limits.len())]),
            known_micros: micros + timeline.random_range(1_000_000..MICROS_PER_MINUTE * 10),
        });
        if rng.random::<f64>() < 0.15 && day + 1 < end {
            let lifted = rng.random_range(day + 1..end);
            let micros = lifted as i64 * MICROS_PER_DAY + rng.random_range(0..MICROS_PER_DAY);
            out.requests.push(RequestRow {
                user_id,
                micros,
                requested_limit: None,
                known_micros: micros + timeline.random_range(1_000_000..MICROS_PER_MINUTE * 10),
            });
        }
    }
    // the world is what had landed by its end
    let landed_by_end = |micros: i64| micros < end as i64 * MICROS_PER_DAY;
    out.events.retain(|r| landed_by_end(r.known_micros));
    out.certificates.retain(|r| landed_by_end(r.known_micros));
    out.repayments.retain(|r| landed_by_end(r.known_micros));
    out.requests.retain(|r| landed_by_end(r.known_micros));
    out
}

fn batch(table: &TableSchema, columns: Vec<ArrayRef>) -> Result<RecordBatch, SynthError> {
    RecordBatch::try_new(table.raw_arrow(), columns).map_err(|source| SynthError::Arrow {
        table: table.name.clone(),
        source,
    })
}

fn utc_micros(values: Vec<i64>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from(values).with_timezone("UTC"))
}

fn utc_micros_opt(values: Vec<Option<i64>>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from(values).with_timezone("UTC"))
}

/// The partition of a row: the day it landed.
fn known_day(known_micros: i64) -> i32 {
    known_micros.div_euclid(MICROS_PER_DAY) as i32
}

fn event_batch(rows: &[EventRow]) -> Result<RecordBatch, SynthError> {
    batch(
        &schema::EVENTS,
        vec![
            Arc::new(UInt64Array::from_iter(rows.iter().map(|r| r.user_id))),
            utc_micros(rows.iter().map(|r| r.micros).collect()),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.kind))),
            Arc::new(UInt32Array::from_iter(rows.iter().map(|r| r.merchant))),
            Arc::new(StringArray::from_iter(rows.iter().map(|r| r.category))),
            Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.amount))),
            utc_micros(rows.iter().map(|r| r.known_micros).collect()),
        ],
    )
}

fn certificate_batch(rows: &[CertificateRow]) -> Result<RecordBatch, SynthError> {
    batch(
        &schema::CERTIFICATES,
        vec![
            Arc::new(UInt64Array::from_iter_values(
                rows.iter().map(|r| r.user_id),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.number.as_str()),
            )),
            Arc::new(UInt32Array::from_iter_values(
                rows.iter().map(|r| r.type_id),
            )),
            utc_micros(rows.iter().map(|r| r.micros).collect()),
            Arc::new(BooleanArray::from_iter(
                rows.iter().map(|r| Some(r.recognized)),
            )),
            utc_micros_opt(rows.iter().map(|r| r.verified_micros).collect()),
            utc_micros_opt(rows.iter().map(|r| r.revoked.map(|(at, _)| at)).collect()),
            Arc::new(StringArray::from_iter(
                rows.iter().map(|r| r.revoked.map(|(_, reason)| reason)),
            )),
            Arc::new(Date32Array::from_iter(
                rows.iter().map(|r| r.valid_until_day),
            )),
            Arc::new(Float32Array::from_iter_values(
                rows.iter().map(|r| r.confidence),
            )),
            utc_micros(rows.iter().map(|r| r.known_micros).collect()),
        ],
    )
}

fn repayment_batch(rows: &[RepaymentRow]) -> Result<RecordBatch, SynthError> {
    batch(
        &schema::REPAYMENTS,
        vec![
            Arc::new(UInt64Array::from_iter_values(
                rows.iter().map(|r| r.user_id),
            )),
            Arc::new(Date32Array::from_iter_values(
                rows.iter().map(|r| r.statement_day),
            )),
            Arc::new(Date32Array::from_iter_values(
                rows.iter().map(|r| r.due_day),
            )),
            Arc::new(Float64Array::from_iter_values(
                rows.iter().map(|r| r.amount_due),
            )),
            Arc::new(Float64Array::from_iter_values(
                rows.iter().map(|r| r.amount_paid),
            )),
            Arc::new(Int32Array::from_iter_values(
                rows.iter().map(|r| r.days_past_due),
            )),
            utc_micros(rows.iter().map(|r| r.known_micros).collect()),
        ],
    )
}

fn request_batch(rows: &[RequestRow]) -> Result<RecordBatch, SynthError> {
    batch(
        &schema::LIMIT_REQUESTS,
        vec![
            Arc::new(UInt64Array::from_iter_values(
                rows.iter().map(|r| r.user_id),
            )),
            utc_micros(rows.iter().map(|r| r.micros).collect()),
            Arc::new(Float64Array::from_iter(
                rows.iter().map(|r| r.requested_limit),
            )),
            utc_micros(rows.iter().map(|r| r.known_micros).collect()),
        ],
    )
}

/// A snapshot of the users who had signed up by `day`, landed three hours into that day.
fn profile_batch(
    rows: &[&ProfileRow],
    catalog: &Catalog,
    day: i32,
) -> Result<RecordBatch, SynthError> {
    let known = day as i64 * MICROS_PER_DAY + 3 * MICROS_PER_HOUR;
    batch(
        &schema::PROFILES,
        vec![
            Arc::new(UInt64Array::from_iter_values(
                rows.iter().map(|r| r.user_id),
            )),
            Arc::new(Date32Array::from_iter_values(
                rows.iter().map(|r| r.signup_day),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.occupation),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| catalog.regions[r.region].name.as_str()),
            )),
            Arc::new(Int32Array::from_iter_values(
                rows.iter().map(|r| catalog.regions[r.region].tier),
            )),
            Arc::new(Int32Array::from_iter_values(
                rows.iter().map(|r| r.income_band),
            )),
            Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.age))),
            utc_micros(vec![known; rows.len()]),
        ],
    )
}

/// A row of a source: when the bank learned it, which names its partition.
trait Landed {
    fn known_micros(&self) -> i64;
}

macro_rules! landed {
    ($($row:ty),*) => {
        $(impl Landed for $row {
            fn known_micros(&self) -> i64 {
                self.known_micros
            }
        })*
    };
}
landed!(EventRow, CertificateRow, RepaymentRow, RequestRow);

/// Writes rows into one file per day they landed: `raw/<source>/dt=YYYY-MM-DD/part-<chunk>.parquet`.
async fn write_daily<R: Landed>(
    store: &Store,
    source: &str,
    chunk: u64,
    mut rows: Vec<R>,
    build: impl Fn(&[R]) -> Result<RecordBatch, SynthError>,
) -> Result<u64, SynthError> {
    let day_of = |row: &R| known_day(row.known_micros());
    rows.sort_by_key(&day_of); // stable: user order is kept within a day
    let mut files = 0;
    let mut begin = 0;
    while begin < rows.len() {
        let day = day_of(&rows[begin]);
        let end = begin + rows[begin..].partition_point(|r| day_of(r) == day);
        let batch = build(&rows[begin..end])?;
        let path = layout::raw_part(source, date_of(day), chunk);
        store.write_parquet(&path, batch.schema(), &[batch]).await?;
        files += 1;
        begin = end;
    }
    Ok(files)
}

/// Writes the whole world. Replaces any earlier world at the same root.
pub async fn generate(store: &Store, world: &WorldConfig) -> Result<SynthSummary, SynthError> {
    if world.users == 0 || world.days < 120 {
        return Err(SynthError::Invalid(format!(
            "need users > 0 and days >= 120 (90-day label window + 30-day feature window), got users={} days={}",
            world.users, world.days
        )));
    }
    let catalog = Catalog::new(world.seed, world.users);
    for prefix in ["raw", "reference", "truth"] {
        store.delete_prefix(prefix).await?;
    }
    write_certificate_types(store, &catalog).await?;

    let progress = ProgressBar::new(world.users).with_style(
        ProgressStyle::with_template("synth  {bar:40} {pos}/{len} users  {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut summary = SynthSummary {
        users: world.users,
        ..Default::default()
    };
    let mut pd_sum = 0.0;
    let mut snapshot_days: Vec<i32> = (epoch_day(world.start())..epoch_day(world.end))
        .filter(|&day| date_of(day).day() == 1)
        .collect();
    snapshot_days.push(epoch_day(world.end) - 1);
    snapshot_days.dedup();
    for (chunk, first) in (0..world.users)
        .step_by(USERS_PER_CHUNK as usize)
        .enumerate()
    {
        let chunk = chunk as u64;
        let last = (first + USERS_PER_CHUNK).min(world.users);
        let per_user: Vec<ChunkRows> = (first..last)
            .into_par_iter()
            .map(|user| generate_user(world, &catalog, user + 1))
            .collect();
        let mut rows = ChunkRows::default();
        for user in per_user {
            rows.profiles.extend(user.profiles);
            rows.truth.extend(user.truth);
            rows.events.extend(user.events);
            rows.certificates.extend(user.certificates);
            rows.repayments.extend(user.repayments);
            rows.requests.extend(user.requests);
        }
        summary.events += rows.events.len() as u64;
        summary.certificates += rows.certificates.len() as u64;
        summary.repayments += rows.repayments.len() as u64;
        summary.limit_requests += rows.requests.len() as u64;
        pd_sum += rows.truth.iter().map(|(_, pd, _)| pd).sum::<f64>();

        // Profile snapshots: monthly, and one on the last day. A snapshot lists the users
        // who had signed up by its day, so features as of any date can use the newest
        // snapshot before it.
        for &day in &snapshot_days {
            let alive: Vec<&ProfileRow> = rows
                .profiles
                .iter()
                .filter(|p| p.signup_day <= day)
                .collect();
            let profiles = profile_batch(&alive, &catalog, day)?;
            let path = layout::raw_part("profiles", date_of(day), chunk);
            store
                .write_parquet(&path, profiles.schema(), &[profiles])
                .await?;
            summary.files += 1;
        }
        let truth = RecordBatch::try_new(
            schema::TRUTH.arrow(),
            vec![
                Arc::new(UInt64Array::from_iter_values(
                    rows.truth.iter().map(|t| t.0),
                )),
                Arc::new(Float64Array::from_iter_values(
                    rows.truth.iter().map(|t| t.1),
                )),
                Arc::new(Float64Array::from_iter_values(
                    rows.truth.iter().map(|t| t.2),
                )),
            ],
        )
        .map_err(|source| SynthError::Arrow {
            table: "truth".into(),
            source,
        })?;
        let path = layout::truth_part(chunk);
        store.write_parquet(&path, truth.schema(), &[truth]).await?;
        summary.files += 1;
        let certificates = rows.certificates;
        summary.files += write_daily(store, "events", chunk, rows.events, event_batch).await?;
        summary.files += write_daily(
            store,
            "certificates",
            chunk,
            certificates,
            certificate_batch,
        )
        .await?;
        summary.files +=
            write_daily(store, "repayments", chunk, rows.repayments, repayment_batch).await?;
        summary.files +=
            write_daily(store, "limit_requests", chunk, rows.requests, request_batch).await?;
        progress.inc(last - first);
        info!(chunk, users = last - first, "synth chunk written");
    }
    progress.finish_and_clear();
    summary.mean_true_pd = pd_sum / world.users as f64;
    let mut descriptor =
        serde_json::to_value(world).map_err(|e| SynthError::Invalid(e.to_string()))?;
    descriptor["generator"] = GENERATOR_VERSION.into();
    let descriptor =
        serde_json::to_vec_pretty(&descriptor).map_err(|e| SynthError::Invalid(e.to_string()))?;
    store.put(WORLD_FILE, descriptor.into()).await?;
    Ok(summary)
}

async fn write_certificate_types(store: &Store, catalog: &Catalog) -> Result<(), SynthError> {
    let types = &catalog.certificate_types;
    let batch = batch(
        &schema::CERTIFICATE_TYPES,
        vec![
            Arc::new(UInt32Array::from_iter_values(types.iter().map(|t| t.id))),
            Arc::new(StringArray::from_iter_values(
                types.iter().map(|t| t.name.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                types.iter().map(|t| CERTIFICATE_FAMILIES[t.family]),
            )),
            Arc::new(Int32Array::from_iter_values(types.iter().map(|t| t.tier))),
        ],
    )?;
    store
        .write_parquet(&layout::certificate_types_file(), batch.schema(), &[batch])
        .await?;
    Ok(())
}

/// The world description at `store` and the generator version that wrote it (0 for worlds
/// written before versions were recorded), if a world was generated there.
pub async fn read_world(store: &Store) -> Result<Option<(WorldConfig, u64)>, SynthError> {
    let Some(bytes) = store.get(WORLD_FILE).await? else {
        return Ok(None);
    };
    let invalid = |e: serde_json::Error| SynthError::Invalid(format!("{WORLD_FILE}: {e}"));
    let mut descriptor: serde_json::Value = serde_json::from_slice(&bytes).map_err(invalid)?;
    let generator = descriptor
        .as_object_mut()
        .and_then(|fields| fields.remove("generator"))
        .and_then(|version| version.as_u64())
        .unwrap_or(0);
    let world = serde_json::from_value(descriptor).map_err(invalid)?;
    Ok(Some((world, generator)))
}

/// Whether `store` holds exactly `world`, written by this generator.
pub async fn holds_world(store: &Store, world: &WorldConfig) -> Result<bool, SynthError> {
    Ok(read_world(store).await? == Some((world.clone(), GENERATOR_VERSION)))
}

/// Generates `world` into `store` unless the store already holds exactly that world from this
/// generator (what the benches do before timing anything); says on stderr when it builds one.
pub async fn ensure_world(store: &Store, world: &WorldConfig) -> Result<(), SynthError> {
    if !holds_world(store, world).await? {
        eprintln!(
            "building a {}-user world in {} ...",
            world.users,
            store.url()
        );
        generate(store, world).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn world() -> WorldConfig {
        WorldConfig {
            users: 200,
            days: 150,
            end: NaiveDate::from_ymd_opt(2026, 11, 1).unwrap(),
            seed: 3,
        }
    }

    #[test]
    fn a_user_is_the_same_whatever_else_is_generated() {
        let world = world();
        let catalog = Catalog::new(world.seed, world.users);
        let a = generate_user(&world, &catalog, 17);
        let b = generate_user(&world, &catalog, 17);
        assert_eq!(a.events.len(), b.events.len());
        assert_eq!(a.truth[0].1, b.truth[0].1);
    }

    #[test]
    fn true_pd_sits_in_a_consumer_credit_range() {
        let world = world();
        let catalog = Catalog::new(world.seed, world.users);
        let pds: Vec<f64> = (1..=2000)
            .map(|u| generate_user(&world, &catalog, u).truth[0].1)
            .collect();
        let mean = pds.iter().sum::<f64>() / pds.len() as f64;
        assert!((0.02..0.2).contains(&mean), "mean true pd {mean}");
    }

    #[test]
    fn visible_pd_differs_from_true_pd_by_the_hidden_parts_only() {
        let world = world();
        let catalog = Catalog::new(world.seed, world.users);
        let logit = |p: f64| (p / (1.0 - p)).ln();
        let gaps: Vec<f64> = (1..=2000)
            .map(|u| {
                let (_, true_pd, visible_pd) = generate_user(&world, &catalog, u).truth[0];
                logit(true_pd) - logit(visible_pd)
            })
            .collect();
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        let sd = (gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64).sqrt();
        // stability (0.3), the hidden part (0.5) and ~8 merchants' own effects (sd 0.3 each):
        // sd sqrt(0.09 + 0.25 + 8 * 0.09) ~ 1.03
        assert!(mean.abs() < 0.1, "mean gap {mean}");
        assert!((0.85..1.25).contains(&sd), "gap sd {sd}");
    }

    #[tokio::test]
    async fn a_world_from_an_older_generator_is_not_reused() {
        let store = Store::open("memory://synth-generator-version").unwrap();
        let world = WorldConfig {
            users: 20,
            days: 120,
            ..world()
        };
        assert!(!holds_world(&store, &world).await.unwrap());
        generate(&store, &world).await.unwrap();
        assert!(holds_world(&store, &world).await.unwrap());
        // the same world as a version-1 generator described it
        let old = serde_json::to_vec(&world).unwrap();
        store.put(WORLD_FILE, old.into()).await.unwrap();
        assert_eq!(read_world(&store).await.unwrap(), Some((world.clone(), 0)));
        assert!(!holds_world(&store, &world).await.unwrap());
    }

    #[test]
    fn no_row_falls_after_the_world_end() {
        let world = world();
        let catalog = Catalog::new(world.seed, world.users);
        let end = epoch_day(world.end);
        for u in 1..=100 {
            let rows = generate_user(&world, &catalog, u);
            assert!(rows.events.iter().all(|e| known_day(e.known_micros) < end));
            assert!(
                rows.repayments
                    .iter()
                    .all(|r| known_day(r.known_micros) < end)
            );
            assert!(
                rows.certificates
                    .iter()
                    .all(|c| known_day(c.known_micros) < end)
            );
            assert!(
                rows.requests
                    .iter()
                    .all(|c| known_day(c.known_micros) < end)
            );
        }
    }

    #[test]
    fn a_late_statement_is_re_sent_as_it_grows_and_once_more_when_paid() {
        let mut timeline = ChaCha8Rng::seed_from_u64(7);
        let statement = Statement {
            user_id: 1,
            due_day: 20_000,
            amount_due: 300.0,
            late: 45,
        };
        let versions = statement.versions(&mut timeline);
        let seen: Vec<(i32, i32, bool)> = versions
            .iter()
            .map(|v| {
                (
                    known_day(v.known_micros) - 20_000,
                    v.days_past_due,
                    v.amount_paid > 0.0,
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                (-20, 0, false),
                (1, 1, false),
                (10, 10, false),
                (30, 30, false),
                (45, 45, true)
            ]
        );
        let on_time = Statement {
            late: 0,
            ..statement
        }
        .versions(&mut timeline);
        assert_eq!(on_time.len(), 2);
        assert!(on_time[1].amount_paid == 300.0 && on_time[1].days_past_due == 0);
    }

    #[test]
    fn certificates_are_verified_later_some_revoked_after_and_language_scores_expire() {
        let world = WorldConfig::demo(4_000);
        let catalog = Catalog::new(world.seed, world.users);
        let (mut revoked, mut verified_later, mut expiring) = (Vec::new(), 0, 0);
        for u in 1..=4_000 {
            for c in generate_user(&world, &catalog, u).certificates {
                if let Some((at, reason)) = c.revoked {
                    assert!(c.verified_micros.is_some_and(|v| v < at));
                    revoked.push(reason);
                }
                if c.verified_micros
                    .is_some_and(|v| v >= c.micros + MICROS_PER_DAY)
                {
                    verified_later += 1;
                }
                expiring += c.valid_until_day.is_some() as usize;
            }
        }
        let forged = revoked.iter().filter(|r| **r == "forged").count();
        let withdrawn = revoked.len() - forged;
        assert!(
            forged > 0 && withdrawn > 0,
            "{forged} forged, {withdrawn} withdrawn"
        );
        assert!(
            verified_later > 100 && expiring > 100,
            "{verified_later} {expiring}"
        );
    }
}
