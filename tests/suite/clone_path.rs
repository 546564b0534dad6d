//! `GIT_CLONE_PATH` inside the builds dir, on the real engine: the project directory is at
//! that path in the job's containers and in the job's own daemon (`docker run -v "$PWD"` and
//! compose's `./:/app` from there see the checkout), on a sidecar of the job's own, on a
//! pre-started one (warm pool) and on the shared socket. Two jobs with the same path never
//! share a directory. Every test ends with nothing of its runner left.

use crate::support;

use isolated_runner::isolation::{EnvironmentSpec, JobEnvironment};
use std::path::PathBuf;
use support::docker::{Collect, Scope};
use support::docker::{expect_project_script_ok as expect_ok, run_project_script as run};
use support::security::{prepare, teardown};
use tokio_util::sync::CancellationToken;

/// A GOPATH-style clone path, as gitlab-runner's docs show it.
fn clone_path(scope: &Scope) -> PathBuf {
    scope.builds_dir().join("go/src/example.com/demo")
}

fn spec(scope: &Scope, job_id: u64) -> EnvironmentSpec {
    EnvironmentSpec {
        clone_path: Some(clone_path(scope)),
        ..scope.spec(job_id)
    }
}

/// Writes `text` into the job's project directory the way the runner does (its real
/// directory), and checks the job sees it at the clone path, alone and through its daemon:
/// `docker run -v "$PWD"` and a compose file's `./:/app`.
async fn sees_its_checkout_at_the_clone_path(scope: &Scope, env: &dyn JobEnvironment, text: &str) {
    let want = clone_path(scope);
    assert_eq!(env.paths().project_dir, want);
    let real = env.host_dirs().project_dir.clone();
    assert_ne!(real, want, "the runner never works through the clone path");
    std::fs::write(real.join("marker.txt"), text).unwrap();
    let label = format!("io.isolated-runner.runner={}", scope.runner_id);
    let out = expect_ok(
        env,
        &format!(
            r#"test "$PWD" = {want}
test "$CI_PROJECT_DIR" = {want}
echo "job sees $(cat marker.txt)"
echo "daemon sees $(docker run --rm --pull never --label {label} -v "$PWD":/x isolated-runner/busybox:test cat /x/marker.txt)"
cat > compose.yaml <<'EOF'
services:
  web:
    image: isolated-runner/busybox:test
    pull_policy: never
    labels: ["{label}"]
    command: ["sh", "-c", "cat /app/marker.txt > /app/from-compose.txt"]
    volumes:
      - ./:/app
EOF
docker compose -p cp-{text} up --exit-code-from web >/dev/null
docker compose -p cp-{text} down >/dev/null 2>&1
echo "compose wrote $(cat from-compose.txt)""#,
            want = want.display(),
        ),
    )
    .await;
    for who in ["job sees", "daemon sees", "compose wrote"] {
        assert!(out.contains(&format!("{who} {text}")), "{who}: {out}");
    }
    // What compose wrote through `./` is in the job's real directory.
    assert_eq!(
        std::fs::read_to_string(real.join("from-compose.txt"))
            .unwrap()
            .trim(),
        text
    );
}

/// A sidecar of the job's own: it binds the project directory at the clone path. Two jobs
/// with the same clone path run side by side, each with its own directory.
#[tokio::test]
async fn own_sidecars_bind_the_clone_path_and_jobs_share_nothing() {
    let scope = Scope::new().await;
    let backend = scope.dind(scope.config(|_| {}));
    let (sa, sb) = (spec(&scope, 701), spec(&scope, 702));
    let (a, b) = tokio::join!(prepare(&backend, &sa), prepare(&backend, &sb));
    assert_ne!(a.host_dirs().project_dir, b.host_dirs().project_dir);
    tokio::join!(
        sees_its_checkout_at_the_clone_path(&scope, a.as_ref(), "job-701"),
        sees_its_checkout_at_the_clone_path(&scope, b.as_ref(), "job-702"),
    );
    // Nothing at the clone path on the host: only containers see it.
    assert!(!scope.builds_dir().join("go").exists());
    teardown(a).await;
    teardown(b).await;
    scope.assert_clean().await;
}

/// A pre-started sidecar (made before the job was known): the clone path is a link in its
/// file system to the slot's directory, made by the runner before the job runs.
#[tokio::test]
async fn a_pre_started_sidecar_links_the_clone_path() {
    let scope = Scope::new().await;
    let backend = scope.dind(scope.config(|c| c.docker.isolation.warm_pool = 1));
    backend.warm_up(&scope.runner_id).await;
    let env = prepare(&backend, &spec(&scope, 711)).await;
    assert!(
        env.host_dirs()
            .project_dir
            .file_name()
            .is_some_and(|n| n != "gitlab-job-711"),
        "the job took a slot"
    );
    sees_its_checkout_at_the_clone_path(&scope, env.as_ref(), "pooled-711").await;
    assert!(!scope.builds_dir().join("go").exists());
    teardown(env).await;
    backend.shutdown().await;
    scope.assert_clean().await;
}

/// The shared socket resolves bind sources on the host: the clone path is a host link to the
/// job's directory while the job runs, a second job asking for the same path is refused
/// (instead of sharing it), and teardown removes the link and the directories it made.
#[tokio::test]
async fn the_shared_socket_links_the_clone_path_on_the_host_for_one_job() {
    let scope = Scope::new().await;
    let backend = scope.shared_socket();
    let env = prepare(&backend, &spec(&scope, 721)).await;
    let link = clone_path(&scope);
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    sees_its_checkout_at_the_clone_path(&scope, env.as_ref(), "shared-721").await;
    let second = backend
        .prepare(&spec(&scope, 722), Collect::new(), CancellationToken::new())
        .await;
    match second {
        Err(e) => assert!(e.to_string().contains("another job"), "{e}"),
        Ok(_) => panic!("a second job got the same clone path"),
    }
    // The refused job left the first one's link alone.
    assert!(std::fs::symlink_metadata(&link).is_ok());
    let (r, text) = run(env.as_ref(), "cat marker.txt").await;
    assert_eq!(r.ok(), Some(0), "{text}");
    teardown(env).await;
    assert!(!scope.builds_dir().join("go").exists());
    scope.assert_clean().await;
}
