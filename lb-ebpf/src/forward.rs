//! Next hop: the kernel's FIB (`bpf_fib_lookup`) gives the egress interface and both MACs;
//! the frame leaves with XDP_TX (same interface) or a redirect (another interface).
//!
//! The FIB lookup is the most expensive step of forwarding (about as much as everything else
//! on an established flow's path together), so packets to a target reuse its last successful
//! result for up to [`NEXT_HOP_TTL_NS`]: each CPU keeps one entry per target id in
//! `NEXT_HOPS`. A route or neighbour change therefore reaches forwarded traffic within that
//! time. Only successful lookups are remembered: while a next hop is unresolved, every packet
//! asks the FIB again (and is passed or dropped as before). Packets to clients (`nat` replies)
//! and ICMP errors always ask the FIB.

use aya_ebpf::{
    bindings::{bpf_fib_lookup as FibParams, xdp_action},
    helpers::{bpf_fib_lookup, bpf_redirect},
    programs::XdpContext,
};
use lb_common::{addr::FAMILY_V4, stats::Counter, target::Target};
use network_types::eth::EthHdr;

use crate::{even, NEXT_HOPS};

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

const BPF_FIB_LKUP_RET_SUCCESS: i64 = 0;
const BPF_FIB_LKUP_RET_FWD_DISABLED: i64 = 5;
const BPF_FIB_LKUP_RET_NO_NEIGH: i64 = 7;

/// How long a CPU reuses a target's next hop before asking the FIB again.
pub const NEXT_HOP_TTL_NS: u64 = 50_000_000;

/// A target's next hop as the FIB gave it (`NEXT_HOPS`, per CPU, indexed by target id), with
/// what it was looked up for: an entry counts only for the same destination address, family
/// and receiving interface (a target id may be reused for another address).
#[repr(C)]
pub struct NextHop {
    /// `Target::addr_words` of the target looked up.
    dst: [u32; 4],
    /// `clock::now` at the lookup.
    checked_ns: u64,
    ingress_ifindex: u32,
    ifindex: u32,
    smac: [u8; 6],
    dmac: [u8; 6],
    family: u8,
    _pad: [u8; 3],
}

// `send` reads the MACs two bytes at a time from these map values.
const _: () = assert!(
    core::mem::offset_of!(NextHop, smac) % 2 == 0
        && core::mem::offset_of!(NextHop, dmac) % 2 == 0
        && core::mem::offset_of!(FibParams, smac) % 2 == 0
        && core::mem::offset_of!(FibParams, dmac) % 2 == 0
);

/// Sends a frame for `target` (id `target_id`) towards it, through the next-hop cache; `now`
/// is the packet's `clock::now`. Otherwise as [`to`].
#[inline(always)]
pub fn to_target(
    ctx: &XdpContext,
    src: &[u8; 16],
    target_id: u32,
    target: &Target,
    now: u64,
    forwarded: Counter,
) -> Result<(Counter, u32), Counter> {
    // SAFETY: `ingress_ifindex` reads the xdp_md context.
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    let Some(hop) = NEXT_HOPS.get_ptr_mut(target_id) else {
        return to(ctx, target.family, src, &target.addr, forwarded);
    };
    // SAFETY: this CPU's slot; XDP runs to completion with preemption off, so no other packet
    // touches it meanwhile.
    let hop = unsafe { &mut *hop };
    if now.wrapping_sub(hop.checked_ns) < NEXT_HOP_TTL_NS
        && hop.ingress_ifindex == ingress
        && hop.family == target.family
        && hop.dst == target.addr_words()
    {
        return send(ctx, ingress, hop.ifindex, &hop.smac, &hop.dmac, forwarded);
    }
    let params = lookup(ctx, target.family, src, &target.addr)?;
    let Some(params) = params else {
        return Ok((Counter::PassNeighborUnresolved, xdp_action::XDP_PASS));
    };
    hop.dst = target.addr_words();
    hop.checked_ns = now;
    hop.ingress_ifindex = ingress;
    hop.ifindex = params.ifindex;
    hop.smac = params.smac;
    hop.dmac = params.dmac;
    hop.family = target.family;
    send(
        ctx,
        ingress,
        params.ifindex,
        &params.smac,
        &params.dmac,
        forwarded,
    )
}

/// Sends the (already rewritten) frame towards `dst`: fills in the Ethernet addresses for the
/// next hop. Returns `forwarded` and the action (XDP_TX or XDP_REDIRECT); a next hop whose MAC
/// is not resolved yet gets the packet passed to the kernel, which resolves it and sends the
/// packet (`pass_neighbor_unresolved`). `Err` is a drop outcome.
#[inline(always)]
pub fn to(
    ctx: &XdpContext,
    family: u8,
    src: &[u8; 16],
    dst: &[u8; 16],
    forwarded: Counter,
) -> Result<(Counter, u32), Counter> {
    let Some(params) = lookup(ctx, family, src, dst)? else {
        return Ok((Counter::PassNeighborUnresolved, xdp_action::XDP_PASS));
    };
    // SAFETY: `ingress_ifindex` reads the xdp_md context.
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    send(
        ctx,
        ingress,
        params.ifindex,
        &params.smac,
        &params.dmac,
        forwarded,
    )
}

/// Asks the FIB for the next hop from `src` to `dst`: `None` when its MAC is not resolved
/// yet, `Err` a drop outcome.
#[inline(always)]
fn lookup(
    ctx: &XdpContext,
    family: u8,
    src: &[u8; 16],
    dst: &[u8; 16],
) -> Result<Option<&'static FibParams>, Counter> {
    let params = crate::FIB_SCRATCH
        .get_ptr_mut(0)
        .ok_or(Counter::DropRewriteFailed)?;
    // Every field the lookup reads must start at zero. Zeroed a word at a time: `write_bytes`
    // becomes a call to a byte-loop memset. Volatile, so the stores are not merged back.
    const WORDS: usize = core::mem::size_of::<FibParams>() / 8;
    const _: () = assert!(core::mem::size_of::<FibParams>() == WORDS * 8);
    let zeroed = params as *mut u64;
    for i in 0..WORDS {
        // SAFETY: this CPU's slot, used by this packet only, 8-byte aligned (a map value) and
        // WORDS * 8 bytes long; all-integer C struct, so zero is a valid value.
        unsafe { core::ptr::write_volatile(zeroed.add(i), 0) };
    }
    // SAFETY: as above, now zeroed.
    let params: &mut FibParams = unsafe { &mut *params };
    // SAFETY: `ingress_ifindex` reads the xdp_md context.
    params.ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    if family == FAMILY_V4 {
        params.family = AF_INET;
        params.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes([src[0], src[1], src[2], src[3]]);
        params.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes([dst[0], dst[1], dst[2], dst[3]]);
    } else {
        params.family = AF_INET6;
        params.__bindgen_anon_3.ipv6_src = words(src);
        params.__bindgen_anon_4.ipv6_dst = words(dst);
    }
    // SAFETY: params is a valid, writable bpf_fib_lookup of the size passed.
    let rc = unsafe {
        bpf_fib_lookup(
            ctx.ctx as *mut _,
            params,
            core::mem::size_of::<FibParams>() as i32,
            0,
        )
    };
    match rc {
        BPF_FIB_LKUP_RET_SUCCESS => Ok(Some(params)),
        BPF_FIB_LKUP_RET_NO_NEIGH => Ok(None),
        BPF_FIB_LKUP_RET_FWD_DISABLED => Err(Counter::DropForwardingDisabled),
        _ => Err(Counter::DropNoRoute),
    }
}

/// Writes the MACs and sends the frame out of `ifindex`: XDP_TX when it is the receiving
/// interface, a redirect otherwise.
#[inline(always)]
fn send(
    ctx: &XdpContext,
    ingress: u32,
    ifindex: u32,
    smac: &[u8; 6],
    dmac: &[u8; 6],
    forwarded: Counter,
) -> Result<(Counter, u32), Counter> {
    let eth = ctx.data() as *mut u8;
    if ctx.data() + EthHdr::LEN > ctx.data_end() {
        return Err(Counter::DropRewriteFailed);
    }
    // SAFETY: bounds checked above; the frame's start is even, and so are the MACs' offsets
    // in `NextHop` and `FibParams` (map values), checked below.
    unsafe {
        even::copy::<3>(eth, dmac.as_ptr());
        even::copy::<3>(eth.add(6), smac.as_ptr());
    }
    if ifindex == ingress {
        return Ok((forwarded, xdp_action::XDP_TX));
    }
    // SAFETY: plain helper call; its return value is the action.
    let action = unsafe { bpf_redirect(ifindex, 0) } as u32;
    Ok((forwarded, action))
}

#[inline(always)]
fn words(a: &[u8; 16]) -> [u32; 4] {
    [
        u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
    ]
}
