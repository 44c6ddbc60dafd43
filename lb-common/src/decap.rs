//! Counters of `sluice_decap`, the XDP program that targets of `tunnel` listeners run to strip
//! the outer header (`DECAP_STATS`, per CPU, one [`CounterValue`](crate::stats::CounterValue)
//! slot per [`DecapCounter`]). Every frame the program sees moves exactly one of them.

use crate::counters;

counters! {
    /// Index into the `DECAP_STATS` map; every frame moves exactly one.
    DecapCounter {
    /// Decapsulated: the outer IP header was removed and the inner packet passed to the local stack.
    Decapsulated = "decapsulated", Outcome;
    /// Passed untouched: not IPv4 or IPv6 (ARP, LLDP, ...).
    PassedNotIp = "passed_not_ip", Outcome;
    /// Passed untouched: IP, but not IPIP / IPv6-in-IP (protocol 4 or 41 directly after the outer header).
    PassedNotTunnel = "passed_not_tunnel", Outcome;
    /// Passed untouched: a VLAN-tagged frame; attach to the VLAN interface or let the NIC strip tags.
    PassedVlan = "passed_vlan", Outcome;
    /// Passed untouched: a fragment of a tunnelled packet, which XDP cannot reassemble.
    PassedFragment = "passed_fragment", Outcome;
    /// Malformed outer header, passed untouched: cut short, wrong version, IHL below 5, bad header checksum, or a length longer than the frame.
    MalformedOuter = "malformed_outer", Outcome;
    /// Malformed inner header, passed untouched: cut short, wrong version for the outer protocol, IHL below 5, or longer than the outer packet's payload.
    MalformedInner = "malformed_inner", Outcome;
    /// Passed untouched: removing the outer header failed (bpf_xdp_adjust_head refused).
    DecapFailed = "decap_failed", Outcome;
}
}

/// Number of slots in the `DECAP_STATS` map.
pub const DECAP_COUNTER_COUNT: u32 = DecapCounter::ALL.len() as u32;
