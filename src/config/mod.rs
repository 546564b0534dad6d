//! Configuration: gitlab-runner's `config.toml` format plus `[runners.docker.isolation]`.

mod model;

pub use model::*;
