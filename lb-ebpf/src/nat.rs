//! `nat` mode: the destination is rewritten to the target's address and port, the source to
//! the load balancer's address facing the target (`Target::snat_addr`) and an allocated port;
//! replies from targets are translated back. Targets need no configuration: to them the load
//! balancer is the client, so their replies come back through it.
//!
//! A translation is a `NAT_REPLIES` entry keyed by the reply's 5-tuple (target address and
//! port → snat address and allocated port), holding the client and VIP to restore and the
//! connection's state in both directions (`lb_common::flow::next_state`). The flow entry
//! remembers the allocated port, so an established flow's packet needs no lookup of its
//! translation at all unless it can move the translation: a segment with SYN, FIN or RST, any
//! segment once the client has sent a FIN, or the packet that refreshes the flow entry (its
//! state moved, or a [`REFRESH_NS`] passed), which refreshes the translation too and checks
//! that it is still this flow's. So the translation's `last_seen_ns` is never older than the
//! flow entry's: it cannot expire, nor its port be reclaimed, before the flow entry would.
//!
//! Life cycle: only a new connection (a TCP SYN, a UDP datagram, under the flood gate) or a
//! re-hashed flow allocates. When a connection closes (FINs both ways and the last ACK, or a
//! RST), the packet that closes it is still translated, then its flow entry and translation
//! are deleted: the port is free at once, and the table never fills with closed connections.
//! A straggler after that (a FIN retransmitted because the last ACK was lost) reaches the load
//! balancer's own stack, whose reset ends the target's half of the connection, which is closing
//! anyway. Idle and half-open translations expire (the userspace sweep deletes them; a probe
//! that meets one takes its port). The reply path never creates an entry: a flood towards the
//! load balancer's addresses costs one lookup per packet and allocates nothing.
//!
//! Port allocation is deterministic: probe `i` of a flow is port `min + mix(h, i) mod range`,
//! with `h` a hash of the client's 5-tuple and `mix` a 32-bit finaliser, so probes spread
//! evenly over any range size. A retransmitted SYN therefore finds its own translation again
//! at the same port instead of taking a new one.

use aya_ebpf::{
    bindings::{xdp_action, BPF_NOEXIST},
    programs::XdpContext,
};
use lb_common::{
    addr::CLASS_NAT_SOURCE,
    flow::{next_state, reclaimable, FlowKey, NatOrigin, REFRESH_NS, STATE_ANSWERED, STATE_CLOSED},
    stats::Counter,
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};

use crate::{
    csum, even, forward, hash,
    parse::{self, Family, Packet, IPPROTO_TCP, IPPROTO_UDP, TCP_FIN, TCP_RST, TCP_SYN},
    select::{self, Selected},
    stats, CONFIG, FLOWS, NAT_REPLIES, TARGETS,
};

/// Ports tried for a new translation before giving up (`drop_nat_ports_exhausted`).
const PROBES: u32 = 8;

/// `-E2BIG`: what a full preallocated hash map answers to an insert of a new key.
const E2BIG: i32 = -7;

/// Translates a reply from a target back to the client, if the packet is one, and moves the
/// connection's state. Runs for every packet the load balancer receives: a packet to an
/// address of `class` without `CLASS_NAT_SOURCE` (no target's source address) cannot be a
/// reply and costs no lookup; anything else that is not a translated reply costs one.
#[inline(always)]
pub fn reply(ctx: &XdpContext, packet: &Packet, class: u32) -> Option<(Counter, u32)> {
    if class & CLASS_NAT_SOURCE == 0
        || (packet.protocol != IPPROTO_TCP && packet.protocol != IPPROTO_UDP)
    {
        return None;
    }
    // SAFETY: a value of this map, valid for this run (RCU); fields are written in place and
    // a concurrent replacement (a reclaimed port) replaces the element whole.
    let found = unsafe { &mut *NAT_REPLIES.get_ptr_mut(packet.key)? };
    if packet.vlan {
        // Like requests for a listener: sluice translates untagged frames only.
        return Some((Counter::PassVlanListener, xdp_action::XDP_PASS));
    }
    let scratch = match crate::NAT_SCRATCH.get_ptr_mut(0) {
        Some(scratch) => scratch,
        None => return Some((Counter::DropRewriteFailed, xdp_action::XDP_DROP)),
    };
    // SAFETY: this CPU's slot, used by this packet only (see `Scratch`).
    let scratch = unsafe { &mut *scratch };
    let now = crate::clock::now();
    let state = if packet.protocol == IPPROTO_TCP {
        next_state(found.state, packet.tcp_flags, false)
    } else {
        found.state | STATE_ANSWERED
    };
    if state != found.state || now.wrapping_sub(found.last_seen_ns) > REFRESH_NS {
        found.state = state;
        found.last_seen_ns = now;
    }
    // The rewrite works on a copy: a closing connection's translation is deleted first, and a
    // deleted element of a preallocated map may be reused at once by another CPU. (Deciding
    // the deletion after the rewrite instead doubles what the verifier walks.)
    scratch.origin = *found;
    if state & STATE_CLOSED != 0 {
        stats::observe(ctx, Counter::ConnectionClosed);
        forget(packet, &scratch.origin, &mut scratch.key);
    }
    let origin = &scratch.origin;
    if let Err(outcome) = rewrite(
        ctx,
        packet,
        &origin.vip,
        origin.vip_port_be,
        &origin.client,
        origin.client_port_be,
    ) {
        return Some((outcome, xdp_action::XDP_DROP));
    }
    Some(
        match forward::to(
            ctx,
            packet.key.family,
            &origin.vip,
            &origin.client,
            Counter::NatReply,
        ) {
            Ok(done) => done,
            Err(outcome) => (outcome, xdp_action::XDP_DROP),
        },
    )
}

/// Deletes a connection that closed from the target's side: its translation (the reply key is
/// `packet`'s) and the client's flow entry, whose key is built in `key`.
#[inline(always)]
fn forget(packet: &Packet, origin: &NatOrigin, key: &mut FlowKey) {
    let _ = NAT_REPLIES.remove(packet.key);
    key.src = origin.client;
    key.dst = origin.vip;
    key.src_port_be = origin.client_port_be;
    key.dst_port_be = origin.vip_port_be;
    key.protocol = packet.protocol;
    key.family = packet.key.family;
    key._pad = [0; 2];
    let _ = FLOWS.remove(&*key);
}

/// A new translation's reply key and origin, kept off the 512-byte stack that the whole
/// inlined program shares. An XDP program runs to completion on its CPU, so one slot per CPU
/// is never used by two packets at a time.
#[repr(C)]
pub struct Scratch {
    key: FlowKey,
    origin: NatOrigin,
}

/// Rewrites a client's packet towards `selected.target`, allocating or reusing its translation
/// (the port goes to `selected.flow.nat_port_be`, which `select::commit` stores).
#[inline(always)]
pub fn forward(
    ctx: &XdpContext,
    packet: &Packet,
    selected: &mut Selected,
) -> Result<(Counter, u32), Counter> {
    let target = selected.target;
    // The rewrite is in place: no translation between families.
    if target.family != packet.key.family {
        return Err(Counter::DropRewriteFailed);
    }
    // Port 0: the target listens on the port the client asked for (all-ports listeners).
    let target_port_be = if target.port_be == 0 {
        packet.key.dst_port_be
    } else {
        target.port_be
    };
    let stored = selected.flow.nat_port_be;
    let port_be = if !selected.is_new && stored != 0 && untracked(packet, selected) {
        stored
    } else {
        translation(ctx, packet, selected, target_port_be)?
    };
    selected.flow.nat_port_be = port_be;
    rewrite(
        ctx,
        packet,
        &target.snat_addr,
        port_be,
        &target.addr,
        target_port_be,
    )?;
    match forward::to_target(
        ctx,
        &target.snat_addr,
        selected.target_id,
        target,
        selected.now,
        Counter::ForwardNat,
    ) {
        // Handing the packet to the kernel cannot help: its source is now one of the kernel's
        // own addresses, which IPv4 forwarding drops as a martian. Targets' neighbours are kept
        // resolved (managed), so this is transient, and the client retransmits.
        Ok((Counter::PassNeighborUnresolved, _)) => Err(Counter::DropNeighborUnresolved),
        other => other,
    }
}

/// Whether an established flow's packet leaves its translation as it is (see the module
/// comment): a TCP segment without SYN, FIN or RST of a connection in `STATE_ANSWERED` alone
/// (the client sent no FIN), or a UDP datagram, that did not refresh the flow entry.
#[inline(always)]
fn untracked(packet: &Packet, selected: &Selected) -> bool {
    !selected.refreshed
        && (packet.protocol != IPPROTO_TCP
            || (packet.tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST) == 0
                && selected.flow.state == STATE_ANSWERED))
}

/// The port of the flow's translation, tracked or allocated: an established flow's is moved by
/// the packet ([`track`]), a new flow (or one whose translation is gone, if the packet starts a
/// connection) gets a new one ([`allocate`]).
#[inline(always)]
fn translation(
    ctx: &XdpContext,
    packet: &Packet,
    selected: &mut Selected,
    target_port_be: u16,
) -> Result<u16, Counter> {
    let target = selected.target;
    let scratch = crate::NAT_SCRATCH
        .get_ptr_mut(0)
        .ok_or(Counter::DropRewriteFailed)?;
    // SAFETY: this CPU's slot, used by this packet only (see `Scratch`).
    let scratch = unsafe { &mut *scratch };
    let key = &mut scratch.key;
    if let Some((old_target_id, old_port_be)) = selected.rehashed_from {
        release(packet, old_target_id, old_port_be, key);
    }
    key.src = target.addr;
    key.dst = target.snat_addr;
    key.src_port_be = target_port_be;
    key.protocol = packet.protocol;
    key.family = target.family;
    key._pad = [0; 2];

    let mut port_be = 0;
    let stored = selected.flow.nat_port_be;
    if !selected.is_new {
        if stored != 0 {
            port_be = track(ctx, packet, stored, key, selected.now);
        }
        if port_be == 0 {
            // The translation closed and its port went to another connection, or expired, or
            // the flow had none (its listener was in another mode): only a new connection may
            // allocate.
            if !select::starts_connection(packet) {
                return Err(Counter::DropNoConnection);
            }
            selected.store = true;
        }
    }
    if port_be == 0 {
        let origin = &mut scratch.origin;
        origin.client = packet.key.src;
        origin.vip = packet.key.dst;
        origin.client_port_be = packet.key.src_port_be;
        origin.vip_port_be = packet.key.dst_port_be;
        origin.listener_id = selected.flow.listener_id;
        origin.last_seen_ns = selected.now;
        origin.state = selected.flow.state;
        origin.protocol = packet.protocol;
        origin.idle_timeout_s = selected.flow.idle_timeout_s;
        origin.target_id = selected.target_id;
        port_be = allocate(ctx, packet, key, origin, selected.now).inspect_err(|e| {
            if *e == Counter::DropNatPortsExhausted {
                stats::port_allocation_error(selected.target_id);
            }
        })?;
    }
    Ok(port_be)
}

/// An established flow's translation at `port_be`, moved and refreshed by the client's packet:
/// returns the port if the translation is still this flow's, 0 if it is gone or another
/// connection's. A connection that closes here loses its flow entry and its translation. `key`
/// is the reply key but for the port. Written on every call: only packets that can move the
/// translation or that refreshed the flow entry come here ([`untracked`]).
#[inline(always)]
fn track(ctx: &XdpContext, packet: &Packet, port_be: u16, key: &mut FlowKey, now: u64) -> u16 {
    key.dst_port_be = port_be;
    // SAFETY: written in place, as in `reply`.
    let Some(found) = NAT_REPLIES.get_ptr_mut(&*key) else {
        return 0;
    };
    // SAFETY: as above.
    let found = unsafe { &mut *found };
    if !is_origin(found, packet.key) {
        return 0;
    }
    let state = if packet.protocol == IPPROTO_TCP {
        next_state(found.state, packet.tcp_flags, true)
    } else {
        found.state
    };
    if state & STATE_CLOSED != 0 {
        // This packet (the last ACK, or a RST) is still forwarded, by the port returned.
        stats::observe(ctx, Counter::ConnectionClosed);
        let _ = FLOWS.remove(packet.key);
        let _ = NAT_REPLIES.remove(&*key);
    } else {
        found.state = state;
        found.last_seen_ns = now;
    }
    port_be
}

/// The `mix`-th probe's offset for a flow hashed to `h`: a 32-bit finaliser (lowbias32), so
/// that probes are spread over the range whatever its size.
#[inline(always)]
fn probe(h: u32, i: u32) -> u32 {
    let mut x = h ^ i.wrapping_mul(0x9e37_79b9);
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^ (x >> 16)
}

/// A port for a new translation of `origin`, network order, written into `NAT_REPLIES`;
/// `DropNatPortsExhausted` if every probe found its port held by another live connection,
/// `DropFlowTableFull` if the probes failed because `NAT_REPLIES` is full. A probe that finds this
/// flow's own translation (a retransmitted SYN) takes it over, fresh; one that finds a closed
/// or expired translation takes its port (`NatPortReclaimed`).
///
/// Every probe leaves the loop at the same point: with a `return` per probe, the verifier
/// followed the rest of the program once per probe and gave up (over a million instructions).
#[inline(always)]
fn allocate(
    ctx: &XdpContext,
    packet: &Packet,
    key: &mut FlowKey,
    origin: &NatOrigin,
    now: u64,
) -> Result<u16, Counter> {
    let (min, max) = match CONFIG.get(0) {
        Some(config) => (
            u32::from(config.nat_port_min),
            u32::from(config.nat_port_max),
        ),
        None => return Err(Counter::DropNatPortsExhausted),
    };
    let min = if min == 0 { 1 } else { min };
    if max < min {
        return Err(Counter::DropNatPortsExhausted);
    }
    let range = max - min + 1;
    let h = hash::five_tuple(packet.key);
    let mut port_be = 0;
    let mut i = 0;
    while i < PROBES && i < range {
        let candidate = ((min + probe(h, i) % range) as u16).to_be();
        key.dst_port_be = candidate;
        if NAT_REPLIES
            .insert(&*key, origin, u64::from(BPF_NOEXIST))
            .is_ok()
        {
            port_be = candidate;
            break;
        }
        // SAFETY: read in place, as in `reply`.
        if let Some(found) = unsafe { NAT_REPLIES.get(&*key) } {
            let own = is_origin(found, packet.key);
            if own
                || reclaimable(
                    found.state,
                    found.protocol,
                    found.last_seen_ns,
                    found.idle_timeout_s,
                    now,
                )
            {
                // Replaced whole (not written in place): a reply reading the old one sees
                // either.
                if NAT_REPLIES.insert(&*key, origin, 0).is_ok() {
                    if !own {
                        stats::observe(ctx, Counter::NatPortReclaimed);
                    }
                    port_be = candidate;
                    break;
                }
            }
        }
        stats::observe(ctx, Counter::NatPortCollision);
        i += 1;
    }
    if port_be != 0 {
        return Ok(port_be);
    }
    // Why the probes failed, asked once more at the last port (outside the loop: a flag
    // carried through the probes multiplies the verifier's states): a full map refuses a new
    // key with E2BIG, a taken port with EEXIST; a port freed meanwhile is simply taken.
    match NAT_REPLIES.insert(&*key, origin, u64::from(BPF_NOEXIST)) {
        Ok(()) => Ok(key.dst_port_be),
        Err(E2BIG) => Err(Counter::DropFlowTableFull),
        Err(_) => Err(Counter::DropNatPortsExhausted),
    }
}

/// Deletes the translation of a new flow whose flow entry could not be written (a full
/// table): the connection is refused, and its port must not stay taken.
#[inline(always)]
pub fn abandon(packet: &Packet, selected: &Selected) {
    let Some(scratch) = crate::NAT_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot, used by this packet only (see `Scratch`).
    let key = unsafe { &mut (*scratch).key };
    release(packet, selected.target_id, selected.flow.nat_port_be, key);
}

/// Deletes a flow's translation on target `old_target_id` at `old_port_be`, if it is still
/// this flow's (the port may have gone to another connection since).
#[inline(always)]
fn release(packet: &Packet, old_target_id: u32, old_port_be: u16, key: &mut FlowKey) {
    if old_port_be == 0 {
        return;
    }
    let Some(old) = TARGETS.get(old_target_id) else {
        return;
    };
    key.src = old.addr;
    key.dst = old.snat_addr;
    key.src_port_be = if old.port_be == 0 {
        packet.key.dst_port_be
    } else {
        old.port_be
    };
    key.dst_port_be = old_port_be;
    key.protocol = packet.protocol;
    key.family = old.family;
    key._pad = [0; 2];
    // SAFETY: read in place, as in `reply`.
    if let Some(found) = unsafe { NAT_REPLIES.get(&*key) } {
        if is_origin(found, packet.key) {
            let _ = NAT_REPLIES.remove(&*key);
        }
    }
}

/// Whether a translation belongs to the flow of `key` (a client's packet).
#[inline(always)]
fn is_origin(origin: &NatOrigin, key: &FlowKey) -> bool {
    origin.client_port_be == key.src_port_be
        && origin.vip_port_be == key.dst_port_be
        && origin.client == key.src
        && origin.vip == key.dst
}

/// Rewrites the packet's addresses and ports (the old ones are `packet.key`'s) and updates the
/// IPv4 header and TCP/UDP checksums incrementally (RFC 1624). Ports are network order.
///
/// IPv6 addresses are not summed here but by `bpf_csum_diff` between the key (old) and the
/// rewritten header (new): 32 address bytes held in registers spill to the 512-byte stack.
#[inline(always)]
fn rewrite(
    ctx: &XdpContext,
    packet: &Packet,
    src: &[u8; 16],
    src_port_be: u16,
    dst: &[u8; 16],
    dst_port_be: u16,
) -> Result<(), Counter> {
    // Tagged frames are passed before this (`PassVlanListener`), so the IP header follows the
    // Ethernet header. The offsets are recomputed here rather than read from `packet`: LLVM
    // stores those in halves, and the verifier cannot bound a 64-bit value read back from two
    // 32-bit stores, so packet pointers built from them would be rejected.
    if packet.vlan {
        return Err(Counter::DropRewriteFailed);
    }
    let l3_offset = EthHdr::LEN;
    let key = packet.key;
    // IPv6: the addresses' difference, for the TCP/UDP pseudo-header.
    let (l4_offset, v6_addresses) = match packet.family {
        Family::V4 => {
            let ip: *mut Ipv4Hdr = header_mut(ctx, l3_offset)?;
            let (s, d) = (ipv4(src).to_ne_bytes(), ipv4(dst).to_ne_bytes());
            // SAFETY: `header_mut` checked the bounds; the header and its fields (checksum at
            // 10, addresses at 12 and 16) are at even offsets from the even frame start.
            unsafe {
                let h = ip as *mut u8;
                let check = ipv4_addresses(even::load(h.add(10)), key, src, dst);
                even::store(
                    h.add(10),
                    [
                        check,
                        u16::from_ne_bytes([s[0], s[1]]),
                        u16::from_ne_bytes([s[2], s[3]]),
                        u16::from_ne_bytes([d[0], d[1]]),
                        u16::from_ne_bytes([d[2], d[3]]),
                    ],
                );
                // Masked to 4 bits: at most 60, as parse checked.
                (l3_offset + ((*ip).vihl & 0x0F) as usize * 4, 0)
            }
        }
        Family::V6 => {
            let ip: *mut Ipv6Hdr = header_mut(ctx, l3_offset)?;
            // SAFETY: `header_mut` checked the bounds; the key (initialised, in `PACKET_KEY`)
            // and the header both hold source then destination address, 32 contiguous bytes.
            unsafe {
                (*ip).src_addr = *src;
                (*ip).dst_addr = *dst;
                let old = key as *const FlowKey as *const u8;
                let sum = csum::diff(old, (*ip).src_addr.as_ptr(), 32, 0);
                (l3_offset + Ipv6Hdr::LEN, sum)
            }
        }
    };
    // The pseudo-header's addresses, then the ports. A closure that LLVM keeps as a called BPF
    // function: inlined (or as two functions taking words), the same arithmetic made the
    // verifier give up (over 1,000,000 processed instructions with logging at info, 167,000
    // as it is).
    let update = |check: u16| {
        let check = match packet.family {
            Family::V4 => ipv4_addresses(check, key, src, dst),
            Family::V6 => csum::apply(check, v6_addresses),
        };
        let check = csum::replace16(check, key.src_port_be, src_port_be);
        csum::replace16(check, key.dst_port_be, dst_port_be)
    };
    if packet.protocol == IPPROTO_TCP {
        let tcp: *mut TcpHdr = header_mut(ctx, l4_offset)?;
        // SAFETY: `header_mut` checked the bounds; the L4 header starts at 14 plus a multiple
        // of 4 from the even frame start, its ports at 0 and 2, its checksum at 16.
        unsafe {
            let h = tcp as *mut u8;
            even::store(h, [src_port_be, dst_port_be]);
            even::store(h.add(16), [update(even::load(h.add(16)))]);
        }
    } else {
        let udp: *mut UdpHdr = header_mut(ctx, l4_offset)?;
        // SAFETY: as for TCP; UDP's checksum is at 6.
        unsafe {
            let h = udp as *mut u8;
            even::store(h, [src_port_be, dst_port_be]);
            let check = even::load(h.add(6));
            // Over IPv4 a zero checksum means the sender computed none; it stays none.
            if check != 0 || packet.family == Family::V6 {
                let updated = match update(check) {
                    // A computed 0 is sent as 0xffff (RFC 768): 0 means "none".
                    0 => 0xffff,
                    updated => updated,
                };
                even::store(h.add(6), [updated]);
            }
        }
    }
    Ok(())
}

/// `check` after an IPv4 packet's addresses changed from `key`'s to `src` and `dst`: one
/// difference for both words (RFC 1624).
#[inline(always)]
fn ipv4_addresses(check: u16, key: &FlowKey, src: &[u8; 16], dst: &[u8; 16]) -> u16 {
    let diff = csum::word_diff(key.src_words()[0], ipv4(src))
        + csum::word_diff(key.dst_words()[0], ipv4(dst));
    csum::apply(check, diff)
}

/// The IPv4 address in the first 4 of 16 map bytes, as the word of its memory bytes.
///
/// Every address handed to [`rewrite`] is a field at offset 0 or 16 of an 8-aligned map value
/// (`FlowKey`, `Target`, `NatOrigin`), so it is read as one word; read byte by byte, it costs
/// four loads and six shifts and ors.
#[inline(always)]
fn ipv4(addr: &[u8; 16]) -> u32 {
    // SAFETY: 4-aligned as said above; any bit pattern is a valid u32.
    unsafe { *(addr.as_ptr() as *const u32) }
}

#[inline(always)]
fn header_mut<T>(ctx: &XdpContext, offset: usize) -> Result<*mut T, Counter> {
    parse::header::<T>(ctx, offset)
        .map(|p| p as *mut T)
        .ok_or(Counter::DropRewriteFailed)
}
