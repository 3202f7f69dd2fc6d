//! redflower recomputes consumer credit limits every night from fragmented evidence.
//!
//! The data flows one way, one module per stage:
//!
//! ```text
//! store      object storage roots (file://, s3://, memory://), retries, Parquet I/O
//! schema     the Arrow schema of every input and output (schemas/*.json)
//! sql        running a statement on a DataFusion session
//! synth      a deterministic synthetic world of raw fragments, with its true PD
//! sources    schema checks, quarantine of bad rows, clean tables for DataFusion
//! features   declarative families -> long sparse (user_id, feature_id, value) + dictionary
//! dataset    CSR rows and point-in-time labels
//! model      Burn wide & deep network: training, calibration, metrics, reports, registry
//! pipelines  the configuration files of a run and the DataFusion session they make
//! training   train / evaluate / compare workflows on a root's newest labelled window
//! table      bring-your-own-table training sets from Parquet or CSV
//! scoring    PD, scorecard points and reason codes for every user
//! limits     the limit policy: PD -> grade -> limit, certificate boosts, user caps, scenarios
//! suggestions what-if scoring: which certificate would raise a user's limit, and by how much
//! publish    versioned limit tables committed by a create-only manifest
//! nightly    the job that runs the stages in order, with checkpoints, a lease and shards
//! serve      the online read path: HTTP lookups by user id, following new versions
//! sink       loading a published table into Redis with versioned keys and a switch
//! ```
//!
//! A downstream module may use an upstream one's types, never the reverse.

pub mod dataset;
pub mod features;
pub mod limits;
pub mod model;
pub mod nightly;
pub mod pipelines;
pub mod publish;
pub mod schema;
pub mod scoring;
mod serde_date;
pub mod serve;
pub mod sink;
pub mod sources;
pub mod sql;
pub mod store;
pub mod suggestions;
pub mod synth;
pub mod table;
pub mod training;
