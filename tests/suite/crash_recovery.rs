//! Crash recovery against the real binary and the real engine: a runner is SIGKILLed while a
//! dind job runs; the next start tears the job down, closes its trace and reports it failed.

use crate::support;

use isolated_runner::daemon::CLOSING_LINE;
use isolated_runner::docker::{LABEL_ROLE, label_filters};
use isolated_runner::paths::{JobId, job_paths};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::path::Path;
use std::time::Duration;
use support::docker::{JOB_IMAGE, Scope};
use support::fake_gitlab::{FakeGitlab, RUNNER_TOKEN, job_payload};
use support::wait_until;

const JOB: u64 = 4242;

fn write_private(path: &Path, text: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

fn start_runner(config: &Path, log: &Path) -> tokio::process::Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    tokio::process::Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(["run", "-c", config.to_str().unwrap()])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

fn journal_entry(state: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read(state.join("jobs").join(format!("{JOB}.json"))).ok()?;
    serde_json::from_slice(&text).ok()
}

async fn scrape(url: &str) -> String {
    reqwest::get(url)
        .await
        .expect("scrape /metrics")
        .text()
        .await
        .unwrap()
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// One crash test's world: a scope whose runner id is the runner's system id (so the leak
/// check and the safety-net sweep look at exactly this test's objects), the fake GitLab with
/// the job queued, and a config file for the real binary.
struct Crash {
    scope: Scope,
    state: std::path::PathBuf,
    builds: std::path::PathBuf,
    log: std::path::PathBuf,
    fake: FakeGitlab,
    metrics_url: String,
    config: std::path::PathBuf,
}

impl Crash {
    /// `isolation` is appended to `[runners.docker.isolation]`.
    async fn set_up(name: &str, isolation: &str) -> Crash {
        let mut scope = Scope::new().await;
        let uuid = uuid::Uuid::new_v4().simple().to_string();
        scope.runner_id = format!("s_{}", &uuid[..12]);
        let state = scope.state_dir();
        let builds = scope.builds_dir();
        std::fs::create_dir_all(&state).unwrap();
        write_private(
            &state.join(".runner_system_id"),
            &format!("{}\n", scope.runner_id),
        );
        let log = scope.tmp.path().join("runner.log");
        let fake = FakeGitlab::start().await;
        let mut job = job_payload(JOB, &["echo \"marker $((40+2))\"", "sleep 300"]);
        job["image"]["name"] = JOB_IMAGE.into();
        job["variables"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"key": "GIT_STRATEGY", "value": "none", "public": true, "masked": false}));
        fake.enqueue(job);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = scope.tmp.path().join("config.toml");
        write_private(
            &config,
            &format!(
                "concurrent = 1\ncheck_interval = 1\nshutdown_timeout = 10\nlisten_address = \"127.0.0.1:{port}\"\nstate_dir = \"{}\"\n\n\
                 [[runners]]\nname = \"{name}\"\nurl = \"{}\"\nclone_url = \"http://127.0.0.1:1/\"\ntoken = \"{RUNNER_TOKEN}\"\nexecutor = \"docker\"\n\
                 builds_dir = \"{}\"\n\n[runners.docker]\nimage = \"{JOB_IMAGE}\"\nhelper_image = \"{JOB_IMAGE}\"\n\n\
                 [runners.docker.isolation]\nmode = \"dind\"\nready_timeout = \"90s\"\n{isolation}",
                state.display(),
                fake.url(),
                builds.display()
            ),
        );
        Crash {
            scope,
            state,
            builds,
            log,
            fake,
            metrics_url: format!("http://127.0.0.1:{port}/metrics"),
            config,
        }
    }
}

/// Waits until the job printed its marker and the journal holds its environment and the trace
/// offset GitLab has (so a restart can send a checksum the strict fake accepts).
async fn wait_for_job_and_journal(fake: &FakeGitlab, state: &Path, log: &Path) {
    let runs = wait_until(Duration::from_secs(240), || {
        String::from_utf8_lossy(&fake.job_trace(JOB)).contains("marker 42")
    })
    .await;
    assert!(
        runs,
        "the job never printed its marker; trace:\n{}\nlog:\n{}",
        String::from_utf8_lossy(&fake.job_trace(JOB)),
        std::fs::read_to_string(log).unwrap_or_default()
    );
    let journaled = wait_until(Duration::from_secs(30), || {
        journal_entry(state).is_some_and(|e| {
            e["resources"]["sidecar"].is_string()
                && e["trace_offset"].as_u64() == Some(fake.job_trace(JOB).len() as u64)
        })
    })
    .await;
    assert!(journaled, "journal entry: {:?}", journal_entry(state));
}

#[tokio::test]
async fn sigkilled_runner_cleans_up_and_reports_the_job_on_restart() {
    let Crash {
        scope,
        state,
        builds,
        log,
        fake,
        metrics_url,
        config,
    } = Crash::set_up("crash", "").await;
    let mut first = start_runner(&config, &log);
    wait_for_job_and_journal(&fake, &state, &log).await;
    let journal_file = state.join("jobs").join(format!("{JOB}.json"));
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&journal_file), 0o600);
        assert_eq!(mode(&state.join("jobs")), 0o700);
    }

    let scraped = scrape(&metrics_url).await;
    assert_eq!(
        metric(&scraped, "isolated_runner_sidecar_ready_seconds_count"),
        Some(1.0),
        "{scraped}"
    );

    kill(Pid::from_raw(first.id().unwrap() as i32), Signal::SIGKILL).unwrap();
    first.wait().await.unwrap();

    // Proof the test can fail: the killed runner left its job behind.
    let job_filters = label_filters(&scope.runner_id, Some(JOB));
    let containers = scope.docker.list_containers(&job_filters).await.unwrap();
    assert!(
        containers
            .iter()
            .any(|c| c.labels.get(LABEL_ROLE).map(String::as_str) == Some("sidecar")),
        "no sidecar left after SIGKILL: {:?}",
        containers.iter().map(|c| &c.name).collect::<Vec<_>>()
    );
    let paths = job_paths(&builds, JobId::new(JOB)).unwrap();
    assert!(paths.project_dir.exists(), "job dir gone after SIGKILL");
    assert!(journal_file.exists());
    assert!(fake.final_state(JOB).is_none());

    let mut second = start_runner(&config, &log);
    let reported = wait_until(Duration::from_secs(120), || fake.final_state(JOB).is_some()).await;
    assert!(
        reported,
        "the lost job was never reported; log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let fin = fake.final_state(JOB).unwrap();
    assert_eq!(fin.state, "failed");
    assert_eq!(fin.failure_reason.as_deref(), Some("runner_system_failure"));
    let trace = String::from_utf8_lossy(&fake.job_trace(JOB)).into_owned();
    assert!(trace.contains("marker 42"), "{trace}");
    assert!(trace.contains(CLOSING_LINE), "{trace}");
    assert!(
        fake.violations().is_empty(),
        "protocol violations: {:?}",
        fake.violations()
    );
    assert!(
        wait_until(Duration::from_secs(10), || !journal_file.exists()).await,
        "journal entry still there"
    );
    scope.assert_clean().await;
    let scraped = scrape(&metrics_url).await;
    assert!(
        metric(
            &scraped,
            "isolated_runner_reaper_leftovers_total{kind=\"container\"}"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{scraped}"
    );

    kill(Pid::from_raw(second.id().unwrap() as i32), Signal::SIGQUIT).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), second.wait())
        .await
        .expect("the second runner exits on SIGQUIT")
        .unwrap();
    assert!(status.success(), "{status}");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !text.contains("glcbt-job4242token"),
        "the job token reached the log"
    );
}

/// The same crash with `warm_pool = 1`: the job runs on a sidecar the daemon pre-started (its
/// objects carry the slot's id, its dirs are links into the slot's root) and a replacement slot
/// is starting when the runner dies. The next start removes all of it and reports the job; the
/// next runner's own pre-started sidecar goes when it stops.
#[tokio::test]
async fn sigkilled_runner_with_a_warm_pool_leaves_nothing_after_restart() {
    let Crash {
        scope,
        state,
        builds,
        log,
        fake,
        metrics_url,
        config,
    } = Crash::set_up("crash-pool", "warm_pool = 1\n").await;
    let mut first = start_runner(&config, &log);
    wait_for_job_and_journal(&fake, &state, &log).await;
    let trace = String::from_utf8_lossy(&fake.job_trace(JOB)).into_owned();
    assert!(trace.contains("pre-started"), "{trace}");
    let scraped = scrape(&metrics_url).await;
    assert_eq!(
        metric(
            &scraped,
            "isolated_runner_sidecars_total{start=\"prestarted\"}"
        ),
        Some(1.0),
        "{scraped}"
    );

    kill(Pid::from_raw(first.id().unwrap() as i32), Signal::SIGKILL).unwrap();
    first.wait().await.unwrap();
    // Proof the test can fail: the job's sidecar and its linked directory are still there.
    let all = label_filters(&scope.runner_id, None);
    let sidecars = scope
        .docker
        .list_containers(&all)
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.labels.get(LABEL_ROLE).map(String::as_str) == Some("sidecar"))
        .count();
    assert!(sidecars >= 1, "no sidecar left after SIGKILL");
    let paths = job_paths(&builds, JobId::new(JOB)).unwrap();
    assert!(
        std::fs::symlink_metadata(&paths.project_dir)
            .unwrap()
            .file_type()
            .is_symlink()
    );

    let mut second = start_runner(&config, &log);
    let reported = wait_until(Duration::from_secs(120), || fake.final_state(JOB).is_some()).await;
    assert!(
        reported,
        "the lost job was never reported; log:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let fin = fake.final_state(JOB).unwrap();
    assert_eq!(
        (fin.state.as_str(), fin.failure_reason.as_deref()),
        ("failed", Some("runner_system_failure"))
    );
    assert!(!paths.project_dir.exists() && std::fs::symlink_metadata(&paths.project_dir).is_err());
    kill(Pid::from_raw(second.id().unwrap() as i32), Signal::SIGQUIT).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(60), second.wait())
        .await
        .expect("the second runner exits on SIGQUIT")
        .unwrap();
    assert!(status.success(), "{status}");
    scope.assert_clean().await;
}
