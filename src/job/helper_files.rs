//! Files the runner and the job's containers hand each other through the job's tmp dir: file
//! variables the runner writes, and lists a helper script writes for the runner to read (the
//! untracked files of the checkout, for artifacts and caches). The runner runs as root and the
//! tmp dir is job-writable, so every access goes through the directory's handle ([`Dir`]).

use super::script::sh_quote;
use super::vars::{self, Variables};
use crate::paths::Dir;
use std::path::{Path, PathBuf};

/// Largest `untracked.list` the runner reads (git's NUL-separated list of untracked files).
const MAX_UNTRACKED_LIST: u64 = 64 << 20;

/// The helper writes this list into the job's tmp dir (`ls-files -o -z`).
pub(super) const UNTRACKED_LIST: &str = "untracked.list";

/// Reads and removes `<tmp>/untracked.list` through the tmp dir's handle (finding M2): never
/// through a link (`untracked.list -> /dev/zero` is refused, not read forever), never blocking
/// on a FIFO, at most [`MAX_UNTRACKED_LIST`] bytes. `tmp` is the runner-visible tmp dir.
pub(super) async fn read_untracked_list(tmp: &Path) -> Result<Vec<u8>, String> {
    read_helper_list(tmp, UNTRACKED_LIST).await
}

/// Reads and removes the file `name` a helper script wrote into the job's tmp dir (`tmp`, the
/// runner-visible real directory): through the directory's handle, never through a link,
/// never blocking on a FIFO, at most [`MAX_UNTRACKED_LIST`] bytes.
pub(crate) async fn read_helper_list(tmp: &Path, name: &str) -> Result<Vec<u8>, String> {
    let tmp = tmp.to_path_buf();
    let name = PathBuf::from(name);
    tokio::task::spawn_blocking(move || {
        let dir =
            Dir::open_job_dir(&tmp).map_err(|e| format!("reading the untracked list: {e}"))?;
        let name = name.as_path();
        let data = dir.read_bounded(name, MAX_UNTRACKED_LIST);
        // Already gone is fine.
        let _ = dir.unlink(name);
        data.map_err(|e| format!("reading the untracked list: {e}"))
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Writes file variables as 0600 files `<KEY>` in the job's tmp dir and points the variable at
/// the file as jobs see it (`<tmp>/<KEY>`). Each file is created through the tmp dir's handle
/// (`host_tmp`, the runner-visible directory) with `O_CREAT|O_EXCL|O_NOFOLLOW|O_NONBLOCK`, so
/// nothing a job planted (a link, a FIFO) is ever opened. Returns the names written.
pub(super) async fn write_file_variables(
    vars: &mut Variables,
    tmp: &Path,
    host_tmp: &Path,
) -> Result<Vec<String>, String> {
    let files: Vec<_> = vars
        .effective()
        .into_iter()
        .filter(|v| v.file && vars::is_valid_name(&v.key))
        .cloned()
        .collect();
    if files.is_empty() {
        return Ok(Vec::new());
    }
    let host_tmp = host_tmp.to_path_buf();
    let contents: Vec<(String, crate::secret::Secret)> = files
        .iter()
        .map(|v| (v.key.clone(), crate::secret::Secret::new(v.value.clone())))
        .collect();
    tokio::task::spawn_blocking(move || {
        let dir = Dir::open_job_dir(&host_tmp).map_err(|e| e.to_string())?;
        for (key, value) in &contents {
            let name = Path::new(key);
            // A leftover of an earlier write of the same job (or anything the job put there)
            // goes first: only a file we create ourselves is written.
            let _ = dir.remove(name);
            let mut f = dir.create_new(name, 0o600).map_err(|e| e.to_string())?;
            std::io::Write::write_all(&mut f, value.expose().as_bytes())
                .map_err(|e| format!("write {}: {e}", dir.shown().join(key).display()))?;
        }
        Ok::<_, String>(())
    })
    .await
    .map_err(|e| e.to_string())??;
    let mut written = Vec::new();
    for mut v in files {
        v.value = tmp.join(&v.key).to_string_lossy().into_owned();
        v.file = false;
        written.push(v.key.clone());
        vars.push_var(v);
    }
    Ok(written)
}

/// Removes the file variables `names` from the tmp dir (`host_tmp`, runner-visible) through its
/// handle; already gone is fine, teardown removes the whole tmp dir anyway.
pub(super) async fn remove_file_variables(host_tmp: &Path, names: Vec<String>) {
    let tmp = host_tmp.to_path_buf();
    let _ = tokio::task::spawn_blocking(move || {
        if let Ok(dir) = Dir::open_job_dir(&tmp) {
            for n in names {
                let _ = dir.unlink(Path::new(&n));
            }
        }
    })
    .await;
}

/// The helper script that writes the checkout's untracked files (git's `ls-files -o
/// --exclude-standard -z`) to `list`; a directory that is not a git repository is written as
/// `NOT-A-GIT-REPOSITORY` (read back by [`parse_untracked`] as "all of it"). Used by the
/// artifact and the cache stages alike.
pub(crate) fn untracked_script(project_dir: &Path, list: &Path) -> String {
    let dir = sh_quote(&project_dir.to_string_lossy());
    let l = sh_quote(&list.to_string_lossy());
    format!(
        "set -e\nif git -c safe.directory='*' -C {dir} rev-parse --git-dir >/dev/null 2>&1; then\n  git -c safe.directory='*' -C {dir} ls-files -o --exclude-standard -z > {l}\nelse\n  printf 'NOT-A-GIT-REPOSITORY' > {l}\nfi\n"
    )
}

/// Reads what [`untracked_script`] wrote: NUL-separated paths, or `.` for a directory that is
/// not a git repository.
pub(crate) fn parse_untracked(data: &[u8]) -> Vec<PathBuf> {
    if data == b"NOT-A-GIT-REPOSITORY" {
        return vec![PathBuf::from(".")];
    }
    data.split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| PathBuf::from(String::from_utf8_lossy(s).into_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Finding M2: `untracked.list` is read through the tmp dir's handle: a link (to a host
    /// file, to `/dev/zero`) or a FIFO is refused, not followed or blocked on, and the size is
    /// bounded.
    #[tokio::test]
    async fn untracked_list_is_bounded_and_never_read_through_links() {
        let t = tempfile::tempdir().expect("tempdir");
        let tmp = t.path().join("gitlab-job-3.tmp");
        std::fs::create_dir(&tmp).expect("mkdir");
        let list = tmp.join(UNTRACKED_LIST);
        let canary = t.path().join("canary");
        std::fs::write(&canary, b"a\0b\0").expect("write");
        let guard = |f| tokio::time::timeout(Duration::from_secs(60), f);

        std::os::unix::fs::symlink(&canary, &list).expect("link");
        assert!(
            guard(read_untracked_list(&tmp))
                .await
                .expect("no hang")
                .is_err()
        );
        assert_eq!(std::fs::read(&canary).expect("canary"), b"a\0b\0");

        std::fs::remove_file(&list).ok();
        std::os::unix::fs::symlink("/dev/zero", &list).expect("link");
        assert!(
            guard(read_untracked_list(&tmp))
                .await
                .expect("no hang")
                .is_err()
        );

        std::fs::remove_file(&list).ok();
        nix::unistd::mkfifo(&list, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .expect("mkfifo");
        assert!(
            guard(read_untracked_list(&tmp))
                .await
                .expect("no hang")
                .is_err()
        );

        std::fs::remove_file(&list).ok();
        std::fs::File::create(&list)
            .expect("create")
            .set_len(MAX_UNTRACKED_LIST + 1)
            .expect("sparse");
        let e = read_untracked_list(&tmp).await.expect_err("too large");
        assert!(e.contains("larger than"), "{e}");

        std::fs::write(&list, b"x\0y/z\0").expect("write");
        assert_eq!(read_untracked_list(&tmp).await.expect("read"), b"x\0y/z\0");
        assert!(!list.exists(), "removed after reading");

        // The tmp dir itself swapped for a link is refused too.
        let moved = t.path().join("moved");
        std::fs::rename(&tmp, &moved).expect("rename");
        std::os::unix::fs::symlink(&moved, &tmp).expect("link");
        std::fs::write(moved.join(UNTRACKED_LIST), b"x").expect("write");
        assert!(read_untracked_list(&tmp).await.is_err());
    }

    /// File variables are created through the tmp dir's handle: a link planted under a
    /// variable's name is replaced, never written through.
    #[tokio::test]
    async fn file_variables_never_write_through_links() {
        let t = tempfile::tempdir().expect("tempdir");
        let tmp = t.path().join("gitlab-job-3.tmp");
        std::fs::create_dir(&tmp).expect("mkdir");
        let canary = t.path().join("canary");
        std::fs::write(&canary, b"keep").expect("write");
        std::os::unix::fs::symlink(&canary, tmp.join("CFG")).expect("link");
        let mut vars = Variables::new();
        vars.push_var(crate::gitlab::types::JobVariable {
            key: "CFG".into(),
            value: "secret".into(),
            file: true,
            ..Default::default()
        });
        let names = write_file_variables(&mut vars, Path::new("/b/gitlab-job-3.tmp"), &tmp)
            .await
            .expect("write");
        assert_eq!(names, vec!["CFG".to_string()]);
        assert_eq!(std::fs::read(&canary).expect("canary"), b"keep");
        assert_eq!(std::fs::read(tmp.join("CFG")).expect("file"), b"secret");
        assert_eq!(vars.get("CFG"), Some("/b/gitlab-job-3.tmp/CFG"));
    }

    #[test]
    fn untracked_list_parsing() {
        assert_eq!(
            parse_untracked(b"NOT-A-GIT-REPOSITORY"),
            vec![PathBuf::from(".")]
        );
        assert_eq!(
            parse_untracked(b"a\0b/c\0\0"),
            vec![PathBuf::from("a"), PathBuf::from("b/c")]
        );
        assert!(parse_untracked(b"").is_empty());
    }
}
