//! A registry of a test's own on the host engine, and the docker CLI the registry tests drive
//! it with (`registry_pull`, `registry_mirror`, `managed_mirror`).
//!
//! The registry is `isolated-runner/registry:test` (Debian's docker-registry, storage inside
//! the container), labelled with the scope's runner id, published on loopback (where the host
//! engine pushes and pulls plain HTTP) and on the default bridge's gateway (docker0: local to
//! this machine, the one host address job networks and the managed mirror reach), never on an
//! outside interface. Nothing in it comes from a public registry: tests push their own images.

use super::docker::Scope;
use std::path::Path;
use std::time::Duration;

/// The registry image (built by `tests/images/build registry`).
pub const REGISTRY_IMAGE: &str = "isolated-runner/registry:test";

/// Runs the docker CLI; returns whether it succeeded and its stdout then stderr. With
/// `config_dir` the CLI uses that client config (`DOCKER_CONFIG`): logins for pushes go there,
/// never into the runner user's own `~/.docker/config.json`, which the runner reads.
pub async fn docker_cli(args: &[&str], config_dir: Option<&Path>) -> (bool, String) {
    let mut cmd = tokio::process::Command::new("docker");
    cmd.args(args).stdin(std::process::Stdio::null());
    if let Some(d) = config_dir {
        cmd.env("DOCKER_CONFIG", d);
    }
    let out = cmd.output().await.expect("run the docker CLI");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// [`docker_cli`] that must succeed; returns its trimmed output.
pub async fn must(args: &[&str], config_dir: Option<&Path>) -> String {
    let (ok, text) = docker_cli(args, config_dir).await;
    assert!(ok, "docker {args:?} failed: {text}");
    text.trim().to_string()
}

/// Whether the host engine has `reference`.
pub async fn local(reference: &str) -> bool {
    docker_cli(&["image", "inspect", reference], None).await.0
}

/// The default bridge's gateway (docker0), checked to be a private address: registries are
/// published there and on loopback only.
pub async fn bridge_gateway(scope: &Scope) -> std::net::IpAddr {
    let gateway: std::net::IpAddr =
        isolated_runner::isolation::mirror::bridge_gateway(&scope.docker)
            .await
            .expect("inspect the default bridge")
            .expect("the default bridge has a gateway")
            .parse()
            .expect("the gateway is an IP address");
    let private = match gateway {
        std::net::IpAddr::V4(v4) => v4.is_private(),
        std::net::IpAddr::V6(_) => false,
    };
    assert!(private, "{gateway} is not a private IPv4 address");
    gateway
}

/// The repository prefix of the scope's test (`ir-<runner id>`, lower case as registries want).
pub fn repo_prefix(scope: &Scope) -> String {
    format!("ir-{}", scope.runner_id.to_ascii_lowercase())
}

/// The HTTP status of `GET http://<addr><path>` (with basic auth when given), from the test
/// process: a raw HTTP/1.0 request, so no proxy setting of the environment applies. `None` when
/// nothing answers in HTTP. A TLS listener answers plain HTTP with 400.
pub async fn http_status(addr: &str, path: &str, auth: Option<(&str, &str)>) -> Option<u16> {
    use base64::Engine;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    let mut req = format!(
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: application/vnd.docker.distribution.manifest.v2+json\r\n"
    );
    if let Some((u, p)) = auth {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
        req.push_str(&format!("Authorization: Basic {token}\r\n"));
    }
    req.push_str("\r\n");
    c.write_all(req.as_bytes()).await.ok()?;
    let mut buf = [0u8; 32];
    let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    std::str::from_utf8(&buf[..n])
        .ok()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Script lines that pull the Docker Hub name `<name>:<tag>` through the job daemon's registry
/// mirror `mirror` (a URL, or a shell expression such as `$M`) and print `PULL-MS=<ms>`. A guard
/// comes first: curl checks that the mirror serves the manifest, so under `set -e` no pull
/// starts that dockerd could send on to Docker Hub.
pub fn mirrored_pull_lines(mirror: &str, name: &str, tag: &str) -> Vec<String> {
    vec![
        format!(
            "curl -fsS -o /dev/null -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \"{mirror}/v2/library/{name}/manifests/{tag}\""
        ),
        "echo MIRROR-OK".to_string(),
        "start=$(date +%s%N)".to_string(),
        format!("docker pull -q {name}:{tag}"),
        "echo PULL-MS=$(( ($(date +%s%N) - start) / 1000000 ))".to_string(),
    ]
}

/// The `PULL-MS=<ms>` line of a script built with [`mirrored_pull_lines`] (`?` when missing).
pub fn pull_ms(output: &str) -> &str {
    output
        .lines()
        .find(|l| l.starts_with("PULL-MS="))
        .unwrap_or("?")
}

/// How many `GET`s of blobs whose path contains `blob_path` a registry's access log shows it
/// answered with 200 (a pull downloads blobs with GET; a push only ever HEADs them).
pub fn served_blob_gets(logs: &str, blob_path: &str) -> usize {
    logs.lines()
        .filter(|l| {
            l.contains("http.request.method=GET")
                && l.contains(blob_path)
                && l.contains("http.response.status=200")
        })
        .count()
}

/// How a test's registry is set up.
#[derive(Default)]
pub struct Setup<'a> {
    /// Basic auth: the only user and its password (the registry's htpasswd); the registry's
    /// own client config ([`Registry::client`]) is logged in as it.
    pub user: Option<(&'a str, &'a str)>,
    /// TLS: (certificate chain PEM, key PEM); the certificate must name the gateway address
    /// ([`bridge_gateway`]). Without it the registry speaks plain HTTP.
    pub tls: Option<(&'a str, &'a str)>,
}

impl<'a> Setup<'a> {
    /// Plain HTTP behind basic auth for `user` with `password`.
    pub fn user(user: &'a str, password: &'a str) -> Setup<'a> {
        Setup {
            user: Some((user, password)),
            tls: None,
        }
    }
}

/// A running registry of the test's own; removed by [`Registry::stop`], or on drop when a test
/// fails before (with the tags it made on the host engine).
pub struct Registry {
    /// The container's name, `ir-<runner id>-registry`.
    pub name: String,
    /// `127.0.0.1:<port>`: the host engine's address for it.
    pub loopback: String,
    /// `<gateway>:<port>`: the address job networks and the managed mirror reach.
    pub for_jobs: String,
    /// A private docker client config (the login for pushes to an authenticating registry).
    pub client: tempfile::TempDir,
    /// Tags this test pushed (and jobs may have pulled back onto the host engine), removed by
    /// `stop` or on drop.
    tags: Vec<String>,
    _auth_dir: Option<tempfile::TempDir>,
    _tls_dir: Option<tempfile::TempDir>,
}

impl Registry {
    /// Starts the registry and waits until it answers HTTP.
    pub async fn start(scope: &Scope, setup: Setup<'_>) -> Registry {
        assert!(
            scope
                .docker
                .image_exists(REGISTRY_IMAGE)
                .await
                .expect("inspect image"),
            "test image {REGISTRY_IMAGE} is missing: run tests/images/build registry (the tests \
             never pull)"
        );
        let gateway = bridge_gateway(scope).await;
        let name = format!("ir-{}-registry", scope.runner_id);
        let mut args: Vec<String> = vec![
            "run".into(),
            "-d".into(),
            "--name".into(),
            name.clone(),
            "--label".into(),
            format!("io.isolated-runner.runner={}", scope.runner_id),
            "-p".into(),
            "127.0.0.1::5000".into(),
            "-p".into(),
            format!("{gateway}::5000"),
        ];
        let auth_dir = setup.user.map(|(u, p)| {
            let d = tempfile::tempdir().expect("tempdir");
            let hash = bcrypt::hash(p, 4).expect("bcrypt");
            std::fs::write(d.path().join("htpasswd"), format!("{u}:{hash}\n")).expect("write");
            args.extend([
                "-e".into(),
                "REGISTRY_AUTH=htpasswd".into(),
                "-e".into(),
                "REGISTRY_AUTH_HTPASSWD_REALM=isolated-runner-test".into(),
                "-e".into(),
                "REGISTRY_AUTH_HTPASSWD_PATH=/auth/htpasswd".into(),
                "-v".into(),
                format!("{}:/auth:ro", d.path().display()),
            ]);
            d
        });
        let tls_dir = setup.tls.map(|(cert, key)| {
            let d = tempfile::tempdir().expect("tempdir");
            std::fs::write(d.path().join("server.crt"), cert).expect("write");
            std::fs::write(d.path().join("server.key"), key).expect("write");
            args.extend([
                "-e".into(),
                "REGISTRY_HTTP_TLS_CERTIFICATE=/certs/server.crt".into(),
                "-e".into(),
                "REGISTRY_HTTP_TLS_KEY=/certs/server.key".into(),
                "-v".into(),
                format!("{}:/certs:ro", d.path().display()),
            ]);
            d
        });
        args.push(REGISTRY_IMAGE.to_string());
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        must(&argv, None).await;
        let ports = must(&["port", &name, "5000/tcp"], None).await;
        let addr_on = |ip: &str| {
            ports
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{ip}:")))
                .map(|port| format!("{ip}:{port}"))
                .unwrap_or_else(|| panic!("not published on {ip}: {ports}"))
        };
        let r = Registry {
            loopback: addr_on("127.0.0.1"),
            for_jobs: addr_on(&gateway.to_string()),
            name,
            client: tempfile::tempdir().expect("tempdir"),
            tags: Vec::new(),
            _auth_dir: auth_dir,
            _tls_dir: tls_dir,
        };
        // The port proxy accepts before the registry listens: wait for an HTTP answer (200,
        // 401 behind auth, 400 from the TLS listener to plain HTTP).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while http_status(&r.loopback, "/v2/", None).await.is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "registry never answered: {}",
                r.logs().await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if let Some((u, p)) = setup.user {
            must(
                &["login", "-u", u, "-p", p, &r.loopback],
                Some(r.client.path()),
            )
            .await;
        }
        r
    }

    /// Pushes the host's `local` as `<loopback>/<repo>` (`repo` with its tag) and removes the
    /// local tag again, so only a pull brings it back; returns the reference pushed.
    pub async fn push(&mut self, local: &str, repo: &str) -> String {
        let reference = format!("{}/{repo}", self.loopback);
        must(&["tag", local, &reference], None).await;
        self.tags.push(reference.clone());
        let pushed = docker_cli(&["push", &reference], Some(self.client.path())).await;
        self.untag(&reference).await;
        assert!(pushed.0, "push of {reference} failed: {}", pushed.1);
        reference
    }

    /// The digests of the blobs (config and layers) of `reference` as the registry holds them.
    pub async fn blob_digests(&self, reference: &str) -> Vec<String> {
        let manifest = must(
            &["manifest", "inspect", "--insecure", "-v", reference],
            Some(self.client.path()),
        )
        .await;
        let v: serde_json::Value = serde_json::from_str(&manifest).expect("manifest json");
        let m = &v["SchemaV2Manifest"];
        let mut digests = vec![m["config"]["digest"].as_str().expect("config").to_string()];
        for l in m["layers"].as_array().expect("layers") {
            digests.push(l["digest"].as_str().expect("layer").to_string());
        }
        digests
    }

    /// Removes `reference` (a tag of an image in this registry) from the host engine.
    pub async fn untag(&self, reference: &str) {
        // Only the tag goes: the image keeps its other names (the test images).
        must(&["rmi", reference], None).await;
    }

    /// The registry's log (its access log included).
    pub async fn logs(&self) -> String {
        docker_cli(&["logs", &self.name], None).await.1
    }

    /// Removes the tags of the test's pushes and pulls, then the registry.
    pub async fn stop(mut self) {
        for t in std::mem::take(&mut self.tags) {
            // Gone already unless a job pulled it onto the host engine.
            let _ = docker_cli(&["rmi", &t], None).await;
        }
        must(&["rm", "-f", &self.name], None).await;
        // Gone: nothing for `drop` to do.
        self.name.clear();
    }
}

impl Drop for Registry {
    /// A failed assertion must not leave the registry or its tags behind (blocking on purpose:
    /// async work cannot run in `drop`; after `stop` there is nothing left to do).
    fn drop(&mut self) {
        if self.name.is_empty() {
            return;
        }
        let quiet = |args: &[&str]| {
            let _ = std::process::Command::new("docker")
                .args(args)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        };
        for t in &self.tags {
            quiet(&["rmi", t]);
        }
        quiet(&["rm", "-f", &self.name]);
    }
}
