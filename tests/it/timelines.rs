//! Facts that change between nights, end to end: a statement whose days past due grow, a
//! certificate revoked after it earned a boost, and the suggestions' what-if against a real
//! upload run through the feature pipeline.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{Duration, NaiveDate};
use datafusion::arrow::array::{
    ArrayRef, AsArray, BooleanArray, Date32Array, Float32Array, Float64Array, Int32Array,
    RecordBatch, StringArray, TimestampMicrosecondArray, UInt32Array, UInt64Array,
};
use datafusion::arrow::datatypes::UInt32Type;
use redflower::config::Pipelines;
use redflower::dataset::{self, Csr};
use redflower::features::{self, FeatureDictionary};
use redflower::model::DeviceKind;
use redflower::policy::HeldCertificate;
use redflower::schema::{self, TableSchema};
use redflower::sources;
use redflower::store::{Store, layout};
use redflower::{nightly, suggestions};

use crate::support::{published, run_date, str_column, synth_world, u64_column};

fn micros(day: NaiveDate, hour: u32) -> i64 {
    day.and_hms_opt(hour, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp_micros()
}

fn epoch_day(day: NaiveDate) -> i32 {
    (day - NaiveDate::from_ymd_opt(1970, 1, 1).unwrap()).num_days() as i32
}

fn utc(value: Option<i64>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from(vec![value]).with_timezone("UTC"))
}

/// Lands `batch` under `raw/<source>/dt=<day>/` as an upstream's late file.
async fn land(store: &Store, table: &TableSchema, day: NaiveDate, name: &str, batch: RecordBatch) {
    let path = format!("{}/dt={day}/part-{name}.parquet", layout::raw(&table.name));
    store
        .write_parquet(&path, batch.schema(), &[batch])
        .await
        .unwrap();
}

/// One version of a statement of `user`, due `due`, as learned at 06:00 on `known`.
fn statement(user: u64, due: NaiveDate, days_past_due: i32, known: NaiveDate) -> RecordBatch {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from(vec![user])),
        Arc::new(Date32Array::from(vec![epoch_day(due) - 20])),
        Arc::new(Date32Array::from(vec![epoch_day(due)])),
        Arc::new(Float64Array::from(vec![250.0])),
        Arc::new(Float64Array::from(vec![0.0])),
        Arc::new(Int32Array::from(vec![days_past_due])),
        utc(Some(micros(known, 6))),
    ];
    RecordBatch::try_new(schema::REPAYMENTS.raw_arrow(), columns).unwrap()
}

/// A user's labels as of the training date of the night of `run`.
async fn label_of(store: &Store, run: NaiveDate, user: u64) -> Option<bool> {
    let pipelines = Pipelines::builtin();
    let ctx = redflower::engine::session(&pipelines.nightly.engine).unwrap();
    sources::register(&ctx, store, run).await.unwrap();
    let as_of = dataset::training_as_of(run, &pipelines.nightly.label);
    let labels = dataset::labels(&ctx, as_of, &pipelines.nightly.label)
        .await
        .unwrap();
    sources::drop_staging(store, &ctx).await.unwrap();
    labels.get(user)
}

#[tokio::test]
async fn a_statement_going_from_0_to_31_days_past_due_over_three_nights_flips_its_label() {
    let store = Store::open("memory://timelines-dpd").unwrap();
    synth_world(&store, 1_500, 31).await;
    let pipelines = Pipelines::builtin();
    // a user of the upstream's own, with one statement due a month before the first night;
    // the upstream recomputes days past due and sends each night's value the day before
    let user = 7_000_001;
    let due = run_date() - Duration::days(31);
    let nights = [
        run_date(),
        run_date() + Duration::days(1),
        run_date() + Duration::days(2),
    ];
    for (night, dpd) in nights.iter().zip([0, 12, 31]) {
        let known = *night - Duration::days(1);
        land(
            &store,
            &schema::REPAYMENTS,
            known,
            &format!("dpd-{dpd}"),
            statement(user, due, dpd, known),
        )
        .await;
        let report = nightly::run(&store, *night, &pipelines, DeviceKind::Cpu)
            .await
            .unwrap_or_else(|e| panic!("the night of {night} stopped: {e}"));
        let repayments = report
            .sources
            .iter()
            .find(|s| s.source == "repayments")
            .unwrap();
        let kept = store
            .read_parquet_dir(&format!("quarantine/repayments/run={night}"))
            .await
            .unwrap();
        let mine = kept
            .iter()
            .map(|b| {
                let users = u64_column(b, "user_id");
                (0..b.num_rows())
                    .filter(|&r| users.value(r) == user)
                    .count()
            })
            .sum::<usize>();
        assert_eq!(
            mine, 0,
            "night {night}: a new version is not a duplicate: {repayments:?}"
        );
        let label = label_of(&store, *night, user).await;
        assert_eq!(label, Some(dpd >= 30), "night {night}: {dpd} days past due");
    }
}

/// The certificate behind a boost: (user, certificate name) of the first boosted user without
/// a cap of their own, from a published table's reasons.
fn boosted(table: &[RecordBatch]) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    for batch in table {
        let users = u64_column(batch, "user_id");
        let reasons = str_column(batch, "reasons");
        for row in 0..batch.num_rows() {
            let codes: Vec<&str> = reasons.value(row).split(';').collect();
            if codes.contains(&"capped_by_user_request") {
                continue;
            }
            for code in codes {
                if let Some(rest) = code.strip_prefix("certificate_boost:") {
                    let name = rest.split_once(':').unwrap().1;
                    out.push((users.value(row), name.to_string()));
                }
            }
        }
    }
    out
}

/// The published row of `user`: (reasons, suggestions).
fn row_of(table: &[RecordBatch], user: u64) -> (String, String) {
    for batch in table {
        let users = u64_column(batch, "user_id");
        for row in 0..batch.num_rows() {
            if users.value(row) == user {
                return (
                    str_column(batch, "reasons").value(row).to_string(),
                    str_column(batch, "suggestions").value(row).to_string(),
                );
            }
        }
    }
    panic!("user {user} is not published");
}

/// The newest verified version of `user`'s certificate named `name`, from the clean view.
async fn held_version(store: &Store, run: NaiveDate, user: u64, name: &str) -> RecordBatch {
    let ctx = redflower::engine::session(&Pipelines::builtin().nightly.engine).unwrap();
    sources::register(&ctx, store, run).await.unwrap();
    let columns: Vec<String> = schema::CERTIFICATES
        .fields
        .iter()
        .map(|f| format!("c.{}", f.name))
        .collect();
    let sql = format!(
        "SELECT {} FROM certificates c JOIN certificate_types t ON c.cert_type_id = t.cert_type_id \
         WHERE c.user_id = {user} AND t.name = '{name}' AND c.verified_at IS NOT NULL \
         AND c.revoked_at IS NULL AND c.superseded_at IS NULL LIMIT 1",
        columns.join(", ")
    );
    let batches = ctx.sql(&sql).await.unwrap().collect().await.unwrap();
    sources::drop_staging(store, &ctx).await.unwrap();
    let batch = batches.into_iter().find(|b| b.num_rows() == 1).unwrap();
    RecordBatch::try_new(schema::CERTIFICATES.raw_arrow(), batch.columns().to_vec()).unwrap()
}

#[tokio::test]
async fn a_revoked_certificate_loses_its_boost_that_night_with_a_reason_and_suggestions_follow() {
    let store = Store::open("memory://timelines-revoked").unwrap();
    synth_world(&store, 3_000, 17).await;
    let pipelines = Pipelines::builtin();
    nightly::run(&store, run_date(), &pipelines, DeviceKind::Cpu)
        .await
        .unwrap();
    let (_, first) = published(&store).await;
    let (user, name) = boosted(&first)
        .into_iter()
        .next()
        .expect("someone is boosted");
    let (reasons, suggested) = row_of(&first, user);
    let family = reasons
        .split(';')
        .find_map(|c| {
            c.strip_prefix("certificate_boost:")?
                .strip_suffix(&format!(":{name}"))
        })
        .unwrap()
        .to_string();

    // the issuer revokes it during the first night's day; the next night learns it
    let held = held_version(&store, run_date(), user, &name).await;
    let revoked_at = micros(run_date(), 10);
    let mut columns = held.columns().to_vec();
    let index = |column: &str| held.schema().index_of(column).unwrap();
    columns[index("revoked_at")] = utc(Some(revoked_at));
    columns[index("revoked_reason")] = Arc::new(StringArray::from(vec!["forged"]));
    columns[index("known_at")] = utc(Some(revoked_at));
    let revocation = RecordBatch::try_new(held.schema(), columns).unwrap();
    land(
        &store,
        &schema::CERTIFICATES,
        run_date(),
        "revoked",
        revocation,
    )
    .await;

    let night = run_date() + Duration::days(1);
    nightly::run(&store, night, &pipelines, DeviceKind::Cpu)
        .await
        .unwrap();
    let (_, second) = published(&store).await;
    let (reasons_after, suggested_after) = row_of(&second, user);
    let codes: Vec<&str> = reasons_after.split(';').collect();
    assert!(
        codes.contains(&format!("certificate_revoked:{name}").as_str()),
        "{reasons_after}"
    );
    assert!(
        !codes.contains(&format!("certificate_boost:{family}:{name}").as_str()),
        "{reasons_after}"
    );
    // the user no longer holds it, so their suggestions are worked out without it; last
    // night's held type was never suggested to them
    assert_ne!(suggested, suggested_after, "{reasons} / {reasons_after}");
    let third = run_date() + Duration::days(2);
    nightly::run(&store, third, &pipelines, DeviceKind::Cpu)
        .await
        .unwrap();
    let (_, after) = published(&store).await;
    let (reasons_later, _) = row_of(&after, user);
    assert!(
        !reasons_later.contains("certificate_revoked"),
        "said once: {reasons_later}"
    );
}

/// Features of `users` as of the run date, by user, from what `store` holds now.
async fn features_of(
    store: &Store,
    dictionary: &mut FeatureDictionary,
) -> HashMap<u64, (Vec<u32>, Vec<f32>)> {
    let pipelines = Pipelines::builtin();
    let ctx = redflower::engine::session(&pipelines.nightly.engine).unwrap();
    sources::register(&ctx, store, run_date()).await.unwrap();
    let set = features::build(&ctx, store, &pipelines.features, dictionary, run_date())
        .await
        .unwrap();
    sources::drop_staging(store, &ctx).await.unwrap();
    let rows = Csr::from_features(&set);
    (0..rows.len())
        .map(|r| {
            let (ids, values) = rows.row(r);
            (rows.users[r], (ids.to_vec(), values.to_vec()))
        })
        .collect()
}

#[tokio::test]
async fn the_what_if_of_an_upload_equals_the_features_of_a_real_upload() {
    let store = Store::open("memory://timelines-what-if").unwrap();
    synth_world(&store, 2_000, 23).await;
    let mut dictionary = FeatureDictionary::default();
    let before = features_of(&store, &mut dictionary).await;

    // the most held verified type, and a user without any certificate
    let ctx = redflower::engine::session(&Pipelines::builtin().nightly.engine).unwrap();
    sources::register(&ctx, &store, run_date()).await.unwrap();
    let held = ctx
        .sql(
            "SELECT cert_type_id, COUNT(*) AS n FROM certificates WHERE verified_at IS NOT NULL \
             AND revoked_at IS NULL AND superseded_at IS NULL AND valid_until IS NULL \
             GROUP BY cert_type_id ORDER BY n DESC, cert_type_id LIMIT 1",
        )
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    sources::drop_staging(&store, &ctx).await.unwrap();
    let type_id = held[0].column(0).as_primitive::<UInt32Type>().value(0);
    let holders = ctx_users_with_certificates(&store).await;
    let user = (1..=2_000u64)
        .find(|u| !holders.contains(u) && before.contains_key(u))
        .unwrap();

    // what the suggestions expect ...
    let candidate = HeldCertificate {
        cert_type_id: type_id,
        name: "x".into(),
        family: "x".into(),
        tier: 3,
        confidence: 1.0,
    };
    let what_if = suggestions::what_ifs(
        &Pipelines::builtin().features,
        &dictionary,
        &[candidate],
        run_date(),
    )
    .await
    .unwrap()
    .remove(0);
    let (ids, values) = &before[&user];
    let expected = what_if.apply(ids, values);

    // ... and what the pipeline makes of the same upload, landed for real
    let day = run_date() - Duration::days(1);
    let at = utc(Some(micros(day, 12)));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from(vec![user])),
        Arc::new(StringArray::from(vec!["REAL-UPLOAD"])),
        Arc::new(UInt32Array::from(vec![type_id])),
        at.clone(),
        Arc::new(BooleanArray::from(vec![true])),
        at.clone(),
        utc(None),
        Arc::new(StringArray::from(vec![None::<&str>])),
        Arc::new(Date32Array::from(vec![None::<i32>])),
        Arc::new(Float32Array::from(vec![1.0f32])),
        at,
    ];
    let upload = RecordBatch::try_new(schema::CERTIFICATES.raw_arrow(), columns).unwrap();
    land(&store, &schema::CERTIFICATES, day, "real-upload", upload).await;
    let after = features_of(&store, &mut dictionary.clone()).await;
    let name = |id: &u32| dictionary.name(*id).to_string();
    let (real_ids, real_values) = &after[&user];
    assert_eq!(
        expected.0.iter().map(name).collect::<Vec<_>>(),
        real_ids.iter().map(name).collect::<Vec<_>>()
    );
    assert_eq!(&expected.1, real_values);
    // and the upload changed more than the type's own indicator (the verified count too)
    let changed: Vec<String> = expected
        .0
        .iter()
        .zip(&expected.1)
        .filter(|(id, value)| {
            ids.binary_search(id)
                .map_or(true, |at| values[at] != **value)
        })
        .map(|(id, _)| name(id))
        .collect();
    assert!(changed.len() >= 2, "{changed:?}");
}

/// Users with any certificate row at all.
async fn ctx_users_with_certificates(store: &Store) -> Vec<u64> {
    let ctx = redflower::engine::session(&Pipelines::builtin().nightly.engine).unwrap();
    sources::register(&ctx, store, run_date()).await.unwrap();
    let batches = ctx
        .sql("SELECT DISTINCT user_id FROM certificates")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    sources::drop_staging(store, &ctx).await.unwrap();
    let mut users: Vec<u64> = batches
        .iter()
        .flat_map(|b| {
            let users = u64_column(b, "user_id");
            (0..users.len()).map(|r| users.value(r)).collect::<Vec<_>>()
        })
        .collect();
    users.sort_unstable();
    users
}
