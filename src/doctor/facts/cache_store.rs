//! The shared cache store of each `[[runners]]` entry that has one: one small object written,
//! read back and deleted through the same client jobs use (`cache::probe`). The only write
//! `runner doctor` makes outside the host, under `isolated-runner-doctor/` in the runner's own
//! prefix, removed at once.

use crate::cache::probe::{self, ProbeFailure, ProbeReport};
use crate::config::{CacheStoreType, Config};
use std::time::Duration;

/// One entry's store and how the probe went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheStoreFact {
    /// The entry's `name`.
    pub runner: String,
    /// `s3`, `gcs` or `azure`.
    pub kind: &'static str,
    /// Where the client goes (`http(s)://ServerAddress` or the cloud's endpoint).
    pub address: String,
    /// `BucketName` (Azure: `ContainerName`).
    pub bucket: String,
    /// S3: the region requests are signed for (`BucketLocation`, `us-east-1` when empty).
    pub region: Option<String>,
    /// S3 `Insecure = true`: plain HTTP.
    pub insecure: bool,
    /// The address is this host (plain HTTP does not cross a network).
    pub loopback: bool,
    /// `None`: not probed (an entry without a token serves `runner exec`, which never uses
    /// the store).
    pub probe: Option<Result<ProbeReport, ProbeFailure>>,
}

/// Probes the store of every entry that has one, each request bounded by `timeout`.
pub(super) async fn gather_cache_stores(config: &Config, timeout: Duration) -> Vec<CacheStoreFact> {
    let mut out = Vec::new();
    for r in &config.runners {
        let Some(store) = &r.cache.store else {
            continue;
        };
        let address = probe::store_address(store);
        let loopback = url::Url::parse(&address).is_ok_and(|u| match u.host() {
            Some(url::Host::Ipv4(a)) => a.is_loopback(),
            Some(url::Host::Ipv6(a)) => a.is_loopback(),
            Some(url::Host::Domain(d)) => d == "localhost",
            None => false,
        });
        let s3 = store.kind == CacheStoreType::S3;
        let result = if r.token.expose().is_empty() {
            None
        } else {
            Some(probe::probe(store, r.token.expose(), timeout).await)
        };
        out.push(CacheStoreFact {
            runner: r.name.clone(),
            kind: store.kind.as_str(),
            bucket: probe::bucket_name(store).to_string(),
            region: s3.then(|| {
                let l = store.s3.bucket_location.trim();
                if l.is_empty() { "us-east-1" } else { l }.to_string()
            }),
            insecure: s3 && store.s3.insecure,
            loopback,
            address,
            probe: result,
        });
    }
    out
}
