//! Gathering: everything the checks look at, read once. Reading only: nothing is pulled,
//! written or changed, except that `--deep` starts and removes throwaway sidecars.

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
    /// What `runner cleanup` would remove now (`None` when not looked at).
    pub leftovers: Option<Leftovers>,
    /// The firewall.
    pub netpolicy: NetpolicyFacts,
    /// One entry per `[[runners]]` with a token.
    pub gitlab: Vec<GitlabFact>,
    /// `--deep` results, one per profile.
    pub deep: Option<Vec<DeepResult>>,
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
    let leftovers = match &docker {
        Some(d) => Some(gather_leftovers(d, loaded.as_ref()).await),
        None => None,
    };
    let netpolicy = gather_netpolicy(loaded.as_ref(), networks.as_deref()).await;
    let gitlab = match &loaded {
        Some(c) => gather_gitlab(c, opts.gitlab_timeout).await,
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
        leftovers,
        netpolicy,
        gitlab,
        deep,
    }
}

async fn gather_config(opts: &Options) -> ConfigFacts {
    let mut facts = ConfigFacts {
        state: ConfigState::Absent,
        file_mode: None,
        inline_token: false,
        token_files: Vec::new(),
        runners: Vec::new(),
    };
    let Some(path) = opts.config_path.clone() else {
        return facts;
    };
    let text = match tokio::fs::read_to_string(&path).await {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && opts.config_is_default => {
            return facts;
        }
        Err(e) => {
            facts.state = ConfigState::Unreadable {
                path,
                detail: e.to_string(),
            };
            return facts;
        }
    };
    {
        use std::os::unix::fs::PermissionsExt;
        facts.file_mode = tokio::fs::metadata(&path)
            .await
            .ok()
            .map(|m| m.permissions().mode() & 0o7777);
    }
    let (runners, inline_token, token_files) = raw_runners(&text, path.parent());
    facts.runners = runners;
    facts.inline_token = inline_token;
    for tf in token_files {
        use std::os::unix::fs::PermissionsExt;
        let mode = tokio::fs::metadata(&tf)
            .await
            .ok()
            .map(|m| m.permissions().mode() & 0o7777);
        facts.token_files.push((tf, mode));
    }
    let p = path.clone();
    let loaded = tokio::task::spawn_blocking(move || config::load(&p)).await;
    facts.state = match loaded {
        Ok(Ok(l)) => ConfigState::Loaded {
            path,
            config: Box::new(l.config),
            warnings: l.warnings.iter().map(ToString::to_string).collect(),
        },
        Ok(Err(e)) => {
            let show = |sev| {
                e.diagnostics()
                    .iter()
                    .filter(|d| d.severity == sev)
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
            };
            let mut errors = show(config::Severity::Error);
            if errors.is_empty() {
                errors.push(e.to_string());
            }
            ConfigState::Invalid {
                path,
                errors,
                warnings: show(config::Severity::Warning),
            }
        }
        Err(e) => ConfigState::Unreadable {
            path,
            detail: e.to_string(),
        },
    };
    facts
}

/// `[[runners]]` as written, whether the file holds an inline token, and the `token_file`s.
pub fn raw_runners(text: &str, base: Option<&Path>) -> (Vec<RawRunner>, bool, Vec<PathBuf>) {
    let Ok(doc) = text.parse::<toml::Table>() else {
        return (Vec::new(), false, Vec::new());
    };
    let mut out = Vec::new();
    let mut inline = false;
    let mut files = Vec::new();
    let entries = doc
        .get("runners")
        .and_then(|r| r.as_array())
        .cloned()
        .unwrap_or_default();
    for r in entries {
        let Some(t) = r.as_table() else { continue };
        let s = |k: &str| t.get(k).and_then(|v| v.as_str()).map(str::to_string);
        if s("token").is_some_and(|t| !t.is_empty()) {
            inline = true;
        }
        if let Some(f) = s("token_file") {
            let p = PathBuf::from(&f);
            files.push(match (p.is_relative(), base) {
                (true, Some(b)) => b.join(p),
                _ => p,
            });
        }
        let docker = t.get("docker").and_then(|d| d.as_table());
        let volumes = docker
            .and_then(|d| d.get("volumes"))
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let privileged = docker
            .and_then(|d| d.get("privileged"))
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let shared_socket = docker
            .and_then(|d| d.get("isolation"))
            .and_then(|i| i.get("mode"))
            .and_then(|m| m.as_str())
            == Some("shared-socket");
        out.push(RawRunner {
            name: s("name").unwrap_or_else(|| "(unnamed)".to_string()),
            shared_socket,
            volumes,
            privileged,
            builds_dir: PathBuf::from(s("builds_dir").unwrap_or_else(|| "/builds".into())),
            cache_dir: PathBuf::from(s("cache_dir").unwrap_or_else(|| "/cache".into())),
        });
    }
    (out, inline, files)
}

/// Host facts from procfs and sysfs. Blocking.
fn gather_host() -> HostFacts {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let kernel_release = read("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string());
    let cgroup = match nix::sys::statfs::statfs("/sys/fs/cgroup") {
        Ok(s) if s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC => Cgroup::V2,
        Ok(s) if s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC => Cgroup::V1 {
            hybrid: nix::sys::statfs::statfs("/sys/fs/cgroup/unified")
                .is_ok_and(|u| u.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC),
        },
        Ok(s) => Cgroup::Unknown(format!("filesystem type {:?}", s.filesystem_type())),
        Err(e) => Cgroup::Unknown(e.to_string()),
    };
    let filesystems = read("/proc/filesystems")
        .map(|t| {
            t.lines()
                .filter_map(|l| l.split_whitespace().last().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let overlay_module = kernel_release
        .as_ref()
        .is_some_and(|r| Path::new(&format!("/lib/modules/{r}/kernel/fs/overlayfs")).exists());
    let cap_bnd = read("/proc/self/status").and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("CapBnd:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
    });
    HostFacts {
        kernel_release,
        cgroup,
        cgroup_driver: None,
        filesystems,
        overlay_module,
        iptables: Err("not checked".to_string()),
        bridge_netfilter: Path::new("/proc/sys/net/bridge").exists(),
        max_user_namespaces: read("/proc/sys/user/max_user_namespaces")
            .and_then(|s| s.trim().parse().ok()),
        cap_bnd,
        tun_device: std::fs::metadata("/dev/net/tun")
            .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_char_device(&m.file_type())),
        unprivileged_userns_clone: read("/proc/sys/kernel/unprivileged_userns_clone")
            .and_then(|s| s.trim().parse().ok()),
        apparmor_restrict_userns: read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns")
            .and_then(|s| s.trim().parse().ok()),
    }
}

async fn iptables_version() -> Result<String, String> {
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::process::Command::new("iptables")
            .arg("--version")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| "iptables --version did not finish within 10s".to_string())?
    .map_err(|e| format!("cannot run iptables: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

async fn gather_images(docker: &Docker, config: &Config) -> Vec<ImageFact> {
    let mut wanted: Vec<(&'static str, String)> = Vec::new();
    for r in &config.runners {
        if r.docker.isolation.mode == IsolationMode::Dind {
            wanted.push(("sidecar", r.docker.isolation.sidecar_image.clone()));
        }
        wanted.push(("job", r.docker.image.clone()));
        wanted.push((
            "helper",
            r.docker
                .helper_image
                .clone()
                .unwrap_or_else(|| crate::job::spec::DEFAULT_HELPER_IMAGE.to_string()),
        ));
        for p in &r.docker.isolation.preload_images {
            wanted.push(("preload", p.clone()));
        }
    }
    let mut out: Vec<ImageFact> = Vec::new();
    for (role, image) in wanted {
        if out.iter().any(|i| i.image == image && i.role == role) {
            continue;
        }
        let present = docker.image_exists(&image).await.map_err(|e| e.to_string());
        out.push(ImageFact {
            role,
            image,
            present,
        });
    }
    out
}

async fn gather_disks(config: &Config) -> Vec<DiskFact> {
    let mut wanted: Vec<(&'static str, PathBuf)> = Vec::new();
    for r in &config.runners {
        for (id, p) in [("disk.builds", &r.builds_dir), ("disk.cache", &r.cache_dir)] {
            if !wanted.iter().any(|(i, q)| *i == id && q == p) {
                wanted.push((id, p.clone()));
            }
        }
    }
    tokio::task::spawn_blocking(move || {
        wanted
            .into_iter()
            .map(|(id, path)| {
                let measured = path
                    .ancestors()
                    .find(|a| a.exists())
                    .unwrap_or(Path::new("/"))
                    .to_path_buf();
                let space = nix::sys::statvfs::statvfs(&measured)
                    .map(|s| {
                        let frag = s.fragment_size();
                        (
                            s.blocks_available().saturating_mul(frag),
                            s.blocks().saturating_mul(frag),
                        )
                    })
                    .map_err(|e| e.to_string());
                DiskFact {
                    id,
                    path,
                    measured,
                    space,
                }
            })
            .collect()
    })
    .await
    .unwrap_or_default()
}

async fn gather_leftovers(docker: &Docker, config: Option<&Config>) -> Leftovers {
    let (builds_dirs, state_dir) = match config {
        Some(c) => {
            let mut b: Vec<PathBuf> = c.runners.iter().map(|r| r.builds_dir.clone()).collect();
            b.dedup();
            (b, c.state_dir.clone())
        }
        None => (
            Vec::new(),
            PathBuf::from(crate::isolation::DEFAULT_STATE_DIR),
        ),
    };
    let own = system_id_readonly(&state_dir).await;
    let req = cleanup::Request {
        builds_dirs,
        state_dir,
        caches: Vec::new(),
        older_than: cleanup::DEFAULT_OLDER_THAN,
        dry_run: true,
        netpolicy: Some(NetPolicy::new(NetOptions::new(
            "doctor",
            crate::config::IsolationConfig::default().address_pool,
        ))),
        own_runner_ids: vec![own],
        cache_pruner: None,
        label_filter: None,
    };
    let plan = cleanup::plan(Some(docker), &req).await;
    Leftovers {
        items: plan
            .items
            .iter()
            .map(|i| format!("{} {}: {}", i.kind.as_str(), i.name, i.reason))
            .collect(),
        failures: plan.failures,
    }
}

async fn gather_netpolicy(config: Option<&Config>, networks: Option<&[NetFact]>) -> NetpolicyFacts {
    let needed = config.is_none_or(|c| {
        c.runners
            .iter()
            .any(|r| r.docker.isolation.mode == IsolationMode::Dind)
    });
    let pool = config
        .and_then(|c| c.runners.first())
        .map(|r| r.docker.isolation.address_pool)
        .unwrap_or_else(|| crate::config::IsolationConfig::default().address_pool);
    let policy = NetPolicy::new(NetOptions::new("doctor", pool));
    let installed = policy.list_installed().await.map_err(|e| e.to_string());
    let observer = tokio::task::spawn_blocking(cleanup::owner::observer)
        .await
        .ok()
        .flatten();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let mut running_jobs = Vec::new();
    for n in networks.unwrap_or_default() {
        if n.labels.get(LABEL_MANAGED).map(String::as_str) != Some("1") {
            continue;
        }
        let labels = n.labels.clone();
        let obs = observer.clone();
        let standing = tokio::task::spawn_blocking(move || {
            let judge = |o: &cleanup::owner::Owner| match &obs {
                Some(obs) => obs.judge(o, cleanup::owner::start_ticks),
                None => cleanup::owner::Liveness::Unknown,
            };
            cleanup::standing(&labels, now, &judge)
        })
        .await
        .unwrap_or(cleanup::Standing::Pending);
        let runner = n.labels.get(crate::docker::LABEL_RUNNER).cloned();
        let job = n
            .labels
            .get(crate::docker::LABEL_JOB)
            .and_then(|j| j.parse::<u64>().ok());
        if standing == cleanup::Standing::Alive
            && let (Some(runner), Some(job)) = (runner, job)
        {
            running_jobs.push((runner, job));
        }
    }
    NetpolicyFacts {
        needed,
        installed,
        running_jobs,
    }
}

/// The system id `runner run` would use, without writing it: the persisted one, else the one
/// derived from the machine id (what `run` would write), else a throwaway.
pub async fn system_id_readonly(state_dir: &Path) -> String {
    use crate::gitlab::identity;
    if let Ok(s) = tokio::fs::read_to_string(state_dir.join(identity::SYSTEM_ID_FILE)).await
        && identity::is_valid_system_id(s.trim())
    {
        return s.trim().to_string();
    }
    for p in identity::MACHINE_ID_PATHS {
        if let Ok(m) = tokio::fs::read_to_string(p).await
            && !m.trim().is_empty()
        {
            return identity::system_id_from_machine_id(&m);
        }
    }
    "r_doctor000000".to_string()
}

async fn gather_gitlab(config: &Config, timeout: Duration) -> Vec<GitlabFact> {
    let system_id = system_id_readonly(&config.state_dir).await;
    let mut out = Vec::new();
    // Entries without a token serve `runner exec` only and never talk to GitLab.
    for r in config
        .runners
        .iter()
        .filter(|r| !r.token.expose().is_empty())
    {
        let probe = probe(&r.url, r.tls_ca_file.as_deref(), timeout).await;
        let token = if probe.is_err() {
            TokenFact::NotTried("gitlab did not answer".to_string())
        } else {
            verify(r, &system_id, timeout).await
        };
        out.push(GitlabFact {
            runner: r.name.clone(),
            url: r.url.clone(),
            probe,
            token,
        });
    }
    out
}

async fn verify(r: &crate::config::RunnerConfig, system_id: &str, timeout: Duration) -> TokenFact {
    use crate::gitlab::client::{Client, ClientOptions, RetryPolicy};
    let options = ClientOptions {
        request_timeout: timeout,
        connect_timeout: timeout,
        retry: RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        },
        tls_ca_file: r.tls_ca_file.clone(),
        ..ClientOptions::default()
    };
    let client = match Client::new(&r.url, options) {
        Ok(c) => c,
        Err(e) => return TokenFact::Error(e.to_string()),
    };
    let info = crate::gitlab::identity::runner_info();
    match client.verify(&r.token, system_id, &info).await {
        Ok(_) => TokenFact::Valid,
        Err(e) => match e.status() {
            Some(s @ (401 | 403 | 422)) => TokenFact::Refused {
                status: s,
                message: e.to_string(),
            },
            _ => TokenFact::Error(e.to_string()),
        },
    }
}

/// A plain `GET` of the GitLab URL: any HTTP answer means reachable; its `Date` header gives
/// the clock skew. Redirects are not followed.
async fn probe(
    url: &url::Url,
    ca_file: Option<&Path>,
    timeout: Duration,
) -> Result<Probe, ProbeError> {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeout)
        .timeout(timeout)
        .user_agent(crate::gitlab::client::default_user_agent());
    if let Some(ca) = ca_file {
        let pem = tokio::fs::read(ca).await.map_err(|e| ProbeError {
            tls: true,
            message: format!("cannot read tls-ca-file {}: {e}", ca.display()),
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| ProbeError {
            tls: true,
            message: format!(
                "tls-ca-file {} holds no usable certificate: {e}",
                ca.display()
            ),
        })?;
        for c in certs {
            builder = builder.add_root_certificate(c);
        }
    }
    let client = builder.build().map_err(|e| ProbeError {
        tls: false,
        message: e.to_string(),
    })?;
    match client.get(url.clone()).send().await {
        Ok(resp) => {
            let local_date = SystemTime::now();
            let server_date = resp
                .headers()
                .get(reqwest::header::DATE)
                .and_then(|d| d.to_str().ok())
                .and_then(|d| httpdate::parse_http_date(d).ok());
            Ok(Probe {
                status: resp.status().as_u16(),
                server_date,
                local_date,
            })
        }
        Err(e) => {
            let chain = error_chain(&e);
            let lower = chain.to_lowercase();
            let tls = url.scheme() == "https"
                && (lower.contains("certificate")
                    || lower.contains("tls")
                    || lower.contains("handshake")
                    || lower.contains("invalid peer"));
            Err(ProbeError {
                tls,
                message: chain,
            })
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = s.source();
    }
    parts.join(": ")
}

/// Starts one throwaway job environment per profile through the real dind backend, timing
/// each until its daemon answers over mTLS, then tears it down.
async fn gather_deep(docker: &Docker, config: Option<&Config>) -> Vec<DeepResult> {
    let base = config
        .and_then(|c| c.runners.first().cloned())
        .unwrap_or_default();
    let mut out = Vec::new();
    for profile in [
        SidecarProfile::Rootless,
        SidecarProfile::Hardened,
        SidecarProfile::Sysbox,
        SidecarProfile::Privileged,
    ] {
        let result = deep_one(docker, &base, profile).await;
        out.push(DeepResult { profile, result });
    }
    out
}

async fn deep_one(
    docker: &Docker,
    base: &crate::config::RunnerConfig,
    profile: SidecarProfile,
) -> Result<Duration, String> {
    use crate::isolation::{ContainerImage, EnvironmentSpec, Isolation, OutputSink};
    struct Discard;
    impl OutputSink for Discard {
        fn write(&self, _data: &[u8]) {}
    }
    // Private directories: the probe must not touch the real builds or state directories.
    let tmp = tempfile_dir().await?;
    let mut runner = base.clone();
    runner.builds_dir = tmp.join("builds");
    runner.docker.isolation.mode = IsolationMode::Dind;
    runner.docker.isolation.sidecar_profile = profile;
    // One probe job: a sidecar pre-started for a next job would outlive the probe.
    runner.docker.isolation.warm_pool = 0;
    let backend = crate::isolation::dind::DindBackend::new(
        docker.clone(),
        Arc::new(runner.clone()),
        tmp.join("state"),
    );
    let id = uuid::Uuid::new_v4().simple().to_string();
    let spec = EnvironmentSpec {
        runner_id: format!("doctor-{}", &id[..8]),
        // A job id no GitLab hands out soon, unique per run.
        job_id: 9_000_000_000
            + u64::from(uuid::Uuid::new_v4().as_bytes()[0]) * 1000
            + std::process::id() as u64 % 1000,
        project_id: 0,
        protected: false,
        timeout: Duration::from_secs(600),
        build_image: ContainerImage {
            name: runner.docker.image.clone(),
            entrypoint: None,
        },
        helper_image: runner
            .docker
            .helper_image
            .clone()
            .unwrap_or_else(|| crate::job::spec::DEFAULT_HELPER_IMAGE.to_string()),
        services: Vec::new(),
        service_env: Vec::new(),
        repo_endpoint: None,
    };
    let started = tokio::time::Instant::now();
    let result = backend
        .prepare(
            &spec,
            Arc::new(Discard),
            tokio_util::sync::CancellationToken::new(),
        )
        .await;
    let outcome = match result {
        Ok(env) => {
            let took = started.elapsed();
            let report = env.teardown().await;
            if report.failures.is_empty() {
                Ok(took)
            } else {
                Err(format!(
                    "ready in {took:.1?}, but teardown failed: {}",
                    report.failures.join("; ")
                ))
            }
        }
        Err(e) => Err(e.to_string()),
    };
    let _ = crate::paths::remove_path_async(&tmp).await;
    outcome
}

async fn tempfile_dir() -> Result<PathBuf, String> {
    let dir = std::env::temp_dir().join(format!("runner-doctor-{}", uuid::Uuid::new_v4().simple()));
    tokio::fs::create_dir(&dir)
        .await
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
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
