//! A night on a real multi-process Ballista cluster: one `redflower cluster scheduler` and two
//! `redflower cluster executor` processes on loopback, the root on the S3 server (moto), the
//! run itself a third kind of process (`nightly --engine ballista://...`). The cluster's
//! features and published table are the local engine's; an executor SIGKILLed while the
//! feature queries run costs time, not the night.
//!
//! Needs `moto_server` (see s3.rs); without it the tests fail under CI and skip elsewhere.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use redflower::features;
use redflower::store::Store;

use crate::s3::{Moto, create_bucket, moto_or_skip};
use crate::support::{limits_by_user, published, run_date, wait_listening};

/// The AWS_* variables every process of the test reads the bucket with.
fn aws_env(moto: &Moto) -> [(&'static str, String); 4] {
    [
        ("AWS_ENDPOINT_URL", moto.endpoint.clone()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_REGION", "us-east-1".into()),
    ]
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Two free ports in a row: an executor serves Flight on one and takes tasks on the next.
fn free_port_pair() -> u16 {
    loop {
        let port = free_port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

/// A scheduler and its executors, each a `redflower cluster` process logging to a file;
/// all killed on drop.
struct Cluster {
    scheduler_port: u16,
    executors: Vec<Child>,
    scheduler: Child,
    logs: PathBuf,
}

impl Cluster {
    fn start(moto: &Moto, executors: usize, logs: &Path) -> Cluster {
        let scheduler_port = free_port();
        let spawn = |args: &[String], log: &str| {
            let log = std::fs::File::create(logs.join(log)).unwrap();
            Command::new(env!("CARGO_BIN_EXE_redflower"))
                .arg("cluster")
                .args(args)
                .envs(aws_env(moto))
                .env("RUST_LOG", "warn,redflower=info")
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap()
        };
        let scheduler = spawn(
            &[
                "scheduler".into(),
                "--bind".into(),
                format!("127.0.0.1:{scheduler_port}"),
                // a killed executor is found lost within seconds, not the default minute
                "--executor-timeout-seconds".into(),
                "4".into(),
            ],
            "scheduler.log",
        );
        let mut cluster = Cluster {
            scheduler_port,
            executors: Vec::new(),
            scheduler,
            logs: logs.to_path_buf(),
        };
        wait_listening(scheduler_port, "the scheduler");
        for index in 0..executors {
            let port = free_port_pair();
            cluster.executors.push(spawn(
                &[
                    "executor".into(),
                    "--scheduler".into(),
                    format!("127.0.0.1:{scheduler_port}"),
                    "--bind".into(),
                    format!("127.0.0.1:{port}"),
                    "--slots".into(),
                    "2".into(),
                    "--heartbeat-seconds".into(),
                    "1".into(),
                    "--work-dir".into(),
                    logs.join(format!("work-{index}")).display().to_string(),
                ],
                &format!("executor-{index}.log"),
            ));
            wait_listening(port, "an executor");
        }
        // the executors register with their first heartbeat
        std::thread::sleep(Duration::from_secs(2));
        cluster
    }

    fn engine(&self) -> String {
        format!("ballista://127.0.0.1:{}", self.scheduler_port)
    }

    fn logs(&self) -> String {
        let mut text = String::new();
        for entry in std::fs::read_dir(&self.logs).unwrap() {
            let path = entry.unwrap().path();
            let log = std::fs::read_to_string(&path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            text += &format!("--- {}\n", path.display());
            for line in tail.into_iter().rev() {
                text += line;
                text.push('\n');
            }
        }
        text
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.executors.iter_mut().chain([&mut self.scheduler]) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn redflower(moto: &Moto, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_redflower"));
    command
        .args(args)
        .envs(aws_env(moto))
        .env("RUST_LOG", "warn")
        .env_remove("REDFLOWER_DATA_KEYS");
    command
}

/// The same world under two roots: one for the local engine, one for the cluster.
fn two_worlds(moto: &Moto, bucket: &str) -> (String, String) {
    create_bucket(&moto.endpoint, bucket);
    let roots = (
        format!("s3://{bucket}/local"),
        format!("s3://{bucket}/cluster"),
    );
    for root in [&roots.0, &roots.1] {
        let synth = redflower(
            moto,
            &[
                "synth", "--users", "2000", "--days", "150", "--seed", "17", "--out", root,
            ],
        )
        .output()
        .unwrap();
        assert!(synth.status.success(), "{}", stderr(&synth));
    }
    roots
}

fn night(moto: &Moto, root: &str, engine: &str, extra: &[&str]) -> Command {
    let date = run_date().to_string();
    let mut args = vec![
        "nightly", "--root", root, "--date", &date, "--engine", engine,
    ];
    args.extend_from_slice(extra);
    redflower(moto, &args)
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).to_string()
}

fn open(moto: &Moto, root: &str) -> Store {
    let options = [
        ("aws_endpoint_url", moto.endpoint.as_str()),
        ("aws_access_key_id", "test"),
        ("aws_secret_access_key", "test"),
        ("aws_region", "us-east-1"),
    ];
    Store::open_with(root, &options).unwrap()
}

/// Every feature file of the root (both as-of dates) and the published table, compared.
async fn assert_same_night(local: &Store, cluster: &Store) {
    let dates = |listing: Vec<(String, u64)>| {
        let mut dates: Vec<String> = listing
            .into_iter()
            .filter_map(|(path, _)| {
                let dt = path.split('/').find(|part| part.starts_with("dt="))?;
                Some(dt.trim_start_matches("dt=").to_string())
            })
            .collect();
        dates.sort();
        dates.dedup();
        dates
    };
    let as_of = dates(local.list("features").await.unwrap());
    assert_eq!(
        as_of.len(),
        2,
        "features as of the run and the training date"
    );
    assert_eq!(as_of, dates(cluster.list("features").await.unwrap()));
    for date in &as_of {
        let date = date.parse().unwrap();
        let (a, b) = (
            features::read(local, date).await.unwrap(),
            features::read(cluster, date).await.unwrap(),
        );
        assert!(a.nnz() > 10_000, "{} non-zeros as of {date}", a.nnz());
        assert_eq!(a.user_ids, b.user_ids, "as of {date}");
        assert_eq!(a.feature_ids, b.feature_ids, "as of {date}");
        for (i, (x, y)) in a.values.iter().zip(&b.values).enumerate() {
            assert!(
                (x - y).abs() <= 1e-5 * x.abs().max(1.0),
                "as of {date}, value {i}: local {x}, cluster {y}"
            );
        }
    }
    let (local_version, local_rows) = published(local).await;
    let (cluster_version, cluster_rows) = published(cluster).await;
    assert_eq!((local_version, cluster_version), (1, 1));
    let (local_limits, cluster_limits) =
        (limits_by_user(&local_rows), limits_by_user(&cluster_rows));
    assert_eq!(local_limits.len(), 2_000);
    assert_eq!(local_limits, cluster_limits, "the published limits differ");
}

/// A cluster of two executors, and the same world under two roots with the local engine's
/// night already run on the first: what each test compares the cluster's night to.
struct Setup {
    moto: Moto,
    cluster: Cluster,
    local_root: String,
    cluster_root: String,
    logs: tempfile::TempDir,
}

fn setup(bucket: &str) -> Option<Setup> {
    let moto = moto_or_skip()?;
    let (local_root, cluster_root) = two_worlds(&moto, bucket);
    let logs = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(&moto, 2, logs.path());
    let local = night(&moto, &local_root, "local", &[]).output().unwrap();
    assert!(local.status.success(), "{}", stderr(&local));
    Some(Setup {
        moto,
        cluster,
        local_root,
        cluster_root,
        logs,
    })
}

#[tokio::test]
async fn a_night_on_a_multi_process_cluster_publishes_what_the_local_engine_does() {
    let Some(Setup {
        moto,
        cluster,
        local_root,
        cluster_root,
        logs,
    }) = setup("cluster-night")
    else {
        return;
    };
    let engine = cluster.engine();
    let on_cluster = night(&moto, &cluster_root, &engine, &[]).output().unwrap();
    assert!(
        on_cluster.status.success(),
        "{}\n{}",
        stderr(&on_cluster),
        cluster.logs()
    );
    assert_same_night(&open(&moto, &local_root), &open(&moto, &cluster_root)).await;

    // both executor processes did the night's work: each holds shuffle output of its tasks
    for index in 0..2 {
        let work = logs.path().join(format!("work-{index}"));
        let files = walk(&work);
        assert!(
            !files.is_empty(),
            "executor {index} ran no task ({})",
            work.display()
        );
    }

    // a scheduler that is gone fails the run as transient (exit 1), naming the engine
    drop(cluster);
    let orphan = night(&moto, &cluster_root, &engine, &["--rerun"])
        .output()
        .unwrap();
    assert_eq!(orphan.status.code(), Some(1), "{}", stderr(&orphan));
    assert!(stderr(&orphan).contains(&engine), "{}", stderr(&orphan));
    let (version, _) = published(&open(&moto, &cluster_root)).await;
    assert_eq!(version, 1, "a failed run publishes nothing");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[tokio::test]
async fn an_executor_killed_mid_query_costs_time_not_the_night() {
    let Some(Setup {
        moto,
        mut cluster,
        local_root,
        cluster_root,
        logs: _logs,
    }) = setup("cluster-kill")
    else {
        return;
    };

    let store = open(&moto, &cluster_root);
    let mut run = night(&moto, &cluster_root, &cluster.engine(), &[])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // the feature queries start as soon as validation checkpoints
    let validated = redflower::store::layout::checkpoint(run_date(), "validate");
    let waited = Instant::now();
    while store.get(&validated).await.unwrap().is_none() {
        assert!(
            run.try_wait().unwrap().is_none(),
            "the run ended before validation finished"
        );
        assert!(
            waited.elapsed() < Duration::from_secs(300),
            "validation never finished"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut victim = cluster.executors.remove(1);
    victim.kill().unwrap(); // SIGKILL: no goodbye to the scheduler
    victim.wait().unwrap();
    assert!(
        store
            .get(&redflower::store::layout::checkpoint(
                run_date(),
                "features"
            ))
            .await
            .unwrap()
            .is_none(),
        "the features were done before the kill: nothing was interrupted"
    );

    // the run either finishes on the executor left, or fails as transient and resumes
    let waited = Instant::now();
    let status = loop {
        if let Some(status) = run.try_wait().unwrap() {
            break status;
        }
        assert!(
            waited.elapsed() < Duration::from_secs(300),
            "the run hangs after losing an executor\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    if !status.success() {
        let mut text = String::new();
        std::io::Read::read_to_string(run.stderr.as_mut().unwrap(), &mut text).unwrap();
        assert_eq!(status.code(), Some(1), "not a transient failure: {text}");
        let resumed = night(&moto, &cluster_root, &cluster.engine(), &["--resume"])
            .output()
            .unwrap();
        assert!(
            resumed.status.success(),
            "{}\n{}",
            stderr(&resumed),
            cluster.logs()
        );
    }
    assert_same_night(&open(&moto, &local_root), &store).await;
}

/// An executor whose scheduler never comes up gives up after its wait: exit 1 (transient,
/// retry), naming the address, instead of waiting for ever (Ballista 55's own wait does).
#[test]
fn an_executor_without_a_scheduler_gives_up_naming_it() {
    let nobody = free_port();
    let flight = free_port_pair();
    let output = Command::new(env!("CARGO_BIN_EXE_redflower"))
        .args(["cluster", "executor", "--scheduler"])
        .arg(format!("127.0.0.1:{nobody}"))
        .arg("--bind")
        .arg(format!("127.0.0.1:{flight}"))
        .args(["--scheduler-wait-seconds", "1"])
        .output()
        .unwrap();
    let text = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("no scheduler answers at 127.0.0.1:{nobody}")),
        "{text}"
    );
}
