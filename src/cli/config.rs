//! `runner config check FILE`: print every error and warning with its line, then a summary.

use super::ConfigCommand;
use crate::config::{self, Diagnostic, Severity};
use std::path::Path;
use std::process::ExitCode;

/// Runs a `runner config ...` verb.
pub async fn run(command: ConfigCommand) -> anyhow::Result<ExitCode> {
    match command {
        ConfigCommand::Check { file } => {
            // Loading reads files with std::fs; keep it off the async workers.
            let report = tokio::task::spawn_blocking(move || check_report(&file)).await?;
            print!("{}", report.text);
            Ok(if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

/// The printed report and whether the config is usable.
struct Report {
    text: String,
    ok: bool,
}

/// Builds the report: errors first, then warnings, each `error: file:line: key: message`, then
/// one summary line.
fn check_report(file: &Path) -> Report {
    let origin = file.display().to_string();
    let diagnostics: Vec<Diagnostic> = match config::load(file) {
        Ok(loaded) => loaded.warnings,
        Err(config::Error::Invalid { diagnostics, .. }) => diagnostics,
        Err(err @ config::Error::Read { .. }) => {
            let cause = std::error::Error::source(&err)
                .map(|c| format!(": {c}"))
                .unwrap_or_default();
            return Report {
                text: format!("error: {err}{cause}\n{origin}: not checked\n"),
                ok: false,
            };
        }
    };
    let mut sorted: Vec<&Diagnostic> = diagnostics.iter().collect();
    sorted.sort_by_key(|d| (d.severity, d.line));
    let mut text = String::new();
    for d in &sorted {
        text.push_str(&format!("{}: {d}\n", d.severity.as_str()));
    }
    let errors = sorted
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    let warnings = sorted.len() - errors;
    let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    let verdict = if errors == 0 { "ok" } else { "invalid" };
    text.push_str(&format!(
        "{origin}: {verdict}: {}, {}\n",
        plural(errors, "error"),
        plural(warnings, "warning")
    ));
    Report {
        text,
        ok: errors == 0,
    }
}
