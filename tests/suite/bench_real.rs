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
