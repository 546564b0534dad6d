//! The configuration model: gitlab-runner's `config.toml` plus our `[runners.docker.isolation]`.
//!
//! This file is the contract the rest of the crate reads. Loading (with line numbers), the
//! gitlab-runner compatibility table and validation live beside it in `config/`.

use crate::secret::Secret;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// A loaded, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Jobs running at once across all `[[runners]]`.
    pub concurrent: usize,
    /// Seconds between polls, divided across `[[runners]]`.
    pub check_interval: Duration,
    /// `host:port` of the metrics and health endpoint, if any.
    pub listen_address: Option<String>,
    /// How long a graceful shutdown may take before running jobs are cancelled.
    pub shutdown_timeout: Duration,
    /// Where the runner keeps its state (journal, system id).
    pub state_dir: PathBuf,
    /// `log_level` (error, warn, info, debug, trace).
    pub log_level: String,
    /// `log_format` (text, json, runner).
    pub log_format: String,
    /// The `[[runners]]` entries.
    pub runners: Vec<RunnerConfig>,
}

/// One `[[runners]]` entry.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Free-form name shown in GitLab.
    pub name: String,
    /// GitLab base URL, e.g. `https://gitlab.example.com/`.
    pub url: url::Url,
    /// Runner authentication token (`glrt-…`) or legacy runner token.
    pub token: Secret,
    /// Where the token was read from, when it came from `token_file` instead of inline `token`
    /// (verbs that rewrite the config must not inline it).
    pub token_file: Option<PathBuf>,
    /// `token_obtained_at`: when the token was issued (written by register and by rotation).
    pub token_obtained_at: Option<std::time::SystemTime>,
    /// `token_expires_at`: when GitLab stops taking the token; `runner run` resets the token
    /// before then (gitlab-runner's rule: at three quarters of its lifetime).
    pub token_expires_at: Option<std::time::SystemTime>,
    /// `tls-ca-file`: extra CA bundle (PEM) for GitLab's certificate.
    pub tls_ca_file: Option<PathBuf>,
    /// `clone_url`: where GitLab serves clones when that is not `url` (gitlab-runner's key).
    /// A job's repository URL may name this host:port or `url`'s, nothing else.
    pub clone_url: Option<url::Url>,
    /// Jobs at once for this runner entry; 0 = no limit beyond `concurrent`.
    pub limit: usize,
    /// Concurrent `jobs/request` calls for this entry.
    pub request_concurrency: usize,
    /// `unhealthy_requests_limit`: consecutive failed job requests (token refused, no answer)
    /// after which this entry stops asking GitLab for jobs (gitlab-runner's default: 3).
    pub unhealthy_requests_limit: u32,
    /// `unhealthy_interval`: how long an unhealthy entry stops asking, counted from its last
    /// healthy answer as gitlab-runner does (default: 1 hour).
    pub unhealthy_interval: Duration,
    /// Root of the per-job directories (`<builds_dir>/gitlab-job-<id>`).
    pub builds_dir: PathBuf,
    /// Root of local cache archives.
    pub cache_dir: PathBuf,
    /// `KEY=value` entries added to every job.
    pub environment: Vec<(String, String)>,
    /// Runs before sources are fetched.
    pub pre_get_sources_script: Option<String>,
    /// Runs after sources are fetched (also read from the deprecated `post_clone_script`).
    pub post_get_sources_script: Option<String>,
    /// Runs before the job's script, in the same shell.
    pub pre_build_script: Option<String>,
    /// Runs after the job's script, in the same shell.
    pub post_build_script: Option<String>,
    /// Trace size limit in bytes (`output_limit` is written in KiB, as in gitlab-runner).
    pub output_limit: u64,
    /// `[runners.custom_build_dir] enabled`: jobs may choose their clone path with
    /// `GIT_CLONE_PATH` (inside `builds_dir`). On by default, as for gitlab-runner's docker executor.
    pub custom_build_dir: bool,
    /// `[runners.docker]`.
    pub docker: DockerConfig,
    /// `[runners.cache]` (local cache only).
    pub cache: CacheConfig,
}

/// `[runners.docker]`.
#[derive(Debug, Clone)]
pub struct DockerConfig {
    /// Host daemon address; `unix:///var/run/docker.sock` when unset.
    pub host: Option<String>,
    /// Default job image.
    pub image: String,
    /// Image used for git and artifact work.
    pub helper_image: Option<String>,
    /// Extra volumes (`host:container[:mode]` or bare `container` paths).
    pub volumes: Vec<String>,
    /// Job container memory limit in bytes.
    pub memory: Option<u64>,
    /// Job container memory + swap limit in bytes; `-1` = unlimited swap (Docker's convention).
    pub memory_swap: Option<i64>,
    /// Job container CPUs.
    pub cpus: Option<f64>,
    /// Job container pids limit.
    pub pids_limit: Option<i64>,
    /// `services_limit`: services one job may ask for; `None` = no limit (`-1`).
    pub services_limit: Option<usize>,
    /// `service_memory`: each service's memory limit in bytes (default: see `isolation::limits`).
    pub service_memory: Option<u64>,
    /// `service_cpus`: each service's CPUs (default: see `isolation::limits`).
    pub service_cpus: Option<f64>,
    /// Honoured only in shared-socket mode; a warning in isolated mode.
    pub privileged: bool,
    /// `always`, `if-not-present`, `never`.
    pub pull_policy: Vec<String>,
    /// Pull policies a job may ask for.
    pub allowed_pull_policies: Vec<String>,
    /// Image allow-list (globs); empty = any.
    pub allowed_images: Vec<String>,
    /// Service allow-list (globs); empty = any.
    pub allowed_services: Vec<String>,
    /// `host:ip` entries added to `/etc/hosts` of the job's containers and sidecar.
    pub extra_hosts: Vec<String>,
    /// DNS servers of the job's containers, sidecar and inner daemon.
    pub dns: Vec<std::net::IpAddr>,
    /// DNS search domains of the same.
    pub dns_search: Vec<String>,
    /// How long to wait for each service's exposed TCP ports before the script runs; `None`
    /// skips the wait (gitlab-runner's `wait_for_services_timeout`: negative disables, 0 or
    /// unset is the 30 s default).
    pub wait_for_services_timeout: Option<std::time::Duration>,
    /// `[runners.docker.isolation]`.
    pub isolation: IsolationConfig,
}

/// How jobs get a Docker daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IsolationMode {
    /// A per-job dockerd in a sidecar container (the default).
    Dind,
    /// The host socket mounted into the job (trusted hosts, bench baseline).
    SharedSocket,
}

impl IsolationMode {
    /// The name used in config and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            IsolationMode::Dind => "dind",
            IsolationMode::SharedSocket => "shared-socket",
        }
    }
}

/// How much privilege the sidecar gets. Never a silent fallback from one to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SidecarProfile {
    /// Rootless dockerd under its own host uid range: no process of the sidecar holds a
    /// capability in the host's user namespace after start-up (the default).
    Rootless,
    /// `sysbox-runc` runtime, not privileged.
    Sysbox,
    /// Least privilege that runs dockerd on this host (explicit capabilities, no devices).
    Hardened,
    /// `--privileged`, explicit opt-in.
    Privileged,
}

/// Default first host uid of rootless sidecars: far above the ids `useradd` hands out to
/// people and their subordinate ranges (Debian's start at 100000, 65536 per user).
pub const DEFAULT_ROOTLESS_UID_BASE: u32 = 100_000_000;
/// Default `data_root_per_key`.
pub const DEFAULT_DATA_ROOT_PER_KEY: usize = 4;

/// Host ids per rootless sidecar: its daemon's uid, then 65535 subordinate ids.
pub const ROOTLESS_UID_BLOCK: u32 = 65_536;
/// Rootless sidecars on ephemeral data roots that can exist at once per runner process (jobs
/// plus warm slots): blocks 0..this.
pub const ROOTLESS_UID_BLOCKS: u32 = 1024;
/// Blocks after those, one per warm data root (chosen when the volume is made and recorded on
/// it), so a warm root's files keep their owners from one job to the next.
pub const ROOTLESS_WARM_BLOCKS: u32 = 16_384;
/// One block after those, for the golden data roots of the root store (`isolation::root_store`):
/// the daemon that loads the preloaded images into a golden runs under it, and each job's
/// snapshot is mapped from it onto the job's own block.
pub const ROOTLESS_GOLDEN_BLOCKS: u32 = 1;
/// The host ids all blocks span from `rootless_uid_base`.
pub const ROOTLESS_UID_SPAN: i64 = ROOTLESS_UID_BLOCK as i64
    * (ROOTLESS_UID_BLOCKS as i64 + ROOTLESS_WARM_BLOCKS as i64 + ROOTLESS_GOLDEN_BLOCKS as i64);

/// Whether ephemeral data roots start as copy-on-write snapshots of a prepared golden root
/// holding `preload_images` (see `isolation::root_store`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootStore {
    /// Use the store when the host allows it (btrfs, or a loop-mounted btrfs image file);
    /// otherwise copy the images into each daemon, with a warning.
    Auto,
    /// Always copy the images into each daemon.
    Off,
}

/// Default size of the root store's sparse image file (only written blocks take disk).
pub const DEFAULT_ROOT_STORE_SIZE: u64 = 50 * 1024 * 1024 * 1024;

/// Where the sidecar's `/var/lib/docker` lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataRoot {
    /// A fresh volume per job.
    Ephemeral,
    /// A warm volume per (project, protected flag), one job at a time.
    Project,
}

/// Egress policy for job bridges; the host and metadata addresses are always denied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Egress {
    /// Anything outside the host.
    Allow,
    /// Nothing outside the job network.
    Deny,
    /// Only these CIDRs.
    AllowList(Vec<ipnet::IpNet>),
}

/// `[runners.docker.isolation]`.
#[derive(Debug, Clone)]
pub struct IsolationConfig {
    /// `dind` or `shared-socket`.
    pub mode: IsolationMode,
    /// Image of the per-job daemon.
    pub sidecar_image: String,
    /// Privilege profile of the sidecar.
    pub sidecar_profile: SidecarProfile,
    /// First host uid of the blocks rootless sidecars run under (65536 ids each).
    pub rootless_uid_base: u32,
    /// Sidecar memory limit in bytes.
    pub sidecar_memory: Option<u64>,
    /// Sidecar CPUs.
    pub sidecar_cpus: Option<f64>,
    /// Sidecar pids limit.
    pub sidecar_pids_limit: Option<i64>,
    /// Each service's pids limit (default: see `isolation::limits`).
    pub service_pids_limit: Option<i64>,
    /// MTU of job networks; 0 = the host's.
    pub network_mtu: u32,
    /// Where per-job bridges are carved from.
    pub address_pool: ipnet::Ipv4Net,
    /// Pool the inner daemons use; disjoint from the outer ones.
    pub inner_address_pool: ipnet::Ipv4Net,
    /// Ephemeral or warm per project.
    pub data_root: DataRoot,
    /// Size cap of a warm data root, bytes.
    pub data_root_max_size: Option<u64>,
    /// Age cap of a warm data root.
    pub data_root_max_age: Option<Duration>,
    /// Pull-through cache for the inner daemons. With a managed `mirror`, `runner run` sets it
    /// to that mirror's address once it answers.
    pub registry_mirror: Option<String>,
    /// `[runners.docker.isolation.mirror]`: a mirror the runner starts and owns on the host.
    pub mirror: Option<super::mirror::ManagedMirror>,
    /// Images copied from the host daemon into each job's daemon.
    pub preload_images: Vec<String>,
    /// `root_store`: preloaded images through copy-on-write snapshots of a golden data root.
    pub root_store: RootStore,
    /// `root_store_size`: size of the store's image file when the runner makes one.
    pub root_store_size: u64,
    /// `root_store_path`: where the store is mounted (default `<state_dir>/roots`).
    pub root_store_path: Option<PathBuf>,
    /// CA certificate file per registry (`host[:port]`), given to each job's daemon as
    /// `/etc/docker/certs.d/<host>/ca.crt` (see `isolation::registry_ca`).
    pub registry_ca_files: BTreeMap<String, PathBuf>,
    /// Egress policy.
    pub egress: Egress,
    /// `block_private_networks`: jobs cannot reach RFC 1918, 100.64.0.0/10 (CGNAT) and
    /// fc00::/7 addresses (the host's LANs, VPCs, libvirt and Kubernetes networks) beyond the
    /// GitLab URL, `clone_url`, the registry mirror, the host's resolvers and their own network.
    /// An `egress` list entry inside one of these ranges opens that part again.
    pub block_private_networks: bool,
    /// `inner_privileged`: whether the job's own daemon runs `docker run --privileged` (and
    /// `docker exec --privileged`), confined to the sidecar's sandbox. Off by default: the
    /// runner's inner policy (`isolation::inner_policy`) refuses them with the reason.
    pub inner_privileged: bool,
    /// How long the sidecar may take to answer an mTLS `/_ping`.
    pub ready_timeout: Duration,
    /// Runner-visible path -> host path, when the runner runs in a container.
    pub host_path_map: BTreeMap<PathBuf, PathBuf>,
    /// Sidecars kept started and ready ahead of jobs (0 = off); each serves one job. With
    /// `warm_pool_auto`, the pool is sized from recent demand instead and this is 0.
    pub warm_pool: usize,
    /// `warm_pool = "auto"`, the config file's default: the pool's size follows recent demand
    /// (job starts within one slot build time, over the last `warm_pool_max_idle`), bounded by
    /// `concurrent`/`limit` and by available memory. `Default` leaves it off (library callers
    /// and tests opt in); the file loader turns it on unless `warm_pool` is a number.
    pub warm_pool_auto: bool,
    /// Warm data roots per (project, protected flag) with `data_root = "project"`: that many
    /// parallel jobs of one project and protection level each start warm.
    pub data_root_per_key: usize,
    /// A pre-started sidecar idle this long is replaced by a fresh one.
    pub warm_pool_max_idle: Duration,
}

/// `[runners.cache]`: local archives under `cache_dir`, and optionally a shared store.
#[derive(Debug, Clone, Default)]
pub struct CacheConfig {
    /// The store shared by every runner host (`Type = "s3" | "gcs" | "azure"`); `None` keeps
    /// the cache on this host only.
    pub store: Option<super::cache_store::CacheStoreConfig>,
    /// Total size cap of the cache directory in bytes.
    pub max_size: Option<u64>,
    /// Age after which an unused archive is pruned.
    pub max_age: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            concurrent: 1,
            check_interval: Duration::from_secs(3),
            listen_address: None,
            shutdown_timeout: Duration::from_secs(30),
            state_dir: PathBuf::from("/var/lib/isolated-runner"),
            log_level: "info".to_string(),
            log_format: "text".to_string(),
            runners: Vec::new(),
        }
    }
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            name: "isolated-runner".to_string(),
            // A constant that always parses; real configs always set `url`.
            url: url::Url::parse("http://localhost/").expect("constant URL parses"),
            token: Secret::default(),
            token_file: None,
            token_obtained_at: None,
            token_expires_at: None,
            tls_ca_file: None,
            clone_url: None,
            limit: 0,
            request_concurrency: 1,
            unhealthy_requests_limit: DEFAULT_UNHEALTHY_REQUESTS_LIMIT,
            unhealthy_interval: DEFAULT_UNHEALTHY_INTERVAL,
            builds_dir: PathBuf::from("/builds"),
            cache_dir: PathBuf::from("/cache"),
            environment: Vec::new(),
            pre_get_sources_script: None,
            post_get_sources_script: None,
            pre_build_script: None,
            post_build_script: None,
            output_limit: 4 * 1024 * 1024,
            custom_build_dir: true,
            docker: DockerConfig::default(),
            cache: CacheConfig::default(),
        }
    }
}

/// Services a job may ask for unless `services_limit` says otherwise.
pub const DEFAULT_SERVICES_LIMIT: usize = 8;

/// gitlab-runner's `DefaultUnhealthyRequestsLimit`.
pub const DEFAULT_UNHEALTHY_REQUESTS_LIMIT: u32 = 3;
/// gitlab-runner's `DefaultUnhealthyInterval`.
pub const DEFAULT_UNHEALTHY_INTERVAL: Duration = Duration::from_secs(3600);

/// gitlab-runner's default `wait_for_services_timeout`.
pub const DEFAULT_WAIT_FOR_SERVICES: std::time::Duration = std::time::Duration::from_secs(30);

impl Default for DockerConfig {
    fn default() -> Self {
        DockerConfig {
            host: None,
            image: "isolated-runner/job:test".to_string(),
            helper_image: None,
            volumes: Vec::new(),
            memory: None,
            memory_swap: None,
            cpus: None,
            pids_limit: None,
            services_limit: Some(DEFAULT_SERVICES_LIMIT),
            service_memory: None,
            service_cpus: None,
            privileged: false,
            pull_policy: vec!["if-not-present".to_string()],
            allowed_pull_policies: Vec::new(),
            allowed_images: Vec::new(),
            allowed_services: Vec::new(),
            extra_hosts: Vec::new(),
            dns: Vec::new(),
            dns_search: Vec::new(),
            wait_for_services_timeout: Some(DEFAULT_WAIT_FOR_SERVICES),
            isolation: IsolationConfig::default(),
        }
    }
}

impl Default for IsolationConfig {
    fn default() -> Self {
        IsolationConfig {
            mode: IsolationMode::Dind,
            sidecar_image: "isolated-runner/dind:test".to_string(),
            sidecar_profile: SidecarProfile::Rootless,
            rootless_uid_base: crate::config::DEFAULT_ROOTLESS_UID_BASE,
            sidecar_memory: None,
            sidecar_cpus: None,
            sidecar_pids_limit: Some(4096),
            service_pids_limit: None,
            network_mtu: 0,
            address_pool: "10.213.0.0/16".parse().expect("constant CIDR parses"),
            inner_address_pool: "10.214.0.0/16".parse().expect("constant CIDR parses"),
            data_root: DataRoot::Ephemeral,
            data_root_max_size: None,
            data_root_max_age: None,
            registry_mirror: None,
            mirror: None,
            preload_images: Vec::new(),
            root_store: RootStore::Auto,
            root_store_size: DEFAULT_ROOT_STORE_SIZE,
            root_store_path: None,
            egress: Egress::Allow,
            block_private_networks: false,
            inner_privileged: false,
            ready_timeout: Duration::from_secs(60),
            host_path_map: BTreeMap::new(),
            registry_ca_files: BTreeMap::new(),
            warm_pool: 0,
            warm_pool_auto: false,
            data_root_per_key: DEFAULT_DATA_ROOT_PER_KEY,
            warm_pool_max_idle: Duration::from_secs(30 * 60),
        }
    }
}

impl IsolationConfig {
    /// `rootless_uid_base` when sidecars run rootless (each warm data root then records a uid
    /// block of its own); `None` on the other profiles, whose daemons run as the host's root.
    pub fn warm_uid_base(&self) -> Option<u32> {
        (self.sidecar_profile == SidecarProfile::Rootless).then_some(self.rootless_uid_base)
    }
}
