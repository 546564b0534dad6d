//! `runner unregister`: removes runners from GitLab and from the config file.
//!
//! A `glrt-` runner was made in GitLab's UI: only this machine's runner manager is removed
//! (`DELETE /runners/managers`). A legacy runner is deleted (`DELETE /runners`).

use super::run::{read_doc, state_dir_of};
use crate::gitlab::identity;
use crate::gitlab::{Client, ClientOptions};
use anyhow::{Context, bail};
use clap::Args;
use std::process::ExitCode;

/// Flags of `runner unregister`.
#[derive(Debug, Clone, Args)]
pub struct UnregisterArgs {
    /// Config file.
    #[command(flatten)]
    pub config: super::ConfigArg,
    /// The runner with this name.
    #[arg(long = "name", short = 'n')]
    pub name: Option<String>,
    /// The runner with this URL (with --token).
    #[arg(long = "url", short = 'u')]
    pub url: Option<String>,
    /// The runner with this token (with --url).
    #[arg(long = "token", short = 't')]
    pub token: Option<String>,
    /// Every runner of the config file.
    #[arg(long = "all-runners")]
    pub all_runners: bool,
}

/// Unregisters; exit 1 when GitLab refused any removal.
pub async fn run(args: &UnregisterArgs) -> anyhow::Result<ExitCode> {
    let path = &args.config.config;
    let mut doc = read_doc(path).await?;
    let system_id = identity::system_id(&state_dir_of(&doc))
        .await
        .context("cannot make the system id")?;
    let selected: Vec<_> = identity::list_runners(&doc)
        .into_iter()
        .filter(|r| {
            args.all_runners
                || args.name.as_ref().is_some_and(|n| *n == r.name)
                || (args.token.as_deref() == Some(r.token.expose())
                    && args.url.as_ref().is_none_or(|u| *u == r.url))
        })
        .collect();
    if selected.is_empty() {
        bail!(
            "no matching runner in {} (use --name, --url with --token, or --all-runners)",
            path.display()
        );
    }
    let mut removed = Vec::new();
    let mut failed = false;
    for r in selected {
        let url = url::Url::parse(&r.url).with_context(|| format!("runner {}: bad url", r.name))?;
        let client = Client::new(&url, ClientOptions::default())?;
        let result = if identity::is_authentication_token(r.token.expose()) {
            client.unregister_manager(&r.token, &system_id).await
        } else {
            client.unregister_runner(&r.token).await
        };
        match result {
            Ok(()) => {
                println!("Unregistered runner {}", r.name);
                removed.push(r.token.clone());
            }
            Err(e) => {
                eprintln!("error: runner {}: {e}", r.name);
                failed = true;
            }
        }
    }
    if !removed.is_empty() {
        identity::remove_runners(&mut doc, |e| removed.contains(&e.token));
        identity::write_private(path, doc.to_string().as_bytes())
            .await
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
