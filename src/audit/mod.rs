//! The audit trail behind a published limit: what a version rests on (`lineage`), every
//! user's decision record (`records`), and `explain`, which answers "why is my limit 3,000?"
//! for any user of any retained version by replaying the policy on that record; and `erase`,
//! which rewrites data already derived without users who withdrew consent.
//!
//! Owns each run's own folder, `runs/<date>/run=<id>/` (`layout::run_folder`): the nightly
//! run writes it before its publish commits and never after, so a rerun of a date gets a
//! folder of its own and an older version keeps the record it was published with. Publish
//! retention is the only deleter. Reads the published tables and the model registry.

pub mod erase;
pub mod explain;
pub mod lineage;
pub mod records;

pub use explain::{Explanation, Which, explain};
pub use lineage::{CODE_VERSION, GIT_COMMIT};
pub use records::{DecisionRecord, ModelReason};

use crate::cause::{Cause, Classify};
use crate::model::ModelError;
use crate::publish::PublishError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Erasure(#[from] crate::erasure::ErasureError),
    #[error("decision records: {0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    /// a record the run wrote that does not read back as written
    #[error("{path}: {problem}")]
    Record { path: String, problem: String },
    #[error("{0}")]
    NotFound(String),
}

impl Classify for AuditError {
    fn cause(&self) -> Cause {
        match self {
            AuditError::Store(e) => e.cause(),
            AuditError::Publish(e) => e.cause(),
            AuditError::Model(e) => e.cause(),
            AuditError::Erasure(e) => e.cause(),
            AuditError::Arrow(_) | AuditError::Record { .. } => Cause::Input,
            // a user, version or date that is not there: the question asked is wrong
            AuditError::NotFound(_) => Cause::Configuration,
        }
    }
}
