//! Job directory layout, identical-path mounts, host path map and safe deletion.
//!
//! A job owns two directories under `builds_dir`: `gitlab-job-<id>` (`CI_PROJECT_DIR`, the clone)
//! and `gitlab-job-<id>.tmp` (scratch: `TMPDIR`, file variables, the runner's script files). Both
//! are bind-mounted at the *same absolute path* into the job container, the helper container and
//! the sidecar, so `docker run -v "$PWD":/x` and `./:/app` in a compose file resolve on the job's
//! own daemon exactly as they would with the host socket.
//!
//! The job's TLS material lives apart from those, under the runner's state directory
//! (`<state_dir>/certs/<runner>/job-<id>/{server,client}`): the sidecar gets only `server/`
//! (0700, files 0600), the job only `client/` (0755, files 0644, so a job image with a non-root
//! user can read it), the 0700 `job-<id>` above them keeps other local users out of both, and
//! no job can reach another job's directory through a shared host path. The runner's directory
//! goes with its last job's.
//!
//! Deletion never follows symlinks: a job can plant `gitlab-job-1/evil -> /etc`, and a naive
//! recursive delete run as root would then empty `/etc` (threat H9). [`remove_tree`] walks with
//! `openat(O_NOFOLLOW | O_DIRECTORY)` and `unlinkat` relative to directory descriptors, so a
//! symlink is only ever unlinked, never entered.

pub mod beneath;
pub mod clone_link;

pub use beneath::{Dir, Kind, PATH_MAX, link_stays_inside, remove_tree};

use crate::pki::JobPki;
use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::Mode;
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

/// Errors of the paths module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A job id that is not a plain decimal number.
    #[error("job id {0:?} is not a decimal number")]
    BadJobId(String),
    /// A runner id that cannot be used in a path.
    #[error("runner id {0:?} may only contain letters, digits, '-', '_' and '.'")]
    BadRunnerId(String),
    /// A path that must be absolute is not.
    #[error("{0} is not an absolute path")]
    NotAbsolute(PathBuf),
    /// A file system operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A blocking task died.
    #[error("file system task failed: {0}")]
    Task(String),
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn errno<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(Errno) -> Error + 'a {
    move |e| Error::Io {
        op,
        path: path.to_path_buf(),
        source: std::io::Error::from(e),
    }
}

/// Slot ids start here (2^62). GitLab job ids are database ids, nowhere near. A pre-started
/// sidecar (a pool slot) labels its objects and names its dirs with such an id.
pub const SLOT_ID_BASE: u64 = 1 << 62;

/// Whether a job id label names a pool slot.
pub fn is_slot_id(id: u64) -> bool {
    id >= SLOT_ID_BASE
}

/// A GitLab job id, checked to be decimal digits before any path is built from it (threat G3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId(u64);

impl JobId {
    /// Wraps an id that is already a number.
    pub fn new(id: u64) -> Self {
        JobId(id)
    }

    /// The number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl FromStr for JobId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        // `u64::from_str` accepts a leading '+'; a path component must be digits only.
        if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Error::BadJobId(s.to_string()));
        }
        s.parse()
            .map(JobId)
            .map_err(|_| Error::BadJobId(s.to_string()))
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Longest runner id: it is in every object name and in firewall comments.
pub const MAX_RUNNER_ID_LEN: usize = 64;

/// True for a character allowed in a runner id.
fn runner_id_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// Checks a runner id: 1-[`MAX_RUNNER_ID_LEN`] characters of `A-Z a-z 0-9 - _`. The one
/// alphabet for every place a runner id goes: path components, Docker names and labels, and
/// firewall chain names and comments ([`crate::netpolicy`] checks with this function), so an
/// id accepted for one is never refused by another halfway through a prepare. System ids
/// (`s_`/`r_` + 12 alphanumerics) and test ids (`ir-t-<hex>`) fit; `.` does not (iptables
/// chain names).
pub fn check_runner_id(id: &str) -> Result<(), Error> {
    let ok = !id.is_empty() && id.len() <= MAX_RUNNER_ID_LEN && id.bytes().all(runner_id_char);
    if ok {
        Ok(())
    } else {
        Err(Error::BadRunnerId(id.to_string()))
    }
}

/// The name of a job's project directory inside `builds_dir`.
pub fn project_dir_name(job: JobId) -> String {
    format!("gitlab-job-{job}")
}

/// The name of a job's scratch directory inside `builds_dir`.
pub fn tmp_dir_name(job: JobId) -> String {
    format!("gitlab-job-{job}.tmp")
}

/// Parses `gitlab-job-<id>` or `gitlab-job-<id>.tmp` back into the job id.
pub fn job_id_of_dir_name(name: &OsStr) -> Option<JobId> {
    let s = name.to_str()?;
    let rest = s.strip_prefix("gitlab-job-")?;
    let digits = rest.strip_suffix(".tmp").unwrap_or(rest);
    digits.parse().ok()
}

/// Where a job's files are, as the runner sees them and as containers see them.
#[derive(Debug, Clone)]
pub struct JobPaths {
    /// `<builds_dir>/gitlab-job-<id>`: `CI_PROJECT_DIR`, the clone. Same path in every container.
    pub project_dir: PathBuf,
    /// `<builds_dir>/gitlab-job-<id>.tmp`: scratch (`TMPDIR`, file variables). Same path in
    /// every container.
    pub tmp_dir: PathBuf,
}

/// The two directories of a job (runner-visible paths; same paths inside every container).
pub fn job_paths(builds_dir: &Path, job: JobId) -> Result<JobPaths, Error> {
    if !builds_dir.is_absolute() {
        return Err(Error::NotAbsolute(builds_dir.to_path_buf()));
    }
    Ok(JobPaths {
        project_dir: builds_dir.join(project_dir_name(job)),
        tmp_dir: builds_dir.join(tmp_dir_name(job)),
    })
}

/// Creates the job's directories: `builds_dir` (0755, if missing), the project dir 0755 and the
/// scratch dir 0700 (it holds file variables). Leftovers of an earlier run of the same job id are
/// removed first, safely.
pub async fn create_job_dirs(builds_dir: &Path, job: JobId) -> Result<JobPaths, Error> {
    let paths = job_paths(builds_dir, job)?;
    let b = builds_dir.to_path_buf();
    let p = paths.clone();
    blocking(move || {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&b)
            .map_err(io("create", &b))?;
        for (dir, mode) in [(&p.project_dir, 0o755), (&p.tmp_dir, 0o700)] {
            remove_path(dir)?;
            std::fs::DirBuilder::new()
                .mode(mode)
                .create(dir)
                .map_err(io("create", dir))?;
            // The umask may have cleared bits of `mode`; set it exactly.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
                .map_err(io("chmod", dir))?;
        }
        Ok(())
    })
    .await?;
    Ok(paths)
}

/// A job's directories when its sidecar was started before the job existed (the warm pool,
/// `src/isolation/pool.rs`). The slot made its real directories, `<builds_dir>/gitlab-job-<slot>`
/// and `.tmp` (with [`create_job_dirs`]), directly in `builds_dir`, a directory no container
/// ever has mounted; the job's usual paths `<builds_dir>/gitlab-job-<job>` (and `.tmp`) become
/// *relative* symlinks to them, for people and `runner cleanup` (relative: the link resolves the
/// same for a runner in a container and on the host). The runner itself never resolves through
/// these links: bind sources and its own file work use the returned real directories, which are
/// one no-follow step below `builds_dir` (checked here). Returns `(links, real)`.
pub async fn link_job_dirs(
    builds_dir: &Path,
    job: JobId,
    slot: JobId,
) -> Result<(JobPaths, JobPaths), Error> {
    let links = job_paths(builds_dir, job)?;
    let real = job_paths(builds_dir, slot)?;
    let (l, r) = (links.clone(), real.clone());
    blocking(move || {
        for (link, dir) in [(&l.project_dir, &r.project_dir), (&l.tmp_dir, &r.tmp_dir)] {
            check_plain_dir(dir)?;
            remove_path(link)?;
            let Some(name) = dir.file_name() else {
                return Err(Error::NotAbsolute(dir.clone()));
            };
            std::os::unix::fs::symlink(name, link).map_err(io("symlink", link))?;
        }
        Ok(())
    })
    .await?;
    Ok((links, real))
}

/// Fails unless `path` is a plain directory itself (not a symlink to one, nor anything else).
/// For paths one step below a trusted directory (`builds_dir`): a bind source is checked with
/// this before every container create, so a directory swapped for a link is never mounted.
/// Blocking: call from `spawn_blocking` (or accept a short stat on the caller's thread).
pub fn check_plain_dir(path: &Path) -> Result<(), Error> {
    let meta = std::fs::symlink_metadata(path).map_err(io("stat", path))?;
    if meta.file_type().is_dir() {
        Ok(())
    } else {
        Err(Error::Io {
            op: "check",
            path: path.to_path_buf(),
            source: std::io::Error::other(
                "is no longer a plain directory (replaced by a link or a file); not mounting it",
            ),
        })
    }
}

/// Removes both job directories without following symlinks. Returns the paths that existed.
pub async fn remove_job_dirs(paths: &JobPaths) -> Result<Vec<PathBuf>, Error> {
    let dirs = [paths.project_dir.clone(), paths.tmp_dir.clone()];
    blocking(move || {
        let mut removed = Vec::new();
        for d in dirs {
            if remove_path(&d)? {
                removed.push(d);
            }
        }
        Ok(removed)
    })
    .await
}

/// Runs blocking file system work off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Task(e.to_string()))?
}

/// Removes `path` (a file, a symlink or a whole tree) without following any symlink below its
/// parent. Returns false when nothing was there. Blocking: call from `spawn_blocking`.
pub fn remove_path(path: &Path) -> Result<bool, Error> {
    let (parent, name) = match (path.parent(), path.file_name()) {
        (Some(p), Some(n)) => (p, n),
        _ => return Err(Error::NotAbsolute(path.to_path_buf())),
    };
    // The parent itself is trusted (builds_dir, state_dir: runner config, not job data).
    let parent_fd = match open_dir_at(None, parent) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(false),
        Err(e) => return Err(errno("open", parent)(e)),
    };
    remove_tree(&parent_fd, name, path)
}

fn open_dir_at(dir: Option<&OwnedFd>, name: &Path) -> Result<OwnedFd, Errno> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    match dir {
        Some(d) => openat(d.as_fd(), name, flags, Mode::empty()),
        None => openat(nix::fcntl::AT_FDCWD, name, flags, Mode::empty()),
    }
}

/// Translates runner-visible paths to host paths, for when the runner itself runs in a
/// container: bind mounts are resolved by the host daemon, which sees host paths.
#[derive(Debug, Clone, Default)]
pub struct HostPathMap(BTreeMap<PathBuf, PathBuf>);

impl HostPathMap {
    /// Wraps the configured map (runner-visible prefix -> host prefix).
    pub fn new(map: BTreeMap<PathBuf, PathBuf>) -> Self {
        HostPathMap(map)
    }

    /// The host path of a runner-visible path: the longest matching prefix is replaced; a path
    /// under no prefix is returned as is. Matching is by whole components (`/builds2` is not
    /// under `/builds`).
    pub fn to_host(&self, path: &Path) -> PathBuf {
        let mut best: Option<(&PathBuf, &PathBuf)> = None;
        for (from, to) in &self.0 {
            if path.starts_with(from)
                && best.is_none_or(|(b, _)| from.components().count() > b.components().count())
            {
                best = Some((from, to));
            }
        }
        match best {
            Some((from, to)) => match path.strip_prefix(from) {
                Ok(rest) if rest.as_os_str().is_empty() => to.clone(),
                Ok(rest) => to.join(rest),
                Err(_) => path.to_path_buf(),
            },
            None => path.to_path_buf(),
        }
    }
}

/// Checks that a path is absolute and has no `..` (used for paths that go into bind mounts).
pub fn check_clean_absolute(path: &Path) -> Result<(), Error> {
    if !path.is_absolute() || path.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(Error::NotAbsolute(path.to_path_buf()));
    }
    Ok(())
}

/// A job's certificate directory: `<state_dir>/certs/<runner>/job-<id>`.
#[derive(Debug, Clone)]
pub struct CertDir {
    /// The job's directory (0700).
    pub root: PathBuf,
    /// `server/` with `ca.pem`, `cert.pem`, `key.pem`: mounted read-only into the sidecar.
    pub server: PathBuf,
    /// `client/` with `ca.pem`, `cert.pem`, `key.pem`: mounted read-only into job containers.
    pub client: PathBuf,
    /// `policy/`: the socket of the job daemon's inner policy (`isolation::inner_policy`),
    /// mounted read-only into the sidecar.
    pub policy: PathBuf,
}

/// The directory holding a runner's per-job certificate directories.
pub fn runner_cert_root(state_dir: &Path, runner_id: &str) -> Result<PathBuf, Error> {
    check_runner_id(runner_id)?;
    Ok(state_dir.join("certs").join(runner_id))
}

/// The name of a job's certificate directory inside [`runner_cert_root`].
pub fn cert_dir_name(job: JobId) -> String {
    format!("job-{job}")
}

/// Where [`write_cert_dir`] puts a job's certificates (nothing is created): teardown records
/// it before the write, so a write cut short by a cancel is still removed.
pub fn cert_dir(state_dir: &Path, runner_id: &str, job: JobId) -> Result<CertDir, Error> {
    let root = runner_cert_root(state_dir, runner_id)?.join(cert_dir_name(job));
    Ok(CertDir {
        server: root.join("server"),
        client: root.join("client"),
        policy: root.join("policy"),
        root,
    })
}

/// Mode of a job's certificate directory (`job-<id>`): it keeps every other local user out of
/// both halves on the host, whatever the halves' own modes.
const CERT_ROOT_MODE: u32 = 0o700;
/// Mode of `server/` and its files: read by the sidecar's root only.
const SERVER_DIR_MODE: u32 = 0o700;
const SERVER_FILE_MODE: u32 = 0o600;
/// Mode of `client/` and its files: readable by any user *inside the job's containers*, so a
/// job image with a non-root `USER` can use `DOCKER_CERT_PATH` (GitLab's dind setup runs jobs
/// as any user). On the host the 0700 job dir above still keeps other users out. The key is
/// not worth more than the job's own daemon: `client/` is mounted into this job's containers
/// only, and the certificate is accepted only by this job's sidecar (per-job CA, expiring with
/// the job); see `docs/security.md`.
const CLIENT_DIR_MODE: u32 = 0o755;
const CLIENT_FILE_MODE: u32 = 0o644;
/// Mode of `policy/`: the sidecar's daemon, whatever uid it runs as, reaches the socket in it.
/// Only the runner writes there; the 0700 job dir keeps other host users out.
const POLICY_DIR_MODE: u32 = 0o755;

/// Writes a job's certificates, the server and client halves in separate subdirectories so
/// each container gets only its half: the job dir 0700, `server/` 0700 with 0600 files,
/// `client/` 0755 with 0644 files (see [`CLIENT_DIR_MODE`] for why).
pub async fn write_cert_dir(
    state_dir: &Path,
    runner_id: &str,
    job: JobId,
    pki: &JobPki,
) -> Result<CertDir, Error> {
    let base = runner_cert_root(state_dir, runner_id)?;
    let dir = cert_dir(state_dir, runner_id, job)?;
    let files: Vec<(PathBuf, u32, zeroize::Zeroizing<String>)> = [
        (&dir.server, SERVER_FILE_MODE, &pki.server),
        (&dir.client, CLIENT_FILE_MODE, &pki.client),
    ]
    .into_iter()
    .flat_map(|(d, mode, b)| {
        [
            (
                d.join("ca.pem"),
                mode,
                zeroize::Zeroizing::new(b.ca_pem.clone()),
            ),
            (
                d.join("cert.pem"),
                mode,
                zeroize::Zeroizing::new(b.cert_pem.clone()),
            ),
            (
                d.join("key.pem"),
                mode,
                zeroize::Zeroizing::new(b.key_pem.expose().to_string()),
            ),
        ]
    })
    .collect();
    let d = dir.clone();
    blocking(move || {
        make_cert_dirs(&base, &d, &mut || {})?;
        for (path, mode, content) in files {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .custom_flags(libc_o_nofollow())
                .open(&path)
                .map_err(io("create", &path))?;
            // The umask may have cleared bits of `mode`; set it exactly (on the descriptor).
            f.set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(io("chmod", &path))?;
            f.write_all(content.as_bytes())
                .map_err(io("write", &path))?;
        }
        Ok(())
    })
    .await?;
    Ok(dir)
}

/// Creates `<state_dir>/certs/<runner>` (0700, if missing) and a fresh job dir with its two
/// halves. `between` runs after the parents exist and before the job dir is made (tests use it
/// to play the race below). Blocking.
fn make_cert_dirs(base: &Path, d: &CertDir, between: &mut dyn FnMut()) -> Result<(), Error> {
    let mut retried = false;
    loop {
        for p in [state_dir_certs(base), base.to_path_buf()] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&p)
                .map_err(io("create", &p))?;
        }
        between();
        remove_path(&d.root)?;
        match std::fs::DirBuilder::new()
            .mode(CERT_ROOT_MODE)
            .create(&d.root)
        {
            Ok(()) => break,
            // The last job of this runner removed the then empty runner dir between our
            // `mkdir -p` and this `mkdir` (see `remove_cert_dir`): make it again. Once is
            // enough in practice; a second loss is reported rather than looped on.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !retried => retried = true,
            Err(e) => return Err(io("create", &d.root)(e)),
        }
    }
    // From here on the runner dir is not empty, so no teardown removes it under us.
    for (p, mode) in [
        (&d.root, CERT_ROOT_MODE),
        (&d.server, SERVER_DIR_MODE),
        (&d.client, CLIENT_DIR_MODE),
        (&d.policy, POLICY_DIR_MODE),
    ] {
        if p != &d.root {
            std::fs::DirBuilder::new()
                .mode(mode)
                .create(p)
                .map_err(io("create", p))?;
        }
        // The umask may have cleared bits of `mode`; set it exactly.
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
            .map_err(io("chmod", p))?;
    }
    Ok(())
}

fn state_dir_certs(runner_root: &Path) -> PathBuf {
    runner_root
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| runner_root.to_path_buf())
}

fn libc_o_nofollow() -> i32 {
    OFlag::O_NOFOLLOW.bits()
}

/// Removes a job's certificate directory, then the runner's directory above it when that is
/// now empty. Returns whether the job's directory existed.
pub async fn remove_cert_dir(dir: &CertDir) -> Result<bool, Error> {
    remove_job_cert_dir(&dir.root).await
}

/// Removes the certificate directory `path` of one job (`<state_dir>/certs/<runner>/job-<id>`)
/// and the runner's directory above it when that is now empty (teardown, reaper, cleanup).
/// Returns whether the job's directory existed.
pub async fn remove_job_cert_dir(path: &Path) -> Result<bool, Error> {
    let root = path.to_path_buf();
    blocking(move || {
        let existed = remove_path(&root)?;
        if let Some(runner_dir) = root.parent() {
            remove_dir_if_empty(runner_dir)?;
        }
        Ok(existed)
    })
    .await
}

/// `rmdir`: removes `dir` when it is empty. Another job of the runner may be creating its own
/// directory in it at the same moment, so "not empty" and "already gone" are not errors (the
/// creator retries when the directory vanishes under it: `make_cert_dirs`). A symlink is
/// never followed (`rmdir` on one fails with ENOTDIR, reported). Returns whether it removed
/// the directory. Blocking.
pub fn remove_dir_if_empty(dir: &Path) -> Result<bool, Error> {
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(true),
        Err(e)
            if matches!(
                e.raw_os_error().map(Errno::from_raw),
                Some(Errno::ENOTEMPTY | Errno::EEXIST | Errno::ENOENT)
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(io("rmdir", dir)(e)),
    }
}

/// Lists `(job id, path)` of the certificate directories a runner left in `state_dir`.
pub async fn list_cert_dirs(
    state_dir: &Path,
    runner_id: &str,
) -> Result<Vec<(JobId, PathBuf)>, Error> {
    let base = runner_cert_root(state_dir, runner_id)?;
    blocking(move || {
        let rd = match std::fs::read_dir(&base) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("read", &base)(e)),
        };
        let mut out = Vec::new();
        for entry in rd {
            let entry = entry.map_err(io("read", &base))?;
            let name = entry.file_name();
            if let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_prefix("job-"))
                .and_then(|n| n.parse::<JobId>().ok())
            {
                out.push((id, entry.path()));
            }
        }
        Ok(out)
    })
    .await
}

/// Removes any path safely (async wrapper of [`remove_path`]).
pub async fn remove_path_async(path: &Path) -> Result<bool, Error> {
    let p = path.to_path_buf();
    blocking(move || remove_path(&p)).await
}

#[cfg(test)]
mod tests;
