//! Global per-CPU counters (`STATS`): one slot per [`Counter`].

use bytemuck::{Pod, Zeroable};

use crate::{assert_size, counters, impl_aya_pod};

/// Packets and bytes counted for one [`Counter`] on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct CounterValue {
    pub packets: u64,
    pub bytes: u64,
}
assert_size!(CounterValue, 16);
impl_aya_pod!(CounterValue);

impl CounterValue {
    pub fn add(&mut self, other: &CounterValue) {
        self.packets = self.packets.wrapping_add(other.packets);
        self.bytes = self.bytes.wrapping_add(other.bytes);
    }
}

/// Whether a counter is moved once per packet or in addition to that.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CounterKind {
    Outcome,
    Observation,
}

counters! {
    /// Index into the `STATS` map.
    ///
    /// Every packet the program sees moves exactly one [`CounterKind::Outcome`] counter;
    /// [`CounterKind::Observation`] counters are moved in addition, for packets with a
    /// property worth knowing about.
    Counter {
    /// Passed to the kernel: not IPv4 or IPv6 (ARP, LLDP, ...).
    PassNotIp = "pass_not_ip", Outcome;
    /// Passed to the kernel: IP traffic that matches no listener.
    PassNoListener = "pass_no_listener", Outcome;
    /// Passed to the kernel: IPv6 with extension headers, which sluice does not balance.
    PassIpv6ExtensionHeader = "pass_ipv6_extension_header", Outcome;
    /// Passed to the kernel: an IPv4 fragment, which carries no complete flow key.
    PassIpv4Fragment = "pass_ipv4_fragment", Outcome;
    /// Passed to the kernel: an IP protocol other than TCP, UDP, ICMP and ICMPv6.
    PassOtherProtocol = "pass_other_protocol", Outcome;
    /// Passed to the kernel: a second VLAN tag (QinQ); sluice parses one tag.
    PassStackedVlan = "pass_stacked_vlan", Outcome;
    /// Forwarded in `nat` mode: destination and source rewritten.
    ForwardNat = "forward_nat", Outcome;
    /// Forwarded in `dsr` mode: destination MAC rewritten.
    ForwardDsr = "forward_dsr", Outcome;
    /// Forwarded in `tunnel` mode: encapsulated in IPIP / IP6IP6.
    ForwardTunnel = "forward_tunnel", Outcome;
    /// A reply from a target in `nat` mode, translated back and forwarded to the client.
    NatReply = "nat_reply", Outcome;
    /// An ICMP/ICMPv6 echo request to a listener's address, answered.
    IcmpEchoReply = "icmp_echo_reply", Outcome;
    /// ICMP "fragmentation needed" / ICMPv6 "packet too big" about a flow, sent to the flow's target.
    IcmpErrorForwarded = "icmp_error_forwarded", Outcome;
    /// Passed to the kernel: other ICMP to a listener's address, or an ICMP error about no known flow or whose quoted packet is cut short or malformed.
    PassVipIcmp = "pass_vip_icmp", Outcome;
    /// Rewritten, then passed to the kernel, which resolves the next hop's MAC and sends it.
    PassNeighborUnresolved = "pass_neighbor_unresolved", Outcome;
    /// Passed to the kernel: a VLAN-tagged packet for a listener. sluice balances untagged frames: let the NIC strip tags (rx VLAN offload) or attach to the VLAN interface.
    PassVlanListener = "pass_vlan_listener", Outcome;
    /// Dropped: IP forwarding is disabled on the receiving interface, so the kernel's FIB refuses to route for it (set net.ipv4.ip_forward=1 / net.ipv6.conf.all.forwarding=1).
    DropForwardingDisabled = "drop_forwarding_disabled", Outcome;
    /// Dropped (`dsr`, `nat`): the next hop's MAC is not resolved yet, and the kernel cannot take the packet over (in `dsr` it is still addressed to the VIP; in `nat` its source is the kernel's own address, a martian to forward). sluice keeps targets' neighbour entries managed, so this is transient.
    DropNeighborUnresolved = "drop_neighbor_unresolved", Outcome;
    /// Dropped: the listener has no target to send new flows to.
    DropNoTarget = "drop_no_target", Outcome;
    /// Dropped: no free source port for a new `nat` flow (ELB's PortAllocationErrorCount).
    DropNatPortsExhausted = "drop_nat_ports_exhausted", Outcome;
    /// Dropped: no route to the target (the kernel's FIB has none, or it is blackholed).
    DropNoRoute = "drop_no_route", Outcome;
    /// Dropped (`nat`): a TCP segment other than a SYN for a connection sluice holds no state for (never seen, expired, or closed). Only a SYN allocates a port, so a flood of stray segments costs nothing.
    DropNoConnection = "drop_no_connection", Outcome;
    /// Dropped (`nat`): the flood gate refused a new connection (more new flows per second and CPU than `max_new_flows_per_cpu`); the client retransmits.
    DropFloodGated = "drop_flood_gated", Outcome;
    /// Dropped (`nat`): the flow table is full of live connections, none of which is evicted to make room; the new connection is refused.
    DropFlowTableFull = "drop_flow_table_full", Outcome;
    /// Dropped: the packet could not be rewritten (no room to encapsulate, helper failure).
    DropRewriteFailed = "drop_rewrite_failed", Outcome;
    /// Malformed: shorter than an Ethernet header.
    MalformedEthernet = "malformed_ethernet", Outcome;
    /// Malformed: a VLAN tag cut short.
    MalformedVlan = "malformed_vlan", Outcome;
    /// Malformed IPv4: cut short, wrong version, IHL below 5, or header longer than the packet or total length.
    MalformedIpv4 = "malformed_ipv4", Outcome;
    /// Malformed IPv6: cut short or wrong version.
    MalformedIpv6 = "malformed_ipv6", Outcome;
    /// Malformed TCP: header cut short or data offset below 5.
    MalformedTcp = "malformed_tcp", Outcome;
    /// Malformed UDP: header cut short.
    MalformedUdp = "malformed_udp", Outcome;
    /// Malformed ICMP or ICMPv6: header cut short.
    MalformedIcmp = "malformed_icmp", Outcome;
    /// Observed: the frame carried a VLAN tag (802.1Q or 802.1ad), whatever its outcome.
    VlanTagged = "vlan_tagged", Observation;
    /// Observed: an IPv4 header with options (IHL above 5).
    Ipv4Options = "ipv4_options", Observation;
    /// Observed: a new flow entered the flow table.
    FlowCreated = "flow_created", Observation;
    /// Observed: a TCP packet without SYN found no flow entry (the flow began before sluice, expired, or was never inserted under a flood or a full table). `dsr` and `tunnel` send it by Maglev; `nat` drops it (`drop_no_connection`).
    FlowMissNonSyn = "flow_miss_non_syn", Observation;
    /// Observed: a flow's target was removed or unhealthy; the flow was re-hashed.
    FlowRehashed = "flow_rehashed", Observation;
    /// Observed: the flood gate kept a new flow out of the flow table (`dsr`, `tunnel`: forwarded by Maglev; `nat`: dropped, `drop_flood_gated`).
    FloodGated = "flood_gated", Observation;
    /// Observed: a `nat` source port was taken; another was tried.
    NatPortCollision = "nat_port_collision", Observation;
    /// Observed (`dsr`, `tunnel`): the flow table was full of live connections; the new flow was forwarded by Maglev without an entry.
    FlowTableFull = "flow_table_full", Observation;
    /// Observed: a new `nat` connection took the port of a closed or expired translation.
    NatPortReclaimed = "nat_port_reclaimed", Observation;
    /// Observed: a connection reached the closed state (FINs both ways and the last ACK, or a RST).
    ConnectionClosed = "connection_closed", Observation;
}
}

/// Number of slots in the `STATS` map.
pub const COUNTER_COUNT: u32 = Counter::ALL.len() as u32;

#[cfg(test)]
mod tests {
    use super::*;

    /// Index, name and help of every counter of both programs.
    macro_rules! assert_dense_and_unique {
        ($enum:ty) => {
            for (i, c) in <$enum>::ALL.iter().enumerate() {
                assert_eq!(*c as usize, i, "{c:?} is out of order");
                assert!(!c.help().is_empty(), "{c:?} has no help text");
                for other in &<$enum>::ALL[i + 1..] {
                    assert_ne!(c.name(), other.name());
                }
            }
        };
    }

    #[test]
    fn indices_are_dense_and_names_unique() {
        assert_dense_and_unique!(Counter);
        assert_dense_and_unique!(crate::decap::DecapCounter);
    }
}
