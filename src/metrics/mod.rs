//! The Prometheus `/metrics` and `/health` endpoint.
