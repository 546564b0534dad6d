//! Services are awaited like gitlab-runner does (`wait_for_services_timeout`), through the real
//! pipeline with the real dind backend: a service that opens its exposed port late is reachable
//! by the script's first command; one that never opens it gets a warning with its log and the
//! job still runs; `-1` skips the wait; `CI_DEBUG_SERVICES` puts the service's log in the trace.

use crate::support;

use isolated_runner::job::JobOutcome;
use serde_json::{Value, json};
use std::time::Duration;
use support::docker::{BUSYBOX_IMAGE, Scope};
use support::security::*;

/// A one-layer image from busybox with `EXPOSE 5432` (busybox itself declares no ports),
/// removed when dropped.
fn service_image(scope: &Scope) -> support::docker::ImageGuard {
    support::docker::classic_build(
        scope,
        &format!("ir-test-svc-{}:test", scope.runner_id),
        &format!("FROM {BUSYBOX_IMAGE}\nEXPOSE 5432\n"),
    )
}

fn tree() -> tempfile::TempDir {
    let t = tempfile::tempdir().expect("tempdir");
    std::fs::write(t.path().join("README"), "demo").expect("write tree");
    t
}

/// The service `db` on `image`, running `script` with busybox sh.
fn service(image: &str, script: &str) -> Value {
    json!([{"name": image, "alias": "db", "entrypoint": ["sh", "-c"], "command": [script]}])
}

/// The script's first command: one TCP connect to db:5432 (bash's /dev/tcp, the job image has
/// no nc); it fails the job if the port is closed.
const CONNECT: &str = "bash -c 'exec 3<>/dev/tcp/db/5432' && echo CONNECTED-TO-DB";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_service_is_awaited_and_debug_logs_reach_the_trace() {
    let scope = Scope::new().await;
    let _fw = FirewallSweep(scope.runner_id.clone());
    let image = service_image(&scope);
    let cfg = scope.config(|_| {});
    let t = tree();
    // Opens its port only after a while: longer than the sidecar takes to be ready here, so
    // without the wait the first command would meet a closed port.
    let svc = service(
        &image.0,
        "echo db-starting; sleep 8; echo db-listening; exec httpd -f -p 5432",
    );
    let payload = payload(
        5101,
        &[CONNECT, "echo script-done"],
        json!({"services": svc, "variables": [
            {"key": "CI_DEBUG_SERVICES", "value": "true", "public": true, "masked": false}
        ]}),
    );
    let (outcome, trace) = run_job(&scope, cfg, payload, t.path()).await;
    assert!(
        matches!(outcome, JobOutcome::Success),
        "{outcome:?}\n{trace}"
    );
    assert!(
        trace.contains("Waiting for services to be up and running (timeout 30 seconds)"),
        "{trace}"
    );
    assert!(trace.contains("CONNECTED-TO-DB"), "{trace}");
    assert!(!trace.contains("probably didn't start properly"), "{trace}");
    // CI_DEBUG_SERVICES: the service's log, prefixed with its name.
    assert!(trace.contains("[service:db] db-starting"), "{trace}");
    assert!(trace.contains("[service:db] db-listening"), "{trace}");
    drop(image);
    scope.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_that_never_listens_is_a_warning_with_its_log_and_the_job_runs() {
    let scope = Scope::new().await;
    let _fw = FirewallSweep(scope.runner_id.clone());
    let image = service_image(&scope);
    let cfg = scope.config(|c| {
        c.docker.wait_for_services_timeout = Some(Duration::from_secs(3));
    });
    let t = tree();
    let svc = service(
        &image.0,
        "echo db-line-one; echo db-password=topsecretvalue42; echo db-line-three; exec sleep 3600",
    );
    let payload = payload(
        5102,
        &["echo script-ran"],
        json!({"services": svc, "variables": [
            {"key": "DB_PASSWORD", "value": "topsecretvalue42", "public": false, "masked": true}
        ]}),
    );
    let (outcome, trace) = run_job(&scope, cfg, payload, t.path()).await;
    assert!(
        matches!(outcome, JobOutcome::Success),
        "{outcome:?}\n{trace}"
    );
    assert!(
        trace.contains("*** WARNING: Service db (")
            && trace.contains("probably didn't start properly"),
        "{trace}"
    );
    assert!(trace.contains("Exposed TCP port(s): 5432"), "{trace}");
    assert!(
        trace.contains("no connection to port 5432 within 3s"),
        "{trace}"
    );
    assert!(
        trace.contains("db-line-one") && trace.contains("db-line-three"),
        "{trace}"
    );
    // Service logs are masked like all trace output.
    assert!(!trace.contains("topsecretvalue42"), "{trace}");
    assert!(trace.contains("script-ran"), "{trace}");
    // Without CI_DEBUG_SERVICES the log is not repeated at the end.
    assert!(!trace.contains("[service:db]"), "{trace}");
    drop(image);
    scope.assert_clean().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negative_wait_for_services_timeout_skips_the_wait() {
    let scope = Scope::new().await;
    let _fw = FirewallSweep(scope.runner_id.clone());
    let image = service_image(&scope);
    let cfg = scope.config(|c| c.docker.wait_for_services_timeout = None);
    let t = tree();
    let svc = service(&image.0, "echo never-listening; exec sleep 3600");
    let payload = payload(5103, &["echo script-ran"], json!({"services": svc}));
    let (outcome, trace) = run_job(&scope, cfg, payload, t.path()).await;
    assert!(
        matches!(outcome, JobOutcome::Success),
        "{outcome:?}\n{trace}"
    );
    assert!(!trace.contains("Waiting for services"), "{trace}");
    assert!(!trace.contains("probably didn't start properly"), "{trace}");
    assert!(trace.contains("script-ran"), "{trace}");
    drop(image);
    scope.assert_clean().await;
}
