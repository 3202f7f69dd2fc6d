//! Lineage: the code, configuration, dictionary, model and inputs a published version rests
//! on, captured by the run that publishes it (`publish::Lineage` is what the manifest keeps).
//!
//! At its start a run lists the raw and reference objects it can read into its folder
//! (`inputs.txt`: path, size, modified time and etag per line), so objects that land while it
//! works are not counted; before its publish it copies `pipelines/`, the effective policy, and
//! the features and scores it decided from there, and digests the rest.

use chrono::NaiveDate;
use sha2::{Digest, Sha256};

use super::AuditError;
use crate::config::Pipelines;
use crate::features::FeatureDictionary;
use crate::publish::{DataFile, FileDigest, InputsDigest, Lineage};
use crate::store::{Store, layout};

/// The crate version this binary was built as.
pub const CODE_VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit it was built from (`build.rs`), `+dirty` with uncommitted changes.
pub const GIT_COMMIT: &str = env!("REDFLOWER_GIT_COMMIT");

pub const INPUTS_FILE: &str = "inputs.txt";
pub const POLICY_FILE: &str = "policy.json";

/// The input sources a run reads: the raw fragments and the reference tables.
const INPUT_PREFIXES: [&str; 2] = ["raw", "reference"];

fn sha256(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// Whether a run of `run_date` can read `path`: undated objects and partitions up to it.
fn readable_on(path: &str, run_date: NaiveDate) -> bool {
    let dated = path
        .split('/')
        .find_map(|part| part.strip_prefix("dt="))
        .and_then(|day| day.parse::<NaiveDate>().ok());
    dated.is_none_or(|day| day <= run_date)
}

/// Lists the objects a run of `run_date` can read into `folder/inputs.txt` (kept if a
/// resumed run's start already wrote it).
pub async fn record_inputs(
    store: &Store,
    run_date: NaiveDate,
    folder: &str,
) -> Result<(), AuditError> {
    let path = format!("{folder}/{INPUTS_FILE}");
    if store.get(&path).await?.is_some() {
        return Ok(());
    }
    let mut listing = String::new();
    for prefix in INPUT_PREFIXES {
        for (object, (bytes, modified, etag)) in store.list_described(prefix).await? {
            if readable_on(&object, run_date) {
                let etag = etag.as_deref().unwrap_or("-");
                let modified = modified.to_rfc3339();
                listing.push_str(&format!("{object}\t{bytes}\t{modified}\t{etag}\n"));
            }
        }
    }
    store.put(&path, listing.into_bytes().into()).await?;
    Ok(())
}

/// What a run publishes besides its rows, for [`capture`].
pub struct RunLineage<'a> {
    pub run_date: NaiveDate,
    pub run_id: &'a str,
    pub lease_holder: String,
    pub pipelines: &'a Pipelines,
    pub dictionary: &'a FeatureDictionary,
    pub model_version: &'a str,
    /// the decision records, already written to the run's folder (one file per user part)
    pub decisions: Vec<DataFile>,
    /// the features' as-of dates (training, then the run date)
    pub training_as_of: NaiveDate,
}

/// Copies the features of both as-of dates and the scores into the run's folder, where no
/// rerun of the date writes; returns them with their checksums.
async fn keep_outputs(
    store: &Store,
    run: &RunLineage<'_>,
    folder: &str,
) -> Result<Vec<DataFile>, AuditError> {
    let mut sources = Vec::new();
    for as_of in [run.training_as_of, run.run_date] {
        sources.extend(store.row_parts(&layout::features(as_of)).await?);
        sources.push(layout::feature_users_file(as_of));
    }
    sources.extend(store.row_parts(&layout::scores(run.run_date)).await?);
    let mut kept = Vec::new();
    for from in sources {
        let to = format!("{folder}/{from}");
        store.copy(&from, &to).await?;
        kept.push(crate::publish::data_file(store, &to).await?);
    }
    Ok(kept)
}

/// Copies the configuration into the run's folder and digests everything the version rests
/// on. The input listing must be there (`record_inputs` at the run's start).
pub async fn capture(store: &Store, run: RunLineage<'_>) -> Result<Lineage, AuditError> {
    let folder = layout::run_folder(run.run_date, run.run_id);
    let mut pipelines = Vec::new();
    for file in &run.pipelines.files {
        let path = format!("{folder}/pipelines/{}", file.name);
        store.put(&path, file.bytes.clone().into()).await?;
        pipelines.push(FileDigest {
            path: format!("pipelines/{}", file.name),
            bytes: file.bytes.len() as u64,
            sha256: sha256(&file.bytes),
        });
    }
    let policy_path = format!("{folder}/{POLICY_FILE}");
    let policy =
        serde_json::to_vec_pretty(&run.pipelines.policy).map_err(|e| AuditError::Record {
            path: policy_path.clone(),
            problem: e.to_string(),
        })?;
    store.put(&policy_path, policy.into()).await?;
    let listing_path = format!("{folder}/{INPUTS_FILE}");
    let listing = store
        .get(&listing_path)
        .await?
        .ok_or_else(|| AuditError::Record {
            path: listing_path.clone(),
            problem: "the run's input listing is missing (written when the run starts)".into(),
        })?;
    let text = String::from_utf8_lossy(&listing);
    let outputs = keep_outputs(store, &run, &folder).await?;
    let weights = layout::model_file(run.model_version, "weights.safetensors");
    let weights = store
        .get(&weights)
        .await?
        .ok_or_else(|| AuditError::Record {
            path: weights,
            problem: "the model's weights are missing".into(),
        })?;
    Ok(Lineage {
        code_version: CODE_VERSION.to_string(),
        git_commit: GIT_COMMIT.to_string(),
        run_id: run.run_id.to_string(),
        lease_holder: run.lease_holder,
        pipelines,
        dictionary_version: run.dictionary.version(),
        dictionary_hash: run.dictionary.prefix_hash(run.dictionary.len()),
        model_version: run.model_version.to_string(),
        model_weights_sha256: sha256(&weights),
        inputs: InputsDigest {
            objects: text.lines().count(),
            bytes: text
                .lines()
                .filter_map(|line| line.split('\t').nth(1)?.parse::<u64>().ok())
                .sum(),
            sha256: sha256(&listing),
            listing: listing_path,
        },
        run_folder: folder,
        decisions: run.decisions,
        outputs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_lists_undated_objects_and_partitions_up_to_its_date() {
        let day = NaiveDate::from_ymd_opt(2026, 11, 1).unwrap();
        assert!(readable_on("raw/_world.json", day));
        assert!(readable_on(
            "raw/events/dt=2026-11-01/part-00000.parquet",
            day
        ));
        assert!(!readable_on(
            "raw/events/dt=2026-11-02/part-00000.parquet",
            day
        ));
        assert!(readable_on(
            "reference/certificate_types/part-00000.parquet",
            day
        ));
    }
}
