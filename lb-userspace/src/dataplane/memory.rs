//! A data plane in memory: it keeps what the kernel maps would hold and records every write
//! in order, so the controller's ordering rules (a table never names a target that `TARGETS`
//! does not have as active, listeners only after their tables, ...) are checked by unit tests
//! without root. It can also be told that a target has no route or that flows name an id.
//! `sluice check` plans on one too ([`MemoryDataplane::with_host_routes`]), so that it
//! refuses what the daemon's controller would refuse without writing any kernel map.
//! [`MemoryStore`] stands for the pinned `STATE` map the same way.

use std::{
    collections::{BTreeSet, HashMap},
    io,
    net::IpAddr,
};

use aya::maps::MapError;
use lb_common::{
    config::Config,
    flow::{Flow, FlowKey},
    listener::{Listener, ListenerKey},
    state::{STATE_CHUNK, STATE_ENTRIES},
    target::{Target, Traffic},
};

use super::{
    neighbors::{NeighborError, NextHop},
    saved::Store,
    Dataplane, MapsError,
};

/// One write, as the kernel would have seen it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    SetConfig(Config),
    SetListener(ListenerKey, Listener),
    RemoveListener(ListenerKey),
    SetMaglevTable { listener: u32, slots: Vec<u32> },
    SetTarget(u32, Target),
    ResetListenerTraffic(u32),
    ResetTargetTraffic(u32),
    ManageNextHops(Vec<IpAddr>),
}

#[derive(Debug)]
pub struct MemoryDataplane {
    /// Every write so far, oldest first.
    pub ops: Vec<Op>,
    pub config: Option<Config>,
    pub listeners: HashMap<ListenerKey, Listener>,
    /// Maglev tables by listener id; a listener without a table has none here.
    pub tables: HashMap<u32, Vec<u32>>,
    pub targets: Vec<Target>,
    /// What the flow table holds (set by tests to stand for traffic).
    pub flows: Vec<(FlowKey, Flow)>,
    /// Target addresses this host has no route to.
    pub unreachable: BTreeSet<IpAddr>,
    pub listener_capacity: u32,
    /// Source addresses from this host's routing table (`sluice check`) instead of
    /// [`SOURCE`] for every target not in `unreachable`.
    pub host_routes: bool,
}

/// The source address the memory data plane reports for every routable target.
pub const SOURCE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

impl MemoryDataplane {
    pub fn new(listener_capacity: u32, target_capacity: u32) -> MemoryDataplane {
        MemoryDataplane {
            ops: Vec::new(),
            config: None,
            listeners: HashMap::new(),
            tables: HashMap::new(),
            targets: vec![Target::default(); target_capacity as usize],
            flows: Vec::new(),
            unreachable: BTreeSet::new(),
            listener_capacity,
            host_routes: false,
        }
    }

    /// A memory data plane that asks this host's routing table for source addresses, as the
    /// kernel's does: a target the host has no route to is refused the same way.
    pub fn with_host_routes(listener_capacity: u32, target_capacity: u32) -> MemoryDataplane {
        MemoryDataplane {
            host_routes: true,
            ..MemoryDataplane::new(listener_capacity, target_capacity)
        }
    }

    /// Forgets the writes recorded so far (the state stays).
    pub fn take_ops(&mut self) -> Vec<Op> {
        std::mem::take(&mut self.ops)
    }
}

impl Dataplane for MemoryDataplane {
    fn listener_capacity(&self) -> u32 {
        self.listener_capacity
    }

    fn target_capacity(&self) -> u32 {
        self.targets.len() as u32
    }

    fn set_config(&mut self, config: &Config) -> Result<(), MapsError> {
        self.config = Some(*config);
        self.ops.push(Op::SetConfig(*config));
        Ok(())
    }

    fn listeners(&self) -> Result<Vec<(ListenerKey, Listener)>, MapsError> {
        Ok(self.listeners.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn set_listener(&mut self, key: &ListenerKey, listener: &Listener) -> Result<(), MapsError> {
        self.listeners.insert(*key, *listener);
        self.ops.push(Op::SetListener(*key, *listener));
        Ok(())
    }

    fn remove_listener(&mut self, key: &ListenerKey) -> Result<(), MapsError> {
        self.listeners.remove(key);
        self.ops.push(Op::RemoveListener(*key));
        Ok(())
    }

    fn set_maglev_table(&mut self, listener_id: u32, slots: &[u32]) -> Result<(), MapsError> {
        if slots.is_empty() {
            self.tables.remove(&listener_id);
        } else {
            self.tables.insert(listener_id, slots.to_vec());
        }
        self.ops.push(Op::SetMaglevTable {
            listener: listener_id,
            slots: slots.to_vec(),
        });
        Ok(())
    }

    fn target(&self, id: u32) -> Result<Target, MapsError> {
        Ok(self.targets[id as usize])
    }

    fn set_target(&mut self, id: u32, target: &Target) -> Result<(), MapsError> {
        self.targets[id as usize] = *target;
        self.ops.push(Op::SetTarget(id, *target));
        Ok(())
    }

    fn listener_traffic(&self, _id: u32) -> Result<Traffic, MapsError> {
        Ok(Traffic::default())
    }

    fn target_traffic(&self, _id: u32) -> Result<Traffic, MapsError> {
        Ok(Traffic::default())
    }

    fn reset_listener_traffic(&mut self, id: u32) -> Result<(), MapsError> {
        self.ops.push(Op::ResetListenerTraffic(id));
        Ok(())
    }

    fn reset_target_traffic(&mut self, id: u32) -> Result<(), MapsError> {
        self.ops.push(Op::ResetTargetTraffic(id));
        Ok(())
    }

    fn flows(&self) -> Vec<(FlowKey, Flow)> {
        self.flows.clone()
    }

    /// Counts the recorded flows; the kernel's expiry is tested against the kernel.
    fn sweep(&mut self, _now_ns: u64) -> Result<Option<super::sweep::TableCounts>, MapsError> {
        Ok(Some(super::sweep::TableCounts {
            flows: self.flows.len() as u64,
            ..Default::default()
        }))
    }

    fn source_for(&self, target: IpAddr) -> io::Result<IpAddr> {
        if self.unreachable.contains(&target) {
            return Err(io::Error::from_raw_os_error(libc::ENETUNREACH));
        }
        if self.host_routes {
            return super::snat::source_for(target);
        }
        Ok(SOURCE)
    }

    fn manage_next_hops(
        &mut self,
        targets: &[IpAddr],
    ) -> Vec<(IpAddr, Result<NextHop, NeighborError>)> {
        self.ops.push(Op::ManageNextHops(targets.to_vec()));
        targets
            .iter()
            .map(|&t| {
                let hop = NextHop {
                    dev: "mem0".to_string(),
                    addr: t,
                };
                (t, Ok(hop))
            })
            .collect()
    }
}

/// The `STATE` map in memory: where a unit-tested daemon saves its state.
#[derive(Debug)]
pub struct MemoryStore(pub Vec<[u8; STATE_CHUNK]>);

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore(vec![[0; STATE_CHUNK]; STATE_ENTRIES as usize])
    }
}

impl Default for MemoryStore {
    fn default() -> MemoryStore {
        MemoryStore::new()
    }
}

impl Store for MemoryStore {
    fn read(&self, index: u32) -> Result<[u8; STATE_CHUNK], MapError> {
        self.0
            .get(index as usize)
            .copied()
            .ok_or(MapError::OutOfBounds {
                index,
                max_entries: STATE_ENTRIES,
            })
    }

    fn write(&mut self, index: u32, chunk: &[u8; STATE_CHUNK]) -> Result<(), MapError> {
        let max_entries = STATE_ENTRIES;
        let slot = self
            .0
            .get_mut(index as usize)
            .ok_or(MapError::OutOfBounds { index, max_entries })?;
        *slot = *chunk;
        Ok(())
    }
}
