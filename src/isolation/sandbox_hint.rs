//! A hint in the job's trace when a script fails because the job's rootless Docker daemon
//! refused a request beyond its sandbox. Without it the user sees runc's text ("error mounting
//! "sysfs" … operation not permitted") and no reason.
//!
//! Why here and not in the daemon: the job talks to its daemon with its own Docker CLI, so a
//! CLI wrapper would be bypassed; an authorization plugin would refuse requests up front, but it
//! is one more process per sidecar speaking Docker's plugin protocol, and it would have to
//! guess what the kernel will refuse. The runner instead reads what the daemon logged while the
//! failed step ran and says why in the trace, in the same words the docs use. The sidecar's log
//! is written by processes the job controls (the inner daemon), so it is only matched against
//! fixed signatures: nothing from it is copied into the trace.

use crate::docker::Docker;
use crate::trace::OutputSink;
use std::time::SystemTime;

/// How much of the sidecar's log a failed step is checked against.
const LOG_LINES: usize = 400;

/// A refusal the rootless sandbox causes: every `needles` on one daemon error line.
struct Refusal {
    needles: &'static [&'static str],
    hint: &'static str,
}

const REFUSALS: &[Refusal] = &[
    Refusal {
        // runc mounting a read-write sysfs for `--privileged`: the kernel lets a user namespace
        // mount a new sysfs only as restrictive as the one it can see, and the sidecar's is
        // read-only.
        needles: &["sysfs", "operation not permitted"],
        hint: "an inner container asked for `--privileged`, which the job's Docker daemon cannot \
               give: it runs rootless (sidecar_profile = \"rootless\"), in a user namespace that \
               holds no privilege on the host, where the kernel refuses the read-write /sys a \
               privileged container needs. Drop `--privileged` and add only the capabilities \
               the container uses (`--cap-add`, which work inside the namespace), or ask the \
               runner's admin for a runner with sidecar_profile = \"hardened\", which is not a \
               security boundary (docs/sidecar-profiles.md)",
    },
    Refusal {
        needles: &["adding custom device"],
        hint: "an inner container asked for a host device (`--device`): the job's Docker daemon \
               runs rootless (sidecar_profile = \"rootless\") and no host device is passed into \
               it (docs/sidecar-profiles.md)",
    },
];

/// The hints for the daemon's error lines in `log` (lines as `logs_since` gives them: the
/// engine's timestamp first) logged at or after `since`, each hint once, in table order.
fn hints_for(log: &str, since: SystemTime) -> Vec<&'static str> {
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.split_once(' ')
                .and_then(|(t, _)| humantime::parse_rfc3339_weak(t).ok())
                .is_some_and(|t| t >= since)
        })
        .filter(|l| l.contains("level=error"))
        .collect();
    REFUSALS
        .iter()
        .filter(|r| {
            errors
                .iter()
                .any(|l| r.needles.iter().all(|n| l.contains(n)))
        })
        .map(|r| r.hint)
        .collect()
}

/// Writes a hint to the trace for each sandbox refusal the sidecar logged since `since`.
/// Best effort: a log that cannot be read gives no hint, never an error.
pub(super) async fn explain(
    docker: &Docker,
    sidecar: &str,
    since: SystemTime,
    out: &dyn OutputSink,
) {
    let log = match docker.logs_since(sidecar, since, LOG_LINES).await {
        Ok(log) => log,
        Err(e) => {
            tracing::debug!(container = %sidecar, error = %e, "could not read the sidecar's log for a hint");
            return;
        }
    };
    for hint in hints_for(&log, since) {
        out.write(format!("\x1b[33;1misolated-runner: {hint}\x1b[0;m\n").as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const PRIVILEGED: &str = r#"2026-12-06T10:51:09.5Z time="2026-12-06T10:51:09Z" level=warning msg="[rootlesskit:child ] failed to mount sysfs, falling back to read-only mount: operation not permitted"
2026-12-06T10:51:16.394842409Z time="2026-12-06T10:51:16.394842409Z" level=error msg="Handler for POST /v1.45/containers/1d63/start returned error: failed to create task for container: failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: error during container init: error mounting \"sysfs\" to rootfs at \"/sys\": mount sysfs:/sys (via /proc/self/fd/6), flags: 0xe: operation not permitted: unknown" spanID=c1b7 traceID=2c6f"#;

    fn at(s: &str) -> SystemTime {
        humantime::parse_rfc3339_weak(s).unwrap()
    }

    #[test]
    fn privileged_refusal_gets_its_hint_once() {
        let twice = format!("{PRIVILEGED}\n{PRIVILEGED}");
        let h = hints_for(&twice, at("2026-12-06T10:51:16Z"));
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h[0].contains("--privileged"));
        assert!(h[0].contains("sidecar_profile"));
    }

    #[test]
    fn a_refusal_before_the_step_started_gives_no_hint() {
        // The same second as the refusal, a few ms after it: an earlier step's failure.
        let after = at("2026-12-06T10:51:16.394842409Z") + Duration::from_millis(5);
        assert!(hints_for(PRIVILEGED, after).is_empty());
    }

    #[test]
    fn start_up_warnings_and_other_errors_give_no_hint() {
        let start = at("2026-12-06T10:00:00Z");
        // rootlesskit's own start-up warning names sysfs too, but is no refusal of the job's.
        let warning = PRIVILEGED.lines().next().unwrap_or_default();
        assert!(hints_for(warning, start).is_empty());
        let fifo = r#"2026-12-06T10:51:16Z level=error msg="stream copy error: reading from a closed fifo""#;
        assert!(hints_for(fifo, start).is_empty());
        assert!(hints_for("", start).is_empty());
        // A line without the engine's timestamp (not what logs_since gives) is skipped.
        let bare = PRIVILEGED.lines().nth(1).unwrap_or_default();
        let bare = bare.split_once(' ').map(|(_, r)| r).unwrap_or_default();
        assert!(hints_for(bare, start).is_empty());
    }

    #[test]
    fn device_refusal_gets_its_hint() {
        let log = r#"2026-12-06T10:51:16Z level=error msg="Handler for POST /v1.45/containers/create returned error: error gathering device information while adding custom device \"/dev/sda\": no such file or directory""#;
        let h = hints_for(log, at("2026-12-06T10:51:15Z"));
        assert_eq!(h.len(), 1);
        assert!(h[0].contains("--device"));
    }
}
