//! The Prometheus `/metrics`, `/health` and `/ready` endpoint.
//!
//! Metric names follow gitlab-runner's where one exists (so its public dashboards work), plus
//! `isolated_runner_*` for what only we have (sidecar readiness, teardown, reaper leftovers).
//! Recording is a short, uncontended mutex section per event: no allocation-heavy work, no
//! `.await`, safe from any task. See `docs/metrics.md` for the full list.
//!
//! ```no_run
//! # async fn demo() {
//! use isolated_runner::metrics::{Metrics, Readiness, RunnerLabels};
//! use std::sync::Arc;
//! let metrics = Arc::new(Metrics::new());
//! let runner = metrics.runner(RunnerLabels::new("a1b2c3d4", "my-runner", "s_0123456789ab"));
//! let job = runner.job_started(isolated_runner::config::IsolationMode::Dind);
//! // ... run the job ...
//! job.finished(&isolated_runner::job::JobOutcome::Success);
//! # }
//! ```

mod family;
mod process;
mod server;

pub use server::{Readiness, Server, bind, serve};

use crate::config::IsolationMode;
use crate::outcome::JobOutcome;
use family::{Family, Histogram};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Errors of the metrics server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `listen_address` could not be bound.
    #[error("cannot listen on {address}")]
    Bind {
        /// The address.
        address: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The server stopped with an I/O error.
    #[error("metrics server on {address} failed")]
    Serve {
        /// The bound address.
        address: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// gitlab-runner's job duration buckets.
const JOB_DURATION_BUCKETS: &[f64] = &[
    30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 10800.0, 18000.0, 36000.0,
];
/// gitlab-runner's stage (and queue) duration buckets.
const GITLAB_STAGE_BUCKETS: &[f64] = &[
    1.0, 3.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 1800.0, 3600.0,
];
/// Our stages are often sub-second (certs, network create); finer at the low end.
const STAGE_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 1800.0, 3600.0,
];
/// Sidecar start to mTLS `/_ping`: around a second when warm, tens when cold.
const SIDECAR_READY_BUCKETS: &[f64] =
    &[0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0];
/// Teardown: a second or two normally; long tails mean stuck containers or disks.
const TEARDOWN_BUCKETS: &[f64] = &[0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0];
/// gitlab-runner's API request duration buckets.
const API_BUCKETS: &[f64] = &[0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

const RUNNER: &[&str] = &["runner", "runner_name", "system_id"];

/// Identity labels of one `[[runners]]` entry, as gitlab-runner puts them on its metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerLabels {
    /// Short token prefix (gitlab-runner's `runner` label; never the full token).
    pub runner: String,
    /// `name` of the entry.
    pub runner_name: String,
    /// The system id of this host (`s_…`).
    pub system_id: String,
}

impl RunnerLabels {
    /// Labels for one runner entry.
    pub fn new(
        runner: impl Into<String>,
        runner_name: impl Into<String>,
        system_id: impl Into<String>,
    ) -> Self {
        RunnerLabels {
            runner: runner.into(),
            runner_name: runner_name.into(),
            system_id: system_id.into(),
        }
    }
}

/// Error levels counted by `gitlab_runner_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorLevel {
    /// A recovered problem.
    Warning,
    /// An operator must act.
    Error,
}

/// The registry. Create one per process, share it as `Arc<Metrics>`.
#[derive(Debug)]
pub struct Metrics {
    started: Instant,
    jobs: Family,
    jobs_total: Family,
    failed_jobs_total: Family,
    job_duration: Histogram,
    gitlab_stage: Histogram,
    api_statuses: Family,
    api_duration: Histogram,
    concurrent: Family,
    limit: Family,
    errors_total: Family,
    version_info: Family,
    ir_jobs_total: Family,
    sidecar_ready: Histogram,
    sidecar_starts: Family,
    teardown: Histogram,
    stage: Histogram,
    leftovers: Family,
    unhealthy: Family,
    teardown_failures: Family,
    teardowns_pending: Family,
    warm_pool_target: Family,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// An empty registry with `gitlab_runner_version_info` set.
    pub fn new() -> Self {
        let m = Metrics {
            started: Instant::now(),
            jobs: Family::gauge(
                "gitlab_runner_jobs",
                "The current number of running builds.",
                &[
                    "runner",
                    "runner_name",
                    "system_id",
                    "state",
                    "stage",
                    "executor_stage",
                ],
            ),
            jobs_total: Family::counter(
                "gitlab_runner_jobs_total",
                "Total number of handled jobs.",
                RUNNER,
            ),
            failed_jobs_total: Family::counter(
                "gitlab_runner_failed_jobs_total",
                "Total number of failed jobs.",
                &["runner", "runner_name", "system_id", "failure_reason"],
            ),
            job_duration: Histogram::new(
                "gitlab_runner_job_duration_seconds",
                "Histogram of job durations.",
                RUNNER,
                JOB_DURATION_BUCKETS,
            ),
            gitlab_stage: Histogram::new(
                "gitlab_runner_job_stage_duration_seconds",
                "Histogram of each job stage's duration.",
                &["stage"],
                GITLAB_STAGE_BUCKETS,
            ),
            api_statuses: Family::counter(
                "gitlab_runner_api_request_statuses_total",
                "The total number of API requests, partitioned by runner, system, endpoint and status.",
                &["runner", "system_id", "endpoint", "status"],
            ),
            api_duration: Histogram::new(
                "gitlab_runner_api_request_duration_seconds",
                "Latency histogram of API requests made by GitLab Runner.",
                &["runner", "system_id", "endpoint", "status_class"],
                API_BUCKETS,
            ),
            concurrent: Family::gauge(
                "gitlab_runner_concurrent",
                "The current value of concurrent setting.",
                &[],
            ),
            limit: Family::gauge(
                "gitlab_runner_limit",
                "The current value of limit setting.",
                RUNNER,
            ),
            errors_total: Family::counter(
                "gitlab_runner_errors_total",
                "The number of caught errors.",
                &["level"],
            ),
            version_info: Family::gauge(
                "gitlab_runner_version_info",
                "A metric with a constant '1' value labeled by different build stats fields.",
                &["name", "version", "os", "architecture"],
            ),
            ir_jobs_total: Family::counter(
                "isolated_runner_jobs_total",
                "Jobs finished, by isolation mode and outcome (success, failed, canceled).",
                &["isolation_mode", "outcome"],
            ),
            sidecar_ready: Histogram::new(
                "isolated_runner_sidecar_ready_seconds",
                "Time from creating a job's sidecar to its first successful mTLS ping.",
                &[],
                SIDECAR_READY_BUCKETS,
            ),
            sidecar_starts: Family::counter(
                "isolated_runner_sidecars_total",
                "Sidecars jobs ran on, by how they started: prestarted (taken from the warm pool) or cold (started for the job while it waited). Many cold starts with warm_pool > 0: the pool is smaller than the bursts.",
                &["start"],
            ),
            teardown: Histogram::new(
                "isolated_runner_teardown_seconds",
                "Time to remove everything a job created.",
                &[],
                TEARDOWN_BUCKETS,
            ),
            stage: Histogram::new(
                "isolated_runner_stage_seconds",
                "Duration of each job stage, including the isolation stages (dind_*).",
                &["stage"],
                STAGE_BUCKETS,
            ),
            leftovers: Family::counter(
                "isolated_runner_reaper_leftovers_total",
                "Objects the reaper found left behind by dead or old jobs, by kind.",
                &["kind"],
            ),
            unhealthy: Family::gauge(
                "isolated_runner_unhealthy",
                "1 while this runner entry is unhealthy and asks for no jobs (unhealthy_requests_limit failed requests in a row; for unhealthy_interval).",
                RUNNER,
            ),
            teardown_failures: Family::counter(
                "isolated_runner_teardown_failures_total",
                "Job teardowns that left something behind (logged; the reaper removes it by label).",
                &[],
            ),
            teardowns_pending: Family::gauge(
                "isolated_runner_teardowns_in_progress",
                "Jobs whose final state GitLab has and whose environment is still being torn down (each still holds its concurrency slot).",
                &[],
            ),
            warm_pool_target: Family::gauge(
                "isolated_runner_warm_pool_target",
                "Pre-started sidecars the warm pool aims to keep now, per runner entry (warm_pool = \"auto\" follows recent demand).",
                &["runner_name"],
            ),
        };
        m.teardown_failures.add(&[], 0.0);
        m.teardowns_pending.set(&[], 0.0);
        m.errors_total.add(&["warning"], 0.0);
        m.errors_total.add(&["error"], 0.0);
        m.version_info.set(
            &[
                env!("CARGO_PKG_NAME"),
                env!("CARGO_PKG_VERSION"),
                std::env::consts::OS,
                std::env::consts::ARCH,
            ],
            1.0,
        );
        m
    }

    /// A cheap handle that records with one runner entry's labels.
    pub fn runner(self: &Arc<Self>, labels: RunnerLabels) -> RunnerMetrics {
        RunnerMetrics {
            metrics: Arc::clone(self),
            labels: Arc::new(labels),
        }
    }

    /// `gitlab_runner_concurrent`.
    pub fn set_concurrent(&self, n: usize) {
        self.concurrent.set(&[], n as f64);
    }

    /// `gitlab_runner_errors_total{level}`.
    pub fn error_logged(&self, level: ErrorLevel) {
        let level = match level {
            ErrorLevel::Warning => "warning",
            ErrorLevel::Error => "error",
        };
        self.errors_total.add(&[level], 1.0);
    }

    /// `isolated_runner_sidecar_ready_seconds`.
    pub fn observe_sidecar_ready(&self, d: Duration) {
        self.sidecar_ready.observe(&[], d.as_secs_f64());
    }

    /// `isolated_runner_sidecars_total{start}`: `prestarted` or `cold`.
    pub fn sidecar_started(&self, start: &'static str) {
        self.sidecar_starts.add(&[start], 1.0);
    }

    /// `isolated_runner_teardown_seconds`.
    pub fn observe_teardown(&self, d: Duration) {
        self.teardown.observe(&[], d.as_secs_f64());
    }

    /// `isolated_runner_teardown_failures_total`: a teardown left something.
    pub fn teardown_failed(&self) {
        self.teardown_failures.add(&[], 1.0);
    }

    /// `isolated_runner_teardowns_in_progress`: a teardown after the final state began
    /// (`+1`) or ended (`-1`).
    pub fn teardown_pending(&self, delta: f64) {
        self.teardowns_pending.add(&[], delta);
    }

    /// `isolated_runner_warm_pool_target{runner_name}`.
    pub fn set_warm_pool_target(&self, runner_name: &str, target: usize) {
        self.warm_pool_target.set(&[runner_name], target as f64);
    }

    /// One job stage's duration, into `isolated_runner_stage_seconds{stage}` and gitlab-runner's
    /// `gitlab_runner_job_stage_duration_seconds{stage}`. `stage` is a `'static` name
    /// (`get_sources`, `step_script`, `dind_ready`, …) so no job-controlled text can become a
    /// label and blow up cardinality.
    pub fn observe_stage(&self, stage: &'static str, d: Duration) {
        let secs = d.as_secs_f64();
        self.stage.observe(&[stage], secs);
        self.gitlab_stage.observe(&[stage], secs);
    }

    /// `isolated_runner_reaper_leftovers_total{kind}` (`container`, `network`, `volume`,
    /// `netpolicy`, `job_dir`, …).
    pub fn leftovers_found(&self, kind: &'static str, n: u64) {
        self.leftovers.add(&[kind], n as f64);
    }

    /// The text exposition (format 0.0.4), including `process_*` metrics read from `/proc`.
    /// Reads files: call from `spawn_blocking` in async code.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        for f in [
            &self.jobs,
            &self.jobs_total,
            &self.failed_jobs_total,
            &self.api_statuses,
            &self.concurrent,
            &self.limit,
            &self.errors_total,
            &self.version_info,
            &self.ir_jobs_total,
            &self.sidecar_starts,
            &self.leftovers,
            &self.unhealthy,
            &self.teardown_failures,
            &self.teardowns_pending,
            &self.warm_pool_target,
        ] {
            f.render(&mut out);
        }
        for h in [
            &self.job_duration,
            &self.gitlab_stage,
            &self.api_duration,
            &self.sidecar_ready,
            &self.teardown,
            &self.stage,
        ] {
            h.render(&mut out);
        }
        process::render(&mut out, self.started);
        out
    }
}

/// Records with one runner entry's labels. Clone freely.
#[derive(Debug, Clone)]
pub struct RunnerMetrics {
    metrics: Arc<Metrics>,
    labels: Arc<RunnerLabels>,
}

impl RunnerMetrics {
    fn ids(&self) -> [&str; 3] {
        [
            &self.labels.runner,
            &self.labels.runner_name,
            &self.labels.system_id,
        ]
    }

    /// The shared registry.
    pub fn registry(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// A job started: `gitlab_runner_jobs` goes up, `gitlab_runner_jobs_total` counts it. The
    /// returned guard brings the gauge back down when finished or dropped, so an early return
    /// or a panic cannot leave a phantom running job.
    pub fn job_started(&self, mode: IsolationMode) -> RunningJob {
        let [r, n, s] = self.ids();
        self.metrics.jobs.add(&[r, n, s, "running", "", ""], 1.0);
        self.metrics.jobs_total.add(&[r, n, s], 1.0);
        RunningJob {
            runner: self.clone(),
            mode,
            started: Instant::now(),
            done: false,
        }
    }

    /// `gitlab_runner_api_request_statuses_total{endpoint,status}`; `endpoint` is one of the
    /// client's fixed names (`request_job`, `update_job`, `patch_trace`, …).
    pub fn api_request(&self, endpoint: &'static str, status: u16) {
        let [r, _, s] = self.ids();
        let status = status.to_string();
        self.metrics
            .api_statuses
            .add(&[r, s, endpoint, &status], 1.0);
    }

    /// Like [`RunnerMetrics::api_request`], also recording the latency into
    /// `gitlab_runner_api_request_duration_seconds{status_class}`.
    pub fn api_request_timed(&self, endpoint: &'static str, status: u16, took: Duration) {
        self.api_request(endpoint, status);
        let [r, _, s] = self.ids();
        let class = format!("{}xx", status / 100);
        self.metrics
            .api_duration
            .observe(&[r, s, endpoint, &class], took.as_secs_f64());
    }

    /// `isolated_runner_unhealthy` of this entry.
    pub fn set_unhealthy(&self, unhealthy: bool) {
        let [r, n, s] = self.ids();
        self.metrics
            .unhealthy
            .set(&[r, n, s], if unhealthy { 1.0 } else { 0.0 });
    }

    /// `gitlab_runner_limit` of this entry.
    pub fn set_limit(&self, limit: usize) {
        let [r, n, s] = self.ids();
        self.metrics.limit.set(&[r, n, s], limit as f64);
    }
}

/// A running job's metrics; call [`RunningJob::finished`] at the end.
#[derive(Debug)]
pub struct RunningJob {
    runner: RunnerMetrics,
    mode: IsolationMode,
    started: Instant,
    done: bool,
}

impl RunningJob {
    /// The job ended: gauge down, outcome and failure reason counted, duration observed.
    pub fn finished(mut self, outcome: &JobOutcome) {
        let m = &self.runner.metrics;
        let [r, n, s] = self.runner.ids();
        let label = match outcome {
            JobOutcome::Success => "success",
            JobOutcome::Failed { reason, .. } => {
                m.failed_jobs_total.add(&[r, n, s, reason.as_str()], 1.0);
                "failed"
            }
            JobOutcome::Canceled => "canceled",
        };
        m.ir_jobs_total.add(&[self.mode.as_str(), label], 1.0);
        m.job_duration
            .observe(&[r, n, s], self.started.elapsed().as_secs_f64());
        self.release();
    }

    fn release(&mut self) {
        if !self.done {
            self.done = true;
            let [r, n, s] = self.runner.ids();
            self.runner
                .metrics
                .jobs
                .add(&[r, n, s, "running", "", ""], -1.0);
        }
    }
}

impl Drop for RunningJob {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::FailureReason;

    fn runner() -> RunnerMetrics {
        Arc::new(Metrics::new()).runner(RunnerLabels::new("abc", "r1", "s_1"))
    }

    #[test]
    fn job_gauge_returns_to_zero_on_finish_and_on_drop() {
        let r = runner();
        let key = ["abc", "r1", "s_1", "running", "", ""];
        let a = r.job_started(IsolationMode::Dind);
        let b = r.job_started(IsolationMode::Dind);
        assert_eq!(r.metrics.jobs.get(&key), 2.0);
        a.finished(&JobOutcome::Failed {
            reason: FailureReason::ScriptFailure,
            exit_code: Some(1),
        });
        drop(b);
        assert_eq!(r.metrics.jobs.get(&key), 0.0);
        assert_eq!(r.metrics.jobs_total.get(&["abc", "r1", "s_1"]), 2.0);
        assert_eq!(
            r.metrics
                .failed_jobs_total
                .get(&["abc", "r1", "s_1", "script_failure"]),
            1.0
        );
        assert_eq!(r.metrics.ir_jobs_total.get(&["dind", "failed"]), 1.0);
    }

    #[test]
    fn render_has_version_and_process_metrics() {
        let m = Metrics::new();
        let text = m.render();
        assert!(text.contains("gitlab_runner_version_info{name=\"isolated-runner\",version=\""));
        assert!(text.contains("gitlab_runner_errors_total{level=\"error\"} 0"));
        assert!(text.contains("# TYPE process_resident_memory_bytes gauge"));
    }

    #[test]
    fn sidecar_starts_are_counted_by_kind() {
        let m = Metrics::new();
        m.sidecar_started("prestarted");
        m.sidecar_started("prestarted");
        m.sidecar_started("cold");
        let text = m.render();
        assert!(
            text.contains("isolated_runner_sidecars_total{start=\"prestarted\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("isolated_runner_sidecars_total{start=\"cold\"} 1"),
            "{text}"
        );
    }
}
