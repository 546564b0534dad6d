//! The warm pool: sidecars started and made ready *before* a job asks, so a job's time to its
//! first script line no longer contains the daemon's start (docs/benchmarks.md: start and
//! readiness were ~1.2 s of the ~1.6 s that isolation cost per job on the reference host).
//!
//! Each slot is a complete per-job environment minus the job: its own network (/28, egress
//! rules installed), its own CA and certificates, its own data volume, its own dockerd, with
//! `preload_images` loaded. It is built from runner config alone, exactly like a job's own
//! sidecar, and serves exactly one job, after which it is torn down like any job's. Nothing
//! of one job reaches another through a slot, except, by design, a keyed slot's warm data
//! root (below), which is scrubbed before its daemon boots.
//!
//! The one thing a slot cannot have in advance is the job's directory at its identical path
//! (the job id is not known yet, and a running container cannot gain a bind mount). So a slot
//! makes its own two directories, `<builds_dir>/gitlab-job-<slot id>` and `.tmp`, directly in
//! `builds_dir` (whose entries no container ever has mounted), and its sidecar binds each of
//! them at its own path. The job that takes the slot uses them as its directories: job
//! containers bind them at the job's usual paths, the sidecar gets `gitlab-job-<job id>` links
//! to them in its own root file system (so the inner daemon resolves `$CI_PROJECT_DIR`), and
//! the host gets the same relative links for people and `runner cleanup`
//! (`crate::paths::link_job_dirs`). Every bind source and every runner-side file operation
//! comes from the slot id, never from a path a job could have changed (see
//! `docs/architecture.md#warm-pool`).
//!
//! With `data_root = "project"` a slot is *keyed*: when a job of a project ends, a sidecar is
//! started at once on that project's warm data root (same project, same protected flag: the
//! root's lease is held by the slot, scrubbed as for any reuse) and waits for the project's
//! next job. Such slots exist only after a project's job, at most `warm_pool` of them (the
//! oldest idle one makes room).
//!
//! Slot objects are labelled like a job's, with a *slot id* in place of the job id: ids from
//! [`SLOT_ID_BASE`] up, far above any GitLab job id, so the label sweep, the crash journal,
//! `runner cleanup` and the reaper handle them with no special case.

use super::state::JobState;
use super::{Error, TeardownReport};
use crate::docker::Docker;
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

// Beside `JobId` in paths/, so cleanup can tell a slot's dirs without importing isolation.
pub use crate::paths::{SLOT_ID_BASE, is_slot_id};

/// How long a job on a slot may run, beyond the slot's idle life: the certificates of a slot
/// are issued for `max_idle` + this (+ the PKI margin). A job whose timeout is longer starts
/// its own sidecar instead.
pub(super) const SLOT_JOB_BUDGET: Duration = Duration::from_secs(6 * 3600);

/// How often idle slots are checked for age and the pool topped up.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(15);

/// A slot whose daemon does not answer a ping this fast is not handed to a job.
const ALIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// `warm_pool = "auto"`: the build time assumed before the first slot was built (a cold start
/// on the reference host is 2–4 s).
const FIRST_BUILD_GUESS: Duration = Duration::from_secs(4);

/// `warm_pool = "auto"`: memory one idle sidecar is assumed to need (an idle dockerd with its
/// containerd is ~60–120 MB here; the margin covers the job's first inner containers).
pub const SIDECAR_MEMORY_ESTIMATE: u64 = 256 * 1024 * 1024;

/// The project and protection level a keyed slot's warm data root belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct WarmKey {
    pub project_id: u64,
    pub protected: bool,
}

/// A pre-started sidecar, ready, waiting for a job.
pub(super) struct Slot {
    pub state: JobState,
    /// `Some` for a slot on a project's warm data root.
    pub key: Option<WarmKey>,
    /// The warm data root's lease (keyed slots).
    pub lease: Option<super::data_root::WarmLease>,
    pub inner: Docker,
    pub client_certs: PathBuf,
    pub not_after: SystemTime,
    pub born: Instant,
    pub ready_after: Duration,
}

impl Slot {
    fn id(&self) -> u64 {
        self.state.naming.job_id
    }
}

#[derive(Default)]
struct PoolState {
    /// The runner id slots are labelled with (known from the first `start`).
    runner_id: Option<String>,
    idle: VecDeque<Slot>,
    /// Slot ids being built, with their key.
    building: HashMap<u64, Option<WarmKey>>,
    /// Consecutive failed builds (backoff).
    failures: u32,
    maintenance: bool,
    /// Jobs waiting in `take` for a slot being built, per key.
    waiting: HashMap<Option<WarmKey>, usize>,
    /// When jobs asked for a slot, over the last `max_idle` (`warm_pool = "auto"`; tokio's
    /// clock, so tests can move it).
    starts: VecDeque<tokio::time::Instant>,
    /// Recent slot build time (moving average); `None` before the first build.
    build_time: Option<Duration>,
    /// Slots that available memory allows beside the idle ones (read every maintenance round).
    memory_room: Option<usize>,
}

impl PoolState {
    fn building_for(&self, key: Option<WarmKey>) -> usize {
        self.building.values().filter(|k| **k == key).count()
    }

    fn waiting_for(&self, key: Option<WarmKey>) -> usize {
        self.waiting.get(&key).copied().unwrap_or(0)
    }
}

/// How many slots a pool keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sizing {
    /// Exactly this many (`warm_pool = N`).
    Fixed(usize),
    /// From recent demand (`warm_pool = "auto"`), never below `floor`.
    Auto {
        /// What the admin set explicitly (0 when nothing).
        floor: usize,
    },
}

/// The slots recent demand asks for: the most job starts that fell within one slot build time
/// of each other in `starts` (oldest first). A job that arrives within a build time of another
/// cannot be served by that one's replacement, so each of them needs a slot started ahead; one
/// start alone asks for one slot (the next job of a stream).
pub fn demand_target(starts: &VecDeque<tokio::time::Instant>, build_time: Duration) -> usize {
    let mut best = 0;
    let mut lo = 0;
    for (hi, t) in starts.iter().enumerate() {
        while lo < hi && t.duration_since(starts[lo]) > build_time {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}

/// Keeps slots ready: a fixed number, or as many as recent demand asks for. See the module docs.
pub struct Pool {
    sizing: Sizing,
    /// `concurrent`/`limit` of the runner (more slots could never be in use at once).
    job_cap: std::sync::atomic::AtomicUsize,
    max_idle: Duration,
    /// Slots on warm data roots, started after a project's job (`data_root = "project"`);
    /// otherwise ephemeral slots, kept at `size`.
    keyed: bool,
    state: Mutex<PoolState>,
    /// Signalled whenever a build ends (ready or failed).
    built: tokio::sync::Notify,
    tasks: TaskTracker,
    closed: CancellationToken,
}

impl Pool {
    /// A pool of `size` slots, each replaced after `max_idle` unused; `keyed` for warm data
    /// roots.
    pub fn new(size: usize, max_idle: Duration, keyed: bool) -> Self {
        Self::with_sizing(Sizing::Fixed(size), max_idle, keyed)
    }

    /// A pool sized by `sizing`; with [`Sizing::Auto`], `max_idle` is also the window of
    /// demand it looks back on.
    pub fn with_sizing(sizing: Sizing, max_idle: Duration, keyed: bool) -> Self {
        Pool {
            sizing,
            job_cap: std::sync::atomic::AtomicUsize::new(usize::MAX),
            max_idle,
            keyed,
            state: Mutex::new(PoolState::default()),
            built: tokio::sync::Notify::new(),
            tasks: TaskTracker::new(),
            closed: CancellationToken::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        // A panic while holding the lock leaves plain data behind; keep using it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bounds the auto size by `concurrent`/`limit`.
    pub fn set_job_cap(&self, cap: usize) {
        self.job_cap
            .store(cap.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// How many slots the pool aims to keep now (idle, building, and for keyed pools the
    /// most that may exist).
    pub fn target(&self) -> usize {
        let mut st = self.lock();
        self.target_locked(&mut st)
    }

    fn target_locked(&self, st: &mut PoolState) -> usize {
        match self.sizing {
            Sizing::Fixed(n) => n,
            Sizing::Auto { floor } => {
                let now = tokio::time::Instant::now();
                while st
                    .starts
                    .front()
                    .is_some_and(|t| now.duration_since(*t) > self.max_idle)
                {
                    st.starts.pop_front();
                }
                let wanted = demand_target(&st.starts, st.build_time.unwrap_or(FIRST_BUILD_GUESS));
                let cap = self
                    .job_cap
                    .load(std::sync::atomic::Ordering::Relaxed)
                    .min(st.memory_room.map_or(usize::MAX, |m| m + st.idle.len()));
                wanted.min(cap).max(floor)
            }
        }
    }

    /// Remembers that a job asked for a slot (demand, for `warm_pool = "auto"`).
    fn record_start(&self, st: &mut PoolState) {
        if matches!(self.sizing, Sizing::Auto { .. }) {
            st.starts.push_back(tokio::time::Instant::now());
            // Bounded whatever the window: more starts than this within one build time would
            // exceed any cap anyway.
            if st.starts.len() > 4096 {
                st.starts.pop_front();
            }
        }
    }

    /// Reads available memory for the auto size's bound.
    async fn measure_memory(&self) {
        if !matches!(self.sizing, Sizing::Auto { .. }) {
            return;
        }
        let room = tokio::fs::read_to_string("/proc/meminfo")
            .await
            .ok()
            .and_then(|t| mem_available(&t))
            .map(|b| (b / SIDECAR_MEMORY_ESTIMATE) as usize);
        self.lock().memory_room = room;
    }

    /// Removes idle slots above the target (demand fell), oldest first.
    fn shrink(&self) {
        let extra: Vec<Slot> = {
            let mut st = self.lock();
            let target = self.target_locked(&mut st);
            let over = (st.idle.len() + st.building.len()).saturating_sub(target);
            let n = over.min(st.idle.len());
            st.idle.drain(..n).collect()
        };
        for slot in extra {
            self.discard(slot, "demand fell");
        }
    }

    /// Learns the runner id and starts the maintenance loop (once).
    pub(super) fn start<B: SlotBuilder>(self: &Arc<Self>, builder: &Arc<B>, runner_id: &str) {
        if self.closed.is_cancelled() {
            return;
        }
        let mut st = self.lock();
        if st.runner_id.is_none() {
            st.runner_id = Some(runner_id.to_string());
        }
        if st.maintenance {
            return;
        }
        st.maintenance = true;
        drop(st);
        let (pool, builder) = (Arc::clone(self), Arc::clone(builder));
        self.tasks.spawn(async move {
            pool.measure_memory().await;
            loop {
                tokio::select! {
                    _ = pool.closed.cancelled() => return,
                    _ = tokio::time::sleep(MAINTENANCE_EVERY) => {}
                }
                pool.measure_memory().await;
                pool.expire();
                pool.shrink();
                pool.refill(&builder);
            }
        });
    }

    /// A ready slot for a job like `spec` (with `key`: on that project's warm data root).
    /// When none is idle but one is being built (and not already promised to another waiting
    /// job), waits for it up to `wait`: the rest of a build is never longer than a whole cold
    /// start. Slots too old are torn down on the way; a slot whose certificates would not
    /// outlive the job's timeout stays for another job.
    pub(super) async fn take(
        &self,
        spec: &super::EnvironmentSpec,
        key: Option<WarmKey>,
        wait: Duration,
    ) -> Option<Slot> {
        let needed = SystemTime::now()
            .checked_add(spec.timeout)
            .and_then(|t| t.checked_add(crate::pki::VALIDITY_MARGIN))?;
        let deadline = tokio::time::Instant::now() + wait;
        {
            let mut st = self.lock();
            self.record_start(&mut st);
        }
        loop {
            let notified = self.built.notified();
            tokio::pin!(notified);
            let slot = {
                let mut st = self.lock();
                if st.runner_id.as_deref() != Some(spec.runner_id.as_str()) {
                    return None;
                }
                match st
                    .idle
                    .iter()
                    .position(|s| s.key == key && s.not_after >= needed)
                {
                    Some(pos) => st.idle.remove(pos),
                    None if st.building_for(key) > st.waiting_for(key) => {
                        // Registered before the lock is released: a build that ends in
                        // between still wakes us.
                        notified.as_mut().enable();
                        *st.waiting.entry(key).or_default() += 1;
                        None
                    }
                    None => return None,
                }
            };
            let Some(slot) = slot else {
                // Counted out again however the wait ends, also when the caller drops this
                // future (a cancelled job): a stale count would stop later jobs from waiting.
                let _waiting = Waiting { pool: self, key };
                let woke = tokio::time::timeout_at(deadline, notified).await.is_ok();
                drop(_waiting);
                if !woke || self.closed.is_cancelled() {
                    return None;
                }
                continue;
            };
            if slot.born.elapsed() >= self.max_idle {
                self.discard(slot, "idle too long");
                continue;
            }
            match tokio::time::timeout(ALIVE_TIMEOUT, slot.inner.ping()).await {
                Ok(Ok(())) => return Some(slot),
                Ok(Err(e)) => self.discard(slot, &format!("its daemon does not answer: {e}")),
                Err(_) => self.discard(slot, "its daemon does not answer"),
            }
        }
    }

    /// Starts building ephemeral slots until idle + building reaches the pool size (keyed
    /// pools start theirs in [`Pool::prestart`]).
    pub(super) fn refill<B: SlotBuilder>(self: &Arc<Self>, builder: &Arc<B>) {
        if self.closed.is_cancelled() || self.keyed {
            return;
        }
        let mut st = self.lock();
        let Some(runner_id) = st.runner_id.clone() else {
            return;
        };
        let target = self.target_locked(&mut st);
        while st.idle.len() + st.building.len() < target {
            let id = new_slot_id(&st);
            st.building.insert(id, None);
            // After failures, wait before trying again: a host that cannot start sidecars
            // must not be hammered (2, 4, 8 … 60 s).
            let backoff = match st.failures {
                0 => Duration::ZERO,
                n => Duration::from_secs(2u64.saturating_pow(n.min(6)).min(60)),
            };
            self.spawn_build(builder, runner_id.clone(), id, None, String::new(), backoff);
        }
    }

    /// After a job on one of `key`'s warm data roots ended: starts a sidecar on a free root of
    /// that key for the project's next job, unless `per_key` are idle or starting already
    /// (parallel jobs of one project each find one). When the pool is full the oldest idle
    /// slot makes room; when every slot is starting, nothing happens.
    pub(super) fn prestart<B: SlotBuilder>(
        self: &Arc<Self>,
        builder: &Arc<B>,
        key: WarmKey,
        helper_image: String,
        per_key: usize,
    ) {
        if self.closed.is_cancelled() || !self.keyed {
            return;
        }
        let mut st = self.lock();
        let Some(runner_id) = st.runner_id.clone() else {
            return;
        };
        let of_key =
            st.idle.iter().filter(|s| s.key == Some(key)).count() + st.building_for(Some(key));
        if of_key >= per_key.max(1) {
            return;
        }
        let mut evicted = None;
        let target = self.target_locked(&mut st);
        if st.idle.len() + st.building.len() >= target {
            match st.idle.pop_front() {
                Some(old) => evicted = Some(old),
                None => return,
            }
        }
        let id = new_slot_id(&st);
        st.building.insert(id, Some(key));
        drop(st);
        if let Some(old) = evicted {
            self.discard(old, "room for a more recent project");
        }
        self.spawn_build(
            builder,
            runner_id,
            id,
            Some(key),
            helper_image,
            Duration::ZERO,
        );
    }

    fn spawn_build<B: SlotBuilder>(
        self: &Arc<Self>,
        builder: &Arc<B>,
        runner_id: String,
        id: u64,
        key: Option<WarmKey>,
        helper_image: String,
        backoff: Duration,
    ) {
        let (pool, builder) = (Arc::clone(self), Arc::clone(builder));
        self.tasks.spawn(async move {
            let built = tokio::select! {
                _ = pool.closed.cancelled() => Err(Error::Canceled),
                _ = tokio::time::sleep(backoff) => {
                    let plan = SlotPlan { runner_id: &runner_id, id, key, helper_image: &helper_image };
                    let started = Instant::now();
                    let r = builder.build_slot(plan, pool.max_idle, &pool.closed).await;
                    if r.is_ok() {
                        pool.learn_build_time(started.elapsed());
                    }
                    r
                }
            };
            pool.finished(id, built);
        });
    }

    /// Moving average of build times (new builds weigh 1/4): what "within one build time"
    /// means for the auto size.
    fn learn_build_time(&self, took: Duration) {
        let mut st = self.lock();
        st.build_time = Some(match st.build_time {
            None => took,
            Some(avg) => (avg * 3 + took) / 4,
        });
    }

    fn finished(&self, id: u64, built: Result<Slot, Error>) {
        // Waiters re-check once the lock below is released.
        let _wake = WakeOnDrop(&self.built);
        let mut st = self.lock();
        st.building.remove(&id);
        match built {
            Ok(slot) if !self.closed.is_cancelled() => {
                st.failures = 0;
                tracing::debug!(
                    slot = id,
                    ready_ms = slot.ready_after.as_millis() as u64,
                    "pre-started sidecar ready"
                );
                st.idle.push_back(slot);
            }
            Ok(slot) => {
                drop(st);
                self.discard(slot, "the runner is stopping");
            }
            Err(Error::Canceled) => {}
            // Another job of the project holds its warm root: nothing is wrong.
            Err(Error::Other { context, detail }) if context == WARM_BUSY => {
                tracing::debug!(slot = id, %detail, "no pre-started sidecar on a busy warm root");
            }
            Err(e) => {
                st.failures = st.failures.saturating_add(1);
                tracing::warn!(slot = id, error = %e, failures = st.failures, "could not pre-start a sidecar");
            }
        }
    }

    /// Tears down idle slots past their idle life.
    fn expire(&self) {
        let old: Vec<Slot> = {
            let mut st = self.lock();
            let (keep, old): (VecDeque<Slot>, VecDeque<Slot>) = std::mem::take(&mut st.idle)
                .into_iter()
                .partition(|s| s.born.elapsed() < self.max_idle);
            st.idle = keep;
            old.into_iter().collect()
        };
        for slot in old {
            self.discard(slot, "idle too long");
        }
    }

    /// Tears a slot down in the background.
    fn discard(&self, slot: Slot, why: &str) {
        tracing::info!(
            slot = slot.id(),
            reason = why,
            "removing a pre-started sidecar"
        );
        self.tasks.spawn(async move {
            let report = slot.state.teardown().await;
            for f in report.failures {
                tracing::warn!(failure = %f, "pre-started sidecar teardown left something");
            }
        });
    }

    /// Ids of idle and building slots.
    pub(super) fn standby_ids(&self) -> Vec<u64> {
        let st = self.lock();
        let mut ids: Vec<u64> = st.idle.iter().map(Slot::id).collect();
        ids.extend(st.building.keys().copied());
        ids.sort_unstable();
        ids
    }

    /// Stops building, tears down every idle slot and waits for all background work.
    pub(super) async fn shutdown(&self) -> TeardownReport {
        self.closed.cancel();
        self.built.notify_waiters();
        let idle: Vec<Slot> = std::mem::take(&mut self.lock().idle).into_iter().collect();
        let reports = futures::future::join_all(idle.into_iter().map(|s| s.state.teardown())).await;
        self.tasks.close();
        self.tasks.wait().await;
        let mut report = TeardownReport::default();
        for r in reports {
            report.removed.extend(r.removed);
            report.failures.extend(r.failures);
        }
        report
    }
}

/// `MemAvailable` of `/proc/meminfo`, bytes (also read by `runner doctor`'s pool fact).
pub fn mem_available(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|l| {
        let rest = l.strip_prefix("MemAvailable:")?;
        let kb: u64 = rest.trim().strip_suffix("kB")?.trim().parse().ok()?;
        kb.checked_mul(1024)
    })
}

/// One job waiting in `take` for a slot of `key`; counted out when dropped.
struct Waiting<'a> {
    pool: &'a Pool,
    key: Option<WarmKey>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(n) = self.pool.lock().waiting.get_mut(&self.key) {
            *n = n.saturating_sub(1);
        }
    }
}

/// Wakes every waiting `take` when dropped (after the pool lock guard declared later).
struct WakeOnDrop<'a>(&'a tokio::sync::Notify);

impl Drop for WakeOnDrop<'_> {
    fn drop(&mut self) {
        self.0.notify_waiters();
    }
}

fn new_slot_id(st: &PoolState) -> u64 {
    loop {
        // 40 random bits above the base: unique among this runner's slots, and readable.
        let id = SLOT_ID_BASE | (uuid::Uuid::new_v4().as_u64_pair().0 >> 24);
        if !st.building.contains_key(&id) && !st.idle.iter().any(|s| s.id() == id) {
            return id;
        }
    }
}

/// The `context` of the error a keyed build ends with when the warm root is held.
pub(super) const WARM_BUSY: &str = "take the project's warm data root";

/// Which slot to build.
pub(super) struct SlotPlan<'a> {
    pub runner_id: &'a str,
    pub id: u64,
    pub key: Option<WarmKey>,
    /// For the warm root's size check (`du` in a helper container).
    pub helper_image: &'a str,
}

/// The seam between the pool (when and how many slots) and the backend that knows how to
/// start a sidecar (what a slot is made of): the pool never imports that backend.
#[async_trait::async_trait]
pub(super) trait SlotBuilder: Send + Sync + 'static {
    /// Builds one slot ready for a job, living at most `max_idle` plus a job's budget; on any
    /// error or on `closed`, what was made is torn down (and a warm root's lease given back).
    async fn build_slot(
        &self,
        plan: SlotPlan<'_>,
        max_idle: Duration,
        closed: &CancellationToken,
    ) -> Result<Slot, Error>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isolation::naming::Naming;

    fn spec() -> crate::isolation::EnvironmentSpec {
        crate::isolation::EnvironmentSpec {
            runner_id: "r1".to_string(),
            job_id: 5,
            project_id: 1,
            protected: false,
            timeout: Duration::from_secs(600),
            build_image: Default::default(),
            helper_image: String::new(),
            services: Vec::new(),
            service_env: Vec::new(),
            repo_endpoint: None,
            clone_path: None,
        }
    }

    #[tokio::test]
    async fn a_wait_for_a_starting_slot_is_counted_out_however_it_ends() {
        let pool = Pool::new(1, Duration::from_secs(60), false);
        {
            let mut st = pool.lock();
            st.runner_id = Some("r1".to_string());
            st.building.insert(SLOT_ID_BASE + 1, None);
        }
        let spec = spec();
        // Waiting: counted in.
        let mut take = Box::pin(pool.take(&spec, None, Duration::from_secs(30)));
        tokio::select! {
            _ = &mut take => panic!("nothing is idle: the take must wait"),
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        assert_eq!(pool.lock().waiting_for(None), 1);
        // A second job does not wait for a slot already promised to the first.
        assert!(
            pool.take(&spec, None, Duration::from_secs(30))
                .await
                .is_none()
        );
        // The waiting job is cancelled (its future dropped): counted out.
        drop(take);
        assert_eq!(pool.lock().waiting_for(None), 0);
        // A wait that runs out: counted out too.
        assert!(
            pool.take(&spec, None, Duration::from_millis(20))
                .await
                .is_none()
        );
        assert_eq!(pool.lock().waiting_for(None), 0);
        // Another runner id, or a key nobody builds: no wait at all.
        let mut other = spec.clone();
        other.runner_id = "r2".to_string();
        assert!(
            pool.take(&other, None, Duration::from_secs(30))
                .await
                .is_none()
        );
        let key = Some(WarmKey {
            project_id: 1,
            protected: false,
        });
        assert!(
            pool.take(&spec, key, Duration::from_secs(30))
                .await
                .is_none()
        );
    }

    /// The auto size: a lone start asks for one slot, starts within one build time of each
    /// other each ask for one, spread-out starts do not add up; bounded by the job cap and by
    /// memory, never below the floor; back to the floor once the window has passed.
    #[test]
    fn auto_size_follows_demand_within_its_bounds() {
        let now = tokio::time::Instant::now();
        let at = |ms: u64| now + Duration::from_millis(ms);
        let build = Duration::from_secs(3);
        assert_eq!(demand_target(&VecDeque::new(), build), 0);
        assert_eq!(demand_target(&VecDeque::from([at(0)]), build), 1);
        // A stream one job every 5 s: each replacement is ready before the next job.
        let stream = VecDeque::from([at(0), at(5_000), at(10_000), at(15_000)]);
        assert_eq!(demand_target(&stream, build), 1);
        // A stream one job a second: three arrive while one slot builds.
        let fast = VecDeque::from([at(0), at(1_000), at(2_000), at(3_000), at(4_000)]);
        assert_eq!(demand_target(&fast, build), 4);
        // A stage of four parallel jobs, then quiet.
        let burst = VecDeque::from([at(0), at(10), at(20), at(30), at(20_000)]);
        assert_eq!(demand_target(&burst, build), 4);

        let pool = Pool::with_sizing(Sizing::Auto { floor: 0 }, Duration::from_secs(60), false);
        assert_eq!(pool.target(), 0, "no demand yet");
        for _ in 0..6 {
            let mut st = pool.lock();
            pool.record_start(&mut st);
        }
        pool.lock().build_time = Some(build);
        assert_eq!(pool.target(), 6, "six jobs at once");
        pool.set_job_cap(4);
        assert_eq!(pool.target(), 4, "concurrent/limit bound it");
        pool.lock().memory_room = Some(2);
        assert_eq!(pool.target(), 2, "memory bounds it");
        // The window (max_idle) passes: demand is forgotten.
        for t in pool.lock().starts.iter_mut() {
            *t = t
                .checked_sub(Duration::from_secs(61))
                .expect("an uptime over a minute");
        }
        assert_eq!(pool.target(), 0);
        // An explicit floor is never undercut.
        let floored = Pool::with_sizing(Sizing::Auto { floor: 2 }, Duration::from_secs(60), false);
        floored.lock().memory_room = Some(0);
        assert_eq!(floored.target(), 2);
        // A number is a number.
        assert_eq!(Pool::new(3, Duration::from_secs(60), false).target(), 3);
    }

    #[test]
    fn meminfo_is_read() {
        let text = "MemTotal:        8000000 kB\nMemFree:  100 kB\nMemAvailable:    2097152 kB\n";
        assert_eq!(mem_available(text), Some(2 << 30));
        assert_eq!(mem_available("MemFree: 1 kB\n"), None);
    }

    #[test]
    fn slot_ids_are_above_job_ids_and_distinct() {
        let st = PoolState::default();
        let a = new_slot_id(&st);
        let b = new_slot_id(&st);
        assert!(is_slot_id(a) && is_slot_id(b));
        assert_ne!(a, b);
        assert!(!is_slot_id(9_999_999_999));
        // Names built from it stay within Docker's and iptables' limits.
        let n = Naming::new("r1", a, Duration::from_secs(60)).unwrap();
        assert!(n.name("sidecar").len() < 64);
        let chain = crate::netpolicy::rules::chain_name("r1", a).unwrap();
        assert!(chain.len() <= crate::netpolicy::rules::MAX_CHAIN_LEN);
    }
}
