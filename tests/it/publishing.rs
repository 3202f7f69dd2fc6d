//! The publish protocol: create-only manifests, checksums, readers never see partial tables.

use chrono::NaiveDate;
use redflower::policy::LimitPolicy;
use redflower::publish::{self, LimitRow, PublishError};
use redflower::store::Store;
use redflower::store::faults::FaultPlan;
use std::sync::atomic::Ordering;

pub fn rows(n: u64, pd: f64) -> Vec<LimitRow> {
    let policy = LimitPolicy::builtin();
    (1..=n)
        .map(|user_id| LimitRow {
            user_id,
            pd,
            decision: policy.decide(pd, &Default::default()),
            suggestions: Vec::new(),
        })
        .collect()
}

#[tokio::test]
async fn a_second_writer_of_the_same_version_fails_and_changes_nothing() {
    let store = Store::open("memory://two-writers").unwrap();
    let date = NaiveDate::from_ymd_opt(2026, 11, 1).unwrap();
    let winner = publish::publish_version(&store, 1, &rows(10, 0.01), date, "m1", "p1")
        .await
        .unwrap();
    let loser = publish::publish_version(&store, 1, &rows(20, 0.3), date, "m2", "p1").await;
    assert!(
        matches!(loser, Err(PublishError::Conflict { version: 1 })),
        "{loser:?}"
    );
    let latest = publish::latest(&store).await.unwrap().unwrap();
    assert_eq!(latest, winner);
    let table = publish::read_table(&store, &latest).await.unwrap();
    assert_eq!(table.iter().map(|b| b.num_rows()).sum::<usize>(), 10);
}

#[tokio::test]
async fn a_tampered_data_file_is_refused_by_readers() {
    let store = Store::open("memory://tampered").unwrap();
    let date = NaiveDate::from_ymd_opt(2026, 11, 1).unwrap();
    let manifest = publish::publish(&store, &rows(5, 0.01), date, "m", "p")
        .await
        .unwrap();
    store
        .put(
            &manifest.files[0].path,
            bytes::Bytes::from_static(b"not parquet"),
        )
        .await
        .unwrap();
    let err = publish::read_table(&store, &manifest).await.unwrap_err();
    assert!(matches!(err, PublishError::Checksum { .. }), "{err}");
}

#[tokio::test]
async fn versions_increase_and_readers_take_the_newest() {
    let store = Store::open("memory://versions").unwrap();
    let date = NaiveDate::from_ymd_opt(2026, 11, 1).unwrap();
    for (n, expected) in [(3, 1), (4, 2), (5, 3)] {
        let manifest = publish::publish(&store, &rows(n, 0.01), date, "m", "p")
            .await
            .unwrap();
        assert_eq!(manifest.version, expected);
    }
    let latest = publish::latest(&store).await.unwrap().unwrap();
    assert_eq!((latest.version, latest.row_count), (3, 5));
}

fn limits_of(batches: &[datafusion::arrow::array::RecordBatch]) -> Vec<f64> {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::Float64Type;
    batches
        .iter()
        .flat_map(|b| {
            b.column_by_name("credit_limit")
                .unwrap()
                .as_primitive::<Float64Type>()
                .values()
                .to_vec()
        })
        .collect()
}

#[tokio::test]
async fn gates_refuse_a_shrunken_or_shifted_table_until_forced() {
    let store = Store::open("memory://gates").unwrap();
    let date = NaiveDate::from_ymd_opt(2026, 11, 1).unwrap();
    let config = redflower::config::Pipelines::builtin().nightly.publish;
    publish::publish_gated(
        &store,
        &rows(1000, 0.01),
        &publication(date),
        &config,
        false,
    )
    .await
    .unwrap();
    // a tenth of the users missing
    let err = publish::publish_gated(&store, &rows(900, 0.01), &publication(date), &config, false)
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(err, PublishError::GateRefused { previous: 1, .. }),
        "{err}"
    );
    assert!(
        message.contains("row count 900 is 10.0% below version 1's 1000")
            && message.contains("--force"),
        "{message}"
    );
    // everyone riskier: the mean limit falls far more than 15%
    let err = publish::publish_gated(&store, &rows(1000, 0.2), &publication(date), &config, false)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("mean limit"), "{err}");
    assert_eq!(publish::latest(&store).await.unwrap().unwrap().version, 1);

    let forced =
        publish::publish_gated(&store, &rows(900, 0.01), &publication(date), &config, true)
            .await
            .unwrap();
    assert_eq!(forced.version, 2);
    assert_eq!(forced.forced_past.len(), 1, "{:?}", forced.forced_past);
    let read_back = publish::latest(&store).await.unwrap().unwrap();
    assert_eq!(read_back.forced_past, forced.forced_past);
}

#[tokio::test]
async fn a_rollback_commits_a_new_version_with_the_old_table() {
    let store = Store::open("memory://rollback").unwrap();
    let date = NaiveDate::from_ymd_opt(2026, 11, 1).unwrap();
    let first = publish::publish(&store, &rows(50, 0.01), date, "m1", "p")
        .await
        .unwrap();
    publish::publish(&store, &rows(60, 0.05), date, "m2", "p")
        .await
        .unwrap();
    let before = publish::read_table(&store, &first).await.unwrap();
    let rolled = publish::rollback(&store, 1).await.unwrap();
    assert_eq!((rolled.version, rolled.rollback_of), (3, Some(1)));
    let latest = publish::latest(&store).await.unwrap().unwrap();
    assert_eq!(latest.model_version, "m1");
    assert_eq!(publish::read_table(&store, &latest).await.unwrap(), before);
    let err = publish::rollback(&store, 9).await.unwrap_err().to_string();
    assert!(
        err.contains("no published version 9") && err.contains("latest is 3"),
        "{err}"
    );
}

#[tokio::test]
async fn retention_keeps_the_newest_versions_and_the_files_they_need() {
    let store = Store::open("memory://retention").unwrap();
    let date = NaiveDate::from_ymd_opt(2026, 11, 1).unwrap();
    for n in 1..=5 {
        publish::publish(&store, &rows(10 + n, 0.01), date, "m", "p")
            .await
            .unwrap();
    }
    // version 6 points at version 2's files: they must survive retention of 2 versions
    publish::rollback(&store, 2).await.unwrap();
    // every version is younger than a day: kept by age whatever their number
    let by_age = publish::Keep {
        versions: 2,
        days: 1,
    };
    let report = publish::retain(&store, by_age).await.unwrap();
    assert_eq!(report, publish::Retention::default());
    assert_eq!(publish::versions(&store).await.unwrap().len(), 6);
    let keep = publish::Keep {
        versions: 2,
        days: 0,
    };
    let report = publish::retain(&store, keep).await.unwrap();
    assert_eq!(report.manifests_deleted, 4);
    assert_eq!(report.data_files_deleted, 3, "versions 1, 3 and 4");
    let kept: Vec<u64> = publish::versions(&store)
        .await
        .unwrap()
        .iter()
        .map(|m| m.version)
        .collect();
    assert_eq!(kept, vec![5, 6]);
    for manifest in publish::versions(&store).await.unwrap() {
        publish::read_table(&store, &manifest).await.unwrap();
    }
}

#[tokio::test]
async fn a_reader_during_publishing_sees_whole_tables_only() {
    let store = Store::open("memory://reader-during-publish").unwrap();
    let date = NaiveDate::from_ymd_opt(2026, 11, 1).unwrap();
    // version v: every user has the same limit, different from every other version's
    let pds = [0.005, 0.02, 0.04, 0.07, 0.12, 0.005];
    publish::publish(&store, &rows(2000, pds[0]), date, "m", "p")
        .await
        .unwrap();
    let reader_store = store.clone();
    let reader = tokio::spawn(async move {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let manifest = publish::latest(&reader_store).await.unwrap().unwrap();
            let table = publish::read_table(&reader_store, &manifest).await.unwrap();
            let limits = limits_of(&table);
            assert_eq!(limits.len() as u64, manifest.row_count);
            assert!(
                limits.iter().all(|l| *l == limits[0]),
                "version {} mixes tables",
                manifest.version
            );
            seen.insert(manifest.version);
            tokio::task::yield_now().await;
        }
        seen
    });
    for pd in &pds[1..] {
        publish::publish(&store, &rows(2000, *pd), date, "m", "p")
            .await
            .unwrap();
        tokio::task::yield_now().await;
    }
    let seen = reader.await.unwrap();
    assert!(!seen.is_empty());
    assert_eq!(publish::latest(&store).await.unwrap().unwrap().version, 6);
}

fn publication(as_of: NaiveDate) -> publish::Publication<'static> {
    publish::Publication {
        as_of,
        model_version: "m",
        policy_version: "p",
        run_id: None,
        lineage: None,
        fence: None,
    }
}

#[tokio::test]
async fn a_commit_whose_response_was_lost_is_not_taken_for_another_writers() {
    let store = Store::open("memory://lost-commit-response").unwrap();
    let (lossy, counts) = store.with_faults(FaultPlan::LoseCreateResponses);
    let date = NaiveDate::from_ymd_opt(2026, 11, 1).unwrap();
    let manifest = publish::publish(&lossy, &rows(10, 0.01), date, "m", "p")
        .await
        .expect("the retried commit finds its own manifest");
    assert!(counts.injected.load(Ordering::Relaxed) > 0);
    assert_eq!(publish::latest(&store).await.unwrap(), Some(manifest));
    // another writer of the same version still loses
    let second = publish::publish_version(&lossy, 1, &rows(10, 0.01), date, "m2", "p").await;
    assert!(
        matches!(second, Err(PublishError::Conflict { version: 1 })),
        "{second:?}"
    );
}

#[tokio::test]
async fn a_table_is_decoded_from_the_bytes_its_checksum_checked() {
    let store = Store::open("memory://damaged-rereads").unwrap();
    let date = NaiveDate::from_ymd_opt(2026, 11, 1).unwrap();
    let published = rows(500, 0.02);
    let manifest = publish::publish(&store, &published, date, "m", "p")
        .await
        .unwrap();
    // every read of a file after its first comes back with a flipped byte
    let (damaging, _) = store.with_faults(FaultPlan::DamageRereads);
    let batches = publish::read_table(&damaging, &manifest)
        .await
        .expect("the checked bytes are the decoded bytes");
    let read: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(read, published.len());
    // a damaged download is refused by its checksum, never decoded
    let error = publish::read_table(&damaging, &manifest).await.unwrap_err();
    assert!(matches!(error, PublishError::Checksum { .. }), "{error}");
}
