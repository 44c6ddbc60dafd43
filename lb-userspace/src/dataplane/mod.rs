//! The kernel side of sluice: loading and attaching the XDP program (`load`), its maps
//! (`maps`), what is pinned in bpffs (`pins`, `bpffs`) with the controller's saved state
//! (`saved`), the global counters (`counters`), next hops kept resolved (`neighbors`), the
//! source address of `nat` traffic (`snat`) and interface names (`interface`).

pub(crate) mod batch;
pub mod bpffs;
pub mod counters;
pub mod interface;
pub mod load;
pub mod maps;
pub mod memory;
pub(crate) mod neighbors;
pub mod pin_lock;
pub mod pins;
pub mod saved;
pub(crate) mod snat;
pub mod sweep;

use std::{io, net::IpAddr};

use lb_common::{
    config::Config,
    flow::{Flow, FlowKey},
    listener::{Listener, ListenerKey},
    target::{Target, Traffic},
};

pub use maps::{Maps, MapsError};
pub use neighbors::{NeighborError, NextHop};

/// Everything the controller asks of the kernel, and nothing else: the writes that keep the
/// data plane in step with the model, the few queries it needs (flow table, capacities,
/// routes), and the neighbour entries of new targets. [`Maps`] is the kernel's;
/// [`memory::MemoryDataplane`] records the same operations in memory, so the controller's
/// ordering rules are unit-tested without root.
pub trait Dataplane {
    /// How many listener ids the maps have room for (the `MAGLEV` outer array's size).
    fn listener_capacity(&self) -> u32;
    /// How many target ids the maps have room for (the `TARGETS` array's size).
    fn target_capacity(&self) -> u32;
    fn set_config(&mut self, config: &Config) -> Result<(), MapsError>;
    /// Every entry of `LISTENERS` (for adopting a previous daemon's maps).
    fn listeners(&self) -> Result<Vec<(ListenerKey, Listener)>, MapsError>;
    fn set_listener(&mut self, key: &ListenerKey, listener: &Listener) -> Result<(), MapsError>;
    /// Removing a listener that is not there is not an error.
    fn remove_listener(&mut self, key: &ListenerKey) -> Result<(), MapsError>;
    /// Installs a listener's whole Maglev table in one swap (empty: no target).
    fn set_maglev_table(&mut self, listener_id: u32, slots: &[u32]) -> Result<(), MapsError>;
    fn target(&self, id: u32) -> Result<Target, MapsError>;
    fn set_target(&mut self, id: u32, target: &Target) -> Result<(), MapsError>;
    fn listener_traffic(&self, id: u32) -> Result<Traffic, MapsError>;
    fn target_traffic(&self, id: u32) -> Result<Traffic, MapsError>;
    /// Zeroes a listener id's traffic, for a listener given an id another one had.
    fn reset_listener_traffic(&mut self, id: u32) -> Result<(), MapsError>;
    /// Zeroes a target id's traffic, for a target given an id another one had.
    fn reset_target_traffic(&mut self, id: u32) -> Result<(), MapsError>;
    /// The flow table's entries (a walk of the whole table: not for the packet rate).
    fn flows(&self) -> Vec<(FlowKey, Flow)>;
    /// Deletes expired flow entries and `nat` translations, a bounded share of the tables per
    /// call (see [`sweep`]); `now_ns` is CLOCK_MONOTONIC. The counts of the last complete walk
    /// of both tables, once there is one.
    fn sweep(&mut self, now_ns: u64) -> Result<Option<sweep::TableCounts>, MapsError>;
    /// The address this host would use as the source towards `target` (`nat` mode's).
    fn source_for(&self, target: IpAddr) -> io::Result<IpAddr>;
    /// Keeps the next hops of `targets` resolved (see [`neighbors`]); each target's next
    /// hop, or why it has none. Failing here is not fatal to a change.
    fn manage_next_hops(
        &mut self,
        targets: &[IpAddr],
    ) -> Vec<(IpAddr, Result<NextHop, NeighborError>)>;
}
