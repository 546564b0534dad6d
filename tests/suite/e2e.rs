//! End-to-end: real jobs through the real daemon (`daemon::run_with` + `job::RunnerExecutor`)
//! against the fake GitLab over HTTP, with the dind backend on this machine's engine. Every test
//! asserts the job's outcome as GitLab saw it, then that nothing of its runner is left.
//!
//! Needs the test images (`tests/images/build`); a missing image fails the test with that hint.

use crate::support;

use std::time::Duration;
use support::e2e::{E2e, JOB_TIMEOUT, push_var};
use support::fake_gitlab::SECRET_VALUE;

const COMPOSE: &str = r#"services:
  web:
    image: isolated-runner/busybox:test
    pull_policy: never
    command: ["sh", "-c", "echo written-by-compose > /app/from-compose.txt && exec httpd -f -p 8080 -h /app/www"]
    volumes:
      - ./:/app
    ports:
      - "8080:8080"
"#;

/// A compose stack on the job's own (pre-started) daemon, over a real clone: `./` bind mounts
/// see the checkout, `-v "$PWD":/x` too, and a published port answers at `docker:<port>`. Also: the
/// masked variable is masked in the stored trace, sections are marked, the clone is honest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_stack_sees_the_clone_and_publishes_ports() {
    let w = E2e::new().await;
    let sha = w
        .fake
        .create_repo(
            "compose",
            &[
                ("compose.yaml", COMPOSE),
                ("www/index.html", "hello-from-compose\n"),
            ],
            Some(31),
        )
        .await;
    let mut job = w.job(
        1001,
        &[
            "echo \"secret is $SECRET\"",
            "test \"$(git rev-parse HEAD)\" = \"$CI_COMMIT_SHA_EXPECTED\"",
            "docker compose up -d",
            // Written by the service through ./:/app, read from the checkout.
            "for i in $(seq 1 100); do [ -f \"$CI_PROJECT_DIR/from-compose.txt\" ] && break; sleep 0.2; done",
            "test \"$(cat \"$CI_PROJECT_DIR/from-compose.txt\")\" = written-by-compose",
            "docker run --rm -v \"$PWD\":/x isolated-runner/busybox:test cat /x/www/index.html",
            "for i in $(seq 1 50); do (exec 3<>/dev/tcp/docker/8080) 2>/dev/null && break; sleep 0.2; done",
            "exec 3<>/dev/tcp/docker/8080; printf 'GET /index.html HTTP/1.0\\r\\nHost: docker\\r\\n\\r\\n' >&3; grep hello-from-compose <&3 | sed 's/^/port says: /'",
            "echo compose-app OK",
        ],
        &["docker compose down -v --remove-orphans"],
    );
    w.with_repo(&mut job, "compose", &sha, 31);
    push_var(&mut job, "CI_COMMIT_SHA_EXPECTED", &sha, true);
    let id = w.fake.enqueue(job);
    // With a warm pool: the daemon pre-starts a sidecar at start-up and the job takes it, so
    // the clone, compose's `./` mounts and the published port all go through a slot.
    let mut config = w.config(1);
    config.runners[0].docker.isolation.warm_pool = 1;
    let daemon = w.start_daemon(config);
    let f = w.wait_final(id, JOB_TIMEOUT).await;
    daemon.drain(JOB_TIMEOUT).await;
    let trace = w.trace(id);
    assert_eq!(
        (f.state.as_str(), f.failure_reason.as_deref()),
        ("success", None),
        "trace:\n{trace}"
    );
    assert!(trace.contains("pre-started"), "{trace}");
    assert!(trace.contains("compose-app OK"), "{trace}");
    assert!(trace.contains("port says: hello-from-compose"), "{trace}");
    assert!(
        trace.contains(&format!("Checking out {} as main", &sha[..8])),
        "{trace}"
    );
    assert!(trace.contains("secret is [MASKED]"), "{trace}");
    assert!(
        !trace.contains(SECRET_VALUE),
        "masked value leaked:\n{trace}"
    );
    for s in [
        "prepare_executor",
        "get_sources",
        "step_script",
        "after_script",
    ] {
        assert!(
            trace.contains("section_start:") && trace.contains(s),
            "section {s} missing:\n{trace}"
        );
    }
    assert!(w.fake.violations().is_empty(), "{:?}", w.fake.violations());
    w.scope.assert_clean().await;
}

/// A job that only waits: the test releases it by writing `release` into its project dir.
const WAIT_FOR_RELEASE: &str = "echo waiting-for-release; until [ -f \"$CI_PROJECT_DIR/release\" ]; do sleep 0.2; done; echo released";

/// Releases a job started with [`WAIT_FOR_RELEASE`], from the host side of its directory.
async fn release(w: &E2e, job: u64) {
    let dir = w.scope.builds_dir().join(format!("gitlab-job-{job}"));
    tokio::fs::write(dir.join("release"), b"go")
        .await
        .unwrap_or_else(|e| panic!("write release file in {}: {e}", dir.display()));
}

fn assert_state(
    w: &E2e,
    id: u64,
    f: &support::fake_gitlab::FinalUpdate,
    want: (&str, Option<&str>, Option<i64>),
) {
    assert_eq!(
        (f.state.as_str(), f.failure_reason.as_deref(), f.exit_code),
        want,
        "job {id}; trace:\n{}",
        w.trace(id)
    );
}

/// Sources over smart HTTP with the job token as GitLab sends it: clone with refspecs and depth,
/// the sha checked out, the token nowhere in `.git`; `fetch` in a fresh job dir says it starts
/// from nothing; `none` leaves an empty dir; a wrong token fails the job with git's own line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_clone_fetch_none_and_a_wrong_token() {
    let w = E2e::new().await;
    let sha = w
        .fake
        .create_repo("demo", &[("README.md", "hello from the repo\n")], Some(41))
        .await;
    let mut clone = w.job(
        1101,
        &[
            "test \"$(git rev-parse HEAD)\" = \"$WANT_SHA\"",
            "test \"$(cat README.md)\" = 'hello from the repo'",
            "git rev-parse --verify -q refs/pipelines/41 >/dev/null",
            "git rev-parse --verify -q refs/remotes/origin/main >/dev/null",
            "echo \"origin is $(git remote get-url origin)\"",
            "if grep -rqF \"$CI_JOB_TOKEN\" .git; then echo TOKEN-IN-GIT-DIR; exit 9; fi",
            "if git config --list | grep -qi authorization; then echo AUTH-IN-GIT-CONFIG; exit 9; fi",
            "echo clone-ok",
        ],
        &[],
    );
    w.with_repo(&mut clone, "demo", &sha, 41);
    push_var(&mut clone, "GIT_STRATEGY", "clone", true);
    push_var(&mut clone, "WANT_SHA", &sha, true);

    let mut fetch = w.job(
        1102,
        &[
            "test \"$(git rev-parse HEAD)\" = \"$WANT_SHA\"",
            "echo fetch-ok",
        ],
        &[],
    );
    w.with_repo(&mut fetch, "demo", &sha, 41);
    push_var(&mut fetch, "GIT_STRATEGY", "fetch", true);
    push_var(&mut fetch, "WANT_SHA", &sha, true);

    // `w.job` sets GIT_STRATEGY=none; the repo is still named, as GitLab always sends one.
    let mut none = w.job(
        1103,
        &[
            "test -d \"$CI_PROJECT_DIR\"",
            "test -z \"$(ls -A \"$CI_PROJECT_DIR\")\"",
            "echo none-ok",
        ],
        &[],
    );
    let none_vars = none["variables"].clone();
    w.with_repo(&mut none, "demo", &sha, 41);
    none["variables"] = none_vars;

    let mut wrong = w.job(1104, &["echo must-not-run"], &[]);
    w.with_repo(&mut wrong, "demo", &sha, 41);
    wrong["git_info"]["repo_url"] = w.repo_url("demo", "glcbt-wrongtoken1104").into();

    for j in [clone, fetch, none, wrong] {
        w.fake.enqueue(j);
    }
    let daemon = w.start_daemon(w.config(1));
    let c = w.wait_final(1101, JOB_TIMEOUT).await;
    let f = w.wait_final(1102, JOB_TIMEOUT).await;
    let n = w.wait_final(1103, JOB_TIMEOUT).await;
    let x = w.wait_final(1104, JOB_TIMEOUT).await;
    daemon.drain(JOB_TIMEOUT).await;

    assert_state(&w, 1101, &c, ("success", None, None));
    let t = w.trace(1101);
    assert!(
        t.contains("Fetching changes with git depth set to 20"),
        "{t}"
    );
    assert!(t.contains("Created fresh repository"), "{t}");
    assert!(
        t.contains(&format!("Checking out {} as main", &sha[..8])),
        "{t}"
    );
    assert!(
        t.contains(&format!("origin is http://{}/git/demo.git", w.git_addr)),
        "{t}"
    );
    assert!(t.contains("clone-ok"), "{t}");

    assert_state(&w, 1102, &f, ("success", None, None));
    let t = w.trace(1102);
    // Every job gets a new directory, so a fetch has nothing to reuse; the log says so.
    assert!(t.contains("Created fresh repository"), "{t}");
    assert!(t.contains("GIT_STRATEGY=fetch"), "{t}");
    assert!(t.contains("fetch-ok"), "{t}");

    assert_state(&w, 1103, &n, ("success", None, None));
    let t = w.trace(1103);
    assert!(t.contains("Skipping Git repository setup"), "{t}");
    assert!(t.contains("none-ok"), "{t}");

    assert_eq!(x.state, "failed", "{}", w.trace(1104));
    let t = w.trace(1104);
    assert!(!t.contains("must-not-run\n"), "{t}");
    assert!(
        !t.contains("glcbt-wrongtoken1104"),
        "the wrong token is masked too:\n{t}"
    );
    assert!(
        t.contains("Authentication failed")
            || t.contains("could not read Username")
            || t.contains("401"),
        "no clear git auth line:\n{t}"
    );
    assert!(w.fake.violations().is_empty(), "{:?}", w.fake.violations());
    w.scope.assert_clean().await;
}

/// Two jobs at once: each daemon shows only its own containers; A cannot reach B's sidecar with
/// its certificate or without one; no host socket; host paths outside the job directory (a
/// marker, the config file, the state dir) are not visible through the job's daemon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_jobs_are_isolated_end_to_end() {
    let w = E2e::new().await;
    // Host-side files a job must not see.
    let secret_dir = w
        .scope
        .tmp
        .path()
        .join(format!("host-only-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&secret_dir).unwrap();
    let marker = format!("HOSTMARKER{}", uuid::Uuid::new_v4().simple());
    std::fs::write(secret_dir.join("marker"), &marker).unwrap();
    let config_file = w.scope.tmp.path().join("config.toml");
    let config_marker = format!("CONFIGMARKER{}", uuid::Uuid::new_v4().simple());
    std::fs::write(&config_file, format!("# {config_marker}\nconcurrent = 2\n")).unwrap();
    let state = w.scope.state_dir();

    let b = w.job(
        1202,
        &[
            "docker run -d --name only-in-b isolated-runner/busybox:test sleep 600 >/dev/null",
            WAIT_FOR_RELEASE,
        ],
        &[],
    );
    w.fake.enqueue(b);
    let daemon = w.start_daemon(w.config(2));
    w.wait_trace(1202, "waiting-for-release", JOB_TIMEOUT).await;
    let b_ip = w.sidecar_ip(1202).await;

    let mut a = w.job(
        1201,
        &[
            "test ! -e /var/run/docker.sock",
            "test \"$DOCKER_HOST\" = tcp://docker:2376",
            "docker run -d --name only-in-a isolated-runner/busybox:test sleep 600 >/dev/null",
            "docker ps --format '{{.Names}}' > /tmp/names",
            "grep -qx only-in-a /tmp/names",
            "if grep -q only-in-b /tmp/names; then echo SEES-B; exit 9; fi",
            // B's daemon with A's certificate: the TLS handshake fails both ways.
            "if timeout 10 docker -H \"tcp://$B_IP:2376\" ps; then echo A-CERT-REACHES-B; exit 9; fi",
            // Without a certificate: no answer either.
            "if timeout 10 curl -sk --max-time 5 \"https://$B_IP:2376/_ping\"; then echo NOCERT-REACHES-B; exit 9; fi",
            "if timeout 10 curl -s --max-time 5 \"http://$B_IP:2376/_ping\"; then echo PLAIN-REACHES-B; exit 9; fi",
            // Host paths through the job's daemon: an empty directory at best.
            "docker run --rm -v \"$MARKER_DIR\":/h isolated-runner/busybox:test cat /h/marker || echo marker-not-visible",
            "docker run --rm -v \"$CONFIG_DIR\":/c isolated-runner/busybox:test cat /c/config.toml || echo config-not-visible",
            "echo \"state-entries=$(docker run --rm -v \"$STATE_DIR\":/s isolated-runner/busybox:test ls -A /s | wc -l)\"",
            "echo \"builds-entries=$(docker run --rm -v \"$CI_BUILDS_DIR\":/b isolated-runner/busybox:test ls -A /b | grep -c gitlab-job-1202)\" || true",
            "echo isolation-ok",
        ],
        &[],
    );
    push_var(&mut a, "B_IP", &b_ip, true);
    push_var(&mut a, "MARKER_DIR", &secret_dir.to_string_lossy(), true);
    push_var(
        &mut a,
        "CONFIG_DIR",
        &w.scope.tmp.path().to_string_lossy(),
        true,
    );
    push_var(&mut a, "STATE_DIR", &state.to_string_lossy(), true);
    w.fake.enqueue(a);
    let fa = w.wait_final(1201, JOB_TIMEOUT).await;
    release(&w, 1202).await;
    let fb = w.wait_final(1202, JOB_TIMEOUT).await;
    daemon.drain(JOB_TIMEOUT).await;

    assert_state(&w, 1201, &fa, ("success", None, None));
    assert_state(&w, 1202, &fb, ("success", None, None));
    let t = w.trace(1201);
    assert!(t.contains("isolation-ok"), "{t}");
    assert!(!t.contains(&marker), "host marker visible:\n{t}");
    assert!(!t.contains(&config_marker), "config file visible:\n{t}");
    assert!(t.contains("state-entries=0"), "state dir visible:\n{t}");
    assert!(t.contains("builds-entries=0"), "B's job dir visible:\n{t}");
    let tb = w.trace(1202);
    assert!(tb.contains("released"), "{tb}");
    w.scope.assert_clean().await;
}

/// Script failure with its exit code, a failing step that may fail, and a job timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_failure_allow_failure_and_timeout() {
    let w = E2e::new().await;
    let fail = w.job(
        1301,
        &["echo before-fail", "exit 3", "echo not-reached"],
        &["echo \"after sees $CI_JOB_STATUS\""],
    );
    let mut allowed = w.job(1302, &["echo main-ok"], &["echo after-ran"]);
    // A step of its own that may fail, between script and after_script, as GitLab orders them.
    allowed["steps"].as_array_mut().unwrap().insert(
        1,
        serde_json::json!({"name": "lint", "script": ["echo linting", "exit 4"], "timeout": 600,
                           "when": "on_success", "allow_failure": true}),
    );
    let mut slow = w.job(
        1303,
        &["echo slow-started", "sleep 600"],
        &["echo after-timeout"],
    );
    slow["runner_info"]["timeout"] = serde_json::json!(30);
    for j in [fail, allowed, slow] {
        w.fake.enqueue(j);
    }
    let daemon = w.start_daemon(w.config(1));
    let f1 = w.wait_final(1301, JOB_TIMEOUT).await;
    let f2 = w.wait_final(1302, JOB_TIMEOUT).await;
    let f3 = w.wait_final(1303, JOB_TIMEOUT).await;
    daemon.drain(JOB_TIMEOUT).await;

    assert_state(&w, 1301, &f1, ("failed", Some("script_failure"), Some(3)));
    let t = w.trace(1301);
    assert!(
        t.contains("before-fail") && !t.contains("not-reached\n"),
        "{t}"
    );
    assert!(t.contains("after sees failed"), "{t}");

    assert_state(&w, 1302, &f2, ("success", None, None));
    let t = w.trace(1302);
    assert!(
        t.contains("linting") && t.contains("allowed to fail"),
        "{t}"
    );
    assert!(t.contains("after-ran"), "{t}");

    assert_state(
        &w,
        1303,
        &f3,
        ("failed", Some("job_execution_timeout"), None),
    );
    w.scope.assert_clean().await;
}

/// A job image with no bash (busybox, `sh` only): the runner picks sh, as gitlab-runner does, and
/// the generated script runs there. Variables expand, after_script sees the status, and a
/// failing command fails the job with its own exit code; a passing job on the same image passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sh_only_image_runs_jobs_with_sh() {
    let w = E2e::new().await;
    let image = json_image(support::docker::BUSYBOX_IMAGE);
    // GitLab sends before_script joined to script in the `script` step.
    let mut fail = w.job(
        1401,
        &[
            "echo \"before: $GREETING\"",
            "test ! -e /bin/bash && echo no-bash-here",
            "echo \"script: $GREETING in $CI_PROJECT_DIR\"",
            "sh -c 'exit 7'",
            "echo not-reached",
        ],
        &["echo \"after sees $CI_JOB_STATUS\""],
    );
    fail["image"] = image.clone();
    push_var(&mut fail, "GREETING", "hello  from sh", true);
    let mut ok = w.job(1402, &["echo ok-on-sh", "true | cat"], &[]);
    ok["image"] = image;
    w.fake.enqueue(fail);
    w.fake.enqueue(ok);
    let daemon = w.start_daemon(w.config(1));
    let f1 = w.wait_final(1401, JOB_TIMEOUT).await;
    let f2 = w.wait_final(1402, JOB_TIMEOUT).await;
    daemon.drain(JOB_TIMEOUT).await;

    assert_state(&w, 1401, &f1, ("failed", Some("script_failure"), Some(7)));
    let t = w.trace(1401);
    for needle in [
        "before: hello  from sh\n",
        "no-bash-here\n",
        "script: hello  from sh in /",
        "$ sh -c 'exit 7'",
        "after sees failed\n",
    ] {
        assert!(t.contains(needle), "missing {needle:?}:\n{t}");
    }
    assert!(!t.contains("not-reached\n"), "{t}");
    assert!(!t.contains("bash: not found"), "{t}");
    assert_state(&w, 1402, &f2, ("success", None, None));
    assert!(w.trace(1402).contains("ok-on-sh\n"));
    w.scope.assert_clean().await;
}

/// `[runners.docker] extra_hosts`, `dns` and `dns_search` reach the job container's `/etc/hosts`
/// and `/etc/resolv.conf`, and the DNS settings reach containers the job starts on its own daemon.
/// No name is looked up: the addresses are only written into the files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extra_hosts_and_dns_reach_the_job_and_its_daemon() {
    let w = E2e::new().await;
    let job = w.job(
        1501,
        &[
            "sed 's/^/hosts: /' /etc/hosts",
            "sed 's/^/resolv: /' /etc/resolv.conf",
            &format!(
                "docker run --rm {} cat /etc/resolv.conf | sed 's/^/inner: /'",
                support::docker::BUSYBOX_IMAGE
            ),
        ],
        &[],
    );
    w.fake.enqueue(job);
    let mut config = w.config(1);
    let d = &mut config.runners[0].docker;
    d.extra_hosts = vec!["gitlab.corp.test:10.99.0.7".to_string()];
    d.dns = vec!["10.99.0.53".parse().expect("ip")];
    d.dns_search = vec!["corp.test".to_string()];
    let daemon = w.start_daemon(config);
    let f = w.wait_final(1501, JOB_TIMEOUT).await;
    daemon.drain(JOB_TIMEOUT).await;
    assert_state(&w, 1501, &f, ("success", None, None));
    let t = w.trace(1501);
    let has = |prefix: &str, words: &[&str]| {
        t.lines().any(|l| {
            l.strip_prefix(prefix)
                .is_some_and(|rest| rest.split_whitespace().eq(words.iter().copied()))
        })
    };
    assert!(has("hosts: ", &["10.99.0.7", "gitlab.corp.test"]), "{t}");
    assert!(has("resolv: ", &["search", "corp.test"]), "{t}");
    assert!(has("inner: ", &["nameserver", "10.99.0.53"]), "{t}");
    assert!(has("inner: ", &["search", "corp.test"]), "{t}");
    w.scope.assert_clean().await;
}

fn json_image(name: &str) -> serde_json::Value {
    serde_json::json!({"name": name, "entrypoint": null, "ports": [], "pull_policy": null})
}

/// Cancel through GitLab mid-script: `canceling` runs after_script, `canceled` does not; the
/// sidecar is gone soon after either. after_script proves it ran by calling the fake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_mid_script_graceful_and_hard() {
    use support::fake_gitlab::CancelKind;
    let w = E2e::new().await;
    let after = format!(
        "curl -s -o /dev/null \"http://{}/git/after-ran-$CI_JOB_ID\"; echo after-ran",
        w.git_addr
    );
    for (id, kind) in [(1401, CancelKind::Canceling), (1402, CancelKind::Canceled)] {
        w.fake
            .enqueue(w.job(id, &["echo long-running", "sleep 600"], &[&after]));
        let daemon = w.start_daemon(w.config(1));
        w.wait_trace(id, "long-running", JOB_TIMEOUT).await;
        assert!(!w.containers(Some(id), Some("sidecar")).await.is_empty());
        w.fake.cancel(id, kind);
        w.wait_no_containers(id, Duration::from_secs(90)).await;
        assert!(
            support::wait_until(Duration::from_secs(60), || w.fake.job_state(id).as_deref()
                == Some("canceled"))
            .await,
            "job {id} state {:?}",
            w.fake.job_state(id)
        );
        daemon.drain(JOB_TIMEOUT).await;
        let called = w
            .fake
            .requests()
            .iter()
            .any(|r| r.path == format!("/git/after-ran-{id}"));
        match kind {
            CancelKind::Canceling => {
                assert!(
                    called,
                    "after_script did not run on canceling:\n{}",
                    w.trace(id)
                );
                assert!(w.trace(id).contains("after-ran"), "{}", w.trace(id));
            }
            CancelKind::Canceled => assert!(!called, "after_script ran after a hard cancel"),
        }
    }
    w.scope.assert_clean().await;
}

/// The job's daemon dies mid-job (the sidecar is killed from outside): a system failure, with
/// everything cleaned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_sidecar_fails_the_job_as_a_system_failure() {
    let w = E2e::new().await;
    w.fake
        .enqueue(w.job(1501, &["echo long-running", "sleep 600"], &["echo after"]));
    let daemon = w.start_daemon(w.config(1));
    w.wait_trace(1501, "long-running", JOB_TIMEOUT).await;
    let sidecar = w.containers(Some(1501), Some("sidecar")).await;
    let sidecar = &sidecar.first().expect("sidecar running").id;
    w.scope
        .docker
        .kill_container(sidecar)
        .await
        .expect("kill the sidecar");
    let f = w.wait_final(1501, Duration::from_secs(120)).await;
    daemon.drain(JOB_TIMEOUT).await;
    assert_state(
        &w,
        1501,
        &f,
        ("failed", Some("runner_system_failure"), None),
    );
    let t = w.trace(1501);
    assert!(
        t.contains("docker daemon"),
        "no line about the job's daemon:\n{t}"
    );
    w.scope.assert_clean().await;
}

/// The built `runner run` binary with a config file (0600, state and builds dirs under the
/// test's temp dir): a failing job is reported with its exit code and a masked secret; SIGQUIT
/// mid-job lets the running job finish (with a step that may fail) and then exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_binary_runs_jobs_and_drains_on_sigquit() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    use std::os::unix::fs::PermissionsExt;
    let mut w = E2e::new().await;
    // The binary labels what it creates with its system id: pin it so the leak checks (and
    // the scope's sweep) look for exactly this runner.
    let system_id = format!("s_{}", &w.scope.runner_id[2..14]);
    let state = w.scope.state_dir();
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join(".runner_system_id"), format!("{system_id}\n")).unwrap();
    w.scope.runner_id = system_id;
    let cfg = w.scope.tmp.path().join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"concurrent = 1
check_interval = 1
shutdown_timeout = 60
state_dir = "{state}"

[[runners]]
name = "e2e-binary"
url = "http://{git}/"
clone_url = "http://127.0.0.1:1/"
token = "{token}"
executor = "docker"
builds_dir = "{builds}"

[runners.docker]
image = "isolated-runner/job:test"

[runners.docker.isolation]
sidecar_image = "isolated-runner/dind:test"
preload_images = ["isolated-runner/busybox:test"]
root_store = "off"
ready_timeout = "90s"
"#,
            state = state.display(),
            git = w.git_addr,
            token = support::fake_gitlab::RUNNER_TOKEN,
            builds = w.scope.builds_dir().display(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).unwrap();

    w.fake.enqueue(w.job(
        1601,
        &["echo \"the secret is $SECRET\"", "exit 3"],
        &["echo after-failure"],
    ));
    let mut draining = w.job(1602, &[WAIT_FOR_RELEASE], &["echo after-drain"]);
    draining["steps"].as_array_mut().unwrap().insert(
        1,
        serde_json::json!({"name": "lint", "script": ["exit 4"], "timeout": 600,
                           "when": "on_success", "allow_failure": true}),
    );
    w.fake.enqueue(draining);

    let log = std::fs::File::create(w.scope.tmp.path().join("runner.log")).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(["run", "-c"])
        .arg(&cfg)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("start runner run");
    let runner_log =
        || std::fs::read_to_string(w.scope.tmp.path().join("runner.log")).unwrap_or_default();

    let f1 = w.wait_final(1601, JOB_TIMEOUT).await;
    assert_state(&w, 1601, &f1, ("failed", Some("script_failure"), Some(3)));
    let t = w.trace(1601);
    assert!(
        t.contains("the secret is [MASKED]") && !t.contains(SECRET_VALUE),
        "{t}"
    );
    assert!(
        t.contains("section_start:") && t.contains("step_script"),
        "{t}"
    );
    assert!(t.contains("after-failure"), "{t}");
    // The binary's backend is wrapped (metrics, the journal, pulling) and still gets the
    // job's image as the pull policy says (a wrapper once dropped that call).
    assert!(
        t.contains("Using docker image ") && t.contains(" for isolated-runner/job:test"),
        "{t}"
    );

    w.wait_trace(1602, "waiting-for-release", JOB_TIMEOUT).await;
    let pid = Pid::from_raw(child.id().expect("runner pid") as i32);
    kill(pid, Signal::SIGQUIT).expect("send SIGQUIT");
    // Draining: the job is still running, so the runner must be too.
    assert!(
        !support::wait_until(Duration::from_secs(2), || w
            .fake
            .final_state(1602)
            .is_some())
        .await
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "runner exited while a job ran:\n{}",
        runner_log()
    );
    release(&w, 1602).await;
    let status = tokio::time::timeout(JOB_TIMEOUT, child.wait())
        .await
        .expect("runner exits after draining")
        .unwrap();
    assert!(
        status.success(),
        "runner exit {status}; log:\n{}",
        runner_log()
    );
    let f2 = w
        .fake
        .final_state(1602)
        .expect("job finished before the runner exited");
    assert_state(&w, 1602, &f2, ("success", None, None));
    let t = w.trace(1602);
    assert!(
        t.contains("released") && t.contains("allowed to fail") && t.contains("after-drain"),
        "{t}"
    );
    assert!(w.fake.violations().is_empty(), "{:?}", w.fake.violations());
    w.scope.assert_clean().await;
}

/// `CI_CONCURRENT_ID` and `CI_CONCURRENT_PROJECT_ID` as gitlab-runner sets them: three jobs
/// running at once on one runner entry get the indexes 0, 1 and 2; the two of project 7 get
/// project indexes 0 and 1, the one of project 8 gets 0 (freed indexes being reused is the
/// unit test of `daemon::concurrent_id`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_ids_are_the_smallest_free_per_runner_and_per_project() {
    let w = E2e::new().await;
    // Long enough that the three overlap however their sidecars' starts spread.
    let script = [
        "echo IDS=$CI_CONCURRENT_ID/$CI_CONCURRENT_PROJECT_ID",
        "sleep 20",
    ];
    for (id, project) in [(3101, 7), (3102, 7), (3103, 8)] {
        let mut j = w.job(id, &script, &[]);
        j["job_info"]["project_id"] = serde_json::json!(project);
        w.fake.enqueue(j);
    }
    let daemon = w.start_daemon(w.config(3));
    let ids = |id: u64| -> (String, String) {
        let t = w.trace(id);
        let line = t
            .lines()
            .find_map(|l| l.strip_prefix("IDS="))
            .unwrap_or_else(|| panic!("job {id} printed no ids:\n{t}"))
            .trim()
            .to_string();
        let (r, p) = line.split_once('/').expect("two ids");
        (r.to_string(), p.to_string())
    };
    for id in 3101..=3103 {
        let f = w.wait_final(id, JOB_TIMEOUT).await;
        assert_eq!(f.state, "success", "{}", w.trace(id));
    }
    let (a, b, c) = (ids(3101), ids(3102), ids(3103));
    let mut runner_ids = vec![a.0.clone(), b.0.clone(), c.0.clone()];
    runner_ids.sort();
    assert_eq!(runner_ids, ["0", "1", "2"], "{a:?} {b:?} {c:?}");
    let mut project7 = vec![a.1.clone(), b.1.clone()];
    project7.sort();
    assert_eq!(project7, ["0", "1"], "{a:?} {b:?}");
    assert_eq!(c.1, "0", "project 8: {c:?}");

    daemon.drain(JOB_TIMEOUT).await;
    w.scope.assert_clean().await;
}
