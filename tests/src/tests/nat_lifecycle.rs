//! The life cycle of `nat` state through `BPF_PROG_TEST_RUN`: only a SYN (or a UDP datagram)
//! allocates; TCP states move with the segments of both directions; a closed connection loses
//! its flow entry and translation at once, so its port is free; half-open and idle
//! translations are reclaimed when they expire; a live one never is; a full table refuses new
//! connections (`nat`) or forwards them without an entry (`dsr`). Every forwarded frame is checked byte for
//! byte, every drop by its outcome counter and by the maps it left untouched.

use std::net::SocketAddr;

use crate::{checksum, packet::Frame};
use lb_common::{
    config::Config,
    flow::{FlowKey, NatOrigin, STATE_ANSWERED, STATE_CLOSED, STATE_FIN_CLIENT, STATE_FIN_TARGET},
    listener::{ForwardingMode, HashKey},
    stats::Counter,
};
use sluice::dataplane::load::MapSizes;

use super::{
    forwarding_nat::{
        client, forward_new, lb_addr, moved, nat_fixture, reply_key, request, src_port_of,
        target_addr, TARGET_PORT, TCP, UDP,
    },
    l4_fixture::*,
    packet_harness::{hex, RunResult, XDP_DROP, XDP_TX},
};

/// One `nat` connection under test: its client, target and allocated port.
struct Conn {
    vip: SocketAddr,
    client: SocketAddr,
    target: u8,
    port: u16,
}

impl Conn {
    /// Opens a connection with a SYN (checked byte for byte by `forward_new`).
    fn open(f: &mut L4Fixture, vip: SocketAddr, client_port: u16) -> Conn {
        let client = client(vip, client_port);
        let (target, port) = forward_new(f, &request(TCP, client, vip), vip);
        Conn {
            vip,
            client,
            target,
            port,
        }
    }

    fn reply_key(&self) -> FlowKey {
        reply_key(
            target_addr(self.vip, self.target),
            lb_addr(self.vip),
            self.port,
            TCP,
        )
    }

    fn translation(&self, f: &L4Fixture) -> Option<NatOrigin> {
        f.maps.nat_replies.get(&self.reply_key(), 0).ok()
    }

    fn state(&self, f: &L4Fixture) -> u8 {
        self.translation(f).expect("the translation").state
    }

    fn has_flow(&self, f: &L4Fixture) -> bool {
        f.maps
            .flows()
            .any(|(k, _)| k.src_port_be == self.client.port().to_be())
    }

    /// A client segment with `flags`; asserts it is forwarded, byte for byte.
    fn client_sends(&self, f: &mut L4Fixture, flags: u8) -> RunResult {
        let frame = Frame::tcp(self.client, self.vip).tcp_flags(flags).seq(100);
        let run = f.run(&L4Fixture::inbound(frame.clone()).build());
        assert_eq!(
            (run.action, run.outcome()),
            (XDP_TX, Counter::ForwardNat),
            "moved {:?}",
            run.moved()
        );
        let expected = frame
            .src_ip(lb_addr(self.vip))
            .src_port(self.port)
            .dst_ip(target_addr(self.vip, self.target).ip())
            .dst_port(TARGET_PORT)
            .src_mac(LB_MAC)
            .dst_mac(target_mac(self.target))
            .build();
        assert_eq!(hex(&run.output), hex(&expected));
        checksum::verify(&run.output).unwrap();
        run
    }

    /// A client segment with `flags` that must be dropped as `outcome`.
    fn client_sends_dropped(&self, f: &mut L4Fixture, flags: u8, outcome: Counter) -> RunResult {
        let frame = Frame::tcp(self.client, self.vip).tcp_flags(flags);
        let run = f.run(&L4Fixture::inbound(frame).build());
        assert_eq!(
            (run.action, run.outcome()),
            (XDP_DROP, outcome),
            "moved {:?}",
            run.moved()
        );
        run
    }

    /// A target segment with `flags`; asserts it is translated back, byte for byte.
    fn target_sends(&self, f: &mut L4Fixture, flags: u8) -> RunResult {
        let frame = Frame::tcp(
            target_addr(self.vip, self.target),
            SocketAddr::new(lb_addr(self.vip), self.port),
        )
        .tcp_flags(flags)
        .seq(7000);
        let input = frame
            .clone()
            .src_mac(target_mac(self.target))
            .dst_mac(LB_MAC)
            .build();
        let run = f.run(&input);
        assert_eq!(
            (run.action, run.outcome()),
            (XDP_TX, Counter::NatReply),
            "moved {:?}",
            run.moved()
        );
        let expected = frame
            .src_ip(self.vip.ip())
            .src_port(self.vip.port())
            .dst_ip(self.client.ip())
            .dst_port(self.client.port())
            .src_mac(LB_MAC)
            .dst_mac(GATEWAY_MAC)
            .build();
        assert_eq!(hex(&run.output), hex(&expected));
        checksum::verify(&run.output).unwrap();
        run
    }

    /// A segment from the target with `flags`, as it arrives.
    fn target_frame(&self, flags: u8) -> Vec<u8> {
        Frame::tcp(
            target_addr(self.vip, self.target),
            SocketAddr::new(lb_addr(self.vip), self.port),
        )
        .tcp_flags(flags)
        .src_mac(target_mac(self.target))
        .dst_mac(LB_MAC)
        .build()
    }

    /// Makes the translation look last seen long ago (as if `ago_s` seconds had passed).
    fn age(&self, f: &mut L4Fixture, ago_s: u64) {
        let mut origin = self.translation(f).expect("the translation");
        origin.last_seen_ns = origin.last_seen_ns.saturating_sub(ago_s * 1_000_000_000);
        f.maps
            .nat_replies
            .insert(self.reply_key(), origin, 0)
            .unwrap();
    }
}

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const FIN_ACK: u8 = 0x11;
const RST: u8 = 0x04;
const SYN_ACK: u8 = 0x12;

fn vip() -> SocketAddr {
    (VIP_V4, 80).into()
}

/// A fixture whose `nat` port range is the single port 5000: every new connection probes it.
fn one_port_fixture() -> L4Fixture {
    let mut f = nat_fixture(vip(), TCP, 1);
    f.maps
        .set_config(&Config {
            nat_port_min: 5000,
            nat_port_max: 5000,
            ..Config::default()
        })
        .unwrap();
    f
}

#[test]
fn nat_segments_without_state_are_dropped_and_allocate_nothing() {
    let mut f = nat_fixture(vip(), TCP, 2);
    for (i, flags) in [ACK, FIN_ACK, RST, SYN_ACK, 0x18 /* PSH|ACK */]
        .into_iter()
        .enumerate()
    {
        let frame = Frame::tcp(client(vip(), 44000 + i as u16), vip()).tcp_flags(flags);
        let run = f.run(&L4Fixture::inbound(frame).build());
        assert_eq!(
            (run.action, run.outcome()),
            (XDP_DROP, Counter::DropNoConnection),
            "flags {flags:#x}: moved {:?}",
            run.moved()
        );
        assert!(moved(&run, Counter::FlowMissNonSyn));
        assert!(!moved(&run, Counter::NatPortCollision));
    }
    assert_eq!(f.maps.nat_replies.iter().count(), 0, "a port was allocated");
    assert_eq!(f.maps.flows().count(), 0, "a flow entry was written");
}

#[test]
fn nat_connection_closed_by_the_client_frees_its_flow_entry() {
    let mut f = nat_fixture(vip(), TCP, 2);
    let c = Conn::open(&mut f, vip(), 45000);
    assert_eq!(c.state(&f), 0, "half-open after the SYN");
    c.target_sends(&mut f, SYN_ACK);
    assert_eq!(c.state(&f), STATE_ANSWERED);
    c.client_sends(&mut f, ACK);
    c.client_sends(&mut f, FIN_ACK);
    assert_eq!(c.state(&f), STATE_ANSWERED | STATE_FIN_CLIENT);
    c.target_sends(&mut f, ACK);
    let run = c.target_sends(&mut f, FIN_ACK);
    assert!(!moved(&run, Counter::ConnectionClosed));
    assert_eq!(
        c.state(&f),
        STATE_ANSWERED | STATE_FIN_CLIENT | STATE_FIN_TARGET
    );
    assert!(c.has_flow(&f));
    // The last ACK is translated, and closes: the flow entry and the translation go.
    let run = c.client_sends(&mut f, ACK);
    assert!(moved(&run, Counter::ConnectionClosed));
    assert!(!c.has_flow(&f));
    assert!(c.translation(&f).is_none());
    // Stragglers: the target's (a FIN retransmitted) goes to the kernel untouched, whose
    // reset ends the target's half; the client's has nothing left to go by.
    let late = c.target_frame(FIN_ACK);
    f.run(&late)
        .assert_passed_unchanged(&late, &[Counter::PassNoListener]);
    c.client_sends_dropped(&mut f, ACK, Counter::DropNoConnection);
    assert_eq!(f.maps.nat_replies.iter().count(), 0);
}

#[test]
fn nat_connection_closed_by_the_target_frees_its_flow_entry() {
    let mut f = nat_fixture(vip(), TCP, 2);
    let c = Conn::open(&mut f, vip(), 45100);
    c.target_sends(&mut f, SYN_ACK);
    c.client_sends(&mut f, ACK);
    c.target_sends(&mut f, FIN_ACK);
    c.client_sends(&mut f, ACK);
    c.client_sends(&mut f, FIN_ACK);
    assert!(c.has_flow(&f));
    // The target's last ACK is translated and closes, on the reply path.
    let run = c.target_sends(&mut f, ACK);
    assert!(moved(&run, Counter::ConnectionClosed));
    assert!(!c.has_flow(&f));
    assert!(c.translation(&f).is_none());
}

#[test]
fn nat_reset_either_way_closes() {
    let mut f = nat_fixture(vip(), TCP, 2);
    let by_client = Conn::open(&mut f, vip(), 45200);
    by_client.target_sends(&mut f, SYN_ACK);
    let run = by_client.client_sends(&mut f, RST);
    assert!(moved(&run, Counter::ConnectionClosed));
    assert!(!by_client.has_flow(&f));
    assert!(by_client.translation(&f).is_none());

    let by_target = Conn::open(&mut f, vip(), 45201);
    let run = by_target.target_sends(&mut f, RST);
    assert!(moved(&run, Counter::ConnectionClosed));
    assert!(!by_target.has_flow(&f));
    assert!(by_target.translation(&f).is_none());
    assert_eq!(f.maps.nat_replies.iter().count(), 0);
    assert_eq!(f.maps.flows().count(), 0);
}

#[test]
fn nat_a_closed_connections_port_goes_to_the_next_connection() {
    let mut f = one_port_fixture();
    let first = Conn::open(&mut f, vip(), 46000);
    assert_eq!(first.port, 5000);
    first.target_sends(&mut f, SYN_ACK);
    first.client_sends(&mut f, RST);

    let second = Conn::open(&mut f, vip(), 46001);
    assert_eq!(second.port, 5000);
    let origin = second.translation(&f).unwrap();
    assert_eq!(u16::from_be(origin.client_port_be), 46001);
    assert_eq!(origin.state, 0, "the new connection starts fresh");
    assert!(f.maps.flows().count() == 1);
    // The old connection's stragglers reach nothing.
    first.client_sends_dropped(&mut f, ACK, Counter::DropNoConnection);
}

#[test]
fn nat_port_reclaim_is_counted() {
    let mut f = one_port_fixture();
    let first = Conn::open(&mut f, vip(), 46100);
    first.age(&mut f, 11);
    let run = f.run(&L4Fixture::inbound(request(TCP, client(vip(), 46101), vip())).build());
    assert_eq!(run.outcome(), Counter::ForwardNat);
    assert!(moved(&run, Counter::NatPortReclaimed));
    assert!(moved(&run, Counter::FlowCreated));
}

#[test]
fn nat_a_live_connection_keeps_its_port_whatever_the_pressure() {
    let mut f = one_port_fixture();
    let live = Conn::open(&mut f, vip(), 46200);
    live.target_sends(&mut f, SYN_ACK);
    live.client_sends(&mut f, ACK);
    // Idle for a while, but well within the idle timeout (350 s).
    live.age(&mut f, 300);
    for port in 46201..46211 {
        let run = f.run(&L4Fixture::inbound(request(TCP, client(vip(), port), vip())).build());
        assert_eq!(
            (run.action, run.outcome()),
            (XDP_DROP, Counter::DropNatPortsExhausted)
        );
        assert!(!moved(&run, Counter::FlowCreated));
    }
    assert_eq!(f.maps.target_traffic(0).unwrap().port_allocation_errors, 10);
    assert_eq!(
        u16::from_be(live.translation(&f).unwrap().client_port_be),
        46200
    );
    // The server pushes after the idle spell: still translated.
    live.target_sends(&mut f, 0x18);
    live.client_sends(&mut f, ACK);
}

#[test]
fn nat_expired_translations_give_their_port_back() {
    // A SYN never answered: half-open, reclaimable after 10 s.
    let mut f = one_port_fixture();
    let half_open = Conn::open(&mut f, vip(), 46300);
    half_open.age(&mut f, 9);
    let run = f.run(&L4Fixture::inbound(request(TCP, client(vip(), 46301), vip())).build());
    assert_eq!(run.outcome(), Counter::DropNatPortsExhausted);
    half_open.age(&mut f, 2);
    let next = Conn::open(&mut f, vip(), 46302);
    assert_eq!(next.port, 5000);

    // An established connection idle past the listener's idle timeout (default 350 s).
    next.target_sends(&mut f, SYN_ACK);
    next.client_sends(&mut f, ACK);
    next.age(&mut f, 349);
    let run = f.run(&L4Fixture::inbound(request(TCP, client(vip(), 46303), vip())).build());
    assert_eq!(run.outcome(), Counter::DropNatPortsExhausted);
    next.age(&mut f, 2);
    let last = Conn::open(&mut f, vip(), 46304);
    assert_eq!(last.port, 5000);
}

#[test]
fn nat_listener_idle_timeout_is_the_entries() {
    let mut f = L4Fixture::new();
    f.listener_with_idle_timeout(0, vip(), TCP, ForwardingMode::Nat, 7);
    f.target(0, target_addr(vip(), 0));
    f.table(0, &[(0, 1)]);
    let c = Conn::open(&mut f, vip(), 46400);
    assert_eq!(c.translation(&f).unwrap().idle_timeout_s, 7);
    let (_, flow) = f.maps.flows().next().unwrap();
    assert_eq!((flow.idle_timeout_s, flow.protocol), (7, TCP));

    let mut f = nat_fixture(vip(), UDP, 1);
    let frame = request(UDP, client(vip(), 46401), vip());
    forward_new(&mut f, &frame, vip());
    let (_, origin) = f.maps.nat_replies.iter().next().unwrap().unwrap();
    assert_eq!(
        (origin.idle_timeout_s, origin.protocol),
        (lb_common::flow::DEFAULT_UDP_IDLE_TIMEOUT_S, UDP)
    );
}

#[test]
fn nat_a_retransmitted_syn_keeps_its_port() {
    let mut f = nat_fixture(vip(), TCP, 2);
    let c = Conn::open(&mut f, vip(), 46500);
    let run = f.run(&L4Fixture::inbound(request(TCP, c.client, vip())).build());
    assert_eq!(run.outcome(), Counter::ForwardNat);
    assert_eq!(
        src_port_of(&run.output, &request(TCP, c.client, vip())),
        c.port
    );
    assert_eq!(f.maps.nat_replies.iter().count(), 1);
}

#[test]
fn nat_a_new_syn_after_close_reopens_on_the_same_tuple() {
    let mut f = nat_fixture(vip(), TCP, 2);
    let c = Conn::open(&mut f, vip(), 46600);
    c.target_sends(&mut f, SYN_ACK);
    c.client_sends(&mut f, RST);
    assert!(!c.has_flow(&f));
    let again = Conn::open(&mut f, vip(), 46600);
    assert_eq!(again.state(&f), 0);
    assert!(again.has_flow(&f));
    assert_eq!(f.maps.nat_replies.iter().count(), 1);
}

#[test]
fn nat_flood_gate_drops_new_connections_without_allocating() {
    let mut f = nat_fixture(vip(), TCP, 2);
    f.maps
        .set_config(&Config {
            max_new_flows_per_cpu: 3,
            ..Config::default()
        })
        .unwrap();
    pin_to_cpu0();
    let mut created = 0;
    let mut gated = 0;
    for port in 0..10u16 {
        let run =
            f.run(&L4Fixture::inbound(request(TCP, client(vip(), 47000 + port), vip())).build());
        if run.outcome() == Counter::DropFloodGated {
            assert_eq!(run.action, XDP_DROP);
            assert!(moved(&run, Counter::FloodGated));
            gated += 1;
        } else {
            assert_eq!(run.outcome(), Counter::ForwardNat);
            created += 1;
        }
    }
    // Three admitted per one-second window; the runs may straddle one boundary.
    assert!(
        (3..=6).contains(&created),
        "created {created}, gated {gated}"
    );
    assert_eq!(f.maps.nat_replies.iter().count(), created);
    assert_eq!(f.maps.flows().count(), created);
}

/// The gate is per CPU: keep every run on one CPU (threads inherit the affinity).
fn pin_to_cpu0() {
    // SAFETY: sched_setaffinity on the calling thread with a valid, initialised cpu set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set),
            0
        );
    }
}

fn small_tables() -> MapSizes {
    MapSizes {
        flows: 4,
        ..MapSizes::default()
    }
}

#[test]
fn nat_a_full_flow_table_refuses_new_connections_and_keeps_live_ones() {
    let mut f = L4Fixture::with_sizes(small_tables());
    f.listener(0, vip(), TCP, ForwardingMode::Nat, HashKey::FiveTuple);
    f.target(0, target_addr(vip(), 0));
    f.table(0, &[(0, 1)]);
    let live: Vec<Conn> = (0..4)
        .map(|i| Conn::open(&mut f, vip(), 48000 + i))
        .collect();
    for c in &live {
        c.target_sends(&mut f, SYN_ACK);
    }
    let run = f.run(&L4Fixture::inbound(request(TCP, client(vip(), 48010), vip())).build());
    assert_eq!(
        (run.action, run.outcome()),
        (XDP_DROP, Counter::DropFlowTableFull)
    );
    assert_eq!(f.maps.nat_replies.iter().count(), 4);
    for c in &live {
        assert!(c.has_flow(&f));
        c.client_sends(&mut f, ACK);
        c.target_sends(&mut f, 0x18);
    }
    // One closes: its room goes to the next new connection.
    live[0].client_sends(&mut f, RST);
    let next = Conn::open(&mut f, vip(), 48011);
    assert!(next.has_flow(&f));
}

#[test]
fn dsr_a_full_flow_table_forwards_new_flows_without_an_entry() {
    let mut f = L4Fixture::with_sizes(small_tables());
    f.listener(0, vip(), TCP, ForwardingMode::Dsr, HashKey::FiveTuple);
    f.target(0, SocketAddr::new(target_v4(0).into(), 80));
    f.table(0, &[(0, 1)]);
    for port in 0..6u16 {
        let frame = Frame::tcp(client(vip(), 49000 + port), vip()).syn();
        let input = L4Fixture::inbound(frame.clone()).build();
        let run = f.run(&input);
        assert_eq!((run.action, run.outcome()), (XDP_TX, Counter::ForwardDsr));
        let expected = frame.src_mac(LB_MAC).dst_mac(target_mac(0)).build();
        assert_eq!(hex(&run.output), hex(&expected));
        assert_eq!(
            moved(&run, Counter::FlowTableFull),
            port >= 4,
            "port {port}"
        );
        assert_eq!(moved(&run, Counter::FlowCreated), port < 4, "port {port}");
    }
    assert_eq!(f.maps.flows().count(), 4);
}

#[test]
fn dsr_flow_entries_follow_the_clients_segments() {
    let mut f = L4Fixture::new();
    f.listener(0, vip(), TCP, ForwardingMode::Dsr, HashKey::FiveTuple);
    f.target(0, SocketAddr::new(target_v4(0).into(), 80));
    f.table(0, &[(0, 1)]);
    let client = client(vip(), 49100);
    let state = |f: &L4Fixture| f.maps.flows().next().map(|(_, flow)| flow.state);
    let send = |f: &mut L4Fixture, flags: u8| {
        let run = f.run(&L4Fixture::inbound(Frame::tcp(client, vip()).tcp_flags(flags)).build());
        assert_eq!(run.outcome(), Counter::ForwardDsr);
        run
    };
    send(&mut f, SYN);
    assert_eq!(state(&f), Some(0));
    send(&mut f, ACK);
    assert_eq!(state(&f), Some(STATE_ANSWERED));
    send(&mut f, FIN_ACK);
    assert_eq!(state(&f), Some(STATE_ANSWERED | STATE_FIN_CLIENT));
    let run = send(&mut f, RST);
    assert!(moved(&run, Counter::ConnectionClosed));
    assert_eq!(
        state(&f),
        Some(STATE_ANSWERED | STATE_FIN_CLIENT | STATE_CLOSED),
        "dsr entries linger until the sweep"
    );
}

/// With a range that divides 65,536 (where the old fixed stride made the eight probes
/// consecutive ports, and allocation failed from about 40% use), filling the range behaves
/// like independent random probes: the expected failures while filling a range of `n` ports
/// to a fraction `u` are about `n * u^9 / 9` (0.1 at half of 512 ports, 8.5 at three quarters
/// of 1,024).
#[test]
fn nat_probes_spread_over_a_power_of_two_range() {
    for (size, fill, most) in [(512u16, 256u16, 1u32), (1024, 768, 17)] {
        let mut f = nat_fixture(vip(), UDP, 1);
        f.maps
            .set_config(&Config {
                nat_port_min: 2048,
                nat_port_max: 2048 + size - 1,
                ..Config::default()
            })
            .unwrap();
        let mut failures = 0;
        for i in 0..fill {
            let frame = request(UDP, client(vip(), 20000 + i), vip());
            let run = f.run(&L4Fixture::inbound(frame).build());
            failures += (run.outcome() == Counter::DropNatPortsExhausted) as u32;
        }
        eprintln!("{size} ports filled to {fill}: {failures} failures");
        assert!(
            failures <= most,
            "{size} ports filled to {fill}: {failures} failures"
        );
        assert_eq!(
            f.maps.nat_replies.iter().count() as u32,
            u32::from(fill) - failures
        );
    }
}

/// The sweep's cost is bounded per call at any table size: a full table of 1,048,576 live
/// flows is walked in slices of at most `sweep::BUDGET` entries, each call well under the
/// one-second tick, and nothing live is deleted. The per-call times are printed: they are the
/// figure docs/OPERATING.md quotes.
#[test]
fn sweep_walks_a_million_flows_in_bounded_slices() {
    use sluice::dataplane::{sweep, Dataplane};
    let mut f = L4Fixture::new();
    let now = monotonic_ns();
    let capacity = sluice::dataplane::load::MapSizes::default().flows;
    for i in 0..capacity {
        let key = FlowKey {
            src: ip_bytes(i),
            dst: ip_bytes(0),
            src_port_be: 1000u16.to_be(),
            dst_port_be: 80u16.to_be(),
            protocol: TCP,
            family: lb_common::addr::FAMILY_V4,
            _pad: [0; 2],
        };
        let flow = lb_common::flow::Flow {
            state: STATE_ANSWERED,
            protocol: TCP,
            idle_timeout_s: 350,
            last_seen_ns: now,
            ..Default::default()
        };
        f.maps.flows.insert(key, flow, 0).unwrap();
    }
    // One call per slice, and one that finds the end.
    let slices = (capacity as usize).div_ceil(sweep::BUDGET);
    let mut calls = Vec::new();
    let counts = loop {
        assert!(
            calls.len() <= slices,
            "no complete walk after {} calls",
            calls.len()
        );
        let started = std::time::Instant::now();
        let counts = f.maps.sweep(monotonic_ns()).unwrap();
        calls.push(started.elapsed());
        if let Some(counts) = counts {
            break counts;
        }
    };
    eprintln!("sweep of {capacity} live flows: calls took {calls:?}");
    for took in &calls {
        assert!(took.as_millis() < 900, "a sweep call took {took:?}");
    }
    assert_eq!(counts.flows, u64::from(capacity));
    assert_eq!(counts.expired_flows, 0);
}

fn ip_bytes(i: u32) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    bytes[..4].copy_from_slice(&(0x0a00_0000 | i).to_be_bytes());
    bytes
}

fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes into `now`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}
