//! Getting a job's images onto the host daemon before its containers are made, the way
//! gitlab-runner's docker executor does (`executors/docker/internal/pull`): the job's
//! `pull_policy` list (or the config's) is tried in order, each failure falling back to the
//! next; `always` pulls, `if-not-present` uses a local copy, `never` only looks. Credentials
//! come from [`crate::docker::auth`]; the trace gets the policy decisions, a throttled progress
//! summary (never a line per layer per percent) and the digest the job runs on.
//!
//! Pulls go to the host daemon only. A job's own daemon (the sidecar) never sees an image the
//! runner pulled: it has its own storage, filled only by what the admin configured
//! (`preload_images`, `registry_mirror`) and by the job's own pulls.
//!
//! Authenticated images and `if-not-present`: gitlab-runner documents that an image pulled
//! with project A's credentials can then be used by project B under `if-not-present`, since
//! the local copy is used without asking the registry. Here an image is pulled again, so the
//! registry checks the job's own access, when it was pulled with credentials (remembered by
//! repository and by image id, in a file under the state directory so a restart keeps it) or when
//! the job has credentials for its registry. An image named only by id that needs such a check
//! is refused (a registry cannot be asked about an id).

use super::{Error, Isolation, JobEnvironment, OutputSink, TeardownReport};
use crate::docker::Docker;
use crate::docker::auth::{self, AuthSource, RegistryAuth};
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// One of gitlab-runner's pull policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    /// Pull every time.
    Always,
    /// Use the local copy when there is one (see the module doc for images that needed
    /// credentials).
    IfNotPresent,
    /// Never pull.
    Never,
}

impl PullPolicy {
    /// Parses gitlab-runner's spelling.
    pub fn parse(s: &str) -> Option<PullPolicy> {
        match s {
            "always" => Some(PullPolicy::Always),
            "if-not-present" => Some(PullPolicy::IfNotPresent),
            "never" => Some(PullPolicy::Never),
            _ => None,
        }
    }

    /// gitlab-runner's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "always",
            PullPolicy::IfNotPresent => "if-not-present",
            PullPolicy::Never => "never",
        }
    }
}

fn names(p: &[PullPolicy]) -> String {
    let v: Vec<&str> = p.iter().map(|p| p.as_str()).collect();
    format!("[{}]", v.join(" "))
}

/// The policies to try for one image: the job's (`image:pull_policy`,
/// `services:pull_policy`) when it names any, else the config's `pull_policy`; only those in
/// `allowed_pull_policies` (the config's `pull_policy` when that is empty) are kept.
/// gitlab-runner accepts a job list when any one of it is allowed and then tries all of it;
/// here the disallowed ones are dropped, so a job never makes the runner use a policy the admin
/// did not allow. `config` comes validated and non-empty from the config loader.
pub fn policies_for(
    job: &[String],
    config: &[String],
    allowed: &[String],
) -> Result<Vec<PullPolicy>, String> {
    let parse = |list: &[String], what: &str| -> Result<Vec<PullPolicy>, String> {
        list.iter()
            .map(|p| {
                PullPolicy::parse(p).ok_or_else(|| {
                    format!("{what} `{p}` is not a pull policy (use always, if-not-present, never)")
                })
            })
            .collect()
    };
    let config = match parse(config, "pull_policy")? {
        c if c.is_empty() => vec![PullPolicy::Always],
        c => c,
    };
    let allowed = match parse(allowed, "allowed_pull_policies")? {
        a if a.is_empty() => config.clone(),
        a => a,
    };
    let (wanted, source) = if job.is_empty() {
        (config, "the runner's config.toml")
    } else {
        (parse(job, "pull_policy")?, "the GitLab pipeline config")
    };
    let kept: Vec<PullPolicy> = wanted
        .iter()
        .copied()
        .filter(|p| allowed.contains(p))
        .collect();
    if kept.is_empty() {
        return Err(format!(
            "pull_policy ({}) defined in {source} is not one of the allowed_pull_policies ({})",
            names(&wanted),
            names(&allowed)
        ));
    }
    Ok(kept)
}

/// One image to get, with its role (`job`, `service`, `helper`) and policies.
#[derive(Debug, Clone)]
pub struct ImagePull {
    /// Reference as the job or config names it.
    pub image: String,
    /// For messages.
    pub role: String,
    /// Tried in order.
    pub policies: Vec<PullPolicy>,
}

/// Everything the pull step needs from the job: images, credential sources (in precedence
/// order) and warnings about the sources for the trace.
#[derive(Debug, Clone, Default)]
pub struct PullPlan {
    /// Images in the order they are pulled (job, services, helper).
    pub images: Vec<ImagePull>,
    /// `$DOCKER_AUTH_CONFIG`, the runner user's docker config, the job payload.
    pub auth: Vec<AuthSource>,
    /// Warnings to print before pulling (unsupported or unreadable credential sources).
    pub notes: Vec<String>,
}

/// Images pulled with credentials (repository paths as [`auth::image_path`] spells them, and
/// image ids), kept in a file so a restarted
/// runner still asks the registry before a job without those credentials gets them.
#[derive(Debug, Default)]
pub struct PulledWithAuth {
    file: Option<PathBuf>,
    set: Mutex<BTreeSet<String>>,
}

impl PulledWithAuth {
    /// Loads the list from `file` (created on first use); a missing or unreadable file starts
    /// empty. `None` keeps the list in memory only.
    pub fn load(file: Option<PathBuf>) -> PulledWithAuth {
        let set = file
            .as_ref()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .map(|t| t.lines().map(str::to_string).collect())
            .unwrap_or_default();
        PulledWithAuth {
            file,
            set: Mutex::new(set),
        }
    }

    fn contains(&self, key: &str) -> bool {
        self.set.lock().map(|s| s.contains(key)).unwrap_or(true)
    }

    fn add(&self, keys: &[&str]) {
        let Ok(mut set) = self.set.lock() else {
            return;
        };
        let before = set.len();
        set.extend(keys.iter().filter(|k| !k.is_empty()).map(|k| k.to_string()));
        if set.len() == before {
            return;
        }
        if let Some(f) = &self.file {
            // The state directory is the runner's own (never job-writable): a rename makes the
            // update whole.
            let text: String = set.iter().map(|k| format!("{k}\n")).collect();
            let tmp = f.with_extension("tmp");
            let written = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, f));
            if let Err(e) = written {
                tracing::warn!(file = %f.display(), error = %e, "cannot record images pulled with credentials");
            }
        }
    }
}

/// File under the state directory listing images pulled with credentials.
pub const PULLED_WITH_AUTH_FILE: &str = "pulled-with-credentials";

/// How often, at most, a running pull prints a progress line.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Tries of one pull when the registry or network has a transient failure.
pub const PULL_TRIES: u32 = 3;

fn say(out: &dyn OutputSink, line: &str) {
    out.write(format!("{line}\n").as_bytes());
}

/// Gets every image of `plan` onto `docker` (the host daemon).
pub async fn ensure(
    docker: &Docker,
    plan: &PullPlan,
    out: &dyn OutputSink,
    remembered: &PulledWithAuth,
) -> Result<(), Error> {
    for n in &plan.notes {
        say(out, &format!("WARNING: {n}"));
    }
    let mut done: Vec<&str> = Vec::new();
    for img in &plan.images {
        if done.contains(&img.image.as_str()) {
            continue;
        }
        ensure_one(docker, img, &plan.auth, out, remembered).await?;
        done.push(&img.image);
    }
    Ok(())
}

async fn ensure_one(
    docker: &Docker,
    img: &ImagePull,
    sources: &[AuthSource],
    out: &dyn OutputSink,
    remembered: &PulledWithAuth,
) -> Result<(), Error> {
    let (auth, notes) = auth::resolve_with_helpers(&img.image, sources).await;
    for n in notes {
        say(out, &format!("WARNING: {n}"));
    }
    let mut last = String::new();
    for (i, policy) in img.policies.iter().enumerate() {
        if i > 0 {
            say(
                out,
                &format!(
                    "Attempt #{}: Trying {:?} pull policy",
                    i + 1,
                    policy.as_str()
                ),
            );
        }
        match with_policy(docker, img, *policy, auth.as_ref(), out, remembered).await {
            Ok(facts) => {
                match digest_of(&img.image, &facts.repo_digests) {
                    Some(d) => say(
                        out,
                        &format!(
                            "Using docker image {} for {} with digest {d} ...",
                            facts.id, img.image
                        ),
                    ),
                    None => say(
                        out,
                        &format!("Using docker image {} for {} ...", facts.id, img.image),
                    ),
                }
                return Ok(());
            }
            Err(msg) => {
                say(
                    out,
                    &format!(
                        "WARNING: Failed to pull image with policy {:?}: {msg}",
                        policy.as_str()
                    ),
                );
                last = msg;
            }
        }
    }
    Err(Error::ImageUnavailable {
        image: img.image.clone(),
        detail: format!(
            "failed to pull the {} image with specified policies {}: {last}",
            img.role,
            names(&img.policies)
        ),
    })
}

/// The digest `image` was pulled by: the `repo@sha256:…` entry of its own repository (the
/// same content may have been pulled from several), else the first.
fn digest_of<'a>(image: &str, digests: &'a [String]) -> Option<&'a String> {
    let repo = auth::image_path(image);
    digests
        .iter()
        .find(|d| {
            d.split('@')
                .next()
                .is_some_and(|r| auth::image_path(r) == repo)
        })
        .or_else(|| digests.first())
}

/// One policy for one image: the local image's facts, or why not.
async fn with_policy(
    docker: &Docker,
    img: &ImagePull,
    policy: PullPolicy,
    auth: Option<&RegistryAuth>,
    out: &dyn OutputSink,
    remembered: &PulledWithAuth,
) -> Result<crate::docker::ImageFacts, String> {
    let local = docker
        .image_facts(&img.image)
        .await
        .map_err(|e| e.to_string())?;
    let by_id = local.as_ref().is_some_and(|f| f.id == img.image);
    // By repository (any tag or digest of it), and by id for a job naming the id: another
    // name for the same content was loaded some other way and needs no check.
    let repo = auth::image_path(&img.image);
    let pulled_with_auth = local
        .as_ref()
        .is_some_and(|f| remembered.contains(&repo) || (by_id && remembered.contains(&f.id)));
    let needs_check = pulled_with_auth || (local.is_some() && auth.is_some());
    match (policy, local) {
        (PullPolicy::Never, Some(_)) if pulled_with_auth => {
            return Err(
                "the local copy was pulled with registry credentials and the pull policy \
                 \"never\" cannot check this job's access to it"
                    .to_string(),
            );
        }
        (PullPolicy::Never, Some(f)) => return Ok(f),
        (PullPolicy::Never, None) => {
            return Err(format!(
                "the image is not on the host and the pull policy is \"never\" \
                 (no such image: {})",
                img.image
            ));
        }
        (_, Some(f)) if by_id && !needs_check => return Ok(f),
        (_, Some(_)) if by_id => {
            return Err(
                "the image was pulled with registry credentials and is named by its id, which \
                 a registry cannot check access to; name it by repository and tag"
                    .to_string(),
            );
        }
        (PullPolicy::IfNotPresent, Some(f)) if !needs_check => {
            say(
                out,
                "Using locally found image version due to \"if-not-present\" pull policy",
            );
            return Ok(f);
        }
        (PullPolicy::IfNotPresent, Some(_)) => say(
            out,
            "The local copy needed registry credentials: asking the registry with this job's \
             credentials (\"if-not-present\" acts as \"always\" for it)",
        ),
        _ => {}
    }
    pull(docker, &img.image, auth, out).await?;
    let facts = docker
        .image_facts(&img.image)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{} is still not on the host after its pull", img.image))?;
    if auth.is_some() {
        remembered.add(&[&repo, &facts.id]);
    }
    Ok(facts)
}

/// Pulls with retries on transient failures; the error is the registry's message.
async fn pull(
    docker: &Docker,
    image: &str,
    auth: Option<&RegistryAuth>,
    out: &dyn OutputSink,
) -> Result<(), String> {
    if let Some(a) = auth {
        say(
            out,
            &format!("Authenticating with credentials from {}", a.source),
        );
    }
    say(out, &format!("Pulling docker image {image} ..."));
    let mut tries = 0;
    loop {
        tries += 1;
        let mut progress = Progress::new(image);
        let mut on_event = |e: crate::docker::PullEvent| {
            if let Some(line) = progress.event(e, Instant::now()) {
                say(out, &line);
            }
        };
        match docker
            .pull_image(image, auth.map(RegistryAuth::to_bollard), &mut on_event)
            .await
        {
            Ok(()) => return Ok(()),
            Err(e) if tries < PULL_TRIES && e.is_transient_pull_failure() => {
                let wait = Duration::from_secs(u64::from(tries) * 2);
                say(
                    out,
                    &format!(
                        "WARNING: pulling {image} failed ({}); trying again in {}s \
                         (attempt {} of {PULL_TRIES})",
                        e.registry_message(),
                        wait.as_secs(),
                        tries + 1
                    ),
                );
                tokio::time::sleep(wait).await;
            }
            Err(e) => return Err(e.registry_message()),
        }
    }
}

/// A pull's progress, summed over layers and printed at most every [`PROGRESS_EVERY`].
struct Progress {
    image: String,
    /// Layer → (downloaded, size, done).
    layers: HashMap<String, (i64, i64, bool)>,
    last: Option<Instant>,
}

impl Progress {
    fn new(image: &str) -> Progress {
        Progress {
            image: image.to_string(),
            layers: HashMap::new(),
            last: None,
        }
    }

    /// The line to print for `e`, if any: the registry's own summary lines (digest, status)
    /// always, a layer summary when [`PROGRESS_EVERY`] has passed.
    fn event(&mut self, e: crate::docker::PullEvent, now: Instant) -> Option<String> {
        let layer = match e.layer {
            Some(l) if !e.status.starts_with("Pulling from") => l,
            _ => return (!e.status.is_empty()).then_some(e.status),
        };
        let entry = self.layers.entry(layer).or_insert((0, 0, false));
        match e.status.as_str() {
            "Downloading" => {
                entry.0 = e.current.unwrap_or(entry.0);
                entry.1 = e.total.unwrap_or(entry.1).max(entry.1);
            }
            "Download complete" => entry.0 = entry.1,
            "Pull complete" | "Already exists" => {
                entry.0 = entry.1;
                entry.2 = true;
            }
            _ => {}
        }
        let due = self
            .last
            .is_none_or(|t| now.duration_since(t) >= PROGRESS_EVERY);
        if !due {
            return None;
        }
        self.last = Some(now);
        let done = self.layers.values().filter(|l| l.2).count();
        let (got, size) = self
            .layers
            .values()
            .fold((0i64, 0i64), |(g, s), l| (g + l.0, s + l.1));
        let mb = |b: i64| b as f64 / 1_000_000.0;
        Some(format!(
            "Pulling {}: {done} of {} layers done, {:.1} MB of {:.1} MB downloaded",
            self.image,
            self.layers.len(),
            mb(got),
            mb(size)
        ))
    }
}

/// A backend with pulling in front: [`Isolation::ensure_images`] pulls onto the host daemon
/// the backend's containers run on; everything else is the backend's.
pub struct Pulling {
    inner: Arc<dyn Isolation>,
    docker: Docker,
    remembered: PulledWithAuth,
}

impl Pulling {
    /// Wraps `inner`, whose containers run on `docker`; images pulled with credentials are
    /// recorded in `record` (see [`PulledWithAuth`]).
    pub fn new(inner: Arc<dyn Isolation>, docker: Docker, record: Option<PathBuf>) -> Pulling {
        Pulling {
            inner,
            docker,
            remembered: PulledWithAuth::load(record),
        }
    }
}

#[async_trait::async_trait]
impl Isolation for Pulling {
    fn mode(&self) -> crate::config::IsolationMode {
        self.inner.mode()
    }

    async fn ensure_images(&self, plan: &PullPlan, out: Arc<dyn OutputSink>) -> Result<(), Error> {
        ensure(&self.docker, plan, out.as_ref(), &self.remembered).await
    }

    async fn prepare(
        &self,
        spec: &super::EnvironmentSpec,
        out: Arc<dyn OutputSink>,
        cancel: CancellationToken,
    ) -> Result<Box<dyn JobEnvironment>, Error> {
        self.inner.prepare(spec, out, cancel).await
    }

    async fn warm_up(&self, runner_id: &str) {
        self.inner.warm_up(runner_id).await
    }

    fn standby_ids(&self) -> Vec<u64> {
        self.inner.standby_ids()
    }

    fn kept_ids(&self) -> Vec<u64> {
        self.inner.kept_ids()
    }

    fn set_job_cap(&self, cap: usize) {
        self.inner.set_job_cap(cap)
    }

    fn pool_target(&self) -> Option<usize> {
        self.inner.pool_target()
    }

    async fn shutdown(&self) -> TeardownReport {
        self.inner.shutdown().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn job_policies_win_within_the_allowed() {
        use PullPolicy::*;
        // No job list: the config's.
        assert_eq!(
            policies_for(&[], &s(&["always", "if-not-present"]), &[]),
            Ok(vec![Always, IfNotPresent])
        );
        // The job's, allowed by the config's pull_policy when allowed_pull_policies is empty.
        assert_eq!(
            policies_for(
                &s(&["if-not-present"]),
                &s(&["always", "if-not-present"]),
                &[]
            ),
            Ok(vec![IfNotPresent])
        );
        let e = policies_for(&s(&["never"]), &s(&["always"]), &[]).expect_err("not allowed");
        assert!(e.contains("GitLab pipeline config"), "{e}");
        assert!(e.contains("allowed_pull_policies ([always])"), "{e}");
        // allowed_pull_policies replaces the config list as the allow-list.
        assert_eq!(
            policies_for(&s(&["always", "never"]), &s(&["always"]), &s(&["never"])),
            Ok(vec![Never]),
            "a disallowed policy of the job's list is dropped, not tried"
        );
        let e = policies_for(&[], &s(&["always"]), &s(&["never"])).expect_err("config too");
        assert!(e.contains("config.toml"), "{e}");
        assert!(policies_for(&s(&["sometimes"]), &s(&["always"]), &[]).is_err());
        // An empty config list means gitlab-runner's default.
        assert_eq!(policies_for(&[], &[], &[]), Ok(vec![Always]));
    }

    #[test]
    fn progress_is_throttled_and_summed() {
        let t0 = Instant::now();
        let mut p = Progress::new("r/app:1");
        let ev = |layer: Option<&str>, status: &str, cur: Option<i64>, tot: Option<i64>| {
            crate::docker::PullEvent {
                layer: layer.map(str::to_string),
                status: status.into(),
                current: cur,
                total: tot,
            }
        };
        assert_eq!(
            p.event(ev(Some("1"), "Pulling from app", None, None), t0),
            Some("Pulling from app".into())
        );
        let first = p.event(ev(Some("a"), "Downloading", Some(1), Some(2_000_000)), t0);
        assert!(first.is_some(), "the first layer line is shown");
        let mut shown = 0;
        for i in 0..1000 {
            let t = t0 + Duration::from_millis(i);
            if p.event(
                ev(Some("a"), "Downloading", Some(i as i64), Some(2_000_000)),
                t,
            )
            .is_some()
            {
                shown += 1;
            }
        }
        assert_eq!(
            shown, 0,
            "nothing within {PROGRESS_EVERY:?} of the last line"
        );
        p.event(ev(Some("b"), "Pull complete", None, None), t0);
        let line = p
            .event(
                ev(Some("a"), "Pull complete", None, None),
                t0 + PROGRESS_EVERY,
            )
            .expect("due");
        assert_eq!(
            line,
            "Pulling r/app:1: 2 of 2 layers done, 2.0 MB of 2.0 MB downloaded"
        );
        assert_eq!(
            p.event(ev(None, "Digest: sha256:ab", None, None), t0),
            Some("Digest: sha256:ab".into()),
            "summary lines are never throttled"
        );
    }

    #[test]
    fn the_digest_of_the_images_own_repository() {
        let d = vec![
            "127.0.0.1:1/other@sha256:aa".to_string(),
            "127.0.0.1:2/mine@sha256:aa".to_string(),
        ];
        assert_eq!(digest_of("127.0.0.1:2/mine:1", &d), Some(&d[1]));
        assert_eq!(digest_of("unrelated:1", &d), Some(&d[0]));
        assert_eq!(digest_of("x", &[]), None);
    }

    #[test]
    fn remembered_images_survive_a_reload() {
        let d = tempfile::tempdir().expect("tempdir");
        let f = d.path().join("pulled-with-credentials");
        let r = PulledWithAuth::load(Some(f.clone()));
        r.add(&["r.corp/a:1", "sha256:abc"]);
        let again = PulledWithAuth::load(Some(f));
        assert!(again.contains("r.corp/a:1") && again.contains("sha256:abc"));
        assert!(!again.contains("r.corp/b:1"));
    }
}
