//! End-to-end helpers: a fake GitLab, the real daemon with the real `RunnerExecutor` and the
//! dind backend on the machine's engine, all under one [`Scope`] (unique runner id, private
//! builds and state dirs), plus a forwarder that lets job containers reach the fake's git
//! server.
//!
//! Why a forwarder: the fake listens on 127.0.0.1, which a container on a job bridge cannot
//! reach. The forwarder listens on the address of the host's `docker0` bridge (a host address
//! only containers and the host itself can reach, never an outside interface) and copies bytes
//! to the fake. Job containers clone from `http://<docker0 ip>:<port>/git/…`, the way a real
//! job clones from a GitLab outside the job's network.

use super::docker::{JOB_IMAGE, Scope};
use super::fake_gitlab::{FakeGitlab, FinalUpdate, RUNNER_TOKEN, job_payload_with_after};
use isolated_runner::config::{Config, RunnerConfig};
use isolated_runner::daemon::DaemonOptions;
use isolated_runner::docker::ContainerInfo;
use isolated_runner::gitlab::client::{ClientOptions, RetryPolicy};
use isolated_runner::gitlab::trace::TraceOptions;
use isolated_runner::job::RunnerExecutor;
use isolated_runner::secret::Secret;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Generous bound for a whole job on a busy 2-core machine (sidecar start, compose, teardown).
pub const JOB_TIMEOUT: Duration = Duration::from_secs(300);

/// One end-to-end test's world.
pub struct E2e {
    /// Runner id, temp dirs, host daemon, leak checks.
    pub scope: Scope,
    /// The fake coordinator.
    pub fake: FakeGitlab,
    /// `ip:port` job containers use to reach the fake's git server.
    pub git_addr: SocketAddr,
    forwarder: tokio::task::JoinHandle<()>,
}

impl Drop for E2e {
    fn drop(&mut self) {
        self.forwarder.abort();
    }
}

/// The address of the host's default Docker bridge, reachable from every container.
async fn docker0_addr() -> std::net::IpAddr {
    let out = tokio::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "dev", "docker0"])
        .output()
        .await
        .expect("`ip` runs (package iproute2)");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .and_then(|ip| ip.parse().ok())
        .unwrap_or_else(|| panic!("docker0 has no IPv4 address: {text:?}"))
}

/// Listens on `bind` (port chosen by the kernel) and copies every connection to `to`.
async fn forward(
    bind: std::net::IpAddr,
    to: SocketAddr,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(bind, 0))
        .await
        .expect("bind the git forwarder on docker0");
    let addr = listener.local_addr().expect("forwarder address");
    let task = tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (addr, task)
}

impl E2e {
    /// A new world; panics (naming `tests/images/build`) when a test image is missing.
    pub async fn new() -> E2e {
        let scope = Scope::new().await;
        let fake = FakeGitlab::start().await;
        let fake_addr: SocketAddr = fake
            .url()
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .expect("fake url is ip:port");
        let (git_addr, forwarder) = forward(docker0_addr().await, fake_addr).await;
        E2e {
            scope,
            fake,
            git_addr,
            forwarder,
        }
    }

    /// The `[[runners]]` entry: the fake's URL and token, this scope's dirs, the dind backend
    /// with the test sidecar image and busybox preloaded.
    pub fn runner_config(&self) -> RunnerConfig {
        let mut r = self.scope.runner_config();
        r.name = format!("e2e-{}", self.scope.runner_id);
        // The runner reaches GitLab where its jobs do (the forwarder on docker0): the job
        // bridge's egress rules allow the runner's GitLab host:port and nothing else on the
        // host, as in a real install where GitLab runs on the runner's own host.
        r.url = format!("http://{}/", self.git_addr)
            .parse()
            .expect("forwarder url");
        r.token = Secret::new(RUNNER_TOKEN);
        r.docker.image = JOB_IMAGE.to_string();
        r.docker.isolation.preload_images = vec![super::docker::BUSYBOX_IMAGE.to_string()];
        r
    }

    /// The daemon config: one runner entry, `concurrent` slots, this scope's state dir.
    pub fn config(&self, concurrent: usize) -> Config {
        Config {
            concurrent,
            check_interval: Duration::from_millis(300),
            shutdown_timeout: Duration::from_secs(60),
            state_dir: self.scope.state_dir(),
            runners: vec![self.runner_config()],
            ..Config::default()
        }
    }

    /// Starts the real daemon with the real executor (dind on the host engine).
    pub fn start_daemon(&self, config: Config) -> super::daemon::Daemon {
        self.start_daemon_with_metrics(config, None)
    }

    /// [`E2e::start_daemon`], recording into `metrics` when given (else into a registry of its
    /// own: the daemon always runs with the metrics wrapper, as `runner run` does).
    pub fn start_daemon_with_metrics(
        &self,
        config: Config,
        metrics: Option<Arc<isolated_runner::metrics::Metrics>>,
    ) -> super::daemon::Daemon {
        isolated_runner::install_crypto_provider();
        // Always as `runner run` composes it: metrics wrap the backend and every environment
        // (a wrapper that drops a call would otherwise pass every test but this one).
        let metrics = metrics.unwrap_or_else(|| Arc::new(isolated_runner::metrics::Metrics::new()));
        let executor = RunnerExecutor::new(
            self.scope.runner_id.clone(),
            self.scope.state_dir(),
            ClientOptions::default(),
            None,
        )
        .with_concurrent(config.concurrent)
        .with_metrics(metrics.clone());
        let options = DaemonOptions {
            client: ClientOptions {
                retry: RetryPolicy {
                    max_attempts: 5,
                    base: Duration::from_millis(50),
                    cap: Duration::from_millis(500),
                },
                ..ClientOptions::default()
            },
            trace: TraceOptions {
                initial_interval: Duration::from_millis(200),
                // Silent scripts learn of a cancel through keep-alives; keep the wait short.
                force_send_interval: Duration::from_secs(2),
                final_retry_pause: Duration::from_millis(50),
                ..TraceOptions::default()
            },
            final_retry_pause: Duration::from_millis(50),
            system_id: Some(format!("s_{}", &self.scope.runner_id[2..14])),
            metrics: Some(metrics),
            ..DaemonOptions::default()
        };
        super::daemon::start(config, Arc::new(executor), options)
    }

    /// Clone URL for `name` as GitLab sends it: the job token embedded as the password.
    pub fn repo_url(&self, name: &str, job_token: &str) -> String {
        format!(
            "http://gitlab-ci-token:{job_token}@{}/git/{name}.git",
            self.git_addr
        )
    }

    /// A job in the job image with `GIT_STRATEGY=none` (no sources needed) and the given script
    /// and after_script. Tests that clone call [`with_repo`] on it.
    pub fn job(&self, id: u64, script: &[&str], after: &[&str]) -> Value {
        let mut j = job_payload_with_after(id, script, after);
        j["image"] =
            json!({"name": JOB_IMAGE, "entrypoint": null, "ports": [], "pull_policy": null});
        j["runner_info"]["timeout"] = json!(600);
        push_var(&mut j, "GIT_STRATEGY", "none", true);
        j
    }

    /// Points `job` at repo `name` (made by `fake.create_repo`) at `sha`, with refspecs and
    /// depth as GitLab builds them for a branch pipeline, and drops `GIT_STRATEGY=none`.
    pub fn with_repo(&self, job: &mut Value, name: &str, sha: &str, pipeline_id: u64) {
        let token = job["token"].as_str().expect("job token").to_string();
        job["git_info"] = json!({
            "repo_url": self.repo_url(name, &token),
            "repo_object_format": "sha1", "ref": "main", "ref_type": "branch", "depth": 20,
            "sha": sha, "before_sha": "0000000000000000000000000000000000000000",
            "refspecs": [format!("+refs/pipelines/{pipeline_id}:refs/pipelines/{pipeline_id}"),
                         "+refs/heads/main:refs/remotes/origin/main"]
        });
        if let Some(vars) = job["variables"].as_array_mut() {
            vars.retain(|v| v["key"] != "GIT_STRATEGY");
        }
    }

    /// Waits for the job's final update (panics with its state and trace after `timeout`).
    pub async fn wait_final(&self, id: u64, timeout: Duration) -> FinalUpdate {
        if !super::wait_until(timeout, || self.fake.final_state(id).is_some()).await {
            panic!(
                "job {id} got no final update within {timeout:?}; state {:?}; trace:\n{}",
                self.fake.job_state(id),
                self.trace(id)
            );
        }
        self.fake.final_state(id).expect("final state")
    }

    /// The trace the fake stored, lossily decoded.
    pub fn trace(&self, id: u64) -> String {
        String::from_utf8_lossy(&self.fake.job_trace(id)).into_owned()
    }

    /// Waits until the stored trace contains `needle`.
    pub async fn wait_trace(&self, id: u64, needle: &str, timeout: Duration) {
        if !super::wait_until(timeout, || self.trace(id).contains(needle)).await {
            panic!(
                "trace of job {id} never contained {needle:?}; state {:?}; trace:\n{}",
                self.fake.job_state(id),
                self.trace(id)
            );
        }
    }

    /// This scope's containers of `job` (all jobs when `None`) with `role` (any when `None`).
    pub async fn containers(&self, job: Option<u64>, role: Option<&str>) -> Vec<ContainerInfo> {
        let mut f = isolated_runner::docker::label_filters(&self.scope.runner_id, job);
        if let Some(r) = role {
            f.push(format!("{}={r}", isolated_runner::docker::LABEL_ROLE));
        }
        self.scope
            .docker
            .list_containers(&f)
            .await
            .expect("list containers")
    }

    /// Waits until this scope has no container of `job` left (polls the engine).
    pub async fn wait_no_containers(&self, job: u64, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = self.containers(Some(job), None).await;
            if left.is_empty() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "containers of job {job} still there after {timeout:?}: {:?}; state {:?}; trace:\n{}",
                left.iter().map(|c| &c.name).collect::<Vec<_>>(),
                self.fake.job_state(job),
                self.trace(job)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The sidecar's IP on its job network, from the engine.
    pub async fn sidecar_ip(&self, job: u64) -> String {
        let sidecars = self.containers(Some(job), Some("sidecar")).await;
        let sc = sidecars.first().expect("the job has a sidecar");
        // The list endpoint leaves per-network addresses out; ask for the container itself.
        let out = tokio::process::Command::new("docker")
            .args([
                "inspect",
                "-f",
                "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
                &sc.id,
            ])
            .output()
            .await
            .expect("docker inspect runs");
        let ip = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(!ip.is_empty(), "sidecar {} has no IP", sc.name);
        ip
    }
}

/// Appends a variable to a job payload.
pub fn push_var(job: &mut Value, key: &str, value: &str, public: bool) {
    job["variables"]
        .as_array_mut()
        .expect("variables array")
        .push(json!({"key": key, "value": value, "public": public, "masked": false}));
}
