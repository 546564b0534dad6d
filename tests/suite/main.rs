//! The integration test suite: one binary, one module per area, sharing `support`.
//!
//! One binary instead of one per file, so `support/` compiles once and the link step runs once
//! (cargo's own `tests/testsuite` and ripgrep's `tests/tests.rs` do the same). `cargo test` runs it
//! with everything else; one area alone is `cargo test --test suite e2e::`, one test
//! `cargo test --test suite e2e::compose_stack_sees_the_clone_and_publishes_ports`.
//!
//! A new area: add `tests/suite/<area>.rs`, declare it below (sorted), and reach the helpers as
//! `crate::support::…` (or `use crate::support;` then `support::…`).

mod support;

mod bench;
mod bench_real;
mod cache;
mod cache_jobs;
mod cache_store;
mod cleanup;
mod clone_path;
mod config;
mod crash_recovery;
mod data_root;
mod docker_backend;
mod doctor;
mod e2e;
mod e2e_exec;
mod exec;
mod final_state;
mod git_sources;
mod layers;
mod limits;
mod managed_mirror;
mod metrics;
mod netpolicy;
mod pipeline;
mod pipeline_compat;
mod protocol;
mod registry_mirror;
mod registry_pull;
mod root_store;
mod rootless;
mod run_metrics;
mod security_access;
mod security_network;
mod security_payload;
mod services;
mod soak;
mod store_run;
mod systemd;
mod warm_pool;
