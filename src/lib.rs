//! redflower recomputes consumer credit limits every night from fragmented evidence.
//!
//! The data flows one way, one module per stage:
//!
//! ```text
//! store      object storage roots (file://, memory://) and Parquet I/O
//! schema     the Arrow schema of every input and output (schemas/*.json)
//! sql        running a statement on a DataFusion session
//! synth      a deterministic synthetic world of raw fragments, with its true PD
//! sources    schema checks, quarantine of bad rows, clean tables for DataFusion
//! features   declarative families -> long sparse (user_id, feature_id, value) + dictionary
//! dataset    CSR rows and point-in-time labels
//! model      Burn sparse logistic model: training, metrics, versioned artifacts
//! limits     the limit policy: PD -> grade -> limit, certificate boosts, user caps
//! publish    versioned limit tables committed by a create-only manifest
//! nightly    the job that runs the stages in order and reports
//! ```
//!
//! A downstream module may use an upstream one's types, never the reverse.

pub mod dataset;
pub mod features;
pub mod limits;
pub mod model;
pub mod nightly;
pub mod publish;
pub mod schema;
mod serde_date;
pub mod sources;
pub mod sql;
pub mod store;
pub mod synth;
