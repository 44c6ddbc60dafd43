//! The benchmark programs' maps (`sluice bench`): the traffic generator, the counting sink and
//! the floor. Nothing here is used by the load balancer's own program.

use bytemuck::{Pod, Zeroable};

use crate::{assert_size, impl_aya_pod};

/// Most flows the generator varies over (`BENCH_FLOWS` entries).
pub const BENCH_MAX_FLOWS: u32 = 1 << 22;
/// Most next hops the floor program rotates over (`BENCH_FLOOR_HOPS` entries).
pub const BENCH_MAX_FLOOR_HOPS: u32 = 256;
/// Most distinct watched sources a sink counts (`BENCH_SINK_SOURCES` entries).
pub const BENCH_MAX_WATCHED_SOURCES: u32 = 65_536;

/// `BENCH_GENERATOR[0]`: where and how the generator sends.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct GeneratorConfig {
    /// The interface the frames are redirected into (in the caller's network namespace).
    pub ifindex: u32,
    /// Flows in `BENCH_FLOWS`; packet n uses flow n % flows. 0 = leave frames unchanged.
    pub flows: u32,
    /// IP protocol of the template frame (6 = TCP, 17 = UDP): where its checksum lives.
    pub protocol: u8,
    pub _pad: [u8; 7],
}
assert_size!(GeneratorConfig, 16);

/// How many leading bytes of the template `BENCH_TEMPLATE` restores in every frame: Ethernet,
/// IPv4 and a TCP header (for UDP, the first payload bytes).
pub const BENCH_HEADER_BYTES: usize = 54;

/// `BENCH_TEMPLATE[0]`: the template frame's first bytes. Live frames come from recycled
/// pages that keep whatever the receivers wrote into them (a `nat` rewrite, an encapsulation,
/// the kernel's DNAT), so the generator writes the headers afresh into every frame.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct FrameHeaders {
    pub bytes: [u8; 64],
}
assert_size!(FrameHeaders, 64);

/// One flow of the generator: the fields that differ from the template frame, with both
/// checksums already correct for them (computed in userspace, so the program stays trivial
/// and every frame it sends is valid for a real stack).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct FlowPatch {
    pub saddr_be: [u8; 4],
    pub sport_be: u16,
    pub ip_check_be: u16,
    pub l4_check_be: u16,
    pub _pad: [u8; 2],
}
assert_size!(FlowPatch, 12);

/// Packets and bytes (the sink's and the generator's per-CPU counters).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct BenchCount {
    pub packets: u64,
    pub bytes: u64,
}
assert_size!(BenchCount, 16);

impl BenchCount {
    pub fn add(&mut self, other: &BenchCount) {
        self.packets = self.packets.wrapping_add(other.packets);
        self.bytes = self.bytes.wrapping_add(other.bytes);
    }
}

/// `BENCH_SINK_CONFIG[0]`: which IPv4 sources the sink counts one by one (in
/// `BENCH_SINK_SOURCES`), to tell where each of a set of flows went. `mask_be` 0 = none.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct SinkConfig {
    pub watch_net_be: [u8; 4],
    pub watch_mask_be: [u8; 4],
}
assert_size!(SinkConfig, 8);

/// A watched flow as the sink sees it: IPv4 source address and port (TCP/UDP).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct WatchedSource {
    pub saddr_be: [u8; 4],
    pub sport_be: u16,
    pub _pad: [u8; 2],
}
assert_size!(WatchedSource, 8);

/// One next hop of the floor program: rewrite the MACs, send out of `ifindex` (XDP_TX when
/// it is the receiving interface).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct FloorHop {
    pub ifindex: u32,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
}
assert_size!(FloorHop, 16);

impl_aya_pod!(
    GeneratorConfig,
    FlowPatch,
    BenchCount,
    SinkConfig,
    WatchedSource,
    FloorHop,
    FrameHeaders
);
