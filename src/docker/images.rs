//! Images on one daemon: existence, metadata, pulls from a registry, `docker save`/`load`.

use super::{ByteStream, Docker, Error, api, tcp_ports};
use bollard::query_parameters as q;
use futures::{StreamExt, TryStreamExt};

/// What the runner shows about a local image (gitlab-runner's "Using docker image ... with
/// digest ..." line).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageFacts {
    /// Image id (`sha256:…`).
    pub id: String,
    /// `repo@sha256:…` digests the daemon knows for it (empty for images never pulled).
    pub repo_digests: Vec<String>,
}

/// One message of a pull's progress stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullEvent {
    /// Layer id, when the message is about a layer.
    pub layer: Option<String>,
    /// `Pulling fs layer`, `Downloading`, `Pull complete`, `Digest: sha256:…`, …
    pub status: String,
    /// Bytes done of this layer's current step.
    pub current: Option<i64>,
    /// Bytes of this layer's current step.
    pub total: Option<i64>,
}

impl Docker {
    /// Whether an image exists locally.
    pub async fn image_exists(&self, image: &str) -> Result<bool, Error> {
        match self.inner.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(e) => {
                let e = api(format!("inspect image {image}"))(e);
                if e.is_not_found() { Ok(false) } else { Err(e) }
            }
        }
    }

    /// The `USER` an image's config names (`None`: none, so root).
    pub async fn image_user(&self, image: &str) -> Result<Option<String>, Error> {
        let info = self
            .inner
            .inspect_image(image)
            .await
            .map_err(api(format!("inspect image {image}")))?;
        Ok(info
            .config
            .and_then(|c| c.user)
            .filter(|u| !u.trim().is_empty()))
    }

    /// The TCP ports an image declares with `EXPOSE`, ascending and without duplicates.
    pub async fn image_exposed_tcp_ports(&self, image: &str) -> Result<Vec<u16>, Error> {
        let info = self
            .inner
            .inspect_image(image)
            .await
            .map_err(api(format!("inspect image {image}")))?;
        let declared = info
            .config
            .and_then(|c| c.exposed_ports)
            .unwrap_or_default();
        Ok(tcp_ports(&declared))
    }

    /// Exports an image as a tar stream (`docker save`).
    pub fn export_image(&self, image: &str) -> ByteStream {
        let ctx = format!("export image {image}");
        Box::pin(
            self.inner
                .export_image(image)
                .map_err(move |e| api(ctx.clone())(e)),
        )
    }

    /// Loads an image tar stream into this daemon (`docker load`).
    pub async fn load_image(&self, tar: ByteStream, what: &str) -> Result<(), Error> {
        let ctx = format!("load image {what} into {}", self.what);
        let s = self.inner.import_image_stream(
            q::ImportImageOptions {
                quiet: true,
                ..Default::default()
            },
            tar.map_err(|e| std::io::Error::other(e.to_string())),
            None,
        );
        s.map_err(|e| api(ctx.clone())(e))
            .try_for_each(|_| async { Ok(()) })
            .await
    }

    /// Id and repo digests of a local image; `None` when the daemon does not have it.
    pub async fn image_facts(&self, image: &str) -> Result<Option<ImageFacts>, Error> {
        match self.inner.inspect_image(image).await {
            Ok(i) => Ok(Some(ImageFacts {
                id: i.id.unwrap_or_default(),
                repo_digests: i.repo_digests.unwrap_or_default(),
            })),
            Err(e) => {
                let e = api(format!("inspect image {image}"))(e);
                if e.is_not_found() { Ok(None) } else { Err(e) }
            }
        }
    }

    /// Pulls `reference` (`:latest` added when it names neither tag nor digest, so one tag is
    /// pulled, never a repository's every tag) with `auth` sent as `X-Registry-Auth`, calling
    /// `on_event` for each progress message. The error carries the registry's message.
    pub async fn pull_image(
        &self,
        reference: &str,
        auth: Option<bollard::auth::DockerCredentials>,
        on_event: &mut (dyn FnMut(PullEvent) + Send),
    ) -> Result<(), Error> {
        let reference = with_tag(reference);
        let opts = q::CreateImageOptions {
            from_image: Some(reference.clone()),
            ..Default::default()
        };
        let mut s = self.inner.create_image(Some(opts), None, auth);
        while let Some(item) = s.next().await {
            let info = item.map_err(api(format!("pull image {reference}")))?;
            let detail = info.progress_detail.unwrap_or_default();
            on_event(PullEvent {
                layer: info.id,
                status: info.status.unwrap_or_default(),
                current: detail.current,
                total: detail.total,
            });
        }
        Ok(())
    }

    /// Removes an image (by name or id) with `docker rmi --force`; false when it was not there.
    pub async fn remove_image(&self, image: &str) -> Result<bool, Error> {
        let opts = q::RemoveImageOptions {
            force: true,
            ..Default::default()
        };
        match self.inner.remove_image(image, Some(opts), None).await {
            Ok(_) => Ok(true),
            Err(e) => {
                let e = api(format!("remove image {image}"))(e);
                if e.is_not_found() { Ok(false) } else { Err(e) }
            }
        }
    }
}

/// `reference` with `:latest` when it names neither a tag nor a digest (a `:` before the last
/// `/` is a registry port, not a tag).
pub fn with_tag(reference: &str) -> String {
    let last = reference.rsplit('/').next().unwrap_or(reference);
    if reference.contains('@') || last.contains(':') {
        reference.to_string()
    } else {
        format!("{reference}:latest")
    }
}

impl Error {
    /// What the daemon or the registry said, without the operation prefix: the daemon's
    /// message for an HTTP error, the stream's error message for a failed pull.
    pub fn registry_message(&self) -> String {
        match self {
            Error::Api {
                source: bollard::errors::Error::DockerResponseServerError { message, .. },
                ..
            } => message.clone(),
            Error::Api {
                source: bollard::errors::Error::DockerStreamError { error },
                ..
            } => error.clone(),
            Error::Api { source, .. } => source.to_string(),
            Error::Reply { detail, .. } => detail.clone(),
        }
    }

    /// Whether a failed pull may succeed when tried again: the registry or the network had a
    /// moment, not a refusal (credentials, missing image, bad name, untrusted certificate).
    pub fn is_transient_pull_failure(&self) -> bool {
        let m = self.registry_message().to_ascii_lowercase();
        const FINAL: [&str; 12] = [
            "unauthorized",
            "authentication required",
            "no basic auth credentials",
            "denied",
            "not found",
            "manifest unknown",
            "name unknown",
            "invalid reference",
            "repository name must",
            "x509",
            "certificate",
            "http response to https client",
        ];
        !FINAL.iter().any(|f| m.contains(f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_only_without_tag_or_digest() {
        assert_eq!(with_tag("alpine"), "alpine:latest");
        assert_eq!(with_tag("r.corp:5000/app"), "r.corp:5000/app:latest");
        assert_eq!(with_tag("r.corp:5000/app:1"), "r.corp:5000/app:1");
        assert_eq!(with_tag("app@sha256:00"), "app@sha256:00");
    }

    #[test]
    fn refusals_are_final_hiccups_are_not() {
        let stream = |m: &str| Error::Api {
            context: "pull".into(),
            source: bollard::errors::Error::DockerStreamError { error: m.into() },
        };
        let server = |code: u16, m: &str| Error::Api {
            context: "pull".into(),
            source: bollard::errors::Error::DockerResponseServerError {
                status_code: code,
                message: m.into(),
            },
        };
        assert!(
            !server(
                500,
                "Head \"https://r/v2/a/manifests/1\": no basic auth credentials"
            )
            .is_transient_pull_failure()
        );
        assert!(
            !server(404, "manifest for r/a:1 not found: manifest unknown")
                .is_transient_pull_failure()
        );
        assert!(!stream("unauthorized: authentication required").is_transient_pull_failure());
        assert!(
            server(
                500,
                "Get \"http://r/v2/\": dial tcp 10.0.0.1:5000: connect: connection refused"
            )
            .is_transient_pull_failure()
        );
        assert!(
            stream("received unexpected HTTP status: 503 Service Unavailable")
                .is_transient_pull_failure()
        );
        assert_eq!(stream("boom").registry_message(), "boom");
    }
}
