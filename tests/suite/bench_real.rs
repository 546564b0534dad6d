//! `runner bench` for real: one noop round per mode through the built binary, against the host
//! Docker Engine and the test images. Checks the JSON shape, that both modes ran and that
//! nothing was left behind. No timing assertions.

use std::path::PathBuf;
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn noop_round_in_both_modes_leaves_nothing() {
    let bin = env!("CARGO_BIN_EXE_runner");
    let out_dir = tempfile::tempdir().expect("temp dir");
    let json = out_dir.path().join("bench.json");
    let out = Command::new(bin)
        .current_dir(repo())
        .args([
            "bench",
            "-c",
            // Missing on purpose: the bench uses its built-in entry with temp builds/state dirs.
            out_dir
                .path()
                .join("no-config.toml")
                .to_str()
                .expect("utf-8"),
            "--scenario",
            "noop",
            "--runs",
            "1",
            "--warmup",
            "0",
            "--json",
        ])
        .arg(&json)
        .output()
        .expect("runner bench runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "runner bench failed: {stderr}");
    let text = std::fs::read_to_string(&json).expect("JSON written");
    let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");

    assert!(v["host"]["kernel"].is_string(), "{v}");
    assert!(v["host"]["docker_engine"].is_string(), "{v}");
    let scenarios = v["scenarios"].as_array().expect("scenarios array");
    assert_eq!(scenarios.len(), 1, "{v}");
    let noop = &scenarios[0];
    assert_eq!(noop["name"], "noop");
    assert_eq!(noop["runs"], 1);
    for mode in ["dind", "shared-socket"] {
        let m = &noop["modes"][mode];
        assert!(m.is_object(), "mode {mode} missing: {v}");
        assert_eq!(m["ok"], 1, "mode {mode} did not pass: {m}");
        assert_eq!(m["failed"], 0, "{m}");
        assert_eq!(m["leftovers"], 0, "mode {mode} left objects behind: {m}");
        assert!(m["ttfsl_s"]["p50"].as_f64().is_some(), "{m}");
        assert!(m["wall_s"]["p50"].as_f64().is_some(), "{m}");
        assert!(m["stages_p50_s"]["step_script"].as_f64().is_some(), "{m}");
    }
    // The dind prepare steps are parsed from the backend's "daemon ready" line (a job on a
    // pre-started sidecar has claim steps, a cold one the whole start).
    let dind_stages = noop["modes"]["dind"]["stages_p50_s"]
        .as_object()
        .expect("stages");
    assert!(dind_stages.keys().any(|k| k.starts_with("dind_")), "{v}");
    assert!(noop["ratio_wall_p50"].as_f64().is_some(), "{v}");
    assert!(noop["ttfsl_overhead_p50_s"].as_f64().is_some(), "{v}");
}

/// Runs `runner bench` with `args` from the repository root; returns (JSON report, stderr).
fn bench_json(args: &[&str]) -> (serde_json::Value, String) {
    let out_dir = tempfile::tempdir().expect("temp dir");
    let json = out_dir.path().join("bench.json");
    let out = Command::new(env!("CARGO_BIN_EXE_runner"))
        .current_dir(repo())
        .args(["bench", "-c"])
        .arg(out_dir.path().join("no-config.toml"))
        .args(args)
        .arg("--json")
        .arg(&json)
        .output()
        .expect("runner bench runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "runner bench failed: {stderr}");
    let text = std::fs::read_to_string(&json).expect("JSON written");
    (serde_json::from_str(&text).expect("valid JSON"), stderr)
}

/// A mixed burst: both modes' jobs at once, each mode reported with its TTFSL p95, the p95
/// ratio and the load average.
#[test]
fn mixed_burst_reports_both_modes_of_one_burst() {
    let (v, _) = bench_json(&[
        "--scenario",
        "concurrent-mixed",
        "--concurrency",
        "2",
        "--runs",
        "1",
        "--warmup",
        "0",
    ]);
    let s = &v["scenarios"][0];
    assert_eq!(s["name"], "concurrent-mixed");
    for mode in ["dind", "shared-socket"] {
        let m = &s["modes"][mode];
        assert_eq!(m["ok"], 1, "mode {mode}: {m}");
        assert_eq!(m["leftovers"], 0, "mode {mode}: {m}");
        assert!(m["ttfsl_s"]["p95"].as_f64().is_some(), "{m}");
        assert!(m["load1"]["mean"].as_f64().is_some(), "{m}");
    }
    assert!(s["ratio_ttfsl_p95"].as_f64().is_some(), "{s}");
}

/// The compose-heavy services in small: one busybox-based image whose `php`, `node` and
/// `postgres` print the file the scenario's job wrote through the `./` bind mount
/// (`/app/probe.txt`), which is what the job checks in each service (`--version`: a version
/// line only). Labelled like a test
/// scope's objects and removed on drop; built from the local busybox by the legacy builder, so
/// nothing is pulled.
struct HeavyStandIn(String);

impl HeavyStandIn {
    fn build() -> HeavyStandIn {
        use std::os::unix::fs::PermissionsExt;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let tag = format!("ir-test-heavy-{}:test", &id[..16]);
        let ctx = tempfile::tempdir().expect("temp dir");
        let mut dockerfile = String::from("FROM isolated-runner/busybox:test\n");
        for tool in ["php", "node", "postgres"] {
            let path = ctx.path().join(tool);
            std::fs::write(
                &path,
                // `--version` prints only a version, as the real ones do: the scenario's
                // postgres step reads the probe with `cat` after it.
                format!(
                    "#!/bin/sh\nif [ \"$1\" = --version ]; then echo '{tool} (stand-in) 0'; \
                     else echo \"{tool} stand-in $(cat /app/probe.txt)\"; fi\n"
                ),
            )
            .expect("write stand-in");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .expect("chmod stand-in");
            dockerfile.push_str(&format!("COPY {tool} /bin/{tool}\n"));
        }
        std::fs::write(ctx.path().join("Dockerfile"), dockerfile).expect("write Dockerfile");
        let out = Command::new("docker")
            .args(["build", "-q", "--no-cache", "-t", &tag, "--label"])
            .arg(format!("io.isolated-runner.runner=t-{}", &id[..16]))
            .arg(ctx.path())
            // The legacy builder uses the local image as is; nothing is pulled.
            .env("DOCKER_BUILDKIT", "0")
            .output()
            .expect("run docker build");
        assert!(
            out.status.success(),
            "docker build: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        HeavyStandIn(tag)
    }
}

impl Drop for HeavyStandIn {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["rmi", "-f", &self.0]).output();
    }
}

/// Runs compose-heavy once per mode with `extra` flags and checks it end to end: the bench
/// pushed `pushed` (as `<local image> as <name>`), both modes' jobs passed (each pulled the
/// services from the bench's registry: dind into its own daemon over TLS, the shared socket
/// onto the host, and ran a command in each service that reads the job's bind-mounted file),
/// nothing was left behind, and afterwards the registry and the pulled tags are gone.
fn check_compose_heavy(extra: &[&str], pushed: &[String]) {
    let mut args = vec![
        "--scenario",
        "compose-heavy",
        "--runs",
        "1",
        "--warmup",
        "0",
    ];
    args.extend_from_slice(extra);
    let (v, stderr) = bench_json(&args);
    let pushing = stderr
        .lines()
        .find(|l| l.contains("pushing"))
        .unwrap_or_else(|| panic!("no push line: {stderr}"));
    for p in pushed {
        assert!(pushing.contains(p.as_str()), "{p} not pushed: {pushing}");
    }
    let s = &v["scenarios"][0];
    assert_eq!(s["name"], "compose-heavy");
    for mode in ["dind", "shared-socket"] {
        let m = &s["modes"][mode];
        assert_eq!(m["ok"], 1, "mode {mode} did not pass: {m}\n{stderr}");
        assert_eq!(m["leftovers"], 0, "mode {mode} left objects behind: {m}");
    }
    assert!(v["host"]["registry_mirror"].is_string(), "{v}");
    let registry = stderr
        .lines()
        .find_map(|l| l.strip_prefix("runner bench: registry "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no registry line: {stderr}"));
    let prefix = stderr
        .lines()
        .find_map(|l| l.split("dind jobs pull from ").nth(1))
        .and_then(|p| p.split('/').nth(1))
        .unwrap_or_else(|| panic!("no registry prefix: {stderr}"))
        .to_string();
    let ps = Command::new("docker")
        .args(["ps", "-a", "--filter", &format!("name={registry}"), "-q"])
        .output()
        .expect("docker ps");
    assert!(ps.stdout.is_empty(), "registry {registry} left running");
    let images = Command::new("docker")
        .args(["images", "--format", "{{.Repository}}:{{.Tag}}"])
        .output()
        .expect("docker images");
    let images = String::from_utf8_lossy(&images.stdout);
    assert!(
        !images.lines().any(|l| l.contains(&prefix)),
        "pulled tags of {prefix} left on the host:\n{images}"
    );
}

/// compose-heavy's real job and compose file with small images (`--registry-image`): the same
/// registry, TLS, mirror entry, pulls and `./` bind mount as with the real images, without
/// pushing 765 MB on every run.
#[test]
fn compose_heavy_pulls_from_the_benchs_own_registry_and_removes_it() {
    let image = HeavyStandIn::build();
    let overrides: Vec<String> = ["php:heavy", "node:heavy", "postgres:heavy"]
        .iter()
        .map(|name| format!("{}={name}", image.0))
        .collect();
    let mut extra = Vec::new();
    for o in &overrides {
        extra.extend(["--registry-image", o.as_str()]);
    }
    let pushed: Vec<String> = overrides.iter().map(|o| o.replace('=', " as ")).collect();
    check_compose_heavy(&extra, &pushed);
}

/// compose-heavy with its real images (php, node, postgres: 765 MB pushed into the registry;
/// ignored: minutes). Run it after changing those images or the scenario:
/// `cargo test --test suite bench_real::compose_heavy_with_the_real_images -- --ignored`.
#[test]
#[ignore]
fn compose_heavy_with_the_real_images() {
    let pushed: Vec<String> = isolated_runner::bench::scenario::HEAVY_IMAGES
        .iter()
        .map(|(local, name)| format!("{local} as {name}"))
        .collect();
    check_compose_heavy(&[], &pushed);
}
