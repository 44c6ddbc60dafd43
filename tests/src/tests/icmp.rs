//! ICMP and ICMPv6 to a listener's address through `BPF_PROG_TEST_RUN`, byte for byte: echo
//! requests answered in XDP; "fragmentation needed" / "packet too big" about a known flow sent
//! to the flow's target the way its listener forwards (`dsr`: new MACs only; `tunnel`:
//! encapsulated with the flow's own outer header; `nat`: translated so that it quotes what the
//! target sent); everything else, and anything cut short, passed to the kernel untouched.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::{
    checksum,
    packet::{ip_proto, Frame, Ip, Ipv4, Ipv6, Ipv6Extension},
};
use lb_common::{
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
/// `nat` targets listen here while the listeners are on other ports.
const TARGET_PORT: u16 = 3000;
/// A router on the way to the clients (routed via the gateway), which reports the path MTU.
const ROUTER_V4: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 1);
const ROUTER_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x201, 0, 0, 0, 0, 0, 1);
/// Quote the whole packet (as much as there is).
const ALL: usize = usize::MAX;

/// A listener on `vip` in `mode` with `targets` targets, of the other family if `other_family`
/// (for `tunnel`'s 4in6 and 6in4).
fn fixture(
    vip: SocketAddr,
    protocol: u8,
    mode: ForwardingMode,
    targets: u8,
    other_family: bool,
) -> L4Fixture {
    let mut f = L4Fixture::new();
    f.listener(0, vip, protocol, mode, HashKey::FiveTuple);
    for i in 0..targets {
        let port = if mode == ForwardingMode::Nat {
            TARGET_PORT
        } else {
            vip.port()
        };
        f.target(
            u32::from(i),
            SocketAddr::new(target_ip(vip.is_ipv4() != other_family, i), port),
        );
    }
    let ids: Vec<(u32, u32)> = (0..targets).map(|i| (u32::from(i), 1)).collect();
    f.table(0, &ids);
    f
}

fn target_ip(v4: bool, i: u8) -> IpAddr {
    if v4 {
        target_v4(i).into()
    } else {
        target_v6(i).into()
    }
}

fn client(vip: SocketAddr, port: u16) -> SocketAddr {
    if vip.is_ipv4() {
        (CLIENT_V4, port).into()
    } else {
        (CLIENT_V6, port).into()
    }
}

fn router(vip: SocketAddr) -> IpAddr {
    if vip.is_ipv4() {
        ROUTER_V4.into()
    } else {
        ROUTER_V6.into()
    }
}

/// The load balancer's address facing the targets (the fixture's snat address).
fn lb_addr(vip: SocketAddr) -> IpAddr {
    if vip.is_ipv4() {
        LB_V4.into()
    } else {
        LB_V6.into()
    }
}

/// Which target a frame went to, by its destination MAC.
fn target_of(output: &[u8]) -> u8 {
    let mac: [u8; 6] = output[..6].try_into().unwrap();
    (0..8)
        .find(|&i| target_mac(i) == mac)
        .unwrap_or_else(|| panic!("{} is not a target MAC", hex(&mac)))
}

/// A client's first packet of a flow: a TCP SYN or a UDP datagram.
fn request(protocol: u8, client: SocketAddr, vip: SocketAddr) -> Frame {
    match protocol {
        TCP => Frame::tcp(client, vip).syn().mss(1460),
        _ => Frame::udp(client, vip).payload(b"a question"),
    }
}

/// What the VIP sent the client (a target's reply, as it left the load balancer): a full-size
/// TCP segment or UDP datagram, the kind a smaller link on the way refuses.
fn reply(protocol: u8, vip: SocketAddr, client: SocketAddr) -> Frame {
    let frame = match protocol {
        TCP => Frame::tcp(vip, client)
            .ack()
            .psh()
            .seq(7000)
            .ack_number(2)
            .payload(&[0x5a; 64]),
        _ => Frame::udp(vip, client).payload(&[0xa5; 64]),
    };
    if vip.is_ipv4() {
        frame.dont_fragment().ipv4_id(0x1234)
    } else {
        frame
    }
}

/// The first `len` bytes of `packet`'s IP packet, as an ICMP error quotes them.
fn quote(packet: &Frame, len: usize) -> Vec<u8> {
    let bytes = packet.build();
    let ip = packet.layout().ip;
    bytes[ip..ip.saturating_add(len).min(bytes.len())].to_vec()
}

/// ICMP "fragmentation needed" (next-hop MTU 1400) or ICMPv6 "packet too big" (MTU 1280),
/// by the family of `to`, from `from`, quoting the first `len` bytes of `packet`.
fn too_big(from: IpAddr, to: IpAddr, packet: &Frame, len: usize) -> Frame {
    let quoted = quote(packet, len);
    if to.is_ipv4() {
        Frame::icmp(from, to, 3, 4, [0, 0, 0x05, 0x78]).payload(&quoted)
    } else {
        Frame::icmp(from, to, 2, 0, 1280u32.to_be_bytes()).payload(&quoted)
    }
}

/// Starts a flow from `client` and returns its target and the first packet's output.
fn start_flow(
    f: &mut L4Fixture,
    protocol: u8,
    client: SocketAddr,
    vip: SocketAddr,
) -> (u8, RunResult) {
    let run = f.run(&L4Fixture::inbound(request(protocol, client, vip)).build());
    assert_eq!(run.action, XDP_TX, "moved {:?}", run.moved());
    (target_of(&run.output), run)
}

/// Runs `input` and checks that it left with XDP_TX as `expected`, valid checksums, counted as
/// `icmp_error_forwarded` and nothing else (no flow entry, no observation).
fn assert_forwarded(f: &mut L4Fixture, input: &[u8], expected: &[u8]) -> RunResult {
    let run = f.run(input);
    assert_eq!(run.action, XDP_TX, "moved {:?}", run.moved());
    assert_eq!(run.outcome(), Counter::IcmpErrorForwarded);
    assert_eq!(run.moved().len(), 1, "moved {:?}", run.moved());
    assert_eq!(hex(&run.output), hex(expected), "forwarding {}", hex(input));
    checksum::verify(&run.output).unwrap_or_else(|e| panic!("{e}: {}", hex(&run.output)));
    run
}

fn assert_passed(f: &mut L4Fixture, input: &[u8]) {
    f.run(input)
        .assert_passed_unchanged(input, &[Counter::PassVipIcmp]);
}

// --- Echo ---

#[test]
fn echo_request_ipv4_is_answered_in_place() {
    let mut f = fixture((VIP_V4, 80).into(), TCP, ForwardingMode::Nat, 1, false);
    let payload: Vec<u8> = (0..56).collect();
    for options in [&[][..], &[1, 1, 1, 1, 1, 1, 1, 0][..]] {
        let request = Frame::icmp_echo_request(CLIENT_V4, VIP_V4, 0x4d2, 7)
            .payload(&payload)
            .ttl(57)
            .tos(0x10)
            .ipv4_id(0xbeef)
            .dont_fragment()
            .ipv4_options(options);
        let input = L4Fixture::inbound(request).build();
        let run = f.run(&input);
        assert_eq!(run.action, XDP_TX, "moved {:?}", run.moved());
        assert_eq!(run.outcome(), Counter::IcmpEchoReply);
        // Everything but addresses, MACs, TTL and type is the request's, payload included.
        let expected = Frame::icmp_echo_reply(VIP_V4, CLIENT_V4, 0x4d2, 7)
            .payload(&payload)
            .ttl(64)
            .tos(0x10)
            .ipv4_id(0xbeef)
            .dont_fragment()
            .ipv4_options(options)
            .src_mac(LB_MAC)
            .dst_mac(GATEWAY_MAC)
            .build();
        assert_eq!(hex(&run.output), hex(&expected));
        checksum::verify(&run.output).unwrap();
    }
}

#[test]
fn echo_request_ipv6_is_answered_in_place() {
    let mut f = fixture((VIP_V6, 53).into(), UDP, ForwardingMode::Dsr, 1, false);
    // An odd length: the payload's last byte is summed alone.
    let payload: Vec<u8> = (0..33).map(|i| i * 7).collect();
    let request = Frame::icmp_echo_request(CLIENT_V6, VIP_V6, 0xffff, 0x8000)
        .payload(&payload)
        .ttl(3)
        .tos(0xb8)
        .flow_label(0x12345);
    let input = L4Fixture::inbound(request).build();
    let run = f.run(&input);
    assert_eq!(run.action, XDP_TX, "moved {:?}", run.moved());
    assert_eq!(run.outcome(), Counter::IcmpEchoReply);
    let expected = Frame::icmp_echo_reply(VIP_V6, CLIENT_V6, 0xffff, 0x8000)
        .payload(&payload)
        .ttl(64)
        .tos(0xb8)
        .flow_label(0x12345)
        .src_mac(LB_MAC)
        .dst_mac(GATEWAY_MAC)
        .build();
    assert_eq!(hex(&run.output), hex(&expected));
    checksum::verify(&run.output).unwrap();
}

#[test]
fn echo_requests_to_other_addresses_are_left_to_the_kernel() {
    let mut f = fixture((VIP_V4, 80).into(), TCP, ForwardingMode::Dsr, 1, false);
    f.listener(
        1,
        (VIP_V6, 80).into(),
        TCP,
        ForwardingMode::Dsr,
        HashKey::FiveTuple,
    );
    let other_v4 = Ipv4Addr::new(10, 210, 0, 2);
    let other_v6 = Ipv6Addr::new(0xfd00, 0x210, 0, 0, 0, 0, 0, 2);
    let frames = [
        Frame::icmp_echo_request(CLIENT_V4, other_v4, 1, 1),
        Frame::icmp_echo_request(CLIENT_V4, LB_V4, 1, 1),
        Frame::icmp_echo_request(CLIENT_V6, other_v6, 1, 1),
        Frame::icmp_echo_request(CLIENT_V6, LB_V6, 1, 1),
    ];
    for frame in frames {
        let input = L4Fixture::inbound(frame.payload(b"ping")).build();
        f.run(&input)
            .assert_passed_unchanged(&input, &[Counter::PassNoListener]);
    }
}

// --- Errors about flows ---

#[test]
fn too_big_for_a_dsr_flow_goes_to_its_target_unchanged() {
    for (vip, protocol) in [
        (SocketAddr::from((VIP_V4, 80)), TCP),
        (SocketAddr::from((VIP_V6, 53)), UDP),
    ] {
        let mut f = fixture(vip, protocol, ForwardingMode::Dsr, 3, false);
        let mut targets = Vec::new();
        for port in 40000..40008 {
            let client = client(vip, port);
            let (target, _) = start_flow(&mut f, protocol, client, vip);
            targets.push(target);
            let error = L4Fixture::inbound(too_big(
                router(vip),
                vip.ip(),
                &reply(protocol, vip, client),
                ALL,
            ));
            let expected = error
                .clone()
                .dst_mac(target_mac(target))
                .src_mac(LB_MAC)
                .build();
            assert_forwarded(&mut f, &error.build(), &expected);
        }
        targets.sort();
        targets.dedup();
        assert!(targets.len() > 1, "8 flows all went to target {targets:?}");
    }
}

#[test]
fn too_big_for_a_tunnel_flow_is_encapsulated_like_the_flow() {
    let mut decap = DecapHarness::new();
    for (vip, other_family) in [
        (SocketAddr::from((VIP_V4, 80)), false),
        (SocketAddr::from((VIP_V6, 80)), false),
        (SocketAddr::from((VIP_V4, 80)), true),
        (SocketAddr::from((VIP_V6, 80)), true),
    ] {
        let mut f = fixture(vip, TCP, ForwardingMode::Tunnel, 3, other_family);
        let client = client(vip, 40000);
        let (target, first) = start_flow(&mut f, TCP, client, vip);
        assert_eq!(first.outcome(), Counter::ForwardTunnel);
        let mut error = too_big(router(vip), vip.ip(), &reply(TCP, vip, client), ALL);
        if vip.is_ipv4() {
            error = error.ipv4_id(0x77);
        }
        let error = L4Fixture::inbound(error);
        // The flow's outer source: the error reaches the target's queue of the flow.
        let outer: Ip = match first.output[14] >> 4 {
            4 => {
                let src: [u8; 4] = first.output[26..30].try_into().unwrap();
                Ipv4 {
                    // From an IPv4 error without DF, its identification; 6in4 always has DF.
                    dont_fragment: vip.is_ipv6(),
                    id: if vip.is_ipv4() { 0x77 } else { 0 },
                    ttl: 64,
                    ..Ipv4::new(src.into(), target_v4(target))
                }
                .into()
            }
            _ => {
                let src: [u8; 16] = first.output[22..38].try_into().unwrap();
                Ipv6 {
                    flow_label: u32::from_be_bytes(src[12..].try_into().unwrap()) & 0xF_FFFF,
                    hop_limit: 64,
                    ..Ipv6::new(src.into(), target_v6(target))
                }
                .into()
            }
        };
        let delivered = error.clone().dst_mac(target_mac(target)).src_mac(LB_MAC);
        let expected = delivered.clone().encapsulate(outer).build();
        let run = assert_forwarded(&mut f, &error.build(), &expected);
        // The target's `sluice_decap` hands its stack the error as the router sent it.
        decap
            .run(&run.output)
            .assert_decapsulated(&run.output, &delivered.build());
    }
}

/// A `nat` flow's error reaches the target as if the target's own packet had been refused on
/// its way to the load balancer: from the load balancer's address, quoting the packet the
/// target sent (target address and port → load balancer's address and the flow's port).
fn nat_case(vip: SocketAddr, protocol: u8, quoted: usize, no_udp_checksum: bool) {
    let mut f = fixture(vip, protocol, ForwardingMode::Nat, 3, false);
    let client = client(vip, 40000);
    let request = request(protocol, client, vip);
    let (target, first) = start_flow(&mut f, protocol, client, vip);
    assert_eq!(first.outcome(), Counter::ForwardNat);
    let l4 = request.layout().l4;
    let port = u16::from_be_bytes([first.output[l4], first.output[l4 + 1]]);

    let mut sent = reply(protocol, vip, client);
    if no_udp_checksum {
        sent = sent.l4_checksum(0);
    }
    let error = L4Fixture::inbound(too_big(router(vip), vip.ip(), &sent, quoted));
    let target_ip = target_ip(vip.is_ipv4(), target);
    let original = sent
        .src_ip(target_ip)
        .src_port(TARGET_PORT)
        .dst_ip(lb_addr(vip))
        .dst_port(port);
    let expected = too_big(lb_addr(vip), target_ip, &original, quoted)
        .dst_mac(target_mac(target))
        .src_mac(LB_MAC)
        .build();
    assert_forwarded(&mut f, &error.build(), &expected);
}

#[test]
fn too_big_for_a_nat_flow_ipv4_is_translated() {
    // The whole packet: the quoted TCP/UDP checksum is updated too.
    nat_case((VIP_V4, 80).into(), TCP, ALL, false);
    nat_case((VIP_V4, 53).into(), UDP, ALL, false);
    // RFC 792's minimum: IP header and 8 bytes, UDP's checksum included, TCP's not.
    nat_case((VIP_V4, 80).into(), TCP, 28, false);
    nat_case((VIP_V4, 53).into(), UDP, 28, false);
    // Only the ports.
    nat_case((VIP_V4, 53).into(), UDP, 24, false);
    // A UDP datagram sent without checksum stays without.
    nat_case((VIP_V4, 53).into(), UDP, ALL, true);
}

#[test]
fn too_big_for_a_nat_flow_ipv6_is_translated() {
    nat_case((VIP_V6, 80).into(), TCP, ALL, false);
    nat_case((VIP_V6, 53).into(), UDP, ALL, false);
    nat_case((VIP_V6, 80).into(), TCP, 48, false);
    nat_case((VIP_V6, 53).into(), UDP, 48, false);
    nat_case((VIP_V6, 53).into(), UDP, 44, false);
}

#[test]
fn errors_about_unknown_flows_are_passed() {
    for mode in [
        ForwardingMode::Dsr,
        ForwardingMode::Tunnel,
        ForwardingMode::Nat,
    ] {
        for vip in [
            SocketAddr::from((VIP_V4, 80)),
            SocketAddr::from((VIP_V6, 80)),
        ] {
            let mut f = fixture(vip, TCP, mode, 2, false);
            let known = client(vip, 40000);
            start_flow(&mut f, TCP, known, vip);
            let other_client: IpAddr = if vip.is_ipv4() {
                Ipv4Addr::new(10, 201, 0, 3).into()
            } else {
                Ipv6Addr::new(0xfd00, 0x201, 0, 0, 0, 0, 0, 3).into()
            };
            let other_vip: IpAddr = if vip.is_ipv4() {
                Ipv4Addr::new(10, 210, 0, 2).into()
            } else {
                Ipv6Addr::new(0xfd00, 0x210, 0, 0, 0, 0, 0, 2).into()
            };
            let unknown = [
                // Another port, another client, another protocol.
                reply(TCP, vip, client(vip, 40001)),
                reply(TCP, vip, SocketAddr::new(other_client, 40000)),
                reply(UDP, vip, known),
                // From another port of the VIP, or from another address altogether: the error
                // was not about the flow, whose client and port it names.
                reply(TCP, SocketAddr::new(vip.ip(), 81), known),
                reply(TCP, SocketAddr::new(other_vip, 80), known),
            ];
            for sent in unknown {
                let input = L4Fixture::inbound(too_big(router(vip), vip.ip(), &sent, ALL)).build();
                assert_passed(&mut f, &input);
            }
            // The known flow's error goes through (the same fixture, so the cases above were
            // passed for what they quote, not for the fixture).
            let input =
                L4Fixture::inbound(too_big(router(vip), vip.ip(), &reply(TCP, vip, known), ALL))
                    .build();
            assert_eq!(f.run(&input).outcome(), Counter::IcmpErrorForwarded);
        }
    }
}

#[test]
fn other_icmp_to_a_vip_is_passed() {
    let vip4 = SocketAddr::from((VIP_V4, 80));
    let vip6 = SocketAddr::from((VIP_V6, 80));
    let mut f = fixture(vip4, TCP, ForwardingMode::Dsr, 2, false);
    f.listener(1, vip6, TCP, ForwardingMode::Dsr, HashKey::FiveTuple);
    let targets: Vec<(u32, u32)> = vec![(2, 1)];
    f.target(2, (target_v6(2), 80).into());
    f.table(1, &targets);
    let (c4, c6) = (client(vip4, 40000), client(vip6, 40000));
    start_flow(&mut f, TCP, c4, vip4);
    start_flow(&mut f, TCP, c6, vip6);
    let q4 = quote(&reply(TCP, vip4, c4), ALL);
    let q6 = quote(&reply(TCP, vip6, c6), ALL);
    let (r4, r6): (IpAddr, IpAddr) = (ROUTER_V4.into(), ROUTER_V6.into());
    let (v4, v6): (IpAddr, IpAddr) = (VIP_V4.into(), VIP_V6.into());
    let frames = [
        // Timestamp request.
        Frame::icmp(CLIENT_V4, VIP_V4, 13, 0, [0, 1, 0, 1]).payload(&[0; 12]),
        // Unreachable, but not "fragmentation needed", about the known flow: host, port,
        // administratively prohibited.
        Frame::icmp(r4, v4, 3, 1, [0; 4]).payload(&q4),
        Frame::icmp(r4, v4, 3, 3, [0; 4]).payload(&q4),
        Frame::icmp(r4, v4, 3, 13, [0; 4]).payload(&q4),
        // Time exceeded, redirect, source quench, parameter problem.
        Frame::icmp(r4, v4, 11, 0, [0; 4]).payload(&q4),
        Frame::icmp(r4, v4, 5, 1, [10, 201, 0, 9]).payload(&q4),
        Frame::icmp(r4, v4, 4, 0, [0; 4]).payload(&q4),
        Frame::icmp(r4, v4, 12, 0, [8, 0, 0, 0]).payload(&q4),
        // Echo reply, and an echo request with a code that is not 0.
        Frame::icmp_echo_reply(CLIENT_V4, VIP_V4, 1, 1).payload(b"pong"),
        Frame::icmp(CLIENT_V4, VIP_V4, 8, 1, [0, 1, 0, 1]).payload(b"ping"),
        // ICMPv6: unreachable, time exceeded, parameter problem about the known flow; packet
        // too big with a code that is not 0.
        Frame::icmp(r6, v6, 1, 4, [0; 4]).payload(&q6),
        Frame::icmp(r6, v6, 3, 0, [0; 4]).payload(&q6),
        Frame::icmp(r6, v6, 4, 0, [0, 0, 0, 6]).payload(&q6),
        Frame::icmp(r6, v6, 2, 1, 1280u32.to_be_bytes()).payload(&q6),
        // Echo reply, echo request with a code, neighbour solicitation for the VIP.
        Frame::icmp_echo_reply(CLIENT_V6, VIP_V6, 1, 1).payload(b"pong"),
        Frame::icmp(CLIENT_V6, VIP_V6, 128, 1, [0, 1, 0, 1]).payload(b"ping"),
        Frame::icmp(CLIENT_V6, VIP_V6, 135, 0, [0; 4]).payload(&VIP_V6.octets()),
    ];
    for frame in frames {
        assert_passed(&mut f, &L4Fixture::inbound(frame).build());
    }
    // ICMP over IPv6 and ICMPv6 over IPv4 are not parsed as either.
    for frame in [
        Frame::ip(CLIENT_V4, VIP_V4, ip_proto::ICMPV6).payload(&[128, 0, 0, 0, 0, 1, 0, 1]),
        Frame::ip(CLIENT_V6, VIP_V6, ip_proto::ICMP).payload(&[8, 0, 0, 0, 0, 1, 0, 1]),
    ] {
        let input = L4Fixture::inbound(frame).build();
        f.run(&input)
            .assert_passed_unchanged(&input, &[Counter::PassOtherProtocol]);
    }
}

/// Errors whose quote is cut short, malformed or of the other family: passed untouched, never
/// aborted, never sent anywhere. Each case is a known flow's error, which goes through whole.
#[test]
fn malformed_quotes_are_passed() {
    let vip4 = SocketAddr::from((VIP_V4, 80));
    let vip6 = SocketAddr::from((VIP_V6, 80));
    let mut f = fixture(vip4, TCP, ForwardingMode::Dsr, 2, false);
    f.listener(1, vip6, TCP, ForwardingMode::Dsr, HashKey::FiveTuple);
    f.target(2, (target_v6(2), 80).into());
    f.table(1, &[(2, 1)]);
    let (c4, c6) = (client(vip4, 40000), client(vip6, 40000));
    start_flow(&mut f, TCP, c4, vip4);
    start_flow(&mut f, TCP, c6, vip6);
    let (sent4, sent6) = (reply(TCP, vip4, c4), reply(TCP, vip6, c6));
    let (r4, r6) = (router(vip4), router(vip6));
    let error4 = |sent: &Frame, len: usize| L4Fixture::inbound(too_big(r4, vip4.ip(), sent, len));
    let error6 = |sent: &Frame, len: usize| L4Fixture::inbound(too_big(r6, vip6.ip(), sent, len));

    for whole in [error4(&sent4, ALL), error6(&sent6, ALL)] {
        assert_eq!(f.run(&whole.build()).outcome(), Counter::IcmpErrorForwarded);
    }
    let cases = [
        // IPv4: the quoted header cut, the ports cut.
        error4(&sent4, 0),
        error4(&sent4, 10),
        error4(&sent4, 19),
        error4(&sent4, 20),
        error4(&sent4, 23),
        // An IHL below 5; an IHL of 15 whose header the quote does not hold.
        error4(&sent4.clone().ipv4_ihl(3), ALL),
        error4(&sent4.clone().ipv4_ihl(15), 40),
        // Another IP version in the quote's header, or an IPv6 packet quoted whole.
        error4(&sent4.clone().ip_version(5), ALL),
        L4Fixture::inbound(
            Frame::icmp(r4, vip4.ip(), 3, 4, [0, 0, 5, 0x78]).payload(&quote(&sent6, ALL)),
        ),
        // A fragment other than the first, which quotes no ports.
        error4(&sent4.clone().fragment_offset(185), ALL),
        // Not TCP or UDP.
        error4(
            &Frame::icmp_echo_reply(VIP_V4, CLIENT_V4, 1, 1).payload(&[0; 8]),
            ALL,
        ),
        // The quote's ports are in the frame but beyond the error's IP length (padding).
        error4(&sent4, ALL).ip_length(20 + 8 + 20 + 2),
        // IPv6: the same.
        error6(&sent6, 0),
        error6(&sent6, 30),
        error6(&sent6, 39),
        error6(&sent6, 40),
        error6(&sent6, 43),
        error6(&sent6.clone().ip_version(4), ALL),
        L4Fixture::inbound(
            Frame::icmp(r6, vip6.ip(), 2, 0, 1280u32.to_be_bytes()).payload(&quote(&sent4, ALL)),
        ),
        // Extension headers in the quote.
        error6(
            &sent6
                .clone()
                .ipv6_extension(Ipv6Extension::destination_options()),
            ALL,
        ),
        error6(
            &sent6
                .clone()
                .ipv6_extension(Ipv6Extension::fragment(0, true, 7)),
            ALL,
        ),
        error6(
            &Frame::icmp_echo_reply(VIP_V6, CLIENT_V6, 1, 1).payload(&[0; 8]),
            ALL,
        ),
        error6(&sent6, ALL).ip_length(8 + 40 + 2),
    ];
    for error in cases {
        assert_passed(&mut f, &error.build());
    }
}
