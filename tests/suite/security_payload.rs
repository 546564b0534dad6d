//! Threats from the job payload (H4, G1, G3, H9, H10), each tried through the real pipeline
//! with the real dind backend: privilege requests, a service dressed as the sidecar with
//! dockerd flags, entrypoint overrides, symlinks in artifacts and in the job dir, path
//! injection through ids and variables.

use crate::support;

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
    // The admin allowed the sidecar image as a service: the runner's own images are refused as
    // `services:` otherwise (L3, `pipeline::tests::runner_images_are_refused_unless_allowed`).
    // Even allowed, the payload must not get it any privilege.
    let cfg = scope.config(|c| {
        c.docker.allowed_services = vec![DIND_IMAGE.to_string()];
    });
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
        // Inner `--privileged` is refused by the daemon's policy whatever the payload's
        // `privileged` variables say (only the runner's `inner_privileged` allows it). Were it
        // run, it would write the host's core_pattern back with its own value.
        r#"out=$(docker run --rm --privileged --pull never isolated-runner/busybox:test sh -c 'v=$(cat /proc/sys/kernel/core_pattern); if (printf "%s\n" "$v" > /proc/sys/kernel/core_pattern) 2>/dev/null; then echo INNER-PRIVILEGED-ON-HOST; else echo inner-privileged-confined; fi' 2>&1 || true); case "$out" in *"authorization denied by plugin ir-inner-policy: isolated-runner:"*) echo inner-privileged-refused ;; *) echo "$out" ;; esac"#,
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
    assert!(!line("INNER-PRIVILEGED-ON-HOST"), "{trace}");
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
    let cfg = scope.config(|c| c.docker.isolation.preload_images.clear());
    // Host directories the job must neither read through artifacts nor damage at cleanup.
    let precious = scope.tmp.path().join("precious");
    std::fs::create_dir_all(&precious).expect("mkdir");
    std::fs::write(precious.join("keep.txt"), "keep-me").expect("write");
    let p = precious.display().to_string();
    let job_id = 1002;
    // No GIT_CLONE_PATH here: one outside builds_dir now fails the job before any step, as in
    // gitlab-runner (`tests/pipeline.rs` `git_clone_path_escapes_are_refused`).
    let extra = json!({
        "artifacts": [{"name": "artifacts", "untracked": false, "when": "on_success",
                       "paths": ["leak/passwd", "leak", "shadowlink", "precious-link/keep.txt", "ok.txt"],
                       "artifact_type": "archive", "artifact_format": "zip"}],
        "variables": [
            {"key": "CI_PROJECT_DIR", "value": p, "public": true},
            {"key": "CI_BUILDS_DIR", "value": "/", "public": true},
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
    let cfg = scope.config(|c| c.docker.isolation.preload_images.clear());
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

/// Content and mtime of every file in `dir`, to prove canaries untouched.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>, std::time::SystemTime)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .expect("read canary dir")
        .map(|e| {
            let e = e.expect("entry");
            let m = e.metadata().expect("stat");
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).expect("read canary"),
                m.modified().expect("mtime"),
            )
        })
        .collect();
    out.sort();
    out
}

/// Every file the local artifact store received for `job`, with its bytes.
fn uploads(scope: &Scope, job: &str) -> Vec<(String, Vec<u8>)> {
    let dir = scope.tmp.path().join("artifacts").join(job);
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    rd.map(|e| {
        let e = e.expect("entry");
        (
            e.file_name().to_string_lossy().into_owned(),
            std::fs::read(e.path()).expect("read upload"),
        )
    })
    .collect()
}

/// All (name, bytes) of a zip's entries.
fn zip_entries(data: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(data)).expect("zip");
    (0..zip.len())
        .map(|i| {
            let mut e = zip.by_index(i).expect("entry");
            let name = e.name().map(|n| n.to_string()).unwrap_or_default();
            let mut body = Vec::new();
            let _ = std::io::Read::read_to_end(&mut e, &mut body);
            (name, body)
        })
        .collect()
}

/// Finding C1 (and M2's untracked list): the job plants links under every name the runner
/// used for its own files in the tmp dir (`upload-artifacts.zip`, `upload-sast`,
/// `dependency-<id>.zip`, `untracked.list`), pointing at host canaries (and `/dev/zero`).
/// The runner stages its archives in its own directory and reads job files through handles:
/// the canaries keep their bytes and mtime, no upload carries canary bytes, the dependency is
/// still extracted, and the poisoned untracked list fails the job with a clear reason
/// instead of reading `/dev/zero` until the runner is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifact_files_are_never_written_or_read_through_links() {
    let scope = Scope::new().await;
    let _fw = FirewallSweep(scope.runner_id.clone());
    let cfg = scope.config(|c| c.docker.isolation.preload_images.clear());
    let canary = scope.tmp.path().join("canary");
    std::fs::create_dir_all(&canary).expect("mkdir");
    for n in ["c1", "c2", "c3"] {
        std::fs::write(canary.join(n), format!("CANARY-{n}-BYTES")).expect("write canary");
    }
    let before = snapshot(&canary);
    let c = canary.display().to_string();
    let (job_id, dep_id) = (1003u64, 1500u64);
    // The dependency's archive, served by the local store.
    let dep_dir = scope.tmp.path().join("artifacts").join("dep");
    std::fs::create_dir_all(&dep_dir).expect("mkdir");
    {
        let f = std::fs::File::create(dep_dir.join("artifacts.zip")).expect("create");
        let mut z = zip::ZipWriter::new(f);
        z.start_file("dep.txt", zip::write::SimpleFileOptions::default())
            .expect("entry");
        std::io::Write::write_all(&mut z, b"from-dependency").expect("write");
        z.finish().expect("finish");
    }
    let extra = json!({
        "dependencies": [{"id": dep_id, "name": "dep", "token": "",
                          "artifacts_file": {"filename": "artifacts.zip", "size": 1}}],
        "artifacts": [
            {"name": "artifacts", "untracked": false, "when": "on_success", "paths": ["out/"],
             "artifact_type": "archive", "artifact_format": "zip"},
            {"name": "sast", "untracked": false, "when": "on_success", "paths": ["sast.json"],
             "artifact_type": "sast", "artifact_format": "raw"},
            {"name": "untracked", "untracked": true, "when": "on_success", "paths": [],
             "artifact_type": "archive", "artifact_format": "zip"}
        ]
    });
    let script = [
        format!("ln -s {c}/c1 \"$TMPDIR/upload-artifacts.zip\""),
        format!("ln -s {c}/c2 \"$TMPDIR/upload-sast\""),
        "ln -s /dev/zero \"$TMPDIR/untracked.list\"".to_string(),
        format!("test -L \"$TMPDIR/dependency-{dep_id}.zip\" && echo PLANTED-DEP-LINK-SEEN"),
        "echo dep=$(cat dep.txt)".to_string(),
        "mkdir -p out && echo payload > out/a.txt && echo '{}' > sast.json".to_string(),
    ];
    let payload = payload(
        job_id,
        &script.iter().map(|s| s.as_str()).collect::<Vec<&str>>(),
        extra,
    );
    // No job code runs before the download with a local tree, so the test plays the
    // `pre_get_sources_script` hook: it plants the dependency link as soon as the tmp dir
    // exists (during prepare, seconds before the download); the script checks it was there.
    let tmp_dir = scope.builds_dir().join(format!("gitlab-job-{job_id}.tmp"));
    let dep_link = tmp_dir.join(format!("dependency-{dep_id}.zip"));
    let target = canary.join("c3");
    let planter = tokio::spawn(async move {
        let ok = support::wait_until(Duration::from_secs(180), || tmp_dir.is_dir()).await;
        ok && std::os::unix::fs::symlink(&target, &dep_link).is_ok()
    });
    let t = tree();
    let (outcome, trace) = run_job(&scope, cfg, payload, t.path()).await;
    assert!(
        planter.await.expect("planter"),
        "could not plant the link\n{trace}"
    );
    assert!(trace.contains("PLANTED-DEP-LINK-SEEN"), "{trace}");
    assert!(trace.contains("dep=from-dependency"), "{trace}");
    assert_eq!(snapshot(&canary), before, "a canary changed\n{trace}");
    // The poisoned list fails the job with the reason, after the other uploads.
    assert!(
        matches!(outcome, JobOutcome::Failed { .. }),
        "{outcome:?}\n{trace}"
    );
    assert!(trace.contains("reading the untracked list"), "{trace}");
    let got = uploads(&scope, &format!("job{job_id}"));
    let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.contains(&"artifacts.zip"), "{names:?}\n{trace}");
    assert!(names.contains(&"sast"), "{names:?}\n{trace}");
    for (name, data) in &got {
        let text = String::from_utf8_lossy(data);
        assert!(!text.contains("CANARY-"), "{name} carries canary bytes");
    }
    let entries = zip_entries(
        &got[names
            .iter()
            .position(|n| *n == "artifacts.zip")
            .unwrap_or(0)]
        .1,
    );
    assert!(
        entries
            .iter()
            .any(|(n, b)| n == "out/a.txt" && b == b"payload\n"),
        "{entries:?}"
    );
    assert_eq!(
        got.iter()
            .find(|(n, _)| n == "sast")
            .map(|(_, d)| d.as_slice()),
        Some(&b"{}\n"[..])
    );
    scope.assert_clean().await;
}

/// Finding H1: an inner container on the job's own daemon, with the project dir mounted,
/// keeps swapping the parents of artifact entries for links to a host canary dir (and an
/// entry for a device node) while the runner lists and archives 2 000 entries. Every open
/// goes through the project dir's handle without following links and checks for a regular
/// file, so the artifact holds only the job's own bytes and the canary is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_inner_container_cannot_redirect_artifact_io() {
    let scope = Scope::new().await;
    let _fw = FirewallSweep(scope.runner_id.clone());
    let cfg = scope.config(|_| {});
    let canary = scope.tmp.path().join("canary");
    std::fs::create_dir_all(&canary).expect("mkdir");
    const N: usize = 2000;
    const DIRS: usize = 40;
    for i in 0..N {
        std::fs::write(canary.join(format!("f{i}")), "CANARY-SECRET").expect("write");
    }
    let before = snapshot(&canary);
    let c = canary.display().to_string();
    let job_id = 1004;
    let extra = json!({
        "artifacts": [{"name": "artifacts", "untracked": false, "when": "on_success",
                       "paths": ["out/"], "artifact_type": "archive", "artifact_format": "zip"}]
    });
    let make = format!(
        "i=0; while [ $i -lt {N} ]; do d=out/d$((i % {DIRS})); mkdir -p $d; echo \"entry $i\" > $d/f$i; i=$((i+1)); done"
    );
    // Swaps every parent for a link to the canary dir and back, and the first entry of each
    // for a device node (/dev/zero's numbers) and back, until the sidecar goes.
    let racer = format!(
        "cd \"$CI_PROJECT_DIR\"; while true; do for k in $(seq 0 {last}); do d=out/d$k; \
         mv $d $d.r && ln -s {c} $d && rm $d && mv $d.r $d; \
         f=out/d$k/f$k; mv $f $f.r && mknod $f c 1 5 && rm $f && mv $f.r $f; done; done",
        last = DIRS - 1
    );
    let script = [
        make,
        format!(
            "docker run -d --pull never --name racer -v \"$CI_PROJECT_DIR:$CI_PROJECT_DIR\" \
             -e CI_PROJECT_DIR=\"$CI_PROJECT_DIR\" isolated-runner/busybox:test sh -c '{racer}'"
        ),
        "sleep 2; docker ps --filter name=racer --format 'racer={{.Status}}'".to_string(),
    ];
    let payload = payload(
        job_id,
        &script.iter().map(|s| s.as_str()).collect::<Vec<&str>>(),
        extra,
    );
    let t = tree();
    let (outcome, trace) = run_job(&scope, cfg, payload, t.path()).await;
    assert!(trace.contains("racer=Up"), "the racer did not run\n{trace}");
    // How often the racer won a window (entries skipped with a warning): informative only,
    // a race cannot be forced to happen.
    eprintln!(
        "entries skipped under the race: {}",
        trace.matches("skipped (").count()
    );
    assert_eq!(snapshot(&canary), before, "the canary changed\n{trace}");
    let got = uploads(&scope, &format!("job{job_id}"));
    // The archive may miss entries the racer had swapped (skipped, with a warning), but what
    // it holds is the job's own data only.
    if let Some((_, data)) = got.iter().find(|(n, _)| n == "artifacts.zip") {
        let entries = zip_entries(data);
        for (name, body) in &entries {
            assert!(
                !String::from_utf8_lossy(body).contains("CANARY"),
                "{name} holds canary data"
            );
            let file = name.rsplit('/').next().unwrap_or_default();
            if let Some(i) = file
                .strip_prefix('f')
                .filter(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
            {
                assert_eq!(
                    body,
                    format!("entry {i}\n").as_bytes(),
                    "{name}: not the job's bytes (a device read?)"
                );
            }
        }
        // How many entries the racer made the runner skip depends on the machine's load; what
        // must hold is that the archive carries the job's own data and nothing else.
        assert!(!entries.is_empty(), "no entries\n{trace}");
    } else {
        panic!("no artifact uploaded ({outcome:?})\n{trace}");
    }
    scope.assert_clean().await;
}
