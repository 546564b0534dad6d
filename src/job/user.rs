//! Non-root build images: the image's `USER`, or the job's `image: docker: user`, runs the
//! build scripts, and the checkout, the tmp dir (`TMPDIR`, file variables) and each script file
//! are handed to that user's uid:gid.
//!
//! gitlab-runner arranges this in one of two ways: by default its helper runs `umask 0000`, so
//! everything it writes is world-writable; with `FF_DISABLE_UMASK_FOR_DOCKER_EXECUTOR` it asks
//! the build image for the user's uid and gid (`id -u`, `id -g`) and `chown`s the build dir to
//! them. Here the job's directories are bind mounts of host directories under `builds_dir`, so
//! world-writable files would be writable by every account of the host: the runner always does
//! what the feature flag does. The `chown -R` runs in the job's helper container (as root
//! there), never on the host, so a link the job planted can only point inside that container.
//! `no-new-privileges` stays on: the build user cannot become root again.

use super::script::sh_quote;
use crate::gitlab::types::JobResponse;
use crate::isolation::{JobEnvironment, JobPaths, OutputSink, Role, ScriptRequest, ScriptUser};
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// Most output the uid/gid lookup may print.
const LOOKUP_OUTPUT_LIMIT: usize = 4096;

/// The build user of a job whose scripts do not run as root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct BuildUser {
    /// What the job asked for (`image: docker: user`), passed to the container as is;
    /// `None`: the image's own `USER`.
    pub requested: Option<String>,
    /// Numeric uid the user runs as.
    pub uid: u32,
    /// Numeric gid the user runs as.
    pub gid: u32,
}

impl BuildUser {
    /// How build scripts run for this user.
    pub fn script_user(&self) -> ScriptUser {
        ScriptUser {
            user: self.requested.clone(),
            owner: Some((self.uid, self.gid)),
        }
    }

    /// The helper script that gives the checkout and the tmp dir to the user. `-h`: a link is
    /// changed itself, never what it points to.
    pub fn chown_script(&self, paths: &JobPaths) -> String {
        format!(
            "set -e\nchown -R -h {}:{} {} {}\n",
            self.uid,
            self.gid,
            sh_quote(&paths.project_dir.to_string_lossy()),
            sh_quote(&paths.tmp_dir.to_string_lossy()),
        )
    }
}

/// The job's `image: docker: user` (GitLab's `executor_opts`), and a warning for each option
/// this runner does not act on (anything but `docker: user`; `docker: platform` included). A
/// `user` that is not a string fails the job. Options are never acted on beyond the user: a
/// payload's `privileged` or `volumes` there is named in a warning and ignored.
pub(super) fn executor_opts(job: &JobResponse) -> Result<(Option<String>, Vec<String>), String> {
    let Some(opts) = job.image.as_ref().and_then(|i| i.executor_opts.as_ref()) else {
        return Ok((None, Vec::new()));
    };
    let ignored = |what: &str| format!("ignoring image executor option {what}: not supported");
    let mut warnings = Vec::new();
    let Some(map) = opts.as_object() else {
        return Ok((None, vec![ignored("(not a mapping)")]));
    };
    let mut user = None;
    for (k, v) in map {
        let Some(docker) = v.as_object().filter(|_| k == "docker") else {
            warnings.push(ignored(k));
            continue;
        };
        for (dk, dv) in docker {
            match (dk.as_str(), dv) {
                ("user", serde_json::Value::String(u)) if !u.trim().is_empty() => {
                    user = Some(u.trim().to_string())
                }
                ("user", serde_json::Value::String(_) | serde_json::Value::Null) => {}
                ("user", _) => {
                    return Err("image: docker: user must be a string".into());
                }
                (other, _) => warnings.push(ignored(&format!("docker: {other}"))),
            }
        }
    }
    Ok((user, warnings))
}

/// The job's `image: docker: user`, if any (see [`executor_opts`]).
pub(super) fn requested_user(job: &JobResponse) -> Result<Option<String>, String> {
    executor_opts(job).map(|(u, _)| u)
}

/// Whether `user` (`name`, `uid`, `name:group`, `uid:gid`) means root.
fn is_root(user: &str) -> bool {
    let name = user.split(':').next().unwrap_or("").trim();
    name.is_empty() || name == "root" || name == "0"
}

/// Resolves who runs the build scripts: `None` for root. A name (or a uid without a gid) is
/// looked up in the build image, as root there, with `id`.
pub(super) async fn resolve(
    job: &JobResponse,
    env: &dyn JobEnvironment,
    cancel: CancellationToken,
) -> Result<Option<BuildUser>, String> {
    let requested = requested_user(job)?;
    let effective = match &requested {
        Some(u) => u.clone(),
        None => match env.image_user().await {
            Ok(Some(u)) => u,
            Ok(None) => return Ok(None),
            Err(e) => return Err(format!("reading the build image's USER: {e}")),
        },
    };
    if is_root(&effective) {
        return Ok(None);
    }
    let (name, group) = match effective.split_once(':') {
        Some((n, g)) => (n.trim(), Some(g.trim())),
        None => (effective.trim(), None),
    };
    let numeric = |s: &str| s.parse::<u32>().ok();
    let (uid, gid) = match (numeric(name), group.and_then(numeric)) {
        (Some(uid), Some(gid)) => (uid, gid),
        _ => lookup(env, name, group, cancel).await?,
    };
    Ok(Some(BuildUser {
        requested,
        uid,
        gid,
    }))
}

/// Asks the build image for `name`'s uid and gid (or `group`'s gid), running as root.
async fn lookup(
    env: &dyn JobEnvironment,
    name: &str,
    group: Option<&str>,
    cancel: CancellationToken,
) -> Result<(u32, u32), String> {
    let n = sh_quote(name);
    let gid = match group {
        Some(g) if g.parse::<u32>().is_ok() => sh_quote(g),
        Some(g) => format!(
            "\"$(awk -F: -v g={} '$1 == g {{ print $3 }}' /etc/group)\"",
            sh_quote(g)
        ),
        // A uid the image's passwd does not know runs with gid 0, as Docker does.
        None => format!("\"$(id -g {n} 2>/dev/null || echo 0)\""),
    };
    let uid = match name.parse::<u32>() {
        Ok(u) => u.to_string(),
        Err(_) => format!("\"$(id -u {n})\""),
    };
    let script = format!("set -e\nu={uid}\ng={gid}\necho \"build-user:$u:$g\"\n");
    let out = Arc::new(Collect::default());
    let sink: Arc<dyn OutputSink> = out.clone();
    let root = ScriptUser {
        user: Some("0:0".into()),
        owner: None,
    };
    let req = ScriptRequest {
        role: Role::Build,
        script,
        env: Vec::new(),
    };
    let code = env
        .run_script_as(req, &root, sink, cancel)
        .await
        .map_err(|e| format!("looking up the build user {name:?}: {e}"))?;
    let text = out.text();
    let parsed = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("build-user:"))
        .find_map(|rest| {
            let (u, g) = rest.split_once(':')?;
            Some((u.trim().parse::<u32>().ok()?, g.trim().parse::<u32>().ok()?))
        });
    match (code, parsed) {
        (0, Some(ids)) => Ok(ids),
        _ => Err(format!(
            "the build image has no user {name:?}{} (id exited with {code}: {})",
            group
                .map(|g| format!(" or group {g:?}"))
                .unwrap_or_default(),
            text.trim()
        )),
    }
}

/// Collects a short script output.
#[derive(Default)]
struct Collect(Mutex<Vec<u8>>);

impl Collect {
    fn text(&self) -> String {
        let b = self.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&b).into_owned()
    }
}

impl OutputSink for Collect {
    fn write(&self, data: &[u8]) {
        if let Ok(mut b) = self.0.lock() {
            let room = LOOKUP_OUTPUT_LIMIT.saturating_sub(b.len());
            b.extend_from_slice(&data[..data.len().min(room)]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gitlab::types::Image;

    fn job_with(opts: serde_json::Value) -> JobResponse {
        JobResponse {
            image: Some(Image {
                name: "x".into(),
                executor_opts: Some(opts),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn executor_opts_user() {
        let j = job_with(serde_json::json!({"docker": {"user": "1000:1000", "platform": "amd64"}}));
        let (user, warnings) = executor_opts(&j).unwrap();
        assert_eq!(user, Some("1000:1000".into()));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert_eq!(requested_user(&JobResponse::default()).unwrap(), None);
        // Never acted on, named in a warning.
        let (user, warnings) = executor_opts(&job_with(
            serde_json::json!({"docker": {"privileged": true, "volumes": ["/:/host"]}}),
        ))
        .unwrap();
        assert_eq!(user, None);
        assert!(
            warnings.iter().any(|w| w.contains("privileged")),
            "{warnings:?}"
        );
        assert!(
            warnings.iter().any(|w| w.contains("volumes")),
            "{warnings:?}"
        );
        let (_, warnings) =
            executor_opts(&job_with(serde_json::json!({"kubernetes": {}}))).unwrap();
        assert_eq!(warnings.len(), 1);
        assert!(requested_user(&job_with(serde_json::json!({"docker": {"user": 5}}))).is_err());
    }

    #[test]
    fn root_spellings() {
        for r in ["", "root", "0", "0:0", "root:wheel", " 0 "] {
            assert!(is_root(r), "{r}");
        }
        for u in ["1000", "1000:1000", "node", "gitlab:gitlab"] {
            assert!(!is_root(u), "{u}");
        }
    }

    #[test]
    fn chown_script_changes_links_not_targets() {
        let u = BuildUser {
            requested: None,
            uid: 1000,
            gid: 1001,
        };
        let s = u.chown_script(&JobPaths {
            project_dir: "/builds/p".into(),
            tmp_dir: "/builds/p.tmp".into(),
        });
        assert!(
            s.contains("chown -R -h 1000:1001 /builds/p /builds/p.tmp"),
            "{s}"
        );
    }
}
