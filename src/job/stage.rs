//! The parts every stage of the pipeline shares: how a stage is stopped from outside (abort,
//! graceful cancel, deadline), how it ended, the job's state between stages, and the one
//! [`section`] wrapper that gives each stage its collapsible trace section.

use super::vars::{self, Variables};
use super::{FailureReason, JobOutcome};
use crate::trace::JobLog;
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// `after_script` timeout unless `RUNNER_AFTER_SCRIPT_TIMEOUT` says otherwise.
pub const DEFAULT_AFTER_SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a stage may take to stop after it was told to.
const STOP_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stop {
    Abort,
    Graceful,
    Timeout,
}

#[derive(Clone)]
pub(super) struct Guards {
    pub(super) abort: CancellationToken,
    pub(super) graceful: Option<CancellationToken>,
    pub(super) deadline: Instant,
}

/// Runs `fut` until it ends, stopping it (through `stage`) on abort, graceful cancel or the
/// deadline. After a stop, waits at most [`STOP_GRACE`] for it to end.
pub(super) async fn guarded<T>(
    fut: impl Future<Output = T>,
    stage: CancellationToken,
    g: &Guards,
) -> (Option<T>, Option<Stop>) {
    tokio::pin!(fut);
    let graceful = g.graceful.clone().unwrap_or_default();
    let has_graceful = g.graceful.is_some();
    let stop = tokio::select! {
        biased;
        r = &mut fut => return (Some(r), None),
        _ = g.abort.cancelled() => Stop::Abort,
        _ = graceful.cancelled(), if has_graceful => Stop::Graceful,
        _ = tokio::time::sleep_until(g.deadline) => Stop::Timeout,
    };
    stage.cancel();
    match tokio::time::timeout(STOP_GRACE, &mut fut).await {
        Ok(r) => (Some(r), Some(stop)),
        Err(_) => (None, Some(stop)),
    }
}

/// How a script stage ended.
#[derive(Debug)]
pub(super) enum StageEnd {
    Ok,
    Exit(i32),
    Stopped(Stop),
    System(String),
}

/// Where the job stands between stages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum State {
    Running,
    Failed(FailureReason, Option<i32>),
    Canceled,
    Aborted,
}

impl State {
    pub(super) fn failed(&self) -> bool {
        !matches!(self, State::Running)
    }
    pub(super) fn ci_job_status(&self) -> &'static str {
        match self {
            State::Running => "success",
            State::Failed(FailureReason::JobExecutionTimeout, _) => "timedout",
            State::Failed(..) => "failed",
            State::Canceled | State::Aborted => "canceled",
        }
    }
    pub(super) fn from_stop(stop: Stop) -> State {
        match stop {
            Stop::Abort => State::Aborted,
            Stop::Graceful => State::Canceled,
            Stop::Timeout => State::Failed(FailureReason::JobExecutionTimeout, None),
        }
    }
}

/// When `after_script` must end: its own timeout from now, but never past the job's deadline,
/// except that an `after_script` that starts after the job timed out still gets the default
/// timeout (as before). A job's variables can thus never keep its environment past
/// `deadline + DEFAULT_AFTER_SCRIPT_TIMEOUT`, and no value overflows.
pub(super) fn after_script_deadline(
    vars: &Variables,
    now: Instant,
    job_deadline: Instant,
) -> Instant {
    let limit = job_deadline.max(now + DEFAULT_AFTER_SCRIPT_TIMEOUT);
    now.checked_add(after_script_timeout(vars))
        .map_or(limit, |d| d.min(limit))
}

/// Parses `RUNNER_AFTER_SCRIPT_TIMEOUT` (`10m`, `90s`, `300`); any size parses, the caller
/// clamps.
fn after_script_timeout(vars: &Variables) -> Duration {
    duration_var(vars, "RUNNER_AFTER_SCRIPT_TIMEOUT").unwrap_or(DEFAULT_AFTER_SCRIPT_TIMEOUT)
}

/// A duration variable (`10m`, `90s`, `300`); unset, zero or unreadable: `None`.
fn duration_var(vars: &Variables, key: &str) -> Option<Duration> {
    vars.get(key)
        .and_then(|s| {
            let s = s.trim();
            s.parse::<u64>()
                .ok()
                .map(Duration::from_secs)
                .or_else(|| humantime::parse_duration(s).ok())
        })
        .filter(|d| !d.is_zero())
}

/// When the script steps must end: `RUNNER_SCRIPT_TIMEOUT` from `now` (gitlab-runner's
/// timeout for `before_script` + `script`, after which `after_script` still runs), never past
/// the job's deadline. `None`: the variable is not set, the job's deadline applies.
pub(super) fn script_deadline(
    vars: &Variables,
    now: Instant,
    job_deadline: Instant,
) -> Option<Instant> {
    let d = duration_var(vars, "RUNNER_SCRIPT_TIMEOUT")?;
    Some(
        now.checked_add(d)
            .map_or(job_deadline, |t| t.min(job_deadline)),
    )
}

/// How many times a stage is tried: the `*_ATTEMPTS` variable (`GET_SOURCES_ATTEMPTS`,
/// `ARTIFACT_DOWNLOAD_ATTEMPTS`, `RESTORE_CACHE_ATTEMPTS`, `EXECUTOR_JOB_SECTION_ATTEMPTS`), 1
/// to 10 as in gitlab-runner; unset: 1. A value outside that range is refused with a warning
/// and 1 is used.
pub(super) fn attempts(vars: &Variables, key: &str, log: &JobLog) -> u32 {
    match vars.get(key).map(str::trim) {
        None | Some("") => 1,
        Some(v) => match v.parse::<u32>() {
            Ok(n @ 1..=10) => n,
            _ => {
                log.warning(&format!(
                    "{key}={v:?} is not a number of attempts from 1 to 10; using 1"
                ));
                1
            }
        },
    }
}

/// Whether `CI_DEBUG_TRACE` asks for shell tracing (Go's `ParseBool` spellings of true).
pub(super) fn debug_trace(vars: &Variables) -> bool {
    matches!(
        vars.get("CI_DEBUG_TRACE").map(str::trim),
        Some("1" | "t" | "T" | "true" | "TRUE" | "True")
    )
}

pub(super) fn when_matches(when: &str, failed: bool) -> bool {
    match when {
        "always" => true,
        "on_failure" => failed,
        _ => !failed,
    }
}

pub(super) fn stop_outcome(log: &JobLog, state: State) -> JobOutcome {
    match state {
        State::Failed(reason, exit_code) => {
            if reason == FailureReason::JobExecutionTimeout {
                log.error("execution took longer than the job timeout");
            }
            JobOutcome::Failed { reason, exit_code }
        }
        _ => JobOutcome::Canceled,
    }
}

/// Folds a stage's end into the job state.
pub(super) fn apply_end(
    log: &JobLog,
    state: &mut State,
    end: StageEnd,
    allow_failure: bool,
    what: &str,
) {
    match end {
        StageEnd::Ok => {}
        StageEnd::Exit(code) => {
            if allow_failure {
                log.warning(&format!(
                    "{what} failed with exit code {code}, allowed to fail"
                ));
            } else if !state.failed() {
                *state = State::Failed(FailureReason::ScriptFailure, Some(code));
            }
        }
        StageEnd::Stopped(stop) => {
            let new = State::from_stop(stop);
            if stop == Stop::Timeout {
                log.error(&format!(
                    "{what}: execution took longer than the job timeout"
                ));
            }
            // An abort beats everything; otherwise the first failure stays.
            if new == State::Aborted || !state.failed() {
                *state = new;
            }
        }
        StageEnd::System(e) => {
            log.error(&format!("{what}: {e}"));
            if !state.failed() {
                *state = State::Failed(FailureReason::RunnerSystemFailure, None);
            }
        }
    }
}

/// The effective variables as a process environment (names a shell cannot take are skipped).
pub(super) fn export_env(vars: &Variables) -> Vec<(String, String)> {
    vars.effective()
        .into_iter()
        .filter(|v| vars::is_valid_name(&v.key))
        .map(|v| (v.key.clone(), v.value.clone()))
        .collect()
}

/// Runs one stage inside its trace section, like gitlab-runner's `executeStage`: the section
/// opens before `body` starts and closes when it ended, whatever it returned.
pub(super) async fn section<T>(
    log: &JobLog,
    name: &str,
    heading: &str,
    collapsed: bool,
    body: impl Future<Output = T>,
) -> T {
    log.section_start(name, heading, collapsed);
    let out = body.await;
    log.section_end(name);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::spec::{DEFAULT_JOB_TIMEOUT, MAX_JOB_TIMEOUT, job_timeout};

    #[test]
    fn script_timeout_attempts_and_debug_trace() {
        let now = Instant::now();
        let job_deadline = now + Duration::from_secs(3600);
        let mut v = Variables::new();
        assert_eq!(script_deadline(&v, now, job_deadline), None);
        v.push("RUNNER_SCRIPT_TIMEOUT", "2m");
        assert_eq!(
            script_deadline(&v, now, job_deadline),
            Some(now + Duration::from_secs(120))
        );
        v.push("RUNNER_SCRIPT_TIMEOUT", "500000000years");
        assert_eq!(script_deadline(&v, now, job_deadline), Some(job_deadline));

        let sink = std::sync::Arc::new(crate::trace::BufferSink::new());
        let log = JobLog::new(sink.clone(), crate::trace::LogOptions::default());
        assert_eq!(attempts(&v, "GET_SOURCES_ATTEMPTS", &log), 1);
        v.push("GET_SOURCES_ATTEMPTS", "3");
        assert_eq!(attempts(&v, "GET_SOURCES_ATTEMPTS", &log), 3);
        v.push("GET_SOURCES_ATTEMPTS", "11");
        assert_eq!(attempts(&v, "GET_SOURCES_ATTEMPTS", &log), 1);
        log.finish();
        assert!(
            sink.text().contains("GET_SOURCES_ATTEMPTS=\"11\""),
            "{}",
            sink.text()
        );

        assert!(!debug_trace(&v));
        v.push("CI_DEBUG_TRACE", "true");
        assert!(debug_trace(&v));
        v.push("CI_DEBUG_TRACE", "no");
        assert!(!debug_trace(&v));
    }

    #[test]
    fn after_script_timeout_parsing() {
        let mut v = Variables::new();
        assert_eq!(after_script_timeout(&v), DEFAULT_AFTER_SCRIPT_TIMEOUT);
        v.push("RUNNER_AFTER_SCRIPT_TIMEOUT", "10m");
        assert_eq!(after_script_timeout(&v), Duration::from_secs(600));
        v.push("RUNNER_AFTER_SCRIPT_TIMEOUT", "42");
        assert_eq!(after_script_timeout(&v), Duration::from_secs(42));
    }

    /// M1: huge timeouts from the payload or the variables neither overflow nor outlive the job.
    #[test]
    fn after_script_timeout_is_clamped() {
        assert_eq!(job_timeout(0), DEFAULT_JOB_TIMEOUT);
        assert_eq!(job_timeout(60), Duration::from_secs(60));
        assert_eq!(job_timeout(u64::MAX), MAX_JOB_TIMEOUT);
        let now = Instant::now();
        let job_deadline = now + Duration::from_secs(3600);
        let mut v = Variables::new();
        for huge in [
            u64::MAX.to_string(),
            "18446744073709551615s".to_string(),
            "500000000years".to_string(),
        ] {
            v.push("RUNNER_AFTER_SCRIPT_TIMEOUT", huge.clone());
            let d = after_script_deadline(&v, now, job_deadline);
            assert_eq!(d, job_deadline, "{huge}");
        }
        v.push("RUNNER_AFTER_SCRIPT_TIMEOUT", "60");
        assert_eq!(
            after_script_deadline(&v, now, job_deadline),
            now + Duration::from_secs(60)
        );
        // The job already timed out: after_script still gets the default, no more.
        v.push("RUNNER_AFTER_SCRIPT_TIMEOUT", u64::MAX.to_string());
        assert_eq!(
            after_script_deadline(&v, now, now),
            now + DEFAULT_AFTER_SCRIPT_TIMEOUT
        );
    }
}
