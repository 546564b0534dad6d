//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod daemon;
pub mod docker;
pub mod e2e;
pub mod fake_gitlab;
pub mod local_backend;
pub mod moto;
pub mod netns;
pub mod registry;
pub mod security;
pub mod store;
pub mod test_executor;

use std::time::Duration;

/// Waits until `cond` holds, checking every few milliseconds; panics after `timeout`.
pub async fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    assert!(
        wait_until(timeout, &mut cond).await,
        "timed out waiting for {what}"
    );
}

/// Waits until `cond` holds, checking every 20 ms, at most `timeout`; returns whether it held.
pub async fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `git` in `dir` with a fixed author (blocking: for test set-up); must succeed. Returns
/// its trimmed stdout.
pub fn git(dir: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
