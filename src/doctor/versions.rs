//! runc and containerd versions against known container escapes (threat H2 of
//! `isolation-research.md`): pure parsing and comparison, tested with the versions hosts report.

use std::cmp::Ordering;

/// A dotted version with an optional release-candidate number (`1.0.0-rc6`, `1.4.0-rc.3`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    /// Major.
    pub major: u64,
    /// Minor.
    pub minor: u64,
    /// Patch.
    pub patch: u64,
    /// `rc<N>`; a release sorts after all its release candidates.
    pub rc: Option<u64>,
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.major, self.minor, self.patch)
            .cmp(&(other.major, other.minor, other.patch))
            .then(match (self.rc, other.rc) {
                (None, None) => Ordering::Equal,
                (None, Some(_)) => Ordering::Greater,
                (Some(_), None) => Ordering::Less,
                (Some(a), Some(b)) => a.cmp(&b),
            })
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)?;
        if let Some(rc) = self.rc {
            write!(f, "-rc.{rc}")?;
        }
        Ok(())
    }
}

/// Parses what `docker version` reports: `1.1.5+ds1`, `v1.6.20`, `1.6.20~ds1`, `1.0.0-rc6`,
/// `1.0-rc6`, `1.4.0-rc.3`, `1.0.0~rc6+dfsg1`. Distribution suffixes are dropped.
pub fn parse(text: &str) -> Option<Version> {
    let t = text.trim().trim_start_matches('v');
    // Build metadata and distribution suffixes (`+ds1`, `+dfsg1-1+deb12u1`).
    let t = t.split('+').next()?;
    let (core, pre) = match t.find(['-', '~']) {
        Some(i) => (&t[..i], Some(&t[i + 1..])),
        None => (t, None),
    };
    let mut nums = core.split('.').map(|n| n.parse::<u64>());
    let major = nums.next()?.ok()?;
    let minor = nums.next().unwrap_or(Ok(0)).ok()?;
    let patch = nums.next().unwrap_or(Ok(0)).ok()?;
    let rc = match pre {
        Some(p) => match p.strip_prefix("rc") {
            Some(n) => Some(n.trim_start_matches('.').parse::<u64>().ok()?),
            // `~ds1` and similar Debian suffixes are not pre-releases.
            None => None,
        },
        None => None,
    };
    Some(Version {
        major,
        minor,
        patch,
        rc,
    })
}

/// One advisory: which versions are fixed, per release branch.
#[derive(Debug, Clone, Copy)]
pub struct Advisory {
    /// CVE ids.
    pub ids: &'static str,
    /// What it allows.
    pub what: &'static str,
    /// First fixed version of each maintained branch, lowest branch first.
    pub fixed: &'static [&'static str],
}

impl Advisory {
    /// Whether `v` lacks the fix: below the fix of its own branch, or on a branch older than
    /// every fixed one. Branches newer than every fix are not affected.
    pub fn affects(&self, v: &Version) -> bool {
        let fixes: Vec<Version> = self.fixed.iter().filter_map(|f| parse(f)).collect();
        if let Some(own) = fixes
            .iter()
            .find(|f| f.major == v.major && f.minor == v.minor)
        {
            return v < own;
        }
        fixes.iter().all(|f| v < f)
    }

    /// `1.2.8, 1.3.3 or 1.4.0-rc.3`.
    pub fn fixed_in(&self) -> String {
        match self.fixed {
            [] => String::new(),
            [one] => one.to_string(),
            [init @ .., last] => format!("{} or {last}", init.join(", ")),
        }
    }
}

/// runc advisories that let a container reach the host.
pub const RUNC: &[Advisory] = &[
    Advisory {
        ids: "CVE-2019-5736",
        what: "a container overwrites the host runc binary through /proc/self/exe",
        fixed: &["1.0.0-rc7"],
    },
    Advisory {
        ids: "CVE-2021-30465",
        what: "a symlink-exchange race makes runc bind-mount a host path",
        fixed: &["1.0.0-rc95"],
    },
    Advisory {
        ids: "CVE-2024-21626",
        what: "a leaked host directory fd (WORKDIR /proc/self/fd/N) starts a job in the host filesystem",
        fixed: &["1.1.12"],
    },
    Advisory {
        ids: "CVE-2025-31133, CVE-2025-52565, CVE-2025-52881",
        what: "redirected /dev/null, /dev/console and procfs writes allow container-to-host escape",
        fixed: &["1.2.8", "1.3.3", "1.4.0-rc.3"],
    },
];

/// containerd advisories with host impact. Chosen: the well-known ones affecting what the
/// runner does (starting untrusted images under the host daemon).
pub const CONTAINERD: &[Advisory] = &[
    Advisory {
        ids: "CVE-2020-15257",
        what: "host-network containers reach the containerd-shim API over abstract sockets (host root)",
        fixed: &["1.3.9", "1.4.3"],
    },
    Advisory {
        ids: "CVE-2022-23648",
        what: "an image's volume path traversal copies host files into a container",
        fixed: &["1.4.13", "1.5.10", "1.6.1"],
    },
    Advisory {
        ids: "CVE-2023-25173",
        what: "supplementary groups are not applied, so an image can keep group access it should lose",
        fixed: &["1.5.18", "1.6.18"],
    },
    Advisory {
        ids: "CVE-2024-40635",
        what: "an image user id above 2^31 overflows and runs the container as root",
        fixed: &["1.6.38", "1.7.27", "2.0.4"],
    },
];

/// The advisories `version` is affected by. `None` when the version cannot be parsed.
pub fn unpatched(table: &'static [Advisory], version: &str) -> Option<Vec<&'static Advisory>> {
    let v = parse(version)?;
    Some(table.iter().filter(|a| a.affects(&v)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        parse(s).unwrap_or_else(|| panic!("{s}"))
    }

    #[test]
    fn parsing() {
        assert_eq!(v("1.1.5+ds1").to_string(), "1.1.5");
        assert_eq!(v("v1.6.20").to_string(), "1.6.20");
        assert_eq!(v("1.6.20~ds1").to_string(), "1.6.20");
        assert_eq!(v("1.0.0-rc6").to_string(), "1.0.0-rc.6");
        assert_eq!(v("1.0-rc6").to_string(), "1.0.0-rc.6");
        assert_eq!(v("1.4.0-rc.3").to_string(), "1.4.0-rc.3");
        assert_eq!(v("1.0.0~rc6+dfsg1").to_string(), "1.0.0-rc.6");
        assert!(parse("").is_none());
        assert!(parse("abc").is_none());
        assert!(v("1.0.0-rc95") > v("1.0.0-rc10"));
        assert!(v("1.0.0") > v("1.0.0-rc95"));
    }

    fn ids(table: &'static [Advisory], version: &str) -> Vec<&'static str> {
        unpatched(table, version)
            .unwrap()
            .iter()
            .map(|a| a.ids)
            .collect()
    }

    #[test]
    fn runc_versions() {
        // This host's runc.
        assert_eq!(
            ids(RUNC, "1.1.5+ds1"),
            [
                "CVE-2024-21626",
                "CVE-2025-31133, CVE-2025-52565, CVE-2025-52881"
            ]
        );
        assert_eq!(ids(RUNC, "1.0.0-rc6").len(), 4);
        assert!(!ids(RUNC, "1.0.0-rc7").contains(&"CVE-2019-5736"));
        assert_eq!(ids(RUNC, "1.1.12").len(), 1);
        assert_eq!(ids(RUNC, "1.2.7").len(), 1);
        assert!(ids(RUNC, "1.2.8").is_empty());
        assert_eq!(ids(RUNC, "1.3.2").len(), 1);
        assert!(ids(RUNC, "1.3.3").is_empty());
        assert_eq!(ids(RUNC, "1.4.0-rc.2").len(), 1);
        assert!(ids(RUNC, "1.4.0-rc.3").is_empty());
        assert!(ids(RUNC, "1.4.1").is_empty());
        assert!(unpatched(RUNC, "unknown").is_none());
    }

    #[test]
    fn containerd_versions() {
        assert_eq!(ids(CONTAINERD, "1.6.20~ds1"), ["CVE-2024-40635"]);
        assert_eq!(ids(CONTAINERD, "1.4.2").len(), 4);
        assert!(ids(CONTAINERD, "1.7.27").is_empty());
        assert_eq!(ids(CONTAINERD, "1.7.26"), ["CVE-2024-40635"]);
        assert!(ids(CONTAINERD, "2.0.4").is_empty());
        assert!(ids(CONTAINERD, "2.1.0").is_empty());
    }

    #[test]
    fn fixed_in_text() {
        assert_eq!(RUNC[3].fixed_in(), "1.2.8, 1.3.3 or 1.4.0-rc.3");
        assert_eq!(RUNC[2].fixed_in(), "1.1.12");
    }
}
