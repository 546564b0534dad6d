//! `runner doctor` run for real on this host: JSON shape, exit codes, the human layout, and the
//! GitLab checks against the fake GitLab on loopback (valid token ok, revoked token fail). No
//! traffic leaves the machine: GitLab is the fake on 127.0.0.1, Docker the local engine.

use crate::support;

use serde_json::Value;
use std::path::Path;
use support::fake_gitlab::{FakeGitlab, RUNNER_TOKEN};

const STATUSES: [&str; 4] = ["ok", "warn", "fail", "skip"];

async fn doctor(args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_runner"))
        .arg("doctor")
        .args(args)
        .env_remove("RUNNER_CONFIG")
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Parses the JSON report and checks its shape; returns id → (status, message, hint).
fn parse(out: &str) -> Vec<(String, String, String, String)> {
    let v: Value = serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let obj = v.as_object().unwrap();
    assert_eq!(obj.len(), 1, "only `checks` at the top: {out}");
    let checks = v["checks"].as_array().unwrap();
    assert!(checks.len() >= 15, "{out}");
    checks
        .iter()
        .map(|c| {
            let o = c.as_object().unwrap();
            let mut keys: Vec<&str> = o.keys().map(String::as_str).collect();
            keys.sort();
            assert_eq!(keys, ["hint", "id", "message", "status"], "{c}");
            let s = |k: &str| o[k].as_str().unwrap().to_string();
            assert!(STATUSES.contains(&s("status").as_str()), "{c}");
            if s("status") == "warn" || s("status") == "fail" {
                assert!(!s("hint").is_empty(), "a non-ok check needs a hint: {c}");
            }
            (s("id"), s("status"), s("message"), s("hint"))
        })
        .collect()
}

fn status<'a>(checks: &'a [(String, String, String, String)], id: &str) -> &'a str {
    checks
        .iter()
        .find(|c| c.0 == id)
        .map(|c| c.1.as_str())
        .unwrap_or_else(|| panic!("no check {id}: {checks:?}"))
}

fn assert_exit_matches(code: i32, checks: &[(String, String, String, String)]) {
    let failed = checks.iter().any(|c| c.1 == "fail");
    assert_eq!(code, if failed { 1 } else { 0 }, "{checks:#?}");
}

fn write_config(dir: &Path, url: &str, token: &str, extra_docker: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("config.toml");
    let text = format!(
        r#"concurrent = 2
state_dir = "{state}"
[[runners]]
  name = "doctor-test"
  url = "{url}"
  token = "{token}"
  builds_dir = "{builds}"
  cache_dir = "{cache}"
  [runners.docker]
    image = "isolated-runner/job:test"
    helper_image = "isolated-runner/job:test"
{extra_docker}
    [runners.docker.isolation]
      sidecar_image = "isolated-runner/dind:test"
"#,
        state = dir.join("state").display(),
        builds = dir.join("builds").display(),
        cache = dir.join("cache").display(),
    );
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

#[tokio::test]
async fn without_a_config_only_the_host_is_checked() {
    let (code, out, err) = doctor(&["--json"]).await;
    let checks = parse(&out);
    assert_exit_matches(code, &checks);
    for id in [
        "config.loads",
        "config.permissions",
        "config.volumes",
        "images.present",
        "gitlab.reachable",
        "gitlab.tls",
        "gitlab.token",
        "gitlab.clock_skew",
    ] {
        assert_eq!(status(&checks, id), "skip", "{id}: {out}\n{err}");
    }
    for id in ["docker.reachable", "docker.api_version", "host.kernel"] {
        assert_eq!(status(&checks, id), "ok", "{id}: {out}");
    }
    // runc 1.1.5 on this host is older than the CVE-2024-21626 fix.
    assert_eq!(status(&checks, "docker.runc"), "warn", "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn valid_token_passes_and_the_human_output_is_grouped() {
    let gitlab = FakeGitlab::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &gitlab.url(), RUNNER_TOKEN, "");
    let cfg = config.to_str().unwrap();
    let (code, out, err) = doctor(&["--config", cfg, "--json"]).await;
    let checks = parse(&out);
    for (id, want) in [
        ("config.loads", "ok"),
        ("config.permissions", "ok"),
        ("config.volumes", "ok"),
        ("images.present", "ok"),
        ("network.address_pool", "ok"),
        ("gitlab.reachable", "ok"),
        ("gitlab.tls", "skip"),
        ("gitlab.token", "ok"),
        ("gitlab.clock_skew", "ok"),
    ] {
        assert_eq!(status(&checks, id), want, "{id}: {out}\n{err}");
    }
    assert_eq!(
        code, 0,
        "nothing fails on this host with a good config: {out}\n{err}"
    );
    assert_exit_matches(code, &checks);
    assert!(gitlab.count("POST", "/api/v4/runners/verify") >= 1);

    let (code, human, _) = doctor(&["--config", cfg]).await;
    assert_eq!(code, 0, "{human}");
    let mut last = 0;
    for group in [
        "config\n",
        "host\n",
        "docker\n",
        "sidecar\n",
        "network\n",
        "gitlab\n",
    ] {
        let at = human
            .find(group)
            .unwrap_or_else(|| panic!("{group:?}: {human}"));
        assert!(at >= last, "groups in order: {human}");
        last = at;
    }
    assert!(human.contains("✔ gitlab.token"), "{human}");
    assert!(human.contains("! docker.runc"), "{human}");
    assert!(human.contains("- gitlab.tls"), "{human}");
    assert!(human.contains("      → "), "hints are indented: {human}");
    // The warm pool as it will be: the file's default is "auto", bounded by `concurrent = 2`
    // (this host has far more than 2 × 256 MiB available).
    assert!(
        human.contains(
            "doctor-test: warm pool auto: follows recent demand, at most 2 sidecar(s) now \
             (concurrent 2; memory "
        ),
        "{human}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn revoked_token_fails() {
    let gitlab = FakeGitlab::start().await;
    gitlab.revoke_runner_token(RUNNER_TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &gitlab.url(), RUNNER_TOKEN, "");
    let (code, out, _) = doctor(&["--config", config.to_str().unwrap(), "--json"]).await;
    let checks = parse(&out);
    assert_eq!(status(&checks, "gitlab.reachable"), "ok", "{out}");
    assert_eq!(status(&checks, "gitlab.token"), "fail", "{out}");
    assert_eq!(code, 1);
    assert!(
        !out.contains(RUNNER_TOKEN),
        "the token never appears in the report"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn socket_mount_fails() {
    let gitlab = FakeGitlab::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &gitlab.url(),
        RUNNER_TOKEN,
        r#"    volumes = ["/var/run/docker.sock:/var/run/docker.sock"]"#,
    );
    let (code, out, _) = doctor(&["--config", config.to_str().unwrap(), "--json"]).await;
    let checks = parse(&out);
    assert_eq!(status(&checks, "config.loads"), "fail", "{out}");
    assert_eq!(status(&checks, "config.volumes"), "fail", "{out}");
    // The config does not load: checks that need it skip instead of guessing.
    assert_eq!(status(&checks, "gitlab.token"), "skip", "{out}");
    assert_eq!(code, 1);
}

#[tokio::test]
async fn world_readable_token_fails() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    // Unreachable on purpose (port 1 on loopback): only the file mode matters here.
    let config = write_config(dir.path(), "http://127.0.0.1:1/", RUNNER_TOKEN, "");
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (code, out, _) = doctor(&["--config", config.to_str().unwrap(), "--json"]).await;
    let checks = parse(&out);
    assert_eq!(status(&checks, "config.permissions"), "fail", "{out}");
    assert_eq!(status(&checks, "gitlab.reachable"), "fail", "{out}");
    assert_eq!(code, 1);
}

#[tokio::test]
async fn deep_starts_a_real_sidecar_and_leaves_nothing() {
    crate::support::netns::require_root_and_docker();
    let dir = tempfile::tempdir().unwrap();
    // No GitLab needed for the sidecar: port 1 on loopback answers nothing.
    let config = write_config(dir.path(), "http://127.0.0.1:1/", RUNNER_TOKEN, "");
    let (_, out, err) = doctor(&["--config", config.to_str().unwrap(), "--json", "--deep"]).await;
    let checks = parse(&out);
    let profiles = checks.iter().find(|c| c.0 == "sidecar.profiles").unwrap();
    assert_eq!(profiles.1, "ok", "{out}\n{err}");
    assert!(
        profiles.2.contains("hardened: yes (ready over mTLS in"),
        "{profiles:?}"
    );
    // The default profile, started for real.
    assert!(
        profiles.2.contains("rootless: yes (ready over mTLS in"),
        "{profiles:?}"
    );
    // This host lacks CAP_SYS_RESOURCE: the privileged profile is refused, and says why.
    assert!(profiles.2.contains("privileged: no"), "{profiles:?}");
    let left = tokio::process::Command::new("docker")
        .args(["ps", "-a", "--format", "{{.Names}}"])
        .output()
        .await
        .unwrap();
    let names = String::from_utf8_lossy(&left.stdout).into_owned();
    assert!(
        !names.lines().any(|n| n.starts_with("ir-doctor-")),
        "the deep probe removed its containers: {names}"
    );
}

/// A config whose entries each have a shared cache store: `(name, [runners.cache] body)`.
fn write_cache_config(dir: &Path, url: &str, entries: &[(&str, String)]) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("config.toml");
    let mut text = format!(
        "concurrent = 2\nstate_dir = \"{}\"\n",
        dir.join("state").display()
    );
    for (name, cache) in entries {
        text.push_str(&format!(
            r#"[[runners]]
  name = "{name}"
  url = "{url}"
  token = "{RUNNER_TOKEN}"
  builds_dir = "{builds}"
  cache_dir = "{cache_dir}"
  [runners.cache]
{cache}
  [runners.docker]
    image = "isolated-runner/job:test"
    helper_image = "isolated-runner/job:test"
    [runners.docker.isolation]
      sidecar_image = "isolated-runner/dind:test"
"#,
            builds = dir.join("builds").display(),
            cache_dir = dir.join("cache").display(),
        ));
    }
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// `[runners.cache]` for moto on `port`.
fn s3_cache(port: u16, bucket: &str, access: &str, secret: &str) -> String {
    format!(
        r#"    Type = "s3"
    [runners.cache.s3]
      ServerAddress = "127.0.0.1:{port}"
      AccessKey = "{access}"
      SecretKey = "{secret}"
      BucketName = "{bucket}"
      Insecure = true"#
    )
}

fn message<'a>(checks: &'a [(String, String, String, String)], id: &str) -> &'a str {
    checks
        .iter()
        .find(|c| c.0 == id)
        .map(|c| c.2.as_str())
        .unwrap_or_else(|| panic!("no check {id}: {checks:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn cache_store_good_config_passes_and_leaves_no_object() {
    use support::moto::{BUCKET, Moto};
    // An open server, so the test can list the bucket afterwards; the credential checks are
    // in `cache_store_says_what_is_wrong`.
    let moto = Moto::start().await;
    const ACCESS: &str = "AKIADOCTORCACHE00001";
    const SECRET: &str = "doctor-good-secret-key-never-printed-23";
    let gitlab = FakeGitlab::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_cache_config(
        dir.path(),
        &gitlab.url(),
        &[("cached", s3_cache(moto.port, BUCKET, ACCESS, SECRET))],
    );
    let (code, out, err) = doctor(&["--config", config.to_str().unwrap(), "--json"]).await;
    let checks = parse(&out);
    assert_eq!(status(&checks, "cache.store"), "ok", "{out}\n{err}");
    let m = message(&checks, "cache.store");
    assert!(
        m.contains(&format!(
            "cached: s3 bucket \"{BUCKET}\" at http://127.0.0.1:{}: wrote, read back and deleted",
            moto.port
        )),
        "{m}"
    );
    assert_eq!(code, 0, "a good store fails nothing: {out}\n{err}");
    assert!(!out.contains(SECRET) && !out.contains(ACCESS), "{out}");

    // The probe removed its object: the bucket is empty.
    let left = moto.objects().await;
    assert!(left.is_empty(), "{left:?}");

    // The human output has a cache group, after gitlab.
    let (_, human, _) = doctor(&["--config", config.to_str().unwrap()]).await;
    let gitlab_at = human.find("gitlab\n").unwrap();
    let cache_at = human.find("cache\n").unwrap_or_else(|| panic!("{human}"));
    assert!(gitlab_at < cache_at, "{human}");
    assert!(human.contains("✔ cache.store"), "{human}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cache_store_says_what_is_wrong() {
    use support::moto::{BUCKET, Moto};
    let (moto, keys) = Moto::start_with_auth().await;
    // A port nothing listens on: bound, then released.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    const WRONG_SECRET: &str = "doctor-wrong-secret-key-never-printed-17";
    let dir = tempfile::tempdir().unwrap();
    let config = write_cache_config(
        dir.path(),
        // GitLab is not what this test looks at: port 1 on loopback answers nothing.
        "http://127.0.0.1:1/",
        &[
            (
                "wrong-secret",
                s3_cache(moto.port, BUCKET, &keys.access, WRONG_SECRET),
            ),
            (
                "no-bucket",
                s3_cache(moto.port, "no-such-bucket-here", &keys.access, &keys.secret),
            ),
            (
                "unreachable",
                s3_cache(closed, BUCKET, &keys.access, &keys.secret),
            ),
            (
                "good",
                s3_cache(moto.port, BUCKET, &keys.access, &keys.secret),
            ),
        ],
    );
    let (code, out, err) = doctor(&["--config", config.to_str().unwrap(), "--json"]).await;
    let checks = parse(&out);
    assert_eq!(status(&checks, "cache.store"), "fail", "{out}\n{err}");
    assert_eq!(code, 1);
    let m = message(&checks, "cache.store");
    assert!(
        m.contains("wrong-secret: the secret key is refused by"),
        "{m}"
    );
    assert!(
        m.contains("no-bucket: bucket \"no-such-bucket-here\" does not exist at"),
        "{m}"
    );
    assert!(
        m.contains(&format!(
            "unreachable: the s3 cache store at http://127.0.0.1:{closed} does not answer"
        )),
        "{m}"
    );
    // Each entry is checked on its own: the right keys pass beside the wrong ones.
    assert!(
        m.contains(&format!(
            "good: s3 bucket \"{BUCKET}\" at http://127.0.0.1:{}: wrote, read back and deleted",
            moto.port
        )),
        "{m}"
    );
    let hint = &checks.iter().find(|c| c.0 == "cache.store").unwrap().3;
    assert!(hint.contains("SecretKey"), "{hint}");
    assert!(hint.contains("no-such-bucket-here"), "{hint}");
    for secret in [WRONG_SECRET, keys.secret.as_str(), keys.access.as_str()] {
        assert!(!out.contains(secret), "a credential in the report: {out}");
        assert!(!err.contains(secret), "a credential on stderr: {err}");
    }
}

/// A TLS listener on loopback with a self-signed certificate no trust store holds: it ends
/// every connection after the handshake (or when the client sends something that is not TLS).
async fn untrusted_tls_listener() -> u16 {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    isolated_runner::install_crypto_provider();
    let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let certs = isolated_runner::pki::parse_certs(&made.cert.pem(), "server").unwrap();
    let key = PrivateKeyDer::from_pem_slice(made.signing_key.serialize_pem().as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // The handshake fails (untrusted, or not TLS at all); the socket is dropped.
                let _ = acceptor.accept(tcp).await;
            });
        }
    });
    port
}

/// gitlab-runner's `Insecure` and TLS: https to a plain-HTTP store, plain HTTP to a TLS-only
/// store, and a certificate this host does not trust each say which setting to change.
#[tokio::test(flavor = "multi_thread")]
async fn cache_store_names_tls_and_insecure_mistakes() {
    use support::moto::{BUCKET, Moto};
    let moto = Moto::start().await;
    let tls = untrusted_tls_listener().await;
    let dir = tempfile::tempdir().unwrap();
    let https = |port: u16| {
        s3_cache(port, BUCKET, "AKIADOCTOR", "doctor-secret")
            .replace("      Insecure = true", "      Insecure = false")
    };
    let config = write_cache_config(
        dir.path(),
        "http://127.0.0.1:1/",
        &[
            ("needs-insecure", https(moto.port)),
            ("untrusted", https(tls)),
            (
                "plain-to-tls",
                s3_cache(tls, BUCKET, "AKIADOCTOR", "doctor-secret"),
            ),
        ],
    );
    let (code, out, err) = doctor(&["--config", config.to_str().unwrap(), "--json"]).await;
    let checks = parse(&out);
    assert_eq!(status(&checks, "cache.store"), "fail", "{out}\n{err}");
    assert_eq!(code, 1);
    let m = message(&checks, "cache.store");
    assert!(
        m.contains(&format!(
            "needs-insecure: https://127.0.0.1:{} answers in plain HTTP, not https",
            moto.port
        )),
        "{m}"
    );
    assert!(
        m.contains(&format!(
            "untrusted: the certificate of https://127.0.0.1:{tls} is not accepted"
        )),
        "{m}"
    );
    assert!(
        m.contains(&format!(
            "plain-to-tls: http://127.0.0.1:{tls} does not answer plain HTTP (Insecure = true)"
        )),
        "{m}"
    );
    let hint = &checks.iter().find(|c| c.0 == "cache.store").unwrap().3;
    assert!(hint.contains("set Insecure = true"), "{hint}");
    assert!(hint.contains("remove Insecure = true"), "{hint}");
    assert!(hint.contains("update-ca-certificates"), "{hint}");
}
