//! runner bench: scenarios, interleaved runs, statistics and reports.
//!
//! The bench runs local scenario projects (`bench/scenarios/<name>/.gitlab-ci.yml`) in each
//! isolation mode through a [`BenchTarget`], interleaving the modes A B A B after warm-up
//! rounds, and reports p50/p95 of time to first script line (TTFSL) and wall time, the wall
//! ratio dind/shared-socket, the TTFSL overhead, memory peaks and leftovers.
//! See `docs/benchmarks.md` for the method.

pub mod engine;
pub mod host;
pub mod real;
pub mod report;
pub mod scenario;
pub mod stats;
pub mod target;

pub use engine::{BenchRun, Measurement, Plan, Progress, run};
pub use report::{Report, build as build_report, render_svg, render_table, to_json};
pub use scenario::{BuildCache, SCENARIOS, Scenario, Shape};
pub use target::{
    BenchTarget, JobHooks, JobSpec, RunSample, SampleOutcome, TargetError, TargetInfo,
};
