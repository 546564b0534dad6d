//! A job's final state reaches GitLab as soon as its last stage is done; its sidecar is torn
//! down afterwards, in the background of the daemon but inside the job's concurrency slot:
//! GitLab sees the final state while the sidecar still exists, the next job is not asked for
//! (with `concurrent = 1`) before the teardown ended, shutdown waits for the teardown, and a
//! teardown that leaves something is logged, counted and reaped. Real daemon, real executor,
//! real engine, the fake GitLab.

use crate::support;

use isolated_runner::cleanup::reaper::{self, ReapRequest};
use isolated_runner::metrics::Metrics;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::e2e::{E2e, JOB_TIMEOUT};
use support::fake_gitlab::{Endpoint, Fault};
use tokio::time::Instant;

/// When the job's sidecar or network was last seen on the engine (the time the listing
/// started: the object existed at that moment or later) and whether it was ever seen.
#[derive(Default)]
struct Sightings {
    last_seen: Option<Instant>,
}

/// Watches job `job`'s sidecar and network every 50 ms until aborted.
fn watch(e2e: &E2e, job: u64) -> (Arc<Mutex<Sightings>>, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(Sightings::default()));
    let docker = e2e.scope.docker.clone();
    let filters = isolated_runner::docker::label_filters(&e2e.scope.runner_id, Some(job));
    let s = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            let t0 = Instant::now();
            let sidecar = docker
                .list_containers(&filters)
                .await
                .map(|l| l.iter().any(|c| c.name.ends_with("-sidecar")))
                .unwrap_or(false);
            let network = docker
                .list_networks(&filters)
                .await
                .map(|l| !l.is_empty())
                .unwrap_or(false);
            if sidecar || network {
                s.lock().unwrap().last_seen = Some(t0);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    (seen, task)
}

/// When the fake received job `id`'s final `PUT` (the first with `success` or `failed`).
fn final_put_at(e2e: &E2e, id: u64) -> Instant {
    let path = format!("/api/v4/jobs/{id}");
    e2e.fake
        .requests()
        .into_iter()
        .find(|r| {
            r.method == "PUT"
                && r.path == path
                && serde_json::from_slice::<serde_json::Value>(&r.body)
                    .ok()
                    .and_then(|v| v["state"].as_str().map(|s| s == "success" || s == "failed"))
                    .unwrap_or(false)
        })
        .unwrap_or_else(|| panic!("no final PUT for job {id}"))
        .at
}

/// GitLab gets the final state while the sidecar still runs; the sidecar is gone shortly after;
/// with `concurrent = 1` the next job is asked for only once the teardown is over.
#[tokio::test]
async fn the_final_state_goes_out_before_the_teardown_and_the_slot_waits_for_it() {
    let e2e = E2e::new().await;
    // GitLab takes 1.5 s to answer each final update: a window in which a runner that freed
    // the slot at the final state would ask for the next job (check_interval 300 ms).
    e2e.fake.inject(Fault::Slow {
        endpoint: Endpoint::FinalUpdate,
        delay: Duration::from_millis(1500),
        count: 2,
    });
    let (a, b) = (710_001, 710_002);
    e2e.fake.enqueue(e2e.job(a, &["echo job a"], &[]));
    e2e.fake.enqueue(e2e.job(b, &["echo job b"], &[]));
    let (seen, watcher) = watch(&e2e, a);
    let daemon = e2e.start_daemon(e2e.config(1));
    assert_eq!(e2e.wait_final(a, JOB_TIMEOUT).await.state, "success");
    e2e.wait_no_containers(a, Duration::from_secs(60)).await;
    assert_eq!(e2e.wait_final(b, JOB_TIMEOUT).await.state, "success");
    daemon.stop(Duration::from_secs(120)).await;
    watcher.abort();

    let put = final_put_at(&e2e, a);
    let last_seen = seen
        .lock()
        .unwrap()
        .last_seen
        .expect("job a's sidecar was seen");
    assert!(
        last_seen > put,
        "job a's sidecar and network were gone {:?} before GitLab got its final state",
        put - last_seen
    );
    // Every job request after A's final state came after A's objects were gone.
    let early: Vec<Duration> = e2e
        .fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path == "/api/v4/jobs/request")
        .filter(|r| r.at > put && r.at < last_seen)
        .map(|r| last_seen - r.at)
        .collect();
    assert!(
        early.is_empty(),
        "the slot was given back before job a's teardown ended: requests {early:?} before its \
         objects were gone"
    );
    e2e.scope.assert_clean().await;
}

/// A stop signal while a finished job's final state is still in flight: the daemon returns only
/// once that job's environment is gone.
#[tokio::test]
async fn shutdown_waits_for_a_background_teardown() {
    let e2e = E2e::new().await;
    e2e.fake.inject(Fault::Slow {
        endpoint: Endpoint::FinalUpdate,
        delay: Duration::from_millis(2000),
        count: 1,
    });
    let id = 710_011;
    e2e.fake.enqueue(e2e.job(id, &["echo done"], &[]));
    let daemon = e2e.start_daemon(e2e.config(1));
    let path = format!("/api/v4/jobs/{id}");
    let arrived = support::wait_until(JOB_TIMEOUT, || {
        e2e.fake.requests().iter().any(|r| {
            r.method == "PUT"
                && r.path == path
                && String::from_utf8_lossy(&r.body).contains("\"success\"")
        })
    })
    .await;
    assert!(arrived, "no final state; trace:\n{}", e2e.trace(id));
    assert!(
        !e2e.containers(Some(id), Some("sidecar")).await.is_empty(),
        "the sidecar is still there while the final state is answered"
    );
    daemon.stop(Duration::from_secs(120)).await;
    // Nothing of the job is left once the daemon returned: the teardown was waited for.
    e2e.scope.assert_clean().await;
}

/// A teardown that cannot remove everything (a container the runner does not know holds the
/// job's network): the job still succeeds, the failure is counted in
/// `isolated_runner_teardown_failures_total`, and the reaper removes what was left.
#[tokio::test]
async fn a_failing_background_teardown_is_counted_and_reaped() {
    let e2e = E2e::new().await;
    let id = 710_021;
    e2e.fake
        .enqueue(e2e.job(id, &["echo READY-FOR-INTRUDER", "sleep 6"], &[]));
    let metrics = Arc::new(Metrics::new());
    let daemon = e2e.start_daemon_with_metrics(e2e.config(1), Some(metrics.clone()));
    e2e.wait_trace(id, "READY-FOR-INTRUDER\n", JOB_TIMEOUT)
        .await;
    let filters = isolated_runner::docker::label_filters(&e2e.scope.runner_id, Some(id));
    let net = e2e
        .scope
        .docker
        .list_networks(&filters)
        .await
        .expect("list networks")
        .into_iter()
        .next()
        .expect("the job's network");
    // Labelled with the runner (the reaper's and the scope's sweep find it), not with the job
    // (the job's teardown does not).
    let out = tokio::process::Command::new("docker")
        .args([
            "run",
            "-d",
            "--pull=never",
            "--label",
            "io.isolated-runner.managed=1",
            "--label",
            &format!("io.isolated-runner.runner={}", e2e.scope.runner_id),
            "--network",
            &net.name,
            support::docker::BUSYBOX_IMAGE,
            "sleep",
            "300",
        ])
        .output()
        .await
        .expect("docker run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(e2e.wait_final(id, JOB_TIMEOUT).await.state, "success");
    let counted = support::wait_until(Duration::from_secs(120), || {
        metrics
            .render()
            .lines()
            .any(|l| l == "isolated_runner_teardown_failures_total 1")
    })
    .await;
    assert!(counted, "the failed teardown was not counted");
    daemon.stop(Duration::from_secs(120)).await;
    let left = e2e
        .scope
        .docker
        .list_networks(&filters)
        .await
        .expect("list networks");
    assert_eq!(left.len(), 1, "the held network outlived the teardown");
    let report = reaper::reap(
        &e2e.scope.docker,
        &ReapRequest {
            runner_id: e2e.scope.runner_id.clone(),
            state_dir: e2e.scope.state_dir(),
            builds_dir: e2e.scope.builds_dir(),
            dry_run: false,
        },
    )
    .await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    e2e.scope.assert_clean().await;
}
