//! A sidecar's first process as the host sees it, for the work the runner does inside a
//! sidecar without asking the engine: remounting a rootless sidecar's `/sys`
//! (`rootless::open_sidecar_sysfs`) and linking a job's directories into a pre-started
//! sidecar's root file system ([`link_job_dirs`]).
//!
//! The engine reports a host pid. The runner opens `/proc/<pid>` once and does everything
//! else relative to that handle: once the process has exited, the handle answers nothing
//! (the kernel ties it to the process, not to the number), so a pid reused by another
//! process in between fails the identity check instead of passing it. The check is the
//! process's cgroup path, which names the container on every cgroup driver; a runner in
//! another pid namespace (a container without `--pid host`) sees some other process under
//! that number, or none, and gets an error saying so.

use crate::paths::beneath::Dir;
use crate::paths::{JobPaths, clone_link};
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::Mode;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

/// `/proc/<pid>` of a container's first process, checked to be that container's.
pub(super) struct SidecarProc {
    dir: OwnedFd,
    pid: u32,
}

impl SidecarProc {
    /// Opens `/proc/<pid>` and checks that the process belongs to container `id`.
    pub(super) fn open(pid: u32, id: &str) -> Result<SidecarProc, String> {
        let path = format!("/proc/{pid}");
        let dir = openat(
            nix::fcntl::AT_FDCWD,
            path.as_str(),
            OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| format!("open {path}: {e}"))?;
        let cgroup = openat(
            dir.as_fd(),
            "cgroup",
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .ok()
        .and_then(|fd| std::io::read_to_string(std::fs::File::from(fd)).ok())
        .unwrap_or_default();
        if id.is_empty() || !cgroup.contains(id) {
            return Err(format!(
                "process {pid} is not the sidecar's (the runner must see the host's processes: \
                 run it on the host, or with the host's pid namespace)"
            ));
        }
        Ok(SidecarProc { dir, pid })
    }

    /// The process's mount namespace (`ns/mnt`), to enter with `setns`.
    pub(super) fn mount_ns(&self) -> Result<std::fs::File, String> {
        openat(
            self.dir.as_fd(),
            "ns/mnt",
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map(std::fs::File::from)
        .map_err(|e| format!("open /proc/{}/ns/mnt: {e}", self.pid))
    }

    /// The process's root directory (`root`): the container's root file system as its
    /// processes see it. Everything below it is reached through the returned handle, which
    /// follows no link and never leaves it.
    pub(super) fn root(&self) -> Result<Dir, String> {
        openat(
            self.dir.as_fd(),
            "root",
            OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map(|fd| Dir::from_fd(fd, PathBuf::from(format!("/proc/{}/root", self.pid))))
        .map_err(|e| format!("open /proc/{}/root: {e}", self.pid))
    }
}

/// Makes, in the sidecar whose root is `root`, the job's directories (`links`, at the job's
/// paths below `builds`) links to the slot's mounted ones (`real`, siblings in `builds`), and
/// with `clone_path` (`GIT_CLONE_PATH`, below `builds`) one more link, with the directories on
/// its way, to the slot's project directory. The same links a tar through the engine made
/// before, without the engine: ~1 ms instead of the 0.02–0.05 s a `put_archive` took (a
/// process of the engine's per archive, the container's volumes mounted for it), which build
/// scripts waited for.
///
/// `builds` is reached from the root without following any link: a sidecar whose path to
/// it has one (an image with `/tmp` a link, say) gets an error, and the caller falls back to
/// the engine. What the links point to is never opened.
pub(super) fn link_job_dirs(
    root: &Dir,
    builds: &Path,
    links: &JobPaths,
    real: &JobPaths,
    clone_path: Option<&Path>,
) -> Result<(), String> {
    let rel = builds
        .strip_prefix("/")
        .map_err(|_| format!("{} is not an absolute path", builds.display()))?;
    let dir = root.open_dir(rel).map_err(|e| e.to_string())?;
    for (link, target) in [
        (&links.project_dir, &real.project_dir),
        (&links.tmp_dir, &real.tmp_dir),
    ] {
        let (Some(name), Some(target)) = (link.file_name(), target.file_name()) else {
            return Err(format!("{} has no file name", link.display()));
        };
        dir.symlink(Path::new(target), Path::new(name))
            .map_err(|e| e.to_string())?;
    }
    if let Some(clone_path) = clone_path {
        let rel = clone_path
            .strip_prefix(builds)
            .map_err(|_| format!("{} is not below {}", clone_path.display(), builds.display()))?;
        let (Some(leaf), Some(target)) = (rel.file_name(), real.project_dir.file_name()) else {
            return Err(format!("{} has no file name", clone_path.display()));
        };
        let parent = rel.parent().unwrap_or(Path::new(""));
        let at = dir.create_dirs(parent, 0o755).map_err(|e| e.to_string())?;
        at.symlink(&clone_link::relative_target(rel, target), Path::new(leaf))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_of_another_container_is_refused() {
        // This test's own process: its cgroup never names a made-up container id.
        let err = SidecarProc::open(std::process::id(), "0123456789abcdef-not-a-container")
            .err()
            .expect("refused");
        assert!(err.contains("is not the sidecar's"), "{err}");
        assert!(SidecarProc::open(std::process::id(), "").is_err());
    }

    #[test]
    fn links_are_made_below_the_root_and_never_through_a_link() {
        let t = tempfile::tempdir().expect("tempdir");
        let builds = Path::new("/tmp/ir-builds");
        std::fs::create_dir_all(t.path().join("tmp/ir-builds")).expect("mkdir");
        let root = Dir::open_trusted(t.path()).expect("root");
        let links = crate::paths::job_paths(builds, crate::paths::JobId::new(7)).expect("paths");
        let real =
            crate::paths::job_paths(builds, crate::paths::JobId::new(4_611_686_018_427_387_905))
                .expect("paths");
        link_job_dirs(
            &root,
            builds,
            &links,
            &real,
            Some(&builds.join("group/project")),
        )
        .expect("linked");
        let inside = t.path().join("tmp/ir-builds");
        assert_eq!(
            std::fs::read_link(inside.join("gitlab-job-7")).expect("link"),
            PathBuf::from("gitlab-job-4611686018427387905")
        );
        assert_eq!(
            std::fs::read_link(inside.join("gitlab-job-7.tmp")).expect("link"),
            PathBuf::from("gitlab-job-4611686018427387905.tmp")
        );
        assert_eq!(
            std::fs::read_link(inside.join("group/project")).expect("link"),
            PathBuf::from("../gitlab-job-4611686018427387905")
        );
        // A link on the way to `builds` (the sidecar's `/tmp` swapped for a link out of its
        // root) is refused, not followed.
        let other = tempfile::tempdir().expect("tempdir");
        let swapped = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(other.path().join("ir-builds")).expect("mkdir");
        std::os::unix::fs::symlink(other.path(), swapped.path().join("tmp")).expect("symlink");
        let root = Dir::open_trusted(swapped.path()).expect("root");
        assert!(link_job_dirs(&root, builds, &links, &real, None).is_err());
        assert_eq!(
            std::fs::read_dir(other.path().join("ir-builds"))
                .expect("read")
                .count(),
            0,
            "nothing was made through the link"
        );
    }
}
