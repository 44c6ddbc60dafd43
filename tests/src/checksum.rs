//! An independent checksum verifier for frames, above all for those the XDP program rewrites
//! (NAT, DSR, IPIP): it walks Ethernet, VLAN tags, IPv4 or IPv6 (extension headers, and IP in
//! IP to any depth) and checks the IPv4 header checksum and the TCP, UDP, ICMP and ICMPv6
//! checksums, with pseudo-headers where the protocol has one.
//!
//! The one's-complement sum is this module's own (RFC 1071), deliberately not etherparse's,
//! which [`crate::packet`] uses to build frames: the two must agree.
//!
//! A checksum is valid when the one's-complement sum over the data including the checksum is
//! 0xFFFF, which is what a receiving stack checks; so 0x0000 and 0xFFFF are equally valid
//! where they are equivalent (RFC 1624). Only the IP packet is checked: bytes after the IP
//! length (Ethernet padding) are ignored.

use std::{fmt, ops::Range};

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;

const IPPROTO_ICMP: u8 = 1;
const IPPROTO_IPIP: u8 = 4;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_IPV6: u8 = 41;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_ICMPV6: u8 = 58;

/// IPv6 extension headers whose length field counts 8-byte units beyond the first 8:
/// hop-by-hop, routing, destination options, mobility, HIP, shim6.
const IPV6_EIGHT_BYTE_UNIT_EXTENSIONS: [u8; 6] = [0, 43, 60, 135, 139, 140];

/// Nested IP-in-IP beyond this is treated as an attack on the verifier, not a test frame.
const MAX_IP_DEPTH: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Ipv4Header,
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Ipv4Header => "IPv4 header",
            Kind::Tcp => "TCP",
            Kind::Udp => "UDP",
            Kind::Icmp => "ICMP",
            Kind::Icmpv6 => "ICMPv6",
        })
    }
}

/// A checksum that was checked and is valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verified {
    pub kind: Kind,
    /// Offset of the checksum field in the frame.
    pub offset: usize,
    pub value: u16,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChecksumError {
    #[error("{kind} checksum at byte {offset} is {found:#06x}, expected {expected:#06x}")]
    Wrong {
        kind: Kind,
        /// Offset of the checksum field in the frame.
        offset: usize,
        expected: u16,
        found: u16,
    },
    #[error("cannot check checksums: at byte {offset}, {reason}")]
    Unparsable { offset: usize, reason: String },
}

/// RFC 1071: the one's-complement sum of big-endian 16-bit words (an odd last byte is padded
/// with zero), folded to 16 bits. Not complemented.
pub fn ones_complement_sum(data: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    let mut words = data.chunks_exact(2);
    for word in &mut words {
        sum += u64::from(u16::from_be_bytes([word[0], word[1]]));
    }
    if let [last] = words.remainder() {
        sum += u64::from(*last) << 8;
    }
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    sum as u16
}

/// The checksum to put in a field that is zero in `data`.
pub fn internet_checksum(data: &[u8]) -> u16 {
    !ones_complement_sum(data)
}

/// Verifies every checksum in `frame`, outermost first, returning those checked. Non-IP
/// frames, IP protocols without a checksum and fragments' transport headers are not checked.
pub fn verify(frame: &[u8]) -> Result<Vec<Verified>, ChecksumError> {
    let mut checked = Vec::new();
    let mut offset = 12;
    let mut ether_type = be16(frame, offset, "Ethernet header")?;
    offset += 2;
    while ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        ether_type = be16(frame, offset + 2, "VLAN tag")?;
        offset += 4;
    }
    if ether_type == ETH_P_IPV4 || ether_type == ETH_P_IPV6 {
        verify_ip(frame, offset, frame.len(), 1, &mut checked)?;
    }
    Ok(checked)
}

/// Verifies the IP packet at `start`, which may extend at most to `end`.
fn verify_ip(
    frame: &[u8],
    start: usize,
    end: usize,
    depth: usize,
    checked: &mut Vec<Verified>,
) -> Result<(), ChecksumError> {
    if depth > MAX_IP_DEPTH {
        return Err(unparsable(
            start,
            format!("more than {MAX_IP_DEPTH} nested IP headers"),
        ));
    }
    let first = *frame
        .get(start)
        .ok_or_else(|| unparsable(start, "the IP header is missing".into()))?;
    match first >> 4 {
        4 => verify_ipv4(frame, start, end, depth, checked),
        6 => verify_ipv6(frame, start, end, depth, checked),
        v => Err(unparsable(start, format!("IP version {v}"))),
    }
}

fn verify_ipv4(
    frame: &[u8],
    start: usize,
    end: usize,
    depth: usize,
    checked: &mut Vec<Verified>,
) -> Result<(), ChecksumError> {
    need(frame, start, 20, end, "IPv4 header")?;
    let header_len = usize::from(frame[start] & 0x0F) * 4;
    if header_len < 20 {
        return Err(unparsable(
            start,
            format!("IPv4 IHL {} is below 5", header_len / 4),
        ));
    }
    need(frame, start, header_len, end, "IPv4 header with options")?;
    let total = usize::from(be16(frame, start + 2, "IPv4 header")?);
    if total < header_len || start + total > end {
        return Err(unparsable(
            start + 2,
            format!(
                "IPv4 total length {total} is outside {header_len}..={}",
                end - start
            ),
        ));
    }
    check(
        frame,
        Kind::Ipv4Header,
        start + 10,
        &[],
        start..start + header_len,
        checked,
    )?;

    let fragment = be16(frame, start + 6, "IPv4 header")? & 0x3FFF;
    if fragment != 0 {
        return Ok(());
    }
    let addresses = Addresses::V4(&frame[start + 12..start + 20]);
    let upper = start + header_len..start + total;
    verify_upper(frame, frame[start + 9], upper, addresses, depth, checked)
}

fn verify_ipv6(
    frame: &[u8],
    start: usize,
    end: usize,
    depth: usize,
    checked: &mut Vec<Verified>,
) -> Result<(), ChecksumError> {
    need(frame, start, 40, end, "IPv6 header")?;
    let packet_end = start + 40 + usize::from(be16(frame, start + 4, "IPv6 header")?);
    if packet_end > end {
        return Err(unparsable(
            start + 4,
            format!(
                "IPv6 payload length {} exceeds the {} bytes present",
                packet_end - start - 40,
                end - start - 40
            ),
        ));
    }
    let mut next = frame[start + 6];
    let mut offset = start + 40;
    loop {
        let len = if IPV6_EIGHT_BYTE_UNIT_EXTENSIONS.contains(&next) {
            need(frame, offset, 2, packet_end, "IPv6 extension header")?;
            (usize::from(frame[offset + 1]) + 1) * 8
        } else if next == IPPROTO_AH {
            need(frame, offset, 2, packet_end, "IPv6 authentication header")?;
            (usize::from(frame[offset + 1]) + 2) * 4
        } else if next == IPPROTO_FRAGMENT {
            need(frame, offset, 8, packet_end, "IPv6 fragment header")?;
            // Offset or "more fragments" set: the transport header is not all here.
            if be16(frame, offset + 2, "IPv6 fragment header")? & 0xFFF9 != 0 {
                return Ok(());
            }
            8
        } else {
            break;
        };
        need(frame, offset, len, packet_end, "IPv6 extension header")?;
        next = frame[offset];
        offset += len;
    }
    let addresses = Addresses::V6(&frame[start + 8..start + 40]);
    verify_upper(frame, next, offset..packet_end, addresses, depth, checked)
}

/// Source and destination address bytes of the IP header, for a pseudo-header.
#[derive(Clone, Copy)]
enum Addresses<'a> {
    V4(&'a [u8]),
    V6(&'a [u8]),
}

impl Addresses<'_> {
    /// RFC 793 / RFC 768 (IPv4) and RFC 8200 section 8.1 (IPv6). With IPv6 the destination
    /// should be the final one; that is this one unless a routing header has segments left,
    /// which sluice does not handle.
    fn pseudo_header(self, protocol: u8, upper_len: usize) -> Vec<u8> {
        match self {
            Addresses::V4(addrs) => {
                [addrs, &[0, protocol], &(upper_len as u16).to_be_bytes()].concat()
            }
            Addresses::V6(addrs) => [
                addrs,
                &(upper_len as u32).to_be_bytes(),
                &[0, 0, 0, protocol],
            ]
            .concat(),
        }
    }
}

/// Verifies the upper-layer data `frame[range]` of `protocol`.
fn verify_upper(
    frame: &[u8],
    protocol: u8,
    range: Range<usize>,
    addresses: Addresses,
    depth: usize,
    checked: &mut Vec<Verified>,
) -> Result<(), ChecksumError> {
    let (start, end) = (range.start, range.end);
    let pseudo = addresses.pseudo_header(protocol, end - start);
    let (kind, field, pseudo) = match protocol {
        IPPROTO_IPIP | IPPROTO_IPV6 => return verify_ip(frame, start, end, depth + 1, checked),
        IPPROTO_TCP => (Kind::Tcp, 16, &pseudo[..]),
        IPPROTO_UDP => (Kind::Udp, 6, &pseudo[..]),
        // ICMP has no pseudo-header. ICMP (1) inside IPv6 is not ICMPv6 and is checked like
        // ICMP, which is what a receiver would do if it accepted it.
        IPPROTO_ICMP => (Kind::Icmp, 2, &[][..]),
        IPPROTO_ICMPV6 => (Kind::Icmpv6, 2, &pseudo[..]),
        _ => return Ok(()),
    };
    need(frame, start, field + 2, end, &format!("{kind} header"))?;
    if kind == Kind::Udp {
        let length = usize::from(be16(frame, start + 4, "UDP header")?);
        if length != end - start {
            return Err(unparsable(
                start + 4,
                format!(
                    "UDP length {length} differs from the IP payload's {}",
                    end - start
                ),
            ));
        }
        // 0 means "no checksum": allowed over IPv4 (RFC 768), forbidden over IPv6 (RFC 8200
        // section 8.1), where `check` reports it as wrong.
        if be16(frame, start + 6, "UDP header")? == 0 && matches!(addresses, Addresses::V4(_)) {
            return Ok(());
        }
    }
    check(frame, kind, start + field, pseudo, range, checked)
}

/// Checks the checksum field at `field` (inside `range`) over `pseudo` + `frame[range]`.
fn check(
    frame: &[u8],
    kind: Kind,
    field: usize,
    pseudo: &[u8],
    range: Range<usize>,
    checked: &mut Vec<Verified>,
) -> Result<(), ChecksumError> {
    let mut data = pseudo.to_vec();
    data.extend(&frame[range.clone()]);
    let at = pseudo.len() + field - range.start;
    let found = u16::from_be_bytes([data[at], data[at + 1]]);
    // A UDP checksum of 0 is never a valid value, whatever the sum says: it means "none".
    if ones_complement_sum(&data) != 0xFFFF || (kind == Kind::Udp && found == 0) {
        data[at..at + 2].fill(0);
        let expected = match internet_checksum(&data) {
            0 if kind == Kind::Udp => 0xFFFF,
            c => c,
        };
        return Err(ChecksumError::Wrong {
            kind,
            offset: field,
            expected,
            found,
        });
    }
    checked.push(Verified {
        kind,
        offset: field,
        value: found,
    });
    Ok(())
}

fn be16(frame: &[u8], offset: usize, what: &str) -> Result<u16, ChecksumError> {
    match frame.get(offset..offset + 2) {
        Some(b) => Ok(u16::from_be_bytes([b[0], b[1]])),
        None => Err(unparsable(offset, format!("the {what} is cut short"))),
    }
}

/// Requires `len` bytes at `offset`, within `end`.
fn need(
    frame: &[u8],
    offset: usize,
    len: usize,
    end: usize,
    what: &str,
) -> Result<(), ChecksumError> {
    if offset + len > end.min(frame.len()) {
        return Err(unparsable(
            offset,
            format!(
                "the {what} needs {len} bytes, {} are left",
                end.min(frame.len()).saturating_sub(offset)
            ),
        ));
    }
    Ok(())
}

fn unparsable(offset: usize, reason: String) -> ChecksumError {
    ChecksumError::Unparsable { offset, reason }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

    use super::*;
    use crate::packet::{Frame, Ipv4, Ipv6, Ipv6Extension};

    const C4: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 40000);
    const S4: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 1, 1), 80);
    const C6: SocketAddrV6 =
        SocketAddrV6::new(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1), 40000, 0, 0);
    const S6: SocketAddrV6 =
        SocketAddrV6::new(Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 1), 443, 0, 0);

    fn kinds(checked: &[Verified]) -> Vec<Kind> {
        checked.iter().map(|v| v.kind).collect()
    }

    /// Frames with the checksums a correct verifier must find, in order.
    fn samples() -> Vec<(Frame, Vec<Kind>)> {
        use Kind::*;
        let outer4 = Ipv4::new(Ipv4Addr::new(192, 168, 0, 1), Ipv4Addr::new(192, 168, 0, 2));
        let outer6 = Ipv6::new("fd01::1".parse().unwrap(), "fd01::2".parse().unwrap());
        vec![
            (Frame::tcp(C4, S4).syn().mss(1460), vec![Ipv4Header, Tcp]),
            (
                Frame::tcp(C4, S4).ack().payload(b"odd").vlan(10),
                vec![Ipv4Header, Tcp],
            ),
            (
                Frame::tcp(C4, S4)
                    .ipv4_options(&[1, 1, 1, 0])
                    .payload(b"opts"),
                vec![Ipv4Header, Tcp],
            ),
            (Frame::udp(C4, S4).payload(b"hello"), vec![Ipv4Header, Udp]),
            (
                Frame::udp(C4, S4).payload(b"padded").pad_to(60),
                vec![Ipv4Header, Udp],
            ),
            (
                Frame::icmp_echo_request(*C4.ip(), *S4.ip(), 1, 2).payload(b"ping"),
                vec![Ipv4Header, Icmp],
            ),
            (Frame::tcp(C6, S6).syn().payload(b"x"), vec![Tcp]),
            (
                Frame::udp(C6, S6).payload(b"hello6").vlan(3).vlan(4),
                vec![Udp],
            ),
            (
                Frame::icmp_echo_reply(*C6.ip(), *S6.ip(), 1, 2).payload(b"pong"),
                vec![Icmpv6],
            ),
            (
                Frame::tcp(C6, S6)
                    .ipv6_extension(Ipv6Extension::hop_by_hop())
                    .ipv6_extension(Ipv6Extension::authentication())
                    .payload(b"ext"),
                vec![Tcp],
            ),
            (
                Frame::tcp(C4, S4).syn().encapsulate(outer4.clone()),
                vec![Ipv4Header, Ipv4Header, Tcp],
            ),
            (
                Frame::udp(C6, S6).payload(b"6in4").encapsulate(outer4),
                vec![Ipv4Header, Udp],
            ),
            (
                Frame::udp(C4, S4)
                    .payload(b"4in6")
                    .encapsulate(outer6.clone()),
                vec![Ipv4Header, Udp],
            ),
            (
                Frame::icmp_echo_request(*C6.ip(), *S6.ip(), 3, 4).encapsulate(outer6),
                vec![Icmpv6],
            ),
        ]
    }

    #[test]
    fn rfc1071_examples() {
        // RFC 1071 section 3's worked example.
        assert_eq!(
            ones_complement_sum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0xddf2
        );
        // A well-known IPv4 header (checksum 0xb861 at bytes 10..12).
        let header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(internet_checksum(&header), 0xb861);
        assert_eq!(ones_complement_sum(&[0xab]), 0xab00);
    }

    #[test]
    fn frames_from_the_builder_verify() {
        for (frame, expected) in samples() {
            let checked = verify(&frame.build()).unwrap_or_else(|e| panic!("{frame:?}: {e}"));
            assert_eq!(kinds(&checked), expected, "{frame:?}");
        }
    }

    /// Flipping any one byte covered by a checksum must be caught. Not covered by any: the
    /// Ethernet and VLAN headers, an IPv6 header's first 8 bytes (version, class, flow label,
    /// payload length, next header, hop limit), IPv6 extension headers, and an outer IPv6
    /// header (the inner packet's pseudo-header has the inner addresses).
    #[test]
    fn a_flipped_byte_in_any_header_or_payload_is_caught() {
        for (frame, _) in samples() {
            let bytes = frame.build();
            let l = frame.layout();
            let mut uncovered = vec![
                0..l.l3,
                l.ipv6_extensions.first().map_or(l.l4, |&e| e)..l.l4,
            ];
            if bytes[l.ip] >> 4 == 6 {
                uncovered.push(l.ip..l.ip + 8);
            }
            if l.outer_ip.is_some() && bytes[l.l3] >> 4 == 6 {
                uncovered.push(l.l3..l.l3 + 40);
            }
            for at in (0..l.ip_end).filter(|at| !uncovered.iter().any(|r| r.contains(at))) {
                let mut broken = bytes.clone();
                broken[at] ^= 0x01;
                assert!(
                    verify(&broken).is_err(),
                    "flipping byte {at} of {frame:?} went unnoticed"
                );
            }
        }
    }

    fn checksum_at(bytes: &[u8], at: usize) -> u16 {
        u16::from_be_bytes([bytes[at], bytes[at + 1]])
    }

    #[test]
    fn errors_name_the_checksum_and_both_values() {
        let frame = Frame::tcp(C4, S4).syn().seq(1);
        let l = frame.layout();
        let field = l.l4 + 16;
        let good = frame.clone().build();
        // The segment with seq 2, but the checksum still that of seq 1.
        let reseq = frame.seq(2).build();
        let mut bad = reseq.clone();
        bad[field..field + 2].copy_from_slice(&good[field..field + 2]);
        let err = verify(&bad).unwrap_err();
        let wrong = ChecksumError::Wrong {
            kind: Kind::Tcp,
            offset: field,
            expected: checksum_at(&reseq, field),
            found: checksum_at(&good, field),
        };
        assert_eq!(err, wrong);
        assert!(
            err.to_string()
                .starts_with(&format!("TCP checksum at byte {field} is 0x")),
            "{err}"
        );

        let mut bad = good.clone();
        bad[l.ip + 8] -= 1; // TTL
        let ChecksumError::Wrong {
            kind,
            offset,
            found,
            ..
        } = verify(&bad).unwrap_err()
        else {
            panic!("not a checksum error");
        };
        assert_eq!(
            (kind, offset, found),
            (Kind::Ipv4Header, l.ip + 10, checksum_at(&good, l.ip + 10))
        );
    }

    #[test]
    fn builder_overrides_are_reported_exactly() {
        let good = Frame::udp(C6, S6).payload(b"abc");
        let value = verify(&good.build()).unwrap()[0].value;
        let bad = good.l4_checksum(value.wrapping_add(1)).build();
        let err = verify(&bad).unwrap_err();
        assert!(
            matches!(err, ChecksumError::Wrong { kind: Kind::Udp, expected, found, .. } if expected == value && found == value.wrapping_add(1)),
            "{err}"
        );
        let bad = Frame::icmp_echo_request(*C4.ip(), *S4.ip(), 1, 1)
            .ipv4_checksum(0x1234)
            .build();
        assert!(matches!(
            verify(&bad).unwrap_err(),
            ChecksumError::Wrong {
                kind: Kind::Ipv4Header,
                found: 0x1234,
                ..
            }
        ));
    }

    #[test]
    fn udp_checksum_zero_means_none_over_ipv4_only() {
        let checked = verify(&Frame::udp(C4, S4).payload(b"x").l4_checksum(0).build()).unwrap();
        assert_eq!(kinds(&checked), vec![Kind::Ipv4Header]);
        let err = verify(&Frame::udp(C6, S6).payload(b"x").l4_checksum(0).build()).unwrap_err();
        assert!(
            matches!(
                err,
                ChecksumError::Wrong {
                    kind: Kind::Udp,
                    found: 0,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn fragments_and_other_protocols_check_only_the_ip_header() {
        let frag = Frame::tcp(C4, S4).more_fragments().build();
        assert_eq!(kinds(&verify(&frag).unwrap()), vec![Kind::Ipv4Header]);
        let frag6 = Frame::udp(C6, S6)
            .ipv6_extension(Ipv6Extension::fragment(2, false, 1))
            .build();
        assert_eq!(kinds(&verify(&frag6).unwrap()), vec![]);
        let gre = Frame::ip(*C4.ip(), *S4.ip(), 47).payload(&[0; 8]).build();
        assert_eq!(kinds(&verify(&gre).unwrap()), vec![Kind::Ipv4Header]);
        let arp = Frame::ethernet(0x0806).payload(&[0; 28]).build();
        assert_eq!(verify(&arp).unwrap(), vec![]);
    }

    #[test]
    fn cut_or_inconsistent_frames_are_unparsable_not_wrong() {
        let frame = Frame::tcp(C4, S4).syn().payload(b"data");
        let bytes = frame.build();
        for len in [13, 20, frame.layout().l4 + 10, bytes.len() - 1] {
            let err = verify(&bytes[..len]).unwrap_err();
            assert!(
                matches!(err, ChecksumError::Unparsable { .. }),
                "cut at {len}: {err}"
            );
        }
        let err = verify(&Frame::udp(C4, S4).udp_length(9).build()).unwrap_err();
        assert!(err.to_string().contains("UDP length 9"), "{err}");
        let err = verify(&Frame::udp(C4, S4).ipv4_ihl(4).build()).unwrap_err();
        assert!(err.to_string().contains("IHL 4"), "{err}");
    }
}
