//! The fake's GitLab API handlers, behind one middleware ([`observe`]) that records each
//! request and applies the fault injected for its endpoint, so each handler starts with its work.

use super::{
    Endpoint, Fault, FaultAction, FinalUpdate, Inflight, RecordedRequest, Shared, StoredArtifact,
    lock,
};
use axum::body::{Body, Bytes};
use axum::extract::{Multipart, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;

/// Every API and git request passes here first: it is recorded (what `requests()` shows), a job
/// request counts as in flight until answered (`max_inflight_job_requests`), and the fault
/// injected for its endpoint answers instead of the handler. Two endpoints take their fault
/// themselves: a job update picks `JobUpdate` or `FinalUpdate` by the state in its body, and an
/// artifact upload answers its fault only after reading the body (so the client sees the
/// status, not a reset).
pub(super) async fn observe(State(s): State<Shared>, req: Request, next: Next) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
        return error(StatusCode::BAD_REQUEST, "unreadable body");
    };
    let path = parts.uri.path();
    // Artifact uploads and git traffic are recorded without their bodies: archives and packs
    // can be large and no test reads them from the record.
    let bulky =
        path.starts_with("/git/") || (parts.method == Method::POST && path.ends_with("/artifacts"));
    let recorded = if bulky { Bytes::new() } else { body.clone() };
    record(&s, &parts.method, &parts.uri, &parts.headers, &recorded);
    let endpoint = endpoint_of(&parts.method, path);
    let _inflight = (endpoint == Some(Endpoint::JobRequest)).then(|| {
        let mut st = lock(&s);
        st.inflight_job_requests += 1;
        st.max_inflight_job_requests = st.max_inflight_job_requests.max(st.inflight_job_requests);
        Inflight(s.clone())
    });
    if let Some(endpoint) = endpoint {
        let fault = lock(&s).take_fault(endpoint);
        if let Some(r) = apply(fault).await {
            return r;
        }
    }
    next.run(Request::from_parts(parts, Body::from(body))).await
}

/// The endpoint whose faults [`observe`] applies; `None` for the routes that take their own.
fn endpoint_of(method: &Method, path: &str) -> Option<Endpoint> {
    let job_route = |suffix: &str| path.starts_with("/api/v4/jobs/") && path.ends_with(suffix);
    match (method.as_str(), path) {
        ("POST", "/api/v4/runners/verify") => Some(Endpoint::Verify),
        ("POST", "/api/v4/runners") => Some(Endpoint::Register),
        ("POST", "/api/v4/jobs/request") => Some(Endpoint::JobRequest),
        ("PATCH", _) if job_route("/trace") => Some(Endpoint::Trace),
        ("GET", _) if job_route("/artifacts") => Some(Endpoint::ArtifactsDownload),
        _ => None,
    }
}

pub(super) fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({"message": message}))).into_response()
}

fn with_job_status(mut resp: Response, state: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(state) {
        resp.headers_mut().insert("Job-Status", v);
    }
    resp
}

async fn apply(action: Option<FaultAction>) -> Option<Response> {
    match action? {
        FaultAction::Status(code, retry_after) => {
            let mut resp = error(
                StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                "injected fault",
            );
            if let Some(s) = retry_after {
                resp.headers_mut()
                    .insert("Retry-After", HeaderValue::from(s));
            }
            Some(resp)
        }
        FaultAction::Delay(d) => {
            tokio::time::sleep(d).await;
            None
        }
        FaultAction::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Some(error(StatusCode::GATEWAY_TIMEOUT, "hung"))
        }
    }
}

fn record(s: &Shared, method: &Method, uri: &Uri, headers: &HeaderMap, body: &Bytes) {
    lock(s).requests.push(RecordedRequest {
        method: method.to_string(),
        path: uri.path().to_string(),
        query: uri.query().unwrap_or_default().to_string(),
        headers: headers.clone(),
        body: body.clone(),
        at: Instant::now(),
    });
}

fn parse_json(body: &Bytes) -> Option<Value> {
    serde_json::from_slice(body).ok()
}

/// Checks the `info` block shape: name/version strings, features a map of booleans.
fn check_info(info: Option<&Value>) -> Result<(), String> {
    let info = info.ok_or("info is missing")?;
    for k in ["name", "version", "platform", "architecture", "executor"] {
        if !info.get(k).is_some_and(Value::is_string) {
            return Err(format!("info.{k} is not a string"));
        }
    }
    let features = info
        .get("features")
        .and_then(Value::as_object)
        .ok_or("info.features is not an object")?;
    if let Some((k, _)) = features.iter().find(|(_, v)| !v.is_boolean()) {
        return Err(format!("info.features.{k} is not a boolean"));
    }
    Ok(())
}

pub(super) async fn verify_runner(State(s): State<Shared>, body: Bytes) -> Response {
    let v = parse_json(&body).unwrap_or(Value::Null);
    let token = v["token"].as_str().unwrap_or_default().to_string();
    let mut st = lock(&s);
    let Some(id) = st.runner_tokens.get(&token).copied() else {
        return error(StatusCode::FORBIDDEN, "403 Forbidden");
    };
    if let Some(sid) = v["system_id"].as_str() {
        st.managers.insert((token.clone(), sid.to_string()));
    }
    (
        StatusCode::OK,
        axum::Json(json!({"id": id, "token": token, "token_expires_at": st.verify_expires_at})),
    )
        .into_response()
}

/// `POST /runners/reset_authentication_token`: GitLab's answer is 201 with the new token and
/// its expiry; the old token stops working at once.
pub(super) async fn reset_runner_token(State(s): State<Shared>, body: Bytes) -> Response {
    let v = parse_json(&body).unwrap_or(Value::Null);
    let old = v["token"].as_str().unwrap_or_default().to_string();
    let mut st = lock(&s);
    let Some(id) = st.runner_tokens.remove(&old) else {
        return error(StatusCode::FORBIDDEN, "403 Forbidden");
    };
    st.next_runner_id += 1;
    let token = format!("glrt-reset{id:04}x{:08}", st.next_runner_id);
    st.runner_tokens.insert(token.clone(), id);
    (
        StatusCode::CREATED,
        axum::Json(json!({"token": token, "token_expires_at": "2030-01-01T00:00:00.000Z"})),
    )
        .into_response()
}

pub(super) async fn register_runner(State(s): State<Shared>, body: Bytes) -> Response {
    let v = parse_json(&body).unwrap_or(Value::Null);
    let mut st = lock(&s);
    if !st
        .registration_tokens
        .contains(v["token"].as_str().unwrap_or_default())
    {
        return error(StatusCode::FORBIDDEN, "403 Forbidden");
    }
    st.next_runner_id += 1;
    let id = st.next_runner_id;
    let token = format!("t3_registered{id:08}");
    st.runner_tokens.insert(token.clone(), id);
    (
        StatusCode::CREATED,
        axum::Json(json!({"id": id, "token": token, "token_expires_at": null})),
    )
        .into_response()
}

pub(super) async fn delete_runner(State(s): State<Shared>, body: Bytes) -> Response {
    let v = parse_json(&body).unwrap_or(Value::Null);
    let mut st = lock(&s);
    match st
        .runner_tokens
        .remove(v["token"].as_str().unwrap_or_default())
    {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => error(StatusCode::FORBIDDEN, "403 Forbidden"),
    }
}

pub(super) async fn delete_manager(State(s): State<Shared>, body: Bytes) -> Response {
    let v = parse_json(&body).unwrap_or(Value::Null);
    let token = v["token"].as_str().unwrap_or_default().to_string();
    let Some(sid) = v["system_id"].as_str() else {
        return error(StatusCode::BAD_REQUEST, "system_id is missing");
    };
    let mut st = lock(&s);
    if !st.runner_tokens.contains_key(&token) {
        return error(StatusCode::FORBIDDEN, "403 Forbidden");
    }
    if st.managers.remove(&(token, sid.to_string())) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        error(StatusCode::NOT_FOUND, "404 Runner manager not found")
    }
}

pub(super) async fn request_job(
    State(s): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(v) = parse_json(&body) else {
        return error(StatusCode::BAD_REQUEST, "body is not JSON");
    };
    let mut st = lock(&s);
    if !st
        .runner_tokens
        .contains_key(v["token"].as_str().unwrap_or_default())
    {
        return error(StatusCode::FORBIDDEN, "403 Forbidden");
    }
    if headers.get("content-type").and_then(|c| c.to_str().ok()) != Some("application/json") {
        st.violations
            .push("jobs/request without Content-Type: application/json".into());
    }
    if let Err(e) = check_info(v.get("info")) {
        st.violations.push(format!("jobs/request: {e}"));
        return error(StatusCode::BAD_REQUEST, &e);
    }
    if !v["system_id"]
        .as_str()
        .is_some_and(|s| s.len() == 14 && (s.starts_with("s_") || s.starts_with("r_")))
    {
        st.violations
            .push("jobs/request: system_id missing or malformed".into());
    }
    let current = format!("{:016x}", st.last_update);
    let Some(id) = st.queue.pop_front() else {
        let mut resp = StatusCode::NO_CONTENT.into_response();
        resp.headers_mut().insert(
            "X-GitLab-Last-Update",
            HeaderValue::from_str(&current).expect("hex"),
        );
        return resp;
    };
    st.tick();
    let job = st.jobs.get_mut(&id).expect("queued jobs exist");
    job.state = "running".into();
    job.handed_out_at = Some(Instant::now());
    let mut resp = (StatusCode::CREATED, job.body.clone()).into_response();
    resp.headers_mut()
        .insert("Content-Type", HeaderValue::from_static("application/json"));
    resp
}

fn job_token<'a>(headers: &'a HeaderMap, body: Option<&'a Value>) -> &'a str {
    body.and_then(|b| b["token"].as_str())
        .or_else(|| headers.get("job-token").and_then(|v| v.to_str().ok()))
        .unwrap_or_default()
}

pub(super) async fn update_job(
    State(s): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let v = parse_json(&body);
    let state = v
        .as_ref()
        .and_then(|v| v["state"].as_str())
        .unwrap_or_default()
        .to_string();
    let is_final = matches!(state.as_str(), "success" | "failed");
    let fault = {
        let mut st = lock(&s);
        let f = st.take_fault(Endpoint::JobUpdate);
        if f.is_none() && is_final {
            st.take_fault(Endpoint::FinalUpdate)
        } else {
            f
        }
    };
    if let Some(r) = apply(fault).await {
        return r;
    }
    let Ok(id) = id.parse::<u64>() else {
        return error(StatusCode::FORBIDDEN, "403 Forbidden");
    };
    let mut st = lock(&s);
    st.apply_cancels(id);
    let interval = st.trace_update_interval;
    let accepted202 = is_final
        && st.take_counter(|f| match f {
            Fault::FinalAccepted202 { count } => Some(count),
            _ => None,
        });
    let Some(job) = st.jobs.get_mut(&id) else {
        return error(StatusCode::FORBIDDEN, "403 Forbidden");
    };
    if job_token(&headers, v.as_ref()) != job.token {
        return error(StatusCode::FORBIDDEN, "403 Forbidden");
    }
    if !matches!(job.state.as_str(), "running" | "canceling") {
        let st_name = job.state.clone();
        return with_job_status(
            error(StatusCode::FORBIDDEN, "403 Forbidden - Job is not running"),
            &st_name,
        );
    }
    let v = v.unwrap_or(Value::Null);
    job.updates.push(v.clone());
    let mut violation = None;
    let resp = match state.as_str() {
        "running" | "pending" => {
            with_job_status(StatusCode::OK.into_response(), &job.state.clone())
        }
        "success" | "failed" if accepted202 => {
            let mut r = with_job_status(StatusCode::ACCEPTED.into_response(), &job.state.clone());
            if let Some(i) = interval {
                r.headers_mut()
                    .insert("X-GitLab-Trace-Update-Interval", HeaderValue::from(i));
            }
            r
        }
        "success" | "failed" => {
            let fu = FinalUpdate {
                state: state.clone(),
                failure_reason: v["failure_reason"].as_str().map(str::to_string),
                exit_code: v["exit_code"].as_i64(),
                checksum: v["output"]["checksum"].as_str().map(str::to_string),
                bytesize: v["output"]["bytesize"].as_u64(),
            };
            let mut h = crc32fast::Hasher::new();
            h.update(&job.trace);
            let want = format!("crc32:{:08x}", h.finalize());
            if fu.checksum.as_deref() != Some(want.as_str()) {
                violation = Some(format!(
                    "job {id}: checksum {:?} but stored trace has {want}",
                    fu.checksum
                ));
            }
            if fu.bytesize != Some(job.trace.len() as u64) {
                violation = Some(format!(
                    "job {id}: bytesize {:?} but stored trace has {}",
                    fu.bytesize,
                    job.trace.len()
                ));
            }
            match fu.failure_reason.as_deref() {
                None if state == "failed" => {
                    violation = Some(format!("job {id}: failed without failure_reason"));
                }
                Some(r) if !super::FAILURE_REASONS.contains(&r) => {
                    violation = Some(format!(
                        "job {id}: failure_reason {r:?} is not one GitLab accepts"
                    ));
                }
                _ => {}
            }
            // A job in `canceling` that reports its end is finalised as canceled by GitLab.
            job.state = if job.state == "canceling" {
                "canceled".into()
            } else {
                state.clone()
            };
            job.final_update = Some(fu);
            with_job_status(StatusCode::OK.into_response(), &job.state.clone())
        }
        _ => error(StatusCode::BAD_REQUEST, "state is invalid"),
    };
    if let Some(v) = violation {
        st.violations.push(v);
    }
    resp
}

pub(super) async fn patch_trace(
    State(s): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(id) = id.parse::<u64>() else {
        return error(StatusCode::FORBIDDEN, "403 Forbidden");
    };
    match patch_trace_locked(&s, id, &headers, &body) {
        Some(r) => r,
        None => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            error(StatusCode::GATEWAY_TIMEOUT, "lost")
        }
    }
}

/// The synchronous part of a trace patch; `None` means "stored, but lose the answer".
fn patch_trace_locked(s: &Shared, id: u64, headers: &HeaderMap, body: &Bytes) -> Option<Response> {
    let mut st = lock(s);
    st.apply_cancels(id);
    let interval = st.trace_update_interval;
    let forced416 = st.take_counter(|f| match f {
        Fault::RangeMismatch { count } => Some(count),
        _ => None,
    });
    let Some(job) = st.jobs.get_mut(&id) else {
        return Some(error(StatusCode::FORBIDDEN, "403 Forbidden"));
    };
    if job_token(headers, None) != job.token {
        return Some(error(StatusCode::FORBIDDEN, "403 Forbidden"));
    }
    if !matches!(job.state.as_str(), "running" | "canceling") {
        let name = job.state.clone();
        return Some(with_job_status(
            error(StatusCode::FORBIDDEN, "403 Forbidden - Job is not running"),
            &name,
        ));
    }
    let Some(range) = headers.get("content-range").and_then(|v| v.to_str().ok()) else {
        return Some(error(StatusCode::BAD_REQUEST, "Content-Range is missing"));
    };
    let start: Option<u64> = range
        .split_once('-')
        .and_then(|(a, _)| a.trim().parse().ok());
    let size = job.trace.len() as u64;
    let range_416 = |size: u64| {
        let mut r = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
        r.headers_mut().insert(
            "Range",
            HeaderValue::from_str(&format!("0-{size}")).expect("ascii"),
        );
        r
    };
    if forced416 || start != Some(size) || body.is_empty() {
        return Some(range_416(size));
    }
    job.trace.extend_from_slice(body);
    let state = job.state.clone();
    let lose = st.take_counter(|f| match f {
        Fault::LoseTraceAnswer { count } => Some(count),
        _ => None,
    });
    if lose {
        return None;
    }
    st.apply_cancels(id);
    let state_after = st.jobs.get(&id).map(|j| j.state.clone()).unwrap_or(state);
    let new_size = st.jobs.get(&id).map(|j| j.trace.len()).unwrap_or_default();
    let mut r = with_job_status(StatusCode::ACCEPTED.into_response(), &state_after);
    r.headers_mut().insert(
        "Range",
        HeaderValue::from_str(&format!("0-{new_size}")).expect("ascii"),
    );
    if let Some(i) = interval {
        r.headers_mut()
            .insert("X-GitLab-Trace-Update-Interval", HeaderValue::from(i));
    }
    Some(r)
}

pub(super) async fn upload_artifacts(
    State(s): State<Shared>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    mut multipart: Multipart,
) -> Response {
    let id: u64 = id.parse().unwrap_or_default();
    {
        let st = lock(&s);
        let ok = st.jobs.get(&id).is_some_and(|j| {
            j.token == job_token(&headers, None)
                && matches!(j.state.as_str(), "running" | "canceling")
        });
        if !ok {
            return error(StatusCode::FORBIDDEN, "403 Forbidden");
        }
    }
    let mut fields: HashMap<String, String> = q;
    let mut file = None;
    while let Ok(Some(field)) = multipart.next_field().await {
        let name = field.name().unwrap_or_default().to_string();
        if name == "file" {
            let file_name = field.file_name().unwrap_or_default().to_string();
            match field.bytes().await {
                Ok(b) => file = Some((file_name, b.to_vec())),
                Err(_) => return error(StatusCode::BAD_REQUEST, "bad multipart"),
            }
        } else if let Ok(t) = field.text().await {
            fields.insert(name, t);
        }
    }
    // Faults apply after the body was read, so the client sees the status and not a reset.
    let fault = lock(&s).take_fault(Endpoint::ArtifactsUpload);
    if let Some(r) = apply(fault).await {
        return r;
    }
    let Some((file_name, data)) = file else {
        return error(StatusCode::BAD_REQUEST, "file is missing");
    };
    let mut st = lock(&s);
    if let Some(job) = st.jobs.get_mut(&id) {
        job.artifacts.push(StoredArtifact {
            artifact_type: fields
                .get("artifact_type")
                .cloned()
                .unwrap_or_else(|| "archive".into()),
            artifact_format: fields
                .get("artifact_format")
                .cloned()
                .unwrap_or_else(|| "zip".into()),
            expire_in: fields.get("expire_in").cloned(),
            file_name,
            data,
        });
    }
    (StatusCode::CREATED, axum::Json(json!({}))).into_response()
}

pub(super) async fn download_artifacts(
    State(s): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let id: u64 = id.parse().unwrap_or_default();
    let st = lock(&s);
    let token = job_token(&headers, None);
    // Any known job token may download (GitLab checks the pipeline; the fake keeps it simple).
    if !st.jobs.values().any(|j| j.token == token) {
        return error(StatusCode::FORBIDDEN, "403 Forbidden");
    }
    match st.jobs.get(&id).and_then(|j| j.download.clone()) {
        Some(data) => (StatusCode::OK, data).into_response(),
        None => error(StatusCode::NOT_FOUND, "404 Not Found"),
    }
}
