//! `root_store`: whether preload images reach job daemons as snapshots of a golden data root
//! (constant time) or are copied into each daemon (time grows with their size), and why.

use super::*;

fn human(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1024.0 * 1024.0 * 1024.0))
}

pub(super) fn root_store(f: &Facts) -> Check {
    const ID: &str = "root_store";
    if f.config.loaded().is_none() {
        return skip(ID, "no config loaded", NO_CONFIG_HINT);
    }
    let parts: Vec<Check> = f
        .root_stores
        .iter()
        .map(|r| {
            let who = &r.runner;
            match &r.state {
                RootStoreState::NotUsed(why) => {
                    Check::ok(ID, format!("{who}: root store not used ({why})"))
                }
                RootStoreState::Off => Check::with(
                    ID,
                    Status::Warn,
                    format!(
                        "{who}: root_store = \"off\": preload_images are copied into every job's \
                         daemon (seconds per hundred MB, every job)"
                    ),
                    "remove root_store = \"off\" to start each daemon from a snapshot of a \
                     prepared data root",
                ),
                RootStoreState::Ready {
                    dir,
                    goldens,
                    roots,
                    used,
                } => Check::ok(
                    ID,
                    format!(
                        "{who}: fast path: preload images reach each daemon as a btrfs snapshot \
                         ({}: {goldens} golden(s), {roots} job root(s), {} used)",
                        dir.display(),
                        used.map(human).unwrap_or_else(|| "?".to_string())
                    ),
                ),
                RootStoreState::WillMount { dir, image } => Check::ok(
                    ID,
                    format!(
                        "{who}: fast path: the runner makes {} (sparse btrfs) and mounts it at \
                         {} at the first job",
                        image.display(),
                        dir.display()
                    ),
                ),
                RootStoreState::Forced { reason, hint } => Check::with(
                    ID,
                    Status::Warn,
                    format!(
                        "{who}: slow path forced: {reason}; preload_images are copied into \
                         every job's daemon"
                    ),
                    hint.clone(),
                ),
            }
        })
        .collect();
    if parts.is_empty() {
        return skip(ID, "no runner entries", "");
    }
    combine(ID, parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::facts::RootStoreFact;

    #[test]
    fn forced_path_warns_with_the_fix() {
        let mut f = super::super::tests::healthy();
        f.root_stores = vec![RootStoreFact {
            runner: "r1".into(),
            state: RootStoreState::Forced {
                reason: "mkfs.btrfs not installed".into(),
                hint: "apt-get install btrfs-progs".into(),
            },
        }];
        let c = root_store(&f);
        assert_eq!(c.status, Status::Warn);
        assert!(c.message.contains("slow path forced"), "{}", c.message);
        assert!(c.hint.contains("btrfs-progs"));
        f.root_stores[0].state = RootStoreState::WillMount {
            dir: "/var/lib/isolated-runner/roots".into(),
            image: "/var/lib/isolated-runner/roots.img".into(),
        };
        assert_eq!(root_store(&f).status, Status::Ok);
    }
}
