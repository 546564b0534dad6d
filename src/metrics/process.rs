//! `process_*` metrics from `/proc/self`, as Prometheus client libraries export them, so
//! `runner bench` can compare our resident memory with gitlab-runner's.

use super::family::{format_value, header};
use std::fmt::Write;
use std::time::Instant;

/// Clock ticks per second for `/proc/self/stat` CPU times; 100 on every Linux we target.
const TICKS_PER_SECOND: f64 = 100.0;
/// Page size for `/proc/self/statm`; 4 KiB on x86_64 and the usual arm64 kernels.
const PAGE_SIZE: f64 = 4096.0;

/// Appends the process metrics it can read; missing files (non-Linux) just omit them.
pub(crate) fn render(out: &mut String, started: Instant) {
    let mut gauge = |name: &str, help: &str, kind: &str, v: f64| {
        header(out, name, help, kind);
        // Writing into a String cannot fail.
        let _ = writeln!(out, "{name} {}", format_value(v));
    };
    if let Ok(statm) = std::fs::read_to_string("/proc/self/statm") {
        let mut fields = statm.split_whitespace();
        let vsize = fields.next().and_then(|v| v.parse::<f64>().ok());
        let rss = fields.next().and_then(|v| v.parse::<f64>().ok());
        if let (Some(vsize), Some(rss)) = (vsize, rss) {
            gauge(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                "gauge",
                rss * PAGE_SIZE,
            );
            gauge(
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes.",
                "gauge",
                vsize * PAGE_SIZE,
            );
        }
    }
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
        let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
        let fields: Vec<&str> = after.split_whitespace().collect();
        let tick = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
        if let (Some(u), Some(s)) = (tick(11), tick(12)) {
            gauge(
                "process_cpu_seconds_total",
                "Total user and system CPU time spent in seconds.",
                "counter",
                (u + s) / TICKS_PER_SECOND,
            );
        }
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        gauge(
            "process_open_fds",
            "Number of open file descriptors.",
            "gauge",
            dir.count() as f64,
        );
    }
    if let Ok(since) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        let start = since.as_secs_f64() - started.elapsed().as_secs_f64();
        gauge(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            "gauge",
            start.floor(),
        );
    }
}
