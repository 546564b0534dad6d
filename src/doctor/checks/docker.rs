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

/// Whether a profile can run: `Ok(note)` or `Err((why, what to do))`.
type ProfileVerdict = Result<String, (String, String)>;

/// Whether a profile can run here, from static facts.
pub(super) fn static_profile(f: &Facts, p: SidecarProfile) -> ProfileVerdict {
    let has = |cap: u32| f.host.cap_bnd.is_none_or(|b| b & (1u64 << cap) != 0);
    let runtimes = f
        .docker
        .as_ref()
        .map(|e| e.runtimes.clone())
        .unwrap_or_default();
    match p {
        SidecarProfile::Sysbox => {
            if runtimes.iter().any(|r| r == "sysbox-runc") {
                Ok("sysbox-runc runtime present".into())
            } else {
                Err((
                    "no sysbox-runc runtime".into(),
                    "install Sysbox (package sysbox-ce) and restart dockerd to use sidecar_profile = \"sysbox\"".into(),
                ))
            }
        }
        SidecarProfile::Hardened => {
            if has(caps::SYS_ADMIN) && has(caps::NET_ADMIN) {
                Ok("SYS_ADMIN and NET_ADMIN available".into())
            } else {
                Err((
                    "SYS_ADMIN or NET_ADMIN missing from the bounding set".into(),
                    "the host (or the container the runner runs in) must keep CAP_SYS_ADMIN and CAP_NET_ADMIN".into(),
                ))
            }
        }
        SidecarProfile::Privileged => {
            if has(caps::SYS_RESOURCE) {
                Ok("full capability set available".into())
            } else {
                Err((
                    "likely refused: CAP_SYS_RESOURCE is missing from the bounding set, so runc \
                     cannot apply --privileged (\"unable to apply caps\")"
                        .into(),
                    "use sidecar_profile = \"hardened\"; see docs/platform-notes.md".into(),
                ))
            }
        }
    }
}

pub(super) fn profile_name(p: SidecarProfile) -> &'static str {
    crate::isolation::dind::profile_name(p)
}

pub(super) fn sidecar_profiles(f: &Facts) -> Check {
    const ID: &str = "sidecar.profiles";
    if f.docker.is_err() {
        return skip(ID, "docker not reachable", "see docker.reachable");
    }
    let all = [
        SidecarProfile::Hardened,
        SidecarProfile::Sysbox,
        SidecarProfile::Privileged,
    ];
    let verdict = |p: SidecarProfile| -> ProfileVerdict {
        match &f.deep {
            Some(results) => match results.iter().find(|r: &&DeepResult| r.profile == p) {
                Some(DeepResult { result: Ok(d), .. }) => {
                    Ok(format!("ready over mTLS in {:.1}s", d.as_secs_f64()))
                }
                Some(DeepResult { result: Err(e), .. }) => Err((
                    format!("did not start: {e}"),
                    static_profile(f, p)
                        .err()
                        .map(|s| s.1)
                        .unwrap_or_else(|| "read the error above; docs/sidecar-profiles.md maps errors to missing pieces".into()),
                )),
                None => static_profile(f, p),
            },
            None => static_profile(f, p),
        }
    };
    let verdicts: Vec<(SidecarProfile, ProfileVerdict)> =
        all.iter().map(|p| (*p, verdict(*p))).collect();
    let summary = verdicts
        .iter()
        .map(|(p, v)| match v {
            Ok(note) => format!("{}: yes ({note})", profile_name(*p)),
            Err((why, _)) => format!("{}: no ({why})", profile_name(*p)),
        })
        .collect::<Vec<_>>()
        .join("; ");
    let mode = if f.deep.is_some() {
        "started"
    } else {
        "static"
    };
    let configured: Vec<SidecarProfile> = f
        .config
        .loaded()
        .map(|c| {
            c.runners
                .iter()
                .filter(|r| r.docker.isolation.mode == IsolationMode::Dind)
                .map(|r| r.docker.isolation.sidecar_profile)
                .collect()
        })
        .unwrap_or_default();
    let broken: Vec<&(SidecarProfile, ProfileVerdict)> = verdicts
        .iter()
        .filter(|(p, v)| configured.contains(p) && v.is_err())
        .collect();
    if let Some((p, Err((_, hint)))) = broken.first() {
        return Check::with(
            ID,
            Status::Fail,
            format!(
                "configured profile {} cannot run here ({mode}): {summary}",
                profile_name(*p)
            ),
            format!(
                "{hint}; or choose a profile marked yes as sidecar_profile in \
                 [runners.docker.isolation] (never a silent fallback)"
            ),
        );
    }
    if configured.is_empty() && verdicts.iter().all(|(_, v)| v.is_err()) {
        return Check::with(
            ID,
            Status::Fail,
            format!("no sidecar profile can run here ({mode}): {summary}"),
            "see docs/sidecar-profiles.md and run `runner doctor --deep` for the exact errors",
        );
    }
    Check::ok(ID, format!("{summary} ({mode})"))
}
