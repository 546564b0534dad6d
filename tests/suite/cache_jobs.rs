//! `cache:` through real jobs: `job::Pipeline` with the `LocalCache` hook, on the local test
//! backend (scripts run with local bash; Docker would add nothing to archive logic) and on the
//! real dind backend (the untracked list comes from git in the helper container, and the job
//! directory is only removed after the save).

use crate::support;

use isolated_runner::config::RunnerConfig;
use isolated_runner::gitlab::types::{Cache, JobResponse, JobVariable, Step};
use isolated_runner::isolation::{self, Isolation};
use isolated_runner::job::{JobControl, JobExecutor, JobOutcome, LocalCache, Pipeline};
use isolated_runner::secret::Secret;
use isolated_runner::trace::BufferSink;
use std::path::Path;
use std::sync::Arc;
use support::local_backend::{Faults, LocalIsolation, RecordingStore};

fn var(k: &str, v: &str) -> JobVariable {
    JobVariable {
        key: k.into(),
        value: v.into(),
        public: true,
        ..Default::default()
    }
}

/// A job of `project` running `script`, with one cache entry.
fn job(id: u64, project: u64, script: &[&str], cache: Cache) -> JobResponse {
    let mut j = JobResponse {
        id,
        token: Secret::new(format!("glcbt-cachejob{id}token")),
        steps: vec![Step {
            name: "script".into(),
            script: script.iter().map(|s| s.to_string()).collect(),
            timeout: 3600,
            when: "on_success".into(),
            allow_failure: false,
        }],
        variables: vec![var("GIT_STRATEGY", "none")],
        cache: vec![cache],
        ..Default::default()
    };
    j.job_info.name = "build".into();
    j.job_info.project_id = project;
    j.git_info.r#ref = "main".into();
    j.git_info.protected = Some(false);
    j
}

fn entry(key: &str) -> Cache {
    Cache {
        key: key.into(),
        paths: vec!["vendor/".into()],
        ..Default::default()
    }
}

struct Run {
    outcome: JobOutcome,
    trace: String,
}

async fn run(backend: Arc<dyn Isolation>, runner: &RunnerConfig, job: JobResponse) -> Run {
    let sink = Arc::new(BufferSink::new());
    let mut p = Pipeline::new(backend, RecordingStore::new());
    p.cache = Some(LocalCache::hook());
    let outcome = p
        .execute(
            job,
            Arc::new(runner.clone()),
            sink.clone(),
            JobControl::default(),
        )
        .await;
    Run {
        outcome,
        trace: sink.text(),
    }
}

/// The cache directory of the default runner URL's GitLab instance under `root`.
fn scoped(root: &Path) -> std::path::PathBuf {
    root.join(isolated_runner::job::trust::instance_key(
        &RunnerConfig::default().url,
    ))
}

fn local_runner(cache_dir: &Path) -> RunnerConfig {
    RunnerConfig {
        cache_dir: cache_dir.to_path_buf(),
        ..Default::default()
    }
}

fn ok(r: &Run) {
    assert_eq!(r.outcome, JobOutcome::Success, "trace:\n{}", r.trace);
}

fn failed(r: &Run) {
    assert!(
        matches!(r.outcome, JobOutcome::Failed { .. }),
        "trace:\n{}",
        r.trace
    );
}

#[tokio::test]
async fn cache_follows_the_project_and_nothing_else() {
    let cache = tempfile::tempdir().expect("tempdir");
    let runner = local_runner(cache.path());
    let backend = LocalIsolation::new(Faults::default());

    let r = run(
        backend.clone(),
        &runner,
        job(
            1,
            7,
            &["mkdir -p vendor", "echo one > vendor/x"],
            entry("k"),
        ),
    )
    .await;
    ok(&r);
    assert!(r.trace.contains("Created cache"), "{}", r.trace);
    assert!(
        isolated_runner::cache::archive_path(&scoped(cache.path()), 7, false, "k").is_file(),
        "archive written under the project"
    );

    // The same project restores it.
    let r = run(
        backend.clone(),
        &runner,
        job(2, 7, &["test \"$(cat vendor/x)\" = one"], entry("k")),
    )
    .await;
    ok(&r);
    assert!(
        r.trace.contains("Successfully extracted cache"),
        "{}",
        r.trace
    );

    // Another project with the same key does not.
    let r = run(
        backend.clone(),
        &runner,
        job(
            3,
            8,
            &["test ! -e vendor/x"],
            Cache {
                policy: "pull".into(),
                ..entry("k")
            },
        ),
    )
    .await;
    ok(&r);
    assert!(r.trace.contains("cache k not found"), "{}", r.trace);
    // Every job dir is gone: the save ran before teardown removed the checkout.
    assert_eq!(backend.teardowns(), 3);
    assert!(
        std::fs::read_dir(backend.builds())
            .map(|d| d.count())
            .unwrap_or(0)
            == 0
    );
}

#[tokio::test]
async fn an_unprotected_job_cannot_feed_a_protected_one() {
    let cache = tempfile::tempdir().expect("tempdir");
    let runner = local_runner(cache.path());
    let backend = LocalIsolation::new(Faults::default());
    // An unprotected branch names the protected key on purpose.
    let r = run(
        backend.clone(),
        &runner,
        job(
            1,
            7,
            &["mkdir -p vendor", "echo evil > vendor/x"],
            entry("deps-protected"),
        ),
    )
    .await;
    ok(&r);
    let mut protected = job(
        2,
        7,
        &[
            "test ! -e vendor/x",
            "mkdir -p vendor",
            "echo good > vendor/x",
        ],
        entry("deps-protected"),
    );
    protected.git_info.protected = Some(true);
    let r = run(backend.clone(), &runner, protected).await;
    ok(&r);
    // The protected job's own save lands in the protected directory, which the unprotected
    // one never reads either.
    assert!(
        isolated_runner::cache::archive_path(&scoped(cache.path()), 7, true, "deps-protected")
            .is_file()
    );
    let r = run(
        backend.clone(),
        &runner,
        job(
            3,
            7,
            &["test \"$(cat vendor/x)\" = evil"],
            entry("deps-protected"),
        ),
    )
    .await;
    ok(&r);
}

#[tokio::test]
async fn policy_pull_restores_but_does_not_save() {
    let cache = tempfile::tempdir().expect("tempdir");
    let runner = local_runner(cache.path());
    let backend = LocalIsolation::new(Faults::default());
    let pull = |e: Cache| Cache {
        policy: "pull".into(),
        ..e
    };
    let r = run(
        backend.clone(),
        &runner,
        job(
            1,
            7,
            &["mkdir -p vendor", "echo one > vendor/x"],
            pull(entry("k")),
        ),
    )
    .await;
    ok(&r);
    assert!(
        r.trace.contains("Not uploading cache k due to policy"),
        "{}",
        r.trace
    );
    assert!(!isolated_runner::cache::archive_path(&scoped(cache.path()), 7, false, "k").exists());

    // Seed with pull-push, then a pull job sees it and its changes are not saved.
    ok(&run(
        backend.clone(),
        &runner,
        job(
            2,
            7,
            &["mkdir -p vendor", "echo two > vendor/x"],
            entry("k"),
        ),
    )
    .await);
    ok(&run(
        backend.clone(),
        &runner,
        job(
            3,
            7,
            &["test \"$(cat vendor/x)\" = two", "echo three > vendor/x"],
            pull(entry("k")),
        ),
    )
    .await);
    ok(&run(
        backend.clone(),
        &runner,
        job(4, 7, &["test \"$(cat vendor/x)\" = two"], pull(entry("k"))),
    )
    .await);
    // `push` does not restore.
    ok(&run(
        backend.clone(),
        &runner,
        job(
            5,
            7,
            &["test ! -e vendor/x"],
            Cache {
                policy: "push".into(),
                ..entry("other")
            },
        ),
    )
    .await);
}

#[tokio::test]
async fn when_on_failure_and_on_success() {
    let cache = tempfile::tempdir().expect("tempdir");
    let runner = local_runner(cache.path());
    let backend = LocalIsolation::new(Faults::default());
    let when = |key: &str, w: &str| Cache {
        when: w.into(),
        ..entry(key)
    };
    let archive =
        |key: &str| isolated_runner::cache::archive_path(&scoped(cache.path()), 7, false, key);
    let make = ["mkdir -p vendor", "echo x > vendor/x"];
    let make_and_fail = ["mkdir -p vendor", "echo x > vendor/x", "false"];

    failed(
        &run(
            backend.clone(),
            &runner,
            job(1, 7, &make_and_fail, when("f1", "on_failure")),
        )
        .await,
    );
    assert!(archive("f1").is_file(), "on_failure saves for a failed job");
    failed(
        &run(
            backend.clone(),
            &runner,
            job(2, 7, &make_and_fail, when("f2", "on_success")),
        )
        .await,
    );
    assert!(
        !archive("f2").exists(),
        "on_success does not save for a failed job"
    );
    ok(&run(
        backend.clone(),
        &runner,
        job(3, 7, &make, when("f3", "on_failure")),
    )
    .await);
    assert!(
        !archive("f3").exists(),
        "on_failure does not save for a passed job"
    );
    failed(
        &run(
            backend.clone(),
            &runner,
            job(4, 7, &make_and_fail, when("f4", "always")),
        )
        .await,
    );
    assert!(archive("f4").is_file(), "always saves");
}

#[tokio::test]
async fn keys_expand_and_fall_back() {
    let cache = tempfile::tempdir().expect("tempdir");
    let runner = local_runner(cache.path());
    let backend = LocalIsolation::new(Faults::default());
    let mut seed = job(
        1,
        7,
        &["mkdir -p vendor", "echo main > vendor/x"],
        entry("deps-$BRANCH"),
    );
    seed.variables.push(var("BRANCH", "main"));
    ok(&run(backend.clone(), &runner, seed).await);
    assert!(
        isolated_runner::cache::archive_path(&scoped(cache.path()), 7, false, "deps-main")
            .is_file()
    );

    // A new branch misses its own key and falls back to main's.
    let mut feature = job(
        2,
        7,
        &["test \"$(cat vendor/x)\" = main"],
        Cache {
            fallback_keys: vec!["deps-$DEFAULT".into()],
            policy: "pull".into(),
            ..entry("deps-$BRANCH")
        },
    );
    feature.variables.push(var("BRANCH", "feature"));
    feature.variables.push(var("DEFAULT", "main"));
    let r = run(backend.clone(), &runner, feature).await;
    ok(&r);
    assert!(
        r.trace.contains("Checking cache for deps-main"),
        "{}",
        r.trace
    );

    // CACHE_FALLBACK_KEY comes last.
    let mut last = job(
        3,
        7,
        &["test \"$(cat vendor/x)\" = main"],
        Cache {
            policy: "pull".into(),
            ..entry("nothing-here")
        },
    );
    last.variables.push(var("CACHE_FALLBACK_KEY", "deps-main"));
    ok(&run(backend.clone(), &runner, last).await);
}

#[tokio::test]
async fn untracked_files_come_from_git() {
    let cache = tempfile::tempdir().expect("tempdir");
    let runner = local_runner(cache.path());
    let backend = LocalIsolation::new(Faults::default());
    let c = Cache {
        key: "u".into(),
        untracked: true,
        ..Default::default()
    };
    ok(&run(
        backend.clone(),
        &runner,
        job(
            1,
            7,
            &[
                "git init -q .",
                "echo t > tracked",
                "git add tracked",
                "git -c user.name=t -c user.email=t@t commit -qm t",
                "echo u > untracked.txt",
            ],
            c.clone(),
        ),
    )
    .await);
    ok(&run(
        backend.clone(),
        &runner,
        job(
            2,
            7,
            &["test \"$(cat untracked.txt)\" = u", "test ! -e tracked"],
            c,
        ),
    )
    .await);
}

/// One real job pair on the dind backend: the job container (root, its own image) writes the
/// files, the runner archives them on the host, the next job's container reads them.
#[tokio::test]
async fn dind_jobs_save_and_restore() {
    let scope = support::docker::Scope::new().await;
    let cache = tempfile::tempdir().expect("tempdir");
    let mut runner = scope.runner_config();
    runner.cache_dir = cache.path().to_path_buf();
    let backend: Arc<dyn Isolation> = Arc::new(isolation::dind::DindBackend::new(
        scope.docker.clone(),
        Arc::new(runner.clone()),
        scope.state_dir(),
    ));
    let mut pipeline = Pipeline::new(backend, RecordingStore::new());
    pipeline.cache = Some(LocalCache::hook());
    pipeline.runner_id = scope.runner_id.clone();
    let pipeline = Arc::new(pipeline);
    let go = |j: JobResponse| {
        let p = pipeline.clone();
        let r = runner.clone();
        async move {
            let sink = Arc::new(BufferSink::new());
            let outcome = p
                .execute(j, Arc::new(r), sink.clone(), JobControl::default())
                .await;
            Run {
                outcome,
                trace: sink.text(),
            }
        }
    };
    let both = Cache {
        key: "k".into(),
        paths: vec!["vendor/".into()],
        untracked: true,
        ..Default::default()
    };
    let r = go(job(
        901,
        7,
        &[
            "git init -q . && git -c user.name=t -c user.email=t@t commit -q --allow-empty -m t",
            "mkdir -p vendor && echo one > vendor/x",
            "echo u > loose.txt",
        ],
        both.clone(),
    ))
    .await;
    ok(&r);
    assert!(r.trace.contains("untracked: found"), "{}", r.trace);
    let r = go(job(
        902,
        7,
        &[
            "test \"$(cat vendor/x)\" = one",
            "test \"$(cat loose.txt)\" = u",
        ],
        Cache {
            policy: "pull".into(),
            ..both
        },
    ))
    .await;
    ok(&r);
    scope.assert_clean().await;
}

/// H3: two `[[runners]]` entries of different GitLab instances on one host, same `cache_dir`,
/// same project id and protection: the second never restores (or writes) the first's archive,
/// and the warm data roots the dind backend would take for them have distinct names (the
/// backend keys them by its entry's GitLab URL; labels too, see `data_root` unit tests).
#[tokio::test]
async fn two_instances_never_share_cache_or_warm_roots() {
    let cache = tempfile::tempdir().expect("tempdir");
    let backend = LocalIsolation::new(Faults::default());
    let mut a = local_runner(cache.path());
    a.url = "https://gitlab-a.example.test/".parse().unwrap();
    let mut b = local_runner(cache.path());
    b.url = "https://gitlab-b.example.test/".parse().unwrap();
    let dir_a = cache
        .path()
        .join(isolated_runner::job::trust::instance_key(&a.url));
    let dir_b = cache
        .path()
        .join(isolated_runner::job::trust::instance_key(&b.url));
    assert_ne!(dir_a, dir_b);

    let protected_job = |id: u64, script: &[&str]| {
        let mut j = job(id, 7, script, entry("deploy"));
        j.git_info.protected = Some(true);
        j
    };
    let r = run(
        backend.clone(),
        &a,
        protected_job(61, &["mkdir -p vendor", "echo from-a > vendor/x"]),
    )
    .await;
    ok(&r);
    assert!(isolated_runner::cache::archive_path(&dir_a, 7, true, "deploy").is_file());

    // Instance B, same project id, protected too: nothing of A's to restore, and its own
    // archive lands in its own directory, leaving A's untouched.
    let before = std::fs::read(isolated_runner::cache::archive_path(
        &dir_a, 7, true, "deploy",
    ))
    .expect("A's archive");
    let r = run(
        backend.clone(),
        &b,
        protected_job(
            62,
            &[
                "test ! -e vendor/x",
                "mkdir -p vendor",
                "echo from-b > vendor/x",
            ],
        ),
    )
    .await;
    ok(&r);
    assert!(isolated_runner::cache::archive_path(&dir_b, 7, true, "deploy").is_file());
    let after = std::fs::read(isolated_runner::cache::archive_path(
        &dir_a, 7, true, "deploy",
    ))
    .expect("A's archive");
    assert_eq!(before, after, "B rewrote A's archive");
    assert!(
        !isolated_runner::cache::archive_path(cache.path(), 7, true, "deploy").exists(),
        "an unscoped archive was written"
    );

    // Warm data roots: same runner id, project and flag, another instance, another volume.
    let warm = |r: &RunnerConfig| {
        isolated_runner::isolation::data_root::volume_name(
            "sysid",
            &isolated_runner::job::trust::instance_key(&r.url),
            7,
            true,
        )
    };
    assert_ne!(warm(&a), warm(&b));
}

/// A `USER 1000` image made from the job image for one test, removed when dropped.
struct UserImage(String);

impl UserImage {
    fn build(scope: &support::docker::Scope) -> UserImage {
        use std::io::Write;
        let tag = format!("isolated-runner/job-uid1000:{}", scope.runner_id);
        let mut child = std::process::Command::new("docker")
            // --no-cache: a cached intermediate shared with another test's build of the same
            // Dockerfile vanishes when that test removes its image.
            .args(["build", "-q", "--no-cache", "-t", &tag, "--label"])
            .arg(format!("io.isolated-runner.runner={}", scope.runner_id))
            .arg("-")
            // The legacy builder never resolves FROM against a registry (the image is local).
            .env("DOCKER_BUILDKIT", "0")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("docker build");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(format!("FROM {}\nUSER 1000\n", support::docker::JOB_IMAGE).as_bytes())
            .expect("write Dockerfile");
        assert!(
            child.wait().expect("docker build").success(),
            "docker build {tag}"
        );
        UserImage(tag)
    }
}

impl Drop for UserImage {
    fn drop(&mut self) {
        let _ = std::process::Command::new("docker")
            .args(["rmi", "-f", &self.0])
            .output();
    }
}

/// Issue 11 item 4: on an image whose `USER` is 1000 the script runs as 1000 (with
/// no-new-privileges), writes into the project dir and `TMPDIR`, reads its file variable; the
/// artifact is collected and the cache saved. A job on the root image with `image: docker:
/// user: nobody` runs as that user, looked up in the image.
#[tokio::test]
async fn non_root_images_run_write_and_save() {
    let scope = support::docker::Scope::new().await;
    let image = UserImage::build(&scope);
    let cache = tempfile::tempdir().expect("tempdir");
    let mut runner = scope.runner_config();
    runner.cache_dir = cache.path().to_path_buf();
    runner.docker.image = image.0.clone();
    let backend: Arc<dyn Isolation> = Arc::new(isolation::dind::DindBackend::new(
        scope.docker.clone(),
        Arc::new(runner.clone()),
        scope.state_dir(),
    ));
    let store = RecordingStore::new();
    let mut pipeline = Pipeline::new(backend, store.clone());
    pipeline.cache = Some(LocalCache::hook());
    pipeline.runner_id = scope.runner_id.clone();
    let go = |j: JobResponse| {
        let (p, r) = (&pipeline, runner.clone());
        async move {
            let sink = Arc::new(BufferSink::new());
            let outcome = p
                .execute(j, Arc::new(r), sink.clone(), JobControl::default())
                .await;
            Run {
                outcome,
                trace: sink.text(),
            }
        }
    };

    let mut j = job(
        911,
        8,
        &[
            "test \"$(id -u)\" = 1000",
            "grep -q '^NoNewPrivs:[[:space:]]*1' /proc/self/status",
            "echo out > out.txt",
            "mkdir -p vendor && echo v > vendor/x",
            "echo t > \"$TMPDIR/scratch\" && cat \"$TMPDIR/scratch\"",
            "test \"$(cat \"$CFG\")\" = file-secret",
        ],
        entry("nonroot"),
    );
    j.variables.push(JobVariable {
        key: "CFG".into(),
        value: "file-secret".into(),
        file: true,
        ..Default::default()
    });
    j.artifacts = vec![isolated_runner::gitlab::types::Artifact {
        name: Some("out".into()),
        paths: vec!["out.txt".into()],
        artifact_type: "archive".into(),
        artifact_format: "zip".into(),
        when: "on_success".into(),
        ..Default::default()
    }];
    let r = go(j).await;
    ok(&r);
    assert!(r.trace.contains("uid 1000:0"), "{}", r.trace);
    assert!(r.trace.contains("Created cache"), "{}", r.trace);
    assert_eq!(store.uploads().len(), 1, "{}", r.trace);
    assert!(
        isolated_runner::cache::archive_path(&scoped(cache.path()), 8, false, "nonroot").is_file()
    );

    // `image: docker: user` by name, on the root image.
    let mut j = job(
        912,
        8,
        &["test \"$(id -un)\" = nobody", "echo x > y.txt"],
        entry("nonroot2"),
    );
    j.image = Some(isolated_runner::gitlab::types::Image {
        name: support::docker::JOB_IMAGE.into(),
        executor_opts: Some(serde_json::json!({"docker": {"user": "nobody"}})),
        ..Default::default()
    });
    let r = go(j).await;
    ok(&r);
    assert!(r.trace.contains("uid 65534:65534"), "{}", r.trace);

    // A user the image does not have fails the job with the reason, before any step.
    let mut j = job(913, 8, &["echo never-ran"], entry("nonroot3"));
    j.image = Some(isolated_runner::gitlab::types::Image {
        name: support::docker::JOB_IMAGE.into(),
        executor_opts: Some(serde_json::json!({"docker": {"user": "no-such-user"}})),
        ..Default::default()
    });
    let r = go(j).await;
    failed(&r);
    assert!(
        r.trace.contains("has no user \"no-such-user\""),
        "{}",
        r.trace
    );
    assert!(!r.trace.contains("step_script"), "{}", r.trace);
    scope.assert_clean().await;
}
