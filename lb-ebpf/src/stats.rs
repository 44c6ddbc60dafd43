//! Counting into the per-CPU `STATS`, `LISTENER_STATS` and `TARGET_STATS` maps.

use aya_ebpf::{maps::PerCpuArray, programs::XdpContext};
use lb_common::{stats::Counter, target::Traffic};

use crate::STATS;

/// Adds one packet of `bytes` to `counter` on this CPU.
#[inline(always)]
pub fn count(ctx: &XdpContext, counter: Counter, bytes: u64) {
    match STATS.get_ptr_mut(counter as u32) {
        // SAFETY: a per-CPU slot is only written by this CPU, and preemption is off in XDP.
        Some(value) => unsafe {
            (*value).packets += 1;
            (*value).bytes += bytes;
        },
        // Only possible if the map was created smaller than COUNTER_COUNT: a bug worth a log line.
        None => aya_log_ebpf::error!(ctx, "STATS has no slot {}", counter as u32),
    }
}

/// Counts an observation for the current packet.
#[inline(always)]
pub fn observe(ctx: &XdpContext, counter: Counter) {
    count(ctx, counter, (ctx.data_end() - ctx.data()) as u64);
}

/// Adds a forwarded packet to a listener's or target's traffic.
#[inline(always)]
pub fn traffic(map: &PerCpuArray<Traffic>, id: u32, bytes: u64, new_flow: bool) {
    if let Some(value) = map.get_ptr_mut(id) {
        // SAFETY: per-CPU slot, as in `count`.
        unsafe {
            (*value).packets += 1;
            (*value).bytes += bytes;
            (*value).new_flows += new_flow as u64;
        }
    }
}

/// Counts a `nat` new connection refused for want of a port on target `id`.
#[inline(always)]
pub fn port_allocation_error(id: u32) {
    if let Some(value) = crate::TARGET_STATS.get_ptr_mut(id) {
        // SAFETY: per-CPU slot, as in `count`.
        unsafe { (*value).port_allocation_errors += 1 };
    }
}
