//! The only module that talks to Docker (bollard): containers, exec/attach, networks, images.
//!
//! A thin async layer: it turns our own small spec types into bollard's models, so no other
//! module depends on bollard's (frequently changing) types, and it maps every failure into
//! [`Error`] with the operation and object it was about. Policy (which flags, which labels, what
//! order) lives in `isolation`, not here.

use bollard::query_parameters as q;
use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

pub mod auth;
mod body;
pub mod cred_helper;
#[cfg(test)]
pub(crate) mod fake;
mod images;
mod networks;

pub use images::{ImageFacts, PullEvent};

/// Label every object the runner creates carries (value `1`).
pub const LABEL_MANAGED: &str = "io.isolated-runner.managed";
/// Label with the runner id.
pub const LABEL_RUNNER: &str = "io.isolated-runner.runner";
/// Label with the job id.
pub const LABEL_JOB: &str = "io.isolated-runner.job";
/// Label with the deadline (unix seconds) after which the object is certainly stale.
pub const LABEL_DEADLINE: &str = "io.isolated-runner.deadline";
/// Label with the object's role in the job (`sidecar`, `build`, `helper`, `service`, `network`,
/// `data`).
pub const LABEL_ROLE: &str = "io.isolated-runner.role";
/// Label with the owning runner process (`<boot id>/<pid ns>/<pid>/<start ticks>`), so
/// `runner cleanup` can tell a live runner's objects from a dead one's (see `cleanup::owner`).
pub const LABEL_OWNER: &str = "io.isolated-runner.owner";

/// Errors of the Docker layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The daemon or the transport refused a request.
    #[error("{context}: {source}")]
    Api {
        /// The operation and object, e.g. `create container ir-1-sidecar`.
        context: String,
        /// bollard's error.
        #[source]
        source: bollard::errors::Error,
    },
    /// A reply that lacks what the runner needs.
    #[error("{context}: {detail}")]
    Reply {
        /// The operation.
        context: String,
        /// What was missing or wrong.
        detail: String,
    },
}

impl Error {
    /// The HTTP status the daemon answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api {
                source: bollard::errors::Error::DockerResponseServerError { status_code, .. },
                ..
            } => Some(*status_code),
            _ => None,
        }
    }

    /// True for 404 (no such object).
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// The daemon's message, if it sent one.
    pub fn daemon_message(&self) -> Option<&str> {
        match self {
            Error::Api {
                source: bollard::errors::Error::DockerResponseServerError { message, .. },
                ..
            } => Some(message),
            _ => None,
        }
    }
}

fn api(context: impl Into<String>) -> impl FnOnce(bollard::errors::Error) -> Error {
    let context = context.into();
    move |source| Error::Api { context, source }
}

/// How a mount looks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountSpec {
    /// A host path (already translated to the host's view).
    Bind {
        /// Host path.
        source: String,
        /// Path inside the container.
        target: String,
        /// Read-only.
        read_only: bool,
    },
    /// A named volume.
    Volume {
        /// Volume name.
        name: String,
        /// Path inside the container.
        target: String,
    },
    /// A tmpfs.
    Tmpfs {
        /// Path inside the container.
        target: String,
        /// Size cap in bytes.
        size: Option<i64>,
    },
}

/// A container to create.
#[derive(Debug, Clone, Default)]
pub struct ContainerSpec {
    /// Container name.
    pub name: String,
    /// Image reference (must exist locally: pulls happen before, in `isolation::images`).
    pub image: String,
    /// Entrypoint override; `Some(vec![])` clears the image's.
    pub entrypoint: Option<Vec<String>>,
    /// Command.
    pub cmd: Option<Vec<String>>,
    /// `KEY=value` environment.
    pub env: Vec<String>,
    /// Labels.
    pub labels: HashMap<String, String>,
    /// Working directory.
    pub working_dir: Option<String>,
    /// Mounts.
    pub mounts: Vec<MountSpec>,
    /// The one network to join (no default bridge).
    pub network: Option<String>,
    /// Aliases on that network.
    pub aliases: Vec<String>,
    /// Fixed IPv4 address on that network.
    pub ipv4: Option<String>,
    /// `--privileged`.
    pub privileged: bool,
    /// Capabilities to add.
    pub cap_add: Vec<String>,
    /// Capabilities to drop.
    pub cap_drop: Vec<String>,
    /// Security options (`no-new-privileges`, `seccomp=<json>`, `apparmor=…`, …).
    pub security_opt: Vec<String>,
    /// Private cgroup namespace.
    pub cgroupns_private: bool,
    /// OCI runtime (`sysbox-runc`); default when `None`.
    pub runtime: Option<String>,
    /// Memory limit in bytes (swap set equal, so no swap on top).
    pub memory: Option<i64>,
    /// CPUs.
    pub cpus: Option<f64>,
    /// Relative CPU weight (cgroup `cpu.shares`; the kernel's default is 1024).
    pub cpu_shares: Option<i64>,
    /// Pids limit.
    pub pids_limit: Option<i64>,
    /// Sysctls.
    pub sysctls: HashMap<String, String>,
    /// `nofile` ulimit (soft, hard).
    pub nofile: Option<(i64, i64)>,
    /// OOM score adjustment.
    pub oom_score_adj: Option<i64>,
    /// Run an init process as PID 1.
    pub init: bool,
    /// Keep stdin open (for attach).
    pub open_stdin: bool,
    /// User to run as.
    pub user: Option<String>,
    /// Paths to unmask in /proc and /sys (`systempaths=unconfined` equivalent when empty lists).
    pub unmask_system_paths: bool,
    /// `host:ip` entries for `/etc/hosts`.
    pub extra_hosts: Vec<String>,
    /// DNS servers.
    pub dns: Vec<String>,
    /// DNS search domains.
    pub dns_search: Vec<String>,
    /// Host device nodes given to the container at the same path (`--device`, rwm).
    pub devices: Vec<String>,
    /// Ports published on the host (`-p <host_ip>:<host_port>:<container_port>/tcp`).
    pub publish: Vec<PublishedPort>,
    /// `--restart unless-stopped`: the engine starts it again after its own restart.
    pub restart_unless_stopped: bool,
    /// `--read-only`: the root file system is read-only.
    pub read_only_root: bool,
}

/// A TCP port published on a host address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishedPort {
    /// Port inside the container.
    pub container_port: u16,
    /// Host address it is published on (never empty: the runner never publishes on all).
    pub host_ip: String,
    /// Host port; 0 = the engine picks a free one.
    pub host_port: u16,
}

/// What `runner doctor` reads from `docker version` and `docker info`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineFacts {
    /// Engine version (`20.10.24+dfsg1`).
    pub server_version: String,
    /// The engine's highest API version (`1.41`).
    pub api_version: String,
    /// `(name, version)` of the components (`Engine`, `containerd`, `runc`, `docker-init`).
    pub components: Vec<(String, String)>,
    /// `1` or `2`; empty when the engine does not say.
    pub cgroup_version: String,
    /// `cgroupfs` or `systemd`.
    pub cgroup_driver: String,
    /// Storage driver (`overlay2`, `fuse-overlayfs`).
    pub storage_driver: String,
    /// OCI runtimes the daemon knows.
    pub runtimes: Vec<String>,
    /// `name=seccomp,profile=default`, `name=apparmor`, `name=userns`, ...
    pub security_options: Vec<String>,
    /// The host kernel as the engine reports it.
    pub kernel_version: String,
    /// `/var/lib/docker`.
    pub root_dir: String,
}

/// What the runner needs to know about a container.
#[derive(Debug, Clone, Default)]
pub struct ContainerInfo {
    /// Container id.
    pub id: String,
    /// Name without the leading slash.
    pub name: String,
    /// Running now.
    pub running: bool,
    /// Exit code (valid when not running).
    pub exit_code: Option<i64>,
    /// Killed by the OOM killer.
    pub oom_killed: bool,
    /// Status word (`created`, `running`, `exited`, …).
    pub status: String,
    /// IPv4 address per network name.
    pub ips: HashMap<String, String>,
    /// Labels.
    pub labels: HashMap<String, String>,
    /// TCP ports published on the host, as the engine bound them.
    pub published: Vec<PublishedPort>,
    /// Image reference the container was created from.
    pub image: String,
}

/// The resource limits a container was created with, as its daemon recorded the request
/// (whether the daemon applies them is another matter: a rootless daemon without cgroups
/// records them and applies none). Zero or empty means not asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestedLimits {
    /// `--memory`, bytes.
    pub memory: i64,
    /// `--memory-reservation`, bytes.
    pub memory_reservation: i64,
    /// `--cpus`, billionths of a CPU.
    pub nano_cpus: i64,
    /// `--cpu-quota`, microseconds per period.
    pub cpu_quota: i64,
    /// `--cpu-shares`.
    pub cpu_shares: i64,
    /// `--cpuset-cpus`.
    pub cpuset_cpus: String,
    /// `--pids-limit` (0 and -1 mean unlimited).
    pub pids_limit: i64,
}

impl RequestedLimits {
    /// The `docker run` flags of the limits asked for, in a fixed order.
    pub fn flags(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.memory > 0 {
            v.push("--memory");
        }
        if self.memory_reservation > 0 {
            v.push("--memory-reservation");
        }
        if self.nano_cpus > 0 {
            v.push("--cpus");
        }
        if self.cpu_quota > 0 {
            v.push("--cpu-quota");
        }
        if self.cpu_shares > 0 {
            v.push("--cpu-shares");
        }
        if !self.cpuset_cpus.is_empty() {
            v.push("--cpuset-cpus");
        }
        if self.pids_limit > 0 {
            v.push("--pids-limit");
        }
        v
    }
}

/// A network, as listed.
#[derive(Debug, Clone, Default)]
pub struct NetworkInfo {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: HashMap<String, String>,
    /// IPv4 subnets (CIDR strings).
    pub subnets: Vec<String>,
}

/// A network to create.
#[derive(Debug, Clone, Default)]
pub struct NetworkSpec {
    /// Name.
    pub name: String,
    /// Subnet, CIDR.
    pub subnet: String,
    /// Gateway address.
    pub gateway: String,
    /// MTU (driver option), if any.
    pub mtu: Option<u32>,
    /// Labels.
    pub labels: HashMap<String, String>,
}

/// A volume, as listed.
#[derive(Debug, Clone, Default)]
pub struct VolumeInfo {
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: HashMap<String, String>,
}

/// A chunk of container output.
#[derive(Debug, Clone)]
pub enum Output {
    /// From stdout.
    Stdout(Bytes),
    /// From stderr.
    Stderr(Bytes),
}

/// A stream of container output, in the order the daemon sent it.
pub type OutputStream = Pin<Box<dyn Stream<Item = Result<Output, Error>> + Send>>;

/// A stream of bytes (image tarballs).
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, Error>> + Send>>;

/// A connection to one Docker daemon.
#[derive(Debug, Clone)]
pub struct Docker {
    inner: bollard::Docker,
    what: String,
}

/// Request timeout, seconds: long enough for an image export of a few hundred MB.
const TIMEOUT_SECS: u64 = 600;

impl Docker {
    /// Connects to `host` (`unix://…`, `tcp://…`) or, when `None`, to `DOCKER_HOST` or the
    /// default unix socket, and negotiates the API version (the engine may be older than
    /// bollard's default).
    pub async fn connect(host: Option<&str>) -> Result<Docker, Error> {
        let env_host = std::env::var("DOCKER_HOST").ok();
        let host = host.map(str::to_string).or(env_host);
        let what = host
            .clone()
            .unwrap_or_else(|| "unix:///var/run/docker.sock".to_string());
        let inner = match host.as_deref() {
            Some(h) if h.starts_with("unix://") => {
                bollard::Docker::connect_with_unix(h, TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
            }
            Some(h) => {
                bollard::Docker::connect_with_http(h, TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
            }
            None => bollard::Docker::connect_with_unix(
                "unix:///var/run/docker.sock",
                TIMEOUT_SECS,
                bollard::API_DEFAULT_VERSION,
            ),
        }
        .map_err(api(format!("connect to {what}")))?;
        let inner = inner
            .negotiate_version()
            .await
            .map_err(api(format!("negotiate API version with {what}")))?;
        Ok(Docker { inner, what })
    }

    /// Connects to a job's daemon at `addr` over mTLS with `tls` (the job CA as the only root,
    /// the client certificate presented; see `pki::client_config`).
    pub async fn connect_mtls(
        addr: SocketAddr,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Docker, Error> {
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(std::time::Duration::from_secs(5)));
        let https = hyper_rustls::HttpsConnector::from((http, (*tls).clone()));
        let mut builder =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new());
        builder.pool_max_idle_per_host(0);
        let client = Arc::new(builder.build(https));
        let what = format!("https://{addr}");
        let transport = move |mut req: bollard::BollardRequest| {
            let client = Arc::clone(&client);
            label_tar_uploads(&mut req);
            async move {
                client
                    .request(req)
                    .await
                    .map_err(bollard::errors::Error::from)
            }
        };
        let inner = bollard::Docker::connect_with_custom_transport(
            transport,
            Some(what.clone()),
            TIMEOUT_SECS,
            bollard::API_DEFAULT_VERSION,
        )
        .map_err(api(format!("connect to {what}")))?;
        let inner = inner
            .negotiate_version()
            .await
            .map_err(api(format!("negotiate API version with {what}")))?;
        Ok(Docker { inner, what })
    }

    /// Where this connection goes (for messages).
    pub fn address(&self) -> &str {
        &self.what
    }

    /// `GET /_ping`.
    pub async fn ping(&self) -> Result<(), Error> {
        self.inner
            .ping()
            .await
            .map(|_| ())
            .map_err(api(format!("ping {}", self.what)))
    }

    /// The OCI runtimes the daemon knows (`runc`, `sysbox-runc`, …).
    pub async fn runtimes(&self) -> Result<Vec<String>, Error> {
        let info = self.inner.info().await.map_err(api("docker info"))?;
        Ok(info
            .runtimes
            .map(|r| r.into_keys().collect())
            .unwrap_or_default())
    }

    /// The daemon's cgroup version (`1`, `2`) and storage driver, for diagnostics.
    pub async fn describe(&self) -> Result<(String, String), Error> {
        let info = self.inner.info().await.map_err(api("docker info"))?;
        Ok((
            info.cgroup_version
                .map(|v| v.to_string())
                .unwrap_or_default(),
            info.driver.unwrap_or_default(),
        ))
    }

    /// Versions and host facts for `runner doctor`: `docker version` and `docker info` in one.
    pub async fn engine_facts(&self) -> Result<EngineFacts, Error> {
        let v = self.inner.version().await.map_err(api("docker version"))?;
        let info = self.inner.info().await.map_err(api("docker info"))?;
        Ok(EngineFacts {
            server_version: v.version.unwrap_or_default(),
            api_version: v.api_version.unwrap_or_default(),
            components: v
                .components
                .unwrap_or_default()
                .into_iter()
                .map(|c| (c.name, c.version))
                .collect(),
            cgroup_version: info
                .cgroup_version
                .map(|v| v.to_string())
                .unwrap_or_default(),
            cgroup_driver: info
                .cgroup_driver
                .map(|d| d.to_string())
                .unwrap_or_default(),
            storage_driver: info.driver.unwrap_or_default(),
            runtimes: info
                .runtimes
                .map(|r| r.into_keys().collect())
                .unwrap_or_default(),
            security_options: info.security_options.unwrap_or_default(),
            kernel_version: info.kernel_version.unwrap_or_default(),
            root_dir: info.docker_root_dir.unwrap_or_default(),
        })
    }

    /// Creates a container and returns its id.
    pub async fn create_container(&self, spec: &ContainerSpec) -> Result<String, Error> {
        let body = body::container_body(spec);
        let opts = q::CreateContainerOptions {
            name: Some(spec.name.clone()),
            ..Default::default()
        };
        let r = self
            .inner
            .create_container(Some(opts), body)
            .await
            .map_err(api(format!("create container {}", spec.name)))?;
        Ok(r.id)
    }

    /// Starts a container.
    pub async fn start_container(&self, id: &str) -> Result<(), Error> {
        self.inner
            .start_container(id, None::<q::StartContainerOptions>)
            .await
            .map_err(api(format!("start container {id}")))
    }

    /// The engine's whole answer about container `id` (each caller reads its own part).
    async fn inspect_raw(
        &self,
        id: &str,
    ) -> Result<bollard::models::ContainerInspectResponse, Error> {
        self.inner
            .inspect_container(id, None::<q::InspectContainerOptions>)
            .await
            .map_err(api(format!("inspect container {id}")))
    }

    /// The host pid of a running container's first process; `None` when it is not running.
    pub async fn container_pid(&self, id: &str) -> Result<Option<u32>, Error> {
        let r = self.inspect_raw(id).await?;
        let state = r.state.unwrap_or_default();
        Ok(state
            .pid
            .filter(|_| state.running == Some(true))
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p > 0))
    }

    /// The limits container `id` was created with ([`RequestedLimits`]).
    pub async fn requested_limits(&self, id: &str) -> Result<RequestedLimits, Error> {
        let r = self.inspect_raw(id).await?;
        let h = r.host_config.unwrap_or_default();
        Ok(RequestedLimits {
            memory: h.memory.unwrap_or(0),
            memory_reservation: h.memory_reservation.unwrap_or(0),
            nano_cpus: h.nano_cpus.unwrap_or(0),
            cpu_quota: h.cpu_quota.unwrap_or(0),
            cpu_shares: h.cpu_shares.unwrap_or(0),
            cpuset_cpus: h.cpuset_cpus.unwrap_or_default(),
            pids_limit: h.pids_limit.unwrap_or(0),
        })
    }

    /// Ids of the containers created on this daemon from `since` (unix seconds; the daemon
    /// replays what it still holds of that span) on, as its event stream reports them. The
    /// stream ends when the daemon closes it; an error item ends it too.
    pub fn container_creations(
        &self,
        since: i64,
    ) -> Pin<Box<dyn Stream<Item = Result<String, Error>> + Send>> {
        let filters = HashMap::from([
            ("type".to_string(), vec!["container".to_string()]),
            ("event".to_string(), vec!["create".to_string()]),
        ]);
        let opts = q::EventsOptions {
            since: Some(since.to_string()),
            until: None,
            filters: Some(filters),
        };
        Box::pin(self.inner.events(Some(opts)).map(|e| {
            e.map(|m| m.actor.and_then(|a| a.id).unwrap_or_default())
                .map_err(api("read the daemon's events"))
        }))
    }

    /// Inspects a container.
    pub async fn inspect_container(&self, id: &str) -> Result<ContainerInfo, Error> {
        let r = self.inspect_raw(id).await?;
        let state = r.state.unwrap_or_default();
        let published = r
            .network_settings
            .as_ref()
            .and_then(|n| n.ports.as_ref())
            .map(published_ports)
            .unwrap_or_default();
        let ips = r
            .network_settings
            .and_then(|n| n.networks)
            .map(|nets| {
                nets.into_iter()
                    .filter_map(|(name, ep)| {
                        ep.ip_address
                            .filter(|ip| !ip.is_empty())
                            .map(|ip| (name, ip))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(ContainerInfo {
            id: r.id.unwrap_or_default(),
            name: r
                .name
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
            running: state.running.unwrap_or(false),
            exit_code: state.exit_code,
            oom_killed: state.oom_killed.unwrap_or(false),
            status: state.status.map(|s| s.to_string()).unwrap_or_default(),
            ips,
            published,
            image: r
                .config
                .as_ref()
                .and_then(|c| c.image.clone())
                .unwrap_or_default(),
            labels: r.config.and_then(|c| c.labels).unwrap_or_default(),
        })
    }

    /// Changes a running container's relative CPU weight (`docker update --cpu-shares`).
    pub async fn set_cpu_shares(&self, id: &str, shares: i64) -> Result<(), Error> {
        let body = bollard::models::ContainerUpdateBody {
            cpu_shares: Some(shares),
            ..Default::default()
        };
        self.inner
            .update_container(id, body)
            .await
            .map_err(api(format!("update container {id}")))
    }

    /// Sends SIGKILL. A container that is not running is not an error.
    pub async fn kill_container(&self, id: &str) -> Result<(), Error> {
        match self
            .inner
            .kill_container(id, None::<q::KillContainerOptions>)
            .await
        {
            Ok(()) => Ok(()),
            Err(e) => {
                let e = api(format!("kill container {id}"))(e);
                // 404: gone; 409: not running. Both mean "nothing left to kill".
                if matches!(e.status(), Some(404) | Some(409)) {
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Stops a container gracefully: SIGTERM, then SIGKILL after `grace_secs`. A container that
    /// is gone or already stopped is not an error. (Warm data roots need their dockerd to shut
    /// down cleanly before the volume is reused.)
    pub async fn stop_container(&self, id: &str, grace_secs: i32) -> Result<(), Error> {
        let opts = q::StopContainerOptionsBuilder::new().t(grace_secs).build();
        match self.inner.stop_container(id, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) => {
                let e = api(format!("stop container {id}"))(e);
                // 404: gone; 304: already stopped.
                if matches!(e.status(), Some(404) | Some(304)) {
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Removes a container (forced, with its anonymous volumes). Returns false if it was not
    /// there.
    pub async fn remove_container(&self, id: &str) -> Result<bool, Error> {
        let opts = q::RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        match self.inner.remove_container(id, Some(opts)).await {
            Ok(()) => Ok(true),
            Err(e) => {
                let e = api(format!("remove container {id}"))(e);
                if e.is_not_found() { Ok(false) } else { Err(e) }
            }
        }
    }

    /// Waits for a container to stop and returns its exit code.
    pub async fn wait_container(&self, id: &str) -> Result<i64, Error> {
        let mut s = self
            .inner
            .wait_container(id, None::<q::WaitContainerOptions>);
        match s.next().await {
            Some(Ok(r)) => Ok(r.status_code),
            // bollard reports a non-zero exit as an error carrying the code.
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(e)) => Err(api(format!("wait for container {id}"))(e)),
            None => {
                // The stream ended without a status: ask the daemon.
                let info = self.inspect_container(id).await?;
                info.exit_code.ok_or_else(|| Error::Reply {
                    context: format!("wait for container {id}"),
                    detail: "no exit code".to_string(),
                })
            }
        }
    }

    /// Attaches to stdout and stderr (call before start to miss nothing), demultiplexed, in
    /// the order the daemon sends them.
    pub async fn attach_output(&self, id: &str) -> Result<OutputStream, Error> {
        let opts = q::AttachContainerOptions {
            stream: true,
            stdout: true,
            stderr: true,
            logs: true,
            ..Default::default()
        };
        let r = self
            .inner
            .attach_container(id, Some(opts))
            .await
            .map_err(api(format!("attach to container {id}")))?;
        let ctx = format!("read output of container {id}");
        Ok(Box::pin(r.output.filter_map(move |item| {
            let ctx = ctx.clone();
            async move {
                match item {
                    Ok(bollard::container::LogOutput::StdOut { message })
                    | Ok(bollard::container::LogOutput::Console { message }) => {
                        Some(Ok(Output::Stdout(message)))
                    }
                    Ok(bollard::container::LogOutput::StdErr { message }) => {
                        Some(Ok(Output::Stderr(message)))
                    }
                    Ok(bollard::container::LogOutput::StdIn { .. }) => None,
                    Err(e) => Some(Err(api(ctx)(e))),
                }
            }
        })))
    }

    /// The last `lines` lines of a container's log (stdout and stderr together).
    pub async fn logs_tail(&self, id: &str, lines: usize) -> Result<String, Error> {
        self.logs(id, 0, lines, false).await
    }

    /// The last `lines` lines of a container's log from the second of `since` on, each
    /// prefixed with the engine's RFC 3339 timestamp and a space (the caller compares them
    /// with `since` itself: the daemon's filter counts in whole seconds).
    pub async fn logs_since(
        &self,
        id: &str,
        since: std::time::SystemTime,
        lines: usize,
    ) -> Result<String, Error> {
        let since = since
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i32::try_from(d.as_secs()).unwrap_or(i32::MAX));
        self.logs(id, since, lines, true).await
    }

    async fn logs(
        &self,
        id: &str,
        since: i32,
        lines: usize,
        timestamps: bool,
    ) -> Result<String, Error> {
        let opts = q::LogsOptions {
            stdout: true,
            stderr: true,
            since,
            timestamps,
            tail: lines.to_string(),
            ..Default::default()
        };
        let chunks: Vec<_> = self
            .inner
            .logs(id, Some(opts))
            .map_err(|e| api(format!("read log of container {id}"))(e))
            .try_collect()
            .await?;
        let mut out = String::new();
        for c in chunks {
            out.push_str(&String::from_utf8_lossy(&c.into_bytes()));
        }
        Ok(out)
    }

    /// Containers (running or not) matching every `key=value` label filter.
    pub async fn list_containers(&self, labels: &[String]) -> Result<Vec<ContainerInfo>, Error> {
        let opts = q::ListContainersOptions {
            all: true,
            filters: Some(HashMap::from([("label".to_string(), labels.to_vec())])),
            ..Default::default()
        };
        let r = self
            .inner
            .list_containers(Some(opts))
            .await
            .map_err(api("list containers"))?;
        Ok(r.into_iter()
            .map(|c| ContainerInfo {
                id: c.id.unwrap_or_default(),
                name: c
                    .names
                    .and_then(|n| n.into_iter().next())
                    .unwrap_or_default()
                    .trim_start_matches('/')
                    .to_string(),
                running: c.state.map(|s| s.to_string() == "running").unwrap_or(false),
                status: c.status.unwrap_or_default(),
                labels: c.labels.unwrap_or_default(),
                ..Default::default()
            })
            .collect())
    }

    /// Extracts the tar archive `tar` at `path` inside a container's own file system
    /// (`PUT /containers/{id}/archive`; the daemon resolves `path` inside the container).
    pub async fn put_archive(&self, id: &str, path: &str, tar: Vec<u8>) -> Result<(), Error> {
        let opts = q::UploadToContainerOptions {
            path: path.to_string(),
            no_overwrite_dir_non_dir: Some("true".to_string()),
            ..Default::default()
        };
        self.inner
            .upload_to_container(id, Some(opts), bollard::body_full(Bytes::from(tar)))
            .await
            .map_err(api(format!("copy files into container {id}")))
    }

    /// Whether this daemon is part of a swarm (any local node state but inactive).
    pub async fn swarm_active(&self) -> Result<bool, Error> {
        use bollard::models::LocalNodeState;
        let info = self.inner.info().await.map_err(api("docker info"))?;
        Ok(info
            .swarm
            .and_then(|s| s.local_node_state)
            .is_some_and(|s| !matches!(s, LocalNodeState::INACTIVE | LocalNodeState::EMPTY)))
    }

    /// `docker swarm leave --force`.
    pub async fn leave_swarm(&self) -> Result<(), Error> {
        self.inner
            .leave_swarm(Some(q::LeaveSwarmOptions { force: true }))
            .await
            .map_err(api("leave the swarm"))
    }

    /// Names of the installed plugins (enabled or not).
    pub async fn list_plugins(&self) -> Result<Vec<String>, Error> {
        let list = self
            .inner
            .list_plugins(None::<q::ListPluginsOptions>)
            .await
            .map_err(api("list plugins"))?;
        Ok(list.into_iter().map(|p| p.name).collect())
    }

    /// Removes a plugin, disabling it first if it runs (`docker plugin rm --force`).
    pub async fn remove_plugin(&self, name: &str) -> Result<(), Error> {
        match self
            .inner
            .remove_plugin(name, Some(q::RemovePluginOptions { force: true }))
            .await
        {
            Ok(_) => Ok(()),
            // Engines answer 200 with an empty body, which the client cannot decode into the
            // documented plugin object: the removal itself succeeded.
            Err(bollard::errors::Error::JsonSerdeError { .. }) => Ok(()),
            Err(e) => Err(api(format!("remove plugin {name}"))(e)),
        }
    }
}

/// The engine's `NetworkSettings.Ports` map as our type: TCP bindings with a host port only.
fn published_ports(
    ports: &HashMap<String, Option<Vec<bollard::models::PortBinding>>>,
) -> Vec<PublishedPort> {
    let mut out: Vec<PublishedPort> = ports
        .iter()
        .filter_map(|(k, b)| {
            let port = k.strip_suffix("/tcp")?.parse().ok()?;
            Some(b.iter().flatten().filter_map(move |b| {
                Some(PublishedPort {
                    container_port: port,
                    host_ip: b.host_ip.clone().unwrap_or_default(),
                    host_port: b.host_port.as_deref()?.parse().ok()?,
                })
            }))
        })
        .flatten()
        .collect();
    out.sort_by(|a, b| (a.container_port, &a.host_ip).cmp(&(b.container_port, &b.host_ip)));
    out
}

/// The TCP ports among `ExposedPorts` keys (`5432/tcp`, `53/udp`, a bare `80` is TCP);
/// anything unparsable is skipped (an image's metadata is outside data).
pub fn tcp_ports(exposed: &[String]) -> Vec<u16> {
    let mut ports: Vec<u16> = exposed
        .iter()
        .filter_map(|p| {
            let (port, proto) = p.split_once('/').unwrap_or((p.as_str(), "tcp"));
            (proto.eq_ignore_ascii_case("tcp"))
                .then(|| port.parse::<u16>().ok())
                .flatten()
        })
        .filter(|p| *p != 0)
        .collect();
    ports.sort_unstable();
    ports.dedup();
    ports
}

/// The label filters (`key=value`) that select one runner's objects, optionally one job's.
pub fn label_filters(runner_id: &str, job_id: Option<u64>) -> Vec<String> {
    let mut f = vec![
        format!("{LABEL_MANAGED}=1"),
        format!("{LABEL_RUNNER}={runner_id}"),
    ];
    if let Some(j) = job_id {
        f.push(format!("{LABEL_JOB}={j}"));
    }
    f
}

/// Labels the tar stream of an image load (`POST /images/load`) `application/x-tar`, as the
/// Docker CLI does, where bollard says `application/json`. A job's daemon runs an
/// authorization plugin (`isolation::inner_policy`), and a daemon with one refuses a JSON body
/// over its plugins' limit (4 MiB in Docker 26.1.5 as Debian ships it: "request body too large
/// for authorization plugin") where it passes any other body through untouched.
fn label_tar_uploads<B>(req: &mut axum::http::Request<B>) {
    if req.method() == axum::http::Method::POST && req.uri().path().ends_with("/images/load") {
        req.headers_mut().insert(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/x-tar"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposed_tcp_ports_only() {
        let declared: Vec<String> = [
            "5432/tcp", "53/udp", "80", "443/TCP", "x/tcp", "0/tcp", "80/tcp",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(tcp_ports(&declared), [80, 443, 5432]);
    }

    #[test]
    fn filters_select_runner_and_job() {
        let f = label_filters("r1", Some(3));
        assert!(f.contains(&"io.isolated-runner.runner=r1".to_string()));
        assert!(f.contains(&"io.isolated-runner.job=3".to_string()));
    }

    #[test]
    fn image_loads_are_labelled_as_tar() {
        let mut load = axum::http::Request::post("http://d/v1.45/images/load?quiet=1")
            .header("content-type", "application/json")
            .body(())
            .expect("request");
        label_tar_uploads(&mut load);
        assert_eq!(load.headers()["content-type"], "application/x-tar");
        let mut create = axum::http::Request::post("http://d/v1.45/containers/create")
            .header("content-type", "application/json")
            .body(())
            .expect("request");
        label_tar_uploads(&mut create);
        assert_eq!(create.headers()["content-type"], "application/json");
    }
}
