//! Targets: `TARGETS` is an array indexed by target id; Maglev slots and flows hold ids.

use bytemuck::{Pod, Zeroable};

use crate::{assert_size, impl_aya_pod};

/// Compile-time default for the number of target ids (`TARGETS`, `TARGET_STATS`).
pub const MAX_TARGETS: u32 = 4096;

/// The slot is free (never used, or freed after every flow naming it has expired).
pub const TARGET_UNUSED: u8 = 0;
/// In its listener's Maglev table; its flows stick to it.
pub const TARGET_ACTIVE: u8 = 1;
/// Out of the Maglev table (deregistering): existing flows stick, new flows go elsewhere.
pub const TARGET_DRAINING: u8 = 2;
/// Removed or unhealthy: flows that still name it are re-hashed.
pub const TARGET_GONE: u8 = 3;

/// Aligned to 8 (same 40-byte layout) so that the XDP program handles the addresses a word
/// at a time ([`Target::addr_words`]), as for `FlowKey`.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Target {
    /// The target's address (network order, IPv4 in the first 4 bytes).
    pub addr: [u8; 16],
    /// `nat` mode: the load balancer's address that the target sees as the source (the
    /// address of the interface that routes to the target).
    pub snat_addr: [u8; 16],
    /// The target's port, network byte order (`nat` mode); equal to the listener's in
    /// `dsr` and `tunnel` modes.
    pub port_be: u16,
    /// `FAMILY_V4` or `FAMILY_V6`.
    pub family: u8,
    /// `TARGET_*`.
    pub state: u8,
    pub _pad: [u8; 4],
}
assert_size!(Target, 40);

impl Target {
    /// The target's address as four words in memory order.
    #[inline(always)]
    pub fn addr_words(&self) -> [u32; 4] {
        // SAFETY: `addr` is at offset 0 of an 8-aligned struct; integers only.
        unsafe { *(self.addr.as_ptr() as *const [u32; 4]) }
    }
}

/// Per-target and per-listener traffic, per CPU (`TARGET_STATS`, `LISTENER_STATS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// `nat` new connections dropped for want of a free source port on this target (ELB's
    /// PortAllocationErrorCount).
    pub port_allocation_errors: u64,
}
assert_size!(Traffic, 32);

impl Traffic {
    pub fn add(&mut self, other: &Traffic) {
        self.packets = self.packets.wrapping_add(other.packets);
        self.bytes = self.bytes.wrapping_add(other.bytes);
        self.new_flows = self.new_flows.wrapping_add(other.new_flows);
        self.port_allocation_errors = self
            .port_allocation_errors
            .wrapping_add(other.port_allocation_errors);
    }
}
impl_aya_pod!(Target, Traffic);
