//! Per-packet debug logging. Compiled in only with the `debug-log` feature (debug builds of
//! sluice); release builds carry no per-packet log call, so an attacker cannot flood the log
//! ring buffer or slow the fast path through it.

use aya_ebpf::programs::XdpContext;
use lb_common::stats::Counter;

#[cfg(feature = "debug-log")]
#[inline(always)]
pub fn debug_outcome(ctx: &XdpContext, outcome: Counter) {
    aya_log_ebpf::debug!(ctx, "outcome {}", outcome as u32);
}

#[cfg(not(feature = "debug-log"))]
#[inline(always)]
pub fn debug_outcome(_ctx: &XdpContext, _outcome: Counter) {}
