//! Threats H8 (host services), J1 (other jobs' networks) and S4 (metadata) against the real dind
//! backend and the real firewall. Traffic goes only to the test's own listener and container;
//! metadata is checked by reading the installed rules, never by sending there.
//!
//! Needs root, iptables, Docker and the test images.

use crate::support;

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
    let backend = scope.dind(scope.config(|_| {}));
    let env = prepare(&backend, &scope.spec(801)).await;
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
    assert!(
        host_reaches(&format!("http://{}/", other.ip), MARK_OTHER).await,
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

/// Whether `url` answers the host itself with `marker` within ~10 s (a server just started).
async fn host_reaches(url: &str, marker: &str) -> bool {
    for _ in 0..100 {
        let (_, t, _) = sh("curl", &["-sS", "--max-time", "2", url]);
        if t.contains(marker) {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    false
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
const MARK_PRIVATE: &str = "PRIVATE-NET-REACHED";

/// Whether `rules` (one chain's `iptables -S`) accepts TCP to `port`.
fn accepts_port(rules: &str, port: u16) -> bool {
    rules
        .lines()
        .any(|l| l.contains(&format!("--dport {port} ")) && l.ends_with("-j ACCEPT"))
}

/// H6: a payload whose `git_info.repo_url` names a host:port other than the GitLab URL's is
/// refused before anything exists, and the firewall never reads the payload: even a spec that
/// carries that endpoint opens nothing. The same host:port named by the config's `clone_url` is
/// allowed, on a sidecar of the job's own and on a pre-started one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clone_url_on_another_host_port_opens_nothing() {
    use isolated_runner::gitlab::types::JobResponse;
    use isolated_runner::job::trust;
    let scope = Scope::new().await;
    let _fw = FirewallSweep(scope.runner_id.clone());
    let host = host_address();
    let clone_port = host_listener(&host, MARK_CLONE).await;
    let other_port = host_listener(&host, MARK_HOST).await;
    let clone_host = isolated_runner::isolation::HostPort {
        host: host.clone(),
        port: clone_port,
    };
    // Control: the listener answers the host itself.
    let (_, from_host, _) = sh(
        "curl",
        &[
            "-sS",
            "--max-time",
            "5",
            &format!("http://{host}:{clone_port}/"),
        ],
    );
    assert!(from_host.contains(MARK_CLONE), "control: {from_host}");

    // The payload names the listener: the pipeline's check refuses it with a reason.
    let mut payload = JobResponse::default();
    payload.git_info.repo_url = isolated_runner::secret::Secret::new(format!(
        "http://gitlab-ci-token:glcbt-x@{host}:{clone_port}/g/p.git"
    ));
    let plain = scope.config(|c| c.docker.isolation.preload_images.clear());
    let refused = trust::clone_endpoint(&payload, &plain).unwrap_err();
    assert!(
        refused.contains(&format!("{host}:{clone_port}")),
        "{refused}"
    );

    // Even a spec carrying the endpoint (as the pipeline built it before) opens nothing.
    let backend = scope.dind(plain);
    let mut s = scope.spec(805);
    s.repo_endpoint = Some(clone_host.clone());
    let env = prepare(&backend, &s).await;
    let rules = chain_rules("iptables", &chain_of(&scope, 805)).expect("chain installed");
    assert!(!accepts_port(&rules, clone_port), "{rules}");
    let text = expect_ok(
        env.as_ref(),
        &format!("curl -sS --max-time 3 http://{host}:{clone_port}/ || echo clone-host-blocked\n"),
    )
    .await;
    assert!(
        text.contains("clone-host-blocked") && !text.contains(MARK_CLONE),
        "the payload's clone host opened: {text}"
    );
    teardown(env).await;
    let report = backend.shutdown().await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);

    // Named by the config's clone_url: allowed, and nothing else on the host with it. Once on
    // a sidecar of its own, once on a pre-started one (warm pool), whose firewall was installed
    // before the job was known.
    for (job, pool) in [(806, 0), (807, 1)] {
        let cfg = scope.config(|c| {
            c.docker.isolation.preload_images.clear();
            c.docker.isolation.warm_pool = pool;
            c.clone_url = Some(format!("http://{host}:{clone_port}/").parse().unwrap());
        });
        assert_eq!(
            trust::clone_endpoint(&payload, &cfg).unwrap(),
            Some(clone_host.clone())
        );
        let backend = scope.dind(cfg);
        backend.warm_up(&scope.runner_id).await;
        let mut s = scope.spec(job);
        s.repo_endpoint = Some(clone_host.clone());
        let env = prepare(&backend, &s).await;
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
            "the configured clone host was dropped (warm_pool {pool}): {text}"
        );
        assert!(
            text.contains("other-port-blocked") && !text.contains(MARK_HOST),
            "another port of the host opened too (warm_pool {pool}): {text}"
        );
        teardown(env).await;
        let report = backend.shutdown().await;
        assert!(report.failures.is_empty(), "{:?}", report.failures);
    }
    let left = rules_mentioning("iptables", &format!("runner={}", scope.runner_id));
    assert!(left.is_empty(), "{left:#?}");
}

/// M5: cloud service addresses outside link-local (Azure WireServer, Alibaba metadata, GCE's
/// IPv6 metadata) are dropped by default (read from the installed rules, never probed), and
/// `block_private_networks` closes private ranges: a host-local non-Docker network of the
/// test's own (a namespace on 10.214.x.0/30, RFC 1918) answers the job by default, not once
/// the setting is on, and again when an `egress` list entry names it.
#[tokio::test]
async fn private_and_cloud_service_ranges_need_an_explicit_allow() {
    let scope = Scope::new().await;
    let _fw = FirewallSweep(scope.runner_id.clone());
    let mut fx = support::netns::Fixture::new();
    let third = 1 + uuid::Uuid::new_v4().as_bytes()[0] % 250;
    let prefix = format!("10.214.{third}");
    let private_ip = fx.outside(&prefix, MARK_PRIVATE);
    let url = format!("http://{private_ip}:8080/");
    let probe = format!("curl -sS --max-time 3 {url} || echo private-blocked\n");
    let listed: ipnet::IpNet = format!("{prefix}.0/30").parse().unwrap();
    let cases = [
        (810, false, Egress::Allow, true),
        (811, true, Egress::Allow, false),
        (
            812,
            true,
            Egress::AllowList(vec![listed, "0.0.0.0/0".parse().unwrap()]),
            true,
        ),
    ];
    for (job, block, egress, reachable) in cases {
        let cfg = scope.config(|c| {
            c.docker.isolation.preload_images.clear();
            c.docker.isolation.block_private_networks = block;
            c.docker.isolation.egress = egress.clone();
        });
        let backend = scope.dind(cfg);
        let env = prepare(&backend, &scope.spec(job)).await;
        let chain = chain_of(&scope, job);
        let v4 = chain_rules("iptables", &chain).expect("v4 chain");
        let v6 = chain_rules("ip6tables", &chain).expect("v6 chain");
        for cloud in ["-d 168.63.129.16/32", "-d 100.100.100.200/32"] {
            assert!(
                v4.lines()
                    .any(|l| l.contains(cloud) && l.ends_with("-j DROP")),
                "{cloud} not dropped:\n{v4}"
            );
        }
        assert!(
            v6.lines()
                .any(|l| l.contains("-d fd20:ce::254/128") && l.ends_with("-j DROP")),
            "{v6}"
        );
        let private_drops = [
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "100.64.0.0/10",
        ]
        .iter()
        .filter(|r| {
            v4.lines()
                .any(|l| l.contains(&format!("-d {r} ")) && l.ends_with("-j DROP"))
        })
        .count();
        assert_eq!(private_drops, if block { 4 } else { 0 }, "{v4}");
        assert_eq!(v6.contains("-d fc00::/7"), block, "{v6}");

        let mut text = String::new();
        // The namespace's server may take a moment to start the first time.
        for _ in 0..if reachable { 20 } else { 1 } {
            text = expect_ok(env.as_ref(), &probe).await;
            if text.contains(MARK_PRIVATE) {
                break;
            }
        }
        assert_eq!(
            text.contains(MARK_PRIVATE),
            reachable,
            "job {job} (block {block}): {text}"
        );
        if !reachable {
            assert!(text.contains("private-blocked"), "{text}");
        }
        teardown(env).await;
        let report = backend.shutdown().await;
        assert!(report.failures.is_empty(), "{:?}", report.failures);
    }
    drop(fx);
    assert!(rules_mentioning("iptables", &format!("runner={}", scope.runner_id)).is_empty());
}

/// The policy holds while the host's Docker creates networks. Docker moves its own jumps
/// `FORWARD -j DOCKER-USER` and `FORWARD -j DOCKER-ISOLATION-STAGE-1` back to the top on every
/// network it creates, by deleting and inserting each again: two iptables processes apart,
/// FORWARD has no way into that chain, and a job's new connection met Docker's own
/// `-i <bridge> ! -o <bridge> -j ACCEPT`. One SYN through a gap became a whole connection (our
/// chain accepts ESTABLISHED). The attack: the job keeps connecting, from many loops, to a
/// blocked private address (the test's own namespace, `block_private_networks`) and to a
/// container on another Docker network of the host, outside the runner's pool (kept from the
/// job by Docker's isolation alone), while the test creates and removes networks as other jobs
/// starting on the host would. Before the fixes: ~60 connections through to the first while 73
/// networks were created (and the CI failure of the test above); the runner now jumps from
/// FORWARD itself too, and its chain runs Docker's isolation chain itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_created_on_the_host_opens_no_gap_in_the_job_policy() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let scope = Scope::new().await;
    let _fw = FirewallSweep(scope.runner_id.clone());
    let mut fx = support::netns::Fixture::new();
    let third = 1 + uuid::Uuid::new_v4().as_bytes()[0] % 250;
    // 10.215/16 and 10.216/16: neither the runner's pools nor the other test's namespace.
    let private_ip = fx.outside(&format!("10.215.{third}"), MARK_PRIVATE);
    let other = support::netns::Net {
        name: format!("irt-apart-{}", fx.id),
        bridge: String::new(),
        subnet: format!("10.216.{third}.0/28"),
        prefix: format!("10.216.{third}"),
        gateway: format!("10.216.{third}.1"),
    };
    let (ok, _, err) = sh(
        "docker",
        &[
            "network",
            "create",
            "--label",
            &fx.label,
            "--subnet",
            &other.subnet,
            &other.name,
        ],
    );
    assert!(ok, "create the other network: {err}");
    let other_ip = format!("{}.2", other.prefix);
    fx.container(
        "apart",
        &other,
        &other_ip,
        &format!("mkdir -p /w && echo {MARK_OTHER} > /w/index.html && exec httpd -f -p 80 -h /w"),
    );
    // Control: the other network's server answers the host (so "not reached" means blocked).
    assert!(
        host_reaches(&format!("http://{other_ip}/"), MARK_OTHER).await,
        "control: the other network's server answers the host"
    );

    let cfg = scope.config(|c| {
        c.docker.isolation.preload_images.clear();
        c.docker.isolation.block_private_networks = true;
        // The other network is private too: its only guard must be Docker's isolation, so
        // the job's egress list opens its range.
        c.docker.isolation.egress = Egress::AllowList(vec![
            format!("10.216.{third}.0/28").parse().unwrap(),
            "0.0.0.0/0".parse().unwrap(),
        ]);
    });
    let backend = scope.dind(cfg);
    let env = prepare(&backend, &scope.spec(813)).await;
    let chain = chain_of(&scope, 813);
    let drops_before = dropped_packets(&chain);

    // Other jobs starting on the host: each network created is one gap in Docker's jumps.
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let (stop, label, id) = (stop.clone(), fx.label.clone(), fx.id.clone());
        std::thread::spawn(move || {
            let mut created = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("irt-churn-{id}-{created}");
                let (ok, _, err) = sh("docker", &["network", "create", "--label", &label, &name]);
                assert!(ok, "docker network create {name}: {err}");
                let (ok, _, err) = sh("docker", &["network", "rm", &name]);
                assert!(ok, "docker network rm {name}: {err}");
                created += 1;
            }
            created
        })
    };
    // 24 loops of one-SYN attempts (a dropped SYN gives up after 0.2 s), for 20 s, half at
    // each target.
    let attack = format!(
        r#"
end=$(( $(date +%s) + 20 ))
for w in $(seq 12); do
  for url in http://{private_ip}:8080/ http://{other_ip}/; do
    ( while [ "$(date +%s)" -lt "$end" ]; do
        curl -s --connect-timeout 0.2 --max-time 2 "$url" && echo
      done ) &
  done
done
wait
echo attack-done
"#
    );
    let text = expect_ok(env.as_ref(), &attack).await;
    stop.store(true, Ordering::Relaxed);
    let created = tokio::task::spawn_blocking(move || churn.join())
        .await
        .expect("join")
        .expect("the churn thread");
    assert!(text.contains("attack-done"), "{text}");
    assert!(
        created >= 10,
        "only {created} networks created during the attack: too few gaps to mean anything"
    );
    assert!(
        !text.contains(MARK_PRIVATE) && !text.contains(MARK_OTHER),
        "a connection got through while {created} networks were created:\n{text}"
    );
    // The attempts met the chain's drops (not a dead server or route).
    assert!(dropped_packets(&chain) > drops_before);
    teardown(env).await;
    let report = backend.shutdown().await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    drop(fx);
    assert!(rules_mentioning("iptables", &format!("runner={}", scope.runner_id)).is_empty());
}

#[tokio::test]
async fn metadata_is_dropped_before_any_accept_and_dns_stays_open_under_deny() {
    let scope = Scope::new().await;
    let _fw = FirewallSweep(scope.runner_id.clone());
    let cfg = scope.config(|c| {
        c.docker.isolation.egress = Egress::Deny;
        c.docker.isolation.preload_images.clear();
    });
    let backend = scope.dind(cfg);
    let env = prepare(&backend, &scope.spec(802)).await;
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
    // Jumps from the forward hook, FORWARD itself and INPUT, for this bridge only.
    let jumps = rules_mentioning("iptables", &format!("-j {chain}"));
    for hook in ["DOCKER-USER", "FORWARD", "INPUT"] {
        assert!(
            jumps
                .iter()
                .any(|j| j.starts_with(&format!("-A {hook} -i br-"))),
            "no jump from {hook}: {jumps:?}"
        );
    }
    assert_eq!(jumps.len(), 3, "{jumps:?}");
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
    let cfg = scope.config(|c| c.docker.isolation.preload_images.clear());
    let backend = scope.dind(cfg);
    let env = prepare(&backend, &scope.spec(803)).await;
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
    let cfg = scope.config(|c| c.docker.isolation.preload_images.clear());
    let backend = scope.dind(cfg);
    let env = prepare(&backend, &scope.spec(804)).await;
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
    assert!(report.failures.is_empty(), "{report:?}");
    // An orphan is every runner's to remove: a sweep of another test's runner (every daemon
    // start sweeps) may have taken it since the network went. Either way the same code judged
    // it, and run alone only this sweep can have.
    assert!(chain_rules("iptables", &chain).is_none(), "{report:?}");
    assert!(chain_rules("ip6tables", &chain).is_none(), "{report:?}");
}
