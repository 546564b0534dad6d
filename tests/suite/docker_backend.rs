//! The isolation backends against the real engine: sidecar readiness over mTLS, identical-path
//! mounts, compose, published ports, cross-job isolation, teardown on every path, the reaper.
//! Every test works inside a `Scope` (a uuid runner id labelling all it creates) and ends by
//! asserting that nothing with that label, and no directory, is left.

use crate::support;

use isolated_runner::config::{IsolationMode, RunnerConfig, SidecarProfile};
use isolated_runner::isolation::{
    self, EnvironmentSpec, Error, Isolation, JobEnvironment, OutputSink, Role, ScriptRequest,
    TeardownReport,
};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::docker::{
    COMPOSE_PROJECT_SCRIPT, Collect, JOB_IMAGE, Scope, assert_compose_project_ran,
    write_compose_project,
};
// The build-script runner shared by docker_backend and rootless (support/docker.rs).
use support::docker::{expect_project_script_ok as expect_ok, run_project_script as run};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(120);

fn dind(scope: &Scope, tweak: impl FnOnce(&mut RunnerConfig)) -> Arc<dyn Isolation> {
    scope.dind(scope.config(tweak))
}

async fn prepare(
    backend: &Arc<dyn Isolation>,
    spec: &EnvironmentSpec,
) -> (Box<dyn JobEnvironment>, Arc<Collect>) {
    let out = Collect::new();
    let t = Instant::now();
    let env = backend
        .prepare(spec, out.clone(), CancellationToken::new())
        .await
        .unwrap_or_else(|e| panic!("prepare failed: {e}\n{}", out.text()));
    eprintln!(
        "job {} prepared in {:.2}s: {}",
        spec.job_id,
        t.elapsed().as_secs_f64(),
        out.text().trim()
    );
    (env, out)
}

/// Tears `env` down, asserts nothing failed, its network went and the engine is clean;
/// returns the report for a test's own checks.
async fn teardown(scope: &Scope, env: Box<dyn JobEnvironment>) -> TeardownReport {
    let report = env.teardown().await;
    assert!(
        report.failures.is_empty(),
        "teardown failures: {:?}",
        report.failures
    );
    assert!(
        report.removed.iter().any(|r| r.starts_with("network")),
        "{:?}",
        report.removed
    );
    scope.assert_clean().await;
    report
}

#[tokio::test]
async fn dind_ready_over_mtls_docker_info_and_identical_path_mounts() {
    let scope = Scope::new().await;
    let backend = dind(&scope, |_| {});
    let (env, _) = prepare(&backend, &scope.spec(101)).await;
    assert_eq!(backend.mode(), IsolationMode::Dind);
    let pd = env.paths().project_dir.clone();
    assert!(pd.ends_with("gitlab-job-101"));
    std::fs::write(pd.join("marker.txt"), "from-the-runner").unwrap();

    let text = expect_ok(
        env.as_ref(),
        r#"
test "$DOCKER_HOST" = tcp://docker:2376
test ! -e /var/run/docker.sock && echo no-host-socket
docker info --format 'server={{.ServerVersion}} driver={{.Driver}}'
HOME=/tmp setpriv --reuid=65534 --regid=65534 --clear-groups docker version --format 'non-root-client={{.Server.Version}}'
docker run --rm --pull never -v "$PWD":/x isolated-runner/busybox:test cat /x/marker.txt; echo
docker run --rm --pull never -v "$CI_PROJECT_DIR":"$CI_PROJECT_DIR" -w "$CI_PROJECT_DIR" isolated-runner/busybox:test sh -c 'echo inner > from-inner.txt'
docker network create mtu-net >/dev/null
echo "inner-mtu=$(docker run --rm --pull never --network mtu-net isolated-runner/busybox:test cat /sys/class/net/eth0/mtu)"
echo "inner-bridge-mtu=$(docker run --rm --pull never isolated-runner/busybox:test cat /sys/class/net/eth0/mtu)"
echo "job-mtu=$(cat /sys/class/net/eth0/mtu)"
"#,
    )
    .await;
    assert!(text.contains("no-host-socket"), "{text}");
    // A non-root user of the job image reaches the job's daemon with DOCKER_CERT_PATH.
    assert!(text.contains("non-root-client="), "{text}");
    assert!(
        text.contains("driver=overlay2"),
        "inner daemon must not fall back to vfs: {text}"
    );
    assert!(text.contains("from-the-runner"), "{text}");
    assert_eq!(
        std::fs::read_to_string(pd.join("from-inner.txt"))
            .unwrap()
            .trim(),
        "inner"
    );
    let host_mtu = text
        .lines()
        .find_map(|l| l.strip_prefix("job-mtu="))
        .unwrap()
        .to_string();
    // Inner networks take the MTU of the daemon's uplink: the job network's where inner traffic
    // is routed onto it (hardened), the user-mode network's 65520 for rootless (slirp4netns
    // segments onto the job network itself; docs/benchmarks.md has why 65520).
    let want = match scope.runner_config().docker.isolation.sidecar_profile {
        isolated_runner::config::SidecarProfile::Rootless => "65520".to_string(),
        _ => host_mtu,
    };
    assert!(
        text.contains(&format!("inner-mtu={want}")),
        "compose-style networks inherit the uplink's MTU: {text}"
    );
    assert!(text.contains(&format!("inner-bridge-mtu={want}")), "{text}");
    // Cost of a container per script (attach), printed for the report, never asserted.
    let t = Instant::now();
    for _ in 0..5 {
        expect_ok(env.as_ref(), "true").await;
    }
    eprintln!(
        "script container round trip: {:.0} ms",
        t.elapsed().as_secs_f64() * 1000.0 / 5.0
    );
    teardown(&scope, env).await;
}

/// A job image running as a non-root user (`--user 65534`, as GitLab's dind setup allows)
/// reads the client half of its certificates through the mounted `DOCKER_CERT_PATH`. (On the
/// host, the server half stays out of other users' reach: `paths` unit tests.)
#[tokio::test]
async fn a_non_root_job_user_can_read_its_client_certificates() {
    use isolated_runner::docker::{
        ContainerSpec, LABEL_JOB, LABEL_MANAGED, LABEL_RUNNER, MountSpec,
    };
    use isolated_runner::paths::JobId;
    let scope = Scope::new().await;
    const JOB: u64 = 130;
    let pki = isolated_runner::pki::issue_job_pki(&isolated_runner::pki::PkiRequest::for_sidecar(
        JOB,
        "10.0.0.2".parse().expect("ip"),
        Duration::from_secs(600),
    ))
    .expect("issue certificates");
    let certs = isolated_runner::paths::write_cert_dir(
        &scope.state_dir(),
        &scope.runner_id,
        JobId::new(JOB),
        &pki,
    )
    .await
    .expect("write certificates");
    let spec = ContainerSpec {
        name: format!("ir-{}-{JOB}-nonroot", scope.runner_id),
        image: JOB_IMAGE.to_string(),
        entrypoint: Some(vec![]),
        cmd: Some(vec![
            "sh".into(),
            "-c".into(),
            format!(
                "id -u; cd {dir} && cat ca.pem cert.pem key.pem",
                dir = isolation::CLIENT_CERT_PATH
            ),
        ]),
        user: Some("65534:65534".to_string()),
        labels: [
            (LABEL_MANAGED, "1".to_string()),
            (LABEL_RUNNER, scope.runner_id.clone()),
            (LABEL_JOB, JOB.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect(),
        mounts: vec![MountSpec::Bind {
            source: certs.client.display().to_string(),
            target: isolation::CLIENT_CERT_PATH.to_string(),
            read_only: true,
        }],
        ..Default::default()
    };
    let docker = &scope.docker;
    let id = docker.create_container(&spec).await.expect("create");
    docker.start_container(&id).await.expect("start");
    let code = docker.wait_container(&id).await.expect("wait");
    let logs = docker.logs_tail(&id, 200).await.expect("logs");
    assert!(docker.remove_container(&id).await.expect("remove"));
    assert!(
        isolated_runner::paths::remove_cert_dir(&certs)
            .await
            .expect("remove certs")
    );
    assert_eq!(code, 0, "uid 65534 could not read the client half:\n{logs}");
    assert!(logs.starts_with("65534"), "{logs}");
    let key = pki.client.key_pem.expose();
    assert!(
        logs.contains(key.trim()),
        "the key read is not the client key:\n{logs}"
    );
    assert!(logs.contains(pki.client.cert_pem.trim()));
    scope.assert_clean().await;
}

#[tokio::test]
async fn compose_bind_mount_and_published_port() {
    let scope = Scope::new().await;
    let backend = dind(&scope, |_| {});
    let (env, _) = prepare(&backend, &scope.spec(102)).await;
    let pd = env.paths().project_dir.clone();
    write_compose_project(&pd);
    let text = expect_ok(env.as_ref(), COMPOSE_PROJECT_SCRIPT).await;
    assert_compose_project_ran(&pd, &text);
    teardown(&scope, env).await;
}

#[tokio::test]
async fn two_jobs_are_isolated_from_each_other() {
    let scope = Scope::new().await;
    let backend = dind(&scope, |_| {});
    let (sa, sb) = (scope.spec(201), scope.spec(202));
    let ((a, _), (b, _)) = tokio::join!(prepare(&backend, &sa), prepare(&backend, &sb));
    expect_ok(
        b.as_ref(),
        "docker run -d --pull never --name only-in-b isolated-runner/busybox:test sleep 300",
    )
    .await;
    let b_sidecar = scope
        .docker
        .inspect_container(&format!("ir-{}-202-sidecar", scope.runner_id))
        .await
        .unwrap();
    let b_ip = b_sidecar.ips.values().next().unwrap().clone();
    let a_text = expect_ok(
        a.as_ref(),
        &format!(
            r#"
echo "a-sees=[$(docker ps -a --format '{{{{.Names}}}}')]"
if curl -sS --max-time 3 --cacert /certs/client/ca.pem --cert /certs/client/cert.pem --key /certs/client/key.pem https://{b_ip}:2376/_ping; then echo REACHED-WITH-CERT; fi
if curl -sSk --max-time 3 https://{b_ip}:2376/_ping; then echo REACHED-WITHOUT-CERT; fi
if DOCKER_HOST=tcp://{b_ip}:2376 DOCKER_TLS_VERIFY= timeout 5 docker ps; then echo REACHED-PLAIN; fi
test ! -S /var/run/docker.sock && echo no-host-socket
"#
        ),
    )
    .await;
    assert!(
        a_text.contains("a-sees=[]"),
        "job A must not see B's containers: {a_text}"
    );
    assert!(
        !a_text.contains("REACHED"),
        "job A reached B's daemon: {a_text}"
    );
    assert!(a_text.contains("no-host-socket"));
    let b_text = expect_ok(b.as_ref(), "docker ps --format '{{.Names}}'").await;
    assert!(b_text.contains("only-in-b"));
    // Even on a shared network, A's certificate is not accepted by B's daemon (per-job CA): try
    // it from the runner host, which can route to both bridges.
    let a_certs = scope
        .state_dir()
        .join("certs")
        .join(&scope.runner_id)
        .join("job-201/client");
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "3", "-k"])
        .arg("--cert")
        .arg(a_certs.join("cert.pem"))
        .arg("--key")
        .arg(a_certs.join("key.pem"))
        .arg(format!("https://{b_ip}:2376/_ping"))
        .output();
    if let Ok(o) = out {
        assert_ne!(
            String::from_utf8_lossy(&o.stdout).trim(),
            "OK",
            "B's daemon accepted A's certificate"
        );
    }
    for env in [a, b] {
        let r = env.teardown().await;
        assert!(r.failures.is_empty(), "{:?}", r.failures);
    }
    scope.assert_clean().await;
}

#[tokio::test]
async fn teardown_is_clean_after_script_failure() {
    let scope = Scope::new().await;
    let backend = dind(&scope, |c| c.docker.isolation.preload_images.clear());
    let (env, _) = prepare(&backend, &scope.spec(301)).await;
    let (r, text) = run(env.as_ref(), "echo out; echo err >&2; exit 3").await;
    assert_eq!(r.ok(), Some(3), "{text}");
    assert!(text.contains("out") && text.contains("err"));
    teardown(&scope, env).await;
}

#[tokio::test]
async fn cancel_kills_the_script_and_teardown_is_clean() {
    let scope = Scope::new().await;
    let backend = dind(&scope, |c| c.docker.isolation.preload_images.clear());
    let (env, _) = prepare(&backend, &scope.spec(302)).await;
    let out = Collect::new();
    let cancel = CancellationToken::new();
    let env = Arc::new(env);
    let task = {
        let (env, out, cancel) = (env.clone(), out.clone(), cancel.clone());
        tokio::spawn(async move {
            env.run_script(
                ScriptRequest {
                    role: Role::Build,
                    script: "echo started; sleep 600".into(),
                    env: vec![],
                },
                out as Arc<dyn OutputSink>,
                cancel,
            )
            .await
        })
    };
    out.wait_for("started", WAIT).await;
    cancel.cancel();
    let r = tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("cancel is prompt")
        .unwrap();
    assert!(matches!(r, Err(Error::Canceled)), "{r:?}");
    let env = Arc::try_unwrap(env).ok().expect("single owner");
    teardown(&scope, env).await;
}

#[tokio::test]
async fn killed_sidecar_is_reported_and_teardown_is_clean() {
    let scope = Scope::new().await;
    let backend = dind(&scope, |c| c.docker.isolation.preload_images.clear());
    let (env, _) = prepare(&backend, &scope.spec(303)).await;
    let out = Collect::new();
    let env = Arc::new(env);
    let task = {
        let (env, out) = (env.clone(), out.clone());
        tokio::spawn(async move {
            env.run_script(
                ScriptRequest { role: Role::Build, script: "echo started; while docker version >/dev/null; do sleep 0.2; done; sleep 600".into(), env: vec![] },
                out as Arc<dyn OutputSink>,
                CancellationToken::new(),
            )
            .await
        })
    };
    out.wait_for("started", WAIT).await;
    scope
        .docker
        .kill_container(&format!("ir-{}-303-sidecar", scope.runner_id))
        .await
        .unwrap();
    let r = tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("noticed promptly")
        .unwrap();
    assert!(matches!(r, Err(Error::SidecarDied { .. })), "{r:?}");
    let env = Arc::try_unwrap(env).ok().expect("single owner");
    teardown(&scope, env).await;
}

/// The teardown detaches the sidecar from the job network beside its removal, so the bridge
/// need not wait for it; when that detach fails (here: someone removed the sidecar first, so
/// the engine answers "no such container"), the network must wait for the sidecar's line
/// instead, and still go, with nothing reported as left behind.
#[tokio::test]
async fn teardown_after_the_sidecar_was_removed_behind_its_back_is_clean() {
    let scope = Scope::new().await;
    let backend = dind(&scope, |c| c.docker.isolation.preload_images.clear());
    let (env, _) = prepare(&backend, &scope.spec(304)).await;
    let sidecar = format!("ir-{}-304-sidecar", scope.runner_id);
    assert!(
        scope.docker.remove_container(&sidecar).await.unwrap(),
        "the sidecar was there to remove"
    );
    let report = tokio::time::timeout(Duration::from_secs(60), teardown(&scope, env))
        .await
        .expect("a failed detach must not leave the network waiting forever");
    assert!(
        report
            .removed
            .iter()
            .any(|r| r.starts_with("firewall chain")),
        "{:?}",
        report.removed
    );
}

#[tokio::test]
async fn services_run_on_the_job_network_with_aliases() {
    let scope = Scope::new().await;
    let backend = dind(&scope, |c| c.docker.isolation.preload_images.clear());
    let mut s = scope.spec(304);
    s.services = vec![support::docker::httpd_service(
        "web",
        "echo svc-ok > /www/index.html",
    )];
    let (env, _) = prepare(&backend, &s).await;
    let text = expect_ok(
        env.as_ref(),
        "for i in $(seq 1 100); do curl -fsS http://web/ && break; sleep 0.1; done",
    )
    .await;
    assert!(text.contains("svc-ok"), "{text}");
    // Services are as restricted as job containers.
    let svc = env.resources().services;
    assert_eq!(svc.len(), 1);
    let out = tokio::process::Command::new("docker")
        .args([
            "inspect",
            "-f",
            "{{json .HostConfig.CapDrop}} {{json .HostConfig.SecurityOpt}}",
            &svc[0],
        ])
        .output()
        .await
        .unwrap();
    let seen = String::from_utf8_lossy(&out.stdout);
    for cap in isolation::JOB_CAP_DROP {
        assert!(
            seen.contains(&format!("\"{cap}\"")),
            "{cap} not dropped: {seen}"
        );
    }
    assert!(seen.contains("no-new-privileges"), "{seen}");
    teardown(&scope, env).await;
}

#[tokio::test]
async fn missing_image_and_missing_sysbox_fail_clearly_and_leave_nothing() {
    let scope = Scope::new().await;
    let backend = dind(&scope, |_| {});
    let mut s = scope.spec(305);
    s.build_image.name = "isolated-runner/does-not-exist:never".into();
    let r = backend
        .prepare(&s, Collect::new(), CancellationToken::new())
        .await;
    assert!(
        matches!(r, Err(Error::ImageUnavailable { .. })),
        "{:?}",
        r.err()
    );
    scope.assert_clean().await;

    let sysbox = dind(&scope, |c| {
        c.docker.isolation.sidecar_profile = SidecarProfile::Sysbox
    });
    let r = sysbox
        .prepare(&scope.spec(306), Collect::new(), CancellationToken::new())
        .await;
    match r {
        Err(Error::ProfileUnavailable { profile, detail }) => {
            assert_eq!(profile, "sysbox");
            assert!(detail.contains("sysbox-runc"), "{detail}");
        }
        Err(other) => panic!("expected ProfileUnavailable, got {other}"),
        Ok(_) => panic!("this host has no sysbox-runc; the sysbox profile must not start"),
    }
    scope.assert_clean().await;
}

#[tokio::test]
async fn reaper_removes_what_a_dead_runner_left() {
    let scope = Scope::new().await;
    let backend = dind(&scope, |c| c.docker.isolation.preload_images.clear());
    let (env, _) = prepare(&backend, &scope.spec(401)).await;
    expect_ok(env.as_ref(), "true").await;
    // The runner "dies": the environment is dropped without teardown.
    drop(env);
    let req = isolation::reaper::ReapRequest {
        runner_id: scope.runner_id.clone(),
        state_dir: scope.state_dir(),
        builds_dir: scope.builds_dir(),
        dry_run: true,
    };
    // A sweep also takes other runners' orphans (other tests' leftovers, chains whose network
    // another test just removed), which those tests or their own sweeps may remove at the same
    // moment: only what is this runner's is compared.
    let chain_name = isolated_runner::netpolicy::rules::chain_name(&scope.runner_id, 401).unwrap();
    let builds = scope.builds_dir().display().to_string();
    let ours = |lines: &[String]| -> Vec<String> {
        lines
            .iter()
            .filter(|l| {
                l.contains(&scope.runner_id)
                    || l.contains(&builds)
                    || **l == format!("firewall chain {chain_name}")
            })
            .cloned()
            .collect()
    };
    let dry = isolation::reaper::reap(&scope.docker, &req).await;
    assert!(dry.removed.is_empty());
    let found = ours(&dry.found);
    for kind in [
        "container ir-",
        "network ir-",
        "volume ir-",
        "dir ",
        "firewall chain ",
    ] {
        assert!(
            found.iter().any(|f| f.starts_with(kind)),
            "dry run misses {kind}: {found:?}"
        );
    }
    let done = isolation::reaper::reap(
        &scope.docker,
        &isolation::reaper::ReapRequest {
            dry_run: false,
            ..req
        },
    )
    .await;
    assert!(done.failures.is_empty(), "{:?}", done.failures);
    let removed = ours(&done.removed);
    assert_eq!(removed, found);
    // The chain went before the network, as in teardown: while the network exists no other
    // runner's sweep takes the chain for an orphan and races this one for it.
    let at = |kind: &str| removed.iter().position(|r| r.starts_with(kind));
    assert!(at("firewall chain ") < at("network ir-"), "{removed:?}");
    for binary in ["iptables", "ip6tables"] {
        let rules = support::netns::firewall_rules(binary);
        assert!(
            !rules.split_whitespace().any(|w| w == chain_name),
            "{binary}:\n{rules}"
        );
    }
    scope.assert_clean().await;
}

#[tokio::test]
async fn shared_socket_backend_uses_the_host_daemon_at_identical_paths() {
    let scope = Scope::new().await;
    let backend = scope.shared_socket();
    let (env, _) = prepare(&backend, &scope.spec(501)).await;
    std::fs::write(env.paths().project_dir.join("marker.txt"), "shared-marker").unwrap();
    let label = format!("io.isolated-runner.runner={}", scope.runner_id);
    let text = expect_ok(
        env.as_ref(),
        &format!(r#"test -S /var/run/docker.sock
docker run --rm --pull never --label {label} -v "$PWD":/x isolated-runner/busybox:test cat /x/marker.txt"#),
    )
    .await;
    assert!(text.contains("shared-marker"), "{text}");
    teardown(&scope, env).await;
}

#[tokio::test]
async fn sidecar_that_never_answers_is_not_ready_with_its_logs() {
    let scope = Scope::new().await;
    // dockerd refuses a malformed mirror and exits: the runner must say so with the log.
    let backend = dind(&scope, |c| {
        c.docker.isolation.preload_images.clear();
        c.docker.isolation.registry_mirror = Some("not a url".to_string());
        c.docker.isolation.ready_timeout = Duration::from_secs(30);
    });
    let r = backend
        .prepare(&scope.spec(601), Collect::new(), CancellationToken::new())
        .await;
    match r {
        Err(Error::NotReady { last_logs, .. }) => {
            assert!(last_logs.contains("exited"), "{last_logs}");
            assert!(
                last_logs.contains("mirror"),
                "the daemon's own complaint is shown: {last_logs}"
            );
        }
        Err(other) => panic!("expected NotReady, got {other}"),
        Ok(_) => panic!("a busybox sidecar cannot be ready"),
    }
    scope.assert_clean().await;
}

#[tokio::test]
async fn privileged_profile_is_an_explicit_opt_in_that_works() {
    let scope = Scope::new().await;
    let backend = dind(&scope, |c| {
        c.docker.isolation.preload_images.clear();
        c.docker.isolation.sidecar_profile = SidecarProfile::Privileged;
    });
    // Never a silent fallback: either a really privileged sidecar, or ProfileUnavailable (this
    // host's daemon cannot grant every capability, so `--privileged` cannot start here).
    let out = Collect::new();
    match backend
        .prepare(&scope.spec(602), out.clone(), CancellationToken::new())
        .await
    {
        Ok(env) => {
            assert!(
                out.text().contains("sidecar profile privileged"),
                "{}",
                out.text()
            );
            expect_ok(env.as_ref(), "docker info --format '{{.ServerVersion}}'").await;
            teardown(&scope, env).await;
        }
        Err(Error::ProfileUnavailable { profile, detail }) => {
            eprintln!("privileged profile unavailable here: {detail}");
            assert_eq!(profile, "privileged");
            scope.assert_clean().await;
        }
        Err(other) => panic!("expected a privileged sidecar or ProfileUnavailable, got {other}"),
    }
}

/// The moment a prepare is cancelled at: as soon as the engine shows the job's first object
/// of this kind.
#[derive(Clone, Copy, Debug)]
enum CancelAt {
    Network,
    Volume,
    Container,
}

/// Starts a prepare of `job_id`, cancels it at `at` and asserts that nothing is left. A cancel
/// seen while a create request is in flight must still remove what that request makes.
async fn cancel_prepare_at(scope: &Scope, job_id: u64, at: CancelAt) {
    let backend = dind(scope, |_| {});
    let cancel = CancellationToken::new();
    let task = {
        let (backend, s, cancel) = (backend.clone(), scope.spec(job_id), cancel.clone());
        tokio::spawn(async move {
            backend
                .prepare(&s, Collect::new(), cancel)
                .await
                .map(|_| ())
        })
    };
    let filters = isolated_runner::docker::label_filters(&scope.runner_id, Some(job_id));
    let deadline = Instant::now() + WAIT;
    loop {
        let seen = match at {
            CancelAt::Network => !scope
                .docker
                .list_networks(&filters)
                .await
                .unwrap()
                .is_empty(),
            CancelAt::Volume => !scope
                .docker
                .list_volumes(&filters)
                .await
                .unwrap()
                .is_empty(),
            CancelAt::Container => !scope
                .docker
                .list_containers(&filters)
                .await
                .unwrap()
                .is_empty(),
        };
        if seen || task.is_finished() {
            break;
        }
        assert!(Instant::now() < deadline, "no {at:?} ever appeared");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cancel.cancel();
    let r = task.await.unwrap();
    // Either the cancel won, or prepare had already finished (then its env was dropped: the
    // reaper's case). Assert the cancel path when it happened.
    if let Err(e) = &r {
        assert!(matches!(e, Error::Canceled), "{at:?}: {e}");
    } else {
        let req = isolation::reaper::ReapRequest {
            runner_id: scope.runner_id.clone(),
            state_dir: scope.state_dir(),
            builds_dir: scope.builds_dir(),
            dry_run: false,
        };
        isolation::reaper::reap(&scope.docker, &req).await;
    }
    scope.assert_clean().await;
}

#[tokio::test]
async fn cancel_during_prepare_leaves_nothing() {
    let scope = Scope::new().await;
    // Once the sidecar exists, i.e. around its create reply or in the readiness wait.
    cancel_prepare_at(&scope, 701, CancelAt::Container).await;
}

#[tokio::test]
async fn cancel_at_every_prepare_step_leaves_nothing() {
    let scope = Scope::new().await;
    // While the network, then the volume, then the sidecar are being created.
    cancel_prepare_at(&scope, 702, CancelAt::Network).await;
    cancel_prepare_at(&scope, 703, CancelAt::Volume).await;
    cancel_prepare_at(&scope, 704, CancelAt::Container).await;
}
