//! Warm data roots (`data_root = "project"`): one `/var/lib/docker` volume per (runner,
//! project, protected flag) that survives the job, so the next job of the same project at the
//! same protection level starts with its images and build cache.
//!
//! Rules (threat J3: a warm root is a channel between jobs, so it only ever connects jobs at
//! the same trust level):
//! - **Keyed** by runner id, project id and protected flag, in the name *and* in labels that
//!   are checked before reuse. Never shared across projects or protection levels.
//! - **One job at a time per root, several roots per key**: a key has up to
//!   `data_root_per_key` roots (`…-p<project>-<protected>`, then `-1`, `-2`, …), each with
//!   its own exclusive `flock` on `<state_dir>/warm-roots/<volume>.lock`, tried without
//!   waiting, existing roots first, the one a job released last first (the lock file's
//!   modification time, set at release: the newest images and build cache). All busy (or
//!   held by a container of a dead runner) → the
//!   job gets an ordinary ephemeral volume. Never wait, never share a root between two live
//!   daemons; parallel jobs of one project and protection level each get their own root.
//! - **Size cap** (`data_root_max_size`): measured with `du` in a throw-away helper container
//!   (no network, volume read-only) after the sidecar stopped; over the cap → removed, the next
//!   job starts cold.
//! - **Age cap** (`data_root_max_age`): the `created` label is checked at acquire; older →
//!   removed and recreated. [`remove_expired`] does the same sweep for `runner cleanup`.
//! - **Host uids** (rootless): each root's daemon runs under a uid block of its own, chosen
//!   when the volume is made and recorded on it ([`LABEL_UID`]); a root whose label names no
//!   block its daemon may run under is started over (its files belong to other uids).
//! - **Labels**: warm volumes carry [`LABEL_WARM`] and no `managed`/`job` label, so neither a
//!   job's teardown (it lists `managed` objects of its job) nor the reaper (`managed` objects of
//!   the runner) removes them; they are not leftovers while within their age.
//! - **Cancel-safe creates**: the volume is settled (an expired one removed, a missing one
//!   created) and the measuring container created on their own tasks of the job's tracker
//!   (see `common::detached`). The settling task holds the lock until it ends, so a job
//!   cancelled in the middle leaves either no volume or an ordinary warm root of its key, which
//!   the next job of that key or [`remove_expired`] finds by its labels; the measuring
//!   container is removed even when the release is dropped half-way.
//! - **Hygiene (M4)**: on reuse, the root is scrubbed *before* a dockerd boots on it
//!   ([`scrub_offline`]: swarm state, plugins, every container, networks, volumes, containerd's
//!   state), because dockerd restarts restart-policy containers, enabled plugins and swarm
//!   tasks as it boots, with the next job's directories already mounted; after the boot
//!   [`check_scrubbed`] confirms through the API. Fail closed: a root whose scrub fails is
//!   replaced by a fresh one ([`WarmLease::make_clean`]) or removed ([`WarmLease::poison`]),
//!   never used. What stays warm is images and build cache. The sidecar is stopped gracefully
//!   so dockerd leaves the volume consistent.

use super::Error;
use super::naming::{Naming, detached, other};
use crate::docker::{ContainerSpec, Docker, LABEL_ROLE, LABEL_RUNNER, MountSpec};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use tokio_util::task::TaskTracker;

/// Label marking a warm data-root volume (value `1`).
pub const LABEL_WARM: &str = "io.isolated-runner.warm-root";
/// Label with the project id of a warm root.
pub const LABEL_PROJECT: &str = "io.isolated-runner.project";
/// Label with the protected flag (`true`/`false`) of a warm root.
pub const LABEL_PROTECTED: &str = "io.isolated-runner.protected";
/// Label with the creation time (unix seconds) of a warm root.
pub const LABEL_CREATED: &str = "io.isolated-runner.created";
/// Label on a sidecar naming the warm volume it mounts: a volume still mounted by a
/// container (of a runner that died mid-job) is never handed to a second dockerd.
pub const LABEL_WARM_VOLUME: &str = "io.isolated-runner.warm-volume";

/// Seconds a warm sidecar gets to stop its dockerd cleanly.
pub const STOP_GRACE_SECS: i32 = 20;

/// Label with the GitLab instance ([`crate::config::instance_key`]) of a warm root.
pub const LABEL_INSTANCE: &str = "io.isolated-runner.instance";

/// Label with the first host uid of a warm root's rootless uid block (`rootless.rs`): chosen
/// once, when the volume is made, among the blocks no other warm volume records, so two warm
/// roots never share host uids and a root's files keep their owners from one job to the next.
/// Absent on roots made for the other profiles, whose daemons run as the host's root.
pub const LABEL_UID: &str = "io.isolated-runner.uid";

/// One warm root made at a time in this process: the choice of its uid block (from the labels
/// of the volumes that exist) and the create that records it must not interleave with another.
static MAKING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The volume name of a key's first warm root. `instance` is the GitLab instance's key: project
/// ids are only unique within one instance (H3).
pub fn volume_name(runner_id: &str, instance: &str, project_id: u64, protected: bool) -> String {
    format!(
        "ir-{runner_id}-warm-{instance}-p{project_id}-{}",
        if protected {
            "protected"
        } else {
            "unprotected"
        }
    )
}

/// The volume name of a key's warm root number `index` (`0..data_root_per_key`): the first
/// keeps [`volume_name`] (roots made before there were several stay in use), the others add
/// `-<index>`. Each has its own lock file, and on the rootless profile its own uid block
/// ([`LABEL_UID`]).
pub fn volume_name_at(
    runner_id: &str,
    instance: &str,
    project_id: u64,
    protected: bool,
    index: usize,
) -> String {
    let first = volume_name(runner_id, instance, project_id, protected);
    match index {
        0 => first,
        n => format!("{first}-{n}"),
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

fn labels(
    runner_id: &str,
    instance: &str,
    project_id: u64,
    protected: bool,
    uid: Option<u32>,
) -> HashMap<String, String> {
    let mut l = HashMap::from([
        (LABEL_WARM.to_string(), "1".to_string()),
        (LABEL_RUNNER.to_string(), runner_id.to_string()),
        (LABEL_INSTANCE.to_string(), instance.to_string()),
        (LABEL_PROJECT.to_string(), project_id.to_string()),
        (LABEL_PROTECTED.to_string(), protected.to_string()),
        (LABEL_CREATED.to_string(), now_secs().to_string()),
        (LABEL_ROLE.to_string(), "data-warm".to_string()),
    ]);
    if let Some(uid) = uid {
        l.insert(LABEL_UID.to_string(), uid.to_string());
    }
    l
}

/// The uid block a root's labels record, when it is the one its daemon may run under:
/// `Ok(Some)` a warm block of `uid_base` (rootless), `Ok(None)` no label where none is wanted
/// (the other profiles), `Err` otherwise: a root made before blocks were recorded, under another
/// `rootless_uid_base` or for another profile holds files owned by uids this daemon would not
/// run as, so it starts over.
fn recorded_uid(l: &HashMap<String, String>, uid_base: Option<u32>) -> Result<Option<u32>, ()> {
    let recorded = l.get(LABEL_UID);
    match (uid_base, recorded) {
        (None, None) => Ok(None),
        (Some(base), Some(v)) => match v.parse::<u32>() {
            Ok(uid) if super::rootless::is_warm_uid(base, uid) => Ok(Some(uid)),
            _ => Err(()),
        },
        _ => Err(()),
    }
}

/// Whether a volume's labels say it belongs to exactly this key.
fn labels_match(
    l: &HashMap<String, String>,
    runner_id: &str,
    instance: &str,
    project_id: u64,
    protected: bool,
) -> bool {
    let is = |k: &str, v: &str| l.get(k).map(String::as_str) == Some(v);
    is(LABEL_WARM, "1")
        && is(LABEL_RUNNER, runner_id)
        && is(LABEL_INSTANCE, instance)
        && is(LABEL_PROJECT, &project_id.to_string())
        && is(LABEL_PROTECTED, &protected.to_string())
}

fn expired(l: &HashMap<String, String>, max_age: Option<Duration>, now: u64) -> bool {
    let Some(max) = max_age else { return false };
    match l.get(LABEL_CREATED).and_then(|c| c.parse::<u64>().ok()) {
        Some(created) => now.saturating_sub(created) > max.as_secs(),
        // No readable creation time: cannot prove it is young.
        None => true,
    }
}

/// A warm root held by one job: the volume and its lock. Give it back with [`WarmLease::release`]
/// after the sidecar is gone; dropping it only releases the lock.
#[derive(Debug)]
pub struct WarmLease {
    /// The volume.
    pub volume: String,
    /// Whether the volume was created for this job (cold start).
    pub fresh: bool,
    /// The first uid of the root's rootless block ([`LABEL_UID`]); `None` on other profiles.
    pub uid: Option<u32>,
    max_size: Option<u64>,
    helper_image: String,
    naming: Naming,
    inflight: TaskTracker,
    /// Set when the root could not be proven clean: [`WarmLease::release`] removes it.
    poisoned: bool,
    key: (String, String, u64, bool),
    lock: nix::fcntl::Flock<std::fs::File>,
}

/// Why a job did not get its warm root (it then runs on an ephemeral volume).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Miss {
    /// Another job of the same project and protection level holds it.
    Busy,
    /// Something failed; the text says what.
    Unavailable(String),
}

impl std::fmt::Display for Miss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Miss::Busy => write!(f, "in use by another job"),
            Miss::Unavailable(why) => write!(f, "{why}"),
        }
    }
}

/// What [`acquire`] needs.
#[derive(Debug, Clone)]
pub struct WarmRequest<'a> {
    /// The runner's state dir (lock files).
    pub state_dir: &'a Path,
    /// The runner id.
    pub runner_id: &'a str,
    /// The GitLab instance's key ([`crate::config::instance_key`]).
    pub instance: &'a str,
    /// The job id (labels of the measuring container).
    pub job_id: u64,
    /// The job timeout (deadline label of the measuring container).
    pub timeout: Duration,
    /// Project id.
    pub project_id: u64,
    /// Protected flag of the job.
    pub protected: bool,
    /// `data_root_max_size`.
    pub max_size: Option<u64>,
    /// `data_root_max_age`.
    pub max_age: Option<Duration>,
    /// `data_root_per_key`: warm roots this key may have (at least 1).
    pub per_key: usize,
    /// `rootless_uid_base` on the `rootless` profile (each root then has its own uid block,
    /// [`LABEL_UID`]); `None` on the others.
    pub uid_base: Option<u32>,
    /// Image with `du` (the helper image).
    pub helper_image: &'a str,
    /// The job's create requests (see `common::detached`): the volume and the measuring
    /// container are made on its tasks.
    pub inflight: &'a TaskTracker,
}

fn lock_path(state_dir: &Path, volume: &str) -> PathBuf {
    state_dir.join("warm-roots").join(format!("{volume}.lock"))
}

/// Tries to take the lock without waiting. `Ok(None)`: busy.
async fn try_lock(path: PathBuf) -> Result<Option<nix::fcntl::Flock<std::fs::File>>, String> {
    tokio::task::spawn_blocking(move || {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .custom_flags_nofollow()
            .open(&path)
            .map_err(|e| format!("open {}: {e}", path.display()))?;
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(l) => Ok(Some(l)),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, e)) => Err(format!("lock {}: {e}", path.display())),
        }
    })
    .await
    .map_err(|e| format!("lock worker: {e}"))?
}

/// When a job last released the root of this lock file (its modification time, set by
/// [`WarmLease::release`]); `None` when unknown. Only an ordering hint.
async fn last_used(lock: &Path) -> Option<SystemTime> {
    // Not followed: the state dir is the runner's own, but a link is never a stamp.
    let meta = tokio::fs::symlink_metadata(lock).await.ok()?;
    meta.file_type()
        .is_file()
        .then(|| meta.modified().ok())
        .flatten()
}

/// Root names by their [`last_used`] time, the latest first, unknown ones last (stable).
fn most_recent_first(mut roots: Vec<(Option<SystemTime>, String)>) -> Vec<String> {
    roots.sort_by_key(|r| std::cmp::Reverse(r.0));
    roots.into_iter().map(|(_, v)| v).collect()
}

trait NoFollow {
    fn custom_flags_nofollow(&mut self) -> &mut Self;
}

impl NoFollow for std::fs::OpenOptions {
    fn custom_flags_nofollow(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
    }
}

/// Takes a free warm root of (runner, project, protected) for one job: one of the key's
/// `per_key` roots whose lock nobody holds, preferring roots that exist (warm), the one a job
/// released last first, over ones still to be made; drops it when too old or held by a leftover container (then tries the next),
/// creates it when missing. `Err(Miss)` means "use an ephemeral volume" (never an error for
/// the job).
pub async fn acquire(docker: &Docker, req: &WarmRequest<'_>) -> Result<WarmLease, Miss> {
    let names: Vec<String> = (0..req.per_key.max(1))
        .map(|i| {
            volume_name_at(
                req.runner_id,
                req.instance,
                req.project_id,
                req.protected,
                i,
            )
        })
        .collect();
    // Only an ordering hint: the lock and `settle` decide, so a failed listing costs warmth,
    // never safety.
    let existing: std::collections::HashSet<String> = docker
        .list_volumes(&[
            format!("{LABEL_WARM}=1"),
            format!("{LABEL_RUNNER}={}", req.runner_id),
        ])
        .await
        .map(|vs| vs.into_iter().map(|v| v.name).collect())
        .unwrap_or_default();
    let (mut warm, cold): (Vec<String>, Vec<String>) =
        names.into_iter().partition(|n| existing.contains(n));
    // The root a job used last first (it holds the project's newest images and build cache),
    // then the other existing ones, most recently used first.
    let mut used = Vec::with_capacity(warm.len());
    for v in warm.drain(..) {
        let at = last_used(&lock_path(req.state_dir, &v)).await;
        used.push((at, v));
    }
    warm.extend(most_recent_first(used));
    warm.extend(cold);
    let mut miss = Miss::Busy;
    for volume in warm {
        match acquire_one(docker, req, volume).await {
            Ok(lease) => return Ok(lease),
            Err(Miss::Busy) => {}
            Err(m) => miss = m,
        }
    }
    Err(miss)
}

/// Takes the warm root `volume` of the request's key, without waiting.
async fn acquire_one(
    docker: &Docker,
    req: &WarmRequest<'_>,
    volume: String,
) -> Result<WarmLease, Miss> {
    let naming = Naming::new(req.runner_id, req.job_id, req.timeout)
        .map_err(|e| Miss::Unavailable(e.to_string()))?;
    let runner_id = req.runner_id;
    let lock = match try_lock(lock_path(req.state_dir, &volume)).await {
        Ok(Some(l)) => l,
        Ok(None) => return Err(Miss::Busy),
        Err(e) => return Err(Miss::Unavailable(e)),
    };
    // The rest runs on its own task, which holds the lock until it ends: a prepare cancelled
    // in the middle cannot drop a create the engine then finishes anyway (see
    // `common::detached`), and no other job takes the lock while that create, or the removal
    // of an expired root, is still in flight. A root made for a job cancelled meanwhile is an
    // ordinary warm root of its key (labels), for the next job or `remove_expired`.
    let key = Key {
        runner_id: runner_id.to_string(),
        instance: req.instance.to_string(),
        project_id: req.project_id,
        protected: req.protected,
        max_age: req.max_age,
        uid_base: req.uid_base,
    };
    let (d, v) = (docker.clone(), volume.clone());
    let (settled, lock) = detached(req.inflight, async move {
        let fresh = settle(&d, &key, &v).await;
        (fresh, lock)
    })
    .await;
    let (fresh, uid) = settled?;
    Ok(WarmLease {
        volume,
        fresh,
        uid,
        max_size: req.max_size,
        helper_image: req.helper_image.to_string(),
        naming,
        inflight: req.inflight.clone(),
        poisoned: false,
        key: (
            runner_id.to_string(),
            req.instance.to_string(),
            req.project_id,
            req.protected,
        ),
        lock,
    })
}

/// What a warm root is keyed by, owned (for the settling task).
struct Key {
    runner_id: String,
    instance: String,
    project_id: u64,
    protected: bool,
    max_age: Option<Duration>,
    uid_base: Option<u32>,
}

/// Under the lock: drops the root when it is too old, held by a leftover container or labelled
/// for another uid block than its daemon may run under, creates it when missing. Returns
/// whether it was created (a cold start) and its uid block.
async fn settle(docker: &Docker, key: &Key, volume: &str) -> Result<(bool, Option<u32>), Miss> {
    let runner_id = key.runner_id.as_str();
    let unavailable =
        |what: &str, e: crate::docker::Error| Miss::Unavailable(format!("{what}: {e}"));
    // A container of a runner that died mid-job may still run a dockerd on the volume.
    let holders = docker
        .list_containers(&[format!("{LABEL_WARM_VOLUME}={volume}")])
        .await
        .map_err(|e| unavailable("list containers", e))?;
    if !holders.is_empty() {
        return Err(Miss::Busy);
    }
    let existing = docker
        .list_volumes(&[
            format!("{LABEL_WARM}=1"),
            format!("{LABEL_RUNNER}={runner_id}"),
        ])
        .await
        .map_err(|e| unavailable("list volumes", e))?
        .into_iter()
        .find(|v| v.name == volume);
    if let Some(v) = existing {
        let mine = labels_match(
            &v.labels,
            runner_id,
            &key.instance,
            key.project_id,
            key.protected,
        );
        let uid = recorded_uid(&v.labels, key.uid_base);
        if let (true, Ok(uid)) = (mine, uid)
            && !expired(&v.labels, key.max_age, now_secs())
        {
            return Ok((false, uid));
        }
        // Too old, a volume with our name but not our key, or files owned by uids its daemon
        // would not run as: start over.
        if mine && uid.is_err() {
            tracing::info!(
                volume,
                "warm data root made for another uid block (before blocks were recorded, under \
                 another rootless_uid_base or another sidecar profile); starting it over"
            );
        }
        docker
            .remove_volume(volume)
            .await
            .map_err(|e| unavailable("remove an expired warm root", e))?;
    } else {
        // The volume may also exist without our labels (made by hand): refuse to adopt it.
        let all = docker
            .list_volumes(&[])
            .await
            .map_err(|e| unavailable("list volumes", e))?;
        if all.iter().any(|v| v.name == volume) {
            return Err(Miss::Unavailable(format!(
                "a volume named {volume} exists without the warm-root labels; not using it"
            )));
        }
    }
    let _one = MAKING.lock().await;
    let uid = match key.uid_base {
        Some(base) => {
            // Every warm volume of the engine, whatever runner made it: uids are the host's.
            let recorded: Vec<u32> = docker
                .list_volumes(&[format!("{LABEL_WARM}=1")])
                .await
                .map_err(|e| unavailable("list warm roots", e))?
                .iter()
                .filter_map(|v| v.labels.get(LABEL_UID)?.parse().ok())
                .collect();
            Some(
                super::rootless::choose_warm_uid(base, &recorded)
                    .map_err(|e| Miss::Unavailable(e.to_string()))?,
            )
        }
        None => None,
    };
    docker
        .create_volume(
            volume,
            &labels(runner_id, &key.instance, key.project_id, key.protected, uid),
        )
        .await
        .map_err(|e| unavailable("create the warm root", e))?;
    Ok((true, uid))
}

impl WarmLease {
    /// Labels to add to the sidecar that mounts this volume.
    pub fn sidecar_labels(&self) -> [(String, String); 1] {
        [(LABEL_WARM_VOLUME.to_string(), self.volume.clone())]
    }

    /// Makes a warm root that was used before safe for the next job, before any sidecar runs
    /// on it (see [`scrub_offline`]). When that fails, the root is replaced by a fresh, empty
    /// one (the job starts cold: fail closed, never a job on an unscrubbed root); `Ok(Some)`
    /// then says why, for a warning. `Err` when even the replacement failed: the caller must
    /// not use this root.
    pub async fn make_clean(&mut self, docker: &Docker) -> Result<Option<String>, Error> {
        if self.fresh {
            return Ok(None);
        }
        let scrubbed = scrub_offline(
            docker,
            &self.inflight,
            &self.naming,
            &self.helper_image,
            &self.volume,
        )
        .await;
        let Err(why) = scrubbed else {
            return Ok(None);
        };
        let (runner_id, instance, project_id, protected) = self.key.clone();
        // While the volume is gone its block is recorded nowhere: no root may be made then.
        let _one = MAKING.lock().await;
        docker
            .remove_volume(&self.volume)
            .await
            .map_err(other("remove a warm root that could not be scrubbed"))?;
        docker
            .create_volume(
                &self.volume,
                // The same block: the root's files are gone, but its lease is still this job's.
                &labels(&runner_id, &instance, project_id, protected, self.uid),
            )
            .await
            .map_err(other("create a fresh warm root"))?;
        self.fresh = true;
        Ok(Some(why.to_string()))
    }

    /// Marks the root as not proven clean: [`WarmLease::release`] removes it, so the next
    /// job of its key starts on a fresh one.
    pub fn poison(&mut self) {
        self.poisoned = true;
    }

    /// After the sidecar is gone: measures the volume against the size cap (removing it when
    /// over; a poisoned root is removed at once), then releases the lock. Returns lines for
    /// the teardown report.
    pub async fn release(self, docker: &Docker) -> (Vec<String>, Vec<String>) {
        let mut removed = Vec::new();
        let mut failures = Vec::new();
        if self.poisoned {
            match docker.remove_volume(&self.volume).await {
                Ok(_) => removed.push(format!(
                    "volume {} (warm root whose scrub failed)",
                    self.volume
                )),
                Err(e) => failures.push(format!("remove a warm root whose scrub failed: {e}")),
            }
            return (removed, failures);
        }
        if let Some(max) = self.max_size {
            let measured = measure(
                docker,
                &self.inflight,
                &self.naming,
                &self.helper_image,
                &self.volume,
            )
            .await;
            match measured {
                Ok(size) if size > max => match docker.remove_volume(&self.volume).await {
                    Ok(_) => removed.push(format!(
                        "volume {} (warm root of {size} bytes, over its {max} byte cap)",
                        self.volume
                    )),
                    Err(e) => failures.push(format!("remove oversized warm root: {e}")),
                },
                Ok(_) => {}
                Err(e) => failures.push(format!("measure warm root {}: {e}", self.volume)),
            }
        }
        // Still there: stamp the lock file, so the project's next daemon starts on the root
        // its last job left ([`acquire`] orders by it). Failing costs warmth, never safety.
        if removed.is_empty()
            && let Err(e) = self.lock.set_modified(SystemTime::now())
        {
            tracing::debug!(volume = %self.volume, error = %e, "could not stamp the warm root's lock file");
        }
        // The lock goes with `self` here, after the volume is settled.
        (removed, failures)
    }
}

/// Bytes used by a volume: `du` in a helper container with the volume read-only and no
/// network. The container carries the job's labels, so teardown and the reaper know it; it is
/// created on a task of `inflight` and removed even when this future is dropped half-way.
pub async fn measure(
    docker: &Docker,
    inflight: &TaskTracker,
    naming: &Naming,
    helper_image: &str,
    volume: &str,
) -> Result<u64, Error> {
    let cmd = ["du", "-s", "-x", "-B1", "/data"]
        .map(str::to_string)
        .to_vec();
    // Reading every file of a dockerd's root needs root's DAC override only.
    let caps = vec!["DAC_READ_SEARCH".to_string()];
    let (code, logs) = run_scratch(
        docker,
        inflight,
        naming,
        ("du", "measure", "measuring"),
        helper_image,
        volume,
        cmd,
        caps,
    )
    .await?;
    parse_du(&logs).ok_or_else(|| Error::Other {
        context: "measure a warm root".to_string(),
        detail: format!("du exited with {code}: {}", logs.trim()),
    })
}

/// What the offline scrub removes from a warm `/var/lib/docker` before any dockerd runs on it
/// again: swarm state (the equivalent of `docker swarm leave --force`: a swarm would restart
/// its services' tasks), managed plugins (enabled ones start with dockerd), every container
/// with its writable layers (restart policies start containers with dockerd, before any scrub
/// through the API could run), networks, volumes, and containerd's own state (its restart
/// monitor). Images (`image/`, the image layers under `overlay2/`) and build cache
/// (`buildkit/`) stay: that is the warmth. A container's writable layer is named by
/// `layerdb/mounts/<id>/{mount-id,init-id}`; only names of the driver's own alphabet are
/// removed, and `rm` never follows a link.
const OFFLINE_SCRUB: &str = r#"set -eu
cd /data
for m in image/*/layerdb/mounts/*; do
  [ -d "$m" ] || continue
  for f in mount-id init-id; do
    id=$(cat "$m/$f" 2>/dev/null || true)
    case "$id" in
      ''|*[!0-9a-z-]*) ;;
      *) rm -rf "overlay2/$id" ;;
    esac
  done
  rm -rf "$m"
done
rm -rf swarm plugins containers network volumes containerd tmp runtimes
echo scrubbed
"#;

/// Scrubs a warm root with no daemon running on it: [`OFFLINE_SCRUB`] in a throw-away helper
/// container with the volume and no network, labelled like the job (teardown and the reaper
/// know it). Fails unless the script says it finished.
pub async fn scrub_offline(
    docker: &Docker,
    inflight: &TaskTracker,
    naming: &Naming,
    helper_image: &str,
    volume: &str,
) -> Result<(), Error> {
    let cmd = vec![
        "sh".to_string(),
        "-c".to_string(),
        OFFLINE_SCRUB.to_string(),
    ];
    // Removing another user's files in a directory root does not own needs DAC override;
    // FOWNER for sticky directories.
    let caps = ["DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER"]
        .map(str::to_string)
        .to_vec();
    let (code, logs) = run_scratch(
        docker,
        inflight,
        naming,
        ("scrub", "scrub", "scrubbing"),
        helper_image,
        volume,
        cmd,
        caps,
    )
    .await?;
    if code == 0 && logs.lines().any(|l| l.trim() == "scrubbed") {
        Ok(())
    } else {
        Err(Error::Other {
            context: format!("scrub the warm root {volume}"),
            detail: format!("the scrub exited with {code}: {}", logs.trim()),
        })
    }
}

/// Runs `cmd` in a throw-away helper container with `volume` at `/data`, no network, only
/// `caps`; returns its exit code and last output lines. `what` is (name suffix, role label,
/// verb for messages).
#[allow(clippy::too_many_arguments)]
async fn run_scratch(
    docker: &Docker,
    inflight: &TaskTracker,
    naming: &Naming,
    what: (&str, &str, &str),
    helper_image: &str,
    volume: &str,
    cmd: Vec<String>,
    caps: Vec<String>,
) -> Result<(i64, String), Error> {
    let (suffix, role, verb) = what;
    let spec = ContainerSpec {
        name: naming.name(&format!("{suffix}-{}", uuid::Uuid::new_v4().simple())),
        image: helper_image.to_string(),
        entrypoint: Some(vec![]),
        cmd: Some(cmd),
        labels: naming.labels(role),
        mounts: vec![MountSpec::Volume {
            name: volume.to_string(),
            target: "/data".to_string(),
        }],
        network: Some("none".to_string()),
        cap_drop: vec!["ALL".to_string()],
        cap_add: caps,
        security_opt: vec!["no-new-privileges".to_string()],
        ..Default::default()
    };
    // Created on its own task (see `common::detached`) and owned by a guard from the moment
    // it exists: when this future is dropped, during the create or after it, the guard
    // removes the container.
    let (d, tracker) = (docker.clone(), inflight.clone());
    let scratch = detached(inflight, async move {
        let id = d.create_container(&spec).await?;
        Ok::<_, crate::docker::Error>(Scratch {
            docker: d,
            id: Some(id),
            inflight: tracker,
        })
    })
    .await
    .map_err(other(format!("create the {verb} container")))?;
    let id = scratch.id.clone().unwrap_or_default();
    let result = async {
        docker
            .start_container(&id)
            .await
            .map_err(other(format!("start the {verb} container")))?;
        let code = docker
            .wait_container(&id)
            .await
            .map_err(other(format!("wait for the {verb} container")))?;
        let logs = docker
            .logs_tail(&id, 5)
            .await
            .map_err(other(format!("read the {verb} container's output")))?;
        Ok((code, logs))
    }
    .await;
    scratch.remove().await;
    result
}

/// A throw-away container of this runner, removed when dropped unless [`Scratch::remove`]
/// already did: the caller's future may be dropped at any await, and the task that created the
/// container may finish after its caller is gone (its result is then dropped unread).
struct Scratch {
    docker: Docker,
    id: Option<String>,
    inflight: TaskTracker,
}

impl Scratch {
    /// Removes the container now (a failure is logged: the container carries the job's labels
    /// and the reaper's sweep finds it).
    async fn remove(mut self) {
        let Some(id) = self.id.clone() else { return };
        if let Err(e) = self.docker.remove_container(&id).await {
            tracing::warn!(container = %id, error = %e, "could not remove the measuring container");
        }
        // Only now: dropped during the request above, the guard still removes it.
        self.id = None;
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else { return };
        let docker = self.docker.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                self.inflight.spawn_on(
                    async move {
                        if let Err(e) = docker.remove_container(&id).await {
                            tracing::warn!(container = %id, error = %e, "could not remove the measuring container");
                        }
                    },
                    &rt,
                );
            }
            Err(_) => tracing::warn!(
                container = %id,
                "no runtime left to remove the measuring container; the reaper will"
            ),
        }
    }
}

/// The byte count of `du -s -B1` output (the last line that parses; `du` may warn first).
fn parse_du(out: &str) -> Option<u64> {
    out.lines()
        .rev()
        .find_map(|l| l.split_whitespace().next().and_then(|n| n.parse().ok()))
}

/// Checks, in the job's own (warm) daemon just booted on a root [`scrub_offline`] already
/// cleaned, that nothing of the previous job is left, and removes what is: swarm membership,
/// plugins, containers, volumes and custom networks. Images and build cache stay (that is the
/// warmth). Returns what it could not remove; any failure means the root is not proven clean
/// and must not carry a job (the caller fails closed).
pub async fn scrub_inner(inner: &Docker) -> Vec<String> {
    let mut failures = Vec::new();
    match inner.swarm_active().await {
        Ok(true) => {
            if let Err(e) = inner.leave_swarm().await {
                failures.push(e.to_string());
            }
        }
        Ok(false) => {}
        Err(e) => failures.push(e.to_string()),
    }
    match inner.list_plugins().await {
        Ok(list) => {
            for p in list {
                if let Err(e) = inner.remove_plugin(&p).await {
                    failures.push(e.to_string());
                }
            }
        }
        Err(e) => failures.push(e.to_string()),
    }
    match inner.list_containers(&[]).await {
        Ok(list) => {
            for c in list {
                if let Err(e) = inner.remove_container(&c.id).await {
                    failures.push(e.to_string());
                }
            }
        }
        Err(e) => failures.push(e.to_string()),
    }
    match inner.list_networks(&[]).await {
        Ok(list) => {
            for n in list {
                if matches!(n.name.as_str(), "bridge" | "host" | "none") {
                    continue;
                }
                if let Err(e) = inner.remove_network(&n.id).await {
                    failures.push(e.to_string());
                }
            }
        }
        Err(e) => failures.push(e.to_string()),
    }
    match inner.list_volumes(&[]).await {
        Ok(list) => {
            for v in list {
                if let Err(e) = inner.remove_volume(&v.name).await {
                    failures.push(e.to_string());
                }
            }
        }
        Err(e) => failures.push(e.to_string()),
    }
    failures
}

/// [`scrub_inner`], failing closed: when anything could not be removed, the lease is poisoned
/// (its root is removed at release) and the error says what was left.
pub async fn check_scrubbed(inner: &Docker, lease: &mut WarmLease) -> Result<(), Error> {
    let failures = scrub_inner(inner).await;
    if failures.is_empty() {
        return Ok(());
    }
    lease.poison();
    Err(Error::Other {
        context: format!(
            "scrub the warm data root {} (it is removed; the next job starts cold)",
            lease.volume
        ),
        detail: failures.join("; "),
    })
}

/// What [`remove_expired`] found and did.
#[derive(Debug, Default, Clone)]
pub struct ExpiredReport {
    /// Warm roots older than the cap (removed unless dry run).
    pub expired: Vec<String>,
    /// Removed.
    pub removed: Vec<String>,
    /// Warm roots kept (young, or in use).
    pub kept: Vec<String>,
    /// Failures.
    pub failures: Vec<String>,
}

/// For `runner cleanup`: removes this runner's warm roots older than `max_age` (with `None`,
/// every warm root of the runner) that no job holds. Held roots are kept and retried later.
pub async fn remove_expired(
    docker: &Docker,
    runner_id: &str,
    state_dir: &Path,
    max_age: Option<Duration>,
    dry_run: bool,
) -> ExpiredReport {
    let mut report = ExpiredReport::default();
    let vols = match docker
        .list_volumes(&[
            format!("{LABEL_WARM}=1"),
            format!("{LABEL_RUNNER}={runner_id}"),
        ])
        .await
    {
        Ok(v) => v,
        Err(e) => {
            report.failures.push(e.to_string());
            return report;
        }
    };
    let now = now_secs();
    for v in vols {
        let old = max_age.is_none() || expired(&v.labels, max_age, now);
        if !old {
            report.kept.push(v.name);
            continue;
        }
        // Held by a job right now: never pull a volume from under a running dockerd.
        let lock = match try_lock(lock_path(state_dir, &v.name)).await {
            Ok(Some(l)) => l,
            Ok(None) => {
                report.kept.push(v.name);
                continue;
            }
            Err(e) => {
                report.failures.push(e);
                continue;
            }
        };
        report.expired.push(v.name.clone());
        if !dry_run {
            match docker.remove_volume(&v.name).await {
                Ok(_) => report.removed.push(v.name),
                Err(e) => report.failures.push(e.to_string()),
            }
        }
        drop(lock);
    }
    report
}

#[cfg(test)]
#[path = "data_root_tests.rs"]
mod tests;
