//! Artifacts: collecting files into archives, handing them to an [`ArtifactStore`], and
//! extracting dependencies' archives safely.
//!
//! Collection never follows a symlink: a symlink inside the job directory is stored as a
//! symlink (its target text, never the file it points to), a directory reached only through a
//! symlink is not walked, and patterns that leave the project directory (`..`, absolute paths
//! elsewhere) are refused. Extraction refuses `..`, absolute names, and symlinks whose target
//! would leave the project directory, and never writes through an existing symlink.

use crate::gitlab::types::{Artifact, Dependency};
use crate::secret::Secret;
use globset::{Glob, GlobSet, GlobSetBuilder};
use std::collections::BTreeSet;
use std::io::{Read, Write};
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
    /// Uploads the archive at `archive` (already in the entry's format) for one `artifacts[]`
    /// entry of `job`. `file_name` is what GitLab expects as the multipart file name.
    async fn upload(
        &self,
        job: &JobRef,
        artifact: &Artifact,
        archive: &Path,
        file_name: &str,
    ) -> Result<(), ArtifactError>;

    /// Downloads the archive of `dependency` into the file `dest`.
    async fn download(
        &self,
        job: &JobRef,
        dependency: &Dependency,
        dest: &Path,
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

/// True when some directory between `root` and `rel` (excluding `rel` itself) is a symlink.
fn through_symlink(root: &Path, rel: &Path) -> bool {
    let mut cur = root.to_path_buf();
    let comps: Vec<_> = rel.components().collect();
    for c in comps.iter().take(comps.len().saturating_sub(1)) {
        cur.push(c);
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => return true,
            Ok(_) => {}
            Err(_) => return true,
        }
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

/// Collects the files of one entry (blocking). `untracked` is the list git gave for untracked
/// files when the entry asks for them.
pub fn collect(
    project_dir: &Path,
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
        let start = project_dir.join(&base);
        if through_symlink(project_dir, &base) && !base.as_os_str().is_empty() {
            out.warnings.push(format!(
                "{pattern}: not collected, a directory on its path is a symlink or missing"
            ));
            continue;
        }
        let mut any = false;
        let walker = walkdir::WalkDir::new(&start)
            .follow_links(false)
            .follow_root_links(false);
        for entry in walker.into_iter().filter_map(Result::ok) {
            let Ok(rel) = entry.path().strip_prefix(project_dir) else {
                continue;
            };
            if rel.as_os_str().is_empty() {
                continue;
            }
            if matches_self_or_ancestor(&include_set, rel) {
                any = true;
                consider(rel.to_path_buf(), &mut found);
            }
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
        if through_symlink(project_dir, &rel) {
            continue;
        }
        consider(rel, &mut found);
    }
    out.files = found.into_iter().collect();
    Ok(out)
}

/// Writes a zip of `files` (relative to `project_dir`) to `dest` (blocking). Symlinks are stored
/// as symlinks; directories as directory entries.
pub fn write_zip(
    project_dir: &Path,
    files: &[PathBuf],
    dest: &Path,
) -> Result<usize, ArtifactError> {
    let f = std::fs::File::create(dest).map_err(io_err(format!("create {}", dest.display())))?;
    let mut zip = zip::ZipWriter::new(std::io::BufWriter::new(f));
    let zerr = |e: zip::result::ZipError| ArtifactError::Archive {
        path: dest.to_path_buf(),
        detail: e.to_string(),
    };
    let mut n = 0;
    for rel in files {
        let path = project_dir.join(rel);
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let name = rel.to_string_lossy().replace('\\', "/");
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o7777;
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .unix_permissions(mode);
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path)
                .map_err(io_err(format!("readlink {}", path.display())))?;
            zip.add_symlink(name, target.to_string_lossy(), opts)
                .map_err(zerr)?;
        } else if meta.is_dir() {
            zip.add_directory(format!("{name}/"), opts).map_err(zerr)?;
        } else if meta.is_file() {
            zip.start_file(name, opts).map_err(zerr)?;
            let mut src =
                std::fs::File::open(&path).map_err(io_err(format!("open {}", path.display())))?;
            std::io::copy(&mut src, &mut zip)
                .map_err(io_err(format!("read {}", path.display())))?;
        } else {
            continue;
        }
        n += 1;
    }
    let mut w = zip.finish().map_err(zerr)?;
    w.flush()
        .map_err(io_err(format!("write {}", dest.display())))?;
    Ok(n)
}

/// Builds the archive of one entry in its format (blocking): zip, gzip (first regular file) or
/// raw (first regular file, copied).
pub fn build_archive(
    artifact: &Artifact,
    project_dir: &Path,
    files: &[PathBuf],
    dest: &Path,
) -> Result<usize, ArtifactError> {
    match artifact_format(artifact) {
        "zip" => write_zip(project_dir, files, dest),
        fmt @ ("gzip" | "raw") => {
            let Some(first) = files.iter().find(|f| {
                std::fs::symlink_metadata(project_dir.join(f))
                    .map(|m| m.is_file())
                    .unwrap_or(false)
            }) else {
                return Ok(0);
            };
            let src_path = project_dir.join(first);
            let mut src = std::fs::File::open(&src_path)
                .map_err(io_err(format!("open {}", src_path.display())))?;
            let out = std::fs::File::create(dest)
                .map_err(io_err(format!("create {}", dest.display())))?;
            if fmt == "gzip" {
                let mut gz = flate2::write::GzEncoder::new(out, flate2::Compression::default());
                std::io::copy(&mut src, &mut gz).map_err(io_err("gzip"))?;
                gz.finish().map_err(io_err("gzip"))?;
            } else {
                let mut out = out;
                std::io::copy(&mut src, &mut out).map_err(io_err("copy"))?;
            }
            Ok(1)
        }
        other => Err(ArtifactError::Refused {
            what: format!("artifact_format {other}"),
            why: "unknown format".into(),
        }),
    }
}

/// Lexically normalises `p` (no filesystem access); `None` if it climbs above the start.
fn lexical_normalize(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::RootDir => out.push("/"),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::Normal(n) => out.push(n),
            Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Extracts a zip into `dest` safely (blocking). Entries with `..` or absolute names, and
/// symlinks pointing outside `dest`, are refused; nothing is written through an existing
/// symlink. Returns the number of entries written and the warnings.
pub fn extract_zip(archive: &Path, dest: &Path) -> Result<(usize, Vec<String>), ArtifactError> {
    let f = std::fs::File::open(archive).map_err(io_err(format!("open {}", archive.display())))?;
    let aerr = |e: zip::result::ZipError| ArtifactError::Archive {
        path: archive.to_path_buf(),
        detail: e.to_string(),
    };
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(f)).map_err(aerr)?;
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
        if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            warnings.push(format!("refused archive entry {raw_name:?}"));
            continue;
        }
        if through_symlink(dest, &rel) && rel.components().count() > 1 {
            // A parent is a symlink (maybe planted by an earlier entry) or missing: create
            // missing directories, but never write through a symlink.
            let mut cur = dest.to_path_buf();
            let comps: Vec<_> = rel.components().collect();
            let mut refused = false;
            for c in comps.iter().take(comps.len() - 1) {
                cur.push(c);
                match std::fs::symlink_metadata(&cur) {
                    Ok(m) if m.file_type().is_symlink() || !m.is_dir() => {
                        refused = true;
                        break;
                    }
                    Ok(_) => {}
                    Err(_) => std::fs::create_dir_all(&cur)
                        .map_err(io_err(format!("mkdir {}", cur.display())))?,
                }
            }
            if refused {
                warnings.push(format!(
                    "refused archive entry {raw_name:?}: a parent directory is a symlink"
                ));
                continue;
            }
        }
        let out = dest.join(&rel);
        if let Ok(m) = std::fs::symlink_metadata(&out)
            && (m.file_type().is_symlink() || m.is_file())
        {
            std::fs::remove_file(&out).map_err(io_err(format!("replace {}", out.display())))?;
        }
        if entry.is_symlink() {
            let mut target = String::new();
            entry
                .read_to_string(&mut target)
                .map_err(io_err(format!("read entry {raw_name}")))?;
            let parent = out.parent().unwrap_or(dest);
            let resolved = lexical_normalize(&parent.join(&target));
            let inside = resolved.as_deref().is_some_and(|r| r.starts_with(dest));
            if !inside {
                warnings.push(format!("refused symlink {raw_name:?} -> {target:?}: it points outside the project directory"));
                continue;
            }
            if let Some(p) = out.parent() {
                std::fs::create_dir_all(p).map_err(io_err(format!("mkdir {}", p.display())))?;
            }
            std::os::unix::fs::symlink(&target, &out)
                .map_err(io_err(format!("symlink {}", out.display())))?;
        } else if entry.is_dir() {
            std::fs::create_dir_all(&out).map_err(io_err(format!("mkdir {}", out.display())))?;
        } else {
            if let Some(p) = out.parent() {
                std::fs::create_dir_all(p).map_err(io_err(format!("mkdir {}", p.display())))?;
            }
            let mut w =
                std::fs::File::create(&out).map_err(io_err(format!("create {}", out.display())))?;
            std::io::copy(&mut entry, &mut w)
                .map_err(io_err(format!("write {}", out.display())))?;
            if let Some(mode) = entry.unix_mode() {
                use std::os::unix::fs::PermissionsExt;
                // Never restore setuid/setgid/sticky bits from an archive.
                let _ =
                    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(mode & 0o777));
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
        archive: &Path,
        file_name: &str,
    ) -> Result<(), ArtifactError> {
        let dir = self.root.join(safe_component(&job.name));
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(io_err(format!("mkdir {}", dir.display())))?;
        let to = dir.join(safe_component(file_name));
        tokio::fs::copy(archive, &to)
            .await
            .map_err(io_err(format!("copy to {}", to.display())))?;
        Ok(())
    }

    async fn download(
        &self,
        _job: &JobRef,
        dependency: &Dependency,
        dest: &Path,
    ) -> Result<(), ArtifactError> {
        let from = self
            .root
            .join(safe_component(&dependency.name))
            .join("artifacts.zip");
        if !tokio::fs::try_exists(&from).await.unwrap_or(false) {
            return Err(ArtifactError::NotFound(dependency.id));
        }
        tokio::fs::copy(&from, dest)
            .await
            .map_err(io_err(format!("copy {}", from.display())))?;
        Ok(())
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
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, PathBuf, tempfile::TempDir) {
        let root = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        std::fs::write(outside.path().join("secret.txt"), "TOP SECRET").expect("write");
        let proj = root.path().join("proj");
        std::fs::create_dir_all(proj.join("dist/sub")).expect("mkdir");
        std::fs::write(proj.join("dist/a.js"), "a").expect("write");
        std::fs::write(proj.join("dist/sub/b.log"), "b").expect("write");
        std::fs::write(proj.join("keep.txt"), "k").expect("write");
        std::os::unix::fs::symlink(outside.path().join("secret.txt"), proj.join("dist/leak"))
            .expect("symlink");
        std::os::unix::fs::symlink(outside.path(), proj.join("outdir")).expect("symlink");
        (root, proj, outside)
    }

    #[test]
    fn collect_globs_excludes_and_never_follows_symlinks() {
        let (_root, proj, _outside) = setup();
        let c = collect(
            &proj,
            &[
                "dist/".into(),
                "outdir/secret.txt".into(),
                "outdir".into(),
                "../x".into(),
            ],
            &["**/*.log".into()],
            &[],
        )
        .expect("collect");
        let names: Vec<String> = c
            .files
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect();
        assert!(names.contains(&"dist/a.js".to_string()), "{names:?}");
        assert!(!names.iter().any(|n| n.ends_with(".log")), "{names:?}");
        assert!(!names.iter().any(|n| n.starts_with("outdir/")), "{names:?}");
        assert!(
            c.warnings.iter().any(|w| w.contains("..")),
            "{:?}",
            c.warnings
        );
        let zip = proj.parent().expect("parent").join("a.zip");
        write_zip(&proj, &c.files, &zip).expect("zip");
        for (name, link, data) in list_zip(&zip).expect("list") {
            assert!(
                !String::from_utf8_lossy(&data).contains("TOP SECRET"),
                "{name} leaked"
            );
            if name == "dist/leak" {
                assert!(link, "symlink stored as symlink");
            }
        }
    }

    #[test]
    fn extract_refuses_escapes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let zpath = dir.path().join("evil.zip");
        {
            let f = std::fs::File::create(&zpath).expect("create");
            let mut z = zip::ZipWriter::new(f);
            let o = zip::write::SimpleFileOptions::default();
            z.start_file("../escape.txt", o).expect("entry");
            z.write_all(b"x").expect("write");
            z.add_symlink("link", "/etc", o).expect("link");
            z.start_file("link/passwd", o).expect("entry");
            z.write_all(b"x").expect("write");
            z.add_symlink("inner", "ok.txt", o).expect("link");
            z.start_file("ok.txt", o).expect("entry");
            z.write_all(b"fine").expect("write");
            z.finish().expect("finish");
        }
        let dest = dir.path().join("proj");
        std::fs::create_dir_all(&dest).expect("mkdir");
        let (n, warnings) = extract_zip(&zpath, &dest).expect("extract");
        assert_eq!(n, 3, "{warnings:?}");
        assert!(!dir.path().join("escape.txt").exists());
        let link = std::fs::symlink_metadata(dest.join("link")).expect("link dir");
        assert!(!link.file_type().is_symlink());
        assert_eq!(
            std::fs::read_to_string(dest.join("ok.txt")).expect("read"),
            "fine"
        );
        assert_eq!(warnings.len(), 2, "{warnings:?}");
    }

    #[test]
    fn file_names() {
        let mut a = Artifact::default();
        assert_eq!(archive_file_name(&a), "artifacts.zip");
        a.name = Some("junit.xml".into());
        a.artifact_format = "gzip".into();
        assert_eq!(archive_file_name(&a), "junit.xml.gz");
    }
}
