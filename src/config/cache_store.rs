//! The model of `[runners.cache]`'s distributed store (`Type = "s3" | "gcs" | "azure"`), with
//! gitlab-runner's key names. Parsed in `load/cache_store.rs`, used by `crate::cache::remote`.

use crate::secret::Secret;
use std::path::PathBuf;

/// Which object store holds the shared cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStoreType {
    /// Amazon S3 or any S3-compatible server (MinIO, Ceph, …).
    S3,
    /// Google Cloud Storage.
    Gcs,
    /// Azure Blob Storage.
    Azure,
}

impl CacheStoreType {
    /// The value as written in `Type`.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStoreType::S3 => "s3",
            CacheStoreType::Gcs => "gcs",
            CacheStoreType::Azure => "azure",
        }
    }
}

/// `[runners.cache]` with a `Type`: the store every runner host shares. `PartialEq` compares
/// every key, credentials included: a kept store client is reused only for exactly the config
/// it was built from (`crate::cache::StoreClients`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheStoreConfig {
    /// `Type`.
    pub kind: CacheStoreType,
    /// `Path`: prefix of every object name (no leading or trailing `/`).
    pub path: String,
    /// `Shared`: objects under `project/<id>/…` for every runner, instead of
    /// `runner/<short token>/project/<id>/…`.
    pub shared: bool,
    /// `MaxUploadedArchiveSize` in bytes; archives above it are kept on this host only.
    /// `None` (or 0 in the file) is no limit.
    pub max_uploaded_archive_size: Option<u64>,
    /// `[runners.cache.s3]`.
    pub s3: S3Store,
    /// `[runners.cache.gcs]`.
    pub gcs: GcsStore,
    /// `[runners.cache.azure]`.
    pub azure: AzureStore,
}

impl CacheStoreConfig {
    /// A store of `kind` with every other key at gitlab-runner's default.
    pub fn new(kind: CacheStoreType) -> Self {
        CacheStoreConfig {
            kind,
            path: String::new(),
            shared: false,
            max_uploaded_archive_size: None,
            s3: S3Store::default(),
            gcs: GcsStore::default(),
            azure: AzureStore::default(),
        }
    }
}

/// `AuthenticationType` of `[runners.cache.s3]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum S3Auth {
    /// `access-key`: `AccessKey`/`SecretKey` (and `SessionToken`). The default when a key is
    /// given.
    #[default]
    AccessKey,
    /// `iam`: the instance's or pod's role (metadata service, web identity, environment).
    Iam,
}

/// `ServerSideEncryption` of `[runners.cache.s3]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum S3Encryption {
    /// None requested (the bucket's default applies).
    #[default]
    None,
    /// `S3`: SSE-S3 (AES256), the bucket's default for new buckets anyway.
    S3,
    /// `KMS`: SSE-KMS with `ServerSideEncryptionKeyID`.
    Kms(String),
    /// `DSSE-KMS`: dual-layer SSE-KMS with `ServerSideEncryptionKeyID`.
    DsseKms(String),
}

/// `[runners.cache.s3]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct S3Store {
    /// `ServerAddress`: `host[:port]` of an S3-compatible server; empty for AWS.
    pub server_address: String,
    /// `AccessKey`.
    pub access_key: Option<Secret>,
    /// `SecretKey`.
    pub secret_key: Option<Secret>,
    /// `SessionToken`.
    pub session_token: Option<Secret>,
    /// `BucketName`.
    pub bucket_name: String,
    /// `BucketLocation` (region); `us-east-1` when empty.
    pub bucket_location: String,
    /// `Insecure`: plain HTTP to `ServerAddress`.
    pub insecure: bool,
    /// `AuthenticationType`.
    pub authentication_type: S3Auth,
    /// `ServerSideEncryption` with its key id.
    pub server_side_encryption: S3Encryption,
    /// `PathStyle`: `None` = path style for a custom `ServerAddress`, virtual-hosted for AWS.
    pub path_style: Option<bool>,
}

/// `[runners.cache.gcs]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcsStore {
    /// `CredentialsFile`: a service account JSON key file.
    pub credentials_file: Option<PathBuf>,
    /// `AccessID`: the service account's e-mail (with `PrivateKey`).
    pub access_id: String,
    /// `PrivateKey`: the service account's PEM key.
    pub private_key: Option<Secret>,
    /// `BucketName`.
    pub bucket_name: String,
    /// `UniverseDomain`: `googleapis.com` when empty.
    pub universe_domain: String,
}

/// `[runners.cache.azure]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AzureStore {
    /// `AccountName`.
    pub account_name: String,
    /// `AccountKey`; without it the managed identity is used.
    pub account_key: Option<Secret>,
    /// `ContainerName`.
    pub container_name: String,
    /// `StorageDomain`: `blob.core.windows.net` when empty.
    pub storage_domain: String,
}
