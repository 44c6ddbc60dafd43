//! `tunnel` mode, like Katran: the packet travels to the target untouched inside an outer IP
//! header (IPIP, IP6IP6, and across families 4in6 / 6in4), whose destination is the target and
//! whose source is the configured tunnel prefix with a per-flow spread (`hash::outer_source`)
//! in its low bits, so that the receiving NIC's RSS spreads flows over queues. Targets strip
//! the outer header with `sluice_decap` (`decap.rs`) and hold the VIP on loopback.
//!
//! The outer family is the target's; the protocol in it is the inner packet's (4 for IPv4, 41
//! for IPv6), so mixed families need nothing special here.

use aya_ebpf::{helpers::bpf_xdp_adjust_head, programs::XdpContext};
use lb_common::{addr::FAMILY_V4, config::Config, flow::FlowKey, stats::Counter, target::Target};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use crate::{
    csum, even, forward, hash,
    parse::{header, Family, Packet},
    select::Selected,
    CONFIG,
};

const ETH_P_IPV4: [u8; 2] = 0x0800u16.to_be_bytes();
const ETH_P_IPV6: [u8; 2] = 0x86DDu16.to_be_bytes();
const IPPROTO_IPIP: u8 = 4;
const IPPROTO_IPV6: u8 = 41;
/// IPv4 "don't fragment", in the flags/fragment-offset word.
const IPV4_DF: u16 = 0x4000;
const OUTER_TTL: u8 = 64;

/// What the outer header copies from the inner one.
struct Inner {
    /// The inner IP packet's length, header included (Ethernet padding excluded).
    len: u16,
    /// IPv4 TOS / IPv6 traffic class: DSCP and ECN are copied (RFC 2003 3.1, RFC 6040's
    /// normal mode), so the path treats the tunnel like the packet inside.
    tos: u8,
    /// Whether the outer IPv4 header gets DF; see [`inner`].
    dont_fragment: bool,
    /// The inner IPv4 identification (network order); 0 for IPv6.
    id: [u8; 2],
}

#[inline(always)]
pub fn forward(
    ctx: &XdpContext,
    packet: &Packet,
    selected: &Selected,
) -> Result<(Counter, u32), Counter> {
    encapsulate(
        ctx,
        packet,
        packet.key,
        selected.target,
        Some((selected.target_id, selected.now)),
        Counter::ForwardTunnel,
    )
}

/// Encapsulates the frame's IP packet towards `target` with the outer source of `flow`, the
/// client's 5-tuple (also used by `icmp.rs`: an ICMP error about a flow travels with the
/// flow's outer header, so it reaches the same receive queue as the flow's packets).
/// `cached`: the target's id and the packet's time, to use the next-hop cache.
#[inline(always)]
pub fn encapsulate(
    ctx: &XdpContext,
    packet: &Packet,
    flow: &FlowKey,
    target: &Target,
    cached: Option<(u32, u64)>,
    forwarded: Counter,
) -> Result<(Counter, u32), Counter> {
    // main.rs passes VLAN-tagged frames to the kernel before any rewrite, so the IP header
    // follows a plain Ethernet header and the new Ethernet header is the same size.
    if packet.l3_offset != EthHdr::LEN {
        return Err(Counter::DropRewriteFailed);
    }
    let inner = inner(ctx, packet)?;
    let config = CONFIG.get(0).ok_or(Counter::DropRewriteFailed)?;
    let hash = hash::outer_source(flow).to_be_bytes();
    let outer_v4 = target.family == FAMILY_V4;
    let protocol = match packet.family {
        Family::V4 => IPPROTO_IPIP,
        Family::V6 => IPPROTO_IPV6,
    };
    let outer_len = if outer_v4 { Ipv4Hdr::LEN } else { Ipv6Hdr::LEN };
    // The outer IPv4 total length must fit 16 bits; IPv6's payload length is the inner length.
    if outer_v4 && usize::from(inner.len) + Ipv4Hdr::LEN > usize::from(u16::MAX) {
        return Err(Counter::DropRewriteFailed);
    }

    // SAFETY: plain helper call on this program's context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(outer_len as i32)) } != 0 {
        return Err(Counter::DropRewriteFailed);
    }
    // Every packet pointer from before the helper call is invalid now: re-derive and check.
    // The frame is: new Ethernet header | outer header | old Ethernet header | inner packet.
    let start = ctx.data();
    if start + EthHdr::LEN + outer_len + EthHdr::LEN > ctx.data_end() {
        return Err(Counter::DropRewriteFailed);
    }
    let eth = start as *mut u8;
    let ether_type = if outer_v4 { ETH_P_IPV4 } else { ETH_P_IPV6 };
    // SAFETY: bounds checked above; the old Ethernet header starts at `outer_len` (even) and
    // the new one ends at 14 <= outer_len, so the copied ranges do not overlap. The MACs are
    // kept so that a frame passed to the kernel (unresolved neighbour) still looks addressed
    // to it; `forward::to` replaces them otherwise.
    unsafe {
        even::copy::<6>(eth, eth.add(outer_len));
        even::store(eth.add(12), [u16::from_ne_bytes(ether_type)]);
    }
    // Written in place rather than built on the stack: everything inlines into one function
    // with a 512-byte stack.
    let ip = start + EthHdr::LEN;
    if outer_v4 {
        // With DF the packet is atomic and its identification is meaningless (RFC 6864): 0.
        // Without DF a router may fragment the outer packet, and reassembly needs an id unique
        // per (source, destination) for a while: the inner packet's id is one its sender chose
        // for exactly that, and a flow keeps its outer source.
        let (id, frags) = if inner.dont_fragment {
            ([0, 0], IPV4_DF)
        } else {
            (inner.id, 0)
        };
        let tot_len = (inner.len + Ipv4Hdr::LEN as u16).to_be_bytes();
        let frags = frags.to_be_bytes();
        // SAFETY: the prefix is at an even offset of the `CONFIG` value, the target's address
        // at offset 0 of a `TARGETS` value.
        let (src, dst) = unsafe {
            (
                [
                    even::half(&config.tunnel_source_v4, 0),
                    u16::from_ne_bytes([hash[2], hash[3]]),
                ],
                [even::half(&target.addr, 0), even::half(&target.addr, 1)],
            )
        };
        let words = [
            u16::from_ne_bytes([0x45, inner.tos]),
            u16::from_ne_bytes(tot_len),
            u16::from_ne_bytes(id),
            u16::from_ne_bytes(frags),
            u16::from_ne_bytes([OUTER_TTL, protocol]),
            src[0],
            src[1],
            dst[0],
            dst[1],
        ];
        // Summed from the values written rather than read back from the packet (its
        // alignment is only known to be even: 10 halfword loads).
        let check = csum::ipv4_header_words(&words);
        // SAFETY: 14 + 20 bytes are within the bounds checked above; the header starts 14
        // bytes after the (even) frame start.
        unsafe {
            even::store(
                ip as *mut u8,
                [
                    words[0], words[1], words[2], words[3], words[4], check, words[5], words[6],
                    words[7], words[8],
                ],
            );
        }
    } else {
        let h = ip as *mut Ipv6Hdr;
        // SAFETY: 14 + 40 bytes are within the bounds checked above.
        unsafe {
            // Version 6, the traffic class, and the flow label from the flow hash (its low
            // 20 bits), which receivers and ECMP routers hash on.
            (*h).vcf = [
                0x60 | (inner.tos >> 4),
                (inner.tos << 4) | (hash[1] & 0x0f),
                hash[2],
                hash[3],
            ];
            (*h).payload_len = inner.len.to_be_bytes();
            (*h).next_hdr = protocol;
            (*h).hop_limit = OUTER_TTL;
            (*h).src_addr = outer_source(config, hash, false);
            (*h).dst_addr = target.addr;
        }
    }
    // Built here, after the header, so that on the next-hop cache's hits (where only a FIB
    // lookup would read it) it is not built at all.
    let outer_src = outer_source(config, hash, outer_v4);
    match cached {
        Some((target_id, now)) => {
            forward::to_target(ctx, &outer_src, target_id, target, now, forwarded)
        }
        None => forward::to(ctx, target.family, &outer_src, &target.addr, forwarded),
    }
}

/// The outer source address: the configured prefix, the flow's spread in the low bits.
#[inline(always)]
fn outer_source(config: &Config, hash: [u8; 4], outer_v4: bool) -> [u8; 16] {
    let mut outer_src = [0u8; 16];
    if outer_v4 {
        outer_src[..2].copy_from_slice(&config.tunnel_source_v4[..2]);
        outer_src[2..4].copy_from_slice(&hash[2..]);
    } else {
        outer_src[..12].copy_from_slice(&config.tunnel_source_v6[..12]);
        outer_src[12..].copy_from_slice(&hash);
    }
    outer_src
}

/// Reads what the outer header needs from the inner IP header (at `l3_offset`, already
/// validated by `parse`).
///
/// DF: an IPv4 packet's DF is copied (RFC 2003 3.1), so a sender that allows fragmentation
/// keeps allowing it and one doing path MTU discovery keeps getting "fragmentation needed".
/// An IPv6 packet is never fragmented on its way, so its 6in4 outer header always has DF.
#[inline(always)]
fn inner(ctx: &XdpContext, packet: &Packet) -> Result<Inner, Counter> {
    match packet.family {
        Family::V4 => {
            let ip: *const Ipv4Hdr =
                header(ctx, packet.l3_offset).ok_or(Counter::DropRewriteFailed)?;
            // SAFETY: `header` checked the bounds; the header is at an even offset from the
            // even frame start, its length at 2, id at 4 and fragment word at 6.
            let (tos, len, id, frags) = unsafe {
                let h = ip as *const u8;
                (
                    (*ip).tos,
                    u16::from_be(even::load(h.add(2))),
                    even::load(h.add(4)).to_ne_bytes(),
                    u16::from_be(even::load(h.add(6))),
                )
            };
            Ok(Inner {
                len,
                tos,
                dont_fragment: frags & IPV4_DF != 0,
                id,
            })
        }
        Family::V6 => {
            let ip: *const Ipv6Hdr =
                header(ctx, packet.l3_offset).ok_or(Counter::DropRewriteFailed)?;
            // SAFETY: `header` checked the bounds.
            let (vcf, payload_len) = unsafe { ((*ip).vcf, u16::from_be_bytes((*ip).payload_len)) };
            let len = payload_len
                .checked_add(Ipv6Hdr::LEN as u16)
                .ok_or(Counter::DropRewriteFailed)?;
            Ok(Inner {
                len,
                tos: (vcf[0] << 4) | (vcf[1] >> 4),
                dont_fragment: true,
                id: [0, 0],
            })
        }
    }
}
