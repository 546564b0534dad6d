//! Pure validation rules: each takes a value as written in the file and returns the typed value or
//! a message (lower case, no final period) saying what is wrong. No I/O, no line numbers: the
//! loader adds the key and line.

use ipnet::{IpNet, Ipv4Net};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

/// Parses a Docker-style size: `4g`, `512m`, `1.5GiB`, `100kb`, `1024` (bytes). Units are
/// binary (k = 1024), as in `docker run --memory`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    if number.is_empty() {
        return Err(format!(
            "`{text}` is not a size: write a number with an optional unit, like \"512m\" or \"4g\""
        ));
    }
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size: `{number}` is not a number"))?;
    let unit = unit.trim().to_ascii_lowercase();
    let multiplier: u64 = match unit.as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        "p" | "pb" | "pib" => 1 << 50,
        _ => {
            return Err(format!(
                "`{text}` is not a size: unknown unit `{unit}` (use b, k, m, g, t)"
            ));
        }
    };
    let bytes = value * multiplier as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(format!("`{text}` is too large"));
    }
    Ok(bytes as u64)
}

/// Parses a duration like `60s`, `1h 30m`, `2d` (humantime syntax).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        format!("`{text}` is not a duration ({e}): write it like \"60s\", \"5m\" or \"1h\"")
    })
}

/// Parses a CPU count written as a string (`"1.5"`), as gitlab-runner's `cpus` is.
pub fn parse_cpus(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number of CPUs, like \"2\" or \"0.5\""))?;
    check_cpus(value)
}

/// A CPU count must be a positive, finite number.
pub fn check_cpus(value: f64) -> Result<f64, String> {
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(format!("{value} CPUs: must be more than 0"))
    }
}

/// Parses an IPv4 address pool and checks that per-job `/28` networks fit in it and that it
/// stays clear of addresses that must never be handed to a job network.
pub fn parse_pool(text: &str) -> Result<Ipv4Net, String> {
    let net: Ipv4Net = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not an IPv4 CIDR like \"10.213.0.0/16\""))?;
    if net.network() != net.addr() {
        return Err(format!(
            "`{text}` has host bits set; did you mean \"{}\"?",
            net.trunc()
        ));
    }
    if net.prefix_len() > 28 {
        return Err(format!(
            "`{text}` is smaller than one per-job /28 network; use a /28 or larger pool"
        ));
    }
    // A job bridge on these ranges would shadow the host's loopback, the cloud metadata service or
    // multicast: routing to them from the host would break, and egress rules would be wrong.
    let reserved: [(Ipv4Addr, u8, &str); 4] = [
        (Ipv4Addr::new(127, 0, 0, 0), 8, "loopback"),
        (
            Ipv4Addr::new(169, 254, 0, 0),
            16,
            "link-local (cloud metadata)",
        ),
        (Ipv4Addr::new(224, 0, 0, 0), 4, "multicast"),
        (Ipv4Addr::new(0, 0, 0, 0), 8, "\"this\" network"),
    ];
    for (addr, len, what) in reserved {
        if let Ok(r) = Ipv4Net::new(addr, len)
            && nets_overlap(&net, &r)
        {
            return Err(format!("`{text}` overlaps the {what} range {r}"));
        }
    }
    Ok(net)
}

/// True when two IPv4 networks share at least one address.
pub fn nets_overlap(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Parses one entry of an `egress` allow-list: a CIDR or a single address (host route).
pub fn parse_egress_entry(text: &str) -> Result<IpNet, String> {
    let t = text.trim();
    if let Ok(net) = t.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    if let Ok(addr) = t.parse::<IpAddr>() {
        return Ok(IpNet::from(addr));
    }
    Err(format!(
        "`{text}` is not a CIDR or an IP address; egress rules are applied on the host without \
         DNS, so host names cannot be used"
    ))
}

/// Parses a URL that must be `http` or `https` with a host.
pub fn parse_http_url(text: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(text.trim()).map_err(|e| format!("`{text}` is not a URL ({e})"))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(format!(
            "`{text}` must start with http:// or https://, not {}://",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("`{text}` has no host"));
    }
    Ok(url)
}

/// Checks that a path is absolute and returns it normalised (no `.`, no trailing slash).
pub fn parse_absolute_path(text: &str) -> Result<PathBuf, String> {
    let path = Path::new(text.trim());
    if text.trim().is_empty() {
        return Err("the path is empty".to_string());
    }
    if !path.is_absolute() {
        return Err(format!("`{text}` is not an absolute path"));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(format!("`{text}` must not contain `..`"));
    }
    Ok(normalise(path))
}

/// Drops `.` components, repeated and trailing slashes.
pub fn normalise(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| *c != Component::CurDir)
        .collect()
}

/// Parses an `environment` entry, `KEY=value`. Errors never quote the value: it may be a secret.
pub fn parse_env_entry(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if is_env_name(key) => Ok((key.to_string(), value.to_string())),
        Some((key, _)) => Err(format!(
            "`{key}` is not a valid variable name (letters, digits and _, not starting with a digit)"
        )),
        None => Err("an entry has no `=`: write KEY=value".to_string()),
    }
}

fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Checks a `registry_ca_files` key: a registry `host` or `host:port` as Docker names its
/// `certs.d` directories; it becomes a directory name in each job's daemon, so nothing that
/// could leave `certs.d` (`/`, `..`, empty) is accepted.
pub fn check_registry_host(text: &str) -> Result<String, String> {
    let (host, port) = match text.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (text, None),
    };
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && !host.starts_with(['.', '-'])
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        && !host.contains("..");
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n > 0));
    if host_ok && port_ok {
        Ok(text.to_ascii_lowercase())
    } else {
        Err(format!(
            "`{text}` is not a registry host (use `host` or `host:port`, like `registry.corp:5000`)"
        ))
    }
}

/// Checks that `path` is a readable PEM file with a certificate (a CA for a registry).
pub fn check_ca_file(path: std::path::PathBuf) -> Result<std::path::PathBuf, String> {
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if text.contains("-----BEGIN CERTIFICATE-----") {
        Ok(path)
    } else {
        Err(format!("{} holds no PEM certificate", path.display()))
    }
}

/// The pull policies gitlab-runner knows.
pub const PULL_POLICIES: [&str; 3] = ["always", "if-not-present", "never"];

/// Checks one pull policy name.
pub fn check_pull_policy(text: &str) -> Result<String, String> {
    if PULL_POLICIES.contains(&text) {
        Ok(text.to_string())
    } else {
        Err(format!(
            "`{text}` is not a pull policy (use {})",
            PULL_POLICIES.join(", ")
        ))
    }
}

/// A `volumes` entry split into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSpec {
    /// Host path (absolute) or named volume; `None` for a bare container path.
    pub source: Option<String>,
    /// Path inside the job container.
    pub target: PathBuf,
    /// Mount options (`ro`, `rw`, `z`, ...), possibly empty.
    pub options: Vec<String>,
}

impl VolumeSpec {
    /// The host path, when the source is a bind mount of a host path (not a named volume).
    pub fn host_path(&self) -> Option<PathBuf> {
        self.source
            .as_deref()
            .filter(|s| s.starts_with('/'))
            .map(|s| normalise(Path::new(s)))
    }
}

const MOUNT_OPTIONS: [&str; 14] = [
    "ro",
    "rw",
    "z",
    "Z",
    "shared",
    "slave",
    "private",
    "rshared",
    "rslave",
    "rprivate",
    "nocopy",
    "consistent",
    "cached",
    "delegated",
];

/// Parses a Docker `volumes` entry: `container`, `host:container`, `host:container:options`
/// or `name:container[:options]`.
pub fn parse_volume(text: &str) -> Result<VolumeSpec, String> {
    let parts: Vec<&str> = text.split(':').collect();
    let (source, target, options) = match parts.as_slice() {
        [target] => (None, *target, None),
        [a, b] if !b.starts_with('/') => (None, *a, Some(*b)),
        [source, target] => (Some(*source), *target, None),
        [source, target, options] => (Some(*source), *target, Some(*options)),
        _ => {
            return Err(format!(
                "`{text}` is not a volume: write \"/host/path:/container/path[:ro]\" or \"/container/path\""
            ));
        }
    };
    if let Some(s) = source
        && s.is_empty()
    {
        return Err(format!("`{text}` has an empty host path"));
    }
    if !target.starts_with('/') {
        return Err(format!(
            "`{text}`: the container path `{target}` must be absolute"
        ));
    }
    let options: Vec<String> = options
        .map(|o| o.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    if let Some(bad) = options
        .iter()
        .find(|o| !MOUNT_OPTIONS.contains(&o.as_str()))
    {
        return Err(format!(
            "`{text}`: unknown mount option `{bad}` (use ro, rw, z, Z, or a propagation mode)"
        ));
    }
    Ok(VolumeSpec {
        source: source.map(str::to_string),
        target: normalise(Path::new(target)),
        options,
    })
}

/// Where the host Docker socket lives on Linux hosts.
const SOCKET_PATHS: [&str; 2] = ["/var/run/docker.sock", "/run/docker.sock"];

/// True when mounting this host path hands the job the host's Docker socket: the socket itself,
/// any `*docker.sock*` file, or a directory that contains the socket (`/var/run`, `/run`, `/`).
pub fn exposes_docker_socket(host: &Path) -> bool {
    let host = normalise(host);
    let named_like_socket = host
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.contains("docker.sock"));
    named_like_socket || SOCKET_PATHS.iter().any(|s| Path::new(s).starts_with(&host))
}

/// What a volume shared by every job exposes, or `None` when it shares nothing across jobs
/// (a bare container path makes a fresh anonymous volume per container).
pub fn shared_volume_warning(
    volume: &VolumeSpec,
    builds_dir: &Path,
    cache_dir: &Path,
) -> Option<String> {
    let Some(host) = volume.host_path() else {
        return volume.source.as_ref().map(|name| {
            format!(
                "the named volume `{name}` is shared by every job: what one job writes there, \
                 every later job of any project can read or change"
            )
        });
    };
    let target = &volume.target;
    let is = |dir: &Path| host == normalise(dir) || *target == normalise(dir);
    let message = if is(builds_dir) || host.starts_with("/builds") {
        format!(
            "shares the host's builds directory {} with every job: any job can read and change \
             every other job's checkout; remove it: each job's own directory is already mounted \
             at the same path in the job and in its daemon",
            host.display()
        )
    } else if is(cache_dir) || host.starts_with("/cache") {
        format!(
            "shares the whole cache directory {} with every job: any job can read or poison \
             every project's cache; remove it: the runner restores and saves each job's cache \
             itself",
            host.display()
        )
    } else if host == Path::new("/tmp") || host == Path::new("/var/tmp") {
        format!(
            "shares the host's {} with every job: jobs see, and can change, each other's \
             temporary files; remove it unless a job really needs it",
            host.display()
        )
    } else if host.components().any(|c| c.as_os_str() == ".ssh") {
        format!(
            "hands the host's SSH keys ({}) to every job: any job can log in wherever they give \
             access; pass a deploy key as a masked CI/CD variable instead",
            host.display()
        )
    } else {
        format!(
            "shares the host directory {} with every job: what one job writes there, every \
             later job of any project can read or change",
            host.display()
        )
    };
    Some(message)
}

/// Edit distance between two strings (insert, delete, substitute; all cost 1).
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            let value = (previous[j] + cost)
                .min(previous[j + 1] + 1)
                .min(current[j] + 1);
            current.push(value);
        }
        previous = current;
    }
    previous[b.len()]
}

/// An `extra_hosts` entry: `host:ip` (the IP may be IPv6, or Docker's `host-gateway`).
pub fn check_extra_host(entry: &str) -> Result<(), String> {
    let Some((host, ip)) = entry.split_once(':') else {
        return Err(format!(
            "`{entry}` is not host:ip, like \"gitlab.example.com:10.0.0.5\""
        ));
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
    if !host_ok {
        return Err(format!("`{host}` in `{entry}` is not a host name"));
    }
    if ip != "host-gateway" && ip.parse::<std::net::IpAddr>().is_err() {
        return Err(format!("`{ip}` in `{entry}` is not an IP address"));
    }
    Ok(())
}

/// A `dns_search` domain: a DNS name, no spaces.
pub fn check_search_domain(domain: &str) -> Result<(), String> {
    let ok = !domain.is_empty()
        && domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!("`{domain}` is not a search domain"))
    }
}

/// A `log_level` value as our logger names it; gitlab-runner's `warning`, `panic` and `fatal`
/// map onto ours.
pub fn parse_log_level(s: &str) -> Result<&'static str, String> {
    match s {
        "trace" => Ok("trace"),
        "debug" => Ok("debug"),
        "info" => Ok("info"),
        "warn" | "warning" => Ok("warn"),
        "error" | "panic" | "fatal" => Ok("error"),
        _ => Err(format!(
            "`{s}` is not a log level (error, warn, info, debug, trace)"
        )),
    }
}

/// A `log_format` value: `text`, `json` or `runner` (gitlab-runner's three).
pub fn parse_log_format(s: &str) -> Result<&'static str, String> {
    match s {
        "text" => Ok("text"),
        "json" => Ok("json"),
        "runner" => Ok("runner"),
        _ => Err(format!("`{s}` is not a log format (text, json, runner)")),
    }
}

/// The known key closest to `key`, if it is close enough to be a likely typo. Case and `-`/`_`
/// differences are free, since `Type` vs `type` and `tls-ca-file` vs `tls_ca_file` are common.
pub fn did_you_mean<'a>(key: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let fold = |s: &str| s.to_ascii_lowercase().replace('-', "_");
    let wanted = fold(key);
    let threshold = (wanted.chars().count() / 3).clamp(1, 3);
    known
        .into_iter()
        .map(|k| (edit_distance(&wanted, &fold(k)), k))
        .filter(|(d, _)| *d <= threshold)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_docker_style() {
        assert_eq!(parse_size("4g"), Ok(4 << 30));
        assert_eq!(parse_size("512m"), Ok(512 << 20));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("100kb"), Ok(100 << 10));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert!(parse_size("4x").unwrap_err().contains("unknown unit"));
        assert!(parse_size("g").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("-1g").is_err());
    }

    #[test]
    fn durations_humantime() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("soon").unwrap_err().contains("60s"));
        assert!(parse_duration("60").is_err());
    }

    #[test]
    fn cpus() {
        assert_eq!(parse_cpus("2"), Ok(2.0));
        assert_eq!(parse_cpus("0.5"), Ok(0.5));
        assert!(parse_cpus("0").is_err());
        assert!(parse_cpus("two").is_err());
        assert!(check_cpus(f64::NAN).is_err());
    }

    #[test]
    fn pools() {
        assert!(parse_pool("10.213.0.0/16").is_ok());
        assert!(parse_pool("10.213.0.0/28").is_ok());
        assert!(parse_pool("10.213.0.0/29").unwrap_err().contains("/28"));
        assert!(
            parse_pool("10.213.0.1/16")
                .unwrap_err()
                .contains("10.213.0.0/16")
        );
        assert!(
            parse_pool("169.254.0.0/16")
                .unwrap_err()
                .contains("link-local")
        );
        assert!(parse_pool("127.0.0.0/16").unwrap_err().contains("loopback"));
        assert!(parse_pool("fd00::/64").is_err());
        assert!(parse_pool("nonsense").is_err());
    }

    #[test]
    fn overlap() {
        let a: Ipv4Net = "10.213.0.0/16".parse().unwrap();
        let b: Ipv4Net = "10.214.0.0/16".parse().unwrap();
        let c: Ipv4Net = "10.213.128.0/17".parse().unwrap();
        let d: Ipv4Net = "10.0.0.0/8".parse().unwrap();
        assert!(!nets_overlap(&a, &b));
        assert!(nets_overlap(&a, &c));
        assert!(nets_overlap(&c, &a));
        assert!(nets_overlap(&a, &d));
    }

    #[test]
    fn egress_entries() {
        assert_eq!(
            parse_egress_entry("10.0.0.0/8"),
            Ok("10.0.0.0/8".parse().unwrap())
        );
        assert_eq!(
            parse_egress_entry("192.0.2.7"),
            Ok("192.0.2.7/32".parse().unwrap())
        );
        assert_eq!(
            parse_egress_entry("2001:db8::/32"),
            Ok("2001:db8::/32".parse().unwrap())
        );
        assert!(
            parse_egress_entry("registry.example.com")
                .unwrap_err()
                .contains("DNS")
        );
    }

    #[test]
    fn urls_must_be_http() {
        assert!(parse_http_url("https://gitlab.example.com/").is_ok());
        assert!(parse_http_url("http://10.0.0.1:8080").is_ok());
        assert!(parse_http_url("ftp://x").unwrap_err().contains("http"));
        assert!(parse_http_url("gitlab.example.com").is_err());
        assert!(parse_http_url("unix:///var/run/docker.sock").is_err());
    }

    #[test]
    fn absolute_paths() {
        assert_eq!(
            parse_absolute_path("/builds/"),
            Ok(PathBuf::from("/builds"))
        );
        assert_eq!(parse_absolute_path("/a/./b"), Ok(PathBuf::from("/a/b")));
        assert!(parse_absolute_path("builds").is_err());
        assert!(parse_absolute_path("").is_err());
        assert!(parse_absolute_path("/a/../etc").is_err());
    }

    #[test]
    fn environment_entries() {
        assert_eq!(
            parse_env_entry("A=b=c"),
            Ok(("A".to_string(), "b=c".to_string()))
        );
        assert_eq!(parse_env_entry("EMPTY="), Ok(("EMPTY".into(), "".into())));
        let err = parse_env_entry("NOEQUALSsecret").unwrap_err();
        assert!(!err.contains("secret"), "must not quote the value: {err}");
        assert!(parse_env_entry("1A=x").is_err());
        assert!(parse_env_entry("=x").is_err());
    }

    #[test]
    fn registry_hosts() {
        assert_eq!(
            check_registry_host("Registry.Corp:5000"),
            Ok("registry.corp:5000".into())
        );
        assert!(check_registry_host("10.0.0.5").is_ok());
        for bad in [
            "", "..", "../etc", "a/b", "r.corp:0", "r.corp:x", ".hidden", "r:5000:1",
        ] {
            assert!(check_registry_host(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pull_policies() {
        assert!(check_pull_policy("if-not-present").is_ok());
        assert!(check_pull_policy("sometimes").is_err());
    }

    #[test]
    fn volumes_parse() {
        let v = parse_volume("/var/run/docker.sock:/var/run/docker.sock").unwrap();
        assert_eq!(v.source.as_deref(), Some("/var/run/docker.sock"));
        assert_eq!(v.host_path(), Some(PathBuf::from("/var/run/docker.sock")));
        let v = parse_volume("/cache").unwrap();
        assert_eq!(v.source, None);
        assert_eq!(v.target, PathBuf::from("/cache"));
        let v = parse_volume("/data:ro").unwrap();
        assert_eq!((v.source, v.options), (None, vec!["ro".to_string()]));
        let v = parse_volume("/root/.ssh:/root/.ssh:ro,z").unwrap();
        assert_eq!(v.options, vec!["ro", "z"]);
        let v = parse_volume("named:/data").unwrap();
        assert_eq!(v.host_path(), None);
        assert!(parse_volume("/a:relative").is_err());
        assert!(parse_volume("/a:/b:bogus").unwrap_err().contains("bogus"));
        assert!(parse_volume("/a:/b:ro:x").is_err());
        assert!(parse_volume(":/b").is_err());
    }

    #[test]
    fn socket_detection() {
        for p in [
            "/var/run/docker.sock",
            "/run/docker.sock",
            "/var/run/docker.sock/",
            "/home/u/.docker/run/docker.sock",
            "/var/run",
            "/run/",
            "/var",
            "/",
        ] {
            assert!(exposes_docker_socket(Path::new(p)), "{p}");
        }
        for p in ["/builds", "/tmp", "/var/lib/docker-data", "/run/user"] {
            assert!(!exposes_docker_socket(Path::new(p)), "{p}");
        }
    }

    #[test]
    fn shared_volume_messages() {
        let b = Path::new("/builds");
        let c = Path::new("/cache");
        let w = |s: &str| shared_volume_warning(&parse_volume(s).unwrap(), b, c);
        assert!(w("/builds:/builds").unwrap().contains("checkout"));
        assert!(w("/srv/builds:/builds").unwrap().contains("checkout"));
        assert!(w("/cache:/cache").unwrap().contains("cache"));
        assert!(w("/tmp:/tmp").unwrap().contains("temporary"));
        assert!(w("/root/.ssh:/root/.ssh:ro").unwrap().contains("SSH"));
        assert!(w("/srv/data:/data").unwrap().contains("/srv/data"));
        assert!(w("shared:/data").unwrap().contains("named volume"));
        assert_eq!(w("/scratch"), None);
    }

    #[test]
    fn edit_distance_and_suggestions() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        let keys = ["concurrent", "check_interval", "log_level"];
        assert_eq!(did_you_mean("concurent", keys), Some("concurrent"));
        assert_eq!(did_you_mean("check-interval", keys), Some("check_interval"));
        assert_eq!(did_you_mean("Log_Level", keys), Some("log_level"));
        assert_eq!(did_you_mean("banana", keys), None);
        assert_eq!(did_you_mean("type", ["Type", "Path"]), Some("Type"));
    }
}
