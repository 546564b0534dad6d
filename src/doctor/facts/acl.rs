//! Whether each rootless runner's `builds_dir` takes POSIX ACLs: the rootless profile opens
//! every job directory to its sidecar's uid with an ACL (`isolation::rootless::grant_dir`), so
//! a file system without them fails every job at its start.
//!
//! The probe is the jobs' own code on a directory of the probe's own: a fresh, empty directory
//! made in `builds_dir` (which the runner owns; jobs only ever write below their own job
//! directories) through its handle, given the ACL by `grant_dir`, and removed at once. This is
//! the one thing `runner doctor` writes.

use crate::config::{Config, IsolationMode, SidecarProfile};
use nix::errno::Errno;
use nix::sys::stat::Mode;
use nix::unistd::UnlinkatFlags;
use std::path::{Path, PathBuf};

/// One `builds_dir` of a runner whose sidecars are rootless.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclFact {
    /// The configured directory.
    pub builds_dir: PathBuf,
    /// What the probe found.
    pub probe: AclProbe,
}

/// The outcome of giving a probe directory the rootless ACL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AclProbe {
    /// The ACL was set.
    Supported,
    /// The file system refused ACLs (`EOPNOTSUPP` and kin): the text says which error.
    Unsupported(String),
    /// `builds_dir` does not exist yet (the runner makes it at the first job).
    Missing,
    /// Something else went wrong (permissions, a symlinked builds_dir…).
    Failed(String),
}

/// The distinct `builds_dir`s of rootless dind runners, each probed.
pub(in crate::doctor) async fn gather_acl(config: &Config) -> Vec<AclFact> {
    let mut wanted: Vec<(PathBuf, u32)> = Vec::new();
    for r in &config.runners {
        let iso = &r.docker.isolation;
        if iso.mode == IsolationMode::Dind
            && iso.sidecar_profile == SidecarProfile::Rootless
            && !wanted.iter().any(|(p, _)| *p == r.builds_dir)
        {
            wanted.push((r.builds_dir.clone(), iso.rootless_uid_base));
        }
    }
    tokio::task::spawn_blocking(move || {
        wanted
            .into_iter()
            .map(|(builds_dir, uid)| AclFact {
                probe: probe(&builds_dir, uid),
                builds_dir,
            })
            .collect()
    })
    .await
    .unwrap_or_default()
}

/// Makes `<dir>/.ir-doctor-acl-<pid>-<nanos>`, grants `uid` on it as a job directory would
/// be, removes it. Blocking.
pub fn probe(dir: &Path, uid: u32) -> AclProbe {
    if let Err(e) = std::fs::symlink_metadata(dir)
        && e.kind() == std::io::ErrorKind::NotFound
    {
        return AclProbe::Missing;
    }
    let parent = match crate::paths::Dir::open_trusted(dir) {
        Ok(d) => d,
        Err(e) => return AclProbe::Failed(e.to_string()),
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let name = format!(".ir-doctor-acl-{}-{nanos}", std::process::id());
    if let Err(e) =
        nix::sys::stat::mkdirat(parent.fd(), name.as_str(), Mode::from_bits_truncate(0o700))
    {
        return AclProbe::Failed(format!(
            "create a probe directory in {}: {e}",
            dir.display()
        ));
    }
    let result = crate::isolation::rootless::grant_dir(&dir.join(&name), uid);
    let removed = nix::unistd::unlinkat(parent.fd(), name.as_str(), UnlinkatFlags::RemoveDir);
    match (result, removed) {
        (Ok(()), Ok(())) => AclProbe::Supported,
        (Ok(()), Err(e)) => AclProbe::Failed(format!(
            "remove the probe directory {}: {e}",
            dir.join(&name).display()
        )),
        (Err(e), _) => {
            let text = e.to_string();
            let unsupported = [Errno::EOPNOTSUPP, Errno::ENOTSUP, Errno::ENOSYS]
                .iter()
                .any(|n| text.contains(n.desc()) || text.contains(&format!("{n:?}")));
            if unsupported {
                AclProbe::Unsupported(text)
            } else {
                AclProbe::Failed(text)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_leaves_nothing_and_reports_missing_dirs() {
        let t = tempfile::tempdir().unwrap();
        let p = probe(t.path(), 123_456_789);
        // The test's file system may or may not take ACLs; either way it is said, not failed.
        assert!(
            matches!(p, AclProbe::Supported | AclProbe::Unsupported(_)),
            "{p:?}"
        );
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 0);
        assert_eq!(probe(&t.path().join("absent"), 1), AclProbe::Missing);
    }
}
