//! What the runner takes from a job payload, and what it only takes from GitLab or its config.
//!
//! The payload is written by whoever can get a job run (through the job's `.gitlab-ci.yml`
//! variables, or a semi-trusted GitLab instance). Everything that widens what the job may do on
//! this host (the protected flag, the endpoints its firewall opens, the host-wide keys its
//! directories and chains are named by) comes from GitLab's own fields and the runner's config,
//! and is checked here before anything is created.

use crate::config::RunnerConfig;
use crate::gitlab::types::JobResponse;
use crate::isolation::HostPort;
use crate::isolation::pool::SLOT_ID_BASE;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};

/// Whether the job runs for a protected ref: GitLab's `git_info.protected` only.
///
/// `CI_COMMIT_REF_PROTECTED` is not used as a fallback: GitLab sends yaml variables after the
/// predefined ones, so a job on any branch can set it to `true` (H2). A GitLab that does not send
/// the field (before 18.3) gets every job treated as unprotected: protected caches and warm
/// roots are then never written, which is the safe direction.
pub fn is_protected(job: &JobResponse) -> bool {
    job.git_info.protected.unwrap_or(false)
}

// The instance key and the configured clone hosts are runner policy that isolation/ needs too
// (warm roots, the egress allow-list): they live below it and are re-exported here.
pub use crate::config::instance_key;
pub use crate::isolation::clone_hosts;

/// Refuses ids this host cannot key the job by: 0, and ids in the warm pool's slot range
/// (`>= SLOT_ID_BASE`), which would share directories, labels and chains with a slot (L2).
pub fn check_job_id(id: u64) -> Result<(), String> {
    if id == 0 {
        return Err("the job payload has no numeric job id".into());
    }
    if id >= SLOT_ID_BASE {
        return Err(format!(
            "job id {id} is in the range this runner reserves for its pre-started sidecars \
             (>= {SLOT_ID_BASE}); refusing it"
        ));
    }
    Ok(())
}

/// The host and port of the payload's `git_info.repo_url` when the runner's config names them
/// (the GitLab URL or `clone_url`); `Ok(None)` when the payload has no usable URL (the clone
/// then fails on its own). Another host:port is refused (H6): the payload never decides what
/// the job's firewall opens.
pub fn clone_endpoint(
    job: &JobResponse,
    runner: &RunnerConfig,
) -> Result<Option<HostPort>, String> {
    let Some(hp) = url::Url::parse(job.git_info.repo_url.expose())
        .ok()
        .as_ref()
        .and_then(HostPort::from_url)
    else {
        return Ok(None);
    };
    let allowed = clone_hosts(runner);
    if allowed.contains(&hp) {
        return Ok(Some(hp));
    }
    let names: Vec<String> = allowed.iter().map(display).collect();
    Err(format!(
        "the job's repository URL points at {}, which is neither this runner's GitLab URL nor its \
         `clone_url` ({}); refusing to open it to the job (set `clone_url` in the runner's \
         [[runners]] entry if GitLab really serves clones there)",
        display(&hp),
        names.join(", ")
    ))
}

fn display(hp: &HostPort) -> String {
    if hp.host.contains(':') {
        format!("[{}]:{}", hp.host, hp.port)
    } else {
        format!("{}:{}", hp.host, hp.port)
    }
}

/// The job ids running on this runner, across every `[[runners]]` entry and GitLab instance.
/// Cheap to clone; clones share the set. The daemon holds one for all its entries.
#[derive(Debug, Clone, Default)]
pub struct RunningJobs(Arc<Mutex<BTreeSet<u64>>>);

/// A job id held by one running job; dropping it frees the id.
#[derive(Debug)]
pub struct RunningJob {
    set: RunningJobs,
    id: u64,
}

impl Drop for RunningJob {
    fn drop(&mut self) {
        self.set
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

impl RunningJobs {
    /// Claims `id` for one job. Directories, container names, labels, chains and journal
    /// entries of a job are keyed by its id, which is only unique within one GitLab instance; a
    /// second job with an id already running here (another entry, another instance) is refused
    /// before anything is created or deleted, so it never touches the first one's objects (H3).
    pub fn claim(&self, id: u64) -> Result<RunningJob, String> {
        check_job_id(id)?;
        let mut running = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if !running.insert(id) {
            return Err(format!(
                "a job with id {id} is already running on this runner (from another [[runners]] \
                 entry or GitLab instance); refusing to run a second one with the same id"
            ));
        }
        Ok(RunningJob {
            set: self.clone(),
            id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn runner(url: &str, clone: Option<&str>) -> RunnerConfig {
        RunnerConfig {
            url: url::Url::parse(url).unwrap(),
            clone_url: clone.map(|c| url::Url::parse(c).unwrap()),
            ..Default::default()
        }
    }

    fn job_cloning(url: &str) -> JobResponse {
        let mut j = JobResponse::default();
        j.git_info.repo_url = Secret::new(url);
        j
    }

    #[test]
    fn clone_url_must_be_gitlab_or_the_configured_clone_url() {
        let r = runner("https://gitlab.example.test/", None);
        let ok = job_cloning("https://gitlab-ci-token:t@gitlab.example.test/g/p.git");
        assert_eq!(
            clone_endpoint(&ok, &r).unwrap(),
            Some(HostPort {
                host: "gitlab.example.test".into(),
                port: 443
            })
        );
        // Same host, another port: refused, and the token never reaches the message.
        let bad = job_cloning("http://gitlab-ci-token:glcbt-secret@gitlab.example.test:2375/x.git");
        let msg = clone_endpoint(&bad, &r).unwrap_err();
        assert!(msg.contains("gitlab.example.test:2375"), "{msg}");
        assert!(!msg.contains("glcbt-secret"), "{msg}");
        let other = job_cloning("http://10.0.0.1/x.git");
        assert!(clone_endpoint(&other, &r).is_err());
        // Named by clone_url: allowed.
        let r = runner("https://gitlab.example.test/", Some("http://10.0.0.1:8080"));
        assert!(clone_endpoint(&other, &r).is_err(), "port 80 is not 8080");
        let named = job_cloning("http://10.0.0.1:8080/g/p.git");
        assert!(clone_endpoint(&named, &r).unwrap().is_some());
        // No usable URL: nothing opens, the clone fails by itself.
        assert_eq!(clone_endpoint(&job_cloning(""), &r).unwrap(), None);
    }

    #[test]
    fn instance_keys_are_stable_and_distinct() {
        let k = |u: &str| instance_key(&url::Url::parse(u).unwrap());
        assert_eq!(
            k("https://gitlab.example.test/"),
            k("https://gitlab.example.test")
        );
        assert_eq!(
            k("https://gitlab.example.test/"),
            k("https://user:pw@GITLAB.example.test/")
        );
        assert_ne!(
            k("https://gitlab.example.test/"),
            k("https://other.example.test/")
        );
        assert_ne!(
            k("https://gitlab.example.test/"),
            k("https://gitlab.example.test:8443/")
        );
        assert_ne!(k("https://h.test/a/"), k("https://h.test/b/"));
        assert_eq!(
            k("https://gitlab.example.test/").len(),
            "gitlab-".len() + 12
        );
    }

    #[test]
    fn ids_are_claimed_once() {
        let running = RunningJobs::default();
        let a = running.claim(987_654_321).expect("first claim");
        let shared = running.clone();
        assert!(
            shared
                .claim(987_654_321)
                .unwrap_err()
                .contains("already running")
        );
        // Another set (another process's pipeline in a test) is independent.
        let other = RunningJobs::default().claim(987_654_321);
        assert!(other.is_ok());
        drop(a);
        let again = running.claim(987_654_321).expect("freed on drop");
        drop(again);
        assert!(running.claim(0).is_err());
        assert!(running.claim(SLOT_ID_BASE).is_err());
    }
}
