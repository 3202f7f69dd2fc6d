//! Encryption: personal data at rest is unreadable without its key (a clear error naming the
//! file) and readable with it, across a key rotation; `serve` answers over TLS to a client
//! that trusts the test's own CA; the Redis sink loads over `rediss://`.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use redflower::audit::{self, Which};
use redflower::cause::{Cause, Classify};
use redflower::config::Pipelines;
use redflower::model::DeviceKind;
use redflower::nightly::{self, RunOptions};
use redflower::publish::{self, Snapshot};
use redflower::serve::{self, ServeConfig};
use redflower::sink::{self, RedisTarget};
use redflower::store::{Keyring, Store};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{run_date, synth_world};

const K1: &str = "k1=000102030405060708090a0b0c0d0e0f000102030405060708090a0b0c0d0e0f";
const K2: &str = "k2=ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

fn keyed(root: &str, keys: &str) -> Store {
    let keys = Keyring::parse(keys, "test").unwrap();
    Store::open(root).unwrap().with_keys(Some(Arc::new(keys)))
}

/// The last four bytes of a Parquet file: `PARE` when its footer is encrypted.
async fn magic(store: &Store, path: &str) -> String {
    let bytes = store.get(path).await.unwrap().unwrap();
    String::from_utf8_lossy(&bytes[bytes.len() - 4..]).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn personal_data_is_encrypted_at_rest_and_read_only_with_its_key_across_a_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap();
    synth_world(&Store::open(root).unwrap(), 2_000, 91).await;
    let pipelines = Pipelines::builtin();
    let store = keyed(root, K1);
    nightly::run(&store, run_date(), &pipelines, DeviceKind::Cpu)
        .await
        .unwrap();
    let first = publish::latest(&store).await.unwrap().unwrap();
    assert_eq!(first.encryption_key.as_deref(), Some("k1"));
    let decisions = first.lineage.as_ref().unwrap().decisions[0].path.clone();
    let features = format!("features/dt={}/part-00000.parquet", run_date());
    let scores = format!("scores/dt={}/part-00000.parquet", run_date());
    for path in [&first.files[0].path, &decisions, &features, &scores] {
        assert_eq!(magic(&store, path).await, "PARE", "{path} is not encrypted");
    }
    // the source systems' files are read as they were written
    let (raw, _) = store.list("raw/profiles").await.unwrap().remove(0);
    assert_eq!(magic(&store, &raw).await, "PAR1");

    // without the key: a clear error naming the file, a configuration problem
    let plain = Store::open(root).unwrap();
    let err = publish::read_table(&plain, &first).await.unwrap_err();
    assert_eq!(err.cause(), Cause::Configuration, "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&first.files[0].path) && text.contains("is encrypted"),
        "{text}"
    );
    let wrong = keyed(root, K2);
    let err = publish::read_table(&wrong, &first)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("'k1', which is not in the keyring (keys: k2)"),
        "{err}"
    );

    // rotation: k2 appended; new files are written with it, old ones still read with k1
    let rotated = keyed(root, &format!("{K1};{K2}"));
    let rerun = RunOptions {
        rerun: true,
        ..RunOptions::new(DeviceKind::Cpu)
    };
    nightly::run_with(&rotated, run_date(), &pipelines, &rerun)
        .await
        .unwrap();
    let second = publish::latest(&rotated).await.unwrap().unwrap();
    assert_eq!(second.encryption_key.as_deref(), Some("k2"));
    assert!(publish::read_table(&rotated, &first).await.is_ok());
    let user = Snapshot::load(&rotated, second.clone())
        .await
        .unwrap()
        .user_ids()[3];
    let old = audit::explain(&rotated, user, Which::Version(first.version))
        .await
        .unwrap();
    assert_eq!(old.replay_matches, Some(true));
    let err = publish::read_table(&store, &second)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("'k2', which is not in the keyring (keys: k1)"),
        "{err}"
    );
}

/// A CA made here and a certificate for `localhost` signed by it, as PEM files in `dir`.
fn test_ca(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "redflower test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert = params.signed_by(&key, &ca_cert, &ca_key).unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    );
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

/// A TLS client that trusts `ca` only.
fn client(ca: &std::path::Path) -> tokio_rustls::TlsConnector {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_answers_over_tls_to_a_client_that_trusts_the_test_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_ca(dir.path());
    let store = Store::open("memory://tls-serve").unwrap();
    publish::publish(
        &store,
        &crate::publishing::rows(10, 0.01),
        run_date(),
        "m",
        "p",
    )
    .await
    .unwrap();
    let config = ServeConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        token: None,
        write_token: None,
        poll: Duration::from_secs(60),
        header_read_timeout: Duration::from_secs(5),
        max_connections: 10,
        max_table_age: None,
        tls: Some(serve::tls::server_config(&cert, &key).unwrap()),
        shard: None,
    };
    let server = serve::start(store, config).await.unwrap();
    let addr = server.addr();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = client(&ca).connect(name.clone(), tcp).await.unwrap();
    tls.write_all(b"GET /v1/limits/3 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"user_id\":3"), "{answer}");
    // a client that trusts another CA refuses the server; plain HTTP gets no answer
    let other = tempfile::tempdir().unwrap();
    let (other_ca, _, _) = test_ca(other.path());
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert!(client(&other_ca).connect(name, tcp).await.is_err());
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET /v1/limits/3 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut bytes = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut bytes)).await;
    assert!(!String::from_utf8_lossy(&bytes).contains("200 OK"));
    // a key that is not the certificate's is refused naming the file
    let (_, _, other_key) = test_ca(other.path());
    let err = serve::tls::server_config(&cert, &other_key).unwrap_err();
    assert!(
        err.to_string().contains("does not match the certificate"),
        "{err}"
    );
    server.stop().await.unwrap();
}

/// redis-server with TLS only, on a free loopback port; None when this redis-server was built
/// without TLS.
fn start_tls_redis(
    cert: &std::path::Path,
    key: &std::path::Path,
    ca: &std::path::Path,
) -> Option<(Child, u16)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let args = [
        "--port",
        "0",
        "--tls-port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--tls-cert-file",
        cert.to_str()?,
        "--tls-key-file",
        key.to_str()?,
        "--tls-ca-cert-file",
        ca.to_str()?,
        "--tls-auth-clients",
        "no",
        "--save",
        "",
        "--appendonly",
        "no",
    ];
    let mut child = Command::new("redis-server")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    for _ in 0..200 {
        if let Ok(Some(_)) = child.try_wait() {
            return None; // exited: no TLS in this build
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some((child, port));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    None
}

#[tokio::test(flavor = "multi_thread")]
async fn the_redis_sink_loads_over_rediss_trusting_the_test_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = test_ca(dir.path());
    let Some((mut child, port)) = start_tls_redis(&cert, &key, &ca) else {
        eprintln!("skipped: this redis-server does not run with TLS (built without BUILD_TLS)");
        return;
    };
    let store = Store::open("memory://tls-sink").unwrap();
    publish::publish(
        &store,
        &crate::publishing::rows(50, 0.01),
        run_date(),
        "m",
        "p",
    )
    .await
    .unwrap();
    let url = format!("rediss://localhost:{port}");
    let trusting = RedisTarget::parse(&url, "tls")
        .unwrap()
        .with_ca_file(Some(ca.clone()));
    let load = sink::load_latest(&store, &trusting, 2).await.unwrap();
    assert_eq!(load.keys, 50);
    let mut redis = sink::Redis::connect(&trusting).await.unwrap();
    let reply = redis
        .call(&[b"GET", trusting.key(1, 7).as_bytes()])
        .await
        .unwrap();
    assert!(matches!(reply, sink::Reply::Bulk(Some(_))), "{reply:?}");
    // TLS trusting another CA: refused, a configuration problem
    let other = tempfile::tempdir().unwrap();
    let (other_ca, _, _) = test_ca(other.path());
    let distrusting = RedisTarget::parse(&url, "tls")
        .unwrap()
        .with_ca_file(Some(other_ca));
    let err = sink::Redis::connect(&distrusting).await.err().unwrap();
    assert_eq!(err.cause(), Cause::Configuration, "{err}");
    let _ = child.kill();
    let _ = child.wait();
}
