//! Interactive limits: a user uploads a certificate or lowers their limit through `serve`, the
//! next GET answers with it, the request is a raw row the next night reads, and the overlay
//! empties once a table decided from it is served.

use std::time::Duration;

use chrono::{NaiveDate, Utc};
use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::UInt32Type;
use hyper::StatusCode;
use redflower::features::{self, FeatureDictionary};
use redflower::model::DeviceKind;
use redflower::nightly;
use redflower::serve::client::LimitsClient;
use redflower::serve::overlay::{CertificateUpload, LimitRequest, WriteReason};
use redflower::serve::{self, ServeConfig, ServeError};
use redflower::store::{Store, layout};
use redflower::synth::{self, WorldConfig};

use crate::serving::check_against_openapi;
use crate::support::{named_rows, one_partition_pipelines};

async fn start(store: &Store) -> (serve::Server, LimitsClient) {
    let config = ServeConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        token: Some("read-token".into()),
        write_token: Some("write-token".into()),
        poll: Duration::from_millis(50),
        header_read_timeout: Duration::from_secs(5),
        max_connections: 64,
        max_table_age: None,
        tls: None,
        shard: None,
    };
    let server = serve::start(store.clone(), config).await.unwrap();
    let url = format!("http://{}", server.addr());
    let client = LimitsClient::new(&url, Some("read-token".into()))
        .unwrap()
        .with_write_token("write-token");
    (server, client)
}

/// The catalog's type ids of `family`.
async fn types_of(store: &Store, family: &str) -> Vec<u32> {
    let batches = store
        .read_parquet(&layout::certificate_types_file())
        .await
        .unwrap();
    let mut ids = Vec::new();
    for batch in &batches {
        let id = batch.column_by_name("cert_type_id").unwrap();
        let families = batch.column_by_name("family").unwrap().as_string::<i32>();
        for (row, id) in id.as_primitive::<UInt32Type>().values().iter().enumerate() {
            if families.value(row) == family {
                ids.push(*id);
            }
        }
    }
    ids
}

/// `user`'s count of unverified certificates in the features as of `as_of`.
async fn unverified(store: &Store, as_of: NaiveDate, user: u64) -> f32 {
    let set = features::read(store, as_of).await.unwrap();
    let dictionary = FeatureDictionary::load(store).await.unwrap();
    named_rows(&set, &dictionary)
        .into_iter()
        .filter(|(name, u, _)| *u == user && name.starts_with("unverified_certificates"))
        .map(|(_, _, value)| value)
        .sum()
}

fn upload(id: &str, type_id: u32, number: &str) -> CertificateUpload {
    CertificateUpload {
        request_id: id.into(),
        cert_type_id: type_id,
        certificate_no: number.into(),
        confidence: 0.97,
        valid_until: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_and_a_lower_limit_answer_at_once_survive_a_restart_and_reach_the_next_night() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().to_str().unwrap()).unwrap();
    let pipelines = one_partition_pipelines(&dir.path().join("pipelines"));
    // requests are known now (the server's clock): the world ends yesterday, tonight's table
    // is today's, and tomorrow's night is the first to read them
    let today = Utc::now().date_naive();
    let tomorrow = today.succ_opt().unwrap();
    let world = WorldConfig {
        users: 2_000,
        days: 150,
        end: today.pred_opt().unwrap(),
        seed: 23,
    };
    synth::generate(&store, &world).await.unwrap();
    nightly::run(&store, today, &pipelines, DeviceKind::Cpu)
        .await
        .unwrap();
    let (server, client) = start(&store).await;

    // a user the night promised +N for a family they can upload
    let mut promised = None;
    for user in 1..=world.users {
        let (answer, provisional) = client.limit_now(user).await.unwrap().unwrap();
        assert!(provisional.is_none());
        if let Some(s) = answer.suggestions.first() {
            promised = Some((answer.clone(), s.family.clone(), s.adds));
            break;
        }
    }
    let (before, family, adds) = promised.expect("some user has a suggestion");
    let user = before.user_id;
    let type_id = types_of(&store, &family).await[0];
    let unverified_tonight = unverified(&store, today, user).await;

    let (status, accepted) = client
        .upload_certificate(user, &upload("up-1", type_id, "ONLINE-0001"))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{accepted:?}");
    assert!(accepted.accepted);
    assert_eq!(accepted.provisional_boost, adds);
    assert_eq!(accepted.credit_limit, before.credit_limit + adds);
    let (now, provisional) = client.limit_now(user).await.unwrap().unwrap();
    assert_eq!(now.credit_limit, before.credit_limit + adds);
    let provisional = provisional.expect("the GET says what is provisional");
    assert!(provisional.fields.contains(&"credit_limit".to_string()));
    assert_eq!(provisional.requests[0].request_id, "up-1");
    let spec: serde_json::Value =
        serde_json::from_str(include_str!("../../docs/openapi.json")).unwrap();
    let (_, body) = client.get(&format!("/v1/limits/{user}")).await.unwrap();
    let served: serde_json::Value = serde_json::from_slice(&body).unwrap();
    check_against_openapi(&served, "ServedLimitAnswer", &spec);
    check_against_openapi(
        &serde_json::to_value(&accepted).unwrap(),
        "WriteAnswer",
        &spec,
    );

    // a retry is answered the same and stored once
    let (status, retried) = client
        .upload_certificate(user, &upload("up-1", type_id, "ONLINE-0001"))
        .await
        .unwrap();
    assert_eq!((status, &retried), (StatusCode::OK, &accepted));
    let day = layout::raw("certificates") + &format!("/dt={today}/");
    let stored: Vec<String> = store
        .list(&day)
        .await
        .unwrap()
        .into_iter()
        .map(|(path, _)| path)
        .filter(|path| path.contains("online-"))
        .collect();
    assert_eq!(stored, [format!("{day}online-up-1.parquet")]);

    // the same number from another user is refused, and nothing is recorded for it
    let other = if user == 1 { 2 } else { 1 };
    let (status, refused) = client
        .upload_certificate(other, &upload("up-2", type_id, "ONLINE-0001"))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(!refused.accepted);
    assert_eq!(
        refused.reason,
        Some(WriteReason::CertificateNumberClaimedByAnotherUser)
    );
    // writes need the write token, not the read token
    let reader = LimitsClient::new(
        &format!("http://{}", server.addr()),
        Some("read-token".into()),
    )
    .unwrap()
    .with_write_token("read-token");
    assert!(
        reader
            .upload_certificate(other, &upload("up-3", type_id, "X"))
            .await
            .is_err()
    );

    // a lower limit is in force at the next GET
    let (other_before, _) = client.limit_now(other).await.unwrap().unwrap();
    let lower = (other_before.credit_limit / 2.0).floor().max(100.0);
    let request = LimitRequest {
        request_id: "lower-1".into(),
        requested_limit: Some(lower),
    };
    let (status, lowered) = client.request_limit(other, &request).await.unwrap();
    assert_eq!(status, StatusCode::OK, "{lowered:?}");
    let (now, _) = client.limit_now(other).await.unwrap().unwrap();
    assert!(
        now.credit_limit <= lower,
        "{} above {lower}",
        now.credit_limit
    );
    assert_eq!(now.user_cap, Some(lower));
    assert_eq!(now.credit_limit, lowered.credit_limit);
    server.stop().await.unwrap();

    // a restarted server replays the overlay from the store
    let (server, client) = start(&store).await;
    let (now, provisional) = client.limit_now(user).await.unwrap().unwrap();
    assert_eq!(now.credit_limit, before.credit_limit + adds);
    assert!(provisional.is_some());
    assert_eq!(
        client.limit_now(other).await.unwrap().unwrap().0.user_cap,
        Some(lower)
    );
    let (_, again) = client.request_limit(other, &request).await.unwrap();
    assert_eq!(
        again, lowered,
        "a retry after a restart is answered the same"
    );

    // the next night reads both requests as raw rows; the server accounts for them
    nightly::run(&store, tomorrow, &pipelines, DeviceKind::Cpu)
        .await
        .unwrap();
    assert_eq!(
        unverified(&store, tomorrow, user).await,
        unverified_tonight + 1.0,
        "the upload is the night's row (unverified until its issuer confirms it)"
    );
    for _ in 0..600 {
        if server.version() == Some(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        server.version(),
        Some(2),
        "serve did not switch to the next night's table"
    );
    let (night, provisional) = client.limit_now(other).await.unwrap().unwrap();
    assert!(
        provisional.is_none(),
        "the overlay emptied: {provisional:?}"
    );
    assert_eq!(
        night.user_cap,
        Some(lower),
        "the night honours the lower limit"
    );
    assert!(night.credit_limit <= lower);
    assert!(client.limit_now(user).await.unwrap().unwrap().1.is_none());
    let (_, metrics) = client.get("/metrics").await.unwrap();
    let metrics = String::from_utf8_lossy(&metrics).into_owned();
    assert!(
        metrics.contains("redflower_serve_overlay_users 0"),
        "{metrics}"
    );
    assert!(metrics.contains("redflower_serve_writes_total{outcome=\"accepted\"} 0"));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn the_write_token_must_differ_from_the_read_token() {
    let store = Store::open("memory://same-tokens").unwrap();
    let config = ServeConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        token: Some("one".into()),
        write_token: Some("one".into()),
        poll: Duration::from_secs(1),
        header_read_timeout: Duration::from_secs(5),
        max_connections: 8,
        max_table_age: None,
        tls: None,
        shard: None,
    };
    assert!(matches!(
        serve::start(store, config).await,
        Err(ServeError::SameTokens)
    ));
}
