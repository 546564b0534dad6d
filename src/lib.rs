//! isolated-runner: a GitLab CI runner that gives every job its own Docker daemon.
//!
//! The binary (`src/main.rs`) is a thin dispatcher over [`cli`]; everything else lives in the
//! library modules below, one job each. See `docs/architecture.md`.

#![warn(missing_docs)]
// Outside data is never unwrapped; `expect` is kept for true invariants and says why it holds.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod bench;
pub mod cache;
pub mod cleanup;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod docker;
pub mod doctor;
pub mod gitlab;
pub mod isolation;
pub mod job;
pub mod metrics;
pub mod netpolicy;
pub mod outcome;
pub mod paths;
pub mod percent;
pub mod pki;
pub mod secret;
pub mod trace;

/// Installs the process-wide TLS crypto provider (ring). Idempotent; call before any TLS use.
pub fn install_crypto_provider() {
    // An error only means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
