//! The `shared-socket` backend: the classic setup. The host's Docker socket is mounted into the
//! job container and the job directory sits at the identical path, so `-v "$PWD":/x` resolves on
//! the host daemon. No sidecar, no certificates.
//!
//! A job here controls the host daemon and therefore the host: use it only on hosts that run
//! trusted jobs, and as the baseline `runner bench` compares the dind backend against.

use super::naming::{Naming, detached, other_paths};
use super::network::{carve_network, host_mtu};
use super::state::{JobState, ScriptSettings, require_image};
use super::{
    EnvironmentSpec, Error, Isolation, JobEnvironment, JobPaths, OutputSink, ScriptRequest,
    TeardownReport,
};
use crate::config::{IsolationMode, RunnerConfig};
use crate::docker::{Docker, MountSpec};
use crate::paths::{HostPathMap, JobId};

use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The host socket path mounted into jobs.
const HOST_SOCKET: &str = "/var/run/docker.sock";

/// The shared-socket backend.
pub struct SharedSocketBackend {
    docker: Docker,
    runner: Arc<RunnerConfig>,
}

impl SharedSocketBackend {
    /// A backend on `docker` (the host daemon) with the runner's config.
    pub fn new(docker: Docker, runner: Arc<RunnerConfig>) -> Self {
        SharedSocketBackend { docker, runner }
    }
}

fn shared_job_env() -> Vec<(String, String)> {
    vec![("DOCKER_HOST".to_string(), format!("unix://{HOST_SOCKET}"))]
}

#[async_trait::async_trait]
impl Isolation for SharedSocketBackend {
    fn mode(&self) -> IsolationMode {
        IsolationMode::SharedSocket
    }

    /// Images are pulled by the [`super::images::Pulling`] every backend is wrapped in.
    async fn ensure_images(
        &self,
        _plan: &super::images::PullPlan,
        _out: Arc<dyn OutputSink>,
    ) -> Result<(), Error> {
        Ok(())
    }

    /// Nothing is made ahead of jobs: the host's daemon is always there.
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

    async fn shutdown(&self) -> TeardownReport {
        TeardownReport::default()
    }

    async fn prepare(
        &self,
        spec: &EnvironmentSpec,
        _out: Arc<dyn OutputSink>,
        cancel: CancellationToken,
    ) -> Result<Box<dyn JobEnvironment>, Error> {
        let naming = Naming::new(&spec.runner_id, spec.job_id, spec.timeout)?;
        let host_map = HostPathMap::new(self.runner.docker.isolation.host_path_map.clone());
        let mut state = JobState::new(self.docker.clone(), naming, host_map);
        state.resolve = super::resolve::Resolve::from_docker(&self.runner.docker);
        let built = tokio::select! {
            biased;
            _ = cancel.cancelled() => Err(Error::Canceled),
            r = self.build(&mut state, spec) => r,
        };
        match built {
            Ok(mut paths) => {
                if let Some(target) = &spec.clone_path {
                    paths.project_dir = target.clone();
                }
                Ok(Box::new(SharedEnv { state, paths }))
            }
            Err(e) => {
                state.teardown().await;
                Err(e)
            }
        }
    }
}

impl SharedSocketBackend {
    async fn build(&self, state: &mut JobState, spec: &EnvironmentSpec) -> Result<JobPaths, Error> {
        let docker = &self.docker;
        require_image(docker, &spec.build_image.name, "job").await?;
        require_image(docker, &spec.helper_image, "helper").await?;
        for s in &spec.services {
            require_image(docker, &s.image.name, "service").await?;
        }
        let iso = &self.runner.docker.isolation;
        let mtu = if iso.network_mtu > 0 {
            Some(iso.network_mtu)
        } else {
            host_mtu().await
        };
        // A job network still helps: services get their aliases, jobs do not share a bridge.
        let net = carve_network(
            docker,
            &state.inflight,
            &state.naming,
            iso.address_pool,
            mtu,
        )
        .await?;
        state.network = Some(net);
        // Recorded before they exist: a cancel while they are made must not leak them.
        let job = JobId::new(spec.job_id);
        state.paths = Some(
            crate::paths::job_paths(&self.runner.builds_dir, job)
                .map_err(other_paths("create job directories"))?,
        );
        let builds_dir = self.runner.builds_dir.clone();
        let paths = detached(&state.inflight, async move {
            crate::paths::create_job_dirs(&builds_dir, job).await
        })
        .await
        .map_err(other_paths("create job directories"))?;
        if let Some(target) = &spec.clone_path {
            self.link_clone_path(state, target, &paths).await?;
        }
        let limits = super::limits::JobLimits::of(&self.runner.docker);
        state
            .start_services(&spec.services, &spec.service_env, &limits.service)
            .await?;
        state.script = Some(ScriptSettings {
            build_image: spec.build_image.clone(),
            helper_image: spec.helper_image.clone(),
            memory: limits.job.memory,
            cpus: limits.job.cpus,
            pids_limit: limits.job.pids_limit,
            extra_mounts: vec![MountSpec::Bind {
                source: HOST_SOCKET.to_string(),
                target: HOST_SOCKET.to_string(),
                read_only: false,
            }],
            job_env: shared_job_env(),
        });
        Ok(paths)
    }
}

impl SharedSocketBackend {
    /// GIT_CLONE_PATH on the host daemon: bind sources resolve in the host's file system, so
    /// the path becomes a host link to the project directory (removed at teardown). Jobs on
    /// one host share that file system: a clone path in use is refused, as two jobs in one
    /// directory would break each other (gitlab-runner leaves this to the path: put
    /// `$CI_CONCURRENT_ID` or `$CI_JOB_ID` in it).
    async fn link_clone_path(
        &self,
        state: &mut JobState,
        target: &std::path::Path,
        paths: &JobPaths,
    ) -> Result<(), Error> {
        let fail = |detail: String| Error::Other {
            context: format!("use GIT_CLONE_PATH={}", target.display()),
            detail,
        };
        let builds = &self.runner.builds_dir;
        let rel = target
            .strip_prefix(builds)
            .map_err(|_| fail(format!("not below {}", builds.display())))?;
        let name = paths
            .project_dir
            .file_name()
            .ok_or_else(|| fail("the project directory has no name".to_string()))?;
        match crate::paths::clone_link::link_clone_path(builds, rel, name).await {
            Ok(()) => {}
            Err(e) if e.errno() == Some(nix::errno::Errno::EEXIST) => {
                return Err(fail(
                    "another job on this host uses this path; make it unique per job, e.g. with $CI_CONCURRENT_ID or $CI_JOB_ID"
                        .to_string(),
                ));
            }
            Err(e) => return Err(fail(e.to_string())),
        }
        state.clone_link = Some(super::state::CloneLink {
            builds_dir: builds.clone(),
            rel: rel.to_path_buf(),
            target: name.to_os_string(),
        });
        state.project_target = Some(target.to_path_buf());
        Ok(())
    }
}

/// A prepared shared-socket job.
pub struct SharedEnv {
    state: JobState,
    paths: JobPaths,
}

#[async_trait::async_trait]
impl JobEnvironment for SharedEnv {
    fn paths(&self) -> &JobPaths {
        &self.paths
    }

    /// `paths` may name GIT_CLONE_PATH (a link): the runner works in the real directories.
    fn host_dirs(&self) -> &JobPaths {
        self.state.paths.as_ref().unwrap_or(&self.paths)
    }

    fn job_env(&self) -> Vec<(String, String)> {
        shared_job_env()
    }

    async fn run_script(
        &self,
        req: ScriptRequest,
        out: Arc<dyn OutputSink>,
        cancel: CancellationToken,
    ) -> Result<i32, Error> {
        self.state.run_script(req, out, cancel).await
    }

    async fn run_script_as(
        &self,
        req: ScriptRequest,
        user: &super::ScriptUser,
        out: Arc<dyn OutputSink>,
        cancel: CancellationToken,
    ) -> Result<i32, Error> {
        self.state.run_script_as(req, user, out, cancel).await
    }

    async fn image_user(&self) -> Result<Option<String>, Error> {
        self.state.image_user().await
    }

    async fn wait_for_services(
        &self,
        timeout: std::time::Duration,
        cancel: CancellationToken,
    ) -> Vec<super::ServiceWarning> {
        self.state.wait_for_services(timeout, cancel).await
    }

    async fn service_logs(&self, lines: usize) -> Vec<super::ServiceLog> {
        self.state.service_logs(lines).await
    }

    async fn teardown(self: Box<Self>) -> TeardownReport {
        let this = *self;
        this.state.teardown().await
    }

    fn resources(&self) -> super::EnvironmentResources {
        self.state.resources(&self.paths)
    }
}
