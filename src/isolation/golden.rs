//! Ephemeral data roots from the root store (`root_store`): the golden data root of this
//! runner's `preload_images`, made once by a throw-away sidecar, and each job's (or pool
//! slot's) writable snapshot of it, which replaces copying the images into every daemon.
//!
//! When the store cannot work (no btrfs, no loop device, `root_store = "off"`) or a golden
//! cannot be made, sidecars fall back to the copy (`Core::preload`), with a warning.

use super::naming::Naming;
use super::root_store::{RootStore, StoreError, idmap::IdMap};
use super::rootless::UidBlock;
use super::sidecar::{BootPlan, Core, SidecarDirs, Timings, finish_parts};
use super::state::JobState;
use super::{Error, OutputSink};
use crate::config::{ROOTLESS_UID_BLOCK, RootStore as Mode, SidecarProfile};
use crate::paths::{HostPathMap, JobId};
use sha2::Digest;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bumped when what a golden holds changes shape (its key changes with it).
const GOLDEN_FORMAT: &str = "ir-golden-1";

/// How long a golden build may take (boot, load every preload image, stop).
const GOLDEN_BUILD_BUDGET: Duration = Duration::from_secs(30 * 60);

/// A job's snapshot in the store, removed by the job's teardown (after its sidecar).
#[derive(Debug)]
pub struct JobRoot {
    /// The store it is in.
    pub store: RootStore,
    /// `ir-<runner>-<job>-root`.
    pub name: String,
}

impl JobRoot {
    /// Unmounts and deletes the snapshot; `Ok(true)` when something was removed.
    pub async fn remove(self) -> Result<bool, String> {
        let name = self.name.clone();
        tokio::task::spawn_blocking(move || self.store.remove_root(&self.name))
            .await
            .map_err(|e| format!("remove job root {name}: {e}"))?
            .map_err(|e| e.to_string())
    }
}

/// What the store of a runner came to, decided once per backend.
#[derive(Debug, Clone)]
pub(super) enum StoreState {
    /// Open and usable.
    Open(RootStore),
    /// Not used, with the reason (said once in the log and in each job's trace).
    Off(String),
}

/// The first uid of the golden block of `base` (after the ephemeral and warm blocks).
pub fn golden_uid(base: u32) -> Option<u32> {
    let n = crate::config::ROOTLESS_UID_BLOCKS + crate::config::ROOTLESS_WARM_BLOCKS;
    n.checked_mul(ROOTLESS_UID_BLOCK)
        .and_then(|o| base.checked_add(o))
        .filter(|u| u.checked_add(ROOTLESS_UID_BLOCK).is_some())
}

fn store_error(e: StoreError) -> Error {
    Error::Other {
        context: "use the root store".to_string(),
        detail: e.to_string(),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Other {
            context: "use the root store".to_string(),
            detail: e.to_string(),
        })?
        .map_err(store_error)
}

/// The key of the golden for an isolation config: profile, sidecar image and preload image
/// ids on `docker` (a rebuilt image gives a new golden), and for rootless the golden uid block.
pub async fn golden_key(
    docker: &crate::docker::Docker,
    iso: &crate::config::IsolationConfig,
) -> Result<String, Error> {
    let mut h = sha2::Sha256::new();
    h.update(GOLDEN_FORMAT.as_bytes());
    h.update(super::profile::profile_name(iso.sidecar_profile).as_bytes());
    if iso.sidecar_profile == SidecarProfile::Rootless {
        h.update(iso.rootless_uid_base.to_le_bytes());
    }
    for img in std::iter::once(&iso.sidecar_image).chain(&iso.preload_images) {
        let facts = docker
            .image_facts(img)
            .await
            .map_err(super::naming::other(format!("inspect image {img}")))?
            .ok_or_else(|| Error::ImageUnavailable {
                image: img.clone(),
                detail: "not on the host daemon".to_string(),
            })?;
        h.update(b"\0");
        h.update(img.as_bytes());
        h.update(b"\0");
        h.update(facts.id.as_bytes());
    }
    Ok(hex::encode(&h.finalize()[..12]))
}

/// Whether a runner entry's sidecars start from goldens: dind, a profile the store serves,
/// `root_store` not off, something to preload (as `Core::root_store` and `job_root` decide).
pub fn uses_goldens(runner: &crate::config::RunnerConfig) -> bool {
    let iso = &runner.docker.isolation;
    iso.mode == crate::config::IsolationMode::Dind
        && iso.root_store != Mode::Off
        && matches!(
            iso.sidecar_profile,
            SidecarProfile::Rootless | SidecarProfile::Hardened
        )
        && !iso.preload_images.is_empty()
}

impl Core {
    /// The store of this runner, opened (and mounted) on first use.
    pub(super) async fn root_store(&self) -> StoreState {
        self.store
            .get_or_init(|| async {
                let iso = &self.runner.docker.isolation;
                if iso.root_store == Mode::Off {
                    return StoreState::Off("root_store = \"off\"".to_string());
                }
                if !matches!(
                    iso.sidecar_profile,
                    SidecarProfile::Rootless | SidecarProfile::Hardened
                ) {
                    return StoreState::Off(format!(
                        "the root store serves the rootless and hardened profiles, not {}",
                        super::profile::profile_name(iso.sidecar_profile)
                    ));
                }
                let dir = iso
                    .root_store_path
                    .clone()
                    .unwrap_or_else(|| super::root_store::default_path(&self.state_dir));
                let size = iso.root_store_size;
                let state_dir = self.state_dir.clone();
                match tokio::task::spawn_blocking(move || RootStore::open(&dir, size, &state_dir))
                    .await
                {
                    Ok(Ok(s)) => StoreState::Open(s),
                    Ok(Err(e)) => StoreState::Off(e.to_string()),
                    Err(e) => StoreState::Off(e.to_string()),
                }
            })
            .await
            .clone()
    }

    /// The key of the golden for this runner's config ([`golden_key`]).
    async fn golden_key(&self) -> Result<String, Error> {
        golden_key(&self.docker, &self.runner.docker.isolation).await
    }

    /// The golden of this runner's config, made now if it does not exist yet (one build at a
    /// time per backend; later callers wait for it and use it).
    async fn golden(
        &self,
        store: &RootStore,
        runner_id: &str,
        out: Option<&dyn OutputSink>,
    ) -> Result<String, Error> {
        let _one = self.golden_lock.lock().await;
        let key = self.golden_key().await?;
        if store.golden(&key).is_some() {
            return Ok(key);
        }
        if let Some(out) = out {
            out.write(
                format!(
                    "Preparing the golden data root of preload_images {:?} (once per image \
                     change)\n",
                    self.runner.docker.isolation.preload_images
                )
                .as_bytes(),
            );
        }
        let t = Instant::now();
        let (s, k) = (store.clone(), key.clone());
        let path = blocking(move || s.begin_golden(&k)).await?;
        let built = self.fill_golden(path, runner_id).await;
        let (s, k) = (store.clone(), key.clone());
        match built {
            Ok(()) => {
                blocking(move || s.commit_golden(&k).map(|_| ())).await?;
                tracing::info!(key = %key, secs = t.elapsed().as_secs_f64(), "golden data root made");
                Ok(key)
            }
            Err(e) => {
                if let Err(d) = blocking(move || s.discard_build(&k)).await {
                    tracing::warn!(error = %d, "could not delete a failed golden build");
                }
                Err(e)
            }
        }
    }

    /// Boots a throw-away sidecar on `path`, loads the preload images into it and stops its
    /// daemon gracefully, so the data root on disk is consistent.
    async fn fill_golden(&self, path: PathBuf, runner_id: &str) -> Result<(), Error> {
        let iso = &self.runner.docker.isolation;
        let id = crate::paths::SLOT_ID_BASE | (uuid::Uuid::new_v4().as_u64_pair().0 >> 24);
        let naming = Naming::new(runner_id, id, GOLDEN_BUILD_BUDGET)?;
        let host_map = HostPathMap::new(iso.host_path_map.clone());
        let mut state = JobState::new(self.docker.clone(), naming, host_map);
        if iso.sidecar_profile == SidecarProfile::Rootless {
            let uid = golden_uid(iso.rootless_uid_base).ok_or_else(|| Error::Other {
                context: "make a golden data root".to_string(),
                detail: "rootless_uid_base leaves no room for the golden uid block".to_string(),
            })?;
            state.uid_block = Some(UidBlock::outside_table(uid));
        }
        let mut timings = Timings::default();
        let filled = async {
            let b = self
                .boot(
                    &mut state,
                    BootPlan {
                        volume: String::new(),
                        create_volume: false,
                        warm_uid: None,
                        bind_root: Some(path),
                        dirs: SidecarDirs::Slot(JobId::new(id)),
                        validity: GOLDEN_BUILD_BUDGET,
                        services: &[],
                        service_env: &[],
                        extra_labels: Default::default(),
                        background: false,
                    },
                    &[],
                    &mut timings,
                )
                .await?;
            self.preload(&b.inner, &mut timings).await?;
            if let Some(sidecar) = state.sidecar.as_deref() {
                self.docker
                    .stop_container(sidecar, super::data_root::STOP_GRACE_SECS)
                    .await
                    .map_err(super::naming::other("stop the golden's daemon"))?;
            }
            Ok::<(), Error>(())
        }
        .await;
        let report = finish_parts(state, None).await;
        for f in report.failures {
            tracing::warn!(failure = %f, "teardown of a golden build left something");
        }
        tracing::debug!(steps = %timings.render(), "golden build");
        filled
    }

    /// For a sidecar on an ephemeral data root with `preload_images`: a writable snapshot of
    /// the golden (made first if needed), recorded in `state` for teardown; `None` when the
    /// store is off or fails (the caller copies the images instead, as before). For rootless,
    /// takes the sidecar's uid block here (the snapshot is mapped onto it).
    pub(super) async fn job_root(
        &self,
        state: &mut JobState,
        out: Option<&dyn OutputSink>,
        timings: &mut Timings,
    ) -> Result<Option<PathBuf>, Error> {
        let iso = &self.runner.docker.isolation;
        if iso.preload_images.is_empty() {
            return Ok(None);
        }
        let t = Instant::now();
        let store = match self.root_store().await {
            StoreState::Open(s) => s,
            StoreState::Off(why) => {
                self.fallback_warning(&why, out);
                return Ok(None);
            }
        };
        let runner_id = state.naming.runner_id.clone();
        let key = match self.golden(&store, &runner_id, out).await {
            Ok(k) => k,
            Err(Error::Canceled) => return Err(Error::Canceled),
            Err(e) => {
                self.fallback_warning(&format!("the golden data root could not be made: {e}"), out);
                return Ok(None);
            }
        };
        let map = if iso.sidecar_profile == SidecarProfile::Rootless {
            if state.uid_block.is_none() {
                state.uid_block = Some(UidBlock::take(iso.rootless_uid_base)?);
            }
            let to = state.uid_block.as_ref().map(|b| b.uid).unwrap_or_default();
            let from = golden_uid(iso.rootless_uid_base).unwrap_or_default();
            Some(IdMap {
                from,
                to,
                count: ROOTLESS_UID_BLOCK,
            })
        } else {
            None
        };
        let name = state.naming.name("root");
        // Recorded before it exists: a cancel while it is made must not leak it.
        state.root = Some(JobRoot {
            store: store.clone(),
            name: name.clone(),
        });
        let path = blocking(move || store.snapshot_for(&key, &name, map)).await?;
        timings.push("root", t);
        Ok(Some(path))
    }

    /// Makes the golden ahead of the first job (at warm-up), so no job waits for it.
    pub(super) fn prepare_golden(self: &Arc<Self>, runner_id: &str) {
        if self.runner.docker.isolation.preload_images.is_empty() {
            return;
        }
        let (core, runner_id) = (Arc::clone(self), runner_id.to_string());
        tokio::spawn(async move {
            if let StoreState::Open(store) = core.root_store().await
                && let Err(e) = core.golden(&store, &runner_id, None).await
            {
                tracing::warn!(error = %e, "could not make the golden data root ahead of jobs");
            }
        });
    }

    /// At shutdown: gives back this backend's use of the store; the process's last use
    /// unmounts it if the process mounted it or adopted it from a runner process that died
    /// (`RootStore::close`). Job roots must be gone by then (the pool's shutdown runs first).
    pub(super) async fn close_store(&self) -> Option<String> {
        // Waits for an open still in progress (a warm-up that has just adopted or mounted the
        // store must not leave it mounted when the runner stops right after); with none, the
        // store stays closed for good.
        let state = self
            .store
            .get_or_init(|| async { StoreState::Off("the runner is stopping".to_string()) })
            .await;
        let StoreState::Open(store) = state.clone() else {
            return None;
        };
        // Not while a golden build of this backend fills the store.
        let _one = self.golden_lock.lock().await;
        match tokio::task::spawn_blocking(move || store.close()).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(e) => Some(e.to_string()),
        }
    }

    fn fallback_warning(&self, why: &str, out: Option<&dyn OutputSink>) {
        if !self
            .store_warned
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::warn!(reason = %why, "root store unavailable: preload_images are copied into each job's daemon (slower; `runner doctor` says why)");
        }
        if let Some(out) = out {
            out.write(
                format!(
                    "WARNING: preload_images are copied into this job's daemon (the root store \
                     is not used: {why})\n"
                )
                .as_bytes(),
            );
        }
    }
}

/// A root younger than this is spared by sweeps that are not its own runner's start-up: its
/// job may be between the snapshot and its sidecar's creation in another process.
pub const SWEEP_GRACE: Duration = Duration::from_secs(10 * 60);

/// What a sweep of job roots found.
#[derive(Debug, Default)]
pub struct RootSweep {
    /// Roots removed (or that would be, on a dry run).
    pub removed: Vec<String>,
    /// What could not be removed.
    pub failures: Vec<String>,
}

/// The store directory of a runner config under `state_dir` (configured or default).
pub fn store_dir(runner: &crate::config::RunnerConfig, state_dir: &std::path::Path) -> PathBuf {
    runner
        .docker
        .isolation
        .root_store_path
        .clone()
        .unwrap_or_else(|| super::root_store::default_path(state_dir))
}

/// Removes the job roots in the store at `dir` whose sidecar is gone: at a runner's start-up
/// every root of `own_runner` (no job of it runs yet), otherwise roots older than
/// [`SWEEP_GRACE`] whose sidecar container no longer exists (dead jobs of any runner).
/// Never mounts the store: a store that is not there has nothing to sweep. The start-up sweep
/// holds the store's lock meanwhile and is skipped while another runner process holds it:
/// that process's jobs may carry the same runner id (a second runner on the same state dir).
pub async fn sweep_roots(
    docker: &crate::docker::Docker,
    dir: &std::path::Path,
    own_runner: Option<&str>,
    dry_run: bool,
) -> RootSweep {
    let mut report = RootSweep::default();
    let d = dir.to_path_buf();
    let Ok(Some(store)) = tokio::task::spawn_blocking(move || RootStore::existing(&d)).await else {
        return report;
    };
    if own_runner.is_none() {
        sweep_roots_of(docker, &store, own_runner, dry_run, &mut report).await;
        return report;
    }
    let d = dir.to_path_buf();
    match tokio::task::spawn_blocking(move || RootStore::claim_for_sweep(&d)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            report
                .failures
                .push(format!("job roots of an earlier run left alone: {e}"));
            return report;
        }
        Err(e) => {
            report
                .failures
                .push(format!("claim {}: {e}", dir.display()));
            return report;
        }
    }
    sweep_roots_of(docker, &store, own_runner, dry_run, &mut report).await;
    let s = store.clone();
    match tokio::task::spawn_blocking(move || s.close()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => report.failures.push(e.to_string()),
        Err(e) => report
            .failures
            .push(format!("release {}: {e}", dir.display())),
    }
    report
}

async fn sweep_roots_of(
    docker: &crate::docker::Docker,
    store: &RootStore,
    own_runner: Option<&str>,
    dry_run: bool,
    report: &mut RootSweep,
) {
    for name in store.job_roots() {
        let Some((runner, job)) = super::root_store::parse_root_name(&name) else {
            continue;
        };
        let dead = if own_runner == Some(runner) {
            true
        } else {
            let young = store.root_age(&name).is_some_and(|a| a < SWEEP_GRACE);
            let sidecar = format!("ir-{runner}-{job}-sidecar");
            let gone = match docker.inspect_container(&sidecar).await {
                Ok(_) => false,
                Err(e) => e.is_not_found(),
            };
            gone && !young
        };
        if !dead {
            continue;
        }
        if dry_run {
            report.removed.push(format!("job root {name}"));
            continue;
        }
        let (s, n) = (store.clone(), name.clone());
        match tokio::task::spawn_blocking(move || s.remove_root(&n)).await {
            Ok(Ok(_)) => report.removed.push(format!("job root {name}")),
            Ok(Err(e)) => report.failures.push(e.to_string()),
            Err(e) => report.failures.push(format!("remove job root {name}: {e}")),
        }
    }
}

/// A golden younger than this is spared by the golden sweep: `runner cleanup` reads the config
/// file as it is now, and a live runner started before an edit of it may have just committed a
/// golden of its own (older) config.
pub const GOLDEN_GRACE: Duration = SWEEP_GRACE;

/// The goldens each store of `config` should keep: per store directory, the current key of
/// every runner entry on it that starts from goldens. An entry whose image is not on its
/// daemon has no current key (it cannot make or use a golden now). `Err` for a store when an
/// entry's key cannot be known (its daemon did not answer): nothing is removed there.
pub async fn wanted_goldens(
    config: &crate::config::Config,
) -> Vec<(PathBuf, Result<BTreeSet<String>, String>)> {
    let mut wanted: Vec<(PathBuf, Result<BTreeSet<String>, String>)> = Vec::new();
    for r in &config.runners {
        let dir = store_dir(r, &config.state_dir);
        let i = match wanted.iter().position(|(d, _)| *d == dir) {
            Some(i) => i,
            None => {
                wanted.push((dir, Ok(BTreeSet::new())));
                wanted.len() - 1
            }
        };
        if !uses_goldens(r) {
            continue;
        }
        let key = match crate::docker::Docker::connect(r.docker.host.as_deref()).await {
            Ok(d) => golden_key(&d, &r.docker.isolation).await,
            Err(e) => Err(Error::Other {
                context: "reach the docker daemon".to_string(),
                detail: e.to_string(),
            }),
        };
        let slot = &mut wanted[i].1;
        match key {
            Ok(k) => {
                if let Ok(keys) = slot {
                    keys.insert(k);
                }
            }
            Err(Error::ImageUnavailable { image, .. }) => {
                tracing::info!(runner = %r.name, image = %image, "no current golden for this runner entry: an image is not on its daemon");
            }
            Err(e) => *slot = Err(format!("the golden key of runner {:?}: {e}", r.name)),
        }
    }
    wanted
}

/// What a sweep of one store's goldens did.
#[derive(Debug, Default)]
pub struct GoldenSweep {
    /// The store directory.
    pub store: PathBuf,
    /// Whether there is a store there.
    pub found: bool,
    /// Keys of the goldens removed (or that would be, on a dry run).
    pub removed: Vec<String>,
    /// Keys of the goldens a runner entry uses now.
    pub kept: Vec<String>,
    /// Goldens no entry wants that were left, each with why (`<key>: ...`).
    pub spared: Vec<String>,
    /// What could not be removed.
    pub failures: Vec<String>,
    /// Bytes the store's file system used less afterwards (deleted subvolumes cleaned).
    pub freed: Option<u64>,
}

/// Removes the goldens in the store at `dir` whose key is not in `wanted`, the goldens the
/// runner of `state_dir` wants. Never touches a store that belongs to another state dir (its
/// owner record, `root_store::owner`: that runner's goldens are no entry of this config), a
/// golden whose key is being built (`build/<key>`) or one younger than `grace` (this runner's
/// own process may just have made it for an entry `wanted` does not know yet). Jobs running on
/// snapshots of a removed golden are not affected: a snapshot is an independent subvolume.
/// Never mounts the store.
pub async fn sweep_goldens(
    dir: &std::path::Path,
    state_dir: &std::path::Path,
    wanted: &BTreeSet<String>,
    grace: Duration,
    dry_run: bool,
) -> GoldenSweep {
    let (d, sd, wanted) = (dir.to_path_buf(), state_dir.to_path_buf(), wanted.clone());
    let done = tokio::task::spawn_blocking(move || {
        sweep_goldens_blocking(&d, &sd, &wanted, grace, dry_run)
    })
    .await;
    match done {
        Ok(s) => s,
        Err(e) => GoldenSweep {
            store: dir.to_path_buf(),
            failures: vec![format!("sweep the goldens of {}: {e}", dir.display())],
            ..GoldenSweep::default()
        },
    }
}

fn sweep_goldens_blocking(
    dir: &std::path::Path,
    state_dir: &std::path::Path,
    wanted: &BTreeSet<String>,
    grace: Duration,
    dry_run: bool,
) -> GoldenSweep {
    use super::root_store::owner;
    let mut report = GoldenSweep {
        store: dir.to_path_buf(),
        ..GoldenSweep::default()
    };
    let Some(store) = RootStore::existing(dir) else {
        return report;
    };
    report.found = true;
    // A store without a record was made before records existed: it can only be this state
    // dir's (the default path) or shared already; the first open records its owner.
    match owner::read_owner(dir) {
        Ok(Some(o)) if o != owner::owner_key(state_dir) => {
            report.failures.push(format!(
                "goldens in {} left alone: {}",
                dir.display(),
                StoreError::Foreign {
                    dir: dir.to_path_buf(),
                    owner: o,
                    ours: owner::owner_key(state_dir),
                }
            ));
            return report;
        }
        Ok(_) => {}
        Err(e) => {
            report.failures.push(e.to_string());
            return report;
        }
    }
    let building = store.builds();
    let before = store.used_bytes();
    let mut deleted = Vec::new();
    for key in store.golden_keys() {
        if wanted.contains(&key) {
            report.kept.push(key);
            continue;
        }
        if building.contains(&key) {
            report.spared.push(format!("{key}: being built"));
            continue;
        }
        let id = match store.golden_info(&key) {
            Ok((_, Some(age))) if age < grace => {
                report
                    .spared
                    .push(format!("{key}: made {}s ago", age.as_secs()));
                continue;
            }
            Ok((_, None)) if !grace.is_zero() => {
                report.spared.push(format!("{key}: its age is unknown"));
                continue;
            }
            Ok((id, _)) => id,
            Err(e) => {
                report.failures.push(e.to_string());
                continue;
            }
        };
        if dry_run {
            report.removed.push(key);
            continue;
        }
        match store.remove_golden(&key) {
            Ok(_) => {
                deleted.push(id);
                report.removed.push(key);
            }
            Err(e) => report.failures.push(e.to_string()),
        }
    }
    if !deleted.is_empty() {
        match store.wait_cleaned(&deleted) {
            Ok(()) => {
                report.freed = before
                    .zip(store.used_bytes())
                    .map(|(b, a)| b.saturating_sub(a));
            }
            Err(e) => report.failures.push(e.to_string()),
        }
    }
    report
}

impl GoldenSweep {
    /// Logs what the sweep did (start-up).
    pub fn log(&self) {
        for key in &self.removed {
            tracing::info!(store = %self.store.display(), key = %key, "removed a golden data root no runner entry uses any more");
        }
        if !self.removed.is_empty() {
            tracing::info!(
                store = %self.store.display(),
                removed = self.removed.len(),
                kept = self.kept.len(),
                freed_bytes = self.freed,
                "goldens of unused image sets removed"
            );
        }
        for s in &self.spared {
            tracing::debug!(store = %self.store.display(), golden = %s, "unused golden left for now");
        }
        for f in &self.failures {
            tracing::warn!(failure = %f, "a golden data root could not be removed");
        }
    }
}

/// Removes the goldens no runner entry of `config` uses any more, in every store of the
/// config (start-up, `runner cleanup`). A store where an entry's key cannot be known is left
/// as it is, with why in `failures`.
pub async fn sweep_unused_goldens(
    config: &crate::config::Config,
    grace: Duration,
    dry_run: bool,
) -> Vec<GoldenSweep> {
    let mut out = Vec::new();
    for (dir, wanted) in wanted_goldens(config).await {
        match wanted {
            Ok(w) => out.push(sweep_goldens(&dir, &config.state_dir, &w, grace, dry_run).await),
            Err(e) => out.push(GoldenSweep {
                store: dir.clone(),
                failures: vec![format!("goldens in {} left alone: {e}", dir.display())],
                ..GoldenSweep::default()
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{IsolationMode, RunnerConfig};

    /// The golden sweep keeps a golden only for entries whose sidecars start from one: the
    /// same conditions `Core::root_store` and `job_root` apply.
    #[test]
    fn only_entries_that_start_from_goldens_want_one() {
        let mut r = RunnerConfig::default();
        r.docker.isolation.root_store = Mode::Auto;
        assert!(!uses_goldens(&r), "nothing to preload");
        r.docker.isolation.preload_images = vec!["img:1".to_string()];
        for p in [SidecarProfile::Rootless, SidecarProfile::Hardened] {
            r.docker.isolation.sidecar_profile = p;
            assert!(uses_goldens(&r), "{p:?}");
        }
        for p in [SidecarProfile::Privileged, SidecarProfile::Sysbox] {
            r.docker.isolation.sidecar_profile = p;
            assert!(!uses_goldens(&r), "{p:?}");
        }
        r.docker.isolation.sidecar_profile = SidecarProfile::Hardened;
        r.docker.isolation.root_store = Mode::Off;
        assert!(!uses_goldens(&r));
        r.docker.isolation.root_store = Mode::Auto;
        r.docker.isolation.mode = IsolationMode::SharedSocket;
        assert!(!uses_goldens(&r));
    }
}
