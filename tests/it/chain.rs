//! synth -> nightly end to end on small worlds.

use redflower::config::Pipelines;
use redflower::model::DeviceKind;
use redflower::nightly;
use redflower::publish;
use redflower::store::Store;

use crate::support::{limits_by_user, published, run_date, synth_world, write_text_user_ids};

#[tokio::test]
async fn nightly_publishes_one_row_per_user_within_caps_and_reruns_identically() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().to_str().unwrap()).unwrap();
    let users = 6_000;
    synth_world(&store, users, 11).await;
    let pipelines = Pipelines::builtin();

    let first = nightly::run(&store, run_date(), &pipelines, DeviceKind::Cpu)
        .await
        .unwrap();
    let (version, table) = published(&store).await;
    assert_eq!(version, 1);
    let limits = limits_by_user(&table);
    // every synthetic user signed up before the run date, so every one has exactly one row
    assert_eq!(limits.len() as u64, users);
    assert_eq!(first.manifest.row_count, users);
    assert!((1..=users).all(|u| limits.contains_key(&u)));
    let capped = limits.values().filter(|(_, cap)| cap.is_some()).count();
    assert!(
        capped > 0,
        "the world has users who asked for a lower limit"
    );
    for (user, (limit, cap)) in &limits {
        if let Some(cap) = cap {
            assert!(
                limit <= cap,
                "user {user}: limit {limit} above their cap {cap}"
            );
        }
    }

    assert!(
        first.with_scenario_limits > 0,
        "furniture and education buyers with low PD get scenario limits"
    );
    let oracle = first.oracle_auc.expect("synthetic roots have truth");
    assert!(first.holdout.auc > 0.6, "holdout AUC {}", first.holdout.auc);
    assert!(
        first.holdout.auc < oracle,
        "AUC {} not below oracle {oracle}",
        first.holdout.auc
    );
    let visible = first
        .visible_oracle_auc
        .expect("worlds written now carry visible_pd");
    assert!(
        (0.5..1.0).contains(&visible),
        "visible oracle AUC {visible}"
    );
    assert!(
        first.sources.iter().any(|s| s.quarantined > 0),
        "synth writes a few bad rows"
    );
    assert!(
        store.list("staging").await.unwrap().is_empty(),
        "a finished run leaves no staged rows behind"
    );

    let second = nightly::run(&store, run_date(), &pipelines, DeviceKind::Cpu)
        .await
        .unwrap();
    let (version, rerun) = published(&store).await;
    assert_eq!(version, 2);
    assert!(first.trained_tonight && !second.trained_tonight);
    assert_eq!(
        second.model_version, first.model_version,
        "the champion trained on the first night scores the second"
    );
    assert_eq!(
        rerun, table,
        "a rerun of the same date publishes an identical table"
    );
}

#[tokio::test]
async fn a_wrong_column_type_is_named_and_the_published_table_stays() {
    let store = Store::open("memory://wrong-type").unwrap();
    synth_world(&store, 3_000, 5).await;
    let pipelines = Pipelines::builtin();
    nightly::run(&store, run_date(), &pipelines, DeviceKind::Cpu)
        .await
        .unwrap();
    let (_, before) = published(&store).await;

    // an upstream starts sending user ids as text
    let bad_file = write_text_user_ids(&store).await;

    let err = nightly::run(&store, run_date(), &pipelines, DeviceKind::Cpu)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(bad_file), "error should name the file: {err}");
    assert!(
        err.contains("'user_id'") && err.contains("Utf8") && err.contains("UInt64"),
        "{err}"
    );

    let (version, after) = published(&store).await;
    assert_eq!(version, 1, "a failed run publishes nothing");
    assert_eq!(after, before);
    assert!(publish::latest(&store).await.unwrap().is_some());
}
