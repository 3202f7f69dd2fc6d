//! The `redflower nightly` command as a scheduler runs it: finished dates are no-ops,
//! backfills run in order, exit codes say what kind of failure happened, logs can be JSON.

use std::process::Command;

use redflower::publish;
use redflower::store::Store;

use crate::support::{synth_world, write_text_user_ids};

fn nightly(root: &str, args: &[&str]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_redflower"))
        .args(["nightly", "--root", root])
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run redflower");
    (
        output.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

#[tokio::test]
async fn finished_dates_are_no_ops_backfills_run_in_order_and_bad_input_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap();
    let store = Store::open(root).unwrap();
    synth_world(&store, 2_000, 17).await;

    let (code, out) = nightly(
        root,
        &[
            "--from",
            "2026-10-31",
            "--to",
            "2026-11-01",
            "--log-format",
            "json",
        ],
    );
    assert_eq!(code, 0, "{out}");
    // log collectors get one JSON object per line (synth's bad rows raise warnings)
    let logs: Vec<&str> = out.lines().filter(|l| l.starts_with('{')).collect();
    assert!(!logs.is_empty(), "{out}");
    for line in logs {
        let log: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
        assert!(
            log["level"].is_string() && log["fields"]["message"].is_string(),
            "{line}"
        );
    }
    let versions = publish::versions(&store).await.unwrap();
    let dates: Vec<String> = versions.iter().map(|m| m.as_of.to_string()).collect();
    assert_eq!(dates, vec!["2026-10-31", "2026-11-01"]);

    let (code, out) = nightly(root, &["--date", "2026-11-01"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("already done"), "{out}");
    assert_eq!(publish::versions(&store).await.unwrap().len(), 2);

    let (code, out) = nightly(root, &["--date", "2026-11-01", "--rerun"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(publish::versions(&store).await.unwrap().len(), 3);

    // an upstream starts sending user ids as text: the input is refused, exit code 3
    write_text_user_ids(&store).await;
    let (code, out) = nightly(root, &["--date", "2026-11-02"]);
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("part-upstream.parquet") && out.contains("last published table is unchanged"),
        "{out}"
    );
    assert_eq!(publish::versions(&store).await.unwrap().len(), 3);
}

fn redflower(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_redflower"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run redflower");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn show_prints_the_served_answer_and_survives_an_empty_table() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap();
    let store = Store::open(root).unwrap();
    let (code, _, err) = redflower(&["show", "--root", root, "--user", "1"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("nothing is published"), "{err}");

    publish::publish(&store, &[], crate::support::run_date(), "m", "p")
        .await
        .unwrap();
    let (code, _, err) = redflower(&["show", "--root", root, "--user", "1"]);
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("not in version 1") && !err.contains("panicked"),
        "{err}"
    );

    let rows = crate::publishing::rows(3, 0.01);
    publish::publish(&store, &rows, crate::support::run_date(), "m", "p")
        .await
        .unwrap();
    let (code, out, err) = redflower(&["show", "--root", root, "--user", "2"]);
    assert_eq!(code, 0, "{err}");
    let json = &out[out.find('{').expect("an answer document")..];
    let answer: redflower::publish::LimitAnswer = serde_json::from_str(json).unwrap();
    assert_eq!((answer.user_id, answer.versions.table), (2, 2));
}

#[test]
fn a_backwards_backfill_and_a_broken_pipelines_folder_say_so_in_the_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap();
    let (code, out) = nightly(root, &["--from", "2026-11-02", "--to", "2026-11-01"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("is after --to"), "{out}");
    // a folder without the three files: configuration, not a retry
    let empty = tempfile::tempdir().unwrap();
    let pipelines = empty.path().to_str().unwrap();
    let (code, out) = nightly(root, &["--date", "2026-11-01", "--pipelines", pipelines]);
    assert_eq!(code, 6, "{out}");
    assert!(out.contains("nightly.toml"), "{out}");
}
