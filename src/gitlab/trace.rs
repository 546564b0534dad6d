//! The trace uploader: a [`TraceSink`] that ships the job log with `PATCH /jobs/:id/trace`
//! (protocol section 6) and turns the answers into cancellation signals (section 5.4).
//!
//! Bytes are kept in memory until GitLab acknowledged them (the pipeline's `output_limit` bounds
//! the size), so an outage never loses output: the uploader keeps them and retries, and a `416`
//! makes it resend from the offset the server names.

use super::client::{Client, JobAnswer, UpdateJob};
use crate::outcome::JobControl;
use crate::secret::Secret;
use crate::trace::TraceSink;
use bytes::Bytes;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Timing of the uploader.
#[derive(Debug, Clone)]
pub struct TraceOptions {
    /// Interval between patches until GitLab names one (`X-GitLab-Trace-Update-Interval`).
    pub initial_interval: Duration,
    /// Largest patch body (the official runner sends at most 1 MiB).
    pub max_patch: usize,
    /// Send a keep-alive `PUT state=running` after this long without a patch.
    pub force_send_interval: Duration,
    /// How long the final flush keeps retrying during a GitLab outage.
    pub final_flush_deadline: Duration,
    /// First pause between final-flush retries (doubles up to 30 s).
    pub final_retry_pause: Duration,
}

impl Default for TraceOptions {
    fn default() -> Self {
        TraceOptions {
            initial_interval: Duration::from_secs(3),
            max_patch: 1024 * 1024,
            force_send_interval: Duration::from_secs(30),
            final_flush_deadline: Duration::from_secs(3600),
            final_retry_pause: Duration::from_secs(1),
        }
    }
}

/// What an answer of a job endpoint asks the runner to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobSignal {
    /// Keep going.
    Continue,
    /// `Job-Status: canceling`: stop the script, still run `after_script`.
    CancelGracefully,
    /// `Job-Status: canceled`/`failed` or `403`: stop now.
    Abort,
}

/// Reads the steering part of a job endpoint answer (protocol 5.4, Go runner behaviour).
pub fn job_signal(answer: &JobAnswer) -> JobSignal {
    if answer.status == 403 {
        return JobSignal::Abort;
    }
    match answer.job_status.as_deref() {
        Some("canceling") => JobSignal::CancelGracefully,
        Some("canceled") | Some("failed") => JobSignal::Abort,
        _ => JobSignal::Continue,
    }
}

/// Fires the job's tokens for a signal and returns whether GitLab asked to stop.
pub fn apply_signal(signal: JobSignal, control: &JobControl) -> bool {
    match signal {
        JobSignal::Continue => false,
        JobSignal::CancelGracefully => {
            control.cancel_gracefully.cancel();
            true
        }
        JobSignal::Abort => {
            control.cancel_gracefully.cancel();
            control.abort.cancel();
            true
        }
    }
}

/// `crc32:` + 8 lowercase hex digits (protocol 6.4).
pub fn checksum_string(crc: u32) -> String {
    format!("crc32:{crc:08x}")
}

/// Size and checksum of everything written to the trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceSummary {
    /// `crc32:<hex>` over all bytes.
    pub checksum: String,
    /// Total bytes.
    pub bytesize: u64,
    /// True when GitLab acknowledged every byte.
    pub complete: bool,
}

struct Buffer {
    data: Vec<u8>,
    /// Bytes GitLab has acknowledged; everything after is still to send.
    sent: u64,
    crc: crc32fast::Hasher,
    closed: bool,
}

struct Shared {
    buf: Mutex<Buffer>,
    wake: Notify,
    /// Set when GitLab asked to cancel or abort the job.
    stopped_by_gitlab: AtomicBool,
    /// Set when GitLab no longer takes trace data (403/404 on the final flush).
    gone: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Buffer> {
        // A poisoned lock only means another thread panicked mid-append; the bytes are still
        // consistent enough to keep shipping.
        self.buf.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Streams one job's trace to GitLab. Create it with [`TraceUploader::start`], hand
/// [`TraceUploader::sink`] to the pipeline, and call [`TraceUploader::finish`] before the final
/// status update.
pub struct TraceUploader {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

struct Sink(Arc<Shared>);

impl TraceSink for Sink {
    fn append(&self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let mut b = self.0.lock();
        if b.closed {
            tracing::debug!(
                bytes = data.len(),
                "trace bytes after the trace was closed, dropped"
            );
            return;
        }
        b.data.extend_from_slice(data);
        b.crc.update(data);
        let pending = b.data.len() as u64 - b.sent;
        drop(b);
        if pending >= 1024 * 1024 {
            self.0.wake.notify_one();
        }
    }
}

impl TraceUploader {
    /// Starts the upload task for job `id`.
    pub fn start(
        client: Client,
        id: u64,
        token: Secret,
        control: JobControl,
        options: TraceOptions,
    ) -> TraceUploader {
        let shared = Arc::new(Shared {
            buf: Mutex::new(Buffer {
                data: Vec::new(),
                sent: 0,
                crc: crc32fast::Hasher::new(),
                closed: false,
            }),
            wake: Notify::new(),
            stopped_by_gitlab: AtomicBool::new(false),
            gone: AtomicBool::new(false),
        });
        let worker = Worker {
            client,
            id,
            token,
            control,
            options,
            shared: shared.clone(),
        };
        let task = tokio::spawn(worker.run());
        TraceUploader { shared, task }
    }

    /// The sink to hand to the pipeline.
    pub fn sink(&self) -> Arc<dyn TraceSink> {
        Arc::new(Sink(self.shared.clone()))
    }

    /// The bytes GitLab has acknowledged so far: their count and the CRC-32 over them. The
    /// daemon's crash journal records this, so a restarted runner can append to the trace at
    /// the right offset and still send a correct checksum.
    pub fn acknowledged(&self) -> (u64, u32) {
        let b = self.shared.lock();
        let sent = (b.sent as usize).min(b.data.len());
        let mut h = crc32fast::Hasher::new();
        h.update(&b.data[..sent]);
        (sent as u64, h.finalize())
    }

    /// True once GitLab asked to cancel or abort this job.
    pub fn stopped_by_gitlab(&self) -> bool {
        self.shared.stopped_by_gitlab.load(Ordering::SeqCst)
    }

    /// Closes the trace, ships every remaining byte (retrying through outages up to
    /// `final_flush_deadline`), and returns size and checksum for the final update.
    ///
    /// # Cancel safety
    /// Not cancel safe in spirit: dropping the future leaves the upload task running detached
    /// until its deadline, which is harmless but wastes the final update.
    pub async fn finish(self) -> TraceSummary {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "trace upload task ended abnormally");
        }
        let b = self.shared.lock();
        TraceSummary {
            checksum: checksum_string(b.crc.clone().finalize()),
            bytesize: b.data.len() as u64,
            complete: b.sent == b.data.len() as u64,
        }
    }
}

struct Worker {
    client: Client,
    id: u64,
    token: Secret,
    control: JobControl,
    options: TraceOptions,
    shared: Arc<Shared>,
}

enum Round {
    /// Everything pending was sent.
    Drained,
    /// Stop for this round (416, 404 while running, transport error); try again later.
    Later,
    /// GitLab takes no more data for this job.
    Gone,
}

impl Worker {
    async fn run(self) {
        let mut interval = self.options.initial_interval;
        let mut last_contact = Instant::now();
        let mut final_started: Option<Instant> = None;
        let mut final_pause = self.options.final_retry_pause;
        let mut outage_logged = false;
        loop {
            let closed = self.shared.lock().closed;
            if !closed {
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = self.shared.wake.notified() => {}
                }
            }
            let closed = self.shared.lock().closed;
            if closed && final_started.is_none() {
                final_started = Some(Instant::now());
            }
            // Only a round that sent something counts as contact: a silent job (`sleep 600`)
            // must still get keep-alives, whose answers carry GitLab's cancel request.
            let had_pending = {
                let b = self.shared.lock();
                b.sent < b.data.len() as u64
            };
            let round = self
                .send_pending(&mut interval, &mut outage_logged, closed)
                .await;
            if had_pending && !matches!(round, Round::Later) {
                last_contact = Instant::now();
            }
            match round {
                Round::Gone => {
                    self.shared.gone.store(true, Ordering::SeqCst);
                    return;
                }
                Round::Drained if closed => return,
                Round::Drained => {
                    if last_contact.elapsed() >= self.options.force_send_interval {
                        self.keep_alive(&mut interval).await;
                        last_contact = Instant::now();
                    }
                }
                Round::Later if closed => {
                    let started = final_started.unwrap_or_else(Instant::now);
                    if started.elapsed() >= self.options.final_flush_deadline {
                        let b = self.shared.lock();
                        tracing::error!(
                            job.id = self.id,
                            unsent = b.data.len() as u64 - b.sent,
                            "gave up sending the end of the trace after the final flush deadline"
                        );
                        return;
                    }
                    tokio::time::sleep(
                        final_pause.min(interval.max(self.options.final_retry_pause)),
                    )
                    .await;
                    final_pause = (final_pause * 2).min(Duration::from_secs(30));
                }
                Round::Later => {}
            }
        }
    }

    fn handle_signals(&self, answer: &JobAnswer, interval: &mut Duration) {
        if let Some(i) = answer.update_interval {
            *interval = i;
        }
        let signal = job_signal(answer);
        if signal != JobSignal::Continue {
            if !self.shared.stopped_by_gitlab.swap(true, Ordering::SeqCst) {
                tracing::info!(job.id = self.id, status = answer.status, job_status = ?answer.job_status, ?signal, "gitlab asked to stop the job");
            }
            apply_signal(signal, &self.control);
        }
    }

    async fn send_pending(
        &self,
        interval: &mut Duration,
        outage_logged: &mut bool,
        closed: bool,
    ) -> Round {
        loop {
            let (start, chunk) = {
                let b = self.shared.lock();
                let len = b.data.len() as u64;
                if b.sent >= len {
                    return Round::Drained;
                }
                let from = b.sent as usize;
                let to = (from + self.options.max_patch).min(b.data.len());
                (b.sent, Bytes::copy_from_slice(&b.data[from..to]))
            };
            let len = chunk.len() as u64;
            match self
                .client
                .patch_trace(self.id, &self.token, start, chunk, false)
                .await
            {
                Ok(answer) => {
                    if *outage_logged {
                        tracing::info!(job.id = self.id, "trace upload works again");
                        *outage_logged = false;
                    }
                    self.handle_signals(&answer, interval);
                    match answer.status {
                        200..=299 => {
                            let mut b = self.shared.lock();
                            // Only move forward from the offset this patch started at; a 416
                            // recovery in between may have moved `sent` already.
                            if b.sent == start {
                                b.sent = start + len;
                            }
                        }
                        416 => {
                            let mut b = self.shared.lock();
                            let total = b.data.len() as u64;
                            match answer.range_end {
                                Some(end) => {
                                    tracing::warn!(
                                        job.id = self.id,
                                        ours = start,
                                        server = end,
                                        "trace offset mismatch (416), resending from the server's size"
                                    );
                                    // The server may hold more than we have only if it got bytes we
                                    // never sent; clamp so we never index past our buffer.
                                    b.sent = end.min(total);
                                }
                                None => {
                                    tracing::warn!(
                                        job.id = self.id,
                                        "416 without Range header, resending the whole trace"
                                    );
                                    b.sent = 0;
                                }
                            }
                            return Round::Later;
                        }
                        403 => return Round::Gone,
                        // Ignored while the job runs; ends the final flush (protocol 6.2).
                        404 if closed => return Round::Gone,
                        _ => return Round::Later,
                    }
                }
                Err(e) => {
                    if !*outage_logged {
                        tracing::warn!(job.id = self.id, error = %e, "cannot send the trace, keeping it and retrying");
                        *outage_logged = true;
                    }
                    return Round::Later;
                }
            }
        }
    }

    async fn keep_alive(&self, interval: &mut Duration) {
        let (checksum, bytesize) = {
            let b = self.shared.lock();
            (
                checksum_string(b.crc.clone().finalize()),
                b.data.len() as u64,
            )
        };
        let update = UpdateJob {
            state: "running".into(),
            checksum: Some(checksum),
            bytesize: Some(bytesize),
            ..UpdateJob::default()
        };
        match self.client.update_job(self.id, &self.token, &update).await {
            Ok(answer) => self.handle_signals(&answer, interval),
            Err(e) => tracing::debug!(job.id = self.id, error = %e, "keep-alive update failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_follow_the_go_runner() {
        let a = |status, js: Option<&str>| JobAnswer {
            status,
            job_status: js.map(str::to_string),
            update_interval: None,
            range_end: None,
        };
        assert_eq!(job_signal(&a(202, Some("running"))), JobSignal::Continue);
        assert_eq!(
            job_signal(&a(202, Some("canceling"))),
            JobSignal::CancelGracefully
        );
        assert_eq!(job_signal(&a(403, Some("canceled"))), JobSignal::Abort);
        assert_eq!(job_signal(&a(200, Some("failed"))), JobSignal::Abort);
        assert_eq!(job_signal(&a(403, None)), JobSignal::Abort);
        let c = JobControl::default();
        assert!(apply_signal(JobSignal::CancelGracefully, &c));
        assert!(c.cancel_gracefully.is_cancelled() && !c.abort.is_cancelled());
    }

    #[test]
    fn checksum_format() {
        let mut h = crc32fast::Hasher::new();
        h.update(b"hello");
        assert_eq!(checksum_string(h.finalize()), "crc32:3610a686");
    }
}
