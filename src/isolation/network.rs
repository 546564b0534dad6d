//! Carving a job's private bridge: a /28 of `address_pool` that overlaps nothing on the
//! engine, with the host's MTU.

use super::Error;
use super::naming::{Naming, detached, other};
use crate::docker::{Docker, NetworkSpec};
use ipnet::Ipv4Net;
use std::collections::HashSet;
use std::net::Ipv4Addr;
use tokio_util::task::TaskTracker;

/// Serialises subnet carving inside this process; other processes are handled by the
/// daemon's overlap check and a retry.
static CARVE_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A job network that was created.
#[derive(Debug, Clone)]
pub struct CarvedNetwork {
    /// Network name.
    pub name: String,
    /// Its /28.
    pub subnet: Ipv4Net,
    /// The job or slot id its labels (and its firewall chain) carry: the id of whoever made it,
    /// which a network kept for reuse keeps under later slots.
    pub label_id: u64,
    /// Unix time of its deadline label (the job's or slot's that made it): a network kept for
    /// reuse serves only slots whose whole life ends before it (`pool.rs`, "Kept networks").
    pub deadline: u64,
}

impl CarvedNetwork {
    /// The gateway (first host address).
    pub fn gateway(&self) -> Ipv4Addr {
        nth_host(self.subnet, 1)
    }
    /// The sidecar's fixed address (second host address).
    pub fn sidecar_ip(&self) -> Ipv4Addr {
        nth_host(self.subnet, 2)
    }
}

fn nth_host(net: Ipv4Net, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()).saturating_add(n))
}

/// Creates the job's private bridge: a /28 from `pool` that overlaps no network on the engine,
/// retrying when another process takes the same block at the same moment.
pub async fn carve_network(
    docker: &Docker,
    inflight: &TaskTracker,
    naming: &Naming,
    pool: Ipv4Net,
    mtu: Option<u32>,
) -> Result<CarvedNetwork, Error> {
    let _guard = CARVE_LOCK.lock().await;
    let blocks: Vec<Ipv4Net> = pool
        .subnets(28.max(pool.prefix_len()))
        .map_err(|e| Error::Other {
            context: format!("address pool {pool}"),
            detail: e.to_string(),
        })?
        .collect();
    if blocks.is_empty() {
        return Err(Error::Other {
            context: format!("address pool {pool}"),
            detail: "holds no /28".to_string(),
        });
    }
    let name = naming.name("net");
    let mut refused: HashSet<Ipv4Net> = HashSet::new();
    // A random start spreads concurrent runners over the pool, so they rarely race for a block.
    let start = (uuid::Uuid::new_v4().as_u128() % blocks.len() as u128) as usize;
    for _attempt in 0..8 {
        let used: Vec<Ipv4Net> = docker
            .list_networks(&[])
            .await
            .map_err(other("list networks"))?
            .into_iter()
            .flat_map(|n| n.subnets)
            .filter_map(|s| s.parse::<Ipv4Net>().ok())
            .collect();
        let free = (0..blocks.len())
            .map(|i| blocks[(start + i) % blocks.len()])
            .find(|b| !refused.contains(b) && !used.iter().any(|u| overlaps(*u, *b)));
        let Some(subnet) = free else {
            return Err(Error::Other {
                context: format!("address pool {pool}"),
                detail: "no free /28 left; raise the pool or lower concurrency".to_string(),
            });
        };
        let carved = CarvedNetwork {
            name: name.clone(),
            subnet,
            label_id: naming.job_id,
            deadline: naming.deadline,
        };
        let spec = NetworkSpec {
            name: name.clone(),
            subnet: subnet.to_string(),
            gateway: carved.gateway().to_string(),
            mtu,
            labels: naming.labels("network"),
        };
        let d = docker.clone();
        match detached(inflight, async move { d.create_network(&spec).await }).await {
            Ok(_) => return Ok(carved),
            Err(e)
                if e.daemon_message()
                    .is_some_and(|m| m.contains("overlap") || m.contains("in use")) =>
            {
                refused.insert(subnet);
            }
            Err(e) => return Err(other(format!("create network {name}"))(e)),
        }
    }
    Err(Error::Other {
        context: format!("create network {name}"),
        detail: "every candidate /28 was taken concurrently; retry".to_string(),
    })
}

fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The MTU of the host's default route interface, if it can be read.
pub async fn host_mtu() -> Option<u32> {
    let routes = tokio::fs::read_to_string("/proc/net/route").await.ok()?;
    let iface = routes.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 2 && f[1] == "00000000").then(|| f[0].to_string())
    })?;
    if iface.contains('/') || iface.contains("..") {
        return None;
    }
    tokio::fs::read_to_string(format!("/sys/class/net/{iface}/mtu"))
        .await
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carved_addresses() {
        let c = CarvedNetwork {
            name: "n".into(),
            subnet: "10.213.0.16/28".parse().unwrap(),
            label_id: 1,
            deadline: 0,
        };
        assert_eq!(c.gateway(), Ipv4Addr::new(10, 213, 0, 17));
        assert_eq!(c.sidecar_ip(), Ipv4Addr::new(10, 213, 0, 18));
        assert!(overlaps(
            "10.0.0.0/8".parse().unwrap(),
            "10.1.0.0/28".parse().unwrap()
        ));
        assert!(!overlaps(
            "10.0.0.0/28".parse().unwrap(),
            "10.0.0.16/28".parse().unwrap()
        ));
    }
}
