//! Fault injection for tests and drills: an `ObjectStore` that fails some of the calls made
//! to the store it wraps, the way a flaky network or an S3 brown-out would, loses the
//! response of a write that happened, or hands back damaged bytes. `Store::with_faults` puts
//! it under the retry layer, so a run sees exactly what production would see. The binary
//! takes a plan from `REDFLOWER_FAULTS` (see [`RandomFaults::parse`]), for drills.

use std::collections::HashSet;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
    Result,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Which calls fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPlan {
    /// every `n`-th call fails once (a flaky network: retries get through)
    EveryNth(u64),
    /// every call after the first `n` fails (an outage: the run must fail cleanly)
    OutageAfter(u64),
    /// a create-only put writes, then its response is lost once (the caller retries and
    /// finds the object it wrote)
    LoseCreateResponses,
    /// the first read of an object is whole; every later read of it has one byte flipped
    /// (a corrupting cache or network between two reads)
    DamageRereads,
    /// seeded random errors, lost write responses and latency, and maybe an outage
    Random(RandomFaults),
}

/// A seeded mix of what a bad night on the network looks like, for the chaos drill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RandomFaults {
    pub seed: u64,
    /// calls that fail before reaching the store, per thousand
    pub errors_per_mille: u32,
    /// puts that write and then lose their response, per thousand
    pub lost_per_mille: u32,
    /// each call first waits a random 0..=latency_ms milliseconds
    pub latency_ms: u32,
    /// every call after this many fails (the run must fail cleanly and resume)
    pub outage_after: Option<u64>,
}

impl RandomFaults {
    /// Reads `seed=7,errors=20,lost=10,latency_ms=1,outage_after=900` (every key optional;
    /// errors and lost per thousand calls). The error names the key that is wrong.
    pub fn parse(spec: &str) -> Result<RandomFaults, String> {
        let mut faults = RandomFaults {
            seed: 0,
            errors_per_mille: 0,
            lost_per_mille: 0,
            latency_ms: 0,
            outage_after: None,
        };
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("'{part}' is not key=value"))?;
            let number = |max: u64| {
                value
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n <= max)
                    .ok_or_else(|| {
                        format!("{key} must be a whole number up to {max}, not '{value}'")
                    })
            };
            match key {
                "seed" => faults.seed = number(u64::MAX)?,
                "errors" => faults.errors_per_mille = number(1000)? as u32,
                "lost" => faults.lost_per_mille = number(1000)? as u32,
                "latency_ms" => faults.latency_ms = number(10_000)? as u32,
                "outage_after" => faults.outage_after = Some(number(u64::MAX)?),
                _ => {
                    return Err(format!(
                        "unknown key '{key}' (seed, errors, lost, latency_ms, outage_after)"
                    ));
                }
            }
        }
        Ok(faults)
    }
}

/// Counts shared between a faulty store and whoever watches it.
#[derive(Debug, Default)]
pub struct FaultCounts {
    pub calls: AtomicU64,
    pub injected: AtomicU64,
}

#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    plan: FaultPlan,
    counts: Arc<FaultCounts>,
    /// objects read (`DamageRereads`) or created (`LoseCreateResponses`) once already
    seen: Mutex<HashSet<Path>>,
    /// draws for `FaultPlan::Random`
    rng: Mutex<ChaCha8Rng>,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn ObjectStore>, plan: FaultPlan, counts: Arc<FaultCounts>) -> Self {
        let seed = match plan {
            FaultPlan::Random(random) => random.seed,
            _ => 0,
        };
        FaultyStore {
            inner,
            plan,
            counts,
            seen: Mutex::default(),
            rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)),
        }
    }

    /// True with probability `per_mille` / 1000, from the plan's seeded generator.
    fn draw(&self, per_mille: u32) -> bool {
        per_mille > 0
            && self
                .rng
                .lock()
                .is_ok_and(|mut rng| rng.random_range(0..1000) < per_mille)
    }

    /// The random plan's wait before a call.
    async fn delay(&self) {
        let FaultPlan::Random(random) = self.plan else {
            return;
        };
        if random.latency_ms == 0 {
            return;
        }
        let micros = self
            .rng
            .lock()
            .map_or(0, |mut rng| rng.random_range(0..=random.latency_ms * 1000));
        tokio::time::sleep(std::time::Duration::from_micros(micros.into())).await;
    }

    /// Counts the call and decides whether it fails.
    fn check(&self, operation: &str, location: &str) -> Result<()> {
        let n = self.counts.calls.fetch_add(1, Ordering::Relaxed) + 1;
        let fail = match self.plan {
            FaultPlan::EveryNth(every) => every > 0 && n.is_multiple_of(every),
            FaultPlan::OutageAfter(after) => n > after,
            FaultPlan::Random(random) => {
                random.outage_after.is_some_and(|after| n > after)
                    || self.draw(random.errors_per_mille)
            }
            FaultPlan::LoseCreateResponses | FaultPlan::DamageRereads => false,
        };
        if fail {
            return Err(self.injected(n, operation, location));
        }
        Ok(())
    }

    fn injected(&self, n: u64, operation: &str, location: &str) -> object_store::Error {
        self.counts.injected.fetch_add(1, Ordering::Relaxed);
        object_store::Error::Generic {
            store: "fault-injection",
            source: format!("injected fault #{n}: {operation} {location}").into(),
        }
    }

    /// True the first time `location` is seen, false after.
    fn first_time(&self, location: &Path) -> bool {
        self.seen
            .lock()
            .map_or(true, |mut seen| seen.insert(location.clone()))
    }

    /// `bytes` with its middle byte flipped, counted as an injected fault.
    fn damaged(&self, bytes: Bytes) -> Bytes {
        self.counts.injected.fetch_add(1, Ordering::Relaxed);
        let mut bytes = bytes.to_vec();
        let middle = bytes.len() / 2;
        if let Some(byte) = bytes.get_mut(middle) {
            *byte ^= 0xff;
        }
        Bytes::from(bytes)
    }
}

impl std::fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Faulty({:?}, {})", self.plan, self.inner)
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.delay().await;
        self.check("put", location.as_ref())?;
        let create = matches!(opts.mode, PutMode::Create);
        let result = self.inner.put_opts(location, payload, opts).await?;
        let lost = match self.plan {
            FaultPlan::LoseCreateResponses => create && self.first_time(location),
            FaultPlan::Random(random) => self.draw(random.lost_per_mille),
            _ => false,
        };
        if lost {
            let n = self.counts.calls.load(Ordering::Relaxed);
            return Err(self.injected(n, "response of put", location.as_ref()));
        }
        Ok(result)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.delay().await;
        self.check("put_multipart", location.as_ref())?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.delay().await;
        self.check("get", location.as_ref())?;
        let head = options.head;
        let result = self.inner.get_opts(location, options).await?;
        if head || self.plan != FaultPlan::DamageRereads || self.first_time(location) {
            return Ok(result);
        }
        let (meta, range, attributes) = (
            result.meta.clone(),
            result.range.clone(),
            result.attributes.clone(),
        );
        let damaged = self.damaged(result.bytes().await?);
        Ok(GetResult {
            payload: GetResultPayload::Stream(futures::stream::once(async { Ok(damaged) }).boxed()),
            meta,
            range,
            attributes,
        })
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.delay().await;
        self.check("get_ranges", location.as_ref())?;
        let parts = self.inner.get_ranges(location, ranges).await?;
        if self.plan != FaultPlan::DamageRereads || self.first_time(location) {
            return Ok(parts);
        }
        Ok(parts.into_iter().map(|part| self.damaged(part)).collect())
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        match self.check("delete", "") {
            Ok(()) => self.inner.delete_stream(locations),
            Err(error) => futures::stream::iter([Err(error)]).boxed(),
        }
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        match self.check("list", prefix.map_or("", |p| p.as_ref())) {
            Ok(()) => self.inner.list(prefix),
            Err(error) => futures::stream::iter([Err(error)]).boxed(),
        }
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.delay().await;
        self.check("list_with_delimiter", prefix.map_or("", |p| p.as_ref()))?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.delay().await;
        self.check("copy", from.as_ref())?;
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.delay().await;
        self.check("rename", from.as_ref())?;
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;

    use super::*;

    #[test]
    fn a_fault_spec_reads_back_and_a_wrong_one_is_named() {
        let faults =
            RandomFaults::parse("seed=7, errors=20,lost=1000,latency_ms=1,outage_after=9").unwrap();
        assert_eq!(
            faults,
            RandomFaults {
                seed: 7,
                errors_per_mille: 20,
                lost_per_mille: 1000,
                latency_ms: 1,
                outage_after: Some(9),
            }
        );
        let error = RandomFaults::parse("errors=2000").unwrap_err();
        assert!(error.contains("errors"), "{error}");
        let error = RandomFaults::parse("lose=1").unwrap_err();
        assert!(error.contains("unknown key 'lose'"), "{error}");
    }

    #[tokio::test]
    async fn random_faults_lose_the_responses_of_writes_that_happened_and_end_in_an_outage() {
        let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let plan = RandomFaults {
            lost_per_mille: 1000,
            outage_after: Some(2),
            ..RandomFaults::parse("seed=3").unwrap()
        };
        let counts = Arc::new(FaultCounts::default());
        let faulty = FaultyStore::new(inner.clone(), FaultPlan::Random(plan), counts.clone());
        let path = Path::from("a/b");
        // call 1: the write happens, its response is lost
        assert!(faulty.put(&path, PutPayload::from("x")).await.is_err());
        assert_eq!(inner.get(&path).await.unwrap().bytes().await.unwrap(), "x");
        // call 2 reads it; every call after the second fails
        assert!(faulty.get(&path).await.is_ok());
        assert!(faulty.get(&path).await.is_err());
        assert_eq!(counts.injected.load(Ordering::Relaxed), 2);
    }
}
