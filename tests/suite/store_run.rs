//! `runner run` end to end with the root store on (docs/preload.md): the real binary polls the
//! fake GitLab with `root_store = "auto"` and `preload_images`, and the tests assert on real
//! state: the store's btrfs subvolumes before, during and after jobs, which directory each
//! sidecar's daemon has at `/var/lib/docker`, the preloaded image's id inside the job's daemon,
//! the "daemon ready" line (a `root` step, no `preload` copy), a SIGKILL mid-job swept at the
//! next start, and `runner cleanup` leaving goldens only. Each test has its own store (the
//! default `<state_dir>/roots`, a loop-mounted image in the test's temp dir), unmounted at the
//! end with its loop device freed; `root_store.rs` covers the backend itself.

use crate::support;

use isolated_runner::paths::is_slot_id;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::docker::{BUSYBOX_IMAGE, JOB_IMAGE, Scope};
use support::fake_gitlab::{FakeGitlab, FinalUpdate, RUNNER_TOKEN, job_payload};
use support::store::{StoreGuard, is_mounted, mount_line};
use support::wait_until;

/// A whole job, golden build included, on a busy 2-core host.
const JOB_TIMEOUT: Duration = Duration::from_secs(240);

/// The inner facts every job prints, then it waits for the test's release file.
const INNER_FACTS: &[&str] = &[
    "echo \"inner-id=$(docker image inspect -f '{{.Id}}' isolated-runner/busybox:test)\"",
    "echo \"inner-driver=$(docker info -f '{{.Driver}}')\"",
    "docker run --rm isolated-runner/busybox:test echo inner-run-ok",
];
const WAIT_FOR_RELEASE: &str = "echo waiting-for-release; until [ -f \"$CI_PROJECT_DIR/release\" ]; do sleep 0.2; done; echo released";

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

/// The store's subvolumes as `btrfs subvolume list` gives them (paths from the store's root).
fn subvolumes(store: &Path) -> Vec<String> {
    let out = std::process::Command::new("btrfs")
        .args(["subvolume", "list"])
        .arg(store)
        .output()
        .expect("btrfs runs (package btrfs-progs)");
    assert!(
        out.status.success(),
        "btrfs subvolume list {}: {}",
        store.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(" path ").map(|(_, p)| p.trim().to_string()))
        .collect();
    v.sort();
    v
}

/// The job ids of the job roots (`jobs/ir-<runner>-<id>-root`) in a subvolume list.
fn root_ids(subvols: &[String], runner: &str) -> Vec<u64> {
    subvols
        .iter()
        .filter_map(|p| p.strip_prefix("jobs/"))
        .filter_map(isolated_runner::isolation::root_store::parse_root_name)
        .filter(|(r, _)| *r == runner)
        .map(|(_, id)| id)
        .collect()
}

/// What the sidecar's daemon has at `/var/lib/docker` (the mount's source on the host).
async fn data_root_of(sidecar: &str) -> String {
    let out = tokio::process::Command::new("docker")
        .args([
            "inspect",
            "-f",
            "{{range .Mounts}}{{if eq .Destination \"/var/lib/docker\"}}{{.Type}} {{.Source}}{{end}}{{end}}",
            sidecar,
        ])
        .output()
        .await
        .expect("docker inspect runs");
    assert!(
        out.status.success(),
        "inspect {sidecar}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Frees nothing itself: says which loop devices back `img` (`losetup -j`).
fn loop_devices_of(img: &Path) -> String {
    let out = std::process::Command::new("losetup")
        .arg("-j")
        .arg(img)
        .output()
        .expect("losetup runs (package mount)");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `kill -9` of a runner process, reaped: what a crash leaves (nothing of its own clean-up runs).
async fn kill_runner(mut runner: tokio::process::Child) {
    kill(
        Pid::from_raw(runner.id().expect("pid") as i32),
        Signal::SIGKILL,
    )
    .expect("kill -9 the runner");
    runner.wait().await.expect("reap the runner");
}

/// Waits until no loop device backs `img`: the kernel detaches an autoclear loop device
/// when the file system's last reference goes, shortly after the unmount returns.
async fn assert_loop_freed(img: &Path) {
    let freed = wait_until(Duration::from_secs(30), || loop_devices_of(img).is_empty()).await;
    assert!(
        freed,
        "a loop device still backs {img:?}: {}",
        loop_devices_of(img)
    );
}

fn write_private(path: &Path, text: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .expect("write a private file");
    f.write_all(text.as_bytes()).expect("write a private file");
}

/// One test's world: a scope whose runner id is the binary's system id (so the leak checks see
/// exactly this test's objects), the fake GitLab, a config file, the store's guard.
struct World {
    /// First, so it is dropped first: the store is unmounted before the scope's temp dir
    /// (which holds the store's mount point and image file) is deleted.
    guard: StoreGuard,
    scope: Scope,
    fake: FakeGitlab,
    config: PathBuf,
    log: PathBuf,
    store: PathBuf,
}

impl World {
    /// `isolation` is appended to `[runners.docker.isolation]`.
    async fn new(name: &str, concurrent: usize, isolation: &str) -> World {
        let mut scope = Scope::new().await;
        let uuid = uuid::Uuid::new_v4().simple().to_string();
        scope.runner_id = format!("s_{}", &uuid[..12]);
        let state = scope.state_dir();
        std::fs::create_dir_all(&state).expect("state dir");
        write_private(
            &state.join(".runner_system_id"),
            &format!("{}\n", scope.runner_id),
        );
        let fake = FakeGitlab::start().await;
        let config = scope.tmp.path().join("config.toml");
        write_private(
            &config,
            &format!(
                "concurrent = {concurrent}\ncheck_interval = 1\nshutdown_timeout = 30\nlog_format = \"text\"\n\
                 state_dir = \"{}\"\n\n\
                 [[runners]]\nname = \"{name}\"\nurl = \"{}\"\nclone_url = \"http://127.0.0.1:1/\"\n\
                 token = \"{RUNNER_TOKEN}\"\nexecutor = \"docker\"\nbuilds_dir = \"{}\"\n\n\
                 [runners.docker]\nimage = \"{JOB_IMAGE}\"\nhelper_image = \"{JOB_IMAGE}\"\n\n\
                 [runners.docker.isolation]\nmode = \"dind\"\nready_timeout = \"90s\"\n\
                 root_store = \"auto\"\nroot_store_size = \"2g\"\npreload_images = [\"{BUSYBOX_IMAGE}\"]\n{isolation}",
                state.display(),
                fake.url(),
                scope.builds_dir().display()
            ),
        );
        let store = isolated_runner::isolation::root_store::default_path(&state);
        let guard = StoreGuard {
            dir: store.clone(),
            runner_id: scope.runner_id.clone(),
        };
        World {
            log: scope.tmp.path().join("runner.log"),
            scope,
            fake,
            config,
            store,
            guard,
        }
    }

    /// `runner run` on the config, debug log appended to the log file.
    fn start_runner(&self) -> tokio::process::Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the runner log");
        tokio::process::Command::new(env!("CARGO_BIN_EXE_runner"))
            .args(["run", "-c"])
            .arg(&self.config)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUNNER_LOG_LEVEL", "info,isolated_runner=debug")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start runner run")
    }

    /// Stops `runner` as its service manager would (SIGQUIT: no new jobs, running ones
    /// finish, then shutdown) and asserts it exits cleanly.
    async fn stop_runner(&self, mut runner: tokio::process::Child) {
        kill(
            Pid::from_raw(runner.id().expect("pid") as i32),
            Signal::SIGQUIT,
        )
        .expect("SIGQUIT the runner");
        let status = tokio::time::timeout(Duration::from_secs(90), runner.wait())
            .await
            .expect("the runner exits on SIGQUIT")
            .expect("reap the runner");
        assert!(status.success(), "{status}\n{}", self.log_text());
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn trace(&self, id: u64) -> String {
        String::from_utf8_lossy(&self.fake.job_trace(id)).into_owned()
    }

    /// A job in the job image, without sources.
    fn enqueue(&self, id: u64, script: &[&str]) {
        let mut job = job_payload(id, script);
        job["image"]["name"] = JOB_IMAGE.into();
        job["runner_info"]["timeout"] = 600.into();
        job["variables"]
            .as_array_mut()
            .expect("variables")
            .push(serde_json::json!({"key": "GIT_STRATEGY", "value": "none", "public": true, "masked": false}));
        self.fake.enqueue(job);
    }

    async fn wait_trace(&self, id: u64, needle: &str) {
        let seen = wait_until(JOB_TIMEOUT, || self.trace(id).contains(needle)).await;
        assert!(
            seen,
            "job {id} never printed {needle:?}; trace:\n{}\nlog:\n{}",
            self.trace(id),
            self.log_text()
        );
    }

    async fn wait_final(&self, id: u64) -> FinalUpdate {
        let done = wait_until(JOB_TIMEOUT, || self.fake.final_state(id).is_some()).await;
        assert!(
            done,
            "job {id} got no final state; trace:\n{}\nlog:\n{}",
            self.trace(id),
            self.log_text()
        );
        self.fake.final_state(id).expect("final state")
    }

    async fn wait_log(&self, needle: &str, from: usize) {
        let seen = wait_until(JOB_TIMEOUT, || {
            self.log_text()
                .get(from..)
                .is_some_and(|t| t.contains(needle))
        })
        .await;
        assert!(
            seen,
            "the runner never logged {needle:?}:\n{}",
            self.log_text()
        );
    }

    /// Writes the release file of a job waiting in [`WAIT_FOR_RELEASE`] (through the slot's
    /// link when the job took a pre-started sidecar).
    fn release(&self, id: u64) {
        let p = self
            .scope
            .builds_dir()
            .join(format!("gitlab-job-{id}"))
            .join("release");
        std::fs::write(&p, b"go").unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    }

    fn goldens(&self) -> Vec<String> {
        names(&self.store.join("golden"))
    }

    /// Only goldens left: no job root, mount, stamp or build, on disk or as a subvolume.
    fn assert_goldens_only(&self) {
        for sub in ["jobs", "mnt", "stamps", "build"] {
            let left = names(&self.store.join(sub));
            assert!(left.is_empty(), "{sub}/ left in the store: {left:?}");
        }
        let subvols = subvolumes(&self.store);
        assert!(
            !subvols.is_empty() && subvols.iter().all(|p| p.starts_with("golden/")),
            "{subvols:?}"
        );
    }

    /// Unmounts the store and asserts its loop device is freed.
    async fn release_store(self) {
        let img = isolated_runner::isolation::root_store::image_file(&self.store);
        let World { scope, guard, .. } = self;
        drop(guard);
        assert!(!is_mounted(&scope.state_dir().join("roots")));
        assert_loop_freed(&img).await;
    }
}

async fn host_image_id(scope: &Scope, image: &str) -> String {
    scope
        .docker
        .image_facts(image)
        .await
        .expect("inspect")
        .expect("image on the host")
        .id
}

/// The job printed the host's id of the preloaded image, overlay2, and ran it; no warning
/// (a fallback to copying warns in the trace).
fn assert_inner_facts(w: &World, id: u64, f: &FinalUpdate, busybox_id: &str) {
    let t = w.trace(id);
    assert_eq!(
        (f.state.as_str(), f.failure_reason.as_deref()),
        ("success", None),
        "job {id}:\n{t}"
    );
    assert!(t.contains(&format!("inner-id={busybox_id}")), "{t}");
    assert!(t.contains("inner-driver=overlay2"), "{t}");
    assert!(t.contains("inner-run-ok"), "{t}");
    assert!(!t.contains("WARNING"), "{t}");
    assert!(!t.contains("Preparing the golden"), "made in a job: {t}");
}

/// The ready line of a job that started its own sidecar: a snapshot step, no copy.
fn assert_ready_from_golden(trace: &str) {
    let line = trace
        .lines()
        .find(|l| l.contains("Job docker daemon ready in"))
        .unwrap_or_else(|| panic!("no ready line of a job's own sidecar:\n{trace}"));
    assert!(line.contains("root "), "no snapshot step: {line}");
    assert!(!line.contains("preload "), "images were copied: {line}");
}

fn sidecar_name(runner: &str, id: u64) -> String {
    format!("ir-{runner}-{id}-sidecar")
}

/// The job's sidecar as its journal entry names it, once the entry also holds the trace
/// offset GitLab has (so the restart closes the trace with a checksum the strict fake accepts).
fn journal_sidecar(state: &Path, job: u64, trace_len: usize) -> Option<String> {
    let text = std::fs::read(state.join("jobs").join(format!("{job}.json"))).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&text).ok()?;
    if v["trace_offset"].as_u64() != Some(trace_len as u64) {
        return None;
    }
    v["resources"]["sidecar"].as_str().map(str::to_string)
}

/// rootless, `warm_pool = "auto"`, two jobs at once (one on its own sidecar, one on a
/// pre-started one), a SIGKILL mid-job and the restart, then `runner cleanup`.
#[tokio::test]
async fn rootless_runner_run_serves_jobs_and_slots_from_the_golden() {
    const A: u64 = 5101;
    const B: u64 = 5102;
    const C: u64 = 5103;
    let w = World::new(
        "store-rootless",
        2,
        "sidecar_profile = \"rootless\"\nwarm_pool = \"auto\"\n",
    )
    .await;
    let runner = w.scope.runner_id.clone();
    let busybox_id = host_image_id(&w.scope, BUSYBOX_IMAGE).await;
    let first = w.start_runner();

    // The golden is made at warm-up, before any job.
    let made = wait_until(JOB_TIMEOUT, || w.goldens().len() == 1).await;
    assert!(made, "no golden after warm-up:\n{}", w.log_text());
    w.wait_log("golden data root made", 0).await;
    let golden = format!("golden/{}", w.goldens()[0]);
    assert_eq!(subvolumes(&w.store), vec![golden.clone()]);

    // A: no slot yet ("auto" has seen no demand), so its own sidecar, on a snapshot.
    let mut script_a: Vec<&str> = INNER_FACTS.to_vec();
    script_a.push(WAIT_FOR_RELEASE);
    let from = w.log_text().len();
    w.enqueue(A, &script_a);
    w.wait_trace(A, "waiting-for-release").await;
    assert_ready_from_golden(&w.trace(A));
    assert_eq!(
        data_root_of(&sidecar_name(&runner, A)).await,
        format!("bind {}/mnt/ir-{runner}-{A}-root", w.store.display())
    );
    // A's start is demand: the pool builds a slot, on a snapshot too.
    w.wait_log("slot built", from).await;
    let log = w.log_text();
    let slot_line = log
        .get(from..)
        .unwrap_or_default()
        .lines()
        .find(|l| l.contains("slot built"))
        .map(str::to_string)
        .unwrap_or_default();
    assert!(
        slot_line.contains("root ") && !slot_line.contains("preload "),
        "{slot_line}"
    );
    let slots: Vec<u64> = root_ids(&subvolumes(&w.store), &runner)
        .into_iter()
        .filter(|id| is_slot_id(*id))
        .collect();
    assert_eq!(slots.len(), 1, "{:?}", subvolumes(&w.store));
    let slot = slots[0];
    assert_eq!(
        data_root_of(&sidecar_name(&runner, slot)).await,
        format!("bind {}/mnt/ir-{runner}-{slot}-root", w.store.display())
    );

    // B takes the slot while A still runs: two live jobs, each on its own snapshot.
    w.enqueue(B, &script_a);
    w.wait_trace(B, "waiting-for-release").await;
    assert!(w.trace(B).contains("pre-started"), "{}", w.trace(B));
    let during = subvolumes(&w.store);
    assert!(during.contains(&golden), "{during:?}");
    let ids = root_ids(&during, &runner);
    assert!(ids.contains(&A) && ids.contains(&slot), "{during:?}");
    // Anything else is a refilled slot; nothing outside golden/ and jobs/.
    assert!(
        ids.iter().all(|id| *id == A || is_slot_id(*id)),
        "{during:?}"
    );
    assert_eq!(during.len(), ids.len() + 1, "{during:?}");

    w.release(A);
    w.release(B);
    let fa = w.wait_final(A).await;
    let fb = w.wait_final(B).await;
    assert_inner_facts(&w, A, &fa, &busybox_id);
    assert_inner_facts(&w, B, &fb, &busybox_id);
    // Teardown (after the final state) deletes both snapshots.
    let gone = wait_until(Duration::from_secs(60), || {
        let ids = root_ids(&subvolumes(&w.store), &runner);
        !ids.contains(&A) && !ids.contains(&slot)
    })
    .await;
    assert!(gone, "{:?}\n{}", subvolumes(&w.store), w.log_text());

    // C runs when the runner is SIGKILLed: its snapshot stays until the next start.
    w.enqueue(C, &["echo \"marker $((40+2))\"", "sleep 300"]);
    w.wait_trace(C, "marker 42").await;
    let state = w.scope.state_dir();
    let journaled = wait_until(Duration::from_secs(30), || {
        journal_sidecar(&state, C, w.fake.job_trace(C).len()).is_some()
    })
    .await;
    assert!(
        journaled,
        "no journal entry with C's sidecar and trace offset"
    );
    let c_sidecar =
        journal_sidecar(&state, C, w.fake.job_trace(C).len()).expect("journaled sidecar");
    let c_root = data_root_of(&c_sidecar).await;
    let c_name = c_root
        .rsplit('/')
        .next()
        .expect("a mount source")
        .to_string();
    assert!(
        c_root.starts_with(&format!("bind {}/mnt/ir-{runner}-", w.store.display())),
        "{c_root}"
    );
    kill_runner(first).await;
    // Proof the test can fail: the snapshot outlived the runner.
    assert!(
        subvolumes(&w.store).contains(&format!("jobs/{c_name}")),
        "{:?}",
        subvolumes(&w.store)
    );

    let second = w.start_runner();
    let fc = w.wait_final(C).await;
    assert_eq!(
        (fc.state.as_str(), fc.failure_reason.as_deref()),
        ("failed", Some("runner_system_failure")),
        "{}",
        w.trace(C)
    );
    let swept = wait_until(Duration::from_secs(60), || {
        !subvolumes(&w.store).contains(&format!("jobs/{c_name}"))
    })
    .await;
    assert!(swept, "{:?}\n{}", subvolumes(&w.store), w.log_text());
    assert!(!w.store.join("mnt").join(&c_name).exists());

    w.stop_runner(second).await;
    // The second run adopted the store its killed predecessor left mounted, so its stop
    // unmounted it like one of its own, freeing the loop device.
    assert!(
        w.log_text().contains("adopted the root store"),
        "{}",
        w.log_text()
    );
    assert!(!is_mounted(&w.store), "{}", w.log_text());
    let img = isolated_runner::isolation::root_store::image_file(&w.store);
    assert_loop_freed(&img).await;

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(["cleanup", "-c"])
        .arg(&w.config)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .await
        .expect("runner cleanup runs");
    assert!(
        out.status.success(),
        "runner cleanup: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Cleanup never mounts the store; mounted here to look: goldens only.
    assert!(!is_mounted(&w.store));
    mount_store(&w.store);
    w.assert_goldens_only();
    assert_eq!(subvolumes(&w.store), vec![golden]);
    assert!(w.fake.violations().is_empty(), "{:?}", w.fake.violations());
    w.scope.assert_clean().await;
    w.release_store().await;
}

/// Loop-mounts the store's image at its directory, as the runner does (the guard unmounts it).
fn mount_store(store: &Path) {
    let img = isolated_runner::isolation::root_store::image_file(store);
    let out = std::process::Command::new("mount")
        .args(["-t", "btrfs", "-o", "loop,noatime"])
        .arg(&img)
        .arg(store)
        .output()
        .expect("mount runs");
    assert!(
        out.status.success(),
        "mount {}: {}",
        img.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn runner_cleanup(w: &World) -> String {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(["cleanup", "-c"])
        .arg(&w.config)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .await
        .expect("runner cleanup runs");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "runner cleanup: {text}");
    text
}

/// A runner killed while its store is mounted leaves the mount and its loop device behind. The
/// restarted runner adopts the store (its lock is free: no live runner process uses it; the
/// mount is the runner's own `<dir>.img`) and unmounts it at its clean stop. `runner cleanup`
/// leaves the store of a live runner mounted, and releases the one a killed runner left.
#[tokio::test]
async fn a_store_a_killed_runner_left_mounted_is_released() {
    let w = World::new(
        "store-adopt",
        1,
        "sidecar_profile = \"hardened\"\nwarm_pool = 0\n",
    )
    .await;
    let img = isolated_runner::isolation::root_store::image_file(&w.store);
    let first = w.start_runner();
    let made = wait_until(JOB_TIMEOUT, || w.goldens().len() == 1).await;
    assert!(made, "no golden after warm-up:\n{}", w.log_text());
    // Logged once the golden's build daemon is gone.
    w.wait_log("golden data root made", 0).await;
    kill_runner(first).await;
    // What the kill leaves: the mount and its loop device.
    assert!(is_mounted(&w.store));
    assert!(!loop_devices_of(&img).is_empty());

    // The next run adopts it, and its clean stop unmounts it.
    let from = w.log_text().len();
    let second = w.start_runner();
    w.wait_log("adopted the root store", from).await;
    w.stop_runner(second).await;
    assert!(!is_mounted(&w.store), "{}", w.log_text());
    assert_loop_freed(&img).await;

    // A third run mounts it again (at warm-up, for its golden): cleanup beside it leaves it.
    let from = w.log_text().len();
    let third = w.start_runner();
    let mounted = wait_until(JOB_TIMEOUT, || is_mounted(&w.store)).await;
    assert!(mounted, "{}", w.log_text());
    let text = runner_cleanup(&w).await;
    assert!(text.contains("in use by a live runner process"), "{text}");
    assert!(
        is_mounted(&w.store),
        "cleanup unmounted a live runner's store: {text}"
    );
    // Its golden is there already: nothing to build, so the store is idle when it is killed.
    assert!(!w.log_text()[from..].contains("golden data root made"));
    assert_eq!(w.goldens().len(), 1);
    kill_runner(third).await;
    assert!(is_mounted(&w.store));

    // With no runner alive, cleanup releases it.
    let text = runner_cleanup(&w).await;
    assert!(text.contains("released root store"), "{text}");
    assert!(!is_mounted(&w.store), "{text}");
    assert_loop_freed(&img).await;
    w.scope.assert_clean().await;
    w.release_store().await;
}

/// The runner mounts its store without write barriers, so a store the host went down with is
/// not trusted: the runner that finds the image unmounted while the mount marker says it was
/// mounted makes the store anew and builds its golden again. Here the "host going down" is the
/// runner killed and its mount then removed behind its back (what a reboot leaves: the image
/// and the marker, no mount); a file put into the store before shows that the store is new.
#[tokio::test]
async fn a_store_the_host_went_down_with_is_made_anew() {
    let w = World::new(
        "store-crash",
        1,
        "sidecar_profile = \"hardened\"\nwarm_pool = 0\n",
    )
    .await;
    let img = isolated_runner::isolation::root_store::image_file(&w.store);
    let marker = isolated_runner::isolation::root_store::mount_marker(&w.store);
    let first = w.start_runner();
    let made = wait_until(JOB_TIMEOUT, || w.goldens().len() == 1).await;
    assert!(made, "no golden after warm-up:\n{}", w.log_text());
    w.wait_log("golden data root made", 0).await;
    let options = mount_line(&w.store).unwrap_or_default();
    assert!(
        options.contains("nobarrier"),
        "the store is mounted with barriers: {options}"
    );
    assert!(marker.exists(), "no mount marker while mounted");
    kill_runner(first).await;
    std::fs::write(w.store.join("from-before"), b"x").expect("write into the store");
    let out = std::process::Command::new("umount")
        .arg(&w.store)
        .output()
        .expect("umount runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_loop_freed(&img).await;
    assert!(marker.exists(), "the marker went with the mount");

    let from = w.log_text().len();
    let second = w.start_runner();
    w.wait_log("it is made anew", from).await;
    w.wait_log("golden data root made", from).await;
    assert!(
        !w.store.join("from-before").exists(),
        "the store the host went down with was used again"
    );
    assert_eq!(w.goldens().len(), 1);
    w.stop_runner(second).await;
    // A clean stop unmounts it and takes the marker: the next start trusts the image.
    assert!(!is_mounted(&w.store), "{}", w.log_text());
    assert!(!marker.exists(), "the marker outlived a clean unmount");
    assert_loop_freed(&img).await;
    w.scope.assert_clean().await;
    w.release_store().await;
}

/// hardened, no pool: one job on its own sidecar bound to its snapshot as it is; the runner
/// that mounted the store unmounts it when it stops, freeing the loop device.
#[tokio::test]
async fn hardened_runner_run_starts_jobs_from_the_golden() {
    const D: u64 = 5201;
    let w = World::new(
        "store-hardened",
        1,
        "sidecar_profile = \"hardened\"\nwarm_pool = 0\n",
    )
    .await;
    let runner = w.scope.runner_id.clone();
    let busybox_id = host_image_id(&w.scope, BUSYBOX_IMAGE).await;
    let runner_proc = w.start_runner();
    let made = wait_until(JOB_TIMEOUT, || w.goldens().len() == 1).await;
    assert!(made, "no golden after warm-up:\n{}", w.log_text());
    let golden = format!("golden/{}", w.goldens()[0]);

    let mut script: Vec<&str> = INNER_FACTS.to_vec();
    script.push(WAIT_FOR_RELEASE);
    w.enqueue(D, &script);
    w.wait_trace(D, "waiting-for-release").await;
    assert_ready_from_golden(&w.trace(D));
    assert_eq!(
        data_root_of(&sidecar_name(&runner, D)).await,
        format!("bind {}/jobs/ir-{runner}-{D}-root", w.store.display())
    );
    assert_eq!(
        subvolumes(&w.store),
        vec![golden.clone(), format!("jobs/ir-{runner}-{D}-root")]
    );
    w.release(D);
    let fd = w.wait_final(D).await;
    assert_inner_facts(&w, D, &fd, &busybox_id);
    // The stamp goes right after the snapshot: wait for both.
    let gone = wait_until(Duration::from_secs(60), || {
        subvolumes(&w.store) == vec![golden.clone()] && names(&w.store.join("stamps")).is_empty()
    })
    .await;
    assert!(gone, "{:?}", subvolumes(&w.store));
    w.assert_goldens_only();

    w.stop_runner(runner_proc).await;
    // This run mounted the store, so it unmounted it: the loop device is free already.
    assert!(!is_mounted(&w.store), "{}", w.log_text());
    let img = isolated_runner::isolation::root_store::image_file(&w.store);
    assert_loop_freed(&img).await;
    w.scope.assert_clean().await;
    w.release_store().await;
}

/// rootless, `warm_pool = 1`: the slot started at warm-up sits on a snapshot of the golden (no
/// copy in its build), a job takes it, its teardown deletes the snapshot, the refill gets a
/// new one; the runner that mounted the store unmounts it when it stops.
#[tokio::test]
async fn rootless_fixed_warm_pool_builds_slots_on_snapshots() {
    const E: u64 = 5301;
    let w = World::new(
        "store-pool",
        1,
        "sidecar_profile = \"rootless\"\nwarm_pool = 1\n",
    )
    .await;
    let runner = w.scope.runner_id.clone();
    let busybox_id = host_image_id(&w.scope, BUSYBOX_IMAGE).await;
    let runner_proc = w.start_runner();
    w.wait_log("slot built", 0).await;
    let log = w.log_text();
    let slot_line = log
        .lines()
        .find(|l| l.contains("slot built"))
        .unwrap_or_default();
    assert!(
        slot_line.contains("root ") && !slot_line.contains("preload "),
        "{slot_line}"
    );
    let golden = format!("golden/{}", w.goldens().first().expect("a golden"));
    let slots = root_ids(&subvolumes(&w.store), &runner);
    assert!(
        slots.len() == 1 && is_slot_id(slots[0]),
        "{:?}",
        subvolumes(&w.store)
    );
    let slot = slots[0];
    assert_eq!(
        data_root_of(&sidecar_name(&runner, slot)).await,
        format!("bind {}/mnt/ir-{runner}-{slot}-root", w.store.display())
    );

    w.enqueue(E, INNER_FACTS);
    let fe = w.wait_final(E).await;
    assert!(w.trace(E).contains("pre-started"), "{}", w.trace(E));
    assert_inner_facts(&w, E, &fe, &busybox_id);
    // The taken slot's snapshot goes with the job; the refill is a new slot on a new one.
    let refilled = wait_until(JOB_TIMEOUT, || {
        let ids = root_ids(&subvolumes(&w.store), &runner);
        !ids.contains(&slot) && ids.len() == 1 && is_slot_id(ids[0])
    })
    .await;
    assert!(refilled, "{:?}\n{}", subvolumes(&w.store), w.log_text());
    let refill = root_ids(&subvolumes(&w.store), &runner)[0];
    assert_eq!(
        subvolumes(&w.store),
        vec![golden, format!("jobs/ir-{runner}-{refill}-root")]
    );

    w.stop_runner(runner_proc).await;
    // The pool's slot went at shutdown, then the store (this run mounted it).
    assert!(!is_mounted(&w.store), "{}", w.log_text());
    w.scope.assert_clean().await;
    w.release_store().await;
}
