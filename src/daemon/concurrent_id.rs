//! `CI_CONCURRENT_ID` and `CI_CONCURRENT_PROJECT_ID`, as gitlab-runner sets them: the smallest
//! index not used by another job running now on the same `[[runners]]` entry (and, for the
//! second, of the same project). Jobs use them to keep concurrent jobs apart, most often in
//! `GIT_CLONE_PATH: $CI_BUILDS_DIR/$CI_CONCURRENT_ID/$CI_PROJECT_PATH`. An index is held until
//! the job's teardown is over, like its concurrency slot.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

/// The indexes in use on one runner entry.
#[derive(Default)]
pub(super) struct ConcurrentIds {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    runner: BTreeSet<usize>,
    projects: HashMap<u64, BTreeSet<usize>>,
}

/// A job's two indexes; given back on drop.
pub(super) struct Lease {
    ids: Arc<ConcurrentIds>,
    project: u64,
    /// `CI_CONCURRENT_ID`.
    pub id: usize,
    /// `CI_CONCURRENT_PROJECT_ID`.
    pub project_id: usize,
}

fn smallest_free(used: &BTreeSet<usize>) -> usize {
    (0..).find(|i| !used.contains(i)).unwrap_or(used.len())
}

impl ConcurrentIds {
    /// The smallest free indexes for a job of `project`.
    pub(super) fn take(self: &Arc<Self>, project: u64) -> Lease {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let id = smallest_free(&s.runner);
        s.runner.insert(id);
        let in_project = s.projects.entry(project).or_default();
        let project_id = smallest_free(in_project);
        in_project.insert(project_id);
        Lease {
            ids: self.clone(),
            project,
            id,
            project_id,
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut s = self.ids.state.lock().unwrap_or_else(|e| e.into_inner());
        s.runner.remove(&self.id);
        if let Some(p) = s.projects.get_mut(&self.project) {
            p.remove(&self.project_id);
            if p.is_empty() {
                s.projects.remove(&self.project);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smallest_free_index_per_runner_and_per_project() {
        let ids = Arc::new(ConcurrentIds::default());
        let a = ids.take(7);
        let b = ids.take(7);
        let c = ids.take(8);
        assert_eq!((a.id, a.project_id), (0, 0));
        assert_eq!((b.id, b.project_id), (1, 1));
        assert_eq!((c.id, c.project_id), (2, 0));
        drop(a);
        let d = ids.take(7);
        assert_eq!((d.id, d.project_id), (0, 0), "freed indexes are reused");
        drop((b, c, d));
        let e = ids.take(9);
        assert_eq!((e.id, e.project_id), (0, 0));
        assert!(ids.state.lock().expect("lock").projects.len() == 1);
    }
}
