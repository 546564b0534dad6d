//! `data_root = "project"` against the real engine: a warm `/var/lib/docker` per (runner,
//! project, protected flag), one job at a time, scrubbed of the previous job's containers,
//! kept by teardown and the reaper, capped in size, removed by `remove_expired`.

use crate::support;

use isolated_runner::config::{DataRoot, RunnerConfig};
use isolated_runner::isolation::data_root::{self, LABEL_WARM, WarmRequest};
use isolated_runner::isolation::{
    self, EnvironmentSpec, Isolation, JobEnvironment, Role, ScriptRequest,
};
use std::sync::Arc;
use std::time::Duration;
use support::docker::{BUSYBOX_IMAGE, Collect, JOB_IMAGE, Scope};
use tokio_util::sync::CancellationToken;

fn spec(scope: &Scope, job_id: u64, project_id: u64, protected: bool) -> EnvironmentSpec {
    EnvironmentSpec {
        project_id,
        protected,
        ..scope.spec(job_id)
    }
}

/// The GitLab instance key of the scope's runner config (its warm roots are named by it).
fn instance(scope: &Scope) -> String {
    isolated_runner::job::trust::instance_key(&scope.runner_config().url)
}

fn warm_backend(scope: &Scope, tweak: impl FnOnce(&mut RunnerConfig)) -> Arc<dyn Isolation> {
    let mut cfg = scope.runner_config();
    cfg.docker.isolation.preload_images = vec![BUSYBOX_IMAGE.to_string()];
    cfg.docker.isolation.data_root = DataRoot::Project;
    tweak(&mut cfg);
    Arc::new(isolation::dind::DindBackend::new(
        scope.docker.clone(),
        Arc::new(cfg),
        scope.state_dir(),
    ))
}

/// Prepares a job, runs `script` in it, tears it down; returns (exit code, prepare log + output).
async fn job(backend: &Arc<dyn Isolation>, spec: &EnvironmentSpec, script: &str) -> (i32, String) {
    let out = Collect::new();
    let env = backend
        .prepare(spec, out.clone(), CancellationToken::new())
        .await
        .unwrap_or_else(|e| panic!("prepare failed: {e}\n{}", out.text()));
    let code = run(env.as_ref(), script, &out).await;
    let report = env.teardown().await;
    assert!(
        report.failures.is_empty(),
        "teardown failures: {:?}",
        report.failures
    );
    (code, out.text())
}

async fn run(env: &dyn JobEnvironment, script: &str, out: &Arc<Collect>) -> i32 {
    env.run_script(
        ScriptRequest {
            role: Role::Build,
            script: format!("set -eo pipefail\n{script}\n"),
            env: Vec::new(),
        },
        out.clone(),
        CancellationToken::new(),
    )
    .await
    .unwrap_or_else(|e| panic!("script error: {e}\n{}", out.text()))
}

async fn expect(backend: &Arc<dyn Isolation>, spec: &EnvironmentSpec, script: &str) -> String {
    let (code, text) = job(backend, spec, script).await;
    assert_eq!(code, 0, "job {} failed:\n{script}\n{text}", spec.job_id);
    text
}

async fn warm_volumes(scope: &Scope) -> Vec<String> {
    let mut v: Vec<String> = scope
        .docker
        .list_volumes(&[
            format!("{LABEL_WARM}=1"),
            format!("io.isolated-runner.runner={}", scope.runner_id),
        ])
        .await
        .expect("list volumes")
        .into_iter()
        .map(|v| v.name)
        .collect();
    v.sort();
    v
}

async fn remove_warm(scope: &Scope) {
    let r = data_root::remove_expired(
        &scope.docker,
        &scope.runner_id,
        &scope.state_dir(),
        None,
        false,
    )
    .await;
    assert!(r.failures.is_empty(), "{:?}", r.failures);
    assert!(warm_volumes(scope).await.is_empty());
    scope.assert_clean().await;
}

#[tokio::test]
async fn warm_roots_are_per_project_and_protection() {
    let scope = Scope::new().await;
    let backend = warm_backend(&scope, |_| {});
    const P: u64 = 7;
    const Q: u64 = 8;

    // An unprotected job of P plants a tag and leaves a container running.
    let text = expect(
        &backend,
        &spec(&scope, 11, P, false),
        &format!(
            "docker tag {BUSYBOX_IMAGE} poison:latest\n\
             docker run -d --name leftover {BUSYBOX_IMAGE} sleep 600"
        ),
    )
    .await;
    assert!(text.contains("(new, cold)"), "{text}");
    assert_eq!(
        warm_volumes(&scope).await,
        vec![data_root::volume_name(
            &scope.runner_id,
            &instance(&scope),
            P,
            false
        )],
        "teardown keeps the warm root"
    );

    // The reaper does not take it for a leftover.
    let reaped = isolation::reaper::reap(
        &scope.docker,
        &isolation::reaper::ReapRequest {
            runner_id: scope.runner_id.clone(),
            state_dir: scope.state_dir(),
            builds_dir: scope.builds_dir(),
            dry_run: false,
        },
    )
    .await;
    assert!(reaped.failures.is_empty(), "{:?}", reaped.failures);
    assert_eq!(warm_volumes(&scope).await.len(), 1, "reaper kept it");

    // A protected job of P does not see it.
    let text = expect(
        &backend,
        &spec(&scope, 12, P, true),
        "! docker image inspect poison:latest >/dev/null 2>&1",
    )
    .await;
    assert!(text.contains("(new, cold)"), "{text}");

    // A later unprotected job of P does (warmth), without the previous job's container.
    let text = expect(
        &backend,
        &spec(&scope, 13, P, false),
        "docker image inspect poison:latest >/dev/null\n\
         ! docker container inspect leftover >/dev/null 2>&1",
    )
    .await;
    assert!(text.contains("(warm)"), "{text}");

    // A job of Q does not.
    expect(
        &backend,
        &spec(&scope, 14, Q, false),
        "! docker image inspect poison:latest >/dev/null 2>&1",
    )
    .await;
    assert_eq!(warm_volumes(&scope).await.len(), 3);

    remove_warm(&scope).await;
}

/// `warm_pool` with warm roots: after a project's job, a sidecar is started on that root for
/// the project's next job at the same protection level (scrubbed, with the images), never for
/// another project or protection level. One root per key, so each slot is on the root the
/// last job left (with more, a slot starts ahead on another root: `warm_pool::a_projects_…`).
#[tokio::test]
async fn pre_started_sidecars_on_warm_roots_follow_their_project() {
    let scope = Scope::new().await;
    let backend = warm_backend(&scope, |c| {
        c.docker.isolation.warm_pool = 2;
        c.docker.isolation.data_root_per_key = 1;
    });
    const P: u64 = 17;
    const Q: u64 = 18;
    let text = expect(
        &backend,
        &spec(&scope, 21, P, false),
        &format!(
            "docker tag {BUSYBOX_IMAGE} poison:latest\n\
             docker run -d --name leftover {BUSYBOX_IMAGE} sleep 600"
        ),
    )
    .await;
    assert!(
        text.contains("(new, cold)") && !text.contains("pre-started"),
        "{text}"
    );
    // Now P's unprotected root has a sidecar starting; the protected level gets none of it.
    let text = expect(
        &backend,
        &spec(&scope, 22, P, true),
        "! docker image inspect poison:latest >/dev/null 2>&1",
    )
    .await;
    assert!(!text.contains("pre-started"), "{text}");
    // P's next unprotected job finds its sidecar ready: warm, scrubbed.
    let text = expect(
        &backend,
        &spec(&scope, 23, P, false),
        "docker image inspect poison:latest >/dev/null\n\
         ! docker container inspect leftover >/dev/null 2>&1",
    )
    .await;
    assert!(
        text.contains("pre-started") && text.contains("(warm;"),
        "{text}"
    );
    // Another project never gets P's.
    let text = expect(
        &backend,
        &spec(&scope, 24, Q, false),
        "! docker image inspect poison:latest >/dev/null 2>&1",
    )
    .await;
    assert!(!text.contains("pre-started"), "{text}");
    let report = backend.shutdown().await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert!(backend.standby_ids().is_empty());
    assert_eq!(warm_volumes(&scope).await.len(), 3);
    remove_warm(&scope).await;
}

#[tokio::test]
async fn a_busy_warm_root_gives_an_ephemeral_one_and_caps_apply() {
    let scope = Scope::new().await;
    // One root per key: its holder leaves the next job none.
    let backend = warm_backend(&scope, |c| c.docker.isolation.data_root_per_key = 1);
    const P: u64 = 9;
    expect(
        &backend,
        &spec(&scope, 21, P, false),
        &format!("docker tag {BUSYBOX_IMAGE} poison:latest"),
    )
    .await;

    // Another job holds it: this one runs cold on an ephemeral volume, at once.
    let naming = isolated_runner::isolation::data_root::volume_name(
        &scope.runner_id,
        &instance(&scope),
        P,
        false,
    );
    let held = data_root::acquire(
        &scope.docker,
        &WarmRequest {
            state_dir: &scope.state_dir(),
            runner_id: &scope.runner_id,
            instance: &instance(&scope),
            job_id: 29,
            timeout: Duration::from_secs(60),
            project_id: P,
            protected: false,
            max_size: None,
            max_age: None,
            per_key: 1,
            // The backend's own (its roots record their uid blocks on the rootless profile).
            uid_base: scope.runner_config().docker.isolation.warm_uid_base(),
            helper_image: JOB_IMAGE,
            inflight: &tokio_util::task::TaskTracker::new(),
        },
    )
    .await
    .expect("the warm root is free");
    assert_eq!(held.volume, naming);
    let text = expect(
        &backend,
        &spec(&scope, 22, P, false),
        "! docker image inspect poison:latest >/dev/null 2>&1",
    )
    .await;
    assert!(text.contains("in use by another job"), "{text}");
    // `runner cleanup` does not pull a held root from under its job.
    let r = data_root::remove_expired(
        &scope.docker,
        &scope.runner_id,
        &scope.state_dir(),
        None,
        true,
    )
    .await;
    assert!(r.kept.contains(&naming), "{r:?}");
    drop(held);

    // A size cap of one byte: the root is measured after the job and removed.
    let capped = warm_backend(&scope, |c| c.docker.isolation.data_root_max_size = Some(1));
    let (code, text) = job(&capped, &spec(&scope, 23, P, false), "true").await;
    assert_eq!(code, 0, "{text}");
    assert!(
        warm_volumes(&scope).await.is_empty(),
        "oversized root removed"
    );

    // An age cap the root is past: recreated cold.
    expect(
        &backend,
        &spec(&scope, 24, P, false),
        "docker tag isolated-runner/busybox:test poison:latest",
    )
    .await;
    let aged = warm_backend(&scope, |c| {
        c.docker.isolation.data_root_max_age = Some(Duration::from_secs(1))
    });
    // Wait on the condition "the root is older than its cap" (labels have second resolution).
    let vol = scope
        .docker
        .list_volumes(&[
            format!("{LABEL_WARM}=1"),
            format!("io.isolated-runner.runner={}", scope.runner_id),
        ])
        .await
        .expect("list volumes")
        .into_iter()
        .next()
        .expect("warm root");
    let created: u64 = vol.labels[data_root::LABEL_CREATED]
        .parse()
        .expect("created label");
    support::wait_for(
        "the warm root to pass its age cap",
        Duration::from_secs(10),
        || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() > created + 1)
                .unwrap_or(false)
        },
    )
    .await;
    let text = expect(
        &aged,
        &spec(&scope, 25, P, false),
        "! docker image inspect poison:latest >/dev/null 2>&1",
    )
    .await;
    assert!(text.contains("(new, cold)"), "{text}");

    remove_warm(&scope).await;
}

/// M4: a job on a warm root leaves a swarm, a managed plugin (made offline: a rootfs dir and
/// a config.json, nothing pulled) and a `--restart always` container behind. The next job of
/// the project, on its own sidecar and then on a pre-started one, finds Swarm inactive, no
/// plugin, no container, and no container start event since its daemon booted; the images
/// stayed warm.
#[tokio::test]
async fn scrub_removes_swarm_plugins_and_restart_policies() {
    let scope = Scope::new().await;
    let plant = format!(
        r#"docker tag {BUSYBOX_IMAGE} warm-marker:1
# eth0 in a rootful sidecar; tap0 (slirp4netns) in the namespace of a rootless daemon
docker swarm init --advertise-addr eth0 >/dev/null 2>&1 || docker swarm init --advertise-addr tap0 >/dev/null
test "$(docker info --format '{{{{.Swarm.LocalNodeState}}}}')" = active
mkdir -p /tmp/plug/rootfs
cat > /tmp/plug/config.json <<'JSON'
{{"description": "test plugin", "documentation": "-", "entrypoint": ["/bin/sh"],
 "interface": {{"types": ["docker.volumedriver/1.0"], "socket": "p.sock"}},
 "network": {{"type": "host"}}}}
JSON
docker plugin create ir-scrub-test /tmp/plug
test "$(docker plugin ls -q | wc -l)" = 1
docker run -d --restart always --pull=never --name keeper {BUSYBOX_IMAGE} sleep 100000
echo planted"#
    );
    let check = r#"test "$(docker info --format '{{.Swarm.LocalNodeState}}')" = inactive
test "$(docker plugin ls -q | wc -l)" = 0
test "$(docker ps -aq | wc -l)" = 0
started="$(docker events --since 0 --until "$(date +%s)" --filter type=container --filter event=start)"
test -z "$started"
docker image inspect warm-marker:1 >/dev/null
echo clean"#;
    for (pooled, project) in [(false, 31u64), (true, 32u64)] {
        let backend = warm_backend(&scope, |c| {
            c.docker.isolation.warm_pool = usize::from(pooled);
            // One root: the pre-started sidecar is on the root the planting job left (with
            // more roots, one starts ahead on another root when the job starts).
            c.docker.isolation.data_root_per_key = 1;
        });
        let text = expect(
            &backend,
            &spec(&scope, 40 + project, project, false),
            &plant,
        )
        .await;
        assert!(text.contains("planted"), "{text}");
        let text = expect(&backend, &spec(&scope, 50 + project, project, false), check).await;
        assert!(text.contains("clean"), "{text}");
        assert!(!text.contains("could not be scrubbed"), "{text}");
        assert_eq!(
            text.contains("pre-started"),
            pooled,
            "pooled={pooled}: the next job's sidecar:\n{text}"
        );
        let report = backend.shutdown().await;
        assert!(report.failures.is_empty(), "{:?}", report.failures);
    }
    remove_warm(&scope).await;
}

/// Prepares a job and returns it with its prepare log and the warm root it got (`None`:
/// ephemeral), read from the log line every warm job prints.
async fn prepare_on_root(
    backend: &Arc<dyn Isolation>,
    spec: &EnvironmentSpec,
) -> (Box<dyn JobEnvironment>, String, Option<String>) {
    let out = Collect::new();
    let env = backend
        .prepare(spec, out.clone(), CancellationToken::new())
        .await
        .unwrap_or_else(|e| panic!("prepare failed: {e}\n{}", out.text()));
    let text = out.text();
    let root = text.lines().find_map(|l| {
        let rest = l.split("Using the warm data root ").nth(1)?;
        rest.split_whitespace().next().map(str::to_string)
    });
    (env, text, root)
}

/// The host uid a rootless sidecar's daemon runs as (`IR_ROOTLESS_UID` of its environment).
fn rootless_uid(env: &dyn JobEnvironment) -> String {
    let sidecar = env.resources().sidecar.expect("a sidecar");
    let out = std::process::Command::new("docker")
        .args([
            "inspect",
            "-f",
            "{{range .Config.Env}}{{println .}}{{end}}",
            &sidecar,
        ])
        .output()
        .expect("docker inspect");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("IR_ROOTLESS_UID=").map(str::to_string))
        .expect("a rootless sidecar names its uid")
}

/// `data_root_per_key`: two parallel jobs of one project and protection level each get a warm
/// root of their own (two volumes, and on the rootless profile two host uid blocks), and both
/// start warm the next time; a job of another project running beside them gets neither.
#[tokio::test]
async fn parallel_jobs_of_one_project_each_get_their_own_warm_root() {
    let scope = Scope::new().await;
    let backend = warm_backend(&scope, |c| {
        c.docker.isolation.sidecar_profile = isolated_runner::config::SidecarProfile::Rootless;
        c.docker.isolation.data_root_per_key = 2;
    });
    const P: u64 = 31;
    const Q: u64 = 32;
    let first_of_p = data_root::volume_name(&scope.runner_id, &instance(&scope), P, false);
    let (sa, sb, sc) = (
        spec(&scope, 41, P, false),
        spec(&scope, 42, P, false),
        spec(&scope, 43, Q, false),
    );
    let ((a, ta, ra), (b, tb, rb), (c, tc, rc)) = tokio::join!(
        prepare_on_root(&backend, &sa),
        prepare_on_root(&backend, &sb),
        prepare_on_root(&backend, &sc),
    );
    let (ra, rb, rc) = (
        ra.unwrap_or_else(|| panic!("job a ran cold:\n{ta}")),
        rb.unwrap_or_else(|| panic!("job b ran cold:\n{tb}")),
        rc.unwrap_or_else(|| panic!("job c ran cold:\n{tc}")),
    );
    assert_ne!(ra, rb, "two live daemons on one warm root");
    for r in [&ra, &rb] {
        assert!(
            r.starts_with(&first_of_p),
            "{r} is not a root of project {P}"
        );
    }
    assert!(
        !rc.starts_with(&first_of_p),
        "project {Q}'s job got project {P}'s root {rc}"
    );
    let uids = [
        rootless_uid(a.as_ref()),
        rootless_uid(b.as_ref()),
        rootless_uid(c.as_ref()),
    ];
    assert_ne!(uids[0], uids[1], "two jobs' inner roots share host uids");
    assert_ne!(uids[0], uids[2]);
    assert_ne!(uids[1], uids[2]);
    // What a job leaves in its root stays with that root, for its project only.
    let tag = "docker tag isolated-runner/busybox:test poison:latest";
    assert_eq!(run(a.as_ref(), tag, &Collect::new()).await, 0);
    for env in [a, b, c] {
        let report = env.teardown().await;
        assert!(report.failures.is_empty(), "{:?}", report.failures);
    }
    assert_eq!(warm_volumes(&scope).await.len(), 3);

    // Both of P's next parallel jobs start warm, each on one of P's two roots.
    let (sa, sb) = (spec(&scope, 44, P, false), spec(&scope, 45, P, false));
    let ((a, ta, ra), (b, tb, rb)) = tokio::join!(
        prepare_on_root(&backend, &sa),
        prepare_on_root(&backend, &sb)
    );
    for (t, r) in [(&ta, &ra), (&tb, &rb)] {
        assert!(t.contains("(warm)"), "{t}");
        assert!(
            r.as_deref().is_some_and(|r| r.starts_with(&first_of_p)),
            "{t}"
        );
    }
    assert_ne!(ra, rb);
    // Each runs under the block its root recorded when it was made, and no two roots record
    // the same one (a block follows the root, never its name: two names cannot collide).
    for (env, root) in [(&a, &ra), (&b, &rb)] {
        let root = root.as_deref().expect("a warm root");
        assert_eq!(rootless_uid(env.as_ref()), recorded_uid(root), "{root}");
    }
    let mut recorded: Vec<String> = warm_volumes(&scope)
        .await
        .iter()
        .map(|v| recorded_uid(v))
        .collect();
    recorded.sort();
    recorded.dedup();
    assert_eq!(recorded.len(), 3, "{recorded:?}");
    for env in [a, b] {
        let report = env.teardown().await;
        assert!(report.failures.is_empty(), "{:?}", report.failures);
    }
    remove_warm(&scope).await;
}

/// The uid block a warm root's labels record (`io.isolated-runner.uid`).
fn recorded_uid(volume: &str) -> String {
    let out = std::process::Command::new("docker")
        .args([
            "volume",
            "inspect",
            "-f",
            &format!("{{{{index .Labels \"{}\"}}}}", data_root::LABEL_UID),
            volume,
        ])
        .output()
        .expect("docker volume inspect");
    let uid = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(!uid.is_empty(), "{volume} records no uid block");
    uid
}

/// A warm root made before roots recorded their uid block (its files belong to a block the
/// runner can no longer name) is started over on the rootless profile, once: the job runs
/// cold on a fresh root that records its block, and the next job of the project is warm.
#[tokio::test]
async fn a_warm_root_without_a_recorded_uid_block_starts_over() {
    use isolated_runner::docker::{LABEL_ROLE, LABEL_RUNNER};
    let scope = Scope::new().await;
    let backend = warm_backend(&scope, |c| {
        c.docker.isolation.sidecar_profile = isolated_runner::config::SidecarProfile::Rootless;
    });
    const P: u64 = 33;
    let volume = data_root::volume_name(&scope.runner_id, &instance(&scope), P, false);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    // The labels a runner of the previous release gave a root.
    let old = std::collections::HashMap::from([
        (LABEL_WARM.to_string(), "1".to_string()),
        (LABEL_RUNNER.to_string(), scope.runner_id.clone()),
        (data_root::LABEL_INSTANCE.to_string(), instance(&scope)),
        (data_root::LABEL_PROJECT.to_string(), P.to_string()),
        (data_root::LABEL_PROTECTED.to_string(), "false".to_string()),
        (data_root::LABEL_CREATED.to_string(), now.to_string()),
        (LABEL_ROLE.to_string(), "data-warm".to_string()),
    ]);
    scope
        .docker
        .create_volume(&volume, &old)
        .await
        .expect("an old warm root");

    let (env, text, root) = prepare_on_root(&backend, &spec(&scope, 51, P, false)).await;
    assert_eq!(root.as_deref(), Some(volume.as_str()), "{text}");
    assert!(text.contains("(new, cold)"), "{text}");
    let block = recorded_uid(&volume);
    assert_eq!(rootless_uid(env.as_ref()), block);
    let tag = "docker tag isolated-runner/busybox:test kept:latest";
    assert_eq!(run(env.as_ref(), tag, &Collect::new()).await, 0);
    let report = env.teardown().await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);

    // Once: the next job is warm on it, under the same block.
    let text = expect(
        &backend,
        &spec(&scope, 52, P, false),
        "docker image inspect kept:latest >/dev/null",
    )
    .await;
    assert!(text.contains("(warm)"), "{text}");
    assert_eq!(recorded_uid(&volume), block);
    remove_warm(&scope).await;
}

/// A warm root's sidecar is stopped gracefully at teardown (its dockerd must leave the root
/// consistent). The runner's own streams to that daemon must be closed first: dockerd waits up
/// to 5 s for open requests before it exits, and on the rootless profile the runner holds one
/// for the job's whole life (the watch for limits the daemon drops). The sidecar's log says
/// which shutdown it was: "Error shutting down http server" when a request was still open.
#[tokio::test]
async fn a_warm_sidecar_stops_without_waiting_for_the_runners_streams() {
    use futures::StreamExt;
    let scope = Scope::new().await;
    let backend = warm_backend(&scope, |c| {
        c.docker.isolation.sidecar_profile = isolated_runner::config::SidecarProfile::Rootless;
    });
    let s = spec(&scope, 61, 33, false);
    let out = Collect::new();
    let env = backend
        .prepare(&s, out.clone(), CancellationToken::new())
        .await
        .unwrap_or_else(|e| panic!("prepare failed: {e}\n{}", out.text()));
    assert_eq!(
        run(
            env.as_ref(),
            "docker run --rm --pull=never isolated-runner/busybox:test true",
            &out
        )
        .await,
        0,
        "{}",
        out.text()
    );
    let sidecar = env.resources().sidecar.expect("a sidecar");
    // Everything the sidecar writes from here to its end (the attach ends when it stops).
    let mut log = scope.docker.attach_output(&sidecar).await.expect("attach");
    let collected = tokio::spawn(async move {
        let mut text = String::new();
        while let Some(Ok(chunk)) = log.next().await {
            let (isolated_runner::docker::Output::Stdout(b)
            | isolated_runner::docker::Output::Stderr(b)) = chunk;
            text.push_str(&String::from_utf8_lossy(&b));
        }
        text
    });
    let report = env.teardown().await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    let log = tokio::time::timeout(Duration::from_secs(60), collected)
        .await
        .expect("the sidecar's output ends with it")
        .expect("collector");
    assert!(
        log.contains("Daemon shutdown complete"),
        "the warm sidecar's dockerd did not shut down gracefully:\n{log}"
    );
    assert!(
        !log.contains("Error shutting down http server"),
        "dockerd waited for a request still open at its graceful stop:\n{log}"
    );
    remove_warm(&scope).await;
}
