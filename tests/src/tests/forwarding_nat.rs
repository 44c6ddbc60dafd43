//! `nat` mode through `BPF_PROG_TEST_RUN`: byte-exact output both ways (client → target and
//! the target's reply → client), port allocation and reuse, port exhaustion, re-hashing, and
//! the translations left in `NAT_REPLIES`. The connection life cycle (states, closing,
//! reclaimed ports, refusals) is in `nat_lifecycle.rs`.

use std::net::{IpAddr, SocketAddr};

use crate::{checksum, packet::Frame};
use lb_common::{
    addr::ip_to_bytes,
    config::Config,
    flow::{FlowKey, NatOrigin},
    listener::{ForwardingMode, HashKey},
    stats::Counter,
    target::TARGET_GONE,
};

use super::{
    l4_fixture::*,
    packet_harness::{hex, RunResult, XDP_DROP, XDP_TX},
};

pub(super) const TCP: u8 = 6;
pub(super) const UDP: u8 = 17;
/// Targets listen here while the listener is on port 80: `nat` translates ports.
pub(super) const TARGET_PORT: u16 = 3000;

pub(super) fn nat_fixture(vip: SocketAddr, protocol: u8, targets: u8) -> L4Fixture {
    let mut f = L4Fixture::new();
    f.listener(0, vip, protocol, ForwardingMode::Nat, HashKey::FiveTuple);
    for i in 0..targets {
        f.target(u32::from(i), target_addr(vip, i));
    }
    let ids: Vec<(u32, u32)> = (0..targets).map(|i| (u32::from(i), 1)).collect();
    f.table(0, &ids);
    f
}

pub(super) fn target_addr(vip: SocketAddr, i: u8) -> SocketAddr {
    if vip.is_ipv4() {
        (target_v4(i), TARGET_PORT).into()
    } else {
        (target_v6(i), TARGET_PORT).into()
    }
}

/// The load balancer's address facing the targets (the fixture's snat address).
pub(super) fn lb_addr(vip: SocketAddr) -> IpAddr {
    if vip.is_ipv4() {
        LB_V4.into()
    } else {
        LB_V6.into()
    }
}

pub(super) fn client(vip: SocketAddr, port: u16) -> SocketAddr {
    if vip.is_ipv4() {
        (CLIENT_V4, port).into()
    } else {
        (CLIENT_V6, port).into()
    }
}

/// A first packet of a flow from `src` to `dst`: a TCP SYN or a UDP datagram.
pub(super) fn request(protocol: u8, src: SocketAddr, dst: SocketAddr) -> Frame {
    match protocol {
        TCP => Frame::tcp(src, dst).syn().mss(1460),
        _ => Frame::udp(src, dst).payload(b"what time is it?"),
    }
}

/// A target's answer from `src` to `dst`: a TCP SYN-ACK or a UDP datagram.
pub(super) fn response(protocol: u8, src: SocketAddr, dst: SocketAddr) -> Frame {
    match protocol {
        TCP => Frame::tcp(src, dst).syn().ack().ack_number(2).seq(7000),
        _ => Frame::udp(src, dst).payload(b"half past four"),
    }
}

/// Which target a frame went to, by its destination MAC.
pub(super) fn target_of(output: &[u8]) -> u8 {
    let mac: [u8; 6] = output[..6].try_into().unwrap();
    (0..8)
        .find(|&i| target_mac(i) == mac)
        .unwrap_or_else(|| panic!("{} is not a target MAC", hex(&mac)))
}

/// The source port of a frame laid out like `frame` (NAT changes no length).
pub(super) fn src_port_of(output: &[u8], frame: &Frame) -> u16 {
    let l4 = frame.layout().l4;
    u16::from_be_bytes([output[l4], output[l4 + 1]])
}

/// The `NAT_REPLIES` key of a reply from `target` to the load balancer's `port`.
pub(super) fn reply_key(target: SocketAddr, lb: IpAddr, port: u16, protocol: u8) -> FlowKey {
    let (src, family) = ip_to_bytes(target.ip());
    FlowKey {
        src,
        dst: ip_to_bytes(lb).0,
        src_port_be: target.port().to_be(),
        dst_port_be: port.to_be(),
        protocol,
        family,
        _pad: [0; 2],
    }
}

pub(super) fn moved(run: &RunResult, counter: Counter) -> bool {
    run.moved().iter().any(|(c, _)| *c == counter)
}

/// Forwards a new flow and checks the output byte for byte; returns the target and port.
pub(super) fn forward_new(f: &mut L4Fixture, frame: &Frame, vip: SocketAddr) -> (u8, u16) {
    let input = L4Fixture::inbound(frame.clone()).build();
    let run = f.run(&input);
    assert_eq!(run.action, XDP_TX, "moved {:?}", run.moved());
    assert_eq!(run.outcome(), Counter::ForwardNat);
    let target = target_of(&run.output);
    let port = src_port_of(&run.output, frame);
    let config = Config::default();
    assert!(
        (config.nat_port_min..=config.nat_port_max).contains(&port),
        "port {port} is outside the configured range"
    );
    let expected = frame
        .clone()
        .src_ip(lb_addr(vip))
        .src_port(port)
        .dst_ip(target_addr(vip, target).ip())
        .dst_port(TARGET_PORT)
        .src_mac(LB_MAC)
        .dst_mac(target_mac(target))
        .build();
    assert_eq!(hex(&run.output), hex(&expected));
    checksum::verify(&run.output).unwrap();
    (target, port)
}

/// A client's flow to the VIP and the target's answer, both translated, for each protocol and
/// family.
fn round_trip(vip: SocketAddr, protocol: u8) {
    let mut f = nat_fixture(vip, protocol, 3);
    let client = client(vip, 40000);
    let frame = request(protocol, client, vip);
    let (target, port) = forward_new(&mut f, &frame, vip);

    // The translation is recorded under the reply's 5-tuple.
    let key = reply_key(target_addr(vip, target), lb_addr(vip), port, protocol);
    let origin: NatOrigin = f.maps.nat_replies.get(&key, 0).unwrap();
    assert_eq!(origin.client, ip_to_bytes(client.ip()).0);
    assert_eq!(origin.vip, ip_to_bytes(vip.ip()).0);
    assert_eq!(
        (
            u16::from_be(origin.client_port_be),
            u16::from_be(origin.vip_port_be),
            origin.listener_id
        ),
        (40000, 80, 0)
    );

    // The same flow again: same target, same port, from the flow table.
    let again = f.run(&L4Fixture::inbound(frame.clone()).build());
    assert_eq!(again.outcome(), Counter::ForwardNat);
    assert_eq!(target_of(&again.output), target);
    assert_eq!(src_port_of(&again.output, &frame), port);
    assert!(!moved(&again, Counter::FlowCreated));

    // The target's answer goes back to the client, from the VIP, via the gateway.
    let answer = response(
        protocol,
        target_addr(vip, target),
        SocketAddr::new(lb_addr(vip), port),
    );
    let input = answer
        .clone()
        .src_mac(target_mac(target))
        .dst_mac(LB_MAC)
        .build();
    let run = f.run(&input);
    assert_eq!(run.action, XDP_TX, "moved {:?}", run.moved());
    assert_eq!(run.outcome(), Counter::NatReply);
    let expected = answer
        .src_ip(vip.ip())
        .src_port(vip.port())
        .dst_ip(client.ip())
        .dst_port(client.port())
        .src_mac(LB_MAC)
        .dst_mac(GATEWAY_MAC)
        .build();
    assert_eq!(hex(&run.output), hex(&expected));
    checksum::verify(&run.output).unwrap();

    // An "answer" to a port with no translation is not nat's: passed untouched.
    let stray = response(
        protocol,
        target_addr(vip, target),
        SocketAddr::new(lb_addr(vip), if port == 1024 { 1025 } else { port - 1 }),
    )
    .src_mac(target_mac(target))
    .dst_mac(LB_MAC)
    .build();
    f.run(&stray)
        .assert_passed_unchanged(&stray, &[Counter::PassNoListener]);
}

#[test]
fn nat_round_trip_ipv4_tcp() {
    round_trip((VIP_V4, 80).into(), TCP);
}

#[test]
fn nat_round_trip_ipv4_udp() {
    round_trip((VIP_V4, 80).into(), UDP);
}

#[test]
fn nat_round_trip_ipv6_tcp() {
    round_trip((VIP_V6, 80).into(), TCP);
}

#[test]
fn nat_round_trip_ipv6_udp() {
    round_trip((VIP_V6, 80).into(), UDP);
}

#[test]
fn nat_flows_get_their_own_ports() {
    let vip = SocketAddr::from((VIP_V4, 80));
    let mut f = nat_fixture(vip, TCP, 1);
    let mut ports = Vec::new();
    for i in 0..32 {
        let frame = request(TCP, client(vip, 41000 + i), vip);
        let (_, port) = forward_new(&mut f, &frame, vip);
        ports.push(port);
    }
    let mut distinct = ports.clone();
    distinct.sort();
    distinct.dedup();
    // One target: every translation has its own port, whatever the hash says.
    assert_eq!(distinct.len(), ports.len(), "ports {ports:?}");
    // And they are spread over the range, not handed out in sequence.
    assert!(
        distinct.windows(2).filter(|w| w[1] == w[0] + 1).count() < 8,
        "ports {distinct:?}"
    );
}

#[test]
fn nat_ports_exhausted_drops_new_flows_only() {
    let vip = SocketAddr::from((VIP_V4, 80));
    let mut f = nat_fixture(vip, UDP, 1);
    f.maps
        .set_config(&Config {
            nat_port_min: 5000,
            nat_port_max: 5000,
            ..Config::default()
        })
        .unwrap();
    let first = L4Fixture::inbound(request(UDP, client(vip, 40000), vip)).build();
    let run = f.run(&first);
    assert_eq!(run.outcome(), Counter::ForwardNat);
    assert_eq!(
        src_port_of(&run.output, &request(UDP, client(vip, 40000), vip)),
        5000
    );

    let second = L4Fixture::inbound(request(UDP, client(vip, 40001), vip)).build();
    let run = f.run(&second);
    assert_eq!(
        (run.action, run.outcome()),
        (XDP_DROP, Counter::DropNatPortsExhausted)
    );
    assert!(moved(&run, Counter::NatPortCollision));
    assert!(!moved(&run, Counter::FlowCreated));

    // Counted against the target (ELB's PortAllocationErrorCount).
    assert_eq!(f.maps.target_traffic(0).unwrap().port_allocation_errors, 1);

    // The established flow keeps its port.
    let run = f.run(&first);
    assert_eq!(run.outcome(), Counter::ForwardNat);
    assert!(!moved(&run, Counter::NatPortCollision));
}

#[test]
fn nat_rehash_moves_the_translation_to_the_new_target() {
    let vip = SocketAddr::from((VIP_V4, 80));
    let mut f = nat_fixture(vip, TCP, 3);
    let client = client(vip, 42000);
    let syn = request(TCP, client, vip);
    let (old_target, old_port) = forward_new(&mut f, &syn, vip);
    let old_key = reply_key(target_addr(vip, old_target), lb_addr(vip), old_port, TCP);
    assert!(f.maps.nat_replies.get(&old_key, 0).is_ok());

    let mut gone = f.maps.targets.get(&u32::from(old_target), 0).unwrap();
    gone.state = TARGET_GONE;
    f.target_with(u32::from(old_target), gone);
    let remaining: Vec<(u32, u32)> = (0..3u32)
        .filter(|&i| i != u32::from(old_target))
        .map(|i| (i, 1))
        .collect();
    f.table(0, &remaining);

    let ack = Frame::tcp(client, vip).ack();
    let run = f.run(&L4Fixture::inbound(ack.clone()).build());
    assert_eq!(run.outcome(), Counter::ForwardNat);
    assert!(moved(&run, Counter::FlowRehashed));
    let new_target = target_of(&run.output);
    assert_ne!(new_target, old_target);
    let new_port = src_port_of(&run.output, &ack);
    checksum::verify(&run.output).unwrap();

    assert!(
        f.maps.nat_replies.get(&old_key, 0).is_err(),
        "the old target's translation is still there"
    );
    let new_key = reply_key(target_addr(vip, new_target), lb_addr(vip), new_port, TCP);
    let origin = f.maps.nat_replies.get(&new_key, 0).unwrap();
    assert_eq!(u16::from_be(origin.client_port_be), 42000);
    let flow = f
        .maps
        .flows()
        .find(|(k, _)| k.src_port_be == 42000u16.to_be());
    let (_, flow) = flow.expect("the flow entry");
    assert_eq!(
        (flow.target_id, u16::from_be(flow.nat_port_be)),
        (u32::from(new_target), new_port)
    );

    // Late answers from the old target are no longer translated.
    let late = response(
        TCP,
        target_addr(vip, old_target),
        SocketAddr::new(lb_addr(vip), old_port),
    )
    .src_mac(target_mac(old_target))
    .dst_mac(LB_MAC)
    .build();
    f.run(&late)
        .assert_passed_unchanged(&late, &[Counter::PassNoListener]);
}

#[test]
fn nat_udp_ipv4_without_checksum_stays_without() {
    let vip = SocketAddr::from((VIP_V4, 80));
    let mut f = nat_fixture(vip, UDP, 2);
    let frame = request(UDP, client(vip, 40000), vip).l4_checksum(0);
    let (target, port) = forward_new(&mut f, &frame, vip);
    let l4 = frame.layout().l4;
    let out = f.run(&L4Fixture::inbound(frame.clone()).build()).output;
    assert_eq!(out[l4 + 6..l4 + 8], [0, 0]);

    let answer = response(
        UDP,
        target_addr(vip, target),
        SocketAddr::new(lb_addr(vip), port),
    )
    .l4_checksum(0);
    let run = f.run(
        &answer
            .clone()
            .src_mac(target_mac(target))
            .dst_mac(LB_MAC)
            .build(),
    );
    assert_eq!(run.outcome(), Counter::NatReply);
    let expected = answer
        .src_ip(vip.ip())
        .src_port(80)
        .dst_ip(CLIENT_V4.into())
        .dst_port(40000)
        .src_mac(LB_MAC)
        .dst_mac(GATEWAY_MAC)
        .build();
    assert_eq!(hex(&run.output), hex(&expected));
}

/// Replies carrying a VLAN tag are left to the kernel, like requests to a listener.
#[test]
fn nat_tagged_replies_are_passed() {
    let vip = SocketAddr::from((VIP_V4, 80));
    let mut f = nat_fixture(vip, UDP, 1);
    let (target, port) = forward_new(&mut f, &request(UDP, client(vip, 40000), vip), vip);
    let tagged = response(
        UDP,
        target_addr(vip, target),
        SocketAddr::new(lb_addr(vip), port),
    )
    .vlan(7)
    .build();
    f.run(&tagged)
        .assert_passed_unchanged(&tagged, &[Counter::PassVlanListener, Counter::VlanTagged]);
}

/// A target whose MAC is not resolved yet: the rewritten packet cannot be handed to the
/// kernel (its source is now the kernel's own address), so it is dropped.
#[test]
fn nat_unresolved_target_neighbour_drops() {
    let vip = SocketAddr::from((VIP_V4, 80));
    let mut f = L4Fixture::new();
    f.listener(0, vip, TCP, ForwardingMode::Nat, HashKey::FiveTuple);
    // On lb0's subnet, without a neighbour entry (the fixture has them for targets 0..8).
    f.target(0, target_addr(vip, 9));
    f.table(0, &[(0, 1)]);
    let run = f.run(&L4Fixture::inbound(request(TCP, client(vip, 40000), vip)).build());
    assert_eq!(
        (run.action, run.outcome()),
        (XDP_DROP, Counter::DropNeighborUnresolved)
    );
}
