//! serve's write path: `POST /v1/users/{id}/certificates` and `POST /v1/users/{id}/limit-request`.
//!
//! Durable before acknowledged: an accepted request becomes one raw row in its own object,
//! `raw/<source>/dt=<day>/online-<request id>.parquet`, put create-only before the answer is
//! sent; the object also carries the request and its answer (Parquet key-value metadata), so
//! a retry, even one that reaches another server of the same root on the same day, is answered
//! from it and recorded once. Then the request joins the overlay (`overlay`). On start the
//! overlay is replayed from those objects, and every recognized raw certificate's number is
//! read for the shared-number check.
//!
//! Writes only those objects; reads the served table's run policy, the certificate catalog
//! and `raw/`. Writes need their own token (`--write-token`), never the read token.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, NaiveDate, Utc};
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Date32Array, Float32Array, Float64Array, RecordBatch,
    StringArray, TimestampMicrosecondArray, UInt32Array, UInt64Array,
};
use datafusion::arrow::datatypes::{UInt32Type, UInt64Type};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::overlay::{
    Accepted, CertificateType, CertificateUpload, LimitRequest, Overlay, RETRY_DAYS, Request,
    Rules, Verdict, WriteAnswer, WriteReason,
};
use super::{AppState, ServeError, json_error, misdirected};
use crate::audit::lineage::POLICY_FILE;
use crate::policy::LimitPolicy;
use crate::publish::Manifest;
use crate::publish::snapshot::{LimitAnswer, Snapshot};
use crate::schema::{self, TableSchema};
use crate::store::{Store, StoreError, layout};

/// The key of a raw object's metadata holding what was recorded.
const RECORDED_KEY: &str = "redflower.online_request";

/// What an online object records besides its row.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Recorded {
    request: Request,
    family: Option<String>,
    boost: f64,
    answer: WriteAnswer,
}

/// What writes did, for /metrics.
#[derive(Default)]
pub(super) struct WriteCounters {
    pub accepted: AtomicU64,
    pub retried: AtomicU64,
    pub refused: AtomicU64,
    pub failed: AtomicU64,
}

/// The write path of one server.
pub(super) struct Writes {
    store: Store,
    token: String,
    overlay: RwLock<Overlay>,
    /// users with requests in the overlay: 0 lets a lookup skip the overlay's lock
    users: AtomicUsize,
    /// one request decided and recorded at a time, so two users racing for one certificate
    /// number cannot both be accepted
    recording: tokio::sync::Mutex<()>,
    pub counters: WriteCounters,
}

fn writes_error(what: &str, problem: impl std::fmt::Display) -> ServeError {
    ServeError::Writes(format!("{what}: {problem}"))
}

/// When a table decided on `as_of` stops accounting: rows known before that day's midnight.
fn accounted_before(manifest: Option<&Manifest>) -> DateTime<Utc> {
    manifest.map_or(DateTime::<Utc>::MIN_UTC, |m| {
        m.as_of.and_time(chrono::NaiveTime::MIN).and_utc()
    })
}

/// The policy `manifest`'s run decided with (the built-in one for a table published outside
/// a nightly run) and the certificate catalog.
async fn rules(store: &Store, manifest: Option<&Manifest>) -> Result<Rules, ServeError> {
    let policy = match manifest.and_then(|m| m.lineage.as_ref()) {
        Some(lineage) => {
            let path = format!("{}/{POLICY_FILE}", lineage.run_folder);
            let bytes = store
                .get(&path)
                .await?
                .ok_or_else(|| writes_error(&path, "the run's policy is gone"))?;
            serde_json::from_slice(&bytes).map_err(|e| writes_error(&path, e))?
        }
        None => LimitPolicy::builtin(),
    };
    let catalog = certificate_catalog(store).await?;
    Ok(Rules { policy, catalog })
}

/// The certificate catalog (`reference/certificate_types`) by type id; empty when the root
/// has none.
pub async fn certificate_catalog(
    store: &Store,
) -> Result<HashMap<u32, CertificateType>, ServeError> {
    let mut catalog = HashMap::new();
    let file = layout::certificate_types_file();
    let batches = match store.get(&file).await? {
        Some(_) => store.read_parquet(&file).await?,
        None => Vec::new(),
    };
    for batch in &batches {
        let text = |name| {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_string_opt::<i32>())
        };
        let ids = batch
            .column_by_name("cert_type_id")
            .and_then(|c| c.as_primitive_opt::<UInt32Type>());
        let (Some(ids), Some(names), Some(families)) = (ids, text("name"), text("family")) else {
            return Err(writes_error(
                &file,
                "no cert_type_id, name and family columns",
            ));
        };
        for row in 0..batch.num_rows() {
            if ids.is_null(row) || names.is_null(row) || families.is_null(row) {
                continue;
            }
            let kind = CertificateType {
                name: names.value(row).to_string(),
                family: families.value(row).to_string(),
            };
            catalog.insert(ids.value(row), kind);
        }
    }
    Ok(catalog)
}

impl Writes {
    /// The write path over the table `manifest` (if one is published), its overlay replayed
    /// from the store.
    pub async fn open(
        store: Store,
        token: String,
        manifest: Option<&Manifest>,
    ) -> Result<Writes, ServeError> {
        let started = Instant::now();
        let accounted = accounted_before(manifest);
        let overlay = Overlay::new(rules(&store, manifest).await?, accounted);
        let writes = Writes {
            store,
            token,
            overlay: RwLock::new(overlay),
            users: AtomicUsize::new(0),
            recording: tokio::sync::Mutex::new(()),
            counters: WriteCounters::default(),
        };
        let (claims, replayed) = writes.replay(accounted).await?;
        info!(
            claims,
            replayed,
            overlay_users = writes.users.load(Ordering::Relaxed),
            seconds = started.elapsed().as_secs_f64(),
            "write path ready: overlay replayed"
        );
        Ok(writes)
    }

    fn overlay(&self) -> std::sync::RwLockReadGuard<'_, Overlay> {
        self.overlay.read().unwrap_or_else(|p| p.into_inner())
    }

    fn overlay_mut(&self) -> std::sync::RwLockWriteGuard<'_, Overlay> {
        self.overlay.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Every recognized raw certificate's number claimed, and the online requests recorded
    /// since `RETRY_DAYS` before `accounted` inserted; returns (claims, replayed).
    async fn replay(&self, accounted: DateTime<Utc>) -> Result<(usize, usize), ServeError> {
        let since = accounted
            .date_naive()
            .checked_sub_days(chrono::Days::new(RETRY_DAYS))
            .unwrap_or(NaiveDate::MIN);
        let (mut claims, mut replayed) = (0, 0);
        for source in ["certificates", "limit_requests"] {
            for (path, _) in self.store.list(&layout::raw(source)).await? {
                let online = is_online(&path).is_some_and(|day| day >= since);
                if !path.ends_with(".parquet") || (source != "certificates" && !online) {
                    continue;
                }
                let bytes = self.store.get(&path).await?.unwrap_or_default();
                let (holders, recorded) = read_object(&path, bytes)?;
                let mut overlay = self.overlay_mut();
                claims += holders.len();
                for (number, user) in holders {
                    overlay.claim(&number, user);
                }
                if let (true, Some(recorded)) = (online, recorded) {
                    overlay.insert(accepted_of(recorded, &path)?);
                    replayed += 1;
                }
                self.users.store(overlay.users(), Ordering::Relaxed);
            }
        }
        Ok((claims, replayed))
    }

    /// True when the request carries the write token.
    pub fn authorized(&self, headers: &HeaderMap) -> bool {
        super::bearer_matches(headers, &self.token)
    }

    /// Users the overlay changes an answer of.
    pub fn overlay_users(&self) -> usize {
        self.users.load(Ordering::Relaxed)
    }

    /// The write path's lines of /metrics: writes by outcome, users in the overlay.
    pub fn write_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let w = &self.counters;
        let _ = writeln!(
            out,
            "# HELP redflower_serve_writes_total Write requests by outcome (accepted: recorded in the store).\n# TYPE redflower_serve_writes_total counter"
        );
        for (outcome, counter) in [
            ("accepted", &w.accepted),
            ("retried", &w.retried),
            ("refused", &w.refused),
            ("failed", &w.failed),
        ] {
            let _ = writeln!(
                out,
                "redflower_serve_writes_total{{outcome=\"{outcome}\"}} {}",
                load(counter)
            );
        }
        let _ = writeln!(
            out,
            "# HELP redflower_serve_overlay_users Users with requests the served table does not account for yet.\n# TYPE redflower_serve_overlay_users gauge\nredflower_serve_overlay_users {}",
            self.overlay_users()
        );
    }

    /// The JSON answer of `user_id` with their requests applied, when they made any the
    /// table does not account for.
    pub fn overlaid_json(&self, snapshot: &Snapshot, user_id: u64) -> Option<Bytes> {
        if self.users.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let answer = snapshot.answer(user_id)?;
        let overlaid = self.overlay().apply(&answer)?;
        serde_json::to_vec(&overlaid).ok().map(Bytes::from)
    }

    /// A newer table is served: requests it accounts for leave the overlay.
    pub async fn account(&self, manifest: &Manifest) {
        let rules = match rules(&self.store, Some(manifest)).await {
            Ok(rules) => rules,
            Err(error) => {
                warn!(version = manifest.version, %error, "cannot read the new table's policy: writes keep deciding with the previous one");
                return;
            }
        };
        let mut overlay = self.overlay_mut();
        overlay.account(rules, accounted_before(Some(manifest)));
        self.users.store(overlay.users(), Ordering::Relaxed);
        info!(
            version = manifest.version,
            overlay_users = overlay.users(),
            "overlay accounted against the new table"
        );
    }

    /// Decides `request` of `user_id` against `snapshot`; an accepted one is stored before
    /// this returns. The status and answer to send.
    async fn record(
        &self,
        snapshot: &Snapshot,
        user_id: u64,
        request: Request,
    ) -> Result<(StatusCode, WriteAnswer), ServeError> {
        let Some(table_answer) = snapshot.answer(user_id) else {
            return Err(ServeError::Writes(format!(
                "user {user_id} is not in limit table version {}",
                snapshot.version()
            )));
        };
        let _recording = self.recording.lock().await;
        let verdict = self
            .overlay()
            .decide(&table_answer, request, Utc::now(), snapshot.version());
        let accepted = match verdict {
            Verdict::Retry(answer) => {
                self.counters.retried.fetch_add(1, Ordering::Relaxed);
                return Ok((StatusCode::OK, answer));
            }
            Verdict::Refused(answer) => {
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                return Ok((refusal_status(answer.reason), answer));
            }
            Verdict::Accept(accepted) => accepted,
        };
        let path = online_object(&accepted);
        let recorded = Recorded {
            request: accepted.request.clone(),
            family: accepted.family.clone(),
            boost: accepted.boost,
            answer: accepted.answer.clone(),
        };
        let bytes = encode(&row_of(&accepted)?, &recorded)?;
        match self.store.put_if_absent(&path, bytes).await {
            Ok(()) => {}
            // the same id reached another server of this root first today: its answer stands
            Err(StoreError::AlreadyExists { .. }) => {
                return self.answer_stored(&path, &accepted, &table_answer).await;
            }
            Err(error) => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                return Err(error.into());
            }
        }
        self.counters.accepted.fetch_add(1, Ordering::Relaxed);
        let answer = accepted.answer.clone();
        let mut overlay = self.overlay_mut();
        overlay.insert(accepted);
        self.users.store(overlay.users(), Ordering::Relaxed);
        Ok((StatusCode::OK, answer))
    }

    /// The answer of a request found stored at `path` already (by another server of this
    /// root, today): its answer if it is this request, else a refusal.
    async fn answer_stored(
        &self,
        path: &str,
        ours: &Accepted,
        table_answer: &LimitAnswer,
    ) -> Result<(StatusCode, WriteAnswer), ServeError> {
        let bytes = self.store.get(path).await?.unwrap_or_default();
        let (_, recorded) = read_object(path, bytes)?;
        let recorded =
            recorded.ok_or_else(|| writes_error(path, "an online object without its request"))?;
        if recorded.answer.user_id != ours.user_id || recorded.request != ours.request {
            self.counters.refused.fetch_add(1, Ordering::Relaxed);
            let reason = WriteReason::RequestIdReused;
            let refusal = self.overlay().refusal(
                table_answer,
                ours.request.request_id(),
                reason,
                ours.answer.table_version,
            );
            return Ok((refusal_status(Some(reason)), refusal));
        }
        self.counters.retried.fetch_add(1, Ordering::Relaxed);
        let accepted = accepted_of(recorded, path)?;
        let answer = accepted.answer.clone();
        let mut overlay = self.overlay_mut();
        overlay.insert(accepted);
        self.users.store(overlay.users(), Ordering::Relaxed);
        Ok((StatusCode::OK, answer))
    }
}

fn refusal_status(reason: Option<WriteReason>) -> StatusCode {
    match reason {
        Some(
            WriteReason::RequestIdReused
            | WriteReason::CertificateNumberClaimedByAnotherUser
            | WriteReason::UploadBurst,
        ) => StatusCode::CONFLICT,
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    }
}

/// The day of an online object's partition, when `path` is one.
fn is_online(path: &str) -> Option<NaiveDate> {
    let (folder, file) = path.rsplit_once('/')?;
    file.starts_with("online-").then_some(())?;
    let day = folder.rsplit_once("dt=")?.1;
    NaiveDate::parse_from_str(day, "%Y-%m-%d").ok()
}

/// Where an accepted request's row goes: its own object in its source, named by its id.
fn online_object(accepted: &Accepted) -> String {
    format!(
        "{}/dt={}/online-{}.parquet",
        layout::raw(accepted.request.source()),
        accepted.known_at.date_naive(),
        accepted.request.request_id()
    )
}

fn utc_micros(value: Option<i64>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from(vec![value]).with_timezone("UTC"))
}

/// The raw row of an accepted request, in its source's schema.
fn row_of(accepted: &Accepted) -> Result<RecordBatch, ServeError> {
    let known = Some(accepted.known_at.timestamp_micros());
    let user: ArrayRef = Arc::new(UInt64Array::from(vec![accepted.user_id]));
    let (table, columns): (&TableSchema, Vec<ArrayRef>) = match &accepted.request {
        Request::Certificate(upload) => {
            let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("a date");
            let valid_until = upload
                .valid_until
                .map(|day| (day - epoch).num_days() as i32);
            let no_text = Arc::new(StringArray::from(vec![None::<&str>])) as ArrayRef;
            (
                &schema::CERTIFICATES,
                vec![
                    user,
                    Arc::new(StringArray::from(vec![upload.certificate_no.as_str()])),
                    Arc::new(UInt32Array::from(vec![upload.cert_type_id])),
                    utc_micros(known),
                    Arc::new(BooleanArray::from(vec![true])),
                    utc_micros(None),
                    utc_micros(None),
                    no_text,
                    Arc::new(Date32Array::from(vec![valid_until])),
                    Arc::new(Float32Array::from(vec![upload.confidence as f32])),
                    utc_micros(known),
                ],
            )
        }
        Request::LimitRequest(request) => (
            &schema::LIMIT_REQUESTS,
            vec![
                user,
                utc_micros(known),
                Arc::new(Float64Array::from(vec![request.requested_limit])),
                utc_micros(known),
            ],
        ),
    };
    RecordBatch::try_new(table.raw_arrow(), columns).map_err(|e| writes_error(&table.name, e))
}

/// One row as Parquet, with what was recorded in the file's metadata.
fn encode(row: &RecordBatch, recorded: &Recorded) -> Result<Bytes, ServeError> {
    let text = serde_json::to_string(recorded).map_err(|e| writes_error("a request", e))?;
    let props = WriterProperties::builder()
        .set_key_value_metadata(Some(vec![KeyValue::new(RECORDED_KEY.to_string(), text)]))
        .build();
    let mut buffer = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut buffer, row.schema(), Some(props))
        .map_err(|e| writes_error("a request's row", e))?;
    writer
        .write(row)
        .and_then(|_| writer.close().map(|_| ()))
        .map_err(|e| writes_error("a request's row", e))?;
    Ok(Bytes::from(buffer))
}

/// A raw certificate or limit request object: the (number, user) of its recognized
/// certificate rows, and what an online object recorded.
fn read_object(
    path: &str,
    bytes: Bytes,
) -> Result<(Vec<(String, u64)>, Option<Recorded>), ServeError> {
    let builder =
        ParquetRecordBatchReaderBuilder::try_new(bytes).map_err(|e| writes_error(path, e))?;
    let recorded = builder
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .and_then(|pairs| pairs.iter().find(|kv| kv.key == RECORDED_KEY))
        .and_then(|kv| kv.value.as_deref())
        .map(serde_json::from_str::<Recorded>)
        .transpose()
        .map_err(|e| writes_error(path, e))?;
    let mut holders = Vec::new();
    let reader = builder.build().map_err(|e| writes_error(path, e))?;
    for batch in reader {
        let batch = batch.map_err(|e| writes_error(path, e))?;
        let columns = (
            batch.column_by_name("user_id"),
            batch.column_by_name("certificate_no"),
            batch.column_by_name("recognized"),
        );
        let (Some(users), Some(numbers), Some(recognized)) = columns else {
            continue; // a limit request
        };
        let users = users.as_primitive_opt::<UInt64Type>();
        let numbers = numbers.as_string_opt::<i32>();
        let recognized = recognized.as_boolean_opt();
        let (Some(users), Some(numbers), Some(recognized)) = (users, numbers, recognized) else {
            return Err(writes_error(
                path,
                "certificate columns of unexpected types",
            ));
        };
        for row in 0..batch.num_rows() {
            let valid = !users.is_null(row) && !numbers.is_null(row) && !recognized.is_null(row);
            if valid && recognized.value(row) {
                holders.push((numbers.value(row).to_string(), users.value(row)));
            }
        }
    }
    Ok((holders, recorded))
}

fn accepted_of(recorded: Recorded, path: &str) -> Result<Accepted, ServeError> {
    let known_at = recorded
        .answer
        .known_at
        .as_deref()
        .and_then(|at| DateTime::parse_from_rfc3339(at).ok())
        .ok_or_else(|| writes_error(path, "a recorded request without its known_at"))?;
    Ok(Accepted {
        user_id: recorded.answer.user_id,
        known_at: known_at.with_timezone(&Utc),
        request: recorded.request,
        family: recorded.family,
        boost: recorded.boost,
        answer: recorded.answer,
    })
}

/// `POST /v1/users/{user_id}/certificates`
pub(super) async fn upload_certificate(
    State(state): State<Arc<AppState>>,
    Path(user_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match serde_json::from_slice::<CertificateUpload>(&body) {
        Ok(upload) => write(&state, &headers, &user_id, Request::Certificate(upload)).await,
        Err(error) => bad_body(&state, &headers, error),
    }
}

/// `POST /v1/users/{user_id}/limit-request`
pub(super) async fn request_limit(
    State(state): State<Arc<AppState>>,
    Path(user_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match serde_json::from_slice::<LimitRequest>(&body) {
        Ok(request) => write(&state, &headers, &user_id, Request::LimitRequest(request)).await,
        Err(error) => bad_body(&state, &headers, error),
    }
}

fn bad_body(state: &AppState, headers: &HeaderMap, error: serde_json::Error) -> Response {
    if let Err(refused) = allowed(state, headers) {
        return refused;
    }
    json_error(
        StatusCode::BAD_REQUEST,
        format!("the request body is not the JSON this endpoint takes: {error}"),
        None,
    )
}

/// The write path, when this server has one and the caller holds its token.
fn allowed<'a>(state: &'a AppState, headers: &HeaderMap) -> Result<&'a Writes, Response> {
    let Some(writes) = &state.writes else {
        return Err(json_error(
            StatusCode::FORBIDDEN,
            "writes are not enabled on this server (start it with --write-token)".into(),
            None,
        ));
    };
    if !writes.authorized(headers) {
        let mut response = json_error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong write token".into(),
            None,
        );
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return Err(response);
    }
    Ok(writes)
}

async fn write(state: &AppState, headers: &HeaderMap, user_id: &str, request: Request) -> Response {
    let writes = match allowed(state, headers) {
        Ok(writes) => writes,
        Err(refused) => return refused,
    };
    let Ok(id) = user_id.parse::<u64>() else {
        return json_error(
            StatusCode::BAD_REQUEST,
            format!("'{user_id}' is not a user id (an unsigned integer)"),
            None,
        );
    };
    if state.shard.is_some_and(|shard| !shard.contains(id)) {
        return misdirected(id, state.shard);
    }
    let Some(snapshot) = state.snapshot() else {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no limit table has been published yet".into(),
            None,
        );
    };
    if snapshot.answer_json(id).is_none() {
        let message = format!(
            "user {id} is not in limit table version {}",
            snapshot.version()
        );
        return json_error(StatusCode::NOT_FOUND, message, Some(snapshot.version()));
    }
    match writes.record(&snapshot, id, request).await {
        Ok((status, answer)) => (status, axum::Json(answer)).into_response(),
        Err(error) => {
            warn!(user_id = id, %error, "a write was not recorded");
            json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not recorded, retry with the same request id: {error}"),
                Some(snapshot.version()),
            )
        }
    }
}
