//! The job pipeline: prepare -> get sources -> restore cache -> steps -> after_script -> save
//! cache -> artifacts -> teardown, the same for `run`, `exec` and `bench`.

use crate::config::RunnerConfig;
use crate::gitlab::types::JobResponse;
use crate::trace::TraceSink;
use std::sync::Arc;

// Defined below gitlab/ and job/ so the wire layer and metrics can name a job's end without
// importing the pipeline; re-exported here, where callers have always found them.
pub use crate::outcome::{FailureReason, JobControl, JobOutcome};

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

    /// Like [`JobExecutor::execute`], but returns as soon as the job's last stage is done and
    /// its log is finished: the environment's teardown comes back as a [`PendingTeardown`] for
    /// the caller to run afterwards (the daemon sends the final state to GitLab first). `None`
    /// when nothing is left to tear down. Teardown failures then reach the daemon's log and
    /// metrics, not the job's trace (it is closed by then). The default runs `execute`, whose
    /// teardown is already over when it returns.
    async fn execute_deferred(
        &self,
        job: JobResponse,
        runner: Arc<RunnerConfig>,
        trace: Arc<dyn TraceSink>,
        control: JobControl,
    ) -> (JobOutcome, Option<PendingTeardown>) {
        (self.execute(job, runner, trace, control).await, None)
    }

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
mod gitlab_store;
pub(crate) mod helper_files;
// The local `.gitlab-ci.yml` reader is GitLab-shaped code and lives in gitlab/; `runner exec` and
// the bench still reach it here.
pub use crate::gitlab::local_ci as local;
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
pub use pipeline::{CacheHook, PendingTeardown, Pipeline, StageContext};
pub use sources::LocalTree;
