//! Sources as gitlab-runner fetches them, end to end (daemon, dind, the fake GitLab over real
//! HTTP): Git LFS objects pulled after the checkout with the job token (or left as pointers
//! with `GIT_LFS_SKIP_SMUDGE`), submodules with the `normal` and `recursive` strategies,
//! `GIT_SUBMODULE_PATHS` (include and `:(exclude)`), `GIT_SUBMODULE_FORCE_HTTPS` for an SSH
//! submodule URL, and `GIT_CLONE_PATH` on a cloned project. Checked on the files the job sees.

use crate::support;

use support::e2e::{E2e, JOB_TIMEOUT, push_var};
use support::fake_gitlab::Submodule;

/// The content of the LFS-tracked file (what the job must see instead of the pointer).
const BIG: &str = "the real large file content, served by the LFS API\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lfs_objects_submodules_and_clone_path() {
    let w = E2e::new().await;
    let f = &w.fake;
    let host = w.git_addr.ip().to_string();
    // deep (in sub-a) -> sub-c; libs/a -> sub-a (relative URL); libs/b -> sub-b over SSH.
    let c = f.create_repo("sub-c", &[("c.txt", "from-c\n")], None).await;
    let a = f
        .create_repo_with_submodules(
            "sub-a",
            &[("a.txt", "from-a\n")],
            &[Submodule {
                path: "deep",
                url: "../sub-c.git",
                sha: &c,
            }],
            None,
        )
        .await;
    let b = f.create_repo("sub-b", &[("b.txt", "from-b\n")], None).await;
    let pointer = f.add_lfs_object(BIG.as_bytes());
    let ssh_b = format!("git@{host}:git/sub-b.git");
    let sha = f
        .create_repo_with_submodules(
            "super",
            &[
                (
                    ".gitattributes",
                    "*.bin filter=lfs diff=lfs merge=lfs -text\n",
                ),
                ("big.bin", &pointer),
                ("main.txt", "from-main\n"),
            ],
            &[
                Submodule {
                    path: "libs/a",
                    url: "../sub-a.git",
                    sha: &a,
                },
                Submodule {
                    path: "libs/b",
                    url: &ssh_b,
                    sha: &b,
                },
            ],
            Some(51),
        )
        .await;
    let big = BIG.trim_end();
    let present = |p: &str| format!("test -f {p} || {{ echo missing {p}; exit 1; }}");
    let absent = |p: &str| format!("test ! -e {p} || {{ echo unexpected {p}; exit 1; }}");

    // A: normal strategy, both submodules (libs/b through FORCE_HTTPS), the LFS object pulled,
    // a GOPATH-style clone path seen by the job and by its daemon.
    let clone_path = "$CI_BUILDS_DIR/go/src/example.com/super";
    let a_script = [
        format!("test \"$(cat big.bin)\" = '{big}'"),
        "test \"$PWD\" = \"$CI_BUILDS_DIR/go/src/example.com/super\"".to_string(),
        "test \"$CI_PROJECT_DIR\" = \"$PWD\"".to_string(),
        format!(
            "test \"$(docker run --rm --pull never -v \"$PWD\":/x isolated-runner/busybox:test cat /x/big.bin)\" = '{big}'"
        ),
        present("libs/a/a.txt"),
        present("libs/b/b.txt"),
        absent("libs/a/deep/c.txt"),
        "echo job-a-ok".to_string(),
    ];
    let mut ja = w.job(1501, &to_refs(&a_script), &[]);
    w.with_repo(&mut ja, "super", &sha, 51);
    push_var(&mut ja, "GIT_SUBMODULE_STRATEGY", "normal", true);
    push_var(&mut ja, "GIT_SUBMODULE_FORCE_HTTPS", "true", true);
    push_var(&mut ja, "CI_SERVER_HOST", &host, true);
    push_var(&mut ja, "GIT_CLONE_PATH", clone_path, true);

    // B: recursive, libs/b excluded (its SSH URL is never tried), LFS smudge skipped by the job.
    let b_script = [
        "grep -q '^version https://git-lfs.github.com/spec/v1' big.bin".to_string(),
        present("libs/a/a.txt"),
        present("libs/a/deep/c.txt"),
        absent("libs/b/b.txt"),
        "echo job-b-ok".to_string(),
    ];
    let mut jb = w.job(1502, &to_refs(&b_script), &[]);
    w.with_repo(&mut jb, "super", &sha, 51);
    push_var(&mut jb, "GIT_SUBMODULE_STRATEGY", "recursive", true);
    push_var(&mut jb, "GIT_SUBMODULE_PATHS", ":(exclude)libs/b", true);
    push_var(&mut jb, "GIT_LFS_SKIP_SMUDGE", "1", true);

    // C: normal, only libs/b asked for.
    let c_script = [
        present("libs/b/b.txt"),
        absent("libs/a/a.txt"),
        "echo job-c-ok".to_string(),
    ];
    let mut jc = w.job(1503, &to_refs(&c_script), &[]);
    w.with_repo(&mut jc, "super", &sha, 51);
    push_var(&mut jc, "GIT_SUBMODULE_STRATEGY", "normal", true);
    push_var(&mut jc, "GIT_SUBMODULE_PATHS", "libs/b", true);
    push_var(&mut jc, "GIT_SUBMODULE_FORCE_HTTPS", "true", true);
    push_var(&mut jc, "CI_SERVER_HOST", &host, true);

    let ids = [f.enqueue(ja), f.enqueue(jb), f.enqueue(jc)];
    let daemon = w.start_daemon(w.config(2));
    for (id, marker) in ids.iter().zip(["job-a-ok", "job-b-ok", "job-c-ok"]) {
        let fin = w.wait_final(*id, JOB_TIMEOUT).await;
        let trace = w.trace(*id);
        assert_eq!(
            (fin.state.as_str(), fin.failure_reason.as_deref()),
            ("success", None),
            "job {id}:\n{trace}"
        );
        assert!(trace.contains(marker), "{trace}");
    }
    daemon.drain(JOB_TIMEOUT).await;
    let a_trace = w.trace(ids[0]);
    assert!(a_trace.contains("Pulling Git LFS objects"), "{a_trace}");
    assert!(!w.trace(ids[1]).contains("Pulling Git LFS objects"));
    // The LFS object came over the batch API with the job's token.
    let lfs: Vec<_> = f
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/info/lfs/objects/batch") || r.path.contains("gitlab-lfs"))
        .collect();
    assert!(
        lfs.iter().any(|r| r.path.contains("gitlab-lfs/objects/")),
        "no LFS download: {:?}",
        lfs.iter().map(|r| &r.path).collect::<Vec<_>>()
    );
    assert!(f.violations().is_empty(), "{:?}", f.violations());
    w.scope.assert_clean().await;
}

fn to_refs(lines: &[String]) -> Vec<&str> {
    lines.iter().map(String::as_str).collect()
}
