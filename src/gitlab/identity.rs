//! Who this runner is: `system_id` (protocol 2.2), the `info` block with the features we
//! really support (3.2), token kinds (2.1) and the `[[runners]]` entries of `config.toml`
//! (edited with `toml_edit` so comments and layout survive).

use super::Error;
use crate::secret::Secret;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// File name of the persisted system id, as the official runner names it.
pub const SYSTEM_ID_FILE: &str = ".runner_system_id";

/// Where the OS keeps its machine id (D-Bus copy first, as the official runner reads it).
pub const MACHINE_ID_PATHS: [&str; 2] = ["/var/lib/dbus/machine-id", "/etc/machine-id"];

/// `^[sr]_[0-9a-zA-Z]{12}$`.
pub fn is_valid_system_id(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 14
        && (b[0] == b's' || b[0] == b'r')
        && b[1] == b'_'
        && b[2..].iter().all(u8::is_ascii_alphanumeric)
}

/// HMAC-SHA256 (RFC 2104); written out because it is ten lines over `sha2`.
fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// `s_` + the first 12 hex digits of HMAC-SHA256(key = machine id, message = `gitlab-runner`).
pub fn system_id_from_machine_id(machine_id: &str) -> String {
    let mac = hmac_sha256(machine_id.trim().as_bytes(), b"gitlab-runner");
    format!("s_{}", &hex::encode(mac)[..12])
}

fn random_system_id() -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let s: String = (0..12)
        .map(|_| CHARS[rand::random_range(0..CHARS.len())] as char)
        .collect();
    format!("r_{s}")
}

/// The system id of this machine: the persisted one in `state_dir` when valid, else derived from
/// the machine id, else random; a new value is written back (mode 0600).
pub async fn system_id(state_dir: &Path) -> Result<String, Error> {
    let machine: Vec<PathBuf> = MACHINE_ID_PATHS.iter().map(PathBuf::from).collect();
    system_id_with(state_dir, &machine).await
}

/// [`system_id`] with the machine-id files given (tests).
pub async fn system_id_with(
    state_dir: &Path,
    machine_id_files: &[PathBuf],
) -> Result<String, Error> {
    let file = state_dir.join(SYSTEM_ID_FILE);
    match tokio::fs::read_to_string(&file).await {
        Ok(s) if is_valid_system_id(s.trim()) => return Ok(s.trim().to_string()),
        Ok(_) => tracing::warn!(path = %file.display(), "ignoring an invalid system id file"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(Error::State { path: file, source }),
    }
    let mut id = None;
    for p in machine_id_files {
        if let Ok(m) = tokio::fs::read_to_string(p).await
            && !m.trim().is_empty()
        {
            id = Some(system_id_from_machine_id(&m));
            break;
        }
    }
    let id = id.unwrap_or_else(random_system_id);
    write_private(&file, format!("{id}\n").as_bytes())
        .await
        .map_err(|source| Error::State {
            path: file.clone(),
            source,
        })?;
    Ok(id)
}

/// Writes a file readable only by its owner (0600), atomically (temp file + rename), creating the
/// parent directory when missing.
pub async fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    tokio::fs::create_dir_all(dir).await?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        uuid::Uuid::new_v4().simple()
    ));
    let mut f = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .await?;
    f.write_all(data).await?;
    f.sync_all().await?;
    drop(f);
    // Mode is set again in case a umask or an existing file got in the way.
    tokio::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o600)).await?;
    tokio::fs::rename(&tmp, path).await
}

/// True for new-style runner authentication tokens (`glrt-`), which register with
/// `/runners/verify` and unregister with `/runners/managers` (protocol 2.1).
pub fn is_authentication_token(token: &str) -> bool {
    token.starts_with("glrt-")
}

/// The short form GitLab shows (`CI_RUNNER_SHORT_TOKEN`), safe to log.
pub fn short_token(token: &str) -> String {
    let mut t = token;
    if let Some(rest) = t.strip_prefix("glrt-") {
        t = rest;
        for p in ["t1_", "t2_", "t3_"] {
            if let Some(r) = t.strip_prefix(p) {
                t = r;
                break;
            }
        }
    } else if let Some(rest) = ["t1_", "t2_", "t3_", "glrtr-", "glcbt-"]
        .iter()
        .find_map(|p| t.strip_prefix(p))
    {
        t = rest;
    } else if t.len() > 9 && t.starts_with("GR") && t[2..9].bytes().all(|b| b.is_ascii_hexdigit()) {
        t = &t[9..];
    }
    t.chars().take(9).collect()
}

/// Capability flags we send in `info.features`: every key, like the official runner, `true`
/// only where our pipeline really does it. One table so the lead can adjust it in one place.
///
/// Left out on purpose: `shared` (builds dirs are per job), `session`/`terminal` (no session
/// server), `proxy` (Kubernetes only), `vault_secrets` (no secret providers),
/// `service_executor_opts` (not interpreted; `image_executor_opts` is: `docker: user`),
/// `native_steps_integration`
/// (no `run:`), `two_phase_job_commit` (we confirm with `PUT running` anyway but do not
/// implement the pending keep-alive), `job_inputs`.
pub const FEATURES: &[(&str, bool)] = &[
    ("variables", true),
    ("image", true),
    ("services", true),
    ("artifacts", true),
    ("cache", true),
    ("fallback_cache_keys", true),
    ("shared", false),
    ("upload_multiple_artifacts", true),
    ("upload_raw_artifacts", true),
    ("session", false),
    ("terminal", false),
    ("refspecs", true),
    ("masking", true),
    ("proxy", false),
    ("raw_variables", true),
    ("artifacts_exclude", true),
    ("multi_build_steps", true),
    ("trace_reset", true),
    ("trace_checksum", true),
    ("trace_size", true),
    ("vault_secrets", false),
    ("cancelable", true),
    ("return_exit_code", true),
    ("service_variables", true),
    ("service_multiple_aliases", true),
    ("image_executor_opts", true),
    ("service_executor_opts", false),
    ("cancel_gracefully", true),
    ("native_steps_integration", false),
    ("two_phase_job_commit", false),
    ("job_inputs", false),
];

/// The `info` block of `jobs/request`, `runners/verify` and job updates (protocol 3.1).
pub fn runner_info() -> Value {
    let features: serde_json::Map<String, Value> = FEATURES
        .iter()
        .map(|(k, v)| (k.to_string(), Value::Bool(*v)))
        .collect();
    json!({
        "name": "isolated-runner",
        "version": env!("CARGO_PKG_VERSION"),
        "revision": option_env!("ISOLATED_RUNNER_REVISION").unwrap_or("unknown"),
        "platform": std::env::consts::OS,
        "architecture": super::client::go_arch(),
        "executor": "docker",
        "shell": "bash",
        "features": features,
        "config": {"gpus": ""},
    })
}

/// A `[[runners]]` entry as `list`, `verify` and `unregister` see it.
#[derive(Clone)]
pub struct RunnerEntry {
    /// `name`.
    pub name: String,
    /// `url`.
    pub url: String,
    /// `token`.
    pub token: Secret,
    /// `id`, when the file has one.
    pub id: Option<i64>,
}

impl std::fmt::Debug for RunnerEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunnerEntry")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// The `[[runners]]` entries of a config document.
pub fn list_runners(doc: &toml_edit::DocumentMut) -> Vec<RunnerEntry> {
    let Some(runners) = doc.get("runners").and_then(|r| r.as_array_of_tables()) else {
        return Vec::new();
    };
    runners
        .iter()
        .map(|t| {
            let s = |k: &str| {
                t.get(k)
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_string()
            };
            RunnerEntry {
                name: s("name"),
                url: s("url"),
                token: Secret::new(s("token")),
                id: t.get("id").and_then(|v| v.as_integer()),
            }
        })
        .collect()
}

/// What `register` writes for a new runner.
#[derive(Clone, Default)]
pub struct NewRunner {
    /// `name`.
    pub name: String,
    /// `url`.
    pub url: String,
    /// `id` from GitLab.
    pub id: Option<u64>,
    /// Runner token.
    pub token: Secret,
    /// `token_obtained_at`, RFC 3339.
    pub token_obtained_at: String,
    /// `token_expires_at` from GitLab.
    pub token_expires_at: Option<String>,
    /// `[runners.docker] image`.
    pub docker_image: String,
    /// `limit`, when given.
    pub limit: Option<i64>,
}

/// Appends a `[[runners]]` entry; creates `concurrent`/`check_interval` in an empty document.
pub fn add_runner(doc: &mut toml_edit::DocumentMut, new: &NewRunner) {
    use toml_edit::{Item, Table, value};
    if doc.get("concurrent").is_none() {
        doc.insert("concurrent", value(1));
    }
    if doc.get("check_interval").is_none() {
        doc.insert("check_interval", value(3));
    }
    let mut t = Table::new();
    t.insert("name", value(new.name.clone()));
    t.insert("url", value(new.url.clone()));
    if let Some(id) = new.id {
        t.insert("id", value(id as i64));
    }
    t.insert("token", value(new.token.expose()));
    t.insert("token_obtained_at", value(new.token_obtained_at.clone()));
    if let Some(e) = &new.token_expires_at {
        t.insert("token_expires_at", value(e.clone()));
    }
    t.insert("executor", value("docker"));
    if let Some(l) = new.limit {
        t.insert("limit", value(l));
    }
    let mut docker = Table::new();
    docker.insert("image", value(new.docker_image.clone()));
    t.insert("docker", Item::Table(docker));
    match doc
        .get_mut("runners")
        .and_then(Item::as_array_of_tables_mut)
    {
        Some(arr) => arr.push(t),
        None => {
            let mut arr = toml_edit::ArrayOfTables::new();
            arr.push(t);
            doc.insert("runners", Item::ArrayOfTables(arr));
        }
    }
}

/// Removes the `[[runners]]` entries for which `remove` is true; returns how many went.
pub fn remove_runners(
    doc: &mut toml_edit::DocumentMut,
    remove: impl Fn(&RunnerEntry) -> bool,
) -> usize {
    let entries = list_runners(doc);
    let Some(arr) = doc
        .get_mut("runners")
        .and_then(toml_edit::Item::as_array_of_tables_mut)
    else {
        return 0;
    };
    let mut removed = 0;
    for (i, e) in entries.iter().enumerate().rev() {
        if remove(e) {
            arr.remove(i);
            removed += 1;
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn system_id_shapes() {
        let s = system_id_from_machine_id("0123456789abcdef0123456789abcdef\n");
        assert!(is_valid_system_id(&s) && s.starts_with("s_"), "{s}");
        assert!(is_valid_system_id(&random_system_id()));
        assert!(!is_valid_system_id("x_0123456789ab"));
        assert!(!is_valid_system_id("s_0123456789a"));
    }

    #[tokio::test]
    async fn system_id_is_persisted_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = system_id_with(dir.path(), &[dir.path().join("none")])
            .await
            .unwrap();
        assert!(a.starts_with("r_"));
        let b = system_id_with(dir.path(), &[]).await.unwrap();
        assert_eq!(a, b);
        let mode = std::fs::metadata(dir.path().join(SYSTEM_ID_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn short_tokens() {
        assert_eq!(short_token("glrt-t3_abcdefghijkl"), "abcdefghi");
        assert_eq!(short_token("glrt-abcdefghijkl"), "abcdefghi");
        assert_eq!(short_token("GR1348941abcdefghijk"), "abcdefghi");
        assert_eq!(short_token("plain"), "plain");
    }

    #[test]
    fn add_and_remove_keep_comments() {
        let mut doc: toml_edit::DocumentMut =
            "# my runners\nconcurrent = 4 # keep\n".parse().unwrap();
        add_runner(
            &mut doc,
            &NewRunner {
                name: "a".into(),
                url: "http://x/".into(),
                token: Secret::new("glrt-a"),
                docker_image: "alpine".into(),
                ..Default::default()
            },
        );
        add_runner(
            &mut doc,
            &NewRunner {
                name: "b".into(),
                url: "http://x/".into(),
                token: Secret::new("glrt-b"),
                ..Default::default()
            },
        );
        let text = doc.to_string();
        assert!(text.contains("# my runners") && text.contains("concurrent = 4 # keep"));
        assert_eq!(list_runners(&doc).len(), 2);
        assert_eq!(remove_runners(&mut doc, |e| e.name == "a"), 1);
        let left = list_runners(&doc);
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].token.expose(), "glrt-b");
        let features = runner_info()["features"].as_object().unwrap().len();
        assert_eq!(features, FEATURES.len());
    }
}
