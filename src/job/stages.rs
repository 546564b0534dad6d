//! The build stages between prepare and teardown, as a table: [`plan`] lists them in
//! gitlab-runner's order (its `BuildStage` list: get_sources, restore_cache,
//! download_artifacts, the steps, after_script, archive_cache, upload_artifacts,
//! cleanup_file_variables), [`Run::section_of`] says whether each runs now and under which
//! trace section, and [`Run::exec`] runs it. Each stage folds its end into the job's [`State`].

use super::helper_files::{remove_file_variables, write_file_variables};
// The one loop of files in job/, on purpose: the table of stages runs inside the frame that
// `pipeline.rs` sets up (payload checks, prepare, teardown) and reads that frame's parts; the frame
// calls the table once. Splitting the frame's types out would scatter one idea over three files.
use super::pipeline::{Pipeline, StageContext};
use super::script::{config_commands, user_script};
use super::server_ca;
use super::sources::{self, GitStrategy};
use super::spec::build_variables;
use super::stage::{
    DEFAULT_AFTER_SCRIPT_TIMEOUT, Guards, StageEnd, State, Stop, after_script_deadline, apply_end,
    attempts, debug_trace, export_env, script_deadline, section, when_matches,
};
use super::user::{self, BuildUser};
use super::vars::Variables;
use super::{FailureReason, JobOutcome};
use crate::config::RunnerConfig;
use crate::gitlab::types::{Artifact, JobResponse};
use crate::isolation::{JobEnvironment, JobPaths, Role, ScriptUser};
use crate::trace::JobLog;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// One build stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    GetSources,
    RestoreCache,
    DownloadArtifacts,
    /// Non-root build user: the checkout and the tmp dir become the user's.
    HandToBuildUser,
    /// The payload's step at this index (never `after_script`).
    Step(usize),
    AfterScript,
    ArchiveCache,
    UploadArtifacts,
    CleanupFileVariables,
}

/// The stages of `job`, in the order they run.
fn plan(job: &JobResponse) -> Vec<Stage> {
    let mut stages = vec![
        Stage::GetSources,
        Stage::RestoreCache,
        Stage::DownloadArtifacts,
        Stage::HandToBuildUser,
    ];
    stages.extend(
        job.steps
            .iter()
            .enumerate()
            .filter(|(_, s)| s.name != "after_script")
            .map(|(i, _)| Stage::Step(i)),
    );
    stages.extend([
        Stage::AfterScript,
        Stage::ArchiveCache,
        Stage::UploadArtifacts,
        Stage::CleanupFileVariables,
    ]);
    stages
}

/// The trace section a stage runs in.
struct Section {
    name: String,
    heading: String,
    collapsed: bool,
    /// `false`: the stage runs without a section (cleanup after an abort, when nobody reads
    /// the trace any more).
    shown: bool,
}

impl Section {
    fn new(name: impl Into<String>, heading: impl Into<String>) -> Option<Section> {
        Some(Section {
            name: name.into(),
            heading: heading.into(),
            collapsed: false,
            shown: true,
        })
    }
}

/// Runs the build stages of a prepared job and returns how it ended.
pub(super) async fn run(
    pipeline: &Pipeline,
    job: &JobResponse,
    runner: &RunnerConfig,
    log: &Arc<JobLog>,
    guards: &Guards,
    env: &dyn JobEnvironment,
    timeout: Duration,
) -> JobOutcome {
    let paths = env.paths().clone();
    let host = env.host_dirs().clone();
    let mut vars = build_variables(job, runner, Some(&paths), &env.job_env(), timeout);
    // The GitLab server's private CA, as gitlab-runner gives it to the job and to git.
    let certs = std::path::Path::new(server_ca::CERTS_DIR);
    let with_ca = match server_ca::variable(runner, certs).await {
        Ok(Some(v)) => {
            vars.push_var(v);
            true
        }
        Ok(None) => false,
        Err(w) => {
            log.warning(&w);
            false
        }
    };
    // File variables: written once, removed in cleanup_file_variables (and by teardown).
    let file_vars = match write_file_variables(&mut vars, &paths.tmp_dir, &host.tmp_dir).await {
        Ok(f) => f,
        Err(e) => {
            log.error(&format!("writing file variables failed: {e}"));
            return JobOutcome::failed(FailureReason::RunnerSystemFailure);
        }
    };
    // Who runs the build scripts: asked of the image before the first stage, so that a user
    // the image does not have fails the job before anything ran.
    let build_user = match user::resolve(job, env, guards.abort.clone()).await {
        Ok(u) => u,
        Err(e) => {
            log.error(&e);
            return JobOutcome::failed(FailureReason::RunnerSystemFailure);
        }
    };
    let script_user = match &build_user {
        Some(u) => u.script_user(),
        // Root (or the image's own root user): only a `docker: user` spelling of root is
        // passed on.
        None => ScriptUser {
            user: user::requested_user(job).ok().flatten(),
            owner: None,
        },
    };
    let ca_path = with_ca
        .then(|| vars.get(server_ca::CA_VARIABLE).map(str::to_string))
        .flatten();
    let debug = debug_trace(&vars);
    if debug {
        log.warning(
            "CI_DEBUG_TRACE is enabled: every command is traced with the values of its \
             variables (masked values stay masked); disable it once the job is debugged",
        );
    }
    let mut run = Run {
        pipeline,
        debug,
        ca_path,
        script_deadline: None,
        build_user,
        script_user,
        job,
        runner,
        log,
        guards,
        env,
        paths,
        host,
        vars,
        state: State::Running,
        file_vars,
    };
    for stage in plan(job) {
        let Some(s) = run.section_of(stage) else {
            continue;
        };
        if s.shown {
            section(log, &s.name, &s.heading, s.collapsed, run.exec(stage)).await;
        } else {
            run.exec(stage).await;
        }
    }
    match run.state {
        State::Running => JobOutcome::Success,
        State::Failed(reason, exit_code) => JobOutcome::Failed { reason, exit_code },
        State::Canceled | State::Aborted => JobOutcome::Canceled,
    }
}

/// What the stages of one job read and change.
struct Run<'a> {
    pipeline: &'a Pipeline,
    /// `CI_DEBUG_TRACE`: scripts run with `set -x`.
    debug: bool,
    /// Where the job sees `CI_SERVER_TLS_CA_FILE`, when the runner has a CA for GitLab.
    ca_path: Option<String>,
    /// `RUNNER_SCRIPT_TIMEOUT`'s end, fixed when the first step starts.
    script_deadline: Option<Instant>,
    /// The non-root user of the build scripts, if any.
    build_user: Option<BuildUser>,
    /// How build scripts run (user, script owner).
    script_user: ScriptUser,
    job: &'a JobResponse,
    runner: &'a RunnerConfig,
    log: &'a Arc<JobLog>,
    guards: &'a Guards,
    env: &'a dyn JobEnvironment,
    /// Paths as the job's containers see them.
    paths: JobPaths,
    /// The same directories as the runner sees them.
    host: JobPaths,
    vars: Variables,
    state: State,
    /// Names of the file variables written into the tmp dir.
    file_vars: Vec<String>,
}

impl Run<'_> {
    /// Whether `stage` runs now, given the job's state, and under which section.
    fn section_of(&self, stage: Stage) -> Option<Section> {
        let failed = self.state.failed();
        // Canceled or aborted jobs keep only after_script (unless aborted) and the cleanup.
        let finished = !matches!(self.state, State::Canceled | State::Aborted);
        match stage {
            Stage::GetSources => Section::new("get_sources", "Getting source from Git repository"),
            Stage::RestoreCache if !failed && self.pipeline.cache.is_some() => {
                Section::new("restore_cache", "Restoring cache")
            }
            Stage::DownloadArtifacts
                if !failed
                    && self
                        .job
                        .dependencies
                        .iter()
                        .any(|d| d.artifacts_file.is_some()) =>
            {
                Section::new("download_artifacts", "Downloading artifacts")
            }
            // Also after a failure: `on_failure` steps and after_script still run as the user.
            Stage::HandToBuildUser if self.state != State::Aborted => {
                let u = self.build_user.as_ref()?;
                Section::new(
                    "build_user",
                    format!(
                        "Handing the project dir and TMPDIR to uid {}:{}",
                        u.uid, u.gid
                    ),
                )
            }
            Stage::Step(i) => {
                let step = self.job.steps.get(i)?;
                let run = match &self.state {
                    State::Running => when_matches(&step.when, false),
                    State::Failed(..) => when_matches(&step.when, true),
                    State::Canceled | State::Aborted => false,
                };
                let name = format!("step_{}", step.name);
                let heading = format!("Executing \"{name}\" stage of the job script");
                run.then(|| Section::new(name, heading)).flatten()
            }
            Stage::AfterScript if self.state != State::Aborted && self.after_script().is_some() => {
                Section::new("after_script", "Running after_script")
            }
            Stage::ArchiveCache if finished && self.pipeline.cache.is_some() => {
                let name = if failed {
                    "archive_cache_on_failure"
                } else {
                    "archive_cache"
                };
                Section::new(name, "Saving cache")
            }
            Stage::UploadArtifacts if finished && !self.wanted_artifacts().is_empty() => {
                if failed {
                    Section::new(
                        "upload_artifacts_on_failure",
                        "Uploading artifacts for failed job",
                    )
                } else {
                    Section::new(
                        "upload_artifacts_on_success",
                        "Uploading artifacts for successful job",
                    )
                }
            }
            Stage::CleanupFileVariables if !self.file_vars.is_empty() => Some(Section {
                name: "cleanup_file_variables".into(),
                heading: "Cleaning up project directory and file based variables".into(),
                collapsed: true,
                shown: self.state != State::Aborted,
            }),
            _ => None,
        }
    }

    /// Runs `stage` (which [`Self::section_of`] admitted).
    async fn exec(&mut self, stage: Stage) {
        match stage {
            Stage::GetSources => {
                let tries = attempts(&self.vars, "GET_SOURCES_ATTEMPTS", self.log);
                let mut end = self.get_sources().await;
                for n in 2..=tries {
                    if !matches!(end, StageEnd::Exit(_) | StageEnd::System(_)) {
                        break;
                    }
                    self.log
                        .warning(&format!("getting sources failed; attempt {n} of {tries}"));
                    end = self.get_sources().await;
                }
                apply_end(self.log, &mut self.state, end, false, "getting sources");
            }
            Stage::RestoreCache => {
                let tries = attempts(&self.vars, "RESTORE_CACHE_ATTEMPTS", self.log);
                if let Some(cache) = &self.pipeline.cache {
                    for n in 1..=tries {
                        match cache.restore(&self.cache_context()).await {
                            Ok(()) => break,
                            // Cache failures are warnings, never job failures (as in
                            // gitlab-runner).
                            Err(e) if n == tries => self
                                .log
                                .warning(&format!("restoring the cache failed: {e}")),
                            Err(e) => self.log.warning(&format!(
                                "restoring the cache failed: {e}; attempt {} of {tries}",
                                n + 1
                            )),
                        }
                    }
                }
            }
            Stage::DownloadArtifacts => self.download_artifacts().await,
            Stage::HandToBuildUser => {
                let Some(u) = &self.build_user else {
                    return;
                };
                let script = u.chown_script(&self.paths);
                let end = self
                    .pipeline
                    .run_stage(
                        self.env,
                        self.log,
                        self.guards,
                        Role::Helper,
                        &ScriptUser::default(),
                        script,
                        Vec::new(),
                    )
                    .await;
                apply_end(
                    self.log,
                    &mut self.state,
                    end,
                    false,
                    "handing the checkout to the build user",
                );
            }
            Stage::Step(i) => self.step(i).await,
            Stage::AfterScript => self.after_script_stage().await,
            Stage::ArchiveCache => {
                let failed = self.state.failed();
                if let Some(cache) = &self.pipeline.cache
                    && let Err(e) = cache.archive(&self.cache_context(), failed).await
                {
                    self.log.warning(&format!("saving the cache failed: {e}"));
                }
            }
            Stage::UploadArtifacts => self.upload_artifacts().await,
            Stage::CleanupFileVariables => {
                remove_file_variables(&self.host.tmp_dir, self.file_vars.clone()).await;
            }
        }
    }

    fn cache_context(&self) -> StageContext<'_> {
        StageContext {
            job: self.job,
            runner: self.runner,
            env: self.env,
            vars: &self.vars,
            log: self.log,
            cancel: self.guards.abort.clone(),
        }
    }

    fn after_script(&self) -> Option<&crate::gitlab::types::Step> {
        self.job
            .steps
            .iter()
            .find(|s| s.name == "after_script" && !s.script.is_empty())
    }

    /// The job's artifacts whose `when` matches how the job stands.
    fn wanted_artifacts(&self) -> Vec<&'_ Artifact> {
        let failed = self.state.failed();
        self.job
            .artifacts
            .iter()
            .filter(|a| when_matches(&a.when, failed))
            .collect()
    }

    async fn get_sources(&self) -> StageEnd {
        let (job, log, paths, vars) = (self.job, self.log, &self.paths, &self.vars);
        if let Some(tree) = &self.pipeline.local_tree {
            log.line(&format!(
                "Copying the local working tree {} to {}",
                tree.root.display(),
                paths.project_dir.display()
            ));
            let tree = tree.clone();
            let dest = paths.project_dir.clone();
            return match tokio::task::spawn_blocking(move || sources::copy_local_tree(&tree, &dest))
                .await
            {
                Ok(Ok(n)) => {
                    log.line(&format!("Copied {n} files"));
                    StageEnd::Ok
                }
                Ok(Err(e)) => StageEnd::System(format!("copying the working tree: {e}")),
                Err(e) => StageEnd::System(format!("copying the working tree: {e}")),
            };
        }
        let strategy = match GitStrategy::resolve(vars.get("GIT_STRATEGY"), job.allow_git_fetch) {
            Ok(s) => s,
            Err(e) => return StageEnd::System(e),
        };
        let mut pre = Vec::new();
        if let Some(p) = &self.runner.pre_get_sources_script {
            pre.extend(config_commands(p));
        }
        let mut post = Vec::new();
        for h in &job.hooks {
            match h.name.as_str() {
                "pre_get_sources_script" => pre.extend(h.script.iter().cloned()),
                "post_get_sources_script" => post.extend(h.script.iter().cloned()),
                other => log.warning(&format!("ignoring unknown hook {other:?}")),
            }
        }
        // gitlab-runner's order: the job's post hook first, then the config's.
        if let Some(p) = &self.runner.post_get_sources_script {
            post.extend(config_commands(p));
        }
        let s = sources::git_script(
            job,
            vars,
            strategy,
            &paths.project_dir,
            &paths.tmp_dir,
            &pre,
            &post,
        );
        for w in &s.warnings {
            log.warning(w);
        }
        let mut env_vars = export_env(vars);
        env_vars.extend(s.env);
        if let Some(ca) = &self.ca_path {
            server_ca::add_git_ca(&mut env_vars, job, ca);
        }
        self.pipeline
            .run_stage(
                self.env,
                log,
                self.guards,
                Role::Helper,
                &ScriptUser::default(),
                self.traced(s.script),
                env_vars,
            )
            .await
    }

    async fn download_artifacts(&mut self) {
        let deps = self
            .job
            .dependencies
            .iter()
            .filter(|d| d.artifacts_file.is_some());
        let tries = attempts(&self.vars, "ARTIFACT_DOWNLOAD_ATTEMPTS", self.log);
        for dep in deps {
            let mut res = Err(String::new());
            for n in 1..=tries {
                if n > 1 {
                    self.log
                        .warning(&format!("downloading artifacts: attempt {n} of {tries}"));
                }
                res = self
                    .pipeline
                    .download_dependency(self.job, dep, &self.host, self.log)
                    .await;
                if res.is_ok() {
                    break;
                }
                if let Err(msg) = &res
                    && n < tries
                {
                    self.log.warning(msg);
                }
            }
            if let Err(msg) = res {
                self.log.error(&msg);
                self.state = State::Failed(FailureReason::UnknownFailure, None);
                break;
            }
        }
    }

    /// A step of the job script; `script` gets the config's `pre_build_script` before and
    /// `post_build_script` after its commands, in the same shell (as gitlab-runner).
    async fn step(&mut self, i: usize) {
        let job = self.job;
        let Some(step) = job.steps.get(i) else {
            return;
        };
        let mut commands = Vec::new();
        if step.name == "script"
            && let Some(pre) = &self.runner.pre_build_script
        {
            commands.extend(config_commands(pre));
        }
        commands.extend(step.script.iter().cloned());
        if step.name == "script"
            && let Some(post) = &self.runner.post_build_script
        {
            commands.extend(config_commands(post));
        }
        let script = user_script(&self.paths.project_dir.to_string_lossy(), &commands);
        let job_deadline = self.guards.deadline;
        let deadline = *self.script_deadline.get_or_insert_with(|| {
            script_deadline(&self.vars, Instant::now(), job_deadline).unwrap_or(job_deadline)
        });
        let guards = Guards {
            deadline,
            ..self.guards.clone()
        };
        let end = self.run_build(script, &guards).await;
        if matches!(end, StageEnd::Stopped(Stop::Timeout)) && deadline < job_deadline {
            self.log.error(&format!(
                "the script ran past RUNNER_SCRIPT_TIMEOUT ({})",
                self.vars
                    .get("RUNNER_SCRIPT_TIMEOUT")
                    .unwrap_or_default()
                    .trim()
            ));
        }
        let name = format!("step_{}", step.name);
        apply_end(self.log, &mut self.state, end, step.allow_failure, &name);
    }

    /// `after_script`: own shell, own timeout, runs unless aborted; its failures are warnings
    /// unless `AFTER_SCRIPT_IGNORE_ERRORS` is `false`.
    async fn after_script_stage(&mut self) {
        let Some(step) = self.after_script() else {
            return;
        };
        let commands = step.script.clone();
        self.vars.push("CI_JOB_STATUS", self.state.ci_job_status());
        self.log.line("Running after script...");
        let after_guards = Guards {
            abort: self.guards.abort.clone(),
            graceful: None,
            deadline: after_script_deadline(&self.vars, Instant::now(), self.guards.deadline),
        };
        let script = user_script(&self.paths.project_dir.to_string_lossy(), &commands);
        let end = self.run_build(script, &after_guards).await;
        let strict = self
            .vars
            .get("AFTER_SCRIPT_IGNORE_ERRORS")
            .is_some_and(|v| v.trim() == "false");
        let state = &mut self.state;
        match end {
            StageEnd::Ok => {}
            StageEnd::Stopped(Stop::Abort) => *state = State::Aborted,
            StageEnd::Stopped(_) => {
                self.log.warning("after_script timed out");
                if strict && !state.failed() {
                    *state = State::Failed(FailureReason::JobExecutionTimeout, None);
                }
            }
            StageEnd::Exit(c) => {
                self.log
                    .warning(&format!("after_script failed with exit code {c}"));
                if strict && !state.failed() {
                    *state = State::Failed(FailureReason::ScriptFailure, Some(c));
                }
            }
            StageEnd::System(e) => self.log.warning(&format!("after_script failed: {e}")),
        }
    }

    /// `script` with `set -x` first when `CI_DEBUG_TRACE` is on.
    fn traced(&self, script: String) -> String {
        if self.debug {
            format!("set -x\n{script}")
        } else {
            script
        }
    }

    /// Runs a build script as the build user, tried again (up to
    /// `EXECUTOR_JOB_SECTION_ATTEMPTS`) when the backend failed to run it, never when the
    /// script itself failed or was stopped.
    async fn run_build(&self, script: String, guards: &Guards) -> StageEnd {
        let tries = attempts(&self.vars, "EXECUTOR_JOB_SECTION_ATTEMPTS", self.log);
        let script = self.traced(script);
        let mut n = 1;
        loop {
            let end = self
                .pipeline
                .run_stage(
                    self.env,
                    self.log,
                    guards,
                    Role::Build,
                    &self.script_user,
                    script.clone(),
                    export_env(&self.vars),
                )
                .await;
            match end {
                StageEnd::System(e) if n < tries => {
                    n += 1;
                    self.log.warning(&format!(
                        "running the script failed: {e}; attempt {n} of {tries}"
                    ));
                }
                end => return end,
            }
        }
    }

    /// Uploads the artifacts whose `when` matches; a failed upload fails a job that had not
    /// failed yet.
    async fn upload_artifacts(&mut self) {
        let after_guards = Guards {
            abort: self.guards.abort.clone(),
            graceful: None,
            deadline: Instant::now() + DEFAULT_AFTER_SCRIPT_TIMEOUT,
        };
        let wanted: Vec<Artifact> = self.wanted_artifacts().into_iter().cloned().collect();
        for a in &wanted {
            if let Err(msg) = self
                .pipeline
                .upload_artifact(
                    self.job,
                    a,
                    self.env,
                    &self.vars,
                    &self.paths,
                    self.log,
                    &after_guards,
                )
                .await
            {
                self.log.error(&msg);
                if !self.state.failed() {
                    self.state = State::Failed(FailureReason::UnknownFailure, None);
                }
            }
        }
    }
}
