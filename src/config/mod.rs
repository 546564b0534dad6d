//! Configuration: gitlab-runner's `config.toml` format plus `[runners.docker.isolation]`.
//!
//! [`load`] reads a file, maps every key gitlab-runner documents for the docker executor into
//! the [model](Config) or warns that it is ignored (naming key, line and reason), refuses keys
//! nobody knows (with a "did you mean"), validates values, and reports **all** problems at once.
//! Secrets (runner tokens, cache keys) never appear in a diagnostic.
//!
//! Loading reads files with `std::fs` (the config and any `token_file`): from async code, call
//! it inside `tokio::task::spawn_blocking`.

mod cache_store;
mod instance;
mod keys;
mod load;
mod mirror;
mod model;
pub mod validate;

pub use cache_store::*;
pub use instance::instance_key;
pub use mirror::*;
pub use model::*;

use std::fmt;
use std::path::{Path, PathBuf};

/// How serious a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// The config cannot be used.
    Error,
    /// The config loads, but something is ignored or risky.
    Warning,
}

impl Severity {
    /// `error` or `warning`.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

/// One finding about a config file, tied to a key and a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file name as given (`config.toml`, `/etc/isolated-runner/config.toml`).
    pub origin: String,
    /// Section and key, e.g. `[runners.docker] volumes`; just the key at the top level.
    pub key_path: String,
    /// 1-based line number.
    pub line: usize,
    /// What is wrong and what to do; never contains a secret.
    pub message: String,
    /// Error or warning.
    pub severity: Severity,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {}: {}",
            self.origin, self.line, self.key_path, self.message
        )
    }
}

/// A config that loaded, with the warnings found on the way.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The validated configuration.
    pub config: Config,
    /// Ignored keys and risky settings, in file order.
    pub warnings: Vec<Diagnostic>,
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read config file {}", path.display())]
    Read {
        /// The path as given.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file has errors. `diagnostics` holds every error and every warning, in file order.
    #[error("{}", list_invalid(origin, diagnostics))]
    Invalid {
        /// The file name as given.
        origin: String,
        /// All findings (errors and warnings).
        diagnostics: Vec<Diagnostic>,
    },
}

impl Error {
    /// Every diagnostic carried by this error (empty for [`Error::Read`]).
    pub fn diagnostics(&self) -> &[Diagnostic] {
        match self {
            Error::Read { .. } => &[],
            Error::Invalid { diagnostics, .. } => diagnostics,
        }
    }
}

fn list_invalid(origin: &str, diagnostics: &[Diagnostic]) -> String {
    let errors = diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count();
    let mut out = format!(
        "{origin}: {errors} error{} in the configuration",
        if errors == 1 { "" } else { "s" }
    );
    let mut sorted: Vec<&Diagnostic> = diagnostics.iter().collect();
    sorted.sort_by_key(|d| (d.severity, d.line));
    for d in sorted {
        out.push_str(&format!("\n  {}: {d}", d.severity.as_str()));
    }
    out
}

/// Reads, parses and validates a config file. Relative `token_file` paths are resolved against
/// the file's directory. Blocking: see the module docs.
pub fn load(path: &Path) -> Result<Loaded, Error> {
    use std::os::unix::fs::PermissionsExt;
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mode = std::fs::metadata(path).ok().map(|m| m.permissions().mode());
    let origin = path.display().to_string();
    let source = load::Source {
        origin: &origin,
        base_dir: path.parent(),
        file_mode: mode,
    };
    finish(load::parse(&text, &source), &origin)
}

/// `log_level` and `log_format` of a config file, read before logging starts (and before the
/// file is fully loaded, which logs its warnings). Anything missing, unreadable or invalid is
/// `None`: the full load reports it. Blocking: see the module docs.
pub fn peek_logging(path: &Path) -> (Option<&'static str>, Option<&'static str>) {
    let Ok(text) = std::fs::read_to_string(path) else {
        return (None, None);
    };
    let Ok(doc) = text.parse::<toml_edit::DocumentMut>() else {
        return (None, None);
    };
    let get = |key: &str, parse: fn(&str) -> Result<&'static str, String>| {
        doc.get(key)
            .and_then(|i| i.as_str())
            .and_then(|s| parse(s).ok())
    };
    (
        get("log_level", validate::parse_log_level),
        get("log_format", validate::parse_log_format),
    )
}

/// Parses and validates config text. `origin_name` is the file name used in messages; relative
/// `token_file` paths are resolved against the current directory.
pub fn load_str(text: &str, origin_name: &str) -> Result<Loaded, Error> {
    let source = load::Source {
        origin: origin_name,
        base_dir: None,
        file_mode: None,
    };
    finish(load::parse(text, &source), origin_name)
}

fn finish(
    (config, diagnostics): (Option<Config>, Vec<Diagnostic>),
    origin: &str,
) -> Result<Loaded, Error> {
    match config {
        Some(config) if diagnostics.iter().all(|d| d.severity != Severity::Error) => Ok(Loaded {
            config,
            warnings: diagnostics,
        }),
        _ => Err(Error::Invalid {
            origin: origin.to_string(),
            diagnostics,
        }),
    }
}

#[cfg(test)]
mod tests;
