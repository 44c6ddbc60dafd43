//! Listeners (virtual IPs): `LISTENERS` maps a [`ListenerKey`] to a [`Listener`].

use bytemuck::{Pod, Zeroable};

use crate::{assert_size, impl_aya_pod};

/// Compile-time default for the number of listeners (`LISTENERS`, `LISTENER_STATS` and the
/// outer `MAGLEV` map); `sluice run` can override it at load time.
pub const MAX_LISTENERS: u32 = 512;

/// What a packet is matched against: destination address, port and protocol.
///
/// A listener with `port_be == 0` matches every port of its address; the program looks up the
/// exact port first, then port 0. Aligned to 4 (same 20-byte layout), so that the program
/// copies the address into it a word at a time.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct ListenerKey {
    /// See `addr`: network order, IPv4 in the first 4 bytes.
    pub addr: [u8; 16],
    /// Network byte order; 0 = any port.
    pub port_be: u16,
    /// IPPROTO_TCP or IPPROTO_UDP.
    pub protocol: u8,
    /// `FAMILY_V4` or `FAMILY_V6`.
    pub family: u8,
}
assert_size!(ListenerKey, 20);

impl ListenerKey {
    /// The `ADDRESSES` class bits this entry needs in its address's bucket
    /// (`crate::addr::CLASS_*`): every entry marks a listener address; a TCP/UDP entry also
    /// says whether it is looked up by port or is the all-ports one (ICMP entries have port 0
    /// and are found by the packet's own port, 0).
    pub fn class(&self) -> u32 {
        use crate::addr::{CLASS_ALL_PORTS, CLASS_LISTENER, CLASS_PORTS};
        let icmp = matches!(
            self.protocol,
            crate::proto::IPPROTO_ICMP | crate::proto::IPPROTO_ICMPV6
        );
        CLASS_LISTENER
            | match (icmp, self.port_be) {
                (true, _) => 0,
                (false, 0) => CLASS_ALL_PORTS,
                (false, _) => CLASS_PORTS,
            }
    }
}

/// How packets for a listener reach their target.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ForwardingMode {
    /// Destination rewritten to the target, source to the load balancer's address and an
    /// allocated port; replies translated back.
    Nat = 0,
    /// Direct server return: only the destination MAC changes; targets hold the VIP.
    Dsr = 1,
    /// IPIP / IP6IP6 encapsulation to the target; targets decapsulate and hold the VIP.
    Tunnel = 2,
}

impl ForwardingMode {
    pub const fn from_u8(v: u8) -> Option<ForwardingMode> {
        match v {
            0 => Some(ForwardingMode::Nat),
            1 => Some(ForwardingMode::Dsr),
            2 => Some(ForwardingMode::Tunnel),
            _ => None,
        }
    }
}

/// What the Maglev lookup hashes for a new flow.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HashKey {
    /// Source and destination address and port, and protocol.
    FiveTuple = 0,
    /// Source address only: every connection of a client reaches the same target (AWS NLB's
    /// `source_ip` stickiness).
    SourceIp = 1,
}

/// A listener's data-plane settings.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Listener {
    /// Index into `MAGLEV` and `LISTENER_STATS`.
    pub id: u32,
    /// `ForwardingMode` as u8.
    pub mode: u8,
    /// `HashKey` as u8.
    pub hash_key: u8,
    /// Seconds a flow may be idle before its entries expire (tcp/udp; 0 = the protocol's
    /// default, see `flow::DEFAULT_*_IDLE_TIMEOUT_S`).
    pub idle_timeout_s: u16,
}
assert_size!(Listener, 8);
impl_aya_pod!(ListenerKey, Listener);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::addr::{CLASS_ALL_PORTS, CLASS_LISTENER, CLASS_PORTS};

    #[test]
    fn class_bits_follow_port_and_protocol() {
        let key = |port: u16, protocol| ListenerKey {
            addr: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            port_be: port.to_be(),
            protocol,
            family: crate::addr::FAMILY_V4,
        };
        assert_eq!(
            key(80, crate::proto::IPPROTO_TCP).class(),
            CLASS_LISTENER | CLASS_PORTS
        );
        assert_eq!(
            key(0, crate::proto::IPPROTO_UDP).class(),
            CLASS_LISTENER | CLASS_ALL_PORTS
        );
        assert_eq!(key(0, crate::proto::IPPROTO_ICMP).class(), CLASS_LISTENER);
        assert_eq!(key(0, crate::proto::IPPROTO_ICMPV6).class(), CLASS_LISTENER);
    }
}
