//! Next hop: the kernel's FIB (`bpf_fib_lookup`) gives the egress interface and both MACs;
//! the frame leaves with XDP_TX (same interface) or a redirect (another interface).

use aya_ebpf::{
    bindings::{bpf_fib_lookup as FibParams, xdp_action},
    helpers::{bpf_fib_lookup, bpf_redirect},
    programs::XdpContext,
};
use lb_common::{addr::FAMILY_V4, stats::Counter};
use network_types::eth::EthHdr;

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

const BPF_FIB_LKUP_RET_SUCCESS: i64 = 0;
const BPF_FIB_LKUP_RET_FWD_DISABLED: i64 = 5;
const BPF_FIB_LKUP_RET_NO_NEIGH: i64 = 7;

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
    let params = crate::FIB_SCRATCH
        .get_ptr_mut(0)
        .ok_or(Counter::DropRewriteFailed)?;
    // SAFETY: this CPU's slot, used by this packet only; all-integer C struct, so zeroing it
    // (every field the lookup reads must start at zero) gives a valid value.
    let params: &mut FibParams = unsafe {
        core::ptr::write_bytes(params, 0, 1);
        &mut *params
    };
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
        BPF_FIB_LKUP_RET_SUCCESS => {}
        BPF_FIB_LKUP_RET_NO_NEIGH => {
            return Ok((Counter::PassNeighborUnresolved, xdp_action::XDP_PASS));
        }
        BPF_FIB_LKUP_RET_FWD_DISABLED => return Err(Counter::DropForwardingDisabled),
        _ => return Err(Counter::DropNoRoute),
    }
    let eth = (ctx.data()) as *mut EthHdr;
    if ctx.data() + EthHdr::LEN > ctx.data_end() {
        return Err(Counter::DropRewriteFailed);
    }
    // SAFETY: bounds checked above.
    unsafe {
        (*eth).dst_addr = params.dmac;
        (*eth).src_addr = params.smac;
    }
    // SAFETY: ingress_ifindex reads the context.
    if params.ifindex == unsafe { (*ctx.ctx).ingress_ifindex } {
        return Ok((forwarded, xdp_action::XDP_TX));
    }
    // SAFETY: plain helper call; its return value is the action.
    let action = unsafe { bpf_redirect(params.ifindex, 0) } as u32;
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
