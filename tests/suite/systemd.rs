//! The systemd units: `systemd-analyze verify` accepts them (with `ExecStart` pointing at the
//! built binary), and the settings the runner's shutdown and the nightly cleanup rely on are
//! there.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const UNITS: [&str; 3] = [
    "isolated-runner.service",
    "isolated-runner-cleanup.service",
    "isolated-runner-cleanup.timer",
];

fn unit_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd")
}

fn read_unit(name: &str) -> String {
    std::fs::read_to_string(unit_dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// `Key=value` of `section` (last one wins, as in systemd).
fn setting(text: &str, section: &str, key: &str) -> Option<String> {
    let mut current = String::new();
    let mut found = None;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            current = line.to_string();
        } else if current == format!("[{section}]")
            && let Some((k, v)) = line.split_once('=')
            && k.trim() == key
        {
            found = Some(v.trim().to_string());
        }
    }
    found
}

#[test]
fn units_verify() {
    let analyze = Command::new("systemd-analyze").arg("--version").output();
    // Fails rather than skips without it (`.ci/run` installs systemd): a skip would let a run
    // pass without having checked the units at all.
    assert!(
        analyze.is_ok_and(|o| o.status.success()),
        "this test needs systemd-analyze (apt-get install systemd)"
    );
    let dir = tempfile::tempdir().unwrap();
    let binary = env!("CARGO_BIN_EXE_runner");
    for name in UNITS {
        let text = read_unit(name).replace("/usr/local/bin/runner", binary);
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg("--man=no")
        .args(UNITS.map(|u| dir.path().join(u)))
        .env("SYSTEMD_LOG_LEVEL", "notice")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("isolated-runner"))
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
}

#[test]
fn runner_unit_stops_gracefully_within_the_drain_time() {
    let unit = read_unit("isolated-runner.service");
    assert_eq!(
        setting(&unit, "Service", "KillSignal").as_deref(),
        Some("SIGQUIT")
    );
    let stop = setting(&unit, "Service", "TimeoutStopSec").expect("TimeoutStopSec");
    let stop = humantime::parse_duration(&stop).unwrap_or_else(|e| panic!("{stop}: {e}"));
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/config.example.toml");
    let loaded = isolated_runner::config::load(&example).unwrap();
    let drain = loaded.config.shutdown_timeout;
    assert!(
        stop > drain,
        "TimeoutStopSec {stop:?} must exceed the example's shutdown_timeout {drain:?}"
    );
    // And leave time for teardown after the drain.
    assert!(stop >= drain + Duration::from_secs(60));
    assert!(
        setting(&unit, "Service", "ExecStart")
            .unwrap()
            .contains("runner run --config")
    );
}

#[test]
fn cleanup_timer_runs_nightly_and_catches_up() {
    let timer = read_unit("isolated-runner-cleanup.timer");
    assert_eq!(
        setting(&timer, "Timer", "OnCalendar").as_deref(),
        Some("*-*-* 04:00:00")
    );
    assert_eq!(
        setting(&timer, "Timer", "Persistent").as_deref(),
        Some("true")
    );
    let service = read_unit("isolated-runner-cleanup.service");
    assert_eq!(
        setting(&service, "Service", "Type").as_deref(),
        Some("oneshot")
    );
    assert!(
        setting(&service, "Service", "ExecStart")
            .unwrap()
            .contains("runner cleanup --config")
    );
}
