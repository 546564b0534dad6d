//! Threats J1/J2 (another job's daemon), J4/S5 (another job's certificates), S1 (the runner's
//! token and config), S3 (the host socket and the outer API), each tried from a job container
//! and from containers the job starts on its own daemon (`-v /`, `-v <state_dir>`, …).
//!
//! Needs root, iptables, Docker and the test images. Two sidecars.

use crate::support;

use isolated_runner::isolation::{ContainerImage, Role, ScriptRequest, ServiceSpec};
use std::os::unix::fs::PermissionsExt;
use support::docker::{BUSYBOX_IMAGE, Collect, Scope};
use support::security::*;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_cannot_reach_another_jobs_daemon_certs_or_the_runners_secrets() {
    let scope = Scope::new().await;
    let _fw = FirewallSweep(scope.runner_id.clone());
    // A runner config and state file as a deployment has them (0600, on the host only).
    let token = format!("glrt-TESTSECRET{}", uuid::Uuid::new_v4().simple());
    let conf_dir = scope.tmp.path().join("etc-isolated-runner");
    std::fs::create_dir_all(&conf_dir).unwrap();
    let conf = conf_dir.join("config.toml");
    std::fs::write(&conf, format!("[[runners]]\ntoken = \"{token}\"\n")).unwrap();
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o600)).unwrap();
    let state = scope.state_dir();
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("token-copy"), &token).unwrap();

    let backend = scope.dind(scope.config(|_| {}));
    let mut sa = scope.spec(1101);
    sa.services = vec![ServiceSpec {
        image: ContainerImage {
            name: BUSYBOX_IMAGE.into(),
            entrypoint: None,
        },
        command: vec!["sleep".into(), "600".into()],
        aliases: vec!["svc".into()],
        env: vec![],
    }];
    let sb = scope.spec(1102);
    let (a, b) = tokio::join!(prepare(&backend, &sa), prepare(&backend, &sb));

    let b_sidecar = format!("ir-{}-1102-sidecar", scope.runner_id);
    let (_, b_ip, _) = sh(
        "docker",
        &[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &b_sidecar,
        ],
    );
    let b_ip = b_ip.trim().to_string();
    let b_certs = state.join("certs").join(&scope.runner_id).join("job-1102");
    let b_key = std::fs::read_to_string(b_certs.join("client/key.pem")).expect("B's client key");
    let b_key_line = b_key.lines().nth(1).expect("key body").to_string();
    let gw = gateway_of(&scope, 1101);
    let (st, cd, bc) = (state.display(), conf_dir.display(), b_certs.display());

    let script = format!(
        r#"
ls /certs/client
cat /certs/server/key.pem 2>/dev/null && echo SERVER-KEY-READ || echo server-key-absent
test ! -e /var/run/docker.sock && test ! -e /run/docker.sock && echo no-host-socket
cat {cd}/config.toml 2>/dev/null && echo CONFIG-READ || echo config-absent
ls {st} 2>/dev/null && echo STATE-LISTED || echo state-absent
cat {bc}/client/key.pem 2>/dev/null && echo B-KEY-READ || echo b-certs-absent
curl -sS --max-time 3 --cacert /certs/client/ca.pem --cert /certs/client/cert.pem --key /certs/client/key.pem https://{b_ip}:2376/_ping 2>&1 && echo B-WITH-CERT || echo b-with-cert-refused
curl -sSk --max-time 3 https://{b_ip}:2376/_ping 2>&1 && echo B-WITHOUT-CERT || echo b-without-cert-refused
curl -sS --max-time 3 http://{b_ip}:2375/_ping 2>&1 && echo B-PLAIN || echo b-plain-refused
curl -sS --max-time 3 http://{gw}:2375/_ping 2>&1 && echo OUTER-TCP || echo outer-tcp-refused
B=isolated-runner/busybox:test
docker run --rm --pull never -v /:/host $B sh -c 'cat /host{bc}/client/key.pem; ls /host{st}; cat /host{cd}/config.toml; ls /host/var/run/docker.sock' 2>&1 | tail -5; echo inner-root-done
(docker run --rm --pull never -v {st}:/x $B sh -c 'find /x | wc -l' || echo refused) | sed 's/^/state-entries=/'
(docker run --rm --pull never -v {cd}:/x $B sh -c 'find /x | wc -l' || echo refused) | sed 's/^/conf-entries=/'
docker run --rm --pull never -v /etc/isolated-runner:/x $B sh -c 'find /x | wc -l' | sed 's/^/etc-conf-entries=/'
# The sidecar's own /var/run/docker.sock is the job's daemon (the host's is never mounted into
# the sidecar: checked on the engine below), so this is the job's own daemon again.
# (A rootless daemon listens elsewhere, under its XDG_RUNTIME_DIR: then there is no socket there.)
docker run --rm --pull never -v /var/run/docker.sock:/s $B sh -c 'test -S /s && echo inner-socket-is-the-jobs-own || echo inner-socket-absent'
"#
    );
    let text = expect_ok(a.as_ref(), &script).await;
    let line = |m: &str| text.lines().any(|l| l.trim() == m);
    for m in [
        "server-key-absent",
        "no-host-socket",
        "config-absent",
        "state-absent",
        "b-certs-absent",
        "b-with-cert-refused",
        "b-without-cert-refused",
        "b-plain-refused",
        "outer-tcp-refused",
        "inner-root-done",
        "etc-conf-entries=1",
    ] {
        assert!(line(m), "{m} missing:\n{text}");
    }
    // Only what the inner daemon itself created for the bind (an empty directory), or, for a
    // rootless daemon that may not create it in the sidecar's file system, the bind refused.
    assert!(
        line("inner-socket-is-the-jobs-own") || line("inner-socket-absent"),
        "{text}"
    );
    for m in ["state-entries", "conf-entries"] {
        assert!(
            line(&format!("{m}=1")) || line(&format!("{m}=refused")),
            "{m} missing:\n{text}"
        );
    }
    for bad in [
        "SERVER-KEY-READ",
        "CONFIG-READ",
        "STATE-LISTED",
        "B-KEY-READ",
        "B-WITH-CERT",
        "B-WITHOUT-CERT",
        "B-PLAIN",
        "OUTER-TCP",
    ] {
        assert!(!line(bad), "{bad}:\n{text}");
    }
    assert!(
        !text.contains(&token),
        "the runner token leaked into the job:\n{text}"
    );
    assert!(
        !text.contains(&b_key_line),
        "job B's key leaked into job A:\n{text}"
    );

    // The helper role gets no socket either.
    let out = Collect::new();
    let r = a
        .run_script(
            ScriptRequest {
                role: Role::Helper,
                script: "test ! -e /var/run/docker.sock && test ! -e /run/docker.sock && echo helper-no-socket".into(),
                env: vec![],
            },
            out.clone(),
            CancellationToken::new(),
        )
        .await;
    assert_eq!(r.ok(), Some(0), "{}", out.text());
    assert!(out.text().lines().any(|l| l.trim() == "helper-no-socket"));

    // What is mounted where, as the engine says: no socket, no state or config dir anywhere;
    // the sidecar has the server half only, never the client half or another job's files.
    let f = format!("label=io.isolated-runner.runner={}", scope.runner_id);
    let (_, ids, _) = sh("docker", &["ps", "-q", "--filter", &f]);
    for id in ids.lines() {
        let (_, mounts, _) = sh(
            "docker",
            &[
                "inspect",
                "-f",
                "{{.Name}} {{.HostConfig.Privileged}} {{range .Mounts}}{{.Source}}:{{.Destination}} {{end}}",
                id,
            ],
        );
        assert!(!mounts.contains("docker.sock"), "{mounts}");
        assert!(!mounts.contains(&cd.to_string()), "{mounts}");
        assert!(!mounts.contains(" true "), "privileged container: {mounts}");
        if mounts.contains("sidecar") {
            assert!(mounts.contains(":/certs/server"), "{mounts}");
            assert!(!mounts.contains("/client:"), "{mounts}");
            let job = if mounts.contains("-1101-") {
                "job-1101"
            } else {
                "job-1102"
            };
            for other in ["job-1101", "job-1102"].iter().filter(|j| **j != job) {
                assert!(!mounts.contains(other), "{mounts}");
            }
        }
    }
    let _ = b_ip;
    teardown(a).await;
    teardown(b).await;
    scope.assert_clean().await;
}

/// Not a protection: the residual of the `hardened` profile (H1), kept as a test so the docs
/// cannot drift. An inner container with `--cap-add SYS_ADMIN` (inside the sidecar's own
/// capability set, so the inner daemon grants it) can remount its `/proc/sys` read-write; the
/// sidecar has no user namespace, so non-namespaced sysctls would then be the host's. The test
/// only reads the mount flags, it never writes a sysctl.
#[tokio::test]
async fn residual_hardened_sidecar_lets_a_job_reach_a_writable_proc_sys() {
    let scope = Scope::new().await;
    let _fw = FirewallSweep(scope.runner_id.clone());
    let backend = scope.dind(scope.config(|c| {
        c.docker.isolation.sidecar_profile = isolated_runner::config::SidecarProfile::Hardened
    }));
    let env = prepare(&backend, &scope.spec(1103)).await;
    let text = expect_ok(
        env.as_ref(),
        "docker run --rm --pull never --cap-add SYS_ADMIN isolated-runner/busybox:test sh -c \
           'echo before=$(grep \" /proc/sys \" /proc/self/mounts | cut -d\" \" -f4 | cut -d, -f1); \
            mount -o remount,rw /proc/sys 2>/dev/null && echo remount=ok || echo remount=refused; \
            echo after=$(grep \" /proc/sys \" /proc/self/mounts | tail -1 | cut -d\" \" -f4 | cut -d, -f1)'",
    )
    .await;
    eprintln!("{text}");
    assert!(text.lines().any(|l| l.trim() == "before=ro"), "{text}");
    // Record what happens; the docs state the residual as measured here.
    let remounted = text.lines().any(|l| l.trim() == "remount=ok");
    let writable = text.lines().any(|l| l.trim() == "after=rw");
    assert!(
        remounted && writable,
        "the hardened residual changed (good news?): update docs/security.md:\n{text}"
    );
    teardown(env).await;
    scope.assert_clean().await;
}

/// H1/H7: the host's disks and loop devices are out of reach of the sidecar's root. The sidecar
/// gets no host devices and its device cgroup denies read/write to block devices, which inner
/// containers inherit: a job that makes a node for the host disk (`mknod`, allowed by the
/// default `m` rule) still cannot read a byte of it, and cannot attach a loop device.
#[tokio::test]
async fn host_disk_and_loop_devices_are_out_of_reach() {
    let scope = Scope::new().await;
    let _fw = FirewallSweep(scope.runner_id.clone());
    // Every real block device of the host (not loop, ram or zram).
    let mut disks = Vec::new();
    for e in std::fs::read_dir("/sys/block")
        .expect("/sys/block")
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if ["loop", "ram", "zram"].iter().any(|p| name.starts_with(p)) {
            continue;
        }
        if let Ok(dev) = std::fs::read_to_string(e.path().join("dev")) {
            disks.push((name, dev.trim().replace(':', " ")));
        }
    }
    assert!(!disks.is_empty(), "no host disk found to probe");
    let backend = scope.dind(scope.config(|_| {}));
    let env = prepare(&backend, &scope.spec(1104)).await;
    let mut probe = String::from(
        "echo sidecar-dev=$(docker run --rm --pull never -v /dev:/d isolated-runner/busybox:test ls /d | tr '\\n' ' ')\n",
    );
    for (name, majmin) in &disks {
        probe.push_str(&format!(
            "docker run --rm --pull never --cap-add SYS_ADMIN --cap-add MKNOD isolated-runner/busybox:test sh -c \
               'if mknod /tmp/{name} b {majmin} 2>/dev/null; then (head -c 1 /tmp/{name} >/dev/null 2>&1 && echo HOST-DISK-READ-{name} || echo disk-refused-{name}); else echo mknod-refused-{name}; fi; \
                mkdir -p /mnt/h; mount /tmp/{name} /mnt/h 2>/dev/null && echo HOST-DISK-MOUNTED-{name} || echo mount-refused-{name}'\n"
        ));
    }
    probe.push_str(
        "docker run --rm --pull never --cap-add SYS_ADMIN isolated-runner/busybox:test sh -c \
           'truncate -s 1M /tmp/img 2>/dev/null || dd if=/dev/zero of=/tmp/img bs=1k count=1024 2>/dev/null; \
            losetup -f /tmp/img 2>/dev/null && echo LOOP-ATTACHED || echo loop-refused'\n",
    );
    let text = expect_ok(env.as_ref(), &probe).await;
    let line = |m: &str| text.lines().any(|l| l.trim() == m);
    for (name, _) in &disks {
        // A rootless daemon cannot even make the node; a rootful one makes it but cannot read.
        assert!(
            line(&format!("disk-refused-{name}")) || line(&format!("mknod-refused-{name}")),
            "{text}"
        );
        assert!(line(&format!("mount-refused-{name}")), "{text}");
        assert!(!text.contains(&format!("HOST-DISK-READ-{name}")), "{text}");
        assert!(
            !text.contains(&format!("HOST-DISK-MOUNTED-{name}")),
            "{text}"
        );
    }
    assert!(line("loop-refused"), "{text}");
    let sidecar_dev = text
        .lines()
        .find_map(|l| l.strip_prefix("sidecar-dev="))
        .unwrap_or_default();
    for (name, _) in &disks {
        assert!(
            !sidecar_dev.split_whitespace().any(|d| d == name),
            "host disk node in the sidecar: {sidecar_dev}"
        );
    }
    assert!(!sidecar_dev.contains("loop"), "{sidecar_dev}");
    teardown(env).await;
    scope.assert_clean().await;
}
