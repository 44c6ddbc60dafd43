//! The benchmark programs of `sluice bench`, in the same object as the load balancer so that
//! one binary carries everything. None of them touches the load balancer's maps.
//!
//! - `sluice_bench_generate`: run by `BPF_PROG_TEST_RUN` with live frames, it stamps flow
//!   n % flows into the template frame and redirects it into an interface (the kernel's test
//!   run keeps no per-frame state, so the flow rotation lives in a per-CPU cursor);
//! - `sluice_bench_sink`: counts and drops IPv4 frames on a receiving interface (everything
//!   else passes, so ARP keeps working), optionally per watched source;
//! - `sluice_bench_floor`: rewrites the MACs and sends the frame on: the least any XDP
//!   forwarder can do, the ceiling the load balancer is compared with;
//! - `sluice_bench_pass`: `XDP_PASS` and nothing else, the empty program whose cost is
//!   subtracted from per-packet timings (and what lets a veth peer accept redirected frames).
//!
//! Map sizes are 1 in the object: every load of the object creates every map, the daemon's
//! too, so the benchmark sizes its maps at load time.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_redirect,
    macros::{map, xdp},
    maps::{Array, PerCpuArray, PerCpuHashMap},
    programs::XdpContext,
};
use lb_common::{
    bench::{
        BenchCount, FloorHop, FlowPatch, FrameHeaders, GeneratorConfig, SinkConfig, WatchedSource,
        BENCH_HEADER_BYTES, BENCH_MAX_FLOOR_HOPS,
    },
    proto::IPPROTO_TCP,
};

const ETH_P_IPV4: u16 = 0x0800;
/// Template frame offsets: Ethernet (14) + IPv4 without options (20) + L4.
const IP_CHECK: usize = 24;
const IP_SADDR: usize = 26;
const L4_SPORT: usize = 34;
const UDP_CHECK: usize = 40;
const TCP_CHECK: usize = 50;
/// The generator's shortest template: Ethernet + IPv4 + TCP.
const TEMPLATE_MIN: usize = BENCH_HEADER_BYTES;

#[map]
static BENCH_GENERATOR: Array<GeneratorConfig> = Array::with_max_entries(1, 0);

/// The template's headers, written into every frame before its flow is stamped.
#[map]
static BENCH_TEMPLATE: Array<FrameHeaders> = Array::with_max_entries(1, 0);

/// The generator's flows, `GeneratorConfig::flows` of them (sized at load time).
#[map]
static BENCH_FLOWS: Array<FlowPatch> = Array::with_max_entries(1, 0);

/// Per-CPU count of frames generated: the next flow to stamp.
#[map]
static BENCH_CURSOR: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[map]
static BENCH_SINK_STATS: PerCpuArray<BenchCount> = PerCpuArray::with_max_entries(1, 0);

#[map]
static BENCH_SINK_CONFIG: Array<SinkConfig> = Array::with_max_entries(1, 0);

/// Packets per watched source (sized at load time; a full map counts no new source).
#[map]
static BENCH_SINK_SOURCES: PerCpuHashMap<WatchedSource, u64> =
    PerCpuHashMap::with_max_entries(1, 0);

/// Slot 0: how many of `BENCH_FLOOR_HOPS` are in use.
#[map]
static BENCH_FLOOR_CONFIG: Array<u32> = Array::with_max_entries(1, 0);

#[map]
static BENCH_FLOOR_HOPS: Array<FloorHop> = Array::with_max_entries(BENCH_MAX_FLOOR_HOPS, 0);

#[xdp]
pub fn sluice_bench_generate(ctx: XdpContext) -> u32 {
    let Some(config) = BENCH_GENERATOR.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    // Recycled pages keep what receivers wrote into them: restore the headers first.
    if let Some(template) = BENCH_TEMPLATE.get(0) {
        let data = ctx.data();
        if data + BENCH_HEADER_BYTES <= ctx.data_end() {
            // SAFETY: BENCH_HEADER_BYTES bytes of the frame, checked above; the source is a
            // map value of 64 bytes.
            unsafe {
                core::ptr::copy_nonoverlapping(
                    template.bytes.as_ptr(),
                    data as *mut u8,
                    BENCH_HEADER_BYTES,
                );
            }
        }
    }
    if config.flows != 0 {
        if let Some(patch) = next(&BENCH_CURSOR, config.flows).and_then(|i| BENCH_FLOWS.get(i)) {
            stamp(&ctx, patch, config.protocol);
        }
    }
    // SAFETY: plain helper call; its return value is the action.
    unsafe { bpf_redirect(config.ifindex, 0) as u32 }
}

/// This CPU's next index in `0..n`, advancing its cursor.
#[inline(always)]
fn next(cursor: &PerCpuArray<u64>, n: u32) -> Option<u32> {
    let cursor = cursor.get_ptr_mut(0)?;
    // SAFETY: a per-CPU slot, written only by this CPU with preemption off.
    let value = unsafe {
        let value = *cursor;
        *cursor = value.wrapping_add(1);
        value
    };
    Some((value % u64::from(n)) as u32)
}

/// Writes a flow's source address and port and both checksums into the template frame.
#[inline(always)]
fn stamp(ctx: &XdpContext, patch: &FlowPatch, protocol: u8) {
    let data = ctx.data();
    if data + TEMPLATE_MIN > ctx.data_end() {
        return;
    }
    // SAFETY: every write ends below data + TEMPLATE_MIN, checked above.
    unsafe {
        write(data + IP_SADDR, patch.saddr_be);
        write(data + IP_CHECK, patch.ip_check_be.to_ne_bytes());
        write(data + L4_SPORT, patch.sport_be.to_ne_bytes());
        let check = if protocol == IPPROTO_TCP {
            TCP_CHECK
        } else {
            UDP_CHECK
        };
        write(data + check, patch.l4_check_be.to_ne_bytes());
    }
}

/// # Safety
/// `addr..addr + N` must be inside the frame.
#[inline(always)]
unsafe fn write<const N: usize>(addr: usize, bytes: [u8; N]) {
    core::ptr::write_unaligned(addr as *mut [u8; N], bytes);
}

#[xdp]
pub fn sluice_bench_sink(ctx: XdpContext) -> u32 {
    let data = ctx.data();
    let end = ctx.data_end();
    if data + 14 > end {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: bounds checked above.
    let ethertype = unsafe { u16::from_be_bytes(*((data + 12) as *const [u8; 2])) };
    if ethertype != ETH_P_IPV4 {
        return xdp_action::XDP_PASS;
    }
    if let Some(total) = BENCH_SINK_STATS.get_ptr_mut(0) {
        // SAFETY: a per-CPU slot, written only by this CPU with preemption off.
        unsafe {
            (*total).packets += 1;
            (*total).bytes += (end - data) as u64;
        }
    }
    watch(&ctx);
    xdp_action::XDP_DROP
}

/// Counts the packet under its source if that is in the watched prefix.
#[inline(always)]
fn watch(ctx: &XdpContext) {
    let Some(config) = BENCH_SINK_CONFIG.get(0) else {
        return;
    };
    let mask = u32::from_ne_bytes(config.watch_mask_be);
    if mask == 0 {
        return;
    }
    let data = ctx.data();
    if data + L4_SPORT + 2 > ctx.data_end() {
        return;
    }
    // SAFETY: bounds checked above (the watched flows are the generator's: IPv4 without
    // options, so the source port follows the 20-byte header).
    let (saddr_be, sport) = unsafe {
        (
            *((data + IP_SADDR) as *const [u8; 4]),
            *((data + L4_SPORT) as *const [u8; 2]),
        )
    };
    if u32::from_ne_bytes(saddr_be) & mask != u32::from_ne_bytes(config.watch_net_be) {
        return;
    }
    let key = WatchedSource {
        saddr_be,
        sport_be: u16::from_ne_bytes(sport),
        _pad: [0; 2],
    };
    match BENCH_SINK_SOURCES.get_ptr_mut(&key) {
        // SAFETY: this CPU's value of a per-CPU map.
        Some(count) => unsafe { *count += 1 },
        None => {
            let _ = BENCH_SINK_SOURCES.insert(&key, &1, 0);
        }
    }
}

#[xdp]
pub fn sluice_bench_floor(ctx: XdpContext) -> u32 {
    let hops = match BENCH_FLOOR_CONFIG.get(0) {
        Some(&n) if n > 0 => n,
        _ => return xdp_action::XDP_ABORTED,
    };
    let Some(hop) = next(&BENCH_CURSOR, hops).and_then(|i| BENCH_FLOOR_HOPS.get(i)) else {
        return xdp_action::XDP_ABORTED;
    };
    let data = ctx.data();
    if data + 12 > ctx.data_end() {
        return xdp_action::XDP_PASS;
    }
    // SAFETY: the 12 MAC bytes are inside the frame, checked above.
    unsafe {
        write(data, hop.dst_mac);
        write(data + 6, hop.src_mac);
    }
    // SAFETY: reads the xdp_md context.
    if hop.ifindex == unsafe { (*ctx.ctx).ingress_ifindex } {
        return xdp_action::XDP_TX;
    }
    // SAFETY: plain helper call; its return value is the action.
    unsafe { bpf_redirect(hop.ifindex, 0) as u32 }
}

#[xdp]
pub fn sluice_bench_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}
