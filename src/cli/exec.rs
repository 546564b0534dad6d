//! `runner exec JOB`: run one job of a local `.gitlab-ci.yml` through the real pipeline.

use super::ConfigArg;
use crate::config::RunnerConfig;
use crate::job::local::{self, LocalContext};
use crate::job::{JobControl, JobExecutor, JobOutcome, LocalArtifactStore, LocalTree, Pipeline};
use crate::secret::Secret;
use crate::trace::TraceSink;
use anyhow::Context;
use clap::Args;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

/// Arguments of `runner exec`.
#[derive(Debug, Clone, Args)]
pub struct ExecArgs {
    /// Name of the job to run.
    pub job: String,

    /// The CI file to read.
    #[arg(short = 'f', long = "file", default_value = ".gitlab-ci.yml")]
    pub file: PathBuf,

    /// Config file; used when it exists, built-in defaults otherwise.
    #[command(flatten)]
    pub config: ConfigArg,

    /// Debugging aid: print the job payload that would be run, as JSON, and exit.
    #[arg(long, hide = true)]
    pub print_payload: bool,
}

/// Writes the trace to the terminal, colours and all.
struct TerminalSink;

impl TraceSink for TerminalSink {
    fn append(&self, data: &[u8]) {
        let mut out = std::io::stdout().lock();
        // A closed stdout (piped into `head`) must not stop the job.
        let _ = out.write_all(data);
        let _ = out.flush();
    }
}

/// Runs a command in `dir` and returns its stdout, or `None` when it fails.
async fn capture(dir: &Path, args: &[&str]) -> Option<Vec<u8>> {
    let out = tokio::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .await
        .ok()?;
    out.status.success().then_some(out.stdout)
}

fn trimmed(b: Vec<u8>) -> String {
    String::from_utf8_lossy(&b).trim().to_string()
}

/// The runner entry `exec` uses: the first `[[runners]]` of the config file.
async fn load_config(path: &Path) -> anyhow::Result<RunnerConfig> {
    let config = super::load_config(path).await?;
    config
        .runners
        .into_iter()
        .next()
        .with_context(|| format!("{} has no [[runners]] entry", path.display()))
}

/// Whether `dir` exists (or can be made) and takes a new file: probed by writing one.
async fn writable(dir: &Path) -> bool {
    if tokio::fs::create_dir_all(dir).await.is_err() {
        return false;
    }
    let probe = dir.join(format!(".probe-{}", uuid::Uuid::new_v4()));
    let ok = tokio::fs::write(&probe, b"").await.is_ok();
    // The probe may not exist when the write failed.
    let _ = tokio::fs::remove_file(&probe).await;
    ok
}

/// Picks a writable builds dir: the configured one, else `$XDG_RUNTIME_DIR/isolated-runner/builds`
/// or `/tmp/isolated-runner/builds`.
async fn writable_builds_dir(configured: &Path) -> PathBuf {
    if writable(configured).await {
        return configured.to_path_buf();
    }
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    base.join("isolated-runner").join("builds")
}

/// Picks a writable cache dir: the configured one, else `$XDG_CACHE_HOME/isolated-runner/cache`
/// (or `~/.cache/…`), else `/tmp/isolated-runner/cache`. Caches of `exec` then persist between
/// runs of the same user, like gitlab-runner's local cache.
async fn writable_cache_dir(configured: &Path) -> PathBuf {
    if writable(configured).await {
        return configured.to_path_buf();
    }
    let user_cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| {
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
                .map(|h| h.join(".cache"))
        })
        .map(|c| c.join("isolated-runner").join("cache"));
    if let Some(dir) = user_cache
        && writable(&dir).await
    {
        return dir;
    }
    PathBuf::from("/tmp/isolated-runner/cache")
}

/// Entry point of `runner exec`.
pub async fn run(args: ExecArgs) -> anyhow::Result<ExitCode> {
    let text = tokio::fs::read_to_string(&args.file)
        .await
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let ci = local::parse(&text).with_context(|| format!("in {}", args.file.display()))?;
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let is_git = capture(&cwd, &["rev-parse", "--git-dir"]).await.is_some();
    let commit_sha = if is_git {
        capture(&cwd, &["rev-parse", "HEAD"]).await.map(trimmed)
    } else {
        None
    };
    let ref_name = if is_git {
        capture(&cwd, &["rev-parse", "--abbrev-ref", "HEAD"])
            .await
            .map(trimmed)
            .filter(|r| r != "HEAD")
    } else {
        None
    };
    let project_name = cwd
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "project".into());
    let job_id = u64::from(uuid::Uuid::new_v4().as_u128() as u32 % 1_000_000_000) + 1;
    let ctx = LocalContext {
        job_id,
        token: Secret::new(format!("glcbt-local-{}", uuid::Uuid::new_v4().simple())),
        project_name,
        commit_sha,
        ref_name,
        config_path: args.file.to_string_lossy().into_owned(),
        checkout: Some(cwd.clone()),
    };
    // `cache:key:files` reads files of the checkout: off the async threads.
    let job_name = args.job.clone();
    let built = tokio::task::spawn_blocking(move || ci.build_payload(&job_name, &ctx))
        .await
        .context("building the job payload")?
        .with_context(|| format!("in {}", args.file.display()))?;
    for w in &built.warnings {
        eprintln!("warning: {w}");
    }
    if args.print_payload {
        println!("{}", serde_json::to_string_pretty(&built.payload)?);
        return Ok(ExitCode::SUCCESS);
    }

    let mut runner = if args.config.config.exists() {
        load_config(&args.config.config).await?
    } else {
        RunnerConfig::default()
    };
    let builds = writable_builds_dir(&runner.builds_dir).await;
    if builds != runner.builds_dir {
        eprintln!(
            "{} is not writable; using builds dir {}",
            runner.builds_dir.display(),
            builds.display()
        );
        runner.builds_dir = builds;
    } else {
        eprintln!("using builds dir {}", builds.display());
    }

    // A local run never reads or writes the fleet's shared store: its jobs are not GitLab's
    // (no protected flag, a made-up job id), and a developer's checkout must not become the
    // cache CI jobs restore.
    if runner.cache.store.take().is_some() {
        eprintln!(
            "the shared cache store ([runners.cache] Type) is not used by exec; the cache stays local"
        );
    }
    let cache_dir = writable_cache_dir(&runner.cache_dir).await;
    if cache_dir != runner.cache_dir {
        eprintln!(
            "{} is not writable; using cache dir {}",
            runner.cache_dir.display(),
            cache_dir.display()
        );
        runner.cache_dir = cache_dir;
    }

    let files = if is_git {
        let listed = capture(&cwd, &["ls-files", "-co", "--exclude-standard", "-z"])
            .await
            .context("git ls-files failed in the working tree")?;
        Some(
            listed
                .split(|b| *b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| PathBuf::from(String::from_utf8_lossy(s).into_owned()))
                .collect(),
        )
    } else {
        None
    };
    // One job: a sidecar started ahead for a next job would only be thrown away.
    runner.docker.isolation.warm_pool = 0;
    runner.docker.isolation.warm_pool_auto = false;
    let backend = crate::isolation::backend_for(&runner)
        .await
        .context("cannot set up the isolation backend")?;
    let pipeline = Pipeline {
        backend,
        artifacts: Arc::new(LocalArtifactStore {
            root: cwd.join(".runner-artifacts"),
        }),
        cache: Some(crate::job::LocalCache::hook()),
        local_tree: Some(LocalTree {
            root: cwd.clone(),
            files,
        }),
        runner_id: "exec".into(),
        staging_root: crate::job::staging::default_staging_root(),
        running: Default::default(),
    };
    let control = JobControl::default();
    let signals = control.clone();
    let watcher = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\ncanceling the job (Ctrl-C again to abort)...");
            signals.cancel_gracefully.cancel();
            if tokio::signal::ctrl_c().await.is_ok() {
                signals.abort.cancel();
            }
        }
    });
    let outcome = pipeline
        .execute(
            built.payload,
            Arc::new(runner),
            Arc::new(TerminalSink),
            control,
        )
        .await;
    watcher.abort();
    Ok(match outcome {
        JobOutcome::Success => ExitCode::SUCCESS,
        JobOutcome::Failed { .. } => ExitCode::from(1),
        JobOutcome::Canceled => ExitCode::from(130),
    })
}
