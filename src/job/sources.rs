//! Getting sources: the git script run in the helper role, and the local working-tree copy
//! used by `runner exec`.
//!
//! The job token never lands in `.git/config`: the remote URL is stored without credentials and
//! the token reaches git as an `http.<origin>.extraHeader` given through `GIT_CONFIG_*`
//! environment variables of the helper script only.

use super::script::{push_command, sh_quote};
use super::vars::Variables;
use crate::gitlab::types::JobResponse;
use base64::Engine;
use std::path::{Path, PathBuf};

/// `GIT_STRATEGY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GitStrategy {
    /// Fresh clone into an emptied directory.
    Clone,
    /// Reuse the directory, fetch into it.
    Fetch,
    /// Touch nothing.
    None,
    /// An empty directory.
    Empty,
}

impl GitStrategy {
    /// From the `GIT_STRATEGY` variable, defaulting from `allow_git_fetch`.
    pub fn resolve(value: Option<&str>, allow_git_fetch: bool) -> Result<Self, String> {
        match value.map(str::trim).unwrap_or("") {
            "" => Ok(if allow_git_fetch {
                GitStrategy::Fetch
            } else {
                GitStrategy::Clone
            }),
            "clone" => Ok(GitStrategy::Clone),
            "fetch" => Ok(GitStrategy::Fetch),
            "none" => Ok(GitStrategy::None),
            "empty" => Ok(GitStrategy::Empty),
            other => Err(format!("unknown GIT_STRATEGY {other:?}")),
        }
    }
}

/// A remote URL split into the part git stores and the credentials it gets on the side.
#[derive(Clone)]
pub struct Remote {
    /// URL without user and password: what `.git/config` may hold.
    pub url: String,
    /// `scheme://host[:port]/`, scope of the auth header; `None` for non-HTTP remotes.
    pub origin: Option<String>,
    /// `Authorization: Basic …` value, when the URL carried credentials.
    pub auth_header: Option<String>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("url", &self.url)
            .field("origin", &self.origin)
            .field(
                "auth_header",
                &self.auth_header.as_ref().map(|_| "[MASKED]"),
            )
            .finish()
    }
}

/// Splits the credentials out of `repo_url`. A bare token with no user (unusual) gets the
/// `gitlab-ci-token` user, as GitLab's URLs have.
pub fn split_remote(repo_url: &str) -> Remote {
    let Ok(mut url) = url::Url::parse(repo_url) else {
        // A local path or scp-like address: nothing to strip.
        return Remote {
            url: repo_url.to_string(),
            origin: None,
            auth_header: None,
        };
    };
    let scheme = url.scheme().to_string();
    let is_http = scheme == "http" || scheme == "https";
    let auth_header = basic_credentials(&url).map(|raw| {
        format!(
            "Authorization: Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    });
    // Setting an empty user/password cannot fail on http(s)/file URLs; ignore the unit error
    // for the exotic schemes that have no authority (then there was nothing to strip).
    let _ = url.set_password(None);
    let _ = url.set_username("");
    let origin = if is_http {
        url.host_str().map(|h| match url.port() {
            Some(p) => format!("{scheme}://{h}:{p}/"),
            None => format!("{scheme}://{h}/"),
        })
    } else {
        None
    };
    Remote {
        url: url.to_string(),
        origin,
        auth_header,
    }
}

/// `user:password` of an http(s) URL with a password, decoded, as the Basic auth header
/// carries it (the log masks this exact text and its base64 too).
pub fn basic_credentials(url: &url::Url) -> Option<String> {
    if !matches!(url.scheme(), "http" | "https") {
        return None;
    }
    let pass = crate::percent::decode(url.password()?);
    let user = match crate::percent::decode(url.username()) {
        u if u.is_empty() => "gitlab-ci-token".to_string(),
        u => u,
    };
    Some(format!("{user}:{pass}"))
}

/// The environment that hands git the credentials without writing them anywhere.
pub fn credential_env(remote: &Remote) -> Vec<(String, String)> {
    let mut env = vec![
        ("GIT_TERMINAL_PROMPT".to_string(), "0".to_string()),
        ("GCM_INTERACTIVE".to_string(), "Never".to_string()),
    ];
    if let (Some(origin), Some(header)) = (&remote.origin, &remote.auth_header) {
        env.push(("GIT_CONFIG_COUNT".to_string(), "1".to_string()));
        env.push((
            "GIT_CONFIG_KEY_0".to_string(),
            format!("http.{origin}.extraHeader"),
        ));
        env.push(("GIT_CONFIG_VALUE_0".to_string(), header.clone()));
    }
    env
}

/// Whether a variable is true as Go's `strconv.ParseBool` reads it (gitlab-runner's reading of
/// `GIT_LFS_SKIP_SMUDGE` and `GIT_SUBMODULE_FORCE_HTTPS`).
fn truthy(value: Option<&str>) -> bool {
    matches!(
        value.map(str::trim),
        Some("1" | "t" | "T" | "true" | "TRUE" | "True")
    )
}

/// `GIT_SUBMODULE_FORCE_HTTPS`: submodule URLs over SSH to the GitLab host are rewritten to its
/// HTTP(S) origin (where the job token's header applies), as gitlab-runner's insteadOf rules do:
/// `git@<host>:` and `ssh://git@<host>` with the default SSH port, `ssh://git@<host>:<port>`
/// otherwise; the host is `CI_SERVER_SHELL_SSH_HOST`, else `CI_SERVER_HOST`, else the remote's.
fn force_https_rules(remote: &Remote, vars: &Variables) -> Vec<(String, String)> {
    let Some(origin) = &remote.origin else {
        return Vec::new();
    };
    let base = origin.trim_end_matches('/');
    let url_host = url::Url::parse(origin)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_default();
    let non_empty = |k: &str| vars.get(k).map(str::trim).filter(|v| !v.is_empty());
    let host = non_empty("CI_SERVER_SHELL_SSH_HOST")
        .or(non_empty("CI_SERVER_HOST"))
        .map(str::to_string)
        .unwrap_or(url_host);
    match non_empty("CI_SERVER_SHELL_SSH_PORT") {
        None | Some("22") => vec![
            (format!("url.{base}/.insteadOf"), format!("git@{host}:")),
            (format!("url.{base}.insteadOf"), format!("ssh://git@{host}")),
        ],
        Some(port) => vec![(
            format!("url.{base}.insteadOf"),
            format!("ssh://git@{host}:{port}"),
        )],
    }
}

/// Adds `GIT_CONFIG_KEY_n`/`VALUE_n` entries after those already in `env`.
fn push_git_config(env: &mut Vec<(String, String)>, entries: Vec<(String, String)>) {
    let count_at = env.iter().position(|(k, _)| k == "GIT_CONFIG_COUNT");
    let mut n: usize = count_at
        .and_then(|i| env[i].1.parse().ok())
        .unwrap_or_default();
    for (k, v) in entries {
        env.push((format!("GIT_CONFIG_KEY_{n}"), k));
        env.push((format!("GIT_CONFIG_VALUE_{n}"), v));
        n += 1;
    }
    match count_at {
        Some(i) => env[i].1 = n.to_string(),
        None if n > 0 => env.push(("GIT_CONFIG_COUNT".to_string(), n.to_string())),
        None => {}
    }
}

/// Splits a flags variable on whitespace, quoting each word. `none` means no flags.
fn flags(value: Option<&str>, default: &str) -> Vec<String> {
    let v = value.unwrap_or(default).trim();
    if v == "none" {
        return Vec::new();
    }
    v.split_whitespace().map(sh_quote).collect()
}

/// A submodule flag is "simple" when it is one `--word` or `--word=value` with plain characters;
/// anything else is dropped with a warning, so a variable cannot inject shell.
fn simple_flag(f: &str) -> bool {
    let Some(body) = f.strip_prefix("--") else {
        return false;
    };
    let (name, value) = body.split_once('=').unwrap_or((body, ""));
    !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b))
}

/// The get_sources script and its extra environment.
#[derive(Debug)]
pub struct SourcesScript {
    /// The bash script.
    pub script: String,
    /// Extra environment (credentials for git).
    pub env: Vec<(String, String)>,
    /// Warnings to show in the trace.
    pub warnings: Vec<String>,
}

/// Shell that empties `dir` (already quoted) but keeps it: the project directory is a mount point
/// in the job's containers (identical-path bind mount), so `rm -rf` of the directory itself fails
/// with "Device or resource busy".
fn empty_dir(dir: &str) -> String {
    format!("mkdir -p {dir}\nfind {dir} -mindepth 1 -maxdepth 1 -exec rm -rf -- {{}} +\n")
}

/// `git lfs pull` after the checkout when the helper image has git-lfs; without it LFS files
/// stay pointers, as with gitlab-runner (which pulls only when `git lfs version` succeeds).
const LFS_PULL: &str = "if git lfs version >/dev/null 2>&1; then\n  echo 'Pulling Git LFS objects...'\n  git lfs pull\nfi\n";

/// `GIT_SUBMODULE_PATHS` as pathspec arguments after `--` (empty when unset): space-separated
/// paths, `:(exclude)path` to leave one out, as gitlab-runner passes them to `git submodule`.
/// Entries starting with `-` are refused with a warning (they would be options).
fn submodule_paths(value: Option<&str>, warnings: &mut Vec<String>) -> String {
    let mut out = Vec::new();
    for p in value.unwrap_or("").split_whitespace() {
        if p.starts_with('-') {
            warnings.push(format!("ignoring GIT_SUBMODULE_PATHS entry {p:?}"));
        } else {
            out.push(sh_quote(p));
        }
    }
    if out.is_empty() {
        String::new()
    } else {
        format!(" -- {}", out.join(" "))
    }
}

/// Builds the get_sources script for `strategy`. `pre_hooks`/`post_hooks` are the config and job
/// hook commands (config first for pre, job first for post, as gitlab-runner orders them).
pub fn git_script(
    job: &JobResponse,
    vars: &Variables,
    strategy: GitStrategy,
    project_dir: &Path,
    tmp_dir: &Path,
    pre_hooks: &[String],
    post_hooks: &[String],
) -> SourcesScript {
    let mut warnings = Vec::new();
    let dir = sh_quote(&project_dir.to_string_lossy());
    let mut s = super::script::prologue();
    let remote = split_remote(job.git_info.repo_url.expose());
    let mut env = credential_env(&remote);
    if truthy(vars.get("GIT_SUBMODULE_FORCE_HTTPS")) {
        push_git_config(&mut env, force_https_rules(&remote, vars));
    }
    // GIT_LFS_SKIP_SMUDGE set by the job: LFS files stay pointers, no `git lfs pull` (as
    // gitlab-runner's IsLFSSmudgeDisabled).
    let lfs = !truthy(vars.get("GIT_LFS_SKIP_SMUDGE"));
    // Hooks are skipped for none/empty, as in gitlab-runner.
    let with_hooks = matches!(strategy, GitStrategy::Clone | GitStrategy::Fetch);
    if with_hooks && !pre_hooks.is_empty() {
        s.push_str(&format!("mkdir -p {dir}\ncd {dir}\n"));
        for c in pre_hooks {
            push_command(&mut s, c);
        }
        s.push_str("cd /\n");
    }
    match strategy {
        GitStrategy::None => {
            s.push_str("echo 'Skipping Git repository setup'\n");
            s.push_str(&format!("mkdir -p {dir}\n"));
            return SourcesScript {
                script: s,
                env,
                warnings,
            };
        }
        GitStrategy::Empty => {
            s.push_str(
                "echo 'Skipping Git repository setup and creating an empty build directory'\n",
            );
            s.push_str(&empty_dir(&dir));
            return SourcesScript {
                script: s,
                env,
                warnings,
            };
        }
        GitStrategy::Clone => {
            s.push_str(&empty_dir(&dir));
        }
        GitStrategy::Fetch => {
            // Stale locks from a killed job, and config/hooks a previous job may have planted.
            s.push_str(&format!(
                "if [ -d {dir}/.git ]; then\n  rm -f {dir}/.git/index.lock {dir}/.git/shallow.lock {dir}/.git/HEAD.lock {dir}/.git/config.lock {dir}/.git/hooks/post-checkout\n  find {dir}/.git/refs -name '*.lock' -delete 2>/dev/null || true\n  rm -rf {dir}/.git/config {dir}/.git/hooks\nfi\n"
            ));
        }
    }
    let depth: u32 = vars
        .get("GIT_DEPTH")
        .and_then(|d| d.trim().parse().ok())
        .unwrap_or(job.git_info.depth);
    if depth > 0 {
        s.push_str(&format!(
            "echo 'Fetching changes with git depth set to {depth}...'\n"
        ));
    } else {
        s.push_str("echo 'Fetching changes...'\n");
    }
    let template = sh_quote(&tmp_dir.join("git-template").to_string_lossy());
    let object_format = if job.git_info.repo_object_format == "sha256" {
        " --object-format sha256"
    } else {
        ""
    };
    if strategy == GitStrategy::Fetch {
        // Jobs normally start in a new directory, so a fetch usually has nothing to reuse; the
        // log must not suggest an incremental fetch happened when it did not.
        s.push_str(&format!(
            "if [ -d {dir}/.git ]; then echo 'Reinitialized existing Git repository'; else echo 'Created fresh repository (GIT_STRATEGY=fetch, but this job directory is new: fetching everything)'; fi\n"
        ));
    }
    s.push_str(&format!(
        "mkdir -p {dir} {template}\ngit init -q {dir} --template {template}{object_format}\ncd {dir}\n"
    ));
    if strategy == GitStrategy::Clone {
        s.push_str("echo 'Created fresh repository.'\n");
    }
    let url = sh_quote(&remote.url);
    s.push_str(&format!(
        "if git remote | grep -qx origin; then git remote set-url origin {url}; else git remote add origin {url}; fi\n"
    ));
    let mut refspecs: Vec<String> = job.git_info.refspecs.iter().map(|r| sh_quote(r)).collect();
    if refspecs.is_empty() {
        refspecs = vec![
            sh_quote("+refs/heads/*:refs/remotes/origin/*"),
            sh_quote("+refs/tags/*:refs/tags/*"),
        ];
    }
    let depth_arg = if depth > 0 {
        format!(" --depth {depth}")
    } else {
        String::new()
    };
    let extra = flags(vars.get("GIT_FETCH_EXTRA_FLAGS"), "--prune --quiet").join(" ");
    let unshallow = if depth == 0 {
        "if [ -f .git/shallow ]; then unshallow=--unshallow; else unshallow=; fi\n"
    } else {
        "unshallow=\n"
    };
    s.push_str(unshallow);
    s.push_str(&format!(
        "GIT_LFS_SKIP_SMUDGE=1 git fetch origin --no-recurse-submodules {}{depth_arg} $unshallow {extra}\n",
        refspecs.join(" ")
    ));
    let checkout = vars.get("GIT_CHECKOUT").map(str::trim).unwrap_or("true");
    let sha = &job.git_info.sha;
    let clean = flags(vars.get("GIT_CLEAN_FLAGS"), "-ffdx");
    if checkout == "false" {
        s.push_str("echo 'Skipping Git checkout'\n");
    } else if sha.is_empty() {
        warnings.push("the job has no commit sha to check out".to_string());
    } else {
        let short: String = sha.chars().take(8).collect();
        // Smudge skipped here as in gitlab-runner: LFS objects come with `git lfs pull` below.
        s.push_str(&format!(
            "echo {}\nGIT_LFS_SKIP_SMUDGE=1 git -c submodule.recurse=false checkout -f -q {}\n",
            sh_quote(&format!(
                "Checking out {short} as {}...",
                job.git_info.r#ref
            )),
            sh_quote(sha)
        ));
        if !clean.is_empty() {
            s.push_str(&format!("git clean {}\n", clean.join(" ")));
        }
        if lfs {
            s.push_str(LFS_PULL);
        }
    }
    let sub = vars
        .get("GIT_SUBMODULE_STRATEGY")
        .map(str::trim)
        .unwrap_or("none");
    match sub {
        "" | "none" => {}
        "normal" | "recursive" => {
            let rec = if sub == "recursive" {
                " --recursive"
            } else {
                ""
            };
            let sub_depth = vars
                .get("GIT_SUBMODULE_DEPTH")
                .and_then(|d| d.trim().parse::<u32>().ok())
                .unwrap_or(depth);
            let sub_depth = if sub_depth > 0 {
                format!(" --depth {sub_depth}")
            } else {
                String::new()
            };
            let mut update_flags = Vec::new();
            for f in vars
                .get("GIT_SUBMODULE_UPDATE_FLAGS")
                .unwrap_or("")
                .split_whitespace()
            {
                if simple_flag(f) {
                    update_flags.push(f.to_string());
                } else {
                    warnings.push(format!("ignoring GIT_SUBMODULE_UPDATE_FLAGS entry {f:?}"));
                }
            }
            let upd = if update_flags.is_empty() {
                String::new()
            } else {
                format!(" {}", update_flags.join(" "))
            };
            let paths = submodule_paths(vars.get("GIT_SUBMODULE_PATHS"), &mut warnings);
            // `init` of every submodule first, as gitlab-runner does (so .git/config is
            // complete before `sync`); GIT_SUBMODULE_PATHS narrows sync and update.
            s.push_str(&format!(
                "echo 'Updating/initializing submodules{}...'\ngit submodule init\ngit submodule sync{rec}{paths}\ngit submodule update --init{rec}{sub_depth}{upd}{paths}\n",
                if rec.is_empty() { "" } else { " recursively" }
            ));
            let clean_cmd = if clean.is_empty() {
                String::new()
            } else {
                format!("git clean {}; ", clean.join(" "))
            };
            s.push_str(&format!(
                "git submodule foreach{rec} {}\n",
                sh_quote(&format!("{clean_cmd}git reset --hard"))
            ));
            if lfs {
                s.push_str(&format!(
                    "if git lfs version >/dev/null 2>&1; then git submodule foreach{rec} 'git lfs pull'; fi\n"
                ));
            }
        }
        other => warnings.push(format!(
            "unknown GIT_SUBMODULE_STRATEGY {other:?}, skipping submodules"
        )),
    }
    if !post_hooks.is_empty() {
        s.push_str(&format!("cd {dir}\n"));
        for c in post_hooks {
            push_command(&mut s, c);
        }
    }
    SourcesScript {
        script: s,
        env,
        warnings,
    }
}

/// Files of a local working tree to copy into the job directory (`runner exec`).
#[derive(Debug, Clone)]
pub struct LocalTree {
    /// The working tree.
    pub root: PathBuf,
    /// Paths relative to `root`; `None` copies the whole directory.
    pub files: Option<Vec<PathBuf>>,
}

/// Copies a local tree into `dest` (blocking; call from `spawn_blocking`). Symlinks are copied
/// as symlinks, never followed; paths with `..` or absolute paths are skipped. Returns the
/// number of entries copied.
pub fn copy_local_tree(tree: &LocalTree, dest: &Path) -> std::io::Result<usize> {
    std::fs::create_dir_all(dest)?;
    let rels: Vec<PathBuf> = match &tree.files {
        Some(f) => f.clone(),
        None => walkdir::WalkDir::new(&tree.root)
            .follow_links(false)
            .min_depth(1)
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| !e.file_type().is_dir())
            .filter_map(|e| {
                e.path()
                    .strip_prefix(&tree.root)
                    .ok()
                    .map(Path::to_path_buf)
            })
            .collect(),
    };
    let mut n = 0;
    for rel in rels {
        if rel.is_absolute()
            || rel
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            continue;
        }
        let src = tree.root.join(&rel);
        let Ok(meta) = std::fs::symlink_metadata(&src) else {
            // Listed by git but deleted in the working tree.
            continue;
        };
        let to = dest.join(&rel);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&src)?;
            let _ = std::fs::remove_file(&to); // absent is fine
            std::os::unix::fs::symlink(target, &to)?;
        } else if meta.is_file() {
            std::fs::copy(&src, &to)?;
        } else {
            continue;
        }
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    /// A job (token `glcbt-abc123`) of `repo_url` at commit `0123456789abcdef` of `main`.
    fn job_from(repo_url: &str) -> JobResponse {
        JobResponse {
            id: 1,
            token: Secret::new("glcbt-abc123"),
            git_info: crate::gitlab::types::GitInfo {
                repo_url: Secret::new(repo_url),
                sha: "0123456789abcdef".into(),
                r#ref: "main".into(),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// The `clone` script for `job` into `/b/p`, without hooks.
    fn clone_script(job: &JobResponse, vars: &Variables) -> SourcesScript {
        git_script(
            job,
            vars,
            GitStrategy::Clone,
            Path::new("/b/p"),
            Path::new("/b/p.tmp"),
            &[],
            &[],
        )
    }

    #[test]
    fn strategy_defaults() {
        assert_eq!(GitStrategy::resolve(None, true), Ok(GitStrategy::Fetch));
        assert_eq!(
            GitStrategy::resolve(Some(""), false),
            Ok(GitStrategy::Clone)
        );
        assert_eq!(
            GitStrategy::resolve(Some("none"), false),
            Ok(GitStrategy::None)
        );
        assert!(GitStrategy::resolve(Some("bogus"), false).is_err());
    }

    #[test]
    fn remote_without_token_and_header_scoped_to_origin() {
        let r = split_remote("http://gitlab-ci-token:glcbt-abc123@127.0.0.1:8080/g/demo.git");
        assert_eq!(r.url, "http://127.0.0.1:8080/g/demo.git");
        assert_eq!(r.origin.as_deref(), Some("http://127.0.0.1:8080/"));
        let expected =
            base64::engine::general_purpose::STANDARD.encode("gitlab-ci-token:glcbt-abc123");
        assert_eq!(
            r.auth_header.as_deref(),
            Some(format!("Authorization: Basic {expected}").as_str())
        );
        let env = credential_env(&r);
        assert!(env.iter().any(
            |(k, v)| k == "GIT_CONFIG_KEY_0" && v == "http.http://127.0.0.1:8080/.extraHeader"
        ));
        assert!(!format!("{r:?}").contains("Basic"));
        let f = split_remote("file:///tmp/x.git");
        assert_eq!(f.url, "file:///tmp/x.git");
        assert!(f.auth_header.is_none());
    }

    #[test]
    fn script_never_contains_the_token() {
        let job = job_from("https://gitlab-ci-token:glcbt-abc123@h/g/p.git");
        let mut v = Variables::new();
        v.push("GIT_SUBMODULE_STRATEGY", "recursive");
        v.push("GIT_SUBMODULE_UPDATE_FLAGS", "--remote --jobs=4 ;rm");
        let s = clone_script(&job, &v);
        assert!(!s.script.contains("glcbt-abc123"));
        assert!(s.script.contains("git remote add origin https://h/g/p.git"));
        assert!(s.script.contains("Checking out 01234567 as main..."));
        assert!(
            s.script
                .contains("git submodule update --init --recursive --remote --jobs=4\n")
        );
        assert_eq!(s.warnings.len(), 1);
        assert!(s.script.contains("git clean -ffdx"));
        // The project dir is a mount point in the helper: emptied, never removed.
        assert!(!s.script.contains("rm -rf /b/p\n"));
        assert!(
            s.script
                .contains("find /b/p -mindepth 1 -maxdepth 1 -exec rm -rf -- {} +")
        );
    }

    #[test]
    fn submodule_paths_and_lfs() {
        let job = job_from("https://h/g/p.git");
        let mut v = Variables::new();
        v.push("GIT_SUBMODULE_STRATEGY", "normal");
        v.push("GIT_SUBMODULE_PATHS", "libs/a :(exclude)libs/b --force");
        let s = clone_script(&job, &v);
        assert!(
            s.script
                .contains("git submodule update --init -- libs/a ':(exclude)libs/b'\n"),
            "{}",
            s.script
        );
        assert!(
            s.script
                .contains("git submodule sync -- libs/a ':(exclude)libs/b'\n")
        );
        assert!(s.script.contains("git submodule init\n"), "{}", s.script);
        assert_eq!(
            s.warnings,
            vec!["ignoring GIT_SUBMODULE_PATHS entry \"--force\"".to_string()]
        );
        // LFS: smudge skipped on checkout, pulled when the helper has git-lfs.
        assert!(
            s.script
                .contains("GIT_LFS_SKIP_SMUDGE=1 git -c submodule.recurse=false checkout")
        );
        let lfs = s.script.find("git lfs pull").expect("lfs pull");
        assert!(lfs > s.script.find("checkout -f -q").expect("checkout"));
        assert!(s.script.contains(
            "if git lfs version >/dev/null 2>&1; then git submodule foreach 'git lfs pull'; fi"
        ));
        // GIT_LFS_SKIP_SMUDGE from the job: no pull at all.
        v.push("GIT_LFS_SKIP_SMUDGE", "true");
        let s = clone_script(&job, &v);
        assert!(!s.script.contains("git lfs pull"), "{}", s.script);
    }

    #[test]
    fn force_https_rewrites_ssh_urls_to_the_origin() {
        let r = split_remote("https://gitlab-ci-token:tok@gitlab.example.com/g/p.git");
        let mut v = Variables::new();
        v.push("CI_SERVER_HOST", "gitlab.example.com");
        let mut env = credential_env(&r);
        push_git_config(&mut env, force_https_rules(&r, &v));
        let get = |k: &str| env.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        assert_eq!(get("GIT_CONFIG_COUNT").as_deref(), Some("3"));
        assert_eq!(
            get("GIT_CONFIG_KEY_1").as_deref(),
            Some("url.https://gitlab.example.com/.insteadOf")
        );
        assert_eq!(
            get("GIT_CONFIG_VALUE_1").as_deref(),
            Some("git@gitlab.example.com:")
        );
        assert_eq!(
            get("GIT_CONFIG_VALUE_2").as_deref(),
            Some("ssh://git@gitlab.example.com")
        );
        v.push("CI_SERVER_SHELL_SSH_PORT", "2222");
        let rules = force_https_rules(&r, &v);
        assert_eq!(
            rules,
            vec![(
                "url.https://gitlab.example.com.insteadOf".to_string(),
                "ssh://git@gitlab.example.com:2222".to_string()
            )]
        );
        // The token is never in a rule: the origin's header carries it.
        assert!(!format!("{env:?}").contains("tok@"));
    }
}
