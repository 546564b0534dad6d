//! Local cache archives for the `cache:` keyword, keyed by project and protection.
//!
//! The job pipeline calls [`restore`] after getting the sources and [`save`] after the script
//! (and `after_script`). Archives live at
//! `<cache_dir>/gitlab-<instance>/project-<id>/<protected|unprotected>/<sanitized key>.tar.gz`
//! (the job's [`CacheContext::cache_dir`] is already the instance's directory, see
//! [`crate::config::instance_key`]).
//!
//! - **Format: tar + gzip**, not zip. Tar stores symlinks, modes and mtimes natively and streams
//!   (zip needs a central directory at the end, so a torn zip is only detected late); the archive
//!   is only ever read by this runner, so zip's interoperability with gitlab-runner's helper buys
//!   nothing. gzip level "fast": caches are mostly dependency trees where speed beats ratio (our
//!   users already set `CACHE_COMPRESSION_LEVEL=fast`).
//! - **Protection**: the job's protected flag picks the directory, so an unprotected job can
//!   never write what a protected job restores, whatever the key says.
//! - **Safety**: see `archive.rs`; nothing is read or written outside the project dir.
//! - **Atomicity**: temp file + rename; concurrent saves of one key: last writer wins, whole.
//! - **Failures never fail the job**: they are warnings in the trace. Only an unknown `policy`
//!   or `when` is an error, because gitlab-runner fails the stage for those.

mod archive;
mod files_key;
mod key;
pub mod probe;
mod prune;
pub mod remote;
mod shared;
mod stores;

pub use files_key::{KeyFilesError, files_key};
pub use key::{ARCHIVE_SUFFIX, archive_path, project_dir, sanitize_key};
pub use prune::{PruneReport, prune, prune_at};
pub use stores::StoreClients;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

/// One `cache:` entry of a job, its strings already expanded with the job's variables. The
/// job module converts GitLab's wire type into this, so the cache knows nothing of the protocol.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheEntry {
    /// `key`; empty means the context's default key.
    pub key: String,
    /// `untracked`.
    pub untracked: bool,
    /// `paths`, globs relative to the project dir.
    pub paths: Vec<String>,
    /// `policy`: `pull`, `push`, `pull-push` or empty.
    pub policy: String,
    /// `when`: `on_success`, `on_failure`, `always` or empty.
    pub when: String,
    /// `fallback_keys`, tried in order when `key` misses.
    pub fallback_keys: Vec<String>,
}

/// Errors of the cache module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `policy` is not `pull`, `push`, `pull-push` or empty.
    #[error("unknown cache policy {policy:?} for key {key:?} (expected pull, push or pull-push)")]
    UnknownPolicy {
        /// The cache key.
        key: String,
        /// The policy as received (after variable expansion).
        policy: String,
    },
    /// `when` is not `on_success`, `on_failure`, `always` or empty.
    #[error(
        "unknown cache when {when:?} for key {key:?} (expected on_success, on_failure or always)"
    )]
    UnknownWhen {
        /// The cache key.
        key: String,
        /// The value as received.
        when: String,
    },
    /// Reading the cache directory failed (pruning).
    #[error("cannot read cache path {path}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The blocking worker panicked or was cancelled.
    #[error("cache worker task failed")]
    Join(#[source] tokio::task::JoinError),
}

/// `cache:policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Restore only.
    Pull,
    /// Save only.
    Push,
    /// Restore and save (the default; also the empty string).
    PullPush,
}

impl Policy {
    /// Parses the (already variable-expanded) value; `None` for unknown values.
    pub fn parse(value: &str) -> Option<Policy> {
        match value.trim() {
            "" | "pull-push" => Some(Policy::PullPush),
            "pull" => Some(Policy::Pull),
            "push" => Some(Policy::Push),
            _ => None,
        }
    }
}

/// `cache:when`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Save only when the job succeeded (the default; also the empty string).
    OnSuccess,
    /// Save only when the job failed.
    OnFailure,
    /// Save whatever happened.
    Always,
}

impl When {
    /// Parses the value; `None` for unknown values.
    pub fn parse(value: &str) -> Option<When> {
        match value.trim() {
            "" | "on_success" => Some(When::OnSuccess),
            "on_failure" => Some(When::OnFailure),
            "always" => Some(When::Always),
            _ => None,
        }
    }

    /// Whether a job that ended with `status` saves this cache.
    pub fn matches(self, status: JobStatus) -> bool {
        matches!(
            (self, status),
            (When::Always, _)
                | (When::OnSuccess, JobStatus::Success)
                | (When::OnFailure, JobStatus::Failed)
        )
    }
}

/// How the job's script ended, as far as `cache:when` cares. A cancelled job does not save its
/// cache (the pipeline simply does not call [`save`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    /// Script and `after_script` passed.
    Success,
    /// The script failed.
    Failed,
}

/// Receives the cache's trace lines (without trailing newline); the pipeline routes them into
/// the job log. Any `Fn(&str) + Send + Sync` closure is one.
pub trait CacheLog: Send + Sync {
    /// One line for the job log.
    fn line(&self, line: &str);
}

impl<F: Fn(&str) + Send + Sync> CacheLog for F {
    fn line(&self, line: &str) {
        self(line)
    }
}

/// Everything about the job the cache needs, as plain values.
#[derive(Debug, Clone)]
pub struct CacheContext {
    /// `cache_dir` of the runner entry, scoped by GitLab instance
    /// (`<cache_dir>/gitlab-<instance>`).
    pub cache_dir: PathBuf,
    /// The job's checkout (as the runner sees it); `paths` are relative to it.
    pub project_dir: PathBuf,
    /// `job_info.project_id`.
    pub project_id: u64,
    /// Whether the job runs for a protected ref (GitLab's `git_info.protected` only).
    pub protected: bool,
    /// Key used when an entry's key is empty: gitlab-runner uses `<job name>/<ref>`.
    pub default_key: String,
    /// The expanded `CACHE_FALLBACK_KEY` variable, if set; tried after `fallback_keys`.
    pub fallback_key: Option<String>,
    /// The store shared with other runner hosts, if `[runners.cache] Type` is set; the local
    /// archives then serve as staging and as the fallback when the store is down.
    pub remote: Option<Arc<remote::Remote>>,
}

/// What happened to one `cache:` entry on restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestoreOutcome {
    /// Extracted from this key (the main key or a fallback).
    Restored {
        /// The key that hit.
        key: String,
        /// Entries written.
        entries: usize,
    },
    /// No archive for any of the keys.
    NotFound,
    /// `policy: push`, or no `paths` and no `untracked`.
    Skipped,
    /// The archive existed but could not be read (corrupt); the job goes on without it.
    Failed,
}

/// What happened to one `cache:` entry on save.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SaveOutcome {
    /// Archive written.
    Created {
        /// The key.
        key: String,
        /// Entries stored.
        entries: usize,
        /// Archive size.
        bytes: u64,
    },
    /// `policy: pull`, `when` did not match, nothing matched, or no usable key.
    Skipped,
    /// Writing failed; the job goes on.
    Failed,
}

fn policy_of(entry: &CacheEntry) -> Result<Policy, Error> {
    Policy::parse(&entry.policy).ok_or_else(|| Error::UnknownPolicy {
        key: entry.key.clone(),
        policy: entry.policy.clone(),
    })
}

fn when_of(entry: &CacheEntry) -> Result<When, Error> {
    When::parse(&entry.when).ok_or_else(|| Error::UnknownWhen {
        key: entry.key.clone(),
        when: entry.when.clone(),
    })
}

fn key_of<'a>(ctx: &'a CacheContext, entry: &'a CacheEntry) -> &'a str {
    if entry.key.trim().is_empty() {
        &ctx.default_key
    } else {
        &entry.key
    }
}

fn has_content(entry: &CacheEntry) -> bool {
    entry.untracked || entry.paths.iter().any(|p| !p.trim().is_empty())
}

/// Restores every entry (blocking). Tries `key`, then `fallback_keys` in order, then
/// `CACHE_FALLBACK_KEY`; the first archive found is extracted into the project dir and its mtime
/// touched (it is the LRU clock of [`prune`]).
///
/// Errors only for an unknown `policy`, before anything is extracted.
pub fn restore_blocking(
    ctx: &CacheContext,
    entries: &[CacheEntry],
    log: &dyn CacheLog,
) -> Result<Vec<RestoreOutcome>, Error> {
    let policies = entries
        .iter()
        .map(policy_of)
        .collect::<Result<Vec<_>, _>>()?;
    let mut outcomes = Vec::with_capacity(entries.len());
    for (entry, policy) in entries.iter().zip(policies) {
        match restore_plan(ctx, entry, policy, log) {
            Err(skipped) => outcomes.push(skipped),
            Ok(candidates) => {
                let candidates: Vec<&str> = candidates.iter().map(String::as_str).collect();
                outcomes.push(restore_one(ctx, &candidates, log));
            }
        }
    }
    Ok(outcomes)
}

/// The keys to try for one entry, in order, or the outcome when the entry is not restored.
fn restore_plan(
    ctx: &CacheContext,
    entry: &CacheEntry,
    policy: Policy,
    log: &dyn CacheLog,
) -> Result<Vec<String>, RestoreOutcome> {
    let key = key_of(ctx, entry);
    if !has_content(entry) {
        return Err(RestoreOutcome::Skipped);
    }
    if policy == Policy::Push {
        log.line(&format!("Not downloading cache {key} due to policy"));
        return Err(RestoreOutcome::Skipped);
    }
    let mut candidates: Vec<String> = vec![key.to_string()];
    candidates.extend(entry.fallback_keys.iter().cloned());
    if let Some(fallback) = ctx.fallback_key.as_deref().filter(|k| !k.trim().is_empty()) {
        // As gitlab-runner: a fallback variable naming a protected cache is refused, so a
        // variable cannot be used to read protected caches (our directory split already
        // prevents it; this keeps behaviour identical).
        if fallback.trim_end().ends_with("-protected") {
            log.line(&format!(
                "WARNING: CACHE_FALLBACK_KEY {fallback} ends with -protected and is ignored"
            ));
        } else {
            candidates.push(fallback.to_string());
        }
    }
    Ok(candidates)
}

fn restore_one(ctx: &CacheContext, candidates: &[&str], log: &dyn CacheLog) -> RestoreOutcome {
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
        if !path.is_file() {
            log.line(&format!("WARNING: cache {candidate} not found"));
            continue;
        }
        match extract_archive(ctx, candidate, &path, log) {
            RestoreOutcome::Failed => outcome = RestoreOutcome::Failed,
            done => return done,
        }
    }
    outcome
}

/// Extracts one archive found for `candidate` into the project dir: `Restored`, or `Failed`
/// with a warning.
fn extract_archive(
    ctx: &CacheContext,
    candidate: &str,
    path: &Path,
    log: &dyn CacheLog,
) -> RestoreOutcome {
    match archive::extract(path, &ctx.project_dir) {
        Ok(extracted) => {
            for warning in &extracted.warnings {
                log.line(warning);
            }
            touch(path);
            log.line("Successfully extracted cache");
            RestoreOutcome::Restored {
                key: candidate.to_string(),
                entries: extracted.entries,
            }
        }
        Err(e) => {
            log.line(&format!(
                "WARNING: Failed to extract cache {candidate}: {}",
                error_chain(&e)
            ));
            RestoreOutcome::Failed
        }
    }
}

/// Marks an archive as used now, for LRU pruning.
fn touch(path: &Path) {
    if let Ok(file) = std::fs::OpenOptions::new().write(true).open(path) {
        // Best effort: a failed touch only makes the archive look older to prune.
        let _ = file.set_modified(SystemTime::now());
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Saves every entry whose `policy` and `when` allow it (blocking). `untracked` is the list of
/// paths (relative to the project dir) git does not track, computed by the caller inside the
/// job's environment; it is used for entries with `untracked: true`.
///
/// Errors only for an unknown `policy` or `when`, before anything is written.
pub fn save_blocking(
    ctx: &CacheContext,
    entries: &[CacheEntry],
    status: JobStatus,
    untracked: &[PathBuf],
    log: &dyn CacheLog,
) -> Result<Vec<SaveOutcome>, Error> {
    let checked = entries
        .iter()
        .map(|e| Ok((policy_of(e)?, when_of(e)?)))
        .collect::<Result<Vec<_>, Error>>()?;
    let mut outcomes = Vec::with_capacity(entries.len());
    for (entry, (policy, when)) in entries.iter().zip(checked) {
        let key = key_of(ctx, entry);
        if !has_content(entry) {
            outcomes.push(SaveOutcome::Skipped);
            continue;
        }
        if policy == Policy::Pull {
            log.line(&format!("Not uploading cache {key} due to policy"));
            outcomes.push(SaveOutcome::Skipped);
            continue;
        }
        if !when.matches(status) {
            log.line(&format!(
                "Skipping cache {key}: job {} and cache when is {}",
                if status == JobStatus::Success {
                    "succeeded"
                } else {
                    "failed"
                },
                match when {
                    When::OnSuccess => "on_success",
                    When::OnFailure => "on_failure",
                    When::Always => "always",
                }
            ));
            outcomes.push(SaveOutcome::Skipped);
            continue;
        }
        let Some(name) = sanitize_key(key) else {
            log.line(&format!(
                "WARNING: cache key {key:?} is empty after sanitising, skipped"
            ));
            outcomes.push(SaveOutcome::Skipped);
            continue;
        };
        outcomes.push(save_one(ctx, entry, key, &name, untracked, log));
    }
    Ok(outcomes)
}

fn save_one(
    ctx: &CacheContext,
    entry: &CacheEntry,
    key: &str,
    name: &str,
    untracked: &[PathBuf],
    log: &dyn CacheLog,
) -> SaveOutcome {
    log.line(&format!("Creating cache {key}..."));
    let untracked: &[PathBuf] = if entry.untracked { untracked } else { &[] };
    let selection = match archive::select(&ctx.project_dir, &entry.paths, untracked) {
        Ok(s) => s,
        Err(e) => {
            log.line(&format!("WARNING: {}", error_chain(&e)));
            return SaveOutcome::Failed;
        }
    };
    for pattern in &selection.refused {
        log.line(&format!(
            "WARNING: {pattern}: not under the project dir or not a valid pattern, ignored"
        ));
    }
    for (pattern, count) in &selection.per_pattern {
        if *count == 0 {
            log.line(&format!("WARNING: {pattern}: no matching files"));
        } else {
            log.line(&format!(
                "{pattern}: found {count} matching files and directories"
            ));
        }
    }
    if entry.untracked {
        log.line(&format!(
            "untracked: found {} files and directories",
            selection.untracked
        ));
    }
    if selection.entries.is_empty() {
        log.line(&format!(
            "WARNING: nothing to cache, cache {key} not created"
        ));
        return SaveOutcome::Skipped;
    }
    let dest = archive_path(&ctx.cache_dir, ctx.project_id, ctx.protected, name);
    match archive::create(&ctx.project_dir, &selection.entries, &dest) {
        Ok(written) => {
            for warning in &written.warnings {
                log.line(warning);
            }
            log.line("Created cache");
            SaveOutcome::Created {
                key: key.to_string(),
                entries: written.entries,
                bytes: written.bytes,
            }
        }
        Err(e) => {
            log.line(&format!(
                "WARNING: Failed to create cache {key}: {}",
                error_chain(&e)
            ));
            SaveOutcome::Failed
        }
    }
}

/// Runs `work` on a blocking thread and forwards its trace lines to `log` as they come.
async fn on_blocking_thread<T: Send + 'static>(
    log: &dyn CacheLog,
    work: impl FnOnce(&dyn CacheLog) -> T + Send + 'static,
) -> Result<T, Error> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let handle = tokio::task::spawn_blocking(move || {
        let sender = move |line: &str| {
            // The receiver only goes away if the caller dropped the future; lines are moot then.
            let _ = tx.send(line.to_string());
        };
        work(&sender)
    });
    while let Some(line) = rx.recv().await {
        log.line(&line);
    }
    handle.await.map_err(Error::Join)
}

/// Restores the job's caches (async; the work runs on a blocking thread). See
/// [`restore_blocking`].
///
/// # Cancel safety
/// Dropping the future lets the extraction finish in the background; lines after the drop are
/// lost.
pub async fn restore(
    ctx: &CacheContext,
    entries: &[CacheEntry],
    log: &dyn CacheLog,
) -> Result<Vec<RestoreOutcome>, Error> {
    if ctx.remote.is_some() {
        return shared::restore(ctx, entries, log).await;
    }
    let ctx = ctx.clone();
    let entries = entries.to_vec();
    on_blocking_thread(log, move |log| restore_blocking(&ctx, &entries, log)).await?
}

/// Saves the job's caches (async; the work runs on a blocking thread). See [`save_blocking`].
///
/// # Cancel safety
/// Dropping the future lets the save finish in the background; the archive is still written
/// atomically.
pub async fn save(
    ctx: &CacheContext,
    entries: &[CacheEntry],
    status: JobStatus,
    untracked: &[PathBuf],
    log: &dyn CacheLog,
) -> Result<Vec<SaveOutcome>, Error> {
    let outcomes = {
        let ctx = ctx.clone();
        let entries = entries.to_vec();
        let untracked = untracked.to_vec();
        on_blocking_thread(log, move |log| {
            save_blocking(&ctx, &entries, status, &untracked, log)
        })
        .await??
    };
    if let Some(remote) = &ctx.remote {
        shared::upload_created(ctx, remote, &outcomes, log).await;
    }
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse() {
        assert_eq!(Policy::parse(""), Some(Policy::PullPush));
        assert_eq!(Policy::parse("pull-push"), Some(Policy::PullPush));
        assert_eq!(Policy::parse("pull"), Some(Policy::Pull));
        assert_eq!(Policy::parse("push"), Some(Policy::Push));
        assert_eq!(Policy::parse("$POLICY"), None);
    }

    #[test]
    fn when_matches_status() {
        assert!(
            When::parse("")
                .expect("default")
                .matches(JobStatus::Success)
        );
        assert!(!When::OnSuccess.matches(JobStatus::Failed));
        assert!(When::OnFailure.matches(JobStatus::Failed));
        assert!(!When::OnFailure.matches(JobStatus::Success));
        assert!(When::Always.matches(JobStatus::Failed));
        assert_eq!(When::parse("never"), None);
    }
}
