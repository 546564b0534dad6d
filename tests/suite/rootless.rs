//! The `rootless` sidecar profile against the real engine (issue 10): a normal job works
//! end to end (mTLS docker:2376, inner runs, identical-path bind mounts readable and writable
//! by inner containers, compose `./:/app` with a published port, docker build), and the attacks
//! that reach host root under `hardened` are refused: a host sysctl written from an inner
//! `--cap-add SYS_ADMIN` container (the current value written back, never a change), inner
//! `--privileged`, another job's files through the inner daemon, a capability held by any
//! sidecar process in the host's user namespace, a setuid binary in the sidecar image, two
//! jobs sharing a host uid.

use crate::support;

use isolated_runner::config::{RunnerConfig, SidecarProfile};
use isolated_runner::docker::{ContainerSpec, LABEL_JOB, LABEL_MANAGED, LABEL_RUNNER};
use isolated_runner::isolation::{self, ContainerImage, Isolation, JobEnvironment};
use std::sync::Arc;
use support::docker::{
    BUSYBOX_IMAGE, COMPOSE_PROJECT_SCRIPT, DIND_IMAGE, Scope, assert_compose_project_ran,
    write_compose_project,
};
// The build-script runner shared by docker_backend and rootless (support/docker.rs).
use support::docker::expect_project_script_ok as expect_ok;
use support::docker::run_project_script;
use support::security::prepare;

fn rootless(scope: &Scope, tweak: impl FnOnce(&mut RunnerConfig)) -> Arc<dyn Isolation> {
    let mut cfg = scope.runner_config();
    cfg.docker.isolation.sidecar_profile = SidecarProfile::Rootless;
    cfg.docker.isolation.preload_images = vec![BUSYBOX_IMAGE.to_string()];
    tweak(&mut cfg);
    Arc::new(isolation::dind::DindBackend::new(
        scope.docker.clone(),
        Arc::new(cfg),
        scope.state_dir(),
    ))
}

async fn teardown(scope: &Scope, env: Box<dyn JobEnvironment>) {
    support::security::teardown(env).await;
    scope.assert_clean().await;
}

/// `(pid, uid, CapEff, same user namespace as the runner)` of every host process in the
/// container's cgroup (cgroupfs and systemd drivers both put the id in the path).
fn processes_of(container_id: &str) -> Vec<(u32, u32, u64, bool)> {
    let own_ns = std::fs::read_link("/proc/self/ns/user").expect("own user ns");
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("proc").flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cg) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
            continue;
        };
        if !cg.contains(container_id) {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.split_whitespace().next().unwrap_or("").to_string())
                .unwrap_or_default()
        };
        let uid: u32 = field("Uid:").parse().unwrap_or(u32::MAX);
        let cap = u64::from_str_radix(&field("CapEff:"), 16).unwrap_or(u64::MAX);
        let Ok(ns) = std::fs::read_link(format!("/proc/{pid}/ns/user")) else {
            continue;
        };
        out.push((pid, uid, cap, ns == own_ns));
    }
    out
}

/// Command names of the sidecar's processes that hold the socket listening on :2376 in the
/// sidecar's own network namespace (the one the job reaches as `docker:2376`), read from the
/// host: the listener's inode from `/proc/<sidecar pid 1>/net/tcp`, then every process's fds.
fn api_listener_holders(container_id: &str, sidecar_pid: u32) -> Vec<String> {
    let tcp = std::fs::read_to_string(format!("/proc/{sidecar_pid}/net/tcp")).expect("net/tcp");
    // Columns: sl local_address rem_address st … inode; 0x0948 = 2376, state 0A = LISTEN.
    let inode = tcp
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|c| c.len() > 9 && c[1].ends_with(":0948") && c[3] == "0A")
        .map(|c| c[9].to_string())
        .unwrap_or_else(|| panic!("nothing listens on :2376 in the sidecar: {tcp}"));
    let want = format!("socket:[{inode}]");
    let mut holders = Vec::new();
    for (pid, ..) in processes_of(container_id) {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        let holds = fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.to_string_lossy() == want));
        if holds {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            holders.push(comm.trim().to_string());
        }
    }
    holders
}

#[tokio::test]
async fn rootless_job_end_to_end() {
    let scope = Scope::new().await;
    let backend = rootless(&scope, |_| {});
    let env = prepare(&backend, &scope.spec(501)).await;
    // docker:2376 is dockerd's own socket, made in the sidecar's network namespace and
    // inherited (no user-space relay through rootlesskit's port driver in between).
    let holders = api_listener_holders(&scope.sidecar_of(501).await, scope.sidecar_pid(501).await);
    assert!(
        holders.iter().any(|c| c == "dockerd"),
        "the :2376 listener is not dockerd's: held by {holders:?}"
    );
    let pd = env.paths().project_dir.clone();
    std::fs::write(pd.join("marker.txt"), "from-the-runner\n").unwrap();
    write_compose_project(&pd);
    let script = [
        r#"
test "$DOCKER_HOST" = tcp://docker:2376
docker info --format 'driver={{.Driver}} opts={{.SecurityOptions}} runtime={{.DefaultRuntime}}'
echo "inner-net=$(docker run --rm --pull never isolated-runner/busybox:test ls /sys/class/net | sort | tr '\n' ' ')"
echo from-the-job > "$CI_PROJECT_DIR/job-file.txt"
docker run --rm --pull never -v "$CI_PROJECT_DIR":"$CI_PROJECT_DIR" -w "$CI_PROJECT_DIR" isolated-runner/busybox:test sh -c 'cat marker.txt job-file.txt; echo inner > from-inner.txt; echo appended >> job-file.txt; mkdir -p inner-dir; echo x > inner-dir/f; echo inner-mtu=$(cat /sys/class/net/eth0/mtu)'
cat from-inner.txt job-file.txt
docker run --rm --pull never --init -v "$CI_PROJECT_DIR":/ro:ro isolated-runner/busybox:test sh -c 'echo "init-pid1=$(cat /proc/1/comm) $(cat /ro/marker.txt)"'"#,
        COMPOSE_PROJECT_SCRIPT,
        r#"printf 'FROM isolated-runner/busybox:test\nRUN echo built > /built.txt\n' > Dockerfile
DOCKER_BUILDKIT=0 docker build -q -t legacy-built . >/dev/null
docker run --rm legacy-built cat /built.txt
DOCKER_BUILDKIT=1 docker build -q -t kit-built . >/dev/null && docker run --rm kit-built cat /built.txt | sed 's/^/kit-/'
"#,
    ]
    .join("\n");
    let text = expect_ok(env.as_ref(), &script).await;
    assert!(
        text.contains("name=rootless"),
        "the inner daemon is rootless: {text}"
    );
    assert!(text.contains("driver=overlay2"), "{text}");
    // crun runs inner containers (`rootless::open_sidecar_sysfs`), and each one sees its own
    // interfaces in its own sysfs, not the daemon's (crun's fallback with a read-only /sys).
    assert!(text.contains("runtime=crun"), "{text}");
    assert!(text.contains("inner-net=eth0 lo "), "{text}");
    // Inner networks have the user-mode network's large MTU (the fast path, see
    // `profile::ROOTLESS_MTU`), not the job network's.
    assert!(text.contains("inner-mtu=65520"), "{text}");
    assert!(text.contains("from-the-runner"), "{text}");
    // `--init` (and compose `init: true` above): docker-init is PID 1; a read-only bind works.
    assert!(
        text.contains("init-pid1=docker-init from-the-runner"),
        "{text}"
    );
    // Inner containers read what the job wrote, write new files and change the job's files.
    assert!(text.contains("appended"), "{text}");
    assert!(text.contains("built"), "legacy docker build: {text}");
    assert!(text.contains("kit-built"), "BuildKit docker build: {text}");
    assert_eq!(
        std::fs::read_to_string(pd.join("from-inner.txt"))
            .unwrap()
            .trim(),
        "inner"
    );
    assert_compose_project_ran(&pd, &text);
    // The runner removes what inner containers made, whoever owns it (assert_clean).
    teardown(&scope, env).await;
}

#[tokio::test]
async fn rootless_sidecars_hold_no_host_capability_and_own_distinct_uids() {
    let scope = Scope::new().await;
    let backend = rootless(&scope, |_| {});
    let (sa, sb) = (scope.spec(511), scope.spec(512));
    let (a, b) = tokio::join!(prepare(&backend, &sa), prepare(&backend, &sb));
    let mut uids = Vec::new();
    for job in [511, 512] {
        let id = scope.sidecar_of(job).await;
        let procs = processes_of(&id);
        assert!(procs.len() >= 3, "sidecar processes found: {procs:?}");
        let host: Vec<_> = procs.iter().filter(|p| p.3).collect();
        assert!(!host.is_empty(), "{procs:?}");
        for (pid, uid, cap, _) in &host {
            assert_eq!(
                *cap, 0,
                "pid {pid} (uid {uid}) holds capabilities on the host: {procs:?}"
            );
            assert_ne!(*uid, 0, "pid {pid} runs as host root: {procs:?}");
        }
        // Every process in the host's namespace runs as the sidecar's one uid.
        let mut u: Vec<u32> = host.iter().map(|p| p.1).collect();
        u.dedup();
        assert_eq!(u.len(), 1, "{procs:?}");
        uids.push(u[0]);
    }
    assert_ne!(uids[0], uids[1], "two jobs' inner roots share a host uid");
    // The inner root of each job is its sidecar's uid.
    let text = expect_ok(
        a.as_ref(),
        "docker run --rm --pull never -v \"$CI_PROJECT_DIR\":/x isolated-runner/busybox:test sh -c 'touch /x/owned'",
    )
    .await;
    let meta = std::fs::metadata(a.paths().project_dir.join("owned")).expect("stat");
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&meta),
        uids[0],
        "{text}"
    );
    teardown_both(&scope, a, b).await;
}

/// The rootless daemon runs on a containerd the image's entrypoint started before it, inside
/// rootlesskit's namespaces: a dockerd that starts its own waits a second for its first
/// connection to it and, at every stop, a second after it (docs/sidecar-profiles.md). The
/// command lines show which one runs: dockerd given `--containerd`, and containerd on the
/// entrypoint's `config.toml` (a managed one gets dockerd's `containerd.toml`).
#[tokio::test]
async fn rootless_daemon_runs_on_the_containerd_started_before_it() {
    let scope = Scope::new().await;
    let backend = rootless(&scope, |_| {});
    let env = prepare(&backend, &scope.spec(515)).await;
    let id = scope.sidecar_of(515).await;
    let cmdlines: Vec<Vec<String>> = processes_of(&id)
        .iter()
        .filter_map(|(pid, ..)| std::fs::read(format!("/proc/{pid}/cmdline")).ok())
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .collect();
    let named = |name: &str| {
        cmdlines
            .iter()
            .filter(|c| {
                c.first()
                    .is_some_and(|a| a.rsplit('/').next() == Some(name))
            })
            .collect::<Vec<_>>()
    };
    let dockerd = named("dockerd");
    assert_eq!(dockerd.len(), 1, "{cmdlines:?}");
    let sock = dockerd[0]
        .iter()
        .find_map(|a| a.strip_prefix("--containerd="))
        .unwrap_or_else(|| panic!("dockerd manages its own containerd: {:?}", dockerd[0]));
    assert!(
        sock.starts_with("/run/user/") && sock.ends_with("/docker/containerd/containerd.sock"),
        "{sock}"
    );
    let containerd = named("containerd");
    assert_eq!(containerd.len(), 1, "{cmdlines:?}");
    assert!(
        containerd[0]
            .windows(2)
            .any(|w| w[0] == "--config" && w[1].ends_with("/docker/containerd/config.toml")),
        "{:?}",
        containerd[0]
    );
    // And the daemon works on it.
    let text = expect_ok(
        env.as_ref(),
        "docker run --rm --pull never isolated-runner/busybox:test echo inner-ran",
    )
    .await;
    assert!(text.contains("inner-ran"), "{text}");
    teardown(&scope, env).await;
}

async fn teardown_both(scope: &Scope, a: Box<dyn JobEnvironment>, b: Box<dyn JobEnvironment>) {
    support::security::teardown(a).await;
    teardown(scope, b).await;
}

/// The attacks of issue 10 from inside a job, from an inner `--privileged` container (every
/// capability of the daemon's user namespace, no seccomp or AppArmor of its own, read-write
/// /proc/sys and /sys) and from one with only SYS_ADMIN. A sysctl or sysfs file is only ever
/// written with its current value, so the test cannot change the host even if the boundary
/// failed.
#[tokio::test]
async fn rootless_refuses_host_sysctls_devices_and_other_jobs_files() {
    let scope = Scope::new().await;
    // Inner --privileged allowed, so it runs confined: what it can do is what this checks.
    let backend = rootless(&scope, |c| c.docker.isolation.inner_privileged = true);
    let victim = prepare(&backend, &scope.spec(521)).await;
    let attacker = prepare(&backend, &scope.spec(522)).await;
    let secret = victim.paths().project_dir.join("secret.txt");
    std::fs::write(&secret, "victim-secret-5a1b").unwrap();
    let script = format!(
        r#"
for how in --privileged "--cap-add SYS_ADMIN"; do
docker run --rm --pull never $how isolated-runner/busybox:test sh -c '
  mount -o remount,rw /proc/sys 2>&1 || true
  v=$(cat /proc/sys/kernel/core_pattern)
  if printf "%s\n" "$v" > /proc/sys/kernel/core_pattern; then echo SYSCTL-WRITTEN; else echo SYSCTL-REFUSED; fi
  v=$(cat /proc/sys/vm/overcommit_memory)
  if echo "$v" > /proc/sys/vm/overcommit_memory; then echo VM-WRITTEN; else echo VM-REFUSED; fi
  mount -o remount,rw /sys 2>&1 || true
  f=/sys/kernel/mm/transparent_hugepage/khugepaged/defrag
  [ -f $f ] || f=/sys/kernel/mm/ksm/run
  v=$(cat $f)
  if echo "$v" > $f; then echo SYSFS-WRITTEN; else echo SYSFS-REFUSED; fi
  if mknod /tmp/blk b 8 0 2>/dev/null && head -c 16 /tmp/blk >/dev/null 2>&1; then echo BLOCK-READ; else echo BLOCK-REFUSED; fi
  echo "ran-as $(grep CapEff /proc/self/status)"
' 2>&1 || echo INNER-FAILED
done
docker run --rm --pull never -v {dir}:/v isolated-runner/busybox:test cat /v/secret.txt 2>&1 || true
docker run --rm --pull never -v /:/host isolated-runner/busybox:test cat /host{secret} 2>&1 || true
docker run --rm --pull never --cap-add SYS_ADMIN --cap-add DAC_READ_SEARCH -v /:/host isolated-runner/busybox:test sh -c 'ls /host{builds}' 2>&1 || true
docker run --rm --pull never --cap-add SYS_ADMIN isolated-runner/busybox:test sh -c 'ls /dev; mknod /tmp/b b 8 0 2>&1; head -c 16 /tmp/b 2>&1' || true
"#,
        dir = victim.paths().project_dir.display(),
        secret = secret.display(),
        builds = scope.builds_dir().display(),
    );
    let text = expect_ok(attacker.as_ref(), &script).await;
    // Both inner containers ran (the privileged one with every capability of its namespace),
    // and every write to the host's kernel settings and every block device was refused.
    assert!(!text.contains("INNER-FAILED"), "{text}");
    assert!(
        text.contains("CapEff:\t000001ffffffffff"),
        "privileged: {text}"
    );
    for (refused, done) in [
        ("SYSCTL-REFUSED", "SYSCTL-WRITTEN"),
        ("VM-REFUSED", "VM-WRITTEN"),
        ("SYSFS-REFUSED", "SYSFS-WRITTEN"),
        ("BLOCK-REFUSED", "BLOCK-READ"),
    ] {
        assert_eq!(text.matches(refused).count(), 2, "{refused}: {text}");
        assert!(!text.contains(done), "{done}: {text}");
    }
    assert!(
        !text.contains("victim-secret-5a1b"),
        "another job's file was read: {text}"
    );
    // A step that fails for a reason of its own gets no hint; one that fails on a host device
    // gets the runner's words in its trace, not only the runtime's.
    let (r, own) = run_project_script(
        attacker.as_ref(),
        "docker run --rm --pull never isolated-runner/busybox:test false",
    )
    .await;
    assert_eq!(r.ok(), Some(1), "{own}");
    assert!(!own.contains("isolated-runner:"), "{own}");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await; // the log's 1 s grain
    let (r, dev_text) = run_project_script(
        attacker.as_ref(),
        "docker run --rm --pull never --device /dev/sda isolated-runner/busybox:test true",
    )
    .await;
    assert_ne!(r.ok(), Some(0), "{dev_text}");
    assert!(
        dev_text.contains("isolated-runner: an inner container asked for a host device"),
        "{dev_text}"
    );
    teardown_both(&scope, victim, attacker).await;
}

/// The ways a job can ask its daemon for a privileged container through the API itself,
/// past the Docker CLI: the plain request, keys in other cases (Go's decoder matches them, with
/// Unicode folding), a second `HostConfig` object (decoded into the same struct), the
/// deprecated top-level field, a body padded past 1 MiB and a URI ending in `/auth` (older
/// Dockers passed their plugins no body for either; 26.1.5 passes both), an escaped path,
/// compose `privileged: true` and `docker exec --privileged`. Each is sent to a daemon with the
/// inner policy and to one with `inner_privileged = true`: the second says which the daemon
/// really reads as privileged (the plain ones must be), and every one of those, and every other,
/// is refused by the first with the runner's reason, leaving no privileged container behind.
#[tokio::test]
async fn inner_privileged_is_refused_however_the_job_asks() {
    let scope = Scope::new().await;
    let guarded = rootless(&scope, |_| {});
    let open = rootless(&scope, |c| c.docker.isolation.inner_privileged = true);
    let a = prepare(&guarded, &scope.spec(541)).await;
    let b = prepare(&open, &scope.spec(542)).await;
    let script = r#"
api() {
  curl -sS --cacert "$DOCKER_CERT_PATH/ca.pem" --cert "$DOCKER_CERT_PATH/cert.pem" \
    --key "$DOCKER_CERT_PATH/key.pem" -H 'Content-Type: application/json' -X POST \
    "https://docker:2376$1" --data-binary "@$2"
}
img=isolated-runner/busybox:test
pad=$(head -c 1200000 /dev/zero | tr '\0' a)
printf '{"Image":"%s","HostConfig":{"Privileged":true}}' $img > plain.json
printf '{"image":"%s","hostconfig":{"privileged":true}}' $img > lower.json
printf '{"Image":"%s","Ho\\u017ftConfig":{"Pr\\u0131vileged":true}}' $img > folded.json
printf '{"Image":"%s","HostConfig":{"Privileged":true},"HostConfig":{}}' $img > twice.json
printf '{"Image":"%s","Privileged":true}' $img > toplevel.json
printf '{"Image":"%s","Env":["PAD=%s"],"HostConfig":{"Privileged":true}}' $img "$pad" > padded.json
for v in "plain /v1.45/containers/create?name=plain plain.json" \
         "unversioned /containers/create?name=unversioned plain.json" \
         "lower /v1.45/containers/create?name=lower lower.json" \
         "folded /v1.45/containers/create?name=folded folded.json" \
         "twice /v1.45/containers/create?name=twice twice.json" \
         "toplevel /v1.45/containers/create?name=toplevel toplevel.json" \
         "padded /v1.45/containers/create?name=padded padded.json" \
         "auth /v1.45/containers/create?name=/auth plain.json" \
         "escaped /v1.45/containers%2Fcreate?name=escaped plain.json"; do
  set -- $v
  out=$(api "$2" "$3" 2>&1 | head -c 2000)
  case "$out" in *"authorization denied by plugin ir-inner-policy: isolated-runner:"*) r=refused ;; *) r=answered ;; esac
  p=$(docker inspect -f '{{.HostConfig.Privileged}}' "$1" 2>/dev/null) || p=none
  echo "VARIANT $1 $r privileged=$p"
  [ "$r" = refused ] || echo "ANSWER $1 $(printf '%s' "$out" | head -c 300)"
done
printf 'services:\n  priv:\n    image: %s\n    privileged: true\n    command: ["true"]\n' $img > compose.yaml
if out=$(docker compose -p composed up --no-start 2>&1); then
  echo "VARIANT compose answered privileged=$(docker inspect -f '{{.HostConfig.Privileged}}' composed-priv-1)"
else
  case "$out" in *"ir-inner-policy: isolated-runner:"*) echo "VARIANT compose refused privileged=none" ;;
  *) echo "VARIANT compose failed $out" ;; esac
fi
docker run -d --name keep --pull never $img sleep 60 >/dev/null
if docker exec --privileged keep grep -q 'CapEff:.*1ffffffffff' /proc/self/status 2>err.txt; then
  echo "VARIANT exec answered privileged=true"
elif grep -q 'ir-inner-policy: isolated-runner:' err.txt; then
  echo "VARIANT exec refused privileged=none"
else
  echo "VARIANT exec answered privileged=false $(cat err.txt)"
fi
echo "privileged-containers=$(docker ps -aq | xargs docker inspect -f '{{.HostConfig.Privileged}}' | grep -c true)"
"#;
    let guarded_text = expect_ok(a.as_ref(), script).await;
    let open_text = expect_ok(b.as_ref(), script).await;
    let variants = |text: &str| -> Vec<(String, String, String)> {
        text.lines()
            .filter_map(|l| l.strip_prefix("VARIANT "))
            .map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                (
                    f.first().unwrap_or(&"").to_string(),
                    f.get(1).unwrap_or(&"").to_string(),
                    f.get(2).unwrap_or(&"").to_string(),
                )
            })
            .collect()
    };
    let guarded_v = variants(&guarded_text);
    let open_v = variants(&open_text);
    assert_eq!(guarded_v.len(), 11, "{guarded_text}");
    assert_eq!(open_v.len(), 11, "{open_text}");
    // Without the policy the daemon reads these as privileged: the test asks for real. (Docker
    // 26.1 reads `folded` as not privileged; the policy refuses it all the same.)
    for must in [
        "plain",
        "unversioned",
        "lower",
        "twice",
        "toplevel",
        "padded",
        "auth",
        "escaped",
        "compose",
        "exec",
    ] {
        assert!(
            open_v
                .iter()
                .any(|(n, r, p)| n == must && r == "answered" && p == "privileged=true"),
            "{must} is no privileged request without the policy: {open_text}"
        );
    }
    // With it, every one is refused with the runner's reason and none is privileged.
    for (name, verdict, privileged) in &guarded_v {
        assert_eq!(verdict, "refused", "{name}: {guarded_text}");
        assert_eq!(privileged, "privileged=none", "{name}: {guarded_text}");
    }
    assert!(
        guarded_text.contains("privileged-containers=0"),
        "{guarded_text}"
    );
    eprintln!("without the policy:\n{open_text}");
    teardown_both(&scope, b, a).await;
}

/// A sidecar image whose entrypoint ignores `IR_INNER_POLICY_SOCKET` would run inner
/// `--privileged` unchecked: the runner sees that its daemon answered without asking the
/// policy and fails the job with the reason, leaving nothing behind.
#[tokio::test]
async fn a_sidecar_image_without_the_inner_policy_fails_the_job_with_the_reason() {
    let scope = Scope::new().await;
    let image = support::docker::derived_sidecar_image(
        &scope,
        "no-policy",
        "RUN printf '#!/bin/sh\\nunset IR_INNER_POLICY_SOCKET\\nexec /usr/local/bin/dockerd-entrypoint \"$@\"\\n' \
           > /usr/local/bin/no-policy && chmod 0755 /usr/local/bin/no-policy\n\
         ENTRYPOINT [\"/usr/local/bin/no-policy\"]",
    );
    let backend = rootless(&scope, |c| {
        c.docker.isolation.sidecar_image = image.0.clone();
    });
    let out = support::docker::Collect::new();
    let err = match backend
        .prepare(
            &scope.spec(545),
            out.clone(),
            tokio_util::sync::CancellationToken::new(),
        )
        .await
    {
        Ok(env) => {
            support::security::teardown(env).await;
            panic!(
                "a daemon without its policy was handed to the job: {}",
                out.text()
            );
        }
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("answered without asking its policy")
            && err.contains("IR_INNER_POLICY_SOCKET")
            && err.contains(&image.0),
        "{err}"
    );
    scope.assert_clean().await;
}

/// No setuid or setgid file in the sidecar image, and newuidmap/newgidmap carry file
/// capabilities instead (the image recipe's check, repeated against the image in use).
#[tokio::test]
async fn the_sidecar_image_has_no_setuid_binary() {
    let scope = Scope::new().await;
    let spec = ContainerSpec {
        name: format!("ir-{}-530-suid", scope.runner_id),
        image: DIND_IMAGE.to_string(),
        entrypoint: Some(vec!["sh".into()]),
        cmd: Some(vec![
            "-c".into(),
            "find / -xdev -type f -perm /6000; getcap /usr/bin/newuidmap /usr/bin/newgidmap".into(),
        ]),
        labels: [
            (LABEL_MANAGED, "1".to_string()),
            (LABEL_RUNNER, scope.runner_id.clone()),
            (LABEL_JOB, "530".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect(),
        ..Default::default()
    };
    let docker = &scope.docker;
    let id = docker.create_container(&spec).await.expect("create");
    docker.start_container(&id).await.expect("start");
    let code = docker.wait_container(&id).await.expect("wait");
    let logs = docker.logs_tail(&id, 200).await.expect("logs");
    assert!(docker.remove_container(&id).await.expect("remove"));
    assert_eq!(code, 0, "{logs}");
    let lines: Vec<&str> = logs.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines,
        [
            "/usr/bin/newuidmap cap_setuid=ep",
            "/usr/bin/newgidmap cap_setgid=ep"
        ],
        "setuid/setgid files or missing file capabilities:\n{logs}"
    );
    scope.assert_clean().await;
}

/// Not a check: the user-mode network's cost, measured through the real backend (issue 10 asks
/// for it). A service on the job network serves 300 MB; an inner container of each profile and
/// the job container itself download it. Run with
/// `cargo test --test rootless user_mode_network -- --ignored --nocapture`; figures go to
/// docs/benchmarks.md, never into an assertion.
#[tokio::test]
#[ignore = "a measurement, run by hand"]
async fn user_mode_network_download_300mb() {
    use isolated_runner::isolation::ServiceSpec;
    let scope = Scope::new().await;
    // IR_BENCH_SIDECAR_IMAGE measures an image under trial (an entrypoint or package change)
    // without retagging the one other tests use.
    let image = std::env::var("IR_BENCH_SIDECAR_IMAGE").ok();
    for profile in [SidecarProfile::Rootless, SidecarProfile::Hardened] {
        let backend = rootless(&scope, |c| {
            c.docker.isolation.sidecar_profile = profile;
            if let Some(i) = &image {
                c.docker.isolation.sidecar_image = i.clone();
            }
        });
        let mut s = scope.spec(540);
        s.services = vec![ServiceSpec {
            image: ContainerImage {
                name: BUSYBOX_IMAGE.to_string(),
                entrypoint: None,
            },
            command: vec![
                "sh".into(),
                "-c".into(),
                "mkdir -p /w && head -c 300000000 /dev/zero > /w/big && httpd -f -p 80 -h /w"
                    .into(),
            ],
            aliases: vec!["web".into()],
            env: Vec::new(),
        }];
        let env = prepare(&backend, &s).await;
        let text = expect_ok(
            env.as_ref(),
            r#"
for i in $(seq 1 100); do curl -fsS -o /dev/null -r 0-0 http://web/big && break; sleep 0.2; done
sleep 2
# Inner containers do not resolve the job network's aliases (as with any profile): use the address.
web=$(getent hosts web | cut -d' ' -f1)
for i in 1 2 3; do
  s=$(date +%s.%N); curl -fsS -o /dev/null http://web/big; e=$(date +%s.%N)
  echo "job-container $(awk "BEGIN{print $e - $s}")"
  s=$(date +%s.%N); docker run --rm --pull never isolated-runner/busybox:test wget -q -O /dev/null "http://$web/big"; e=$(date +%s.%N)
  echo "inner-container $(awk "BEGIN{print $e - $s}")"
  docker run --rm --pull never isolated-runner/busybox:test sh -c "a=\$(cut -d' ' -f1 /proc/uptime); wget -q -O /dev/null http://$web/big; b=\$(cut -d' ' -f1 /proc/uptime); echo inner-transfer-only \$a \$b" | awk '{print $1, $3 - $2}'
done
docker run --rm --pull never isolated-runner/busybox:test cat /sys/class/net/eth0/mtu | sed 's/^/inner-eth0-mtu /'
"#,
        )
        .await;
        eprintln!("profile {profile:?}:\n{text}");
        let report = env.teardown().await;
        assert!(report.failures.is_empty(), "{:?}", report.failures);
    }
    scope.assert_clean().await;
}

/// `runner doctor`'s ACL probe against real file systems: the test's tmp dir (ext4/xfs/tmpfs
/// here: ACLs) and a ramfs mounted for the test (no xattrs, so no ACLs), which a rootless job
/// could not start on.
#[test]
fn doctor_acl_probe_tells_a_file_system_without_acls() {
    use isolated_runner::doctor::facts::{AclProbe, probe_acl};
    let t = tempfile::tempdir().expect("tempdir");
    let ok = probe_acl(t.path(), 100_000_000);
    assert_eq!(ok, AclProbe::Supported, "the test's tmp dir");
    let mnt = t.path().join("ramfs");
    std::fs::create_dir(&mnt).expect("mkdir");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "ramfs", "ir-acl-probe"])
        .arg(&mnt)
        .status()
        .expect("mount");
    assert!(mounted.success(), "mount ramfs (the suite runs as root)");
    let probe = probe_acl(&mnt, 100_000_000);
    let left = std::fs::read_dir(&mnt)
        .map(|d| d.count())
        .unwrap_or(usize::MAX);
    let unmounted = std::process::Command::new("umount").arg(&mnt).status();
    assert!(
        unmounted.is_ok_and(|s| s.success()),
        "umount {}",
        mnt.display()
    );
    assert!(matches!(probe, AclProbe::Unsupported(_)), "{probe:?}");
    assert_eq!(left, 0, "the probe left its directory behind");
}
