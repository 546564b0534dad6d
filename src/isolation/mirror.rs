//! The managed registry mirror: one pull-through cache per host (per storage dir), started and
//! owned by `runner run`, given to every job daemon as its `--registry-mirror`.
//!
//! It is a container of the admin's image with Debian's `docker-registry`, in proxy mode
//! (`proxy.remoteurl` = `upstream`), its storage a host directory (`<state_dir>/mirror` unless
//! `storage_dir` says otherwise), published only on the default bridge's gateway address (a host
//! address every job network can reach through the host, not an outside interface). Job
//! networks allow exactly that address and port (`isolation::egress` reads `registry_mirror`,
//! which `runner run` sets to the mirror's URL once it answers).
//!
//! Security:
//! - The mirror holds **no upstream credentials** (the config refuses them). It fetches from the
//!   upstream anonymously, so it can only ever hold what anyone may pull; a job's `docker login`
//!   stays in that job's daemon, whose private pulls go to the registry itself. A job's
//!   credentials sent to the mirror are not forwarded upstream by `docker-registry`'s proxy.
//! - Jobs cannot write into it: a proxy registry refuses pushes and deletes, and the runner also
//!   starts it with `storage.maintenance.readonly` and deletes disabled (defence in depth).
//! - It runs with no capabilities, `no-new-privileges`, a read-only root, a pids limit.
//!
//! Its container carries `io.isolated-runner.role=mirror` and **not** the `managed` label every
//! job object carries, so neither the start-up reaper nor `runner cleanup`'s object sweep ever
//! takes it for a leftover; it is reused across runner restarts while its settings (image,
//! upstream, storage, port: the `mirror-config` label) stay the same, and replaced when they
//! change. `runner cleanup` bounds its storage ([`bound_storage`]).

use crate::config::{Config, ManagedMirror};
use crate::docker::{ContainerSpec, Docker, LABEL_ROLE, MountSpec, PublishedPort};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `io.isolated-runner.mirror`: the mirror's storage dir (what identifies it on the host).
pub const LABEL_MIRROR: &str = "io.isolated-runner.mirror";
/// `io.isolated-runner.mirror-config`: a hash of the settings the container was created with.
pub const LABEL_MIRROR_CONFIG: &str = "io.isolated-runner.mirror-config";
/// The role label's value on the mirror container.
pub const ROLE_MIRROR: &str = "mirror";

/// The registry's port inside its container.
const REGISTRY_PORT: u16 = 5000;
/// Where the storage dir is mounted inside the container.
const STORAGE_IN_CONTAINER: &str = "/var/lib/docker-registry";
/// How long a fresh or restarted registry may take to answer `GET /v2/`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of the managed mirror.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Docker call failed.
    #[error("managed registry mirror {name}: {source}")]
    Docker {
        /// Container name.
        name: String,
        /// The Docker error.
        #[source]
        source: crate::docker::Error,
    },
    /// The image is not on the host engine (the runner never pulls it).
    #[error(
        "managed registry mirror: image {0} is not on the host engine; load or build it (an image with Debian's docker-registry, e.g. tests/images/build registry)"
    )]
    ImageMissing(String),
    /// The default bridge has no IPv4 gateway to publish on.
    #[error(
        "managed registry mirror: the engine's default bridge has no IPv4 gateway to publish the mirror on"
    )]
    NoGateway,
    /// The engine did not publish the port as asked.
    #[error("managed registry mirror {0}: the engine reports no published port")]
    NoPort(String),
    /// The registry did not answer in time.
    #[error(
        "managed registry mirror {name} at {url} did not answer GET /v2/ within {waited:?}{logs}"
    )]
    NotReady {
        /// Container name.
        name: String,
        /// Its URL.
        url: String,
        /// How long we waited.
        waited: Duration,
        /// The container's last log lines, prefixed with a newline (or empty).
        logs: String,
    },
    /// Two runner entries configure different mirrors on one storage dir.
    #[error(
        "two [[runners]] entries configure different managed mirrors on the same storage_dir {0}; give them the same settings or separate storage_dir values"
    )]
    Conflict(PathBuf),
    /// The storage dir could not be made or measured.
    #[error("managed registry mirror storage {path}: {detail}")]
    Storage {
        /// The directory.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
}

fn docker_err(name: &str) -> impl FnOnce(crate::docker::Error) -> Error + '_ {
    move |source| Error::Docker {
        name: name.to_string(),
        source,
    }
}

/// One mirror the config asks for: its settings and the storage dir they resolve to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// The `[runners.docker.isolation.mirror]` table.
    pub mirror: ManagedMirror,
    /// Its storage dir, runner-visible.
    pub storage_dir: PathBuf,
    /// The storage dir as the host engine sees it (`host_path_map`).
    pub host_storage_dir: PathBuf,
}

impl Wanted {
    /// The container's name: `ir-mirror-<12 hex of the storage dir's hash>`, so one storage dir
    /// has one mirror and tests (each with its own state dir) never share one.
    pub fn container_name(&self) -> String {
        let h = Sha256::digest(self.storage_dir.as_os_str().as_encoded_bytes());
        format!("ir-mirror-{}", &hex::encode(h)[..12])
    }

    /// A hash of everything the container is created from: a container with another hash is
    /// replaced.
    pub fn config_hash(&self) -> String {
        let mut h = Sha256::new();
        for part in [
            self.mirror.image.as_str(),
            self.mirror.upstream.as_str(),
            &self.host_storage_dir.to_string_lossy(),
            &self.mirror.port.to_string(),
        ] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        hex::encode(h.finalize())[..16].to_string()
    }
}

/// The mirrors `config` asks for, one per storage dir (dind runners only).
pub fn wanted(config: &Config) -> Result<Vec<Wanted>, Error> {
    let mut out: Vec<Wanted> = Vec::new();
    for r in &config.runners {
        let iso = &r.docker.isolation;
        if iso.mode != crate::config::IsolationMode::Dind {
            continue;
        }
        let Some(m) = &iso.mirror else { continue };
        let storage_dir = m.storage_dir_in(&config.state_dir);
        let host_storage_dir =
            crate::paths::HostPathMap::new(iso.host_path_map.clone()).to_host(&storage_dir);
        let w = Wanted {
            mirror: m.clone(),
            storage_dir,
            host_storage_dir,
        };
        match out.iter().find(|o| o.storage_dir == w.storage_dir) {
            Some(o) if *o == w => {}
            Some(_) => return Err(Error::Conflict(w.storage_dir)),
            None => out.push(w),
        }
    }
    Ok(out)
}

/// A running mirror.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    /// Container name.
    pub name: String,
    /// `http://<gateway>:<port>`: what job daemons get as `--registry-mirror`.
    pub url: String,
    /// Whether an existing container was reused (false: created now).
    pub reused: bool,
}

/// The container the runner creates for `w`, publishing on `gateway`.
pub fn container_spec(w: &Wanted, gateway: &str) -> ContainerSpec {
    let labels = HashMap::from([
        (LABEL_ROLE.to_string(), ROLE_MIRROR.to_string()),
        (
            LABEL_MIRROR.to_string(),
            w.storage_dir.to_string_lossy().into_owned(),
        ),
        (LABEL_MIRROR_CONFIG.to_string(), w.config_hash()),
    ]);
    ContainerSpec {
        name: w.container_name(),
        image: w.mirror.image.clone(),
        // The image's entrypoint is docker-registry; the settings below override its file.
        cmd: Some(vec![
            "serve".to_string(),
            "/etc/docker/registry/config.yml".to_string(),
        ]),
        env: vec![
            format!("REGISTRY_PROXY_REMOTEURL={}", w.mirror.upstream),
            format!("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY={STORAGE_IN_CONTAINER}"),
            format!("REGISTRY_HTTP_ADDR=:{REGISTRY_PORT}"),
            // A proxy refuses pushes and deletes already; these keep it so if the image's
            // own config file says otherwise (defence in depth: no job writes what another
            // job pulls).
            "REGISTRY_STORAGE_DELETE_ENABLED=false".to_string(),
            "REGISTRY_STORAGE_MAINTENANCE_READONLY={\"enabled\":true}".to_string(),
            "REGISTRY_LOG_LEVEL=info".to_string(),
        ],
        labels,
        mounts: vec![
            MountSpec::Bind {
                source: w.host_storage_dir.to_string_lossy().into_owned(),
                target: STORAGE_IN_CONTAINER.to_string(),
                read_only: false,
            },
            MountSpec::Tmpfs {
                target: "/tmp".to_string(),
                size: Some(64 * 1024 * 1024),
            },
        ],
        // The default bridge: the engine's NAT takes it to the upstream.
        network: Some("bridge".to_string()),
        cap_drop: vec!["ALL".to_string()],
        security_opt: vec!["no-new-privileges".to_string()],
        pids_limit: Some(512),
        read_only_root: true,
        restart_unless_stopped: true,
        publish: vec![PublishedPort {
            container_port: REGISTRY_PORT,
            host_ip: gateway.to_string(),
            host_port: w.mirror.port,
        }],
        ..Default::default()
    }
}

/// Starts the mirror `w` (or reuses the one there), waits until it answers and returns its URL.
/// Idempotent; safe against a second runner process doing the same at once (a name conflict
/// on create means the other one won: its container is used).
pub async fn ensure(docker: &Docker, w: &Wanted) -> Result<Running, Error> {
    let name = w.container_name();
    let mut reused = false;
    match docker.inspect_container(&name).await {
        Ok(c) if c.labels.get(LABEL_MIRROR_CONFIG) == Some(&w.config_hash()) => {
            reused = true;
            if !c.running {
                docker
                    .start_container(&name)
                    .await
                    .map_err(docker_err(&name))?;
            }
        }
        Ok(_) => {
            tracing::info!(container = %name, "managed mirror settings changed; replacing its container");
            docker
                .remove_container(&name)
                .await
                .map_err(docker_err(&name))?;
        }
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(docker_err(&name)(e)),
    }
    if !reused {
        create(docker, w).await?;
    }
    let url = url_of(docker, &name).await?;
    wait_ready(docker, &name, &url).await?;
    tracing::info!(container = %name, %url, reused, upstream = %w.mirror.upstream, "managed registry mirror is up");
    Ok(Running { name, url, reused })
}

async fn create(docker: &Docker, w: &Wanted) -> Result<(), Error> {
    let name = w.container_name();
    if !docker
        .image_exists(&w.mirror.image)
        .await
        .map_err(docker_err(&name))?
    {
        return Err(Error::ImageMissing(w.mirror.image.clone()));
    }
    make_storage_dir(&w.storage_dir).await?;
    let gateway = bridge_gateway(docker)
        .await
        .map_err(docker_err(&name))?
        .ok_or(Error::NoGateway)?;
    match docker.create_container(&container_spec(w, &gateway)).await {
        Ok(_) => {}
        // Another runner process created it between our inspect and create.
        Err(e) if e.status() == Some(409) => {}
        Err(e) => return Err(docker_err(&name)(e)),
    }
    docker
        .start_container(&name)
        .await
        .map_err(docker_err(&name))
}

/// The host's address on the engine's default bridge (`docker0`): the IPAM gateway when the
/// engine names one, else the interface's own IPv4 address. Host-local: job networks reach it
/// through the host, nothing outside the machine does unless the host routes it.
pub async fn bridge_gateway(docker: &Docker) -> Result<Option<String>, crate::docker::Error> {
    let (gateway, iface) = docker.network_bridge("bridge").await?;
    if gateway.is_some() {
        return Ok(gateway);
    }
    let Some(iface) = iface else { return Ok(None) };
    let found = tokio::task::spawn_blocking(move || {
        nix::ifaddrs::getifaddrs().ok().and_then(|mut addrs| {
            addrs.find_map(|a| {
                (a.interface_name == iface)
                    .then(|| a.address.and_then(|s| s.as_sockaddr_in().map(|s| s.ip())))
                    .flatten()
            })
        })
    })
    .await
    .ok()
    .flatten();
    Ok(found.map(|ip| ip.to_string()))
}

/// The storage dir: root's, 0700 (the registry runs as root without capabilities, as its owner).
async fn make_storage_dir(dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    let storage = |e: std::io::Error| Error::Storage {
        path: dir.to_path_buf(),
        detail: e.to_string(),
    };
    tokio::fs::create_dir_all(dir).await.map_err(storage)?;
    tokio::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .await
        .map_err(storage)
}

/// `http://<host ip>:<host port>` of the container's published registry port.
async fn url_of(docker: &Docker, name: &str) -> Result<String, Error> {
    let c = docker
        .inspect_container(name)
        .await
        .map_err(docker_err(name))?;
    c.published
        .iter()
        .find(|p| p.container_port == REGISTRY_PORT && !p.host_ip.is_empty())
        .map(|p| format!("http://{}:{}", p.host_ip, p.host_port))
        .ok_or_else(|| Error::NoPort(name.to_string()))
}

async fn wait_ready(docker: &Docker, name: &str, url: &str) -> Result<(), Error> {
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        if answers(url).await {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            let logs = docker
                .logs_tail(name, 20)
                .await
                .map(|l| format!("\n{l}"))
                .unwrap_or_default();
            return Err(Error::NotReady {
                name: name.to_string(),
                url: url.to_string(),
                waited: READY_TIMEOUT,
                logs,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether `GET <url>/v2/` answers 200 (plain HTTP/1.0 on a socket: no proxy settings of the
/// environment apply, and the answer is read only as far as its status line).
pub async fn answers(url: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(addr) = url.strip_prefix("http://").map(|a| a.trim_end_matches('/')) else {
        return false;
    };
    let Ok(Ok(mut c)) =
        tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr)).await
    else {
        return false;
    };
    let req = format!("GET /v2/ HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    if c.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(
        tokio::time::timeout(Duration::from_secs(2), c.read(&mut buf)).await,
        Ok(Ok(n)) if buf[..n].starts_with(b"HTTP/1.1 200") || buf[..n].starts_with(b"HTTP/1.0 200")
    )
}

/// How the mirror stands, for `runner doctor`: `Ok(None)` when its container does not exist.
pub async fn status(docker: &Docker, w: &Wanted) -> Result<Option<(Running, bool)>, Error> {
    let name = w.container_name();
    let c = match docker.inspect_container(&name).await {
        Ok(c) => c,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(docker_err(&name)(e)),
    };
    if !c.running {
        return Ok(Some((
            Running {
                name,
                url: String::new(),
                reused: true,
            },
            false,
        )));
    }
    let url = url_of(docker, &name).await?;
    let up = answers(&url).await;
    Ok(Some((
        Running {
            name,
            url,
            reused: true,
        },
        up,
    )))
}

/// Removes the mirror's container (its storage stays). `Ok(false)`: it was not there.
pub async fn remove(docker: &Docker, w: &Wanted) -> Result<bool, Error> {
    let name = w.container_name();
    docker
        .remove_container(&name)
        .await
        .map_err(docker_err(&name))
}

/// Gives every dind runner entry with a managed mirror that mirror's URL as its
/// `registry_mirror`, so sidecars (`--registry-mirror`) and their firewall (the allowed
/// endpoint) use it.
pub fn apply(config: &mut Config, running: &[(Wanted, Running)]) {
    let state_dir = config.state_dir.clone();
    for r in &mut config.runners {
        let iso = &mut r.docker.isolation;
        let Some(m) = &iso.mirror else { continue };
        let dir = m.storage_dir_in(&state_dir);
        if let Some((_, run)) = running.iter().find(|(w, _)| w.storage_dir == dir) {
            iso.registry_mirror = Some(run.url.clone());
        }
    }
}

/// Starts every mirror `config` asks for and points its runner entries at them (see [`apply`]).
pub async fn start_all(docker: &Docker, config: &mut Config) -> Result<Vec<Running>, Error> {
    let mut running = Vec::new();
    for w in wanted(config)? {
        let r = ensure(docker, &w).await?;
        running.push((w, r));
    }
    apply(config, &running);
    Ok(running.into_iter().map(|(_, r)| r).collect())
}

/// [`start_all`] on the host engine of the first runner entry that wants a mirror; nothing
/// (and no connection) when none does. `runner run` calls this before its first poll.
pub async fn start_for(config: &mut Config) -> Result<Vec<Running>, Error> {
    let Some(host) = config
        .runners
        .iter()
        .find(|r| {
            r.docker.isolation.mirror.is_some()
                && r.docker.isolation.mode == crate::config::IsolationMode::Dind
        })
        .map(|r| r.docker.host.clone())
    else {
        return Ok(Vec::new());
    };
    let docker = Docker::connect(host.as_deref())
        .await
        .map_err(docker_err("(connect)"))?;
    start_all(&docker, config).await
}

/// What [`bound_storage`] found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorageReport {
    /// The storage dir.
    pub dir: PathBuf,
    /// Bytes it held.
    pub bytes: u64,
    /// The cap.
    pub max_size: u64,
    /// Whether it was emptied (or would be, in dry-run mode).
    pub emptied: bool,
}

/// `runner cleanup`'s bound on the mirror's storage: when it holds more than `max_size`, the
/// cache is emptied (the container stopped, its `docker/` tree and scheduler state removed
/// without following symlinks, the container started again) and refills from the upstream on
/// the next pulls. Age is bounded by `docker-registry` itself: a proxy expires every cached
/// blob and manifest 7 days after it was fetched (fixed in 2.8).
///
/// # Cancel safety
/// Not cancel safe between stopping and starting the container: a cancel there leaves it
/// stopped until the next `runner run` start (which starts it again).
pub async fn bound_storage(
    docker: Option<&Docker>,
    w: &Wanted,
    dry_run: bool,
) -> Result<StorageReport, Error> {
    let dir = w.storage_dir.clone();
    let measured = dir.clone();
    let bytes = tokio::task::spawn_blocking(move || crate::cleanup::disk_usage(&measured))
        .await
        .map_err(|e| Error::Storage {
            path: dir.clone(),
            detail: e.to_string(),
        })?;
    let mut report = StorageReport {
        dir: dir.clone(),
        bytes,
        max_size: w.mirror.max_size,
        emptied: false,
    };
    if bytes <= w.mirror.max_size {
        return Ok(report);
    }
    report.emptied = true;
    if dry_run {
        return Ok(report);
    }
    let name = w.container_name();
    let running = match docker {
        Some(d) => match d.inspect_container(&name).await {
            Ok(c) => c.running,
            Err(e) if e.is_not_found() => false,
            Err(e) => return Err(docker_err(&name)(e)),
        },
        None => false,
    };
    if let (true, Some(d)) = (running, docker) {
        // A registry writing while its files go could leave a half-written blob behind.
        d.stop_container(&name, 10)
            .await
            .map_err(docker_err(&name))?;
    }
    let emptied = empty_storage(&dir).await;
    if let (true, Some(d)) = (running, docker) {
        d.start_container(&name).await.map_err(docker_err(&name))?;
    }
    emptied?;
    Ok(report)
}

/// Removes the registry's data below `dir` (the directory itself stays, with its mode).
async fn empty_storage(dir: &Path) -> Result<(), Error> {
    for entry in ["docker", "scheduler-state.json"] {
        let path = dir.join(entry);
        crate::paths::remove_path_async(&path)
            .await
            .map_err(|e| Error::Storage {
                path: path.clone(),
                detail: e.to_string(),
            })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RunnerConfig;

    fn cfg_with(mirrors: &[Option<ManagedMirror>]) -> Config {
        let mut c = Config {
            state_dir: PathBuf::from("/var/lib/ir"),
            ..Config::default()
        };
        for m in mirrors {
            let mut r = RunnerConfig::default();
            r.docker.isolation.mirror = m.clone();
            c.runners.push(r);
        }
        c
    }

    #[test]
    fn one_mirror_per_storage_dir_and_conflicts_are_refused() {
        let m = ManagedMirror::default();
        let c = cfg_with(&[Some(m.clone()), None, Some(m.clone())]);
        let w = wanted(&c).unwrap();
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].storage_dir, PathBuf::from("/var/lib/ir/mirror"));
        let other = ManagedMirror {
            upstream: url::Url::parse("http://10.0.0.9:5000").unwrap(),
            ..m.clone()
        };
        let c = cfg_with(&[Some(m.clone()), Some(other.clone())]);
        assert!(matches!(wanted(&c), Err(Error::Conflict(_))));
        let separate = ManagedMirror {
            storage_dir: Some(PathBuf::from("/srv/mirror2")),
            ..other
        };
        let c = cfg_with(&[Some(m), Some(separate)]);
        let w = wanted(&c).unwrap();
        assert_eq!(w.len(), 2);
        assert_ne!(w[0].container_name(), w[1].container_name());
    }

    #[test]
    fn spec_is_unprivileged_read_only_published_on_the_gateway_only() {
        let c = cfg_with(&[Some(ManagedMirror::default())]);
        let w = &wanted(&c).unwrap()[0];
        let s = container_spec(w, "172.17.0.1");
        assert_eq!(s.cap_drop, vec!["ALL"]);
        assert!(!s.privileged && s.cap_add.is_empty());
        assert!(s.read_only_root && s.restart_unless_stopped);
        assert_eq!(s.publish.len(), 1);
        assert_eq!(s.publish[0].host_ip, "172.17.0.1");
        assert!(
            s.env
                .contains(&"REGISTRY_PROXY_REMOTEURL=https://registry-1.docker.io/".to_string())
        );
        // No credentials of any kind reach the registry.
        assert!(
            !s.env
                .iter()
                .any(|e| e.contains("USERNAME") || e.contains("PASSWORD"))
        );
        // Not a job object: the sweepers' `managed` label is absent.
        assert!(!s.labels.contains_key(crate::docker::LABEL_MANAGED));
        assert_eq!(s.labels.get(LABEL_ROLE).map(String::as_str), Some("mirror"));
    }

    #[test]
    fn apply_points_runner_entries_at_their_mirror() {
        let mut c = cfg_with(&[Some(ManagedMirror::default()), None]);
        let w = wanted(&c).unwrap().remove(0);
        let run = Running {
            name: w.container_name(),
            url: "http://172.17.0.1:5555".into(),
            reused: false,
        };
        apply(&mut c, &[(w, run)]);
        assert_eq!(
            c.runners[0].docker.isolation.registry_mirror.as_deref(),
            Some("http://172.17.0.1:5555")
        );
        assert_eq!(c.runners[1].docker.isolation.registry_mirror, None);
    }

    #[test]
    fn config_hash_changes_with_settings() {
        let c = cfg_with(&[Some(ManagedMirror::default())]);
        let a = wanted(&c).unwrap().remove(0);
        let mut b = a.clone();
        b.mirror.image = "other:1".into();
        assert_ne!(a.config_hash(), b.config_hash());
        assert_eq!(a.container_name(), b.container_name());
    }
}
