//! The poll loop, concurrency slots, signals and graceful shutdown.
//!
//! Shape (style-anchors, "Shutdown and cancellation pattern"):
//! - `polling` is the root token: once cancelled no new `jobs/request` is sent. Requests already
//!   in flight are awaited; a job they bring is run (its tokens may already be cancelled, so it
//!   ends at once and is reported failed), never dropped.
//! - every job's `cancel_gracefully` is a child of `graceful` and its `abort` a child of `force`;
//!   GitLab's `Job-Status` fires the job's own tokens.
//! - every request and job runs in one `TaskTracker`; concurrency is bounded by semaphores:
//!   `concurrent` (global), `limit` (per runner) and `request_concurrency` (open requests per
//!   runner). Job permits are taken *before* asking for a job, so we never get a job we cannot
//!   start.
//! - SIGQUIT stops polling and waits for jobs; SIGTERM/SIGINT also cancels jobs gracefully and
//!   aborts them when `shutdown_timeout` runs out; a second SIGTERM/SIGINT aborts at once.
//! - before the first poll, jobs a killed process left in the [`journal`] are torn down and
//!   reported failed, and the label reaper sweeps this runner id (`docs/crash-recovery.md`).
//! - with `listen_address`, `/metrics`, `/health` and `/ready` are served (`docs/metrics.md`).

mod concurrent_id;
mod health;
mod job;
pub mod journal;
mod recover;
pub mod signals;
mod token;

pub use journal::Journal;
pub use recover::CLOSING_LINE;

pub use signals::{ChannelSignals, OsSignals, ShutdownSignal, SignalSource, signal_channel};

use crate::config::{Config, RunnerConfig};
use crate::gitlab::client::{ClientOptions, JobRequest, JobRequestOutcome};
use crate::gitlab::identity;
use crate::gitlab::trace::TraceOptions;
use crate::gitlab::{self, Client};
use crate::job::JobExecutor;
use crate::metrics::{self, Metrics, Readiness, RunnerLabels, RunnerMetrics};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nothing to poll for.
    #[error("the config has no [[runners]] entry")]
    NoRunners,
    /// A `[[runners]]` entry without a token can serve `runner exec` only.
    #[error(
        "runner {name} has no token: register it with `runner register`, or set `token`/`token_file`"
    )]
    NoToken {
        /// The entry's name.
        name: String,
    },
    /// `concurrent = 0` would never run a job.
    #[error("concurrent must be at least 1, got 0")]
    ZeroConcurrent,
    /// A runner entry's GitLab client could not be made.
    #[error("runner {name}: cannot set up the gitlab client")]
    Client {
        /// The runner's name.
        name: String,
        /// The cause.
        #[source]
        source: gitlab::Error,
    },
    /// `listen_address` could not be served.
    #[error(transparent)]
    Metrics(#[from] metrics::Error),
    /// The managed registry mirror could not be started.
    #[error(transparent)]
    Mirror(#[from] crate::isolation::mirror::Error),
}

/// Knobs that are not in the config file (tests shorten them).
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// HTTP client settings.
    pub client: ClientOptions,
    /// Trace upload timing.
    pub trace: TraceOptions,
    /// How long the final status update is retried before giving up (logged).
    pub final_update_deadline: Duration,
    /// First pause between final update retries (doubles up to 30 s).
    pub final_retry_pause: Duration,
    /// Wait after GitLab refused the runner token before trying again.
    pub unhealthy_backoff: Duration,
    /// How long aborted jobs get to report after a forced shutdown.
    pub abort_grace: Duration,
    /// Overrides the system id (else read from or written to the state dir).
    pub system_id: Option<String>,
    /// The crash journal (`runner run` sets it; `None` disables crash recovery).
    pub journal: Option<Arc<Journal>>,
    /// The metrics registry; served on `listen_address` (one is made when that is set and
    /// this is `None`).
    pub metrics: Option<Arc<Metrics>>,
    /// Run the label reaper for this runner id before the first poll.
    pub reap_at_start: bool,
    /// How often a running job's acknowledged trace offset is copied into the journal.
    pub journal_refresh: Duration,
    /// The config file a reset runner token is written back to (`runner run` sets it).
    pub config_path: Option<std::path::PathBuf>,
}

impl Default for DaemonOptions {
    fn default() -> Self {
        DaemonOptions {
            client: ClientOptions::default(),
            trace: TraceOptions::default(),
            final_update_deadline: Duration::from_secs(3600),
            final_retry_pause: Duration::from_secs(1),
            unhealthy_backoff: Duration::from_secs(60),
            abort_grace: Duration::from_secs(10),
            system_id: None,
            journal: None,
            metrics: None,
            reap_at_start: false,
            journal_refresh: Duration::from_secs(3),
            config_path: None,
        }
    }
}

/// Runs the daemon until shutdown, with default options.
pub async fn run(
    config: Config,
    executor: Arc<dyn JobExecutor>,
    signals: impl SignalSource,
) -> Result<(), Error> {
    run_with(config, executor, signals, DaemonOptions::default()).await
}

struct Shared {
    executor: Arc<dyn JobExecutor>,
    options: DaemonOptions,
    tracker: TaskTracker,
    global: Arc<Semaphore>,
    polling: CancellationToken,
    graceful: CancellationToken,
    force: CancellationToken,
    info: serde_json::Value,
    state_dir: std::path::PathBuf,
    readiness: Readiness,
    /// Job ids running now, over every entry: the journal and the job's objects are keyed by
    /// the id, which is only unique within one GitLab instance (H3).
    running: crate::job::trust::RunningJobs,
}

struct RunnerCtx {
    cfg: Arc<RunnerConfig>,
    client: Client,
    system_id: String,
    short_token: String,
    /// The runner token now: rotation replaces it.
    token: Mutex<crate::secret::Secret>,
    /// The token's lifetime, when it has one (then it is rotated).
    validity: Mutex<Option<token::Validity>>,
    limit: Option<Arc<Semaphore>>,
    requests: Arc<Semaphore>,
    last_update: Mutex<Option<String>>,
    repoll: Notify,
    interval: Duration,
    token_rejected: AtomicBool,
    failures: AtomicU32,
    health: health::Health,
    backoff_until: Mutex<Option<Instant>>,
    metrics: Option<RunnerMetrics>,
    /// `CI_CONCURRENT_ID`/`CI_CONCURRENT_PROJECT_ID` of the jobs running now.
    concurrent_ids: Arc<concurrent_id::ConcurrentIds>,
}

/// Job slots held while a request is open and then for the whole job.
struct Permits {
    _global: OwnedSemaphorePermit,
    _local: Option<OwnedSemaphorePermit>,
}

/// Runs the daemon until shutdown.
pub async fn run_with(
    config: Config,
    executor: Arc<dyn JobExecutor>,
    mut signals: impl SignalSource,
    options: DaemonOptions,
) -> Result<(), Error> {
    if config.runners.is_empty() {
        return Err(Error::NoRunners);
    }
    if let Some(r) = config.runners.iter().find(|r| r.token.is_empty()) {
        return Err(Error::NoToken {
            name: r.name.clone(),
        });
    }
    if config.concurrent == 0 {
        return Err(Error::ZeroConcurrent);
    }
    // The managed registry mirror answers before the first job's daemon is pointed at it.
    let mut config = config;
    crate::isolation::mirror::start_for(&mut config).await?;
    let check_interval = if config.check_interval.is_zero() {
        Duration::from_secs(3)
    } else {
        config.check_interval
    };
    let system_id = match &options.system_id {
        Some(s) => s.clone(),
        None => match identity::system_id(&config.state_dir).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot persist the system id; using one for this run only");
                identity::system_id_from_machine_id(&uuid::Uuid::new_v4().simple().to_string())
            }
        },
    };
    let metrics = match (&options.metrics, &config.listen_address) {
        (Some(m), _) => Some(m.clone()),
        (None, Some(_)) => Some(Arc::new(Metrics::new())),
        (None, None) => None,
    };
    let readiness = Readiness::new();
    // Bound before anything else so a taken port fails the start, not a background task.
    let server_stop = CancellationToken::new();
    if let (Some(addr), Some(m)) = (&config.listen_address, &metrics) {
        let server = metrics::bind(addr).await?;
        tracing::info!(address = %server.local_addr(), "serving /metrics, /health and /ready");
        let (m, r, stop) = (m.clone(), readiness.clone(), server_stop.clone());
        tokio::spawn(async move {
            if let Err(e) = server.serve(m, r, stop).await {
                tracing::error!(error = %e, "the metrics server stopped");
            }
        });
    }
    if let Some(m) = &metrics {
        m.set_concurrent(config.concurrent);
    }
    let mut options = options;
    options.metrics = metrics.clone();
    let lost = recover::cleanup(
        &config,
        &system_id,
        options.journal.as_deref(),
        options.reap_at_start,
        metrics.as_ref(),
    )
    .await;
    let shared = Arc::new(Shared {
        executor,
        options: options.clone(),
        tracker: TaskTracker::new(),
        global: Arc::new(Semaphore::new(config.concurrent)),
        polling: CancellationToken::new(),
        graceful: CancellationToken::new(),
        force: CancellationToken::new(),
        info: identity::runner_info(),
        state_dir: config.state_dir.clone(),
        readiness: readiness.clone(),
        running: Default::default(),
    });
    let n = config.runners.len() as u32;
    let mut ctxs = Vec::new();
    for r in &config.runners {
        let client = Client::new(
            &r.url,
            ClientOptions {
                tls_ca_file: r.tls_ca_file.clone(),
                ..options.client.clone()
            },
        )
        .map_err(|source| Error::Client {
            name: r.name.clone(),
            source,
        })?;
        let runner_metrics = metrics.as_ref().map(|m| {
            let rm = m.runner(RunnerLabels::new(
                identity::short_token(r.token.expose()),
                r.name.clone(),
                system_id.clone(),
            ));
            rm.set_limit(r.limit);
            rm.set_unhealthy(false);
            rm
        });
        ctxs.push(Arc::new(RunnerCtx {
            cfg: Arc::new(r.clone()),
            client,
            system_id: system_id.clone(),
            short_token: identity::short_token(r.token.expose()),
            token: Mutex::new(r.token.clone()),
            validity: Mutex::new(r.token_expires_at.map(|expires| {
                token::Validity {
                    // gitlab-runner counts from a zero time when this is missing (an immediate
                    // reset); counting from now is the gentler reading of a hand-edited file.
                    obtained: r
                        .token_obtained_at
                        .unwrap_or_else(std::time::SystemTime::now),
                    expires,
                }
            })),
            limit: (r.limit > 0).then(|| Arc::new(Semaphore::new(r.limit))),
            requests: Arc::new(Semaphore::new(r.request_concurrency.max(1))),
            last_update: Mutex::new(None),
            repoll: Notify::new(),
            interval: check_interval,
            token_rejected: AtomicBool::new(false),
            failures: AtomicU32::new(0),
            health: health::Health::new(r.unhealthy_requests_limit, r.unhealthy_interval),
            backoff_until: Mutex::new(None),
            concurrent_ids: Arc::default(),
            metrics: runner_metrics,
        }));
    }
    tracing::info!(runners = n, concurrent = config.concurrent, ?check_interval, %system_id, "runner started");
    let ctxs_for_lost = ctxs.clone();
    for (i, ctx) in ctxs.into_iter().enumerate() {
        // Entries are staggered so the process sends one request every check_interval / N.
        let offset = check_interval / n * i as u32;
        shared
            .tracker
            .spawn(poll_loop(ctx.clone(), shared.clone(), offset));
        // Also without a known expiry: rotate() first asks GitLab for it (glrt- tokens).
        shared
            .tracker
            .spawn(token::rotate(ctx.clone(), shared.clone()));
    }
    // Lost jobs are reported beside polling: a GitLab outage must not hold up the runner, and
    // shutdown waits for these reports like for jobs.
    for entry in lost {
        let m = ctxs_metrics(&ctxs_for_lost, &entry);
        shared
            .tracker
            .spawn(recover::report_lost(shared.clone(), entry, m));
    }
    shared.tracker.close();
    // Pre-started sidecars (warm_pool) begin now, so even the first job finds one.
    shared.executor.warm_up(&config.runners, &system_id).await;
    readiness.set_ready();

    let signal_task = {
        let shared = shared.clone();
        tokio::spawn(async move {
            while let Some(sig) = signals.recv().await {
                shared.readiness.set_draining();
                match sig {
                    ShutdownSignal::Drain => {
                        if !shared.polling.is_cancelled() {
                            tracing::info!(
                                "SIGQUIT: no new jobs; waiting for running jobs to finish"
                            );
                        }
                        shared.polling.cancel();
                    }
                    ShutdownSignal::Stop if !shared.graceful.is_cancelled() => {
                        tracing::info!(
                            "shutdown requested: no new jobs; cancelling running jobs gracefully"
                        );
                        shared.polling.cancel();
                        shared.graceful.cancel();
                    }
                    ShutdownSignal::Stop => {
                        tracing::warn!("second shutdown signal: aborting running jobs now");
                        shared.force.cancel();
                    }
                }
            }
        })
    };

    let mut deadline: Option<Instant> = None;
    loop {
        if shared.graceful.is_cancelled() && deadline.is_none() {
            deadline = Some(Instant::now() + config.shutdown_timeout);
        }
        tokio::select! {
            biased;
            _ = shared.tracker.wait() => break,
            _ = shared.force.cancelled() => {
                wait_aborted(&shared).await;
                break;
            }
            _ = shared.graceful.cancelled(), if deadline.is_none() => {}
            _ = sleep_until_opt(deadline) => {
                tracing::warn!(timeout = ?config.shutdown_timeout, "shutdown_timeout reached: aborting running jobs");
                shared.force.cancel();
                wait_aborted(&shared).await;
                break;
            }
        }
    }
    signal_task.abort();
    shared.executor.shutdown().await;
    server_stop.cancel();
    tracing::info!("runner stopped");
    Ok(())
}

/// The metrics handle of the runner entry a lost job belonged to.
fn ctxs_metrics(ctxs: &[Arc<RunnerCtx>], entry: &journal::JournalEntry) -> Option<RunnerMetrics> {
    ctxs.iter()
        .find(|c| c.cfg.name == entry.runner_name)
        .and_then(|c| c.metrics.clone())
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn wait_aborted(shared: &Shared) {
    if tokio::time::timeout(shared.options.abort_grace, shared.tracker.wait())
        .await
        .is_err()
    {
        tracing::error!("jobs did not end after abort; exiting without their final update");
    }
}

async fn poll_loop(ctx: Arc<RunnerCtx>, shared: Arc<Shared>, offset: Duration) {
    let mut next = Instant::now() + offset;
    loop {
        tokio::select! {
            biased;
            _ = shared.polling.cancelled() => return,
            _ = tokio::time::sleep_until(next) => {}
            _ = ctx.repoll.notified() => {}
        }
        next = Instant::now() + ctx.interval;
        let until = *lock(&ctx.backoff_until);
        if let Some(until) = until
            && Instant::now() < until
        {
            next = until;
            continue;
        }
        match ctx.health.gate(Instant::now()) {
            health::Gate::Open => {}
            health::Gate::ClosedUntil(until) => {
                next = until;
                continue;
            }
            health::Gate::Forced { failures } => {
                // gitlab-runner's wording and fields, so existing log alerts still match.
                tracing::warn!(
                    runner = %ctx.cfg.name,
                    token = %ctx.short_token,
                    unhealthy_requests = failures,
                    unhealthy_requests_limit = ctx.health.limit(),
                    unhealthy_interval = ?ctx.health.interval(),
                    "runner is not healthy, but a check for a new job is forced"
                );
            }
        }
        let Ok(request_slot) = ctx.requests.clone().try_acquire_owned() else {
            continue;
        };
        let Ok(global) = shared.global.clone().try_acquire_owned() else {
            continue;
        };
        let local = match &ctx.limit {
            Some(l) => match l.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => continue,
            },
            None => None,
        };
        let permits = Permits {
            _global: global,
            _local: local,
        };
        shared.tracker.spawn(request_and_run(
            ctx.clone(),
            shared.clone(),
            permits,
            request_slot,
        ));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain data behind these locks stays valid even if a holder panicked.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn request_and_run(
    ctx: Arc<RunnerCtx>,
    shared: Arc<Shared>,
    permits: Permits,
    request_slot: OwnedSemaphorePermit,
) {
    let req = JobRequest {
        token: lock(&ctx.token).clone(),
        system_id: ctx.system_id.clone(),
        last_update: lock(&ctx.last_update).clone(),
        info: shared.info.clone(),
    };
    let started = std::time::Instant::now();
    let result = ctx.client.request_job(&req, Some(&shared.polling)).await;
    if let Err(e) = &result
        && matches!(e.status(), Some(401 | 403 | 422))
        && lock(&ctx.token).expose() != req.token.expose()
    {
        // The token was reset while this request was out: the refusal is about the old one.
        drop(request_slot);
        drop(permits);
        ctx.repoll.notify_one();
        return;
    }
    // Marked before the request slot is freed, so the poll loop's next gate check sees it.
    match &result {
        Err(e) if health::counts_as_unhealthy(e) => mark_health(&ctx, false),
        Err(gitlab::Error::Cancelled { .. }) => {}
        _ => mark_health(&ctx, true),
    }
    drop(request_slot);
    if let Some(m) = &ctx.metrics {
        let status = match &result {
            Ok(JobRequestOutcome::NoJob { .. }) => Some(204),
            Ok(JobRequestOutcome::Conflict) => Some(409),
            Ok(JobRequestOutcome::Job { .. } | JobRequestOutcome::Malformed(_)) => Some(201),
            Err(e) => e.status(),
        };
        if let Some(s) = status {
            m.api_request_timed("request_job", s, started.elapsed());
        }
    }
    let remember = |lu: Option<String>| {
        if let Some(lu) = lu {
            *lock(&ctx.last_update) = Some(lu);
        }
    };
    match result {
        Ok(JobRequestOutcome::NoJob { last_update }) => {
            remember(last_update);
            healthy(&ctx);
        }
        Ok(JobRequestOutcome::Conflict) => {
            tracing::debug!(runner = %ctx.cfg.name, "job taken by another runner (409)");
            healthy(&ctx);
        }
        Ok(JobRequestOutcome::Job { job, last_update }) => {
            remember(last_update);
            healthy(&ctx);
            // Drain a burst of pending jobs faster than check_interval (official behaviour).
            ctx.repoll.notify_one();
            job::run_job(&ctx, &shared, *job).await;
        }
        Ok(JobRequestOutcome::Malformed(bad)) => {
            healthy(&ctx);
            ctx.repoll.notify_one();
            job::fail_malformed(&ctx, &shared, bad).await;
        }
        Err(gitlab::Error::Cancelled { .. }) => {}
        Err(e) if matches!(e.status(), Some(401 | 403 | 422)) => {
            if !ctx.token_rejected.swap(true, Ordering::SeqCst) {
                tracing::error!(
                    runner = %ctx.cfg.name,
                    token = %ctx.short_token,
                    url = %ctx.cfg.url,
                    error = %e,
                    retry_in = ?shared.options.unhealthy_backoff,
                    "GitLab rejected this runner's token: it was revoked, expired or belongs to another \
                     GitLab. Register again (`runner register`) or fix `token` in the config; \
                     retrying slowly meanwhile"
                );
            }
            *lock(&ctx.backoff_until) = Some(Instant::now() + shared.options.unhealthy_backoff);
        }
        Err(e) => {
            let n = ctx.failures.fetch_add(1, Ordering::SeqCst) + 1;
            let backoff = ctx
                .interval
                .saturating_mul(1 << (n - 1).min(6))
                .min(Duration::from_secs(300));
            let wait = match &e {
                gitlab::Error::Status {
                    retry_after: Some(ra),
                    ..
                } => (*ra).max(backoff),
                _ => backoff,
            };
            tracing::warn!(runner = %ctx.cfg.name, error = %e, retry_in = ?wait, "asking GitLab for a job failed");
            *lock(&ctx.backoff_until) = Some(Instant::now() + wait);
        }
    }
    drop(permits);
}

/// Feeds one request's outcome to the entry's health gate and logs a change of state.
fn mark_health(ctx: &RunnerCtx, healthy: bool) {
    match ctx.health.mark(healthy, Instant::now()) {
        health::Change::None => {}
        health::Change::BecameUnhealthy { failures } => {
            tracing::error!(
                runner = %ctx.cfg.name,
                token = %ctx.short_token,
                unhealthy_requests = failures,
                unhealthy_requests_limit = ctx.health.limit(),
                unhealthy_interval = ?ctx.health.interval(),
                "runner is unhealthy: no job requests for unhealthy_interval (counted from its \
                 last healthy answer)"
            );
            if let Some(m) = &ctx.metrics {
                m.set_unhealthy(true);
            }
        }
        health::Change::Recovered => {
            tracing::info!(runner = %ctx.cfg.name, token = %ctx.short_token, "runner is healthy again");
            if let Some(m) = &ctx.metrics {
                m.set_unhealthy(false);
            }
        }
    }
}

fn healthy(ctx: &RunnerCtx) {
    ctx.failures.store(0, Ordering::SeqCst);
    *lock(&ctx.backoff_until) = None;
    if ctx.token_rejected.swap(false, Ordering::SeqCst) {
        tracing::info!(runner = %ctx.cfg.name, "GitLab accepts this runner's token again");
    }
}
