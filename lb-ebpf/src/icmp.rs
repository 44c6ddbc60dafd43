//! ICMP and ICMPv6 addressed to a listener's address (its ICMP entry in `LISTENERS`).
//!
//! - Echo requests are answered here: the VIP lives on no interface, so nobody else would.
//! - "Fragmentation needed" (ICMP 3/4) and "packet too big" (ICMPv6 2) quote the start of a
//!   packet the VIP sent: a reply of one of its flows, from a target. They go to that flow's
//!   target, the way its listener forwards, so the target's stack lowers its path MTU and path
//!   MTU discovery works through the load balancer. Without this, replies too big for a link
//!   on the way to the client would black-hole: only the target can send smaller packets, and
//!   it would never hear of the limit.
//! - Everything else (other types, errors about no known flow, quotes that are cut short or
//!   of the other family) goes to the kernel untouched (`pass_vip_icmp`).
//!
//! In `nat` mode the error is translated like the flow's packets, so that the target's stack
//! matches it to its socket: it comes from the load balancer's address (`snat_addr`) and quotes
//! the packet the target sent (target address and port → load balancer's address and the
//! flow's allocated port). The quoted IPv4 header's checksum, the quoted TCP/UDP checksum (when
//! quoted) and the ICMP checksum are updated incrementally.
//!
//! Offsets are recomputed from the headers rather than taken from `Packet` (see
//! `nat::rewrite`), and every access is checked against the frame's end; the quote must also
//! lie inside the outer IP packet (Ethernet padding is not part of it).

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::{
    flow::FlowKey,
    listener::{ForwardingMode, ListenerKey},
    stats::Counter,
    target::{Target, TARGET_ACTIVE, TARGET_DRAINING},
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use crate::{
    csum, dsr, forward,
    parse::{header, Family, Packet, IPPROTO_TCP, IPPROTO_UDP},
    tunnel, FLOWS, ICMP_SCRATCH, LISTENERS, TARGETS,
};

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMPV6_PACKET_TOO_BIG: u8 = 2;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;
/// The TTL / hop limit of an echo reply, as a host would send it.
const REPLY_TTL: u8 = 64;
/// ICMP and ICMPv6 headers: type, code, checksum, 4 bytes that depend on the type; an error's
/// quote follows.
const ICMP_HEADER_LEN: usize = 8;

const PASS: (Counter, u32) = (Counter::PassVipIcmp, xdp_action::XDP_PASS);

/// The flow key and listener key of the flow an error is about, kept off the 512-byte stack
/// (per CPU; an XDP program runs to completion on its CPU, so one slot is never shared).
#[repr(C)]
pub struct Scratch {
    flow: FlowKey,
    listener: ListenerKey,
}

/// ICMP layout as seen from the Ethernet frame's start.
struct Layout {
    /// The ICMP header.
    icmp: usize,
    /// The end of the outer IP packet (the frame may carry Ethernet padding after it).
    ip_end: usize,
}

#[inline(always)]
pub fn handle(ctx: &XdpContext, packet: &Packet) -> (Counter, u32) {
    // main.rs passes tagged frames before this, so the IP header follows the Ethernet header.
    if packet.vlan {
        return PASS;
    }
    let Some(layout) = layout(ctx, packet.family) else {
        return PASS;
    };
    let Some(icmp) = header::<[u8; 2]>(ctx, layout.icmp) else {
        return PASS;
    };
    // SAFETY: `header` checked the bounds.
    let [kind, code] = unsafe { *icmp };
    match (packet.family, kind, code) {
        (Family::V4, ICMP_ECHO_REQUEST, 0) => echo_v4(ctx),
        (Family::V6, ICMPV6_ECHO_REQUEST, 0) => echo_v6(ctx),
        (Family::V4, ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED)
        | (Family::V6, ICMPV6_PACKET_TOO_BIG, 0) => error(ctx, packet, &layout),
        _ => PASS,
    }
}

/// Where the ICMP header and the end of the IP packet are (parse validated both headers).
#[inline(always)]
fn layout(ctx: &XdpContext, family: Family) -> Option<Layout> {
    let l3 = EthHdr::LEN;
    match family {
        Family::V4 => {
            let ip: *const Ipv4Hdr = header(ctx, l3)?;
            // SAFETY: `header` checked the bounds.
            let (vihl, tot_len) = unsafe { ((*ip).vihl, u16::from_be_bytes((*ip).tot_len)) };
            // Masked to 4 bits, so the verifier knows the offset is at most 14 + 60.
            Some(Layout {
                icmp: l3 + usize::from(vihl & 0x0F) * 4,
                ip_end: l3 + usize::from(tot_len),
            })
        }
        Family::V6 => {
            let ip: *const Ipv6Hdr = header(ctx, l3)?;
            // SAFETY: `header` checked the bounds.
            let payload_len = unsafe { u16::from_be_bytes((*ip).payload_len) };
            Some(Layout {
                icmp: l3 + Ipv6Hdr::LEN,
                ip_end: l3 + Ipv6Hdr::LEN + usize::from(payload_len),
            })
        }
    }
}

/// Answers an ICMP echo request in place: addresses and MACs swapped, type 0, TTL 64. Swapping
/// the addresses leaves the IPv4 header checksum unchanged; the TTL and type changes are
/// applied incrementally.
#[inline(always)]
fn echo_v4(ctx: &XdpContext) -> (Counter, u32) {
    let Some(ip) = header_mut::<Ipv4Hdr>(ctx, EthHdr::LEN) else {
        return PASS;
    };
    // SAFETY: `header_mut` checked the bounds.
    let icmp_offset = EthHdr::LEN + usize::from(unsafe { (*ip).vihl } & 0x0F) * 4;
    let Some(icmp) = header_mut::<[u8; 4]>(ctx, icmp_offset) else {
        return PASS;
    };
    // SAFETY: `header_mut` checked the bounds of both headers.
    unsafe {
        let (src, dst) = ((*ip).src_addr, (*ip).dst_addr);
        (*ip).src_addr = dst;
        (*ip).dst_addr = src;
        // The TTL shares its checksum word with the protocol.
        let old = u16::from_ne_bytes([(*ip).ttl, (*ip).proto]);
        (*ip).ttl = REPLY_TTL;
        let new = u16::from_ne_bytes([REPLY_TTL, (*ip).proto]);
        (*ip).check = csum::replace16(u16::from_ne_bytes((*ip).check), old, new).to_ne_bytes();
        set_type(icmp, ICMP_ECHO_REPLY);
    }
    reflect(ctx)
}

/// Answers an ICMPv6 echo request in place: addresses and MACs swapped, type 129, hop limit
/// 64. The checksum covers the pseudo-header, whose sum the swap does not change; the type's
/// does. The hop limit is in no checksum.
#[inline(always)]
fn echo_v6(ctx: &XdpContext) -> (Counter, u32) {
    let Some(ip) = header_mut::<Ipv6Hdr>(ctx, EthHdr::LEN) else {
        return PASS;
    };
    let Some(icmp) = header_mut::<[u8; 4]>(ctx, EthHdr::LEN + Ipv6Hdr::LEN) else {
        return PASS;
    };
    // SAFETY: `header_mut` checked the bounds of both headers.
    unsafe {
        swap16(&mut (*ip).src_addr, &mut (*ip).dst_addr);
        (*ip).hop_limit = REPLY_TTL;
        set_type(icmp, ICMPV6_ECHO_REPLY);
    }
    reflect(ctx)
}

/// Sets an ICMP header's type, updating its checksum (the type shares a word with the code).
///
/// # Safety
/// `icmp` must point at the 4 first bytes of an ICMP header in the frame, bounds checked.
#[inline(always)]
unsafe fn set_type(icmp: *mut [u8; 4], kind: u8) {
    unsafe {
        let [old_kind, code, c0, c1] = *icmp;
        let check = csum::replace16(
            u16::from_ne_bytes([c0, c1]),
            u16::from_ne_bytes([old_kind, code]),
            u16::from_ne_bytes([kind, code]),
        );
        *icmp = [kind, code, check.to_ne_bytes()[0], check.to_ne_bytes()[1]];
    }
}

/// Swaps two IPv6 addresses in the frame a byte at a time: whole addresses held in registers
/// would spill to the stack.
#[inline(always)]
fn swap16(a: &mut [u8; 16], b: &mut [u8; 16]) {
    let mut i = 0;
    while i < 16 {
        core::mem::swap(&mut a[i], &mut b[i]);
        i += 1;
    }
}

/// Sends the frame back where it came from: MACs swapped, XDP_TX.
#[inline(always)]
fn reflect(ctx: &XdpContext) -> (Counter, u32) {
    let Some(eth) = header_mut::<EthHdr>(ctx, 0) else {
        return PASS;
    };
    // SAFETY: `header_mut` checked the bounds.
    unsafe {
        let (src, dst) = ((*eth).src_addr, (*eth).dst_addr);
        (*eth).src_addr = dst;
        (*eth).dst_addr = src;
    }
    (Counter::IcmpEchoReply, xdp_action::XDP_TX)
}

/// The quoted packet: where its IP and transport headers are, and its protocol.
struct Quote {
    l3: usize,
    l4: usize,
    protocol: u8,
}

/// Sends a "fragmentation needed" / "packet too big" about a known flow to the flow's target.
#[inline(always)]
fn error(ctx: &XdpContext, packet: &Packet, layout: &Layout) -> (Counter, u32) {
    let Some(scratch) = ICMP_SCRATCH.get_ptr_mut(0) else {
        return PASS;
    };
    // SAFETY: this CPU's slot, used by this packet only (see `Scratch`).
    let scratch = unsafe { &mut *scratch };
    let Some(quote) = flow_key(ctx, packet, layout, &mut scratch.flow) else {
        return PASS;
    };
    let flow = &scratch.flow;
    // SAFETY: the fields are copied out; a concurrent update replaces the entry whole.
    let Some((target_id, listener_id, nat_port_be)) =
        (unsafe { FLOWS.get(flow) }).map(|f| (f.target_id, f.listener_id, f.nat_port_be))
    else {
        return PASS;
    };
    let Some(target) = TARGETS.get(target_id) else {
        return PASS;
    };
    // A flow whose target is gone is re-hashed by its next packet: its target is unknown yet.
    if target.state != TARGET_ACTIVE && target.state != TARGET_DRAINING {
        return PASS;
    }
    // The ICMP entry that brought the packet here is any listener of the address: the flow's
    // own listener says how it is forwarded.
    let listener = &mut scratch.listener;
    listener.addr = flow.dst;
    listener.port_be = flow.dst_port_be;
    listener.protocol = flow.protocol;
    listener.family = flow.family;
    // SAFETY: a hash-map value is copied out; userspace replaces whole entries.
    let found = match unsafe { LISTENERS.get(&*listener) } {
        Some(l) => Some(*l),
        None => {
            listener.port_be = 0;
            // SAFETY: as above.
            unsafe { LISTENERS.get(&*listener) }.copied()
        }
    };
    let Some(found) = found else {
        return PASS;
    };
    // The listener was replaced since the flow began: its mode may have changed too.
    if found.id != listener_id {
        return PASS;
    }
    let forwarded = match ForwardingMode::from_u8(found.mode) {
        Some(ForwardingMode::Dsr) => dsr::send(
            ctx,
            &packet.key.src,
            target,
            None,
            Counter::IcmpErrorForwarded,
        ),
        Some(ForwardingMode::Tunnel) => {
            tunnel::encapsulate(ctx, packet, flow, target, None, Counter::IcmpErrorForwarded)
        }
        Some(ForwardingMode::Nat) => {
            // Port 0: the target listens on the port the client asked for.
            let target_port_be = if target.port_be == 0 {
                flow.dst_port_be
            } else {
                target.port_be
            };
            if nat_port_be == 0 || target.family != flow.family {
                return PASS;
            }
            let translated = match packet.family {
                Family::V4 => {
                    translate_v4(ctx, layout, &quote, target, target_port_be, nat_port_be)
                }
                Family::V6 => {
                    translate_v6(ctx, layout, &quote, target, target_port_be, nat_port_be)
                }
            };
            if translated.is_none() {
                return PASS;
            }
            // As in `nat::forward`: the source is now the kernel's own address, which it would
            // not forward, so an unresolved neighbour means a drop.
            match forward::to(
                ctx,
                target.family,
                &target.snat_addr,
                &target.addr,
                Counter::IcmpErrorForwarded,
            ) {
                Ok((Counter::PassNeighborUnresolved, _)) => Err(Counter::DropNeighborUnresolved),
                other => other,
            }
        }
        None => return PASS,
    };
    match forwarded {
        Ok(done) => done,
        Err(outcome) => (outcome, xdp_action::XDP_DROP),
    }
}

/// Reads the quote of an error into `key` as the flow's client sent it: the quote is a packet
/// from the VIP (the error's destination) to the client, so source and destination swap.
/// `None` unless the quote is a whole IP header of the error's family, from the VIP, without
/// IPv4 fragment offset or IPv6 extension headers, followed by the TCP or UDP ports, all within
/// the error's IP packet.
#[inline(always)]
fn flow_key(
    ctx: &XdpContext,
    packet: &Packet,
    layout: &Layout,
    key: &mut FlowKey,
) -> Option<Quote> {
    let l3 = layout.icmp + ICMP_HEADER_LEN;
    key.family = packet.key.family;
    key._pad = [0; 2];
    let quote = match packet.family {
        Family::V4 => {
            let ip: *const Ipv4Hdr = header(ctx, l3)?;
            // SAFETY: `header` checked the bounds.
            let (vihl, frags, protocol, src, dst) = unsafe {
                (
                    (*ip).vihl,
                    u16::from_be_bytes((*ip).frags),
                    (*ip).proto,
                    (*ip).src_addr,
                    (*ip).dst_addr,
                )
            };
            let header_len = usize::from(vihl & 0x0F) * 4;
            // A non-first fragment quotes no ports.
            if vihl >> 4 != 4 || header_len < Ipv4Hdr::LEN || frags & 0x1FFF != 0 {
                return None;
            }
            if src != ipv4(&packet.key.dst) {
                return None;
            }
            key.src = [0; 16];
            key.src[..4].copy_from_slice(&dst);
            key.dst = packet.key.dst;
            Quote {
                l3,
                l4: l3 + header_len,
                protocol,
            }
        }
        Family::V6 => {
            let ip: *const Ipv6Hdr = header(ctx, l3)?;
            // SAFETY: `header` checked the bounds.
            unsafe {
                if (*ip).vcf[0] >> 4 != 6 || (*ip).src_addr != packet.key.dst {
                    return None;
                }
                key.src = (*ip).dst_addr;
                key.dst = (*ip).src_addr;
                Quote {
                    l3,
                    l4: l3 + Ipv6Hdr::LEN,
                    protocol: (*ip).next_hdr,
                }
            }
        }
    };
    if quote.protocol != IPPROTO_TCP && quote.protocol != IPPROTO_UDP {
        return None;
    }
    if quote.l4 + 4 > layout.ip_end {
        return None;
    }
    let ports: *const [[u8; 2]; 2] = header(ctx, quote.l4)?;
    // SAFETY: `header` checked the bounds; ports stay in network order.
    let [src_port, dst_port] = unsafe { *ports };
    key.src_port_be = u16::from_ne_bytes(dst_port);
    key.dst_port_be = u16::from_ne_bytes(src_port);
    key.protocol = quote.protocol;
    Some(quote)
}

/// The quoted TCP/UDP checksum, if the quote holds it: UDP's is in its first 8 bytes, TCP's
/// at 16, where a short quote may end.
#[inline(always)]
fn quoted_checksum(ctx: &XdpContext, quote: &Quote, ip_end: usize) -> Option<*mut [u8; 2]> {
    let offset = if quote.protocol == IPPROTO_TCP {
        quote.l4 + 16
    } else {
        quote.l4 + 6
    };
    if offset + 2 > ip_end {
        return None;
    }
    header_mut(ctx, offset)
}

/// Translates an ICMP error about a `nat` flow, IPv4: the outer header goes from the load
/// balancer's address to the target; the quote becomes the packet the target sent (target
/// address and port → load balancer's address and the flow's port). The ICMP checksum has no
/// pseudo-header: only the quote's changes count.
#[inline(always)]
fn translate_v4(
    ctx: &XdpContext,
    layout: &Layout,
    quote: &Quote,
    target: &Target,
    target_port_be: u16,
    nat_port_be: u16,
) -> Option<()> {
    let ip: *mut Ipv4Hdr = header_mut(ctx, EthHdr::LEN)?;
    let icmp: *mut [u8; 4] = header_mut(ctx, layout.icmp)?;
    let inner: *mut Ipv4Hdr = header_mut(ctx, quote.l3)?;
    let ports: *mut [[u8; 2]; 2] = header_mut(ctx, quote.l4)?;
    let (to_target, from_lb) = (ipv4(&target.addr), ipv4(&target.snat_addr));
    // SAFETY: `header_mut` checked the bounds of every header written.
    unsafe {
        let (src, dst) = ((*ip).src_addr, (*ip).dst_addr);
        (*ip).src_addr = from_lb;
        (*ip).dst_addr = to_target;
        let check = csum::replace32(u16::from_ne_bytes((*ip).check), src, from_lb);
        (*ip).check = csum::replace32(check, dst, to_target).to_ne_bytes();

        let (vip, client) = ((*inner).src_addr, (*inner).dst_addr);
        (*inner).src_addr = to_target;
        (*inner).dst_addr = from_lb;
        let addresses = diff32(vip, to_target) + diff32(client, from_lb);
        let old_check = u16::from_ne_bytes((*inner).check);
        let check = csum::apply(old_check, addresses);
        (*inner).check = check.to_ne_bytes();
        let ports_diff = rewrite_ports(ports, target_port_be, nat_port_be);
        let mut changes = addresses + diff16(old_check, check) + ports_diff;
        if let Some(l4_check) = quoted_checksum(ctx, quote, layout.ip_end) {
            let old = u16::from_ne_bytes(*l4_check);
            // Over IPv4 a zero UDP checksum means none was computed; it stays none.
            if old != 0 || quote.protocol == IPPROTO_TCP {
                let new = transport_checksum(quote, old, addresses + ports_diff);
                *l4_check = new.to_ne_bytes();
                changes += diff16(old, new);
            }
        }
        update_icmp_checksum(icmp, changes);
    }
    Some(())
}

/// Like [`translate_v4`] for IPv6, whose ICMPv6 checksum also covers the outer addresses
/// (pseudo-header). Address differences are summed by `bpf_csum_diff` against the target's
/// entry, whose `addr` and `snat_addr` are 32 contiguous bytes: the quote's new source and
/// destination in that order, and the outer ones in the other (a sum does not mind).
#[inline(always)]
fn translate_v6(
    ctx: &XdpContext,
    layout: &Layout,
    quote: &Quote,
    target: &Target,
    target_port_be: u16,
    nat_port_be: u16,
) -> Option<()> {
    let ip: *mut Ipv6Hdr = header_mut(ctx, EthHdr::LEN)?;
    let icmp: *mut [u8; 4] = header_mut(ctx, layout.icmp)?;
    let inner: *mut Ipv6Hdr = header_mut(ctx, quote.l3)?;
    let ports: *mut [[u8; 2]; 2] = header_mut(ctx, quote.l4)?;
    let new = target.addr.as_ptr();
    // SAFETY: `header_mut` checked the bounds of every header read and written; `new` points
    // at 32 bytes of a map value (`Target` is `repr(C)`, `snat_addr` follows `addr`).
    unsafe {
        let outer = u32::from(csum::fold(csum::diff((*ip).src_addr.as_ptr(), new, 32, 0)));
        let addresses = u32::from(csum::fold(csum::diff(
            (*inner).src_addr.as_ptr(),
            new,
            32,
            0,
        )));
        (*ip).src_addr = target.snat_addr;
        (*ip).dst_addr = target.addr;
        (*inner).src_addr = target.addr;
        (*inner).dst_addr = target.snat_addr;
        let ports_diff = rewrite_ports(ports, target_port_be, nat_port_be);
        let mut changes = outer + addresses + ports_diff;
        if let Some(l4_check) = quoted_checksum(ctx, quote, layout.ip_end) {
            let old = u16::from_ne_bytes(*l4_check);
            let new = transport_checksum(quote, old, addresses + ports_diff);
            *l4_check = new.to_ne_bytes();
            changes += diff16(old, new);
        }
        update_icmp_checksum(icmp, changes);
    }
    Some(())
}

/// Writes the quote's new ports (its source becomes the target's port, its destination the
/// flow's port on the load balancer) and returns their checksum difference.
///
/// # Safety
/// `ports` must point at the quote's first 4 transport bytes in the frame, bounds checked.
#[inline(always)]
unsafe fn rewrite_ports(ports: *mut [[u8; 2]; 2], src_be: u16, dst_be: u16) -> u32 {
    unsafe {
        let [src, dst] = *ports;
        *ports = [src_be.to_ne_bytes(), dst_be.to_ne_bytes()];
        diff16(u16::from_ne_bytes(src), src_be) + diff16(u16::from_ne_bytes(dst), dst_be)
    }
}

/// The quoted TCP/UDP checksum after its pseudo-header addresses and ports changed by `diff`.
#[inline(always)]
fn transport_checksum(quote: &Quote, old: u16, diff: u32) -> u16 {
    match csum::apply(old, diff) {
        // A computed UDP 0 is sent as 0xffff (RFC 768): 0 means "none".
        0 if quote.protocol == IPPROTO_UDP => 0xffff,
        new => new,
    }
}

/// Applies `changes` (see [`diff16`]) to the checksum of the ICMP header at `icmp`.
///
/// # Safety
/// `icmp` must point at the first 4 bytes of the ICMP header in the frame, bounds checked.
#[inline(always)]
unsafe fn update_icmp_checksum(icmp: *mut [u8; 4], changes: u32) {
    unsafe {
        let [kind, code, c0, c1] = *icmp;
        let [c0, c1] = csum::apply(u16::from_ne_bytes([c0, c1]), changes).to_ne_bytes();
        *icmp = [kind, code, c0, c1];
    }
}

/// The RFC 1624 difference of one 16-bit word changing from `old` to `new` (~m + m'), for
/// [`csum::apply`]; differences add up (a dozen stay far below `u32::MAX`).
#[inline(always)]
fn diff16(old: u16, new: u16) -> u32 {
    u32::from(!old) + u32::from(new)
}

/// [`diff16`] for an IPv4 address.
#[inline(always)]
fn diff32(old: [u8; 4], new: [u8; 4]) -> u32 {
    diff16(
        u16::from_ne_bytes([old[0], old[1]]),
        u16::from_ne_bytes([new[0], new[1]]),
    ) + diff16(
        u16::from_ne_bytes([old[2], old[3]]),
        u16::from_ne_bytes([new[2], new[3]]),
    )
}

/// The IPv4 address in the first 4 of 16 map bytes.
#[inline(always)]
fn ipv4(addr: &[u8; 16]) -> [u8; 4] {
    [addr[0], addr[1], addr[2], addr[3]]
}

#[inline(always)]
fn header_mut<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    header::<T>(ctx, offset).map(|p| p as *mut T)
}
