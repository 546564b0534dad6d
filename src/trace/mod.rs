//! The job log: what GitLab shows as the job's trace.
//!
//! A [`TraceSink`] receives bytes that are already masked and ready to show: the GitLab uploader
//! (`gitlab::trace`) for `runner run`, the terminal for `runner exec`, a buffer in tests. The
//! masking, section markers and size limit sit in front of it, in this module.

/// Where finished trace bytes go. Implementations must not block: they buffer and ship the bytes
/// on their own schedule.
pub trait TraceSink: Send + Sync {
    /// Appends bytes to the trace.
    fn append(&self, data: &[u8]);
}
