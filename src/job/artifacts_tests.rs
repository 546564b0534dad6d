//! Tests of [`super`] (the artifacts module), in a file of their own to keep it short.

use super::*;

fn setup() -> (tempfile::TempDir, PathBuf, tempfile::TempDir) {
    let root = tempfile::tempdir().expect("tempdir");
    let outside = tempfile::tempdir().expect("tempdir");
    std::fs::write(outside.path().join("secret.txt"), "TOP SECRET").expect("write");
    let proj = root.path().join("proj");
    std::fs::create_dir_all(proj.join("dist/sub")).expect("mkdir");
    std::fs::write(proj.join("dist/a.js"), "a").expect("write");
    std::fs::write(proj.join("dist/sub/b.log"), "b").expect("write");
    std::fs::write(proj.join("keep.txt"), "k").expect("write");
    std::os::unix::fs::symlink(outside.path().join("secret.txt"), proj.join("dist/leak"))
        .expect("symlink");
    std::os::unix::fs::symlink(outside.path(), proj.join("outdir")).expect("symlink");
    (root, proj, outside)
}

#[test]
fn collect_globs_excludes_and_never_follows_symlinks() {
    let (_root, proj, _outside) = setup();
    let root = Dir::open_trusted(&proj).expect("open");
    let c = collect(
        &proj,
        &root,
        &[
            "dist/".into(),
            "outdir/secret.txt".into(),
            "outdir".into(),
            "../x".into(),
        ],
        &["**/*.log".into()],
        &[],
    )
    .expect("collect");
    let names: Vec<String> = c
        .files
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    assert!(names.contains(&"dist/a.js".to_string()), "{names:?}");
    assert!(!names.iter().any(|n| n.ends_with(".log")), "{names:?}");
    assert!(!names.iter().any(|n| n.starts_with("outdir/")), "{names:?}");
    assert!(
        c.warnings.iter().any(|w| w.contains("..")),
        "{:?}",
        c.warnings
    );
    let zip = proj.parent().expect("parent").join("a.zip");
    let out = File::create(&zip).expect("create");
    write_zip(&root, &c.files, &out).expect("zip");
    for (name, link, data) in list_zip(&zip).expect("list") {
        assert!(
            !String::from_utf8_lossy(&data).contains("TOP SECRET"),
            "{name} leaked"
        );
        if name == "dist/leak" {
            assert!(link, "symlink stored as symlink");
        }
    }
}

#[test]
fn extract_refuses_escapes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let zpath = dir.path().join("evil.zip");
    {
        let f = std::fs::File::create(&zpath).expect("create");
        let mut z = zip::ZipWriter::new(f);
        let o = zip::write::SimpleFileOptions::default();
        z.start_file("../escape.txt", o).expect("entry");
        z.write_all(b"x").expect("write");
        z.add_symlink("link", "/etc", o).expect("link");
        z.start_file("link/passwd", o).expect("entry");
        z.write_all(b"x").expect("write");
        z.add_symlink("inner", "ok.txt", o).expect("link");
        z.start_file("ok.txt", o).expect("entry");
        z.write_all(b"fine").expect("write");
        z.finish().expect("finish");
    }
    let dest = dir.path().join("proj");
    std::fs::create_dir_all(&dest).expect("mkdir");
    let archive = File::open(&zpath).expect("open");
    let (n, warnings) =
        extract_zip(&archive, &Dir::open_trusted(&dest).expect("open")).expect("extract");
    assert_eq!(n, 3, "{warnings:?}");
    assert!(!dir.path().join("escape.txt").exists());
    let link = std::fs::symlink_metadata(dest.join("link")).expect("link dir");
    assert!(!link.file_type().is_symlink());
    assert_eq!(
        std::fs::read_to_string(dest.join("ok.txt")).expect("read"),
        "fine"
    );
    assert_eq!(warnings.len(), 2, "{warnings:?}");
}

/// Finding C1: the archive is made in a fresh 0700 directory of the runner under its state
/// dir, created O_EXCL, and uploaded from the descriptor that wrote it: swapping the path
/// for a link afterwards changes nothing in what is uploaded.
#[tokio::test]
async fn archive_destination_is_runner_private() {
    use std::os::unix::fs::MetadataExt;
    let (_root, proj, outside) = setup();
    let state = tempfile::tempdir().expect("tempdir");
    let staging_root = crate::job::staging::staging_root(state.path());
    let staging = crate::job::staging::Staging::create(&staging_root, 9).expect("staging");
    assert!(staging.path().starts_with(state.path()));
    for d in [staging.path(), staging_root.as_path()] {
        assert_eq!(std::fs::metadata(d).expect("stat").mode() & 0o777, 0o700);
    }
    let file = staging.create_file("upload-artifacts.zip").expect("create");
    assert!(
        staging.create_file("upload-artifacts.zip").is_err(),
        "created O_EXCL: never opens what is there"
    );
    let dir = Dir::open_trusted(&proj).expect("open");
    let built = write_zip(&dir, &[PathBuf::from("keep.txt")], &file).expect("zip");
    assert_eq!(built.entries, 1);
    // Even if the staged name were swapped for a link to a host file, the upload reads
    // the descriptor it wrote.
    let staged = staging.path().join("upload-artifacts.zip");
    std::fs::remove_file(&staged).expect("unlink");
    std::os::unix::fs::symlink(outside.path().join("secret.txt"), &staged).expect("link");
    let store_dir = tempfile::tempdir().expect("tempdir");
    let store = LocalArtifactStore {
        root: store_dir.path().to_path_buf(),
    };
    let job = JobRef {
        id: 9,
        name: "j".into(),
        token: Secret::new("t"),
    };
    store
        .upload(&job, &Artifact::default(), &file, "artifacts.zip")
        .await
        .expect("upload");
    let uploaded = store_dir.path().join("j/artifacts.zip");
    let entries = list_zip(&uploaded).expect("a zip was uploaded");
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].2, b"k");
    let path = staging.path().to_path_buf();
    drop(staging);
    assert!(!path.exists(), "the staging dir goes with its use");
    assert_eq!(
        std::fs::read(outside.path().join("secret.txt")).expect("canary"),
        b"TOP SECRET"
    );
}

/// Finding H1: a job swaps a parent directory for a link between the runner's listing and
/// its open. The entry is skipped with a warning, never read through the link.
#[test]
fn zip_io_is_fd_relative() {
    let (root, proj, outside) = setup();
    std::fs::create_dir_all(outside.path().join("sub")).expect("mkdir");
    std::fs::write(outside.path().join("sub/b.log"), "TOP SECRET").expect("write");
    let dir = Dir::open_trusted(&proj).expect("open");
    let c = collect(&proj, &dir, &["dist".into()], &[], &[]).expect("collect");
    assert!(
        c.files.contains(&PathBuf::from("dist/sub/b.log")),
        "{:?}",
        c.files
    );
    let out = File::create(root.path().join("a.zip")).expect("create");
    let mut swapped = false;
    let built = write_zip_with(&dir, &c.files, &out, &mut |rel| {
        if rel == Path::new("dist/sub/b.log") && !swapped {
            swapped = true;
            std::fs::rename(proj.join("dist/sub"), proj.join("dist/sub.real")).expect("rename");
            std::os::unix::fs::symlink(outside.path().join("sub"), proj.join("dist/sub"))
                .expect("link");
        }
    })
    .expect("zip");
    assert!(swapped);
    assert!(
        built.warnings.iter().any(|w| w.contains("dist/sub/b.log")),
        "{:?}",
        built.warnings
    );
    for (name, _, data) in list_zip(&root.path().join("a.zip")).expect("list") {
        assert!(
            !String::from_utf8_lossy(&data).contains("TOP SECRET"),
            "{name} read through the link"
        );
        assert_ne!(name, "dist/sub/b.log");
    }
    // The raw/gzip path too.
    let raw = Artifact {
        artifact_format: "raw".into(),
        ..Default::default()
    };
    let out = File::create(root.path().join("raw")).expect("create");
    let built = build_archive(&raw, &dir, &[PathBuf::from("dist/sub/b.log")], &out).expect("raw");
    assert_eq!(built.entries, 0);
    assert_eq!(std::fs::read(root.path().join("raw")).expect("read"), b"");
}

/// Issue 11 item 7: a gzip report with several files holds all of them, each its own
/// member named after the file (as gitlab-runner's gzip archiver writes them).
#[test]
fn gzip_reports_hold_every_file() {
    use std::io::Read;
    let root = tempfile::tempdir().expect("tempdir");
    let proj = root.path().join("p");
    std::fs::create_dir_all(proj.join("r")).expect("mkdir");
    std::fs::write(proj.join("r/a.xml"), b"<a/>").expect("write");
    std::fs::write(proj.join("r/b.xml"), b"<b/>").expect("write");
    let dir = Dir::open_job_dir(&proj).expect("open");
    let junit = Artifact {
        artifact_type: "junit".into(),
        artifact_format: "gzip".into(),
        ..Default::default()
    };
    let path = root.path().join("junit.gz");
    let out = File::create(&path).expect("create");
    let files = [PathBuf::from("r/a.xml"), PathBuf::from("r/b.xml")];
    let built = build_archive(&junit, &dir, &files, &out).expect("gzip");
    assert_eq!(built.entries, 2);
    let data = std::fs::read(&path).expect("read");
    let mut all = String::new();
    flate2::read::MultiGzDecoder::new(&data[..])
        .read_to_string(&mut all)
        .expect("gunzip");
    assert_eq!(all, "<a/><b/>");
    let first = flate2::read::GzDecoder::new(&data[..]);
    assert_eq!(
        first.header().and_then(|h| h.filename()),
        Some(&b"r/a.xml"[..])
    );
}

/// Finding M2: a symlink entry whose target is longer than PATH_MAX (a deflate bomb as a
/// "target") is refused without reading it all.
#[test]
fn symlink_target_longer_than_path_max_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let zpath = dir.path().join("long.zip");
    {
        let f = File::create(&zpath).expect("create");
        let mut z = zip::ZipWriter::new(f);
        let o = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        z.add_symlink("long", "a/".repeat(8 << 20), o)
            .expect("link");
        z.add_symlink("short", "ok.txt", o).expect("link");
        z.finish().expect("finish");
    }
    let dest = dir.path().join("proj");
    std::fs::create_dir_all(&dest).expect("mkdir");
    let archive = File::open(&zpath).expect("open");
    let (n, warnings) =
        extract_zip(&archive, &Dir::open_trusted(&dest).expect("open")).expect("extract");
    assert_eq!(n, 1, "{warnings:?}");
    assert!(
        warnings.iter().any(|w| w.contains("PATH_MAX")),
        "{warnings:?}"
    );
    assert!(std::fs::symlink_metadata(dest.join("long")).is_err());
    assert!(std::fs::symlink_metadata(dest.join("short")).is_ok());
}

/// Extraction never writes through a link a job planted in its project dir, nor through
/// one an earlier entry made, and refuses chains (L1).
#[test]
fn extraction_never_follows_planted_links() {
    let (root, proj, outside) = setup();
    let zpath = root.path().join("dep.zip");
    {
        let f = File::create(&zpath).expect("create");
        let mut z = zip::ZipWriter::new(f);
        let o = zip::write::SimpleFileOptions::default();
        z.start_file("outdir/secret.txt", o).expect("entry");
        z.write_all(b"OVERWRITTEN").expect("write");
        z.start_file("dist/leak", o).expect("entry");
        z.write_all(b"replaced").expect("write");
        z.add_symlink("s", ".", o).expect("link");
        z.add_symlink("up", "s/..", o).expect("link");
        z.finish().expect("finish");
    }
    let archive = File::open(&zpath).expect("open");
    let (_, warnings) =
        extract_zip(&archive, &Dir::open_trusted(&proj).expect("open")).expect("extract");
    assert_eq!(
        std::fs::read(outside.path().join("secret.txt")).expect("canary"),
        b"TOP SECRET",
        "{warnings:?}"
    );
    // The planted link itself was replaced by the entry's file, not written through.
    assert_eq!(
        std::fs::read(proj.join("dist/leak")).expect("read"),
        b"replaced"
    );
    assert!(
        std::fs::symlink_metadata(proj.join("up")).is_err(),
        "{warnings:?}"
    );
}

#[test]
fn file_names() {
    let mut a = Artifact::default();
    assert_eq!(archive_file_name(&a), "artifacts.zip");
    a.name = Some("junit.xml".into());
    a.artifact_format = "gzip".into();
    assert_eq!(archive_file_name(&a), "junit.xml.gz");
}
