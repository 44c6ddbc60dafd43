//! Classify: which listener, if any, a packet is for.

use lb_common::listener::{Listener, ListenerKey};

use crate::{parse::Packet, LISTENERS};

/// The listener for the packet's destination address, port and protocol: the exact port
/// first, then a port-0 (all ports) listener of that address.
#[inline(always)]
pub fn listener(packet: &Packet) -> Option<Listener> {
    let mut key = ListenerKey {
        addr: packet.key.dst,
        port_be: packet.key.dst_port_be,
        protocol: packet.protocol,
        family: packet.key.family,
    };
    // SAFETY: a hash-map value is read once and copied; userspace replaces whole entries.
    if let Some(listener) = unsafe { LISTENERS.get(&key) } {
        return Some(*listener);
    }
    if key.port_be == 0 {
        return None;
    }
    key.port_be = 0;
    // SAFETY: as above.
    unsafe { LISTENERS.get(&key) }.copied()
}
