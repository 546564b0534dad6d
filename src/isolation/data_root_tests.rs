//! Unit tests of `data_root.rs`.
use super::*;

#[test]
fn names_and_labels_key_everything() {
    assert_eq!(
        volume_name("r1", "gitlab-a", 7, true),
        "ir-r1-warm-gitlab-a-p7-protected"
    );
    assert_ne!(
        volume_name("r1", "gitlab-a", 7, true),
        volume_name("r1", "gitlab-a", 7, false)
    );
    assert_ne!(
        volume_name("r1", "gitlab-a", 7, false),
        volume_name("r1", "gitlab-a", 8, false)
    );
    // Another GitLab instance's project 7 is another root (H3).
    assert_ne!(
        volume_name("r1", "gitlab-a", 7, false),
        volume_name("r1", "gitlab-b", 7, false)
    );
    let l = labels("r1", "gitlab-a", 7, false, None);
    assert!(labels_match(&l, "r1", "gitlab-a", 7, false));
    assert!(!labels_match(&l, "r1", "gitlab-a", 7, true));
    assert!(!labels_match(&l, "r1", "gitlab-a", 8, false));
    assert!(!labels_match(&l, "r2", "gitlab-a", 7, false));
    assert!(!labels_match(&l, "r1", "gitlab-b", 7, false));
    // Neither teardown nor the reaper may see it as theirs.
    assert!(!l.contains_key(crate::docker::LABEL_MANAGED));
    assert!(!l.contains_key(crate::docker::LABEL_JOB));
}

#[test]
fn age_cap() {
    let mut l = labels("r", "gitlab-a", 1, false, None);
    l.insert(LABEL_CREATED.into(), "1000".into());
    assert!(!expired(&l, None, 10_000));
    assert!(!expired(&l, Some(Duration::from_secs(100)), 1050));
    assert!(expired(&l, Some(Duration::from_secs(100)), 1101));
    l.remove(LABEL_CREATED);
    assert!(expired(&l, Some(Duration::from_secs(100)), 1050));
}

#[test]
fn a_root_runs_only_under_the_uid_block_it_records() {
    let base = 100_000_000;
    let first = base + crate::config::ROOTLESS_UID_BLOCKS * crate::config::ROOTLESS_UID_BLOCK;
    let rootless = labels("r", "gitlab-a", 1, false, Some(first));
    assert_eq!(recorded_uid(&rootless, Some(base)), Ok(Some(first)));
    // Made under another rootless_uid_base: its files belong to uids that are not ours.
    assert!(recorded_uid(&rootless, Some(base + 1)).is_err());
    // Made by a rootless runner, used by a hardened one (and back): the owners differ.
    assert!(recorded_uid(&rootless, None).is_err());
    let hardened = labels("r", "gitlab-a", 1, false, None);
    assert_eq!(recorded_uid(&hardened, None), Ok(None));
    // Made before blocks were recorded.
    assert!(recorded_uid(&hardened, Some(base)).is_err());
    let mut garbled = hardened.clone();
    garbled.insert(LABEL_UID.into(), "root".into());
    assert!(recorded_uid(&garbled, Some(base)).is_err());
    // An ephemeral block is never a warm root's.
    garbled.insert(LABEL_UID.into(), base.to_string());
    assert!(recorded_uid(&garbled, Some(base)).is_err());
}

#[test]
fn du_output() {
    assert_eq!(parse_du("12345\t/data\n"), Some(12345));
    assert_eq!(parse_du("du: cannot read x\n42\t/data\n"), Some(42));
    assert_eq!(parse_du("nothing"), None);
}

#[tokio::test]
async fn lock_is_exclusive_and_released_on_drop() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = lock_path(dir.path(), "v");
    let first = try_lock(p.clone()).await.expect("lock").expect("free");
    assert!(try_lock(p.clone()).await.expect("lock").is_none());
    drop(first);
    assert!(try_lock(p).await.expect("lock").is_some());
}

fn request<'a>(dir: &'a Path, inflight: &'a TaskTracker) -> WarmRequest<'a> {
    WarmRequest {
        state_dir: dir,
        runner_id: "r1",
        instance: "gitlab-a",
        job_id: 3,
        timeout: Duration::from_secs(60),
        project_id: 7,
        protected: false,
        max_size: None,
        max_age: None,
        per_key: 1,
        uid_base: None,
        helper_image: "helper",
        inflight,
    }
}

/// A prepare cancelled while the warm root's create is in flight: the engine makes the
/// volume anyway, so the lock must stay taken until the create is answered (no second job
/// settles the same volume meanwhile), and the request is not dropped.
#[tokio::test]
async fn acquire_cancelled_during_the_create_holds_the_lock_until_it_settles() {
    let engine = crate::docker::fake::FakeEngine::start();
    let docker = engine.client().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let inflight = TaskTracker::new();
    let gate = engine.hold("POST /volumes/create");
    let req = request(dir.path(), &inflight);
    tokio::select! {
        _ = acquire(&docker, &req) => panic!("acquire finished while its create was held"),
        _ = gate.arrived() => {}
    }
    // The acquire future is gone (a cancelled prepare); its create is still in flight.
    let lock = lock_path(dir.path(), &volume_name("r1", "gitlab-a", 7, false));
    assert!(
        try_lock(lock.clone()).await.expect("lock").is_none(),
        "the lock was released while the volume's create was in flight"
    );
    gate.open();
    inflight.close();
    tokio::time::timeout(Duration::from_secs(10), inflight.wait())
        .await
        .expect("the create settles");
    assert!(try_lock(lock).await.expect("lock").is_some());
    let creates = engine
        .requests()
        .into_iter()
        .filter(|r| r == "POST /volumes/create")
        .count();
    assert_eq!(creates, 1);
}

/// A release dropped while the measuring container's create is in flight: the container
/// the engine then makes is removed.
#[tokio::test]
async fn measure_cancelled_during_the_create_removes_the_container() {
    let engine = crate::docker::fake::FakeEngine::start();
    let docker = engine.client().await;
    let inflight = TaskTracker::new();
    let naming = Naming::new("r1", 3, Duration::from_secs(60)).expect("naming");
    let gate = engine.hold("POST /containers/create");
    tokio::select! {
        _ = measure(&docker, &inflight, &naming, "helper", "v") => panic!("measured while the create was held"),
        _ = gate.arrived() => {}
    }
    gate.open();
    engine
        .wait_for("DELETE /containers/fake0000", Duration::from_secs(10))
        .await;
    assert!(
        !engine.requests().iter().any(|r| r.ends_with("/start")),
        "{:?}",
        engine.requests()
    );
}

/// A release dropped while `du` runs: the measuring container is removed too.
#[tokio::test]
async fn measure_cancelled_while_du_runs_removes_the_container() {
    let engine = crate::docker::fake::FakeEngine::start();
    let docker = engine.client().await;
    let inflight = TaskTracker::new();
    let naming = Naming::new("r1", 3, Duration::from_secs(60)).expect("naming");
    let gate = engine.hold("POST /containers/fake0000/wait");
    tokio::select! {
        _ = measure(&docker, &inflight, &naming, "helper", "v") => panic!("measured while du was held"),
        _ = gate.arrived() => {}
    }
    engine
        .wait_for("DELETE /containers/fake0000", Duration::from_secs(10))
        .await;
}

/// The root a job released last comes first: its lock file's modification time, as the
/// release stamps it; a root never stamped (or with no lock file yet) comes after the others.
#[tokio::test]
async fn the_root_a_job_left_last_is_tried_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = |v: &str| lock_path(dir.path(), v);
    let a = try_lock(path("a")).await.expect("lock a").expect("free");
    let b = try_lock(path("b")).await.expect("lock b").expect("free");
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    a.set_modified(t0 + Duration::from_secs(10))
        .expect("stamp a");
    b.set_modified(t0 + Duration::from_secs(20))
        .expect("stamp b");
    let mut roots = Vec::new();
    for v in ["a", "b", "c"] {
        roots.push((last_used(&path(v)).await, v.to_string()));
    }
    assert_eq!(roots[2].0, None, "no lock file, no stamp");
    assert_eq!(most_recent_first(roots.clone()), vec!["b", "a", "c"]);
    // a is released by a job later than b.
    a.set_modified(t0 + Duration::from_secs(30))
        .expect("stamp a");
    roots[0].0 = last_used(&path("a")).await;
    assert_eq!(most_recent_first(roots), vec!["a", "b", "c"]);
    // A link in place of a lock file is no stamp.
    drop(b);
    std::fs::remove_file(path("b")).expect("rm");
    std::os::unix::fs::symlink(path("a"), path("b")).expect("link");
    assert_eq!(last_used(&path("b")).await, None);
}
