//! Helpers of the security and limits suites: a dind backend on a [`Scope`], scripts with their
//! output, a listener of the test's own on the host, a labelled container on another bridge
//! of the pool, firewall listings, and whole jobs driven through `job::Pipeline`.

use super::docker::{BUSYBOX_IMAGE, Collect, JOB_IMAGE, Scope};
use isolated_runner::config::RunnerConfig;
use isolated_runner::gitlab::types::JobResponse;
use isolated_runner::isolation::{
    EnvironmentSpec, Error, Isolation, JobEnvironment, Role, ScriptRequest,
};
use isolated_runner::job::{JobControl, JobExecutor, JobOutcome, LocalArtifactStore, Pipeline};
use isolated_runner::trace::TraceSink;
use serde_json::{Value, json};
use std::process::Command;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// Prepares a job or panics with the prepare log.
pub async fn prepare(
    backend: &Arc<dyn Isolation>,
    spec: &EnvironmentSpec,
) -> Box<dyn JobEnvironment> {
    prepare_logged(backend, spec).await.0
}

/// Prepares a job or panics with the prepare log; returns the environment and that log.
pub async fn prepare_logged(
    backend: &Arc<dyn Isolation>,
    spec: &EnvironmentSpec,
) -> (Box<dyn JobEnvironment>, String) {
    let out = Collect::new();
    let env = backend
        .prepare(spec, out.clone(), CancellationToken::new())
        .await
        .unwrap_or_else(|e| panic!("prepare failed: {e}\n{}", out.text()));
    let log = out.text();
    // Seen only with --nocapture or when the test fails: what the backend did for the job.
    eprintln!("job {} prepared: {}", spec.job_id, log.trim());
    (env, log)
}

/// Runs a bash script in the job container; returns the result and the output.
pub async fn run(env: &dyn JobEnvironment, script: &str) -> (Result<i32, Error>, String) {
    let out = Collect::new();
    let r = env
        .run_script(
            ScriptRequest {
                role: Role::Build,
                script: script.to_string(),
                env: vec![],
            },
            out.clone(),
            CancellationToken::new(),
        )
        .await;
    (r, out.text())
}

/// Runs a script that must exit 0; returns its output.
pub async fn expect_ok(env: &dyn JobEnvironment, script: &str) -> String {
    let (r, text) = run(env, &format!("set -e\n{script}\n")).await;
    assert_eq!(r.ok(), Some(0), "script failed:\n{script}\noutput:\n{text}");
    text
}

/// Tears down and asserts nothing failed.
pub async fn teardown(env: Box<dyn JobEnvironment>) {
    let report = env.teardown().await;
    assert!(
        report.failures.is_empty(),
        "teardown failures: {:?}",
        report.failures
    );
}

/// Runs a command and returns (success, stdout, stderr).
pub fn sh(prog: &str, args: &[&str]) -> (bool, String, String) {
    let o = Command::new(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {prog}: {e}"));
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// `ir-<runner>-<job>-net`'s gateway, as the engine reports it.
pub fn gateway_of(scope: &Scope, job_id: u64) -> String {
    let name = format!("ir-{}-{job_id}-net", scope.runner_id);
    let (ok, out, err) = sh(
        "docker",
        &[
            "network",
            "inspect",
            "-f",
            "{{range .IPAM.Config}}{{.Gateway}}{{end}}",
            &name,
        ],
    );
    assert!(ok, "inspect {name}: {err}");
    out.trim().to_string()
}

/// The chain name the backend uses for this scope's job.
pub fn chain_of(scope: &Scope, job_id: u64) -> String {
    isolated_runner::netpolicy::rules::chain_name(&scope.runner_id, job_id).expect("chain name")
}

/// `<binary> -S <chain>`, or `None` when the chain does not exist.
pub fn chain_rules(binary: &str, chain: &str) -> Option<String> {
    let (ok, out, _) = sh(binary, &["-w", "-S", chain]);
    ok.then_some(out)
}

/// Every line of `<binary> -S` that mentions `needle`.
pub fn rules_mentioning(binary: &str, needle: &str) -> Vec<String> {
    let (_, out, _) = sh(binary, &["-w", "-S"]);
    out.lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

/// Packets counted by the DROP rules of `chain`.
pub fn dropped_packets(chain: &str) -> u64 {
    let (_, out, _) = sh("iptables", &["-w", "-L", chain, "-v", "-n", "-x"]);
    out.lines()
        .filter(|l| l.contains("DROP"))
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// A tiny HTTP server of the test on the host, bound to `ip`, answering `marker`.
pub async fn host_listener(ip: &str, marker: &'static str) -> u16 {
    let listener = tokio::net::TcpListener::bind((ip, 0))
        .await
        .unwrap_or_else(|e| panic!("bind {ip}: {e}"));
    let port = listener.local_addr().expect("local addr").port();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = sock.read(&mut buf).await;
                let body = format!(
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{marker}",
                    marker.len()
                );
                let _ = sock.write_all(body.as_bytes()).await;
            });
        }
    });
    port
}

/// A labelled busybox HTTP server on a bridge of its own inside the runner's address pool:
/// what another job's container looks like from the network. Removed by the scope's sweep.
pub struct OtherBridge {
    /// Its address.
    pub ip: String,
}

impl OtherBridge {
    /// Creates the network (a free /28 of 10.213.0.0/16) and the server answering `marker`.
    pub fn start(scope: &Scope, marker: &str) -> OtherBridge {
        let label = format!("io.isolated-runner.runner={}", scope.runner_id);
        let name = format!("ir-{}-other", scope.runner_id);
        let seed = uuid::Uuid::new_v4().as_bytes()[0];
        let mut created = None;
        for i in 0..64u16 {
            let third = (u16::from(seed) + i * 7) % 256;
            let subnet = format!("10.213.{third}.240/28");
            let (ok, _, _) = sh(
                "docker",
                &[
                    "network",
                    "create",
                    "--label",
                    &label,
                    "--label",
                    "io.isolated-runner.managed=1",
                    "--subnet",
                    &subnet,
                    &name,
                ],
            );
            if ok {
                created = Some(format!("10.213.{third}.242"));
                break;
            }
        }
        let ip = created.expect("a free /28 for the other bridge");
        let (ok, _, err) = sh(
            "docker",
            &[
                "run",
                "-d",
                "--pull",
                "never",
                "--label",
                &label,
                "--label",
                "io.isolated-runner.managed=1",
                "--network",
                &name,
                "--ip",
                &ip,
                "--name",
                &format!("{name}-web"),
                BUSYBOX_IMAGE,
                "sh",
                "-c",
                &format!("mkdir -p /w && echo {marker} > /w/index.html && httpd -f -p 80 -h /w"),
            ],
        );
        assert!(ok, "start the other bridge's server: {err}");
        OtherBridge { ip }
    }
}

/// Collects a job's trace.
#[derive(Default)]
pub struct Trace(Mutex<Vec<u8>>);

impl Trace {
    /// The trace so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("trace")).into_owned()
    }
}

impl TraceSink for Trace {
    fn append(&self, data: &[u8]) {
        self.0.lock().expect("trace").extend_from_slice(data);
    }
}

/// A payload in GitLab's shape running `script` in the job image, with `extra` merged over the
/// top-level fields (image, services, variables, artifacts, …).
pub fn payload(id: u64, script: &[&str], extra: Value) -> Value {
    let token = format!("glcbt-sec{id}token");
    let mut p = json!({
        "id": id, "token": token, "allow_git_fetch": true,
        "job_info": {"id": id, "name": format!("job{id}"), "stage": "test", "project_id": 7, "project_name": "demo"},
        "git_info": {"repo_url": "http://127.0.0.1:1/g/demo.git", "ref": "main", "ref_type": "branch", "depth": 1,
                     "sha": "0123456789012345678901234567890123456789",
                     "before_sha": "0000000000000000000000000000000000000000", "refspecs": []},
        "runner_info": {"timeout": 600},
        "variables": [
            {"key": "CI_JOB_ID", "value": id.to_string(), "public": true, "masked": false},
            {"key": "CI_JOB_TOKEN", "value": token, "public": false, "masked": true}
        ],
        "steps": [{"name": "script", "script": script, "timeout": 600, "when": "on_success", "allow_failure": false}],
        "image": {"name": JOB_IMAGE},
        "services": [], "artifacts": null, "cache": [], "credentials": [], "dependencies": [],
        "features": {"trace_sections": false}
    });
    if let (Some(p), Some(extra)) = (p.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            if k == "variables" {
                if let (Some(Value::Array(vars)), Value::Array(more)) = (p.get_mut("variables"), v)
                {
                    vars.extend(more.iter().cloned());
                }
            } else {
                p.insert(k.clone(), v.clone());
            }
        }
    }
    p
}

/// Runs a payload through the real pipeline (sources copied from `tree`, artifacts to a local
/// store under the scope) and returns the outcome and the trace.
pub async fn run_job(
    scope: &Scope,
    cfg: RunnerConfig,
    payload: Value,
    tree: &std::path::Path,
) -> (JobOutcome, String) {
    let job: JobResponse = serde_json::from_value(payload).expect("payload parses");
    let backend = scope.dind(cfg.clone());
    let pipeline = Pipeline {
        backend,
        artifacts: Arc::new(LocalArtifactStore {
            root: scope.tmp.path().join("artifacts"),
        }),
        cache: None,
        local_tree: Some(isolated_runner::job::LocalTree {
            root: tree.to_path_buf(),
            files: None,
        }),
        runner_id: scope.runner_id.clone(),
        staging_root: isolated_runner::job::staging::staging_root(&scope.tmp.path().join("state")),
        running: Default::default(),
    };
    let trace = Arc::new(Trace::default());
    let outcome = pipeline
        .execute(job, Arc::new(cfg), trace.clone(), JobControl::default())
        .await;
    (outcome, trace.text())
}

/// Removes every firewall rule and chain of `runner_id` when dropped: the safety net for a test
/// that panics before its teardown (the scope's sweep knows only Docker objects).
pub struct FirewallSweep(pub String);

impl Drop for FirewallSweep {
    fn drop(&mut self) {
        super::docker::sweep_firewall(&self.0);
    }
}
