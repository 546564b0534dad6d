//! Loading: walk the `toml_edit` tree (which keeps byte spans, hence line numbers), map known keys
//! into the model, warn about ignored ones, and collect every problem before returning.

mod cache_store;
mod docker;
mod mirror;
mod runner;
mod values;

use super::keys::{self, Section};
use super::model::*;
use super::validate as v;
use super::{Diagnostic, Severity};
use crate::secret::Secret;
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml_edit::{Item, TableLike, Value};

/// Where a key sits: the path shown in messages and its line.
#[derive(Clone)]
struct At {
    path: String,
    line: usize,
}

/// What the caller knows about the file beyond its text.
pub(crate) struct Source<'a> {
    /// Name shown in messages (usually the path as given).
    pub origin: &'a str,
    /// Directory that relative `token_file` paths are resolved against.
    pub base_dir: Option<&'a Path>,
    /// Permission bits of the config file, when it was read from disk.
    pub file_mode: Option<u32>,
}

/// Parses and validates. Returns the config only when there is no error; the diagnostics
/// (errors and warnings, in file order) are returned either way, scrubbed of secrets.
pub(crate) fn parse(text: &str, source: &Source<'_>) -> (Option<Config>, Vec<Diagnostic>) {
    let mut loader = Loader {
        origin: source.origin.to_string(),
        line_starts: std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect(),
        base_dir: source.base_dir.map(Path::to_path_buf),
        diags: Vec::new(),
        secrets: secret_candidates(text),
        inline_token_line: None,
    };
    let config = loader.document(text);
    if let (Some(line), Some(mode)) = (loader.inline_token_line, source.file_mode)
        && mode & 0o077 != 0
    {
        loader.warn(
            &At {
                path: "[[runners]] token".into(),
                line,
            },
            format!(
                "the file holds a runner token but is readable by group or others (mode {:o}); \
                 run `chmod 600` on it, or move the token to a token_file",
                mode & 0o777
            ),
        );
    }
    let Loader {
        mut diags, secrets, ..
    } = loader;
    for d in &mut diags {
        d.message = scrub(&d.message, &secrets);
        d.key_path = scrub(&d.key_path, &secrets);
    }
    diags.sort_by_key(|d| d.line);
    let has_error = diags.iter().any(|d| d.severity == Severity::Error);
    (if has_error { None } else { config }, diags)
}

/// Replaces every known secret value in `text` with `[MASKED]`.
fn scrub(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for s in secrets {
        // Very short values would mask ordinary words; real tokens and keys are long.
        if s.len() >= 6 {
            out = out.replace(s.as_str(), "[MASKED]");
        }
    }
    out
}

/// Values of secret keys found by a plain line scan, so that even a file that does not parse
/// (an unterminated token string, say) cannot leak its token through an error message.
fn secret_candidates(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in text.lines() {
        let line = line.trim_start();
        for key in keys::SECRET_KEYS {
            let Some(rest) = line.strip_prefix(key) else {
                continue;
            };
            let Some(value) = rest.trim_start().strip_prefix('=') else {
                continue;
            };
            let value = value.trim().trim_matches(|c| c == '"' || c == '\'');
            if !value.is_empty() {
                found.push(value.to_string());
            }
        }
    }
    found
}

struct Loader {
    origin: String,
    line_starts: Vec<usize>,
    base_dir: Option<PathBuf>,
    diags: Vec<Diagnostic>,
    secrets: Vec<String>,
    inline_token_line: Option<usize>,
}

/// Side facts from `[runners.docker]` that checks at the `[[runners]]` level need.
#[derive(Default)]
struct DockerFacts {
    volumes: Vec<(At, String, v::VolumeSpec)>,
    privileged: Option<At>,
}

impl Loader {
    fn line_of(&self, span: Option<Range<usize>>) -> Option<usize> {
        let start = span?.start;
        Some(self.line_starts.partition_point(|&s| s <= start))
    }

    fn push(&mut self, at: &At, severity: Severity, message: String) {
        self.diags.push(Diagnostic {
            origin: self.origin.clone(),
            key_path: at.path.clone(),
            line: at.line,
            message,
            severity,
        });
    }

    fn error(&mut self, at: &At, message: impl Into<String>) {
        self.push(at, Severity::Error, message.into());
    }

    fn warn(&mut self, at: &At, message: impl Into<String>) {
        self.push(at, Severity::Warning, message.into());
    }

    /// The position of `key` in `table`, falling back to the value's or the section's line.
    fn at(&self, section: &Section, table: &dyn TableLike, key: &str, fallback: usize) -> At {
        let line = table
            .key(key)
            .and_then(|k| self.line_of(k.span()))
            .or_else(|| table.get(key).and_then(|i| self.line_of(i.span())))
            .unwrap_or(fallback);
        let path = if section.name.is_empty() {
            key.to_string()
        } else {
            format!("{} {key}", section.name)
        };
        At { path, line }
    }

    fn item_line(&self, item: &Item, fallback: usize) -> usize {
        self.line_of(item.span()).unwrap_or(fallback)
    }

    /// A key the section does not map: a warning naming the reason when gitlab-runner knows it;
    /// a warning with a "did you mean" when nobody knows it, because gitlab-runner starts with such
    /// files too (its TOML decoder drops unknown keys). Only in our own
    /// `[runners.docker.isolation]` table is an unknown key an error: nothing else reads it, so a
    /// typo there would silently weaken a security setting.
    fn not_honoured(&mut self, section: &Section, at: &At, key: &str, item: &Item) {
        if keys::SECRET_KEYS.contains(&key)
            && let Some(s) = item.as_str()
        {
            self.secrets.push(s.to_string());
        }
        if let Some(reason) = section.ignored_reason(key) {
            self.warn(at, format!("ignored: {reason}"));
            return;
        }
        let hint = match v::did_you_mean(key, section.all_keys()) {
            Some(s) => format!("; did you mean `{s}`?"),
            None => String::new(),
        };
        let where_ = if section.name.is_empty() {
            "at the top level".to_string()
        } else {
            format!("in {}", section.name)
        };
        if section.name == keys::ISOLATION.name || section.name == keys::MIRROR.name {
            self.error(at, format!("unknown key `{key}` {where_}{hint}"));
        } else {
            self.warn(
                at,
                format!(
                    "unknown key `{key}` {where_}: neither gitlab-runner nor isolated-runner \
                     reads it, so it has no effect{hint}"
                ),
            );
        }
    }

    /// Warns about every key of a table gitlab-runner knows but we ignore as a whole.
    fn ignored_table(&mut self, section: &Section, item: &Item, fallback: usize) {
        let Some(table) = item.as_table_like() else {
            return;
        };
        for (key, value) in table.iter() {
            let at = self.at(section, table, key, fallback);
            self.not_honoured(section, &at, key, value);
        }
    }

    fn document(&mut self, text: &str) -> Option<Config> {
        let doc = match toml_edit::Document::parse(text) {
            Ok(doc) => doc,
            Err(err) => {
                // The error's own Display quotes the offending line, which may hold a token:
                // report only its message and line.
                let at = At {
                    path: "(syntax)".to_string(),
                    line: self.line_of(err.span()).unwrap_or(1),
                };
                let message = err.message().trim().replace('\n', "; ");
                self.error(&at, format!("not valid TOML: {message}"));
                return None;
            }
        };
        let root = doc.as_table();
        let mut config = Config::default();
        let mut saw_runners = false;
        for (key, item) in root.iter() {
            let at = self.at(&keys::GLOBAL, root, key, 1);
            match key {
                "concurrent" => {
                    if let Some(n) = self.integer(&at, item, 1, 100_000) {
                        config.concurrent = n as usize;
                    }
                }
                "check_interval" => {
                    // gitlab-runner: 0 (or unset) means the default of 3 s.
                    if let Some(d) = self.duration(&at, item, true)
                        && !d.is_zero()
                    {
                        config.check_interval = d;
                    }
                }
                "listen_address" => {
                    if let Some(s) = self.string(&at, item) {
                        let ok = s
                            .rsplit_once(':')
                            .is_some_and(|(_, port)| port.parse::<u16>().is_ok());
                        if ok {
                            config.listen_address = Some(s);
                        } else {
                            self.error(
                                &at,
                                format!("`{s}` is not host:port, like \"127.0.0.1:9252\""),
                            );
                        }
                    }
                }
                "shutdown_timeout" => {
                    // gitlab-runner writes 0 for "the default".
                    if let Some(d) = self.duration(&at, item, true)
                        && !d.is_zero()
                    {
                        config.shutdown_timeout = d;
                    }
                }
                "log_level" => {
                    if let Some(s) = self.string(&at, item)
                        && let Some(level) = self.check(&at, v::parse_log_level(&s))
                    {
                        config.log_level = level.to_string();
                    }
                }
                "log_format" => {
                    if let Some(s) = self.string(&at, item)
                        && let Some(format) = self.check(&at, v::parse_log_format(&s))
                    {
                        config.log_format = format.to_string();
                    }
                }
                "state_dir" => {
                    if let Some(p) = self.abs_path(&at, item) {
                        config.state_dir = p;
                    }
                }
                "runners" => {
                    saw_runners = true;
                    for (table, line) in self.tables(&at, item) {
                        if let Some(r) = self.runner(table, line) {
                            config.runners.push(r);
                        }
                    }
                }
                "session_server" => {
                    let line = self.item_line(item, at.line);
                    match item.as_table_like() {
                        Some(t) if !t.is_empty() => {
                            self.ignored_table(&keys::SESSION_SERVER, item, line)
                        }
                        _ => self.not_honoured(&keys::GLOBAL, &at, key, item),
                    }
                }
                _ => self.not_honoured(&keys::GLOBAL, &at, key, item),
            }
        }
        if !saw_runners {
            self.warn(
                &At {
                    path: "[[runners]]".into(),
                    line: 1,
                },
                "there is no [[runners]] entry: the runner will not ask GitLab for jobs; add one with `runner register`",
            );
        }
        Some(config)
    }

    /// The tables of `[[runners]]` (array of tables, or an inline array of inline tables).
    fn tables<'i>(&mut self, at: &At, item: &'i Item) -> Vec<(&'i dyn TableLike, usize)> {
        if let Some(aot) = item.as_array_of_tables() {
            return aot
                .iter()
                .map(|t| {
                    (
                        t as &dyn TableLike,
                        self.line_of(t.span()).unwrap_or(at.line),
                    )
                })
                .collect();
        }
        if let Some(array) = item.as_array() {
            let mut out = Vec::new();
            for value in array.iter() {
                match value.as_inline_table() {
                    Some(t) => out.push((
                        t as &dyn TableLike,
                        self.line_of(t.span()).unwrap_or(at.line),
                    )),
                    None => self.error(at, format!("expected tables, found {}", value.type_name())),
                }
            }
            return out;
        }
        self.error(
            at,
            format!("expected [[runners]] tables, found {}", describe(item)),
        );
        Vec::new()
    }

    fn error_count(&self) -> usize {
        self.diags
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count()
    }

    fn resolve(&self, path: &str) -> PathBuf {
        let p = Path::new(path);
        match &self.base_dir {
            Some(base) if p.is_relative() => base.join(p),
            _ => p.to_path_buf(),
        }
    }
}

/// The kind of a value, for type errors (never the value itself: it may be a secret).
fn describe(item: &Item) -> &'static str {
    match item {
        Item::None => "nothing",
        Item::Value(Value::String(_)) => "a string",
        Item::Value(Value::Integer(_)) => "an integer",
        Item::Value(Value::Float(_)) => "a float",
        Item::Value(Value::Boolean(_)) => "a boolean",
        Item::Value(Value::Datetime(_)) => "a date",
        Item::Value(Value::Array(_)) => "an array",
        Item::Value(Value::InlineTable(_)) | Item::Table(_) => "a table",
        Item::ArrayOfTables(_) => "an array of tables",
    }
}
