//! Bounds-checked header parsing: Ethernet, one VLAN tag, IPv4 (with options), IPv6 (fixed
//! header), TCP, UDP, ICMP and ICMPv6.
//!
//! Every read goes through [`header`], which checks `offset + size <= data_end` so the
//! verifier can prove each access. Offsets stay small and bounded: the L3 offset is 14 or 18,
//! the IPv4 header length is at most 60, so every offset fits the verifier's packet range.

use aya_ebpf::programs::XdpContext;
use lb_common::{
    addr::{words, FAMILY_V4, FAMILY_V6},
    flow::FlowKey,
    stats::Counter,
};
use network_types::{
    eth::EthHdr,
    icmp::Icmpv4Hdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
    vlan::VlanHdr,
};

use crate::stats;

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;

pub use lb_common::proto::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP};

/// IPv6 next-header values that are extension headers (RFC 8200 section 4, RFC 7045).
const IPV6_EXTENSION_HEADERS: [u8; 8] = [0, 43, 44, 51, 60, 135, 139, 140];

/// IPv4 flags/fragment-offset field: "more fragments" and the 13-bit offset.
const IPV4_MF: u16 = 0x2000;
const IPV4_OFFSET_MASK: u16 = 0x1FFF;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// A parsed packet: where its headers are (offsets from the start of the frame) and its
/// 5-tuple as a flow key.
#[derive(Clone, Copy)]
pub struct Packet {
    pub family: Family,
    pub l3_offset: usize,
    /// IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP or IPPROTO_ICMPV6.
    pub protocol: u8,
    /// The frame carried a VLAN tag.
    pub vlan: bool,
    /// TCP flags byte (byte 13 of the header); 0 for other protocols.
    pub tcp_flags: u8,
    /// Addresses and ports as they arrived; ports are 0 for ICMP. In this CPU's `PACKET_KEY`
    /// slot, written by [`parse`] only.
    pub key: &'static FlowKey,
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Returns a pointer to a `T` at `offset` in the frame, or `None` if it does not fit.
#[inline(always)]
pub fn header<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

/// This CPU's `PACKET_KEY` slot. The key lives in map memory rather than on the stack: a
/// stack copy of its 16-byte address arrays is taken apart into 32 byte-sized values that
/// spill and are put together again for every lookup (and the verifier gives up on the
/// program). Index 0 of a one-entry array is always there: the `None` arm is the verifier's.
#[inline(always)]
fn key_slot() -> Result<&'static mut FlowKey, Counter> {
    let slot = crate::PACKET_KEY
        .get_ptr_mut(0)
        .ok_or(Counter::DropRewriteFailed)?;
    // SAFETY: this CPU's slot; XDP runs to completion with preemption off, so this packet is
    // its only user until the program returns.
    Ok(unsafe { &mut *slot })
}

/// Writes all of `key`, addresses given as words in memory order and ports 0, with ten 4-byte
/// stores. Volatile: LLVM would merge the zero words of an IPv4 key into calls to a byte-loop
/// `memset`.
#[inline(always)]
fn fill_key(key: &mut FlowKey, src: [u32; 4], dst: [u32; 4], protocol: u8, family: u8) {
    const WORDS: usize = core::mem::size_of::<FlowKey>() / 4;
    const _: () = assert!(WORDS == 10 && core::mem::align_of::<FlowKey>() >= 4);
    let values: [u32; WORDS] = [
        src[0],
        src[1],
        src[2],
        src[3],
        dst[0],
        dst[1],
        dst[2],
        dst[3],
        // Both ports, set by `parse_l4`.
        0,
        u32::from_ne_bytes([protocol, family, 0, 0]),
    ];
    let words = key as *mut FlowKey as *mut u32;
    for (i, value) in values.into_iter().enumerate() {
        // SAFETY: `key` is WORDS * 4 bytes, aligned to 4 (checked above), all integers.
        unsafe { core::ptr::write_volatile(words.add(i), value) };
    }
}

/// Parses the frame down to its L4 header. `Err` carries the outcome counter for frames
/// that end here (not IP, malformed, or a kind sluice leaves to the kernel).
#[inline(always)]
pub fn parse(ctx: &XdpContext, len: u64) -> Result<Packet, Counter> {
    let eth: *const EthHdr = header(ctx, 0).ok_or(Counter::MalformedEthernet)?;
    // SAFETY: `header` checked the bounds.
    let mut ether_type = u16::from_be(unsafe { (*eth).ether_type });
    let mut l3_offset = EthHdr::LEN;
    let mut tagged = false;

    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        stats::count(ctx, Counter::VlanTagged, len);
        let vlan: *const VlanHdr = header(ctx, EthHdr::LEN).ok_or(Counter::MalformedVlan)?;
        // SAFETY: `header` checked the bounds.
        ether_type = u16::from_be(unsafe { (*vlan).ether_type });
        l3_offset += VlanHdr::LEN;
        tagged = true;
        if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
            return Err(Counter::PassStackedVlan);
        }
    }

    let mut packet = match ether_type {
        ETH_P_IPV4 => parse_ipv4(ctx, l3_offset, len),
        ETH_P_IPV6 => parse_ipv6(ctx, l3_offset),
        _ => Err(Counter::PassNotIp),
    }?;
    packet.vlan = tagged;
    Ok(packet)
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, l3_offset: usize, len: u64) -> Result<Packet, Counter> {
    let ip: *const Ipv4Hdr = header(ctx, l3_offset).ok_or(Counter::MalformedIpv4)?;
    // SAFETY: `header` checked the bounds of the fixed 20-byte header.
    let (vihl, tot_len, frags, protocol) = unsafe {
        (
            (*ip).vihl,
            u16::from_be_bytes((*ip).tot_len),
            u16::from_be_bytes((*ip).frags),
            (*ip).proto,
        )
    };
    if vihl >> 4 != 4 {
        return Err(Counter::MalformedIpv4);
    }
    // Masked to 4 bits, so the verifier knows header_len <= 60.
    let header_len = ((vihl & 0x0F) as usize) * 4;
    if header_len < Ipv4Hdr::LEN || (tot_len as usize) < header_len {
        return Err(Counter::MalformedIpv4);
    }
    let available = ctx.data_end() - ctx.data() - l3_offset;
    if tot_len as usize > available {
        return Err(Counter::MalformedIpv4);
    }
    if header_len > Ipv4Hdr::LEN {
        stats::count(ctx, Counter::Ipv4Options, len);
    }
    if frags & (IPV4_MF | IPV4_OFFSET_MASK) != 0 {
        return Err(Counter::PassIpv4Fragment);
    }
    let l4_offset = l3_offset + header_len;
    let ip_end = l3_offset + tot_len as usize;
    match protocol {
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_ICMP => {
            let key = key_slot()?;
            // SAFETY: as above. Read here, not with the fields above: read early, the eight
            // address bytes stay live (spilled) through the checks.
            let (src, dst) = unsafe { ((*ip).src_addr, (*ip).dst_addr) };
            fill_key(
                key,
                [u32::from_ne_bytes(src), 0, 0, 0],
                [u32::from_ne_bytes(dst), 0, 0, 0],
                protocol,
                FAMILY_V4,
            );
            parse_l4(ctx, Family::V4, l3_offset, l4_offset, ip_end, key)
        }
        _ => Err(Counter::PassOtherProtocol),
    }
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, l3_offset: usize) -> Result<Packet, Counter> {
    let ip: *const Ipv6Hdr = header(ctx, l3_offset).ok_or(Counter::MalformedIpv6)?;
    // SAFETY: `header` checked the bounds of the fixed 40-byte header.
    let (version, payload_len, next_header) = unsafe {
        (
            (*ip).vcf[0] >> 4,
            u16::from_be_bytes((*ip).payload_len),
            (*ip).next_hdr,
        )
    };
    if version != 6 {
        return Err(Counter::MalformedIpv6);
    }
    let available = ctx.data_end() - ctx.data() - l3_offset - Ipv6Hdr::LEN;
    if payload_len as usize > available {
        return Err(Counter::MalformedIpv6);
    }
    let l4_offset = l3_offset + Ipv6Hdr::LEN;
    let ip_end = l4_offset + payload_len as usize;
    match next_header {
        IPPROTO_TCP | IPPROTO_UDP | IPPROTO_ICMPV6 => {
            let key = key_slot()?;
            // SAFETY: as above; read late for the reason given in `parse_ipv4`.
            let (src, dst) = unsafe { ((*ip).src_addr, (*ip).dst_addr) };
            fill_key(key, words(&src), words(&dst), next_header, FAMILY_V6);
            parse_l4(ctx, Family::V6, l3_offset, l4_offset, ip_end, key)
        }
        _ if IPV6_EXTENSION_HEADERS.contains(&next_header) => Err(Counter::PassIpv6ExtensionHeader),
        _ => Err(Counter::PassOtherProtocol),
    }
}

#[inline(always)]
fn parse_l4(
    ctx: &XdpContext,
    family: Family,
    l3_offset: usize,
    l4_offset: usize,
    ip_end: usize,
    key: &'static mut FlowKey,
) -> Result<Packet, Counter> {
    let protocol = key.protocol;
    let mut tcp_flags = 0;
    // Headers must fit in the IP packet, not just in the frame: bytes after the IP length
    // (Ethernet padding, garbage) are not part of the packet.
    match protocol {
        IPPROTO_TCP => {
            let tcp: *const TcpHdr = header(ctx, l4_offset).ok_or(Counter::MalformedTcp)?;
            // SAFETY: `header` checked the 20-byte bounds; the data offset is the top 4 bits of
            // byte 12 of the TCP header.
            let data_offset = ((unsafe { *(tcp as *const u8).add(12) } >> 4) as usize) * 4;
            if data_offset < TcpHdr::LEN || l4_offset + data_offset > ip_end {
                return Err(Counter::MalformedTcp);
            }
            // SAFETY: within the 20 bytes checked above; ports stay in network order.
            unsafe {
                key.src_port_be = u16::from_ne_bytes((*tcp).source);
                key.dst_port_be = u16::from_ne_bytes((*tcp).dest);
                tcp_flags = *(tcp as *const u8).add(13);
            }
        }
        IPPROTO_UDP => {
            let udp: *const UdpHdr = header(ctx, l4_offset).ok_or(Counter::MalformedUdp)?;
            if l4_offset + UdpHdr::LEN > ip_end {
                return Err(Counter::MalformedUdp);
            }
            // SAFETY: `header` checked the bounds; ports stay in network order.
            unsafe {
                key.src_port_be = u16::from_ne_bytes((*udp).src);
                key.dst_port_be = u16::from_ne_bytes((*udp).dst);
            }
        }
        // ICMPv6 shares ICMP's 8-byte type/code/checksum/rest-of-header layout.
        _ => {
            header::<Icmpv4Hdr>(ctx, l4_offset).ok_or(Counter::MalformedIcmp)?;
            if l4_offset + Icmpv4Hdr::LEN > ip_end {
                return Err(Counter::MalformedIcmp);
            }
        }
    }
    Ok(Packet {
        family,
        l3_offset,
        protocol,
        vlan: false,
        tcp_flags,
        key,
    })
}
