//! `GIT_CLONE_PATH` and `[runners.custom_build_dir] enabled`: checked as gitlab-runner checks
//! them (`getCustomBuildDir`): a path is allowed only when custom build dirs are enabled and it
//! lies within the builds dir; anything else fails the job with the reason.
//!
//! Not honoured yet: an allowed path does not move the checkout (the job directories are bind
//! mounts the backend makes at fixed paths); the job gets a warning naming `CI_PROJECT_DIR`.

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
}
