//! Applying erasures to data already derived: every feature, score and quarantine file, every
//! retained published table and its run's decision records, rewritten without the users whose
//! erasure requests (`crate::erasure`) are not yet applied; then the requests are marked
//! applied. New runs never read erased users at all; this is for what came before the request.

use std::collections::{BTreeSet, HashSet};

use serde::Serialize;
use tracing::info;

use super::AuditError;
use crate::erasure;
use crate::publish::{self, PublishedErasure};
use crate::store::Store;

/// The run outputs that hold users' rows. What a retained version names is rewritten first,
/// into new files its manifest then names (`publish::erase`); what is left under `runs/` is
/// a run's that never published (killed between writing its records and its commit).
const DERIVED: [&str; 4] = ["features", "scores", "quarantine", "runs"];

/// What an application of erasures did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Erased {
    /// who was erased: kept out of reports (only the erasure records name them)
    #[serde(skip)]
    pub users: BTreeSet<u64>,
    pub user_count: usize,
    pub files_rewritten: usize,
    pub rows_removed: usize,
    pub published: PublishedErasure,
}

/// Rewrites the derived data without every erased user whose request is pending; nothing to
/// do (and nothing read) when none is.
pub async fn apply(store: &Store) -> Result<Erased, AuditError> {
    let pending = erasure::pending(store).await?;
    if pending.is_empty() {
        return Ok(Erased::default());
    }
    let mut done = Erased {
        users: pending.clone(),
        user_count: pending.len(),
        ..Erased::default()
    };
    done.published = publish::erase(store, &pending).await?;
    // what the retained versions name was just rewritten; read it again for nothing
    let versions = publish::versions(store).await?;
    let named: HashSet<&str> = versions
        .iter()
        .flat_map(|m| m.data_files().map(|f| f.path.as_str()))
        .collect();
    for prefix in DERIVED {
        for (path, _) in store.list(prefix).await? {
            if !path.ends_with(".parquet") || named.contains(path.as_str()) {
                continue;
            }
            let removed = erasure::rewrite_file(store, &path, &path, &pending).await?;
            if removed > 0 {
                done.files_rewritten += 1;
                done.rows_removed += removed;
            }
        }
    }
    erasure::mark_applied(store, &pending).await?;
    info!(
        users = pending.len(),
        files = done.files_rewritten,
        rows = done.rows_removed,
        "erasures applied"
    );
    Ok(done)
}
