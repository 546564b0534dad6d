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

use super::naming::{Naming, other_paths};
use super::pool::{Pool, Sizing, Slot, WarmKey};
use super::resolve::Resolve;
use super::sidecar::{BootPlan, Core, JOB_CPU_SHARES, SidecarDirs, Timings, finish_parts};
use super::state::{CLIENT_CERT_PATH, FirstStepHook, JobState, ScriptSettings};
use super::{
    EnvironmentSpec, Error, Isolation, JobEnvironment, JobPaths, OutputSink, ScriptRequest,
    TeardownReport,
};
use crate::config::{IsolationMode, RunnerConfig};
use crate::docker::{Docker, MountSpec};
use crate::paths::{HostPathMap, JobId};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

pub use super::profile::{profile_flags, profile_name};
pub use super::resolve::inner_dns_args;
pub use super::sidecar::inner_daemon_args;

/// The dind backend.
pub struct DindBackend {
    core: Arc<Core>,
    /// Sidecars started ahead of jobs (`warm_pool > 0`).
    pool: Option<Arc<Pool>>,
}

impl DindBackend {
    /// A backend using `docker` (the host daemon), the runner's config, and `state_dir` for the
    /// per-job certificate directories. With `warm_pool > 0` it keeps that many sidecars
    /// started ahead of jobs once [`Isolation::warm_up`] or the first `prepare` ran.
    pub fn new(docker: Docker, runner: Arc<RunnerConfig>, state_dir: PathBuf) -> Self {
        let iso = &runner.docker.isolation;
        // With warm data roots, slots are per project, started after a project's job.
        let keyed = iso.data_root == crate::config::DataRoot::Project;
        let sizing = if iso.warm_pool_auto {
            Sizing::Auto {
                floor: iso.warm_pool,
            }
        } else {
            Sizing::Fixed(iso.warm_pool)
        };
        let pool = (iso.warm_pool > 0 || iso.warm_pool_auto)
            .then(|| Arc::new(Pool::with_sizing(sizing, iso.warm_pool_max_idle, keyed)));
        if let Some(p) = &pool
            && runner.limit > 0
        {
            p.set_job_cap(runner.limit);
        }
        DindBackend {
            core: Arc::new(Core::new(docker, runner, state_dir)),
            pool,
        }
    }
}

#[async_trait::async_trait]
impl Isolation for DindBackend {
    fn mode(&self) -> IsolationMode {
        IsolationMode::Dind
    }

    /// Images are pulled onto the host daemon by the [`super::images::Pulling`] every backend
    /// is wrapped in (the job's containers run there; its own daemon gets them from there).
    async fn ensure_images(
        &self,
        _plan: &super::images::PullPlan,
        _out: Arc<dyn OutputSink>,
    ) -> Result<(), Error> {
        Ok(())
    }

    async fn prepare(
        &self,
        spec: &EnvironmentSpec,
        out: Arc<dyn OutputSink>,
        cancel: CancellationToken,
    ) -> Result<Box<dyn JobEnvironment>, Error> {
        let key = (self.core.runner.docker.isolation.data_root == crate::config::DataRoot::Project)
            .then_some(WarmKey {
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
            let Some(slot) = slot else {
                // Nothing to take: start filling while this job starts its own sidecar.
                pool.refill(&self.core);
                return self.cold(spec, out, cancel, followup).await;
            };
            // The slot's replacement starts once this job's first step is done (a real job's
            // first step is its clone), at the latest after REFILL_DEFER_MAX: its container
            // start on the host daemon and its boot would otherwise compete with the job's
            // own start on the host's CPUs (measured: noop step_script 0.58-0.95 s with the
            // replacement starting at once, 0.42-0.52 s without it). Jobs arrive a poll
            // interval apart at the least, so the next one rarely comes sooner.
            let mut env = DindEnv::from_slot(slot);
            let refill = after_first_step(&env.state, {
                let (pool, core) = (Arc::clone(pool), Arc::clone(&self.core));
                move || pool.refill(&core)
            });
            let attached = tokio::select! {
                biased;
                _ = cancel.cancelled() => Err(Error::Canceled),
                r = self.core.attach(&mut env, spec, &out) => r,
            };
            if attached.is_err() {
                refill.fire();
            }
            return settle(env, attached, &out, followup).await;
        }
        self.cold(spec, out, cancel, followup).await
    }

    async fn warm_up(&self, runner_id: &str) {
        self.core.prepare_golden(runner_id);
        if let Some(pool) = &self.pool {
            pool.start(&self.core, runner_id);
            pool.refill(&self.core);
        }
    }

    fn set_job_cap(&self, cap: usize) {
        if let Some(pool) = &self.pool {
            let limit = self.core.runner.limit;
            pool.set_job_cap(if limit > 0 { cap.min(limit) } else { cap });
        }
    }

    fn pool_target(&self) -> Option<usize> {
        self.pool.as_ref().map(|p| p.target())
    }

    fn standby_ids(&self) -> Vec<u64> {
        self.pool
            .as_ref()
            .map(|p| p.standby_ids())
            .unwrap_or_default()
    }

    fn kept_ids(&self) -> Vec<u64> {
        self.pool.as_ref().map(|p| p.kept_ids()).unwrap_or_default()
    }

    async fn shutdown(&self) -> TeardownReport {
        let mut report = match &self.pool {
            Some(pool) => pool.shutdown().await,
            None => TeardownReport::default(),
        };
        // The root store this backend mounted goes with it (its image file stays).
        if let Some(e) = self.core.close_store().await {
            report.failures.push(e);
        }
        report
    }
}

/// The longest a pool start deferred to a job's first step waits (see [`after_first_step`]):
/// a job whose stages start late must not leave the pool short.
const REFILL_DEFER_MAX: Duration = Duration::from_secs(2);

/// Pool work a job's start should not compete with (a taken slot's replacement, the project's
/// next keyed slot): run once, by whichever comes first of the end of the job's first step,
/// [`REFILL_DEFER_MAX`], or `fire` (a failed prepare). The same run-once cell as the job's
/// own first-step hook.
type Deferred = Arc<FirstStepHook>;

/// Defers `f` to the end of the first step of the job `state` belongs to (see [`Deferred`]).
fn after_first_step(state: &JobState, f: impl FnOnce() + Send + 'static) -> Deferred {
    let d: Deferred = Arc::default();
    d.add(f);
    state.first_step.add({
        let d = Arc::clone(&d);
        move || d.fire()
    });
    tokio::spawn({
        let d = Arc::clone(&d);
        async move {
            tokio::time::sleep(REFILL_DEFER_MAX).await;
            d.fire();
        }
    });
    d
}

impl DindBackend {
    /// A job's own sidecar, started for it (no slot to take).
    async fn cold(
        &self,
        spec: &EnvironmentSpec,
        out: Arc<dyn OutputSink>,
        cancel: CancellationToken,
        followup: impl FnOnce(&DindEnv) -> Option<Followup>,
    ) -> Result<Box<dyn JobEnvironment>, Error> {
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
            limit_watch: None,
        };
        let built = tokio::select! {
            biased;
            _ = cancel.cancelled() => Err(Error::Canceled),
            r = self.core.build(&mut env, spec, &out) => r,
        };
        settle(env, built, &out, followup).await
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
            // The job holds its warm root now: its project's next sidecar starts on another,
            // once this job's first step is done (as a taken slot's replacement does).
            if let Some(f) = &env.followup {
                let per_key = f.core.runner.docker.isolation.data_root_per_key;
                let (pool, core, key, helper) = (
                    Arc::clone(&f.pool),
                    Arc::clone(&f.core),
                    f.key,
                    f.helper_image.clone(),
                );
                after_first_step(&env.state, move || {
                    pool.job_started(&core, key, helper, per_key)
                });
            }
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

/// A job's environment around its sidecar: started for it, or a pre-started one taken over.
impl Core {
    /// rootless: a watch for limits the job's daemon is asked for and cannot apply.
    fn limit_watch(&self, inner: Option<&Docker>) -> Option<super::sandbox_hint::LimitWatch> {
        if self.runner.docker.isolation.sidecar_profile != crate::config::SidecarProfile::Rootless {
            return None;
        }
        let sidecar = super::limits::JobLimits::of(&self.runner.docker).sidecar;
        inner.map(|d| super::sandbox_hint::LimitWatch::start(d.clone(), sidecar))
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
        // GIT_CLONE_PATH: the sidecar binds the project directory there (a sidecar of its
        // own is made for this job alone), so its daemon resolves the path like the job does.
        env.state.project_target = spec.clone_path.clone();
        // An ephemeral data root with preload images: a snapshot of the golden, if the store
        // works here (else the images are copied in after the boot, as before).
        let root = match env.warm {
            None => {
                self.job_root(&mut env.state, Some(&**out), &mut timings)
                    .await?
            }
            Some(_) => None,
        };
        let booted = self
            .boot(
                &mut env.state,
                BootPlan {
                    create_volume: env.warm.is_none() && root.is_none(),
                    warm_uid: env.warm.as_ref().and_then(|l| l.uid),
                    bind_root: root.clone(),
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
        if let Some(target) = &spec.clone_path {
            env.paths.project_dir = target.clone();
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
        if root.is_none() {
            self.preload(&booted.inner, &mut timings).await?;
        }
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
        env.limit_watch = self.limit_watch(env.inner.as_ref());
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
        let job = JobId::new(spec.job_id);
        let slot = JobId::new(env.state.naming.job_id);
        let sidecar = env.state.sidecar.clone().ok_or_else(|| Error::Other {
            context: "take a pre-started sidecar".to_string(),
            detail: "the slot has no sidecar".to_string(),
        })?;
        let builds = &self.runner.builds_dir;
        let links =
            crate::paths::job_paths(builds, job).map_err(other_paths("create job directories"))?;
        let real =
            crate::paths::job_paths(builds, slot).map_err(other_paths("create job directories"))?;
        // The job's paths inside its own daemon (`sidecar_links`), so `-v $CI_PROJECT_DIR:/app`
        // resolves there. Planned here, so a bad path fails the prepare before anything is made.
        let sidecar_links = super::sidecar_links::SidecarLinks::plan(
            builds,
            &links,
            &real,
            spec.clone_path.as_deref(),
        )
        .map_err(|detail| Error::Other {
            context: LINK_IN_DAEMON.to_string(),
            detail,
        })?;
        // Recorded before they exist: teardown removes the links (never what they point to).
        env.state.paths = Some(links.clone());
        env.paths = links;

        // The job's images and the links on the host, side by side, before the job goes on.
        // The links inside the sidecar are for the job's own daemon, so only build scripts
        // wait for them (`JobState::build_gate`): they are made while the helper clones and
        // the first build container is created. The sidecar's CPU weight comes after them and
        // nothing waits for it: the engine serializes requests on one container (the two took
        // ~0.07 s together here, and build scripts waited for both: 0.04 s between a build
        // container's create and its start), and a daemon at the slot's low weight for a few
        // more milliseconds only matters on a host already busy.
        let checks = async {
            let t = Instant::now();
            let images = job_images(spec);
            let checked = futures::future::join_all(
                images
                    .iter()
                    .map(|(img, role)| super::state::require_image(&self.docker, img, role)),
            )
            .await;
            checked.into_iter().collect::<Result<Vec<()>, Error>>()?;
            Ok::<_, Error>(t.elapsed())
        };
        let host_links = async {
            let t = Instant::now();
            let b = builds.clone();
            super::naming::detached(&env.state.inflight, async move {
                crate::paths::link_job_dirs(&b, job, slot).await
            })
            .await
            .map_err(other_paths("create job directories"))?;
            Ok::<_, Error>(t.elapsed())
        };
        let opener = env.state.build_gate.close().await;
        {
            let (docker, sidecar) = (self.docker.clone(), sidecar.clone());
            env.state.inflight.spawn(async move {
                let t = Instant::now();
                let linked = sidecar_links.make(&docker, &sidecar).await;
                if let Ok(how) = &linked {
                    tracing::debug!(
                        sidecar = %sidecar,
                        how,
                        ms = t.elapsed().as_millis() as u64,
                        "pre-started sidecar linked to the job's directories"
                    );
                }
                opener.open(linked.map(|_| ()).map_err(|detail| Error::Other {
                    context: LINK_IN_DAEMON.to_string(),
                    detail,
                }));
                // The job's own now (after a failure too): the sidecar gets the default CPU
                // weight back.
                if let Err(e) = docker.set_cpu_shares(&sidecar, JOB_CPU_SHARES).await {
                    tracing::warn!(
                        sidecar = %sidecar,
                        error = %e,
                        "could not give the pre-started sidecar its CPU weight; the job's daemon \
                         keeps the low weight of a waiting slot"
                    );
                }
            });
        }
        let (checks, host_links) = tokio::join!(checks, host_links);
        timings.push_elapsed("checks", checks?);
        timings.push_elapsed("dirs", host_links?);
        if let Some(target) = &spec.clone_path {
            env.state.project_target = Some(target.clone());
            env.paths.project_dir = target.clone();
        }
        env.state.dir_sources = Some(real);

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
                    "Using the warm data root {} ({}; the sidecar was started on it ahead of \
                     this job, for the project's next job)\n",
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
        env.limit_watch = self.limit_watch(env.inner.as_ref());
        Ok(())
    }

    /// Takes the job's warm data root, or says why it runs on an ephemeral one.
    async fn warm_root(
        &self,
        spec: &EnvironmentSpec,
        inflight: &tokio_util::task::TaskTracker,
        out: &Arc<dyn OutputSink>,
    ) -> Option<super::data_root::WarmLease> {
        let key = WarmKey {
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

/// What failed when a pooled job's links inside its sidecar could not be planned or made.
const LINK_IN_DAEMON: &str = "link the job's directories in its daemon";

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
    /// rootless: says in the trace when the job's daemon drops a container's limits.
    limit_watch: Option<super::sandbox_hint::LimitWatch>,
}

/// A sidecar to pre-start on a warm data root after its job (see `pool.rs`).
struct Followup {
    pool: Arc<Pool>,
    core: Arc<Core>,
    key: WarmKey,
    helper_image: String,
}

impl DindEnv {
    /// A job environment around a pre-started sidecar; [`Core::attach`] completes it.
    pub(super) fn from_slot(slot: Slot) -> Self {
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
            limit_watch: None,
        }
    }
}

impl DindEnv {
    /// Teardown with the warm data root's extra steps: its dockerd is stopped gracefully
    /// before the ordered teardown (which never removes a warm volume), then the volume is
    /// measured against its cap and its lock released.
    async fn finish(mut self) -> TeardownReport {
        // The runner's own connections to the job's daemon go first: a graceful dockerd
        // stop (warm roots) waits up to 5 s for streams still open, and the limit watch's
        // event stream is one (measured: a rootless warm sidecar stopped in 6.3 s with it
        // open, 0.4 s without).
        drop(self.limit_watch.take());
        drop(self.inner.take());
        let followup = self.followup.take();
        let report = finish_parts(self.state, self.warm.take()).await;
        if let Some(f) = followup {
            let per_key = f.core.runner.docker.isolation.data_root_per_key;
            f.pool.prestart(&f.core, f.key, f.helper_image, per_key);
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
        // `paths` may name GIT_CLONE_PATH, a place only containers see: the state's are real.
        self.state
            .dir_sources
            .as_ref()
            .or(self.state.paths.as_ref())
            .unwrap_or(&self.paths)
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
        let Some(w) = &self.limit_watch else {
            return self.state.run_script(req, out, cancel).await;
        };
        w.step_started(out.clone());
        let r = self.state.run_script(req, out, cancel).await;
        w.step_ended();
        r
    }

    async fn run_script_as(
        &self,
        req: ScriptRequest,
        user: &super::ScriptUser,
        out: Arc<dyn OutputSink>,
        cancel: CancellationToken,
    ) -> Result<i32, Error> {
        let Some(w) = &self.limit_watch else {
            return self.state.run_script_as(req, user, out, cancel).await;
        };
        w.step_started(out.clone());
        let r = self.state.run_script_as(req, user, out, cancel).await;
        w.step_ended();
        r
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
        super::EnvironmentResources {
            // A pre-started sidecar's start was not this job's wait.
            sidecar_ready: self.ready_after.filter(|_| self.born.is_none()),
            ..self.state.resources(&self.paths)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_env_points_at_the_sidecar() {
        let e = dind_job_env();
        assert!(e.contains(&("DOCKER_HOST".to_string(), "tcp://docker:2376".to_string())));
        assert!(e.contains(&("DOCKER_TLS_VERIFY".to_string(), "1".to_string())));
    }
}
