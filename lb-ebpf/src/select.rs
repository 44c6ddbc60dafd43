//! Select: the target for a packet. An established flow keeps its target while that target is
//! active or draining; anything else is a new flow (or a re-hashed one) and goes where its
//! listener's Maglev table says.
//!
//! Only a packet that starts a connection (a TCP SYN without ACK, any UDP datagram) or a flow
//! that lost its target gets a flow entry, under the flood gate. A TCP segment of a connection
//! sluice has no entry for is routed by Maglev alone in `dsr` and `tunnel` modes and dropped in
//! `nat` mode (`DropNoConnection`), where only a SYN may allocate a port. `FLOWS` is a plain
//! hash map, not an LRU: a live entry is never evicted to make room; when the table is full, a
//! new `nat` connection is refused and a new `dsr`/`tunnel` flow is forwarded without an entry.
//! Entries leave when they expire (`lb_common::flow::expired`, swept from userspace), and `nat`
//! entries as soon as their connection closes.

use lb_common::{
    flow::{
        next_state, Flow, DEFAULT_TCP_IDLE_TIMEOUT_S, DEFAULT_UDP_IDLE_TIMEOUT_S, REFRESH_NS,
        STATE_CLOSED,
    },
    listener::{ForwardingMode, HashKey, Listener},
    stats::Counter,
    target::{Target, TARGET_ACTIVE, TARGET_DRAINING},
};

use crate::{
    clock, hash,
    parse::{Packet, IPPROTO_TCP, TCP_ACK, TCP_SYN},
    stats, CONFIG, FLOOD_GATE, FLOWS, MAGLEV, TARGETS,
};

const NS_PER_SEC: u64 = 1_000_000_000;

/// The flood gate's per-CPU window.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct FloodGate {
    pub window_start_ns: u64,
    pub inserted: u64,
}

/// What select decided.
pub struct Selected {
    pub target_id: u32,
    /// The `TARGETS` entry (array map values stay valid while the program runs).
    pub target: &'static Target,
    /// The flow entry to remember (`nat` fills in `nat_port_be` for new flows).
    pub flow: Flow,
    /// A new or re-hashed flow (its entry must be written).
    pub is_new: bool,
    /// An existing entry whose target was gone: its old target id and `nat` port, so `nat`
    /// can release the old translation.
    pub rehashed_from: Option<(u32, u16)>,
    /// Write the flow entry (false for established flows and for gated new flows).
    pub store: bool,
    /// An established flow whose entry this packet wrote: its state moved, or its
    /// `last_seen_ns` was due for the once-a-[`REFRESH_NS`] refresh. (`nat` refreshes the
    /// translation on the same packets.)
    pub refreshed: bool,
    /// The packet's time (`clock::now`).
    pub now: u64,
}

/// A TCP SYN without ACK: the only segment that may start a connection.
#[inline(always)]
pub fn starts_connection(packet: &Packet) -> bool {
    packet.protocol != IPPROTO_TCP || packet.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

#[inline(always)]
pub fn select(
    ctx: &aya_ebpf::programs::XdpContext,
    packet: &Packet,
    listener: &Listener,
) -> Result<Selected, Counter> {
    // The coarse clock (the last tick's time, no clock read) is plenty for a once-a-second
    // refresh, the flood gate's one-second window and the next-hop cache, and costs a
    // fraction of `bpf_ktime_get_ns`.
    let now = clock::now();
    let tcp = packet.protocol == IPPROTO_TCP;
    let starts = starts_connection(packet);
    let mut rehashed_from = None;
    if let Some(entry) = FLOWS.get_ptr_mut(packet.key) {
        // SAFETY: copied out; the fields written below are written in place, a concurrent
        // update on another CPU replaces the element whole (a lost refresh is harmless).
        let flow = unsafe { *entry };
        if let Some(target) = TARGETS.get(flow.target_id) {
            // A draining target keeps its flows but takes no new connection: a bare SYN that
            // matches an old entry (the client reused a source port) starts a new connection.
            let new_connection = tcp && starts;
            if target.state == TARGET_ACTIVE || (target.state == TARGET_DRAINING && !new_connection)
            {
                let state = if tcp {
                    next_state(flow.state, packet.tcp_flags, true)
                } else {
                    flow.state
                };
                let refreshed =
                    state != flow.state || now.wrapping_sub(flow.last_seen_ns) > REFRESH_NS;
                if refreshed {
                    // SAFETY: a value of this map, valid for this run (RCU).
                    unsafe {
                        (*entry).state = state;
                        (*entry).last_seen_ns = now;
                    }
                    if state & STATE_CLOSED != 0 && flow.state & STATE_CLOSED == 0 {
                        stats::observe(ctx, Counter::ConnectionClosed);
                    }
                }
                return Ok(Selected {
                    target_id: flow.target_id,
                    target,
                    flow: Flow {
                        state,
                        last_seen_ns: now,
                        ..flow
                    },
                    is_new: false,
                    rehashed_from: None,
                    store: false,
                    refreshed,
                    now,
                });
            }
        }
        stats::observe(ctx, Counter::FlowRehashed);
        rehashed_from = Some((flow.target_id, flow.nat_port_be));
    } else if !starts {
        stats::observe(ctx, Counter::FlowMissNonSyn);
        if listener.mode == ForwardingMode::Nat as u8 {
            return Err(Counter::DropNoConnection);
        }
    }

    let hash = if listener.hash_key == HashKey::SourceIp as u8 {
        hash::source(packet.key)
    } else {
        hash::five_tuple(packet.key)
    };
    let table = MAGLEV.get(listener.id).ok_or(Counter::DropNoTarget)?;
    let size = *table.get(0).ok_or(Counter::DropNoTarget)?;
    if size == 0 {
        return Err(Counter::DropNoTarget);
    }
    let target_id = *table.get(1 + hash % size).ok_or(Counter::DropNoTarget)?;
    let target = TARGETS.get(target_id).ok_or(Counter::DropNoTarget)?;

    // Only flows that start or that lost their target get an entry: a non-SYN miss in `dsr`
    // and `tunnel` modes is routed by Maglev alone, so stray ACKs cannot fill the table.
    let store = (starts || rehashed_from.is_some()) && admit(ctx, now);
    if !store && listener.mode == ForwardingMode::Nat as u8 {
        // `nat` cannot forward without a translation, and a translation needs an entry.
        return Err(Counter::DropFloodGated);
    }
    let idle_timeout_s = match listener.idle_timeout_s {
        0 if tcp => DEFAULT_TCP_IDLE_TIMEOUT_S,
        0 => DEFAULT_UDP_IDLE_TIMEOUT_S,
        set => set,
    };
    Ok(Selected {
        target_id,
        target,
        flow: Flow {
            target_id,
            listener_id: listener.id,
            nat_port_be: 0,
            state: if tcp {
                next_state(0, packet.tcp_flags, true)
            } else {
                0
            },
            protocol: packet.protocol,
            idle_timeout_s,
            _pad: [0; 2],
            last_seen_ns: now,
        },
        is_new: true,
        rehashed_from,
        store,
        refreshed: false,
        now,
    })
}

/// The flood gate: at most `max_new_flows_per_cpu` inserts per second on this CPU. Above it,
/// new flows are kept out of the table: `dsr`/`tunnel` forward them by Maglev (consistent while
/// the table does not change), `nat` drops them (the client retransmits).
#[inline(always)]
fn admit(ctx: &aya_ebpf::programs::XdpContext, now: u64) -> bool {
    let limit = match CONFIG.get(0) {
        Some(config) => config.max_new_flows_per_cpu as u64,
        None => 0,
    };
    if limit == 0 {
        return true;
    }
    let Some(gate) = FLOOD_GATE.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: a per-CPU slot, written only by this CPU with preemption off.
    let gate = unsafe { &mut *gate };
    if now.wrapping_sub(gate.window_start_ns) >= NS_PER_SEC {
        gate.window_start_ns = now;
        gate.inserted = 0;
    }
    if gate.inserted >= limit {
        stats::observe(ctx, Counter::FloodGated);
        return false;
    }
    gate.inserted += 1;
    true
}

/// Writes the flow entry decided by `select`, once the packet has been rewritten. False when
/// the entry was to be written and could not be: the table is full of live entries.
#[inline(always)]
pub fn commit(
    ctx: &aya_ebpf::programs::XdpContext,
    key: &lb_common::flow::FlowKey,
    selected: &Selected,
) -> bool {
    if !selected.store {
        return true;
    }
    if FLOWS.insert(key, &selected.flow, 0).is_err() {
        return false;
    }
    if selected.is_new {
        stats::observe(ctx, Counter::FlowCreated);
    }
    true
}
