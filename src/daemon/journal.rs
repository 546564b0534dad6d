//! The crash journal: one file per running job under `<state_dir>/jobs/`, so a runner that was
//! killed (SIGKILL, OOM, power loss) can clean up and report its jobs when it starts again.
//!
//! An entry is written right after GitLab accepted `PUT state=running`, rewritten once the
//! environment is prepared (with what it made) and whenever the acknowledged trace offset moves,
//! marked `final_sent` once GitLab has the final state (the teardown runs after it), and removed
//! when the teardown is over. Every write is atomic (temp file with mode 0600, fsync,
//! rename, fsync of the 0700 directory), so a crash leaves either the old or the new entry,
//! never a torn one. The entry holds the job token: without it the restarted runner cannot append to
//! the trace or report the job failed (GitLab authenticates those calls with the job token only),
//! and the job would hang until GitLab's own timeout. See `docs/crash-recovery.md`.

use crate::isolation::EnvironmentResources;
use crate::job::executor::JobObserver;
use crate::secret::Secret;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Errors of the journal.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory could not be read or written.
    #[error("journal {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An entry could not be parsed.
    #[error("journal entry {path} cannot be read: {source}")]
    Parse {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The format version written into every entry.
pub const ENTRY_VERSION: u32 = 1;

/// One running job as the journal records it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct JournalEntry {
    /// [`ENTRY_VERSION`].
    pub version: u32,
    /// GitLab job id.
    pub job_id: u64,
    /// The job token: the only credential that can patch the trace and report the job.
    pub job_token: Secret,
    /// `[[runners]] url`.
    pub gitlab_url: String,
    /// `[[runners]] name`.
    pub runner_name: String,
    /// The runner id objects are labelled with (the system id).
    pub runner_id: String,
    /// The entry's builds dir (job dirs).
    pub builds_dir: PathBuf,
    /// The state dir (cert dirs).
    pub state_dir: PathBuf,
    /// `dind` or `shared-socket`.
    pub isolation_mode: String,
    /// `features.failure_reasons` of the job, to map the reason like a normal final update.
    #[serde(default)]
    pub failure_reasons: Vec<String>,
    /// Unix seconds when the job started.
    pub started_at: u64,
    /// What the environment made, once prepared.
    #[serde(default)]
    pub resources: Option<EnvironmentResources>,
    /// Trace bytes GitLab has acknowledged.
    #[serde(default)]
    pub trace_offset: u64,
    /// CRC-32 over those bytes (continues into the checksum of the final update).
    #[serde(default)]
    pub trace_crc32: u32,
    /// GitLab has the job's final state; only the teardown was left (it runs after the final
    /// update). Recovery then removes what the job left and reports nothing.
    #[serde(default)]
    pub final_sent: bool,
}

/// The journal of one runner process. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    /// The in-memory truth; files follow it. A write for a job no longer here deletes the
    /// file instead, so a late refresh can never resurrect a finished job.
    entries: Mutex<HashMap<u64, JournalEntry>>,
    /// Serialises file writes so they land in the order of the changes.
    write: tokio::sync::Mutex<()>,
}

impl Journal {
    /// Opens (creating, mode 0700) `<state_dir>/jobs`.
    pub async fn open(state_dir: &Path) -> Result<Journal, Error> {
        let dir = state_dir.join("jobs");
        let d = dir.clone();
        tokio::task::spawn_blocking(move || -> Result<(), Error> {
            use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&d)
                .map_err(io(&d))?;
            // An existing dir may have a looser mode from an older install.
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).map_err(io(&d))
        })
        .await
        .map_err(|e| Error::Io {
            path: dir.clone(),
            source: std::io::Error::other(e),
        })??;
        Ok(Journal {
            dir,
            entries: Mutex::new(HashMap::new()),
            write: tokio::sync::Mutex::new(()),
        })
    }

    /// `<state_dir>/jobs`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of `job_id`.
    pub fn path_of(&self, job_id: u64) -> PathBuf {
        self.dir.join(format!("{job_id}.json"))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, JournalEntry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Entries left on disk by an earlier process (read at start-up, before any job runs).
    /// Files that cannot be read are returned as errors and left in place for the operator.
    pub async fn pending(&self) -> Vec<Result<JournalEntry, Error>> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            let rd = match std::fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) => return vec![Err(io(&dir)(e))],
            };
            for de in rd.flatten() {
                let name = de.file_name();
                let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                    continue;
                };
                if stem.is_empty() || !stem.bytes().all(|b| b.is_ascii_digit()) {
                    continue;
                }
                let path = de.path();
                out.push(std::fs::read(&path).map_err(io(&path)).and_then(|b| {
                    serde_json::from_slice::<JournalEntry>(&b).map_err(|source| Error::Parse {
                        path: path.clone(),
                        source,
                    })
                }));
            }
            out
        })
        .await
        .unwrap_or_default()
    }

    /// Records a job that just started running.
    pub async fn record(&self, entry: JournalEntry) -> Result<(), Error> {
        let id = entry.job_id;
        self.lock().insert(id, entry);
        self.persist(id).await
    }

    /// Adds what the job's environment made.
    pub async fn set_resources(
        &self,
        job_id: u64,
        resources: &EnvironmentResources,
    ) -> Result<(), Error> {
        match self.lock().get_mut(&job_id) {
            Some(e) => e.resources = Some(resources.clone()),
            None => return Ok(()),
        }
        self.persist(job_id).await
    }

    /// Moves the acknowledged trace offset; writes only when it changed.
    pub async fn set_trace(&self, job_id: u64, offset: u64, crc32: u32) -> Result<(), Error> {
        match self.lock().get_mut(&job_id) {
            Some(e) if e.trace_offset != offset => {
                e.trace_offset = offset;
                e.trace_crc32 = crc32;
            }
            _ => return Ok(()),
        }
        self.persist(job_id).await
    }

    /// Marks a job whose final state went out and whose teardown is still to run: a crash
    /// from here on leaves the teardown to recovery, which reports nothing more.
    pub async fn set_final_sent(&self, job_id: u64) -> Result<(), Error> {
        match self.lock().get_mut(&job_id) {
            Some(e) if !e.final_sent => e.final_sent = true,
            _ => return Ok(()),
        }
        self.persist(job_id).await
    }

    /// Forgets a job (its final update was sent and its teardown over, or it was recovered).
    pub async fn remove(&self, job_id: u64) -> Result<(), Error> {
        self.lock().remove(&job_id);
        self.persist(job_id).await
    }

    /// Brings the file of `job_id` in line with memory.
    async fn persist(&self, job_id: u64) -> Result<(), Error> {
        let _order = self.write.lock().await;
        let entry = self.lock().get(&job_id).cloned();
        let path = self.path_of(job_id);
        let dir = self.dir.clone();
        let body = match &entry {
            Some(e) => Some(serde_json::to_vec_pretty(e).map_err(|source| Error::Parse {
                path: path.clone(),
                source,
            })?),
            None => None,
        };
        let p = path.clone();
        tokio::task::spawn_blocking(move || match body {
            Some(b) => write_atomic(&dir, &p, &b),
            None => match std::fs::remove_file(&p) {
                Ok(()) => sync_dir(&dir),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io(&p)(e)),
            },
        })
        .await
        .map_err(|e| Error::Io {
            path,
            source: std::io::Error::other(e),
        })?
    }
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))
}

/// Temp file (0600, never following a planted symlink) + fsync + rename + fsync of the dir.
fn write_atomic(dir: &Path, path: &Path, body: &[u8]) -> Result<(), Error> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("entry"),
        uuid::Uuid::new_v4().simple()
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(&tmp)
            .map_err(io(&tmp))?;
        f.write_all(body).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io(path))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[async_trait::async_trait]
impl JobObserver for Journal {
    async fn environment_ready(&self, job_id: u64, resources: &EnvironmentResources) {
        if let Err(e) = self.set_resources(job_id, resources).await {
            tracing::warn!(job.id = job_id, error = %e, "cannot record the job's resources in the journal");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn entry(id: u64) -> JournalEntry {
        JournalEntry {
            version: ENTRY_VERSION,
            job_id: id,
            job_token: Secret::new("glcbt-secret"),
            gitlab_url: "https://gitlab.example/".into(),
            runner_name: "r".into(),
            runner_id: "s_0123456789ab".into(),
            builds_dir: "/builds".into(),
            state_dir: "/state".into(),
            isolation_mode: "dind".into(),
            failure_reasons: vec![],
            started_at: 1,
            resources: None,
            trace_offset: 0,
            trace_crc32: 0,
            final_sent: false,
        }
    }

    #[tokio::test]
    async fn entries_round_trip_with_private_modes_and_go_away() {
        let tmp = tempfile::tempdir().unwrap();
        let j = Journal::open(tmp.path()).await.unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(j.dir()), 0o700);
        j.record(entry(7)).await.unwrap();
        assert_eq!(mode(&j.path_of(7)), 0o600);
        let res = EnvironmentResources {
            network: Some("ir-x-7-net".into()),
            ..Default::default()
        };
        j.set_resources(7, &res).await.unwrap();
        j.set_trace(7, 42, 0xdead).await.unwrap();
        std::fs::write(j.dir().join("notes.txt"), "ignored").unwrap();
        let again = Journal::open(tmp.path()).await.unwrap();
        let got: Vec<JournalEntry> = again
            .pending()
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].resources.as_ref().unwrap().network, res.network);
        assert_eq!((got[0].trace_offset, got[0].trace_crc32), (42, 0xdead));
        assert_eq!(got[0].job_token.expose(), "glcbt-secret");
        j.remove(7).await.unwrap();
        assert!(!j.path_of(7).exists());
        // A late update of a removed job does not bring the file back.
        j.set_trace(7, 50, 1).await.unwrap();
        assert!(!j.path_of(7).exists());
        let leftovers: Vec<_> = std::fs::read_dir(j.dir())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .filter(|n| n.to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }

    #[tokio::test]
    async fn a_torn_file_is_reported_not_fatal() {
        let tmp = tempfile::tempdir().unwrap();
        let j = Journal::open(tmp.path()).await.unwrap();
        std::fs::write(j.path_of(3), "{not json").unwrap();
        let got = j.pending().await;
        assert_eq!(got.len(), 1);
        assert!(matches!(got[0], Err(Error::Parse { .. })));
    }
}
