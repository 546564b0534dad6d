//! `runner cleanup`: removes what dead or old jobs left behind, from any runner on this host.
//!
//! Unlike the start-up reaper (`isolation::reaper`), which may take every object of its own
//! runner id because no job of its own runs yet, cleanup runs *beside* a live runner (the
//! nightly timer). So it decides per object who owns it:
//!
//! - Docker objects (containers, networks, volumes with `io.isolated-runner.managed=1`): removed
//!   when the owning runner **process** is gone ([`owner`]: boot id, pid, start time in the
//!   `io.isolated-runner.owner` label) or, when that cannot be judged, once the deadline label has
//!   passed. Anything without our managed label is never looked at.
//! - Per-job certificate directories (`<state_dir>/certs/<runner>/job-<id>`) and job directories
//!   (`<builds_dir>/gitlab-job-<id>` and `.tmp`): removed at once when the job's Docker objects
//!   belong to a dead runner, kept while any of them belongs to a live one, and otherwise removed
//!   once older than `older_than` (default 1h). Deletion never follows symlinks
//!   ([`crate::paths::remove_path`]).
//! - Egress chains (netpolicy): removed when their job is dead, or when nothing of the job is
//!   left and the chain belongs to one of this host's runner ids.
//! - The cache directory is pruned to its configured limits through the [`CachePruner`] seam.

pub mod labelled;
pub mod owner;
pub mod reaper;

use crate::docker::{
    Docker, LABEL_DEADLINE, LABEL_JOB, LABEL_MANAGED, LABEL_OWNER, LABEL_ROLE, LABEL_RUNNER,
};
use crate::netpolicy::{InstalledRule, NetPolicy};
use owner::{Liveness, Observer, Owner};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Default age after which a job directory without a live owner is removed.
pub const DEFAULT_OLDER_THAN: Duration = Duration::from_secs(3600);

/// Errors of the cleanup module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A cache pruner failed.
    #[error("pruning cache {dir}: {detail}")]
    Cache {
        /// The cache directory.
        dir: PathBuf,
        /// What went wrong.
        detail: String,
    },
}

/// What a cache prune did (or would do, in dry-run mode).
#[derive(Debug, Clone, Default)]
pub struct CachePruned {
    /// Archives removed (or that would be), as paths or names.
    pub removed: Vec<String>,
    /// Bytes freed (or that would be).
    pub freed_bytes: u64,
}

/// **Seam for the cache module.** Prunes one cache directory to its limits. The cache module
/// (`cache::prune(cache_dir, max_size, max_age, dry_run)`) implements this; `runner cleanup`
/// passes it in, and cleanup itself never decides which archives go.
#[async_trait::async_trait]
pub trait CachePruner: Send + Sync {
    /// Prunes `cache_dir` to `max_size` bytes and removes archives unused for `max_age`.
    async fn prune(
        &self,
        cache_dir: &Path,
        max_size: Option<u64>,
        max_age: Option<Duration>,
        dry_run: bool,
    ) -> Result<CachePruned, Error>;
}

/// One cache directory and its limits (`[runners.cache]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheTarget {
    /// `cache_dir`.
    pub dir: PathBuf,
    /// `max_size`.
    pub max_size: Option<u64>,
    /// `max_age`.
    pub max_age: Option<Duration>,
}

/// What to clean.
#[derive(Clone)]
pub struct Request {
    /// Every `builds_dir` of the config (deduplicated).
    pub builds_dirs: Vec<PathBuf>,
    /// The runner's state directory (certificate directories).
    pub state_dir: PathBuf,
    /// Cache directories to prune.
    pub caches: Vec<CacheTarget>,
    /// Age after which an unowned job directory goes.
    pub older_than: Duration,
    /// List only.
    pub dry_run: bool,
    /// Firewall access; `None` skips egress rules.
    pub netpolicy: Option<NetPolicy>,
    /// Runner ids of this host (system id, ids seen in certificate directories): their chains
    /// may go once nothing of the job is left.
    pub own_runner_ids: Vec<String>,
    /// The cache seam; `None` reports that the cache was not pruned.
    pub cache_pruner: Option<Arc<dyn CachePruner>>,
    /// Only Docker objects that also carry this `key=value` label (one runner's objects:
    /// `io.isolated-runner.runner=<id>`). Chains then go only with a job seen among those
    /// objects.
    pub label_filter: Option<String>,
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("builds_dirs", &self.builds_dirs)
            .field("state_dir", &self.state_dir)
            .field("caches", &self.caches)
            .field("older_than", &self.older_than)
            .field("dry_run", &self.dry_run)
            .field("own_runner_ids", &self.own_runner_ids)
            .field("cache_pruner", &self.cache_pruner.is_some())
            .field("label_filter", &self.label_filter)
            .finish_non_exhaustive()
    }
}

/// The kind of a leftover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// A container.
    Container,
    /// An egress chain.
    Chain,
    /// A volume.
    Volume,
    /// A network.
    Network,
    /// A per-job certificate directory.
    CertDir,
    /// A job directory.
    JobDir,
    /// A cache archive.
    Cache,
}

impl Kind {
    /// `container`, `chain`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Container => "container",
            Kind::Chain => "firewall chain",
            Kind::Volume => "volume",
            Kind::Network => "network",
            Kind::CertDir => "cert dir",
            Kind::JobDir => "job dir",
            Kind::Cache => "cache",
        }
    }
}

/// One thing to remove.
#[derive(Debug, Clone)]
pub struct Item {
    /// What it is.
    pub kind: Kind,
    /// Name or path, as shown.
    pub name: String,
    /// Why it goes (`runner process gone`, `older than 1h`).
    pub reason: String,
    /// Disk space it takes, when known (directories).
    pub bytes: Option<u64>,
    handle: Handle,
}

#[derive(Debug, Clone)]
enum Handle {
    Container(String),
    Volume(String),
    Network(String),
    Path(PathBuf),
    Chain(InstalledRule),
    None,
}

/// What cleanup found and did.
#[derive(Debug, Default, Clone)]
pub struct Report {
    /// Whether nothing was removed on purpose.
    pub dry_run: bool,
    /// Everything that goes (or would go), in removal order.
    pub items: Vec<Item>,
    /// The items actually removed (empty in dry-run mode).
    pub removed: Vec<Item>,
    /// Things that could not be listed or removed.
    pub failures: Vec<String>,
    /// Remarks that are not failures (firewall not usable, cache seam not wired).
    pub notes: Vec<String>,
    /// Bytes freed (or that would be): directories and cache archives; Docker volumes are not
    /// measured.
    pub freed_bytes: u64,
}

/// How one labelled object stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Its runner process runs.
    Alive,
    /// Its runner process is gone.
    Dead,
    /// Owner unknown, deadline passed.
    Expired,
    /// Owner unknown, deadline not passed (or absent): leave it.
    Pending,
}

impl Standing {
    /// Whether the object goes.
    pub fn removable(self) -> bool {
        matches!(self, Standing::Dead | Standing::Expired)
    }

    fn reason(self) -> &'static str {
        match self {
            Standing::Dead => "its runner process is gone",
            Standing::Expired => "its deadline has passed",
            Standing::Alive | Standing::Pending => "kept",
        }
    }
}

/// Judges one object's labels. Pure apart from `judge` (the owner's liveness).
pub fn standing(
    labels: &HashMap<String, String>,
    now_secs: u64,
    judge: &dyn Fn(&Owner) -> Liveness,
) -> Standing {
    match labels
        .get(LABEL_OWNER)
        .and_then(|v| Owner::parse(v))
        .map(|o| judge(&o))
    {
        Some(Liveness::Alive) => return Standing::Alive,
        Some(Liveness::Dead) => return Standing::Dead,
        Some(Liveness::Unknown) | None => {}
    }
    match labels
        .get(LABEL_DEADLINE)
        .and_then(|d| d.parse::<u64>().ok())
    {
        Some(d) if d < now_secs => Standing::Expired,
        _ => Standing::Pending,
    }
}

/// How a job stands, from all its labelled objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStanding {
    /// Some object is alive or pending: the job may still run.
    Live,
    /// All its objects are dead or expired.
    Dead,
    /// No labelled object names the job.
    Unknown,
}

/// Folds object standings into job standings.
pub fn job_standings(objects: &[(Option<u64>, Standing)]) -> BTreeMap<u64, JobStanding> {
    let mut jobs = BTreeMap::new();
    for (job, s) in objects {
        let Some(job) = job else { continue };
        let entry = jobs.entry(*job).or_insert(JobStanding::Dead);
        if !s.removable() {
            *entry = JobStanding::Live;
        }
    }
    jobs
}

/// Whether a job or certificate directory goes, and why. `age` is `None` when unknown.
/// `owners_known` is false when Docker could not be listed: a job without labelled objects may
/// then be a live one, and a job can backdate its own project dir's mtime, so age alone never
/// removes anything (L4).
pub fn dir_verdict(
    job: JobStanding,
    age: Option<Duration>,
    older_than: Duration,
    owners_known: bool,
) -> Option<String> {
    match job {
        JobStanding::Live => None,
        JobStanding::Dead => Some("its job's runner is gone".to_string()),
        JobStanding::Unknown if !owners_known => None,
        JobStanding::Unknown => match age {
            Some(a) if a > older_than => Some(format!(
                "no live job owns it and it is older than {}",
                humantime::format_duration(older_than)
            )),
            _ => None,
        },
    }
}

/// Whether a chain goes, and why.
/// `owners_known` as for [`dir_verdict`]: without a Docker listing, a chain of a job with no
/// objects seen may still filter a live job's bridge.
pub fn chain_verdict(
    rule: &InstalledRule,
    job: JobStanding,
    own_runner_ids: &[String],
    owners_known: bool,
) -> Option<String> {
    match job {
        JobStanding::Live => None,
        JobStanding::Dead => Some("its job's runner is gone".to_string()),
        JobStanding::Unknown if !owners_known => None,
        JobStanding::Unknown => {
            // An empty chain only names the runner's first 8 characters.
            let ours = own_runner_ids
                .iter()
                .any(|id| *id == rule.runner_id || id.starts_with(&rule.runner_id));
            ours.then(|| "nothing of its job is left".to_string())
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

fn job_of(labels: &HashMap<String, String>) -> Option<u64> {
    labels.get(LABEL_JOB).and_then(|j| j.parse().ok())
}

fn describe_labels(labels: &HashMap<String, String>) -> String {
    let get = |k: &str| labels.get(k).map(String::as_str).unwrap_or("?");
    format!(
        "runner {} job {}",
        get(LABEL_RUNNER),
        labels.get(LABEL_JOB).map(String::as_str).unwrap_or("-")
    )
}

/// Finds what would go, removing nothing. Never fails as a whole: problems are in `failures`.
pub async fn plan(docker: Option<&Docker>, req: &Request) -> Report {
    let mut report = Report {
        dry_run: true,
        ..Report::default()
    };
    let observer: Option<Observer> = tokio::task::spawn_blocking(owner::observer)
        .await
        .ok()
        .flatten();
    // Pids to judge are read from procfs once, off the async workers.
    let mut objects: Vec<(Handle, Kind, String, HashMap<String, String>)> = Vec::new();
    let failures_before = report.failures.len();
    match docker {
        Some(docker) => {
            let mut managed = vec![format!("{LABEL_MANAGED}=1")];
            managed.extend(req.label_filter.clone());
            let (found, failures) = labelled::list_labelled(docker, &managed).await;
            report.failures.extend(failures);
            objects.extend(found.into_iter().map(|o| {
                let handle = match o.kind {
                    Kind::Container => Handle::Container(o.handle),
                    Kind::Volume => Handle::Volume(o.handle),
                    _ => Handle::Network(o.handle),
                };
                (handle, o.kind, o.name, o.labels)
            }));
        }
        None => report
            .notes
            .push("docker not reachable: containers, networks and volumes not checked".into()),
    }
    // Every listing answered: a job none of them names has nothing left on the engine.
    let owners_known = docker.is_some() && report.failures.len() == failures_before;
    if !owners_known {
        report.notes.push(
            "docker could not be listed, so which jobs still run is unknown: job and certificate \
             directories and firewall chains without a known owner are kept whatever their age"
                .into(),
        );
    }
    let owners: Vec<Option<Owner>> = objects
        .iter()
        .map(|(_, _, _, l)| l.get(LABEL_OWNER).and_then(|v| Owner::parse(v)))
        .collect();
    let pids: Vec<u32> = owners.iter().flatten().map(|o| o.pid).collect();
    let starts: HashMap<u32, Option<u64>> = tokio::task::spawn_blocking(move || {
        pids.into_iter()
            .map(|p| (p, owner::start_ticks(p)))
            .collect()
    })
    .await
    .unwrap_or_default();
    let judge = |o: &Owner| match &observer {
        Some(obs) => obs.judge(o, |pid| starts.get(&pid).copied().flatten()),
        None => Liveness::Unknown,
    };
    let now = now_secs();
    let standings: Vec<(Option<u64>, Standing)> = objects
        .iter()
        .map(|(_, _, _, l)| (job_of(l), standing(l, now, &judge)))
        .collect();
    let jobs = job_standings(&standings);
    let job = |id: u64| jobs.get(&id).copied().unwrap_or(JobStanding::Unknown);

    let mut docker_items: Vec<Item> = Vec::new();
    for ((handle, kind, name, labels), (_, s)) in objects.into_iter().zip(&standings) {
        if s.removable() {
            docker_items.push(Item {
                kind,
                name: name.clone(),
                reason: format!("{} ({})", s.reason(), describe_labels(&labels)),
                bytes: None,
                handle,
            });
        }
    }
    // Containers first (sidecars last among them, as in teardown), then volumes, networks.
    docker_items.sort_by_key(|i| {
        (
            i.kind,
            matches!(&i.handle, Handle::Container(_)) && i.name.ends_with("-sidecar"),
        )
    });

    // Firewall chains.
    let mut chain_items = Vec::new();
    if let Some(policy) = &req.netpolicy {
        match policy.list_installed().await {
            Ok(rules) => {
                // With a label filter, orphan chains are out of scope: only jobs seen among
                // the filtered objects count.
                let own: &[String] = if req.label_filter.is_some() {
                    &[]
                } else {
                    &req.own_runner_ids
                };
                for rule in rules {
                    if let Some(reason) = chain_verdict(&rule, job(rule.job_id), own, owners_known)
                    {
                        chain_items.push(Item {
                            kind: Kind::Chain,
                            name: format!(
                                "{} (runner {} job {})",
                                rule.chain, rule.runner_id, rule.job_id
                            ),
                            reason,
                            bytes: None,
                            handle: Handle::Chain(rule),
                        });
                    }
                }
            }
            Err(e) => report.notes.push(format!("egress rules not checked: {e}")),
        }
    }

    // Directories.
    let dirs = list_dirs(req).await;
    let mut dir_items = Vec::new();
    match dirs {
        Ok((found, failures)) => {
            report.failures.extend(failures);
            for d in found {
                if let Some(reason) = dir_verdict(job(d.job), d.age, req.older_than, owners_known) {
                    dir_items.push(Item {
                        kind: d.kind,
                        name: d.path.display().to_string(),
                        reason,
                        bytes: Some(d.bytes),
                        handle: Handle::Path(d.path),
                    });
                }
            }
        }
        Err(e) => report.failures.push(e),
    }

    report.items.extend(
        docker_items
            .iter()
            .filter(|i| i.kind == Kind::Container)
            .cloned(),
    );
    report.items.extend(chain_items);
    report.items.extend(
        docker_items
            .into_iter()
            .filter(|i| i.kind != Kind::Container),
    );
    report.items.extend(dir_items);
    report
}

struct FoundDir {
    kind: Kind,
    job: u64,
    path: PathBuf,
    age: Option<Duration>,
    bytes: u64,
}

/// Job directories under every builds dir and certificate directories under the state dir.
async fn list_dirs(req: &Request) -> Result<(Vec<FoundDir>, Vec<String>), String> {
    let builds = req.builds_dirs.clone();
    let certs = req.state_dir.join("certs");
    tokio::task::spawn_blocking(move || {
        let mut found = Vec::new();
        let mut failures = Vec::new();
        let mut scan = |dir: &Path, kind: Kind, job_of_name: &dyn Fn(&str) -> Option<u64>| {
            let rd = match std::fs::read_dir(dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(e) => {
                    failures.push(format!("cannot read {}: {e}", dir.display()));
                    return;
                }
            };
            for entry in rd.flatten() {
                let name = entry.file_name();
                let Some(job) = name.to_str().and_then(job_of_name) else {
                    continue;
                };
                let path = entry.path();
                let meta = std::fs::symlink_metadata(&path).ok();
                // A job on a pre-started sidecar: its dirs are links to the slot's own
                // (`gitlab-job-<slot>`, `gitlab-job-<slot>.tmp`) and its objects carry the
                // slot's id, so the link lives and dies with the slot's objects.
                let job = if meta.as_ref().is_some_and(|m| m.file_type().is_symlink()) {
                    std::fs::read_link(&path)
                        .ok()
                        .and_then(|t| {
                            t.components().next().and_then(|c| {
                                crate::paths::job_id_of_dir_name(c.as_os_str()).map(|j| j.get())
                            })
                        })
                        .filter(|&s| crate::paths::is_slot_id(s))
                        .unwrap_or(job)
                } else {
                    job
                };
                let age = meta
                    .as_ref()
                    .and_then(|m| m.modified().ok())
                    .and_then(|t| SystemTime::now().duration_since(t).ok());
                found.push(FoundDir {
                    kind,
                    job,
                    bytes: disk_usage(&path),
                    path,
                    age,
                });
            }
        };
        for b in &builds {
            scan(b, Kind::JobDir, &|n| {
                crate::paths::job_id_of_dir_name(std::ffi::OsStr::new(n)).map(|j| j.get())
            });
        }
        if let Ok(rd) = std::fs::read_dir(&certs) {
            for runner in rd.flatten() {
                let is_dir = runner.file_type().map(|t| t.is_dir()).unwrap_or(false);
                if is_dir {
                    scan(&runner.path(), Kind::CertDir, &|n| {
                        n.strip_prefix("job-").and_then(|d| d.parse().ok())
                    });
                }
            }
        }
        (found, failures)
    })
    .await
    .map_err(|e| format!("listing directories: {e}"))
}

/// Bytes on disk below `path`, never following symlinks. Blocking.
pub fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    walkdir::WalkDir::new(path)
        .follow_links(false)
        .same_file_system(true)
        .into_iter()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.blocks() * 512)
        .sum()
}

/// Removes what [`plan`] found (nothing in dry-run mode) and prunes the caches.
pub async fn execute(docker: Option<&Docker>, req: &Request, mut report: Report) -> Report {
    report.dry_run = req.dry_run;
    let items = report.items.clone();
    for item in items {
        if req.dry_run {
            report.freed_bytes += item.bytes.unwrap_or(0);
            continue;
        }
        let result: Result<(), String> = match (&item.handle, docker) {
            (Handle::Container(h) | Handle::Volume(h) | Handle::Network(h), Some(d)) => {
                labelled::remove(d, item.kind, h)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            // The runner's dir above a job's cert dir goes too once it is empty.
            (Handle::Path(p), _) if item.kind == Kind::CertDir => {
                crate::paths::remove_job_cert_dir(p)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            (Handle::Path(p), _) => crate::paths::remove_path_async(p)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            (Handle::Chain(rule), _) => match &req.netpolicy {
                Some(policy) => policy
                    .remove_installed(rule)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                None => Err("no firewall access".to_string()),
            },
            (Handle::None, _) => Ok(()),
            (_, None) => Err("docker not reachable".to_string()),
        };
        match result {
            Ok(()) => {
                report.freed_bytes += item.bytes.unwrap_or(0);
                report.removed.push(item);
            }
            Err(e) => report
                .failures
                .push(format!("{} {}: {e}", item.kind.as_str(), item.name)),
        }
    }
    for cache in &req.caches {
        match &req.cache_pruner {
            Some(pruner) => {
                match pruner
                    .prune(&cache.dir, cache.max_size, cache.max_age, req.dry_run)
                    .await
                {
                    Ok(pruned) => {
                        report.freed_bytes += pruned.freed_bytes;
                        for name in pruned.removed {
                            let item = Item {
                                kind: Kind::Cache,
                                name,
                                reason: "over the cache's size or age limit".to_string(),
                                bytes: None,
                                handle: Handle::None,
                            };
                            if !req.dry_run {
                                report.removed.push(item.clone());
                            }
                            report.items.push(item);
                        }
                    }
                    Err(e) => report.failures.push(e.to_string()),
                }
            }
            None => report.notes.push(format!(
                "cache {} not pruned: no cache pruner is wired into this build",
                cache.dir.display()
            )),
        }
    }
    for f in &report.failures {
        tracing::warn!(failure = %f, "cleanup could not remove a leftover");
    }
    report
}

/// [`plan`] then [`execute`].
pub async fn run(docker: Option<&Docker>, req: &Request) -> Report {
    let found = plan(docker, req).await;
    execute(docker, req, found).await
}

/// The role label of an object, for display.
pub fn role_of(labels: &HashMap<String, String>) -> Option<&str> {
    labels.get(LABEL_ROLE).map(String::as_str)
}

/// `1.5 GiB`, `12 KiB`, `0 B`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The cache module's pruner: least recently used archives go first (see `cache::prune`).
pub struct LocalCachePruner;

#[async_trait::async_trait]
impl CachePruner for LocalCachePruner {
    async fn prune(
        &self,
        cache_dir: &Path,
        max_size: Option<u64>,
        max_age: Option<Duration>,
        dry_run: bool,
    ) -> Result<CachePruned, Error> {
        let report = crate::cache::prune(cache_dir, max_size, max_age, dry_run)
            .await
            .map_err(|e| Error::Cache {
                dir: cache_dir.to_path_buf(),
                detail: e.to_string(),
            })?;
        Ok(CachePruned {
            removed: report
                .removed
                .iter()
                .map(|(p, _)| p.display().to_string())
                .collect(),
            freed_bytes: report.freed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn sizes() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(2048), "2.0 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }

    #[test]
    fn standing_by_owner_then_deadline() {
        let alive = |_: &Owner| Liveness::Alive;
        let dead = |_: &Owner| Liveness::Dead;
        let unknown = |_: &Owner| Liveness::Unknown;
        let owned = labels(&[(LABEL_OWNER, "b/1/2/3"), (LABEL_DEADLINE, "100")]);
        assert_eq!(standing(&owned, 200, &alive), Standing::Alive);
        assert_eq!(standing(&owned, 50, &dead), Standing::Dead);
        assert_eq!(standing(&owned, 200, &unknown), Standing::Expired);
        assert_eq!(standing(&owned, 50, &unknown), Standing::Pending);
        let old_style = labels(&[(LABEL_DEADLINE, "100")]);
        assert_eq!(standing(&old_style, 200, &alive), Standing::Expired);
        assert_eq!(standing(&labels(&[]), 200, &dead), Standing::Pending);
    }

    #[test]
    fn jobs_live_while_any_object_lives() {
        let jobs = job_standings(&[
            (Some(1), Standing::Dead),
            (Some(1), Standing::Pending),
            (Some(2), Standing::Dead),
            (Some(2), Standing::Expired),
            (None, Standing::Dead),
        ]);
        assert_eq!(jobs[&1], JobStanding::Live);
        assert_eq!(jobs[&2], JobStanding::Dead);
        assert!(!jobs.contains_key(&3));
    }

    #[test]
    fn dirs_by_job_then_age() {
        let hour = Duration::from_secs(3600);
        let old = Some(Duration::from_secs(7200));
        let young = Some(Duration::from_secs(60));
        assert!(dir_verdict(JobStanding::Live, old, hour, true).is_none());
        assert!(dir_verdict(JobStanding::Dead, young, hour, true).is_some());
        assert!(dir_verdict(JobStanding::Unknown, old, hour, true).is_some());
        assert!(dir_verdict(JobStanding::Unknown, young, hour, true).is_none());
        assert!(dir_verdict(JobStanding::Unknown, None, hour, true).is_none());
        // Docker not listed: age alone removes nothing; a dead runner's dirs still go.
        assert!(dir_verdict(JobStanding::Unknown, old, hour, false).is_none());
        assert!(dir_verdict(JobStanding::Dead, old, hour, false).is_some());
    }

    #[test]
    fn chains_of_strangers_stay() {
        let rule = |runner: &str| InstalledRule {
            job_id: 5,
            runner_id: runner.to_string(),
            chain: "IR-x-5".to_string(),
            families: vec![],
        };
        let own = vec!["abcdef0123456789".to_string()];
        assert!(chain_verdict(&rule("other"), JobStanding::Unknown, &own, true).is_none());
        assert!(chain_verdict(&rule("other"), JobStanding::Dead, &own, true).is_some());
        assert!(chain_verdict(&rule("abcdef01"), JobStanding::Unknown, &own, true).is_some());
        assert!(chain_verdict(&rule("abcdef0123456789"), JobStanding::Live, &own, true).is_none());
    }
}
