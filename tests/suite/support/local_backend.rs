//! A test double for `Isolation`: scripts run with local bash in temp dirs (both roles), every
//! call is recorded, and failures can be injected.

use isolated_runner::config::IsolationMode;
use isolated_runner::gitlab::types::{Artifact, Dependency};
use isolated_runner::isolation::{
    EnvironmentSpec, Error, Isolation, JobEnvironment, JobPaths, OutputSink, Role, ScriptRequest,
    TeardownReport,
};
use isolated_runner::job::{ArtifactError, ArtifactStore, JobRef};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

/// What the double should get wrong.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// `prepare` fails.
    pub fail_prepare: bool,
    /// Scripts of this role hang (until cancelled) instead of running.
    pub hang_role: Option<Role>,
    /// The n-th script (0-based) reports a dead sidecar.
    pub sidecar_dies_at: Option<usize>,
    /// The n-th script (0-based) panics inside `run_script` (a backend bug).
    pub panic_at: Option<usize>,
    /// Keep the job dirs at teardown (a persistent builds volume, for `GIT_STRATEGY=fetch`).
    pub keep_dirs: bool,
}

/// One recorded script.
#[derive(Debug, Clone)]
pub struct ScriptCall {
    /// Role asked for.
    pub role: Role,
    /// The script.
    pub script: String,
    /// Its environment.
    pub env: Vec<(String, String)>,
}

/// Shared record of what happened.
#[derive(Debug, Default)]
pub struct Record {
    /// `prepare`, `script`, `teardown`, in order.
    pub calls: Vec<String>,
    /// Every script run.
    pub scripts: Vec<ScriptCall>,
    /// The last spec given to `prepare`.
    pub spec: Option<EnvironmentSpec>,
}

/// The double.
pub struct LocalIsolation {
    /// Builds root; removed when the double is dropped.
    pub root: tempfile::TempDir,
    /// What happened.
    pub record: Arc<Mutex<Record>>,
    /// Injected faults.
    pub faults: Faults,
}

impl LocalIsolation {
    /// A double with these faults.
    pub fn new(faults: Faults) -> Arc<Self> {
        Arc::new(LocalIsolation {
            root: tempfile::tempdir().expect("tempdir for builds"),
            record: Arc::default(),
            faults,
        })
    }

    /// Recorded calls.
    pub fn calls(&self) -> Vec<String> {
        self.record.lock().expect("record").calls.clone()
    }

    /// How many teardowns ran.
    pub fn teardowns(&self) -> usize {
        self.calls().iter().filter(|c| *c == "teardown").count()
    }

    /// Recorded scripts.
    pub fn scripts(&self) -> Vec<ScriptCall> {
        self.record.lock().expect("record").scripts.clone()
    }

    /// The builds dir.
    pub fn builds(&self) -> PathBuf {
        self.root.path().join("builds")
    }
}

#[async_trait::async_trait]
impl Isolation for LocalIsolation {
    fn mode(&self) -> IsolationMode {
        IsolationMode::SharedSocket
    }

    async fn prepare(
        &self,
        spec: &EnvironmentSpec,
        out: Arc<dyn OutputSink>,
        _cancel: CancellationToken,
    ) -> Result<Box<dyn JobEnvironment>, Error> {
        {
            let mut r = self.record.lock().expect("record");
            r.calls.push("prepare".into());
            r.spec = Some(spec.clone());
        }
        if self.faults.fail_prepare {
            return Err(Error::Other {
                context: "creating the sidecar".into(),
                detail: "injected failure".into(),
            });
        }
        let project_dir = self.builds().join(format!("gitlab-job-{}", spec.job_id));
        let tmp_dir = self
            .builds()
            .join(format!("gitlab-job-{}.tmp", spec.job_id));
        for d in [&project_dir, &tmp_dir] {
            tokio::fs::create_dir_all(d)
                .await
                .map_err(|e| Error::Other {
                    context: "mkdir".into(),
                    detail: e.to_string(),
                })?;
        }
        out.write(b"local test backend ready\n");
        Ok(Box::new(LocalEnv {
            paths: JobPaths {
                project_dir,
                tmp_dir,
            },
            record: self.record.clone(),
            faults: self.faults.clone(),
        }))
    }

    // No images, no pool: scripts run on this machine.
    async fn ensure_images(
        &self,
        _plan: &isolated_runner::isolation::images::PullPlan,
        _out: Arc<dyn OutputSink>,
    ) -> Result<(), Error> {
        Ok(())
    }

    async fn warm_up(&self, _runner_id: &str) {}

    fn standby_ids(&self) -> Vec<u64> {
        Vec::new()
    }

    fn kept_ids(&self) -> Vec<u64> {
        Vec::new()
    }

    fn set_job_cap(&self, _cap: usize) {}

    fn pool_target(&self) -> Option<usize> {
        None
    }

    async fn shutdown(&self) -> TeardownReport {
        TeardownReport::default()
    }
}

struct LocalEnv {
    paths: JobPaths,
    record: Arc<Mutex<Record>>,
    faults: Faults,
}

#[async_trait::async_trait]
impl JobEnvironment for LocalEnv {
    fn paths(&self) -> &JobPaths {
        &self.paths
    }

    fn job_env(&self) -> Vec<(String, String)> {
        vec![("LOCAL_BACKEND".into(), "1".into())]
    }

    async fn run_script(
        &self,
        req: ScriptRequest,
        out: Arc<dyn OutputSink>,
        cancel: CancellationToken,
    ) -> Result<i32, Error> {
        let n = {
            let mut r = self.record.lock().expect("record");
            r.calls.push("script".into());
            r.scripts.push(ScriptCall {
                role: req.role,
                script: req.script.clone(),
                env: req.env.clone(),
            });
            r.scripts.len() - 1
        };
        if self.faults.sidecar_dies_at == Some(n) {
            return Err(Error::SidecarDied {
                container: "local-sidecar".into(),
                detail: "injected: exited with 137".into(),
            });
        }
        if self.faults.panic_at == Some(n) {
            panic!("injected: run_script panicked");
        }
        if self.faults.hang_role == Some(req.role) {
            cancel.cancelled().await;
            return Err(Error::Canceled);
        }
        let mut cmd = tokio::process::Command::new("bash");
        cmd.arg("-c")
            .arg(format!("exec 2>&1\n{}", req.script))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env(
                "HOME",
                std::env::var("HOME").unwrap_or_else(|_| "/tmp".into()),
            )
            .envs(req.env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| Error::Other {
            context: "spawning bash".into(),
            detail: e.to_string(),
        })?;
        let pid = child.id().map(|p| p as i32);
        let mut stdout = child.stdout.take().expect("piped stdout");
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                out.write(&buf[..n]);
            }
        });
        tokio::select! {
            status = child.wait() => {
                // Reader ends at EOF; background processes of the script are the script's problem.
                let _ = reader.await;
                let status = status.map_err(|e| Error::Other { context: "waiting for bash".into(), detail: e.to_string() })?;
                Ok(status.code().unwrap_or(128 + 9))
            }
            _ = cancel.cancelled() => {
                if let Some(pid) = pid {
                    let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
                }
                let _ = child.wait().await;
                reader.abort();
                Err(Error::Canceled)
            }
        }
    }

    // No users, no image, no services: a user's script runs as any script.
    async fn run_script_as(
        &self,
        req: ScriptRequest,
        _user: &isolated_runner::isolation::ScriptUser,
        out: Arc<dyn OutputSink>,
        cancel: CancellationToken,
    ) -> Result<i32, Error> {
        self.run_script(req, out, cancel).await
    }

    fn host_dirs(&self) -> &JobPaths {
        &self.paths
    }

    async fn image_user(&self) -> Result<Option<String>, Error> {
        Ok(None)
    }

    async fn wait_for_services(
        &self,
        _timeout: std::time::Duration,
        _cancel: CancellationToken,
    ) -> Vec<isolated_runner::isolation::ServiceWarning> {
        Vec::new()
    }

    async fn service_logs(&self, _lines: usize) -> Vec<isolated_runner::isolation::ServiceLog> {
        Vec::new()
    }

    fn resources(&self) -> isolated_runner::isolation::EnvironmentResources {
        isolated_runner::isolation::EnvironmentResources::of_paths(&self.paths)
    }

    async fn teardown(self: Box<Self>) -> TeardownReport {
        self.record
            .lock()
            .expect("record")
            .calls
            .push("teardown".into());
        let mut report = TeardownReport::default();
        if !self.faults.keep_dirs {
            for d in [&self.paths.project_dir, &self.paths.tmp_dir] {
                match tokio::fs::remove_dir_all(d).await {
                    Ok(()) => report.removed.push(format!("dir {}", d.display())),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => report.failures.push(format!("dir {}: {e}", d.display())),
                }
            }
        }
        report
    }
}

/// An artifact store that keeps uploaded archives in a temp dir.
pub struct RecordingStore {
    /// Where archives are kept.
    pub dir: tempfile::TempDir,
    /// (file name, stored path).
    pub uploads: Mutex<Vec<(String, PathBuf)>>,
}

impl RecordingStore {
    /// An empty store.
    pub fn new() -> Arc<Self> {
        Arc::new(RecordingStore {
            dir: tempfile::tempdir().expect("tempdir"),
            uploads: Mutex::default(),
        })
    }

    /// Uploaded archives.
    pub fn uploads(&self) -> Vec<(String, PathBuf)> {
        self.uploads.lock().expect("uploads").clone()
    }
}

#[async_trait::async_trait]
impl ArtifactStore for RecordingStore {
    async fn upload(
        &self,
        _job: &JobRef,
        _artifact: &Artifact,
        archive: &std::fs::File,
        file_name: &str,
    ) -> Result<(), ArtifactError> {
        use std::io::Seek;
        let to = self.dir.path().join(file_name);
        // The store gets the runner's open file; copy from its start.
        let mut from = archive
            .try_clone()
            .map_err(|e| ArtifactError::Store(e.to_string()))?;
        from.rewind()
            .map_err(|e| ArtifactError::Store(e.to_string()))?;
        let mut out =
            std::fs::File::create(&to).map_err(|e| ArtifactError::Store(e.to_string()))?;
        std::io::copy(&mut from, &mut out).map_err(|e| ArtifactError::Store(e.to_string()))?;
        self.uploads
            .lock()
            .expect("uploads")
            .push((file_name.to_string(), to));
        Ok(())
    }

    async fn download(
        &self,
        _job: &JobRef,
        dependency: &Dependency,
        _dest: &std::fs::File,
    ) -> Result<(), ArtifactError> {
        Err(ArtifactError::NotFound(dependency.id))
    }
}
