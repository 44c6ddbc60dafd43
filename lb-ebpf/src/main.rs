//! sluice's XDP program. `main.rs` declares the maps and runs the pipeline stages:
//! parse (`parse.rs`), then, in later stages, classify, select and rewrite; every packet
//! ends in exactly one outcome counter (`stats.rs`).
#![no_std]
#![no_main]

mod log;
mod parse;
mod stats;

use aya_ebpf::{
    bindings::xdp_action, macros::map, macros::xdp, maps::PerCpuArray, programs::XdpContext,
};
use lb_common::stats::{Counter, CounterValue, COUNTER_COUNT};

/// Global counters, one slot per `lb_common::stats::Counter`.
#[map]
static STATS: PerCpuArray<CounterValue> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

#[xdp]
pub fn sluice(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let outcome = match parse::parse(&ctx, len) {
        // No listeners yet: all parsed IP traffic belongs to the kernel.
        Ok(_packet) => Counter::PassNoListener,
        Err(outcome) => outcome,
    };
    stats::count(&ctx, outcome, len);
    log::debug_outcome(&ctx, outcome);
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic, so this is never linked into a path.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
