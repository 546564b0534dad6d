//! The job daemon's inner policy: an authorization plugin, served by the runner, that refuses
//! inner `--privileged` (`docker run`, compose `privileged: true`, `docker exec`) with the
//! reason, unless `inner_privileged = true`.
//!
//! Why a plugin, and why the runner serves it. The job talks to its daemon with its own
//! Docker client, so only the daemon can refuse a request up front; Docker's way to let
//! something else decide is an authorization plugin, which the daemon asks about every API
//! request before and after it runs. The answer goes back to the job's client verbatim
//! (`authorization denied by plugin ir-inner-policy: <reason>`), so the user reads why.
//! Served inside the sidecar, the plugin would be one more program of our own in the image (its
//! only interpreter, perl-base, has no JSON parser); served here, it is the same Rust as the rest
//! of the runner, tested with it. Each sidecar gets its own socket, in a directory of the job's
//! certificate directory that only the runner writes, mounted read-only into that sidecar alone
//! ([`SIDECAR_DIR`]); the sidecar's entrypoint names it to its daemon
//! (`IR_INNER_POLICY_SOCKET`, tests/images/README.md).
//!
//! It is no security boundary, and needs to be none: in a rootless sidecar a privileged inner
//! container is confined to the daemon's user namespace (docs/sidecar-profiles.md), and a job
//! that reaches the socket (its inner containers can bind-mount any path of the sidecar) only
//! gets answers. What it is for is that nothing runs half-working without a word: a privileged
//! container in a job daemon has none of the host's devices, sysctls or kernel settings it was
//! written for. The runner checks that the daemon asked it at least once before the job starts
//! (the readiness ping goes through the plugin), so a sidecar image without the contract fails
//! the job instead of running without the policy.
//!
//! Reading a request as the daemon does. The daemon decodes the create body with Go's
//! `encoding/json`, so the checks follow its rules where they differ from a plain JSON map: keys
//! match case-insensitively (with Unicode's simple folding, so `ſ` is `s`), a repeated key is
//! decoded again into the same struct (a second `HostConfig` object does not clear the first's
//! `Privileged`), and the deprecated top-level `HostConfig` fields of old API versions still
//! count. What it cannot read is refused rather than allowed: a create or exec whose body the
//! daemon did not pass (Dockers before the CVE-2024-41110 fix passed none over 1 MiB or for a
//! URI ending in `/auth`; 26.1.5 refuses JSON bodies over 4 MiB itself), or that is no JSON
//! object.

use super::Error;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::routing::post;
use base64::Engine;
use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The plugin's name, as the daemon's `--authorization-plugin` names it.
pub const PLUGIN_NAME: &str = "ir-inner-policy";
/// Where the sidecar sees the policy directory (read-only).
pub const SIDECAR_DIR: &str = "/isolated-runner/policy";
/// The socket's name in that directory.
const SOCKET_NAME: &str = "policy.sock";
/// The environment variable that tells the sidecar's entrypoint where the socket is.
pub const SOCKET_ENV: &str = "IR_INNER_POLICY_SOCKET";

/// The daemon passes a plugin JSON request bodies up to 4 MiB (Docker's `maxBodySize` in
/// 26.1.5 as Debian ships it; 1 MiB before); the plugin's own request is that body in base64
/// plus headers, and the answer phase carries JSON responses.
const MAX_PLUGIN_REQUEST: usize = 16 << 20;

/// What the policy decides about one API request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The daemon serves the request.
    Allow,
    /// The daemon answers with this reason instead.
    Refuse(String),
}

/// The requests the policy reads: the two that can ask for a privileged process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    ContainerCreate,
    ExecCreate,
}

/// Decides about one request the daemon is about to serve. `profile` names the sidecar
/// profile in the reason.
pub fn decide(method: &str, uri: &str, body: Option<&[u8]>, profile: &str) -> Verdict {
    if !method.eq_ignore_ascii_case("POST") {
        return Verdict::Allow;
    }
    let Some(target) = target_of(uri) else {
        return Verdict::Allow;
    };
    let what = match target {
        Target::ContainerCreate => "this container create",
        Target::ExecCreate => "this exec",
    };
    let Some(body) = body.filter(|b| !b.is_empty()) else {
        return Verdict::Refuse(format!(
            "isolated-runner: the job's Docker daemon refuses {what}: its policy reads the \
             request's settings to refuse --privileged and was given none (some Docker versions \
             pass none over 1 MiB, or for a URI ending in /auth)"
        ));
    };
    let node: Node = match serde_json::from_slice(body) {
        Ok(n) => n,
        Err(e) => {
            return Verdict::Refuse(format!(
                "isolated-runner: the job's Docker daemon refuses {what}: its policy could not \
                 read the request body as JSON ({e})"
            ));
        }
    };
    let Node::Object(top) = node else {
        return Verdict::Refuse(format!(
            "isolated-runner: the job's Docker daemon refuses {what}: the request body is not \
             a JSON object"
        ));
    };
    let privileged = match target {
        // `Privileged` of the `HostConfig` object, or the deprecated top-level field.
        Target::ContainerCreate => {
            asks(&top, "PRIVILEGED")
                || top.iter().any(|(k, v)| {
                    folds_to(k, "HOSTCONFIG")
                        && matches!(v, Node::Object(hc) if asks(hc, "PRIVILEGED"))
                })
        }
        Target::ExecCreate => asks(&top, "PRIVILEGED"),
    };
    if privileged {
        Verdict::Refuse(refusal(target, profile))
    } else {
        Verdict::Allow
    }
}

/// The reason a privileged request is refused, in the words of docs/sidecar-profiles.md.
fn refusal(target: Target, profile: &str) -> String {
    let asked = match target {
        Target::ContainerCreate => {
            "a privileged container (--privileged, compose privileged: true)"
        }
        Target::ExecCreate => "a privileged exec (docker exec --privileged)",
    };
    // rootless and sysbox sidecars hold no privilege on the host: a privileged inner container
    // would be confined; the others would hand it the sidecar's host privileges.
    let (sandbox, way_out) = if matches!(profile, "rootless" | "sysbox") {
        (
            format!(
                "it runs without any privilege on the host (sidecar_profile = \"{profile}\"), \
                 so a privileged container would get none of the host's devices, sysctls or \
                 kernel settings"
            ),
            "or ask the runner's admin for inner_privileged = true, which runs privileged \
             containers confined to the job's sandbox",
        )
    } else {
        (
            format!(
                "a privileged container there would hold the sidecar's privileges on the host \
                 (sidecar_profile = \"{profile}\")"
            ),
            "the runner's admin can allow it with inner_privileged = true",
        )
    };
    format!(
        "isolated-runner: the job's Docker daemon refuses {asked}: {sandbox}. Add only the \
         capabilities the container uses (--cap-add), {way_out} (docs/sidecar-profiles.md, \
         \"Inner --privileged\")"
    )
}

/// Which of the policy's requests `uri` is routed to, read as the daemon's router reads it:
/// the path percent-decoded, empty and `.` segments dropped, `..` applied, an optional API
/// version first. Decoding is repeated until nothing changes: more decoding can only make more
/// paths look like a target, and a target is only ever refused for its body.
fn target_of(uri: &str) -> Option<Target> {
    let raw = uri.split(['?', '#']).next().unwrap_or_default();
    let mut path = raw.to_string();
    for _ in 0..4 {
        let decoded = crate::percent::decode(&path);
        if decoded == path {
            break;
        }
        path = decoded;
    }
    let mut segs: Vec<&str> = Vec::new();
    for s in path.split('/') {
        match s {
            "" | "." => {}
            ".." => {
                segs.pop();
            }
            s => segs.push(s),
        }
    }
    if segs
        .first()
        .is_some_and(|v| v.strip_prefix('v').is_some_and(is_version))
    {
        segs.remove(0);
    }
    match segs.as_slice() {
        ["containers", "create"] => Some(Target::ContainerCreate),
        ["containers", _, "exec"] => Some(Target::ExecCreate),
        _ => None,
    }
}

fn is_version(v: &str) -> bool {
    !v.is_empty() && v.chars().all(|c| c.is_ascii_digit() || c == '.')
}

/// Whether `entries` has a key folding to `key` whose value would set a Go bool to true. Only
/// `false` and `null` leave it false; anything else is a `true` or a value the daemon refuses
/// anyway, so the policy need not tell them apart.
fn asks(entries: &[(String, Node)], key: &str) -> bool {
    entries
        .iter()
        .any(|(k, v)| folds_to(k, key) && !matches!(v, Node::Bool(false) | Node::Null))
}

/// Whether `k` matches the upper-case ASCII field name `field` the way Go's `encoding/json`
/// matches object keys to struct fields: each character mapped to upper case of its lower
/// case (Unicode simple mappings: `ſ` → `S`, `ı` → `I`, `K` (Kelvin) → `K`).
fn folds_to(k: &str, field: &str) -> bool {
    let mut folded = k.chars().map(|c| {
        let lower = c.to_lowercase().next().unwrap_or(c);
        lower.to_uppercase().next().unwrap_or(lower)
    });
    let same = field.chars().all(|f| folded.next() == Some(f));
    same && folded.next().is_none()
}

/// A JSON value as far as the policy reads it: objects keep every entry in order (a repeated
/// key is not collapsed, see the module docs), booleans and null are told apart, the rest is
/// skipped.
#[derive(Debug)]
enum Node {
    Object(Vec<(String, Node)>),
    Bool(bool),
    Null,
    Other,
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }
    fn visit_unit<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_none<E>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Node, E> {
        Ok(Node::Other)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Node, E> {
        Ok(Node::Other)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
        Ok(Node::Other)
    }
    fn visit_str<E>(self, _: &str) -> Result<Node, E> {
        Ok(Node::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Node::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some((k, v)) = map.next_entry::<String, Node>()? {
            entries.push((k, v));
        }
        Ok(Node::Object(entries))
    }
}

/// The daemon's question before a request (Docker's `authorization.Request`; the fields the
/// policy reads). Method and URI are required: a question without them (another Docker's
/// names) is refused rather than read as a request for nothing in particular.
#[derive(Debug, Deserialize)]
struct AuthzRequest {
    #[serde(rename = "RequestMethod")]
    method: String,
    #[serde(rename = "RequestUri", alias = "RequestURI")]
    uri: String,
    /// The body in base64 (a Go `[]byte`), absent when the daemon did not pass it.
    #[serde(rename = "RequestBody", default)]
    body: Option<String>,
}

/// What one sidecar's policy has seen, for the runner's checks and the job's log.
#[derive(Debug, Default)]
struct PolicyCounts {
    asked: AtomicU64,
    refused: AtomicU64,
}

/// What the handlers and the runner's side share.
#[derive(Debug)]
struct Shared {
    profile: &'static str,
    /// The sidecar's container name, for the runner's log.
    sidecar: String,
    counts: PolicyCounts,
}

/// One sidecar's policy, served until this is dropped.
#[derive(Debug)]
pub struct InnerPolicy {
    task: tokio::task::JoinHandle<()>,
    shared: Arc<Shared>,
    socket: PathBuf,
}

impl Drop for InnerPolicy {
    fn drop(&mut self) {
        tracing::debug!(
            socket = %self.socket.display(),
            asked = self.asked(),
            refused = self.refused(),
            "inner policy stops serving"
        );
        self.task.abort();
    }
}

impl InnerPolicy {
    /// Serves the policy on `<dir>/policy.sock`. `dir` is the runner's own (the job's
    /// certificate directory), never a job-writable one; a socket left there by an earlier
    /// run of the same job is replaced. The socket is made through a handle on `dir`
    /// (`/proc/self/fd/<n>/policy.sock`): a unix socket's path may not exceed 107 bytes, and a
    /// state directory deep enough (the doctor's probe under the temp dir) would pass that.
    pub fn serve(dir: &Path, profile: &'static str, sidecar: &str) -> Result<InnerPolicy, Error> {
        use nix::sys::stat::{FchmodatFlags, Mode, fchmodat};
        use std::os::fd::AsRawFd;
        let socket = dir.join(SOCKET_NAME);
        let failed = |what: &str, e: &dyn std::fmt::Display| Error::Other {
            context: format!("serve the inner policy at {}", socket.display()),
            detail: format!("{what}: {e}"),
        };
        let handle = crate::paths::beneath::Dir::open_trusted(dir)
            .map_err(|e| failed("open the directory", &e))?;
        match nix::unistd::unlinkat(
            handle.fd(),
            SOCKET_NAME,
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        ) {
            Ok(()) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => return Err(failed("remove the old socket", &e)),
        }
        let short = format!("/proc/self/fd/{}/{SOCKET_NAME}", handle.fd().as_raw_fd());
        let listener = tokio::net::UnixListener::bind(&short).map_err(|e| failed("bind", &e))?;
        // The sidecar's daemon connects as whatever uid it runs as (a rootless one as its own
        // host uid): the directory is the sidecar's alone, so the socket may be everyone's.
        // (Following a link here is no risk: the name was just bound by this process in the
        // runner's own directory; the kernel's fchmodat does not take AT_SYMLINK_NOFOLLOW.)
        fchmodat(
            handle.fd(),
            SOCKET_NAME,
            Mode::from_bits_truncate(0o666),
            FchmodatFlags::FollowSymlink,
        )
        .map_err(|e| failed("chmod", &e))?;
        let shared = Arc::new(Shared {
            profile,
            sidecar: sidecar.to_string(),
            counts: PolicyCounts::default(),
        });
        let app = Router::new()
            .route("/Plugin.Activate", post(activate))
            .route("/AuthZPlugin.AuthZReq", post(authz_request))
            .route("/AuthZPlugin.AuthZRes", post(authz_response))
            .layer(DefaultBodyLimit::max(MAX_PLUGIN_REQUEST))
            .with_state(Arc::clone(&shared));
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(error = %e, "the inner policy stopped serving");
            }
        });
        tracing::debug!(socket = %socket.display(), profile, "inner policy serving");
        Ok(InnerPolicy {
            task,
            shared,
            socket,
        })
    }

    /// `IR_INNER_POLICY_SOCKET=…`: where the sidecar's entrypoint finds the socket, with the
    /// policy directory mounted at [`SIDECAR_DIR`].
    pub fn sidecar_env() -> String {
        format!("{SOCKET_ENV}={SIDECAR_DIR}/{SOCKET_NAME}")
    }

    /// Requests the daemon has asked about so far.
    pub fn asked(&self) -> u64 {
        self.shared.counts.asked.load(Ordering::Relaxed)
    }

    /// Requests refused so far.
    pub fn refused(&self) -> u64 {
        self.shared.counts.refused.load(Ordering::Relaxed)
    }
}

/// The answer the daemon reads (Docker's `authorization.Response`).
fn answer(allow: bool, msg: &str) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "Allow": allow, "Msg": msg, "Err": "" }))
}

// Every handler reads the whole request body, even where it has no use for it: hyper closes
// a connection whose request body was left unread, and Docker's plugin client may already have
// sent its next question on it. That send fails, and the client's retry re-sends the question
// with an empty body (moby's `callWithRetry` re-reads a consumed buffer), which the policy
// cannot read and refuses: a random API request of the job failing (seen under load as
// "unable to upgrade to tcp, received 403" on `docker run`'s attach).
async fn activate(_body: Bytes) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({ "Implements": ["authz"] }))
}

async fn authz_request(
    State(shared): State<Arc<Shared>>,
    body: Bytes,
) -> axum::Json<serde_json::Value> {
    shared.counts.asked.fetch_add(1, Ordering::Relaxed);
    let verdict = if body.is_empty() {
        // What Docker's plugin client sends when it retries after a failed attempt.
        Verdict::Refuse(
            "isolated-runner: the job's Docker daemon's policy was asked an empty question (the \
             daemon's plugin client re-sends one without its body after a failed attempt); \
             try the command again"
                .to_string(),
        )
    } else {
        match serde_json::from_slice::<AuthzRequest>(&body) {
            Ok(req) => {
                let decoded = match req.body.as_deref().filter(|b| !b.is_empty()) {
                    None => Ok(None),
                    Some(b) => base64::engine::general_purpose::STANDARD
                        .decode(b)
                        .map(Some),
                };
                match decoded {
                    Ok(b) => decide(&req.method, &req.uri, b.as_deref(), shared.profile),
                    Err(e) => Verdict::Refuse(format!(
                        "isolated-runner: the job's Docker daemon's policy could not read the request \
                     body it was given ({e})"
                    )),
                }
            }
            Err(e) => Verdict::Refuse(format!(
                "isolated-runner: the job's Docker daemon's policy could not read the daemon's \
                 question ({e})"
            )),
        }
    };
    match verdict {
        Verdict::Allow => answer(true, ""),
        Verdict::Refuse(msg) => {
            shared.counts.refused.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                sidecar = %shared.sidecar,
                reason = %msg,
                "the inner policy refused a request of the job's daemon"
            );
            answer(false, &msg)
        }
    }
}

/// Responses are never refused: the policy only decides what runs. The question carries the
/// response body, read all the same (see [`activate`]).
async fn authz_response(_body: Bytes) -> axum::Json<serde_json::Value> {
    answer(true, "")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn create(body: &str) -> Verdict {
        decide(
            "POST",
            "/v1.45/containers/create?name=x",
            Some(body.as_bytes()),
            "rootless",
        )
    }

    fn refused(v: &Verdict) -> bool {
        matches!(v, Verdict::Refuse(_))
    }

    #[test]
    fn a_privileged_create_is_refused_with_the_reason() {
        let v = create(r#"{"Image":"busybox","HostConfig":{"Privileged":true}}"#);
        let Verdict::Refuse(msg) = v else {
            panic!("allowed: {v:?}")
        };
        assert!(msg.contains("--privileged"), "{msg}");
        assert!(msg.contains("inner_privileged = true"), "{msg}");
        assert!(msg.contains("rootless"), "{msg}");
    }

    #[test]
    fn ordinary_requests_pass() {
        assert_eq!(
            create(
                r#"{"Image":"busybox","HostConfig":{"Privileged":false,"CapAdd":["SYS_ADMIN"]}}"#
            ),
            Verdict::Allow
        );
        assert_eq!(
            create(r#"{"Image":"busybox","HostConfig":null}"#),
            Verdict::Allow
        );
        assert_eq!(create(r#"{"Image":"busybox"}"#), Verdict::Allow);
        for (m, u) in [
            ("GET", "/_ping"),
            ("HEAD", "/_ping"),
            ("GET", "/v1.45/containers/json"),
            ("POST", "/v1.45/containers/abc/start"),
            ("POST", "/v1.45/build?t=x"),
            ("GET", "/v1.45/containers/create"),
        ] {
            assert_eq!(decide(m, u, None, "rootless"), Verdict::Allow, "{m} {u}");
        }
        assert_eq!(
            decide(
                "POST",
                "/v1.45/containers/c1/exec",
                Some(br#"{"Cmd":["sh"],"Privileged":false}"#),
                "rootless"
            ),
            Verdict::Allow
        );
    }

    #[test]
    fn a_privileged_exec_is_refused() {
        for uri in ["/v1.45/containers/c1/exec", "/containers/c1/exec"] {
            let v = decide(
                "POST",
                uri,
                Some(br#"{"Cmd":["sh"],"Privileged":true}"#),
                "rootless",
            );
            let Verdict::Refuse(msg) = v else {
                panic!("{uri}: allowed")
            };
            assert!(msg.contains("docker exec --privileged"), "{msg}");
        }
    }

    /// The ways Go's decoder reads `Privileged` that a plain JSON map would miss.
    #[test]
    fn the_body_is_read_as_the_daemon_reads_it() {
        for body in [
            // keys match case-insensitively, with Unicode simple folding
            r#"{"hostconfig":{"privileged":true}}"#,
            r#"{"HOSTCONFIG":{"PRIVILEGED":true}}"#,
            "{\"Ho\u{17f}tConfig\":{\"Privileged\":true}}",
            "{\"HostConfig\":{\"Pr\u{131}vileged\":true}}",
            "{\"HostConfig\":{\"Pr\u{130}vileged\":true}}",
            r#"{"HostConfig":{"Privil\u0065ged":true}}"#,
            // the deprecated top-level HostConfig fields
            r#"{"Image":"busybox","Privileged":true}"#,
            // a repeated object is decoded into the same struct: the first one's true stays
            r#"{"HostConfig":{"Privileged":true},"HostConfig":{}}"#,
            r#"{"HostConfig":{"Privileged":true},"HostConfig":null}"#,
            // a repeated key: either true counts (the policy errs on the side of refusing)
            r#"{"HostConfig":{"Privileged":false,"privileged":true}}"#,
        ] {
            assert!(refused(&create(body)), "allowed: {body}");
        }
    }

    #[test]
    fn what_the_policy_cannot_read_is_refused() {
        // no body (over 1 MiB, or a URI ending in /auth), not JSON, not an object
        assert!(refused(&decide(
            "POST",
            "/v1.45/containers/create?name=/auth",
            None,
            "rootless"
        )));
        assert!(refused(&decide(
            "POST",
            "/containers/create",
            Some(b""),
            "rootless"
        )));
        assert!(refused(&create("{\"HostConfig\":")));
        assert!(refused(&create("[1]")));
        assert!(refused(&decide(
            "POST",
            "/containers/create",
            Some(b"{\"Image\":\"\xff\"}"),
            "rootless"
        )));
    }

    /// The paths the daemon's router sends to container create / exec create.
    #[test]
    fn the_uri_is_read_as_the_router_reads_it() {
        for uri in [
            "/containers/create",
            "/v1.41/containers/create",
            "//v1.41//containers///create",
            "/v1.41/containers%2Fcreate",
            "/v1.41/%63ontainers/create",
            "/v1.41/containers/%2563reate",
            "/v1.41/images/../containers/create",
            "/v1.41/./containers/create?x=1",
            "/v1.41/containers/create/",
            "/v1.41/containers/c1/exec",
            "/v1.41/containers/c1%2Fexec",
        ] {
            assert!(target_of(uri).is_some(), "not a target: {uri}");
            assert!(
                refused(&decide(
                    "POST",
                    uri,
                    Some(br#"{"HostConfig":{"Privileged":true},"Privileged":true}"#),
                    "rootless"
                )),
                "allowed: {uri}"
            );
        }
        for uri in [
            "/v1.41/containers/json",
            "/v1.41/containers/c1/start",
            "/v1.41/containers/c1/exec/extra",
            "/v1.41/exec/e1/start",
            "/v1.41/networks/create",
        ] {
            assert_eq!(target_of(uri), None, "{uri}");
        }
    }

    #[test]
    fn the_reason_names_the_profile() {
        let Verdict::Refuse(msg) = decide(
            "POST",
            "/containers/create",
            Some(br#"{"HostConfig":{"Privileged":true}}"#),
            "hardened",
        ) else {
            panic!("allowed")
        };
        assert!(msg.contains("sidecar_profile = \"hardened\""), "{msg}");
        assert!(!msg.contains("confined"), "{msg}");
    }

    /// A directory deeper than a unix socket's path may be (107 bytes), as the doctor's probe
    /// under the temp dir makes: served through the directory's handle all the same.
    #[tokio::test]
    async fn a_deep_directory_still_gets_its_socket() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let deep = tmp.path().join("d".repeat(60)).join("e".repeat(60));
        std::fs::create_dir_all(&deep).expect("mkdir");
        let socket = deep.join(SOCKET_NAME);
        assert!(socket.as_os_str().len() > 108);
        let _policy = InnerPolicy::serve(&deep, "rootless", "ir-test-sidecar").expect("serve");
        let meta = std::fs::symlink_metadata(&socket).expect("socket");
        use std::os::unix::fs::FileTypeExt;
        assert!(meta.file_type().is_socket());
        // Served twice (a retried job): the old socket is replaced.
        drop(_policy);
        let _again = InnerPolicy::serve(&deep, "rootless", "ir-test-sidecar").expect("serve again");
    }

    /// One keep-alive connection to a policy's socket, as Docker's plugin client keeps one.
    struct PluginConn {
        read: tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>,
        write: tokio::net::unix::OwnedWriteHalf,
    }

    impl PluginConn {
        async fn open(dir: &Path) -> PluginConn {
            let stream = tokio::net::UnixStream::connect(dir.join(SOCKET_NAME))
                .await
                .expect("connect");
            let (read, write) = stream.into_split();
            PluginConn {
                read: tokio::io::BufReader::new(read),
                write,
            }
        }

        /// Posts `body` to `path` and reads the JSON answer; fails when the policy closed
        /// the connection instead of answering.
        async fn ask(&mut self, path: &str, body: &str) -> serde_json::Value {
            use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
            let req = format!(
                "POST {path} HTTP/1.1\r\nHost: plugin\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            );
            self.write
                .write_all(req.as_bytes())
                .await
                .expect("send on the same connection");
            let mut length = None;
            loop {
                let mut line = String::new();
                let n = self.read.read_line(&mut line).await.expect("read");
                assert!(
                    n > 0,
                    "the policy closed the connection instead of answering {path}"
                );
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse::<usize>().ok();
                }
            }
            let mut answer = vec![0; length.expect("content-length")];
            self.read
                .read_exact(&mut answer)
                .await
                .expect("answer body");
            serde_json::from_slice(&answer).expect("json answer")
        }
    }

    /// Docker's plugin client sends its next question on the connection of the last answer:
    /// that connection must stay open after an answer phase that carried a response body
    /// (the policy has no use for it, but leaving it unread made hyper close the connection).
    #[tokio::test]
    async fn the_connection_outlives_an_answer_phase_with_a_body() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _policy = InnerPolicy::serve(dir.path(), "rootless", "ir-test-sidecar").expect("serve");
        let mut conn = PluginConn::open(dir.path()).await;
        let big = serde_json::json!({
            "RequestMethod": "GET", "RequestUri": "/info",
            "ResponseBody": base64::engine::general_purpose::STANDARD.encode(vec![b'x'; 300_000]),
        })
        .to_string();
        let small = serde_json::json!({"RequestMethod": "GET", "RequestUri": "/_ping"}).to_string();
        for (path, body) in [
            ("/AuthZPlugin.AuthZRes", &big),
            ("/AuthZPlugin.AuthZReq", &small),
            ("/AuthZPlugin.AuthZRes", &big),
            ("/AuthZPlugin.AuthZReq", &small),
        ] {
            let v = conn.ask(path, body).await;
            assert_eq!(v["Allow"], true, "{path}");
        }
    }

    /// The socket speaks Docker's plugin protocol: activation, a refused and an allowed
    /// question, the counts.
    #[tokio::test]
    async fn the_socket_answers_the_daemons_questions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let policy = InnerPolicy::serve(dir.path(), "rootless", "ir-test-sidecar").expect("serve");
        let mode = std::fs::metadata(dir.path().join(SOCKET_NAME))
            .expect("socket")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o666);
        let mut conn = PluginConn::open(dir.path()).await;
        let a = conn.ask("/Plugin.Activate", "").await;
        assert_eq!(a["Implements"][0], "authz");
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let q = |body: &str| {
            serde_json::json!({
                "User": "job client", "UserAuthNMethod": "TLS", "RequestMethod": "POST",
                "RequestUri": "/v1.45/containers/create",
                "RequestBody": b64(body),
                "RequestHeaders": {"Content-Type": "application/json"}
            })
            .to_string()
        };
        let no = conn
            .ask(
                "/AuthZPlugin.AuthZReq",
                &q(r#"{"HostConfig":{"Privileged":true}}"#),
            )
            .await;
        assert_eq!(no["Allow"], false);
        assert!(
            no["Msg"]
                .as_str()
                .unwrap_or_default()
                .contains("--privileged")
        );
        let yes = conn
            .ask("/AuthZPlugin.AuthZReq", &q(r#"{"Image":"busybox"}"#))
            .await;
        assert_eq!(yes["Allow"], true);
        let res = conn.ask("/AuthZPlugin.AuthZRes", "{}").await;
        assert_eq!(res["Allow"], true);
        // A question in words the policy does not know is refused.
        let odd = conn
            .ask(
                "/AuthZPlugin.AuthZReq",
                r#"{"Method":"POST","Uri":"/containers/create"}"#,
            )
            .await;
        assert_eq!(odd["Allow"], false);
        assert_eq!((policy.asked(), policy.refused()), (3, 2));
    }
}
