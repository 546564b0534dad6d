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
//! With `data_root = "project"` a slot is *keyed*: it runs on one of a project's warm data
//! roots (same project, same protected flag: the root's lease is held by the slot, scrubbed as
//! for any reuse) and waits for the project's next job. The policy (docs/warm-images.md,
//! "Warm daemons"), one ready slot ahead per recently active key:
//! - **ahead**: when a job of key K starts on a warm root (its own or a slot's), a slot for K
//!   starts at once on *another* free root of K ([`Pool::job_started`]), so a next job arriving
//!   while this one still holds its root (running, or in its teardown) finds a daemon ready;
//! - **after a job**: when a job of K ends and K has fewer slots than it wants, one starts on the
//!   root just released ([`Pool::prestart`]);
//! - **upgrade**: a slot started before K's last job ended holds an older state of the roots;
//!   once K has been quiet for [`UPGRADE_QUIET`], a slot starts on the root that job left (the
//!   most recently used free root) and the older slot goes when the new one is ready;
//! - **how many**: a key wants as many as its jobs that started within one slot build time of
//!   each other (a stage of parallel jobs; one for a stream), at most `data_root_per_key`, none
//!   once it sent no job for `warm_pool_max_idle`; the pool's size (`warm_pool` N, or "auto": the
//!   keys' wants, bounded by `concurrent`/`limit` and memory) caps the sum, and a key's new slot
//!   takes the room of another key's oldest idle slot, never of its own.
//!
//! **Kept networks.** A job network and its firewall chain are the costliest objects of a slot
//! to make and to remove (the engine runs some 18 `iptables` processes either way, 0.15–0.25 s,
//! serialized with every other network change on the host). So when a job that ran on a slot
//! ends, its teardown removes every container first, and when the network then has no
//! endpoint left, it is handed back here ([`Pool::keep_network`]) instead of being removed, with
//! its chain still installed; the next slot built is connected to it ([`Pool::take_network`]).
//! What a network carries from one job to the next is only what the runner made: its /28, its
//! bridge and the chain, whose rules come from runner config alone (`egress.rs`). No container,
//! endpoint, alias or DNS name of the earlier job is left on it. The pool keeps at most as many
//! as its size (at least one), each for at most `max_idle`, and only while the network's
//! deadline label outlasts a whole new slot's life (a slot's deadline has the PKI margin, 30
//! min, beyond that life: a network serves later slots for 30 minutes after it was made);
//! shutdown removes them. A kept network keeps the labels and chain name of the slot that made
//! it; [`Pool::kept_ids`] names it while no job holds it (the bench's leftover count).
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

/// Keyed pools: how long a project must send no job before its slot, started before its last
/// job ended, is replaced by one on the root that job left. Shorter would start a second
/// sidecar per job in a stream of back-to-back jobs (each would find the ahead slot anyway);
/// longer leaves a later job on one-job-older images and build cache.
pub(super) const UPGRADE_QUIET: Duration = Duration::from_secs(10);

/// Keyed pools: job starts kept per key (more within one build time exceed any root count).
const KEY_STARTS_KEPT: usize = 64;

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

/// A job network with its firewall chain, emptied by a teardown and kept for the next slot
/// (see "Kept networks" above).
pub(super) struct SpareNetwork {
    pub network: super::network::CarvedNetwork,
    pub egress: super::egress::JobEgress,
    docker: Docker,
    kept: Instant,
}

impl SpareNetwork {
    /// `network`, with no endpoint left, and its installed chain.
    pub(super) fn new(
        network: super::network::CarvedNetwork,
        egress: super::egress::JobEgress,
        docker: Docker,
    ) -> Self {
        SpareNetwork {
            network,
            egress,
            docker,
            kept: Instant::now(),
        }
    }

    /// Removes the chain, then the network (a chain whose bridge is gone would match a reused
    /// interface name).
    async fn remove(self) -> TeardownReport {
        let mut r = TeardownReport::default();
        match self.egress.remove().await {
            Ok(()) => r
                .removed
                .push(format!("firewall chain {}", self.egress.chain())),
            Err(e) => r.failures.push(e.to_string()),
        }
        match self.docker.remove_network(&self.network.name).await {
            Ok(true) => r.removed.push(format!("network {}", self.network.name)),
            Ok(false) => {}
            Err(e) => r.failures.push(e.to_string()),
        }
        r
    }
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
    /// Keyed pools: what each project key did lately.
    keys: HashMap<WarmKey, KeyStats>,
    /// When the build of each idle or building slot began (tokio's clock): a keyed slot holds
    /// its root as it was then, so the newest is the warmest.
    began: HashMap<u64, tokio::time::Instant>,
    /// Emptied job networks waiting for the next slot (newest last).
    spares: Vec<SpareNetwork>,
    /// Slots being built on a kept network: the id that network's labels carry.
    lent: HashMap<u64, u64>,
}

/// Keyed pools: one project key's recent jobs.
#[derive(Debug, Clone, Default)]
struct KeyStats {
    /// Job starts within the window (oldest first).
    starts: VecDeque<tokio::time::Instant>,
    last_start: Option<tokio::time::Instant>,
    last_end: Option<tokio::time::Instant>,
    /// What its slots are built with (the helper image of its last job) and may use
    /// (`data_root_per_key`).
    helper_image: String,
    per_key: usize,
}

impl KeyStats {
    /// Slots the key wants ready now: its job starts within one build time of each other, at
    /// least one while it is active, at most its roots; none once it has been quiet for
    /// `window`. Forgets starts older than the window.
    fn wanted(
        &mut self,
        build_time: Duration,
        window: Duration,
        now: tokio::time::Instant,
    ) -> usize {
        while self
            .starts
            .front()
            .is_some_and(|t| now.duration_since(*t) > window)
        {
            self.starts.pop_front();
        }
        let recent =
            |t: Option<tokio::time::Instant>| t.is_some_and(|t| now.duration_since(t) <= window);
        if !recent(self.last_start) && !recent(self.last_end) {
            return 0;
        }
        demand_target(&self.starts, build_time).clamp(1, self.per_key.max(1))
    }

    /// Whether the key's ready slot should be replaced by one on the root its last job left:
    /// that job ended `quiet` ago or more, no job started since, and `newest`, the latest
    /// build start of the key's slots (all idle, none building), is older than that end.
    fn wants_upgrade(
        &self,
        newest: Option<tokio::time::Instant>,
        building: bool,
        now: tokio::time::Instant,
        quiet: Duration,
    ) -> bool {
        let Some(end) = self.last_end else {
            return false;
        };
        self.per_key > 1
            && !building
            && now.duration_since(end) >= quiet
            && self.last_start.is_none_or(|s| s <= end)
            && newest.is_some_and(|n| n < end)
    }
}

impl PoolState {
    fn building_for(&self, key: Option<WarmKey>) -> usize {
        self.building.values().filter(|k| **k == key).count()
    }

    fn waiting_for(&self, key: Option<WarmKey>) -> usize {
        self.waiting.get(&key).copied().unwrap_or(0)
    }

    /// Slots of `key`, idle or starting.
    fn ready_for(&self, key: WarmKey) -> usize {
        self.idle.iter().filter(|s| s.key == Some(key)).count() + self.building_for(Some(key))
    }

    /// Where the idle slot to hand out for `key` sits: a slot whose certificates last until
    /// `needed`, the newest build first (keyed: the warmest state of the key's roots).
    fn pick(&self, key: Option<WarmKey>, needed: SystemTime) -> Option<usize> {
        self.idle
            .iter()
            .enumerate()
            .filter(|(_, s)| s.key == key && s.not_after >= needed)
            .max_by_key(|(_, s)| self.began.get(&s.id()).copied())
            .map(|(i, _)| i)
    }

    /// Keyed pools: the slots all active keys want (idle keys are forgotten here).
    fn keys_wanted(&mut self, window: Duration, now: tokio::time::Instant) -> usize {
        let build = self.build_time.unwrap_or(FIRST_BUILD_GUESS);
        let mut total = 0usize;
        let mut quiet = Vec::new();
        for (k, stats) in self.keys.iter_mut() {
            match stats.wanted(build, window, now) {
                0 => quiet.push(*k),
                n => total = total.saturating_add(n),
            }
        }
        for k in quiet {
            self.keys.remove(&k);
        }
        total
    }

    /// What a new slot for `key` needs first when the pool holds `target` already: `Some(None)`,
    /// room; `Some(Some(slot))`, another key's oldest idle slot, taken out to be discarded
    /// (the most recent project wins); `None`, no room (everything else is starting or is the
    /// key's own).
    fn room_for(&mut self, key: WarmKey, target: usize) -> Option<Option<Slot>> {
        if self.idle.len() + self.building.len() < target {
            return Some(None);
        }
        let pos = self.idle.iter().position(|s| s.key != Some(key))?;
        Some(self.idle.remove(pos))
    }

    /// Idle slots of `key` beyond its `keep` newest, taken out to be discarded.
    fn surplus_of(&mut self, key: WarmKey, keep: usize) -> Vec<Slot> {
        let mine: Vec<(Option<tokio::time::Instant>, u64)> = self
            .idle
            .iter()
            .filter(|s| s.key == Some(key))
            .map(|s| (self.began.get(&s.id()).copied(), s.id()))
            .collect();
        let drop = oldest_beyond(mine, keep);
        if drop.is_empty() {
            return Vec::new();
        }
        let (gone, kept): (VecDeque<Slot>, VecDeque<Slot>) = std::mem::take(&mut self.idle)
            .into_iter()
            .partition(|s| drop.contains(&s.id()));
        self.idle = kept;
        for s in &gone {
            self.began.remove(&s.id());
        }
        gone.into_iter().collect()
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
                let mut wanted =
                    demand_target(&st.starts, st.build_time.unwrap_or(FIRST_BUILD_GUESS));
                if self.keyed {
                    // A keyed slot serves one project: each active project wants its own.
                    wanted = wanted.max(st.keys_wanted(self.max_idle, now));
                }
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

    /// Removes idle slots above the target (demand fell), oldest first. Keyed pools first drop
    /// the slots of keys that went quiet and each key's slots beyond what it wants (its
    /// oldest), and do not count a key's replacement being built ([`Pool::upgrade`]) against
    /// the size, so it never costs another key its slot.
    fn shrink(&self) {
        let extra: Vec<Slot> = {
            let mut st = self.lock();
            let target = self.target_locked(&mut st);
            let mut extra = Vec::new();
            let mut replacing = 0;
            if self.keyed {
                let now = tokio::time::Instant::now();
                let build = st.build_time.unwrap_or(FIRST_BUILD_GUESS);
                let keyed: std::collections::HashSet<WarmKey> =
                    st.idle.iter().filter_map(|s| s.key).collect();
                for k in keyed {
                    let keep = st
                        .keys
                        .get_mut(&k)
                        .map_or(0, |s| s.wanted(build, self.max_idle, now));
                    extra.extend(st.surplus_of(k, keep));
                    if st.building_for(Some(k)) > 0 && st.idle.iter().any(|s| s.key == Some(k)) {
                        replacing += 1;
                    }
                }
            }
            let over = (st.idle.len() + st.building.len())
                .saturating_sub(target)
                .saturating_sub(replacing);
            let n = over.min(st.idle.len());
            extra.extend(st.idle.drain(..n));
            extra
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
            if let Some(k) = key.filter(|_| self.keyed) {
                let now = tokio::time::Instant::now();
                let stats = st.keys.entry(k).or_default();
                stats.starts.push_back(now);
                if stats.starts.len() > KEY_STARTS_KEPT {
                    stats.starts.pop_front();
                }
                stats.last_start = Some(now);
            }
        }
        loop {
            let notified = self.built.notified();
            tokio::pin!(notified);
            let slot = {
                let mut st = self.lock();
                if st.runner_id.as_deref() != Some(spec.runner_id.as_str()) {
                    return None;
                }
                match st.pick(key, needed) {
                    Some(pos) => {
                        let slot = st.idle.remove(pos);
                        if let Some(s) = &slot {
                            st.began.remove(&s.id());
                        }
                        slot
                    }
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
            st.began.insert(id, tokio::time::Instant::now());
            // After failures, wait before trying again: a host that cannot start sidecars
            // must not be hammered (2, 4, 8 … 60 s).
            let backoff = match st.failures {
                0 => Duration::ZERO,
                n => Duration::from_secs(2u64.saturating_pow(n.min(6)).min(60)),
            };
            self.spawn_build(builder, runner_id.clone(), id, None, String::new(), backoff);
        }
    }

    /// A job of `key` started on one of the key's warm roots (its own sidecar's or a slot's):
    /// unless the key has the slots it wants idle or starting, one starts at once on another
    /// free root of the key (the job holds its own), so the project's next job, arriving while
    /// this one still holds its root, finds a daemon ready. The pool's size is respected: a
    /// full pool gives up another key's oldest idle slot, never one of this key.
    pub(super) fn job_started<B: SlotBuilder>(
        self: &Arc<Self>,
        builder: &Arc<B>,
        key: WarmKey,
        helper_image: String,
        per_key: usize,
    ) {
        // With a single root per key the job holds it: no other root to start on.
        self.start_for(builder, key, helper_image, per_key, false, per_key > 1);
    }

    /// After a job on one of `key`'s warm data roots ended (its root released): starts a
    /// sidecar on a free root of that key for the project's next job, unless the key has the
    /// slots it wants idle or starting already (a stream finds the one [`Pool::job_started`]
    /// started; a stage of parallel jobs one each). When the pool is full another key's oldest
    /// idle slot makes room; when every other slot is starting or is the key's own, nothing
    /// happens. Later, once the key is quiet, [`Pool::upgrade`] replaces a slot older than this
    /// job's end by one on the root it left.
    pub(super) fn prestart<B: SlotBuilder>(
        self: &Arc<Self>,
        builder: &Arc<B>,
        key: WarmKey,
        helper_image: String,
        per_key: usize,
    ) {
        self.start_for(builder, key, helper_image, per_key, true, true);
        if self.closed.is_cancelled() || !self.keyed {
            return;
        }
        // A timer, not the 15 s maintenance round: the project's slot is the warmest a
        // known time after its last job.
        let (pool, builder) = (Arc::clone(self), Arc::clone(builder));
        self.tasks.spawn(async move {
            tokio::select! {
                _ = pool.closed.cancelled() => {}
                _ = tokio::time::sleep(UPGRADE_QUIET) => pool.upgrade(&builder, key),
            }
        });
    }

    /// [`Pool::job_started`] and [`Pool::prestart`]: records the key's job (`ended`) and starts
    /// one slot for it when it wants more and `may_start`.
    fn start_for<B: SlotBuilder>(
        self: &Arc<Self>,
        builder: &Arc<B>,
        key: WarmKey,
        helper_image: String,
        per_key: usize,
        ended: bool,
        may_start: bool,
    ) {
        if self.closed.is_cancelled() || !self.keyed {
            return;
        }
        let now = tokio::time::Instant::now();
        let mut st = self.lock();
        let Some(runner_id) = st.runner_id.clone() else {
            return;
        };
        let stats = st.keys.entry(key).or_default();
        stats.helper_image = helper_image.clone();
        stats.per_key = per_key.max(1);
        if ended {
            stats.last_end = Some(now);
        }
        let build = st.build_time.unwrap_or(FIRST_BUILD_GUESS);
        let wanted = st
            .keys
            .get_mut(&key)
            .map_or(0, |k| k.wanted(build, self.max_idle, now));
        if !may_start || st.ready_for(key) >= wanted {
            return;
        }
        let target = self.target_locked(&mut st);
        let Some(evicted) = st.room_for(key, target) else {
            return;
        };
        let id = new_slot_id(&st);
        st.building.insert(id, Some(key));
        st.began.insert(id, now);
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

    /// Once `key` has been quiet for [`UPGRADE_QUIET`] after a job: when its ready slots were
    /// all started before that job ended (they hold the roots as they were before it), starts
    /// one more on the root the job left (the most recently used free root comes first in
    /// `data_root::acquire`). It replaces the older ones when ready ([`Pool::finished`] keeps
    /// the key's newest), so for that moment the pool may hold one slot above its size.
    fn upgrade<B: SlotBuilder>(self: &Arc<Self>, builder: &Arc<B>, key: WarmKey) {
        if self.closed.is_cancelled() || !self.keyed {
            return;
        }
        let now = tokio::time::Instant::now();
        let mut st = self.lock();
        let Some(runner_id) = st.runner_id.clone() else {
            return;
        };
        let newest = st
            .idle
            .iter()
            .filter(|s| s.key == Some(key))
            .filter_map(|s| st.began.get(&s.id()).copied())
            .max();
        let building = st.building_for(Some(key)) > 0;
        let Some(stats) = st.keys.get(&key) else {
            return;
        };
        // A root must be free: the key's slots hold one each.
        let free = st.ready_for(key) < stats.per_key;
        if !free || !stats.wants_upgrade(newest, building, now, UPGRADE_QUIET) {
            return;
        }
        let helper_image = stats.helper_image.clone();
        let id = new_slot_id(&st);
        st.building.insert(id, Some(key));
        st.began.insert(id, now);
        drop(st);
        tracing::debug!(
            slot = id,
            project = key.project_id,
            "starting a sidecar on the root the project's last job left"
        );
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
                    let network = pool.take_network(id);
                    let plan = SlotPlan { runner_id: &runner_id, id, key, helper_image: &helper_image, network };
                    let started = Instant::now();
                    let r = builder.build_slot(plan, pool.max_idle, &pool.closed).await;
                    r.map(|mut slot| {
                        pool.learn_build_time(started.elapsed());
                        // Its job's teardown hands the emptied network back here.
                        slot.state.network_home = Some(Arc::downgrade(&pool));
                        slot
                    })
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
        // Built, its network is found through the idle slot; failed, it was removed.
        st.lent.remove(&id);
        if built.is_err() {
            st.began.remove(&id);
        }
        match built {
            Ok(slot) if !self.closed.is_cancelled() => {
                st.failures = 0;
                tracing::debug!(
                    slot = id,
                    ready_ms = slot.ready_after.as_millis() as u64,
                    "pre-started sidecar ready"
                );
                let key = slot.key;
                st.idle.push_back(slot);
                // A key's newest slots stay (the warmest state of its roots); older ones
                // beyond what it wants give their root and memory back.
                if let Some(k) = key {
                    let now = tokio::time::Instant::now();
                    let build = st.build_time.unwrap_or(FIRST_BUILD_GUESS);
                    let keep = st
                        .keys
                        .get_mut(&k)
                        .map_or(1, |s| s.wanted(build, self.max_idle, now).max(1));
                    let surplus = st.surplus_of(k, keep);
                    drop(st);
                    for old in surplus {
                        self.discard(old, "a newer one of its project is ready");
                    }
                }
            }
            Ok(slot) => {
                st.began.remove(&id);
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

    /// Tears down idle slots past their idle life, and kept networks past theirs.
    fn expire(&self) {
        let stale: Vec<SpareNetwork> = {
            let mut st = self.lock();
            let (keep, stale) = std::mem::take(&mut st.spares)
                .into_iter()
                .partition(|n| n.kept.elapsed() < self.max_idle && self.outlasts_a_slot(n));
            st.spares = keep;
            stale
        };
        for n in stale {
            self.discard_network(n);
        }
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
        self.lock().began.remove(&slot.id());
        tracing::info!(
            slot = slot.id(),
            reason = why,
            "removing a pre-started sidecar"
        );
        self.tasks.spawn(async move {
            let report = teardown_slot(slot).await;
            for f in report.failures {
                tracing::warn!(failure = %f, "pre-started sidecar teardown left something");
            }
        });
    }

    /// Keeps `spare`, a job network its teardown emptied, for the next slot; gives it back
    /// when the pool does not want it (stopping, as many kept as its size, or a deadline label
    /// that would not outlast a new slot's life): the caller removes it then.
    pub(super) fn keep_network(&self, spare: Box<SpareNetwork>) -> Result<(), Box<SpareNetwork>> {
        let mut st = self.lock();
        // Checked under the lock `shutdown` drains under after closing: none is kept late.
        let room = self.target_locked(&mut st).max(1);
        if self.closed.is_cancelled() || st.spares.len() >= room || !self.outlasts_a_slot(&spare) {
            return Err(spare);
        }
        tracing::debug!(network = %spare.network.name, "job network kept for the next pre-started sidecar");
        st.spares.push(*spare);
        Ok(())
    }

    /// A kept network for slot `id`, being built now, the most recently kept first.
    fn take_network(&self, id: u64) -> Option<SpareNetwork> {
        let mut st = self.lock();
        while let Some(n) = st.spares.pop() {
            if self.outlasts_a_slot(&n) {
                st.lent.insert(id, n.network.label_id);
                return Some(n);
            }
            self.discard_network(n);
        }
        None
    }

    /// Whether `n`'s deadline label is later than the end of a slot built now (its idle life
    /// and its job's budget): sweeps that go by the deadline must never find it stale in use.
    fn outlasts_a_slot(&self, n: &SpareNetwork) -> bool {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        outlasts_a_slot(n.network.deadline, now, self.max_idle)
    }

    /// Removes a kept network in the background.
    fn discard_network(&self, n: SpareNetwork) {
        tracing::debug!(network = %n.network.name, "removing a kept job network");
        self.tasks.spawn(async move {
            for f in n.remove().await.failures {
                tracing::warn!(failure = %f, "kept job network removal left something");
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

    /// Ids labelling kept networks: waiting, or under a slot no job has taken yet (a kept
    /// network keeps the id of the slot that made it, under every later slot).
    pub(super) fn kept_ids(&self) -> Vec<u64> {
        let st = self.lock();
        let mut ids: Vec<u64> = st.spares.iter().map(|n| n.network.label_id).collect();
        ids.extend(st.lent.values().copied());
        // An idle slot's network made by another slot (its own is named by `standby_ids`).
        ids.extend(st.idle.iter().filter_map(|s| {
            let made_by = s.state.network.as_ref()?.label_id;
            (made_by != s.id()).then_some(made_by)
        }));
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Stops building, tears down every idle slot and waits for all background work.
    pub(super) async fn shutdown(&self) -> TeardownReport {
        self.closed.cancel();
        self.built.notify_waiters();
        let (idle, spares): (Vec<Slot>, Vec<SpareNetwork>) = {
            let mut st = self.lock();
            (
                std::mem::take(&mut st.idle).into_iter().collect(),
                std::mem::take(&mut st.spares),
            )
        };
        // Closed: a slot's teardown removes its network instead of handing it back.
        let mut reports = futures::future::join_all(idle.into_iter().map(teardown_slot)).await;
        reports
            .extend(futures::future::join_all(spares.into_iter().map(SpareNetwork::remove)).await);
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

/// Tears down a slot no job took. A keyed slot's dockerd is stopped gracefully first, so it
/// leaves its warm root consistent for the next daemon; its lease is then dropped without
/// `release`: no job ran on the root, so it is neither measured nor marked as recently used
/// (`data_root::acquire` prefers the root a job used last).
async fn teardown_slot(slot: Slot) -> TeardownReport {
    let Slot { state, lease, .. } = slot;
    let report = if lease.is_some() {
        state.teardown_gracefully().await
    } else {
        state.teardown().await
    };
    // The root's lock goes only now, with its daemon gone.
    drop(lease);
    report
}

/// The ids of `slots` (build start, id) beyond the `keep` newest: the oldest go first, a
/// slot whose start is unknown before any other.
fn oldest_beyond(mut slots: Vec<(Option<tokio::time::Instant>, u64)>, keep: usize) -> Vec<u64> {
    if slots.len() <= keep {
        return Vec::new();
    }
    slots.sort();
    let n = slots.len() - keep;
    slots.into_iter().take(n).map(|(_, id)| id).collect()
}

/// Whether a deadline label (unix seconds) is no earlier than the end of a slot built at `now`
/// (since the epoch) that may idle `max_idle` and then serve a job for [`SLOT_JOB_BUDGET`].
fn outlasts_a_slot(deadline: u64, now: Duration, max_idle: Duration) -> bool {
    let end = now
        .saturating_add(max_idle)
        .saturating_add(SLOT_JOB_BUDGET)
        .as_secs();
    deadline >= end
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
    /// A kept job network to connect the slot to instead of making one.
    pub network: Option<SpareNetwork>,
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

    const K: WarmKey = WarmKey {
        project_id: 7,
        protected: false,
    };

    /// A key wants one slot while it sends a stream of jobs, one per job of a stage that
    /// started within one build time of each other (at most its roots), none once it has been
    /// quiet for the window; a job's end alone keeps it active.
    #[test]
    fn a_key_wants_what_its_recent_jobs_ask_for() {
        let now = tokio::time::Instant::now();
        let at = |ms: u64| now + Duration::from_millis(ms);
        let (build, window) = (Duration::from_secs(3), Duration::from_secs(60));
        let mut k = KeyStats {
            per_key: 4,
            ..Default::default()
        };
        assert_eq!(k.wanted(build, window, at(0)), 0, "no job yet");
        // A stream: one job every 10 s.
        for t in [0, 10_000, 20_000] {
            k.starts.push_back(at(t));
            k.last_start = Some(at(t));
        }
        assert_eq!(k.wanted(build, window, at(21_000)), 1);
        // A stage of three parallel jobs.
        for t in [30_000, 30_010, 30_020] {
            k.starts.push_back(at(t));
            k.last_start = Some(at(t));
        }
        assert_eq!(k.wanted(build, window, at(31_000)), 3);
        // Never more than the key's roots.
        k.per_key = 2;
        assert_eq!(k.wanted(build, window, at(31_000)), 2);
        // Its last job ended later: still active after the starts left the window.
        k.last_end = Some(at(80_000));
        assert_eq!(k.wanted(build, window, at(100_000)), 1);
        assert!(
            k.starts.is_empty(),
            "starts older than the window are forgotten"
        );
        // Quiet for the whole window: nothing.
        assert_eq!(k.wanted(build, window, at(141_000)), 0);
    }

    /// A key's ready slot is replaced by one on the root its last job left only when that job
    /// ended a quiet period ago, no job started since, its slots all began before that end,
    /// none is being built, and it has a second root.
    #[test]
    fn a_slot_older_than_the_last_job_is_upgraded_once_the_key_is_quiet() {
        let t0 = tokio::time::Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let quiet = Duration::from_secs(10);
        let k = KeyStats {
            per_key: 4,
            last_start: Some(at(0)),
            last_end: Some(at(20)),
            ..Default::default()
        };
        // The ahead slot began when the job started (t = 1): older than the job's end.
        assert!(k.wants_upgrade(Some(at(1)), false, at(30), quiet));
        assert!(
            !k.wants_upgrade(Some(at(1)), false, at(29), quiet),
            "not quiet yet"
        );
        assert!(
            !k.wants_upgrade(Some(at(1)), true, at(30), quiet),
            "one is being built"
        );
        assert!(
            !k.wants_upgrade(Some(at(21)), false, at(30), quiet),
            "already newer"
        );
        assert!(
            !k.wants_upgrade(None, false, at(30), quiet),
            "no slot to replace"
        );
        let busy = KeyStats {
            last_start: Some(at(25)),
            ..k.clone()
        };
        assert!(
            !busy.wants_upgrade(Some(at(1)), false, at(30), quiet),
            "a job started since"
        );
        let one_root = KeyStats {
            per_key: 1,
            ..k.clone()
        };
        assert!(!one_root.wants_upgrade(Some(at(1)), false, at(30), quiet));
        let never_ended = KeyStats {
            last_end: None,
            ..k
        };
        assert!(!never_ended.wants_upgrade(Some(at(1)), false, at(30), quiet));
    }

    /// Surplus slots of a key go oldest first (an unknown start first of all); the newest stay.
    #[test]
    fn a_keys_oldest_slots_go_first() {
        let t0 = tokio::time::Instant::now();
        let at = |s: u64| Some(t0 + Duration::from_secs(s));
        let slots = vec![(at(5), 1), (at(1), 2), (None, 3), (at(9), 4)];
        assert_eq!(oldest_beyond(slots.clone(), 1), vec![3, 2, 1]);
        assert_eq!(oldest_beyond(slots.clone(), 3), vec![3]);
        assert!(oldest_beyond(slots, 4).is_empty());
    }

    /// `warm_pool = "auto"` with keyed slots: each active key asks for its own (a slot of one
    /// project never serves another), bounded like any auto size; quiet keys are forgotten.
    #[test]
    fn the_keyed_auto_size_is_the_active_keys_wants() {
        let pool = Pool::with_sizing(Sizing::Auto { floor: 0 }, Duration::from_secs(60), true);
        let now = tokio::time::Instant::now();
        for p in 1..=3 {
            let key = WarmKey {
                project_id: p,
                protected: false,
            };
            let mut st = pool.lock();
            st.keys.insert(
                key,
                KeyStats {
                    starts: VecDeque::from([now]),
                    last_start: Some(now),
                    per_key: 4,
                    ..Default::default()
                },
            );
        }
        assert_eq!(
            pool.target(),
            3,
            "three projects, one job each, one after the other"
        );
        pool.set_job_cap(2);
        assert_eq!(pool.target(), 2, "concurrent/limit bound it");
        // The window (max_idle) passes.
        for k in pool.lock().keys.values_mut() {
            let old = now
                .checked_sub(Duration::from_secs(61))
                .expect("an uptime over a minute");
            k.starts = VecDeque::from([old]);
            k.last_start = Some(old);
        }
        assert_eq!(pool.target(), 0);
        assert!(pool.lock().keys.is_empty(), "quiet keys are forgotten");
    }

    /// A builder that records what it is asked for and holds every build until the pool closes
    /// (each stays "starting"), or fails at once like a key whose roots are all held.
    struct Recorder {
        asked: Mutex<Vec<Option<WarmKey>>>,
        busy: bool,
    }

    #[async_trait::async_trait]
    impl SlotBuilder for Recorder {
        async fn build_slot(
            &self,
            plan: SlotPlan<'_>,
            _max_idle: Duration,
            closed: &CancellationToken,
        ) -> Result<Slot, Error> {
            self.asked
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(plan.key);
            if self.busy {
                return Err(Error::Other {
                    context: WARM_BUSY.to_string(),
                    detail: "Busy".to_string(),
                });
            }
            closed.cancelled().await;
            Err(Error::Canceled)
        }
    }

    impl Recorder {
        fn asked(&self) -> Vec<Option<WarmKey>> {
            self.asked.lock().unwrap_or_else(|e| e.into_inner()).clone()
        }
    }

    /// The policy's starts: a job of K starting on its warm root starts one slot for K at once
    /// (on another root), a stage of two jobs two; never more than the pool's size, never for
    /// a key with a single root (the job holds it), nothing more when a job ends and K has its
    /// slots starting already; another key's job finds no room when everything is starting.
    #[tokio::test]
    async fn a_keys_job_starts_one_slot_ahead_within_the_pools_size() {
        let pool = Arc::new(Pool::new(2, Duration::from_secs(60), true));
        let rec = Arc::new(Recorder {
            asked: Mutex::new(Vec::new()),
            busy: false,
        });
        pool.lock().runner_id = Some("r1".to_string());
        let mut spec = spec();
        spec.project_id = K.project_id;
        // A job of K arrives: nothing ready or starting, it starts its own sidecar.
        assert!(
            pool.take(&spec, Some(K), Duration::from_secs(5))
                .await
                .is_none()
        );
        pool.job_started(&rec, K, "helper".to_string(), 4);
        assert_eq!(pool.lock().building.len(), 1);
        assert_eq!(pool.lock().building_for(Some(K)), 1);
        // The same job reported twice, or its end: K has what it wants.
        pool.job_started(&rec, K, "helper".to_string(), 4);
        pool.prestart(&rec, K, "helper".to_string(), 4);
        assert_eq!(pool.lock().building_for(Some(K)), 1);
        // A second job of K within one build time (a stage of two): one more.
        let another_start_of_k = || {
            pool.lock()
                .keys
                .get_mut(&K)
                .expect("K is known")
                .starts
                .push_back(tokio::time::Instant::now());
        };
        another_start_of_k();
        pool.job_started(&rec, K, "helper".to_string(), 4);
        assert_eq!(pool.lock().building_for(Some(K)), 2);
        // The pool (2) is full of starting slots: no room for L, nor for a third of K.
        let l = WarmKey {
            project_id: 8,
            protected: true,
        };
        pool.job_started(&rec, l, "helper".to_string(), 4);
        another_start_of_k();
        pool.job_started(&rec, K, "helper".to_string(), 4);
        assert_eq!(pool.lock().building.len(), 2);
        // One root per key: the job holds it.
        let one = Arc::new(Pool::new(2, Duration::from_secs(60), true));
        one.lock().runner_id = Some("r1".to_string());
        one.job_started(&rec, l, "helper".to_string(), 1);
        assert_eq!(one.lock().building_for(Some(l)), 0);
        // An ephemeral pool never starts keyed slots.
        let plain = Arc::new(Pool::new(2, Duration::from_secs(60), false));
        plain.lock().runner_id = Some("r1".to_string());
        plain.job_started(&rec, K, "helper".to_string(), 4);
        assert!(plain.lock().building.is_empty());
        // The builds asked for: the two of K, nothing else.
        tokio::task::yield_now().await;
        for _ in 0..500 {
            if rec.asked().len() >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(rec.asked(), vec![Some(K), Some(K)]);
        let report = pool.shutdown().await;
        assert!(report.failures.is_empty());
        assert!(pool.standby_ids().is_empty());
        one.shutdown().await;
        plain.shutdown().await;
    }

    /// A slot that cannot start because every root of its key is held is no failure: it does
    /// not slow the next builds down.
    #[tokio::test]
    async fn a_key_with_every_root_held_is_no_failure() {
        let pool = Arc::new(Pool::new(2, Duration::from_secs(60), true));
        let rec = Arc::new(Recorder {
            asked: Mutex::new(Vec::new()),
            busy: true,
        });
        pool.lock().runner_id = Some("r1".to_string());
        pool.prestart(&rec, K, "helper".to_string(), 2);
        // The build runs on the pool's tasks: wait for it to end (bounded).
        for _ in 0..500 {
            if pool.lock().building.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(pool.lock().building.is_empty(), "the build did not end");
        assert_eq!(rec.asked(), vec![Some(K)]);
        assert_eq!(pool.lock().failures, 0);
        pool.shutdown().await;
    }

    /// A network made by a slot (deadline: its idle life + the job budget + the PKI margin)
    /// serves later slots for the margin, never past it.
    #[test]
    fn a_kept_network_serves_only_slots_its_deadline_outlasts() {
        let idle = Duration::from_secs(600);
        let made = Duration::from_secs(1_000_000);
        let naming_deadline = made
            .saturating_add(idle)
            .saturating_add(SLOT_JOB_BUDGET)
            .saturating_add(crate::pki::VALIDITY_MARGIN)
            .as_secs();
        assert!(outlasts_a_slot(naming_deadline, made, idle));
        let margin_end = made.saturating_add(crate::pki::VALIDITY_MARGIN);
        assert!(outlasts_a_slot(naming_deadline, margin_end, idle));
        assert!(!outlasts_a_slot(
            naming_deadline,
            margin_end + Duration::from_secs(1),
            idle
        ));
        // A job's own network (deadline: its timeout + the margin) never serves a slot.
        let job_deadline = made
            .saturating_add(Duration::from_secs(3600))
            .saturating_add(crate::pki::VALIDITY_MARGIN)
            .as_secs();
        assert!(!outlasts_a_slot(job_deadline, made, idle));
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
