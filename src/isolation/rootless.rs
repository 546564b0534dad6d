//! The host side of the `rootless` profile: each sidecar's own block of host uids, and the job
//! directories opened to the inner daemon's root by ACL.
//!
//! A rootless sidecar's daemon runs as the first uid of its block, and its user namespace maps
//! inner uid 0 to that uid and inner uids 1..65535 to the rest of the block. Blocks are
//! `ROOTLESS_UID_BLOCK` ids from `rootless_uid_base`, handed out lowest-free-first to the
//! sidecars alive in this process (jobs and warm slots) and given back when the sidecar's state
//! is dropped, after its teardown; a warm data root's block is chosen once, when its volume is
//! made, and recorded on the volume (`data_root.rs`), so its files keep their owners from one
//! job to the next. Two concurrent jobs therefore never share a host uid, and a
//! job that escapes its inner daemon is an unprivileged uid that owns nothing of another job.
//! After a crash the start-up reaper removes every sidecar of the runner before jobs run, so an
//! empty table at start is accurate; files left by old uids are removed by root as usual.

use super::Error;
use crate::config::{ROOTLESS_UID_BLOCK, ROOTLESS_UID_BLOCKS, ROOTLESS_WARM_BLOCKS};
use std::collections::BTreeSet;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;
use std::sync::Mutex;

/// First uids of the blocks in use in this process (several runners may share it, each with
/// its own base: overlap is checked on the uids, not on block numbers).
static TAKEN: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

/// A block of host uids held by one sidecar; given back when dropped.
#[derive(Debug)]
pub struct UidBlock {
    /// The daemon's uid (inner root).
    pub uid: u32,
    /// Whether the block is in this process's table (given back on drop).
    in_table: bool,
}

impl UidBlock {
    /// The lowest free block from `base`.
    pub fn take(base: u32) -> Result<UidBlock, Error> {
        let mut taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
        for n in 0..ROOTLESS_UID_BLOCKS {
            let Some(uid) = n
                .checked_mul(ROOTLESS_UID_BLOCK)
                .and_then(|o| base.checked_add(o))
                .filter(|u| u.checked_add(ROOTLESS_UID_BLOCK).is_some())
            else {
                break;
            };
            if !overlaps(&taken, uid) {
                taken.insert(uid);
                return Ok(UidBlock {
                    uid,
                    in_table: true,
                });
            }
        }
        Err(Error::Other {
            context: "allocate host uids for a rootless sidecar".to_string(),
            detail: format!(
                "all {ROOTLESS_UID_BLOCKS} blocks from rootless_uid_base = {base} are in use"
            ),
        })
    }

    /// The block recorded on warm data root `volume` (its `uid` label, chosen by
    /// [`choose_warm_uid`] when the volume was made), so the root's files keep their owners
    /// from one job to the next. Fails when the uid is not a warm block of `base`, or when a
    /// live sidecar of this process holds it (only possible when another process handed out
    /// the same block: one runner process per base and host).
    pub fn take_warm(base: u32, uid: u32, volume: &str) -> Result<UidBlock, Error> {
        let refuse = |detail: String| Error::Other {
            context: "allocate host uids for a rootless sidecar".to_string(),
            detail,
        };
        if !is_warm_uid(base, uid) {
            return Err(refuse(format!(
                "warm data root {volume} records uid {uid}, which is not a warm block of \
                 rootless_uid_base = {base}"
            )));
        }
        let mut taken = TAKEN.lock().unwrap_or_else(|e| e.into_inner());
        if overlaps(&taken, uid) {
            return Err(refuse(format!(
                "the uid block {uid} of warm data root {volume} is held by another live \
                 sidecar (another runner process with the same rootless_uid_base?); retry \
                 the job"
            )));
        }
        taken.insert(uid);
        Ok(UidBlock {
            uid,
            in_table: true,
        })
    }

    /// The golden block of the root store (`golden.rs`): outside the table, since the
    /// daemons that run under it only load the admin's preload images, never a job.
    pub fn outside_table(uid: u32) -> UidBlock {
        UidBlock {
            uid,
            in_table: false,
        }
    }

    /// The subordinate ids: the rest of the block (`start:count`), inner uids 1..=65535.
    pub fn subids(&self) -> String {
        format!("{}:{}", self.uid + 1, ROOTLESS_UID_BLOCK - 1)
    }

    /// The sidecar entrypoint's variables that select the rootless start.
    pub fn env(&self) -> Vec<String> {
        vec![
            format!("IR_ROOTLESS_UID={}", self.uid),
            format!("IR_ROOTLESS_SUBIDS={}", self.subids()),
        ]
    }
}

/// Whether the block starting at `uid` shares an id with a block starting at one of `starts`.
fn overlaps(starts: &BTreeSet<u32>, uid: u32) -> bool {
    starts
        .range(uid.saturating_sub(ROOTLESS_UID_BLOCK - 1)..uid.saturating_add(ROOTLESS_UID_BLOCK))
        .next()
        .is_some()
}

/// The first uid of warm block `n` (`0..ROOTLESS_WARM_BLOCKS`) from `base`, if it fits below
/// 2^32 with its whole block.
fn warm_block_uid(base: u32, n: u32) -> Option<u32> {
    ROOTLESS_UID_BLOCKS
        .checked_add(n)?
        .checked_mul(ROOTLESS_UID_BLOCK)
        .and_then(|o| base.checked_add(o))
        .filter(|u| u.checked_add(ROOTLESS_UID_BLOCK).is_some())
}

/// Whether `uid` starts one of the warm blocks of `base` (a label read back from a volume is
/// checked with this before a daemon runs under it: a `rootless_uid_base` changed since the
/// volume was made leaves its files owned by uids no longer ours to hand out).
pub fn is_warm_uid(base: u32, uid: u32) -> bool {
    let Some(offset) = uid.checked_sub(base) else {
        return false;
    };
    offset % ROOTLESS_UID_BLOCK == 0
        && (ROOTLESS_UID_BLOCKS..ROOTLESS_UID_BLOCKS + ROOTLESS_WARM_BLOCKS)
            .contains(&(offset / ROOTLESS_UID_BLOCK))
        && uid.checked_add(ROOTLESS_UID_BLOCK).is_some()
}

/// The block for a warm data root about to be made: the lowest warm block of `base` that
/// shares no id with `recorded` (the blocks on the labels of every warm volume of the engine,
/// whatever runner made it) nor with a live sidecar of this process. The caller records it on
/// the volume, and makes sure no two of its calls interleave with the volume's create.
pub fn choose_warm_uid(base: u32, recorded: &[u32]) -> Result<u32, Error> {
    let mut held: BTreeSet<u32> = recorded.iter().copied().collect();
    held.extend(TAKEN.lock().unwrap_or_else(|e| e.into_inner()).iter());
    (0..ROOTLESS_WARM_BLOCKS)
        .map_while(|n| warm_block_uid(base, n))
        .find(|&uid| !overlaps(&held, uid))
        .ok_or_else(|| Error::Other {
            context: "allocate host uids for a warm data root".to_string(),
            detail: format!(
                "all {ROOTLESS_WARM_BLOCKS} warm blocks from rootless_uid_base = {base} are held \
                 by warm volumes (`runner cleanup` removes expired ones)"
            ),
        })
}

impl Drop for UidBlock {
    fn drop(&mut self) {
        if !self.in_table {
            return;
        }
        TAKEN
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.uid);
    }
}

/// Remounts the `/sys` of rootless sidecar `id` read-write, from the host, while its entrypoint
/// waits for it (`IR_ROOTLESS_SYSFS=rw`, see `profile.rs`).
///
/// Docker mounts `/sys` read-only in every unprivileged container, and the kernel keeps a
/// read-only sysfs locked read-only in every user namespace made below it: rootlesskit can then
/// only mount the daemon's sysfs read-only, and crun (the inner runtime, C where runc is Go:
/// ~150 ms less per inner container) falls back to bind-mounting the daemon's `/sys` into each
/// container, showing it the daemon's interfaces instead of its own. A read-write sysfs is
/// what every rootless daemon on a host has: its files belong to the host's root, and no uid
/// of the sidecar (nor of its user namespaces) may write them.
///
/// The sidecar was made by the runner a moment ago and runs only our entrypoint, which waits
/// for this before it starts anything (so no job can have touched the container).
pub async fn open_sidecar_sysfs(docker: &crate::docker::Docker, id: &str) -> Result<(), Error> {
    let Some(pid) = docker
        .container_pid(id)
        .await
        .map_err(|e| sysfs_error(e.to_string()))?
    else {
        // Exited already: the wait for its daemon reports that, with the sidecar's log.
        tracing::debug!(container = %id, "sidecar not running; /sys left as it is");
        return Ok(());
    };
    let id = id.to_string();
    tokio::task::spawn_blocking(move || remount_sysfs_rw(pid, &id))
        .await
        .map_err(|e| sysfs_error(e.to_string()))?
}

/// Whether this process may remount a sidecar's `/sys` ([`open_sidecar_sysfs`]): root with
/// CAP_SYS_ADMIN, as a runner runs. A `runner exec` by an ordinary user cannot; its rootless
/// sidecars then keep the read-only `/sys` and runc (inner containers start slower, inner
/// `--privileged` is refused with the hint), which it is told once. Read once per process.
pub fn can_open_sysfs() -> bool {
    static CAN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CAN.get_or_init(|| {
        let can = may_open_sysfs();
        if !can {
            tracing::warn!(
                "not root with CAP_SYS_ADMIN: rootless sidecars keep Docker's read-only /sys, so \
                 their daemons run inner containers with runc instead of crun (slower to start) \
                 and refuse inner --privileged (docs/sidecar-profiles.md, \"Inner runtime\")"
            );
        }
        can
    })
}

/// [`can_open_sysfs`] without the warning: root with CAP_SYS_ADMIN in its effective set (what
/// `runner doctor` reports).
pub fn may_open_sysfs() -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    let admin = own_caps("CapEff").is_some_and(|caps| caps & (1 << CAP_SYS_ADMIN) != 0);
    nix::unistd::geteuid().is_root() && admin
}

/// One capability set of this process (`set`: `CapEff`, `CapBnd`, … as `/proc/self/status`
/// names them), as a bit mask; `None` when it cannot be read.
pub fn own_caps(set: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(set)?.strip_prefix(':'))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// Enters the mount namespace of process `pid` (container `id`'s first process) on a thread of
/// its own and remounts `/sys` there read-write (mount and superblock), keeping nosuid, nodev
/// and noexec. Blocking.
fn remount_sysfs_rw(pid: u32, id: &str) -> Result<(), Error> {
    use nix::mount::{MsFlags, mount};
    use nix::sched::{CloneFlags, setns, unshare};
    // Checked to be the sidecar's first process, the namespace opened through the same handle
    // (`sidecar_proc`: a pid reused in between fails the check, it cannot pass it).
    let ns = super::sidecar_proc::SidecarProc::open(pid, id)
        .and_then(|p| p.mount_ns())
        .map_err(sysfs_error)?;
    // Entering a mount namespace moves the thread's root and working directory into it. A
    // thread of its own, with its own copy of those (CLONE_FS), keeps every other thread of
    // the runner where it is; it ends right after, so nothing else ever runs in there.
    let worker = std::thread::Builder::new()
        .name("sidecar-sysfs".to_string())
        .spawn(move || -> Result<(), String> {
            unshare(CloneFlags::CLONE_FS).map_err(|e| format!("unshare(CLONE_FS): {e}"))?;
            setns(&ns, CloneFlags::CLONE_NEWNS)
                .map_err(|e| format!("enter the sidecar's mount namespace: {e}"))?;
            let fs = nix::sys::statfs::statfs("/sys").map_err(|e| format!("statfs /sys: {e}"))?;
            if fs.filesystem_type() != nix::sys::statfs::SYSFS_MAGIC {
                return Err("the sidecar's /sys is not a sysfs mount".to_string());
            }
            mount(
                None::<&str>,
                "/sys",
                None::<&str>,
                MsFlags::MS_REMOUNT
                    | MsFlags::MS_NOSUID
                    | MsFlags::MS_NODEV
                    | MsFlags::MS_NOEXEC
                    | MsFlags::MS_RELATIME,
                None::<&str>,
            )
            .map_err(|e| format!("remount /sys read-write: {e} (the runner must run as root)"))
        })
        .map_err(|e| sysfs_error(format!("start a thread: {e}")))?;
    worker
        .join()
        .map_err(|_| sysfs_error("the thread panicked".to_string()))?
        .map_err(sysfs_error)
}

fn sysfs_error(detail: String) -> Error {
    Error::Other {
        context: "open the rootless sidecar's /sys to its daemon".to_string(),
        detail,
    }
}

/// Gives `uid` (a rootless sidecar's inner root) read, write and search access to a job
/// directory that the runner just made, and the same on everything later created in it (a
/// default ACL), so inner containers can read and write the identical-path bind mount of files
/// that the job container (host root) cloned or wrote. The directory keeps its owner and mode
/// bits for everyone else; files created with restrictive modes (the runner's 0600 script and
/// file variables) stay closed to `uid`, since the ACL mask follows the creating mode.
///
/// The directory is opened without following links (`paths::Dir`); blocking.
pub fn grant_dir(dir: &Path, uid: u32) -> Result<(), Error> {
    let d = crate::paths::Dir::open_job_dir(dir).map_err(|e| Error::Other {
        context: "open a job directory for the rootless sidecar".to_string(),
        detail: e.to_string(),
    })?;
    let st = nix::sys::stat::fstat(d.fd()).map_err(|e| acl_error(dir, e))?;
    let acl = acl_bytes(st.st_mode, uid);
    for name in [c"system.posix_acl_access", c"system.posix_acl_default"] {
        set_xattr(d.fd(), name, &acl).map_err(|e| acl_error(dir, e))?;
    }
    Ok(())
}

fn acl_error(dir: &Path, e: nix::errno::Errno) -> Error {
    Error::Other {
        context: format!("give the rootless sidecar access to {}", dir.display()),
        detail: format!(
            "{e} (the builds_dir file system must support POSIX ACLs for the rootless profile)"
        ),
    }
}

fn set_xattr(
    fd: BorrowedFd<'_>,
    name: &std::ffi::CStr,
    value: &[u8],
) -> Result<(), nix::errno::Errno> {
    // SAFETY: fd is a live descriptor, name a NUL-terminated string, value a live buffer of
    // value.len() bytes; the kernel only reads them.
    let r = unsafe {
        nix::libc::fsetxattr(
            fd.as_raw_fd(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(nix::errno::Errno::last())
    }
}

/// The kernel's POSIX ACL xattr (version 2): owner, `uid`, group and other from `mode`, and a
/// mask that lets `uid`'s rwx through. Entries sorted by tag, as the kernel requires.
fn acl_bytes(mode: u32, uid: u32) -> Vec<u8> {
    const USER_OBJ: u16 = 0x01;
    const USER: u16 = 0x02;
    const GROUP_OBJ: u16 = 0x04;
    const MASK: u16 = 0x10;
    const OTHER: u16 = 0x20;
    const UNDEFINED_ID: u32 = u32::MAX;
    let bits = |shift: u32| ((mode >> shift) & 0o7) as u16;
    let entries = [
        (USER_OBJ, bits(6), UNDEFINED_ID),
        (USER, 0o7, uid),
        (GROUP_OBJ, bits(3), UNDEFINED_ID),
        (MASK, 0o7, UNDEFINED_ID),
        (OTHER, bits(0), UNDEFINED_ID),
    ];
    let mut out = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&perm.to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pid that is not the named container's (the runner in another pid namespace would get
    /// one) is refused before the runner enters any namespace: here this test's own process.
    #[test]
    fn a_pid_of_another_process_is_never_entered() {
        let e = remount_sysfs_rw(std::process::id(), "0123456789abcdef0123456789abcdef")
            .expect_err("not a container's process");
        assert!(e.to_string().contains("is not the sidecar's"), "{e}");
        let e = remount_sysfs_rw(std::process::id(), "").expect_err("no id");
        assert!(e.to_string().contains("is not the sidecar's"), "{e}");
    }

    #[test]
    fn blocks_are_disjoint_and_given_back() {
        let base = 3_000_000_000;
        let a = UidBlock::take(base).unwrap();
        let b = UidBlock::take(base).unwrap();
        assert_eq!(a.uid, base);
        assert_eq!(b.uid, base + ROOTLESS_UID_BLOCK);
        assert_eq!(a.subids(), format!("{}:65535", base + 1));
        // Another runner whose base falls inside a's block does not get a's ids.
        let c = UidBlock::take(base + 10).unwrap();
        assert!(c.uid >= b.uid + ROOTLESS_UID_BLOCK, "{}", c.uid);
        drop(a);
        let d = UidBlock::take(base).unwrap();
        assert_eq!(d.uid, base);
        // A warm root's block: outside the ephemeral blocks, clear of recorded ones, and
        // taken once at a time.
        let first = choose_warm_uid(base, &[]).unwrap();
        assert_eq!(first, base + ROOTLESS_UID_BLOCKS * ROOTLESS_UID_BLOCK);
        assert!(is_warm_uid(base, first));
        let next = choose_warm_uid(base, &[first]).unwrap();
        assert_eq!(next, first + ROOTLESS_UID_BLOCK);
        let w = UidBlock::take_warm(base, next, "v").unwrap();
        // Held live but not yet recorded on a volume: still not handed out again.
        assert_eq!(
            choose_warm_uid(base, &[first]).unwrap(),
            next + ROOTLESS_UID_BLOCK
        );
        assert!(UidBlock::take_warm(base, next, "v").is_err());
        drop(w);
        assert_eq!(UidBlock::take_warm(base, next, "v").unwrap().uid, next);
    }

    #[test]
    fn warm_uids_outside_the_warm_blocks_are_refused() {
        let base = 2_000_000_000;
        let first = base + ROOTLESS_UID_BLOCKS * ROOTLESS_UID_BLOCK;
        for bad in [base, first - ROOTLESS_UID_BLOCK, first + 1, first - 7, 17] {
            assert!(!is_warm_uid(base, bad), "{bad}");
            assert!(UidBlock::take_warm(base, bad, "v").is_err(), "{bad}");
        }
        let last = first + (ROOTLESS_WARM_BLOCKS - 1) * ROOTLESS_UID_BLOCK;
        assert!(is_warm_uid(base, last));
        assert!(!is_warm_uid(base, last + ROOTLESS_UID_BLOCK));
        // A base too high for any warm block has none to give.
        assert!(choose_warm_uid(u32::MAX - ROOTLESS_UID_BLOCK, &[]).is_err());
    }

    #[test]
    fn acl_grants_the_uid_and_keeps_the_mode() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("gitlab-job-1");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        match grant_dir(&dir, 123_456_789) {
            Ok(()) => {}
            // A test file system without ACLs says so clearly.
            Err(e) if e.to_string().contains("EOPNOTSUPP") => return,
            Err(e) => panic!("{e}"),
        }
        let acl = xattr_of(&dir, "system.posix_acl_default");
        assert_eq!(acl, acl_bytes(0o40755, 123_456_789));
    }

    fn xattr_of(p: &Path, name: &str) -> Vec<u8> {
        let path = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        let name = std::ffi::CString::new(name).unwrap();
        let mut buf = vec![0u8; 256];
        // SAFETY: valid C strings and a live buffer of buf.len() bytes.
        let n = unsafe {
            nix::libc::getxattr(
                path.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        assert!(n >= 0, "getxattr: {}", std::io::Error::last_os_error());
        buf.truncate(n as usize);
        buf
    }
}
