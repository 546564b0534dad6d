//! Glue between the dind backend and [`crate::netpolicy`]: which endpoints a job needs, which
//! host interface its bridge is, and which resolvers the inner daemon gets.
//!
//! The policy is installed after the job's bridge exists and before the sidecar (or any
//! service or script container) starts, and removed in teardown after every container is
//! gone and before the network is removed. The sidecar sits on the job bridge, and the inner
//! daemon's containers are NATed behind the sidecar's address, so the same chain filters
//! them too: nothing a job starts on its own daemon has another way out.
//!
//! The runner host reaching the sidecar (the mTLS readiness ping, image preloads) is host to
//! bridge traffic: it leaves through OUTPUT, which the policy does not touch; the replies come
//! back in through INPUT and are accepted by the chain's ESTABLISHED rule.

use super::network::CarvedNetwork;
use super::{Error, HostPort};
use crate::config::RunnerConfig;
use crate::docker::Docker;
use crate::netpolicy::{self, Endpoint, JobNet, NetPolicy, Options};
use std::net::{IpAddr, SocketAddr};

/// Where the resolvers come from; Docker reads the same files for its containers.
const RESOLV_CONF: &str = "/etc/resolv.conf";
/// With systemd-resolved, `/etc/resolv.conf` names only 127.0.0.53; the real upstreams are here.
const RESOLVED_CONF: &str = "/run/systemd/resolve/resolv.conf";

/// One job's installed policy; removing it is idempotent.
#[derive(Debug, Clone)]
pub struct JobEgress {
    policy: NetPolicy,
    job_id: u64,
    chain: String,
}

impl JobEgress {
    /// The per-job chain name (`IR-<runner8>-<job>`), the same in both families.
    pub fn chain(&self) -> &str {
        &self.chain
    }

    /// Removes the job's chains and jumps from both families.
    pub async fn remove(&self) -> Result<(), Error> {
        self.policy
            .remove(self.job_id)
            .await
            .map_err(policy_err(format!(
                "remove the network policy of job {}",
                self.job_id
            )))
    }
}

fn policy_err(context: String) -> impl FnOnce(netpolicy::Error) -> Error {
    move |e| Error::Other {
        context,
        detail: e.to_string(),
    }
}

/// A policy handle for `runner_id` with the runner's address pool.
pub fn policy_for(runner: &RunnerConfig, runner_id: &str) -> NetPolicy {
    let mut opts = Options::new(runner_id, runner.docker.isolation.address_pool);
    opts.block_private_networks = runner.docker.isolation.block_private_networks;
    NetPolicy::new(opts)
}

/// The handle teardown uses, made before anything is installed: a prepare cancelled in the
/// middle of `install` still has its half-installed chain removed.
pub fn handle_for(runner: &RunnerConfig, runner_id: &str, job_id: u64) -> Result<JobEgress, Error> {
    let policy = policy_for(runner, runner_id);
    let chain = policy
        .chain_for(job_id)
        .map_err(policy_err("name the job's firewall chain".to_string()))?;
    Ok(JobEgress {
        policy,
        job_id,
        chain,
    })
}

/// Installs the job's policy on its bridge. Call after the bridge exists, before any container
/// starts on it. What it opens comes from the runner's config only ([`needed_endpoints`]): the
/// payload's clone URL was checked against the same config before the job was prepared
/// (`job::trust::clone_endpoint`), so a slot's rules made before its job was known
/// already fit the job.
pub async fn install(
    handle: &JobEgress,
    docker: &Docker,
    runner: &RunnerConfig,
    naming: &super::naming::Naming,
    net: &CarvedNetwork,
) -> Result<(), Error> {
    let bridge_iface = bridge_interface(docker, naming, net).await?;
    let allow = needed_endpoints(runner).await;
    let job = JobNet {
        job_id: handle.job_id,
        bridge_iface,
        subnet: net.subnet,
        allow,
    };
    handle
        .policy
        .install(&job, &runner.docker.isolation.egress)
        .await
        .map_err(policy_err(format!(
            "install the network policy on {}",
            job.bridge_iface
        )))
}

/// `br-<first 12 hex of the network id>`: the name Docker gives a bridge it creates without a
/// `com.docker.network.bridge.name` option (the runner never sets one).
async fn bridge_interface(
    docker: &Docker,
    naming: &super::naming::Naming,
    net: &CarvedNetwork,
) -> Result<String, Error> {
    let filters = crate::docker::label_filters(&naming.runner_id, Some(naming.job_id));
    let nets = docker
        .list_networks(&filters)
        .await
        .map_err(super::naming::other("find the job network's id"))?;
    let found = nets.iter().find(|n| n.name == net.name);
    match found.and_then(|n| n.id.get(..12)) {
        Some(short) => Ok(format!("br-{short}")),
        None => Err(Error::Other {
            context: "find the job network's bridge".to_string(),
            detail: format!("network {} is not listed by the daemon", net.name),
        }),
    }
}

/// What every job must reach even on the host or with egress denied: GitLab (the job clones
/// from it and the helper uploads artifacts to it), the config's `clone_url` (where GitLab
/// serves clones when that is not its URL), the registry mirror, and the DNS resolvers (TCP and
/// UDP 53: the configured `dns`, else the host's) so names still resolve. Names are resolved now, so a later DNS answer cannot widen the policy.
/// A name that does not resolve is skipped (the job will fail to reach it, which is the safe
/// direction).
/// Nothing here comes from the job's payload (H6).
pub async fn needed_endpoints(runner: &RunnerConfig) -> Vec<Endpoint> {
    let mut out = Vec::new();
    let mut hosts: Vec<HostPort> = super::clone_hosts(runner);
    if let Some(m) = runner.docker.isolation.registry_mirror.as_deref()
        && let Some(hp) = url::Url::parse(m)
            .ok()
            .as_ref()
            .and_then(HostPort::from_url)
    {
        hosts.push(hp);
    }
    hosts.dedup();
    for HostPort { host, port } in hosts {
        match tokio::net::lookup_host((host.as_str(), port)).await {
            Ok(addrs) => out.extend(addrs.map(Endpoint::tcp)),
            Err(e) => {
                tracing::warn!(%host, error = %e, "cannot resolve an endpoint the job needs; it stays blocked")
            }
        }
    }
    // Always, not only when egress is limited: the sidecar is started with these as `--dns`,
    // and they may sit in a range the chain drops (a LAN resolver under
    // `block_private_networks`, Azure's 168.63.129.16). Port 53 only. `[runners.docker] dns`
    // replaces the host's resolvers for the job's containers.
    let resolvers = if runner.docker.dns.is_empty() {
        host_resolvers().await
    } else {
        runner.docker.dns.clone()
    };
    for ip in resolvers {
        let a = SocketAddr::new(ip, 53);
        out.push(Endpoint::udp(a));
        out.push(Endpoint::tcp(a));
    }
    out.sort_by_key(|e| (e.addr, e.protocol == netpolicy::Protocol::Udp));
    out.dedup();
    out
}

/// The host's non-loopback resolvers: `/etc/resolv.conf`, or systemd-resolved's upstream list
/// when the former names only loopback stubs. Empty when neither has one.
pub async fn host_resolvers() -> Vec<IpAddr> {
    for path in [RESOLV_CONF, RESOLVED_CONF] {
        let Ok(text) = tokio::fs::read_to_string(path).await else {
            continue;
        };
        let found = parse_resolvers(&text);
        if !found.is_empty() {
            return found;
        }
    }
    Vec::new()
}

/// `nameserver` lines that are not loopback (a loopback stub is unreachable from a container).
pub fn parse_resolvers(text: &str) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = text
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver")).then(|| w.next()).flatten()
        })
        // `fe80::1%eth0` carries a zone; such resolvers are link-local and never usable here.
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
        .collect();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Egress;

    #[test]
    fn resolvers_skip_loopback_and_garbage() {
        let text = "# comment\nnameserver 127.0.0.53\nnameserver 10.255.255.53\nnameserver ::1\n\
                    nameserver fe80::1%eth0\nnameserver 2001:db8::53\nsearch example\nnameserver\n";
        assert_eq!(
            parse_resolvers(text),
            vec![
                "10.255.255.53".parse::<IpAddr>().unwrap(),
                "2001:db8::53".parse().unwrap()
            ]
        );
        assert!(parse_resolvers("nameserver 127.0.0.11\n").is_empty());
    }

    #[tokio::test]
    async fn gitlab_mirror_and_dns_are_allowed_whatever_the_egress() {
        let mut r = RunnerConfig {
            url: url::Url::parse("http://127.0.0.1:8929/").unwrap(),
            ..Default::default()
        };
        r.docker.isolation.registry_mirror = Some("https://127.0.0.2:5000".to_string());
        let eps = needed_endpoints(&r).await;
        assert!(eps.contains(&Endpoint::tcp("127.0.0.1:8929".parse().unwrap())));
        assert!(eps.contains(&Endpoint::tcp("127.0.0.2:5000".parse().unwrap())));
        for egress in [Egress::Allow, Egress::Deny] {
            r.docker.isolation.egress = egress;
            let eps = needed_endpoints(&r).await;
            for ip in host_resolvers().await {
                assert!(eps.contains(&Endpoint::udp(SocketAddr::new(ip, 53))));
                assert!(eps.contains(&Endpoint::tcp(SocketAddr::new(ip, 53))));
            }
        }
    }

    /// The config's `clone_url` may put the clone on another host or port than the runner's URL:
    /// that host:port is allowed like the GitLab URL, names resolved the same way. Nothing else
    /// opens: the payload's clone URL is not an input.
    #[tokio::test]
    async fn the_configured_clone_host_is_allowed_like_gitlab() {
        let mut r = RunnerConfig {
            url: url::Url::parse("http://127.0.0.1:8929/").unwrap(),
            ..Default::default()
        };
        let without = needed_endpoints(&r).await;
        assert!(!without.iter().any(|e| e.addr.port() == 8443));
        r.clone_url = Some(url::Url::parse("https://127.0.0.3:8443/").unwrap());
        let eps = needed_endpoints(&r).await;
        assert!(eps.contains(&Endpoint::tcp("127.0.0.1:8929".parse().unwrap())));
        assert!(eps.contains(&Endpoint::tcp("127.0.0.3:8443".parse().unwrap())));
        // A name goes through the resolver, as the GitLab URL's host does.
        r.clone_url = Some(url::Url::parse("http://localhost:2222/").unwrap());
        let eps = needed_endpoints(&r).await;
        let expected: Vec<Endpoint> = tokio::net::lookup_host(("localhost", 2222))
            .await
            .unwrap()
            .map(Endpoint::tcp)
            .collect();
        assert!(!expected.is_empty());
        for e in &expected {
            assert!(eps.contains(e), "{e:?} missing from {eps:?}");
        }
        // The same host:port as GitLab's URL adds nothing.
        r.clone_url = Some(url::Url::parse("http://127.0.0.1:8929/other/").unwrap());
        assert_eq!(needed_endpoints(&r).await, without);
    }
}
