//! Checks of job networking: room left in the address pool, the firewall rules in place.

use super::*;

/// /28 blocks of `pool` not touched by any of `used`.
pub fn free_blocks(pool: Ipv4Net, used: &[Ipv4Net]) -> (u64, u64) {
    let prefix = u32::from(pool.prefix_len()).min(28);
    let total = 1u64 << (28 - prefix);
    let start = u64::from(u32::from(pool.network())) >> 4;
    let end = start + total - 1;
    let mut ranges: Vec<(u64, u64)> = used
        .iter()
        .filter_map(|n| {
            let a = u64::from(u32::from(n.network())) >> 4;
            let b = u64::from(u32::from(n.broadcast())) >> 4;
            let (lo, hi) = (a.max(start), b.min(end));
            (lo <= hi).then_some((lo, hi))
        })
        .collect();
    ranges.sort();
    let mut taken = 0u64;
    let mut cur: Option<(u64, u64)> = None;
    for (lo, hi) in ranges {
        cur = match cur {
            Some((clo, chi)) if lo <= chi + 1 => Some((clo, chi.max(hi))),
            Some((clo, chi)) => {
                taken += chi - clo + 1;
                Some((lo, hi))
            }
            None => Some((lo, hi)),
        };
    }
    if let Some((clo, chi)) = cur {
        taken += chi - clo + 1;
    }
    (total - taken, total)
}

pub(super) fn network_address_pool(f: &Facts) -> Check {
    const ID: &str = "network.address_pool";
    let Some(config) = f.config.loaded() else {
        return skip(ID, "no loaded config", NO_CONFIG_HINT);
    };
    let Some(networks) = &f.networks else {
        return skip(ID, "docker not reachable", "see docker.reachable");
    };
    let used: Vec<Ipv4Net> = networks
        .iter()
        .flat_map(|n| n.subnets.iter())
        .filter_map(|s| s.parse().ok())
        .collect();
    let mut pools: Vec<Ipv4Net> = config
        .runners
        .iter()
        .filter(|r| r.docker.isolation.mode == IsolationMode::Dind)
        .map(|r| r.docker.isolation.address_pool)
        .collect();
    pools.dedup();
    if pools.is_empty() {
        return skip(ID, "no dind runner: no job networks", "");
    }
    let need = config.concurrent as u64;
    let parts = pools
        .into_iter()
        .map(|pool| {
            let (free, total) = free_blocks(pool, &used);
            let message =
                format!("{pool}: {free} of {total} /28 job networks free, concurrent = {need}");
            if free < need {
                Check::with(
                    ID,
                    Status::Fail,
                    message,
                    "widen [runners.docker.isolation] address_pool (a /16 holds 4096 jobs) or \
                     remove the networks that overlap it (`docker network ls`, `runner cleanup`)",
                )
            } else {
                Check::ok(ID, message)
            }
        })
        .collect();
    combine(ID, parts)
}

pub(super) fn netpolicy_rules(f: &Facts) -> Check {
    const ID: &str = "netpolicy.rules";
    let n = &f.netpolicy;
    if !n.needed {
        return skip(ID, "no dind runner: no egress rules to keep", "");
    }
    let installed = match &n.installed {
        Ok(i) => i,
        Err(e) => {
            return Check::with(
                ID,
                Status::Fail,
                format!("iptables cannot list rules: {e}"),
                "run the runner as root with iptables installed (the same backend Docker uses, \
                 iptables-nft on nf_tables hosts): without it no job's egress can be limited",
            );
        }
    };
    let bare: Vec<String> = n
        .running_jobs
        .iter()
        .filter(|(runner, job)| {
            !installed.iter().any(|r| {
                r.job_id == *job && (r.runner_id == *runner || runner.starts_with(&r.runner_id))
            })
        })
        .map(|(runner, job)| format!("job {job} of runner {runner}"))
        .collect();
    if !bare.is_empty() {
        return Check::with(
            ID,
            Status::Warn,
            format!("running without egress rules: {}", bare.join(", ")),
            "these jobs can reach the host and metadata addresses; check the runner's log for \
             netpolicy errors and see docs/network-policy.md",
        );
    }
    Check::ok(
        ID,
        format!(
            "iptables usable; {} job chain{} installed, every running job covered",
            installed.len(),
            if installed.len() == 1 { "" } else { "s" }
        ),
    )
}
