//! `sidecar.acl`: the builds_dir of every rootless runner takes POSIX ACLs (each job directory
//! is opened to its sidecar's uid with one; without them every job fails at its start).

use super::*;
use crate::doctor::facts::AclProbe;

/// One line per rootless `builds_dir`; the worst decides.
pub(super) fn rootless_acl(f: &Facts) -> Check {
    const ID: &str = "sidecar.acl";
    if f.config.loaded().is_none() {
        return skip(ID, "no config loaded", NO_CONFIG_HINT);
    }
    if f.acl.is_empty() {
        return skip(ID, "no runner uses the rootless sidecar profile", "");
    }
    let parts = f
        .acl
        .iter()
        .map(|a| {
            let dir = a.builds_dir.display();
            match &a.probe {
                AclProbe::Supported => Check::ok(ID, format!("{dir} takes POSIX ACLs")),
                AclProbe::Unsupported(e) => Check::with(
                    ID,
                    Status::Fail,
                    format!("{dir} does not take POSIX ACLs ({e}): every rootless job will fail to start"),
                    "put builds_dir on a file system with POSIX ACLs (ext4, xfs, btrfs and tmpfs have \
                     them; on ext4 check the mount has no `noacl`), or choose another \
                     sidecar_profile explicitly (docs/sidecar-profiles.md)"
                        .to_string(),
                ),
                AclProbe::Missing => Check::with(
                    ID,
                    Status::Warn,
                    format!("{dir} does not exist yet, so its ACL support is unknown"),
                    format!("create it (mkdir -p {dir}) and run runner doctor again"),
                ),
                AclProbe::Failed(e) => Check::with(
                    ID,
                    Status::Warn,
                    format!("could not probe {dir} for POSIX ACLs: {e}"),
                    "run runner doctor as the user the runner runs as (root)".to_string(),
                ),
            }
        })
        .collect();
    combine(ID, parts)
}
