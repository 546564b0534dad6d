//! How a job ends and how it is stopped: the words the GitLab wire layer, the pipeline and the
//! metrics share. A module of its own below `gitlab/`, `job/` and `metrics/`, so none of them
//! imports another to name a job's outcome.

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
