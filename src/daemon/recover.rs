//! Start-up recovery: jobs a dead runner process left in the journal are torn down, closed in
//! their trace and reported failed; then the label reaper sweeps whatever else this runner id
//! left on the host.

use super::Shared;
use super::job::{map_failure_reason, send_final};
use super::journal::{Journal, JournalEntry};
use crate::cleanup::reaper::{self, ReapReport, ReapRequest};
use crate::config::Config;
use crate::gitlab::Client;
use crate::gitlab::client::UpdateJob;
use crate::gitlab::trace::checksum_string;
use crate::job::FailureReason;
use crate::metrics::{Metrics, RunnerMetrics};
use bytes::Bytes;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// The line appended to the trace of a job the runner lost.
pub const CLOSING_LINE: &str = "ERROR: the runner stopped while this job ran (crash or kill); the job was cleaned up on restart";

/// Counts a report's finds per kind into `isolated_runner_reaper_leftovers_total`.
fn count_leftovers(metrics: Option<&Arc<Metrics>>, report: &ReapReport) {
    let Some(m) = metrics else { return };
    for (kind, prefix) in [
        ("container", "container "),
        ("volume", "volume "),
        ("network", "network "),
        ("dir", "dir "),
    ] {
        let n = report
            .found
            .iter()
            .filter(|f| f.starts_with(prefix))
            .count();
        if n > 0 {
            m.leftovers_found(kind, n as u64);
        }
    }
}

async fn connect(config: &Config, entry_name: Option<&str>) -> Option<crate::docker::Docker> {
    let host = entry_name
        .and_then(|n| config.runners.iter().find(|r| r.name == n))
        .and_then(|r| r.docker.host.clone());
    match crate::docker::Docker::connect(host.as_deref()).await {
        Ok(d) => Some(d),
        Err(e) => {
            tracing::warn!(error = %e, "cannot reach the host docker daemon to remove leftovers");
            None
        }
    }
}

/// Tears down every journaled job and runs the label reaper for `system_id`. Returns the
/// entries still to report to GitLab. Runs before the first poll.
pub(super) async fn cleanup(
    config: &Config,
    system_id: &str,
    journal: Option<&Journal>,
    reap_runner: bool,
    metrics: Option<&Arc<Metrics>>,
) -> Vec<JournalEntry> {
    let mut entries = Vec::new();
    if let Some(j) = journal {
        for e in j.pending().await {
            match e {
                Ok(e) => entries.push(e),
                Err(e) => {
                    tracing::error!(error = %e, "a crash journal entry cannot be read; left in place")
                }
            }
        }
    }
    for e in &entries {
        if e.final_sent {
            tracing::warn!(
                job.id = e.job_id,
                runner = %e.runner_name,
                "the runner stopped while this job's environment was torn down (its final state \
                 was sent); removing what is left"
            );
        } else {
            tracing::warn!(
                job.id = e.job_id,
                runner = %e.runner_name,
                "the runner stopped while this job ran; cleaning it up"
            );
        }
        let Some(docker) = connect(config, Some(&e.runner_name)).await else {
            continue;
        };
        let req = ReapRequest {
            runner_id: e.runner_id.clone(),
            state_dir: e.state_dir.clone(),
            builds_dir: e.builds_dir.clone(),
            dry_run: false,
        };
        let report = reaper::reap_job(&docker, &req, e.job_id).await;
        count_leftovers(metrics, &report);
        tracing::info!(
            job.id = e.job_id,
            removed = report.removed.len(),
            failures = report.failures.len(),
            "removed what the lost job left"
        );
    }
    // A job whose final state GitLab has is done once its leftovers are gone (above): nothing
    // more to report, so it leaves the journal here.
    let (done, entries): (Vec<JournalEntry>, Vec<JournalEntry>) =
        entries.into_iter().partition(|e| e.final_sent);
    for e in done {
        forget(journal, e.job_id).await;
    }
    if reap_runner {
        // One sweep per (docker host, builds dir): everything labelled with this runner id is a
        // leftover now, as no job of this process runs yet.
        let mut seen = BTreeSet::new();
        for r in &config.runners {
            if !seen.insert((r.docker.host.clone(), r.builds_dir.clone())) {
                continue;
            }
            let Some(docker) = connect(config, Some(&r.name)).await else {
                continue;
            };
            let req = ReapRequest {
                runner_id: system_id.to_string(),
                state_dir: config.state_dir.clone(),
                builds_dir: r.builds_dir.clone(),
                dry_run: false,
            };
            let report = reaper::reap(&docker, &req).await;
            count_leftovers(metrics, &report);
            // The root store's snapshots of this runner's dead sidecars (`isolation::golden`).
            let dir = crate::isolation::golden::store_dir(r, &config.state_dir);
            let roots =
                crate::isolation::golden::sweep_roots(&docker, &dir, Some(system_id), false).await;
            for f in &roots.failures {
                tracing::warn!(failure = %f, "a job root of an earlier run could not be removed");
            }
            if !roots.removed.is_empty() {
                tracing::warn!(
                    removed = roots.removed.len(),
                    "removed job roots of an earlier run of this runner"
                );
            }
            if !report.found.is_empty() {
                tracing::warn!(
                    runner = %r.name,
                    found = report.found.len(),
                    removed = report.removed.len(),
                    failures = report.failures.len(),
                    "removed leftovers of an earlier run of this runner"
                );
            }
        }
        // Goldens of image sets no entry of this config uses any more (a changed
        // preload_images, a rebuilt image): otherwise the store grows with every change.
        let grace = crate::isolation::golden::GOLDEN_GRACE;
        for s in crate::isolation::golden::sweep_unused_goldens(config, grace, false).await {
            s.log();
        }
    }
    entries
}

/// Appends [`CLOSING_LINE`] at the journaled offset, following a 416's `Range` when GitLab
/// holds a different length. Returns `(bytesize, checksum)` for the final update; the checksum
/// is known only when GitLab held exactly the journaled bytes.
async fn close_trace(
    client: &Client,
    e: &JournalEntry,
    deadline: Instant,
    mut pause: Duration,
) -> Option<(u64, Option<String>)> {
    let line = Bytes::from(format!("\n\x1b[31;1m{CLOSING_LINE}\x1b[0;m\n"));
    let mut offset = e.trace_offset;
    let mut crc = Some(e.trace_crc32);
    let mut mismatches = 0;
    loop {
        match client
            .patch_trace(e.job_id, &e.job_token, offset, line.clone(), false)
            .await
        {
            Ok(a) if (200..300).contains(&a.status) => {
                let checksum = crc.map(|c| {
                    let mut h = crc32fast::Hasher::new_with_initial_len(c, offset);
                    h.update(&line);
                    checksum_string(h.finalize())
                });
                return Some((offset + line.len() as u64, checksum));
            }
            Ok(a) if a.status == 416 => {
                mismatches += 1;
                let end = a.range_end.unwrap_or(0);
                if end != offset {
                    // GitLab holds bytes the journal did not see acknowledged (or lost some):
                    // their checksum is unknown here.
                    crc = None;
                    offset = end;
                }
                if mismatches > 5 {
                    tracing::warn!(
                        job.id = e.job_id,
                        "GitLab keeps refusing the trace offset; reporting without the closing line"
                    );
                    return None;
                }
                continue;
            }
            Ok(a) => {
                tracing::info!(
                    job.id = e.job_id,
                    status = a.status,
                    "GitLab takes no more trace for this job"
                );
                return None;
            }
            Err(err) => {
                if Instant::now() + pause > deadline {
                    tracing::warn!(job.id = e.job_id, error = %err, "cannot append the closing line to the trace");
                    return None;
                }
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(30));
    }
}

/// Closes the trace of a lost job, reports it `failed` (`runner_system_failure`) with the normal
/// final-update retries, and forgets it.
pub(super) async fn report_lost(
    shared: Arc<Shared>,
    entry: JournalEntry,
    metrics: Option<RunnerMetrics>,
) {
    let id = entry.job_id;
    let opts = &shared.options;
    let client = match url::Url::parse(&entry.gitlab_url)
        .map_err(|e| e.to_string())
        .and_then(|u| Client::new(&u, opts.client.clone()).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(job.id = id, error = %e, "cannot make a GitLab client for a lost job; forgetting it");
            forget(opts.journal.as_deref(), id).await;
            return;
        }
    };
    let deadline = Instant::now() + opts.final_update_deadline;
    let closed = close_trace(&client, &entry, deadline, opts.final_retry_pause).await;
    let (bytesize, checksum) = match closed {
        Some((b, c)) => (Some(b), c),
        None => (None, None),
    };
    let update = UpdateJob {
        state: "failed".into(),
        failure_reason: Some(map_failure_reason(
            FailureReason::RunnerSystemFailure.as_str(),
            &entry.failure_reasons,
        )),
        exit_code: None,
        checksum,
        bytesize,
        info: None,
    };
    send_final(
        &client,
        &shared,
        metrics.as_ref(),
        id,
        &entry.job_token,
        &update,
    )
    .await;
    forget(opts.journal.as_deref(), id).await;
}

async fn forget(journal: Option<&Journal>, id: u64) {
    if let Some(j) = journal
        && let Err(e) = j.remove(id).await
    {
        tracing::warn!(job.id = id, error = %e, "cannot remove the job from the journal");
    }
}
