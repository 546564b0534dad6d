//! Loading: walk the `toml_edit` tree (which keeps byte spans, hence line numbers), map known keys
//! into the model, warn about ignored ones, and collect every problem before returning.

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

mod cache_store;

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
        if section.name == keys::ISOLATION.name {
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

    fn type_error(&mut self, at: &At, expected: &str, item: &Item) {
        self.error(at, format!("expected {expected}, found {}", describe(item)));
    }

    fn string(&mut self, at: &At, item: &Item) -> Option<String> {
        match item.as_str() {
            Some(s) => Some(s.to_string()),
            None => {
                self.type_error(at, "a string", item);
                None
            }
        }
    }

    fn non_empty_string(&mut self, at: &At, item: &Item) -> Option<String> {
        let s = self.string(at, item)?;
        if s.trim().is_empty() {
            self.error(at, "must not be empty");
            return None;
        }
        Some(s)
    }

    fn boolean(&mut self, at: &At, item: &Item) -> Option<bool> {
        match item.as_bool() {
            Some(b) => Some(b),
            None => {
                self.type_error(at, "true or false", item);
                None
            }
        }
    }

    fn integer(&mut self, at: &At, item: &Item, min: i64, max: i64) -> Option<i64> {
        let Some(n) = item.as_integer() else {
            self.type_error(at, "an integer", item);
            return None;
        };
        if n < min || n > max {
            self.error(at, format!("{n} is out of range ({min} to {max})"));
            return None;
        }
        Some(n)
    }

    fn strings(&mut self, at: &At, item: &Item) -> Option<Vec<String>> {
        let Some(array) = item.as_array() else {
            self.type_error(at, "an array of strings", item);
            return None;
        };
        let mut out = Vec::new();
        for value in array.iter() {
            match value.as_str() {
                Some(s) => out.push(s.to_string()),
                None => {
                    let at = At {
                        line: self.line_of(value.span()).unwrap_or(at.line),
                        ..at.clone()
                    };
                    self.error(
                        &at,
                        format!("expected strings in the array, found {}", value.type_name()),
                    );
                    return None;
                }
            }
        }
        Some(out)
    }

    /// A string or an array of strings (gitlab-runner accepts both for `pull_policy`).
    fn one_or_many(&mut self, at: &At, item: &Item) -> Option<Vec<String>> {
        match item.as_str() {
            Some(s) => Some(vec![s.to_string()]),
            None => self.strings(at, item),
        }
    }

    /// A path that must be absolute.
    fn abs_path(&mut self, at: &At, item: &Item) -> Option<PathBuf> {
        let s = self.string(at, item)?;
        self.check(at, v::parse_absolute_path(&s))
    }

    fn check<T>(&mut self, at: &At, result: Result<T, String>) -> Option<T> {
        match result {
            Ok(t) => Some(t),
            Err(message) => {
                self.error(at, message);
                None
            }
        }
    }

    /// A duration written as a humantime string, or (for gitlab-runner's keys) as an integer
    /// number of seconds.
    fn duration(&mut self, at: &At, item: &Item, integer_seconds: bool) -> Option<Duration> {
        if integer_seconds && let Some(n) = item.as_integer() {
            if n < 0 {
                self.error(at, format!("{n} seconds: must not be negative"));
                return None;
            }
            return Some(Duration::from_secs(n.unsigned_abs()));
        }
        let Some(s) = item.as_str() else {
            let expected = if integer_seconds {
                "a number of seconds or a duration string like \"30s\""
            } else {
                "a duration string like \"60s\""
            };
            self.type_error(at, expected, item);
            return None;
        };
        self.check(at, v::parse_duration(s))
    }

    fn positive_duration(&mut self, at: &At, item: &Item, secs: bool) -> Option<Duration> {
        let d = self.duration(at, item, secs)?;
        if d.is_zero() {
            self.error(at, "must be more than zero");
            return None;
        }
        Some(d)
    }

    /// A size: a Docker-style string (`"4g"`) or an integer number of bytes.
    fn size(&mut self, at: &At, item: &Item) -> Option<u64> {
        if let Some(n) = item.as_integer() {
            return self.check(
                at,
                u64::try_from(n).map_err(|_| format!("{n}: a size must not be negative")),
            );
        }
        let Some(s) = item.as_str() else {
            self.type_error(at, "a size like \"512m\" or \"4g\"", item);
            return None;
        };
        self.check(at, v::parse_size(s))
    }

    /// CPUs: gitlab-runner writes them as a string (`"1.5"`); a number is accepted too.
    fn cpus(&mut self, at: &At, item: &Item) -> Option<f64> {
        if let Some(s) = item.as_str() {
            return self.check(at, v::parse_cpus(s));
        }
        let number = item
            .as_float()
            .or_else(|| item.as_integer().map(|n| n as f64));
        match number {
            Some(n) => self.check(at, v::check_cpus(n)),
            None => {
                self.type_error(at, "a number of CPUs like \"2\"", item);
                None
            }
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

    fn runner(&mut self, t: &dyn TableLike, header: usize) -> Option<RunnerConfig> {
        let s = &keys::RUNNER;
        let mut r = RunnerConfig::default();
        let mut url = None;
        let mut token: Option<(At, Secret)> = None;
        let mut token_file: Option<At> = None;
        let mut facts = DockerFacts::default();
        let mut ok = true;
        for (key, item) in t.iter() {
            let at = self.at(s, t, key, header);
            let errors_before = self.error_count();
            match key {
                "name" => {
                    if let Some(v) = self.string(&at, item) {
                        r.name = v;
                    }
                }
                "url" => {
                    if let Some(s) = self.string(&at, item) {
                        url = self.check(&at, v::parse_http_url(&s));
                    }
                }
                "token" => {
                    if let Some(value) = item.as_str() {
                        self.secrets.push(value.to_string());
                        self.inline_token_line = self.inline_token_line.or(Some(at.line));
                        if value.trim().is_empty() {
                            // An entry without a token still serves `runner exec`; `runner run`
                            // refuses it at start-up.
                            self.warn(&at, "the token is empty: this entry can only serve `runner exec`; register it with `runner register` before `runner run`");
                        } else {
                            token = Some((at.clone(), Secret::new(value.trim())));
                        }
                    } else {
                        self.type_error(&at, "a string", item);
                    }
                }
                "token_file" => {
                    token_file = Some(at.clone());
                    if let Some(path) = self.non_empty_string(&at, item)
                        && let Some((path, secret)) = self.read_token_file(&at, &path)
                    {
                        r.token_file = Some(path);
                        r.token = secret;
                    }
                }
                "tls-ca-file" => {
                    if let Some(p) = self.non_empty_string(&at, item) {
                        r.tls_ca_file = Some(self.resolve(&p));
                    }
                }
                "clone_url" => {
                    if let Some(s) = self.string(&at, item)
                        && !s.trim().is_empty()
                    {
                        r.clone_url = self.check(&at, v::parse_http_url(&s));
                    }
                }
                "executor" => {
                    if let Some(e) = self.string(&at, item)
                        && e != "docker"
                    {
                        self.error(
                            &at,
                            format!(
                                "executor `{e}` is not supported: isolated-runner only runs the docker executor; set executor = \"docker\""
                            ),
                        );
                    }
                }
                "limit" => {
                    if let Some(n) = self.integer(&at, item, 0, 100_000) {
                        r.limit = n as usize;
                    }
                }
                "request_concurrency" => {
                    // gitlab-runner treats 0 as 1.
                    if let Some(n) = self.integer(&at, item, 0, 1000) {
                        r.request_concurrency = (n as usize).max(1);
                    }
                }
                "builds_dir" => {
                    if let Some(p) = self.abs_path(&at, item) {
                        r.builds_dir = p;
                    }
                }
                "cache_dir" => {
                    if let Some(p) = self.abs_path(&at, item) {
                        r.cache_dir = p;
                    }
                }
                "environment" => {
                    if let Some(entries) = self.strings(&at, item) {
                        for e in entries {
                            if let Some(pair) = self.check(&at, v::parse_env_entry(&e)) {
                                r.environment.push(pair);
                            }
                        }
                    }
                }
                "pre_get_sources_script" => r.pre_get_sources_script = self.string(&at, item),
                "post_get_sources_script" => r.post_get_sources_script = self.string(&at, item),
                "pre_clone_script" => {
                    self.warn(
                        &at,
                        "deprecated in gitlab-runner: read as pre_get_sources_script; rename it",
                    );
                    if r.pre_get_sources_script.is_none() {
                        r.pre_get_sources_script = self.string(&at, item);
                    }
                }
                "post_clone_script" => {
                    self.warn(
                        &at,
                        "deprecated in gitlab-runner: read as post_get_sources_script; rename it",
                    );
                    if r.post_get_sources_script.is_none() {
                        r.post_get_sources_script = self.string(&at, item);
                    }
                }
                "pre_build_script" => r.pre_build_script = self.string(&at, item),
                "post_build_script" => r.post_build_script = self.string(&at, item),
                "output_limit" => {
                    // In KiB, as gitlab-runner writes it.
                    if let Some(n) = self.integer(&at, item, 1, i64::from(u32::MAX)) {
                        r.output_limit = n.unsigned_abs() * 1024;
                    }
                }
                "docker" => match item.as_table_like() {
                    Some(dt) => {
                        let line = self.item_line(item, at.line);
                        r.docker = self.docker(dt, line, &mut facts);
                    }
                    None => self.type_error(&at, "a table", item),
                },
                "cache" => match item.as_table_like() {
                    Some(ct) => {
                        let line = self.item_line(item, at.line);
                        r.cache = self.cache(ct, line);
                    }
                    None => self.type_error(&at, "a table", item),
                },
                "custom_build_dir" => match item.as_table_like() {
                    Some(ct) => {
                        let line = self.item_line(item, at.line);
                        for (k, value) in ct.iter() {
                            let at = self.at(&keys::CUSTOM_BUILD_DIR, ct, k, line);
                            match k {
                                "enabled" => {
                                    if let Some(b) = self.boolean(&at, value) {
                                        r.custom_build_dir = b;
                                    }
                                }
                                _ => self.not_honoured(&keys::CUSTOM_BUILD_DIR, &at, k, value),
                            }
                        }
                    }
                    None => self.type_error(&at, "a table", item),
                },
                "feature_flags" => match item.as_table_like() {
                    Some(ft) => {
                        let line = self.item_line(item, at.line);
                        for (k, value) in ft.iter() {
                            let section = Section {
                                name: "[runners.feature_flags]",
                                honoured: &[],
                                ignored: &[],
                            };
                            let at = self.at(&section, ft, k, line);
                            if value.as_bool().is_none() {
                                // gitlab-runner decodes this table as a map of booleans.
                                self.type_error(&at, "true or false", value);
                            } else if !k.starts_with("FF_") {
                                self.warn(
                                    &at,
                                    format!(
                                        "`{k}` is not a feature flag (they are named FF_...); it has no effect"
                                    ),
                                );
                            } else {
                                self.warn(&at, format!("ignored: {}", keys::FEATURE_FLAG_REASON));
                            }
                        }
                    }
                    None => self.type_error(&at, "a table", item),
                },
                _ => self.not_honoured(s, &at, key, item),
            }
            ok &= self.error_count() == errors_before;
        }
        let header_at = At {
            path: "[[runners]]".into(),
            line: header,
        };
        match url {
            Some(u) => r.url = u,
            None => {
                if t.get("url").is_none() {
                    self.error(&header_at, "`url` is missing: set it to your GitLab's address, like \"https://gitlab.example.com/\"");
                }
                ok = false;
            }
        }
        match (token, &token_file) {
            (Some((at, _)), Some(_)) => {
                self.error(&at, "both `token` and `token_file` are set; keep one");
                ok = false;
            }
            (Some((_, secret)), None) => r.token = secret,
            (None, Some(_)) => {}
            (None, None) => {
                if t.get("token").is_none() {
                    self.warn(&header_at, "no `token` or `token_file`: this entry can only serve `runner exec`; register it with `runner register` before `runner run`");
                }
            }
        }
        self.runner_checks(&r, &facts);
        ok.then_some(r)
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

    /// Reads a token file (relative paths are relative to the config file's directory).
    fn read_token_file(&mut self, at: &At, path: &str) -> Option<(PathBuf, Secret)> {
        let path = self.resolve(path);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                self.error(at, format!("cannot read {}: {e}", path.display()));
                return None;
            }
        };
        let token = text.trim().to_string();
        if token.is_empty() {
            self.error(at, format!("{} is empty", path.display()));
            return None;
        }
        self.secrets.push(token.clone());
        {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(&path) {
                let mode = meta.permissions().mode();
                if mode & 0o077 != 0 {
                    self.warn(
                        at,
                        format!(
                            "{} is readable by group or others (mode {:o}): anyone who can read it can take jobs as this runner; run `chmod 600` on it",
                            path.display(),
                            mode & 0o777
                        ),
                    );
                }
            }
        }
        Some((path, Secret::new(token)))
    }

    fn runner_checks(&mut self, r: &RunnerConfig, facts: &DockerFacts) {
        let mode = r.docker.isolation.mode;
        for (at, text, volume) in &facts.volumes {
            if let Some(host) = volume.host_path()
                && v::exposes_docker_socket(&host)
            {
                if mode == IsolationMode::Dind {
                    let what = if host
                        .file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.contains("docker.sock"))
                    {
                        format!("mounts the host Docker socket {}", host.display())
                    } else {
                        format!(
                            "mounts {}, which contains the host Docker socket",
                            host.display()
                        )
                    };
                    self.error(
                        at,
                        format!(
                            "`{}` {what} into every job: any job could take over the host \
                             (start privileged containers, read every other job's files and \
                             secrets); remove this volume: in isolated mode each job gets its \
                             own Docker daemon at DOCKER_HOST (or set \
                             [runners.docker.isolation] mode = \"shared-socket\" on a trusted host)",
                            text
                        ),
                    );
                }
                continue;
            }
            if let Some(message) = v::shared_volume_warning(volume, &r.builds_dir, &r.cache_dir) {
                self.warn(at, format!("`{text}` {message}"));
            }
        }
        if let Some(at) = &facts.privileged
            && mode == IsolationMode::Dind
        {
            self.warn(
                at,
                "ignored in isolated mode: the job container is never privileged; it does not \
                 need to be, because `docker` in the job talks to its own daemon. The sidecar's \
                 privileges come from [runners.docker.isolation] sidecar_profile; remove this line",
            );
        }
    }

    fn docker(
        &mut self,
        t: &dyn TableLike,
        header: usize,
        facts: &mut DockerFacts,
    ) -> DockerConfig {
        let s = &keys::DOCKER;
        let mut d = DockerConfig::default();
        let mut docker_mtu: Option<u32> = None;
        let mut isolation_mtu_set = false;
        let mut saw_image = false;
        for (key, item) in t.iter() {
            let at = self.at(s, t, key, header);
            match key {
                "host" => {
                    if let Some(h) = self.non_empty_string(&at, item) {
                        d.host = Some(h);
                    }
                }
                "image" => {
                    saw_image = true;
                    if let Some(i) = self.non_empty_string(&at, item) {
                        d.image = i;
                    }
                }
                "helper_image" => d.helper_image = self.non_empty_string(&at, item),
                "volumes" => {
                    if let Some(list) = self.strings(&at, item) {
                        let lines: Vec<usize> = item
                            .as_array()
                            .map(|a| {
                                a.iter()
                                    .map(|x| self.line_of(x.span()).unwrap_or(at.line))
                                    .collect()
                            })
                            .unwrap_or_default();
                        for (i, spec) in list.iter().enumerate() {
                            let vat = At {
                                path: at.path.clone(),
                                line: lines.get(i).copied().unwrap_or(at.line),
                            };
                            if let Some(parsed) = self.check(&vat, v::parse_volume(spec)) {
                                facts.volumes.push((vat, spec.clone(), parsed));
                            }
                        }
                        d.volumes = list;
                    }
                }
                "memory" => d.memory = self.size(&at, item),
                "memory_swap" => {
                    // Docker's convention: -1 lifts the swap limit.
                    if item.as_integer() == Some(-1) || item.as_str() == Some("-1") {
                        d.memory_swap = Some(-1);
                    } else if let Some(n) = self.size(&at, item) {
                        d.memory_swap =
                            self.check(&at, i64::try_from(n).map_err(|_| "too large".to_string()));
                    }
                }
                "cpus" => d.cpus = self.cpus(&at, item),
                "pids_limit" => d.pids_limit = self.integer(&at, item, 1, i64::from(u32::MAX)),
                // gitlab-runner's convention: -1 = no limit, 0 = no services at all.
                "services_limit" => {
                    if let Some(n) = self.integer(&at, item, -1, 1000) {
                        d.services_limit = usize::try_from(n).ok();
                    }
                }
                "service_memory" => d.service_memory = self.size(&at, item),
                "service_cpus" => d.service_cpus = self.cpus(&at, item),
                "privileged" => {
                    if let Some(b) = self.boolean(&at, item) {
                        d.privileged = b;
                        if b {
                            facts.privileged = Some(at.clone());
                        }
                    }
                }
                "pull_policy" => {
                    if let Some(list) = self.one_or_many(&at, item) {
                        let checked: Vec<String> = list
                            .iter()
                            .filter_map(|p| self.check(&at, v::check_pull_policy(p)))
                            .collect();
                        if !checked.is_empty() {
                            d.pull_policy = checked;
                        }
                    }
                }
                "allowed_pull_policies" => {
                    if let Some(list) = self.one_or_many(&at, item) {
                        d.allowed_pull_policies = list
                            .iter()
                            .filter_map(|p| self.check(&at, v::check_pull_policy(p)))
                            .collect();
                    }
                }
                "allowed_images" | "allowed_services" => {
                    if let Some(list) = self.strings(&at, item) {
                        for pattern in &list {
                            if let Err(e) = globset::Glob::new(pattern) {
                                self.error(&at, format!("`{pattern}` is not a valid pattern: {e}"));
                            }
                        }
                        if key == "allowed_images" {
                            d.allowed_images = list;
                        } else {
                            d.allowed_services = list;
                        }
                    }
                }
                "network_mtu" => {
                    docker_mtu = self.mtu(&at, item);
                }
                "extra_hosts" => {
                    if let Some(list) = self.strings(&at, item) {
                        for entry in &list {
                            self.check(&at, v::check_extra_host(entry));
                        }
                        d.extra_hosts = list;
                    }
                }
                "dns" => {
                    if let Some(list) = self.strings(&at, item) {
                        d.dns = list
                            .iter()
                            .filter_map(|s| {
                                let parsed = s
                                    .parse::<std::net::IpAddr>()
                                    .map_err(|_| format!("`{s}` is not an IP address"));
                                self.check(&at, parsed)
                            })
                            .collect();
                    }
                }
                "dns_search" => {
                    if let Some(list) = self.strings(&at, item) {
                        for domain in &list {
                            self.check(&at, v::check_search_domain(domain));
                        }
                        d.dns_search = list;
                    }
                }
                "wait_for_services_timeout" => {
                    // As gitlab-runner: a negative value disables the wait, 0 is the default.
                    if let Some(n) = self.integer(&at, item, i64::MIN, i64::from(u32::MAX)) {
                        d.wait_for_services_timeout = match n {
                            n if n < 0 => None,
                            0 => Some(super::model::DEFAULT_WAIT_FOR_SERVICES),
                            n => Some(std::time::Duration::from_secs(n.unsigned_abs())),
                        };
                    }
                }
                "isolation" => {
                    if item.is_str() {
                        // gitlab-runner's `isolation` is a Windows container setting.
                        self.warn(
                            &at,
                            "ignored: this is gitlab-runner's Windows container isolation \
                             (process/hyperv); isolated-runner's settings live in the \
                             [runners.docker.isolation] table",
                        );
                    } else if let Some(it) = item.as_table_like() {
                        let line = self.item_line(item, at.line);
                        let (iso, mtu_set) = self.isolation(it, line);
                        d.isolation = iso;
                        isolation_mtu_set = mtu_set;
                    } else {
                        self.type_error(&at, "a table", item);
                    }
                }
                _ => self.not_honoured(s, &at, key, item),
            }
        }
        // gitlab-runner's own `network_mtu` means the same thing; our table wins when both are set.
        if let Some(mtu) = docker_mtu
            && !isolation_mtu_set
        {
            d.isolation.network_mtu = mtu;
        }
        if !saw_image {
            self.warn(
                &At {
                    path: "[runners.docker] image".into(),
                    line: header,
                },
                format!(
                    "no default image: jobs that do not name an `image:` run in `{}`; set image",
                    d.image
                ),
            );
        }
        if d.isolation.mode == IsolationMode::SharedSocket {
            // Socket volumes are allowed then; nothing else to do here.
        }
        d
    }

    fn mtu(&mut self, at: &At, item: &Item) -> Option<u32> {
        let n = self.integer(at, item, 0, 65535)?;
        if n != 0 && n < 576 {
            self.error(
                at,
                format!("{n} is too small for an MTU (0 = the host's, else 576 to 65535)"),
            );
            return None;
        }
        Some(n as u32)
    }

    fn cache(&mut self, t: &dyn TableLike, header: usize) -> CacheConfig {
        let s = &keys::CACHE;
        let mut c = CacheConfig {
            store: self.cache_store(t, header),
            ..CacheConfig::default()
        };
        for (key, item) in t.iter() {
            let at = self.at(s, t, key, header);
            match key {
                "max_size" => c.max_size = self.size(&at, item),
                "max_age" => c.max_age = self.positive_duration(&at, item, false),
                // The distributed store's keys: see `load/cache_store.rs`.
                k if cache_store::STORE_KEYS.contains(&k) => {}
                _ => self.not_honoured(s, &at, key, item),
            }
        }
        c
    }

    fn isolation(&mut self, t: &dyn TableLike, header: usize) -> (IsolationConfig, bool) {
        let s = &keys::ISOLATION;
        let mut iso = IsolationConfig::default();
        let mut mtu_set = false;
        let mut pool_at = None;
        let mut inner_at = None;
        let mut pools_ok = true;
        let mut data_root_limits = Vec::new();
        for (key, item) in t.iter() {
            let at = self.at(s, t, key, header);
            match key {
                "mode" => match self.string(&at, item).as_deref() {
                    Some("dind") => iso.mode = IsolationMode::Dind,
                    Some("shared-socket") => {
                        iso.mode = IsolationMode::SharedSocket;
                        self.warn(
                            &at,
                            "jobs share the host's Docker daemon: any job can take over the host \
                             and see every other job; use this only on a trusted, single-tenant \
                             host (or to measure the baseline with `runner bench`)",
                        );
                    }
                    Some(other) => self.error(
                        &at,
                        format!("`{other}` is not a mode (\"dind\" or \"shared-socket\")"),
                    ),
                    None => {}
                },
                "sidecar_image" => {
                    if let Some(i) = self.non_empty_string(&at, item) {
                        iso.sidecar_image = i;
                    }
                }
                "sidecar_profile" => match self.string(&at, item).as_deref() {
                    Some("rootless") => iso.sidecar_profile = SidecarProfile::Rootless,
                    Some("sysbox") => iso.sidecar_profile = SidecarProfile::Sysbox,
                    Some("hardened") => {
                        iso.sidecar_profile = SidecarProfile::Hardened;
                        self.warn(
                            &at,
                            "the hardened sidecar holds SYS_ADMIN and NET_ADMIN in the host's \
                             user namespace: it guards against accidents, it is not a boundary \
                             against a hostile job (docs/sidecar-profiles.md); prefer \
                             \"rootless\" where `runner doctor` says it works",
                        );
                    }
                    Some("privileged") => {
                        iso.sidecar_profile = SidecarProfile::Privileged;
                        self.warn(
                            &at,
                            "the sidecar runs privileged: a job that escapes its own daemon is \
                             root on the host; prefer \"sysbox\" or \"hardened\" where they work \
                             (`runner doctor` says which)",
                        );
                    }
                    Some(other) => self.error(
                        &at,
                        format!(
                            "`{other}` is not a sidecar profile (\"rootless\", \"sysbox\", \"hardened\" or \"privileged\")"
                        ),
                    ),
                    None => {}
                },
                "sidecar_memory" => iso.sidecar_memory = self.size(&at, item),
                "sidecar_cpus" => iso.sidecar_cpus = self.cpus(&at, item),
                "sidecar_pids_limit" => {
                    iso.sidecar_pids_limit = self.integer(&at, item, 1, i64::from(u32::MAX))
                }
                "service_pids_limit" => {
                    iso.service_pids_limit = self.integer(&at, item, 1, i64::from(u32::MAX))
                }
                "network_mtu" => {
                    mtu_set = true;
                    if let Some(m) = self.mtu(&at, item) {
                        iso.network_mtu = m;
                    }
                }
                "address_pool" | "inner_address_pool" => {
                    let parsed = self
                        .string(&at, item)
                        .and_then(|s| self.check(&at, v::parse_pool(&s)));
                    match parsed {
                        Some(net) if key == "address_pool" => {
                            iso.address_pool = net;
                            pool_at = Some(at);
                        }
                        Some(net) => {
                            iso.inner_address_pool = net;
                            inner_at = Some(at);
                        }
                        None => pools_ok = false,
                    }
                }
                "data_root" => match self.string(&at, item).as_deref() {
                    Some("ephemeral") => iso.data_root = DataRoot::Ephemeral,
                    Some("project") => iso.data_root = DataRoot::Project,
                    Some(other) => self.error(
                        &at,
                        format!("`{other}` is not a data root (\"ephemeral\" or \"project\")"),
                    ),
                    None => {}
                },
                "data_root_max_size" => {
                    iso.data_root_max_size = self.size(&at, item);
                    data_root_limits.push(at);
                }
                "data_root_max_age" => {
                    iso.data_root_max_age = self.positive_duration(&at, item, false);
                    data_root_limits.push(at);
                }
                "registry_mirror" => {
                    if let Some(s) = self.string(&at, item)
                        && !s.trim().is_empty()
                    {
                        iso.registry_mirror = self
                            .check(&at, v::parse_http_url(&s))
                            .map(|u| u.to_string());
                    }
                }
                "preload_images" => {
                    if let Some(list) = self.strings(&at, item) {
                        if list.iter().any(|i| i.trim().is_empty()) {
                            self.error(&at, "an image name is empty");
                        }
                        iso.preload_images = list;
                    }
                }
                "egress" => {
                    if let Some(word) = item.as_str() {
                        match word {
                            "allow" => iso.egress = Egress::Allow,
                            "deny" => iso.egress = Egress::Deny,
                            other => self.error(
                                &at,
                                format!("`{other}` is not an egress policy (\"allow\", \"deny\", or a list of CIDRs)"),
                            ),
                        }
                    } else if let Some(list) = self.strings(&at, item) {
                        let nets: Vec<_> = list
                            .iter()
                            .filter_map(|e| self.check(&at, v::parse_egress_entry(e)))
                            .collect();
                        iso.egress = Egress::AllowList(nets);
                    }
                }
                "block_private_networks" => {
                    if let Some(b) = self.boolean(&at, item) {
                        iso.block_private_networks = b;
                    }
                }
                "ready_timeout" => {
                    if let Some(d) = self.positive_duration(&at, item, false) {
                        iso.ready_timeout = d;
                    }
                }
                "warm_pool" => {
                    if let Some(n) = self.integer(&at, item, 0, 64) {
                        iso.warm_pool = n as usize;
                    }
                }
                "rootless_uid_base" => {
                    // The blocks must stay below the kernel's largest uid (2^32 - 2).
                    let max = i64::from(u32::MAX) - 1 - crate::config::ROOTLESS_UID_SPAN;
                    if let Some(n) = self.integer(&at, item, 1, max) {
                        iso.rootless_uid_base = n as u32;
                    }
                }
                "warm_pool_max_idle" => {
                    if let Some(d) = self.positive_duration(&at, item, false) {
                        iso.warm_pool_max_idle = d;
                    }
                }
                "registry_ca_files" => match item.as_table_like() {
                    Some(map) => {
                        let mut out = BTreeMap::new();
                        for (host, file) in map.iter() {
                            let entry_at = At {
                                path: format!("{} {host}", at.path),
                                line: map
                                    .key(host)
                                    .and_then(|k| self.line_of(k.span()))
                                    .unwrap_or(at.line),
                            };
                            let host = self.check(&entry_at, v::check_registry_host(host));
                            let file = self
                                .abs_path(&entry_at, file)
                                .and_then(|f| self.check(&entry_at, v::check_ca_file(f)));
                            if let (Some(h), Some(f)) = (host, file) {
                                out.insert(h, f);
                            }
                        }
                        iso.registry_ca_files = out;
                    }
                    None => self.type_error(&at, "an inline table of registry hosts to CA files, like { \"registry.corp:5000\" = \"/etc/ssl/corp-ca.crt\" }", item),
                },
                "host_path_map" => match item.as_table_like() {
                    Some(map) => {
                        let mut out = BTreeMap::new();
                        for (from, to) in map.iter() {
                            let entry_at = At {
                                path: format!("{} {from}", at.path),
                                line: map
                                    .key(from)
                                    .and_then(|k| self.line_of(k.span()))
                                    .unwrap_or(at.line),
                            };
                            let from_path = self.check(&entry_at, v::parse_absolute_path(from));
                            let to_path = self.abs_path(&entry_at, to);
                            if let (Some(f), Some(t)) = (from_path, to_path) {
                                out.insert(f, t);
                            }
                        }
                        iso.host_path_map = out;
                    }
                    None => self.type_error(&at, "an inline table of paths, like { \"/builds\" = \"/srv/builds\" }", item),
                },
                _ => self.not_honoured(s, &at, key, item),
            }
        }
        if pools_ok && v::nets_overlap(&iso.address_pool, &iso.inner_address_pool) {
            let at = inner_at.or(pool_at).unwrap_or(At {
                path: "[runners.docker.isolation] inner_address_pool".into(),
                line: header,
            });
            self.error(
                &at,
                format!(
                    "{} overlaps address_pool {}: a job's inner networks would collide with job \
                     bridges on the host; choose disjoint ranges",
                    iso.inner_address_pool, iso.address_pool
                ),
            );
        }
        if iso.data_root == DataRoot::Ephemeral {
            for at in data_root_limits {
                self.warn(
                    &at,
                    "has no effect: it applies only with data_root = \"project\"",
                );
            }
        }
        (iso, mtu_set)
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
