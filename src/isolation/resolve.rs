//! Name resolution settings from `[runners.docker]` (`extra_hosts`, `dns`, `dns_search`), given to
//! every container of a job on the host daemon (job, helper, services, the sidecar) and, for DNS,
//! to the sidecar's inner daemon, whose containers cannot use the sidecar's own resolver.

use crate::config::DockerConfig;
use crate::docker::ContainerSpec;
use std::net::IpAddr;

/// What a job's containers resolve with, beyond Docker's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolve {
    /// `host:ip` entries added to `/etc/hosts`.
    pub extra_hosts: Vec<String>,
    /// DNS servers (Docker's embedded DNS forwards to them on the job network).
    pub dns: Vec<IpAddr>,
    /// Search domains.
    pub dns_search: Vec<String>,
}

impl Resolve {
    /// The settings of a runner entry.
    pub fn from_docker(docker: &DockerConfig) -> Self {
        Resolve {
            extra_hosts: docker.extra_hosts.clone(),
            dns: docker.dns.clone(),
            dns_search: docker.dns_search.clone(),
        }
    }

    /// Sets them on a container of the host daemon.
    pub fn apply(&self, spec: &mut ContainerSpec) {
        spec.extra_hosts = self.extra_hosts.clone();
        spec.dns = self.dns.iter().map(IpAddr::to_string).collect();
        spec.dns_search = self.dns_search.clone();
    }

    /// `--dns`/`--dns-search` flags for the inner daemon. The configured servers win over the
    /// host's (`host_resolvers`), as gitlab-runner's `dns` replaces the daemon's.
    pub fn inner_daemon_args(&self, host_resolvers: &[IpAddr]) -> Vec<String> {
        let servers = if self.dns.is_empty() {
            host_resolvers
        } else {
            &self.dns
        };
        let mut args = inner_dns_args(servers);
        args.extend(self.dns_search.iter().map(|d| format!("--dns-search={d}")));
        args
    }
}

/// `--dns` flags for the inner dockerd: the host's own upstream resolvers (the sidecar's
/// resolv.conf names only Docker's 127.0.0.11, which the inner daemon cannot hand to its
/// containers, so without these it would fall back to 8.8.8.8). Queries from inner containers
/// are NATed behind the sidecar and pass the job bridge's policy, which lets DNS to these
/// resolvers through even with `egress = "deny"`. Empty when the host has none. `[runners.docker]
/// dns` replaces the host's resolvers (see `Resolve::inner_daemon_args`).
pub fn inner_dns_args(resolvers: &[IpAddr]) -> Vec<String> {
    resolvers.iter().map(|ip| format!("--dns={ip}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Resolve {
        Resolve {
            extra_hosts: vec!["gitlab.corp.test:10.1.2.3".into()],
            dns: vec!["10.1.0.53".parse().unwrap()],
            dns_search: vec!["corp.test".into()],
        }
    }

    #[test]
    fn applies_to_containers() {
        let mut spec = ContainerSpec::default();
        sample().apply(&mut spec);
        assert_eq!(spec.extra_hosts, ["gitlab.corp.test:10.1.2.3"]);
        assert_eq!(spec.dns, ["10.1.0.53"]);
        assert_eq!(spec.dns_search, ["corp.test"]);
        let mut plain = ContainerSpec::default();
        Resolve::default().apply(&mut plain);
        assert!(plain.extra_hosts.is_empty() && plain.dns.is_empty());
    }

    #[test]
    fn configured_dns_replaces_the_hosts_for_the_inner_daemon() {
        let host: Vec<IpAddr> = vec!["192.0.2.1".parse().unwrap()];
        assert_eq!(
            sample().inner_daemon_args(&host),
            ["--dns=10.1.0.53", "--dns-search=corp.test"]
        );
        assert_eq!(
            Resolve::default().inner_daemon_args(&host),
            ["--dns=192.0.2.1"]
        );
        assert!(Resolve::default().inner_daemon_args(&[]).is_empty());
    }

    #[test]
    fn inner_dns_flags_name_each_resolver() {
        let r: Vec<IpAddr> = vec![
            "10.255.255.53".parse().unwrap(),
            "2001:db8::53".parse().unwrap(),
        ];
        assert_eq!(
            inner_dns_args(&r),
            vec![
                "--dns=10.255.255.53".to_string(),
                "--dns=2001:db8::53".to_string()
            ]
        );
        assert!(inner_dns_args(&[]).is_empty());
    }
}
