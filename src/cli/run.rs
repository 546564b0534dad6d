//! `runner run -c FILE`: the daemon.
//!
//! Until `config::load` lands this file carries a minimal reader of the keys the daemon needs
//! (`concurrent`, `check_interval`, `shutdown_timeout`, `state_dir`, `[[runners]]` name, url,
//! token, limit, request_concurrency, output_limit, builds_dir, cache_dir, docker.image); the
//! lead swaps [`load_config`] for `config::load`.

use crate::config::{Config, RunnerConfig};
use crate::daemon;
use crate::gitlab::types::JobResponse;
use crate::job::{FailureReason, JobControl, JobExecutor, JobOutcome};
use crate::secret::Secret;
use crate::trace::TraceSink;
use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Reads the config file as an editable TOML document; a missing file is an empty document.
pub(crate) async fn read_doc(path: &Path) -> anyhow::Result<toml_edit::DocumentMut> {
    match tokio::fs::read_to_string(path).await {
        Ok(text) => text
            .parse()
            .with_context(|| format!("cannot parse {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(toml_edit::DocumentMut::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// `state_dir` of the document, else the built-in default.
pub(crate) fn state_dir_of(doc: &toml_edit::DocumentMut) -> PathBuf {
    doc.get("state_dir")
        .and_then(|v| v.as_str())
        .map(PathBuf::from)
        .unwrap_or_else(|| Config::default().state_dir)
}

/// Minimal config reader; replaced by `config::load` at merge.
pub(crate) async fn load_config(path: &Path) -> anyhow::Result<Config> {
    let doc = read_doc(path).await?;
    if doc.as_table().is_empty() {
        bail!("{}: no such config file or it is empty", path.display());
    }
    let int = |t: &toml_edit::Item, k: &str| t.get(k).and_then(|v| v.as_integer());
    let root = doc.as_item();
    let mut config = Config::default();
    if let Some(c) = int(root, "concurrent") {
        config.concurrent = usize::try_from(c).context("concurrent must not be negative")?;
    }
    if let Some(c) = int(root, "check_interval").filter(|c| *c > 0) {
        config.check_interval = Duration::from_secs(c as u64);
    }
    if let Some(c) = int(root, "shutdown_timeout").filter(|c| *c > 0) {
        config.shutdown_timeout = Duration::from_secs(c as u64);
    }
    config.state_dir = state_dir_of(&doc);
    let Some(runners) = doc.get("runners").and_then(|r| r.as_array_of_tables()) else {
        bail!("{}: no [[runners]] entry", path.display());
    };
    for (i, t) in runners.iter().enumerate() {
        let s = |k: &str| t.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let mut r = RunnerConfig::default();
        if let Some(n) = s("name") {
            r.name = n;
        }
        let url = s("url").with_context(|| format!("[[runners]] #{}: url is missing", i + 1))?;
        r.url =
            url::Url::parse(&url).with_context(|| format!("[[runners]] #{}: bad url", i + 1))?;
        r.token = Secret::new(
            s("token").with_context(|| format!("[[runners]] #{}: token is missing", i + 1))?,
        );
        if let Some(l) = t.get("limit").and_then(|v| v.as_integer()) {
            r.limit = usize::try_from(l).unwrap_or(0);
        }
        if let Some(l) = t.get("request_concurrency").and_then(|v| v.as_integer()) {
            r.request_concurrency = usize::try_from(l).unwrap_or(1).max(1);
        }
        if let Some(l) = t.get("output_limit").and_then(|v| v.as_integer()) {
            r.output_limit = u64::try_from(l).unwrap_or(4096) * 1024;
        }
        if let Some(b) = s("builds_dir") {
            r.builds_dir = b.into();
        }
        if let Some(b) = s("cache_dir") {
            r.cache_dir = b.into();
        }
        if let Some(img) = t
            .get("docker")
            .and_then(|d| d.get("image"))
            .and_then(|v| v.as_str())
        {
            r.docker.image = img.to_string();
        }
        config.runners.push(r);
    }
    Ok(config)
}

/// Stand-in executor until the job pipeline is wired: fails every job cleanly.
struct PipelineNotWired;

#[async_trait::async_trait]
impl JobExecutor for PipelineNotWired {
    async fn execute(
        &self,
        _job: JobResponse,
        _runner: Arc<RunnerConfig>,
        trace: Arc<dyn TraceSink>,
        _control: JobControl,
    ) -> JobOutcome {
        trace.append(b"ERROR: this build of isolated-runner has no job pipeline wired in yet\n");
        JobOutcome::Failed {
            reason: FailureReason::RunnerSystemFailure,
            exit_code: None,
        }
    }
}

/// Runs the daemon until a signal stops it.
pub async fn run(config_path: &Path) -> anyhow::Result<ExitCode> {
    let config = load_config(config_path).await?;
    let signals = daemon::OsSignals::new().context("cannot install signal handlers")?;
    daemon::run(config, Arc::new(PipelineNotWired), signals).await?;
    Ok(ExitCode::SUCCESS)
}
