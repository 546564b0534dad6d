//! The pipeline: one job from payload to teardown, as a [`JobExecutor`].

use super::artifacts::{self, ArtifactStore, JobRef};
use super::script::{config_commands, sh_quote, user_script};
use super::services;
use super::sources::{self, GitStrategy, LocalTree};
use super::staging::{Staging, StagingError};
use super::trust;
use super::vars::{self, Variables};
use super::{FailureReason, JobControl, JobExecutor, JobOutcome};
use crate::config::RunnerConfig;
use crate::gitlab::types::{Artifact, Image, JobResponse};
use crate::isolation::{
    self, ContainerImage, EnvironmentSpec, Isolation, JobEnvironment, JobPaths, OutputSink, Role,
    ScriptRequest, ServiceSpec,
};
use crate::paths::Dir;
use crate::trace::{JobLog, LogOptions, TraceSink};
use futures::FutureExt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Job timeout when GitLab sends 0.
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(7200);
/// `after_script` timeout unless `RUNNER_AFTER_SCRIPT_TIMEOUT` says otherwise.
pub const DEFAULT_AFTER_SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);
/// The longest job timeout taken from a payload (GitLab's own maximum is one month). Larger
/// values are clamped: an `Instant` or a certificate's validity must never overflow.
pub const MAX_JOB_TIMEOUT: Duration = Duration::from_secs(31 * 24 * 3600);
/// How long a stage may take to stop after it was told to.
const STOP_GRACE: Duration = Duration::from_secs(30);
/// Helper image when the config names none; it must have bash and git.
pub const DEFAULT_HELPER_IMAGE: &str = "isolated-runner/job:test";

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

/// Why a stage was stopped from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Abort,
    Graceful,
    Timeout,
}

#[derive(Clone)]
struct Guards {
    abort: CancellationToken,
    graceful: Option<CancellationToken>,
    deadline: Instant,
}

/// Runs `fut` until it ends, stopping it (through `stage`) on abort, graceful cancel or the
/// deadline. After a stop, waits at most [`STOP_GRACE`] for it to end.
async fn guarded<T>(
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
enum StageEnd {
    Ok,
    Exit(i32),
    Stopped(Stop),
    System(String),
}

/// Where the job stands between stages.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Running,
    Failed(FailureReason, Option<i32>),
    Canceled,
    Aborted,
}

impl State {
    fn failed(&self) -> bool {
        !matches!(self, State::Running)
    }
    fn ci_job_status(&self) -> &'static str {
        match self {
            State::Running => "success",
            State::Failed(FailureReason::JobExecutionTimeout, _) => "timedout",
            State::Failed(..) => "failed",
            State::Canceled | State::Aborted => "canceled",
        }
    }
    fn from_stop(stop: Stop) -> State {
        match stop {
            Stop::Abort => State::Aborted,
            Stop::Graceful => State::Canceled,
            Stop::Timeout => State::Failed(FailureReason::JobExecutionTimeout, None),
        }
    }
}

/// Checks the payload before anything is created.
pub fn validate(job: &JobResponse) -> Result<(), String> {
    trust::check_job_id(job.id)?;
    if job.token.is_empty() {
        return Err(format!("job {} has an empty job token", job.id));
    }
    if job.steps.is_empty() {
        return Err(format!(
            "job {} has no steps (jobs using `run:` are not supported)",
            job.id
        ));
    }
    if let Some(bad) = job.steps.iter().find(|s| s.name.is_empty()) {
        return Err(format!(
            "job {} has a step without a name ({bad:?})",
            job.id
        ));
    }
    Ok(())
}

/// The runner's own images (the sidecar's, and the helper's when it is not also the default job
/// image): a job may name them only when an allow-list names them explicitly, never through an
/// empty list (L3).
fn runner_image<'a>(docker: &'a crate::config::DockerConfig, name: &str) -> Option<&'a str> {
    let own = [
        Some(docker.isolation.sidecar_image.as_str()),
        docker
            .helper_image
            .as_deref()
            .filter(|h| *h != docker.image.as_str()),
    ];
    own.into_iter().flatten().find(|o| *o == name)
}

/// Refuses a job's `image:`/`services:` name that is one of the runner's own images unless
/// `allowed` is non-empty and matches it.
fn refuse_runner_image(
    docker: &crate::config::DockerConfig,
    name: &str,
    allowed: &[String],
    key: &str,
) -> Result<(), String> {
    match runner_image(docker, name) {
        Some(own) if allowed.is_empty() => Err(format!(
            "{own:?} is one of this runner's own images (sidecar or helper) and cannot run as a \
             job's image or service unless [runners.docker] {key} names it"
        )),
        _ => Ok(()),
    }
}

fn glob_allowed(patterns: &[String], name: &str) -> bool {
    if patterns.is_empty() {
        return true;
    }
    patterns.iter().any(|p| {
        globset::Glob::new(p)
            .map(|g| g.compile_matcher().is_match(name))
            .unwrap_or(false)
    })
}

/// Default service aliases gitlab-runner adds: `group/name:tag` → `group__name` and `group-name`.
fn default_aliases(image: &str) -> Vec<String> {
    let no_digest = image.split('@').next().unwrap_or(image);
    let last_slash = no_digest.rfind('/').map(|i| i + 1).unwrap_or(0);
    let no_tag = match no_digest[last_slash..].find(':') {
        Some(i) => &no_digest[..last_slash + i],
        None => no_digest,
    };
    // Drop a registry host (first component with a dot or a port).
    let mut parts: Vec<&str> = no_tag.split('/').collect();
    if parts.len() > 1 && (parts[0].contains('.') || parts[0].contains(':')) {
        parts.remove(0);
    }
    let base = parts.join("/");
    let mut out = vec![base.replace('/', "__")];
    let dashed = base.replace('/', "-");
    if !out.contains(&dashed) {
        out.push(dashed);
    }
    out
}

/// Builds the environment spec: image resolution, allow-lists, services.
pub fn build_spec(
    job: &JobResponse,
    runner: &RunnerConfig,
    runner_id: &str,
    vars: &Variables,
    timeout: Duration,
) -> Result<EnvironmentSpec, String> {
    let docker = &runner.docker;
    let build_image = match &job.image {
        Some(img) if !img.name.trim().is_empty() => {
            let name = vars.expand(&img.name);
            refuse_runner_image(docker, &name, &docker.allowed_images, "allowed_images")?;
            if !glob_allowed(&docker.allowed_images, &name) {
                return Err(format!(
                    "the {name:?} image is not present on the list of allowed images ({})",
                    docker.allowed_images.join(", ")
                ));
            }
            ContainerImage {
                name,
                entrypoint: img.entrypoint.clone(),
            }
        }
        Some(img) => ContainerImage {
            name: docker.image.clone(),
            entrypoint: img.entrypoint.clone(),
        },
        None => ContainerImage {
            name: docker.image.clone(),
            entrypoint: None,
        },
    };
    if build_image.name.is_empty() {
        return Err(
            "no image: the job names none and the config has no [runners.docker] image".into(),
        );
    }
    // Checked before any container exists: every service is a container on the host (H4).
    if let Some(max) = docker.services_limit
        && job.services.len() > max
    {
        return Err(format!(
            "the job asks for {} services; this runner allows at most {max} \
             ([runners.docker] services_limit)",
            job.services.len()
        ));
    }
    let mut services = Vec::new();
    for svc in &job.services {
        let name = vars.expand(&svc.name);
        refuse_runner_image(docker, &name, &docker.allowed_services, "allowed_services")?;
        services.push(service_spec(svc, vars, &docker.allowed_services)?);
    }
    let protected = trust::is_protected(job);
    let repo_endpoint = trust::clone_endpoint(job, runner)?;
    let service_env = vars
        .effective()
        .into_iter()
        .filter(|v| v.public && !v.masked && !v.file && vars::is_valid_name(&v.key))
        .map(|v| (v.key.clone(), v.value.clone()))
        .collect();
    Ok(EnvironmentSpec {
        runner_id: runner_id.to_string(),
        job_id: job.id,
        project_id: job.job_info.project_id,
        protected,
        timeout,
        build_image,
        helper_image: docker
            .helper_image
            .clone()
            .unwrap_or_else(|| DEFAULT_HELPER_IMAGE.to_string()),
        services,
        service_env,
        // Only host and port leave here: the URL carries the job token.
        repo_endpoint,
    })
}

fn service_spec(svc: &Image, vars: &Variables, allowed: &[String]) -> Result<ServiceSpec, String> {
    let name = vars.expand(&svc.name);
    if name.trim().is_empty() {
        return Err("a service has no image name".into());
    }
    if !glob_allowed(allowed, &name) {
        return Err(format!(
            "the {name:?} service is not present on the list of allowed services ({})",
            allowed.join(", ")
        ));
    }
    let mut aliases: Vec<String> = svc
        .alias
        .split([',', ' '])
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect();
    for a in default_aliases(&name) {
        if !aliases.contains(&a) {
            aliases.push(a);
        }
    }
    Ok(ServiceSpec {
        image: ContainerImage {
            name,
            entrypoint: svc.entrypoint.clone(),
        },
        command: svc.command.clone(),
        aliases,
        env: svc
            .variables
            .iter()
            .map(|v| (v.key.clone(), v.value.clone()))
            .collect(),
    })
}

/// Variables for the job: runner-added ones, the config's `environment`, the payload's, and the
/// backend's (`DOCKER_HOST` …) last so a job cannot point them elsewhere by accident.
pub fn build_variables(
    job: &JobResponse,
    runner: &RunnerConfig,
    paths: Option<&JobPaths>,
    job_env: &[(String, String)],
    timeout: Duration,
) -> Variables {
    let mut v = Variables::new();
    if let Some(img) = &job.image
        && !img.name.is_empty()
    {
        v.push("CI_JOB_IMAGE", img.name.clone());
    }
    let short = vars::short_token(runner.token.expose());
    if !short.is_empty() {
        v.push("CI_RUNNER_SHORT_TOKEN", short);
    }
    for (k, val) in &runner.environment {
        v.push(k, val.clone());
    }
    if let Some(p) = paths {
        let builds = p
            .project_dir
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| runner.builds_dir.clone());
        v.push("CI_BUILDS_DIR", builds.to_string_lossy());
        v.push("CI_PROJECT_DIR", p.project_dir.to_string_lossy());
        v.push("RUNNER_TEMP_PROJECT_DIR", p.tmp_dir.to_string_lossy());
        v.push("TMPDIR", p.tmp_dir.to_string_lossy());
    }
    v.push("CI_SERVER", "yes");
    v.push("CI", "true");
    v.push("GITLAB_CI", "true");
    v.push("CI_JOB_TIMEOUT", timeout.as_secs().to_string());
    v.push("CI_JOB_STATUS", "running");
    v.push("CI_RUNNER_VERSION", vars::RUNNER_VERSION);
    v.push(
        "CI_RUNNER_REVISION",
        option_env!("RUNNER_GIT_REVISION").unwrap_or("unknown"),
    );
    v.push("CI_RUNNER_EXECUTABLE_ARCH", vars::executable_arch());
    v.push("CI_DISPOSABLE_ENVIRONMENT", "true");
    v.extend(job.variables.iter().cloned());
    for (k, val) in job_env {
        v.push(k, val.clone());
    }
    v
}

/// Every secret the log must mask: masked variables, the job token, credentials.
fn masked_values(job: &JobResponse) -> Vec<String> {
    let mut out: Vec<String> = job
        .variables
        .iter()
        .filter(|v| v.masked && !v.value.is_empty())
        .map(|v| v.value.clone())
        .collect();
    out.push(job.token.expose().to_string());
    if let Ok(u) = url::Url::parse(job.git_info.repo_url.expose()) {
        if let Some(p) = u.password() {
            out.push(p.to_string());
        }
        // The git helper's `Authorization: Basic` header value, whole (see M3 in security.md).
        out.extend(sources::basic_credentials(&u));
    }
    for c in &job.credentials {
        out.push(c.password.expose().to_string());
    }
    for d in &job.dependencies {
        out.push(d.token.expose().to_string());
    }
    out.retain(|s| !s.is_empty());
    out
}

/// The job's timeout: the payload's seconds (0 = [`DEFAULT_JOB_TIMEOUT`]), at most
/// [`MAX_JOB_TIMEOUT`].
pub fn job_timeout(seconds: u64) -> Duration {
    match seconds {
        0 => DEFAULT_JOB_TIMEOUT,
        s => Duration::from_secs(s.min(MAX_JOB_TIMEOUT.as_secs())),
    }
}

/// When `after_script` must end: its own timeout from now, but never past the job's deadline,
/// except that an `after_script` that starts after the job timed out still gets the default
/// timeout (as before). A job's variables can thus never keep its environment past
/// `deadline + DEFAULT_AFTER_SCRIPT_TIMEOUT`, and no value overflows.
fn after_script_deadline(vars: &Variables, now: Instant, job_deadline: Instant) -> Instant {
    let limit = job_deadline.max(now + DEFAULT_AFTER_SCRIPT_TIMEOUT);
    now.checked_add(after_script_timeout(vars))
        .map_or(limit, |d| d.min(limit))
}

/// Parses `RUNNER_AFTER_SCRIPT_TIMEOUT` (`10m`, `90s`, `300`); any size parses, the caller
/// clamps.
fn after_script_timeout(vars: &Variables) -> Duration {
    vars.get("RUNNER_AFTER_SCRIPT_TIMEOUT")
        .and_then(|s| {
            let s = s.trim();
            s.parse::<u64>()
                .ok()
                .map(Duration::from_secs)
                .or_else(|| humantime::parse_duration(s).ok())
        })
        .filter(|d| !d.is_zero())
        .unwrap_or(DEFAULT_AFTER_SCRIPT_TIMEOUT)
}

fn when_matches(when: &str, failed: bool) -> bool {
    match when {
        "always" => true,
        "on_failure" => failed,
        _ => !failed,
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
        let outcome = self
            .run(&job, &runner, &log, &control, deadline, timeout)
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
        outcome
    }
}

impl Pipeline {
    async fn run(
        &self,
        job: &JobResponse,
        runner: &RunnerConfig,
        log: &Arc<JobLog>,
        control: &JobControl,
        deadline: Instant,
        timeout: Duration,
    ) -> JobOutcome {
        let system = |msg: &str| {
            log.error(msg);
            JobOutcome::Failed {
                reason: FailureReason::RunnerSystemFailure,
                exit_code: None,
            }
        };
        if let Err(msg) = validate(job) {
            return system(&msg);
        }
        // Held until the job's teardown is over: a second job with this id (another entry or
        // GitLab instance) would name the same directories, containers and chain (H3).
        let _running = match self.running.claim(job.id) {
            Ok(claim) => claim,
            Err(msg) => return system(&msg),
        };
        // Before anything exists: a clone URL the config does not name opens nothing (H6).
        if let Err(msg) = trust::clone_endpoint(job, runner) {
            log.error(&msg);
            return JobOutcome::Failed {
                reason: FailureReason::RunnerUnsupported,
                exit_code: None,
            };
        }
        // Variables without paths are enough to expand image names.
        let pre_vars = build_variables(job, runner, None, &[], timeout);
        let spec = match build_spec(job, runner, &self.runner_id, &pre_vars, timeout) {
            Ok(s) => s,
            Err(msg) => return system(&msg),
        };
        let pulls = match super::pull::plan(
            job,
            runner,
            &pre_vars,
            &spec,
            super::pull::runner_home().as_deref(),
        ) {
            Ok(p) => p,
            Err(msg) => {
                log.error(&msg);
                return JobOutcome::Failed {
                    reason: FailureReason::ImagePullFailure,
                    exit_code: None,
                };
            }
        };
        let guards = Guards {
            abort: control.abort.clone(),
            graceful: Some(control.cancel_gracefully.clone()),
            deadline,
        };
        log.section_start(
            "prepare_executor",
            &format!(
                "Preparing the environment (isolation: {}, image: {})",
                self.backend.mode().as_str(),
                spec.build_image.name
            ),
            false,
        );
        let stage = CancellationToken::new();
        let out: Arc<dyn OutputSink> = log.clone();
        // A panic in the backend fails the job, never the runner (M1); what the backend made
        // so far carries the job's labels for the reaper.
        // Images first, on the host daemon, as gitlab-runner pulls before it creates anything.
        let backend = &self.backend;
        let prepare_stage = stage.clone();
        let prepare = async {
            backend.ensure_images(&pulls, out.clone()).await?;
            backend.prepare(&spec, out, prepare_stage).await
        };
        let prepare = AssertUnwindSafe(prepare)
            .catch_unwind()
            .map(|r| r.unwrap_or_else(|p| Err(crashed("preparing the environment", p.as_ref()))));
        let (res, stop) = guarded(prepare, stage, &guards).await;
        // The services are awaited inside the prepare section, as gitlab-runner prints it.
        let (res, stop) = match (res, stop) {
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
        };
        log.section_end("prepare_executor");
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
                log.error(&format!("preparing the environment failed: {e}"));
                return JobOutcome::Failed {
                    reason,
                    exit_code: None,
                };
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
        let outcome =
            AssertUnwindSafe(self.run_prepared(job, runner, log, &guards, env_ref, timeout))
                .catch_unwind()
                .await
                .unwrap_or_else(|p| system(&crashed("the job", p.as_ref()).to_string()));
        // At the end rather than streamed: the logs of a finished job are complete, and a
        // service's lines never cut into the script's output mid-line.
        if services::debug_services(&pre_vars) && !spec.services.is_empty() {
            services::log_service_logs(log, &env_ref.service_logs(services::DEBUG_LOG_LINES).await);
        }
        log_teardown(log, guard.teardown().await);
        outcome
    }

    #[allow(clippy::too_many_arguments)]
    async fn run_stage(
        &self,
        env: &dyn JobEnvironment,
        log: &Arc<JobLog>,
        guards: &Guards,
        role: Role,
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
        let (res, stop) = guarded(env.run_script(req, out, stage.clone()), stage, guards).await;
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

    async fn run_prepared(
        &self,
        job: &JobResponse,
        runner: &RunnerConfig,
        log: &Arc<JobLog>,
        guards: &Guards,
        env: &dyn JobEnvironment,
        timeout: Duration,
    ) -> JobOutcome {
        let paths = env.paths().clone();
        let host = env.host_dirs().clone();
        let mut vars = build_variables(job, runner, Some(&paths), &env.job_env(), timeout);
        let mut state = State::Running;

        // File variables: written once, removed in cleanup_file_variables (and by teardown).
        let file_vars = match write_file_variables(&mut vars, &paths.tmp_dir, &host.tmp_dir).await {
            Ok(f) => f,
            Err(e) => {
                log.error(&format!("writing file variables failed: {e}"));
                return JobOutcome::Failed {
                    reason: FailureReason::RunnerSystemFailure,
                    exit_code: None,
                };
            }
        };

        // get_sources
        log.section_start("get_sources", "Getting source from Git repository", false);
        let end = self
            .get_sources(job, runner, log, guards, env, &vars, &paths)
            .await;
        log.section_end("get_sources");
        apply_end(log, &mut state, end, false, "getting sources");

        // restore_cache: the seam for the cache issue.
        if !state.failed()
            && let Some(cache) = &self.cache
        {
            log.section_start("restore_cache", "Restoring cache", false);
            let ctx = StageContext {
                job,
                runner,
                env,
                vars: &vars,
                log,
                cancel: guards.abort.clone(),
            };
            if let Err(e) = cache.restore(&ctx).await {
                log.warning(&format!("restoring the cache failed: {e}"));
            }
            log.section_end("restore_cache");
        }

        // download_artifacts
        if !state.failed() {
            let deps: Vec<_> = job
                .dependencies
                .iter()
                .filter(|d| d.artifacts_file.is_some())
                .collect();
            if !deps.is_empty() {
                log.section_start("download_artifacts", "Downloading artifacts", false);
                for dep in deps {
                    if let Err(msg) = self.download_dependency(job, dep, &host, log).await {
                        log.error(&msg);
                        state = State::Failed(FailureReason::UnknownFailure, None);
                        break;
                    }
                }
                log.section_end("download_artifacts");
            }
        }

        // Steps in payload order, after_script last.
        for step in job.steps.iter().filter(|s| s.name != "after_script") {
            let run = match &state {
                State::Running => when_matches(&step.when, false),
                State::Failed(..) => when_matches(&step.when, true),
                State::Canceled | State::Aborted => false,
            };
            if !run {
                continue;
            }
            let name = format!("step_{}", step.name);
            log.section_start(
                &name,
                &format!("Executing \"{name}\" stage of the job script"),
                false,
            );
            let mut commands = Vec::new();
            if step.name == "script"
                && let Some(pre) = &runner.pre_build_script
            {
                commands.extend(config_commands(pre));
            }
            commands.extend(step.script.iter().cloned());
            if step.name == "script"
                && let Some(post) = &runner.post_build_script
            {
                commands.extend(config_commands(post));
            }
            let script = user_script(&paths.project_dir.to_string_lossy(), &commands);
            let end = self
                .run_stage(env, log, guards, Role::Build, script, export_env(&vars))
                .await;
            log.section_end(&name);
            apply_end(log, &mut state, end, step.allow_failure, &name);
        }

        // after_script: own shell, own timeout, runs unless aborted.
        if state != State::Aborted
            && let Some(step) = job
                .steps
                .iter()
                .find(|s| s.name == "after_script" && !s.script.is_empty())
        {
            vars.push("CI_JOB_STATUS", state.ci_job_status());
            log.section_start("after_script", "Running after_script", false);
            log.line("Running after script...");
            let after_guards = Guards {
                abort: guards.abort.clone(),
                graceful: None,
                deadline: after_script_deadline(&vars, Instant::now(), guards.deadline),
            };
            let script = user_script(&paths.project_dir.to_string_lossy(), &step.script);
            let end = self
                .run_stage(
                    env,
                    log,
                    &after_guards,
                    Role::Build,
                    script,
                    export_env(&vars),
                )
                .await;
            log.section_end("after_script");
            let strict = vars
                .get("AFTER_SCRIPT_IGNORE_ERRORS")
                .is_some_and(|v| v.trim() == "false");
            match end {
                StageEnd::Ok => {}
                StageEnd::Stopped(Stop::Abort) => state = State::Aborted,
                StageEnd::Stopped(_) => {
                    log.warning("after_script timed out");
                    if strict && !state.failed() {
                        state = State::Failed(FailureReason::JobExecutionTimeout, None);
                    }
                }
                StageEnd::Exit(c) => {
                    log.warning(&format!("after_script failed with exit code {c}"));
                    if strict && !state.failed() {
                        state = State::Failed(FailureReason::ScriptFailure, Some(c));
                    }
                }
                StageEnd::System(e) => log.warning(&format!("after_script failed: {e}")),
            }
        }

        let finished = !matches!(state, State::Canceled | State::Aborted);
        // archive_cache: the seam for the cache issue.
        if finished && let Some(cache) = &self.cache {
            let failed = state.failed();
            let name = if failed {
                "archive_cache_on_failure"
            } else {
                "archive_cache"
            };
            log.section_start(name, "Saving cache", false);
            let ctx = StageContext {
                job,
                runner,
                env,
                vars: &vars,
                log,
                cancel: guards.abort.clone(),
            };
            if let Err(e) = cache.archive(&ctx, failed).await {
                log.warning(&format!("saving the cache failed: {e}"));
            }
            log.section_end(name);
        }

        // Artifacts, honouring `when`.
        if finished {
            let failed = state.failed();
            let wanted: Vec<&Artifact> = job
                .artifacts
                .iter()
                .filter(|a| when_matches(&a.when, failed))
                .collect();
            if !wanted.is_empty() {
                let (name, heading) = if failed {
                    (
                        "upload_artifacts_on_failure",
                        "Uploading artifacts for failed job",
                    )
                } else {
                    (
                        "upload_artifacts_on_success",
                        "Uploading artifacts for successful job",
                    )
                };
                log.section_start(name, heading, false);
                let after_guards = Guards {
                    abort: guards.abort.clone(),
                    graceful: None,
                    deadline: Instant::now() + DEFAULT_AFTER_SCRIPT_TIMEOUT,
                };
                for a in wanted {
                    if let Err(msg) = self
                        .upload_artifact(job, a, env, &vars, &paths, log, &after_guards)
                        .await
                    {
                        log.error(&msg);
                        if !state.failed() {
                            state = State::Failed(FailureReason::UnknownFailure, None);
                        }
                    }
                }
                log.section_end(name);
            }
        }

        if !file_vars.is_empty() && state != State::Aborted {
            log.section_start(
                "cleanup_file_variables",
                "Cleaning up project directory and file based variables",
                true,
            );
        }
        if !file_vars.is_empty() {
            let tmp = host.tmp_dir.clone();
            let names = file_vars.clone();
            // Through the tmp dir's handle; already gone is fine, teardown removes the whole
            // tmp dir anyway.
            let _ = tokio::task::spawn_blocking(move || {
                if let Ok(dir) = Dir::open_job_dir(&tmp) {
                    for n in names {
                        let _ = dir.unlink(Path::new(&n));
                    }
                }
            })
            .await;
        }
        if !file_vars.is_empty() && state != State::Aborted {
            log.section_end("cleanup_file_variables");
        }

        match state {
            State::Running => JobOutcome::Success,
            State::Failed(reason, exit_code) => JobOutcome::Failed { reason, exit_code },
            State::Canceled | State::Aborted => JobOutcome::Canceled,
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn get_sources(
        &self,
        job: &JobResponse,
        runner: &RunnerConfig,
        log: &Arc<JobLog>,
        guards: &Guards,
        env: &dyn JobEnvironment,
        vars: &Variables,
        paths: &JobPaths,
    ) -> StageEnd {
        if let Some(tree) = &self.local_tree {
            log.line(&format!(
                "Copying the local working tree {} to {}",
                tree.root.display(),
                paths.project_dir.display()
            ));
            let tree = tree.clone();
            let dest = paths.project_dir.clone();
            return match tokio::task::spawn_blocking(move || sources::copy_local_tree(&tree, &dest))
                .await
            {
                Ok(Ok(n)) => {
                    log.line(&format!("Copied {n} files"));
                    StageEnd::Ok
                }
                Ok(Err(e)) => StageEnd::System(format!("copying the working tree: {e}")),
                Err(e) => StageEnd::System(format!("copying the working tree: {e}")),
            };
        }
        let strategy = match GitStrategy::resolve(vars.get("GIT_STRATEGY"), job.allow_git_fetch) {
            Ok(s) => s,
            Err(e) => return StageEnd::System(e),
        };
        let mut pre = Vec::new();
        if let Some(p) = &runner.pre_get_sources_script {
            pre.extend(config_commands(p));
        }
        let mut post = Vec::new();
        for h in &job.hooks {
            match h.name.as_str() {
                "pre_get_sources_script" => pre.extend(h.script.iter().cloned()),
                "post_get_sources_script" => post.extend(h.script.iter().cloned()),
                other => log.warning(&format!("ignoring unknown hook {other:?}")),
            }
        }
        let s = sources::git_script(
            job,
            vars,
            strategy,
            &paths.project_dir,
            &paths.tmp_dir,
            &pre,
            &post,
        );
        for w in &s.warnings {
            log.warning(w);
        }
        let mut env_vars = export_env(vars);
        env_vars.extend(s.env);
        self.run_stage(env, log, guards, Role::Helper, s.script, env_vars)
            .await
    }

    async fn download_dependency(
        &self,
        job: &JobResponse,
        dep: &crate::gitlab::types::Dependency,
        paths: &JobPaths,
        log: &JobLog,
    ) -> Result<(), String> {
        log.line(&format!(
            "Downloading artifacts for {} ({})...",
            dep.name, dep.id
        ));
        // Downloaded into the runner's own staging dir, not the job's tmp dir (finding C1),
        // and extracted from that same descriptor.
        let root = self.staging_root.clone();
        let job_id = job.id;
        let staged = tokio::task::spawn_blocking(move || {
            let staging = Staging::create(&root, job_id)?;
            let file = staging.create_file("dependency.zip")?;
            Ok::<_, StagingError>((staging, file))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("downloading artifacts of {}: {e}", dep.name))?;
        let (staging, file) = staged;
        let me = job_ref(job);
        self.artifacts
            .download(&me, dep, &file)
            .await
            .map_err(|e| format!("downloading artifacts of {} ({}): {e}", dep.name, dep.id))?;
        let project = paths.project_dir.clone();
        let res = tokio::task::spawn_blocking(move || {
            let dest = Dir::open_job_dir(&project).map_err(|e| artifacts::ArtifactError::Io {
                context: "open the project dir".into(),
                source: std::io::Error::other(e),
            })?;
            let res = artifacts::extract_zip(&file, &dest);
            drop(staging);
            res
        })
        .await
        .map_err(|e| e.to_string())?;
        let (n, warnings) =
            res.map_err(|e| format!("extracting artifacts of {}: {e}", dep.name))?;
        for w in warnings {
            log.warning(&w);
        }
        log.line(&format!("Extracted {n} entries"));
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn upload_artifact(
        &self,
        job: &JobResponse,
        artifact: &Artifact,
        env: &dyn JobEnvironment,
        vars: &Variables,
        paths: &JobPaths,
        log: &Arc<JobLog>,
        guards: &Guards,
    ) -> Result<(), String> {
        let host = env.host_dirs().clone();
        let file_name = artifacts::archive_file_name(artifact);
        let untracked = if artifact.untracked {
            self.untracked_files(env, vars, paths, log, guards).await?
        } else {
            Vec::new()
        };
        let patterns: Vec<String> = artifact.paths.iter().map(|p| vars.expand(p)).collect();
        let exclude: Vec<String> = artifact.exclude.iter().map(|p| vars.expand(p)).collect();
        let a = artifact.clone();
        let project = paths.project_dir.clone();
        let host_project = host.project_dir.clone();
        let root = self.staging_root.clone();
        let job_id = job.id;
        let staged_name = format!("upload-{file_name}");
        // Every read of the project goes through its handle; the archive is created in the
        // runner's staging dir (O_CREAT|O_EXCL|O_NOFOLLOW) and uploaded from the same
        // descriptor (findings C1, H1).
        let built = tokio::task::spawn_blocking(move || {
            let dir = Dir::open_job_dir(&host_project).map_err(|e| format!("{e}"))?;
            let c = artifacts::collect(&project, &dir, &patterns, &exclude, &untracked)
                .map_err(|e| e.to_string())?;
            if c.files.is_empty() {
                return Ok((None, artifacts::Built::default(), c.warnings));
            }
            let staging = Staging::create(&root, job_id).map_err(|e| e.to_string())?;
            let file = staging
                .create_file(&staged_name)
                .map_err(|e| e.to_string())?;
            let built =
                artifacts::build_archive(&a, &dir, &c.files, &file).map_err(|e| e.to_string())?;
            Ok::<_, String>((Some((staging, file)), built, c.warnings))
        })
        .await
        .map_err(|e| e.to_string())?;
        let (staged, built, warnings) = built.map_err(|e| format!("collecting artifacts: {e}"))?;
        for w in warnings.iter().chain(&built.warnings) {
            log.warning(w);
        }
        let n = built.entries;
        let Some((staging, file)) = staged.filter(|_| n > 0) else {
            log.warning(&format!("{file_name}: no files to upload"));
            return Ok(());
        };
        log.line(&format!("Uploading {file_name} ({n} entries)..."));
        let res = self
            .artifacts
            .upload(&job_ref(job), artifact, &file, &file_name)
            .await;
        drop(file);
        drop(staging);
        res.map_err(|e| format!("uploading {file_name}: {e}"))?;
        log.line(&format!("Uploaded {file_name}"));
        Ok(())
    }

    /// Lists untracked files with git in the helper; a directory that is not a git repository
    /// counts as all untracked.
    async fn untracked_files(
        &self,
        env: &dyn JobEnvironment,
        vars: &Variables,
        paths: &JobPaths,
        log: &Arc<JobLog>,
        guards: &Guards,
    ) -> Result<Vec<PathBuf>, String> {
        let list = paths.tmp_dir.join("untracked.list");
        let dir = sh_quote(&paths.project_dir.to_string_lossy());
        let l = sh_quote(&list.to_string_lossy());
        let script = format!(
            "set -e\nif git -c safe.directory='*' -C {dir} rev-parse --git-dir >/dev/null 2>&1; then\n  git -c safe.directory='*' -C {dir} ls-files -o --exclude-standard -z > {l}\nelse\n  printf 'NOT-A-GIT-REPOSITORY' > {l}\nfi\n"
        );
        match self
            .run_stage(env, log, guards, Role::Helper, script, export_env(vars))
            .await
        {
            StageEnd::Ok => {}
            StageEnd::Exit(c) => return Err(format!("listing untracked files exited with {c}")),
            StageEnd::Stopped(_) => return Err("listing untracked files was stopped".into()),
            StageEnd::System(e) => return Err(format!("listing untracked files: {e}")),
        }
        let data = read_untracked_list(&env.host_dirs().tmp_dir).await?;
        if data == b"NOT-A-GIT-REPOSITORY" {
            return Ok(vec![PathBuf::from(".")]);
        }
        Ok(data
            .split(|b| *b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| PathBuf::from(String::from_utf8_lossy(s).into_owned()))
            .collect())
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

fn job_ref(job: &JobResponse) -> JobRef {
    JobRef {
        id: job.id,
        name: job.job_info.name.clone(),
        token: job.token.clone(),
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

fn stop_outcome(log: &JobLog, state: State) -> JobOutcome {
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
fn apply_end(log: &JobLog, state: &mut State, end: StageEnd, allow_failure: bool, what: &str) {
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
fn export_env(vars: &Variables) -> Vec<(String, String)> {
    vars.effective()
        .into_iter()
        .filter(|v| vars::is_valid_name(&v.key))
        .map(|v| (v.key.clone(), v.value.clone()))
        .collect()
}

/// Largest `untracked.list` the runner reads (git's NUL-separated list of untracked files).
const MAX_UNTRACKED_LIST: u64 = 64 << 20;

/// The helper writes this list into the job's tmp dir (`ls-files -o -z`).
const UNTRACKED_LIST: &str = "untracked.list";

/// Reads and removes `<tmp>/untracked.list` through the tmp dir's handle (finding M2): never
/// through a link (`untracked.list -> /dev/zero` is refused, not read forever), never blocking
/// on a FIFO, at most [`MAX_UNTRACKED_LIST`] bytes. `tmp` is the runner-visible tmp dir.
async fn read_untracked_list(tmp: &Path) -> Result<Vec<u8>, String> {
    read_helper_list(tmp, UNTRACKED_LIST).await
}

/// Reads and removes the file `name` a helper script wrote into the job's tmp dir (`tmp`, the
/// runner-visible real directory): through the directory's handle, never through a link,
/// never blocking on a FIFO, at most [`MAX_UNTRACKED_LIST`] bytes.
pub(crate) async fn read_helper_list(tmp: &Path, name: &str) -> Result<Vec<u8>, String> {
    let tmp = tmp.to_path_buf();
    let name = PathBuf::from(name);
    tokio::task::spawn_blocking(move || {
        let dir =
            Dir::open_job_dir(&tmp).map_err(|e| format!("reading the untracked list: {e}"))?;
        let name = name.as_path();
        let data = dir.read_bounded(name, MAX_UNTRACKED_LIST);
        // Already gone is fine.
        let _ = dir.unlink(name);
        data.map_err(|e| format!("reading the untracked list: {e}"))
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Writes file variables as 0600 files `<KEY>` in the job's tmp dir and points the variable at
/// the file as jobs see it (`<tmp>/<KEY>`). Each file is created through the tmp dir's handle
/// (`host_tmp`, the runner-visible directory) with `O_CREAT|O_EXCL|O_NOFOLLOW|O_NONBLOCK`, so
/// nothing a job planted (a link, a FIFO) is ever opened. Returns the names written.
async fn write_file_variables(
    vars: &mut Variables,
    tmp: &Path,
    host_tmp: &Path,
) -> Result<Vec<String>, String> {
    let files: Vec<_> = vars
        .effective()
        .into_iter()
        .filter(|v| v.file && vars::is_valid_name(&v.key))
        .cloned()
        .collect();
    if files.is_empty() {
        return Ok(Vec::new());
    }
    let host_tmp = host_tmp.to_path_buf();
    let contents: Vec<(String, crate::secret::Secret)> = files
        .iter()
        .map(|v| (v.key.clone(), crate::secret::Secret::new(v.value.clone())))
        .collect();
    tokio::task::spawn_blocking(move || {
        let dir = Dir::open_job_dir(&host_tmp).map_err(|e| e.to_string())?;
        for (key, value) in &contents {
            let name = Path::new(key);
            // A leftover of an earlier write of the same job (or anything the job put there)
            // goes first: only a file we create ourselves is written.
            let _ = dir.remove(name);
            let mut f = dir.create_new(name, 0o600).map_err(|e| e.to_string())?;
            std::io::Write::write_all(&mut f, value.expose().as_bytes())
                .map_err(|e| format!("write {}: {e}", dir.shown().join(key).display()))?;
        }
        Ok::<_, String>(())
    })
    .await
    .map_err(|e| e.to_string())??;
    let mut written = Vec::new();
    for mut v in files {
        v.value = tmp.join(&v.key).to_string_lossy().into_owned();
        v.file = false;
        written.push(v.key.clone());
        vars.push_var(v);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gitlab::types::{JobVariable, Step};
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

    #[test]
    fn validation() {
        assert!(validate(&job()).is_ok());
        let mut j = job();
        j.id = 0;
        assert!(validate(&j).is_err());
        let mut j = job();
        j.token = Secret::default();
        assert!(validate(&j).is_err());
        let mut j = job();
        j.steps.clear();
        assert!(validate(&j).is_err());
    }

    #[test]
    fn spec_images_allowlists_and_aliases() {
        let mut runner = RunnerConfig::default();
        runner.docker.allowed_images = vec!["isolated-runner/*".into()];
        runner.docker.allowed_services = vec!["registry.example.com/**".into()];
        let mut j = job();
        j.variables.push(JobVariable {
            key: "TAG".into(),
            value: "test".into(),
            ..Default::default()
        });
        j.image = Some(Image {
            name: "isolated-runner/job:$TAG".into(),
            ..Default::default()
        });
        j.services = vec![Image {
            name: "registry.example.com/grp/postgres:15".into(),
            alias: "db, pg".into(),
            ..Default::default()
        }];
        let vars = build_variables(&j, &runner, None, &[], DEFAULT_JOB_TIMEOUT);
        let spec = build_spec(&j, &runner, "r1", &vars, DEFAULT_JOB_TIMEOUT).expect("spec");
        assert_eq!(spec.build_image.name, "isolated-runner/job:test");
        assert_eq!(
            spec.services[0].aliases,
            vec!["db", "pg", "grp__postgres", "grp-postgres"]
        );
        j.image = Some(Image {
            name: "evil/image".into(),
            ..Default::default()
        });
        assert!(build_spec(&j, &runner, "r1", &vars, DEFAULT_JOB_TIMEOUT).is_err());
        j.image = None;
        let spec = build_spec(&j, &runner, "r1", &vars, DEFAULT_JOB_TIMEOUT).expect("spec");
        assert_eq!(spec.build_image.name, runner.docker.image);
    }

    /// The clone host goes into the spec without the job token, and only when the config names
    /// it (the GitLab URL or `clone_url`).
    #[test]
    fn spec_carries_the_clone_host_and_port_only() {
        let mut runner = RunnerConfig {
            url: url::Url::parse("http://git.example.test:8929/").unwrap(),
            ..Default::default()
        };
        let mut j = job();
        let vars = build_variables(&j, &runner, None, &[], DEFAULT_JOB_TIMEOUT);
        j.git_info.repo_url =
            Secret::new("http://gitlab-ci-token:glcbt-abc123@git.example.test:8929/g/p.git");
        let spec = build_spec(&j, &runner, "r1", &vars, DEFAULT_JOB_TIMEOUT).expect("spec");
        assert_eq!(
            spec.repo_endpoint,
            Some(isolation::HostPort {
                host: "git.example.test".into(),
                port: 8929
            })
        );
        assert!(!format!("{spec:?}").contains("glcbt-abc123"));
        j.git_info.repo_url = Secret::new("https://gitlab-ci-token:t@[2001:db8::7]/g/p.git");
        let err = build_spec(&j, &runner, "r1", &vars, DEFAULT_JOB_TIMEOUT).unwrap_err();
        assert!(err.contains("[2001:db8::7]:443"), "{err}");
        runner.clone_url = Some(url::Url::parse("https://[2001:db8::7]/").unwrap());
        let spec = build_spec(&j, &runner, "r1", &vars, DEFAULT_JOB_TIMEOUT).expect("spec");
        assert_eq!(
            spec.repo_endpoint,
            Some(isolation::HostPort {
                host: "2001:db8::7".into(),
                port: 443
            })
        );
        for none in [
            "",
            "not a url",
            "file:///srv/repo.git",
            "x-custom://h/p.git",
        ] {
            j.git_info.repo_url = Secret::new(none);
            let spec = build_spec(&j, &runner, "r1", &vars, DEFAULT_JOB_TIMEOUT).expect("spec");
            assert_eq!(spec.repo_endpoint, None, "{none:?}");
        }
    }

    /// H2: a job on an unprotected branch sets `CI_COMMIT_REF_PROTECTED: "true"` in its yaml
    /// variables (sent after the predefined `false`); without `git_info.protected` it stays
    /// unprotected everywhere the flag is used (spec, cache dir, warm volume).
    #[test]
    fn protected_flag_ignores_job_overrides() {
        let runner = RunnerConfig::default();
        let mut j = job();
        j.git_info.protected = None;
        for value in ["false", "true"] {
            j.variables.push(JobVariable {
                key: "CI_COMMIT_REF_PROTECTED".into(),
                value: value.into(),
                public: true,
                ..Default::default()
            });
        }
        let vars = build_variables(&j, &runner, None, &[], DEFAULT_JOB_TIMEOUT);
        assert_eq!(vars.get("CI_COMMIT_REF_PROTECTED"), Some("true"));
        let spec = build_spec(&j, &runner, "r1", &vars, DEFAULT_JOB_TIMEOUT).expect("spec");
        assert!(!spec.protected);
        assert!(!trust::is_protected(&j));
        let cache = crate::cache::project_dir(Path::new("/cache"), 7, spec.protected);
        assert!(cache.ends_with("unprotected"), "{cache:?}");
        let volume = isolation::data_root::volume_name("r1", "gitlab-a", 7, spec.protected);
        assert!(volume.ends_with("-unprotected"), "{volume}");
        // GitLab's own field decides, both ways.
        j.git_info.protected = Some(true);
        let spec = build_spec(&j, &runner, "r1", &vars, DEFAULT_JOB_TIMEOUT).expect("spec");
        assert!(spec.protected);
        j.git_info.protected = Some(false);
        let spec = build_spec(&j, &runner, "r1", &vars, DEFAULT_JOB_TIMEOUT).expect("spec");
        assert!(!spec.protected);
    }

    /// L2: ids in the warm pool's slot range would share a slot's directories, labels and
    /// chain; they are refused by the payload check.
    #[test]
    fn slot_range_ids_are_refused() {
        let base = isolation::pool::SLOT_ID_BASE;
        for id in [base, base + 1, u64::MAX] {
            let mut j = job();
            j.id = id;
            let err = validate(&j).unwrap_err();
            assert!(err.contains("reserves"), "{id}: {err}");
        }
        let mut j = job();
        j.id = base - 1;
        assert!(validate(&j).is_ok());
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

    #[test]
    fn variables_order_and_masked_service_env() {
        let runner = RunnerConfig {
            environment: vec![("FOO".into(), "config".into())],
            ..Default::default()
        };
        let mut j = job();
        j.variables = vec![
            JobVariable {
                key: "FOO".into(),
                value: "job".into(),
                public: true,
                ..Default::default()
            },
            JobVariable {
                key: "SECRET".into(),
                value: "s3cr3t-value".into(),
                masked: true,
                ..Default::default()
            },
        ];
        let paths = JobPaths {
            project_dir: "/b/gitlab-job-5".into(),
            tmp_dir: "/b/gitlab-job-5.tmp".into(),
        };
        let v = build_variables(
            &j,
            &runner,
            Some(&paths),
            &[("DOCKER_HOST".into(), "tcp://x:2376".into())],
            Duration::from_secs(60),
        );
        assert_eq!(v.get("FOO"), Some("job"));
        assert_eq!(v.get("CI_PROJECT_DIR"), Some("/b/gitlab-job-5"));
        assert_eq!(v.get("CI_BUILDS_DIR"), Some("/b"));
        assert_eq!(v.get("TMPDIR"), Some("/b/gitlab-job-5.tmp"));
        assert_eq!(v.get("CI_JOB_TIMEOUT"), Some("60"));
        assert_eq!(v.get("DOCKER_HOST"), Some("tcp://x:2376"));
        let spec = build_spec(&j, &runner, "r", &v, DEFAULT_JOB_TIMEOUT).expect("spec");
        assert!(!spec.service_env.iter().any(|(k, _)| k == "SECRET"));
        assert!(spec.service_env.iter().any(|(k, _)| k == "FOO"));
        assert!(masked_values(&j).contains(&"s3cr3t-value".to_string()));
    }

    /// Finding M2: `untracked.list` is read through the tmp dir's handle: a link (to a host
    /// file, to `/dev/zero`) or a FIFO is refused, not followed or blocked on, and the size is
    /// bounded.
    #[tokio::test]
    async fn untracked_list_is_bounded_and_never_read_through_links() {
        let t = tempfile::tempdir().expect("tempdir");
        let tmp = t.path().join("gitlab-job-3.tmp");
        std::fs::create_dir(&tmp).expect("mkdir");
        let list = tmp.join(UNTRACKED_LIST);
        let canary = t.path().join("canary");
        std::fs::write(&canary, b"a\0b\0").expect("write");
        let guard = |f| tokio::time::timeout(Duration::from_secs(60), f);

        std::os::unix::fs::symlink(&canary, &list).expect("link");
        assert!(
            guard(read_untracked_list(&tmp))
                .await
                .expect("no hang")
                .is_err()
        );
        assert_eq!(std::fs::read(&canary).expect("canary"), b"a\0b\0");

        std::fs::remove_file(&list).ok();
        std::os::unix::fs::symlink("/dev/zero", &list).expect("link");
        assert!(
            guard(read_untracked_list(&tmp))
                .await
                .expect("no hang")
                .is_err()
        );

        std::fs::remove_file(&list).ok();
        nix::unistd::mkfifo(&list, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .expect("mkfifo");
        assert!(
            guard(read_untracked_list(&tmp))
                .await
                .expect("no hang")
                .is_err()
        );

        std::fs::remove_file(&list).ok();
        std::fs::File::create(&list)
            .expect("create")
            .set_len(MAX_UNTRACKED_LIST + 1)
            .expect("sparse");
        let e = read_untracked_list(&tmp).await.expect_err("too large");
        assert!(e.contains("larger than"), "{e}");

        std::fs::write(&list, b"x\0y/z\0").expect("write");
        assert_eq!(read_untracked_list(&tmp).await.expect("read"), b"x\0y/z\0");
        assert!(!list.exists(), "removed after reading");

        // The tmp dir itself swapped for a link is refused too.
        let moved = t.path().join("moved");
        std::fs::rename(&tmp, &moved).expect("rename");
        std::os::unix::fs::symlink(&moved, &tmp).expect("link");
        std::fs::write(moved.join(UNTRACKED_LIST), b"x").expect("write");
        assert!(read_untracked_list(&tmp).await.is_err());
    }

    /// File variables are created through the tmp dir's handle: a link planted under a
    /// variable's name is replaced, never written through.
    #[tokio::test]
    async fn file_variables_never_write_through_links() {
        let t = tempfile::tempdir().expect("tempdir");
        let tmp = t.path().join("gitlab-job-3.tmp");
        std::fs::create_dir(&tmp).expect("mkdir");
        let canary = t.path().join("canary");
        std::fs::write(&canary, b"keep").expect("write");
        std::os::unix::fs::symlink(&canary, tmp.join("CFG")).expect("link");
        let mut vars = Variables::new();
        vars.push_var(crate::gitlab::types::JobVariable {
            key: "CFG".into(),
            value: "secret".into(),
            file: true,
            ..Default::default()
        });
        let names = write_file_variables(&mut vars, Path::new("/b/gitlab-job-3.tmp"), &tmp)
            .await
            .expect("write");
        assert_eq!(names, vec!["CFG".to_string()]);
        assert_eq!(std::fs::read(&canary).expect("canary"), b"keep");
        assert_eq!(std::fs::read(tmp.join("CFG")).expect("file"), b"secret");
        assert_eq!(vars.get("CFG"), Some("/b/gitlab-job-3.tmp/CFG"));
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

    /// L3: the sidecar's image (and a separate helper image) cannot be a job's image or
    /// service through an empty allow-list; only an explicit allow-list entry admits it.
    #[test]
    fn runner_images_are_refused_unless_allowed() {
        let mut runner = RunnerConfig::default();
        runner.docker.helper_image = Some("registry.example/helper:1".into());
        let mut j = job();
        let vars = build_variables(&j, &runner, None, &[], DEFAULT_JOB_TIMEOUT);
        let sidecar = runner.docker.isolation.sidecar_image.clone();
        let image = |n: &str| Image {
            name: n.into(),
            ..Default::default()
        };
        for own in [sidecar.as_str(), "registry.example/helper:1"] {
            j.image = Some(image(own));
            let err = build_spec(&j, &runner, "r1", &vars, DEFAULT_JOB_TIMEOUT).expect_err(own);
            assert!(err.contains("this runner's own images"), "{err}");
            j.image = None;
            j.services = vec![image(own)];
            let err = build_spec(&j, &runner, "r1", &vars, DEFAULT_JOB_TIMEOUT).expect_err(own);
            assert!(err.contains("allowed_services"), "{err}");
            j.services.clear();
        }
        // The default job image stays usable by name, and an explicit entry admits the rest.
        j.image = Some(image(&runner.docker.image.clone()));
        assert!(build_spec(&j, &runner, "r1", &vars, DEFAULT_JOB_TIMEOUT).is_ok());
        runner.docker.allowed_images = vec!["isolated-runner/*".into()];
        j.image = Some(image(&sidecar));
        assert!(build_spec(&j, &runner, "r1", &vars, DEFAULT_JOB_TIMEOUT).is_ok());
    }

    /// H4: more services than `services_limit` fail the job in `build_spec`, which runs before
    /// `prepare`, so before any container exists.
    #[test]
    fn too_many_services_are_refused() {
        let mut runner = RunnerConfig::default();
        let mut j = job();
        let vars = build_variables(&j, &runner, None, &[], DEFAULT_JOB_TIMEOUT);
        let svc = |i: usize| Image {
            name: format!("isolated-runner/busybox:test{i}"),
            ..Default::default()
        };
        let default_max = crate::isolation::limits::DEFAULT_SERVICES_LIMIT;
        j.services = (0..default_max).map(svc).collect();
        assert!(build_spec(&j, &runner, "r1", &vars, DEFAULT_JOB_TIMEOUT).is_ok());
        j.services.push(svc(default_max));
        let err = build_spec(&j, &runner, "r1", &vars, DEFAULT_JOB_TIMEOUT).expect_err("refused");
        assert!(
            err.contains(&format!("asks for {} services", default_max + 1))
                && err.contains("services_limit"),
            "{err}"
        );
        runner.docker.services_limit = Some(0);
        j.services.truncate(1);
        assert!(build_spec(&j, &runner, "r1", &vars, DEFAULT_JOB_TIMEOUT).is_err());
        j.services.clear();
        assert!(build_spec(&j, &runner, "r1", &vars, DEFAULT_JOB_TIMEOUT).is_ok());
        // `-1` in the config: no limit.
        runner.docker.services_limit = None;
        j.services = (0..100).map(svc).collect();
        assert!(build_spec(&j, &runner, "r1", &vars, DEFAULT_JOB_TIMEOUT).is_ok());
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
