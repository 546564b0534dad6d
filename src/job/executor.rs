//! The executor `runner run` uses: the job pipeline with, per `[[runners]]` entry, the isolation
//! backend its config asks for and GitLab as the artifact store.

use super::{JobControl, JobExecutor, JobOutcome, PendingTeardown, Pipeline};
use crate::config::RunnerConfig;
use crate::gitlab::types::JobResponse;
use crate::gitlab::{ArtifactClient, Client, ClientOptions};
use crate::isolation::{
    self, EnvironmentResources, EnvironmentSpec, Isolation, JobEnvironment, JobPaths, OutputSink,
    ScriptRequest, TeardownReport,
};
use crate::job::{CacheHook, FailureReason};
use crate::metrics::Metrics;
use crate::trace::TraceSink;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// Told when a job's environment exists, with what it made on the host (the daemon's crash
/// journal records it).
#[async_trait::async_trait]
pub trait JobObserver: Send + Sync {
    /// `job_id`'s environment is prepared and holds `resources`.
    async fn environment_ready(&self, job_id: u64, resources: &EnvironmentResources);
}

/// Runs jobs for the daemon. Backends are made on first use and kept, so a runner entry's
/// backend state (address allocations, image checks) lives as long as the daemon.
pub struct RunnerExecutor {
    runner_id: String,
    state_dir: std::path::PathBuf,
    client_options: ClientOptions,
    /// One hook for every job, so the cache's per-entry store clients are shared by them.
    cache: Arc<dyn CacheHook>,
    backends: tokio::sync::Mutex<HashMap<String, Arc<dyn Isolation>>>,
    /// GitLab clients for the artifact store, one per entry and CA file, made on first use and
    /// kept. Building one parses every trusted root and makes a TLS session cache (~150 KB of
    /// allocations); made per job, that churn only grew the allocator's arenas in the soak,
    /// and a kept client also reuses its connections. Bounded by the config's entries.
    clients: std::sync::Mutex<HashMap<String, Client>>,
    metrics: Option<Arc<Metrics>>,
    observer: Option<Arc<dyn JobObserver>>,
    /// One set for every entry this executor serves: a job id already running is refused.
    running: super::trust::RunningJobs,
    /// `concurrent`: no backend keeps more environments ready than could run at once.
    concurrent: Option<usize>,
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
            // `cache:` is always on: local archives under the entry's `cache_dir`.
            cache: cache.unwrap_or_else(super::LocalCache::hook),
            backends: tokio::sync::Mutex::new(HashMap::new()),
            clients: std::sync::Mutex::new(HashMap::new()),
            metrics: None,
            observer: None,
            running: super::trust::RunningJobs::default(),
            concurrent: None,
        }
    }

    /// Bounds every backend's warm pool by the process's `concurrent` (and each entry's
    /// `limit`).
    pub fn with_concurrent(mut self, concurrent: usize) -> Self {
        self.concurrent = Some(concurrent);
        self
    }

    /// Records backend stage durations, sidecar readiness and teardown time in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Tells `observer` what each prepared environment made.
    pub fn with_observer(mut self, observer: Arc<dyn JobObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    async fn backend(&self, runner: &RunnerConfig) -> Result<Arc<dyn Isolation>, isolation::Error> {
        let key = format!("{}\n{}", runner.name, runner.url);
        let mut backends = self.backends.lock().await;
        if let Some(b) = backends.get(&key) {
            return Ok(b.clone());
        }
        let mut made = isolation::backend_for_in(runner, &self.state_dir).await?;
        if let Some(n) = self.concurrent {
            made.set_job_cap(n);
        }
        if self.metrics.is_some() || self.observer.is_some() {
            made = Arc::new(Observed {
                inner: made,
                metrics: self.metrics.clone(),
                observer: self.observer.clone(),
                runner_name: runner.name.clone(),
            });
            if let (Some(m), Some(t)) = (&self.metrics, made.pool_target()) {
                m.set_warm_pool_target(&runner.name, t);
            }
        }
        backends.insert(key, made.clone());
        Ok(made)
    }
}

impl RunnerExecutor {
    /// The pipeline for one job of `runner`: its backend and GitLab as the artifact store.
    async fn pipeline(&self, runner: &RunnerConfig) -> Result<Pipeline, String> {
        let backend = self
            .backend(runner)
            .await
            .map_err(|e| format!("cannot set up job isolation: {e}"))?;
        let client = self.gitlab_client(runner)?;
        let mut pipeline = Pipeline::new(backend, Arc::new(ArtifactClient::new(client)));
        pipeline.cache = Some(self.cache_hook());
        pipeline.runner_id = self.runner_id.clone();
        pipeline.staging_root = super::staging::staging_root(&self.state_dir);
        pipeline.running = self.running.clone();
        Ok(pipeline)
    }
}

impl RunnerExecutor {
    /// The cache hook of every job: one for the executor's life, so the store client each
    /// entry's first job makes is kept for the next ones.
    fn cache_hook(&self) -> Arc<dyn CacheHook> {
        self.cache.clone()
    }

    /// The entry's GitLab client for artifacts: made once per entry (and CA file), then
    /// shared by its jobs (a clone shares the connection pool).
    fn gitlab_client(&self, runner: &RunnerConfig) -> Result<Client, String> {
        let key = format!(
            "{}\n{}\n{}",
            runner.name,
            runner.url,
            runner
                .tls_ca_file
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        );
        // Plain map work under the lock (no await); still valid if a holder panicked.
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        let options = crate::gitlab::client::ClientOptions {
            tls_ca_file: runner.tls_ca_file.clone(),
            ..self.client_options.clone()
        };
        let client = Client::new(&runner.url, options)
            .map_err(|e| format!("cannot make a GitLab client: {e}"))?;
        clients.insert(key, client.clone());
        Ok(client)
    }
}

/// A job that could not start: the reason in its trace, a system failure.
fn setup_failed(trace: &dyn TraceSink, what: &str) -> JobOutcome {
    trace.append(format!("\x1b[31;1mERROR: {what}\x1b[0;m\n").as_bytes());
    JobOutcome::failed(FailureReason::RunnerSystemFailure)
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
        match self.pipeline(&runner).await {
            Ok(p) => p.execute(job, runner, trace, control).await,
            Err(what) => setup_failed(trace.as_ref(), &what),
        }
    }

    async fn execute_deferred(
        &self,
        job: JobResponse,
        runner: Arc<RunnerConfig>,
        trace: Arc<dyn TraceSink>,
        control: JobControl,
    ) -> (JobOutcome, Option<PendingTeardown>) {
        match self.pipeline(&runner).await {
            Ok(p) => p.execute_deferred(job, runner, trace, control).await,
            Err(what) => (setup_failed(trace.as_ref(), &what), None),
        }
    }

    async fn warm_up(&self, runners: &[RunnerConfig], _runner_id: &str) {
        // Labelled like this executor's jobs (the pool hands slots only to the same id).
        let runner_id = self.runner_id.as_str();
        // A runner without a pool still warms up when it has a golden data root to make
        // (`root_store`), so its first job does not wait for the build (docs/preload.md).
        let warms = |r: &&RunnerConfig| {
            let iso = &r.docker.isolation;
            iso.warm_pool > 0
                || iso.warm_pool_auto
                || (!iso.preload_images.is_empty()
                    && iso.root_store != crate::config::RootStore::Off)
        };
        for r in runners.iter().filter(warms) {
            match self.backend(r).await {
                Ok(b) => b.warm_up(runner_id).await,
                Err(e) => {
                    tracing::warn!(runner = %r.name, error = %e, "cannot pre-start sidecars")
                }
            }
        }
    }

    async fn shutdown(&self) {
        let backends: Vec<Arc<dyn Isolation>> =
            self.backends.lock().await.values().cloned().collect();
        for b in backends {
            let report = b.shutdown().await;
            for f in &report.failures {
                tracing::warn!(failure = %f, "removing pre-started sidecars left something");
            }
        }
    }
}

/// How a job's sidecar started, for `isolated_runner_sidecars_total`: a job's own sidecar
/// reports how long it took to get ready; one taken from the warm pool does not (its start
/// was not this job's wait). `None` without a sidecar (shared-socket).
fn sidecar_start(r: &EnvironmentResources) -> Option<&'static str> {
    r.sidecar.as_ref()?;
    Some(if r.sidecar_ready.is_some() {
        "cold"
    } else {
        "prestarted"
    })
}

/// A backend wrapper that times prepare, scripts and teardown and reports prepared
/// environments, so neither the pipeline nor the backends need to know about metrics or the
/// journal.
struct Observed {
    inner: Arc<dyn Isolation>,
    metrics: Option<Arc<Metrics>>,
    observer: Option<Arc<dyn JobObserver>>,
    /// The entry's name, for `isolated_runner_warm_pool_target`.
    runner_name: String,
}

#[async_trait::async_trait]
impl Isolation for Observed {
    fn mode(&self) -> crate::config::IsolationMode {
        self.inner.mode()
    }

    async fn ensure_images(
        &self,
        plan: &isolation::images::PullPlan,
        out: Arc<dyn OutputSink>,
    ) -> Result<(), isolation::Error> {
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

    async fn prepare(
        &self,
        spec: &EnvironmentSpec,
        out: Arc<dyn OutputSink>,
        cancel: CancellationToken,
    ) -> Result<Box<dyn JobEnvironment>, isolation::Error> {
        let started = Instant::now();
        let env = self.inner.prepare(spec, out, cancel).await?;
        let resources = env.resources();
        if let Some(m) = &self.metrics {
            // Demand moves the auto size with every job.
            if let Some(t) = self.inner.pool_target() {
                m.set_warm_pool_target(&self.runner_name, t);
            }
            m.observe_stage("prepare_executor", started.elapsed());
            if let Some(d) = resources.sidecar_ready {
                m.observe_sidecar_ready(d);
                m.observe_stage("dind_ready", d);
            }
            if let Some(start) = sidecar_start(&resources) {
                m.sidecar_started(start);
            }
        }
        if let Some(o) = &self.observer {
            o.environment_ready(spec.job_id, &resources).await;
        }
        Ok(Box::new(ObservedEnv {
            inner: env,
            metrics: self.metrics.clone(),
        }))
    }
}

struct ObservedEnv {
    inner: Box<dyn JobEnvironment>,
    metrics: Option<Arc<Metrics>>,
}

impl ObservedEnv {
    /// Runs one script, timed as its stage (`build_script` or `helper_script`).
    async fn timed<T>(
        &self,
        role: isolation::Role,
        script: impl std::future::Future<Output = T>,
    ) -> T {
        let stage = match role {
            isolation::Role::Build => "build_script",
            isolation::Role::Helper => "helper_script",
        };
        let started = Instant::now();
        let r = script.await;
        if let Some(m) = &self.metrics {
            m.observe_stage(stage, started.elapsed());
        }
        r
    }
}

#[async_trait::async_trait]
impl JobEnvironment for ObservedEnv {
    fn paths(&self) -> &JobPaths {
        self.inner.paths()
    }

    fn host_dirs(&self) -> &JobPaths {
        self.inner.host_dirs()
    }

    fn job_env(&self) -> Vec<(String, String)> {
        self.inner.job_env()
    }

    async fn run_script(
        &self,
        req: ScriptRequest,
        out: Arc<dyn OutputSink>,
        cancel: CancellationToken,
    ) -> Result<i32, isolation::Error> {
        let role = req.role;
        self.timed(role, self.inner.run_script(req, out, cancel))
            .await
    }

    async fn run_script_as(
        &self,
        req: ScriptRequest,
        user: &isolation::ScriptUser,
        out: Arc<dyn OutputSink>,
        cancel: CancellationToken,
    ) -> Result<i32, isolation::Error> {
        let role = req.role;
        self.timed(role, self.inner.run_script_as(req, user, out, cancel))
            .await
    }

    async fn image_user(&self) -> Result<Option<String>, isolation::Error> {
        self.inner.image_user().await
    }

    async fn wait_for_services(
        &self,
        timeout: std::time::Duration,
        cancel: CancellationToken,
    ) -> Vec<isolation::ServiceWarning> {
        self.inner.wait_for_services(timeout, cancel).await
    }

    async fn service_logs(&self, lines: usize) -> Vec<isolation::ServiceLog> {
        self.inner.service_logs(lines).await
    }

    async fn teardown(self: Box<Self>) -> TeardownReport {
        let started = Instant::now();
        let this = *self;
        let report = this.inner.teardown().await;
        if let Some(m) = &this.metrics {
            let took = started.elapsed();
            m.observe_teardown(took);
            m.observe_stage("teardown", took);
            if !report.failures.is_empty() {
                m.teardown_failed();
            }
        }
        report
    }

    fn resources(&self) -> EnvironmentResources {
        self.inner.resources()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, url: &str) -> RunnerConfig {
        // As `main` does: reqwest needs the process's rustls provider.
        crate::install_crypto_provider();
        RunnerConfig {
            name: name.to_string(),
            url: url::Url::parse(url).expect("url"),
            ..Default::default()
        }
    }

    #[test]
    fn gitlab_clients_are_made_once_per_entry_not_per_job() {
        let ex = RunnerExecutor::new(
            "s_0123456789ab",
            std::env::temp_dir(),
            ClientOptions::default(),
            None,
        );
        let a = entry("a", "http://gitlab-a.example.test/");
        let b = entry("b", "http://gitlab-b.example.test/");
        // A stream of jobs on two entries: the map holds one client per entry, whatever the
        // number of jobs (before, every job built its own).
        for _ in 0..50 {
            assert!(ex.gitlab_client(&a).is_ok());
            assert!(ex.gitlab_client(&b).is_ok());
        }
        let clients = ex.clients.lock().expect("lock");
        assert_eq!(clients.len(), 2);
        assert!(clients.keys().any(|k| k.starts_with("a\n")));
        assert!(clients.keys().any(|k| k.starts_with("b\n")));
    }

    #[test]
    fn every_job_gets_the_same_cache_hook() {
        let ex = RunnerExecutor::new(
            "s_0123456789ab",
            std::env::temp_dir(),
            ClientOptions::default(),
            None,
        );
        // The hook keeps each entry's store client: a hook per job would make one per job.
        assert!(Arc::ptr_eq(&ex.cache_hook(), &ex.cache_hook()));
    }

    #[test]
    fn a_bad_ca_file_is_an_error_and_not_kept() {
        let ex = RunnerExecutor::new(
            "s_0123456789ab",
            std::env::temp_dir(),
            ClientOptions::default(),
            None,
        );
        let mut r = entry("a", "https://gitlab-a.example.test/");
        r.tls_ca_file = Some(std::path::PathBuf::from("/nonexistent/ca.pem"));
        let Err(e) = ex.gitlab_client(&r) else {
            panic!("a missing CA file must fail");
        };
        assert!(e.contains("cannot make a GitLab client"), "{e}");
        assert!(ex.clients.lock().expect("lock").is_empty());
    }

    #[test]
    fn sidecar_start_kind_follows_the_resources() {
        let mut r = EnvironmentResources::default();
        assert_eq!(sidecar_start(&r), None, "shared-socket: no sidecar");
        r.sidecar = Some("abc".to_string());
        assert_eq!(sidecar_start(&r), Some("prestarted"));
        r.sidecar_ready = Some(std::time::Duration::from_millis(900));
        assert_eq!(sidecar_start(&r), Some("cold"));
    }
}
