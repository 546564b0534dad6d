//! The bench's own registry for the compose-heavy scenarios: `isolated-runner/registry:test`
//! (Debian's docker-registry, storage inside the container) started for the run, filled with
//! the big test images, removed at the end. Nothing is pulled from a public registry.
//!
//! How each side reaches it:
//! - **shared-socket**: the host engine pulls from `127.0.0.1:<port>` (a loopback registry,
//!   which the engine accepts without configuration), as the seed team's jobs pull from their
//!   GitLab registry through the host socket; after the first pull the images are in the
//!   host's cache and the pull is free, which is the baseline the issue measures against.
//! - **dind**: the job's daemon pulls from `<docker0 address>:<port>`, over TLS with a CA made
//!   for this run (given to the job daemons through `registry_ca_files`). The registry is also
//!   named as `registry_mirror`: the job network's egress rules let a job reach that host
//!   address and no other on the host. The address is the default bridge's, local to this
//!   machine, never an outside interface.
//!
//! The jobs get `BENCH_REGISTRY=<address>/<repository prefix>` and name the images after it.

use super::super::target::TargetError;
use crate::config::{IsolationMode, RunnerConfig};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The registry image (built by `tests/images/build registry`).
pub const REGISTRY_IMAGE: &str = "isolated-runner/registry:test";
/// The job variable naming the registry and repository prefix.
pub const REGISTRY_VARIABLE: &str = "BENCH_REGISTRY";

/// A running registry holding the bench's images.
pub struct BenchRegistry {
    container: String,
    /// `127.0.0.1:<port>`: the host engine's view.
    loopback: String,
    /// `<docker0 ip>:<port>`: the job daemons' view.
    for_jobs: String,
    /// Repository prefix, unique to this run (`bench-<tag>`).
    prefix: String,
    /// Names in the registry (`php:heavy`, …).
    names: Vec<String>,
    /// The CA file the job daemons trust for `for_jobs`.
    ca_file: PathBuf,
    dir: PathBuf,
}

async fn docker(args: &[&str]) -> Result<String, TargetError> {
    let out = tokio::process::Command::new("docker")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| TargetError(format!("run docker {}: {e}", args.join(" "))))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(text.trim().to_string())
    } else {
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        Err(TargetError(format!(
            "docker {} failed: {}",
            args.join(" "),
            text.trim()
        )))
    }
}

/// The host port `docker port` shows for `ip`.
fn port_on(ports: &str, ip: &str) -> Option<String> {
    ports
        .lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{ip}:")).map(str::to_string))
}

impl BenchRegistry {
    /// Starts the registry (files under `dir`, which it creates), pushes each
    /// `(local image, name)` of `images` into it under a fresh prefix and removes the local
    /// tags it made. On failure, whatever was started is removed again.
    pub async fn start(dir: &Path, images: &[(&str, &str)]) -> Result<BenchRegistry, TargetError> {
        for (local, _) in images {
            docker(&["image", "inspect", "-f", "{{.Id}}", local])
                .await
                .map_err(|_| {
                    TargetError(format!(
                        "image {local} is missing: build it with tests/images/build (the \
                         compose-heavy scenarios push it into the bench's own registry)"
                    ))
                })?;
        }
        // The default bridge's host address (docker0): containers reach the host on it.
        let bridge = docker(&[
            "network",
            "inspect",
            "bridge",
            "-f",
            "{{index .Options \"com.docker.network.bridge.name\"}}",
        ])
        .await
        .ok()
        .filter(|b| !b.is_empty() && b != "<no value>")
        .unwrap_or_else(|| "docker0".to_string());
        let gateway: std::net::IpAddr = nix::ifaddrs::getifaddrs()
            .map_err(|e| TargetError(format!("list network interfaces: {e}")))?
            .filter(|i| i.interface_name == bridge)
            .find_map(|i| {
                i.address
                    .and_then(|a| a.as_sockaddr_in().map(|s| s.ip().into()))
            })
            .ok_or_else(|| {
                TargetError(format!("the default bridge {bridge} has no IPv4 address"))
            })?;
        if !is_local_private(gateway) {
            return Err(TargetError(format!(
                "the default bridge's gateway {gateway} is not a private address; the bench \
                 publishes its registry only on local addresses"
            )));
        }
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let tag = &tag[..8];
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| TargetError(format!("create {}: {e}", dir.display())))?;
        let pki = crate::pki::issue_job_pki(&crate::pki::PkiRequest {
            job_id: 0,
            server_dns: vec!["localhost".to_string()],
            server_ips: vec![gateway, std::net::IpAddr::from([127, 0, 0, 1])],
            validity: Duration::from_secs(24 * 3600),
        })
        .map_err(|e| TargetError(format!("certificates for the bench registry: {e}")))?;
        for (name, data) in [
            ("server.crt", pki.server.cert_pem.as_str()),
            ("server.key", pki.server.key_pem.expose()),
            ("ca.crt", pki.server.ca_pem.as_str()),
        ] {
            let path = dir.join(name);
            tokio::fs::write(&path, data)
                .await
                .map_err(|e| TargetError(format!("write {}: {e}", path.display())))?;
        }
        let container = format!("ir-bench-{tag}-registry");
        let mut registry = BenchRegistry {
            container: container.clone(),
            loopback: String::new(),
            for_jobs: String::new(),
            prefix: format!("bench-{tag}"),
            names: images.iter().map(|(_, n)| n.to_string()).collect(),
            ca_file: dir.join("ca.crt"),
            dir: dir.to_path_buf(),
        };
        let started = async {
            docker(&[
                "run",
                "-d",
                "--name",
                &container,
                "--label",
                &format!("bench-registry={tag}"),
                "-e",
                "REGISTRY_HTTP_TLS_CERTIFICATE=/certs/server.crt",
                "-e",
                "REGISTRY_HTTP_TLS_KEY=/certs/server.key",
                "-v",
                &format!("{}:/certs:ro", dir.display()),
                "-p",
                "127.0.0.1::5000",
                "-p",
                &format!("{gateway}::5000"),
                REGISTRY_IMAGE,
            ])
            .await?;
            let ports = docker(&["port", &container, "5000/tcp"]).await?;
            let (Some(lo), Some(gw)) = (
                port_on(&ports, "127.0.0.1"),
                port_on(&ports, &gateway.to_string()),
            ) else {
                return Err(TargetError(format!("registry ports: {ports}")));
            };
            registry.loopback = format!("127.0.0.1:{lo}");
            registry.for_jobs = format!("{gateway}:{gw}");
            registry.wait_listening().await?;
            for (local, name) in images {
                let reference = format!("{}/{}/{name}", registry.loopback, registry.prefix);
                docker(&["tag", local, &reference]).await?;
                let pushed = docker(&["push", "-q", &reference]).await;
                // Only the tag goes; the image keeps its own name.
                let untagged = docker(&["rmi", &reference]).await;
                pushed?;
                untagged?;
            }
            Ok(())
        }
        .await;
        match started {
            Ok(()) => Ok(registry),
            Err(e) => {
                for f in registry.stop().await {
                    tracing::warn!(error = %f, "removing the bench registry");
                }
                Err(e)
            }
        }
    }

    /// Waits for the registry's log line that it listens (the port proxy accepts earlier).
    async fn wait_listening(&self) -> Result<(), TargetError> {
        for _ in 0..300 {
            let out = tokio::process::Command::new("docker")
                .args(["logs", &self.container])
                .stdin(std::process::Stdio::null())
                .output()
                .await
                .map_err(|e| TargetError(format!("docker logs: {e}")))?;
            let text = String::from_utf8_lossy(&out.stderr).into_owned()
                + &String::from_utf8_lossy(&out.stdout);
            if text.contains("listening on") {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(TargetError(format!(
            "registry {} never listened",
            self.container
        )))
    }

    /// The registry container's name.
    pub fn container(&self) -> &str {
        &self.container
    }

    /// Points the dind side at the registry: its CA for the job daemons and the mirror entry
    /// that opens the job network's egress to it.
    pub fn configure(&self, runner: &mut RunnerConfig) {
        let iso = &mut runner.docker.isolation;
        iso.registry_ca_files
            .insert(self.for_jobs.clone(), self.ca_file.clone());
        if iso.registry_mirror.is_none() {
            iso.registry_mirror = Some(format!("https://{}/", self.for_jobs));
        }
    }

    /// `BENCH_REGISTRY` for each mode.
    pub fn variables(&self) -> Vec<(IsolationMode, String, String)> {
        [
            (IsolationMode::Dind, &self.for_jobs),
            (IsolationMode::SharedSocket, &self.loopback),
        ]
        .into_iter()
        .map(|(mode, addr)| {
            (
                mode,
                REGISTRY_VARIABLE.to_string(),
                format!("{addr}/{}", self.prefix),
            )
        })
        .collect()
    }

    /// Removes the registry container, the tags the shared-socket jobs pulled onto the host
    /// and the certificate files. Returns what could not be removed.
    pub async fn stop(self) -> Vec<String> {
        let mut failures = Vec::new();
        if !self.loopback.is_empty() {
            for name in &self.names {
                let reference = format!("{}/{}/{name}", self.loopback, self.prefix);
                // Present only if a shared-socket job pulled it.
                if docker(&["image", "inspect", "-f", "{{.Id}}", &reference])
                    .await
                    .is_ok()
                    && let Err(e) = docker(&["rmi", &reference]).await
                {
                    failures.push(e.0);
                }
            }
        }
        if let Err(e) = docker(&["rm", "-f", "-v", &self.container]).await {
            failures.push(e.0);
        }
        if let Err(e) = tokio::fs::remove_dir_all(&self.dir).await {
            failures.push(format!("remove {}: {e}", self.dir.display()));
        }
        failures
    }
}

/// Private (RFC 1918) or loopback: an address of this machine's own networks.
fn is_local_private(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => v4.is_private() || v4.is_loopback(),
        std::net::IpAddr::V6(v6) => v6.is_loopback(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_published_port_per_address() {
        let ports = "127.0.0.1:49153\n172.17.0.1:49154\n";
        assert_eq!(port_on(ports, "127.0.0.1").as_deref(), Some("49153"));
        assert_eq!(port_on(ports, "172.17.0.1").as_deref(), Some("49154"));
        assert_eq!(port_on(ports, "10.0.0.1"), None);
    }

    #[test]
    fn only_local_addresses_are_used() {
        assert!(is_local_private("172.17.0.1".parse().expect("ip")));
        assert!(!is_local_private("8.8.8.8".parse().expect("ip")));
    }
}
