//! Threats from the job payload (H4, G1, G3, H9, H10), each tried through the real pipeline
//! with the real dind backend: privilege requests, a service dressed as the sidecar with
//! dockerd flags, entrypoint overrides, symlinks in artifacts and in the job dir, path
//! injection through ids and variables.

mod support;

use isolated_runner::gitlab::types::JobResponse;
use isolated_runner::job::{FailureReason, JobOutcome};
use serde_json::json;
use std::path::Path;
use std::time::Duration;
use support::docker::{DIND_IMAGE, JOB_IMAGE, Scope};
use support::security::*;

fn tree() -> tempfile::TempDir {
    let t = tempfile::tempdir().expect("tempdir");
    std::fs::write(t.path().join("README"), "demo").expect("write tree");
    t
}

/// Waits (bounded) until `path` exists; the job scripts below park on such files.
async fn wait_path(path: &Path, what: &str) {
    assert!(
        support::wait_until(Duration::from_secs(180), || path.exists()).await,
        "timed out waiting for {what} ({})",
        path.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_cannot_ask_for_privilege_or_shape_the_sidecar() {
    let scope = Scope::new().await;
    let _fw = FirewallSweep(scope.runner_id.clone());
    let cfg = config(&scope, |_| {});
    let job_id = 1001;
    let project_dir = scope.builds_dir().join(format!("gitlab-job-{job_id}"));
    let hostile = json!({
        "image": {"name": JOB_IMAGE, "entrypoint": [""],
                  "executor_opts": {"docker": {"privileged": true, "user": "root",
                                               "volumes": ["/var/run/docker.sock:/var/run/docker.sock"]}}},
        "services": [{"name": DIND_IMAGE, "alias": "docker",
                      "entrypoint": ["dockerd"],
                      "command": ["--host=tcp://0.0.0.0:2375", "--tls=false", "--privileged"],
                      "executor_opts": {"docker": {"privileged": true}}}],
        "variables": [
            {"key": "DOCKER_HOST", "value": "unix:///var/run/docker.sock", "public": true},
            {"key": "DOCKER_TLS_CERTDIR", "value": "", "public": true},
            {"key": "DOCKER_DRIVER", "value": "vfs", "public": true},
            {"key": "DOCKERD_ARGS", "value": "--insecure-registry=0.0.0.0/0", "public": true},
            {"key": "privileged", "value": "true", "public": true},
            {"key": "DOCKER_OPTS", "value": "-v /:/host --privileged", "public": true}
        ]
    });
    let script = [
        "grep CapEff /proc/self/status",
        "test ! -e /var/run/docker.sock && echo no-host-socket",
        "echo docker-host=$DOCKER_HOST",
        "docker info --format 'driver={{.Driver}}'",
        "docker run --rm --privileged --pull never isolated-runner/busybox:test true && echo INNER-PRIVILEGED || echo inner-privileged-refused",
        "touch parked; while [ ! -e go ]; do sleep 0.2; done",
    ];
    let payload = payload(job_id, &script, hostile);
    let t = tree();
    let job = {
        let (scope_cfg, tree_path) = (cfg.clone(), t.path().to_path_buf());
        let scope_ref = &scope;
        async move { run_job(scope_ref, scope_cfg, payload, &tree_path).await }
    };
    let inspect = async {
        wait_path(&project_dir.join("parked"), "the job to park").await;
        let sidecar = format!("ir-{}-{job_id}-sidecar", scope.runner_id);
        let (_, cmd, _) = sh(
            "docker",
            &[
                "inspect",
                "-f",
                "{{json .Config.Cmd}} {{json .Config.Env}} {{json .Config.Entrypoint}}",
                &sidecar,
            ],
        );
        let (_, host, _) = sh(
            "docker",
            &[
                "inspect",
                "-f",
                "{{.HostConfig.Privileged}} {{json .HostConfig.Binds}} {{json .Mounts}}",
                &sidecar,
            ],
        );
        let svc = format!("ir-{}-{job_id}-svc-0", scope.runner_id);
        let (_, svc_host, _) = sh(
            "docker",
            &[
                "inspect",
                "-f",
                "privileged={{.HostConfig.Privileged}} capadd={{json .HostConfig.CapAdd}} mounts={{json .Mounts}} role={{index .Config.Labels \"io.isolated-runner.role\"}}",
                &svc,
            ],
        );
        std::fs::write(project_dir.join("go"), "").expect("release the job");
        (cmd, host, svc_host)
    };
    let ((outcome, trace), (cmd, host, svc_host)) = tokio::join!(job, inspect);
    assert_eq!(outcome, JobOutcome::Success, "{trace}");
    // Nothing of the payload reached the sidecar.
    for bad in [
        "2375",
        "tls=false",
        "vfs",
        "insecure-registry",
        "/:/host",
        "docker.sock",
        "DOCKERD_ARGS",
        "DOCKER_OPTS",
    ] {
        assert!(
            !cmd.contains(bad),
            "payload value {bad} reached the sidecar: {cmd}"
        );
        assert!(
            !host.contains(bad),
            "payload value {bad} reached the sidecar: {host}"
        );
    }
    assert!(host.starts_with("false"), "{host}");
    // The service named like the sidecar image is an ordinary, unprivileged service.
    assert!(svc_host.contains("privileged=false"), "{svc_host}");
    assert!(
        svc_host.contains("capadd=null") || svc_host.contains("capadd=[]"),
        "{svc_host}"
    );
    assert!(!svc_host.contains("docker.sock"), "{svc_host}");
    assert!(svc_host.contains("role=service"), "{svc_host}");
    // The job ran unprivileged against its own daemon over TLS.
    let line = |m: &str| trace.lines().any(|l| l.trim() == m);
    assert!(line("no-host-socket"), "{trace}");
    assert!(trace.contains("docker-host=tcp://docker:2376"), "{trace}");
    assert!(trace.contains("driver=overlay2"), "{trace}");
    assert!(!line("INNER-PRIVILEGED"), "{trace}");
    assert!(line("inner-privileged-refused"), "{trace}");
    let capeff = trace
        .lines()
        .find_map(|l| l.split("CapEff:").nth(1))
        .map(|s| u64::from_str_radix(s.trim(), 16).unwrap_or(u64::MAX))
        .expect("CapEff printed");
    assert_eq!(capeff & (1 << 21), 0, "job has CAP_SYS_ADMIN: {capeff:x}");
    scope.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symlinks_in_artifacts_and_the_job_dir_and_path_variables_stay_inside() {
    let scope = Scope::new().await;
    let _fw = FirewallSweep(scope.runner_id.clone());
    let cfg = config(&scope, |c| c.docker.isolation.preload_images.clear());
    // Host directories the job must neither read through artifacts nor damage at cleanup.
    let precious = scope.tmp.path().join("precious");
    std::fs::create_dir_all(&precious).expect("mkdir");
    std::fs::write(precious.join("keep.txt"), "keep-me").expect("write");
    let p = precious.display().to_string();
    let job_id = 1002;
    let extra = json!({
        "artifacts": [{"name": "artifacts", "untracked": false, "when": "on_success",
                       "paths": ["leak/passwd", "leak", "shadowlink", "precious-link/keep.txt", "ok.txt"],
                       "artifact_type": "archive", "artifact_format": "zip"}],
        "variables": [
            {"key": "CI_PROJECT_DIR", "value": p, "public": true},
            {"key": "CI_BUILDS_DIR", "value": "/", "public": true},
            {"key": "GIT_CLONE_PATH", "value": format!("{p}/clone"), "public": true},
            {"key": "RUNNER_TEMP_PROJECT_DIR", "value": p, "public": true}
        ]
    });
    let script = [
        "echo pwd=$(pwd)",
        "ln -s /etc leak",
        "ln -s /etc/shadow shadowlink",
        &format!("ln -s {p} precious-link"),
        &format!("ln -s {p} \"$TMPDIR/precious-tmp-link\" || true"),
        "echo fine > ok.txt",
    ];
    let payload = payload(
        job_id,
        &script.iter().map(|s| s.as_ref()).collect::<Vec<&str>>(),
        extra,
    );
    let t = tree();
    let (outcome, trace) = run_job(&scope, cfg, payload, t.path()).await;
    assert_eq!(outcome, JobOutcome::Success, "{trace}");
    // The job dir did not move: still <builds>/gitlab-job-<id>.
    let expected = scope.builds_dir().join(format!("gitlab-job-{job_id}"));
    assert!(
        trace.contains(&format!("pwd={}", expected.display())),
        "{trace}"
    );
    assert!(
        !precious.join("clone").exists(),
        "GIT_CLONE_PATH moved the clone out of builds_dir"
    );
    // Cleanup did not follow the symlinks: the host dir survives.
    assert_eq!(
        std::fs::read_to_string(precious.join("keep.txt"))
            .ok()
            .as_deref(),
        Some("keep-me")
    );
    // Artifacts hold symlinks as links, never what they point to.
    let archive = scope
        .tmp
        .path()
        .join("artifacts")
        .join(format!("job{job_id}"))
        .join("artifacts.zip");
    let f = std::fs::File::open(&archive)
        .unwrap_or_else(|e| panic!("{}: {e}\n{trace}", archive.display()));
    let mut zip = zip::ZipArchive::new(f).expect("zip");
    let host_passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let mut names = Vec::new();
    for i in 0..zip.len() {
        let mut e = zip.by_index(i).expect("entry");
        let name = e.name().map(|n| n.to_string()).unwrap_or_default();
        names.push(name.clone());
        let mut body = String::new();
        let _ = std::io::Read::read_to_string(&mut e, &mut body);
        assert!(
            !body.contains("root:x:0:0"),
            "{} holds /etc/passwd content",
            name
        );
        assert!(!body.contains("keep-me"), "{} holds the host file", name);
        assert!(host_passwd.is_empty() || body != host_passwd);
    }
    assert!(names.iter().any(|n| n == "ok.txt"), "{names:?}");
    assert!(!names.iter().any(|n| n.starts_with("leak/")), "{names:?}");
    scope.assert_clean().await;
}

#[tokio::test]
async fn non_numeric_or_zero_job_ids_are_refused_before_anything_is_made() {
    for bad in [
        json!("12/../../etc"),
        json!("1; rm -rf /"),
        json!(-1),
        json!(1.5),
    ] {
        let mut p = payload(1, &["true"], json!({}));
        p["id"] = bad.clone();
        assert!(
            serde_json::from_value::<JobResponse>(p).is_err(),
            "id {bad} was accepted"
        );
    }
    let scope = Scope::new().await;
    let _fw = FirewallSweep(scope.runner_id.clone());
    let cfg = config(&scope, |c| c.docker.isolation.preload_images.clear());
    let t = tree();
    let (outcome, trace) = run_job(&scope, cfg, payload(0, &["true"], json!({})), t.path()).await;
    assert_eq!(
        outcome,
        JobOutcome::Failed {
            reason: FailureReason::RunnerSystemFailure,
            exit_code: None
        },
        "{trace}"
    );
    scope.assert_clean().await;
}
