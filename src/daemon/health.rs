//! gitlab-runner's health gate per runner entry (`unhealthy_requests_limit`,
//! `unhealthy_interval`): after that many consecutive failed job requests the entry stops asking
//! for jobs until `unhealthy_interval` has passed since its last healthy answer, then one request
//! is forced through and the count starts again. This sits beside the poll loop's own backoff
//! (which spaces retries after errors); the gate is what bounds a dead entry to a handful of
//! requests an hour, as with gitlab-runner.

use crate::gitlab;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Whether a job request's failure counts against the entry's health. As in gitlab-runner's
/// `RequestJob`: a refused token and a request that got no usable answer do; any other status
/// (5xx, 429, …) means GitLab is there and is handled by the ordinary backoff.
pub(super) fn counts_as_unhealthy(e: &gitlab::Error) -> bool {
    match e {
        gitlab::Error::Transport { .. } | gitlab::Error::Decode { .. } => true,
        gitlab::Error::Cancelled { .. } => false,
        other => matches!(other.status(), Some(401 | 403 | 422)),
    }
}

/// What the poll loop should do about the gate before a request.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Gate {
    /// Ask for a job.
    Open,
    /// The entry is unhealthy and was for long enough: this request is forced through (the
    /// count starts again).
    Forced { failures: u32 },
    /// The entry is unhealthy: no request before this instant.
    ClosedUntil(Instant),
}

/// What a request's outcome changed.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Change {
    /// Nothing to log.
    None,
    /// The failure that reached the limit: the entry is now unhealthy.
    BecameUnhealthy { failures: u32 },
    /// A healthy answer after the entry had been unhealthy.
    Recovered,
}

#[derive(Debug)]
struct State {
    failures: u32,
    /// gitlab-runner's `lastCheck`: the last healthy answer or forced check.
    last_check: Instant,
    /// Set when the limit was reached, cleared by a healthy answer (for the recovery log and
    /// the metric: a forced check that fails again does not log twice).
    unhealthy: bool,
}

/// One runner entry's health.
#[derive(Debug)]
pub(super) struct Health {
    limit: u32,
    interval: Duration,
    state: Mutex<State>,
}

impl Health {
    pub(super) fn new(limit: u32, interval: Duration) -> Self {
        Health {
            limit: limit.max(1),
            interval,
            state: Mutex::new(State {
                failures: 0,
                last_check: Instant::now(),
                unhealthy: false,
            }),
        }
    }

    pub(super) fn limit(&self) -> u32 {
        self.limit
    }

    pub(super) fn interval(&self) -> Duration {
        self.interval
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Plain counters: still valid if a holder panicked.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// gitlab-runner's `isHealthy`, called before each request.
    pub(super) fn gate(&self, now: Instant) -> Gate {
        let mut s = self.lock();
        if s.failures < self.limit {
            return Gate::Open;
        }
        let reopens = s.last_check + self.interval;
        if now > reopens || self.interval.is_zero() {
            let failures = s.failures;
            s.failures = 0;
            s.last_check = now;
            return Gate::Forced { failures };
        }
        Gate::ClosedUntil(reopens)
    }

    /// gitlab-runner's `markHealth`, called with each request's outcome.
    pub(super) fn mark(&self, healthy: bool, now: Instant) -> Change {
        let mut s = self.lock();
        if healthy {
            s.failures = 0;
            s.last_check = now;
            if std::mem::take(&mut s.unhealthy) {
                return Change::Recovered;
            }
            return Change::None;
        }
        s.failures = s.failures.saturating_add(1);
        if s.failures >= self.limit && !s.unhealthy {
            s.unhealthy = true;
            return Change::BecameUnhealthy {
                failures: s.failures,
            };
        }
        Change::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn limit_failures_close_the_gate_until_the_interval_since_the_last_healthy_answer() {
        let t0 = Instant::now();
        let h = Health::new(3, MIN);
        assert_eq!(h.mark(true, t0), Change::None);
        let t = t0 + Duration::from_secs(10);
        assert_eq!(h.mark(false, t), Change::None);
        assert_eq!(h.mark(false, t), Change::None);
        assert_eq!(h.gate(t), Gate::Open, "below the limit");
        assert_eq!(h.mark(false, t), Change::BecameUnhealthy { failures: 3 });
        assert_eq!(h.gate(t), Gate::ClosedUntil(t0 + MIN));
        assert_eq!(h.gate(t0 + MIN), Gate::ClosedUntil(t0 + MIN));
        let later = t0 + MIN + Duration::from_secs(1);
        assert_eq!(h.gate(later), Gate::Forced { failures: 3 });
        assert_eq!(h.gate(later), Gate::Open, "the count starts again");
        // The forced request fails again: no second "became unhealthy" until it recovers.
        for _ in 0..3 {
            assert_eq!(h.mark(false, later), Change::None);
        }
        assert_eq!(h.gate(later), Gate::ClosedUntil(later + MIN));
        assert_eq!(h.mark(true, later), Change::Recovered);
        assert_eq!(h.gate(later), Gate::Open);
        assert_eq!(h.mark(true, later), Change::None);
    }

    #[test]
    fn a_healthy_answer_resets_the_count() {
        let t = Instant::now();
        let h = Health::new(2, MIN);
        assert_eq!(h.mark(false, t), Change::None);
        assert_eq!(h.mark(true, t), Change::None);
        assert_eq!(h.mark(false, t), Change::None);
        assert_eq!(h.gate(t), Gate::Open);
    }

    #[test]
    fn zero_interval_forces_the_next_check_at_once() {
        let t = Instant::now();
        let h = Health::new(1, Duration::ZERO);
        assert_eq!(h.mark(false, t), Change::BecameUnhealthy { failures: 1 });
        assert_eq!(h.gate(t), Gate::Forced { failures: 1 });
    }

    #[test]
    fn which_failures_count() {
        let status = |status| gitlab::Error::Status {
            endpoint: "POST /api/v4/jobs/request".into(),
            status,
            message: String::new(),
            retry_after: None,
        };
        assert!(counts_as_unhealthy(&status(401)));
        assert!(counts_as_unhealthy(&status(422)));
        assert!(!counts_as_unhealthy(&status(500)));
        assert!(!counts_as_unhealthy(&status(429)));
    }
}
