//! `GIT_CLONE_PATH` on a daemon that resolves bind sources in the host's file system (the
//! shared-socket backend): the clone path becomes a *relative* symlink below `builds_dir` to the
//! job's project directory, so `docker run -v $CI_PROJECT_DIR:/app` on that daemon finds the
//! checkout. Made and removed through directory handles from `builds_dir` down (no component
//! followed), so a link a job planted on the way is an error, never a redirection.

use super::{Dir, Error, blocking};
use nix::errno::Errno;
use std::ffi::OsStr;
use std::path::{Component, Path, PathBuf};

/// The text of a relative link at `rel` (below `builds_dir`) that leads to `builds_dir/target`:
/// one `..` per directory between them.
pub fn relative_target(rel: &Path, target: &OsStr) -> PathBuf {
    let depth = rel.components().count().saturating_sub(1);
    let mut t = PathBuf::new();
    for _ in 0..depth {
        t.push("..");
    }
    t.push(target);
    t
}

/// `rel` as plain names only (no `.`, `..`, root), or `None`.
fn plain(rel: &Path) -> Option<&Path> {
    (!rel.as_os_str().is_empty() && rel.components().all(|c| matches!(c, Component::Normal(_))))
        .then_some(rel)
}

/// Makes `builds_dir/rel` a relative symlink to `builds_dir/target` (a directory name one step
/// below `builds_dir`), creating the directories on the way (0755). Fails with `EEXIST` when
/// something is already there: another job on this host uses the same clone path.
pub async fn link_clone_path(builds_dir: &Path, rel: &Path, target: &OsStr) -> Result<(), Error> {
    let shown = builds_dir.join(rel);
    let Some(rel) = plain(rel).map(Path::to_path_buf) else {
        return Err(Error::NotAbsolute(shown));
    };
    let (b, target) = (builds_dir.to_path_buf(), target.to_os_string());
    blocking(move || {
        let root = Dir::open_trusted(&b)?;
        if let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) {
            root.create_dirs(parent, 0o755)?;
        }
        root.symlink(&relative_target(&rel, &target), &rel)
    })
    .await
}

/// Removes the link made by [`link_clone_path`] when it is still a symlink with the text it was
/// made with, then each directory on the way that is empty now (never `builds_dir`). Returns
/// whether the link was there.
pub async fn unlink_clone_path(
    builds_dir: &Path,
    rel: &Path,
    target: &OsStr,
) -> Result<bool, Error> {
    let Some(rel) = plain(rel).map(Path::to_path_buf) else {
        return Ok(false);
    };
    let (b, target) = (builds_dir.to_path_buf(), target.to_os_string());
    blocking(move || {
        let root = Dir::open_trusted(&b)?;
        match root.readlink(&rel) {
            Ok(t) if t == relative_target(&rel, &target) => root.unlink(&rel)?,
            // Gone, or not ours any more (a job replaced it): left as it is.
            Ok(_) => return Ok(false),
            Err(e) if matches!(e.errno(), Some(Errno::ENOENT | Errno::EINVAL)) => {
                return Ok(false);
            }
            Err(e) => return Err(e),
        }
        let mut dir = rel.parent();
        while let Some(d) = dir.filter(|d| !d.as_os_str().is_empty()) {
            if !rmdir_empty(&root, d) {
                break;
            }
            dir = d.parent();
        }
        Ok(true)
    })
    .await
}

/// Removes the directory `rel` below `root` when it is empty; false otherwise (not empty, not
/// a directory, or anything else: the walk up stops there).
fn rmdir_empty(root: &Dir, rel: &Path) -> bool {
    let Some(name) = rel.file_name() else {
        return false;
    };
    let parent = match rel.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(p) => root.open_dir(p),
        None => root.try_clone(),
    };
    let Ok(parent) = parent else {
        return false;
    };
    nix::unistd::unlinkat(parent.fd(), name, nix::unistd::UnlinkatFlags::RemoveDir).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_targets_climb_to_builds_dir() {
        let t = OsStr::new("gitlab-job-7");
        assert_eq!(
            relative_target(Path::new("p"), t),
            PathBuf::from("gitlab-job-7")
        );
        assert_eq!(
            relative_target(Path::new("go/src/example.com/p"), t),
            PathBuf::from("../../../gitlab-job-7")
        );
    }

    #[tokio::test]
    async fn link_resolves_to_the_project_dir_and_goes_away_with_its_dirs() {
        let b = tempfile::tempdir().unwrap();
        std::fs::create_dir(b.path().join("gitlab-job-7")).unwrap();
        std::fs::write(b.path().join("gitlab-job-7/f"), "x").unwrap();
        let rel = Path::new("go/src/p");
        let t = OsStr::new("gitlab-job-7");
        link_clone_path(b.path(), rel, t).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(b.path().join("go/src/p/f")).unwrap(),
            "x"
        );
        // A second job with the same clone path is refused, not redirected.
        let e = link_clone_path(b.path(), rel, OsStr::new("gitlab-job-8"))
            .await
            .unwrap_err();
        assert_eq!(e.errno(), Some(Errno::EEXIST), "{e}");
        // Not removed for another target.
        assert!(
            !unlink_clone_path(b.path(), rel, OsStr::new("gitlab-job-8"))
                .await
                .unwrap()
        );
        assert!(unlink_clone_path(b.path(), rel, t).await.unwrap());
        assert!(!b.path().join("go").exists());
        assert!(b.path().join("gitlab-job-7/f").exists());
        // A link on the way is never followed.
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), b.path().join("go")).unwrap();
        assert!(link_clone_path(b.path(), rel, t).await.is_err());
        assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none());
    }
}
