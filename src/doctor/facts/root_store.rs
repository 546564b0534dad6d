//! The root store of each runner entry (`isolation::root_store`): which path its preload
//! images take on this host, found by looking only (nothing is made or mounted).

use super::*;

/// Which path preload images take for one `[[runners]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootStoreState {
    /// Nothing to preload, or a backend/profile the store does not serve.
    NotUsed(String),
    /// `root_store = "off"`: images are copied into each daemon.
    Off,
    /// The store's directory is on btrfs (mounted or the state dir's own file system).
    Ready {
        /// The store directory.
        dir: PathBuf,
        /// Goldens in it.
        goldens: usize,
        /// Job roots in it.
        roots: usize,
        /// Bytes its file system uses.
        used: Option<u64>,
    },
    /// Not there yet; the runner will make and loop-mount it at the first job.
    WillMount {
        /// The store directory.
        dir: PathBuf,
        /// Its image file.
        image: PathBuf,
    },
    /// The host forces the copy, with why and what to do.
    Forced {
        /// What is missing.
        reason: String,
        /// What to do.
        hint: String,
    },
}

/// One runner entry's store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootStoreFact {
    /// The runner entry's name.
    pub runner: String,
    /// What was found.
    pub state: RootStoreState,
}

fn in_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

/// Looks at each runner entry's store.
pub(super) fn gather_root_stores(config: &Config, host: &HostFacts) -> Vec<RootStoreFact> {
    use crate::isolation::root_store::{RootStore, default_path, image_file};
    config
        .runners
        .iter()
        .map(|r| {
            let iso = &r.docker.isolation;
            let state = if iso.mode != IsolationMode::Dind {
                RootStoreState::NotUsed("shared-socket mode".to_string())
            } else if iso.preload_images.is_empty() {
                RootStoreState::NotUsed("no preload_images".to_string())
            } else if !matches!(
                iso.sidecar_profile,
                SidecarProfile::Rootless | SidecarProfile::Hardened
            ) {
                RootStoreState::NotUsed(format!(
                    "profile {} (the store serves rootless and hardened)",
                    format!("{:?}", iso.sidecar_profile).to_lowercase()
                ))
            } else if iso.root_store == config::RootStore::Off {
                RootStoreState::Off
            } else {
                let dir = iso
                    .root_store_path
                    .clone()
                    .unwrap_or_else(|| default_path(&config.state_dir));
                let foreign = crate::isolation::root_store::owner::read_owner(&dir)
                    .ok()
                    .flatten()
                    .filter(|o| {
                        *o != crate::isolation::root_store::owner::owner_key(&config.state_dir)
                    });
                if let Some(owner) = foreign {
                    // The runner refuses a store of another state dir (`root_store::owner`).
                    RootStoreState::Forced {
                        reason: format!(
                            "the store {} belongs to the runner with state_dir {}",
                            dir.display(),
                            owner.display()
                        ),
                        hint: "give this config its own root_store_path (one store per \
                               state_dir: docs/preload.md, \"Disk\")"
                            .to_string(),
                    }
                } else if let Some(s) = RootStore::existing(&dir) {
                    RootStoreState::Ready {
                        dir,
                        goldens: s.golden_keys().len(),
                        roots: s.job_roots().len(),
                        used: s.used_bytes(),
                    }
                } else {
                    forced(host).unwrap_or_else(|| RootStoreState::WillMount {
                        image: image_file(&dir),
                        dir,
                    })
                }
            };
            RootStoreFact {
                runner: r.name.clone(),
                state,
            }
        })
        .collect()
}

/// Why this host cannot make the store, if it cannot.
fn forced(host: &HostFacts) -> Option<RootStoreState> {
    let missing_tools: Vec<&str> = ["mkfs.btrfs", "btrfs"]
        .into_iter()
        .filter(|t| !in_path(t))
        .collect();
    if !missing_tools.is_empty() {
        return Some(RootStoreState::Forced {
            reason: format!("{} not installed", missing_tools.join(" and ")),
            hint: "apt-get install btrfs-progs (then restart the runner)".to_string(),
        });
    }
    let btrfs_fs = host.filesystems.iter().any(|f| f == "btrfs")
        || host.kernel_release.as_ref().is_some_and(|rel| {
            Path::new("/lib/modules")
                .join(rel)
                .join("kernel/fs/btrfs")
                .is_dir()
        });
    if !btrfs_fs {
        return Some(RootStoreState::Forced {
            reason: "the kernel has no btrfs".to_string(),
            hint: "load it (`modprobe btrfs`), or set root_store_path to a directory on a btrfs \
                   file system"
                .to_string(),
        });
    }
    if !Path::new("/dev/loop-control").exists() {
        return Some(RootStoreState::Forced {
            reason: "no loop devices (/dev/loop-control is missing)".to_string(),
            hint: "`modprobe loop` (a runner in a container needs /dev/loop-control and the loop \
                   devices), or set root_store_path to a directory on btrfs"
                .to_string(),
        });
    }
    None
}
