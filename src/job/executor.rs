//! The executor `runner run` uses: the job pipeline with, per `[[runners]]` entry, the isolation
//! backend its config asks for and GitLab as the artifact store.

use super::{JobControl, JobExecutor, JobOutcome, Pipeline};
use crate::config::RunnerConfig;
use crate::gitlab::types::JobResponse;
use crate::gitlab::{ArtifactClient, Client, ClientOptions};
use crate::isolation::{self, Isolation};
use crate::job::{CacheHook, FailureReason};
use crate::trace::TraceSink;
use std::collections::HashMap;
use std::sync::Arc;

/// Runs jobs for the daemon. Backends are made on first use and kept, so a runner entry's
/// backend state (address allocations, image checks) lives as long as the daemon.
pub struct RunnerExecutor {
    runner_id: String,
    state_dir: std::path::PathBuf,
    client_options: ClientOptions,
    cache: Option<Arc<dyn CacheHook>>,
    backends: tokio::sync::Mutex<HashMap<String, Arc<dyn Isolation>>>,
}

impl RunnerExecutor {
    /// An executor labelling what it creates with `runner_id` (the runner's system id) and
    /// keeping per-job certificates under `state_dir`.
    pub fn new(
        runner_id: impl Into<String>,
        state_dir: std::path::PathBuf,
        client_options: ClientOptions,
        cache: Option<Arc<dyn CacheHook>>,
    ) -> Self {
        RunnerExecutor {
            runner_id: runner_id.into(),
            state_dir,
            client_options,
            cache,
            backends: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    async fn backend(&self, runner: &RunnerConfig) -> Result<Arc<dyn Isolation>, isolation::Error> {
        let key = format!("{}\n{}", runner.name, runner.url);
        let mut backends = self.backends.lock().await;
        if let Some(b) = backends.get(&key) {
            return Ok(b.clone());
        }
        let made = isolation::backend_for_in(runner, &self.state_dir).await?;
        backends.insert(key, made.clone());
        Ok(made)
    }
}

#[async_trait::async_trait]
impl JobExecutor for RunnerExecutor {
    async fn execute(
        &self,
        job: JobResponse,
        runner: Arc<RunnerConfig>,
        trace: Arc<dyn TraceSink>,
        control: JobControl,
    ) -> JobOutcome {
        let fail = |what: String| {
            trace.append(format!("\x1b[31;1mERROR: {what}\x1b[0;m\n").as_bytes());
            JobOutcome::Failed {
                reason: FailureReason::RunnerSystemFailure,
                exit_code: None,
            }
        };
        let backend = match self.backend(&runner).await {
            Ok(b) => b,
            Err(e) => return fail(format!("cannot set up job isolation: {e}")),
        };
        let client = match Client::new(&runner.url, self.client_options.clone()) {
            Ok(c) => c,
            Err(e) => return fail(format!("cannot make a GitLab client: {e}")),
        };
        let mut pipeline = Pipeline::new(backend, Arc::new(ArtifactClient::new(client)));
        // `cache:` is always on: local archives under the entry's `cache_dir`.
        pipeline.cache = Some(self.cache.clone().unwrap_or_else(super::LocalCache::hook));
        pipeline.runner_id = self.runner_id.clone();
        pipeline.execute(job, runner, trace, control).await
    }
}
