//! Names, labels and the create-request discipline every object of a job shares: what
//! teardown, the label sweep and `runner cleanup` find a job's objects by.

use super::Error;
use crate::docker::{self, LABEL_DEADLINE, LABEL_JOB, LABEL_MANAGED, LABEL_ROLE, LABEL_RUNNER};
use std::collections::HashMap;
use std::time::{Duration, SystemTime};
use tokio_util::task::TaskTracker;

pub(crate) fn other(context: impl Into<String>) -> impl FnOnce(docker::Error) -> Error {
    let context = context.into();
    move |e| Error::Other {
        context,
        detail: e.to_string(),
    }
}

pub(crate) fn other_paths(context: impl Into<String>) -> impl FnOnce(crate::paths::Error) -> Error {
    let context = context.into();
    move |e| Error::Other {
        context,
        detail: e.to_string(),
    }
}

/// Runs a request that creates something (a container, volume, network, directory) on its own
/// task, tracked by `inflight`, and returns its result.
///
/// A prepare is cancelled by dropping its future, and the engine finishes a create whether
/// or not anyone reads the reply (as does blocking file work): a create dropped half-way would
/// make its object after teardown had listed what to remove (a sidecar left running, its
/// volume "in use"). On its own task the request always completes, and teardown waits for
/// `inflight` before it lists.
pub fn detached<T, F>(
    inflight: &TaskTracker,
    request: F,
) -> impl std::future::Future<Output = T> + Send + 'static
where
    T: Send + 'static,
    F: std::future::Future<Output = T> + Send + 'static,
{
    let handle = inflight.spawn(request);
    async move {
        match handle.await {
            Ok(v) => v,
            // As if the request had run inline: its panic is the caller's panic.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Only when the runtime shuts down, which drops the caller as well.
            Err(_) => std::future::pending().await,
        }
    }
}

/// Names and labels of one job's objects.
#[derive(Debug, Clone)]
pub struct Naming {
    /// Runner id (checked path- and name-safe).
    pub runner_id: String,
    /// Job id.
    pub job_id: u64,
    /// Unix time after which everything of this job is certainly stale.
    pub deadline: u64,
}

impl Naming {
    /// Names for `runner_id`/`job_id` with a deadline of now + `timeout` + the PKI margin.
    pub fn new(runner_id: &str, job_id: u64, timeout: Duration) -> Result<Self, Error> {
        crate::paths::check_runner_id(runner_id).map_err(other_paths("runner id"))?;
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let deadline = now
            .saturating_add(timeout)
            .saturating_add(crate::pki::VALIDITY_MARGIN)
            .as_secs();
        Ok(Naming {
            runner_id: runner_id.to_string(),
            job_id,
            deadline,
        })
    }

    /// `ir-<runner>-<job>-<suffix>`.
    pub fn name(&self, suffix: &str) -> String {
        format!("ir-{}-{}-{suffix}", self.runner_id, self.job_id)
    }

    /// Labels of an object with `role`, including the owning process (for `runner cleanup`).
    pub fn labels(&self, role: &str) -> HashMap<String, String> {
        let mut labels = HashMap::from([
            (LABEL_MANAGED.to_string(), "1".to_string()),
            (LABEL_RUNNER.to_string(), self.runner_id.clone()),
            (LABEL_JOB.to_string(), self.job_id.to_string()),
            (LABEL_DEADLINE.to_string(), self.deadline.to_string()),
            (LABEL_ROLE.to_string(), role.to_string()),
        ]);
        if let Some(owner) = crate::cleanup::owner::current() {
            labels.insert(docker::LABEL_OWNER.to_string(), owner.label_value());
        }
        labels
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    #[test]
    fn naming_and_labels() {
        let n = Naming::new("r1", 5, Duration::from_secs(60)).unwrap();
        assert_eq!(n.name("net"), "ir-r1-5-net");
        let l = n.labels("sidecar");
        assert_eq!(l[LABEL_JOB], "5");
        assert_eq!(l[LABEL_ROLE], "sidecar");
        assert!(l.contains_key(docker::LABEL_OWNER));
        assert!(Naming::new("a/b", 5, Duration::ZERO).is_err());
    }

    /// A caller dropped while its request is in flight (a cancelled prepare) must not drop
    /// the request: it completes, and waiting on the tracker (teardown's first step) sees it.
    #[tokio::test]
    async fn detached_request_outlives_its_dropped_caller() {
        let inflight = TaskTracker::new();
        let (open, gate) = tokio::sync::oneshot::channel::<()>();
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Arc::clone(&done);
        let caller = detached(&inflight, async move {
            let _ = gate.await;
            flag.store(true, Ordering::SeqCst);
            Ok::<_, docker::Error>("id".to_string())
        });
        drop(caller);
        assert!(!done.load(Ordering::SeqCst));
        let _ = open.send(());
        inflight.close();
        tokio::time::timeout(Duration::from_secs(10), inflight.wait())
            .await
            .expect("the tracker settles");
        assert!(done.load(Ordering::SeqCst), "the request ran to completion");
        assert_eq!(detached(&inflight, async { 7 }).await, 7);
    }
}
