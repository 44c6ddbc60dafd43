//! Passive failure detection, as Envoy's outlier detection with consecutive errors: the
//! proxy watches what its own requests get from each target. A target whose connections
//! fail `consecutive_errors` times in a row (refused, unreachable, reset before a response)
//! or that answers 5XX that many times in a row is ejected: it gets no new requests until
//! its ejection ends, one health check interval later (the time the health checker takes to
//! look at it again), twice as long if it fails again at once, up to eight times. Requests
//! already on their way are not touched; a group whose targets are all ejected ignores the
//! ejections (the health checker decides then), as ELB fails open.

use std::{
    sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed},
    time::Duration,
};

use tokio::time::Instant;

/// A target group's settings (`outlier_detection` in the model).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Detection {
    /// Consecutive connection errors, or consecutive 5XX answers, that eject a target.
    pub consecutive_errors: u32,
    /// How long a first ejection lasts.
    pub ejection: Duration,
}

/// The longest ejection, as a multiple of the first.
const MAX_BACKOFF: u32 = 8;

/// One target's record, kept across routing snapshots.
#[derive(Debug)]
pub struct Outlier {
    epoch: Instant,
    connection_errors: AtomicU32,
    server_errors: AtomicU32,
    /// Milliseconds from `epoch` until which the target is ejected (0: never was).
    ejected_until_ms: AtomicU64,
    /// Ejections in a row: each doubles the next one's length.
    ejections: AtomicU32,
}

/// What one request taught about its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The connection failed before a response: refused, unreachable, reset.
    ConnectionError,
    /// A response with this status.
    Response(u16),
}

impl Outlier {
    pub fn new() -> Outlier {
        Outlier {
            epoch: Instant::now(),
            connection_errors: AtomicU32::new(0),
            server_errors: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether the target is ejected now.
    pub fn ejected(&self) -> bool {
        self.now_ms() < self.ejected_until_ms.load(Relaxed)
    }

    /// Records `outcome`; `true` when it ejected the target (for the log).
    pub fn record(&self, outcome: Outcome, detection: &Detection) -> bool {
        let run = match outcome {
            Outcome::ConnectionError => {
                self.server_errors.store(0, Relaxed);
                self.connection_errors.fetch_add(1, Relaxed) + 1
            }
            Outcome::Response(status) if status >= 500 => {
                self.connection_errors.store(0, Relaxed);
                self.server_errors.fetch_add(1, Relaxed) + 1
            }
            Outcome::Response(_) => {
                self.connection_errors.store(0, Relaxed);
                self.server_errors.store(0, Relaxed);
                // A success after an ejection ended: the next ejection starts short again.
                if !self.ejected() {
                    self.ejections.store(0, Relaxed);
                }
                return false;
            }
        };
        if run < detection.consecutive_errors || self.ejected() {
            return false;
        }
        let ejections = self
            .ejections
            .fetch_add(1, Relaxed)
            .min(MAX_BACKOFF.ilog2());
        let length = detection.ejection * (1 << ejections);
        self.ejected_until_ms
            .store(self.now_ms() + length.as_millis() as u64, Relaxed);
        self.connection_errors.store(0, Relaxed);
        self.server_errors.store(0, Relaxed);
        true
    }
}

impl Default for Outlier {
    fn default() -> Outlier {
        Outlier::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DETECTION: Detection = Detection {
        consecutive_errors: 3,
        ejection: Duration::from_secs(10),
    };

    #[tokio::test(start_paused = true)]
    async fn consecutive_errors_eject_for_a_growing_time_and_a_success_resets() {
        let target = Outlier::new();
        assert!(!target.record(Outcome::ConnectionError, &DETECTION));
        assert!(!target.record(Outcome::ConnectionError, &DETECTION));
        // A success in between: the run starts over.
        assert!(!target.record(Outcome::Response(200), &DETECTION));
        assert!(!target.record(Outcome::ConnectionError, &DETECTION));
        assert!(!target.record(Outcome::ConnectionError, &DETECTION));
        assert!(target.record(Outcome::ConnectionError, &DETECTION));
        assert!(target.ejected());
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(!target.ejected(), "back after one ejection time");
        // Failing again at once: twice as long.
        for _ in 0..3 {
            target.record(Outcome::Response(503), &DETECTION);
        }
        assert!(target.ejected());
        tokio::time::advance(Duration::from_secs(19)).await;
        assert!(target.ejected());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!target.ejected());
        // A success after the ejection: the next one is short again.
        target.record(Outcome::Response(204), &DETECTION);
        for _ in 0..3 {
            target.record(Outcome::ConnectionError, &DETECTION);
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(!target.ejected());
    }

    #[tokio::test(start_paused = true)]
    async fn mixed_errors_do_not_add_up_and_4xx_is_not_a_target_failure() {
        let target = Outlier::new();
        for _ in 0..4 {
            target.record(Outcome::ConnectionError, &DETECTION);
            target.record(Outcome::Response(502), &DETECTION);
        }
        assert!(!target.ejected());
        for _ in 0..10 {
            target.record(Outcome::Response(404), &DETECTION);
        }
        assert!(!target.ejected());
    }

    #[tokio::test(start_paused = true)]
    async fn ejections_stop_growing_at_eight_times() {
        let target = Outlier::new();
        for round in 0..6 {
            for _ in 0..3 {
                target.record(Outcome::ConnectionError, &DETECTION);
            }
            let expected = DETECTION.ejection * (1 << round.min(3));
            tokio::time::advance(expected - Duration::from_millis(1)).await;
            assert!(target.ejected(), "round {round}");
            tokio::time::advance(Duration::from_millis(1)).await;
            assert!(!target.ejected(), "round {round}");
        }
    }
}
