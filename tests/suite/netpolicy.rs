//! Network policy against the real firewall and real Docker networks.
//!
//! Needs root, iptables/ip6tables, Docker and `isolated-runner/busybox:test`. Traffic goes only
//! to the test's own listener, containers and network namespace; metadata addresses are checked
//! by reading the installed rules, never by sending to them.

use crate::support;

use isolated_runner::config::Egress;
use isolated_runner::netpolicy::{Endpoint, JobNet, NetPolicy, Options};
use std::time::Duration;
use support::netns::{self, Fixture};

/// Pool the tests pretend the runner uses: our networks live inside it, the "outside"
/// namespace just below it, all within 10.213.0.0/16.
const TEST_POOL: &str = "10.213.128.0/17";

/// Both tests change INPUT and DOCKER-USER and compare snapshots of them: run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

fn policy(runner_id: &str) -> NetPolicy {
    NetPolicy::new(Options::new(runner_id, TEST_POOL.parse().unwrap()))
}

fn random_octets(lo: u8, hi: u8) -> Vec<u8> {
    let start = lo + (uuid::Uuid::new_v4().as_bytes()[0] % (hi - lo));
    (start..hi).chain(lo..start).collect()
}

/// A tiny HTTP server on the host, bound to `ip`, answering `marker` to every request; it
/// runs on `rt` (multi-threaded) while the test goes on.
fn host_listener(rt: &tokio::runtime::Runtime, ip: &str, marker: &'static str) -> u16 {
    rt.block_on(support::security::host_listener(ip, marker))
}

#[test]
fn job_is_kept_from_host_other_bridges_and_outside_then_rules_vanish() {
    netns::require_root_and_docker();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let before_v4 = netns::firewall_rules("iptables");
    let before_v6 = netns::firewall_rules("ip6tables");
    let rt = runtime();
    let mut fx = Fixture::new();
    let runner_id = format!("irt{}", fx.id);
    let policy = policy(&runner_id);
    let job_id = 7_000_000 + u64::from(uuid::Uuid::new_v4().as_bytes()[1]);

    // Labelled as the job's network, so no other test's sweep takes the chain for an orphan.
    let net_a = fx.job_network("a", random_octets(200, 230), &runner_id, job_id);
    let net_b = fx.network("b", random_octets(230, 255));
    let outside_prefix = format!("10.213.{}", random_octets(100, 127)[0]);
    let outside_ip = fx.outside(&outside_prefix, "ok-outside");

    let host_port = host_listener(&rt, &net_a.gateway, "ok-host");
    let client = fx.container("ac", &net_a, &format!("{}.10", net_a.prefix), "sleep 3600");
    let serve = |marker: &str| {
        format!("mkdir -p /www && echo {marker} > /www/index.html && httpd -f -p 8080 -h /www")
    };
    fx.container(
        "as",
        &net_a,
        &format!("{}.11", net_a.prefix),
        &serve("ok-a"),
    );
    fx.container(
        "bs",
        &net_b,
        &format!("{}.11", net_b.prefix),
        &serve("ok-b"),
    );

    let host_url = format!("http://{}:{host_port}/", net_a.gateway);
    let a_url = format!("http://{}.11:8080/", net_a.prefix);
    let b_url = format!("http://{}.11:8080/", net_b.prefix);
    let outside_url = format!("http://{outside_ip}:8080/");

    // Before: the host listener, the peer and the outside answer (so the test can fail).
    let up = Duration::from_secs(30);
    assert!(netns::wait_for(up, || fx.reaches(&client, &a_url, "ok-a")));
    assert!(netns::wait_for(up, || fx.reaches(
        &client,
        &outside_url,
        "ok-outside"
    )));
    assert!(fx.reaches(&client, &host_url, "ok-host"));

    // Install with egress allowed.
    let job = JobNet {
        job_id,
        bridge_iface: net_a.bridge.clone(),
        subnet: net_a.subnet.parse().unwrap(),
        allow: vec![],
    };
    rt.block_on(policy.install(&job, &Egress::Allow)).unwrap();
    let chain = policy.chain_for(job_id).unwrap();

    let rules_v4 = netns::ok("iptables", &["-w", "-S", &chain]);
    let rules_v6 = netns::ok("ip6tables", &["-w", "-S", &chain]);
    println!("installed IPv4 rules:\n{rules_v4}\ninstalled IPv6 rules:\n{rules_v6}");
    assert!(
        rules_v4
            .lines()
            .any(|l| l.contains("-d 169.254.0.0/16") && l.ends_with("-j DROP")),
        "{rules_v4}"
    );
    assert!(
        rules_v6
            .lines()
            .any(|l| l.contains("-d fd00:ec2::254/128") && l.ends_with("-j DROP")),
        "{rules_v6}"
    );
    let jumps = netns::ok("iptables", &["-w", "-S", "INPUT"]);
    assert!(jumps.contains(&format!("-i {} ", net_a.bridge)) && jumps.contains(&chain));
    let jumps = netns::ok("iptables", &["-w", "-S", "DOCKER-USER"]);
    assert!(jumps.contains(&format!("-i {} ", net_a.bridge)) && jumps.contains(&chain));

    // The host and the other bridge are gone; the peer and the outside still answer.
    assert!(!fx.reaches(&client, &host_url, "ok-host"));
    assert!(
        netns::drop_packets("iptables", &chain, &format!("{} ", net_a.gateway)) > 0,
        "the host listener was not stopped by our rule"
    );
    assert!(!fx.reaches(&client, &b_url, "ok-b"));
    assert!(
        netns::drop_packets("iptables", &chain, TEST_POOL) > 0,
        "the other bridge was not stopped by our pool rule"
    );
    assert!(fx.reaches(&client, &a_url, "ok-a"));
    assert!(fx.reaches(&client, &outside_url, "ok-outside"));

    // Deny egress, but allow the host listener as an endpoint (GitLab on the host).
    let gw_endpoint = Endpoint::tcp(format!("{}:{host_port}", net_a.gateway).parse().unwrap());
    let job = JobNet {
        allow: vec![gw_endpoint],
        ..job
    };
    rt.block_on(policy.install(&job, &Egress::Deny)).unwrap();
    assert!(!fx.reaches(&client, &outside_url, "ok-outside"));
    assert!(fx.reaches(&client, &host_url, "ok-host"));
    assert!(fx.reaches(&client, &a_url, "ok-a"));
    assert!(!fx.reaches(&client, &b_url, "ok-b"));

    // Listed, then removed (twice: idempotent); the firewall is as before.
    let listed = rt.block_on(policy.list_installed()).unwrap();
    let ours: Vec<_> = listed.iter().filter(|r| r.runner_id == runner_id).collect();
    assert_eq!(ours.len(), 1, "{listed:?}");
    assert_eq!(
        (ours[0].job_id, ours[0].chain.as_str()),
        (job_id, chain.as_str())
    );
    assert_eq!(ours[0].families.len(), 2);

    rt.block_on(policy.remove(job_id)).unwrap();
    rt.block_on(policy.remove(job_id)).unwrap();
    assert!(fx.reaches(&client, &host_url, "ok-host"));
    drop(fx);
    unchanged(&before_v4, &before_v6, &[&runner_id]).unwrap();
}

#[test]
fn rules_of_a_dead_runner_are_found_and_removed() {
    netns::require_root_and_docker();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let before_v4 = netns::firewall_rules("iptables");
    let before_v6 = netns::firewall_rules("ip6tables");
    let rt = runtime();
    let id = uuid::Uuid::new_v4().simple().to_string();
    let dead_runner = format!("dead{}", &id[..8]);
    let dead = policy(&dead_runner);
    // Each chain on its job's network, which outlives the runner here: the test's own sweep
    // below removes the dead runner's chains by its id, while every other sweep (other tests
    // run theirs at any moment) sees live jobs and leaves them.
    let mut fx = Fixture::new();
    for (job_id, tag) in [(11, "x"), (12, "y")] {
        let net = fx.job_network(tag, random_octets(200, 255), &dead_runner, job_id);
        let job = JobNet {
            job_id,
            bridge_iface: net.bridge,
            subnet: net.subnet.parse().unwrap(),
            allow: vec![],
        };
        rt.block_on(dead.install(
            &job,
            &Egress::AllowList(vec!["198.51.100.0/24".parse().unwrap()]),
        ))
        .unwrap();
    }

    // Another runner's job installed meanwhile (a concurrent dind job), left in place until
    // after the comparison.
    let bystander_id = format!("by{}", &id[..8]);
    let bystander = policy(&bystander_id);
    let net = fx.job_network("z", random_octets(200, 255), &bystander_id, 13);
    let job = JobNet {
        job_id: 13,
        bridge_iface: net.bridge,
        subnet: net.subnet.parse().unwrap(),
        allow: vec![],
    };
    rt.block_on(bystander.install(&job, &Egress::Deny)).unwrap();

    let reaper = policy(&format!("live{}", &id[..8]));
    let found = rt.block_on(reaper.list_installed()).unwrap();
    let mut jobs: Vec<u64> = found
        .iter()
        .filter(|r| r.runner_id == dead_runner)
        .map(|r| r.job_id)
        .collect();
    jobs.sort();
    assert_eq!(jobs, [11, 12]);

    let removed = rt
        .block_on(reaper.remove_all_for_runner(&dead_runner))
        .unwrap();
    assert_eq!(removed.len(), 2);
    let found = rt.block_on(reaper.list_installed()).unwrap();
    assert!(
        !found.iter().any(|r| r.runner_id == dead_runner),
        "{found:?}"
    );
    // A bystander's rules (another job running meanwhile) do not count; ours do.
    let chain = bystander.chain_for(13).unwrap();
    let during = netns::firewall_rules("iptables");
    let compared = unchanged(&before_v4, &before_v6, &[&dead_runner]);
    rt.block_on(bystander.remove(13)).unwrap();
    drop(fx);
    assert!(
        during.contains(&chain),
        "the bystander was installed: {during}"
    );
    compared.unwrap();
}

/// The firewall equals `before_*` in every line outside Docker's and of `own` runners; lines
/// of other runners (concurrent jobs) are ignored.
fn unchanged(before_v4: &str, before_v6: &str, own: &[&str]) -> Result<(), String> {
    for (binary, before) in [("iptables", before_v4), ("ip6tables", before_v6)] {
        let now = netns::snapshot_of(&netns::firewall_rules(binary), own);
        let then = netns::snapshot_of(before, own);
        if now != then {
            return Err(format!(
                "{binary} changed:\nbefore: {then:#?}\nnow: {now:#?}"
            ));
        }
    }
    Ok(())
}

#[test]
fn snapshot_ignores_other_runners_and_keeps_our_own() {
    let rules = "\
-P INPUT ACCEPT
-N IR-irt1234a-7
-N IR-ir-t-9f0-12
-N DOCKER
-A INPUT -i br-1 -m comment --comment \"isolated-runner runner=irt1234abcd job=7\" -j IR-irt1234a-7
-A INPUT -i br-2 -m comment --comment \"isolated-runner runner=ir-t-9f0e job=12\" -j IR-ir-t-9f0-12
-A IR-ir-t-9f0-12 -j DROP
-A IR-irt1234x00000000000000ff -j DROP
-A DOCKER-USER -j RETURN
-A FORWARD -j DOCKER-USER";
    let own = netns::snapshot_of(rules, &["irt1234abcd"]);
    assert_eq!(
        own,
        [
            "-P INPUT ACCEPT",
            "-N IR-irt1234a-7",
            "-A INPUT -i br-1 -m comment --comment \"isolated-runner runner=irt1234abcd job=7\" -j IR-irt1234a-7",
            "-A IR-irt1234x00000000000000ff -j DROP",
            "-A DOCKER-USER -j RETURN",
        ]
    );
    // With no runner of its own, a test sees only the firewall outside every runner's rules.
    assert_eq!(
        netns::snapshot_of(rules, &[]),
        ["-P INPUT ACCEPT", "-A DOCKER-USER -j RETURN"]
    );
}

/// A wrapper around `real` that logs every argument vector (one line each) to `log`, then runs
/// the real binary: the test sees each step the policy takes, in order.
fn logging_wrapper(dir: &std::path::Path, real: &str, log: &std::path::Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let name = std::path::Path::new(real)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let path = dir.join(&name);
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\necho \"$*\" >> '{}'\nexec {real} \"$@\"\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    // Its restore binary beside it (the policy runs `<iptables>-restore`): each line of a
    // transaction is logged as one step, after two placeholder words where a command has
    // `-w <secs>`.
    let restore = dir.join(format!("{name}-restore"));
    std::fs::write(
        &restore,
        format!(
            "#!/bin/sh\ninput=$(cat)\nprintf '%s\\n' \"$input\" | sed 's/^/-r - /' >> '{}'\nprintf '%s\\n' \"$input\" | exec {real}-restore \"$@\"\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&restore, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// L5: re-installing a job's chain (a leftover of an earlier attempt, a slot's chain) never
/// leaves its bridge without a jump into a complete chain. Every iptables call of the
/// re-install is logged; replaying the log, the bridge has at least one jump in each hook after
/// every single step, and each jump added points at a chain filled before it. The chain keeps
/// the job's name afterwards.
#[test]
fn reinstall_never_leaves_bridge_unfiltered() {
    netns::require_root_and_docker();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rt = runtime();
    let id = uuid::Uuid::new_v4().simple().to_string();
    let runner_id = format!("swp{}", &id[..8]);
    let dir = tempfile::tempdir().unwrap();
    let (log4, log6) = (dir.path().join("v4.log"), dir.path().join("v6.log"));
    let bins = tempfile::tempdir().unwrap();
    let v4_dir = bins.path().join("v4");
    let v6_dir = bins.path().join("v6");
    std::fs::create_dir_all(&v4_dir).unwrap();
    std::fs::create_dir_all(&v6_dir).unwrap();
    let mut opts = Options::new(&runner_id, TEST_POOL.parse().unwrap());
    opts.iptables = logging_wrapper(&v4_dir, "/usr/sbin/iptables", &log4);
    opts.ip6tables = Some(logging_wrapper(&v6_dir, "/usr/sbin/ip6tables", &log6));
    let policy = NetPolicy::new(opts);
    // The job's network keeps other tests' sweeps off the chain (see `Fixture::job_network`).
    let mut fx = Fixture::new();
    let net = fx.job_network("s", random_octets(200, 255), &runner_id, 21);
    let iface = net.bridge.clone();
    let job = JobNet {
        job_id: 21,
        bridge_iface: iface.clone(),
        subnet: net.subnet.parse().unwrap(),
        allow: vec![],
    };
    rt.block_on(policy.install(&job, &Egress::Deny)).unwrap();
    let first_v4 = std::fs::read_to_string(&log4).unwrap();
    let first_v6 = std::fs::read_to_string(&log6).unwrap();
    for _ in 0..2 {
        rt.block_on(policy.install(&job, &Egress::Deny)).unwrap();
    }
    let all_v4 = std::fs::read_to_string(&log4).unwrap();
    let all_v6 = std::fs::read_to_string(&log6).unwrap();
    let installed_v4 = netns::firewall_rules("iptables");
    let installed_v6 = netns::firewall_rules("ip6tables");
    rt.block_on(policy.remove(21)).unwrap();
    let after = netns::firewall_rules("iptables") + &netns::firewall_rules("ip6tables");
    drop(fx);

    for (family, first, all, installed) in [
        ("v4", &first_v4, &all_v4, &installed_v4),
        ("v6", &first_v6, &all_v6, &installed_v6),
    ] {
        let steps: Vec<&str> = all.lines().collect();
        let reinstall = &steps[first.lines().count()..];
        assert!(
            reinstall.iter().any(|l| l.contains(" -X ")),
            "{family}: the re-install removed no old chain: {reinstall:#?}"
        );
        let hooks: &[&str] = if installed.lines().any(|l| l == "-N DOCKER-USER") {
            &["INPUT", "FORWARD", "DOCKER-USER"]
        } else {
            &["INPUT", "FORWARD"]
        };
        replay_keeps_bridge_filtered(family, &iface, &steps, first.lines().count(), hooks);
    }
    // Exactly one chain and one jump per hook remain after the re-installs: INPUT and FORWARD,
    // plus DOCKER-USER in a family Docker manages.
    for (family, text) in [("v4", &installed_v4), ("v6", &installed_v6)] {
        let jumps: Vec<&str> = text
            .lines()
            .filter(|l| l.contains(&format!("-i {iface} ")) && l.contains(" -j IR-"))
            .collect();
        let hooks = if text.lines().any(|l| l == "-N DOCKER-USER") {
            3
        } else {
            2
        };
        assert_eq!(jumps.len(), hooks, "{family}: {jumps:#?}");
        let chains: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("-N IR-") && l.contains(&runner_id[..7]))
            .collect();
        assert_eq!(
            chains,
            [format!("-N {}", policy.chain_for(21).unwrap())],
            "{family}:\n{text}"
        );
    }
    // Docker's own rules name the bridge too; ours are the jumps into IR- chains.
    let left: Vec<&str> = after
        .lines()
        .filter(|l| l.contains(&format!("-i {iface} ")) && l.contains(" -j IR-"))
        .collect();
    assert!(left.is_empty(), "rules left after remove: {left:#?}");
}

/// A chain another remover deletes while `remove` is at it (the job's teardown and another
/// runner's sweep, two runners sweeping at start-up) is no error, and not reported as removed
/// by this one. Wrappers play the other remover, in both ways a removal runs: the restore
/// wrapper applies the same transaction first, so ours fails and the policy falls back to one
/// command at a time; without a restore binary the policy goes one command at a time from the
/// start, and the iptables wrapper deletes the chain right before the flush.
#[test]
fn a_chain_deleted_meanwhile_by_another_remover_is_no_error() {
    netns::require_root_and_docker();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rt = runtime();
    let id = uuid::Uuid::new_v4().simple().to_string();
    let runner_id = format!("rac{}", &id[..8]);
    let mut fx = Fixture::new();
    for (job_id, with_restore) in [(22, true), (23, false)] {
        let net = fx.job_network(
            &format!("r{job_id}"),
            random_octets(200, 255),
            &runner_id,
            job_id,
        );
        let job = JobNet {
            job_id,
            bridge_iface: net.bridge.clone(),
            subnet: net.subnet.parse().unwrap(),
            allow: vec![],
        };
        rt.block_on(policy(&runner_id).install(&job, &Egress::Deny))
            .unwrap();
        let chain = policy(&runner_id).chain_for(job_id).unwrap();

        let bins = tempfile::tempdir().unwrap();
        let mut opts = Options::new(&runner_id, TEST_POOL.parse().unwrap());
        opts.iptables = racing_wrapper(&bins.path().join("v4"), "/usr/sbin/iptables", with_restore);
        opts.ip6tables = Some(racing_wrapper(
            &bins.path().join("v6"),
            "/usr/sbin/ip6tables",
            with_restore,
        ));
        let racing = NetPolicy::new(opts);
        let installed = rt
            .block_on(racing.list_installed())
            .unwrap()
            .into_iter()
            .find(|r| r.chain == chain)
            .expect("the chain is installed");
        let removed = rt.block_on(racing.remove_installed(&installed));
        // Idempotent afterwards: nothing of it is left.
        let again = rt.block_on(racing.remove(job_id));
        let after = netns::firewall_rules("iptables") + &netns::firewall_rules("ip6tables");
        assert!(
            !removed.unwrap(),
            "restore {with_restore}: the other remover deleted it"
        );
        again.unwrap();
        assert!(!after.contains(&chain), "restore {with_restore}: {after}");
    }
    drop(fx);
}

/// A wrapper around `real` that, when asked to flush a chain, flushes and deletes it first
/// (another remover winning the race); the real flush then finds no chain. With `restore`, a
/// restore wrapper beside it applies each transaction once itself before the real one runs
/// it (another remover that took the same rules out a moment earlier).
fn racing_wrapper(dir: &std::path::Path, real: &str, restore: bool) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).unwrap();
    let name = std::path::Path::new(real)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let path = dir.join(&name);
    // Called as `<bin> -w <secs> <op> <chain> …`.
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nif [ \"$3\" = -F ]; then {real} -w 5 -F \"$4\" && {real} -w 5 -X \"$4\"; fi\nexec {real} \"$@\"\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    if restore {
        let wrapper = dir.join(format!("{name}-restore"));
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\ninput=$(cat)\nprintf '%s\\n' \"$input\" | {real}-restore -w 5 --noflush\nprintf '%s\\n' \"$input\" | exec {real}-restore \"$@\"\n"
            ),
        )
        .unwrap();
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    path
}

/// Replays the logged iptables calls of one family and checks, after each call from `from` on,
/// that each of `hooks` jumps from `iface` into some chain, and that every jump added points at a
/// chain whose rules were all appended before it (the plan's last rule is the verdict).
fn replay_keeps_bridge_filtered(
    family: &str,
    iface: &str,
    steps: &[&str],
    from: usize,
    hooks: &[&str],
) {
    use std::collections::{BTreeMap, BTreeSet};
    let mut jumps: BTreeSet<(String, String)> = BTreeSet::new(); // (hook, chain)
    let mut filled: BTreeMap<String, usize> = BTreeMap::new();
    for (n, line) in steps.iter().enumerate() {
        let w: Vec<&str> = line.split_whitespace().collect();
        // Every call starts with `-w <secs>`.
        let args = w.get(2..).unwrap_or_default();
        let target = args
            .windows(2)
            .find(|p| p[0] == "-j")
            .map(|p| p[1].to_string());
        match (args.first().copied(), args.get(1)) {
            (Some("-N"), Some(c)) => {
                filled.insert(c.to_string(), 0);
            }
            (Some("-A"), Some(c)) if c.starts_with("IR-") => {
                *filled.entry(c.to_string()).or_default() += 1;
            }
            (Some("-X"), Some(c)) => {
                filled.remove(*c);
            }
            (Some("-E"), Some(from)) => {
                let to = args.get(2).copied().unwrap_or_default().to_string();
                if let Some(r) = filled.remove(*from) {
                    filled.insert(to.clone(), r);
                }
                jumps = jumps
                    .into_iter()
                    .map(|(h, c)| if c == *from { (h, to.clone()) } else { (h, c) })
                    .collect();
            }
            (Some("-I"), Some(hook)) if args.contains(&iface) => {
                let t = target.clone().unwrap_or_default();
                assert!(
                    filled.get(&t).is_some_and(|r| *r > 0),
                    "{family} step {n}: jump into an empty chain: {line}"
                );
                jumps.insert((hook.to_string(), t));
            }
            (Some("-D"), Some(hook)) if args.contains(&iface) => {
                jumps.remove(&(hook.to_string(), target.clone().unwrap_or_default()));
            }
            _ => {}
        }
        if n + 1 >= from {
            for hook in hooks {
                let ok = jumps
                    .iter()
                    .any(|(h, c)| h == hook && filled.contains_key(c));
                assert!(
                    ok,
                    "{family} after step {n} ({line}): the bridge has no jump from {hook}"
                );
            }
        }
    }
}

/// A policy the kernel refuses part of leaves nothing behind: each family's rules go in as one
/// transaction, so the refused family holds no chain at all (not a chain filled up to the bad
/// rule, as one command at a time would leave), the family that went in is rolled back, and
/// the error quotes the refused line. The IPv6 restore wrapper adds the bad rule, a match the
/// kernel does not have, right before the transaction's end.
#[test]
fn a_refused_rule_leaves_neither_family_installed() {
    use std::os::unix::fs::PermissionsExt;
    netns::require_root_and_docker();
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rt = runtime();
    let id = uuid::Uuid::new_v4().simple().to_string();
    let runner_id = format!("ref{}", &id[..8]);
    let mut fx = Fixture::new();
    let net = fx.job_network("f", random_octets(200, 255), &runner_id, 24);
    let job = JobNet {
        job_id: 24,
        bridge_iface: net.bridge.clone(),
        subnet: net.subnet.parse().unwrap(),
        allow: vec![],
    };
    let chain = policy(&runner_id).chain_for(24).unwrap();
    let bins = tempfile::tempdir().unwrap();
    let ip6 = bins.path().join("ip6tables");
    std::os::unix::fs::symlink("/usr/sbin/ip6tables", &ip6).unwrap();
    let restore = bins.path().join("ip6tables-restore");
    std::fs::write(
        &restore,
        format!(
            "#!/bin/sh\nsed 's/^COMMIT$/-A {chain} -m nosuchmatch -j RETURN\\nCOMMIT/' | exec /usr/sbin/ip6tables-restore \"$@\"\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&restore, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut opts = Options::new(&runner_id, TEST_POOL.parse().unwrap());
    opts.ip6tables = Some(ip6);
    let refused = rt.block_on(NetPolicy::new(opts).install(&job, &Egress::Deny));
    let after = netns::firewall_rules("iptables") + &netns::firewall_rules("ip6tables");
    // Whatever the assertions say, nothing of this test stays on the host.
    let cleaned = rt.block_on(policy(&runner_id).remove(24));
    drop(fx);
    let err = refused.expect_err("the kernel refused a rule").to_string();
    assert!(
        err.contains("nosuchmatch"),
        "the error quotes the line: {err}"
    );
    assert!(!after.contains(&chain), "left after the refusal:\n{after}");
    cleaned.unwrap();
}
