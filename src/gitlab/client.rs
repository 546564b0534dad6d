//! HTTP transport and the coordinator endpoints (protocol sections 1–3, 5–7).

use super::Error;
use super::types::JobResponse;
use crate::secret::Secret;
use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::future::Future;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Retry rules of protocol 1.4: retryable statuses are retried up to `max_attempts` times in all,
/// waiting `Retry-After` / `RateLimit-ResetTime` when GitLab names a time, else an exponential
/// backoff with jitter.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts per logical request, the first one included.
    pub max_attempts: u32,
    /// First backoff step.
    pub base: Duration,
    /// Largest backoff step, and largest `Retry-After` we honour.
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// Backoff before attempt `attempt + 1` (attempt counts from 1): base·2^(attempt-1), capped,
    /// with up to 25 % jitter so many runners do not retry in lockstep.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let capped = exp.min(self.cap);
        let jitter_ms = (capped.as_millis() as u64 / 4).max(1);
        let jitter = Duration::from_millis(rand::random_range(0..jitter_ms));
        (capped + jitter).min(self.cap)
    }
}

/// Client settings. Defaults follow the official runner where it matters (long timeouts for long
/// polling); tests shorten them.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Timeout of ordinary requests (updates, trace patches, verify).
    pub request_timeout: Duration,
    /// Timeout of `POST /jobs/request`; above Workhorse's 50 s long-polling window.
    pub job_request_timeout: Duration,
    /// Timeout of artifact uploads and downloads.
    pub artifact_timeout: Duration,
    /// TCP/TLS connect timeout.
    pub connect_timeout: Duration,
    /// Retry rules.
    pub retry: RetryPolicy,
    /// Largest JSON answer we read (job payloads included).
    pub max_response_body: usize,
    /// `User-Agent` header.
    pub user_agent: String,
    /// `[[runners]] tls-ca-file`: extra CA certificates (PEM) trusted for GitLab, besides the
    /// built-in roots.
    pub tls_ca_file: Option<std::path::PathBuf>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            request_timeout: Duration::from_secs(60),
            job_request_timeout: Duration::from_secs(90),
            artifact_timeout: Duration::from_secs(3600),
            connect_timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            max_response_body: 16 * 1024 * 1024,
            user_agent: default_user_agent(),
            tls_ca_file: None,
        }
    }
}

/// `isolated-runner <version> (<os>/<arch>)`, shaped like gitlab-runner's.
pub fn default_user_agent() -> String {
    format!(
        "isolated-runner {} ({}/{})",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::OS,
        go_arch()
    )
}

/// Go-style architecture name (`amd64`, `arm64`), which GitLab expects in `info.architecture`.
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

/// One GitLab instance. Cheap to clone (the connection pool is shared).
#[derive(Clone)]
pub struct Client {
    pub(crate) http: reqwest::Client,
    pub(crate) base: url::Url,
    pub(crate) options: ClientOptions,
}

/// Answer of `POST /runners/verify` and `POST /runners`.
#[derive(Clone, Default)]
pub struct VerifyResponse {
    /// Runner id, when GitLab says (older GitLab answers a bare `200`).
    pub id: Option<u64>,
    /// The (possibly new) runner token.
    pub token: Option<Secret>,
    /// Expiry of the token, as GitLab wrote it.
    pub token_expires_at: Option<String>,
}

impl std::fmt::Debug for VerifyResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyResponse")
            .field("id", &self.id)
            .field("token_expires_at", &self.token_expires_at)
            .finish_non_exhaustive()
    }
}

/// Body of `POST /runners` (legacy registration, protocol 2.4).
#[derive(Clone, Default)]
pub struct RegisterRequest {
    /// The registration token.
    pub registration_token: Secret,
    /// Runner description.
    pub description: String,
    /// Tags.
    pub tag_list: Vec<String>,
    /// Pick up jobs without tags.
    pub run_untagged: bool,
    /// Lock to the current project.
    pub locked: bool,
    /// `not_protected` or `ref_protected`.
    pub access_level: Option<String>,
    /// Largest job timeout in seconds.
    pub maximum_timeout: Option<u64>,
    /// Register paused.
    pub paused: bool,
    /// Free-form maintenance note.
    pub maintenance_note: Option<String>,
    /// The `info` block.
    pub info: Value,
}

/// Body of `POST /jobs/request`.
#[derive(Clone)]
pub struct JobRequest {
    /// Runner token.
    pub token: Secret,
    /// This machine's `system_id`.
    pub system_id: String,
    /// Last `X-GitLab-Last-Update` seen, for long polling.
    pub last_update: Option<String>,
    /// The `info` block.
    pub info: Value,
}

/// A job GitLab handed out whose payload we cannot use.
#[derive(Clone)]
pub struct MalformedJob {
    /// Job id, when it could be read from the raw JSON.
    pub id: Option<u64>,
    /// Job token, when it could be read from the raw JSON.
    pub token: Option<Secret>,
    /// What was wrong, for the trace and the log.
    pub reason: String,
}

impl std::fmt::Debug for MalformedJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MalformedJob")
            .field("id", &self.id)
            .field("reason", &self.reason)
            .finish_non_exhaustive()
    }
}

/// What `POST /jobs/request` gave.
#[derive(Debug)]
pub enum JobRequestOutcome {
    /// `204`: nothing to do.
    NoJob {
        /// New `X-GitLab-Last-Update`, when the answer carried one.
        last_update: Option<String>,
    },
    /// `201` with a payload that parsed.
    Job {
        /// The job.
        job: Box<JobResponse>,
        /// New `X-GitLab-Last-Update`, when the answer carried one.
        last_update: Option<String>,
    },
    /// `201` with a payload we cannot run.
    Malformed(MalformedJob),
    /// `409`: the job was taken by somebody else; healthy, poll again.
    Conflict,
}

/// Body of `PUT /jobs/:id` (protocol 7.1); the token is added by [`Client::update_job`].
#[derive(Debug, Clone, Default)]
pub struct UpdateJob {
    /// `running`, `success` or `failed`.
    pub state: String,
    /// With `failed` only.
    pub failure_reason: Option<String>,
    /// The script's exit status; sent only when non-zero.
    pub exit_code: Option<i32>,
    /// `crc32:<8 hex>` of the trace.
    pub checksum: Option<String>,
    /// Trace size in bytes.
    pub bytesize: Option<u64>,
    /// The `info` block.
    pub info: Option<Value>,
}

/// A protocol-level answer of a job endpoint: the status plus the headers that steer the runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobAnswer {
    /// HTTP status (200, 202, 403, 404, 416).
    pub status: u16,
    /// `Job-Status` header: `running`, `canceling`, `canceled`, `failed`, `success`.
    pub job_status: Option<String>,
    /// `X-GitLab-Trace-Update-Interval`, when positive.
    pub update_interval: Option<Duration>,
    /// The number after the dash of `Range: 0-<n>`: the server's trace size.
    pub range_end: Option<u64>,
}

impl JobAnswer {
    fn from_headers(status: u16, h: &HeaderMap) -> Self {
        let text = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
        JobAnswer {
            status,
            job_status: text("job-status").map(str::to_string),
            update_interval: text("x-gitlab-trace-update-interval")
                .and_then(|v| v.parse::<u64>().ok())
                .filter(|s| *s > 0)
                // Capped at 15 minutes like the official runner, so a bad header cannot park us.
                .map(|s| Duration::from_secs(s.min(900))),
            range_end: text("range").and_then(parse_range_end),
        }
    }
}

/// `0-1234` → 1234 (the server's size, not an index).
pub fn parse_range_end(v: &str) -> Option<u64> {
    v.trim()
        .trim_start_matches("bytes")
        .trim()
        .split_once('-')
        .and_then(|(_, end)| end.split('/').next())
        .and_then(|e| e.trim().parse().ok())
}

/// Strips a trailing `/` and `/ci` and appends `/api/v4/` (protocol 1.1).
pub fn api_base(url: &url::Url) -> Result<url::Url, Error> {
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(Error::InvalidUrl {
            url: url.to_string(),
            reason: "only http and https are supported".into(),
        });
    }
    let mut s = url.as_str().trim_end_matches('/').to_string();
    if let Some(stripped) = s.strip_suffix("/ci") {
        s = stripped.trim_end_matches('/').to_string();
    }
    s.push_str("/api/v4/");
    url::Url::parse(&s).map_err(|e| Error::InvalidUrl {
        url: url.to_string(),
        reason: e.to_string(),
    })
}

fn retryable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 429 | 500 | 502 | 503 | 504) || status.as_u16() >= 512
}

/// `RateLimit-ResetTime` (RFC 1123 date) wins over `Retry-After` (seconds), as in the official
/// runner.
pub fn retry_after(h: &HeaderMap) -> Option<Duration> {
    if let Some(reset) = h.get("ratelimit-resettime").and_then(|v| v.to_str().ok())
        && let Ok(at) = httpdate_parse(reset)
    {
        return Some(
            at.duration_since(std::time::SystemTime::now())
                .unwrap_or_default(),
        );
    }
    h.get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

fn httpdate_parse(s: &str) -> Result<std::time::SystemTime, httpdate::Error> {
    httpdate::parse_http_date(s.trim())
}

fn endpoint_name(method: &Method, path: &str) -> String {
    format!("{method} /api/v4/{path}")
}

/// The `message` of a GitLab error body, or the start of the text.
fn error_message(body: &[u8]) -> String {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => match map.get("message").or_else(|| map.get("error")) {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => Value::Object(map).to_string(),
        },
        _ => String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned(),
    }
}

impl Client {
    /// A client for the GitLab at `url` (the `[[runners]] url`).
    pub fn new(url: &url::Url, options: ClientOptions) -> Result<Client, Error> {
        let base = api_base(url)?;
        let mut builder = reqwest::Client::builder();
        if let Some(path) = &options.tls_ca_file {
            let bad = |reason: String| Error::TlsCaFile {
                path: path.clone(),
                reason,
            };
            // Read once when the client is made (startup), a small file.
            let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| bad(format!("no usable certificate: {e}")))?;
            if certs.is_empty() {
                return Err(bad("no certificate in the file".to_string()));
            }
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        let http = builder
            .user_agent(options.user_agent.clone())
            .connect_timeout(options.connect_timeout)
            // Redirects are followed by hand where needed: reqwest would carry JOB-TOKEN to
            // another host (protocol 11.1).
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(Error::ClientSetup)?;
        Ok(Client {
            http,
            base,
            options,
        })
    }

    /// The `/api/v4/` base URL.
    pub fn base_url(&self) -> &url::Url {
        &self.base
    }

    /// The options this client was built with.
    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    pub(crate) fn url(&self, path: &str) -> Result<url::Url, Error> {
        self.base.join(path).map_err(|e| Error::InvalidUrl {
            url: format!("{}{path}", self.base),
            reason: e.to_string(),
        })
    }

    /// Sends a request built by `make`, retrying per [`RetryPolicy`]. `make` runs once per
    /// attempt so bodies are regenerated. `stop` interrupts the waits between attempts.
    pub(crate) async fn send<F, Fut>(
        &self,
        endpoint: &str,
        stop: Option<&CancellationToken>,
        mut make: F,
    ) -> Result<reqwest::Response, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<reqwest::RequestBuilder, Error>>,
    {
        let policy = &self.options.retry;
        let mut attempt = 1u32;
        loop {
            let request = make()
                .await?
                .header("X-Request-Id", uuid::Uuid::new_v4().simple().to_string());
            let wait = match request.send().await {
                Ok(resp) if retryable(resp.status()) && attempt < policy.max_attempts => {
                    let wait = retry_after(resp.headers())
                        .map(|d| d.min(policy.cap))
                        .unwrap_or_else(|| policy.backoff(attempt));
                    tracing::debug!(
                        endpoint,
                        status = resp.status().as_u16(),
                        attempt,
                        ?wait,
                        "retrying"
                    );
                    wait
                }
                Ok(resp) => return Ok(resp),
                Err(err) if attempt < policy.max_attempts && !err.is_builder() => {
                    let wait = policy.backoff(attempt);
                    tracing::debug!(endpoint, attempt, ?wait, error = %err, "retrying after transport error");
                    wait
                }
                Err(source) => {
                    return Err(Error::Transport {
                        endpoint: endpoint.to_string(),
                        source,
                    });
                }
            };
            attempt += 1;
            match stop {
                Some(stop) => {
                    tokio::select! {
                        _ = stop.cancelled() => return Err(Error::Cancelled { endpoint: endpoint.to_string() }),
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
                None => tokio::time::sleep(wait).await,
            }
        }
    }

    /// Reads at most `limit` bytes of a body, failing past it (GitLab answers are small; an
    /// endless body must not eat the runner's memory).
    pub(crate) async fn read_body(
        endpoint: &str,
        mut resp: reqwest::Response,
        limit: usize,
    ) -> Result<Bytes, Error> {
        let mut buf = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    if buf.len() + chunk.len() > limit {
                        return Err(Error::BodyTooLarge {
                            endpoint: endpoint.to_string(),
                            limit,
                        });
                    }
                    buf.extend_from_slice(&chunk);
                }
                Ok(None) => return Ok(Bytes::from(buf)),
                Err(source) => {
                    return Err(Error::Transport {
                        endpoint: endpoint.to_string(),
                        source,
                    });
                }
            }
        }
    }

    /// Turns a non-success answer into an [`Error`].
    pub(crate) async fn error_for(endpoint: &str, resp: reqwest::Response) -> Error {
        let status = resp.status().as_u16();
        let wait = retry_after(resp.headers());
        let message = match Self::read_body(endpoint, resp, 64 * 1024).await {
            Ok(body) => error_message(&body),
            Err(_) => String::new(),
        };
        let endpoint = endpoint.to_string();
        match status {
            403 => Error::Forbidden { endpoint, message },
            413 => Error::TooLarge { endpoint, message },
            _ => Error::Status {
                endpoint,
                status,
                message,
                retry_after: wait,
            },
        }
    }

    async fn post_json(
        &self,
        path: &str,
        body: Value,
        timeout: Duration,
        stop: Option<&CancellationToken>,
        runner_token: Option<&Secret>,
    ) -> Result<(String, reqwest::Response), Error> {
        let endpoint = endpoint_name(&Method::POST, path);
        let url = self.url(path)?;
        let resp = self
            .send(&endpoint, stop, || {
                let mut req = self
                    .http
                    .post(url.clone())
                    .timeout(timeout)
                    .header("Accept", "application/json")
                    .json(&body);
                if let Some(t) = runner_token {
                    req = req.header("RUNNER-TOKEN", secret_header(t));
                }
                async move { Ok(req) }
            })
            .await?;
        Ok((endpoint, resp))
    }

    async fn parse_verify(
        endpoint: &str,
        resp: reqwest::Response,
    ) -> Result<VerifyResponse, Error> {
        let body = Self::read_body(endpoint, resp, 64 * 1024).await?;
        #[derive(serde::Deserialize)]
        struct Raw {
            id: Option<u64>,
            token: Option<String>,
            token_expires_at: Option<String>,
        }
        match serde_json::from_slice::<Raw>(&body) {
            Ok(raw) => Ok(VerifyResponse {
                id: raw.id,
                token: raw.token.filter(|t| !t.is_empty()).map(Secret::new),
                token_expires_at: raw.token_expires_at,
            }),
            // Older GitLab answers verify with the plain text `200` (protocol 12.3).
            Err(_) if body.trim_ascii().is_empty() || body.trim_ascii() == b"200" => {
                Ok(VerifyResponse::default())
            }
            Err(e) => Err(Error::Decode {
                endpoint: endpoint.to_string(),
                reason: e.to_string(),
            }),
        }
    }

    /// `POST /runners/verify`: checks a runner token (and registers this machine as a runner
    /// manager of it).
    pub async fn verify(
        &self,
        token: &Secret,
        system_id: &str,
        info: &Value,
    ) -> Result<VerifyResponse, Error> {
        let body = json!({"token": token.expose(), "system_id": system_id, "info": info});
        let (endpoint, resp) = self
            .post_json(
                "runners/verify",
                body,
                self.options.request_timeout,
                None,
                Some(token),
            )
            .await?;
        if resp.status().is_success() {
            Self::parse_verify(&endpoint, resp).await
        } else {
            Err(Self::error_for(&endpoint, resp).await)
        }
    }

    /// `POST /runners/reset_authentication_token`: GitLab replaces `token` with a new one (201
    /// with `token` and `token_expires_at`); the old token stops working at once. gitlab-runner
    /// calls this when three quarters of the token's lifetime have passed.
    pub async fn reset_token(&self, token: &Secret) -> Result<VerifyResponse, Error> {
        let body = json!({"token": token.expose()});
        let (endpoint, resp) = self
            .post_json(
                "runners/reset_authentication_token",
                body,
                self.options.request_timeout,
                None,
                Some(token),
            )
            .await?;
        if !resp.status().is_success() {
            return Err(Self::error_for(&endpoint, resp).await);
        }
        let answer = Self::parse_verify(&endpoint, resp).await?;
        if answer.token.is_none() {
            return Err(Error::Decode {
                endpoint,
                reason: "no token in the answer".into(),
            });
        }
        Ok(answer)
    }

    /// `POST /runners`: legacy registration with a registration token.
    pub async fn register(&self, req: &RegisterRequest) -> Result<VerifyResponse, Error> {
        let mut body = json!({
            "token": req.registration_token.expose(),
            "description": req.description,
            "run_untagged": req.run_untagged,
            "locked": req.locked,
            "paused": req.paused,
            "info": req.info,
        });
        if !req.tag_list.is_empty() {
            body["tag_list"] = json!(req.tag_list.join(","));
        }
        if let Some(a) = &req.access_level {
            body["access_level"] = json!(a);
        }
        if let Some(t) = req.maximum_timeout {
            body["maximum_timeout"] = json!(t);
        }
        if let Some(n) = &req.maintenance_note {
            body["maintenance_note"] = json!(n);
        }
        let (endpoint, resp) = self
            .post_json("runners", body, self.options.request_timeout, None, None)
            .await?;
        if resp.status().is_success() {
            Self::parse_verify(&endpoint, resp).await
        } else {
            Err(Self::error_for(&endpoint, resp).await)
        }
    }

    async fn delete_json(&self, path: &str, body: Value, token: &Secret) -> Result<(), Error> {
        let endpoint = endpoint_name(&Method::DELETE, path);
        let url = self.url(path)?;
        let resp = self
            .send(&endpoint, None, || {
                let req = self
                    .http
                    .delete(url.clone())
                    .timeout(self.options.request_timeout)
                    .header("RUNNER-TOKEN", secret_header(token))
                    .json(&body);
                async move { Ok(req) }
            })
            .await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(Self::error_for(&endpoint, resp).await)
        }
    }

    /// `DELETE /runners`: deletes a runner registered with a registration token.
    pub async fn unregister_runner(&self, token: &Secret) -> Result<(), Error> {
        self.delete_json("runners", json!({"token": token.expose()}), token)
            .await
    }

    /// `DELETE /runners/managers`: removes this machine from a `glrt-` runner (the runner made
    /// in the UI stays).
    pub async fn unregister_manager(&self, token: &Secret, system_id: &str) -> Result<(), Error> {
        self.delete_json(
            "runners/managers",
            json!({"token": token.expose(), "system_id": system_id}),
            token,
        )
        .await
    }

    /// `POST /jobs/request`. `stop` interrupts retry waits (not the request itself: dropping it
    /// could lose a job GitLab already assigned).
    pub async fn request_job(
        &self,
        req: &JobRequest,
        stop: Option<&CancellationToken>,
    ) -> Result<JobRequestOutcome, Error> {
        let mut body = json!({
            "token": req.token.expose(),
            "system_id": req.system_id,
            "info": req.info,
        });
        if let Some(lu) = &req.last_update {
            body["last_update"] = json!(lu);
        }
        let (endpoint, resp) = self
            .post_json(
                "jobs/request",
                body,
                self.options.job_request_timeout,
                stop,
                Some(&req.token),
            )
            .await?;
        let last_update = resp
            .headers()
            .get("x-gitlab-last-update")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string);
        match resp.status().as_u16() {
            204 => Ok(JobRequestOutcome::NoJob { last_update }),
            409 => Ok(JobRequestOutcome::Conflict),
            201 => {
                let body = Self::read_body(&endpoint, resp, self.options.max_response_body).await?;
                Ok(match parse_job(&body) {
                    Ok(job) => JobRequestOutcome::Job {
                        job: Box::new(job),
                        last_update,
                    },
                    Err(bad) => JobRequestOutcome::Malformed(bad),
                })
            }
            _ => Err(Self::error_for(&endpoint, resp).await),
        }
    }

    /// `PUT /jobs/:id`. Answers 200, 202, 403 and 404 come back as a [`JobAnswer`] (they steer
    /// the job); other failures are errors after retries.
    pub async fn update_job(
        &self,
        id: u64,
        token: &Secret,
        update: &UpdateJob,
    ) -> Result<JobAnswer, Error> {
        let path = format!("jobs/{id}");
        let endpoint = endpoint_name(&Method::PUT, &path);
        let url = self.url(&path)?;
        let mut body = json!({"token": token.expose(), "state": update.state});
        if let Some(r) = &update.failure_reason {
            body["failure_reason"] = json!(r);
        }
        if let Some(c) = update.exit_code.filter(|c| *c != 0) {
            body["exit_code"] = json!(c);
        }
        if update.checksum.is_some() || update.bytesize.is_some() {
            let mut output = json!({});
            if let Some(c) = &update.checksum {
                body["checksum"] = json!(c);
                output["checksum"] = json!(c);
            }
            if let Some(b) = update.bytesize {
                output["bytesize"] = json!(b);
            }
            body["output"] = output;
        }
        if let Some(info) = &update.info {
            body["info"] = info.clone();
        }
        let resp = self
            .send(&endpoint, None, || {
                let req = self
                    .http
                    .put(url.clone())
                    .timeout(self.options.request_timeout)
                    .header("JOB-TOKEN", secret_header(token))
                    .header("Accept", "application/json")
                    .json(&body);
                async move { Ok(req) }
            })
            .await?;
        let status = resp.status().as_u16();
        match status {
            200 | 202 | 403 | 404 => Ok(JobAnswer::from_headers(status, resp.headers())),
            _ => Err(Self::error_for(&endpoint, resp).await),
        }
    }

    /// `PATCH /jobs/:id/trace` with `data` starting at byte `start`. Answers 202, 403, 404 and
    /// 416 come back as a [`JobAnswer`].
    pub async fn patch_trace(
        &self,
        id: u64,
        token: &Secret,
        start: u64,
        data: Bytes,
        debug_trace: bool,
    ) -> Result<JobAnswer, Error> {
        let path = format!("jobs/{id}/trace");
        let endpoint = endpoint_name(&Method::PATCH, &path);
        let mut url = self.url(&path)?;
        url.query_pairs_mut()
            .append_pair("debug_trace", if debug_trace { "true" } else { "false" });
        // Inclusive end, no `bytes ` prefix (protocol 6.1). Callers never send empty patches.
        let end = start + (data.len() as u64).saturating_sub(1);
        let range = format!("{start}-{end}");
        let resp = self
            .send(&endpoint, None, || {
                let req = self
                    .http
                    .patch(url.clone())
                    .timeout(self.options.request_timeout)
                    .header("JOB-TOKEN", secret_header(token))
                    .header("Content-Type", "text/plain")
                    .header(reqwest::header::CONTENT_RANGE, range.clone())
                    .body(data.clone());
                async move { Ok(req) }
            })
            .await?;
        let status = resp.status().as_u16();
        match status {
            200..=299 | 403 | 404 | 416 => Ok(JobAnswer::from_headers(status, resp.headers())),
            _ => Err(Self::error_for(&endpoint, resp).await),
        }
    }
}

/// A header value holding a secret, marked sensitive so it never shows in hyper's debug output.
pub(crate) fn secret_header(s: &Secret) -> HeaderValue {
    match HeaderValue::from_str(s.expose()) {
        Ok(mut v) => {
            v.set_sensitive(true);
            v
        }
        // A token with control characters cannot be sent; an empty header makes GitLab answer 403,
        // which is the right outcome for a broken token.
        Err(_) => HeaderValue::from_static(""),
    }
}

/// Parses a job payload; on failure recovers what it can (id, token) from the raw JSON so the
/// job can be failed cleanly instead of left running on GitLab.
pub fn parse_job(body: &[u8]) -> Result<JobResponse, MalformedJob> {
    let raw: Result<Value, _> = serde_json::from_slice(body);
    let recover = |raw: &Result<Value, serde_json::Error>, reason: String| {
        let (id, token) = match raw {
            Ok(v) => (
                match v.get("id") {
                    Some(Value::Number(n)) => n.as_u64(),
                    Some(Value::String(s)) => s.trim().parse().ok(),
                    _ => None,
                }
                .filter(|id| *id > 0),
                v.get("token")
                    .and_then(Value::as_str)
                    .filter(|t| !t.is_empty())
                    .map(Secret::new),
            ),
            Err(_) => (None, None),
        };
        MalformedJob { id, token, reason }
    };
    match serde_json::from_slice::<JobResponse>(body) {
        Ok(job) if job.id == 0 => Err(recover(&raw, "job id is missing or zero".into())),
        Ok(job) if job.token.is_empty() => Err(recover(&raw, "job token is missing".into())),
        Ok(job) => Ok(job),
        Err(e) => Err(recover(
            &raw,
            format!("payload does not match the job format: {e}"),
        )),
    }
}

#[cfg(test)]
mod tests;
