//! Counting into the per-CPU `STATS` map.

use aya_ebpf::programs::XdpContext;
use lb_common::stats::Counter;

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
