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

use std::time::Instant;
use support::docker::{BUSYBOX_IMAGE, JOB_IMAGE, Scope};
use support::registry::{Registry, Setup, mirrored_pull_lines, pull_ms, served_blob_gets};
use support::security::{prepare, prepare_logged, run, teardown};

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
    let (env, prepared) = prepare_logged(&scope.dind(cfg), &scope.spec(501)).await;
    // Guards first (set -e): no pull unless the daemon has the mirror and the mirror answers.
    let mut script = vec![
        "set -eo pipefail".to_string(),
        format!(
            "docker info --format '{{{{json .RegistryConfig.Mirrors}}}}' | tee /dev/stderr | grep -F '{mirror}'"
        ),
    ];
    script.extend(mirrored_pull_lines(&mirror, "busybox", "mirrored"));
    script.push("docker run --rm busybox:mirrored true".to_string());
    script.push("echo RAN-OK".to_string());
    let (code, text) = run(env.as_ref(), &script.join("\n")).await;
    let t = Instant::now();
    teardown(env).await;
    eprintln!("teardown in {:.1}s", t.elapsed().as_secs_f64());
    let logs = registry.logs().await;
    registry.stop().await;
    let code = code.unwrap_or_else(|e| panic!("script error: {e}\n{prepared}{text}"));
    assert_eq!(
        code, 0,
        "job failed:\n{prepared}{text}\nregistry log:\n{logs}"
    );
    assert!(
        text.contains("MIRROR-OK") && text.contains("RAN-OK"),
        "{text}"
    );
    eprintln!("{}", pull_ms(&text));
    // The pull went through our registry: layers were downloaded from it (the host's push
    // only ever HEADs blobs, and curl fetched a manifest, not a blob).
    assert!(
        served_blob_gets(&logs, "/v2/library/busybox/blobs/sha256:") > 0,
        "the registry never served the daemon's pull:\n{logs}"
    );
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
    let (env, preloaded) = prepare_logged(&scope.dind(cfg), &scope.spec(601)).await;
    teardown(env).await;

    // Mirror: the job pulls it.
    let mut cfg = scope.runner_config();
    cfg.docker.isolation.registry_mirror = Some(mirror.clone());
    let env = prepare(&scope.dind(cfg), &scope.spec(602)).await;
    let mut script = vec!["set -eo pipefail".to_string()];
    script.extend(mirrored_pull_lines(&mirror, "jobimage", "mirrored"));
    let (code, text) = run(env.as_ref(), &script.join("\n")).await;
    teardown(env).await;
    registry.stop().await;
    assert_eq!(code.expect("script"), 0, "{text}");
    eprintln!(
        "preload: {}\nmirror: {}",
        preloaded
            .lines()
            .find(|l| l.starts_with("Preloaded"))
            .unwrap_or("?"),
        pull_ms(&text)
    );
    scope.assert_clean().await;
}
