//! `runner cleanup` against the real engine, firewall and file system: a dead runner's
//! leftovers go (at once, whatever their age), old unowned job directories go without following
//! planted symlinks, and a live runner's objects, young directories and everything not ours stay.
//!
//! Needs root, Docker, iptables and `isolated-runner/busybox:test` (never pulled). The binary is
//! scoped to this test's objects with `--label io.isolated-runner.runner=<test id>`, so parallel
//! tests' objects on the shared engine are never touched.

use crate::support;

use isolated_runner::config::Egress;
use isolated_runner::netpolicy::{JobNet, NetPolicy, Options};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};
use support::netns::{self, ok, run};

/// An owner label value for a process that has exited: right boot and namespace, a pid that no
/// longer runs (or runs with another start time).
fn dead_owner() -> String {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    let obs = isolated_runner::cleanup::owner::observer().unwrap();
    format!("{}/{}/{pid}/1", obs.boot_id, obs.pid_ns)
}

struct Planted {
    runner: String,
    test_label: String,
    containers: Vec<String>,
    networks: Vec<String>,
    volumes: Vec<String>,
    chain_jobs: Vec<u64>,
}

impl Drop for Planted {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = run("docker", &["rm", "-f", "-v", c]);
        }
        for v in &self.volumes {
            let _ = run("docker", &["volume", "rm", "-f", v]);
        }
        for n in &self.networks {
            let _ = run("docker", &["network", "rm", n]);
        }
        if !self.chain_jobs.is_empty()
            && let Ok(rt) = tokio::runtime::Runtime::new()
        {
            let p = policy(&self.runner);
            for j in &self.chain_jobs {
                let _ = rt.block_on(p.remove(*j));
            }
        }
        // Anything else carrying the test label.
        for kind in ["container", "network", "volume"] {
            let filter = format!("label={}", self.test_label);
            let listed = run("docker", &[kind, "ls", "-q", "--filter", &filter]);
            for id in String::from_utf8_lossy(&listed.stdout).split_whitespace() {
                let _ = match kind {
                    "container" => run("docker", &["rm", "-f", "-v", id]),
                    other => run("docker", &[other, "rm", id]),
                };
            }
        }
    }
}

fn policy(runner: &str) -> NetPolicy {
    NetPolicy::new(Options::new(runner, "10.213.0.0/16".parse().unwrap()))
}

fn labels(runner: &str, job: u64, owner: &str, test_label: &str, role: &str) -> Vec<String> {
    [
        "io.isolated-runner.managed=1".to_string(),
        format!("io.isolated-runner.runner={runner}"),
        format!("io.isolated-runner.job={job}"),
        // Far in the future: only the owner label can make these stale.
        "io.isolated-runner.deadline=99999999999".to_string(),
        format!("io.isolated-runner.role={role}"),
        format!("io.isolated-runner.owner={owner}"),
        test_label.to_string(),
    ]
    .into_iter()
    .flat_map(|l| ["--label".to_string(), l])
    .collect()
}

fn docker(args: &[String]) -> String {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    ok("docker", &refs)
}

fn exists(kind: &str, name: &str) -> bool {
    run("docker", &[kind, "inspect", name]).status.success()
}

fn set_age(path: &Path, age: Duration) {
    let f = std::fs::File::open(path).unwrap();
    f.set_modified(SystemTime::now() - age).unwrap();
}

fn cleanup(config: &Path, runner: &str, dry_run: bool) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_runner"));
    cmd.arg("cleanup")
        .arg("--config")
        .arg(config)
        .arg("--label")
        .arg(format!("io.isolated-runner.runner={runner}"));
    if dry_run {
        cmd.arg("--dry-run");
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn dead_chains(runner: &str) -> Vec<u64> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(policy("observer").list_installed())
        .unwrap()
        .into_iter()
        .filter(|r| r.runner_id == runner)
        .map(|r| r.job_id)
        .collect()
}

#[test]
fn dead_runner_leftovers_go_and_live_young_and_foreign_objects_stay() {
    netns::require_root_and_docker();
    let id = uuid::Uuid::new_v4().simple().to_string();
    let runner = format!("dead{}", &id[..8]);
    let test_label = format!("isolated-runner.test={id}");
    let base: u64 = 8_000_000 + u64::from(uuid::Uuid::new_v4().as_bytes()[0]) * 100;
    let (j_dead, j_old, j_young, j_live) = (base, base + 1, base + 2, base + 3);
    let mut planted = Planted {
        runner: runner.clone(),
        test_label: test_label.clone(),
        containers: vec![],
        networks: vec![],
        volumes: vec![],
        chain_jobs: vec![],
    };

    let tmp = tempfile::Builder::new()
        .prefix("ir-cleanup-")
        .tempdir()
        .unwrap();
    let builds = tmp.path().join("builds");
    let state = tmp.path().join("state");
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&builds).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("keep"), "precious").unwrap();

    // A dead runner's job: network, container on it, volume, egress chain, certs, job dirs.
    let dead = dead_owner();
    let net = format!("ir-{runner}-{j_dead}-net");
    let mut args = vec!["network".to_string(), "create".to_string()];
    args.extend(labels(&runner, j_dead, &dead, &test_label, "network"));
    args.push(net.clone());
    let net_id = docker(&args);
    planted.networks.push(net.clone());
    let build = format!("ir-{runner}-{j_dead}-build");
    let mut args: Vec<String> = ["run", "-d", "--name", &build, "--network", &net]
        .map(String::from)
        .to_vec();
    args.extend(labels(&runner, j_dead, &dead, &test_label, "build"));
    args.extend([netns::BUSYBOX.to_string(), "sleep".into(), "600".into()]);
    docker(&args);
    planted.containers.push(build.clone());
    let vol = format!("ir-{runner}-{j_dead}-data");
    let mut args = vec!["volume".to_string(), "create".to_string()];
    args.extend(labels(&runner, j_dead, &dead, &test_label, "data"));
    args.push(vol.clone());
    docker(&args);
    planted.volumes.push(vol.clone());
    let subnet = ok(
        "docker",
        &[
            "network",
            "inspect",
            "-f",
            "{{(index .IPAM.Config 0).Subnet}}",
            &net,
        ],
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(policy(&runner).install(
        &JobNet {
            job_id: j_dead,
            bridge_iface: format!("br-{}", &net_id[..12]),
            subnet: subnet.parse().unwrap(),
            allow: vec![],
        },
        &Egress::Allow,
    ))
    .unwrap();
    planted.chain_jobs.push(j_dead);
    let certs = state
        .join("certs")
        .join(&runner)
        .join(format!("job-{j_dead}"));
    std::fs::create_dir_all(certs.join("server")).unwrap();
    std::fs::write(certs.join("server/key.pem"), "key").unwrap();
    let dead_dir = builds.join(format!("gitlab-job-{j_dead}"));
    let dead_tmp = builds.join(format!("gitlab-job-{j_dead}.tmp"));
    for d in [&dead_dir, &dead_tmp] {
        std::fs::create_dir_all(d).unwrap();
        std::os::unix::fs::symlink(&outside, d.join("escape")).unwrap();
    }

    // A live runner process's container (this test process owns it).
    let live_owner = isolated_runner::cleanup::owner::current()
        .unwrap()
        .label_value();
    let live = format!("ir-{runner}-{j_live}-build");
    let mut args: Vec<String> = ["create", "--name", &live].map(String::from).to_vec();
    args.extend(labels(&runner, j_live, &live_owner, &test_label, "build"));
    args.extend([netns::BUSYBOX.to_string(), "true".into()]);
    docker(&args);
    planted.containers.push(live.clone());
    let live_dir = builds.join(format!("gitlab-job-{j_live}"));
    std::fs::create_dir_all(&live_dir).unwrap();
    set_age(&live_dir, Duration::from_secs(5 * 3600));

    // Not ours: no managed label.
    let stranger = format!("ir-test-{}-stranger", &id[..8]);
    ok(
        "docker",
        &[
            "create",
            "--name",
            &stranger,
            "--label",
            &test_label,
            netns::BUSYBOX,
            "true",
        ],
    );
    planted.containers.push(stranger.clone());
    let stranger_net = format!("ir-test-{}-strangernet", &id[..8]);
    ok(
        "docker",
        &["network", "create", "--label", &test_label, &stranger_net],
    );
    planted.networks.push(stranger_net.clone());

    // Unowned job dirs: an old one with a symlink out, a young one.
    let old_dir = builds.join(format!("gitlab-job-{j_old}"));
    std::fs::create_dir_all(old_dir.join("sub")).unwrap();
    std::os::unix::fs::symlink(&outside, old_dir.join("sub/escape")).unwrap();
    std::fs::write(old_dir.join("sub/data"), vec![7u8; 64 * 1024]).unwrap();
    set_age(&old_dir, Duration::from_secs(2 * 3600));
    let young_dir = builds.join(format!("gitlab-job-{j_young}"));
    std::fs::create_dir_all(&young_dir).unwrap();
    std::fs::write(young_dir.join("file"), "x").unwrap();

    let config = tmp.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"concurrent = 1
state_dir = "{state}"
[[runners]]
  name = "cleanup-test"
  url = "http://127.0.0.1:1/"
  builds_dir = "{builds}"
  cache_dir = "{cache}"
"#,
            state = state.display(),
            builds = builds.display(),
            cache = tmp.path().join("cache").display(),
        ),
    )
    .unwrap();

    let gone_objects = [build.as_str(), net.as_str(), vol.as_str()];
    let gone_dirs: Vec<PathBuf> = vec![dead_dir.clone(), dead_tmp.clone(), old_dir.clone(), certs];

    // Dry run: everything listed, nothing removed.
    let (code, out, err) = cleanup(&config, &runner, true);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    for name in gone_objects {
        assert!(out.contains(name), "{name} not listed:\n{out}");
    }
    assert!(
        out.contains(&format!("runner {runner} job {j_dead}")),
        "{out}"
    );
    for d in &gone_dirs {
        assert!(
            out.contains(&d.display().to_string()),
            "{} not listed:\n{out}",
            d.display()
        );
    }
    assert!(out.contains("would remove"), "{out}");
    for kept in [&live, &stranger, &stranger_net] {
        assert!(!out.contains(kept.as_str()), "{kept} listed:\n{out}");
    }
    assert!(!out.contains(&young_dir.display().to_string()), "{out}");
    assert!(!out.contains(&live_dir.display().to_string()), "{out}");
    assert!(exists("container", &build) && exists("network", &net) && exists("volume", &vol));
    assert!(gone_dirs.iter().all(|d| d.exists()));
    assert_eq!(dead_chains(&runner), [j_dead]);

    // For real.
    let (code, out, err) = cleanup(&config, &runner, false);
    eprintln!("{out}");
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("freed"), "{out}");
    assert!(!exists("container", &build), "{out}");
    assert!(!exists("network", &net), "{out}");
    assert!(!exists("volume", &vol), "{out}");
    assert!(dead_chains(&runner).is_empty(), "{out}");
    for d in &gone_dirs {
        assert!(!d.exists(), "{} still there:\n{out}", d.display());
    }
    assert_eq!(
        std::fs::read_to_string(outside.join("keep")).unwrap(),
        "precious"
    );
    assert!(young_dir.join("file").exists());
    assert!(
        live_dir.exists(),
        "a live job's directory stays whatever its age"
    );
    assert!(exists("container", &live));
    assert!(exists("container", &stranger));
    assert!(exists("network", &stranger_net));
    drop(planted);
}

/// L4: when Docker cannot be listed, who owns a job or certificate directory is unknown, and
/// a job can backdate its own project dir: old directories without a known owner are kept, with
/// a note saying why. Runs the real binary against an engine address that does not answer.
#[test]
fn dirs_kept_when_docker_listing_fails() {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let runner = format!("irl4{}", &id[..8]);
    let tmp = tempfile::Builder::new()
        .prefix("ir-cleanup-l4-")
        .tempdir()
        .unwrap();
    let builds = tmp.path().join("builds");
    let state = tmp.path().join("state");
    let job_dir = builds.join("gitlab-job-4101");
    let job_tmp = builds.join("gitlab-job-4101.tmp");
    let certs = state.join("certs").join(&runner).join("job-4101");
    for d in [&job_dir, &job_tmp, &certs] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join("file"), "live job data").unwrap();
        set_age(d, Duration::from_secs(48 * 3600));
    }
    let config = tmp.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"concurrent = 1
state_dir = "{state}"
[[runners]]
  name = "cleanup-l4"
  url = "http://127.0.0.1:1/"
  builds_dir = "{builds}"
  cache_dir = "{cache}"
  [runners.docker]
    host = "unix://{sock}"
"#,
            state = state.display(),
            builds = builds.display(),
            cache = tmp.path().join("cache").display(),
            sock = tmp.path().join("no-docker.sock").display(),
        ),
    )
    .unwrap();

    let (_, out, err) = cleanup(&config, &runner, false);
    for d in [&job_dir, &job_tmp, &certs] {
        assert!(
            d.join("file").exists(),
            "{} removed without Docker:\nstdout:\n{out}\nstderr:\n{err}",
            d.display()
        );
    }
    assert!(
        out.contains("kept whatever their age") || err.contains("kept whatever their age"),
        "no note on why:\nstdout:\n{out}\nstderr:\n{err}"
    );
}
