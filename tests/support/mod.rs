//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod local_backend;
pub mod netns;

use std::time::Duration;

/// Waits until `cond` holds, checking every few milliseconds; panics after `timeout`.
pub async fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
