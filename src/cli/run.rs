//! `runner run -c FILE`: the daemon.

use crate::config::Config;
use crate::daemon;
use crate::gitlab::ClientOptions;
use crate::job::RunnerExecutor;
use anyhow::Context;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

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

/// Runs the daemon until a signal stops it.
pub async fn run(config_path: &Path) -> anyhow::Result<ExitCode> {
    let config = super::load_config(config_path).await?;
    let system_id = crate::gitlab::identity::system_id(&config.state_dir)
        .await
        .with_context(|| {
            format!(
                "cannot read or create the system id in {}",
                config.state_dir.display()
            )
        })?;
    let journal = Arc::new(
        daemon::Journal::open(&config.state_dir)
            .await
            .context("cannot open the crash journal")?,
    );
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let executor = RunnerExecutor::new(
        system_id.clone(),
        config.state_dir.clone(),
        ClientOptions::default(),
        None,
    )
    .with_concurrent(config.concurrent)
    .with_metrics(metrics.clone())
    .with_observer(journal.clone());
    let signals = daemon::OsSignals::new().context("cannot install signal handlers")?;
    let options = daemon::DaemonOptions {
        system_id: Some(system_id),
        journal: Some(journal),
        metrics: Some(metrics),
        reap_at_start: true,
        config_path: Some(config_path.to_path_buf()),
        ..daemon::DaemonOptions::default()
    };
    daemon::run_with(config, Arc::new(executor), signals, options).await?;
    Ok(ExitCode::SUCCESS)
}
