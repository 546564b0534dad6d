//! End-to-end: the built binary's `runner exec` on the compose example and on a failing job,
//! each in a copy under a temp dir so the working tree stays clean. Needs the test images
//! (`tests/images/build`).

use crate::support;

use std::path::{Path, PathBuf};
use support::docker::Scope;

/// Copies a directory tree (hidden files included).
fn copy_tree(from: &Path, to: &Path) {
    for entry in walkdir::WalkDir::new(from).min_depth(1) {
        let entry = entry.expect("walk the example");
        let rel = entry.path().strip_prefix(from).expect("inside the example");
        let dest = to.join(rel);
        if entry.file_type().is_dir() {
            std::fs::create_dir_all(&dest).expect("mkdir");
        } else {
            std::fs::copy(entry.path(), &dest).expect("copy");
        }
    }
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `runner exec <job> -c config/exec.toml` in `dir`; returns (exit code, stdout+stderr).
async fn exec(dir: &Path, job: &str) -> (Option<i32>, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_runner"))
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .args(["exec", job, "-c"])
        .arg(repo_root().join("config/exec.toml"))
        .output()
        .await
        .expect("runner exec runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// `exec` labels everything with the runner id `exec`; the job id is in the job dir's name.
async fn assert_exec_job_clean(scope: &Scope, output: &str) {
    let id: u64 = output
        .split("gitlab-job-")
        .nth(1)
        .and_then(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .unwrap_or_else(|| panic!("no job dir named in the output:\n{output}"));
    let f = isolated_runner::docker::label_filters("exec", Some(id));
    let c = scope.docker.list_containers(&f).await.expect("list");
    assert!(c.is_empty(), "containers left: {c:?}");
    let n = scope.docker.list_networks(&f).await.expect("list");
    assert!(
        n.is_empty(),
        "networks left: {:?}",
        n.iter().map(|n| &n.name).collect::<Vec<_>>()
    );
    let v = scope.docker.list_volumes(&f).await.expect("list");
    assert!(
        v.is_empty(),
        "volumes left: {:?}",
        v.iter().map(|v| &v.name).collect::<Vec<_>>()
    );
    for dir in [
        format!("/tmp/isolated-runner/builds/gitlab-job-{id}"),
        format!("/tmp/isolated-runner/builds/gitlab-job-{id}.tmp"),
        format!(
            "{}/certs/exec/job-{id}",
            isolated_runner::isolation::DEFAULT_STATE_DIR
        ),
    ] {
        assert!(!Path::new(&dir).exists(), "{dir} left behind");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_runs_the_compose_example() {
    let scope = Scope::new().await; // fails with the tests/images/build hint when images are missing
    let work = tempfile::tempdir().expect("tempdir");
    copy_tree(&repo_root().join("examples/compose-app"), work.path());
    assert!(work.path().join(".gitlab-ci.yml").exists());
    let (code, out) = exec(work.path(), "test").await;
    assert_eq!(code, Some(0), "output:\n{out}");
    assert!(out.contains("compose-app OK"), "{out}");
    assert_exec_job_clean(&scope, &out).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_of_a_failing_job_exits_1() {
    let scope = Scope::new().await;
    let work = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        work.path().join(".gitlab-ci.yml"),
        "fail:\n  image: isolated-runner/job:test\n  script:\n    - echo about-to-fail\n    - exit 5\n",
    )
    .expect("write ci file");
    let (code, out) = exec(work.path(), "fail").await;
    assert_eq!(code, Some(1), "output:\n{out}");
    assert!(
        out.contains("about-to-fail") && out.contains("exit code 5"),
        "{out}"
    );
    assert_exec_job_clean(&scope, &out).await;
}

/// `runner exec` of jobs whose image has no bash (busybox: `sh` only): before_script, script and
/// after_script run with sh; variables expand; a failing command fails the job with its code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_runs_jobs_on_an_sh_only_image() {
    let scope = Scope::new().await;
    let work = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        work.path().join(".gitlab-ci.yml"),
        r#"variables:
  GREETING: "hello  from sh"
default:
  image: isolated-runner/busybox:test
  before_script:
    - 'echo "before: $GREETING"'
  after_script:
    - echo "after sees $CI_JOB_STATUS"
sh-ok:
  script:
    - test ! -e /bin/bash && echo no-bash-here
    - 'echo "script: $GREETING"'
sh-fail:
  script:
    - echo about-to-fail
    - sh -c 'exit 6'
    - echo not-reached
"#,
    )
    .expect("write ci file");
    let (code, out) = exec(work.path(), "sh-ok").await;
    assert_eq!(code, Some(0), "output:\n{out}");
    for needle in [
        "before: hello  from sh\n",
        "no-bash-here\n",
        "script: hello  from sh\n",
        "after sees success\n",
    ] {
        assert!(out.contains(needle), "missing {needle:?}:\n{out}");
    }
    assert_exec_job_clean(&scope, &out).await;

    let (code, out) = exec(work.path(), "sh-fail").await;
    assert_eq!(code, Some(1), "output:\n{out}");
    assert!(
        out.contains("about-to-fail") && out.contains("exit code 6"),
        "{out}"
    );
    assert!(!out.contains("not-reached\n"), "{out}");
    assert!(out.contains("after sees failed\n"), "{out}");
    assert_exec_job_clean(&scope, &out).await;
}
