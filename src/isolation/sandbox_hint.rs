//! A hint in the job's trace when a script fails because the job's rootless Docker daemon
//! refused a request beyond its sandbox. Without it the user sees runc's text ("error mounting
//! "sysfs" … operation not permitted") and no reason.
//!
//! Why here and not in the daemon: inner `--privileged` itself is refused up front by the
//! daemon's authorization plugin (`inner_policy.rs`), because the request says it plainly; what
//! the kernel refuses further down (a host device, a read-only sysfs with `inner_privileged =
//! true`) the plugin would have to guess. The runner instead reads what the daemon logged while
//! the failed step ran and says why in the trace, in the same words the docs use. The sidecar's log
//! is written by processes the job controls (the inner daemon), so it is only matched against
//! fixed signatures: nothing from it is copied into the trace.
//!
//! Also here: [`LimitWatch`], the hint when a rootless daemon without cgroups is asked for
//! per-container limits, which it drops without a word (no failure, no log line).

use crate::docker::Docker;
use crate::trace::OutputSink;
use futures::StreamExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// The hint when a rootless job daemon without cgroups was asked for a limit; `{flags}` and
/// `{sidecar}` are the runner's own words (flag names from a fixed list, the configured limits).
const DISCARDED_LIMITS: &str = "an inner container asked for {flags}, which the job's Docker \
    daemon accepts and does not apply: it runs rootless (sidecar_profile = \"rootless\") \
    without cgroups on this host (Docker's rootless mode applies limits only through systemd \
    on cgroup v2), so inner containers get no per-container limits, and the Docker CLI says \
    nothing. The job's own limits still hold: its daemon and everything it runs share the \
    sidecar's {sidecar}; past them the kernel kills the biggest process (exit 137) \
    (docs/sidecar-profiles.md, \"Limits\")";

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
        // mount a new sysfs only as restrictive as the one it can see. The runner opens the
        // sidecar's /sys read-write (`rootless::open_sidecar_sysfs`), so inner `--privileged`
        // runs (with `inner_privileged = true`; otherwise the inner policy refuses it first);
        // this is for a sidecar image whose entrypoint does not wait for that and starts its
        // daemon on the read-only one.
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

/// Watches a rootless job daemon for containers created with resource limits it cannot apply,
/// and says so once in the job's trace, in the step that created the first one.
///
/// Why a watch and not the sidecar's log: a rootless dockerd without cgroups drops the limits
/// when it converts the container's spec and logs nothing, and the CLI prints no warning (its
/// kernel checks pass: the cgroup v1 mounts are visible in the sidecar). The runner already
/// holds an mTLS client of the job's daemon: it follows the daemon's `create` events and reads
/// each new container's recorded limits, numbers only; nothing the job wrote reaches the trace.
/// A daemon that applies limits (its cgroup driver is not `none`) is not watched at all.
pub(super) struct LimitWatch {
    shared: Arc<WatchShared>,
    task: tokio::task::JoinHandle<()>,
}

struct WatchShared {
    /// The sink of the step now running, if one runs.
    step: Mutex<Option<Arc<dyn OutputSink>>>,
    /// The hint, once a discarded limit was seen.
    hint: Mutex<Option<String>>,
    /// The hint is in the trace (once per job).
    said: AtomicBool,
}

impl WatchShared {
    /// Writes the hint into the running step's sink, once, if there is a hint and a step.
    fn say(&self) {
        let Some(hint) = self.hint.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
            return;
        };
        let step = self.step.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(out) = step
            && !self.said.swap(true, Ordering::SeqCst)
        {
            out.write(format!("\x1b[33;1misolated-runner: {hint}\x1b[0;m\n").as_bytes());
        }
    }
}

impl LimitWatch {
    /// Starts watching `inner`, the job's daemon; `sidecar` are the limits that do hold.
    pub(super) fn start(inner: Docker, sidecar: super::limits::ContainerLimits) -> LimitWatch {
        let shared = Arc::new(WatchShared {
            step: Mutex::new(None),
            hint: Mutex::new(None),
            said: AtomicBool::new(false),
        });
        let since = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        // Not in the daemon's task tracker: it holds nothing to clean up, and the job's
        // environment aborts it when dropped (teardown), so it never outlives the job.
        let task = tokio::spawn(watch(inner, sidecar, since, Arc::clone(&shared)));
        LimitWatch { shared, task }
    }

    /// A step begins: a hint not yet said goes into its output.
    pub(super) fn step_started(&self, out: Arc<dyn OutputSink>) {
        *self.shared.step.lock().unwrap_or_else(|e| e.into_inner()) = Some(out);
        self.shared.say();
    }

    /// The step ended: a limit seen while it ran is said in its output before it closes.
    pub(super) fn step_ended(&self) {
        self.shared.say();
        *self.shared.step.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Whether the hint was written (tests).
    #[cfg(test)]
    fn said(&self) -> bool {
        self.shared.said.load(Ordering::SeqCst)
    }
}

impl Drop for LimitWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The hint for a container asking for `flags`.
fn discarded_hint(flags: &[&str], sidecar: &super::limits::ContainerLimits) -> String {
    let flags = flags
        .iter()
        .map(|f| format!("`{f}`"))
        .collect::<Vec<_>>()
        .join(", ");
    DISCARDED_LIMITS
        .replace("{flags}", &flags)
        .replace("{sidecar}", &sidecar.describe())
}

async fn watch(
    inner: Docker,
    sidecar: super::limits::ContainerLimits,
    since: i64,
    shared: Arc<WatchShared>,
) {
    match inner.engine_facts().await {
        Ok(f) if f.cgroup_driver == "none" => {}
        Ok(_) => return,
        Err(e) => {
            tracing::debug!(error = %e, "cannot ask the job's daemon for its cgroup driver");
            return;
        }
    }
    let mut since = since;
    loop {
        let mut created = inner.container_creations(since);
        while let Some(event) = created.next().await {
            let id = match event {
                Ok(id) if !id.is_empty() => id,
                Ok(_) => continue,
                Err(e) => {
                    tracing::debug!(error = %e, "the job daemon's event stream broke");
                    break;
                }
            };
            // A container removed before this look (`--rm` of a very short run) is missed:
            // the hint is best effort, the sidecar's limits hold either way.
            let Ok(limits) = inner.requested_limits(&id).await else {
                continue;
            };
            let flags = limits.flags();
            if !flags.is_empty() {
                *shared.hint.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(discarded_hint(&flags, &sidecar));
                shared.say();
                return;
            }
        }
        // The stream ended (a client timeout on a long job, say): follow it again from a
        // second back (a repeat is harmless) while the daemon answers; a gone daemon ends it.
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        if inner.ping().await.is_err() {
            return;
        }
        since = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .saturating_sub(2);
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

    #[derive(Default)]
    struct Sink(Mutex<Vec<u8>>);
    impl OutputSink for Sink {
        fn write(&self, data: &[u8]) {
            self.0.lock().unwrap().extend_from_slice(data);
        }
    }
    impl Sink {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }
    }

    fn sidecar() -> crate::isolation::limits::ContainerLimits {
        crate::isolation::limits::ContainerLimits {
            memory: Some(512 << 20),
            cpus: Some(1.0),
            pids_limit: Some(256),
        }
    }

    #[test]
    fn discarded_limits_hint_names_the_flags_and_the_limits_that_hold() {
        let h = discarded_hint(&["--memory", "--cpus"], &sidecar());
        assert!(h.contains("`--memory`, `--cpus`"), "{h}");
        assert!(h.contains("memory 512 MiB, 1 CPU, 256 pids"), "{h}");
        assert!(h.contains("sidecar_profile = \"rootless\""), "{h}");
        assert!(!h.contains('{'), "a placeholder is left: {h}");
    }

    /// Said once per job, in the step that is running when the limit is seen, or in the next
    /// step when none runs; never when no limit was seen.
    #[tokio::test]
    async fn the_hint_is_said_once_in_the_running_step() {
        let shared = Arc::new(WatchShared {
            step: Mutex::new(None),
            hint: Mutex::new(None),
            said: AtomicBool::new(false),
        });
        let w = LimitWatch {
            shared: Arc::clone(&shared),
            task: tokio::spawn(async {}),
        };
        let first = Arc::new(Sink::default());
        w.step_started(first.clone());
        w.step_ended();
        assert!(first.text().is_empty() && !w.said());

        // Seen between steps: said when the next one starts.
        *shared.hint.lock().unwrap() = Some(discarded_hint(&["--memory"], &sidecar()));
        shared.say();
        assert!(!w.said());
        let second = Arc::new(Sink::default());
        w.step_started(second.clone());
        assert!(second.text().contains("`--memory`"), "{}", second.text());
        assert!(w.said());
        w.step_ended();
        let third = Arc::new(Sink::default());
        w.step_started(third.clone());
        shared.say();
        w.step_ended();
        assert!(third.text().is_empty(), "said twice: {}", third.text());
        assert_eq!(second.text().matches("isolated-runner:").count(), 1);
    }
}
