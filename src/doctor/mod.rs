//! `runner doctor`: read-only checks of host, config, sidecar and GitLab, each with a fix hint.
//!
//! Facts are gathered once ([`facts::gather`]: files, `docker version`/`info`, the firewall,
//! GitLab), then every check is a pure function over them ([`checks::evaluate`]), so each check
//! is unit-tested with synthetic facts. Nothing is pulled, written or sent anywhere but the
//! configured GitLab and the local daemon; `--deep` additionally starts one throwaway sidecar per
//! profile through the real dind backend and tears it down. See `docs/doctor.md`.

pub mod checks;
pub mod facts;
pub mod versions;

use serde::Serialize;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Fine.
    Ok,
    /// Did not run (no config, nothing to check, a prerequisite failed).
    Skip,
    /// Works, but something is risky or will bite later.
    Warn,
    /// Broken: jobs will fail or the host is exposed.
    Fail,
}

impl Status {
    /// The mark in human output.
    pub fn mark(self) -> &'static str {
        match self {
            Status::Ok => "✔",
            Status::Warn => "!",
            Status::Fail => "✖",
            Status::Skip => "-",
        }
    }
}

/// Output groups, in display order.
pub const GROUPS: [&str; 7] = [
    "config", "host", "docker", "sidecar", "network", "gitlab", "cache",
];

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Stable id (`docker.reachable`).
    pub id: &'static str,
    /// Ok, warn, fail or skip.
    pub status: Status,
    /// What was found.
    pub message: String,
    /// What to do about it (empty when ok).
    pub hint: String,
}

impl Check {
    /// An ok result.
    pub fn ok(id: &'static str, message: impl Into<String>) -> Check {
        Check {
            id,
            status: Status::Ok,
            message: message.into(),
            hint: String::new(),
        }
    }

    /// A result that is not ok, with its hint.
    pub fn with(
        id: &'static str,
        status: Status,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Check {
        Check {
            id,
            status,
            message: message.into(),
            hint: hint.into(),
        }
    }

    /// The display group of this check's id.
    pub fn group(&self) -> &'static str {
        group_of(self.id)
    }
}

/// The display group of a check id.
pub fn group_of(id: &str) -> &'static str {
    let prefix = id.split('.').next().unwrap_or(id);
    match prefix {
        "config" => "config",
        "host" | "disk" | "leftovers" => "host",
        "docker" | "images" => "docker",
        "sidecar" => "sidecar",
        "network" | "netpolicy" => "network",
        "gitlab" => "gitlab",
        "cache" => "cache",
        _ => "host",
    }
}

/// All results.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// In evaluation order.
    pub checks: Vec<Check>,
}

impl Report {
    /// Whether any check failed (exit 1).
    pub fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.status == Status::Fail)
    }

    /// `{"checks":[{"id","status","message","hint"}]}`.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|_| "{\"checks\":[]}".to_string())
    }

    /// One line per check with its mark, grouped; hints indented below.
    pub fn to_human(&self) -> String {
        let mut out = String::new();
        for group in GROUPS {
            let in_group: Vec<&Check> = self.checks.iter().filter(|c| c.group() == group).collect();
            if in_group.is_empty() {
                continue;
            }
            out.push_str(group);
            out.push('\n');
            for c in in_group {
                out.push_str(&format!(
                    "  {} {:<22} {}\n",
                    c.status.mark(),
                    c.id,
                    c.message
                ));
                if !c.hint.is_empty() {
                    for line in c.hint.lines() {
                        out.push_str(&format!("      → {line}\n"));
                    }
                }
            }
        }
        let count = |s: Status| self.checks.iter().filter(|c| c.status == s).count();
        out.push_str(&format!(
            "\n{} ok, {} warnings, {} failed, {} skipped\n",
            count(Status::Ok),
            count(Status::Warn),
            count(Status::Fail),
            count(Status::Skip)
        ));
        out
    }
}

/// Gathers facts and evaluates every check.
pub async fn run(opts: &facts::Options) -> Report {
    let facts = facts::gather(opts).await;
    Report {
        checks: checks::evaluate(&facts),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendering_and_exit() {
        let r = Report {
            checks: vec![
                Check::ok("docker.reachable", "engine 20.10"),
                Check::with("config.loads", Status::Fail, "bad", "fix line 3"),
            ],
        };
        assert!(r.failed());
        let human = r.to_human();
        let config_at = human.find("config\n").unwrap();
        let docker_at = human.find("docker\n").unwrap();
        assert!(config_at < docker_at, "{human}");
        assert!(human.contains("✖ config.loads"));
        assert!(human.contains("→ fix line 3"));
        let json: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(json["checks"][1]["status"], "fail");
        assert_eq!(json["checks"][0]["hint"], "");
        assert!(
            !Report {
                checks: vec![Check::ok("a.b", "x")]
            }
            .failed()
        );
    }

    #[test]
    fn groups() {
        assert_eq!(group_of("disk.builds"), "host");
        assert_eq!(group_of("images.present"), "docker");
        assert_eq!(group_of("netpolicy.rules"), "network");
        assert_eq!(group_of("gitlab.clock_skew"), "gitlab");
        assert_eq!(group_of("cache.store"), "cache");
    }
}
