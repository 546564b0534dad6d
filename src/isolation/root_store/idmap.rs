//! Idmapped mounts (Linux 5.12+, btrfs since 5.15): a rootless job's snapshot shown with the
//! golden's uid block replaced by the job's own, in constant time.
//!
//! A golden made for the rootless profile holds files owned by the golden block's host uids.
//! Each job's daemon runs as its own block (two jobs never share a host uid). Changing the
//! owners of a snapshot (`chown -R`) costs time per file; an idmapped mount of the snapshot
//! shows (and writes) them as the job's uids instead: on disk they stay the golden block's,
//! which no process runs as outside a golden build. The mount is made by `open_tree`
//! (a detached clone of the snapshot), `mount_setattr(MOUNT_ATTR_IDMAP)` with a user namespace
//! carrying the mapping, and `move_mount` onto `mnt/<name>`, which Docker then binds.

use super::StoreError;
use nix::libc;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;

/// `count` ids from `from` (on disk) shown as ids from `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdMap {
    /// First id on disk (the golden's block).
    pub from: u32,
    /// First id as the mount shows it (the job's block).
    pub to: u32,
    /// How many ids.
    pub count: u32,
}

const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x0000_0004;

/// `struct mount_attr` of linux/mount.h.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn err(context: &str) -> StoreError {
    StoreError::Op {
        context: context.to_string(),
        detail: std::io::Error::last_os_error().to_string(),
    }
}

fn cpath(p: &Path) -> Result<CString, StoreError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| StoreError::Op {
        context: "name a mount path".to_string(),
        detail: format!("{} contains a NUL byte", p.display()),
    })
}

/// A user namespace whose uid and gid maps are `map` (inner = `from`, outer = `to`): made by
/// a short-lived child that unshares it; its `ns/user` stays usable after the child is gone.
fn userns_with(map: IdMap) -> Result<OwnedFd, StoreError> {
    let mut cmd = std::process::Command::new("sleep");
    cmd.arg("30")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: runs in the forked child before exec; unshare is async-signal-safe and touches
    // no memory of the parent. `spawn` returns only after the exec, so the namespace exists.
    unsafe {
        cmd.pre_exec(|| {
            if libc::unshare(libc::CLONE_NEWUSER) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let mut child = cmd.spawn().map_err(|e| {
        StoreError::Unavailable(format!(
            "cannot make a user namespace for an idmapped mount ({e}); user namespaces must be \
             enabled (the rootless profile needs them too)"
        ))
    })?;
    let pid = child.id();
    let line = format!("{} {} {}\n", map.from, map.to, map.count);
    let result = std::fs::write(format!("/proc/{pid}/uid_map"), &line)
        .and_then(|()| std::fs::write(format!("/proc/{pid}/setgroups"), "deny"))
        .and_then(|()| std::fs::write(format!("/proc/{pid}/gid_map"), &line))
        .and_then(|()| std::fs::File::open(format!("/proc/{pid}/ns/user")))
        .map(OwnedFd::from)
        .map_err(|e| StoreError::Op {
            context: "write the id map of an idmapped mount".to_string(),
            detail: e.to_string(),
        });
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// Mounts `src` at `dst` (an empty directory) with `map` applied.
pub fn mount_idmapped(src: &Path, dst: &Path, map: IdMap) -> Result<(), StoreError> {
    let ns = userns_with(map)?;
    let (src_c, dst_c, empty) = (cpath(src)?, cpath(dst)?, c"");
    // SAFETY: valid NUL-terminated path; the returned fd is owned below.
    let tree = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            src_c.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    };
    if tree < 0 {
        return Err(err(&format!("clone the mount of {}", src.display())));
    }
    // SAFETY: open_tree returned a new descriptor that nothing else owns.
    let tree = unsafe { OwnedFd::from_raw_fd(tree as i32) };
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_IDMAP,
        attr_clr: 0,
        propagation: 0,
        userns_fd: ns.as_raw_fd() as u64,
    };
    // SAFETY: live fd, empty path with AT_EMPTY_PATH, a live struct of the size passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r != 0 {
        return Err(err(&format!(
            "idmap the mount of {} (the file system must support idmapped mounts)",
            src.display()
        )));
    }
    // SAFETY: live fd, valid NUL-terminated paths.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            dst_c.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r != 0 {
        return Err(err(&format!("mount at {}", dst.display())));
    }
    Ok(())
}

/// Unmounts `dst` (detached: a sidecar's namespace that still holds a reference keeps it
/// until it is gone, and nothing new can reach it by the path).
pub fn unmount(dst: &Path) -> Result<(), StoreError> {
    nix::mount::umount2(dst, nix::mount::MntFlags::MNT_DETACH).map_err(|e| StoreError::Op {
        context: format!("unmount {}", dst.display()),
        detail: e.to_string(),
    })
}
