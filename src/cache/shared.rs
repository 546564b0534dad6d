//! `cache:` with a store shared by every runner host: restore downloads the archive into this
//! host's cache directory and extracts it from there; save writes the local archive as always,
//! then uploads it. This host's archives are the fallback: when the store cannot be reached, a
//! restore uses the local copy and a save keeps it, with a warning; the job goes on.

use super::key::{archive_path, project_dir, sanitize_key};
use super::remote::{Remote, protected_key};
use super::{
    CacheContext, CacheEntry, CacheLog, Error, RestoreOutcome, SaveOutcome, extract_archive,
    on_blocking_thread, policy_of, restore_plan,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// gzip's magic bytes: what our archives start with.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// What fetching one key from the store gave.
enum Fetched {
    /// The object is now this host's archive for the key.
    Downloaded,
    /// The store has no (usable) object for the key.
    Missing,
    /// The store could not be asked; the warning is already in the trace.
    Unavailable,
}

/// Restores every entry, store first, this host's copy as the fallback. Errors only for an
/// unknown `policy`, before anything is fetched.
pub(super) async fn restore(
    ctx: &CacheContext,
    entries: &[CacheEntry],
    log: &dyn CacheLog,
) -> Result<Vec<RestoreOutcome>, Error> {
    let Some(remote) = ctx.remote.clone() else {
        return Ok(Vec::new());
    };
    let policies = entries
        .iter()
        .map(policy_of)
        .collect::<Result<Vec<_>, _>>()?;
    let mut outcomes = Vec::with_capacity(entries.len());
    for (entry, policy) in entries.iter().zip(policies) {
        let outcome = match restore_plan(ctx, entry, policy, log) {
            Err(skipped) => skipped,
            Ok(candidates) => restore_one(ctx, &remote, &candidates, log).await?,
        };
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

async fn restore_one(
    ctx: &CacheContext,
    remote: &Arc<Remote>,
    candidates: &[String],
    log: &dyn CacheLog,
) -> Result<RestoreOutcome, Error> {
    let mut outcome = RestoreOutcome::NotFound;
    for candidate in candidates {
        let Some(name) = sanitize_key(candidate) else {
            log.line(&format!(
                "WARNING: cache key {candidate:?} is empty after sanitising, skipped"
            ));
            continue;
        };
        log.line(&format!("Checking cache for {candidate}..."));
        let path = archive_path(&ctx.cache_dir, ctx.project_id, ctx.protected, &name);
        let fetched = fetch(ctx, remote, candidate, &path, log).await;
        let exists = tokio::fs::metadata(&path).await.is_ok_and(|m| m.is_file());
        if !exists {
            log.line(&format!("WARNING: cache {candidate} not found"));
            continue;
        }
        match fetched {
            Fetched::Downloaded => {}
            Fetched::Missing => log.line(&format!(
                "cache {candidate} is not in the shared store; using this host's copy"
            )),
            Fetched::Unavailable => log.line(&format!("Using this host's copy of {candidate}")),
        }
        let (c, p) = (ctx.clone(), path.clone());
        let key = candidate.clone();
        let result = on_blocking_thread(log, move |log| extract_archive(&c, &key, &p, log)).await?;
        match result {
            RestoreOutcome::Failed => outcome = RestoreOutcome::Failed,
            done => return Ok(done),
        }
    }
    Ok(outcome)
}

/// Downloads `candidate`'s object over this host's archive at `path` (atomically: a temp file
/// beside it, renamed when complete and recognised as ours).
async fn fetch(
    ctx: &CacheContext,
    remote: &Remote,
    candidate: &str,
    path: &Path,
    log: &dyn CacheLog,
) -> Fetched {
    let Some(object) = remote.object_name(ctx.project_id, &protected_key(candidate, ctx.protected))
    else {
        log.line(&format!(
            "WARNING: cache key {candidate:?} cannot name an object in the shared store \
             (`..` or empty); only this host's cache is used for it"
        ));
        return Fetched::Unavailable;
    };
    let dir = project_dir(&ctx.cache_dir, ctx.project_id, ctx.protected);
    if let Err(e) = tokio::fs::create_dir_all(&dir).await {
        log.line(&format!(
            "WARNING: cannot create cache directory {}: {e}",
            dir.display()
        ));
        return Fetched::Unavailable;
    }
    // Named like the local save's temp files, so a crash leaves nothing `prune` does not clean.
    let tmp = dir.join(format!(".tmp-{}.partial", uuid::Uuid::new_v4().simple()));
    let result = remote.download(&object, &tmp).await;
    let fetched = match result {
        Ok(false) => Fetched::Missing,
        Ok(true) => match check_and_install(&tmp, path).await {
            Ok(true) => {
                log.line(&format!(
                    "Downloaded cache {candidate} from the shared {} store",
                    remote.kind()
                ));
                Fetched::Downloaded
            }
            Ok(false) => {
                log.line(&format!(
                    "WARNING: object {object} in the shared store is not an archive of this \
                     runner (gitlab-runner writes zip archives under the same names); ignored"
                ));
                Fetched::Missing
            }
            Err(e) => {
                log.line(&format!(
                    "WARNING: cannot store the downloaded cache {candidate}: {e}"
                ));
                Fetched::Unavailable
            }
        },
        Err(e) => {
            log.line(&format!(
                "WARNING: the shared {} cache store is unavailable ({e}); falling back to \
                 this host's cache",
                remote.kind()
            ));
            Fetched::Unavailable
        }
    };
    // Gone after a rename; still there after a failure or a foreign object.
    let _ = tokio::fs::remove_file(&tmp).await;
    fetched
}

/// Renames the downloaded `tmp` over `path` if it is a gzip stream (our archives); `Ok(false)`
/// for anything else, such as gitlab-runner's zip archives.
async fn check_and_install(tmp: &Path, path: &Path) -> std::io::Result<bool> {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 4];
    let mut file = tokio::fs::File::open(tmp).await?;
    let mut got = 0;
    while got < head.len() {
        let n = file.read(&mut head[got..]).await?;
        if n == 0 {
            break;
        }
        got += n;
    }
    if got < GZIP_MAGIC.len() || head[..2] != GZIP_MAGIC {
        return Ok(false);
    }
    tokio::fs::rename(tmp, path).await?;
    Ok(true)
}

/// Uploads every archive the save just created. Failures are warnings: the archive stays on
/// this host, where the next job here finds it.
pub(super) async fn upload_created(
    ctx: &CacheContext,
    remote: &Remote,
    outcomes: &[SaveOutcome],
    log: &dyn CacheLog,
) {
    for outcome in outcomes {
        let SaveOutcome::Created { key, bytes, .. } = outcome else {
            continue;
        };
        let Some(name) = sanitize_key(key) else {
            continue;
        };
        let path: PathBuf = archive_path(&ctx.cache_dir, ctx.project_id, ctx.protected, &name);
        if let Some(max) = remote.max_upload().filter(|max| bytes > max) {
            log.line(&format!(
                "WARNING: cache {key} is {bytes} bytes, more than MaxUploadedArchiveSize \
                 ({max}); kept on this host only"
            ));
            continue;
        }
        let Some(object) = remote.object_name(ctx.project_id, &protected_key(key, ctx.protected))
        else {
            log.line(&format!(
                "WARNING: cache key {key:?} cannot name an object in the shared store \
                 (`..` or empty); kept on this host only"
            ));
            continue;
        };
        log.line(&format!(
            "Uploading cache {key} to the shared {} store...",
            remote.kind()
        ));
        match remote.upload(&path, &object).await {
            Ok(()) => log.line(&format!("Uploaded cache {key} as {object}")),
            Err(e) => log.line(&format!(
                "WARNING: Failed to upload cache {key} ({e}); kept on this host only"
            )),
        }
    }
}
