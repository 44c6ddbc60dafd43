//! The packet's time: `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC as of the last tick), read
//! once per tick and CPU.
//!
//! The coarse clock is a helper call that reads the timekeeper under its sequence count and
//! normalises a timespec (about a tenth of an established flow's cost in a profile), yet it
//! only moves once a tick. `jiffies` moves on the same tick and the verifier inlines
//! `bpf_jiffies64` into a load, so each CPU keeps the coarse time it read for the current
//! jiffy in `CLOCK` and asks the helper again only when `jiffies` moved.
//!
//! What the cache can lag by: the tick advances `jiffies` just before it updates the
//! timekeeper, so a packet between the two caches the previous tick's time for the new jiffy:
//! the time a CPU uses is at most two ticks old (the clock itself is one tick coarse), and
//! never goes backwards on that CPU. Across CPUs a lagging one may see a flow entry stamped
//! slightly in its future: `wrapping_sub` makes that a refresh, written with its own time, as
//! harmless as any refresh. Every user compares times at a resolution of 50 ms or more.

use aya_ebpf::helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns};

use crate::CLOCK;

/// A CPU's last coarse time and the jiffy it was read in (`CLOCK`).
#[repr(C)]
pub struct Cached {
    jiffies: u64,
    ns: u64,
}

/// The packet's time in nanoseconds of CLOCK_MONOTONIC, at tick precision.
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: plain helper call (inlined by the verifier into a load of `jiffies`).
    let jiffies = unsafe { bpf_jiffies64() };
    let Some(cached) = CLOCK.get_ptr_mut(0) else {
        // SAFETY: plain helper call.
        return unsafe { bpf_ktime_get_coarse_ns() };
    };
    // SAFETY: this CPU's slot; XDP runs to completion with preemption off, so no other
    // packet touches it meanwhile.
    let cached = unsafe { &mut *cached };
    if cached.jiffies != jiffies {
        // SAFETY: plain helper call.
        cached.ns = unsafe { bpf_ktime_get_coarse_ns() };
        cached.jiffies = jiffies;
    }
    cached.ns
}
