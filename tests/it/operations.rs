//! Nightly operations: a run killed with SIGKILL resumes to the same table, user parts decided
//! partly on another machine publish the same table, transient store faults are retried and an outage fails
//! cleanly, a held lease refuses a second run, and Ballista computes the same features.
//!
//! Every root here is a copy of one small world, run with `target_partitions = 1` so that
//! floating-point sums are added in one order and separate runs are bit-for-bit comparable.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::UInt64Type;
use redflower::cause::Classify;
use redflower::config::Pipelines;
use redflower::engine::Engine;
use redflower::features::{self, FeatureDictionary};
use redflower::model::DeviceKind;
use redflower::nightly::{self, NightlyError, RunOptions, RunOutcome, Stage};
use redflower::publish;
use redflower::sources;
use redflower::store::Store;
use redflower::store::faults::FaultPlan;
use redflower::user_index::UserShard;

use crate::support::{
    copy_dir, one_partition_pipelines as pipelines,
    one_partition_pipelines_in_parts as pipelines_in_parts, open, run_date, synth_world,
};

fn first_night() -> NaiveDate {
    run_date() - chrono::Duration::days(1)
}

async fn run(
    store: &Store,
    date: NaiveDate,
    pipelines: &Pipelines,
    options: &RunOptions,
) -> RunOutcome {
    nightly::run_with(store, date, pipelines, options)
        .await
        .unwrap_or_else(|e| panic!("run {date}: {e}"))
}

async fn table(store: &Store, version: u64) -> Vec<RecordBatch> {
    let manifest = publish::versions(store)
        .await
        .unwrap()
        .into_iter()
        .find(|m| m.version == version)
        .unwrap_or_else(|| panic!("no version {version}"));
    publish::read_table(store, &manifest).await.unwrap()
}

/// Same rows, compared in user order (a table in parts holds its users part by part).
fn assert_same_table(left: &[RecordBatch], right: &[RecordBatch], what: &str) {
    let (left, right) = (by_user(left), by_user(right));
    assert_eq!(left.num_rows(), right.num_rows(), "{what}: row counts");
    for (i, field) in left.schema().fields().iter().enumerate() {
        assert_eq!(
            left.column(i).as_ref(),
            right.column(i).as_ref(),
            "{what}: column {} differs",
            field.name()
        );
    }
}

fn by_user(batches: &[RecordBatch]) -> RecordBatch {
    use datafusion::arrow::compute::{concat_batches, sort_to_indices, take_record_batch};
    let table = concat_batches(&batches[0].schema(), batches).unwrap();
    let users = table.column_by_name("user_id").unwrap();
    take_record_batch(&table, &sort_to_indices(users, None, None).unwrap()).unwrap()
}

#[tokio::test]
async fn killed_runs_resume_and_user_parts_decided_partly_elsewhere_publish_the_same_table_as_one_clean_run()
 {
    let dir = tempfile::tempdir().unwrap();
    let world = dir.path().join("world");
    synth_world(&open(&world), 3_000, 23).await;
    let pipelines = pipelines(&dir.path().join("pipelines"));
    let options = RunOptions::new(DeviceKind::Cpu);

    // the reference: two nights, uninterrupted
    let reference = dir.path().join("reference");
    copy_dir(&world, &reference);
    let reference = open(&reference);
    for date in [first_night(), run_date()] {
        run(&reference, date, &pipelines, &options).await;
    }

    // killed mid-run on the second night, then resumed by the command a scheduler would run
    let killed_dir = dir.path().join("killed");
    copy_dir(&world, &killed_dir);
    let killed = open(&killed_dir);
    run(&killed, first_night(), &pipelines, &options).await;
    let root = killed_dir.to_str().unwrap();
    let pipelines_dir = dir.path().join("pipelines");
    let date = run_date().to_string();
    let args = [
        "nightly",
        "--root",
        root,
        "--date",
        date.as_str(),
        "--pipelines",
        pipelines_dir.to_str().unwrap(),
    ];
    // a short lease: the resumed run may take it over once it expires, not before
    let mut child = Command::new(env!("CARGO_BIN_EXE_redflower"))
        .args(args)
        .args(["--lease-seconds", "3"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let checkpoint = killed_dir.join(format!("runs/{date}/checkpoints/features.json"));
    let waited = Instant::now();
    while !checkpoint.exists() {
        assert!(
            waited.elapsed() < Duration::from_secs(300),
            "the run never finished its features stage"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it was killed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        !killed_dir.join(format!("runs/{date}/report.json")).exists(),
        "the run finished before the kill: nothing was interrupted"
    );
    // readers still see the first night's table, whole
    let latest = publish::latest(&killed).await.unwrap().unwrap();
    assert_eq!(latest.version, 1);
    publish::read_table(&killed, &latest).await.unwrap();

    // the killed run's lease is still live: the resume is refused as busy (7), not run
    let resume = || {
        Command::new(env!("CARGO_BIN_EXE_redflower"))
            .args(args)
            .args(["--resume", "--json"])
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    let busy = resume();
    assert_eq!(
        busy.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&busy.stderr)
    );
    std::thread::sleep(Duration::from_secs(3));
    let output = resume();
    assert!(
        output.status.success(),
        "resume failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let resumed: Vec<&str> = report["resumed_stages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s.as_str())
        .collect();
    assert!(
        resumed.starts_with(&["validate", "features"]),
        "resumed stages {resumed:?}"
    );
    assert_eq!(report["manifest"]["version"], 2);
    assert_same_table(
        &table(&killed, 2).await,
        &table(&reference, 2).await,
        "resumed after SIGKILL vs uninterrupted",
    );

    // both nights in four user parts; the second's parts decided partly by a shard, the rest
    // and the publish by --resume (the part that changed in between decided once more)
    let sharded_dir = dir.path().join("sharded");
    copy_dir(&world, &sharded_dir);
    let sharded = open(&sharded_dir);
    let in_parts = pipelines_in_parts(&dir.path().join("pipelines-in-parts"), 4);
    run(&sharded, first_night(), &in_parts, &options).await;
    let stop = RunOptions {
        stop_after: Some(Stage::Train),
        ..options.clone()
    };
    assert!(matches!(
        run(&sharded, run_date(), &in_parts, &stop).await,
        RunOutcome::Stopped {
            after: Stage::Train,
            ..
        }
    ));
    assert!(
        sharded.list("staging").await.unwrap().is_empty(),
        "a stopped run removes its staged sources too"
    );
    // one machine does shard 1 of 2 (parts 1 and 3); the other never comes, and the resumed
    // run does parts 0 and 2 itself
    let shard = UserShard { index: 1, count: 2 };
    let report = nightly::decide_shard(&sharded, run_date(), &in_parts, &options, shard)
        .await
        .unwrap();
    assert_eq!(report.parts, ["1/4", "3/4"]);
    assert!(
        report.users > 1_000 && report.users < 2_000,
        "{}",
        report.users
    );
    assert_eq!(publish::latest(&sharded).await.unwrap().unwrap().version, 1);
    let resume = RunOptions {
        resume: true,
        ..options.clone()
    };
    // a holder that lost its lease wrote over part 1's decision records after the part was
    // checkpointed: the commit refuses it by name, and the next resume decides it again
    let records = |part: u32| {
        let run = std::fs::read_dir(sharded_dir.join(format!("runs/{}", run_date())))
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .find(|path| path.to_string_lossy().contains("run="))
            .unwrap();
        run.join(format!("decisions-{part:05}-of-00004.parquet"))
    };
    std::fs::copy(records(3), records(1)).unwrap();
    let error = nightly::run_with(&sharded, run_date(), &in_parts, &resume)
        .await
        .expect_err("a part whose records changed is not published");
    assert!(
        matches!(error, NightlyError::PartChanged { ref part, .. } if part == "1/4"),
        "{error}"
    );
    assert_eq!(error.cause().exit_code(), 1);
    assert_eq!(publish::latest(&sharded).await.unwrap().unwrap().version, 1);
    let RunOutcome::Published(report) = run(&sharded, run_date(), &in_parts, &resume).await else {
        panic!("the resumed run did not publish")
    };
    assert_eq!(report.manifest.version, 2);
    assert!(report.resumed_stages.contains(&"train".to_string()));
    assert!(
        report
            .resumed_stages
            .contains(&"3 of 4 user parts".to_string()),
        "{:?}",
        report.resumed_stages
    );
    assert_same_table(
        &table(&sharded, 2).await,
        &table(&reference, 2).await,
        "four user parts, two decided by a shard, vs one run in one part",
    );
    // the report's counts and fairness, summed part by part, are the one-part run's
    let reference_report: serde_json::Value = serde_json::from_slice(
        &reference
            .get(&redflower::store::layout::run_report(run_date()))
            .await
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    let report_json = serde_json::to_value(&report).unwrap();
    for key in [
        "scored_users",
        "limit_distribution",
        "boosted",
        "capped_by_request",
        "with_scenario_limits",
    ] {
        assert_eq!(report_json[key], reference_report[key], "{key}");
    }
    // and counted from the table itself, not only against a run through the same sums
    let published = by_user(&table(&sharded, 2).await);
    let boosts = published
        .column_by_name("certificate_boost")
        .unwrap()
        .as_primitive::<datafusion::arrow::datatypes::Float64Type>();
    let boosted = boosts.values().iter().filter(|b| **b > 0.0).count();
    assert!(boosted > 0);
    assert_eq!(report.boosted, boosted);
    assert_eq!(report.scored_users, published.num_rows());
    assert!(report.capped_by_request > 0 && report.with_scenario_limits > 0);
    let (parts, whole) = (
        report_json["fairness"].as_array().unwrap(),
        reference_report["fairness"].as_array().unwrap(),
    );
    assert!(!parts.is_empty());
    assert_eq!(parts.len(), whole.len());
    for (part, one) in parts.iter().zip(whole) {
        for key in ["segment", "value", "rows", "auc"] {
            assert_eq!(part[key], one[key], "fairness {key}");
        }
        for key in ["mean_pd", "approval_rate", "mean_limit", "limit_ratio"] {
            let (a, b) = (part[key].as_f64().unwrap(), one[key].as_f64().unwrap());
            assert!(
                (a - b).abs() <= 1e-9 * b.abs().max(1.0),
                "fairness {key}: {a} vs {b}"
            );
        }
    }
    // the champion's holdout, scored a part at a time, is the one-part run's
    for key in ["training_rows", "training_defaults", "oracle_auc"] {
        assert_eq!(report_json[key], reference_report[key], "{key}");
    }
    let (held, whole_held) = (&report_json["holdout"], &reference_report["holdout"]);
    for (key, whole_value) in whole_held.as_object().unwrap() {
        if let (Some(a), Some(b)) = (held[key].as_f64(), whole_value.as_f64()) {
            assert!(
                (a - b).abs() <= 1e-9 * b.abs().max(1.0),
                "holdout {key}: {a} vs {b}"
            );
        }
    }
    // features assembled part by part (their keys decided over all users first) are the
    // one-part build's row for row, and stats gathered part by part are its stats
    for date in [first_night(), run_date()] {
        let (in_parts, whole) = (
            features::read(&sharded, date).await.unwrap(),
            features::read(&reference, date).await.unwrap(),
        );
        assert_eq!(in_parts.users, whole.users);
        assert!(whole.nnz() > 10_000, "{}", whole.nnz());
        assert_eq!(in_parts.user_ids, whole.user_ids);
        assert_eq!(in_parts.feature_ids, whole.feature_ids);
        assert_eq!(in_parts.values, whole.values);
    }
    for key in ["strongest_features", "most_drifted"] {
        assert!(!report_json[key].as_array().unwrap().is_empty(), "{key}");
        assert_eq!(report_json[key], reference_report[key], "{key}");
    }
    for (part, one) in report_json["features"]
        .as_array()
        .unwrap()
        .iter()
        .zip(reference_report["features"].as_array().unwrap())
    {
        for key in [
            "as_of",
            "users",
            "rows",
            "distinct_features",
            "dictionary_size",
        ] {
            assert_eq!(part[key], one[key], "features {key}");
        }
    }
    // the table's parts and the decision records pair up by shard; a user is explained from
    // the records of their part
    let manifest = &report.manifest;
    let lineage = manifest.lineage.as_ref().unwrap();
    assert_eq!(manifest.files.len(), 4);
    assert_eq!(lineage.decisions.len(), 4);
    for (table, records) in manifest.files.iter().zip(&lineage.decisions) {
        assert_eq!(table.shard, records.shard);
        assert_eq!(table.rows, records.rows);
    }
    let user = by_user(&table(&sharded, 2).await)
        .column_by_name("user_id")
        .unwrap()
        .as_primitive::<UInt64Type>()
        .value(1234);
    let explained = redflower::audit::explain(&sharded, user, redflower::audit::Which::Latest)
        .await
        .unwrap();
    assert_eq!(explained.replay_matches, Some(true));
}

#[tokio::test]
async fn transient_store_faults_are_retried_and_an_outage_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let world = dir.path().join("world");
    synth_world(&open(&world), 2_000, 29).await;
    let pipelines = pipelines(&dir.path().join("pipelines"));
    let options = RunOptions::new(DeviceKind::Cpu);

    let clean_dir = dir.path().join("clean");
    copy_dir(&world, &clean_dir);
    let clean = open(&clean_dir);
    run(&clean, first_night(), &pipelines, &options).await;

    // every 5th object-store call fails once, DataFusion's reads included
    let flaky_dir = dir.path().join("flaky");
    copy_dir(&world, &flaky_dir);
    let (flaky, counts) = open(&flaky_dir).with_faults(FaultPlan::EveryNth(5));
    run(&flaky, first_night(), &pipelines, &options).await;
    let injected = counts.injected.load(std::sync::atomic::Ordering::Relaxed);
    assert!(injected > 20, "only {injected} faults injected");
    let flaky_clean = open(&flaky_dir);
    assert_same_table(
        &table(&flaky_clean, 1).await,
        &table(&clean, 1).await,
        "run through faults vs clean run",
    );

    // the store goes away in the middle of the second night: the run fails, the first
    // night's table stays the visible one and stays readable
    let (down, _) = open(&flaky_dir).with_faults(FaultPlan::OutageAfter(150));
    let error = nightly::run_with(&down, run_date(), &pipelines, &options)
        .await
        .expect_err("a run against a dead store cannot succeed");
    assert_eq!(error.cause().exit_code(), 1, "{error}");
    assert!(error.to_string().contains("injected fault"), "{error}");
    let latest = publish::latest(&flaky_clean).await.unwrap().unwrap();
    assert_eq!(latest.version, 1);
    publish::read_table(&flaky_clean, &latest).await.unwrap();
    assert!(!nightly::finished(&flaky_clean, run_date()).await.unwrap());
}

#[tokio::test]
async fn a_held_lease_refuses_a_second_run_of_the_date() {
    let store = Store::open("memory://lease-held").unwrap();
    let lease = nightly::lease::acquire(
        &store,
        &format!("runs/{}/lease", run_date()),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    let error = nightly::run_with(
        &store,
        run_date(),
        &Pipelines::builtin(),
        &RunOptions::new(DeviceKind::Cpu),
    )
    .await
    .expect_err("the date is leased");
    assert!(matches!(error, NightlyError::Lease(_)), "{error}");
    assert_eq!(error.cause().exit_code(), 7);
    assert!(
        error.to_string().contains("another run of this date"),
        "{error}"
    );
    lease.release().await.unwrap();
}

#[tokio::test]
async fn ballista_computes_the_same_features_as_the_local_engine() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    synth_world(&store, 1_500, 31).await;
    let pipelines = Pipelines::builtin();
    let engine = &pipelines.nightly.engine;

    let mut sets = Vec::new();
    for kind in [Engine::Local, Engine::BallistaStandalone] {
        let ctx = redflower::engine::session_for(engine, &kind).await.unwrap();
        // the local engine shares one scan of events among its groups, Ballista does not:
        // this test holds the two paths to the same features
        assert_eq!(
            ctx.state()
                .config()
                .get_extension::<redflower::engine::InProcess>()
                .is_some(),
            matches!(kind, Engine::Local),
            "{kind:?}"
        );
        sources::validate_and_register(&ctx, &store, run_date(), 0.05)
            .await
            .unwrap();
        let mut dictionary = FeatureDictionary::default();
        let set = features::build(
            &ctx,
            &store,
            &pipelines.features,
            &mut dictionary,
            run_date(),
        )
        .await
        .unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        let names: Vec<String> = (0..dictionary.len() as u32)
            .map(|id| dictionary.name(id).to_string())
            .collect();
        sets.push((set, names));
    }
    let (local, local_names) = &sets[0];
    let (ballista, ballista_names) = &sets[1];
    assert!(local.nnz() > 10_000, "{} non-zeros", local.nnz());
    assert_eq!(local_names, ballista_names, "feature dictionaries differ");
    assert_eq!(local.users, ballista.users);
    assert_eq!(local.user_ids, ballista.user_ids);
    assert_eq!(local.feature_ids, ballista.feature_ids);
    for (i, (a, b)) in local.values.iter().zip(&ballista.values).enumerate() {
        assert!(
            (a - b).abs() <= 1e-5 * a.abs().max(1.0),
            "value {i} (user {}, feature {}): local {a}, ballista {b}",
            local.user_ids[i],
            local_names[local.feature_ids[i] as usize]
        );
    }
}

// A SIGKILLed run cannot remove its staged sources; the next nightly removes folders nobody
// has written to for a day, never its own and never a fresh one (a run going on beside it).
#[tokio::test]
async fn a_nightly_sweeps_staging_left_by_killed_runs_and_keeps_fresh_folders() {
    let store = Store::open("memory://stale-staging").unwrap();
    let ctx = datafusion::prelude::SessionContext::new();
    let own = format!(
        "staging/session={}/profiles/part-00000.parquet",
        ctx.session_id()
    );
    for path in [
        "staging/session=killed/events/part-00000.parquet",
        "staging/session=killed/repayments/part-00000.parquet",
        "staging/session=other/profiles/part-00000.parquet",
        own.as_str(),
    ] {
        store
            .put(path, bytes::Bytes::from_static(b"rows"))
            .await
            .unwrap();
    }
    let all = store.list("staging").await.unwrap();
    assert_eq!(all.len(), 4);

    // everything was written just now: the nightly's threshold leaves it all
    let removed = sources::sweep_stale_staging(&store, &ctx, sources::STALE_STAGING)
        .await
        .unwrap();
    assert!(removed.is_empty(), "{removed:?}");
    assert_eq!(store.list("staging").await.unwrap(), all);

    // once older than the threshold, other sessions' folders go, the caller's stays
    tokio::time::sleep(Duration::from_millis(30)).await;
    let removed = sources::sweep_stale_staging(&store, &ctx, chrono::Duration::milliseconds(10))
        .await
        .unwrap();
    assert_eq!(removed, ["staging/session=killed", "staging/session=other"]);
    let left: Vec<String> = store
        .list("staging")
        .await
        .unwrap()
        .into_iter()
        .map(|(path, _)| path)
        .collect();
    assert_eq!(left, [own]);
}
