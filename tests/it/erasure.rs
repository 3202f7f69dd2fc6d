//! Erasure: once a user's erasure is recorded, no read path answers for them (serve drops them
//! without a new version, rollbacks do not bring them back), the next night leaves them out of
//! everything it writes and rewrites what came before, and nothing under the root but the
//! erasure record (and the source systems' raw data) holds them.

use std::collections::BTreeSet;
use std::time::Duration;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{DataType, UInt64Type};
use redflower::audit::{self, Which};
use redflower::config::Pipelines;
use redflower::erasure;
use redflower::model::DeviceKind;
use redflower::nightly;
use redflower::publish::{self, Snapshot};
use redflower::serve::client::LimitsClient;
use redflower::serve::{self, ServeConfig};
use redflower::store::Store;

use crate::support::{run_date, synth_world};

/// Every object under the root, outside the source systems' `raw/`, `reference/` and
/// `truth/`, whose Parquet rows hold `user` in a `user_id` column.
async fn objects_holding(store: &Store, user: u64) -> Vec<String> {
    let mut found = Vec::new();
    for (path, _) in store.list("").await.unwrap() {
        let source_side = ["raw/", "reference/", "truth/"]
            .iter()
            .any(|p| path.starts_with(p));
        if source_side || !path.ends_with(".parquet") {
            continue;
        }
        for batch in store.read_parquet(&path).await.unwrap() {
            let Some(column) = batch.column_by_name("user_id") else {
                continue;
            };
            let holds = match column.data_type() {
                DataType::UInt64 => column
                    .as_primitive::<UInt64Type>()
                    .iter()
                    .any(|id| id == Some(user)),
                other => panic!("{path}: user_id is {other}"),
            };
            if holds {
                found.push(path.clone());
                break;
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn an_erased_user_is_gone_from_every_read_path_and_every_object_after_the_night() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().to_str().unwrap()).unwrap();
    synth_world(&store, 2_000, 23).await;
    let pipelines = Pipelines::builtin();
    let first_night = run_date() - chrono::Duration::days(1);
    nightly::run(&store, first_night, &pipelines, DeviceKind::Cpu)
        .await
        .unwrap();
    let users = Snapshot::latest(&store)
        .await
        .unwrap()
        .unwrap()
        .user_ids()
        .to_vec();
    let (user, other) = (users[7], users[8]);
    assert!(!objects_holding(&store, user).await.is_empty());

    let config = ServeConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        token: None,
        write_token: None,
        poll: Duration::from_millis(20),
        header_read_timeout: Duration::from_secs(10),
        max_connections: 100,
        max_table_age: None,
        tls: None,
        shard: None,
    };
    let server = serve::start(store.clone(), config).await.unwrap();
    let client = LimitsClient::new(&format!("http://{}", server.addr()), None).unwrap();
    assert!(client.limit(user).await.unwrap().is_some());

    let (_, new) = erasure::request(&store, user, "withdrew consent")
        .await
        .unwrap();
    assert!(new);
    // serve loads the same version again without them, at its next poll
    let mut answered = true;
    for _ in 0..500 {
        answered = client.limit(user).await.unwrap().is_some();
        if !answered {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!answered, "serve still answers for an erased user");
    assert!(client.limit(other).await.unwrap().is_some());
    server.stop().await.unwrap();

    // the night: nothing it writes holds the user, and what came before is rewritten
    let report = nightly::run(&store, run_date(), &pipelines, DeviceKind::Cpu)
        .await
        .unwrap();
    assert_eq!(report.erasures.users, BTreeSet::from([user]));
    // the run report counts erasures; only the erasure records name who
    let written = serde_json::to_value(&report.erasures).unwrap();
    assert!(
        written.get("users").is_none() && written["user_count"] == 1,
        "{written}"
    );
    assert!(report.erasures.rows_removed > 0 && report.erasures.published.manifests_rewritten == 1);
    assert_eq!(objects_holding(&store, user).await, Vec::<String>::new());
    assert!(erasure::pending(&store).await.unwrap().is_empty());
    let record = store
        .get(&redflower::store::layout::erasure(user))
        .await
        .unwrap();
    assert!(record.is_some_and(|r| String::from_utf8_lossy(&r).contains("withdrew consent")));

    // every version, and a rollback to the first, answers without them; others still explain
    let rolled = publish::rollback(&store, 1).await.unwrap();
    for which in [
        Which::Version(1),
        Which::Version(rolled.version),
        Which::Latest,
    ] {
        let err = audit::explain(&store, user, which).await.unwrap_err();
        assert!(err.to_string().contains("is not in version"), "{err}");
    }
    let explained = audit::explain(&store, other, Which::Version(1))
        .await
        .unwrap();
    assert_eq!(
        explained.replay_matches,
        Some(true),
        "rewritten records still check out"
    );
    let rollback = Snapshot::latest(&store).await.unwrap().unwrap();
    assert!(rollback.answer(user).is_none() && rollback.answer(other).is_some());
    // a second request for the same user changes nothing
    let (_, new) = erasure::request(&store, user, "again").await.unwrap();
    assert!(!new);
}
