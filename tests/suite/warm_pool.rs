//! The warm pool against the real engine: jobs take pre-started sidecars, see their own
//! directories at the identical path (through the sidecar and its inner containers) and
//! nothing of another job; a job the slot's certificates cannot cover starts its own sidecar;
//! shutdown and the reaper leave nothing behind. Every test works in a `Scope` and ends with
//! `assert_clean`.

use crate::support;

use isolated_runner::isolation::{self, Isolation};
use std::sync::Arc;
use std::time::Duration;
use support::docker::{BUSYBOX_IMAGE, Scope};
use support::security::{expect_ok, prepare_logged as prepare, teardown};

/// A dind backend keeping one sidecar started ahead of jobs.
fn pooled(scope: &Scope) -> Arc<dyn Isolation> {
    scope.dind(scope.config(|c| c.docker.isolation.warm_pool = 1))
}

/// A job spec with `timeout`.
fn spec_for(scope: &Scope, job_id: u64, timeout: Duration) -> isolation::EnvironmentSpec {
    let mut s = scope.spec(job_id);
    s.timeout = timeout;
    s
}

/// What the job's daemon sees at `<builds_dir>`, from an inner container.
fn list_builds_dir(builds: &std::path::Path) -> String {
    format!(
        "docker run --rm --pull=never -v {b}:/b {BUSYBOX_IMAGE} ls -a /b | grep -v '^\\.*$' | sort | tr '\\n' ' '; echo",
        b = builds.display()
    )
}

/// A job script at its project directory `pd`: the job's daemon is its own, a file the runner
/// wrote there (`marker.txt`) reads the same directly and through an inner container at the
/// identical path (what compose's `./:/app` does), an inner container writes `from-inner`, and
/// the script prints what that daemon sees under `builds` as `A sees: …`.
fn identical_path_probe(pd: &std::path::Path, builds: &std::path::Path) -> String {
    format!(
        r#"
set -o pipefail
test "$DOCKER_HOST" = tcp://docker:2376
cd {pd}
test "$(cat marker.txt)" = from-the-runner
test "$(docker run --rm --pull=never -v {pd}:/app {BUSYBOX_IMAGE} cat /app/marker.txt)" = from-the-runner
docker run --rm --pull=never -v {pd}:/app {BUSYBOX_IMAGE} sh -c 'echo inner > /app/from-inner'
echo "A sees: $({list})"
"#,
        list = list_builds_dir(builds),
        pd = pd.display()
    )
}

/// Waits (up to 60 s) until the daemon in `sidecar` says it listens.
async fn wait_until_listening(scope: &Scope, sidecar: &str) {
    for _ in 0..600 {
        let log = scope
            .docker
            .logs_tail(sidecar, 200)
            .await
            .unwrap_or_default();
        if log.contains("API listen on [::]:2376") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The engine's archive requests on one sidecar (the fallback for a pooled job's links inside
/// it), watched live from its start: the engine keeps only its last events.
struct ArchiveWatch(tokio::process::Child);

impl ArchiveWatch {
    fn start(sidecar: &str) -> ArchiveWatch {
        let child = tokio::process::Command::new("docker")
            .args(["events", "--format", "{{.Action}}"])
            .args(["--filter", &format!("container={sidecar}")])
            .args(["--filter", "event=extract-to-dir"])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("docker events");
        ArchiveWatch(child)
    }

    /// Stops watching; the events seen, one action per line, trimmed.
    async fn seen(mut self) -> String {
        let _ = self.0.start_kill();
        let out = self.0.wait_with_output().await.expect("docker events");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

/// The sidecar container of slot `id`, once it exists.
async fn sidecar_of(scope: &Scope, id: u64) -> String {
    let f = isolated_runner::docker::label_filters(&scope.runner_id, Some(id));
    for _ in 0..600 {
        let list = scope.docker.list_containers(&f).await.expect("list");
        if let Some(c) = list.iter().find(|c| c.name.ends_with("-sidecar")) {
            return c.id.clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("slot {id} has no sidecar after 60 s");
}

/// The slot id a job's objects are labelled with.
fn slot_of(env: &dyn isolation::JobEnvironment) -> u64 {
    env.resources()
        .labels
        .iter()
        .find_map(|l| l.strip_prefix("io.isolated-runner.job="))
        .and_then(|id| id.parse().ok())
        .expect("a job label")
}

/// What `runner cleanup` (dry run, every unowned dir taken for stale, this scope's runner id as
/// its own) would remove now, by name.
async fn cleanup_would_remove(
    scope: &Scope,
    netpolicy: Option<isolated_runner::netpolicy::NetPolicy>,
    label_filter: Option<String>,
) -> Vec<String> {
    let plan = isolated_runner::cleanup::plan(
        Some(&scope.docker),
        &isolated_runner::cleanup::Request {
            builds_dirs: vec![scope.builds_dir()],
            state_dir: scope.state_dir(),
            caches: Vec::new(),
            older_than: Duration::ZERO,
            dry_run: true,
            netpolicy,
            own_runner_ids: vec![scope.runner_id.clone()],
            cache_pruner: None,
            label_filter,
        },
    )
    .await;
    plan.items.into_iter().map(|i| i.name).collect()
}

/// `HostConfig.CpuShares` of a container, as the engine reports it.
fn cpu_shares(id: &str) -> String {
    let out = std::process::Command::new("docker")
        .args(["inspect", "-f", "{{.HostConfig.CpuShares}}", id])
        .output()
        .expect("docker inspect");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[tokio::test]
async fn jobs_take_pre_started_sidecars_and_see_only_their_own_files() {
    let scope = Scope::new().await;
    let backend = pooled(&scope);
    backend.warm_up(&scope.runner_id).await;
    assert_eq!(
        backend.standby_ids().len(),
        1,
        "warm_up starts one slot at once"
    );
    assert!(
        backend
            .standby_ids()
            .iter()
            .all(|&id| isolation::pool::is_slot_id(id))
    );

    // While no job has it, the slot's sidecar runs at a low CPU weight.
    let slot = backend.standby_ids()[0];
    let slot_sidecar = sidecar_of(&scope, slot).await;
    assert_eq!(cpu_shares(&slot_sidecar), "128");

    // Job A takes the slot (waiting for it to finish if it is still starting); timed from
    // when its daemon listens.
    wait_until_listening(&scope, &slot_sidecar).await;
    let archive_watch = ArchiveWatch::start(&slot_sidecar);
    let took = std::time::Instant::now();
    let (a, said) = prepare(&backend, &spec_for(&scope, 601, Duration::from_secs(3600))).await;
    assert!(said.contains("pre-started"), "{said}");
    // The slot's replacement waits for A's first step to end (its start on the host daemon
    // would compete with A's), or for the runner's 2 s deadline when A's steps are late: a
    // prepare that ended sooner leaves the pool empty.
    if took.elapsed() < Duration::from_millis(1900) {
        assert_eq!(
            backend.standby_ids(),
            Vec::<u64>::new(),
            "the replacement started before the job's first step"
        );
    }
    assert_eq!(
        a.resources().sidecar.as_deref(),
        Some(slot_sidecar.as_str())
    );
    // The weight follows the links inside the sidecar; nothing of the job waits for it.
    let mut weight = cpu_shares(&slot_sidecar);
    for _ in 0..50 {
        if weight == "1024" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        weight = cpu_shares(&slot_sidecar);
    }
    assert_eq!(weight, "1024", "the job's sidecar gets the default weight");
    let pd = a.paths().project_dir.clone();
    assert_eq!(pd, scope.builds_dir().join("gitlab-job-601"));
    assert!(
        std::fs::symlink_metadata(&pd)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    // The runner's own file work goes to the slot's real directory, never through the link.
    assert_eq!(
        a.host_dirs().project_dir,
        scope.builds_dir().join(format!("gitlab-job-{slot}"))
    );
    std::fs::write(pd.join("marker.txt"), "from-the-runner").unwrap();
    let text = expect_ok(a.as_ref(), &identical_path_probe(&pd, &scope.builds_dir())).await;
    // Its own directories (links in the sidecar's file system) and the slot's two
    // directories they point to (mount points there), nothing else.
    assert!(
        text.contains(&format!(
            "A sees: gitlab-job-{slot} gitlab-job-{slot}.tmp gitlab-job-601 gitlab-job-601.tmp \n"
        )),
        "the job's daemon must see exactly its own directories under builds_dir:\n{text}"
    );
    // The runner made those links itself, through the sidecar's process: the engine's
    // archive endpoint (the slower fallback) was never asked.
    assert_eq!(
        archive_watch.seen().await,
        "",
        "the links went through the engine's archive endpoint"
    );
    assert_eq!(
        std::fs::read_to_string(pd.join("from-inner")).unwrap(),
        "inner\n"
    );
    // A's first step ran: the replacement is being built (or ready); its sidecar marks its
    // directories as a live slot's before cleanup is asked below.
    let replacement = backend.standby_ids();
    assert_eq!(
        replacement.len(),
        1,
        "no replacement after the job's first step"
    );
    sidecar_of(&scope, replacement[0]).await;
    // `runner cleanup` (even told that every unowned dir is stale) keeps a live pooled job's
    // links and its slot: the links count as the slot's, whose runner is alive.
    let doomed = cleanup_would_remove(
        &scope,
        None,
        Some(format!("io.isolated-runner.runner={}", scope.runner_id)),
    )
    .await;
    assert!(
        !doomed.iter().any(|n| n.contains("gitlab-job-")),
        "cleanup would remove a live pooled job's files: {doomed:?}"
    );

    // Job B gets the slot built after A took the first; A's files are not in its world.
    let (b, said) = prepare(&backend, &spec_for(&scope, 602, Duration::from_secs(3600))).await;
    assert!(said.contains("pre-started"), "{said}");
    let text = expect_ok(
        b.as_ref(),
        &format!(
            "set -o pipefail\necho \"B sees: $({})\"\ntest ! -e {}/gitlab-job-601",
            list_builds_dir(&scope.builds_dir()),
            scope.builds_dir().display()
        ),
    )
    .await;
    let b_slot = slot_of(b.as_ref());
    assert_ne!(b_slot, slot);
    assert!(
        text.contains(&format!(
            "B sees: gitlab-job-{b_slot} gitlab-job-{b_slot}.tmp gitlab-job-602 gitlab-job-602.tmp \n"
        )),
        "{text}"
    );

    // A job longer than a slot's certificates start its own sidecar; the pool stays.
    let (c, said) = prepare(
        &backend,
        &spec_for(&scope, 603, Duration::from_secs(30 * 24 * 3600)),
    )
    .await;
    assert!(
        said.contains("Job docker daemon ready in") && !said.contains("pre-started"),
        "{said}"
    );
    expect_ok(c.as_ref(), "docker info >/dev/null").await;

    for env in [a, b, c] {
        teardown(env).await;
    }
    // The slot refilled after B is idle now (or still starting): shutdown removes it.
    assert!(!backend.standby_ids().is_empty());
    let report = backend.shutdown().await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert!(backend.standby_ids().is_empty());
    scope.assert_clean().await;
}

/// The engine's way for a pooled job's links, on a real setup that refuses the direct one: a
/// sidecar image whose `/tmp` (on the way to the test's `builds_dir`) is a link. The runner
/// never follows a link on its own way into a sidecar's file system, so it hands the same
/// links to the engine's archive endpoint (which resolves them inside the container's root),
/// and the job still finds its directories at the identical path, through its daemon too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_image_with_a_link_on_the_way_gets_the_links_through_the_engine() {
    let scope = Scope::new().await;
    assert!(
        scope.builds_dir().starts_with("/tmp"),
        "this test needs builds_dir below /tmp: {}",
        scope.builds_dir().display()
    );
    let image = support::docker::derived_sidecar_image(
        &scope,
        "tmp-link",
        "RUN rm -rf /tmp && ln -s /var/tmp /tmp",
    );
    let backend = scope.dind(scope.config(|c| {
        c.docker.isolation.warm_pool = 1;
        c.docker.isolation.sidecar_image = image.0.clone();
    }));
    backend.warm_up(&scope.runner_id).await;
    let slot = backend.standby_ids()[0];
    let slot_sidecar = sidecar_of(&scope, slot).await;
    wait_until_listening(&scope, &slot_sidecar).await;
    let archive_watch = ArchiveWatch::start(&slot_sidecar);
    let (a, said) = prepare(&backend, &spec_for(&scope, 611, Duration::from_secs(3600))).await;
    assert!(said.contains("pre-started"), "{said}");
    let pd = a.paths().project_dir.clone();
    std::fs::write(
        a.host_dirs().project_dir.join("marker.txt"),
        "from-the-runner",
    )
    .unwrap();
    let text = expect_ok(a.as_ref(), &identical_path_probe(&pd, &scope.builds_dir())).await;
    assert!(
        text.contains(&format!(
            "A sees: gitlab-job-{slot} gitlab-job-{slot}.tmp gitlab-job-611 gitlab-job-611.tmp \n"
        )),
        "{text}"
    );
    assert_eq!(
        std::fs::read_to_string(a.host_dirs().project_dir.join("from-inner")).unwrap(),
        "inner\n"
    );
    assert_eq!(
        archive_watch.seen().await,
        "extract-to-dir",
        "the links did not go through the engine's archive endpoint (once)"
    );
    teardown(a).await;
    let report = backend.shutdown().await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    scope.assert_clean().await;
}

#[test]
fn idle_slots_of_a_dead_runner_are_reaped() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let scope = rt.block_on(Scope::new());
    // The "runner": its own runtime, dropped (all its tasks die) once its slot's sidecar runs.
    let dead = tokio::runtime::Runtime::new().unwrap();
    dead.block_on(async {
        let backend = pooled(&scope);
        backend.warm_up(&scope.runner_id).await;
        let f = isolated_runner::docker::label_filters(&scope.runner_id, None);
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            let running = scope
                .docker
                .list_containers(&f)
                .await
                .unwrap()
                .into_iter()
                .any(|c| c.running);
            if running {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the slot's sidecar never ran"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Let the slot get ready, so the crash leaves a complete one.
        tokio::time::sleep(Duration::from_secs(3)).await;
    });
    dead.shutdown_timeout(Duration::from_secs(1));

    rt.block_on(async {
        let req = isolation::reaper::ReapRequest {
            runner_id: scope.runner_id.clone(),
            state_dir: scope.state_dir(),
            builds_dir: scope.builds_dir(),
            dry_run: false,
        };
        let done = isolation::reaper::reap(&scope.docker, &req).await;
        assert!(done.failures.is_empty(), "{:?}", done.failures);
        for kind in ["container ir-", "network ir-", "volume ir-", "dir "] {
            assert!(
                done.removed.iter().any(|f| f.starts_with(kind)),
                "the reaper missed a slot's {kind}: {:?}",
                done.removed
            );
        }
        scope.assert_clean().await;
    });
}

/// Every entry name and content of the archives a job produced (cache `.tar.gz` under
/// `cache_dir`, artifact zips in the store), for looking for data that must not be there.
fn archive_texts(cache_dir: &std::path::Path, zips: &[std::path::PathBuf]) -> Vec<String> {
    use std::io::Read;
    let mut texts = Vec::new();
    let mut stack = vec![cache_dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("read cache dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().ends_with(".tar.gz") {
                let f = std::fs::File::open(&p).expect("open cache archive");
                let mut a = tar::Archive::new(flate2::read::GzDecoder::new(f));
                for entry in a.entries().expect("cache archive entries") {
                    let mut entry = entry.expect("cache archive entry");
                    let mut s = String::new();
                    let _ = entry.read_to_string(&mut s);
                    texts.push(format!("{} {s}", entry.path().unwrap().display()));
                }
            }
        }
    }
    for z in zips {
        let mut a = zip::ZipArchive::new(std::fs::File::open(z).expect("open artifact"))
            .expect("artifact is a zip");
        for i in 0..a.len() {
            let mut f = a.by_index(i).expect("zip entry");
            let mut s = String::new();
            let _ = f.read_to_string(&mut s);
            texts.push(format!("{} {s}", f.name().expect("zip entry name")));
        }
    }
    texts
}

/// Names, contents and mtimes of every entry of `dir` (and the dir's own mtime).
fn snapshot(dir: &std::path::Path) -> Vec<(String, String, std::time::SystemTime)> {
    let mut v = vec![(
        ".".to_string(),
        String::new(),
        std::fs::metadata(dir).unwrap().modified().unwrap(),
    )];
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let m = std::fs::symlink_metadata(e.path()).unwrap();
        v.push((
            e.file_name().to_string_lossy().into_owned(),
            std::fs::read_to_string(e.path()).unwrap_or_default(),
            m.modified().unwrap(),
        ));
    }
    v.sort();
    v
}

/// C2: a pooled job swaps, through its own daemon, every entry of `builds_dir` it can reach
/// for a link to a host directory of the test's, then has `after_script`, `cache: untracked`
/// and artifacts. The slot's directories are mount points in the sidecar (the rename fails)
/// and only the job's links in the sidecar's own file system can be replaced, so nothing the
/// runner or the host daemon does later goes near the canary.
#[tokio::test]
async fn a_pooled_job_cannot_redirect_its_directories() {
    use isolated_runner::gitlab::types::{Artifact, Cache, JobResponse, JobVariable, Step};
    use isolated_runner::job::{JobControl, JobExecutor, JobOutcome, LocalCache, Pipeline};
    use isolated_runner::trace::BufferSink;
    use support::local_backend::RecordingStore;

    let scope = Scope::new().await;
    let canary = tempfile::tempdir().expect("canary dir");
    std::fs::write(canary.path().join("canary-secret.txt"), "CANARY-DATA\n").unwrap();
    let before = snapshot(canary.path());
    let cache = tempfile::tempdir().expect("cache dir");
    let runner = scope.config(|c| {
        c.docker.isolation.warm_pool = 1;
        c.cache_dir = cache.path().to_path_buf();
    });
    let backend = scope.dind(runner.clone());
    backend.warm_up(&scope.runner_id).await;
    let store = RecordingStore::new();
    let mut pipeline = Pipeline::new(backend.clone(), store.clone());
    pipeline.cache = Some(LocalCache::hook());
    pipeline.runner_id = scope.runner_id.clone();

    let builds = scope.builds_dir();
    let attack = format!(
        "docker run --rm --pull=never -v {b}:/b {BUSYBOX_IMAGE} sh -c 'cd /b; for d in gitlab-job-*; do mv \"$d\" \"moved-$d\" && ln -s {c} \"$d\" && echo \"swapped $d\"; done; ls -la /b'",
        b = builds.display(),
        c = canary.path().display()
    );
    let step = |name: &str, script: Vec<String>| Step {
        name: name.into(),
        script,
        timeout: 3600,
        when: "always".into(),
        allow_failure: false,
    };
    let var = |k: &str, v: &str| JobVariable {
        key: k.into(),
        value: v.into(),
        public: true,
        ..Default::default()
    };
    let mut job = JobResponse {
        id: 611,
        token: isolated_runner::secret::Secret::new("glcbt-pool611token".to_string()),
        steps: vec![
            step(
                "script",
                vec![
                    "echo job-data > own.txt".into(),
                    attack,
                    // Through the swapped link, the job's daemon sees only its own view.
                    format!(
                        "docker run --rm --pull=never -v $CI_PROJECT_DIR:/app {BUSYBOX_IMAGE} ls -la /app || true"
                    ),
                ],
            ),
            step(
                "after_script",
                vec!["echo \"after sees: $(ls $CI_PROJECT_DIR | tr '\\n' ' ')\"".into()],
            ),
        ],
        variables: vec![var("GIT_STRATEGY", "none"), var("CI_JOB_ID", "611")],
        cache: vec![Cache {
            key: "k".into(),
            untracked: true,
            when: "always".into(),
            ..Default::default()
        }],
        artifacts: vec![Artifact {
            name: Some("a".into()),
            untracked: true,
            paths: vec!["*".into()],
            when: "always".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    job.job_info.name = "attack".into();
    job.job_info.project_id = 7;
    job.git_info.r#ref = "main".into();
    job.git_info.protected = Some(false);

    let sink = Arc::new(BufferSink::new());
    let outcome = pipeline
        .execute(
            job,
            Arc::new(runner.clone()),
            sink.clone(),
            JobControl::default(),
        )
        .await;
    let trace = sink.text();
    assert!(
        trace.contains("pre-started"),
        "the job took a slot:\n{trace}"
    );
    // The attack ran: the job's own links in its sidecar were swapped (hardened), or the
    // unprivileged inner daemon could not even rename them (rootless, the default) ...
    assert!(
        trace.contains("swapped gitlab-job-611")
            || trace.contains("can't rename 'gitlab-job-611': Permission denied"),
        "{trace}"
    );
    // ... and the job went on, with no effect outside its sidecar (or failed saying why).
    match &outcome {
        JobOutcome::Success => {}
        JobOutcome::Failed { .. } => assert!(
            trace.contains("no longer a plain directory"),
            "a failure must say why:\n{trace}"
        ),
        other => panic!("unexpected outcome {other:?}:\n{trace}"),
    }
    assert!(trace.contains("after sees: own.txt"), "{trace}");
    assert!(
        !trace.contains("canary-secret"),
        "the canary was reached:\n{trace}"
    );
    assert_eq!(snapshot(canary.path()), before, "the canary changed");
    let zips: Vec<std::path::PathBuf> = store.uploads().into_iter().map(|(_, p)| p).collect();
    let texts = archive_texts(cache.path(), &zips);
    assert!(
        texts.iter().any(|t| t.contains("own.txt job-data")),
        "the artifact or cache holds the job's own file: {texts:?}"
    );
    assert!(
        !texts
            .iter()
            .any(|t| t.contains("canary") || t.contains("CANARY")),
        "canary data in an artifact or the cache: {texts:?}"
    );

    let report = backend.shutdown().await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    scope.assert_clean().await;
}

/// `warm_pool = "auto"` (the config file's default): no slot before any demand; a stage of two
/// parallel jobs makes the pool aim for two and build them; the next two jobs take pre-started
/// sidecars; once the demand window (`warm_pool_max_idle`) passed without jobs, the pool aims
/// for none and its slots are gone.
#[tokio::test]
async fn the_auto_pool_grows_under_a_stream_and_shrinks_when_idle() {
    let scope = Scope::new().await;
    let backend = scope.dind(scope.config(|c| {
        c.docker.isolation.warm_pool_auto = true;
        // Long enough to cover two cold starts on a loaded 2-core host.
        c.docker.isolation.warm_pool_max_idle = Duration::from_secs(90);
    }));
    backend.warm_up(&scope.runner_id).await;
    assert_eq!(backend.pool_target(), Some(0), "no demand yet");
    assert!(backend.standby_ids().is_empty());

    let (sa, sb) = (scope.spec(801), scope.spec(802));
    let ((a, _), (b, _)) = tokio::join!(prepare(&backend, &sa), prepare(&backend, &sb));
    assert_eq!(
        backend.pool_target(),
        Some(2),
        "two jobs within one build time"
    );
    let grown = support::wait_until(Duration::from_secs(180), || {
        backend.standby_ids().len() >= 2
    })
    .await;
    assert!(grown, "the pool did not grow: {:?}", backend.standby_ids());
    teardown(a).await;
    teardown(b).await;
    // Wait for the slots to be ready, then the next stage finds them.
    let (sc, sd) = (scope.spec(803), scope.spec(804));
    let ((c, tc), (d, td)) = tokio::join!(prepare(&backend, &sc), prepare(&backend, &sd));
    for t in [&tc, &td] {
        assert!(t.contains("pre-started"), "{t}");
    }
    teardown(c).await;
    teardown(d).await;

    // Idle: the demand leaves the window and the slots go (maintenance every 15 s).
    let shrunk = support::wait_until(Duration::from_secs(240), || {
        backend.standby_ids().is_empty() && backend.pool_target() == Some(0)
    })
    .await;
    assert!(
        shrunk,
        "still {:?} standby, target {:?}",
        backend.standby_ids(),
        backend.pool_target()
    );
    let report = backend.shutdown().await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    scope.assert_clean().await;
}

/// For each warm data-root volume of runner `runner_id`, the running containers that mount it
/// (sidecars, and the scrub and measuring containers), as the engine reports them.
fn warm_mounts(runner_id: &str) -> std::collections::HashMap<String, Vec<String>> {
    let ids = std::process::Command::new("docker")
        .args([
            "ps",
            "-q",
            "--filter",
            &format!("label=io.isolated-runner.runner={runner_id}"),
        ])
        .output()
        .expect("docker ps");
    let ids: Vec<String> = String::from_utf8_lossy(&ids.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let mut by_volume: std::collections::HashMap<String, Vec<String>> = Default::default();
    if ids.is_empty() {
        return by_volume;
    }
    // A container gone between the two calls is simply not listed (inspect says so on stderr).
    let out = std::process::Command::new("docker")
        .arg("inspect")
        .arg("-f")
        .arg(r#"{{.Name}} {{.State.Running}}{{range .Mounts}}{{if eq .Type "volume"}} {{.Name}}{{end}}{{end}}"#)
        .args(&ids)
        .output()
        .expect("docker inspect");
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let mut f = line.split_whitespace();
        let (Some(name), Some("true")) = (f.next(), f.next()) else {
            continue;
        };
        for v in f.filter(|v| v.contains("-warm-")) {
            by_volume
                .entry(v.to_string())
                .or_default()
                .push(name.trim_start_matches('/').to_string());
        }
    }
    by_volume
}

/// Whether the runner holds the warm root's lock (`<state_dir>/warm-roots/<volume>.lock`):
/// the test's own non-blocking exclusive `flock` on it fails.
fn root_locked(scope: &Scope, volume: &str) -> bool {
    let path = scope
        .state_dir()
        .join("warm-roots")
        .join(format!("{volume}.lock"));
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(_) => false,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => true,
        Err((_, e)) => panic!("flock {}: {e}", path.display()),
    }
}

/// A script that builds `tag` in the job's daemon from a one-line Dockerfile (nothing pulled).
fn build_image(tag: &str) -> String {
    format!(
        "printf 'FROM {BUSYBOX_IMAGE}\\nRUN echo {tag} > /mark\\n' | docker build --pull=false -q -t {tag} - >/dev/null"
    )
}

/// The repositories a job's daemon lists, as one line.
const IMAGES: &str =
    "echo \"images: $(docker image ls --format '{{.Repository}}' | sort | tr '\\n' ' ')\"";

/// The warm root a job's prepare says it uses.
fn root_of(said: &str) -> String {
    said.split("Using the warm data root ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no warm root in:\n{said}"))
        .to_string()
}

/// Waits until a pre-started slot's sidecar runs on `volume` (`alone`: and no other slot is
/// idle or starting).
async fn slot_on(scope: &Scope, backend: &Arc<dyn Isolation>, volume: &str, alone: bool) -> bool {
    let f = isolated_runner::docker::label_filters(&scope.runner_id, None);
    for _ in 0..2400 {
        if alone && backend.standby_ids().len() != 1 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let sidecars: Vec<String> = scope
            .docker
            .list_containers(&f)
            .await
            .expect("list")
            .into_iter()
            .filter(|c| {
                c.name.ends_with("-sidecar")
                    && backend
                        .standby_ids()
                        .iter()
                        .any(|id| c.name.contains(&format!("-{id}-")))
            })
            .map(|c| c.name.trim_start_matches('/').to_string())
            .collect();
        let mounts = warm_mounts(&scope.runner_id);
        if mounts
            .get(volume)
            .is_some_and(|h| h.iter().any(|n| sidecars.contains(n)))
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Sets its flag when dropped (also while a test unwinds).
struct StopOnDrop(Arc<std::sync::atomic::AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The keyed pool's policy with `data_root = "project"` (docs/warm-images.md, "Warm
/// daemons"): a project's jobs back to back, each next one arriving while the previous one's
/// teardown still holds its warm root, take a sidecar started on another root of the project
/// when the previous job started. A root not yet warm fills with the first job on it (job 2);
/// from then on the next job's slot is on a warm root with the images an earlier job built
/// (job 3 sees job 1's). Once the project is quiet, its slot is on the root its last job left
/// (job 4 sees job 3's image). A watcher samples the engine all along: no warm root is ever
/// mounted by two running containers; the runner holds the lock of every root a daemon runs
/// on. Everything is removed at the end.
#[tokio::test]
async fn a_projects_next_job_finds_a_ready_sidecar_on_a_warm_root_during_the_last_teardown() {
    let scope = Scope::new().await;
    let backend = scope.dind(scope.config(|c| {
        c.docker.isolation.data_root = isolated_runner::config::DataRoot::Project;
        c.docker.isolation.data_root_per_key = 2;
        // One slot: the replacement's start may go one above it, never for long.
        c.docker.isolation.warm_pool = 1;
    }));
    backend.warm_up(&scope.runner_id).await;

    // The watcher: every 100 ms, any warm volume mounted by two running containers. Stopped
    // by a guard also when an assertion fails.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let _stop_on_drop = StopOnDrop(stop.clone());
    let watcher = {
        let (stop, runner_id) = (stop.clone(), scope.runner_id.clone());
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut rounds = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for (v, holders) in warm_mounts(&runner_id) {
                    if holders.len() > 1 {
                        seen.push(format!("{v}: {holders:?}"));
                    }
                }
                rounds += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (seen, rounds)
        })
    };

    // Job 1: no slot yet: its own sidecar on the project's first root (new, cold).
    let (j1, said) = prepare(&backend, &scope.spec(701)).await;
    assert!(
        said.contains("(new, cold)") && !said.contains("pre-started"),
        "{said}"
    );
    let root_a = root_of(&said);
    eprintln!("job 1 on {root_a}");
    expect_ok(j1.as_ref(), &build_image("built-by-701")).await;

    // Job 2 arrives while job 1's teardown runs: it takes the slot started with job 1, on the
    // project's other root, which is new (the first job on a root fills it).
    let t1 = tokio::spawn(teardown(j1));
    let (j2, said) = prepare(&backend, &scope.spec(702)).await;
    assert!(said.contains("pre-started"), "{said}");
    assert!(said.contains("(new, cold;"), "{said}");
    let root_b = root_of(&said);
    eprintln!("job 2 on {root_b}");
    assert_ne!(root_a, root_b);
    expect_ok(j2.as_ref(), &build_image("built-by-702")).await;
    t1.await.expect("teardown of job 1");

    // With job 2 running (or once job 1's teardown ended): a slot on job 1's root.
    assert!(
        slot_on(&scope, &backend, &root_a, false).await,
        "no slot on {root_a}"
    );
    // One daemon per root, each root's lock held.
    let mounts = warm_mounts(&scope.runner_id);
    assert_eq!(mounts.len(), 2, "two roots in use: {mounts:?}");
    for (v, holders) in &mounts {
        assert_eq!(holders.len(), 1, "{v} is mounted by {holders:?}");
        assert!(root_locked(&scope, v), "{v} runs a daemon without its lock");
    }

    // Job 3 arrives while job 2's teardown runs: that slot, on a warm root with the image job
    // 1 built, none of job 2's.
    let t2 = tokio::spawn(teardown(j2));
    let (j3, said) = prepare(&backend, &scope.spec(703)).await;
    assert!(
        said.contains("pre-started") && said.contains("(warm;"),
        "{said}"
    );
    assert_eq!(root_of(&said), root_a);
    eprintln!("job 3 on {root_a}");
    let seen = expect_ok(j3.as_ref(), IMAGES).await;
    assert!(
        seen.contains("built-by-701 ") && !seen.contains("built-by-702"),
        "{seen}"
    );
    expect_ok(j3.as_ref(), &build_image("built-by-703")).await;
    t2.await.expect("teardown of job 2");
    teardown(j3).await;

    // Quiet: a slot on the root job 3 left replaces the older one (the pool holds one); job 4
    // takes it and sees job 3's image.
    assert!(
        slot_on(&scope, &backend, &root_a, true).await,
        "no lone slot on {root_a} after job 3: {:?}",
        backend.standby_ids()
    );
    eprintln!("slot on {root_a} after job 3");
    let (j4, said) = prepare(&backend, &scope.spec(704)).await;
    assert!(
        said.contains("pre-started") && said.contains("(warm;"),
        "{said}"
    );
    assert_eq!(root_of(&said), root_a);
    let seen = expect_ok(j4.as_ref(), IMAGES).await;
    assert!(seen.contains("built-by-703 "), "{seen}");
    teardown(j4).await;

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (violations, rounds) = watcher.await.expect("watcher");
    assert!(rounds > 10, "the watcher hardly ran ({rounds} rounds)");
    assert!(
        violations.is_empty(),
        "warm roots mounted by two running containers: {violations:?}"
    );

    let report = backend.shutdown().await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert!(backend.standby_ids().is_empty());
    let r = isolated_runner::isolation::data_root::remove_expired(
        &scope.docker,
        &scope.runner_id,
        &scope.state_dir(),
        None,
        false,
    )
    .await;
    assert!(r.failures.is_empty(), "{:?}", r.failures);
    assert_eq!(r.removed.len(), 2, "two roots: {:?}", r.removed);
    scope.assert_clean().await;
}

/// The network a pooled job ran on, emptied by its teardown, serves a later slot with its
/// firewall chain still installed (`pool.rs`, "Kept networks"): nothing of the job that used
/// it before is on it (no container, no service alias), the chain still drops the new job's
/// traffic to the host, and shutdown removes network and chain.
#[tokio::test]
async fn an_emptied_job_network_serves_a_later_slot_without_its_last_job() {
    use support::security::{chain_of, chain_rules, dropped_packets, sh};
    let scope = Scope::new().await;
    let backend = pooled(&scope);
    backend.warm_up(&scope.runner_id).await;

    // Job A takes the first slot, with a service under an alias.
    let mut spec_a = spec_for(&scope, 611, Duration::from_secs(3600));
    spec_a.services = vec![support::docker::httpd_service(
        "leftover",
        "echo from-a > /www/index.html",
    )];
    let (a, said) = prepare(&backend, &spec_a).await;
    assert!(said.contains("pre-started"), "{said}");
    let net = a.resources().network.expect("a job network");
    let a_slot = slot_of(a.as_ref());
    let text = expect_ok(
        a.as_ref(),
        "for i in $(seq 1 100); do curl -fsS http://leftover/ && break; sleep 0.1; done",
    )
    .await;
    assert!(text.contains("from-a"), "{text}");
    // A's first step ran: the replacement is built on a network of its own (none kept yet).
    let replacement = loop {
        if let Some(&id) = backend.standby_ids().first() {
            break id;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    sidecar_of(&scope, replacement).await;
    teardown(a).await;

    // Kept: no endpoint, its chain in place, named among the backend's kept ids.
    let inspect = |what: &str| {
        let (ok, out, err) = sh("docker", &["network", "inspect", "-f", what, &net]);
        assert!(ok, "the emptied network was removed, not kept: {err}");
        out.trim().to_string()
    };
    assert_eq!(inspect("{{len .Containers}}"), "0");
    let chain = chain_of(&scope, a_slot);
    assert!(
        chain_rules("iptables", &chain).is_some(),
        "the kept network lost its chain {chain}"
    );
    assert_eq!(backend.kept_ids(), vec![a_slot]);
    // The nightly `runner cleanup` of this host (firewall access, this runner id as its own)
    // takes neither for a leftover: the network's owner, this process, is alive.
    let policy =
        isolated_runner::netpolicy::NetPolicy::new(isolated_runner::netpolicy::Options::new(
            &scope.runner_id,
            "10.213.0.0/16".parse().expect("pool"),
        ));
    let doomed = cleanup_would_remove(&scope, Some(policy), None).await;
    assert!(
        !doomed
            .iter()
            .any(|n| n.contains(&net) || n.contains(&chain)),
        "cleanup would remove a kept network or its chain: {doomed:?}"
    );

    // B takes the replacement; its first step starts the next slot, on A's network.
    let (b, said) = prepare(&backend, &spec_for(&scope, 612, Duration::from_secs(3600))).await;
    assert!(said.contains("pre-started"), "{said}");
    assert_ne!(b.resources().network.as_deref(), Some(net.as_str()));
    expect_ok(b.as_ref(), "true").await;
    let (c, said) = prepare(&backend, &spec_for(&scope, 613, Duration::from_secs(3600))).await;
    assert!(said.contains("pre-started"), "{said}");
    assert_eq!(
        c.resources().network.as_deref(),
        Some(net.as_str()),
        "the kept network serves the next slot"
    );
    let c_slot = slot_of(c.as_ref());
    assert!(
        !backend.kept_ids().contains(&a_slot),
        "a network a job uses is not kept"
    );

    // Nothing of A: its alias resolves to nothing; only C's objects are attached. The chain
    // still guards the bridge: C's packets to the host (the gateway) are dropped and counted.
    let gateway = inspect("{{range .IPAM.Config}}{{.Gateway}}{{end}}");
    let dropped = dropped_packets(&chain);
    let text = expect_ok(
        c.as_ref(),
        &format!(
            "docker info >/dev/null && echo daemon-ok\n\
             if getent hosts leftover; then echo leftover-found; else echo no-leftover; fi\n\
             if curl -fsS -m 2 http://{gateway}:9/; then echo host-reached; else echo host-refused; fi"
        ),
    )
    .await;
    assert!(text.contains("daemon-ok"), "{text}");
    assert!(text.contains("no-leftover"), "{text}");
    assert!(text.contains("host-refused"), "{text}");
    assert!(
        dropped_packets(&chain) > dropped,
        "the kept chain did not see C's packets to the host"
    );
    let attached = inspect("{{range .Containers}}{{.Name}} {{end}}");
    assert!(
        attached
            .split_whitespace()
            .all(|n| n.contains(&format!("-{c_slot}-"))),
        "objects of another job on C's network: {attached}"
    );

    for env in [b, c] {
        teardown(env).await;
    }
    let report = backend.shutdown().await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert!(backend.standby_ids().is_empty() && backend.kept_ids().is_empty());
    assert!(
        chain_rules("iptables", &chain).is_none(),
        "shutdown left the kept network's chain {chain}"
    );
    scope.assert_clean().await;
}
