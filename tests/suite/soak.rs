//! `soak`: cost as work grows (issue 12, "Numbers"). The built `runner run` binary, as a
//! process, takes a long stream of jobs from the fake GitLab: mixed scripts, every tenth
//! cancelled by GitLab mid-script, every tenth failing. Every `SOAK_SAMPLE_EVERY` finished jobs
//! the test reads the runner's RSS, open file descriptors and threads from `/proc/<pid>` and
//! appends a CSV row; at the end it drains the runner (SIGQUIT), runs `runner cleanup`, checks
//! that nothing is left and writes the CSV, an SVG graph and a summary (RSS slope after warm-up,
//! fd and thread ranges, disk before and after) to `SOAK_OUT` (default `target/soak`).
//!
//! A measurement, not a timed test: it is ignored by default and asserts only what must hold
//! whatever the machine's speed (every job reached its final state, the cancelled ones were
//! cancelled, nothing left, no protocol violation). The numbers go to docs/benchmarks.md.
//!
//! ```sh
//! SOAK_JOBS=1000 cargo test --test suite soak:: -- --ignored --nocapture
//! ```
//!
//! Knobs (environment): `SOAK_JOBS` (1000), `SOAK_DIND_LIMIT` (3: jobs at once on the dind
//! entry), `SOAK_SHARED_LIMIT` (5: on the shared-socket entry), `SOAK_SAMPLE_EVERY` (20),
//! `SOAK_WARMUP` (100 jobs left out of the slope), `SOAK_MAX_MINUTES` (60: then the runner is
//! drained and the jobs done so far are reported, and the test fails as partial), `SOAK_OUT`,
//! `SOAK_RUNNER_ENV` (`KEY=VALUE` pairs, comma-separated, added to the runner's otherwise
//! cleared environment: e.g. `MALLOC_ARENA_MAX=2` to tell allocator high-water from retention).

use crate::support;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::e2e::E2e;
use support::fake_gitlab::{CancelKind, Fault, RUNNER_TOKEN};

/// The second runner entry's token (shared-socket mode).
const SHARED_TOKEN: &str = "glrt-t3_fakesoakshared01";
/// Job ids start here (one block per run; the scope's runner id keeps objects apart anyway).
const FIRST_ID: u64 = 7_000_000;

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `SOAK_RUNNER_ENV`: extra `KEY=VALUE` pairs for the runner process (allocator knobs for
/// a measurement); a pair without `=` is a mistake worth stopping for.
fn runner_env() -> Vec<(String, String)> {
    let raw = std::env::var("SOAK_RUNNER_ENV").unwrap_or_default();
    raw.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p
                .split_once('=')
                .unwrap_or_else(|| panic!("SOAK_RUNNER_ENV: {p:?} is not KEY=VALUE"));
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// What a job of the mix does, by its position in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Noop,
    DockerRun,
    Output,
    Fails,
    Canceled,
}

impl Kind {
    fn of(n: u64) -> Kind {
        match n % 10 {
            0 => Kind::Canceled,
            1 | 5 => Kind::DockerRun,
            3 => Kind::Fails,
            7 => Kind::Output,
            _ => Kind::Noop,
        }
    }

    fn script(self) -> Vec<&'static str> {
        match self {
            Kind::Noop => vec!["true"],
            Kind::DockerRun => {
                vec!["docker run --rm --pull=never isolated-runner/busybox:test true"]
            }
            Kind::Output => vec!["seq 1 2000", "echo done"],
            Kind::Fails => vec!["echo failing on purpose", "exit 1"],
            // GitLab cancels it (CancelAfter) while it sleeps.
            Kind::Canceled => vec!["echo soak-running", "sleep 120"],
        }
    }

    fn expected(self) -> &'static str {
        match self {
            Kind::Noop | Kind::DockerRun | Kind::Output => "success",
            Kind::Fails => "failed",
            Kind::Canceled => "canceled",
        }
    }
}

/// One sample of the runner process.
#[derive(Debug, Clone, Copy)]
struct Sample {
    jobs_done: usize,
    secs: f64,
    rss_kb: u64,
    fds: usize,
    threads: u64,
    load1: f64,
}

fn status_field(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn sample(pid: u32, jobs_done: usize, t0: Instant) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some(Sample {
        jobs_done,
        secs: t0.elapsed().as_secs_f64(),
        rss_kb: status_field(&status, "VmRSS:")?,
        fds,
        threads: status_field(&status, "Threads:")?,
        load1: load1(),
    })
}

/// The 1-minute load average (the machine is shared: every number carries it).
fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|t| t.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// Least-squares slope of y over x.
fn slope(points: &[(f64, f64)]) -> Option<f64> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (sxx > 0.0).then(|| sxy / sxx)
}

/// Bytes allocated under `dir` (files only, not following links); 0 when missing. Blocks, not
/// lengths: the root store's `roots.img` is a sparse 50 GiB file holding a few hundred MB.
fn du(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    walkdir::WalkDir::new(dir)
        .follow_links(false)
        .into_iter()
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.blocks() * 512)
        .sum()
}

/// Used bytes of the filesystem holding `path` (Docker's data lives there on this host; other
/// tenants write to it too, so this is context, not the leak check).
fn fs_used(path: &Path) -> u64 {
    nix::sys::statvfs::statvfs(path)
        .map(|s| (s.blocks() - s.blocks_free()) * s.fragment_size())
        .unwrap_or(0)
}

/// A series' y coordinate for a sample.
type SeriesY<'a> = Box<dyn Fn(&Sample) -> f64 + 'a>;

/// The graph: RSS (MiB) on the left axis, open fds and threads on the right, over jobs done.
fn svg(samples: &[Sample], warmup: usize, title: &str) -> String {
    const W: f64 = 760.0;
    const H: f64 = 420.0;
    const L: f64 = 70.0;
    const R: f64 = 70.0;
    const T: f64 = 60.0;
    const B: f64 = 60.0;
    let pw = W - L - R;
    let ph = H - T - B;
    let max_jobs = samples
        .iter()
        .map(|s| s.jobs_done)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let max_rss = samples
        .iter()
        .map(|s| s.rss_kb as f64 / 1024.0)
        .fold(1.0, f64::max)
        * 1.15;
    let max_count = samples
        .iter()
        .map(|s| s.fds.max(s.threads as usize) as f64)
        .fold(1.0, f64::max)
        * 1.15;
    let x = |j: f64| L + j / max_jobs * pw;
    let y_rss = |v: f64| T + ph - v / max_rss * ph;
    let y_cnt = |v: f64| T + ph - v / max_count * ph;
    let line = |pts: Vec<(f64, f64)>, color: &str| {
        let d: Vec<String> = pts.iter().map(|(a, b)| format!("{a:.1},{b:.1}")).collect();
        format!(
            r#"<polyline fill="none" stroke="{color}" stroke-width="1.6" points="{}"/>"#,
            d.join(" ")
        )
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{L}" y="22" font-size="15" font-weight="bold">{title}</text>"#
    );
    let _ = writeln!(
        s,
        r##"<text x="{L}" y="42" font-size="11" fill="#555">runner RSS (MiB, left axis); open fds and threads (right axis); grey: warm-up ({warmup} jobs)</text>"##
    );
    let _ = writeln!(
        s,
        r##"<rect x="{L}" y="{T}" width="{:.1}" height="{ph}" fill="#f0f0f0"/>"##,
        x(warmup as f64) - L
    );
    for i in 0..=5 {
        let f = i as f64 / 5.0;
        let yy = T + ph - f * ph;
        let _ = writeln!(
            s,
            r##"<line x1="{L}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#e0e0e0"/><text x="{:.1}" y="{:.1}" text-anchor="end">{:.0}</text><text x="{:.1}" y="{:.1}">{:.0}</text>"##,
            L + pw,
            L - 6.0,
            yy + 4.0,
            f * max_rss,
            L + pw + 6.0,
            yy + 4.0,
            f * max_count
        );
        let xx = L + f * pw;
        let _ = writeln!(
            s,
            r#"<text x="{xx:.1}" y="{:.1}" text-anchor="middle">{:.0}</text>"#,
            T + ph + 18.0,
            f * max_jobs
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">jobs finished</text>"#,
        L + pw / 2.0,
        H - 18.0
    );
    let _ = writeln!(
        s,
        r##"<line x1="{L}" y1="{T}" x2="{L}" y2="{:.1}" stroke="#333"/><line x1="{L}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#333"/>"##,
        T + ph,
        T + ph,
        L + pw,
        T + ph
    );
    let series: [(&str, &str, SeriesY); 3] = [
        (
            "RSS MiB",
            "#d95f02",
            Box::new(|p: &Sample| y_rss(p.rss_kb as f64 / 1024.0)),
        ),
        (
            "open fds",
            "#1b9e77",
            Box::new(|p: &Sample| y_cnt(p.fds as f64)),
        ),
        (
            "threads",
            "#7570b3",
            Box::new(|p: &Sample| y_cnt(p.threads as f64)),
        ),
    ];
    for (i, (name, color, f)) in series.iter().enumerate() {
        let pts = samples
            .iter()
            .map(|p| (x(p.jobs_done as f64), f(p)))
            .collect();
        let _ = writeln!(s, "{}", line(pts, color));
        let lx = L + 10.0 + i as f64 * 110.0;
        let _ = writeln!(
            s,
            r#"<rect x="{lx:.1}" y="{:.1}" width="12" height="12" fill="{color}"/><text x="{:.1}" y="{:.1}">{name}</text>"#,
            T + 8.0,
            lx + 16.0,
            T + 18.0
        );
    }
    s.push_str("</svg>\n");
    s
}

fn runner_config(w: &E2e, state: &Path, dind_limit: usize, shared_limit: usize) -> String {
    // The config a user writes, plus the test images: two entries on one process (the
    // fake's queue is one queue, so the stream is split by who asks first), rootless by
    // default on the dind side, one sidecar kept started ahead of jobs.
    format!(
        r#"concurrent = {concurrent}
check_interval = 1
shutdown_timeout = 120
state_dir = "{state}"
log_level = "warn"

[[runners]]
name = "soak-dind"
url = "http://{git}/"
clone_url = "http://127.0.0.1:1/"
token = "{token}"
executor = "docker"
builds_dir = "{builds}"
limit = {dind_limit}

[runners.docker]
image = "isolated-runner/job:test"

[runners.docker.isolation]
sidecar_image = "isolated-runner/dind:test"
preload_images = ["isolated-runner/busybox:test"]
ready_timeout = "120s"
warm_pool = 1

[[runners]]
name = "soak-shared"
url = "http://{git}/"
clone_url = "http://127.0.0.1:1/"
token = "{shared_token}"
executor = "docker"
builds_dir = "{builds}"
limit = {shared_limit}

[runners.docker]
image = "isolated-runner/job:test"

[runners.docker.isolation]
mode = "shared-socket"
"#,
        concurrent = dind_limit + shared_limit,
        state = state.display(),
        git = w.git_addr,
        token = RUNNER_TOKEN,
        shared_token = SHARED_TOKEN,
        builds = w.scope.builds_dir().display(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, run by hand: SOAK_JOBS=1000 cargo test --test suite soak:: -- --ignored --nocapture"]
async fn soak_runner_run_many_jobs() {
    let jobs = knob("SOAK_JOBS", 1000).max(1);
    let dind_limit = knob("SOAK_DIND_LIMIT", 3).max(1);
    let shared_limit = knob("SOAK_SHARED_LIMIT", 5).max(1);
    let every = knob("SOAK_SAMPLE_EVERY", 20).max(1);
    let warmup = knob("SOAK_WARMUP", 100).min(jobs.saturating_sub(2 * every));
    let out_dir = std::env::var_os("SOAK_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/soak"));
    std::fs::create_dir_all(&out_dir).expect("create SOAK_OUT");

    let mut w = E2e::new().await;
    w.fake.add_runner_token(SHARED_TOKEN);
    // The binary labels what it makes with its system id: pin it to the scope's runner id.
    let system_id = format!("s_{}", &w.scope.runner_id[2..14]);
    let state = w.scope.state_dir();
    std::fs::create_dir_all(&state).expect("state dir");
    std::fs::create_dir_all(w.scope.builds_dir()).expect("builds dir");
    std::fs::write(state.join(".runner_system_id"), format!("{system_id}\n")).expect("system id");
    w.scope.runner_id = system_id;
    let cfg = w.scope.tmp.path().join("config.toml");
    std::fs::write(&cfg, runner_config(&w, &state, dind_limit, shared_limit)).expect("config");
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).expect("chmod");

    let docker_root = Path::new("/var/lib/docker");
    let disk_before = (du(w.scope.tmp.path()), fs_used(docker_root));
    let ids: Vec<u64> = (0..jobs as u64).map(|n| FIRST_ID + n).collect();
    for &id in &ids {
        let kind = Kind::of(id - FIRST_ID);
        let mut job = w.job(id, &kind.script(), &["echo after"]);
        job["job_info"]["project_id"] = serde_json::json!(7 + (id % 3));
        w.fake.enqueue(job);
        if kind == Kind::Canceled {
            // Long enough for the job to be running on a loaded host, short enough that the
            // sleep never ends by itself.
            w.fake.inject(Fault::CancelAfter {
                job_id: id,
                after: Duration::from_secs(15),
                kind: CancelKind::Canceling,
            });
        }
    }

    let log_path = w.scope.tmp.path().join("runner.log");
    let log = std::fs::File::create(&log_path).expect("runner log");
    let t0 = Instant::now();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(["run", "-c"])
        .arg(&cfg)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(runner_env())
        .stdout(log.try_clone().expect("dup log"))
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("start runner run");
    let pid = child.id().expect("runner pid");
    let runner_log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    let mut samples: Vec<Sample> = Vec::new();
    if let Some(s) = sample(pid, 0, t0) {
        samples.push(s);
    }
    let mut next = every;
    let mut done = 0;
    // A bound on a loaded 2-core host: past it the run stops and reports what it did.
    let max_minutes = knob("SOAK_MAX_MINUTES", 60) as u64;
    let deadline = Instant::now() + Duration::from_secs(60 * max_minutes);
    let mut partial = false;
    while done < jobs {
        if Instant::now() >= deadline {
            partial = true;
            break;
        }
        assert!(
            child.try_wait().expect("runner status").is_none(),
            "runner exited early; log:\n{}",
            tail(&runner_log(), 3000)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        done = ids
            .iter()
            .filter(|&&id| w.fake.final_state(id).is_some())
            .count();
        while done >= next {
            if let Some(s) = sample(pid, done, t0) {
                eprintln!(
                    "soak: {done}/{jobs} jobs, {:.0} s, rss {} KiB, fds {}, threads {}, load {:.2}",
                    s.secs, s.rss_kb, s.fds, s.threads, s.load1
                );
                samples.push(s);
                // Written as it goes: a run stopped by hand keeps its samples.
                let _ = std::fs::write(out_dir.join("soak.csv"), csv_of(&samples));
            }
            next += every;
        }
    }
    let elapsed = t0.elapsed();
    let finished: Vec<u64> = ids
        .iter()
        .copied()
        .filter(|&id| w.fake.final_state(id).is_some())
        .collect();

    // Drain: no new jobs, the runner exits once idle (pre-started sidecars removed).
    kill(Pid::from_raw(pid as i32), Signal::SIGQUIT).expect("SIGQUIT");
    let status = tokio::time::timeout(Duration::from_secs(300), child.wait())
        .await
        .expect("runner exits after draining")
        .expect("runner status");
    assert!(
        status.success(),
        "runner exit {status}; log:\n{}",
        tail(&runner_log(), 3000)
    );
    let disk_after_run = (du(w.scope.tmp.path()), fs_used(docker_root));
    let cleanup = std::process::Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(["cleanup", "-c"])
        .arg(&cfg)
        .args(["--older-than", "0s"])
        .output()
        .expect("runner cleanup");
    assert!(
        cleanup.status.success(),
        "runner cleanup failed: {}",
        String::from_utf8_lossy(&cleanup.stderr)
    );
    let disk_after_cleanup = (du(w.scope.tmp.path()), fs_used(docker_root));

    // What must hold whatever the machine's speed.
    let mut wrong = Vec::new();
    let mut states = std::collections::BTreeMap::<String, usize>::new();
    for &id in &finished {
        // GitLab's side: a gracefully cancelled job sends a final `failed` and stays `canceled`.
        let got = w.fake.job_state(id).unwrap_or_default();
        *states.entry(got.clone()).or_default() += 1;
        let want = Kind::of(id - FIRST_ID).expected();
        if got != want {
            wrong.push(format!("job {id}: {got}, expected {want}"));
        }
    }
    let violations = w.fake.violations();

    // The report.
    let warm: Vec<&Sample> = samples.iter().filter(|s| s.jobs_done >= warmup).collect();
    let rss_slope = slope(
        &warm
            .iter()
            .map(|s| (s.jobs_done as f64, s.rss_kb as f64 * 1024.0))
            .collect::<Vec<_>>(),
    );
    let range = |f: fn(&Sample) -> u64| {
        (
            warm.iter().map(|s| f(s)).min().unwrap_or(0),
            warm.iter().map(|s| f(s)).max().unwrap_or(0),
        )
    };
    let fds = range(|s| s.fds as u64);
    let threads = range(|s| s.threads);
    let loads: Vec<f64> = samples.iter().map(|s| s.load1).collect();
    let load_min = loads.iter().copied().fold(f64::INFINITY, f64::min);
    let load_max = loads.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let load_mean = loads.iter().sum::<f64>() / loads.len().max(1) as f64;
    let csv = csv_of(&samples);
    let mib = |b: u64| b as f64 / 1_048_576.0;
    let summary = format!(
        "jobs: {}{} of {jobs} ({} dind limit, {} shared-socket limit) in {:.0} s ({:.2} jobs/s); final states {states:?}\n\
         load average (1 min) over the run: min {load_min:.2}, mean {load_mean:.2}, max {load_max:.2}\n\
         runner RSS slope after {warmup} jobs: {} B/job ({} samples); RSS {} -> {} KiB\n\
         open fds after warm-up: {}..{}; threads: {}..{}\n\
         runner dirs (builds + state): {:.1} MiB before, {:.1} MiB after the run, {:.1} MiB after `runner cleanup`\n\
         filesystem of /var/lib/docker, used: {:.0} MiB before, {:.0} MiB after the run, {:.0} MiB after cleanup (other tenants write here too)\n\
         wrong final states: {}; protocol violations: {}\n",
        finished.len(),
        if partial {
            " (PARTIAL: stopped at SOAK_MAX_MINUTES)"
        } else {
            ""
        },
        dind_limit,
        shared_limit,
        elapsed.as_secs_f64(),
        finished.len() as f64 / elapsed.as_secs_f64(),
        rss_slope
            .map(|v| format!("{v:.0}"))
            .unwrap_or_else(|| "-".into()),
        warm.len(),
        warm.first().map(|s| s.rss_kb).unwrap_or(0),
        warm.last().map(|s| s.rss_kb).unwrap_or(0),
        fds.0,
        fds.1,
        threads.0,
        threads.1,
        mib(disk_before.0),
        mib(disk_after_run.0),
        mib(disk_after_cleanup.0),
        mib(disk_before.1),
        mib(disk_after_run.1),
        mib(disk_after_cleanup.1),
        wrong.len(),
        violations.len(),
    );
    let title = format!(
        "runner run soak: {} jobs, RSS slope {} B/job after warm-up",
        finished.len(),
        rss_slope
            .map(|v| format!("{v:.0}"))
            .unwrap_or_else(|| "-".into())
    );
    std::fs::write(out_dir.join("soak.csv"), &csv).expect("write csv");
    std::fs::write(out_dir.join("soak.svg"), svg(&samples, warmup, &title)).expect("write svg");
    std::fs::write(out_dir.join("soak-summary.txt"), &summary).expect("write summary");
    eprintln!("{summary}written to {}", out_dir.display());

    assert!(wrong.is_empty(), "{wrong:?}");
    assert!(violations.is_empty(), "{violations:?}");
    assert!(
        samples.len() >= 2,
        "the runner was never sampled: {samples:?}"
    );
    // Nothing of this runner left on the engine or on disk.
    w.scope.assert_clean().await;
    assert!(
        !partial,
        "partial run: {} of {jobs} jobs within SOAK_MAX_MINUTES={max_minutes}",
        finished.len()
    );
}

fn csv_of(samples: &[Sample]) -> String {
    let mut csv = String::from("jobs_done,seconds,rss_kib,open_fds,threads,load1\n");
    for s in samples {
        let _ = writeln!(
            csv,
            "{},{:.1},{},{},{},{:.2}",
            s.jobs_done, s.secs, s.rss_kb, s.fds, s.threads, s.load1
        );
    }
    csv
}

fn tail(text: &str, n: usize) -> &str {
    let start = text.len().saturating_sub(n);
    let start = (start..text.len())
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(text.len());
    &text[start..]
}
