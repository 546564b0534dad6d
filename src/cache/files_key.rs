//! `cache:key:files` computed on this host (for `runner exec`: GitLab computes it server-side
//! and sends the result for real jobs).

use std::path::{Path, PathBuf};

/// Errors of [`files_key`].
#[derive(Debug, thiserror::Error)]
pub enum KeyFilesError {
    /// A listed path is absolute or climbs out of the checkout.
    #[error("cache key file {0:?} must be a relative path inside the project")]
    OutsidePath(String),
    /// A listed file exists but cannot be read.
    #[error("cannot read cache key file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// `cache:key:files` computed locally (for `runner exec`; GitLab computes it server-side and
/// sends the result): the SHA-256 of the listed files' paths and contents, in the order listed,
/// shortened to 40 hex digits and prefixed with `prefix-` when a prefix is given. Missing files
/// are skipped; when none exists the key is `default` (`<prefix>-default`), as in GitLab.
/// Blocking: call it on a blocking thread.
pub fn files_key(
    root: &Path,
    files: &[String],
    prefix: Option<&str>,
) -> Result<String, KeyFilesError> {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    let mut found = 0usize;
    for f in files {
        let rel = Path::new(f.trim());
        let inside = rel.components().all(|c| {
            matches!(
                c,
                std::path::Component::Normal(_) | std::path::Component::CurDir
            )
        });
        if !inside || rel.as_os_str().is_empty() {
            return Err(KeyFilesError::OutsidePath(f.clone()));
        }
        let path = root.join(rel);
        match std::fs::read(&path) {
            Ok(data) => {
                found += 1;
                hasher.update((f.len() as u64).to_le_bytes());
                hasher.update(f.as_bytes());
                hasher.update((data.len() as u64).to_le_bytes());
                hasher.update(&data);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(KeyFilesError::Read { path, source }),
        }
    }
    let body = if found == 0 {
        "default".to_string()
    } else {
        let digest = hex::encode(hasher.finalize());
        digest[..40].to_string()
    };
    Ok(match prefix.map(str::trim).filter(|p| !p.is_empty()) {
        Some(p) => format!("{p}-{body}"),
        None => body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_key_follows_contents() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = vec!["composer.lock".to_string(), "yarn.lock".to_string()];
        assert_eq!(files_key(dir.path(), &files, None).expect("key"), "default");
        assert_eq!(
            files_key(dir.path(), &files, Some("deps")).expect("key"),
            "deps-default"
        );
        std::fs::write(dir.path().join("composer.lock"), "a").expect("write");
        let k1 = files_key(dir.path(), &files, Some("deps")).expect("key");
        assert!(k1.starts_with("deps-") && k1.len() == 45, "{k1}");
        std::fs::write(dir.path().join("composer.lock"), "b").expect("write");
        let k2 = files_key(dir.path(), &files, Some("deps")).expect("key");
        assert_ne!(k1, k2);
        assert_eq!(
            k2,
            files_key(dir.path(), &files, Some("deps")).expect("key")
        );
        assert!(files_key(dir.path(), &["../x".to_string()], None).is_err());
        assert!(files_key(dir.path(), &["/etc/passwd".to_string()], None).is_err());
    }
}
