//! The `dind` backend: a per-job Docker daemon in a sidecar container.
//!
//! A job's environment, built in this order (teardown runs it backwards):
//! 1. a private bridge, a /28 carved from `address_pool`, labelled, with the host's MTU;
//! 2. a fresh CA in memory; server and client certificates written to the job's cert dir;
//! 3. the job directories (identical paths in every container);
//! 4. a named volume for the sidecar's `/var/lib/docker` (never overlay on overlay);
//! 5. the sidecar (profile flags from config only, never from the job), alias `docker`, fixed IP;
//! 6. readiness: the runner itself completes an mTLS `GET /_ping` against the job CA;
//! 7. services on the job network; images preloaded from the host daemon over mTLS.
//!
//! Scripts then run in fresh containers on the job network with `DOCKER_HOST=tcp://docker:2376`
//! and the client half of the certificates. The host socket is never mounted.

use super::common::{
    self, CLIENT_CERT_PATH, JobState, Naming, SERVER_CERT_PATH, ScriptSettings, other, other_paths,
};
use super::resolve::Resolve;
use super::{
    EnvironmentSpec, Error, Isolation, JobEnvironment, JobPaths, OutputSink, ScriptRequest,
    TeardownReport,
};
use crate::config::{IsolationMode, RunnerConfig, SidecarProfile};
use crate::docker::{ContainerSpec, Docker, MountSpec};
use crate::paths::{HostPathMap, JobId};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The seccomp profile of the `hardened` profile: Docker's permissive base with host-level
/// syscalls (modules, kexec, clock, swap, reboot, bpf, io_uring, …) refused. Found sufficient
/// for dockerd, overlay2, bridge/NAT, compose and BuildKit on cgroup v1 by the ladder in
/// `tests/images/ladder`.
const HARDENED_SECCOMP: &str = include_str!("seccomp-dind.json");

/// Interval of the readiness poll.
const READY_POLL: Duration = Duration::from_millis(50);

/// The dind backend.
pub struct DindBackend {
    core: Arc<Core>,
    /// Sidecars started ahead of jobs (`warm_pool > 0`).
    pool: Option<Arc<super::pool::Pool>>,
}

/// What every sidecar start needs; shared with the warm pool's background tasks.
pub(super) struct Core {
    pub(super) docker: Docker,
    pub(super) runner: Arc<RunnerConfig>,
    state_dir: PathBuf,
    /// `Some(true)` = iptables-legacy, as the first sidecar's entrypoint found it.
    iptables: std::sync::Mutex<Option<bool>>,
}

impl DindBackend {
    /// A backend using `docker` (the host daemon), the runner's config, and `state_dir` for the
    /// per-job certificate directories. With `warm_pool > 0` it keeps that many sidecars
    /// started ahead of jobs once [`Isolation::warm_up`] or the first `prepare` ran.
    pub fn new(docker: Docker, runner: Arc<RunnerConfig>, state_dir: PathBuf) -> Self {
        let iso = &runner.docker.isolation;
        // With warm data roots, slots are per project, started after a project's job.
        let keyed = iso.data_root == crate::config::DataRoot::Project;
        let pool = (iso.warm_pool > 0).then(|| {
            Arc::new(super::pool::Pool::new(
                iso.warm_pool,
                iso.warm_pool_max_idle,
                keyed,
            ))
        });
        DindBackend {
            core: Arc::new(Core {
                docker,
                runner,
                state_dir,
                iptables: std::sync::Mutex::new(None),
            }),
            pool,
        }
    }
}

impl Core {
    /// Remembers which iptables backend the entrypoint picked (its log says
    /// `iptables backend: nft|legacy`), so later sidecars skip the probe.
    async fn learn_iptables(&self, sidecar: &str) {
        if self.iptables.lock().map(|g| g.is_some()).unwrap_or(true) {
            return;
        }
        let Ok(logs) = self.docker.logs_tail(sidecar, 50).await else {
            return;
        };
        let found = logs.lines().find_map(|l| {
            let rest = l.split("iptables backend: ").nth(1)?;
            if rest.starts_with("legacy") {
                Some(true)
            } else if rest.starts_with("nft") {
                Some(false)
            } else {
                None
            }
        });
        if let (Some(v), Ok(mut g)) = (found, self.iptables.lock()) {
            *g = Some(v);
        }
    }
}

/// Durations of the prepare steps, for the "daemon ready" line (and `runner bench`).
#[derive(Default)]
pub(super) struct Timings(Vec<(&'static str, Duration)>);

impl Timings {
    pub(super) fn push(&mut self, name: &'static str, since: Instant) {
        self.0.push((name, since.elapsed()));
    }

    pub(super) fn render(&self) -> String {
        self.0
            .iter()
            .map(|(n, d)| format!("{n} {:.2}s", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The container flags of a sidecar profile, checked against what the daemon offers. Never
/// substitutes another profile (a silent fallback would hand a job more privilege than the
/// admin chose, or less isolation than they believe they have).
pub async fn profile_flags(
    docker: &Docker,
    profile: SidecarProfile,
    spec: &mut ContainerSpec,
) -> Result<(), Error> {
    spec.cgroupns_private = true;
    match profile {
        SidecarProfile::Hardened => {
            // Not privileged: default capabilities + SYS_ADMIN (mounts: overlay, cgroup remount)
            // + NET_ADMIN (bridge, iptables); seccomp refuses host-level syscalls; Docker's
            // masked and read-only /proc and /sys paths stay (the image's entrypoint re-opens
            // only /proc/sys/net, which dockerd needs for its containers' interfaces); no host
            // devices. AppArmor must be unconfined on AppArmor hosts (mounts), a no-op elsewhere.
            spec.cap_add = vec!["SYS_ADMIN".to_string(), "NET_ADMIN".to_string()];
            spec.security_opt = vec![
                format!("seccomp={HARDENED_SECCOMP}"),
                "apparmor=unconfined".to_string(),
            ];
        }
        SidecarProfile::Privileged => {
            spec.privileged = true;
        }
        SidecarProfile::Sysbox => {
            let runtimes = docker
                .runtimes()
                .await
                .map_err(other("list the daemon's runtimes"))?;
            if !runtimes.iter().any(|r| r == "sysbox-runc") {
                return Err(Error::ProfileUnavailable {
                    profile: "sysbox".to_string(),
                    detail: format!(
                        "the host daemon has no sysbox-runc runtime (it has: {}); install Sysbox \
                         (nestybox/sysbox, package sysbox-ce) and restart dockerd, or choose \
                         sidecar_profile = \"hardened\" explicitly",
                        runtimes.join(", ")
                    ),
                });
            }
            spec.runtime = Some("sysbox-runc".to_string());
        }
    }
    Ok(())
}

/// The name used in config and reports.
pub fn profile_name(p: SidecarProfile) -> &'static str {
    match p {
        SidecarProfile::Hardened => "hardened",
        SidecarProfile::Privileged => "privileged",
        SidecarProfile::Sysbox => "sysbox",
    }
}

#[async_trait::async_trait]
impl Isolation for DindBackend {
    fn mode(&self) -> IsolationMode {
        IsolationMode::Dind
    }

    async fn prepare(
        &self,
        spec: &EnvironmentSpec,
        out: Arc<dyn OutputSink>,
        cancel: CancellationToken,
    ) -> Result<Box<dyn JobEnvironment>, Error> {
        let key = (self.core.runner.docker.isolation.data_root == crate::config::DataRoot::Project)
            .then_some(super::pool::WarmKey {
                project_id: spec.project_id,
                protected: spec.protected,
            });
        // After this job, a sidecar on its warm root waits for the project's next job.
        let followup = |env: &DindEnv| -> Option<Followup> {
            let pool = self.pool.as_ref()?;
            env.warm.as_ref()?;
            Some(Followup {
                pool: Arc::clone(pool),
                core: Arc::clone(&self.core),
                key: key?,
                helper_image: spec.helper_image.clone(),
            })
        };
        if let Some(pool) = &self.pool {
            pool.start(&self.core, &spec.runner_id);
            let slot = tokio::select! {
                biased;
                _ = cancel.cancelled() => return Err(Error::Canceled),
                s = pool.take(spec, key, self.core.runner.docker.isolation.ready_timeout) => s,
            };
            // Replace what was taken (or start filling) while this job prepares.
            pool.refill(&self.core);
            if let Some(slot) = slot {
                let mut env = DindEnv::from_slot(slot);
                let attached = tokio::select! {
                    biased;
                    _ = cancel.cancelled() => Err(Error::Canceled),
                    r = self.core.attach(&mut env, spec, &out) => r,
                };
                return settle(env, attached, &out, followup).await;
            }
        }
        let naming = Naming::new(&spec.runner_id, spec.job_id, spec.timeout)?;
        let host_map = HostPathMap::new(self.core.runner.docker.isolation.host_path_map.clone());
        let mut env = DindEnv {
            state: JobState {
                resolve: Resolve::from_docker(&self.core.runner.docker),
                ..JobState::new(self.core.docker.clone(), naming, host_map)
            },
            paths: JobPaths {
                project_dir: PathBuf::new(),
                tmp_dir: PathBuf::new(),
            },
            inner: None,
            warm: None,
            ready_after: None,
            born: None,
            client_certs: None,
            followup: None,
        };
        let built = tokio::select! {
            biased;
            _ = cancel.cancelled() => Err(Error::Canceled),
            r = self.core.build(&mut env, spec, &out) => r,
        };
        settle(env, built, &out, followup).await
    }

    async fn warm_up(&self, runner_id: &str) {
        if let Some(pool) = &self.pool {
            pool.start(&self.core, runner_id);
            pool.refill(&self.core);
        }
    }

    fn standby_ids(&self) -> Vec<u64> {
        self.pool
            .as_ref()
            .map(|p| p.standby_ids())
            .unwrap_or_default()
    }

    async fn shutdown(&self) -> TeardownReport {
        match &self.pool {
            Some(pool) => pool.shutdown().await,
            None => TeardownReport::default(),
        }
    }
}

/// The end of a prepare, either way it went: a ready environment (told what to start for the
/// project's next job), or everything it made torn down and the error returned.
async fn settle(
    mut env: DindEnv,
    prepared: Result<(), Error>,
    out: &Arc<dyn OutputSink>,
    followup: impl FnOnce(&DindEnv) -> Option<Followup>,
) -> Result<Box<dyn JobEnvironment>, Error> {
    match prepared {
        Ok(()) => {
            env.followup = followup(&env);
            Ok(Box::new(env))
        }
        Err(e) => {
            let report = env.finish().await;
            for f in &report.failures {
                out.write(format!("teardown after failed prepare: {f}\n").as_bytes());
            }
            Err(e)
        }
    }
}

/// The directories a sidecar gets.
pub(super) enum SidecarDirs {
    /// A job's: its two directories, bound at identical paths.
    Job(JobId),
    /// A pre-started sidecar's: the slot's own two directories (`gitlab-job-<slot>` and
    /// `.tmp`, made directly in `builds_dir`), each bound at its own path. The job that takes
    /// the sidecar uses them as its directories (see [`Core::attach`]); their parent is never
    /// mounted anywhere, so no job can rename them or put anything in their place.
    Slot(JobId),
}

/// What differs between starting a job's own sidecar and a pre-started one.
pub(super) struct BootPlan<'a> {
    /// The sidecar's `/var/lib/docker` volume.
    pub volume: String,
    /// Whether `volume` is made here (ephemeral) or already exists (a warm data root).
    pub create_volume: bool,
    pub dirs: SidecarDirs,
    /// The certificates cover this (plus the PKI margin).
    pub validity: Duration,
    pub services: &'a [super::ServiceSpec],
    pub service_env: &'a [(String, String)],
    pub extra_labels: HashMap<String, String>,
    /// A sidecar started ahead of its job: a low CPU weight until a job takes it, so starting
    /// it never slows running jobs down on a busy host (see [`JOB_CPU_SHARES`]).
    pub background: bool,
}

/// The CPU weight of a pre-started sidecar while no job has it (1/8 of the default).
pub(super) const SLOT_CPU_SHARES: i64 = 128;
/// The kernel's default CPU weight, which a pre-started sidecar gets when a job takes it.
pub(super) const JOB_CPU_SHARES: i64 = 1024;

/// A daemon that answers, from [`Core::boot`].
pub(super) struct Booted {
    pub inner: Docker,
    /// The client half of the certificates (for job containers).
    pub client_certs: PathBuf,
    /// When the certificates expire.
    pub not_after: std::time::SystemTime,
    /// Sidecar created → mTLS ping answered.
    pub waited: Duration,
}

impl Core {
    /// Checks, makes and starts everything up to a daemon that answers over mTLS, recording
    /// each object in `state` as soon as it exists (so teardown after an error removes exactly
    /// what was made). Shared by a job's own start and the warm pool's.
    pub(super) async fn boot(
        &self,
        state: &mut JobState,
        plan: BootPlan<'_>,
        images: &[(&str, &str)],
        timings: &mut Timings,
    ) -> Result<Booted, Error> {
        let iso = &self.runner.docker.isolation;
        let docker = &self.docker;

        // Everything that can be refused without creating anything comes first.
        // Start-up time is the cost of isolation (docs/benchmarks.md): independent steps run
        // concurrently and each one is timed for the breakdown line.
        let t = Instant::now();
        let mut sidecar = ContainerSpec::default();
        let mut wanted: Vec<(&str, &str)> = vec![(iso.sidecar_image.as_str(), "sidecar")];
        wanted.extend_from_slice(images);
        wanted.extend(iso.preload_images.iter().map(|i| (i.as_str(), "preload")));
        let (profile, checked) = tokio::join!(
            profile_flags(docker, iso.sidecar_profile, &mut sidecar),
            futures::future::join_all(
                wanted
                    .iter()
                    .map(|(img, role)| common::require_image(docker, img, role))
            )
        );
        profile?;
        checked.into_iter().collect::<Result<Vec<()>, Error>>()?;
        timings.push("checks", t);

        let t = Instant::now();
        let mtu = if iso.network_mtu > 0 {
            Some(iso.network_mtu)
        } else {
            common::host_mtu().await
        };
        let data_labels = state.naming.labels("data");
        let builds_dir = self.runner.builds_dir.clone();
        // Recorded before they exist: a cancel while they are made must not leak them.
        let dir_mounts_of = |state: &JobState| -> Vec<MountSpec> {
            match &plan.dirs {
                SidecarDirs::Job(_) => state.job_dir_mounts(),
                SidecarDirs::Slot(_) => state
                    .extra_dirs
                    .iter()
                    .map(|dir| state.bind(dir, &dir.to_string_lossy(), false))
                    .collect(),
            }
        };
        let make_dirs = match &plan.dirs {
            SidecarDirs::Job(job) => {
                let job = *job;
                state.paths = Some(
                    crate::paths::job_paths(&builds_dir, job)
                        .map_err(other_paths("create job directories"))?,
                );
                let b = builds_dir.clone();
                futures::future::Either::Left(common::detached(&state.inflight, async move {
                    crate::paths::create_job_dirs(&b, job).await.map(|_| ())
                }))
            }
            SidecarDirs::Slot(slot) => {
                let slot = *slot;
                let real = crate::paths::job_paths(&builds_dir, slot)
                    .map_err(other_paths("create the slot's directories"))?;
                state.extra_dirs = vec![real.project_dir, real.tmp_dir];
                let b = builds_dir.clone();
                futures::future::Either::Right(common::detached(&state.inflight, async move {
                    crate::paths::create_job_dirs(&b, slot).await.map(|_| ())
                }))
            }
        };
        // The network, the directories and the data volume do not depend on each other.
        let (net, dirs, vol) = tokio::join!(
            common::carve_network(
                docker,
                &state.inflight,
                &state.naming,
                iso.address_pool,
                mtu
            ),
            make_dirs,
            async {
                if plan.create_volume {
                    let (d, name) = (docker.clone(), plan.volume.clone());
                    common::detached(&state.inflight, async move {
                        d.create_volume(&name, &data_labels).await
                    })
                    .await
                } else {
                    Ok(())
                }
            },
        );
        // Record whatever exists before failing, so teardown removes it (a warm volume is
        // kept: it is released by `finish`, not removed).
        if plan.create_volume && vol.is_ok() {
            state.volume = Some(plan.volume.clone());
        }
        let net = net?;
        state.network = Some(net.clone());
        dirs.map_err(other_paths("create job directories"))?;
        vol.map_err(other("create the sidecar's data volume"))?;
        timings.push("network", t);
        let sidecar_ip = net.sidecar_ip();
        // Host-side rules on the bridge before anything runs on it (see `egress.rs`).
        let handle =
            super::egress::handle_for(&self.runner, &state.naming.runner_id, state.naming.job_id)?;
        state.egress = Some(handle.clone());
        super::egress::install(&handle, docker, &self.runner, &state.naming, &net).await?;

        let t_certs = Instant::now();
        let job = JobId::new(state.naming.job_id);
        let pki = crate::pki::issue_job_pki(&crate::pki::PkiRequest::for_sidecar(
            state.naming.job_id,
            IpAddr::V4(sidecar_ip),
            plan.validity,
        ))
        .map_err(|e| Error::Other {
            context: "issue job certificates".to_string(),
            detail: e.to_string(),
        })?;
        let not_after = pki.not_after;
        let tls = crate::pki::client_config(&pki.client).map_err(|e| Error::Other {
            context: "build the runner's TLS client".to_string(),
            detail: e.to_string(),
        })?;
        let runner_id = state.naming.runner_id.clone();
        state.cert_dir = Some(
            crate::paths::cert_dir(&self.state_dir, &runner_id, job)
                .map_err(other_paths("write job certificates"))?,
        );
        let state_dir = self.state_dir.clone();
        let certs = common::detached(&state.inflight, async move {
            crate::paths::write_cert_dir(&state_dir, &runner_id, job, &pki).await
        });
        let certs = certs.await.map_err(other_paths("write job certificates"))?;
        timings.push("certs", t_certs);

        // The sidecar: only runner config shapes it; no job variable reaches it (threat S2).
        sidecar.name = state.naming.name("sidecar");
        sidecar.image = iso.sidecar_image.clone();
        let mut inner_args =
            inner_daemon_args(iso.inner_address_pool, mtu, iso.registry_mirror.as_deref());
        inner_args.extend(
            state
                .resolve
                .inner_daemon_args(&super::egress::host_resolvers().await),
        );
        sidecar.cmd = Some(inner_args);
        sidecar.labels = state.naming.labels("sidecar");
        sidecar.labels.extend(plan.extra_labels);
        sidecar.network = Some(net.name.clone());
        sidecar.aliases = vec!["docker".to_string()];
        // The inner daemon resolves registries through the sidecar's own resolver and hosts file.
        state.resolve.apply(&mut sidecar);
        sidecar.ipv4 = Some(sidecar_ip.to_string());
        sidecar.mounts = vec![
            MountSpec::Volume {
                name: plan.volume.clone(),
                target: "/var/lib/docker".to_string(),
            },
            state.bind(&certs.server, SERVER_CERT_PATH, true),
        ];
        sidecar.mounts.extend(dir_mounts_of(state));
        let limits = super::limits::JobLimits::of(&self.runner.docker);
        sidecar.memory = limits.sidecar.memory;
        sidecar.cpus = limits.sidecar.cpus;
        sidecar.cpu_shares = plan.background.then_some(SLOT_CPU_SHARES);
        sidecar.pids_limit = limits.sidecar.pids_limit;
        sidecar.sysctls = HashMap::from([("net.ipv4.ip_forward".to_string(), "1".to_string())]);
        // nofile is inherited from the host daemon: a fixed value above its hard limit fails
        // with "error setting rlimit type 7" on hosts with a lower limit.
        // Under memory pressure the job's daemon dies before the host's.
        sidecar.oom_score_adj = Some(500);
        // The iptables backend the sidecar's entrypoint detected last time: the same kernel
        // gives the same answer, and skipping the probe saves a few hundred ms per job.
        if let Ok(guard) = self.iptables.lock()
            && let Some(legacy) = *guard
        {
            sidecar
                .env
                .push(format!("DOCKER_IPTABLES_LEGACY={}", u8::from(legacy)));
        }
        let started = Instant::now();
        // On its own task: a cancel must not drop the request half-way (see `detached`).
        let d = docker.clone();
        let id = common::detached(&state.inflight, async move {
            d.create_container(&sidecar).await
        })
        .await
        .map_err(other("create the sidecar"))?;
        state.sidecar = Some(id.clone());
        docker
            .start_container(&id)
            .await
            .map_err(|e| start_error(iso.sidecar_profile, e))?;
        timings.push("start", started);

        let addr = SocketAddr::new(IpAddr::V4(sidecar_ip), 2376);
        // Services live on the outer daemon: start them while the inner one boots.
        let t_ready = Instant::now();
        let (ready, services) = tokio::join!(
            wait_ready(docker, &id, addr, tls, iso.ready_timeout),
            state.start_services(plan.services, plan.service_env, &limits.service)
        );
        let inner = ready?;
        services?;
        timings.push("ready", t_ready);
        let waited = started.elapsed();
        self.learn_iptables(&id).await;
        Ok(Booted {
            inner,
            client_certs: certs.client,
            not_after,
            waited,
        })
    }

    /// Copies the configured images into a daemon that just started.
    pub(super) async fn preload(&self, inner: &Docker, timings: &mut Timings) -> Result<(), Error> {
        let iso = &self.runner.docker.isolation;
        let t = Instant::now();
        for img in &iso.preload_images {
            inner
                .load_image(self.docker.export_image(img), img)
                .await
                .map_err(other(format!("preload image {img}")))?;
        }
        if !iso.preload_images.is_empty() {
            timings.push("preload", t);
        }
        Ok(())
    }

    /// How script containers of a job on this runner are made.
    fn script_settings(&self, spec: &EnvironmentSpec, client: MountSpec) -> ScriptSettings {
        let limits = super::limits::JobLimits::of(&self.runner.docker).job;
        ScriptSettings {
            build_image: spec.build_image.clone(),
            helper_image: spec.helper_image.clone(),
            memory: limits.memory,
            cpus: limits.cpus,
            pids_limit: limits.pids_limit,
            extra_mounts: vec![client],
            job_env: dind_job_env(),
        }
    }

    /// A job's own sidecar, started for it (no pre-started one, or a warm data root).
    async fn build(
        &self,
        env: &mut DindEnv,
        spec: &EnvironmentSpec,
        out: &Arc<dyn OutputSink>,
    ) -> Result<(), Error> {
        let iso = &self.runner.docker.isolation;
        let job = JobId::new(spec.job_id);
        let mut timings = Timings::default();
        // data_root = "project": a warm volume of this project and protection level, held by
        // this job alone; otherwise (or when it is busy) an ephemeral one.
        if iso.data_root == crate::config::DataRoot::Project {
            env.warm = self.warm_root(spec, &env.state.inflight, out).await;
            // Scrubbed before its dockerd runs, so nothing of the previous job starts again
            // with this job's directories mounted (M4).
            if let Some(lease) = env.warm.as_mut() {
                match lease.make_clean(&self.docker).await {
                    Ok(None) => {}
                    Ok(Some(why)) => out.write(
                        format!(
                            "WARNING: the warm data root could not be scrubbed ({why}); it was \
                             replaced by a fresh one and this job starts cold\n"
                        )
                        .as_bytes(),
                    ),
                    Err(e) => {
                        out.write(
                            format!(
                                "WARNING: the warm data root could not be scrubbed nor \
                                 replaced ({e}); this job uses an ephemeral one\n"
                            )
                            .as_bytes(),
                        );
                        env.warm = None;
                    }
                }
            }
        }
        let (volume, extra_labels) = match &env.warm {
            Some(lease) => (lease.volume.clone(), HashMap::from(lease.sidecar_labels())),
            None => (env.state.naming.name("docker"), HashMap::new()),
        };
        let images = job_images(spec);
        let booted = self
            .boot(
                &mut env.state,
                BootPlan {
                    create_volume: env.warm.is_none(),
                    volume,
                    dirs: SidecarDirs::Job(job),
                    validity: spec.timeout,
                    services: &spec.services,
                    service_env: &spec.service_env,
                    extra_labels,
                    background: false,
                },
                &images,
                &mut timings,
            )
            .await;
        if let Some(p) = &env.state.paths {
            env.paths = p.clone();
        }
        let booted = booted?;
        env.ready_after = Some(booted.waited);
        if let Some(lease) = env.warm.as_mut().filter(|l| !l.fresh) {
            // Fail closed: a root not proven clean carries no job, and goes at teardown.
            super::data_root::check_scrubbed(&booted.inner, lease).await?;
            tracing::debug!(volume = %lease.volume, "warm data root scrubbed");
        }
        tracing::info!(
            job.id = spec.job_id,
            ready_ms = booted.waited.as_millis() as u64,
            profile = profile_name(iso.sidecar_profile),
            "sidecar ready"
        );
        self.preload(&booted.inner, &mut timings).await?;
        env.inner = Some(booted.inner);
        let net = env.state.network.clone();
        out.write(
            format!(
                "Job docker daemon ready in {:.1}s (sidecar profile {}, network {} {}) [{}]\n",
                booted.waited.as_secs_f64(),
                profile_name(iso.sidecar_profile),
                net.as_ref().map(|n| n.name.as_str()).unwrap_or("-"),
                net.as_ref()
                    .map(|n| n.subnet.to_string())
                    .unwrap_or_default(),
                timings.render()
            )
            .as_bytes(),
        );
        let client = env.state.bind(&booted.client_certs, CLIENT_CERT_PATH, true);
        env.state.script = Some(self.script_settings(spec, client));
        Ok(())
    }

    /// Gives a pre-started sidecar to a job: the job's images checked, the slot's directories
    /// made the job's (linked at the job's paths in the sidecar and on the host; bound at
    /// those paths in job containers), its services started on the
    /// sidecar's network. Nothing of the sidecar itself changes: it was built from runner
    /// config alone, like every sidecar.
    async fn attach(
        &self,
        env: &mut DindEnv,
        spec: &EnvironmentSpec,
        out: &Arc<dyn OutputSink>,
    ) -> Result<(), Error> {
        let iso = &self.runner.docker.isolation;
        let mut timings = Timings::default();
        let t = Instant::now();
        let images = job_images(spec);
        let checked = futures::future::join_all(
            images
                .iter()
                .map(|(img, role)| common::require_image(&self.docker, img, role)),
        )
        .await;
        checked.into_iter().collect::<Result<Vec<()>, Error>>()?;
        timings.push("checks", t);

        let t = Instant::now();
        // The job's own now: the sidecar gets the default CPU weight back.
        if let Some(id) = env.state.sidecar.clone() {
            self.docker
                .set_cpu_shares(&id, JOB_CPU_SHARES)
                .await
                .map_err(other("give the pre-started sidecar its CPU weight"))?;
        }
        timings.push("claim", t);

        let t = Instant::now();
        let job = JobId::new(spec.job_id);
        let slot = JobId::new(env.state.naming.job_id);
        let sidecar = env.state.sidecar.clone().ok_or_else(|| Error::Other {
            context: "take a pre-started sidecar".to_string(),
            detail: "the slot has no sidecar".to_string(),
        })?;
        // Recorded before they exist: teardown removes the links (never what they point to).
        let links = crate::paths::job_paths(&self.runner.builds_dir, job)
            .map_err(other_paths("create job directories"))?;
        env.state.paths = Some(links.clone());
        env.paths = links;
        let b = self.runner.builds_dir.clone();
        let (links, real) = common::detached(&env.state.inflight, async move {
            crate::paths::link_job_dirs(&b, job, slot).await
        })
        .await
        .map_err(other_paths("create job directories"))?;
        // The job's paths inside its own daemon: links in the sidecar's root file system to
        // the slot's mounts, so `-v $CI_PROJECT_DIR:/app` resolves there. Whatever the job
        // later does to these links changes only its own sidecar's view; inside the sidecar
        // the slot's directories are mount points (a rename fails with EBUSY).
        let tar = job_links_tar(&links, &real).map_err(|e| Error::Other {
            context: "link the job's directories in its daemon".to_string(),
            detail: e.to_string(),
        })?;
        self.docker
            .put_archive(&sidecar, &self.runner.builds_dir.to_string_lossy(), tar)
            .await
            .map_err(other("link the job's directories in its daemon"))?;
        env.state.dir_sources = Some(real);
        timings.push("dirs", t);

        // The slot's firewall was installed from the config alone (GitLab, `clone_url`, the
        // mirror); the job's clone URL was checked against the same config before prepare, so
        // nothing is re-installed here and the bridge is never without its chain.
        let t = Instant::now();
        let limits = super::limits::JobLimits::of(&self.runner.docker);
        env.state
            .start_services(&spec.services, &spec.service_env, &limits.service)
            .await?;
        if !spec.services.is_empty() {
            timings.push("services", t);
        }
        if let Some(lease) = &env.warm {
            out.write(
                format!(
                    "Using the warm data root {} ({}; the sidecar was started on it after the \
                     project's last job)\n",
                    lease.volume,
                    if lease.fresh { "new, cold" } else { "warm" }
                )
                .as_bytes(),
            );
        }
        let net = env.state.network.clone();
        out.write(
            format!(
                "Job docker daemon ready: pre-started {:.0}s ago, ready in {:.1}s (sidecar profile \
                 {}, network {} {}) [{}]\n",
                env.born.map(|b| b.elapsed().as_secs_f64()).unwrap_or(0.0),
                env.ready_after.map(|d| d.as_secs_f64()).unwrap_or(0.0),
                profile_name(iso.sidecar_profile),
                net.as_ref().map(|n| n.name.as_str()).unwrap_or("-"),
                net.as_ref()
                    .map(|n| n.subnet.to_string())
                    .unwrap_or_default(),
                timings.render()
            )
            .as_bytes(),
        );
        tracing::info!(
            job.id = spec.job_id,
            slot = env.state.naming.job_id,
            "job took a pre-started sidecar"
        );
        let client = env
            .client_certs
            .as_ref()
            .map(|c| env.state.bind(c, CLIENT_CERT_PATH, true))
            .ok_or_else(|| Error::Other {
                context: "take a pre-started sidecar".to_string(),
                detail: "the slot has no client certificates".to_string(),
            })?;
        env.state.script = Some(self.script_settings(spec, client));
        Ok(())
    }

    /// Takes the warm data root of `key` for the job (or pool slot) `job_id`, without waiting.
    pub(super) async fn acquire_warm(
        &self,
        runner_id: &str,
        job_id: u64,
        timeout: Duration,
        key: super::pool::WarmKey,
        helper_image: &str,
        inflight: &tokio_util::task::TaskTracker,
    ) -> Result<super::data_root::WarmLease, super::data_root::Miss> {
        let iso = &self.runner.docker.isolation;
        // This backend serves one `[[runners]]` entry: its GitLab URL names the instance whose
        // project ids `key` holds (H3).
        let instance = crate::job::trust::instance_key(&self.runner.url);
        let req = super::data_root::WarmRequest {
            state_dir: &self.state_dir,
            runner_id,
            instance: &instance,
            job_id,
            timeout,
            project_id: key.project_id,
            protected: key.protected,
            max_size: iso.data_root_max_size,
            max_age: iso.data_root_max_age,
            helper_image,
            inflight,
        };
        super::data_root::acquire(&self.docker, &req).await
    }

    /// Takes the job's warm data root, or says why it runs on an ephemeral one.
    async fn warm_root(
        &self,
        spec: &EnvironmentSpec,
        inflight: &tokio_util::task::TaskTracker,
        out: &Arc<dyn OutputSink>,
    ) -> Option<super::data_root::WarmLease> {
        let key = super::pool::WarmKey {
            project_id: spec.project_id,
            protected: spec.protected,
        };
        let acquired = self
            .acquire_warm(
                &spec.runner_id,
                spec.job_id,
                spec.timeout,
                key,
                &spec.helper_image,
                inflight,
            )
            .await;
        match acquired {
            Ok(lease) => {
                out.write(
                    format!(
                        "Using the warm data root {} ({})\n",
                        lease.volume,
                        if lease.fresh { "new, cold" } else { "warm" }
                    )
                    .as_bytes(),
                );
                Some(lease)
            }
            Err(miss) => {
                out.write(
                    format!(
                        "The project's warm data root is {miss}; this job uses an ephemeral one\n"
                    )
                    .as_bytes(),
                );
                None
            }
        }
    }
}

/// A tar of two relative symlinks, `gitlab-job-<job>` -> `gitlab-job-<slot>` and the same for
/// `.tmp`, to be extracted in `builds_dir` inside a pre-started sidecar.
fn job_links_tar(
    links: &JobPaths,
    real: &JobPaths,
) -> Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>> {
    let mut b = tar::Builder::new(Vec::new());
    for (link, dir) in [
        (&links.project_dir, &real.project_dir),
        (&links.tmp_dir, &real.tmp_dir),
    ] {
        let (Some(name), Some(target)) = (link.file_name(), dir.file_name()) else {
            return Err(format!("{} has no file name", link.display()).into());
        };
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default(),
        );
        b.append_link(&mut h, name, target)?;
    }
    Ok(b.into_inner()?)
}

/// The images a job needs on the host daemon: its own, the helper, its services'.
fn job_images(spec: &EnvironmentSpec) -> Vec<(&str, &str)> {
    let mut images = vec![
        (spec.build_image.name.as_str(), "job"),
        (spec.helper_image.as_str(), "helper"),
    ];
    images.extend(
        spec.services
            .iter()
            .map(|s| (s.image.name.as_str(), "service")),
    );
    images
}

/// Flags for the inner dockerd: MTU for the default bridge *and* for every network it creates
/// (compose networks), and addresses from the inner pool, disjoint from the outer bridges.
pub fn inner_daemon_args(
    inner_pool: ipnet::Ipv4Net,
    mtu: Option<u32>,
    mirror: Option<&str>,
) -> Vec<String> {
    let bip = Ipv4Net::new(
        std::net::Ipv4Addr::from(u32::from(inner_pool.network()).saturating_add(1)),
        24.max(inner_pool.prefix_len()),
    )
    .map(|n| n.to_string())
    .unwrap_or_default();
    let mut args = vec![
        format!("--bip={bip}"),
        format!(
            "--default-address-pool=base={inner_pool},size={}",
            24.max(inner_pool.prefix_len())
        ),
    ];
    if let Some(mtu) = mtu {
        args.push(format!("--mtu={mtu}"));
        args.push(format!(
            "--default-network-opt=bridge=com.docker.network.driver.mtu={mtu}"
        ));
    }
    if let Some(m) = mirror.filter(|m| !m.is_empty()) {
        args.push(format!("--registry-mirror={m}"));
    }
    args
}
use ipnet::Ipv4Net;

/// `--dns` flags for the inner dockerd: the host's own upstream resolvers (the sidecar's
/// resolv.conf names only Docker's 127.0.0.11, which the inner daemon cannot hand to its
/// containers, so without these it would fall back to 8.8.8.8). Queries from inner containers
/// are NATed behind the sidecar and pass the job bridge's policy, which lets DNS to these
/// resolvers through even with `egress = "deny"`. Empty when the host has none. `[runners.docker]
/// dns` replaces the host's resolvers (see `Resolve::inner_daemon_args`).
pub fn inner_dns_args(resolvers: &[IpAddr]) -> Vec<String> {
    resolvers.iter().map(|ip| format!("--dns={ip}")).collect()
}

/// A sidecar that cannot start because the host refuses the profile's privileges is a
/// `ProfileUnavailable` (with what to do), not a generic error: the admin must choose.
fn start_error(profile: SidecarProfile, e: crate::docker::Error) -> Error {
    let msg = e.daemon_message().unwrap_or_default().to_string();
    let refused = msg.contains("unable to apply caps")
        || msg.contains("operation not permitted")
        || msg.contains("unknown or invalid runtime");
    if refused {
        return Error::ProfileUnavailable {
            profile: profile_name(profile).to_string(),
            detail: format!(
                "the host daemon could not start the sidecar with this profile's privileges \
                 ({msg}); the daemon itself probably runs with a reduced capability set. \
                 Choose another sidecar_profile explicitly"
            ),
        };
    }
    other("start the sidecar")(e)
}

/// What the job sees: the sidecar by name, TLS verified, the client half of the certificates.
pub fn dind_job_env() -> Vec<(String, String)> {
    vec![
        ("DOCKER_HOST".to_string(), "tcp://docker:2376".to_string()),
        ("DOCKER_TLS_VERIFY".to_string(), "1".to_string()),
        ("DOCKER_CERT_PATH".to_string(), CLIENT_CERT_PATH.to_string()),
        // Published ports live on the sidecar, not on localhost.
        (
            "TESTCONTAINERS_HOST_OVERRIDE".to_string(),
            "docker".to_string(),
        ),
    ]
}

/// Polls an mTLS `/_ping` until the daemon answers, the sidecar dies or `timeout` passes.
async fn wait_ready(
    docker: &Docker,
    sidecar: &str,
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<Docker, Error> {
    let start = Instant::now();
    let mut last_err: String;
    let mut n: u32 = 0;
    loop {
        let attempt = tokio::time::timeout(Duration::from_secs(2), async {
            let d = Docker::connect_mtls(addr, Arc::clone(&tls)).await?;
            d.ping().await?;
            Ok::<_, crate::docker::Error>(d)
        })
        .await;
        match attempt {
            Ok(Ok(d)) => return Ok(d),
            Ok(Err(e)) => last_err = e.to_string(),
            Err(_) => last_err = format!("no answer from {addr} within 2s"),
        }
        n += 1;
        // Every ~0.5 s: a sidecar that exited will never answer; say so now.
        if n.is_multiple_of(10)
            && let Ok(info) = docker.inspect_container(sidecar).await
            && !info.running
        {
            let logs = docker.logs_tail(sidecar, 30).await.unwrap_or_default();
            return Err(Error::NotReady {
                waited: start.elapsed(),
                last_logs: format!(
                    "(the sidecar exited with code {})\n{}",
                    info.exit_code.unwrap_or(-1),
                    logs.trim_end()
                ),
            });
        }
        if start.elapsed() >= timeout {
            let logs = docker.logs_tail(sidecar, 30).await.unwrap_or_default();
            let routable = if logs.contains("API listen on") && is_route_error(&last_err) {
                format!(
                    "\n(the daemon is listening but {addr} is not reachable from the runner host: \
                     the runner must share a network with the job bridge; last error: {last_err})"
                )
            } else {
                format!("\n(last error: {last_err})")
            };
            return Err(Error::NotReady {
                waited: start.elapsed(),
                last_logs: format!("{}{routable}", logs.trim_end()),
            });
        }
        tokio::time::sleep(READY_POLL).await;
    }
}

fn is_route_error(e: &str) -> bool {
    let e = e.to_ascii_lowercase();
    e.contains("no route")
        || e.contains("unreachable")
        || e.contains("within 2s")
        || e.contains("timed out")
}

/// The ordered teardown of a sidecar's objects; with a warm data root, its dockerd is first
/// stopped gracefully (the teardown never removes a warm volume), then the volume is measured
/// against its cap and its lock released.
pub(super) async fn finish_parts(
    state: JobState,
    warm: Option<super::data_root::WarmLease>,
) -> TeardownReport {
    if warm.is_some()
        && let Some(id) = state.sidecar.as_deref()
        && let Err(e) = state
            .docker
            .stop_container(id, super::data_root::STOP_GRACE_SECS)
            .await
    {
        tracing::warn!(error = %e, "could not stop the warm sidecar gracefully");
    }
    let docker = state.docker.clone();
    let mut report = state.teardown().await;
    if let Some(lease) = warm {
        let (removed, failures) = lease.release(&docker).await;
        report.removed.extend(removed);
        report.failures.extend(failures);
    }
    report
}

/// A prepared dind job.
pub struct DindEnv {
    state: JobState,
    paths: JobPaths,
    inner: Option<Docker>,
    /// The warm data root this job holds (`data_root = "project"`).
    warm: Option<super::data_root::WarmLease>,
    ready_after: Option<Duration>,
    /// When the sidecar was started, for a pre-started one (warm pool).
    born: Option<Instant>,
    /// The client half of a pre-started sidecar's certificates.
    client_certs: Option<PathBuf>,
    /// What to start for the project's next job once this one is gone.
    followup: Option<Followup>,
}

/// A sidecar to pre-start on a warm data root after its job (see `pool.rs`).
struct Followup {
    pool: Arc<super::pool::Pool>,
    core: Arc<Core>,
    key: super::pool::WarmKey,
    helper_image: String,
}

impl DindEnv {
    /// A job environment around a pre-started sidecar; [`Core::attach`] completes it.
    pub(super) fn from_slot(slot: super::pool::Slot) -> Self {
        DindEnv {
            state: slot.state,
            paths: JobPaths {
                project_dir: PathBuf::new(),
                tmp_dir: PathBuf::new(),
            },
            inner: Some(slot.inner),
            warm: slot.lease,
            ready_after: Some(slot.ready_after),
            born: Some(slot.born),
            client_certs: Some(slot.client_certs),
            followup: None,
        }
    }
}

impl DindEnv {
    /// Teardown with the warm data root's extra steps: its dockerd is stopped gracefully
    /// before the ordered teardown (which never removes a warm volume), then the volume is
    /// measured against its cap and its lock released.
    async fn finish(mut self) -> TeardownReport {
        let followup = self.followup.take();
        let report = finish_parts(self.state, self.warm.take()).await;
        if let Some(f) = followup {
            f.pool.prestart(&f.core, f.key, f.helper_image);
        }
        report
    }

    /// The job's own daemon, as the runner reaches it (mTLS).
    pub fn inner_docker(&self) -> Option<&Docker> {
        self.inner.as_ref()
    }

    /// The sidecar container id.
    pub fn sidecar_id(&self) -> Option<&str> {
        self.state.sidecar.as_deref()
    }
}

#[async_trait::async_trait]
impl JobEnvironment for DindEnv {
    fn paths(&self) -> &JobPaths {
        &self.paths
    }

    /// A job on a pre-started sidecar: the slot's own directories (its `paths` are links to
    /// them, which the runner never resolves).
    fn host_dirs(&self) -> &JobPaths {
        self.state.dir_sources.as_ref().unwrap_or(&self.paths)
    }

    fn job_env(&self) -> Vec<(String, String)> {
        dind_job_env()
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
        self.finish().await
    }

    fn resources(&self) -> super::EnvironmentResources {
        let s = &self.state;
        super::EnvironmentResources {
            runner_id: s.naming.runner_id.clone(),
            labels: crate::docker::label_filters(&s.naming.runner_id, Some(s.naming.job_id)),
            project_dir: Some(self.paths.project_dir.clone()),
            tmp_dir: Some(self.paths.tmp_dir.clone()),
            cert_dir: s.cert_dir.as_ref().map(|c| c.root.clone()),
            network: s.network.as_ref().map(|n| n.name.clone()),
            subnet: s.network.as_ref().map(|n| n.subnet.to_string()),
            bridge_interface: None,
            sidecar: s.sidecar.clone(),
            volume: s.volume.clone(),
            services: s.services.clone(),
            // A pre-started sidecar's start was not this job's wait.
            sidecar_ready: self.ready_after.filter(|_| self.born.is_none()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inner_args_carry_mtu_and_pool() {
        let a = inner_daemon_args("10.214.0.0/16".parse().unwrap(), Some(1400), None);
        assert!(a.contains(&"--bip=10.214.0.1/24".to_string()));
        assert!(a.contains(&"--default-address-pool=base=10.214.0.0/16,size=24".to_string()));
        assert!(a.contains(&"--mtu=1400".to_string()));
        assert!(
            a.iter()
                .any(|x| x.contains("com.docker.network.driver.mtu=1400"))
        );
        let b = inner_daemon_args("10.214.0.0/16".parse().unwrap(), None, Some(""));
        assert!(!b.iter().any(|x| x.contains("mtu") || x.contains("mirror")));
    }

    #[test]
    fn inner_dns_flags_name_each_resolver() {
        let r: Vec<IpAddr> = vec![
            "10.255.255.53".parse().unwrap(),
            "2001:db8::53".parse().unwrap(),
        ];
        assert_eq!(
            inner_dns_args(&r),
            vec![
                "--dns=10.255.255.53".to_string(),
                "--dns=2001:db8::53".to_string()
            ]
        );
        assert!(inner_dns_args(&[]).is_empty());
    }

    #[test]
    fn a_slot_gives_the_job_two_relative_links() {
        let b = std::path::Path::new("/builds");
        let links = crate::paths::job_paths(b, JobId::new(7)).unwrap();
        let real =
            crate::paths::job_paths(b, JobId::new(super::super::pool::SLOT_ID_BASE)).unwrap();
        let tar = job_links_tar(&links, &real).unwrap();
        let mut a = tar::Archive::new(tar.as_slice());
        let got: Vec<(String, String, bool)> = a
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    e.link_name().unwrap().unwrap().display().to_string(),
                    e.header().entry_type() == tar::EntryType::Symlink,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "gitlab-job-7".to_string(),
                    "gitlab-job-4611686018427387904".to_string(),
                    true
                ),
                (
                    "gitlab-job-7.tmp".to_string(),
                    "gitlab-job-4611686018427387904.tmp".to_string(),
                    true
                ),
            ]
        );
    }

    #[test]
    fn seccomp_profile_is_json() {
        let v: serde_json::Value = serde_json::from_str(HARDENED_SECCOMP).unwrap();
        assert_eq!(v["defaultAction"], "SCMP_ACT_ALLOW");
    }

    #[test]
    fn job_env_points_at_the_sidecar() {
        let e = dind_job_env();
        assert!(e.contains(&("DOCKER_HOST".to_string(), "tcp://docker:2376".to_string())));
        assert!(e.contains(&("DOCKER_TLS_VERIFY".to_string(), "1".to_string())));
    }
}
