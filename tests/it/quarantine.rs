//! Validation: bad rows land in quarantine with their reason and are counted; too many stop
//! the run with a message that says where they are.

use datafusion::arrow::array::AsArray;
use redflower::config::Pipelines;
use redflower::sources::{self, SourceError};
use redflower::store::Store;

use crate::support::{run_date, synth_world};

#[tokio::test]
async fn bad_rows_are_quarantined_with_reasons_and_counted() {
    let store = Store::open("memory://quarantine").unwrap();
    synth_world(&store, 4_000, 9).await;
    let ctx = redflower::engine::session(&Pipelines::builtin().nightly.engine).unwrap();
    let reports = sources::validate_and_register(&ctx, &store, run_date(), 0.01)
        .await
        .unwrap();

    for report in &reports {
        let folder = format!("quarantine/{}/run={}", report.source, run_date());
        let kept = store.read_parquet_dir(&folder).await.unwrap();
        let rows: usize = kept.iter().map(|b| b.num_rows()).sum();
        assert_eq!(rows as u64, report.quarantined, "{}", report.source);
        let counted: u64 = report.reasons.iter().map(|(_, n)| n).sum();
        assert_eq!(counted, report.quarantined, "{}", report.source);
        for batch in &kept {
            let reasons = batch
                .column_by_name("quarantine_reason")
                .unwrap()
                .as_string::<i32>();
            assert!(reasons.iter().all(|r| r.is_some_and(|r| !r.is_empty())));
        }
        // clean rows + quarantined rows = raw rows: nothing is dropped silently
        let clean = ctx
            .sql(&format!("SELECT COUNT(*) FROM {}", report.source))
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let clean = clean[0]
            .column(0)
            .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
            .value(0);
        assert_eq!(
            clean as u64 + report.quarantined,
            report.rows,
            "{}",
            report.source
        );
    }
    let reasons: Vec<&str> = reports
        .iter()
        .flat_map(|r| r.reasons.iter().map(|(s, _)| s.as_str()))
        .collect();
    for expected in [
        "negative amount",
        "unknown certificate type",
        "duplicate of an earlier row",
    ] {
        assert!(
            reasons.contains(&expected),
            "no '{expected}' in {reasons:?}"
        );
    }
}

#[tokio::test]
async fn a_run_stops_when_the_bad_share_passes_the_limit() {
    let store = Store::open("memory://quarantine-limit").unwrap();
    synth_world(&store, 2_000, 9).await;
    let ctx = redflower::engine::session(&Pipelines::builtin().nightly.engine).unwrap();
    let err = sources::validate_and_register(&ctx, &store, run_date(), 0.0)
        .await
        .unwrap_err();
    assert!(matches!(err, SourceError::TooManyBadRows { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("above the limit") && message.contains("quarantine/"),
        "{message}"
    );
}

#[tokio::test]
async fn counting_bad_rows_stops_once_the_run_must_stop() {
    use std::sync::Arc;

    use datafusion::arrow::array::{
        Float64Array, RecordBatch, TimestampMicrosecondArray, UInt64Array,
    };

    let store = Store::open("memory://quarantine-early-stop").unwrap();
    synth_world(&store, 1_000, 4).await;
    // an upstream sends 30,000 requests with negative limits
    let bad_rows = 30_000u64;
    let schema = redflower::schema::LIMIT_REQUESTS.arrow();
    let at = 1_780_000_000_000_000i64; // 2026-05-28, before the run date
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(UInt64Array::from_iter_values(0..bad_rows)),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values((0..bad_rows as i64).map(|i| at + i))
                    .with_timezone_opt(Some("UTC")),
            ),
            Arc::new(Float64Array::from_iter_values((0..bad_rows).map(|_| -1.0))),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values((0..bad_rows as i64).map(|i| at + i))
                    .with_timezone_opt(Some("UTC")),
            ),
        ],
    )
    .unwrap();
    store
        .write_parquet(
            "raw/limit_requests/dt=2026-05-28/part-negative.parquet",
            schema,
            &[batch],
        )
        .await
        .unwrap();
    let ctx = redflower::engine::session(&Pipelines::builtin().nightly.engine).unwrap();
    let err = sources::validate_and_register(&ctx, &store, run_date(), 0.01)
        .await
        .unwrap_err();
    let SourceError::TooManyBadRows {
        source_name, bad, ..
    } = &err
    else {
        panic!("{err}");
    };
    assert_eq!(source_name, "limit_requests");
    // stopped after the batch that passed the limit, and says the count is a floor
    assert!(*bad < bad_rows, "counted all {bad} bad rows: {err}");
    assert!(err.to_string().contains("at least"), "{err}");
}

/// Every numeric column of every source, sent as NaN, +inf and -inf: each such row is
/// quarantined with its own reason, and no clean view (what features read) holds one.
#[tokio::test]
async fn non_finite_numbers_are_quarantined_per_column_and_never_reach_features() {
    use std::sync::Arc;

    use datafusion::arrow::array::{ArrayRef, Float32Array, Float64Array, UInt64Array};
    use datafusion::arrow::compute::concat_batches;
    use datafusion::arrow::datatypes::DataType;

    let store = Store::open("memory://quarantine-non-finite").unwrap();
    synth_world(&store, 1_000, 5).await;
    let mut expected = Vec::new();
    for source in sources::sources() {
        let name = source.name().to_string();
        // the largest file: one with at least three rows
        let files = store.list(&format!("raw/{name}/")).await.unwrap();
        let (path, _) = files.into_iter().max_by_key(|(_, size)| *size).unwrap();
        let sample = store.read_parquet(&path).await.unwrap();
        let sample = concat_batches(&sample[0].schema(), &sample)
            .unwrap()
            .slice(0, 3);
        for (index, field) in sample.schema().fields().iter().enumerate() {
            let broken: ArrayRef = match field.data_type() {
                DataType::Float64 => Arc::new(Float64Array::from(vec![
                    f64::NAN,
                    f64::INFINITY,
                    f64::NEG_INFINITY,
                ])),
                DataType::Float32 => Arc::new(Float32Array::from(vec![
                    f32::NAN,
                    f32::INFINITY,
                    f32::NEG_INFINITY,
                ])),
                _ => continue,
            };
            let mut columns = sample.columns().to_vec();
            columns[index] = broken;
            // users of their own: no copy can pass for a version of a real row
            let first = 90_000_000 + 10 * index as u64;
            columns[0] = Arc::new(UInt64Array::from_iter_values(first..first + 3));
            let batch =
                datafusion::arrow::array::RecordBatch::try_new(sample.schema(), columns).unwrap();
            let copy = path.replace(".parquet", &format!("-nonfinite-{index}.parquet"));
            store
                .write_parquet(&copy, batch.schema(), &[batch])
                .await
                .unwrap();
            expected.push((name.clone(), field.name().clone(), first));
        }
    }
    assert_eq!(expected.len(), 5, "{expected:?}");
    let ctx = redflower::engine::session(&Pipelines::builtin().nightly.engine).unwrap();
    // a small world's few limit requests: three bad ones are a large share of them
    let reports = sources::validate_and_register(&ctx, &store, run_date(), 0.1)
        .await
        .unwrap();
    assert_eq!(reports.len(), 5);
    for (source, column, first) in expected {
        // the three rows sent, each kept with its own reason
        let kept = store
            .read_parquet_dir(&format!("quarantine/{source}/run={}", run_date()))
            .await
            .unwrap();
        let mut reasons = Vec::new();
        for batch in &kept {
            let users = batch
                .column_by_name("user_id")
                .unwrap()
                .as_primitive::<datafusion::arrow::datatypes::UInt64Type>();
            let why = batch
                .column_by_name("quarantine_reason")
                .unwrap()
                .as_string::<i32>();
            for row in 0..batch.num_rows() {
                if (first..first + 3).contains(&users.value(row)) {
                    reasons.push(why.value(row).to_string());
                }
            }
        }
        assert_eq!(reasons, vec![format!("non-finite {column}"); 3], "{source}");
        let leaked = ctx
            .sql(&format!(
                "SELECT COUNT(*) FROM {source} WHERE isnan({column}) OR abs({column}) = CAST('Infinity' AS DOUBLE)"
            ))
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let leaked = leaked[0]
            .column(0)
            .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
            .value(0);
        assert_eq!(leaked, 0, "{source}.{column}");
    }
}
