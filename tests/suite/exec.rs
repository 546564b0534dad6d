//! `runner exec` as a binary: parsing a local CI file into the payload GitLab would send.

use std::path::Path;
use std::process::Command;

const CI: &str = r#"
variables:
  GLOBAL: "from-global"
default:
  image: isolated-runner/job:test
  before_script: [echo default-before]
.tpl: &tpl
  variables: {LEVEL: tpl}
  script: [echo tpl]
  timeout: 1h 30m
.other:
  variables: {LEVEL: other, OTHER: "yes"}
build:
  extends: [.tpl, .other]
  rules: [{if: '$CI'}]
  needs: []
  script: [echo build]
anchored:
  <<: *tpl
  services: [{name: "isolated-runner/busybox:test", alias: web}]
"#;

fn exec(dir: &Path, args: &[&str]) -> std::process::Output {
    // The binary is `runner` once Cargo.toml names it so; `isolated-runner` until then.
    let bin = option_env!("CARGO_BIN_EXE_runner")
        .or(option_env!("CARGO_BIN_EXE_isolated-runner"))
        .expect("cargo builds the binary for integration tests");
    Command::new(bin)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .arg("exec")
        .args(args)
        .output()
        .expect("runner runs")
}

fn project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join(".gitlab-ci.yml"), CI).expect("write");
    dir
}

fn var<'a>(payload: &'a serde_json::Value, key: &str) -> Option<&'a str> {
    payload["variables"]
        .as_array()?
        .iter()
        .rev()
        .find(|v| v["key"] == key)?["value"]
        .as_str()
}

#[test]
fn print_payload_resolves_extends_default_and_names_unsupported_keywords() {
    let dir = project();
    let out = exec(
        dir.path(),
        &["build", "--print-payload", "-c", "/nonexistent/config.toml"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stderr: {stderr}");
    let payload: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json payload");
    assert_eq!(payload["job_info"]["name"], "build");
    assert_eq!(payload["image"]["name"], "isolated-runner/job:test");
    assert_eq!(payload["runner_info"]["timeout"], 5400);
    let script: Vec<&str> = payload["steps"][0]["script"]
        .as_array()
        .expect("script")
        .iter()
        .filter_map(|s| s.as_str())
        .collect();
    assert_eq!(script, vec!["echo default-before", "echo build"]);
    assert_eq!(var(&payload, "LEVEL"), Some("other"));
    assert_eq!(var(&payload, "OTHER"), Some("yes"));
    assert_eq!(var(&payload, "GLOBAL"), Some("from-global"));
    assert_eq!(var(&payload, "GIT_STRATEGY"), Some("none"));
    assert_eq!(var(&payload, "CI_JOB_NAME"), Some("build"));
    assert!(var(&payload, "CI_JOB_TOKEN").is_some_and(|t| t.starts_with("glcbt-")));
    assert!(stderr.contains("`rules`"), "{stderr}");
    assert!(stderr.contains("`needs`"), "{stderr}");
}

#[test]
fn anchors_and_merge_keys() {
    let dir = project();
    let out = exec(dir.path(), &["anchored", "--print-payload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let payload: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json payload");
    assert_eq!(payload["services"][0]["alias"], "web");
    assert_eq!(var(&payload, "LEVEL"), Some("tpl"));
    assert_eq!(payload["runner_info"]["timeout"], 5400);
}

#[test]
fn unknown_job_lists_the_jobs() {
    let dir = project();
    let out = exec(dir.path(), &["nope", "--print-payload"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("build, anchored"), "{stderr}");
}

#[test]
fn custom_file_and_commit_sha_from_the_local_repo() {
    let dir = project();
    std::fs::rename(dir.path().join(".gitlab-ci.yml"), dir.path().join("ci.yml")).expect("mv");
    let git = |args: &[&str]| crate::support::git(dir.path(), args);
    git(&["init", "-q", "-b", "feature"]);
    git(&["add", "."]);
    git(&["commit", "-qm", "x"]);
    let sha = git(&["rev-parse", "HEAD"]);
    let out = exec(dir.path(), &["build", "-f", "ci.yml", "--print-payload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let payload: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json payload");
    assert_eq!(var(&payload, "CI_COMMIT_SHA"), Some(sha.as_str()));
    assert_eq!(var(&payload, "CI_COMMIT_REF_NAME"), Some("feature"));
    assert_eq!(payload["git_info"]["sha"], sha.as_str());
}
