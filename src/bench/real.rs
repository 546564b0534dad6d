//! The real [`BenchTarget`]: each bench job runs through the same [`Pipeline`] as `runner run`
//! and `runner exec`, with the backend `isolation::backend_for_in` builds for the mode.
//!
//! What it measures, and how:
//! - **TTFSL**: a trace sink timestamps every write. TTFSL is the time from the pipeline call
//!   to the write that carries the first byte of the job's `$ <first command>` echo inside the
//!   `step_script` section. The job's own shell prints that echo, so it is the first byte the
//!   job container produces for the user's script.
//! - **Stages**: the sink times each `section_start`/`section_end` marker pair as it passes
//!   (sections are always on for local payloads); the dind backend's prepare breakdown line
//!   (`Job docker daemon ready … [network …, …]`) adds the sub-stages.
//! - **Peak memory**: a watcher reads `memory.max_usage_in_bytes` of every running container's
//!   cgroup (v1: `<memory cgroup>/docker/<id>/`, v2: `memory.peak`) every 100 ms and keeps the
//!   highest value per bench job, split into sidecar and the rest. Script containers that live
//!   less than one poll can be missed; the sidecar (whose cgroup includes everything the inner
//!   daemon runs) cannot.
//! - **Leftovers**: containers, networks and volumes carrying this run's per-mode runner id,
//!   plus job and certificate directories under the bench's own builds and state dirs, plus (in
//!   shared-socket mode) whatever the scenario jobs started on the host with a `bench-job` label.

mod mem;
pub mod registry;
mod sink;

use super::target::{BenchTarget, JobSpec, RunSample, SampleOutcome, TargetError, TargetInfo};
use crate::config::{DataRoot, IsolationMode, RunnerConfig};
use crate::docker::{Docker, LABEL_JOB, LABEL_ROLE};
use crate::isolation::{
    EnvironmentResources, EnvironmentSpec, Isolation, JobEnvironment, OutputSink, TeardownReport,
};
use crate::job::local::{self, LocalContext};
use crate::job::{JobControl, JobExecutor, JobOutcome, LocalArtifactStore, LocalTree, Pipeline};
use crate::secret::Secret;
use crate::trace::TraceSink;
use mem::*;
use sink::*;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Label the scenario jobs put on what they start themselves (teardown scenario).
const SCENARIO_LABEL: &str = "bench-job";
/// Bench job ids start above this, far from real GitLab ids.
const JOB_ID_FLOOR: u64 = 900_000_000;
/// Job ids per bench run.
const JOB_ID_BLOCK: u64 = 100_000;
/// Blocks to choose from (ids stay below 1 800 000 000).
const JOB_ID_BLOCKS: u64 = 9_000;

/// The job ids of one bench run: a block at a random offset. Scenario jobs name and label
/// what they start after `$CI_JOB_ID` (`bench-net-<id>`, `bench-compose-<id>`, the
/// `bench-job=<id>` label), which in shared-socket mode lands on the host daemon: two benches
/// on one host (the lead's and a helper's) must neither collide on those names nor count or
/// remove each other's objects.
struct JobIds {
    base: u64,
    next: AtomicU64,
}

impl JobIds {
    fn new() -> JobIds {
        let pick = (uuid::Uuid::new_v4().as_u128() % u128::from(JOB_ID_BLOCKS)) as u64;
        JobIds::at(JOB_ID_FLOOR + pick * JOB_ID_BLOCK)
    }

    fn at(base: u64) -> JobIds {
        JobIds {
            base,
            next: AtomicU64::new(1),
        }
    }

    fn next(&self) -> u64 {
        self.base + self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether a `bench-job` label value names a job of this run.
    fn owns_label(&self, labels: &HashMap<String, String>) -> bool {
        labels
            .get(SCENARIO_LABEL)
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|id| id > self.base && id < self.base + JOB_ID_BLOCK)
    }
}

/// Poll interval of the memory watcher.
const MEM_POLL: Duration = Duration::from_millis(100);

fn terr(what: &str) -> impl FnOnce(String) -> TargetError + '_ {
    move |e| TargetError(format!("{what}: {e}"))
}

/// One mode's setup.
struct ModeSetup {
    runner: Arc<RunnerConfig>,
    runner_id: String,
    backend: Arc<dyn Isolation>,
    state_dir: PathBuf,
    /// dind only: the same entry with the other `data_root`, for scenarios that pin theirs
    /// ([`super::Scenario::data_root_override`]). Same runner id, state dir and builds dir, so
    /// leftovers and the memory watcher see these jobs like any other.
    pinned: Vec<(DataRoot, Arc<dyn Isolation>, Arc<RunnerConfig>)>,
}

impl ModeSetup {
    /// The backend and runner entry for a job whose scenario wants `data_root` (`None`: the
    /// config's).
    fn pick(&self, data_root: Option<DataRoot>) -> (Arc<dyn Isolation>, Arc<RunnerConfig>) {
        data_root
            .filter(|d| *d != self.runner.docker.isolation.data_root)
            .and_then(|d| self.pinned.iter().find(|(p, _, _)| *p == d))
            .map(|(_, b, r)| (b.clone(), r.clone()))
            .unwrap_or_else(|| (self.backend.clone(), self.runner.clone()))
    }
}

/// The bench target over the real pipeline.
pub struct RealTarget {
    docker: Docker,
    modes: Vec<(IsolationMode, ModeSetup)>,
    /// What each job's environment made, by job id (see [`Recorded`]).
    seen: Arc<Mutex<HashMap<u64, EnvironmentResources>>>,
    work: PathBuf,
    /// Where every job's full trace is written, when asked (`--trace-dir`).
    trace_dir: Option<PathBuf>,
    job_ids: JobIds,
    mem: Arc<MemWatcher>,
    watcher: tokio::task::JoinHandle<()>,
    /// Variables added to every job of a mode (the compose-heavy registry's address).
    variables: Vec<(IsolationMode, String, String)>,
}

impl Drop for RealTarget {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

/// The runner entry the bench uses when no `-c` file is given: the test images, the default
/// sidecar profile (`rootless`; `--sidecar-profile` picks others), the bench's busybox
/// preloaded so inner daemons never pull, and builds/state dirs under `work`.
pub fn builtin_runner(work: &Path) -> RunnerConfig {
    let mut r = RunnerConfig {
        name: "bench".to_string(),
        builds_dir: work.join("builds"),
        ..RunnerConfig::default()
    };
    r.docker.image = "isolated-runner/job:test".to_string();
    r.docker.isolation.preload_images = vec!["isolated-runner/busybox:test".to_string()];
    // What a config file gets without a `warm_pool` line: the pool follows demand.
    r.docker.isolation.warm_pool_auto = true;
    r
}

impl RealTarget {
    /// Sets up one backend per mode from `base` (the `-c` entry or [`builtin_runner`]). Builds
    /// and state dirs go under `work` (one subdirectory per mode), so leftovers can be counted.
    pub async fn new(
        base: &RunnerConfig,
        work: &Path,
        modes: &[IsolationMode],
    ) -> Result<RealTarget, TargetError> {
        let docker = Docker::connect(base.docker.host.as_deref())
            .await
            .map_err(|e| TargetError(format!("connect to the host docker daemon: {e}")))?;
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let tag = &tag[..8];
        let seen: Arc<Mutex<HashMap<u64, EnvironmentResources>>> = Arc::default();
        let mut setups: Vec<(IsolationMode, ModeSetup)> = Vec::new();
        for &mode in modes {
            let mut r = base.clone();
            r.docker.isolation.mode = mode;
            let dir = work.join(mode.as_str());
            r.builds_dir = dir.join("builds");
            let state_dir = dir.join("state");
            for d in [&r.builds_dir, &state_dir] {
                tokio::fs::create_dir_all(d)
                    .await
                    .map_err(|e| TargetError(format!("create {}: {e}", d.display())))?;
            }
            let backend = crate::isolation::backend_for_in(&r, &state_dir)
                .await
                .map_err(|e| TargetError(format!("set up the {} backend: {e}", mode.as_str())))?;
            let backend: Arc<dyn Isolation> = Arc::new(Recorded {
                inner: backend,
                seen: seen.clone(),
            });
            let runner_id = format!("bench-{tag}-{}", short_mode(mode));
            // Pre-started sidecars (warm_pool) fill while the bench sets up.
            backend.warm_up(&runner_id).await;
            let mut pinned = Vec::new();
            if mode == IsolationMode::Dind {
                for data_root in [DataRoot::Ephemeral, DataRoot::Project] {
                    if data_root == r.docker.isolation.data_root {
                        continue;
                    }
                    let mut p = r.clone();
                    p.docker.isolation.data_root = data_root;
                    let b = crate::isolation::backend_for_in(&p, &state_dir)
                        .await
                        .map_err(|e| {
                            TargetError(format!("set up the dind backend ({data_root:?}): {e}"))
                        })?;
                    let b: Arc<dyn Isolation> = Arc::new(Recorded {
                        inner: b,
                        seen: seen.clone(),
                    });
                    pinned.push((data_root, b, Arc::new(p)));
                }
            }
            setups.push((
                mode,
                ModeSetup {
                    runner: Arc::new(r),
                    runner_id,
                    backend,
                    state_dir,
                    pinned,
                },
            ));
        }
        let mem = Arc::new(MemWatcher::default());
        let watcher = tokio::spawn(mem.clone().run(
            docker.clone(),
            setups.iter().map(|(_, s)| s.runner_id.clone()).collect(),
        ));
        Ok(RealTarget {
            docker,
            modes: setups,
            seen,
            work: work.to_path_buf(),
            trace_dir: None,
            job_ids: JobIds::new(),
            mem,
            watcher,
            variables: Vec::new(),
        })
    }

    fn setup(&self, mode: IsolationMode) -> Result<&ModeSetup, TargetError> {
        self.modes
            .iter()
            .find(|(m, _)| *m == mode)
            .map(|(_, s)| s)
            .ok_or_else(|| TargetError(format!("mode {} was not set up", mode.as_str())))
    }

    /// Removes what this run's scenario jobs left on the host in shared-socket mode
    /// (containers and networks with a `bench-job` label naming one of its job ids): the host
    /// is left as found. Returns the count.
    pub async fn clean_scenario_objects(&self) -> u64 {
        let filter = vec![SCENARIO_LABEL.to_string()];
        let mut n = 0;
        if let Ok(list) = self.docker.list_containers(&filter).await {
            for c in list.iter().filter(|c| self.job_ids.owns_label(&c.labels)) {
                if matches!(self.docker.remove_container(&c.id).await, Ok(true)) {
                    n += 1;
                }
            }
        }
        if let Ok(list) = self.docker.list_networks(&filter).await {
            for net in list.iter().filter(|n| self.job_ids.owns_label(&n.labels)) {
                if matches!(self.docker.remove_network(&net.name).await, Ok(true)) {
                    n += 1;
                }
            }
        }
        n
    }

    /// Removes the sidecars the backends started ahead of jobs. Call once, at the end, before
    /// [`RealTarget::remove_warm_roots`] (a pre-started sidecar holds its warm root).
    pub async fn shutdown(&self) -> TeardownReport {
        let mut report = TeardownReport::default();
        let backends = self.modes.iter().flat_map(|(_, s)| {
            std::iter::once(s.backend.clone()).chain(s.pinned.iter().map(|(_, b, _)| b.clone()))
        });
        for b in backends {
            let r = b.shutdown().await;
            report.removed.extend(r.removed);
            report.failures.extend(r.failures);
        }
        report
    }

    /// Removes the warm data roots the bench's dind jobs kept (build-warm): they carry no
    /// `managed` label, so neither job teardown nor the leftover count sees them, and the bench
    /// must leave the engine as it found it. The bench's runner id is unique to this run, so
    /// only its own volumes match. Returns (removed, failures).
    pub async fn remove_warm_roots(&self) -> (Vec<String>, Vec<String>) {
        let mut removed = Vec::new();
        let mut failures = Vec::new();
        for (_, s) in self.modes.iter().filter(|(m, _)| *m == IsolationMode::Dind) {
            let r = crate::isolation::data_root::remove_expired(
                &self.docker,
                &s.runner_id,
                &s.state_dir,
                None,
                false,
            )
            .await;
            removed.extend(r.removed);
            failures.extend(r.failures);
            // `kept` here means a job still holds the root: none should, the bench is over.
            failures.extend(r.kept.into_iter().map(|v| format!("{v} is still in use")));
        }
        (removed, failures)
    }

    /// Writes every job's trace to `dir` (created if missing) as
    /// `<scenario>-<mode>-r<round>-i<index>-<job id>.log`.
    pub fn with_trace_dir(mut self, dir: PathBuf) -> Self {
        self.trace_dir = Some(dir);
        self
    }

    /// Adds `(mode, key, value)` variables to every job of that mode (public, unmasked).
    pub fn with_variables(mut self, vars: Vec<(IsolationMode, String, String)>) -> Self {
        self.variables.extend(vars);
        self
    }

    /// The bench's work directory.
    pub fn work_dir(&self) -> &Path {
        &self.work
    }
}

fn short_mode(mode: IsolationMode) -> &'static str {
    match mode {
        IsolationMode::Dind => "dind",
        IsolationMode::SharedSocket => "shared",
    }
}

#[async_trait::async_trait]
impl BenchTarget for RealTarget {
    async fn describe(&self) -> TargetInfo {
        let (engine, containerd) = docker_versions().await;
        let storage = self.docker.describe().await.ok().map(|(_, d)| d);
        let mirror = self
            .modes
            .iter()
            .find_map(|(_, s)| s.runner.docker.isolation.registry_mirror.clone());
        TargetInfo {
            docker_engine: engine,
            containerd,
            storage_driver: storage,
            // The sidecar's /var/lib/docker is a named volume on the host filesystem, so the
            // inner daemon picks overlay2 (checked by hand: see docs/benchmarks.md).
            inner_storage_driver: self
                .modes
                .iter()
                .any(|(m, _)| *m == IsolationMode::Dind)
                .then(|| "overlay2 (on a host volume)".to_string()),
            registry_mirror: mirror,
        }
    }

    async fn prepare(&self, job: &JobSpec) -> Result<(), TargetError> {
        // Cold builds: this host is shared with other people's tests, so the bench does not
        // prune the host daemon's build cache; the shared-socket "cold" build is warm after its
        // first run, and docs/benchmarks.md says so.
        let _ = job;
        Ok(())
    }

    async fn run_job(&self, spec: &JobSpec) -> Result<RunSample, TargetError> {
        let setup = self.setup(spec.mode)?;
        let text = tokio::fs::read_to_string(spec.project_dir.join(".gitlab-ci.yml"))
            .await
            .map_err(|e| TargetError(format!("read {}: {e}", spec.project_dir.display())))?;
        let ci = local::parse(&text).map_err(|e| terr("parse .gitlab-ci.yml")(e.to_string()))?;
        let job_id = self.job_ids.next();
        let ctx = LocalContext {
            job_id,
            token: Secret::new(format!("glcbt-bench-{}", uuid::Uuid::new_v4().simple())),
            project_name: spec.scenario.project.to_string(),
            commit_sha: None,
            ref_name: None,
            config_path: ".gitlab-ci.yml".to_string(),
            // Bench scenarios use no `cache:key:files`; keep payload building off the disk.
            checkout: None,
        };
        let mut built = ci
            .build_payload(&spec.job_name, &ctx)
            .map_err(|e| terr("build the payload")(e.to_string()))?;
        for (_, key, value) in self.variables.iter().filter(|(m, _, _)| *m == spec.mode) {
            built
                .payload
                .variables
                .push(crate::gitlab::types::JobVariable {
                    key: key.clone(),
                    value: value.clone(),
                    public: true,
                    ..Default::default()
                });
        }
        let (backend, runner) = setup.pick(spec.scenario.data_root_override());
        let pipeline = Pipeline {
            backend,
            artifacts: Arc::new(LocalArtifactStore {
                root: self.work.join("artifacts"),
            }),
            cache: None,
            local_tree: Some(LocalTree {
                root: spec.project_dir.clone(),
                files: None,
            }),
            runner_id: setup.runner_id.clone(),
            staging_root: crate::job::staging::staging_root(&setup.state_dir),
            running: Default::default(),
        };
        let control = JobControl::default();
        let start = Instant::now();
        let (fault_tx, fault_rx) = tokio::sync::oneshot::channel();
        let sink = Arc::new(BenchSink::new(start, fault_tx, spec.hooks.fault_marker));
        let mut notes = Vec::new();
        let hook = if spec.hooks.cancel_mid_script || spec.hooks.kill_sidecar_mid_script {
            let hooks = spec.hooks;
            let control = control.clone();
            let docker = self.docker.clone();
            let seen = self.seen.clone();
            let mode = spec.mode;
            Some(tokio::spawn(async move {
                if fault_rx.await.is_err() {
                    return match hooks.fault_marker {
                        Some(m) => format!("hook not fired: the job never printed {m:?}"),
                        None => "hook not fired: the script never printed".to_string(),
                    };
                }
                let mut said = Vec::new();
                if hooks.kill_sidecar_mid_script {
                    if mode == IsolationMode::Dind {
                        // The job's sidecar, as its environment recorded it (a pre-started
                        // one carries its slot's labels, not the job's).
                        let sidecar = seen
                            .lock()
                            .ok()
                            .and_then(|m| m.get(&job_id).and_then(|r| r.sidecar.clone()));
                        let killed = match sidecar {
                            Some(id) => usize::from(docker.kill_container(&id).await.is_ok()),
                            None => 0,
                        };
                        said.push(format!("SIGKILLed {killed} sidecar(s) mid-script"));
                    } else {
                        said.push("no sidecar to kill in shared-socket mode".to_string());
                    }
                }
                if hooks.cancel_mid_script {
                    control.cancel_gracefully.cancel();
                    said.push("cancelled mid-script".to_string());
                }
                said.join("; ")
            }))
        } else {
            None
        };
        // As the daemon runs it: the outcome first (the final state goes to GitLab then), the
        // teardown after it; both times are reported.
        let (outcome, pending) = pipeline
            .execute_deferred(built.payload, runner, sink.clone(), control)
            .await;
        let final_state = start.elapsed();
        if let Some(p) = pending {
            for f in p.run().await.failures {
                notes.push(format!("teardown: {f}"));
            }
        }
        let wall = start.elapsed();
        if let Some(h) = hook {
            h.abort();
            if let Ok(note) = h.await {
                notes.push(note);
            }
        }
        let (ttfsl, stages) = sink.results();
        if let Some(dir) = &self.trace_dir {
            let name = format!(
                "{}-{}-r{}-i{}-{job_id}.log",
                spec.scenario.name,
                short_mode(spec.mode),
                spec.round,
                spec.index
            );
            let written = async {
                tokio::fs::create_dir_all(dir).await?;
                tokio::fs::write(dir.join(&name), sink.text()).await
            }
            .await;
            if let Err(e) = written {
                notes.push(format!("trace not saved to {}: {e}", dir.display()));
            }
        }
        if spec.mode == IsolationMode::Dind
            && let Some(note) = warm_root_note(&sink.text())
        {
            notes.push(note);
        }
        // Objects of a job on a pre-started sidecar carry the slot's id.
        let label_id = self
            .seen
            .lock()
            .ok()
            .and_then(|mut m| m.remove(&job_id))
            .and_then(|r| label_job_id(&r.labels))
            .unwrap_or(job_id);
        let (job_peak, sidecar_peak) = self.mem.take(label_id);
        let outcome = match outcome {
            JobOutcome::Success => SampleOutcome::Success,
            JobOutcome::Canceled => SampleOutcome::Canceled,
            JobOutcome::Failed { reason, exit_code } => {
                if spec.hooks.kill_sidecar_mid_script && spec.mode == IsolationMode::Dind {
                    notes.push(format!("failed as expected ({})", reason.as_str()));
                    SampleOutcome::Canceled
                } else {
                    notes.push(format!(
                        "failed: {}{}; trace tail: {}",
                        reason.as_str(),
                        exit_code.map(|c| format!(" exit {c}")).unwrap_or_default(),
                        sink.tail(600)
                    ));
                    SampleOutcome::Failed
                }
            }
        };
        Ok(RunSample {
            outcome,
            ttfsl,
            wall,
            final_state: Some(final_state),
            stages,
            peak_mem_job_bytes: job_peak,
            peak_mem_sidecar_bytes: if spec.mode == IsolationMode::Dind {
                sidecar_peak
            } else {
                None
            },
            notes,
        })
    }

    async fn leftovers(&self, mode: IsolationMode) -> Result<u64, TargetError> {
        let setup = self.setup(mode)?;
        // Sidecars started ahead of jobs (idle or being built) and the job networks kept for
        // them are not leftovers.
        let standby: HashSet<u64> = std::iter::once(&setup.backend)
            .chain(setup.pinned.iter().map(|(_, b, _)| b))
            .flat_map(|b| b.standby_ids().into_iter().chain(b.kept_ids()))
            .collect();
        let spare = |labels: &HashMap<String, String>| {
            labels
                .get(LABEL_JOB)
                .and_then(|j| j.parse::<u64>().ok())
                .is_some_and(|j| standby.contains(&j))
        };
        let f = crate::docker::label_filters(&setup.runner_id, None);
        let de = |e: crate::docker::Error| TargetError(e.to_string());
        // The sweepers' listing, so the bench counts exactly what the reaper would remove.
        let (objects, failures) = crate::cleanup::labelled::list_labelled(&self.docker, &f).await;
        if let Some(e) = failures.into_iter().next() {
            return Err(TargetError(e));
        }
        let mut n = objects.iter().filter(|o| !spare(&o.labels)).count() as u64;
        if mode == IsolationMode::SharedSocket {
            // Only this run's: another bench on the host has its own block of job ids.
            let s = vec![SCENARIO_LABEL.to_string()];
            let mine = |l: &HashMap<String, String>| self.job_ids.owns_label(l);
            let containers = self.docker.list_containers(&s).await.map_err(de)?;
            n += containers.iter().filter(|c| mine(&c.labels)).count() as u64;
            let networks = self.docker.list_networks(&s).await.map_err(de)?;
            n += networks.iter().filter(|net| mine(&net.labels)).count() as u64;
        }
        let spare_names: HashSet<std::ffi::OsString> = standby
            .iter()
            .flat_map(|&j| {
                let j = crate::paths::JobId::new(j);
                [
                    crate::paths::project_dir_name(j),
                    crate::paths::tmp_dir_name(j),
                    crate::paths::cert_dir_name(j),
                ]
            })
            .map(Into::into)
            .collect();
        n += count_entries(&setup.runner.builds_dir, &spare_names).await;
        n += count_entries(&setup.state_dir.join("certs"), &spare_names).await;
        Ok(n)
    }
}

/// The job id in a `io.isolated-runner.job=<id>` label filter.
fn label_job_id(filters: &[String]) -> Option<u64> {
    filters.iter().find_map(|f| {
        f.strip_prefix(LABEL_JOB)
            .and_then(|rest| rest.strip_prefix('='))
            .and_then(|id| id.parse().ok())
    })
}

/// The bench's view of a backend: records what each prepared environment made, so the
/// sidecar-kill hook and the memory watcher find a job's objects even when they carry a
/// pre-started sidecar's slot id instead of the job id.
struct Recorded {
    inner: Arc<dyn Isolation>,
    seen: Arc<Mutex<HashMap<u64, EnvironmentResources>>>,
}

#[async_trait::async_trait]
impl Isolation for Recorded {
    fn mode(&self) -> IsolationMode {
        self.inner.mode()
    }

    async fn prepare(
        &self,
        spec: &EnvironmentSpec,
        out: Arc<dyn OutputSink>,
        cancel: tokio_util::sync::CancellationToken,
    ) -> Result<Box<dyn JobEnvironment>, crate::isolation::Error> {
        let env = self.inner.prepare(spec, out, cancel).await?;
        if let Ok(mut m) = self.seen.lock() {
            m.insert(spec.job_id, env.resources());
        }
        Ok(env)
    }

    async fn ensure_images(
        &self,
        plan: &crate::isolation::images::PullPlan,
        out: Arc<dyn OutputSink>,
    ) -> Result<(), crate::isolation::Error> {
        self.inner.ensure_images(plan, out).await
    }

    async fn warm_up(&self, runner_id: &str) {
        self.inner.warm_up(runner_id).await
    }

    fn standby_ids(&self) -> Vec<u64> {
        self.inner.standby_ids()
    }

    fn kept_ids(&self) -> Vec<u64> {
        self.inner.kept_ids()
    }

    fn set_job_cap(&self, cap: usize) {
        self.inner.set_job_cap(cap)
    }

    fn pool_target(&self) -> Option<usize> {
        self.inner.pool_target()
    }

    async fn shutdown(&self) -> TeardownReport {
        self.inner.shutdown().await
    }
}

/// Engine and containerd versions from `docker version` (absent when the CLI is missing).
async fn docker_versions() -> (Option<String>, Option<String>) {
    let out = tokio::process::Command::new("docker")
        .args([
            "version",
            "--format",
            "{{.Server.Version}}|{{range .Server.Components}}{{if eq .Name \"containerd\"}}{{.Version}}{{end}}{{end}}",
        ])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .await;
    let Ok(out) = out else { return (None, None) };
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let mut it = text.splitn(2, '|');
    let some = |s: Option<&str>| {
        s.map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    (some(it.next()), some(it.next()))
}

/// Entries (recursively, directories only count themselves) under `dir`, 0 if it is missing;
/// entries named in `skip` (a pre-started sidecar's two directories and cert dir) are not counted.
async fn count_entries(dir: &Path, skip: &HashSet<std::ffi::OsString>) -> u64 {
    let Ok(mut rd) = tokio::fs::read_dir(dir).await else {
        return 0;
    };
    let mut n = 0;
    while let Ok(Some(e)) = rd.next_entry().await {
        if skip.contains(&e.file_name()) {
            continue;
        }
        let is_dir = e.file_type().await.map(|t| t.is_dir()).unwrap_or(false);
        if is_dir {
            // The per-runner cert root is not itself a leftover; what is inside it is.
            let inner = Box::pin(count_entries(&e.path(), skip)).await;
            n += if dir.ends_with("certs") { inner } else { 1 };
        } else {
            n += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink() -> BenchSink {
        let (tx, _rx) = tokio::sync::oneshot::channel();
        BenchSink::new(Instant::now(), tx, None)
    }

    #[test]
    fn the_fault_point_is_the_marker_line_not_its_echo() {
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let s = BenchSink::new(Instant::now(), tx, Some("bench: fault point"));
        s.append(b"\x1b[0Ksection_start:3:step_script\r\x1b[0K\x1b[36;1mExecuting\x1b[0;m\n");
        s.append(b"\x1b[32;1m$ echo started\x1b[0;m\nstarted\n");
        // The first script line is not the fault point when there is a marker.
        assert!(rx.try_recv().is_err());
        s.append(b"\x1b[32;1m$ echo \"bench: fault point\"\x1b[0;m\n");
        assert!(rx.try_recv().is_err());
        // Split across writes, as a stream may deliver it.
        s.append(b"bench: fault");
        assert!(rx.try_recv().is_err());
        s.append(b" point\r\n");
        assert!(rx.try_recv().is_ok());
        assert!(s.results().0.is_some());
    }

    #[test]
    fn first_script_line_is_the_echo_inside_step_script() {
        let s = sink();
        s.append(b"\x1b[0Ksection_start:1:prepare_executor\r\x1b[0K\x1b[36;1mPreparing\x1b[0;m\n");
        s.append(b"\x1b[32;1m$ not this\n");
        s.append(b"\x1b[0Ksection_end:2:prepare_executor\r\x1b[0K");
        assert!(s.results().0.is_none());
        s.append(b"\x1b[0Ksection_start:3:step_script\r\x1b[0K\x1b[36;1mExecuting\x1b[0;m\n");
        assert!(s.results().0.is_none());
        s.append(b"\x1b[32;1m$ true\x1b[0;m\n");
        let (ttfsl, stages) = s.results();
        assert!(ttfsl.is_some());
        assert!(stages.contains_key("prepare_executor"));
        s.append(b"\x1b[0Ksection_end:4:step_script\r\x1b[0K");
        assert!(s.results().1.contains_key("step_script"));
    }

    #[tokio::test]
    async fn cgroup_root_is_found_once_it_appears() {
        let dir = tempfile::tempdir().expect("tempdir");
        let late = dir.path().join("memory").join("docker");
        let other = dir.path().join("system.slice");
        let (late_s, other_s) = (
            late.to_string_lossy().into_owned(),
            other.to_string_lossy().into_owned(),
        );
        let candidates = [late_s.as_str(), other_s.as_str()];
        // An idle engine: no container has run yet, so its cgroup parent is missing.
        assert_eq!(memory_cgroup_root(&candidates).await, None);
        std::fs::create_dir_all(&late).expect("mkdir");
        assert_eq!(memory_cgroup_root(&candidates).await, Some(late.clone()));
        std::fs::create_dir_all(&other).expect("mkdir");
        assert_eq!(memory_cgroup_root(&candidates).await, Some(late));
    }

    #[test]
    fn job_ids_are_a_block_of_their_own() {
        let ids = JobIds::at(JOB_ID_FLOOR + 7 * JOB_ID_BLOCK);
        let first = ids.next();
        assert_eq!(first, JOB_ID_FLOOR + 7 * JOB_ID_BLOCK + 1);
        assert_eq!(ids.next(), first + 1);
        let label = |v: &str| HashMap::from([(SCENARIO_LABEL.to_string(), v.to_string())]);
        assert!(ids.owns_label(&label(&first.to_string())));
        // The neighbouring blocks belong to other bench runs.
        assert!(!ids.owns_label(&label(&(JOB_ID_FLOOR + 7 * JOB_ID_BLOCK).to_string())));
        assert!(!ids.owns_label(&label(&(JOB_ID_FLOOR + 8 * JOB_ID_BLOCK + 1).to_string())));
        assert!(!ids.owns_label(&label("not-a-number")));
        assert!(!ids.owns_label(&HashMap::new()));
        for _ in 0..100 {
            let base = JobIds::new().base;
            assert!((JOB_ID_FLOOR..JOB_ID_FLOOR + JOB_ID_BLOCKS * JOB_ID_BLOCK).contains(&base));
            assert_eq!((base - JOB_ID_FLOOR) % JOB_ID_BLOCK, 0);
        }
    }

    #[test]
    fn warm_root_lines_become_notes() {
        assert_eq!(
            warm_root_note("x\nUsing the warm data root ir-b-warm-p1-unprotected (warm)\n"),
            Some("data root: warm".to_string())
        );
        assert_eq!(
            warm_root_note("Using the warm data root ir-b-warm-p1-unprotected (new, cold)\n"),
            Some("data root: new, cold".to_string())
        );
        assert_eq!(
            warm_root_note(
                "The project's warm data root is in use by another job; this job uses an ephemeral one\n"
            ),
            Some("data root: warm root missed (in use by another job), ran ephemeral".to_string())
        );
        assert_eq!(warm_root_note("Job docker daemon ready\n"), None);
    }

    #[test]
    fn breakdown_line_becomes_dind_stages() {
        let mut st = BTreeMap::new();
        parse_backend_breakdown(
            "Job docker daemon ready in 2.1s (x) [network 0.12s, ready 1.90s]\n",
            &mut st,
        );
        assert_eq!(st.get("dind_network"), Some(&0.12));
        assert_eq!(st.get("dind_ready"), Some(&1.9));
    }
}
