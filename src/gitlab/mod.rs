//! The GitLab coordinator client: identity, `jobs/request`, status updates, trace, artifacts.
//!
//! Layout:
//! - [`client`]: the HTTP transport (headers, retries with backoff and `Retry-After`, bounded
//!   bodies) and one method per coordinator endpoint;
//! - [`trace`]: the [`TraceUploader`](trace::TraceUploader), a [`TraceSink`](crate::trace::TraceSink)
//!   that ships the job log with `PATCH /jobs/:id/trace`;
//! - [`artifacts`]: [`ArtifactClient`](artifacts::ArtifactClient), upload and download of job
//!   artifacts for the pipeline;
//! - [`identity`]: `system_id`, the `info` block and the `[[runners]]` entries of the config file.
//!
//! Tokens never reach a log line: they travel in headers and JSON bodies only, and every error
//! names the endpoint with the job id, never the token.

pub mod artifacts;
pub mod client;
pub mod identity;
pub mod local_ci;
pub mod trace;
pub mod types;

pub use artifacts::{ArtifactClient, UploadOptions};
pub use client::{
    Client, ClientOptions, JobAnswer, JobRequest, JobRequestOutcome, MalformedJob, RegisterRequest,
    RetryPolicy, UpdateJob, VerifyResponse,
};

/// Everything that can go wrong talking to GitLab.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configured URL cannot be used as a GitLab base URL.
    #[error("invalid gitlab url {url}: {reason}")]
    InvalidUrl {
        /// The URL as configured.
        url: String,
        /// Why it was refused.
        reason: String,
    },
    /// The HTTP client could not be built (TLS setup).
    #[error("cannot build the http client")]
    ClientSetup(#[source] reqwest::Error),
    /// `tls-ca-file` cannot be read or holds no certificate.
    #[error("tls-ca-file {}: {reason}", path.display())]
    TlsCaFile {
        /// The configured file.
        path: std::path::PathBuf,
        /// Why it is unusable.
        reason: String,
    },
    /// No answer: connection refused, reset, timed out.
    #[error("{endpoint}: no answer from gitlab")]
    Transport {
        /// `METHOD /path` without tokens.
        endpoint: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// GitLab refused the token (403). For job endpoints this means "stop the job".
    #[error("{endpoint}: gitlab refused the token (403): {message}")]
    Forbidden {
        /// `METHOD /path` without tokens.
        endpoint: String,
        /// The `message` of GitLab's error body.
        message: String,
    },
    /// The artifact is larger than GitLab accepts (413).
    #[error("{endpoint}: artifact too large for gitlab (413): {message}")]
    TooLarge {
        /// `METHOD /path` without tokens.
        endpoint: String,
        /// The `message` of GitLab's error body.
        message: String,
    },
    /// Any other unexpected status, after retries where the status is retryable.
    #[error("{endpoint}: gitlab answered {status}: {message}")]
    Status {
        /// `METHOD /path` without tokens.
        endpoint: String,
        /// HTTP status code.
        status: u16,
        /// The `message` of GitLab's error body, or the start of the body.
        message: String,
        /// `Retry-After` (or `RateLimit-ResetTime`) of the last answer, when present.
        retry_after: Option<std::time::Duration>,
    },
    /// The answer could not be decoded.
    #[error("{endpoint}: cannot decode gitlab's answer: {reason}")]
    Decode {
        /// `METHOD /path` without tokens.
        endpoint: String,
        /// What was wrong.
        reason: String,
    },
    /// The answer was larger than we accept for this endpoint.
    #[error("{endpoint}: answer larger than {limit} bytes")]
    BodyTooLarge {
        /// `METHOD /path` without tokens.
        endpoint: String,
        /// The limit in bytes.
        limit: usize,
    },
    /// A local file for an artifact could not be read or written.
    #[error("{endpoint}: {path}: {source}")]
    Io {
        /// `METHOD /path` without tokens.
        endpoint: String,
        /// The local file.
        path: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The runner's state file (`.runner_system_id`) could not be read or written.
    #[error("runner state file {path}: {source}")]
    State {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The operation was given up because the daemon is shutting down.
    #[error("{endpoint}: given up, shutting down")]
    Cancelled {
        /// `METHOD /path` without tokens.
        endpoint: String,
    },
}

impl Error {
    /// The HTTP status GitLab answered, when there was an answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Forbidden { .. } => Some(403),
            Error::TooLarge { .. } => Some(413),
            Error::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}
