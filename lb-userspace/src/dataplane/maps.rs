//! Typed handles on the data plane's maps, and the operations the controller performs on
//! them. This is the only place that writes the kernel-side model; byte-order and layout
//! rules live in `lb-common`.

use aya::{
    maps::{Array, ArrayOfMaps, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuValues},
    Ebpf,
};
use std::net::IpAddr;

use lb_common::{
    addr::{address_bucket, CLASS_NAT_SOURCE},
    config::Config,
    flow::{Flow, FlowKey, NatOrigin},
    listener::{Listener, ListenerKey},
    target::{Target, Traffic},
};

use super::neighbors::{NeighborError, NextHop};

/// `BPF_F_INNER_MAP`: lets inner arrays differ in size from the template in the object.
const BPF_F_INNER_MAP: u32 = 1 << 12;

#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error("the XDP object has no map named {0}")]
    Missing(&'static str),
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("sweeping the flow table and nat translations: {0}")]
    Sweep(#[source] std::io::Error),
}

fn err(name: &'static str) -> impl FnOnce(MapError) -> MapsError {
    move |source| MapsError::Map { name, source }
}

/// The data plane's maps, taken out of the loaded object.
pub struct Maps {
    pub config: Array<MapData, Config>,
    pub listeners: HashMap<MapData, ListenerKey, Listener>,
    /// Counts the writes to `listeners`: the program's per-CPU listener cache holds an entry
    /// only while the count is the one it was read under.
    listeners_generation: Array<MapData, u64>,
    /// Class bits by address bucket (`lb_common::addr`): kept in step with `listeners` and
    /// `targets` by the writes below.
    pub addresses: Array<MapData, u32>,
    pub maglev: ArrayOfMaps<MapData, Array<MapData, u32>>,
    pub targets: Array<MapData, Target>,
    pub flows: HashMap<MapData, FlowKey, Flow>,
    pub nat_replies: HashMap<MapData, FlowKey, NatOrigin>,
    pub listener_stats: PerCpuArray<MapData, Traffic>,
    pub target_stats: PerCpuArray<MapData, Traffic>,
    /// Where the sweep of `flows` and `nat_replies` stands.
    sweeper: super::sweep::Sweeper,
}

impl Maps {
    /// Takes the maps out of `ebpf` (the program keeps its references to them).
    pub fn take(ebpf: &mut Ebpf) -> Result<Maps, MapsError> {
        fn take<T: TryFrom<Map, Error = MapError>>(
            ebpf: &mut Ebpf,
            name: &'static str,
        ) -> Result<T, MapsError> {
            let map = ebpf.take_map(name).ok_or(MapsError::Missing(name))?;
            T::try_from(map).map_err(err(name))
        }
        let mut maps = Maps {
            config: take(ebpf, "CONFIG")?,
            listeners: take(ebpf, "LISTENERS")?,
            listeners_generation: take(ebpf, "LISTENERS_GENERATION")?,
            addresses: take(ebpf, "ADDRESSES")?,
            maglev: take(ebpf, "MAGLEV")?,
            targets: take(ebpf, "TARGETS")?,
            flows: take(ebpf, "FLOWS")?,
            nat_replies: take(ebpf, "NAT_REPLIES")?,
            listener_stats: take(ebpf, "LISTENER_STATS")?,
            target_stats: take(ebpf, "TARGET_STATS")?,
            sweeper: super::sweep::Sweeper::default(),
        };
        maps.mark_adopted_addresses()?;
        Ok(maps)
    }

    /// Marks the addresses of the listeners and `nat` sources already in the maps: maps pinned
    /// by a daemon that had no `ADDRESSES` map (or an empty one) are taken over without
    /// missing a listener or a reply. Bits are only added, so this is safe under traffic.
    fn mark_adopted_addresses(&mut self) -> Result<(), MapsError> {
        let keys: Vec<ListenerKey> = self.listeners.keys().filter_map(Result::ok).collect();
        for key in keys {
            self.mark_address(&key.addr, key.class())?;
        }
        let sources: Vec<[u8; 16]> = self
            .targets
            .iter()
            .filter_map(Result::ok)
            .map(|t| t.snat_addr)
            .collect();
        for addr in sources {
            if addr != [0; 16] {
                self.mark_address(&addr, CLASS_NAT_SOURCE)?;
            }
        }
        Ok(())
    }

    /// Adds `bits` to `addr`'s bucket.
    fn mark_address(&mut self, addr: &[u8; 16], bits: u32) -> Result<(), MapsError> {
        let bucket = address_bucket(addr);
        let old = self.addresses.get(&bucket, 0).map_err(err("ADDRESSES"))?;
        if old & bits != bits {
            self.addresses
                .set(bucket, old | bits, 0)
                .map_err(err("ADDRESSES"))?;
        }
        Ok(())
    }

    /// Recomputes the listener bits of `addr`'s bucket from `LISTENERS` (after a removal),
    /// keeping `CLASS_NAT_SOURCE`, which is never cleared.
    fn unmark_listener_address(&mut self, addr: &[u8; 16]) -> Result<(), MapsError> {
        let bucket = address_bucket(addr);
        let old = self.addresses.get(&bucket, 0).map_err(err("ADDRESSES"))?;
        let listeners = self
            .listeners
            .keys()
            .filter_map(Result::ok)
            .filter(|k| address_bucket(&k.addr) == bucket)
            .fold(0, |bits, k| bits | k.class());
        let new = (old & CLASS_NAT_SOURCE) | listeners;
        if new != old {
            self.addresses
                .set(bucket, new, 0)
                .map_err(err("ADDRESSES"))?;
        }
        Ok(())
    }

    pub fn set_config(&mut self, config: &Config) -> Result<(), MapsError> {
        self.config.set(0, config, 0).map_err(err("CONFIG"))
    }

    pub fn set_listener(
        &mut self,
        key: &ListenerKey,
        listener: &Listener,
    ) -> Result<(), MapsError> {
        // The class first: a packet that finds the entry must be let look for it.
        self.mark_address(&key.addr, key.class())?;
        self.listeners
            .insert(key, listener, 0)
            .map_err(err("LISTENERS"))?;
        self.listeners_changed()
    }

    pub fn remove_listener(&mut self, key: &ListenerKey) -> Result<(), MapsError> {
        match self.listeners.remove(key) {
            Err(MapError::KeyNotFound) => return Ok(()),
            other => other.map_err(err("LISTENERS"))?,
        }
        // Before anything the entry named (its tables) goes: no CPU uses a cached copy after.
        self.listeners_changed()?;
        self.unmark_listener_address(&key.addr)
    }

    /// Counts a write to `LISTENERS`: every CPU's cached listeners are read again.
    fn listeners_changed(&mut self) -> Result<(), MapsError> {
        let count = self
            .listeners_generation
            .get(&0, 0)
            .map_err(err("LISTENERS_GENERATION"))?;
        self.listeners_generation
            .set(0, count.wrapping_add(1), 0)
            .map_err(err("LISTENERS_GENERATION"))
    }

    pub fn set_target(&mut self, id: u32, target: &Target) -> Result<(), MapsError> {
        // Replies to the source address must be looked for before the first translation to it.
        if target.snat_addr != [0; 16] {
            self.mark_address(&target.snat_addr, CLASS_NAT_SOURCE)?;
        }
        self.targets.set(id, target, 0).map_err(err("TARGETS"))
    }

    /// Installs `slots` (target ids; empty = no target) as listener `listener_id`'s Maglev
    /// table. The table is built completely in a new inner map and then swapped in with one
    /// update, so a packet sees the old or the new table, never a mix within one lookup.
    pub fn set_maglev_table(&mut self, listener_id: u32, slots: &[u32]) -> Result<(), MapsError> {
        let size = u32::try_from(slots.len()).expect("Maglev tables are at most 2^24 slots");
        let mut table: Array<MapData, u32> =
            Array::create(size + 1, BPF_F_INNER_MAP).map_err(err("MAGLEV (new table)"))?;
        for (i, id) in slots.iter().enumerate() {
            table
                .set(i as u32 + 1, id, 0)
                .map_err(err("MAGLEV (new table)"))?;
        }
        // Slot 0 (the size) last: until then the new table is not referenced anyway, but the
        // invariant "size > 0 means every slot is written" holds at every point.
        table.set(0, size, 0).map_err(err("MAGLEV (new table)"))?;
        self.maglev
            .set(listener_id, &table, 0)
            .map_err(err("MAGLEV"))
    }

    /// The flow table's entries (for status, draining and id reuse decisions).
    pub fn flows(&self) -> impl Iterator<Item = (FlowKey, Flow)> + '_ {
        self.flows.iter().filter_map(Result::ok)
    }

    pub fn listener_traffic(&self, id: u32) -> Result<Traffic, MapsError> {
        sum(&self.listener_stats, id).map_err(err("LISTENER_STATS"))
    }

    pub fn target_traffic(&self, id: u32) -> Result<Traffic, MapsError> {
        sum(&self.target_stats, id).map_err(err("TARGET_STATS"))
    }

    /// Zeroes the traffic of listener `id`, for a listener given an id another one had.
    pub fn reset_listener_traffic(&mut self, id: u32) -> Result<(), MapsError> {
        zero(&mut self.listener_stats, id).map_err(err("LISTENER_STATS"))
    }

    /// Zeroes the traffic of target `id`, for a target given an id another one had.
    pub fn reset_target_traffic(&mut self, id: u32) -> Result<(), MapsError> {
        zero(&mut self.target_stats, id).map_err(err("TARGET_STATS"))
    }
}

/// The kernel's data plane: writes go to the maps, next hops to the neighbour table.
impl super::Dataplane for Maps {
    fn listener_capacity(&self) -> u32 {
        self.maglev.len()
    }

    fn target_capacity(&self) -> u32 {
        self.targets.len()
    }

    fn set_config(&mut self, config: &Config) -> Result<(), MapsError> {
        Maps::set_config(self, config)
    }

    fn listeners(&self) -> Result<Vec<(ListenerKey, Listener)>, MapsError> {
        self.listeners
            .iter()
            .collect::<Result<_, _>>()
            .map_err(err("LISTENERS"))
    }

    fn set_listener(&mut self, key: &ListenerKey, listener: &Listener) -> Result<(), MapsError> {
        Maps::set_listener(self, key, listener)
    }

    fn remove_listener(&mut self, key: &ListenerKey) -> Result<(), MapsError> {
        Maps::remove_listener(self, key)
    }

    fn set_maglev_table(&mut self, listener_id: u32, slots: &[u32]) -> Result<(), MapsError> {
        Maps::set_maglev_table(self, listener_id, slots)
    }

    fn target(&self, id: u32) -> Result<Target, MapsError> {
        self.targets.get(&id, 0).map_err(err("TARGETS"))
    }

    fn set_target(&mut self, id: u32, target: &Target) -> Result<(), MapsError> {
        Maps::set_target(self, id, target)
    }

    fn listener_traffic(&self, id: u32) -> Result<Traffic, MapsError> {
        Maps::listener_traffic(self, id)
    }

    fn target_traffic(&self, id: u32) -> Result<Traffic, MapsError> {
        Maps::target_traffic(self, id)
    }

    fn reset_listener_traffic(&mut self, id: u32) -> Result<(), MapsError> {
        Maps::reset_listener_traffic(self, id)
    }

    fn reset_target_traffic(&mut self, id: u32) -> Result<(), MapsError> {
        Maps::reset_target_traffic(self, id)
    }

    fn flows(&self) -> Vec<(FlowKey, Flow)> {
        Maps::flows(self).collect()
    }

    fn sweep(&mut self, now_ns: u64) -> Result<Option<super::sweep::TableCounts>, MapsError> {
        let targets = &self.targets;
        let target = |id: u32| targets.get(&id, 0).ok();
        let tables = super::sweep::Tables {
            flows: &self.flows,
            nat_replies: &self.nat_replies,
            target: &target,
        };
        super::sweep::sweep(&mut self.sweeper, &tables, now_ns).map_err(MapsError::Sweep)?;
        Ok(self.sweeper.counts().cloned())
    }

    fn source_for(&self, target: IpAddr) -> std::io::Result<IpAddr> {
        super::snat::source_for(target)
    }

    fn manage_next_hops(
        &mut self,
        targets: &[IpAddr],
    ) -> Vec<(IpAddr, Result<NextHop, NeighborError>)> {
        super::neighbors::manage_all(targets)
    }
}

fn zero(map: &mut PerCpuArray<MapData, Traffic>, id: u32) -> Result<(), MapError> {
    let cpus = map.get(&id, 0)?.len();
    map.set(
        id,
        PerCpuValues::try_from(vec![Traffic::default(); cpus])?,
        0,
    )
}

fn sum(map: &PerCpuArray<MapData, Traffic>, id: u32) -> Result<Traffic, MapError> {
    let mut total = Traffic::default();
    for value in map.get(&id, 0)?.iter() {
        total.add(value);
    }
    Ok(total)
}
