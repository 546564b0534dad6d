//! Threats H8 (host services), J1 (other jobs' networks) and S4 (metadata) against the real dind
//! backend and the real firewall. Traffic goes only to the test's own listener and container;
//! metadata is checked by reading the installed rules, never by sending there.
//!
//! Needs root, iptables, Docker and the test images.

mod support;

use isolated_runner::config::Egress;
use support::docker::Scope;
use support::security::*;

const MARK_HOST: &str = "HOST-LISTENER-REACHED";
const MARK_OTHER: &str = "OTHER-BRIDGE-REACHED";

/// A probe script for the job container and for a container the job starts on its own daemon.
fn probes(gw: &str, port: u16, other: &str) -> String {
    format!(
        r#"
echo "job-daemon=$(docker info --format '{{{{.ServerVersion}}}}')"
curl -sS --max-time 3 http://{gw}:{port}/ || echo job-to-host-blocked
curl -sS --max-time 3 http://{other}/ || echo job-to-other-blocked
docker run --rm --pull never isolated-runner/busybox:test sh -c '
  wget -T 3 -qO- http://{gw}:{port}/ || echo inner-to-host-blocked
  wget -T 3 -qO- http://{other}/ || echo inner-to-other-blocked
  nc -w 3 {gw} 22 </dev/null && echo inner-ssh-open || echo inner-to-host-ssh-blocked'
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_and_inner_containers_cannot_reach_host_listener_or_other_bridges() {
    let scope = Scope::new().await;
    let _fw = FirewallSweep(scope.runner_id.clone());
    let backend = dind_with(&scope, config(&scope, |_| {}));
    let env = prepare(&backend, &spec(&scope, 801)).await;
    let chain = chain_of(&scope, 801);

    // The test's own listener on the job bridge's gateway (an address of the host) and a
    // labelled server on another bridge of the pool.
    let gw = gateway_of(&scope, 801);
    let port = host_listener(&gw, MARK_HOST).await;
    let other = OtherBridge::start(&scope, MARK_OTHER);
    // Controls: both answer the host itself (host to bridge is OUTPUT, not filtered), so a
    // failure from the job is the policy's doing, not a dead server.
    let (_, from_host, _) = sh(
        "curl",
        &["-sS", "--max-time", "5", &format!("http://{gw}:{port}/")],
    );
    assert!(
        from_host.contains(MARK_HOST),
        "control: listener answers the host"
    );
    let mut answered = false;
    for _ in 0..100 {
        let (_, t, _) = sh(
            "curl",
            &["-sS", "--max-time", "2", &format!("http://{}/", other.ip)],
        );
        if t.contains(MARK_OTHER) {
            answered = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        answered,
        "control: the other bridge's server answers the host"
    );

    let drops_before = dropped_packets(&chain);
    let text = expect_ok(env.as_ref(), &probes(&gw, port, &other.ip)).await;
    assert!(
        text.contains("job-daemon="),
        "the job still reaches its own daemon: {text}"
    );
    assert!(!text.contains("REACHED"), "a probe got through: {text}");
    for m in [
        "job-to-host-blocked",
        "job-to-other-blocked",
        "inner-to-host-blocked",
        "inner-to-other-blocked",
        "inner-to-host-ssh-blocked",
    ] {
        assert!(text.contains(m), "{m} missing: {text}");
    }
    // The drops are the chain's own (not Docker's isolation rules or a dead route).
    assert!(
        dropped_packets(&chain) > drops_before,
        "the job chain counted no drops:\n{}",
        chain_rules("iptables", &chain).unwrap_or_default()
    );

    teardown(env).await;
    assert!(
        chain_rules("iptables", &chain).is_none(),
        "v4 chain left after teardown"
    );
    assert!(
        chain_rules("ip6tables", &chain).is_none(),
        "v6 chain left after teardown"
    );
    assert!(rules_mentioning("iptables", &format!("runner={}", scope.runner_id)).is_empty());
    drop(other);
}

/// An IPv4 address of the host that is not on a job bridge: `docker0`'s when there is one.
fn host_address() -> String {
    let (ok, out, err) = sh("ip", &["-4", "-o", "addr", "show", "scope", "global"]);
    assert!(ok, "ip addr: {err}");
    let addrs: Vec<(String, String)> = out
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let ip = f.get(3)?.split('/').next()?.to_string();
            Some((f.get(1)?.to_string(), ip))
        })
        .filter(|(_, ip)| !ip.starts_with("10.213."))
        .collect();
    addrs
        .iter()
        .find(|(dev, _)| dev == "docker0")
        .or(addrs.first())
        .map(|(_, ip)| ip.clone())
        .expect("the host has a global IPv4 address")
}

const MARK_CLONE: &str = "CLONE-HOST-REACHED";

/// GitLab's `clone_url` may point the clone at another host:port than the runner's URL; on the
/// runner's own host that port would be dropped by the INPUT rules. The job's clone endpoint
/// is allowed like the GitLab URL, and nothing else on the host opens with it.
#[tokio::test]
async fn the_clone_host_on_the_runner_host_is_reachable_and_only_it() {
    let scope = Scope::new().await;
    let _fw = FirewallSweep(scope.runner_id.clone());
    let host = host_address();
    let clone_port = host_listener(&host, MARK_CLONE).await;
    let other_port = host_listener(&host, MARK_HOST).await;
    // Once on a sidecar of its own, once on a pre-started one (warm pool), whose firewall was
    // installed before the job and its clone host were known.
    for (job, pool) in [(803, 0), (804, 1)] {
        let backend = dind_with(
            &scope,
            config(&scope, |c| {
                c.docker.isolation.preload_images.clear();
                c.docker.isolation.warm_pool = pool;
            }),
        );
        backend.warm_up(&scope.runner_id).await;
        let mut spec = spec(&scope, job);
        spec.repo_endpoint = Some(isolated_runner::isolation::HostPort {
            host: host.clone(),
            port: clone_port,
        });
        let env = prepare(&backend, &spec).await;
        let text = expect_ok(
            env.as_ref(),
            &format!(
                "curl -sS --max-time 5 http://{host}:{clone_port}/ || echo clone-host-blocked\n\
                 curl -sS --max-time 3 http://{host}:{other_port}/ || echo other-port-blocked\n"
            ),
        )
        .await;
        assert!(
            text.contains(MARK_CLONE),
            "the clone host was dropped (warm_pool {pool}): {text}"
        );
        assert!(
            text.contains("other-port-blocked") && !text.contains(MARK_HOST),
            "another port of the host opened too (warm_pool {pool}): {text}"
        );
        teardown(env).await;
        let report = backend.shutdown().await;
        assert!(report.failures.is_empty(), "{:?}", report.failures);
    }
    assert!(rules_mentioning("iptables", &format!("runner={}", scope.runner_id)).is_empty());
}

#[tokio::test]
async fn metadata_is_dropped_before_any_accept_and_dns_stays_open_under_deny() {
    let scope = Scope::new().await;
    let _fw = FirewallSweep(scope.runner_id.clone());
    let cfg = config(&scope, |c| {
        c.docker.isolation.egress = Egress::Deny;
        c.docker.isolation.preload_images.clear();
    });
    let backend = dind_with(&scope, cfg);
    let env = prepare(&backend, &spec(&scope, 802)).await;
    let chain = chain_of(&scope, 802);

    let v4 = chain_rules("iptables", &chain).expect("v4 chain installed");
    let v6 = chain_rules("ip6tables", &chain).expect("v6 chain installed");
    let lines: Vec<&str> = v4.lines().collect();
    let pos = |needle: &str| lines.iter().position(|l| l.contains(needle));
    let meta = pos("-d 169.254.0.0/16").expect("metadata drop");
    assert!(lines[meta].ends_with("-j DROP"), "{v4}");
    let first_accept_to_dst = lines
        .iter()
        .position(|l| l.contains("--dport") && l.ends_with("-j ACCEPT"));
    if let Some(a) = first_accept_to_dst {
        assert!(
            meta < a,
            "metadata must be dropped before any allowed endpoint:\n{v4}"
        );
    }
    assert!(
        lines.last().is_some_and(|l| l.ends_with("-j DROP")),
        "deny ends in DROP:\n{v4}"
    );
    assert!(
        v6.contains("-d fd00:ec2::254/128") && v6.contains("-j DROP"),
        "{v6}"
    );
    // Jumps from the forward hook and INPUT for this bridge only.
    let jumps = rules_mentioning("iptables", &format!("-j {chain}"));
    assert!(
        jumps.iter().any(|j| j.starts_with("-A DOCKER-USER -i br-")),
        "{jumps:?}"
    );
    assert!(
        jumps.iter().any(|j| j.starts_with("-A INPUT -i br-")),
        "{jumps:?}"
    );
    // DNS to the host's resolvers stays open under deny, and the inner daemon uses them.
    let resolvers = isolated_runner::isolation::egress::host_resolvers().await;
    for r in resolvers.iter().filter(|r| r.is_ipv4()) {
        assert!(
            v4.contains(&format!("-d {r}/32 -p udp -m udp --dport 53")),
            "DNS to {r} must stay open:\n{v4}"
        );
    }
    let (_, cmd, _) = sh(
        "docker",
        &[
            "inspect",
            "-f",
            "{{json .Config.Cmd}}",
            &format!("ir-{}-802-sidecar", scope.runner_id),
        ],
    );
    for r in &resolvers {
        assert!(
            cmd.contains(&format!("--dns={r}")),
            "inner dockerd flags: {cmd}"
        );
    }
    assert!(!cmd.contains("8.8.8.8"), "{cmd}");
    let text = expect_ok(env.as_ref(), "docker info --format '{{.ServerVersion}}'").await;
    assert!(!text.trim().is_empty());
    teardown(env).await;
    assert!(chain_rules("iptables", &chain).is_none());
    assert!(chain_rules("ip6tables", &chain).is_none());
}

#[tokio::test]
async fn reaper_removes_the_chains_of_a_dead_runner() {
    let scope = Scope::new().await;
    let _fw = FirewallSweep(scope.runner_id.clone());
    let cfg = config(&scope, |c| c.docker.isolation.preload_images.clear());
    let backend = dind_with(&scope, cfg);
    let env = prepare(&backend, &spec(&scope, 803)).await;
    let chain = chain_of(&scope, 803);
    assert!(chain_rules("iptables", &chain).is_some());
    // The runner "dies": no teardown.
    drop(env);
    let req = isolated_runner::isolation::reaper::ReapRequest {
        runner_id: scope.runner_id.clone(),
        state_dir: scope.state_dir(),
        builds_dir: scope.builds_dir(),
        dry_run: false,
    };
    let report = isolated_runner::isolation::reaper::reap(&scope.docker, &req).await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert!(
        report
            .removed
            .iter()
            .any(|r| r == &format!("firewall chain {chain}")),
        "{:?}",
        report.removed
    );
    assert!(chain_rules("iptables", &chain).is_none());
    assert!(chain_rules("ip6tables", &chain).is_none());
    assert!(rules_mentioning("iptables", &chain).is_empty());
    scope.assert_clean().await;
}

#[tokio::test]
async fn reaper_leaves_live_chains_of_other_runners_and_removes_orphans() {
    let scope = Scope::new().await;
    let _fw = FirewallSweep(scope.runner_id.clone());
    let cfg = config(&scope, |c| c.docker.isolation.preload_images.clear());
    let backend = dind_with(&scope, cfg);
    let env = prepare(&backend, &spec(&scope, 804)).await;
    let chain = chain_of(&scope, 804);
    // Another runner on the same host starts up and sweeps: our job is alive (its network
    // exists), so its chain stays.
    let other = isolated_runner::isolation::reaper::ReapRequest {
        runner_id: format!("t-{}", &uuid::Uuid::new_v4().simple().to_string()[..16]),
        state_dir: scope.tmp.path().join("other-state"),
        builds_dir: scope.tmp.path().join("other-builds"),
        dry_run: false,
    };
    let report = isolated_runner::isolation::reaper::reap(&scope.docker, &other).await;
    assert!(
        !report.found.iter().any(|f| f.contains(&chain)),
        "{:?}",
        report.found
    );
    assert!(chain_rules("iptables", &chain).is_some());
    // Our runner dies and its Docker objects vanish (as after a crash and a manual cleanup):
    // the chain is now an orphan, and the other runner's sweep removes it.
    drop(env);
    let label = format!("label=io.isolated-runner.runner={}", scope.runner_id);
    let (_, ids, _) = sh("docker", &["ps", "-aq", "--filter", &label]);
    for id in ids.lines() {
        sh("docker", &["rm", "-fv", id]);
    }
    let (_, nets, _) = sh("docker", &["network", "ls", "-q", "--filter", &label]);
    for n in nets.lines() {
        sh("docker", &["network", "rm", n]);
    }
    let report = isolated_runner::isolation::reaper::reap(&scope.docker, &other).await;
    assert!(
        report
            .removed
            .iter()
            .any(|r| r == &format!("firewall chain {chain}")),
        "{:?}",
        report
    );
    assert!(chain_rules("iptables", &chain).is_none());
    assert!(chain_rules("ip6tables", &chain).is_none());
}
