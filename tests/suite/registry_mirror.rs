//! `registry_mirror`: a job's inner daemon pulls through a registry the test starts itself
//! (`isolated-runner/registry:test`, Debian's docker-registry, storage inside the container).
//!
//! Nothing may leave the machine. The registry is a plain registry (no proxy upstream). It is
//! published on loopback (for the host's push) and on the `docker0` address (a host-local
//! address the job network can reach through the host), never on an outside interface. The
//! job checks, before it pulls, that its daemon lists the mirror and that the mirror serves
//! the manifest over the same path the daemon uses; only then does it pull, so dockerd never
//! has a reason to fall back to Docker Hub. The registry's access log then proves the pull
//! came through it.

use crate::support;

use isolated_runner::isolation::{self, Isolation, Role, ScriptRequest};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::docker::{BUSYBOX_IMAGE, Collect, JOB_IMAGE, Scope};
use tokio_util::sync::CancellationToken;

const REGISTRY_IMAGE: &str = "isolated-runner/registry:test";

async fn docker_cli(args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new("docker")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("run the docker CLI");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

async fn must(args: &[&str]) -> String {
    let (ok, text) = docker_cli(args).await;
    assert!(ok, "docker {args:?} failed: {text}");
    text.trim().to_string()
}

/// A registry container labelled with the scope's runner id; removed by `stop`.
struct Registry {
    name: String,
    /// `127.0.0.1:<port>` for the host engine (loopback registries need no TLS).
    loopback: String,
    /// `<docker0 address>:<port>` for job networks.
    for_jobs: String,
}

impl Registry {
    async fn start(scope: &Scope) -> Registry {
        // The default bridge's host address (docker0): local to this machine, reachable from
        // job networks through the host, not an outside interface.
        let bridge = must(&[
            "network",
            "inspect",
            "bridge",
            "-f",
            "{{index .Options \"com.docker.network.bridge.name\"}}",
        ])
        .await;
        let gateway = nix::ifaddrs::getifaddrs()
            .expect("getifaddrs")
            .filter(|i| i.interface_name == bridge)
            .find_map(|i| i.address.and_then(|a| a.as_sockaddr_in().map(|s| s.ip())))
            .unwrap_or_else(|| panic!("no IPv4 address on the default bridge {bridge:?}"));
        assert!(gateway.is_private(), "{gateway} is not a private address");
        let gateway = gateway.to_string();
        let name = format!("ir-{}-registry", scope.runner_id);
        must(&[
            "run",
            "-d",
            "--name",
            &name,
            "--label",
            &format!("io.isolated-runner.runner={}", scope.runner_id),
            "-p",
            "127.0.0.1::5000",
            "-p",
            &format!("{gateway}::5000"),
            REGISTRY_IMAGE,
        ])
        .await;
        let ports = must(&["port", &name, "5000/tcp"]).await;
        let port_on = |ip: &str| {
            ports
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{ip}:")).map(str::to_string))
                .unwrap_or_else(|| panic!("no port on {ip}: {ports}"))
        };
        let r = Registry {
            loopback: format!("127.0.0.1:{}", port_on("127.0.0.1")),
            for_jobs: format!("{gateway}:{}", port_on(&gateway)),
            name,
        };
        // The port proxy accepts connections before the registry listens: wait for its API.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut up = false;
        while tokio::time::Instant::now() < deadline {
            if api_answers(&r.loopback).await {
                up = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(up, "registry never listened: {}", r.logs().await);
        r
    }

    async fn logs(&self) -> String {
        docker_cli(&["logs", &self.name]).await.1
    }

    async fn stop(self) {
        must(&["rm", "-f", &self.name]).await;
    }
}

/// Whether `GET /v2/` answers 200.
async fn api_answers(addr: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(Ok(mut c)) =
        tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr)).await
    else {
        return false;
    };
    if c.write_all(b"GET /v2/ HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(
        tokio::time::timeout(Duration::from_secs(2), c.read(&mut buf)).await,
        Ok(Ok(n)) if buf[..n].starts_with(b"HTTP/1.1 200") || buf[..n].starts_with(b"HTTP/1.0 200")
    )
}

#[tokio::test]
async fn inner_daemon_pulls_through_the_mirror() {
    let scope = Scope::new().await;
    assert!(
        scope
            .docker
            .image_exists(REGISTRY_IMAGE)
            .await
            .expect("inspect image"),
        "test image {REGISTRY_IMAGE} is missing: run tests/images/build registry (the tests never pull)"
    );
    let registry = Registry::start(&scope).await;

    // Seed it from the host engine over loopback; the host's tag goes again at once.
    let seeded = format!("{}/library/busybox:mirrored", registry.loopback);
    must(&["tag", BUSYBOX_IMAGE, &seeded]).await;
    let pushed = docker_cli(&["push", &seeded]).await;
    must(&["rmi", &seeded]).await;
    assert!(pushed.0, "push failed: {}", pushed.1);

    let mirror = format!("http://{}", registry.for_jobs);
    let mut cfg = scope.runner_config();
    cfg.docker.isolation.registry_mirror = Some(mirror.clone());
    let backend: Arc<dyn Isolation> = Arc::new(isolation::dind::DindBackend::new(
        scope.docker.clone(),
        Arc::new(cfg),
        scope.state_dir(),
    ));
    let out = Collect::new();
    let env = backend
        .prepare(&scope.spec(501), out.clone(), CancellationToken::new())
        .await
        .unwrap_or_else(|e| panic!("prepare failed: {e}\n{}", out.text()));
    // Guards first (set -e): no pull unless the daemon has the mirror and the mirror answers.
    let script = format!(
        "set -eo pipefail\n\
         docker info --format '{{{{json .RegistryConfig.Mirrors}}}}' | tee /dev/stderr | grep -F '{mirror}'\n\
         curl -fsS -o /dev/null -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
           {mirror}/v2/library/busybox/manifests/mirrored\n\
         echo MIRROR-OK\n\
         start=$(date +%s%N)\n\
         docker pull -q busybox:mirrored\n\
         echo PULL-MS=$(( ($(date +%s%N) - start) / 1000000 ))\n\
         docker run --rm busybox:mirrored true\n\
         echo RAN-OK\n"
    );
    let code = env
        .run_script(
            ScriptRequest {
                role: Role::Build,
                script,
                env: Vec::new(),
            },
            out.clone(),
            CancellationToken::new(),
        )
        .await
        .unwrap_or_else(|e| panic!("script error: {e}\n{}", out.text()));
    let t = Instant::now();
    let report = env.teardown().await;
    eprintln!("teardown in {:.1}s", t.elapsed().as_secs_f64());
    let logs = registry.logs().await;
    registry.stop().await;
    let text = out.text();
    assert_eq!(code, 0, "job failed:\n{text}\nregistry log:\n{logs}");
    assert!(
        text.contains("MIRROR-OK") && text.contains("RAN-OK"),
        "{text}"
    );
    eprintln!(
        "{}",
        text.lines()
            .find(|l| l.starts_with("PULL-MS="))
            .unwrap_or("")
    );
    // The pull went through our registry: layers were downloaded from it (the host's push
    // only ever HEADs blobs, and curl fetched a manifest, not a blob).
    assert!(
        logs.lines().any(|l| l.contains("http.request.method=GET")
            && l.contains("/v2/library/busybox/blobs/sha256:")
            && l.contains("http.response.status=200")),
        "the registry never served the daemon's pull:\n{logs}"
    );
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    scope.assert_clean().await;
}

/// Measurement for docs/warm-images.md (ignored: slow, pushes the 350 MB job image):
/// `cargo test --test suite registry_mirror:: -- --ignored --nocapture`.
#[tokio::test]
#[ignore]
async fn measure_mirror_pull_against_preload() {
    let scope = Scope::new().await;
    let registry = Registry::start(&scope).await;
    let seeded = format!("{}/library/jobimage:mirrored", registry.loopback);
    must(&["tag", JOB_IMAGE, &seeded]).await;
    let pushed = docker_cli(&["push", &seeded]).await;
    must(&["rmi", &seeded]).await;
    assert!(pushed.0, "push failed: {}", pushed.1);
    let mirror = format!("http://{}", registry.for_jobs);

    // Preload: the host daemon's copy streamed into the job's daemon during prepare.
    let mut cfg = scope.runner_config();
    cfg.docker.isolation.preload_images = vec![JOB_IMAGE.to_string()];
    let preload: Arc<dyn Isolation> = Arc::new(isolation::dind::DindBackend::new(
        scope.docker.clone(),
        Arc::new(cfg),
        scope.state_dir(),
    ));
    let out = Collect::new();
    let env = preload
        .prepare(&scope.spec(601), out.clone(), CancellationToken::new())
        .await
        .unwrap_or_else(|e| panic!("prepare failed: {e}\n{}", out.text()));
    assert!(env.teardown().await.failures.is_empty());
    let preloaded = out.text();

    // Mirror: the job pulls it.
    let mut cfg = scope.runner_config();
    cfg.docker.isolation.registry_mirror = Some(mirror.clone());
    let mirrored: Arc<dyn Isolation> = Arc::new(isolation::dind::DindBackend::new(
        scope.docker.clone(),
        Arc::new(cfg),
        scope.state_dir(),
    ));
    let out = Collect::new();
    let env = mirrored
        .prepare(&scope.spec(602), out.clone(), CancellationToken::new())
        .await
        .unwrap_or_else(|e| panic!("prepare failed: {e}\n{}", out.text()));
    let script = format!(
        "set -eo pipefail\n\
         curl -fsS -o /dev/null -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
           {mirror}/v2/library/jobimage/manifests/mirrored\n\
         start=$(date +%s%N)\n\
         docker pull -q jobimage:mirrored\n\
         echo PULL-MS=$(( ($(date +%s%N) - start) / 1000000 ))\n"
    );
    let code = env
        .run_script(
            ScriptRequest {
                role: Role::Build,
                script,
                env: Vec::new(),
            },
            out.clone(),
            CancellationToken::new(),
        )
        .await
        .expect("script");
    assert!(env.teardown().await.failures.is_empty());
    registry.stop().await;
    assert_eq!(code, 0, "{}", out.text());
    eprintln!(
        "preload: {}\nmirror: {}",
        preloaded
            .lines()
            .find(|l| l.starts_with("Preloaded"))
            .unwrap_or("?"),
        out.text()
            .lines()
            .find(|l| l.starts_with("PULL-MS="))
            .unwrap_or("?")
    );
    scope.assert_clean().await;
}
