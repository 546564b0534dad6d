//! The local cache end to end on real directories: keys and fallbacks, policy, when, globs,
//! untracked files, protection, symlink and `..` attacks, pruning and atomic writes.

use isolated_runner::cache::{
    self, CacheContext, CacheEntry, JobStatus, RestoreOutcome, SaveOutcome, archive_path, prune_at,
    restore_blocking, save_blocking,
};

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};
use tempfile::TempDir;

/// A cache dir plus a checkout, and a recording log.
struct Fixture {
    _root: TempDir,
    cache_dir: PathBuf,
    project: PathBuf,
    /// A directory outside the project that attacks aim at.
    outside: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let root = tempfile::tempdir().expect("tempdir");
        let cache_dir = root.path().join("cache");
        let project = root.path().join("builds/gitlab-job-1");
        let outside = root.path().join("outside");
        fs::create_dir_all(&project).expect("project dir");
        fs::create_dir_all(&outside).expect("outside dir");
        Fixture {
            _root: root,
            cache_dir,
            project,
            outside,
        }
    }

    fn ctx(&self, protected: bool) -> CacheContext {
        CacheContext {
            cache_dir: self.cache_dir.clone(),
            project_dir: self.project.clone(),
            project_id: 42,
            protected,
            default_key: "build/main".to_string(),
            fallback_key: None,
            remote: None,
        }
    }

    fn write(&self, rel: &str, content: &str) {
        let path = self.project.join(rel);
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(path, content).expect("write");
    }

    fn read(&self, rel: &str) -> Option<String> {
        fs::read_to_string(self.project.join(rel)).ok()
    }

    /// Empties the checkout, as a fresh job would start.
    fn fresh_checkout(&self) {
        fs::remove_dir_all(&self.project).expect("rm project");
        fs::create_dir_all(&self.project).expect("mkdir project");
    }
}

#[derive(Default)]
struct Log(Mutex<Vec<String>>);

impl Log {
    fn sink(&self) -> impl Fn(&str) + Send + Sync + '_ {
        |line: &str| self.0.lock().expect("log lock").push(line.to_string())
    }
    fn lines(&self) -> Vec<String> {
        self.0.lock().expect("log lock").clone()
    }
    fn contains(&self, needle: &str) -> bool {
        self.lines().iter().any(|l| l.contains(needle))
    }
}

fn entry(key: &str, paths: &[&str]) -> CacheEntry {
    CacheEntry {
        key: key.to_string(),
        paths: paths.iter().map(|p| p.to_string()).collect(),
        ..CacheEntry::default()
    }
}

fn save(ctx: &CacheContext, entries: &[CacheEntry], status: JobStatus) -> Vec<SaveOutcome> {
    let log = Log::default();
    save_blocking(ctx, entries, status, &[], &log.sink()).expect("valid entries")
}

fn restore(ctx: &CacheContext, entries: &[CacheEntry]) -> (Vec<RestoreOutcome>, Log) {
    let log = Log::default();
    let out = restore_blocking(ctx, entries, &log.sink()).expect("valid entries");
    (out, log)
}

fn created(outcome: &SaveOutcome) -> bool {
    matches!(outcome, SaveOutcome::Created { .. })
}

#[test]
fn key_hit_restores_and_prints_gitlab_lines() {
    let fx = Fixture::new();
    let ctx = fx.ctx(false);
    fx.write("vendor/lib.php", "v1");
    let log = Log::default();
    let out = save_blocking(
        &ctx,
        &[entry("deps", &["vendor/"])],
        JobStatus::Success,
        &[],
        &log.sink(),
    )
    .expect("save");
    assert!(created(&out[0]), "{out:?}");
    assert_eq!(
        log.lines(),
        vec![
            "Creating cache deps...".to_string(),
            "vendor/: found 2 matching files and directories".to_string(),
            "Created cache".to_string()
        ]
    );
    fx.fresh_checkout();
    let (out, log) = restore(&ctx, &[entry("deps", &["vendor/"])]);
    assert!(matches!(&out[0], RestoreOutcome::Restored { key, .. } if key == "deps"));
    assert_eq!(fx.read("vendor/lib.php").as_deref(), Some("v1"));
    assert_eq!(
        log.lines(),
        vec!["Checking cache for deps...", "Successfully extracted cache"]
    );
}

#[test]
fn fallback_keys_are_tried_in_order_then_the_variable() {
    let fx = Fixture::new();
    let mut ctx = fx.ctx(false);
    for key in ["fb1", "fb2", "var-key"] {
        fx.write("data.txt", key);
        assert!(created(
            &save(&ctx, &[entry(key, &["data.txt"])], JobStatus::Success)[0]
        ));
    }
    fx.fresh_checkout();

    let mut e = entry("main", &["data.txt"]);
    e.fallback_keys = vec!["missing".into(), "fb2".into(), "fb1".into()];
    let (out, log) = restore(&ctx, &[e.clone()]);
    assert!(matches!(&out[0], RestoreOutcome::Restored { key, .. } if key == "fb2"));
    assert_eq!(fx.read("data.txt").as_deref(), Some("fb2"));
    let checks: Vec<String> = log
        .lines()
        .into_iter()
        .filter(|l| l.starts_with("Checking cache for"))
        .collect();
    assert_eq!(
        checks,
        vec![
            "Checking cache for main...",
            "Checking cache for missing...",
            "Checking cache for fb2..."
        ]
    );
    assert!(log.contains("WARNING: cache main not found"));

    // CACHE_FALLBACK_KEY comes after every fallback_keys entry.
    fx.fresh_checkout();
    ctx.fallback_key = Some("var-key".into());
    e.fallback_keys = vec!["missing".into()];
    let (out, _) = restore(&ctx, &[e.clone()]);
    assert!(matches!(&out[0], RestoreOutcome::Restored { key, .. } if key == "var-key"));

    // ...and is refused when it names a protected cache.
    ctx.fallback_key = Some("deps-protected".into());
    let (out, log) = restore(&ctx, &[e]);
    assert_eq!(out[0], RestoreOutcome::NotFound);
    assert!(log.contains("CACHE_FALLBACK_KEY deps-protected ends with -protected"));
}

#[test]
fn empty_key_uses_the_default_key() {
    let fx = Fixture::new();
    let ctx = fx.ctx(false);
    fx.write("a.txt", "x");
    let out = save(&ctx, &[entry("", &["a.txt"])], JobStatus::Success);
    assert!(matches!(&out[0], SaveOutcome::Created { key, .. } if key == "build/main"));
    assert!(archive_path(&fx.cache_dir, 42, false, "build%2Fmain").is_file());
}

#[test]
fn policy_pull_push_and_pull_push() {
    let fx = Fixture::new();
    let ctx = fx.ctx(false);
    fx.write("a.txt", "one");

    let mut pull = entry("k", &["a.txt"]);
    pull.policy = "pull".into();
    let log = Log::default();
    let out =
        save_blocking(&ctx, &[pull.clone()], JobStatus::Success, &[], &log.sink()).expect("save");
    assert_eq!(out[0], SaveOutcome::Skipped);
    assert!(log.contains("Not uploading cache k due to policy"));

    let mut push = entry("k", &["a.txt"]);
    push.policy = "push".into();
    assert!(created(&save(&ctx, &[push.clone()], JobStatus::Success)[0]));
    fx.fresh_checkout();
    let (out, log) = restore(&ctx, &[push]);
    assert_eq!(out[0], RestoreOutcome::Skipped);
    assert!(log.contains("Not downloading cache k due to policy"));
    assert_eq!(fx.read("a.txt"), None);

    let (out, _) = restore(&ctx, &[pull]);
    assert!(matches!(out[0], RestoreOutcome::Restored { .. }));

    let mut both = entry("k", &["a.txt"]);
    both.policy = "pull-push".into();
    fx.write("a.txt", "two");
    assert!(created(&save(&ctx, &[both.clone()], JobStatus::Success)[0]));
    fx.fresh_checkout();
    restore(&ctx, &[both]);
    assert_eq!(fx.read("a.txt").as_deref(), Some("two"));
}

#[test]
fn unknown_policy_or_when_is_an_error_before_any_work() {
    let fx = Fixture::new();
    let ctx = fx.ctx(false);
    fx.write("a.txt", "x");
    let good = entry("good", &["a.txt"]);
    let mut bad = entry("bad", &["a.txt"]);
    bad.policy = "$UNEXPANDED".into();
    let log = Log::default();
    let err = save_blocking(
        &ctx,
        &[good.clone(), bad],
        JobStatus::Success,
        &[],
        &log.sink(),
    );
    assert!(matches!(err, Err(cache::Error::UnknownPolicy { .. })));
    assert!(!archive_path(&fx.cache_dir, 42, false, "good").exists());
    let mut bad_when = entry("w", &["a.txt"]);
    bad_when.when = "sometimes".into();
    let err = save_blocking(
        &ctx,
        &[good, bad_when],
        JobStatus::Success,
        &[],
        &log.sink(),
    );
    assert!(matches!(err, Err(cache::Error::UnknownWhen { .. })));
}

#[test]
fn when_is_checked_against_the_job_status() {
    let fx = Fixture::new();
    let ctx = fx.ctx(false);
    fx.write("a.txt", "x");
    let with_when = |key: &str, when: &str| {
        let mut e = entry(key, &["a.txt"]);
        e.when = when.into();
        e
    };
    let out = save(
        &ctx,
        &[
            with_when("default", ""),
            with_when("success", "on_success"),
            with_when("failure", "on_failure"),
            with_when("always", "always"),
        ],
        JobStatus::Failed,
    );
    assert_eq!(out[0], SaveOutcome::Skipped);
    assert_eq!(out[1], SaveOutcome::Skipped);
    assert!(created(&out[2]));
    assert!(created(&out[3]));
    let out = save(
        &ctx,
        &[with_when("failure", "on_failure"), with_when("success", "")],
        JobStatus::Success,
    );
    assert_eq!(out[0], SaveOutcome::Skipped);
    assert!(created(&out[1]));
}

#[test]
fn paths_are_globs_relative_to_the_project() {
    let fx = Fixture::new();
    let ctx = fx.ctx(false);
    fx.write("vendor/a/b.php", "b");
    fx.write("build/x.o", "x");
    fx.write("build/sub/deep/y.o", "y");
    fx.write("build/z.txt", "z");
    fx.write("top.txt", "t");
    fx.write("docs/readme.txt", "r");
    fx.write("src/main.rs", "m");
    let log = Log::default();
    save_blocking(
        &ctx,
        &[entry(
            "g",
            &["./vendor/", "build/**/*.o", "*.txt", "../escape", "/etc"],
        )],
        JobStatus::Success,
        &[],
        &log.sink(),
    )
    .expect("save");
    assert!(log.contains("WARNING: ../escape: not under the project dir"));
    assert!(log.contains("WARNING: /etc: not under the project dir"));
    fx.fresh_checkout();
    restore(&ctx, &[entry("g", &["vendor/"])]);
    assert_eq!(fx.read("vendor/a/b.php").as_deref(), Some("b"));
    assert_eq!(fx.read("build/x.o").as_deref(), Some("x"));
    assert_eq!(fx.read("build/sub/deep/y.o").as_deref(), Some("y"));
    assert_eq!(fx.read("top.txt").as_deref(), Some("t"));
    // `*` does not cross directories; unmatched files stay out.
    assert_eq!(fx.read("docs/readme.txt"), None);
    assert_eq!(fx.read("build/z.txt"), None);
    assert_eq!(fx.read("src/main.rs"), None);
}

#[test]
fn no_match_warns_and_creates_nothing() {
    let fx = Fixture::new();
    let ctx = fx.ctx(false);
    let log = Log::default();
    let out = save_blocking(
        &ctx,
        &[entry("none", &["nothing/"])],
        JobStatus::Success,
        &[],
        &log.sink(),
    )
    .expect("save");
    assert_eq!(out[0], SaveOutcome::Skipped);
    assert!(log.contains("WARNING: nothing/: no matching files"));
    assert!(!archive_path(&fx.cache_dir, 42, false, "none").exists());
}

#[test]
fn untracked_files_come_from_the_callers_list() {
    let fx = Fixture::new();
    let ctx = fx.ctx(false);
    fx.write("tracked.rs", "t");
    fx.write("target/out.bin", "o");
    fx.write("notes.tmp", "n");
    let mut e = entry("u", &[]);
    e.untracked = true;
    let log = Log::default();
    let untracked = vec![
        PathBuf::from("target/out.bin"),
        PathBuf::from("notes.tmp"),
        PathBuf::from("../x"),
    ];
    let out = save_blocking(
        &ctx,
        &[e.clone()],
        JobStatus::Success,
        &untracked,
        &log.sink(),
    )
    .expect("save");
    assert!(created(&out[0]), "{:?}", log.lines());
    assert!(log.contains("untracked: found 2 files and directories"));
    fx.fresh_checkout();
    restore(&ctx, &[e]);
    assert_eq!(fx.read("target/out.bin").as_deref(), Some("o"));
    assert_eq!(fx.read("notes.tmp").as_deref(), Some("n"));
    assert_eq!(fx.read("tracked.rs"), None);
}

#[test]
fn unprotected_job_cannot_feed_a_protected_job() {
    let fx = Fixture::new();
    fx.write("bin/tool", "evil");
    // The key claims to be protected; the job is not.
    let out = save(
        &fx.ctx(false),
        &[entry("k-protected", &["bin/"])],
        JobStatus::Success,
    );
    assert!(created(&out[0]));
    fx.fresh_checkout();
    let (out, _) = restore(&fx.ctx(true), &[entry("k-protected", &["bin/"])]);
    assert_eq!(out[0], RestoreOutcome::NotFound);
    assert_eq!(fx.read("bin/tool"), None);
    // And the other way round: a protected job's cache is not visible to unprotected jobs.
    fx.write("bin/tool", "good");
    save(&fx.ctx(true), &[entry("p", &["bin/"])], JobStatus::Success);
    fx.fresh_checkout();
    let (out, _) = restore(&fx.ctx(false), &[entry("p", &["bin/"])]);
    assert_eq!(out[0], RestoreOutcome::NotFound);
}

#[test]
fn projects_do_not_share_caches() {
    let fx = Fixture::new();
    fx.write("a.txt", "x");
    save(
        &fx.ctx(false),
        &[entry("k", &["a.txt"])],
        JobStatus::Success,
    );
    fx.fresh_checkout();
    let mut other = fx.ctx(false);
    other.project_id = 43;
    let (out, _) = restore(&other, &[entry("k", &["a.txt"])]);
    assert_eq!(out[0], RestoreOutcome::NotFound);
}

#[test]
fn archive_creation_never_follows_symlinks_out_of_the_project() {
    let fx = Fixture::new();
    let ctx = fx.ctx(false);
    fs::write(fx.outside.join("secret"), "host secret").expect("secret");
    fx.write("keep/data.txt", "data");
    std::os::unix::fs::symlink(fx.outside.join("secret"), fx.project.join("keep/abs-link"))
        .expect("link");
    std::os::unix::fs::symlink(
        "../../../outside/secret",
        fx.project.join("keep/rel-escape"),
    )
    .expect("link");
    std::os::unix::fs::symlink(&fx.outside, fx.project.join("keep/dir-link")).expect("link");
    std::os::unix::fs::symlink("data.txt", fx.project.join("keep/inside-link")).expect("link");
    let log = Log::default();
    let out = save_blocking(
        &ctx,
        &[entry("s", &["keep/", "keep/dir-link/*"])],
        JobStatus::Success,
        &[],
        &log.sink(),
    )
    .expect("save");
    assert!(created(&out[0]));
    assert!(
        log.contains("keep/abs-link: symlink to"),
        "{:?}",
        log.lines()
    );
    assert!(log.contains("keep/rel-escape: symlink to"));
    assert!(log.contains("keep/dir-link: symlink to"));

    fx.fresh_checkout();
    restore(&ctx, &[entry("s", &["keep/"])]);
    assert_eq!(fx.read("keep/data.txt").as_deref(), Some("data"));
    assert!(fs::symlink_metadata(fx.project.join("keep/abs-link")).is_err());
    assert!(fs::symlink_metadata(fx.project.join("keep/rel-escape")).is_err());
    assert!(fs::symlink_metadata(fx.project.join("keep/dir-link")).is_err());
    let inside = fx.project.join("keep/inside-link");
    assert!(
        fs::symlink_metadata(&inside)
            .expect("inside link")
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        fs::read_link(&inside).expect("readlink"),
        Path::new("data.txt")
    );
}

#[test]
fn extraction_does_not_write_through_a_planted_symlink() {
    let fx = Fixture::new();
    let ctx = fx.ctx(false);
    fx.write("vendor/pkg/file.php", "payload");
    fx.write("config.php", "cfg");
    save(
        &ctx,
        &[entry("v", &["vendor/", "config.php"])],
        JobStatus::Success,
    );

    // The next checkout plants symlinks where the cache will write.
    fx.fresh_checkout();
    std::os::unix::fs::symlink(&fx.outside, fx.project.join("vendor")).expect("dir link");
    fs::write(fx.outside.join("victim"), "original").expect("victim");
    std::os::unix::fs::symlink(fx.outside.join("victim"), fx.project.join("config.php"))
        .expect("file link");

    let (out, log) = restore(&ctx, &[entry("v", &["vendor/"])]);
    assert!(matches!(out[0], RestoreOutcome::Restored { .. }));
    assert!(log.contains("refusing to follow it"), "{:?}", log.lines());
    // Nothing landed outside, and the victim was not overwritten.
    assert!(!fx.outside.join("pkg").exists());
    assert_eq!(
        fs::read_to_string(fx.outside.join("victim")).expect("victim"),
        "original"
    );
    // The planted file symlink was replaced by the real file, inside the project.
    assert!(
        !fs::symlink_metadata(fx.project.join("config.php"))
            .expect("meta")
            .file_type()
            .is_symlink()
    );
    assert_eq!(fx.read("config.php").as_deref(), Some("cfg"));
}

/// Writes a tar.gz whose entry names bypass the tar crate's own path checks.
fn crafted_archive(dest: &Path, entries: &[(&str, tar::EntryType, &str)]) {
    fs::create_dir_all(dest.parent().expect("parent")).expect("mkdir");
    let file = fs::File::create(dest).expect("create");
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    let mut builder = tar::Builder::new(gz);
    for (name, kind, data) in entries {
        let mut header = tar::Header::new_old();
        let raw = &mut header.as_old_mut().name;
        raw[..name.len()].copy_from_slice(name.as_bytes());
        header.set_entry_type(*kind);
        header.set_mode(0o644);
        if *kind == tar::EntryType::Symlink {
            let link = &mut header.as_old_mut().linkname;
            link[..data.len()].copy_from_slice(data.as_bytes());
            header.set_size(0);
            header.set_cksum();
            builder.append(&header, std::io::empty()).expect("append");
        } else {
            header.set_size(data.len() as u64);
            header.set_cksum();
            builder.append(&header, data.as_bytes()).expect("append");
        }
    }
    builder.into_inner().expect("tar").finish().expect("gz");
}

#[test]
fn extraction_refuses_dotdot_absolute_and_symlink_chains() {
    let fx = Fixture::new();
    let ctx = fx.ctx(false);
    let abs_target = fx.outside.join("abs.txt");
    let abs_name = abs_target.to_string_lossy().to_string();
    let outside_rel = "../../../outside";
    crafted_archive(
        &archive_path(&fx.cache_dir, 42, false, "evil"),
        &[
            ("../../../outside/dotdot.txt", tar::EntryType::Regular, "x"),
            (&abs_name, tar::EntryType::Regular, "x"),
            ("sneaky/../../x.txt", tar::EntryType::Regular, "x"),
            // An entry makes a symlink out, the next one writes through it.
            ("hop", tar::EntryType::Symlink, outside_rel),
            ("hop/through.txt", tar::EntryType::Regular, "inside"),
            // An inside symlink to a symlink the checkout planted, then a write through both.
            ("hop2", tar::EntryType::Symlink, "planted"),
            ("hop2/x.txt", tar::EntryType::Regular, "x"),
            ("fine.txt", tar::EntryType::Regular, "ok"),
        ],
    );
    std::os::unix::fs::symlink(&fx.outside, fx.project.join("planted")).expect("planted link");
    let (out, log) = restore(&ctx, &[entry("evil", &["x"])]);
    // fine.txt, the hop2 symlink (its target is inside), and hop/through.txt, which lands in a
    // plain directory `hop` because the escaping symlink was never created.
    assert!(
        matches!(out[0], RestoreOutcome::Restored { entries: 3, .. }),
        "{out:?} {:?}",
        log.lines()
    );
    assert_eq!(fx.read("hop/through.txt").as_deref(), Some("inside"));
    assert!(log.contains("hop2/x.txt: not extracted"));
    assert_eq!(fx.read("fine.txt").as_deref(), Some("ok"));
    assert_eq!(
        fs::read_dir(&fx.outside).expect("outside").count(),
        0,
        "nothing written outside"
    );
    assert!(
        fs::symlink_metadata(fx.project.join("hop"))
            .expect("hop")
            .is_dir(),
        "escaping symlink not created"
    );
    assert!(log.contains("refused (absolute or with ..)"));
}

#[test]
fn corrupt_archive_is_a_warning_not_an_error() {
    let fx = Fixture::new();
    let ctx = fx.ctx(false);
    let path = archive_path(&fx.cache_dir, 42, false, "bad");
    fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    fs::write(&path, b"not a gzip file").expect("write");
    let (out, log) = restore(&ctx, &[entry("bad", &["x"])]);
    assert_eq!(out[0], RestoreOutcome::Failed);
    assert!(log.contains("WARNING: Failed to extract cache bad"));
}

fn archive_with_age(
    fx: &Fixture,
    key: &str,
    bytes: usize,
    age: Duration,
    now: SystemTime,
) -> PathBuf {
    let path = archive_path(&fx.cache_dir, 42, false, key);
    fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    fs::write(&path, vec![0u8; bytes]).expect("write");
    fs::File::options()
        .write(true)
        .open(&path)
        .expect("open")
        .set_modified(now - age)
        .expect("mtime");
    path
}

#[test]
fn prune_by_age_then_size_least_recently_used_first() {
    let fx = Fixture::new();
    let now = SystemTime::now();
    let day = Duration::from_secs(86_400);
    let ancient = archive_with_age(&fx, "ancient", 100, 40 * day, now);
    let old = archive_with_age(&fx, "old", 300, 5 * day, now);
    let mid = archive_with_age(&fx, "mid", 300, 3 * day, now);
    let new = archive_with_age(&fx, "new", 300, day, now);

    // Dry run reports and deletes nothing.
    let report = prune_at(&fx.cache_dir, Some(600), Some(30 * day), true, now).expect("prune");
    assert_eq!(
        report.removed,
        vec![(ancient.clone(), 100), (old.clone(), 300)]
    );
    assert_eq!(report.freed, 400);
    assert!(ancient.exists() && old.exists());

    let report = prune_at(&fx.cache_dir, Some(600), Some(30 * day), false, now).expect("prune");
    assert_eq!(
        report.removed,
        vec![(ancient.clone(), 100), (old.clone(), 300)]
    );
    assert_eq!((report.kept, report.kept_bytes), (2, 600));
    assert!(!ancient.exists() && !old.exists() && mid.exists() && new.exists());
}

#[test]
fn restore_touches_the_archive_so_it_survives_pruning() {
    let fx = Fixture::new();
    let ctx = fx.ctx(false);
    fx.write("a.txt", "x");
    save(
        &ctx,
        &[entry("used", &["a.txt"]), entry("unused", &["a.txt"])],
        JobStatus::Success,
    );
    let now = SystemTime::now();
    for key in ["used", "unused"] {
        fs::File::options()
            .write(true)
            .open(archive_path(&fx.cache_dir, 42, false, key))
            .expect("open")
            .set_modified(now - Duration::from_secs(3600))
            .expect("mtime");
    }
    restore(&ctx, &[entry("used", &["a.txt"])]);
    let one = fs::metadata(archive_path(&fx.cache_dir, 42, false, "used"))
        .expect("meta")
        .len();
    let report = prune_at(&fx.cache_dir, Some(one), None, false, SystemTime::now()).expect("prune");
    assert_eq!(report.removed.len(), 1);
    assert_eq!(
        report.removed[0].0,
        archive_path(&fx.cache_dir, 42, false, "unused")
    );
}

#[test]
fn prune_of_a_missing_dir_is_empty() {
    let report = prune_at(
        Path::new("/nonexistent/cache"),
        Some(0),
        None,
        false,
        SystemTime::now(),
    )
    .expect("prune");
    assert!(report.removed.is_empty());
}

#[test]
fn writes_are_atomic_and_crash_leftovers_are_never_restored() {
    let fx = Fixture::new();
    let ctx = fx.ctx(false);
    fx.write("a.txt", "x");
    save(&ctx, &[entry("k", &["a.txt"])], JobStatus::Success);
    let dir = cache::project_dir(&fx.cache_dir, 42, false);
    let names: Vec<String> = fs::read_dir(&dir)
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(names, vec!["k.tar.gz"], "no temp file left behind");

    // A crashed save leaves only a temp file: no job restores it, prune removes it once stale.
    let tmp = dir.join(".tmp-crashed.partial");
    fs::write(&tmp, b"half an archive").expect("tmp");
    fs::remove_file(dir.join("k.tar.gz")).expect("rm");
    fx.fresh_checkout();
    let (out, _) = restore(&ctx, &[entry("k", &["a.txt"])]);
    assert_eq!(out[0], RestoreOutcome::NotFound);
    let later = SystemTime::now() + Duration::from_secs(2 * 3600);
    let report = prune_at(&fx.cache_dir, None, None, false, later).expect("prune");
    assert_eq!(report.removed, vec![(tmp.clone(), 15)]);
}

#[test]
fn concurrent_saves_of_one_key_never_tear() {
    let fx = Fixture::new();
    let ctx = fx.ctx(false);
    let writers = 6;
    let projects: Vec<PathBuf> = (0..writers)
        .map(|i| {
            let dir = fx.outside.join(format!("job-{i}"));
            fs::create_dir_all(dir.join("deps")).expect("mkdir");
            for f in 0..20 {
                fs::write(
                    dir.join(format!("deps/f{f}")),
                    format!("writer {i}").repeat(500),
                )
                .expect("write");
            }
            dir
        })
        .collect();
    std::thread::scope(|scope| {
        for project in &projects {
            let mut ctx = ctx.clone();
            ctx.project_dir = project.clone();
            scope.spawn(move || {
                let log = |_: &str| {};
                save_blocking(
                    &ctx,
                    &[entry("shared", &["deps/"])],
                    JobStatus::Success,
                    &[],
                    &log,
                )
                .expect("save")
            });
        }
    });
    let (out, _) = restore(&ctx, &[entry("shared", &["deps/"])]);
    assert!(
        matches!(out[0], RestoreOutcome::Restored { entries: 21, .. }),
        "{out:?}"
    );
    let first = fx.read("deps/f0").expect("f0");
    for f in 1..20 {
        assert_eq!(
            fx.read(&format!("deps/f{f}")).as_deref(),
            Some(first.as_str()),
            "one writer's files only"
        );
    }
}

#[tokio::test]
async fn async_api_streams_lines_to_the_log() {
    let fx = Fixture::new();
    let ctx = fx.ctx(false);
    fx.write("a.txt", "x");
    let log = Log::default();
    let out = cache::save(
        &ctx,
        &[entry("k", &["a.txt"])],
        JobStatus::Success,
        &[],
        &log.sink(),
    )
    .await
    .expect("save");
    assert!(created(&out[0]));
    fx.fresh_checkout();
    let out = cache::restore(&ctx, &[entry("k", &["a.txt"])], &log.sink())
        .await
        .expect("restore");
    assert!(matches!(out[0], RestoreOutcome::Restored { .. }));
    assert!(log.contains("Created cache") && log.contains("Successfully extracted cache"));
}
