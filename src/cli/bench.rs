//! `runner bench`: flags, plan, and the reports on stdout and in files.

use super::ConfigArg;
use crate::bench::real::registry::BenchRegistry;
use crate::bench::{self, BenchTarget, Plan, Progress, SCENARIOS};
use crate::config::{IsolationMode, SidecarProfile};
use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Isolation modes as clap values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// A per-job docker-in-docker sidecar (isolated).
    Dind,
    /// The host socket mounted into the job (the setup we replace; the baseline).
    SharedSocket,
}

impl From<ModeArg> for IsolationMode {
    fn from(mode: ModeArg) -> Self {
        match mode {
            ModeArg::Dind => IsolationMode::Dind,
            ModeArg::SharedSocket => IsolationMode::SharedSocket,
        }
    }
}

/// Sidecar profiles as clap values (`--sidecar-profile`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProfileArg {
    /// Rootless dockerd, no capability on the host (the default profile).
    Rootless,
    /// Root with SYS_ADMIN and NET_ADMIN: not a security boundary.
    Hardened,
    /// `--privileged`.
    Privileged,
    /// The sysbox-runc runtime.
    Sysbox,
}

impl From<ProfileArg> for SidecarProfile {
    fn from(p: ProfileArg) -> Self {
        match p {
            ProfileArg::Rootless => SidecarProfile::Rootless,
            ProfileArg::Hardened => SidecarProfile::Hardened,
            ProfileArg::Privileged => SidecarProfile::Privileged,
            ProfileArg::Sysbox => SidecarProfile::Sysbox,
        }
    }
}

const SCENARIO_HELP: &str = "\
Scenarios (bench/scenarios/<project>/.gitlab-ci.yml; local images only, nothing is pulled):
  noop            script: true, no services. The fixed cost of each mode: for dind that is
                  certificates, network, sidecar start and daemon readiness.
  docker-run      10 x `docker run --rm busybox true`: the Docker API path (unix socket vs mTLS
                  over the job bridge) and inner container start.
  compose         3 busybox httpd services with healthchecks, a ./ bind mount, `compose up
                  --wait`, 20 `compose exec`, down. Path parity and time to healthy.
  build-cold      5-layer `docker build` with no local layers in the per-job daemon (dind runs
                  with data_root = \"ephemeral\" whatever the config says).
  build-warm      the same build: warm shared daemon vs warm per-project data root (dind runs
                  with data_root = \"project\" whatever the config says, so the second and
                  later builds hit the layer cache; the bench removes the warm volume at the
                  end). Use --warmup 1 or more: the first dind build fills the root.
  build-no-cache  the same build with --no-cache: what doing nothing about caching costs
                  (dind with data_root = \"ephemeral\").
  concurrent      --concurrency jobs (noop and docker-run in turn) released at once.
  concurrent-mixed
                  --concurrency jobs in one burst with the modes mixed (job i in mode i mod
                  modes): each mode's TTFSL p95 under the same load.
  compose-heavy   a compose stack of php, node and postgres images (~765 MB together) pulled
                  from a registry the bench starts on this host (and removes), `docker
                  compose run` in each service. dind runs on the project's warm data roots
                  (data_root = \"project\" whatever the config says; removed at the end), as
                  the shared daemon keeps its images. `--runs 10 --warmup 0`: 10 jobs of one
                  project in a row per mode; the first dind job fills its root.
  compose-heavy-4 the same job, 4 at once per mode: a stage of parallel jobs of one project
                  (`--warmup 1` fills the project's roots first, data_root_per_key of them).
  teardown        100 jobs per mode, every 10th cancelled mid-script, every 25th with its
                  sidecar killed; counts what is left on the host. Ignores --runs/--warmup.

Metrics:
  TTFSL      time to first script line: job handed to the pipeline -> first byte of output of
             the user's `script`. What a developer waits for before their job does anything.
  wall       job handed to the pipeline -> pipeline done, teardown included.
  to final state
             job handed to the pipeline -> outcome known and log finished: when `runner run`
             sends the final state to GitLab (the teardown runs after it, its slot still
             held). The job's time as a pipeline sees it.
  peak mem   highest cgroup memory peak of the job's containers plus the sidecar.
  leftovers  containers, networks, volumes, cert dirs and firewall rules left after teardown;
             anything but 0 in dind mode is a bug.
  rss B/job  growth of the runner's own RSS per job (least squares); a leak shows here.

Reading the result:
  Modes run interleaved (dind, shared, dind, shared…) after warm-up rounds, so host drift hits
  both alike. p50 is the typical job, p95 the slow one (linear interpolation between ranks).
  `wall p50 dind/shared-socket` is the ratio of medians: 1.00x means isolation is free, 2.00x
  means jobs take twice as long. For short jobs read the absolute TTFSL overhead (dind minus
  shared, at p50 and p95) instead: +2 s on a 1 s job is a ratio of 3x but still only 2 s.";

/// `runner bench` flags.
#[derive(Debug, Clone, Args)]
#[command(after_long_help = SCENARIO_HELP)]
pub struct BenchArgs {
    /// The config file (runner entry, isolation settings, preload images).
    #[command(flatten)]
    pub config: ConfigArg,

    /// Scenario to run; repeat for several (default: all). See the list below.
    #[arg(long = "scenario", value_name = "NAME")]
    pub scenarios: Vec<String>,

    /// Measured rounds per scenario; every round runs each mode once.
    #[arg(long, default_value_t = 30, value_name = "N")]
    pub runs: usize,

    /// Discarded rounds before measuring (image and page caches, first-start effects).
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub warmup: usize,

    /// Jobs released at once in the `concurrent` scenario.
    #[arg(long, default_value_t = 10, value_name = "K")]
    pub concurrency: usize,

    /// Seconds of idle time after each job (each burst) before the next one, like the gap
    /// between a pipeline's stages or a runner's poll interval. With 0 (the default) jobs run
    /// back to back and the background work one job leaves (the dind mode's pool refill and
    /// teardown) lands on the next job, whichever its mode; a pace longer than a sidecar's
    /// start measures each job on a settled host.
    #[arg(long, default_value_t = 0.0, value_name = "SECS", value_parser = parse_pace)]
    pub pace: f64,

    /// Modes to compare, in the order they alternate.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "dind,shared-socket"
    )]
    pub modes: Vec<ModeArg>,

    /// Also write the results as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,

    /// Also draw per-scenario medians with p95 whiskers as an SVG chart to FILE.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,

    /// Write every job's full trace to DIR (one file per job, named after scenario, mode,
    /// round, index and job id): what to read when a job fails.
    #[arg(long, value_name = "DIR")]
    pub trace_dir: Option<PathBuf>,

    /// Where the scenario projects live.
    #[arg(long, default_value = "bench/scenarios", value_name = "DIR")]
    pub scenarios_dir: PathBuf,

    /// An image the registry scenarios (compose-heavy) push into the bench's own registry
    /// instead of the php, node and postgres test images, as LOCAL=NAME with NAME as the
    /// scenario's compose file names it (php:heavy, node:heavy, postgres:heavy); repeat for
    /// each. For a quick check of the registry path (TLS, mirror entry, pulls) with small
    /// images: the timings then say nothing about the real ones.
    #[arg(
        long = "registry-image",
        value_name = "LOCAL=NAME",
        value_parser = parse_registry_image
    )]
    pub registry_images: Vec<(String, String)>,

    /// Sidecars the dind mode keeps started ahead of jobs (`warm_pool`), overriding the
    /// config; 0 measures a cold sidecar start for every job. The built-in entry uses 1.
    #[arg(long, value_name = "N")]
    pub warm_pool: Option<usize>,

    /// Sidecar profiles of the dind mode, overriding the config's; several (comma-separated)
    /// run the whole plan once per profile in this one invocation, each an ordinary
    /// interleaved run against the shared socket, its report headed by the profile and its
    /// --json/--svg file named FILE-<profile>.<ext>.
    #[arg(
        long = "sidecar-profile",
        value_enum,
        value_delimiter = ',',
        value_name = "PROFILE"
    )]
    pub sidecar_profiles: Vec<ProfileArg>,
}

/// `--registry-image LOCAL=NAME`: both sides non-empty, no white space.
fn parse_registry_image(value: &str) -> Result<(String, String), String> {
    match value.split_once('=') {
        Some((local, name))
            if !local.is_empty() && !name.is_empty() && !value.contains(char::is_whitespace) =>
        {
            Ok((local.to_string(), name.to_string()))
        }
        _ => Err(format!(
            "{value:?} is not LOCAL=NAME (a local image and its name in the bench's registry, \
             e.g. isolated-runner/php:test=php:heavy)"
        )),
    }
}

/// `path` with `-<profile>` before its extension (`out.json` → `out-rootless.json`).
pub fn per_profile_path(path: &Path, profile: &str) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match path.extension() {
        Some(ext) => format!("{stem}-{profile}.{}", ext.to_string_lossy()),
        None => format!("{stem}-{profile}"),
    };
    path.with_file_name(name)
}

/// Builds the plan from the flags (scenario names, modes, counts).
pub fn plan(args: &BenchArgs) -> anyhow::Result<Plan> {
    let scenarios = if args.scenarios.is_empty() {
        SCENARIOS.to_vec()
    } else {
        args.scenarios
            .iter()
            .map(|name| {
                bench::scenario::find(name).copied().with_context(|| {
                    format!(
                        "unknown scenario {name:?} (known: {})",
                        bench::scenario::names().join(", ")
                    )
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    if args.modes.is_empty() {
        bail!("--modes needs at least one mode");
    }
    let mut modes: Vec<IsolationMode> = Vec::new();
    for mode in &args.modes {
        let mode = IsolationMode::from(*mode);
        if !modes.contains(&mode) {
            modes.push(mode);
        }
    }
    Ok(Plan {
        scenarios,
        modes,
        runs: args.runs,
        warmup: args.warmup,
        concurrency: args.concurrency.max(1),
        scenarios_root: args.scenarios_dir.clone(),
        pace: std::time::Duration::from_secs_f64(args.pace),
    })
}

/// Checks that every planned scenario has its `.gitlab-ci.yml` and that every job it runs
/// builds a payload: a broken scenario file stops the bench here instead of failing each of
/// its jobs.
pub async fn check_projects(plan: &Plan) -> anyhow::Result<()> {
    use crate::job::local::{self, LocalContext};
    for scenario in &plan.scenarios {
        let file = scenario
            .project_dir(&plan.scenarios_root)
            .join(".gitlab-ci.yml");
        if !tokio::fs::try_exists(&file).await.unwrap_or(false) {
            bail!(
                "scenario {} has no {} (run from the repository root or pass --scenarios-dir)",
                scenario.name,
                file.display()
            );
        }
        let text = tokio::fs::read_to_string(&file)
            .await
            .with_context(|| format!("cannot read {}", file.display()))?;
        let ci = local::parse(&text)
            .with_context(|| format!("scenario {}: {}", scenario.name, file.display()))?;
        let mut jobs: Vec<String> = plan
            .slots(scenario)
            .into_iter()
            .flatten()
            .map(|j| j.job_name)
            .collect();
        jobs.sort();
        jobs.dedup();
        for job in jobs {
            let ctx = LocalContext {
                job_id: 1,
                token: crate::secret::Secret::new("glcbt-bench-check".to_string()),
                project_name: scenario.project.to_string(),
                commit_sha: None,
                ref_name: None,
                config_path: ".gitlab-ci.yml".to_string(),
                checkout: None,
            };
            ci.build_payload(&job, &ctx).with_context(|| {
                format!(
                    "scenario {}: job {job} in {}",
                    scenario.name,
                    file.display()
                )
            })?;
        }
    }
    Ok(())
}

/// Runs the bench against `target` and writes the reports.
pub async fn run_with(
    args: &BenchArgs,
    plan: &Plan,
    target: &dyn BenchTarget,
) -> anyhow::Result<ExitCode> {
    let mut progress = Progress::stderr(plan.total_jobs());
    let run = bench::run(target, plan, &mut progress).await;
    let report = bench::build_report(&run);
    print!("{}", bench::render_table(&report));
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&bench::to_json(&report))?;
        write_file(path, text.as_bytes()).await?;
    }
    if let Some(path) = &args.svg {
        write_file(path, bench::render_svg(&report).as_bytes()).await?;
    }
    Ok(ExitCode::SUCCESS)
}

async fn write_file(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    tokio::fs::write(path, data)
        .await
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The images to push into the bench's registry as (local image, name in the registry): the
/// planned scenarios' (compose-heavy), or `overrides` (`--registry-image`) in their place.
/// Empty when no planned scenario pulls from the registry; `overrides` then are an error, as
/// they would do nothing.
fn registry_images<'a>(
    plan: &Plan,
    overrides: &'a [(String, String)],
) -> anyhow::Result<Vec<(&'a str, &'a str)>> {
    let mut images: Vec<(&str, &str)> = Vec::new();
    for s in &plan.scenarios {
        for image in s.registry_images() {
            if !images.contains(image) {
                images.push(*image);
            }
        }
    }
    if overrides.is_empty() {
        return Ok(images);
    }
    if images.is_empty() {
        bail!(
            "--registry-image: no planned scenario pulls from the bench's registry (those that \
             do: {})",
            SCENARIOS
                .iter()
                .filter(|s| !s.registry_images().is_empty())
                .map(|s| s.name)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(overrides
        .iter()
        .map(|(local, name)| (local.as_str(), name.as_str()))
        .collect())
}

/// Starts the bench's registry holding `images` (none: no registry).
async fn start_registry(
    images: &[(&str, &str)],
    work: &Path,
) -> anyhow::Result<Option<crate::bench::real::registry::BenchRegistry>> {
    if images.is_empty() {
        return Ok(None);
    }
    eprintln!(
        "runner bench: starting a registry of the bench's own and pushing {} image(s) into it: {}",
        images.len(),
        images
            .iter()
            .map(|(local, name)| format!("{local} as {name}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let r = crate::bench::real::registry::BenchRegistry::start(&work.join("registry"), images)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    eprintln!(
        "runner bench: registry {} ready; dind jobs pull from {}",
        r.container(),
        r.variables()
            .into_iter()
            .find(|(m, _, _)| *m == IsolationMode::Dind)
            .map(|(_, _, v)| v)
            .unwrap_or_default()
    );
    Ok(Some(r))
}

/// `runner bench`.
pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let plan = plan(&args)?;
    check_projects(&plan).await?;
    let registry_images = registry_images(&plan, &args.registry_images)?;
    let work = std::env::temp_dir().join(format!(
        "isolated-runner-bench-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ));
    // `-c` when the file exists (its first runner entry); the built-in bench entry otherwise.
    let mut base = if args.config.config.exists() {
        let config = super::load_config(&args.config.config).await?;
        let runner = config.runners.into_iter().next().with_context(|| {
            format!("{} has no [[runners]] entry", args.config.config.display())
        })?;
        eprintln!(
            "runner bench: runner entry {:?} from {}",
            runner.name,
            args.config.config.display()
        );
        runner
    } else {
        eprintln!(
            "runner bench: built-in runner entry (no {})",
            args.config.config.display()
        );
        crate::bench::real::builtin_runner(&work)
    };
    if let Some(n) = args.warm_pool {
        base.docker.isolation.warm_pool = n;
        base.docker.isolation.warm_pool_auto = false;
    }
    if base.docker.isolation.warm_pool_auto {
        eprintln!("runner bench: dind warm pool: auto (sized from the bench's own demand)");
    } else {
        eprintln!(
            "runner bench: dind warm pool: {} pre-started sidecar(s)",
            base.docker.isolation.warm_pool
        );
    }
    // Inner daemons must never pull: the scenarios' busybox is always preloaded.
    let busybox = "isolated-runner/busybox:test".to_string();
    if !base.docker.isolation.preload_images.contains(&busybox) {
        base.docker.isolation.preload_images.push(busybox);
    }
    // The compose-heavy scenarios pull from a registry of the bench's own (started, filled
    // and removed here); the dind side is pointed at it before its backends are built.
    let registry = start_registry(&registry_images, &work).await?;
    if let Some(r) = &registry {
        r.configure(&mut base);
    }
    let result = if args.sidecar_profiles.len() <= 1 {
        if let Some(p) = args.sidecar_profiles.first() {
            base.docker.isolation.sidecar_profile = (*p).into();
        }
        run_profile(&args, &plan, &base, &work, registry.as_ref()).await
    } else {
        run_profiles(&args, &plan, &base, &work, registry.as_ref()).await
    };
    if let Some(r) = registry {
        for f in r.stop().await {
            eprintln!("runner bench: WARNING: removing the bench registry: {f}");
        }
    }
    // Best effort: the work dir holds only the bench's own (now empty) builds and state dirs.
    let _ = tokio::fs::remove_dir_all(&work).await;
    result
}

/// One whole run per profile, one after the other: the profiles' columns come from runs
/// minutes apart, each with its own shared-socket baseline of the same minutes.
async fn run_profiles(
    args: &BenchArgs,
    plan: &Plan,
    base: &crate::config::RunnerConfig,
    work: &Path,
    registry: Option<&BenchRegistry>,
) -> anyhow::Result<ExitCode> {
    let mut code = ExitCode::SUCCESS;
    for p in &args.sidecar_profiles {
        let profile: SidecarProfile = (*p).into();
        let name = crate::isolation::dind::profile_name(profile);
        let mut base = base.clone();
        base.docker.isolation.sidecar_profile = profile;
        let mut one = args.clone();
        one.json = args.json.as_deref().map(|f| per_profile_path(f, name));
        one.svg = args.svg.as_deref().map(|f| per_profile_path(f, name));
        println!("== sidecar profile: {name}");
        eprintln!("runner bench: sidecar profile {name}");
        if run_profile(&one, plan, &base, work, registry).await? != ExitCode::SUCCESS {
            code = ExitCode::FAILURE;
        }
    }
    Ok(code)
}

/// One run of `plan` with `base` as the runner entry of both modes.
async fn run_profile(
    args: &BenchArgs,
    plan: &Plan,
    base: &crate::config::RunnerConfig,
    work: &Path,
    registry: Option<&BenchRegistry>,
) -> anyhow::Result<ExitCode> {
    eprintln!(
        "runner bench: dind sidecar profile: {}",
        crate::isolation::dind::profile_name(base.docker.isolation.sidecar_profile)
    );
    let mut target = crate::bench::real::RealTarget::new(base, work, &plan.modes)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(r) = registry {
        target = target.with_variables(r.variables());
    }
    if let Some(dir) = &args.trace_dir {
        target = target.with_trace_dir(dir.clone());
    }
    let result = run_with(args, plan, &target).await;
    let report = target.shutdown().await;
    for f in &report.failures {
        eprintln!("runner bench: removing pre-started sidecars: {f}");
    }
    let cleaned = target.clean_scenario_objects().await;
    if cleaned > 0 {
        eprintln!(
            "runner bench: removed {cleaned} objects the shared-socket jobs left on the host"
        );
    }
    let (warm_removed, warm_failures) = target.remove_warm_roots().await;
    if !warm_removed.is_empty() {
        eprintln!(
            "runner bench: removed the warm data root(s) of build-warm: {}",
            warm_removed.join(", ")
        );
    }
    for f in &warm_failures {
        eprintln!("runner bench: WARNING: could not remove a warm data root: {f}");
    }
    drop(target);
    result
}

/// `--pace`: a finite, non-negative number of seconds (at most an hour).
fn parse_pace(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if v.is_finite() && (0.0..=3600.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!(
            "'{s}': the pace must be between 0 and 3600 seconds"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pace_is_seconds_within_bounds() {
        assert_eq!(parse_pace("0"), Ok(0.0));
        assert_eq!(parse_pace("2.5"), Ok(2.5));
        for bad in ["-1", "NaN", "inf", "3601", "soon"] {
            assert!(parse_pace(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn registry_images_are_the_scenarios_or_the_overrides() {
        let args = |extra: &[&str]| {
            use clap::Parser;
            #[derive(Parser)]
            struct Cli {
                #[command(flatten)]
                bench: BenchArgs,
            }
            let mut argv = vec!["bench"];
            argv.extend_from_slice(extra);
            Cli::try_parse_from(argv).map(|c| c.bench)
        };
        let heavy = args(&["--scenario", "compose-heavy"]).expect("args");
        let p = plan(&heavy).expect("plan");
        assert_eq!(
            registry_images(&p, &heavy.registry_images).expect("images"),
            crate::bench::scenario::HEAVY_IMAGES.to_vec()
        );
        let light = args(&[
            "--scenario",
            "compose-heavy",
            "--registry-image",
            "isolated-runner/busybox:test=php:heavy",
            "--registry-image",
            "isolated-runner/busybox:test=node:heavy",
        ])
        .expect("args");
        assert_eq!(
            registry_images(&plan(&light).expect("plan"), &light.registry_images).expect("images"),
            vec![
                ("isolated-runner/busybox:test", "php:heavy"),
                ("isolated-runner/busybox:test", "node:heavy")
            ]
        );
        // An override no planned scenario would use is refused, not ignored.
        let unused = args(&["--scenario", "noop", "--registry-image", "a=b"]).expect("args");
        let e = registry_images(&plan(&unused).expect("plan"), &unused.registry_images)
            .expect_err("unused override");
        assert!(e.to_string().contains("compose-heavy"), "{e}");
        assert!(
            registry_images(&plan(&unused).expect("plan"), &[])
                .expect("none")
                .is_empty()
        );
        for bad in ["a", "=b", "a=", "a b=c"] {
            let e = args(&["--registry-image", bad]).expect_err("refused");
            assert!(e.to_string().contains("LOCAL=NAME"), "{bad}: {e}");
        }
    }

    #[test]
    fn each_profile_gets_its_own_report_file() {
        assert_eq!(
            per_profile_path(Path::new("/tmp/out.json"), "rootless"),
            PathBuf::from("/tmp/out-rootless.json")
        );
        assert_eq!(
            per_profile_path(Path::new("chart"), "hardened"),
            PathBuf::from("chart-hardened")
        );
    }
}
