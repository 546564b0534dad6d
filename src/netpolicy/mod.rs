//! Host-side network rules per job bridge.
