//! The flow table (`FLOWS`) and `nat` mode's reverse translations (`NAT_REPLIES`).

use bytemuck::{Pod, Zeroable};

use crate::{assert_size, impl_aya_pod};

/// Default size of the flow table; `sluice run --flows` overrides it. Each entry costs about
/// 40 + 24 bytes of key and value plus the kernel's per-element overhead (~ 50 bytes).
pub const DEFAULT_FLOWS: u32 = 1 << 20;

/// A packet's 5-tuple as it arrives (client to VIP), or for `NAT_REPLIES` the reply's
/// 5-tuple (target to the load balancer's address and allocated port).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    /// Network byte order; for ICMP echo the identifier.
    pub src_port_be: u16,
    pub dst_port_be: u16,
    pub protocol: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}
assert_size!(FlowKey, 40);

/// Where an established flow goes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Flow {
    pub target_id: u32,
    pub listener_id: u32,
    /// `nat` mode: the source port allocated on the load balancer's address, network order.
    pub nat_port_be: u16,
    pub _pad: [u8; 6],
    /// `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC at tick precision) when the flow was last
    /// seen, refreshed at most once a second.
    pub last_seen_ns: u64,
}
assert_size!(Flow, 24);

/// `nat` mode: what a reply from a target is translated back to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct NatOrigin {
    pub client: [u8; 16],
    pub vip: [u8; 16],
    pub client_port_be: u16,
    pub vip_port_be: u16,
    pub listener_id: u32,
}
assert_size!(NatOrigin, 40);
impl_aya_pod!(FlowKey, Flow, NatOrigin);
