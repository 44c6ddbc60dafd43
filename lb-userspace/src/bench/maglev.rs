//! Maglev figures (`sluice bench maglev`): how long a table takes to build, how many slots
//! move when a target leaves or joins compared with the least possible, and how evenly slots
//! are spread. Pure, from `crate::maglev`.

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::maglev::{self, MaglevError, MaglevTarget, TableSize};

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MaglevFigures {
    pub targets: usize,
    pub table_size: u32,
    /// Median build time over the runs, in milliseconds.
    pub build_ms: f64,
    /// Slots that changed owner when one target was removed, and the least possible (the
    /// removed target's own slots).
    pub moved_on_removal: usize,
    pub ideal_on_removal: usize,
    /// Slots that changed owner when one target was added, and the least possible (the new
    /// target's fair share).
    pub moved_on_addition: usize,
    pub ideal_on_addition: usize,
    /// Most slots of one target divided by the mean: 1.0 is perfect balance.
    pub max_over_mean: f64,
}

fn targets(n: usize) -> Vec<MaglevTarget> {
    (0..n)
        .map(|i| {
            let addr = SocketAddr::new(
                Ipv4Addr::new(
                    10,
                    1 + (i / 65536) as u8,
                    (i / 256 % 256) as u8,
                    (i % 256) as u8,
                )
                .into(),
                80,
            );
            MaglevTarget {
                key: maglev::target_key(addr),
                id: i as u32,
                weight: 1,
            }
        })
        .collect()
}

/// Measures `n` equal targets (n >= 2) on a table of `size` slots, timing `runs` builds.
pub fn measure(n: usize, size: TableSize, runs: usize) -> Result<MaglevFigures, MaglevError> {
    assert!(n >= 2, "Maglev figures need at least two targets");
    let all = targets(n + 1);
    let base = &all[..n];
    let mut times = Vec::with_capacity(runs.max(1));
    let mut table = Vec::new();
    for _ in 0..runs.max(1) {
        let start = Instant::now();
        table = maglev::build(base, size)?;
        times.push(start.elapsed());
    }
    times.sort();
    let build = times[times.len() / 2];

    let removed = maglev::build(&base[1..], size)?;
    let owned_by_first = table.iter().filter(|&&id| id == base[0].id).count();
    let added = maglev::build(&all, size)?;

    let counts = maglev::slot_counts(&table);
    let max = counts.values().copied().max().unwrap_or(0);
    let mean = size.get() as f64 / n as f64;
    Ok(MaglevFigures {
        targets: n,
        table_size: size.get(),
        build_ms: as_ms(build),
        moved_on_removal: maglev::slots_changed(&table, &removed),
        ideal_on_removal: owned_by_first,
        moved_on_addition: maglev::slots_changed(&table, &added),
        ideal_on_addition: size.get() as usize / (n + 1),
        max_over_mean: max as f64 / mean,
    })
}

fn as_ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_consistent() {
        let f = measure(10, TableSize::new(251).unwrap(), 3).unwrap();
        assert_eq!(f.targets, 10);
        // Removing a target moves at least its own slots; adding moves about a share.
        assert!(f.moved_on_removal >= f.ideal_on_removal, "{f:?}");
        assert!(f.moved_on_addition >= f.ideal_on_addition / 2, "{f:?}");
        assert!(f.max_over_mean >= 1.0 && f.max_over_mean < 1.2, "{f:?}");
        assert!(f.build_ms >= 0.0);
    }
}
