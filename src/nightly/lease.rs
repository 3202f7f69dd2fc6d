//! A lease on one date's run, so two schedulers (or a retry fired while the first attempt is
//! still running) never run the same date at once.
//!
//! Leases live in the object store next to the run: `runs/<date>/lease/<generation>.json`.
//! Taking a lease is a create-only put of the next generation, so of two takers exactly one
//! wins. The holder renews its expiry while it works and marks the lease released when it
//! stops. A lease can be taken over when it is released or expired, nothing else: holders
//! are told apart by a random id, since containers can share a hostname and a pid. A run
//! killed with SIGKILL is resumed once its lease expires (`--lease-seconds`).
//!
//! Fencing: the holder knows until when its last renewal holds the lease, and nobody can take
//! it over before then. [`Lease::check`] fails once that moment has passed (a holder paused
//! past expiry, renewals that kept failing) or once the renewer has seen a newer generation;
//! the run checks before every stage and right before its publish commits. What remains is
//! the gap between that last check and the commit's own put, a few milliseconds, which a
//! store without conditional writes on a fencing token cannot close.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::cause::{Cause, Classify};
#[cfg(test)]
use crate::store::layout;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "{folder} is held by {owner} since {acquired_at} (expires in {expires_in_s} s): another run of this date is in progress; if that process is gone, wait for the lease to expire"
    )]
    Held {
        folder: String,
        owner: String,
        acquired_at: String,
        expires_in_s: i64,
    },
    #[error("lease record {path}: {problem}")]
    Record { path: String, problem: String },
    #[error("{folder}: this run no longer holds the lease ({why}); it stops without publishing")]
    Lost { folder: String, why: String },
}

impl Classify for LeaseError {
    fn cause(&self) -> Cause {
        match self {
            LeaseError::Store(e) => e.cause(),
            LeaseError::Held { .. } | LeaseError::Lost { .. } => Cause::Busy,
            // an unreadable lease record: once it expires the next run replaces it
            LeaseError::Record { .. } => Cause::Transient,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct LeaseRecord {
    /// random, new for every taking: what tells two holders apart
    #[serde(default)]
    holder: String,
    /// for people reading the record
    host: String,
    pid: u32,
    acquired_at: String,
    /// milliseconds since the Unix epoch
    expires_at_ms: i64,
    released: bool,
}

impl LeaseRecord {
    fn owner(&self) -> String {
        format!("{} pid {} (holder {})", self.host, self.pid, self.holder)
    }

    /// Whether a new taker may take over from this record now.
    fn is_free(&self, now_ms: i64) -> bool {
        self.released || self.expires_at_ms <= now_ms
    }
}

/// A held lease; renewed in the background until `release`.
pub struct Lease {
    store: Store,
    folder: String,
    path: String,
    record: LeaseRecord,
    renewer: JoinHandle<()>,
    held: Arc<Held>,
}

/// What the holder and its renewer share.
struct Held {
    /// the expiry of the last renewal that reached the store, less a safety margin
    until_ms: AtomicI64,
    /// set by the renewer when it saw a newer generation or its lease expire
    lost: AtomicBool,
}

impl Held {
    fn why_lost(&self, now_ms: i64) -> Option<String> {
        if self.lost.load(Ordering::SeqCst) {
            return Some("another run took it over".into());
        }
        let until = self.until_ms.load(Ordering::SeqCst);
        (now_ms >= until)
            .then(|| format!("it was last renewed to expire {} ms ago", now_ms - until))
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".into())
}

/// A random holder id (128 bits, hex): the system's random bytes, with the clock and pid
/// mixed in where those cannot be read.
fn holder_id() -> String {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut random = [0u8; 16];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut random));
    let mut hasher = Sha256::new();
    hasher.update(random);
    hasher.update(read.is_ok().to_string());
    hasher.update(
        Utc::now()
            .timestamp_nanos_opt()
            .unwrap_or_default()
            .to_le_bytes(),
    );
    hasher.update(std::process::id().to_le_bytes());
    format!("{:x}", hasher.finalize())[..32].to_string()
}

/// The margin a holder keeps before its recorded expiry: its clock and a taker's may differ.
fn margin(ttl: Duration) -> i64 {
    (ttl.as_millis() / 10) as i64
}

/// The newest generation under `folder` and its record's path.
async fn newest_generation(
    store: &Store,
    folder: &str,
) -> Result<Option<(u64, String)>, LeaseError> {
    Ok(store
        .list(folder)
        .await?
        .into_iter()
        .filter_map(|(path, _)| {
            let stem = path.rsplit('/').next()?.strip_suffix(".json")?;
            Some((stem.parse::<u64>().ok()?, path))
        })
        .max())
}

fn generation_path(folder: &str, generation: u64) -> String {
    format!("{folder}/{generation:010}.json")
}

/// Takes the lease under `folder` for `ttl`, renewing it every third of `ttl`.
pub async fn acquire(store: &Store, folder: &str, ttl: Duration) -> Result<Lease, LeaseError> {
    let newest = newest_generation(store, folder).await?;
    let now_ms = Utc::now().timestamp_millis();
    let generation = match &newest {
        None => 1,
        Some((generation, path)) => {
            let record = read_record(store, path).await?;
            if !record.is_free(now_ms) {
                return Err(LeaseError::Held {
                    folder: format!("{}/{folder}", store.url()),
                    owner: record.owner(),
                    acquired_at: record.acquired_at,
                    expires_in_s: (record.expires_at_ms - now_ms) / 1000,
                });
            }
            if !record.released {
                warn!(folder, owner = %record.owner(), "taking over a lease its holder left behind");
            }
            generation + 1
        }
    };
    let record = LeaseRecord {
        holder: holder_id(),
        host: host_name(),
        pid: std::process::id(),
        acquired_at: Utc::now().to_rfc3339(),
        expires_at_ms: now_ms + ttl.as_millis() as i64,
        released: false,
    };
    let path = generation_path(folder, generation);
    match store.put_if_absent(&path, encode(&record)?.into()).await {
        Ok(()) => {}
        Err(StoreError::AlreadyExists { .. }) => {
            let winner = read_record(store, &path).await?;
            // a retried put whose first response was lost finds the record it wrote itself
            if winner != record {
                return Err(LeaseError::Held {
                    folder: format!("{}/{folder}", store.url()),
                    owner: winner.owner(),
                    acquired_at: winner.acquired_at,
                    expires_in_s: ttl.as_secs() as i64,
                });
            }
        }
        Err(e) => return Err(e.into()),
    }
    info!(lease = %path, holder = %record.holder, "lease taken");
    let held = Arc::new(Held {
        until_ms: AtomicI64::new(record.expires_at_ms - margin(ttl)),
        lost: AtomicBool::new(false),
    });
    let renewer = tokio::spawn(renew(
        store.clone(),
        folder.to_string(),
        (generation, path.clone()),
        record.clone(),
        ttl,
        held.clone(),
    ));
    Ok(Lease {
        store: store.clone(),
        folder: folder.to_string(),
        path,
        record,
        renewer,
        held,
    })
}

/// Renews the lease every third of `ttl` until it is lost: a newer generation appeared, or
/// the last renewal's expiry passed (a renewal after that would revive a lease that another
/// run may already hold).
async fn renew(
    store: Store,
    folder: String,
    (generation, path): (u64, String),
    mut record: LeaseRecord,
    ttl: Duration,
    held: Arc<Held>,
) {
    loop {
        tokio::time::sleep(ttl / 3).await;
        let now_ms = Utc::now().timestamp_millis();
        let taken_over = matches!(
            newest_generation(&store, &folder).await,
            Ok(Some((newest, _))) if newest > generation
        );
        if taken_over || held.why_lost(now_ms).is_some() {
            held.lost.store(true, Ordering::SeqCst);
            warn!(lease = %path, "lease lost: this run will stop before its next stage");
            return;
        }
        record.expires_at_ms = now_ms + ttl.as_millis() as i64;
        let Ok(bytes) = encode(&record) else { return };
        match store.put(&path, bytes.into()).await {
            Ok(()) => held
                .until_ms
                .store(record.expires_at_ms - margin(ttl), Ordering::SeqCst),
            Err(error) => warn!(lease = %path, %error, "could not renew the lease"),
        }
    }
}

impl Lease {
    /// Who holds the lease: host, pid and the holder's random id.
    pub fn holder(&self) -> String {
        self.record.owner()
    }

    /// Ok while this run still holds the lease; see the module's comment on fencing.
    pub fn check(&self) -> Result<(), LeaseError> {
        match self.held.why_lost(Utc::now().timestamp_millis()) {
            None => Ok(()),
            Some(why) => Err(LeaseError::Lost {
                folder: self.folder.clone(),
                why,
            }),
        }
    }

    /// Stops renewing without releasing: a holder stalled as by a long pause, for tests of
    /// what a lost lease stops.
    #[cfg(test)]
    pub(crate) fn stall(&self) {
        self.renewer.abort();
    }

    /// Stops renewing and marks the lease released, so the next run need not wait.
    pub async fn release(mut self) -> Result<(), LeaseError> {
        self.renewer.abort();
        self.record.released = true;
        self.store
            .put(&self.path, encode(&self.record)?.into())
            .await?;
        info!(lease = %self.path, "lease released");
        Ok(())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

fn encode(record: &LeaseRecord) -> Result<Vec<u8>, LeaseError> {
    serde_json::to_vec_pretty(record).map_err(|e| LeaseError::Record {
        path: String::new(),
        problem: e.to_string(),
    })
}

async fn read_record(store: &Store, path: &str) -> Result<LeaseRecord, LeaseError> {
    let bytes = store.get(path).await?.ok_or_else(|| LeaseError::Record {
        path: path.to_string(),
        problem: "vanished while reading".into(),
    })?;
    serde_json::from_slice(&bytes).map_err(|e| LeaseError::Record {
        path: path.to_string(),
        problem: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_taker_is_refused_until_the_first_releases() {
        let store = Store::open("memory://lease-test").unwrap();
        let first = acquire(&store, "runs/x/lease", Duration::from_secs(60))
            .await
            .unwrap();
        let refused = acquire(&store, "runs/x/lease", Duration::from_secs(60)).await;
        assert!(
            matches!(refused, Err(LeaseError::Held { .. })),
            "second taker got the lease"
        );
        first.release().await.unwrap();
        let second = acquire(&store, "runs/x/lease", Duration::from_secs(60))
            .await
            .unwrap();
        assert!(second.path.ends_with("0000000002.json"), "{}", second.path);
        second.release().await.unwrap();
    }

    #[tokio::test]
    async fn a_lease_whose_create_response_was_lost_is_still_taken() {
        let store = Store::open("memory://lease-lost-response").unwrap();
        let (lossy, counts) =
            store.with_faults(crate::store::faults::FaultPlan::LoseCreateResponses);
        let lease = acquire(&lossy, "runs/y/lease", Duration::from_secs(60))
            .await
            .expect("the retried create finds its own record");
        assert!(counts.injected.load(std::sync::atomic::Ordering::Relaxed) > 0);
        lease.release().await.unwrap();
    }

    #[tokio::test]
    async fn an_expired_lease_is_taken_over_and_a_dead_pid_alone_is_not_enough() {
        let store = Store::open("memory://lease-orphan").unwrap();
        let dead_here = LeaseRecord {
            holder: "someone".into(),
            host: host_name(),
            pid: u32::MAX, // no such process, on this very host
            acquired_at: "then".into(),
            expires_at_ms: Utc::now().timestamp_millis() + 3_600_000,
            released: false,
        };
        // a container beside this one can share the hostname and see no such pid: not free
        assert!(!dead_here.is_free(Utc::now().timestamp_millis()));
        let expired = LeaseRecord {
            expires_at_ms: 0,
            ..dead_here.clone()
        };
        assert!(expired.is_free(Utc::now().timestamp_millis()));
        store
            .put(&generation_path("l", 1), encode(&expired).unwrap().into())
            .await
            .unwrap();
        let lease = acquire(&store, "l", Duration::from_secs(60)).await.unwrap();
        assert_ne!(lease.record.holder, acquire_id_of(&store, 1).await);
        lease.release().await.unwrap();
    }

    async fn acquire_id_of(store: &Store, generation: u64) -> String {
        read_record(store, &generation_path("l", generation))
            .await
            .unwrap()
            .holder
    }

    /// A holder that stalls past its expiry (its renewals stop, as in a long GC pause or a
    /// SIGSTOP) is taken over, and from then on neither stages nor commits.
    #[tokio::test]
    async fn a_holder_paused_past_expiry_loses_the_lease_and_never_publishes() {
        let store = Store::open("memory://lease-fencing").unwrap();
        let ttl = Duration::from_millis(600);
        let first = acquire(&store, "f", ttl).await.unwrap();
        first.check().unwrap();
        first.renewer.abort(); // the pause
        tokio::time::sleep(ttl + Duration::from_millis(100)).await;
        let second = acquire(&store, "f", ttl).await.unwrap();
        assert!(matches!(first.check(), Err(LeaseError::Lost { .. })));
        assert_eq!(first.check().unwrap_err().cause(), Cause::Busy);

        let fence = || first.check().map_err(|e| e.to_string());
        let publication = crate::publish::Publication {
            as_of: chrono::NaiveDate::from_ymd_opt(2026, 11, 1).unwrap(),
            model_version: "m",
            policy_version: "p",
            run_id: Some("first"),
            lineage: None,
            fence: Some(&fence),
        };
        let config = crate::config::Pipelines::builtin().nightly.publish;
        let policy = crate::policy::LimitPolicy::builtin();
        let rows: Vec<crate::publish::LimitRow> = (1..=3)
            .map(|user_id| crate::publish::LimitRow {
                user_id,
                pd: 0.02,
                decision: policy.decide(0.02, &Default::default()),
                suggestions: Vec::new(),
            })
            .collect();
        let error = crate::publish::publish_gated(&store, &rows, &publication, &config, false)
            .await
            .unwrap_err();
        assert!(
            matches!(error, crate::publish::PublishError::Fenced(_)),
            "{error}"
        );
        assert!(crate::publish::latest(&store).await.unwrap().is_none());
        assert!(store.list(layout::PUBLISHED_DATA).await.unwrap().is_empty());
        // the holder that took over still holds it
        second.check().unwrap();
        second.release().await.unwrap();
    }

    /// The renewer sees a newer generation even while its own expiry has not passed (a clock
    /// that runs slow): the lease counts as lost from the next renewal on.
    #[tokio::test]
    async fn a_newer_generation_seen_by_the_renewer_loses_the_lease() {
        let store = Store::open("memory://lease-newer").unwrap();
        let ttl = Duration::from_millis(300);
        let lease = acquire(&store, "n", ttl).await.unwrap();
        let usurper = LeaseRecord {
            holder: "other".into(),
            ..lease.record.clone()
        };
        store
            .put(&generation_path("n", 2), encode(&usurper).unwrap().into())
            .await
            .unwrap();
        tokio::time::sleep(ttl / 3 + Duration::from_millis(100)).await;
        assert!(matches!(lease.check(), Err(LeaseError::Lost { .. })));
    }
}
