//! A one-shot check of the shared store for `runner doctor` (`cache.store`): write one small
//! object under a clearly named prefix of the runner's own namespace, read it back, delete it,
//! and say in an admin's words what went wrong (the store's own error codes, a refused
//! connection, a certificate) instead of a raw client error.
//!
//! The probe object goes where jobs' objects go (`[<Path>/][runner/<short token>/]`), so a
//! bucket policy that limits the runner to its prefix is checked as jobs will meet it; its name
//! (`isolated-runner-doctor/probe-<uuid>`) cannot be a cache object, which are all under
//! `project/<id>/`.

use super::remote::Remote;
use crate::config::{CacheStoreConfig, CacheStoreType};
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;
use std::time::Duration;

/// The prefix of probe objects, inside the runner's namespace.
pub const PROBE_PREFIX: &str = "isolated-runner-doctor";

/// Which request of the probe failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeStep {
    /// Building the client from the config.
    Setup,
    /// Writing the probe object (what a cache upload does).
    Write,
    /// Reading it back (what a cache download does).
    Read,
}

impl ProbeStep {
    /// `write`, `read`, `set up`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeStep::Setup => "set up",
            ProbeStep::Write => "write",
            ProbeStep::Read => "read",
        }
    }
}

/// What is wrong, as an admin acts on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The client cannot be built from the config (a bad key file, a bad setting).
    Setup,
    /// No connection: refused, no route, no DNS answer, or no answer in time.
    Unreachable,
    /// `https` to a server that answers in plain HTTP (`Insecure` is needed, or the port is
    /// wrong).
    NotTls,
    /// Plain HTTP (`Insecure = true`) to a server that only speaks TLS.
    TlsOnly,
    /// The server's certificate is not accepted (unknown CA, expired, wrong name).
    Certificate,
    /// The store does not know the access key (`InvalidAccessKeyId`).
    AccessKey,
    /// The access key is known but the secret key does not match (`SignatureDoesNotMatch`;
    /// Azure: `AuthenticationFailed`).
    SecretKey,
    /// The session token is refused or expired.
    SessionToken,
    /// The credentials were refused (401) without a more precise code.
    Credentials,
    /// The bucket (Azure: container) does not exist.
    NoBucket,
    /// The bucket is in another region than `BucketLocation` says (the region the store named,
    /// if it did).
    WrongRegion(Option<String>),
    /// The credentials work but may not do this (`AccessDenied`, a bucket policy, KMS).
    Denied,
    /// The object read back is not what was written.
    Mismatch,
    /// Anything else the store answered.
    Other,
}

/// The probe failed: at which step, what is wrong, and the store's answer (scrubbed of
/// credentials).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeFailure {
    /// The step that failed.
    pub step: ProbeStep,
    /// What is wrong.
    pub problem: Problem,
    /// The client's error text, scrubbed.
    pub detail: String,
}

/// The probe worked: the object written and read back, and whether it could be removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeReport {
    /// The probe object's name.
    pub object: String,
    /// Why the probe object could not be deleted (it is left in the store); `None` when it was.
    pub left: Option<String>,
}

/// Where the store is, as the client reaches it: `http(s)://ServerAddress` or the cloud's
/// endpoint. Never holds a credential.
pub fn store_address(cfg: &CacheStoreConfig) -> String {
    match cfg.kind {
        CacheStoreType::S3 => {
            let s3 = &cfg.s3;
            let address = s3.server_address.trim().trim_end_matches('/');
            if address.is_empty() {
                let region = s3.bucket_location.trim();
                let region = if region.is_empty() {
                    "us-east-1"
                } else {
                    region
                };
                format!("https://s3.{region}.amazonaws.com")
            } else {
                let scheme = if s3.insecure { "http" } else { "https" };
                format!("{scheme}://{address}")
            }
        }
        CacheStoreType::Gcs => {
            let domain = cfg.gcs.universe_domain.trim();
            let domain = if domain.is_empty() {
                "googleapis.com"
            } else {
                domain
            };
            format!("https://storage.{domain}")
        }
        CacheStoreType::Azure => {
            let domain = cfg.azure.storage_domain.trim();
            let domain = if domain.is_empty() {
                "blob.core.windows.net"
            } else {
                domain
            };
            format!("https://{}.{domain}", cfg.azure.account_name.trim())
        }
    }
}

/// The bucket (S3, GCS) or container (Azure) name.
pub fn bucket_name(cfg: &CacheStoreConfig) -> &str {
    match cfg.kind {
        CacheStoreType::S3 => cfg.s3.bucket_name.trim(),
        CacheStoreType::Gcs => cfg.gcs.bucket_name.trim(),
        CacheStoreType::Azure => cfg.azure.container_name.trim(),
    }
}

/// Writes, reads back and deletes one small object of the runner with `token` in `cfg`'s store,
/// each request bounded by `timeout` and not retried.
pub async fn probe(
    cfg: &CacheStoreConfig,
    token: &str,
    timeout: Duration,
) -> Result<ProbeReport, ProbeFailure> {
    let remote = Remote::for_probe(cfg, token, timeout).map_err(|e| ProbeFailure {
        step: ProbeStep::Setup,
        problem: Problem::Setup,
        detail: e.to_string(),
    })?;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let object = remote.namespaced(&format!("{PROBE_PREFIX}/probe-{id}"));
    let path = ObjectPath::from_iter(object.split('/'));
    let body = format!("isolated-runner doctor probe {id}\n").into_bytes();
    let fail = |step, e: &object_store::Error| {
        let detail = remote.scrub(&super::remote::error_text(e));
        ProbeFailure {
            step,
            problem: classify(step, &detail, cfg),
            detail,
        }
    };
    remote
        .store()
        .put(&path, body.clone().into())
        .await
        .map_err(|e| fail(ProbeStep::Write, &e))?;
    let read = match remote.store().get(&path).await {
        Ok(r) => r.bytes().await,
        Err(e) => Err(e),
    };
    let read = match read {
        Ok(got) if got.as_ref() == body.as_slice() => Ok(()),
        Ok(_) => Err(ProbeFailure {
            step: ProbeStep::Read,
            problem: Problem::Mismatch,
            detail: "the object read back differs from the one written".to_string(),
        }),
        Err(e) => Err(fail(ProbeStep::Read, &e)),
    };
    // Removed whatever the read gave: the probe leaves nothing behind when it can.
    let left = remote
        .store()
        .delete(&path)
        .await
        .err()
        .map(|e| remote.scrub(&super::remote::error_text(&e)));
    read.map(|()| ProbeReport { object, left })
}

/// The S3 (or Azure) error code in a store's answer: `<Code>NoSuchBucket</Code>`.
fn error_code(text: &str) -> Option<&str> {
    let start = text.find("<Code>")? + "<Code>".len();
    let len = text[start..].find("</Code>")?;
    Some(&text[start..start + len])
}

/// The region S3 names in a redirect or a malformed-authorization answer.
fn named_region(text: &str) -> Option<String> {
    for tag in ["<Region>", "<ExpectedRegion>"] {
        if let Some(at) = text.find(tag) {
            let rest = &text[at + tag.len()..];
            if let Some(end) = rest.find('<') {
                let r = rest[..end].trim();
                if !r.is_empty() {
                    return Some(r.to_string());
                }
            }
        }
    }
    // "the region 'us-east-1' is wrong; expecting 'eu-west-1'"
    let at = text.find("expecting '")? + "expecting '".len();
    let end = text[at..].find('\'')?;
    Some(text[at..at + end].to_string())
}

/// What a failed request's error text says is wrong.
fn classify(step: ProbeStep, text: &str, cfg: &CacheStoreConfig) -> Problem {
    match error_code(text) {
        Some("InvalidAccessKeyId") => return Problem::AccessKey,
        Some("SignatureDoesNotMatch" | "AuthenticationFailed") => return Problem::SecretKey,
        Some("InvalidToken" | "ExpiredToken" | "TokenRefreshRequired") => {
            return Problem::SessionToken;
        }
        Some("NoSuchBucket" | "ContainerNotFound") => return Problem::NoBucket,
        Some(
            "AuthorizationHeaderMalformed"
            | "PermanentRedirect"
            | "IllegalLocationConstraintException"
            | "IncorrectEndpoint",
        ) => return Problem::WrongRegion(named_region(text)),
        Some(
            "AccessDenied"
            | "AllAccessDisabled"
            | "AuthorizationFailure"
            | "AuthorizationPermissionMismatch"
            | "KMS.AccessDeniedException",
        ) => return Problem::Denied,
        _ => {}
    }
    let lower = text.to_lowercase();
    let insecure = cfg.kind == CacheStoreType::S3 && cfg.s3.insecure;
    if lower.contains("invalidcontenttype")
        || lower.contains("corrupt message")
        || lower.contains("wrong version number")
    {
        return Problem::NotTls;
    }
    if lower.contains("certificate") || lower.contains("unknownissuer") {
        return Problem::Certificate;
    }
    // A TLS server answers plain HTTP with a TLS alert (not HTTP), an error page (nginx), or
    // by closing the connection.
    if insecure
        && (lower.contains("invalid http version parsed")
            || lower.contains("plain http request was sent to https")
            || lower.contains("connection closed before message completed"))
    {
        return Problem::TlsOnly;
    }
    if lower.contains("connection refused")
        || lower.contains("connect error")
        || lower.contains("tcp connect")
        || lower.contains("dns error")
        || lower.contains("failed to lookup")
        || lower.contains("no route to host")
        || lower.contains("network is unreachable")
        || lower.contains("timed out")
        || lower.contains("timeout")
    {
        return Problem::Unreachable;
    }
    // No code in the answer (a HEAD, or a store with other bodies): the HTTP status.
    if lower.contains(" 301 ") || lower.contains("moved permanently") {
        return Problem::WrongRegion(named_region(text));
    }
    if lower.contains(" 401 ") || lower.contains("unauthenticated") {
        return Problem::Credentials;
    }
    if lower.contains(" 403 ") || lower.contains("permission denied") {
        return Problem::Denied;
    }
    // A write cannot miss its object: a 404 on it is the bucket.
    if step == ProbeStep::Write && (lower.contains(" 404 ") || lower.contains("not found")) {
        return Problem::NoBucket;
    }
    Problem::Other
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3(insecure: bool) -> CacheStoreConfig {
        let mut c = CacheStoreConfig::new(CacheStoreType::S3);
        c.s3.bucket_name = "b".into();
        c.s3.insecure = insecure;
        c
    }

    fn body(code: &str, extra: &str) -> String {
        format!(
            "Generic S3 error: Error performing PUT http://x/b/k: Server returned non-2xx status \
             code: 400 Bad Request: <?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}\
             </Code><Message>m</Message>{extra}</Error>"
        )
    }

    #[test]
    fn store_codes_name_the_problem() {
        let c = s3(false);
        let w = ProbeStep::Write;
        assert_eq!(
            classify(w, &body("InvalidAccessKeyId", ""), &c),
            Problem::AccessKey
        );
        assert_eq!(
            classify(w, &body("SignatureDoesNotMatch", ""), &c),
            Problem::SecretKey
        );
        assert_eq!(
            classify(w, &body("ExpiredToken", ""), &c),
            Problem::SessionToken
        );
        assert_eq!(
            classify(w, &body("NoSuchBucket", ""), &c),
            Problem::NoBucket
        );
        assert_eq!(classify(w, &body("AccessDenied", ""), &c), Problem::Denied);
        // AWS, BucketLocation wrong: both ways S3 says so name the bucket's region.
        assert_eq!(
            classify(
                w,
                &body("AuthorizationHeaderMalformed", "<Region>eu-west-1</Region>"),
                &c
            ),
            Problem::WrongRegion(Some("eu-west-1".into()))
        );
        assert_eq!(
            classify(
                w,
                &body(
                    "AuthorizationHeaderMalformed",
                    "the region 'us-east-1' is wrong; expecting 'eu-central-1'"
                ),
                &c
            ),
            Problem::WrongRegion(Some("eu-central-1".into()))
        );
        assert_eq!(
            classify(
                w,
                &body("PermanentRedirect", "<Endpoint>b.s3.x</Endpoint>"),
                &c
            ),
            Problem::WrongRegion(None)
        );
    }

    #[test]
    fn transport_failures_name_the_problem() {
        let w = ProbeStep::Write;
        let refused = "Generic S3 error: HTTP error: error sending request: client error \
                       (Connect): tcp connect error: Connection refused (os error 111)";
        assert_eq!(classify(w, refused, &s3(true)), Problem::Unreachable);
        let plain = "HTTP error: error sending request: client error (Connect): received \
                     corrupt message of type InvalidContentType";
        assert_eq!(classify(w, plain, &s3(false)), Problem::NotTls);
        let cert = "client error (Connect): invalid peer certificate: UnknownIssuer";
        assert_eq!(classify(w, cert, &s3(false)), Problem::Certificate);
        let alert = "HTTP error: error sending request: client error (SendRequest): invalid \
                     HTTP version parsed";
        assert_eq!(classify(w, alert, &s3(true)), Problem::TlsOnly);
        let closed = "error sending request: connection closed before message completed";
        assert_eq!(classify(w, closed, &s3(true)), Problem::TlsOnly);
        assert_eq!(classify(w, closed, &s3(false)), Problem::Other);
        // Status only (no body): a write's 404 is the bucket, a read's is not.
        let nf = "Object at location x not found: Server returned non-2xx status code: 404 Not \
                  Found: ";
        assert_eq!(classify(w, nf, &s3(false)), Problem::NoBucket);
        assert_eq!(classify(ProbeStep::Read, nf, &s3(false)), Problem::Other);
    }

    #[test]
    fn addresses_hold_no_credentials() {
        let mut c = s3(true);
        c.s3.server_address = "minio.lan:9000/".into();
        c.s3.secret_key = Some(crate::secret::Secret::new("sekrit-value"));
        assert_eq!(store_address(&c), "http://minio.lan:9000");
        c.s3.server_address = String::new();
        c.s3.bucket_location = "eu-west-1".into();
        assert_eq!(store_address(&c), "https://s3.eu-west-1.amazonaws.com");
        let mut a = CacheStoreConfig::new(CacheStoreType::Azure);
        a.azure.account_name = "acct".into();
        a.azure.container_name = "c".into();
        assert_eq!(store_address(&a), "https://acct.blob.core.windows.net");
        assert_eq!(bucket_name(&a), "c");
    }
}
