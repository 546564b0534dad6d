//! The private CA of the GitLab server, passed on to the job as gitlab-runner does: the config's
//! `tls-ca-file`, else `/etc/gitlab-runner/certs/<host>.crt` (gitlab-runner's convention, `host`
//! without the port), becomes the file variable `CI_SERVER_TLS_CA_FILE` (written into the job's
//! tmp dir through its handle, like every file variable), and the clone trusts it through git's
//! `http.<origin>.sslCAInfo`, given in the helper's environment.

use super::sources;
use crate::config::RunnerConfig;
use crate::gitlab::types::{JobResponse, JobVariable};
use std::path::{Path, PathBuf};

/// gitlab-runner's certificate directory for a runner running as root.
pub const CERTS_DIR: &str = "/etc/gitlab-runner/certs";

/// Largest CA bundle read (a bundle of a few hundred certificates).
const MAX_CA_BUNDLE: u64 = 4 << 20;

/// The variable gitlab-runner gives the job.
pub const CA_VARIABLE: &str = "CI_SERVER_TLS_CA_FILE";

/// Which CA file applies: `tls-ca-file`, else `<certs_dir>/<host>.crt` when it exists.
pub fn ca_file(runner: &RunnerConfig, certs_dir: &Path) -> Option<PathBuf> {
    if let Some(f) = &runner.tls_ca_file {
        return Some(f.clone());
    }
    let host = runner.url.host_str()?;
    let candidate = certs_dir.join(format!("{host}.crt"));
    candidate.is_file().then_some(candidate)
}

/// The `CI_SERVER_TLS_CA_FILE` file variable for the job (the PEM text), or a warning when the
/// configured file cannot be read. The file is the runner's own (config), read on the host.
pub async fn variable(
    runner: &RunnerConfig,
    certs_dir: &Path,
) -> Result<Option<JobVariable>, String> {
    let Some(path) = ca_file(runner, certs_dir) else {
        return Ok(None);
    };
    let shown = path.display().to_string();
    let pem = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let f = std::fs::File::open(&path)?;
        let mut s = String::new();
        f.take(MAX_CA_BUNDLE).read_to_string(&mut s)?;
        Ok::<_, std::io::Error>(s)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("reading the GitLab CA {shown} for the job: {e}"))?;
    if !pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!("the GitLab CA {shown} holds no PEM certificate"));
    }
    Ok(Some(JobVariable {
        key: CA_VARIABLE.into(),
        value: pem,
        file: true,
        public: true,
        ..Default::default()
    }))
}

/// Adds `http.<origin>.sslCAInfo = ca_path` to the helper's git environment (after the entries
/// already there), scoped to the clone's origin like the credential header.
pub fn add_git_ca(env: &mut Vec<(String, String)>, job: &JobResponse, ca_path: &str) {
    let remote = sources::split_remote(job.git_info.repo_url.expose());
    let Some(origin) = remote.origin else {
        return;
    };
    let n = env
        .iter()
        .find(|(k, _)| k == "GIT_CONFIG_COUNT")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    env.retain(|(k, _)| k != "GIT_CONFIG_COUNT");
    env.push(("GIT_CONFIG_COUNT".into(), (n + 1).to_string()));
    env.push((
        format!("GIT_CONFIG_KEY_{n}"),
        format!("http.{origin}.sslCAInfo"),
    ));
    env.push((format!("GIT_CONFIG_VALUE_{n}"), ca_path.to_string()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    #[test]
    fn ca_file_choice() {
        let certs = tempfile::tempdir().expect("tempdir");
        let mut r = RunnerConfig {
            url: "https://gitlab.example.test:8443/".parse().expect("url"),
            ..Default::default()
        };
        assert_eq!(ca_file(&r, certs.path()), None);
        let host_crt = certs.path().join("gitlab.example.test.crt");
        std::fs::write(&host_crt, "x").expect("write");
        assert_eq!(ca_file(&r, certs.path()), Some(host_crt));
        r.tls_ca_file = Some("/etc/ssl/company.pem".into());
        assert_eq!(
            ca_file(&r, certs.path()),
            Some(PathBuf::from("/etc/ssl/company.pem"))
        );
    }

    #[test]
    fn git_ca_follows_the_credential_header() {
        let job = JobResponse {
            git_info: crate::gitlab::types::GitInfo {
                repo_url: Secret::new("https://gitlab-ci-token:t@gitlab.example.test/g/p.git"),
                ..Default::default()
            },
            ..Default::default()
        };
        let mut env =
            sources::credential_env(&sources::split_remote(job.git_info.repo_url.expose()));
        add_git_ca(&mut env, &job, "/b/p.tmp/CI_SERVER_TLS_CA_FILE");
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("GIT_CONFIG_COUNT"), Some("2"));
        assert_eq!(
            get("GIT_CONFIG_KEY_1"),
            Some("http.https://gitlab.example.test/.sslCAInfo")
        );
        assert_eq!(
            get("GIT_CONFIG_VALUE_1"),
            Some("/b/p.tmp/CI_SERVER_TLS_CA_FILE")
        );
        assert_eq!(
            env.iter().filter(|(k, _)| k == "GIT_CONFIG_COUNT").count(),
            1
        );
    }
}
