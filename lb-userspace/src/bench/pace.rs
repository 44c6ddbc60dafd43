//! How many frames each `BPF_PROG_TEST_RUN` call sends, and when: by count or duration, at
//! full speed or at a rate. Pure arithmetic on "sent so far" and "time so far", so it is
//! tested without a kernel.

use std::time::Duration;

/// Frames per call at full speed: large enough that the syscall's cost disappears, small
/// enough (about 20 ms at 15 Mpps) that a duration ends on time and Ctrl-C is prompt.
pub const UNPACED_BATCH: u64 = 1 << 18;
/// Calls per second when paced: each call sends rate / PACED_CALLS_PER_SEC frames.
pub const PACED_CALLS_PER_SEC: u64 = 1000;

/// When to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    Count(u64),
    Duration(Duration),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Send this many frames now.
    Send(u64),
    /// Nothing to send until this much later.
    Wait(Duration),
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub limit: Limit,
    /// Frames per second; 0 = as fast as possible.
    pub rate: u64,
}

impl Schedule {
    /// The next step after `sent` frames in `elapsed`.
    pub fn next(&self, sent: u64, elapsed: Duration) -> Step {
        let left = match self.limit {
            Limit::Count(total) if sent >= total => return Step::Done,
            Limit::Count(total) => total - sent,
            Limit::Duration(d) if elapsed >= d => return Step::Done,
            Limit::Duration(_) => u64::MAX,
        };
        if self.rate == 0 {
            return Step::Send(left.min(UNPACED_BATCH));
        }
        let batch = (self.rate / PACED_CALLS_PER_SEC).max(1);
        // Frames due by now; behind schedule, catch up one batch per call (no burst larger
        // than a batch), so the rate holds over the run.
        let due = (u128::from(self.rate) * elapsed.as_nanos() / 1_000_000_000) as u64;
        if due > sent {
            return Step::Send(left.min(batch));
        }
        // The time at which `sent + 1` frames are due.
        let at = Duration::from_nanos(
            ((u128::from(sent) + 1) * 1_000_000_000).div_ceil(u128::from(self.rate)) as u64,
        );
        let wait = at.saturating_sub(elapsed);
        if let Limit::Duration(d) = self.limit {
            if elapsed + wait >= d {
                return Step::Wait(d - elapsed);
            }
        }
        Step::Wait(wait.max(Duration::from_micros(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the schedule against a fake clock where sending is instant.
    fn simulate(schedule: Schedule) -> (u64, Duration, usize) {
        let (mut sent, mut now, mut calls) = (0u64, Duration::ZERO, 0);
        for _ in 0..1_000_000 {
            match schedule.next(sent, now) {
                Step::Send(n) => {
                    assert!(n > 0);
                    sent += n;
                    calls += 1;
                }
                Step::Wait(d) => now += d,
                Step::Done => return (sent, now, calls),
            }
        }
        panic!("the schedule did not finish");
    }

    #[test]
    fn a_count_is_sent_exactly_at_full_speed() {
        let s = Schedule {
            limit: Limit::Count(1_000_000),
            rate: 0,
        };
        let (sent, _, calls) = simulate(s);
        assert_eq!(sent, 1_000_000);
        assert_eq!(calls, 4);
    }

    #[test]
    fn a_rate_spreads_a_count_over_time() {
        let s = Schedule {
            limit: Limit::Count(100_000),
            rate: 50_000,
        };
        let (sent, now, _) = simulate(s);
        assert_eq!(sent, 100_000);
        // 100k frames at 50k/s: the last batch is due just before 2 s.
        assert!(
            now >= Duration::from_millis(1990) && now <= Duration::from_secs(2),
            "{now:?}"
        );
    }

    #[test]
    fn a_duration_at_a_rate_sends_rate_times_duration() {
        let s = Schedule {
            limit: Limit::Duration(Duration::from_secs(1)),
            rate: 10_000,
        };
        let (sent, now, _) = simulate(s);
        assert_eq!(now, Duration::from_secs(1));
        assert!((9_990..=10_010).contains(&sent), "{sent}");
    }

    #[test]
    fn slow_rates_wait_between_single_frames() {
        let s = Schedule {
            limit: Limit::Count(3),
            rate: 2,
        };
        assert_eq!(
            s.next(0, Duration::ZERO),
            Step::Wait(Duration::from_millis(500))
        );
        assert_eq!(s.next(0, Duration::from_millis(500)), Step::Send(1));
        assert_eq!(s.next(3, Duration::from_secs(9)), Step::Done);
    }

    #[test]
    fn behind_schedule_catches_up_without_exceeding_the_count() {
        let s = Schedule {
            limit: Limit::Count(10_000),
            rate: 1_000_000,
        };
        // One batch (rate / 1000) per call, never beyond the count.
        assert_eq!(s.next(0, Duration::from_secs(1)), Step::Send(1_000));
        assert_eq!(s.next(9_500, Duration::from_secs(1)), Step::Send(500));
    }
}
