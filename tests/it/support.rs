//! Shared helpers: small worlds and reading back the published table.

use std::collections::HashMap;

use std::path::Path;

use chrono::NaiveDate;
use datafusion::arrow::array::{
    Array, AsArray, Float64Array, RecordBatch, StringArray, UInt64Array,
};
use datafusion::arrow::datatypes::{Float64Type, UInt64Type};
use redflower::config::Pipelines;
use redflower::features::{FeatureDictionary, FeatureSet};
use redflower::policy::HeldCertificate;
use redflower::publish;
use redflower::store::Store;
use redflower::suggestions::Suggestion;
use redflower::synth::{self, WorldConfig};

/// A named column of a batch, typed; panics with the name when it is missing.
pub fn f64_column<'a>(batch: &'a RecordBatch, name: &str) -> &'a Float64Array {
    batch
        .column_by_name(name)
        .unwrap_or_else(|| panic!("no column {name}"))
        .as_primitive::<Float64Type>()
}

pub fn u64_column<'a>(batch: &'a RecordBatch, name: &str) -> &'a UInt64Array {
    batch
        .column_by_name(name)
        .unwrap_or_else(|| panic!("no column {name}"))
        .as_primitive::<UInt64Type>()
}

pub fn str_column<'a>(batch: &'a RecordBatch, name: &str) -> &'a StringArray {
    batch
        .column_by_name(name)
        .unwrap_or_else(|| panic!("no column {name}"))
        .as_string::<i32>()
}

pub fn world(users: u64, seed: u64) -> WorldConfig {
    WorldConfig {
        users,
        days: 150,
        end: run_date(),
        seed,
    }
}

pub fn run_date() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, 1).unwrap()
}

pub async fn synth_world(store: &Store, users: u64, seed: u64) {
    synth::generate(store, &world(users, seed))
        .await
        .expect("synth");
}

/// The newest published table as batches, with its version.
pub async fn published(store: &Store) -> (u64, Vec<RecordBatch>) {
    let manifest = publish::latest(store)
        .await
        .unwrap()
        .expect("a published table");
    let batches = publish::read_table(store, &manifest).await.unwrap();
    (manifest.version, batches)
}

/// user_id -> credit_limit of a published table; panics on a duplicate user.
pub fn limits_by_user(batches: &[RecordBatch]) -> HashMap<u64, (f64, Option<f64>)> {
    let mut out = HashMap::new();
    for batch in batches {
        let users = batch
            .column_by_name("user_id")
            .unwrap()
            .as_primitive::<UInt64Type>();
        let limits = batch
            .column_by_name("credit_limit")
            .unwrap()
            .as_primitive::<Float64Type>();
        let caps = batch
            .column_by_name("user_cap")
            .unwrap()
            .as_primitive::<Float64Type>();
        for row in 0..batch.num_rows() {
            let cap = (!caps.is_null(row)).then(|| caps.value(row));
            let previous = out.insert(users.value(row), (limits.value(row), cap));
            assert!(
                previous.is_none(),
                "user {} published twice",
                users.value(row)
            );
        }
    }
    out
}

/// A feature set as comparable rows (feature name, user, value), in the set's order.
pub fn named_rows(set: &FeatureSet, dictionary: &FeatureDictionary) -> Vec<(String, u64, f32)> {
    (0..set.nnz())
        .map(|i| {
            (
                dictionary.name(set.feature_ids[i]).to_string(),
                set.user_ids[i],
                set.values[i],
            )
        })
        .collect()
}

/// Writes a limit_requests file whose user ids are text, as an upstream gone wrong would;
/// returns its path under the root.
pub async fn write_text_user_ids(store: &Store) -> &'static str {
    use std::sync::Arc;

    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    let schema = Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Utf8, true),
        Field::new("requested_at", DataType::Utf8, true),
        Field::new("requested_limit", DataType::Float64, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(StringArray::from(vec!["17"])),
            Arc::new(StringArray::from(vec!["2026-10-30T10:00:00Z"])),
            Arc::new(Float64Array::from(vec![1000.0])),
        ],
    )
    .unwrap();
    let path = "raw/limit_requests/dt=2026-10-30/part-upstream.parquet";
    store.write_parquet(path, schema, &[batch]).await.unwrap();
    path
}

/// A suggestion of `family` for `amount` more, as the published table stores it.
pub fn suggestion(family: &str, amount: f64) -> Suggestion {
    Suggestion {
        family: family.into(),
        certificate: HeldCertificate {
            cert_type_id: 1,
            name: format!("a {family} certificate"),
            family: family.into(),
            tier: 1,
            confidence: 1.0,
        },
        amount,
    }
}

/// A copy of a local root (every root of a comparison starts from the same world).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The shipped configuration with one partition per query, as files (for the binary) and
/// parsed (for the library).
pub fn one_partition_pipelines(dir: &Path) -> Pipelines {
    one_partition_pipelines_in_parts(dir, 1)
}

/// [`one_partition_pipelines`] with the users in `parts` parts (`[publish] parts`).
pub fn one_partition_pipelines_in_parts(dir: &Path, parts: u32) -> Pipelines {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    std::fs::create_dir_all(dir).unwrap();
    for file in ["features.toml", "limits.toml", "nightly.toml"] {
        let text = std::fs::read_to_string(shipped.join(file)).unwrap();
        let text = text
            .replace("target_partitions = 0", "target_partitions = 1")
            .replace("\nparts = 1\n", &format!("\nparts = {parts}\n"));
        std::fs::write(dir.join(file), text).unwrap();
    }
    let pipelines = Pipelines::load(dir).unwrap();
    assert_eq!(pipelines.nightly.engine.target_partitions, 1);
    assert_eq!(pipelines.nightly.publish.parts, parts);
    pipelines
}

pub fn open(path: &Path) -> Store {
    Store::open(path.to_str().unwrap()).unwrap()
}

/// Waits until something listens on loopback `port` (a server a test started), a minute at
/// most.
pub fn wait_listening(port: u16, what: &str) {
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "{what} did not start listening on port {port}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
