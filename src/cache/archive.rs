//! Building and unpacking cache archives (tar + gzip) without ever leaving the project dir.
//!
//! Every file is opened relative to a directory descriptor of the project dir, one path
//! component at a time with `O_NOFOLLOW`, so neither a symlink planted in the checkout nor one
//! swapped in by a still-running service container can redirect a read (leaking host files into
//! the cache) or a write (overwriting host files on restore). Blocking code: call it from
//! `spawn_blocking`.

use crate::paths::{Dir, link_stays_inside};
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::fcntl::{OFlag, openat, readlinkat};
use nix::sys::stat::{Mode, SFlag, fstatat};
use nix::unistd::{UnlinkatFlags, symlinkat, unlinkat};
use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

/// At most this many per-entry warnings are printed per archive; the rest are counted.
const MAX_WARNINGS: usize = 20;

/// Errors of one archive operation as a whole (per-entry problems are warnings instead).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ArchiveError {
    #[error("cannot open project dir {path}")]
    ProjectDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write archive {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read archive {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What one archive creation found.
#[derive(Debug, Default)]
pub(crate) struct Selection {
    /// Relative paths in walk order (parents before children).
    pub entries: Vec<PathBuf>,
    /// Matches per pattern, in the caller's order, for the trace.
    pub per_pattern: Vec<(String, usize)>,
    /// Matches of the untracked list.
    pub untracked: usize,
    /// Patterns that were refused (absolute or with `..`).
    pub refused: Vec<String>,
}

/// Normalises a relative path lexically; `None` if it is absolute or climbs out with `..`.
pub(crate) fn clean_relative(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for comp in path.components() {
        match comp {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Strict check for paths read from an archive: relative, no `..` at all, not empty.
fn archive_entry_path(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for comp in path.components() {
        match comp {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// Whether a symlink at `link` (relative to the project dir) pointing at `target` stays inside,
/// whatever the other links are (chain-proof, finding L1: see [`link_stays_inside`]).
/// Absolute targets are refused even when they point inside: the project dir's absolute path
/// changes from job to job, so they would dangle or, worse, point at another job's checkout.
pub(crate) fn symlink_stays_inside(link: &Path, target: &Path) -> bool {
    link_stays_inside(link, target)
}

/// Picks the entries matching `patterns` (globs relative to the project dir, `**` crosses
/// directories, `*` does not) or listed in `untracked`. A matched directory brings its whole
/// subtree. Symlinks are listed but never followed.
pub(crate) fn select(
    project_dir: &Path,
    patterns: &[String],
    untracked: &[PathBuf],
) -> Result<Selection, ArchiveError> {
    let mut selection = Selection::default();
    let mut builder = GlobSetBuilder::new();
    let mut kept = Vec::new();
    for pattern in patterns {
        let trimmed = pattern.trim().trim_end_matches('/');
        let trimmed = trimmed.strip_prefix("./").unwrap_or(trimmed);
        let Some(clean) = clean_relative(Path::new(trimmed)).filter(|p| !p.as_os_str().is_empty())
        else {
            selection.refused.push(pattern.clone());
            continue;
        };
        // A pattern with `..` that stays inside is still refused: gitlab-runner rejects
        // anything that is not plainly under the project dir, and it keeps matching simple.
        if trimmed.split('/').any(|c| c == "..") {
            selection.refused.push(pattern.clone());
            continue;
        }
        match GlobBuilder::new(&clean.to_string_lossy())
            .literal_separator(true)
            .build()
        {
            Ok(glob) => {
                builder.add(glob);
                kept.push(pattern.clone());
            }
            Err(_) => selection.refused.push(pattern.clone()),
        }
    }
    let globs: GlobSet = builder.build().unwrap_or_else(|_| GlobSet::empty());
    let mut counts = vec![0usize; kept.len()];
    let untracked: HashSet<PathBuf> = untracked
        .iter()
        .filter_map(|p| clean_relative(p))
        .filter(|p| !p.as_os_str().is_empty())
        .collect();

    let walker = walkdir::WalkDir::new(project_dir)
        .follow_links(false)
        .min_depth(1)
        .sort_by_file_name();
    for entry in walker {
        let Ok(entry) = entry else {
            // Unreadable entries are skipped; the trace shows only what was archived.
            continue;
        };
        let Ok(rel) = entry.path().strip_prefix(project_dir) else {
            continue;
        };
        let mut hit_patterns = HashSet::new();
        let mut hit_untracked = false;
        for ancestor in rel.ancestors().filter(|a| !a.as_os_str().is_empty()) {
            hit_patterns.extend(globs.matches(ancestor));
            hit_untracked |= untracked.contains(ancestor);
        }
        if hit_patterns.is_empty() && !hit_untracked {
            continue;
        }
        for index in hit_patterns {
            counts[index] += 1;
        }
        if hit_untracked {
            selection.untracked += 1;
        }
        selection.entries.push(rel.to_path_buf());
    }
    selection.per_pattern = kept.into_iter().zip(counts).collect();
    Ok(selection)
}

/// The project dir's handle: the project dir itself must not be a link (its parent,
/// `builds_dir`, is runner config).
fn open_root(project_dir: &Path) -> Result<Dir, ArchiveError> {
    Dir::open_job_dir(project_dir).map_err(|e| ArchiveError::ProjectDir {
        path: project_dir.to_path_buf(),
        source: io::Error::other(e),
    })
}

/// Opens the directory `rel` below `root` without following any link on the way; with
/// `create`, missing directories are made (0755).
fn open_dir_beneath(root: &Dir, rel: &Path, create: bool) -> nix::Result<Dir> {
    let r = if create {
        root.create_dirs(rel, 0o755)
    } else {
        root.open_dir(rel)
    };
    r.map_err(|e| e.errno().unwrap_or(Errno::EIO))
}

/// Splits a relative path into its parent and its last component.
fn split(rel: &Path) -> Option<(&Path, &std::ffi::OsStr)> {
    Some((rel.parent().unwrap_or(Path::new("")), rel.file_name()?))
}

/// A reader that yields exactly `len` bytes: the file's bytes, cut or zero-padded. A file that
/// grows or shrinks while we archive it must not corrupt the tar stream.
struct ExactLen<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for ExactLen<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = usize::try_from(self.left)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let got = self.inner.read(&mut buf[..want])?;
        let got = if got == 0 {
            buf[..want].fill(0);
            want
        } else {
            got
        };
        self.left -= got as u64;
        Ok(got)
    }
}

/// Result of writing one archive.
#[derive(Debug, Default)]
pub(crate) struct Written {
    /// Entries stored.
    pub entries: usize,
    /// Size of the archive in bytes.
    pub bytes: u64,
    /// Warnings for the trace (skipped symlinks, vanished files).
    pub warnings: Vec<String>,
}

fn warn(warnings: &mut Vec<String>, skipped: &mut usize, line: String) {
    if warnings.len() < MAX_WARNINGS {
        warnings.push(line);
    } else {
        *skipped += 1;
    }
}

fn mtime_of(stat: &nix::sys::stat::FileStat) -> u64 {
    u64::try_from(stat.st_mtime).unwrap_or(0)
}

/// Writes the selected entries of `project_dir` to `dest` atomically: a temp file in the same
/// directory, fsync, rename, fsync of the directory. Readers see the old archive or the new one,
/// never a torn file, and a crash leaves only a `.tmp-*` file that `prune` removes.
pub(crate) fn create(
    project_dir: &Path,
    entries: &[PathBuf],
    dest: &Path,
) -> Result<Written, ArchiveError> {
    let write_err = |source: io::Error| ArchiveError::Write {
        path: dest.to_path_buf(),
        source,
    };
    let dir = dest.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(write_err)?;
    let tmp = dir.join(format!(".tmp-{}.partial", uuid::Uuid::new_v4()));
    let result = write_tar(project_dir, entries, &tmp).and_then(|written| {
        std::fs::rename(&tmp, dest)?;
        // Make the rename itself durable before we report success.
        File::open(dir)?.sync_all()?;
        Ok(written)
    });
    match result {
        Ok(mut written) => {
            written.bytes = std::fs::metadata(dest).map(|m| m.len()).unwrap_or(0);
            Ok(written)
        }
        Err(source) => {
            // Best effort: a leftover temp file is harmless and pruned later.
            let _ = std::fs::remove_file(&tmp);
            Err(write_err(source))
        }
    }
}

fn write_tar(project_dir: &Path, entries: &[PathBuf], tmp: &Path) -> io::Result<Written> {
    let root = open_root(project_dir).map_err(io::Error::other)?;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)?;
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let mut written = Written::default();
    let mut skipped = 0usize;
    for rel in entries {
        let Some((parent_rel, name)) = split(rel) else {
            continue;
        };
        let parent = match open_dir_beneath(&root, parent_rel, false) {
            Ok(fd) => fd,
            Err(errno) => {
                warn(
                    &mut written.warnings,
                    &mut skipped,
                    format!("WARNING: {}: skipped ({errno})", rel.display()),
                );
                continue;
            }
        };
        let Ok(stat) = fstatat(parent.fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) else {
            continue; // vanished since the walk
        };
        let kind = SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits());
        let perm = stat.st_mode & 0o777;
        let mut header = tar::Header::new_gnu();
        header.set_mtime(mtime_of(&stat));
        header.set_mode(perm);
        if kind == SFlag::S_IFDIR {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            tar.append_data(&mut header, rel, io::empty())?;
        } else if kind == SFlag::S_IFREG {
            let fd = match openat(
                parent.fd(),
                name,
                OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
                Mode::empty(),
            ) {
                Ok(fd) => fd,
                Err(errno) => {
                    warn(
                        &mut written.warnings,
                        &mut skipped,
                        format!("WARNING: {}: skipped ({errno})", rel.display()),
                    );
                    continue;
                }
            };
            let file = File::from(fd);
            let meta = file.metadata()?;
            // Swapped for something else between fstatat and open: skip it.
            if !meta.is_file() {
                continue;
            }
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(meta.len());
            let reader = ExactLen {
                inner: file,
                left: meta.len(),
            };
            tar.append_data(&mut header, rel, reader)?;
        } else if kind == SFlag::S_IFLNK {
            let target = PathBuf::from(readlinkat(parent.fd(), name).map_err(io::Error::from)?);
            if !symlink_stays_inside(rel, &target) {
                warn(
                    &mut written.warnings,
                    &mut skipped,
                    format!(
                        "WARNING: {}: symlink to {} points outside the project dir, not cached",
                        rel.display(),
                        target.display()
                    ),
                );
                continue;
            }
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            tar.append_link(&mut header, rel, &target)?;
        } else {
            warn(
                &mut written.warnings,
                &mut skipped,
                format!(
                    "WARNING: {}: not a file, directory or symlink, not cached",
                    rel.display()
                ),
            );
            continue;
        }
        written.entries += 1;
    }
    if skipped > 0 {
        written
            .warnings
            .push(format!("WARNING: {skipped} more entries skipped"));
    }
    let gz = tar.into_inner()?;
    let file = gz.finish()?;
    file.sync_all()?;
    Ok(written)
}

/// Result of unpacking one archive.
#[derive(Debug, Default)]
pub(crate) struct Extracted {
    /// Entries written.
    pub entries: usize,
    /// Refused or failed entries, for the trace.
    pub warnings: Vec<String>,
}

/// Unpacks `archive` into `project_dir`. Refuses absolute paths, `..`, hard links, devices and
/// any write through a symlink (planted in the checkout or created by an earlier entry), with a
/// warning per refused entry; never fails the job for them.
pub(crate) fn extract(archive: &Path, project_dir: &Path) -> Result<Extracted, ArchiveError> {
    let read_err = |source: io::Error| ArchiveError::Read {
        path: archive.to_path_buf(),
        source,
    };
    let root = open_root(project_dir)?;
    let file = File::open(archive).map_err(read_err)?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(io::BufReader::new(file)));
    let mut out = Extracted::default();
    let mut skipped = 0usize;
    for entry in tar.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        let raw = entry.path().map_err(read_err)?.into_owned();
        let Some(rel) = archive_entry_path(&raw) else {
            warn(
                &mut out.warnings,
                &mut skipped,
                format!("WARNING: {}: refused (absolute or with ..)", raw.display()),
            );
            continue;
        };
        let header = entry.header();
        let mode = header.mode().unwrap_or(0o644) & 0o777;
        let mtime = header.mtime().unwrap_or(0);
        let kind = header.entry_type();
        let link = entry.link_name().map_err(read_err)?.map(|l| l.into_owned());
        let result = match kind {
            tar::EntryType::Directory => extract_dir(&root, &rel, mode),
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                extract_file(&root, &rel, mode, mtime, &mut entry)
            }
            tar::EntryType::Symlink => match link {
                Some(target) if symlink_stays_inside(&rel, &target) => {
                    extract_symlink(&root, &rel, &target)
                }
                _ => Err(io::Error::other("symlink points outside the project dir")),
            },
            _ => Err(io::Error::other("unsupported entry type")),
        };
        match result {
            Ok(()) => out.entries += 1,
            Err(e) => warn(
                &mut out.warnings,
                &mut skipped,
                format!("WARNING: {}: not extracted ({e})", rel.display()),
            ),
        }
    }
    if skipped > 0 {
        out.warnings
            .push(format!("WARNING: {skipped} more entries not extracted"));
    }
    Ok(out)
}

fn with_context(errno: Errno) -> io::Error {
    if errno == Errno::ELOOP || errno == Errno::ENOTDIR {
        io::Error::other("a path component is a symlink or not a directory, refusing to follow it")
    } else {
        io::Error::from(errno)
    }
}

fn extract_dir(root: &Dir, rel: &Path, mode: u32) -> io::Result<()> {
    let dir = open_dir_beneath(root, rel, true).map_err(with_context)?;
    let fd = dir.fd().try_clone_to_owned()?;
    // Keep directories writable by us so later entries can land in them.
    File::from(fd).set_permissions(std::fs::Permissions::from_mode(mode | 0o700))
}

/// Removes whatever non-directory sits at `name` (a stale file or a planted symlink) so the
/// following `O_EXCL` create cannot be redirected.
fn clear_slot(parent: &Dir, name: &std::ffi::OsStr) -> io::Result<()> {
    match fstatat(parent.fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(stat) => {
            let kind = SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits());
            if kind == SFlag::S_IFDIR {
                return Err(io::Error::other("a directory is in the way"));
            }
            unlinkat(parent.fd(), name, UnlinkatFlags::NoRemoveDir).map_err(io::Error::from)
        }
        Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(io::Error::from(e)),
    }
}

fn extract_file(
    root: &Dir,
    rel: &Path,
    mode: u32,
    mtime: u64,
    data: &mut impl Read,
) -> io::Result<()> {
    let (parent_rel, name) = split(rel).ok_or_else(|| io::Error::other("empty path"))?;
    let parent = open_dir_beneath(root, parent_rel, true).map_err(with_context)?;
    clear_slot(&parent, name)?;
    let fd = openat(
        parent.fd(),
        name,
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
    .map_err(with_context)?;
    let mut file = File::from(fd);
    io::copy(data, &mut file)?;
    file.flush()?;
    file.set_permissions(std::fs::Permissions::from_mode(mode))?;
    file.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(mtime))?;
    Ok(())
}

fn extract_symlink(root: &Dir, rel: &Path, target: &Path) -> io::Result<()> {
    let (parent_rel, name) = split(rel).ok_or_else(|| io::Error::other("empty path"))?;
    let parent = open_dir_beneath(root, parent_rel, true).map_err(with_context)?;
    clear_slot(&parent, name)?;
    symlinkat(target, parent.fd(), name).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_relative_refuses_escapes() {
        assert_eq!(
            clean_relative(Path::new("a/./b")),
            Some(PathBuf::from("a/b"))
        );
        assert_eq!(
            clean_relative(Path::new("a/../b")),
            Some(PathBuf::from("b"))
        );
        assert_eq!(clean_relative(Path::new("../a")), None);
        assert_eq!(clean_relative(Path::new("/etc")), None);
    }

    #[test]
    fn archive_paths_with_dotdot_are_refused_even_if_they_stay_inside() {
        assert_eq!(archive_entry_path(Path::new("a/../b")), None);
        assert_eq!(archive_entry_path(Path::new("/a")), None);
        assert_eq!(
            archive_entry_path(Path::new("./a")),
            Some(PathBuf::from("a"))
        );
        assert_eq!(archive_entry_path(Path::new(".")), None);
    }

    #[test]
    fn symlink_targets() {
        assert!(symlink_stays_inside(Path::new("a/l"), Path::new("../b")));
        assert!(symlink_stays_inside(Path::new("l"), Path::new("b/c")));
        assert!(!symlink_stays_inside(
            Path::new("a/l"),
            Path::new("../../b")
        ));
        assert!(!symlink_stays_inside(
            Path::new("l"),
            Path::new("/etc/passwd")
        ));
    }

    /// Finding L1: `s -> .` then `up -> s/..` is lexically inside, but leaves the tree once
    /// `s` is followed. Refused when archiving and when extracting.
    #[test]
    fn symlink_chains_cannot_escape() {
        assert!(symlink_stays_inside(Path::new("s"), Path::new(".")));
        assert!(!symlink_stays_inside(Path::new("up"), Path::new("s/..")));
        assert!(!symlink_stays_inside(
            Path::new("a/up"),
            Path::new("s/../..")
        ));
        let t = tempfile::tempdir().expect("tempdir");
        let proj = t.path().join("gitlab-job-1");
        std::fs::create_dir(&proj).expect("mkdir");
        std::os::unix::fs::symlink(".", proj.join("s")).expect("link");
        std::os::unix::fs::symlink("s/..", proj.join("up")).expect("link");
        let dest = t.path().join("cache/a.tar.gz");
        let entries = vec![PathBuf::from("s"), PathBuf::from("up")];
        let written = create(&proj, &entries, &dest).expect("create");
        assert_eq!(written.entries, 1, "{:?}", written.warnings);
        assert!(written.warnings.iter().any(|w| w.contains("up")));
        // An archive carrying the chain (made by hand) does not recreate `up` either.
        let out = t.path().join("gitlab-job-2");
        std::fs::create_dir(&out).expect("mkdir");
        let crafted = t.path().join("crafted.tar.gz");
        {
            let f = File::create(&crafted).expect("create");
            let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
                f,
                flate2::Compression::fast(),
            ));
            for (name, target) in [("s", "."), ("up", "s/..")] {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, name, target).expect("append");
            }
            b.into_inner().expect("tar").finish().expect("gz");
        }
        let got = extract(&crafted, &out).expect("extract");
        assert_eq!(got.entries, 1, "{:?}", got.warnings);
        assert!(std::fs::symlink_metadata(out.join("up")).is_err());
    }

    #[test]
    fn exact_len_pads_and_cuts() {
        let mut out = Vec::new();
        ExactLen {
            inner: &b"abc"[..],
            left: 5,
        }
        .read_to_end(&mut out)
        .expect("read");
        assert_eq!(out, b"abc\0\0");
        let mut out = Vec::new();
        ExactLen {
            inner: &b"abcdef"[..],
            left: 2,
        }
        .read_to_end(&mut out)
        .expect("read");
        assert_eq!(out, b"ab");
    }
}
