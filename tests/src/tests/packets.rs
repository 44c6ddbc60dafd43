//! Acceptance tests for the XDP program's parse stage, on single frames through
//! `BPF_PROG_TEST_RUN`: every frame is passed to the kernel unchanged, and moves exactly one
//! outcome counter (plus the observations that apply) that says what it was.
//!
//! Frames shorter than 14 bytes never reach the program (the kernel refuses them, see
//! `packet_harness`), so `malformed_ethernet` cannot be exercised here.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

use lb_common::stats::{Counter, CounterKind, CounterValue};

use super::packet_harness::{hex, XdpHarness, XDP_PASS};
use crate::packet::{ether_type, ip_proto, Frame, Ipv4, Ipv6, Ipv6Extension};

const C4: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 40000);
const S4: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 1, 1), 80);
const C6: SocketAddrV6 = SocketAddrV6::new(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1), 40000, 0, 0);
const S6: SocketAddrV6 = SocketAddrV6::new(Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 1), 443, 0, 0);

fn ip4(a: SocketAddrV4) -> IpAddr {
    IpAddr::V4(*a.ip())
}

fn ip6(a: SocketAddrV6) -> IpAddr {
    IpAddr::V6(*a.ip())
}

/// Ways to tag a frame: none, one 802.1Q tag, one 802.1ad tag.
fn tagged(frame: &Frame) -> Vec<Frame> {
    vec![
        frame.clone(),
        frame.clone().vlan(100),
        frame.clone().vlan_tag(ether_type::QINQ, 7),
    ]
}

/// Well-formed TCP, UDP and ICMP(v6) frames over IPv4 (with and without options) and IPv6,
/// untagged; see [`tagged`].
fn well_formed() -> Vec<Frame> {
    let nops = [1; 4];
    let max_options = [[1; 36].as_slice(), &[0x44, 4, 5, 0]].concat(); // NOPs + timestamp
    vec![
        Frame::tcp(C4, S4).syn().mss(1460),
        Frame::tcp(C4, S4)
            .ack()
            .psh()
            .payload(b"GET / HTTP/1.1\r\n\r\n"),
        Frame::tcp(C4, S4).syn().tcp_options(&[1; 40]),
        Frame::tcp(C4, S4)
            .ack()
            .dont_fragment()
            .ipv4_options(&nops)
            .payload(b"options"),
        Frame::tcp(C4, S4).syn().ipv4_options(&max_options),
        Frame::udp(C4, S4).payload(b"datagram"),
        Frame::udp(C4, S4),
        Frame::udp(C4, S4).pad_to(60),
        Frame::udp(C4, S4).ipv4_options(&nops).payload(b"x"),
        Frame::icmp_echo_request(ip4(C4), ip4(S4), 1, 1).payload(b"ping"),
        Frame::icmp(ip4(S4), ip4(C4), 3, 4, [0, 0, 5, 0xdc]).ipv4_options(&[1; 12]),
        Frame::tcp(C6, S6).syn().mss(1440),
        Frame::tcp(C6, S6)
            .ack()
            .payload(b"hello")
            .flow_label(0x12345),
        Frame::tcp(C6, S6).syn().tcp_options(&[1; 40]),
        Frame::udp(C6, S6).payload(b"datagram"),
        Frame::udp(C6, S6).pad_to(64),
        Frame::icmp_echo_request(ip6(C6), ip6(S6), 1, 1).payload(b"ping6"),
        Frame::icmp(ip6(S6), ip6(C6), 2, 0, 1280_u32.to_be_bytes()),
    ]
}

fn all_well_formed() -> Vec<Frame> {
    well_formed().iter().flat_map(tagged).collect()
}

/// The observation counters a frame that parses this far moves: `vlan_tagged` for any VLAN
/// TPID after the MACs, `ipv4_options` for a valid IPv4 header with IHL above 5.
fn observations(frame: &Frame, ipv4_header_valid: bool) -> Vec<Counter> {
    let layout = frame.layout();
    let bytes = frame.build();
    let mut counters = Vec::new();
    if !layout.vlan_tags.is_empty() {
        counters.push(Counter::VlanTagged);
    }
    // The program sees the outermost IP header.
    let l3 = layout.l3;
    let ipv4 = bytes[l3 - 2..l3] == [0x08, 0x00] && l3 < bytes.len();
    if ipv4 && ipv4_header_valid && bytes[l3] & 0x0F > 5 {
        counters.push(Counter::Ipv4Options);
    }
    counters
}

fn with(outcome: Counter, mut observations: Vec<Counter>) -> Vec<Counter> {
    observations.push(outcome);
    observations
}

/// Runs `bytes` and checks it was passed unchanged and moved exactly `expected`, each by one
/// packet of its length.
fn expect(harness: &mut XdpHarness, bytes: &[u8], expected: &[Counter], what: &str) {
    let run = harness.run(bytes);
    let context = || format!("{what}\n frame: {}", hex(bytes));
    assert_eq!(run.action, XDP_PASS, "{}", context());
    assert!(
        run.output == bytes,
        "{} was changed to {}",
        context(),
        hex(&run.output)
    );
    let one = CounterValue {
        packets: 1,
        bytes: bytes.len() as u64,
    };
    let mut expected: Vec<_> = expected.iter().map(|&c| (c, one)).collect();
    expected.sort_by_key(|(c, _)| *c);
    assert_eq!(run.moved(), expected, "{}", context());
}

fn malformed_l3(bytes: &[u8], l3: usize) -> Counter {
    match bytes[l3 - 2..l3] {
        [0x08, 0x00] => Counter::MalformedIpv4,
        [0x86, 0xDD] => Counter::MalformedIpv6,
        _ => panic!("not an IP frame"),
    }
}

fn malformed_l4(bytes: &[u8], ip: usize) -> Counter {
    let protocol = if bytes[ip] >> 4 == 4 {
        bytes[ip + 9]
    } else {
        bytes[ip + 6]
    };
    match protocol {
        ip_proto::TCP => Counter::MalformedTcp,
        ip_proto::UDP => Counter::MalformedUdp,
        ip_proto::ICMP | ip_proto::ICMPV6 => Counter::MalformedIcmp,
        p => panic!("no transport header for protocol {p}"),
    }
}

#[test]
fn well_formed_frames_pass_unchanged_as_no_listener() {
    let mut harness = XdpHarness::new();
    for frame in all_well_formed() {
        let bytes = frame.build();
        let expected = with(Counter::PassNoListener, observations(&frame, true));
        expect(&mut harness, &bytes, &expected, &format!("{frame:?}"));
    }
}

#[test]
fn frames_cut_at_any_byte_are_malformed_where_a_length_no_longer_fits() {
    let mut harness = XdpHarness::new();
    for frame in all_well_formed() {
        let bytes = frame.build();
        let l = frame.layout();
        for len in 14..bytes.len() {
            let cut = &bytes[..len];
            let expected = if len < l.l3 {
                with(Counter::MalformedVlan, observations(&frame, false))
            } else if len < l.ip_end {
                // Cut in the IP header, or after it: then its length claims more than is there.
                with(malformed_l3(&bytes, l.l3), observations(&frame, false))
            } else {
                // Only Ethernet padding was cut.
                with(Counter::PassNoListener, observations(&frame, true))
            };
            expect(
                &mut harness,
                cut,
                &expected,
                &format!("{frame:?} cut at {len}"),
            );
        }
    }
}

#[test]
fn frames_cut_with_matching_ip_length_are_malformed_at_the_cut_header() {
    let mut harness = XdpHarness::new();
    for frame in all_well_formed() {
        let l = frame.layout();
        let bytes = frame.build();
        let ipv4 = bytes[l.ip] >> 4 == 4;
        for len in l.ip..=l.payload {
            // The IP length says the packet ends at the cut, so only the cut header is short.
            let ip_length = if ipv4 {
                len - l.ip
            } else {
                len.saturating_sub(l.ip + 40)
            };
            let cut = &frame.clone().ip_length(ip_length as u16).build()[..len];
            let what = format!("{frame:?} cut at {len} with IP length {ip_length}");
            let expected = if len < l.l4 {
                // IPv4: header or options cut (total length below the header length).
                with(malformed_l3(&bytes, l.l3), observations(&frame, false))
            } else if len < l.payload {
                // Transport header cut, TCP options included.
                with(malformed_l4(&bytes, l.ip), observations(&frame, true))
            } else {
                with(Counter::PassNoListener, observations(&frame, true))
            };
            expect(&mut harness, cut, &expected, &what);
        }
    }
}

#[test]
fn header_only_and_tag_only_frames() {
    let mut harness = XdpHarness::new();
    let ethernet = |ether_type: u16, rest: &[u8]| {
        let mut b = Frame::ethernet(ether_type).build();
        b.extend(rest);
        b
    };
    use Counter::*;
    let cases: Vec<(&str, Vec<u8>, Vec<Counter>)> = vec![
        (
            "Ethernet only, IPv4",
            ethernet(0x0800, &[]),
            vec![MalformedIpv4],
        ),
        (
            "Ethernet only, IPv6",
            ethernet(0x86DD, &[]),
            vec![MalformedIpv6],
        ),
        (
            "Ethernet only, 802.1Q",
            ethernet(0x8100, &[]),
            vec![MalformedVlan, VlanTagged],
        ),
        (
            "Ethernet only, 802.1ad",
            ethernet(0x88A8, &[]),
            vec![MalformedVlan, VlanTagged],
        ),
        ("Ethernet only, ARP", ethernet(0x0806, &[]), vec![PassNotIp]),
        (
            "VLAN tag one byte short",
            ethernet(0x8100, &[0, 100, 0x08]),
            vec![MalformedVlan, VlanTagged],
        ),
        (
            "VLAN tag only, IPv4",
            ethernet(0x8100, &[0, 100, 0x08, 0x00]),
            vec![MalformedIpv4, VlanTagged],
        ),
        (
            "VLAN tag only, IPv6",
            ethernet(0x8100, &[0, 100, 0x86, 0xDD]),
            vec![MalformedIpv6, VlanTagged],
        ),
        (
            "IPv4 header one byte short",
            Frame::ip(ip4(C4), ip4(S4), 6).build()[..33].to_vec(),
            vec![MalformedIpv4],
        ),
        (
            "IPv6 header one byte short",
            Frame::ip(ip6(C6), ip6(S6), 6).build()[..53].to_vec(),
            vec![MalformedIpv6],
        ),
    ];
    for (what, bytes, expected) in cases {
        expect(&mut harness, &bytes, &expected, what);
    }
}

#[test]
fn bad_ipv4_header_fields_are_malformed_ipv4() {
    let mut harness = XdpHarness::new();
    let templates = [
        Frame::tcp(C4, S4).syn(),
        Frame::udp(C4, S4).payload(b"x"),
        Frame::icmp_echo_request(ip4(C4), ip4(S4), 1, 1),
        Frame::tcp(C4, S4).ipv4_options(&[1; 8]).payload(&[0; 64]),
    ];
    for template in templates.iter().flat_map(tagged) {
        let l = template.layout();
        let header_len = (l.l4 - l.ip) as u16;
        let total = (l.ip_end - l.ip) as u16;
        let mut broken: Vec<Frame> = Vec::new();
        broken.extend((0..5).map(|ihl| template.clone().ipv4_ihl(ihl)));
        // IHL claiming more than the whole packet: beyond the total length, or with a total
        // length to match, beyond the frame.
        if total < 60 {
            broken.push(template.clone().ipv4_ihl(15));
            broken.push(template.clone().ipv4_ihl(15).ip_length(60));
        }
        broken.extend(
            (0..16)
                .filter(|v| *v != 4)
                .map(|v| template.clone().ip_version(v)),
        );
        for length in [0, 1, 19, header_len - 1, total + 1, 0xFFFF] {
            broken.push(template.clone().ip_length(length));
        }
        for frame in broken {
            let bytes = frame.build();
            let expected = with(Counter::MalformedIpv4, observations(&frame, false));
            expect(&mut harness, &bytes, &expected, &format!("{frame:?}"));
        }
    }
}

#[test]
fn bad_ipv6_header_fields_are_malformed_ipv6() {
    let mut harness = XdpHarness::new();
    let templates = [
        Frame::tcp(C6, S6).syn(),
        Frame::udp(C6, S6).payload(b"x"),
        Frame::icmp_echo_request(ip6(C6), ip6(S6), 1, 1),
    ];
    for template in templates.iter().flat_map(tagged) {
        let l = template.layout();
        let payload_len = (l.ip_end - l.ip - 40) as u16;
        let mut broken: Vec<Frame> = (0..16)
            .filter(|v| *v != 6)
            .map(|v| template.clone().ip_version(v))
            .collect();
        broken.push(template.clone().ip_length(payload_len + 1));
        broken.push(template.clone().ip_length(0xFFFF));
        for frame in broken {
            let expected = with(Counter::MalformedIpv6, observations(&frame, false));
            expect(
                &mut harness,
                &frame.build(),
                &expected,
                &format!("{frame:?}"),
            );
        }
    }
}

#[test]
fn bad_tcp_data_offset_is_malformed_tcp() {
    let mut harness = XdpHarness::new();
    let templates = [
        Frame::tcp(C4, S4).syn(),
        Frame::tcp(C4, S4)
            .ack()
            .payload(&[0xAA; 8])
            .ipv4_options(&[1; 4]),
        Frame::tcp(C6, S6).syn(),
        Frame::tcp(C6, S6).ack().payload(&[0xAA; 8]),
    ];
    for template in templates.iter().flat_map(tagged) {
        let payload = template.layout().ip_end - template.layout().payload;
        let mut broken: Vec<Frame> = (0..5)
            .map(|d| template.clone().tcp_data_offset(d))
            .collect();
        // A data offset reaching past the end of the frame.
        broken.push(
            template
                .clone()
                .tcp_data_offset((5 + payload / 4 + 1) as u8),
        );
        for frame in broken {
            let expected = with(Counter::MalformedTcp, observations(&frame, true));
            expect(
                &mut harness,
                &frame.build(),
                &expected,
                &format!("{frame:?}"),
            );
        }
    }
}

#[test]
fn ipv6_extension_headers_are_passed_to_the_kernel() {
    let mut harness = XdpHarness::new();
    let transports = [
        Frame::tcp(C6, S6).syn(),
        Frame::udp(C6, S6).payload(b"x"),
        Frame::icmp_echo_request(ip6(C6), ip6(S6), 1, 1),
    ];
    for transport in &transports {
        let mut frames: Vec<Frame> = Ipv6Extension::all()
            .into_iter()
            .map(|ext| transport.clone().ipv6_extension(ext))
            .collect();
        frames.push(
            transport
                .clone()
                .ipv6_extension(Ipv6Extension::hop_by_hop())
                .ipv6_extension(Ipv6Extension::routing())
                .ipv6_extension(Ipv6Extension::fragment(0, false, 1)),
        );
        for frame in frames.iter().flat_map(tagged) {
            let expected = with(Counter::PassIpv6ExtensionHeader, observations(&frame, true));
            expect(
                &mut harness,
                &frame.build(),
                &expected,
                &format!("{frame:?}"),
            );
        }
    }
}

#[test]
fn ipv4_fragments_are_passed_to_the_kernel() {
    let mut harness = XdpHarness::new();
    let templates = [
        Frame::tcp(C4, S4).syn(),
        Frame::udp(C4, S4).payload(&[1; 32]),
        Frame::icmp_echo_request(ip4(C4), ip4(S4), 1, 1).ipv4_options(&[1; 4]),
    ];
    for template in templates.iter().flat_map(tagged) {
        let fragments = [
            template.clone().more_fragments(),
            template.clone().fragment_offset(1),
            template.clone().more_fragments().fragment_offset(185),
            template.clone().fragment_offset(0x1FFF).dont_fragment(),
        ];
        for frame in fragments {
            let expected = with(Counter::PassIpv4Fragment, observations(&frame, true));
            expect(
                &mut harness,
                &frame.build(),
                &expected,
                &format!("{frame:?}"),
            );
        }
        // DF and the reserved ("evil") bit do not make a fragment.
        let df = template.clone().dont_fragment();
        let expected = with(Counter::PassNoListener, observations(&df, true));
        expect(&mut harness, &df.build(), &expected, "DF set");
        let mut evil = template.build();
        let ip = template.layout().ip;
        evil[ip + 6] |= 0x80;
        expect(&mut harness, &evil, &expected, "reserved flag set");
    }
}

#[test]
fn other_ip_protocols_are_passed_to_the_kernel() {
    let mut harness = XdpHarness::new();
    let payload = [0x5A; 24];
    let mut frames = Vec::new();
    for protocol in [
        ip_proto::GRE,
        ip_proto::SCTP,
        ip_proto::ESP,
        ip_proto::AH,
        ip_proto::IPIP,
        ip_proto::IPV6,
        ip_proto::ICMPV6,
        0,
        255,
    ] {
        frames.push(Frame::ip(ip4(C4), ip4(S4), protocol).payload(&payload));
        frames.push(
            Frame::ip(ip4(C4), ip4(S4), protocol)
                .payload(&payload)
                .ipv4_options(&[1; 4]),
        );
    }
    // ICMP (1) is not ICMPv6 (58) inside IPv6; 59 is "no next header".
    for protocol in [
        ip_proto::GRE,
        ip_proto::SCTP,
        ip_proto::ESP,
        ip_proto::IPIP,
        ip_proto::IPV6,
        ip_proto::ICMP,
        ip_proto::NO_NEXT_HEADER,
        255,
    ] {
        frames.push(Frame::ip(ip6(C6), ip6(S6), protocol).payload(&payload));
    }
    // Real tunnelled packets: IPIP, IP6IP6 and the mixed kinds.
    let outer4 = Ipv4::new(Ipv4Addr::new(192, 168, 0, 1), Ipv4Addr::new(192, 168, 0, 2));
    let outer6 = Ipv6::new("fd01::1".parse().unwrap(), "fd01::2".parse().unwrap());
    frames.push(Frame::tcp(C4, S4).syn().encapsulate(outer4.clone()));
    frames.push(Frame::tcp(C6, S6).syn().encapsulate(outer4));
    frames.push(Frame::udp(C4, S4).encapsulate(outer6.clone()));
    frames.push(Frame::udp(C6, S6).encapsulate(outer6));
    for frame in frames.iter().flat_map(tagged) {
        let expected = with(Counter::PassOtherProtocol, observations(&frame, true));
        expect(
            &mut harness,
            &frame.build(),
            &expected,
            &format!("{frame:?}"),
        );
    }
}

#[test]
fn non_ip_frames_are_passed_to_the_kernel() {
    let mut harness = XdpHarness::new();
    let arp_request = [
        0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 1, 10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 10, 0, 1, 1,
    ];
    let frames = [
        Frame::ethernet(ether_type::ARP)
            .payload(&arp_request)
            .dst_mac([0xFF; 6])
            .pad_to(60),
        Frame::ethernet(ether_type::LLDP).payload(&[2, 7, 4, 2, 0, 0, 0, 0, 1, 0, 0]),
        Frame::ethernet(0x8847).payload(&[0; 40]), // MPLS
        Frame::ethernet(0x05DC).payload(&[0xAA; 46]), // 802.3 length field
        Frame::ethernet(0).payload(&[0; 46]),
    ];
    for frame in frames.iter().flat_map(tagged) {
        let expected = with(Counter::PassNotIp, observations(&frame, true));
        expect(
            &mut harness,
            &frame.build(),
            &expected,
            &format!("{frame:?}"),
        );
    }
}

#[test]
fn stacked_vlan_tags_are_passed_to_the_kernel() {
    let mut harness = XdpHarness::new();
    let (q, ad) = (ether_type::VLAN, ether_type::QINQ);
    let inner = [
        Frame::tcp(C4, S4).syn(),
        Frame::udp(C6, S6),
        Frame::ethernet(ether_type::ARP).payload(&[0; 28]),
    ];
    for frame in &inner {
        for (outer, second) in [(ad, q), (q, q), (q, ad), (ad, ad)] {
            let stacked = frame.clone().vlan_tag(outer, 1).vlan_tag(second, 2);
            let expected = [Counter::PassStackedVlan, Counter::VlanTagged];
            expect(
                &mut harness,
                &stacked.build(),
                &expected,
                &format!("{stacked:?}"),
            );
            let triple = stacked.vlan(3);
            expect(
                &mut harness,
                &triple.build(),
                &expected,
                &format!("{triple:?}"),
            );
        }
    }
    // The second tag's TPID is enough: what follows it is not read.
    let mut only_tpid = Frame::ethernet(ad).build();
    only_tpid.extend([0, 1, 0x81, 0x00]);
    expect(
        &mut harness,
        &only_tpid,
        &[Counter::PassStackedVlan, Counter::VlanTagged],
        "second tag cut",
    );
}

/// A transport header must lie inside the IP packet, not merely inside the frame: bytes after
/// the IP length are Ethernet padding (or garbage an attacker appended), not a TCP header.
#[test]
fn transport_headers_must_fit_in_the_ip_packet() {
    let mut harness = XdpHarness::new();
    let templates = [
        Frame::tcp(C4, S4).syn().mss(1460),
        Frame::udp(C4, S4).payload(&[0; 8]),
        Frame::icmp_echo_request(ip4(C4), ip4(S4), 1, 1),
        Frame::tcp(C6, S6).syn().mss(1460),
        Frame::udp(C6, S6).payload(&[0; 8]),
        Frame::icmp_echo_request(ip6(C6), ip6(S6), 1, 1),
    ];
    for template in templates.iter().flat_map(tagged) {
        let l = template.layout();
        let bytes = template.build();
        let ipv4 = bytes[l.ip] >> 4 == 4;
        for end in l.l4..l.payload {
            // Same bytes, but the IP length ends the packet inside its transport header.
            let ip_length = if ipv4 { end - l.ip } else { end - l.ip - 40 };
            let frame = template.clone().ip_length(ip_length as u16);
            let expected = with(malformed_l4(&bytes, l.ip), observations(&frame, true));
            expect(
                &mut harness,
                &frame.build(),
                &expected,
                &format!("{frame:?} ending at {end}"),
            );
        }
    }
}

/// A tiny deterministic PRNG (xorshift64*), so a failure reproduces from its seed.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

/// Random bytes shaped enough to get past each parse step some of the time.
fn random_frame(rng: &mut XorShift) -> Vec<u8> {
    let len = 14 + rng.below(120);
    let mut b: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
    let mut at = 12;
    fn put(b: &mut [u8], at: usize, bytes: &[u8]) {
        for (i, v) in bytes.iter().enumerate() {
            if let Some(slot) = b.get_mut(at + i) {
                *slot = *v;
            }
        }
    }
    let interesting = [0x0800, 0x0800, 0x86DD, 0x86DD, 0x8100, 0x88A8, 0x0806];
    for _ in 0..3 {
        if rng.below(4) == 0 {
            break;
        }
        let ether_type: u16 = rng.pick(&interesting);
        put(&mut b, at, &ether_type.to_be_bytes());
        match ether_type {
            0x8100 | 0x88A8 => at += 4,
            0x0800 if rng.below(3) > 0 => {
                let ihl = if rng.below(4) > 0 {
                    5
                } else {
                    rng.below(16) as u8
                };
                put(&mut b, at + 2, &[0x40 | ihl]);
                let total = (len.saturating_sub(at + 2) as u16).saturating_sub(rng.below(3) as u16);
                put(&mut b, at + 4, &total.to_be_bytes());
                if rng.below(2) == 0 {
                    put(&mut b, at + 8, &[0, 0]); // not a fragment
                }
                put(&mut b, at + 11, &[rng.pick(&[6, 17, 1, 47])]);
                break;
            }
            0x86DD if rng.below(3) > 0 => {
                put(&mut b, at + 2, &[0x60]);
                let payload =
                    (len.saturating_sub(at + 42) as u16).saturating_sub(rng.below(3) as u16);
                put(&mut b, at + 6, &payload.to_be_bytes());
                put(&mut b, at + 8, &[rng.pick(&[6, 17, 58, 0, 44, 50])]);
                break;
            }
            _ => break,
        }
    }
    b
}

/// A well-formed frame with a few random byte changes, a random cut, or random bytes added.
fn mutated_frame(rng: &mut XorShift, templates: &[Frame]) -> Vec<u8> {
    let template = &templates[rng.below(templates.len())];
    let layout = template.layout();
    let mut b = template.build();
    for _ in 0..1 + rng.below(3) {
        match rng.below(6) {
            // Mostly within the headers, where parsing decisions are made.
            0..=2 => {
                let at = rng.below(layout.payload.min(b.len()));
                b[at] = rng.byte();
            }
            3 => {
                let at = rng.below(b.len());
                b[at] ^= 1 << rng.below(8);
            }
            4 => b.truncate(14 + rng.below(b.len() - 13)),
            _ => b.extend((0..rng.below(16)).map(|_| rng.byte())),
        }
    }
    b
}

/// What a frame should count according to the counters' definitions: observations and one
/// outcome, sorted. An independent model of `lb-ebpf/src/parse.rs`.
fn model(f: &[u8]) -> Vec<Counter> {
    let mut counters = Vec::new();
    let outcome = model_outcome(f, &mut counters);
    counters.push(outcome);
    counters.sort();
    counters
}

/// The outcome counter for `f`; observations along the way go to `counters`.
fn model_outcome(f: &[u8], counters: &mut Vec<Counter>) -> Counter {
    let be16 = |at: usize| u16::from_be_bytes([f[at], f[at + 1]]);
    let mut ether_type = be16(12);
    let mut l3 = 14;
    if ether_type == 0x8100 || ether_type == 0x88A8 {
        counters.push(Counter::VlanTagged);
        if f.len() < 18 {
            return Counter::MalformedVlan;
        }
        ether_type = be16(16);
        l3 = 18;
        if ether_type == 0x8100 || ether_type == 0x88A8 {
            return Counter::PassStackedVlan;
        }
    }
    let (protocol, l4, end) = match ether_type {
        0x0800 => {
            if f.len() < l3 + 20 {
                return Counter::MalformedIpv4;
            }
            let header_len = usize::from(f[l3] & 0x0F) * 4;
            let total = usize::from(be16(l3 + 2));
            if f[l3] >> 4 != 4 || header_len < 20 || total < header_len || l3 + total > f.len() {
                return Counter::MalformedIpv4;
            }
            if header_len > 20 {
                counters.push(Counter::Ipv4Options);
            }
            if be16(l3 + 6) & 0x3FFF != 0 {
                return Counter::PassIpv4Fragment;
            }
            match f[l3 + 9] {
                p @ (6 | 17 | 1) => (p, l3 + header_len, l3 + total),
                _ => return Counter::PassOtherProtocol,
            }
        }
        0x86DD => {
            if f.len() < l3 + 40 || f[l3] >> 4 != 6 || l3 + 40 + usize::from(be16(l3 + 4)) > f.len()
            {
                return Counter::MalformedIpv6;
            }
            match f[l3 + 6] {
                p @ (6 | 17 | 58) => (p, l3 + 40, l3 + 40 + usize::from(be16(l3 + 4))),
                0 | 43 | 44 | 51 | 60 | 135 | 139 | 140 => return Counter::PassIpv6ExtensionHeader,
                _ => return Counter::PassOtherProtocol,
            }
        }
        _ => return Counter::PassNotIp,
    };
    // Transport headers must fit in the IP packet; bytes after it are padding.
    match protocol {
        6 if l4 + 20 > end
            || f[l4 + 12] >> 4 < 5
            || l4 + usize::from(f[l4 + 12] >> 4) * 4 > end =>
        {
            Counter::MalformedTcp
        }
        17 if l4 + 8 > end => Counter::MalformedUdp,
        1 | 58 if l4 + 8 > end => Counter::MalformedIcmp,
        _ => Counter::PassNoListener,
    }
}

#[test]
fn random_and_mutated_frames_pass_unchanged_with_exactly_one_outcome() {
    let mut harness = XdpHarness::new();
    let templates = all_well_formed();
    let mut rng = XorShift(0x5EED_F00D_1234_5678);
    let mut seen = std::collections::BTreeMap::new();
    for i in 0..6000 {
        let bytes = if i % 2 == 0 {
            random_frame(&mut rng)
        } else {
            mutated_frame(&mut rng, &templates)
        };
        let what = format!("frame #{i}: {}", hex(&bytes));
        let run = harness.run(&bytes);
        assert_eq!(run.action, XDP_PASS, "{what}");
        assert!(
            run.output == bytes,
            "{what} was changed to {}",
            hex(&run.output)
        );
        let one = CounterValue {
            packets: 1,
            bytes: bytes.len() as u64,
        };
        let moved = run.moved();
        assert!(
            moved.iter().all(|(_, v)| *v == one),
            "{what} moved {moved:?}"
        );
        let outcomes = moved
            .iter()
            .filter(|(c, _)| c.kind() == CounterKind::Outcome)
            .count();
        assert_eq!(outcomes, 1, "{what} moved {moved:?}");
        let moved: Vec<_> = moved.into_iter().map(|(c, _)| c).collect();
        assert_eq!(moved, model(&bytes), "{what}: program vs model");
        *seen.entry(run.outcome()).or_insert(0) += 1;
    }
    // The inputs must reach every parse outcome (with no listener configured, nothing is
    // forwarded), or this test proves less than it seems.
    for counter in Counter::ALL {
        let parse_outcome = counter.name().starts_with("malformed_")
            || (counter.name().starts_with("pass_")
                && ![
                    Counter::PassVipIcmp,
                    Counter::PassNeighborUnresolved,
                    Counter::PassVlanListener,
                ]
                .contains(counter));
        if parse_outcome && *counter != Counter::MalformedEthernet {
            assert!(
                seen.contains_key(counter),
                "no input reached {counter:?}: {seen:?}"
            );
        }
    }
}
