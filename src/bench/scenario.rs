//! The benchmark scenarios (performance-anchors.md, "Proposed benchmark suite").
//!
//! Each scenario is a local project under `bench/scenarios/<project>/` with a `.gitlab-ci.yml`;
//! only the images built by `tests/images` are used, so nothing is ever pulled.

use crate::config::DataRoot;
use std::path::{Path, PathBuf};

/// How the per-job daemon's build cache is set up before a `build` run. The target applies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildCache {
    /// No local layers in the per-job daemon (an ephemeral data root). The shared daemon's
    /// build cache is not pruned: the host is shared with other users' builds, so that side is
    /// warm after its first build (docs/benchmarks.md says so).
    Cold,
    /// The per-job daemon gets the project's warm data root (`data_root = "project"`); the
    /// shared daemon keeps its cache.
    WarmProject,
    /// The job builds with `--no-cache` (the "cost of doing nothing" case).
    NoCache,
}

/// How one run of a scenario is made of jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// One job per run.
    Single,
    /// One `docker build` job per run, with a cache setup.
    Build(BuildCache),
    /// `--concurrency` jobs released at once, job names taken in turn from `jobs`.
    Concurrent {
        /// Job names in the scenario's `.gitlab-ci.yml`.
        jobs: &'static [&'static str],
    },
    /// `width` jobs of the scenario's job released at once, per mode (the modes' batches in
    /// turn, like [`Shape::Concurrent`], but a fixed width: "4 parallel jobs of one stage").
    Parallel {
        /// Jobs released at once.
        width: usize,
    },
    /// `--concurrency` jobs released at once in one burst that mixes the modes (job i runs in
    /// mode i mod modes), so every mode's jobs start under the same load: the TTFSL p95 of
    /// each mode is compared within one burst, not across bursts.
    Mixed {
        /// Job names in the scenario's `.gitlab-ci.yml`, taken in turn per mode.
        jobs: &'static [&'static str],
    },
    /// One batch of `jobs` sequential jobs per mode (interleaved job by job); every
    /// `cancel_every`-th is cancelled mid-script and every `kill_sidecar_every`-th has its
    /// sidecar killed with SIGKILL mid-script, both when the job prints `fault_marker`.
    /// Ignores `--runs` and `--warmup`.
    Teardown {
        /// Jobs per batch.
        jobs: usize,
        /// Cancel every n-th job (1-based).
        cancel_every: usize,
        /// Kill the sidecar of every n-th job (1-based).
        kill_sidecar_every: usize,
        /// The line the job prints once its objects exist ([`super::JobHooks::fault_marker`]).
        fault_marker: &'static str,
    },
}

/// One benchmark scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scenario {
    /// Name used on the command line and in reports.
    pub name: &'static str,
    /// Directory under the scenarios root.
    pub project: &'static str,
    /// Job to run from the project's `.gitlab-ci.yml` (for `Single` and `Build`).
    pub job: &'static str,
    /// One line on what it measures (shown by `--help`-adjacent listings and reports).
    pub summary: &'static str,
    /// How runs are made of jobs.
    pub shape: Shape,
}

impl Scenario {
    /// The project directory under `root` (normally `bench/scenarios`).
    pub fn project_dir(&self, root: &Path) -> PathBuf {
        root.join(self.project)
    }

    /// The `[runners.docker.isolation] data_root` the dind side of this scenario runs with
    /// whatever the config says, or `None` to use the config's. The build scenarios are defined
    /// by their cache state: build-warm needs the warm per-project root (the second and later
    /// builds hit its layer cache), build-cold and build-no-cache a fresh root per job. The
    /// compose-heavy scenarios are a stream of one project's jobs: what they measure is whether
    /// that project's images stay warm in its own daemons (the shared daemon keeps every image
    /// of every project), so they run on the project's warm roots too.
    pub fn data_root_override(&self) -> Option<DataRoot> {
        match self.shape {
            Shape::Build(BuildCache::WarmProject) => Some(DataRoot::Project),
            Shape::Build(BuildCache::Cold | BuildCache::NoCache) => Some(DataRoot::Ephemeral),
            _ if !self.registry_images().is_empty() => Some(DataRoot::Project),
            _ => None,
        }
    }
}

/// Every scenario, in report order. `runner bench --help` and docs/benchmarks.md describe them;
/// keep the three in step.
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "noop",
        project: "noop",
        job: "noop",
        summary: "script: true, no services: the fixed cost of each mode (S1)",
        shape: Shape::Single,
    },
    Scenario {
        name: "docker-run",
        project: "docker-run",
        job: "docker-run",
        summary: "10 x docker run --rm busybox true: API path and inner container start (S2a)",
        shape: Shape::Single,
    },
    Scenario {
        name: "compose",
        project: "compose",
        job: "compose",
        summary: "3 healthchecked services, ./ bind mount, up --wait, 20 exec, down (S3)",
        shape: Shape::Single,
    },
    Scenario {
        name: "build-cold",
        project: "build",
        job: "build",
        summary: "5-layer docker build, no local layers in the per-job daemon (S4.1)",
        shape: Shape::Build(BuildCache::Cold),
    },
    Scenario {
        name: "build-warm",
        project: "build",
        job: "build",
        summary: "5-layer docker build, warm shared daemon vs warm per-project data root (S4.2)",
        shape: Shape::Build(BuildCache::WarmProject),
    },
    Scenario {
        name: "build-no-cache",
        project: "build",
        job: "build-no-cache",
        summary: "5-layer docker build --no-cache: the cost of doing nothing (S4.4)",
        shape: Shape::Build(BuildCache::NoCache),
    },
    Scenario {
        name: "concurrent",
        project: "concurrent",
        job: "noop",
        summary: "--concurrency jobs (noop and docker-run in turn) released at once (S5)",
        shape: Shape::Concurrent {
            jobs: &["noop", "docker-run"],
        },
    },
    Scenario {
        name: "concurrent-mixed",
        project: "concurrent",
        job: "noop",
        summary: "--concurrency jobs in one burst, modes mixed: TTFSL p95 of each in the same burst",
        shape: Shape::Mixed {
            jobs: &["noop", "docker-run"],
        },
    },
    Scenario {
        name: "compose-heavy",
        project: "compose-heavy",
        job: "compose-heavy",
        summary: "php+node+postgres (~765 MB) from a local registry, compose run in each (one job)",
        shape: Shape::Single,
    },
    Scenario {
        name: "compose-heavy-4",
        project: "compose-heavy",
        job: "compose-heavy",
        summary: "the compose-heavy job, 4 at once: a stage of parallel jobs of one project",
        shape: Shape::Parallel { width: 4 },
    },
    Scenario {
        name: "teardown",
        project: "teardown",
        job: "teardown",
        summary: "100 jobs, every 10th cancelled, every 25th sidecar killed; leftovers (S6)",
        shape: Shape::Teardown {
            jobs: 100,
            cancel_every: 10,
            kill_sidecar_every: 25,
            fault_marker: "bench: fault point",
        },
    },
];

/// The images the compose-heavy scenarios pull from a registry the bench starts and fills
/// (`isolated-runner/<name>:test`, built by `tests/images/build`), as (local image, name in the
/// registry). The jobs name them `$BENCH_REGISTRY/<name in the registry>`.
pub const HEAVY_IMAGES: &[(&str, &str)] = &[
    ("isolated-runner/php:test", "php:heavy"),
    ("isolated-runner/node:test", "node:heavy"),
    ("isolated-runner/postgres:test", "postgres:heavy"),
];

impl Scenario {
    /// Images this scenario's jobs pull from the bench's own registry (empty: none, and no
    /// registry is started for it).
    pub fn registry_images(&self) -> &'static [(&'static str, &'static str)] {
        match self.project {
            "compose-heavy" => HEAVY_IMAGES,
            _ => &[],
        }
    }
}

/// Looks a scenario up by name.
pub fn find(name: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.name == name)
}

/// Names of every scenario, for error messages.
pub fn names() -> Vec<&'static str> {
    SCENARIOS.iter().map(|s| s.name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_scenarios_pin_their_data_root() {
        let root = |name: &str| find(name).expect("scenario").data_root_override();
        assert_eq!(root("build-warm"), Some(DataRoot::Project));
        assert_eq!(root("build-cold"), Some(DataRoot::Ephemeral));
        assert_eq!(root("build-no-cache"), Some(DataRoot::Ephemeral));
        assert_eq!(root("compose-heavy"), Some(DataRoot::Project));
        assert_eq!(root("compose-heavy-4"), Some(DataRoot::Project));
        for name in [
            "noop",
            "docker-run",
            "compose",
            "concurrent",
            "concurrent-mixed",
            "teardown",
        ] {
            assert_eq!(root(name), None, "{name}");
        }
    }

    #[test]
    fn only_the_heavy_scenarios_need_the_registry() {
        for s in SCENARIOS {
            let heavy = s.name.starts_with("compose-heavy");
            assert_eq!(!s.registry_images().is_empty(), heavy, "{}", s.name);
        }
    }
}
