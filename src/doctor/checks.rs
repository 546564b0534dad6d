//! The checks: pure functions from [`Facts`] to [`Check`]s. Ids and hints are documented in
//! `docs/doctor.md`; keep both in step.

mod acl;
mod cache_store;
mod config;
mod docker;
mod gitlab;
mod host;
mod mirror;
mod network;
mod pool;
mod profiles;
mod root_store;

use super::facts::{
    Cgroup, ConfigState, DeepResult, Facts, GitlabFact, ProbeError, RootStoreState, TokenFact, caps,
};
use super::versions::{self, Advisory};
use super::{Check, Status};
use crate::config::validate::{exposes_docker_socket, parse_volume, shared_volume_warning};
use crate::config::{IsolationMode, SidecarProfile};
use acl::rootless_acl;
use cache_store::cache_store;
use config::*;
use docker::*;
use gitlab::*;
use host::*;
use ipnet::Ipv4Net;
use mirror::mirror_up;
pub use network::free_blocks;
use network::*;
use pool::warm_pool;
use profiles::sidecar_profiles;
use root_store::root_store;
use std::time::Duration;

/// Every check, in display order within its group.
pub fn evaluate(f: &Facts) -> Vec<Check> {
    vec![
        config_loads(f),
        config_permissions(f),
        config_volumes(f),
        host_cgroup(f),
        host_kernel(f),
        disk(f, "disk.builds"),
        disk(f, "disk.cache"),
        leftovers(f),
        docker_reachable(f),
        docker_api_version(f),
        docker_component(f, "docker.runc", "runc", versions::RUNC),
        docker_component(f, "docker.containerd", "containerd", versions::CONTAINERD),
        images_present(f),
        mirror_up(f),
        root_store(f),
        sidecar_profiles(f),
        warm_pool(f),
        rootless_acl(f),
        network_address_pool(f),
        netpolicy_rules(f),
        gitlab_reachable(f),
        gitlab_tls(f),
        gitlab_token(f),
        gitlab_clock_skew(f),
        cache_store(f),
    ]
}

const NO_CONFIG_HINT: &str =
    "pass --config FILE (default /etc/isolated-runner/config.toml) to check it";

fn skip(id: &'static str, message: impl Into<String>, hint: impl Into<String>) -> Check {
    Check::with(id, Status::Skip, message, hint)
}

/// The worst of several per-runner results, their messages joined.
fn combine(id: &'static str, parts: Vec<Check>) -> Check {
    let Some(status) = parts.iter().map(|c| c.status).max() else {
        return skip(id, "nothing to check", "");
    };
    let message = parts
        .iter()
        .map(|c| c.message.as_str())
        .collect::<Vec<_>>()
        .join("; ");
    let mut hints: Vec<&str> = Vec::new();
    for c in &parts {
        if !c.hint.is_empty() && !hints.contains(&c.hint.as_str()) {
            hints.push(&c.hint);
        }
    }
    Check::with(id, status, message, hints.join("\n"))
}

#[cfg(test)]
mod tests;
