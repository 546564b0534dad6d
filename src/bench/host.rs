//! What the bench records about the host and the runner process itself.

use serde::Serialize;

/// Resident memory of this process, from `/proc/self/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RunnerMemory {
    /// `VmRSS`: resident set size now, bytes.
    pub rss_bytes: u64,
    /// `VmHWM`: peak resident set size so far, bytes.
    pub hwm_bytes: u64,
}

/// Parses `VmRSS` and `VmHWM` (kB) out of a `/proc/<pid>/status` text.
pub fn parse_status(text: &str) -> Option<RunnerMemory> {
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let value = line[name.len()..].trim().strip_suffix("kB")?.trim();
        value.parse::<u64>().ok().map(|kb| kb * 1024)
    };
    Some(RunnerMemory {
        rss_bytes: field("VmRSS:")?,
        hwm_bytes: field("VmHWM:")?,
    })
}

/// Reads this process's memory; `None` off Linux or if `/proc` is not mounted.
pub async fn runner_memory() -> Option<RunnerMemory> {
    let text = tokio::fs::read_to_string("/proc/self/status").await.ok()?;
    parse_status(&text)
}

/// The host's 1-minute load average, from `/proc/loadavg`; `None` off Linux.
pub async fn load1() -> Option<f64> {
    let text = tokio::fs::read_to_string("/proc/loadavg").await.ok()?;
    parse_load1(&text)
}

/// The first field of a `/proc/loadavg` text.
pub fn parse_load1(text: &str) -> Option<f64> {
    text.split_whitespace().next()?.parse().ok()
}

/// The host as seen by the runner (the Docker side comes from the target).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HostFacts {
    /// `uname -r`.
    pub kernel: Option<String>,
    /// CPUs this process may use.
    pub cpus: Option<usize>,
    /// CPU model name.
    pub cpu_model: Option<String>,
    /// `MemTotal`, bytes.
    pub memory_bytes: Option<u64>,
    /// `v1` or `v2`.
    pub cgroup: Option<String>,
    /// This runner's version.
    pub runner_version: String,
}

/// Parses `MemTotal` (kB) from `/proc/meminfo` text, in bytes.
pub fn parse_meminfo(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb = line["MemTotal:".len()..]
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kb * 1024)
}

/// Collects [`HostFacts`] from `/proc` and `/sys`.
pub async fn host_facts() -> HostFacts {
    let read = |path: &'static str| async move { tokio::fs::read_to_string(path).await.ok() };
    let cgroup = if tokio::fs::try_exists("/sys/fs/cgroup/cgroup.controllers")
        .await
        .unwrap_or(false)
    {
        "v2"
    } else {
        "v1"
    };
    HostFacts {
        kernel: read("/proc/sys/kernel/osrelease")
            .await
            .map(|s| s.trim().to_string()),
        cpus: std::thread::available_parallelism().ok().map(|n| n.get()),
        cpu_model: read("/proc/cpuinfo").await.and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        }),
        memory_bytes: read("/proc/meminfo").await.and_then(|t| parse_meminfo(&t)),
        cgroup: Some(cgroup.to_string()),
        runner_version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_status() {
        let text = "Name:\trunner\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\nThreads:\t4\n";
        assert_eq!(
            parse_status(text),
            Some(RunnerMemory {
                rss_bytes: 10240 * 1024,
                hwm_bytes: 20480 * 1024
            })
        );
        assert_eq!(parse_status("Name: x\n"), None);
    }

    #[test]
    fn parses_meminfo() {
        assert_eq!(
            parse_meminfo("MemTotal:       24576000 kB\nMemFree: 1 kB\n"),
            Some(24_576_000 * 1024)
        );
    }

    #[test]
    fn parses_loadavg() {
        assert_eq!(parse_load1("2.53 1.90 1.20 3/812 4242\n"), Some(2.53));
        assert_eq!(parse_load1(""), None);
    }

    #[tokio::test]
    async fn reads_our_own_memory_for_real() {
        let mem = runner_memory().await.expect("linux /proc");
        assert!(mem.rss_bytes > 0 && mem.hwm_bytes >= mem.rss_bytes);
    }
}
