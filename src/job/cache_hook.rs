//! The pipeline's [`CacheHook`] over the local archives of [`crate::cache`].
//!
//! - Keys, fallback keys, paths, `policy` and `when` are expanded with the job's variables
//!   (GitLab sends `$VARS` unexpanded in cache entries).
//! - The archive's directory is chosen by the **job's** protected flag, the same value the
//!   backend uses for warm data roots, so an unprotected job can never feed a protected one.
//! - `untracked: true` is listed with `git ls-files -o` run by the helper container over the job
//!   directory: the host's git never runs on an untrusted checkout (a repository's config can
//!   name programs to run).
//! - The archives themselves are read and written on the host by the runner, with the
//!   `O_NOFOLLOW` walk of `src/cache/archive.rs`; no container ever sees the cache directory.
//! - Failures are warnings (the pipeline logs them); only an unknown `policy`/`when` is reported
//!   as an error string, which the pipeline turns into a warning too.

use super::helper_files::{parse_untracked, read_helper_list, untracked_script};
use super::pipeline::{CacheHook, StageContext};
use crate::cache::{self, CacheContext, CacheEntry, JobStatus};
// Computed by cache/ (it is about cache keys); re-exported where `runner exec` found it.
pub use crate::cache::{KeyFilesError, files_key};
use crate::isolation::{OutputSink, Role, ScriptRequest};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// `cache:` with local archives under the runner entry's `cache_dir`, and the shared store
/// when the entry has one. One hook serves every job of a daemon (see
/// [`super::RunnerExecutor`]), so each entry's store client is made once and shared by its
/// jobs; clones share the clients.
#[derive(Debug, Default, Clone)]
pub struct LocalCache {
    stores: Arc<cache::StoreClients>,
}

impl LocalCache {
    /// The hook, ready to put in [`super::Pipeline::cache`].
    pub fn hook() -> Arc<dyn CacheHook> {
        Arc::new(LocalCache::default())
    }
}

/// Whether the job runs for a protected ref: GitLab's `git_info.protected` only, never a
/// variable the job can set (see [`crate::job::trust::is_protected`]); the same answer
/// `build_spec` gives the backend.
pub fn job_is_protected(ctx: &StageContext<'_>) -> bool {
    crate::job::trust::is_protected(ctx.job)
}

/// The shared store of the job's runner entry, if `[runners.cache] Type` is set: the entry's
/// kept client (made by its first job). A store that cannot be set up (an unreadable
/// credentials file, say) is a warning: the job uses this host's cache only.
fn shared_store(
    stores: &cache::StoreClients,
    ctx: &StageContext<'_>,
) -> Option<Arc<cache::remote::Remote>> {
    let store = ctx.runner.cache.store.as_ref()?;
    // The entry as the executor names it (its backend and GitLab client use the same key).
    let entry = format!("{}\n{}", ctx.runner.name, ctx.runner.url);
    match stores.client(&entry, store, &ctx.runner.token) {
        Ok(remote) => Some(remote),
        Err(e) => {
            ctx.log
                .warning(&format!("{e}; the cache stays on this host for this job"));
            None
        }
    }
}

/// The cache context of this job, with the entry's store client from `stores`.
pub fn cache_context(stores: &cache::StoreClients, ctx: &StageContext<'_>) -> CacheContext {
    CacheContext {
        remote: shared_store(stores, ctx),
        // Scoped by GitLab instance: project ids are only unique within one (H3).
        cache_dir: ctx
            .runner
            .cache_dir
            .join(crate::job::trust::instance_key(&ctx.runner.url)),
        project_dir: ctx.env.host_dirs().project_dir.clone(),
        project_id: ctx.job.job_info.project_id,
        protected: job_is_protected(ctx),
        // gitlab-runner's default key: `<job name>/<ref>`.
        default_key: format!("{}/{}", ctx.job.job_info.name, ctx.job.git_info.r#ref),
        fallback_key: ctx
            .vars
            .get("CACHE_FALLBACK_KEY")
            .map(|k| ctx.vars.expand(k))
            .filter(|k| !k.trim().is_empty()),
    }
}

/// The job's cache entries with every string expanded by the job's variables, as the cache
/// module's own type (it does not know GitLab's wire types).
pub fn expanded_entries(ctx: &StageContext<'_>) -> Vec<CacheEntry> {
    let v = ctx.vars;
    ctx.job
        .cache
        .iter()
        .map(|c| CacheEntry {
            key: v.expand(&c.key),
            untracked: c.untracked,
            paths: c.paths.iter().map(|p| v.expand(p)).collect(),
            policy: v.expand(&c.policy),
            when: v.expand(&c.when),
            fallback_keys: c.fallback_keys.iter().map(|k| v.expand(k)).collect(),
        })
        .collect()
}

/// Routes the cache's trace lines into the job log.
fn log_of<'a>(ctx: &'a StageContext<'_>) -> impl Fn(&str) + Send + Sync + 'a {
    move |line: &str| {
        if let Some(rest) = line.strip_prefix("WARNING: ") {
            ctx.log.warning(rest);
        } else {
            ctx.log.line(line);
        }
    }
}

/// The most helper output kept while listing untracked files. The listing itself goes to a
/// file; what is printed is only shown when the step fails. A repository's own git config
/// (`core.fsmonitor`, hooks) runs in `git ls-files` and could print without end (M2).
const HELPER_OUTPUT_LIMIT: usize = 64 * 1024;

/// Collects a helper script's output (the job log is borrowed, a sink must be `'static`), up
/// to `limit` bytes; past it, `stop` is cancelled so the script is killed.
struct Collect {
    buf: Mutex<Vec<u8>>,
    limit: usize,
    overflowed: AtomicBool,
    stop: CancellationToken,
}

impl Collect {
    fn new(limit: usize, stop: CancellationToken) -> Self {
        Collect {
            buf: Mutex::new(Vec::new()),
            limit,
            overflowed: AtomicBool::new(false),
            stop,
        }
    }

    fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::SeqCst)
    }

    fn text(&self) -> String {
        let b = self.buf.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&b).trim().to_string()
    }
}

impl OutputSink for Collect {
    fn write(&self, data: &[u8]) {
        if let Ok(mut b) = self.buf.lock() {
            let room = self.limit.saturating_sub(b.len());
            b.extend_from_slice(&data[..data.len().min(room)]);
            if data.len() > room {
                self.overflowed.store(true, Ordering::SeqCst);
                self.stop.cancel();
            }
        }
    }
}

/// Lists untracked files of the checkout with git in the helper container; a directory that
/// is not a git repository counts as wholly untracked (`.`).
async fn untracked_files(ctx: &StageContext<'_>) -> Result<Vec<PathBuf>, String> {
    let paths = ctx.env.paths();
    let list_name = format!("cache-untracked-{}.list", uuid::Uuid::new_v4().simple());
    let list = paths.tmp_dir.join(&list_name);
    let script = untracked_script(&paths.project_dir, &list);
    let stop = ctx.cancel.child_token();
    let out = Arc::new(Collect::new(HELPER_OUTPUT_LIMIT, stop.clone()));
    let sink: Arc<dyn OutputSink> = out.clone();
    let result = ctx
        .env
        .run_script(
            ScriptRequest {
                role: Role::Helper,
                script,
                env: Vec::new(),
            },
            sink,
            stop,
        )
        .await;
    if out.overflowed() {
        return Err(format!(
            "listing untracked files printed more than {} KiB and was stopped (does the \
             repository's git config run a program, e.g. core.fsmonitor?); this cache is not saved",
            HELPER_OUTPUT_LIMIT / 1024
        ));
    }
    let code = result.map_err(|e| format!("listing untracked files: {e}"))?;
    if code != 0 {
        return Err(format!(
            "listing untracked files exited with {code}: {}",
            out.text()
        ));
    }
    // Through the tmp dir's handle, bounded, never through a link or into a FIFO.
    let data = read_helper_list(&ctx.env.host_dirs().tmp_dir, &list_name).await?;
    Ok(parse_untracked(&data))
}

/// Whether any entry will be saved and needs the untracked list (avoids a helper container for
/// the common case).
fn needs_untracked(entries: &[CacheEntry], status: JobStatus) -> bool {
    entries.iter().any(|e| {
        e.untracked
            && cache::Policy::parse(&e.policy).is_some_and(|p| p != cache::Policy::Pull)
            && cache::When::parse(&e.when).is_some_and(|w| w.matches(status))
    })
}

#[async_trait::async_trait]
impl CacheHook for LocalCache {
    async fn restore(&self, ctx: &StageContext<'_>) -> Result<(), String> {
        let entries = expanded_entries(ctx);
        if entries.is_empty() {
            return Ok(());
        }
        let cctx = cache_context(&self.stores, ctx);
        let log = log_of(ctx);
        cache::restore(&cctx, &entries, &log)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    async fn archive(&self, ctx: &StageContext<'_>, job_failed: bool) -> Result<(), String> {
        let entries = expanded_entries(ctx);
        if entries.is_empty() {
            return Ok(());
        }
        let status = if job_failed {
            JobStatus::Failed
        } else {
            JobStatus::Success
        };
        let untracked = if needs_untracked(&entries, status) {
            match untracked_files(ctx).await {
                Ok(u) => u,
                Err(e) => {
                    // The `paths` part of the cache is still worth saving.
                    ctx.log.warning(&format!("untracked files not cached: {e}"));
                    Vec::new()
                }
            }
        } else {
            Vec::new()
        };
        let cctx = cache_context(&self.stores, ctx);
        let log = log_of(ctx);
        cache::save(&cctx, &entries, status, &untracked, &log)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isolation::{JobEnvironment, JobPaths};

    /// A helper whose git prints without end (a `core.fsmonitor` that writes to stderr) until
    /// it is told to stop; it counts what it printed.
    struct Chatty {
        paths: JobPaths,
        printed: std::sync::atomic::AtomicUsize,
    }

    #[async_trait::async_trait]
    impl JobEnvironment for Chatty {
        fn paths(&self) -> &JobPaths {
            &self.paths
        }
        fn job_env(&self) -> Vec<(String, String)> {
            Vec::new()
        }
        async fn run_script(
            &self,
            _req: ScriptRequest,
            out: Arc<dyn OutputSink>,
            cancel: CancellationToken,
        ) -> Result<i32, crate::isolation::Error> {
            let chunk = vec![b'x'; 8192];
            // 64 MiB at most, so a broken cap fails the test instead of hanging it.
            for _ in 0..8192 {
                if cancel.is_cancelled() {
                    return Err(crate::isolation::Error::Canceled);
                }
                out.write(&chunk);
                self.printed.fetch_add(chunk.len(), Ordering::SeqCst);
                tokio::task::yield_now().await;
            }
            Ok(0)
        }
        async fn run_script_as(
            &self,
            req: ScriptRequest,
            _user: &crate::isolation::ScriptUser,
            out: Arc<dyn OutputSink>,
            cancel: CancellationToken,
        ) -> Result<i32, crate::isolation::Error> {
            self.run_script(req, out, cancel).await
        }
        fn host_dirs(&self) -> &JobPaths {
            &self.paths
        }
        async fn image_user(&self) -> Result<Option<String>, crate::isolation::Error> {
            Ok(None)
        }
        async fn wait_for_services(
            &self,
            _timeout: std::time::Duration,
            _cancel: CancellationToken,
        ) -> Vec<crate::isolation::ServiceWarning> {
            Vec::new()
        }
        async fn service_logs(&self, _lines: usize) -> Vec<crate::isolation::ServiceLog> {
            Vec::new()
        }
        async fn teardown(self: Box<Self>) -> crate::isolation::TeardownReport {
            crate::isolation::TeardownReport::default()
        }
        fn resources(&self) -> crate::isolation::EnvironmentResources {
            crate::isolation::EnvironmentResources::of_paths(&self.paths)
        }
    }

    #[tokio::test]
    async fn helper_output_is_capped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let env = Chatty {
            paths: JobPaths {
                project_dir: dir.path().join("p"),
                tmp_dir: dir.path().join("t"),
            },
            printed: Default::default(),
        };
        let job = crate::gitlab::types::JobResponse::default();
        let runner = crate::config::RunnerConfig::default();
        let vars = crate::job::vars::Variables::new();
        let log = crate::trace::JobLog::new(
            Arc::new(crate::trace::BufferSink::new()),
            crate::trace::LogOptions {
                masked_values: Vec::new(),
                extra_prefixes: Vec::new(),
                output_limit: 0,
                sections: false,
            },
        );
        let ctx = StageContext {
            job: &job,
            runner: &runner,
            env: &env,
            vars: &vars,
            log: &log,
            cancel: CancellationToken::new(),
        };
        let err = untracked_files(&ctx).await.expect_err("the step fails");
        assert!(err.contains("printed more than 64 KiB"), "{err}");
        // Stopped right after the cap, not at the end of its output.
        let printed = env.printed.load(Ordering::SeqCst);
        assert!(printed <= HELPER_OUTPUT_LIMIT + 8192, "{printed}");

        let collect = Collect::new(100, CancellationToken::new());
        collect.write(&[b'a'; 60]);
        collect.write(&[b'b'; 60]);
        assert!(collect.overflowed() && collect.stop.is_cancelled());
        assert_eq!(collect.text().len(), 100);
    }

    #[test]
    fn untracked_needed_only_when_saved() {
        let e = CacheEntry {
            untracked: true,
            policy: "pull".into(),
            ..Default::default()
        };
        assert!(!needs_untracked(
            std::slice::from_ref(&e),
            JobStatus::Success
        ));
        let e = CacheEntry {
            untracked: true,
            ..Default::default()
        };
        assert!(needs_untracked(
            std::slice::from_ref(&e),
            JobStatus::Success
        ));
        assert!(!needs_untracked(&[e], JobStatus::Failed));
    }
}
