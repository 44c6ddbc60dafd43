//! Traffic rates from counters that only grow: the daemon samples every listener's and
//! target's packets and bytes once a tick, and a rate is the growth over the last window.

use std::{
    collections::{BTreeMap, VecDeque},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

/// Packets and bits per second, rounded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rate {
    pub packets_per_second: u64,
    pub bits_per_second: u64,
}

/// Samples per key over a sliding window.
#[derive(Debug)]
pub struct Rates<K> {
    window: Duration,
    samples: BTreeMap<K, VecDeque<(Instant, u64, u64)>>,
}

impl<K: Ord + Clone> Rates<K> {
    pub fn new(window: Duration) -> Rates<K> {
        Rates {
            window,
            samples: BTreeMap::new(),
        }
    }

    /// Records each key's packets and bytes at `now`. Keys not given are forgotten (removed
    /// listeners and targets); a counter that went down (an id given to something new)
    /// starts over.
    pub fn record(&mut self, now: Instant, counts: impl IntoIterator<Item = (K, u64, u64)>) {
        let mut seen = BTreeMap::new();
        for (key, packets, bytes) in counts {
            let samples = self.samples.remove(&key).unwrap_or_default();
            seen.insert(key, (samples, packets, bytes));
        }
        for (key, (mut samples, packets, bytes)) in seen {
            if samples
                .back()
                .is_some_and(|&(_, p, b)| packets < p || bytes < b)
            {
                samples.clear();
            }
            samples.push_back((now, packets, bytes));
            // Keep one sample at or before the window's start, so the rate covers the window.
            while samples.len() > 2 && now.duration_since(samples[1].0) >= self.window {
                samples.pop_front();
            }
            self.samples.insert(key, samples);
        }
    }

    /// The rate over the window (or as much of it as was sampled); none before two samples.
    pub fn rate(&self, key: &K) -> Option<Rate> {
        let samples = self.samples.get(key)?;
        let (&(t0, p0, b0), &(t1, p1, b1)) = (samples.front()?, samples.back()?);
        let seconds = t1.duration_since(t0).as_secs_f64();
        if seconds <= 0.0 {
            return None;
        }
        Some(Rate {
            packets_per_second: ((p1 - p0) as f64 / seconds).round() as u64,
            bits_per_second: ((b1 - b0) as f64 * 8.0 / seconds).round() as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_cover_the_window_and_start_over_on_reset() {
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let mut rates = Rates::new(Duration::from_secs(10));
        rates.record(at(0), [("web", 0, 0)]);
        assert_eq!(rates.rate(&"web"), None, "one sample is no rate");
        rates.record(at(1), [("web", 100, 1000)]);
        assert_eq!(
            rates.rate(&"web"),
            Some(Rate {
                packets_per_second: 100,
                bits_per_second: 8000
            })
        );
        // 20 s at 50 packets/s: only the last 10 s count.
        for s in 2..=21 {
            rates.record(at(s), [("web", 100 + 50 * (s - 1), 1000)]);
        }
        assert_eq!(rates.rate(&"web").unwrap().packets_per_second, 50);
        // The counter went back to zero (the id serves something new).
        rates.record(at(22), [("web", 5, 5)]);
        assert_eq!(rates.rate(&"web"), None);
        // A key not recorded any more is forgotten.
        rates.record(at(23), [("api", 1, 1)]);
        assert_eq!(rates.rate(&"web"), None);
    }
}
