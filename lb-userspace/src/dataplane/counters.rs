//! Reading the XDP program's global counters (`STATS`), summed over CPUs. The daemon serves
//! them on its control API (`api::StatsReport`) and pins the map in its `--pin-dir`.

use std::borrow::Borrow;

use aya::maps::{MapData, MapError, PerCpuArray};
use lb_common::stats::{Counter, CounterValue};

pub const STATS_MAP: &str = "STATS";

/// Counter values summed over all CPUs, in `Counter::ALL` order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counters(pub Vec<(Counter, CounterValue)>);

impl Counters {
    pub fn get(&self, counter: Counter) -> CounterValue {
        self.0[counter as usize].1
    }

    /// `self - earlier`, per counter (counters only grow).
    pub fn since(&self, earlier: &Counters) -> Counters {
        Counters(
            self.0
                .iter()
                .zip(&earlier.0)
                .map(|((c, now), (_, then))| {
                    (
                        *c,
                        CounterValue {
                            packets: now.packets.wrapping_sub(then.packets),
                            bytes: now.bytes.wrapping_sub(then.bytes),
                        },
                    )
                })
                .collect(),
        )
    }
}

/// Reads every counter from a `STATS` map.
pub fn read<T: Borrow<MapData>>(map: &PerCpuArray<T, CounterValue>) -> Result<Counters, MapError> {
    Counter::ALL
        .iter()
        .map(|&counter| {
            let mut total = CounterValue::default();
            for value in map.get(&(counter as u32), 0)?.iter() {
                total.add(value);
            }
            Ok((counter, total))
        })
        .collect::<Result<_, _>>()
        .map(Counters)
}

/// Where the daemon reads the global counters from: the `STATS` map, or fixed values in
/// unit tests.
pub trait ReadCounters {
    fn read_counters(&self) -> Result<Counters, MapError>;
}

impl<T: Borrow<MapData>> ReadCounters for PerCpuArray<T, CounterValue> {
    fn read_counters(&self) -> Result<Counters, MapError> {
        read(self)
    }
}

impl ReadCounters for Counters {
    fn read_counters(&self) -> Result<Counters, MapError> {
        Ok(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use lb_common::stats::Counter;

    /// docs/OPERATING.md documents every counter, so the table cannot fall behind the code.
    #[test]
    fn every_counter_is_documented() {
        let doc = include_str!("../../../docs/OPERATING.md");
        for counter in Counter::ALL {
            let row = format!("| `{}` |", counter.name());
            assert!(
                doc.contains(&row),
                "docs/OPERATING.md has no row for {}",
                counter.name()
            );
        }
    }
}
