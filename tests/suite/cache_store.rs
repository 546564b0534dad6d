//! The shared cache store through real jobs against a real S3 server: moto's, started per test
//! on a free loopback port. Two runner configs with their own builds and cache dirs act as two
//! hosts: `job::Pipeline` with the cache hook on the local test backend for the store's cases,
//! and the real daemon on the dind backend against the fake GitLab for the whole path
//! (`real_daemons_on_two_hosts_share_a_cache`, needs Docker and the test images).
//!
//! Needs `python3 -m moto.server` (`pip install 'moto[server]'`, done by `.ci/run`).

use crate::support;

use isolated_runner::config::{CacheConfig, CacheStoreConfig, CacheStoreType, RunnerConfig};
use isolated_runner::gitlab::types::{Cache, JobResponse, JobVariable, Step};
use isolated_runner::isolation::Isolation;
use isolated_runner::job::{JobControl, JobExecutor, JobOutcome, LocalCache, Pipeline};
use isolated_runner::secret::Secret;
use isolated_runner::trace::BufferSink;
use std::path::Path;
use std::sync::{Arc, Mutex};
use support::local_backend::{Faults, LocalIsolation, RecordingStore};
use support::moto::{BUCKET, Moto, http};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const ACCESS_KEY: &str = "AKIACACHETESTACCESS7";
const SECRET_KEY: &str = "cache-test-secret-key-do-not-print-42";
const TOKEN_A: &str = "glrt-hostAtoken000001";
const TOKEN_B: &str = "glrt-hostBtoken000002";

/// A TCP proxy to `target` that cuts every connection once the client has sent more than
/// `cut_after` bytes on it: a store that fails in the middle of an upload.
async fn cutting_proxy(target: u16, cut_after: usize) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = async {
                    let mut sent = 0usize;
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        sent += n;
                        if sent > cut_after || sw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                };
                let down = tokio::io::copy(&mut sr, &mut cw);
                // Whichever ends first, both sockets are dropped: the connection is cut.
                tokio::select! {
                    _ = up => {}
                    _ = down => {}
                }
            });
        }
    });
    port
}

fn s3_store(port: u16, shared: bool) -> CacheStoreConfig {
    let mut c = CacheStoreConfig::new(CacheStoreType::S3);
    c.shared = shared;
    c.s3.server_address = format!("127.0.0.1:{port}");
    c.s3.insecure = true;
    c.s3.bucket_name = BUCKET.into();
    c.s3.access_key = Some(Secret::new(ACCESS_KEY));
    c.s3.secret_key = Some(Secret::new(SECRET_KEY));
    c
}

/// One runner host: its own cache dir and its own builds (the backend's temp root).
struct Host {
    runner: RunnerConfig,
    backend: Arc<LocalIsolation>,
    _cache: tempfile::TempDir,
}

fn host(token: &str, store: CacheStoreConfig) -> Host {
    let cache = tempfile::tempdir().expect("tempdir");
    Host {
        runner: RunnerConfig {
            token: Secret::new(token),
            cache_dir: cache.path().to_path_buf(),
            cache: CacheConfig {
                store: Some(store),
                ..Default::default()
            },
            ..Default::default()
        },
        backend: LocalIsolation::new(Faults::default()),
        _cache: cache,
    }
}

impl Host {
    /// This host's local archive of `key` for project 7, as the local cache names it.
    fn local_archive(&self, key: &str, protected: bool) -> std::path::PathBuf {
        let scoped = self
            .runner
            .cache_dir
            .join(isolated_runner::job::trust::instance_key(&self.runner.url));
        isolated_runner::cache::archive_path(&scoped, 7, protected, key)
    }

    async fn run(&self, job: JobResponse) -> String {
        self.run_with(LocalCache::hook(), job).await
    }

    /// Runs `job` with `hook`, which may be shared with other hosts' jobs (as one daemon's
    /// hook serves all its entries).
    async fn run_with(
        &self,
        hook: Arc<dyn isolated_runner::job::CacheHook>,
        job: JobResponse,
    ) -> String {
        let sink = Arc::new(BufferSink::new());
        let backend: Arc<dyn Isolation> = self.backend.clone();
        let mut p = Pipeline::new(backend, RecordingStore::new());
        p.cache = Some(hook);
        let outcome = p
            .execute(
                job,
                Arc::new(self.runner.clone()),
                sink.clone(),
                JobControl::default(),
            )
            .await;
        let trace = sink.text();
        assert_eq!(outcome, JobOutcome::Success, "trace:\n{trace}");
        trace
    }
}

fn job(id: u64, script: &[&str], cache: Cache, protected: bool) -> JobResponse {
    let mut j = JobResponse {
        id,
        token: Secret::new(format!("glcbt-storejob{id}token")),
        steps: vec![Step {
            name: "script".into(),
            script: script.iter().map(|s| s.to_string()).collect(),
            timeout: 3600,
            when: "on_success".into(),
            allow_failure: false,
        }],
        variables: vec![JobVariable {
            key: "GIT_STRATEGY".into(),
            value: "none".into(),
            public: true,
            ..Default::default()
        }],
        cache: vec![cache],
        ..Default::default()
    };
    j.job_info.name = "build".into();
    j.job_info.project_id = 7;
    j.git_info.r#ref = "main".into();
    j.git_info.protected = Some(protected);
    j
}

fn entry(key: &str) -> Cache {
    Cache {
        key: key.into(),
        paths: vec!["vendor/".into()],
        ..Default::default()
    }
}

fn pull(key: &str) -> Cache {
    Cache {
        policy: "pull".into(),
        ..entry(key)
    }
}

/// Everything the runner logs while the test runs (every level, every crate).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("logs").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("logs")).into_owned()
    }
}

fn assert_no_credentials(what: &str, text: &str) {
    for secret in [ACCESS_KEY, SECRET_KEY] {
        assert!(!text.contains(secret), "{what} holds a credential:\n{text}");
    }
}

#[tokio::test]
async fn host_a_saves_host_b_restores_through_the_store() {
    let (logs, _guard) = Logs::capture();
    let moto = Moto::start().await;
    let a = host(TOKEN_A, s3_store(moto.port, false));
    // Host B is registered with the same token (one runner, two hosts), as a fleet is.
    let b = host(TOKEN_A, s3_store(moto.port, false));

    let t1 = a
        .run(job(
            1,
            &[
                "mkdir -p vendor",
                "echo from-a > vendor/x",
                "env > vendor/env",
            ],
            entry("deps"),
            false,
        ))
        .await;
    assert!(t1.contains("Uploaded cache deps"), "{t1}");
    // gitlab-runner's layout, protection suffix from the job.
    assert_eq!(
        moto.objects().await,
        vec!["runner/hostAtoke/project/7/deps-non_protected".to_string()]
    );

    // Host B has never seen the cache: it comes from the store.
    assert!(!b.local_archive("deps", false).exists());
    let t2 = b
        .run(job(
            2,
            &["test \"$(cat vendor/x)\" = from-a"],
            pull("deps"),
            false,
        ))
        .await;
    assert!(
        t2.contains("Downloaded cache deps from the shared s3 store"),
        "{t2}"
    );
    assert!(t2.contains("Successfully extracted cache"), "{t2}");

    // A fallback key on host B: the main key misses everywhere, the fallback hits the store.
    let fallback = Cache {
        fallback_keys: vec!["deps".into()],
        ..pull("deps-v2")
    };
    let b2 = host(TOKEN_A, s3_store(moto.port, false));
    let t3 = b2
        .run(job(
            3,
            &["test \"$(cat vendor/x)\" = from-a"],
            fallback,
            false,
        ))
        .await;
    assert!(t3.contains("cache deps-v2 not found"), "{t3}");
    assert!(
        t3.contains("Downloaded cache deps from the shared s3 store"),
        "{t3}"
    );

    // The job's environment (saved in the archive) and every trace and log are free of the
    // store's credentials: the runner process does the transfers.
    for (what, text) in [("trace 1", &t1), ("trace 2", &t2), ("trace 3", &t3)] {
        assert_no_credentials(what, text);
    }
    // The archive holds `env` as the job saw it; read it uncompressed (tar keeps file bodies
    // as they are).
    let archive = std::fs::File::open(a.local_archive("deps", false)).expect("archive");
    let mut tar = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(archive), &mut tar)
        .expect("gunzip");
    let tar = String::from_utf8_lossy(&tar);
    assert!(
        tar.contains("GIT_STRATEGY=none"),
        "the job's env is in the archive"
    );
    assert_no_credentials("the job's environment", &tar);
    assert_no_credentials("runner log", &logs.text());
    // The capture sees the store client's own logging (and hyper's, at trace level).
    assert!(
        logs.text().contains("object_store"),
        "the log capture works"
    );
}

#[tokio::test]
async fn runners_are_apart_unless_shared_and_protection_is_kept() {
    let moto = Moto::start().await;
    // Not shared: another runner token never sees host A's objects.
    let a = host(TOKEN_A, s3_store(moto.port, false));
    let other = host(TOKEN_B, s3_store(moto.port, false));
    a.run(job(
        1,
        &["mkdir -p vendor", "echo a > vendor/x"],
        entry("k"),
        false,
    ))
    .await;
    let t = other
        .run(job(2, &["test ! -e vendor/x"], pull("k"), false))
        .await;
    assert!(t.contains("cache k not found"), "{t}");

    // Shared: `project/<id>/<key>` for every runner.
    let sa = host(TOKEN_A, s3_store(moto.port, true));
    let sb = host(TOKEN_B, s3_store(moto.port, true));
    sa.run(job(
        3,
        &["mkdir -p vendor", "echo shared > vendor/x"],
        entry("s"),
        false,
    ))
    .await;
    assert!(
        moto.objects()
            .await
            .contains(&"project/7/s-non_protected".to_string())
    );
    let t = sb
        .run(job(
            4,
            &["test \"$(cat vendor/x)\" = shared"],
            pull("s"),
            false,
        ))
        .await;
    assert!(t.contains("Downloaded cache s"), "{t}");

    // A protected job's cache, under GitLab's suffixed key.
    sa.run(job(
        5,
        &["mkdir -p vendor", "echo deploy > vendor/x"],
        entry("rel-protected"),
        true,
    ))
    .await;
    assert!(
        moto.objects()
            .await
            .contains(&"project/7/rel-protected".to_string())
    );
    // An unprotected job on another host naming that key gets its own object, never the
    // protected one; and what it saves cannot reach protected jobs.
    let t = sb
        .run(job(
            6,
            &[
                "test ! -e vendor/x",
                "mkdir -p vendor",
                "echo poison > vendor/x",
            ],
            entry("rel-protected"),
            false,
        ))
        .await;
    assert!(t.contains("cache rel-protected not found"), "{t}");
    let objects = moto.objects().await;
    assert!(
        objects.contains(&"project/7/rel-protected-non_protected".to_string()),
        "{objects:?}"
    );
    let fresh = host(TOKEN_B, s3_store(moto.port, true));
    let t = fresh
        .run(job(
            7,
            &["test \"$(cat vendor/x)\" = deploy"],
            pull("rel-protected"),
            true,
        ))
        .await;
    assert!(t.contains("Downloaded cache rel-protected"), "{t}");
}

#[tokio::test]
async fn a_store_failing_mid_upload_leaves_the_job_going_on_this_hosts_cache() {
    let (logs, _guard) = Logs::capture();
    let moto = Moto::start().await;
    // Requests without a body pass; an upload is cut after 64 KiB.
    let proxy = cutting_proxy(moto.port, 64 * 1024).await;
    let a = host(TOKEN_A, s3_store(proxy, false));
    let t1 = a
        .run(job(
            1,
            &[
                "mkdir -p vendor",
                "head -c 1048576 /dev/urandom > vendor/blob",
                "sha256sum vendor/blob > sum",
                "cp sum vendor/sum",
            ],
            entry("big"),
            false,
        ))
        .await;
    assert!(t1.contains("WARNING: Failed to upload cache big"), "{t1}");
    assert!(t1.contains("kept on this host only"), "{t1}");
    assert!(
        moto.objects().await.is_empty(),
        "no torn object in the store"
    );
    assert!(a.local_archive("big", false).is_file());

    // The next job on this host: the store has nothing, this host's copy serves.
    let t2 = a
        .run(job(2, &["sha256sum -c vendor/sum"], pull("big"), false))
        .await;
    assert!(
        t2.contains("not in the shared store; using this host's copy"),
        "{t2}"
    );
    assert!(t2.contains("Successfully extracted cache"), "{t2}");
    for text in [&t1, &t2] {
        assert_no_credentials("trace", text);
    }
    assert_no_credentials("runner log", &logs.text());
}

#[tokio::test]
async fn a_store_that_is_down_falls_back_to_this_hosts_cache() {
    let mut moto = Moto::start().await;
    let a = host(TOKEN_A, s3_store(moto.port, false));
    a.run(job(
        1,
        &["mkdir -p vendor", "echo v1 > vendor/x"],
        entry("k"),
        false,
    ))
    .await;
    moto.stop();

    // Restore: the store is down, this host's copy is used, the job passes.
    let t = a
        .run(job(
            2,
            &["test \"$(cat vendor/x)\" = v1", "echo v2 > vendor/x"],
            entry("k"),
            false,
        ))
        .await;
    assert!(t.contains("store is unavailable"), "{t}");
    assert!(t.contains("Using this host's copy of k"), "{t}");
    // Save: the upload fails, the local archive is updated anyway.
    assert!(t.contains("WARNING: Failed to upload cache k"), "{t}");
    assert_no_credentials("trace", &t);
    let t = a
        .run(job(3, &["test \"$(cat vendor/x)\" = v2"], pull("k"), false))
        .await;
    assert!(t.contains("Successfully extracted cache"), "{t}");
}

/// One hook serves every entry of a daemon and keeps one store client per entry: a job of
/// another entry (here with the same name and URL, another runner token and a wrong secret key)
/// never gets the first entry's client, its keys or its objects, and the first entry's next job
/// still reaches the store.
#[tokio::test]
async fn a_kept_client_never_serves_another_entrys_credentials() {
    let (logs, _guard) = Logs::capture();
    let (moto, keys) = Moto::start_with_auth().await;
    let hook = LocalCache::hook();
    let good = |port| {
        let mut s = s3_store(port, false);
        s.s3.access_key = Some(Secret::new(keys.access.as_str()));
        s.s3.secret_key = Some(Secret::new(keys.secret.as_str()));
        s
    };
    let a = host(TOKEN_A, good(moto.port));
    let mut bad = good(moto.port);
    bad.s3.secret_key = Some(Secret::new(SECRET_KEY));
    let b = host(TOKEN_B, bad);
    assert_eq!(
        (&a.runner.name, &a.runner.url),
        (&b.runner.name, &b.runner.url),
        "the entries differ only in token and keys"
    );

    let t1 = a
        .run_with(
            hook.clone(),
            job(
                1,
                &["mkdir -p vendor", "echo a > vendor/x"],
                entry("k"),
                false,
            ),
        )
        .await;
    assert!(t1.contains("Uploaded cache k"), "{t1}");

    // B: A's client (A's namespace and keys) would find A's object and upload fine.
    let t2 = b
        .run_with(
            hook.clone(),
            job(
                2,
                &["test ! -e vendor/x", "mkdir -p vendor", "echo b > vendor/x"],
                entry("k"),
                false,
            ),
        )
        .await;
    assert!(t2.contains("store is unavailable"), "{t2}");
    assert!(t2.contains("SignatureDoesNotMatch"), "{t2}");
    assert!(t2.contains("WARNING: Failed to upload cache k"), "{t2}");
    assert!(!t2.contains("Downloaded cache"), "{t2}");

    // A again, on a fresh cache dir: its client still works and finds its object.
    let a2 = host(TOKEN_A, good(moto.port));
    let t3 = a2
        .run_with(
            hook.clone(),
            job(3, &["test \"$(cat vendor/x)\" = a"], pull("k"), false),
        )
        .await;
    assert!(
        t3.contains("Downloaded cache k from the shared s3 store"),
        "{t3}"
    );
    for t in [&t1, &t2, &t3] {
        assert!(!t.contains(&keys.secret) && !t.contains(SECRET_KEY), "{t}");
    }
    let log = logs.text();
    assert!(!log.contains(&keys.secret) && !log.contains(SECRET_KEY));
}

#[tokio::test]
async fn a_zip_from_gitlab_runner_is_not_extracted() {
    let moto = Moto::start().await;
    let (status, body) = http(
        moto.port,
        "PUT",
        &format!("/{BUCKET}/runner/hostAtoke/project/7/z-non_protected"),
        b"PK\x03\x04 not ours",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let a = host(TOKEN_A, s3_store(moto.port, false));
    let t = a.run(job(1, &["test ! -e vendor"], pull("z"), false)).await;
    assert!(t.contains("is not an archive of this runner"), "{t}");
    assert!(t.contains("cache z not found"), "{t}");
    assert!(!Path::new(&a.local_archive("z", false)).exists());
}

/// Through the real daemon, the dind backend and the fake GitLab: host A's daemon runs a job
/// that saves a cache; then host B's daemon, with its own builds and cache dirs, runs a job that
/// restores it from the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_daemons_on_two_hosts_share_a_cache() {
    use support::e2e::{E2e, JOB_TIMEOUT};
    let moto = Moto::start().await;
    let w = E2e::new().await;
    let mut config_a = w.config(1);
    config_a.runners[0].cache.store = Some(s3_store(moto.port, false));
    config_a.runners[0].cache_dir = w.scope.tmp.path().join("cache-a");
    let mut config_b = config_a.clone();
    config_b.runners[0].cache_dir = w.scope.tmp.path().join("cache-b");
    let builds_b = w.scope.tmp.path().join("builds-b");
    config_b.runners[0].builds_dir = builds_b.clone();
    let cache = serde_json::json!([{
        "key": "deps", "paths": ["vendor/"], "policy": "pull-push", "when": "on_success",
        "untracked": false
    }]);

    let mut j1 = w.job(
        1301,
        &[
            "mkdir -p vendor",
            "echo from-host-a > vendor/x",
            "env > vendor/env",
        ],
        &[],
    );
    j1["cache"] = cache.clone();
    w.fake.enqueue(j1);
    let a = w.start_daemon(config_a);
    let f1 = w.wait_final(1301, JOB_TIMEOUT).await;
    a.drain(JOB_TIMEOUT).await;
    let t1 = w.trace(1301);
    assert_eq!(f1.state, "success", "{t1}");
    assert!(t1.contains("Uploaded cache deps"), "{t1}");
    let objects = moto.objects().await;
    assert!(
        objects.len() == 1 && objects[0].ends_with("/deps-non_protected"),
        "{objects:?}"
    );

    let mut j2 = w.job(
        1302,
        &["test \"$(cat vendor/x)\" = from-host-a", "echo restored-ok"],
        &[],
    );
    j2["cache"] = cache;
    w.fake.enqueue(j2);
    let b = w.start_daemon(config_b);
    let f2 = w.wait_final(1302, JOB_TIMEOUT).await;
    b.drain(JOB_TIMEOUT).await;
    let t2 = w.trace(1302);
    assert_eq!(f2.state, "success", "{t2}");
    assert!(
        t2.contains("Downloaded cache deps from the shared s3 store"),
        "{t2}"
    );
    assert!(t2.contains("restored-ok"), "{t2}");
    for t in [&t1, &t2] {
        assert_no_credentials("trace", t);
    }
    w.scope.assert_clean().await;
    let left: Vec<_> = std::fs::read_dir(&builds_b)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "host B's job dirs left: {left:?}");
}
