//! The command line: clap definitions and one file per verb. The only place `anyhow` is used.

pub mod bench;
mod config;
pub mod exec;

pub use bench::BenchArgs;

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

pub mod cleanup;
pub mod doctor;
pub mod list;
pub mod register;
pub mod run;
pub mod unregister;
pub mod verify;

/// Default config path, as in architecture.md.
pub const DEFAULT_CONFIG: &str = "/etc/isolated-runner/config.toml";

/// A GitLab CI runner that gives every job its own Docker daemon instead of the host's socket.
///
/// Each job gets a docker-in-docker sidecar reachable only from that job, mTLS with a per-job CA
/// made in the runner's memory, a private network, and its checkout mounted at the same path in
/// the job and in its daemon, so `docker compose` with `./:/app` mounts just works.
#[derive(Debug, Parser)]
#[command(name = "runner", version, propagate_version = true)]
pub struct Cli {
    /// Log level for the runner's own logs (error, warn, info, debug, trace); overrides the config.
    #[arg(long, global = true, env = "RUNNER_LOG_LEVEL")]
    pub log_level: Option<String>,

    /// The verb to run.
    #[command(subcommand)]
    pub command: Command,
}

/// `-c/--config FILE`, shared by every verb that reads a config.
#[derive(Debug, Clone, Args)]
pub struct ConfigArg {
    /// Config file in gitlab-runner's config.toml format.
    #[arg(short = 'c', long = "config", env = "RUNNER_CONFIG", default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
}

impl ConfigArg {
    /// True when the path is the built-in default (not given on the command line or in the
    /// environment), so a verb may fall back to defaults when it is missing.
    pub fn is_default(&self) -> bool {
        self.config == std::path::Path::new(DEFAULT_CONFIG)
    }
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: poll GitLab, run jobs, serve metrics, shut down gracefully.
    Run(ConfigArg),
    /// Register this runner with GitLab and write it into the config file.
    Register(register::RegisterArgs),
    /// Check that the runner tokens in the config are valid.
    Verify(verify::VerifyArgs),
    /// Remove a runner from GitLab and from the config file.
    Unregister(unregister::UnregisterArgs),
    /// List the runners in the config file.
    List(ConfigArg),
    /// Run one job of a local .gitlab-ci.yml through the real pipeline, no GitLab needed.
    Exec(exec::ExecArgs),
    /// Benchmark isolated jobs against the shared-socket setup on this host.
    Bench(BenchArgs),
    /// Diagnose the host, the config, the sidecar and GitLab, and say what to fix.
    Doctor(doctor::DoctorArgs),
    /// Remove what dead or old jobs left behind and prune caches.
    Cleanup(cleanup::CleanupArgs),
    /// Work with config files.
    #[command(subcommand)]
    Config(ConfigCommand),
}

/// `runner config ...`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Load and validate a config file; report errors and ignored keys with their lines.
    Check {
        /// The file to check.
        file: PathBuf,
        /// Fail (exit 1) on warnings too: unknown, removed and ignored keys, risky settings.
        #[arg(long)]
        strict: bool,
    },
}

/// Sets up the runner's own logs (stderr; never the job trace). The level is `--log-level` (or
/// `RUNNER_LOG_LEVEL`), else the config file's `log_level`, else the verb's default; the shape is
/// the config file's `log_format`: `json` gives one JSON object per line, `text` plain lines
/// without colour, `runner` (the default) plain lines coloured on a terminal.
pub fn init_tracing(cli: &Cli) {
    use std::io::IsTerminal;
    let fallback = default_log_level(&cli.command);
    let (config_level, config_format) = cli
        .command
        .config_path()
        .map(crate::config::peek_logging)
        .unwrap_or((None, None));
    let level = cli
        .log_level
        .clone()
        .or_else(|| config_level.map(str::to_string))
        .unwrap_or_else(|| fallback.to_string());
    let filter = tracing_subscriber::EnvFilter::try_new(&level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(fallback));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // An error means a subscriber is already set (tests), which is fine.
    let _ = match config_format.unwrap_or("runner") {
        "json" => builder.json().try_init(),
        "text" => builder.with_ansi(false).try_init(),
        // Colour codes only for a terminal: logs redirected to a file or CI log stay plain.
        _ => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
    };
}

impl Command {
    /// The config file this verb reads, for the logging settings.
    fn config_path(&self) -> Option<&std::path::Path> {
        let arg = match self {
            Command::Run(a) | Command::List(a) => a,
            Command::Register(a) => &a.config,
            Command::Verify(a) => &a.config,
            Command::Unregister(a) => &a.config,
            Command::Exec(a) => &a.config,
            Command::Bench(a) => &a.config,
            Command::Doctor(a) => &a.config,
            Command::Cleanup(a) => &a.config,
            Command::Config(ConfigCommand::Check { file, .. }) => return Some(file),
        };
        Some(&arg.config)
    }
}

/// The log level when `--log-level` is not given. `bench` prints one progress line per job on
/// stderr; the backend's per-job info lines (sidecar ready, …) would interleave with it, so it
/// logs warnings and errors only.
fn default_log_level(command: &Command) -> &'static str {
    match command {
        Command::Bench(_) => "warn",
        _ => "info",
    }
}

/// Runs the chosen verb and returns the process exit code.
pub async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run(a) => run::run(&a.config).await,
        Command::Register(a) => register::run(&a).await,
        Command::Verify(a) => verify::run(&a).await,
        Command::Unregister(a) => unregister::run(&a).await,
        Command::List(a) => list::run(&a).await,
        Command::Exec(args) => exec::run(args).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Doctor(a) => doctor::run(&a).await,
        Command::Cleanup(a) => cleanup::run(&a).await,
        Command::Config(command) => config::run(command).await,
    }
}

/// Loads and validates a config file for a verb, logging its warnings. Errors list every problem
/// with its line.
pub async fn load_config(path: &std::path::Path) -> anyhow::Result<crate::config::Config> {
    let owned = path.to_path_buf();
    // The loader reads files with std::fs; keep it off the async workers.
    let loaded = tokio::task::spawn_blocking(move || crate::config::load(&owned)).await??;
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    Ok(loaded.config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_logs_warnings_only_by_default() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).expect("parse");
        let bench = parse(&["runner", "bench", "-c", "/nonexistent"]);
        assert_eq!(default_log_level(&bench.command), "warn");
        let exec = parse(&["runner", "exec", "job"]);
        assert_eq!(default_log_level(&exec.command), "info");
    }
}
