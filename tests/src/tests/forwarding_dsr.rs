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
