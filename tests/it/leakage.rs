//! Point-in-time property: features as of T never change when rows known at or after T are
//! added, whatever the rows, the as-of date, or the partition a late row was filed under.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::{Duration, NaiveDate};
use datafusion::arrow::array::{
    Date32Array, Float64Array, Int32Array, RecordBatch, StringArray, TimestampMicrosecondArray,
    UInt32Array, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use proptest::prelude::*;
use redflower::features::{self, FeatureConfig, FeatureDictionary};
use redflower::store::Store;

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
"#;

/// (user 1..=5, minutes from the as-of date, merchant 0..4, category 0..3, amount)
type Event = (u64, i64, u32, u32, f64);

const USERS: u64 = 5;
const MICROS_PER_MINUTE: i64 = 60_000_000;

fn as_of(day: i64) -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 3, 1).unwrap() + Duration::days(day)
}

fn epoch_micros(date: NaiveDate) -> i64 {
    date.and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp_micros()
}

/// Events relative to T; `filed_days_early` files a row under an earlier partition, as a late
/// upstream might.
fn events_table(t: NaiveDate, events: &[(Event, i64)]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::UInt64, true),
        Field::new(
            "event_time",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
        Field::new("kind", DataType::Utf8, true),
        Field::new("merchant_id", DataType::UInt32, true),
        Field::new("category", DataType::Utf8, true),
        Field::new("amount", DataType::Float64, true),
        Field::new("dt", DataType::Utf8, true),
    ]));
    let base = epoch_micros(t);
    let times: Vec<i64> = events
        .iter()
        .map(|((_, m, ..), _)| base + m * MICROS_PER_MINUTE)
        .collect();
    let dts: Vec<String> = events
        .iter()
        .zip(&times)
        .map(|((_, early), micros)| {
            let day = chrono::DateTime::from_timestamp_micros(*micros)
                .unwrap()
                .date_naive();
            (day - Duration::days(*early)).to_string()
        })
        .collect();
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(UInt64Array::from_iter_values(
                events.iter().map(|((u, ..), _)| *u),
            )),
            Arc::new(TimestampMicrosecondArray::from(times).with_timezone("UTC")),
            Arc::new(StringArray::from_iter_values(
                events.iter().map(|_| "purchase"),
            )),
            Arc::new(UInt32Array::from_iter_values(
                events.iter().map(|((_, _, m, ..), _)| *m),
            )),
            Arc::new(StringArray::from_iter_values(
                events.iter().map(|((_, _, _, c, _), _)| format!("cat{c}")),
            )),
            Arc::new(Float64Array::from_iter_values(
                events.iter().map(|((.., a), _)| *a),
            )),
            Arc::new(StringArray::from_iter_values(dts)),
        ],
    )
    .unwrap()
}

fn profiles_table(snapshot: NaiveDate) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::UInt64, true),
        Field::new("signup_date", DataType::Date32, true),
        Field::new("income_band", DataType::Int32, true),
        Field::new("dt", DataType::Utf8, true),
    ]));
    let users: Vec<u64> = (1..=USERS).collect();
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(UInt64Array::from(users.clone())),
            Arc::new(Date32Array::from(vec![18_000; users.len()])),
            Arc::new(Int32Array::from(vec![4; users.len()])),
            Arc::new(StringArray::from(vec![snapshot.to_string(); users.len()])),
        ],
    )
    .unwrap()
}

/// Features as of `t` over `events`, as comparable rows (name, user, value).
fn features_as_of(t: NaiveDate, events: &[(Event, i64)]) -> Vec<(String, u64, f32)> {
    features_with(FAMILIES, t, events)
}

fn features_with(families: &str, t: NaiveDate, events: &[(Event, i64)]) -> Vec<(String, u64, f32)> {
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
        let snapshot = t - Duration::days(1);
        let profiles = profiles_table(snapshot);
        // snapshot_before() finds the profile partition by listing the store
        store
            .write_parquet(
                &format!("raw/profiles/dt={snapshot}/part-0.parquet"),
                profiles.schema(),
                &[profiles.clone()],
            )
            .await
            .unwrap();
        // marked in-process like the nightly's sessions: the events groups share one scan
        let ctx = SessionContext::new_with_config(
            datafusion::prelude::SessionConfig::new()
                .with_extension(Arc::new(redflower::engine::InProcess)),
        );
        ctx.register_table(
            "profiles",
            Arc::new(MemTable::try_new(profiles.schema(), vec![vec![profiles]]).unwrap()),
        )
        .unwrap();
        let events = events_table(t, events);
        ctx.register_table(
            "events",
            Arc::new(MemTable::try_new(events.schema(), vec![vec![events]]).unwrap()),
        )
        .unwrap();
        let config = FeatureConfig::parse(families, "leakage.toml").unwrap();
        let mut dictionary = FeatureDictionary::default();
        let set = features::build(&ctx, &store, &config, &mut dictionary, t)
            .await
            .unwrap();
        crate::support::named_rows(&set, &dictionary)
    })
}

fn event(minutes: std::ops::Range<i64>) -> impl Strategy<Value = Event> {
    (1..=USERS, minutes, 0u32..4, 0u32..3, 1.0f64..500.0)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn rows_known_at_or_after_the_as_of_date_never_change_features(
        day in 0i64..365,
        past in prop::collection::vec(event(-100 * 1440..0), 1..40),
        // rows stamped at or after T, some filed under an earlier partition
        future in prop::collection::vec((event(0..40 * 1440), 0i64..3), 1..20),
        // rows whose settlement (event_time + 3 days) is at or after T
        unsettled in prop::collection::vec(event(-3 * 1440 + 1..0), 0..5),
    ) {
        let t = as_of(day);
        let past: Vec<(Event, i64)> = past.into_iter().map(|e| (e, 0)).collect();
        let without = features_as_of(t, &past);
        prop_assert!(!without.is_empty());

        let mut with_future = past.clone();
        with_future.extend(future);
        prop_assert_eq!(&features_as_of(t, &with_future), &without);

        // an unsettled row may count where rows count by event time, never in `settled`
        let mut with_unsettled = past.clone();
        with_unsettled.extend(unsettled.into_iter().map(|e| (e, 0)));
        let settled = |rows: &[(String, u64, f32)]| -> Vec<(String, u64, f32)> {
            rows.iter().filter(|r| r.0.starts_with("settled")).cloned().collect()
        };
        prop_assert_eq!(settled(&features_as_of(t, &with_unsettled)), settled(&without));
    }
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
        ((1, -60, 0, 0, 10.0), 0),
        ((1, -3 * 1440, 1, 0, 30.0), 0),
        ((1, -40 * 1440, 1, 0, 1000.0), 0),
        ((2, -45 * 1440, 1, 0, 7.0), 0),
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
    let base = epoch_micros(t);
    let day_of = |minutes: i64| (base + minutes * MICROS_PER_MINUTE).div_euclid(86_400_000_000);
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
        let past: Vec<(Event, i64)> = events.iter().map(|e| (*e, 0)).collect();
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
