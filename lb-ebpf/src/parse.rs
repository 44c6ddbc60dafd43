//! Bounds-checked header parsing: Ethernet, one VLAN tag, IPv4 (with options), IPv6 (fixed
//! header), TCP, UDP, ICMP and ICMPv6.
//!
//! Every read goes through [`header`], which checks `offset + size <= data_end` so the
//! verifier can prove each access. Offsets stay small and bounded: the L3 offset is 14 or 18,
//! the IPv4 header length is at most 60, so every offset fits the verifier's packet range.

use aya_ebpf::programs::XdpContext;
use lb_common::stats::Counter;
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

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

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

/// Where a parsed packet's headers are. Offsets are from the start of the frame.
#[derive(Clone, Copy)]
#[allow(dead_code, reason = "read by the classify/select/rewrite stages")]
pub struct Packet {
    pub family: Family,
    pub l3_offset: usize,
    pub l4_offset: usize,
    /// IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP or IPPROTO_ICMPV6.
    pub protocol: u8,
}

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

/// Parses the frame down to its L4 header. `Err` carries the outcome counter for frames
/// that end here (not IP, malformed, or a kind sluice leaves to the kernel).
#[inline(always)]
pub fn parse(ctx: &XdpContext, len: u64) -> Result<Packet, Counter> {
    let eth: *const EthHdr = header(ctx, 0).ok_or(Counter::MalformedEthernet)?;
    // SAFETY: `header` checked the bounds.
    let mut ether_type = u16::from_be(unsafe { (*eth).ether_type });
    let mut l3_offset = EthHdr::LEN;

    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        stats::count(ctx, Counter::VlanTagged, len);
        let vlan: *const VlanHdr = header(ctx, EthHdr::LEN).ok_or(Counter::MalformedVlan)?;
        // SAFETY: `header` checked the bounds.
        ether_type = u16::from_be(unsafe { (*vlan).ether_type });
        l3_offset += VlanHdr::LEN;
        if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
            return Err(Counter::PassStackedVlan);
        }
    }

    match ether_type {
        ETH_P_IPV4 => parse_ipv4(ctx, l3_offset, len),
        ETH_P_IPV6 => parse_ipv6(ctx, l3_offset),
        _ => Err(Counter::PassNotIp),
    }
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
            parse_l4(ctx, Family::V4, l3_offset, l4_offset, ip_end, protocol)
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
            parse_l4(ctx, Family::V6, l3_offset, l4_offset, ip_end, next_header)
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
    protocol: u8,
) -> Result<Packet, Counter> {
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
        }
        IPPROTO_UDP => {
            header::<UdpHdr>(ctx, l4_offset).ok_or(Counter::MalformedUdp)?;
            if l4_offset + UdpHdr::LEN > ip_end {
                return Err(Counter::MalformedUdp);
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
        l4_offset,
        protocol,
    })
}
