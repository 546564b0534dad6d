//! Facts of this host and its engine: cgroups, kernel, iptables, images, free disk, leftovers
//! of dead runners, the firewall rules in place.

use super::*;

/// Host facts from procfs and sysfs. Blocking.
pub(super) fn gather_host() -> HostFacts {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let kernel_release = read("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string());
    let cgroup = match nix::sys::statfs::statfs("/sys/fs/cgroup") {
        Ok(s) if s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC => Cgroup::V2,
        Ok(s) if s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC => Cgroup::V1 {
            hybrid: nix::sys::statfs::statfs("/sys/fs/cgroup/unified")
                .is_ok_and(|u| u.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC),
        },
        Ok(s) => Cgroup::Unknown(format!("filesystem type {:?}", s.filesystem_type())),
        Err(e) => Cgroup::Unknown(e.to_string()),
    };
    let filesystems = read("/proc/filesystems")
        .map(|t| {
            t.lines()
                .filter_map(|l| l.split_whitespace().last().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let overlay_module = kernel_release
        .as_ref()
        .is_some_and(|r| Path::new(&format!("/lib/modules/{r}/kernel/fs/overlayfs")).exists());
    let cap_bnd = crate::isolation::rootless::own_caps("CapBnd");
    HostFacts {
        kernel_release,
        cgroup,
        cgroup_driver: None,
        filesystems,
        overlay_module,
        iptables: Err("not checked".to_string()),
        bridge_netfilter: Path::new("/proc/sys/net/bridge").exists(),
        max_user_namespaces: read("/proc/sys/user/max_user_namespaces")
            .and_then(|s| s.trim().parse().ok()),
        cap_bnd,
        tun_device: std::fs::metadata("/dev/net/tun")
            .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_char_device(&m.file_type())),
        unprivileged_userns_clone: read("/proc/sys/kernel/unprivileged_userns_clone")
            .and_then(|s| s.trim().parse().ok()),
        apparmor_restrict_userns: read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns")
            .and_then(|s| s.trim().parse().ok()),
        mem_available: read("/proc/meminfo")
            .and_then(|t| crate::isolation::pool::mem_available(&t)),
        opens_sysfs: crate::isolation::rootless::may_open_sysfs(),
    }
}

pub(super) async fn iptables_version() -> Result<String, String> {
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        tokio::process::Command::new("iptables")
            .arg("--version")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| "iptables --version did not finish within 10s".to_string())?
    .map_err(|e| format!("cannot run iptables: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

pub(super) async fn gather_images(docker: &Docker, config: &Config) -> Vec<ImageFact> {
    let mut wanted: Vec<(&'static str, String)> = Vec::new();
    for r in &config.runners {
        if r.docker.isolation.mode == IsolationMode::Dind {
            wanted.push(("sidecar", r.docker.isolation.sidecar_image.clone()));
        }
        wanted.push(("job", r.docker.image.clone()));
        wanted.push((
            "helper",
            r.docker
                .helper_image
                .clone()
                .unwrap_or_else(|| crate::job::spec::DEFAULT_HELPER_IMAGE.to_string()),
        ));
        for p in &r.docker.isolation.preload_images {
            wanted.push(("preload", p.clone()));
        }
    }
    let mut out: Vec<ImageFact> = Vec::new();
    for (role, image) in wanted {
        if out.iter().any(|i| i.image == image && i.role == role) {
            continue;
        }
        let present = docker.image_exists(&image).await.map_err(|e| e.to_string());
        out.push(ImageFact {
            role,
            image,
            present,
        });
    }
    out
}

pub(super) async fn gather_disks(config: &Config) -> Vec<DiskFact> {
    let mut wanted: Vec<(&'static str, PathBuf)> = Vec::new();
    for r in &config.runners {
        for (id, p) in [("disk.builds", &r.builds_dir), ("disk.cache", &r.cache_dir)] {
            if !wanted.iter().any(|(i, q)| *i == id && q == p) {
                wanted.push((id, p.clone()));
            }
        }
    }
    tokio::task::spawn_blocking(move || {
        wanted
            .into_iter()
            .map(|(id, path)| {
                let measured = path
                    .ancestors()
                    .find(|a| a.exists())
                    .unwrap_or(Path::new("/"))
                    .to_path_buf();
                let space = nix::sys::statvfs::statvfs(&measured)
                    .map(|s| {
                        let frag = s.fragment_size();
                        (
                            s.blocks_available().saturating_mul(frag),
                            s.blocks().saturating_mul(frag),
                        )
                    })
                    .map_err(|e| e.to_string());
                DiskFact {
                    id,
                    path,
                    measured,
                    space,
                }
            })
            .collect()
    })
    .await
    .unwrap_or_default()
}

pub(super) async fn gather_leftovers(docker: &Docker, config: Option<&Config>) -> Leftovers {
    let (builds_dirs, state_dir) = match config {
        Some(c) => {
            let mut b: Vec<PathBuf> = c.runners.iter().map(|r| r.builds_dir.clone()).collect();
            b.dedup();
            (b, c.state_dir.clone())
        }
        None => (
            Vec::new(),
            PathBuf::from(crate::isolation::DEFAULT_STATE_DIR),
        ),
    };
    let own = system_id_readonly(&state_dir).await;
    let req = cleanup::Request {
        builds_dirs,
        state_dir,
        caches: Vec::new(),
        older_than: cleanup::DEFAULT_OLDER_THAN,
        dry_run: true,
        netpolicy: Some(NetPolicy::new(NetOptions::new(
            "doctor",
            crate::config::IsolationConfig::default().address_pool,
        ))),
        own_runner_ids: vec![own],
        cache_pruner: None,
        label_filter: None,
    };
    let plan = cleanup::plan(Some(docker), &req).await;
    Leftovers {
        items: plan
            .items
            .iter()
            .map(|i| format!("{} {}: {}", i.kind.as_str(), i.name, i.reason))
            .collect(),
        failures: plan.failures,
    }
}

pub(super) async fn gather_netpolicy(
    config: Option<&Config>,
    networks: Option<&[NetFact]>,
) -> NetpolicyFacts {
    let needed = config.is_none_or(|c| {
        c.runners
            .iter()
            .any(|r| r.docker.isolation.mode == IsolationMode::Dind)
    });
    let pool = config
        .and_then(|c| c.runners.first())
        .map(|r| r.docker.isolation.address_pool)
        .unwrap_or_else(|| crate::config::IsolationConfig::default().address_pool);
    let policy = NetPolicy::new(NetOptions::new("doctor", pool));
    let installed = policy.list_installed().await.map_err(|e| e.to_string());
    let observer = tokio::task::spawn_blocking(cleanup::owner::observer)
        .await
        .ok()
        .flatten();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let mut running_jobs = Vec::new();
    for n in networks.unwrap_or_default() {
        if n.labels.get(LABEL_MANAGED).map(String::as_str) != Some("1") {
            continue;
        }
        let labels = n.labels.clone();
        let obs = observer.clone();
        let standing = tokio::task::spawn_blocking(move || {
            let judge = |o: &cleanup::owner::Owner| match &obs {
                Some(obs) => obs.judge(o, cleanup::owner::start_ticks),
                None => cleanup::owner::Liveness::Unknown,
            };
            cleanup::standing(&labels, now, &judge)
        })
        .await
        .unwrap_or(cleanup::Standing::Pending);
        let runner = n.labels.get(crate::docker::LABEL_RUNNER).cloned();
        let job = n
            .labels
            .get(crate::docker::LABEL_JOB)
            .and_then(|j| j.parse::<u64>().ok());
        if standing == cleanup::Standing::Alive
            && let (Some(runner), Some(job)) = (runner, job)
        {
            running_jobs.push((runner, job));
        }
    }
    NetpolicyFacts {
        needed,
        installed,
        running_jobs,
    }
}
