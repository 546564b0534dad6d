//! Docker test helpers: a per-test scope (uuid-labelled runner id, temp builds/state dirs), a
//! sweep guard, leak assertions and image checks. Tests never pull: a missing image is a clear
//! panic that says how to build it.

use isolated_runner::config::RunnerConfig;
use isolated_runner::docker::Docker;
use isolated_runner::isolation::{
    ContainerImage, EnvironmentSpec, Error, Isolation, JobEnvironment, OutputSink, Role,
    ScriptRequest,
};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The test images (built by `tests/images/build`).
pub const DIND_IMAGE: &str = "isolated-runner/dind:test";
/// Job and helper image.
pub const JOB_IMAGE: &str = "isolated-runner/job:test";
/// Tiny image for inner daemons.
pub const BUSYBOX_IMAGE: &str = "isolated-runner/busybox:test";

/// An image a test built ([`classic_build`]); removed when dropped, also when an assertion
/// fails. `.0` is its name.
pub struct ImageGuard(pub String);

impl Drop for ImageGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["image", "rm", "--force", &self.0])
            .output();
    }
}

/// Builds `tag` from `dockerfile` with the classic builder: it uses local images as they are
/// (nothing is pulled) and leaves no build cache on the engine (BuildKit's would). `--no-cache`:
/// tests build the same Dockerfile side by side, and a cached intermediate shared between them
/// vanishes when the other test removes its image ("failed to get digest", seen in CI).
/// Labelled with the scope's runner id; removed when the guard drops.
pub fn classic_build(scope: &Scope, tag: &str, dockerfile: &str) -> ImageGuard {
    let image = ImageGuard(tag.to_string());
    let mut build = std::process::Command::new("docker")
        .env("DOCKER_BUILDKIT", "0")
        .args(["build", "--quiet", "--no-cache", "--label"])
        .arg(format!("io.isolated-runner.runner={}", scope.runner_id))
        .args(["-t", tag, "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("docker build");
    {
        use std::io::Write;
        let mut stdin = build.stdin.take().expect("stdin");
        stdin
            .write_all(dockerfile.as_bytes())
            .expect("write the Dockerfile");
    }
    let built = build.wait_with_output().expect("docker build");
    assert!(
        built.status.success(),
        "docker build: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    image
}

/// `isolated-runner/dind-<what>:test-<runner id>`: [`DIND_IMAGE`] plus `steps` (Dockerfile
/// lines), built by [`classic_build`].
pub fn derived_sidecar_image(scope: &Scope, what: &str, steps: &str) -> ImageGuard {
    classic_build(
        scope,
        &format!("isolated-runner/dind-{what}:test-{}", scope.runner_id),
        &format!("FROM {DIND_IMAGE}\n{steps}\n"),
    )
}

/// A busybox service under `alias`, serving a directory that `setup` (shell) fills, over
/// HTTP on port 80.
pub fn httpd_service(alias: &str, setup: &str) -> isolated_runner::isolation::ServiceSpec {
    isolated_runner::isolation::ServiceSpec {
        image: isolated_runner::isolation::ContainerImage {
            name: BUSYBOX_IMAGE.into(),
            entrypoint: None,
        },
        command: vec![
            "sh".into(),
            "-c".into(),
            format!("mkdir -p /www && {setup} && httpd -f -p 80 -h /www"),
        ],
        aliases: vec![alias.into()],
        env: vec![],
    }
}

/// One test's world: its runner id carries a fresh uuid, so every object the backends create
/// is labelled with it (`io.isolated-runner.runner=t-<uuid>`), and its directories are private.
pub struct Scope {
    /// `t-<uuid>`.
    pub runner_id: String,
    /// Temp root holding `builds/` and `state/`.
    pub tmp: tempfile::TempDir,
    /// The host daemon.
    pub docker: Docker,
}

/// The host's Docker Engine, or a panic that says why the test cannot run.
///
/// A test that needs the engine fails without one instead of skipping: a skip would let CI (and a
/// developer's `cargo test`) pass without having tried any isolation at all. The tests that need
/// no engine run alone with `cargo test --lib` and `cargo test --test suite -- config:: exec::`.
pub async fn engine() -> Docker {
    let docker = match Docker::connect(None).await {
        Ok(docker) => docker,
        Err(e) => panic!(
            "this test needs a running Docker Engine and found none ({e}); it fails rather than \
             skips so that a run without an engine cannot pass: start dockerd (or set DOCKER_HOST), \
             then run tests/images/build"
        ),
    };
    if let Err(e) = docker.ping().await {
        panic!(
            "this test needs a running Docker Engine, and the engine does not answer ({e}); it \
             fails rather than skips so that a run without an engine cannot pass"
        );
    }
    docker
}

impl Scope {
    /// A new scope; panics with a hint when an image is missing.
    pub async fn new() -> Scope {
        isolated_runner::install_crypto_provider();
        let docker = engine().await;
        for img in [DIND_IMAGE, JOB_IMAGE, BUSYBOX_IMAGE] {
            assert!(
                docker.image_exists(img).await.expect("inspect image"),
                "test image {img} is missing: run tests/images/build (the tests never pull)"
            );
        }
        let uuid = uuid::Uuid::new_v4().simple().to_string();
        let tmp = tempfile::Builder::new()
            .prefix("ir-test-")
            .tempdir()
            .expect("tempdir");
        Scope {
            runner_id: format!("t-{}", &uuid[..16]),
            tmp,
            docker,
        }
    }

    /// A spec for `job_id` of project 1 (unprotected), the job image for build and helper.
    pub fn spec(&self, job_id: u64) -> EnvironmentSpec {
        EnvironmentSpec {
            runner_id: self.runner_id.clone(),
            job_id,
            project_id: 1,
            protected: false,
            timeout: Duration::from_secs(3600),
            build_image: ContainerImage {
                name: JOB_IMAGE.to_string(),
                entrypoint: None,
            },
            helper_image: JOB_IMAGE.to_string(),
            services: Vec::new(),
            service_env: Vec::new(),
            repo_endpoint: None,
            clone_path: None,
        }
    }

    /// [`Scope::runner_config`] with busybox preloaded into each job's daemon, then `tweak`.
    pub fn config(&self, tweak: impl FnOnce(&mut RunnerConfig)) -> RunnerConfig {
        let mut cfg = self.runner_config();
        cfg.docker.isolation.preload_images = vec![BUSYBOX_IMAGE.to_string()];
        tweak(&mut cfg);
        cfg
    }

    /// A dind backend for `cfg` on this scope's engine and state dir.
    pub fn dind(&self, cfg: RunnerConfig) -> Arc<dyn Isolation> {
        Arc::new(isolated_runner::isolation::dind::DindBackend::new(
            self.docker.clone(),
            Arc::new(cfg),
            self.state_dir(),
        ))
    }

    /// A shared-socket backend (this scope's runner config, the host engine).
    pub fn shared_socket(&self) -> Arc<dyn Isolation> {
        let mut cfg = self.runner_config();
        cfg.docker.isolation.mode = isolated_runner::config::IsolationMode::SharedSocket;
        Arc::new(
            isolated_runner::isolation::shared_socket::SharedSocketBackend::new(
                self.docker.clone(),
                Arc::new(cfg),
            ),
        )
    }

    /// `<tmp>/builds`.
    pub fn builds_dir(&self) -> PathBuf {
        self.tmp.path().join("builds")
    }

    /// `<tmp>/state`.
    pub fn state_dir(&self) -> PathBuf {
        self.tmp.path().join("state")
    }

    /// A runner config pointing at this scope's directories.
    pub fn runner_config(&self) -> RunnerConfig {
        let mut r = RunnerConfig {
            builds_dir: self.builds_dir(),
            // The test payloads' placeholder repository URL (their sources come from a local
            // tree): a payload's clone host must be the GitLab URL's or `clone_url`'s.
            clone_url: Some("http://127.0.0.1:1/".parse().expect("constant URL")),
            ..Default::default()
        };
        r.docker.isolation.sidecar_image = DIND_IMAGE.to_string();
        r.docker.isolation.ready_timeout = Duration::from_secs(90);
        // The root store (a loop-mounted btrfs per state dir) is tested in `root_store`;
        // elsewhere the images are copied, as on a host without it.
        r.docker.isolation.root_store = isolated_runner::config::RootStore::Off;
        r
    }

    /// The id of the one sidecar container of `job`.
    pub async fn sidecar_of(&self, job: u64) -> String {
        let mut filters = isolated_runner::docker::label_filters(&self.runner_id, Some(job));
        filters.push(format!("{}=sidecar", isolated_runner::docker::LABEL_ROLE));
        let found = self
            .docker
            .list_containers(&filters)
            .await
            .expect("list containers");
        assert_eq!(found.len(), 1, "sidecars of job {job}: {found:?}");
        found[0].id.clone()
    }

    /// The host pid of the main process of `job`'s sidecar (for its `/proc/<pid>/root`).
    pub async fn sidecar_pid(&self, job: u64) -> u32 {
        let id = self.sidecar_of(job).await;
        let out = tokio::process::Command::new("docker")
            .args(["inspect", "-f", "{{.State.Pid}}", &id])
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .expect("run docker inspect");
        let text = String::from_utf8_lossy(&out.stdout);
        match text.trim().parse() {
            Ok(pid) if pid > 0 => pid,
            _ => panic!("no pid for sidecar {id}: {text}"),
        }
    }

    /// Asserts that nothing labelled with this scope's runner id is left on the engine and that
    /// no job or cert directory remains (not even the runner's empty cert dir).
    pub async fn assert_clean(&self) {
        let f = isolated_runner::docker::label_filters(&self.runner_id, None);
        let c = self
            .docker
            .list_containers(&f)
            .await
            .expect("list containers");
        assert!(
            c.is_empty(),
            "containers left: {:?}",
            c.iter().map(|c| &c.name).collect::<Vec<_>>()
        );
        let n = self.docker.list_networks(&f).await.expect("list networks");
        assert!(
            n.is_empty(),
            "networks left: {:?}",
            n.iter().map(|n| &n.name).collect::<Vec<_>>()
        );
        let v = self.docker.list_volumes(&f).await.expect("list volumes");
        assert!(
            v.is_empty(),
            "volumes left: {:?}",
            v.iter().map(|v| &v.name).collect::<Vec<_>>()
        );
        let leftover_dirs = list(&self.builds_dir());
        assert!(leftover_dirs.is_empty(), "job dirs left: {leftover_dirs:?}");
        let runner_certs = self.state_dir().join("certs").join(&self.runner_id);
        let certs = list(&runner_certs);
        assert!(certs.is_empty(), "cert dirs left: {certs:?}");
        // The runner's own dir goes with its last job's.
        assert!(
            !runner_certs.exists(),
            "empty runner cert dir left: {}",
            runner_certs.display()
        );
    }
}

fn list(dir: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(_) => Vec::new(),
    }
}

impl Drop for Scope {
    /// The safety net when a test panics before its teardown: remove by label with the docker
    /// CLI (synchronous on purpose: async work cannot run in `Drop`).
    fn drop(&mut self) {
        let label = format!("label=io.isolated-runner.runner={}", self.runner_id);
        let ids = |args: &[&str]| -> Vec<String> {
            std::process::Command::new("docker")
                .args(args)
                .output()
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        };
        let containers = ids(&["ps", "-aq", "--filter", &label]);
        if !containers.is_empty() {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-fv"])
                .args(&containers)
                .output();
        }
        let vols = ids(&["volume", "ls", "-q", "--filter", &label]);
        if !vols.is_empty() {
            let _ = std::process::Command::new("docker")
                .args(["volume", "rm", "-f"])
                .args(&vols)
                .output();
        }
        let nets = ids(&["network", "ls", "-q", "--filter", &label]);
        if !nets.is_empty() {
            let _ = std::process::Command::new("docker")
                .args(["network", "rm"])
                .args(&nets)
                .output();
        }
        sweep_firewall(&self.runner_id);
    }
}

/// Removes every firewall chain (and its jumps) whose rules name `runner_id`: the safety net
/// for a test that panicked before its teardown (synchronous, with the iptables CLI).
pub fn sweep_firewall(runner_id: &str) {
    let tag = format!("runner={runner_id} ");
    let run = |bin: &str, args: &[&str]| -> String {
        std::process::Command::new(bin)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    for bin in ["iptables", "ip6tables"] {
        let text = run(bin, &["-w", "-S"]);
        let mut chains = Vec::new();
        for line in text.lines().filter(|l| l.contains(&tag)) {
            let words = isolated_runner::netpolicy::rules::split_rule_line(line);
            let (Some(hook), Some(target)) = (words.get(1), words.last()) else {
                continue;
            };
            if hook.starts_with("IR-") {
                chains.push(hook.clone());
                continue;
            }
            let mut args: Vec<&str> = vec!["-w", "-D"];
            args.extend(words[1..].iter().map(String::as_str));
            run(bin, &args);
            chains.push(target.clone());
        }
        chains.sort();
        chains.dedup();
        for c in chains.iter().filter(|c| c.starts_with("IR-")) {
            run(bin, &["-w", "-F", c]);
            run(bin, &["-w", "-X", c]);
        }
    }
}

/// Collects script output and lets a test wait for a marker.
#[derive(Default)]
pub struct Collect {
    buf: Mutex<Vec<u8>>,
    notify: tokio::sync::Notify,
}

impl Collect {
    /// A new shared sink.
    pub fn new() -> Arc<Collect> {
        Arc::new(Collect::default())
    }

    /// Everything written so far, lossily decoded.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf.lock().expect("sink lock")).into_owned()
    }

    /// Waits until the output contains `needle`, panicking after `timeout`.
    pub async fn wait_for(&self, needle: &str, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.notify.notified();
            if self.text().contains(needle) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("output never contained {needle:?}; got:\n{}", self.text());
            }
        }
    }
}

impl OutputSink for Collect {
    fn write(&self, data: &[u8]) {
        self.buf.lock().expect("sink lock").extend_from_slice(data);
        self.notify.notify_waiters();
    }
}

/// Writes a compose project into `dir` (a job's project dir): `web` serves `dir` (its
/// `index.html` says `served-from-job-dir`) through a `./` bind mount on the daemon's port
/// 8080, and `writer` writes `compose-out.txt` into `dir` through the same mount. Run it with
/// [`COMPOSE_PROJECT_SCRIPT`], check it with [`assert_compose_project_ran`]. The web service
/// runs with `init: true` (docker-init bound into it), which the rootless profile once failed.
pub fn write_compose_project(dir: &Path) {
    std::fs::write(dir.join("index.html"), "served-from-job-dir").expect("write index.html");
    std::fs::write(
        dir.join("compose.yaml"),
        r#"services:
  web:
    image: isolated-runner/busybox:test
    pull_policy: never
    command: ["httpd", "-f", "-p", "80", "-h", "/app"]
    init: true
    ports: ["8080:80"]
    volumes: ["./:/app"]
  writer:
    image: isolated-runner/busybox:test
    pull_policy: never
    command: ["sh", "-c", "echo written-by-compose > /app/compose-out.txt"]
    volumes: ["./:/app"]
"#,
    )
    .expect("write compose.yaml");
}

/// Script lines that run [`write_compose_project`]'s project in the job: up, the page through
/// the published port (`docker:8080`), the writer's end, down.
pub const COMPOSE_PROJECT_SCRIPT: &str = r#"docker compose up -d
for i in $(seq 1 100); do curl -fsS http://docker:8080/index.html && break; sleep 0.1; done
echo
docker compose wait writer || true
docker compose down -v"#;

/// Asserts that [`COMPOSE_PROJECT_SCRIPT`] worked: the page came through the published port
/// (in the job's output `text`) and the writer's file is in `dir` on the host (path parity).
pub fn assert_compose_project_ran(dir: &Path, text: &str) {
    assert!(
        text.contains("served-from-job-dir"),
        "published port not reachable at docker:8080: {text}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("compose-out.txt"))
            .unwrap_or_else(|e| panic!("the writer's file in {}: {e}", dir.display()))
            .trim(),
        "written-by-compose"
    );
}

/// Runs `script` as a build script under `set -eo pipefail`, with `CI_PROJECT_DIR` set, in the
/// job container; returns the result and the output.
pub async fn run_project_script(
    env: &dyn JobEnvironment,
    script: &str,
) -> (Result<i32, Error>, String) {
    let out = Collect::new();
    let r = env
        .run_script(
            ScriptRequest {
                role: Role::Build,
                script: format!("set -eo pipefail\n{script}\n"),
                env: vec![(
                    "CI_PROJECT_DIR".into(),
                    env.paths().project_dir.display().to_string(),
                )],
            },
            out.clone(),
            tokio_util::sync::CancellationToken::new(),
        )
        .await;
    (r, out.text())
}

/// [`run_project_script`] that must exit 0; returns its output.
pub async fn expect_project_script_ok(env: &dyn JobEnvironment, script: &str) -> String {
    let (r, text) = run_project_script(env, script).await;
    assert_eq!(r.ok(), Some(0), "script failed:\n{script}\noutput:\n{text}");
    text
}
