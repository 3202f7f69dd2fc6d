//! Point-in-time properties, through the path a night takes: raw Parquet in a store,
//! validated and versioned by `sources::register`, features by `features::build`, labels by
//! `dataset::labels`. Features and labels as of T never change when rows known at or after T
//! are added (late events, statement corrections, certificate revocations, whatever day they
//! happened and whatever partition they were filed under), and do change when a differing
//! version known before T is added.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::{Duration, NaiveDate};
use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Date32Array, Float32Array, Float64Array, Int32Array, RecordBatch,
    StringArray, TimestampMicrosecondArray, UInt32Array, UInt64Array,
};
use datafusion::prelude::SessionContext;
use proptest::prelude::*;
use redflower::dataset::{self, LabelConfig};
use redflower::features::{self, FeatureConfig, FeatureDictionary};
use redflower::schema::{self, TableSchema};
use redflower::sources;
use redflower::store::{Store, layout};

const FAMILIES: &str = r#"
[[family]]
name = "visits"
source = "events"
filter = "merchant_id IS NOT NULL"
key = "merchant_id"
aggregate = "count"
windows = ["7d", "30d"]

[[family]]
name = "spend"
source = "events"
key = "category"
aggregate = "sum"
value = "amount"
windows = ["30d"]

[[family]]
name = "share"
source = "events"
key = "category"
aggregate = "share"
value = "amount"
windows = ["90d"]

[[family]]
name = "merchants"
source = "events"
aggregate = "distinct_count"
value = "merchant_id"

[[family]]
name = "recency"
source = "events"
aggregate = "days_since_last"
windows = ["90d"]

[[family]]
name = "settled"
source = "events"
time = "event_time + INTERVAL '3' DAY"
aggregate = "count"
windows = ["30d"]

[[family]]
name = "delinquent"
source = "repayments"
filter = "days_past_due >= 30"
time = "due_date"
aggregate = "count"
windows = ["120d"]

[[family]]
name = "worst_dpd"
source = "repayments"
aggregate = "max"
value = "days_past_due"

[[family]]
name = "certificate"
source = "certificates"
filter = "verified_at IS NOT NULL AND revoked_at IS NULL AND (valid_until IS NULL OR valid_until > {as_of})"
key = "cert_type_id"
aggregate = "indicator"
min_support = 1

[[family]]
name = "verified_certificates"
source = "certificates"
filter = "verified_at IS NOT NULL AND revoked_at IS NULL AND (valid_until IS NULL OR valid_until > {as_of})"
aggregate = "count"
"#;

/// (user 1..=5, minutes from T, merchant 0..4, category 0..3, amount)
type Event = (u64, i64, u32, u32, f64);

const USERS: u64 = 5;
const MINUTE: i64 = 60_000_000;
const DAY_MINUTES: i64 = 1440;

/// One event as it landed: when the bank learned it (minutes from T) and how many days before
/// that day an upstream filed it.
#[derive(Debug, Clone, Copy)]
struct Landed {
    event: Event,
    known: i64,
    filed_early: i64,
}

/// One version of a statement: (user, due day from T, days past due, paid, known minutes from T)
type StatementVersion = (u64, i64, i32, bool, i64);

/// One version of a certificate, times in minutes from T.
#[derive(Debug, Clone, Copy)]
struct CertificateVersion {
    user: u64,
    number: u32,
    type_id: u32,
    uploaded: i64,
    verified: Option<i64>,
    revoked: Option<i64>,
    /// days from T
    valid_until: Option<i64>,
    known: i64,
}

#[derive(Debug, Clone, Default)]
struct World {
    events: Vec<Landed>,
    statements: Vec<StatementVersion>,
    certificates: Vec<CertificateVersion>,
}

fn as_of(day: i64) -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 3, 1).unwrap() + Duration::days(day)
}

fn micros(t: NaiveDate, minutes: i64) -> i64 {
    t.and_hms_opt(0, 0, 0).unwrap().and_utc().timestamp_micros() + minutes * MINUTE
}

fn day_of(t: NaiveDate, minutes: i64) -> NaiveDate {
    t + Duration::days(minutes.div_euclid(DAY_MINUTES))
}

fn epoch_day(date: NaiveDate) -> i32 {
    (date - NaiveDate::from_ymd_opt(1970, 1, 1).unwrap()).num_days() as i32
}

fn utc(values: Vec<Option<i64>>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from(values).with_timezone("UTC"))
}

/// Writes each (partition day, batch) of `table` as its own file under raw/.
async fn write_raw(store: &Store, table: &TableSchema, days: Vec<(NaiveDate, RecordBatch)>) {
    for (i, (day, batch)) in days.into_iter().enumerate() {
        let path = layout::raw_part(&table.name, day, i as u64);
        store
            .write_parquet(&path, batch.schema(), &[batch])
            .await
            .unwrap();
    }
}

fn events_batch(t: NaiveDate, rows: &[&Landed]) -> RecordBatch {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from_iter_values(
            rows.iter().map(|r| r.event.0),
        )),
        utc(rows.iter().map(|r| Some(micros(t, r.event.1))).collect()),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|_| "purchase"),
        )),
        Arc::new(UInt32Array::from_iter_values(
            rows.iter().map(|r| r.event.2),
        )),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| format!("cat{}", r.event.3)),
        )),
        Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|r| r.event.4),
        )),
        utc(rows.iter().map(|r| Some(micros(t, r.known))).collect()),
    ];
    RecordBatch::try_new(schema::EVENTS.raw_arrow(), columns).unwrap()
}

fn statements_batch(t: NaiveDate, rows: &[&StatementVersion]) -> RecordBatch {
    let due = |r: &&StatementVersion| epoch_day(t + Duration::days(r.1));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.0))),
        Arc::new(Date32Array::from_iter_values(
            rows.iter().map(|r| due(r) - 20),
        )),
        Arc::new(Date32Array::from_iter_values(rows.iter().map(due))),
        Arc::new(Float64Array::from_iter_values(rows.iter().map(|_| 100.0))),
        Arc::new(Float64Array::from_iter_values(
            rows.iter().map(|r| if r.3 { 100.0 } else { 0.0 }),
        )),
        Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.2))),
        utc(rows.iter().map(|r| Some(micros(t, r.4))).collect()),
    ];
    RecordBatch::try_new(schema::REPAYMENTS.raw_arrow(), columns).unwrap()
}

fn certificates_batch(t: NaiveDate, rows: &[&CertificateVersion]) -> RecordBatch {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.user))),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| format!("N{}-{}", r.user, r.number)),
        )),
        Arc::new(UInt32Array::from_iter_values(
            rows.iter().map(|r| r.type_id),
        )),
        utc(rows.iter().map(|r| Some(micros(t, r.uploaded))).collect()),
        Arc::new(BooleanArray::from_iter(rows.iter().map(|_| Some(true)))),
        utc(rows
            .iter()
            .map(|r| r.verified.map(|m| micros(t, m)))
            .collect()),
        utc(rows
            .iter()
            .map(|r| r.revoked.map(|m| micros(t, m)))
            .collect()),
        Arc::new(StringArray::from_iter(
            rows.iter().map(|r| r.revoked.map(|_| "forged")),
        )),
        Arc::new(Date32Array::from_iter(rows.iter().map(|r| {
            r.valid_until
                .map(|days| epoch_day(t + Duration::days(days)))
        }))),
        Arc::new(Float32Array::from_iter_values(rows.iter().map(|_| 0.95))),
        utc(rows.iter().map(|r| Some(micros(t, r.known))).collect()),
    ];
    RecordBatch::try_new(schema::CERTIFICATES.raw_arrow(), columns).unwrap()
}

/// Rows grouped by the partition they were filed under.
fn by_partition<'r, R>(
    rows: &'r [R],
    day: impl Fn(&R) -> NaiveDate,
) -> Vec<(NaiveDate, Vec<&'r R>)> {
    let mut days: std::collections::BTreeMap<NaiveDate, Vec<&R>> = Default::default();
    for row in rows {
        days.entry(day(row)).or_default().push(row);
    }
    days.into_iter().collect()
}

/// Writes `world` as raw sources relative to T, with a profile snapshot the day before T.
async fn write_world(store: &Store, t: NaiveDate, world: &World) {
    let snapshot = t - Duration::days(1);
    let users = USERS as usize;
    let profiles: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from_iter_values(1..=USERS)),
        Arc::new(Date32Array::from(vec![18_000; users])),
        Arc::new(StringArray::from(vec!["teacher"; users])),
        Arc::new(StringArray::from(vec!["north"; users])),
        Arc::new(Int32Array::from(vec![2; users])),
        Arc::new(Int32Array::from(vec![4; users])),
        Arc::new(Int32Array::from(vec![30; users])),
        utc(vec![Some(micros(snapshot, 60)); users]),
    ];
    let profiles = RecordBatch::try_new(schema::PROFILES.raw_arrow(), profiles).unwrap();
    write_raw(store, &schema::PROFILES, vec![(snapshot, profiles)]).await;
    let types: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from(vec![1, 2, 3])),
        Arc::new(StringArray::from(vec!["a", "b", "c"])),
        Arc::new(StringArray::from(vec!["professional"; 3])),
        Arc::new(Int32Array::from(vec![1, 2, 3])),
    ];
    let types = RecordBatch::try_new(schema::CERTIFICATE_TYPES.arrow(), types).unwrap();
    store
        .write_parquet(
            &format!("{}/part-0.parquet", layout::CERTIFICATE_TYPES),
            types.schema(),
            &[types],
        )
        .await
        .unwrap();
    let requests = RecordBatch::new_empty(schema::LIMIT_REQUESTS.raw_arrow());
    write_raw(store, &schema::LIMIT_REQUESTS, vec![(snapshot, requests)]).await;
    let events = by_partition(&world.events, |e| {
        day_of(t, e.known) - Duration::days(e.filed_early)
    });
    let events = events
        .into_iter()
        .map(|(day, rows)| (day, events_batch(t, &rows)))
        .collect();
    write_raw(store, &schema::EVENTS, events).await;
    let statements = by_partition(&world.statements, |s| day_of(t, s.4));
    let mut statements: Vec<_> = statements
        .into_iter()
        .map(|(day, rows)| (day, statements_batch(t, &rows)))
        .collect();
    let certificates = by_partition(&world.certificates, |c| day_of(t, c.known));
    let mut certificates: Vec<_> = certificates
        .into_iter()
        .map(|(day, rows)| (day, certificates_batch(t, &rows)))
        .collect();
    // a source without rows still has a file: the night reads its schema from it
    if statements.is_empty() {
        statements.push((snapshot, statements_batch(t, &[])));
    }
    if certificates.is_empty() {
        certificates.push((snapshot, certificates_batch(t, &[])));
    }
    write_raw(store, &schema::REPAYMENTS, statements).await;
    write_raw(store, &schema::CERTIFICATES, certificates).await;
}

/// What the night of a run 60 days after T sees as of T: features as comparable rows (name,
/// user, value), and the labels of the training set as of T - 90 days (cut at T).
fn as_of_view(
    families: &str,
    t: NaiveDate,
    world: &World,
) -> (Vec<(String, u64, f32)>, Vec<(u64, bool)>) {
    static WORLD: AtomicUsize = AtomicUsize::new(0);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = Store::open(&format!(
            "memory://leakage-{}",
            WORLD.fetch_add(1, Ordering::SeqCst)
        ))
        .unwrap();
        write_world(&store, t, world).await;
        // marked in-process like the nightly's sessions: the events groups share one scan
        let ctx = SessionContext::new_with_config(
            datafusion::prelude::SessionConfig::new()
                .with_extension(Arc::new(redflower::engine::InProcess)),
        );
        sources::register(&ctx, &store, t + Duration::days(60))
            .await
            .unwrap();
        let config = FeatureConfig::parse(families, "leakage.toml").unwrap();
        let mut dictionary = FeatureDictionary::default();
        let set = features::build(&ctx, &store, &config, &mut dictionary, t)
            .await
            .unwrap();
        let label = LabelConfig {
            horizon_days: 90,
            days_past_due: 30,
        };
        let labels = dataset::labels(&ctx, t - Duration::days(90), &label)
            .await
            .unwrap();
        let labels: Vec<(u64, bool)> = labels.iter().collect();
        (crate::support::named_rows(&set, &dictionary), labels)
    })
}

fn features_with(families: &str, t: NaiveDate, events: &[Landed]) -> Vec<(String, u64, f32)> {
    let world = World {
        events: events.to_vec(),
        ..Default::default()
    };
    as_of_view(families, t, &world).0
}

fn event(minutes: std::ops::Range<i64>) -> impl Strategy<Value = Event> {
    (1..=USERS, minutes, 0u32..4, 0u32..3, 1.0f64..500.0)
}

/// An event learned `delay` minutes after it happened, filed under its own day.
fn landed(event: Event, delay: i64) -> Landed {
    Landed {
        event,
        known: event.1 + delay,
        filed_early: 0,
    }
}

/// A statement's life: issued 20 days before due, then paid on time, or 1 and (from 30 days
/// late) 30 days past due before paid `late` days after it was due.
fn statement_life(user: u64, due: i64, late: i32) -> Vec<StatementVersion> {
    let at = |day: i64| day * DAY_MINUTES + 90;
    let mut versions = vec![(user, due, 0, false, at(due - 20))];
    if late == 0 {
        versions.push((user, due, 0, true, at(due)));
        return versions;
    }
    versions.push((user, due, 1, false, at(due + 1)));
    if late > 30 {
        versions.push((user, due, 30, false, at(due + 30)));
    }
    versions.push((user, due, late, true, at(due + late as i64)));
    versions
}

/// A certificate's life: uploaded, then maybe verified and later revoked (minutes from T).
fn certificate_life(
    (user, number, type_id, uploaded): (u64, u32, u32, i64),
    verify_after: Option<i64>,
    revoke_after: Option<i64>,
    valid_until: Option<i64>,
) -> Vec<CertificateVersion> {
    let upload = CertificateVersion {
        user,
        number,
        type_id,
        uploaded,
        verified: None,
        revoked: None,
        valid_until,
        known: uploaded + 30,
    };
    let mut versions = vec![upload];
    if let Some(after) = verify_after {
        let verified = CertificateVersion {
            verified: Some(upload.known + after),
            known: upload.known + after,
            ..upload
        };
        versions.push(verified);
        if let Some(after) = revoke_after {
            versions.push(CertificateVersion {
                revoked: Some(verified.known + after),
                known: verified.known + after,
                ..verified
            });
        }
    }
    versions
}

fn statements() -> impl Strategy<Value = Vec<StatementVersion>> {
    prop::collection::vec(
        (
            1..=USERS,
            -130i64..-1,
            prop::sample::select(vec![0, 0, 5, 31, 45, 70]),
        ),
        1..12,
    )
    .prop_map(|lives| {
        lives
            .into_iter()
            .flat_map(|(user, due, late)| statement_life(user, due, late))
            .collect()
    })
}

fn certificates() -> impl Strategy<Value = Vec<CertificateVersion>> {
    let life = (
        (1..=USERS, 0u32..1000, 1u32..=3, -100 * DAY_MINUTES..0),
        prop::option::of(0..20 * DAY_MINUTES),
        prop::option::of(0..60 * DAY_MINUTES),
        prop::option::of(-10i64..30),
    );
    prop::collection::vec(life, 0..6).prop_map(|lives| {
        lives
            .into_iter()
            .enumerate()
            .flat_map(
                |(i, ((user, _, type_id, uploaded), verify, revoke, until))| {
                    certificate_life((user, i as u32, type_id, uploaded), verify, revoke, until)
                },
            )
            .collect()
    })
}

/// What a world could learn at or after T: late events (some happened before T, some filed
/// under an earlier partition), corrections of its statements, revocations of its
/// certificates.
fn learned_later(
    world: &World,
    late: &[(Event, i64, i64)],
    corrections: &[(usize, i64, i32)],
    revocations: &[(usize, i64)],
) -> World {
    let mut later = world.clone();
    later
        .events
        .extend(late.iter().map(|&(event, after, filed_early)| Landed {
            event,
            known: event.1.max(0) + after,
            filed_early,
        }));
    for &(pick, after, dpd) in corrections {
        let (user, due, ..) = world.statements[pick % world.statements.len()];
        later.statements.push((user, due, dpd, dpd == 0, after));
    }
    if !world.certificates.is_empty() {
        for &(pick, after) in revocations {
            let version = world.certificates[pick % world.certificates.len()];
            later.certificates.push(CertificateVersion {
                verified: version.verified.or(Some(after)),
                revoked: Some(after),
                known: after,
                ..version
            });
        }
    }
    later
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn versions_known_at_or_after_the_as_of_date_never_change_features_or_labels(
        day in 0i64..365,
        events in prop::collection::vec((event(-100 * DAY_MINUTES..0), 0i64..3 * DAY_MINUTES), 1..40),
        statements in statements(),
        certificates in certificates(),
        // rows learned at or after T, whenever they happened, some filed days early
        late in prop::collection::vec((event(-5 * DAY_MINUTES..40 * DAY_MINUTES), 0i64..10 * DAY_MINUTES, 0i64..3), 1..20),
        corrections in prop::collection::vec((0usize..100, 0i64..40 * DAY_MINUTES, 0i32..120), 1..6),
        revocations in prop::collection::vec((0usize..100, 0i64..40 * DAY_MINUTES), 0..4),
    ) {
        let t = as_of(day);
        let world = World {
            events: events.into_iter().map(|(e, delay)| landed(e, delay)).collect(),
            statements,
            certificates,
        };
        let (features, labels) = as_of_view(FAMILIES, t, &world);
        prop_assert!(!features.is_empty());

        let later = learned_later(&world, &late, &corrections, &revocations);
        prop_assert_eq!(&as_of_view(FAMILIES, t, &later), &(features.clone(), labels.clone()));

        // a differing version learned a minute before T moves both: user 9 owes only this
        // statement, due 50 days before T (in the label window); it was on time as far as
        // anyone knew, until a version known at T - 1 minute says 31 days past due
        let mut before = world.clone();
        before.statements.extend(statement_life(9, -50, 0).into_iter().take(1));
        let (_, quiet) = as_of_view(FAMILIES, t, &before);
        prop_assert!(quiet.contains(&(9, false)), "{:?}", quiet);
        let mut corrected = before.clone();
        corrected.statements.push((9, -50, 31, false, -1));
        let (_, flipped) = as_of_view(FAMILIES, t, &corrected);
        prop_assert!(flipped.contains(&(9, true)), "{:?}", flipped);
        // ... and the same version learned at T changes nothing
        let mut at_t = before.clone();
        at_t.statements.push((9, -50, 31, false, 0));
        prop_assert_eq!(as_of_view(FAMILIES, t, &at_t).1, quiet);

        // a statement of user 1 known a minute before T, 1000 days late: its max and count move
        let mut worse = world.clone();
        worse.statements.push((1, -10, 1000, false, -2 * DAY_MINUTES));
        let moved = as_of_view(FAMILIES, t, &worse).0;
        let worst = |rows: &[(String, u64, f32)]| {
            rows.iter().find(|r| r.0 == "worst_dpd" && r.1 == 1).map(|r| r.2)
        };
        prop_assert_eq!(worst(&moved), Some(1000.0));
        prop_assert_ne!(worst(&features), Some(1000.0));
        // ... until a correction learned before T supersedes it (an upstream's fix)
        let mut fixed = worse.clone();
        fixed.statements.push((1, -10, 0, true, -1));
        prop_assert_ne!(worst(&as_of_view(FAMILIES, t, &fixed).0), Some(1000.0));
    }
}

#[test]
fn a_revocation_or_an_expiry_known_before_the_as_of_date_removes_the_certificate() {
    let t = as_of(30);
    let verified = certificate_life((1, 0, 2, -20 * DAY_MINUTES), Some(60), None, None);
    let world = World {
        events: vec![landed((1, -60, 0, 0, 10.0), 5)],
        certificates: verified.clone(),
        ..Default::default()
    };
    let held = |rows: &[(String, u64, f32)]| -> Vec<String> {
        rows.iter()
            .filter(|r| r.0.contains("certificate"))
            .map(|r| format!("{}={}", r.0, r.2))
            .collect()
    };
    let (features, _) = as_of_view(FAMILIES, t, &world);
    assert_eq!(
        held(&features),
        ["certificate[cert_type_id=2]=1", "verified_certificates=1"]
    );
    let mut revoked = world.clone();
    revoked.certificates = certificate_life(
        (1, 0, 2, -20 * DAY_MINUTES),
        Some(60),
        Some(DAY_MINUTES),
        None,
    );
    assert!(held(&as_of_view(FAMILIES, t, &revoked).0).is_empty());
    // valid until T: no longer counts on T; valid until the day after: still does
    let mut expired = world.clone();
    expired.certificates = certificate_life((1, 0, 2, -20 * DAY_MINUTES), Some(60), None, Some(0));
    assert!(held(&as_of_view(FAMILIES, t, &expired).0).is_empty());
    expired.certificates = certificate_life((1, 0, 2, -20 * DAY_MINUTES), Some(60), None, Some(1));
    assert_eq!(held(&as_of_view(FAMILIES, t, &expired).0).len(), 2);
}

#[test]
fn a_ratio_divides_two_features_of_the_same_user() {
    let families = r#"
        [[family]]
        name = "spend"
        source = "events"
        aggregate = "sum"
        value = "amount"
        windows = ["30d"]

        [[family]]
        name = "purchases"
        source = "events"
        aggregate = "count"
        windows = ["30d"]

        [[ratio]]
        name = "mean_purchase_30d"
        numerator = "spend_30d"
        denominator = "purchases_30d"
    "#;
    let t = as_of(10);
    // user 1 spends 10 and 30 in the window and 1000 before it; user 2 only before it
    let events = [
        landed((1, -60, 0, 0, 10.0), 1),
        landed((1, -3 * DAY_MINUTES, 1, 0, 30.0), 1),
        landed((1, -40 * DAY_MINUTES, 1, 0, 1000.0), 1),
        landed((2, -45 * DAY_MINUTES, 1, 0, 7.0), 1),
    ];
    let rows = features_with(families, t, &events);
    let ratios: Vec<_> = rows.iter().filter(|r| r.0 == "mean_purchase_30d").collect();
    assert_eq!(ratios, vec![&("mean_purchase_30d".to_string(), 1, 20.0)]);
}

/// Each aggregate the families declare, computed directly from the events: what the fused
/// queries and their assembly (distinct counts over a key, shares divided after the query,
/// days since the newest row, FILTERs the WHERE clause already holds) must agree with.
fn expected_features(t: NaiveDate, events: &[Event]) -> Vec<(String, u64, f32)> {
    use std::collections::{BTreeMap, BTreeSet};
    let base = micros(t, 0);
    let day_of = |minutes: i64| (base + minutes * MINUTE).div_euclid(86_400_000_000);
    let today = base.div_euclid(86_400_000_000);
    let within = |e: &Event, days: i64| e.1 < 0 && e.1 >= -days * 1440;
    let mut rows: BTreeMap<(String, u64), f64> = BTreeMap::new();
    for user in 1..=USERS {
        let mine: Vec<&Event> = events.iter().filter(|e| e.0 == user).collect();
        for days in [7, 30] {
            for merchant in 0..4 {
                let n = mine
                    .iter()
                    .filter(|e| within(e, days) && e.2 == merchant)
                    .count();
                if n > 0 {
                    rows.insert(
                        (format!("visits_{days}d[merchant_id={merchant}]"), user),
                        n as f64,
                    );
                }
            }
        }
        let merchants: BTreeSet<u32> = mine.iter().filter(|e| within(e, 30)).map(|e| e.2).collect();
        if !merchants.is_empty() {
            rows.insert(("merchants_30d".into(), user), merchants.len() as f64);
        }
        let total: f64 = mine.iter().filter(|e| within(e, 90)).map(|e| e.4).sum();
        for category in 0..3 {
            let spent: Vec<f64> = mine
                .iter()
                .filter(|e| within(e, 90) && e.3 == category)
                .map(|e| e.4)
                .collect();
            if !spent.is_empty() {
                let share = spent.iter().sum::<f64>() / total;
                rows.insert((format!("share_90d[category=cat{category}]"), user), share);
            }
        }
        if let Some(newest) = mine.iter().filter(|e| within(e, 90)).map(|e| e.1).max() {
            rows.insert(
                ("recency_90d".into(), user),
                (today - day_of(newest)) as f64,
            );
        }
    }
    rows.into_iter()
        .map(|((name, user), value)| (name, user, value as f32))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn every_aggregate_equals_a_direct_computation(
        day in 0i64..365,
        events in prop::collection::vec(event(-100 * 1440..0), 1..60),
    ) {
        let families = r#"
            [[family]]
            name = "visits"
            source = "events"
            filter = "merchant_id IS NOT NULL"
            key = "merchant_id"
            aggregate = "count"
            windows = ["7d", "30d"]

            [[family]]
            name = "merchants"
            source = "events"
            filter = "merchant_id IS NOT NULL"
            aggregate = "distinct_count"
            value = "merchant_id"
            windows = ["30d"]

            [[family]]
            name = "share"
            source = "events"
            key = "category"
            aggregate = "share"
            value = "amount"
            windows = ["90d"]

            [[family]]
            name = "recency"
            source = "events"
            aggregate = "days_since_last"
            windows = ["90d"]
        "#;
        let t = as_of(day);
        let past: Vec<Landed> = events.iter().map(|e| landed(*e, 0)).collect();
        let mut built = features_with(families, t, &past);
        built.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        let expected = expected_features(t, &events);
        prop_assert_eq!(built.len(), expected.len(), "{:?}\n{:?}", built, expected);
        for (got, want) in built.iter().zip(&expected) {
            prop_assert_eq!((&got.0, got.1), (&want.0, want.1));
            prop_assert!((got.2 - want.2).abs() <= 1e-5 * want.2.abs().max(1.0), "{:?} {:?}", got, want);
        }
    }
}
