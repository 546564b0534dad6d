//! The runner's private staging area for artifact archives (finding C1).
//!
//! Archives the runner builds for upload, and dependency archives it downloads, used to live in
//! the job's tmp dir, which the job writes: a planted `upload-sast -> /var/spool/cron/...` link
//! turned the runner's write into a root write anywhere, and a swap after the write turned the
//! upload into a read of any host file. They now live in a fresh directory per use under
//! `<state_dir>/staging` (0700, owned by the runner), which no container mounts; each file is
//! created `O_CREAT | O_EXCL | O_NOFOLLOW` through the directory's handle and used through the
//! descriptor that created it, never reopened by path.

use crate::paths::Dir;
use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Errors of the staging area.
#[derive(Debug, thiserror::Error)]
pub enum StagingError {
    /// A directory or file could not be made.
    #[error("artifact staging: {0}")]
    Paths(#[from] crate::paths::Error),
    /// The staging root exists but is not the runner's private directory.
    #[error("artifact staging dir {path}: {why}")]
    NotPrivate {
        /// The staging root.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
}

/// The staging root of a runner: `<state_dir>/staging`.
pub fn staging_root(state_dir: &Path) -> PathBuf {
    state_dir.join("staging")
}

/// The staging root when no state dir is configured (`runner exec`, tests): a directory of
/// this user under the system temp dir. [`Staging::create`] refuses it unless it is a real
/// directory owned by the runner's user, so another local user cannot pre-create it.
pub fn default_staging_root() -> PathBuf {
    staging_root(&std::env::temp_dir().join(format!("isolated-runner-{}", nix::unistd::geteuid())))
}

/// One job's staging directory (`<root>/job-<id>-<random>`, 0700), removed on drop.
#[derive(Debug)]
pub struct Staging {
    root: Dir,
    name: PathBuf,
    dir: Dir,
}

impl Staging {
    /// Makes a fresh staging directory for `job_id` under `root` (made 0700 if missing; an
    /// existing one must be a real directory owned by us and closed to other users). Blocking.
    pub fn create(root: &Path, job_id: u64) -> Result<Staging, StagingError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(|source| crate::paths::Error::Io {
                op: "create",
                path: root.to_path_buf(),
                source,
            })?;
        let root_dir = Dir::open_trusted(root)?;
        let meta = File::from(root_dir.fd().try_clone_to_owned().map_err(|source| {
            crate::paths::Error::Io {
                op: "dup",
                path: root.to_path_buf(),
                source,
            }
        })?);
        let st = meta.metadata().map_err(|source| crate::paths::Error::Io {
            op: "stat",
            path: root.to_path_buf(),
            source,
        })?;
        if st.uid() != nix::unistd::geteuid().as_raw() {
            return Err(StagingError::NotPrivate {
                path: root.to_path_buf(),
                why: format!("owned by uid {}, not by the runner", st.uid()),
            });
        }
        if st.mode() & 0o077 != 0 {
            // Ours, but opened up (by hand, or a umask at creation): close it again.
            meta.set_permissions(std::fs::Permissions::from_mode(0o700))
                .map_err(|source| crate::paths::Error::Io {
                    op: "chmod",
                    path: root.to_path_buf(),
                    source,
                })?;
        }
        let name = PathBuf::from(format!("job-{job_id}-{}", uuid::Uuid::new_v4().simple()));
        let dir = root_dir.mkdir(&name, 0o700)?;
        Ok(Staging {
            root: root_dir,
            name,
            dir,
        })
    }

    /// The directory's path, for messages.
    pub fn path(&self) -> &Path {
        self.dir.shown()
    }

    /// Creates the new file `name` (0600) in the staging directory and returns it open for
    /// reading and writing. Blocking.
    pub fn create_file(&self, name: &str) -> Result<File, StagingError> {
        Ok(self.dir.create_new(Path::new(name), 0o600)?)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // A few files in a private directory: quick enough to do here, and a leftover (a
        // crash) is only disk space in the runner's own state dir.
        if let Err(e) = self.root.remove(&self.name) {
            tracing::warn!(error = %e, "cannot remove an artifact staging dir");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_is_private_fresh_and_removed() {
        let state = tempfile::tempdir().expect("tempdir");
        let root = staging_root(state.path());
        let s = Staging::create(&root, 7).expect("staging");
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").mode() & 0o777;
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(s.path()), 0o700);
        let _f = s.create_file("upload-artifacts.zip").expect("create");
        assert!(s.create_file("upload-artifacts.zip").is_err(), "O_EXCL");
        let path = s.path().to_path_buf();
        drop(s);
        assert!(!path.exists());
        // A root swapped for a link is refused.
        std::fs::remove_dir(&root).expect("rmdir");
        std::os::unix::fs::symlink(state.path(), &root).expect("link");
        assert!(Staging::create(&root, 8).is_err());
    }
}
