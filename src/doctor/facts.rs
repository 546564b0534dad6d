//! Gathering: everything the checks look at, read once. Reading only: nothing is pulled,
//! written or changed, except that `--deep` starts and removes throwaway sidecars.

mod acl;
mod cache_store;
mod deep;
mod file;
mod gitlab;
mod host;
mod mirror;
mod root_store;

use acl::gather_acl;
pub use acl::{AclFact, AclProbe, probe as probe_acl};
pub use cache_store::CacheStoreFact;
use cache_store::gather_cache_stores;
use deep::*;
pub use file::raw_runners;
use file::*;
pub use gitlab::system_id_readonly;
use gitlab::*;
use host::*;
pub use mirror::{MirrorFact, MirrorState};
use root_store::gather_root_stores;
pub use root_store::{RootStoreFact, RootStoreState};

use crate::cleanup;
use crate::config::{self, Config, IsolationMode, SidecarProfile};
use crate::docker::{Docker, EngineFacts, LABEL_MANAGED};
use crate::netpolicy::{InstalledRule, NetPolicy, Options as NetOptions};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// What `runner doctor` was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// The config file; `None` checks the host only.
    pub config_path: Option<PathBuf>,
    /// Whether `config_path` is just the default (a missing default file means "no config").
    pub config_is_default: bool,
    /// Start a real sidecar per profile.
    pub deep: bool,
    /// Upper bound for each GitLab request.
    pub gitlab_timeout: Duration,
}

/// Everything the checks evaluate.
#[derive(Debug, Clone)]
pub struct Facts {
    /// The config file.
    pub config: ConfigFacts,
    /// Kernel, cgroups, capabilities, iptables.
    pub host: HostFacts,
    /// `docker version` + `docker info`, or why the daemon could not be asked.
    pub docker: Result<EngineFacts, String>,
    /// Images the runner needs, and whether each is on the host daemon.
    pub images: Vec<ImageFact>,
    /// Every network on the engine: subnets and labels (`None` when Docker is unreachable).
    pub networks: Option<Vec<NetFact>>,
    /// Free space of `builds_dir` and `cache_dir`.
    pub disks: Vec<DiskFact>,
    /// POSIX ACL support of each rootless runner's `builds_dir`.
    pub acl: Vec<AclFact>,
    /// What `runner cleanup` would remove now (`None` when not looked at).
    pub leftovers: Option<Leftovers>,
    /// The firewall.
    pub netpolicy: NetpolicyFacts,
    /// One entry per `[[runners]]` with a token.
    pub gitlab: Vec<GitlabFact>,
    /// `--deep` results, one per profile.
    pub deep: Option<Vec<DeepResult>>,
    /// Managed registry mirrors the config asks for, and how each stands.
    pub mirrors: Vec<MirrorFact>,
    /// Which path preload images take, per runner entry.
    pub root_stores: Vec<RootStoreFact>,
    /// The shared cache store of each entry that has one, probed.
    pub cache_stores: Vec<CacheStoreFact>,
}

/// How the config file stands.
#[derive(Debug, Clone)]
pub enum ConfigState {
    /// No config given and none at the default path.
    Absent,
    /// The given file cannot be read.
    Unreadable {
        /// The path.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// The file has errors.
    Invalid {
        /// The path.
        path: PathBuf,
        /// Each error with its line.
        errors: Vec<String>,
        /// Each warning with its line.
        warnings: Vec<String>,
    },
    /// The file loads.
    Loaded {
        /// The path.
        path: PathBuf,
        /// The validated config.
        config: Box<Config>,
        /// Each warning with its line.
        warnings: Vec<String>,
    },
}

/// The config file and what it says, also when it does not load.
#[derive(Debug, Clone)]
pub struct ConfigFacts {
    /// Loaded or why not.
    pub state: ConfigState,
    /// Permission bits of the file.
    pub file_mode: Option<u32>,
    /// Whether the file holds a `token` inline.
    pub inline_token: bool,
    /// `token_file`s with their permission bits.
    pub token_files: Vec<(PathBuf, Option<u32>)>,
    /// `[[runners]]` as written (read from the raw TOML, so a config refused for a socket mount
    /// still shows what it mounts).
    pub runners: Vec<RawRunner>,
}

impl ConfigFacts {
    /// The loaded config, if any.
    pub fn loaded(&self) -> Option<&Config> {
        match &self.state {
            ConfigState::Loaded { config, .. } => Some(config),
            _ => None,
        }
    }
}

/// One `[[runners]]` entry as written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawRunner {
    /// `name`.
    pub name: String,
    /// `[runners.docker.isolation] mode = "shared-socket"`.
    pub shared_socket: bool,
    /// `[runners.docker] volumes`.
    pub volumes: Vec<String>,
    /// `[runners.docker] privileged`.
    pub privileged: bool,
    /// `builds_dir` (default `/builds`).
    pub builds_dir: PathBuf,
    /// `cache_dir` (default `/cache`).
    pub cache_dir: PathBuf,
}

/// cgroup layout of the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cgroup {
    /// Unified hierarchy.
    V2,
    /// Legacy hierarchies (`hybrid`: an extra cgroup2 mount at `/sys/fs/cgroup/unified`).
    V1 {
        /// Hybrid layout.
        hybrid: bool,
    },
    /// Could not tell.
    Unknown(String),
}

/// Host facts.
#[derive(Debug, Clone)]
pub struct HostFacts {
    /// `uname -r`.
    pub kernel_release: Option<String>,
    /// cgroup layout (Docker's answer preferred, else `statfs /sys/fs/cgroup`).
    pub cgroup: Cgroup,
    /// Docker's cgroup driver, when known.
    pub cgroup_driver: Option<String>,
    /// Names in `/proc/filesystems`.
    pub filesystems: Vec<String>,
    /// An overlay module exists under `/lib/modules/<release>` (loadable on demand).
    pub overlay_module: bool,
    /// `iptables --version`, or why it failed.
    pub iptables: Result<String, String>,
    /// `/proc/sys/net/bridge` exists (br_netfilter loaded).
    pub bridge_netfilter: bool,
    /// `user.max_user_namespaces`.
    pub max_user_namespaces: Option<u64>,
    /// `CapBnd` of this process.
    pub cap_bnd: Option<u64>,
    /// `/dev/net/tun` is a character device (the rootless profile's user-mode network).
    pub tun_device: bool,
    /// `kernel.unprivileged_userns_clone` (Debian kernels; absent elsewhere).
    pub unprivileged_userns_clone: Option<u64>,
    /// `kernel.apparmor_restrict_unprivileged_userns` (Ubuntu 23.10+; absent elsewhere).
    pub apparmor_restrict_userns: Option<u64>,
    /// `MemAvailable` in bytes (bounds `warm_pool = "auto"`).
    pub mem_available: Option<u64>,
    /// This process is root with CAP_SYS_ADMIN, so it can open a rootless sidecar's `/sys`
    /// (crun inner runtime, inner `--privileged`; `isolation::rootless::may_open_sysfs`).
    pub opens_sysfs: bool,
}

impl Default for HostFacts {
    fn default() -> Self {
        HostFacts {
            kernel_release: None,
            cgroup: Cgroup::Unknown(String::new()),
            cgroup_driver: None,
            filesystems: Vec::new(),
            overlay_module: false,
            iptables: Err(String::new()),
            bridge_netfilter: false,
            max_user_namespaces: None,
            cap_bnd: None,
            tun_device: false,
            unprivileged_userns_clone: None,
            apparmor_restrict_userns: None,
            mem_available: None,
            opens_sysfs: true,
        }
    }
}

/// Capability numbers the checks look at.
pub mod caps {
    /// CAP_CHOWN.
    pub const CHOWN: u32 = 0;
    /// CAP_SETGID.
    pub const SETGID: u32 = 6;
    /// CAP_SETUID.
    pub const SETUID: u32 = 7;
    /// CAP_SETPCAP.
    pub const SETPCAP: u32 = 8;
    /// CAP_NET_ADMIN.
    pub const NET_ADMIN: u32 = 12;
    /// CAP_SYS_ADMIN.
    pub const SYS_ADMIN: u32 = 21;
    /// CAP_SYS_RESOURCE.
    pub const SYS_RESOURCE: u32 = 24;
}

/// An image the runner needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFact {
    /// `sidecar`, `job`, `helper`, `preload`.
    pub role: &'static str,
    /// Reference.
    pub image: String,
    /// Present locally, or the error asking.
    pub present: Result<bool, String>,
}

/// A network on the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetFact {
    /// Name.
    pub name: String,
    /// IPv4/IPv6 subnets.
    pub subnets: Vec<String>,
    /// Labels.
    pub labels: HashMap<String, String>,
}

/// Free space where jobs or caches live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskFact {
    /// `disk.builds` or `disk.cache`.
    pub id: &'static str,
    /// The configured directory.
    pub path: PathBuf,
    /// The existing directory measured (the path or its nearest existing parent).
    pub measured: PathBuf,
    /// `(free, total)` bytes for unprivileged... for root (`f_bavail`, `f_blocks`), or the error.
    pub space: Result<(u64, u64), String>,
}

/// What `runner cleanup` would remove.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Leftovers {
    /// `kind name: reason`.
    pub items: Vec<String>,
    /// What could not be looked at.
    pub failures: Vec<String>,
}

/// The firewall and the running jobs it should cover.
#[derive(Debug, Clone)]
pub struct NetpolicyFacts {
    /// Whether any runner uses dind (egress rules are for dind jobs).
    pub needed: bool,
    /// Our chains on the host, or why iptables could not list them.
    pub installed: Result<Vec<InstalledRule>, String>,
    /// `(runner id, job id)` of job networks whose runner is alive.
    pub running_jobs: Vec<(String, u64)>,
}

impl Default for NetpolicyFacts {
    fn default() -> Self {
        NetpolicyFacts {
            needed: false,
            installed: Ok(Vec::new()),
            running_jobs: Vec::new(),
        }
    }
}

/// One `[[runners]]`'s GitLab.
#[derive(Debug, Clone)]
pub struct GitlabFact {
    /// Runner name.
    pub runner: String,
    /// `url`.
    pub url: url::Url,
    /// A plain GET of the URL.
    pub probe: Result<Probe, ProbeError>,
    /// `POST /runners/verify`.
    pub token: TokenFact,
}

/// GitLab answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// HTTP status.
    pub status: u16,
    /// GitLab's `Date` header.
    pub server_date: Option<SystemTime>,
    /// Our clock when the answer arrived.
    pub local_date: SystemTime,
}

/// GitLab did not answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeError {
    /// The failure was in the TLS handshake (certificate).
    pub tls: bool,
    /// What happened.
    pub message: String,
}

/// The outcome of `/runners/verify`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenFact {
    /// Not tried (GitLab unreachable, no token).
    NotTried(String),
    /// Valid.
    Valid,
    /// GitLab refused it.
    Refused {
        /// 403 or 422.
        status: u16,
        /// GitLab's message.
        message: String,
    },
    /// Any other failure.
    Error(String),
}

/// One `--deep` sidecar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeepResult {
    /// The profile tried.
    pub profile: SidecarProfile,
    /// Time from start to a job environment whose daemon answers over mTLS, or why not.
    pub result: Result<Duration, String>,
}

/// Gathers every fact.
pub async fn gather(opts: &Options) -> Facts {
    crate::install_crypto_provider();
    let config = gather_config(opts).await;
    let mut host = tokio::task::spawn_blocking(gather_host)
        .await
        .unwrap_or_default();
    host.iptables = iptables_version().await;
    let loaded = config.loaded().cloned();
    let first = loaded.as_ref().and_then(|c| c.runners.first().cloned());
    let docker_host = first.as_ref().and_then(|r| r.docker.host.clone());
    let docker = match tokio::time::timeout(
        Duration::from_secs(15),
        Docker::connect(docker_host.as_deref()),
    )
    .await
    {
        Ok(Ok(d)) => Ok(d),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("the daemon did not answer within 15s".to_string()),
    };
    let engine = match &docker {
        Ok(d) => d.engine_facts().await.map_err(|e| e.to_string()),
        Err(e) => Err(e.clone()),
    };
    if let Ok(e) = &engine {
        host.cgroup = match e.cgroup_version.as_str() {
            "2" => Cgroup::V2,
            "1" => match host.cgroup {
                Cgroup::V1 { hybrid } => Cgroup::V1 { hybrid },
                _ => Cgroup::V1 { hybrid: false },
            },
            _ => host.cgroup,
        };
        if !e.cgroup_driver.is_empty() {
            host.cgroup_driver = Some(e.cgroup_driver.clone());
        }
    }
    let docker = docker.ok();
    let images = match (&docker, &loaded) {
        (Some(d), Some(c)) => gather_images(d, c).await,
        _ => Vec::new(),
    };
    let networks = match &docker {
        Some(d) => d.list_networks(&[]).await.ok().map(|ns| {
            ns.into_iter()
                .map(|n| NetFact {
                    name: n.name,
                    subnets: n.subnets,
                    labels: n.labels,
                })
                .collect()
        }),
        None => None,
    };
    let disks = match &loaded {
        Some(c) => gather_disks(c).await,
        None => Vec::new(),
    };
    let acl = match &loaded {
        Some(c) => gather_acl(c).await,
        None => Vec::new(),
    };
    let leftovers = match &docker {
        Some(d) => Some(gather_leftovers(d, loaded.as_ref()).await),
        None => None,
    };
    let netpolicy = gather_netpolicy(loaded.as_ref(), networks.as_deref()).await;
    let gitlab = match &loaded {
        Some(c) => gather_gitlab(c, opts.gitlab_timeout).await,
        None => Vec::new(),
    };
    let mirrors = match (&docker, &loaded) {
        (Some(d), Some(c)) => mirror::gather_mirrors(d, c).await,
        _ => Vec::new(),
    };
    let root_stores = match &loaded {
        Some(c) => gather_root_stores(c, &host),
        None => Vec::new(),
    };
    let cache_stores = match &loaded {
        Some(c) => gather_cache_stores(c, opts.gitlab_timeout).await,
        None => Vec::new(),
    };
    let deep = match (&docker, opts.deep) {
        (Some(d), true) => Some(gather_deep(d, loaded.as_ref()).await),
        _ => None,
    };
    Facts {
        config,
        host,
        docker: engine,
        images,
        networks,
        disks,
        acl,
        leftovers,
        netpolicy,
        gitlab,
        deep,
        mirrors,
        root_stores,
        cache_stores,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_runner_entries() {
        let text = r#"
concurrent = 1
[[runners]]
  name = "a"
  token = "glrt-x"
  builds_dir = "/b"
  [runners.docker]
    volumes = ["/var/run/docker.sock:/var/run/docker.sock", "/cache"]
    privileged = true
    [runners.docker.isolation]
      mode = "shared-socket"
[[runners]]
  name = "b"
  token_file = "tok"
"#;
        let (runners, inline, files) = raw_runners(text, Some(Path::new("/etc/ir")));
        assert!(inline);
        assert_eq!(files, [PathBuf::from("/etc/ir/tok")]);
        assert_eq!(runners.len(), 2);
        assert!(runners[0].privileged && runners[0].shared_socket);
        assert_eq!(runners[0].volumes.len(), 2);
        assert_eq!(runners[0].builds_dir, PathBuf::from("/b"));
        assert_eq!(runners[1].cache_dir, PathBuf::from("/cache"));
        assert!(raw_runners("not toml [", None).0.is_empty());
    }
}
