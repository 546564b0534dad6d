use super::*;

/// L6: `tls-ca-file` reaches the job client: a usable bundle is taken, a missing or empty
/// one fails with the file's name (never a client that silently ignores it).
#[test]
fn tls_ca_file_is_loaded_or_refused() {
    crate::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let url = url::Url::parse("https://gitlab.example.test/").expect("url");
    let with = |path: &std::path::Path| {
        Client::new(
            &url,
            ClientOptions {
                tls_ca_file: Some(path.to_path_buf()),
                ..ClientOptions::default()
            },
        )
    };
    let ca = rcgen::generate_simple_self_signed(vec!["gitlab.example.test".to_string()])
        .expect("self-signed certificate");
    let good = dir.path().join("ca.pem");
    std::fs::write(&good, ca.cert.pem()).expect("write");
    assert!(with(&good).is_ok());
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").expect("write");
    for bad in [empty, dir.path().join("missing.pem")] {
        match with(&bad) {
            Err(e @ Error::TlsCaFile { .. }) => {
                assert!(e.to_string().contains(&bad.display().to_string()), "{e}")
            }
            Err(e) => panic!("{}: wrong error {e}", bad.display()),
            Ok(_) => panic!("{}: accepted", bad.display()),
        }
    }
}

#[test]
fn api_base_strips_ci_and_slash() {
    let u = |s: &str| api_base(&url::Url::parse(s).unwrap()).unwrap().to_string();
    assert_eq!(
        u("https://gl.example.com/"),
        "https://gl.example.com/api/v4/"
    );
    assert_eq!(
        u("https://gl.example.com/ci"),
        "https://gl.example.com/api/v4/"
    );
    assert_eq!(
        u("https://gl.example.com/sub/ci/"),
        "https://gl.example.com/sub/api/v4/"
    );
    assert!(api_base(&url::Url::parse("ftp://x/").unwrap()).is_err());
}

#[test]
fn range_end_is_the_size() {
    assert_eq!(parse_range_end("0-1234"), Some(1234));
    assert_eq!(parse_range_end("bytes 0-7/8"), Some(7));
    assert_eq!(parse_range_end("garbage"), None);
}

#[test]
fn backoff_grows_and_is_capped() {
    let p = RetryPolicy::default();
    assert!(p.backoff(1) >= Duration::from_millis(100));
    assert!(p.backoff(1) < Duration::from_millis(200));
    assert!(p.backoff(3) >= Duration::from_millis(400));
    assert!(p.backoff(30) <= Duration::from_secs(60));
}

#[test]
fn retry_after_seconds() {
    let mut h = HeaderMap::new();
    h.insert("retry-after", HeaderValue::from_static("7"));
    assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
}

#[test]
fn malformed_job_recovers_id_and_token() {
    let bad = parse_job(br#"{"id": 5, "token": "glcbt-x", "steps": "not an array"}"#).unwrap_err();
    assert_eq!(bad.id, Some(5));
    assert_eq!(bad.token.unwrap().expose(), "glcbt-x");
    let bad = parse_job(br#"{"id": "abc", "token": "glcbt-x"}"#).unwrap_err();
    assert_eq!(bad.id, None);
    let bad = parse_job(br#"{"id": 9}"#).unwrap_err();
    assert_eq!((bad.id, bad.token.is_none()), (Some(9), true));
    let bad = parse_job(b"not json").unwrap_err();
    assert!(bad.id.is_none() && !format!("{bad:?}").is_empty());
}

#[test]
fn job_answer_reads_headers() {
    let mut h = HeaderMap::new();
    h.insert("job-status", HeaderValue::from_static("canceling"));
    h.insert("range", HeaderValue::from_static("0-10"));
    h.insert(
        "x-gitlab-trace-update-interval",
        HeaderValue::from_static("5"),
    );
    let a = JobAnswer::from_headers(202, &h);
    assert_eq!(a.job_status.as_deref(), Some("canceling"));
    assert_eq!(a.range_end, Some(10));
    assert_eq!(a.update_interval, Some(Duration::from_secs(5)));
}
