//! `explain`: the audit record behind one user's published limit on one version — the row
//! as served, the policy's steps replayed from the run's decision record and its effective
//! policy (and whether the replay gives the published limit), the model's reasons with the
//! feature values behind them, the certificates counted, and the version's lineage.

use chrono::NaiveDate;
use serde::Serialize;

use super::records::{self, DecisionRecord};
use super::{AuditError, lineage::POLICY_FILE};
use crate::policy::{HeldCertificate, LimitPolicy, PolicyStep};
use crate::publish::{self, LimitAnswer, Lineage, Manifest, Snapshot};
use crate::store::{Store, layout};

/// Which published version to explain.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Which {
    Latest,
    Version(u64),
    /// the newest version published for this date
    Date(NaiveDate),
}

/// Everything `explain` says about one user on one version.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub user_id: u64,
    pub version: u64,
    #[serde(with = "crate::serde_date")]
    pub as_of: NaiveDate,
    pub published_at: String,
    /// set when this version is a rollback to an older version's table
    pub rollback_of: Option<u64>,
    /// the row as readers were served it
    pub published: LimitAnswer,
    /// absent for versions published before decision records were kept
    pub record: Option<DecisionRecord>,
    /// the policy's steps, replayed on the record with the run's own policy
    pub steps: Vec<PolicyStep>,
    /// the certificates that gave a boost
    pub certificates_counted: Vec<HeldCertificate>,
    /// the replayed limit equals the published one (None without a record)
    pub replay_matches: Option<bool>,
    pub lineage: Option<Lineage>,
}

async fn manifest_for(store: &Store, which: Which) -> Result<Manifest, AuditError> {
    let versions = publish::versions(store).await?;
    let found = match which {
        Which::Latest => versions.last(),
        Which::Version(v) => versions.iter().find(|m| m.version == v),
        Which::Date(day) => versions.iter().rev().find(|m| m.as_of == day),
    };
    let retained = || {
        let listed: Vec<String> = versions.iter().map(|m| m.version.to_string()).collect();
        match listed.is_empty() {
            true => "nothing is published".to_string(),
            false => format!("retained versions: {}", listed.join(", ")),
        }
    };
    found.cloned().ok_or_else(|| {
        AuditError::NotFound(match which {
            Which::Latest => format!("nothing is published under {}", store.url()),
            Which::Version(v) => format!("no version {v} under {} ({})", store.url(), retained()),
            Which::Date(d) => format!(
                "no version published for {d} under {} ({})",
                store.url(),
                retained()
            ),
        })
    })
}

/// The policy a run decided with, from its folder.
async fn run_policy(store: &Store, lineage: &Lineage) -> Result<LimitPolicy, AuditError> {
    let path = format!("{}/{POLICY_FILE}", lineage.run_folder);
    let bytes = store.get(&path).await?.ok_or_else(|| AuditError::Record {
        path: path.clone(),
        problem: "the run's policy is gone".into(),
    })?;
    serde_json::from_slice(&bytes).map_err(|e| AuditError::Record {
        path,
        problem: e.to_string(),
    })
}

/// The audit record of `user_id` on the version `which` names.
pub async fn explain(store: &Store, user_id: u64, which: Which) -> Result<Explanation, AuditError> {
    let manifest = manifest_for(store, which).await?;
    let version = manifest.version;
    let snapshot =
        Snapshot::load(store, manifest.clone())
            .await
            .map_err(|e| AuditError::Record {
                path: layout::manifest(version),
                problem: e.to_string(),
            })?;
    let published = snapshot.answer(user_id).ok_or_else(|| {
        AuditError::NotFound(format!(
            "user {user_id} is not in version {version} (as of {}, {} users)",
            manifest.as_of,
            snapshot.len()
        ))
    })?;
    let mut explained = Explanation {
        user_id,
        version,
        as_of: manifest.as_of,
        published_at: manifest.published_at.clone(),
        rollback_of: manifest.rollback_of,
        published,
        record: None,
        steps: Vec::new(),
        certificates_counted: Vec::new(),
        replay_matches: None,
        lineage: manifest.lineage.clone(),
    };
    let Some(lineage) = &manifest.lineage else {
        return Ok(explained);
    };
    let no_record = |path: &str| AuditError::Record {
        path: path.to_string(),
        problem: format!("no record of user {user_id}, who is in version {version}"),
    };
    let file = records::file_of(&lineage.decisions, user_id)
        .ok_or_else(|| no_record(&layout::manifest(version)))?;
    let record = records::read_user(store, file, version, user_id)
        .await?
        .ok_or_else(|| no_record(&file.path))?;
    let policy = run_policy(store, lineage).await?;
    let (decision, steps) = policy.trace(record.pd, &record.facts);
    let boosted: Vec<String> = decision.reasons.iter().map(|r| r.to_string()).collect();
    explained.certificates_counted = record
        .facts
        .certificates
        .iter()
        .filter(|c| boosted.contains(&format!("certificate_boost:{}:{}", c.family, c.name)))
        .cloned()
        .collect();
    explained
        .certificates_counted
        .sort_by_key(|c| c.cert_type_id);
    explained
        .certificates_counted
        .dedup_by_key(|c| c.cert_type_id);
    explained.replay_matches = Some(decision.credit_limit == explained.published.credit_limit);
    explained.steps = steps;
    explained.record = Some(record);
    Ok(explained)
}
