//! Networks and volumes on one daemon.

use super::{Docker, Error, NetworkInfo, NetworkSpec, VolumeInfo, api};
use bollard::models::{Ipam, IpamConfig, NetworkCreateRequest, VolumeCreateRequest};
use bollard::query_parameters as q;
use std::collections::HashMap;

impl Docker {
    /// Creates a bridge network.
    pub async fn create_network(&self, spec: &NetworkSpec) -> Result<String, Error> {
        let mut options = HashMap::new();
        if let Some(mtu) = spec.mtu {
            options.insert("com.docker.network.driver.mtu".to_string(), mtu.to_string());
        }
        let req = NetworkCreateRequest {
            name: spec.name.clone(),
            driver: Some("bridge".to_string()),
            ipam: Some(Ipam {
                driver: Some("default".to_string()),
                config: Some(vec![IpamConfig {
                    subnet: Some(spec.subnet.clone()),
                    gateway: Some(spec.gateway.clone()),
                    ..Default::default()
                }]),
                options: None,
            }),
            options: Some(options),
            labels: Some(spec.labels.clone()),
            ..Default::default()
        };
        let r = self.inner.create_network(req).await.map_err(api(format!(
            "create network {} ({})",
            spec.name, spec.subnet
        )))?;
        Ok(r.id)
    }

    /// Removes a network. Returns false if it was not there.
    pub async fn remove_network(&self, name: &str) -> Result<bool, Error> {
        match self.inner.remove_network(name).await {
            Ok(()) => Ok(true),
            Err(e) => {
                let e = api(format!("remove network {name}"))(e);
                if e.is_not_found() { Ok(false) } else { Err(e) }
            }
        }
    }

    /// Disconnects `container` from `network` (forced: it may be running). Not found (either
    /// one) is an error: the caller falls back to waiting for the container's removal.
    pub async fn disconnect_network(&self, network: &str, container: &str) -> Result<(), Error> {
        let req = bollard::models::NetworkDisconnectRequest {
            container: container.to_string(),
            force: Some(true),
        };
        self.inner
            .disconnect_network(network, req)
            .await
            .map_err(api(format!(
                "disconnect {container} from network {network}"
            )))
    }

    /// Networks matching every `key=value` label filter (all networks when `labels` is empty).
    pub async fn list_networks(&self, labels: &[String]) -> Result<Vec<NetworkInfo>, Error> {
        let filters = if labels.is_empty() {
            None
        } else {
            Some(HashMap::from([("label".to_string(), labels.to_vec())]))
        };
        let opts = q::ListNetworksOptions { filters };
        let r = self
            .inner
            .list_networks(Some(opts))
            .await
            .map_err(api("list networks"))?;
        Ok(r.into_iter()
            .map(|n| NetworkInfo {
                id: n.id.unwrap_or_default(),
                name: n.name.unwrap_or_default(),
                labels: n.labels.unwrap_or_default(),
                subnets: n
                    .ipam
                    .and_then(|i| i.config)
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|c| c.subnet)
                    .collect(),
            })
            .collect())
    }

    /// How many endpoints (containers) a network has now.
    pub async fn network_endpoints(&self, name: &str) -> Result<usize, Error> {
        let r = self
            .inner
            .inspect_network(name, None::<q::InspectNetworkOptions>)
            .await
            .map_err(api(format!("inspect network {name}")))?;
        Ok(r.containers.map_or(0, |c| c.len()))
    }

    /// The IPv4 gateway a network's IPAM config names, and the host bridge interface its
    /// options name. The default `bridge` usually has no IPAM gateway (its address is the one
    /// `docker0` has, `bip`), only the interface name.
    pub async fn network_bridge(
        &self,
        name: &str,
    ) -> Result<(Option<String>, Option<String>), Error> {
        let r = self
            .inner
            .inspect_network(name, None::<q::InspectNetworkOptions>)
            .await
            .map_err(api(format!("inspect network {name}")))?;
        let iface = r
            .options
            .as_ref()
            .and_then(|o| o.get("com.docker.network.bridge.name").cloned());
        let gateway = r
            .ipam
            .and_then(|i| i.config)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|c| c.gateway)
            .find(|g| g.parse::<std::net::Ipv4Addr>().is_ok());
        Ok((gateway, iface))
    }

    /// Creates a named volume.
    pub async fn create_volume(
        &self,
        name: &str,
        labels: &HashMap<String, String>,
    ) -> Result<(), Error> {
        let req = VolumeCreateRequest {
            name: Some(name.to_string()),
            labels: Some(labels.clone()),
            ..Default::default()
        };
        self.inner
            .create_volume(req)
            .await
            .map(|_| ())
            .map_err(api(format!("create volume {name}")))
    }

    /// Removes a volume. Returns false if it was not there.
    pub async fn remove_volume(&self, name: &str) -> Result<bool, Error> {
        let opts = q::RemoveVolumeOptions { force: true };
        match self.inner.remove_volume(name, Some(opts)).await {
            Ok(()) => Ok(true),
            Err(e) => {
                let e = api(format!("remove volume {name}"))(e);
                if e.is_not_found() { Ok(false) } else { Err(e) }
            }
        }
    }

    /// Volumes matching every `key=value` label filter.
    pub async fn list_volumes(&self, labels: &[String]) -> Result<Vec<VolumeInfo>, Error> {
        let opts = q::ListVolumesOptions {
            filters: Some(HashMap::from([("label".to_string(), labels.to_vec())])),
        };
        let r = self
            .inner
            .list_volumes(Some(opts))
            .await
            .map_err(api("list volumes"))?;
        Ok(r.volumes
            .unwrap_or_default()
            .into_iter()
            .map(|v| VolumeInfo {
                name: v.name,
                labels: v.labels,
            })
            .collect())
    }
}
