//! Artifacts: collecting files into archives, handing them to an [`ArtifactStore`], and
//! extracting dependencies' archives safely.
//!
//! Collection never follows a symlink: a symlink inside the job directory is stored as a
//! symlink (its target text, never the file it points to), a directory reached only through a
//! symlink is not walked, and patterns that leave the project directory (`..`, absolute paths
//! elsewhere) are refused. Extraction refuses `..`, absolute names, and symlinks whose target
//! would leave the project directory, and never writes through an existing symlink.

use crate::gitlab::types::{Artifact, Dependency};
use crate::paths::{Dir, Kind, PATH_MAX, link_stays_inside};
use crate::secret::Secret;
use globset::{Glob, GlobSet, GlobSetBuilder};
use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::ffi::OsStringExt;
use std::path::{Component, Path, PathBuf};

/// Errors of artifact work.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// A file could not be read or written.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A pattern or archive entry was refused.
    #[error("refused {what}: {why}")]
    Refused {
        /// The pattern or entry.
        what: String,
        /// Why.
        why: String,
    },
    /// The zip archive is broken.
    #[error("archive {path}: {detail}")]
    Archive {
        /// Archive path.
        path: PathBuf,
        /// The cause.
        detail: String,
    },
    /// The store (GitLab, local dir) failed.
    #[error("artifact store: {0}")]
    Store(String),
    /// The store has no archive for this dependency.
    #[error("no artifacts for job {0}")]
    NotFound(u64),
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ArtifactError {
    let context = context.into();
    move |source| ArtifactError::Io { context, source }
}

/// The job an upload or download is for.
#[derive(Debug, Clone)]
pub struct JobRef {
    /// Job id.
    pub id: u64,
    /// Job name.
    pub name: String,
    /// Job token, authenticates the call.
    pub token: Secret,
}

/// Where artifacts go and come from: GitLab for `runner run`, a local directory for `exec`.
#[async_trait::async_trait]
pub trait ArtifactStore: Send + Sync {
    /// Uploads the archive in the open file `archive` (already in the entry's format, read
    /// from its start; rewound for each try) for one `artifacts[]` entry of `job`. `file_name`
    /// is what GitLab expects as the multipart file name. A file, not a path: the runner built
    /// the archive in its private staging dir and uploads exactly what it wrote (finding C1).
    async fn upload(
        &self,
        job: &JobRef,
        artifact: &Artifact,
        archive: &File,
        file_name: &str,
    ) -> Result<(), ArtifactError>;

    /// Downloads the archive of `dependency` into the open, empty file `dest` (created by the
    /// runner in its private staging dir).
    async fn download(
        &self,
        job: &JobRef,
        dependency: &Dependency,
        dest: &File,
    ) -> Result<(), ArtifactError>;
}

/// Archive name of an entry: `<name>.zip`, `<name>.gz` or `<name>` (raw).
pub fn archive_file_name(artifact: &Artifact) -> String {
    let name = artifact
        .name
        .as_deref()
        .filter(|n| !n.is_empty())
        .unwrap_or("artifacts");
    // A name is a file name, never a path.
    let name = name.replace(['/', '\\'], "_");
    match artifact_format(artifact) {
        "gzip" => format!("{name}.gz"),
        "raw" => name,
        _ => format!("{name}.zip"),
    }
}

/// The entry's format, `zip` when empty.
pub fn artifact_format(artifact: &Artifact) -> &str {
    if artifact.artifact_format.is_empty() {
        "zip"
    } else {
        artifact.artifact_format.as_str()
    }
}

/// Normalises a pattern relative to the project dir; refuses ones that leave it.
fn normalize_pattern(pattern: &str, project_dir: &Path) -> Result<String, ArtifactError> {
    let mut p = pattern.trim().to_string();
    if Path::new(&p).is_absolute() {
        match Path::new(&p).strip_prefix(project_dir) {
            Ok(rel) => p = rel.to_string_lossy().into_owned(),
            Err(_) => {
                return Err(ArtifactError::Refused {
                    what: pattern.to_string(),
                    why: "absolute path outside the project directory".into(),
                });
            }
        }
    }
    let mut parts = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                return Err(ArtifactError::Refused {
                    what: pattern.to_string(),
                    why: "paths may not leave the project directory with '..'".into(),
                });
            }
            c => parts.push(c),
        }
    }
    Ok(parts.join("/"))
}

fn globset(patterns: &[String]) -> Result<GlobSet, ArtifactError> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        let g = globset::GlobBuilder::new(p)
            .literal_separator(true)
            .build()
            .or_else(|_| Glob::new(&globset::escape(p)))
            .map_err(|e| ArtifactError::Refused {
                what: p.clone(),
                why: e.to_string(),
            })?;
        b.add(g);
    }
    b.build().map_err(|e| ArtifactError::Refused {
        what: patterns.join(","),
        why: e.to_string(),
    })
}

/// True when `rel` or one of its ancestors matches (a matched directory brings its contents).
fn matches_self_or_ancestor(set: &GlobSet, rel: &Path) -> bool {
    let mut cur = Some(rel);
    while let Some(p) = cur {
        if p.as_os_str().is_empty() {
            break;
        }
        if set.is_match(p) {
            return true;
        }
        cur = p.parent();
    }
    false
}

/// The literal directory prefix of a glob (`dist/*.js` → `dist`).
fn literal_base(pattern: &str) -> PathBuf {
    let mut base = PathBuf::new();
    for c in pattern.split('/') {
        if c.contains(['*', '?', '[', '{']) {
            break;
        }
        base.push(c);
    }
    base
}

/// What collection found.
#[derive(Debug, Default)]
pub struct Collected {
    /// Relative paths, sorted.
    pub files: Vec<PathBuf>,
    /// Warnings for the trace (refused patterns, patterns that matched nothing).
    pub warnings: Vec<String>,
}

/// Collects the files of one entry (blocking). `project_dir` is the path jobs see (absolute
/// patterns are taken relative to it); `root` is the handle every listing goes through, so a
/// directory reached through a symlink is never walked, whatever the job swaps while we walk.
/// `untracked` is the list git gave for untracked files when the entry asks for them.
pub fn collect(
    project_dir: &Path,
    root: &Dir,
    paths: &[String],
    exclude: &[String],
    untracked: &[PathBuf],
) -> Result<Collected, ArtifactError> {
    let mut out = Collected::default();
    let mut patterns = Vec::new();
    for p in paths {
        match normalize_pattern(p, project_dir) {
            Ok(n) => patterns.push(n),
            Err(e) => out.warnings.push(e.to_string()),
        }
    }
    let mut excludes = Vec::new();
    for p in exclude {
        match normalize_pattern(p, project_dir) {
            Ok(n) => excludes.push(n),
            Err(e) => out.warnings.push(e.to_string()),
        }
    }
    let include_set = globset(&patterns)?;
    let exclude_set = globset(&excludes)?;
    let mut found: BTreeSet<PathBuf> = BTreeSet::new();
    let consider = |rel: PathBuf, found: &mut BTreeSet<PathBuf>| {
        if !matches_self_or_ancestor(&exclude_set, &rel) {
            found.insert(rel);
        }
    };
    for pattern in &patterns {
        let base = literal_base(pattern);
        let mut any = false;
        let kind = if base.as_os_str().is_empty() {
            Ok(Kind::Dir)
        } else {
            root.stat(&base).map(|st| Kind::of(&st))
        };
        match kind {
            Ok(Kind::Dir) => {
                for rel in walk(root, &base) {
                    if matches_self_or_ancestor(&include_set, &rel) {
                        any = true;
                        consider(rel, &mut found);
                    }
                }
            }
            // A file or a link at the base itself: the entry (a link is stored as a link).
            Ok(_) => {
                if matches_self_or_ancestor(&include_set, &base) {
                    any = true;
                    consider(base.clone(), &mut found);
                }
            }
            Err(e) if e.is_redirect() => {
                out.warnings.push(format!(
                    "{pattern}: not collected, a directory on its path is a symlink"
                ));
                continue;
            }
            Err(_) => {}
        }
        if !any {
            out.warnings.push(format!("{pattern}: no matching files"));
        }
    }
    for rel in untracked {
        let rel = match normalize_pattern(&rel.to_string_lossy(), project_dir) {
            Ok(r) if !r.is_empty() => PathBuf::from(r),
            _ => continue,
        };
        match root.stat(&rel).map(|st| Kind::of(&st)) {
            Ok(Kind::Dir) => {
                for r in walk(root, &rel) {
                    consider(r, &mut found);
                }
            }
            Ok(_) => consider(rel, &mut found),
            // Through a link or gone: not collected.
            Err(_) => {}
        }
    }
    out.files = found.into_iter().collect();
    Ok(out)
}

/// Lists `base` (a directory below `root`) and everything under it, `base` first, through
/// handles: each subdirectory is opened from its parent's descriptor without following links,
/// so a symlinked directory is listed as an entry and never entered. Unreadable or vanished
/// parts are skipped.
fn walk(root: &Dir, base: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if !base.as_os_str().is_empty() {
        out.push(base.to_path_buf());
    }
    let Ok(start) = root.open_dir(base) else {
        return out;
    };
    let mut stack = vec![(start, base.to_path_buf())];
    while let Some((dir, rel)) = stack.pop() {
        let Ok(mut names) = dir.list() else {
            continue;
        };
        names.sort();
        for name in names {
            let child = rel.join(&name);
            let Ok(st) = dir.stat(Path::new(&name)) else {
                continue;
            };
            out.push(child.clone());
            if Kind::of(&st) == Kind::Dir
                && let Ok(sub) = dir.open_dir(Path::new(&name))
            {
                stack.push((sub, child));
            }
        }
    }
    out
}

/// What writing one archive did.
#[derive(Debug, Default)]
pub struct Built {
    /// Entries stored.
    pub entries: usize,
    /// Entries skipped, for the trace (a parent swapped for a link, not a regular file, …).
    pub warnings: Vec<String>,
}

/// At most this many per-entry warnings per archive; the rest are counted.
const MAX_WARNINGS: usize = 20;

impl Built {
    fn skip(&mut self, skipped: &mut usize, line: String) {
        if self.warnings.len() < MAX_WARNINGS {
            self.warnings.push(line);
        } else {
            *skipped += 1;
        }
    }

    fn finish(mut self, skipped: usize) -> Built {
        if skipped > 0 {
            self.warnings
                .push(format!("{skipped} more entries skipped"));
        }
        self
    }
}

/// Writes a zip of `files` (relative to `root`) into `out` (blocking). Symlinks are stored as
/// symlinks; directories as directory entries. Every entry is stat'ed and opened through
/// `root` without following any link on its path, so an entry whose parent was swapped for a
/// link since the listing is skipped with a warning, never read through the link; a regular
/// file is read only up to the size it had when opened.
pub fn write_zip(root: &Dir, files: &[PathBuf], out: &File) -> Result<Built, ArtifactError> {
    write_zip_with(root, files, out, &mut |_| {})
}

/// [`write_zip`] with a hook run before each entry is opened (tests play a racing job in it).
pub fn write_zip_with(
    root: &Dir,
    files: &[PathBuf],
    out: &File,
    between: &mut dyn FnMut(&Path),
) -> Result<Built, ArtifactError> {
    let shown = root.shown().to_path_buf();
    let zerr = |e: zip::result::ZipError| ArtifactError::Archive {
        path: shown.clone(),
        detail: e.to_string(),
    };
    let mut zip = zip::ZipWriter::new(std::io::BufWriter::new(out));
    let mut built = Built::default();
    let mut skipped = 0usize;
    for rel in files {
        between(rel);
        let st = match root.stat(rel) {
            Ok(st) => st,
            Err(e) if e.errno() == Some(nix::errno::Errno::ENOENT) => continue,
            Err(e) => {
                built.skip(&mut skipped, format!("{}: skipped ({e})", rel.display()));
                continue;
            }
        };
        let name = rel.to_string_lossy().replace('\\', "/");
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .unix_permissions(st.st_mode & 0o777);
        match Kind::of(&st) {
            Kind::Symlink => {
                let target = match root.readlink(rel) {
                    Ok(t) => t,
                    Err(e) => {
                        built.skip(&mut skipped, format!("{}: skipped ({e})", rel.display()));
                        continue;
                    }
                };
                zip.add_symlink(name, target.to_string_lossy(), opts)
                    .map_err(zerr)?;
            }
            Kind::Dir => zip.add_directory(format!("{name}/"), opts).map_err(zerr)?,
            Kind::File => {
                let src = match root.open_regular(rel) {
                    Ok(f) => f,
                    Err(e) => {
                        built.skip(&mut skipped, format!("{}: skipped ({e})", rel.display()));
                        continue;
                    }
                };
                let len = src
                    .metadata()
                    .map_err(io_err(format!("stat {}", rel.display())))?
                    .len();
                zip.start_file(name, opts).map_err(zerr)?;
                std::io::copy(&mut src.take(len), &mut zip)
                    .map_err(io_err(format!("read {}", rel.display())))?;
            }
            Kind::Other => continue,
        }
        built.entries += 1;
    }
    let mut w = zip.finish().map_err(zerr)?;
    w.flush().map_err(io_err("write the archive"))?;
    Ok(built.finish(skipped))
}

/// Builds the archive of one entry in its format into `out` (blocking): zip; gzip, every file
/// as its own gzip member (named after the file) one after the other, as gitlab-runner's gzip
/// archiver writes reports with several files (GitLab reads every member); raw, the first
/// regular file, copied (raw holds one file). Files are read through `root` only.
pub fn build_archive(
    artifact: &Artifact,
    root: &Dir,
    files: &[PathBuf],
    out: &File,
) -> Result<Built, ArtifactError> {
    match artifact_format(artifact) {
        "zip" => write_zip(root, files, out),
        fmt @ ("gzip" | "raw") => {
            let mut built = Built::default();
            let mut skipped = 0;
            for rel in files {
                // The listing saw a regular file here; the open checks it again on the
                // descriptor, never through a link.
                let src = match root.open_regular(rel) {
                    Ok(f) => f,
                    Err(e) if e.is_redirect() => {
                        built.skip(&mut skipped, format!("{}: skipped ({e})", rel.display()));
                        continue;
                    }
                    Err(_) => continue,
                };
                let len = src
                    .metadata()
                    .map_err(io_err(format!("stat {}", rel.display())))?
                    .len();
                let mut src = src.take(len);
                if fmt == "gzip" {
                    let mut gz = flate2::GzBuilder::new()
                        .filename(rel.to_string_lossy().as_bytes())
                        .write(out, flate2::Compression::default());
                    std::io::copy(&mut src, &mut gz).map_err(io_err("gzip"))?;
                    gz.finish().map_err(io_err("gzip"))?;
                    built.entries += 1;
                } else {
                    let mut w = out;
                    std::io::copy(&mut src, &mut w).map_err(io_err("copy"))?;
                    built.entries = 1;
                    break;
                }
            }
            Ok(built.finish(skipped))
        }
        other => Err(ArtifactError::Refused {
            what: format!("artifact_format {other}"),
            why: "unknown format".into(),
        }),
    }
}

/// Extracts the zip in `archive` (read from its start) into the directory `dest` (blocking).
/// Entries with `..` or absolute names, symlinks whose target could leave `dest`
/// ([`crate::paths::link_stays_inside`]) or is longer than `PATH_MAX`, are refused with a
/// warning. Everything goes through `dest`: directories made one component at a time, files
/// created `O_EXCL` in a parent reached without following links (a planted or earlier-extracted
/// link on the way refuses the entry), links made with `symlinkat` and never followed.
pub fn extract_zip(archive: &File, dest: &Dir) -> Result<(usize, Vec<String>), ArtifactError> {
    let shown = dest.shown().to_path_buf();
    let aerr = |e: zip::result::ZipError| ArtifactError::Archive {
        path: shown.clone(),
        detail: e.to_string(),
    };
    let mut reader = archive;
    reader
        .seek(std::io::SeekFrom::Start(0))
        .map_err(io_err("rewind the archive"))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(reader)).map_err(aerr)?;
    let mut warnings = Vec::new();
    let mut n = 0;
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(aerr)?;
        let raw_name = entry.name().map(|n| n.into_owned()).unwrap_or_default();
        let Some(rel) = entry.enclosed_name() else {
            warnings.push(format!(
                "refused archive entry {raw_name:?}: it would leave the project directory"
            ));
            continue;
        };
        if rel.as_os_str().is_empty()
            || rel.components().any(|c| !matches!(c, Component::Normal(_)))
        {
            warnings.push(format!("refused archive entry {raw_name:?}"));
            continue;
        }
        let refuse = |why: String| format!("refused archive entry {raw_name:?}: {why}");
        if entry.is_dir() {
            match dest.create_dirs(&rel, 0o755) {
                Ok(_) => n += 1,
                Err(e) => warnings.push(refuse(e.to_string())),
            }
            continue;
        }
        let parent_rel = rel.parent().unwrap_or(Path::new(""));
        let Some(name) = rel.file_name().map(Path::new) else {
            continue;
        };
        let parent = match dest.create_dirs(parent_rel, 0o755) {
            Ok(d) => d,
            Err(e) => {
                warnings.push(refuse(format!(
                    "a parent directory is a symlink or not a directory ({e})"
                )));
                continue;
            }
        };
        // Whatever non-directory is in the way (a stale file, a planted link) goes, so the
        // create below starts from nothing; O_EXCL refuses anything put back meanwhile.
        match parent.stat(name) {
            Ok(st) if Kind::of(&st) == Kind::Dir => {
                warnings.push(refuse("a directory is in the way".into()));
                continue;
            }
            Ok(_) => {
                if let Err(e) = parent.unlink(name) {
                    warnings.push(refuse(e.to_string()));
                    continue;
                }
            }
            Err(_) => {}
        }
        if entry.is_symlink() {
            // Bounded: the "target" of a crafted entry can be a deflate bomb.
            let mut target = Vec::new();
            (&mut entry)
                .take(PATH_MAX as u64)
                .read_to_end(&mut target)
                .map_err(io_err(format!("read entry {raw_name}")))?;
            if target.len() >= PATH_MAX {
                warnings.push(refuse("its symlink target is longer than PATH_MAX".into()));
                continue;
            }
            let target = PathBuf::from(std::ffi::OsString::from_vec(target));
            if !link_stays_inside(&rel, &target) {
                warnings.push(format!(
                    "refused symlink {raw_name:?} -> {:?}: it points outside the project directory",
                    target.display()
                ));
                continue;
            }
            if let Err(e) = parent.symlink(&target, name) {
                warnings.push(refuse(e.to_string()));
                continue;
            }
        } else {
            let mut w = match parent.create_new(name, 0o600) {
                Ok(f) => f,
                Err(e) => {
                    warnings.push(refuse(e.to_string()));
                    continue;
                }
            };
            std::io::copy(&mut entry, &mut w)
                .map_err(io_err(format!("write {}", rel.display())))?;
            if let Some(mode) = entry.unix_mode() {
                use std::os::unix::fs::PermissionsExt;
                // Never restore setuid/setgid/sticky bits from an archive. On the descriptor.
                let _ = w.set_permissions(std::fs::Permissions::from_mode(mode & 0o777));
            }
        }
        n += 1;
    }
    Ok((n, warnings))
}

/// A store in a local directory: `<root>/<job name>/<file name>` (`runner exec`).
#[derive(Debug, Clone)]
pub struct LocalArtifactStore {
    /// Root directory, e.g. `./.runner-artifacts`.
    pub root: PathBuf,
}

fn safe_component(s: &str) -> String {
    let s = s.replace(['/', '\\'], "_");
    if s.is_empty() || s == "." || s == ".." {
        "_".to_string()
    } else {
        s
    }
}

#[async_trait::async_trait]
impl ArtifactStore for LocalArtifactStore {
    async fn upload(
        &self,
        job: &JobRef,
        _artifact: &Artifact,
        archive: &File,
        file_name: &str,
    ) -> Result<(), ArtifactError> {
        let dir = self.root.join(safe_component(&job.name));
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(io_err(format!("mkdir {}", dir.display())))?;
        let to = dir.join(safe_component(file_name));
        let mut from = archive
            .try_clone()
            .map_err(io_err("reopen the staged archive"))?;
        tokio::task::spawn_blocking(move || {
            from.seek(std::io::SeekFrom::Start(0))?;
            let mut out = File::create(&to)?;
            std::io::copy(&mut from, &mut out).map(|_| ())
        })
        .await
        .map_err(|e| ArtifactError::Store(e.to_string()))?
        .map_err(io_err("copy the archive to the local store"))
    }

    async fn download(
        &self,
        _job: &JobRef,
        dependency: &Dependency,
        dest: &File,
    ) -> Result<(), ArtifactError> {
        let from = self
            .root
            .join(safe_component(&dependency.name))
            .join("artifacts.zip");
        if !tokio::fs::try_exists(&from).await.unwrap_or(false) {
            return Err(ArtifactError::NotFound(dependency.id));
        }
        let mut to = dest.try_clone().map_err(io_err("reopen the staged file"))?;
        let shown = from.display().to_string();
        tokio::task::spawn_blocking(move || {
            let mut src = File::open(&from)?;
            std::io::copy(&mut src, &mut to).map(|_| ())
        })
        .await
        .map_err(|e| ArtifactError::Store(e.to_string()))?
        .map_err(io_err(format!("copy {shown}")))
    }
}

/// Reads a zip fully into memory as (name, is_symlink, content) triples; for tests and checks.
pub fn list_zip(archive: &Path) -> Result<Vec<(String, bool, Vec<u8>)>, ArtifactError> {
    let f = std::fs::File::open(archive).map_err(io_err(format!("open {}", archive.display())))?;
    let aerr = |e: zip::result::ZipError| ArtifactError::Archive {
        path: archive.to_path_buf(),
        detail: e.to_string(),
    };
    let mut zip = zip::ZipArchive::new(f).map_err(aerr)?;
    let mut out = Vec::new();
    for i in 0..zip.len() {
        let mut e = zip.by_index(i).map_err(aerr)?;
        let name = e.name().map(|n| n.into_owned()).unwrap_or_default();
        let link = e.is_symlink();
        let mut data = Vec::new();
        e.read_to_end(&mut data).map_err(io_err("read entry"))?;
        out.push((name, link, data));
    }
    Ok(out)
}

#[cfg(test)]
#[path = "artifacts_tests.rs"]
mod tests;
