use super::*;
use std::os::unix::fs::MetadataExt;

#[test]
fn job_ids_must_be_digits() {
    assert_eq!("42".parse::<JobId>().unwrap().get(), 42);
    for bad in ["", "+1", "-1", "1a", "../1", "1 ", "123456789012345678901"] {
        assert!(bad.parse::<JobId>().is_err(), "{bad}");
    }
}

#[test]
fn runner_ids_are_checked() {
    for good in ["s_0123456789ab", "r_ABCdef012345", "ir-t-0f3a9c", "r-1_a"] {
        check_runner_id(good).unwrap();
    }
    check_runner_id(&"a".repeat(MAX_RUNNER_ID_LEN)).unwrap();
    let long = "a".repeat(MAX_RUNNER_ID_LEN + 1);
    for bad in ["", ".", "..", "a.b", "a/b", "a b", "a+", "ü", long.as_str()] {
        assert!(check_runner_id(bad).is_err(), "{bad}");
    }
}

/// Every id the paths accept names a firewall chain too (and the other way round): a
/// mismatch made every dind prepare fail at "name the job's firewall chain".
#[test]
fn runner_id_alphabet_is_the_firewall_alphabet() {
    for id in [
        "s_0123456789ab",
        "ir-t-0f3a9c",
        "a.b",
        "a",
        "",
        "x y",
        "IR-x",
    ] {
        assert_eq!(
            check_runner_id(id).is_ok(),
            crate::netpolicy::rules::chain_name(id, 7).is_ok(),
            "{id:?}"
        );
    }
}

#[test]
fn dir_names_round_trip() {
    let j = JobId::new(17);
    assert_eq!(
        job_id_of_dir_name(OsStr::new(&project_dir_name(j))),
        Some(j)
    );
    assert_eq!(job_id_of_dir_name(OsStr::new(&tmp_dir_name(j))), Some(j));
    assert_eq!(job_id_of_dir_name(OsStr::new("gitlab-job-x")), None);
    let p = job_paths(Path::new("/builds"), j).unwrap();
    assert_eq!(p.project_dir, Path::new("/builds/gitlab-job-17"));
    assert_eq!(p.tmp_dir, Path::new("/builds/gitlab-job-17.tmp"));
    assert!(job_paths(Path::new("builds"), j).is_err());
}

#[test]
fn host_path_map_longest_prefix_by_component() {
    let m = HostPathMap::new(BTreeMap::from([
        (PathBuf::from("/builds"), PathBuf::from("/srv/builds")),
        (
            PathBuf::from("/builds/special"),
            PathBuf::from("/mnt/special"),
        ),
    ]));
    assert_eq!(
        m.to_host(Path::new("/builds/gitlab-job-1")),
        Path::new("/srv/builds/gitlab-job-1")
    );
    assert_eq!(m.to_host(Path::new("/builds")), Path::new("/srv/builds"));
    assert_eq!(
        m.to_host(Path::new("/builds/special/x")),
        Path::new("/mnt/special/x")
    );
    assert_eq!(m.to_host(Path::new("/builds2/x")), Path::new("/builds2/x"));
    assert_eq!(m.to_host(Path::new("/other")), Path::new("/other"));
}

#[test]
fn removal_never_follows_symlinks_out_of_the_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("precious"), b"keep").unwrap();
    let job = tmp.path().join("gitlab-job-1");
    std::fs::create_dir_all(job.join("a/b")).unwrap();
    std::fs::write(job.join("a/b/f"), b"x").unwrap();
    std::os::unix::fs::symlink(&outside, job.join("link-dir")).unwrap();
    std::os::unix::fs::symlink(&outside, job.join("a/b/link-deep")).unwrap();
    std::os::unix::fs::symlink(outside.join("precious"), job.join("link-file")).unwrap();
    // A directory without permissions must still go (the runner is the owner or root).
    std::fs::create_dir(job.join("locked")).unwrap();
    std::fs::write(job.join("locked/f"), b"x").unwrap();
    std::fs::set_permissions(job.join("locked"), std::fs::Permissions::from_mode(0o700)).unwrap();

    assert!(remove_path(&job).unwrap());
    assert!(!job.exists());
    assert_eq!(std::fs::read(outside.join("precious")).unwrap(), b"keep");
    assert!(!remove_path(&job).unwrap());
    // The top entry itself being a symlink: only the link goes.
    let top_link = tmp.path().join("gitlab-job-2");
    std::os::unix::fs::symlink(&outside, &top_link).unwrap();
    assert!(remove_path(&top_link).unwrap());
    assert!(outside.join("precious").exists());
}

/// Finding H5: a job's very deep tree must not overflow the runner's stack (an abort, not
/// a panic, killing every job) nor run it out of descriptors. 100 000 levels made with
/// `mkdirat`, removed on a thread with a 256 KiB stack.
#[test]
fn removal_survives_a_very_deep_tree() {
    const DEPTH: usize = 100_000;
    let tmp = tempfile::tempdir().unwrap();
    let top = tmp.path().join("gitlab-job-1");
    std::fs::create_dir(&top).unwrap();
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let mut fd = openat(nix::fcntl::AT_FDCWD, &top, flags, Mode::empty()).unwrap();
    for i in 0..DEPTH {
        nix::sys::stat::mkdirat(fd.as_fd(), "d", Mode::from_bits_truncate(0o755)).unwrap();
        if i % 1000 == 0 {
            std::fs::write(
                format!("/proc/self/fd/{}/f", std::os::fd::AsRawFd::as_raw_fd(&fd)),
                b"x",
            )
            .unwrap();
        }
        fd = openat(fd.as_fd(), "d", flags, Mode::empty()).unwrap();
    }
    drop(fd);
    let t = top.clone();
    let result = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || {
            let parent = openat(
                nix::fcntl::AT_FDCWD,
                t.parent().unwrap(),
                flags,
                Mode::empty(),
            )
            .unwrap();
            beneath::remove_tree_counted(&parent, t.file_name().unwrap(), &t)
                .map_err(|e| e.to_string())
        })
        .unwrap()
        .join()
        .expect("the removal thread must not die");
    let (removed, stats) = result.unwrap();
    assert!(removed);
    assert!(!top.exists(), "the tree is gone");
    assert!(stats.max_open <= 18, "open descriptors bounded: {stats:?}");
}

#[tokio::test]
async fn job_dirs_created_with_modes_and_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let builds = tmp.path().join("builds");
    let p = create_job_dirs(&builds, JobId::new(5)).await.unwrap();
    let m = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
    assert_eq!(m(&p.project_dir), 0o755);
    assert_eq!(m(&p.tmp_dir), 0o700);
    std::fs::write(p.project_dir.join("f"), b"x").unwrap();
    let removed = remove_job_dirs(&p).await.unwrap();
    assert_eq!(removed.len(), 2);
    assert!(!p.project_dir.exists() && !p.tmp_dir.exists());
}

#[tokio::test]
async fn pooled_job_dirs_are_links_to_the_slots_own_dirs() {
    let tmp = tempfile::tempdir().unwrap();
    let builds = tmp.path().join("builds");
    let slot = JobId::new(4611686018427387905);
    let real = create_job_dirs(&builds, slot).await.unwrap();
    // A leftover of an earlier attempt at the same job id is replaced.
    std::fs::create_dir_all(builds.join("gitlab-job-7")).unwrap();
    let (links, got) = link_job_dirs(&builds, JobId::new(7), slot).await.unwrap();
    assert_eq!(got.project_dir, real.project_dir);
    assert_eq!(links.project_dir, builds.join("gitlab-job-7"));
    assert_eq!(
        std::fs::read_link(&links.project_dir).unwrap(),
        Path::new("gitlab-job-4611686018427387905")
    );
    assert_eq!(
        std::fs::read_link(&links.tmp_dir).unwrap(),
        Path::new("gitlab-job-4611686018427387905.tmp")
    );
    std::fs::write(real.project_dir.join("f"), b"x").unwrap();
    assert_eq!(std::fs::read(links.project_dir.join("f")).unwrap(), b"x");
    let m = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
    assert_eq!(m(&links.tmp_dir), 0o700);
    check_plain_dir(&real.project_dir).unwrap();
    assert!(
        check_plain_dir(&links.project_dir).is_err(),
        "a link is not a plain dir"
    );
    // Teardown of the links leaves the real dirs for the slot's own teardown.
    assert_eq!(remove_job_dirs(&links).await.unwrap().len(), 2);
    assert!(real.project_dir.join("f").exists());
    // A slot dir swapped for a link is refused, not linked to.
    std::fs::rename(&real.tmp_dir, tmp.path().join("moved")).unwrap();
    std::os::unix::fs::symlink(tmp.path(), &real.tmp_dir).unwrap();
    assert!(link_job_dirs(&builds, JobId::new(8), slot).await.is_err());
}

fn job_pki(job: u64) -> JobPki {
    crate::pki::issue_job_pki(&crate::pki::PkiRequest::for_sidecar(
        job,
        "10.0.0.2".parse().unwrap(),
        std::time::Duration::from_secs(60),
    ))
    .unwrap()
}

/// `cat <path>` as uid/gid 65534 (nobody): whether it could read the file. `None` when
/// this test does not run as root and cannot switch users.
fn readable_by_nobody(path: &Path) -> Option<bool> {
    use std::os::unix::process::CommandExt;
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let out = std::process::Command::new("cat")
        .arg(path)
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run cat as nobody");
    Some(out.status.success())
}

#[tokio::test]
async fn cert_dir_modes_and_halves() {
    let pki = job_pki(9);
    let tmp = tempfile::tempdir().unwrap();
    let d = write_cert_dir(tmp.path(), "r1", JobId::new(9), &pki)
        .await
        .unwrap();
    let m = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
    for dir in [&d.root, &d.server, &tmp.path().join("certs/r1")] {
        assert_eq!(m(dir), 0o700, "{}", dir.display());
    }
    // The client half is readable by the job's user, whoever that is (inside the job's
    // containers, where the dir is mounted on its own).
    assert_eq!(m(&d.client), 0o755);
    for f in ["ca.pem", "cert.pem", "key.pem"] {
        assert_eq!(m(&d.server.join(f)), 0o600, "server/{f}");
        assert_eq!(m(&d.client.join(f)), 0o644, "client/{f}");
    }
    assert_eq!(
        std::fs::read_to_string(d.server.join("cert.pem")).unwrap(),
        pki.server.cert_pem
    );
    assert_eq!(
        std::fs::read_to_string(d.client.join("key.pem")).unwrap(),
        pki.client.key_pem.expose()
    );
    assert_eq!(list_cert_dirs(tmp.path(), "r1").await.unwrap().len(), 1);
    assert!(remove_cert_dir(&d).await.unwrap());
    assert!(list_cert_dirs(tmp.path(), "r1").await.unwrap().is_empty());
}

/// Another local user (uid 65534) reads neither half on the host: the 0700 job dir keeps
/// it out, and the 0700 server dir would on its own. With the job dir opened up, the
/// client half becomes readable (the check itself works) and the server half still not.
#[tokio::test]
async fn other_local_users_cannot_read_the_server_half() {
    let tmp = tempfile::tempdir().unwrap();
    // The state dir's own mode is the operator's; make it traversable so only the cert
    // dirs' modes are under test.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let d = write_cert_dir(tmp.path(), "r1", JobId::new(3), &job_pki(3))
        .await
        .unwrap();
    let (server_key, client_key) = (d.server.join("key.pem"), d.client.join("key.pem"));
    let Some(server_readable) = readable_by_nobody(&server_key) else {
        eprintln!("not root: cannot switch to uid 65534; only the modes were checked");
        return;
    };
    assert!(!server_readable, "uid 65534 read the server key");
    assert_eq!(readable_by_nobody(&client_key), Some(false));
    assert_eq!(readable_by_nobody(&d.server.join("ca.pem")), Some(false));
    for p in [
        tmp.path().join("certs"),
        tmp.path().join("certs/r1"),
        d.root.clone(),
    ] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    assert_eq!(readable_by_nobody(&client_key), Some(true), "control");
    assert_eq!(readable_by_nobody(&server_key), Some(false));
    assert!(remove_cert_dir(&d).await.unwrap());
}

/// The runner's cert dir goes with its last job's, and not before.
#[tokio::test]
async fn runner_cert_dir_goes_with_the_last_job() {
    let tmp = tempfile::tempdir().unwrap();
    let runner_dir = tmp.path().join("certs/r1");
    let a = write_cert_dir(tmp.path(), "r1", JobId::new(1), &job_pki(1))
        .await
        .unwrap();
    let b = write_cert_dir(tmp.path(), "r1", JobId::new(2), &job_pki(2))
        .await
        .unwrap();
    assert!(remove_cert_dir(&a).await.unwrap());
    assert!(runner_dir.is_dir(), "job 2 still has its dir in it");
    assert!(remove_cert_dir(&b).await.unwrap());
    assert!(!runner_dir.exists(), "the empty runner dir stayed");
    assert!(tmp.path().join("certs").is_dir());
    // Removing again (teardown after the reaper) is quiet.
    assert!(!remove_cert_dir(&b).await.unwrap());
    assert!(!remove_dir_if_empty(&runner_dir).unwrap());
    // A non-empty dir is left alone.
    std::fs::create_dir_all(runner_dir.join("job-5")).unwrap();
    assert!(!remove_dir_if_empty(&runner_dir).unwrap());
    assert!(runner_dir.join("job-5").is_dir());
}

/// The last job's teardown removes the runner dir between another job's `mkdir -p` and its
/// own `mkdir`: the creator makes the parent again.
#[test]
fn cert_dir_creation_survives_its_parent_vanishing() {
    let tmp = tempfile::tempdir().unwrap();
    let base = runner_cert_root(tmp.path(), "r1").unwrap();
    let d = cert_dir(tmp.path(), "r1", JobId::new(4)).unwrap();
    let mut calls = 0;
    make_cert_dirs(&base, &d, &mut || {
        calls += 1;
        if calls == 1 {
            assert!(remove_dir_if_empty(&base).unwrap());
        }
    })
    .unwrap();
    assert_eq!(calls, 2);
    assert!(d.server.is_dir() && d.client.is_dir());
    // Losing it every time is an error, not a loop.
    let e = cert_dir(tmp.path(), "r1", JobId::new(5)).unwrap();
    std::fs::remove_dir_all(&base).unwrap();
    let err = make_cert_dirs(&base, &e, &mut || {
        let _ = std::fs::remove_dir(&base);
    })
    .unwrap_err();
    assert!(err.to_string().contains("job-5"), "{err}");
}
