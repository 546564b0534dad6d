//! `runner doctor`: runs the checks of `crate::doctor` and prints them.

use crate::doctor::{self, facts::Options};
use clap::Args;
use std::process::ExitCode;
use std::time::Duration;

/// Flags of `runner doctor`.
#[derive(Debug, Clone, Args)]
pub struct DoctorArgs {
    /// Config file (without one, or when the default file does not exist, only the host is
    /// checked).
    #[command(flatten)]
    pub config: super::ConfigArg,
    /// Print `{"checks":[{"id","status","message","hint"}]}` instead of the grouped list.
    #[arg(long)]
    pub json: bool,
    /// Start a real sidecar per profile through the dind backend, time it until its daemon
    /// answers over mTLS, and remove it.
    #[arg(long)]
    pub deep: bool,
}

/// Runs the checks; exit 0 when nothing failed, 1 otherwise.
pub async fn run(args: &DoctorArgs) -> anyhow::Result<ExitCode> {
    let opts = Options {
        config_is_default: args.config.config.as_os_str() == super::DEFAULT_CONFIG,
        config_path: Some(args.config.config.clone()),
        deep: args.deep,
        gitlab_timeout: Duration::from_secs(15),
    };
    let report = doctor::run(&opts).await;
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_human());
    }
    Ok(if report.failed() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
