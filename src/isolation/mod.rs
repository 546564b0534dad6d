//! How a job gets its containers and its Docker daemon.
//!
//! [`Isolation`] is implemented by the `dind` backend (a per-job sidecar daemon, the default) and
//! the `shared-socket` backend (the host socket in the job, the classic setup and the bench
//! baseline). The job pipeline talks only to these traits.

pub mod data_root;
pub mod dind;
pub mod egress;
pub mod golden;
pub mod images;
pub mod inner_policy;
pub mod limits;
pub mod mirror;
mod naming;
mod network;
pub mod pool;
mod profile;
// The reaper is the sweeper's start-up policy and lives with it in cleanup/; this keeps the old
// path `isolation::reaper` working for callers not yet moved.
pub use crate::cleanup::reaper;
pub mod registry_ca;
pub mod resolve;
pub mod root_store;
pub mod rootless;
mod sandbox_hint;
pub mod services;
pub mod shared_socket;
pub mod shell;
mod sidecar;
mod sidecar_links;
mod sidecar_proc;
mod state;

pub use services::{ServiceLog, ServiceWarning};
pub use state::{CLIENT_CERT_PATH, JOB_CAP_DROP};

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What a backend needs to build one job's environment.
#[derive(Debug, Clone)]
pub struct EnvironmentSpec {
    /// Short id of this runner (labels, names).
    pub runner_id: String,
    /// Numeric job id (checked by the type).
    pub job_id: u64,
    /// GitLab project id (warm data roots are keyed by it).
    pub project_id: u64,
    /// Whether the ref is protected (warm data roots never mix protection levels).
    pub protected: bool,
    /// Job timeout; certificates and labels carry a deadline derived from it.
    pub timeout: Duration,
    /// The job's image, already resolved against config and allow-lists.
    pub build_image: ContainerImage,
    /// Image for git, artifacts and cache work.
    pub helper_image: String,
    /// `services:` of the job, already checked against `allowed_services`.
    pub services: Vec<ServiceSpec>,
    /// Variables for service containers (public ones only).
    pub service_env: Vec<(String, String)>,
    /// Host and port of the job's clone URL (`git_info.repo_url`, never its credentials): it
    /// may differ from the runner's GitLab URL (GitLab's `clone_url`), and the job's firewall
    /// lets it through like the GitLab URL.
    pub repo_endpoint: Option<HostPort>,
    /// `GIT_CLONE_PATH`, already checked to lie below `builds_dir` and outside the runner's own
    /// `gitlab-job-*` entries: where the job's containers and its daemon see the project
    /// directory instead of `<builds_dir>/gitlab-job-<id>` (`None`: the usual place).
    pub clone_path: Option<std::path::PathBuf>,
}

/// The hosts and ports a job may clone from: the GitLab URL's and the config's `clone_url`'s.
pub fn clone_hosts(runner: &crate::config::RunnerConfig) -> Vec<HostPort> {
    let mut out: Vec<HostPort> = HostPort::from_url(&runner.url).into_iter().collect();
    if let Some(c) = runner.clone_url.as_ref().and_then(HostPort::from_url)
        && !out.contains(&c)
    {
        out.push(c);
    }
    out
}

/// A host name or address and a port, as taken from a URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// Name or address, without IPv6 brackets.
    pub host: String,
    /// Port (the scheme's default when the URL names none).
    pub port: u16,
}

impl HostPort {
    /// The host and port of `url`; `None` without a host or a known port. Credentials and
    /// path are not kept.
    pub fn from_url(url: &url::Url) -> Option<HostPort> {
        let host = url
            .host_str()?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if host.is_empty() {
            return None;
        }
        Some(HostPort {
            host,
            port: url.port_or_known_default()?,
        })
    }
}

/// An image with an optional entrypoint override.
#[derive(Debug, Clone, Default)]
pub struct ContainerImage {
    /// Image reference.
    pub name: String,
    /// Entrypoint override, when the job sets one.
    pub entrypoint: Option<Vec<String>>,
}

/// A service container on the job's network.
#[derive(Debug, Clone, Default)]
pub struct ServiceSpec {
    /// Image and entrypoint.
    pub image: ContainerImage,
    /// CMD override.
    pub command: Vec<String>,
    /// Host names on the job network.
    pub aliases: Vec<String>,
    /// Service-only variables.
    pub env: Vec<(String, String)>,
}

/// Where a job's files are (defined with the path rules that make them, in `paths`).
pub use crate::paths::JobPaths;

/// Which container a script runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The job's image: `script`, `after_script`, user hooks.
    Build,
    /// The helper image: git, artifacts, cache.
    Helper,
}

/// One script to run.
#[derive(Debug, Clone)]
pub struct ScriptRequest {
    /// Container to run in.
    pub role: Role,
    /// A complete POSIX sh script (the pipeline generates it); run with bash when the image
    /// has it, else sh ([`shell`]).
    pub script: String,
    /// Environment of the script; the backend adds its own (`DOCKER_HOST`, …).
    pub env: Vec<(String, String)>,
}

/// Who a build script runs as, when not simply the image's `USER` (non-root images, `image:
/// docker: user`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScriptUser {
    /// The container's `--user` (`uid[:gid]` or a name); `None`: the image's `USER`.
    pub user: Option<String>,
    /// Numeric owner of the script file, so that a non-root user can read it (it stays 0600).
    pub owner: Option<(u32, u32)>,
}

// Defined in trace/, below isolation, so the job log can be a sink without trace/ importing the
// backends; re-exported here, where backends and tests have always found it.
pub use crate::trace::OutputSink;

/// Builds job environments.
#[async_trait::async_trait]
pub trait Isolation: Send + Sync {
    /// `dind` or `shared-socket`.
    fn mode(&self) -> crate::config::IsolationMode;

    /// Creates everything the job needs before its first script: directories, certificates,
    /// network, sidecar (ready over mTLS), services, preloaded images. On error, whatever was
    /// created is already torn down. Progress lines go to `out`.
    async fn prepare(
        &self,
        spec: &EnvironmentSpec,
        out: Arc<dyn OutputSink>,
        cancel: CancellationToken,
    ) -> Result<Box<dyn JobEnvironment>, Error>;

    /// Gets the job's images onto the daemon its containers run on, as `plan` says
    /// ([`images`]); called before [`Isolation::prepare`].
    ///
    /// This and every other method of the trait has no default: a wrapper (metrics, the
    /// bench's recorder, pulling) must pass each one on, and the compiler now says so when a
    /// new one is added (a default once made the metrics wrapper of `runner run` drop every
    /// pull, the image's user and the wait for services).
    async fn ensure_images(
        &self,
        plan: &images::PullPlan,
        out: Arc<dyn OutputSink>,
    ) -> Result<(), Error>;

    /// Starts keeping environments ready ahead of jobs for `runner_id`, where the backend has
    /// a warm pool (`warm_pool` in config); returns at once, the work runs in the background.
    /// `prepare` also starts it, so calling this only saves the first job's cold start.
    async fn warm_up(&self, runner_id: &str);

    /// Job ids labelling the objects of environments made ahead of jobs and not yet given to
    /// one (idle or being built). Their objects are not leftovers.
    fn standby_ids(&self) -> Vec<u64>;

    /// Ids labelling job networks the backend keeps for later slots (`pool.rs`, "Kept
    /// networks"): waiting, or under a slot not yet given to a job. Such a network keeps the
    /// labels of the slot that made it, so these ids are not among [`Isolation::standby_ids`].
    fn kept_ids(&self) -> Vec<u64>;

    /// Bounds how many environments are made ahead of jobs (`concurrent`/`limit`: more could
    /// never be in use at once). Backends without a warm pool ignore it.
    fn set_job_cap(&self, cap: usize);

    /// The number of environments the backend aims to keep ready now (`warm_pool`, or what
    /// `warm_pool = "auto"` derived from recent demand); `None` without a warm pool.
    fn pool_target(&self) -> Option<usize>;

    /// Removes environments made ahead of jobs and waits for the backend's background work.
    /// Call once, when the process stops taking jobs; `prepare` still works afterwards but
    /// makes everything per job.
    async fn shutdown(&self) -> TeardownReport;
}

/// A prepared job environment. `teardown` must be called on every path.
#[async_trait::async_trait]
pub trait JobEnvironment: Send + Sync {
    /// The job's paths as containers see them (`CI_PROJECT_DIR`, `TMPDIR`).
    fn paths(&self) -> &JobPaths;

    /// The runner-visible real directories of the job; each is reached from `builds_dir` by
    /// one no-follow step; every runner-side file operation opens its handle from these
    /// ([`crate::paths::Dir::open_job_dir`]). The same as [`JobEnvironment::paths`] unless the
    /// backend keeps the real directories elsewhere (a warm-pool slot).
    fn host_dirs(&self) -> &JobPaths;

    /// Variables the backend gives the job (`DOCKER_HOST`, `DOCKER_TLS_VERIFY`, `DOCKER_CERT_PATH`).
    fn job_env(&self) -> Vec<(String, String)>;

    /// Runs a script and returns its exit code. When `cancel` fires the script is killed and
    /// [`Error::Canceled`] returned. A dead sidecar is [`Error::SidecarDied`], not an exit code.
    async fn run_script(
        &self,
        req: ScriptRequest,
        out: Arc<dyn OutputSink>,
        cancel: CancellationToken,
    ) -> Result<i32, Error>;

    /// [`JobEnvironment::run_script`] as `user`.
    ///
    /// Like [`Isolation`]'s, this trait's methods have no defaults, so a wrapper cannot drop one.
    async fn run_script_as(
        &self,
        req: ScriptRequest,
        user: &ScriptUser,
        out: Arc<dyn OutputSink>,
        cancel: CancellationToken,
    ) -> Result<i32, Error>;

    /// The build image's `USER` (empty or missing: root); `None` when the backend cannot tell.
    async fn image_user(&self) -> Result<Option<String>, Error>;

    /// Waits up to `timeout` for every service's exposed TCP ports to accept a connection from
    /// the job's network; returns the services that did not come up (the job goes on, as in
    /// gitlab-runner). Returns early, with what it knows, when `cancel` fires.
    async fn wait_for_services(
        &self,
        timeout: Duration,
        cancel: CancellationToken,
    ) -> Vec<ServiceWarning>;

    /// The last lines of each service's log (`CI_DEBUG_SERVICES`).
    async fn service_logs(&self, lines: usize) -> Vec<ServiceLog>;

    /// Removes everything the job created, in a defined order, and reports what it removed.
    async fn teardown(self: Box<Self>) -> TeardownReport;

    /// What this environment made on the host, for the daemon's crash journal and metrics
    /// ([`EnvironmentResources::of_paths`] for one that made only the job's directories).
    fn resources(&self) -> EnvironmentResources;
}

/// What a prepared job environment created on the host. Recorded in the crash journal so a
/// restarted runner knows what to remove; everything here is also findable by label, this is
/// the exact list for the operator and for objects without labels (directories).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct EnvironmentResources {
    /// Runner id the objects are labelled with.
    pub runner_id: String,
    /// Labels every object of the job carries (`key=value`), as used for the label sweep.
    pub labels: Vec<String>,
    /// `CI_PROJECT_DIR`.
    pub project_dir: Option<PathBuf>,
    /// The job's scratch dir.
    pub tmp_dir: Option<PathBuf>,
    /// The per-job certificate dir.
    pub cert_dir: Option<PathBuf>,
    /// The job network.
    pub network: Option<String>,
    /// The job network's subnet.
    pub subnet: Option<String>,
    /// Host interface of the job bridge, when known.
    pub bridge_interface: Option<String>,
    /// Sidecar container id.
    pub sidecar: Option<String>,
    /// Sidecar data volume.
    pub volume: Option<String>,
    /// Service container ids.
    pub services: Vec<String>,
    /// Time from creating the sidecar to its first mTLS ping (metrics only, not journaled).
    #[serde(skip)]
    pub sidecar_ready: Option<Duration>,
}

impl EnvironmentResources {
    /// An environment that made only the job's directories.
    pub fn of_paths(paths: &JobPaths) -> EnvironmentResources {
        EnvironmentResources {
            project_dir: Some(paths.project_dir.clone()),
            tmp_dir: Some(paths.tmp_dir.clone()),
            ..EnvironmentResources::default()
        }
    }
}

/// What a teardown removed and what it could not.
#[derive(Debug, Default, Clone)]
pub struct TeardownReport {
    /// Objects removed (`container abc`, `network n`, `dir /builds/…`).
    pub removed: Vec<String>,
    /// Failures; each is also logged. The reaper retries these later.
    pub failures: Vec<String>,
}

/// Errors of the isolation backends.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The script was cancelled.
    #[error("canceled")]
    Canceled,
    /// The job's daemon stopped while the job ran.
    #[error("the job's docker daemon (sidecar {container}) stopped: {detail}")]
    SidecarDied {
        /// Sidecar container id or name.
        container: String,
        /// Exit state or last log line.
        detail: String,
    },
    /// The sidecar did not answer an mTLS `/_ping` in time.
    #[error(
        "the job's docker daemon was not ready after {waited:?}; last sidecar log lines:\n{last_logs}"
    )]
    NotReady {
        /// How long the runner waited.
        waited: Duration,
        /// Last lines of the sidecar log.
        last_logs: String,
    },
    /// An image is missing and may not be pulled.
    #[error("image {image} is not available: {detail}")]
    ImageUnavailable {
        /// Image reference.
        image: String,
        /// Why.
        detail: String,
    },
    /// The configured profile cannot run on this host.
    #[error("sidecar profile {profile} cannot run here: {detail}")]
    ProfileUnavailable {
        /// Profile name.
        profile: String,
        /// Why, with what to do.
        detail: String,
    },
    /// Anything else from Docker or the host.
    #[error("{context}: {detail}")]
    Other {
        /// What the runner was doing.
        context: String,
        /// The cause.
        detail: String,
    },
}

/// Where per-job certificate directories go when the caller does not say: the default state
/// directory. The daemon passes `Config::state_dir` through [`backend_for_in`].
pub const DEFAULT_STATE_DIR: &str = "/var/lib/isolated-runner";

/// The backend `runner` is configured for, connected to its host daemon
/// (`[runners.docker] host`, else `DOCKER_HOST`, else the default socket). Certificates go under
/// [`DEFAULT_STATE_DIR`].
pub async fn backend_for(
    runner: &crate::config::RunnerConfig,
) -> Result<Arc<dyn Isolation>, Error> {
    backend_for_in(runner, std::path::Path::new(DEFAULT_STATE_DIR)).await
}

/// Like [`backend_for`], with the runner's state directory for the per-job certificates.
pub async fn backend_for_in(
    runner: &crate::config::RunnerConfig,
    state_dir: &std::path::Path,
) -> Result<Arc<dyn Isolation>, Error> {
    let docker = crate::docker::Docker::connect(runner.docker.host.as_deref())
        .await
        .map_err(|e| Error::Other {
            context: "connect to the host docker daemon".to_string(),
            detail: e.to_string(),
        })?;
    let runner = Arc::new(runner.clone());
    let host = docker.clone();
    let inner: Arc<dyn Isolation> = match runner.docker.isolation.mode {
        crate::config::IsolationMode::Dind => Arc::new(dind::DindBackend::new(
            docker,
            runner,
            state_dir.to_path_buf(),
        )),
        crate::config::IsolationMode::SharedSocket => {
            Arc::new(shared_socket::SharedSocketBackend::new(docker, runner))
        }
    };
    let record = state_dir.join(images::PULLED_WITH_AUTH_FILE);
    Ok(Arc::new(images::Pulling::new(inner, host, Some(record))))
}
