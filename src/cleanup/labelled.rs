//! The one Docker listing of the sweepers: every container, volume and network carrying some
//! labels, as one list in removal order, and the one way to remove such an object. The start-up
//! reaper ([`super::reaper`]) and `runner cleanup` ([`super::plan`]) both list and remove through
//! here, so what counts as "ours" and the order things go in is written once.

use super::Kind;
use crate::docker::{self, Docker, LABEL_ROLE};
use std::collections::HashMap;

/// A container, volume or network found by its labels.
#[derive(Debug, Clone)]
pub struct Labelled {
    /// [`Kind::Container`], [`Kind::Volume`] or [`Kind::Network`].
    pub kind: Kind,
    /// What Docker removes it by: a container's id, a volume's or network's name.
    pub handle: String,
    /// Its name, as shown.
    pub name: String,
    /// All its labels.
    pub labels: HashMap<String, String>,
}

impl Labelled {
    /// `container ir-r-1-sidecar`, as the reaper's report shows it.
    pub fn describe(&self) -> String {
        format!("{} {}", self.kind.as_str(), self.name)
    }
}

/// Every container, volume and network matching all `filters` (`key=value` label filters):
/// containers first with sidecars last among them (as in teardown: a job's containers use the
/// sidecar's daemon), then volumes, then networks (a network goes once no container uses it).
/// A listing that fails is a line in the second list; the others are still listed.
pub async fn list_labelled(docker: &Docker, filters: &[String]) -> (Vec<Labelled>, Vec<String>) {
    let mut found = Vec::new();
    let mut failures = Vec::new();
    match docker.list_containers(filters).await {
        Ok(mut cs) => {
            cs.sort_by_key(|c| c.labels.get(LABEL_ROLE).map(String::as_str) == Some("sidecar"));
            found.extend(cs.into_iter().map(|c| Labelled {
                kind: Kind::Container,
                handle: c.id,
                name: c.name,
                labels: c.labels,
            }));
        }
        Err(e) => failures.push(e.to_string()),
    }
    match docker.list_volumes(filters).await {
        Ok(vs) => found.extend(vs.into_iter().map(|v| Labelled {
            kind: Kind::Volume,
            handle: v.name.clone(),
            name: v.name,
            labels: v.labels,
        })),
        Err(e) => failures.push(e.to_string()),
    }
    match docker.list_networks(filters).await {
        Ok(ns) => found.extend(ns.into_iter().map(|n| Labelled {
            kind: Kind::Network,
            handle: n.name.clone(),
            name: n.name,
            labels: n.labels,
        })),
        Err(e) => failures.push(e.to_string()),
    }
    (found, failures)
}

/// Removes one listed object (a container with its anonymous volumes). `Ok(false)`: it was
/// already gone.
pub async fn remove(docker: &Docker, kind: Kind, handle: &str) -> Result<bool, docker::Error> {
    match kind {
        Kind::Container => docker.remove_container(handle).await,
        Kind::Volume => docker.remove_volume(handle).await,
        Kind::Network => docker.remove_network(handle).await,
        // Only the three kinds above are ever listed here.
        _ => Ok(false),
    }
}
