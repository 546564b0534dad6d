//! `[runners.docker.isolation.mirror]`: the registry mirror the runner starts and owns on the
//! host (Debian's `docker-registry` in proxy mode), instead of an admin-run `registry_mirror`.
//!
//! The mirror holds no upstream credentials on purpose: it can only ever cache what the
//! upstream serves anonymously, so nothing one project pulled with its own `docker login` can
//! be served to another project through it (see `isolation::mirror`).

use std::path::{Path, PathBuf};

/// Docker Hub's registry endpoint: what `docker.io/...` names resolve to, and what a
/// gitlab-runner user's jobs pull from unless told otherwise.
pub const DEFAULT_MIRROR_UPSTREAM: &str = "https://registry-1.docker.io";

/// The image with Debian's `docker-registry` that the project's test images build.
pub const DEFAULT_MIRROR_IMAGE: &str = "isolated-runner/registry:test";

/// Default storage cap: what `runner cleanup` bounds the mirror's storage to.
pub const DEFAULT_MIRROR_MAX_SIZE: u64 = 20 * 1024 * 1024 * 1024;

/// `[runners.docker.isolation.mirror]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedMirror {
    /// `upstream`: the registry the mirror pulls through to (`proxy.remoteurl`). Never carries
    /// credentials (the loader refuses a URL with a user or password).
    pub upstream: url::Url,
    /// `image`: an image whose entrypoint is Debian's `docker-registry` (the command it gets is
    /// `serve <config>`), present on the host engine (never pulled by the runner).
    pub image: String,
    /// `storage_dir`: the host directory holding the cache; `None` = `<state_dir>/mirror`.
    pub storage_dir: Option<PathBuf>,
    /// `max_size`: `runner cleanup` empties the cache when it holds more than this many bytes.
    pub max_size: u64,
    /// `port`: host port on the default bridge's gateway address; 0 = the engine picks a free
    /// one when the container is created (the runner reads it back at every start).
    pub port: u16,
}

impl Default for ManagedMirror {
    fn default() -> Self {
        ManagedMirror {
            upstream: url::Url::parse(DEFAULT_MIRROR_UPSTREAM).expect("constant URL parses"),
            image: DEFAULT_MIRROR_IMAGE.to_string(),
            storage_dir: None,
            max_size: DEFAULT_MIRROR_MAX_SIZE,
            port: 0,
        }
    }
}

impl ManagedMirror {
    /// Where the cache lives on the host for a runner whose state dir is `state_dir`.
    pub fn storage_dir_in(&self, state_dir: &Path) -> PathBuf {
        self.storage_dir
            .clone()
            .unwrap_or_else(|| state_dir.join("mirror"))
    }
}
