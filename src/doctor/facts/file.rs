//! Facts of the config file: whether it loads, who may read or change it, and its runners as
//! written (read even when the whole file does not load, so later checks still have them).

use super::*;

pub(super) async fn gather_config(opts: &Options) -> ConfigFacts {
    let mut facts = ConfigFacts {
        state: ConfigState::Absent,
        file_mode: None,
        inline_token: false,
        token_files: Vec::new(),
        runners: Vec::new(),
    };
    let Some(path) = opts.config_path.clone() else {
        return facts;
    };
    let text = match tokio::fs::read_to_string(&path).await {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && opts.config_is_default => {
            return facts;
        }
        Err(e) => {
            facts.state = ConfigState::Unreadable {
                path,
                detail: e.to_string(),
            };
            return facts;
        }
    };
    {
        use std::os::unix::fs::PermissionsExt;
        facts.file_mode = tokio::fs::metadata(&path)
            .await
            .ok()
            .map(|m| m.permissions().mode() & 0o7777);
    }
    let (runners, inline_token, token_files) = raw_runners(&text, path.parent());
    facts.runners = runners;
    facts.inline_token = inline_token;
    for tf in token_files {
        use std::os::unix::fs::PermissionsExt;
        let mode = tokio::fs::metadata(&tf)
            .await
            .ok()
            .map(|m| m.permissions().mode() & 0o7777);
        facts.token_files.push((tf, mode));
    }
    let p = path.clone();
    let loaded = tokio::task::spawn_blocking(move || config::load(&p)).await;
    facts.state = match loaded {
        Ok(Ok(l)) => ConfigState::Loaded {
            path,
            config: Box::new(l.config),
            warnings: l.warnings.iter().map(ToString::to_string).collect(),
        },
        Ok(Err(e)) => {
            let show = |sev| {
                e.diagnostics()
                    .iter()
                    .filter(|d| d.severity == sev)
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
            };
            let mut errors = show(config::Severity::Error);
            if errors.is_empty() {
                errors.push(e.to_string());
            }
            ConfigState::Invalid {
                path,
                errors,
                warnings: show(config::Severity::Warning),
            }
        }
        Err(e) => ConfigState::Unreadable {
            path,
            detail: e.to_string(),
        },
    };
    facts
}

/// `[[runners]]` as written, whether the file holds an inline token, and the `token_file`s.
pub fn raw_runners(text: &str, base: Option<&Path>) -> (Vec<RawRunner>, bool, Vec<PathBuf>) {
    let Ok(doc) = text.parse::<toml::Table>() else {
        return (Vec::new(), false, Vec::new());
    };
    let mut out = Vec::new();
    let mut inline = false;
    let mut files = Vec::new();
    let entries = doc
        .get("runners")
        .and_then(|r| r.as_array())
        .cloned()
        .unwrap_or_default();
    for r in entries {
        let Some(t) = r.as_table() else { continue };
        let s = |k: &str| t.get(k).and_then(|v| v.as_str()).map(str::to_string);
        if s("token").is_some_and(|t| !t.is_empty()) {
            inline = true;
        }
        if let Some(f) = s("token_file") {
            let p = PathBuf::from(&f);
            files.push(match (p.is_relative(), base) {
                (true, Some(b)) => b.join(p),
                _ => p,
            });
        }
        let docker = t.get("docker").and_then(|d| d.as_table());
        let volumes = docker
            .and_then(|d| d.get("volumes"))
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let privileged = docker
            .and_then(|d| d.get("privileged"))
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        let shared_socket = docker
            .and_then(|d| d.get("isolation"))
            .and_then(|i| i.get("mode"))
            .and_then(|m| m.as_str())
            == Some("shared-socket");
        out.push(RawRunner {
            name: s("name").unwrap_or_else(|| "(unnamed)".to_string()),
            shared_socket,
            volumes,
            privileged,
            builds_dir: PathBuf::from(s("builds_dir").unwrap_or_else(|| "/builds".into())),
            cache_dir: PathBuf::from(s("cache_dir").unwrap_or_else(|| "/cache".into())),
        });
    }
    (out, inline, files)
}
