//! The feature job against a real S3-compatible server (moto, started here on loopback):
//! the same world gives the same features on s3:// as in memory, and the publish commit is
//! create-only there too.
//!
//! Needs `moto_server` on PATH (`pip install 'moto[server]'`; `.ci/run` installs it). Without
//! it the test fails under CI and is skipped, with a message, elsewhere.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};

use redflower::config::Pipelines;
use redflower::features::{self, FeatureConfig, FeatureDictionary};
use redflower::policy::LimitPolicy;
use redflower::publish::{self, LimitRow, PublishError};
use redflower::sources;
use redflower::store::Store;

use crate::support::{run_date, synth_world};

/// A moto server on a free loopback port, stopped on drop.
pub struct Moto {
    child: Child,
    pub endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start_moto() -> Option<Moto> {
    let port = TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let moto = Moto {
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
    };
    crate::support::wait_listening(port, "moto_server");
    Some(moto)
}

/// moto on a free port; None, with a message, where it is not installed (never under CI).
pub fn moto_or_skip() -> Option<Moto> {
    let moto = start_moto();
    if moto.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have moto_server (see .ci/run)"
        );
        eprintln!("skipped: moto_server is not on PATH (pip install 'moto[server]')");
    }
    moto
}

/// object_store cannot create buckets; moto takes an unsigned PUT.
pub fn create_bucket(endpoint: &str, bucket: &str) {
    let address = endpoint.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).unwrap();
    write!(
        stream,
        "PUT /{bucket} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(
        response.starts_with("HTTP/1.1 200"),
        "creating bucket {bucket}: {response}"
    );
}

async fn features_of(store: &Store) -> Vec<(String, u64, f32)> {
    let ctx = redflower::engine::session(&Pipelines::builtin().nightly.engine).unwrap();
    sources::validate_and_register(&ctx, store, run_date(), 0.01)
        .await
        .unwrap();
    let mut dictionary = FeatureDictionary::default();
    let set = features::build(
        &ctx,
        store,
        &FeatureConfig::builtin(),
        &mut dictionary,
        run_date(),
    )
    .await
    .unwrap();
    features::write(store, &set, 1).await.unwrap();
    crate::support::named_rows(&set, &dictionary)
}

#[tokio::test]
async fn the_feature_job_runs_on_s3_and_matches_memory() {
    let Some(moto) = moto_or_skip() else { return };
    create_bucket(&moto.endpoint, "redflower");
    let options = [
        ("aws_endpoint_url", moto.endpoint.as_str()),
        ("aws_access_key_id", "test"),
        ("aws_secret_access_key", "test"),
        ("aws_region", "us-east-1"),
    ];
    let s3 = Store::open_with("s3://redflower/nightly", &options).unwrap();
    let memory = Store::open("memory://s3-twin").unwrap();
    for store in [&s3, &memory] {
        synth_world(store, 1_500, 21).await;
    }
    let on_s3 = features_of(&s3).await;
    assert!(!on_s3.is_empty());
    assert_eq!(on_s3, features_of(&memory).await);
    let written = s3
        .list(&format!("features/dt={}", run_date()))
        .await
        .unwrap();
    assert!(
        written
            .iter()
            .any(|(path, size)| path.ends_with(".parquet") && *size > 0),
        "{written:?}"
    );

    // the publish commit is a create-only put on S3 as well
    let policy = LimitPolicy::builtin();
    let rows: Vec<LimitRow> = (1..=3)
        .map(|user_id| LimitRow {
            user_id,
            pd: 0.01,
            decision: policy.decide(0.01, &Default::default()),
            suggestions: Vec::new(),
        })
        .collect();
    publish::publish_version(&s3, 1, &rows, run_date(), "m", "p")
        .await
        .unwrap();
    let second = publish::publish_version(&s3, 1, &rows, run_date(), "m2", "p").await;
    assert!(
        matches!(second, Err(PublishError::Conflict { version: 1 })),
        "{second:?}"
    );
    assert_eq!(
        publish::latest(&s3).await.unwrap().unwrap().model_version,
        "m"
    );
}
