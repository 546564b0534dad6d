//! Pruning the cache directory by age and total size, least recently used first.

use super::Error;
use super::key::ARCHIVE_SUFFIX;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Temp files of a crashed save older than this are always removed. Younger ones may belong to
/// a save in progress.
const STALE_TEMP_AGE: Duration = Duration::from_secs(3600);

/// What [`prune`] removed (or would remove, with `dry_run`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Removed archives and stale temp files with their sizes, in removal order.
    pub removed: Vec<(PathBuf, u64)>,
    /// Total bytes freed.
    pub freed: u64,
    /// Archives kept.
    pub kept: usize,
    /// Bytes of the archives kept.
    pub kept_bytes: u64,
}

struct Candidate {
    path: PathBuf,
    bytes: u64,
    used: SystemTime,
}

/// Prunes `cache_dir` now. See [`prune_at`].
///
/// # Cancel safety
/// Runs on a blocking thread; dropping the future lets the pass finish in the background.
pub async fn prune(
    cache_dir: &Path,
    max_size: Option<u64>,
    max_age: Option<Duration>,
    dry_run: bool,
) -> Result<PruneReport, Error> {
    let dir = cache_dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        prune_at(&dir, max_size, max_age, dry_run, SystemTime::now())
    })
    .await
    .map_err(Error::Join)?
}

/// Prunes archives under `cache_dir` (blocking): first every archive unused for longer than
/// `max_age`, then, while the total is above `max_size`, the least recently used one. "Used" is
/// the archive's mtime, which a save sets and a restore touches. Stale temp files of crashed
/// saves go too. A missing `cache_dir` is an empty cache. With `dry_run` nothing is deleted.
///
/// A restore that already opened an archive keeps reading it even if it is removed meanwhile.
pub fn prune_at(
    cache_dir: &Path,
    max_size: Option<u64>,
    max_age: Option<Duration>,
    dry_run: bool,
    now: SystemTime,
) -> Result<PruneReport, Error> {
    let mut report = PruneReport::default();
    let mut archives = Vec::new();
    if !cache_dir.exists() {
        return Ok(report);
    }
    for entry in walkdir::WalkDir::new(cache_dir).follow_links(false) {
        let entry = entry.map_err(|e| Error::Io {
            path: e.path().unwrap_or(cache_dir).to_path_buf(),
            source: e.into(),
        })?;
        if !entry.file_type().is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy();
        let Ok(meta) = entry.metadata() else { continue };
        let used = meta.modified().unwrap_or(now);
        let age = now.duration_since(used).unwrap_or_default();
        if name.starts_with(".tmp-") && name.ends_with(".partial") {
            if age > STALE_TEMP_AGE {
                remove(&mut report, entry.path(), meta.len(), dry_run)?;
            }
            continue;
        }
        if !name.ends_with(ARCHIVE_SUFFIX) {
            continue;
        }
        archives.push(Candidate {
            path: entry.into_path(),
            bytes: meta.len(),
            used,
        });
    }
    // Oldest first: age-expired ones lead the list anyway, then LRU order for the size cap.
    archives.sort_by(|a, b| a.used.cmp(&b.used).then_with(|| a.path.cmp(&b.path)));
    let mut total: u64 = archives.iter().map(|c| c.bytes).sum();
    for candidate in archives {
        let age = now.duration_since(candidate.used).unwrap_or_default();
        let too_old = max_age.is_some_and(|max| age > max);
        let too_big = max_size.is_some_and(|max| total > max);
        if too_old || too_big {
            remove(&mut report, &candidate.path, candidate.bytes, dry_run)?;
            total -= candidate.bytes;
        } else {
            report.kept += 1;
            report.kept_bytes += candidate.bytes;
        }
    }
    Ok(report)
}

fn remove(report: &mut PruneReport, path: &Path, bytes: u64, dry_run: bool) -> Result<(), Error> {
    if !dry_run {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            // Someone else (a concurrent prune) got there first: nothing was freed by us.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(Error::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
    }
    report.removed.push((path.to_path_buf(), bytes));
    report.freed += bytes;
    Ok(())
}
