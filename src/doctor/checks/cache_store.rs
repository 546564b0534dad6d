//! `cache.store`: each entry's shared cache store takes its credentials and holds a bucket the
//! runner can write, read and delete in, said in words an admin acts on. Secrets never appear:
//! the probe's error texts are scrubbed of them, and messages name only the address, the bucket
//! and the setting to change.

use super::*;
use crate::cache::probe::{ProbeFailure, ProbeStep, Problem};
use crate::doctor::facts::CacheStoreFact;

const ID: &str = "cache.store";

pub(super) fn cache_store(f: &Facts) -> Check {
    let Some(config) = f.config.loaded() else {
        return skip(ID, "no loaded config", NO_CONFIG_HINT);
    };
    if config.runners.iter().all(|r| r.cache.store.is_none()) {
        // Nothing to reach: jobs keep their caches on this host; not a problem.
        return Check::ok(
            ID,
            "no shared cache store configured ([runners.cache] Type): caches stay on this host",
        );
    }
    combine(ID, f.cache_stores.iter().map(one).collect())
}

/// The table that holds the store's settings.
fn section(s: &CacheStoreFact) -> String {
    format!("[runners.cache.{}]", s.kind)
}

fn one(s: &CacheStoreFact) -> Check {
    let who = &s.runner;
    let (kind, bucket, address) = (s.kind, &s.bucket, &s.address);
    match &s.probe {
        None => skip(
            ID,
            format!("{who}: no token: `runner exec` never uses the shared store"),
            "",
        ),
        Some(Ok(report)) => {
            let done = format!(
                "{who}: {kind} bucket {bucket:?} at {address}: wrote, read back and deleted a \
                 probe object"
            );
            if let Some(why) = &report.left {
                Check::with(
                    ID,
                    Status::Warn,
                    format!(
                        "{who}: {kind} bucket {bucket:?} at {address}: writes and reads work, \
                         but the probe object {} could not be deleted: {why}",
                        report.object
                    ),
                    format!(
                        "jobs do not delete objects, so caches work; remove {} by hand, or allow \
                         the runner's key to delete objects under its prefix",
                        report.object
                    ),
                )
            } else if s.insecure && !s.loopback {
                Check::with(
                    ID,
                    Status::Warn,
                    format!(
                        "{done}; but Insecure = true: cache archives cross the network in plain \
                         HTTP, where anyone on the path can read them or swap in an archive that \
                         later jobs extract"
                    ),
                    format!(
                        "serve the store over https and remove Insecure = true from {}",
                        section(s)
                    ),
                )
            } else {
                Check::ok(ID, done)
            }
        }
        Some(Err(failure)) => Check::with(
            ID,
            Status::Fail,
            failure_message(s, failure),
            failure_hint(s, failure),
        ),
    }
}

/// The innermost two causes of a transport error (`tcp connect error: Connection refused`):
/// the outer ones repeat the request and the client's layers.
fn cause(detail: &str) -> String {
    let parts: Vec<&str> = detail.split(": ").collect();
    parts[parts.len().saturating_sub(2)..].join(": ")
}

fn failure_message(s: &CacheStoreFact, f: &ProbeFailure) -> String {
    let who = &s.runner;
    let (kind, bucket, address) = (s.kind, &s.bucket, &s.address);
    let d = &f.detail;
    let c = cause(d);
    let step = f.step.as_str();
    match &f.problem {
        Problem::Setup => format!("{who}: cannot set up the {kind} cache store: {d}"),
        Problem::Unreachable => {
            format!("{who}: the {kind} cache store at {address} does not answer: {c}")
        }
        Problem::NotTls => format!(
            "{who}: {address} answers in plain HTTP, not https (the TLS handshake failed: {c})"
        ),
        Problem::TlsOnly => format!(
            "{who}: {address} does not answer plain HTTP (Insecure = true): it seems to speak \
             https only ({d})"
        ),
        Problem::Certificate => {
            format!("{who}: the certificate of {address} is not accepted: {c}")
        }
        Problem::AccessKey => format!(
            "{who}: {address} does not know the access key (InvalidAccessKeyId): the AccessKey \
             is wrong or was deleted"
        ),
        Problem::SecretKey if kind == "azure" => {
            format!("{who}: the account key is refused by {address} (AuthenticationFailed)")
        }
        Problem::SecretKey => format!(
            "{who}: the secret key is refused by {address} (SignatureDoesNotMatch): the access \
             key is known, but SecretKey is not its secret"
        ),
        Problem::SessionToken => {
            format!("{who}: the session token is refused or expired by {address}")
        }
        Problem::Credentials => {
            format!("{who}: {address} refused the credentials: {d}")
        }
        Problem::NoBucket if kind == "azure" => {
            format!("{who}: container {bucket:?} does not exist in {address}")
        }
        Problem::NoBucket => format!("{who}: bucket {bucket:?} does not exist at {address}"),
        Problem::WrongRegion(actual) => {
            let said = s.region.as_deref().unwrap_or("us-east-1");
            match actual {
                Some(r) => format!(
                    "{who}: bucket {bucket:?} is in region {r}, but requests are signed for \
                     {said} (BucketLocation)"
                ),
                None => format!(
                    "{who}: bucket {bucket:?} is not in region {said} (BucketLocation): the store \
                     redirects elsewhere ({d})"
                ),
            }
        }
        Problem::Denied => format!(
            "{who}: the credentials are accepted but may not {step} objects in bucket \
             {bucket:?}: {d}"
        ),
        Problem::Mismatch => {
            format!("{who}: the probe object read back from {address} differs from the one written")
        }
        Problem::Other => format!(
            "{who}: the {kind} cache store at {address} refused to {step} a probe object: {d}"
        ),
    }
}

fn failure_hint(s: &CacheStoreFact, f: &ProbeFailure) -> String {
    let table = section(s);
    let (bucket, address) = (&s.bucket, &s.address);
    match &f.problem {
        Problem::Setup => format!("fix the setting named above in {table}"),
        Problem::Unreachable => {
            let mut h = format!(
                "check that the store runs and that this host reaches {address} (DNS, firewall, \
                 proxy: `curl -sI {address}`); ServerAddress is host[:port], without a scheme"
            );
            if s.insecure {
                h.push_str("; if the store speaks https, remove Insecure = true");
            }
            h
        }
        Problem::NotTls => format!(
            "if the store serves plain HTTP (on a trusted network only), set Insecure = true in \
             {table}; else check the port in ServerAddress"
        ),
        Problem::TlsOnly => format!("remove Insecure = true from {table}"),
        Problem::Certificate => "renew or fix the store's certificate (expired, wrong name); \
             for a private CA, add it to this host's trust store (copy it to \
             /usr/local/share/ca-certificates/ and run update-ca-certificates): the cache client \
             trusts the system's roots, as gitlab-runner does (tls-ca-file is for GitLab only)"
            .to_string(),
        Problem::AccessKey => format!(
            "put a valid AccessKey (and its SecretKey) in {table}; a key of another account or \
             endpoint is unknown here"
        ),
        Problem::SecretKey if s.kind == "azure" => {
            format!("put the storage account's current AccountKey in {table}")
        }
        Problem::SecretKey => format!(
            "put the SecretKey that belongs to this AccessKey in {table} (keys are shown once, \
             when made: make a new pair if it is lost)"
        ),
        Problem::SessionToken => format!(
            "temporary credentials expire: use a permanent key pair in {table}, or \
             AuthenticationType = \"iam\" on a host with an instance role"
        ),
        Problem::Credentials => format!("check the credentials in {table}"),
        Problem::NoBucket => format!(
            "create {bucket:?} in the store (e.g. `aws s3 mb s3://{bucket}`, `mc mb`, or the \
             store's console) or fix its name in {table}"
        ),
        Problem::WrongRegion(Some(r)) => format!("set BucketLocation = \"{r}\" in {table}"),
        Problem::WrongRegion(None) => format!(
            "set BucketLocation in {table} to the bucket's region (`aws s3api \
             get-bucket-location --bucket {bucket}`)"
        ),
        Problem::Denied => format!(
            "allow the runner's key to put, get and delete objects in {bucket:?} under its prefix \
             (S3: s3:PutObject, s3:GetObject, s3:DeleteObject on arn:aws:s3:::{bucket}/*; with \
             ServerSideEncryption = \"KMS\", also kms:GenerateDataKey and kms:Decrypt on the key)"
        ),
        Problem::Mismatch => {
            "check that ServerAddress is the store itself, not a proxy or cache in front of it"
                .to_string()
        }
        Problem::Other => match f.step {
            ProbeStep::Read => "writes work but reads do not: check the key's read permission \
                 and the store's logs"
                .to_string(),
            _ => format!("check the settings in {table} against the store's answer above"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::probe::ProbeReport;

    fn fact(probe: Option<Result<ProbeReport, ProbeFailure>>) -> CacheStoreFact {
        CacheStoreFact {
            runner: "r1".into(),
            kind: "s3",
            address: "https://s3.example.test".into(),
            bucket: "cache".into(),
            region: Some("us-east-1".into()),
            insecure: false,
            loopback: false,
            probe,
        }
    }

    fn failed(problem: Problem) -> Check {
        one(&fact(Some(Err(ProbeFailure {
            step: ProbeStep::Write,
            problem,
            detail: "answer".into(),
        }))))
    }

    #[test]
    fn each_problem_says_what_to_change() {
        let ok = one(&fact(Some(Ok(ProbeReport {
            object: "runner/x/isolated-runner-doctor/probe-1".into(),
            left: None,
        }))));
        assert_eq!(ok.status, Status::Ok, "{ok:?}");
        assert!(ok.message.contains("\"cache\""), "{ok:?}");

        let c = failed(Problem::SecretKey);
        assert_eq!(c.status, Status::Fail);
        assert!(c.message.contains("the secret key is refused"), "{c:?}");
        assert!(c.hint.contains("SecretKey"), "{c:?}");
        let c = failed(Problem::NoBucket);
        assert!(
            c.message.contains("bucket \"cache\" does not exist"),
            "{c:?}"
        );
        let c = failed(Problem::Unreachable);
        assert!(c.message.contains("https://s3.example.test"), "{c:?}");
        let c = failed(Problem::WrongRegion(Some("eu-west-1".into())));
        assert!(c.message.contains("region eu-west-1"), "{c:?}");
        assert!(c.hint.contains("BucketLocation = \"eu-west-1\""), "{c:?}");
        let c = failed(Problem::NotTls);
        assert!(c.hint.contains("Insecure = true"), "{c:?}");
        let c = failed(Problem::Certificate);
        assert!(c.hint.contains("update-ca-certificates"), "{c:?}");
        for p in [
            Problem::Setup,
            Problem::TlsOnly,
            Problem::AccessKey,
            Problem::SessionToken,
            Problem::Credentials,
            Problem::Denied,
            Problem::Mismatch,
            Problem::Other,
        ] {
            let c = failed(p);
            assert_eq!(c.status, Status::Fail);
            assert!(!c.hint.is_empty(), "{c:?}");
        }
    }

    #[test]
    fn transport_errors_keep_their_cause() {
        let d = "Generic S3 error: Error performing PUT http://127.0.0.1:9/b/o in 1ms - HTTP \
                 error: error sending request: client error (Connect): tcp connect error: \
                 Connection refused (os error 111)";
        assert_eq!(
            cause(d),
            "tcp connect error: Connection refused (os error 111)"
        );
        assert_eq!(cause("alone"), "alone");
    }

    #[test]
    fn plain_http_over_a_network_and_a_left_object_warn() {
        let mut f = fact(Some(Ok(ProbeReport {
            object: "o".into(),
            left: None,
        })));
        f.insecure = true;
        assert_eq!(one(&f).status, Status::Warn);
        f.loopback = true;
        assert_eq!(one(&f).status, Status::Ok);
        f.probe = Some(Ok(ProbeReport {
            object: "o".into(),
            left: Some("AccessDenied".into()),
        }));
        let c = one(&f);
        assert_eq!(c.status, Status::Warn);
        assert!(c.message.contains("could not be deleted"), "{c:?}");
        f.probe = None;
        assert_eq!(one(&f).status, Status::Skip);
    }
}
