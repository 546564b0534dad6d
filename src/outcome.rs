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
    /// The runner's or the job's configuration is wrong in a way only the runner can tell,
    /// before any script runs (a refused `GIT_CLONE_PATH`), as gitlab-runner reports it.
    RunnerConfigurationError,
    /// Anything else.
    UnknownFailure,
}

impl FailureReason {
    /// Every reason, to read one back from its name.
    const ALL: [FailureReason; 7] = [
        FailureReason::ScriptFailure,
        FailureReason::RunnerSystemFailure,
        FailureReason::JobExecutionTimeout,
        FailureReason::ImagePullFailure,
        FailureReason::RunnerUnsupported,
        FailureReason::RunnerConfigurationError,
        FailureReason::UnknownFailure,
    ];

    /// The reason named `name` (as [`FailureReason::as_str`] writes it), if it is one of ours.
    pub fn from_name(name: &str) -> Option<FailureReason> {
        Self::ALL.into_iter().find(|r| r.as_str() == name)
    }

    /// The value GitLab expects in `failure_reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::ScriptFailure => "script_failure",
            FailureReason::RunnerSystemFailure => "runner_system_failure",
            FailureReason::JobExecutionTimeout => "job_execution_timeout",
            FailureReason::ImagePullFailure => "image_pull_failure",
            FailureReason::RunnerUnsupported => "runner_unsupported",
            FailureReason::RunnerConfigurationError => "runner_configuration_error",
            FailureReason::UnknownFailure => "unknown_failure",
        }
    }

    /// What gitlab-runner sends instead when GitLab does not list this reason (its
    /// `failureReasonsCompatibilityMap`): a newer, narrower reason falls back to the older one
    /// it was split from.
    fn fallback(self) -> Option<FailureReason> {
        match self {
            FailureReason::ImagePullFailure => Some(FailureReason::RunnerSystemFailure),
            FailureReason::RunnerConfigurationError => Some(FailureReason::ScriptFailure),
            _ => None,
        }
    }

    /// The reason to send to a GitLab that knows `supported` (`features.failure_reasons`):
    /// this one when listed (or one of the three every GitLab accepts), else the first listed
    /// one of its fallbacks, else `unknown_failure`. An old GitLab that sends no list gets
    /// the reason as is.
    pub fn for_gitlab(self, supported: &[String]) -> FailureReason {
        if supported.is_empty() {
            return self;
        }
        let mut reason = Some(self);
        while let Some(r) = reason {
            let always = matches!(
                r,
                FailureReason::ScriptFailure
                    | FailureReason::RunnerSystemFailure
                    | FailureReason::JobExecutionTimeout
            );
            if always || supported.iter().any(|s| s == r.as_str()) {
                return r;
            }
            reason = r.fallback();
        }
        FailureReason::UnknownFailure
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

impl JobOutcome {
    /// A failure before or outside any script: no exit code to report.
    pub fn failed(reason: FailureReason) -> JobOutcome {
        JobOutcome::Failed {
            reason,
            exit_code: None,
        }
    }
}

/// Cancellation handles of one running job.
#[derive(Debug, Clone, Default)]
pub struct JobControl {
    /// `Job-Status: canceling` or SIGTERM: stop the script, still run `after_script` and teardown.
    pub cancel_gracefully: CancellationToken,
    /// `Job-Status: canceled`, 403 or a forced shutdown: stop now, run only teardown.
    pub abort: CancellationToken,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(reasons: &[&str]) -> Vec<String> {
        reasons.iter().map(|r| r.to_string()).collect()
    }

    #[test]
    fn reasons_gitlab_does_not_list_fall_back_like_gitlab_runners() {
        let old = list(&["script_failure", "runner_system_failure"]);
        let map = |r: FailureReason, l: &[String]| r.for_gitlab(l).as_str();
        assert_eq!(
            map(FailureReason::RunnerConfigurationError, &old),
            "script_failure"
        );
        assert_eq!(
            map(FailureReason::ImagePullFailure, &old),
            "runner_system_failure"
        );
        assert_eq!(
            map(FailureReason::RunnerUnsupported, &old),
            "unknown_failure"
        );
        // The three every GitLab accepts go as they are, listed or not.
        assert_eq!(
            map(FailureReason::JobExecutionTimeout, &old),
            "job_execution_timeout"
        );
        let new = list(&["script_failure", "runner_configuration_error"]);
        assert_eq!(
            map(FailureReason::RunnerConfigurationError, &new),
            "runner_configuration_error"
        );
        for r in FailureReason::ALL {
            assert_eq!(FailureReason::from_name(r.as_str()), Some(r));
        }
        assert_eq!(FailureReason::from_name("job_canceled"), None);
        // No list at all (a GitLab too old to send one): as is.
        assert_eq!(
            map(FailureReason::RunnerConfigurationError, &[]),
            "runner_configuration_error"
        );
    }
}
