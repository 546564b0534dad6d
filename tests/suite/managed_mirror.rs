//! `managed_mirror`: the pull-through registry mirror the runner starts and owns on the host
//! (`[runners.docker.isolation.mirror]`, `isolation::mirror`), end to end through the real
//! daemon, the fake GitLab, real job daemons and Debian's docker-registry.
//!
//! Nothing leaves the machine: the mirror's upstream is always a registry of the test's own
//! (`isolated-runner/registry:test`), published on loopback (for the host's push) and on the
//! default bridge's gateway (where the mirror, itself on the default bridge, reaches it). Jobs
//! pull `docker.io/library/...` names (dockerd applies mirrors to Docker Hub names only), and
//! every pull is guarded: the job first checks that its daemon lists the mirror and that the
//! mirror serves the manifest, so its daemon never has a reason to fall back to Docker Hub.
//! Each test owns its mirror (named after its own state dir) and removes it at the end.

use crate::support;

use isolated_runner::cleanup;
use isolated_runner::config::{Config, ManagedMirror};
use isolated_runner::isolation::mirror::{self, Wanted};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::docker::{BUSYBOX_IMAGE, Scope};
use support::e2e::{E2e, JOB_TIMEOUT};
use support::registry::{
    REGISTRY_IMAGE, Registry, Setup, http_status, mirrored_pull_lines, must, pull_ms,
    served_blob_gets,
};

/// The upstream (a plain registry of the test's own, `support::registry`) holding the host's
/// `image` as `<repo>:<tag>`; returns it with the digests of the image's blobs (config and
/// layers) as the registry holds them.
async fn seeded_upstream(
    scope: &Scope,
    user: Option<(&str, &str)>,
    image: &str,
    repo: &str,
    tag: &str,
) -> (Registry, Vec<String>) {
    let mut upstream = Registry::start(scope, Setup { user, tls: None }).await;
    let pushed = upstream.push(image, &format!("{repo}:{tag}")).await;
    let digests = upstream.blob_digests(&pushed).await;
    (upstream, digests)
}

/// GETs of each blob `upstream` answered with 200 so far.
async fn blob_gets(upstream: &Registry, digests: &[String]) -> BTreeMap<String, usize> {
    let logs = upstream.logs().await;
    digests
        .iter()
        .map(|d| (d.clone(), served_blob_gets(&logs, &format!("/blobs/{d}"))))
        .collect()
}

/// Removes the test's managed mirror (it must still be there) and its upstream, then checks
/// that nothing of the test is left.
async fn remove_all(scope: &Scope, want: &Wanted, upstream: Registry) {
    assert!(
        mirror::remove(&scope.docker, want).await.expect("remove"),
        "the managed mirror was gone before the test removed it"
    );
    upstream.stop().await;
    scope.assert_clean().await;
}

/// The mirror a config with `upstream` asks for in `state_dir`.
fn wanted(config: &Config) -> Wanted {
    let mut w = mirror::wanted(config).expect("one mirror");
    assert_eq!(w.len(), 1);
    w.remove(0)
}

/// A managed mirror of `upstream`, run from the test's registry image.
fn managed_mirror(upstream: &Registry) -> ManagedMirror {
    ManagedMirror {
        upstream: format!("http://{}", upstream.for_jobs)
            .parse()
            .expect("url"),
        image: REGISTRY_IMAGE.to_string(),
        ..ManagedMirror::default()
    }
}

fn mirror_config(w: &E2e, upstream: &Registry) -> Config {
    let mut config = w.config(1);
    // Nothing preloaded: busybox in the job's daemon would make the pull a no-op.
    config.runners[0].docker.isolation.preload_images = Vec::new();
    config.runners[0].docker.isolation.mirror = Some(managed_mirror(upstream));
    config
}

/// Waits until the daemon under test has the mirror up; returns (container id, URL).
async fn wait_mirror(w: &E2e, want: &Wanted) -> (String, String) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some((run, true))) = mirror::status(&w.scope.docker, want).await {
            let id = w
                .scope
                .docker
                .inspect_container(&run.name)
                .await
                .expect("inspect mirror")
                .id;
            return (id, run.url);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the daemon never started the managed mirror"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A job of `project` whose script checks the mirror, then pulls `busybox:<tag>` (a Docker Hub
/// name) through it and runs it.
fn pull_job(w: &E2e, id: u64, project: u64, tag: &str) -> Value {
    let mut script = vec![
        "set -eo pipefail".to_string(),
        // Guards: no pull unless the daemon lists a mirror and the mirror holds the manifest.
        "M=$(docker info --format '{{range .RegistryConfig.Mirrors}}{{.}}{{end}}'); M=${M%/}"
            .to_string(),
        "echo \"MIRROR=$M\"; test -n \"$M\"".to_string(),
    ];
    script.extend(mirrored_pull_lines("$M", "busybox", tag));
    script.push(format!("docker run --rm busybox:{tag} true"));
    script.push("echo RAN-OK".to_string());
    let lines: Vec<&str> = script.iter().map(String::as_str).collect();
    let mut j = w.job(id, &lines, &[]);
    j["job_info"]["project_id"] = json!(project);
    j
}

fn blob_files(storage: &Path) -> BTreeMap<String, u64> {
    let root = storage.join("docker/registry/v2/blobs/sha256");
    let mut out = BTreeMap::new();
    for prefix in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        for blob in std::fs::read_dir(prefix.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if let Ok(m) = std::fs::metadata(blob.path().join("data")) {
                out.insert(
                    format!("sha256:{}", blob.file_name().to_string_lossy()),
                    m.len(),
                );
            }
        }
    }
    out
}

#[tokio::test]
async fn two_projects_cost_the_upstream_one_cold_pull_and_a_restart_reuses_the_mirror() {
    let w = E2e::new().await;
    let (upstream, digests) =
        seeded_upstream(&w.scope, None, BUSYBOX_IMAGE, "library/busybox", "mirrored").await;
    let config = mirror_config(&w, &upstream);
    let want = wanted(&config);
    let storage: PathBuf = want.storage_dir.clone();
    assert!(storage.starts_with(w.scope.state_dir()));

    // First start: the daemon creates the mirror before its first poll.
    let daemon = w.start_daemon(config.clone());
    let (first_id, url) = wait_mirror(&w, &want).await;
    let a = w.fake.enqueue(pull_job(&w, 9101, 7, "mirrored"));
    let fa = w.wait_final(a, JOB_TIMEOUT).await;
    // What the first (cold) pull cost the upstream. docker-registry 2.8 fetches a blob it does
    // not hold twice on a miss (once to serve the client, once to store it) and once more for
    // a request that arrives while the first fetch runs; what matters is that later jobs add
    // nothing.
    let cold = blob_gets(&upstream, &digests).await;
    assert!(
        cold.values().all(|n| *n >= 1),
        "not pulled through the upstream: {cold:?}"
    );
    let b = w.fake.enqueue(pull_job(&w, 9102, 8, "mirrored"));
    let fb = w.wait_final(b, JOB_TIMEOUT).await;
    daemon.stop(JOB_TIMEOUT).await;
    for (id, f) in [(a, &fa), (b, &fb)] {
        let trace = w.trace(id);
        assert_eq!(f.state, "success", "job {id}:\n{trace}");
        assert!(trace.contains(&format!("MIRROR={url}")), "{trace}");
        assert!(
            trace.contains("MIRROR-OK") && trace.contains("RAN-OK"),
            "{trace}"
        );
        eprintln!("job {id}: {}", pull_ms(&trace));
    }

    // The second project's pull came from the mirror's storage: the upstream served nothing more.
    assert_eq!(
        blob_gets(&upstream, &digests).await,
        cold,
        "the second job's pull reached the upstream:\n{}",
        upstream.logs().await
    );
    eprintln!("upstream blob GETs for two projects' pulls: {cold:?}");
    let held = blob_files(&storage);
    for d in &digests {
        assert!(held.contains_key(d), "mirror storage lacks {d}: {held:?}");
    }

    // Neither the start-up reaper nor `runner cleanup` takes the mirror for a leftover.
    let reaped = cleanup::reaper::reap(
        &w.scope.docker,
        &cleanup::reaper::ReapRequest {
            runner_id: w.scope.runner_id.clone(),
            state_dir: w.scope.state_dir(),
            builds_dir: w.scope.builds_dir(),
            dry_run: true,
        },
    )
    .await;
    assert!(
        !reaped
            .found
            .iter()
            .any(|f| f.contains(&want.container_name())),
        "{:?}",
        reaped.found
    );
    let plan = cleanup::plan(
        Some(&w.scope.docker),
        &cleanup::Request {
            builds_dirs: vec![w.scope.builds_dir()],
            state_dir: w.scope.state_dir(),
            caches: Vec::new(),
            older_than: Duration::ZERO,
            dry_run: true,
            netpolicy: None,
            own_runner_ids: vec![w.scope.runner_id.clone()],
            cache_pruner: None,
            label_filter: None,
        },
    )
    .await;
    assert!(
        !plan
            .items
            .iter()
            .any(|i| i.name.contains(&want.container_name())),
        "{:?}",
        plan.items
    );

    // A restart reuses it: same container, same address, and the cache still serves.
    let daemon = w.start_daemon(config.clone());
    let (second_id, second_url) = wait_mirror(&w, &want).await;
    let c = w.fake.enqueue(pull_job(&w, 9103, 9, "mirrored"));
    let fc = w.wait_final(c, JOB_TIMEOUT).await;
    daemon.stop(JOB_TIMEOUT).await;
    assert_eq!(first_id, second_id, "the restart replaced the mirror");
    assert_eq!(url, second_url);
    assert_eq!(fc.state, "success", "{}", w.trace(c));
    assert_eq!(
        blob_gets(&upstream, &digests).await,
        cold,
        "fetched again after the restart"
    );

    // `runner cleanup`'s bound: under the cap nothing goes; over it the cache is emptied and
    // the mirror answers again.
    let kept = mirror::bound_storage(Some(&w.scope.docker), &want, false)
        .await
        .expect("bound");
    assert!(!kept.emptied && kept.bytes > 0, "{kept:?}");
    let mut tight = want.clone();
    tight.mirror.max_size = 1;
    let dry = mirror::bound_storage(Some(&w.scope.docker), &tight, true)
        .await
        .expect("dry run");
    assert!(dry.emptied && !blob_files(&storage).is_empty());
    let bounded = mirror::bound_storage(Some(&w.scope.docker), &tight, false)
        .await
        .expect("bound");
    assert!(bounded.emptied, "{bounded:?}");
    assert!(
        blob_files(&storage).is_empty(),
        "{:?}",
        blob_files(&storage)
    );
    let after = cleanup::disk_usage(&storage);
    assert!(after < bounded.bytes, "{after} >= {}", bounded.bytes);
    assert!(
        mirror::ensure(&w.scope.docker, &want)
            .await
            .expect("up")
            .reused,
        "cleanup must restart the same container"
    );

    remove_all(&w.scope, &want, upstream).await;
}

#[tokio::test]
async fn a_private_image_pulled_with_credentials_is_never_served_to_another_project() {
    let w = E2e::new().await;
    let user = Some(("alice", "s3cret-pw"));
    let (upstream, digests) =
        seeded_upstream(&w.scope, user, BUSYBOX_IMAGE, "library/secret", "1").await;
    let config = mirror_config(&w, &upstream);
    let want = wanted(&config);
    let daemon = w.start_daemon(config.clone());
    let (_, url) = wait_mirror(&w, &want).await;
    let accept = "Accept: application/vnd.docker.distribution.manifest.v2+json";
    let code = |auth: &str, path: &str| {
        format!("curl -s -o /dev/null -w '%{{http_code}}' {auth} -H '{accept}' \"{url}{path}\"")
    };
    // The upstream refuses anonymous pulls and serves the holder of the credentials (the
    // seed's push and this pull, on the host: job networks reach no host port but the mirror's).
    let manifest = "/v2/library/secret/manifests/1";
    assert_eq!(
        http_status(&upstream.loopback, manifest, None).await,
        Some(401)
    );
    assert_eq!(
        http_status(&upstream.loopback, manifest, user).await,
        Some(200)
    );
    let private = format!("{}/library/secret:1", upstream.loopback);
    must(&["pull", "-q", &private], Some(upstream.client.path())).await;
    upstream.untag(&private).await;

    // Project 7 holds the credentials and offers them to the mirror, as its daemon would to a
    // registry that asks: the mirror must not use them upstream.
    let lines = [
        "set -eo pipefail".to_string(),
        format!(
            "echo VIA-MIRROR-AUTH=$({})",
            code("-u alice:s3cret-pw", manifest)
        ),
    ];
    let a_lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let mut ja = w.job(9201, &a_lines, &[]);
    ja["job_info"]["project_id"] = json!(7);
    let a = w.fake.enqueue(ja);
    let fa = w.wait_final(a, JOB_TIMEOUT).await;

    // Project 8 has no credentials: the mirror gives it neither the manifest nor any blob.
    let mut lines = vec![format!("echo VIA-MIRROR=$({})", code("", manifest))];
    for d in &digests {
        lines.push(format!(
            "echo BLOB-{d}=$({})",
            code("", &format!("/v2/library/secret/blobs/{d}"))
        ));
    }
    let b_lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let mut jb = w.job(9202, &b_lines, &[]);
    jb["job_info"]["project_id"] = json!(8);
    let b = w.fake.enqueue(jb);
    let fb = w.wait_final(b, JOB_TIMEOUT).await;
    daemon.stop(JOB_TIMEOUT).await;

    let ta = w.trace(a);
    assert_eq!(fa.state, "success", "{ta}");
    assert!(ta.contains("VIA-MIRROR-AUTH="), "{ta}");
    assert!(
        !ta.contains("VIA-MIRROR-AUTH=200"),
        "the mirror passed a job's credentials upstream: {ta}"
    );
    let tb = w.trace(b);
    assert_eq!(fb.state, "success", "{tb}");
    assert!(tb.contains("VIA-MIRROR="), "{tb}");
    assert!(!tb.contains("VIA-MIRROR=200"), "{tb}");
    for d in &digests {
        let line = tb
            .lines()
            .find(|l| l.starts_with(&format!("BLOB-{d}=")))
            .unwrap_or_else(|| panic!("no line for {d}: {tb}"));
        assert!(!line.ends_with("=200"), "served a private blob: {line}");
    }
    // And nothing of it is in the mirror's storage.
    let held = blob_files(&want.storage_dir);
    for d in &digests {
        assert!(!held.contains_key(d), "the mirror stored private blob {d}");
    }

    remove_all(&w.scope, &want, upstream).await;
}

/// Measurement for docs/warm-images.md (ignored: slow, pushes the 344 MB job image): a pull of
/// `isolated-runner/job:test` through the managed mirror by two jobs' daemons, cold (the mirror
/// fetches from the upstream as it serves) then warm (from its storage).
/// `cargo test --test suite managed_mirror::measure -- --ignored --nocapture`.
#[tokio::test]
#[ignore]
async fn measure_cold_and_warm_pulls_through_the_managed_mirror() {
    use support::security::{prepare, run, teardown};
    let scope = Scope::new().await;
    let (upstream, _) = seeded_upstream(
        &scope,
        None,
        support::docker::JOB_IMAGE,
        "library/jobimage",
        "mirrored",
    )
    .await;
    let mut config = Config {
        state_dir: scope.state_dir(),
        runners: vec![scope.runner_config()],
        ..Config::default()
    };
    config.runners[0].docker.isolation.mirror = Some(managed_mirror(&upstream));
    let want = wanted(&config);
    let running = mirror::start_all(&scope.docker, &mut config)
        .await
        .expect("mirror up");
    let url = running[0].url.clone();
    let backend = scope.dind(config.runners[0].clone());
    let mut times = Vec::new();
    for (job, project) in [(701u64, 7u64), (702, 8)] {
        let mut spec = scope.spec(job);
        spec.project_id = project;
        let env = prepare(&backend, &spec).await;
        let mut script = vec!["set -eo pipefail".to_string()];
        script.extend(mirrored_pull_lines(&url, "jobimage", "mirrored"));
        let (code, text) = run(env.as_ref(), &script.join("\n")).await;
        teardown(env).await;
        assert_eq!(code.expect("script"), 0, "{text}");
        times.push(pull_ms(&text).to_string());
    }
    eprintln!(
        "cold: {}\nwarm: {}\nstorage: {} bytes",
        times[0],
        times[1],
        cleanup::disk_usage(&want.storage_dir)
    );
    remove_all(&scope, &want, upstream).await;
}
