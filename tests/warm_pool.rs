//! The warm pool against the real engine: jobs take pre-started sidecars, see their own
//! directories at the identical path (through the sidecar and its inner containers) and
//! nothing of another job; a job the slot's certificates cannot cover starts its own sidecar;
//! shutdown and the reaper leave nothing behind. Every test works in a `Scope` and ends with
//! `assert_clean`.

mod support;

use isolated_runner::isolation::{self, Isolation};
use std::sync::Arc;
use std::time::Duration;
use support::docker::{BUSYBOX_IMAGE, Scope};
use support::security::{config, dind_with, expect_ok, prepare_logged as prepare, spec, teardown};

/// A dind backend keeping one sidecar started ahead of jobs.
fn pooled(scope: &Scope) -> Arc<dyn Isolation> {
    dind_with(scope, config(scope, |c| c.docker.isolation.warm_pool = 1))
}

/// A job spec with `timeout`.
fn spec_for(scope: &Scope, job_id: u64, timeout: Duration) -> isolation::EnvironmentSpec {
    let mut s = spec(scope, job_id);
    s.timeout = timeout;
    s
}

/// What the job's daemon sees at `<builds_dir>`, from an inner container.
fn list_builds_dir(builds: &std::path::Path) -> String {
    format!(
        "docker run --rm --pull=never -v {b}:/b {BUSYBOX_IMAGE} ls -a /b | grep -v '^\\.*$' | sort | tr '\\n' ' '; echo",
        b = builds.display()
    )
}

/// The sidecar container of slot `id`, once it exists.
async fn sidecar_of(scope: &Scope, id: u64) -> String {
    let f = isolated_runner::docker::label_filters(&scope.runner_id, Some(id));
    for _ in 0..600 {
        let list = scope.docker.list_containers(&f).await.expect("list");
        if let Some(c) = list.iter().find(|c| c.name.ends_with("-sidecar")) {
            return c.id.clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("slot {id} has no sidecar after 60 s");
}

/// `HostConfig.CpuShares` of a container, as the engine reports it.
fn cpu_shares(id: &str) -> String {
    let out = std::process::Command::new("docker")
        .args(["inspect", "-f", "{{.HostConfig.CpuShares}}", id])
        .output()
        .expect("docker inspect");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test]
async fn jobs_take_pre_started_sidecars_and_see_only_their_own_files() {
    let scope = Scope::new().await;
    let backend = pooled(&scope);
    backend.warm_up(&scope.runner_id).await;
    assert_eq!(
        backend.standby_ids().len(),
        1,
        "warm_up starts one slot at once"
    );
    assert!(
        backend
            .standby_ids()
            .iter()
            .all(|&id| isolation::pool::is_slot_id(id))
    );

    // While no job has it, the slot's sidecar runs at a low CPU weight.
    let slot = backend.standby_ids()[0];
    let slot_sidecar = sidecar_of(&scope, slot).await;
    assert_eq!(cpu_shares(&slot_sidecar), "128");

    // Job A takes the slot (waiting for it to finish if it is still starting).
    let (a, said) = prepare(&backend, &spec_for(&scope, 601, Duration::from_secs(3600))).await;
    assert!(said.contains("pre-started"), "{said}");
    assert_eq!(
        a.resources().sidecar.as_deref(),
        Some(slot_sidecar.as_str())
    );
    assert_eq!(
        cpu_shares(&slot_sidecar),
        "1024",
        "the job's sidecar gets the default weight"
    );
    let pd = a.paths().project_dir.clone();
    assert_eq!(pd, scope.builds_dir().join("gitlab-job-601"));
    assert!(
        std::fs::symlink_metadata(&pd)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    std::fs::write(pd.join("marker.txt"), "from-the-runner").unwrap();
    let text = expect_ok(
        a.as_ref(),
        &format!(
            r#"
set -o pipefail
test "$DOCKER_HOST" = tcp://docker:2376
cd {pd}
test "$(cat marker.txt)" = from-the-runner
# Identical path through the job's daemon: what compose's ./:/app does.
test "$(docker run --rm --pull=never -v {pd}:/app {BUSYBOX_IMAGE} cat /app/marker.txt)" = from-the-runner
docker run --rm --pull=never -v {pd}:/app {BUSYBOX_IMAGE} sh -c 'echo inner > /app/from-inner'
echo "A sees: $({list})"
"#,
            list = list_builds_dir(&scope.builds_dir()),
            pd = pd.display()
        ),
    )
    .await;
    assert!(
        text.contains("A sees: gitlab-job-601 gitlab-job-601.tmp \n"),
        "the job's daemon must see exactly its own directories under builds_dir:\n{text}"
    );
    assert_eq!(
        std::fs::read_to_string(pd.join("from-inner")).unwrap(),
        "inner\n"
    );
    // `runner cleanup` (even told that every unowned dir is stale) keeps a live pooled job's
    // links and its slot: the links count as the slot's, whose runner is alive.
    let plan = isolated_runner::cleanup::plan(
        Some(&scope.docker),
        &isolated_runner::cleanup::Request {
            builds_dirs: vec![scope.builds_dir()],
            state_dir: scope.state_dir(),
            caches: Vec::new(),
            older_than: Duration::ZERO,
            dry_run: true,
            netpolicy: None,
            own_runner_ids: vec![scope.runner_id.clone()],
            cache_pruner: None,
            label_filter: Some(format!("io.isolated-runner.runner={}", scope.runner_id)),
        },
    )
    .await;
    let doomed: Vec<&str> = plan.items.iter().map(|i| i.name.as_str()).collect();
    assert!(
        !doomed.iter().any(|n| n.contains("gitlab-job-")),
        "cleanup would remove a live pooled job's files: {doomed:?}"
    );

    // Job B gets the slot built after A took the first; A's files are not in its world.
    let (b, said) = prepare(&backend, &spec_for(&scope, 602, Duration::from_secs(3600))).await;
    assert!(said.contains("pre-started"), "{said}");
    let text = expect_ok(
        b.as_ref(),
        &format!(
            "set -o pipefail\necho \"B sees: $({})\"\ntest ! -e {}/gitlab-job-601",
            list_builds_dir(&scope.builds_dir()),
            scope.builds_dir().display()
        ),
    )
    .await;
    assert!(
        text.contains("B sees: gitlab-job-602 gitlab-job-602.tmp \n"),
        "{text}"
    );

    // A job longer than a slot's certificates start its own sidecar; the pool stays.
    let (c, said) = prepare(
        &backend,
        &spec_for(&scope, 603, Duration::from_secs(30 * 24 * 3600)),
    )
    .await;
    assert!(
        said.contains("Job docker daemon ready in") && !said.contains("pre-started"),
        "{said}"
    );
    expect_ok(c.as_ref(), "docker info >/dev/null").await;

    for env in [a, b, c] {
        teardown(env).await;
    }
    // The slot refilled after B is idle now (or still starting): shutdown removes it.
    assert!(!backend.standby_ids().is_empty());
    let report = backend.shutdown().await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert!(backend.standby_ids().is_empty());
    scope.assert_clean().await;
}

#[test]
fn idle_slots_of_a_dead_runner_are_reaped() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let scope = rt.block_on(Scope::new());
    // The "runner": its own runtime, dropped (all its tasks die) once its slot's sidecar runs.
    let dead = tokio::runtime::Runtime::new().unwrap();
    dead.block_on(async {
        let backend = pooled(&scope);
        backend.warm_up(&scope.runner_id).await;
        let f = isolated_runner::docker::label_filters(&scope.runner_id, None);
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            let running = scope
                .docker
                .list_containers(&f)
                .await
                .unwrap()
                .into_iter()
                .any(|c| c.running);
            if running {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the slot's sidecar never ran"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Let the slot get ready, so the crash leaves a complete one.
        tokio::time::sleep(Duration::from_secs(3)).await;
    });
    dead.shutdown_timeout(Duration::from_secs(1));

    rt.block_on(async {
        let req = isolation::reaper::ReapRequest {
            runner_id: scope.runner_id.clone(),
            state_dir: scope.state_dir(),
            builds_dir: scope.builds_dir(),
            dry_run: false,
        };
        let done = isolation::reaper::reap(&scope.docker, &req).await;
        assert!(done.failures.is_empty(), "{:?}", done.failures);
        for kind in ["container ir-", "network ir-", "volume ir-", "dir "] {
            assert!(
                done.removed.iter().any(|f| f.starts_with(kind)),
                "the reaper missed a slot's {kind}: {:?}",
                done.removed
            );
        }
        scope.assert_clean().await;
    });
}
