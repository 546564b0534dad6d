//! Peak memory per bench job, read from the containers' memory cgroups while jobs run.

use super::*;

/// Peak memory per bench job, from the containers' memory cgroups.
#[derive(Default)]
pub(super) struct MemWatcher {
    pub(super) peaks: Mutex<HashMap<u64, Peaks>>,
}

/// Which job a container belongs to, and whether it is a sidecar.
#[derive(Clone, Copy)]
pub(super) struct Owner {
    pub(super) job: u64,
    pub(super) sidecar: bool,
}

impl MemWatcher {
    pub(super) fn take(&self, job: u64) -> (Option<u64>, Option<u64>) {
        self.peaks
            .lock()
            .ok()
            .and_then(|mut p| p.remove(&job))
            .unwrap_or((None, None))
    }

    pub(super) async fn run(self: Arc<Self>, docker: Docker, runner_ids: Vec<String>) {
        let mut root = None;
        let mut owners: HashMap<String, Option<Owner>> = HashMap::new();
        let mut tick = tokio::time::interval(MEM_POLL);
        loop {
            tick.tick().await;
            // Looked up on every tick until found: with cgroupfs on v1 the host daemon creates
            // `memory/docker` only when it starts its first container, so on an idle engine it
            // does not exist when the bench starts (and a one-time lookup measured nothing).
            if root.is_none() {
                root = memory_cgroup_root(CGROUP_ROOTS).await;
            }
            let Some(root) = &root else { continue };
            let ids = cgroup_ids(root).await;
            if ids.iter().any(|id| !owners.contains_key(id)) {
                // One listing per runner id classifies every new container at once.
                let mut known = HashMap::new();
                for rid in &runner_ids {
                    let f = crate::docker::label_filters(rid, None);
                    if let Ok(list) = docker.list_containers(&f).await {
                        for c in list {
                            let job = c.labels.get(LABEL_JOB).and_then(|j| j.parse().ok());
                            let sidecar =
                                c.labels.get(LABEL_ROLE).map(String::as_str) == Some("sidecar");
                            if let Some(job) = job {
                                known.insert(c.id, Owner { job, sidecar });
                            }
                        }
                    }
                }
                for id in &ids {
                    if !owners.contains_key(id) {
                        owners.insert(id.clone(), known.get(id).copied());
                    }
                }
            }
            let mut sums: HashMap<u64, (u64, u64)> = HashMap::new();
            for id in &ids {
                let Some(Some(owner)) = owners.get(id) else {
                    continue;
                };
                let Some(peak) = read_peak(root, id).await else {
                    continue;
                };
                let e = sums.entry(owner.job).or_default();
                if owner.sidecar {
                    e.1 = e.1.max(peak);
                } else {
                    e.0 += peak;
                }
            }
            if let Ok(mut p) = self.peaks.lock() {
                for (job, (j, s)) in sums {
                    let e = p.entry(job).or_insert((None, None));
                    if j > 0 {
                        e.0 = Some(e.0.unwrap_or(0).max(j));
                    }
                    if s > 0 {
                        e.1 = Some(e.1.unwrap_or(0).max(s));
                    }
                }
            }
            let live: HashSet<&String> = ids.iter().collect();
            owners.retain(|id, _| live.contains(id));
        }
    }
}

/// Where container memory cgroups live: `memory/docker` (v1, cgroupfs driver) or
/// `system.slice` (v2, systemd driver).
pub(super) const CGROUP_ROOTS: &[&str] = &[
    "/sys/fs/cgroup/memory/docker",
    "/sys/fs/cgroup/system.slice",
];

/// The first of `candidates` that exists.
pub(super) async fn memory_cgroup_root(candidates: &[&str]) -> Option<PathBuf> {
    for p in candidates {
        if tokio::fs::try_exists(p).await.unwrap_or(false) {
            return Some(PathBuf::from(p));
        }
    }
    None
}

/// Container ids with a memory cgroup under `root`.
pub(super) async fn cgroup_ids(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(mut rd) = tokio::fs::read_dir(root).await else {
        return out;
    };
    while let Ok(Some(e)) = rd.next_entry().await {
        let name = e.file_name().to_string_lossy().into_owned();
        let id = name
            .strip_prefix("docker-")
            .and_then(|n| n.strip_suffix(".scope"))
            .unwrap_or(&name);
        if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            out.push(id.to_string());
        }
    }
    out
}

pub(super) async fn read_peak(root: &Path, id: &str) -> Option<u64> {
    let v1 = root.join(id).join("memory.max_usage_in_bytes");
    let v2 = root.join(format!("docker-{id}.scope")).join("memory.peak");
    for p in [v1, v2] {
        if let Ok(s) = tokio::fs::read_to_string(&p).await
            && let Ok(v) = s.trim().parse()
        {
            return Some(v);
        }
    }
    None
}
