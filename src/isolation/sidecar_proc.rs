//! A sidecar's first process as the host sees it, for the work the runner does inside a
//! sidecar without asking the engine: remounting a rootless sidecar's `/sys`
//! (`rootless::open_sidecar_sysfs`) and linking a job's directories into a pre-started
//! sidecar's root file system (`sidecar_links`).
//!
//! The engine reports a host pid. The runner opens `/proc/<pid>` once and does everything
//! else relative to that handle: once the process has exited, the handle answers nothing
//! (the kernel ties it to the process, not to the number), so a pid reused by another
//! process in between fails the identity check instead of passing it. The check is the
//! process's cgroup path, which names the container on every cgroup driver; a runner in
//! another pid namespace (a container without `--pid host`) sees some other process under
//! that number, or none, and gets an error saying so.

use crate::paths::beneath::Dir;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::Mode;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

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
}
