//! Runner token rotation, as gitlab-runner does it: a token with a `token_expires_at` is reset
//! (`POST /runners/reset_authentication_token`) once three quarters of its lifetime have passed;
//! the new token is used for every later request and written back to the config file (or the
//! entry's `token_file`), with `token_obtained_at` and `token_expires_at`, keeping the file's
//! comments and other keys. The token itself is never logged.
//!
//! A runner authentication token (`glrt-`) whose expiry the config does not hold is verified
//! once at start (`POST /runners/verify`, whose answer carries `token_expires_at`, as
//! gitlab-runner's `verify` records it): an expiring token is then rotated like one whose expiry
//! was in the file, and the expiry is written to the config so the next start knows it.

use super::{RunnerCtx, Shared, lock};
use crate::gitlab::identity;
use crate::secret::Secret;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// gitlab-runner's `TokenResetIntervalFactor`.
const RESET_FACTOR: f64 = 0.75;
/// Pause before trying again after a failed reset or a failed write.
const RETRY: Duration = Duration::from_secs(60);

/// When a token issued at `obtained` and expiring at `expires` is reset.
pub(super) fn reset_at(obtained: SystemTime, expires: SystemTime) -> SystemTime {
    let life = expires.duration_since(obtained).unwrap_or_default();
    obtained + life.mul_f64(RESET_FACTOR)
}

/// The token's validity, as read from the config and updated by each reset.
#[derive(Debug, Clone, Copy)]
pub(super) struct Validity {
    pub(super) obtained: SystemTime,
    pub(super) expires: SystemTime,
}

/// Errors of writing a new token back.
#[derive(Debug, thiserror::Error)]
pub(super) enum PersistError {
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse {}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: toml_edit::TomlError,
    },
    #[error("{}: no [[runners]] entry with this runner's token or token_file", path.display())]
    NoEntry { path: PathBuf },
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The prefix of runner authentication tokens (GitLab 16+), the only ones that can expire
/// and be reset.
const AUTH_TOKEN_PREFIX: &str = "glrt-";

/// Parses GitLab's `token_expires_at`; GitLab's zero time and `null` mean "never".
fn parse_expiry(value: Option<&str>) -> Option<SystemTime> {
    value
        .filter(|t| !t.starts_with("0001-01-01"))
        .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
}

/// At start: asks GitLab when a `glrt-` token without a known expiry expires, records the
/// answer in `ctx.validity` (and in the config file). A failed verify is logged and leaves
/// the token as it was: polling shows soon enough whether GitLab takes it.
async fn learn_expiry(ctx: &RunnerCtx, shared: &Shared) {
    let token = lock(&ctx.token).clone();
    if !token.expose().starts_with(AUTH_TOKEN_PREFIX) {
        return;
    }
    let answer = tokio::select! {
        _ = shared.polling.cancelled() => return,
        a = ctx.client.verify(&token, &ctx.system_id, &shared.info) => a,
    };
    let answer = match answer {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(runner = %ctx.cfg.name, token = %ctx.short_token, error = %e, "cannot verify the runner token to learn its expiry; it is not rotated until the next start");
            return;
        }
    };
    let Some(expires) = parse_expiry(answer.token_expires_at.as_deref()) else {
        tracing::debug!(runner = %ctx.cfg.name, token = %ctx.short_token, "the runner token does not expire");
        return;
    };
    // A token whose issue time is unknown counts from now: the reset comes at 3/4 of what is
    // left, never at once for a token that may have just been issued.
    let obtained = ctx.cfg.token_obtained_at.unwrap_or_else(SystemTime::now);
    {
        let mut v = lock(&ctx.validity);
        if v.is_some() {
            return;
        }
        *v = Some(Validity { obtained, expires });
    }
    let expires_text = answer.token_expires_at.unwrap_or_default();
    tracing::info!(runner = %ctx.cfg.name, token = %ctx.short_token, expires_at = %expires_text, "runner token expiry learnt from GitLab");
    let Some(path) = &shared.options.config_path else {
        return;
    };
    let obtained_text = humantime::format_rfc3339_seconds(obtained).to_string();
    if let Err(e) = persist(
        path,
        &token,
        ctx.cfg.token_file.as_deref(),
        &token,
        &obtained_text,
        Some(&expires_text),
    )
    .await
    {
        tracing::warn!(runner = %ctx.cfg.name, error = %e, "cannot write the runner token's expiry to the config; it is verified again at the next start");
    }
}

/// Runs until polling stops: learns the token's expiry when the config has none, then sleeps
/// until the reset time, resets, persists, repeats.
pub(super) async fn rotate(ctx: Arc<RunnerCtx>, shared: Arc<Shared>) {
    if lock(&ctx.validity).is_none() {
        learn_expiry(&ctx, &shared).await;
    }
    loop {
        let Some(validity) = *lock(&ctx.validity) else {
            return;
        };
        let due = reset_at(validity.obtained, validity.expires);
        let wait = due
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        tokio::select! {
            _ = shared.polling.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let old = lock(&ctx.token).clone();
        let answer = match ctx.client.reset_token(&old).await {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(runner = %ctx.cfg.name, token = %ctx.short_token, error = %e, retry_in = ?RETRY, "resetting the runner token failed");
                pause(&shared).await;
                continue;
            }
        };
        // reset_token refuses an answer without a token.
        let Some(new) = answer.token else { return };
        let obtained = SystemTime::now();
        let expires = parse_expiry(answer.token_expires_at.as_deref());
        // From here GitLab only takes the new token: switch first, then write it down.
        *lock(&ctx.token) = new.clone();
        *lock(&ctx.validity) = expires.map(|expires| Validity { obtained, expires });
        tracing::info!(
            runner = %ctx.cfg.name,
            token = %ctx.short_token,
            expires_at = answer.token_expires_at.as_deref().unwrap_or("never"),
            "runner token reset"
        );
        let Some(path) = &shared.options.config_path else {
            tracing::warn!(runner = %ctx.cfg.name, "no config file to write the new runner token to: it lasts until the runner stops");
            continue;
        };
        let obtained_text = humantime::format_rfc3339_seconds(obtained).to_string();
        if let Err(e) = persist(
            path,
            &old,
            ctx.cfg.token_file.as_deref(),
            &new,
            &obtained_text,
            answer.token_expires_at.as_deref(),
        )
        .await
        {
            tracing::error!(runner = %ctx.cfg.name, error = %e, "the runner token was reset but could not be saved: the file still holds the old token, which GitLab no longer takes; fix the file and restart before this runner stops, or register again");
        }
    }
}

async fn pause(shared: &Shared) {
    tokio::select! {
        _ = shared.polling.cancelled() => {}
        _ = tokio::time::sleep(RETRY) => {}
    }
}

/// Writes the new token where the entry keeps it (inline `token`, or its `token_file`) and the
/// new times into the entry, each file replaced atomically.
pub(super) async fn persist(
    path: &Path,
    old: &Secret,
    token_file: Option<&Path>,
    new: &Secret,
    obtained: &str,
    expires: Option<&str>,
) -> Result<(), PersistError> {
    let text = tokio::fs::read_to_string(path)
        .await
        .map_err(|source| PersistError::Read {
            path: path.into(),
            source,
        })?;
    let mut doc: toml_edit::DocumentMut = text.parse().map_err(|source| PersistError::Parse {
        path: path.into(),
        source,
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let entry = doc
        .get_mut("runners")
        .and_then(toml_edit::Item::as_array_of_tables_mut)
        .and_then(|runners| {
            runners.iter_mut().find(|t| match token_file {
                None => t.get("token").and_then(|v| v.as_str()) == Some(old.expose()),
                // As the loader does: a relative token_file is relative to the config's dir.
                Some(file) => t
                    .get("token_file")
                    .and_then(|v| v.as_str())
                    .is_some_and(|f| base.join(f) == file),
            })
        })
        .ok_or_else(|| PersistError::NoEntry { path: path.into() })?;
    match token_file {
        None => {
            entry.insert("token", toml_edit::value(new.expose()));
        }
        Some(file) => {
            identity::write_private(file, format!("{}\n", new.expose()).as_bytes())
                .await
                .map_err(|source| PersistError::Write {
                    path: file.into(),
                    source,
                })?;
        }
    }
    entry.insert("token_obtained_at", toml_edit::value(obtained));
    match expires {
        Some(e) => {
            entry.insert("token_expires_at", toml_edit::value(e));
        }
        None => {
            entry.remove("token_expires_at");
        }
    }
    identity::write_private(path, doc.to_string().as_bytes())
        .await
        .map_err(|source| PersistError::Write {
            path: path.into(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_at_three_quarters_of_the_lifetime() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let day = Duration::from_secs(86_400);
        assert_eq!(reset_at(t0, t0 + 4 * day), t0 + 3 * day);
        assert_eq!(reset_at(t0, t0 - day), t0, "expired before issued: at once");
    }

    #[tokio::test]
    async fn persist_keeps_comments_and_other_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let text = "# top comment\nconcurrent = 2\n\n[[runners]]\n  name = \"a\" # keep me\n  token = \"glrt-aaaaaaaaaaaa\"\n  token_expires_at = \"2020-01-01T00:00:00Z\"\n\n[[runners]]\n  name = \"b\"\n  token = \"glrt-bbbbbbbbbbbb\"\n";
        tokio::fs::write(&path, text).await.unwrap();
        persist(
            &path,
            &Secret::new("glrt-bbbbbbbbbbbb"),
            None,
            &Secret::new("glrt-newnewnewnew"),
            "2026-01-01T00:00:00Z",
            Some("2026-02-01T00:00:00.000Z"),
        )
        .await
        .unwrap();
        let out = tokio::fs::read_to_string(&path).await.unwrap();
        assert!(out.starts_with("# top comment\n"), "{out}");
        assert!(out.contains("name = \"a\" # keep me"), "{out}");
        assert!(out.contains("glrt-aaaaaaaaaaaa"), "{out}");
        assert!(!out.contains("glrt-bbbbbbbbbbbb"), "{out}");
        let doc: toml_edit::DocumentMut = out.parse().unwrap();
        let b = &doc["runners"][1];
        assert_eq!(b["token"].as_str(), Some("glrt-newnewnewnew"));
        assert_eq!(
            b["token_obtained_at"].as_str(),
            Some("2026-01-01T00:00:00Z")
        );
        assert_eq!(
            b["token_expires_at"].as_str(),
            Some("2026-02-01T00:00:00.000Z")
        );
        assert_eq!(
            doc["runners"][0]["token_expires_at"].as_str(),
            Some("2020-01-01T00:00:00Z")
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let missing = persist(
            &path,
            &Secret::new("glrt-unknown000"),
            None,
            &Secret::new("glrt-x"),
            "2026-01-01T00:00:00Z",
            None,
        )
        .await;
        assert!(matches!(missing, Err(PersistError::NoEntry { .. })));
    }
}
