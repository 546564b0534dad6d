//! Threats H6/J5 (CPU, memory, PID exhaustion) against the real dind backend: the limits are
//! applied, a fork bomb stops at the pids limit (in the job container and inside an inner
//! container on the job's daemon), a memory hog in an inner container is OOM-killed inside the
//! sidecar's cgroup, and the host (this process, the engine) keeps answering.
//!
//! Small limits on purpose: the machine is shared (2 cores).

use crate::support;

use isolated_runner::config::RunnerConfig;
use isolated_runner::isolation::{JobEnvironment, Role, ScriptRequest};
use std::sync::Arc;
use std::time::Duration;
use support::docker::{BUSYBOX_IMAGE, Collect, Scope};
use support::security::*;
use tokio_util::sync::CancellationToken;

/// The attacks run one at a time: the machine is shared and has 2 cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const SIDECAR_MEMORY: u64 = 512 << 20;
const SIDECAR_PIDS: i64 = 256;
const JOB_MEMORY: u64 = 256 << 20;
const JOB_PIDS: i64 = 128;

fn limited(c: &mut RunnerConfig) {
    c.docker.isolation.sidecar_memory = Some(SIDECAR_MEMORY);
    c.docker.isolation.sidecar_cpus = Some(1.0);
    c.docker.isolation.sidecar_pids_limit = Some(SIDECAR_PIDS);
    c.docker.memory = Some(JOB_MEMORY);
    c.docker.cpus = Some(0.5);
    c.docker.pids_limit = Some(JOB_PIDS);
}

fn host_config(container: &str, field: &str) -> String {
    let (ok, out, err) = sh(
        "docker",
        &[
            "inspect",
            "-f",
            &format!("{{{{.HostConfig.{field}}}}}"),
            container,
        ],
    );
    assert!(ok, "inspect {container}: {err}");
    out.trim().to_string()
}

/// Runs `script` in the job container while checking that the engine keeps answering; returns
/// the exit code (or `None` when the job was stopped at `limit`) and the output.
async fn run_while_host_answers(
    scope: &Scope,
    env: Arc<Box<dyn JobEnvironment>>,
    script: &str,
    started: &str,
    limit: Duration,
) -> (Option<i32>, String) {
    let out = Collect::new();
    let cancel = CancellationToken::new();
    let task = {
        let (env, out, cancel) = (env.clone(), out.clone(), cancel.clone());
        let script = script.to_string();
        tokio::spawn(async move {
            env.run_script(
                ScriptRequest {
                    role: Role::Build,
                    script,
                    env: vec![],
                },
                out,
                cancel,
            )
            .await
        })
    };
    out.wait_for(started, Duration::from_secs(120)).await;
    // The host stays healthy while the job exhausts itself: the engine answers.
    for _ in 0..3 {
        tokio::time::timeout(Duration::from_secs(20), scope.docker.ping())
            .await
            .expect("the engine answers within 20 s during the attack")
            .expect("engine ping");
    }
    let code = match tokio::time::timeout(limit, task).await {
        Ok(r) => r.expect("join").ok(),
        Err(_) => {
            cancel.cancel();
            None
        }
    };
    (code, out.text())
}

#[tokio::test]
async fn limits_are_applied_to_the_sidecar_and_the_job_container() {
    let _serial = SERIAL.lock().await;
    let scope = Scope::new().await;
    let _fw = FirewallSweep(scope.runner_id.clone());
    let cfg = scope.config(|c| {
        limited(c);
        c.docker.isolation.preload_images.clear();
    });
    let backend = scope.dind(cfg);
    let env = prepare(&backend, &scope.spec(901)).await;
    let sidecar = format!("ir-{}-901-sidecar", scope.runner_id);
    assert_eq!(host_config(&sidecar, "Memory"), SIDECAR_MEMORY.to_string());
    assert_eq!(
        host_config(&sidecar, "MemorySwap"),
        SIDECAR_MEMORY.to_string()
    );
    assert_eq!(host_config(&sidecar, "NanoCpus"), "1000000000");
    assert_eq!(host_config(&sidecar, "PidsLimit"), SIDECAR_PIDS.to_string());
    assert_eq!(host_config(&sidecar, "Privileged"), "false");
    // The job container's own view of its cgroups (cgroup v1 here).
    let text = expect_ok(
        env.as_ref(),
        "echo mem=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes)\n\
         echo pids=$(cat /sys/fs/cgroup/pids/pids.max)\n\
         echo quota=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us) period=$(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us)",
    )
    .await;
    assert!(text.contains(&format!("mem={JOB_MEMORY}")), "{text}");
    assert!(text.contains(&format!("pids={JOB_PIDS}")), "{text}");
    assert!(text.contains("quota=50000 period=100000"), "{text}");
    teardown(env).await;
    scope.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_bombs_stop_at_the_pids_limits_and_the_host_stays_healthy() {
    let _serial = SERIAL.lock().await;
    let scope = Scope::new().await;
    let _fw = FirewallSweep(scope.runner_id.clone());
    let backend = scope.dind(scope.config(limited));
    let env = Arc::new(prepare(&backend, &scope.spec(902)).await);

    // 1. In the job container: the classic bomb, killed as a process group after 15 s.
    let (code, text) = run_while_host_answers(
        &scope,
        env.clone(),
        // The bomb checks a stop file before every fork, and the script stops it and waits
        // for the pids to drain with bash builtins only: at the limit, `timeout` or `kill`
        // would need a fork themselves, and killing the bomb's root leaves its orphans.
        "stop=$TMPDIR/stop-bomb; rm -f \"$stop\"\n\
         echo bomb-started\n\
         (b(){ [ -e \"$stop\" ] && exit 0; b | b & }; b) 2>/dev/null &\n\
         SECONDS=0; while [ \"$SECONDS\" -lt 15 ]; do :; done\n\
         : > \"$stop\"\n\
         SECONDS=0; while [ \"$SECONDS\" -lt 60 ]; do\n\
           read -r n < /sys/fs/cgroup/pids/pids.current; [ \"$n\" -lt 8 ] && break\n\
         done\n\
         echo events=$(cat /sys/fs/cgroup/pids/pids.events)\n\
         echo max=$(cat /sys/fs/cgroup/pids/pids.max)\n",
        "bomb-started",
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(code, Some(0), "the job survives its own bomb: {text}");
    assert!(text.contains(&format!("max={JOB_PIDS}")), "{text}");
    let hits: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("events=max "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(hits > 0, "the bomb must have hit the pids limit: {text}");

    // 2. Inside an inner container on the job's daemon: bounded by the sidecar's limit.
    let (code, text) = run_while_host_answers(
        &scope,
        env.clone(),
        "docker run -d --name bomb --pull never isolated-runner/busybox:test \
            sh -c 'f(){ f|f & }; f; sleep 600' >/dev/null\n\
         echo inner-bomb-started\n\
         sleep 15\n\
         timeout 90 docker rm -f bomb >/dev/null && echo inner-bomb-removed\n\
         docker info --format 'daemon-ok={{.ServerVersion}}'\n",
        "inner-bomb-started",
        Duration::from_secs(240),
    )
    .await;
    eprintln!("inner bomb: exit {code:?}\n{text}");
    // Sidecar-wide pids stayed within the limit (read on the host: cgroupfs driver).
    let id = host_config(&format!("ir-{}-902-sidecar", scope.runner_id), "PidsLimit");
    assert_eq!(id, SIDECAR_PIDS.to_string());
    let (_, full_id, _) = sh(
        "docker",
        &[
            "inspect",
            "-f",
            "{{.Id}}",
            &format!("ir-{}-902-sidecar", scope.runner_id),
        ],
    );
    if let Ok(events) = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/pids/docker/{}/pids.events",
        full_id.trim()
    )) {
        eprintln!("sidecar pids.events: {events}");
        assert!(
            events.trim() != "max 0",
            "the inner bomb hit the sidecar's pids limit"
        );
    }
    // The job either finished or was stopped within its limit; either way the engine answers
    // and teardown removes everything.
    scope
        .docker
        .ping()
        .await
        .expect("engine answers after the bomb");
    let env = Arc::try_unwrap(env).ok().expect("single owner");
    teardown(env).await;
    scope.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_hog_in_an_inner_container_is_killed_inside_the_sidecar_limit() {
    let _serial = SERIAL.lock().await;
    let scope = Scope::new().await;
    let _fw = FirewallSweep(scope.runner_id.clone());
    let cfg = scope.config(limited);
    let rootless =
        cfg.docker.isolation.sidecar_profile == isolated_runner::config::SidecarProfile::Rootless;
    let backend = scope.dind(cfg);
    let env = Arc::new(prepare(&backend, &scope.spec(903)).await);
    let sidecar = format!("ir-{}-903-sidecar", scope.runner_id);
    let (code, text) = run_while_host_answers(
        &scope,
        env.clone(),
        "echo hog-started\n\
         docker run --name hog --pull never isolated-runner/busybox:test sh -c 'head -c 2000m /dev/zero | tail' \
           && echo HOG-SURVIVED || echo hog-exit=$?\n\
         docker inspect -f 'hog-oom-killed={{.State.OOMKilled}}' hog\n\
         docker rm hog >/dev/null\n\
         docker info --format 'daemon-ok={{.ServerVersion}}'\n",
        "hog-started",
        Duration::from_secs(240),
    )
    .await;
    assert_eq!(code, Some(0), "{text}");
    assert!(!text.contains("HOG-SURVIVED"), "{text}");
    assert!(text.contains("hog-exit="), "{text}");
    assert!(
        text.contains("daemon-ok="),
        "the job's daemon survives the hog: {text}"
    );
    // Still running, and the sidecar's cgroup never went past its limit.
    assert_eq!(host_config(&sidecar, "Memory"), SIDECAR_MEMORY.to_string());
    let (_, state, _) = sh("docker", &["inspect", "-f", "{{.State.Running}}", &sidecar]);
    assert_eq!(state.trim(), "true");
    let (_, full_id, _) = sh("docker", &["inspect", "-f", "{{.Id}}", &sidecar]);
    let dir = format!("/sys/fs/cgroup/memory/docker/{}", full_id.trim());
    // The inner daemon saw its container OOM-killed (the kernel counts the kill in the
    // victim's own cgroup, which v1 does not propagate to the sidecar's). A rootless daemon on
    // cgroup v1 has no cgroups of its own: the sidecar's limit kills the hog (SIGKILL, 137)
    // without the inner daemon knowing why (docs/sidecar-profiles.md, "Limits").
    if rootless && !std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        assert!(text.contains("hog-exit=137"), "{text}");
    } else {
        assert!(text.contains("hog-oom-killed=true"), "{text}");
    }
    if let Ok(max) = std::fs::read_to_string(format!("{dir}/memory.max_usage_in_bytes")) {
        let max: u64 = max.trim().parse().unwrap_or(u64::MAX);
        eprintln!("sidecar memory: max usage {max}\n{text}");
        // The kernel may charge a page or so past the limit before it reclaims or kills.
        assert!(
            max <= SIDECAR_MEMORY + 1024 * 1024,
            "sidecar used {max} > {SIDECAR_MEMORY} (+1 MiB slack)"
        );
    }
    // The job container itself (another cgroup) was not touched: the script went on.
    scope.docker.ping().await.expect("engine answers");
    let env = Arc::try_unwrap(env).ok().expect("single owner");
    teardown(env).await;
    scope.assert_clean().await;
}

const SERVICE_MEMORY: u64 = 64 << 20;
const SERVICE_PIDS: i64 = 64;

/// The host's view of a container's cgroup file (cgroup v1, cgroupfs driver, as here).
fn cgroup_file(container: &str, controller: &str, file: &str) -> String {
    let (ok, id, err) = sh("docker", &["inspect", "-f", "{{.Id}}", container]);
    assert!(ok, "inspect {container}: {err}");
    let path = format!("/sys/fs/cgroup/{controller}/docker/{}/{file}", id.trim());
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// H4: services are the job's own containers on the host; a fork bomb and a memory hog as
/// services stop at their limits, and the engine keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_fork_bomb_and_memory_hog_hit_the_limits() {
    let _serial = SERIAL.lock().await;
    let scope = Scope::new().await;
    let _fw = FirewallSweep(scope.runner_id.clone());
    let cfg = scope.config(|c| {
        limited(c);
        c.docker.isolation.preload_images.clear();
        c.docker.service_memory = Some(SERVICE_MEMORY);
        c.docker.service_cpus = Some(0.5);
        c.docker.isolation.service_pids_limit = Some(SERVICE_PIDS);
    });
    let backend = scope.dind(cfg);
    let service = |command: &str| isolated_runner::isolation::ServiceSpec {
        image: isolated_runner::isolation::ContainerImage {
            name: BUSYBOX_IMAGE.to_string(),
            entrypoint: None,
        },
        command: vec!["sh".into(), "-c".into(), command.into()],
        aliases: Vec::new(),
        env: Vec::new(),
    };
    let mut s = scope.spec(904);
    s.services = vec![
        service("f(){ f|f & }; f; sleep 600"),
        service("head -c 2000m /dev/zero | tail"),
    ];
    let env = prepare(&backend, &s).await;
    let bomb = format!("ir-{}-904-svc-0", scope.runner_id);
    let hog = format!("ir-{}-904-svc-1", scope.runner_id);
    for svc in [&bomb, &hog] {
        assert_eq!(host_config(svc, "Memory"), SERVICE_MEMORY.to_string());
        assert_eq!(host_config(svc, "MemorySwap"), SERVICE_MEMORY.to_string());
        assert_eq!(host_config(svc, "PidsLimit"), SERVICE_PIDS.to_string());
        assert_eq!(host_config(svc, "NanoCpus"), "500000000");
    }
    // Both attacks run on their own; wait until each has met its limit, checking that the
    // engine answers all along.
    let mut bomb_hits = 0u64;
    let mut hog_state = String::new();
    for _ in 0..120 {
        tokio::time::timeout(Duration::from_secs(20), scope.docker.ping())
            .await
            .expect("the engine answers within 20 s during the attack")
            .expect("engine ping");
        bomb_hits = cgroup_file(&bomb, "pids", "pids.events")
            .trim()
            .strip_prefix("max ")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let (_, state, _) = sh(
            "docker",
            &[
                "inspect",
                "-f",
                "{{.State.Running}} oom={{.State.OOMKilled}} exit={{.State.ExitCode}}",
                &hog,
            ],
        );
        hog_state = state.trim().to_string();
        if bomb_hits > 0 && hog_state.starts_with("false") {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        bomb_hits > 0,
        "the service's fork bomb hit its pids limit: {hog_state}"
    );
    let current: i64 = cgroup_file(&bomb, "pids", "pids.current")
        .trim()
        .parse()
        .expect("pids.current");
    assert!(current <= SERVICE_PIDS, "{current} pids");
    assert_eq!(
        hog_state.split(" exit=").next(),
        Some("false oom=true"),
        "the memory hog is OOM-killed"
    );
    // The job itself still runs next to its bomb.
    let text = expect_ok(env.as_ref(), "echo job-still-runs").await;
    assert!(text.contains("job-still-runs"), "{text}");
    scope.docker.ping().await.expect("engine answers after");
    teardown(env).await;
    scope.assert_clean().await;
}

/// The rootless profile on a host where its dockerd runs without cgroups (cgroup v1, as
/// here): an inner `docker run --memory --cpus --pids-limit` is accepted, recorded and not
/// applied, and the Docker CLI says nothing; the runner says it once per job in the step's
/// output, naming the limits that do hold. The sidecar's memory limit still stops a hog.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rootless_inner_limits_are_dropped_and_the_trace_says_so_once() {
    use support::docker::run_project_script;
    let _serial = SERIAL.lock().await;
    let scope = Scope::new().await;
    let _fw = FirewallSweep(scope.runner_id.clone());
    let cfg = scope.config(|c| {
        limited(c);
        c.docker.isolation.sidecar_profile = isolated_runner::config::SidecarProfile::Rootless;
    });
    let backend = scope.dind(cfg);
    let env = prepare(&backend, &scope.spec(905)).await;
    let sidecar = format!("ir-{}-905-sidecar", scope.runner_id);
    // To the nanosecond: a rootless daemon now starts within a second, and whole seconds
    // would let its start-up lines ("… feature limitations") into the step's log.
    let since = {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        format!("{}.{:09}", t.as_secs(), t.subsec_nanos())
    };
    // 150 MiB and 60 processes in a container capped at 64 MiB and 32 pids; stderr joined
    // so a CLI warning would show.
    let (r, first) = run_project_script(
        env.as_ref(),
        "echo \"inner-driver=$(docker info -f '{{.CgroupDriver}}')\"\n\
         docker run --name capped -m 64m --cpus 0.5 --pids-limit 32 isolated-runner/busybox:test \
           sh -c 'head -c 150m /dev/zero | tail >/dev/null && echo capped-150m-ok; \
             for i in $(seq 60); do sleep 2 & done; wait && echo capped-60-pids-ok' 2>&1\n\
         docker inspect -f 'recorded={{.HostConfig.Memory}}/{{.HostConfig.NanoCpus}}/{{.HostConfig.PidsLimit}}' capped\n\
         docker rm capped >/dev/null",
    )
    .await;
    assert_eq!(r.ok(), Some(0), "{first}");
    // A later step: more limits, and a hog past the sidecar's 512 MiB.
    let (r, second) = run_project_script(
        env.as_ref(),
        "docker run --rm -m 32m isolated-runner/busybox:test true 2>&1\n\
         docker run --rm -m 64m isolated-runner/busybox:test sh -c 'head -c 700m /dev/zero | tail' 2>&1 \
           && echo HOG-SURVIVED || echo hog-exit=$?\n\
         docker info -f 'daemon-ok={{.ServerVersion}}'",
    )
    .await;
    assert_eq!(r.ok(), Some(0), "{second}");
    let both = format!("{first}\n{second}");
    eprintln!("what the job saw:\n{both}");
    let dropped = first.contains("inner-driver=none");
    let hint = "isolated-runner: an inner container asked for `--memory`";
    if dropped {
        // Recorded as asked, not applied: 150 MiB and 60 sleeps fit in a "64 MiB, 32 pids"
        // container.
        assert!(first.contains("capped-150m-ok"), "{first}");
        assert!(first.contains("capped-60-pids-ok"), "{first}");
        assert!(first.contains("recorded=67108864/500000000/32"), "{first}");
        assert!(
            !both.contains("WARNING"),
            "the CLI warned after all: {both}"
        );
        // Nor does the daemon say anything about it in its log (the sidecar's).
        let out = std::process::Command::new("docker")
            .args(["logs", "--since", &since, &sidecar])
            .output()
            .expect("docker logs");
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let said: Vec<&str> = log
            .lines()
            .filter(|l| l.to_lowercase().contains("limit"))
            .collect();
        assert!(said.is_empty(), "the daemon logged it: {said:?}");
        assert_eq!(both.matches(hint).count(), 1, "{both}");
        assert!(
            both.contains("`--memory`, `--cpus`, `--pids-limit`")
                && both.contains("memory 512 MiB, 1 CPU, 256 pids"),
            "{both}"
        );
    } else {
        // A daemon that applies limits (cgroup v2 with delegation): the cap holds, no hint.
        assert!(!first.contains("capped-150m-ok"), "{first}");
        assert!(!both.contains(hint), "{both}");
    }
    // The sidecar's limit holds either way: the hog dies, the job's daemon lives.
    assert!(!second.contains("HOG-SURVIVED"), "{second}");
    assert!(second.contains("hog-exit=137"), "{second}");
    assert!(second.contains("daemon-ok="), "{second}");
    teardown(env).await;
    scope.assert_clean().await;
}
