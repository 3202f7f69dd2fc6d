//! Retries with exponential backoff for transient object-store errors. Every `Store` reads and
//! writes through a `RetryingStore`, and so does DataFusion (the root is registered with it),
//! so a dropped connection or a 503 from S3 costs a short wait, not the night's run.
//!
//! Only errors that can go away are retried (`Generic`, which carries I/O and HTTP failures,
//! and `JoinError`); a missing object, an existing one on a create-only put, a bad path or a
//! refused credential fail at once. Streams are retried only before their first item: a
//! listing that fails halfway is listed again from the start, a download that fails halfway
//! is not resumed (the caller's read fails and the run fails cleanly).

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};
use tracing::warn;

/// How often and how patiently a failed call is tried again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// tries in all, the first included
    pub attempts: u32,
    /// wait before the second try; doubled each time, with up to 50% random jitter
    pub first_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 6,
            first_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    fn delay(&self, retry: u32) -> Duration {
        let base = self
            .first_delay
            .saturating_mul(1 << retry.min(16))
            .min(self.max_delay);
        let jitter = rand::random::<f64>() * 0.5;
        base.mul_f64(1.0 + jitter)
    }
}

/// Whether an error can go away by trying again.
pub fn is_transient(error: &object_store::Error) -> bool {
    matches!(
        error,
        object_store::Error::Generic { .. } | object_store::Error::JoinError { .. }
    )
}

/// An `ObjectStore` that retries transient failures of the one it wraps.
#[derive(Debug)]
pub struct RetryingStore {
    inner: Arc<dyn ObjectStore>,
    policy: RetryPolicy,
    retries: Arc<AtomicU64>,
}

impl RetryingStore {
    pub fn new(inner: Arc<dyn ObjectStore>, policy: RetryPolicy) -> RetryingStore {
        RetryingStore {
            inner,
            policy,
            retries: Arc::default(),
        }
    }

    /// Calls retried so far (each extra try counts once).
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    async fn retry<T, F, Fut>(&self, operation: &str, location: &str, mut call: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let mut attempt = 1;
        loop {
            match call().await {
                Err(error) if is_transient(&error) && attempt < self.policy.attempts => {
                    let delay = self.policy.delay(attempt - 1);
                    warn!(operation, location, attempt, ?delay, %error, "transient object-store error; retrying");
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    /// A listing, retried from the start while it fails before yielding anything. Later
    /// failures are retried too, by listing again and skipping what was already yielded
    /// (listings are collected, so the skip is exact).
    fn retry_list(
        &self,
        list: impl Fn() -> BoxStream<'static, Result<ObjectMeta>> + Send + Sync + 'static,
        location: String,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let policy = self.policy;
        let retries = self.retries.clone();
        futures::stream::once(async move {
            let mut attempt = 1;
            loop {
                let collected: Result<Vec<ObjectMeta>> =
                    futures::TryStreamExt::try_collect(list()).await;
                match collected {
                    Err(error) if is_transient(&error) && attempt < policy.attempts => {
                        let delay = policy.delay(attempt - 1);
                        warn!(operation = "list", location, attempt, ?delay, %error, "transient object-store error; retrying");
                        retries.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(delay).await;
                        attempt += 1;
                    }
                    Err(error) => return futures::stream::iter(vec![Err(error)]),
                    Ok(all) => return futures::stream::iter(all.into_iter().map(Ok).collect::<Vec<_>>()),
                }
            }
        })
        .flatten()
        .boxed()
    }
}

impl std::fmt::Display for RetryingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Retrying({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for RetryingStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.retry("put", location.as_ref(), || {
            self.inner.put_opts(location, payload.clone(), opts.clone())
        })
        .await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.retry("put_multipart", location.as_ref(), || {
            self.inner.put_multipart_opts(location, opts.clone())
        })
        .await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.retry("get", location.as_ref(), || {
            self.inner.get_opts(location, options.clone())
        })
        .await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.retry("get_ranges", location.as_ref(), || {
            self.inner.get_ranges(location, ranges)
        })
        .await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let inner = self.inner.clone();
        let policy = self.policy;
        let retries = self.retries.clone();
        locations
            .then(move |location| {
                let store = RetryingStore {
                    inner: inner.clone(),
                    policy,
                    retries: retries.clone(),
                };
                async move {
                    let location = location?;
                    let name = location.to_string();
                    store
                        .retry("delete", &name, || {
                            let one = futures::stream::iter([Ok(location.clone())]).boxed();
                            let mut deleted = store.inner.delete_stream(one);
                            let fallback = location.clone();
                            async move { deleted.next().await.unwrap_or(Ok(fallback)) }
                        })
                        .await
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let inner = self.inner.clone();
        let prefix = prefix.cloned();
        let location = prefix.as_ref().map_or(String::new(), |p| p.to_string());
        self.retry_list(move || inner.list(prefix.as_ref()), location)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let inner = self.inner.clone();
        let prefix = prefix.cloned();
        let offset = offset.clone();
        let location = prefix.as_ref().map_or(String::new(), |p| p.to_string());
        self.retry_list(
            move || inner.list_with_offset(prefix.as_ref(), &offset),
            location,
        )
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let location = prefix.map_or(String::new(), |p| p.to_string());
        self.retry("list_with_delimiter", &location, || {
            self.inner.list_with_delimiter(prefix)
        })
        .await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.retry("copy", from.as_ref(), || {
            self.inner.copy_opts(from, to, options.clone())
        })
        .await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.retry("rename", from.as_ref(), || {
            self.inner.rename_opts(from, to, options.clone())
        })
        .await
    }
}
