//! The metrics endpoint over real HTTP on loopback.

use isolated_runner::config::IsolationMode;
use isolated_runner::job::{FailureReason, JobOutcome};
use isolated_runner::metrics::{self, ErrorLevel, Metrics, Readiness, RunnerLabels};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn line_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn scrape_shows_recorded_events_and_ready_flips_on_drain() {
    isolated_runner::install_crypto_provider();
    let m = Arc::new(Metrics::new());
    let readiness = Readiness::new();
    let cancel = CancellationToken::new();
    let server = metrics::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", server.local_addr());
    let task = tokio::spawn(server.serve(m.clone(), readiness.clone(), cancel.clone()));
    let http = reqwest::Client::new();

    // Record a little of everything.
    m.set_concurrent(4);
    let runner = m.runner(RunnerLabels::new("glrt-abc", "ci-1", "s_0123"));
    runner.set_limit(2);
    let ok_job = runner.job_started(IsolationMode::Dind);
    let bad_job = runner.job_started(IsolationMode::Dind);
    let still_running = runner.job_started(IsolationMode::SharedSocket);
    ok_job.finished(&JobOutcome::Success);
    bad_job.finished(&JobOutcome::Failed {
        reason: FailureReason::RunnerSystemFailure,
        exit_code: None,
    });
    runner.api_request("request_job", 204);
    runner.api_request("request_job", 204);
    runner.api_request_timed("update_job", 200, Duration::from_millis(300));
    m.observe_sidecar_ready(Duration::from_millis(1500));
    m.observe_sidecar_ready(Duration::from_secs(40));
    m.observe_teardown(Duration::from_millis(700));
    m.observe_stage("dind_certs", Duration::from_millis(20));
    m.observe_stage("step_script", Duration::from_secs(12));
    m.leftovers_found("container", 3);
    m.error_logged(ErrorLevel::Warning);

    let resp = http.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = resp.text().await.unwrap();
    let rl = r#"runner="glrt-abc",runner_name="ci-1",system_id="s_0123""#;
    let expect = [
        ("gitlab_runner_concurrent".to_string(), 4.0),
        (format!("gitlab_runner_limit{{{rl}}}"), 2.0),
        (
            format!(r#"gitlab_runner_jobs{{{rl},state="running",stage="",executor_stage=""}}"#),
            1.0,
        ),
        (format!("gitlab_runner_jobs_total{{{rl}}}"), 3.0),
        (
            format!(r#"gitlab_runner_failed_jobs_total{{{rl},failure_reason="runner_system_failure"}}"#),
            1.0,
        ),
        (
            r#"gitlab_runner_api_request_statuses_total{runner="glrt-abc",system_id="s_0123",endpoint="request_job",status="204"}"#.to_string(),
            2.0,
        ),
        (
            r#"gitlab_runner_api_request_duration_seconds_bucket{runner="glrt-abc",system_id="s_0123",endpoint="update_job",status_class="2xx",le="0.5"}"#.to_string(),
            1.0,
        ),
        (r#"gitlab_runner_errors_total{level="warning"}"#.to_string(), 1.0),
        (r#"gitlab_runner_errors_total{level="error"}"#.to_string(), 0.0),
        (
            r#"isolated_runner_jobs_total{isolation_mode="dind",outcome="success"}"#.to_string(),
            1.0,
        ),
        (
            r#"isolated_runner_jobs_total{isolation_mode="dind",outcome="failed"}"#.to_string(),
            1.0,
        ),
        (r#"isolated_runner_sidecar_ready_seconds_bucket{le="1"}"#.to_string(), 0.0),
        (r#"isolated_runner_sidecar_ready_seconds_bucket{le="2"}"#.to_string(), 1.0),
        (r#"isolated_runner_sidecar_ready_seconds_bucket{le="30"}"#.to_string(), 1.0),
        (r#"isolated_runner_sidecar_ready_seconds_bucket{le="60"}"#.to_string(), 2.0),
        (r#"isolated_runner_sidecar_ready_seconds_bucket{le="+Inf"}"#.to_string(), 2.0),
        ("isolated_runner_sidecar_ready_seconds_sum".to_string(), 41.5),
        ("isolated_runner_sidecar_ready_seconds_count".to_string(), 2.0),
        (r#"isolated_runner_teardown_seconds_bucket{le="1"}"#.to_string(), 1.0),
        (
            r#"isolated_runner_stage_seconds_bucket{stage="dind_certs",le="0.05"}"#.to_string(),
            1.0,
        ),
        (
            r#"isolated_runner_stage_seconds_bucket{stage="step_script",le="10"}"#.to_string(),
            0.0,
        ),
        (
            r#"isolated_runner_stage_seconds_bucket{stage="step_script",le="30"}"#.to_string(),
            1.0,
        ),
        (
            r#"gitlab_runner_job_stage_duration_seconds_bucket{stage="step_script",le="30"}"#.to_string(),
            1.0,
        ),
        (
            r#"isolated_runner_reaper_leftovers_total{kind="container"}"#.to_string(),
            3.0,
        ),
        (format!("gitlab_runner_job_duration_seconds_count{{{rl}}}"), 2.0),
    ];
    for (series, want) in &expect {
        assert_eq!(line_value(&text, series), Some(*want), "{series}\n{text}");
    }
    for t in [
        "# TYPE gitlab_runner_jobs gauge",
        "# TYPE gitlab_runner_jobs_total counter",
        "# TYPE isolated_runner_stage_seconds histogram",
        "# TYPE gitlab_runner_version_info gauge",
    ] {
        assert!(text.contains(t), "{t}");
    }
    assert!(text.contains(r#"gitlab_runner_version_info{name="isolated-runner",version=""#));
    assert!(line_value(&text, "process_resident_memory_bytes").unwrap_or(0.0) > 0.0);

    // The last running job ends: the gauge is back at zero.
    drop(still_running);
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(line_value(&text, &expect[2].0), Some(0.0));

    // Health always; ready only between set_ready and set_draining.
    let status = |path: &'static str| {
        let http = http.clone();
        let base = base.clone();
        async move {
            http.get(format!("{base}{path}"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(status("/health").await, 200);
    assert_eq!(status("/ready").await, 503);
    readiness.set_ready();
    assert_eq!(status("/ready").await, 200);
    readiness.set_draining();
    assert_eq!(status("/ready").await, 503);
    assert_eq!(status("/health").await, 200);
    assert_eq!(status("/nope").await, 404);

    cancel.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn bind_error_names_the_address() {
    let err = metrics::bind("256.0.0.1:1").await.unwrap_err();
    assert!(err.to_string().contains("256.0.0.1:1"), "{err}");
}
