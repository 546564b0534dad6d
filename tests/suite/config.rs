//! `runner config check` end to end: the built binary on good, bad and legacy files.

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/config")
        .join(name)
}

/// Runs `runner config check FILE`; returns (exit code, stdout + stderr).
fn check(file: &Path) -> (i32, String) {
    check_with(&[], file)
}

/// Runs `runner config check ARGS... FILE`.
fn check_with(args: &[&str], file: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(["config", "check"])
        .args(args)
        .arg(file)
        .output()
        .expect("the runner binary starts");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

fn lines_with<'a>(output: &'a str, prefix: &str) -> Vec<&'a str> {
    output.lines().filter(|l| l.starts_with(prefix)).collect()
}

#[test]
fn example_config_passes() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/config.example.toml");
    let (code, out) = check(&path);
    assert_eq!(code, 0, "{out}");
    assert!(lines_with(&out, "error:").is_empty(), "{out}");
    assert!(!out.contains("glrt-REPLACE-ME"), "{out}");
}

#[test]
fn production_config_loads_except_the_socket() {
    let (code, out) = check(&fixture("production.toml"));
    assert_eq!(code, 1, "{out}");
    let errors = lines_with(&out, "error:");
    assert_eq!(errors.len(), 1, "only the socket mount is refused:\n{out}");
    assert!(
        errors[0].contains("production.toml:47: [runners.docker] volumes: `/var/run/docker.sock:/var/run/docker.sock`"),
        "{out}"
    );
    assert!(errors[0].contains("take over the host"), "{out}");
    assert!(errors[0].contains("DOCKER_HOST"), "{out}");
    // Errors come first, then warnings, then the summary.
    let first_warning = out.find("warning:").expect("warnings");
    assert!(out.find("error:").expect("an error") < first_warning);
    let warnings = lines_with(&out, "warning:");
    for needle in [
        "production.toml:42: [runners.docker] privileged",
        "production.toml:48: [runners.docker] volumes: `/builds:/builds`",
        "production.toml:49: [runners.docker] volumes: `/cache:/cache`",
        "production.toml:50: [runners.docker] volumes: `/tmp:/tmp`",
        "production.toml:51: [runners.docker] volumes: `/root/.ssh:/root/.ssh`",
        "production.toml:11: [session_server] session_timeout: ignored",
        "production.toml:38: [runners.feature_flags] FF_NETWORK_PER_BUILD: ignored",
    ] {
        assert!(
            warnings.iter().any(|w| w.contains(needle)),
            "missing {needle}:\n{out}"
        );
    }
    let summary = out.lines().last().unwrap_or_default();
    assert!(
        summary.contains("production.toml: invalid: 1 error,"),
        "{summary}"
    );
    assert!(!out.contains("PRODTOKEN"), "token leaked:\n{out}");
}

#[test]
fn production_config_without_socket_passes_with_warnings() {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = std::fs::read_to_string(fixture("production.toml")).expect("fixture");
    let text = text.replace("      \"/var/run/docker.sock:/var/run/docker.sock\",\n", "");
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).expect("write");
    let (code, out) = check(&path);
    assert_eq!(code, 0, "{out}");
    assert!(lines_with(&out, "error:").is_empty(), "{out}");
    assert!(!lines_with(&out, "warning:").is_empty());
    assert!(!out.contains("PRODTOKEN"), "{out}");

    let loaded = isolated_runner::config::load(&path).expect("loads");
    let c = loaded.config;
    assert_eq!(c.concurrent, 100);
    assert_eq!(c.check_interval.as_secs(), 3);
    let r = &c.runners[0];
    assert_eq!(r.limit, 10);
    assert_eq!(r.request_concurrency, 4);
    assert_eq!(r.output_limit, 16384 * 1024);
    assert!(r.docker.privileged);
    assert_eq!(r.docker.pull_policy, vec!["if-not-present"]);
    assert_eq!(
        r.docker.allowed_pull_policies,
        vec!["always", "if-not-present"]
    );
    assert_eq!(r.docker.volumes.len(), 4);
    assert_eq!(r.docker.memory, Some(8 << 30));
    assert_eq!(r.environment.len(), 3);
    assert!(
        r.post_build_script
            .as_deref()
            .unwrap_or_default()
            .contains("compose")
    );
    assert_eq!(r.token.expose(), "glrt-PRODTOKEN-9f8e7d6c5b4a");
}

#[test]
fn bad_config_reports_every_error_with_lines() {
    let (code, out) = check(&fixture("bad.toml"));
    assert_eq!(code, 1, "{out}");
    for needle in [
        "bad.toml:1: concurrent: expected an integer",
        "bad.toml:2: check_interval:",
        "bad.toml:6: [[runners]] url:",
        "bad.toml:10: [[runners]] builds_dir:",
        "bad.toml:13: [runners.docker] memory:",
        "bad.toml:14: [runners.docker] volumes:",
        "bad.toml:16: [runners.docker.isolation] sidecar_profile:",
        "bad.toml:18: [runners.docker.isolation] inner_address_pool:",
        "bad.toml:19: [runners.docker.isolation] ready_timeout:",
        "bad.toml:20: [runners.docker.isolation] egress:",
    ] {
        assert!(
            lines_with(&out, "error:")
                .iter()
                .any(|l| l.contains(needle)),
            "missing {needle}:\n{out}"
        );
    }
    assert!(
        out.lines()
            .last()
            .unwrap_or_default()
            .contains("invalid: 10 errors,"),
        "{out}"
    );
    // A misspelt gitlab-runner key only warns, as gitlab-runner starts with it too.
    assert!(
        lines_with(&out, "warning:").iter().any(|l| l.contains(
            "bad.toml:9: [[runners]] limt: unknown key `limt` in [[runners]]: neither gitlab-runner \
             nor isolated-runner reads it, so it has no effect; did you mean `limit`?"
        )),
        "{out}"
    );
    assert!(!out.contains("BADTOKEN"), "{out}");
}

#[test]
fn shared_socket_mode_allows_the_socket() {
    let (code, out) = check(&fixture("shared-socket.toml"));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("shared-socket.toml:14: [runners.docker.isolation] mode"),
        "{out}"
    );
    assert!(!out.contains("SHAREDTOKEN"), "{out}");
}

#[test]
fn syntax_error_does_not_leak_the_token() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("config.toml");
    std::fs::write(
        &path,
        "[[runners]]\nurl = \"https://gitlab.example.com/\"\ntoken = \"glrt-UNTERMINATED-secret\n",
    )
    .expect("write");
    let (code, out) = check(&path);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("config.toml:3: (syntax): not valid TOML"),
        "{out}"
    );
    assert!(!out.contains("UNTERMINATED"), "{out}");
}

#[test]
fn missing_file_exits_1() {
    let (code, out) = check(Path::new("/nonexistent/config.toml"));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("cannot read config file /nonexistent/config.toml"),
        "{out}"
    );
}

#[test]
fn config_as_gitlab_runner_register_writes_it_passes() {
    let path = fixture("registered.toml");
    let (code, out) = check(&path);
    assert_eq!(code, 0, "{out}");
    assert!(lines_with(&out, "error:").is_empty(), "{out}");
    assert!(!out.contains("REGTOKEN"), "{out}");
    let c = isolated_runner::config::load(&path).expect("loads").config;
    assert_eq!(c.concurrent, 4);
    assert_eq!(c.runners[0].docker.image, "alpine:3.20");
}

#[test]
fn legacy_config_loads_with_warnings_and_fails_only_strict() {
    let path = fixture("legacy-s3.toml");
    let (code, out) = check(&path);
    assert_eq!(code, 0, "{out}");
    assert!(lines_with(&out, "error:").is_empty(), "{out}");
    let warnings = lines_with(&out, "warning:");
    for needle in [
        "legacy-s3.toml:7: metrics_server: ignored: removed in gitlab-runner 12.0",
        "legacy-s3.toml:20: [[runners]] clean_git_config: ignored",
        "legacy-s3.toml:25: [runners.cache] Insecure: ignored: removed in gitlab-runner 12.0",
        "legacy-s3.toml:26: [runners.cache] ServerAddress: ignored: removed in gitlab-runner 12.0",
        "legacy-s3.toml:36: [runners.cache.s3] AssumeRoleMaxConcurrency: ignored",
        "legacy-s3.toml:40: [runners.feature_flags] FF_USE_FASTZIP: ignored",
        "legacy-s3.toml:54: [runners.docker] volume_keep: ignored",
        "legacy-s3.toml:55: [runners.docker] cpu_sharez: unknown key `cpu_sharez` in \
         [runners.docker]: neither gitlab-runner nor isolated-runner reads it, so it has no \
         effect; did you mean `cpu_shares`?",
    ] {
        assert!(
            warnings.iter().any(|w| w.contains(needle)),
            "missing {needle}:\n{out}"
        );
    }
    let summary = out.lines().last().unwrap_or_default().to_string();
    assert!(
        summary.contains("legacy-s3.toml: ok: 0 errors,"),
        "{summary}"
    );
    for secret in [
        "LEGACYTOKEN",
        "legacy-secret-do-not-print",
        "AKIALEGACYACCESS42",
    ] {
        assert!(!out.contains(secret), "{secret} leaked:\n{out}");
    }

    // The loader `runner run` uses accepts it, with the same warnings.
    let loaded = isolated_runner::config::load(&path).expect("the runner starts with it");
    assert_eq!(loaded.config.concurrent, 8);
    assert_eq!(loaded.config.log_level, "warn");
    assert_eq!(loaded.warnings.len(), warnings.len());

    // --strict: the same report, but warnings fail.
    let (code, strict_out) = check_with(&["--strict"], &path);
    assert_eq!(code, 1, "{strict_out}");
    assert_eq!(
        lines_with(&strict_out, "warning:"),
        warnings,
        "{strict_out}"
    );
    assert!(
        strict_out
            .lines()
            .last()
            .unwrap_or_default()
            .contains("legacy-s3.toml: fails --strict: 0 errors,"),
        "{strict_out}"
    );
    // A clean file passes --strict.
    let dir = tempfile::tempdir().expect("temp dir");
    let clean = dir.path().join("clean.toml");
    std::fs::write(
        &clean,
        "concurrent = 1\n[[runners]]\nurl = \"https://gitlab.example.com/\"\ntoken = \"\"\n\
         executor = \"docker\"\n[runners.docker]\nimage = \"alpine:3.20\"\n",
    )
    .expect("write");
    let (code, out) = check_with(&["--strict"], &clean);
    // An empty token is warned about (exec only), so even this one fails --strict...
    assert_eq!(code, 1, "{out}");
    std::fs::write(
        &clean,
        "concurrent = 1\n[[runners]]\nurl = \"https://gitlab.example.com/\"\n\
         token = \"glrt-CLEANTOKEN-123456\"\nexecutor = \"docker\"\n[runners.docker]\n\
         image = \"alpine:3.20\"\n",
    )
    .expect("write");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&clean, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    // ...and one without any warning passes it.
    let (code, out) = check_with(&["--strict"], &clean);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("clean.toml: ok: 0 errors, 0 warnings"),
        "{out}"
    );
}

/// Runs `runner ARGS...` with a clean environment; returns (exit code, stderr).
fn runner_stderr(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_runner"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .args(args)
        .output()
        .expect("the runner binary starts");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// `runner run` reads `log_level` and `log_format` from the config: it logs the file's warnings
/// as it starts, in the configured shape and at the configured level; `--log-level` wins. The
/// state dir cannot be created (under /proc), so the daemon stops right after loading the file.
#[test]
fn run_applies_log_level_and_log_format_from_the_config() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("config.toml");
    let write = |level: &str, format: &str| {
        std::fs::write(
            &path,
            format!(
                "log_level = \"{level}\"\nlog_format = \"{format}\"\n\
                 state_dir = \"/proc/isolated-runner-log-test\"\nbogus_key = 1\n\
                 [[runners]]\nurl = \"https://gitlab.example.com/\"\n\
                 token = \"glrt-LOGTOKEN-123456\"\nexecutor = \"docker\"\n\
                 [runners.docker]\nimage = \"alpine:3.20\"\n"
            ),
        )
        .expect("write");
    };
    let config = path.to_string_lossy().into_owned();

    write("warning", "json");
    let (code, err) = runner_stderr(&["run", "-c", &config]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("system id"), "stopped where expected:\n{err}");
    let json: Vec<serde_json::Value> = err
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    let warning = json
        .iter()
        .find(|v| {
            v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("unknown key `bogus_key`"))
        })
        .unwrap_or_else(|| panic!("no JSON warning line:\n{err}"));
    assert_eq!(warning["level"], "WARN", "{warning}");

    // `error` hides the warnings; `text` is plain, without colour codes.
    write("error", "text");
    let (code, err) = runner_stderr(&["run", "-c", &config]);
    assert_eq!(code, 1, "{err}");
    assert!(!err.contains("bogus_key"), "{err}");
    // The flag wins over the file.
    let (code, err) = runner_stderr(&["--log-level", "warn", "run", "-c", &config]);
    assert_eq!(code, 1, "{err}");
    let line = err
        .lines()
        .find(|l| l.contains("unknown key `bogus_key`"))
        .unwrap_or_else(|| panic!("no warning line:\n{err}"));
    assert!(line.contains("WARN") && !line.starts_with('{'), "{line}");
    assert!(!err.contains('\x1b'), "{err}");
    assert!(!err.contains("LOGTOKEN"), "{err}");
}
