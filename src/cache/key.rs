//! Cache keys to file names, and where an archive lives on disk.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Encoded keys longer than this are shortened with a hash, so the file name (plus suffix)
/// stays under the 255-byte limit of common filesystems.
const MAX_ENCODED_LEN: usize = 200;

/// File name suffix of a cache archive.
pub const ARCHIVE_SUFFIX: &str = ".tar.gz";

/// Turns an already variable-expanded key into a single safe file name, or `None` when nothing
/// is left (the caller skips that cache with a warning).
///
/// Every byte outside `[A-Za-z0-9_-]` and `.` is percent-encoded, and so is a leading `.`.
/// The encoding is injective, so two different keys never share an archive, and the result can
/// never contain `/`, NUL, be `.`/`..`, start with `.` (our temp files do), or be absolute: a key
/// such as `../../etc/passwd` cannot leave the project's directory. Trailing whitespace is
/// trimmed, as gitlab-runner does.
pub fn sanitize_key(key: &str) -> Option<String> {
    let key = key.trim_end();
    if key.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(key.len());
    for (i, byte) in key.bytes().enumerate() {
        let plain = byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-' || byte == b'.';
        if plain && !(i == 0 && byte == b'.') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    if out.len() > MAX_ENCODED_LEN {
        // Keep a readable prefix for operators; the hash keeps it unique.
        let digest = hex::encode(Sha256::digest(key.as_bytes()));
        // The encoded string is ASCII, so any byte index is a char boundary.
        out.truncate(150);
        out.push('-');
        out.push_str(&digest);
    }
    Some(out)
}

/// Directory holding one project's archives for one protection level:
/// `<cache_dir>/project-<id>/<protected|unprotected>`.
///
/// The protection flag of the *job* picks the directory, whatever the key says, so an
/// unprotected job (any branch a developer can push) can never write an archive that a protected
/// job (deploys, release branches) restores.
pub fn project_dir(cache_dir: &Path, project_id: u64, protected: bool) -> PathBuf {
    cache_dir
        .join(format!("project-{project_id}"))
        .join(if protected {
            "protected"
        } else {
            "unprotected"
        })
}

/// Full path of the archive for an already sanitised key.
pub fn archive_path(
    cache_dir: &Path,
    project_id: u64,
    protected: bool,
    sanitized_key: &str,
) -> PathBuf {
    project_dir(cache_dir, project_id, protected).join(format!("{sanitized_key}{ARCHIVE_SUFFIX}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_keys_are_kept() {
        assert_eq!(
            sanitize_key("vendor-abc123-non_protected").as_deref(),
            Some("vendor-abc123-non_protected")
        );
        assert_eq!(sanitize_key("v1.2").as_deref(), Some("v1.2"));
    }

    #[test]
    fn dangerous_keys_cannot_escape() {
        for key in [
            "../../etc/passwd",
            "/abs",
            "..",
            ".",
            "a/b",
            "a\0b",
            ".hidden",
        ] {
            let name = sanitize_key(key).expect("non-empty key");
            assert!(!name.contains('/'), "{name}");
            assert!(!name.contains('\0'), "{name}");
            assert!(!name.starts_with('.'), "{name}");
            assert_ne!(name, "..");
        }
        assert_eq!(sanitize_key("a/b").as_deref(), Some("a%2Fb"));
    }

    #[test]
    fn encoding_is_injective_on_tricky_pairs() {
        assert_ne!(sanitize_key("a/b"), sanitize_key("a%2Fb"));
        assert_ne!(sanitize_key("a b"), sanitize_key("a%20b"));
    }

    #[test]
    fn empty_and_blank_keys_are_refused() {
        assert_eq!(sanitize_key(""), None);
        assert_eq!(sanitize_key("   "), None);
        assert_eq!(sanitize_key("key  ").as_deref(), Some("key"));
    }

    #[test]
    fn long_keys_are_hashed_and_stay_unique() {
        let a = sanitize_key(&"x".repeat(500)).expect("key");
        let b = sanitize_key(&format!("{}y", "x".repeat(499))).expect("key");
        assert!(a.len() + ARCHIVE_SUFFIX.len() < 255);
        assert_ne!(a, b);
    }

    #[test]
    fn protection_picks_the_directory() {
        let root = Path::new("/c");
        assert_eq!(
            archive_path(root, 7, true, "k"),
            Path::new("/c/project-7/protected/k.tar.gz")
        );
        assert_eq!(
            archive_path(root, 7, false, "k"),
            Path::new("/c/project-7/unprotected/k.tar.gz")
        );
    }
}
