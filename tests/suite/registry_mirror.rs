//! `registry_mirror`: a job's inner daemon pulls through a registry the test starts itself
//! (`isolated-runner/registry:test`, Debian's docker-registry, storage inside the container).
//!
//! Nothing may leave the machine. The registry is a plain registry (no proxy upstream,
//! `support::registry`). It is published on loopback (for the host's push) and on the `docker0`
//! address (a host-local address the job network can reach through the host), never on an
//! outside interface. The job checks, before it pulls, that its daemon lists the mirror and
//! that the mirror serves the manifest over the same path the daemon uses; only then does it
//! pull, so dockerd never has a reason to fall back to Docker Hub. The registry's access log
//! then proves the pull came through it.

use crate::support;

use isolated_runner::isolation::{self, Isolation, Role, ScriptRequest};
use std::sync::Arc;
use std::time::Instant;
use support::docker::{BUSYBOX_IMAGE, Collect, JOB_IMAGE, Scope};
use support::registry::{Registry, Setup};
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn inner_daemon_pulls_through_the_mirror() {
    let scope = Scope::new().await;
    let mut registry = Registry::start(&scope, Setup::default()).await;

    // Seed it from the host engine over loopback; the host's tag goes again at once.
    registry
        .push(BUSYBOX_IMAGE, "library/busybox:mirrored")
        .await;

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
    let mut registry = Registry::start(&scope, Setup::default()).await;
    registry.push(JOB_IMAGE, "library/jobimage:mirrored").await;
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
