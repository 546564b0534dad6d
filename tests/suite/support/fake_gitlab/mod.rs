//! A strict fake GitLab coordinator over real HTTP (axum on 127.0.0.1:0).
//!
//! API summary:
//! - `FakeGitlab::start().await`; `.url()` is the instance URL for `[[runners]] url`.
//! - Identity: a runner token [`RUNNER_TOKEN`] and a registration token [`REGISTRATION_TOKEN`]
//!   exist from the start; `.add_runner_token`, `.revoke_runner_token`, `.managers()`,
//!   `.runner_ids()`.
//! - Jobs: `.enqueue(job_json)` (see [`job_payload`]), `.enqueue_raw(id, token, body)` for
//!   malformed payloads; `.job_trace(id)`, `.job_state(id)`, `.final_state(id)`, `.updates(id)`,
//!   `.cancel(id, CancelKind)`.
//! - Observation: `.requests()`, `.count(method, path_prefix)`, `.violations()` (protocol
//!   breaches: bad `info` block, wrong checksum, illegal transitions), `.wait_for(timeout, cond)`.
//! - Faults: `.inject(Fault::…)`: N× 5xx, slow answers, hangs, forced 416, 429 with
//!   Retry-After, 202 on the final update, cancel at a trace offset or after a delay.
//! - Artifacts: stored per job (`.artifacts(id)`), `.put_artifact(id, bytes)` for downloads.
//! - Git: `.create_repo(name, files, pipeline_id).await` makes a bare repo with one commit and
//!   returns its sha; `.repo_url(name, job_token)` is a smart-HTTP URL served by
//!   `git http-backend`, authenticated with `gitlab-ci-token:<job token>` of a running job.

mod api;
mod git;
pub use git::Submodule;

use api::{
    delete_manager, delete_runner, download_artifacts, observe, patch_trace, register_runner,
    request_job, reset_runner_token, update_job, upload_artifacts, verify_runner,
};
use axum::Router;
use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::routing::{any, delete, patch, post, put};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;

/// Runner token valid from the start.
pub const RUNNER_TOKEN: &str = "glrt-t3_fakerunnertoken01";
/// Legacy registration token valid from the start.
pub const REGISTRATION_TOKEN: &str = "GR1348941fakeregistration";
/// A masked secret in [`job_payload`] jobs.
pub const SECRET_VALUE: &str = "s3cr3t-Value-42";

/// Every `failure_reason` the fake accepts on a final update, and the list [`job_payload`]
/// sends as `features.failure_reasons`: current GitLab's server-side enum
/// (`gitlab-runner-protocol.md` section 7.3). Any other value (the runner-internal
/// `job_canceled`, a made-up name) is a violation: real GitLab would keep it only as
/// `unknown_failure`, losing the reason.
pub const FAILURE_REASONS: &[&str] = &[
    "unknown_failure",
    "script_failure",
    "api_failure",
    "stuck_or_timeout_failure",
    "runner_system_failure",
    "missing_dependency_failure",
    "runner_unsupported",
    "stale_schedule",
    "job_execution_timeout",
    "archived_failure",
    "unmet_prerequisites",
    "scheduler_failure",
    "data_integrity_failure",
    "forward_deployment_failure",
    "user_blocked",
    "project_deleted",
    "ci_quota_exceeded",
    "pipeline_loop_detected",
    "no_matching_runner",
    "trace_size_exceeded",
    "builds_disabled",
    "environment_creation_failure",
    "deployment_rejected",
    "failed_outdated_deployment_job",
    "job_execution_server_timeout",
    "stuck_pending_with_matching_runners",
    "stuck_pending_no_matching_runners",
    "no_updates_running",
    "no_updates_canceling",
    "server_timeout_running",
    "server_timeout_canceling",
    "runner_configuration_error",
    "runner_external_dependency_failure",
    "runner_interrupted",
    "protected_environment_failure",
    "insufficient_bridge_permissions",
    "downstream_bridge_project_not_found",
    "invalid_bridge_trigger",
    "upstream_bridge_project_not_found",
    "insufficient_upstream_permissions",
    "bridge_pipeline_is_child_pipeline",
    "downstream_pipeline_creation_failed",
    "secrets_provider_not_found",
    "reached_max_descendant_pipelines_depth",
    "ip_restriction_failure",
    "reached_max_pipeline_hierarchy_size",
    "reached_downstream_pipeline_trigger_rate_limit",
    "duo_workflow_not_allowed",
    "job_router_failure",
    "job_token_expired",
    "id_token_burned_project_path",
    "downstream_project_trigger_resolved_to_empty",
];

/// Which endpoint a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /jobs/request`.
    JobRequest,
    /// Any `PUT /jobs/:id`.
    JobUpdate,
    /// `PUT /jobs/:id` with a final state.
    FinalUpdate,
    /// `PATCH /jobs/:id/trace`.
    Trace,
    /// `POST /runners/verify`.
    Verify,
    /// `POST /runners`.
    Register,
    /// `POST /jobs/:id/artifacts`.
    ArtifactsUpload,
    /// `GET /jobs/:id/artifacts`.
    ArtifactsDownload,
}

/// How GitLab cancels a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelKind {
    /// Graceful: `Job-Status: canceling`, answers stay 2xx.
    Canceling,
    /// Hard: `Job-Status: canceled`, job endpoints answer 403.
    Canceled,
}

/// Something to go wrong.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer `status` (5xx) `count` times.
    ServerErrors {
        endpoint: Endpoint,
        status: u16,
        count: usize,
    },
    /// Delay `count` answers by `delay`.
    Slow {
        endpoint: Endpoint,
        delay: Duration,
        count: usize,
    },
    /// Never answer `count` requests (the client must time out).
    Hang { endpoint: Endpoint, count: usize },
    /// 429 with `Retry-After: secs`, `count` times.
    RateLimited {
        endpoint: Endpoint,
        retry_after_secs: u64,
        count: usize,
    },
    /// Store the next `count` trace patches but never answer them (a lost answer: the runner
    /// times out, resends, and must follow the 416's `Range` to skip what landed).
    LoseTraceAnswer { count: usize },
    /// Answer 416 (with the true `Range`) to `count` trace patches.
    RangeMismatch { count: usize },
    /// Answer the final update with 202 `count` times before accepting it.
    FinalAccepted202 { count: usize },
    /// Cancel job `job_id` once its stored trace reaches `offset` bytes.
    CancelAtOffset {
        job_id: u64,
        offset: u64,
        kind: CancelKind,
    },
    /// Cancel job `job_id` `after` it was handed out.
    CancelAfter {
        job_id: u64,
        after: Duration,
        kind: CancelKind,
    },
}

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// HTTP method.
    pub method: String,
    /// Path (no query).
    pub path: String,
    /// Query string.
    pub query: String,
    /// Headers.
    pub headers: HeaderMap,
    /// Body (empty for multipart).
    pub body: Bytes,
    /// When it arrived.
    pub at: Instant,
}

/// The final update a job got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinalUpdate {
    /// `success` or `failed`.
    pub state: String,
    /// `failure_reason`.
    pub failure_reason: Option<String>,
    /// `exit_code`.
    pub exit_code: Option<i64>,
    /// `output.checksum`.
    pub checksum: Option<String>,
    /// `output.bytesize`.
    pub bytesize: Option<u64>,
}

/// An uploaded artifact.
#[derive(Debug, Clone)]
pub struct StoredArtifact {
    /// `artifact_type`.
    pub artifact_type: String,
    /// `artifact_format`.
    pub artifact_format: String,
    /// `expire_in`.
    pub expire_in: Option<String>,
    /// File name of the part.
    pub file_name: String,
    /// The bytes.
    pub data: Vec<u8>,
}

struct FakeJob {
    token: String,
    body: String,
    state: String,
    trace: Vec<u8>,
    updates: Vec<Value>,
    final_update: Option<FinalUpdate>,
    artifacts: Vec<StoredArtifact>,
    download: Option<Vec<u8>>,
    handed_out_at: Option<Instant>,
}

#[derive(Default)]
struct Inner {
    runner_tokens: HashMap<String, u64>,
    /// Git LFS objects by sha256 oid, served by the LFS batch API (see `git.rs`).
    lfs_objects: HashMap<String, Vec<u8>>,
    /// `token_expires_at` that `runners/verify` answers (`null` when `None`).
    verify_expires_at: Option<String>,
    registration_tokens: HashSet<String>,
    managers: HashSet<(String, String)>,
    next_runner_id: u64,
    queue: VecDeque<u64>,
    jobs: BTreeMap<u64, FakeJob>,
    requests: Vec<RecordedRequest>,
    faults: Vec<Fault>,
    violations: Vec<String>,
    last_update: u64,
    trace_update_interval: Option<u64>,
    inflight_job_requests: usize,
    max_inflight_job_requests: usize,
}

struct Inflight(Shared);

impl Drop for Inflight {
    fn drop(&mut self) {
        lock(&self.0).inflight_job_requests -= 1;
    }
}

type Shared = Arc<Mutex<Inner>>;

fn lock(s: &Shared) -> MutexGuard<'_, Inner> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

enum FaultAction {
    Status(u16, Option<u64>),
    Delay(Duration),
    Hang,
}

impl Inner {
    fn take_fault(&mut self, ep: Endpoint) -> Option<FaultAction> {
        for f in self.faults.iter_mut() {
            let (fe, count, action) = match f {
                Fault::ServerErrors {
                    endpoint,
                    status,
                    count,
                } => (*endpoint, count, FaultAction::Status(*status, None)),
                Fault::Slow {
                    endpoint,
                    delay,
                    count,
                } => (*endpoint, count, FaultAction::Delay(*delay)),
                Fault::Hang { endpoint, count } => (*endpoint, count, FaultAction::Hang),
                Fault::RateLimited {
                    endpoint,
                    retry_after_secs,
                    count,
                } => (
                    *endpoint,
                    count,
                    FaultAction::Status(429, Some(*retry_after_secs)),
                ),
                _ => continue,
            };
            if fe == ep && *count > 0 {
                *count -= 1;
                return Some(action);
            }
        }
        None
    }

    fn take_counter(&mut self, pick: impl Fn(&mut Fault) -> Option<&mut usize>) -> bool {
        for f in self.faults.iter_mut() {
            if let Some(c) = pick(f)
                && *c > 0
            {
                *c -= 1;
                return true;
            }
        }
        false
    }

    /// Applies time- and offset-based cancels.
    fn apply_cancels(&mut self, id: u64) {
        let Some(job) = self.jobs.get(&id) else {
            return;
        };
        let mut fire = None;
        for f in &self.faults {
            match f {
                Fault::CancelAtOffset {
                    job_id,
                    offset,
                    kind,
                } if *job_id == id && job.trace.len() as u64 >= *offset => fire = Some(*kind),
                Fault::CancelAfter {
                    job_id,
                    after,
                    kind,
                } if *job_id == id && job.handed_out_at.is_some_and(|t| t.elapsed() >= *after) => {
                    fire = Some(*kind)
                }
                _ => {}
            }
        }
        if let Some(kind) = fire {
            self.cancel_job(id, kind);
        }
    }

    fn cancel_job(&mut self, id: u64, kind: CancelKind) {
        if let Some(job) = self.jobs.get_mut(&id) {
            match (kind, job.state.as_str()) {
                (CancelKind::Canceling, "running") => job.state = "canceling".into(),
                (CancelKind::Canceled, "running" | "canceling" | "pending") => {
                    job.state = "canceled".into()
                }
                _ => {}
            }
        }
    }

    fn tick(&mut self) {
        self.last_update += 1;
    }
}

/// The fake coordinator. Dropping it stops the server.
pub struct FakeGitlab {
    addr: SocketAddr,
    state: Shared,
    git_root: tempfile::TempDir,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeGitlab {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeGitlab {
    /// Starts a fake on 127.0.0.1 with a random port.
    pub async fn start() -> FakeGitlab {
        let state: Shared = Arc::new(Mutex::new(Inner {
            next_runner_id: 100,
            ..Inner::default()
        }));
        {
            let mut st = lock(&state);
            st.runner_tokens.insert(RUNNER_TOKEN.into(), 1);
            st.registration_tokens.insert(REGISTRATION_TOKEN.into());
        }
        let git_root = tempfile::tempdir().expect("temp dir for git repos");
        let api = Router::new()
            .route("/api/v4/runners/verify", post(verify_runner))
            .route(
                "/api/v4/runners",
                post(register_runner).delete(delete_runner),
            )
            .route("/api/v4/runners/managers", delete(delete_manager))
            .route(
                "/api/v4/runners/reset_authentication_token",
                post(reset_runner_token),
            )
            .route("/api/v4/jobs/request", post(request_job))
            .route("/api/v4/jobs/{id}", put(update_job))
            .route("/api/v4/jobs/{id}/trace", patch(patch_trace))
            .route(
                "/api/v4/jobs/{id}/artifacts",
                post(upload_artifacts).get(download_artifacts),
            )
            .route_layer(axum::middleware::from_fn_with_state(state.clone(), observe))
            .with_state(state.clone());
        let git = Router::new()
            .route("/git/{*rest}", any(git::git_backend))
            .route_layer(axum::middleware::from_fn_with_state(state.clone(), observe))
            .with_state((state.clone(), git_root.path().to_path_buf()));
        let app = api.merge(git);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeGitlab {
            addr,
            state,
            git_root,
            server,
        }
    }

    /// Instance URL, e.g. `http://127.0.0.1:1234/`.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Makes `token` a valid runner token.
    pub fn add_runner_token(&self, token: &str) {
        let mut st = lock(&self.state);
        st.next_runner_id += 1;
        let id = st.next_runner_id;
        st.runner_tokens.insert(token.into(), id);
    }

    /// Revokes a runner token (later calls with it get 403).
    pub fn revoke_runner_token(&self, token: &str) {
        lock(&self.state).runner_tokens.remove(token);
    }

    /// Valid runner tokens.
    pub fn runner_tokens(&self) -> Vec<String> {
        lock(&self.state).runner_tokens.keys().cloned().collect()
    }

    /// `(token, system_id)` pairs seen by verify and not removed.
    pub fn managers(&self) -> Vec<(String, String)> {
        lock(&self.state).managers.iter().cloned().collect()
    }

    /// The `token_expires_at` that `runners/verify` answers from now on (`None`: `null`).
    pub fn set_verify_expires_at(&self, at: Option<&str>) {
        lock(&self.state).verify_expires_at = at.map(str::to_string);
    }

    /// `X-GitLab-Trace-Update-Interval` to send on trace/update answers.
    pub fn set_trace_update_interval(&self, secs: Option<u64>) {
        lock(&self.state).trace_update_interval = secs;
    }

    /// Queues a job (JSON with at least `id` and `token`); returns its id.
    pub fn enqueue(&self, job: Value) -> u64 {
        let id = job["id"].as_u64().expect("job json has a numeric id");
        let token = job["token"]
            .as_str()
            .expect("job json has a token")
            .to_string();
        self.enqueue_raw(id, &token, job.to_string());
        id
    }

    /// Queues a job whose payload is `body` verbatim (malformed payload tests); `id`/`token` are
    /// what the fake will accept on job endpoints.
    pub fn enqueue_raw(&self, id: u64, token: &str, body: String) {
        let mut st = lock(&self.state);
        st.jobs.insert(
            id,
            FakeJob {
                token: token.into(),
                body,
                state: "pending".into(),
                trace: Vec::new(),
                updates: Vec::new(),
                final_update: None,
                artifacts: Vec::new(),
                download: None,
                handed_out_at: None,
            },
        );
        st.queue.push_back(id);
        st.tick();
    }

    /// Bytes of the job's stored trace.
    pub fn job_trace(&self, id: u64) -> Vec<u8> {
        lock(&self.state)
            .jobs
            .get(&id)
            .map(|j| j.trace.clone())
            .unwrap_or_default()
    }

    /// Server-side state: pending, running, canceling, canceled, success, failed.
    pub fn job_state(&self, id: u64) -> Option<String> {
        lock(&self.state).jobs.get(&id).map(|j| j.state.clone())
    }

    /// The accepted final update, if any.
    pub fn final_state(&self, id: u64) -> Option<FinalUpdate> {
        lock(&self.state)
            .jobs
            .get(&id)
            .and_then(|j| j.final_update.clone())
    }

    /// Every accepted `PUT /jobs/:id` body.
    pub fn updates(&self, id: u64) -> Vec<Value> {
        lock(&self.state)
            .jobs
            .get(&id)
            .map(|j| j.updates.clone())
            .unwrap_or_default()
    }

    /// Artifacts uploaded for a job.
    pub fn artifacts(&self, id: u64) -> Vec<StoredArtifact> {
        lock(&self.state)
            .jobs
            .get(&id)
            .map(|j| j.artifacts.clone())
            .unwrap_or_default()
    }

    /// Sets the bytes `GET /jobs/:id/artifacts` serves (the job must exist).
    pub fn put_artifact(&self, id: u64, data: Vec<u8>) {
        if let Some(j) = lock(&self.state).jobs.get_mut(&id) {
            j.download = Some(data);
        }
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.state).requests.clone()
    }

    /// Requests with this method whose path starts with `prefix` (e.g. `/api/v4/jobs/request`).
    pub fn count(&self, method: &str, prefix: &str) -> usize {
        lock(&self.state)
            .requests
            .iter()
            .filter(|r| r.method == method && r.path.starts_with(prefix))
            .count()
    }

    /// Most `jobs/request` calls that were open at the same time.
    pub fn max_concurrent_job_requests(&self) -> usize {
        lock(&self.state).max_inflight_job_requests
    }

    /// Protocol breaches the fake noticed.
    pub fn violations(&self) -> Vec<String> {
        lock(&self.state).violations.clone()
    }

    /// Adds a fault.
    pub fn inject(&self, fault: Fault) {
        lock(&self.state).faults.push(fault);
    }

    /// Cancels a job now.
    pub fn cancel(&self, id: u64, kind: CancelKind) {
        lock(&self.state).cancel_job(id, kind);
    }

    /// Smart-HTTP clone URL with the job token embedded.
    pub fn repo_url(&self, name: &str, job_token: &str) -> String {
        format!(
            "http://gitlab-ci-token:{job_token}@{}/git/{name}.git",
            self.addr
        )
    }

    /// Creates `<name>.git` with one commit holding `files`; also `refs/pipelines/<id>` when
    /// given. Returns the commit sha.
    pub async fn create_repo(
        &self,
        name: &str,
        files: &[(&str, &str)],
        pipeline_id: Option<u64>,
    ) -> String {
        self.create_repo_with_submodules(name, files, &[], pipeline_id)
            .await
    }
}

/// A job payload shaped like GitLab's (protocol 4.13) with a masked [`SECRET_VALUE`] and the
/// given script lines; after_script echoes `after`.
pub fn job_payload(id: u64, script: &[&str]) -> Value {
    job_payload_with_after(id, script, &["echo after"])
}

/// [`job_payload`] with the given after_script lines.
pub fn job_payload_with_after(id: u64, script: &[&str], after: &[&str]) -> Value {
    let token = format!("glcbt-job{id}token");
    json!({
        "id": id, "token": token, "allow_git_fetch": true,
        "job_info": {"id": id, "name": format!("job{id}"), "stage": "test", "project_id": 7, "project_name": "demo",
                     "time_in_queue_seconds": 0.5, "project_jobs_running_on_instance_runners_count": "+Inf"},
        "git_info": {"repo_url": format!("http://gitlab-ci-token:{token}@127.0.0.1:1/g/demo.git"),
                     "repo_object_format": "sha1", "ref": "main", "ref_type": "branch", "depth": 20,
                     "sha": "0123456789012345678901234567890123456789",
                     "before_sha": "0000000000000000000000000000000000000000",
                     "refspecs": ["+refs/pipelines/9:refs/pipelines/9", "+refs/heads/main:refs/remotes/origin/main"]},
        "runner_info": {"timeout": 3600, "runner_session_url": null},
        "variables": [
            {"key": "CI_JOB_ID", "value": id.to_string(), "public": true, "masked": false},
            {"key": "CI_JOB_TOKEN", "value": token, "public": false, "masked": true},
            {"key": "SECRET", "value": SECRET_VALUE, "public": false, "masked": true}
        ],
        "steps": [
            {"name": "script", "script": script, "timeout": 3600, "when": "on_success", "allow_failure": false},
            {"name": "after_script", "script": after, "timeout": 3600, "when": "always", "allow_failure": true}
        ],
        "image": {"name": "alpine:3", "entrypoint": null, "ports": [], "pull_policy": null},
        "services": [], "artifacts": null, "cache": [], "credentials": [], "dependencies": [],
        "features": {"trace_sections": true, "failure_reasons": FAILURE_REASONS}
    })
}
