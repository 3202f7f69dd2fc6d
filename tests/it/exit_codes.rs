//! Exit codes by cause, not by stage: one real failure of each kind, and the code a
//! scheduler then sees (README, "exit codes").

use chrono::Duration;
use datafusion::error::DataFusionError;
use redflower::cause::{Cause, Classify};
use redflower::config::Pipelines;
use redflower::features::{self, FeatureConfig, FeatureDictionary};
use redflower::model::DeviceKind;
use redflower::nightly::{self, RunOptions};
use redflower::policy::PolicyError;
use redflower::publish::{self, Publication};
use redflower::sources;
use redflower::store::Store;
use redflower::store::faults::FaultPlan;

use crate::publishing::rows;
use crate::support::{run_date, synth_world};

fn code(error: &impl Classify) -> u8 {
    error.cause().exit_code()
}

#[tokio::test]
async fn a_store_that_stops_answering_is_transient_1() {
    let dir = tempfile::tempdir().unwrap();
    let (down, _) = Store::open(dir.path().to_str().unwrap())
        .unwrap()
        .with_faults(FaultPlan::OutageAfter(0));
    let error = publish::latest(&down).await.unwrap_err();
    assert_eq!(code(&error), 1, "{error}");
    // the same loss under a policy query is transient too, not a configuration error
    let lost = DataFusionError::ObjectStore(Box::new(object_store::Error::Generic {
        store: "S3",
        source: "connection reset".into(),
    }));
    let error = PolicyError::Query {
        sql: "SELECT 1".into(),
        error: lost,
    };
    assert_eq!(error.cause(), Cause::Transient);
}

#[tokio::test]
async fn corrupt_input_is_3_and_a_family_that_does_not_plan_is_6() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().to_str().unwrap()).unwrap();
    synth_world(&store, 300, 5).await;
    let pipelines = Pipelines::builtin();

    // a family whose filter names no column: fix features.toml (6), not retry (1)
    let ctx = redflower::engine::session(&pipelines.nightly.engine).unwrap();
    sources::validate_and_register(&ctx, &store, run_date(), 0.5)
        .await
        .unwrap();
    let config = FeatureConfig::parse(
        "[[family]]\nname='x'\nsource='events'\nfilter='no_such_column > 1'\naggregate='count'",
        "features.toml",
    )
    .unwrap();
    let mut dictionary = FeatureDictionary::default();
    let error = features::build(&ctx, &store, &config, &mut dictionary, run_date())
        .await
        .unwrap_err();
    assert_eq!(code(&error), 6, "{error}");

    // a raw file whose footer is not Parquet: the input is bad (3), a retry reads the same
    let day = run_date() - Duration::days(2);
    let path = format!("raw/events/dt={day}/part-broken.parquet");
    store
        .put(
            &path,
            bytes::Bytes::from_static(b"not a parquet file").into(),
        )
        .await
        .unwrap();
    let ctx = redflower::engine::session(&pipelines.nightly.engine).unwrap();
    let error = sources::validate_and_register(&ctx, &store, run_date(), 0.5)
        .await
        .unwrap_err();
    assert_eq!(code(&error), 3, "{error}");
    assert!(error.to_string().contains("part-broken.parquet"), "{error}");
}

#[tokio::test]
async fn refused_gates_are_4_and_a_second_writer_is_5() {
    let store = Store::open("memory://exit-codes-publish").unwrap();
    let first = publish::publish(&store, &rows(100, 0.01), run_date(), "m", "p")
        .await
        .unwrap();
    let publication = Publication {
        as_of: run_date(),
        model_version: "m",
        policy_version: "p",
        run_id: None,
        lineage: None,
        fence: None,
    };
    let config = Pipelines::builtin().nightly.publish;
    let error = publish::publish_gated(&store, &rows(10, 0.01), &publication, &config, false)
        .await
        .unwrap_err();
    assert_eq!(code(&error), 4, "{error}");
    let error = publish::publish_version(
        &store,
        first.version,
        &rows(100, 0.01),
        run_date(),
        "m",
        "p",
    )
    .await
    .unwrap_err();
    assert_eq!(code(&error), 5, "{error}");
}

#[tokio::test]
async fn a_held_lease_is_7_and_a_damaged_run_record_is_8() {
    let store = Store::open("memory://exit-codes-runs").unwrap();
    let pipelines = Pipelines::builtin();
    let lease = nightly::lease::acquire(
        &store,
        &redflower::store::layout::run_lease(run_date()),
        std::time::Duration::from_secs(60),
    )
    .await
    .unwrap();
    let options = RunOptions {
        resume: true,
        ..RunOptions::new(DeviceKind::Cpu)
    };
    let error = nightly::run_with(&store, run_date(), &pipelines, &options)
        .await
        .unwrap_err();
    assert_eq!(code(&error), 7, "{error}");
    lease.release().await.unwrap();

    // a run record that does not read back: the date is run from the start, not retried
    store
        .put(
            &redflower::store::layout::run_file(run_date()),
            bytes::Bytes::from_static(b"{ not json").into(),
        )
        .await
        .unwrap();
    let error = nightly::run_with(&store, run_date(), &pipelines, &options)
        .await
        .unwrap_err();
    assert_eq!(code(&error), 8, "{error}");
    assert!(error.to_string().contains("run.json"), "{error}");
}

#[test]
fn a_bad_pipelines_folder_is_configuration_6() {
    let dir = tempfile::tempdir().unwrap();
    let error = Pipelines::load(dir.path()).unwrap_err();
    assert_eq!(code(&error), 6, "{error}");
}

#[tokio::test]
async fn a_root_without_known_at_is_input_3_and_says_how_to_regenerate() {
    use std::sync::Arc;

    use datafusion::arrow::array::{RecordBatch, UInt64Array};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    let store = Store::open("memory://exit-codes-no-known-at").unwrap();
    synth_world(&store, 300, 6).await;
    // a file as generator 2 wrote it: the columns of its day, no known_at
    let old = redflower::schema::LIMIT_REQUESTS
        .arrow()
        .fields()
        .iter()
        .filter(|f| f.name() != "known_at")
        .map(|f| f.as_ref().clone().with_nullable(true))
        .collect::<Vec<Field>>();
    let schema = Arc::new(Schema::new(old));
    let columns = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::UInt64 => Arc::new(UInt64Array::from(vec![1u64])) as _,
            other => datafusion::arrow::array::new_null_array(other, 1),
        })
        .collect();
    let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
    let path = "raw/limit_requests/dt=2026-10-01/part-generator-2.parquet";
    store.write_parquet(path, schema, &[batch]).await.unwrap();
    let error = nightly::run(&store, run_date(), &Pipelines::builtin(), DeviceKind::Cpu)
        .await
        .unwrap_err();
    assert_eq!(code(&error), 3, "{error}");
    let message = error.to_string();
    assert!(
        message.contains(path)
            && message.contains("known_at")
            && message.contains("redflower synth"),
        "{message}"
    );
}
