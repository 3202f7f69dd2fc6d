//! redflower recomputes consumer credit limits every night from fragmented evidence.
//!
//! The data flows one way. Modules are listed in layer order: a module may use the modules
//! above it, never one below (`tests/it/architecture.rs` holds the crate to this).
//!
//! ```text
//! cause       why a command failed, as a scheduler acts on it (the exit codes)
//! serde_date  dates in JSON
//! user_index  where a user id sits in a list of users (population, table rows)
//! spill       query results set aside by user part on local disk, read back a part at a time
//! store       object storage roots (file://, s3://, memory://), retries, Parquet I/O, and
//!             `store::layout`: every object path of a root
//! erasure     users who withdrew consent: create-only requests every stage leaves out
//! schema      the Arrow schema of every input and output (schemas/*.json)
//! engine      DataFusion sessions (local or Ballista), running a statement, error causes
//! cluster     this machine's part of a Ballista cluster: `cluster scheduler` / `executor`
//! synth       a deterministic synthetic world of raw fragments, with its true PD
//! sources     schema checks, quarantine of bad rows, clean tables for DataFusion
//! features    declarative families -> long sparse (user_id, feature_id, value) + dictionary
//! dataset     CSR rows and point-in-time labels
//! model       Burn wide & deep network: training, calibration, metrics, reports, registry
//! scoring     PD, scorecard points and reason codes for every user
//! policy      the limit policy: PD -> grade -> limit, certificate boosts, user caps,
//!             scenarios, fraud checks, and the inputs it weighs
//! suggestions what-if scoring: which certificate would raise a user's limit, and by how much
//! publish     versioned limit tables committed by a create-only manifest; the table's row
//!             codec and the in-memory snapshot both read paths answer from
//! config      the configuration files of a run (`pipelines/`)
//! audit       what a published version rests on (lineage), every user's decision record,
//!             and `explain`, which replays one user's limit from them
//! training    train / evaluate / compare workflows on a root's newest labelled window
//! table       your own table: its encoding stored with the model, small-data training by
//!             cross-validation, scoring another table with it
//! nightly     the job that runs the stages in order, with checkpoints, a lease and shards
//! serve       the online read path: HTTP lookups by user id, following new versions
//! sink        loading a published table into Redis with versioned keys and a switch
//! ```
//!
//! raw/ -> sources -> features -> dataset -> model -> scoring -> policy (+ suggestions) ->
//! publish -> serve / sink. The `redflower` binary (`src/bin/redflower/`) parses arguments,
//! calls these modules and turns an error's `Cause` into the exit code.

// One declaration a paragraph: rustfmt would sort a block of them, and their order is the
// layer order.

pub mod cause;

mod serde_date;

pub mod user_index;

pub mod spill;

pub mod store;

pub mod erasure;

pub mod schema;

pub mod engine;

pub mod cluster;

pub mod synth;

pub mod sources;

pub mod features;

pub mod dataset;

pub mod model;

pub mod scoring;

pub mod policy;

pub mod suggestions;

pub mod publish;

pub mod config;

pub mod audit;

pub mod training;

pub mod table;

pub mod nightly;

pub mod serve;

pub mod sink;
