//! The flow table (`FLOWS`), `nat` mode's reverse translations (`NAT_REPLIES`), and the
//! connection life cycle both follow: [`next_state`] moves a TCP connection's state on each
//! segment, [`expired`] and [`reclaimable`] say when its entries may go. The XDP program and
//! the userspace sweep share these functions, so both decide alike.

use bytemuck::{Pod, Zeroable};

use crate::{assert_size, impl_aya_pod};

/// Default size of the flow table; `sluice run --flows` overrides it. Each entry costs about
/// 40 + 24 bytes of key and value plus the kernel's per-element overhead (~ 50 bytes).
pub const DEFAULT_FLOWS: u32 = 1 << 20;

/// A packet's 5-tuple as it arrives (client to VIP), or for `NAT_REPLIES` the reply's
/// 5-tuple (target to the load balancer's address and allocated port).
///
/// Aligned to 8 (the layout is the same: 40 bytes, no padding), so that the XDP program reads
/// and writes the addresses a word at a time ([`FlowKey::src_words`]); at alignment 2 the
/// compiler handles them byte by byte, 16 values per address.
#[repr(C, align(8))]
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
const _: () = assert!(core::mem::align_of::<FlowKey>() == 8);

impl FlowKey {
    /// The source address as four words in memory order.
    #[inline(always)]
    pub fn src_words(&self) -> [u32; 4] {
        // SAFETY: `src` is at offset 0 of an 8-aligned key, so 4-aligned; 16 bytes of
        // integers read as four u32, any bit pattern valid.
        unsafe { *(self.src.as_ptr() as *const [u32; 4]) }
    }

    /// The destination address as four words in memory order.
    #[inline(always)]
    pub fn dst_words(&self) -> [u32; 4] {
        // SAFETY: as in `src_words`; `dst` is at offset 16.
        unsafe { *(self.dst.as_ptr() as *const [u32; 4]) }
    }
}

/// Where an established flow goes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Flow {
    pub target_id: u32,
    pub listener_id: u32,
    /// `nat` mode: the source port allocated on the load balancer's address, network order.
    pub nat_port_be: u16,
    /// `STATE_*` bits as the client's segments moved them (`dsr`, `tunnel`; in `nat` mode the
    /// translation holds the state of both directions).
    pub state: u8,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`, for the sweep's timeouts.
    pub protocol: u8,
    /// The listener's idle timeout when the flow began, in seconds.
    pub idle_timeout_s: u16,
    pub _pad: [u8; 2],
    /// `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC at tick precision) when the flow was last
    /// seen, refreshed at most once a second (and on every state change).
    pub last_seen_ns: u64,
}
assert_size!(Flow, 24);

/// `nat` mode: what a reply from a target is translated back to, and the connection's state
/// in both directions.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct NatOrigin {
    pub client: [u8; 16],
    pub vip: [u8; 16],
    pub client_port_be: u16,
    pub vip_port_be: u16,
    pub listener_id: u32,
    /// As [`Flow::last_seen_ns`], refreshed by packets in both directions.
    pub last_seen_ns: u64,
    /// `STATE_*` bits.
    pub state: u8,
    /// `IPPROTO_TCP` or `IPPROTO_UDP` (also in the key; here for the sweep's timeouts).
    pub protocol: u8,
    /// As [`Flow::idle_timeout_s`].
    pub idle_timeout_s: u16,
    /// The target the port was allocated on (per-target counts in `status`).
    pub target_id: u32,
}
assert_size!(NatOrigin, 56);
impl_aya_pod!(FlowKey, Flow, NatOrigin);

/// TCP flag bits (byte 13 of the header).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

pub const IPPROTO_TCP: u8 = 6;

/// The connection got past its first packet: the target answered (`nat`) or the client sent
/// a segment without SYN (the handshake's ACK). Unset means half-open.
pub const STATE_ANSWERED: u8 = 1 << 0;
/// The client sent a FIN.
pub const STATE_FIN_CLIENT: u8 = 1 << 1;
/// The target sent a FIN (seen in `nat` mode only: other modes do not see replies).
pub const STATE_FIN_TARGET: u8 = 1 << 2;
/// Closed: a RST either way, or an ACK after FINs both ways (conntrack's TIME_WAIT). `nat`
/// deletes the flow entry and the translation right after translating the packet that closes;
/// a `dsr`/`tunnel` entry lingers for [`CLOSED_LINGER_NS`]. A closed entry's port may be taken
/// by a new connection at once.
pub const STATE_CLOSED: u8 = 1 << 3;

const NS_PER_SEC: u64 = 1_000_000_000;

/// A TCP connection that was never answered (a SYN without reply) expires this long after its
/// last SYN.
pub const HALF_OPEN_TIMEOUT_NS: u64 = 10 * NS_PER_SEC;
/// A connection with a FIN one way only (half-closed, or closed where sluice cannot see the
/// target's FIN) expires after this much silence.
pub const CLOSING_TIMEOUT_NS: u64 = 60 * NS_PER_SEC;
/// A closed `dsr`/`tunnel` connection's entry is removed this long after its last packet.
pub const CLOSED_LINGER_NS: u64 = 2 * NS_PER_SEC;
/// How often a flow's `last_seen_ns` is refreshed without a state change.
pub const REFRESH_NS: u64 = NS_PER_SEC;

/// Idle timeouts when the listener sets none: AWS NLB's.
pub const DEFAULT_TCP_IDLE_TIMEOUT_S: u16 = 350;
pub const DEFAULT_UDP_IDLE_TIMEOUT_S: u16 = 120;

/// The state after a TCP segment with `tcp_flags`, from the client (`from_client`) or from the
/// target. A SYN without ACK from the client starts over (a new connection on the same
/// 5-tuple); everything else only adds bits.
#[inline(always)]
pub const fn next_state(state: u8, tcp_flags: u8, from_client: bool) -> u8 {
    if tcp_flags & TCP_RST != 0 {
        return state | STATE_CLOSED;
    }
    if from_client && tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        return 0;
    }
    let both_fins = STATE_FIN_CLIENT | STATE_FIN_TARGET;
    // The ACK of the second FIN: a segment with ACK and no FIN after FINs both ways.
    if state & both_fins == both_fins && tcp_flags & (TCP_ACK | TCP_FIN) == TCP_ACK {
        return state | STATE_CLOSED;
    }
    let mut next = state;
    if !from_client || tcp_flags & TCP_SYN == 0 {
        next |= STATE_ANSWERED;
    }
    if tcp_flags & TCP_FIN != 0 {
        next |= if from_client {
            STATE_FIN_CLIENT
        } else {
            STATE_FIN_TARGET
        };
    }
    next
}

/// Whether an entry in `state`, for `protocol`, last seen at `last_seen_ns` and with an idle
/// timeout of `idle_timeout_s`, has expired at `now_ns`. UDP has no states: only the idle
/// timeout applies.
#[inline(always)]
pub const fn expired(
    state: u8,
    protocol: u8,
    last_seen_ns: u64,
    idle_timeout_s: u16,
    now_ns: u64,
) -> bool {
    let idle = now_ns.saturating_sub(last_seen_ns);
    let timeout = if protocol != IPPROTO_TCP {
        idle_timeout_s as u64 * NS_PER_SEC
    } else if state & STATE_CLOSED != 0 {
        CLOSED_LINGER_NS
    } else if state & STATE_ANSWERED == 0 {
        HALF_OPEN_TIMEOUT_NS
    } else if state & (STATE_FIN_CLIENT | STATE_FIN_TARGET) != 0 {
        CLOSING_TIMEOUT_NS
    } else {
        idle_timeout_s as u64 * NS_PER_SEC
    };
    idle >= timeout
}

/// [`expired`] for a table under pressure (nearly full): connections that are not
/// established and in use (half-open, closing, closed) go after one second of silence, so
/// that pressure evicts them before any live entry (Linux conntrack's early drop).
#[inline(always)]
pub const fn expired_under_pressure(
    state: u8,
    protocol: u8,
    last_seen_ns: u64,
    idle_timeout_s: u16,
    now_ns: u64,
) -> bool {
    let not_established = state & (STATE_CLOSED | STATE_FIN_CLIENT | STATE_FIN_TARGET) != 0
        || state & STATE_ANSWERED == 0;
    (protocol == IPPROTO_TCP
        && not_established
        && now_ns.saturating_sub(last_seen_ns) >= NS_PER_SEC)
        || expired(state, protocol, last_seen_ns, idle_timeout_s, now_ns)
}

/// Whether a new connection may take an entry's place (its `nat` port) at `now_ns`: it has
/// expired, or it is closed (like conntrack, which reuses a TIME_WAIT tuple for a new SYN).
#[inline(always)]
pub const fn reclaimable(
    state: u8,
    protocol: u8,
    last_seen_ns: u64,
    idle_timeout_s: u16,
    now_ns: u64,
) -> bool {
    (protocol == IPPROTO_TCP && state & STATE_CLOSED != 0)
        || expired(state, protocol, last_seen_ns, idle_timeout_s, now_ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYN: u8 = TCP_SYN;
    const SYN_ACK: u8 = TCP_SYN | TCP_ACK;
    const ACK: u8 = TCP_ACK;
    const FIN_ACK: u8 = TCP_FIN | TCP_ACK;

    fn walk(segments: &[(u8, bool)]) -> u8 {
        segments.iter().fold(0, |state, &(flags, from_client)| {
            next_state(state, flags, from_client)
        })
    }

    #[test]
    fn address_words_are_the_addresses_bytes_in_memory_order() {
        let key = FlowKey {
            src: core::array::from_fn(|i| i as u8),
            dst: core::array::from_fn(|i| 0x80 | i as u8),
            ..Default::default()
        };
        assert_eq!(key.src_words(), crate::addr::words(&key.src));
        assert_eq!(key.dst_words(), crate::addr::words(&key.dst));
        assert_eq!(key.src_words()[1], u32::from_ne_bytes([4, 5, 6, 7]));
        let target = crate::target::Target {
            addr: key.dst,
            ..Default::default()
        };
        assert_eq!(target.addr_words(), key.dst_words());
        assert_eq!(
            crate::addr::bucket_of_words(key.dst_words()),
            crate::addr::address_bucket(&key.dst)
        );
    }

    #[test]
    fn a_syn_alone_is_half_open() {
        assert_eq!(walk(&[(SYN, true), (SYN, true)]), 0);
        assert!(!expired(0, IPPROTO_TCP, 0, 350, HALF_OPEN_TIMEOUT_NS - 1));
        assert!(expired(0, IPPROTO_TCP, 0, 350, HALF_OPEN_TIMEOUT_NS));
    }

    #[test]
    fn an_answer_or_the_clients_ack_establishes() {
        assert_eq!(walk(&[(SYN, true), (SYN_ACK, false)]), STATE_ANSWERED);
        assert_eq!(walk(&[(SYN, true), (ACK, true)]), STATE_ANSWERED);
        let ns = 349 * NS_PER_SEC;
        assert!(!expired(STATE_ANSWERED, IPPROTO_TCP, 0, 350, ns));
        assert!(expired(
            STATE_ANSWERED,
            IPPROTO_TCP,
            0,
            350,
            ns + NS_PER_SEC
        ));
    }

    #[test]
    fn fins_both_ways_then_the_last_ack_close() {
        let client_first = [
            (SYN, true),
            (SYN_ACK, false),
            (ACK, true),
            (FIN_ACK, true),
            (ACK, false),
            (FIN_ACK, false),
        ];
        let state = walk(&client_first);
        assert_eq!(state & STATE_CLOSED, 0, "the last ACK is still to come");
        assert_ne!(next_state(state, ACK, true) & STATE_CLOSED, 0);

        let target_first = [
            (SYN, true),
            (SYN_ACK, false),
            (ACK, true),
            (FIN_ACK, false),
            (ACK, true),
            (FIN_ACK, true),
        ];
        let state = walk(&target_first);
        assert_eq!(state & STATE_CLOSED, 0);
        assert_ne!(next_state(state, ACK, false) & STATE_CLOSED, 0);
    }

    #[test]
    fn a_fin_one_way_is_closing() {
        let state = walk(&[(SYN, true), (ACK, true), (FIN_ACK, true), (ACK, true)]);
        assert_eq!(state, STATE_ANSWERED | STATE_FIN_CLIENT);
        assert!(!expired(state, IPPROTO_TCP, 0, 350, CLOSING_TIMEOUT_NS - 1));
        assert!(expired(state, IPPROTO_TCP, 0, 350, CLOSING_TIMEOUT_NS));
        assert!(!reclaimable(state, IPPROTO_TCP, 0, 350, 1));
    }

    #[test]
    fn a_reset_either_way_closes() {
        assert_ne!(walk(&[(SYN, true), (TCP_RST, false)]) & STATE_CLOSED, 0);
        assert_ne!(
            walk(&[(SYN, true), (ACK, true), (TCP_RST | ACK, true)]) & STATE_CLOSED,
            0
        );
    }

    #[test]
    fn closed_entries_linger_but_their_port_is_free_at_once() {
        let closed = STATE_ANSWERED | STATE_CLOSED;
        assert!(reclaimable(closed, IPPROTO_TCP, 5, 350, 5));
        assert!(!expired(closed, IPPROTO_TCP, 0, 350, CLOSED_LINGER_NS - 1));
        assert!(expired(closed, IPPROTO_TCP, 0, 350, CLOSED_LINGER_NS));
    }

    #[test]
    fn a_new_syn_on_the_same_tuple_starts_over() {
        let closed = STATE_ANSWERED | STATE_CLOSED;
        assert_eq!(next_state(closed, SYN, true), 0);
        // A SYN-ACK from the target does not.
        assert_eq!(next_state(0, SYN_ACK, false), STATE_ANSWERED);
    }

    #[test]
    fn udp_knows_only_the_idle_timeout() {
        assert!(!expired(0, 17, 0, 120, 119 * NS_PER_SEC));
        assert!(expired(0, 17, 0, 120, 120 * NS_PER_SEC));
        assert!(!reclaimable(STATE_CLOSED, 17, 0, 120, 1));
    }

    #[test]
    fn pressure_evicts_what_is_not_established_first() {
        let s = NS_PER_SEC;
        assert!(expired_under_pressure(0, IPPROTO_TCP, 0, 350, s));
        assert!(expired_under_pressure(
            STATE_ANSWERED | STATE_FIN_CLIENT,
            IPPROTO_TCP,
            0,
            350,
            s
        ));
        assert!(!expired_under_pressure(
            STATE_ANSWERED,
            IPPROTO_TCP,
            0,
            350,
            300 * s
        ));
        assert!(!expired_under_pressure(0, 17, 0, 120, 100 * s));
    }

    #[test]
    fn a_clock_behind_the_entry_is_no_expiry() {
        assert!(!expired(0, IPPROTO_TCP, 100, 350, 50));
    }
}
