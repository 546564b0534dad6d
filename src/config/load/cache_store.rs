//! `[runners.cache]`'s distributed store: `Type`, `Path`, `Shared`, `MaxUploadedArchiveSize` and
//! the `[runners.cache.s3]`, `[runners.cache.gcs]`, `[runners.cache.azure]` tables, with
//! gitlab-runner's key names. Kept apart from the rest of the loader: it is one idea, and the
//! only part of the file the cache module depends on.

use super::super::cache_store::*;
use super::super::keys::{self, Section};
use super::{At, Loader};
use crate::secret::Secret;
use std::path::PathBuf;
use toml_edit::{Item, TableLike};

/// The keys of `[runners.cache]` this file reads (the loader's `cache` skips them).
pub(super) const STORE_KEYS: [&str; 7] = [
    "Type",
    "Path",
    "Shared",
    "MaxUploadedArchiveSize",
    "s3",
    "gcs",
    "azure",
];

const NO_TYPE: &str = "ignored: no cache Type is set, so the cache stays on this host";

impl Loader {
    /// The distributed store of one `[runners.cache]` table, or `None` for a local cache
    /// (no `Type`, or `Type = ""`, which `gitlab-runner register` writes). Errors name the key.
    pub(super) fn cache_store(
        &mut self,
        t: &dyn TableLike,
        header: usize,
    ) -> Option<CacheStoreConfig> {
        let s = &keys::CACHE;
        let kind = match t.get("Type") {
            None => None,
            Some(item) => {
                let at = self.at(s, t, "Type", header);
                match self.string(&at, item)?.trim() {
                    "" => None,
                    "s3" => Some(CacheStoreType::S3),
                    "gcs" => Some(CacheStoreType::Gcs),
                    "azure" => Some(CacheStoreType::Azure),
                    other => {
                        self.error(
                            &at,
                            format!("`{other}` is not a cache type (\"s3\", \"gcs\" or \"azure\")"),
                        );
                        return None;
                    }
                }
            }
        };
        let Some(kind) = kind else {
            self.store_keys_without_type(t, header);
            return None;
        };
        let mut c = CacheStoreConfig::new(kind);
        let mut ok = true;
        for (key, item) in t.iter() {
            let at = self.at(s, t, key, header);
            match key {
                "Path" => {
                    if let Some(p) = self.string(&at, item) {
                        match clean_prefix(&p) {
                            Some(p) => c.path = p,
                            None => {
                                ok = false;
                                self.error(
                                    &at,
                                    "must be an object name prefix without `.` or `..` parts",
                                );
                            }
                        }
                    }
                }
                "Shared" => c.shared = self.boolean(&at, item).unwrap_or(false),
                "MaxUploadedArchiveSize" => {
                    c.max_uploaded_archive_size = self.size(&at, item).filter(|n| *n > 0)
                }
                "s3" | "gcs" | "azure" => {
                    let Some(table) = item.as_table_like() else {
                        ok = false;
                        self.type_error(&at, "a table", item);
                        continue;
                    };
                    let line = self.item_line(item, at.line);
                    if key != kind.as_str() {
                        if !table.is_empty() {
                            self.warn(&at, format!("ignored: Type is \"{}\"", kind.as_str()));
                        }
                        continue;
                    }
                    ok &= match kind {
                        CacheStoreType::S3 => self.s3_store(table, line, &mut c.s3),
                        CacheStoreType::Gcs => self.gcs_store(table, line, &mut c.gcs),
                        CacheStoreType::Azure => self.azure_store(table, line, &mut c.azure),
                    };
                }
                _ => {}
            }
        }
        let at = self.at(s, t, "Type", header);
        ok &= self.store_complete(&at, &c);
        ok.then_some(c)
    }

    /// Without a `Type`, the store's keys do nothing: say so (empty tables are what
    /// `gitlab-runner register` writes, and are not worth a warning).
    fn store_keys_without_type(&mut self, t: &dyn TableLike, header: usize) {
        for (key, item) in t.iter() {
            if key == "Type" || !STORE_KEYS.contains(&key) {
                continue;
            }
            if let Some(table) = item.as_table_like() {
                let section = match key {
                    "s3" => &keys::CACHE_S3,
                    "gcs" => &keys::CACHE_GCS,
                    _ => &keys::CACHE_AZURE,
                };
                let line = self.item_line(item, header);
                for (k, v) in table.iter() {
                    let at = self.at(section, table, k, line);
                    if section.honoured.contains(&k) {
                        if keys::SECRET_KEYS.contains(&k)
                            && let Some(s) = v.as_str()
                        {
                            self.secrets.push(s.to_string());
                        }
                        self.warn(&at, NO_TYPE);
                    } else {
                        self.not_honoured(section, &at, k, v);
                    }
                }
                continue;
            }
            if keys::SECRET_KEYS.contains(&key)
                && let Some(v) = item.as_str()
            {
                self.secrets.push(v.to_string());
            }
            let at = self.at(&keys::CACHE, t, key, header);
            self.warn(&at, NO_TYPE);
        }
    }

    /// A secret value: remembered for scrubbing, and refused when it is not a string.
    fn secret(&mut self, at: &At, item: &Item) -> Option<Secret> {
        let v = self.string(at, item)?;
        self.secrets.push(v.clone());
        (!v.is_empty()).then(|| Secret::new(v))
    }

    /// Walks one store table: `read` maps a key it knows and returns false for others, which
    /// then get the section's ignored/unknown warning.
    fn store_table(
        &mut self,
        section: &Section,
        t: &dyn TableLike,
        header: usize,
        mut read: impl FnMut(&mut Self, &At, &str, &Item) -> bool,
    ) {
        for (key, item) in t.iter() {
            let at = self.at(section, t, key, header);
            if !read(self, &at, key, item) {
                self.not_honoured(section, &at, key, item);
            }
        }
    }

    fn s3_store(&mut self, t: &dyn TableLike, header: usize, s3: &mut S3Store) -> bool {
        let mut ok = true;
        let mut sse = String::new();
        let mut sse_key = String::new();
        let mut auth = None;
        self.store_table(&keys::CACHE_S3, t, header, |l, at, key, item| {
            match key {
                "ServerAddress" => s3.server_address = l.string(at, item).unwrap_or_default(),
                "AccessKey" => s3.access_key = l.secret(at, item),
                "SecretKey" => s3.secret_key = l.secret(at, item),
                "SessionToken" => s3.session_token = l.secret(at, item),
                "BucketName" => s3.bucket_name = l.string(at, item).unwrap_or_default(),
                "BucketLocation" => s3.bucket_location = l.string(at, item).unwrap_or_default(),
                "Insecure" => s3.insecure = l.boolean(at, item).unwrap_or(false),
                "PathStyle" => s3.path_style = l.boolean(at, item),
                "AuthenticationType" => {
                    auth = match l.string(at, item).as_deref().map(str::trim) {
                        Some("") | None => None,
                        Some("iam") => Some(S3Auth::Iam),
                        Some("access-key") => Some(S3Auth::AccessKey),
                        Some(other) => {
                            ok = false;
                            l.error(
                                at,
                                format!(
                                    "`{other}` is not an authentication type (\"iam\" or \
                                     \"access-key\")"
                                ),
                            );
                            None
                        }
                    }
                }
                "ServerSideEncryption" => sse = l.string(at, item).unwrap_or_default(),
                "ServerSideEncryptionKeyID" => {
                    sse_key = l
                        .secret(at, item)
                        .map(|s| s.expose().to_string())
                        .unwrap_or_default()
                }
                _ => return false,
            }
            true
        });
        // gitlab-runner: without an explicit type, keys mean access-key, no keys mean iam.
        s3.authentication_type = auth.unwrap_or(if s3.access_key.is_some() {
            S3Auth::AccessKey
        } else {
            S3Auth::Iam
        });
        let at = self.at(&keys::CACHE_S3, t, "ServerSideEncryption", header);
        s3.server_side_encryption = match sse.trim().to_ascii_uppercase().as_str() {
            "" => S3Encryption::None,
            "S3" | "AES256" => S3Encryption::S3,
            "KMS" | "AWS:KMS" | "DSSE-KMS" | "AWS:KMS:DSSE" if sse_key.trim().is_empty() => {
                ok = false;
                self.error(&at, "KMS encryption needs ServerSideEncryptionKeyID");
                S3Encryption::None
            }
            "KMS" | "AWS:KMS" => S3Encryption::Kms(sse_key),
            "DSSE-KMS" | "AWS:KMS:DSSE" => S3Encryption::DsseKms(sse_key),
            other => {
                ok = false;
                self.error(
                    &at,
                    format!(
                        "`{other}` is not an encryption type (\"S3\", \"KMS\" or \"DSSE-KMS\")"
                    ),
                );
                S3Encryption::None
            }
        };
        ok
    }

    fn gcs_store(&mut self, t: &dyn TableLike, header: usize, gcs: &mut GcsStore) -> bool {
        let base = self.base_dir.clone();
        self.store_table(&keys::CACHE_GCS, t, header, |l, at, key, item| {
            match key {
                "CredentialsFile" => {
                    gcs.credentials_file =
                        l.string(at, item)
                            .filter(|p| !p.trim().is_empty())
                            .map(|p| match &base {
                                Some(b) => b.join(p),
                                None => PathBuf::from(p),
                            })
                }
                "AccessID" => gcs.access_id = l.string(at, item).unwrap_or_default(),
                "PrivateKey" => gcs.private_key = l.secret(at, item),
                "BucketName" => gcs.bucket_name = l.string(at, item).unwrap_or_default(),
                "UniverseDomain" => gcs.universe_domain = l.string(at, item).unwrap_or_default(),
                _ => return false,
            }
            true
        });
        true
    }

    fn azure_store(&mut self, t: &dyn TableLike, header: usize, az: &mut AzureStore) -> bool {
        self.store_table(&keys::CACHE_AZURE, t, header, |l, at, key, item| {
            match key {
                "AccountName" => az.account_name = l.string(at, item).unwrap_or_default(),
                "AccountKey" => az.account_key = l.secret(at, item),
                "ContainerName" => az.container_name = l.string(at, item).unwrap_or_default(),
                "StorageDomain" => az.storage_domain = l.string(at, item).unwrap_or_default(),
                _ => return false,
            }
            true
        });
        true
    }

    /// The keys a store cannot work without, checked once every table is read.
    fn store_complete(&mut self, at: &At, c: &CacheStoreConfig) -> bool {
        let missing = |what: &str| format!("Type = \"{}\" needs {what}", c.kind.as_str());
        let problem = match c.kind {
            CacheStoreType::S3 if c.s3.bucket_name.trim().is_empty() => {
                Some(missing("[runners.cache.s3] BucketName"))
            }
            CacheStoreType::S3
                if c.s3.authentication_type == S3Auth::AccessKey
                    && (c.s3.access_key.is_none() || c.s3.secret_key.is_none()) =>
            {
                Some(missing(
                    "[runners.cache.s3] AccessKey and SecretKey (or AuthenticationType = \"iam\")",
                ))
            }
            CacheStoreType::Gcs if c.gcs.bucket_name.trim().is_empty() => {
                Some(missing("[runners.cache.gcs] BucketName"))
            }
            CacheStoreType::Gcs
                if c.gcs.access_id.trim().is_empty() != c.gcs.private_key.is_none() =>
            {
                Some(missing(
                    "[runners.cache.gcs] AccessID and PrivateKey together",
                ))
            }
            CacheStoreType::Azure
                if c.azure.account_name.trim().is_empty()
                    || c.azure.container_name.trim().is_empty() =>
            {
                Some(missing(
                    "[runners.cache.azure] AccountName and ContainerName",
                ))
            }
            _ => None,
        };
        match problem {
            Some(p) => {
                self.error(at, p);
                false
            }
            None => true,
        }
    }
}

/// `Path` as gitlab-runner joins it (`path.Join`): surrounding and doubled `/` dropped; `.` and
/// `..` parts are refused rather than resolved, so the prefix means what it says.
fn clean_prefix(p: &str) -> Option<String> {
    let parts: Vec<&str> = p.split('/').filter(|s| !s.is_empty()).collect();
    if parts.iter().any(|s| *s == "." || *s == "..") {
        return None;
    }
    Some(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::clean_prefix;

    #[test]
    fn prefixes_are_cleaned_or_refused() {
        assert_eq!(clean_prefix("/ci//cache/").as_deref(), Some("ci/cache"));
        assert_eq!(clean_prefix("").as_deref(), Some(""));
        assert_eq!(clean_prefix("a/../b"), None);
    }
}
