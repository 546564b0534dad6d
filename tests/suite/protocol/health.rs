//! The poll loop's health gate (`unhealthy_requests_limit`, `unhealthy_interval`) and runner
//! token rotation (`token_expires_at`), against the fake GitLab.

use super::{Capture, LONG, config, options, wait_final};
use crate::support;
use isolated_runner::daemon::DaemonOptions;
use isolated_runner::gitlab::client::ClientOptions;
use isolated_runner::gitlab::{self, Client};
use isolated_runner::secret::Secret;
use std::sync::Arc;
use std::time::Duration;
use support::daemon::start;
use support::fake_gitlab::{FakeGitlab, RUNNER_TOKEN, job_payload};
use support::test_executor::TestExecutor;
use support::wait_until;

#[tokio::test(flavor = "current_thread")]
async fn unhealthy_runner_stops_asking_for_unhealthy_interval_then_recovers() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let logs = || String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    let fake = FakeGitlab::start().await;
    fake.revoke_runner_token(RUNNER_TOKEN);
    let metrics = Arc::new(isolated_runner::metrics::Metrics::new());
    let unhealthy_gauge = |v: &str| {
        metrics.render().lines().any(|l| {
            l.starts_with("isolated_runner_unhealthy{")
                && l.contains("runner_name=\"test-runner\"")
                && l.ends_with(&format!(" {v}"))
        })
    };
    let exec = TestExecutor::new();
    let run = start(
        config(&fake, |c| {
            c.check_interval = Duration::from_millis(50);
            c.runners[0].unhealthy_requests_limit = 2;
            c.runners[0].unhealthy_interval = Duration::from_secs(3);
        }),
        exec,
        DaemonOptions {
            // The token-refused backoff as short as the interval: only the health gate spaces
            // the requests here.
            unhealthy_backoff: Duration::from_millis(50),
            metrics: Some(metrics.clone()),
            ..options()
        },
    );
    assert!(wait_until(LONG, || logs().contains("runner is unhealthy")).await);
    assert!(unhealthy_gauge("1"), "{}", metrics.render());
    let at_limit = fake.count("POST", "/api/v4/jobs/request");
    assert_eq!(
        at_limit, 2,
        "unhealthy after unhealthy_requests_limit failures"
    );
    tokio::time::sleep(Duration::from_secs(1)).await; // a measuring window: 20 check intervals
    assert_eq!(
        fake.count("POST", "/api/v4/jobs/request"),
        at_limit,
        "an unhealthy runner asks for no job"
    );
    // GitLab takes the token again: after unhealthy_interval one check is forced, gets the job,
    // and the runner is healthy again.
    fake.add_runner_token(RUNNER_TOKEN);
    let id = fake.enqueue(job_payload(91, &["echo back"]));
    assert_eq!(wait_final(&fake, id).await.state, "success");
    run.stop(LONG).await;
    let logs = logs();
    assert!(
        logs.contains("runner is not healthy, but a check for a new job is forced"),
        "{logs}"
    );
    assert!(logs.contains("runner is healthy again"), "{logs}");
    assert_eq!(logs.matches("runner is unhealthy").count(), 1, "{logs}");
    assert!(unhealthy_gauge("0"), "{}", metrics.render());
    assert!(!logs.contains(RUNNER_TOKEN), "token leaked into logs");
}

#[tokio::test]
async fn reset_token_replaces_the_runner_token() {
    isolated_runner::install_crypto_provider();
    let fake = FakeGitlab::start().await;
    let id = fake.enqueue(job_payload(111, &[]));
    let client = Client::new(&fake.url().parse().unwrap(), ClientOptions::default()).unwrap();
    let old = Secret::new(RUNNER_TOKEN);
    let answer = client.reset_token(&old).await.unwrap();
    let new = answer.token.clone().unwrap();
    assert_ne!(new.expose(), RUNNER_TOKEN);
    assert_eq!(
        answer.token_expires_at.as_deref(),
        Some("2030-01-01T00:00:00.000Z")
    );
    assert!(
        !format!("{answer:?}").contains(new.expose()),
        "the answer's Debug shows the token"
    );
    let req = |token: &Secret| gitlab::JobRequest {
        token: token.clone(),
        system_id: "s_0123456789ab".into(),
        last_update: None,
        info: gitlab::identity::runner_info(),
    };
    let err = client.request_job(&req(&old), None).await.unwrap_err();
    assert_eq!(err.status(), Some(403), "the old token is dead");
    match client.request_job(&req(&new), None).await.unwrap() {
        gitlab::JobRequestOutcome::Job { job, .. } => assert_eq!(job.id, id),
        other => panic!("expected the job, got {other:?}"),
    }
    let err = client.reset_token(&old).await.unwrap_err();
    assert_eq!(err.status(), Some(403));
    let request = fake
        .requests()
        .into_iter()
        .find(|r| r.path == "/api/v4/runners/reset_authentication_token")
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(body, serde_json::json!({"token": RUNNER_TOKEN}));
}

#[tokio::test(flavor = "current_thread")]
async fn expiring_runner_token_is_reset_used_and_saved() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let fake = FakeGitlab::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    let text = format!(
        "# the admin's comment\nconcurrent = 4\n\n[[runners]]\n  name = \"test-runner\" # why\n  \
         url = \"{}\"\n  token = \"{RUNNER_TOKEN}\"\n  executor = \"docker\"\n",
        fake.url()
    );
    tokio::fs::write(&path, &text).await.unwrap();
    let now = std::time::SystemTime::now();
    let exec = TestExecutor::new();
    let run = start(
        config(&fake, |c| {
            // Three quarters of the lifetime passed already: reset at start.
            c.runners[0].token_obtained_at = Some(now - Duration::from_secs(3600));
            c.runners[0].token_expires_at = Some(now + Duration::from_secs(60));
        }),
        exec,
        DaemonOptions {
            config_path: Some(path.clone()),
            ..options()
        },
    );
    assert!(
        wait_until(LONG, || !fake
            .runner_tokens()
            .contains(&RUNNER_TOKEN.to_string()))
        .await,
        "the token was not reset"
    );
    let new = fake.runner_tokens().pop().unwrap();
    assert!(
        wait_until(LONG, || std::fs::read_to_string(&path)
            .unwrap()
            .contains(&new))
        .await,
        "the new token was not saved"
    );
    let id = fake.enqueue(job_payload(121, &["echo with the new token"]));
    assert_eq!(wait_final(&fake, id).await.state, "success");
    run.stop(LONG).await;
    let saved = std::fs::read_to_string(&path).unwrap();
    assert!(saved.starts_with("# the admin's comment\n"), "{saved}");
    assert!(saved.contains("name = \"test-runner\" # why"), "{saved}");
    assert!(!saved.contains(RUNNER_TOKEN), "{saved}");
    let loaded = isolated_runner::config::load_str(&saved, "config.toml").unwrap();
    assert_eq!(loaded.config.runners[0].token.expose(), new);
    assert!(loaded.config.runners[0].token_expires_at.is_some());
    // Written to the second.
    assert!(loaded.config.runners[0].token_obtained_at.unwrap() >= now - Duration::from_secs(1));
    let job_requests: Vec<String> = fake
        .requests()
        .into_iter()
        .filter(|r| r.path == "/api/v4/jobs/request")
        .map(|r| serde_json::from_slice::<serde_json::Value>(&r.body).unwrap()["token"].to_string())
        .collect();
    assert!(
        job_requests.last().unwrap().contains(&new),
        "the last job request used the old token"
    );
    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("runner token reset"), "{logs}");
    assert!(!logs.contains(&new), "new token leaked into logs");
    assert!(!logs.contains(RUNNER_TOKEN), "old token leaked into logs");
}

/// A `glrt-` token whose expiry the config does not hold: at start the runner asks GitLab
/// (`runners/verify` answers `token_expires_at`), writes the expiry to the config, and resets
/// the token at three quarters of the time left, before it expires.
#[tokio::test(flavor = "current_thread")]
async fn token_expiry_is_verified_at_start_recorded_and_rotated() {
    let fake = FakeGitlab::start().await;
    let now = std::time::SystemTime::now();
    // Reset due at 3/4 of 8 s: long enough to see the expiry written first.
    let expires = humantime::format_rfc3339_millis(now + Duration::from_secs(8)).to_string();
    fake.set_verify_expires_at(Some(&expires));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    let text = format!(
        "concurrent = 1\n\n[[runners]]\n  name = \"test-runner\"\n  url = \"{}\"\n  \
         token = \"{RUNNER_TOKEN}\"\n  executor = \"docker\"\n",
        fake.url()
    );
    tokio::fs::write(&path, &text).await.unwrap();
    let run = start(
        config(&fake, |_| {}),
        TestExecutor::new(),
        DaemonOptions {
            config_path: Some(path.clone()),
            ..options()
        },
    );
    assert!(
        wait_until(LONG, || std::fs::read_to_string(&path)
            .unwrap()
            .contains(&expires))
        .await,
        "the expiry GitLab gave was not recorded:\n{}",
        std::fs::read_to_string(&path).unwrap()
    );
    let saved = std::fs::read_to_string(&path).unwrap();
    assert!(saved.contains(RUNNER_TOKEN), "reset too early:\n{saved}");
    assert!(
        fake.requests()
            .iter()
            .any(|r| r.path == "/api/v4/runners/verify"),
        "no verify at start"
    );
    assert!(
        wait_until(LONG, || !fake
            .runner_tokens()
            .contains(&RUNNER_TOKEN.to_string()))
        .await,
        "the token was not reset before it expired"
    );
    assert!(
        std::time::SystemTime::now() < now + Duration::from_secs(8) + Duration::from_secs(2),
        "reset only after the expiry"
    );
    let new = fake.runner_tokens().pop().unwrap();
    assert!(
        wait_until(LONG, || std::fs::read_to_string(&path)
            .unwrap()
            .contains(&new))
        .await,
        "the new token was not saved"
    );
    run.stop(LONG).await;
}

/// A token GitLab says never expires is left alone: verified once, never reset, the file
/// untouched.
#[tokio::test(flavor = "current_thread")]
async fn token_without_expiry_is_verified_once_and_kept() {
    let fake = FakeGitlab::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    let text = format!(
        "[[runners]]\n  name = \"test-runner\"\n  url = \"{}\"\n  token = \"{RUNNER_TOKEN}\"\n",
        fake.url()
    );
    tokio::fs::write(&path, &text).await.unwrap();
    let exec = TestExecutor::new();
    let run = start(
        config(&fake, |_| {}),
        exec,
        DaemonOptions {
            config_path: Some(path.clone()),
            ..options()
        },
    );
    let id = fake.enqueue(job_payload(131, &["echo ok"]));
    assert_eq!(wait_final(&fake, id).await.state, "success");
    run.stop(LONG).await;
    let verifies = fake
        .requests()
        .iter()
        .filter(|r| r.path == "/api/v4/runners/verify")
        .count();
    assert_eq!(verifies, 1);
    assert!(fake.runner_tokens().contains(&RUNNER_TOKEN.to_string()));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
}
