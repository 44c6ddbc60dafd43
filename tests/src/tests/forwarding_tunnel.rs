//! `tunnel` mode through `BPF_PROG_TEST_RUN`: byte-exact output (a fresh Ethernet header, an
//! outer IPv4/IPv6 header to the target, the client's packet untouched), the outer source in
//! the configured prefix with the flow hash in its low bits, flow stickiness, counters, and
//! the round trip through `sluice_decap` back to the client's packet.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
};

use crate::{
    checksum,
    packet::{ether_type, ip_proto, Frame, Ip, Ipv4, Ipv6},
};
use lb_common::{
    config::Config,
    listener::{ForwardingMode, HashKey},
    stats::Counter,
};

use super::{
    decap::DecapHarness,
    l4_fixture::*,
    packet_harness::{hex, RunResult, XDP_TX},
};

const TCP: u8 = 6;
const UDP: u8 = 17;

/// A `tunnel` listener on `vip` with `targets` targets of the family `v6_targets` says.
fn tunnel_fixture(vip: SocketAddr, protocol: u8, targets: u8, v6_targets: bool) -> L4Fixture {
    let mut f = L4Fixture::new();
    f.listener(0, vip, protocol, ForwardingMode::Tunnel, HashKey::FiveTuple);
    for i in 0..targets {
        let ip: IpAddr = if v6_targets {
            target_v6(i).into()
        } else {
            target_v4(i).into()
        };
        f.target(u32::from(i), SocketAddr::new(ip, vip.port()));
    }
    let ids: Vec<(u32, u32)> = (0..targets).map(|i| (u32::from(i), 1)).collect();
    f.table(0, &ids);
    f
}

/// Which target an output frame went to, by its destination MAC.
fn target_of(output: &[u8]) -> u8 {
    let mac: [u8; 6] = output[..6].try_into().unwrap();
    (0..8)
        .find(|&i| target_mac(i) == mac)
        .unwrap_or_else(|| panic!("{} is not a target MAC", hex(&mac)))
}

/// The outer source address of a tunnelled frame.
fn outer_source(output: &[u8]) -> IpAddr {
    match u16::from_be_bytes([output[12], output[13]]) {
        ether_type::IPV4 => IpAddr::from(<[u8; 4]>::try_from(&output[26..30]).unwrap()),
        ether_type::IPV6 => IpAddr::from(<[u8; 16]>::try_from(&output[22..38]).unwrap()),
        other => panic!("outer EtherType {other:#06x} in {}", hex(output)),
    }
}

/// The inner packet's TOS / traffic class, DF bit and IPv4 identification.
fn inner_fields(inner: &[u8]) -> (u8, bool, u16) {
    if inner[14] >> 4 == 4 {
        let frags = u16::from_be_bytes([inner[20], inner[21]]);
        (
            inner[15],
            frags & 0x4000 != 0,
            u16::from_be_bytes([inner[18], inner[19]]),
        )
    } else {
        ((inner[14] << 4) | (inner[15] >> 4), true, 0)
    }
}

/// Runs `client` (a frame as it arrives from the gateway) through the fixture and checks that
/// it left with XDP_TX as exactly: Ethernet(target MAC, LB_MAC) + the outer header sluice must
/// write + the client's packet as it arrived. Returns the run and the target.
fn assert_tunnelled(f: &mut L4Fixture, client: &Frame, prefix: &Config) -> (RunResult, u8) {
    let input = client.build();
    let run = f.run(&input);
    assert_eq!(run.action, XDP_TX, "moved {:?}", run.moved());
    assert_eq!(run.outcome(), Counter::ForwardTunnel);
    let target = target_of(&run.output);
    let (tos, inner_df, inner_id) = inner_fields(&input);
    let source = outer_source(&run.output);
    let outer: Ip = match source {
        IpAddr::V4(src) => {
            assert_eq!(
                src.octets()[..2],
                prefix.tunnel_source_v4[..2],
                "outer source {src} outside the tunnel prefix"
            );
            Ipv4 {
                tos,
                // DF copied from an IPv4 packet, always set for IPv6 inside (6in4); the
                // identification is meaningless with DF (0), the client's without.
                dont_fragment: inner_df,
                id: if inner_df { 0 } else { inner_id },
                ttl: 64,
                ..Ipv4::new(src, target_v4(target))
            }
            .into()
        }
        IpAddr::V6(src) => {
            let octets = src.octets();
            assert_eq!(
                octets[..12],
                prefix.tunnel_source_v6[..12],
                "outer source {src} outside the tunnel prefix"
            );
            // The flow label and the source's low bits both come from the flow hash.
            let hash = u32::from_be_bytes(octets[12..].try_into().unwrap());
            Ipv6 {
                traffic_class: tos,
                flow_label: hash & 0xF_FFFF,
                hop_limit: 64,
                ..Ipv6::new(src, target_v6(target))
            }
            .into()
        }
    };
    let expected = client
        .clone()
        .dst_mac(target_mac(target))
        .src_mac(LB_MAC)
        .encapsulate(outer)
        .build();
    assert_eq!(
        hex(&run.output),
        hex(&expected),
        "tunnelling {}",
        hex(&input)
    );
    // The client's packet is untouched behind the outer header.
    let outer_len = expected.len() - input.len();
    assert_eq!(run.output[14 + outer_len..], input[14..]);
    let outer_protocol = if source.is_ipv4() {
        run.output[14 + 9]
    } else {
        run.output[14 + 6]
    };
    let inner_protocol = if input[14] >> 4 == 4 {
        ip_proto::IPIP
    } else {
        ip_proto::IPV6
    };
    assert_eq!(outer_protocol, inner_protocol);
    checksum::verify(&run.output).unwrap_or_else(|e| panic!("{e}: {}", hex(&run.output)));
    (run, target)
}

#[test]
fn tunnel_ipv4_tcp_is_ipip_with_df_copied() {
    let vip = SocketAddr::from((VIP_V4, 80));
    let mut f = tunnel_fixture(vip, TCP, 3, false);
    let syn = L4Fixture::inbound(
        Frame::tcp((CLIENT_V4, 40000), vip)
            .syn()
            .mss(1460)
            .dont_fragment()
            .tos(0x2e << 2),
    );
    let (run, _) = assert_tunnelled(&mut f, &syn, &Config::default());
    assert!(run.moved().iter().any(|(c, _)| *c == Counter::FlowCreated));
    // 20 bytes of outer header.
    assert_eq!(run.output.len(), syn.build().len() + 20);
}

#[test]
fn tunnel_ipv4_udp_without_df_keeps_the_clients_identification() {
    let vip = SocketAddr::from((VIP_V4, 53));
    let mut f = tunnel_fixture(vip, UDP, 3, false);
    let datagram = L4Fixture::inbound(
        Frame::udp((CLIENT_V4, 20000), vip)
            .payload(b"a query")
            .ipv4_id(0x1234),
    );
    let (run, _) = assert_tunnelled(&mut f, &datagram, &Config::default());
    assert_eq!(run.output[18..20], [0x12, 0x34], "outer identification");
    assert_eq!(run.output[20] & 0x40, 0, "no DF");
}

#[test]
fn tunnel_ipv6_tcp_and_udp_are_ip6ip6_with_the_flow_label_from_the_hash() {
    let vip = SocketAddr::from((VIP_V6, 443));
    let mut f = tunnel_fixture(vip, TCP, 3, true);
    let syn = L4Fixture::inbound(
        Frame::tcp((CLIENT_V6, 40000), vip)
            .syn()
            .tos(0xb8)
            .flow_label(0xabcde),
    );
    let (run, _) = assert_tunnelled(&mut f, &syn, &Config::default());
    assert_eq!(run.output.len(), syn.build().len() + 40);

    let vip = SocketAddr::from((VIP_V6, 53));
    let mut f = tunnel_fixture(vip, UDP, 3, true);
    let datagram = L4Fixture::inbound(Frame::udp((CLIENT_V6, 20000), vip).payload(b"query"));
    assert_tunnelled(&mut f, &datagram, &Config::default());
}

#[test]
fn mixed_families_are_4in6_and_6in4() {
    let vip4 = SocketAddr::from((VIP_V4, 80));
    let mut f = tunnel_fixture(vip4, TCP, 2, true);
    let syn4 = L4Fixture::inbound(Frame::tcp((CLIENT_V4, 40000), vip4).syn().dont_fragment());
    let (run, _) = assert_tunnelled(&mut f, &syn4, &Config::default());
    assert_eq!(
        u16::from_be_bytes([run.output[12], run.output[13]]),
        ether_type::IPV6
    );

    let vip6 = SocketAddr::from((VIP_V6, 53));
    let mut f = tunnel_fixture(vip6, UDP, 2, false);
    let query6 = L4Fixture::inbound(Frame::udp((CLIENT_V6, 20000), vip6).payload(b"q"));
    let (run, _) = assert_tunnelled(&mut f, &query6, &Config::default());
    assert_eq!(
        u16::from_be_bytes([run.output[12], run.output[13]]),
        ether_type::IPV4
    );
    // IPv6 is never fragmented on its way: DF, identification 0.
    assert_eq!(run.output[18..22], [0, 0, 0x40, 0]);
}

#[test]
fn the_outer_source_prefix_comes_from_the_config() {
    let config = Config {
        tunnel_source_v4: [100, 64, 0, 0],
        tunnel_source_v6: [
            0x20, 0x01, 0x0d, 0xb8, 0, 0x5c, 0, 0, 0, 0, 0, 0x01, 0, 0, 0, 0,
        ],
        ..Config::default()
    };
    let vip = SocketAddr::from((VIP_V4, 80));
    let mut f = tunnel_fixture(vip, TCP, 2, false);
    f.maps.set_config(&config).unwrap();
    let syn = L4Fixture::inbound(Frame::tcp((CLIENT_V4, 40000), vip).syn());
    assert_tunnelled(&mut f, &syn, &config);

    let vip = SocketAddr::from((VIP_V6, 80));
    let mut f = tunnel_fixture(vip, TCP, 2, true);
    f.maps.set_config(&config).unwrap();
    let syn = L4Fixture::inbound(Frame::tcp((CLIENT_V6, 40000), vip).syn());
    assert_tunnelled(&mut f, &syn, &config);
}

#[test]
fn flows_stick_to_their_target_and_outer_source_and_spread_over_both() {
    for vip in [
        SocketAddr::from((VIP_V4, 53)),
        SocketAddr::from((VIP_V6, 53)),
    ] {
        let mut f = tunnel_fixture(vip, UDP, 3, vip.is_ipv6());
        let client: IpAddr = if vip.is_ipv4() {
            CLIENT_V4.into()
        } else {
            CLIENT_V6.into()
        };
        let mut per_target = [0u32; 3];
        let mut sources = BTreeSet::new();
        const FLOWS: u16 = 60;
        for port in 0..FLOWS {
            let datagram = L4Fixture::inbound(
                Frame::udp(SocketAddr::new(client, 20000 + port), vip).payload(b"q"),
            );
            let (first, target) = assert_tunnelled(&mut f, &datagram, &Config::default());
            per_target[usize::from(target)] += 1;
            let source = outer_source(&first.output);
            sources.insert(source);
            // The same flow again: from the flow table, same target, same outer header.
            let again = f.run(&datagram.build());
            assert_eq!(again.outcome(), Counter::ForwardTunnel);
            assert_eq!(hex(&again.output), hex(&first.output));
            assert!(!again
                .moved()
                .iter()
                .any(|(c, _)| *c == Counter::FlowCreated));
        }
        assert!(
            per_target.iter().all(|&n| n > 5),
            "{FLOWS} flows over 3 targets: {per_target:?}"
        );
        // 16 or 32 bits of hash: distinct flows almost never share an outer source, which is
        // what lets the target's RSS spread them.
        assert!(
            sources.len() >= usize::from(FLOWS) - 2,
            "{} outer sources for {FLOWS} flows",
            sources.len()
        );
    }
}

#[test]
fn ethernet_padding_is_kept_outside_the_outer_length() {
    let vip = SocketAddr::from((VIP_V4, 53));
    let mut f = tunnel_fixture(vip, UDP, 1, false);
    let padded = L4Fixture::inbound(Frame::udp((CLIENT_V4, 20000), vip).payload(b"q")).pad_to(60);
    let input = padded.build();
    let run = f.run(&input);
    assert_eq!(run.outcome(), Counter::ForwardTunnel);
    let src = match outer_source(&run.output) {
        IpAddr::V4(src) => src,
        IpAddr::V6(src) => panic!("IPv6 outer source {src}"),
    };
    let expected = padded
        .clone()
        .dst_mac(target_mac(0))
        .src_mac(LB_MAC)
        .encapsulate(Ipv4::new(src, target_v4(0)))
        .pad_to(80)
        .build();
    assert_eq!(hex(&run.output), hex(&expected));
    checksum::verify(&run.output).unwrap();
}

/// What the load balancer sends, `sluice_decap` on the target turns back into the client's
/// packet, addressed to the target's MAC.
#[test]
fn sluice_decap_restores_the_clients_packet() {
    let mut decap = DecapHarness::new();
    let cases: [(SocketAddr, IpAddr, bool); 4] = [
        ((VIP_V4, 80).into(), CLIENT_V4.into(), false),
        ((VIP_V6, 80).into(), CLIENT_V6.into(), true),
        ((VIP_V4, 80).into(), CLIENT_V4.into(), true),
        ((VIP_V6, 80).into(), CLIENT_V6.into(), false),
    ];
    for (vip, client, v6_targets) in cases {
        let mut f = tunnel_fixture(vip, TCP, 2, v6_targets);
        let syn = L4Fixture::inbound(Frame::tcp(SocketAddr::new(client, 40000), vip).syn());
        let (run, target) = assert_tunnelled(&mut f, &syn, &Config::default());
        let decapsulated = decap.run(&run.output);
        let expected = syn
            .clone()
            .dst_mac(target_mac(target))
            .src_mac(LB_MAC)
            .build();
        decapsulated.assert_decapsulated(&run.output, &expected);
    }
}
