//! Directory handles: the one way the runner (root) touches files inside directories a job can
//! write to (its project dir, its tmp dir, cache and artifact trees).
//!
//! A [`Dir`] is an open directory descriptor plus a path kept only for messages. Every
//! operation takes a path *relative to the handle* and resolves it with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`: the kernel refuses
//! any symlink on the way (not just the last component) and any step out of the handle's tree,
//! atomically with the open. A job that swaps a parent directory for a link between the
//! runner's listing and its open therefore gets the entry refused (`ELOOP`/`EXDEV`), never
//! followed. There is no check-then-open by path left to race.
//!
//! Where `openat2` is missing (`ENOSYS`: kernels before 5.6, some seccomp profiles) the same
//! resolution is done by hand: one component at a time with `openat(O_NOFOLLOW | O_DIRECTORY)`,
//! which is equally race-free, only slower. Why openat2 through `nix` rather than the `cap-std`
//! crate is in `docs/security.md` ("Runner file I/O").
//!
//! Reads of job-controlled files ([`Dir::open_regular`], [`Dir::read_bounded`]) open with
//! `O_NONBLOCK | O_NOFOLLOW`, so a planted FIFO cannot block a thread, then check with `fstat`
//! that the descriptor is a regular file (not a device node), and are size-bounded. Creates
//! ([`Dir::create_new`]) use `O_CREAT | O_EXCL | O_NOFOLLOW | O_NONBLOCK`: nothing that exists,
//! link or FIFO, is ever opened for writing.

use super::Error;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat, openat2, readlinkat, renameat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat, mkdirat};
use nix::unistd::{UnlinkatFlags, symlinkat, unlinkat};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};

/// Longest symlink target the runner writes or archives (Linux `PATH_MAX`, with its NUL).
pub const PATH_MAX: usize = 4096;

/// Whether `openat2` works here: 0 not tried yet, 1 yes, 2 no (`ENOSYS`).
static OPENAT2: AtomicU8 = AtomicU8::new(0);

const DIR_FLAGS: OFlag = OFlag::O_DIRECTORY
    .union(OFlag::O_RDONLY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// The kind of a directory entry, from `lstat` (a symlink is a symlink, never its target).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// Anything else: FIFO, socket, device node.
    Other,
}

impl Kind {
    /// The kind of a `stat` result.
    pub fn of(st: &FileStat) -> Kind {
        let fmt = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
        if fmt == SFlag::S_IFREG {
            Kind::File
        } else if fmt == SFlag::S_IFDIR {
            Kind::Dir
        } else if fmt == SFlag::S_IFLNK {
            Kind::Symlink
        } else {
            Kind::Other
        }
    }
}

/// An open directory: every path given to its methods is resolved below it, never through a
/// symlink. See the module docs.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    shown: PathBuf,
}

/// Checks that `rel` is a plain relative path: no `..`, not absolute. `.` components are
/// dropped; an empty result means the handle itself.
fn plain(rel: &Path) -> Result<PathBuf, Errno> {
    let mut out = PathBuf::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(Errno::EXDEV);
            }
        }
    }
    Ok(out)
}

/// Opens `rel` below `dir` with `flags` (`O_NOFOLLOW` and `O_CLOEXEC` added), never through a
/// symlink and never out of `dir`.
fn resolve(dir: BorrowedFd<'_>, rel: &Path, flags: OFlag, mode: Mode) -> Result<OwnedFd, Errno> {
    let rel = plain(rel)?;
    let rel: &Path = if rel.as_os_str().is_empty() {
        Path::new(".")
    } else {
        &rel
    };
    let flags = flags | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    if OPENAT2.load(Ordering::Relaxed) != 2 {
        let how = OpenHow::new().flags(flags).mode(mode).resolve(
            ResolveFlag::RESOLVE_BENEATH
                | ResolveFlag::RESOLVE_NO_SYMLINKS
                | ResolveFlag::RESOLVE_NO_MAGICLINKS,
        );
        // EAGAIN: a concurrent rename or mount change elsewhere made the kernel unsure the
        // walk stayed beneath; it asks to retry. A few tries, then the fallback walk.
        for _ in 0..8 {
            match openat2(dir, rel, how) {
                Err(Errno::EAGAIN) => continue,
                Err(Errno::ENOSYS) => {
                    OPENAT2.store(2, Ordering::Relaxed);
                    break;
                }
                other => {
                    OPENAT2.store(1, Ordering::Relaxed);
                    return other;
                }
            }
        }
    }
    resolve_by_walk(dir, rel, flags, mode)
}

/// The fallback of [`resolve`]: each directory on the way opened with
/// `openat(O_NOFOLLOW | O_DIRECTORY)` relative to the one before, the last component with
/// `flags` (which carry `O_NOFOLLOW`). `rel` has only normal components (or is `.`).
fn resolve_by_walk(
    dir: BorrowedFd<'_>,
    rel: &Path,
    flags: OFlag,
    mode: Mode,
) -> Result<OwnedFd, Errno> {
    let comps: Vec<&OsStr> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n),
            _ => None,
        })
        .collect();
    let Some((last, parents)) = comps.split_last() else {
        return openat(dir, ".", flags, mode);
    };
    let mut current: Option<OwnedFd> = None;
    for name in parents {
        let at = current.as_ref().map_or(dir, |f| f.as_fd());
        current = Some(openat(at, *name, DIR_FLAGS, Mode::empty())?);
    }
    let at = current.as_ref().map_or(dir, |f| f.as_fd());
    openat(at, *last, flags | OFlag::O_NOFOLLOW, mode)
}

/// Splits `rel` into its parent (maybe empty) and last component.
fn split(rel: &Path) -> Result<(PathBuf, OsString), Errno> {
    let rel = plain(rel)?;
    let name = rel.file_name().ok_or(Errno::EINVAL)?.to_os_string();
    let parent = rel.parent().map(Path::to_path_buf).unwrap_or_default();
    Ok((parent, name))
}

impl Dir {
    /// Opens a directory the *runner* owns by its absolute path (`state_dir`, its staging
    /// area): the path comes from runner config, not from a job. The last component must be a
    /// real directory (a symlink there is refused).
    pub fn open_trusted(path: &Path) -> Result<Dir, Error> {
        let fd = openat(nix::fcntl::AT_FDCWD, path, DIR_FLAGS, Mode::empty())
            .map_err(err("open", path))?;
        Ok(Dir {
            fd,
            shown: path.to_path_buf(),
        })
    }

    /// Opens a job directory by its absolute path: the parent (`builds_dir`) is trusted
    /// runner config; the last component (`gitlab-job-<id>`, `.tmp`) must be a real directory,
    /// so a job that swapped it for a link gets an error, not the link's target.
    pub fn open_job_dir(path: &Path) -> Result<Dir, Error> {
        let (parent, name) = match (path.parent(), path.file_name()) {
            (Some(p), Some(n)) if path.is_absolute() => (p, n),
            _ => return Err(Error::NotAbsolute(path.to_path_buf())),
        };
        let parent = Dir::open_trusted(parent)?;
        let fd =
            openat(parent.fd.as_fd(), name, DIR_FLAGS, Mode::empty()).map_err(err("open", path))?;
        Ok(Dir {
            fd,
            shown: path.to_path_buf(),
        })
    }

    /// Wraps a descriptor already known to be a directory opened without following links.
    pub fn from_fd(fd: OwnedFd, shown: PathBuf) -> Dir {
        Dir { fd, shown }
    }

    /// The path this handle was opened at, for messages only (never opened again).
    pub fn shown(&self) -> &Path {
        &self.shown
    }

    /// The descriptor.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// A second handle on the same directory.
    pub fn try_clone(&self) -> Result<Dir, Error> {
        Ok(Dir {
            fd: self.fd.try_clone().map_err(io_err("dup", &self.shown))?,
            shown: self.shown.clone(),
        })
    }

    fn path_of(&self, rel: &Path) -> PathBuf {
        self.shown.join(rel)
    }

    /// Opens `rel` below this directory with `flags` (`O_NOFOLLOW | O_CLOEXEC` added).
    pub fn open_at(&self, rel: &Path, flags: OFlag, mode: Mode) -> Result<OwnedFd, Error> {
        resolve(self.fd(), rel, flags, mode).map_err(err("open", &self.path_of(rel)))
    }

    /// Opens the directory `rel` below this one (no link anywhere on the way).
    pub fn open_dir(&self, rel: &Path) -> Result<Dir, Error> {
        let fd = self.open_at(rel, OFlag::O_DIRECTORY | OFlag::O_RDONLY, Mode::empty())?;
        Ok(Dir {
            fd,
            shown: self.path_of(rel),
        })
    }

    /// Opens the directory `rel`, making each missing component (`mode`, before the umask) on
    /// the way; a component that exists as anything but a real directory is an error.
    pub fn create_dirs(&self, rel: &Path, mode: u32) -> Result<Dir, Error> {
        let rel_plain = plain(rel).map_err(err("open", &self.path_of(rel)))?;
        let mut current = self.try_clone()?;
        for c in rel_plain.components() {
            let name = c.as_os_str();
            current = match current.open_dir(Path::new(name)) {
                Ok(d) => d,
                Err(e) if e.errno() == Some(Errno::ENOENT) => {
                    match mkdirat(current.fd(), name, Mode::from_bits_truncate(mode)) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(err("mkdir", &current.path_of(Path::new(name)))(e)),
                    }
                    current.open_dir(Path::new(name))?
                }
                Err(e) => return Err(e),
            };
        }
        Ok(current)
    }

    /// `lstat` of `rel`: its parent reached without links, `rel` itself not followed.
    pub fn stat(&self, rel: &Path) -> Result<FileStat, Error> {
        let (parent, name) = split(rel).map_err(err("stat", &self.path_of(rel)))?;
        let at = self.open_parent(&parent, rel)?;
        fstatat(at.fd(), name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(err("stat", &self.path_of(rel)))
    }

    fn open_parent(&self, parent: &Path, rel: &Path) -> Result<Dir, Error> {
        if parent.as_os_str().is_empty() {
            self.try_clone()
        } else {
            self.open_dir(parent)
                .map_err(|e| e.with_path(self.path_of(rel)))
        }
    }

    /// Opens the regular file `rel` for reading. `O_NONBLOCK` so a FIFO swapped in cannot
    /// block us; an `fstat` on the open descriptor refuses anything but a regular file (a
    /// device node, a FIFO), whatever was there at listing time.
    pub fn open_regular(&self, rel: &Path) -> Result<File, Error> {
        let fd = self.open_at(rel, OFlag::O_RDONLY | OFlag::O_NONBLOCK, Mode::empty())?;
        let st = fstat(fd.as_fd()).map_err(err("stat", &self.path_of(rel)))?;
        if Kind::of(&st) != Kind::File {
            return Err(Error::Io {
                op: "open",
                path: self.path_of(rel),
                source: std::io::Error::other("not a regular file"),
            });
        }
        Ok(File::from(fd))
    }

    /// Reads the regular file `rel` whole, refusing one larger than `max` bytes.
    pub fn read_bounded(&self, rel: &Path, max: u64) -> Result<Vec<u8>, Error> {
        let f = self.open_regular(rel)?;
        let mut out = Vec::new();
        // One byte more than allowed tells "exactly max" from "too large", also for a file
        // still growing while we read it.
        f.take(max.saturating_add(1))
            .read_to_end(&mut out)
            .map_err(io_err("read", &self.path_of(rel)))?;
        if out.len() as u64 > max {
            return Err(Error::Io {
                op: "read",
                path: self.path_of(rel),
                source: std::io::Error::other(format!("larger than {max} bytes")),
            });
        }
        Ok(out)
    }

    /// Creates the file `rel` (which must not exist in any form: file, link, FIFO) for
    /// writing, with exactly `mode` (set on the descriptor, whatever the umask).
    pub fn create_new(&self, rel: &Path, mode: u32) -> Result<File, Error> {
        let fd = self.open_at(
            rel,
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR | OFlag::O_NONBLOCK,
            Mode::from_bits_truncate(mode),
        )?;
        nix::sys::stat::fchmod(fd.as_fd(), Mode::from_bits_truncate(mode))
            .map_err(err("chmod", &self.path_of(rel)))?;
        // Writes to a regular file never block; clear O_NONBLOCK so std's writes behave as
        // they would on any file.
        nix::fcntl::fcntl(fd.as_fd(), nix::fcntl::FcntlArg::F_SETFL(OFlag::empty()))
            .map_err(err("fcntl", &self.path_of(rel)))?;
        Ok(File::from(fd))
    }

    /// Makes the directory `name` (one component) with exactly `mode`.
    pub fn mkdir(&self, name: &Path, mode: u32) -> Result<Dir, Error> {
        let (parent, leaf) = split(name).map_err(err("mkdir", &self.path_of(name)))?;
        let at = self.open_parent(&parent, name)?;
        mkdirat(at.fd(), leaf.as_os_str(), Mode::from_bits_truncate(mode))
            .map_err(err("mkdir", &self.path_of(name)))?;
        let d = at.open_dir(Path::new(&leaf))?;
        nix::sys::stat::fchmod(d.fd(), Mode::from_bits_truncate(mode))
            .map_err(err("chmod", &self.path_of(name)))?;
        Ok(d)
    }

    /// Removes the non-directory `rel` (a file, a link: the link itself).
    pub fn unlink(&self, rel: &Path) -> Result<(), Error> {
        let (parent, name) = split(rel).map_err(err("unlink", &self.path_of(rel)))?;
        let at = self.open_parent(&parent, rel)?;
        unlinkat(at.fd(), name.as_os_str(), UnlinkatFlags::NoRemoveDir)
            .map_err(err("unlink", &self.path_of(rel)))
    }

    /// Removes `rel` whatever it is (a whole tree without following links, see
    /// [`remove_tree`]). Returns false when nothing was there.
    pub fn remove(&self, rel: &Path) -> Result<bool, Error> {
        let (parent, name) = split(rel).map_err(err("remove", &self.path_of(rel)))?;
        let at = match self.open_parent(&parent, rel) {
            Ok(d) => d,
            Err(e) if e.errno() == Some(Errno::ENOENT) => return Ok(false),
            Err(e) => return Err(e),
        };
        remove_tree(&at.fd, &name, &self.path_of(rel))
    }

    /// Renames `from` to `to`, both below this directory (parents reached without links).
    pub fn rename(&self, from: &Path, to: &Path) -> Result<(), Error> {
        let (fp, fname) = split(from).map_err(err("rename", &self.path_of(from)))?;
        let (tp, tname) = split(to).map_err(err("rename", &self.path_of(to)))?;
        let fdir = self.open_parent(&fp, from)?;
        let tdir = self.open_parent(&tp, to)?;
        renameat(fdir.fd(), fname.as_os_str(), tdir.fd(), tname.as_os_str())
            .map_err(err("rename", &self.path_of(from)))
    }

    /// The target text of the symlink `rel` (never followed), refused when longer than
    /// [`PATH_MAX`].
    pub fn readlink(&self, rel: &Path) -> Result<PathBuf, Error> {
        let (parent, name) = split(rel).map_err(err("readlink", &self.path_of(rel)))?;
        let at = self.open_parent(&parent, rel)?;
        let t =
            readlinkat(at.fd(), name.as_os_str()).map_err(err("readlink", &self.path_of(rel)))?;
        if t.len() >= PATH_MAX {
            return Err(err("readlink", &self.path_of(rel))(Errno::ENAMETOOLONG));
        }
        Ok(PathBuf::from(t))
    }

    /// Makes the symlink `rel` with `target` (the target is text; nothing resolves it here).
    pub fn symlink(&self, target: &Path, rel: &Path) -> Result<(), Error> {
        if target.as_os_str().len() >= PATH_MAX || target.as_os_str().is_empty() {
            return Err(err("symlink", &self.path_of(rel))(Errno::ENAMETOOLONG));
        }
        let (parent, name) = split(rel).map_err(err("symlink", &self.path_of(rel)))?;
        let at = self.open_parent(&parent, rel)?;
        symlinkat(target, at.fd(), name.as_os_str()).map_err(err("symlink", &self.path_of(rel)))
    }

    /// The names in this directory (without `.` and `..`).
    pub fn list(&self) -> Result<Vec<OsString>, Error> {
        list_dir(&self.fd).map_err(err("read", &self.shown))
    }
}

fn err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(Errno) -> Error + 'a {
    move |e| Error::Io {
        op,
        path: path.to_path_buf(),
        source: std::io::Error::from(e),
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

impl Error {
    /// The OS error behind this error, if any (`ENOENT`, `ELOOP` for a link on the way, …).
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Error::Io { source, .. } => source.raw_os_error().map(Errno::from_raw),
            _ => None,
        }
    }

    /// True when a symlink (or a non-directory) was met where the path needed a directory, or
    /// the path would have left the handle's tree: the cases a racing job provokes.
    pub fn is_redirect(&self) -> bool {
        matches!(
            self.errno(),
            Some(Errno::ELOOP | Errno::ENOTDIR | Errno::EXDEV)
        )
    }

    fn with_path(self, path: PathBuf) -> Error {
        match self {
            Error::Io { op, source, .. } => Error::Io { op, path, source },
            other => other,
        }
    }
}

/// The names in the directory `fd` (without `.` and `..`).
pub(super) fn list_dir(fd: &OwnedFd) -> Result<Vec<OsString>, Errno> {
    let dup = fd.try_clone().map_err(|_| Errno::EMFILE)?;
    let mut dir = nix::dir::Dir::from_fd(dup)?;
    let mut names = Vec::new();
    for entry in dir.iter() {
        let entry = entry?;
        let n = entry.file_name().to_bytes();
        if n == b"." || n == b".." {
            continue;
        }
        names.push(OsStr::from_bytes(n).to_os_string());
    }
    Ok(names)
}

/// Whether a symlink stored at `link` (relative to a tree's root) with `target` resolves inside
/// that tree *whatever the other links in the tree are*. Chain-proof (finding L1): a lexical
/// check alone accepts `s -> .` then `up -> s/..`, which leaves the tree once `s` is followed.
/// Accepted: relative targets made of leading `..` (no more than the link's depth) followed by
/// names only. A `..` after a name is refused, because that name may itself be a link and `..`
/// then climbs from wherever it points. Absolute targets are refused (the tree's absolute path
/// changes from job to job).
pub fn link_stays_inside(link: &Path, target: &Path) -> bool {
    if target.as_os_str().is_empty() || target.as_os_str().len() >= PATH_MAX {
        return false;
    }
    let depth = link
        .parent()
        .map(|p| {
            p.components()
                .filter(|c| matches!(c, Component::Normal(_)))
                .count()
        })
        .unwrap_or(0);
    let mut ups = 0usize;
    let mut seen_name = false;
    for c in target.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if !seen_name => ups += 1,
            Component::Normal(_) => seen_name = true,
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    ups <= depth
}

/// Most directory descriptors [`remove_tree`] keeps open at once.
const MAX_OPEN_DIRS: usize = 16;

/// One directory being emptied by [`remove_tree`].
struct Level {
    /// Open while it is among the deepest [`MAX_OPEN_DIRS`]; reopened through `..` (and
    /// checked by device and inode) when the walk comes back up to it.
    fd: Option<OwnedFd>,
    /// Device and inode, to check a reopened `..` is still this directory.
    id: (u64, u64),
    /// Its name in its parent.
    name: OsString,
    /// Entries still to remove.
    todo: Vec<OsString>,
}

/// What [`remove_tree_counted`] saw, for tests.
#[derive(Debug, Default, Clone, Copy)]
pub struct RemovalStats {
    /// Most directory descriptors held open at the same time.
    pub max_open: usize,
}

/// Removes the entry `name` of the directory `parent` and, if it is a real directory (not a
/// symlink to one), everything below it, with descriptor-relative calls only: a symlink is
/// only ever unlinked, never entered (threat H9). Iterative with an explicit stack (finding
/// H5: a job's 200 000-deep tree must not overflow the runner's stack) and at most
/// [`MAX_OPEN_DIRS`] open descriptors whatever the depth. `shown` is for messages.
pub fn remove_tree(parent: &OwnedFd, name: &OsStr, shown: &Path) -> Result<bool, Error> {
    remove_tree_counted(parent, name, shown).map(|(r, _)| r)
}

fn dev_ino(st: &FileStat) -> (u64, u64) {
    #[allow(clippy::useless_conversion)]
    (u64::from(st.st_dev), u64::from(st.st_ino))
}

/// [`remove_tree`], also returning how many descriptors it held at most.
pub fn remove_tree_counted(
    parent: &OwnedFd,
    name: &OsStr,
    shown: &Path,
) -> Result<(bool, RemovalStats), Error> {
    let mut stats = RemovalStats::default();
    let st = match fstatat(parent.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Ok((false, stats)),
        Err(e) => return Err(err("stat", shown)(e)),
    };
    if Kind::of(&st) != Kind::Dir {
        return match unlinkat(parent.as_fd(), name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok((true, stats)),
            Err(e) => Err(err("unlink", shown)(e)),
        };
    }
    let mut stack: Vec<Level> = Vec::new();
    let mut open = 0usize;
    // Index of the shallowest level that still has its descriptor.
    let mut lowest_open = 0usize;
    // Path for messages, built only when one is needed (a 100 000-deep tree must not cost
    // 100 000 paths).
    let here = |stack: &[Level], child: Option<&OsStr>| {
        let mut p = shown.to_path_buf();
        for l in stack.iter().skip(1) {
            p.push(&l.name);
        }
        if let Some(c) = child {
            p.push(c);
        }
        p
    };
    // O_NOFOLLOW makes this fail with ELOOP/ENOTDIR if `name` was swapped for a symlink since
    // the stat above, so a race cannot redirect us outside the tree.
    let enter = |at: BorrowedFd<'_>, name: &OsStr| -> Result<Level, Errno> {
        let fd = openat(at, name, DIR_FLAGS, Mode::empty())?;
        let id = dev_ino(&fstat(fd.as_fd())?);
        let todo = list_dir(&fd)?;
        Ok(Level {
            fd: Some(fd),
            id,
            name: name.to_os_string(),
            todo,
        })
    };
    stack.push(enter(parent.as_fd(), name).map_err(err("open", shown))?);
    open += 1;
    stats.max_open = open;
    loop {
        let depth = stack.len();
        let Some(top) = stack.last_mut() else {
            break;
        };
        if let Some(child) = top.todo.pop() {
            let Some(at) = top.fd.as_ref().map(|f| f.as_fd()) else {
                return Err(err("open", &here(&stack, None))(Errno::EBADF));
            };
            let st = match fstatat(at, child.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => st,
                Err(Errno::ENOENT) => continue,
                Err(e) => return Err(err("stat", &here(&stack, Some(&child)))(e)),
            };
            if Kind::of(&st) != Kind::Dir {
                match unlinkat(at, child.as_os_str(), UnlinkatFlags::NoRemoveDir) {
                    Ok(()) | Err(Errno::ENOENT) => continue,
                    Err(e) => return Err(err("unlink", &here(&stack, Some(&child)))(e)),
                }
            }
            let level = match enter(at, &child) {
                Ok(l) => l,
                Err(Errno::ENOENT) => continue,
                Err(e) => return Err(err("open", &here(&stack, Some(&child)))(e)),
            };
            stack.push(level);
            open += 1;
            stats.max_open = stats.max_open.max(open);
            if open > MAX_OPEN_DIRS {
                // Close the shallowest open one; it is reopened on the way back up.
                while lowest_open < depth && stack[lowest_open].fd.is_none() {
                    lowest_open += 1;
                }
                if stack[lowest_open].fd.take().is_some() {
                    open -= 1;
                }
            }
            continue;
        }
        // `top` is empty: remove it from its parent.
        let Some(done) = stack.pop() else {
            break;
        };
        if let Some(p_id) = stack.last().filter(|p| p.fd.is_none()).map(|p| p.id) {
            let Some(child_fd) = done.fd.as_ref() else {
                return Err(err("open", &here(&stack, Some(&done.name)))(Errno::EBADF));
            };
            let up = openat(child_fd.as_fd(), "..", DIR_FLAGS, Mode::empty())
                .map_err(|e| err("open", &here(&stack, None))(e))?;
            let st = fstat(up.as_fd()).map_err(|e| err("stat", &here(&stack, None))(e))?;
            let id = dev_ino(&st);
            if id != p_id {
                // The job moved the directory while we were in it: `..` is no longer the
                // parent we came from. Stop rather than delete elsewhere; the reaper tries
                // again on the tree as it is then.
                return Err(Error::Io {
                    op: "remove",
                    path: here(&stack, None),
                    source: std::io::Error::other("a directory was moved during removal, stopped"),
                });
            }
            lowest_open = lowest_open.min(stack.len() - 1);
            if let Some(p) = stack.last_mut() {
                p.fd = Some(up);
            }
            open += 1;
            stats.max_open = stats.max_open.max(open);
        }
        let parent_fd: BorrowedFd<'_> = match stack.last() {
            None => parent.as_fd(),
            Some(p) => match p.fd.as_ref() {
                Some(f) => f.as_fd(),
                None => return Err(err("open", shown)(Errno::EBADF)),
            },
        };
        drop(done.fd);
        open -= 1;
        match unlinkat(parent_fd, done.name.as_os_str(), UnlinkatFlags::RemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(err("rmdir", &here(&stack, Some(&done.name)))(e)),
        }
    }
    Ok((true, stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree() -> (tempfile::TempDir, Dir, tempfile::TempDir) {
        let t = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        std::fs::write(outside.path().join("canary"), b"CANARY").expect("write");
        std::fs::create_dir_all(t.path().join("a/b")).expect("mkdir");
        std::fs::write(t.path().join("a/b/f"), b"data").expect("write");
        std::os::unix::fs::symlink(outside.path(), t.path().join("a/out")).expect("link");
        std::os::unix::fs::symlink(outside.path().join("canary"), t.path().join("a/lf"))
            .expect("link");
        let d = Dir::open_trusted(t.path()).expect("open");
        (t, d, outside)
    }

    #[test]
    fn links_are_refused_anywhere_on_the_way() {
        let (_t, d, _o) = tree();
        assert_eq!(
            d.read_bounded(Path::new("a/b/f"), 100).expect("read"),
            b"data"
        );
        for rel in ["a/out/canary", "a/lf", "../x", "/etc/passwd"] {
            let e = d.read_bounded(Path::new(rel), 100).expect_err(rel);
            assert!(e.is_redirect(), "{rel}: {e}");
        }
        assert!(
            d.open_dir(Path::new("a/out"))
                .expect_err("dir link")
                .is_redirect()
        );
        assert!(d.create_new(Path::new("a/out/new"), 0o600).is_err());
        // An existing link is never opened for writing.
        assert!(d.create_new(Path::new("a/lf"), 0o600).is_err());
        assert!(d.create_dirs(Path::new("a/out/x/y"), 0o755).is_err());
    }

    #[test]
    fn the_walk_fallback_refuses_the_same() {
        let (_t, d, _o) = tree();
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        assert!(resolve_by_walk(d.fd(), Path::new("a/b/f"), flags, Mode::empty()).is_ok());
        for rel in ["a/out/canary", "a/lf"] {
            let e = resolve_by_walk(d.fd(), Path::new(rel), flags, Mode::empty());
            assert!(
                matches!(e, Err(Errno::ELOOP | Errno::ENOTDIR)),
                "{rel}: {e:?}"
            );
        }
    }

    #[test]
    fn reads_are_bounded_and_refuse_fifos_and_devices() {
        let (t, d, _o) = tree();
        std::fs::write(t.path().join("big"), vec![b'x'; 1000]).expect("write");
        assert!(d.read_bounded(Path::new("big"), 999).is_err());
        assert_eq!(
            d.read_bounded(Path::new("big"), 1000).expect("read").len(),
            1000
        );
        nix::unistd::mkfifo(&t.path().join("fifo"), Mode::from_bits_truncate(0o600))
            .expect("mkfifo");
        // Would block forever without O_NONBLOCK; refused as not a regular file.
        assert!(d.read_bounded(Path::new("fifo"), 10).is_err());
        assert!(d.create_new(Path::new("fifo"), 0o600).is_err());
    }

    #[test]
    fn create_rename_list_unlink() {
        let (_t, d, _o) = tree();
        let mut f = d.create_new(Path::new("a/new"), 0o640).expect("create");
        std::io::Write::write_all(&mut f, b"hi").expect("write");
        let st = d.stat(Path::new("a/new")).expect("stat");
        assert_eq!(st.st_mode & 0o777, 0o640);
        d.rename(Path::new("a/new"), Path::new("a/b/moved"))
            .expect("rename");
        assert!(d.list().expect("list").contains(&OsString::from("a")));
        assert_eq!(
            d.read_bounded(Path::new("a/b/moved"), 10).expect("read"),
            b"hi"
        );
        d.unlink(Path::new("a/b/moved")).expect("unlink");
        d.symlink(Path::new("b/f"), Path::new("a/rel"))
            .expect("symlink");
        assert_eq!(
            d.readlink(Path::new("a/rel")).expect("readlink"),
            Path::new("b/f")
        );
        let long = PathBuf::from("x".repeat(PATH_MAX));
        assert!(d.symlink(&long, Path::new("a/long")).is_err());
        assert!(d.remove(Path::new("a")).expect("remove"));
        assert!(!d.remove(Path::new("a")).expect("remove again"));
    }

    #[test]
    fn job_dir_itself_may_not_be_a_link() {
        let (t, _d, o) = tree();
        let link = t.path().join("gitlab-job-1");
        std::os::unix::fs::symlink(o.path(), &link).expect("link");
        assert!(Dir::open_job_dir(&link).is_err());
        assert!(Dir::open_job_dir(&t.path().join("a")).is_ok());
    }

    #[test]
    fn chain_proof_link_check() {
        let ok = |l: &str, t: &str| link_stays_inside(Path::new(l), Path::new(t));
        assert!(ok("s", "."));
        assert!(ok("a/l", "../b"));
        assert!(ok("l", "b/c"));
        assert!(!ok("up", "s/.."));
        assert!(!ok("a/l", "../../b"));
        assert!(!ok("l", "/etc/passwd"));
        assert!(!ok("a/l", "b/../../c"));
        assert!(!ok("l", ""));
    }
}
