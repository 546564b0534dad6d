//! Registry credentials for the host daemon's pulls, resolved the way gitlab-runner's docker
//! executor resolves them (`helpers/docker/auth`): every source is read into a map from
//! registry path to credentials; earlier sources win for the same path
//! (`$DOCKER_AUTH_CONFIG`, then the runner user's `~/.docker/config.json` or `~/.dockercfg`,
//! then the job payload's `credentials` of type `registry`); an image takes the entry of its
//! longest matching path (`registry.corp/group/app`, then `registry.corp/group`, then
//! `registry.corp`).
//!
//! Nothing here prints a secret: [`RegistryAuth`]'s `Debug` shows the user and the source only.

use base64::Engine;
use std::collections::HashMap;

/// The registry an image without a host part comes from.
pub const DEFAULT_REGISTRY: &str = "docker.io";

/// Credentials for one registry, and where they came from (for the trace).
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryAuth {
    /// User name (may be empty with an identity token).
    pub username: String,
    /// Password or token.
    pub password: String,
    /// OAuth identity token, from `docker login` against some registries.
    pub identity_token: String,
    /// The registry key as the source spelled it.
    pub server_address: String,
    /// `$DOCKER_AUTH_CONFIG`, the config file path, or `job payload (GitLab Registry)`.
    pub source: String,
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("username", &self.username)
            .field("server_address", &self.server_address)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl RegistryAuth {
    /// bollard's form of these credentials.
    pub fn to_bollard(&self) -> bollard::auth::DockerCredentials {
        let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
        bollard::auth::DockerCredentials {
            username: some(&self.username),
            password: some(&self.password),
            serveraddress: some(&self.server_address),
            identitytoken: some(&self.identity_token),
            ..Default::default()
        }
    }
}

/// Name of the `$DOCKER_AUTH_CONFIG` source.
pub const SOURCE_VARIABLE: &str = "$DOCKER_AUTH_CONFIG";
/// Name of the job payload source (gitlab-runner's wording).
pub const SOURCE_PAYLOAD: &str = "job payload (GitLab Registry)";

/// One source of credentials: registry key (as written) → credentials.
#[derive(Clone, Default)]
pub struct AuthSource {
    /// Source name for the trace.
    pub name: String,
    /// Entries by the registry key they were written under.
    pub entries: Vec<(String, RegistryAuth)>,
    /// `credHelpers`: registry key → helper name, asked only for an image of that registry
    /// ([`resolve_with_helpers`]).
    pub helpers: Vec<(String, String)>,
    /// `credsStore`: the helper holding every other registry's credentials.
    pub store: Option<String>,
}

/// Whether a config's `credHelpers`/`credsStore` may be run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelperUse {
    /// The admin's config (the runner's home, the runner's `environment`): run them, as
    /// gitlab-runner does.
    Run,
    /// A config the job chose (its own `$DOCKER_AUTH_CONFIG`): never run. A job must not make
    /// the runner, as root, execute programs or read the host's keychains for it; it can
    /// always put credentials under `auths` itself.
    Refuse,
}

impl std::fmt::Debug for AuthSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<&str> = self.entries.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("AuthSource")
            .field("name", &self.name)
            .field("registries", &keys)
            .finish()
    }
}

/// Reads a docker client config (`{"auths": {...}}`, or the legacy `.dockercfg` map of
/// registries) into a source named `name`. `credsStore`/`credHelpers` are kept for
/// [`resolve_with_helpers`] when `helpers` is [`HelperUse::Run`], and reported in the returned
/// notes otherwise.
pub fn parse_config(
    name: &str,
    json: &str,
    helpers: HelperUse,
) -> Result<(AuthSource, Vec<String>), String> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("not valid JSON: {e}"))?;
    let obj = v
        .as_object()
        .ok_or_else(|| "not a JSON object".to_string())?;
    let mut notes = Vec::new();
    let mut helper_map = Vec::new();
    let mut store = None;
    if helpers == HelperUse::Refuse {
        for key in ["credsStore", "credHelpers"] {
            if obj.contains_key(key) {
                notes.push(format!(
                    "{name}: `{key}` is not run for a job's own config (the runner only runs \
                     credential helpers its admin configured); put the credentials under `auths`"
                ));
            }
        }
    } else {
        if let Some(h) = obj.get("credHelpers") {
            let map = h
                .as_object()
                .ok_or_else(|| "`credHelpers` is not an object".to_string())?;
            for (registry, helper) in map {
                match helper.as_str() {
                    Some(n) if super::cred_helper::valid_name(n) => {
                        helper_map.push((registry.clone(), n.to_string()))
                    }
                    _ => notes.push(format!(
                        "{name}: the credential helper of {registry:?} is not a helper name; ignored"
                    )),
                }
            }
        }
        match obj.get("credsStore") {
            None => {}
            Some(serde_json::Value::String(n)) if super::cred_helper::valid_name(n) => {
                store = Some(n.clone())
            }
            Some(_) => notes.push(format!(
                "{name}: `credsStore` is not a helper name; ignored"
            )),
        }
    }
    // The current format nests entries under `auths`; `.dockercfg` has them at the top.
    let map = match obj.get("auths") {
        Some(a) => a
            .as_object()
            .ok_or_else(|| "`auths` is not an object".to_string())?,
        None if obj.contains_key("credsStore") || obj.contains_key("credHelpers") => {
            return Ok((
                AuthSource {
                    name: name.into(),
                    entries: Vec::new(),
                    helpers: helper_map,
                    store,
                },
                notes,
            ));
        }
        None => obj,
    };
    let mut entries = Vec::new();
    for (registry, entry) in map {
        let Some(e) = entry.as_object() else {
            continue;
        };
        let text = |k: &str| e.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
        let (mut username, mut password) = (text("username"), text("password"));
        let auth = text("auth");
        if !auth.is_empty() {
            // `auth` is base64(`user:password`); it wins, as in docker's config loader.
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|_| format!("the `auth` of {registry:?} is not base64"))?;
            let decoded = String::from_utf8(decoded)
                .map_err(|_| format!("the `auth` of {registry:?} is not UTF-8"))?;
            let (u, p) = decoded
                .split_once(':')
                .ok_or_else(|| format!("the `auth` of {registry:?} is not `user:password`"))?;
            username = u.to_string();
            password = p.to_string();
        }
        let identity_token = text("identitytoken");
        if username.is_empty() && password.is_empty() && identity_token.is_empty() {
            continue;
        }
        entries.push((
            registry.clone(),
            RegistryAuth {
                username,
                password,
                identity_token,
                server_address: registry.clone(),
                source: name.to_string(),
            },
        ));
    }
    Ok((
        AuthSource {
            name: name.into(),
            entries,
            helpers: helper_map,
            store,
        },
        notes,
    ))
}

/// The job payload's `credentials` of type `registry` as a source.
pub fn payload_source(creds: impl IntoIterator<Item = (String, String, String)>) -> AuthSource {
    let entries = creds
        .into_iter()
        .map(|(url, username, password)| {
            (
                url.clone(),
                RegistryAuth {
                    username,
                    password,
                    identity_token: String::new(),
                    server_address: url,
                    source: SOURCE_PAYLOAD.to_string(),
                },
            )
        })
        .collect();
    AuthSource {
        name: SOURCE_PAYLOAD.into(),
        entries,
        ..Default::default()
    }
}

/// The server address a `credsStore` is asked for: Docker Hub under its legacy index URL, as
/// `docker login` stores it, any other registry under its host.
fn store_key(host: &str) -> String {
    if host == DEFAULT_REGISTRY {
        "https://index.docker.io/v1/".to_string()
    } else {
        host.to_string()
    }
}

/// [`resolve`], after asking the sources' credential helpers for `image`'s registry: a
/// `credHelpers` entry whose registry is on the image's path, else the `credsStore` for the
/// image's host when the source has no entry of its own for it. A helper that fails is a note
/// (that source gives nothing for this image), as gitlab-runner warns and goes on.
pub async fn resolve_with_helpers(
    image: &str,
    sources: &[AuthSource],
) -> (Option<RegistryAuth>, Vec<String>) {
    let path = image_path(image);
    let host = registry_host(image);
    let on_path = |key: &str| {
        let k = registry_path(key);
        path == k || path.starts_with(&format!("{k}/"))
    };
    let mut notes = Vec::new();
    let mut augmented = Vec::with_capacity(sources.len());
    for s in sources {
        let mut s = s.clone();
        let mut asks: Vec<(String, String)> = s
            .helpers
            .iter()
            .filter(|(key, _)| on_path(key))
            .cloned()
            .collect();
        if asks.is_empty()
            && let Some(store) = &s.store
            && !s.entries.iter().any(|(k, _)| on_path(k))
        {
            asks.push((store_key(&host), store.clone()));
        }
        for (key, helper) in asks {
            match super::cred_helper::get(&helper, &key, &s.name).await {
                Ok(Some(a)) => s.entries.push((key, a)),
                Ok(None) => {}
                Err(e) => notes.push(format!("{}: {e}", s.name)),
            }
        }
        augmented.push(s);
    }
    (resolve(image, &augmented), notes)
}

/// The credentials for `image` from `sources` (earlier sources win for the same registry
/// path), or `None`.
pub fn resolve(image: &str, sources: &[AuthSource]) -> Option<RegistryAuth> {
    let mut by_path: HashMap<String, &RegistryAuth> = HashMap::new();
    for s in sources {
        for (key, auth) in &s.entries {
            by_path.entry(registry_path(key)).or_insert(auth);
        }
    }
    let mut path = image_path(image);
    loop {
        if let Some(a) = by_path.get(&path) {
            return Some((*a).clone());
        }
        match path.rfind('/') {
            Some(i) => path.truncate(i),
            None => return None,
        }
    }
}

/// The registry host (with port) `image` is pulled from: `docker.io` for Docker Hub names.
pub fn registry_host(image: &str) -> String {
    let path = image_path(image);
    path.split('/')
        .next()
        .unwrap_or(DEFAULT_REGISTRY)
        .to_string()
}

/// `image` as a lookup path: host (lower case, Docker Hub spelled `docker.io`) and
/// repository, without tag or digest.
pub fn image_path(image: &str) -> String {
    let without_digest = image.split('@').next().unwrap_or(image);
    // A tag is a `:` after the last `/` (a `:` before it is a port).
    let last_slash = without_digest.rfind('/').map_or(0, |i| i + 1);
    let repo = match without_digest[last_slash..].find(':') {
        Some(i) => &without_digest[..last_slash + i],
        None => without_digest,
    };
    let path = match repo.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            if first == "index.docker.io" {
                repo.replacen("index.docker.io", DEFAULT_REGISTRY, 1)
            } else {
                repo.to_string()
            }
        }
        _ => format!("{DEFAULT_REGISTRY}/{repo}"),
    };
    lower_host(&path)
}

/// A credentials key as a lookup path: a URL (`https://index.docker.io/v1/`) becomes its
/// host, a path keeps its repository part without a tag.
pub fn registry_path(key: &str) -> String {
    let lower = key.to_ascii_lowercase();
    for scheme in ["https://", "http://"] {
        if lower.starts_with(scheme) {
            let rest = &key[scheme.len()..];
            let host = rest.split('/').next().unwrap_or("").to_ascii_lowercase();
            return if host == "index.docker.io" {
                DEFAULT_REGISTRY.to_string()
            } else {
                host
            };
        }
    }
    let mut path = key.trim_end_matches('/').to_string();
    if let (Some(colon), Some(slash)) = (path.rfind(':'), path.rfind('/'))
        && colon > slash
    {
        path.truncate(colon);
    }
    lower_host(&path)
}

fn lower_host(path: &str) -> String {
    match path.split_once('/') {
        Some((host, rest)) => format!("{}/{rest}", host.to_ascii_lowercase()),
        None => path.to_ascii_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn image_paths_like_gitlab_runner() {
        assert_eq!(image_path("alpine"), "docker.io/alpine");
        assert_eq!(image_path("alpine:3.20"), "docker.io/alpine");
        assert_eq!(image_path("group/app:1"), "docker.io/group/app");
        assert_eq!(
            image_path("Registry.Corp:5000/Group/app:1"),
            "registry.corp:5000/Group/app"
        );
        assert_eq!(image_path("localhost/app"), "localhost/app");
        assert_eq!(
            image_path("index.docker.io/library/alpine"),
            "docker.io/library/alpine"
        );
        assert_eq!(
            image_path("r.corp/app@sha256:0123"),
            "r.corp/app",
            "a digest is not part of the path"
        );
        assert_eq!(registry_host("r.corp:5000/a/b:1"), "r.corp:5000");
        assert_eq!(registry_host("busybox"), "docker.io");
    }

    #[test]
    fn registry_keys_normalised() {
        assert_eq!(registry_path("https://index.docker.io/v1/"), "docker.io");
        assert_eq!(registry_path("http://R.corp:5000/v2/"), "r.corp:5000");
        assert_eq!(registry_path("r.corp:5000"), "r.corp:5000");
        assert_eq!(
            registry_path("r.corp:5000/group/app:tag"),
            "r.corp:5000/group/app"
        );
    }

    #[test]
    fn config_formats_and_first_source_wins() {
        let var = format!(
            r#"{{"auths": {{"r.corp:5000": {{"auth": "{}"}}, "other.io": {{"username": "u2", "password": "p2"}}}}}}"#,
            b64("alice:s3:cret")
        );
        let (a, notes) = parse_config(SOURCE_VARIABLE, &var, HelperUse::Refuse).expect("parse");
        assert!(notes.is_empty());
        // Legacy .dockercfg: the registries at the top level.
        let legacy = format!(r#"{{"r.corp:5000": {{"auth": "{}"}}}}"#, b64("bob:x"));
        let (home, _) = parse_config("/root/.dockercfg", &legacy, HelperUse::Run).expect("parse");
        let payload = payload_source([(
            "r.corp:5000".to_string(),
            "gitlab-ci-token".to_string(),
            "tok".to_string(),
        )]);
        let got = resolve(
            "r.corp:5000/group/app:1",
            &[a.clone(), home.clone(), payload.clone()],
        )
        .expect("found");
        assert_eq!(got.username, "alice");
        assert_eq!(got.password, "s3:cret", "only the first `:` splits");
        assert_eq!(got.source, SOURCE_VARIABLE);
        let got = resolve("r.corp:5000/app", &[home, payload.clone()]).expect("found");
        assert_eq!(got.username, "bob");
        let got = resolve("R.CORP:5000/app", std::slice::from_ref(&payload)).expect("found");
        assert_eq!(got.source, SOURCE_PAYLOAD);
        assert!(resolve("elsewhere.io/app", &[a, payload]).is_none());
    }

    #[test]
    fn longest_path_wins() {
        let json = r#"{"auths": {"r.corp/group": {"username": "g", "password": "1"},
                                  "r.corp": {"username": "h", "password": "2"}}}"#;
        let (s, _) = parse_config("x", json, HelperUse::Run).expect("parse");
        let src = [s];
        assert_eq!(resolve("r.corp/group/app", &src).expect("g").username, "g");
        assert_eq!(resolve("r.corp/other/app", &src).expect("h").username, "h");
    }

    #[test]
    fn job_helpers_are_noted_not_kept_and_secrets_not_debugged() {
        let json = r#"{"credsStore": "desktop", "credHelpers": {"r.corp": "pass"}, "auths": {}}"#;
        let (s, notes) = parse_config("cfg", json, HelperUse::Refuse).expect("parse");
        assert!(s.entries.is_empty() && s.helpers.is_empty() && s.store.is_none());
        assert!(notes[0].contains("credsStore") && notes[1].contains("credHelpers"));
        let (s, notes) = parse_config("cfg", json, HelperUse::Run).expect("parse");
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(s.store.as_deref(), Some("desktop"));
        assert_eq!(s.helpers, vec![("r.corp".to_string(), "pass".to_string())]);
        let bad = r#"{"credHelpers": {"r.corp": "../../bin/sh"}}"#;
        let (s, notes) = parse_config("cfg", bad, HelperUse::Run).expect("parse");
        assert!(s.helpers.is_empty() && notes[0].contains("not a helper name"));
        assert!(parse_config("cfg", "{not json", HelperUse::Run).is_err());
        assert!(
            parse_config(
                "cfg",
                r#"{"auths": {"r": {"auth": "%%%"}}}"#,
                HelperUse::Run
            )
            .is_err()
        );
        let a = payload_source([("r".into(), "u".into(), "hunter2".into())]);
        assert!(!format!("{a:?}").contains("hunter2"));
        assert!(!format!("{:?}", a.entries[0].1).contains("hunter2"));
    }
}
