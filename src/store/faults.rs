//! Fault injection for tests and drills: an `ObjectStore` that fails some of the calls made
//! to the store it wraps, the way a flaky network or an S3 brown-out would, loses the
//! response of a write that happened, or hands back damaged bytes. `Store::with_faults` puts
//! it under the retry layer, so a run sees exactly what production would see.

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
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn ObjectStore>, plan: FaultPlan, counts: Arc<FaultCounts>) -> Self {
        FaultyStore {
            inner,
            plan,
            counts,
            seen: Mutex::default(),
        }
    }

    /// Counts the call and decides whether it fails.
    fn check(&self, operation: &str, location: &str) -> Result<()> {
        let n = self.counts.calls.fetch_add(1, Ordering::Relaxed) + 1;
        let fail = match self.plan {
            FaultPlan::EveryNth(every) => every > 0 && n % every == 0,
            FaultPlan::OutageAfter(after) => n > after,
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
        self.check("put", location.as_ref())?;
        let create = matches!(opts.mode, PutMode::Create);
        let result = self.inner.put_opts(location, payload, opts).await?;
        if create && self.plan == FaultPlan::LoseCreateResponses && self.first_time(location) {
            let n = self.counts.calls.load(Ordering::Relaxed);
            return Err(self.injected(n, "response of create", location.as_ref()));
        }
        Ok(result)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.check("put_multipart", location.as_ref())?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
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
        self.check("list_with_delimiter", prefix.map_or("", |p| p.as_ref()))?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.check("copy", from.as_ref())?;
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.check("rename", from.as_ref())?;
        self.inner.rename_opts(from, to, options).await
    }
}
