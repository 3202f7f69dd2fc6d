//! A lease on one date's run, so two schedulers (or a retry fired while the first attempt is
//! still running) never run the same date at once.
//!
//! Leases live in the object store next to the run: `runs/<date>/lease/<generation>.json`.
//! Taking a lease is a create-only put of the next generation, so of two takers exactly one
//! wins. The holder renews its expiry while it works and marks the lease released when it
//! stops. A lease can be taken over when it is released, expired, or held by a process of
//! this host that no longer exists (a run killed with SIGKILL can be resumed at once on the
//! same machine; on another machine, after the lease expires).

use std::time::Duration;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::cause::{Cause, Classify};
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
}

impl Classify for LeaseError {
    fn cause(&self) -> Cause {
        match self {
            LeaseError::Store(e) => e.cause(),
            LeaseError::Held { .. } => Cause::Busy,
            // an unreadable lease record: once it expires the next run replaces it
            LeaseError::Record { .. } => Cause::Transient,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct LeaseRecord {
    host: String,
    pid: u32,
    acquired_at: String,
    /// milliseconds since the Unix epoch
    expires_at_ms: i64,
    released: bool,
}

impl LeaseRecord {
    fn owner(&self) -> String {
        format!("{} pid {}", self.host, self.pid)
    }

    /// Whether a new taker may take over from this record now.
    fn is_free(&self, now_ms: i64) -> bool {
        self.released
            || self.expires_at_ms <= now_ms
            || (self.host == host_name() && !process_alive(self.pid))
    }
}

/// A held lease; renewed in the background until `release`.
pub struct Lease {
    store: Store,
    path: String,
    record: LeaseRecord,
    renewer: JoinHandle<()>,
}

fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".into())
}

fn process_alive(pid: u32) -> bool {
    // Linux: a live process has /proc/<pid>; elsewhere assume alive and wait for expiry
    if cfg!(target_os = "linux") {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
    } else {
        true
    }
}

fn generation_path(folder: &str, generation: u64) -> String {
    format!("{folder}/{generation:010}.json")
}

/// Takes the lease under `folder` for `ttl`, renewing it every third of `ttl`.
pub async fn acquire(store: &Store, folder: &str, ttl: Duration) -> Result<Lease, LeaseError> {
    let newest = store
        .list(folder)
        .await?
        .into_iter()
        .filter_map(|(path, _)| {
            let stem = path.rsplit('/').next()?.strip_suffix(".json")?;
            Some((stem.parse::<u64>().ok()?, path))
        })
        .max();
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
    info!(lease = %path, "lease taken");
    let renewer = {
        let store = store.clone();
        let path = path.clone();
        let mut record = record.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(ttl / 3).await;
                record.expires_at_ms = Utc::now().timestamp_millis() + ttl.as_millis() as i64;
                let Ok(bytes) = encode(&record) else { return };
                if let Err(error) = store.put(&path, bytes.into()).await {
                    warn!(lease = %path, %error, "could not renew the lease");
                }
            }
        })
    };
    Ok(Lease {
        store: store.clone(),
        path,
        record,
        renewer,
    })
}

impl Lease {
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
    async fn an_expired_or_orphaned_lease_is_taken_over() {
        let store = Store::open("memory://lease-orphan").unwrap();
        let dead = LeaseRecord {
            host: host_name(),
            pid: u32::MAX, // no such process
            acquired_at: "then".into(),
            expires_at_ms: Utc::now().timestamp_millis() + 3_600_000,
            released: false,
        };
        store
            .put(&generation_path("l", 1), encode(&dead).unwrap().into())
            .await
            .unwrap();
        let expired = LeaseRecord {
            host: "elsewhere".into(),
            pid: 1,
            expires_at_ms: 0,
            ..dead.clone()
        };
        assert!(expired.is_free(Utc::now().timestamp_millis()));
        let alive_elsewhere = LeaseRecord {
            host: "elsewhere".into(),
            ..dead
        };
        assert!(!alive_elsewhere.is_free(Utc::now().timestamp_millis()));
        let lease = acquire(&store, "l", Duration::from_secs(60)).await.unwrap();
        lease.release().await.unwrap();
    }
}
