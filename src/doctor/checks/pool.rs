//! `sidecar.warm_pool`: what each runner entry's warm pool will be on this host, a fact: a
//! fixed size, or `auto` with the bound it cannot pass (`concurrent`/`limit`, and available
//! memory at [`SIDECAR_MEMORY_ESTIMATE`] per idle sidecar, as `isolation::pool` sizes it).

use super::*;
use crate::isolation::pool::SIDECAR_MEMORY_ESTIMATE;

pub(super) fn warm_pool(f: &Facts) -> Check {
    const ID: &str = "sidecar.warm_pool";
    let Some(config) = f.config.loaded() else {
        return skip(ID, "no config loaded", NO_CONFIG_HINT);
    };
    let parts: Vec<Check> = config
        .runners
        .iter()
        .map(|r| {
            Check::ok(
                ID,
                format!("{}: {}", r.name, pool_line(config.concurrent, r, f)),
            )
        })
        .collect();
    if parts.is_empty() {
        return skip(ID, "no runner entries", "");
    }
    combine(ID, parts)
}

/// One entry's pool in words. The job cap is the executor's (`concurrent`, lowered by a
/// non-zero `limit`); the memory room is what is available now over 256 MiB per sidecar.
fn pool_line(concurrent: usize, r: &crate::config::RunnerConfig, f: &Facts) -> String {
    let iso = &r.docker.isolation;
    if iso.mode != IsolationMode::Dind {
        return "no warm pool (shared-socket mode)".to_string();
    }
    let per = if iso.data_root == crate::config::DataRoot::Project {
        " (per project: started after a project's job, for its next one)"
    } else {
        ""
    };
    if !iso.warm_pool_auto {
        return match iso.warm_pool {
            0 => "no warm pool (warm_pool = 0)".to_string(),
            n => format!("warm pool fixed at {n} sidecar(s){per}"),
        };
    }
    let job_cap = if r.limit > 0 {
        concurrent.min(r.limit)
    } else {
        concurrent
    }
    .max(1);
    let jobs = if r.limit > 0 && r.limit < concurrent {
        format!("limit {}", r.limit)
    } else {
        format!("concurrent {concurrent}")
    };
    let mem_room = f
        .host
        .mem_available
        .map(|b| (b / SIDECAR_MEMORY_ESTIMATE) as usize);
    let cap = mem_room
        .map_or(job_cap, |m| job_cap.min(m))
        .max(iso.warm_pool);
    let memory = match (f.host.mem_available, mem_room) {
        (Some(b), Some(m)) => format!(
            "memory {:.1} GiB available = {m} at 256 MiB each",
            b as f64 / (1u64 << 30) as f64
        ),
        _ => "memory unknown".to_string(),
    };
    let floor = if iso.warm_pool > 0 {
        format!(", never below {}", iso.warm_pool)
    } else {
        String::new()
    };
    format!(
        "warm pool auto: follows recent demand, at most {cap} sidecar(s) now ({jobs}; \
         {memory}){floor}, none after {} without jobs{per}",
        humantime::format_duration(iso.warm_pool_max_idle)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::facts::ConfigState;

    fn with_runner(f: &mut Facts, edit: impl FnOnce(&mut crate::config::Config)) {
        let ConfigState::Loaded { config, .. } = &mut f.config.state else {
            panic!("healthy() loads a config");
        };
        edit(config);
    }

    #[test]
    fn auto_pool_states_its_cap_from_jobs_and_memory() {
        let mut f = super::super::tests::healthy();
        with_runner(&mut f, |c| {
            c.concurrent = 4;
            c.runners[0].name = "r1".into();
            c.runners[0].docker.isolation.warm_pool_auto = true;
            c.runners[0].docker.isolation.warm_pool = 0;
        });
        // 8 GiB = 32 sidecars of 256 MiB: the job cap (4) bounds it.
        let c = warm_pool(&f);
        assert_eq!(c.status, Status::Ok);
        assert!(
            c.message.contains("r1: warm pool auto") && c.message.contains("at most 4 sidecar"),
            "{}",
            c.message
        );
        assert!(c.message.contains("concurrent 4"), "{}", c.message);
        assert!(c.message.contains("= 32 at 256 MiB"), "{}", c.message);
        // A smaller limit bounds it; then memory does.
        with_runner(&mut f, |c| c.runners[0].limit = 2);
        let m = warm_pool(&f).message;
        assert!(
            m.contains("at most 2 sidecar") && m.contains("limit 2"),
            "{m}"
        );
        f.host.mem_available = Some(3 * SIDECAR_MEMORY_ESTIMATE + 1);
        with_runner(&mut f, |c| c.runners[0].limit = 0);
        let m = warm_pool(&f).message;
        assert!(m.contains("at most 3 sidecar"), "{m}");
    }

    #[test]
    fn fixed_and_off_pools_say_so() {
        let mut f = super::super::tests::healthy();
        with_runner(&mut f, |c| {
            c.runners[0].name = "r1".into();
            c.runners[0].docker.isolation.warm_pool_auto = false;
            c.runners[0].docker.isolation.warm_pool = 3;
        });
        let m = warm_pool(&f).message;
        assert_eq!(m, "r1: warm pool fixed at 3 sidecar(s)");
        with_runner(&mut f, |c| c.runners[0].docker.isolation.warm_pool = 0);
        assert_eq!(warm_pool(&f).message, "r1: no warm pool (warm_pool = 0)");
    }
}
