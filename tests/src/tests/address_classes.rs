//! The address classes (`ADDRESSES`): a packet looks up `NAT_REPLIES` only when its
//! destination may be a `nat` source address, and `LISTENERS` only for the kinds of listener
//! its address may have. Checked through `BPF_PROG_TEST_RUN` with the maps written by
//! `Maps`, as the controller writes them.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use lb_common::{
    addr::{address_bucket, ip_to_bytes, CLASS_LISTENER, FAMILY_V4},
    flow::NatOrigin,
    listener::{ForwardingMode, HashKey, ListenerKey},
    stats::Counter,
    target::{Target, TARGET_ACTIVE},
};

use super::{
    forwarding_nat::{nat_fixture, reply_key, response, target_addr, target_of, TCP, UDP},
    l4_fixture::*,
    packet_harness::{hex, XDP_PASS, XDP_TX},
};
use crate::packet::Frame;

/// An address of the load balancer's that no target uses as its source.
const OTHER_LB_V4: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 2);
const NAT_PORT: u16 = 40_000;

/// A translation to an address outside the set of source addresses is not looked for: the
/// reply passes to the kernel untouched. Once a target uses that address as its source, the
/// same reply is translated.
#[test]
fn a_reply_to_an_address_no_target_uses_passes_untouched() {
    let vip: SocketAddr = (VIP_V4, 80).into();
    let mut f = nat_fixture(vip, TCP, 1);
    let target = target_addr(vip, 0);
    // Planted by hand: the data plane itself only translates to its targets' sources.
    let client: SocketAddr = (CLIENT_V4, 5555).into();
    f.maps
        .nat_replies
        .insert(
            reply_key(target, OTHER_LB_V4.into(), NAT_PORT, TCP),
            NatOrigin {
                client: ip_to_bytes(client.ip()).0,
                vip: ip_to_bytes(vip.ip()).0,
                client_port_be: client.port().to_be(),
                vip_port_be: vip.port().to_be(),
                protocol: TCP,
                ..NatOrigin::default()
            },
            0,
        )
        .unwrap();
    let reply = L4Fixture::inbound(response(TCP, target, (OTHER_LB_V4, NAT_PORT).into())).build();

    let run = f.run(&reply);
    assert_eq!(run.action, XDP_PASS, "moved {:?}", run.moved());
    assert_eq!(run.outcome(), Counter::PassNoListener);
    assert_eq!(hex(&run.output), hex(&reply), "passed untouched");

    f.target_with(
        1,
        Target {
            addr: ip_to_bytes(target_v4(1).into()).0,
            snat_addr: ip_to_bytes(OTHER_LB_V4.into()).0,
            port_be: target.port().to_be(),
            family: FAMILY_V4,
            state: TARGET_ACTIVE,
            _pad: [0; 4],
        },
    );
    let run = f.run(&reply);
    assert_eq!(run.action, XDP_TX, "moved {:?}", run.moved());
    assert_eq!(run.outcome(), Counter::NatReply);
}

/// A SYN from a client port of its own (a flow entry of an earlier one would decide).
fn dsr_syn(f: &mut L4Fixture, client_port: u16, dst: SocketAddr) -> (u32, Vec<u8>) {
    let frame = Frame::tcp(SocketAddr::from((CLIENT_V4, client_port)), dst)
        .syn()
        .mss(1460);
    let run = f.run(&L4Fixture::inbound(frame).build());
    (run.action, run.output)
}

/// An address with a listener on a port and one on every port: each port finds its listener
/// (the port's first), and after removals the remaining ones still match while the removed
/// kind passes; the address's class bits follow.
#[test]
fn port_and_all_ports_listeners_of_one_address() {
    let mut f = L4Fixture::new();
    let vip = |port| SocketAddr::new(IpAddr::V4(VIP_V4), port);
    f.listener(0, vip(80), TCP, ForwardingMode::Dsr, HashKey::FiveTuple);
    f.listener(1, vip(0), TCP, ForwardingMode::Dsr, HashKey::FiveTuple);
    // Another address with an all-ports listener only.
    let other_vip = SocketAddr::new(Ipv4Addr::new(10, 210, 0, 2).into(), 0);
    f.listener(2, other_vip, UDP, ForwardingMode::Dsr, HashKey::FiveTuple);
    for i in 0..2 {
        f.target(u32::from(i), (target_v4(i), 0).into());
    }
    f.table(0, &[(0, 1)]);
    f.table(1, &[(1, 1)]);
    f.table(2, &[(1, 1)]);

    let (action, out) = dsr_syn(&mut f, 5001, vip(80));
    assert_eq!(
        (action, target_of(&out)),
        (XDP_TX, 0),
        "port 80: its own listener"
    );
    let (action, out) = dsr_syn(&mut f, 5002, vip(8080));
    assert_eq!(
        (action, target_of(&out)),
        (XDP_TX, 1),
        "port 8080: all ports"
    );
    let udp = Frame::udp(
        SocketAddr::from((CLIENT_V4, 4321)),
        SocketAddr::new(other_vip.ip(), 53),
    )
    .payload(b"q");
    let run = f.run(&L4Fixture::inbound(udp).build());
    assert_eq!((run.action, target_of(&run.output)), (XDP_TX, 1));

    let key = |port: u16| ListenerKey {
        addr: ip_to_bytes(VIP_V4.into()).0,
        port_be: port.to_be(),
        protocol: TCP,
        family: FAMILY_V4,
    };
    f.maps.remove_listener(&key(80)).unwrap();
    let (action, out) = dsr_syn(&mut f, 5003, vip(80));
    assert_eq!(
        (action, target_of(&out)),
        (XDP_TX, 1),
        "port 80: now all ports"
    );

    f.maps.remove_listener(&key(0)).unwrap();
    let (action, _) = dsr_syn(&mut f, 5004, vip(8080));
    assert_eq!(action, XDP_PASS, "no TCP listener is left on the address");
    // Only the address's ICMP entry is left.
    let bucket = address_bucket(&ip_to_bytes(VIP_V4.into()).0);
    let class = f.maps.addresses.get(&bucket, 0).unwrap();
    assert_eq!(
        class, CLASS_LISTENER,
        "class bits of the bucket: {class:#b}"
    );
}

/// Each CPU remembers the listeners it found (`LISTENER_CACHE`), yet a listener changed or
/// removed in `LISTENERS` reaches the very next packet, also within the same kernel tick: the
/// cache holds an entry only under the count of `LISTENERS` writes it was read under. One
/// listener's mode flips between `dsr` and `tunnel` (the same id) and every next SYN follows
/// it; removed, its next SYN passes while another port of the address keeps the address's
/// class bits (so the packet still asks).
#[test]
fn a_listener_change_reaches_the_next_packet() {
    let mut f = L4Fixture::new();
    let vip = |port| SocketAddr::new(IpAddr::V4(VIP_V4), port);
    f.listener(0, vip(80), TCP, ForwardingMode::Dsr, HashKey::FiveTuple);
    f.listener(1, vip(81), TCP, ForwardingMode::Dsr, HashKey::FiveTuple);
    f.target(0, (target_v4(0), 0).into());
    f.table(0, &[(0, 1)]);
    f.table(1, &[(0, 1)]);
    let key = ListenerKey {
        addr: ip_to_bytes(VIP_V4.into()).0,
        port_be: 80u16.to_be(),
        protocol: TCP,
        family: FAMILY_V4,
    };
    let syn = |port: u16| {
        L4Fixture::inbound(
            Frame::tcp(SocketAddr::from((CLIENT_V4, port)), vip(80))
                .syn()
                .mss(1460),
        )
        .build()
    };
    let mut wrong = Vec::new();
    for round in 0..40u16 {
        let mode = if round % 2 == 0 {
            ForwardingMode::Tunnel
        } else {
            ForwardingMode::Dsr
        };
        // Asked once under the old mode, so that this CPU has it cached.
        let cached = f.run(&syn(7000 + 2 * round));
        f.maps
            .set_listener(
                &key,
                &lb_common::listener::Listener {
                    id: 0,
                    mode: mode as u8,
                    hash_key: HashKey::FiveTuple as u8,
                    idle_timeout_s: 0,
                },
            )
            .unwrap();
        let frame = syn(7001 + 2 * round);
        let run = f.run(&frame);
        // IPIP adds an outer IPv4 header; dsr only rewrites the MACs.
        let tunnelled = run.output.len() == frame.len() + 20;
        if run.action != XDP_TX || tunnelled != (mode == ForwardingMode::Tunnel) {
            wrong.push((round, mode, run.action, run.output.len(), cached.action));
        }
    }
    assert!(
        wrong.is_empty(),
        "packets that missed the change (round, mode, action, length, action before): {wrong:?}"
    );

    f.run(&syn(6000));
    f.maps.remove_listener(&key).unwrap();
    let frame = syn(6001);
    let run = f.run(&frame);
    assert_eq!(run.action, XDP_PASS, "moved {:?}", run.moved());
    assert_eq!(hex(&run.output), hex(&frame), "passed untouched");
    let (action, _) = dsr_syn(&mut f, 6002, vip(81));
    assert_eq!(action, XDP_TX, "port 81 is still served");
}
