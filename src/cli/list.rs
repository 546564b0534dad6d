//! `runner list`: the runners of the config file (tokens shortened).

use super::run::read_doc;
use crate::gitlab::identity;
use std::process::ExitCode;

/// Prints one line per `[[runners]]` entry.
pub async fn run(args: &super::ConfigArg) -> anyhow::Result<ExitCode> {
    let doc = read_doc(&args.config).await?;
    eprintln!(
        "Listing configured runners ConfigFile={}",
        args.config.display()
    );
    for r in identity::list_runners(&doc) {
        println!(
            "{:<20} Executor=docker Token={} URL={}",
            r.name,
            identity::short_token(r.token.expose()),
            r.url
        );
    }
    Ok(ExitCode::SUCCESS)
}
