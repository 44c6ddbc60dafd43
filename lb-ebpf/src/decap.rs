//! `sluice_decap`: a second XDP program in the same object, for targets of `tunnel` listeners
//! (`sluice decap --iface IF`), whose kernel may have no ipip/ip6_tunnel driver.
//!
//! An IPIP, IP6IP6, 4in6 or 6in4 packet (protocol 4 or 41 right after the outer header) loses
//! its outer header; the Ethernet header is rewritten in front of the inner packet with the
//! inner family's EtherType and the same MACs, and the frame goes to the local stack
//! (XDP_PASS), which delivers it if the host holds the inner destination (the VIP on `lo`) and
//! otherwise treats it like any other packet it received. Everything else passes untouched.
//! Every frame moves exactly one `DecapCounter`.
//!
//! The outer destination is not compared with the host's addresses: that would need a map of
//! them, and the kernel applies its own rules (local delivery, forwarding, rp_filter) to the
//! inner packet anyway.

use aya_ebpf::{
    bindings::xdp_action, helpers::bpf_xdp_adjust_head, macros::map, macros::xdp,
    maps::PerCpuArray, programs::XdpContext,
};
use lb_common::{
    decap::{DecapCounter, DECAP_COUNTER_COUNT},
    stats::CounterValue,
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use crate::{csum, parse::header};

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const IPPROTO_IPIP: u8 = 4;
const IPPROTO_IPV6: u8 = 41;
/// IPv4 flags/fragment-offset word: "more fragments" and the 13-bit offset.
const IPV4_MF: u16 = 0x2000;
const IPV4_OFFSET_MASK: u16 = 0x1FFF;
/// The longest IPv4 header, in 16-bit words (IHL 15).
const IPV4_MAX_HEADER_WORDS: usize = 30;

/// Counters of `sluice_decap`, one slot per `lb_common::decap::DecapCounter`.
#[map]
static DECAP_STATS: PerCpuArray<CounterValue> =
    PerCpuArray::with_max_entries(DECAP_COUNTER_COUNT, 0);

#[xdp]
pub fn sluice_decap(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let outcome = match decapsulate(&ctx) {
        Ok(()) => DecapCounter::Decapsulated,
        Err(outcome) => outcome,
    };
    if let Some(value) = DECAP_STATS.get_ptr_mut(outcome as u32) {
        // SAFETY: a per-CPU slot is only written by this CPU, and preemption is off in XDP.
        unsafe {
            (*value).packets += 1;
            (*value).bytes += len;
        }
    }
    // Decapsulated or not, the frame goes to the kernel; only its headers differ.
    xdp_action::XDP_PASS
}

/// The outer header that [`decapsulate`] strips.
struct Outer {
    /// Its length (the IPv4 header with options, or the fixed IPv6 header).
    len: usize,
    /// 4 (IPv4 inside) or 41 (IPv6 inside).
    protocol: u8,
    /// How many bytes it says follow it: the room the inner packet must fit.
    payload_len: usize,
}

/// Strips the outer header of a tunnelled packet; `Err` is the outcome of a frame left as it
/// was.
#[inline(always)]
fn decapsulate(ctx: &XdpContext) -> Result<(), DecapCounter> {
    let eth: *const EthHdr = header(ctx, 0).ok_or(DecapCounter::MalformedOuter)?;
    // SAFETY: `header` checked the bounds.
    let (macs, ether_type) = unsafe {
        let macs: [u8; 12] = *(eth as *const [u8; 12]);
        (macs, u16::from_be((*eth).ether_type))
    };
    let outer = match ether_type {
        ETH_P_IPV4 => outer_ipv4(ctx)?,
        ETH_P_IPV6 => outer_ipv6(ctx)?,
        ETH_P_8021Q | ETH_P_8021AD => return Err(DecapCounter::PassedVlan),
        _ => return Err(DecapCounter::PassedNotIp),
    };
    let inner_ether_type = inner(ctx, &outer)?;

    // SAFETY: plain helper call on this program's context; `outer.len` bytes follow the
    // Ethernet header (checked by the outer_* functions), so the frame keeps its inner packet.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, outer.len as i32) } != 0 {
        return Err(DecapCounter::DecapFailed);
    }
    // Packet pointers from before the helper call are invalid: re-derive and check. The new
    // Ethernet header overwrites the last 14 bytes of the outer header.
    let start = ctx.data();
    if start + EthHdr::LEN > ctx.data_end() {
        // Unreachable (an inner header was seen), but the verifier needs the check, and the
        // frame is no longer what arrived: the kernel will drop it.
        return Err(DecapCounter::DecapFailed);
    }
    let new = start as *mut u8;
    // SAFETY: 14 bytes at `start` are within bounds, checked above.
    unsafe {
        core::ptr::copy_nonoverlapping(macs.as_ptr(), new, 12);
        core::ptr::copy_nonoverlapping(inner_ether_type.to_be_bytes().as_ptr(), new.add(12), 2);
    }
    Ok(())
}

#[inline(always)]
fn outer_ipv4(ctx: &XdpContext) -> Result<Outer, DecapCounter> {
    let ip: *const Ipv4Hdr = header(ctx, EthHdr::LEN).ok_or(DecapCounter::MalformedOuter)?;
    // SAFETY: `header` checked the bounds of the fixed 20-byte header.
    let (vihl, tot_len, frags, protocol) = unsafe {
        (
            (*ip).vihl,
            u16::from_be_bytes((*ip).tot_len) as usize,
            u16::from_be_bytes((*ip).frags),
            (*ip).proto,
        )
    };
    // Masked to 4 bits, so the verifier knows header_len <= 60.
    let header_len = ((vihl & 0x0F) as usize) * 4;
    let available = ctx.data_end() - ctx.data() - EthHdr::LEN;
    if vihl >> 4 != 4 || header_len < Ipv4Hdr::LEN || tot_len < header_len || tot_len > available {
        return Err(DecapCounter::MalformedOuter);
    }
    if protocol != IPPROTO_IPIP && protocol != IPPROTO_IPV6 {
        return Err(DecapCounter::PassedNotTunnel);
    }
    if frags & (IPV4_MF | IPV4_OFFSET_MASK) != 0 {
        return Err(DecapCounter::PassedFragment);
    }
    // The kernel would check this header's checksum and drop the packet if it were wrong;
    // once the header is gone nobody can, so check it here (tunnelled packets only).
    let mut sum = 0u32;
    let words = header_len / 2;
    for i in 0..IPV4_MAX_HEADER_WORDS {
        if i >= words {
            break;
        }
        let word: *const [u8; 2] =
            header(ctx, EthHdr::LEN + 2 * i).ok_or(DecapCounter::MalformedOuter)?;
        // SAFETY: `header` checked the bounds.
        sum += u32::from(u16::from_ne_bytes(unsafe { *word }));
    }
    if csum::fold(sum) != 0xFFFF {
        return Err(DecapCounter::MalformedOuter);
    }
    Ok(Outer {
        len: header_len,
        protocol,
        payload_len: tot_len - header_len,
    })
}

#[inline(always)]
fn outer_ipv6(ctx: &XdpContext) -> Result<Outer, DecapCounter> {
    let ip: *const Ipv6Hdr = header(ctx, EthHdr::LEN).ok_or(DecapCounter::MalformedOuter)?;
    // SAFETY: `header` checked the bounds of the fixed 40-byte header.
    let (version, payload_len, next_header) = unsafe {
        (
            (*ip).vcf[0] >> 4,
            u16::from_be_bytes((*ip).payload_len) as usize,
            (*ip).next_hdr,
        )
    };
    let available = ctx.data_end() - ctx.data() - EthHdr::LEN - Ipv6Hdr::LEN;
    if version != 6 || payload_len > available {
        return Err(DecapCounter::MalformedOuter);
    }
    // Extension headers (also RFC 2473's tunnel encapsulation limit, which sluice's tunnel
    // mode never adds) are not walked: such packets are not recognised as tunnelled.
    if next_header != IPPROTO_IPIP && next_header != IPPROTO_IPV6 {
        return Err(DecapCounter::PassedNotTunnel);
    }
    Ok(Outer {
        len: Ipv6Hdr::LEN,
        protocol: next_header,
        payload_len,
    })
}

/// Checks that an IP header of the family the outer protocol announces follows the outer
/// header and fits in the outer payload; returns the inner packet's EtherType.
#[inline(always)]
fn inner(ctx: &XdpContext, outer: &Outer) -> Result<u16, DecapCounter> {
    let offset = EthHdr::LEN + outer.len;
    if outer.protocol == IPPROTO_IPIP {
        let ip: *const Ipv4Hdr = header(ctx, offset).ok_or(DecapCounter::MalformedInner)?;
        // SAFETY: `header` checked the bounds of the fixed 20-byte header.
        let (vihl, tot_len) = unsafe { ((*ip).vihl, u16::from_be_bytes((*ip).tot_len) as usize) };
        let header_len = ((vihl & 0x0F) as usize) * 4;
        if vihl >> 4 != 4
            || header_len < Ipv4Hdr::LEN
            || tot_len < header_len
            || tot_len > outer.payload_len
        {
            return Err(DecapCounter::MalformedInner);
        }
        Ok(ETH_P_IPV4)
    } else {
        let ip: *const Ipv6Hdr = header(ctx, offset).ok_or(DecapCounter::MalformedInner)?;
        // SAFETY: `header` checked the bounds of the fixed 40-byte header.
        let (version, payload_len) = unsafe {
            (
                (*ip).vcf[0] >> 4,
                u16::from_be_bytes((*ip).payload_len) as usize,
            )
        };
        if version != 6 || Ipv6Hdr::LEN + payload_len > outer.payload_len {
            return Err(DecapCounter::MalformedInner);
        }
        Ok(ETH_P_IPV6)
    }
}
