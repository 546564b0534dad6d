//! Pure rule construction: inputs in, iptables argument vectors out. No I/O here, so every
//! ordering and coverage property is checked by unit tests without touching the host firewall.

use super::{Endpoint, Error, Protocol};
use crate::config::Egress;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::net::IpAddr;

/// Prefix of every chain this runner creates; `list_installed` only looks at these.
pub const CHAIN_PREFIX: &str = "IR-";

/// Longest chain name iptables accepts (`XT_EXTENSION_MAXNAMELEN` minus the NUL).
pub const MAX_CHAIN_LEN: usize = 28;

/// First word of the comment on every rule we install; what `list_installed` greps for.
pub const COMMENT_TAG: &str = "isolated-runner";

/// Characters of the runner id kept in chain names.
const RUNNER_ID_CHARS: usize = 8;

/// IPv4 link-local, which holds every cloud's metadata service (S4).
pub const METADATA_V4: &str = "169.254.0.0/16";

/// AWS's IPv6 metadata address (S4, residual noted in the threat model).
pub const METADATA_V6: &str = "fd00:ec2::254/128";

/// Cloud service addresses outside link-local that answer every VM and must not answer a job
/// (M5). Dropped after the allowed endpoints, so a host resolver among them (Azure's DNS is
/// 168.63.129.16) stays open on port 53 alone.
/// - 168.63.129.16: Azure WireServer (VM agent, extension config and certificates, health
///   probes; also Azure's DNS on port 53).
/// - 100.100.100.200: Alibaba Cloud ECS metadata service (instance credentials).
pub const CLOUD_SERVICES_V4: [&str; 2] = ["168.63.129.16/32", "100.100.100.200/32"];

/// IPv6 cloud service addresses outside fd00:ec2::254 (M5).
/// - fd20:ce::254: Google Compute Engine's metadata server over IPv6 (service account tokens).
pub const CLOUD_SERVICES_V6: [&str; 1] = ["fd20:ce::254/128"];

/// Private ranges `block_private_networks` closes (M5): RFC 1918 and 100.64.0.0/10 (RFC 6598,
/// carrier-grade NAT, also used by Kubernetes and Tailscale).
pub const PRIVATE_V4: [&str; 4] = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
];

/// IPv6 unique local addresses (RFC 4193), closed by `block_private_networks`.
pub const PRIVATE_V6: [&str; 1] = ["fc00::/7"];

/// IPv6 link-local: never routed, so anything that reaches it from a job targets the host.
pub const LINK_LOCAL_V6: &str = "fe80::/10";

/// An address family, each with its own binary and tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// `iptables`.
    V4,
    /// `ip6tables`.
    V6,
}

impl Family {
    /// Both families, v4 first.
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    fn contains(self, ip: &IpAddr) -> bool {
        matches!(
            (self, ip),
            (Family::V4, IpAddr::V4(_)) | (Family::V6, IpAddr::V6(_))
        )
    }

    fn host_prefix(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }
}

/// Everything rule construction needs, gathered by the caller.
#[derive(Debug, Clone)]
pub struct PlanInput<'a> {
    /// Full runner id (goes into comments; its first 8 characters into the chain name).
    pub runner_id: &'a str,
    /// GitLab job id.
    pub job_id: u64,
    /// The job's bridge interface on the host (`br-…`).
    pub bridge_iface: &'a str,
    /// The job's own subnet.
    pub subnet: Ipv4Net,
    /// Where all runner bridges are carved from.
    pub address_pool: Ipv4Net,
    /// Endpoints the job may reach even on the host or with egress denied.
    pub allow: &'a [Endpoint],
    /// Addresses configured on the host right now.
    pub local_addrs: &'a [IpAddr],
    /// Internet policy for everything not decided earlier.
    pub egress: &'a Egress,
    /// Drop [`PRIVATE_V4`] and [`PRIVATE_V6`] (except `egress` list entries inside them).
    pub block_private: bool,
    /// Chain that sees forwarded traffic first, per family (`DOCKER-USER`, or `FORWARD` where
    /// Docker does not manage that family).
    pub forward_hook_v4: &'a str,
    /// As `forward_hook_v4`, for IPv6.
    pub forward_hook_v6: &'a str,
    /// Whether Docker keeps networks apart in this family with [`DOCKER_ISOLATION`] (the
    /// chain is listed): the job's chain then runs it itself, before the private ranges and
    /// the egress verdict (whose list entries return).
    pub docker_isolation_v4: bool,
    /// As `docker_isolation_v4`, for IPv6.
    pub docker_isolation_v6: bool,
}

/// Docker's first isolation chain: traffic from one of its bridges to another is dropped in
/// its second stage.
pub const DOCKER_ISOLATION: &str = "DOCKER-ISOLATION-STAGE-1";

/// The commands that install one job's policy, per family, in execution order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallPlan {
    /// The per-job chain name (same in both families).
    pub chain: String,
    /// The comment carried by every rule (`isolated-runner runner=<id> job=<id>`).
    pub comment: String,
    /// IPv4 commands.
    pub v4: FamilyPlan,
    /// IPv6 commands.
    pub v6: FamilyPlan,
}

impl InstallPlan {
    /// The same plan for a chain called `chain` (the comments, which name runner and job, stay).
    pub fn renamed(&self, chain: &str) -> InstallPlan {
        let rename = |fp: &FamilyPlan| {
            let map = |args: &Vec<String>| -> Vec<String> {
                args.iter()
                    .map(|a| {
                        if *a == self.chain {
                            chain.to_string()
                        } else {
                            a.clone()
                        }
                    })
                    .collect()
            };
            FamilyPlan {
                create: map(&fp.create),
                rules: fp.rules.iter().map(map).collect(),
                jumps: fp.jumps.iter().map(map).collect(),
            }
        };
        InstallPlan {
            chain: chain.to_string(),
            comment: self.comment.clone(),
            v4: rename(&self.v4),
            v6: rename(&self.v6),
        }
    }

    /// The commands of one family.
    pub fn family(&self, family: Family) -> &FamilyPlan {
        match family {
            Family::V4 => &self.v4,
            Family::V6 => &self.v6,
        }
    }
}

/// One family's commands: create the chain, fill it, then hook it in. Traffic meets the chain
/// only once the jumps exist, and the jumps come last, so there is never a half-built policy
/// in the path of a packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyPlan {
    /// `-N <chain>`.
    pub create: Vec<String>,
    /// `-A <chain> …`, in order.
    pub rules: Vec<Vec<String>>,
    /// `-I <hook> 1 -i <bridge> … -j <chain>`: forward hook first, then INPUT.
    pub jumps: Vec<Vec<String>>,
}

/// The chain name for a job: `IR-<runner8>-<jobid>`, at most 28 characters. Job ids longer
/// than 16 decimal digits (far beyond any GitLab instance today) switch to
/// `IR-<runner7>x<hex16>` so the name still fits; comments always carry the exact ids.
pub fn chain_name(runner_id: &str, job_id: u64) -> Result<String, Error> {
    validate_runner_id(runner_id)?;
    let short: String = runner_id.chars().take(RUNNER_ID_CHARS).collect();
    let decimal = format!("{CHAIN_PREFIX}{short}-{job_id}");
    if decimal.len() <= MAX_CHAIN_LEN {
        return Ok(decimal);
    }
    let shorter: String = runner_id.chars().take(RUNNER_ID_CHARS - 1).collect();
    Ok(format!("{CHAIN_PREFIX}{shorter}x{job_id:016x}"))
}

/// The job's other chain name, `IR-<runner7>y<hex16>`: a re-install builds the new chain under
/// the name the job is not using now, hooks it in before the old one, then removes the old one,
/// so the bridge is never without a chain (L5). Never longer than [`MAX_CHAIN_LEN`].
pub fn swap_chain_name(runner_id: &str, job_id: u64) -> Result<String, Error> {
    validate_runner_id(runner_id)?;
    let shorter: String = runner_id.chars().take(RUNNER_ID_CHARS - 1).collect();
    Ok(format!("{CHAIN_PREFIX}{shorter}y{job_id:016x}"))
}

/// Both names a job's chain can have: [`chain_name`] and [`swap_chain_name`].
pub fn chain_names(runner_id: &str, job_id: u64) -> Result<[String; 2], Error> {
    Ok([
        chain_name(runner_id, job_id)?,
        swap_chain_name(runner_id, job_id)?,
    ])
}

/// The comment on every rule of a job: findable with `iptables -S | grep`, parsed back by
/// [`parse_comment`].
pub fn comment(runner_id: &str, job_id: u64) -> String {
    format!("{COMMENT_TAG} runner={runner_id} job={job_id}")
}

/// Reads `(runner_id, job_id)` back from one of our comments.
pub fn parse_comment(text: &str) -> Option<(String, u64)> {
    let mut words = text.split_whitespace();
    if words.next()? != COMMENT_TAG {
        return None;
    }
    let runner = words.next()?.strip_prefix("runner=")?;
    let job = words.next()?.strip_prefix("job=")?.parse().ok()?;
    if words.next().is_some() || validate_runner_id(runner).is_err() {
        return None;
    }
    Some((runner.to_string(), job))
}

/// Runner ids go into chain names and comments, so only a safe alphabet is allowed: the same
/// one as everywhere else ([`crate::paths::check_runner_id`]).
pub fn validate_runner_id(runner_id: &str) -> Result<(), Error> {
    crate::paths::check_runner_id(runner_id)
        .map_err(|_| Error::InvalidRunnerId(runner_id.to_string()))
}

/// Interface names come from Docker; refuse anything iptables could misread as an option or a
/// wildcard (`+`), since a wildcard jump would filter other bridges too.
pub fn validate_iface(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidInterface(name.to_string()))
    }
}

/// Builds the full install plan.
///
/// Chain order (first match wins), the same chain for forwarded traffic and for traffic to
/// the host, per family:
/// 1. ESTABLISHED,RELATED: accept (replies to the runner's own connections into the job).
/// 2. `-o <bridge>`: accept. Intra-bridge traffic (job, sidecar, services). Never matches on the
///    INPUT path, which has no output interface, so it cannot open the gateway address.
/// 3. Metadata: drop 169.254.0.0/16 (v4), fd00:ec2::254 and fe80::/10 (v6). Before any accept,
///    so neither the allow list nor the egress policy can reopen it (S4).
/// 4. Allowed endpoints (GitLab, `clone_url`, mirror, resolvers): accept, even when they live
///    on the host. Then cloud service addresses outside link-local ([`CLOUD_SERVICES_V4`],
///    [`CLOUD_SERVICES_V6`]): drop (row 4b of the docs).
/// 5. Host: drop each address the host has now, then anything the kernel calls local,
///    broadcast (v4) or multicast at packet time (addresses added after install, H8).
/// 6. v4 only: drop the whole runner address pool (other jobs' bridges, J1); the job's own
///    subnet was already accepted in 2. Then Docker's isolation chain, where the family has
///    one ([`DOCKER_ISOLATION`]; row 6a of the docs). Then, with `block_private`: return for
///    `egress` list entries inside a private range and drop the private ranges
///    ([`PRIVATE_V4`], [`PRIVATE_V6`]) (row 6b of the docs).
/// 7. Egress: `Allow` returns to Docker's own rules; `Deny` drops; `AllowList` returns for the
///    listed CIDRs and drops the rest. Returning rather than accepting keeps Docker's
///    inter-network isolation in force for networks outside our pool.
pub fn plan_install(input: &PlanInput<'_>) -> Result<InstallPlan, Error> {
    validate_iface(input.bridge_iface)?;
    let chain = chain_name(input.runner_id, input.job_id)?;
    let comment = comment(input.runner_id, input.job_id);
    let v4 = plan_family(input, Family::V4, &chain, &comment);
    let v6 = plan_family(input, Family::V6, &chain, &comment);
    Ok(InstallPlan {
        chain,
        comment,
        v4,
        v6,
    })
}

fn plan_family(input: &PlanInput<'_>, family: Family, chain: &str, comment: &str) -> FamilyPlan {
    let rule = |matches: &[&str], verdict: &str| -> Vec<String> {
        let mut args = vec!["-A".to_string(), chain.to_string()];
        args.extend(matches.iter().map(|s| s.to_string()));
        args.extend(comment_args(comment));
        args.push("-j".to_string());
        args.push(verdict.to_string());
        args
    };
    let mut rules = Vec::new();

    rules.push(rule(
        &["-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED"],
        "ACCEPT",
    ));
    rules.push(rule(&["-o", input.bridge_iface], "ACCEPT"));

    match family {
        Family::V4 => rules.push(rule(&["-d", METADATA_V4], "DROP")),
        Family::V6 => {
            rules.push(rule(&["-d", METADATA_V6], "DROP"));
            rules.push(rule(&["-d", LINK_LOCAL_V6], "DROP"));
        }
    }

    for ep in input
        .allow
        .iter()
        .filter(|ep| family.contains(&ep.addr.ip()))
    {
        let dst = host_cidr(ep.addr.ip(), family);
        let port = ep.addr.port().to_string();
        let proto = match ep.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        rules.push(rule(&["-d", &dst, "-p", proto, "--dport", &port], "ACCEPT"));
    }

    let cloud: &[&str] = match family {
        Family::V4 => &CLOUD_SERVICES_V4,
        Family::V6 => &CLOUD_SERVICES_V6,
    };
    for net in cloud {
        rules.push(rule(&["-d", net], "DROP"));
    }

    let mut locals: Vec<IpAddr> = input
        .local_addrs
        .iter()
        .filter(|ip| family.contains(ip) && !covered_by_metadata_rules(ip))
        .copied()
        .collect();
    locals.sort();
    locals.dedup();
    for ip in locals {
        rules.push(rule(&["-d", &host_cidr(ip, family)], "DROP"));
    }
    // IPv6 has no broadcast address type (the kernel rejects the match).
    let kinds: &[&str] = match family {
        Family::V4 => &["LOCAL", "BROADCAST", "MULTICAST"],
        Family::V6 => &["LOCAL", "MULTICAST"],
    };
    for kind in kinds {
        rules.push(rule(&["-m", "addrtype", "--dst-type", kind], "DROP"));
    }

    if family == Family::V4 {
        rules.push(rule(&["-d", &input.address_pool.to_string()], "DROP"));
    }

    // Docker's isolation between its networks (other runners' outside our pool, the operator's
    // own) is reached from FORWARD through a jump Docker deletes and re-inserts on every
    // network it creates; in that gap the job's bridge met Docker's accept for its outgoing
    // traffic. Run from here, the isolation chain holds whatever Docker does to that jump
    // (its rules for each network are inserted and deleted one by one, never all at once).
    let isolation = match family {
        Family::V4 => input.docker_isolation_v4,
        Family::V6 => input.docker_isolation_v6,
    };
    if isolation {
        rules.push(rule(&[], DOCKER_ISOLATION));
    }

    if input.block_private {
        let private: Vec<IpNet> = match family {
            Family::V4 => PRIVATE_V4.iter().filter_map(|n| n.parse().ok()).collect(),
            Family::V6 => PRIVATE_V6.iter().filter_map(|n| n.parse().ok()).collect(),
        };
        // An explicit list entry inside a private range is the operator opening it.
        if let Egress::AllowList(cidrs) = input.egress {
            for net in cidrs
                .iter()
                .filter(|n| family.contains(&n.addr()))
                .filter(|n| private.iter().any(|p| p.contains(*n)))
            {
                rules.push(rule(&["-d", &net.trunc().to_string()], "RETURN"));
            }
        }
        for net in &private {
            rules.push(rule(&["-d", &net.to_string()], "DROP"));
        }
    }

    match input.egress {
        Egress::Allow => rules.push(rule(&[], "RETURN")),
        Egress::Deny => rules.push(rule(&[], "DROP")),
        Egress::AllowList(cidrs) => {
            for net in cidrs.iter().filter(|n| family.contains(&n.addr())) {
                rules.push(rule(&["-d", &net.trunc().to_string()], "RETURN"));
            }
            rules.push(rule(&[], "DROP"));
        }
    }

    let forward_hook = match family {
        Family::V4 => input.forward_hook_v4,
        Family::V6 => input.forward_hook_v6,
    };
    // With `DOCKER-USER` as the hook, FORWARD gets a jump of ours as well. Docker keeps its
    // `FORWARD -j DOCKER-USER` on top by deleting and re-inserting it each time it creates a
    // network (any network on the host, every job's start): in between, FORWARD has no way
    // into `DOCKER-USER`, and a job's new connection met Docker's own
    // `-i <bridge> ! -o <bridge> -j ACCEPT`, after which rule 1 kept it open. Our FORWARD
    // jump is inserted after the job's network (and so its Docker rules) exists: it sits
    // above them whatever Docker does to its own jumps later. Traffic passes the chain twice
    // when both are there; only new connections do (rule 1).
    let mut hooks = vec![forward_hook];
    if forward_hook != "FORWARD" {
        hooks.push("FORWARD");
    }
    hooks.push("INPUT");
    let jumps = hooks
        .iter()
        .map(|hook| {
            let mut args = vec![
                "-I".to_string(),
                hook.to_string(),
                "1".to_string(),
                "-i".to_string(),
                input.bridge_iface.to_string(),
            ];
            args.extend(comment_args(comment));
            args.push("-j".to_string());
            args.push(chain.to_string());
            args
        })
        .collect();

    FamilyPlan {
        create: vec!["-N".to_string(), chain.to_string()],
        rules,
        jumps,
    }
}

fn comment_args(comment: &str) -> [String; 4] {
    [
        "-m".to_string(),
        "comment".to_string(),
        "--comment".to_string(),
        comment.to_string(),
    ]
}

fn host_cidr(ip: IpAddr, family: Family) -> String {
    format!("{ip}/{}", family.host_prefix())
}

/// Local addresses already dropped by the metadata rules need no rule of their own.
fn covered_by_metadata_rules(ip: &IpAddr) -> bool {
    let (Ok(meta4), Ok(ll6)) = (
        METADATA_V4.parse::<Ipv4Net>(),
        LINK_LOCAL_V6.parse::<Ipv6Net>(),
    ) else {
        return false;
    };
    match ip {
        IpAddr::V4(v4) => meta4.contains(v4),
        IpAddr::V6(v6) => ll6.contains(v6),
    }
}

/// Splits one line of `iptables -S` into words, honouring the double quotes iptables puts
/// around comments.
pub fn split_rule_line(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_quotes = false;
    let mut has_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' if in_quotes => {
                if let Some(next) = chars.next() {
                    cur.push(next);
                }
            }
            '"' => {
                in_quotes = !in_quotes;
                has_word = true;
            }
            c if c.is_whitespace() && !in_quotes => {
                if has_word {
                    words.push(std::mem::take(&mut cur));
                    has_word = false;
                }
            }
            c => {
                cur.push(c);
                has_word = true;
            }
        }
    }
    if has_word {
        words.push(cur);
    }
    words
}

/// Commands as the input of one `iptables-restore --noflush` run: one transaction of the
/// filter table, so either every command takes effect or none does, and the host pays one
/// process (and one ruleset fetch) instead of one per command. `None` when a word cannot be
/// written so that iptables-restore reads it back unchanged (see [`restore_word`]); the caller
/// then runs the commands one by one.
pub fn restore_input<'a>(commands: impl IntoIterator<Item = &'a Vec<String>>) -> Option<String> {
    let mut out = String::from("*filter\n");
    for args in commands {
        let words: Option<Vec<String>> = args.iter().map(|a| restore_word(a)).collect();
        out.push_str(&words?.join(" "));
        out.push('\n');
    }
    out.push_str("COMMIT\n");
    Some(out)
}

/// One word of a restore line: as is, or in double quotes when it holds spaces (comments).
/// iptables-restore has no escape for a quote inside quotes and ends a command at a line
/// break, so words with quotes, backslashes or control characters, and empty words, are
/// refused rather than risk a different rule than the plan says. None of the runner's own
/// words has them (names and ids are validated, addresses are printed by us).
fn restore_word(word: &str) -> Option<String> {
    if word.is_empty()
        || word
            .chars()
            .any(|c| c == '"' || c == '\'' || c == '\\' || c.is_control())
    {
        return None;
    }
    if word.contains(char::is_whitespace) {
        Some(format!("\"{word}\""))
    } else {
        Some(word.to_string())
    }
}

/// A rule line seen in `iptables -S` output that jumps to one of our chains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JumpLine {
    /// Chain holding the jump (`DOCKER-USER`, `FORWARD`, `INPUT`).
    pub hook: String,
    /// Our chain it jumps to.
    pub target: String,
    /// The arguments after `-A <hook>`, ready for `-D <hook> …`.
    pub spec: Vec<String>,
    /// Runner and job from the comment, when present.
    pub owner: Option<Owner>,
}

/// `(runner_id, job_id)` read from a comment.
pub type Owner = (String, u64);

/// One of our chains seen in `iptables -S`, with its owner when a rule's comment names it.
pub type ChainLine = (String, Option<Owner>);

/// Parses `iptables -S` output into our chains (`-N IR-…`), with the owner found in any of
/// their rules' comments, and the jumps into them.
pub fn parse_listing(text: &str) -> (Vec<ChainLine>, Vec<JumpLine>) {
    let mut chains: Vec<ChainLine> = Vec::new();
    let mut jumps = Vec::new();
    for line in text.lines() {
        let words = split_rule_line(line);
        match words.as_slice() {
            [n, name]
                if n == "-N"
                    && name.starts_with(CHAIN_PREFIX)
                    && !chains.iter().any(|(c, _)| c == name) =>
            {
                chains.push((name.clone(), None));
            }
            [a, chain, rest @ ..] if a == "-A" => {
                let owner = comment_in(rest).and_then(|c| parse_comment(&c));
                if chain.starts_with(CHAIN_PREFIX) {
                    if let Some(entry) = chains.iter_mut().find(|(c, o)| c == chain && o.is_none())
                    {
                        entry.1 = owner;
                    }
                    continue;
                }
                let target = rest
                    .windows(2)
                    .find(|w| w[0] == "-j" || w[0] == "-g")
                    .map(|w| w[1].clone());
                if let Some(target) = target.filter(|t| t.starts_with(CHAIN_PREFIX)) {
                    jumps.push(JumpLine {
                        hook: chain.clone(),
                        target,
                        spec: rest.to_vec(),
                        owner,
                    });
                }
            }
            _ => {}
        }
    }
    (chains, jumps)
}

fn comment_in(words: &[String]) -> Option<String> {
    words
        .windows(2)
        .find(|w| w[0] == "--comment")
        .map(|w| w[1].clone())
}

/// Whether a CIDR belongs to a family (used by callers validating allow lists).
pub fn net_family(net: &IpNet) -> Family {
    match net {
        IpNet::V4(_) => Family::V4,
        IpNet::V6(_) => Family::V6,
    }
}

#[cfg(test)]
mod tests;
