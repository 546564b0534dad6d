//! Sidecar profiles: the container flags each one gives the sidecar, checked against what the
//! host offers, and never substituted by another (see `docs/sidecar-profiles.md`).

use super::Error;
use super::naming::other;
use super::rootless::UidBlock;
use crate::config::SidecarProfile;
use crate::docker::{ContainerSpec, Docker};

/// The seccomp profile of the `hardened` profile: Docker's permissive base with host-level
/// syscalls (modules, kexec, clock, swap, reboot, bpf, io_uring, …) refused. Found sufficient
/// for dockerd, overlay2, bridge/NAT, compose and BuildKit on cgroup v1 by the ladder in
/// `tests/images/ladder`. It also refuses every btrfs ioctl (type byte 0x94) with EPERM, for
/// the sidecar and everything it starts (seccomp filters are inherited and only ever added
/// to): with the root store a job's data root is a btrfs snapshot, and hardened holds
/// CAP_SYS_ADMIN in the host's user namespace, which is all `BTRFS_IOC_TREE_SEARCH` asks to
/// read the metadata of the whole store (other jobs' snapshots, the goldens) and the
/// subvolume ioctls ask to make or delete subvolumes. rootless gets the same filter: it holds
/// no host capability, but creating a subvolume or a snapshot of one it owns needs none.
const HARDENED_SECCOMP: &str = include_str!("seccomp-dind.json");

/// The container flags of a sidecar profile, checked against what the daemon offers. Never
/// substitutes another profile (a silent fallback would hand a job more privilege than the
/// admin chose, or less isolation than they believe they have).
pub async fn profile_flags(
    docker: &Docker,
    profile: SidecarProfile,
    rootless: Option<&UidBlock>,
    spec: &mut ContainerSpec,
) -> Result<(), Error> {
    spec.cgroupns_private = true;
    match profile {
        SidecarProfile::Rootless => {
            let Some(block) = rootless else {
                return Err(Error::Other {
                    context: "start a rootless sidecar".to_string(),
                    detail: "no host uid block was allocated for it".to_string(),
                });
            };
            // Not privileged, nothing beyond Docker's default capabilities, and of those only
            // what the entrypoint's root prelude needs (hand /dev/net/tun, the data root and
            // the certificates to the daemon's uid, then drop to it): CHOWN, SETUID/SETGID
            // (the drop, and the bounding set the file-capability newuidmap/newgidmap need),
            // SETPCAP (shrinking the bounding set). After the drop no process of the sidecar
            // holds a capability in the host's user namespace. The tun device backs
            // slirp4netns; /proc and /sys are unmasked because the daemon mounts its own proc
            // and sysfs in its namespaces (its user namespace gives it no power over the host's
            // files there); seccomp as for hardened; AppArmor unconfined (mounts in the
            // daemon's namespaces), a no-op elsewhere.
            spec.cap_drop = vec!["ALL".to_string()];
            spec.cap_add = ["CHOWN", "SETUID", "SETGID", "SETPCAP"]
                .map(String::from)
                .to_vec();
            spec.devices = vec!["/dev/net/tun".to_string()];
            spec.unmask_system_paths = true;
            spec.security_opt = vec![
                format!("seccomp={HARDENED_SECCOMP}"),
                "apparmor=unconfined".to_string(),
            ];
            spec.env.extend(block.env());
            spec.env.push(format!("IR_ROOTLESS_MTU={ROOTLESS_MTU}"));
            // The entrypoint waits until the runner has remounted the sidecar's /sys
            // read-write (`rootless::open_sidecar_sysfs`, right after the start), then runs
            // inner containers with crun.
            if super::rootless::can_open_sysfs() {
                spec.env.push("IR_ROOTLESS_SYSFS=rw".to_string());
            }
            // Published ports of the inner daemon are bound in the sidecar's network namespace
            // by the (unprivileged) port driver: let it bind ports below 1024 there.
            spec.sysctls.insert(
                "net.ipv4.ip_unprivileged_port_start".to_string(),
                "0".to_string(),
            );
        }
        SidecarProfile::Hardened => {
            // Not privileged: default capabilities + SYS_ADMIN (mounts: overlay, cgroup remount)
            // + NET_ADMIN (bridge, iptables); seccomp refuses host-level syscalls; Docker's
            // masked and read-only /proc and /sys paths stay (the image's entrypoint re-opens
            // only /proc/sys/net, which dockerd needs for its containers' interfaces); no host
            // devices. AppArmor must be unconfined on AppArmor hosts (mounts), a no-op elsewhere.
            spec.cap_add = vec!["SYS_ADMIN".to_string(), "NET_ADMIN".to_string()];
            spec.security_opt = vec![
                format!("seccomp={HARDENED_SECCOMP}"),
                "apparmor=unconfined".to_string(),
            ];
        }
        SidecarProfile::Privileged => {
            spec.privileged = true;
        }
        SidecarProfile::Sysbox => {
            let runtimes = docker
                .runtimes()
                .await
                .map_err(other("list the daemon's runtimes"))?;
            if !runtimes.iter().any(|r| r == "sysbox-runc") {
                return Err(Error::ProfileUnavailable {
                    profile: "sysbox".to_string(),
                    detail: format!(
                        "the host daemon has no sysbox-runc runtime (it has: {}); install Sysbox \
                         (nestybox/sysbox, package sysbox-ce) and restart dockerd, or choose \
                         sidecar_profile = \"hardened\" explicitly",
                        runtimes.join(", ")
                    ),
                });
            }
            spec.runtime = Some("sysbox-runc".to_string());
        }
    }
    Ok(())
}

/// The MTU of a rootless sidecar's user-mode network (its tap device) and of the inner
/// daemon's networks. slirp4netns ends every TCP connection of the inner daemon's namespace in
/// user space and opens its own socket in the sidecar's namespace, so no frame of this size
/// reaches a wire; what it sets is how many bytes each trip through the user-mode stack moves.
/// Measured through the real backend (docs/benchmarks.md, "Rootless network path"): 300 MB into
/// an inner container took 7–13 s at 1500 and 0.7–1.1 s at 65520 on the same loaded host.
/// dockerd-rootless.sh picks 65520 only when it chooses the driver itself; the entrypoint names
/// the driver, so the runner passes the MTU (`IR_ROOTLESS_MTU`).
pub const ROOTLESS_MTU: u32 = 65520;

/// The MTU of the inner daemon's networks: the job network's (`outer`) for the profiles whose
/// inner traffic is routed onto it, the user-mode network's for `rootless` (inner containers'
/// TCP segments are sized from their own interface, and slirp4netns/pasta then move them in
/// pieces that small).
pub fn inner_mtu(profile: SidecarProfile, outer: Option<u32>) -> Option<u32> {
    match profile {
        SidecarProfile::Rootless => Some(ROOTLESS_MTU),
        _ => outer,
    }
}

/// The name used in config and reports.
pub fn profile_name(p: SidecarProfile) -> &'static str {
    match p {
        SidecarProfile::Rootless => "rootless",
        SidecarProfile::Hardened => "hardened",
        SidecarProfile::Privileged => "privileged",
        SidecarProfile::Sysbox => "sysbox",
    }
}

/// A sidecar that cannot start because the host refuses the profile's privileges is a
/// `ProfileUnavailable` (with what to do), not a generic error: the admin must choose.
pub(super) fn start_error(profile: SidecarProfile, e: crate::docker::Error) -> Error {
    let msg = e.daemon_message().unwrap_or_default().to_string();
    if profile == SidecarProfile::Rootless && msg.contains("/dev/net/tun") {
        return Error::ProfileUnavailable {
            profile: profile_name(profile).to_string(),
            detail: format!(
                "the host has no usable /dev/net/tun for the sidecar's user-mode network \
                 ({msg}); load the tun module (`modprobe tun`) or choose another \
                 sidecar_profile explicitly (`runner doctor` says which work)"
            ),
        };
    }
    let refused = msg.contains("unable to apply caps")
        || msg.contains("operation not permitted")
        || msg.contains("unknown or invalid runtime");
    if refused {
        return Error::ProfileUnavailable {
            profile: profile_name(profile).to_string(),
            detail: format!(
                "the host daemon could not start the sidecar with this profile's privileges \
                 ({msg}); the daemon itself probably runs with a reduced capability set. \
                 Choose another sidecar_profile explicitly"
            ),
        };
    }
    other("start the sidecar")(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rootless_inner_networks_take_the_user_mode_mtu() {
        assert_eq!(
            inner_mtu(SidecarProfile::Rootless, Some(1500)),
            Some(ROOTLESS_MTU)
        );
        assert_eq!(
            inner_mtu(SidecarProfile::Rootless, None),
            Some(ROOTLESS_MTU)
        );
        for p in [
            SidecarProfile::Hardened,
            SidecarProfile::Privileged,
            SidecarProfile::Sysbox,
        ] {
            assert_eq!(inner_mtu(p, Some(1400)), Some(1400));
            assert_eq!(inner_mtu(p, None), None);
        }
    }

    #[test]
    fn seccomp_profile_is_json() {
        let v: serde_json::Value = serde_json::from_str(HARDENED_SECCOMP).unwrap();
        assert_eq!(v["defaultAction"], "SCMP_ACT_ALLOW");
    }

    /// The btrfs block: ioctls of type 0x94 refused with EPERM, and nothing that would make
    /// libseccomp drop it (an unconditional allow of `ioctl` beside it wins silently, measured
    /// with libseccomp 2.5.4: docs/sidecar-profiles.md).
    #[test]
    fn seccomp_profile_refuses_btrfs_ioctls() {
        let v: serde_json::Value = serde_json::from_str(HARDENED_SECCOMP).unwrap();
        let rules = v["syscalls"].as_array().unwrap();
        let on_ioctl: Vec<&serde_json::Value> = rules
            .iter()
            .filter(|r| r["names"].as_array().unwrap().iter().any(|n| n == "ioctl"))
            .collect();
        assert_eq!(on_ioctl.len(), 1, "{on_ioctl:?}");
        let rule = on_ioctl[0];
        assert_eq!(rule["action"], "SCMP_ACT_ERRNO");
        assert_eq!(rule["errnoRet"], 1, "EPERM");
        let args = rule["args"].as_array().unwrap();
        assert_eq!(args.len(), 1);
        // Docker's MASKED_EQ: `value` is the mask, `valueTwo` the value after masking.
        assert_eq!(args[0]["index"], 1);
        assert_eq!(args[0]["op"], "SCMP_CMP_MASKED_EQ");
        assert_eq!(args[0]["value"], 0xff00);
        assert_eq!(args[0]["valueTwo"], 0x9400);
        // BTRFS_IOC_TREE_SEARCH = _IOWR(0x94, 17, 4096 bytes) is caught; TCGETS is not.
        let caught = |cmd: u64| cmd & 0xff00 == 0x9400;
        assert!(caught(0xD000_9411));
        assert!(!caught(0x5401));
    }
}
