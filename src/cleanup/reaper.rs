//! Finds and removes what a dead runner left behind, by label: containers, networks, volumes,
//! plus the certificate and job directories of the jobs those labels name.
//!
//! At start-up no job of this runner is running, so everything labelled with this runner's id is
//! a leftover. Objects of *other* runners are touched only once their deadline label has passed
//! (their job cannot still be running: certificates expired at that moment too).
//!
//! This is the start-up policy of the sweeper; `runner cleanup` ([`super::plan`]) is the policy
//! for a host whose runners may still be alive. Both list and remove through [`labelled`].

use super::Kind;
use super::labelled::{self, Labelled};
use crate::docker::{self, Docker, LABEL_DEADLINE, LABEL_JOB, LABEL_MANAGED, LABEL_RUNNER};
use crate::netpolicy::{self, NetPolicy, Options};
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

    let (mut objects, failures) = labelled::list_labelled(docker, &managed).await;
    report.failures.extend(failures);
    objects.retain(|o| stale(&o.labels, &req.runner_id, now));
    for o in &objects {
        note_job(&o.labels);
    }
    let (containers, rest): (Vec<_>, Vec<_>) =
        objects.into_iter().partition(|o| o.kind == Kind::Container);
    remove_objects(docker, &containers, req.dry_run, &mut report).await;
    // Firewall chains after the containers (nothing runs on a bridge left unfiltered) and
    // before the networks, as in teardown and `runner cleanup`: while a job's network exists
    // its chain is live to every other runner's sweep, so none races this one for it.
    let (found, removed, failures) = reap_chains(docker, &req.runner_id, req.dry_run).await;
    report.found.extend(found);
    report.removed.extend(removed);
    report.failures.extend(failures);
    remove_objects(docker, &rest, req.dry_run, &mut report).await;

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
    let (objects, failures) = labelled::list_labelled(docker, &filters).await;
    report.failures.extend(failures);
    remove_objects(docker, &objects, req.dry_run, &mut report).await;
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

/// Notes each object as found and, unless `dry_run`, removes it.
async fn remove_objects(
    docker: &Docker,
    objects: &[Labelled],
    dry_run: bool,
    report: &mut ReapReport,
) {
    for o in objects {
        report.found.push(o.describe());
        if !dry_run {
            match labelled::remove(docker, o.kind, &o.handle).await {
                Ok(_) => report.removed.push(o.describe()),
                Err(e) => report.failures.push(e.to_string()),
            }
        }
    }
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

/// Removes the firewall chains a dead runner left: every chain of `runner_id`, and chains of
/// other runners whose job network no longer exists on the engine (the policy is installed
/// after the network is made and removed before it goes, so a chain without its network is
/// certainly stale). Returns `(found, removed, failures)` lines for the report.
pub async fn reap_chains(
    docker: &Docker,
    runner_id: &str,
    dry_run: bool,
) -> (Vec<String>, Vec<String>, Vec<String>) {
    let (mut found, mut removed, mut failures) = (Vec::new(), Vec::new(), Vec::new());
    // The pool only matters for installing; listing and removing ignore it.
    let pool = crate::config::IsolationConfig::default().address_pool;
    let policy = NetPolicy::new(Options::new(runner_id, pool));
    let installed = match policy.list_installed().await {
        Ok(list) => list,
        // No iptables binary: this host has no firewall we could have written to.
        Err(netpolicy::Error::Spawn { command, .. }) => {
            tracing::debug!(%command, "no iptables here; nothing to reap in the firewall");
            return (found, removed, failures);
        }
        Err(e) => {
            failures.push(format!("list firewall chains: {e}"));
            return (found, removed, failures);
        }
    };
    let own_chain = |job: u64| netpolicy::rules::chain_names(runner_id, job).ok();
    let mut stale = Vec::new();
    let mut orphans = false;
    for rule in installed {
        let mine = rule.runner_id == runner_id
            || own_chain(rule.job_id).is_some_and(|names| names.contains(&rule.chain));
        if mine {
            stale.push(rule);
        } else if network_gone(docker, &rule).await {
            orphans = true;
            stale.push(rule);
        }
    }
    // A live job's teardown removes its chain just before its network: a chain listed before
    // that and judged after it is already gone. Only what is still installed is a leftover.
    if orphans {
        match policy.list_installed().await {
            Ok(now) => stale.retain(|r| now.iter().any(|n| n.chain == r.chain)),
            Err(e) => failures.push(format!("list firewall chains: {e}")),
        }
    }
    for rule in stale {
        let line = format!("firewall chain {}", rule.chain);
        found.push(line.clone());
        if dry_run {
            continue;
        }
        match policy.remove_installed(&rule).await {
            Ok(true) => removed.push(line),
            // Its job's teardown removed it between the listing and now.
            Ok(false) => {}
            Err(e) => failures.push(format!("remove {line}: {e}")),
        }
    }
    (found, removed, failures)
}

/// True when no job network of `rule`'s job and runner exists. Matched on the runner id's
/// first 7 characters: a chain that crashed before its first rule has no comment, and its
/// owner is then known only by the prefix in the chain name.
async fn network_gone(docker: &Docker, rule: &netpolicy::InstalledRule) -> bool {
    let filters = vec![
        format!("{}=1", crate::docker::LABEL_MANAGED),
        format!("{}={}", crate::docker::LABEL_JOB, rule.job_id),
    ];
    let prefix: String = rule.runner_id.chars().take(7).collect();
    match docker.list_networks(&filters).await {
        Ok(nets) => !nets.iter().any(|n| {
            n.labels
                .get(crate::docker::LABEL_RUNNER)
                .is_some_and(|r| r.starts_with(&prefix))
        }),
        // Cannot tell: leave it for a later sweep.
        Err(_) => false,
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
