//! `runner bench` without Docker: a fake target with synthetic samples drives the engine, and
//! the statistics, JSON, SVG and scenario files are checked.

use isolated_runner::bench::{
    self, BenchTarget, JobSpec, Plan, Progress, RunSample, SampleOutcome, Scenario, TargetError,
    TargetInfo,
};
use isolated_runner::config::IsolationMode;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// (scenario, mode, warm-up, cancel hook, kill-sidecar hook) of one call.
type Call = (String, IsolationMode, bool, bool, bool);

/// Records every call; dind jobs take 3 s + i, shared ones 1 s + i (TTFSL 2 s / 0.5 s + i/10).
#[derive(Default)]
struct FakeTarget {
    calls: Mutex<Vec<Call>>,
    fail_round: Option<usize>,
}

#[async_trait::async_trait]
impl BenchTarget for FakeTarget {
    async fn describe(&self) -> TargetInfo {
        TargetInfo {
            docker_engine: Some("20.10.fake".into()),
            storage_driver: Some("overlay2".into()),
            inner_storage_driver: Some("overlay2".into()),
            ..TargetInfo::default()
        }
    }

    async fn run_job(&self, job: &JobSpec) -> Result<RunSample, TargetError> {
        self.calls.lock().expect("lock").push((
            job.scenario.name.to_string(),
            job.mode,
            job.warmup,
            job.hooks.cancel_mid_script,
            job.hooks.kill_sidecar_mid_script,
        ));
        if self.fail_round == Some(job.round) && job.mode == IsolationMode::Dind {
            return Err(TargetError("sidecar never became ready".into()));
        }
        let i = job.round as f64;
        let (wall, ttfsl, sidecar) = match job.mode {
            IsolationMode::Dind => (3.0 + i, 2.0 + i / 10.0, Some(100_000_000)),
            IsolationMode::SharedSocket => (1.0 + i, 0.5 + i / 10.0, None),
        };
        Ok(RunSample {
            outcome: if job.hooks.cancel_mid_script {
                SampleOutcome::Canceled
            } else {
                SampleOutcome::Success
            },
            ttfsl: Some(Duration::from_secs_f64(ttfsl)),
            wall: Duration::from_secs_f64(wall),
            // The teardown after the final state: 0.5 s with a sidecar, 0.1 s without.
            final_state: Some(Duration::from_secs_f64(
                wall - if sidecar.is_some() { 0.5 } else { 0.1 },
            )),
            stages: BTreeMap::from([("step_script".to_string(), 0.1)]),
            peak_mem_job_bytes: Some(50_000_000),
            peak_mem_sidecar_bytes: sidecar,
            notes: Vec::new(),
        })
    }

    async fn leftovers(&self, mode: IsolationMode) -> Result<u64, TargetError> {
        Ok(match mode {
            IsolationMode::Dind => 0,
            IsolationMode::SharedSocket => 2,
        })
    }
}

fn scenarios_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/scenarios")
}

fn plan(names: &[&str], runs: usize, warmup: usize) -> Plan {
    Plan {
        scenarios: names
            .iter()
            .map(|n| *bench::scenario::find(n).expect("known scenario"))
            .collect(),
        modes: vec![IsolationMode::Dind, IsolationMode::SharedSocket],
        runs,
        warmup,
        concurrency: 4,
        scenarios_root: scenarios_root(),
        pace: std::time::Duration::ZERO,
    }
}

/// A `Write` the test can read back.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Shared {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("lock")).to_string()
    }
}

async fn run(target: &FakeTarget, plan: &Plan, tty: bool) -> (bench::BenchRun, String) {
    let out = Shared::default();
    let mut progress = Progress::new(Box::new(out.clone()), tty, plan.total_jobs());
    let run = bench::run(target, plan, &mut progress).await;
    (run, out.text())
}

#[tokio::test]
async fn modes_interleave_after_warmup() {
    let target = FakeTarget::default();
    let plan = plan(&["noop"], 3, 2);
    run(&target, &plan, false).await;
    let calls = target.calls.lock().expect("lock").clone();
    let order: Vec<(IsolationMode, bool)> = calls.iter().map(|c| (c.1, c.2)).collect();
    use IsolationMode::{Dind as A, SharedSocket as B};
    assert_eq!(
        order,
        vec![
            (A, true),
            (B, true),
            (A, true),
            (B, true),
            (A, false),
            (B, false),
            (A, false),
            (B, false),
            (A, false),
            (B, false),
        ]
    );
}

#[tokio::test]
async fn statistics_ratio_and_overhead_from_known_samples() {
    let target = FakeTarget::default();
    // Rounds 0..=1 are warm-up (discarded); measured rounds are 2..=6.
    let plan = plan(&["noop"], 5, 2);
    let (run, _) = run(&target, &plan, false).await;
    let report = bench::build_report(&run);
    let s = &report.scenarios[0];
    let dind = &s.modes[0];
    let shared = &s.modes[1];
    // dind wall = 3 + round for rounds 2..=6 -> 5,6,7,8,9: p50 7, p95 = 8 + 0.8 * 1 = 8.8.
    let wall = dind.wall.expect("wall");
    assert!((wall.p50 - 7.0).abs() < 1e-9);
    assert!((wall.p95 - 8.8).abs() < 1e-9, "{}", wall.p95);
    // shared wall 3..=7: p50 5 -> ratio 7/5.
    assert!((shared.wall.expect("wall").p50 - 5.0).abs() < 1e-9);
    assert!((s.ratio_wall_p50.expect("ratio") - 1.4).abs() < 1e-9);
    // As GitLab sees it: dind 6.5 (7 - 0.5), shared 4.9 (5 - 0.1).
    assert!((s.ratio_final_p50.expect("final ratio") - 6.5 / 4.9).abs() < 1e-9);
    // TTFSL dind 2.2..2.6, shared 0.7..1.1: overhead 1.5 at every percentile.
    assert!((s.ttfsl_overhead_p50_s.expect("p50") - 1.5).abs() < 1e-9);
    assert!((s.ttfsl_overhead_p95_s.expect("p95") - 1.5).abs() < 1e-9);
    assert_eq!(dind.peak_mem_bytes, Some(150_000_000));
    assert_eq!(shared.peak_mem_bytes, Some(50_000_000));
    assert_eq!((dind.leftovers, shared.leftovers), (Some(0), Some(2)));
    assert_eq!((dind.ok, dind.failed), (5, 0));
}

#[tokio::test]
async fn failed_jobs_are_counted_not_measured() {
    let target = FakeTarget {
        fail_round: Some(3),
        ..FakeTarget::default()
    };
    let plan = plan(&["docker-run"], 4, 1);
    let (run, progress) = run(&target, &plan, false).await;
    let report = bench::build_report(&run);
    let dind = &report.scenarios[0].modes[0];
    assert_eq!((dind.ok, dind.failed), (3, 1));
    assert!(progress.contains("FAILED: sidecar never became ready"));
}

#[tokio::test]
async fn teardown_hooks_fire_on_every_10th_and_25th_job() {
    let target = FakeTarget::default();
    let plan = plan(&["teardown"], 30, 3);
    let (run, progress) = run(&target, &plan, false).await;
    // A cancelled job says so on its progress line; a plain one does not.
    assert!(
        progress.lines().any(
            |l| l.starts_with("[ 19/200] teardown dind run 1/1 job 10/100:")
                && l.ends_with(", canceled")
        ),
        "{progress}"
    );
    assert!(
        progress
            .lines()
            .next()
            .is_some_and(|l| !l.contains("canceled"))
    );
    let calls = target.calls.lock().expect("lock").clone();
    assert_eq!(calls.len(), 200, "one batch of 100 per mode, no warm-up");
    let dind: Vec<_> = calls
        .iter()
        .filter(|c| c.1 == IsolationMode::Dind)
        .collect();
    let cancelled: Vec<usize> = (0..100).filter(|&i| dind[i].3).map(|i| i + 1).collect();
    let killed: Vec<usize> = (0..100).filter(|&i| dind[i].4).map(|i| i + 1).collect();
    assert_eq!(cancelled, vec![10, 20, 30, 40, 50, 60, 70, 80, 90, 100]);
    assert_eq!(killed, vec![25, 50, 75, 100]);
    let report = bench::build_report(&run);
    assert_eq!(report.scenarios[0].modes[0].canceled, 10);
    assert_eq!(report.scenarios[0].modes[0].ok, 90);
}

#[tokio::test]
async fn concurrent_releases_k_jobs_per_mode() {
    let target = FakeTarget::default();
    let plan = plan(&["concurrent"], 1, 0);
    run(&target, &plan, false).await;
    let calls = target.calls.lock().expect("lock").clone();
    assert_eq!(calls.len(), 8);
    assert!(calls[..4].iter().all(|c| c.1 == IsolationMode::Dind));
    assert!(
        calls[4..]
            .iter()
            .all(|c| c.1 == IsolationMode::SharedSocket)
    );
}

#[tokio::test]
async fn progress_is_one_line_per_job_without_a_tty_and_cr_with_one() {
    let target = FakeTarget::default();
    let plan = plan(&["noop"], 2, 1);
    let (_, plain) = run(&target, &plan, false).await;
    assert_eq!(plain.lines().count(), 6);
    assert!(
        plain.starts_with("[1/6] noop dind warm-up 1/1: wall 3.00 s"),
        "{plain}"
    );
    assert!(plain.contains("[6/6] noop shared-socket run 2/2"));
    let (_, tty) = run(&target, &plan, true).await;
    assert_eq!(tty.matches('\r').count(), 6);
    assert_eq!(tty.matches('\n').count(), 1);
}

#[tokio::test]
async fn json_has_exactly_the_documented_shape() {
    let target = FakeTarget::default();
    let plan = plan(&["noop", "docker-run"], 3, 1);
    let (run, _) = run(&target, &plan, false).await;
    let report = bench::build_report(&run);
    let text = serde_json::to_string_pretty(&bench::to_json(&report)).expect("json");
    let doc: serde_json::Value = serde_json::from_str(&text).expect("parses back");
    let keys = |v: &serde_json::Value| -> Vec<String> {
        let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&doc), vec!["host", "scenarios"]);
    let host = &doc["host"];
    for key in [
        "kernel",
        "docker_engine",
        "runner_version",
        "cpus",
        "memory_bytes",
    ] {
        assert!(host.get(key).is_some(), "host.{key}");
    }
    assert_eq!(host["docker_engine"], "20.10.fake");
    assert!(host["cpus"].as_u64().expect("cpus") >= 1);
    let scenarios = doc["scenarios"].as_array().expect("array");
    assert_eq!(scenarios.len(), 2);
    for s in scenarios {
        assert_eq!(
            keys(s),
            vec![
                "modes",
                "name",
                "ratio_final_state_p50",
                "ratio_ttfsl_p95",
                "ratio_wall_p50",
                "ratio_wall_p95",
                "runs",
                "ttfsl_overhead_p50_s",
                "ttfsl_overhead_p95_s"
            ]
        );
        assert_eq!(s["runs"], 3);
        assert_eq!(keys(&s["modes"]), vec!["dind", "shared-socket"]);
        for mode in ["dind", "shared-socket"] {
            let m = &s["modes"][mode];
            // The documented keys, plus the extras docs/benchmarks.md describes (outcome
            // counts, failure notes, stage medians, runner memory growth); nothing else.
            assert_eq!(
                keys(m),
                vec![
                    "canceled",
                    "failed",
                    "failure_notes",
                    "final_state_s",
                    "leftovers",
                    "load1",
                    "ok",
                    "peak_mem_bytes",
                    "runner_rss_slope_bytes_per_job",
                    "stages_p50_s",
                    "ttfsl_s",
                    "wall_s"
                ]
            );
            assert_eq!(keys(&m["ttfsl_s"]), vec!["p50", "p95"]);
            assert_eq!(keys(&m["wall_s"]), vec!["p50", "p95"]);
            assert!(m["wall_s"]["p50"].is_f64());
        }
        assert!(s["ratio_wall_p50"].is_f64());
    }
    assert_eq!(scenarios[0]["name"], "noop");
}

#[tokio::test]
async fn svg_is_well_formed_with_one_group_per_scenario_and_both_modes() {
    let target = FakeTarget::default();
    let plan = plan(
        &["noop", "docker-run", "compose", "build-cold", "teardown"],
        3,
        0,
    );
    let (run, _) = run(&target, &plan, false).await;
    let report = bench::build_report(&run);
    let svg = bench::render_svg(&report);
    // For looking at it: BENCH_SVG_OUT=/tmp/bench.svg cargo test --test suite bench::svg
    if let Some(path) = std::env::var_os("BENCH_SVG_OUT") {
        std::fs::write(path, &svg).expect("write svg");
    }
    let doc = roxmltree::Document::parse(&svg).expect("well-formed XML");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    let groups: Vec<_> = doc
        .descendants()
        .filter(|n| n.attribute("class") == Some("scenario"))
        .collect();
    let names: Vec<&str> = groups
        .iter()
        .filter_map(|g| g.attribute("data-name"))
        .collect();
    assert_eq!(
        names,
        vec!["noop", "docker-run", "compose", "build-cold", "teardown"]
    );
    for g in groups {
        let modes: Vec<&str> = g
            .children()
            .filter(|n| n.attribute("class") == Some("mode"))
            .filter_map(|n| n.attribute("data-mode"))
            .collect();
        assert_eq!(modes, vec!["dind", "shared-socket"]);
    }
    assert!(
        doc.descendants()
            .any(|n| n.attribute("class") == Some("legend"))
    );
    assert!(
        doc.descendants()
            .any(|n| n.attribute("class") == Some("axis"))
    );
}

#[tokio::test]
async fn table_names_every_scenario_and_mode() {
    let target = FakeTarget::default();
    let plan = plan(&["noop"], 3, 0);
    let (run, _) = run(&target, &plan, false).await;
    let table = bench::render_table(&bench::build_report(&run));
    assert!(table.contains("noop - script: true"));
    assert!(table.contains("dind") && table.contains("shared-socket"));
    assert!(
        table.contains("wall p50 dind/shared-socket: 2.00x"),
        "{table}"
    );
    assert!(table.contains("p50 +1.50 s"));
}

/// Every image a scenario names, from YAML `image:` keys, `docker run`/`build` lines and
/// Dockerfile `FROM`s.
fn images_in(value: &serde_yaml::Value, found: &mut Vec<String>) {
    match value {
        serde_yaml::Value::Mapping(map) => {
            for (k, v) in map {
                if k.as_str() == Some("image") {
                    match v {
                        serde_yaml::Value::String(s) => found.push(s.clone()),
                        serde_yaml::Value::Mapping(m) => {
                            if let Some(name) = m.get("name").and_then(|n| n.as_str()) {
                                found.push(name.to_string());
                            }
                        }
                        _ => {}
                    }
                }
                images_in(v, found);
            }
        }
        serde_yaml::Value::Sequence(seq) => seq.iter().for_each(|v| images_in(v, found)),
        serde_yaml::Value::String(s) => {
            for line in s.lines() {
                if line.contains("docker run") {
                    let image = line.split_whitespace().find(|w| {
                        w.starts_with("isolated-runner/")
                            || w.contains(':') && !w.starts_with('-') && !w.starts_with('$')
                    });
                    found.push(
                        image
                            .unwrap_or("<no local image in docker run>")
                            .to_string(),
                    );
                }
            }
        }
        _ => {}
    }
}

const LOCAL: &[&str] = &[
    "isolated-runner/job:test",
    "isolated-runner/busybox:test",
    // Built by tests/images/build; the compose-heavy scenarios pull them from the bench's own
    // registry (see the compose file check below).
    "isolated-runner/php:test",
    "isolated-runner/node:test",
    "isolated-runner/postgres:test",
];

#[test]
fn scenario_files_parse_and_use_only_local_images() {
    let root = scenarios_root();
    let mut seen = std::collections::HashSet::new();
    for scenario in bench::SCENARIOS {
        let dir = scenario.project_dir(&root);
        if !seen.insert(scenario.project) {
            continue;
        }
        let ci = std::fs::read_to_string(dir.join(".gitlab-ci.yml")).expect(scenario.project);
        let yaml: serde_yaml::Value = serde_yaml::from_str(&ci).expect("valid YAML");
        check_jobs_exist(scenario, &yaml);
        let mut images = Vec::new();
        images_in(&yaml, &mut images);
        for file in ["docker-compose.yml", "compose.yml"] {
            if let Ok(text) = std::fs::read_to_string(dir.join(file)) {
                let compose: serde_yaml::Value = serde_yaml::from_str(&text).expect("compose YAML");
                // The heavy scenarios pull, but only from the bench's own registry.
                let pulls = !scenario.registry_images().is_empty();
                for (_, service) in compose["services"].as_mapping().expect("services") {
                    let policy = if pulls { "missing" } else { "never" };
                    assert_eq!(service["pull_policy"].as_str(), Some(policy), "{file}");
                }
                let mut named = Vec::new();
                images_in(&compose, &mut named);
                for image in named {
                    let from_registry = scenario.registry_images().iter().find(|(_, name)| {
                        image == format!("${{BENCH_REGISTRY:?set by runner bench}}/{name}")
                    });
                    // Checked against the local image the bench pushes under that name.
                    images.push(
                        from_registry
                            .map(|(local, _)| local.to_string())
                            .unwrap_or(image),
                    );
                }
            }
        }
        if let Ok(text) = std::fs::read_to_string(dir.join("Dockerfile")) {
            for line in text
                .lines()
                .filter(|l| l.trim_start().to_uppercase().starts_with("FROM "))
            {
                images.push(
                    line.split_whitespace()
                        .nth(1)
                        .expect("FROM image")
                        .to_string(),
                );
            }
            assert!(ci.contains("--pull=false"), "builds must not pull");
        }
        assert!(!images.is_empty(), "{}: no image found", scenario.project);
        for image in images {
            assert!(
                LOCAL.contains(&image.as_str()),
                "{}: {image} is not a local image",
                scenario.project
            );
        }
        assert!(!ci.contains("docker pull"), "{}", scenario.project);
    }
}

fn check_jobs_exist(scenario: &Scenario, yaml: &serde_yaml::Value) {
    let mut jobs = vec![scenario.job];
    if let bench::Shape::Concurrent { jobs: names } = scenario.shape {
        jobs.extend(names.iter().copied());
    }
    for job in jobs {
        let script = &yaml[job]["script"];
        assert!(
            script.is_sequence(),
            "{}: job {job} has a script",
            scenario.project
        );
    }
    // Other variants of the same project.
    for other in bench::SCENARIOS
        .iter()
        .filter(|s| s.project == scenario.project)
    {
        assert!(yaml[other.job]["script"].is_sequence(), "{}", other.name);
    }
}

#[test]
fn help_teaches_scenarios_and_metrics() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(["bench", "--help"])
        .output()
        .expect("runner starts");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for needle in [
        "--scenario",
        "--runs",
        "--warmup",
        "--concurrency",
        "--modes",
        "--json",
        "--svg",
        "TTFSL",
        "teardown",
        "dind/shared-socket",
    ] {
        assert!(text.contains(needle), "--help lacks {needle}");
    }
}

#[test]
fn unknown_scenario_is_refused_with_the_list() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_runner"))
        .args([
            "bench",
            "--scenario",
            "nope",
            "--config",
            "/nonexistent.toml",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_clear()
        .output()
        .expect("runner starts");
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(text.contains("unknown scenario \"nope\""), "{text}");
    assert!(text.contains("noop, docker-run"), "{text}");
}

#[tokio::test]
async fn a_broken_scenario_file_stops_the_bench_before_any_job() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("noop")).expect("mkdir");
    // A plain scalar with ": " in it is a mapping: not a command.
    std::fs::write(
        dir.path().join("noop/.gitlab-ci.yml"),
        "noop:\n  image: isolated-runner/job:test\n  script:\n    - echo \"a: b\"\n",
    )
    .expect("write");
    let mut p = plan(&["noop"], 1, 0);
    p.scenarios_root = dir.path().to_path_buf();
    let err = isolated_runner::cli::bench::check_projects(&p)
        .await
        .expect_err("refused");
    assert!(format!("{err:#}").contains("job noop"), "{err:#}");
    // The real scenarios pass.
    let all: Vec<&str> = bench::SCENARIOS.iter().map(|s| s.name).collect();
    isolated_runner::cli::bench::check_projects(&plan(&all, 1, 0))
        .await
        .expect("the shipped scenarios are valid");
}

/// `concurrent-mixed`: one burst of `--concurrency` jobs holds every mode (job i in mode
/// i mod modes), so the modes start under the same load; the report compares their TTFSL p95.
#[tokio::test]
async fn mixed_burst_runs_both_modes_at_once() {
    let target = FakeTarget::default();
    let plan = plan(&["concurrent-mixed"], 2, 1);
    // 4 jobs per burst in all (not per mode), 3 bursts.
    assert_eq!(plan.total_jobs(), 12);
    let (run, _) = run(&target, &plan, false).await;
    let calls = target.calls.lock().expect("lock").clone();
    use IsolationMode::{Dind as A, SharedSocket as B};
    let modes: Vec<IsolationMode> = calls.iter().map(|c| c.1).collect();
    assert_eq!(modes, [A, B, A, B].repeat(3));
    // Job names go in turn per mode: noop for the first of each mode, docker-run next.
    let report = bench::build_report(&run);
    let s = &report.scenarios[0];
    assert_eq!((s.modes[0].ok, s.modes[1].ok), (4, 4));
    // TTFSL p95 over rounds 1..=2: dind 2.1..2.2, shared 0.6..0.7.
    let p95 = |m: usize| s.modes[m].ttfsl.expect("ttfsl").p95;
    assert!((s.ratio_ttfsl_p95.expect("ratio") - p95(0) / p95(1)).abs() < 1e-9);
    assert!(s.modes.iter().all(|m| m.load1.is_some()), "{s:?}");
    let table = bench::render_table(&report);
    assert!(table.contains("p95 dind/shared-socket: TTFSL"), "{table}");
    assert!(table.contains("load average (1 min)"), "{table}");
    let json = bench::to_json(&report);
    assert!(json["scenarios"][0]["ratio_ttfsl_p95"].is_f64(), "{json}");
    assert!(
        json["scenarios"][0]["modes"]["dind"]["load1"]["mean"].is_f64(),
        "{json}"
    );
}

/// `compose-heavy-4`: four jobs of one project at once per mode, modes in turn; the heavy
/// scenarios name the images the bench's registry must hold.
#[tokio::test]
async fn parallel_shape_releases_four_jobs_per_mode() {
    let target = FakeTarget::default();
    let plan = plan(&["compose-heavy-4"], 1, 0);
    assert_eq!(plan.total_jobs(), 8);
    run(&target, &plan, false).await;
    let calls = target.calls.lock().expect("lock").clone();
    use IsolationMode::{Dind as A, SharedSocket as B};
    let modes: Vec<IsolationMode> = calls.iter().map(|c| c.1).collect();
    assert_eq!(modes, [[A; 4], [B; 4]].concat());
    for name in ["compose-heavy", "compose-heavy-4"] {
        let s = bench::scenario::find(name).expect("scenario");
        let images: Vec<&str> = s.registry_images().iter().map(|i| i.0).collect();
        assert_eq!(
            images,
            [
                "isolated-runner/php:test",
                "isolated-runner/node:test",
                "isolated-runner/postgres:test"
            ]
        );
    }
}
