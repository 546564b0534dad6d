//! The sidecar boot, shared by a job's own start and the warm pool's: network, certificates,
//! directories and data volume, the sidecar with its profile's flags, and readiness over mTLS;
//! and the ordered teardown of what it made.

use super::naming::{Naming, detached, other, other_paths};
use super::network::{carve_network, host_mtu};
use super::pool::{SLOT_JOB_BUDGET, Slot, SlotBuilder, SlotPlan, WARM_BUSY};
use super::profile::{profile_flags, start_error};
use super::rootless::{UidBlock, grant_dir};
use super::state::{JobState, SERVER_CERT_PATH, require_image};
use super::{Error, TeardownReport};
use crate::config::{RunnerConfig, SidecarProfile};
use crate::docker::{ContainerSpec, Docker, MountSpec};
use crate::paths::{HostPathMap, JobId};
use ipnet::Ipv4Net;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Interval of the readiness poll.
const READY_POLL: Duration = Duration::from_millis(50);

/// What every sidecar start needs; shared with the warm pool's background tasks.
pub(super) struct Core {
    pub(super) docker: Docker,
    pub(super) runner: Arc<RunnerConfig>,
    pub(super) state_dir: PathBuf,
    /// `Some(true)` = iptables-legacy, as the first sidecar's entrypoint found it.
    pub(super) iptables: std::sync::Mutex<Option<bool>>,
    /// The root store, opened on first use (`golden.rs`).
    pub(super) store: tokio::sync::OnceCell<super::golden::StoreState>,
    /// One golden build at a time.
    pub(super) golden_lock: tokio::sync::Mutex<()>,
    /// Whether the fallback from the store was logged already.
    pub(super) store_warned: std::sync::atomic::AtomicBool,
}

impl Core {
    /// What sidecars of `runner` need: the host daemon and where certificates go.
    pub(super) fn new(docker: Docker, runner: Arc<RunnerConfig>, state_dir: PathBuf) -> Self {
        Core {
            docker,
            runner,
            state_dir,
            iptables: std::sync::Mutex::new(None),
            store: tokio::sync::OnceCell::new(),
            golden_lock: tokio::sync::Mutex::new(()),
            store_warned: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl Core {
    /// Remembers which iptables backend the entrypoint picked (its log says
    /// `iptables backend: nft|legacy`), so later sidecars skip the probe.
    pub(super) async fn learn_iptables(&self, sidecar: &str) {
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

    pub(super) fn push_elapsed(&mut self, name: &'static str, took: Duration) {
        self.0.push((name, took));
    }

    pub(super) fn render(&self) -> String {
        self.0
            .iter()
            .map(|(n, d)| format!("{n} {:.2}s", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
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
    /// A warm data root's uid block, recorded on its volume ([`super::data_root::LABEL_UID`]);
    /// the sidecar of any other data root takes a free block of its own.
    pub warm_uid: Option<u32>,
    /// A directory bound as `/var/lib/docker` instead of `volume` (a snapshot of the root
    /// store's golden, or a golden being made); the inner daemon then uses overlay2.
    pub bind_root: Option<PathBuf>,
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
        // A block taken already belongs to a snapshot mapped onto it (`golden.rs`).
        if iso.sidecar_profile == SidecarProfile::Rootless && state.uid_block.is_none() {
            state.uid_block = Some(match plan.warm_uid {
                Some(uid) => UidBlock::take_warm(iso.rootless_uid_base, uid, &plan.volume)?,
                None => UidBlock::take(iso.rootless_uid_base)?,
            });
        }
        let (profile, checked) = tokio::join!(
            profile_flags(
                docker,
                iso.sidecar_profile,
                state.uid_block.as_ref(),
                &mut sidecar
            ),
            futures::future::join_all(
                wanted
                    .iter()
                    .map(|(img, role)| require_image(docker, img, role))
            )
        );
        profile?;
        checked.into_iter().collect::<Result<Vec<()>, Error>>()?;
        timings.push("checks", t);

        let t = Instant::now();
        let mtu = if iso.network_mtu > 0 {
            Some(iso.network_mtu)
        } else {
            host_mtu().await
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
                futures::future::Either::Left(detached(&state.inflight, async move {
                    crate::paths::create_job_dirs(&b, job).await.map(|_| ())
                }))
            }
            SidecarDirs::Slot(slot) => {
                let slot = *slot;
                let real = crate::paths::job_paths(&builds_dir, slot)
                    .map_err(other_paths("create the slot's directories"))?;
                state.extra_dirs = vec![real.project_dir, real.tmp_dir];
                let b = builds_dir.clone();
                futures::future::Either::Right(detached(&state.inflight, async move {
                    crate::paths::create_job_dirs(&b, slot).await.map(|_| ())
                }))
            }
        };
        // A kept network (a slot's, `pool.rs`) comes with its chain installed.
        let kept = match (&state.network, &state.egress) {
            (Some(n), Some(_)) => Some(n.clone()),
            _ => None,
        };
        // The network, the directories and the data volume do not depend on each other.
        let (net, dirs, vol) = tokio::join!(
            async {
                match &kept {
                    Some(n) => Ok(n.clone()),
                    None => {
                        carve_network(
                            docker,
                            &state.inflight,
                            &state.naming,
                            iso.address_pool,
                            mtu,
                        )
                        .await
                    }
                }
            },
            make_dirs,
            async {
                if plan.create_volume {
                    let (d, name) = (docker.clone(), plan.volume.clone());
                    detached(&state.inflight, async move {
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
        if let Some(uid) = state.uid_block.as_ref().map(|b| b.uid) {
            // The inner daemon's root is `uid`: it must reach the identical-path mounts.
            let dirs: Vec<PathBuf> = match (&plan.dirs, &state.paths) {
                (SidecarDirs::Job(_), Some(p)) => vec![p.project_dir.clone(), p.tmp_dir.clone()],
                _ => state.extra_dirs.clone(),
            };
            tokio::task::spawn_blocking(move || dirs.iter().try_for_each(|d| grant_dir(d, uid)))
                .await
                .map_err(|e| Error::Other {
                    context: "open the job directories to the rootless sidecar".to_string(),
                    detail: e.to_string(),
                })??;
        }
        vol.map_err(other("create the sidecar's data volume"))?;
        timings.push("network", t);
        let sidecar_ip = net.sidecar_ip();
        // Host-side rules on the bridge before anything runs on it (see `egress.rs`).
        if kept.is_none() {
            let handle = super::egress::handle_for(
                &self.runner,
                &state.naming.runner_id,
                state.naming.job_id,
            )?;
            state.egress = Some(handle.clone());
            super::egress::install(&handle, docker, &self.runner, &state.naming, &net).await?;
        }

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
        let certs = detached(&state.inflight, async move {
            crate::paths::write_cert_dir(&state_dir, &runner_id, job, &pki).await
        });
        let certs = certs.await.map_err(other_paths("write job certificates"))?;
        timings.push("certs", t_certs);

        // The sidecar: only runner config shapes it; no job variable reaches it (threat S2).
        sidecar.name = state.naming.name("sidecar");
        sidecar.image = iso.sidecar_image.clone();
        let inner_mtu = super::profile::inner_mtu(iso.sidecar_profile, mtu);
        let mut inner_args = inner_daemon_args(
            iso.inner_address_pool,
            inner_mtu,
            iso.registry_mirror.as_deref(),
        );
        inner_args.extend(
            state
                .resolve
                .inner_daemon_args(&super::egress::host_resolvers().await),
        );
        if plan.bind_root.is_some() {
            // A golden and its snapshots must agree on the driver, and btrfs' own driver would
            // keep layers in nested subvolumes, which a snapshot does not carry.
            inner_args.push("--storage-driver=overlay2".to_string());
        }
        sidecar.cmd = Some(inner_args);
        sidecar.labels = state.naming.labels("sidecar");
        sidecar.labels.extend(plan.extra_labels);
        sidecar.network = Some(net.name.clone());
        sidecar.aliases = vec!["docker".to_string()];
        // The inner daemon resolves registries through the sidecar's own resolver and hosts file.
        state.resolve.apply(&mut sidecar);
        sidecar.ipv4 = Some(sidecar_ip.to_string());
        let data_root = match &plan.bind_root {
            Some(dir) => state.bind(dir, "/var/lib/docker", false),
            None => MountSpec::Volume {
                name: plan.volume.clone(),
                target: "/var/lib/docker".to_string(),
            },
        };
        sidecar.mounts = vec![data_root, state.bind(&certs.server, SERVER_CERT_PATH, true)];
        // The inner policy: the runner answers the daemon's authorization questions and
        // refuses inner --privileged unless the config allows it (`inner_policy.rs`).
        if !iso.inner_privileged {
            let profile = super::profile::profile_name(iso.sidecar_profile);
            state.inner_policy = Some(super::inner_policy::InnerPolicy::serve(
                &certs.policy,
                profile,
                &sidecar.name,
            )?);
            sidecar
                .mounts
                .push(state.bind(&certs.policy, super::inner_policy::SIDECAR_DIR, true));
            sidecar
                .env
                .push(super::inner_policy::InnerPolicy::sidecar_env());
        }
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
        let id = detached(&state.inflight, async move {
            d.create_container(&sidecar).await
        })
        .await
        .map_err(other("create the sidecar"))?;
        state.sidecar = Some(id.clone());
        super::registry_ca::install(docker, &id, &iso.registry_ca_files).await?;
        docker
            .start_container(&id)
            .await
            .map_err(|e| start_error(iso.sidecar_profile, e))?;
        if iso.sidecar_profile == SidecarProfile::Rootless && super::rootless::can_open_sysfs() {
            super::rootless::open_sidecar_sysfs(docker, &id).await?;
        }
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
        if let Some(policy) = &state.inner_policy
            && policy.asked() == 0
        {
            // The readiness ping passes through every authorization plugin of the daemon.
            return Err(Error::Other {
                context: "start the job's Docker daemon with its inner policy".to_string(),
                detail: format!(
                    "the daemon answered without asking its policy: the sidecar image {} does not \
                     implement {} (tests/images/README.md), so inner --privileged would run \
                     unchecked; use an image that does, or set inner_privileged = true",
                    iso.sidecar_image,
                    super::inner_policy::SOCKET_ENV
                ),
            });
        }
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
        let instance = crate::config::instance_key(&self.runner.url);
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
            per_key: iso.data_root_per_key,
            uid_base: iso.warm_uid_base(),
            helper_image,
            inflight,
        };
        super::data_root::acquire(&self.docker, &req).await
    }
}

#[async_trait::async_trait]
impl SlotBuilder for Core {
    /// Builds one slot; on any error or on `closed`, what was made is torn down (and a warm
    /// root's lease given back).
    async fn build_slot(
        &self,
        plan: SlotPlan<'_>,
        max_idle: Duration,
        closed: &CancellationToken,
    ) -> Result<Slot, Error> {
        let core = self;
        let lifetime = max_idle.saturating_add(SLOT_JOB_BUDGET);
        let naming = Naming::new(plan.runner_id, plan.id, lifetime)?;
        let host_map = HostPathMap::new(core.runner.docker.isolation.host_path_map.clone());
        let mut state = JobState::new(core.docker.clone(), naming, host_map);
        state.resolve = super::resolve::Resolve::from_docker(&core.runner.docker);
        // Recorded first: a build that fails anywhere removes it with the rest.
        if let Some(kept) = plan.network {
            state.network = Some(kept.network);
            state.egress = Some(kept.egress);
        }
        let mut lease = None;
        let mut timings = Timings::default();
        let started = Instant::now();
        let built = tokio::select! {
            biased;
            _ = closed.cancelled() => Err(Error::Canceled),
            r = async {
                let (volume, create_volume, extra_labels) = match plan.key {
                    Some(key) => {
                        let l = core
                            .acquire_warm(
                                plan.runner_id,
                                plan.id,
                                lifetime,
                                key,
                                plan.helper_image,
                                &state.inflight,
                            )
                            .await
                            .map_err(|miss| Error::Other {
                                context: WARM_BUSY.to_string(),
                                detail: format!("{miss:?}"),
                            })?;
                        let v = (l.volume.clone(), false, l.sidecar_labels().into_iter().collect());
                        // Scrubbed before its dockerd runs and before the slot can be taken (M4).
                        let l = lease.insert(l);
                        if let Some(why) = l.make_clean(&core.docker).await? {
                            tracing::warn!(slot = plan.id, reason = %why, "warm data root could not be scrubbed; replaced by a fresh one");
                        }
                        v
                    }
                    None => (state.naming.name("docker"), true, Default::default()),
                };
                // Ephemeral with preload images: a snapshot of the golden when the store works.
                let root = if plan.key.is_none() {
                    core.job_root(&mut state, None, &mut timings).await?
                } else {
                    None
                };
                let b = core
                    .boot(
                        &mut state,
                        BootPlan {
                            volume,
                            create_volume: create_volume && root.is_none(),
                            warm_uid: lease.as_ref().and_then(|l| l.uid),
                            bind_root: root.clone(),
                            dirs: SidecarDirs::Slot(JobId::new(plan.id)),
                            validity: lifetime,
                            services: &[],
                            service_env: &[],
                            extra_labels,
                            // Added when a job takes the slot, if its clone host differs.
                            background: true,
                        },
                        &[],
                        &mut timings,
                    )
                    .await?;
                if let Some(l) = lease.as_mut().filter(|l| !l.fresh) {
                    // Fail closed: a root not proven clean is never offered to a job.
                    super::data_root::check_scrubbed(&b.inner, l).await?;
                }
                if root.is_none() {
                    core.preload(&b.inner, &mut timings).await?;
                }
                Ok(b)
            } => r,
        };
        match built {
            Ok(b) => {
                tracing::debug!(slot = plan.id, steps = %timings.render(), total_ms = started.elapsed().as_millis() as u64, "slot built");
                Ok(Slot {
                    state,
                    key: plan.key,
                    lease,
                    inner: b.inner,
                    client_certs: b.client_certs,
                    not_after: b.not_after,
                    born: Instant::now(),
                    ready_after: b.waited,
                })
            }
            Err(e) => {
                let report = finish_parts(state, lease).await;
                for f in report.failures {
                    tracing::warn!(slot = plan.id, failure = %f, "teardown of a failed slot left something");
                }
                Err(e)
            }
        }
    }
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

/// The ordered teardown of a sidecar's objects; with a warm data root, its dockerd is stopped
/// gracefully (beside the removal of the job's other containers, before the sidecar's own; the
/// teardown never removes a warm volume), then the volume is measured against its cap and its
/// lock released.
pub(super) async fn finish_parts(
    state: JobState,
    warm: Option<super::data_root::WarmLease>,
) -> TeardownReport {
    let docker = state.docker.clone();
    let mut report = if warm.is_some() {
        state.teardown_gracefully().await
    } else {
        state.teardown().await
    };
    if let Some(lease) = warm {
        let (removed, failures) = lease.release(&docker).await;
        report.removed.extend(removed);
        report.failures.extend(failures);
    }
    report
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
}
