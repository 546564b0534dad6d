//! runner bench: scenarios, interleaved runs, statistics and reports.
