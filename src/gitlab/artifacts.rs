//! Job artifacts: `POST /jobs/:id/artifacts` (upload) and `GET /jobs/:id/artifacts` (download of
//! a dependency's archive). Plain async methods for the pipeline.
//!
//! ```no_run
//! # async fn demo(client: isolated_runner::gitlab::Client, token: isolated_runner::secret::Secret) -> Result<(), isolated_runner::gitlab::Error> {
//! use isolated_runner::gitlab::{ArtifactClient, UploadOptions};
//! let artifacts = ArtifactClient::new(client);
//! let archive = std::fs::File::open("/tmp/artifacts.zip").expect("open");
//! artifacts
//!     .upload(42, &token, &archive, &UploadOptions::default())
//!     .await?; // Error::TooLarge on 413: write it in the trace and fail the upload stage
//! let dest = std::fs::File::create("/tmp/dep.zip").expect("create");
//! let bytes = artifacts.download(41, &token, &dest).await?;
//! # let _ = bytes; Ok(()) }
//! ```

use super::Error;
use super::client::{Client, secret_header};
use crate::secret::Secret;
use std::fs::File;
use std::io::Seek;
use std::path::PathBuf;
use tokio::io::AsyncWriteExt;

/// Stands for the open file in error messages (the file has no path the runner trusts).
fn fd_path(file: &File) -> PathBuf {
    PathBuf::from(format!("<fd {}>", std::os::fd::AsRawFd::as_raw_fd(file)))
}

/// Parameters of one upload (protocol 4.7; sent in the query string like the Go runner).
#[derive(Debug, Clone)]
pub struct UploadOptions {
    /// `archive` or a report type (`junit`, `dotenv`, …).
    pub artifact_type: String,
    /// `zip`, `gzip` or `raw`.
    pub artifact_format: String,
    /// `expire_in` of the job's `artifacts:` entry, passed back verbatim.
    pub expire_in: Option<String>,
    /// File name of the multipart part (`artifacts.zip` for the archive).
    pub file_name: String,
}

impl Default for UploadOptions {
    fn default() -> Self {
        UploadOptions {
            artifact_type: "archive".into(),
            artifact_format: "zip".into(),
            expire_in: None,
            file_name: "artifacts.zip".into(),
        }
    }
}

/// Upload and download of job artifacts. Cheap to clone.
#[derive(Clone)]
pub struct ArtifactClient {
    client: Client,
}

impl ArtifactClient {
    /// Wraps the GitLab client of the job's runner.
    pub fn new(client: Client) -> Self {
        ArtifactClient { client }
    }

    /// Uploads the open `file` as an artifact of job `job_id`. The file is streamed from its
    /// start, rewound for each retry; it is never reopened by path (the runner uploads exactly
    /// the file it wrote). A `413` comes back as [`Error::TooLarge`].
    pub async fn upload(
        &self,
        job_id: u64,
        job_token: &Secret,
        file: &File,
        options: &UploadOptions,
    ) -> Result<(), Error> {
        let path = format!("jobs/{job_id}/artifacts");
        let endpoint = format!("POST /api/v4/{path}");
        let mut url = self.client.url(&path)?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("artifact_type", &options.artifact_type);
            q.append_pair("artifact_format", &options.artifact_format);
            if let Some(e) = options.expire_in.as_deref().filter(|e| !e.is_empty()) {
                q.append_pair("expire_in", e);
            }
        }
        let timeout = self.client.options.artifact_timeout;
        let resp = self
            .client
            .send(&endpoint, None, || {
                let url = url.clone();
                let endpoint = endpoint.clone();
                let shown = fd_path(file);
                let dup = file.try_clone();
                let file_name = options.file_name.clone();
                let http = self.client.http.clone();
                async move {
                    let io = |source| Error::Io {
                        endpoint: endpoint.clone(),
                        path: shown.clone(),
                        source,
                    };
                    // A clone shares the offset: rewind, since an earlier try read it.
                    let mut f = dup.map_err(io)?;
                    f.rewind().map_err(io)?;
                    let len = f.metadata().map_err(io)?.len();
                    let f = tokio::fs::File::from_std(f);
                    let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(f));
                    let part = reqwest::multipart::Part::stream_with_length(body, len)
                        .file_name(file_name)
                        .mime_str("application/octet-stream")
                        .map_err(|source| Error::Transport {
                            endpoint: endpoint.clone(),
                            source,
                        })?;
                    let form = reqwest::multipart::Form::new().part("file", part);
                    Ok(http
                        .post(url)
                        .timeout(timeout)
                        .header("JOB-TOKEN", secret_header(job_token))
                        .header("Accept", "application/json")
                        .multipart(form))
                }
            })
            .await?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(Client::error_for(&endpoint, resp).await)
        }
    }

    /// Downloads the `archive` artifact of job `job_id` into the open file `dest` (streamed,
    /// from its start) and returns its size. Follows one redirect (object storage) without
    /// sending the job token there.
    pub async fn download(&self, job_id: u64, token: &Secret, dest: &File) -> Result<u64, Error> {
        let path = format!("jobs/{job_id}/artifacts");
        let endpoint = format!("GET /api/v4/{path}");
        let url = self.client.url(&path)?;
        let timeout = self.client.options.artifact_timeout;
        let mut resp = self
            .client
            .send(&endpoint, None, || {
                let req = self
                    .client
                    .http
                    .get(url.clone())
                    .timeout(timeout)
                    .header("JOB-TOKEN", secret_header(token));
                async move { Ok(req) }
            })
            .await?;
        if resp.status().is_redirection() {
            let location = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|l| url.join(l).ok());
            let Some(location) = location else {
                return Err(Error::Decode {
                    endpoint,
                    reason: "redirect without a usable Location".into(),
                });
            };
            resp = self
                .client
                .send(&endpoint, None, || {
                    let req = self.client.http.get(location.clone()).timeout(timeout);
                    async move { Ok(req) }
                })
                .await?;
        }
        if !resp.status().is_success() {
            return Err(Client::error_for(&endpoint, resp).await);
        }
        let io = |source| Error::Io {
            endpoint: endpoint.clone(),
            path: fd_path(dest),
            source,
        };
        let mut out = dest.try_clone().map_err(io)?;
        out.rewind().map_err(io)?;
        out.set_len(0).map_err(io)?;
        let mut out = tokio::fs::File::from_std(out);
        let mut total = 0u64;
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    out.write_all(&chunk).await.map_err(io)?;
                    total += chunk.len() as u64;
                }
                Ok(None) => break,
                Err(source) => {
                    return Err(Error::Transport {
                        endpoint: endpoint.clone(),
                        source,
                    });
                }
            }
        }
        out.flush().await.map_err(io)?;
        Ok(total)
    }
}
