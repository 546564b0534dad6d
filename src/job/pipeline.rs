//! The pipeline: one job from payload to teardown, as a [`JobExecutor`]. This file holds the
//! frame (payload checks, prepare, teardown on every path); the build stages in between are a
//! table in [`super::stages`].

use super::artifacts::ArtifactStore;
use super::services;
use super::sources::LocalTree;
use super::spec::{build_spec, build_variables, job_timeout, masked_values, validate};
use super::stage::{Guards, StageEnd, State, Stop, guarded, section, stop_outcome};
use super::trust;
use super::vars::{self, Variables};
use super::{FailureReason, JobControl, JobExecutor, JobOutcome};
use crate::config::RunnerConfig;
use crate::gitlab::types::JobResponse;
use crate::isolation::{
    self, Isolation, JobEnvironment, OutputSink, Role, ScriptRequest, ScriptUser,
};
use crate::trace::{JobLog, LogOptions, TraceSink};
use futures::FutureExt;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Context a cache hook gets.
pub struct StageContext<'a> {
    /// The job.
    pub job: &'a JobResponse,
    /// The runner's config.
    pub runner: &'a RunnerConfig,
    /// The prepared environment (run helper scripts with it).
    pub env: &'a dyn JobEnvironment,
    /// The job's variables (expand cache keys with them).
    pub vars: &'a Variables,
    /// The job log.
    pub log: &'a JobLog,
    /// Fires when the job is aborted or times out.
    pub cancel: CancellationToken,
}

/// The seam for `cache:`: restore before the steps, archive after them. Failures are warnings,
/// never job failures (as in gitlab-runner). The cache issue implements this.
#[async_trait::async_trait]
pub trait CacheHook: Send + Sync {
    /// Restores the job's caches (`restore_cache` stage).
    async fn restore(&self, ctx: &StageContext<'_>) -> Result<(), String>;
    /// Archives the job's caches (`archive_cache` stage); `job_failed` selects `on_failure`.
    async fn archive(&self, ctx: &StageContext<'_>, job_failed: bool) -> Result<(), String>;
}

/// The job pipeline, shared by `run`, `exec` and `bench`.
pub struct Pipeline {
    /// Builds job environments.
    pub backend: Arc<dyn Isolation>,
    /// Uploads and downloads artifacts.
    pub artifacts: Arc<dyn ArtifactStore>,
    /// Cache restore/archive, when built.
    pub cache: Option<Arc<dyn CacheHook>>,
    /// `exec`: copy this tree instead of getting sources with git.
    pub local_tree: Option<LocalTree>,
    /// Short id of this runner (labels, names).
    pub runner_id: String,
    /// Where the runner stages artifact archives it uploads and downloads: a 0700 directory
    /// of the runner's own (`<state_dir>/staging`), never the job's tmp dir (finding C1).
    pub staging_root: PathBuf,
    /// Job ids running on this runner; share one set between every pipeline of a process
    /// (all `[[runners]]` entries) so a repeated id is refused.
    pub running: trust::RunningJobs,
}

impl Pipeline {
    /// A pipeline with no cache hook and git sources.
    pub fn new(backend: Arc<dyn Isolation>, artifacts: Arc<dyn ArtifactStore>) -> Self {
        Pipeline {
            backend,
            artifacts,
            cache: None,
            local_tree: None,
            runner_id: "local".to_string(),
            staging_root: super::staging::default_staging_root(),
            running: trust::RunningJobs::default(),
        }
    }
}

#[async_trait::async_trait]
impl JobExecutor for Pipeline {
    async fn execute(
        &self,
        job: JobResponse,
        runner: Arc<RunnerConfig>,
        trace: Arc<dyn TraceSink>,
        control: JobControl,
    ) -> JobOutcome {
        self.execute_with(job, runner, trace, control, false)
            .await
            .0
    }

    async fn execute_deferred(
        &self,
        job: JobResponse,
        runner: Arc<RunnerConfig>,
        trace: Arc<dyn TraceSink>,
        control: JobControl,
    ) -> (JobOutcome, Option<PendingTeardown>) {
        self.execute_with(job, runner, trace, control, true).await
    }
}

impl Pipeline {
    /// The job from payload to its log's last line; with `defer`, the teardown of a prepared
    /// environment is handed back instead of run (see [`JobExecutor::execute_deferred`]).
    async fn execute_with(
        &self,
        job: JobResponse,
        runner: Arc<RunnerConfig>,
        trace: Arc<dyn TraceSink>,
        control: JobControl,
        defer: bool,
    ) -> (JobOutcome, Option<PendingTeardown>) {
        let timeout = job_timeout(job.runner_info.timeout);
        let deadline = Instant::now() + timeout;
        let log = Arc::new(JobLog::new(
            trace,
            LogOptions {
                masked_values: masked_values(&job),
                extra_prefixes: job.features.token_mask_prefixes.clone(),
                output_limit: runner.output_limit,
                sections: job.features.trace_sections,
            },
        ));
        log.line(&format!(
            "Running with isolated-runner {} ({})",
            vars::RUNNER_VERSION,
            self.backend.mode().as_str()
        ));
        let mut pending = None;
        let outcome = self
            .run(
                &job,
                &runner,
                &log,
                &control,
                (deadline, timeout),
                defer.then_some(&mut pending),
            )
            .await;
        match &outcome {
            JobOutcome::Success => log.success("Job succeeded"),
            JobOutcome::Canceled => log.error("Job failed: canceled"),
            JobOutcome::Failed {
                reason,
                exit_code: Some(c),
            } => log.error(&format!("Job failed: exit code {c} ({})", reason.as_str())),
            JobOutcome::Failed { reason, .. } => {
                log.error(&format!("Job failed: {}", reason.as_str()))
            }
        }
        log.finish();
        (outcome, pending)
    }

    /// With `pending`, a prepared environment's teardown (and the job id's claim) is put
    /// there instead of run.
    async fn run(
        &self,
        job: &JobResponse,
        runner: &RunnerConfig,
        log: &Arc<JobLog>,
        control: &JobControl,
        (deadline, timeout): (Instant, Duration),
        pending: Option<&mut Option<PendingTeardown>>,
    ) -> JobOutcome {
        // Every refusal before a script runs: the reason in the log, no exit code.
        let refuse = |reason: FailureReason, msg: &str| {
            log.error(msg);
            JobOutcome::failed(reason)
        };
        let system = |msg: &str| refuse(FailureReason::RunnerSystemFailure, msg);
        if let Err(msg) = validate(job) {
            return system(&msg);
        }
        // Held until the job's teardown is over: a second job with this id (another entry or
        // GitLab instance) would name the same directories, containers and chain (H3).
        let running = match self.running.claim(job.id) {
            Ok(claim) => claim,
            Err(msg) => return system(&msg),
        };
        // Before anything exists: a clone URL the config does not name opens nothing (H6).
        if let Err(msg) = trust::clone_endpoint(job, runner) {
            return refuse(FailureReason::RunnerUnsupported, &msg);
        }
        // `image: docker:` options are checked before anything exists, like the clone URL.
        match super::user::executor_opts(job) {
            Ok((_, warnings)) => warnings.iter().for_each(|w| log.warning(w)),
            Err(msg) => return refuse(FailureReason::RunnerUnsupported, &msg),
        }
        // Variables without paths are enough to expand image names.
        let pre_vars = build_variables(job, runner, None, &[], timeout);
        let mut spec = match build_spec(job, runner, &self.runner_id, &pre_vars, timeout) {
            Ok(s) => s,
            Err(msg) => return system(&msg),
        };
        // GIT_CLONE_PATH: checked like gitlab-runner (refused outside the builds dir or when
        // custom build dirs are off) before anything exists; the backend puts the project there.
        // A refusal is a configuration error, as gitlab-runner reports it (no script has run;
        // a GitLab that does not know the reason gets `script_failure`, gitlab-runner's fallback).
        spec.clone_path = match super::clone_path::resolve(
            &pre_vars,
            &runner.builds_dir,
            job.id,
            runner.custom_build_dir,
        ) {
            Ok(p) => p,
            Err(e) => return refuse(FailureReason::RunnerConfigurationError, &e.to_string()),
        };
        let pulls = match super::pull::plan(
            job,
            runner,
            &pre_vars,
            &spec,
            super::pull::runner_home().as_deref(),
        ) {
            Ok(p) => p,
            Err(msg) => return refuse(FailureReason::ImagePullFailure, &msg),
        };
        let guards = Guards {
            abort: control.abort.clone(),
            graceful: Some(control.cancel_gracefully.clone()),
            deadline,
        };
        let heading = format!(
            "Preparing the environment (isolation: {}, image: {})",
            self.backend.mode().as_str(),
            spec.build_image.name
        );
        let prepare = async {
            let stage = CancellationToken::new();
            let out: Arc<dyn OutputSink> = log.clone();
            // A panic in the backend fails the job, never the runner (M1); what the backend
            // made so far carries the job's labels for the reaper.
            // Images first, on the host daemon, as gitlab-runner pulls before it creates anything.
            let backend = &self.backend;
            let prepare_stage = stage.clone();
            let prepare = async {
                backend.ensure_images(&pulls, out.clone()).await?;
                backend.prepare(&spec, out, prepare_stage).await
            };
            let prepare = AssertUnwindSafe(prepare).catch_unwind().map(|r| {
                r.unwrap_or_else(|p| Err(crashed("preparing the environment", p.as_ref())))
            });
            let (res, stop) = guarded(prepare, stage, &guards).await;
            // The services are awaited inside the prepare section, as gitlab-runner prints it.
            match (res, stop) {
                (Some(Ok(env)), None) => {
                    let stop = await_services(
                        log,
                        &guards,
                        env.as_ref(),
                        runner.docker.wait_for_services_timeout,
                        spec.services.len(),
                    )
                    .await;
                    (Some(Ok(env)), stop)
                }
                other => other,
            }
        };
        let (res, stop) = section(log, "prepare_executor", &heading, false, prepare).await;
        let env = match (res, stop) {
            (Some(Ok(env)), None) => env,
            (Some(Ok(env)), Some(stop)) => {
                // Prepared just as we were told to stop: it still has to go.
                log_teardown(log, env.teardown().await);
                return stop_outcome(log, State::from_stop(stop));
            }
            (_, Some(stop)) => return stop_outcome(log, State::from_stop(stop)),
            (Some(Err(e)), None) => {
                let reason = match e {
                    isolation::Error::ImageUnavailable { .. } => FailureReason::ImagePullFailure,
                    _ => FailureReason::RunnerSystemFailure,
                };
                return refuse(reason, &format!("preparing the environment failed: {e}"));
            }
            (None, None) => return system("preparing the environment did not finish"),
        };
        // From here on the environment is torn down on every path: a panic in the pipeline or
        // in the backend's `run_script` is caught and fails the job (M1), and should this
        // future be dropped half-way, the guard starts the teardown on its own task.
        let guard = TeardownGuard(Some(env));
        let Some(env_ref) = guard.0.as_deref() else {
            return system("the job environment vanished");
        };
        let outcome = AssertUnwindSafe(super::stages::run(
            self, job, runner, log, &guards, env_ref, timeout,
        ))
        .catch_unwind()
        .await
        .unwrap_or_else(|p| system(&crashed("the job", p.as_ref()).to_string()));
        // At the end rather than streamed: the logs of a finished job are complete, and a
        // service's lines never cut into the script's output mid-line.
        if services::debug_services(&pre_vars) && !spec.services.is_empty() {
            services::log_service_logs(log, &env_ref.service_logs(services::DEBUG_LOG_LINES).await);
        }
        match pending {
            Some(slot) => {
                *slot = Some(PendingTeardown {
                    guard,
                    _running: running,
                })
            }
            None => {
                log_teardown(log, guard.teardown().await);
                drop(running);
            }
        }
        outcome
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn run_stage(
        &self,
        env: &dyn JobEnvironment,
        log: &Arc<JobLog>,
        guards: &Guards,
        role: Role,
        user: &ScriptUser,
        script: String,
        vars_env: Vec<(String, String)>,
    ) -> StageEnd {
        let stage = CancellationToken::new();
        let out: Arc<dyn OutputSink> = log.clone();
        let req = ScriptRequest {
            role,
            script,
            env: vars_env,
        };
        let (res, stop) = guarded(
            env.run_script_as(req, user, out, stage.clone()),
            stage,
            guards,
        )
        .await;
        match (res, stop) {
            (_, Some(stop)) => StageEnd::Stopped(stop),
            (Some(Ok(0)), None) => StageEnd::Ok,
            (Some(Ok(code)), None) => StageEnd::Exit(code),
            (Some(Err(isolation::Error::Canceled)), None) => {
                StageEnd::System("the script was canceled by the backend".into())
            }
            (Some(Err(e)), None) => StageEnd::System(e.to_string()),
            (None, None) => StageEnd::System("the script did not finish".into()),
        }
    }
}

/// A finished job's environment whose teardown has not run yet, with the job id's claim (a
/// second job with this id is refused until the teardown is over). Run it with
/// [`PendingTeardown::run`]; dropped, it starts the teardown on a task of its own.
pub struct PendingTeardown {
    guard: TeardownGuard,
    _running: trust::RunningJob,
}

impl PendingTeardown {
    /// Tears the environment down; the report lists what was left (the caller logs and counts
    /// it; the reaper removes it by label).
    pub async fn run(self) -> isolation::TeardownReport {
        let PendingTeardown { guard, _running } = self;
        guard.teardown().await
    }
}

/// Owns a prepared environment until its teardown ran. Dropped without [`Self::teardown`]
/// (the job's future was dropped or unwound), it starts the teardown on a task of its own.
struct TeardownGuard(Option<Box<dyn JobEnvironment>>);

impl TeardownGuard {
    async fn teardown(mut self) -> isolation::TeardownReport {
        match self.0.take() {
            Some(env) => env.teardown().await,
            None => isolation::TeardownReport::default(),
        }
    }
}

impl Drop for TeardownGuard {
    fn drop(&mut self) {
        let Some(env) = self.0.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    for f in env.teardown().await.failures {
                        tracing::warn!(failure = %f, "teardown of an interrupted job left something behind");
                    }
                });
            }
            // No runtime left (the process is ending): the reaper removes it at the next start.
            Err(_) => {
                tracing::error!("a job environment was dropped without a runtime to tear it down")
            }
        }
    }
}

/// The error for a caught panic; the message is the panic's own when it has one.
fn crashed(what: &str, panic: &(dyn std::any::Any + Send)) -> isolation::Error {
    let detail = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_string());
    isolation::Error::Other {
        context: format!("{what} crashed (a runner bug; the environment is torn down)"),
        detail,
    }
}

/// Waits for the job's services (`wait_for_services_timeout`; `None` or no services: no wait),
/// logging a warning for each that did not come up. Returns why it was stopped, if it was.
async fn await_services(
    log: &JobLog,
    guards: &Guards,
    env: &dyn JobEnvironment,
    timeout: Option<Duration>,
    services: usize,
) -> Option<Stop> {
    let timeout = timeout.filter(|_| services > 0)?;
    services::log_waiting(log, timeout);
    let stage = CancellationToken::new();
    let (res, stop) = guarded(env.wait_for_services(timeout, stage.clone()), stage, guards).await;
    for (i, w) in res.unwrap_or_default().iter().enumerate() {
        services::log_warning(log, i, w);
    }
    stop
}

fn log_teardown(log: &JobLog, report: isolation::TeardownReport) {
    for f in &report.failures {
        log.warning(&format!("teardown: {f}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gitlab::types::Step;
    use crate::isolation::EnvironmentSpec;
    use crate::job::artifacts;
    use crate::secret::Secret;

    fn job() -> JobResponse {
        JobResponse {
            id: 5,
            token: Secret::new("glcbt-xyz12345"),
            steps: vec![Step {
                name: "script".into(),
                script: vec!["true".into()],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    /// A backend that records every prepare and holds the first one until released, standing
    /// for job A's live environment.
    struct HeldBackend {
        prepared: std::sync::Mutex<Vec<u64>>,
        entered: tokio::sync::Notify,
        release: CancellationToken,
    }

    #[async_trait::async_trait]
    impl Isolation for HeldBackend {
        fn mode(&self) -> crate::config::IsolationMode {
            crate::config::IsolationMode::Dind
        }
        async fn prepare(
            &self,
            spec: &EnvironmentSpec,
            _out: Arc<dyn OutputSink>,
            _cancel: CancellationToken,
        ) -> Result<Box<dyn JobEnvironment>, isolation::Error> {
            if let Ok(mut p) = self.prepared.lock() {
                p.push(spec.job_id);
            }
            self.entered.notify_one();
            self.release.cancelled().await;
            Err(isolation::Error::Other {
                context: "test".into(),
                detail: "released".into(),
            })
        }
        async fn ensure_images(
            &self,
            _plan: &isolation::images::PullPlan,
            _out: Arc<dyn OutputSink>,
        ) -> Result<(), isolation::Error> {
            Ok(())
        }
        async fn warm_up(&self, _runner_id: &str) {}
        fn standby_ids(&self) -> Vec<u64> {
            Vec::new()
        }
        fn kept_ids(&self) -> Vec<u64> {
            Vec::new()
        }
        fn set_job_cap(&self, _cap: usize) {}
        fn pool_target(&self) -> Option<usize> {
            None
        }
        async fn shutdown(&self) -> crate::isolation::TeardownReport {
            crate::isolation::TeardownReport::default()
        }
    }

    /// H3: while job A (one GitLab instance) is in prepare, job B with the same id (another
    /// entry, another instance) is refused before the backend is asked for anything: B creates,
    /// deletes and tears down nothing of A's (dirs, containers, chain all live behind
    /// `prepare`/`teardown`). Once A ended, the id is free again.
    #[tokio::test]
    async fn a_job_id_already_running_is_refused() {
        let backend = Arc::new(HeldBackend {
            prepared: std::sync::Mutex::new(Vec::new()),
            entered: tokio::sync::Notify::new(),
            release: CancellationToken::new(),
        });
        let store = Arc::new(artifacts::LocalArtifactStore {
            root: std::env::temp_dir(),
        });
        let pipeline = Arc::new(Pipeline::new(backend.clone(), store));
        let mut a = job();
        a.id = 4_242_424_242;
        let runner_a = Arc::new(RunnerConfig {
            url: url::Url::parse("https://gitlab-a.example.test/").unwrap(),
            ..Default::default()
        });
        let runner_b = Arc::new(RunnerConfig {
            url: url::Url::parse("https://gitlab-b.example.test/").unwrap(),
            ..Default::default()
        });
        let a_task = {
            let (p, a, r) = (pipeline.clone(), a.clone(), runner_a.clone());
            tokio::spawn(async move {
                let sink = Arc::new(crate::trace::BufferSink::new());
                p.execute(a, r, sink, JobControl::default()).await
            })
        };
        backend.entered.notified().await;

        let sink_b = Arc::new(crate::trace::BufferSink::new());
        let outcome = pipeline
            .execute(
                a.clone(),
                runner_b.clone(),
                sink_b.clone(),
                JobControl::default(),
            )
            .await;
        assert_eq!(
            outcome,
            JobOutcome::Failed {
                reason: FailureReason::RunnerSystemFailure,
                exit_code: None
            }
        );
        assert!(
            sink_b.text().contains("already running"),
            "{}",
            sink_b.text()
        );
        assert_eq!(
            *backend.prepared.lock().unwrap(),
            vec![a.id],
            "B reached the backend"
        );

        backend.release.cancel();
        let _ = a_task.await.expect("A's task");
        // The id is free once A is over: a later job with it runs (here: reaches prepare).
        let _ = pipeline
            .execute(
                a.clone(),
                runner_b,
                Arc::new(crate::trace::BufferSink::new()),
                JobControl::default(),
            )
            .await;
        assert_eq!(*backend.prepared.lock().unwrap(), vec![a.id, a.id]);
    }
}
