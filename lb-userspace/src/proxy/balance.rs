//! Choosing among targets (and among a forward action's target groups) without locks:
//! - smooth weighted round robin, as a precomputed schedule walked by an atomic counter, so
//!   concurrent requests just take consecutive slots;
//! - least outstanding requests, from per-target atomic counters, ties broken in rotation.

use std::{
    cmp::{Ordering as CmpOrdering, Reverse},
    collections::BinaryHeap,
    sync::atomic::{AtomicUsize, Ordering},
};

/// The longest schedule kept; weights are scaled down (keeping their ratios roughly) above.
const MAX_SCHEDULE: u64 = 1 << 16;

/// One period of a smooth weighted round robin over `weights`: indexes into `weights`, each
/// appearing `weight` times (after dividing all by their gcd), each target's turns spread
/// evenly: turn `k` of a target of weight `w` is due at `(k + 1/2) / w` of the period, and
/// turns are taken in order of due time (ties by index). Built with a heap, so a group of
/// thousands of targets costs milliseconds. Zero weights never appear; no positive weight
/// gives an empty schedule.
pub fn smooth_schedule(weights: &[u32]) -> Vec<u32> {
    let divisor = weights
        .iter()
        .copied()
        .filter(|w| *w > 0)
        .fold(0, gcd)
        .max(1);
    let mut weights: Vec<u64> = weights.iter().map(|w| u64::from(*w / divisor)).collect();
    let mut total: u64 = weights.iter().sum();
    if total > MAX_SCHEDULE {
        let scale = total.div_ceil(MAX_SCHEDULE);
        for w in weights.iter_mut().filter(|w| **w > 0) {
            *w = (*w / scale).max(1);
        }
        total = weights.iter().sum();
    }
    let mut due: BinaryHeap<Reverse<Turn>> = weights
        .iter()
        .enumerate()
        .filter(|(_, w)| **w > 0)
        .map(|(index, &weight)| {
            Reverse(Turn {
                turn: 0,
                weight,
                index,
            })
        })
        .collect();
    let mut schedule = Vec::with_capacity(total as usize);
    while let Some(Reverse(next)) = due.pop() {
        schedule.push(next.index as u32);
        if next.turn + 1 < next.weight {
            due.push(Reverse(Turn {
                turn: next.turn + 1,
                ..next
            }));
        }
    }
    schedule
}

/// A target's `turn`-th slot, due at `(2 turn + 1) / (2 weight)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Turn {
    turn: u64,
    weight: u64,
    index: usize,
}

impl Ord for Turn {
    fn cmp(&self, other: &Turn) -> CmpOrdering {
        // (2a+1)/wa vs (2b+1)/wb, cross-multiplied (no floating point, no overflow: both
        // factors are below 2^17).
        ((2 * self.turn + 1) * other.weight)
            .cmp(&((2 * other.turn + 1) * self.weight))
            .then(self.index.cmp(&other.index))
    }
}

impl PartialOrd for Turn {
    fn partial_cmp(&self, other: &Turn) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// A smooth weighted round robin walked by any number of threads.
#[derive(Debug)]
pub struct RoundRobin {
    schedule: Vec<u32>,
    next: AtomicUsize,
}

impl RoundRobin {
    /// `start` offsets the walk (e.g. so that many snapshots do not all begin at index 0).
    pub fn new(weights: &[u32], start: usize) -> RoundRobin {
        RoundRobin {
            schedule: smooth_schedule(weights),
            next: AtomicUsize::new(start),
        }
    }

    /// The next index, or none when no weight is positive.
    pub fn pick(&self) -> Option<usize> {
        if self.schedule.is_empty() {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        Some(self.schedule[n % self.schedule.len()] as usize)
    }

    /// The next index among those `allowed` accepts (e.g. skipping a target that just
    /// failed); none if it accepts none.
    pub fn pick_where(&self, allowed: impl Fn(usize) -> bool) -> Option<usize> {
        let len = self.schedule.len();
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        (0..len)
            .map(|i| self.schedule[(n + i) % len] as usize)
            .find(|&i| allowed(i))
    }
}

/// The index with the fewest outstanding requests among those `allowed` accepts; ties go to
/// the first at or after `start` (rotating `start` spreads ties).
pub fn least_outstanding(
    outstanding: &[usize],
    start: usize,
    allowed: impl Fn(usize) -> bool,
) -> Option<usize> {
    let len = outstanding.len();
    (0..len)
        .map(|i| (start + i) % len)
        .filter(|&i| allowed(i))
        .min_by_key(|&i| outstanding[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(schedule: &[u32], n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for &i in schedule {
            c[i as usize] += 1;
        }
        c
    }

    #[test]
    fn the_schedule_spreads_each_targets_turns() {
        // Like nginx's smooth weighted round robin: the light targets land mid-period.
        assert_eq!(smooth_schedule(&[5, 1, 1]), [0, 0, 0, 1, 2, 0, 0]);
        assert_eq!(smooth_schedule(&[2, 1]), [0, 1, 0]);
        assert_eq!(smooth_schedule(&[1, 1, 1]), [0, 1, 2]);
        assert_eq!(
            smooth_schedule(&[2, 2]),
            [0, 1],
            "weights divide by their gcd"
        );
        assert_eq!(counts(&smooth_schedule(&[3, 0, 2]), 3), [3, 0, 2]);
        assert!(smooth_schedule(&[0, 0]).is_empty());
        assert!(smooth_schedule(&[]).is_empty());
    }

    #[test]
    fn heavy_weights_are_never_bunched_beyond_their_share() {
        let schedule = smooth_schedule(&[999, 1]);
        assert_eq!(counts(&schedule, 2), [999, 1]);
        let big: Vec<u32> = (0..2000).map(|i| 999 - (i % 7)).collect();
        let started = std::time::Instant::now();
        let schedule = smooth_schedule(&big);
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        assert!(schedule.len() as u64 <= MAX_SCHEDULE);
        assert!(counts(&schedule, big.len()).iter().all(|c| *c > 0));
    }

    #[test]
    fn round_robin_walks_the_schedule_and_can_skip() {
        let rr = RoundRobin::new(&[1, 1, 1], 0);
        let picks: Vec<_> = (0..6).map(|_| rr.pick().unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        assert_eq!(rr.pick_where(|i| i != 0), Some(1));
        assert_eq!(rr.pick_where(|_| false), None);
        assert_eq!(RoundRobin::new(&[0], 0).pick(), None);
    }

    #[test]
    fn least_outstanding_prefers_idle_targets_and_rotates_ties() {
        assert_eq!(least_outstanding(&[3, 1, 2], 0, |_| true), Some(1));
        assert_eq!(least_outstanding(&[1, 1, 1], 0, |_| true), Some(0));
        assert_eq!(least_outstanding(&[1, 1, 1], 2, |_| true), Some(2));
        assert_eq!(least_outstanding(&[0, 5], 0, |i| i != 0), Some(1));
        assert_eq!(least_outstanding(&[], 0, |_| true), None);
    }
}
