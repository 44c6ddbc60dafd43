//! Classify: which listener, if any, a packet is for.

use lb_common::{
    addr::{bucket_of_words, CLASS_ALL_PORTS, CLASS_LISTENER, CLASS_PORTS},
    listener::{Listener, ListenerKey},
};

use crate::{parse::Packet, ADDRESSES, LISTENERS};

/// The class bits of the packet's destination address (`lb_common::addr::CLASS_*`): what the
/// hash maps may hold for it. Zero for most packets a host receives, which then cost no hash
/// lookup at all.
#[inline(always)]
pub fn address_class(packet: &Packet) -> u32 {
    ADDRESSES
        .get(bucket_of_words(packet.key.dst_words()))
        .copied()
        .unwrap_or(0)
}

/// The listener for the packet's destination address, port and protocol: the exact port
/// first, then a port-0 (all ports) listener of that address. `class` says which of the two
/// lookups can find anything, so a listener address costs one lookup, and the second only
/// where both kinds share a bucket.
#[inline(always)]
pub fn listener(packet: &Packet, class: u32) -> Option<Listener> {
    if class & CLASS_LISTENER == 0 {
        return None;
    }
    let mut key = ListenerKey {
        addr: packet.key.dst,
        port_be: packet.key.dst_port_be,
        protocol: packet.protocol,
        family: packet.key.family,
    };
    // Port 0 (ICMP, whose entries have port 0) is its own exact lookup.
    if key.port_be == 0 || class & CLASS_PORTS != 0 {
        // SAFETY: a hash-map value is read once and copied; userspace replaces whole entries.
        if let Some(listener) = unsafe { LISTENERS.get(&key) } {
            return Some(*listener);
        }
        if key.port_be == 0 {
            return None;
        }
    }
    if class & CLASS_ALL_PORTS == 0 {
        return None;
    }
    key.port_be = 0;
    // SAFETY: as above.
    unsafe { LISTENERS.get(&key) }.copied()
}
