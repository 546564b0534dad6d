//! Artifacts kept by GitLab: the pipeline's [`ArtifactStore`] over the wire layer's
//! [`ArtifactClient`]. Here, in job/, so gitlab/ stays a pure wire layer that knows nothing of
//! the pipeline that uses it.

use super::artifacts::{ArtifactError, ArtifactStore, JobRef};
use crate::gitlab::{self, ArtifactClient, UploadOptions, types};
use std::fs::File;

#[async_trait::async_trait]
impl ArtifactStore for ArtifactClient {
    async fn upload(
        &self,
        job: &JobRef,
        artifact: &types::Artifact,
        archive: &File,
        file_name: &str,
    ) -> Result<(), ArtifactError> {
        let options = UploadOptions {
            artifact_type: if artifact.artifact_type.is_empty() {
                "archive".to_string()
            } else {
                artifact.artifact_type.clone()
            },
            artifact_format: if artifact.artifact_format.is_empty() {
                "zip".to_string()
            } else {
                artifact.artifact_format.clone()
            },
            expire_in: artifact.expire_in.clone().filter(|e| !e.is_empty()),
            file_name: file_name.to_string(),
        };
        ArtifactClient::upload(self, job.id, &job.token, archive, &options)
            .await
            .map_err(|e| match e {
                // 413 is the one failure a user can act on: say so plainly in the trace.
                gitlab::Error::TooLarge { .. } => ArtifactError::Store(format!(
                    "{e}: the archive is larger than GitLab's maximum artifacts size; \
                     narrow `artifacts:paths` or raise the limit in GitLab"
                )),
                other => ArtifactError::Store(other.to_string()),
            })
    }

    async fn download(
        &self,
        job: &JobRef,
        dependency: &types::Dependency,
        dest: &File,
    ) -> Result<(), ArtifactError> {
        // Current GitLab hands the running job's token for dependencies; older versions the
        // dependency's own. Use the dependency's when it is set.
        let token = if dependency.token.is_empty() {
            &job.token
        } else {
            &dependency.token
        };
        ArtifactClient::download(self, dependency.id, token, dest)
            .await
            .map(|_| ())
            .map_err(|e| ArtifactError::Store(e.to_string()))
    }
}
