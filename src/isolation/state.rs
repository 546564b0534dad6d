//! A job's state on the outer daemon, shared by both backends: what was made (recorded as soon
//! as it exists), running a script in a fresh container with attach, and the ordered teardown.

use super::naming::{Naming, detached, other, other_paths};
use super::network::CarvedNetwork;
use super::{Error, JobPaths, OutputSink, Role, ScriptRequest, TeardownReport};
use crate::docker::{self, ContainerSpec, Docker, LABEL_ROLE, MountSpec, Output};
use crate::paths::{CertDir, HostPathMap};
use futures::StreamExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long teardown waits for create requests still in flight (see [`detached`]). The
/// Docker client's own request timeout is longer; past this bound teardown goes on and
/// reports that something may be left for the label sweep.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Attempts at removing a volume the engine still calls "in use" (a container made by a
/// create that finished late): each attempt first removes the job's containers again.
const VOLUME_ATTEMPTS: u32 = 5;

/// Where the client half of the certificates appears in job containers (`DOCKER_CERT_PATH`).
pub const CLIENT_CERT_PATH: &str = "/certs/client";
/// Where the server half appears in the sidecar (the image's `$DOCKER_TLS_CERTDIR/server`).
pub const SERVER_CERT_PATH: &str = "/certs/server";

/// Capabilities removed from job, helper and service containers on top of Docker's defaults. The
/// docker CLI needs none of them; package managers still work (CHOWN, DAC_OVERRIDE, FOWNER,
/// SETUID, SETGID stay). NET_RAW goes because raw sockets allow spoofing on the job bridge,
/// MKNOD because a job has no business creating device nodes.
pub const JOB_CAP_DROP: &[&str] = &[
    "NET_RAW",
    "MKNOD",
    "AUDIT_WRITE",
    "SETFCAP",
    "SETPCAP",
    "SYS_CHROOT",
];

/// Settings of the job's script containers.
#[derive(Debug, Clone)]
pub struct ScriptSettings {
    /// The job's image and entrypoint.
    pub build_image: super::ContainerImage,
    /// The helper image.
    pub helper_image: String,
    /// Memory limit.
    pub memory: Option<i64>,
    /// CPUs.
    pub cpus: Option<f64>,
    /// Pids limit.
    pub pids_limit: Option<i64>,
    /// Extra mounts (certs, socket).
    pub extra_mounts: Vec<MountSpec>,
    /// Variables the backend adds.
    pub job_env: Vec<(String, String)>,
}

/// A service container the job started.
#[derive(Debug, Clone)]
pub struct StartedService {
    /// Container id.
    pub id: String,
    /// Container name, resolvable on the job network.
    pub container: String,
    /// Image reference as the job named it.
    pub image: String,
    /// First alias, when the service has one.
    pub alias: Option<String>,
}

impl StartedService {
    /// How the trace names the service: its alias, else its image.
    pub fn label(&self) -> &str {
        self.alias.as_deref().unwrap_or(&self.image)
    }
}

/// A host link `<builds_dir>/<rel>` -> the job's project directory (`GIT_CLONE_PATH` on the
/// shared socket), see `crate::paths::clone_link`.
#[derive(Debug, Clone)]
pub struct CloneLink {
    /// The runner's `builds_dir`.
    pub builds_dir: std::path::PathBuf,
    /// The clone path below it.
    pub rel: std::path::PathBuf,
    /// The project directory's name in `builds_dir`.
    pub target: std::ffi::OsString,
}

/// Something to do once, when the job's first step container is done (removed): a taken pool
/// slot's replacement waits for it (`dind.rs`), so that the replacement's container start on
/// the host daemon and its boot do not compete with the job's own start.
#[derive(Default)]
pub struct FirstStepHook(std::sync::Mutex<Option<Box<dyn FnOnce() + Send>>>);

impl std::fmt::Debug for FirstStepHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FirstStepHook")
    }
}

impl FirstStepHook {
    /// Adds `f` to what runs (after what was added before).
    pub fn add(&self, f: impl FnOnce() + Send + 'static) {
        let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *slot = Some(match slot.take() {
            Some(before) => Box::new(move || {
                before();
                f();
            }),
            None => Box::new(f),
        });
    }

    /// Runs it, the first time only.
    pub fn fire(&self) {
        let f = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(f) = f {
            f();
        }
    }
}

/// Work a job's build scripts must wait for, done beside its first steps: a job on a
/// pre-started sidecar has the links to its directories made inside the sidecar while the
/// helper clones and the first build container is created (one task, which then gives the
/// sidecar its CPU weight without anyone waiting).
/// Helper scripts never wait: they run on the outer daemon and never reach the job's own.
#[derive(Debug, Default)]
pub struct BuildGate(tokio::sync::Mutex<Gate>);

#[derive(Debug, Default)]
enum Gate {
    #[default]
    Open,
    Pending(tokio::sync::oneshot::Receiver<Result<(), Error>>),
    /// What failed, said again to every later build script.
    Failed(String),
}

/// The one way to open a closed [`BuildGate`]: the work says how it went, and may go on with
/// what nobody waits for (the sidecar's CPU weight after its links).
#[derive(Debug)]
pub struct GateOpener(tokio::sync::oneshot::Sender<Result<(), Error>>);

impl GateOpener {
    /// Lets build scripts through, or fails them with `result`'s error.
    pub fn open(self, result: Result<(), Error>) {
        // No receiver: the job ended (its state dropped) before any build script asked.
        let _ = self.0.send(result);
    }
}

impl BuildGate {
    /// Build scripts wait until the returned opener is used. Call before the job's first
    /// script can run; hand the opener to work on the state's `inflight` (teardown waits for
    /// it too). An opener dropped unused fails the gate: the work ended before saying.
    pub async fn close(&self) -> GateOpener {
        let (tx, rx) = tokio::sync::oneshot::channel();
        *self.0.lock().await = Gate::Pending(rx);
        GateOpener(tx)
    }

    /// Waits for the work, once; its failure fails this and every later build script.
    pub async fn pass(&self) -> Result<(), Error> {
        let mut g = self.0.lock().await;
        if let Gate::Pending(work) = &mut *g {
            *g = match work.await {
                Ok(Ok(())) => Gate::Open,
                Ok(Err(e)) => Gate::Failed(e.to_string()),
                Err(_) => Gate::Failed("the work ended before it was done".to_string()),
            };
        }
        match &*g {
            Gate::Failed(detail) => Err(Error::Other {
                context: "claim the pre-started sidecar".to_string(),
                detail: detail.clone(),
            }),
            _ => Ok(()),
        }
    }
}

/// The state of one job on the outer daemon, shared by both backends. Every field that names
/// an object is filled in as soon as the object exists, so teardown after a partial prepare
/// removes exactly what was made.
#[derive(Debug)]
pub struct JobState {
    /// The outer (host) daemon.
    pub docker: Docker,
    /// Names and labels.
    pub naming: Naming,
    /// The job's directories, as containers see them (identical paths).
    pub paths: Option<JobPaths>,
    /// Where the job's directories really are, when not at `paths` (a job on a pre-started
    /// sidecar: the slot's own directories, named from the slot id; `paths` are then links
    /// to them, see `crate::paths::link_job_dirs`). Bind sources and the runner's own writes
    /// use these, never the links.
    pub dir_sources: Option<JobPaths>,
    /// Directories removed after the job dirs (a pre-started sidecar's own two directories).
    pub extra_dirs: Vec<std::path::PathBuf>,
    /// `GIT_CLONE_PATH`: where containers see the project directory, when not at
    /// `paths.project_dir` (the bind target; sources stay the real directories).
    pub project_target: Option<std::path::PathBuf>,
    /// A host link made for `GIT_CLONE_PATH` (shared socket): removed at teardown.
    pub clone_link: Option<CloneLink>,
    /// Host path translation.
    pub host_map: HostPathMap,
    /// The job network.
    pub network: Option<CarvedNetwork>,
    /// Certificate directory.
    pub cert_dir: Option<CertDir>,
    /// The sidecar's data volume.
    pub volume: Option<String>,
    /// The sidecar container.
    pub sidecar: Option<String>,
    /// The sidecar daemon's inner policy, served while this state lives (`inner_policy.rs`).
    pub inner_policy: Option<super::inner_policy::InnerPolicy>,
    /// Service containers.
    pub services: Vec<String>,
    /// The started services, for the wait and their logs ([`super::services`]).
    pub started: Vec<StartedService>,
    /// Script container settings (set once prepared).
    pub script: Option<ScriptSettings>,
    /// Counter for script container names.
    pub seq: AtomicU32,
    /// The job bridge's firewall policy (dind), removed after the containers, before the network.
    pub egress: Option<super::egress::JobEgress>,
    /// The warm pool that keeps this state's network once emptied, instead of its removal
    /// (a pre-started sidecar's; `pool.rs`, "Kept networks").
    pub network_home: Option<std::sync::Weak<super::pool::Pool>>,
    /// The host uids of a rootless sidecar; given back when this state is dropped, after
    /// teardown removed the sidecar.
    pub uid_block: Option<super::rootless::UidBlock>,
    /// The sidecar's snapshot in the root store, removed after the sidecar (`golden.rs`).
    pub root: Option<super::golden::JobRoot>,
    /// Create requests on their own tasks (see [`detached`]); teardown waits for them.
    pub inflight: TaskTracker,
    /// `extra_hosts`/`dns`/`dns_search` for every container the job gets.
    pub resolve: super::resolve::Resolve,
    /// Run once the first step container is done.
    pub first_step: FirstStepHook,
    /// Work that must be done before a build script starts (a pre-started sidecar's claim).
    pub build_gate: BuildGate,
}

impl JobState {
    /// What this state made, with the job's `paths` as containers see them (the backends'
    /// `JobEnvironment::resources`).
    pub fn resources(&self, paths: &JobPaths) -> super::EnvironmentResources {
        super::EnvironmentResources {
            runner_id: self.naming.runner_id.clone(),
            labels: crate::docker::label_filters(&self.naming.runner_id, Some(self.naming.job_id)),
            cert_dir: self.cert_dir.as_ref().map(|c| c.root.clone()),
            network: self.network.as_ref().map(|n| n.name.clone()),
            subnet: self.network.as_ref().map(|n| n.subnet.to_string()),
            sidecar: self.sidecar.clone(),
            volume: self.volume.clone(),
            services: self.services.clone(),
            ..super::EnvironmentResources::of_paths(paths)
        }
    }

    /// An empty state: nothing created yet.
    pub fn new(docker: Docker, naming: Naming, host_map: HostPathMap) -> Self {
        JobState {
            docker,
            naming,
            paths: None,
            dir_sources: None,
            extra_dirs: Vec::new(),
            project_target: None,
            clone_link: None,
            host_map,
            network: None,
            cert_dir: None,
            volume: None,
            sidecar: None,
            inner_policy: None,
            services: Vec::new(),
            started: Vec::new(),
            script: None,
            seq: AtomicU32::new(0),
            egress: None,
            network_home: None,
            uid_block: None,
            root: None,
            inflight: TaskTracker::new(),
            resolve: super::resolve::Resolve::default(),
            first_step: FirstStepHook::default(),
            build_gate: BuildGate::default(),
        }
    }

    /// The identical-path bind mounts of the job directories.
    pub fn job_dir_mounts(&self) -> Vec<MountSpec> {
        let Some(p) = &self.paths else {
            return Vec::new();
        };
        let src = self.dir_sources.as_ref().unwrap_or(p);
        [
            (
                &src.project_dir,
                self.project_target.as_ref().unwrap_or(&p.project_dir),
            ),
            (&src.tmp_dir, &p.tmp_dir),
        ]
        .into_iter()
        .map(|(source, target)| MountSpec::Bind {
            source: self.host_map.to_host(source).to_string_lossy().into_owned(),
            target: target.to_string_lossy().into_owned(),
            read_only: false,
        })
        .collect()
    }

    /// Fails unless each bind source of [`JobState::job_dir_mounts`] is still a plain
    /// directory (not swapped for a link).
    pub fn check_dir_sources(&self) -> Result<(), Error> {
        let Some(p) = &self.paths else {
            return Ok(());
        };
        let src = self.dir_sources.as_ref().unwrap_or(p);
        for dir in [&src.project_dir, &src.tmp_dir] {
            crate::paths::check_plain_dir(dir)
                .map_err(other_paths("mount the job's directories"))?;
        }
        Ok(())
    }

    /// A host bind of a runner-visible path.
    pub fn bind(&self, path: &Path, target: &str, read_only: bool) -> MountSpec {
        MountSpec::Bind {
            source: self.host_map.to_host(path).to_string_lossy().into_owned(),
            target: target.to_string(),
            read_only,
        }
    }

    /// Starts the job's services on the job network with their aliases.
    pub async fn start_services(
        &mut self,
        services: &[super::ServiceSpec],
        service_env: &[(String, String)],
        limits: &super::limits::ContainerLimits,
    ) -> Result<(), Error> {
        let Some(net) = self.network.clone() else {
            return Ok(());
        };
        for (i, svc) in services.iter().enumerate() {
            let mut env: Vec<String> = service_env
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            env.extend(svc.env.iter().map(|(k, v)| format!("{k}={v}")));
            let mut spec = service_spec(&self.naming, i, svc, env, &net.name, limits);
            self.resolve.apply(&mut spec);
            let container = spec.name.clone();
            let d = self.docker.clone();
            let id = detached(
                &self.inflight,
                async move { d.create_container(&spec).await },
            )
            .await
            .map_err(other(format!("create service {}", svc.image.name)))?;
            self.services.push(id.clone());
            self.started.push(StartedService {
                id: id.clone(),
                container,
                image: svc.image.name.clone(),
                alias: svc.aliases.first().cloned(),
            });
            self.docker
                .start_container(&id)
                .await
                .map_err(other(format!("start service {}", svc.image.name)))?;
        }
        Ok(())
    }

    /// Runs one script in a fresh container (attach, not exec: the runner never execs into a
    /// container the job controls, threat H3). `sidecar_alive` is consulted after a failure and
    /// by a watchdog while the script runs.
    pub async fn run_script(
        &self,
        req: ScriptRequest,
        out: Arc<dyn OutputSink>,
        cancel: CancellationToken,
    ) -> Result<i32, Error> {
        self.run_script_as(req, &super::ScriptUser::default(), out, cancel)
            .await
    }

    /// The build image's `USER` (from the image's config on the daemon).
    pub async fn image_user(&self) -> Result<Option<String>, Error> {
        let Some(settings) = &self.script else {
            return Ok(None);
        };
        let image = &settings.build_image.name;
        self.docker
            .image_user(image)
            .await
            .map_err(other(format!("inspect image {image}")))
    }

    /// Runs a script; a build script as `user` (helper scripts always run as root).
    pub async fn run_script_as(
        &self,
        req: ScriptRequest,
        user: &super::ScriptUser,
        out: Arc<dyn OutputSink>,
        cancel: CancellationToken,
    ) -> Result<i32, Error> {
        let user = match req.role {
            Role::Build => user.clone(),
            Role::Helper => super::ScriptUser::default(),
        };
        let (Some(settings), Some(paths)) = (&self.script, &self.paths) else {
            return Err(Error::Other {
                context: "run script".to_string(),
                detail: "the environment is not prepared".to_string(),
            });
        };
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let role = match req.role {
            Role::Build => "build",
            Role::Helper => "helper",
        };
        // The script goes into the job's scratch dir (same path everywhere) rather than the
        // command line (ARG_MAX) or stdin (a script that reads stdin would eat itself).
        let script_name = format!("script-{n}-{role}.sh");
        let script_path = paths.tmp_dir.join(&script_name);
        // Written where the directory really is: the no-follow open refuses a symlinked path.
        let script_file = self
            .dir_sources
            .as_ref()
            .map_or_else(|| script_path.clone(), |s| s.tmp_dir.join(&script_name));
        write_private_file(&script_file, req.script.as_bytes(), user.owner).await?;

        let (image, entrypoint) = match req.role {
            Role::Build => (
                settings.build_image.name.clone(),
                settings.build_image.entrypoint.clone(),
            ),
            Role::Helper => (settings.helper_image.clone(), Some(Vec::new())),
        };
        let mut env: Vec<String> = req.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        env.extend(settings.job_env.iter().map(|(k, v)| format!("{k}={v}")));
        // Defense in depth: the sources come from the job id (or the slot id), one step
        // below `builds_dir`; a source that is no longer a plain directory is never mounted.
        self.check_dir_sources()?;
        let mut mounts = self.job_dir_mounts();
        mounts.extend(settings.extra_mounts.iter().cloned());
        let mut spec = ContainerSpec {
            name: self.naming.name(&format!("{role}-{n}")),
            image,
            entrypoint,
            cmd: Some(super::shell::command(&script_path.to_string_lossy())),
            env,
            labels: self.naming.labels(role),
            working_dir: Some(
                self.project_target
                    .as_ref()
                    .unwrap_or(&paths.project_dir)
                    .to_string_lossy()
                    .into_owned(),
            ),
            mounts,
            network: self.network.as_ref().map(|n| n.name.clone()),
            cap_drop: JOB_CAP_DROP.iter().map(|s| s.to_string()).collect(),
            security_opt: vec!["no-new-privileges".to_string()],
            memory: settings.memory,
            cpus: settings.cpus,
            pids_limit: settings.pids_limit,
            init: true,
            user: user.user.clone(),
            ..Default::default()
        };
        self.resolve.apply(&mut spec);
        let d = self.docker.clone();
        let id = detached(
            &self.inflight,
            async move { d.create_container(&spec).await },
        )
        .await
        .map_err(other(format!("create {role} container")))?;
        let gate = async {
            if req.role == Role::Helper {
                return Ok(());
            }
            tokio::select! {
                biased;
                _ = cancel.cancelled() => Err(Error::Canceled),
                passed = self.build_gate.pass() => passed,
            }
        };
        let result = match gate.await {
            Ok(()) => self.drive(&id, out, cancel).await,
            Err(e) => Err(e),
        };
        // The container is gone on every path; a failure here is left to teardown's sweep.
        if let Err(e) = self.docker.remove_container(&id).await {
            tracing::warn!(container = %id, error = %e, "could not remove script container");
        }
        self.first_step.fire();
        // Best effort: the scratch file held the script, which may embed variables.
        let _ = crate::paths::remove_path_async(&script_file).await;
        result
    }

    async fn drive(
        &self,
        id: &str,
        out: Arc<dyn OutputSink>,
        cancel: CancellationToken,
    ) -> Result<i32, Error> {
        let mut output = self
            .docker
            .attach_output(id)
            .await
            .map_err(other("attach to script container"))?;
        let started = std::time::SystemTime::now();
        self.docker
            .start_container(id)
            .await
            .map_err(other("start script container"))?;
        let mut watchdog = tokio::time::interval(Duration::from_secs(2));
        watchdog.tick().await;
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    if let Err(e) = self.docker.kill_container(id).await {
                        tracing::warn!(container = %id, error = %e, "could not kill script container");
                    }
                    return Err(Error::Canceled);
                }
                item = output.next() => match item {
                    Some(Ok(Output::Stdout(b))) | Some(Ok(Output::Stderr(b))) => out.write(&b),
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "output stream ended with an error");
                        break;
                    }
                    None => break,
                },
                _ = watchdog.tick() => {
                    if let Some(err) = self.sidecar_died().await {
                        if let Err(e) = self.docker.kill_container(id).await {
                            tracing::warn!(container = %id, error = %e, "could not kill script container");
                        }
                        return Err(err);
                    }
                }
            }
        }
        let code = tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                if let Err(e) = self.docker.kill_container(id).await {
                    tracing::warn!(container = %id, error = %e, "could not kill script container");
                }
                return Err(Error::Canceled);
            }
            code = self.docker.wait_container(id) => code.map_err(other("wait for script container"))?,
        };
        if code != 0
            && let Some(err) = self.sidecar_died().await
        {
            return Err(err);
        }
        if code != 0
            && self.uid_block.is_some()
            && let Some(sidecar) = &self.sidecar
        {
            super::sandbox_hint::explain(&self.docker, sidecar, started, out.as_ref()).await;
        }
        Ok(i32::try_from(code).unwrap_or(-1))
    }

    /// `Some(SidecarDied)` when this job has a sidecar and it is no longer running.
    pub async fn sidecar_died(&self) -> Option<Error> {
        let sidecar = self.sidecar.as_ref()?;
        let detail = match self.docker.inspect_container(sidecar).await {
            Ok(info) if info.running => return None,
            Ok(info) => {
                let logs = self.docker.logs_tail(sidecar, 5).await.unwrap_or_default();
                format!(
                    "status {}, exit code {}{}; last log lines:\n{}",
                    info.status,
                    info.exit_code.unwrap_or(-1),
                    if info.oom_killed {
                        ", killed by the OOM killer"
                    } else {
                        ""
                    },
                    logs.trim_end()
                )
            }
            Err(e) if e.is_not_found() => "the container was removed".to_string(),
            // Cannot tell: do not turn a script failure into a system failure on a hunch.
            Err(_) => return None,
        };
        Some(Error::SidecarDied {
            container: sidecar.clone(),
            detail,
        })
    }

    /// Removes everything, in order: script/helper/service containers, sidecar, its volume,
    /// the network, the cert dir, the job dirs. Never stops at a failure. The sidecar is
    /// disconnected from the job network beside its removal, so the chain and the network need
    /// not wait for the engine's clean-up of a killed container (see [`Self::teardown_inner`]).
    pub async fn teardown(self) -> TeardownReport {
        self.teardown_inner(std::future::ready(()), false).await
    }

    /// [`Self::teardown`] for a sidecar on a warm data root: its dockerd is stopped gracefully
    /// ([`super::data_root::STOP_GRACE_SECS`]), so it leaves the root consistent for the next
    /// daemon, beside the rest of the teardown; the sidecar is removed after the stop. The stop
    /// waits for the sidecar's detach from the job network: beside the stop the engine took
    /// 0.1 s to detach it, alone 0.04 s, and the bridge waits for the detach (build-warm
    /// teardown 0.29/0.29 → 0.26/0.23 s, docs/benchmarks.md).
    pub async fn teardown_gracefully(self) -> TeardownReport {
        let docker = self.docker.clone();
        let sidecar = self.sidecar.clone();
        let stop = async move {
            if let Some(id) = sidecar
                && let Err(e) = docker
                    .stop_container(&id, super::data_root::STOP_GRACE_SECS)
                    .await
            {
                tracing::warn!(error = %e, "could not stop the warm sidecar gracefully");
            }
        };
        self.teardown_inner(stop, true).await
    }

    /// Hands the job network, emptied, and its installed chain to `pool` for its next slot
    /// (`pool.rs`, "Kept networks"); returns its name. Gives both back, for removal, when an
    /// endpoint is still attached, the engine cannot say, or the pool does not want them.
    async fn keep_network(
        &self,
        pool: &super::pool::Pool,
        network: CarvedNetwork,
        egress: super::egress::JobEgress,
    ) -> Result<String, (CarvedNetwork, super::egress::JobEgress)> {
        match self.docker.network_endpoints(&network.name).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::debug!(network = %network.name, endpoints = n, "job network still in use; removed, not kept");
                return Err((network, egress));
            }
            Err(e) => {
                tracing::debug!(network = %network.name, error = %e, "job network not inspected; removed, not kept");
                return Err((network, egress));
            }
        }
        let name = network.name.clone();
        pool.keep_network(Box::new(super::pool::SpareNetwork::new(
            network,
            egress,
            self.docker.clone(),
        )))
        .map(|()| name)
        .map_err(|s| (s.network, s.egress))
    }

    /// The teardown: `before_sidecar` (a graceful stop, or nothing) runs beside the removal of
    /// the job's other containers (with `after_detach`, once the sidecar's detach below is
    /// done), and the sidecar is removed after it. The sidecar is
    /// disconnected from the job network beside these, so the firewall chain and the network go
    /// while its daemon shuts down or the engine cleans up the killed container (measured here:
    /// a bridge takes Docker 0.15–0.25 s to remove, a sidecar's stop and clean-up 0.15–0.2 s;
    /// in a row they were most of a job's teardown). A sidecar without a network interface
    /// sends nothing, so the chain is no longer needed once it is detached. If the disconnect
    /// fails (the container went first), the network waits for the sidecar's removal.
    async fn teardown_inner(
        mut self,
        before_sidecar: impl std::future::Future<Output = ()>,
        after_detach: bool,
    ) -> TeardownReport {
        let mut report = TeardownReport::default();
        // Creates still in flight first: what they make must be in the lists below.
        self.inflight.close();
        if tokio::time::timeout(SETTLE_TIMEOUT, self.inflight.wait())
            .await
            .is_err()
        {
            report.failures.push(format!(
                "create requests still unanswered after {}s; what they make is left to the label sweep",
                SETTLE_TIMEOUT.as_secs()
            ));
        }
        let filters = docker::label_filters(&self.naming.runner_id, Some(self.naming.job_id));
        let (sidecars, others) = self.job_containers(&filters, &mut report).await;
        let network_name = self.network.as_ref().map(|n| n.name.clone());
        // Three lines after the containers (teardown time is part of every job's wall time):
        // the volumes and the directories once no container mounts them; the firewall chain
        // then the network (a chain whose bridge is gone would match a reused interface name)
        // once nothing is attached to the bridge.
        let volume = self.volume.take();
        let root = self.root.take();
        let egress = self.egress.take();
        let network = self.network.take();
        let cert_dir = self.cert_dir.take();
        let paths = self.paths.take();
        let extra_dirs = std::mem::take(&mut self.extra_dirs);
        let clone_link = self.clone_link.take();
        let home = self.network_home.take().and_then(|w| w.upgrade());
        let this = &self;
        let filters = &filters;
        let volumes = async move {
            let mut r = TeardownReport::default();
            if let Some(root) = root {
                let name = root.name.clone();
                match root.remove().await {
                    Ok(true) => r.removed.push(format!("job root {name}")),
                    Ok(false) => {}
                    Err(e) => r.failures.push(e),
                }
            }
            // Volumes and networks are also found by label: a prepare cancelled between the
            // daemon's reply and the bookkeeping must not leak them.
            let mut volumes: Vec<String> = volume.into_iter().collect();
            match this.docker.list_volumes(filters).await {
                Ok(list) => volumes.extend(list.into_iter().map(|v| v.name)),
                Err(e) => r.failures.push(format!("list volumes: {e}")),
            }
            volumes.sort();
            volumes.dedup();
            for v in volumes {
                let mut attempt = 1;
                loop {
                    match this.docker.remove_volume(&v).await {
                        Ok(true) => r.removed.push(format!("volume {v}")),
                        Ok(false) => {}
                        // 409: a container still holds it, one the first listing did not see
                        // (a create that finished late, outside this process's tracking).
                        // Remove the job's containers again and retry, a bounded number of
                        // times.
                        Err(e) if e.status() == Some(409) && attempt < VOLUME_ATTEMPTS => {
                            tracing::debug!(volume = %v, attempt, "volume in use; removing containers again");
                            this.remove_containers(filters, &mut r).await;
                            tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt)))
                                .await;
                            attempt += 1;
                            continue;
                        }
                        Err(e) => r.failures.push(e.to_string()),
                    }
                    break;
                }
            }
            r
        };
        let network = async move {
            let mut r = TeardownReport::default();
            // Kept for the pool's next slot, chain and all, when nothing is attached any more.
            let mut kept = None;
            let (network, egress) = match (home, network, egress) {
                (Some(pool), Some(n), Some(e)) => match this.keep_network(&pool, n, e).await {
                    Ok(name) => {
                        kept = Some(name);
                        (None, None)
                    }
                    Err((n, e)) => (Some(n), Some(e)),
                },
                (_, n, e) => (n, e),
            };
            if let Some(e) = egress {
                match e.remove().await {
                    Ok(()) => r.removed.push(format!("firewall chain {}", e.chain())),
                    Err(err) => r.failures.push(err.to_string()),
                }
            }
            let mut networks: Vec<String> = network.into_iter().map(|n| n.name).collect();
            match this.docker.list_networks(filters).await {
                Ok(list) => networks.extend(list.into_iter().map(|n| n.name)),
                Err(e) => r.failures.push(format!("list networks: {e}")),
            }
            networks.sort();
            networks.dedup();
            // The label sweep finds a kept network its own slot made (it carries those labels).
            networks.retain(|n| Some(n) != kept.as_ref());
            for n in networks {
                match this.docker.remove_network(&n).await {
                    Ok(true) => r.removed.push(format!("network {n}")),
                    Ok(false) => {}
                    Err(e) => r.failures.push(e.to_string()),
                }
            }
            r
        };
        let dirs = async move {
            let mut r = TeardownReport::default();
            if let Some(c) = cert_dir {
                match crate::paths::remove_cert_dir(&c).await {
                    Ok(true) => r.removed.push(format!("dir {}", c.root.display())),
                    Ok(false) => {}
                    Err(e) => r.failures.push(e.to_string()),
                }
            }
            if let Some(l) = clone_link {
                match crate::paths::clone_link::unlink_clone_path(&l.builds_dir, &l.rel, &l.target)
                    .await
                {
                    Ok(true) => r
                        .removed
                        .push(format!("link {}", l.builds_dir.join(&l.rel).display())),
                    Ok(false) => {}
                    Err(e) => r.failures.push(e.to_string()),
                }
            }
            if let Some(p) = paths {
                match crate::paths::remove_job_dirs(&p).await {
                    Ok(dirs) => r
                        .removed
                        .extend(dirs.into_iter().map(|d| format!("dir {}", d.display()))),
                    Err(e) => r.failures.push(e.to_string()),
                }
            }
            for d in extra_dirs {
                match crate::paths::remove_path_async(&d).await {
                    Ok(true) => r.removed.push(format!("dir {}", d.display())),
                    Ok(false) => {}
                    Err(e) => r.failures.push(e.to_string()),
                }
            }
            r
        };
        let (others_done, others_gone) = tokio::sync::oneshot::channel::<()>();
        let (sidecar_done, sidecar_gone) = tokio::sync::oneshot::channel::<()>();
        let (detach_done, detach_waited) = tokio::sync::oneshot::channel::<()>();
        let bridge_line = async move {
            let mut r = TeardownReport::default();
            let removals = this.remove_listed(&others, &mut r);
            let detach = async {
                let (Some(net), Some(sidecar)) = (&network_name, this.sidecar.as_deref()) else {
                    return false;
                };
                match this.docker.disconnect_network(net, sidecar).await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::debug!(error = %e, "could not detach the sidecar first; the network waits for its removal");
                        false
                    }
                }
            };
            let detach = async {
                let d = detach.await;
                let _ = detach_done.send(());
                d
            };
            let ((), detached) = futures::future::join(removals, detach).await;
            let _ = others_done.send(());
            if !detached {
                let _ = sidecar_gone.await;
            }
            let n = network.await;
            r.removed.extend(n.removed);
            r.failures.extend(n.failures);
            r
        };
        let sidecar_line = async move {
            let mut r = TeardownReport::default();
            if after_detach {
                let _ = detach_waited.await;
            }
            before_sidecar.await;
            this.remove_listed(&sidecars, &mut r).await;
            let _ = sidecar_done.send(());
            let _ = others_gone.await;
            let (v, d) = tokio::join!(volumes, dirs);
            for part in [v, d] {
                r.removed.extend(part.removed);
                r.failures.extend(part.failures);
            }
            r
        };
        let (b, s) = tokio::join!(bridge_line, sidecar_line);
        for part in [b, s] {
            report.removed.extend(part.removed);
            report.failures.extend(part.failures);
        }
        for f in &report.failures {
            tracing::warn!(job.id = self.naming.job_id, failure = %f, "teardown left something behind");
        }
        report
    }
}

/// The container of the job's `i`-th service. Services run images the job names, on the
/// job's network, so they get the job containers' restrictions: the same capability drop
/// list and `no-new-privileges` (database and web images drop to their user with
/// setuid/setgid, which stay; none needs raw sockets, device nodes or chroot). Each has its
/// own memory, CPU and pids limits (H4): the job chooses its image and command.
fn service_spec(
    naming: &Naming,
    i: usize,
    svc: &super::ServiceSpec,
    env: Vec<String>,
    network: &str,
    limits: &super::limits::ContainerLimits,
) -> ContainerSpec {
    ContainerSpec {
        name: naming.name(&format!("svc-{i}")),
        image: svc.image.name.clone(),
        entrypoint: svc.image.entrypoint.clone(),
        cmd: (!svc.command.is_empty()).then(|| svc.command.clone()),
        env,
        labels: naming.labels("service"),
        network: Some(network.to_string()),
        aliases: svc.aliases.clone(),
        cap_drop: JOB_CAP_DROP.iter().map(|s| s.to_string()).collect(),
        security_opt: vec!["no-new-privileges".to_string()],
        memory: limits.memory,
        cpus: limits.cpus,
        pids_limit: limits.pids_limit,
        ..Default::default()
    }
}

impl JobState {
    /// Removes the job's containers (found by label, plus the ones recorded), the sidecar last:
    /// job containers talk to it until they die.
    async fn remove_containers(&self, filters: &[String], report: &mut TeardownReport) {
        let (sidecars, others) = self.job_containers(filters, report).await;
        self.remove_listed(&others, report).await;
        self.remove_listed(&sidecars, report).await;
    }

    /// Removes `ids` at once and records each in `report` (a second pass may meet a container
    /// the first one removed: it is listed once).
    async fn remove_listed(&self, ids: &[String], report: &mut TeardownReport) {
        let results = futures::future::join_all(
            ids.iter()
                .map(|id| async move { (id, self.docker.remove_container(id).await) }),
        )
        .await;
        for (id, r) in results {
            let label = format!("container {}", short(id));
            match r {
                Ok(true) if !report.removed.contains(&label) => report.removed.push(label),
                Ok(_) => {}
                Err(e) => report.failures.push(e.to_string()),
            }
        }
    }

    /// The job's containers, found by label plus the ones it recorded: `(sidecars, others)`.
    async fn job_containers(
        &self,
        filters: &[String],
        report: &mut TeardownReport,
    ) -> (Vec<String>, Vec<String>) {
        let mut containers: Vec<(String, String)> = match self.docker.list_containers(filters).await
        {
            Ok(list) => list
                .into_iter()
                .map(|c| {
                    let role = c.labels.get(LABEL_ROLE).cloned().unwrap_or_default();
                    (c.id, role)
                })
                .collect(),
            Err(e) => {
                report.failures.push(format!("list containers: {e}"));
                Vec::new()
            }
        };
        for id in self.services.iter().chain(self.sidecar.iter()) {
            if !containers.iter().any(|(c, _)| c == id) {
                containers.push((id.clone(), String::new()));
            }
        }
        let (sidecars, others): (Vec<_>, Vec<_>) = containers
            .into_iter()
            .partition(|(id, role)| role == "sidecar" || self.sidecar.as_deref() == Some(id));
        (
            sidecars.into_iter().map(|(id, _)| id).collect(),
            others.into_iter().map(|(id, _)| id).collect(),
        )
    }
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// Writes a new 0600 file `path` inside the job's tmp dir (the runner-visible real
/// directory, its parent trusted runner config) through the directory's handle, created
/// `O_CREAT|O_EXCL|O_NOFOLLOW|O_NONBLOCK`: a link or a FIFO the job planted under the name is
/// refused (finding M2), never written through or blocked on.
async fn write_private_file(
    path: &Path,
    data: &[u8],
    owner: Option<(u32, u32)>,
) -> Result<(), Error> {
    let fail = |detail: String| Error::Other {
        context: format!("write {}", path.display()),
        detail,
    };
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(fail("not a file path".into()));
    };
    let (dir, name, data) = (dir.to_path_buf(), name.to_os_string(), data.to_vec());
    tokio::task::spawn_blocking(move || {
        let d = crate::paths::Dir::open_job_dir(&dir).map_err(|e| e.to_string())?;
        let mut f = d.create_new(Path::new(&name), 0o600).map_err(|e| {
            if e.errno() == Some(nix::errno::Errno::EEXIST) {
                format!("{e}: something is already there (planted by the job?), refusing it")
            } else {
                e.to_string()
            }
        })?;
        // Through the descriptor just created: the build script's user must read it.
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid)).map_err(|e| e.to_string())?;
        }
        std::io::Write::write_all(&mut f, &data).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| fail(e.to_string()))?
    .map_err(fail)
}

/// Fails with [`Error::ImageUnavailable`] unless `image` exists on the daemon (pulling is
/// done before, by [`super::images`]; this catches an image removed in between).
pub async fn require_image(docker: &Docker, image: &str, role: &str) -> Result<(), Error> {
    match docker.image_exists(image).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(Error::ImageUnavailable {
            image: image.to_string(),
            detail: format!(
                "the {role} image is not on the host daemon (the runner pulls job, service and helper images; the sidecar and preloaded images are the admin's to load)"
            ),
        }),
        Err(e) => Err(other(format!("inspect image {image}"))(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_open_build_gate_lets_every_script_through() {
        let gate = BuildGate::default();
        gate.pass().await.expect("open");
        gate.pass().await.expect("still open");
    }

    #[tokio::test]
    async fn a_build_gate_waits_for_its_work_and_then_stays_open() {
        let gate = BuildGate::default();
        let opener = gate.close().await;
        let waiting = gate.pass();
        tokio::pin!(waiting);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut waiting)
                .await
                .is_err(),
            "passed before the work was done"
        );
        opener.open(Ok(()));
        waiting.await.expect("passes once done");
        gate.pass().await.expect("and stays open");
    }

    #[tokio::test]
    async fn a_failed_claim_fails_every_later_build_script_with_its_reason() {
        let gate = BuildGate::default();
        gate.close().await.open(Err(Error::Other {
            context: "link the job's directories in its daemon".to_string(),
            detail: "no such container".to_string(),
        }));
        for _ in 0..2 {
            let e = gate.pass().await.expect_err("the claim failed").to_string();
            assert!(
                e.contains("link the job's directories in its daemon")
                    && e.contains("no such container"),
                "{e}"
            );
        }
        // Work that ends without a word (a panic, an abort) fails the gate too.
        let gate = BuildGate::default();
        drop(gate.close().await);
        let e = gate.pass().await.expect_err("no word").to_string();
        assert!(e.contains("ended before it was done"), "{e}");
    }

    /// Finding M2: a FIFO the job planted under the next script's name must not block a
    /// blocking thread forever (nor be written to): the create is O_EXCL|O_NONBLOCK.
    #[tokio::test]
    async fn script_file_refuses_a_planted_fifo() {
        let t = tempfile::tempdir().expect("tempdir");
        let tmp = t.path().join("gitlab-job-4.tmp");
        std::fs::create_dir(&tmp).expect("mkdir");
        let script = tmp.join("script-0-build.sh");
        nix::unistd::mkfifo(&script, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .expect("mkfifo");
        let r = tokio::time::timeout(
            Duration::from_secs(60),
            write_private_file(&script, b"echo hi", None),
        )
        .await
        .expect("the write must not block on the FIFO");
        let e = r.expect_err("a planted FIFO is refused");
        assert!(e.to_string().contains("planted"), "{e}");
        // A link is refused the same way; a fresh name is written 0600.
        let canary = t.path().join("canary");
        std::fs::write(&canary, b"keep").expect("write");
        std::os::unix::fs::symlink(&canary, tmp.join("script-1-build.sh")).expect("link");
        assert!(
            write_private_file(&tmp.join("script-1-build.sh"), b"x", None)
                .await
                .is_err()
        );
        assert_eq!(std::fs::read(&canary).expect("canary"), b"keep");
        write_private_file(&tmp.join("script-2-build.sh"), b"echo ok", None)
            .await
            .expect("write");
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(tmp.join("script-2-build.sh")).expect("stat");
        assert_eq!(meta.mode() & 0o777, 0o600);
    }

    #[test]
    fn services_are_as_restricted_as_job_containers() {
        let n = Naming::new("r1", 5, Duration::from_secs(60)).unwrap();
        let svc = super::super::ServiceSpec {
            image: super::super::ContainerImage {
                name: "postgres:16".into(),
                entrypoint: None,
            },
            command: vec![],
            aliases: vec!["db".into()],
            env: vec![],
        };
        let limits = super::super::limits::ContainerLimits {
            memory: Some(64 << 20),
            cpus: Some(0.5),
            pids_limit: Some(32),
        };
        let spec = service_spec(&n, 0, &svc, vec![], "ir-r1-5-net", &limits);
        assert_eq!(
            (spec.memory, spec.cpus, spec.pids_limit),
            (Some(64 << 20), Some(0.5), Some(32))
        );
        let drop: Vec<&str> = spec.cap_drop.iter().map(String::as_str).collect();
        assert_eq!(drop, JOB_CAP_DROP);
        assert_eq!(spec.security_opt, ["no-new-privileges"]);
        assert!(!spec.privileged && spec.cap_add.is_empty());
        assert_eq!(spec.name, "ir-r1-5-svc-0");
        assert_eq!(spec.network.as_deref(), Some("ir-r1-5-net"));
    }
}
