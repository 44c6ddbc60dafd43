//! `sluice_decap` through `BPF_PROG_TEST_RUN`: tunnelled frames come out as exactly the inner
//! frame (same MACs, the inner family's EtherType) and go to the kernel; everything else,
//! malformed tunnels included, goes to the kernel untouched. Every frame moves exactly one
//! `DecapCounter`, and never the load balancer's counters.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use aya::maps::{MapData, PerCpuArray};
use lb_common::{decap::DecapCounter, stats::CounterValue};

use crate::{
    checksum,
    packet::{ether_type, ip_proto, Frame, Ipv4, Ipv6, Ipv6Extension},
};

use super::packet_harness::{hex, RunResult, XdpHarness, XDP_PASS};

/// `sluice_decap` loaded on its own, with its counters.
pub struct DecapHarness {
    harness: XdpHarness,
    stats: PerCpuArray<MapData, CounterValue>,
}

/// One run: the harness's result and the decap counters it moved.
pub struct DecapRun {
    pub run: RunResult,
    pub moved: Vec<(DecapCounter, CounterValue)>,
}

impl DecapHarness {
    pub fn new() -> DecapHarness {
        let mut harness = XdpHarness::with_program(sluice::dataplane::load::DECAP_PROGRAM_NAME);
        let map = harness
            .ebpf_mut()
            .take_map("DECAP_STATS")
            .expect("the XDP object has a DECAP_STATS map");
        let stats = PerCpuArray::try_from(map).expect("DECAP_STATS is a per-CPU array");
        DecapHarness { harness, stats }
    }

    pub fn run(&mut self, frame: &[u8]) -> DecapRun {
        let before = self.counters();
        let run = self.harness.run(frame);
        let moved = self
            .counters()
            .into_iter()
            .zip(before)
            .filter(|((_, now), (_, then))| now != then)
            .map(|((c, now), (_, then))| {
                (
                    c,
                    CounterValue {
                        packets: now.packets - then.packets,
                        bytes: now.bytes - then.bytes,
                    },
                )
            })
            .collect();
        assert_eq!(
            run.moved(),
            vec![],
            "sluice_decap moved the load balancer's counters"
        );
        DecapRun { run, moved }
    }

    fn counters(&self) -> Vec<(DecapCounter, CounterValue)> {
        DecapCounter::ALL
            .iter()
            .map(|&c| {
                let mut total = CounterValue::default();
                for v in self.stats.get(&(c as u32), 0).unwrap().iter() {
                    total.add(v);
                }
                (c, total)
            })
            .collect()
    }
}

impl DecapRun {
    /// Asserts XDP_PASS and that exactly `counter` moved, by one packet of `input`'s length.
    pub fn assert_counted(&self, input: &[u8], counter: DecapCounter) {
        assert_eq!(self.run.action, XDP_PASS, "action for {}", hex(input));
        let one = CounterValue {
            packets: 1,
            bytes: input.len() as u64,
        };
        assert_eq!(
            self.moved,
            vec![(counter, one)],
            "counters moved by {}",
            hex(input)
        );
    }

    /// Asserts the frame went to the kernel unchanged, counted as `counter`.
    pub fn assert_untouched(&self, input: &[u8], counter: DecapCounter) {
        self.assert_counted(input, counter);
        assert!(
            self.run.output == input,
            "the frame was changed:\n in:  {}\n out: {}",
            hex(input),
            hex(&self.run.output)
        );
    }

    /// Asserts the frame was decapsulated into exactly `inner`.
    pub fn assert_decapsulated(&self, input: &[u8], inner: &[u8]) {
        self.assert_counted(input, DecapCounter::Decapsulated);
        assert_eq!(
            hex(&self.run.output),
            hex(inner),
            "decapsulating {}",
            hex(input)
        );
    }
}

const SRC_MAC: [u8; 6] = [0x02, 0x5c, 0, 0, 0, 0x01];
const DST_MAC: [u8; 6] = [0x02, 0x5c, 0, 0, 0x10, 0x02];
const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 2);
const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x201, 0, 0, 0, 0, 0, 2);
const VIP_V4: Ipv4Addr = Ipv4Addr::new(10, 210, 0, 1);
const VIP_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x210, 0, 0, 0, 0, 0, 1);

/// The outer header the load balancer writes: tunnel source to target.
fn outer4() -> Ipv4 {
    Ipv4::new(
        Ipv4Addr::new(172, 16, 0x12, 0x34),
        Ipv4Addr::new(10, 200, 0, 12),
    )
}

fn outer6() -> Ipv6 {
    Ipv6::new(
        "fd00:51c::1234:5678".parse().unwrap(),
        "fd00:200::12".parse().unwrap(),
    )
}

fn macs(frame: Frame) -> Frame {
    frame.src_mac(SRC_MAC).dst_mac(DST_MAC)
}

/// Client packets of both families and a few shapes.
fn inner_frames() -> Vec<Frame> {
    let vip4 = SocketAddr::from((VIP_V4, 80));
    let vip6 = SocketAddr::from((VIP_V6, 443));
    vec![
        macs(Frame::tcp((CLIENT_V4, 40000), vip4).syn().mss(1460)),
        macs(
            Frame::udp((CLIENT_V4, 40001), (VIP_V4, 53))
                .payload(b"query")
                .dont_fragment(),
        ),
        macs(
            Frame::tcp((CLIENT_V4, 40002), vip4)
                .ack()
                .ipv4_options(&[1, 1, 1, 1])
                .payload(b"options inside"),
        ),
        macs(
            Frame::tcp((CLIENT_V6, 40003), vip6)
                .syn()
                .flow_label(0x12345),
        ),
        macs(Frame::udp((CLIENT_V6, 40004), (VIP_V6, 53)).payload(b"query6")),
        macs(Frame::icmp_echo_request(CLIENT_V4, VIP_V4, 7, 1).payload(b"ping")),
    ]
}

#[test]
fn decap_strips_ipip_ip6ip6_4in6_and_6in4() {
    let mut decap = DecapHarness::new();
    for inner in inner_frames() {
        let expected = inner.build();
        let outers: [crate::packet::Ip; 3] = [
            outer4().into(),
            outer6().into(),
            Ipv4 {
                options: vec![1, 1, 1, 0],
                dont_fragment: true,
                ..outer4()
            }
            .into(),
        ];
        for outer in outers {
            let input = inner.clone().encapsulate(outer.clone()).build();
            checksum::verify(&input).unwrap();
            let run = decap.run(&input);
            run.assert_decapsulated(&input, &expected);
            let ether = u16::from_be_bytes([run.run.output[12], run.run.output[13]]);
            let want = if expected[14] >> 4 == 4 {
                ether_type::IPV4
            } else {
                ether_type::IPV6
            };
            assert_eq!(ether, want, "EtherType after removing {outer:?}");
            checksum::verify(&run.run.output).unwrap();
        }
    }
}

#[test]
fn ethernet_padding_stays_behind_the_inner_packet() {
    let mut decap = DecapHarness::new();
    let inner = macs(Frame::udp((CLIENT_V4, 40000), (VIP_V4, 53)).payload(b"q"));
    let input = inner.clone().encapsulate(outer4()).pad_to(80).build();
    let run = decap.run(&input);
    let mut expected = inner.build();
    expected.resize(80 - 20, 0);
    run.assert_decapsulated(&input, &expected);
}

#[test]
fn frames_that_are_not_tunnelled_pass_untouched() {
    let mut decap = DecapHarness::new();
    let vip = SocketAddr::from((VIP_V4, 80));
    let cases: Vec<(Frame, DecapCounter)> = vec![
        (
            Frame::tcp((CLIENT_V4, 40000), vip).syn(),
            DecapCounter::PassedNotTunnel,
        ),
        (
            Frame::udp((CLIENT_V6, 40000), (VIP_V6, 53)).payload(b"x"),
            DecapCounter::PassedNotTunnel,
        ),
        (
            Frame::ip(CLIENT_V4, VIP_V4, ip_proto::GRE).payload(&[0; 24]),
            DecapCounter::PassedNotTunnel,
        ),
        (
            Frame::icmp_echo_request(CLIENT_V6, VIP_V6, 1, 1),
            DecapCounter::PassedNotTunnel,
        ),
        // An IPv6 outer header with an extension header before the tunnelled packet.
        (
            Frame::udp((CLIENT_V4, 40000), (VIP_V4, 53)).encapsulate(Ipv6 {
                extensions: vec![Ipv6Extension::destination_options()],
                ..outer6()
            }),
            DecapCounter::PassedNotTunnel,
        ),
        (
            Frame::ethernet(ether_type::ARP).payload(&[0; 28]),
            DecapCounter::PassedNotIp,
        ),
        (
            Frame::ethernet(ether_type::LLDP).payload(&[0; 46]),
            DecapCounter::PassedNotIp,
        ),
        (
            Frame::tcp((CLIENT_V4, 40000), vip)
                .syn()
                .encapsulate(outer4())
                .vlan(7),
            DecapCounter::PassedVlan,
        ),
        (
            Frame::tcp((CLIENT_V4, 40000), vip).syn().encapsulate(Ipv4 {
                more_fragments: true,
                ..outer4()
            }),
            DecapCounter::PassedFragment,
        ),
        (
            Frame::tcp((CLIENT_V4, 40000), vip).syn().encapsulate(Ipv4 {
                fragment_offset: 185,
                ..outer4()
            }),
            DecapCounter::PassedFragment,
        ),
    ];
    for (frame, counter) in cases {
        let input = macs(frame).build();
        decap.run(&input).assert_untouched(&input, counter);
    }
}

/// Recomputes the outer IPv4 header checksum (at 14) after a test broke another field.
fn fix_outer_checksum(frame: &mut [u8]) {
    let header_len = usize::from(frame[14] & 0x0f) * 4;
    frame[24..26].fill(0);
    let mut sum = 0u32;
    for pair in frame[14..14 + header_len.max(20)].chunks(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    frame[24..26].copy_from_slice(&(!(sum as u16)).to_be_bytes());
}

#[test]
fn malformed_outer_headers_are_counted_and_passed_untouched() {
    let mut decap = DecapHarness::new();
    let inner = macs(Frame::tcp((CLIENT_V4, 40000), (VIP_V4, 80)).syn());
    let good4 = inner.clone().encapsulate(outer4()).build();
    let good6 = inner.clone().encapsulate(outer6()).build();
    let total4 = u16::from_be_bytes([good4[16], good4[17]]);
    let payload6 = u16::from_be_bytes([good6[18], good6[19]]);

    let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut broken4 = |what, f: &dyn Fn(&mut Vec<u8>), fix: bool| {
        let mut frame = good4.clone();
        f(&mut frame);
        if fix {
            fix_outer_checksum(&mut frame);
        }
        cases.push((what, frame));
    };
    broken4("version 5", &|b| b[14] = 0x55, true);
    broken4("IHL 4", &|b| b[14] = 0x44, true);
    broken4(
        "total length beyond the frame",
        &|b| b[16..18].copy_from_slice(&(total4 + 1).to_be_bytes()),
        true,
    );
    broken4(
        "total length shorter than the header",
        &|b| b[16..18].copy_from_slice(&19u16.to_be_bytes()),
        true,
    );
    broken4("wrong header checksum", &|b| b[24] ^= 0x01, false);
    broken4("header cut short", &|b| b.truncate(14 + 19), false);
    let mut broken6 = |what, f: &dyn Fn(&mut Vec<u8>)| {
        let mut frame = good6.clone();
        f(&mut frame);
        cases.push((what, frame));
    };
    broken6("IPv6 version 7", &|b| b[14] = 0x70 | (b[14] & 0x0f));
    broken6("IPv6 payload length beyond the frame", &|b| {
        b[18..20].copy_from_slice(&(payload6 + 1).to_be_bytes())
    });
    broken6("IPv6 header cut short", &|b| b.truncate(14 + 39));
    // The EtherType says IPv6, the header is IPv4.
    let mut mismatched = good4.clone();
    mismatched[12..14].copy_from_slice(&ether_type::IPV6.to_be_bytes());
    mismatched.resize(mismatched.len().max(14 + 40 + 20), 0);
    cases.push(("IPv4 header behind the IPv6 EtherType", mismatched));

    for (what, input) in cases {
        let run = decap.run(&input);
        assert_eq!(
            run.moved.first().map(|(c, _)| *c),
            Some(DecapCounter::MalformedOuter),
            "{what}"
        );
        run.assert_untouched(&input, DecapCounter::MalformedOuter);
    }
}

#[test]
fn malformed_inner_headers_are_counted_and_passed_untouched() {
    let mut decap = DecapHarness::new();
    let tcp4 = macs(Frame::tcp((CLIENT_V4, 40000), (VIP_V4, 80)).syn());
    let tcp6 = macs(Frame::tcp((CLIENT_V6, 40000), (VIP_V6, 80)).syn());
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "inner IPv4 longer than the outer payload",
            tcp4.clone().ip_length(41).encapsulate(outer4()).build(),
        ),
        (
            "inner IHL 4",
            tcp4.clone().ipv4_ihl(4).encapsulate(outer6()).build(),
        ),
        (
            "inner IPv4 version 6",
            tcp4.clone().ip_version(6).encapsulate(outer4()).build(),
        ),
        (
            "inner IPv6 longer than the outer payload",
            tcp6.clone().ip_length(21).encapsulate(outer6()).build(),
        ),
        (
            "inner IPv6 version 4",
            tcp6.clone().ip_version(4).encapsulate(outer4()).build(),
        ),
    ];
    // Protocol 4 announced, an IPv6 packet inside (and the other way round).
    let mut wrong_protocol = tcp6.clone().encapsulate(outer4()).build();
    wrong_protocol[14 + 9] = ip_proto::IPIP;
    fix_outer_checksum(&mut wrong_protocol);
    cases.push(("IPv6 inside protocol 4", wrong_protocol));
    let mut wrong_next = tcp4.clone().encapsulate(outer6()).build();
    wrong_next[14 + 6] = ip_proto::IPV6;
    cases.push(("IPv4 inside next header 41", wrong_next));
    // The outer header announces a tunnel but nothing (or too little) follows it.
    let empty = macs(Frame::ip(
        Ipv4Addr::new(172, 16, 0, 1),
        Ipv4Addr::new(10, 200, 0, 12),
        ip_proto::IPIP,
    ))
    .payload(&[0x45, 0, 0, 20, 0, 0])
    .build();
    cases.push(("inner header cut short", empty));

    for (what, input) in cases {
        let run = decap.run(&input);
        assert_eq!(
            run.moved.first().map(|(c, _)| *c),
            Some(DecapCounter::MalformedInner),
            "{what}"
        );
        run.assert_untouched(&input, DecapCounter::MalformedInner);
    }
}
