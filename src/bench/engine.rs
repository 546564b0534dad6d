//! Runs the plan: warm-up rounds, then measured rounds, modes interleaved A B A B.

use super::host::{self, HostFacts, RunnerMemory};
use super::scenario::{Scenario, Shape};
use super::target::{BenchTarget, JobHooks, JobSpec, RunSample, SampleOutcome, TargetInfo};
use crate::config::IsolationMode;
use std::io::Write;
use std::path::PathBuf;

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Scenarios, in order.
    pub scenarios: Vec<Scenario>,
    /// Modes, in the order they alternate within a round (A B A B…).
    pub modes: Vec<IsolationMode>,
    /// Measured rounds per scenario (each round runs every mode once).
    pub runs: usize,
    /// Discarded rounds before the measured ones.
    pub warmup: usize,
    /// Jobs released at once by the `concurrent` scenario.
    pub concurrency: usize,
    /// Where the scenario projects live (`bench/scenarios`).
    pub scenarios_root: PathBuf,
    /// Idle time after each release of jobs before the next (`--pace`): the gap a runner sees
    /// between a pipeline's stages, in which background work (pool refills, teardowns)
    /// settles instead of landing on whichever job runs next.
    pub pace: std::time::Duration,
}

/// One job of a slot: its name and its hooks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotJob {
    /// Job name in the scenario's `.gitlab-ci.yml`.
    pub job_name: String,
    /// Faults to inject.
    pub hooks: JobHooks,
}

impl Plan {
    /// (warm-up rounds, measured rounds) for a scenario. The teardown batch is one round with
    /// no warm-up: 100 jobs per mode is already the measurement.
    pub fn rounds(&self, scenario: &Scenario) -> (usize, usize) {
        match scenario.shape {
            Shape::Teardown { .. } => (0, 1),
            _ => (self.warmup, self.runs),
        }
    }

    /// The slots of one round: each slot is a set of jobs released together, run once per mode.
    pub fn slots(&self, scenario: &Scenario) -> Vec<Vec<SlotJob>> {
        let plain = |name: &str| SlotJob {
            job_name: name.to_string(),
            hooks: JobHooks::default(),
        };
        match scenario.shape {
            Shape::Single | Shape::Build(_) => vec![vec![plain(scenario.job)]],
            Shape::Parallel { width } => {
                vec![(0..width.max(1)).map(|_| plain(scenario.job)).collect()]
            }
            // One burst: job i runs in mode i mod modes (see `run`), so the burst is
            // --concurrency jobs in all, job names taken in turn per mode.
            Shape::Mixed { jobs } => {
                let modes = self.modes.len().max(1);
                let batch = (0..self.concurrency.max(1))
                    .map(|i| {
                        let k = (i / modes) % jobs.len().max(1);
                        plain(jobs.get(k).copied().unwrap_or("noop"))
                    })
                    .collect();
                vec![batch]
            }
            Shape::Concurrent { jobs } => {
                let batch = (0..self.concurrency.max(1))
                    .map(|i| plain(jobs.get(i % jobs.len().max(1)).copied().unwrap_or("noop")))
                    .collect();
                vec![batch]
            }
            Shape::Teardown {
                jobs,
                cancel_every,
                kill_sidecar_every,
                fault_marker,
            } => (1..=jobs)
                .map(|n| {
                    vec![SlotJob {
                        job_name: scenario.job.to_string(),
                        hooks: JobHooks {
                            cancel_mid_script: cancel_every > 0 && n % cancel_every == 0,
                            kill_sidecar_mid_script: kill_sidecar_every > 0
                                && n % kill_sidecar_every == 0,
                            fault_marker: Some(fault_marker),
                        },
                    }]
                })
                .collect(),
        }
    }

    /// Jobs the whole plan runs (warm-ups included), for the progress bar.
    pub fn total_jobs(&self) -> usize {
        self.scenarios
            .iter()
            .map(|s| {
                let (warm, measured) = self.rounds(s);
                let per_round: usize = self.slots(s).iter().map(Vec::len).sum();
                // A mixed burst holds every mode's jobs already.
                let modes = match s.shape {
                    Shape::Mixed { .. } => 1,
                    _ => self.modes.len(),
                };
                (warm + measured) * per_round * modes
            })
            .sum()
    }
}

/// One job's record.
#[derive(Debug, Clone)]
pub struct Measurement {
    /// Scenario name.
    pub scenario: &'static str,
    /// Mode it ran in.
    pub mode: IsolationMode,
    /// Round (warm-ups first).
    pub round: usize,
    /// Index in the round (slot, then job within the slot).
    pub index: usize,
    /// Discarded from statistics.
    pub warmup: bool,
    /// The target's sample, or why the target could not run the job.
    pub result: Result<RunSample, String>,
    /// Runner memory right after the job.
    pub runner_memory: Option<RunnerMemory>,
    /// Objects left on the host after the job's teardown (from [`BenchTarget::leftovers`]).
    pub leftovers: Option<u64>,
    /// The host's 1-minute load average right after the job (the machine may be shared:
    /// every number is read next to it).
    pub load1: Option<f64>,
}

/// Everything a bench produced.
#[derive(Debug, Clone)]
pub struct BenchRun {
    /// The plan that ran.
    pub plan: Plan,
    /// Host facts.
    pub host: HostFacts,
    /// Docker side facts.
    pub target: TargetInfo,
    /// Every job, in run order.
    pub measurements: Vec<Measurement>,
    /// Runner memory at the end (VmHWM is the peak over the whole bench).
    pub runner_memory: Option<RunnerMemory>,
}

/// Progress on stderr: one `\r`-rewritten line on a terminal, one line per job otherwise.
pub struct Progress {
    out: Box<dyn Write + Send>,
    tty: bool,
    total: usize,
    done: usize,
    width: usize,
}

impl Progress {
    /// Progress to `out`; `tty` picks the `\r` style.
    pub fn new(out: Box<dyn Write + Send>, tty: bool, total: usize) -> Progress {
        Progress {
            out,
            tty,
            total,
            done: 0,
            width: 0,
        }
    }

    /// Progress to stderr, style chosen by whether stderr is a terminal.
    pub fn stderr(total: usize) -> Progress {
        use std::io::IsTerminal;
        let tty = std::io::stderr().is_terminal();
        Progress::new(Box::new(std::io::stderr()), tty, total)
    }

    /// `per_round`: jobs of one mode in a round (the concurrent batch, the teardown series);
    /// above 1 the line also says which of them this was.
    fn job_done(&mut self, m: &Measurement, rounds: (usize, usize), per_round: usize) {
        self.done += 1;
        let mut phase = if m.warmup {
            format!("warm-up {}/{}", m.round + 1, rounds.0)
        } else {
            format!("run {}/{}", m.round + 1 - rounds.0, rounds.1)
        };
        if per_round > 1 {
            phase.push_str(&format!(" job {}/{per_round}", m.index + 1));
        }
        let what = match &m.result {
            Ok(s) => {
                let mut w = format!(
                    "wall {:.2} s, ttfsl {}",
                    s.wall.as_secs_f64(),
                    s.ttfsl
                        .map(|t| format!("{:.2} s", t.as_secs_f64()))
                        .unwrap_or_else(|| "-".into())
                );
                // The job's own work, to tell a warm build from a cold one at a glance.
                if let Some(step) = s.stages.get("step_script") {
                    w.push_str(&format!(", step_script {step:.2} s"));
                }
                match s.outcome {
                    SampleOutcome::Success => {}
                    SampleOutcome::Failed => w.push_str(", FAILED"),
                    SampleOutcome::Canceled => w.push_str(", canceled"),
                }
                let notes = short_notes(&s.notes);
                if !notes.is_empty() {
                    w.push_str(&format!(" [{notes}]"));
                }
                w
            }
            Err(e) => format!("FAILED: {e}"),
        };
        let line = format!(
            "[{:>w$}/{}] {} {} {}: {}",
            self.done,
            self.total,
            m.scenario,
            m.mode.as_str(),
            phase,
            what,
            w = self.total.to_string().len()
        );
        // Progress is best effort: a closed stderr must not stop the bench.
        let _ = if self.tty {
            let pad = self.width.saturating_sub(line.len());
            self.width = line.len();
            write!(self.out, "\r{line}{}", " ".repeat(pad))
        } else {
            writeln!(self.out, "{line}")
        };
        let _ = self.out.flush();
    }

    /// Ends the `\r` line.
    pub fn finish(&mut self) {
        if self.tty && self.done > 0 {
            // Best effort, as above.
            let _ = writeln!(self.out);
        }
    }
}

/// A job's notes for its progress line: one line, without the trace tail a failure note
/// carries (that goes to the report's failure notes), at most [`NOTES_MAX`] characters.
fn short_notes(notes: &[String]) -> String {
    let text = notes
        .iter()
        .map(|n| {
            let n = n.split("; trace tail:").next().unwrap_or("");
            n.lines().next().unwrap_or("").trim().to_string()
        })
        .filter(|n| !n.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    if text.chars().count() > NOTES_MAX {
        let cut: String = text.chars().take(NOTES_MAX).collect();
        format!("{cut}…")
    } else {
        text
    }
}

/// Longest notes text on a progress line.
const NOTES_MAX: usize = 160;

/// Runs `plan` against `target`. Never stops on a failed job: failures are recorded.
///
/// Order, per scenario: warm-up rounds then measured rounds; in each round every slot is run
/// once per mode, modes alternating (dind, shared, dind, shared…), so slow drift of the host
/// (page cache, thermal, other tenants) hits both modes alike.
pub async fn run(target: &dyn BenchTarget, plan: &Plan, progress: &mut Progress) -> BenchRun {
    let host = host::host_facts().await;
    let info = target.describe().await;
    let mut measurements = Vec::new();
    for scenario in &plan.scenarios {
        let rounds = plan.rounds(scenario);
        let slots = plan.slots(scenario);
        let per_round: usize = slots.iter().map(Vec::len).sum();
        for round in 0..rounds.0 + rounds.1 {
            let warmup = round < rounds.0;
            let mut index = 0;
            for slot in &slots {
                // Which mode each release of the slot runs in: one release per mode, or (mixed
                // burst) one release whose job i runs in mode i mod modes.
                let releases: Vec<Vec<IsolationMode>> = match scenario.shape {
                    Shape::Mixed { .. } => vec![
                        (0..slot.len())
                            .map(|i| plan.modes[i % plan.modes.len()])
                            .collect(),
                    ],
                    _ => plan.modes.iter().map(|&m| vec![m; slot.len()]).collect(),
                };
                for modes in releases {
                    let specs: Vec<JobSpec> = slot
                        .iter()
                        .zip(&modes)
                        .enumerate()
                        .map(|(i, (job, &mode))| JobSpec {
                            scenario: *scenario,
                            project_dir: scenario.project_dir(&plan.scenarios_root),
                            job_name: job.job_name.clone(),
                            mode,
                            hooks: job.hooks,
                            warmup,
                            round,
                            index: index + i,
                        })
                        .collect();
                    for spec in &specs {
                        if let Err(e) = target.prepare(spec).await {
                            tracing::warn!(scenario = scenario.name, error = %e, "bench prepare failed");
                        }
                    }
                    let results =
                        futures::future::join_all(specs.iter().map(|s| target.run_job(s))).await;
                    let mut leftovers: Vec<(IsolationMode, Option<u64>)> = Vec::new();
                    for &mode in &modes {
                        if !leftovers.iter().any(|(m, _)| *m == mode) {
                            leftovers.push((mode, target.leftovers(mode).await.ok()));
                        }
                    }
                    let memory = host::runner_memory().await;
                    let load1 = host::load1().await;
                    for (spec, result) in specs.iter().zip(results) {
                        let m = Measurement {
                            scenario: scenario.name,
                            mode: spec.mode,
                            round,
                            index: spec.index,
                            warmup,
                            result: result.map_err(|e| e.to_string()),
                            runner_memory: memory,
                            leftovers: leftovers
                                .iter()
                                .find(|(m, _)| *m == spec.mode)
                                .and_then(|(_, n)| *n),
                            load1,
                        };
                        progress.job_done(&m, rounds, per_round);
                        measurements.push(m);
                    }
                    if !plan.pace.is_zero() {
                        tokio::time::sleep(plan.pace).await;
                    }
                }
                index += slot.len();
            }
        }
    }
    progress.finish();
    BenchRun {
        plan: plan.clone(),
        host,
        target: info,
        measurements,
        runner_memory: host::runner_memory().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_on_the_progress_line_are_short_and_one_line() {
        let notes = vec![
            "failed: script_failure exit 1; trace tail: line one\nline two".to_string(),
            "data root: warm".to_string(),
        ];
        assert_eq!(
            short_notes(&notes),
            "failed: script_failure exit 1; data root: warm"
        );
        assert_eq!(short_notes(&[]), "");
        let long = vec!["x".repeat(500)];
        assert_eq!(short_notes(&long).chars().count(), NOTES_MAX + 1);
    }
}
