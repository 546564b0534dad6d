//! Checks of the host: cgroups, kernel, free disk, leftovers of dead runners.

use super::*;

pub(super) fn host_cgroup(f: &Facts) -> Check {
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
                "cgroup v1{}{driver}: sidecar limits work (memory, CPU, pids) and so do inner \
                 container limits of root inner daemons (hardened, sysbox, privileged), but \
                 inner --privileged cannot get devices and limits are not delegated",
                if *hybrid { " (hybrid)" } else { "" }
            );
            let mut warnings: Vec<(String, &str)> = Vec::new();
            if privileged_configured(f) {
                warnings.push((
                    "a privileged sidecar can use the v1 release_agent to run commands on the host"
                        .to_string(),
                    "use sidecar_profile = \"hardened\" (or sysbox), or move to a cgroup v2 host \
                     (systemd.unified_cgroup_hierarchy=1 on the kernel command line)",
                ));
            }
            let rootless = rootless_runners(f);
            if !rootless.is_empty() {
                warnings.push((
                    format!(
                        "inner containers get no per-container limits on rootless sidecars ({}): \
                         their dockerd runs without cgroups here, so `docker run --memory/--cpus/\
                         --pids-limit` in a job are accepted and ignored (the job's trace says \
                         so once); the sidecar's own limits still bound the job's daemon and \
                         everything it runs",
                        rootless.join(", ")
                    ),
                    "size the sidecar's limits (sidecar_memory, sidecar_cpus, \
                     sidecar_pids_limit) for the whole job; for per-container limits inside jobs \
                     use sidecar_profile = \"hardened\" (not a security boundary) or sysbox \
                     (docs/sidecar-profiles.md, \"Limits\": a cgroup v2 host alone is not \
                     expected to help, the sidecar runs no systemd)",
                ));
            }
            if warnings.is_empty() {
                return Check::ok(ID, message);
            }
            let (notes, hints): (Vec<String>, Vec<&str>) = warnings.into_iter().unzip();
            Check::with(
                ID,
                Status::Warn,
                format!("{message}; {}", notes.join("; ")),
                hints.join("\n"),
            )
        }
        Cgroup::Unknown(why) => Check::with(
            ID,
            Status::Warn,
            format!("cannot tell the cgroup version ({why})"),
            "check `stat -fc %T /sys/fs/cgroup` (cgroup2fs = v2, tmpfs = v1) and `docker info`",
        ),
    }
}

/// Names of the configured dind runners with the rootless sidecar profile.
fn rootless_runners(f: &Facts) -> Vec<String> {
    f.config
        .loaded()
        .map(|c| {
            c.runners
                .iter()
                .filter(|r| {
                    r.docker.isolation.mode == IsolationMode::Dind
                        && r.docker.isolation.sidecar_profile == SidecarProfile::Rootless
                })
                .map(|r| r.name.clone())
                .collect()
        })
        .unwrap_or_default()
}

pub(super) fn host_kernel(f: &Facts) -> Check {
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

pub(super) const GIB: u64 = 1024 * 1024 * 1024;

pub(super) fn disk(f: &Facts, id: &'static str) -> Check {
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

pub(super) fn leftovers(f: &Facts) -> Check {
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
