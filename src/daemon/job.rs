//! One job on the wire: confirm, stream the trace, run the executor, flush, report.

use super::journal::{ENTRY_VERSION, JournalEntry};
use super::{RunnerCtx, Shared};
use crate::gitlab::Client;
use crate::gitlab::client::{MalformedJob, UpdateJob};
use crate::gitlab::trace::{JobSignal, TraceUploader, job_signal};
use crate::gitlab::types::JobResponse;
use crate::job::{FailureReason, JobControl, JobOutcome};
use crate::metrics::RunnerMetrics;
use crate::secret::Secret;
use std::time::Duration;
use tokio::time::Instant;

/// `PUT /jobs/:id` with the endpoint counted in the metrics.
async fn update_job(
    client: &Client,
    metrics: Option<&RunnerMetrics>,
    id: u64,
    token: &Secret,
    update: &UpdateJob,
) -> Result<crate::gitlab::client::JobAnswer, crate::gitlab::Error> {
    let started = std::time::Instant::now();
    let r = client.update_job(id, token, update).await;
    if let Some(m) = metrics {
        let status = match &r {
            Ok(a) => Some(a.status),
            Err(e) => e.status(),
        };
        if let Some(s) = status {
            m.api_request_timed("update_job", s, started.elapsed());
        }
    }
    r
}

/// Maps our reason onto the reasons this GitLab knows (`features.failure_reasons`), with
/// gitlab-runner's fallbacks ([`FailureReason::for_gitlab`]); an old GitLab that sends no list
/// gets our reason as is.
pub(crate) fn map_failure_reason(reason: &str, supported: &[String]) -> String {
    match FailureReason::from_name(reason) {
        Some(r) => r.for_gitlab(supported).as_str().to_string(),
        None if supported.is_empty() || supported.iter().any(|s| s == reason) => reason.to_string(),
        None => FailureReason::UnknownFailure.as_str().to_string(),
    }
}

/// The final `PUT /jobs/:id` body for an outcome.
fn final_update(
    outcome: &JobOutcome,
    stopped_by_gitlab: bool,
    supported: &[String],
    checksum: String,
    bytesize: u64,
) -> UpdateJob {
    let (state, reason, exit_code) = match outcome {
        JobOutcome::Success => ("success", None, None),
        JobOutcome::Failed { reason, exit_code } => ("failed", Some(reason.as_str()), *exit_code),
        // GitLab-side cancel: the official runner's `job_canceled` maps to unknown_failure and
        // GitLab finalises the job as canceled. A cancel of ours (shutdown) is a system failure.
        JobOutcome::Canceled if stopped_by_gitlab => {
            ("failed", Some(FailureReason::UnknownFailure.as_str()), None)
        }
        JobOutcome::Canceled => (
            "failed",
            Some(FailureReason::RunnerSystemFailure.as_str()),
            None,
        ),
    };
    UpdateJob {
        state: state.into(),
        failure_reason: reason.map(|r| map_failure_reason(r, supported)),
        exit_code,
        checksum: Some(checksum),
        bytesize: Some(bytesize),
        info: None,
    }
}

pub(super) async fn run_job(ctx: &RunnerCtx, shared: &Shared, mut job: JobResponse) {
    let id = job.id;
    // Held to the end of this function, so past the teardown, like the job's slot.
    let concurrent = ctx.concurrent_ids.take(job.job_info.project_id);
    // First, so a variable of the job's own with the same name still wins.
    for (key, value) in [
        ("CI_CONCURRENT_ID", concurrent.id),
        ("CI_CONCURRENT_PROJECT_ID", concurrent.project_id),
    ] {
        job.variables.insert(
            0,
            crate::gitlab::types::JobVariable {
                key: key.into(),
                value: value.to_string(),
                public: true,
                ..Default::default()
            },
        );
    }
    let token = job.token.clone();
    let supported = job.features.failure_reasons.clone();
    let control = JobControl {
        cancel_gracefully: shared.graceful.child_token(),
        abort: shared.force.child_token(),
    };
    tracing::info!(job.id = id, runner = %ctx.cfg.name, project = %job.job_info.project_name, name = %job.job_info.name, "job received");

    // Confirm right away (protocol 3.6): GitLab may already have dropped or cancelled it.
    let confirm = UpdateJob {
        state: "running".into(),
        info: Some(shared.info.clone()),
        ..UpdateJob::default()
    };
    let mut cancelled_before_start = false;
    match update_job(&ctx.client, ctx.metrics.as_ref(), id, &token, &confirm).await {
        Ok(a) if a.status == 404 || job_signal(&a) == JobSignal::Abort => {
            tracing::info!(job.id = id, status = a.status, job_status = ?a.job_status, "job dropped by GitLab before it started");
            return;
        }
        Ok(a) if job_signal(&a) == JobSignal::CancelGracefully => cancelled_before_start = true,
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(job.id = id, error = %e, "cannot confirm the job; running it anyway")
        }
    }

    // Before the journal entry (keyed by the id) or anything else of the job exists: a job id
    // another entry or GitLab instance is running now is refused (H3).
    let claim = shared.running.claim(id);
    let journal = shared.options.journal.as_deref().filter(|_| claim.is_ok());
    if let Some(j) = journal {
        let entry = JournalEntry {
            version: ENTRY_VERSION,
            job_id: id,
            job_token: token.clone(),
            gitlab_url: ctx.cfg.url.to_string(),
            runner_name: ctx.cfg.name.clone(),
            runner_id: ctx.system_id.clone(),
            builds_dir: ctx.cfg.builds_dir.clone(),
            state_dir: shared.state_dir.clone(),
            isolation_mode: ctx.cfg.docker.isolation.mode.as_str().to_string(),
            failure_reasons: supported.clone(),
            started_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs(),
            resources: None,
            trace_offset: 0,
            trace_crc32: 0,
            final_sent: false,
        };
        if let Err(e) = j.record(entry).await {
            tracing::warn!(job.id = id, error = %e, "cannot record the job in the crash journal; a crash would leave it to the reaper and GitLab's timeout");
        }
    }
    let running = ctx
        .metrics
        .as_ref()
        .map(|m| m.job_started(ctx.cfg.docker.isolation.mode));

    let uploader = TraceUploader::start(
        ctx.client.clone(),
        id,
        token.clone(),
        control.clone(),
        shared.options.trace.clone(),
    );
    let sink = uploader.sink();
    let (outcome, pending) = if cancelled_before_start {
        sink.append(b"Job was cancelled before it started\n");
        (JobOutcome::Canceled, None)
    } else if let Err(msg) = &claim {
        tracing::warn!(job.id = id, reason = %msg, "job refused");
        sink.append(format!("\x1b[31;1mERROR: {msg}\x1b[0;m\n").as_bytes());
        (JobOutcome::failed(FailureReason::RunnerSystemFailure), None)
    } else {
        let executor = shared.executor.clone();
        let runner = ctx.cfg.clone();
        let exec_sink = sink.clone();
        let exec_control = control.clone();
        // Its own task so a panic in the pipeline fails this job, not the daemon. The task ends
        // with the job's last stage: its teardown comes back to run after the final state.
        let task = tokio::spawn(async move {
            executor
                .execute_deferred(job, runner, exec_sink, exec_control)
                .await
        });
        tokio::pin!(task);
        let mut refresh = tokio::time::interval(shared.options.journal_refresh);
        let joined = loop {
            tokio::select! {
                r = &mut task => break r,
                _ = refresh.tick(), if journal.is_some() => {
                    if let Some(j) = journal {
                        let (offset, crc) = uploader.acknowledged();
                        if let Err(e) = j.set_trace(id, offset, crc).await {
                            tracing::debug!(job.id = id, error = %e, "cannot update the journal's trace offset");
                        }
                    }
                }
            }
        };
        match joined {
            Ok(done) => done,
            Err(e) => {
                tracing::error!(job.id = id, error = %e, "the job pipeline crashed");
                sink.append(b"\x1b[31;1mERROR: the runner's job pipeline crashed; this is a runner bug\x1b[0;m\n");
                (JobOutcome::failed(FailureReason::RunnerSystemFailure), None)
            }
        }
    };
    let stopped_by_gitlab = uploader.stopped_by_gitlab() || cancelled_before_start;
    let summary = uploader.finish().await;
    if !summary.complete {
        tracing::warn!(
            job.id = id,
            "trace incomplete on GitLab; sending the final state anyway"
        );
    }
    let update = final_update(
        &outcome,
        stopped_by_gitlab,
        &supported,
        summary.checksum,
        summary.bytesize,
    );
    if let Some(r) = running {
        r.finished(&outcome);
    }
    send_final(
        &ctx.client,
        shared,
        ctx.metrics.as_ref(),
        id,
        &token,
        &update,
    )
    .await;
    if let Some(pending) = pending {
        // The job is over for GitLab whatever it answered: a restart must not report it again,
        // only remove what the teardown below did not get to.
        if let Some(j) = journal
            && let Err(e) = j.set_final_sent(id).await
        {
            tracing::warn!(job.id = id, error = %e, "cannot mark the job reported in the crash journal");
        }
        teardown_after_final(id, pending, shared.options.metrics.as_deref()).await;
    }
    if let Some(j) = journal
        && let Err(e) = j.remove(id).await
    {
        tracing::warn!(job.id = id, error = %e, "cannot remove the job from the crash journal");
    }
}

/// Tears a finished job's environment down after its final state went out. The caller still
/// holds the job's concurrency permits (so `concurrent` and `limit` bound sidecars, not only
/// jobs GitLab sees running) and runs inside the daemon's tracker (so shutdown waits for it).
/// What it leaves is logged here, counted by the executor's metrics
/// (`isolated_runner_teardown_failures_total`) and removed by the label reaper.
async fn teardown_after_final(
    id: u64,
    pending: crate::job::PendingTeardown,
    metrics: Option<&crate::metrics::Metrics>,
) {
    if let Some(m) = metrics {
        m.teardown_pending(1.0);
    }
    let started = std::time::Instant::now();
    // Its own task, like the pipeline: a panic in a backend's teardown must not end the daemon.
    match tokio::spawn(pending.run()).await {
        Ok(report) if report.failures.is_empty() => {
            tracing::debug!(
                job.id = id,
                took_ms = started.elapsed().as_millis() as u64,
                "job environment removed"
            );
        }
        Ok(report) => {
            for f in &report.failures {
                tracing::warn!(job.id = id, failure = %f, "job teardown left something; the reaper removes it");
            }
        }
        Err(e) => {
            tracing::error!(job.id = id, error = %e, "the job teardown crashed; the reaper removes what is left");
        }
    }
    if let Some(m) = metrics {
        m.teardown_pending(-1.0);
    }
}

/// Sends the final state until GitLab accepts it (200), waits while it answers 202, stops on
/// 403/404 (the job is over on GitLab's side) or after `final_update_deadline`.
pub(super) async fn send_final(
    client: &Client,
    shared: &Shared,
    metrics: Option<&RunnerMetrics>,
    id: u64,
    token: &Secret,
    update: &UpdateJob,
) {
    let deadline = Instant::now() + shared.options.final_update_deadline;
    let mut pause = shared.options.final_retry_pause;
    let mut warned = false;
    loop {
        let wait = match update_job(client, metrics, id, token, update).await {
            Ok(a) if a.status == 200 => {
                tracing::info!(job.id = id, state = %update.state, failure_reason = ?update.failure_reason, "job finished");
                return;
            }
            Ok(a) if a.status == 202 => a
                .update_interval
                .unwrap_or(pause)
                .min(Duration::from_secs(60)),
            Ok(a) => {
                tracing::info!(job.id = id, status = a.status, job_status = ?a.job_status, "GitLab no longer takes updates for this job; final state not recorded");
                return;
            }
            Err(e) => {
                if !warned {
                    tracing::warn!(job.id = id, error = %e, "cannot send the final job state; retrying");
                    warned = true;
                }
                let p = pause;
                pause = (pause * 2).min(Duration::from_secs(30));
                p
            }
        };
        if Instant::now() + wait > deadline {
            tracing::error!(job.id = id, state = %update.state, "gave up sending the final job state; GitLab will time the job out");
            return;
        }
        tokio::time::sleep(wait).await;
    }
}

/// Removes quoted values from a serde message: a bad payload may hold secrets in any field.
fn sanitise(reason: &str) -> String {
    let mut out = String::with_capacity(reason.len());
    let mut in_quote = false;
    for c in reason.chars() {
        if c == '"' {
            if !in_quote {
                out.push_str("\"…");
            }
            in_quote = !in_quote;
            if !in_quote {
                out.push('"');
            }
        } else if !in_quote {
            out.push(c);
        }
    }
    out
}

pub(super) async fn fail_malformed(ctx: &RunnerCtx, shared: &Shared, bad: MalformedJob) {
    let reason = sanitise(&bad.reason);
    let (Some(id), Some(token)) = (bad.id, bad.token) else {
        tracing::error!(runner = %ctx.cfg.name, %reason, "GitLab sent a job this runner cannot read, without a usable id and token; it cannot be failed from here");
        return;
    };
    tracing::warn!(job.id = id, %reason, "job payload cannot be read; failing the job");
    let uploader = TraceUploader::start(
        ctx.client.clone(),
        id,
        token.clone(),
        JobControl::default(),
        shared.options.trace.clone(),
    );
    uploader.sink().append(
        format!(
            "\x1b[31;1mERROR: this runner could not read the job sent by GitLab: {reason}\x1b[0;m\n"
        )
        .as_bytes(),
    );
    let summary = uploader.finish().await;
    let outcome = JobOutcome::failed(FailureReason::RunnerSystemFailure);
    // No payload, so no `features.failure_reasons`: every GitLab accepts this reason.
    let update = final_update(&outcome, false, &[], summary.checksum, summary.bytesize);
    if let Some(m) = &ctx.metrics {
        m.job_started(ctx.cfg.docker.isolation.mode)
            .finished(&outcome);
    }
    send_final(
        &ctx.client,
        shared,
        ctx.metrics.as_ref(),
        id,
        &token,
        &update,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_mapped_onto_gitlab_list() {
        let list = vec![
            "script_failure".to_string(),
            "runner_system_failure".to_string(),
        ];
        assert_eq!(
            map_failure_reason("script_failure", &list),
            "script_failure"
        );
        // Not listed: gitlab-runner's fallback, the reason it was split from.
        assert_eq!(
            map_failure_reason("image_pull_failure", &list),
            "runner_system_failure"
        );
        assert_eq!(
            map_failure_reason("runner_configuration_error", &list),
            "script_failure"
        );
        assert_eq!(
            map_failure_reason("runner_unsupported", &list),
            "unknown_failure"
        );
        assert_eq!(
            map_failure_reason("image_pull_failure", &[]),
            "image_pull_failure"
        );
    }

    #[test]
    fn final_update_shapes() {
        let u = final_update(
            &JobOutcome::Failed {
                reason: FailureReason::ScriptFailure,
                exit_code: Some(3),
            },
            false,
            &[],
            "crc32:00000000".into(),
            0,
        );
        assert_eq!(
            (u.state.as_str(), u.failure_reason.as_deref(), u.exit_code),
            ("failed", Some("script_failure"), Some(3))
        );
        let u = final_update(&JobOutcome::Canceled, false, &[], String::new(), 0);
        assert_eq!(u.failure_reason.as_deref(), Some("runner_system_failure"));
        let u = final_update(&JobOutcome::Canceled, true, &[], String::new(), 0);
        assert_eq!(u.failure_reason.as_deref(), Some("unknown_failure"));
        assert_eq!(
            final_update(&JobOutcome::Success, false, &[], String::new(), 0).state,
            "success"
        );
    }

    #[test]
    fn sanitise_drops_values() {
        assert_eq!(
            sanitise(r#"invalid type: string "glpat-secret", expected u64 at line 1"#),
            r#"invalid type: string "…", expected u64 at line 1"#
        );
    }
}
