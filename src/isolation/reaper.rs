//! Finds and removes what a dead runner left behind, by label: containers, networks, volumes,
//! plus the certificate and job directories of the jobs those labels name.
//!
//! At start-up no job of this runner is running, so everything labelled with this runner's id is
//! a leftover. Objects of *other* runners are touched only once their deadline label has passed
//! (their job cannot still be running: certificates expired at that moment too).

use crate::docker::{
    self, Docker, LABEL_DEADLINE, LABEL_JOB, LABEL_MANAGED, LABEL_ROLE, LABEL_RUNNER,
};
use crate::paths::JobId;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// What to sweep.
#[derive(Debug, Clone)]
pub struct ReapRequest {
    /// This runner's id: all its objects are leftovers.
    pub runner_id: String,
    /// The runner's state dir (cert dirs).
    pub state_dir: PathBuf,
    /// The runner's builds dir (job dirs).
    pub builds_dir: PathBuf,
    /// List only.
    pub dry_run: bool,
}

/// What the reaper found and did.
#[derive(Debug, Default, Clone)]
pub struct ReapReport {
    /// Objects found (`container ir-r-1-sidecar`, `dir /builds/gitlab-job-1`).
    pub found: Vec<String>,
    /// Objects removed (empty in dry-run mode).
    pub removed: Vec<String>,
    /// Failures.
    pub failures: Vec<String>,
}

fn stale(labels: &HashMap<String, String>, runner_id: &str, now: u64) -> bool {
    if labels.get(LABEL_RUNNER).map(String::as_str) == Some(runner_id) {
        return true;
    }
    labels
        .get(LABEL_DEADLINE)
        .and_then(|d| d.parse::<u64>().ok())
        .is_some_and(|d| d < now)
}

/// Sweeps leftovers. Never fails as a whole: each problem is a line in `failures`.
pub async fn reap(docker: &Docker, req: &ReapRequest) -> ReapReport {
    let mut report = ReapReport::default();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let managed = vec![format!("{LABEL_MANAGED}=1")];
    let mut jobs: BTreeSet<u64> = BTreeSet::new();
    let mut note_job = |labels: &HashMap<String, String>| {
        if labels.get(LABEL_RUNNER).map(String::as_str) == Some(req.runner_id.as_str())
            && let Some(j) = labels.get(LABEL_JOB).and_then(|j| j.parse::<u64>().ok())
        {
            jobs.insert(j);
        }
    };

    let mut containers = match docker.list_containers(&managed).await {
        Ok(c) => c,
        Err(e) => {
            report.failures.push(e.to_string());
            Vec::new()
        }
    };
    containers.retain(|c| stale(&c.labels, &req.runner_id, now));
    // Sidecars last, as in teardown.
    containers.sort_by_key(|c| c.labels.get(LABEL_ROLE).map(String::as_str) == Some("sidecar"));
    for c in &containers {
        note_job(&c.labels);
        report.found.push(format!("container {}", c.name));
        if !req.dry_run {
            match docker.remove_container(&c.id).await {
                Ok(_) => report.removed.push(format!("container {}", c.name)),
                Err(e) => report.failures.push(e.to_string()),
            }
        }
    }
    match docker.list_volumes(&managed).await {
        Ok(vols) => {
            for v in vols
                .iter()
                .filter(|v| stale(&v.labels, &req.runner_id, now))
            {
                note_job(&v.labels);
                report.found.push(format!("volume {}", v.name));
                if !req.dry_run {
                    match docker.remove_volume(&v.name).await {
                        Ok(_) => report.removed.push(format!("volume {}", v.name)),
                        Err(e) => report.failures.push(e.to_string()),
                    }
                }
            }
        }
        Err(e) => report.failures.push(e.to_string()),
    }
    match docker.list_networks(&managed).await {
        Ok(nets) => {
            for n in nets
                .iter()
                .filter(|n| stale(&n.labels, &req.runner_id, now))
            {
                note_job(&n.labels);
                report.found.push(format!("network {}", n.name));
                if !req.dry_run {
                    match docker.remove_network(&n.name).await {
                        Ok(_) => report.removed.push(format!("network {}", n.name)),
                        Err(e) => report.failures.push(e.to_string()),
                    }
                }
            }
        }
        Err(e) => report.failures.push(e.to_string()),
    }

    // Cert dirs of this runner are all leftovers; their names give more job ids.
    match crate::paths::list_cert_dirs(&req.state_dir, &req.runner_id).await {
        Ok(dirs) => {
            for (job, dir) in dirs {
                jobs.insert(job.get());
                remove_cert_dir(&dir, req.dry_run, &mut report).await;
            }
        }
        Err(e) => report.failures.push(e.to_string()),
    }
    for j in jobs {
        if let Ok(p) = crate::paths::job_paths(&req.builds_dir, JobId::new(j)) {
            for d in [p.project_dir, p.tmp_dir] {
                remove_dir(&d, req.dry_run, &mut report).await;
            }
        }
    }
    // Firewall chains: this runner's, and other runners' whose network is gone.
    let (found, removed, failures) = super::egress::reap(docker, &req.runner_id, req.dry_run).await;
    report.found.extend(found);
    report.removed.extend(removed);
    report.failures.extend(failures);
    for f in &report.failures {
        tracing::warn!(failure = %f, "reaper could not remove a leftover");
    }
    report
}

/// Removes one job's leftovers: objects labelled with this runner's id *and* `job_id`, the job's
/// certificate dir and its job dirs. Crash recovery calls this for each job in the journal
/// before reporting it; the runner-wide [`reap`] runs after it. Never fails as a whole.
pub async fn reap_job(docker: &Docker, req: &ReapRequest, job_id: u64) -> ReapReport {
    let mut report = ReapReport::default();
    let filters = docker::label_filters(&req.runner_id, Some(job_id));
    match docker.list_containers(&filters).await {
        Ok(mut containers) => {
            // Sidecars last, as in teardown.
            containers
                .sort_by_key(|c| c.labels.get(LABEL_ROLE).map(String::as_str) == Some("sidecar"));
            for c in &containers {
                report.found.push(format!("container {}", c.name));
                if !req.dry_run {
                    match docker.remove_container(&c.id).await {
                        Ok(_) => report.removed.push(format!("container {}", c.name)),
                        Err(e) => report.failures.push(e.to_string()),
                    }
                }
            }
        }
        Err(e) => report.failures.push(e.to_string()),
    }
    match docker.list_volumes(&filters).await {
        Ok(vols) => {
            for v in &vols {
                report.found.push(format!("volume {}", v.name));
                if !req.dry_run {
                    match docker.remove_volume(&v.name).await {
                        Ok(_) => report.removed.push(format!("volume {}", v.name)),
                        Err(e) => report.failures.push(e.to_string()),
                    }
                }
            }
        }
        Err(e) => report.failures.push(e.to_string()),
    }
    match docker.list_networks(&filters).await {
        Ok(nets) => {
            for n in &nets {
                report.found.push(format!("network {}", n.name));
                if !req.dry_run {
                    match docker.remove_network(&n.name).await {
                        Ok(_) => report.removed.push(format!("network {}", n.name)),
                        Err(e) => report.failures.push(e.to_string()),
                    }
                }
            }
        }
        Err(e) => report.failures.push(e.to_string()),
    }
    let job = JobId::new(job_id);
    match crate::paths::runner_cert_root(&req.state_dir, &req.runner_id) {
        Ok(root) => {
            remove_cert_dir(
                &root.join(crate::paths::cert_dir_name(job)),
                req.dry_run,
                &mut report,
            )
            .await
        }
        Err(e) => report.failures.push(e.to_string()),
    }
    if let Ok(p) = crate::paths::job_paths(&req.builds_dir, job) {
        for d in [p.project_dir, p.tmp_dir] {
            remove_dir(&d, req.dry_run, &mut report).await;
        }
    }
    for f in &report.failures {
        tracing::warn!(job.id = job_id, failure = %f, "reaper could not remove a leftover of a job");
    }
    report
}

async fn remove_dir(dir: &Path, dry_run: bool, report: &mut ReapReport) {
    remove_dir_with(dir, dry_run, report, false).await
}

/// A job's certificate dir: the runner's dir above it goes too once it is empty.
async fn remove_cert_dir(dir: &Path, dry_run: bool, report: &mut ReapReport) {
    remove_dir_with(dir, dry_run, report, true).await
}

async fn remove_dir_with(dir: &Path, dry_run: bool, report: &mut ReapReport, cert: bool) {
    if tokio::fs::symlink_metadata(dir).await.is_err() {
        return;
    }
    report.found.push(format!("dir {}", dir.display()));
    if dry_run {
        return;
    }
    let removed = if cert {
        crate::paths::remove_job_cert_dir(dir).await
    } else {
        crate::paths::remove_path_async(dir).await
    };
    match removed {
        Ok(_) => report.removed.push(format!("dir {}", dir.display())),
        Err(e) => report.failures.push(e.to_string()),
    }
}

/// The label filters of one runner (for callers that list without removing).
pub fn runner_filters(runner_id: &str) -> Vec<String> {
    docker::label_filters(runner_id, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staleness() {
        let mine = HashMap::from([(LABEL_RUNNER.to_string(), "r1".to_string())]);
        assert!(stale(&mine, "r1", 0));
        let other_live = HashMap::from([
            (LABEL_RUNNER.to_string(), "r2".to_string()),
            (LABEL_DEADLINE.to_string(), "200".to_string()),
        ]);
        assert!(!stale(&other_live, "r1", 100));
        assert!(stale(&other_live, "r1", 300));
        let other_no_deadline = HashMap::from([(LABEL_RUNNER.to_string(), "r2".to_string())]);
        assert!(!stale(&other_no_deadline, "r1", 300));
    }
}
