//! sluice's XDP program. `main.rs` declares the maps and runs the pipeline stages:
//! parse (`parse.rs`) → NAT replies (`nat.rs`) → classify (`classify.rs`, ICMP in `icmp.rs`)
//! → select (`select.rs`: flow table, Maglev) → rewrite per mode (`nat.rs`, `dsr.rs`,
//! `tunnel.rs`) → next hop (`forward.rs`). Every packet ends in exactly one outcome counter
//! (`stats.rs`).
#![no_std]
#![no_main]
// Map keys are passed by reference on purpose: by value they would be copied onto the
// 512-byte BPF stack.
#![allow(clippy::needless_borrows_for_generic_args)]

mod bench;
mod classify;
mod clock;
mod csum;
mod decap;
mod dsr;
mod even;
mod forward;
mod hash;
mod icmp;
mod log;
mod nat;
mod parse;
mod select;
mod stats;
mod tunnel;

use aya_ebpf::{
    bindings::xdp_action,
    btf_maps::{Array as BtfArray, ArrayOfMaps},
    macros::{btf_map, map, xdp},
    maps::{Array, HashMap, PerCpuArray},
    programs::XdpContext,
};
use lb_common::{
    addr::ADDRESS_BUCKETS,
    config::Config,
    flow::{Flow, FlowKey, NatOrigin, DEFAULT_FLOWS},
    listener::{ForwardingMode, Listener, ListenerKey, MAX_LISTENERS},
    state::{STATE_CHUNK, STATE_ENTRIES},
    stats::{Counter, CounterValue, COUNTER_COUNT},
    target::{Target, Traffic, MAX_TARGETS},
};

use crate::{parse::Packet, select::FloodGate};

/// Global counters, one slot per `lb_common::stats::Counter`.
#[map]
static STATS: PerCpuArray<CounterValue> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);

/// The controller's saved state (see `lb_common::state`); never read here, declared so that
/// it is created and pinned with the other maps.
#[map]
static STATE: Array<[u8; STATE_CHUNK]> = Array::with_max_entries(STATE_ENTRIES, 0);

/// Global settings, one entry.
#[map]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// The class bits of destination addresses by `lb_common::addr::address_bucket`: which of
/// `LISTENERS` and `NAT_REPLIES` may hold anything for a packet. Written by userspace before
/// the entries they announce, cleared after them.
#[map]
static ADDRESSES: Array<u32> = Array::with_max_entries(ADDRESS_BUCKETS, 0);

/// Listener lookup. Twice the listener count: each listener address also has an ICMP entry
/// (port 0, protocol ICMP/ICMPv6) so echo requests and ICMP errors to it are recognised.
#[map]
static LISTENERS: HashMap<ListenerKey, Listener> = HashMap::with_max_entries(2 * MAX_LISTENERS, 0);

/// `BPF_F_INNER_MAP`: inner arrays may differ in size from this template.
const BPF_F_INNER_MAP: usize = 1 << 12;

/// Per listener id, its Maglev table: slot 0 holds the table size M, slots 1..=M target ids.
/// Userspace swaps a whole table by replacing the inner map, so a packet sees either the old
/// or the new table, never a half-written one; size and slots come from the same inner map.
#[btf_map]
static MAGLEV: ArrayOfMaps<BtfArray<u32, 65538, BPF_F_INNER_MAP>, { MAX_LISTENERS as usize }> =
    ArrayOfMaps::new();

/// Targets by id.
#[map]
static TARGETS: Array<Target> = Array::with_max_entries(MAX_TARGETS, 0);

/// Established flows: 5-tuple as received → target. A plain hash map, not an LRU: a full
/// table refuses new entries instead of evicting live ones (see `select.rs`).
#[map]
static FLOWS: HashMap<FlowKey, Flow> = HashMap::with_max_entries(DEFAULT_FLOWS, 0);

/// `nat` mode: reply 5-tuple (target → load balancer address and allocated port) → client.
/// A plain hash map like `FLOWS`: translations leave when they expire or their port is
/// reclaimed (`nat.rs`), never by eviction.
#[map]
static NAT_REPLIES: HashMap<FlowKey, NatOrigin> = HashMap::with_max_entries(DEFAULT_FLOWS, 0);

#[map]
static LISTENER_STATS: PerCpuArray<Traffic> = PerCpuArray::with_max_entries(MAX_LISTENERS, 0);

#[map]
static TARGET_STATS: PerCpuArray<Traffic> = PerCpuArray::with_max_entries(MAX_TARGETS, 0);

/// Per-CPU slot for the packet's flow key (`parse::Packet::key`).
#[map]
static PACKET_KEY: PerCpuArray<FlowKey> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU scratch space for `nat`'s keys, kept off the 512-byte BPF stack.
#[map]
static NAT_SCRATCH: PerCpuArray<nat::Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU scratch space for the keys of the flow an ICMP error is about, kept off the stack.
#[map]
static ICMP_SCRATCH: PerCpuArray<icmp::Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU scratch space for `bpf_fib_lookup`'s 64-byte parameters, kept off the stack.
#[map]
static FIB_SCRATCH: PerCpuArray<aya_ebpf::bindings::bpf_fib_lookup> =
    PerCpuArray::with_max_entries(1, 0);

/// Per CPU, each target's last next hop from the FIB (`forward.rs`), by target id; sized like
/// `TARGETS` at load time.
#[map]
static NEXT_HOPS: PerCpuArray<forward::NextHop> = PerCpuArray::with_max_entries(MAX_TARGETS, 0);

/// How many times userspace has changed `LISTENERS` (one slot): a `LISTENER_CACHE` entry read
/// under another count is not used (`classify.rs`).
#[map]
static LISTENERS_GENERATION: Array<u64> = Array::with_max_entries(1, 0);

/// Per CPU, listeners looked up in the current jiffy (`classify.rs`).
#[map]
static LISTENER_CACHE: PerCpuArray<classify::CachedListener> =
    PerCpuArray::with_max_entries(classify::LISTENER_CACHE_SLOTS, 0);

/// Per-CPU cache of the coarse clock for the current jiffy (`clock.rs`).
#[map]
static CLOCK: PerCpuArray<clock::Cached> = PerCpuArray::with_max_entries(1, 0);

/// Per-CPU new-flow rate window for the flood gate.
#[map]
static FLOOD_GATE: PerCpuArray<FloodGate> = PerCpuArray::with_max_entries(1, 0);

// Inlined into the entry point the `xdp` macro wraps around it: as a function of its own it
// was a BPF-to-BPF call on every packet.
#[xdp]
#[inline(always)]
pub fn sluice(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let (outcome, action) = match parse::parse(&ctx, len) {
        Ok(packet) => process(&ctx, &packet, len),
        Err(outcome) => (outcome, xdp_action::XDP_PASS),
    };
    stats::count(&ctx, outcome, len);
    log::debug_outcome(&ctx, outcome);
    action
}

/// Everything after parsing; returns the outcome counter and the XDP action.
#[inline(always)]
fn process(ctx: &XdpContext, packet: &Packet, len: u64) -> (Counter, u32) {
    let class = classify::address_class(packet);
    if let Some(done) = nat::reply(ctx, packet, class) {
        return done;
    }
    let Some(listener) = classify::listener(packet, class) else {
        return (Counter::PassNoListener, xdp_action::XDP_PASS);
    };
    if packet.vlan {
        return (Counter::PassVlanListener, xdp_action::XDP_PASS);
    }
    if packet.protocol == parse::IPPROTO_ICMP || packet.protocol == parse::IPPROTO_ICMPV6 {
        return icmp::handle(ctx, packet);
    }
    let mut selected = match select::select(ctx, packet, &listener) {
        Ok(selected) => selected,
        Err(outcome) => return (outcome, xdp_action::XDP_DROP),
    };
    let forwarded = match ForwardingMode::from_u8(listener.mode) {
        Some(ForwardingMode::Dsr) => dsr::forward(ctx, packet, &selected),
        Some(ForwardingMode::Nat) => nat::forward(ctx, packet, &mut selected),
        Some(ForwardingMode::Tunnel) => tunnel::forward(ctx, packet, &selected),
        None => Err(Counter::DropRewriteFailed),
    };
    match forwarded {
        Ok((outcome, action)) => {
            if !select::commit(ctx, packet.key, &selected) {
                if listener.mode == ForwardingMode::Nat as u8 {
                    nat::abandon(packet, &selected);
                    return (Counter::DropFlowTableFull, xdp_action::XDP_DROP);
                }
                stats::observe(ctx, Counter::FlowTableFull);
            }
            stats::traffic(&LISTENER_STATS, listener.id, len, selected.is_new);
            stats::traffic(&TARGET_STATS, selected.target_id, len, selected.is_new);
            (outcome, action)
        }
        Err(outcome) => (outcome, xdp_action::XDP_DROP),
    }
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
