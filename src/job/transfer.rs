//! The artifact stages of the pipeline: dependencies' artifacts downloaded and extracted into
//! the checkout before the steps, the job's artifacts collected and uploaded after them. Both
//! go through the runner's own staging dir and the project dir's handle (findings C1, H1).

use super::artifacts::{self, JobRef};
use super::helper_files::{UNTRACKED_LIST, parse_untracked, read_untracked_list, untracked_script};
use super::pipeline::Pipeline;
use super::stage::{Guards, StageEnd, export_env};
use super::staging::{Staging, StagingError};
use super::vars::Variables;
use crate::gitlab::types::{Artifact, Dependency, JobResponse};
use crate::isolation::{JobEnvironment, JobPaths, Role, ScriptUser};
use crate::paths::Dir;
use crate::trace::JobLog;
use std::path::PathBuf;
use std::sync::Arc;

impl Pipeline {
    pub(super) async fn download_dependency(
        &self,
        job: &JobResponse,
        dep: &Dependency,
        paths: &JobPaths,
        log: &JobLog,
    ) -> Result<(), String> {
        log.line(&format!(
            "Downloading artifacts for {} ({})...",
            dep.name, dep.id
        ));
        // Downloaded into the runner's own staging dir, not the job's tmp dir (finding C1),
        // and extracted from that same descriptor.
        let root = self.staging_root.clone();
        let job_id = job.id;
        let staged = tokio::task::spawn_blocking(move || {
            let staging = Staging::create(&root, job_id)?;
            let file = staging.create_file("dependency.zip")?;
            Ok::<_, StagingError>((staging, file))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("downloading artifacts of {}: {e}", dep.name))?;
        let (staging, file) = staged;
        let me = job_ref(job);
        self.artifacts
            .download(&me, dep, &file)
            .await
            .map_err(|e| format!("downloading artifacts of {} ({}): {e}", dep.name, dep.id))?;
        let project = paths.project_dir.clone();
        let res = tokio::task::spawn_blocking(move || {
            let dest = Dir::open_job_dir(&project).map_err(|e| artifacts::ArtifactError::Io {
                context: "open the project dir".into(),
                source: std::io::Error::other(e),
            })?;
            let res = artifacts::extract_zip(&file, &dest);
            drop(staging);
            res
        })
        .await
        .map_err(|e| e.to_string())?;
        let (n, warnings) =
            res.map_err(|e| format!("extracting artifacts of {}: {e}", dep.name))?;
        for w in warnings {
            log.warning(&w);
        }
        log.line(&format!("Extracted {n} entries"));
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn upload_artifact(
        &self,
        job: &JobResponse,
        artifact: &Artifact,
        env: &dyn JobEnvironment,
        vars: &Variables,
        paths: &JobPaths,
        log: &Arc<JobLog>,
        guards: &Guards,
    ) -> Result<(), String> {
        let host = env.host_dirs().clone();
        let file_name = artifacts::archive_file_name(artifact);
        let untracked = if artifact.untracked {
            self.untracked_files(env, vars, paths, log, guards).await?
        } else {
            Vec::new()
        };
        let patterns: Vec<String> = artifact.paths.iter().map(|p| vars.expand(p)).collect();
        let exclude: Vec<String> = artifact.exclude.iter().map(|p| vars.expand(p)).collect();
        let a = artifact.clone();
        let project = paths.project_dir.clone();
        let host_project = host.project_dir.clone();
        let root = self.staging_root.clone();
        let job_id = job.id;
        let staged_name = format!("upload-{file_name}");
        // Every read of the project goes through its handle; the archive is created in the
        // runner's staging dir (O_CREAT|O_EXCL|O_NOFOLLOW) and uploaded from the same
        // descriptor (findings C1, H1).
        let built = tokio::task::spawn_blocking(move || {
            let dir = Dir::open_job_dir(&host_project).map_err(|e| format!("{e}"))?;
            let c = artifacts::collect(&project, &dir, &patterns, &exclude, &untracked)
                .map_err(|e| e.to_string())?;
            if c.files.is_empty() {
                return Ok((None, artifacts::Built::default(), c.warnings));
            }
            let staging = Staging::create(&root, job_id).map_err(|e| e.to_string())?;
            let file = staging
                .create_file(&staged_name)
                .map_err(|e| e.to_string())?;
            let built =
                artifacts::build_archive(&a, &dir, &c.files, &file).map_err(|e| e.to_string())?;
            Ok::<_, String>((Some((staging, file)), built, c.warnings))
        })
        .await
        .map_err(|e| e.to_string())?;
        let (staged, built, warnings) = built.map_err(|e| format!("collecting artifacts: {e}"))?;
        for w in warnings.iter().chain(&built.warnings) {
            log.warning(w);
        }
        let n = built.entries;
        let Some((staging, file)) = staged.filter(|_| n > 0) else {
            log.warning(&format!("{file_name}: no files to upload"));
            return Ok(());
        };
        log.line(&format!("Uploading {file_name} ({n} entries)..."));
        let res = self
            .artifacts
            .upload(&job_ref(job), artifact, &file, &file_name)
            .await;
        drop(file);
        drop(staging);
        res.map_err(|e| format!("uploading {file_name}: {e}"))?;
        log.line(&format!("Uploaded {file_name}"));
        Ok(())
    }

    /// Lists untracked files with git in the helper; a directory that is not a git repository
    /// counts as all untracked.
    async fn untracked_files(
        &self,
        env: &dyn JobEnvironment,
        vars: &Variables,
        paths: &JobPaths,
        log: &Arc<JobLog>,
        guards: &Guards,
    ) -> Result<Vec<PathBuf>, String> {
        let list = paths.tmp_dir.join(UNTRACKED_LIST);
        let script = untracked_script(&paths.project_dir, &list);
        match self
            .run_stage(
                env,
                log,
                guards,
                Role::Helper,
                &ScriptUser::default(),
                script,
                export_env(vars),
            )
            .await
        {
            StageEnd::Ok => {}
            StageEnd::Exit(c) => return Err(format!("listing untracked files exited with {c}")),
            StageEnd::Stopped(_) => return Err("listing untracked files was stopped".into()),
            StageEnd::System(e) => return Err(format!("listing untracked files: {e}")),
        }
        let data = read_untracked_list(&env.host_dirs().tmp_dir).await?;
        Ok(parse_untracked(&data))
    }
}

pub(super) fn job_ref(job: &JobResponse) -> JobRef {
    JobRef {
        id: job.id,
        name: job.job_info.name.clone(),
        token: job.token.clone(),
    }
}
