//! Which GitLab instance a runner entry belongs to.

/// A short stable name for the GitLab instance of `url`: `gitlab-<12 hex of sha256>` of the URL
/// without credentials, query, fragment and trailing slashes. Project ids are only unique within
/// one instance, so what is keyed by a project id on the host (cache directories) is scoped by
/// this as well (H3): two `[[runners]]` entries of different instances never share them.
pub fn instance_key(url: &url::Url) -> String {
    use sha2::Digest;
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.set_fragment(None);
    let text = u.as_str().trim_end_matches('/').to_string();
    let digest = sha2::Sha256::digest(text.as_bytes());
    let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("gitlab-{hex}")
}
