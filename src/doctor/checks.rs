//! The checks: pure functions from [`Facts`] to [`Check`]s. Ids and hints are documented in
//! `docs/doctor.md`; keep both in step.

use super::facts::{
    Cgroup, ConfigState, DeepResult, Facts, GitlabFact, ProbeError, TokenFact, caps,
};
use super::versions::{self, Advisory};
use super::{Check, Status};
use crate::config::validate::{exposes_docker_socket, parse_volume, shared_volume_warning};
use crate::config::{IsolationMode, SidecarProfile};
use ipnet::Ipv4Net;
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
        sidecar_profiles(f),
        network_address_pool(f),
        netpolicy_rules(f),
        gitlab_reachable(f),
        gitlab_tls(f),
        gitlab_token(f),
        gitlab_clock_skew(f),
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

fn config_loads(f: &Facts) -> Check {
    const ID: &str = "config.loads";
    match &f.config.state {
        ConfigState::Absent => skip(ID, "no config file: host checks only", NO_CONFIG_HINT),
        ConfigState::Unreadable { path, detail } => Check::with(
            ID,
            Status::Fail,
            format!("cannot read {}: {detail}", path.display()),
            "check the path and that the runner's user (root) can read it",
        ),
        ConfigState::Invalid {
            path,
            errors,
            warnings,
        } => {
            let mut hint = errors.join("\n");
            if !warnings.is_empty() {
                hint.push('\n');
                hint.push_str(&warnings.join("\n"));
            }
            hint.push_str(&format!(
                "\nfix these lines; `runner config check {}` lists the same",
                path.display()
            ));
            Check::with(
                ID,
                Status::Fail,
                format!(
                    "{} does not load: {} error{}",
                    path.display(),
                    errors.len(),
                    if errors.len() == 1 { "" } else { "s" }
                ),
                hint,
            )
        }
        ConfigState::Loaded {
            path,
            config,
            warnings,
        } if !warnings.is_empty() => Check::with(
            ID,
            Status::Warn,
            format!(
                "{} loads with {} warning{}",
                path.display(),
                warnings.len(),
                if warnings.len() == 1 { "" } else { "s" }
            ),
            format!(
                "{}\n({} runner entries, concurrent = {})",
                warnings.join("\n"),
                config.runners.len(),
                config.concurrent
            ),
        ),
        ConfigState::Loaded { path, config, .. } => Check::ok(
            ID,
            format!(
                "{} loads: {} runner entr{}, concurrent = {}",
                path.display(),
                config.runners.len(),
                if config.runners.len() == 1 {
                    "y"
                } else {
                    "ies"
                },
                config.concurrent
            ),
        ),
    }
}

fn config_permissions(f: &Facts) -> Check {
    const ID: &str = "config.permissions";
    let path = match &f.config.state {
        ConfigState::Absent => return skip(ID, "no config file", NO_CONFIG_HINT),
        ConfigState::Unreadable { path, .. }
        | ConfigState::Invalid { path, .. }
        | ConfigState::Loaded { path, .. } => path.clone(),
    };
    let mut holders: Vec<(std::path::PathBuf, Option<u32>)> = Vec::new();
    if f.config.inline_token {
        holders.push((path.clone(), f.config.file_mode));
    }
    holders.extend(f.config.token_files.iter().cloned());
    if holders.is_empty() {
        return Check::ok(ID, format!("{} holds no runner token", path.display()));
    }
    let mut parts = Vec::new();
    for (p, mode) in holders {
        let part = match mode {
            None => skip(ID, format!("cannot stat {}", p.display()), ""),
            Some(m) if m & 0o007 != 0 => Check::with(
                ID,
                Status::Fail,
                format!(
                    "{} holds a runner token and is readable by every user (mode {:o})",
                    p.display(),
                    m & 0o777
                ),
                format!(
                    "chmod 600 {p} && chown root:root {p}: anyone who reads the token can take \
                     jobs, with their secrets, as this runner",
                    p = p.display()
                ),
            ),
            Some(m) if m & 0o070 != 0 => Check::with(
                ID,
                Status::Warn,
                format!(
                    "{} holds a runner token and is readable by its group (mode {:o})",
                    p.display(),
                    m & 0o777
                ),
                format!("chmod 600 {}", p.display()),
            ),
            Some(m) => Check::ok(
                ID,
                format!("{} is private (mode {:o})", p.display(), m & 0o777),
            ),
        };
        parts.push(part);
    }
    combine(ID, parts)
}

fn config_volumes(f: &Facts) -> Check {
    const ID: &str = "config.volumes";
    if matches!(f.config.state, ConfigState::Absent) {
        return skip(ID, "no config file", NO_CONFIG_HINT);
    }
    if f.config.runners.is_empty() {
        return skip(ID, "no [[runners]] entry", "");
    }
    let mut parts = Vec::new();
    for r in &f.config.runners {
        for text in &r.volumes {
            let Ok(v) = parse_volume(text) else { continue };
            if let Some(host) = v.host_path()
                && exposes_docker_socket(&host)
            {
                parts.push(if r.shared_socket {
                    Check::with(
                        ID,
                        Status::Warn,
                        format!(
                            "runner {}: `{text}` gives every job the host daemon",
                            r.name
                        ),
                        "shared-socket mode is for trusted hosts only: any job can take over the \
                         host; switch to mode = \"dind\" and remove the volume",
                    )
                } else {
                    Check::with(
                        ID,
                        Status::Fail,
                        format!(
                            "runner {}: `{text}` mounts the host Docker socket into every job",
                            r.name
                        ),
                        format!(
                            "remove `{text}` from [runners.docker] volumes of runner {}: any job \
                             could take over the host; each job already has its own daemon at \
                             DOCKER_HOST",
                            r.name
                        ),
                    )
                });
                continue;
            }
            if let Some(w) = shared_volume_warning(&v, &r.builds_dir, &r.cache_dir) {
                parts.push(Check::with(
                    ID,
                    Status::Warn,
                    format!("runner {}: `{text}` {w}", r.name),
                    format!(
                        "remove `{text}` from [runners.docker] volumes of runner {} unless \
                         every project on this runner may share it",
                        r.name
                    ),
                ));
            }
        }
        if r.privileged {
            parts.push(if r.shared_socket {
                Check::with(
                    ID,
                    Status::Warn,
                    format!(
                        "runner {}: privileged = true: job containers are host root",
                        r.name
                    ),
                    "set privileged = false unless this is a throwaway, single-tenant host",
                )
            } else {
                Check::with(
                    ID,
                    Status::Warn,
                    format!(
                        "runner {}: privileged = true is ignored in isolated mode",
                        r.name
                    ),
                    "remove the line: the job talks to its own daemon and never needs privilege; \
                     the sidecar's privilege comes from sidecar_profile",
                )
            });
        }
    }
    if parts.is_empty() {
        return Check::ok(
            ID,
            "no host socket, no shared host directory, no privileged job containers",
        );
    }
    combine(ID, parts)
}

fn privileged_configured(f: &Facts) -> bool {
    f.config.loaded().is_some_and(|c| {
        c.runners.iter().any(|r| {
            r.docker.isolation.mode == IsolationMode::Dind
                && r.docker.isolation.sidecar_profile == SidecarProfile::Privileged
        })
    })
}

fn host_cgroup(f: &Facts) -> Check {
    const ID: &str = "host.cgroup";
    let driver = f
        .host
        .cgroup_driver
        .as_deref()
        .map(|d| format!(", {d} driver"))
        .unwrap_or_default();
    match &f.host.cgroup {
        Cgroup::V2 => Check::ok(
            ID,
            format!(
                "cgroup v2{driver}: sidecar limits apply and inner daemons nest their \
                 containers' limits in the sidecar's cgroup namespace"
            ),
        ),
        Cgroup::V1 { hybrid } => {
            let message = format!(
                "cgroup v1{}{driver}: sidecar and inner container limits work (memory, pids), \
                 but inner --privileged cannot get devices and limits are not delegated",
                if *hybrid { " (hybrid)" } else { "" }
            );
            if privileged_configured(f) {
                Check::with(
                    ID,
                    Status::Warn,
                    format!(
                        "{message}; a privileged sidecar can use the v1 release_agent to run commands on the host"
                    ),
                    "use sidecar_profile = \"hardened\" (or sysbox), or move to a cgroup v2 host \
                     (systemd.unified_cgroup_hierarchy=1 on the kernel command line)",
                )
            } else {
                Check::ok(ID, message)
            }
        }
        Cgroup::Unknown(why) => Check::with(
            ID,
            Status::Warn,
            format!("cannot tell the cgroup version ({why})"),
            "check `stat -fc %T /sys/fs/cgroup` (cgroup2fs = v2, tmpfs = v1) and `docker info`",
        ),
    }
}

fn host_kernel(f: &Facts) -> Check {
    const ID: &str = "host.kernel";
    let h = &f.host;
    let release = h.kernel_release.clone().unwrap_or_else(|| "?".to_string());
    let mut missing: Vec<(Status, String, &str)> = Vec::new();
    let overlay = h.filesystems.iter().any(|fs| fs == "overlay") || h.overlay_module;
    if !overlay {
        missing.push((
            Status::Fail,
            "no overlay filesystem".to_string(),
            "load it (`modprobe overlay`, and add `overlay` to /etc/modules-load.d/) or use a \
             kernel with CONFIG_OVERLAY_FS: without it inner daemons fall back to vfs (full copies, slow)",
        ));
    }
    if let Err(e) = &h.iptables {
        missing.push((
            Status::Fail,
            format!("iptables not usable ({e})"),
            "install iptables (`apt-get install iptables`; the nf_tables variant on nf_tables \
             hosts): the sidecar's daemon and the runner's egress rules need netfilter",
        ));
    }
    match h.max_user_namespaces {
        Some(0) => missing.push((
            Status::Warn,
            "user namespaces disabled (user.max_user_namespaces = 0)".to_string(),
            "sysctl -w user.max_user_namespaces=15000 (and persist it in /etc/sysctl.d/): the \
             sysbox profile and rootless daemons need user namespaces",
        )),
        None => missing.push((
            Status::Warn,
            "cannot read user.max_user_namespaces".to_string(),
            "check `sysctl user.max_user_namespaces`; the sysbox profile needs user namespaces",
        )),
        Some(_) => {}
    }
    if missing.is_empty() {
        return Check::ok(
            ID,
            format!(
                "kernel {release}: overlay, netfilter ({}), user namespaces",
                h.iptables.as_deref().unwrap_or("?")
            ),
        );
    }
    let status = missing.iter().map(|m| m.0).max().unwrap_or(Status::Warn);
    Check::with(
        ID,
        status,
        format!(
            "kernel {release}: {}",
            missing
                .iter()
                .map(|m| m.1.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        ),
        missing.iter().map(|m| m.2).collect::<Vec<_>>().join("\n"),
    )
}

const GIB: u64 = 1024 * 1024 * 1024;

fn disk(f: &Facts, id: &'static str) -> Check {
    let facts: Vec<_> = f.disks.iter().filter(|d| d.id == id).collect();
    if facts.is_empty() {
        return skip(id, "no config file", NO_CONFIG_HINT);
    }
    let parts = facts
        .into_iter()
        .map(|d| match &d.space {
            Err(e) => Check::with(
                id,
                Status::Warn,
                format!("cannot measure {}: {e}", d.measured.display()),
                format!("check that {} exists and is readable", d.path.display()),
            ),
            Ok((free, total)) => {
                let pct = if *total == 0 {
                    0.0
                } else {
                    *free as f64 * 100.0 / *total as f64
                };
                let message = format!(
                    "{}: {} free of {} ({pct:.0}%) on {}",
                    d.path.display(),
                    crate::cleanup::human_bytes(*free),
                    crate::cleanup::human_bytes(*total),
                    d.measured.display()
                );
                let hint = format!(
                    "free space under {}: `runner cleanup` removes what dead jobs left, \
                     `docker system df` shows what the engine holds; or move {} to a larger disk",
                    d.path.display(),
                    if id == "disk.builds" {
                        "builds_dir"
                    } else {
                        "cache_dir"
                    }
                );
                if *free < 2 * GIB || pct < 2.0 {
                    Check::with(id, Status::Fail, message, hint)
                } else if *free < 10 * GIB || pct < 5.0 {
                    Check::with(id, Status::Warn, message, hint)
                } else {
                    Check::ok(id, message)
                }
            }
        })
        .collect();
    combine(id, parts)
}

fn leftovers(f: &Facts) -> Check {
    const ID: &str = "leftovers";
    let Some(l) = &f.leftovers else {
        return skip(ID, "docker not reachable", "see docker.reachable");
    };
    if l.items.is_empty() && l.failures.is_empty() {
        return Check::ok(ID, "nothing left behind by dead jobs");
    }
    if l.items.is_empty() {
        return Check::with(
            ID,
            Status::Warn,
            format!("could not look everywhere: {}", l.failures.join("; ")),
            "run `runner cleanup --dry-run` as root to see what it can reach",
        );
    }
    let shown: Vec<&str> = l.items.iter().take(5).map(String::as_str).collect();
    Check::with(
        ID,
        Status::Warn,
        format!(
            "{} object{} left by dead or old jobs: {}{}",
            l.items.len(),
            if l.items.len() == 1 { "" } else { "s" },
            shown.join("; "),
            if l.items.len() > 5 { "; …" } else { "" }
        ),
        "run `runner cleanup --dry-run` to list them all, then `runner cleanup`; enable the \
         nightly timer: systemctl enable --now isolated-runner-cleanup.timer",
    )
}

fn docker_reachable(f: &Facts) -> Check {
    const ID: &str = "docker.reachable";
    match &f.docker {
        Ok(e) => Check::ok(
            ID,
            format!(
                "engine {} (storage driver {}, root {})",
                e.server_version, e.storage_driver, e.root_dir
            ),
        ),
        Err(e) => Check::with(
            ID,
            Status::Fail,
            format!("cannot talk to the host daemon: {e}"),
            "start it (`systemctl start docker`) and run the runner as root (or a member of the \
             docker group); a daemon elsewhere goes in [runners.docker] host",
        ),
    }
}

/// `1.41` → (1, 41).
fn api_tuple(v: &str) -> Option<(u64, u64)> {
    let (a, b) = v.trim().split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

fn docker_api_version(f: &Facts) -> Check {
    const ID: &str = "docker.api_version";
    let Ok(e) = &f.docker else {
        return skip(ID, "docker not reachable", "see docker.reachable");
    };
    match api_tuple(&e.api_version) {
        Some(v) if v >= (1, 41) => {
            Check::ok(ID, format!("API {} (1.41 or newer needed)", e.api_version))
        }
        Some(_) => Check::with(
            ID,
            Status::Fail,
            format!("API {} is older than 1.41 (Docker 20.10)", e.api_version),
            "upgrade Docker Engine to 20.10 or newer: older engines lack the private cgroup \
             namespace and the API calls the runner uses",
        ),
        None => Check::with(
            ID,
            Status::Warn,
            format!("the engine reports API version {:?}", e.api_version),
            "check `docker version`: the runner needs API 1.41 or newer",
        ),
    }
}

fn advisories_text(list: &[&Advisory]) -> String {
    list.iter()
        .map(|a| format!("{} ({}; fixed in {})", a.ids, a.what, a.fixed_in()))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The lowest fixed version that none of `list` affects.
fn first_fixed(list: &[&Advisory]) -> Option<versions::Version> {
    list.iter()
        .flat_map(|a| a.fixed.iter())
        .filter_map(|v| versions::parse(v))
        .filter(|v| !list.iter().any(|a| a.affects(v)))
        .min()
}

fn docker_component(f: &Facts, id: &'static str, name: &str, table: &'static [Advisory]) -> Check {
    let Ok(e) = &f.docker else {
        return skip(id, "docker not reachable", "see docker.reachable");
    };
    let Some((_, version)) = e
        .components
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
    else {
        return Check::with(
            id,
            Status::Warn,
            format!("the engine does not report its {name} version"),
            format!("run `{name} --version` and compare with the advisories in docs/doctor.md"),
        );
    };
    match versions::unpatched(table, version) {
        None => Check::with(
            id,
            Status::Warn,
            format!("{name} {version}: cannot parse the version"),
            format!("compare `{name} --version` with the advisories in docs/doctor.md"),
        ),
        Some(list) if list.is_empty() => Check::ok(
            id,
            format!("{name} {version}: no known container escape applies"),
        ),
        Some(list) => {
            let upgrade_to = first_fixed(&list);
            let distro = version.contains('+') || version.contains('~');
            Check::with(
                id,
                Status::Warn,
                format!("{name} {version} is affected by {}", advisories_text(&list)),
                format!(
                    "upgrade {name} (the containerd.io or {name} package) to a fixed release{}; \
                     a malicious job image attacks the host's {name} directly{}",
                    upgrade_to
                        .map(|v| format!(" ({v} or newer)"))
                        .unwrap_or_default(),
                    if distro {
                        ". This is a distribution build: it may carry backported fixes, so \
                         check your distribution's security tracker for these CVEs"
                    } else {
                        ""
                    }
                ),
            )
        }
    }
}

fn images_present(f: &Facts) -> Check {
    const ID: &str = "images.present";
    if f.config.loaded().is_none() {
        return skip(
            ID,
            "no loaded config: no images to look for",
            NO_CONFIG_HINT,
        );
    }
    if f.docker.is_err() {
        return skip(ID, "docker not reachable", "see docker.reachable");
    }
    let mut missing = Vec::new();
    let mut errors = Vec::new();
    for i in &f.images {
        match &i.present {
            Ok(true) => {}
            Ok(false) => missing.push(format!("{} {}", i.role, i.image)),
            Err(e) => errors.push(format!("{} {}: {e}", i.role, i.image)),
        }
    }
    if !missing.is_empty() {
        return Check::with(
            ID,
            Status::Fail,
            format!("missing on the host daemon: {}", missing.join(", ")),
            "load them on the host before jobs run (`docker load -i FILE` or `docker pull \
             IMAGE` from a registry you trust): the runner never pulls sidecar, job or helper \
             images itself",
        );
    }
    if !errors.is_empty() {
        return Check::with(
            ID,
            Status::Warn,
            format!("could not inspect: {}", errors.join("; ")),
            "check `docker image inspect IMAGE`",
        );
    }
    Check::ok(
        ID,
        format!(
            "all present: {}",
            f.images
                .iter()
                .map(|i| format!("{} {}", i.role, i.image))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    )
}

/// /28 blocks of `pool` not touched by any of `used`.
pub fn free_blocks(pool: Ipv4Net, used: &[Ipv4Net]) -> (u64, u64) {
    let prefix = u32::from(pool.prefix_len()).min(28);
    let total = 1u64 << (28 - prefix);
    let start = u64::from(u32::from(pool.network())) >> 4;
    let end = start + total - 1;
    let mut ranges: Vec<(u64, u64)> = used
        .iter()
        .filter_map(|n| {
            let a = u64::from(u32::from(n.network())) >> 4;
            let b = u64::from(u32::from(n.broadcast())) >> 4;
            let (lo, hi) = (a.max(start), b.min(end));
            (lo <= hi).then_some((lo, hi))
        })
        .collect();
    ranges.sort();
    let mut taken = 0u64;
    let mut cur: Option<(u64, u64)> = None;
    for (lo, hi) in ranges {
        cur = match cur {
            Some((clo, chi)) if lo <= chi + 1 => Some((clo, chi.max(hi))),
            Some((clo, chi)) => {
                taken += chi - clo + 1;
                Some((lo, hi))
            }
            None => Some((lo, hi)),
        };
    }
    if let Some((clo, chi)) = cur {
        taken += chi - clo + 1;
    }
    (total - taken, total)
}

fn network_address_pool(f: &Facts) -> Check {
    const ID: &str = "network.address_pool";
    let Some(config) = f.config.loaded() else {
        return skip(ID, "no loaded config", NO_CONFIG_HINT);
    };
    let Some(networks) = &f.networks else {
        return skip(ID, "docker not reachable", "see docker.reachable");
    };
    let used: Vec<Ipv4Net> = networks
        .iter()
        .flat_map(|n| n.subnets.iter())
        .filter_map(|s| s.parse().ok())
        .collect();
    let mut pools: Vec<Ipv4Net> = config
        .runners
        .iter()
        .filter(|r| r.docker.isolation.mode == IsolationMode::Dind)
        .map(|r| r.docker.isolation.address_pool)
        .collect();
    pools.dedup();
    if pools.is_empty() {
        return skip(ID, "no dind runner: no job networks", "");
    }
    let need = config.concurrent as u64;
    let parts = pools
        .into_iter()
        .map(|pool| {
            let (free, total) = free_blocks(pool, &used);
            let message =
                format!("{pool}: {free} of {total} /28 job networks free, concurrent = {need}");
            if free < need {
                Check::with(
                    ID,
                    Status::Fail,
                    message,
                    "widen [runners.docker.isolation] address_pool (a /16 holds 4096 jobs) or \
                     remove the networks that overlap it (`docker network ls`, `runner cleanup`)",
                )
            } else {
                Check::ok(ID, message)
            }
        })
        .collect();
    combine(ID, parts)
}

fn netpolicy_rules(f: &Facts) -> Check {
    const ID: &str = "netpolicy.rules";
    let n = &f.netpolicy;
    if !n.needed {
        return skip(ID, "no dind runner: no egress rules to keep", "");
    }
    let installed = match &n.installed {
        Ok(i) => i,
        Err(e) => {
            return Check::with(
                ID,
                Status::Fail,
                format!("iptables cannot list rules: {e}"),
                "run the runner as root with iptables installed (the same backend Docker uses, \
                 iptables-nft on nf_tables hosts): without it no job's egress can be limited",
            );
        }
    };
    let bare: Vec<String> = n
        .running_jobs
        .iter()
        .filter(|(runner, job)| {
            !installed.iter().any(|r| {
                r.job_id == *job && (r.runner_id == *runner || runner.starts_with(&r.runner_id))
            })
        })
        .map(|(runner, job)| format!("job {job} of runner {runner}"))
        .collect();
    if !bare.is_empty() {
        return Check::with(
            ID,
            Status::Warn,
            format!("running without egress rules: {}", bare.join(", ")),
            "these jobs can reach the host and metadata addresses; check the runner's log for \
             netpolicy errors and see docs/network-policy.md",
        );
    }
    Check::ok(
        ID,
        format!(
            "iptables usable; {} job chain{} installed, every running job covered",
            installed.len(),
            if installed.len() == 1 { "" } else { "s" }
        ),
    )
}

fn gitlab_parts(f: &Facts, id: &'static str, each: impl Fn(&GitlabFact) -> Check) -> Check {
    if f.config.loaded().is_none() {
        return skip(id, "no loaded config", NO_CONFIG_HINT);
    }
    if f.gitlab.is_empty() {
        return skip(
            id,
            "no [[runners]] entry with a token",
            "register one with `runner register`",
        );
    }
    combine(id, f.gitlab.iter().map(each).collect())
}

fn gitlab_reachable(f: &Facts) -> Check {
    const ID: &str = "gitlab.reachable";
    gitlab_parts(f, ID, |g| match &g.probe {
        Ok(p) => Check::ok(ID, format!("{} answered HTTP {}", g.url, p.status)),
        Err(ProbeError { tls, message }) => Check::with(
            ID,
            Status::Fail,
            format!("{} did not answer: {message}", g.url),
            if *tls {
                "the TLS handshake failed: see gitlab.tls".to_string()
            } else {
                format!(
                    "check DNS, proxy and firewall from this host to {} (`curl -sI {}`)",
                    g.url.host_str().unwrap_or("?"),
                    g.url
                )
            },
        ),
    })
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(a)) => a.is_loopback(),
        Some(url::Host::Ipv6(a)) => a.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    }
}

fn gitlab_tls(f: &Facts) -> Check {
    const ID: &str = "gitlab.tls";
    gitlab_parts(f, ID, |g| {
        if g.url.scheme() != "https" {
            return if is_loopback(&g.url) {
                skip(
                    ID,
                    format!("{}: plain http to a loopback address", g.url),
                    "",
                )
            } else {
                Check::with(
                    ID,
                    Status::Warn,
                    format!(
                        "{}: plain http: the runner token and job secrets travel unencrypted",
                        g.url
                    ),
                    "use the https:// URL of GitLab in [[runners]] url",
                )
            };
        }
        match &g.probe {
            Ok(_) => Check::ok(ID, format!("{}: certificate valid", g.url)),
            Err(ProbeError { tls: true, message }) => Check::with(
                ID,
                Status::Fail,
                format!("{}: certificate not accepted: {message}", g.url),
                "renew or fix GitLab's certificate (expired, wrong name), or, for a private CA, \
                 set tls-ca-file = \"/etc/isolated-runner/gitlab-ca.pem\" in [[runners]]",
            ),
            Err(_) => skip(
                ID,
                format!("{}: not reached", g.url),
                "see gitlab.reachable",
            ),
        }
    })
}

fn gitlab_token(f: &Facts) -> Check {
    const ID: &str = "gitlab.token";
    gitlab_parts(f, ID, |g| match &g.token {
        TokenFact::Valid => Check::ok(ID, format!("runner {}: token valid", g.runner)),
        TokenFact::Refused { status, .. } => Check::with(
            ID,
            Status::Fail,
            format!("runner {}: GitLab refused the token ({status})", g.runner),
            format!(
                "the runner was deleted or its token revoked or rotated: register again \
                 (`runner register`) or put the new token in the config; `runner verify \
                 --delete --name {}` removes the dead entry",
                g.runner
            ),
        ),
        TokenFact::Error(e) => Check::with(
            ID,
            Status::Warn,
            format!("runner {}: could not verify the token: {e}", g.runner),
            "retry later; `runner verify` shows the same call",
        ),
        TokenFact::NotTried(why) => skip(
            ID,
            format!("runner {}: {why}", g.runner),
            "see gitlab.reachable",
        ),
    })
}

fn gitlab_clock_skew(f: &Facts) -> Check {
    const ID: &str = "gitlab.clock_skew";
    gitlab_parts(f, ID, |g| {
        let Ok(p) = &g.probe else {
            return skip(
                ID,
                format!("{}: not reached", g.url),
                "see gitlab.reachable",
            );
        };
        let Some(server) = p.server_date else {
            return skip(ID, format!("{}: no Date header", g.url), "");
        };
        let skew = match p.local_date.duration_since(server) {
            Ok(d) => d,
            Err(e) => e.duration(),
        };
        let ahead = p.local_date >= server;
        let message = format!(
            "{}: this host's clock is {}s {} GitLab's",
            g.url,
            skew.as_secs(),
            if ahead { "ahead of" } else { "behind" }
        );
        let hint = "synchronise the clock (`timedatectl set-ntp true`, chrony or systemd-timesyncd): \
                    job certificates, tokens and cache URLs are time-limited";
        if skew > Duration::from_secs(300) {
            Check::with(ID, Status::Fail, message, hint)
        } else if skew > Duration::from_secs(30) {
            Check::with(ID, Status::Warn, message, hint)
        } else {
            Check::ok(ID, message)
        }
    })
}

mod profiles;
use profiles::sidecar_profiles;

#[cfg(test)]
mod tests;
