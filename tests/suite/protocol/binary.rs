//! The CLI verbs (register, verify, list, unregister) and real signals, through the built
//! binary against the fake GitLab.

use super::*;

/// The built binary (`[[bin]] name = "runner"` in Cargo.toml).
fn runner_bin() -> &'static str {
    env!("CARGO_BIN_EXE_runner")
}

async fn runner_cmd(args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(runner_bin())
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .await
        .unwrap()
}

fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn register_verify_list_unregister_with_authentication_token() {
    let fake = FakeGitlab::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    let state = dir.path().join("state");
    tokio::fs::write(
        &cfg,
        format!(
            "# managed by hand\nstate_dir = \"{}\" # keep me\n",
            state.display()
        ),
    )
    .await
    .unwrap();
    let c = cfg.to_str().unwrap();
    let url = fake.url();
    let out = runner_cmd(&[
        "register",
        "-c",
        c,
        "--non-interactive",
        "--url",
        &url,
        "--token",
        RUNNER_TOKEN,
        "--name",
        "box1",
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mode(&cfg), 0o600);
    let text = tokio::fs::read_to_string(&cfg).await.unwrap();
    assert!(
        text.contains("# managed by hand") && text.contains("# keep me"),
        "{text}"
    );
    assert!(
        text.contains(RUNNER_TOKEN) && text.contains("name = \"box1\"") && text.contains("id = 1")
    );
    let sid = tokio::fs::read_to_string(state.join(".runner_system_id"))
        .await
        .unwrap();
    assert!(
        fake.managers()
            .contains(&(RUNNER_TOKEN.to_string(), sid.trim().to_string()))
    );
    assert_eq!(mode(&state.join(".runner_system_id")), 0o600);

    let out = runner_cmd(&["list", "-c", c]).await;
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains("box1") && !listed.contains(RUNNER_TOKEN),
        "{listed}"
    );

    let out = runner_cmd(&["verify", "-c", c]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("is valid"));

    let out = runner_cmd(&["unregister", "-c", c, "--name", "box1"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        fake.managers().is_empty(),
        "runner manager removed on GitLab"
    );
    let text = tokio::fs::read_to_string(&cfg).await.unwrap();
    assert!(!text.contains(RUNNER_TOKEN) && text.contains("# keep me"));
    assert_eq!(mode(&cfg), 0o600);
    assert!(
        fake.runner_tokens().contains(&RUNNER_TOKEN.to_string()),
        "a glrt runner itself stays"
    );
}

#[tokio::test]
async fn register_with_registration_token_then_verify_fails_after_revoke() {
    let fake = FakeGitlab::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    tokio::fs::write(&cfg, format!("state_dir = \"{}\"\n", dir.path().display()))
        .await
        .unwrap();
    let c = cfg.to_str().unwrap();
    let url = fake.url();
    let out = runner_cmd(&[
        "register",
        "-c",
        c,
        "-n",
        "--url",
        &url,
        "--registration-token",
        support::fake_gitlab::REGISTRATION_TOKEN,
        "--name",
        "legacy",
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = tokio::fs::read_to_string(&cfg).await.unwrap();
    let token = fake
        .runner_tokens()
        .into_iter()
        .find(|t| t.starts_with("t3_registered"))
        .unwrap();
    assert!(text.contains(&token));
    assert_eq!(mode(&cfg), 0o600);

    fake.revoke_runner_token(&token);
    let out = runner_cmd(&["verify", "-c", c, "--delete"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        !tokio::fs::read_to_string(&cfg)
            .await
            .unwrap()
            .contains(&token),
        "--delete removed it"
    );

    // A wrong registration token is refused with a readable error.
    let out = runner_cmd(&[
        "register",
        "-c",
        c,
        "-n",
        "--url",
        &url,
        "--registration-token",
        "nope",
    ])
    .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("403"));
}

async fn start_binary(fake: &FakeGitlab, dir: &std::path::Path) -> tokio::process::Child {
    let cfg = dir.join("config.toml");
    tokio::fs::write(
        &cfg,
        format!(
            "concurrent = 1\ncheck_interval = 1\nshutdown_timeout = 5\nstate_dir = \"{}\"\n\n[[runners]]\nname = \"bin\"\nurl = \"{}\"\ntoken = \"{RUNNER_TOKEN}\"\nexecutor = \"docker\"\n",
            dir.display(),
            fake.url()
        ),
    )
    .await
    .unwrap();
    tokio::process::Command::new(runner_bin())
        .args(["run", "-c", cfg.to_str().unwrap()])
        .env_clear()
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn binary_stops_on_real_sigterm_and_sigquit() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    for sig in [Signal::SIGTERM, Signal::SIGQUIT, Signal::SIGINT] {
        let fake = FakeGitlab::start().await;
        let dir = tempfile::tempdir().unwrap();
        let mut child = start_binary(&fake, dir.path()).await;
        assert!(
            wait_until(LONG, || fake.count("POST", "/api/v4/jobs/request") >= 1).await,
            "{sig}: never polled"
        );
        kill(Pid::from_raw(child.id().unwrap() as i32), sig).unwrap();
        let status = tokio::time::timeout(LONG, child.wait())
            .await
            .expect("exits")
            .unwrap();
        assert!(status.success(), "{sig}: {status}");
    }
}
