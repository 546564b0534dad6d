//! The runner side of the bench: what runs one job. The lead implements [`BenchTarget`] with
//! the real pipeline; tests use a fake.

use super::scenario::Scenario;
use crate::config::IsolationMode;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Fault injection for one job (the teardown scenario). The faults fire at the *fault point*:
/// the first line of the job's output that is exactly `fault_marker`, or without a marker the
/// first script line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobHooks {
    /// At the fault point, fire the job's graceful cancel (`JobControl::cancel_gracefully`),
    /// as GitLab does for an interruptible job.
    pub cancel_mid_script: bool,
    /// At the fault point, SIGKILL the job's sidecar (dind mode). In shared-socket mode there
    /// is no sidecar: kill the job container's first service instead, or nothing, and say so
    /// in `RunSample::notes`.
    pub kill_sidecar_mid_script: bool,
    /// A line the job's script prints once it has started what the faults should catch
    /// mid-flight (the teardown job's long-lived container and network). Firing at the first
    /// script line instead races the script's first command, and a job cancelled before it
    /// started anything tests nothing.
    pub fault_marker: Option<&'static str>,
}

/// One job to run.
#[derive(Debug, Clone)]
pub struct JobSpec {
    /// The scenario it belongs to.
    pub scenario: Scenario,
    /// The local project (`bench/scenarios/<project>`), to be run like `runner exec`.
    pub project_dir: PathBuf,
    /// Job name in the project's `.gitlab-ci.yml`.
    pub job_name: String,
    /// Which setup to run it in.
    pub mode: IsolationMode,
    /// Faults to inject.
    pub hooks: JobHooks,
    /// A warm-up run (measured but discarded).
    pub warmup: bool,
    /// Round number (0-based, warm-up rounds included).
    pub round: usize,
    /// Position in a batch (concurrent, teardown); 0 otherwise.
    pub index: usize,
}

/// How the job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleOutcome {
    /// The job passed.
    Success,
    /// The job failed (script or system).
    Failed,
    /// The job was cancelled (expected for `cancel_mid_script`).
    Canceled,
}

/// What the target measured for one job.
#[derive(Debug, Clone)]
pub struct RunSample {
    /// How the job ended.
    pub outcome: SampleOutcome,
    /// Time to first script line: job handed to the pipeline → first byte of the user
    /// `script`'s output. `None` if the script never printed.
    pub ttfsl: Option<Duration>,
    /// Job handed to the pipeline → pipeline returned (teardown included).
    pub wall: Duration,
    /// Job handed to the pipeline → its outcome known and its log finished, the moment the
    /// daemon sends the final state to GitLab (the teardown runs after it): the job's time
    /// as a pipeline sees it. `None` when the target cannot tell.
    pub final_state: Option<Duration>,
    /// Seconds per pipeline stage (`prepare_executor`, `dind_ready`, `step_script`,
    /// `dind_teardown`, …).
    pub stages: BTreeMap<String, f64>,
    /// Peak memory of the job's containers (cgroup peak), bytes.
    pub peak_mem_job_bytes: Option<u64>,
    /// Peak memory of the sidecar (cgroup peak), bytes; `None` in shared-socket mode.
    pub peak_mem_sidecar_bytes: Option<u64>,
    /// Free-form remarks for the report (e.g. which hook fired).
    pub notes: Vec<String>,
}

/// A failure of the target itself (could not even run the job).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TargetError(pub String);

/// What the target knows about the Docker side of the host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetInfo {
    /// Host Docker Engine version.
    pub docker_engine: Option<String>,
    /// containerd version.
    pub containerd: Option<String>,
    /// Storage driver of the host daemon.
    pub storage_driver: Option<String>,
    /// Storage driver of the per-job daemons (overlay2 expected; vfs makes a run invalid).
    pub inner_storage_driver: Option<String>,
    /// Registry mirror configured for both modes, if any.
    pub registry_mirror: Option<String>,
}

/// Runs bench jobs. Implemented by the lead over the real job pipeline.
#[async_trait::async_trait]
pub trait BenchTarget: Send + Sync {
    /// Versions and drivers for the report header. Called once.
    async fn describe(&self) -> TargetInfo;

    /// Called before every job (warm-ups included), outside the measured time: e.g. prune the
    /// shared daemon's build cache for [`super::BuildCache::Cold`].
    async fn prepare(&self, _job: &JobSpec) -> Result<(), TargetError> {
        Ok(())
    }

    /// Runs one job to its end (teardown included) and measures it.
    async fn run_job(&self, job: &JobSpec) -> Result<RunSample, TargetError>;

    /// Counts objects this benchmark left on the host in `mode` (containers, networks, volumes,
    /// cert dirs, firewall rules carrying the bench labels). Called after every job.
    async fn leftovers(&self, mode: IsolationMode) -> Result<u64, TargetError>;
}
