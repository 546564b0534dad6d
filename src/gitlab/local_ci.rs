//! A local `.gitlab-ci.yml` reader for `runner exec`: resolves `extends`, `default:`, anchors and
//! `<<` merge keys, and builds the [`JobResponse`] GitLab would send for one job.
//!
//! Only what a single job needs is read; keywords that decide *whether* or *with what* a job runs
//! in a pipeline (`rules`, `needs`, `include`, …) are named in warnings, never silently dropped.

use super::types::{
    Artifact, Cache, GitInfo, GitlabFeatures, Hook, Image, JobInfo, JobResponse, JobVariable,
    RunnerInfo, Step,
};
use crate::secret::Secret;
use serde_yaml::{Mapping, Value};

/// Errors reading a local CI file.
#[derive(Debug, thiserror::Error)]
pub enum LocalCiError {
    /// The YAML does not parse.
    #[error("invalid YAML: {0}")]
    Yaml(String),
    /// The top level is not a mapping.
    #[error("the CI file must be a mapping of jobs and keywords")]
    NotAMapping,
    /// No such job.
    #[error("no job named {name:?}; jobs in this file: {}", available.join(", "))]
    UnknownJob {
        /// Asked-for name.
        name: String,
        /// The file's jobs.
        available: Vec<String>,
    },
    /// A job's definition is unusable.
    #[error("job {job:?}: {detail}")]
    Invalid {
        /// Job name.
        job: String,
        /// What is wrong.
        detail: String,
    },
}

/// Top-level keys that are not jobs.
const RESERVED: &[&str] = &[
    "image",
    "services",
    "cache",
    "before_script",
    "after_script",
    "variables",
    "stages",
    "include",
    "default",
    "workflow",
    "spec",
    "types",
];

/// Keys `default:` (and the deprecated globals) hand down to jobs.
const INHERITABLE: &[&str] = &[
    "image",
    "services",
    "cache",
    "before_script",
    "after_script",
    "artifacts",
    "timeout",
    "retry",
    "tags",
    "interruptible",
    "hooks",
    "id_tokens",
];

/// Job keys `exec` understands.
const SUPPORTED: &[&str] = &[
    "script",
    "before_script",
    "after_script",
    "image",
    "services",
    "variables",
    "extends",
    "timeout",
    "artifacts",
    "cache",
    "allow_failure",
    "when",
    "stage",
    "inherit",
    "hooks",
];

/// A parsed CI file.
#[derive(Debug, Clone)]
pub struct LocalCi {
    root: Mapping,
    warnings: Vec<String>,
}

/// Facts about the local checkout that GitLab would know.
#[derive(Debug, Clone)]
pub struct LocalContext {
    /// Job id to use.
    pub job_id: u64,
    /// A random job token.
    pub token: Secret,
    /// Project name (directory name).
    pub project_name: String,
    /// Commit sha, when the directory is a git repository.
    pub commit_sha: Option<String>,
    /// Branch name, when known.
    pub ref_name: Option<String>,
    /// Path of the CI file, for `CI_CONFIG_PATH`.
    pub config_path: String,
    /// The checkout `cache:key:files` are read from (`None`: such keys become `default`).
    /// With a checkout, [`LocalCi::build_payload`] reads files: call it on a blocking thread.
    pub checkout: Option<std::path::PathBuf>,
}

/// One job, ready to run.
#[derive(Debug, Clone)]
pub struct LocalJob {
    /// The payload.
    pub payload: JobResponse,
    /// Keywords ignored or only partly honoured.
    pub warnings: Vec<String>,
}

/// Parses a CI file (anchors and `<<` merge keys resolved).
pub fn parse(text: &str) -> Result<LocalCi, LocalCiError> {
    let mut value: Value =
        serde_yaml::from_str(text).map_err(|e| LocalCiError::Yaml(e.to_string()))?;
    value
        .apply_merge()
        .map_err(|e| LocalCiError::Yaml(e.to_string()))?;
    let Value::Mapping(root) = value else {
        return Err(LocalCiError::NotAMapping);
    };
    let mut warnings = Vec::new();
    for key in ["include", "workflow", "spec"] {
        if root.contains_key(key) {
            warnings.push(format!(
                "top-level `{key}` is not supported by exec and is ignored"
            ));
        }
    }
    Ok(LocalCi { root, warnings })
}

/// Deep-merges `over` into `base` like GitLab's `extends`: mappings merge, anything else replaces.
pub fn deep_merge(base: &mut Mapping, over: &Mapping) {
    for (k, v) in over {
        match (base.get_mut(k), v) {
            (Some(Value::Mapping(b)), Value::Mapping(o)) => deep_merge(b, o),
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

fn as_str(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A script: a string or a (nested) list of strings, flattened like GitLab does.
fn script_lines(v: &Value, job: &str, key: &str) -> Result<Vec<String>, LocalCiError> {
    fn walk(v: &Value, out: &mut Vec<String>, depth: usize) -> bool {
        if depth > 10 {
            return false;
        }
        match v {
            Value::Sequence(items) => items.iter().all(|i| walk(i, out, depth + 1)),
            Value::Null => true,
            other => match as_str(other) {
                Some(s) => {
                    out.push(s);
                    true
                }
                None => false,
            },
        }
    }
    let mut out = Vec::new();
    if walk(v, &mut out, 0) {
        Ok(out)
    } else {
        Err(LocalCiError::Invalid {
            job: job.to_string(),
            detail: format!("`{key}` must be a string or a list of strings"),
        })
    }
}

fn str_list(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Sequence(items)) => items.iter().filter_map(as_str).collect(),
        Some(other) => as_str(other).into_iter().collect(),
        None => Vec::new(),
    }
}

/// Parses GitLab durations: `3600`, `1h 30m`, `2 hours`, `1 hour 30 minutes`, `90 min`.
pub fn parse_duration(s: &str) -> Option<u64> {
    let s = s.trim();
    if let Ok(n) = s.parse::<u64>() {
        return Some(n);
    }
    let mut total = 0u64;
    let mut num = String::new();
    let mut unit = String::new();
    let mut any = false;
    let flush = |num: &mut String, unit: &mut String, total: &mut u64| -> Option<()> {
        if num.is_empty() {
            return if unit.is_empty() || unit == "and" {
                unit.clear();
                Some(())
            } else {
                None
            };
        }
        let n: u64 = num.parse().ok()?;
        let mult = match unit.as_str() {
            "" | "s" | "sec" | "secs" | "second" | "seconds" => 1,
            "m" | "min" | "mins" | "minute" | "minutes" => 60,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3600,
            "d" | "day" | "days" => 86400,
            "w" | "wk" | "week" | "weeks" => 604800,
            _ => return None,
        };
        *total += n * mult;
        num.clear();
        unit.clear();
        Some(())
    };
    for c in s.chars() {
        if c.is_ascii_digit() {
            if !unit.is_empty() {
                flush(&mut num, &mut unit, &mut total)?;
            }
            num.push(c);
            any = true;
        } else if c.is_ascii_alphabetic() {
            unit.push(c.to_ascii_lowercase());
        } else if c.is_whitespace() || c == ',' {
            if !unit.is_empty() {
                flush(&mut num, &mut unit, &mut total)?;
            }
        } else {
            return None;
        }
    }
    flush(&mut num, &mut unit, &mut total)?;
    if any { Some(total) } else { None }
}

fn image_from(v: &Value, job: &str) -> Result<Image, LocalCiError> {
    match v {
        Value::Mapping(m) => {
            let name = m.get("name").and_then(as_str).unwrap_or_default();
            Ok(Image {
                name,
                entrypoint: m.get("entrypoint").map(|e| str_list(Some(e))),
                command: str_list(m.get("command")),
                alias: m.get("alias").and_then(as_str).unwrap_or_default(),
                variables: m
                    .get("variables")
                    .map(|v| variables_from(v, job))
                    .transpose()?
                    .unwrap_or_default(),
                pull_policy: str_list(m.get("pull_policy")),
                ..Default::default()
            })
        }
        other => match as_str(other) {
            Some(name) => Ok(Image {
                name,
                ..Default::default()
            }),
            None => Err(LocalCiError::Invalid {
                job: job.to_string(),
                detail: "an image must be a name or a mapping with `name`".into(),
            }),
        },
    }
}

fn variables_from(v: &Value, job: &str) -> Result<Vec<JobVariable>, LocalCiError> {
    let Value::Mapping(m) = v else {
        if v.is_null() {
            return Ok(Vec::new());
        }
        return Err(LocalCiError::Invalid {
            job: job.to_string(),
            detail: "`variables` must be a mapping".into(),
        });
    };
    let mut out = Vec::new();
    for (k, val) in m {
        let Some(key) = as_str(k) else { continue };
        let (value, raw) = match val {
            Value::Mapping(vm) => (
                vm.get("value").and_then(as_str).unwrap_or_default(),
                vm.get("expand") == Some(&Value::Bool(false)),
            ),
            Value::Null => (String::new(), false),
            other => (
                as_str(other).ok_or_else(|| LocalCiError::Invalid {
                    job: job.to_string(),
                    detail: format!("variable {key} must be a string"),
                })?,
                false,
            ),
        };
        out.push(JobVariable {
            key,
            value,
            public: true,
            raw,
            ..Default::default()
        });
    }
    Ok(out)
}

fn report_format(kind: &str) -> (&'static str, String) {
    match kind {
        "junit" => ("gzip", "junit.xml".into()),
        "dotenv" => ("gzip", ".env".into()),
        "cobertura" | "coverage_report" => ("gzip", "cobertura-coverage.xml".into()),
        "metrics" => ("gzip", "metrics.txt".into()),
        "terraform" => ("raw", "tfplan.json".into()),
        other => ("raw", format!("gl-{other}-report.json")),
    }
}

fn artifacts_from(v: &Value, job: &str) -> Result<Vec<Artifact>, LocalCiError> {
    let Value::Mapping(m) = v else {
        return Err(LocalCiError::Invalid {
            job: job.to_string(),
            detail: "`artifacts` must be a mapping".into(),
        });
    };
    let mut out = Vec::new();
    let paths = str_list(m.get("paths"));
    let untracked = m.get("untracked") == Some(&Value::Bool(true));
    let expire_in = m.get("expire_in").and_then(as_str);
    if !paths.is_empty() || untracked {
        out.push(Artifact {
            name: m.get("name").and_then(as_str),
            untracked,
            paths,
            exclude: str_list(m.get("exclude")),
            when: m
                .get("when")
                .and_then(as_str)
                .unwrap_or_else(|| "on_success".into()),
            expire_in: expire_in.clone(),
            artifact_type: "archive".into(),
            artifact_format: "zip".into(),
        });
    }
    if let Some(Value::Mapping(reports)) = m.get("reports") {
        for (k, v) in reports {
            let Some(kind) = as_str(k) else { continue };
            let (format, name) = report_format(&kind);
            let paths = match v {
                Value::Mapping(rm) => str_list(rm.get("path")),
                other => str_list(Some(other)),
            };
            out.push(Artifact {
                name: Some(name),
                paths,
                when: "always".into(),
                expire_in: expire_in.clone(),
                artifact_type: kind,
                artifact_format: format.into(),
                ..Default::default()
            });
        }
    }
    Ok(out)
}

fn cache_from(
    v: &Value,
    checkout: Option<&std::path::Path>,
    warnings: &mut Vec<String>,
) -> Vec<Cache> {
    let items: Vec<&Value> = match v {
        Value::Sequence(s) => s.iter().collect(),
        Value::Null => Vec::new(),
        other => vec![other],
    };
    let mut out = Vec::new();
    for item in items {
        let Value::Mapping(m) = item else { continue };
        let key = match m.get("key") {
            Some(Value::Mapping(k)) => files_key_of(k, checkout, warnings),
            Some(k) => as_str(k).unwrap_or_else(|| "default".into()),
            None => "default".to_string(),
        };
        // GitLab appends the protection suffix before sending; a local run is unprotected.
        let suffix = |k: String| format!("{k}-non_protected");
        out.push(Cache {
            key: suffix(key),
            untracked: m.get("untracked") == Some(&Value::Bool(true)),
            paths: str_list(m.get("paths")),
            policy: m
                .get("policy")
                .and_then(as_str)
                .unwrap_or_else(|| "pull-push".into()),
            when: m
                .get("when")
                .and_then(as_str)
                .unwrap_or_else(|| "on_success".into()),
            fallback_keys: str_list(m.get("fallback_keys"))
                .into_iter()
                .map(suffix)
                .collect(),
        });
    }
    out
}

/// `key: {files: [...], prefix: ...}` computed like GitLab would before sending the job (see
/// [`crate::cache::files_key`]).
fn files_key_of(
    k: &serde_yaml::Mapping,
    checkout: Option<&std::path::Path>,
    warnings: &mut Vec<String>,
) -> String {
    let files = str_list(k.get("files"));
    let prefix = k.get("prefix").and_then(as_str);
    let Some(root) = checkout else {
        warnings.push("cache `key: {files: …}` needs a checkout; using `default`".into());
        return match prefix {
            Some(p) => format!("{p}-default"),
            None => "default".into(),
        };
    };
    match crate::cache::files_key(root, &files, prefix.as_deref()) {
        Ok(key) => key,
        Err(e) => {
            warnings.push(format!("cache `key: {{files: …}}`: {e}; using `default`"));
            "default".into()
        }
    }
}

fn slug(s: &str) -> String {
    let mut out: String = s
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    out.truncate(63);
    out.trim_matches('-').to_string()
}

impl LocalCi {
    /// Names of the runnable jobs (hidden `.jobs` excluded), in file order.
    pub fn job_names(&self) -> Vec<String> {
        self.root
            .iter()
            .filter_map(|(k, v)| {
                let name = as_str(k)?;
                (!RESERVED.contains(&name.as_str()) && !name.starts_with('.') && v.is_mapping())
                    .then_some(name)
            })
            .collect()
    }

    fn raw_job(&self, name: &str) -> Option<&Mapping> {
        self.root.get(name).and_then(Value::as_mapping)
    }

    /// The job with `extends` resolved (deep merge, parents in order, the job last).
    pub fn resolve_extends(&self, name: &str) -> Result<Mapping, LocalCiError> {
        self.resolve_depth(name, 0)
    }

    fn resolve_depth(&self, name: &str, depth: usize) -> Result<Mapping, LocalCiError> {
        if depth > 11 {
            return Err(LocalCiError::Invalid {
                job: name.to_string(),
                detail: "`extends` nests deeper than 11 levels (a loop?)".into(),
            });
        }
        let raw = self.raw_job(name).ok_or_else(|| LocalCiError::Invalid {
            job: name.to_string(),
            detail: "`extends` names a job or template that does not exist".into(),
        })?;
        let parents = str_list(raw.get("extends"));
        let mut merged = Mapping::new();
        for p in parents {
            let parent = self.resolve_depth(&p, depth + 1).map_err(|e| match e {
                LocalCiError::Invalid { detail, .. } => LocalCiError::Invalid {
                    job: name.to_string(),
                    detail: format!("extends {p:?}: {detail}"),
                },
                other => other,
            })?;
            deep_merge(&mut merged, &parent);
        }
        let mut own = raw.clone();
        own.remove("extends");
        deep_merge(&mut merged, &own);
        Ok(merged)
    }

    /// The job with `extends` and `default:` applied; also the warnings about it.
    pub fn resolve(&self, name: &str) -> Result<(Mapping, Vec<String>), LocalCiError> {
        if self.raw_job(name).is_none() || !self.job_names().iter().any(|n| n == name) {
            return Err(LocalCiError::UnknownJob {
                name: name.to_string(),
                available: self.job_names(),
            });
        }
        let mut job = self.resolve_extends(name)?;
        let mut warnings = self.warnings.clone();
        let inherit_default = match job.get("inherit").and_then(|i| i.get("default")) {
            Some(Value::Bool(false)) => Some(Vec::new()),
            Some(Value::Sequence(list)) => Some(list.iter().filter_map(as_str).collect()),
            _ => None,
        };
        let inherits = |key: &str| match &inherit_default {
            None => true,
            Some(list) => list.iter().any(|k| k == key),
        };
        let defaults = self.root.get("default").and_then(Value::as_mapping);
        for key in INHERITABLE {
            if job.contains_key(*key) || !inherits(key) {
                continue;
            }
            let from_default = defaults.and_then(|d| d.get(*key));
            // Deprecated top-level globals act as defaults too.
            let global = self.root.get(*key).filter(|_| {
                matches!(
                    *key,
                    "image" | "services" | "cache" | "before_script" | "after_script"
                )
            });
            if let Some(v) = from_default.or(global) {
                job.insert(Value::String(key.to_string()), v.clone());
            }
        }
        for (k, _) in &job {
            if let Some(k) = as_str(k) {
                if !SUPPORTED.contains(&k.as_str()) && !INHERITABLE.contains(&k.as_str()) {
                    warnings.push(format!(
                        "job keyword `{k}` is not supported by exec and is ignored"
                    ));
                } else if matches!(k.as_str(), "retry" | "tags" | "interruptible" | "id_tokens") {
                    warnings.push(format!("job keyword `{k}` has no effect in exec"));
                }
            }
        }
        Ok((job, warnings))
    }

    /// Builds the payload GitLab would send for job `name`.
    pub fn build_payload(&self, name: &str, ctx: &LocalContext) -> Result<LocalJob, LocalCiError> {
        let (job, mut warnings) = self.resolve(name)?;
        let invalid = |detail: &str| LocalCiError::Invalid {
            job: name.to_string(),
            detail: detail.to_string(),
        };
        let script = match job.get("script") {
            Some(v) => script_lines(v, name, "script")?,
            None => return Err(invalid("has no `script`")),
        };
        if script.is_empty() {
            return Err(invalid("`script` is empty"));
        }
        let before = job
            .get("before_script")
            .map(|v| script_lines(v, name, "before_script"))
            .transpose()?
            .unwrap_or_default();
        let after = job
            .get("after_script")
            .map(|v| script_lines(v, name, "after_script"))
            .transpose()?
            .unwrap_or_default();
        let timeout = match job.get("timeout") {
            Some(v) => {
                let s = as_str(v).ok_or_else(|| invalid("`timeout` must be a duration"))?;
                parse_duration(&s).ok_or_else(|| invalid(&format!("cannot read timeout {s:?}")))?
            }
            None => 3600,
        };
        let allow_failure = match job.get("allow_failure") {
            Some(Value::Bool(b)) => *b,
            Some(Value::Mapping(_)) => {
                warnings.push(
                    "`allow_failure: exit_codes` is not supported by exec; the job may not fail"
                        .into(),
                );
                false
            }
            _ => false,
        };
        match job.get("when").and_then(as_str).as_deref() {
            None | Some("on_success") | Some("always") => {}
            Some(other) => warnings.push(format!(
                "`when: {other}` decides whether GitLab starts the job; exec runs it anyway"
            )),
        }
        let stage = job
            .get("stage")
            .and_then(as_str)
            .unwrap_or_else(|| "test".into());
        let image = job.get("image").map(|v| image_from(v, name)).transpose()?;
        let services = match job.get("services") {
            Some(Value::Sequence(items)) => items
                .iter()
                .map(|s| image_from(s, name))
                .collect::<Result<Vec<_>, _>>()?,
            Some(Value::Null) | None => Vec::new(),
            Some(_) => return Err(invalid("`services` must be a list")),
        };
        let artifacts = job
            .get("artifacts")
            .map(|v| artifacts_from(v, name))
            .transpose()?
            .unwrap_or_default();
        let cache = job
            .get("cache")
            .map(|v| cache_from(v, ctx.checkout.as_deref(), &mut warnings))
            .unwrap_or_default();
        let mut hooks = Vec::new();
        if let Some(Value::Mapping(h)) = job.get("hooks") {
            for (k, v) in h {
                if let Some(k) = as_str(k) {
                    hooks.push(Hook {
                        script: script_lines(v, name, &k)?,
                        name: k,
                    });
                }
            }
        }

        let sha = ctx.commit_sha.clone().unwrap_or_else(|| "0".repeat(40));
        let ref_name = ctx.ref_name.clone().unwrap_or_else(|| "local".into());
        let mut variables = Vec::new();
        let mut var = |k: &str, v: &str| {
            variables.push(JobVariable {
                key: k.into(),
                value: v.into(),
                public: true,
                ..Default::default()
            })
        };
        let id = ctx.job_id.to_string();
        var("CI_JOB_ID", &id);
        var("CI_JOB_NAME", name);
        var("CI_JOB_NAME_SLUG", &slug(name));
        var("CI_JOB_STAGE", &stage);
        var("CI_PROJECT_ID", "1");
        var("CI_PROJECT_NAME", &ctx.project_name);
        var("CI_PROJECT_PATH", &format!("local/{}", ctx.project_name));
        var(
            "CI_PROJECT_PATH_SLUG",
            &format!("local-{}", slug(&ctx.project_name)),
        );
        var("CI_PROJECT_NAMESPACE", "local");
        var("CI_PIPELINE_ID", &id);
        var("CI_PIPELINE_IID", "1");
        var("CI_PIPELINE_SOURCE", "push");
        var("CI_COMMIT_SHA", &sha);
        var(
            "CI_COMMIT_SHORT_SHA",
            &sha.chars().take(8).collect::<String>(),
        );
        var("CI_COMMIT_BEFORE_SHA", &"0".repeat(40));
        var("CI_COMMIT_REF_NAME", &ref_name);
        var("CI_COMMIT_REF_SLUG", &slug(&ref_name));
        var("CI_COMMIT_BRANCH", &ref_name);
        var("CI_COMMIT_REF_PROTECTED", "false");
        var("CI_CONFIG_PATH", &ctx.config_path);
        var("CI_SERVER_URL", "http://localhost");
        var("CI_SERVER_HOST", "localhost");
        var("CI_NODE_TOTAL", "1");
        var("CI", "true");
        var("GITLAB_CI", "true");
        variables.push(JobVariable {
            key: "CI_JOB_TOKEN".into(),
            value: ctx.token.expose().to_string(),
            masked: true,
            ..Default::default()
        });
        if let Some(img) = &image {
            variables.push(JobVariable {
                key: "CI_JOB_IMAGE".into(),
                value: img.name.clone(),
                public: true,
                ..Default::default()
            });
        }
        let inherit_vars = match job.get("inherit").and_then(|i| i.get("variables")) {
            Some(Value::Bool(false)) => Some(Vec::new()),
            Some(Value::Sequence(list)) => Some(list.iter().filter_map(as_str).collect::<Vec<_>>()),
            _ => None,
        };
        if let Some(global) = self.root.get("variables") {
            for v in variables_from(global, name)? {
                if inherit_vars.as_ref().is_none_or(|l| l.contains(&v.key)) {
                    variables.push(v);
                }
            }
        }
        if let Some(own) = job.get("variables") {
            variables.extend(variables_from(own, name)?);
        }
        // The working tree is copied in; git must not touch it.
        variables.push(JobVariable {
            key: "GIT_STRATEGY".into(),
            value: "none".into(),
            public: true,
            ..Default::default()
        });

        let mut steps = vec![Step {
            name: "script".into(),
            script: before.into_iter().chain(script).collect(),
            timeout,
            when: "on_success".into(),
            allow_failure,
        }];
        if !after.is_empty() {
            steps.push(Step {
                name: "after_script".into(),
                script: after,
                timeout,
                when: "always".into(),
                allow_failure: true,
            });
        }
        let payload = JobResponse {
            id: ctx.job_id,
            token: ctx.token.clone(),
            allow_git_fetch: false,
            job_info: JobInfo {
                id: ctx.job_id,
                name: name.to_string(),
                stage,
                project_id: 1,
                project_name: ctx.project_name.clone(),
                project_full_path: Some(format!("local/{}", ctx.project_name)),
                pipeline_id: Some(ctx.job_id),
                time_in_queue_seconds: None,
            },
            git_info: GitInfo {
                r#ref: ref_name,
                sha,
                before_sha: "0".repeat(40),
                ref_type: "branch".into(),
                protected: Some(false),
                ..Default::default()
            },
            runner_info: RunnerInfo { timeout },
            variables,
            steps,
            image,
            services,
            artifacts,
            cache,
            credentials: Vec::new(),
            dependencies: Vec::new(),
            features: GitlabFeatures {
                trace_sections: true,
                failure_reasons: vec![
                    "script_failure".into(),
                    "runner_system_failure".into(),
                    "job_execution_timeout".into(),
                    "image_pull_failure".into(),
                    "unknown_failure".into(),
                ],
                token_mask_prefixes: Vec::new(),
            },
            hooks,
        };
        Ok(LocalJob { payload, warnings })
    }
}

#[cfg(test)]
#[path = "local_ci_tests.rs"]
mod tests;
