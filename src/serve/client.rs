//! A small client for `redflower serve`, for Rust services and for the load generator.
//!
//! ```no_run
//! # async fn example() -> Result<(), redflower::serve::client::ClientError> {
//! use redflower::serve::client::LimitsClient;
//! let client = LimitsClient::new("http://127.0.0.1:8080", None)?;
//! match client.limit(42).await? {
//!     Some(answer) => println!("limit {} (table v{})", answer.credit_limit, answer.versions.table),
//!     None => println!("no such user"),
//! }
//! # Ok(()) }
//! ```
//!
//! One client keeps one HTTP/1.1 keep-alive connection and sends one request at a time on it
//! (reconnecting once if the server closed it); use one client per concurrent task.
//!
//! Writes (`serve --write-token`) go through the same client given the write token:
//!
//! ```no_run
//! # async fn example() -> Result<(), redflower::serve::client::ClientError> {
//! use redflower::serve::client::LimitsClient;
//! use redflower::serve::overlay::LimitRequest;
//! let client = LimitsClient::new("http://127.0.0.1:8080", None)?.with_write_token("w-secret");
//! let lower = LimitRequest { request_id: "app-7f3a".into(), requested_limit: Some(2000.0) };
//! let (status, answer) = client.request_limit(42, &lower).await?;
//! println!("{status}: limit now {}", answer.credit_limit);
//! # Ok(()) }
//! ```
//!
//! A read path sharded by user (`serve --shard I/N` on N servers) is read through
//! [`ShardedLimitsClient`], which asks the server of the user's shard:
//!
//! ```no_run
//! # async fn example() -> Result<(), redflower::serve::client::ClientError> {
//! use redflower::serve::client::ShardedLimitsClient;
//! // server i runs `redflower serve --shard i/2`
//! let client = ShardedLimitsClient::new(&["http://10.0.0.1:8080", "http://10.0.0.2:8080"], None)?;
//! let answer = client.limit(42).await?;
//! # Ok(()) }
//! ```

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::sync::Mutex;

use super::overlay::{CertificateUpload, LimitRequest, Provisional, WriteAnswer};
use crate::publish::LimitAnswer;
use crate::user_index::UserShard;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("'{0}' is not a server URL: use http://HOST:PORT")]
    Url(String),
    #[error("cannot reach {authority}: {source}")]
    Connect {
        authority: String,
        source: std::io::Error,
    },
    #[error("HTTP error talking to {authority}: {source}")]
    Http {
        authority: String,
        source: hyper::Error,
    },
    #[error("{authority}{path} answered {status}: {body}")]
    Status {
        authority: String,
        path: String,
        status: StatusCode,
        body: String,
    },
    #[error("{authority}{path} answered a body that is not the documented JSON: {source}")]
    Body {
        authority: String,
        path: String,
        source: serde_json::Error,
    },
}

pub struct LimitsClient {
    /// host:port
    authority: String,
    token: Option<String>,
    write_token: Option<String>,
    connection: Mutex<Option<SendRequest<Full<Bytes>>>>,
}

impl LimitsClient {
    /// `base_url`: `http://HOST:PORT` of a `redflower serve`; `token`: its bearer token.
    pub fn new(base_url: &str, token: Option<String>) -> Result<LimitsClient, ClientError> {
        let authority = base_url
            .strip_prefix("http://")
            .map(|rest| rest.trim_end_matches('/'))
            .filter(|rest| !rest.is_empty() && !rest.contains('/'))
            .ok_or_else(|| ClientError::Url(base_url.to_string()))?;
        Ok(LimitsClient {
            authority: authority.to_string(),
            token,
            write_token: None,
            connection: Mutex::new(None),
        })
    }

    /// The same client, sending `token` on writes (the server's `--write-token`).
    pub fn with_write_token(mut self, token: &str) -> LimitsClient {
        self.write_token = Some(token.to_string());
        self
    }

    /// The user's limit as served now, with what of it is provisional (requests made since
    /// the table was decided), or `None` when the table has no such user.
    pub async fn limit_now(
        &self,
        user_id: u64,
    ) -> Result<Option<(LimitAnswer, Option<Provisional>)>, ClientError> {
        #[derive(serde::Deserialize)]
        struct Served {
            #[serde(flatten)]
            answer: LimitAnswer,
            provisional: Option<Provisional>,
        }
        let path = format!("/v1/limits/{user_id}");
        let (status, body) = self.get(&path).await?;
        match status {
            StatusCode::OK => serde_json::from_slice::<Served>(&body)
                .map(|served| Some((served.answer, served.provisional)))
                .map_err(|source| self.body_error(path, source)),
            StatusCode::NOT_FOUND => Ok(None),
            status => Err(self.status_error(path, status, &body)),
        }
    }

    /// `POST /v1/users/{user_id}/certificates`: the status and the answer (200 accepted or
    /// answered before, 409 and 422 refused with a reason).
    pub async fn upload_certificate(
        &self,
        user_id: u64,
        upload: &CertificateUpload,
    ) -> Result<(StatusCode, WriteAnswer), ClientError> {
        let path = format!("/v1/users/{user_id}/certificates");
        self.write(path, serde_json::to_vec(upload)).await
    }

    /// `POST /v1/users/{user_id}/limit-request`: as `upload_certificate`.
    pub async fn request_limit(
        &self,
        user_id: u64,
        request: &LimitRequest,
    ) -> Result<(StatusCode, WriteAnswer), ClientError> {
        let path = format!("/v1/users/{user_id}/limit-request");
        self.write(path, serde_json::to_vec(request)).await
    }

    async fn write(
        &self,
        path: String,
        body: Result<Vec<u8>, serde_json::Error>,
    ) -> Result<(StatusCode, WriteAnswer), ClientError> {
        let body = body.map_err(|source| self.body_error(path.clone(), source))?;
        let token = self.write_token.as_deref();
        let (status, answer) = self
            .send(hyper::Method::POST, &path, Bytes::from(body), token)
            .await?;
        match status {
            StatusCode::OK | StatusCode::CONFLICT | StatusCode::UNPROCESSABLE_ENTITY => {
                serde_json::from_slice(&answer)
                    .map(|answer| (status, answer))
                    .map_err(|source| self.body_error(path, source))
            }
            status => Err(self.status_error(path, status, &answer)),
        }
    }

    fn body_error(&self, path: String, source: serde_json::Error) -> ClientError {
        ClientError::Body {
            authority: self.authority.clone(),
            path,
            source,
        }
    }

    /// The user's published limit, or `None` when the table has no such user.
    pub async fn limit(&self, user_id: u64) -> Result<Option<LimitAnswer>, ClientError> {
        let path = format!("/v1/limits/{user_id}");
        let (status, body) = self.get(&path).await?;
        match status {
            StatusCode::OK => {
                serde_json::from_slice(&body)
                    .map(Some)
                    .map_err(|source| ClientError::Body {
                        authority: self.authority.clone(),
                        path,
                        source,
                    })
            }
            StatusCode::NOT_FOUND => Ok(None),
            status => Err(self.status_error(path, status, &body)),
        }
    }

    /// `GET path`, returning the status and the whole body.
    pub async fn get(&self, path: &str) -> Result<(StatusCode, Bytes), ClientError> {
        let token = self.token.as_deref();
        self.send(hyper::Method::GET, path, Bytes::new(), token)
            .await
    }

    /// One request on the kept-alive connection, returning the status and the whole body.
    async fn send(
        &self,
        method: hyper::Method,
        path: &str,
        body: Bytes,
        token: Option<&str>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let mut connection = self.connection.lock().await;
        // a kept-alive connection the server has closed fails on first use: reconnect once
        for attempt in 0..2 {
            let sender = match connection.as_mut() {
                Some(sender) if !sender.is_closed() => sender,
                _ => connection.insert(self.connect().await?),
            };
            let mut request = Request::builder()
                .method(method.clone())
                .uri(path)
                .header(hyper::header::HOST, &self.authority);
            if let Some(token) = token {
                request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
            }
            if method == hyper::Method::POST {
                request = request.header(hyper::header::CONTENT_TYPE, "application/json");
            }
            let request = request
                .body(Full::new(body.clone()))
                .map_err(|e| ClientError::Url(format!("{}{path}: {e}", self.authority)))?;
            let result = async {
                let response = sender.send_request(request).await?;
                let status = response.status();
                let body = response.into_body().collect().await?.to_bytes();
                Ok::<_, hyper::Error>((status, body))
            }
            .await;
            match result {
                Ok(answer) => return Ok(answer),
                Err(source) if attempt == 0 => {
                    tracing::debug!(%source, "connection lost; reconnecting");
                    *connection = None;
                }
                Err(source) => {
                    return Err(ClientError::Http {
                        authority: self.authority.clone(),
                        source,
                    });
                }
            }
        }
        unreachable!("the loop returns on its second attempt")
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, ClientError> {
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|source| ClientError::Connect {
                authority: self.authority.clone(),
                source,
            })?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|source| ClientError::Http {
                authority: self.authority.clone(),
                source,
            })?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection closed");
            }
        });
        Ok(sender)
    }

    fn status_error(&self, path: String, status: StatusCode, body: &[u8]) -> ClientError {
        ClientError::Status {
            authority: self.authority.clone(),
            path,
            status,
            body: String::from_utf8_lossy(body).into_owned(),
        }
    }
}

/// Clients of the N servers of a sharded read path, server `i` holding shard `i/N`: each
/// lookup goes to the server of the user's shard (`UserShard::of(user_id, N)`). A server
/// listed in the wrong place answers 421 naming the shard it is, which comes back as
/// `ClientError::Status`.
pub struct ShardedLimitsClient {
    shards: Vec<LimitsClient>,
}

impl ShardedLimitsClient {
    /// `base_urls[i]`: the server started with `--shard i/N`, N the number of URLs.
    pub fn new(
        base_urls: &[&str],
        token: Option<String>,
    ) -> Result<ShardedLimitsClient, ClientError> {
        if base_urls.is_empty() || base_urls.len() > u32::MAX as usize {
            return Err(ClientError::Url(format!(
                "{} server URLs: a sharded read path has at least one",
                base_urls.len()
            )));
        }
        let shards = base_urls
            .iter()
            .map(|url| LimitsClient::new(url, token.clone()))
            .collect::<Result<_, _>>()?;
        Ok(ShardedLimitsClient { shards })
    }

    /// The client of the server holding `user_id`.
    pub fn server_of(&self, user_id: u64) -> &LimitsClient {
        &self.shards[UserShard::of(user_id, self.shards.len() as u32) as usize]
    }

    /// The user's published limit from their shard's server, `None` when it has no such user.
    pub async fn limit(&self, user_id: u64) -> Result<Option<LimitAnswer>, ClientError> {
        self.server_of(user_id).limit(user_id).await
    }
}
