//! serve: the online read path. An HTTP server (axum) that answers `GET /v1/limits/{user_id}`
//! from the newest committed limit table, held in memory.
//!
//! A follower task polls the manifests; when a newer version is committed it loads and
//! indexes that table off the request path, then swaps one pointer. A request holds the
//! snapshot it started with, so it sees one whole table, and no request waits for or fails
//! on a swap. A table that fails to load (checksum, missing file) is logged and counted and
//! the current one keeps serving.
//!
//! Reads only `published/`; writes nothing. `/healthz` and `/metrics` (Prometheus text) are
//! open; `/v1/` needs `Authorization: Bearer <token>` when a token is configured.
//!
//! Connections are served by hyper directly. `GET /v1/limits/{id}`, the call every payment
//! makes, is answered before axum's router; everything else goes through the router. Routing
//! and extracting cost about a tenth of a lookup's time under load (benches/README.md). On
//! Unix each connection's socket is a `socket::ClientSocket`, which saves the read that finds
//! nothing after every answer.

pub mod client;
pub mod overlay;
pub mod tls;
mod writes;

#[cfg(unix)]
mod socket;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tower::ServiceExt;
use tracing::{debug, info, warn};

pub use crate::publish::snapshot::{LimitAnswer, Snapshot, SnapshotError};

use crate::cause::{Cause, Classify};
use crate::publish::{self, PublishError};
use crate::store::{Store, StoreError};
use crate::user_index::UserShard;
use writes::Writes;
pub use writes::certificate_catalog;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error("server stopped with an error: {0}")]
    Server(String),
    #[error("TLS: {file}: {problem}")]
    Tls { file: String, problem: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// the write path: a policy, catalog or recorded request that cannot be read
    #[error("writes: {0}")]
    Writes(String),
    #[error("the write token must differ from the read token")]
    SameTokens,
}

impl Classify for ServeError {
    fn cause(&self) -> Cause {
        match self {
            // an address in use or not ours to bind
            ServeError::Bind { .. } => Cause::Configuration,
            ServeError::Snapshot(e) => e.cause(),
            ServeError::Publish(e) => e.cause(),
            ServeError::Server(_) => Cause::Transient,
            // a certificate or key somebody gave
            ServeError::Tls { .. } => Cause::Configuration,
            ServeError::Store(e) => e.cause(),
            // what the store holds (a run's policy, a recorded request) cannot be read
            ServeError::Writes(_) => Cause::Input,
            ServeError::SameTokens => Cause::Configuration,
        }
    }
}

#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub addr: SocketAddr,
    /// required as `Authorization: Bearer <token>` on /v1/ when set
    pub token: Option<String>,
    /// enables the write endpoints (`POST /v1/users/{id}/...`), which require it as their
    /// bearer token; must differ from `token`
    pub write_token: Option<String>,
    /// how often the manifests are checked for a newer version
    pub poll: Duration,
    /// a client must send a whole request header within this, or its connection is closed
    /// (a slow client holds no connection for long)
    pub header_read_timeout: Duration,
    /// connections served at once; more wait in the listen queue until one closes
    pub max_connections: usize,
    /// `/healthz` answers 503 once the table served was published longer ago than this
    /// (a missed night), when set
    pub max_table_age: Option<Duration>,
    /// answer over TLS only, with this configuration (`tls::server_config`), when set
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// hold and answer only this shard's users (`UserShard::of`); a lookup of another
    /// shard's user is answered 421 naming the shard that holds it
    pub shard: Option<UserShard>,
}

/// Latency buckets (seconds) of the request histogram.
const BUCKETS: [f64; 9] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.1,
];

#[derive(Default)]
struct Counters {
    ok: AtomicU64,
    not_found: AtomicU64,
    misdirected: AtomicU64,
    bad_request: AtomicU64,
    unauthorized: AtomicU64,
    unavailable: AtomicU64,
    reloads: AtomicU64,
    reload_failures: AtomicU64,
    /// cumulative counts per bucket, plus one for +Inf
    latency: [AtomicU64; BUCKETS.len() + 1],
    latency_sum_ns: AtomicU64,
}

struct AppState {
    current: RwLock<Option<Arc<Snapshot>>>,
    token: Option<String>,
    counters: Counters,
    started: Instant,
    max_table_age: Option<Duration>,
    shard: Option<UserShard>,
    /// the write path, when a write token is configured
    writes: Option<Writes>,
}

impl AppState {
    fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn swap(&self, snapshot: Snapshot) {
        *self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Arc::new(snapshot));
    }

    fn observe(&self, started: Instant) {
        let seconds = started.elapsed().as_secs_f64();
        self.counters
            .latency_sum_ns
            .fetch_add((seconds * 1e9) as u64, Ordering::Relaxed);
        let bucket = BUCKETS
            .iter()
            .position(|&b| seconds <= b)
            .unwrap_or(BUCKETS.len());
        self.counters.latency[bucket].fetch_add(1, Ordering::Relaxed);
    }
}

/// What a server did, for the summary when it stops.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServeStats {
    pub answered: u64,
    /// write requests accepted and recorded (retries not counted again)
    pub writes_accepted: u64,
    pub writes_refused: u64,
    pub not_found: u64,
    pub refused: u64,
    pub reloads: u64,
    pub reload_failures: u64,
    pub version: Option<u64>,
    pub seconds: f64,
}

/// A running server.
pub struct Server {
    addr: SocketAddr,
    state: Arc<AppState>,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), std::io::Error>>,
    follower: JoinHandle<()>,
}

/// Loads the newest committed table (if there is one yet), binds `config.addr` and serves
/// until `Server::stop`. Port 0 picks a free port: see `Server::addr`.
pub async fn start(store: Store, config: ServeConfig) -> Result<Server, ServeError> {
    if config.write_token.is_some() && config.write_token == config.token {
        return Err(ServeError::SameTokens);
    }
    let latest = publish::latest(&store).await?;
    let writes = match &config.write_token {
        Some(token) => Some(Writes::open(store.clone(), token.clone(), latest.as_ref()).await?),
        None => None,
    };
    let state = Arc::new(AppState {
        current: RwLock::new(None),
        token: config.token.clone(),
        counters: Counters::default(),
        started: Instant::now(),
        max_table_age: config.max_table_age,
        shard: config.shard,
        writes,
    });
    if let Some(manifest) = latest {
        let today = chrono::Utc::now().date_naive();
        let snapshot = Snapshot::load_part(&store, manifest, today, config.shard).await?;
        info!(
            version = snapshot.version(),
            rows = snapshot.len(),
            shard = config.shard.map(|shard| shard.to_string()),
            "serving"
        );
        state.swap(snapshot);
    } else {
        warn!(root = %store.url(), "no published table yet: /v1/ answers 503 until one is committed");
    }
    let follower = tokio::spawn(follow(store, state.clone(), config.poll));

    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: config.addr,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: config.addr,
        source,
    })?;
    let router = Router::new()
        .route("/healthz", get(health))
        .route("/metrics", get(metrics))
        .route(
            "/v1/users/{user_id}/certificates",
            post(writes::upload_certificate),
        )
        .route(
            "/v1/users/{user_id}/limit-request",
            post(writes::request_limit),
        )
        .with_state(state.clone());
    if state.token.is_none() && !addr.ip().is_loopback() {
        warn!(%addr, "serving beyond this machine without a token: anyone who reaches this address reads every limit");
    }
    let (stop, stopped) = oneshot::channel::<()>();
    let limits = ConnectionLimits {
        header_read_timeout: config.header_read_timeout,
        tls: config.tls.clone(),
        slots: Arc::new(Semaphore::new(config.max_connections.max(1))),
    };
    let server = tokio::spawn(accept(listener, state.clone(), router, limits, stopped));
    info!(%addr, tls = config.tls.is_some(), "listening");
    Ok(Server {
        addr,
        state,
        stop: Some(stop),
        server,
        follower,
    })
}

impl Server {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The version being served, if any.
    pub fn version(&self) -> Option<u64> {
        self.state.snapshot().map(|s| s.version())
    }

    pub fn stats(&self) -> ServeStats {
        let c = &self.state.counters;
        let writes = self.state.writes.as_ref().map(|w| &w.counters);
        let load = |counter: Option<&AtomicU64>| counter.map_or(0, |c| c.load(Ordering::Relaxed));
        ServeStats {
            answered: c.ok.load(Ordering::Relaxed),
            writes_accepted: load(writes.map(|w| &w.accepted)),
            writes_refused: load(writes.map(|w| &w.refused)),
            not_found: c.not_found.load(Ordering::Relaxed),
            refused: c.bad_request.load(Ordering::Relaxed)
                + c.misdirected.load(Ordering::Relaxed)
                + c.unauthorized.load(Ordering::Relaxed)
                + c.unavailable.load(Ordering::Relaxed),
            reloads: c.reloads.load(Ordering::Relaxed),
            reload_failures: c.reload_failures.load(Ordering::Relaxed),
            version: self.version(),
            seconds: self.state.started.elapsed().as_secs_f64(),
        }
    }

    /// Stops accepting, lets requests in flight finish, and returns what the server did.
    pub async fn stop(mut self) -> Result<ServeStats, ServeError> {
        self.follower.abort();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let stats = self.stats();
        (&mut self.server)
            .await
            .map_err(|e| ServeError::Server(e.to_string()))?
            .map_err(|e| ServeError::Server(e.to_string()))?;
        Ok(stats)
    }
}

/// Polls the manifests and swaps in each newer committed version.
async fn follow(store: Store, state: Arc<AppState>, poll: Duration) {
    // a version that failed to load is not tried again every poll: a newer one is
    let mut failed: Option<u64> = None;
    loop {
        tokio::time::sleep(poll).await;
        let serving = state.snapshot().map(|s| s.version());
        let newest = match publish::latest(&store).await {
            Ok(newest) => newest,
            Err(error) => {
                warn!(%error, "cannot read the manifests; still serving version {serving:?}");
                state
                    .counters
                    .reload_failures
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        let today = chrono::Utc::now().date_naive();
        let Some(manifest) = newest
            .filter(|m| Some(m.version) != serving && Some(m.version) != failed)
            .or_else(|| rerender_for(&state, today))
            .or(newly_erased(&store, &state).await)
        else {
            continue;
        };
        let version = manifest.version;
        // the version served again (without newly erased users, or without an ended
        // scenario limit): as committed now, since erasure rewrites its files and manifest
        let manifest = match Some(version) == serving {
            true => match publish::manifest_of(&store, version).await {
                Ok(current) => current,
                Err(error) => {
                    warn!(version, %error, "cannot read the served version's manifest again");
                    continue;
                }
            },
            false => manifest,
        };
        match Snapshot::load_part(&store, manifest.clone(), today, state.shard).await {
            Ok(snapshot) => {
                let rows = snapshot.len();
                state.swap(snapshot);
                // the same version again accounts for no request it did not before
                if let (Some(writes), false) = (&state.writes, Some(version) == serving) {
                    writes.account(&manifest).await;
                }
                state.counters.reloads.fetch_add(1, Ordering::Relaxed);
                info!(version, rows, "now serving");
            }
            Err(error) => {
                failed = Some(version);
                state
                    .counters
                    .reload_failures
                    .fetch_add(1, Ordering::Relaxed);
                warn!(version, %error, "cannot load the new table; still serving version {serving:?} (not retried until a newer version is committed)");
            }
        }
    }
}

/// The served table's manifest when users were erased since it was loaded: it is loaded
/// again without them (one listing of `erasures/` a poll).
async fn newly_erased(store: &Store, state: &AppState) -> Option<publish::Manifest> {
    let snapshot = state.snapshot()?;
    match crate::erasure::erased(store).await {
        Ok(erased) if erased.len() != snapshot.erased => {
            info!(
                version = snapshot.version(),
                "users were erased: loading the table again without them"
            );
            Some(snapshot.manifest.clone())
        }
        Ok(_) => None,
        Err(error) => {
            warn!(%error, "cannot list the erasure requests");
            None
        }
    }
}

/// The served table's manifest when a scenario limit in its answers has ended by `today`:
/// the same version is rendered again without it.
fn rerender_for(state: &AppState, today: chrono::NaiveDate) -> Option<publish::Manifest> {
    let snapshot = state.snapshot()?;
    snapshot.stale_on(today).then(|| {
        info!(version = snapshot.version(), %today, "a scenario limit ended: rendering the table again");
        snapshot.manifest.clone()
    })
}

fn json_error(status: StatusCode, message: String, version: Option<u64>) -> Response {
    #[derive(Serialize)]
    struct ErrorBody {
        error: String,
        table_version: Option<u64>,
    }
    (
        status,
        axum::Json(ErrorBody {
            error: message,
            table_version: version,
        }),
    )
        .into_response()
}

fn authorized(state: &AppState, headers: &HeaderMap) -> bool {
    state
        .token
        .as_ref()
        .is_none_or(|token| bearer_matches(headers, token))
}

/// True when the request's `Authorization: Bearer` token is `token` (compared in constant
/// time); the read and the write path both ask this.
fn bearer_matches(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .is_some_and(|given| constant_time_eq(given.as_bytes(), token.as_bytes()))
}

/// Compares the two strings' SHA-256 digests, every byte: the time taken says nothing about
/// where they differ, nor about the token's length.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    let (a, b) = (Sha256::digest(a), Sha256::digest(b));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// What one client may hold of the server.
struct ConnectionLimits {
    header_read_timeout: Duration,
    tls: Option<Arc<rustls::ServerConfig>>,
    /// one permit per open connection
    slots: Arc<Semaphore>,
}

/// HTTP/1.1 on one connection, plain or TLS, until the client ends it or the server closes.
async fn serve_http<S>(
    stream: S,
    state: Arc<AppState>,
    router: Router,
    header_read_timeout: Duration,
    mut close: watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let answer = route(&state, &router, request);
        async move { Ok::<_, Infallible>(answer.await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        // a client may end its side after the request and still wait for the answer
        .half_close(true)
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = close.changed() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        debug!(%error, "connection ended with an error");
    }
}

/// Accepts connections until `stopped`, then lets each finish its request in flight.
async fn accept(
    listener: TcpListener,
    state: Arc<AppState>,
    router: Router,
    limits: ConnectionLimits,
    mut stopped: oneshot::Receiver<()>,
) -> Result<(), std::io::Error> {
    let (closing, close) = watch::channel(false);
    // every connection task holds a sender; recv() is None once all of them have ended
    let (open, mut all_closed) = mpsc::channel::<()>(1);
    let header_read_timeout = limits.header_read_timeout;
    loop {
        if limits.slots.available_permits() == 0 {
            warn!("at the connection cap: new connections wait until one closes");
        }
        let slot = tokio::select! {
            slot = limits.slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break, // never closed
            },
            _ = &mut stopped => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // out of file descriptors and the like: wait, do not spin
                    warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stopped => break,
        };
        // answers are one write each; do not let Nagle hold the next one back
        let _ = stream.set_nodelay(true);
        let (state, router, close, open) =
            (state.clone(), router.clone(), close.clone(), open.clone());
        let tls = limits.tls.clone();
        tokio::spawn(async move {
            #[cfg(unix)]
            let stream = match socket::ClientSocket::new(stream) {
                Ok(socket) => socket,
                Err(error) => {
                    warn!(%error, "cannot take over an accepted connection");
                    return;
                }
            };
            match tls {
                None => serve_http(stream, state, router, header_read_timeout, close).await,
                Some(tls) => {
                    // a client gets as long for the handshake as for a request's header
                    let handshake = tokio_rustls::TlsAcceptor::from(tls).accept(stream);
                    match tokio::time::timeout(header_read_timeout, handshake).await {
                        Ok(Ok(stream)) => {
                            serve_http(stream, state, router, header_read_timeout, close).await
                        }
                        Ok(Err(error)) => debug!(%error, "TLS handshake failed"),
                        Err(_) => debug!("TLS handshake timed out"),
                    }
                }
            }
            drop((open, slot));
        });
    }
    drop(listener);
    let _ = closing.send(true);
    drop(open);
    let _ = all_closed.recv().await;
    Ok(())
}

/// Lookups are answered here; everything else by the router.
fn route(
    state: &AppState,
    router: &Router,
    request: Request<Incoming>,
) -> impl Future<Output = Response> + use<> {
    let id = request
        .uri()
        .path()
        .strip_prefix("/v1/limits/")
        .filter(|id| !id.is_empty() && !id.contains('/'));
    let lookup = id.map(|id| match *request.method() {
        // hyper sends no body for HEAD
        Method::GET | Method::HEAD => limit(state, request.headers(), id),
        _ => {
            let mut response = StatusCode::METHOD_NOT_ALLOWED.into_response();
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            response
        }
    });
    let router = router.clone();
    async move {
        match lookup {
            Some(response) => response,
            None => match router.oneshot(request.map(Body::new)).await {
                Ok(response) => response,
                Err(never) => match never {},
            },
        }
    }
}

/// `GET /v1/limits/{user_id}`.
fn limit(state: &AppState, headers: &HeaderMap, user_id: &str) -> Response {
    let started = Instant::now();
    let counters = &state.counters;
    let response = if !authorized(state, headers) {
        counters.unauthorized.fetch_add(1, Ordering::Relaxed);
        let mut response = json_error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token".into(),
            None,
        );
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        response
    } else if let Ok(id) = user_id.parse::<u64>() {
        match state.snapshot() {
            _ if state.shard.is_some_and(|shard| !shard.contains(id)) => {
                counters.misdirected.fetch_add(1, Ordering::Relaxed);
                misdirected(id, state.shard)
            }
            None => {
                counters.unavailable.fetch_add(1, Ordering::Relaxed);
                json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no limit table has been published yet".into(),
                    None,
                )
            }
            Some(snapshot) => match state
                .writes
                .as_ref()
                .and_then(|writes| writes.overlaid_json(&snapshot, id))
                .or_else(|| snapshot.answer_json(id))
            {
                Some(json) => {
                    counters.ok.fetch_add(1, Ordering::Relaxed);
                    let mut response = Response::new(Body::from(json));
                    response.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                    response
                }
                None => {
                    counters.not_found.fetch_add(1, Ordering::Relaxed);
                    json_error(
                        StatusCode::NOT_FOUND,
                        format!(
                            "user {id} is not in limit table version {}",
                            snapshot.version()
                        ),
                        Some(snapshot.version()),
                    )
                }
            },
        }
    } else {
        counters.bad_request.fetch_add(1, Ordering::Relaxed);
        json_error(
            StatusCode::BAD_REQUEST,
            format!("'{user_id}' is not a user id (an unsigned integer)"),
            None,
        )
    };
    state.observe(started);
    response
}

/// 421: the user is another shard's; the body names it, so a misconfigured caller can tell.
fn misdirected(user_id: u64, shard: Option<UserShard>) -> Response {
    let Some(shard) = shard else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let holder = UserShard {
        index: UserShard::of(user_id, shard.count),
        count: shard.count,
    };
    json_error(
        StatusCode::MISDIRECTED_REQUEST,
        format!("user {user_id} is served by shard {holder}; this server is shard {shard}"),
        None,
    )
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    #[derive(Serialize)]
    struct Health {
        status: &'static str,
        table_version: Option<u64>,
        rows: usize,
        /// seconds since the table served was published
        table_age_seconds: Option<u64>,
        /// `INDEX/COUNT` when this server holds one shard of the users
        #[serde(skip_serializing_if = "Option::is_none")]
        shard: Option<String>,
    }
    let shard = state.shard.map(|shard| shard.to_string());
    let Some(snapshot) = state.snapshot() else {
        let health = Health {
            status: "no table published yet",
            table_version: None,
            rows: 0,
            table_age_seconds: None,
            shard,
        };
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(health)).into_response();
    };
    let age = chrono::DateTime::parse_from_rfc3339(&snapshot.manifest.published_at)
        .ok()
        .and_then(|at| {
            (chrono::Utc::now() - at.with_timezone(&chrono::Utc))
                .to_std()
                .ok()
        });
    let stale = matches!((age, state.max_table_age), (Some(age), Some(max)) if age > max);
    let health = Health {
        status: if stale {
            "stale: the table is older than the maximum age"
        } else {
            "ok"
        },
        table_version: Some(snapshot.version()),
        rows: snapshot.len(),
        table_age_seconds: age.map(|age| age.as_secs()),
        shard,
    };
    let status = if stale {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (status, axum::Json(health)).into_response()
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    use std::fmt::Write;
    let c = &state.counters;
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP redflower_serve_requests_total Limit lookups by HTTP status.\n# TYPE redflower_serve_requests_total counter"
    );
    for (status, counter) in [
        (200, &c.ok),
        (400, &c.bad_request),
        (401, &c.unauthorized),
        (404, &c.not_found),
        (421, &c.misdirected),
        (503, &c.unavailable),
    ] {
        let _ = writeln!(
            out,
            "redflower_serve_requests_total{{status=\"{status}\"}} {}",
            load(counter)
        );
    }
    let _ = writeln!(
        out,
        "# HELP redflower_serve_request_duration_seconds Time spent answering a lookup.\n# TYPE redflower_serve_request_duration_seconds histogram"
    );
    let mut cumulative = 0;
    for (i, bound) in BUCKETS.iter().enumerate() {
        cumulative += load(&c.latency[i]);
        let _ = writeln!(
            out,
            "redflower_serve_request_duration_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
        );
    }
    cumulative += load(&c.latency[BUCKETS.len()]);
    let _ = writeln!(
        out,
        "redflower_serve_request_duration_seconds_bucket{{le=\"+Inf\"}} {cumulative}\nredflower_serve_request_duration_seconds_sum {}\nredflower_serve_request_duration_seconds_count {cumulative}",
        load(&c.latency_sum_ns) as f64 / 1e9
    );
    let snapshot = state.snapshot();
    let _ = writeln!(
        out,
        "# HELP redflower_serve_table_version The limit table version being served (0: none).\n# TYPE redflower_serve_table_version gauge\nredflower_serve_table_version {}",
        snapshot.as_ref().map_or(0, |s| s.version())
    );
    let _ = writeln!(
        out,
        "# HELP redflower_serve_table_rows Users in the table being served.\n# TYPE redflower_serve_table_rows gauge\nredflower_serve_table_rows {}",
        snapshot.as_ref().map_or(0, |s| s.len())
    );
    let _ = writeln!(
        out,
        "# HELP redflower_serve_reloads_total Newer tables swapped in.\n# TYPE redflower_serve_reloads_total counter\nredflower_serve_reloads_total {}",
        load(&c.reloads)
    );
    let _ = writeln!(
        out,
        "# HELP redflower_serve_reload_failures_total Newer tables that failed to load (the old one kept serving).\n# TYPE redflower_serve_reload_failures_total counter\nredflower_serve_reload_failures_total {}",
        load(&c.reload_failures)
    );
    if let Some(writes) = &state.writes {
        writes.write_metrics(&mut out);
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        out,
    )
        .into_response()
}
