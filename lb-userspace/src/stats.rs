//! Reading the XDP program's global counters (`STATS`), summed over CPUs.

use std::{borrow::Borrow, path::Path};

use aya::maps::{Map, MapData, MapError, PerCpuArray};
use lb_common::stats::{Counter, CounterValue};

pub const STATS_MAP: &str = "STATS";

#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("no sluice data plane is pinned at {path}: is `sluice run` running with the same --pin-dir?")]
    NotRunning { path: String },
    #[error("cannot read counters from {path}: {source}")]
    Read { path: String, source: MapError },
}

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

/// Reads the counters of a running `sluice run` through its pinned `STATS` map.
pub fn read_pinned(pin_dir: &Path) -> Result<Counters, StatsError> {
    let path = pin_dir.join(STATS_MAP);
    let shown = path.display().to_string();
    if !path.exists() {
        return Err(StatsError::NotRunning { path: shown });
    }
    let read_err = |source| StatsError::Read {
        path: shown.clone(),
        source,
    };
    let data = MapData::from_pin(&path).map_err(read_err)?;
    let map =
        PerCpuArray::try_from(Map::from_map_data(data).map_err(read_err)?).map_err(read_err)?;
    read(&map).map_err(read_err)
}
