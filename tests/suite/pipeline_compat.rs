//! Pipeline behaviours taken from gitlab-runner (issue 11): CI_DEBUG_TRACE, RUNNER_SCRIPT_TIMEOUT,
//! after_script's own shell, get_sources hooks and *_ATTEMPTS, the clone over a private CA,
//! GIT_CLONE_PATH. Same local backend and helpers as `pipeline`.

use super::pipeline::*;
use crate::support;

use isolated_runner::config::RunnerConfig;
use isolated_runner::gitlab::types::{GitInfo, Hook, JobVariable};
use isolated_runner::isolation::Role;
use isolated_runner::job::{FailureReason, JobControl, JobOutcome};
use isolated_runner::secret::Secret;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use support::git;
use support::local_backend::{Faults, LocalIsolation, RecordingStore};

/// Issue 11 item 7: `CI_DEBUG_TRACE` traces commands (with a warning, masked values still
/// masked); `RUNNER_SCRIPT_TIMEOUT` stops the script with `job_execution_timeout` and
/// after_script still runs; after_script runs in a shell of its own, so what before_script
/// exported is not there (as in gitlab-runner).
#[tokio::test]
async fn debug_trace_script_timeout_and_after_script_shell() {
    let b = LocalIsolation::new(Faults::default());
    let mut j = job(&[
        "export FROM_BEFORE=yes",
        "echo \"seen:$MASKED_X\"",
        "sleep 600",
    ]);
    j.steps.push(step(
        "after_script",
        &["echo \"after:${FROM_BEFORE:-unset}\""],
        "always",
    ));
    j.variables.push(var("CI_DEBUG_TRACE", "true"));
    j.variables.push(var("RUNNER_SCRIPT_TIMEOUT", "2s"));
    j.variables.push(JobVariable {
        key: "MASKED_X".into(),
        value: "hunter2-very-secret".into(),
        masked: true,
        ..Default::default()
    });
    let r = run(&b, j).await;
    assert_eq!(
        r.outcome,
        failed(FailureReason::JobExecutionTimeout, None),
        "{}",
        r.trace
    );
    assert!(r.trace.contains("CI_DEBUG_TRACE is enabled"), "{}", r.trace);
    assert!(r.trace.contains("+ sleep 600"), "xtrace: {}", r.trace);
    assert!(!r.trace.contains("hunter2-very-secret"), "{}", r.trace);
    assert!(
        r.trace.contains("RUNNER_SCRIPT_TIMEOUT (2s)"),
        "{}",
        r.trace
    );
    assert!(r.trace.contains("after:unset"), "{}", r.trace);
}

/// Config and job get_sources hooks in gitlab-runner's order (config pre, job pre, git, job
/// post, config post), and `GET_SOURCES_ATTEMPTS` retries a failed get_sources.
#[tokio::test]
async fn get_sources_hooks_order_and_attempts() {
    let b = LocalIsolation::new(Faults::default());
    let mut j = job(&["echo never"]);
    j.variables = vec![
        var("GIT_STRATEGY", "clone"),
        var("GET_SOURCES_ATTEMPTS", "2"),
    ];
    j.git_info = GitInfo {
        // Port 9 (discard): nothing listens, the fetch fails at once.
        repo_url: Secret::new("http://127.0.0.1:9/g/none.git"),
        r#ref: "main".into(),
        sha: "0123456789abcdef0123456789abcdef01234567".into(),
        ..Default::default()
    };
    j.hooks = vec![
        Hook {
            name: "post_get_sources_script".into(),
            script: vec!["echo job-post".into()],
        },
        Hook {
            name: "pre_get_sources_script".into(),
            script: vec!["echo job-pre".into()],
        },
    ];
    let runner = RunnerConfig {
        clone_url: Some("http://127.0.0.1:9/".parse().expect("constant URL")),
        pre_get_sources_script: Some("echo config-pre".into()),
        post_get_sources_script: Some("echo config-post".into()),
        ..Default::default()
    };
    let r = run_with(
        b.clone(),
        RecordingStore::new(),
        j,
        runner,
        JobControl::default(),
    )
    .await;
    assert!(
        matches!(r.outcome, JobOutcome::Failed { .. }),
        "{}",
        r.trace
    );
    let helpers: Vec<_> = b
        .scripts()
        .into_iter()
        .filter(|s| s.role == Role::Helper)
        .collect();
    assert_eq!(helpers.len(), 2, "two attempts: {}", r.trace);
    assert!(r.trace.contains("attempt 2 of 2"), "{}", r.trace);
    let s = &helpers[0].script;
    let at = |needle: &str| s.find(needle).unwrap_or_else(|| panic!("{needle}: {s}"));
    assert!(at("echo config-pre") < at("echo job-pre"));
    assert!(at("echo job-pre") < at("git fetch"));
    assert!(at("git fetch") < at("echo job-post"));
    assert!(at("echo job-post") < at("echo config-post"));
    assert!(!r.trace.contains("never\n"), "{}", r.trace);
}

/// Serves the files of `root` over HTTPS with `cert_pem`/`key_pem` (git's dumb HTTP protocol
/// needs nothing more), one request per connection. Returns the port.
async fn https_file_server(root: std::path::PathBuf, cert_pem: String, key_pem: String) -> u16 {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    isolated_runner::install_crypto_provider();
    let certs = isolated_runner::pki::parse_certs(&cert_pem, "server").expect("certs");
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key");
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, root) = (acceptor.clone(), root.clone());
            tokio::spawn(async move {
                // A client that does not trust the CA ends the handshake here.
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&req)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string();
                let path = line.split(' ').nth(1).unwrap_or("/");
                let path = path.split('?').next().unwrap_or("");
                let rel = path.trim_start_matches("/g/demo.git/");
                let body = if rel.split('/').any(|c| c == "..") {
                    None
                } else {
                    std::fs::read(root.join(rel)).ok()
                };
                let head = match &body {
                    Some(b) => format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        b.len()
                    ),
                    None => {
                        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            .to_string()
                    }
                };
                let _ = tls.write_all(head.as_bytes()).await;
                if let Some(b) = body {
                    let _ = tls.write_all(&b).await;
                }
                let _ = tls.shutdown().await;
            });
        }
    });
    port
}

/// Issue 11 item 6: GitLab behind a private CA. The clone trusts `tls-ca-file` through git's
/// `http.<origin>.sslCAInfo` (a file in the job's tmp dir) and the job gets the CA as
/// `CI_SERVER_TLS_CA_FILE`. Without the CA the same clone fails on the certificate.
#[tokio::test]
async fn clone_over_tls_with_a_private_ca() {
    let (repos, work, bare) = repo_with_bare_clone("over-tls");
    git(&bare, &["update-server-info"]);
    let sha = git(&work, &["rev-parse", "HEAD"]);
    let pki = isolated_runner::pki::issue_job_pki(&isolated_runner::pki::PkiRequest {
        job_id: 1,
        server_dns: Vec::new(),
        server_ips: vec!["127.0.0.1".parse().expect("ip")],
        validity: Duration::from_secs(3600),
    })
    .expect("pki");
    let port = https_file_server(
        bare.clone(),
        pki.server.cert_pem.clone(),
        pki.server.key_pem.expose().to_string(),
    )
    .await;
    let ca = repos.path().join("gitlab-ca.pem");
    std::fs::write(&ca, &pki.server.ca_pem).expect("write");
    let base = format!("https://127.0.0.1:{port}/");
    let mk = || {
        let mut j = job(&[
            "cat README; echo",
            "grep -q 'BEGIN CERTIFICATE' \"$CI_SERVER_TLS_CA_FILE\" && echo ca-given",
        ]);
        j.variables = vec![var("GIT_STRATEGY", "clone")];
        j.git_info = GitInfo {
            repo_url: Secret::new(format!(
                "https://gitlab-ci-token:glcbt-jobtoken42xyz@127.0.0.1:{port}/g/demo.git"
            )),
            r#ref: "main".into(),
            sha: sha.clone(),
            ref_type: "branch".into(),
            refspecs: vec!["+refs/heads/main:refs/remotes/origin/main".into()],
            ..Default::default()
        };
        j
    };
    let runner = |ca: Option<&Path>| RunnerConfig {
        url: base.parse().expect("url"),
        tls_ca_file: ca.map(Path::to_path_buf),
        ..Default::default()
    };
    let b = LocalIsolation::new(Faults::default());
    let r = run_with(
        b.clone(),
        RecordingStore::new(),
        mk(),
        runner(Some(&ca)),
        JobControl::default(),
    )
    .await;
    assert_eq!(r.outcome, JobOutcome::Success, "{}", r.trace);
    assert!(r.trace.contains("over-tls\n"), "{}", r.trace);
    assert!(r.trace.contains("ca-given\n"), "{}", r.trace);

    let r = run_with(
        b,
        RecordingStore::new(),
        mk(),
        runner(None),
        JobControl::default(),
    )
    .await;
    assert!(
        matches!(r.outcome, JobOutcome::Failed { .. }),
        "{}",
        r.trace
    );
    assert!(!r.trace.contains("over-tls\n"), "{}", r.trace);
}

/// `GIT_CLONE_PATH` outside the builds dir (or with custom build dirs off, or inside the
/// runner's own `gitlab-job-*` entries) fails the job with gitlab-runner's reason before any
/// step; one inside is accepted and becomes `CI_PROJECT_DIR` (the backends' part is tested in
/// `clone_path::`).
#[tokio::test]
async fn git_clone_path_escapes_are_refused() {
    let b = LocalIsolation::new(Faults::default());
    let mut j = job(&["echo step-ran"]);
    j.variables
        .push(var("GIT_CLONE_PATH", "$CI_BUILDS_DIR/../escaped"));
    let r = run(&b, j).await;
    // A configuration error, as gitlab-runner reports it: no script ran, so not a script's
    // failure.
    let refused = failed(FailureReason::RunnerConfigurationError, None);
    assert_eq!(r.outcome, refused, "{}", r.trace);
    assert!(r.trace.contains("has to be within"), "{}", r.trace);
    assert!(!r.trace.contains("step_script"), "{}", r.trace);
    let escaped = b.builds().parent().expect("parent").join("escaped");
    assert!(!escaped.exists(), "{}", escaped.display());

    let mut j = job(&["echo step-ran"]);
    j.variables
        .push(var("GIT_CLONE_PATH", "$CI_BUILDS_DIR/group/project"));
    let r = run(&b, j.clone()).await;
    assert_eq!(r.outcome, JobOutcome::Success, "{}", r.trace);
    assert!(!r.trace.contains("not honoured"), "{}", r.trace);

    let mut other = job(&["echo step-ran"]);
    other
        .variables
        .push(var("GIT_CLONE_PATH", "$CI_BUILDS_DIR/gitlab-job-1/x"));
    let r = run(&b, other).await;
    assert_eq!(r.outcome, refused, "{}", r.trace);
    assert!(
        r.trace.contains("a directory this runner manages"),
        "{}",
        r.trace
    );
    assert!(!r.trace.contains("step-ran"), "{}", r.trace);

    let runner = RunnerConfig {
        custom_build_dir: false,
        ..Default::default()
    };
    let r = run_with(b, RecordingStore::new(), j, runner, JobControl::default()).await;
    assert_eq!(r.outcome, refused, "{}", r.trace);
    assert!(
        r.trace.contains("enable `custom_build_dir` feature"),
        "{}",
        r.trace
    );
}
