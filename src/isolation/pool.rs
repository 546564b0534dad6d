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
}

impl PoolState {
    fn building_for(&self, key: Option<WarmKey>) -> usize {
        self.building.values().filter(|k| **k == key).count()
    }

    fn waiting_for(&self, key: Option<WarmKey>) -> usize {
        self.waiting.get(&key).copied().unwrap_or(0)
    }
}

/// Keeps up to `size` slots ready. See the module docs.
pub struct Pool {
    size: usize,
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
        Pool {
            size,
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
            loop {
                tokio::select! {
                    _ = pool.closed.cancelled() => return,
                    _ = tokio::time::sleep(MAINTENANCE_EVERY) => {}
                }
                pool.expire();
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
        while st.idle.len() + st.building.len() < self.size {
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

    /// After a job on `key`'s warm data root ended: starts a sidecar on that root for the
    /// project's next job, unless one is idle or starting already. When the pool is full the
    /// oldest idle slot makes room; when every slot is starting, nothing happens.
    pub(super) fn prestart<B: SlotBuilder>(
        self: &Arc<Self>,
        builder: &Arc<B>,
        key: WarmKey,
        helper_image: String,
    ) {
        if self.closed.is_cancelled() || !self.keyed {
            return;
        }
        let mut st = self.lock();
        let Some(runner_id) = st.runner_id.clone() else {
            return;
        };
        if st.idle.iter().any(|s| s.key == Some(key)) || st.building_for(Some(key)) > 0 {
            return;
        }
        let mut evicted = None;
        if st.idle.len() + st.building.len() >= self.size {
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
                    builder.build_slot(plan, pool.max_idle, &pool.closed).await
                }
            };
            pool.finished(id, built);
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
