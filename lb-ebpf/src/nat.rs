//! `nat` mode: the destination is rewritten to the target's address and port, the source to
//! the load balancer's address facing the target (`Target::snat_addr`) and an allocated port;
//! replies from targets are translated back. Targets need no configuration: to them the load
//! balancer is the client, so their replies come back through it.
//!
//! A translation is a `NAT_REPLIES` entry keyed by the reply's 5-tuple (target address and
//! port → snat address and allocated port), holding the client and VIP to restore. The flow
//! entry remembers the allocated port, so established flows find their translation with one
//! lookup (which also keeps it fresh in the LRU).
//!
//! Port allocation is deterministic: probe `i` of a flow is port
//! `min + (h + i × STRIDE) mod range`, with `h` a hash of the client's 5-tuple. Retransmitted
//! first packets, flows the flood gate kept out of `FLOWS` and flows whose entry was evicted
//! therefore find their own translation again at the same port instead of taking a new one.

use aya_ebpf::{
    bindings::{xdp_action, BPF_NOEXIST},
    programs::XdpContext,
};
use lb_common::{
    flow::{FlowKey, NatOrigin},
    stats::Counter,
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};

use crate::{
    csum, forward, hash,
    parse::{self, Family, Packet, IPPROTO_TCP, IPPROTO_UDP},
    select::Selected,
    stats, CONFIG, NAT_REPLIES, TARGETS,
};

/// Ports tried for a new translation before giving up (`drop_nat_ports_exhausted`).
const PROBES: u32 = 8;

/// Distance between probes: a prime larger than any port range, hence coprime to the range's
/// size, so the probes of one flow are distinct ports (as many as the range has).
const STRIDE: u32 = 65_537;

/// Translates a reply from a target back to the client, if the packet is one. Runs for every
/// packet the load balancer receives: anything that is not a translated reply costs one hash
/// lookup.
#[inline(always)]
pub fn reply(ctx: &XdpContext, packet: &Packet) -> Option<(Counter, u32)> {
    if packet.protocol != IPPROTO_TCP && packet.protocol != IPPROTO_UDP {
        return None;
    }
    // SAFETY: read in place; an LRU element deleted meanwhile is freed only after this run
    // (RCU), and a concurrent re-allocation of the same reply key writes the same key's value.
    let origin = unsafe { NAT_REPLIES.get(&packet.key) }?;
    if packet.vlan {
        // Like requests for a listener: sluice translates untagged frames only.
        return Some((Counter::PassVlanListener, xdp_action::XDP_PASS));
    }
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
    let origin = &mut scratch.origin;
    origin.client = packet.key.src;
    origin.vip = packet.key.dst;
    origin.client_port_be = packet.key.src_port_be;
    origin.vip_port_be = packet.key.dst_port_be;
    origin.listener_id = selected.flow.listener_id;

    let mut port_be = 0;
    let stored = selected.flow.nat_port_be;
    if !selected.is_new {
        if stored != 0 && keep(packet, stored, key, origin) {
            port_be = stored;
        } else {
            // The port changes (or the flow had none: its listener was in another mode): the
            // flow entry must be rewritten.
            selected.store = true;
        }
    }
    if port_be == 0 {
        port_be = allocate(ctx, packet, key, origin);
        if port_be == 0 {
            return Err(Counter::DropNatPortsExhausted);
        }
    }
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

/// Whether an established flow keeps its port `port_be`: its translation is still there
/// (looking it up keeps it fresh in the LRU), or was evicted and can be put back. `key` is
/// the reply key but for the port.
#[inline(always)]
fn keep(packet: &Packet, port_be: u16, key: &mut FlowKey, origin: &NatOrigin) -> bool {
    key.dst_port_be = port_be;
    // SAFETY: read in place, as in `reply`.
    match unsafe { NAT_REPLIES.get(&*key) } {
        Some(found) => is_origin(found, &packet.key),
        // Evicted: put it back, the target knows the flow by this port.
        None => NAT_REPLIES
            .insert(&*key, origin, u64::from(BPF_NOEXIST))
            .is_ok(),
    }
}

/// A port for a new translation of `origin`, network order, inserted into `NAT_REPLIES`; 0
/// if every probe found its port taken by another flow. A probe that finds this flow's own
/// translation (a retransmitted first packet, a flow without a flow entry) takes it.
///
/// Every probe leaves the loop at the same point: with a `return` per probe, the verifier
/// followed the rest of the program once per probe and gave up (over a million instructions).
#[inline(always)]
fn allocate(ctx: &XdpContext, packet: &Packet, key: &mut FlowKey, origin: &NatOrigin) -> u16 {
    let (min, max) = match CONFIG.get(0) {
        Some(config) => (
            u32::from(config.nat_port_min),
            u32::from(config.nat_port_max),
        ),
        None => return 0,
    };
    let min = if min == 0 { 1 } else { min };
    if max < min {
        return 0;
    }
    let range = max - min + 1;
    // Remixed, so that ports are not correlated with the Maglev slot taken from the same hash.
    let mut h = hash::five_tuple(&packet.key);
    h = (h ^ (h >> 15)).wrapping_mul(0x2c1b_3c6d);
    h ^= h >> 12;
    let mut offset = h % range;
    let step = STRIDE % range;
    let mut port_be = 0;
    let mut i = 0;
    while i < PROBES && i < range {
        let candidate = ((min + offset) as u16).to_be();
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
            if is_origin(found, &packet.key) {
                port_be = candidate;
                break;
            }
        }
        stats::observe(ctx, Counter::NatPortCollision);
        offset += step;
        if offset >= range {
            offset -= range;
        }
        i += 1;
    }
    port_be
}

/// Deletes a re-hashed flow's translation on its old target, if it is still this flow's (the
/// entry may have been evicted and its port given to another flow since).
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
        if is_origin(found, &packet.key) {
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
    let key = &packet.key;
    // IPv6: the addresses' difference, for the TCP/UDP pseudo-header.
    let (l4_offset, v6_addresses) = match packet.family {
        Family::V4 => {
            let ip: *mut Ipv4Hdr = header_mut(ctx, l3_offset)?;
            // SAFETY: `header_mut` checked the bounds.
            unsafe {
                (*ip).src_addr = ipv4(src);
                (*ip).dst_addr = ipv4(dst);
                let check = u16::from_ne_bytes((*ip).check);
                (*ip).check = ipv4_addresses(check, key, src, dst).to_ne_bytes();
                // Masked to 4 bits: at most 60, as parse checked.
                (l3_offset + ((*ip).vihl & 0x0F) as usize * 4, 0)
            }
        }
        Family::V6 => {
            let ip: *mut Ipv6Hdr = header_mut(ctx, l3_offset)?;
            // SAFETY: `header_mut` checked the bounds; the key (initialised, on the stack) and
            // the header both hold source then destination address, 32 contiguous bytes.
            unsafe {
                (*ip).src_addr = *src;
                (*ip).dst_addr = *dst;
                let old = key as *const FlowKey as *const u8;
                let sum = csum::diff(old, (*ip).src_addr.as_ptr(), 32, 0);
                (l3_offset + Ipv6Hdr::LEN, sum)
            }
        }
    };
    // The pseudo-header's addresses, then the ports.
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
        // SAFETY: `header_mut` checked the bounds.
        unsafe {
            (*tcp).source = src_port_be.to_ne_bytes();
            (*tcp).dest = dst_port_be.to_ne_bytes();
            (*tcp).check = update(u16::from_ne_bytes((*tcp).check)).to_ne_bytes();
        }
    } else {
        let udp: *mut UdpHdr = header_mut(ctx, l4_offset)?;
        // SAFETY: `header_mut` checked the bounds.
        unsafe {
            (*udp).src = src_port_be.to_ne_bytes();
            (*udp).dst = dst_port_be.to_ne_bytes();
            let check = u16::from_ne_bytes((*udp).check);
            // Over IPv4 a zero checksum means the sender computed none; it stays none.
            if check != 0 || packet.family == Family::V6 {
                let updated = match update(check) {
                    // A computed 0 is sent as 0xffff (RFC 768): 0 means "none".
                    0 => 0xffff,
                    updated => updated,
                };
                (*udp).check = updated.to_ne_bytes();
            }
        }
    }
    Ok(())
}

/// `check` after an IPv4 packet's addresses changed from `key`'s to `src` and `dst`.
#[inline(always)]
fn ipv4_addresses(check: u16, key: &FlowKey, src: &[u8; 16], dst: &[u8; 16]) -> u16 {
    let check = csum::replace32(check, ipv4(&key.src), ipv4(src));
    csum::replace32(check, ipv4(&key.dst), ipv4(dst))
}

/// The IPv4 address in the first 4 of 16 map bytes.
#[inline(always)]
fn ipv4(addr: &[u8; 16]) -> [u8; 4] {
    [addr[0], addr[1], addr[2], addr[3]]
}

#[inline(always)]
fn header_mut<T>(ctx: &XdpContext, offset: usize) -> Result<*mut T, Counter> {
    parse::header::<T>(ctx, offset)
        .map(|p| p as *mut T)
        .ok_or(Counter::DropRewriteFailed)
}
