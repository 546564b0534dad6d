//! Wire types of the job payload GitLab sends in answer to `POST /api/v4/jobs/request`.
//!
//! Lenient on purpose: GitLab adds fields regularly, arrays can be `null` and some fields are
//! present only when true. Unknown fields are ignored; every optional field has a default.
//! See `gitlab-runner-protocol.md` section 4.

use crate::secret::Secret;
use serde::{Deserialize, Deserializer, Serialize};

/// `null` or missing become the type's default (GitLab sends `null` for empty arrays at times).
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// The whole job as GitLab hands it to a runner.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
pub struct JobResponse {
    /// Job id, used in every later URL.
    pub id: u64,
    /// Job token (`glcbt-…`), authenticates every job-scoped call.
    pub token: Secret,
    /// Project setting: default `GIT_STRATEGY` is `fetch` when true, `clone` otherwise.
    #[serde(default, deserialize_with = "null_default")]
    pub allow_git_fetch: bool,
    /// Names and ids.
    #[serde(default, deserialize_with = "null_default")]
    pub job_info: JobInfo,
    /// What to clone.
    #[serde(default, deserialize_with = "null_default")]
    pub git_info: GitInfo,
    /// Timeout and session.
    #[serde(default, deserialize_with = "null_default")]
    pub runner_info: RunnerInfo,
    /// Variables in order; later entries override earlier ones with the same key.
    #[serde(default, deserialize_with = "null_default")]
    pub variables: Vec<JobVariable>,
    /// `script` (before_script + script), `release`, `after_script`.
    #[serde(default, deserialize_with = "null_default")]
    pub steps: Vec<Step>,
    /// The job's image, when the job names one.
    #[serde(default)]
    pub image: Option<Image>,
    /// `services:` of the job.
    #[serde(default, deserialize_with = "null_default")]
    pub services: Vec<Image>,
    /// `artifacts:` of the job (user archive and reports).
    #[serde(default, deserialize_with = "null_default")]
    pub artifacts: Vec<Artifact>,
    /// `cache:` of the job.
    #[serde(default, deserialize_with = "null_default")]
    pub cache: Vec<Cache>,
    /// Registry credentials.
    #[serde(default, deserialize_with = "null_default")]
    pub credentials: Vec<Credentials>,
    /// Earlier jobs whose artifacts this job needs.
    #[serde(default, deserialize_with = "null_default")]
    pub dependencies: Vec<Dependency>,
    /// What this GitLab supports.
    #[serde(default, deserialize_with = "null_default")]
    pub features: GitlabFeatures,
    /// `hooks:` of the job (`pre_get_sources_script`, `post_get_sources_script`).
    #[serde(default, deserialize_with = "null_default")]
    pub hooks: Vec<Hook>,
}

/// `job_info` (protocol 4.1).
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
pub struct JobInfo {
    /// Same as the top-level id.
    #[serde(default)]
    pub id: u64,
    /// Job name.
    #[serde(default, deserialize_with = "null_default")]
    pub name: String,
    /// Stage name.
    #[serde(default, deserialize_with = "null_default")]
    pub stage: String,
    /// Project id.
    #[serde(default)]
    pub project_id: u64,
    /// Project name.
    #[serde(default, deserialize_with = "null_default")]
    pub project_name: String,
    /// `group/project`, newer GitLab only.
    #[serde(default)]
    pub project_full_path: Option<String>,
    /// Pipeline id, newer GitLab only.
    #[serde(default)]
    pub pipeline_id: Option<u64>,
    /// Seconds the job waited in the queue.
    #[serde(default)]
    pub time_in_queue_seconds: Option<f64>,
}

/// `git_info` (protocol 4.2).
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
pub struct GitInfo {
    /// Clone URL with the job token embedded; treat as a secret.
    #[serde(default)]
    pub repo_url: Secret,
    /// `sha1` or `sha256`; empty means `sha1`.
    #[serde(default, deserialize_with = "null_default")]
    pub repo_object_format: String,
    /// Branch or tag name.
    #[serde(default, deserialize_with = "null_default")]
    pub r#ref: String,
    /// Commit to check out.
    #[serde(default, deserialize_with = "null_default")]
    pub sha: String,
    /// Previous commit of the push.
    #[serde(default, deserialize_with = "null_default")]
    pub before_sha: String,
    /// `branch` or `tag`.
    #[serde(default, deserialize_with = "null_default")]
    pub ref_type: String,
    /// What to fetch.
    #[serde(default, deserialize_with = "null_default")]
    pub refspecs: Vec<String>,
    /// Shallow depth; 0 = full history.
    #[serde(default, deserialize_with = "null_default")]
    pub depth: u32,
    /// Whether the ref is protected (18.3+). Absent means unprotected: `CI_COMMIT_REF_PROTECTED`
    /// is never a fallback, the job can set it (see `job::trust::is_protected`).
    #[serde(default)]
    pub protected: Option<bool>,
}

/// `runner_info` (protocol 4.3).
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
pub struct RunnerInfo {
    /// Effective job timeout in seconds; 0 or absent means 7200.
    #[serde(default, deserialize_with = "null_default")]
    pub timeout: u64,
}

/// One entry of `variables[]` (protocol 4.4).
#[derive(Clone, Deserialize, Serialize, Default, PartialEq)]
pub struct JobVariable {
    /// Name.
    pub key: String,
    /// Value; `null` becomes empty.
    #[serde(default, deserialize_with = "null_default")]
    pub value: String,
    /// Public variables also go to service containers.
    #[serde(default, deserialize_with = "null_default")]
    pub public: bool,
    /// The value must be masked in the trace.
    #[serde(default, deserialize_with = "null_default")]
    pub masked: bool,
    /// Written to a file; the variable holds the path.
    #[serde(default, deserialize_with = "null_default")]
    pub file: bool,
    /// Never expand `$VAR` inside the value.
    #[serde(default, deserialize_with = "null_default")]
    pub raw: bool,
}

impl std::fmt::Debug for JobVariable {
    // Values may be secrets even when not masked (file variables holding keys), so Debug
    // never prints a value.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobVariable")
            .field("key", &self.key)
            .field("public", &self.public)
            .field("masked", &self.masked)
            .field("file", &self.file)
            .field("raw", &self.raw)
            .finish_non_exhaustive()
    }
}

/// One entry of `steps[]` (protocol 4.5).
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
pub struct Step {
    /// `script`, `release` or `after_script`.
    pub name: String,
    /// One shell command per element.
    #[serde(default, deserialize_with = "null_default")]
    pub script: Vec<String>,
    /// Seconds.
    #[serde(default, deserialize_with = "null_default")]
    pub timeout: u64,
    /// `on_success` (also when empty), `on_failure` or `always`.
    #[serde(default, deserialize_with = "null_default")]
    pub when: String,
    /// A failure of this step does not fail the job.
    #[serde(default, deserialize_with = "null_default")]
    pub allow_failure: bool,
}

/// `image` and `services[]` entries (protocol 4.6).
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
pub struct Image {
    /// Image reference; may contain `$VARS`.
    #[serde(default, deserialize_with = "null_default")]
    pub name: String,
    /// Overrides the image entrypoint.
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    /// Overrides CMD (services).
    #[serde(default, deserialize_with = "null_default")]
    pub command: Vec<String>,
    /// Host names, separated by commas or spaces.
    #[serde(default, deserialize_with = "null_default")]
    pub alias: String,
    /// Ports the image exposes.
    #[serde(default, deserialize_with = "null_default")]
    pub ports: Vec<Port>,
    /// Service-only variables.
    #[serde(default, deserialize_with = "null_default")]
    pub variables: Vec<JobVariable>,
    /// Subset of `always`, `if-not-present`, `never`.
    #[serde(default, deserialize_with = "null_default")]
    pub pull_policy: Vec<String>,
    /// Executor options (`{"docker": {"platform", "user"}}`); unknown keys fail the job.
    #[serde(default)]
    pub executor_opts: Option<serde_json::Value>,
}

/// A port of an image or service.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
pub struct Port {
    /// Port number.
    #[serde(default)]
    pub number: u16,
    /// `tcp` or `udp`.
    #[serde(default, deserialize_with = "null_default")]
    pub protocol: String,
    /// Name.
    #[serde(default, deserialize_with = "null_default")]
    pub name: String,
}

/// One entry of `artifacts[]` (protocol 4.7).
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
pub struct Artifact {
    /// Archive name without extension; `artifacts` when absent.
    #[serde(default)]
    pub name: Option<String>,
    /// Include files git does not track.
    #[serde(default, deserialize_with = "null_default")]
    pub untracked: bool,
    /// Glob patterns relative to the project dir.
    #[serde(default, deserialize_with = "null_default")]
    pub paths: Vec<String>,
    /// Glob patterns to leave out.
    #[serde(default, deserialize_with = "null_default")]
    pub exclude: Vec<String>,
    /// `on_success` (also when empty), `on_failure`, `always`.
    #[serde(default, deserialize_with = "null_default")]
    pub when: String,
    /// Passed back on upload.
    #[serde(default)]
    pub expire_in: Option<String>,
    /// `archive` or a report type.
    #[serde(default, deserialize_with = "null_default")]
    pub artifact_type: String,
    /// `zip`, `gzip` or `raw`.
    #[serde(default, deserialize_with = "null_default")]
    pub artifact_format: String,
}

/// One entry of `cache[]` (protocol 4.8).
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
pub struct Cache {
    /// Key, already suffixed by GitLab (`-protected` / `-non_protected`); may contain `$VARS`.
    #[serde(default, deserialize_with = "null_default")]
    pub key: String,
    /// Include untracked files.
    #[serde(default, deserialize_with = "null_default")]
    pub untracked: bool,
    /// Paths to cache.
    #[serde(default, deserialize_with = "null_default")]
    pub paths: Vec<String>,
    /// `pull-push` (also when empty), `pull`, `push`.
    #[serde(default, deserialize_with = "null_default")]
    pub policy: String,
    /// `on_success` (default), `on_failure`, `always`.
    #[serde(default, deserialize_with = "null_default")]
    pub when: String,
    /// Keys to try when the main key misses.
    #[serde(default, deserialize_with = "null_default")]
    pub fallback_keys: Vec<String>,
}

/// Registry credentials (protocol 4.9).
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
pub struct Credentials {
    /// `registry`.
    #[serde(default, deserialize_with = "null_default")]
    pub r#type: String,
    /// Registry host.
    #[serde(default, deserialize_with = "null_default")]
    pub url: String,
    /// User name.
    #[serde(default, deserialize_with = "null_default")]
    pub username: String,
    /// Password (often the job token).
    #[serde(default)]
    pub password: Secret,
}

/// An earlier job whose artifacts are needed (protocol 4.10).
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
pub struct Dependency {
    /// Job id.
    pub id: u64,
    /// Job name.
    #[serde(default, deserialize_with = "null_default")]
    pub name: String,
    /// Token to download with.
    #[serde(default)]
    pub token: Secret,
    /// Present only when the dependency has an archive.
    #[serde(default)]
    pub artifacts_file: Option<ArtifactsFile>,
}

/// The archive of a dependency.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
pub struct ArtifactsFile {
    /// File name.
    #[serde(default, deserialize_with = "null_default")]
    pub filename: String,
    /// Size in bytes.
    #[serde(default)]
    pub size: u64,
}

/// `features` (protocol 4.11).
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
pub struct GitlabFeatures {
    /// Emit section markers.
    #[serde(default, deserialize_with = "null_default")]
    pub trace_sections: bool,
    /// Every failure reason this GitLab knows.
    #[serde(default, deserialize_with = "null_default")]
    pub failure_reasons: Vec<String>,
    /// Extra token prefixes to mask.
    #[serde(default, deserialize_with = "null_default")]
    pub token_mask_prefixes: Vec<String>,
}

/// One entry of `hooks[]`.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
pub struct Hook {
    /// `pre_get_sources_script` or `post_get_sources_script`.
    #[serde(default, deserialize_with = "null_default")]
    pub name: String,
    /// Commands.
    #[serde(default, deserialize_with = "null_default")]
    pub script: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_example_from_the_spec_parses() {
        let raw = r#"{
          "id": 42, "token": "glcbt-jobtoken42", "allow_git_fetch": true,
          "job_info": {"id": 42, "name": "build", "stage": "test", "project_id": 7, "project_name": "demo",
                       "time_in_queue_seconds": 0.5, "project_jobs_running_on_instance_runners_count": "+Inf"},
          "git_info": {"repo_url": "http://gitlab-ci-token:glcbt-jobtoken42@127.0.0.1:8080/g/demo.git",
                       "repo_object_format": "sha1", "ref": "main", "ref_type": "branch", "depth": 20,
                       "sha": "0123456789012345678901234567890123456789", "before_sha": "0000000000000000000000000000000000000000",
                       "refspecs": ["+refs/pipelines/9:refs/pipelines/9"]},
          "runner_info": {"timeout": 3600, "runner_session_url": null},
          "variables": [{"key": "CI_JOB_TOKEN", "value": "glcbt-jobtoken42", "public": false, "masked": true},
                        {"key": "ODD", "value": null, "public": true, "masked": false}],
          "steps": [{"name": "script", "script": ["echo hi"], "timeout": 3600, "when": "on_success", "allow_failure": false}],
          "image": {"name": "alpine:3", "entrypoint": null, "ports": [], "pull_policy": null},
          "services": null, "artifacts": null, "cache": [], "credentials": [], "dependencies": [],
          "features": {"trace_sections": true, "failure_reasons": ["script_failure"]},
          "something_new": {"a": 1}
        }"#;
        let job: JobResponse = serde_json::from_str(raw).expect("spec example must parse");
        assert_eq!(job.id, 42);
        assert_eq!(job.token.expose(), "glcbt-jobtoken42");
        assert_eq!(job.variables[1].value, "");
        assert!(job.services.is_empty());
        assert!(job.artifacts.is_empty());
        assert_eq!(job.git_info.r#ref, "main");
        assert!(!format!("{job:?}").contains("glcbt-jobtoken42"));
    }
}
