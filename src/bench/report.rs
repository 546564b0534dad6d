//! Turning measurements into the table, the JSON file and the SVG chart.

use super::engine::BenchRun;
use super::host::{HostFacts, RunnerMemory};
use super::stats::{self, Summary};
use super::target::{SampleOutcome, TargetInfo};
use crate::config::IsolationMode;
use serde_json::{Value, json};
use std::fmt::Write as _;

/// One mode of one scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct ModeReport {
    /// The mode.
    pub mode: IsolationMode,
    /// Measured jobs that succeeded (the ones in the time statistics).
    pub ok: usize,
    /// Measured jobs that failed or could not run.
    pub failed: usize,
    /// Measured jobs cancelled on purpose (teardown hooks).
    pub canceled: usize,
    /// Time to first script line, seconds.
    pub ttfsl: Option<Summary>,
    /// Wall time, seconds.
    pub wall: Option<Summary>,
    /// Time to the final state (as GitLab sees the job; teardown after it), seconds.
    pub final_state: Option<Summary>,
    /// Highest job-containers + sidecar peak over the measured jobs (an upper bound: the two
    /// peaks need not be simultaneous).
    pub peak_mem_bytes: Option<u64>,
    /// Most objects seen left on the host after any measured job's teardown.
    pub leftovers: Option<u64>,
    /// Runner RSS growth per job over the measured jobs (least squares), bytes.
    pub runner_rss_slope: Option<f64>,
    /// Median seconds per pipeline stage over the measured jobs that ran it.
    pub stages_p50: std::collections::BTreeMap<String, f64>,
    /// Notes of the first failed measured jobs (why they failed), at most five.
    pub failure_notes: Vec<String>,
    /// The host's 1-minute load average after this mode's measured jobs.
    pub load1: Option<Load>,
}

/// Load average over a set of jobs (the 1-minute figure read after each).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Load {
    /// Lowest.
    pub min: f64,
    /// Mean.
    pub mean: f64,
    /// Highest.
    pub max: f64,
}

impl Load {
    /// `None` when no value was read.
    pub fn of(values: &[f64]) -> Option<Load> {
        if values.is_empty() {
            return None;
        }
        Some(Load {
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            mean: values.iter().sum::<f64>() / values.len() as f64,
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        })
    }
}

/// One scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct ScenarioReport {
    /// Scenario name.
    pub name: String,
    /// What it measures.
    pub summary: String,
    /// Measured rounds per mode.
    pub runs: usize,
    /// Warm-up rounds per mode.
    pub warmup: usize,
    /// Per mode, in plan order.
    pub modes: Vec<ModeReport>,
    /// Wall p50 dind / shared-socket.
    pub ratio_wall_p50: Option<f64>,
    /// Time-to-final-state p50 dind / shared-socket: the wall ratio as GitLab sees it.
    pub ratio_final_p50: Option<f64>,
    /// TTFSL p50 dind − shared-socket, seconds.
    pub ttfsl_overhead_p50_s: Option<f64>,
    /// TTFSL p95 dind − shared-socket, seconds.
    pub ttfsl_overhead_p95_s: Option<f64>,
    /// TTFSL p95 dind / shared-socket (the concurrent-mixed target reads this one).
    pub ratio_ttfsl_p95: Option<f64>,
    /// Wall p95 dind / shared-socket.
    pub ratio_wall_p95: Option<f64>,
}

/// The whole report.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Host facts.
    pub host: HostFacts,
    /// Docker side facts.
    pub target: TargetInfo,
    /// Runner memory at the end.
    pub runner_memory: Option<RunnerMemory>,
    /// Scenarios, in plan order.
    pub scenarios: Vec<ScenarioReport>,
}

/// Computes the statistics of a bench run (warm-ups excluded).
pub fn build(run: &BenchRun) -> Report {
    let scenarios = run
        .plan
        .scenarios
        .iter()
        .map(|scenario| {
            let (warmup, runs) = run.plan.rounds(scenario);
            let modes: Vec<ModeReport> = run
                .plan
                .modes
                .iter()
                .map(|&mode| {
                    let measured: Vec<_> = run
                        .measurements
                        .iter()
                        .filter(|m| m.scenario == scenario.name && m.mode == mode && !m.warmup)
                        .collect();
                    let ok: Vec<_> = measured
                        .iter()
                        .filter_map(|m| m.result.as_ref().ok())
                        .filter(|s| s.outcome == SampleOutcome::Success)
                        .collect();
                    let canceled = measured
                        .iter()
                        .filter(
                            |m| matches!(&m.result, Ok(s) if s.outcome == SampleOutcome::Canceled),
                        )
                        .count();
                    let ttfsl: Vec<f64> = ok
                        .iter()
                        .filter_map(|s| s.ttfsl.map(|t| t.as_secs_f64()))
                        .collect();
                    let wall: Vec<f64> = ok.iter().map(|s| s.wall.as_secs_f64()).collect();
                    let final_state: Vec<f64> = ok
                        .iter()
                        .filter_map(|s| s.final_state.map(|t| t.as_secs_f64()))
                        .collect();
                    let peak = measured
                        .iter()
                        .filter_map(|m| m.result.as_ref().ok())
                        .filter_map(|s| match (s.peak_mem_job_bytes, s.peak_mem_sidecar_bytes) {
                            (None, None) => None,
                            (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
                        })
                        .max();
                    let rss: Vec<f64> = measured
                        .iter()
                        .filter_map(|m| m.runner_memory.map(|r| r.rss_bytes as f64))
                        .collect();
                    ModeReport {
                        mode,
                        ok: ok.len(),
                        failed: measured.len() - ok.len() - canceled,
                        canceled,
                        ttfsl: stats::summarize(&ttfsl),
                        wall: stats::summarize(&wall),
                        final_state: stats::summarize(&final_state),
                        peak_mem_bytes: peak,
                        leftovers: measured.iter().filter_map(|m| m.leftovers).max(),
                        runner_rss_slope: stats::slope(&rss),
                        stages_p50: stage_medians(
                            measured.iter().filter_map(|m| m.result.as_ref().ok()),
                        ),
                        failure_notes: measured
                            .iter()
                            .filter_map(|m| match &m.result {
                                Err(e) => Some(e.clone()),
                                Ok(s) if s.outcome == SampleOutcome::Failed => {
                                    Some(s.notes.join("; "))
                                }
                                Ok(_) => None,
                            })
                            .take(5)
                            .collect(),
                        load1: Load::of(
                            &measured.iter().filter_map(|m| m.load1).collect::<Vec<_>>(),
                        ),
                    }
                })
                .collect();
            let get = |mode: IsolationMode| modes.iter().find(|m| m.mode == mode);
            let dind = get(IsolationMode::Dind);
            let shared = get(IsolationMode::SharedSocket);
            let pick = |m: Option<&ModeReport>, f: fn(&ModeReport) -> Option<f64>| m.and_then(f);
            ScenarioReport {
                name: scenario.name.to_string(),
                summary: scenario.summary.to_string(),
                runs,
                warmup,
                ratio_wall_p50: stats::ratio(
                    pick(dind, |m| m.wall.map(|s| s.p50)),
                    pick(shared, |m| m.wall.map(|s| s.p50)),
                ),
                ratio_final_p50: stats::ratio(
                    pick(dind, |m| m.final_state.map(|s| s.p50)),
                    pick(shared, |m| m.final_state.map(|s| s.p50)),
                ),
                ttfsl_overhead_p50_s: stats::overhead(
                    pick(dind, |m| m.ttfsl.map(|s| s.p50)),
                    pick(shared, |m| m.ttfsl.map(|s| s.p50)),
                ),
                ttfsl_overhead_p95_s: stats::overhead(
                    pick(dind, |m| m.ttfsl.map(|s| s.p95)),
                    pick(shared, |m| m.ttfsl.map(|s| s.p95)),
                ),
                ratio_ttfsl_p95: stats::ratio(
                    pick(dind, |m| m.ttfsl.map(|s| s.p95)),
                    pick(shared, |m| m.ttfsl.map(|s| s.p95)),
                ),
                ratio_wall_p95: stats::ratio(
                    pick(dind, |m| m.wall.map(|s| s.p95)),
                    pick(shared, |m| m.wall.map(|s| s.p95)),
                ),
                modes,
            }
        })
        .collect();
    Report {
        host: run.host.clone(),
        target: run.target.clone(),
        runner_memory: run.runner_memory,
        scenarios,
    }
}

/// Median of each stage over the samples that have it.
fn stage_medians<'a>(
    samples: impl Iterator<Item = &'a super::target::RunSample>,
) -> std::collections::BTreeMap<String, f64> {
    let mut all: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    for s in samples {
        for (k, v) in &s.stages {
            all.entry(k.clone()).or_default().push(*v);
        }
    }
    all.into_iter()
        .filter_map(|(k, v)| stats::percentile(&v, 0.5).map(|p| (k, p)))
        .collect()
}

fn secs(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.2} s")).unwrap_or_else(|| "-".into())
}

fn mib(v: Option<u64>) -> String {
    v.map(|v| format!("{:.1} MiB", v as f64 / 1_048_576.0))
        .unwrap_or_else(|| "-".into())
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

/// The stdout table: a header with the host, then one block per scenario.
pub fn render_table(report: &Report) -> String {
    let mut out = String::new();
    let h = &report.host;
    let t = &report.target;
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "host: kernel {}, {} cpus ({}), {} memory, cgroup {}; docker {} ({} outer, {} inner); runner {}",
        opt(h.kernel.clone()),
        opt(h.cpus),
        opt(h.cpu_model.clone()),
        mib(h.memory_bytes),
        opt(h.cgroup.clone()),
        opt(t.docker_engine.clone()),
        opt(t.storage_driver.clone()),
        opt(t.inner_storage_driver.clone()),
        h.runner_version
    );
    if let Some(mem) = report.runner_memory {
        let _ = writeln!(
            out,
            "runner memory: rss {} now, {} peak",
            mib(Some(mem.rss_bytes)),
            mib(Some(mem.hwm_bytes))
        );
    }
    for s in &report.scenarios {
        let _ = writeln!(out, "\n{} - {}", s.name, s.summary);
        let _ = writeln!(
            out,
            "  {} measured rounds per mode after {} warm-up rounds, modes interleaved",
            s.runs, s.warmup
        );
        let _ = writeln!(
            out,
            "  {:<14} {:>4} {:>4} {:>4} {:>10} {:>10} {:>10} {:>10} {:>11} {:>9} {:>12}",
            "mode",
            "ok",
            "fail",
            "canc",
            "TTFSL p50",
            "TTFSL p95",
            "wall p50",
            "wall p95",
            "peak mem",
            "leftovers",
            "rss B/job"
        );
        for m in &s.modes {
            let _ = writeln!(
                out,
                "  {:<14} {:>4} {:>4} {:>4} {:>10} {:>10} {:>10} {:>10} {:>11} {:>9} {:>12}",
                m.mode.as_str(),
                m.ok,
                m.failed,
                m.canceled,
                secs(m.ttfsl.map(|x| x.p50)),
                secs(m.ttfsl.map(|x| x.p95)),
                secs(m.wall.map(|x| x.p50)),
                secs(m.wall.map(|x| x.p95)),
                mib(m.peak_mem_bytes),
                opt(m.leftovers),
                m.runner_rss_slope
                    .map(|v| format!("{v:.0}"))
                    .unwrap_or_else(|| "-".into())
            );
        }
        for m in &s.modes {
            if !m.stages_p50.is_empty() {
                let stages: Vec<String> = m
                    .stages_p50
                    .iter()
                    .map(|(k, v)| format!("{k} {v:.2}"))
                    .collect();
                let _ = writeln!(
                    out,
                    "  {} stages p50 (s): {}",
                    m.mode.as_str(),
                    stages.join(", ")
                );
            }
        }
        if s.ratio_wall_p50.is_some() || s.ttfsl_overhead_p50_s.is_some() {
            let _ = writeln!(
                out,
                "  wall p50 dind/shared-socket: {}   TTFSL overhead dind - shared-socket: p50 {}, p95 {}",
                s.ratio_wall_p50
                    .map(|r| format!("{r:.2}x"))
                    .unwrap_or_else(|| "-".into()),
                s.ttfsl_overhead_p50_s
                    .map(|v| format!("{v:+.2} s"))
                    .unwrap_or_else(|| "-".into()),
                s.ttfsl_overhead_p95_s
                    .map(|v| format!("{v:+.2} s"))
                    .unwrap_or_else(|| "-".into()),
            );
        }
        if s.modes.iter().any(|m| m.final_state.is_some()) {
            let per_mode: Vec<String> = s
                .modes
                .iter()
                .map(|m| {
                    format!(
                        "{} p50 {} p95 {}",
                        m.mode.as_str(),
                        secs(m.final_state.map(|x| x.p50)),
                        secs(m.final_state.map(|x| x.p95))
                    )
                })
                .collect();
            let _ = writeln!(
                out,
                "  to final state (as GitLab sees the job; teardown after it): {}   dind/shared-socket p50: {}",
                per_mode.join(", "),
                s.ratio_final_p50
                    .map(|r| format!("{r:.2}x"))
                    .unwrap_or_else(|| "-".into()),
            );
        }
        if s.ratio_ttfsl_p95.is_some() || s.ratio_wall_p95.is_some() {
            let x = |r: Option<f64>| r.map(|r| format!("{r:.2}x")).unwrap_or_else(|| "-".into());
            let _ = writeln!(
                out,
                "  p95 dind/shared-socket: TTFSL {}, wall {}",
                x(s.ratio_ttfsl_p95),
                x(s.ratio_wall_p95)
            );
        }
        let loads: Vec<String> = s
            .modes
            .iter()
            .filter_map(|m| {
                m.load1.map(|l| {
                    format!(
                        "{} {:.2} ({:.2}-{:.2})",
                        m.mode.as_str(),
                        l.mean,
                        l.min,
                        l.max
                    )
                })
            })
            .collect();
        if !loads.is_empty() {
            let _ = writeln!(
                out,
                "  load average (1 min) after the measured jobs, mean (min-max): {}",
                loads.join(", ")
            );
        }
    }
    out
}

fn summary_json(s: Option<Summary>) -> Value {
    match s {
        Some(s) => json!({ "p50": s.p50, "p95": s.p95 }),
        None => json!({ "p50": null, "p95": null }),
    }
}

/// The `--json` document:
/// `{"host":{…},"scenarios":[{"name","runs","modes":{"dind":{…},"shared-socket":{…}},
/// "ratio_wall_p50","ttfsl_overhead_p50_s","ttfsl_overhead_p95_s"}]}`.
pub fn to_json(report: &Report) -> Value {
    let h = &report.host;
    let t = &report.target;
    let host = json!({
        "kernel": h.kernel,
        "docker_engine": t.docker_engine,
        "containerd": t.containerd,
        "storage_driver": t.storage_driver,
        "inner_storage_driver": t.inner_storage_driver,
        "registry_mirror": t.registry_mirror,
        "cgroup": h.cgroup,
        "runner_version": h.runner_version,
        "cpus": h.cpus,
        "cpu_model": h.cpu_model,
        "memory_bytes": h.memory_bytes,
        "runner_rss_bytes": report.runner_memory.map(|m| m.rss_bytes),
        "runner_hwm_bytes": report.runner_memory.map(|m| m.hwm_bytes),
    });
    let scenarios: Vec<Value> = report
        .scenarios
        .iter()
        .map(|s| {
            let modes: serde_json::Map<String, Value> = s
                .modes
                .iter()
                .map(|m| {
                    (
                        m.mode.as_str().to_string(),
                        json!({
                            "ttfsl_s": summary_json(m.ttfsl),
                            "wall_s": summary_json(m.wall),
                            "final_state_s": summary_json(m.final_state),
                            "peak_mem_bytes": m.peak_mem_bytes,
                            "leftovers": m.leftovers,
                            "ok": m.ok,
                            "failed": m.failed,
                            "canceled": m.canceled,
                            "runner_rss_slope_bytes_per_job": m.runner_rss_slope,
                            "stages_p50_s": m.stages_p50,
                            "failure_notes": m.failure_notes,
                            "load1": m.load1.map(|l| json!({"min": l.min, "mean": l.mean, "max": l.max})),
                        }),
                    )
                })
                .collect();
            json!({
                "name": s.name,
                "runs": s.runs,
                "modes": modes,
                "ratio_wall_p50": s.ratio_wall_p50,
                "ratio_final_state_p50": s.ratio_final_p50,
                "ttfsl_overhead_p50_s": s.ttfsl_overhead_p50_s,
                "ttfsl_overhead_p95_s": s.ttfsl_overhead_p95_s,
                "ratio_ttfsl_p95": s.ratio_ttfsl_p95,
                "ratio_wall_p95": s.ratio_wall_p95,
            })
        })
        .collect();
    json!({ "host": host, "scenarios": scenarios })
}

fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn color(mode: IsolationMode) -> &'static str {
    match mode {
        IsolationMode::Dind => "#d95f02",
        IsolationMode::SharedSocket => "#1b9e77",
    }
}

/// A "nice" axis maximum and tick step (1, 2 or 5 × 10^k) covering `max`.
fn nice_axis(max: f64) -> (f64, f64) {
    let max = if max > 0.0 && max.is_finite() {
        max
    } else {
        1.0
    };
    let raw_step = max / 5.0;
    let magnitude = 10f64.powf(raw_step.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw_step)
        .unwrap_or(10.0 * magnitude);
    ((max / step).ceil() * step, step)
}

/// The `--svg` chart: per scenario, the wall-time median of each mode as a bar with a p95
/// whisker, and the TTFSL median as a darker inner bar. One `<g class="scenario">` per
/// scenario, holding one `<g class="mode">` per mode.
pub fn render_svg(report: &Report) -> String {
    const LEFT: f64 = 70.0;
    const TOP: f64 = 80.0;
    const PLOT_H: f64 = 300.0;
    const BAR_W: f64 = 34.0;
    const GROUP_W: f64 = 120.0;
    let modes: Vec<IsolationMode> = report
        .scenarios
        .first()
        .map(|s| s.modes.iter().map(|m| m.mode).collect())
        .unwrap_or_default();
    let n = report.scenarios.len().max(1) as f64;
    let width = (LEFT + n * GROUP_W + 30.0).max(620.0);
    let height = TOP + PLOT_H + 70.0;
    let max = report
        .scenarios
        .iter()
        .flat_map(|s| s.modes.iter())
        .filter_map(|m| m.wall.map(|w| w.p95.max(w.p50)))
        .fold(0.0f64, f64::max);
    let (axis_max, step) = nice_axis(max);
    let y = |v: f64| TOP + PLOT_H - (v / axis_max) * PLOT_H;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect x="0" y="0" width="{width:.0}" height="{height:.0}" fill="white"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{LEFT}" y="22" font-size="15" font-weight="bold">runner bench: time per job, dind vs shared-socket</text>"#
    );
    // Axis and grid.
    let _ = writeln!(svg, r#"<g class="axis">"#);
    let mut tick = 0.0;
    while tick <= axis_max + step / 2.0 {
        let ty = y(tick);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{ty:.1}" x2="{:.1}" y2="{ty:.1}" stroke="#e0e0e0"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            width - 30.0,
            LEFT - 6.0,
            ty + 4.0,
            if step < 1.0 {
                format!("{tick:.1}")
            } else {
                format!("{tick:.0}")
            }
        );
        tick += step;
    }
    let _ = writeln!(
        svg,
        r##"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{:.1}" stroke="#333"/><line x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#333"/>"##,
        TOP + PLOT_H,
        TOP + PLOT_H,
        width - 30.0,
        TOP + PLOT_H
    );
    let _ = writeln!(
        svg,
        r#"<text x="16" y="{:.1}" transform="rotate(-90 16 {:.1})" text-anchor="middle">seconds</text>"#,
        TOP + PLOT_H / 2.0,
        TOP + PLOT_H / 2.0
    );
    let _ = writeln!(svg, "</g>");
    // Legend.
    let _ = writeln!(svg, r#"<g class="legend">"#);
    let mut lx = LEFT;
    for mode in &modes {
        let _ = writeln!(
            svg,
            r#"<rect x="{lx}" y="34" width="12" height="12" fill="{}"/><text x="{:.0}" y="44">{}</text>"#,
            color(*mode),
            lx + 16.0,
            mode.as_str()
        );
        lx += 120.0;
    }
    let _ = writeln!(
        svg,
        r##"<rect x="{lx}" y="34" width="12" height="12" fill="#000" fill-opacity="0.45"/><text x="{:.0}" y="44">TTFSL p50</text>"##,
        lx + 16.0
    );
    let _ = writeln!(
        svg,
        r##"<text x="{LEFT}" y="64" font-size="11" fill="#555">bar: wall p50 | whisker: wall p95 | dark inner bar: TTFSL p50 | number: wall p50 in s</text>"##
    );
    let _ = writeln!(svg, "</g>");
    // Bars.
    for (i, s) in report.scenarios.iter().enumerate() {
        let gx = LEFT + i as f64 * GROUP_W;
        let _ = writeln!(
            svg,
            r#"<g class="scenario" data-name="{}">"#,
            xml_escape(&s.name)
        );
        let bars_w = s.modes.len() as f64 * (BAR_W + 6.0);
        let start = gx + (GROUP_W - bars_w) / 2.0;
        for (j, m) in s.modes.iter().enumerate() {
            let bx = start + j as f64 * (BAR_W + 6.0);
            let _ = writeln!(svg, r#"<g class="mode" data-mode="{}">"#, m.mode.as_str());
            match m.wall {
                Some(w) => {
                    let top = y(w.p50);
                    let _ = writeln!(
                        svg,
                        r#"<rect x="{bx:.1}" y="{top:.1}" width="{BAR_W}" height="{:.1}" fill="{}"><title>{} {}: wall p50 {:.2} s, p95 {:.2} s</title></rect>"#,
                        (TOP + PLOT_H - top).max(0.0),
                        color(m.mode),
                        xml_escape(&s.name),
                        m.mode.as_str(),
                        w.p50,
                        w.p95
                    );
                    if let Some(t) = m.ttfsl {
                        let tt = y(t.p50.min(axis_max));
                        let _ = writeln!(
                            svg,
                            r##"<rect x="{:.1}" y="{tt:.1}" width="{:.1}" height="{:.1}" fill="#000" fill-opacity="0.45"/>"##,
                            bx + BAR_W * 0.25,
                            BAR_W * 0.5,
                            (TOP + PLOT_H - tt).max(0.0)
                        );
                    }
                    let cx = bx + BAR_W / 2.0;
                    let wy = y(w.p95);
                    let _ = writeln!(
                        svg,
                        r##"<line x1="{cx:.1}" y1="{top:.1}" x2="{cx:.1}" y2="{wy:.1}" stroke="#222"/><line x1="{:.1}" y1="{wy:.1}" x2="{:.1}" y2="{wy:.1}" stroke="#222"/>"##,
                        cx - 7.0,
                        cx + 7.0
                    );
                    let _ = writeln!(
                        svg,
                        r#"<text x="{cx:.1}" y="{:.1}" text-anchor="middle" font-size="10">{:.2}</text>"#,
                        wy - 4.0,
                        w.p50
                    );
                }
                None => {
                    let _ = writeln!(
                        svg,
                        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10">n/a</text>"#,
                        bx + BAR_W / 2.0,
                        TOP + PLOT_H - 4.0
                    );
                }
            }
            let _ = writeln!(svg, "</g>");
        }
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            gx + GROUP_W / 2.0,
            TOP + PLOT_H + 18.0,
            xml_escape(&s.name)
        );
        if let Some(r) = s.ratio_wall_p50 {
            let _ = writeln!(
                svg,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="10" fill="#555">{r:.2}x</text>"##,
                gx + GROUP_W / 2.0,
                TOP + PLOT_H + 34.0
            );
        }
        let _ = writeln!(svg, "</g>");
    }
    let _ = writeln!(
        svg,
        r##"<text x="{LEFT}" y="{:.1}" font-size="10" fill="#555">under each scenario: wall p50 ratio dind / shared-socket</text>"##,
        height - 10.0
    );
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_axis_rounds_up() {
        assert_eq!(nice_axis(7.3), (8.0, 2.0));
        assert_eq!(nice_axis(0.42), (0.5, 0.1));
        assert_eq!(nice_axis(0.0), (1.0, 0.2));
        assert_eq!(nice_axis(48.0), (50.0, 10.0));
    }

    #[test]
    fn escapes_xml() {
        assert_eq!(xml_escape("a<b&\"c\">"), "a&lt;b&amp;&quot;c&quot;&gt;");
    }
}
