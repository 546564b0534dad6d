//! Waiting for a job's services the way gitlab-runner does: each service's exposed TCP ports
//! (the image's `ExposedPorts`, inspected on the engine that runs the service) are tried until
//! they accept a connection or `wait_for_services_timeout` passes; a service that does not
//! come up is reported with the tail of its log and the job goes on.
//!
//! The ports are tried from a short-lived helper-image container on the job's network, not
//! from the runner: the probe then takes exactly the path the job's script will take (the
//! service's name on the job network, the job bridge and its firewall), it works when the
//! runner cannot route to job bridges (a runner in a container, `host_path_map`), and the
//! runner, which is root, never opens a connection to a container the job controls.

use super::Error;
use super::naming::{detached, other};
use super::state::{JOB_CAP_DROP, JobState, StartedService};
use crate::docker::ContainerSpec;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How many log lines a warning about a service carries (gitlab-runner shows the container's
/// recent log too).
pub const WARNING_LOG_LINES: usize = 100;

/// A service that did not accept connections in time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceWarning {
    /// Alias or image.
    pub service: String,
    /// Service container name.
    pub container: String,
    /// The exposed TCP ports that were tried.
    pub ports: Vec<u16>,
    /// Why the health check failed.
    pub error: String,
    /// The last [`WARNING_LOG_LINES`] lines of the service's log (raw; the trace masks them).
    pub logs: String,
}

/// One service's log, for `CI_DEBUG_SERVICES`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceLog {
    /// Alias or image.
    pub service: String,
    /// The log text (raw; the trace masks it).
    pub logs: String,
}

/// The probe the helper container runs: `sh -c PROBE probe <host> <port>...`. Every port in
/// turn, once a second, until it connects. bash's `/dev/tcp` when the image has bash (the
/// default helper), else `nc -z` (OpenBSD/GNU netcat), else busybox `nc … -e true` (busybox
/// nc has no `-z`; `-e` runs `true` once connected, so it exits at once either way).
const PROBE: &str = r#"host=$1; shift
probe() {
  if command -v bash >/dev/null 2>&1; then
    bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$host" "$1" >/dev/null 2>&1 && return 0
  fi
  if command -v nc >/dev/null 2>&1; then
    nc -z -w 1 "$host" "$1" </dev/null >/dev/null 2>&1 && return 0
    nc -w 1 "$host" "$1" -e true </dev/null >/dev/null 2>&1 && return 0
  fi
  return 1
}
for port in "$@"; do
  until probe "$port"; do sleep 1; done
done
"#;

/// The container that probes service `i` (`svc` named `host`) for `ports`.
fn probe_spec(
    state: &JobState,
    i: usize,
    helper_image: &str,
    host: &str,
    ports: &[u16],
    network: &str,
) -> ContainerSpec {
    let mut cmd = vec![
        "sh".to_string(),
        "-c".to_string(),
        PROBE.to_string(),
        "probe".to_string(),
        host.to_string(),
    ];
    cmd.extend(ports.iter().map(u16::to_string));
    let mut spec = ContainerSpec {
        name: state.naming.name(&format!("svc-{i}-wait")),
        image: helper_image.to_string(),
        entrypoint: Some(Vec::new()),
        cmd: Some(cmd),
        labels: state.naming.labels("service-wait"),
        network: Some(network.to_string()),
        cap_drop: JOB_CAP_DROP.iter().map(|s| s.to_string()).collect(),
        security_opt: vec!["no-new-privileges".to_string()],
        init: true,
        ..Default::default()
    };
    state.resolve.apply(&mut spec);
    spec
}

impl JobState {
    /// Waits for every started service at once (each has the whole `timeout`, as in
    /// gitlab-runner); returns the ones that did not come up.
    pub async fn wait_for_services(
        &self,
        timeout: Duration,
        cancel: CancellationToken,
    ) -> Vec<ServiceWarning> {
        let Some(helper) = self.script.as_ref().map(|s| s.helper_image.clone()) else {
            return Vec::new();
        };
        let waits = self
            .started
            .iter()
            .enumerate()
            .map(|(i, s)| self.wait_for_service(i, s, &helper, timeout, cancel.clone()));
        futures::future::join_all(waits)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    async fn wait_for_service(
        &self,
        i: usize,
        svc: &StartedService,
        helper_image: &str,
        timeout: Duration,
        cancel: CancellationToken,
    ) -> Option<ServiceWarning> {
        let network = self.network.as_ref()?;
        let ports = match self.docker.image_exposed_tcp_ports(&svc.image).await {
            // Nothing declared: nothing to wait for (gitlab-runner skips such services too).
            Ok(p) if p.is_empty() => return None,
            Ok(p) => p,
            Err(e) => {
                return Some(self.warning(svc, Vec::new(), e.to_string()).await);
            }
        };
        let error = match self
            .probe(
                i,
                svc,
                helper_image,
                &ports,
                network.name.as_str(),
                timeout,
                cancel,
            )
            .await
        {
            Ok(None) => return None,
            // The job is being stopped: no warning about a wait nobody waits for.
            Err(Error::Canceled) => return None,
            Ok(Some(error)) => error,
            Err(e) => e.to_string(),
        };
        Some(self.warning(svc, ports, error).await)
    }

    /// Runs the probe container; `Ok(None)` when every port connected, `Ok(Some(why))` when
    /// not in time.
    #[allow(clippy::too_many_arguments)]
    async fn probe(
        &self,
        i: usize,
        svc: &StartedService,
        helper_image: &str,
        ports: &[u16],
        network: &str,
        timeout: Duration,
        cancel: CancellationToken,
    ) -> Result<Option<String>, Error> {
        let spec = probe_spec(self, i, helper_image, &svc.container, ports, network);
        let d = self.docker.clone();
        let id = detached(
            &self.inflight,
            async move { d.create_container(&spec).await },
        )
        .await
        .map_err(other(format!(
            "create the health check of service {}",
            svc.label()
        )))?;
        let outcome = async {
            self.docker
                .start_container(&id)
                .await
                .map_err(other(format!(
                    "start the health check of service {}",
                    svc.label()
                )))?;
            tokio::select! {
                biased;
                _ = cancel.cancelled() => Err(Error::Canceled),
                r = tokio::time::timeout(timeout, self.docker.wait_container(&id)) => match r {
                    Ok(Ok(0)) => Ok(None),
                    Ok(Ok(code)) => Ok(Some(format!("the health check exited with code {code}"))),
                    Ok(Err(e)) => Err(other("wait for the health check")(e)),
                    Err(_) => Ok(Some(format!(
                        "no connection to port {} within {}s",
                        join_ports(ports),
                        timeout.as_secs()
                    ))),
                },
            }
        }
        .await;
        // Done with either way; one teardown cannot remove is left to its label sweep.
        if let Err(e) = self.docker.remove_container(&id).await {
            tracing::debug!(container = %id, error = %e, "health check container not removed");
        }
        outcome
    }

    async fn warning(
        &self,
        svc: &StartedService,
        ports: Vec<u16>,
        error: String,
    ) -> ServiceWarning {
        let logs = self
            .docker
            .logs_tail(&svc.id, WARNING_LOG_LINES)
            .await
            .unwrap_or_else(|e| format!("(the service's log cannot be read: {e})\n"));
        ServiceWarning {
            service: svc.label().to_string(),
            container: svc.container.clone(),
            ports,
            error,
            logs,
        }
    }

    /// The last `lines` lines of every service's log.
    pub async fn service_logs(&self, lines: usize) -> Vec<ServiceLog> {
        let mut out = Vec::new();
        for svc in &self.started {
            let logs = self
                .docker
                .logs_tail(&svc.id, lines)
                .await
                .unwrap_or_else(|e| format!("(the service's log cannot be read: {e})\n"));
            out.push(ServiceLog {
                service: svc.label().to_string(),
                logs,
            });
        }
        out
    }
}

/// `5432` or `80, 443`.
pub fn join_ports(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isolation::naming::Naming;
    use crate::paths::HostPathMap;

    #[tokio::test]
    async fn probe_runs_restricted_on_the_job_network() {
        let Ok(docker) = crate::docker::Docker::connect(None).await else {
            return;
        };
        let naming = Naming::new("r1", 5, Duration::from_secs(60)).unwrap();
        let state = JobState::new(docker, naming, HostPathMap::new(Default::default()));
        let spec = probe_spec(&state, 2, "helper:1", "ir-r1-5-svc-2", &[80, 5432], "net");
        assert_eq!(spec.name, "ir-r1-5-svc-2-wait");
        assert_eq!(spec.network.as_deref(), Some("net"));
        assert_eq!(spec.security_opt, ["no-new-privileges"]);
        let cmd = spec.cmd.unwrap();
        assert_eq!(cmd[4..], ["ir-r1-5-svc-2", "80", "5432"]);
        assert_eq!(join_ports(&[80, 443]), "80, 443");
    }
}
