//! The sweep: expired entries leave the flow table (`FLOWS`) and the `nat` translations
//! (`NAT_REPLIES`), which gives their ports back, and the tables are counted for `status` and
//! metrics. The XDP program frees what it can on the packet path (a `nat` connection that
//! closes, a port whose translation expired when a new connection probes it); everything that
//! simply goes quiet is found here.
//!
//! Cost: the daemon sweeps once a second and looks at most [`BUDGET`] entries of each table per
//! sweep, read [`BATCH`] at a time with `BPF_MAP_LOOKUP_BATCH`; a larger table is walked over
//! several seconds, resuming where the last sweep stopped (a million entries: 16 s). What a
//! slice costs is measured by the integration test `sweep_walks_a_million_flows_in_bounded_slices`
//! and quoted in docs/OPERATING.md ("Connection state").
//!
//! Which entries expire is decided by `lb_common::flow::expired` (the same function the XDP
//! program uses to reclaim ports); when the flow table is at least [`PRESSURE`] full, by
//! `expired_under_pressure`, which lets connections that are not established go first.

use std::collections::BTreeMap;

use std::os::fd::AsFd;

use aya::maps::{HashMap, IterableMap, MapData};
use lb_common::{
    flow::{expired, expired_under_pressure, Flow, FlowKey, NatOrigin},
    target::Target,
};

use super::batch::{self, Cursor};

/// Entries read per syscall.
pub const BATCH: usize = 4096;
/// Entries of each table looked at per sweep.
pub const BUDGET: usize = 64 * 1024;
/// The flow table counts as under pressure from this share of its capacity.
pub const PRESSURE: f64 = 0.875;

/// What the last complete walk of each table found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableCounts {
    /// Live flow entries.
    pub flows: u64,
    /// Live `nat` translations, in all and per target id.
    pub nat_translations: u64,
    pub nat_translations_by_target: BTreeMap<u32, u64>,
    /// Entries the sweeps deleted since the daemon started.
    pub expired_flows: u64,
    pub expired_translations: u64,
}

/// Where the walks stand between sweeps.
#[derive(Debug, Default)]
pub struct Sweeper {
    flows: Cursor,
    translations: Cursor,
    /// Counts of the walks in progress.
    partial: TableCounts,
    /// Counts of the last complete walks (the flow table's and the translations').
    last: TableCounts,
    complete: bool,
    /// This round's walk of a table is over; it waits for the other's.
    translations_walked: bool,
    flows_walked: bool,
    pressure: bool,
}

impl Sweeper {
    /// The counts of the last complete walks, once both tables have been walked.
    pub fn counts(&self) -> Option<&TableCounts> {
        self.complete.then_some(&self.last)
    }
}

/// Whether a translation goes.
pub fn translation_expired(origin: &NatOrigin, now_ns: u64, pressure: bool) -> bool {
    let f = if pressure {
        expired_under_pressure
    } else {
        expired
    };
    f(
        origin.state,
        origin.protocol,
        origin.last_seen_ns,
        origin.idle_timeout_s,
        now_ns,
    )
}

/// Whether a flow entry goes by its own clock. (A `nat` flow whose client is silent while its
/// target talks, UDP server pushes, is kept by its translation: see [`sweep`].)
pub fn flow_expired(flow: &Flow, now_ns: u64, pressure: bool) -> bool {
    let f = if pressure {
        expired_under_pressure
    } else {
        expired
    };
    f(
        flow.state,
        flow.protocol,
        flow.last_seen_ns,
        flow.idle_timeout_s,
        now_ns,
    )
}

/// The translation key of a `nat` flow (client key `key`, entry `flow`) on `target`.
pub fn reply_key(key: &FlowKey, flow: &Flow, target: &Target) -> FlowKey {
    FlowKey {
        src: target.addr,
        dst: target.snat_addr,
        src_port_be: if target.port_be == 0 {
            key.dst_port_be
        } else {
            target.port_be
        },
        dst_port_be: flow.nat_port_be,
        protocol: key.protocol,
        family: target.family,
        _pad: [0; 2],
    }
}

/// The client's flow key of a translation (reply key `key`).
pub fn client_key(key: &FlowKey, origin: &NatOrigin) -> FlowKey {
    FlowKey {
        src: origin.client,
        dst: origin.vip,
        src_port_be: origin.client_port_be,
        dst_port_be: origin.vip_port_be,
        protocol: key.protocol,
        family: key.family,
        _pad: [0; 2],
    }
}

fn is_origin(origin: &NatOrigin, key: &FlowKey) -> bool {
    origin.client == key.src
        && origin.vip == key.dst
        && origin.client_port_be == key.src_port_be
        && origin.vip_port_be == key.dst_port_be
}

/// The tables a sweep works on.
pub struct Tables<'a> {
    pub flows: &'a HashMap<MapData, FlowKey, Flow>,
    pub nat_replies: &'a HashMap<MapData, FlowKey, NatOrigin>,
    /// A target by id, for the translation of a `nat` flow.
    pub target: &'a dyn Fn(u32) -> Option<Target>,
}

/// One sweep at `now_ns` (CLOCK_MONOTONIC, the XDP program's clock).
pub fn sweep(sweeper: &mut Sweeper, tables: &Tables<'_>, now_ns: u64) -> std::io::Result<()> {
    let flows_fd = tables.flows.map().fd().as_fd();
    let nat_fd = tables.nat_replies.map().fd().as_fd();
    let capacity = tables.flows.map().info().map_or(0, |i| i.max_entries());

    // Translations first: an expired one takes its flow entry along.
    let mut keys = vec![FlowKey::default(); BATCH];
    if !sweeper.translations_walked {
        let mut origins = vec![NatOrigin::default(); BATCH];
        let mut seen = 0;
        loop {
            let (read, next) =
                batch::lookup(nat_fd, sweeper.translations, &mut keys, &mut origins)?;
            for (key, origin) in keys[..read].iter().zip(&origins[..read]) {
                if sweep_translation(sweeper, tables, key, origin, now_ns)? {
                    continue;
                }
                sweeper.partial.nat_translations += 1;
                *sweeper
                    .partial
                    .nat_translations_by_target
                    .entry(origin.target_id)
                    .or_default() += 1;
            }
            seen += read;
            sweeper.translations = next;
            if next.at_start() {
                sweeper.translations_walked = true;
                break;
            }
            if seen >= BUDGET {
                break;
            }
        }
    }
    if !sweeper.flows_walked {
        let mut flows = vec![Flow::default(); BATCH];
        let mut seen = 0;
        loop {
            let (read, next) = batch::lookup(flows_fd, sweeper.flows, &mut keys, &mut flows)?;
            for (key, flow) in keys[..read].iter().zip(&flows[..read]) {
                if sweep_flow(sweeper, tables, key, flow, now_ns)? {
                    continue;
                }
                sweeper.partial.flows += 1;
            }
            seen += read;
            sweeper.flows = next;
            if next.at_start() {
                sweeper.flows_walked = true;
                break;
            }
            if seen >= BUDGET {
                break;
            }
        }
    }
    if sweeper.translations_walked && sweeper.flows_walked {
        let expired_flows = sweeper.last.expired_flows + sweeper.partial.expired_flows;
        let expired_translations =
            sweeper.last.expired_translations + sweeper.partial.expired_translations;
        sweeper.last = TableCounts {
            expired_flows,
            expired_translations,
            ..std::mem::take(&mut sweeper.partial)
        };
        sweeper.complete = true;
        sweeper.translations_walked = false;
        sweeper.flows_walked = false;
        sweeper.pressure =
            capacity > 0 && sweeper.last.flows as f64 >= PRESSURE * f64::from(capacity);
    }
    Ok(())
}

/// Deletes an expired translation (and its flow entry); true if it went.
fn sweep_translation(
    sweeper: &mut Sweeper,
    tables: &Tables<'_>,
    key: &FlowKey,
    origin: &NatOrigin,
    now_ns: u64,
) -> std::io::Result<bool> {
    if !translation_expired(origin, now_ns, sweeper.pressure) {
        return Ok(false);
    }
    // Read again just before deleting: a packet may have refreshed it since the batch was
    // read. (What remains is a window of microseconds.)
    let current = tables.nat_replies.get(key, 0).ok();
    if !current.is_some_and(|o| translation_expired(&o, now_ns, sweeper.pressure)) {
        return Ok(false);
    }
    batch::delete(tables.nat_replies.map().fd().as_fd(), key)?;
    sweeper.partial.expired_translations += 1;
    let client = client_key(key, origin);
    if let Ok(flow) = tables.flows.get(&client, 0) {
        if flow.nat_port_be == key.dst_port_be && flow.target_id == origin.target_id {
            batch::delete(tables.flows.map().fd().as_fd(), &client)?;
            sweeper.partial.expired_flows += 1;
        }
    }
    Ok(true)
}

/// Deletes an expired flow entry; true if it went.
fn sweep_flow(
    sweeper: &mut Sweeper,
    tables: &Tables<'_>,
    key: &FlowKey,
    flow: &Flow,
    now_ns: u64,
) -> std::io::Result<bool> {
    if !flow_expired(flow, now_ns, sweeper.pressure)
        || kept_by_translation(key, flow, tables, now_ns)
    {
        return Ok(false);
    }
    let current = tables.flows.get(key, 0).ok();
    if !current.is_some_and(|f| flow_expired(&f, now_ns, sweeper.pressure)) {
        return Ok(false);
    }
    batch::delete(tables.flows.map().fd().as_fd(), key)?;
    sweeper.partial.expired_flows += 1;
    Ok(true)
}

/// A `nat` flow whose own clock says expired, but whose translation is its own and alive: the
/// target talks while the client is silent (UDP pushes). It stays.
fn kept_by_translation(key: &FlowKey, flow: &Flow, tables: &Tables<'_>, now_ns: u64) -> bool {
    if flow.nat_port_be == 0 {
        return false;
    }
    let Some(target) = (tables.target)(flow.target_id) else {
        return false;
    };
    match tables.nat_replies.get(&reply_key(key, flow, &target), 0) {
        Ok(origin) => is_origin(&origin, key) && !translation_expired(&origin, now_ns, false),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::flow::{STATE_ANSWERED, STATE_FIN_CLIENT};

    const S: u64 = 1_000_000_000;

    fn origin(state: u8, protocol: u8, last_seen_ns: u64, idle_timeout_s: u16) -> NatOrigin {
        NatOrigin {
            state,
            protocol,
            last_seen_ns,
            idle_timeout_s,
            ..NatOrigin::default()
        }
    }

    #[test]
    fn idle_translations_expire_after_their_listeners_timeout() {
        let o = origin(STATE_ANSWERED, 6, 10 * S, 7);
        assert!(!translation_expired(&o, 16 * S, false));
        assert!(translation_expired(&o, 17 * S, false));
    }

    #[test]
    fn pressure_takes_closing_and_half_open_entries_first() {
        let closing = origin(STATE_ANSWERED | STATE_FIN_CLIENT, 6, 10 * S, 350);
        assert!(!translation_expired(&closing, 12 * S, false));
        assert!(translation_expired(&closing, 12 * S, true));
        let live = origin(STATE_ANSWERED, 6, 10 * S, 350);
        assert!(!translation_expired(&live, 300 * S, true));
    }

    #[test]
    fn keys_of_both_directions_fit_each_other() {
        let client = FlowKey {
            src: [10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            dst: [10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            src_port_be: 40000u16.to_be(),
            dst_port_be: 80u16.to_be(),
            protocol: 6,
            family: 4,
            _pad: [0; 2],
        };
        let flow = Flow {
            nat_port_be: 5000u16.to_be(),
            ..Flow::default()
        };
        let target = Target {
            addr: [10, 1, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            snat_addr: [10, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            port_be: 0,
            family: 4,
            ..Target::default()
        };
        let reply = reply_key(&client, &flow, &target);
        assert_eq!(reply.src_port_be, 80u16.to_be(), "port 0: the VIP's port");
        let back = NatOrigin {
            client: client.src,
            vip: client.dst,
            client_port_be: client.src_port_be,
            vip_port_be: client.dst_port_be,
            ..NatOrigin::default()
        };
        assert_eq!(client_key(&reply, &back), client);
        assert!(is_origin(&back, &client));
    }
}
