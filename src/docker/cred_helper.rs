//! Docker credential helpers (`credHelpers` and `credsStore` of a docker client config), run
//! the way the docker CLI and gitlab-runner run them: the program `docker-credential-<name>`
//! from the runner's `PATH`, the registry's server address on its stdin, a JSON answer
//! `{"ServerURL", "Username", "Secret"}` on its stdout (`Username` `<token>` means the secret is
//! an identity token).
//!
//! Which configs may name a helper is decided by the caller ([`super::auth::HelperUse`]): the
//! runner runs helpers its admin configured, never one a job names. The name is checked so it
//! can only ever be a program found on `PATH` (no path separator), and the helper gets a
//! deadline so a hung keychain cannot hold a job forever. Nothing here prints the secret; a
//! helper's stderr is quoted shortened, since helpers write only their error there.

use super::auth::RegistryAuth;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// How long one `get` may take.
const HELPER_TIMEOUT: Duration = Duration::from_secs(30);

/// What a helper prints when it holds nothing for the server (docker-credential-helpers'
/// `ErrCredentialsNotFound` text); an answer, not a failure.
const NOT_FOUND: &str = "credentials not found in native keychain";

/// Whether `name` may be a helper name: letters, digits, `-`, `_`, `.`, not starting with `.`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Asks the helper `name` for the credentials of `server` (a registry key as a config spells
/// it, e.g. `registry.corp:5000` or `https://index.docker.io/v1/`). `Ok(None)`: the helper
/// holds none. `source` names the config for the trace.
pub async fn get(name: &str, server: &str, source: &str) -> Result<Option<RegistryAuth>, String> {
    if !valid_name(name) {
        return Err(format!("{name:?} is not a credential helper name"));
    }
    let program = format!("docker-credential-{name}");
    let mut child = tokio::process::Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading is answered by its exit status below.
        let _ = stdin.write_all(server.as_bytes()).await;
    }
    let out = match tokio::time::timeout(HELPER_TIMEOUT, child.wait_with_output()).await {
        Ok(r) => r.map_err(|e| format!("{program} get: {e}"))?,
        Err(_) => {
            return Err(format!(
                "{program} get did not answer within {}s",
                HELPER_TIMEOUT.as_secs()
            ));
        }
    };
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        if said.contains(NOT_FOUND) {
            return Ok(None);
        }
        let first: String = said
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(200)
            .collect();
        return Err(format!("{program} get failed ({}): {first}", out.status));
    }
    parse_answer(&out.stdout, server, &program, source).map(Some)
}

/// The helper's JSON answer as credentials.
fn parse_answer(
    stdout: &[u8],
    server: &str,
    program: &str,
    source: &str,
) -> Result<RegistryAuth, String> {
    #[derive(serde::Deserialize)]
    struct Answer {
        #[serde(rename = "Username", default)]
        username: String,
        #[serde(rename = "Secret", default)]
        secret: String,
    }
    // The error never quotes the output: it holds the secret.
    let a: Answer = serde_json::from_slice(stdout)
        .map_err(|e| format!("{program} get answered no credentials JSON ({e})"))?;
    let helper_source = format!("{source} ({program})");
    Ok(if a.username == "<token>" {
        RegistryAuth {
            username: String::new(),
            password: String::new(),
            identity_token: a.secret,
            server_address: server.to_string(),
            source: helper_source,
        }
    } else {
        RegistryAuth {
            username: a.username,
            password: a.secret,
            identity_token: String::new(),
            server_address: server.to_string(),
            source: helper_source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_leave_path_lookup() {
        assert!(valid_name("ecr-login"));
        assert!(valid_name("gcloud"));
        assert!(valid_name("pass_2.1"));
        assert!(!valid_name(""));
        assert!(!valid_name("../bin/sh"));
        assert!(!valid_name("/usr/bin/x"));
        assert!(!valid_name(".hidden"));
        assert!(!valid_name("a b"));
    }

    #[test]
    fn answers_become_credentials_and_errors_hide_the_secret() {
        let a = parse_answer(
            br#"{"ServerURL":"r.corp","Username":"ci","Secret":"hunter2"}"#,
            "r.corp",
            "docker-credential-x",
            "cfg",
        )
        .expect("answer");
        assert_eq!(
            (a.username.as_str(), a.password.as_str()),
            ("ci", "hunter2")
        );
        assert_eq!(a.source, "cfg (docker-credential-x)");
        let t = parse_answer(
            br#"{"ServerURL":"r.corp","Username":"<token>","Secret":"tok"}"#,
            "r.corp",
            "docker-credential-x",
            "cfg",
        )
        .expect("token");
        assert_eq!(
            (t.identity_token.as_str(), t.username.as_str()),
            ("tok", "")
        );
        let e = parse_answer(b"Secret hunter2", "r", "docker-credential-x", "cfg")
            .expect_err("not JSON");
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[tokio::test]
    async fn a_missing_helper_is_a_clear_error() {
        let e = get("ir-test-no-such-helper", "r.corp", "cfg")
            .await
            .expect_err("missing");
        assert!(
            e.contains("docker-credential-ir-test-no-such-helper"),
            "{e}"
        );
    }
}
