//! The publish protocol: create-only manifests, checksums, readers never see partial tables.

use chrono::NaiveDate;
use redflower::limits::LimitPolicy;
use redflower::publish::{self, LimitRow, PublishError};
use redflower::store::Store;

fn rows(n: u64, pd: f64) -> Vec<LimitRow> {
    let policy = LimitPolicy::builtin();
    (1..=n)
        .map(|user_id| LimitRow {
            user_id,
            pd,
            decision: policy.decide(pd, &[], None),
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
