//! `runner config check [--strict] FILE`: print every error and warning with its line, then a
//! summary. Warnings fail the check only with `--strict`.

use super::ConfigCommand;
use crate::config::{self, Diagnostic, Severity};
use std::path::Path;
use std::process::ExitCode;

/// Runs a `runner config ...` verb.
pub async fn run(command: ConfigCommand) -> anyhow::Result<ExitCode> {
    match command {
        ConfigCommand::Check { file, strict } => {
            // Loading reads files with std::fs; keep it off the async workers.
            let report = tokio::task::spawn_blocking(move || check_report(&file, strict)).await?;
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
/// one summary line. With `strict`, any warning makes the config fail the check.
fn check_report(file: &Path, strict: bool) -> Report {
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
    let ok = errors == 0 && !(strict && warnings > 0);
    let verdict = match (errors, ok) {
        (0, true) => "ok",
        (0, false) => "fails --strict",
        _ => "invalid",
    };
    text.push_str(&format!(
        "{origin}: {verdict}: {}, {}\n",
        plural(errors, "error"),
        plural(warnings, "warning")
    ));
    Report { text, ok }
}
