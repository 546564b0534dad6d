//! The daemon serves its metrics on `listen_address`: scraped over real HTTP while it polls.

use crate::support;

use isolated_runner::config::{Config, RunnerConfig};
use isolated_runner::daemon::{DaemonOptions, ShutdownSignal};
use isolated_runner::gitlab::ClientOptions;
use isolated_runner::gitlab::trace::TraceOptions;
use isolated_runner::secret::Secret;
use std::time::Duration;
use support::fake_gitlab::{FakeGitlab, RUNNER_TOKEN, job_payload};
use support::test_executor::TestExecutor;
use support::wait_until;

const LONG: Duration = Duration::from_secs(30);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

async fn get(http: &reqwest::Client, url: &str) -> (u16, String) {
    match http.get(url).send().await {
        Ok(r) => {
            let s = r.status().as_u16();
            (s, r.text().await.unwrap_or_default())
        }
        Err(_) => (0, String::new()),
    }
}

#[tokio::test]
async fn daemon_serves_job_api_and_readiness_metrics() {
    isolated_runner::install_crypto_provider();
    let fake = FakeGitlab::start().await;
    fake.enqueue(job_payload(1, &["echo hi"]));
    fake.enqueue(job_payload(2, &["exit 3"]));
    let port = free_port();
    let config = Config {
        check_interval: Duration::from_millis(200),
        shutdown_timeout: Duration::from_secs(10),
        concurrent: 2,
        listen_address: Some(format!("127.0.0.1:{port}")),
        runners: vec![RunnerConfig {
            name: "metered".into(),
            url: fake.url().parse().unwrap(),
            token: Secret::new(RUNNER_TOKEN),
            limit: 2,
            ..RunnerConfig::default()
        }],
        ..Config::default()
    };
    let options = DaemonOptions {
        client: ClientOptions {
            request_timeout: Duration::from_millis(1500),
            job_request_timeout: Duration::from_secs(3),
            ..ClientOptions::default()
        },
        trace: TraceOptions {
            initial_interval: Duration::from_millis(100),
            final_retry_pause: Duration::from_millis(50),
            ..TraceOptions::default()
        },
        final_retry_pause: Duration::from_millis(50),
        system_id: Some("s_0123456789ab".into()),
        ..DaemonOptions::default()
    };
    let exec = TestExecutor::new();
    let daemon = support::daemon::start(config, exec, options);
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();

    assert!(
        wait_until(LONG, || fake.final_state(1).is_some()
            && fake.final_state(2).is_some())
        .await,
        "jobs did not finish"
    );
    let (status, _) = get(&http, &format!("{base}/ready")).await;
    assert_eq!(status, 200, "/ready while polling");

    let ids = "runner=\"glrt-t3_\",runner_name=\"metered\",system_id=\"s_0123456789ab\"";
    let short = isolated_runner::gitlab::identity::short_token(RUNNER_TOKEN);
    let ids = ids.replace("glrt-t3_", &short);
    let api = |endpoint: &str, status: u16| {
        format!(
            "gitlab_runner_api_request_statuses_total{{runner=\"{short}\",system_id=\"s_0123456789ab\",endpoint=\"{endpoint}\",status=\"{status}\"}}"
        )
    };
    // An idle poll (204) follows the two jobs; scrape until it was counted.
    let deadline = tokio::time::Instant::now() + LONG;
    let text = loop {
        let (status, text) = get(&http, &format!("{base}/metrics")).await;
        assert_eq!(status, 200);
        if value(&text, &api("request_job", 204)).is_some()
            || tokio::time::Instant::now() >= deadline
        {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        value(&text, &format!("gitlab_runner_jobs_total{{{ids}}}")),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            &format!("gitlab_runner_failed_jobs_total{{{ids},failure_reason=\"script_failure\"}}")
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(value(&text, &api("request_job", 201)), Some(2.0), "{text}");
    assert!(
        value(&text, &api("request_job", 204)).unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    assert!(
        value(&text, &api("update_job", 200)).unwrap_or(0.0) >= 4.0,
        "{text}"
    );
    assert_eq!(value(&text, "gitlab_runner_concurrent"), Some(2.0));
    assert_eq!(
        value(&text, &format!("gitlab_runner_limit{{{ids}}}")),
        Some(2.0)
    );
    assert_eq!(
        value(
            &text,
            "isolated_runner_jobs_total{isolation_mode=\"dind\",outcome=\"failed\"}"
        ),
        Some(1.0),
        "{text}"
    );

    // A job that keeps running holds the daemon in its drain: /ready says so.
    fake.enqueue(job_payload(3, &["sleep 30"]));
    assert!(wait_until(LONG, || fake.job_state(3).as_deref() == Some("running")).await);
    daemon.signal(ShutdownSignal::Drain);
    let deadline = tokio::time::Instant::now() + LONG;
    let mut draining = false;
    while tokio::time::Instant::now() < deadline {
        if get(&http, &format!("{base}/ready")).await.0 == 503 {
            draining = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(draining, "/ready never answered 503 while draining");
    daemon.stop(LONG).await;
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}
