//! Object storage for every stage: one `Store` is a root URL (`file://`, a plain path,
//! `s3://bucket/prefix` or `memory://name`) under which redflower keeps `raw/`, `features/`, `models/`, `published/` ...
//!
//! It owns URL parsing, Parquet reads and writes, and the registration of the root with a
//! DataFusion session. It knows nothing about what the files mean; the stages decide paths.
//! Every call, DataFusion's included, goes through `retry` (backoff on transient errors);
//! `faults` injects failures under that layer for tests and drills.

pub mod faults;
pub mod keys;
pub mod layout;
pub mod retry;

pub use keys::{EncryptionConfig, Keyring};

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::prelude::SessionContext;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
// Deprecated in parquet 59 in favour of hand-written AsyncFileReader impls; it still reads
// footers and row groups with ranged gets, which is what we want from object stores.
use object_store::buffered::BufWriter;
use parquet::arrow::arrow_reader::{ArrowReaderOptions, ParquetRecordBatchReaderBuilder};
#[allow(deprecated)]
use parquet::arrow::async_reader::ParquetObjectReader;
use parquet::arrow::async_reader::ParquetRecordBatchStreamBuilder;
use parquet::arrow::async_writer::AsyncArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use url::Url;

use crate::cause::{Cause, Classify};

use faults::{FaultCounts, FaultPlan, FaultyStore, RandomFaults};

/// The environment variable that turns on fault injection in the binary (drills only).
pub const FAULTS_ENV: &str = "REDFLOWER_FAULTS";
use retry::{RetryPolicy, RetryingStore};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "unsupported storage URL '{0}': use a local path, file:///abs/path, s3://bucket/prefix or memory://name"
    )]
    UnsupportedUrl(String),
    #[error("cannot open '{url}': {source}")]
    Configure {
        url: String,
        source: object_store::Error,
    },
    #[error("cannot create local root '{path}': {source}")]
    LocalRoot {
        path: String,
        source: std::io::Error,
    },
    #[error("object store error at '{path}': {source}")]
    Object {
        path: String,
        source: object_store::Error,
    },
    #[error("Parquet error in '{path}': {source}")]
    Parquet {
        path: String,
        source: parquet::errors::ParquetError,
    },
    #[error("'{path}' already exists")]
    AlreadyExists { path: String },
    #[error(
        "'{path}' is encrypted and cannot be read: {problem} (give its key: [encryption] keys in nightly.toml, by default the REDFLOWER_DATA_KEYS variable)"
    )]
    Encrypted { path: String, problem: String },
    #[error("{FAULTS_ENV}: {0}")]
    FaultSpec(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl Classify for StoreError {
    fn cause(&self) -> Cause {
        match self {
            StoreError::UnsupportedUrl(_) | StoreError::Configure { .. } => Cause::Configuration,
            // a root that cannot be created is a path or a permission somebody chose
            StoreError::LocalRoot { .. } | StoreError::FaultSpec(_) => Cause::Configuration,
            StoreError::Object { source, .. } => object_cause(source),
            StoreError::Parquet { source, .. } => parquet_cause(source),
            StoreError::AlreadyExists { .. } => Cause::Conflict,
            // the key is somebody's to give
            StoreError::Encrypted { .. } => Cause::Configuration,
        }
    }
}

/// An object-store failure's cause: refused credentials and bad keys need a person, a
/// create-only conflict means another writer, anything else may pass on a later try (the
/// retry layer already tried the transient ones a few times).
pub fn object_cause(error: &object_store::Error) -> Cause {
    use object_store::Error as E;
    match error {
        E::PermissionDenied { .. }
        | E::Unauthenticated { .. }
        | E::UnknownConfigurationKey { .. }
        | E::InvalidPath { .. }
        | E::NotSupported { .. }
        | E::NotImplemented { .. } => Cause::Configuration,
        E::AlreadyExists { .. } | E::Precondition { .. } => Cause::Conflict,
        _ => Cause::Transient,
    }
}

/// A Parquet failure's cause: the bytes did not decode (a corrupt or truncated file, which a
/// retry reads again the same), unless the object store under the reader failed.
pub fn parquet_cause(error: &parquet::errors::ParquetError) -> Cause {
    match error {
        parquet::errors::ParquetError::External(inner) => {
            match inner.downcast_ref::<object_store::Error>() {
                Some(store) => object_cause(store),
                None if inner.is::<std::io::Error>() => Cause::Transient,
                None => Cause::Input,
            }
        }
        _ => Cause::Input,
    }
}

/// A root in an object store plus the URL DataFusion uses to reach it.
#[derive(Clone)]
pub struct Store {
    /// the store as opened, without retries
    raw: Arc<dyn ObjectStore>,
    /// `raw` behind the retry layer: what every call goes through
    inner: Arc<dyn ObjectStore>,
    /// scheme + authority that DataFusion maps to `inner` (`file:///`, `memory://demo/`)
    base: Url,
    /// the root inside `inner`, without leading or trailing slash
    prefix: String,
    display: String,
    /// the data keys: Parquet under `keys::ENCRYPTED_PREFIXES` is written encrypted with the
    /// write key, and every Parquet read may decrypt (None: plaintext)
    keys: Option<Arc<Keyring>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display)
    }
}

/// In-process memory stores, shared by name so that `synth` and `nightly` in one process
/// (tests, the demo) see the same `memory://name`.
fn memory_stores() -> &'static Mutex<HashMap<String, Arc<InMemory>>> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<InMemory>>>> = OnceLock::new();
    STORES.get_or_init(Default::default)
}

impl Store {
    /// Opens a root: `./data`, `/abs/dir`, `file:///abs/dir` or `memory://name`.
    /// Local roots are created if missing.
    pub fn open(root: &str) -> Result<Store> {
        Self::open_with(root, &[])
    }

    /// Like `open`, with object-store options that override the environment, such as
    /// `("aws_endpoint_url", "http://127.0.0.1:9000")` (keys as object_store names them).
    pub fn open_with(root: &str, options: &[(&str, &str)]) -> Result<Store> {
        if let Some(name) = root.strip_prefix("memory://") {
            let name = name.trim_end_matches('/');
            let store = {
                let mut stores = memory_stores().lock().unwrap_or_else(|e| e.into_inner());
                stores.entry(name.to_string()).or_default().clone()
            };
            let authority = if name.is_empty() { "default" } else { name };
            let base = Url::parse(&format!("memory://{authority}/"))
                .map_err(|_| StoreError::UnsupportedUrl(root.to_string()))?;
            return Ok(Store::assemble(
                store,
                base,
                String::new(),
                format!("memory://{authority}"),
            ));
        }
        if let Some(rest) = root.strip_prefix("s3://") {
            return Self::open_s3(root, rest, options);
        }
        let local = if let Some(rest) = root.strip_prefix("file://") {
            rest.to_string()
        } else if root.contains("://") {
            return Err(StoreError::UnsupportedUrl(root.to_string()));
        } else {
            root.to_string()
        };
        std::fs::create_dir_all(&local).map_err(|source| StoreError::LocalRoot {
            path: local.clone(),
            source,
        })?;
        let abs = std::fs::canonicalize(&local).map_err(|source| StoreError::LocalRoot {
            path: local.clone(),
            source,
        })?;
        let abs = abs.to_string_lossy().to_string();
        Ok(Store::assemble(
            Arc::new(LocalFileSystem::new()),
            Url::parse("file:///").map_err(|_| StoreError::UnsupportedUrl(root.into()))?,
            abs.trim_matches('/').to_string(),
            format!("file://{abs}"),
        ))
    }

    /// `s3://bucket/prefix`, configured from the usual variables: AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION, and AWS_ENDPOINT_URL for
    /// S3-compatible servers (plain http is allowed when the endpoint says http://).
    fn open_s3(root: &str, rest: &str, options: &[(&str, &str)]) -> Result<Store> {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(StoreError::UnsupportedUrl(root.to_string()));
        }
        let configure = |source| StoreError::Configure {
            url: root.to_string(),
            source,
        };
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        let mut endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap_or_default();
        for (key, value) in options {
            let key: AmazonS3ConfigKey = key.parse().map_err(configure)?;
            if key == AmazonS3ConfigKey::Endpoint {
                endpoint = value.to_string();
            }
            builder = builder.with_config(key, *value);
        }
        if endpoint.starts_with("http://") {
            builder = builder.with_allow_http(true);
        }
        let s3 = builder.build().map_err(configure)?;
        let prefix = prefix.trim_matches('/').to_string();
        let display = format!("s3://{bucket}/{prefix}")
            .trim_end_matches('/')
            .to_string();
        Ok(Store::assemble(
            Arc::new(s3),
            Url::parse(&format!("s3://{bucket}/"))
                .map_err(|_| StoreError::UnsupportedUrl(root.to_string()))?,
            prefix,
            display,
        ))
    }

    fn assemble(raw: Arc<dyn ObjectStore>, base: Url, prefix: String, display: String) -> Store {
        Store {
            inner: Arc::new(RetryingStore::new(raw.clone(), RetryPolicy::default())),
            raw,
            base,
            prefix,
            display,
            keys: None,
        }
    }

    /// The same root with data keys (see `keys`).
    pub fn with_keys(mut self, keys: Option<Arc<Keyring>>) -> Store {
        self.keys = keys;
        self
    }

    /// The id of the key new personal-data files are encrypted with; None when plaintext.
    pub fn write_key_id(&self) -> Option<&str> {
        self.keys.as_ref().map(|k| k.write_key_id())
    }

    /// A Parquet error of `path`, told as an encryption problem where it is one.
    fn parquet_error(&self, path: &Path, source: parquet::errors::ParquetError) -> StoreError {
        let path = format!("{}{}", self.base, path);
        let text = source.to_string();
        let encrypted = text.contains("encrypted footer")
            || text.contains("not in the keyring")
            || text.contains("decryption")
            || text.contains("Decryption");
        match encrypted {
            true => StoreError::Encrypted {
                path,
                problem: text,
            },
            false => StoreError::Parquet { path, source },
        }
    }

    fn reader_options(&self) -> Result<ArrowReaderOptions, parquet::errors::ParquetError> {
        let options = ArrowReaderOptions::new();
        Ok(match &self.keys {
            Some(keys) => options.with_file_decryption_properties(keys.decryption()?),
            None => options,
        })
    }

    /// The same root with failures injected under the retry layer, for tests and drills;
    /// the counts say how many calls were made and how many failed.
    pub fn with_faults(&self, plan: FaultPlan) -> (Store, Arc<FaultCounts>) {
        let counts = Arc::new(FaultCounts::default());
        let faulty: Arc<dyn ObjectStore> =
            Arc::new(FaultyStore::new(self.raw.clone(), plan, counts.clone()));
        let store = Store::assemble(
            faulty,
            self.base.clone(),
            self.prefix.clone(),
            self.display.clone(),
        )
        .with_keys(self.keys.clone());
        (store, counts)
    }

    /// The same root with the random faults `REDFLOWER_FAULTS` asks for (see
    /// [`RandomFaults::parse`]), or as it is when the variable is unset, as it is in
    /// production: the chaos drill's way into the binary.
    pub fn with_faults_from_env(self) -> Result<Store> {
        let Ok(spec) = std::env::var(FAULTS_ENV) else {
            return Ok(self);
        };
        let plan = RandomFaults::parse(&spec).map_err(StoreError::FaultSpec)?;
        tracing::warn!(?plan, "{FAULTS_ENV} is set: injecting store faults");
        Ok(self.with_faults(FaultPlan::Random(plan)).0)
    }

    /// The root as a human reads it (`file:///home/me/data`).
    pub fn url(&self) -> &str {
        &self.display
    }

    pub fn object_store(&self) -> Arc<dyn ObjectStore> {
        self.inner.clone()
    }

    /// The object path of `rel` (a `/`-separated path under the root).
    pub fn path(&self, rel: &str) -> Path {
        let rel = rel.trim_matches('/');
        match (self.prefix.is_empty(), rel.is_empty()) {
            (true, _) => Path::from(rel),
            (false, true) => Path::from(self.prefix.as_str()),
            (false, false) => Path::from(format!("{}/{}", self.prefix, rel)),
        }
    }

    /// `rel` relative to the root, from a full object path.
    fn relative(&self, path: &Path) -> String {
        let full = path.as_ref();
        if self.prefix.is_empty() {
            full.to_string()
        } else {
            full.strip_prefix(&self.prefix)
                .unwrap_or(full)
                .trim_start_matches('/')
                .to_string()
        }
    }

    /// The URL DataFusion reads a folder under the root from (ends with `/`).
    pub fn table_url(&self, rel: &str) -> String {
        format!("{}{}/", self.base, self.path(rel))
    }

    /// The URL of one object, for DataFusion (with `register`).
    pub fn file_url(&self, rel: &str) -> String {
        format!("{}{}", self.base, self.path(rel))
    }

    /// Makes the root readable by `ctx` through `table_url`.
    pub fn register(&self, ctx: &SessionContext) {
        ctx.register_object_store(&self.base, self.inner.clone());
    }

    /// The object store under the root and the URL it answers for (its scheme and bucket),
    /// for processes that resolve the root's URLs themselves (a cluster's executors).
    pub fn registration(&self) -> (Url, Arc<dyn ObjectStore>) {
        (self.base.clone(), self.inner.clone())
    }

    fn object_error(&self, path: &Path) -> impl FnOnce(object_store::Error) -> StoreError {
        let path = format!("{}{}", self.base, path);
        move |source| StoreError::Object { path, source }
    }

    /// Writes `bytes` atomically, replacing what was there.
    pub async fn put(&self, rel: &str, bytes: Bytes) -> Result<()> {
        let path = self.path(rel);
        self.inner
            .put(&path, PutPayload::from(bytes))
            .await
            .map_err(self.object_error(&path))?;
        Ok(())
    }

    /// Writes `bytes` only if nothing is at `rel` yet: the commit point of a publish.
    pub async fn put_if_absent(&self, rel: &str, bytes: Bytes) -> Result<()> {
        let path = self.path(rel);
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .inner
            .put_opts(&path, PutPayload::from(bytes), opts)
            .await
        {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => Err(StoreError::AlreadyExists {
                path: format!("{}{}", self.base, path),
            }),
            Err(e) => Err(self.object_error(&path)(e)),
        }
    }

    /// Reads the object at `rel`, or `None` if there is none.
    pub async fn get(&self, rel: &str) -> Result<Option<Bytes>> {
        let path = self.path(rel);
        match self.inner.get(&path).await {
            Ok(r) => Ok(Some(r.bytes().await.map_err(self.object_error(&path))?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.object_error(&path)(e)),
        }
    }

    /// Every object under `rel`, as (path relative to the root, size), sorted by path.
    pub async fn list(&self, rel: &str) -> Result<Vec<(String, u64)>> {
        self.list_with(rel, |meta| meta.size).await
    }

    /// The row part files (`part-*.parquet`) directly under `folder`, in part order: what a
    /// stage wrote in parts by user shard (features, scores).
    pub async fn row_parts(&self, folder: &str) -> Result<Vec<String>> {
        let listed = self.list(folder).await?.into_iter().map(|(path, _)| path);
        Ok(listed.filter(|path| layout::is_rows_part(path)).collect())
    }

    /// Like `list`, with each object's last-modified time instead of its size.
    pub async fn list_modified(&self, rel: &str) -> Result<Vec<(String, DateTime<Utc>)>> {
        self.list_with(rel, |meta| meta.last_modified).await
    }

    /// Like `list`, with each object's size, last-modified time and etag (what a run records
    /// of the inputs it could read).
    pub async fn list_described(
        &self,
        rel: &str,
    ) -> Result<Vec<(String, (u64, DateTime<Utc>, Option<String>))>> {
        self.list_with(rel, |meta| {
            (meta.size, meta.last_modified, meta.e_tag.clone())
        })
        .await
    }

    /// Every object under `rel` as (relative path, `field` of its metadata), sorted.
    async fn list_with<T: Ord>(
        &self,
        rel: &str,
        field: impl Fn(&object_store::ObjectMeta) -> T,
    ) -> Result<Vec<(String, T)>> {
        let path = self.path(rel);
        let mut out: Vec<(String, T)> = self
            .inner
            .list(Some(&path))
            .map_ok(|meta| (self.relative(&meta.location), field(&meta)))
            .try_collect()
            .await
            .map_err(self.object_error(&path))?;
        out.sort();
        Ok(out)
    }

    /// Copies one object to `to` (on an object store, without moving its bytes through here).
    pub async fn copy(&self, from: &str, to: &str) -> Result<()> {
        let (from, to) = (self.path(from), self.path(to));
        self.inner
            .copy(&from, &to)
            .await
            .map_err(self.object_error(&from))
    }

    /// Deletes one object; a missing one is not an error.
    pub async fn delete(&self, rel: &str) -> Result<()> {
        let path = self.path(rel);
        match self.inner.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.object_error(&path)(e)),
        }
    }

    /// Deletes every object under `rel` (a rerun replaces, never duplicates).
    pub async fn delete_prefix(&self, rel: &str) -> Result<()> {
        for (object, _) in self.list(rel).await? {
            let path = self.path(&object);
            match self.inner.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.object_error(&path)(e)),
            }
        }
        Ok(())
    }

    /// Writes `batches` as one Parquet file; returns its size in bytes.
    pub async fn write_parquet(
        &self,
        rel: &str,
        schema: SchemaRef,
        batches: &[RecordBatch],
    ) -> Result<u64> {
        let path = self.path(rel);
        let parquet_error = |source| StoreError::Parquet {
            path: format!("{}{}", self.base, path),
            source,
        };
        let mut props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(1 << 20));
        if let Some(keys) = &self.keys
            && keys::ENCRYPTED_PREFIXES.iter().any(|p| rel.starts_with(p))
        {
            props =
                props.with_file_encryption_properties(keys.encryption().map_err(parquet_error)?);
        }
        let props = props.build();
        let writer = BufWriter::new(self.inner.clone(), path.clone());
        let mut writer =
            AsyncArrowWriter::try_new(writer, schema, Some(props)).map_err(parquet_error)?;
        for batch in batches {
            writer.write(batch).await.map_err(parquet_error)?;
        }
        writer.close().await.map_err(parquet_error)?;
        let meta = self
            .inner
            .head(&path)
            .await
            .map_err(self.object_error(&path))?;
        Ok(meta.size)
    }

    /// The Arrow schema recorded in a Parquet file's footer.
    pub async fn parquet_schema(&self, rel: &str) -> Result<SchemaRef> {
        let path = self.path(rel);
        let parquet_error = |source| self.parquet_error(&path, source);
        #[allow(deprecated)]
        let reader = ParquetObjectReader::new(self.inner.clone(), path.clone());
        let options = self.reader_options().map_err(parquet_error)?;
        let builder = ParquetRecordBatchStreamBuilder::new_with_options(reader, options)
            .await
            .map_err(parquet_error)?;
        Ok(builder.schema().clone())
    }

    /// Reads one Parquet file whole.
    pub async fn read_parquet(&self, rel: &str) -> Result<Vec<RecordBatch>> {
        let path = self.path(rel);
        let parquet_error = |source| self.parquet_error(&path, source);
        #[allow(deprecated)]
        let reader = ParquetObjectReader::new(self.inner.clone(), path.clone());
        let options = self.reader_options().map_err(parquet_error)?;
        let stream = ParquetRecordBatchStreamBuilder::new_with_options(reader, options)
            .await
            .map_err(parquet_error)?
            .build()
            .map_err(parquet_error)?;
        stream.try_collect().await.map_err(parquet_error)
    }

    /// Decodes Parquet `bytes` already read from `rel` (say, after checking their checksum),
    /// so what is decoded is exactly what was checked.
    pub fn decode_parquet(&self, rel: &str, bytes: Bytes) -> Result<Vec<RecordBatch>> {
        self.decode_parquet_map(rel, bytes, &mut Ok)
    }

    /// [`Store::decode_parquet`], passing each batch through `map` as it is decoded, so a
    /// reader that keeps part of a file never holds all of it decoded.
    pub fn decode_parquet_map(
        &self,
        rel: &str,
        bytes: Bytes,
        map: &mut dyn FnMut(RecordBatch) -> std::result::Result<RecordBatch, ArrowError>,
    ) -> Result<Vec<RecordBatch>> {
        let path = self.path(rel);
        let parquet_error = |source| self.parquet_error(&path, source);
        let options = self.reader_options().map_err(parquet_error)?;
        ParquetRecordBatchReaderBuilder::try_new_with_options(bytes, options)
            .map_err(parquet_error)?
            .build()
            .map_err(parquet_error)?
            .map(|batch| batch.and_then(&mut *map))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| parquet_error(e.into()))
    }

    /// Reads every Parquet file under `rel`, in path order.
    pub async fn read_parquet_dir(&self, rel: &str) -> Result<Vec<RecordBatch>> {
        let mut out = Vec::new();
        for (file, _) in self.list(rel).await? {
            if file.ends_with(".parquet") {
                out.extend(self.read_parquet(&file).await?);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_join_under_the_root() {
        let store = Store::open("memory://paths-test").unwrap();
        assert_eq!(store.path("raw/events/").as_ref(), "raw/events");
        assert_eq!(
            store.table_url("raw/events"),
            "memory://paths-test/raw/events/"
        );
    }

    #[test]
    fn other_schemes_are_refused_with_the_url() {
        let err = Store::open("gopher://x").unwrap_err();
        assert!(err.to_string().contains("gopher://x"));
    }

    #[tokio::test]
    async fn create_only_put_refuses_a_second_writer() {
        let store = Store::open("memory://put-test").unwrap();
        store
            .put_if_absent("m/1.json", Bytes::from("a"))
            .await
            .unwrap();
        let second = store.put_if_absent("m/1.json", Bytes::from("b")).await;
        assert!(matches!(second, Err(StoreError::AlreadyExists { .. })));
        assert_eq!(
            store.get("m/1.json").await.unwrap().unwrap(),
            Bytes::from("a")
        );
    }
}
