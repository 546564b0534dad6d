//! The company registry's CA for each job's own daemon (`[runners.docker.isolation]
//! registry_ca_files`): written by the runner into the sidecar, before it starts, as
//! `/etc/docker/certs.d/<host[:port]>/ca.crt`, where dockerd looks for a registry's CA on
//! every pull, push and login. So `docker login $CI_REGISTRY` and pulls from a registry with a
//! private CA work in the job, and only the admin chooses what is trusted: the files come from
//! the runner's config, the job cannot add or change them (its daemon's `/etc` is not the
//! job's, and a job-side `certs.d` of a container it starts is that container's, not dockerd's).
//!
//! The host daemon's own pulls (job, service and helper images) use the host's
//! `/etc/docker/certs.d`, as the engine always does; nothing here touches it.

use super::Error;
use crate::docker::Docker;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Where the archive is extracted in the sidecar.
pub const EXTRACT_AT: &str = "/etc";

/// The tar archive (`docker/certs.d/<host>/ca.crt`, directories 0755, files 0644) for
/// `files`; `None` when there is nothing to install. Each file is read now.
pub fn archive(files: &BTreeMap<String, PathBuf>) -> Result<Option<Vec<u8>>, String> {
    if files.is_empty() {
        return Ok(None);
    }
    let mut b = tar::Builder::new(Vec::new());
    let dir = |b: &mut tar::Builder<Vec<u8>>, path: &str| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        b.append_data(&mut h, path, std::io::empty())
    };
    let io = |e: std::io::Error| format!("build the registry CA archive: {e}");
    dir(&mut b, "docker/").map_err(io)?;
    dir(&mut b, "docker/certs.d/").map_err(io)?;
    for (host, file) in files {
        // Hosts were checked by the config loader (no `/`, no `..`): one directory level.
        let pem = std::fs::read(file)
            .map_err(|e| format!("read registry_ca_files {host:?} = {}: {e}", file.display()))?;
        dir(&mut b, &format!("docker/certs.d/{host}/")).map_err(io)?;
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(pem.len() as u64);
        b.append_data(
            &mut h,
            format!("docker/certs.d/{host}/ca.crt"),
            pem.as_slice(),
        )
        .map_err(io)?;
    }
    b.into_inner().map(Some).map_err(io)
}

/// Installs `files` into the created (not yet started) sidecar `id`.
pub async fn install(
    docker: &Docker,
    id: &str,
    files: &BTreeMap<String, PathBuf>,
) -> Result<(), Error> {
    let fail = |detail: String| Error::Other {
        context: "give the job's daemon the registry CAs".to_string(),
        detail,
    };
    let Some(tar) = archive(files).map_err(fail)? else {
        return Ok(());
    };
    docker
        .put_archive(id, EXTRACT_AT, tar)
        .await
        .map_err(|e| fail(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_ca_per_registry_under_certs_d() {
        assert_eq!(archive(&BTreeMap::new()), Ok(None));
        let d = tempfile::tempdir().expect("tempdir");
        let ca = d.path().join("corp.crt");
        std::fs::write(&ca, b"-----BEGIN CERTIFICATE-----\nx\n").expect("write");
        let files = BTreeMap::from([
            ("registry.corp:5000".to_string(), ca.clone()),
            ("10.0.0.5".to_string(), ca),
        ]);
        let tar = archive(&files).expect("archive").expect("some");
        let mut a = tar::Archive::new(tar.as_slice());
        let mut got: Vec<(String, u32)> = a
            .entries()
            .expect("entries")
            .map(|e| {
                let e = e.expect("entry");
                (
                    e.path().expect("path").to_string_lossy().into_owned(),
                    e.header().mode().expect("mode"),
                )
            })
            .collect();
        got.sort();
        assert!(got.contains(&("docker/certs.d/registry.corp:5000/ca.crt".into(), 0o644)));
        assert!(got.contains(&("docker/certs.d/10.0.0.5/ca.crt".into(), 0o644)));
        assert!(got.iter().all(|(p, _)| p.starts_with("docker/")));
        let missing = BTreeMap::from([("r".to_string(), d.path().join("nope"))]);
        assert!(
            archive(&missing)
                .expect_err("missing")
                .contains("registry_ca_files")
        );
    }
}
