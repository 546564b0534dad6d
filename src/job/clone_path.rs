//! `GIT_CLONE_PATH` and `[runners.custom_build_dir] enabled`: checked as gitlab-runner checks
//! them (`getCustomBuildDir`): a path is allowed only when custom build dirs are enabled and it
//! lies within the builds dir; anything else fails the job with the reason.
//!
//! An allowed path becomes the job's `CI_PROJECT_DIR`: the backend binds the job's project
//! directory there in every container and makes the same path resolve in the job's daemon
//! (see `EnvironmentSpec::clone_path`). The directory itself stays the job's own
//! `gitlab-job-<id>`, so two jobs with the same `GIT_CLONE_PATH` never share a checkout (on the
//! shared socket, where the host's file system is common, the second one is refused). Paths
//! inside the runner's own `gitlab-job-*` entries are refused: they are the runner's names.

use std::path::{Component, Path, PathBuf};

/// Why a `GIT_CLONE_PATH` is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClonePathError {
    /// `[runners.custom_build_dir] enabled = false`.
    #[error("setting GIT_CLONE_PATH is not allowed, enable `custom_build_dir` feature")]
    Disabled,
    /// Relative, or outside the builds dir (after `.`/`..` are resolved), or the builds dir
    /// itself.
    #[error("the GIT_CLONE_PATH={path:?} has to be within {builds:?}")]
    Outside {
        /// The path asked for.
        path: String,
        /// The builds dir as jobs see it.
        builds: String,
    },
    /// Inside one of the runner's own `gitlab-job-*` entries (another job's, a slot's, or
    /// below this job's own directory).
    #[error(
        "the GIT_CLONE_PATH={path:?} is inside {entry:?}, a directory this runner manages; \
         choose a path beside it in the builds dir"
    )]
    Reserved {
        /// The path asked for.
        path: String,
        /// The runner's entry it falls into.
        entry: String,
    },
}

/// The prefix of the runner's own entries in the builds dir.
const RUNNER_ENTRY_PREFIX: &str = "gitlab-job-";

/// `GIT_CLONE_PATH` of a job, expanded with the job's variables and `CI_BUILDS_DIR`, checked:
/// `Ok(None)` when unset or the usual `<builds_dir>/gitlab-job-<id>`, `Ok(Some(path))` for
/// another allowed path.
pub fn resolve(
    vars: &super::vars::Variables,
    builds_dir: &Path,
    job_id: u64,
    enabled: bool,
) -> Result<Option<PathBuf>, ClonePathError> {
    let Some(want) = vars.get("GIT_CLONE_PATH").filter(|v| !v.trim().is_empty()) else {
        return Ok(None);
    };
    let mut v = vars.clone();
    v.push("CI_BUILDS_DIR", builds_dir.to_string_lossy());
    let value = v.expand(want);
    let path = check(&value, builds_dir, enabled)?;
    let usual = builds_dir.join(format!("{RUNNER_ENTRY_PREFIX}{job_id}"));
    if path == usual {
        return Ok(None);
    }
    let first = path
        .strip_prefix(builds_dir)
        .ok()
        .and_then(|r| r.components().next())
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .unwrap_or_default();
    if first.starts_with(RUNNER_ENTRY_PREFIX) {
        return Err(ClonePathError::Reserved {
            path: value,
            entry: builds_dir.join(first).display().to_string(),
        });
    }
    Ok(Some(path))
}

/// Checks `value` (already expanded) against `builds_dir`; returns the clean path.
pub fn check(value: &str, builds_dir: &Path, enabled: bool) -> Result<PathBuf, ClonePathError> {
    if !enabled {
        return Err(ClonePathError::Disabled);
    }
    let outside = || ClonePathError::Outside {
        path: value.to_string(),
        builds: builds_dir.display().to_string(),
    };
    let p = Path::new(value.trim());
    if !p.is_absolute() {
        return Err(outside());
    }
    // Lexical, like Go's path.Clean + filepath.Rel: nothing on disk is consulted.
    let mut clean = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::Normal(n) => clean.push(n),
            Component::ParentDir => {
                clean.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    match clean.strip_prefix(builds_dir) {
        Ok(rel) if !rel.as_os_str().is_empty() => Ok(clean),
        _ => Err(outside()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inside_only_and_only_when_enabled() {
        let b = Path::new("/builds");
        assert_eq!(
            check("/builds/go/src/example.com/p", b, true),
            Ok(PathBuf::from("/builds/go/src/example.com/p"))
        );
        assert_eq!(
            check("/builds/a/../b/./c", b, true),
            Ok(PathBuf::from("/builds/b/c"))
        );
        assert_eq!(check("/builds/p", b, false), Err(ClonePathError::Disabled));
        for bad in [
            "/builds/../etc",
            "/builds",
            "/builds/",
            "/builds-other/p",
            "relative/p",
            "/etc/passwd",
            "/builds/a/../../root",
        ] {
            assert!(
                matches!(check(bad, b, true), Err(ClonePathError::Outside { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn resolve_expands_and_keeps_the_runner_entries() {
        let b = Path::new("/builds");
        let mut v = crate::job::vars::Variables::new();
        assert_eq!(resolve(&v, b, 7, true), Ok(None));
        v.push("CI_PROJECT_PATH", "g/p");
        v.push("GIT_CLONE_PATH", "$CI_BUILDS_DIR/go/src/$CI_PROJECT_PATH");
        assert_eq!(
            resolve(&v, b, 7, true),
            Ok(Some(PathBuf::from("/builds/go/src/g/p")))
        );
        v.push("GIT_CLONE_PATH", "$CI_BUILDS_DIR/gitlab-job-7");
        assert_eq!(resolve(&v, b, 7, true), Ok(None));
        for bad in [
            "/builds/gitlab-job-8",
            "/builds/gitlab-job-7/sub",
            "/builds/gitlab-job-7.tmp",
        ] {
            v.push("GIT_CLONE_PATH", bad);
            assert!(
                matches!(
                    resolve(&v, b, 7, true),
                    Err(ClonePathError::Reserved { .. })
                ),
                "{bad}"
            );
        }
        v.push("GIT_CLONE_PATH", "$CI_BUILDS_DIR/../etc");
        assert!(matches!(
            resolve(&v, b, 7, true),
            Err(ClonePathError::Outside { .. })
        ));
    }
}
