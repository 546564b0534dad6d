//! `runner verify`: checks every runner token of the config with `POST /runners/verify`.

use super::run::{read_doc, state_dir_of};
use crate::gitlab::identity;
use crate::gitlab::{Client, ClientOptions};
use anyhow::Context;
use clap::Args;
use std::process::ExitCode;

/// Flags of `runner verify`.
#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    /// Config file.
    #[command(flatten)]
    pub config: super::ConfigArg,
    /// Remove runners GitLab no longer knows from the config file.
    #[arg(long = "delete")]
    pub delete: bool,
    /// Only the runner with this name.
    #[arg(long = "name")]
    pub name: Option<String>,
}

/// Verifies; exit 1 when any token is refused.
pub async fn run(args: &VerifyArgs) -> anyhow::Result<ExitCode> {
    let path = &args.config.config;
    let mut doc = read_doc(path).await?;
    let system_id = identity::system_id(&state_dir_of(&doc))
        .await
        .context("cannot make the system id")?;
    let info = identity::runner_info();
    let mut invalid = Vec::new();
    let runners = identity::list_runners(&doc);
    if runners.is_empty() {
        eprintln!("no [[runners]] in {}", path.display());
        return Ok(ExitCode::from(1));
    }
    for r in runners {
        if args.name.as_ref().is_some_and(|n| *n != r.name) {
            continue;
        }
        let short = identity::short_token(r.token.expose());
        let url = url::Url::parse(&r.url).with_context(|| format!("runner {}: bad url", r.name))?;
        let client = Client::new(&url, ClientOptions::default())?;
        match client.verify(&r.token, &system_id, &info).await {
            Ok(_) => println!(
                "Verifying runner... is valid   name={} token={short} url={}",
                r.name, r.url
            ),
            Err(e) if e.status() == Some(403) || e.status() == Some(422) => {
                println!(
                    "Verifying runner... is removed or invalid   name={} token={short} url={}",
                    r.name, r.url
                );
                invalid.push(r.token.clone());
            }
            Err(e) => {
                eprintln!("error: runner {}: {e}", r.name);
                return Ok(ExitCode::from(1));
            }
        }
    }
    if invalid.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    if args.delete {
        identity::remove_runners(&mut doc, |e| invalid.contains(&e.token));
        identity::write_private(path, doc.to_string().as_bytes())
            .await
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!(
            "Removed {} invalid runner(s) from {}",
            invalid.len(),
            path.display()
        );
    }
    Ok(ExitCode::from(1))
}
