//! The per-job certificate authority and its server and client certificates.
