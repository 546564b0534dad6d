//! Which runner *process* owns an object, and whether that process is still alive.
//!
//! The runner id alone cannot tell a live runner from a dead one: it is the host's system id and
//! stays the same across restarts. So every object the backends create also carries
//! [`LABEL_OWNER`](crate::docker::LABEL_OWNER) = `<boot id>/<pid namespace>/<pid>/<start time>`:
//! the boot id catches reboots, the start time (clock ticks since boot, from `/proc/<pid>/stat`)
//! catches a pid reused by another process, and the pid namespace says whether our `/proc` can
//! judge the pid at all (a runner in a container has its own pid numbers; then the owner is
//! [`Liveness::Unknown`] and the deadline label decides instead).

use std::path::Path;
use std::sync::OnceLock;

/// The identity of one process on one boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// `/proc/sys/kernel/random/boot_id`.
    pub boot_id: String,
    /// Inode of the pid namespace (`pid:[4026531836]` → `4026531836`).
    pub pid_ns: String,
    /// Process id in that namespace.
    pub pid: u32,
    /// Field 22 of `/proc/<pid>/stat`: start time in clock ticks since boot.
    pub start_ticks: u64,
}

impl Owner {
    /// The label value: `<boot id>/<pid ns>/<pid>/<start ticks>`.
    pub fn label_value(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.boot_id, self.pid_ns, self.pid, self.start_ticks
        )
    }

    /// Parses a label value written by [`Owner::label_value`]; `None` for anything else.
    pub fn parse(value: &str) -> Option<Owner> {
        let mut parts = value.split('/');
        let boot_id = parts.next()?.to_string();
        let pid_ns = parts.next()?.to_string();
        let pid = parts.next()?.parse().ok()?;
        let start_ticks = parts.next()?.parse().ok()?;
        if parts.next().is_some() || boot_id.is_empty() || pid_ns.is_empty() {
            return None;
        }
        Some(Owner {
            boot_id,
            pid_ns,
            pid,
            start_ticks,
        })
    }
}

/// Whether an owner process still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// The very process (same boot, same pid, same start time) is running.
    Alive,
    /// The machine rebooted, the pid is gone, or it now belongs to another process.
    Dead,
    /// We cannot judge (another pid namespace, unreadable `/proc`, no owner label).
    Unknown,
}

/// What the observer knows about its own machine, to judge owners against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observer {
    /// This boot's id.
    pub boot_id: String,
    /// Our pid namespace.
    pub pid_ns: String,
}

impl Observer {
    /// Judges `owner`; `start_of(pid)` reads a pid's start time (`None` when there is no such
    /// process). Pure apart from `start_of`, so it is tested with synthetic processes.
    pub fn judge(&self, owner: &Owner, start_of: impl Fn(u32) -> Option<u64>) -> Liveness {
        if owner.pid_ns != self.pid_ns {
            return if owner.boot_id != self.boot_id {
                // Whatever namespace it lived in, it did not survive a reboot.
                Liveness::Dead
            } else {
                Liveness::Unknown
            };
        }
        if owner.boot_id != self.boot_id {
            return Liveness::Dead;
        }
        match start_of(owner.pid) {
            Some(start) if start == owner.start_ticks => Liveness::Alive,
            _ => Liveness::Dead,
        }
    }
}

/// Reads this boot's id and our pid namespace. Blocking (procfs, no disk I/O).
pub fn observer() -> Option<Observer> {
    Some(Observer {
        boot_id: read_boot_id()?,
        pid_ns: read_pid_ns(Path::new("/proc/self/ns/pid"))?,
    })
}

/// The owner value of this process, computed once. `None` where `/proc` cannot tell (then the
/// label is left out and cleanup falls back to the deadline label).
pub fn current() -> Option<&'static Owner> {
    static CURRENT: OnceLock<Option<Owner>> = OnceLock::new();
    CURRENT
        .get_or_init(|| {
            // procfs reads are served from kernel memory, never from disk, and happen once per
            // process: fine even when first called from async code.
            let obs = observer()?;
            let pid = std::process::id();
            Some(Owner {
                boot_id: obs.boot_id,
                pid_ns: obs.pid_ns,
                pid,
                start_ticks: start_ticks(pid)?,
            })
        })
        .as_ref()
}

/// Start time of `pid` in clock ticks since boot, or `None` when there is no such process.
/// Blocking (procfs).
pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_ticks(&stat)
}

/// Field 22 of a `/proc/<pid>/stat` line. The command name (field 2) may contain spaces and
/// parentheses, so fields are counted after its *last* `)`.
pub fn parse_start_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    // After the name come field 3 (state) onward; field 22 is the 20th of those.
    after.split_whitespace().nth(19)?.parse().ok()
}

fn read_boot_id() -> Option<String> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let id = id.trim();
    (!id.is_empty()).then(|| id.to_string())
}

fn read_pid_ns(link: &Path) -> Option<String> {
    let target = std::fs::read_link(link).ok()?;
    parse_ns_link(&target.to_string_lossy())
}

/// `pid:[4026531836]` → `4026531836`.
pub fn parse_ns_link(text: &str) -> Option<String> {
    let inner = text.strip_prefix("pid:[")?.strip_suffix(']')?;
    (!inner.is_empty() && inner.bytes().all(|b| b.is_ascii_digit())).then(|| inner.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs() -> Observer {
        Observer {
            boot_id: "boot-a".into(),
            pid_ns: "111".into(),
        }
    }

    fn owner(boot: &str, ns: &str, pid: u32, start: u64) -> Owner {
        Owner {
            boot_id: boot.into(),
            pid_ns: ns.into(),
            pid,
            start_ticks: start,
        }
    }

    #[test]
    fn label_round_trip() {
        let o = owner("b0a255f0-eb05", "4026531836", 42, 9001);
        assert_eq!(Owner::parse(&o.label_value()), Some(o));
        for bad in ["", "a/b/c", "a/b/x/1", "a/b/1/2/3", "/1/2/3"] {
            assert_eq!(Owner::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn judging() {
        let procs = |pid: u32| match pid {
            10 => Some(500),
            _ => None,
        };
        assert_eq!(
            obs().judge(&owner("boot-a", "111", 10, 500), procs),
            Liveness::Alive
        );
        // Same pid, different start time: the pid was reused.
        assert_eq!(
            obs().judge(&owner("boot-a", "111", 10, 499), procs),
            Liveness::Dead
        );
        assert_eq!(
            obs().judge(&owner("boot-a", "111", 11, 500), procs),
            Liveness::Dead
        );
        assert_eq!(
            obs().judge(&owner("boot-b", "111", 10, 500), procs),
            Liveness::Dead
        );
        assert_eq!(
            obs().judge(&owner("boot-a", "222", 10, 500), procs),
            Liveness::Unknown
        );
        assert_eq!(
            obs().judge(&owner("boot-b", "222", 10, 500), procs),
            Liveness::Dead
        );
    }

    #[test]
    fn stat_parsing() {
        let line =
            "1234 (a b) c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 777 1000 10";
        assert_eq!(parse_start_ticks(line), Some(777));
        assert_eq!(parse_start_ticks("garbage"), None);
        assert_eq!(parse_ns_link("pid:[4026531836]"), Some("4026531836".into()));
        assert_eq!(parse_ns_link("net:[1]"), None);
    }

    #[test]
    fn this_process_is_alive() {
        let me = current().expect("procfs readable in tests");
        let obs = observer().unwrap();
        assert_eq!(obs.judge(me, start_ticks), Liveness::Alive);
    }
}
