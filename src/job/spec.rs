//! What a job asks for, checked and turned into what the backend and the scripts get: the
//! payload check, the environment spec (images, allow-lists, services) and the job's variables.

use super::sources;
use super::trust;
use super::vars::{self, Variables};
use crate::config::RunnerConfig;
use crate::gitlab::types::{Image, JobResponse};
use crate::isolation::{ContainerImage, EnvironmentSpec, JobPaths, ServiceSpec};

use std::time::Duration;

/// Job timeout when GitLab sends 0.
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(7200);
/// The longest job timeout taken from a payload (GitLab's own maximum is one month). Larger
/// values are clamped: an `Instant` or a certificate's validity must never overflow.
pub const MAX_JOB_TIMEOUT: Duration = Duration::from_secs(31 * 24 * 3600);
/// Helper image when the config names none; it must have bash and git.
pub const DEFAULT_HELPER_IMAGE: &str = "isolated-runner/job:test";

/// Checks the payload before anything is created.
pub fn validate(job: &JobResponse) -> Result<(), String> {
    trust::check_job_id(job.id)?;
    if job.token.is_empty() {
        return Err(format!("job {} has an empty job token", job.id));
    }
    if job.steps.is_empty() {
        return Err(format!(
            "job {} has no steps (jobs using `run:` are not supported)",
            job.id
        ));
    }
    if let Some(bad) = job.steps.iter().find(|s| s.name.is_empty()) {
        return Err(format!(
            "job {} has a step without a name ({bad:?})",
            job.id
        ));
    }
    Ok(())
}

/// The runner's own images (the sidecar's, and the helper's when it is not also the default job
/// image): a job may name them only when an allow-list names them explicitly, never through an
/// empty list (L3).
fn runner_image<'a>(docker: &'a crate::config::DockerConfig, name: &str) -> Option<&'a str> {
    let own = [
        Some(docker.isolation.sidecar_image.as_str()),
        docker
            .helper_image
            .as_deref()
            .filter(|h| *h != docker.image.as_str()),
    ];
    own.into_iter().flatten().find(|o| *o == name)
}

/// Refuses a job's `image:`/`services:` name that is one of the runner's own images unless
/// `allowed` is non-empty and matches it.
fn refuse_runner_image(
    docker: &crate::config::DockerConfig,
    name: &str,
    allowed: &[String],
    key: &str,
) -> Result<(), String> {
    match runner_image(docker, name) {
        Some(own) if allowed.is_empty() => Err(format!(
            "{own:?} is one of this runner's own images (sidecar or helper) and cannot run as a \
             job's image or service unless [runners.docker] {key} names it"
        )),
        _ => Ok(()),
    }
}

fn glob_allowed(patterns: &[String], name: &str) -> bool {
    if patterns.is_empty() {
        return true;
    }
    patterns.iter().any(|p| {
        globset::Glob::new(p)
            .map(|g| g.compile_matcher().is_match(name))
            .unwrap_or(false)
    })
}

/// Default service aliases gitlab-runner adds: `group/name:tag` → `group__name` and `group-name`.
fn default_aliases(image: &str) -> Vec<String> {
    let no_digest = image.split('@').next().unwrap_or(image);
    let last_slash = no_digest.rfind('/').map(|i| i + 1).unwrap_or(0);
    let no_tag = match no_digest[last_slash..].find(':') {
        Some(i) => &no_digest[..last_slash + i],
        None => no_digest,
    };
    // Drop a registry host (first component with a dot or a port).
    let mut parts: Vec<&str> = no_tag.split('/').collect();
    if parts.len() > 1 && (parts[0].contains('.') || parts[0].contains(':')) {
        parts.remove(0);
    }
    let base = parts.join("/");
    let mut out = vec![base.replace('/', "__")];
    let dashed = base.replace('/', "-");
    if !out.contains(&dashed) {
        out.push(dashed);
    }
    out
}

/// Builds the environment spec: image resolution, allow-lists, services.
pub fn build_spec(
    job: &JobResponse,
    runner: &RunnerConfig,
    runner_id: &str,
    vars: &Variables,
    timeout: Duration,
) -> Result<EnvironmentSpec, String> {
    let docker = &runner.docker;
    let build_image = match &job.image {
        Some(img) if !img.name.trim().is_empty() => {
            let name = vars.expand(&img.name);
            refuse_runner_image(docker, &name, &docker.allowed_images, "allowed_images")?;
            if !glob_allowed(&docker.allowed_images, &name) {
                return Err(format!(
                    "the {name:?} image is not present on the list of allowed images ({})",
                    docker.allowed_images.join(", ")
                ));
            }
            ContainerImage {
                name,
                entrypoint: img.entrypoint.clone(),
            }
        }
        Some(img) => ContainerImage {
            name: docker.image.clone(),
            entrypoint: img.entrypoint.clone(),
        },
        None => ContainerImage {
            name: docker.image.clone(),
            entrypoint: None,
        },
    };
    if build_image.name.is_empty() {
        return Err(
            "no image: the job names none and the config has no [runners.docker] image".into(),
        );
    }
    // Checked before any container exists: every service is a container on the host (H4).
    if let Some(max) = docker.services_limit
        && job.services.len() > max
    {
        return Err(format!(
            "the job asks for {} services; this runner allows at most {max} \
             ([runners.docker] services_limit)",
            job.services.len()
        ));
    }
    let mut services = Vec::new();
    for svc in &job.services {
        let name = vars.expand(&svc.name);
        refuse_runner_image(docker, &name, &docker.allowed_services, "allowed_services")?;
        services.push(service_spec(svc, vars, &docker.allowed_services)?);
    }
    let protected = trust::is_protected(job);
    let repo_endpoint = trust::clone_endpoint(job, runner)?;
    let service_env = vars
        .effective()
        .into_iter()
        .filter(|v| v.public && !v.masked && !v.file && vars::is_valid_name(&v.key))
        .map(|v| (v.key.clone(), v.value.clone()))
        .collect();
    Ok(EnvironmentSpec {
        runner_id: runner_id.to_string(),
        job_id: job.id,
        project_id: job.job_info.project_id,
        protected,
        timeout,
        build_image,
        helper_image: docker
            .helper_image
            .clone()
            .unwrap_or_else(|| DEFAULT_HELPER_IMAGE.to_string()),
        services,
        service_env,
        // Only host and port leave here: the URL carries the job token.
        repo_endpoint,
        clone_path: None,
    })
}

fn service_spec(svc: &Image, vars: &Variables, allowed: &[String]) -> Result<ServiceSpec, String> {
    let name = vars.expand(&svc.name);
    if name.trim().is_empty() {
        return Err("a service has no image name".into());
    }
    if !glob_allowed(allowed, &name) {
        return Err(format!(
            "the {name:?} service is not present on the list of allowed services ({})",
            allowed.join(", ")
        ));
    }
    let mut aliases: Vec<String> = svc
        .alias
        .split([',', ' '])
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_string)
        .collect();
    for a in default_aliases(&name) {
        if !aliases.contains(&a) {
            aliases.push(a);
        }
    }
    Ok(ServiceSpec {
        image: ContainerImage {
            name,
            entrypoint: svc.entrypoint.clone(),
        },
        command: svc.command.clone(),
        aliases,
        env: svc
            .variables
            .iter()
            .map(|v| (v.key.clone(), v.value.clone()))
            .collect(),
    })
}

/// Variables for the job: runner-added ones, the config's `environment`, the payload's, and the
/// backend's (`DOCKER_HOST` …) last so a job cannot point them elsewhere by accident.
pub fn build_variables(
    job: &JobResponse,
    runner: &RunnerConfig,
    paths: Option<&JobPaths>,
    job_env: &[(String, String)],
    timeout: Duration,
) -> Variables {
    let mut v = Variables::new();
    if let Some(img) = &job.image
        && !img.name.is_empty()
    {
        v.push("CI_JOB_IMAGE", img.name.clone());
    }
    let short = vars::short_token(runner.token.expose());
    if !short.is_empty() {
        v.push("CI_RUNNER_SHORT_TOKEN", short);
    }
    for (k, val) in &runner.environment {
        v.push(k, val.clone());
    }
    if let Some(p) = paths {
        // The tmp dir's parent, not the project dir's: with GIT_CLONE_PATH the project is
        // deeper, the tmp dir never moves.
        let builds = p
            .tmp_dir
            .parent()
            .map(std::path::Path::to_path_buf)
            .unwrap_or_else(|| runner.builds_dir.clone());
        v.push("CI_BUILDS_DIR", builds.to_string_lossy());
        v.push("CI_PROJECT_DIR", p.project_dir.to_string_lossy());
        v.push("RUNNER_TEMP_PROJECT_DIR", p.tmp_dir.to_string_lossy());
        v.push("TMPDIR", p.tmp_dir.to_string_lossy());
    }
    v.push("CI_SERVER", "yes");
    v.push("CI", "true");
    v.push("GITLAB_CI", "true");
    v.push("CI_JOB_TIMEOUT", timeout.as_secs().to_string());
    v.push("CI_JOB_STATUS", "running");
    v.push("CI_RUNNER_VERSION", vars::RUNNER_VERSION);
    v.push(
        "CI_RUNNER_REVISION",
        option_env!("RUNNER_GIT_REVISION").unwrap_or("unknown"),
    );
    v.push("CI_RUNNER_EXECUTABLE_ARCH", vars::executable_arch());
    v.push("CI_DISPOSABLE_ENVIRONMENT", "true");
    v.extend(job.variables.iter().cloned());
    for (k, val) in job_env {
        v.push(k, val.clone());
    }
    v
}

/// Every secret the log must mask: masked variables, the job token, credentials.
pub(super) fn masked_values(job: &JobResponse) -> Vec<String> {
    let mut out: Vec<String> = job
        .variables
        .iter()
        .filter(|v| v.masked && !v.value.is_empty())
        .map(|v| v.value.clone())
        .collect();
    out.push(job.token.expose().to_string());
    if let Ok(u) = url::Url::parse(job.git_info.repo_url.expose()) {
        if let Some(p) = u.password() {
            out.push(p.to_string());
        }
        // The git helper's `Authorization: Basic` header value, whole (see M3 in security.md).
        out.extend(sources::basic_credentials(&u));
    }
    for c in &job.credentials {
        out.push(c.password.expose().to_string());
    }
    for d in &job.dependencies {
        out.push(d.token.expose().to_string());
    }
    out.retain(|s| !s.is_empty());
    out
}

/// The job's timeout: the payload's seconds (0 = [`DEFAULT_JOB_TIMEOUT`]), at most
/// [`MAX_JOB_TIMEOUT`].
pub fn job_timeout(seconds: u64) -> Duration {
    match seconds {
        0 => DEFAULT_JOB_TIMEOUT,
        s => Duration::from_secs(s.min(MAX_JOB_TIMEOUT.as_secs())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gitlab::types::{JobVariable, Step};
    use crate::isolation;
    use crate::secret::Secret;

    fn job() -> JobResponse {
        JobResponse {
            id: 5,
            token: Secret::new("glcbt-xyz12345"),
            steps: vec![Step {
                name: "script".into(),
                script: vec!["true".into()],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn validation() {
        assert!(validate(&job()).is_ok());
        let mut j = job();
        j.id = 0;
        assert!(validate(&j).is_err());
        let mut j = job();
        j.token = Secret::default();
        assert!(validate(&j).is_err());
        let mut j = job();
        j.steps.clear();
        assert!(validate(&j).is_err());
    }

    #[test]
    fn spec_images_allowlists_and_aliases() {
        let mut runner = RunnerConfig::default();
        runner.docker.allowed_images = vec!["isolated-runner/*".into()];
        runner.docker.allowed_services = vec!["registry.example.com/**".into()];
        let mut j = job();
        j.variables.push(JobVariable {
            key: "TAG".into(),
            value: "test".into(),
            ..Default::default()
        });
        j.image = Some(Image {
            name: "isolated-runner/job:$TAG".into(),
            ..Default::default()
        });
        j.services = vec![Image {
            name: "registry.example.com/grp/postgres:15".into(),
            alias: "db, pg".into(),
            ..Default::default()
        }];
        let vars = build_variables(&j, &runner, None, &[], DEFAULT_JOB_TIMEOUT);
        let spec = build_spec(&j, &runner, "r1", &vars, DEFAULT_JOB_TIMEOUT).expect("spec");
        assert_eq!(spec.build_image.name, "isolated-runner/job:test");
        assert_eq!(
            spec.services[0].aliases,
            vec!["db", "pg", "grp__postgres", "grp-postgres"]
        );
        j.image = Some(Image {
            name: "evil/image".into(),
            ..Default::default()
        });
        assert!(build_spec(&j, &runner, "r1", &vars, DEFAULT_JOB_TIMEOUT).is_err());
        j.image = None;
        let spec = build_spec(&j, &runner, "r1", &vars, DEFAULT_JOB_TIMEOUT).expect("spec");
        assert_eq!(spec.build_image.name, runner.docker.image);
    }

    /// The clone host goes into the spec without the job token, and only when the config names
    /// it (the GitLab URL or `clone_url`).
    #[test]
    fn spec_carries_the_clone_host_and_port_only() {
        let mut runner = RunnerConfig {
            url: url::Url::parse("http://git.example.test:8929/").unwrap(),
            ..Default::default()
        };
        let mut j = job();
        let vars = build_variables(&j, &runner, None, &[], DEFAULT_JOB_TIMEOUT);
        j.git_info.repo_url =
            Secret::new("http://gitlab-ci-token:glcbt-abc123@git.example.test:8929/g/p.git");
        let spec = build_spec(&j, &runner, "r1", &vars, DEFAULT_JOB_TIMEOUT).expect("spec");
        assert_eq!(
            spec.repo_endpoint,
            Some(isolation::HostPort {
                host: "git.example.test".into(),
                port: 8929
            })
        );
        assert!(!format!("{spec:?}").contains("glcbt-abc123"));
        j.git_info.repo_url = Secret::new("https://gitlab-ci-token:t@[2001:db8::7]/g/p.git");
        let err = build_spec(&j, &runner, "r1", &vars, DEFAULT_JOB_TIMEOUT).unwrap_err();
        assert!(err.contains("[2001:db8::7]:443"), "{err}");
        runner.clone_url = Some(url::Url::parse("https://[2001:db8::7]/").unwrap());
        let spec = build_spec(&j, &runner, "r1", &vars, DEFAULT_JOB_TIMEOUT).expect("spec");
        assert_eq!(
            spec.repo_endpoint,
            Some(isolation::HostPort {
                host: "2001:db8::7".into(),
                port: 443
            })
        );
        for none in [
            "",
            "not a url",
            "file:///srv/repo.git",
            "x-custom://h/p.git",
        ] {
            j.git_info.repo_url = Secret::new(none);
            let spec = build_spec(&j, &runner, "r1", &vars, DEFAULT_JOB_TIMEOUT).expect("spec");
            assert_eq!(spec.repo_endpoint, None, "{none:?}");
        }
    }

    /// H2: a job on an unprotected branch sets `CI_COMMIT_REF_PROTECTED: "true"` in its yaml
    /// variables (sent after the predefined `false`); without `git_info.protected` it stays
    /// unprotected everywhere the flag is used (spec, cache dir, warm volume).
    #[test]
    fn protected_flag_ignores_job_overrides() {
        let runner = RunnerConfig::default();
        let mut j = job();
        j.git_info.protected = None;
        for value in ["false", "true"] {
            j.variables.push(JobVariable {
                key: "CI_COMMIT_REF_PROTECTED".into(),
                value: value.into(),
                public: true,
                ..Default::default()
            });
        }
        let vars = build_variables(&j, &runner, None, &[], DEFAULT_JOB_TIMEOUT);
        assert_eq!(vars.get("CI_COMMIT_REF_PROTECTED"), Some("true"));
        let spec = build_spec(&j, &runner, "r1", &vars, DEFAULT_JOB_TIMEOUT).expect("spec");
        assert!(!spec.protected);
        assert!(!trust::is_protected(&j));
        let cache = crate::cache::project_dir(std::path::Path::new("/cache"), 7, spec.protected);
        assert!(cache.ends_with("unprotected"), "{cache:?}");
        let volume = isolation::data_root::volume_name("r1", "gitlab-a", 7, spec.protected);
        assert!(volume.ends_with("-unprotected"), "{volume}");
        // GitLab's own field decides, both ways.
        j.git_info.protected = Some(true);
        let spec = build_spec(&j, &runner, "r1", &vars, DEFAULT_JOB_TIMEOUT).expect("spec");
        assert!(spec.protected);
        j.git_info.protected = Some(false);
        let spec = build_spec(&j, &runner, "r1", &vars, DEFAULT_JOB_TIMEOUT).expect("spec");
        assert!(!spec.protected);
    }

    /// L2: ids in the warm pool's slot range would share a slot's directories, labels and
    /// chain; they are refused by the payload check.
    #[test]
    fn slot_range_ids_are_refused() {
        let base = isolation::pool::SLOT_ID_BASE;
        for id in [base, base + 1, u64::MAX] {
            let mut j = job();
            j.id = id;
            let err = validate(&j).unwrap_err();
            assert!(err.contains("reserves"), "{id}: {err}");
        }
        let mut j = job();
        j.id = base - 1;
        assert!(validate(&j).is_ok());
    }

    #[test]
    fn variables_order_and_masked_service_env() {
        let runner = RunnerConfig {
            environment: vec![("FOO".into(), "config".into())],
            ..Default::default()
        };
        let mut j = job();
        j.variables = vec![
            JobVariable {
                key: "FOO".into(),
                value: "job".into(),
                public: true,
                ..Default::default()
            },
            JobVariable {
                key: "SECRET".into(),
                value: "s3cr3t-value".into(),
                masked: true,
                ..Default::default()
            },
        ];
        let paths = JobPaths {
            project_dir: "/b/gitlab-job-5".into(),
            tmp_dir: "/b/gitlab-job-5.tmp".into(),
        };
        let v = build_variables(
            &j,
            &runner,
            Some(&paths),
            &[("DOCKER_HOST".into(), "tcp://x:2376".into())],
            Duration::from_secs(60),
        );
        assert_eq!(v.get("FOO"), Some("job"));
        assert_eq!(v.get("CI_PROJECT_DIR"), Some("/b/gitlab-job-5"));
        assert_eq!(v.get("CI_BUILDS_DIR"), Some("/b"));
        assert_eq!(v.get("TMPDIR"), Some("/b/gitlab-job-5.tmp"));
        assert_eq!(v.get("CI_JOB_TIMEOUT"), Some("60"));
        assert_eq!(v.get("DOCKER_HOST"), Some("tcp://x:2376"));
        let spec = build_spec(&j, &runner, "r", &v, DEFAULT_JOB_TIMEOUT).expect("spec");
        assert!(!spec.service_env.iter().any(|(k, _)| k == "SECRET"));
        assert!(spec.service_env.iter().any(|(k, _)| k == "FOO"));
        assert!(masked_values(&j).contains(&"s3cr3t-value".to_string()));
    }

    /// L3: the sidecar's image (and a separate helper image) cannot be a job's image or
    /// service through an empty allow-list; only an explicit allow-list entry admits it.
    #[test]
    fn runner_images_are_refused_unless_allowed() {
        let mut runner = RunnerConfig::default();
        runner.docker.helper_image = Some("registry.example/helper:1".into());
        let mut j = job();
        let vars = build_variables(&j, &runner, None, &[], DEFAULT_JOB_TIMEOUT);
        let sidecar = runner.docker.isolation.sidecar_image.clone();
        let image = |n: &str| Image {
            name: n.into(),
            ..Default::default()
        };
        for own in [sidecar.as_str(), "registry.example/helper:1"] {
            j.image = Some(image(own));
            let err = build_spec(&j, &runner, "r1", &vars, DEFAULT_JOB_TIMEOUT).expect_err(own);
            assert!(err.contains("this runner's own images"), "{err}");
            j.image = None;
            j.services = vec![image(own)];
            let err = build_spec(&j, &runner, "r1", &vars, DEFAULT_JOB_TIMEOUT).expect_err(own);
            assert!(err.contains("allowed_services"), "{err}");
            j.services.clear();
        }
        // The default job image stays usable by name, and an explicit entry admits the rest.
        j.image = Some(image(&runner.docker.image.clone()));
        assert!(build_spec(&j, &runner, "r1", &vars, DEFAULT_JOB_TIMEOUT).is_ok());
        runner.docker.allowed_images = vec!["isolated-runner/*".into()];
        j.image = Some(image(&sidecar));
        assert!(build_spec(&j, &runner, "r1", &vars, DEFAULT_JOB_TIMEOUT).is_ok());
    }

    /// H4: more services than `services_limit` fail the job in `build_spec`, which runs before
    /// `prepare`, so before any container exists.
    #[test]
    fn too_many_services_are_refused() {
        let mut runner = RunnerConfig::default();
        let mut j = job();
        let vars = build_variables(&j, &runner, None, &[], DEFAULT_JOB_TIMEOUT);
        let svc = |i: usize| Image {
            name: format!("isolated-runner/busybox:test{i}"),
            ..Default::default()
        };
        let default_max = crate::isolation::limits::DEFAULT_SERVICES_LIMIT;
        j.services = (0..default_max).map(svc).collect();
        assert!(build_spec(&j, &runner, "r1", &vars, DEFAULT_JOB_TIMEOUT).is_ok());
        j.services.push(svc(default_max));
        let err = build_spec(&j, &runner, "r1", &vars, DEFAULT_JOB_TIMEOUT).expect_err("refused");
        assert!(
            err.contains(&format!("asks for {} services", default_max + 1))
                && err.contains("services_limit"),
            "{err}"
        );
        runner.docker.services_limit = Some(0);
        j.services.truncate(1);
        assert!(build_spec(&j, &runner, "r1", &vars, DEFAULT_JOB_TIMEOUT).is_err());
        j.services.clear();
        assert!(build_spec(&j, &runner, "r1", &vars, DEFAULT_JOB_TIMEOUT).is_ok());
        // `-1` in the config: no limit.
        runner.docker.services_limit = None;
        j.services = (0..100).map(svc).collect();
        assert!(build_spec(&j, &runner, "r1", &vars, DEFAULT_JOB_TIMEOUT).is_ok());
    }
}
