//! The daemon and the GitLab client against the strict fake coordinator.

use crate::support;

// The CLI verbs and real signals, through the built binary.
mod binary;
// Runner health (unhealthy_requests_limit) and token rotation.
mod health;

use isolated_runner::config::{Config, RunnerConfig};
use isolated_runner::daemon::{DaemonOptions, ShutdownSignal};
use isolated_runner::gitlab::client::{ClientOptions, RetryPolicy};
use isolated_runner::gitlab::trace::TraceOptions;
use isolated_runner::gitlab::{self, ArtifactClient, Client, UploadOptions};
use isolated_runner::secret::Secret;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::daemon::start;
use support::fake_gitlab::{
    CancelKind, Endpoint, FakeGitlab, Fault, RUNNER_TOKEN, SECRET_VALUE, job_payload,
    job_payload_with_after,
};
use support::test_executor::{Event, TestExecutor};
use support::wait_until;

const LONG: Duration = Duration::from_secs(20);

fn config(fake: &FakeGitlab, edit: impl FnOnce(&mut Config)) -> Config {
    let runner = RunnerConfig {
        name: "test-runner".into(),
        url: fake.url().parse().unwrap(),
        token: Secret::new(RUNNER_TOKEN),
        ..RunnerConfig::default()
    };
    let mut c = Config {
        check_interval: Duration::from_millis(200),
        shutdown_timeout: Duration::from_secs(10),
        concurrent: 4,
        runners: vec![runner],
        ..Config::default()
    };
    edit(&mut c);
    c
}

fn options() -> DaemonOptions {
    DaemonOptions {
        client: ClientOptions {
            request_timeout: Duration::from_millis(1500),
            job_request_timeout: Duration::from_secs(3),
            retry: RetryPolicy {
                max_attempts: 5,
                base: Duration::from_millis(20),
                cap: Duration::from_millis(300),
            },
            ..ClientOptions::default()
        },
        trace: TraceOptions {
            initial_interval: Duration::from_millis(100),
            final_retry_pause: Duration::from_millis(50),
            ..TraceOptions::default()
        },
        final_retry_pause: Duration::from_millis(50),
        unhealthy_backoff: Duration::from_secs(60),
        abort_grace: Duration::from_secs(5),
        system_id: Some("s_0123456789ab".into()),
        ..DaemonOptions::default()
    }
}

async fn wait_final(fake: &FakeGitlab, id: u64) -> support::fake_gitlab::FinalUpdate {
    assert!(
        wait_until(LONG, || fake.final_state(id).is_some()).await,
        "job {id} got no final update; state {:?}",
        fake.job_state(id)
    );
    fake.final_state(id).unwrap()
}

#[tokio::test]
async fn idle_polling_respects_check_interval_and_sends_last_update() {
    let fake = FakeGitlab::start().await;
    let exec = TestExecutor::new();
    let run = start(
        config(&fake, |c| c.check_interval = Duration::from_millis(500)),
        exec,
        options(),
    );
    assert!(wait_until(LONG, || fake.count("POST", "/api/v4/jobs/request") >= 1).await);
    let first = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await; // a measuring window, not a sync point
    let n = fake.count("POST", "/api/v4/jobs/request");
    let elapsed = first.elapsed();
    run.stop(LONG).await;
    let allowed = (elapsed.as_millis() / 500) as usize + 2;
    assert!(
        n <= allowed,
        "{n} requests in {elapsed:?} with a 500ms interval"
    );
    let reqs = fake.requests();
    let polls: Vec<_> = reqs
        .iter()
        .filter(|r| r.path == "/api/v4/jobs/request")
        .collect();
    assert!(polls.len() >= 2);
    let body: serde_json::Value = serde_json::from_slice(&polls[1].body).unwrap();
    assert!(
        body["last_update"].is_string(),
        "long polling value sent back"
    );
    assert_eq!(body["info"]["features"]["cancel_gracefully"], true);
    assert_eq!(body["system_id"], "s_0123456789ab");
    assert!(
        polls[0]
            .headers
            .get("user-agent")
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("isolated-runner ")
    );
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}

#[tokio::test]
async fn job_success_trace_byte_identical_and_checksum() {
    let fake = FakeGitlab::start().await;
    let exec = TestExecutor::new();
    let id = fake.enqueue(job_payload(
        11,
        &["echo hello", "secret", "bulk 2500000", "echo done"],
    ));
    let run = start(config(&fake, |_| {}), exec.clone(), options());
    let fin = wait_final(&fake, id).await;
    run.stop(LONG).await;
    assert_eq!(fin.state, "success");
    let trace = fake.job_trace(id);
    assert_eq!(trace.len(), exec.written(id).len());
    assert!(
        trace == exec.written(id),
        "stored trace differs from what the executor wrote"
    );
    // Masking sits in the pipeline in front of the sink; until it lands the sink gets raw bytes.
    assert!(String::from_utf8_lossy(&trace).contains(SECRET_VALUE));
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
    // The job is confirmed with state=running before any trace is sent.
    let reqs = fake.requests();
    let first_put = reqs.iter().position(|r| r.method == "PUT").unwrap();
    let first_patch = reqs.iter().position(|r| r.method == "PATCH").unwrap();
    assert!(first_put < first_patch);
    let confirm: serde_json::Value = serde_json::from_slice(&reqs[first_put].body).unwrap();
    assert_eq!(confirm["state"], "running");
    let patch = &reqs[first_patch];
    assert_eq!(patch.headers.get("job-token").unwrap(), "glcbt-job11token");
    assert!(
        patch
            .headers
            .get("content-range")
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("0-")
    );
    // Several patches: 1 MiB max each.
    assert!(
        reqs.iter()
            .filter(|r| r.method == "PATCH")
            .all(|r| r.body.len() <= 1024 * 1024)
    );
}

#[tokio::test]
async fn trace_survives_5xx_hangs_and_416() {
    let fake = FakeGitlab::start().await;
    fake.inject(Fault::ServerErrors {
        endpoint: Endpoint::Trace,
        status: 502,
        count: 7,
    });
    fake.inject(Fault::Hang {
        endpoint: Endpoint::Trace,
        count: 1,
    });
    fake.inject(Fault::RangeMismatch { count: 2 });
    let exec = TestExecutor::new();
    let id = fake.enqueue(job_payload(
        12,
        &[
            "echo one",
            "sleep 0.3",
            "bulk 300000",
            "sleep 0.3",
            "secret",
            "sleep 0.3",
            "echo last",
        ],
    ));
    let run = start(config(&fake, |_| {}), exec.clone(), options());
    let fin = wait_final(&fake, id).await;
    run.stop(LONG).await;
    assert_eq!(fin.state, "success");
    assert!(
        fake.job_trace(id) == exec.written(id),
        "trace not byte-identical after faults"
    );
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}

#[tokio::test]
async fn trace_recovers_when_server_has_more_than_we_think() {
    // A patch that landed but whose answer was lost: the fake's 416 Range tells us to skip ahead.
    let fake = FakeGitlab::start().await;
    let exec = TestExecutor::new();
    fake.inject(Fault::Slow {
        endpoint: Endpoint::Trace,
        delay: Duration::from_millis(2500),
        count: 1,
    });
    let id = fake.enqueue(job_payload(
        13,
        &["echo a", "sleep 0.5", "echo b", "sleep 0.5", "echo c"],
    ));
    let run = start(config(&fake, |_| {}), exec.clone(), options());
    let fin = wait_final(&fake, id).await;
    run.stop(LONG).await;
    assert_eq!(fin.state, "success");
    assert!(fake.job_trace(id) == exec.written(id));
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
    let statuses = fake.count("PATCH", "/api/v4/jobs/13/trace");
    assert!(statuses >= 3, "lost answer, resend (416), then the rest");
}

#[tokio::test]
async fn canceling_runs_after_script_then_reports() {
    let fake = FakeGitlab::start().await;
    let exec = TestExecutor::new();
    let id = fake.enqueue(job_payload(21, &["echo start", "sleep 30"]));
    fake.inject(Fault::CancelAtOffset {
        job_id: id,
        offset: 1,
        kind: CancelKind::Canceling,
    });
    let run = start(config(&fake, |_| {}), exec.clone(), options());
    let fin = wait_final(&fake, id).await;
    run.stop(LONG).await;
    assert!(exec.events().contains(&Event::CanceledGracefully(id)));
    assert_eq!(fin.state, "failed");
    assert_eq!(fin.failure_reason.as_deref(), Some("unknown_failure"));
    assert!(String::from_utf8_lossy(&fake.job_trace(id)).contains("$ echo after\nafter\n"));
    assert_eq!(fake.job_state(id).as_deref(), Some("canceled"));
}

#[tokio::test]
async fn canceled_aborts_without_after_script() {
    let fake = FakeGitlab::start().await;
    let exec = TestExecutor::new();
    let id = fake.enqueue(job_payload(22, &["echo start", "sleep 30"]));
    fake.inject(Fault::CancelAtOffset {
        job_id: id,
        offset: 1,
        kind: CancelKind::Canceled,
    });
    let run = start(config(&fake, |_| {}), exec.clone(), options());
    assert!(wait_until(LONG, || exec.events().contains(&Event::Aborted(id))).await);
    assert!(wait_until(LONG, || exec.running() == 0).await);
    // GitLab refuses updates of a canceled job; no final state is recorded and nothing hangs.
    let next = fake.enqueue(job_payload(23, &["echo next"]));
    assert_eq!(wait_final(&fake, next).await.state, "success");
    run.stop(LONG).await;
    assert!(!String::from_utf8_lossy(&exec.written(id)).contains("after"));
    assert_eq!(fake.job_state(id).as_deref(), Some("canceled"));
    assert!(fake.final_state(id).is_none());
}

#[tokio::test]
async fn final_update_is_retried_until_accepted() {
    let fake = FakeGitlab::start().await;
    fake.inject(Fault::ServerErrors {
        endpoint: Endpoint::FinalUpdate,
        status: 500,
        count: 8,
    });
    fake.inject(Fault::FinalAccepted202 { count: 2 });
    let exec = TestExecutor::new();
    let id = fake.enqueue(job_payload(31, &["echo x", "exit 3"]));
    let run = start(config(&fake, |_| {}), exec.clone(), options());
    let fin = wait_final(&fake, id).await;
    run.stop(LONG).await;
    assert_eq!(fin.state, "failed");
    assert_eq!(fin.failure_reason.as_deref(), Some("script_failure"));
    assert_eq!(fin.exit_code, Some(3));
    // 8 errors + 2×202 + the accepted one, plus the confirming PUT.
    assert!(fake.count("PUT", "/api/v4/jobs/31") >= 12);
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}

/// `runner_configuration_error` and `runner_unsupported` are in GitLab's list, so they reach it
/// as they are (not their fallbacks); a reason GitLab does not know is refused by the fake.
#[tokio::test]
async fn failure_reasons_gitlab_lists_arrive_as_they_are() {
    let fake = FakeGitlab::start().await;
    let exec = TestExecutor::new();
    let reasons = ["runner_configuration_error", "runner_unsupported"];
    let ids: Vec<u64> = (41..)
        .zip(reasons)
        .map(|(id, r)| fake.enqueue(job_payload(id, &[&format!("fail {r}")])))
        .collect();
    let run = start(config(&fake, |_| {}), exec, options());
    for (id, reason) in ids.iter().zip(reasons) {
        let fin = wait_final(&fake, *id).await;
        assert_eq!(
            (fin.state.as_str(), fin.failure_reason.as_deref()),
            ("failed", Some(reason))
        );
    }
    run.stop(LONG).await;
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());

    // By hand: `job_canceled` is gitlab-runner's internal reason, which GitLab never accepts.
    isolated_runner::install_crypto_provider();
    let id = fake.enqueue(job_payload(43, &[]));
    let client = Client::new(&fake.url().parse().unwrap(), ClientOptions::default()).unwrap();
    let req = gitlab::JobRequest {
        token: Secret::new(RUNNER_TOKEN),
        system_id: "s_0123456789ab".into(),
        last_update: None,
        info: gitlab::identity::runner_info(),
    };
    assert!(matches!(
        client.request_job(&req, None).await.unwrap(),
        gitlab::JobRequestOutcome::Job { .. }
    ));
    let update = gitlab::client::UpdateJob {
        state: "failed".into(),
        failure_reason: Some("job_canceled".into()),
        // The empty trace's, so the reason is the only thing wrong.
        checksum: Some("crc32:00000000".into()),
        bytesize: Some(0),
        ..Default::default()
    };
    let token = Secret::new(format!("glcbt-job{id}token"));
    client.update_job(id, &token, &update).await.unwrap();
    assert_eq!(
        fake.violations(),
        [format!(
            "job {id}: failure_reason \"job_canceled\" is not one GitLab accepts"
        )]
    );
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn invalid_runner_token_is_logged_once_without_tight_loop() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let fake = FakeGitlab::start().await;
    fake.revoke_runner_token(RUNNER_TOKEN);
    let exec = TestExecutor::new();
    let run = start(
        config(&fake, |c| c.check_interval = Duration::from_millis(50)),
        exec,
        options(),
    );
    assert!(wait_until(LONG, || fake.count("POST", "/api/v4/jobs/request") >= 1).await);
    tokio::time::sleep(Duration::from_secs(1)).await; // a measuring window: 20 intervals
    let n = fake.count("POST", "/api/v4/jobs/request");
    run.stop(LONG).await;
    assert_eq!(n, 1, "403 must not be retried in a loop");
    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    let errors = logs
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("rejected this runner's token"))
        .count();
    assert_eq!(errors, 1, "{logs}");
    assert!(!logs.contains(RUNNER_TOKEN), "token leaked into logs");
}

#[tokio::test]
async fn malformed_payload_fails_that_job_and_runner_keeps_serving() {
    let fake = FakeGitlab::start().await;
    let exec = TestExecutor::new();
    fake.enqueue_raw(
        41,
        "glcbt-bad41",
        r#"{"id": 41, "token": "glcbt-bad41", "steps": "not-a-list"}"#.into(),
    );
    fake.enqueue_raw(
        42,
        "glcbt-bad42",
        r#"{"id": "forty-two", "token": "glcbt-bad42"}"#.into(),
    );
    let good = fake.enqueue(job_payload(43, &["echo fine"]));
    let run = start(config(&fake, |_| {}), exec.clone(), options());
    let bad = wait_final(&fake, 41).await;
    assert_eq!(wait_final(&fake, good).await.state, "success");
    run.stop(LONG).await;
    assert_eq!(bad.state, "failed");
    assert_eq!(bad.failure_reason.as_deref(), Some("runner_system_failure"));
    assert!(String::from_utf8_lossy(&fake.job_trace(41)).contains("could not read the job"));
    // Job 42's id cannot be read: nothing can be reported for it, and nothing crashed.
    assert!(fake.final_state(42).is_none());
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}

#[tokio::test]
async fn limit_bounds_running_jobs() {
    let fake = FakeGitlab::start().await;
    let exec = TestExecutor::new();
    let ids: Vec<u64> = (51..56)
        .map(|i| fake.enqueue(job_payload(i, &["sleep 0.4", "echo ok"])))
        .collect();
    let run = start(
        config(&fake, |c| {
            c.concurrent = 4;
            c.runners[0].limit = 2;
            c.check_interval = Duration::from_millis(50);
        }),
        exec.clone(),
        options(),
    );
    for id in &ids {
        assert_eq!(wait_final(&fake, *id).await.state, "success");
    }
    run.stop(LONG).await;
    assert_eq!(exec.max_running(), 2);
}

#[tokio::test]
async fn concurrent_bounds_running_jobs_across_runners() {
    let fake = FakeGitlab::start().await;
    fake.add_runner_token("glrt-second");
    let exec = TestExecutor::new();
    let ids: Vec<u64> = (61..66)
        .map(|i| fake.enqueue(job_payload(i, &["sleep 0.4"])))
        .collect();
    let run = start(
        config(&fake, |c| {
            c.concurrent = 1;
            c.check_interval = Duration::from_millis(50);
            let mut second = c.runners[0].clone();
            second.token = Secret::new("glrt-second");
            c.runners.push(second);
        }),
        exec.clone(),
        options(),
    );
    for id in &ids {
        assert_eq!(wait_final(&fake, *id).await.state, "success");
    }
    run.stop(LONG).await;
    assert_eq!(exec.max_running(), 1);
}

#[tokio::test]
async fn request_concurrency_bounds_open_requests() {
    for (rc, expect_parallel) in [(1usize, false), (3, true)] {
        let fake = FakeGitlab::start().await;
        fake.inject(Fault::Slow {
            endpoint: Endpoint::JobRequest,
            delay: Duration::from_millis(600),
            count: 6,
        });
        let exec = TestExecutor::new();
        let run = start(
            config(&fake, |c| {
                c.check_interval = Duration::from_millis(50);
                c.runners[0].request_concurrency = rc;
            }),
            exec,
            options(),
        );
        assert!(wait_until(LONG, || fake.count("POST", "/api/v4/jobs/request") >= 4).await);
        run.stop(LONG).await;
        let max = fake.max_concurrent_job_requests();
        if expect_parallel {
            assert!(
                max > 1 && max <= rc,
                "request_concurrency {rc}: {max} open at once"
            );
        } else {
            assert_eq!(max, 1);
        }
    }
}

#[tokio::test]
async fn rate_limit_is_honoured() {
    let fake = FakeGitlab::start().await;
    fake.inject(Fault::RateLimited {
        endpoint: Endpoint::JobRequest,
        retry_after_secs: 1,
        count: 1,
    });
    let exec = TestExecutor::new();
    let id = fake.enqueue(job_payload(71, &["echo hi"]));
    let run = start(config(&fake, |_| {}), exec, options());
    assert_eq!(wait_final(&fake, id).await.state, "success");
    run.stop(LONG).await;
    let polls: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.path == "/api/v4/jobs/request")
        .collect();
    // The retry came no earlier than Retry-After (capped at the test policy's 300ms cap).
    assert!(polls[1].at.duration_since(polls[0].at) >= Duration::from_millis(300));
}

#[tokio::test]
async fn sigquit_drains_running_jobs() {
    let fake = FakeGitlab::start().await;
    let exec = TestExecutor::new();
    let id = fake.enqueue(job_payload(81, &["sleep 1", "echo done"]));
    let run = start(config(&fake, |_| {}), exec.clone(), options());
    assert!(wait_until(LONG, || exec.events().contains(&Event::Started(id))).await);
    run.signal(ShutdownSignal::Drain);
    let after_drain = fake.count("POST", "/api/v4/jobs/request");
    let later = fake.enqueue(job_payload(82, &["echo never"]));
    run.finished(LONG).await;
    assert_eq!(fake.final_state(id).unwrap().state, "success");
    assert!(exec.events().contains(&Event::Finished(id)));
    // At most the one request already in flight when the signal came.
    assert!(fake.count("POST", "/api/v4/jobs/request") <= after_drain + 1);
    assert_eq!(fake.job_state(later).as_deref(), Some("pending"));
}

#[tokio::test]
async fn sigterm_cancels_gracefully_and_reports_system_failure() {
    let fake = FakeGitlab::start().await;
    let exec = TestExecutor::new();
    let id = fake.enqueue(job_payload(91, &["sleep 60"]));
    let run = start(config(&fake, |_| {}), exec.clone(), options());
    assert!(wait_until(LONG, || exec.events().contains(&Event::Started(id))).await);
    run.signal(ShutdownSignal::Stop);
    run.finished(LONG).await;
    assert!(exec.events().contains(&Event::CanceledGracefully(id)));
    let fin = fake.final_state(id).expect("final update sent before exit");
    assert_eq!(fin.failure_reason.as_deref(), Some("runner_system_failure"));
    assert!(String::from_utf8_lossy(&fake.job_trace(id)).contains("after"));
}

#[tokio::test]
async fn second_signal_forces_abort() {
    let fake = FakeGitlab::start().await;
    let exec = TestExecutor::new();
    let id = fake.enqueue(job_payload_with_after(92, &["sleep 60"], &["sleep 60"]));
    let run = start(config(&fake, |_| {}), exec.clone(), options());
    assert!(wait_until(LONG, || exec.events().contains(&Event::Started(id))).await);
    run.signal(ShutdownSignal::Stop);
    assert!(
        wait_until(LONG, || exec
            .events()
            .contains(&Event::CanceledGracefully(id)))
        .await
    );
    run.signal(ShutdownSignal::Stop);
    run.finished(LONG).await;
    assert!(exec.events().contains(&Event::Aborted(id)));
    assert_eq!(fake.final_state(id).unwrap().state, "failed");
}

#[tokio::test]
async fn shutdown_timeout_aborts_stuck_jobs() {
    let fake = FakeGitlab::start().await;
    let exec = TestExecutor::new();
    let id = fake.enqueue(job_payload_with_after(93, &["sleep 60"], &["sleep 60"]));
    let run = start(
        config(&fake, |c| c.shutdown_timeout = Duration::from_secs(1)),
        exec.clone(),
        options(),
    );
    assert!(wait_until(LONG, || exec.events().contains(&Event::Started(id))).await);
    run.signal(ShutdownSignal::Stop);
    run.finished(LONG).await;
    assert!(exec.events().contains(&Event::Aborted(id)));
    assert_eq!(
        fake.final_state(id).unwrap().failure_reason.as_deref(),
        Some("runner_system_failure")
    );
}

#[tokio::test]
async fn artifacts_upload_download_and_413() {
    isolated_runner::install_crypto_provider();
    let fake = FakeGitlab::start().await;
    let id = fake.enqueue(job_payload(101, &[]));
    let token = Secret::new("glcbt-job101token");
    // Hand the job out so it is running.
    let client = Client::new(&fake.url().parse().unwrap(), ClientOptions::default()).unwrap();
    let req = gitlab::JobRequest {
        token: Secret::new(RUNNER_TOKEN),
        system_id: "s_0123456789ab".into(),
        last_update: None,
        info: gitlab::identity::runner_info(),
    };
    assert!(matches!(
        client.request_job(&req, None).await.unwrap(),
        gitlab::JobRequestOutcome::Job { .. }
    ));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a.zip");
    tokio::fs::write(&file, b"PK\x03\x04 pretend zip")
        .await
        .unwrap();
    let artifacts = ArtifactClient::new(client.clone());
    let opts = UploadOptions {
        expire_in: Some("1 week".into()),
        ..UploadOptions::default()
    };
    let file = std::fs::File::open(&file).unwrap();
    artifacts.upload(id, &token, &file, &opts).await.unwrap();
    let stored = fake.artifacts(id);
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].data, b"PK\x03\x04 pretend zip");
    assert_eq!(
        (
            stored[0].artifact_type.as_str(),
            stored[0].artifact_format.as_str()
        ),
        ("archive", "zip")
    );
    assert_eq!(stored[0].expire_in.as_deref(), Some("1 week"));

    // A retried upload streams the same open file again from its start (rewound, never
    // reopened by path).
    fake.inject(Fault::ServerErrors {
        endpoint: Endpoint::ArtifactsUpload,
        status: 502,
        count: 1,
    });
    artifacts.upload(id, &token, &file, &opts).await.unwrap();
    let stored = fake.artifacts(id);
    assert_eq!(stored.len(), 2, "the 502 try is not stored, the retry is");
    assert_eq!(
        stored.last().map(|a| a.data.as_slice()),
        Some(&b"PK\x03\x04 pretend zip"[..])
    );

    fake.inject(Fault::ServerErrors {
        endpoint: Endpoint::ArtifactsUpload,
        status: 413,
        count: 1,
    });
    let err = artifacts
        .upload(id, &token, &file, &opts)
        .await
        .unwrap_err();
    assert!(matches!(err, gitlab::Error::TooLarge { .. }), "{err}");

    fake.put_artifact(id, b"dependency bytes".to_vec());
    let dest_path = dir.path().join("dep.zip");
    let dest = std::fs::File::options()
        .create_new(true)
        .read(true)
        .write(true)
        .open(&dest_path)
        .unwrap();
    assert_eq!(artifacts.download(id, &token, &dest).await.unwrap(), 16);
    assert_eq!(
        tokio::fs::read(&dest_path).await.unwrap(),
        b"dependency bytes"
    );
    let err = artifacts
        .download(id, &Secret::new("wrong"), &dest)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(403));
}

#[tokio::test]
async fn fake_serves_git_over_smart_http_with_job_token() {
    isolated_runner::install_crypto_provider();
    let fake = FakeGitlab::start().await;
    let sha = fake
        .create_repo("demo", &[("README.md", "hello\n")], Some(9))
        .await;
    fake.enqueue(job_payload(111, &[]));
    let client = Client::new(&fake.url().parse().unwrap(), ClientOptions::default()).unwrap();
    let req = gitlab::JobRequest {
        token: Secret::new(RUNNER_TOKEN),
        system_id: "s_0123456789ab".into(),
        last_update: None,
        info: gitlab::identity::runner_info(),
    };
    client.request_job(&req, None).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new("git")
        .args([
            "clone",
            "-q",
            &fake.repo_url("demo", "glcbt-job111token"),
            "co",
        ])
        .current_dir(dir.path())
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        tokio::fs::read_to_string(dir.path().join("co/README.md"))
            .await
            .unwrap(),
        "hello\n"
    );
    let refs = tokio::process::Command::new("git")
        .args(["ls-remote", &fake.repo_url("demo", "glcbt-job111token")])
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&refs.stdout).contains(&format!("{sha}\trefs/pipelines/9")));
    let denied = tokio::process::Command::new("git")
        .args(["ls-remote", &fake.repo_url("demo", "wrong-token")])
        .env("GIT_TERMINAL_PROMPT", "0")
        .output()
        .await
        .unwrap();
    assert!(!denied.status.success());
}
