//! One `[[runners]]` table: identity, URLs and token, directories and limits, and the checks
//! that need the whole runner (volumes against directories, privileged against the mode).

use super::*;

impl Loader {
    pub(super) fn runner(&mut self, t: &dyn TableLike, header: usize) -> Option<RunnerConfig> {
        let s = &keys::RUNNER;
        let mut r = RunnerConfig::default();
        // The file's default when the isolation table is absent (see `warm_pool_auto`).
        r.docker.isolation.warm_pool_auto = true;
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
                "token_obtained_at" => r.token_obtained_at = self.timestamp(&at, item),
                "token_expires_at" => r.token_expires_at = self.timestamp(&at, item),
                "unhealthy_requests_limit" => {
                    // gitlab-runner takes anything below 1 as its default.
                    if let Some(n) = self.integer(&at, item, i64::MIN, 1_000_000) {
                        r.unhealthy_requests_limit = if n < 1 {
                            DEFAULT_UNHEALTHY_REQUESTS_LIMIT
                        } else {
                            n as u32
                        };
                    }
                }
                "unhealthy_interval" => {
                    // A Go duration string in gitlab-runner ("1h0m0s"); a bare integer would be
                    // nanoseconds there, so only strings are taken.
                    if let Some(d) = self.duration(&at, item, false) {
                        r.unhealthy_interval = d;
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

    /// An RFC 3339 time, written as a TOML datetime (gitlab-runner) or a string (`runner
    /// register`). Go's zero time (`0001-01-01T00:00:00Z`) means "not set", as there.
    pub(super) fn timestamp(&mut self, at: &At, item: &Item) -> Option<std::time::SystemTime> {
        let text = match (item.as_datetime(), item.as_str()) {
            (Some(d), _) => d.to_string(),
            (None, Some(s)) => s.trim().to_string(),
            (None, None) => {
                self.type_error(at, "an RFC 3339 time like 2025-01-31T12:00:00Z", item);
                return None;
            }
        };
        if text.is_empty() || text.starts_with("0001-01-01") {
            return None;
        }
        match humantime::parse_rfc3339_weak(&text) {
            Ok(t) => Some(t),
            Err(e) => {
                // A warning: a time this reader cannot take (an offset other than Z) must not
                // stop a gitlab-runner config from loading; it only turns rotation off.
                self.warn(
                    at,
                    format!(
                        "{text:?} is not an RFC 3339 UTC time ({e}); the token will not be rotated"
                    ),
                );
                None
            }
        }
    }

    /// Reads a token file (relative paths are relative to the config file's directory).
    pub(super) fn read_token_file(&mut self, at: &At, path: &str) -> Option<(PathBuf, Secret)> {
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

    pub(super) fn runner_checks(&mut self, r: &RunnerConfig, facts: &DockerFacts) {
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
}
