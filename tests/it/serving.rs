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
use crate::support::suggestion;

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
            token: Some("s3cret".into()),
            poll: Duration::from_millis(20),
            max_connections: 10_000,
            ..test_config()
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

/// A redis-server of the test's own and a target on it with keys under `prefix`; None (the
/// test skips) only outside CI, where redis-server may be missing.
fn redis_for_test(prefix: &str) -> Option<(RedisServer, RedisTarget)> {
    let Some(server) = start_redis() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have redis-server (see .ci/run)"
        );
        eprintln!("skipped: redis-server is not on PATH (Debian package redis-server)");
        return None;
    };
    let target = RedisTarget::parse(&format!("redis://127.0.0.1:{}", server.port), prefix).unwrap();
    Some((server, target))
}

async fn get(redis: &mut Redis, key: &str) -> Option<Vec<u8>> {
    match redis.call(&[b"GET", key.as_bytes()]).await.unwrap() {
        Reply::Bulk(value) => value,
        other => panic!("GET {key}: {other:?}"),
    }
}

#[tokio::test]
async fn the_redis_sink_loads_versioned_keys_switches_current_and_keeps_two_versions() {
    let Some((_server, target)) = redis_for_test("rf") else {
        return;
    };
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
pub(crate) fn check_against_openapi(
    value: &serde_json::Value,
    name: &str,
    spec: &serde_json::Value,
) {
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
        .push(redflower::policy::ScenarioGrant {
            category: "furniture".into(),
            amount: 2_000.0,
            valid_days: 30,
        });
    table[0].suggestions = vec![suggestion("language", 800.0)];
    let manifest = publish::publish(&store, &table, date(), "m", "p")
        .await
        .unwrap();
    // rendered for the table's own date, while the scenario limit (until 2026-12-01) runs
    let snapshot = Snapshot::load_for(&store, manifest.clone(), date())
        .await
        .unwrap();
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

    // an ended scenario limit is not served: the day before its end it is, from its end on
    // the answers must be rendered again, and then it is gone
    let day = |d: u32| NaiveDate::from_ymd_opt(2026, 11, d).unwrap();
    assert!(!snapshot.stale_on(day(30)));
    let end = NaiveDate::from_ymd_opt(2026, 12, 1).unwrap();
    assert!(snapshot.stale_on(end));
    let last_day = Snapshot::load_for(&store, manifest.clone(), day(30))
        .await
        .unwrap();
    assert_eq!(last_day.answer(1).unwrap().scenario_limits.len(), 1);
    let ended = Snapshot::load_for(&store, manifest, end).await.unwrap();
    assert!(ended.answer(1).unwrap().scenario_limits.is_empty());
    assert!(
        !ended.stale_on(end + chrono::Days::new(365)),
        "nothing left to end"
    );
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

/// Reads from `stream` until `answers` complete HTTP responses (each with a Content-Length
/// body) have arrived, or the server closes.
async fn read_answers(stream: &mut tokio::net::TcpStream, answers: usize) -> Vec<String> {
    use tokio::io::AsyncReadExt;
    let mut received = Vec::new();
    let mut done = Vec::new();
    let mut chunk = [0u8; 4096];
    while done.len() < answers {
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk))
            .await
            .expect("an answer within 10 s")
            .unwrap();
        if read == 0 {
            break;
        }
        received.extend_from_slice(&chunk[..read]);
        // split off every complete response
        while let Some(head_end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&received[..head_end]).to_string();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if received.len() < head_end + 4 + length {
                break;
            }
            let body = String::from_utf8_lossy(&received[head_end + 4..head_end + 4 + length]);
            done.push(format!("{}\n{body}", head.lines().next().unwrap_or("")));
            received.drain(..head_end + 4 + length);
        }
    }
    done
}

// The server takes a short read as a drained socket (src/serve/socket.rs): bytes that come
// later, several requests in one packet and a client that half-closes must all still be
// answered.
#[tokio::test]
async fn serve_answers_split_pipelined_and_half_closed_requests() {
    use tokio::io::AsyncWriteExt;
    let (_, server) = small_server("serve-socket", test_config()).await;
    let connect = || tokio::net::TcpStream::connect(server.addr());

    // one request in three writes, pauses between them
    let mut stream = connect().await.unwrap();
    stream.set_nodelay(true).unwrap();
    for part in ["GET /v1/lim", "its/3 HTTP/1.1\r\nHo", "st: x\r\n\r\n"] {
        stream.write_all(part.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let answers = read_answers(&mut stream, 1).await;
    assert!(answers[0].starts_with("HTTP/1.1 200"), "{answers:?}");
    assert!(answers[0].contains("\"user_id\":3"), "{answers:?}");
    // the same connection keeps working after the pause
    tokio::time::sleep(Duration::from_millis(50)).await;
    stream
        .write_all(b"GET /v1/limits/4 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answers = read_answers(&mut stream, 1).await;
    assert!(answers[0].contains("\"user_id\":4"), "{answers:?}");

    // three requests in one write, answered in order
    let mut stream = connect().await.unwrap();
    let pipelined: String = [5, 11, 6]
        .iter()
        .map(|user| format!("GET /v1/limits/{user} HTTP/1.1\r\nHost: x\r\n\r\n"))
        .collect();
    stream.write_all(pipelined.as_bytes()).await.unwrap();
    let answers = read_answers(&mut stream, 3).await;
    assert_eq!(answers.len(), 3, "{answers:?}");
    assert!(answers[0].contains("\"user_id\":5"), "{answers:?}");
    assert!(answers[1].starts_with("HTTP/1.1 404"), "{answers:?}");
    assert!(answers[2].contains("\"user_id\":6"), "{answers:?}");

    // a request, then the client's end of stream: answered, then closed
    let mut stream = connect().await.unwrap();
    stream
        .write_all(b"GET /v1/limits/7 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    stream.shutdown().await.unwrap();
    let answers = read_answers(&mut stream, 2).await;
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert!(answers[0].contains("\"user_id\":7"), "{answers:?}");

    server.stop().await.unwrap();
}

/// Serving settings for tests: a free loopback port, no token, limits that do not bind.
fn test_config() -> ServeConfig {
    ServeConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        token: None,
        write_token: None,
        poll: Duration::from_secs(60),
        header_read_timeout: Duration::from_secs(10),
        max_connections: 100,
        max_table_age: None,
        tls: None,
        shard: None,
    }
}

/// One GET of `path` on a new connection: the answer's status line and body.
async fn ask(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    read_answers(&mut stream, 1).await.remove(0)
}

/// A server over a fresh memory root that holds one published table of ten users.
async fn small_server(name: &str, config: ServeConfig) -> (Store, serve::Server) {
    let store = Store::open(&format!("memory://{name}")).unwrap();
    publish::publish(&store, &rows(10, 0.01), date(), "m", "p")
        .await
        .unwrap();
    let server = serve::start(store.clone(), config).await.unwrap();
    (store, server)
}

/// Asserts that the server ends `stream` within five seconds: closed, reset, or told 408
/// before closing.
async fn assert_hung_up(stream: &mut tokio::net::TcpStream, what: &str) {
    use tokio::io::AsyncReadExt;
    let mut buffer = [0u8; 256];
    let ended = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
        .await
        .unwrap_or_else(|_| panic!("the server keeps {what} open"));
    if let Ok(read) = ended {
        let answer = String::from_utf8_lossy(&buffer[..read]);
        assert!(
            read == 0 || answer.starts_with("HTTP/1.1 408"),
            "{what}: {answer}"
        );
    }
}

// A client that sends its header a byte at a time (slowloris) holds no connection for long.
#[tokio::test]
async fn a_client_that_never_finishes_its_header_is_disconnected() {
    use tokio::io::AsyncWriteExt;
    let config = ServeConfig {
        header_read_timeout: Duration::from_millis(300),
        ..test_config()
    };
    let (_, server) = small_server("serve-slow-header", config).await;
    let mut slow = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    slow.write_all(b"GET /v1/limits/3 HTTP/1.1\r\nHo")
        .await
        .unwrap();
    assert_hung_up(&mut slow, "a connection whose header never ends").await;
    // everyone else is still served
    let answer = ask(server.addr(), "/v1/limits/4").await;
    assert!(answer.contains("\"user_id\":4"), "{answer}");
    server.stop().await.unwrap();
}

// Past the cap, a connection waits for a slot instead of taking memory and a task.
#[tokio::test]
async fn connections_past_the_cap_wait_for_one_to_close() {
    use tokio::io::AsyncWriteExt;
    let config = ServeConfig {
        max_connections: 1,
        ..test_config()
    };
    let (_, server) = small_server("serve-cap", config).await;
    let request = b"GET /v1/limits/5 HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut first = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    first.write_all(request).await.unwrap();
    assert_eq!(read_answers(&mut first, 1).await.len(), 1);
    // the first connection stays open: the second is not served yet
    let mut second = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    second.write_all(request).await.unwrap();
    let mut buffer = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(500), async {
        use tokio::io::AsyncReadExt;
        second.read(&mut buffer).await
    })
    .await;
    assert!(early.is_err(), "answered past the cap: {early:?}");
    drop(first);
    let answers = read_answers(&mut second, 1).await;
    assert!(answers[0].contains("\"user_id\":5"), "{answers:?}");
    server.stop().await.unwrap();
}

// A version whose table does not load is tried once; the server keeps serving the last good
// one and does not hammer the store every poll.
#[tokio::test]
async fn a_version_that_fails_to_load_is_not_retried_every_poll() {
    let config = ServeConfig {
        poll: Duration::from_millis(20),
        ..test_config()
    };
    let (store, server) = small_server("serve-failed-version", config).await;
    let second = publish::publish(&store, &rows(10, 0.02), date(), "m", "p")
        .await
        .unwrap();
    // damage the new version's data after its commit
    let path = &second.files[0].path;
    let mut bytes = store.get(path).await.unwrap().unwrap().to_vec();
    bytes[100] ^= 0xff;
    store.put(path, bytes.into()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await; // ~25 polls
    assert_eq!(server.version(), Some(1));
    let stats = server.stop().await.unwrap();
    assert_eq!(stats.reload_failures, 1, "{stats:?}");
}

// A missed night shows on /healthz: past the maximum age the server says it is stale.
#[tokio::test]
async fn healthz_turns_unhealthy_when_the_table_is_older_than_the_maximum() {
    let config = ServeConfig {
        max_table_age: Some(Duration::from_millis(300)),
        ..test_config()
    };
    let (_, server) = small_server("serve-table-age", config).await;
    let fresh = ask(server.addr(), "/healthz").await;
    assert!(fresh.starts_with("HTTP/1.1 200"), "{fresh}");
    assert!(fresh.contains("\"table_age_seconds\":0"), "{fresh}");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let stale = ask(server.addr(), "/healthz").await;
    assert!(
        stale.starts_with("HTTP/1.1 503") && stale.contains("stale"),
        "{stale}"
    );
    // lookups are still answered from the table held
    assert!(
        ask(server.addr(), "/v1/limits/2")
            .await
            .starts_with("HTTP/1.1 200")
    );
    server.stop().await.unwrap();
}

/// The process's resident memory, from /proc.
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap();
    kib * 1024
}

/// The soft limit on open files: the connection tests need their sockets on both ends.
fn open_files_limit() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    line.split_whitespace()
        .nth(3)
        .unwrap()
        .parse()
        .unwrap_or(u64::MAX)
}

// An idle keep-alive connection is closed once the header timeout passes without a request:
// the header timer runs from the end of the last answer, so idle and slow cost the same.
#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    use tokio::io::AsyncWriteExt;
    let config = ServeConfig {
        header_read_timeout: Duration::from_millis(300),
        ..test_config()
    };
    let (_, server) = small_server("serve-idle", config).await;
    let mut idle = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    idle.write_all(b"GET /v1/limits/2 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_answers(&mut idle, 1).await.len(), 1);
    assert_hung_up(&mut idle, "an idle connection").await;
    server.stop().await.unwrap();
}

// 200 clients sending their header a byte every 400 ms (slowloris): a normal client is
// answered all along, and the slow ones are all gone after the header timeout.
#[tokio::test]
async fn two_hundred_slowloris_connections_do_not_stop_a_normal_client() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let config = ServeConfig {
        header_read_timeout: Duration::from_secs(1),
        max_connections: 1_000,
        ..test_config()
    };
    let (_, server) = small_server("serve-slowloris", config).await;
    let addr = server.addr();
    let slow: Vec<_> = (0..200)
        .map(|_| {
            tokio::spawn(async move {
                let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
                let header = b"GET /v1/limits/1 HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaa";
                for byte in header {
                    // a write fails, or a read ends, once the server has hung up
                    if stream.write_all(&[*byte]).await.is_err() {
                        return true;
                    }
                    let mut buffer = [0u8; 64];
                    match tokio::time::timeout(Duration::from_millis(400), stream.read(&mut buffer))
                        .await
                    {
                        Ok(Ok(0)) | Ok(Err(_)) => return true,
                        Ok(Ok(read)) if buffer[..read].starts_with(b"HTTP/1.1 408") => return true,
                        _ => {}
                    }
                }
                false
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    for user in 1..=10 {
        let answer = tokio::time::timeout(
            Duration::from_secs(1),
            ask(addr, &format!("/v1/limits/{user}")),
        )
        .await
        .expect("a normal client is answered while the slow ones trickle");
        assert!(answer.contains(&format!("\"user_id\":{user}")), "{answer}");
    }
    let mut hung_up = 0;
    for task in slow {
        hung_up += tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("every slow client ends")
            .unwrap() as usize;
    }
    assert_eq!(hung_up, 200, "the server hung up on every slow client");
    server.stop().await.unwrap();
}

// 5,000 connections opened at once: the server holds at most its cap of them, keeps
// answering, stays within a memory bound and stops cleanly.
#[tokio::test]
async fn five_thousand_connections_at_once_neither_crash_nor_swell_the_server() {
    assert!(
        open_files_limit() >= 12_000,
        "this test opens 5,000 sockets on each end: raise `ulimit -n` (it is {})",
        open_files_limit()
    );
    let config = ServeConfig {
        header_read_timeout: Duration::from_secs(1),
        max_connections: 1_000,
        ..test_config()
    };
    let (_, server) = small_server("serve-flood", config).await;
    let addr = server.addr();
    let before = resident_bytes();
    let opened: Vec<_> = (0..5_000)
        .map(|_| {
            tokio::spawn(async move {
                tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(addr))
                    .await
                    .ok()
                    .and_then(Result::ok)
            })
        })
        .collect();
    let mut held = Vec::new();
    for task in opened {
        if let Some(stream) = task.await.unwrap() {
            held.push(stream);
        }
    }
    assert!(held.len() >= 1_000, "only {} connected", held.len());
    let swollen = resident_bytes().saturating_sub(before);
    // the server's side of 1,000 connections and the test's 5,000 sockets: far below this
    assert!(
        swollen < 256 << 20,
        "resident memory grew by {} MiB",
        swollen >> 20
    );
    // silent connections time out in a second, so a real request gets through soon
    let answer = tokio::time::timeout(Duration::from_secs(10), ask(addr, "/v1/limits/7"))
        .await
        .expect("answered while 5,000 connections are open");
    assert!(answer.contains("\"user_id\":7"), "{answer}");
    drop(held);
    tokio::time::timeout(Duration::from_secs(10), server.stop())
        .await
        .expect("the server stops")
        .unwrap();
}

// A load that failed is resumed where it stopped by loading the same version again, and
// cleaned up by loading another.
#[tokio::test]
async fn a_failed_redis_load_resumes_where_it_stopped_or_is_deleted() {
    let Some((_server, target)) = redis_for_test("rs") else {
        return;
    };
    let store = Store::open("memory://redis-sink-resume").unwrap();
    let mut redis = Redis::connect(&target).await.unwrap();
    let set = async |redis: &mut Redis, key: &str, value: &str| {
        redis
            .call(&[b"SET", key.as_bytes(), value.as_bytes()])
            .await
            .unwrap();
    };
    let manifest = publish::publish(&store, &rows(3_000, 0.02), date(), "m", "p")
        .await
        .unwrap();
    let snapshot = Snapshot::load(&store, manifest).await.unwrap();
    // version 1's load died after 2,000 of its 3,000 keys: the first key it wrote is marked
    // so that a load starting over would overwrite it
    let first_user = snapshot.user_ids()[0];
    set(
        &mut redis,
        &target.key(1, first_user),
        "written before the failure",
    )
    .await;
    set(&mut redis, &target.loading_key(), "1 2000").await;
    sink::load(&target, &snapshot, 2).await.unwrap();
    assert_eq!(
        get(&mut redis, &target.key(1, first_user)).await.unwrap(),
        b"written before the failure",
        "the resumed load started over"
    );
    let last_user = snapshot.user_ids()[2_999];
    let stored = get(&mut redis, &target.key(1, last_user)).await.unwrap();
    let stored: serve::LimitAnswer = serde_json::from_slice(&stored).unwrap();
    assert_eq!(stored, snapshot.answer(last_user).unwrap());
    assert_eq!(get(&mut redis, "rs:current").await.unwrap(), b"1");
    assert!(get(&mut redis, &target.loading_key()).await.is_none());

    // a load of version 7 died after two keys, never switched; loading version 2 deletes them
    set(&mut redis, &target.key(7, 1), "{}").await;
    set(&mut redis, &target.key(7, 2), "{}").await;
    set(&mut redis, &target.loading_key(), "7 2").await;
    let manifest = publish::publish(&store, &rows(3_000, 0.03), date(), "m", "p")
        .await
        .unwrap();
    let second = Snapshot::load(&store, manifest).await.unwrap();
    sink::load(&target, &second, 2).await.unwrap();
    assert!(
        get(&mut redis, &target.key(7, 1)).await.is_none(),
        "the failed load's keys stay"
    );
    assert!(get(&mut redis, &target.key(7, 2)).await.is_none());
    assert_eq!(get(&mut redis, "rs:current").await.unwrap(), b"2");
}

/// A read path of two shards (`serve --shard 0/2` and `1/2` over one root) behind one
/// client answers every user as one whole server does, each server holding about half the
/// users; a lookup sent to the wrong shard is refused naming the right one; a new version
/// reaches both shards and each keeps only its half.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shards_behind_one_client_answer_every_user_as_one_server_does() {
    use redflower::serve::client::ShardedLimitsClient;
    use redflower::user_index::UserShard;
    let store = Store::open("memory://serve-shards").unwrap();
    let users = 4_000u64;
    publish::publish(&store, &rows(users, 0.01), date(), "m1", "p1")
        .await
        .unwrap();
    let whole = Snapshot::latest(&store).await.unwrap().unwrap();
    let mut servers = Vec::new();
    for index in 0..2 {
        let config = ServeConfig {
            poll: Duration::from_millis(20),
            shard: Some(UserShard { index, count: 2 }),
            ..test_config()
        };
        servers.push(serve::start(store.clone(), config).await.unwrap());
    }
    let bases: Vec<String> = servers
        .iter()
        .map(|server| format!("http://{}", server.addr()))
        .collect();
    let urls: Vec<&str> = bases.iter().map(String::as_str).collect();
    let client = ShardedLimitsClient::new(&urls, None).unwrap();
    for user in 1..=users {
        let answer = client.limit(user).await.unwrap();
        assert_eq!(answer, whole.answer(user), "user {user}");
    }
    assert!(client.limit(users + 1).await.unwrap().is_none());

    let rows_held = |body: String| -> u64 {
        // `ask` gives the status line, then the body
        let json = body.split_once('\n').unwrap().1;
        let health: serde_json::Value = serde_json::from_str(json).unwrap();
        health["rows"].as_u64().unwrap()
    };
    let mut held = Vec::new();
    for (index, server) in servers.iter().enumerate() {
        let health = ask(server.addr(), "/healthz").await;
        assert!(
            health.contains(&format!("\"shard\":\"{index}/2\"")),
            "{health}"
        );
        held.push(rows_held(health));
    }
    assert_eq!(held.iter().sum::<u64>(), users, "{held:?}");
    assert!(held.iter().all(|&n| n > users * 2 / 5), "{held:?}");

    // a user of shard 1 asked of shard 0: 421, naming where the user is
    let other = (1..=users)
        .find(|&user| UserShard::of(user, 2) == 1)
        .unwrap();
    let refused = ask(servers[0].addr(), &format!("/v1/limits/{other}")).await;
    assert!(refused.starts_with("HTTP/1.1 421"), "{refused}");
    assert!(refused.contains("served by shard 1/2"), "{refused}");

    // a new version reaches both shards; each still holds its half
    publish::publish(&store, &rows(users, 0.06), date(), "m2", "p1")
        .await
        .unwrap();
    let newest = Snapshot::latest(&store).await.unwrap().unwrap();
    let mut swapped = false;
    for _ in 0..500 {
        swapped = servers.iter().all(|server| server.version() == Some(2));
        if swapped {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(swapped, "both shards serve version 2");
    for user in (1..=users).step_by(7) {
        assert_eq!(client.limit(user).await.unwrap(), newest.answer(user));
    }
    let health = ask(servers[1].addr(), "/healthz").await;
    assert_eq!(rows_held(health), held[1]);
    for server in servers {
        server.stop().await.unwrap();
    }
}

/// A table published in four parts (`[publish] parts = 4`): part i holds exactly the users
/// of shard i/4, with its row count in the manifest; a server of shard 1/2 reads only parts
/// 1 and 3 (it loads with the other parts gone); a part whose rows differ from its manifest
/// entry fails the load, naming it.
#[tokio::test]
async fn a_table_in_parts_lets_each_shard_read_only_its_own() {
    use redflower::publish::{Publication, PublishConfig};
    use redflower::user_index::UserShard;
    let store = Store::open("memory://serve-parts").unwrap();
    let users = 3_000u64;
    let config = PublishConfig {
        parts: 4,
        ..redflower::config::Pipelines::builtin().nightly.publish
    };
    let publication = Publication {
        as_of: date(),
        model_version: "m1",
        policy_version: "p1",
        run_id: None,
        lineage: None,
        fence: None,
    };
    let manifest = publish::publish_gated(&store, &rows(users, 0.01), &publication, &config, false)
        .await
        .unwrap();
    assert_eq!(manifest.files.len(), 4);
    let mut total = 0;
    for (index, file) in manifest.files.iter().enumerate() {
        let part = UserShard {
            index: index as u32,
            count: 4,
        };
        assert_eq!(file.user_shard(), Some(part));
        let batches = store.read_parquet(&file.path).await.unwrap();
        let held = crate::support::limits_by_user(&batches);
        assert_eq!(file.rows, Some(held.len() as u64));
        assert!(held.keys().all(|&user| part.contains(user)), "part {part}");
        total += held.len() as u64;
    }
    assert_eq!(total, users);
    let whole = Snapshot::latest(&store).await.unwrap().unwrap();
    assert_eq!(whole.len() as u64, users);

    // shard 1/2 is parts 1 and 3: it never reads parts 0 and 2
    for gone in [0, 2] {
        store.delete(&manifest.files[gone].path).await.unwrap();
    }
    let half = UserShard { index: 1, count: 2 };
    let snapshot = Snapshot::load_part(&store, manifest.clone(), date(), Some(half))
        .await
        .unwrap();
    let expected: Vec<u64> = (1..=users).filter(|&user| half.contains(user)).collect();
    assert_eq!(snapshot.len(), expected.len());
    for user in expected {
        assert_eq!(snapshot.answer(user), whole.answer(user), "user {user}");
    }
    // shard 0/3 does not map onto four parts: it needs every file, and part 0 is gone
    let thirds = UserShard { index: 0, count: 3 };
    let missing = Snapshot::load_part(&store, manifest.clone(), date(), Some(thirds)).await;
    assert!(missing.is_err());

    // a part that lost rows against its manifest entry is refused, by name
    let mut wrong = manifest.clone();
    wrong.files[1].rows = Some(wrong.files[1].rows.unwrap() + 1);
    let error = Snapshot::load_part(&store, wrong, date(), Some(half))
        .await
        .err()
        .expect("a row count that does not match");
    assert!(
        error.to_string().contains(&manifest.files[1].path),
        "{error}"
    );
}
