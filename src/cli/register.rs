//! `runner register`: verify a `glrt-` token (or register with a legacy registration token) and
//! add the runner to the config file, keeping its comments, mode 0600.

use super::run::{read_doc, state_dir_of};
use crate::gitlab::identity::{self, NewRunner};
use crate::gitlab::{Client, ClientOptions, RegisterRequest};
use crate::secret::Secret;
use anyhow::{Context, bail};
use clap::Args;
use std::process::ExitCode;

/// Flags of `runner register`, named like gitlab-runner's.
#[derive(Debug, Clone, Args)]
pub struct RegisterArgs {
    /// Config file.
    #[command(flatten)]
    pub config: super::ConfigArg,
    /// GitLab instance URL.
    #[arg(long = "url", env = "CI_SERVER_URL")]
    pub url: Option<String>,
    /// Runner authentication token (`glrt-…`), created in GitLab's UI or API.
    #[arg(long = "token", short = 't', env = "CI_SERVER_TOKEN")]
    pub token: Option<String>,
    /// Legacy registration token (deprecated by GitLab).
    #[arg(long = "registration-token", short = 'r', env = "REGISTRATION_TOKEN")]
    pub registration_token: Option<String>,
    /// Runner name (also the description with a registration token).
    #[arg(long = "name", visible_alias = "description", env = "RUNNER_NAME")]
    pub name: Option<String>,
    /// Never prompt (this runner never prompts; accepted for compatibility).
    #[arg(long = "non-interactive", short = 'n')]
    pub non_interactive: bool,
    /// Default job image.
    #[arg(
        long = "docker-image",
        env = "DOCKER_IMAGE",
        default_value = "alpine:3"
    )]
    pub docker_image: String,
    /// Tags (comma separated), registration token only.
    #[arg(long = "tag-list", env = "RUNNER_TAG_LIST", default_value = "")]
    pub tag_list: String,
    /// Run jobs without tags, registration token only.
    #[arg(long = "run-untagged", env = "REGISTER_RUN_UNTAGGED")]
    pub run_untagged: bool,
    /// Lock to the project, registration token only.
    #[arg(long = "locked", env = "REGISTER_LOCKED")]
    pub locked: bool,
    /// `not_protected` or `ref_protected`, registration token only.
    #[arg(long = "access-level", env = "REGISTER_ACCESS_LEVEL")]
    pub access_level: Option<String>,
    /// Largest job timeout in seconds, registration token only.
    #[arg(long = "maximum-timeout", env = "REGISTER_MAXIMUM_TIMEOUT")]
    pub maximum_timeout: Option<u64>,
    /// Register paused, registration token only.
    #[arg(long = "paused", env = "REGISTER_PAUSED")]
    pub paused: bool,
    /// Maintenance note, registration token only.
    #[arg(long = "maintenance-note", env = "REGISTER_MAINTENANCE_NOTE")]
    pub maintenance_note: Option<String>,
    /// `limit` of the new entry.
    #[arg(long = "limit", env = "RUNNER_LIMIT")]
    pub limit: Option<i64>,
}

/// Registers and writes the config.
pub async fn run(args: &RegisterArgs) -> anyhow::Result<ExitCode> {
    let path = &args.config.config;
    let Some(url) = args.url.as_deref() else {
        bail!("--url is required (the GitLab instance URL)");
    };
    let parsed = url::Url::parse(url).with_context(|| format!("--url {url} is not a URL"))?;
    let mut doc = read_doc(path).await?;
    let state_dir = state_dir_of(&doc);
    let system_id = identity::system_id(&state_dir)
        .await
        .context("cannot make the system id")?;
    let client = Client::new(&parsed, ClientOptions::default())?;
    let name = args.name.clone().unwrap_or_else(|| {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "isolated-runner".into())
    });
    let info = identity::runner_info();
    let answer = match (&args.token, &args.registration_token) {
        (Some(token), _) if identity::is_authentication_token(token) => client
            .verify(&Secret::new(token.clone()), &system_id, &info)
            .await
            .context("GitLab did not accept the runner authentication token")?,
        (Some(_), _) => bail!(
            "--token must be a runner authentication token (glrt-…); use --registration-token for a legacy registration token"
        ),
        (None, Some(reg)) => {
            let tags: Vec<String> = args
                .tag_list
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect();
            client
                .register(&RegisterRequest {
                    registration_token: Secret::new(reg.clone()),
                    description: name.clone(),
                    tag_list: tags,
                    run_untagged: args.run_untagged,
                    locked: args.locked,
                    access_level: args.access_level.clone(),
                    maximum_timeout: args.maximum_timeout,
                    paused: args.paused,
                    maintenance_note: args.maintenance_note.clone(),
                    info,
                })
                .await
                .context("GitLab refused the registration")?
        }
        (None, None) => bail!("give --token glrt-… (or the legacy --registration-token)"),
    };
    let token = match (&args.token, answer.token.clone()) {
        (_, Some(t)) => t,
        (Some(t), None) => Secret::new(t.clone()),
        (None, None) => bail!("GitLab registered the runner but sent no token"),
    };
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    identity::add_runner(
        &mut doc,
        &NewRunner {
            name: name.clone(),
            url: url.to_string(),
            id: answer.id,
            token,
            token_obtained_at: now,
            token_expires_at: answer.token_expires_at.clone(),
            docker_image: args.docker_image.clone(),
            limit: args.limit,
        },
    );
    identity::write_private(path, doc.to_string().as_bytes())
        .await
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!(
        "Runner {name} registered (id {}); config written to {}",
        answer
            .id
            .map(|i| i.to_string())
            .unwrap_or_else(|| "unknown".into()),
        path.display()
    );
    println!("Start it with: runner run -c {}", path.display());
    Ok(ExitCode::SUCCESS)
}
