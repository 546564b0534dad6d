//! The job pipeline: prepare -> get sources -> restore cache -> steps -> after_script -> save
//! cache -> artifacts -> teardown, the same for `run`, `exec` and `bench`.

use crate::config::RunnerConfig;
use crate::gitlab::types::JobResponse;
use crate::trace::TraceSink;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Why a job failed, in GitLab's words (`failure_reason` of the final update).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    /// The script exited non-zero.
    ScriptFailure,
    /// The runner or its infrastructure failed (sidecar, Docker, network, bad payload).
    RunnerSystemFailure,
    /// The job ran past its timeout.
    JobExecutionTimeout,
    /// An image could not be found or pulled.
    ImagePullFailure,
    /// The job asks for something this runner's config does not allow (a clone URL on a
    /// host:port the config does not name).
    RunnerUnsupported,
    /// Anything else.
    UnknownFailure,
}

impl FailureReason {
    /// The value GitLab expects in `failure_reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::ScriptFailure => "script_failure",
            FailureReason::RunnerSystemFailure => "runner_system_failure",
            FailureReason::JobExecutionTimeout => "job_execution_timeout",
            FailureReason::ImagePullFailure => "image_pull_failure",
            FailureReason::RunnerUnsupported => "runner_unsupported",
            FailureReason::UnknownFailure => "unknown_failure",
        }
    }
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    /// Every step passed (or failed with `allow_failure`).
    Success,
    /// The job failed.
    Failed {
        /// Reason reported to GitLab.
        reason: FailureReason,
        /// Exit code of the failing script, when there was one.
        exit_code: Option<i32>,
    },
    /// GitLab or the operator cancelled the job.
    Canceled,
}

/// Cancellation handles of one running job.
#[derive(Debug, Clone, Default)]
pub struct JobControl {
    /// `Job-Status: canceling` or SIGTERM: stop the script, still run `after_script` and teardown.
    pub cancel_gracefully: CancellationToken,
    /// `Job-Status: canceled`, 403 or a forced shutdown: stop now, run only teardown.
    pub abort: CancellationToken,
}

/// Runs jobs. The daemon, `exec` and `bench` hold one of these; tests can swap it.
#[async_trait::async_trait]
pub trait JobExecutor: Send + Sync {
    /// Runs one job to its end, writing its log to `trace`. Never panics on bad payloads: a job
    /// that cannot run is a [`JobOutcome::Failed`] with a reason and a line in the trace.
    async fn execute(
        &self,
        job: JobResponse,
        runner: Arc<RunnerConfig>,
        trace: Arc<dyn TraceSink>,
        control: JobControl,
    ) -> JobOutcome;

    /// Called once before the first poll: backends with a warm pool start filling it for
    /// `runners`, labelled with `runner_id`. Returns at once.
    async fn warm_up(&self, _runners: &[RunnerConfig], _runner_id: &str) {}

    /// Called once after the last job ended: removes what was made ahead of jobs.
    async fn shutdown(&self) {}
}

pub mod artifacts;
pub mod cache_hook;
pub mod clone_path;
pub mod executor;
pub(crate) mod helper_files;
pub mod local;
pub mod pipeline;
pub mod pull;
pub mod script;
pub mod server_ca;
pub mod services;
pub mod sources;
pub mod spec;
mod stage;
mod stages;
pub mod staging;
mod transfer;
pub mod trust;
mod user;
pub mod vars;

pub use artifacts::{ArtifactError, ArtifactStore, JobRef, LocalArtifactStore};
pub use cache_hook::LocalCache;
pub use executor::RunnerExecutor;
pub use pipeline::{CacheHook, Pipeline, StageContext};
pub use sources::LocalTree;
