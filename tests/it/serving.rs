//! The online read path: `serve` answers under concurrent load while a new table is
//! published and switches to it without a failed request; errors are JSON with the right
//! status; the Redis sink loads versioned keys and switches `current` last.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use datafusion::arrow::array::{Float64Array, RecordBatch};
use redflower::publish;
use redflower::serve::client::{ClientError, LimitsClient};
use redflower::serve::{self, ServeConfig, Snapshot};
use redflower::sink::{self, Redis, RedisTarget, Reply};
use redflower::store::Store;

use crate::publishing::rows;

fn date() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, 1).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_keeps_answering_while_a_new_table_is_published_and_switches_to_it() {
    let store = Store::open("memory://serve-switch").unwrap();
    let users = 5_000u64;
    let old = rows(users, 0.01);
    let new = rows(users, 0.06);
    let expected: HashMap<u64, [f64; 2]> = old
        .iter()
        .zip(&new)
        .map(|(a, b)| {
            (
                a.user_id,
                [a.decision.credit_limit, b.decision.credit_limit],
            )
        })
        .collect();
    assert!(
        expected.values().any(|[a, b]| a != b),
        "the two tables must differ for the switch to be visible"
    );
    publish::publish(&store, &old, date(), "m1", "p1")
        .await
        .unwrap();

    let server = serve::start(
        store.clone(),
        ServeConfig {
            addr: "127.0.0.1:0".parse().unwrap(),
            token: Some("s3cret".into()),
            poll: Duration::from_millis(20),
        },
    )
    .await
    .unwrap();
    let base = format!("http://{}", server.addr());
    assert_eq!(server.version(), Some(1));

    // errors: JSON bodies with the status a caller can act on
    let client = LimitsClient::new(&base, Some("s3cret".into())).unwrap();
    assert!(client.limit(users + 1).await.unwrap().is_none());
    let (status, body) = client
        .get(&format!("/v1/limits/{}", users + 1))
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 404);
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("not in limit table version 1")
    );
    let (status, _) = client.get("/v1/limits/abc").await.unwrap();
    assert_eq!(status.as_u16(), 400);
    for path in ["/v1/limits/1/2", "/v1/limits/", "/v1/other"] {
        let (status, _) = client.get(path).await.unwrap();
        assert_eq!(status.as_u16(), 404, "{path}");
    }
    let intruder = LimitsClient::new(&base, Some("guess".into())).unwrap();
    assert!(matches!(
        intruder.limit(1).await,
        Err(ClientError::Status { status, .. }) if status.as_u16() == 401
    ));
    let anonymous = LimitsClient::new(&base, None).unwrap();
    let (status, body) = anonymous.get("/healthz").await.unwrap();
    assert_eq!(status.as_u16(), 200, "{body:?}");
    let answer = client.limit(42).await.unwrap().unwrap();
    assert_eq!(answer.user_id, 42);
    assert_eq!(answer.credit_limit, expected[&42][0]);
    assert_eq!(answer.versions.table, 1);
    assert_eq!(answer.versions.model, "m1");

    // readers hammer the server while version 2 is committed
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for reader in 0..8u64 {
        let (base, stop, expected) = (base.clone(), stop.clone(), expected.clone());
        readers.push(tokio::spawn(async move {
            let client = LimitsClient::new(&base, Some("s3cret".into())).unwrap();
            let (mut answered, mut failed, mut newest_seen) = (0u64, Vec::new(), 0u64);
            let mut user = 1 + reader * 611;
            while !stop.load(Ordering::Relaxed) {
                user = user % users + 1;
                match client.limit(user).await {
                    Ok(Some(answer)) => {
                        let version = answer.versions.table;
                        assert!(
                            version >= newest_seen,
                            "went back from {newest_seen} to {version}"
                        );
                        newest_seen = version;
                        // a whole table: the limit is the one of the version it claims
                        assert_eq!(answer.credit_limit, expected[&user][version as usize - 1]);
                        answered += 1;
                    }
                    Ok(None) => failed.push(format!("user {user}: 404")),
                    Err(e) => failed.push(e.to_string()),
                }
                user += 7;
            }
            (answered, failed, newest_seen)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    publish::publish(&store, &new, date(), "m2", "p1")
        .await
        .unwrap();
    let switched = Instant::now();
    while server.version() != Some(2) {
        assert!(
            switched.elapsed() < Duration::from_secs(20),
            "never switched to version 2"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for reader in readers {
        let (answered, failed, newest_seen) = reader.await.unwrap();
        assert!(failed.is_empty(), "failed requests: {failed:?}");
        assert_eq!(newest_seen, 2, "a reader never saw the new table");
        total += answered;
    }
    assert!(total > 1_000, "only {total} requests answered");

    let (_, metrics) = anonymous.get("/metrics").await.unwrap();
    let metrics = String::from_utf8(metrics.to_vec()).unwrap();
    assert!(
        metrics.contains("redflower_serve_table_version 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("redflower_serve_requests_total{status=\"401\"} 1"),
        "{metrics}"
    );
    let stats = server.stop().await.unwrap();
    assert_eq!(stats.reloads, 1);
    assert_eq!(stats.reload_failures, 0);
    assert!(stats.answered >= total);
}

/// A redis-server on a free loopback port, stopped on drop.
struct RedisServer {
    child: Child,
    port: u16,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_redis() -> Option<RedisServer> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "redis-server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(RedisServer { child, port })
}

async fn get(redis: &mut Redis, key: &str) -> Option<Vec<u8>> {
    match redis.call(&[b"GET", key.as_bytes()]).await.unwrap() {
        Reply::Bulk(value) => value,
        other => panic!("GET {key}: {other:?}"),
    }
}

#[tokio::test]
async fn the_redis_sink_loads_versioned_keys_switches_current_and_keeps_two_versions() {
    let Some(server) = start_redis() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have redis-server (see .ci/run)"
        );
        eprintln!("skipped: redis-server is not on PATH (Debian package redis-server)");
        return;
    };
    let target = RedisTarget::parse(&format!("redis://127.0.0.1:{}", server.port), "rf").unwrap();
    let store = Store::open("memory://redis-sink").unwrap();
    let mut redis = Redis::connect(&target).await.unwrap();
    for (night, pd) in [0.01, 0.03, 0.05].into_iter().enumerate() {
        let manifest = publish::publish(&store, &rows(3_000, pd), date(), "m", "p")
            .await
            .unwrap();
        let snapshot = Snapshot::load(&store, manifest).await.unwrap();
        let load = sink::load(&target, &snapshot, 2).await.unwrap();
        let version = night as u64 + 1;
        assert_eq!((load.version, load.keys), (version, 3_000));
        assert_eq!(
            get(&mut redis, "rf:current").await.unwrap(),
            version.to_string().as_bytes()
        );
        let stored = get(&mut redis, &target.key(version, 42)).await.unwrap();
        let stored: serve::LimitAnswer = serde_json::from_slice(&stored).unwrap();
        assert_eq!(
            stored,
            snapshot.answer(42).unwrap(),
            "Redis and serve answer alike"
        );
        if version == 3 {
            assert_eq!(load.versions_deleted, vec![1]);
            assert!(
                get(&mut redis, &target.key(1, 42)).await.is_none(),
                "version 1 was kept"
            );
            assert!(
                get(&mut redis, &target.key(2, 42)).await.is_some(),
                "version 2 was deleted"
            );
        }
    }
}

/// The keys of every object in `value`, checked against the schema `name` in the OpenAPI
/// file: the document clients code against must match what the server sends.
fn check_against_openapi(value: &serde_json::Value, name: &str, spec: &serde_json::Value) {
    let schema = &spec["components"]["schemas"][name];
    let properties = schema["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("docs/openapi.json has no schema {name}"));
    let object = value.as_object().unwrap();
    let sent: std::collections::BTreeSet<&String> = object.keys().collect();
    let documented: std::collections::BTreeSet<&String> = properties.keys().collect();
    assert_eq!(sent, documented, "{name}: fields sent vs documented");
    for (field, property) in properties {
        let reference = property["$ref"]
            .as_str()
            .or_else(|| property["items"]["$ref"].as_str());
        if let Some(reference) = reference {
            let nested = reference.rsplit('/').next().unwrap();
            let values: Vec<&serde_json::Value> = match &object[field] {
                serde_json::Value::Array(items) => items.iter().collect(),
                other => vec![other],
            };
            for nested_value in values {
                check_against_openapi(nested_value, nested, spec);
            }
        }
    }
}

#[tokio::test]
async fn answers_match_the_openapi_document() {
    let spec: serde_json::Value =
        serde_json::from_str(include_str!("../../docs/openapi.json")).unwrap();
    let store = Store::open("memory://openapi").unwrap();
    let mut table = rows(50, 0.01);
    table[0]
        .decision
        .scenarios
        .push(redflower::limits::ScenarioLimit {
            category: "furniture".into(),
            amount: 2_000.0,
            valid_days: 30,
        });
    table[0].suggestions = "language=+800".into();
    let manifest = publish::publish(&store, &table, date(), "m", "p")
        .await
        .unwrap();
    let snapshot = Snapshot::load(&store, manifest).await.unwrap();
    let answer = serde_json::to_value(snapshot.answer(1).unwrap()).unwrap();
    // the server's zero-copy path writes the same bytes as the documented answer
    for user in [1, 2, 50] {
        assert_eq!(
            snapshot.answer_json(user).unwrap(),
            serde_json::to_vec(&snapshot.answer(user).unwrap()).unwrap()
        );
    }
    assert!(snapshot.answer_json(51).is_none());
    assert_eq!(answer["scenario_limits"][0]["valid_until"], "2026-12-01");
    assert_eq!(answer["suggestions"][0]["adds"], 800.0);
    check_against_openapi(&answer, "LimitAnswer", &spec);
    assert!(spec["paths"]["/v1/limits/{user_id}"]["get"]["responses"]["404"].is_object());

    // JSON cannot carry a NaN: publishing refuses one, naming user and field, and a table
    // written by another tool with one is refused at load
    let store = Store::open("memory://nan-table").unwrap();
    let mut table = rows(3, 0.01);
    table[1].pd = f64::NAN;
    let error = publish::publish(&store, &table, date(), "m", "p")
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("pd of user 2 is NaN"), "{error}");
    assert!(publish::latest(&store).await.unwrap().is_none());

    let manifest = publish::publish(&store, &rows(3, 0.01), date(), "m", "p")
        .await
        .unwrap();
    let mut batch = publish::read_table(&store, &manifest)
        .await
        .unwrap()
        .remove(0);
    let pd = batch.schema().index_of("pd").unwrap();
    let mut columns = batch.columns().to_vec();
    columns[pd] = Arc::new(Float64Array::from(vec![0.01, f64::INFINITY, 0.01]));
    batch = RecordBatch::try_new(batch.schema(), columns).unwrap();
    let error = Snapshot::from_batches(manifest, &[batch])
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("pd of user 2 is inf"), "{error}");
}
