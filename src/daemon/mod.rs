//! The poll loop, concurrency slots, signals, graceful shutdown and the crash journal.
