//! The shared cache store (`[runners.cache] Type = "s3" | "gcs" | "azure"`) through the
//! `object_store` crate: the client, gitlab-runner's object names, and streaming transfers
//! between the store and this host's archive files.
//!
//! **Credentials stay in the runner process.** gitlab-runner hands pre-signed URLs to a helper
//! container so the store's keys never enter a job; here no container takes part at all: the
//! runner downloads into and uploads from its own `cache_dir`, which no container mounts. The
//! keys live in [`Secret`](crate::secret::Secret)s, and every store error is scrubbed of them
//! before it reaches a trace or a log line ([`Remote::scrub`]).

use crate::config::{CacheStoreConfig, CacheStoreType, S3Auth, S3Encryption};
use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, RetryConfig};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Errors of the shared store. Their text is scrubbed of credentials ([`Remote::scrub`]) before
/// it is shown anywhere.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The store client cannot be built from the config (e.g. an unreadable credentials file).
    #[error("cannot set up the {kind} cache store: {message}")]
    Setup {
        /// `s3`, `gcs` or `azure`.
        kind: &'static str,
        /// What went wrong, scrubbed.
        message: String,
    },
    /// A request to the store failed (after the client's retries).
    #[error("cache store request failed: {0}")]
    Store(String),
    /// Reading or writing this host's archive file failed.
    #[error("cannot {what} {path}")]
    Local {
        /// `read` or `write`.
        what: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Attempts per request (the first plus retries): a store that is down fails the transfer in a
/// few seconds, and the job goes on with this host's copy.
const MAX_RETRIES: usize = 2;
/// How long one request may keep retrying.
const RETRY_TIMEOUT: Duration = Duration::from_secs(20);
/// Connecting to the store; a host that does not answer is a store that is down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes buffered per upload part: what an upload holds in memory at most (times the parts in
/// flight), whatever the archive's size.
const UPLOAD_PART: usize = 8 << 20;
/// Upload parts in flight at once.
const UPLOAD_CONCURRENCY: usize = 2;

/// A connected store plus where this runner's objects live in it. Its `Debug` leaves out the
/// credentials it scrubs (a derived one would print them).
pub struct Remote {
    store: Arc<dyn ObjectStore>,
    /// `<Path>/runner/<short token>` or `<Path>` when `Shared`, without trailing `/`.
    namespace: String,
    /// `MaxUploadedArchiveSize`.
    max_upload: Option<u64>,
    /// Credential values to scrub from every message.
    secrets: Vec<String>,
    kind: &'static str,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("kind", &self.kind)
            .field("namespace", &self.namespace)
            .field("max_upload", &self.max_upload)
            .finish_non_exhaustive()
    }
}

/// How a client retries and waits.
#[derive(Debug, Clone, Copy)]
struct Tuning {
    max_retries: usize,
    retry_timeout: Duration,
    connect_timeout: Duration,
    /// `None`: no limit per request (a whole archive is one request).
    request_timeout: Option<Duration>,
}

/// Jobs: a few retries, then the job goes on with this host's copy.
const JOBS: Tuning = Tuning {
    max_retries: MAX_RETRIES,
    retry_timeout: RETRY_TIMEOUT,
    connect_timeout: CONNECT_TIMEOUT,
    request_timeout: None,
};

/// gitlab-runner's `helpers.ShortenToken`: the runner's part of the object names, so runners of
/// both kinds registered with one token find the same objects.
pub fn shorten_token(token: &str) -> String {
    let t = token;
    let take = |from: usize, to: usize| t.get(from..to.min(t.len())).unwrap_or(t).to_string();
    if t.len() < 8 {
        return t.to_string();
    }
    for prefix in ["glrt-", "glrtr-", "glcbt-"] {
        if t.starts_with(prefix) {
            return take(prefix.len(), prefix.len() + 9);
        }
    }
    if t.starts_with("GR") && t.len() >= 17 && t[2..9].bytes().all(|b| b.is_ascii_hexdigit()) {
        return take(0, 17);
    }
    take(0, 8)
}

/// The cache key as the store names it: GitLab suffixes keys with `-protected` or
/// `-non_protected` (when the project keeps protected caches apart, the default); the suffix is
/// added here when GitLab did not, from the **job's** protected flag, so an unprotected job can
/// never name a protected job's object, whatever the project setting or the key says.
pub fn protected_key(key: &str, protected: bool) -> String {
    let key = key.trim_end();
    if protected {
        if key.ends_with("-protected") && !key.ends_with("-non_protected") {
            key.to_string()
        } else {
            format!("{key}-protected")
        }
    } else if key.ends_with("-non_protected") {
        key.to_string()
    } else {
        format!("{key}-non_protected")
    }
}

impl Remote {
    /// Builds the client for `cfg`, for the runner with `token` (only its short form is used).
    pub fn new(cfg: &CacheStoreConfig, token: &str) -> Result<Remote, RemoteError> {
        Remote::build(cfg, token, JOBS)
    }

    /// A client for a one-shot check (`runner doctor`): no retries, and every request,
    /// connecting included, bounded by `timeout`, so a wrong setting shows at once as what the
    /// store answered.
    pub fn for_probe(
        cfg: &CacheStoreConfig,
        token: &str,
        timeout: Duration,
    ) -> Result<Remote, RemoteError> {
        Remote::build(
            cfg,
            token,
            Tuning {
                max_retries: 0,
                retry_timeout: timeout,
                connect_timeout: timeout.min(CONNECT_TIMEOUT),
                request_timeout: Some(timeout),
            },
        )
    }

    fn build(cfg: &CacheStoreConfig, token: &str, tuning: Tuning) -> Result<Remote, RemoteError> {
        // The store's HTTP client needs the process's TLS provider (reqwest is built without
        // one); idempotent, so a library user or a test need not know.
        crate::install_crypto_provider();
        let mut secrets = Vec::new();
        let mut keep = |s: &Option<crate::secret::Secret>| {
            if let Some(s) = s.as_ref().filter(|s| !s.is_empty()) {
                secrets.push(s.expose().to_string());
            }
        };
        keep(&cfg.s3.access_key);
        keep(&cfg.s3.secret_key);
        keep(&cfg.s3.session_token);
        keep(&cfg.gcs.private_key);
        keep(&cfg.azure.account_key);
        let kind = cfg.kind.as_str();
        let setup = |e: object_store::Error, secrets: &[String]| RemoteError::Setup {
            kind,
            message: scrub_with(secrets, &e.to_string()),
        };
        let retry = RetryConfig {
            max_retries: tuning.max_retries,
            retry_timeout: tuning.retry_timeout,
            ..RetryConfig::default()
        };
        let options = ClientOptions::new().with_connect_timeout(tuning.connect_timeout);
        let options = match tuning.request_timeout {
            Some(t) => options.with_timeout(t),
            // A whole archive is one request: the job's own timeout bounds it, not a fixed one.
            None => options.with_timeout_disabled(),
        };
        let store: Arc<dyn ObjectStore> = match cfg.kind {
            CacheStoreType::S3 => {
                let s3 = &cfg.s3;
                let region = if s3.bucket_location.trim().is_empty() {
                    "us-east-1"
                } else {
                    s3.bucket_location.trim()
                };
                let mut b = object_store::aws::AmazonS3Builder::new()
                    .with_bucket_name(s3.bucket_name.trim())
                    .with_region(region)
                    .with_retry(retry)
                    .with_client_options(options.with_allow_http(s3.insecure));
                if s3.authentication_type == S3Auth::AccessKey {
                    if let Some(k) = &s3.access_key {
                        b = b.with_access_key_id(k.expose());
                    }
                    if let Some(k) = &s3.secret_key {
                        b = b.with_secret_access_key(k.expose());
                    }
                    if let Some(k) = &s3.session_token {
                        b = b.with_token(k.expose());
                    }
                }
                let address = s3.server_address.trim().trim_end_matches('/');
                let scheme = if s3.insecure { "http" } else { "https" };
                if address.is_empty() {
                    // AWS: virtual-hosted requests unless PathStyle asks otherwise.
                    b = b.with_virtual_hosted_style_request(!s3.path_style.unwrap_or(false));
                } else if s3.path_style.unwrap_or(true) {
                    b = b.with_endpoint(format!("{scheme}://{address}"));
                } else {
                    b = b
                        .with_endpoint(format!("{scheme}://{}.{address}", s3.bucket_name.trim()))
                        .with_virtual_hosted_style_request(true);
                }
                match &s3.server_side_encryption {
                    S3Encryption::None => {}
                    S3Encryption::S3 => {
                        let key = "aws_server_side_encryption"
                            .parse::<object_store::aws::AmazonS3ConfigKey>()
                            .map_err(|e| setup(e, &secrets))?;
                        b = b.with_config(key, "AES256")
                    }
                    S3Encryption::Kms(id) => b = b.with_sse_kms_encryption(id),
                    S3Encryption::DsseKms(id) => b = b.with_dsse_kms_encryption(id),
                }
                Arc::new(b.build().map_err(|e| setup(e, &secrets))?)
            }
            CacheStoreType::Gcs => {
                let g = &cfg.gcs;
                let mut b = object_store::gcp::GoogleCloudStorageBuilder::new()
                    .with_bucket_name(g.bucket_name.trim())
                    .with_retry(retry)
                    .with_client_options(options);
                if let Some(file) = &g.credentials_file {
                    b = b.with_service_account_path(file.to_string_lossy());
                } else if let Some(key) = &g.private_key {
                    let json = serde_json::json!({
                        "client_email": g.access_id.trim(),
                        "private_key": key.expose(),
                        "private_key_id": "",
                    });
                    b = b.with_service_account_key(json.to_string());
                }
                if !g.universe_domain.trim().is_empty() {
                    b = b.with_base_url(&format!("https://storage.{}", g.universe_domain.trim()));
                }
                Arc::new(b.build().map_err(|e| setup(e, &secrets))?)
            }
            CacheStoreType::Azure => {
                let a = &cfg.azure;
                let mut b = object_store::azure::MicrosoftAzureBuilder::new()
                    .with_account(a.account_name.trim())
                    .with_container_name(a.container_name.trim())
                    .with_retry(retry)
                    .with_client_options(options);
                if let Some(k) = &a.account_key {
                    b = b.with_access_key(k.expose());
                }
                if !a.storage_domain.trim().is_empty() {
                    b = b.with_endpoint(format!(
                        "https://{}.{}",
                        a.account_name.trim(),
                        a.storage_domain.trim()
                    ));
                }
                Arc::new(b.build().map_err(|e| setup(e, &secrets))?)
            }
        };
        let mut namespace = cfg.path.clone();
        if !cfg.shared {
            if !namespace.is_empty() {
                namespace.push('/');
            }
            namespace.push_str("runner/");
            namespace.push_str(&shorten_token(token));
        }
        Ok(Remote {
            store,
            namespace,
            max_upload: cfg.max_uploaded_archive_size,
            secrets,
            kind,
        })
    }

    /// `s3`, `gcs` or `azure`.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// `MaxUploadedArchiveSize`, if any.
    pub fn max_upload(&self) -> Option<u64> {
        self.max_upload
    }

    /// Removes every credential value from `text`.
    pub fn scrub(&self, text: &str) -> String {
        scrub_with(&self.secrets, text)
    }

    /// The object name of `key` (already protection-suffixed, see [`protected_key`]) for
    /// `project_id`: `[<Path>/][runner/<short token>/]project/<id>/<key>`, as gitlab-runner names
    /// it. `None` when the key would leave the project's prefix (`..`) or is empty.
    pub fn object_name(&self, project_id: u64, key: &str) -> Option<String> {
        let mut parts: Vec<&str> = Vec::new();
        for part in key.split('/') {
            match part {
                "" | "." => {}
                ".." => return None,
                p => parts.push(p),
            }
        }
        if parts.is_empty() {
            return None;
        }
        let mut name = self.namespace.clone();
        if !name.is_empty() {
            name.push('/');
        }
        name.push_str(&format!("project/{project_id}/{}", parts.join("/")));
        Some(name)
    }

    /// `rest` inside this runner's namespace: `[<Path>/][runner/<short token>/]<rest>`.
    pub(super) fn namespaced(&self, rest: &str) -> String {
        if self.namespace.is_empty() {
            rest.to_string()
        } else {
            format!("{}/{rest}", self.namespace)
        }
    }

    /// The store client itself, for the doctor's probe.
    pub(super) fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    fn path(name: &str) -> ObjectPath {
        ObjectPath::from_iter(name.split('/'))
    }

    fn store_error(&self, e: object_store::Error) -> RemoteError {
        RemoteError::Store(self.scrub(&error_text(&e)))
    }

    /// Downloads object `name` into `dest` (a temp file the caller renames), streaming.
    /// `Ok(false)` when the object does not exist.
    pub async fn download(&self, name: &str, dest: &Path) -> Result<bool, RemoteError> {
        let result = match self.store.get(&Self::path(name)).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(self.store_error(e)),
        };
        let local = |source| RemoteError::Local {
            what: "write",
            path: dest.to_path_buf(),
            source,
        };
        let mut file = tokio::fs::File::create(dest).await.map_err(local)?;
        let mut stream = result.into_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.store_error(e))?;
            file.write_all(&chunk).await.map_err(local)?;
        }
        file.sync_all().await.map_err(local)?;
        Ok(true)
    }

    /// Uploads the file `src` as object `name`, streaming in parts of [`UPLOAD_PART`] bytes.
    /// A failed upload is aborted: the store keeps the previous object, if any.
    pub async fn upload(&self, src: &Path, name: &str) -> Result<(), RemoteError> {
        let mut file = tokio::fs::File::open(src)
            .await
            .map_err(|source| RemoteError::Local {
                what: "read",
                path: src.to_path_buf(),
                source,
            })?;
        let mut writer = object_store::buffered::BufWriter::with_capacity(
            self.store.clone(),
            Self::path(name),
            UPLOAD_PART,
        )
        .with_max_concurrency(UPLOAD_CONCURRENCY);
        if let Err(e) = tokio::io::copy(&mut file, &mut writer).await {
            // Best effort: the parts already sent are dropped by the store.
            let _ = writer.abort().await;
            return Err(RemoteError::Store(self.scrub(&io_error_text(&e))));
        }
        // Completing aborts a multipart upload by itself when it fails.
        writer
            .shutdown()
            .await
            .map_err(|e| RemoteError::Store(self.scrub(&io_error_text(&e))))
    }
}

/// An error and its causes on one line (each cause once).
pub(super) fn error_text(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let c = cause.to_string();
        if !text.contains(&c) {
            text.push_str(": ");
            text.push_str(&c);
        }
        source = cause.source();
    }
    text
}

fn io_error_text(e: &std::io::Error) -> String {
    match e.get_ref() {
        Some(inner) => error_text(inner),
        None => e.to_string(),
    }
}

fn scrub_with(secrets: &[String], text: &str) -> String {
    let mut out = text.to_string();
    for s in secrets.iter().filter(|s| s.len() >= 4) {
        out = out.replace(s.as_str(), "[MASKED]");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CacheStoreConfig;
    use crate::secret::Secret;

    fn s3(shared: bool, path: &str) -> Remote {
        let mut c = CacheStoreConfig::new(CacheStoreType::S3);
        c.shared = shared;
        c.path = path.into();
        c.s3.bucket_name = "b".into();
        c.s3.server_address = "127.0.0.1:9".into();
        c.s3.insecure = true;
        c.s3.access_key = Some(Secret::new("AKIDTEST"));
        c.s3.secret_key = Some(Secret::new("s3cr3t-value"));
        Remote::new(&c, "glrt-abcdefghijklmnop").expect("client")
    }

    #[test]
    fn object_names_follow_gitlab_runner() {
        let r = s3(false, "");
        assert_eq!(
            r.object_name(7, "build/main-non_protected").as_deref(),
            Some("runner/abcdefghi/project/7/build/main-non_protected")
        );
        let r = s3(true, "ci/cache");
        assert_eq!(
            r.object_name(7, "k-protected").as_deref(),
            Some("ci/cache/project/7/k-protected")
        );
        assert_eq!(r.object_name(7, "../8/k"), None);
        assert_eq!(r.object_name(7, "//"), None);
        assert_eq!(
            r.object_name(7, "a//./b").as_deref(),
            Some("ci/cache/project/7/a/b")
        );
    }

    #[test]
    fn tokens_shorten_like_gitlab_runner() {
        assert_eq!(shorten_token("glrt-abcdefghijklmnop"), "abcdefghi");
        assert_eq!(shorten_token("GR1348941abcdefghijkl"), "GR1348941abcdefgh");
        assert_eq!(shorten_token("0123456789abcdef"), "01234567");
        assert_eq!(shorten_token("short"), "short");
    }

    #[test]
    fn protection_suffix_comes_from_the_job() {
        assert_eq!(protected_key("k-protected", true), "k-protected");
        assert_eq!(protected_key("k", true), "k-protected");
        assert_eq!(protected_key("k-non_protected", false), "k-non_protected");
        // An unprotected job naming a protected key gets its own object.
        assert_eq!(
            protected_key("k-protected", false),
            "k-protected-non_protected"
        );
        assert_eq!(
            protected_key("k-non_protected", true),
            "k-non_protected-protected"
        );
    }

    #[test]
    fn gcs_and_azure_configs_reach_object_store() {
        // Azure: account key and storage domain are accepted by the client builder.
        let mut c = CacheStoreConfig::new(CacheStoreType::Azure);
        c.azure.account_name = "acct".into();
        c.azure.container_name = "cache".into();
        c.azure.account_key = Some(Secret::new("a2V5LWJ5dGVzLWZvci10ZXN0"));
        c.azure.storage_domain = "blob.core.example".into();
        let r = Remote::new(&c, "0123456789").expect("azure client");
        assert_eq!(r.kind(), "azure");
        assert_eq!(
            r.object_name(1, "k-non_protected").as_deref(),
            Some("runner/01234567/project/1/k-non_protected")
        );

        // GCS: a key that is not a PEM is refused when the client is built, and the error
        // names the store without quoting the key.
        let mut c = CacheStoreConfig::new(CacheStoreType::Gcs);
        c.gcs.bucket_name = "b".into();
        c.gcs.access_id = "sa@project.iam.gserviceaccount.com".into();
        c.gcs.private_key = Some(Secret::new("not-a-pem-private-key-77"));
        let e = Remote::new(&c, "t").expect_err("bad key").to_string();
        assert!(e.contains("gcs") && e.contains("pem"), "{e}");
        assert!(!e.contains("not-a-pem-private-key-77"), "{e}");

        // GCS: a credentials file that does not exist is a setup error too.
        let mut c = CacheStoreConfig::new(CacheStoreType::Gcs);
        c.gcs.bucket_name = "b".into();
        c.gcs.credentials_file = Some("/nonexistent/sa.json".into());
        assert!(Remote::new(&c, "t").is_err());
    }

    #[test]
    fn scrub_removes_credentials() {
        let r = s3(false, "");
        assert_eq!(
            r.scrub("denied for AKIDTEST with s3cr3t-value"),
            "denied for [MASKED] with [MASKED]"
        );
    }
}
