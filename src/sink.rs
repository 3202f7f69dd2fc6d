//! The Redis sink, for shops whose services read Redis rather than `redflower serve`: loads a
//! committed limit table into Redis under versioned keys, then switches one pointer key.
//!
//! Keys: `<prefix>:v<version>:<user id, zero-padded to 12 digits>` hold the same JSON answer
//! `GET /v1/limits/{user_id}` returns (12 digits is the form redis-benchmark's
//! `__rand_int__` writes, so the benchmark reads real keys). `<prefix>:current` holds the
//! version readers should use; it is set only after every key of the version is written, so a
//! reader that reads `current` first never sees a half-loaded table. Versions past the newest
//! `keep` are deleted after the switch. `<prefix>:loading` records how far a load got, so a
//! failed one is resumed by loading the same version again (`redflower publish sink`) and
//! cleaned up by loading another. Speaks RESP over one pipelined TCP connection; no client
//! library.

use std::time::Instant;

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tracing::{info, warn};

use crate::cause::{Cause, Classify};
use crate::publish::snapshot::{Snapshot, SnapshotError};
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("nothing is published under {root}: nothing to load")]
    NothingPublished { root: String },
    #[error(
        "'{0}' is not a Redis URL: use redis://[[USER]:PASSWORD@]HOST[:PORT][/DB] (rediss:// for TLS)"
    )]
    Url(String),
    #[error("Redis at {address}: TLS: {problem}")]
    Tls { address: String, problem: String },
    #[error("Redis at {address}: {source}")]
    Io {
        address: String,
        source: std::io::Error,
    },
    #[error("Redis at {address} refused {command}: {reply}")]
    Refused {
        address: String,
        command: String,
        reply: String,
    },
}

impl Classify for SinkError {
    fn cause(&self) -> Cause {
        match self {
            SinkError::Snapshot(e) => e.cause(),
            // loading nothing would switch readers to nothing: run the nightly job first
            SinkError::NothingPublished { .. } => Cause::StartOver,
            SinkError::Url(_) => Cause::Configuration,
            SinkError::Io { .. } => Cause::Transient,
            // a certificate not trusted, a name that does not match: somebody's setting
            SinkError::Tls { .. } => Cause::Configuration,
            // Redis refuses a command for a wrong password, a read-only replica, full memory
            SinkError::Refused { .. } => Cause::Configuration,
        }
    }
}

/// Where and under which key prefix to load. `Debug` never shows the password.
#[derive(Clone, PartialEq)]
pub struct RedisTarget {
    pub address: String,
    /// a Redis 6 ACL user; `AUTH user password` when set, `AUTH password` otherwise
    username: Option<String>,
    password: Option<String>,
    database: Option<u32>,
    pub prefix: String,
    /// how long one connect, write or reply may take before the load fails
    pub timeout: std::time::Duration,
    /// `rediss://`: TLS, trusting `ca_file` (PEM) or, without one, the system's roots
    pub tls: bool,
    pub ca_file: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTarget")
            .field("address", &self.address)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("database", &self.database)
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// `url` with its user and password replaced, for messages.
fn redacted(url: &str) -> String {
    match (url.split_once("://"), url.rsplit_once('@')) {
        (Some((scheme, _)), Some((_, host))) => format!("{scheme}://***@{host}"),
        _ => url.to_string(),
    }
}

/// `%XX` escapes decoded (a password may hold `@`, `:` or `/` written that way).
fn percent_decoded(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl RedisTarget {
    /// The time a connect, a write or a reply may take, unless set otherwise.
    pub const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

    /// `redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]`; the user and password may be
    /// percent-encoded. Errors never repeat the password.
    pub fn parse(url: &str, prefix: &str) -> Result<RedisTarget, SinkError> {
        let bad = || SinkError::Url(redacted(url));
        let (tls, rest) = match url.strip_prefix("rediss://") {
            Some(rest) => (true, rest),
            None => (false, url.strip_prefix("redis://").ok_or_else(bad)?),
        };
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((auth, rest)) => (Some(auth), rest),
            None => (None, rest),
        };
        let (host_port, database) = match rest.split_once('/') {
            Some((hp, db)) if !db.is_empty() => (hp, Some(db.parse().map_err(|_| bad())?)),
            Some((hp, _)) => (hp, None),
            None => (rest, None),
        };
        if host_port.is_empty() {
            return Err(bad());
        }
        let address = if host_port.contains(':') {
            host_port.to_string()
        } else {
            format!("{host_port}:6379")
        };
        // the user ends at the first ':'; the password may hold more of them
        let (username, password) = match auth.map(|a| a.split_once(':').unwrap_or(("", a))) {
            Some((user, password)) => (
                Some(percent_decoded(user).ok_or_else(bad)?).filter(|u| !u.is_empty()),
                Some(percent_decoded(password).ok_or_else(bad)?).filter(|p| !p.is_empty()),
            ),
            None => (None, None),
        };
        Ok(RedisTarget {
            address,
            username,
            password,
            database,
            prefix: prefix.to_string(),
            timeout: Self::TIMEOUT,
            tls,
            ca_file: None,
        })
    }

    /// The same target trusting the CA certificates in `ca_file` (PEM) for `rediss://`.
    pub fn with_ca_file(mut self, ca_file: Option<std::path::PathBuf>) -> RedisTarget {
        self.ca_file = ca_file;
        self
    }

    /// The TLS client configuration of a `rediss://` target.
    fn tls_config(&self) -> Result<std::sync::Arc<rustls::ClientConfig>, SinkError> {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject;
        let failed = |problem: String| SinkError::Tls {
            address: self.address.clone(),
            problem,
        };
        let mut roots = rustls::RootCertStore::empty();
        let certificates: Vec<CertificateDer<'static>> = match &self.ca_file {
            Some(file) => CertificateDer::pem_file_iter(file)
                .and_then(|certs| certs.collect::<Result<_, _>>())
                .map_err(|e| failed(format!("CA file {}: {e}", file.display())))?,
            None => rustls_native_certs::load_native_certs().certs,
        };
        roots.add_parsable_certificates(certificates);
        if roots.is_empty() {
            return Err(failed(
                "no CA certificate to trust: give --sink-ca PATH".into(),
            ));
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| failed(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(std::sync::Arc::new(config))
    }

    pub fn key(&self, version: u64, user_id: u64) -> String {
        format!("{}:v{version}:{user_id:012}", self.prefix)
    }

    pub fn current_key(&self) -> String {
        format!("{}:current", self.prefix)
    }

    /// `"<version> <rows written>"` while a version loads: where a failed load stopped
    pub fn loading_key(&self) -> String {
        format!("{}:loading", self.prefix)
    }

    fn versions_key(&self) -> String {
        format!("{}:versions", self.prefix)
    }
}

/// What a load did.
#[derive(Debug, Clone, Serialize)]
pub struct RedisLoad {
    pub address: String,
    pub version: u64,
    pub keys: usize,
    pub versions_deleted: Vec<u64>,
    pub seconds: f64,
}

/// Pipelined commands this many at a time: big enough to hide round trips, small enough
/// that replies never pile up.
const PIPELINE: usize = 2_000;

/// A RESP connection.
pub struct Redis {
    address: String,
    reader: BufReader<ReadHalf<Box<dyn Stream>>>,
    writer: WriteHalf<Box<dyn Stream>>,
    timeout: std::time::Duration,
}

/// A connection to Redis, plain or TLS.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for S {}

#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Simple(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
}

fn encode(command: &[&[u8]], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("*{}\r\n", command.len()).as_bytes());
    for part in command {
        out.extend_from_slice(format!("${}\r\n", part.len()).as_bytes());
        out.extend_from_slice(part);
        out.extend_from_slice(b"\r\n");
    }
}

impl Redis {
    pub async fn connect(target: &RedisTarget) -> Result<Redis, SinkError> {
        let io = |source| SinkError::Io {
            address: target.address.clone(),
            source,
        };
        let stream = timed(target.timeout, TcpStream::connect(&target.address))
            .await
            .map_err(io)?;
        let _ = stream.set_nodelay(true);
        let stream: Box<dyn Stream> = match target.tls {
            false => Box::new(stream),
            true => {
                let host = target
                    .address
                    .rsplit_once(':')
                    .map_or(&*target.address, |(h, _)| h);
                let name =
                    rustls_pki_types::ServerName::try_from(host.to_string()).map_err(|e| {
                        SinkError::Tls {
                            address: target.address.clone(),
                            problem: e.to_string(),
                        }
                    })?;
                let connector = tokio_rustls::TlsConnector::from(target.tls_config()?);
                let handshake = timed(target.timeout, connector.connect(name, stream));
                Box::new(handshake.await.map_err(|e| SinkError::Tls {
                    address: target.address.clone(),
                    problem: e.to_string(),
                })?)
            }
        };
        let (read, write) = tokio::io::split(stream);
        let mut redis = Redis {
            address: target.address.clone(),
            reader: BufReader::new(read),
            writer: write,
            timeout: target.timeout,
        };
        match (&target.username, &target.password) {
            (Some(user), Some(password)) => {
                redis
                    .call(&[b"AUTH", user.as_bytes(), password.as_bytes()])
                    .await?;
            }
            (None, Some(password)) => {
                redis.call(&[b"AUTH", password.as_bytes()]).await?;
            }
            _ => {}
        }
        if let Some(db) = target.database {
            redis.call(&[b"SELECT", db.to_string().as_bytes()]).await?;
        }
        Ok(redis)
    }

    fn io(&self) -> impl Fn(std::io::Error) -> SinkError + '_ {
        move |source| SinkError::Io {
            address: self.address.clone(),
            source,
        }
    }

    /// Sends one command and reads its reply.
    pub async fn call(&mut self, command: &[&[u8]]) -> Result<Reply, SinkError> {
        let mut out = Vec::new();
        encode(command, &mut out);
        timed(self.timeout, self.writer.write_all(&out))
            .await
            .map_err(self.io())?;
        let name = String::from_utf8_lossy(command[0]).into_owned();
        self.read_reply(&name).await
    }

    /// Sends many commands at once, then reads and checks every reply.
    pub async fn pipeline(&mut self, commands: &[Vec<Vec<u8>>]) -> Result<(), SinkError> {
        let mut out = Vec::new();
        for command in commands {
            let parts: Vec<&[u8]> = command.iter().map(Vec::as_slice).collect();
            encode(&parts, &mut out);
        }
        timed(self.timeout, self.writer.write_all(&out))
            .await
            .map_err(self.io())?;
        for command in commands {
            let name = String::from_utf8_lossy(&command[0]).into_owned();
            self.read_reply(&name).await?;
        }
        Ok(())
    }

    async fn read_line(&mut self) -> Result<String, SinkError> {
        let mut line = String::new();
        let read = timed(self.timeout, self.reader.read_line(&mut line))
            .await
            .map_err(|source| SinkError::Io {
                address: self.address.clone(),
                source,
            })?;
        if read == 0 {
            return Err(SinkError::Io {
                address: self.address.clone(),
                source: std::io::ErrorKind::UnexpectedEof.into(),
            });
        }
        Ok(line.trim_end_matches("\r\n").to_string())
    }

    fn read_reply<'a>(
        &'a mut self,
        command: &'a str,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Reply, SinkError>> + Send + 'a>> {
        Box::pin(async move {
            let line = self.read_line().await?;
            let refused = |reply: &str| SinkError::Refused {
                address: self.address.clone(),
                command: command.to_string(),
                reply: reply.to_string(),
            };
            let (kind, rest) = line.split_at(line.len().min(1));
            match kind {
                "+" => Ok(Reply::Simple(rest.to_string())),
                "-" => Err(refused(rest)),
                ":" => rest.parse().map(Reply::Integer).map_err(|_| refused(&line)),
                "$" => {
                    let length: i64 = rest.parse().map_err(|_| refused(&line))?;
                    if length < 0 {
                        return Ok(Reply::Bulk(None));
                    }
                    if length > MAX_BULK_BYTES {
                        return Err(refused(&format!(
                            "a bulk reply of {length} bytes, more than Redis sends ({MAX_BULK_BYTES})"
                        )));
                    }
                    // grown as bytes arrive: a length the server states is never allocated
                    // up front
                    let mut data = Vec::new();
                    let wanted = length as u64 + 2;
                    let timeout = self.timeout;
                    let read = timed(
                        timeout,
                        (&mut self.reader).take(wanted).read_to_end(&mut data),
                    )
                    .await
                    .map_err(|source| SinkError::Io {
                        address: self.address.clone(),
                        source,
                    })?;
                    if (read as u64) < wanted {
                        return Err(refused("a bulk reply cut short"));
                    }
                    data.truncate(length as usize);
                    Ok(Reply::Bulk(Some(data)))
                }
                "*" => {
                    let count: i64 = rest.parse().map_err(|_| refused(&line))?;
                    let mut items = Vec::new();
                    for _ in 0..count.max(0) {
                        items.push(self.read_reply(command).await?);
                    }
                    Ok(Reply::Array(items))
                }
                _ => Err(refused(&line)),
            }
        })
    }
}

/// `io`, failing with `TimedOut` past `limit`.
async fn timed<T>(
    limit: std::time::Duration,
    io: impl Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    tokio::time::timeout(limit, io)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

/// The largest bulk reply Redis sends (its `proto-max-bulk-len` default, 512 MB).
const MAX_BULK_BYTES: i64 = 512 << 20;

/// The key prefix when none is given (`--prefix`).
pub const DEFAULT_PREFIX: &str = "redflower:limits";
/// Versions kept in Redis when no number is given (`--keep`): the new one and the one before.
pub const DEFAULT_KEEP: usize = 2;

/// Loads the newest committed table of `store` into `target` (see `load`).
pub async fn load_latest(
    store: &Store,
    target: &RedisTarget,
    keep: usize,
) -> Result<RedisLoad, SinkError> {
    let snapshot = Snapshot::latest(store)
        .await?
        .ok_or_else(|| SinkError::NothingPublished {
            root: store.url().to_string(),
        })?;
    let loaded = load(target, &snapshot, keep).await?;
    // the new version lacks them; older versions kept in Redis must not answer for them
    let erased = crate::erasure::erased(store)
        .await
        .map_err(crate::publish::snapshot::SnapshotError::from)?;
    erase(target, &erased).await?;
    Ok(loaded)
}

/// Deletes the keys of `users` in every version loaded into `target`; returns how many
/// existed.
pub async fn erase(
    target: &RedisTarget,
    users: &std::collections::BTreeSet<u64>,
) -> Result<usize, SinkError> {
    if users.is_empty() {
        return Ok(0);
    }
    let mut redis = Redis::connect(target).await?;
    let mut deleted = 0;
    for version in switched_versions(&mut redis, target).await? {
        for &user in users {
            let key = target.key(version, user);
            if let Reply::Integer(n) = redis.call(&[b"DEL", key.as_bytes()]).await? {
                deleted += n as usize;
            }
        }
    }
    if deleted > 0 {
        info!(deleted, address = %target.address, "erased users' keys deleted from Redis");
    }
    Ok(deleted)
}

/// Loads `snapshot` as its version, switches `current` to it, and deletes versions past the
/// newest `keep`. The load records its progress in `<prefix>:loading` as it goes (in the same
/// pipelines as the keys, so it never runs ahead of them): a load of the same version that
/// finds it there picks up where the failed one stopped, and a load of another version first
/// deletes the keys the failed one left.
pub async fn load(
    target: &RedisTarget,
    snapshot: &Snapshot,
    keep: usize,
) -> Result<RedisLoad, SinkError> {
    let started = Instant::now();
    let version = snapshot.version();
    let mut redis = Redis::connect(target).await?;
    let first_row = first_row(&mut redis, target, version)
        .await?
        .min(snapshot.len());
    let mut commands = Vec::with_capacity(PIPELINE + 1);
    for row in first_row..snapshot.len() {
        commands.push(vec![
            b"SET".to_vec(),
            target.key(version, snapshot.user_ids()[row]).into_bytes(),
            snapshot.answer_json_at(row).to_vec(),
        ]);
        if commands.len() == PIPELINE || row + 1 == snapshot.len() {
            commands.push(vec![
                b"SET".to_vec(),
                target.loading_key().into_bytes(),
                format!("{version} {}", row + 1).into_bytes(),
            ]);
            redis.pipeline(&commands).await?;
            commands.clear();
        }
    }
    let version_text = version.to_string();
    redis
        .call(&[
            b"SADD",
            target.versions_key().as_bytes(),
            version_text.as_bytes(),
        ])
        .await?;
    // the switch: readers follow `current`
    redis
        .call(&[
            b"SET",
            target.current_key().as_bytes(),
            version_text.as_bytes(),
        ])
        .await?;
    redis
        .call(&[b"DEL", target.loading_key().as_bytes()])
        .await?;
    info!(version, keys = snapshot.len(), address = %target.address, "loaded into Redis and switched");

    let mut versions = switched_versions(&mut redis, target).await?;
    versions.sort_unstable();
    let stale = versions.len().saturating_sub(keep.max(1));
    let mut deleted = Vec::new();
    for old in versions.into_iter().take(stale).filter(|v| *v != version) {
        delete_version(&mut redis, target, old).await?;
        redis
            .call(&[
                b"SREM",
                target.versions_key().as_bytes(),
                old.to_string().as_bytes(),
            ])
            .await?;
        deleted.push(old);
    }
    Ok(RedisLoad {
        address: target.address.clone(),
        version,
        keys: snapshot.len(),
        versions_deleted: deleted,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Where a load of `version` starts: where an unfinished load of it stopped, else at the first
/// row, once the keys of an unfinished load of another version (never switched to) are gone.
async fn first_row(
    redis: &mut Redis,
    target: &RedisTarget,
    version: u64,
) -> Result<usize, SinkError> {
    match unfinished_load(redis, target).await? {
        Some((loading, rows)) if loading == version => {
            info!(version, rows, "resuming the Redis load where it stopped");
            Ok(rows)
        }
        Some((abandoned, _)) => {
            if !switched_versions(redis, target).await?.contains(&abandoned) {
                warn!(
                    version = abandoned,
                    "deleting the keys of a Redis load that failed"
                );
                delete_version(redis, target, abandoned).await?;
            }
            Ok(0)
        }
        None => Ok(0),
    }
}

/// The versions a load finished and switched to (`<prefix>:versions`).
async fn switched_versions(redis: &mut Redis, target: &RedisTarget) -> Result<Vec<u64>, SinkError> {
    Ok(
        match redis
            .call(&[b"SMEMBERS", target.versions_key().as_bytes()])
            .await?
        {
            Reply::Array(items) => items
                .into_iter()
                .filter_map(|item| match item {
                    Reply::Bulk(Some(bytes)) => String::from_utf8(bytes).ok()?.parse().ok(),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        },
    )
}

/// The version and rows written of a load that did not finish, if one did not.
async fn unfinished_load(
    redis: &mut Redis,
    target: &RedisTarget,
) -> Result<Option<(u64, usize)>, SinkError> {
    let Reply::Bulk(Some(text)) = redis
        .call(&[b"GET", target.loading_key().as_bytes()])
        .await?
    else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&text);
    Ok(text
        .split_once(' ')
        .and_then(|(v, rows)| Some((v.parse().ok()?, rows.parse().ok()?))))
}

async fn delete_version(
    redis: &mut Redis,
    target: &RedisTarget,
    version: u64,
) -> Result<(), SinkError> {
    let pattern = format!("{}:v{version}:*", target.prefix);
    let mut cursor = "0".to_string();
    loop {
        let reply = redis
            .call(&[
                b"SCAN",
                cursor.as_bytes(),
                b"MATCH",
                pattern.as_bytes(),
                b"COUNT",
                b"5000",
            ])
            .await?;
        let Reply::Array(parts) = reply else { break };
        let mut parts = parts.into_iter();
        cursor = match parts.next() {
            Some(Reply::Bulk(Some(c))) => String::from_utf8_lossy(&c).into_owned(),
            _ => break,
        };
        if let Some(Reply::Array(keys)) = parts.next() {
            let keys: Vec<Vec<u8>> = keys
                .into_iter()
                .filter_map(|k| match k {
                    Reply::Bulk(Some(k)) => Some(k),
                    _ => None,
                })
                .collect();
            if !keys.is_empty() {
                let mut command = vec![b"UNLINK".to_vec()];
                command.extend(keys);
                redis.pipeline(&[command]).await?;
            }
        }
        if cursor == "0" {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_and_without_password_port_and_db() {
        let t = RedisTarget::parse("redis://127.0.0.1:6390/2", "p").unwrap();
        assert_eq!(
            (t.address.as_str(), t.database, t.password.as_deref()),
            ("127.0.0.1:6390", Some(2), None)
        );
        let t = RedisTarget::parse("redis://:s3cret@cache", "p").unwrap();
        assert_eq!(
            (t.address.as_str(), t.password.as_deref()),
            ("cache:6379", Some("s3cret"))
        );
        assert!(RedisTarget::parse("http://x", "p").is_err());
        assert_eq!(t.key(3, 42), "p:v3:000000000042");
    }

    #[test]
    fn acl_users_and_passwords_with_colons_and_escapes_parse_and_never_show() {
        let t = RedisTarget::parse("redis://loader:pa:ss%40word@cache:6380/1", "p").unwrap();
        assert_eq!(
            (
                t.username.as_deref(),
                t.password.as_deref(),
                t.address.as_str()
            ),
            (Some("loader"), Some("pa:ss@word"), "cache:6380")
        );
        let shown = format!("{t:?}");
        assert!(!shown.contains("pa:ss") && shown.contains("***"), "{shown}");
        let err = RedisTarget::parse("redis://loader:s3cret@cache/notadb", "p")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("s3cret") && err.contains("cache"), "{err}");
    }

    #[tokio::test]
    async fn a_server_that_never_answers_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        // accepts, reads nothing, answers nothing, for as long as the test runs
        let silent = tokio::spawn(async move {
            let (_socket, _) = listener.accept().await.unwrap();
            tokio::time::sleep(std::time::Duration::from_secs(60)).await;
        });
        let mut target = RedisTarget::parse(&format!("redis://:pw@{address}"), "p").unwrap();
        target.timeout = std::time::Duration::from_millis(200);
        let err = Redis::connect(&target)
            .await
            .err()
            .expect("no answer to AUTH");
        assert!(err.to_string().contains("timed out"), "{err}");
        silent.abort();
    }

    #[test]
    fn commands_encode_as_resp_arrays() {
        let mut out = Vec::new();
        encode(&[b"SET", b"k", b"v1"], &mut out);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\nv1\r\n");
    }
}
