//! The job's pull plan: which images, with which policies, and which credential sources, as
//! gitlab-runner's docker executor decides them (see `isolation::images` for the pulling).

use super::vars::Variables;
use crate::config::RunnerConfig;
use crate::docker::auth;
use crate::gitlab::types::JobResponse;
use crate::isolation::EnvironmentSpec;
use crate::isolation::images::{ImagePull, PullPlan, PullPolicy, policies_for};
use std::path::{Path, PathBuf};

/// The variable holding a docker client config with registry credentials.
pub const DOCKER_AUTH_CONFIG: &str = "DOCKER_AUTH_CONFIG";

/// The plan for `spec`'s images. `vars` are the job's variables (the config's `environment`
/// and the payload's, the payload's winning), `home` the runner user's home directory.
/// An error is a job failure: a pull policy the job may not use.
pub fn plan(
    job: &JobResponse,
    runner: &RunnerConfig,
    vars: &Variables,
    spec: &EnvironmentSpec,
    home: Option<&Path>,
) -> Result<PullPlan, String> {
    let d = &runner.docker;
    let of = |job_list: &[String]| policies_for(job_list, &d.pull_policy, &d.allowed_pull_policies);
    let job_list = job
        .image
        .as_ref()
        .filter(|i| !i.name.trim().is_empty())
        .map(|i| i.pull_policy.clone())
        .unwrap_or_default();
    let mut images = vec![ImagePull {
        image: spec.build_image.name.clone(),
        role: "job".into(),
        policies: of(&job_list).map_err(|e| format!("image {}: {e}", spec.build_image.name))?,
    }];
    // `build_spec` makes one service spec per payload service, in order.
    for (svc, s) in job.services.iter().zip(&spec.services) {
        images.push(ImagePull {
            image: s.image.name.clone(),
            role: "service".into(),
            policies: of(&svc.pull_policy).map_err(|e| format!("service {}: {e}", s.image.name))?,
        });
    }
    // The helper follows the config, never the job. The default helper (no `helper_image`) is
    // the runner's own and is used from the host when there, as gitlab-runner uses its
    // prebuilt helper without pulling.
    let helper_policies = if d.helper_image.is_some() {
        of(&[]).map_err(|e| format!("helper image {}: {e}", spec.helper_image))?
    } else {
        vec![PullPolicy::IfNotPresent]
    };
    images.push(ImagePull {
        image: spec.helper_image.clone(),
        role: "helper".into(),
        policies: helper_policies,
    });

    let mut sources = Vec::new();
    let mut notes = Vec::new();
    if let Some(text) = vars
        .get(DOCKER_AUTH_CONFIG)
        .filter(|t| !t.trim().is_empty())
    {
        // The admin's value (the config's `environment`, not overridden by the job) may name
        // credential helpers; a job's own value may not (auth::HelperUse).
        let admins = runner
            .environment
            .iter()
            .any(|(k, v)| k == DOCKER_AUTH_CONFIG && v == text);
        let helpers = if admins {
            auth::HelperUse::Run
        } else {
            auth::HelperUse::Refuse
        };
        match auth::parse_config(auth::SOURCE_VARIABLE, text, helpers) {
            Ok((s, n)) => {
                sources.push(s);
                notes.extend(n);
            }
            // The value is a secret: the message names the variable and the JSON error only.
            Err(e) => notes.push(format!("{} is ignored: {e}", auth::SOURCE_VARIABLE)),
        }
    }
    if let Some((path, text)) = home.and_then(home_config) {
        let name = path.display().to_string();
        match auth::parse_config(&name, &text, auth::HelperUse::Run) {
            Ok((s, n)) => {
                sources.push(s);
                notes.extend(n);
            }
            Err(e) => notes.push(format!("{name} is ignored: {e}")),
        }
    }
    sources.push(auth::payload_source(
        job.credentials
            .iter()
            .filter(|c| c.r#type == "registry")
            .map(|c| {
                (
                    c.url.clone(),
                    c.username.clone(),
                    c.password.expose().to_string(),
                )
            }),
    ));
    Ok(PullPlan {
        images,
        auth: sources,
        notes,
    })
}

/// `~/.docker/config.json`, else `~/.dockercfg`, with its text (the runner's own files).
fn home_config(home: &Path) -> Option<(PathBuf, String)> {
    [".docker/config.json", ".dockercfg"].iter().find_map(|f| {
        let p = home.join(f);
        std::fs::read_to_string(&p).ok().map(|t| (p, t))
    })
}

/// The runner user's home directory: `$HOME`, else the password database's.
pub fn runner_home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|u| u.dir)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gitlab::types::{Credentials, Image};
    use crate::isolation::{ContainerImage, ServiceSpec};
    use crate::secret::Secret;

    fn spec() -> EnvironmentSpec {
        EnvironmentSpec {
            runner_id: "r".into(),
            job_id: 1,
            project_id: 1,
            protected: false,
            timeout: std::time::Duration::from_secs(60),
            build_image: ContainerImage {
                name: "r.corp/app:1".into(),
                entrypoint: None,
            },
            helper_image: "helper:1".into(),
            services: vec![ServiceSpec {
                image: ContainerImage {
                    name: "r.corp/db:1".into(),
                    entrypoint: None,
                },
                ..Default::default()
            }],
            service_env: Vec::new(),
            repo_endpoint: None,
            clone_path: None,
        }
    }

    fn job() -> JobResponse {
        JobResponse {
            image: Some(Image {
                name: "r.corp/app:1".into(),
                pull_policy: vec!["if-not-present".into()],
                ..Default::default()
            }),
            services: vec![Image {
                name: "r.corp/db:1".into(),
                pull_policy: vec!["never".into()],
                ..Default::default()
            }],
            credentials: vec![
                Credentials {
                    r#type: "registry".into(),
                    url: "r.corp".into(),
                    username: "gitlab-ci-token".into(),
                    password: Secret::new("payload-token"),
                },
                Credentials {
                    r#type: "other".into(),
                    url: "x.corp".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn policies_per_image_and_sources_in_order() {
        let mut runner = RunnerConfig::default();
        runner.docker.pull_policy = vec!["always".into(), "if-not-present".into(), "never".into()];
        let home = tempfile::tempdir().expect("home");
        std::fs::create_dir(home.path().join(".docker")).expect("mkdir");
        std::fs::write(
            home.path().join(".docker/config.json"),
            r#"{"auths": {"r.corp": {"username": "home", "password": "h"}}}"#,
        )
        .expect("write");
        let mut vars = Variables::new();
        vars.push(
            DOCKER_AUTH_CONFIG,
            r#"{"auths": {"r.corp/app": {"username": "var", "password": "v"}}}"#,
        );
        runner.docker.helper_image = Some("helper:1".into());
        let p = plan(&job(), &runner, &vars, &spec(), Some(home.path())).expect("plan");
        let pol: Vec<(&str, Vec<PullPolicy>)> = p
            .images
            .iter()
            .map(|i| (i.role.as_str(), i.policies.clone()))
            .collect();
        use PullPolicy::*;
        assert_eq!(
            pol,
            [
                ("job", vec![IfNotPresent]),
                ("service", vec![Never]),
                ("helper", vec![Always, IfNotPresent, Never]),
            ]
        );
        let a = |img: &str| auth::resolve(img, &p.auth).expect("creds");
        assert_eq!(a("r.corp/app:1").username, "var");
        assert_eq!(
            a("r.corp/db:1").username,
            "home",
            "home config before payload"
        );
        runner.docker.helper_image = None;
        let without_home = plan(&job(), &runner, &Variables::new(), &spec(), None).expect("plan");
        assert_eq!(
            without_home.images[2].policies,
            [IfNotPresent],
            "the default helper is used from the host when there"
        );
        let got = auth::resolve("r.corp/db:1", &without_home.auth).expect("payload");
        assert_eq!(got.source, auth::SOURCE_PAYLOAD);
        assert!(auth::resolve("x.corp/a", &without_home.auth).is_none());
    }

    #[test]
    fn bad_sources_are_warnings_and_disallowed_policies_fail() {
        let mut runner = RunnerConfig::default();
        runner.docker.pull_policy = vec!["if-not-present".into()];
        let mut vars = Variables::new();
        vars.push(DOCKER_AUTH_CONFIG, "{\"auths\": secret-not-json");
        let p = plan(&job(), &runner, &vars, &spec(), None);
        let e = p.expect_err("`never` is not allowed");
        assert!(e.contains("service r.corp/db:1"), "{e}");
        runner.docker.allowed_pull_policies = vec!["if-not-present".into(), "never".into()];
        let p = plan(&job(), &runner, &vars, &spec(), None).expect("plan");
        assert_eq!(p.notes.len(), 1);
        assert!(p.notes[0].contains("$DOCKER_AUTH_CONFIG is ignored"));
        assert!(!p.notes[0].contains("secret"), "{}", p.notes[0]);
    }
}
