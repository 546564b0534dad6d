//! Host-side network rules per job bridge.
//!
//! Each job's bridge gets one iptables chain per family (`IR-<runner8>-<jobid>`), jumped to from
//! the forward hook (`DOCKER-USER`, or `FORWARD` where Docker does not manage that family), from
//! `FORWARD` too where the hook is `DOCKER-USER` (Docker re-inserts its own jump into it on every
//! network it creates, and that gap must not open the bridge), and from `INPUT`, all with
//! `-i <bridge>`. The chain keeps the job away from the host (H8), from other
//! jobs' bridges (J1) and from metadata addresses (S4), then applies the configured egress
//! policy. Every rule carries the comment `isolated-runner runner=<id> job=<id>`, so the reaper
//! and `runner cleanup` find rules of runners that died.
//!
//! The rules themselves are built by the pure functions in [`rules`]; this file only gathers
//! the inputs (local addresses, which hooks exist) and runs the commands. See
//! `docs/network-policy.md`.
//!
//! ```no_run
//! # async fn demo(cfg: &isolated_runner::config::IsolationConfig) -> Result<(), isolated_runner::netpolicy::Error> {
//! use isolated_runner::netpolicy::{Endpoint, JobNet, NetPolicy, Options};
//! let policy = NetPolicy::new(Options::new("a1b2c3d4e5", cfg.address_pool));
//! let job = JobNet {
//!     job_id: 42,
//!     bridge_iface: "br-0123456789ab".into(),
//!     subnet: "10.213.0.16/28".parse().unwrap(),
//!     allow: vec![Endpoint::tcp("192.0.2.10:443".parse().unwrap())],
//! };
//! policy.install(&job, &cfg.egress).await?; // after the bridge exists, before the job starts
//! policy.remove(42).await?; // on teardown; idempotent
//! # Ok(()) }
//! ```

pub mod rules;

use crate::config::Egress;
use ipnet::Ipv4Net;
use rules::{Family, InstallPlan, PlanInput};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Errors of the network policy.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An iptables command exited non-zero.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The full command line.
        command: String,
        /// Exit status.
        status: String,
        /// What the command printed on stderr (trimmed).
        stderr: String,
    },
    /// An iptables binary could not be started.
    #[error("could not run `{command}`")]
    Spawn {
        /// The full command line.
        command: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An iptables command did not finish in time (xtables lock held elsewhere, hung kernel).
    #[error("`{command}` did not finish within {waited:?}")]
    Timeout {
        /// The full command line.
        command: String,
        /// How long we waited.
        waited: Duration,
    },
    /// The runner id cannot be used in chain names and comments.
    #[error(
        "runner id {0:?} cannot be used in firewall rules (1-64 characters of A-Z, a-z, 0-9, '_', '-')"
    )]
    InvalidRunnerId(String),
    /// The bridge interface name is not a plain interface name.
    #[error("bridge interface name {0:?} is not a valid interface name")]
    InvalidInterface(String),
    /// The host's addresses could not be read.
    #[error("could not read the host's addresses")]
    LocalAddresses(#[source] std::io::Error),
    /// A command of the plan holds a word iptables-restore cannot be given unchanged (never
    /// for the runner's own plans: their names and addresses are validated).
    #[error("`{command}` cannot be passed to iptables-restore")]
    Unrestorable {
        /// The command, as a person would type it.
        command: String,
    },
    /// Installing failed, and rolling the half-installed rules back failed too.
    #[error("{install}; rolling back also failed: {rollback}")]
    RollbackFailed {
        /// The install error.
        install: Box<Error>,
        /// The rollback error.
        rollback: Box<Error>,
    },
}

/// A transport protocol for [`Endpoint`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP (DNS, for example).
    Udp,
}

/// One address and port a job may reach even when it is on the host or egress is denied:
/// GitLab, the cache, a registry mirror. Resolved to an IP by the caller, so a DNS answer
/// cannot widen the policy after it was installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Address and port.
    pub addr: SocketAddr,
    /// Protocol.
    pub protocol: Protocol,
}

impl Endpoint {
    /// A TCP endpoint.
    pub fn tcp(addr: SocketAddr) -> Self {
        Endpoint {
            addr,
            protocol: Protocol::Tcp,
        }
    }

    /// A UDP endpoint.
    pub fn udp(addr: SocketAddr) -> Self {
        Endpoint {
            addr,
            protocol: Protocol::Udp,
        }
    }
}

/// The network of one job, as the Docker backend created it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobNet {
    /// GitLab job id.
    pub job_id: u64,
    /// Host-side bridge interface (`br-<first 12 hex of the network id>`).
    pub bridge_iface: String,
    /// The network's subnet.
    pub subnet: Ipv4Net,
    /// Endpoints the job needs (GitLab, cache, mirror).
    pub allow: Vec<Endpoint>,
}

/// How to reach the firewall and who we are.
#[derive(Debug, Clone)]
pub struct Options {
    /// `iptables` binary (the one Docker uses; on this host the nf_tables one).
    pub iptables: PathBuf,
    /// `ip6tables` binary; `None` skips IPv6 (only for hosts without IPv6 support).
    pub ip6tables: Option<PathBuf>,
    /// This runner's id; its first 8 characters go into chain names.
    pub runner_id: String,
    /// Where all job bridges are carved from (`address_pool` of the isolation config).
    pub address_pool: Ipv4Net,
    /// Upper bound for one iptables call, including waiting for the xtables lock.
    pub command_timeout: Duration,
    /// `block_private_networks` of the isolation config: drop private ranges (M5).
    pub block_private_networks: bool,
}

impl Options {
    /// `iptables` and `ip6tables` from `PATH`, a 30 s command timeout.
    pub fn new(runner_id: impl Into<String>, address_pool: Ipv4Net) -> Self {
        Options {
            iptables: PathBuf::from("iptables"),
            ip6tables: Some(PathBuf::from("ip6tables")),
            runner_id: runner_id.into(),
            address_pool,
            command_timeout: Duration::from_secs(30),
            block_private_networks: false,
        }
    }
}

/// A job chain found on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstalledRule {
    /// Job id.
    pub job_id: u64,
    /// Runner id from the rules' comments; only the chain name's 8-character prefix when the
    /// chain is empty (a crash between creating and filling it).
    pub runner_id: String,
    /// Chain name.
    pub chain: String,
    /// Families holding the chain.
    pub families: Vec<Family>,
}

/// Installs and removes per-job rules. Cheap to share; holds no state besides its options.
#[derive(Debug, Clone)]
pub struct NetPolicy {
    opts: Options,
}

impl NetPolicy {
    /// A policy handle. Nothing is checked until the first call.
    pub fn new(opts: Options) -> Self {
        NetPolicy { opts }
    }

    /// This handle's options.
    pub fn options(&self) -> &Options {
        &self.opts
    }

    /// The chain name this runner uses for `job_id`.
    pub fn chain_for(&self, job_id: u64) -> Result<String, Error> {
        rules::chain_name(&self.opts.runner_id, job_id)
    }

    /// Installs the job's rules in both families. Call after the bridge exists and before any
    /// job container starts. Re-installing for the same job replaces the old rules.
    ///
    /// On error, whatever was installed is removed again before returning.
    ///
    /// # Cancel safety
    /// Not cancel safe: dropping the future halfway can leave a chain (with or without its
    /// jumps). Such chains carry our name and comment, so [`NetPolicy::remove`] or the reaper
    /// ([`NetPolicy::list_installed`]) removes them.
    pub async fn install(&self, job: &JobNet, egress: &Egress) -> Result<(), Error> {
        let [name, swap] = rules::chain_names(&self.opts.runner_id, job.job_id)?;
        // One listing per family says both what is there already and which forward hook
        // Docker manages.
        let listings = self.listings().await?;
        let plan = self.plan_with(job, egress, &listings).await?;
        let present = |chain: &str| {
            listings.iter().any(|(_, text)| {
                let (listed, jumps) = rules::parse_listing(text);
                listed.iter().any(|(c, _)| c == chain) || jumps.iter().any(|j| j.target == chain)
            })
        };
        let (had_name, had_swap) = (present(&name), present(&swap));
        if !had_name {
            self.apply_or_roll_back(&plan, &name).await?;
            // A swap chain left by a re-install that crashed midway: the new chain is in front.
            if had_swap {
                self.remove_chain(&swap).await?;
            }
        } else {
            // A re-install (a leftover of an earlier attempt, a slot's chain): the new chain is
            // built under the swap name and hooked in ahead of the old one, the old one goes,
            // and the new one takes the job's name (`-E` keeps the jumps pointing at it). The
            // bridge is filtered at every step (L5).
            if had_swap {
                self.remove_chain(&swap).await?;
            }
            self.apply_or_roll_back(&plan.renamed(&swap), &swap).await?;
            self.remove_chain(&name).await?;
            for family in self.families() {
                self.run(family, &["-E".to_string(), swap.clone(), name.clone()])
                    .await?;
            }
        }
        tracing::debug!(job.id = job.job_id, chain = %name, bridge = %job.bridge_iface, "network policy installed");
        Ok(())
    }

    /// Applies `plan` (whose chain is `chain`); on error removes what it installed.
    async fn apply_or_roll_back(&self, plan: &InstallPlan, chain: &str) -> Result<(), Error> {
        match self.apply(plan).await {
            Ok(()) => Ok(()),
            Err(install) => match self.remove_chain(chain).await {
                Ok(()) => Err(install),
                Err(rollback) => Err(Error::RollbackFailed {
                    install: Box::new(install),
                    rollback: Box::new(rollback),
                }),
            },
        }
    }

    /// `iptables -S` of every family, taken side by side.
    async fn listings(&self) -> Result<Vec<(Family, String)>, Error> {
        let done =
            futures::future::join_all(self.families().into_iter().map(|family| async move {
                let text = self.run(family, &["-S".to_string()]).await?;
                Ok::<_, Error>((family, text))
            }))
            .await;
        done.into_iter().collect()
    }

    /// Removes one chain name and its jumps from every family.
    async fn remove_chain(&self, chain: &str) -> Result<(), Error> {
        self.remove_chains(&[chain]).await.map(|_| ())
    }

    /// Removes each of `names` and the jumps to it from every family ([`NetPolicy::remove_in`]);
    /// returns whether any of it was there. The families are separate tables driven by
    /// separate processes, so they go side by side (a job's teardown waits for this before its
    /// network goes); each finishes even when the other fails.
    async fn remove_chains(&self, names: &[&str]) -> Result<bool, Error> {
        let done = futures::future::join_all(
            self.families()
                .into_iter()
                .map(|family| self.remove_in(family, names)),
        )
        .await;
        done.into_iter()
            .try_fold(false, |removed, r| r.map(|here| removed | here))
    }

    /// Removes each of `names` and the jumps to it in one family; returns whether any of it was
    /// there. One listing tells what is there, and one restore transaction takes it all out
    /// (the jumps, then each chain's rules, then the chain: one process where a job's teardown
    /// ran four per family). When that transaction fails, nothing of it took effect:
    /// usually another remover (the job's own teardown, a sweep by another runner on this
    /// host, `runner cleanup`) took part of it first, so the commands run one by one against
    /// a fresh listing, where [`NetPolicy::remove_listed`] tells a lost race from an error.
    async fn remove_in(&self, family: Family, names: &[&str]) -> Result<bool, Error> {
        let text = self.run(family, &["-S".to_string()]).await?;
        let (chains, jumps) = rules::parse_listing(&text);
        let mut batch: Vec<Vec<String>> = Vec::new();
        for name in names {
            for jump in jumps.iter().filter(|j| j.target == *name) {
                let mut args = vec!["-D".to_string(), jump.hook.clone()];
                args.extend(jump.spec.iter().cloned());
                batch.push(args);
            }
            if chains.iter().any(|(c, _)| c == name) {
                // The nf_tables backend refuses to delete a chain that still has rules.
                batch.push(vec!["-F".to_string(), name.to_string()]);
                batch.push(vec!["-X".to_string(), name.to_string()]);
            }
        }
        if batch.is_empty() {
            return Ok(false);
        }
        // A jump someone else wrote may hold words restore cannot be given: one by one then.
        if let Some(input) = rules::restore_input(&batch) {
            match self.restore(family, &input).await {
                Ok(()) => return Ok(true),
                Err(e) => {
                    tracing::debug!(error = %e, "removing in one transaction failed; one command at a time");
                }
            }
        }
        let text = self.run(family, &["-S".to_string()]).await?;
        let (chains, jumps) = rules::parse_listing(&text);
        let mut removed = false;
        for name in names {
            removed |= self.remove_listed(family, name, &chains, &jumps).await?;
        }
        Ok(removed)
    }

    /// Builds the plan [`NetPolicy::install`] would run, reading the host's addresses and
    /// hooks but changing nothing (used by `doctor` and the docs).
    pub async fn plan(&self, job: &JobNet, egress: &Egress) -> Result<InstallPlan, Error> {
        let listings = self.listings().await?;
        self.plan_with(job, egress, &listings).await
    }

    /// [`NetPolicy::plan`] from listings already taken ([`NetPolicy::listings`]): a family's
    /// forward hook is `DOCKER-USER` when Docker manages that family (the chain is listed),
    /// `FORWARD` otherwise (also for a family not listed: no ip6tables).
    async fn plan_with(
        &self,
        job: &JobNet,
        egress: &Egress,
        listings: &[(Family, String)],
    ) -> Result<InstallPlan, Error> {
        // Whether the family's listing declares `chain` (Docker made it).
        let declares = |family: Family, chain: &str| {
            let line = format!("-N {chain}");
            listings
                .iter()
                .any(|(f, text)| *f == family && text.lines().any(|l| l == line))
        };
        let hook = |family: Family| {
            if declares(family, "DOCKER-USER") {
                "DOCKER-USER"
            } else {
                "FORWARD"
            }
        };
        let (hook_v4, hook_v6) = (hook(Family::V4), hook(Family::V6));
        let isolation = |family: Family| declares(family, rules::DOCKER_ISOLATION);
        let locals = local_addresses().await?;
        rules::plan_install(&PlanInput {
            runner_id: &self.opts.runner_id,
            job_id: job.job_id,
            bridge_iface: &job.bridge_iface,
            subnet: job.subnet,
            address_pool: self.opts.address_pool,
            allow: &job.allow,
            local_addrs: &locals,
            egress,
            block_private: self.opts.block_private_networks,
            forward_hook_v4: hook_v4,
            forward_hook_v6: hook_v6,
            docker_isolation_v4: isolation(Family::V4),
            docker_isolation_v6: isolation(Family::V6),
        })
    }

    /// Installs `plan` as one restore transaction per family: the chain, its rules and the
    /// jumps into it reach the kernel together, so no packet meets a chain still being built,
    /// and a job's slot costs the host two iptables processes instead of one per rule (~40,
    /// each fetching the whole ruleset). The families go side by side; when one fails, the
    /// caller removes what the other installed.
    async fn apply(&self, plan: &InstallPlan) -> Result<(), Error> {
        let done =
            futures::future::join_all(self.families().into_iter().map(|family| async move {
                let fp = plan.family(family);
                let commands = std::iter::once(&fp.create)
                    .chain(&fp.rules)
                    .chain(&fp.jumps);
                match rules::restore_input(commands.clone()) {
                    Some(input) => self.restore(family, &input).await,
                    None => Err(Error::Unrestorable {
                        command: commands
                            .map(|c| format!("{} {}", self.binary(family).display(), c.join(" ")))
                            .collect::<Vec<_>>()
                            .join("; "),
                    }),
                }
            }))
            .await;
        done.into_iter().collect()
    }

    /// Removes this runner's rules for `job_id` from both families. Removing rules that are
    /// not there is not an error.
    pub async fn remove(&self, job_id: u64) -> Result<(), Error> {
        // Either name: a re-install swaps between them (usually one is there).
        let [a, b] = rules::chain_names(&self.opts.runner_id, job_id)?;
        self.remove_chains(&[&a, &b]).await.map(|_| ())
    }

    /// Removes one chain found by [`NetPolicy::list_installed`], whichever runner made it.
    /// Returns false when nothing of it was left (its owner removed it since the listing), or
    /// when another remover deleted it while this call was at it.
    pub async fn remove_installed(&self, rule: &InstalledRule) -> Result<bool, Error> {
        self.remove_chains(&[&rule.chain]).await
    }

    /// Removes every chain of `runner_id` (this runner or a dead one). Returns what it removed.
    pub async fn remove_all_for_runner(
        &self,
        runner_id: &str,
    ) -> Result<Vec<InstalledRule>, Error> {
        rules::validate_runner_id(runner_id)?;
        let mut removed = Vec::new();
        for rule in self.list_installed().await? {
            let by_name = rules::chain_names(runner_id, rule.job_id)
                .map(|c| c.contains(&rule.chain))
                .unwrap_or(false);
            if (rule.runner_id == runner_id || by_name) && self.remove_installed(&rule).await? {
                removed.push(rule);
            }
        }
        Ok(removed)
    }

    /// Every job chain on the host made by any isolated-runner (any runner id), with its owner.
    pub async fn list_installed(&self) -> Result<Vec<InstalledRule>, Error> {
        let mut found: Vec<InstalledRule> = Vec::new();
        for family in self.families() {
            let text = self.run(family, &["-S".to_string()]).await?;
            let (chains, jumps) = rules::parse_listing(&text);
            for (chain, owner) in chains {
                // Empty chains have no comment: fall back to the jumps, then to the name.
                let owner = owner
                    .or_else(|| {
                        jumps
                            .iter()
                            .find(|j| j.target == chain)
                            .and_then(|j| j.owner.clone())
                    })
                    .or_else(|| parse_chain_name(&chain));
                let Some((runner_id, job_id)) = owner else {
                    continue;
                };
                match found.iter_mut().find(|r| r.chain == chain) {
                    Some(existing) => existing.families.push(family),
                    None => found.push(InstalledRule {
                        job_id,
                        runner_id,
                        chain,
                        families: vec![family],
                    }),
                }
            }
        }
        Ok(found)
    }

    /// Removes `chain` and the jumps to it in one family, one command at a time, from a listing
    /// of `family` already taken: only what the listing shows is removed, and an operation that
    /// fails is checked against a new one. Returns whether any of it was there; false too when
    /// a concurrent remover deleted the chain first.
    async fn remove_listed(
        &self,
        family: Family,
        chain: &str,
        chains: &[rules::ChainLine],
        jumps: &[rules::JumpLine],
    ) -> Result<bool, Error> {
        let present =
            chains.iter().any(|(c, _)| c == chain) || jumps.iter().any(|j| j.target == chain);
        for jump in jumps.iter().filter(|j| j.target == chain) {
            let mut args = vec!["-D".to_string(), jump.hook.clone()];
            args.extend(jump.spec.iter().cloned());
            if let Err(e) = self.run(family, &args).await {
                // A concurrent remove may have won the race; only a jump still present is an
                // error.
                let again = self.run(family, &["-S".to_string()]).await?;
                let (_, still) = rules::parse_listing(&again);
                if still.contains(jump) {
                    return Err(e);
                }
            }
        }
        if chains.iter().any(|(c, _)| c == chain) {
            // The nf_tables backend refuses to delete a chain that still has rules.
            for op in ["-F", "-X"] {
                if let Err(e) = self.run(family, &[op.to_string(), chain.to_string()]).await {
                    // Another remover (the job's own teardown, a sweep by another runner on
                    // this host, `runner cleanup`) may have deleted the chain since the
                    // listing: only a chain still there is an error. Then it removed the
                    // chain, not us.
                    let again = self.run(family, &["-S".to_string()]).await?;
                    let (still, _) = rules::parse_listing(&again);
                    if still.iter().any(|(c, _)| c == chain) {
                        return Err(e);
                    }
                    return Ok(false);
                }
            }
        }
        Ok(present)
    }

    fn families(&self) -> Vec<Family> {
        match self.opts.ip6tables {
            Some(_) => Family::ALL.to_vec(),
            None => vec![Family::V4],
        }
    }

    fn binary(&self, family: Family) -> &std::path::Path {
        match (family, &self.opts.ip6tables) {
            (Family::V6, Some(p)) => p,
            _ => &self.opts.iptables,
        }
    }

    /// Feeds `input` to `<iptables>-restore -w … --noflush` (the restore binary beside the
    /// family's iptables: `iptables-nft` has `iptables-nft-restore`): one transaction of the
    /// filter table, leaving every rule it does not name alone. When the kernel or the parser
    /// refuses a line, nothing of the input took effect and the error quotes that line.
    async fn restore(&self, family: Family, input: &str) -> Result<(), Error> {
        let bin = restore_binary(self.binary(family));
        match self
            .exec(&bin, &["--noflush".to_string()], Some(input))
            .await
        {
            Err(Error::Command {
                command,
                status,
                stderr,
            }) => Err(Error::Command {
                stderr: match failed_line(&stderr, input) {
                    Some(line) => format!("{stderr} (line: {line})"),
                    None => stderr,
                },
                command,
                status,
            }),
            done => done.map(|_| ()),
        }
    }

    /// Runs one iptables command with `-w` and returns its stdout.
    async fn run(&self, family: Family, args: &[String]) -> Result<String, Error> {
        self.exec(self.binary(family), args, None).await
    }

    /// Runs `bin -w <secs> args…`, with `input` on its stdin (without one, stdin is empty),
    /// within the command timeout, and returns its stdout. Argument vectors only: no shell ever
    /// sees a job-derived value.
    async fn exec(
        &self,
        bin: &std::path::Path,
        args: &[String],
        input: Option<&str>,
    ) -> Result<String, Error> {
        use tokio::io::AsyncWriteExt;
        let wait = self.opts.command_timeout.as_secs().max(1).to_string();
        let command = render_command(bin, &wait, args);
        let mut cmd = tokio::process::Command::new(bin);
        cmd.arg("-w").arg(&wait).args(args).kill_on_drop(true);
        cmd.stdin(if input.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
        let run = async {
            let mut child = cmd.spawn()?;
            // A restore that stops reading early (a parse error) closes the pipe: its exit
            // status and stderr say why, so a failed write is only reported when it did not.
            let written = match (child.stdin.take(), input) {
                (Some(mut stdin), Some(text)) => stdin.write_all(text.as_bytes()).await,
                _ => Ok(()),
            };
            Ok::<_, std::io::Error>((written, child.wait_with_output().await?))
        };
        let (written, out) = match tokio::time::timeout(self.opts.command_timeout, run).await {
            Err(_) => {
                return Err(Error::Timeout {
                    command,
                    waited: self.opts.command_timeout,
                });
            }
            Ok(Err(source)) => return Err(Error::Spawn { command, source }),
            Ok(Ok(r)) => r,
        };
        if !out.status.success() {
            return Err(Error::Command {
                command,
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        if let Err(source) = written {
            return Err(Error::Spawn { command, source });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// The restore binary of an iptables binary: `iptables` → `iptables-restore`, and so for
/// `ip6tables`, `iptables-nft`, `iptables-legacy`, in the same directory when it has one.
fn restore_binary(bin: &std::path::Path) -> PathBuf {
    let mut name = bin.as_os_str().to_os_string();
    name.push("-restore");
    PathBuf::from(name)
}

/// The input line iptables-restore names in `Error occurred at line: N` (1-based).
fn failed_line<'a>(stderr: &str, input: &'a str) -> Option<&'a str> {
    let n: usize = stderr
        .split("line: ")
        .nth(1)?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    input.lines().nth(n.checked_sub(1)?)
}

/// The command line as a person would type it, for error messages.
fn render_command(bin: &std::path::Path, wait: &str, args: &[String]) -> String {
    let mut parts = vec![
        bin.display().to_string(),
        "-w".to_string(),
        wait.to_string(),
    ];
    parts.extend(args.iter().map(|a| {
        if a.is_empty() || a.contains(char::is_whitespace) {
            format!("\"{a}\"")
        } else {
            a.clone()
        }
    }));
    parts.join(" ")
}

/// `IR-<runner8>-<decimal>`, `IR-<runner7>x<hex16>` or `IR-<runner7>y<hex16>` (the swap name)
/// back to (runner prefix, job id).
fn parse_chain_name(chain: &str) -> Option<(String, u64)> {
    let rest = chain.strip_prefix(rules::CHAIN_PREFIX)?;
    if let Some((runner, Ok(id))) = rest.rsplit_once('-').map(|(r, j)| (r, j.parse())) {
        return Some((runner.to_string(), id));
    }
    // The hex part has neither letter, so the last one is the separator.
    ['x', 'y'].iter().find_map(|sep| {
        let (runner, hex) = rest.rsplit_once(*sep)?;
        Some((runner.to_string(), u64::from_str_radix(hex, 16).ok()?))
    })
}

/// Every address configured on the host now, read from the kernel (getifaddrs).
pub async fn local_addresses() -> Result<Vec<IpAddr>, Error> {
    let joined = tokio::task::spawn_blocking(|| {
        let mut out = Vec::new();
        for ifa in nix::ifaddrs::getifaddrs().map_err(std::io::Error::from)? {
            let Some(addr) = ifa.address else { continue };
            if let Some(v4) = addr.as_sockaddr_in() {
                out.push(IpAddr::V4(v4.ip()));
            } else if let Some(v6) = addr.as_sockaddr_in6() {
                out.push(IpAddr::V6(v6.ip()));
            }
        }
        Ok::<_, std::io::Error>(out)
    })
    .await
    .map_err(|e| Error::LocalAddresses(std::io::Error::other(e)))?;
    joined.map_err(Error::LocalAddresses)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_names_parse_back() {
        assert_eq!(
            parse_chain_name("IR-abcdef12-4242"),
            Some(("abcdef12".to_string(), 4242))
        );
        let huge = rules::chain_name("abcdefgh", u64::MAX).unwrap();
        assert_eq!(
            parse_chain_name(&huge),
            Some(("abcdefg".to_string(), u64::MAX))
        );
        assert_eq!(parse_chain_name("DOCKER-USER"), None);
        for job in [7, u64::MAX] {
            let swap = rules::swap_chain_name("ab-xy_cd", job).unwrap();
            assert!(swap.len() <= rules::MAX_CHAIN_LEN, "{swap}");
            assert_eq!(parse_chain_name(&swap), Some(("ab-xy_c".to_string(), job)));
        }
    }

    #[test]
    fn commands_render_with_quotes() {
        let s = render_command(
            std::path::Path::new("iptables"),
            "30",
            &["-A".into(), "X".into(), "--comment".into(), "a b".into()],
        );
        assert_eq!(s, "iptables -w 30 -A X --comment \"a b\"");
    }

    #[tokio::test]
    async fn reads_loopback_among_local_addresses() {
        let addrs = local_addresses().await.unwrap();
        assert!(addrs.contains(&IpAddr::from([127, 0, 0, 1])), "{addrs:?}");
    }
}
