//! The resource limits of a job's containers: the job and helper containers, its services and
//! its sidecar (which also holds every inner container, in its cgroup).
//!
//! Every container gets a memory and a pids limit, whether or not the config names one: a job
//! controls the images and commands of all of them, and a fork bomb or a memory hog in any one
//! must stop at its own limit, not at the host's (security review H4). The defaults are taken
//! from the host's size; `docs/configuration.md` lists each with its reason.

use crate::config::DockerConfig;
use std::sync::OnceLock;

/// Pids of a job or helper container unless `pids_limit` says otherwise: a large build
/// (parallel compilers, test runners) stays well under it, a fork bomb stops at it.
pub const DEFAULT_JOB_PIDS: i64 = 4096;
/// Pids of a service unless `service_pids_limit` says otherwise: databases and web servers
/// run tens to a few hundred processes or threads.
pub const DEFAULT_SERVICE_PIDS: i64 = 1024;
// A config default, so it lives in config/ (below isolation); re-exported for the backends.
pub use crate::config::DEFAULT_SERVICES_LIMIT;

/// What the host has, read once (the machine does not change size while the runner runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostSize {
    /// Physical memory in bytes (`MemTotal`).
    pub memory: u64,
    /// CPUs this process may use.
    pub cpus: usize,
}

impl HostSize {
    /// This host's size; when `/proc/meminfo` cannot be read, 4 GiB is assumed (small, so the
    /// defaults stay safe rather than generous).
    pub fn get() -> HostSize {
        static SIZE: OnceLock<HostSize> = OnceLock::new();
        *SIZE.get_or_init(|| HostSize {
            memory: std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|m| mem_total(&m))
                .unwrap_or(4 << 30),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        })
    }
}

/// `MemTotal` of a `/proc/meminfo` text, in bytes.
fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The limits of one container.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ContainerLimits {
    /// Memory in bytes (swap is set equal: no swap on top).
    pub memory: Option<i64>,
    /// CPUs.
    pub cpus: Option<f64>,
    /// Pids.
    pub pids_limit: Option<i64>,
}

impl ContainerLimits {
    /// The limits as a user reads them: `memory 512 MiB, 1 CPU, 256 pids`; what is not set
    /// reads as unlimited (the trace hint of a rootless daemon's discarded limits names them).
    pub fn describe(&self) -> String {
        let memory = match self.memory {
            Some(m) if m > 0 => format!("memory {} MiB", m >> 20),
            _ => "memory unlimited".to_string(),
        };
        let cpus = match self.cpus {
            Some(c) if c > 0.0 => format!("{c} CPU{}", if c == 1.0 { "" } else { "s" }),
            _ => "CPUs unlimited".to_string(),
        };
        let pids = match self.pids_limit {
            Some(p) if p > 0 => format!("{p} pids"),
            _ => "pids unlimited".to_string(),
        };
        format!("{memory}, {cpus}, {pids}")
    }
}

/// The limits of every container of a job on one runner.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JobLimits {
    /// Job (build) and helper containers.
    pub job: ContainerLimits,
    /// Each service container.
    pub service: ContainerLimits,
    /// The sidecar, inner containers included.
    pub sidecar: ContainerLimits,
}

impl JobLimits {
    /// The limits for `docker` on this host.
    pub fn of(docker: &DockerConfig) -> JobLimits {
        JobLimits::with_host(docker, HostSize::get())
    }

    /// The limits for `docker` on a host of `host`'s size: each configured value, or its default.
    ///
    /// - job container: half the host's memory (a job may build big things, but two jobs cannot
    ///   take it all), [`DEFAULT_JOB_PIDS`], CPUs unlimited (the scheduler shares CPU time, so a
    ///   busy job slows others but cannot take the host down).
    /// - each service: a quarter of the host's memory, half its CPUs (at least one),
    ///   [`DEFAULT_SERVICE_PIDS`]: services support the job, they never need the whole host.
    /// - sidecar: half the host's memory (the job's daemon and everything it runs share it),
    ///   `sidecar_pids_limit` (4096 by default), CPUs unlimited.
    pub fn with_host(docker: &DockerConfig, host: HostSize) -> JobLimits {
        let share = |divisor: u64| i64::try_from(host.memory / divisor).ok();
        let bytes = |b: Option<u64>| b.and_then(|m| i64::try_from(m).ok());
        let iso = &docker.isolation;
        JobLimits {
            job: ContainerLimits {
                memory: bytes(docker.memory).or_else(|| share(2)),
                cpus: docker.cpus,
                pids_limit: docker.pids_limit.or(Some(DEFAULT_JOB_PIDS)),
            },
            service: ContainerLimits {
                memory: bytes(docker.service_memory).or_else(|| share(4)),
                cpus: docker
                    .service_cpus
                    .or(Some((host.cpus as f64 / 2.0).max(1.0))),
                pids_limit: iso.service_pids_limit.or(Some(DEFAULT_SERVICE_PIDS)),
            },
            sidecar: ContainerLimits {
                memory: bytes(iso.sidecar_memory).or_else(|| share(2)),
                cpus: iso.sidecar_cpus,
                pids_limit: iso.sidecar_pids_limit.or(Some(DEFAULT_JOB_PIDS)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: HostSize = HostSize {
        memory: 16 << 30,
        cpus: 8,
    };

    #[test]
    fn every_container_is_limited_by_default() {
        let l = JobLimits::with_host(&DockerConfig::default(), HOST);
        assert_eq!(l.job.memory, Some(8 << 30));
        assert_eq!(l.job.pids_limit, Some(DEFAULT_JOB_PIDS));
        assert_eq!(l.service.memory, Some(4 << 30));
        assert_eq!(l.service.cpus, Some(4.0));
        assert_eq!(l.service.pids_limit, Some(DEFAULT_SERVICE_PIDS));
        assert_eq!(l.sidecar.memory, Some(8 << 30));
        assert_eq!(l.sidecar.pids_limit, Some(4096));
        let one_cpu = JobLimits::with_host(&DockerConfig::default(), HostSize { cpus: 1, ..HOST });
        assert_eq!(one_cpu.service.cpus, Some(1.0));
    }

    #[test]
    fn configured_values_win() {
        let mut d = DockerConfig {
            memory: Some(1 << 30),
            pids_limit: Some(100),
            cpus: Some(2.0),
            service_memory: Some(256 << 20),
            service_cpus: Some(0.5),
            ..Default::default()
        };
        d.isolation.service_pids_limit = Some(64);
        d.isolation.sidecar_memory = Some(2 << 30);
        d.isolation.sidecar_pids_limit = Some(512);
        let l = JobLimits::with_host(&d, HOST);
        assert_eq!(
            l.job,
            ContainerLimits {
                memory: Some(1 << 30),
                cpus: Some(2.0),
                pids_limit: Some(100)
            }
        );
        assert_eq!(
            l.service,
            ContainerLimits {
                memory: Some(256 << 20),
                cpus: Some(0.5),
                pids_limit: Some(64)
            }
        );
        assert_eq!(l.sidecar.memory, Some(2 << 30));
        assert_eq!(l.sidecar.pids_limit, Some(512));
    }

    #[test]
    fn limits_read_as_a_user_reads_them() {
        let l = ContainerLimits {
            memory: Some(512 << 20),
            cpus: Some(1.0),
            pids_limit: Some(256),
        };
        assert_eq!(l.describe(), "memory 512 MiB, 1 CPU, 256 pids");
        let half = ContainerLimits {
            cpus: Some(0.5),
            ..l
        };
        assert_eq!(half.describe(), "memory 512 MiB, 0.5 CPUs, 256 pids");
        assert_eq!(
            ContainerLimits::default().describe(),
            "memory unlimited, CPUs unlimited, pids unlimited"
        );
    }

    #[test]
    fn meminfo_parsing() {
        assert_eq!(
            mem_total("MemTotal:       16303412 kB\nMemFree: 1 kB\n"),
            Some(16303412 * 1024)
        );
        assert_eq!(mem_total("MemFree: 1 kB\n"), None);
        assert!(HostSize::get().memory > 0);
    }
}
