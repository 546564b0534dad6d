//! The root store (issue 12): preloaded images reach a job's daemon through a copy-on-write
//! snapshot of a golden data root instead of `docker save | docker load`, for the rootless and
//! hardened profiles. Each test has its own store (a loop-mounted btrfs image in its state
//! dir, unmounted at the end) and asserts: the image is there with the host's id and was not
//! loaded; two live jobs' data roots belong to different host uids; what job A writes into
//! its daemon (a tag, files replaced inside its image layers) never reaches job B, a later job
//! or the golden; teardown and a crash followed by the reaper leave no snapshot or mount.

use crate::support;

use isolated_runner::config::{RootStore as Mode, RunnerConfig, SidecarProfile};
use isolated_runner::isolation::{self, Isolation, JobEnvironment};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use support::docker::expect_project_script_ok as expect_ok;
use support::docker::{BUSYBOX_IMAGE, Collect, JOB_IMAGE, Scope};
use support::store::StoreGuard;
use tokio_util::sync::CancellationToken;

fn backend(
    scope: &Scope,
    profile: SidecarProfile,
    tweak: impl FnOnce(&mut RunnerConfig),
) -> (Arc<dyn Isolation>, StoreGuard) {
    let mut cfg = scope.runner_config();
    cfg.docker.isolation.sidecar_profile = profile;
    cfg.docker.isolation.preload_images = vec![BUSYBOX_IMAGE.to_string()];
    cfg.docker.isolation.root_store = Mode::Auto;
    cfg.docker.isolation.root_store_size = 2 * 1024 * 1024 * 1024;
    tweak(&mut cfg);
    let guard = StoreGuard {
        dir: isolation::golden::store_dir(&cfg, &scope.state_dir()),
        runner_id: scope.runner_id.clone(),
    };
    (scope.dind(cfg), guard)
}

async fn prepare(
    backend: &Arc<dyn Isolation>,
    scope: &Scope,
    job: u64,
) -> (Box<dyn JobEnvironment>, String) {
    let out = Collect::new();
    let env = backend
        .prepare(&scope.spec(job), out.clone(), CancellationToken::new())
        .await
        .unwrap_or_else(|e| panic!("prepare failed: {e}\n{}", out.text()));
    let text = out.text();
    eprintln!("job {job} prepared: {}", text.trim());
    (env, text)
}

/// The "daemon ready" line shows a `root` step (the snapshot) and no `preload` step (no copy).
fn assert_from_golden(trace: &str) {
    let line = trace
        .lines()
        .find(|l| l.starts_with("Job docker daemon ready"))
        .unwrap_or_else(|| panic!("no ready line in:\n{trace}"));
    assert!(line.contains("root "), "no snapshot step: {line}");
    assert!(!line.contains("preload "), "images were copied: {line}");
    assert!(!trace.contains("WARNING"), "{trace}");
}

async fn host_image_id(scope: &Scope, image: &str) -> String {
    scope
        .docker
        .image_facts(image)
        .await
        .expect("inspect")
        .expect("image on the host")
        .id
}

fn owner(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
        .uid()
}

fn entries(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Files named `name` in any layer of any golden of the store (read as root on the host).
fn in_goldens(store: &Path, name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for key in entries(&store.join("golden")) {
        let layers = store.join("golden").join(&key).join("overlay2");
        for l in entries(&layers) {
            let p = layers.join(&l).join("diff").join(name);
            if p.exists() {
                found.push(p);
            }
        }
    }
    found
}

fn assert_store_empty(store: &Path) {
    for sub in ["jobs", "mnt", "stamps", "build"] {
        let left = entries(&store.join(sub));
        assert!(left.is_empty(), "{sub}/ left in the store: {left:?}");
    }
}

const POISON: &str = r#"docker tag isolated-runner/busybox:test a-only:1
docker run --rm -v /var/lib/docker:/d isolated-runner/busybox:test sh -c \
  'n=0; for d in /d/overlay2/*/diff; do echo pwned > "$d/pwned-by-a" && n=$((n+1)); done; echo "poisoned $n layers"'
docker run --rm isolated-runner/busybox:test cat /pwned-by-a"#;

#[tokio::test]
async fn rootless_jobs_get_private_snapshots_of_the_golden() {
    let scope = Scope::new().await;
    let (backend, guard) = backend(&scope, SidecarProfile::Rootless, |_| {});
    let store = guard.dir.clone();
    let busybox_id = host_image_id(&scope, BUSYBOX_IMAGE).await;

    let (a, trace_a) = prepare(&backend, &scope, 1201).await;
    assert!(
        trace_a.contains("Preparing the golden data root"),
        "{trace_a}"
    );
    assert_from_golden(&trace_a);
    let (b, trace_b) = prepare(&backend, &scope, 1202).await;
    assert_from_golden(&trace_b);
    assert!(
        !trace_b.contains("Preparing the golden"),
        "golden made twice: {trace_b}"
    );

    // The image is the host's, in both daemons, without a load.
    for env in [&a, &b] {
        let id = expect_ok(
            env.as_ref(),
            "docker image inspect -f '{{.Id}}' isolated-runner/busybox:test",
        )
        .await;
        assert_eq!(id.trim(), busybox_id);
    }

    // Seen from the host through each sidecar: its data root belongs to its own uid block;
    // on disk both snapshots keep the golden block's owner.
    let (pa, pb) = (scope.sidecar_pid(1201).await, scope.sidecar_pid(1202).await);
    let ua = owner(Path::new(&format!("/proc/{pa}/root/var/lib/docker/image")));
    let ub = owner(Path::new(&format!("/proc/{pb}/root/var/lib/docker/image")));
    assert_ne!(
        ua, ub,
        "two live jobs share a host uid for their data roots"
    );
    let base = isolated_runner::config::DEFAULT_ROOTLESS_UID_BASE;
    let golden = isolation::golden::golden_uid(base).unwrap();
    assert!(
        ua >= base && ua < golden && ub >= base && ub < golden,
        "{ua} {ub}"
    );
    let snap_a = store
        .join("jobs")
        .join(format!("ir-{}-1201-root", scope.runner_id));
    let on_disk = owner(&snap_a.join("image"));
    assert_eq!(on_disk, golden);

    // Job A tags an image and replaces files inside its image layers: it sees its own change.
    let out = expect_ok(a.as_ref(), POISON).await;
    assert!(
        out.contains("pwned"),
        "the attack did not even work in A: {out}"
    );
    // Job B sees neither; nor does the golden.
    let out = expect_ok(
        b.as_ref(),
        "docker images --format '{{.Repository}}:{{.Tag}}'; \
         docker run --rm isolated-runner/busybox:test sh -c 'cat /pwned-by-a 2>/dev/null || echo clean'",
    )
    .await;
    assert!(!out.contains("a-only"), "{out}");
    assert!(out.contains("clean") && !out.contains("pwned"), "{out}");
    assert!(in_goldens(&store, "pwned-by-a").is_empty());

    for env in [a, b] {
        let report = env.teardown().await;
        assert!(report.failures.is_empty(), "{:?}", report.failures);
        assert!(
            report.removed.iter().any(|r| r.starts_with("job root ")),
            "{:?}",
            report.removed
        );
    }
    assert_store_empty(&store);

    // A later job starts from the untouched golden.
    let (c, trace_c) = prepare(&backend, &scope, 1203).await;
    assert_from_golden(&trace_c);
    let out = expect_ok(
        c.as_ref(),
        "docker images --format '{{.Repository}}:{{.Tag}}'; \
         docker run --rm isolated-runner/busybox:test sh -c 'cat /pwned-by-a 2>/dev/null || echo clean'",
    )
    .await;
    assert!(!out.contains("a-only") && out.contains("clean"), "{out}");
    let report = c.teardown().await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_store_empty(&store);
    let report = backend.shutdown().await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    scope.assert_clean().await;
    drop(guard);
}

#[tokio::test]
async fn hardened_job_starts_from_the_golden() {
    let scope = Scope::new().await;
    let (backend, guard) = backend(&scope, SidecarProfile::Hardened, |_| {});
    let busybox_id = host_image_id(&scope, BUSYBOX_IMAGE).await;
    let (env, trace) = prepare(&backend, &scope, 1301).await;
    assert_from_golden(&trace);
    let out = expect_ok(
        env.as_ref(),
        "docker image inspect -f '{{.Id}}' isolated-runner/busybox:test; \
         docker info -f '{{.Driver}}'; docker run --rm isolated-runner/busybox:test echo inner-ok",
    )
    .await;
    assert!(out.contains(&busybox_id), "{out}");
    assert!(
        out.contains("overlay2") && out.contains("inner-ok"),
        "{out}"
    );
    let report = env.teardown().await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    assert_store_empty(&guard.dir);
    let report = backend.shutdown().await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    scope.assert_clean().await;
}

/// The attack on the store from a hardened job: the sidecar holds CAP_SYS_ADMIN in the host's
/// user namespace and its data root is a btrfs snapshot, so an inner container given
/// SYS_ADMIN with the sidecar's `/var/lib/docker` bound could list every subvolume of the store
/// (`btrfs subvolume list` is a tree search: other jobs' snapshots, the goldens) and make
/// subvolumes. The sidecar's seccomp profile refuses every btrfs ioctl. The controls show the
/// refusal is the filter's alone: the tool is there, the mount is btrfs, and the inner
/// container really holds SYS_ADMIN (it mounts a tmpfs).
#[tokio::test]
async fn hardened_job_cannot_use_btrfs_ioctls_on_the_store() {
    let scope = Scope::new().await;
    let (backend, guard) = backend(&scope, SidecarProfile::Hardened, |cfg| {
        // The job image brings btrfs-progs into the inner daemon (preloaded, so no pull).
        cfg.docker.isolation.preload_images =
            vec![BUSYBOX_IMAGE.to_string(), JOB_IMAGE.to_string()];
    });
    let (a, trace) = prepare(&backend, &scope, 1501).await;
    assert_from_golden(&trace);
    // A second live job: its snapshot is what a listing would show job A.
    let (b, trace) = prepare(&backend, &scope, 1502).await;
    assert_from_golden(&trace);
    // Twice: under the inner daemon's own default seccomp profile, and with it turned off
    // (filters only stack: the sidecar's still applies).
    let out = expect_ok(
        a.as_ref(),
        &format!(
            "for opt in '' --security-opt=seccomp=unconfined; do \
             echo \"== ${{opt:-inner default seccomp}}\"; \
             docker run --rm --cap-add SYS_ADMIN $opt -v /var/lib/docker:/d \
             {JOB_IMAGE} sh -c '\
             btrfs --version; stat -f -c \"fs=%T\" /d; \
             mount -t tmpfs none /mnt && echo \"sys_admin=held\"; \
             btrfs subvolume list -a /d 2>&1; echo \"list rc=$?\"; \
             btrfs subvolume create /d/nested 2>&1; echo \"create rc=$?\"'; \
             done"
        ),
    )
    .await;
    eprintln!("{out}");
    assert!(out.contains("btrfs-progs v"), "no btrfs tool: {out}");
    assert_eq!(out.matches("fs=btrfs").count(), 2, "not btrfs: {out}");
    assert_eq!(
        out.matches("sys_admin=held").count(),
        2,
        "no SYS_ADMIN: {out}"
    );
    assert_eq!(
        out.matches("list rc=1").count(),
        2,
        "the tree search was not refused: {out}"
    );
    assert_eq!(
        out.matches("create rc=1").count(),
        2,
        "a subvolume was made: {out}"
    );
    assert!(
        out.contains("Operation not permitted"),
        "refused for another reason: {out}"
    );
    let other = format!("ir-{}-1502-root", scope.runner_id);
    assert!(
        !out.contains("golden/") && !out.contains(&other),
        "the store's subvolumes were listed: {out}"
    );
    for env in [a, b] {
        let report = env.teardown().await;
        assert!(report.failures.is_empty(), "{:?}", report.failures);
    }
    assert_store_empty(&guard.dir);
    let report = backend.shutdown().await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    scope.assert_clean().await;
}

#[tokio::test]
async fn a_crashed_jobs_root_is_reaped() {
    let scope = Scope::new().await;
    let (backend, guard) = backend(&scope, SidecarProfile::Rootless, |_| {});
    let (env, trace) = prepare(&backend, &scope, 1401).await;
    assert_from_golden(&trace);
    // The runner dies: no teardown runs.
    std::mem::forget(env);
    let docker = scope.docker.clone();
    // `runner cleanup` while the sidecar still runs (or within the grace of a young root)
    // leaves the root alone.
    let s = isolation::golden::sweep_roots(&docker, &guard.dir, None, false).await;
    assert!(s.removed.is_empty() && s.failures.is_empty(), "{s:?}");
    // The start-up of the same runner: the label reaper, then the root sweep.
    let req = isolated_runner::cleanup::reaper::ReapRequest {
        runner_id: scope.runner_id.clone(),
        state_dir: scope.state_dir(),
        builds_dir: scope.builds_dir(),
        dry_run: false,
    };
    let r = isolated_runner::cleanup::reaper::reap(&docker, &req).await;
    assert!(r.failures.is_empty(), "{:?}", r.failures);
    let s =
        isolation::golden::sweep_roots(&docker, &guard.dir, Some(&scope.runner_id), false).await;
    assert_eq!(s.removed.len(), 1, "{s:?}");
    assert!(s.failures.is_empty(), "{s:?}");
    assert_store_empty(&guard.dir);
    let report = backend.shutdown().await;
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    scope.assert_clean().await;
}

/// Goldens of image sets no runner entry uses any more are removed (start-up and `runner
/// cleanup` call this sweep): the config's current golden stays, a golden being rebuilt and a
/// young golden stay, and a job's snapshot of a removed golden stays readable (a snapshot is an
/// independent subvolume, so removing its golden never breaks a running job).
#[tokio::test]
async fn goldens_no_runner_entry_uses_are_removed() {
    use isolation::golden::{GOLDEN_GRACE, golden_key, sweep_unused_goldens};
    use isolation::root_store::RootStore;
    use std::time::Duration;
    let scope = Scope::new().await;
    let mut cfg = scope.runner_config();
    cfg.docker.isolation.sidecar_profile = SidecarProfile::Hardened;
    cfg.docker.isolation.preload_images = vec![BUSYBOX_IMAGE.to_string()];
    cfg.docker.isolation.root_store = Mode::Auto;
    let dir = isolation::golden::store_dir(&cfg, &scope.state_dir());
    let guard = StoreGuard {
        dir: dir.clone(),
        runner_id: scope.runner_id.clone(),
    };
    let store =
        RootStore::open(&dir, 1024 * 1024 * 1024, &scope.state_dir()).expect("open the store");
    // The config before (busybox and the job image preloaded) and now (busybox only).
    let mut before = cfg.clone();
    before
        .docker
        .isolation
        .preload_images
        .push(JOB_IMAGE.to_string());
    let old = golden_key(&scope.docker, &before.docker.isolation)
        .await
        .expect("old key");
    let live = golden_key(&scope.docker, &cfg.docker.isolation)
        .await
        .expect("live key");
    assert_ne!(old, live);
    // A third key being rebuilt (golden and build both there), a fourth only building.
    let (rebuilding, building) = ("0123456789abcdef01234567", "fedcba9876543210fedcba98");
    for key in [old.as_str(), live.as_str(), rebuilding] {
        let p = store.begin_golden(key).expect("begin");
        std::fs::write(p.join("marker"), key).expect("write marker");
        store.commit_golden(key).expect("commit");
    }
    store.begin_golden(rebuilding).expect("begin rebuild");
    store.begin_golden(building).expect("begin build");
    // A running job's snapshot of the old golden, with what the job wrote.
    let name = format!("ir-{}-1601-root", scope.runner_id);
    let snap = store.snapshot_for(&old, &name, None).expect("snapshot");
    std::fs::write(snap.join("job-data"), "written by the job").expect("job writes");

    let mut config = isolated_runner::config::Config {
        state_dir: scope.state_dir(),
        ..Default::default()
    };
    config.runners = vec![cfg.clone()];

    // Within the grace (another process may have just made it) nothing goes.
    let s = sweep_unused_goldens(&config, GOLDEN_GRACE, false).await;
    assert_eq!(s.len(), 1, "{s:?}");
    assert!(s[0].removed.is_empty() && s[0].failures.is_empty(), "{s:?}");
    assert!(
        s[0].spared
            .iter()
            .any(|x| x.starts_with(&old) && x.contains("ago")),
        "{s:?}"
    );
    // A dry run says what would go and removes nothing.
    let s = sweep_unused_goldens(&config, Duration::ZERO, true).await;
    assert_eq!(s[0].removed, vec![old.clone()], "{s:?}");
    assert!(store.golden(&old).is_some());

    let s = sweep_unused_goldens(&config, Duration::ZERO, false).await;
    eprintln!("{s:?}");
    let s = &s[0];
    assert!(s.found && s.failures.is_empty(), "{s:?}");
    assert_eq!(s.removed, vec![old.clone()]);
    assert_eq!(s.kept, vec![live.clone()]);
    assert!(
        s.spared
            .iter()
            .any(|x| x.starts_with(rebuilding) && x.contains("being built")),
        "{s:?}"
    );
    assert!(s.freed.is_some(), "{s:?}");
    assert!(
        store.golden(&old).is_none(),
        "the unused golden is still there"
    );
    assert!(store.golden(&live).is_some(), "the live golden was removed");
    assert!(store.golden(rebuilding).is_some());
    assert!(store.builds().contains(&building.to_string()));
    // The job's snapshot of the removed golden: the golden's files and the job's own.
    assert_eq!(std::fs::read_to_string(snap.join("marker")).unwrap(), old);
    assert_eq!(
        std::fs::read_to_string(snap.join("job-data")).unwrap(),
        "written by the job"
    );
    std::fs::write(snap.join("more"), "still writable").expect("write after the removal");

    // The config changes again: nothing preloaded, so no golden is wanted at all.
    config.runners[0].docker.isolation.preload_images.clear();
    let p = store.begin_golden(&live).expect("begin");
    // Some data of its own, so its removal frees a measurable amount.
    std::fs::write(p.join("blob"), vec![7u8; 8 << 20]).expect("write blob");
    store.commit_golden(&live).expect("commit");
    let s = sweep_unused_goldens(&config, Duration::ZERO, false).await;
    eprintln!("{s:?}");
    assert_eq!(s[0].removed, vec![live.clone()], "{s:?}");
    assert!(
        s[0].freed.is_some_and(|b| b >= 8 << 20),
        "an unshared golden's space comes back: {s:?}"
    );

    assert!(store.remove_root(&name).expect("remove the job root"));
    for key in [rebuilding, building] {
        store.discard_build(key).expect("discard build");
    }
    store.remove_golden(rebuilding).expect("remove golden");
    assert_store_empty(&dir);
    assert!(store.golden_keys().is_empty());
    store.close().expect("close the store");
    assert!(!support::store::is_mounted(&dir), "this process mounted it");
    scope.assert_clean().await;
    drop(guard);
}

/// Two runner configs (two services, each with its own state_dir) pointed at one store by
/// `root_store_path`: each one's golden sweep would remove the other's goldens, whose keys are
/// no entry of its config. The store belongs to the state dir that opened it first: the other
/// config's sweep leaves its goldens alone with an error naming the owner, and cannot open it
/// (its jobs copy the images, with that reason); the owner's sweep works as before.
#[tokio::test]
async fn two_configs_on_one_store_do_not_remove_each_others_goldens() {
    use isolation::golden::{golden_key, sweep_unused_goldens};
    use isolation::root_store::{RootStore, StoreError};
    use std::time::Duration;
    let scope = Scope::new().await;
    let shared = scope.tmp.path().join("shared-roots");
    let (state_a, state_b) = (scope.state_dir(), scope.tmp.path().join("state-b"));
    std::fs::create_dir_all(&state_a).expect("state dir a");
    std::fs::create_dir_all(&state_b).expect("state dir b");
    let mut cfg_a = scope.runner_config();
    cfg_a.docker.isolation.sidecar_profile = SidecarProfile::Hardened;
    cfg_a.docker.isolation.preload_images = vec![BUSYBOX_IMAGE.to_string()];
    cfg_a.docker.isolation.root_store = Mode::Auto;
    cfg_a.docker.isolation.root_store_path = Some(shared.clone());
    let mut cfg_b = cfg_a.clone();
    cfg_b.name = "other-service".to_string();
    cfg_b
        .docker
        .isolation
        .preload_images
        .push(JOB_IMAGE.to_string());
    let config = |state: &Path, r: &RunnerConfig| {
        let mut c = isolated_runner::config::Config {
            state_dir: state.to_path_buf(),
            ..Default::default()
        };
        c.runners = vec![r.clone()];
        c
    };
    let (config_a, config_b) = (config(&state_a, &cfg_a), config(&state_b, &cfg_b));
    assert_eq!(
        isolation::golden::store_dir(&cfg_a, &state_a),
        isolation::golden::store_dir(&cfg_b, &state_b)
    );
    let guard = StoreGuard {
        dir: shared.clone(),
        runner_id: scope.runner_id.clone(),
    };
    let key_a = golden_key(&scope.docker, &cfg_a.docker.isolation)
        .await
        .expect("key a");
    let stale_a = "0123456789abcdef01234567";

    // A's runner opens the store first and has its golden, and an old one of its own.
    let store = RootStore::open(&shared, 1024 * 1024 * 1024, &state_a).expect("open as a");
    for key in [key_a.as_str(), stale_a] {
        let p = store.begin_golden(key).expect("begin");
        std::fs::write(p.join("marker"), key).expect("write marker");
        store.commit_golden(key).expect("commit");
    }

    // B's sweep (its start-up, its `runner cleanup`): A's goldens are no entry of B's config.
    let s = sweep_unused_goldens(&config_b, Duration::ZERO, false).await;
    eprintln!("{s:?}");
    assert!(store.golden(&key_a).is_some(), "B removed A's live golden");
    assert!(store.golden(stale_a).is_some(), "B removed A's golden");
    assert_eq!(s.len(), 1, "{s:?}");
    assert!(s[0].removed.is_empty(), "{s:?}");
    assert!(
        s[0].failures
            .iter()
            .any(|f| f.contains("left alone")
                && f.contains(&format!("state_dir {}", state_a.display()))),
        "{s:?}"
    );

    // B's runner cannot open it, and says why (the fallback's reason in its jobs' traces).
    match RootStore::open(&shared, 1024 * 1024 * 1024, &state_b) {
        Err(e @ StoreError::Foreign { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("root_store_path"), "{msg}");
            assert!(msg.contains(&state_a.display().to_string()), "{msg}");
        }
        other => panic!("B opened A's store: {other:?}"),
    }
    assert!(
        support::store::is_mounted(&shared),
        "B's refused open unmounted the store A uses"
    );

    // A's own sweep removes its stale golden and keeps the live one.
    let s = sweep_unused_goldens(&config_a, Duration::ZERO, false).await;
    eprintln!("{s:?}");
    assert!(s[0].failures.is_empty(), "{s:?}");
    assert_eq!(s[0].removed, vec![stale_a.to_string()], "{s:?}");
    assert_eq!(s[0].kept, vec![key_a.clone()], "{s:?}");

    store.remove_golden(&key_a).expect("remove golden");
    assert_store_empty(&shared);
    store.close().expect("close the store");
    assert!(
        !support::store::is_mounted(&shared),
        "this process mounted it"
    );
    scope.assert_clean().await;
    drop(guard);
}
