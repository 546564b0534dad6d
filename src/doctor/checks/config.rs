//! Checks of the config file: it loads, only root can read or change it, its volumes keep
//! the host safe.

use super::*;

pub(super) fn config_loads(f: &Facts) -> Check {
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

pub(super) fn config_permissions(f: &Facts) -> Check {
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

pub(super) fn config_volumes(f: &Facts) -> Check {
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

pub(super) fn privileged_configured(f: &Facts) -> bool {
    f.config.loaded().is_some_and(|c| {
        c.runners.iter().any(|r| {
            r.docker.isolation.mode == IsolationMode::Dind
                && r.docker.isolation.sidecar_profile == SidecarProfile::Privileged
        })
    })
}
