//! The btrfs operations of the store, through btrfs-progs and util-linux (`mkfs.btrfs`,
//! `btrfs`, `mount`), whose error output is passed on as it is: it names what is missing.

use super::StoreError;
use std::path::Path;
use std::process::Command;

/// `BTRFS_SUPER_MAGIC` from linux/magic.h.
const BTRFS_SUPER_MAGIC: i64 = 0x9123_683E;

/// Whether `dir` is on btrfs.
pub(super) fn is_btrfs(dir: &Path) -> std::io::Result<bool> {
    let st = nix::sys::statfs::statfs(dir).map_err(std::io::Error::from)?;
    Ok(st.filesystem_type().0 as i64 == BTRFS_SUPER_MAGIC)
}

/// Whether something is mounted exactly at `dir` in this mount namespace (btrfs subvolumes
/// have their own device numbers, so comparing `st_dev` with the parent's would not tell).
pub(super) fn is_mount_point(dir: &Path) -> std::io::Result<bool> {
    let dir = std::fs::canonicalize(dir)?;
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let want = dir.to_string_lossy();
    Ok(info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| unescape_mountinfo(m) == want))
}

/// Whether the file system mounted at `dir` (the topmost mount there) is btrfs on a loop
/// device backed by `img`: the runner's own store, which it mounted (or a runner process that
/// died did). Anything else at `dir` (a btrfs file system the admin mounted, nothing) is not.
pub(super) fn is_own_loop_mount(dir: &Path, img: &Path) -> bool {
    let (Ok(dir), Ok(img)) = (std::fs::canonicalize(dir), std::fs::canonicalize(img)) else {
        return false;
    };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let Some(dev) = loop_device_at(&info, &dir.to_string_lossy()) else {
        return false;
    };
    // `/sys/block/loopN/loop/backing_file`: the image's absolute path, as the loop device
    // was set up with it (` (deleted)` appended when the file is gone, which then differs).
    let Some(name) = dev.strip_prefix("/dev/") else {
        return false;
    };
    std::fs::read_to_string(Path::new("/sys/block").join(name).join("loop/backing_file"))
        .is_ok_and(|b| Path::new(b.trim_end_matches('\n')) == img)
}

/// The loop device (`/dev/loopN`) of the btrfs file system mounted last at `dir`, from
/// mountinfo's `<id> <parent> <maj:min> <root> <mount point> <options> ... - <type> <source>
/// <super options>` lines.
fn loop_device_at(mountinfo: &str, dir: &str) -> Option<String> {
    mountinfo
        .lines()
        .rev()
        .find(|l| {
            l.split(' ')
                .nth(4)
                .is_some_and(|m| unescape_mountinfo(m) == dir)
        })
        .and_then(|l| {
            let (_, after) = l.split_once(" - ")?;
            let mut w = after.split(' ');
            let (fstype, source) = (w.next()?, w.next()?);
            (fstype == "btrfs" && source.starts_with("/dev/loop"))
                .then(|| unescape_mountinfo(source))
        })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && let Some(oct) = s.get(i + 1..i + 4)
            && let Ok(v) = u8::from_str_radix(oct, 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Runs a tool; a missing tool is `Unavailable` naming its package.
fn run(tool: &str, args: &[&std::ffi::OsStr], context: &str) -> Result<String, StoreError> {
    let out = Command::new(tool).args(args).output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            StoreError::Unavailable(format!(
                "`{tool}` is not installed (Debian: apt-get install {})",
                if tool == "mount" || tool == "umount" {
                    "mount"
                } else {
                    "btrfs-progs"
                }
            ))
        } else {
            StoreError::Op {
                context: context.to_string(),
                detail: format!("{tool}: {e}"),
            }
        }
    })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(StoreError::Op {
            context: context.to_string(),
            detail: format!(
                "{tool} {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }
}

fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

/// Fails when `btrfs` (btrfs-progs) is missing.
pub(super) fn check_tool() -> Result<(), StoreError> {
    run("btrfs", &[os("--version")], "run btrfs --version").map(|_| ())
}

/// A sparse file of `size` bytes formatted btrfs.
pub(super) fn make_image(img: &Path, size: u64) -> Result<(), StoreError> {
    // Made under a temporary name: a crash half-way never leaves an unformatted image behind.
    let tmp = super::image_file(&img.with_extension("new"));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(super::op(format!("create {}", tmp.display())))?;
    f.set_len(size)
        .map_err(super::op(format!("size {}", tmp.display())))?;
    drop(f);
    let made = run(
        "mkfs.btrfs",
        &[os("-q"), os("-f"), tmp.as_os_str()],
        &format!("format {} as btrfs", tmp.display()),
    )
    .and_then(|_| {
        std::fs::rename(&tmp, img).map_err(super::op(format!("rename to {}", img.display())))
    });
    if made.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    made
}

/// Loop-mounts `img` at `dir` unless something is mounted there already.
///
/// Without write barriers (`nobarrier`): every inner container makes containerd and dockerd
/// `fsync` their metadata dozens of times, and on a loop device each flush is an `fsync` of the
/// image file on the host's file system (1.24 ms against 0.25 ms without barriers, ~60 ms per
/// `docker run` in a job: docs/benchmarks.md). Nothing in the store has to outlive the host:
/// a process crash loses nothing (the kernel still writes what it was given), and a store the
/// host went down with is made anew ([`super::mount_marker`]). A kernel that refuses the
/// option gets the mount with barriers.
pub(super) fn loop_mount(img: &Path, dir: &Path) -> Result<(), StoreError> {
    if is_mount_point(dir).unwrap_or(false) {
        return Ok(());
    }
    let mount = |opts: &str| {
        run(
            "mount",
            &[
                os("-t"),
                os("btrfs"),
                os("-o"),
                os(opts),
                img.as_os_str(),
                dir.as_os_str(),
            ],
            &format!("loop-mount {} at {}", img.display(), dir.display()),
        )
    };
    mount("loop,noatime,nobarrier")
        .or_else(|e| {
            tracing::debug!(error = %e, "mounting the root store without write barriers failed; trying with them");
            mount("loop,noatime")
        })
        .map_err(|e| match e {
        StoreError::Op { detail, .. } => StoreError::Unavailable(format!(
            "cannot loop-mount {} at {} ({detail}); the store needs loop devices (`modprobe \
             loop`) and btrfs (`modprobe btrfs`), or set root_store_path to a directory on \
             btrfs, or root_store = \"off\"",
            img.display(),
            dir.display()
        )),
        other => other,
    })
    .map(|_| ())
}

/// Unmounts the store (a loop mount made with `-o loop` frees its device on unmount).
pub(super) fn unmount_store(dir: &Path) -> Result<(), StoreError> {
    run(
        "umount",
        &[dir.as_os_str()],
        &format!("unmount {}", dir.display()),
    )?;
    // Unmounted cleanly: everything is on the image, which the next mount may trust.
    let marker = super::mount_marker(dir);
    match std::fs::remove_file(&marker) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(super::op(format!("remove {}", marker.display()))(e))
        }
        _ => Ok(()),
    }
}

pub(super) fn create_subvolume(p: &Path) -> Result<(), StoreError> {
    run(
        "btrfs",
        &[os("-q"), os("subvolume"), os("create"), p.as_os_str()],
        &format!("create subvolume {}", p.display()),
    )
    .map(|_| ())
}

pub(super) fn snapshot(src: &Path, dst: &Path, read_only: bool) -> Result<(), StoreError> {
    let mut args = vec![os("-q"), os("subvolume"), os("snapshot")];
    if read_only {
        args.push(os("-r"));
    }
    args.extend([src.as_os_str(), dst.as_os_str()]);
    run(
        "btrfs",
        &args,
        &format!("snapshot {} to {}", src.display(), dst.display()),
    )
    .map(|_| ())
}

/// Deletes one subvolume (a golden or build, made by the runner: nothing nested).
pub(super) fn delete_subvolume(p: &Path) -> Result<(), StoreError> {
    run(
        "btrfs",
        &[os("-q"), os("subvolume"), os("delete"), p.as_os_str()],
        &format!("delete subvolume {}", p.display()),
    )
    .map(|_| ())
}

/// What `btrfs subvolume show` says of one subvolume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SubvolumeInfo {
    /// Its subvolume id (for `btrfs subvolume sync`).
    pub id: u64,
    /// When it was made (the root item's otime, seconds since the epoch). A snapshot's root
    /// directory keeps its source's inode times, so `stat` cannot tell this.
    pub created: Option<i64>,
}

pub(super) fn subvolume_info(p: &Path) -> Result<SubvolumeInfo, StoreError> {
    let out = run(
        "btrfs",
        &[os("subvolume"), os("show"), p.as_os_str()],
        &format!("show subvolume {}", p.display()),
    )?;
    parse_show(&out).ok_or_else(|| StoreError::Op {
        context: format!("show subvolume {}", p.display()),
        detail: "no `Subvolume ID` in the output of btrfs subvolume show".to_string(),
    })
}

/// `Subvolume ID:` and `Creation time:` (`%Y-%m-%d %H:%M:%S %z`, btrfs-progs' fixed format).
fn parse_show(out: &str) -> Option<SubvolumeInfo> {
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .map(str::trim)
    };
    let id = field("Subvolume ID:")?.parse().ok()?;
    let created = field("Creation time:").and_then(parse_time);
    Some(SubvolumeInfo { id, created })
}

fn parse_time(s: &str) -> Option<i64> {
    let mut w = s.split_whitespace();
    let (date, clock, zone) = (w.next()?, w.next()?, w.next()?);
    let num = |t: &str| t.parse::<i64>().ok();
    let d: Vec<i64> = date.split('-').map(num).collect::<Option<_>>()?;
    let c: Vec<i64> = clock.split(':').map(num).collect::<Option<_>>()?;
    let [y, mo, da] = d[..] else { return None };
    let [h, mi, se] = c[..] else { return None };
    let (sign, hhmm) = match zone.as_bytes().first()? {
        b'+' => (1, &zone[1..]),
        b'-' => (-1, &zone[1..]),
        _ => return None,
    };
    let z = num(hhmm).filter(|_| hhmm.len() == 4)?;
    let offset = sign * ((z / 100) * 3600 + (z % 100) * 60);
    let date = time::Date::from_calendar_date(
        i32::try_from(y).ok()?,
        time::Month::try_from(u8::try_from(mo).ok()?).ok()?,
        u8::try_from(da).ok()?,
    )
    .ok()?;
    let clock = time::Time::from_hms(
        u8::try_from(h).ok()?,
        u8::try_from(mi).ok()?,
        u8::try_from(se).ok()?,
    )
    .ok()?;
    Some(
        time::PrimitiveDateTime::new(date, clock)
            .assume_utc()
            .unix_timestamp()
            - offset,
    )
}

/// Waits until the kernel has cleaned the deleted subvolumes `ids` and committed it, so the
/// file system's use shows their space free. `subvolume delete` returns before the cleaner
/// ran, and the cleaner waits for a transaction commit: measured here, `subvolume sync` alone
/// waited 29 s for a 200 MB subvolume (the 30 s commit interval), 0.08 s with a commit first;
/// without the last commit `statfs` still counts the freed extents as used.
pub(super) fn wait_cleaned(store: &Path, ids: &[u64]) -> Result<(), StoreError> {
    if ids.is_empty() {
        return Ok(());
    }
    let commit = || {
        run(
            "btrfs",
            &[os("filesystem"), os("sync"), store.as_os_str()],
            &format!("commit {}", store.display()),
        )
    };
    commit()?;
    let ids: Vec<String> = ids.iter().map(u64::to_string).collect();
    let mut args = vec![os("subvolume"), os("sync"), store.as_os_str()];
    args.extend(ids.iter().map(|i| os(i)));
    run(
        "btrfs",
        &args,
        &format!("wait for deleted subvolumes of {}", store.display()),
    )?;
    commit().map(|_| ())
}

/// Deletes a job's snapshot and every subvolume the job made inside it. Nested subvolumes are
/// found by the kernel's listing and deleted by id from the store's root, never through a
/// path inside the snapshot (which the job controls).
pub(super) fn delete_tree(store: &Path, snap: &Path) -> Result<(), StoreError> {
    if delete_subvolume(snap).is_ok() {
        return Ok(());
    }
    let listing = run(
        "btrfs",
        &[os("subvolume"), os("list"), os("-o"), snap.as_os_str()],
        &format!("list subvolumes in {}", snap.display()),
    )?;
    // `ID <id> gen <g> top level <parent> path <path>`: deepest first.
    let mut nested: Vec<(usize, String)> = listing
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next()? == "ID").then_some(())?;
            let id = w.next()?.to_string();
            let path = l.split(" path ").nth(1)?;
            Some((path.matches('/').count(), id))
        })
        .collect();
    nested.sort_by_key(|n| std::cmp::Reverse(n.0));
    for (_, id) in &nested {
        run(
            "btrfs",
            &[
                os("-q"),
                os("subvolume"),
                os("delete"),
                os("--subvolid"),
                os(id),
                store.as_os_str(),
            ],
            &format!("delete nested subvolume {id} of {}", snap.display()),
        )?;
    }
    delete_subvolume(snap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subvolume_show_is_read() {
        let out = "golden/k\n\tName: \t\t\tk\n\tUUID: \t\t\t1-2\n\tCreation time: \t\t\
                   2026-12-06 13:58:01 +0000\n\tSubvolume ID: \t\t258\n\tGeneration: \t\t9\n";
        let i = parse_show(out).unwrap();
        assert_eq!(i.id, 258);
        assert_eq!(i.created, Some(1_796_565_481));
        // The same instant written in another zone.
        assert_eq!(parse_time("2026-12-06 15:28:01 +0130"), Some(1_796_565_481));
        assert_eq!(parse_time("2026-12-06 12:58:01 -0100"), Some(1_796_565_481));
        assert_eq!(parse_time("-"), None);
        assert_eq!(parse_time("2026-13-06 13:58:01 +0000"), None);
        assert_eq!(parse_show("\tName: x\n"), None);
    }

    #[test]
    fn the_loop_device_of_the_last_mount_is_found() {
        let info = "22 1 0:21 / /sys rw - sysfs sysfs rw\n\
                    90 29 0:55 / /var/lib/ir/roots rw,noatime - btrfs /dev/loop3 rw,ssd\n\
                    91 29 0:56 / /srv/admin rw - btrfs /dev/sdb1 rw\n\
                    92 29 0:57 / /var/lib/ir/a\\040b rw - btrfs /dev/loop4 rw\n";
        assert_eq!(
            loop_device_at(info, "/var/lib/ir/roots").as_deref(),
            Some("/dev/loop3")
        );
        assert_eq!(
            loop_device_at(info, "/var/lib/ir/a b").as_deref(),
            Some("/dev/loop4")
        );
        // A btrfs file system on a disk is the admin's, never the runner's to unmount.
        assert_eq!(loop_device_at(info, "/srv/admin"), None);
        assert_eq!(loop_device_at(info, "/sys"), None);
        assert_eq!(loop_device_at(info, "/nothing"), None);
        // Something mounted over the store hides it: the topmost mount counts.
        let over = format!("{info}93 90 0:58 / /var/lib/ir/roots rw - tmpfs tmpfs rw\n");
        assert_eq!(loop_device_at(&over, "/var/lib/ir/roots"), None);
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo(r"/a\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo(r"/x\134y"), r"/x\y");
    }
}
