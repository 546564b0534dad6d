//! `sidecar.profiles`: which sidecar profiles can run on this host, and why the others cannot
//! (static facts, or the outcome of `runner doctor --deep`'s real starts).

use super::*;

/// Whether a profile can run: `Ok(note)` or `Err((why, what to do))`.
type ProfileVerdict = Result<String, (String, String)>;

/// Whether a profile can run here, from static facts.
fn static_profile(f: &Facts, p: SidecarProfile) -> ProfileVerdict {
    let has = |cap: u32| f.host.cap_bnd.is_none_or(|b| b & (1u64 << cap) != 0);
    let runtimes = f
        .docker
        .as_ref()
        .map(|e| e.runtimes.clone())
        .unwrap_or_default();
    match p {
        SidecarProfile::Rootless => rootless_profile(f, has),
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

/// What the rootless profile needs from the host: unprivileged user namespaces, a tun device
/// for its user-mode network, and Docker's default capabilities for the entrypoint's prelude.
fn rootless_profile(f: &Facts, has: impl Fn(u32) -> bool) -> ProfileVerdict {
    let h = &f.host;
    if h.max_user_namespaces == Some(0) {
        return Err((
            "user namespaces are disabled (user.max_user_namespaces = 0)".into(),
            "set user.max_user_namespaces (e.g. 15000) in /etc/sysctl.d and apply it".into(),
        ));
    }
    if h.unprivileged_userns_clone == Some(0) {
        return Err((
            "unprivileged user namespaces are disabled (kernel.unprivileged_userns_clone = 0)"
                .into(),
            "set kernel.unprivileged_userns_clone = 1 in /etc/sysctl.d and apply it".into(),
        ));
    }
    if h.apparmor_restrict_userns == Some(1) {
        return Err((
            "AppArmor restricts unprivileged user namespaces \
             (kernel.apparmor_restrict_unprivileged_userns = 1)"
                .into(),
            "set kernel.apparmor_restrict_unprivileged_userns = 0 (see docs/platform-notes.md)"
                .into(),
        ));
    }
    if !h.tun_device {
        return Err((
            "no /dev/net/tun character device (the sidecar's user-mode network needs it)".into(),
            "load the tun module (`modprobe tun`, and list it in /etc/modules)".into(),
        ));
    }
    let needed = [
        (caps::CHOWN, "CHOWN"),
        (caps::SETUID, "SETUID"),
        (caps::SETGID, "SETGID"),
        (caps::SETPCAP, "SETPCAP"),
    ];
    if let Some((_, name)) = needed.iter().find(|(c, _)| !has(*c)) {
        return Err((
            format!(
                "CAP_{name} is missing from the bounding set (the entrypoint's prelude needs it)"
            ),
            "run the runner and the host daemon with Docker's default capabilities".into(),
        ));
    }
    if h.opens_sysfs {
        Ok("unprivileged user namespaces and /dev/net/tun available; inner runtime crun".into())
    } else {
        Ok(
            "unprivileged user namespaces and /dev/net/tun available; inner runtime runc: this \
            process is not root with CAP_SYS_ADMIN, so sidecars keep Docker's read-only /sys \
            (inner containers start slower, inner --privileged is refused; run the runner as \
            root, docs/sidecar-profiles.md \"Inner runtime\")"
                .into(),
        )
    }
}

fn profile_name(p: SidecarProfile) -> &'static str {
    crate::isolation::dind::profile_name(p)
}

pub(super) fn sidecar_profiles(f: &Facts) -> Check {
    const ID: &str = "sidecar.profiles";
    if f.docker.is_err() {
        return skip(ID, "docker not reachable", "see docker.reachable");
    }
    let all = [
        SidecarProfile::Rootless,
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
