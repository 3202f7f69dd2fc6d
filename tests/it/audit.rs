//! The audit trail: every published version names what it rests on, and `explain` replays a
//! user's limit from the run's own record, on any retained version, after reruns of the date.

use std::process::Command;

use redflower::audit::{self, Which};
use redflower::cause::{Cause, Classify};
use redflower::config::Pipelines;
use redflower::model::DeviceKind;
use redflower::nightly::{self, RunOptions};
use redflower::publish::{self, Keep};
use redflower::store::{Store, layout};
use sha2::{Digest, Sha256};

use crate::support::{f64_column, published, run_date, synth_world, u64_column};

fn sha256(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

fn rerun() -> RunOptions {
    RunOptions {
        rerun: true,
        ..RunOptions::new(DeviceKind::Cpu)
    }
}

async fn check_lineage(store: &Store, manifest: &publish::Manifest) {
    let lineage = manifest
        .lineage
        .as_ref()
        .expect("a nightly version has lineage");
    assert_eq!(lineage.git_commit, audit::GIT_COMMIT);
    assert!(!lineage.git_commit.is_empty() && lineage.code_version == env!("CARGO_PKG_VERSION"));
    assert_eq!(Some(&lineage.run_id), manifest.run_id.as_ref());
    assert!(
        lineage.lease_holder.contains("pid"),
        "{}",
        lineage.lease_holder
    );
    // the shipped configuration, byte for byte, and a copy of it in the run's folder
    let names: Vec<&str> = lineage.pipelines.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        names,
        [
            "pipelines/features.toml",
            "pipelines/limits.toml",
            "pipelines/nightly.toml"
        ]
    );
    for file in &lineage.pipelines {
        let shipped = std::fs::read(&file.path).unwrap();
        assert_eq!(file.sha256, sha256(&shipped), "{}", file.path);
        let copy = store
            .get(&format!("{}/{}", lineage.run_folder, file.path))
            .await
            .unwrap();
        assert_eq!(copy.as_deref(), Some(&shipped[..]));
    }
    let weights = store
        .get(&layout::model_file(
            &manifest.model_version,
            "weights.safetensors",
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(lineage.model_weights_sha256, sha256(&weights));
    assert_eq!(lineage.model_version, manifest.model_version);
    assert!(lineage.dictionary_version >= 1);
    // the run's own copies of the features (both as-of dates) and scores it decided from
    assert_eq!(lineage.outputs.len(), 5, "{:?}", lineage.outputs);
    for output in &lineage.outputs {
        assert!(
            output.path.starts_with(&lineage.run_folder),
            "{}",
            output.path
        );
        let bytes = store.get(&output.path).await.unwrap().unwrap();
        assert_eq!(output.sha256, sha256(&bytes), "{}", output.path);
    }
    // the inputs it could read: raw and reference objects, none dated after the run
    let listing = store.get(&lineage.inputs.listing).await.unwrap().unwrap();
    assert_eq!(lineage.inputs.sha256, sha256(&listing));
    let text = String::from_utf8(listing.to_vec()).unwrap();
    assert_eq!(text.lines().count(), lineage.inputs.objects);
    assert!(lineage.inputs.objects > 10 && lineage.inputs.bytes > 0);
    for line in text.lines() {
        assert!(
            line.starts_with("raw/") || line.starts_with("reference/"),
            "{line}"
        );
        assert!(!line.contains(&format!(
            "dt={}",
            manifest.as_of + chrono::Duration::days(1)
        )));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_limit_is_explained_from_its_own_run_after_a_rerun_and_a_tampered_record_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap();
    let store = Store::open(root).unwrap();
    synth_world(&store, 2_000, 91).await;
    let pipelines = Pipelines::builtin();
    nightly::run(&store, run_date(), &pipelines, DeviceKind::Cpu)
        .await
        .unwrap();
    let first = publish::latest(&store).await.unwrap().unwrap();
    check_lineage(&store, &first).await;

    // every user's replay gives the published limit; pick one with a certificate boost
    let (_, batches) = published(&store).await;
    let batch = &batches[0];
    let users = u64_column(batch, "user_id");
    let boosts = f64_column(batch, "certificate_boost");
    let boosted = (0..users.len())
        .find(|&r| boosts.value(r) > 0.0)
        .map(|r| users.value(r));
    let boosted = boosted.expect("a 2,000-user world has a boosted user");
    let e = audit::explain(&store, boosted, Which::Latest)
        .await
        .unwrap();
    assert_eq!(e.replay_matches, Some(true), "{e:?}");
    assert_eq!(
        e.steps.last().map(|s| s.limit),
        Some(e.published.credit_limit)
    );
    assert!(
        e.steps.iter().any(|s| s.step == "certificate_boost"),
        "{:?}",
        e.steps
    );
    assert!(!e.certificates_counted.is_empty());
    let record = e.record.as_ref().unwrap();
    assert_eq!(record.pd, e.published.pd);
    let given: Vec<String> = record
        .model_reasons
        .iter()
        .map(|r| format!("model:{}", r.feature))
        .collect();
    assert!(
        given.iter().all(|g| e.published.reasons.contains(g)),
        "{given:?}"
    );
    for reason in &record.model_reasons {
        assert!(
            reason.value != 0.0 && reason.contribution > 0.0,
            "{reason:?}"
        );
    }

    // a rerun of the date publishes from a folder of its own; version 1 keeps its record
    nightly::run_with(&store, run_date(), &pipelines, &rerun())
        .await
        .unwrap();
    let second = publish::latest(&store).await.unwrap().unwrap();
    check_lineage(&store, &second).await;
    let (one, two) = (
        first.lineage.as_ref().unwrap(),
        second.lineage.as_ref().unwrap(),
    );
    assert_ne!(one.run_folder, two.run_folder);
    // the rerun replaced features/ and scores/ of the date, not version 1's copies
    check_lineage(&store, &first).await;
    let old = audit::explain(&store, boosted, Which::Version(1))
        .await
        .unwrap();
    assert_eq!(old.replay_matches, Some(true));
    assert_eq!(old.lineage.as_ref().unwrap().run_id, one.run_id);
    let by_date = audit::explain(&store, boosted, Which::Date(run_date()))
        .await
        .unwrap();
    assert_eq!(by_date.version, 2);

    // the CLI, as text and JSON
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_redflower"))
            .args(["explain", "--root", root, "--user", &boosted.to_string()])
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), text)
    };
    let (code, text) = cli(&["--version", "1"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("the replay gives the published limit") && text.contains(&one.run_id),
        "{text}"
    );
    // the record file the user's record came from is named, with its checksum
    let record = &one.decisions[0];
    assert!(
        text.contains(&format!(
            "record       {} (sha256 {})",
            record.path, record.sha256
        )),
        "{text}"
    );
    let (code, json) = cli(&["--json"]);
    assert_eq!(code, Some(0), "{json}");
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["replay_matches"], true);
    assert_eq!(
        json["lineage"]["run_id"].as_str(),
        Some(two.run_id.as_str())
    );
    let (code, text) = cli(&["--version", "9"]);
    assert_eq!(code, Some(6), "{text}");
    assert!(
        text.contains("no version 9") && text.contains("retained versions: 1, 2"),
        "{text}"
    );

    // a record altered after the commit is refused, naming the file
    let v1_bytes = store.get(&one.decisions[0].path).await.unwrap().unwrap();
    store.put(&two.decisions[0].path, v1_bytes).await.unwrap();
    let err = audit::explain(&store, boosted, Which::Latest)
        .await
        .unwrap_err();
    assert_eq!(err.cause(), Cause::Input);
    assert!(
        err.to_string().contains(&two.decisions[0].path) && err.to_string().contains("checksum"),
        "{err}"
    );

    // retention takes a version's run folder with it, and only then
    let keep = Keep {
        versions: 1,
        days: 0,
    };
    let report = publish::retain(&store, keep).await.unwrap();
    assert_eq!(report.run_folders_deleted, 1);
    assert!(store.list(&one.run_folder).await.unwrap().is_empty());
    assert!(!store.list(&two.run_folder).await.unwrap().is_empty());
    let gone = audit::explain(&store, boosted, Which::Version(1))
        .await
        .unwrap_err();
    assert_eq!(gone.cause(), Cause::Configuration, "{gone}");
}
