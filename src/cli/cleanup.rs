//! `runner cleanup`: removes what dead or old jobs left and prunes the cache (see
//! `crate::cleanup` for who owns what).

use crate::cleanup::{self, CachePruner, CacheTarget, Request, human_bytes};
use crate::gitlab::identity;
use crate::netpolicy::{NetPolicy, Options};
use anyhow::Context;
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Flags of `runner cleanup`.
#[derive(Debug, Clone, Args)]
pub struct CleanupArgs {
    /// Config file.
    #[command(flatten)]
    pub config: super::ConfigArg,
    /// Job directories no live job owns are removed once older than this (`90m`, `1h`, `2d`).
    /// What a dead runner process left goes at once, whatever its age.
    #[arg(long = "older-than", default_value = "1h", value_parser = parse_age)]
    pub older_than: Duration,
    /// Only list what would be removed.
    #[arg(long = "dry-run")]
    pub dry_run: bool,
    /// Only Docker objects that also carry this label, e.g.
    /// `io.isolated-runner.runner=<id>` for one runner's leftovers.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub label: Option<String>,
}

fn parse_age(text: &str) -> Result<Duration, String> {
    crate::config::validate::parse_duration(text)
}

/// The cache module's pruner (`cache::prune`), applied to every runner's `cache_dir`.
fn cache_pruner() -> Option<Arc<dyn CachePruner>> {
    Some(Arc::new(cleanup::LocalCachePruner))
}

/// Runs the verb: exit 0 unless something could not be listed or removed.
pub async fn run(args: &CleanupArgs) -> anyhow::Result<ExitCode> {
    // Leftovers of dead runners are found by label, so cleanup also works on a host whose
    // config is gone (the default path missing): then the default directories are used.
    let no_config = !args.config.config.exists() && args.config.is_default();
    let config = if no_config {
        eprintln!(
            "{} does not exist: cleaning up with the default directories",
            args.config.config.display()
        );
        let mut config = crate::config::Config::default();
        config.runners.push(crate::config::RunnerConfig::default());
        config
    } else {
        super::load_config(&args.config.config).await?
    };
    let first = config
        .runners
        .first()
        .context("the config has no [[runners]] entry")?;
    let docker_host = first.docker.host.clone();
    let mut builds_dirs: Vec<PathBuf> = Vec::new();
    let mut caches: Vec<CacheTarget> = Vec::new();
    for r in &config.runners {
        if !builds_dirs.contains(&r.builds_dir) {
            builds_dirs.push(r.builds_dir.clone());
        }
        let target = CacheTarget {
            dir: r.cache_dir.clone(),
            max_size: r.cache.max_size,
            max_age: r.cache.max_age,
        };
        if !caches.iter().any(|c| c.dir == target.dir) {
            caches.push(target);
        }
    }
    let own_runner_ids = own_runner_ids(&config.state_dir).await;
    let policy_id = own_runner_ids
        .first()
        .cloned()
        .unwrap_or_else(|| "cleanup".to_string());
    let req = Request {
        builds_dirs,
        state_dir: config.state_dir.clone(),
        caches,
        older_than: args.older_than,
        dry_run: args.dry_run,
        netpolicy: Some(NetPolicy::new(Options::new(
            policy_id,
            first.docker.isolation.address_pool,
        ))),
        own_runner_ids,
        cache_pruner: cache_pruner(),
        label_filter: args.label.clone(),
    };
    let docker = match crate::docker::Docker::connect(docker_host.as_deref()).await {
        Ok(d) => Some(d),
        Err(e) => {
            eprintln!("error: {e}");
            None
        }
    };
    let report = cleanup::run(docker.as_ref(), &req).await;
    print_report(&report);
    let mut roots_failed = false;
    // Snapshots in the root store whose sidecar is gone (a crashed runner's jobs).
    if let Some(d) = docker.as_ref() {
        let mut dirs: Vec<PathBuf> = Vec::new();
        for r in &config.runners {
            let dir = crate::isolation::golden::store_dir(r, &config.state_dir);
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
        for dir in dirs {
            let s = crate::isolation::golden::sweep_roots(d, &dir, None, args.dry_run).await;
            let verb = if args.dry_run {
                "would remove"
            } else {
                "removed"
            };
            for r in &s.removed {
                println!("{verb} {r}: its sidecar is gone");
            }
            for f in &s.failures {
                eprintln!("error: could not remove: {f}");
            }
            roots_failed |= !s.failures.is_empty();
        }
    }
    // Goldens of image sets no entry of this config uses. Without a config what the runner
    // wants is unknown: goldens are left alone then.
    let goldens_ok = no_config || sweep_goldens(&config, args.dry_run).await;
    // Last, once dead jobs' roots are gone: a store a killed runner left mounted.
    let stores_ok = release_stores(&config, args.dry_run).await;
    let mirrors_ok = bound_mirrors(docker.as_ref(), &config, args.dry_run).await;
    let failed = docker.is_none()
        || !report.failures.is_empty()
        || roots_failed
        || !goldens_ok
        || !stores_ok
        || !mirrors_ok;
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Removes the goldens in the root stores that no `[[runners]]` entry uses (see
/// `isolation::golden::sweep_unused_goldens`) and says so. False when one could not be.
async fn sweep_goldens(config: &crate::config::Config, dry_run: bool) -> bool {
    use crate::isolation::golden;
    let mut ok = true;
    for s in golden::sweep_unused_goldens(config, golden::GOLDEN_GRACE, dry_run).await {
        let verb = if dry_run { "would remove" } else { "removed" };
        for key in &s.removed {
            println!(
                "{verb} golden data root {key} in {}: no [[runners]] entry uses its image set",
                s.store.display()
            );
        }
        for why in &s.spared {
            println!("note: unused golden data root {why}: left for now");
        }
        for f in &s.failures {
            eprintln!("error: could not remove: {f}");
        }
        ok &= s.failures.is_empty();
        if s.found {
            let freed = s
                .freed
                .map(|b| format!(", freed {}", human_bytes(b)))
                .unwrap_or_default();
            println!(
                "golden data roots in {}: {} {}, {} kept (in use){freed}",
                s.store.display(),
                s.removed.len(),
                if dry_run {
                    "would be removed"
                } else {
                    "removed"
                },
                s.kept.len()
            );
        }
    }
    ok
}

/// Unmounts each root store of the config that a runner process left mounted when it died
/// (`RootStore::release_abandoned`): its loop device is freed. A store a live runner process
/// uses, one of another state dir, one still holding job roots and a btrfs directory the runner
/// did not mount stay as they are. False when an unmount failed.
async fn release_stores(config: &crate::config::Config, dry_run: bool) -> bool {
    use crate::isolation::root_store::{Abandoned, RootStore, image_file};
    let mut dirs: Vec<PathBuf> = Vec::new();
    for r in &config.runners {
        let dir = crate::isolation::golden::store_dir(r, &config.state_dir);
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    let mut ok = true;
    for dir in dirs {
        let (d, state_dir) = (dir.clone(), config.state_dir.clone());
        let done = tokio::task::spawn_blocking(move || {
            RootStore::release_abandoned(&d, &state_dir, dry_run)
        })
        .await;
        match done {
            Ok(Ok(Abandoned::NotMounted)) => {}
            Ok(Ok(Abandoned::Released)) => println!(
                "{} root store {} (the loop mount of {}): no runner process uses it",
                if dry_run { "would release" } else { "released" },
                dir.display(),
                image_file(&dir).display()
            ),
            Ok(Ok(Abandoned::InUse(pid))) => {
                let by = if pid.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {pid})")
                };
                println!(
                    "root store {}: in use by a live runner process{by}, left mounted",
                    dir.display()
                );
            }
            Ok(Ok(Abandoned::Roots(n))) => println!(
                "note: root store {} left mounted: {n} job root{} still in it",
                dir.display(),
                if n == 1 { "" } else { "s" }
            ),
            Ok(Ok(Abandoned::Foreign(owner))) => println!(
                "note: root store {} left mounted: it belongs to the runner with state_dir {}",
                dir.display(),
                owner.display()
            ),
            Ok(Err(e)) => {
                eprintln!("error: could not release: {e}");
                ok = false;
            }
            Err(e) => {
                eprintln!("error: could not release root store {}: {e}", dir.display());
                ok = false;
            }
        }
    }
    ok
}

/// Bounds each managed registry mirror's storage to its `max_size` (emptied when over it, see
/// `isolation::mirror::bound_storage`). False when one could not be bounded.
async fn bound_mirrors(
    docker: Option<&crate::docker::Docker>,
    config: &crate::config::Config,
    dry_run: bool,
) -> bool {
    use crate::isolation::mirror;
    let wanted = match mirror::wanted(config) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("error: {e}");
            return false;
        }
    };
    let mut ok = true;
    for w in wanted {
        match mirror::bound_storage(docker, &w, dry_run).await {
            Ok(r) if r.emptied => println!(
                "{} registry mirror cache {} [{}]: over its max_size of {}",
                if dry_run { "would empty" } else { "emptied" },
                r.dir.display(),
                human_bytes(r.bytes),
                human_bytes(r.max_size)
            ),
            Ok(r) => println!(
                "registry mirror cache {}: {} of {} max_size",
                r.dir.display(),
                human_bytes(r.bytes),
                human_bytes(r.max_size)
            ),
            Err(e) => {
                eprintln!("error: {e}");
                ok = false;
            }
        }
    }
    ok
}

/// This host's runner ids without creating anything: the persisted system id, the id derived
/// from the machine id, and the runner directories under `<state_dir>/certs`.
async fn own_runner_ids(state_dir: &Path) -> Vec<String> {
    let mut ids = Vec::new();
    if let Ok(s) = tokio::fs::read_to_string(state_dir.join(identity::SYSTEM_ID_FILE)).await
        && identity::is_valid_system_id(s.trim())
    {
        ids.push(s.trim().to_string());
    }
    for p in identity::MACHINE_ID_PATHS {
        if let Ok(m) = tokio::fs::read_to_string(p).await
            && !m.trim().is_empty()
        {
            let id = identity::system_id_from_machine_id(&m);
            if !ids.contains(&id) {
                ids.push(id);
            }
            break;
        }
    }
    if let Ok(mut rd) = tokio::fs::read_dir(state_dir.join("certs")).await {
        while let Ok(Some(entry)) = rd.next_entry().await {
            if let Some(name) = entry.file_name().to_str()
                && !ids.iter().any(|i| i == name)
            {
                ids.push(name.to_string());
            }
        }
    }
    ids
}

fn print_report(report: &cleanup::Report) {
    let verb = if report.dry_run {
        "would remove"
    } else {
        "removed"
    };
    let shown = if report.dry_run {
        &report.items
    } else {
        &report.removed
    };
    for item in shown {
        let size = item
            .bytes
            .map(|b| format!(" [{}]", human_bytes(b)))
            .unwrap_or_default();
        println!(
            "{verb} {} {}{size}: {}",
            item.kind.as_str(),
            item.name,
            item.reason
        );
    }
    for note in &report.notes {
        println!("note: {note}");
    }
    for f in &report.failures {
        eprintln!("error: could not remove: {f}");
    }
    let freed = if report.dry_run {
        "would free"
    } else {
        "freed"
    };
    println!(
        "{} {} object{}, {freed} {}",
        if report.dry_run {
            "would remove"
        } else {
            "removed"
        },
        shown.len(),
        if shown.len() == 1 { "" } else { "s" },
        human_bytes(report.freed_bytes)
    );
}
