//! Global settings of the data plane (`CONFIG`, an array of one).

use bytemuck::{Pod, Zeroable};

use crate::{assert_size, impl_aya_pod};

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct Config {
    /// `nat` mode allocates source ports in `nat_port_min..=nat_port_max` (host order).
    pub nat_port_min: u16,
    pub nat_port_max: u16,
    /// Flood gate: at most this many new flow-table entries per second per CPU; new flows
    /// above it are still forwarded (by Maglev) but not inserted, so a flood of new flows
    /// cannot evict established ones. 0 = no limit.
    pub max_new_flows_per_cpu: u32,
    /// `tunnel` mode, IPv4 outer source: this /16 prefix (network order, first two bytes),
    /// with the low 16 bits taken from the flow hash so receivers' RSS spreads flows.
    pub tunnel_source_v4: [u8; 4],
    pub _pad: [u8; 4],
    /// `tunnel` mode, IPv6 outer source: this /96 prefix, low 32 bits from the flow hash.
    pub tunnel_source_v6: [u8; 16],
}
assert_size!(Config, 32);
impl_aya_pod!(Config);

impl Default for Config {
    fn default() -> Self {
        Config {
            // Below the Linux default ephemeral range (32768-60999), which the load balancer's
            // own connections (health checks among them) use: a reply to one of those must
            // never match a translation.
            nat_port_min: 1024,
            nat_port_max: 32767,
            max_new_flows_per_cpu: 250_000,
            tunnel_source_v4: [172, 16, 0, 0],
            _pad: [0; 4],
            tunnel_source_v6: [0xfd, 0x00, 0x05, 0x1c, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        }
    }
}
