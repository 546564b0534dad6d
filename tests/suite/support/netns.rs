//! Network fixtures for firewall tests: labelled Docker networks and containers, a network
//! namespace standing in for "the outside", firewall snapshots and rule counters.
//!
//! Everything is created under names and labels carrying a per-test id and removed by the
//! [`Fixture`]'s `Drop` (blocking commands are fine there: this is test code, after the test's
//! async work is done).

use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Image every probe uses (built offline by the images script; never pulled).
pub const BUSYBOX: &str = "isolated-runner/busybox:test";

/// Runs a command, returning its output (never panics on non-zero).
pub fn run(prog: &str, args: &[&str]) -> Output {
    Command::new(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {prog} {args:?}: {e}"))
}

/// Runs a command that must succeed; returns trimmed stdout.
pub fn ok(prog: &str, args: &[&str]) -> String {
    let out = run(prog, args);
    assert!(
        out.status.success(),
        "{prog} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Panics, saying what is missing, unless this process is root and Docker answers with the test
/// image present. Such a test fails instead of skipping: a skip would let CI pass without having
/// tried the firewall or the engine at all.
pub fn require_root_and_docker() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test changes the host firewall and Docker's objects, so it needs root; it fails \
         rather than skips so that a run without root cannot pass"
    );
    let image = run("docker", &["image", "inspect", BUSYBOX]);
    assert!(
        image.status.success(),
        "this test needs a running Docker Engine with {BUSYBOX} (build it with tests/images/build); \
         `docker image inspect` said: {}",
        String::from_utf8_lossy(&image.stderr).trim()
    );
}

/// `iptables -S` (or `ip6tables -S`) as it is now; compare two of these with [`snapshot_of`].
pub fn firewall_rules(binary: &str) -> String {
    ok(binary, &["-w", "-S"])
}

/// The lines of `rules` a test must leave unchanged: without the lines Docker owns for
/// networks (its own chains and its FORWARD rules) and without the rules of other runners
/// (any dind job running at the same time adds `IR-…` chains and jumps to INPUT and
/// DOCKER-USER). Lines of `own_runners` stay, so a rule of the test's own left behind shows.
pub fn snapshot_of(rules: &str, own_runners: &[&str]) -> Vec<String> {
    rules
        .lines()
        .filter(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let chain = words.get(1).copied().unwrap_or("");
            let docker_owned = chain == "DOCKER" || chain.starts_with("DOCKER-ISOLATION-STAGE");
            let docker_forward = words.first() == Some(&"-A") && chain == "FORWARD";
            let foreign = other_runners(&words, own_runners);
            !(docker_owned || foreign || docker_forward && !l.contains("IR-"))
        })
        .map(str::to_string)
        .collect()
}

/// True when a rule line names runner chains or comments, none of them of `own_runners`.
fn other_runners(words: &[&str], own_runners: &[&str]) -> bool {
    let mut marked = false;
    for w in words.iter().map(|w| w.trim_matches('"')) {
        let ours = if let Some(chain) = w.strip_prefix("IR-") {
            own_runners.iter().any(|id| {
                // `IR-<runner8>-<job>` or `IR-<runner7>x<hex>` (netpolicy::rules::chain_name).
                let short: String = id.chars().take(8).collect();
                let shorter: String = id.chars().take(7).collect();
                chain.starts_with(&format!("{short}-")) || chain.starts_with(&format!("{shorter}x"))
            })
        } else if let Some(runner) = w.strip_prefix("runner=") {
            own_runners.contains(&runner)
        } else {
            continue;
        };
        if ours {
            return false;
        }
        marked = true;
    }
    marked
}

/// Packets counted by the DROP rules of `chain` whose line contains `needle`.
pub fn drop_packets(binary: &str, chain: &str, needle: &str) -> u64 {
    let text = ok(binary, &["-w", "-L", chain, "-v", "-n", "-x"]);
    text.lines()
        .filter(|l| l.contains("DROP") && l.contains(needle))
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Polls `cond` until it holds or `timeout` passes.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() > timeout {
            return false;
        }
        // Test-only pacing of a poll loop (not a synchronisation point): the condition decides.
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The outside host's web server (`python3 -c`, args: address, port, directory). Not `python3
/// -m http.server`: its `server_bind` resolves the address's name (`getfqdn`) *before* it
/// listens, and in a namespace whose only route leads to a host that forwards nothing, that
/// lookup of the host's resolver hangs for minutes (and aims a packet at an outside address).
const OUTSIDE_SERVER: &str = r#"
import functools, http.server, socketserver, sys
class Server(http.server.ThreadingHTTPServer):
    def server_bind(self):
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[3])
Server((sys.argv[1], int(sys.argv[2])), handler).serve_forever()
"#;

/// A labelled set of Docker networks and containers plus an optional network namespace.
pub struct Fixture {
    /// Per-test id (short uuid).
    pub id: String,
    /// `key=value` label on every Docker object.
    pub label: String,
    netns: Option<(String, String)>,
    children: Vec<std::process::Child>,
}

/// One bridge network created by a [`Fixture`].
#[derive(Debug, Clone)]
pub struct Net {
    /// Docker network name.
    pub name: String,
    /// Host bridge interface.
    pub bridge: String,
    /// Subnet, `a.b.c.0/28`.
    pub subnet: String,
    /// `a.b.c` prefix of the subnet.
    pub prefix: String,
    /// Gateway (the host's address on the bridge).
    pub gateway: String,
}

impl Fixture {
    /// A new fixture with a fresh id.
    pub fn new() -> Self {
        let id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
        Fixture {
            label: format!("isolated-runner.test={id}"),
            id,
            netns: None,
            children: Vec::new(),
        }
    }

    /// Creates a bridge network with a /28 at `10.213.<third>.0`, trying third octets from
    /// `candidates` until one is free (other tests may hold some).
    pub fn network(&mut self, tag: &str, candidates: impl IntoIterator<Item = u8>) -> Net {
        self.network_with(tag, candidates, &[])
    }

    /// A [`Fixture::network`] for a job's firewall chain: labelled the way a runner labels
    /// `job_id`'s network. A chain is live to every runner's sweep (the reaper) while such a
    /// network exists; without one it is an orphan, which any sweep removes, and the suite's
    /// other tests sweep at any moment (every daemon start does).
    pub fn job_network(
        &mut self,
        tag: &str,
        candidates: impl IntoIterator<Item = u8>,
        runner_id: &str,
        job_id: u64,
    ) -> Net {
        use isolated_runner::docker::{LABEL_JOB, LABEL_MANAGED, LABEL_RUNNER};
        let labels = [
            format!("{LABEL_MANAGED}=1"),
            format!("{LABEL_RUNNER}={runner_id}"),
            format!("{LABEL_JOB}={job_id}"),
        ];
        self.network_with(tag, candidates, &labels)
    }

    fn network_with(
        &mut self,
        tag: &str,
        candidates: impl IntoIterator<Item = u8>,
        labels: &[String],
    ) -> Net {
        let name = format!("irt-{tag}-{}", self.id);
        let extra: Vec<&str> = labels
            .iter()
            .flat_map(|l| ["--label", l.as_str()])
            .collect();
        for third in candidates {
            let prefix = format!("10.213.{third}");
            let subnet = format!("{prefix}.0/28");
            let gateway = format!("{prefix}.1");
            let mut args = vec![
                "network",
                "create",
                "--driver",
                "bridge",
                "--label",
                &self.label,
                "--subnet",
                &subnet,
                "--gateway",
                &gateway,
            ];
            args.extend(&extra);
            args.push(&name);
            let out = run("docker", &args);
            if out.status.success() {
                let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
                return Net {
                    name,
                    bridge: format!("br-{}", &id[..12]),
                    subnet,
                    prefix,
                    gateway,
                };
            }
        }
        panic!("no free /28 for network {name}");
    }

    /// Starts a detached busybox container on `net` at `ip`, running `cmd` under `sh -c`.
    pub fn container(&mut self, tag: &str, net: &Net, ip: &str, cmd: &str) -> String {
        let name = format!("irt-{tag}-{}", self.id);
        ok(
            "docker",
            &[
                "run",
                "-d",
                "--label",
                &self.label,
                "--name",
                &name,
                "--network",
                &net.name,
                "--ip",
                ip,
                "--pull",
                "never",
                BUSYBOX,
                "sh",
                "-c",
                cmd,
            ],
        );
        name
    }

    /// A network namespace joined to the host by a veth pair, `<prefix>.1/30` on the host side
    /// and `<prefix>.2/30` inside, with an HTTP server inside on port 8080 answering `marker`.
    /// Stands in for "the internet" without sending anything off the host.
    pub fn outside(&mut self, prefix: &str, marker: &str) -> String {
        let ns = format!("irt-{}", self.id);
        let host_if = format!("irv{}", &self.id[..6]);
        let peer_if = format!("irp{}", &self.id[..6]);
        ok("ip", &["netns", "add", &ns]);
        self.netns = Some((ns.clone(), host_if.clone()));
        ok(
            "ip",
            &[
                "link", "add", &host_if, "type", "veth", "peer", "name", &peer_if,
            ],
        );
        ok("ip", &["link", "set", &peer_if, "netns", &ns]);
        ok(
            "ip",
            &["addr", "add", &format!("{prefix}.1/30"), "dev", &host_if],
        );
        ok("ip", &["link", "set", &host_if, "up"]);
        let inside = |args: &[&str]| {
            let mut full = vec!["netns", "exec", ns.as_str()];
            full.extend_from_slice(args);
            ok("ip", &full)
        };
        inside(&["ip", "link", "set", "lo", "up"]);
        inside(&[
            "ip",
            "addr",
            "add",
            &format!("{prefix}.2/30"),
            "dev",
            &peer_if,
        ]);
        inside(&["ip", "link", "set", &peer_if, "up"]);
        inside(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &format!("{prefix}.1"),
        ]);
        let dir = std::env::temp_dir().join(format!("irt-www-{}", self.id));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("index.html"), marker).unwrap();
        let addr = format!("{prefix}.2");
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns,
                "python3",
                "-c",
                OUTSIDE_SERVER,
                &addr,
                "8080",
            ])
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        self.children.push(child);
        // Listening before any job probes it, so "not reached" always means "blocked".
        let listening = wait_for(Duration::from_secs(20), || {
            ok(
                "ip",
                &["netns", "exec", &ns, "ss", "-Hltn", "sport", "= :8080"],
            )
            .contains(":8080")
        });
        assert!(
            listening,
            "the outside server in {ns} did not listen on {addr}:8080"
        );
        addr
    }

    /// `wget` from `container` to `url`; true when the body contains `marker`.
    pub fn reaches(&self, container: &str, url: &str, marker: &str) -> bool {
        let out = run(
            "docker",
            &["exec", container, "wget", "-q", "-T", "3", "-O", "-", url],
        );
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains(marker)
    }
}

impl Default for Fixture {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for child in &mut self.children {
            // Our own child process, killed by its handle; it may already be gone.
            let _ = child.kill();
            let _ = child.wait();
        }
        let filter = format!("label={}", self.label);
        let ids = ok("docker", &["ps", "-aq", "--filter", &filter]);
        for id in ids.split_whitespace() {
            run("docker", &["rm", "-f", "-v", id]);
        }
        let nets = ok("docker", &["network", "ls", "-q", "--filter", &filter]);
        for id in nets.split_whitespace() {
            run("docker", &["network", "rm", id]);
        }
        if let Some((ns, host_if)) = self.netns.take() {
            run("ip", &["link", "del", &host_if]);
            run("ip", &["netns", "del", &ns]);
        }
        let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("irt-www-{}", self.id)));
    }
}
