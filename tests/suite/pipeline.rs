//! The job pipeline against the local test backend: outcomes, stages, variables, masking,
//! sources with real git, artifacts, cancellation, and teardown on every path.

use crate::support;

use isolated_runner::config::RunnerConfig;
use isolated_runner::gitlab::types::{
    Artifact, GitInfo, Hook, JobResponse, JobVariable, RunnerInfo, Step,
};
use isolated_runner::isolation::Role;
use isolated_runner::job::{FailureReason, JobControl, JobExecutor, JobOutcome, Pipeline};
use isolated_runner::secret::Secret;
use isolated_runner::trace::BufferSink;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use support::git;
use support::local_backend::{Faults, LocalIsolation, RecordingStore};

pub(crate) const WAIT: Duration = Duration::from_secs(30);

pub(crate) fn step(name: &str, script: &[&str], when: &str) -> Step {
    Step {
        name: name.into(),
        script: script.iter().map(|s| s.to_string()).collect(),
        timeout: 3600,
        when: when.into(),
        allow_failure: name == "after_script",
    }
}

pub(crate) fn job(script: &[&str]) -> JobResponse {
    let mut j = JobResponse {
        id: 42,
        token: Secret::new("glcbt-jobtoken42xyz"),
        steps: vec![step("script", script, "on_success")],
        variables: vec![var("GIT_STRATEGY", "none")],
        ..Default::default()
    };
    j.features.trace_sections = true;
    j.job_info.name = "test".into();
    j
}

pub(crate) fn var(k: &str, v: &str) -> JobVariable {
    JobVariable {
        key: k.into(),
        value: v.into(),
        public: true,
        ..Default::default()
    }
}

pub(crate) struct Run {
    pub(crate) outcome: JobOutcome,
    pub(crate) trace: String,
}

pub(crate) async fn run_with(
    backend: Arc<LocalIsolation>,
    store: Arc<RecordingStore>,
    job: JobResponse,
    runner: RunnerConfig,
    control: JobControl,
) -> Run {
    let sink = Arc::new(BufferSink::new());
    let p = Pipeline::new(backend, store);
    let outcome = p
        .execute(job, Arc::new(runner), sink.clone(), control)
        .await;
    Run {
        outcome,
        trace: sink.text(),
    }
}

pub(crate) async fn run(backend: &Arc<LocalIsolation>, job: JobResponse) -> Run {
    run_with(
        backend.clone(),
        RecordingStore::new(),
        job,
        // The git test's repository URL; the runner clones only from hosts its config names.
        RunnerConfig {
            clone_url: Some("http://127.0.0.1:9/".parse().expect("constant URL")),
            ..Default::default()
        },
        JobControl::default(),
    )
    .await
}

pub(crate) fn failed(reason: FailureReason, code: Option<i32>) -> JobOutcome {
    JobOutcome::Failed {
        reason,
        exit_code: code,
    }
}

#[tokio::test]
async fn success_echoes_commands_with_sections_and_tears_down() {
    let b = LocalIsolation::new(Faults::default());
    let runner = RunnerConfig {
        pre_build_script: Some("echo pre-build".into()),
        post_build_script: Some("echo post-build".into()),
        ..Default::default()
    };
    let r = run_with(
        b.clone(),
        RecordingStore::new(),
        job(&["echo hello from $CI_JOB_STATUS", "X=1", "echo x=$X"]),
        runner,
        JobControl::default(),
    )
    .await;
    assert_eq!(r.outcome, JobOutcome::Success, "{}", r.trace);
    assert!(
        r.trace
            .contains("\x1b[32;1m$ echo hello from $CI_JOB_STATUS\x1b[0;m"),
        "{}",
        r.trace
    );
    assert!(r.trace.contains("hello from running\n"));
    // Same shell: variables carry over; pre/post build run around the script.
    assert!(r.trace.contains("x=1\n"));
    let pre = r.trace.find("pre-build\n").expect("pre_build ran");
    let post = r.trace.find("post-build\n").expect("post_build ran");
    assert!(pre < post);
    for s in ["prepare_executor", "get_sources", "step_script"] {
        assert!(
            r.trace.contains(&format!(":{s}\r\x1b[0K")),
            "section {s}: {}",
            r.trace
        );
    }
    assert!(r.trace.contains("Job succeeded"));
    assert_eq!(b.calls().first().map(String::as_str), Some("prepare"));
    assert_eq!(b.calls().last().map(String::as_str), Some("teardown"));
    assert_eq!(b.teardowns(), 1);
    let scripts = b.scripts();
    assert_eq!(
        scripts[0].role,
        Role::Helper,
        "sources run in the helper role"
    );
    assert_eq!(scripts[1].role, Role::Build);
    assert!(
        scripts[1]
            .script
            .starts_with(&isolated_runner::job::script::prologue())
    );
}

#[tokio::test]
async fn script_failure_reports_exit_code_and_runs_after_script() {
    let b = LocalIsolation::new(Faults::default());
    let mut j = job(&["echo before", "exit 3", "echo never"]);
    j.steps.push(step(
        "after_script",
        &["echo after with $CI_JOB_STATUS"],
        "always",
    ));
    let r = run(&b, j).await;
    assert_eq!(r.outcome, failed(FailureReason::ScriptFailure, Some(3)));
    assert!(!r.trace.contains("never\n"));
    assert!(r.trace.contains("after with failed\n"), "{}", r.trace);
    assert!(r.trace.contains("Job failed: exit code 3"));
    assert_eq!(b.teardowns(), 1);
}

#[tokio::test]
async fn allow_failure_succeeds_and_failing_after_script_does_not_fail() {
    let b = LocalIsolation::new(Faults::default());
    let mut j = job(&["exit 2"]);
    j.steps[0].allow_failure = true;
    j.steps.push(step("after_script", &["exit 5"], "always"));
    let r = run(&b, j).await;
    assert_eq!(r.outcome, JobOutcome::Success, "{}", r.trace);
    assert!(r.trace.contains("allowed to fail"));
    assert!(r.trace.contains("after_script failed with exit code 5"));
}

#[tokio::test]
async fn step_when_on_failure_and_always() {
    let b = LocalIsolation::new(Faults::default());
    let mut j = job(&["exit 1"]);
    j.steps.push(step(
        "on_success_step",
        &["echo should-not-run"],
        "on_success",
    ));
    j.steps.push(step(
        "on_failure_step",
        &["echo ran-on-failure"],
        "on_failure",
    ));
    j.steps
        .push(step("always_step", &["echo ran-always"], "always"));
    let r = run(&b, j).await;
    assert_eq!(r.outcome, failed(FailureReason::ScriptFailure, Some(1)));
    assert!(!r.trace.contains("should-not-run\n"));
    assert!(r.trace.contains("ran-on-failure\n"));
    assert!(r.trace.contains("ran-always\n"));

    let mut j = job(&["true"]);
    j.steps.push(step(
        "on_failure_step",
        &["echo ran-on-failure"],
        "on_failure",
    ));
    let r = run(&b, j).await;
    assert_eq!(r.outcome, JobOutcome::Success);
    assert!(!r.trace.contains("ran-on-failure\n"));
}

pub(crate) async fn start_and_wait(
    b: &Arc<LocalIsolation>,
    j: JobResponse,
    control: JobControl,
) -> (tokio::task::JoinHandle<JobOutcome>, Arc<BufferSink>) {
    let sink = Arc::new(BufferSink::new());
    let p = Pipeline::new(b.clone(), RecordingStore::new());
    let s = sink.clone();
    let handle = tokio::spawn(async move {
        p.execute(j, Arc::new(RunnerConfig::default()), s, control)
            .await
    });
    let s = sink.clone();
    support::wait_for("the script to start", WAIT, move || {
        s.text().contains("started\n")
    })
    .await;
    (handle, sink)
}

#[tokio::test]
async fn cancel_gracefully_stops_script_but_runs_after_script() {
    let b = LocalIsolation::new(Faults::default());
    let mut j = job(&["echo started", "sleep 600", "echo never"]);
    j.steps.push(step(
        "after_script",
        &["echo after with $CI_JOB_STATUS"],
        "always",
    ));
    let control = JobControl::default();
    let (h, sink) = start_and_wait(&b, j, control.clone()).await;
    control.cancel_gracefully.cancel();
    let outcome = tokio::time::timeout(WAIT, h)
        .await
        .expect("ends")
        .expect("no panic");
    assert_eq!(outcome, JobOutcome::Canceled);
    let t = sink.text();
    assert!(t.contains("after with canceled\n"), "{t}");
    assert!(!t.contains("never\n"));
    assert_eq!(b.teardowns(), 1);
}

#[tokio::test]
async fn abort_skips_after_script_and_still_tears_down() {
    let b = LocalIsolation::new(Faults::default());
    let mut j = job(&["echo started", "sleep 600"]);
    j.steps
        .push(step("after_script", &["echo after-ran"], "always"));
    let control = JobControl::default();
    let (h, sink) = start_and_wait(&b, j, control.clone()).await;
    control.abort.cancel();
    let outcome = tokio::time::timeout(WAIT, h)
        .await
        .expect("ends")
        .expect("no panic");
    assert_eq!(outcome, JobOutcome::Canceled);
    assert!(!sink.text().contains("after-ran\n"));
    assert_eq!(b.teardowns(), 1);
}

#[tokio::test]
async fn timeout_is_job_execution_timeout() {
    let b = LocalIsolation::new(Faults::default());
    let mut j = job(&["sleep 600"]);
    j.runner_info = RunnerInfo { timeout: 1 };
    j.steps.push(step(
        "after_script",
        &["echo after with $CI_JOB_STATUS"],
        "always",
    ));
    let r = run(&b, j).await;
    assert_eq!(r.outcome, failed(FailureReason::JobExecutionTimeout, None));
    assert!(r.trace.contains("after with timedout\n"), "{}", r.trace);
    assert_eq!(b.teardowns(), 1);
}

#[tokio::test]
async fn file_variables_are_0600_files_removed_afterwards() {
    let b = LocalIsolation::new(Faults::default());
    let mut j = job(&[
        "stat -c 'mode=%a' \"$MY_FILE\"",
        "echo \"content=$(cat \"$MY_FILE\")\"",
        "echo \"path=$MY_FILE\"",
        "echo \"tmp=$TMPDIR\"",
    ]);
    j.variables.push(JobVariable {
        key: "MY_FILE".into(),
        value: "file-content".into(),
        file: true,
        ..Default::default()
    });
    let r = run(&b, j).await;
    assert_eq!(r.outcome, JobOutcome::Success, "{}", r.trace);
    assert!(r.trace.contains("mode=600\n"), "{}", r.trace);
    assert!(r.trace.contains("content=file-content\n"));
    let path = r
        .trace
        .lines()
        .find_map(|l| l.strip_prefix("path="))
        .expect("path line");
    let tmp = r
        .trace
        .lines()
        .find_map(|l| l.strip_prefix("tmp="))
        .expect("tmp line");
    assert!(path.starts_with(tmp), "file variable lives in the tmp dir");
    assert!(!Path::new(path).exists(), "file variable removed");
    assert!(r.trace.contains(":cleanup_file_variables"));
}

#[tokio::test]
async fn masked_values_and_tokens_never_reach_the_trace() {
    let b = LocalIsolation::new(Faults::default());
    let mut j = job(&[
        "printf 'a=%s\\n' \"$SECRET\"",
        "printf 'sup'; sleep 0.05; printf 'ersecretvalue\\n'",
        "echo \"token=$CI_JOB_TOKEN pat=glpat-abcdefghijkl short=$SHORT\"",
    ]);
    j.variables.push(JobVariable {
        key: "SECRET".into(),
        value: "supersecretvalue".into(),
        masked: true,
        ..Default::default()
    });
    j.variables.push(JobVariable {
        key: "CI_JOB_TOKEN".into(),
        value: "glcbt-jobtoken42xyz".into(),
        masked: true,
        ..Default::default()
    });
    j.variables.push(JobVariable {
        key: "SHORT".into(),
        value: "abc".into(),
        masked: true,
        ..Default::default()
    });
    let r = run(&b, j).await;
    assert_eq!(r.outcome, JobOutcome::Success, "{}", r.trace);
    assert!(!r.trace.contains("supersecretvalue"), "{}", r.trace);
    assert!(!r.trace.contains("jobtoken42xyz"));
    assert!(!r.trace.contains("abcdefghijkl"));
    assert!(r.trace.contains("a=[MASKED]\n"));
    assert!(r.trace.contains("pat=glpat-[MASKED]"));
    // Shorter than 8 characters: not masked, as in GitLab.
    assert!(r.trace.contains("short=abc"));
}

#[tokio::test]
async fn output_limit_truncates_the_trace() {
    let b = LocalIsolation::new(Faults::default());
    let runner = RunnerConfig {
        output_limit: 2048,
        ..Default::default()
    };
    let r = run_with(
        b.clone(),
        RecordingStore::new(),
        job(&[
            "for i in $(seq 1 2000); do echo line-$i; done",
            "echo finished-ok > done.txt",
        ]),
        runner,
        JobControl::default(),
    )
    .await;
    assert_eq!(r.outcome, JobOutcome::Success);
    assert!(r.trace.contains("Job's log exceeded limit of 2048 bytes. Job execution will continue but no more output will be collected."));
    assert!(!r.trace.contains("line-2000"));
    assert!(r.trace.len() < 2048 + 300);
}

#[tokio::test]
async fn infrastructure_failures_are_system_failures() {
    // Prepare fails: the backend cleaned up itself; no teardown of a half environment.
    let b = LocalIsolation::new(Faults {
        fail_prepare: true,
        ..Default::default()
    });
    let r = run(&b, job(&["true"])).await;
    assert_eq!(r.outcome, failed(FailureReason::RunnerSystemFailure, None));
    assert!(r.trace.contains("injected failure"), "{}", r.trace);

    // The sidecar dies during the script: system failure, still torn down.
    let b = LocalIsolation::new(Faults {
        sidecar_dies_at: Some(1),
        ..Default::default()
    });
    let r = run(&b, job(&["true"])).await;
    assert_eq!(r.outcome, failed(FailureReason::RunnerSystemFailure, None));
    assert!(r.trace.contains("sidecar local-sidecar"), "{}", r.trace);
    assert_eq!(b.teardowns(), 1);

    // A hanging helper is stopped by the job timeout and torn down.
    let b = LocalIsolation::new(Faults {
        hang_role: Some(Role::Helper),
        ..Default::default()
    });
    let mut j = job(&["true"]);
    j.runner_info.timeout = 1;
    let r = run(&b, j).await;
    assert_eq!(r.outcome, failed(FailureReason::JobExecutionTimeout, None));
    assert_eq!(b.teardowns(), 1);
}

/// M1: `RUNNER_AFTER_SCRIPT_TIMEOUT = u64::MAX` runs after_script without a panic, and a
/// backend whose `run_script` panics fails the job as a system failure and is still torn down.
#[tokio::test]
async fn after_script_timeout_is_clamped_and_teardown_runs_on_panic() {
    let b = LocalIsolation::new(Faults::default());
    let mut j = job(&["true"]);
    j.steps
        .push(step("after_script", &["echo after-ran"], "always"));
    j.variables
        .push(var("RUNNER_AFTER_SCRIPT_TIMEOUT", &u64::MAX.to_string()));
    j.runner_info.timeout = u64::MAX;
    let r = run(&b, j).await;
    assert_eq!(r.outcome, JobOutcome::Success, "{}", r.trace);
    assert!(r.trace.contains("after-ran"), "{}", r.trace);
    assert_eq!(b.teardowns(), 1);

    for panic_at in [0, 1] {
        let b = LocalIsolation::new(Faults {
            panic_at: Some(panic_at),
            ..Default::default()
        });
        let mut j = job(&["echo never-here"]);
        j.steps.push(step("after_script", &["true"], "always"));
        let r = run(&b, j).await;
        assert_eq!(
            r.outcome,
            failed(FailureReason::RunnerSystemFailure, None),
            "{}",
            r.trace
        );
        assert!(
            r.trace.contains("the job crashed")
                && r.trace.contains("injected: run_script panicked"),
            "{}",
            r.trace
        );
        assert_eq!(b.teardowns(), 1, "{:?}", b.calls());
        assert_eq!(b.calls().last().map(String::as_str), Some("teardown"));
    }
}

/// M3: the git helper's `Authorization: Basic` header holds the job token 16 bytes into the
/// encoded text; a hook that prints its environment shows neither the token nor any base64
/// form of it.
#[tokio::test]
async fn credential_header_is_masked() {
    let b = LocalIsolation::new(Faults::default());
    let token = "glcbt-64_Zq9xYwVuTsRqPoNm";
    let mut j = job(&["true"]);
    j.token = Secret::new(token);
    j.variables = vec![
        var("GIT_STRATEGY", "clone"),
        JobVariable {
            key: "CI_JOB_TOKEN".into(),
            value: token.into(),
            masked: true,
            ..Default::default()
        },
    ];
    // Loopback port 9 (discard): nothing answers, the clone fails after the hook ran.
    j.git_info.repo_url = Secret::new(format!(
        "http://gitlab-ci-token:{token}@127.0.0.1:9/g/p.git"
    ));
    j.git_info.sha = "0123456789abcdef0123456789abcdef01234567".into();
    j.git_info.r#ref = "main".into();
    j.hooks = vec![Hook {
        name: "pre_get_sources_script".into(),
        // The header, then the token base64-encoded by hand 1 and 2 bytes into a group.
        script: vec![
            "env | sort".into(),
            "printf 'abcd%s' \"$CI_JOB_TOKEN\" | base64 -w0; echo".into(),
            "printf 'x:%s!' \"$CI_JOB_TOKEN\" | base64 -w0; echo".into(),
        ],
    }];
    let r = run(&b, j).await;
    let header = b
        .scripts()
        .iter()
        .flat_map(|s| s.env.clone())
        .find(|(k, _)| k == "GIT_CONFIG_VALUE_0")
        .map(|(_, v)| v)
        .expect("the helper got the credential header");
    assert!(header.starts_with("Authorization: Basic "), "{header}");
    assert!(
        r.trace.contains("GIT_CONFIG_VALUE_0="),
        "the hook ran: {}",
        r.trace
    );
    assert!(!r.trace.contains(token), "{}", r.trace);
    assert!(!r.trace.contains("Zq9xYwVuTsRqPoNm"), "{}", r.trace);
    let forms = isolated_runner::trace::mask::base64_forms(token.as_bytes());
    for (k, form) in forms.iter().enumerate() {
        assert!(
            !r.trace.contains(form.as_str()),
            "alignment {k}: {}",
            r.trace
        );
    }
    // The header itself is in the trace only masked.
    let encoded = header.trim_start_matches("Authorization: Basic ");
    assert!(!r.trace.contains(encoded), "{}", r.trace);
}

#[tokio::test]
async fn bad_payloads_fail_before_prepare() {
    let b = LocalIsolation::new(Faults::default());
    let mut j = job(&["true"]);
    j.token = Secret::default();
    let r = run(&b, j).await;
    assert_eq!(r.outcome, failed(FailureReason::RunnerSystemFailure, None));
    assert!(r.trace.contains("empty job token"));
    let mut j = job(&["true"]);
    j.steps.clear();
    let r = run(&b, j).await;
    assert_eq!(r.outcome, failed(FailureReason::RunnerSystemFailure, None));
    assert!(b.calls().is_empty(), "nothing prepared: {:?}", b.calls());
}

/// A temp dir holding `work`, a git repository on `main` with one commit (a README saying
/// `readme`), and `demo.git`, a bare clone of it; returns (the temp dir, work, bare).
pub(crate) fn repo_with_bare_clone(readme: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let repos = tempfile::tempdir().expect("tempdir");
    let work = repos.path().join("work");
    let bare = repos.path().join("demo.git");
    std::fs::create_dir_all(&work).expect("mkdir");
    git(&work, &["init", "-q", "-b", "main"]);
    std::fs::write(work.join("README"), readme).expect("write");
    git(&work, &["add", "."]);
    git(&work, &["commit", "-qm", "one"]);
    git(
        repos.path(),
        &[
            "clone",
            "-q",
            "--bare",
            work.to_str().expect("utf8"),
            bare.to_str().expect("utf8"),
        ],
    );
    (repos, work, bare)
}

#[tokio::test]
async fn git_clone_fetch_none_without_token_in_config() {
    let (repos, work, bare) = repo_with_bare_clone("v1");
    let sha1 = git(&work, &["rev-parse", "HEAD"]);
    // The job's URL is an HTTP one with the token in it, as GitLab sends; a git config rule
    // (only for this test) maps it onto the local bare repo, so nothing goes to the network.
    let gitconfig = repos.path().join("gitconfig");
    let http_base = "http://127.0.0.1:9/g/demo.git";
    std::fs::write(
        &gitconfig,
        format!(
            "[url \"file://{}\"]\n\tinsteadOf = {http_base}\n",
            bare.display()
        ),
    )
    .expect("write");

    let b = LocalIsolation::new(Faults {
        keep_dirs: true,
        ..Default::default()
    });
    let mk = |strategy: &str, sha: &str| {
        let mut j = job(&["cat README; echo", "git config --get remote.origin.url"]);
        j.variables = vec![
            var("GIT_STRATEGY", strategy),
            var("GIT_CONFIG_GLOBAL", gitconfig.to_str().expect("utf8")),
        ];
        j.git_info = GitInfo {
            repo_url: Secret::new(
                "http://gitlab-ci-token:glcbt-jobtoken42xyz@127.0.0.1:9/g/demo.git",
            ),
            r#ref: "main".into(),
            sha: sha.into(),
            ref_type: "branch".into(),
            refspecs: vec!["+refs/heads/main:refs/remotes/origin/main".into()],
            depth: 0,
            ..Default::default()
        };
        j
    };
    let r = run(&b, mk("clone", &sha1)).await;
    assert_eq!(r.outcome, JobOutcome::Success, "{}", r.trace);
    assert!(r.trace.contains("Created fresh repository."));
    assert!(
        r.trace
            .contains(&format!("Checking out {} as main...", &sha1[..8])),
        "{}",
        r.trace
    );
    assert!(r.trace.contains("v1\n"));
    assert!(
        r.trace.contains(&format!("{http_base}\n")),
        "remote without token: {}",
        r.trace
    );
    let project = b.builds().join("gitlab-job-42");
    let config = std::fs::read_to_string(project.join(".git/config")).expect("config");
    assert!(
        !config.contains("glcbt"),
        "token left in .git/config: {config}"
    );
    assert!(config.contains(http_base));
    // The helper got the credentials as an extraHeader through the environment only.
    let helper = &b.scripts()[0];
    assert!(
        helper
            .env
            .iter()
            .any(|(k, v)| k == "GIT_CONFIG_KEY_0" && v == "http.http://127.0.0.1:9/.extraHeader")
    );
    assert!(!helper.script.contains("glcbt-jobtoken42xyz"));

    // A new commit, fetched into the existing checkout.
    std::fs::write(work.join("README"), "v2").expect("write");
    git(&work, &["commit", "-qam", "two"]);
    git(&work, &["push", "-q", bare.to_str().expect("utf8"), "main"]);
    let sha2 = git(&work, &["rev-parse", "HEAD"]);
    std::fs::write(project.join("untracked-junk"), "x").expect("write");
    let r = run(&b, mk("fetch", &sha2)).await;
    assert_eq!(r.outcome, JobOutcome::Success, "{}", r.trace);
    assert!(!r.trace.contains("Created fresh repository."));
    assert!(r.trace.contains("v2\n"));
    assert!(
        !project.join("untracked-junk").exists(),
        "git clean -ffdx ran"
    );
    let config = std::fs::read_to_string(project.join(".git/config")).expect("config");
    assert!(!config.contains("glcbt"));

    // none: the checkout is left alone.
    std::fs::write(project.join("README"), "local-edit").expect("write");
    let r = run(&b, mk("none", &sha1)).await;
    assert_eq!(r.outcome, JobOutcome::Success, "{}", r.trace);
    assert!(r.trace.contains("local-edit"));
}

#[tokio::test]
async fn artifacts_never_follow_symlinks_out_of_the_job_dir() {
    let outside = tempfile::tempdir().expect("tempdir");
    std::fs::write(outside.path().join("secret.txt"), "TOP-SECRET-CONTENT").expect("write");
    let b = LocalIsolation::new(Faults::default());
    let store = RecordingStore::new();
    let mut j = job(&[
        "mkdir -p out && echo ok > out/ok.txt",
        "ln -s \"$OUTSIDE/secret.txt\" out/leak",
        "ln -s \"$OUTSIDE\" outdir",
        "echo x > failed-only.txt",
    ]);
    j.variables
        .push(var("OUTSIDE", outside.path().to_str().expect("utf8")));
    j.artifacts = vec![
        Artifact {
            name: Some("build".into()),
            paths: vec![
                "out/".into(),
                "outdir/secret.txt".into(),
                "../escape".into(),
            ],
            when: "on_success".into(),
            artifact_type: "archive".into(),
            artifact_format: "zip".into(),
            ..Default::default()
        },
        Artifact {
            name: Some("on-failure".into()),
            paths: vec!["failed-only.txt".into()],
            when: "on_failure".into(),
            artifact_type: "archive".into(),
            artifact_format: "zip".into(),
            ..Default::default()
        },
    ];
    let r = run_with(
        b.clone(),
        store.clone(),
        j,
        RunnerConfig::default(),
        JobControl::default(),
    )
    .await;
    assert_eq!(r.outcome, JobOutcome::Success, "{}", r.trace);
    assert!(r.trace.contains(":upload_artifacts_on_success"));
    assert!(
        r.trace.contains("'..'"),
        "escape refused with a warning: {}",
        r.trace
    );
    let uploads = store.uploads();
    assert_eq!(uploads.len(), 1, "only the on_success entry: {uploads:?}");
    assert_eq!(uploads[0].0, "build.zip");
    let entries = isolated_runner::job::artifacts::list_zip(&uploads[0].1).expect("zip");
    let names: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
    assert!(names.contains(&"out/ok.txt"), "{names:?}");
    assert!(!names.iter().any(|n| n.starts_with("outdir/")), "{names:?}");
    for (name, is_link, data) in &entries {
        assert!(
            !String::from_utf8_lossy(data).contains("TOP-SECRET"),
            "{name} leaked the file"
        );
        if name == "out/leak" {
            assert!(is_link, "a symlink is stored as a symlink");
        }
    }
    assert_eq!(b.teardowns(), 1);
}
