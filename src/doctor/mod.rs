//! `runner doctor`: read-only checks of host, config, sidecar and GitLab, each with a fix hint.
