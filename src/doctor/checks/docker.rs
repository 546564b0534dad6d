//! Checks of the Docker engine: reachable, its API and component versions (known advisories),
//! the test/job images, the sidecar profiles this host can run.

use super::*;

pub(super) fn docker_reachable(f: &Facts) -> Check {
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
pub(super) fn api_tuple(v: &str) -> Option<(u64, u64)> {
    let (a, b) = v.trim().split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

pub(super) fn docker_api_version(f: &Facts) -> Check {
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

pub(super) fn advisories_text(list: &[&Advisory]) -> String {
    list.iter()
        .map(|a| format!("{} ({}; fixed in {})", a.ids, a.what, a.fixed_in()))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The lowest fixed version that none of `list` affects.
pub(super) fn first_fixed(list: &[&Advisory]) -> Option<versions::Version> {
    list.iter()
        .flat_map(|a| a.fixed.iter())
        .filter_map(|v| versions::parse(v))
        .filter(|v| !list.iter().any(|a| a.affects(v)))
        .min()
}

pub(super) fn docker_component(
    f: &Facts,
    id: &'static str,
    name: &str,
    table: &'static [Advisory],
) -> Check {
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

pub(super) fn images_present(f: &Facts) -> Check {
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
    // The sidecar and preloaded images are the admin's: the runner never pulls them, so a
    // missing one fails every job. Job and helper images are pulled at the first job that
    // needs them (pull_policy, docs/images.md): missing is normal, unless nothing may pull.
    let mut missing = Vec::new();
    let mut pulled_later = Vec::new();
    let mut errors = Vec::new();
    for i in &f.images {
        match &i.present {
            Ok(true) => {}
            Ok(false) if matches!(i.role, "job" | "helper") => {
                pulled_later.push(format!("{} {}", i.role, i.image))
            }
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
             IMAGE` from a registry you trust): the runner never pulls sidecar or preloaded \
             images itself",
        );
    }
    if !pulled_later.is_empty() {
        return Check::with(
            ID,
            Status::Warn,
            format!(
                "not on the host daemon yet: {} (pulled by the first job that uses them)",
                pulled_later.join(", ")
            ),
            "nothing to do if the host can reach their registry; with pull_policy = \"never\" or \
             an unreachable registry, load them first (`docker load -i FILE`); see docs/images.md",
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
