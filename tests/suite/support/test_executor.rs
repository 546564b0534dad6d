//! A deterministic [`JobExecutor`] for daemon tests: no Docker, output known in advance.
//!
//! Script lines it understands: `echo TEXT` (prints TEXT), `sleep SECS` (waits, cancellable),
//! `bulk N` (prints N bytes of a fixed pattern), `exit N` (fails with script_failure, exit N),
//! `fail REASON` (fails with that [`FailureReason`], by its GitLab name, no exit code),
//! `secret` (prints the value of the `SECRET` variable). Every line is echoed as `$ line` first.
//! On `cancel_gracefully` it runs the `after_script` step and returns `Canceled`; on `abort` it
//! returns `Canceled` at once.

use isolated_runner::config::RunnerConfig;
use isolated_runner::gitlab::types::JobResponse;
use isolated_runner::job::{FailureReason, JobControl, JobExecutor, JobOutcome};
use isolated_runner::trace::TraceSink;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What happened to a job inside the executor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The job started.
    Started(u64),
    /// `cancel_gracefully` fired; after_script ran.
    CanceledGracefully(u64),
    /// `abort` fired.
    Aborted(u64),
    /// The job ended by itself.
    Finished(u64),
}

/// See the module doc.
#[derive(Default)]
pub struct TestExecutor {
    written: Mutex<HashMap<u64, Vec<u8>>>,
    events: Mutex<Vec<Event>>,
    running: AtomicUsize,
    max_running: AtomicUsize,
}

impl TestExecutor {
    /// A new executor behind an `Arc`.
    pub fn new() -> Arc<TestExecutor> {
        Arc::new(TestExecutor::default())
    }

    /// Every byte this executor wrote to job `id`'s trace.
    pub fn written(&self, id: u64) -> Vec<u8> {
        self.written
            .lock()
            .unwrap()
            .get(&id)
            .cloned()
            .unwrap_or_default()
    }

    /// Events so far.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    /// Jobs running right now.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    /// Most jobs that ran at once.
    pub fn max_running(&self) -> usize {
        self.max_running.load(Ordering::SeqCst)
    }

    fn write(&self, id: u64, trace: &dyn TraceSink, data: &[u8]) {
        self.written
            .lock()
            .unwrap()
            .entry(id)
            .or_default()
            .extend_from_slice(data);
        trace.append(data);
    }

    fn event(&self, e: Event) {
        self.events.lock().unwrap().push(e);
    }
}

enum Stop {
    Graceful,
    Abort,
}

#[async_trait::async_trait]
impl JobExecutor for TestExecutor {
    async fn execute(
        &self,
        job: JobResponse,
        _runner: Arc<RunnerConfig>,
        trace: Arc<dyn TraceSink>,
        control: JobControl,
    ) -> JobOutcome {
        let id = job.id;
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_running.fetch_max(now, Ordering::SeqCst);
        self.event(Event::Started(id));
        let secret = job
            .variables
            .iter()
            .find(|v| v.key == "SECRET")
            .map(|v| v.value.clone())
            .unwrap_or_default();
        let mut outcome = JobOutcome::Success;
        let mut stop = None;
        'steps: for step in job.steps.iter().filter(|s| s.name != "after_script") {
            for line in &step.script {
                if control.abort.is_cancelled() {
                    stop = Some(Stop::Abort);
                    break 'steps;
                }
                if control.cancel_gracefully.is_cancelled() {
                    stop = Some(Stop::Graceful);
                    break 'steps;
                }
                self.write(id, &*trace, format!("$ {line}\n").as_bytes());
                let (cmd, arg) = line.split_once(' ').unwrap_or((line.as_str(), ""));
                match cmd {
                    "echo" => self.write(id, &*trace, format!("{arg}\n").as_bytes()),
                    "secret" => {
                        self.write(id, &*trace, format!("the secret is {secret}\n").as_bytes())
                    }
                    "bulk" => {
                        let n: usize = arg.parse().unwrap_or(0);
                        let data: Vec<u8> = (0..n)
                            .map(|i| b"abcdefghijklmnopqrstuvwxyz\n"[i % 27])
                            .collect();
                        for chunk in data.chunks(4096) {
                            self.write(id, &*trace, chunk);
                        }
                    }
                    "sleep" => {
                        let secs: f64 = arg.parse().unwrap_or(0.0);
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs_f64(secs)) => {}
                            _ = control.cancel_gracefully.cancelled() => { stop = Some(Stop::Graceful); break 'steps; }
                            _ = control.abort.cancelled() => { stop = Some(Stop::Abort); break 'steps; }
                        }
                    }
                    "fail" => {
                        let reason = FailureReason::from_name(arg)
                            .unwrap_or_else(|| panic!("`fail {arg}`: not a failure reason"));
                        outcome = JobOutcome::failed(reason);
                        break 'steps;
                    }
                    "exit" => {
                        let code: i32 = arg.parse().unwrap_or(1);
                        outcome = JobOutcome::Failed {
                            reason: FailureReason::ScriptFailure,
                            exit_code: Some(code),
                        };
                        break 'steps;
                    }
                    _ => {}
                }
            }
        }
        if matches!(stop, Some(Stop::Graceful)) && control.abort.is_cancelled() {
            stop = Some(Stop::Abort);
        }
        match stop {
            Some(Stop::Abort) => {
                self.event(Event::Aborted(id));
                outcome = JobOutcome::Canceled;
            }
            Some(Stop::Graceful) => {
                self.event(Event::CanceledGracefully(id));
                outcome = JobOutcome::Canceled;
            }
            None => {}
        }
        if !matches!(stop, Some(Stop::Abort)) {
            // after_script runs even after a graceful cancel; only abort stops it.
            'after: for step in job.steps.iter().filter(|s| s.name == "after_script") {
                for line in &step.script {
                    self.write(id, &*trace, format!("$ {line}\n").as_bytes());
                    if let Some(t) = line.strip_prefix("echo ") {
                        self.write(id, &*trace, format!("{t}\n").as_bytes());
                    }
                    if let Some(secs) = line.strip_prefix("sleep ") {
                        let secs: f64 = secs.parse().unwrap_or(0.0);
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs_f64(secs)) => {}
                            _ = control.abort.cancelled() => {
                                self.event(Event::Aborted(id));
                                outcome = JobOutcome::Canceled;
                                break 'after;
                            }
                        }
                    }
                }
            }
        }
        if stop.is_none() {
            self.event(Event::Finished(id));
        }
        self.running.fetch_sub(1, Ordering::SeqCst);
        outcome
    }
}
