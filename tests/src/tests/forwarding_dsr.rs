//! `dsr` mode through `BPF_PROG_TEST_RUN`: byte-exact output, flow stickiness, counters.

use std::net::SocketAddr;

use crate::{checksum, packet::Frame};
use lb_common::{
    listener::{ForwardingMode, HashKey},
    stats::Counter,
    target::{TARGET_DRAINING, TARGET_GONE},
};

use super::{
    l4_fixture::*,
    packet_harness::{hex, XDP_DROP, XDP_PASS, XDP_TX},
};

const TCP: u8 = 6;
const UDP: u8 = 17;

fn dsr_fixture(vip: SocketAddr, protocol: u8, targets: u8) -> L4Fixture {
    let mut f = L4Fixture::new();
    f.listener(0, vip, protocol, ForwardingMode::Dsr, HashKey::FiveTuple);
    for i in 0..targets {
        let addr: SocketAddr = if vip.is_ipv4() {
            (target_v4(i), vip.port()).into()
        } else {
            (target_v6(i), vip.port()).into()
        };
        f.target(u32::from(i), addr);
    }
    let ids: Vec<(u32, u32)> = (0..targets).map(|i| (u32::from(i), 1)).collect();
    f.table(0, &ids);
    f
}

/// Which target a DSR output frame went to, by its destination MAC.
fn target_of(output: &[u8]) -> u8 {
    let mac: [u8; 6] = output[..6].try_into().unwrap();
    (0..8)
        .find(|&i| target_mac(i) == mac)
        .unwrap_or_else(|| panic!("{} is not a target MAC", hex(&mac)))
}

#[test]
fn dsr_rewrites_only_the_macs_ipv4_tcp() {
    let vip = SocketAddr::from((VIP_V4, 80));
    let mut f = dsr_fixture(vip, TCP, 3);
    let input = L4Fixture::inbound(Frame::tcp((CLIENT_V4, 40000), vip).syn()).build();
    let run = f.run(&input);
    assert_eq!(run.action, XDP_TX, "moved {:?}", run.moved());
    assert_eq!(run.outcome(), Counter::ForwardDsr);
    let target = target_of(&run.output);
    let mut expected = input.clone();
    expected[..6].copy_from_slice(&target_mac(target));
    expected[6..12].copy_from_slice(&LB_MAC);
    assert_eq!(hex(&run.output), hex(&expected));
    checksum::verify(&run.output).unwrap();
    assert!(run.moved().iter().any(|(c, _)| *c == Counter::FlowCreated));
}

#[test]
fn dsr_ipv6_udp_sticks_to_its_target_and_spreads_flows() {
    let vip = SocketAddr::from((VIP_V6, 53));
    let mut f = dsr_fixture(vip, UDP, 3);
    let mut seen = [0u32; 3];
    for port in 0..60u16 {
        let input =
            L4Fixture::inbound(Frame::udp((CLIENT_V6, 20000 + port), vip).payload(b"q")).build();
        let first = f.run(&input);
        assert_eq!(first.outcome(), Counter::ForwardDsr);
        let target = target_of(&first.output);
        seen[target as usize] += 1;
        // The same flow again: same target, from the flow table (no new entry).
        let again = f.run(&input);
        assert_eq!(target_of(&again.output), target);
        assert!(!again
            .moved()
            .iter()
            .any(|(c, _)| *c == Counter::FlowCreated));
    }
    assert!(
        seen.iter().all(|&n| n > 5),
        "60 flows over 3 targets: {seen:?}"
    );
}

#[test]
fn established_flows_stay_on_a_draining_target_and_rehash_when_it_is_gone() {
    let vip = SocketAddr::from((VIP_V4, 80));
    let mut f = dsr_fixture(vip, TCP, 3);
    let syn = L4Fixture::inbound(Frame::tcp((CLIENT_V4, 41000), vip).syn()).build();
    let ack = L4Fixture::inbound(Frame::tcp((CLIENT_V4, 41000), vip).ack()).build();
    let target = target_of(&f.run(&syn).output);
    let remaining: Vec<(u32, u32)> = (0..3u32)
        .filter(|&i| i != u32::from(target))
        .map(|i| (i, 1))
        .collect();

    // Draining: out of the table, but the flow keeps its target.
    let mut drained = f.maps.targets.get(&u32::from(target), 0).unwrap();
    drained.state = TARGET_DRAINING;
    f.target_with(u32::from(target), drained);
    f.table(0, &remaining);
    assert_eq!(target_of(&f.run(&ack).output), target);

    // Gone: the flow is re-hashed onto a remaining target.
    drained.state = TARGET_GONE;
    f.target_with(u32::from(target), drained);
    let run = f.run(&ack);
    assert_ne!(target_of(&run.output), target);
    assert!(run.moved().iter().any(|(c, _)| *c == Counter::FlowRehashed));
}

#[test]
fn non_syn_tcp_without_a_flow_is_forwarded_but_not_remembered() {
    let vip = SocketAddr::from((VIP_V4, 80));
    let mut f = dsr_fixture(vip, TCP, 2);
    let ack = L4Fixture::inbound(Frame::tcp((CLIENT_V4, 42000), vip).ack()).build();
    let run = f.run(&ack);
    assert_eq!(run.outcome(), Counter::ForwardDsr);
    let moved: Vec<Counter> = run.moved().iter().map(|(c, _)| *c).collect();
    assert!(moved.contains(&Counter::FlowMissNonSyn));
    assert!(!moved.contains(&Counter::FlowCreated));
}

#[test]
fn a_listener_without_targets_drops_and_other_ports_pass() {
    let vip = SocketAddr::from((VIP_V4, 80));
    let mut f = L4Fixture::new();
    f.listener(0, vip, TCP, ForwardingMode::Dsr, HashKey::FiveTuple);
    f.table(0, &[]);
    let run = f.run(&L4Fixture::inbound(Frame::tcp((CLIENT_V4, 40000), vip).syn()).build());
    assert_eq!(
        (run.action, run.outcome()),
        (XDP_DROP, Counter::DropNoTarget)
    );
    let other_port = L4Fixture::inbound(Frame::tcp((CLIENT_V4, 40000), (VIP_V4, 81)).syn()).build();
    let run = f.run(&other_port);
    run.assert_passed_unchanged(&other_port, &[Counter::PassNoListener]);
    assert_eq!(run.action, XDP_PASS);
}

#[test]
fn a_new_connection_reusing_a_draining_flows_tuple_avoids_the_draining_target() {
    let vip = SocketAddr::from((VIP_V4, 80));
    let mut f = dsr_fixture(vip, TCP, 3);
    let syn = L4Fixture::inbound(Frame::tcp((CLIENT_V4, 43000), vip).syn()).build();
    let target = target_of(&f.run(&syn).output);
    let remaining: Vec<(u32, u32)> = (0..3u32)
        .filter(|&i| i != u32::from(target))
        .map(|i| (i, 1))
        .collect();
    let mut drained = f.maps.targets.get(&u32::from(target), 0).unwrap();
    drained.state = TARGET_DRAINING;
    f.target_with(u32::from(target), drained);
    f.table(0, &remaining);
    // The old connection's packets still reach the draining target...
    let ack = L4Fixture::inbound(Frame::tcp((CLIENT_V4, 43000), vip).ack()).build();
    assert_eq!(target_of(&f.run(&ack).output), target);
    // ...but a bare SYN with the same 5-tuple is a new connection and goes elsewhere.
    let run = f.run(&syn);
    assert_ne!(target_of(&run.output), target);
    assert!(run.moved().iter().any(|(c, _)| *c == Counter::FlowRehashed));
}

#[test]
fn a_port_zero_listener_matches_every_port_of_its_address() {
    let mut f = L4Fixture::new();
    f.listener(
        0,
        SocketAddr::from((VIP_V4, 0)),
        TCP,
        ForwardingMode::Dsr,
        HashKey::FiveTuple,
    );
    f.target(0, SocketAddr::from((target_v4(0), 0)));
    f.table(0, &[(0, 1)]);
    for port in [1, 80, 443, 65535] {
        let frame =
            L4Fixture::inbound(Frame::tcp((CLIENT_V4, 40000), (VIP_V4, port)).syn()).build();
        let run = f.run(&frame);
        assert_eq!(
            (run.action, run.outcome()),
            (XDP_TX, Counter::ForwardDsr),
            "port {port}"
        );
    }
    // Another protocol on the same address is not this listener's.
    let udp = L4Fixture::inbound(Frame::udp((CLIENT_V4, 40000), (VIP_V4, 80))).build();
    f.run(&udp)
        .assert_passed_unchanged(&udp, &[Counter::PassNoListener]);
}

#[test]
fn the_flood_gate_keeps_new_flows_out_of_the_table_but_forwards_them() {
    let vip = SocketAddr::from((VIP_V4, 80));
    let mut f = dsr_fixture(vip, TCP, 2);
    f.maps
        .set_config(&lb_common::config::Config {
            max_new_flows_per_cpu: 3,
            ..Default::default()
        })
        .unwrap();
    // The gate is per CPU: keep every run on one CPU (threads inherit the affinity).
    // SAFETY: sched_setaffinity on the calling thread with a valid, initialised cpu set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set),
            0
        );
    }
    let mut created = 0;
    let mut gated = 0;
    for port in 0..10u16 {
        let syn = L4Fixture::inbound(Frame::tcp((CLIENT_V4, 30000 + port), vip).syn()).build();
        let run = f.run(&syn);
        assert_eq!(run.outcome(), Counter::ForwardDsr);
        let moved: Vec<Counter> = run.moved().iter().map(|(c, _)| *c).collect();
        created += moved.contains(&Counter::FlowCreated) as u32;
        gated += moved.contains(&Counter::FloodGated) as u32;
    }
    // Three admitted per one-second window, the rest gated; the ten runs take well under a
    // second, but may straddle one window boundary.
    assert!(
        (3..=6).contains(&created),
        "created {created}, gated {gated}"
    );
    assert_eq!(created + gated, 10);
    assert_eq!(f.maps.flows().count() as u32, created);
}

#[test]
fn dsr_output_is_byte_exact_for_both_families_and_protocols() {
    for (vip, client) in [
        (
            SocketAddr::from((VIP_V4, 80)),
            SocketAddr::from((CLIENT_V4, 40001)),
        ),
        (
            SocketAddr::from((VIP_V6, 80)),
            SocketAddr::from((CLIENT_V6, 40001)),
        ),
    ] {
        for protocol in [TCP, UDP] {
            let mut f = dsr_fixture(vip, protocol, 3);
            let frame = if protocol == TCP {
                Frame::tcp(client, vip).syn().payload(b"hello")
            } else {
                Frame::udp(client, vip).payload(b"hello")
            };
            let input = L4Fixture::inbound(frame).build();
            let run = f.run(&input);
            assert_eq!(
                (run.action, run.outcome()),
                (XDP_TX, Counter::ForwardDsr),
                "{vip} {protocol}"
            );
            let target = target_of(&run.output);
            let mut expected = input.clone();
            expected[..6].copy_from_slice(&target_mac(target));
            expected[6..12].copy_from_slice(&LB_MAC);
            assert_eq!(hex(&run.output), hex(&expected), "{vip} {protocol}");
            checksum::verify(&run.output).unwrap();
        }
    }
}
