//! The GitLab coordinator client: identity, `jobs/request`, status updates, trace, artifacts.

pub mod types;
