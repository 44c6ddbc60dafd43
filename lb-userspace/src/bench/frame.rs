//! The generator's frames: one template (Ethernet, IPv4, UDP or TCP, zero payload up to the
//! requested size) and, per flow, the source address and port with both checksums already
//! correct, so every frame the kernel sends is one a real stack accepts.

use std::net::Ipv4Addr;

use lb_common::bench::{FlowPatch, BENCH_MAX_FLOWS};

const ETH_HLEN: usize = 14;
const IPV4_HLEN: usize = 20;
/// The 4-byte frame check sequence the wire adds and a test run's buffer does not hold.
pub const FCS_LEN: usize = 4;
/// Ethernet's minimum and (1500-byte MTU) maximum frame size on the wire, FCS included.
pub const MIN_SIZE: usize = 64;
pub const MAX_SIZE: usize = 1518;
/// Source ports start here and count up, one per pass over the source addresses.
pub const FIRST_SOURCE_PORT: u16 = 1024;

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

/// Which TCP packets: connection openings, or packets of established connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TcpKind {
    Syn,
    Established,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error(
        "--size {0} is outside {MIN_SIZE}..={MAX_SIZE} (an Ethernet frame with its 4-byte FCS)"
    )]
    Size(usize),
    #[error("--flows must be 1 to {BENCH_MAX_FLOWS}, not {0}")]
    Flows(u64),
    #[error("{flows} flows do not fit source network {net}/{prefix}: it gives {max} distinct (address, port) pairs; use a shorter prefix")]
    SourcesTooSmall {
        flows: u32,
        net: Ipv4Addr,
        prefix: u8,
        max: u64,
    },
    #[error("'{0}' is not an IPv4 network like 198.18.0.0/15")]
    Network(String),
}

/// What every generated frame shares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameSpec {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub dst: Ipv4Addr,
    pub dst_port: u16,
    pub protocol: Protocol,
    pub tcp: TcpKind,
    /// On-wire size with FCS: the test run's frame is `size - FCS_LEN` bytes.
    pub size: usize,
}

/// An IPv4 source network: flows take its addresses in turn, then the next source port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sources {
    pub net: Ipv4Addr,
    pub prefix: u8,
}

impl std::str::FromStr for Sources {
    type Err = FrameError;

    fn from_str(text: &str) -> Result<Sources, FrameError> {
        let bad = || FrameError::Network(text.to_string());
        let (addr, prefix) = text.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if prefix > 32 {
            return Err(bad());
        }
        let mask = prefix_mask(prefix);
        Ok(Sources {
            net: Ipv4Addr::from(u32::from(addr) & mask),
            prefix,
        })
    }
}

fn prefix_mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

impl Sources {
    /// RFC 2544's benchmarking network, 198.18.0.0/15.
    pub const DEFAULT: Sources = Sources {
        net: Ipv4Addr::new(198, 18, 0, 0),
        prefix: 15,
    };

    pub fn addresses(self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }

    /// How many distinct flows the network gives.
    pub fn capacity(self) -> u64 {
        self.addresses() * u64::from(u16::MAX - FIRST_SOURCE_PORT + 1)
    }

    pub fn mask(self) -> Ipv4Addr {
        Ipv4Addr::from(prefix_mask(self.prefix))
    }

    /// Flow `i`'s source address and port.
    pub fn flow(self, i: u32) -> (Ipv4Addr, u16) {
        let n = self.addresses();
        let addr = u32::from(self.net) + (u64::from(i) % n) as u32;
        let port = FIRST_SOURCE_PORT as u64 + u64::from(i) / n;
        (Ipv4Addr::from(addr), port as u16)
    }
}

impl std::fmt::Display for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

/// The template frame and where its variable fields are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    pub bytes: Vec<u8>,
    pub protocol: Protocol,
}

impl Template {
    pub fn new(spec: &FrameSpec) -> Result<Template, FrameError> {
        if !(MIN_SIZE..=MAX_SIZE).contains(&spec.size) {
            return Err(FrameError::Size(spec.size));
        }
        let len = spec.size - FCS_LEN;
        let mut f = vec![0u8; len];
        f[0..6].copy_from_slice(&spec.dst_mac);
        f[6..12].copy_from_slice(&spec.src_mac);
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let ip = &mut f[ETH_HLEN..ETH_HLEN + IPV4_HLEN];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&((len - ETH_HLEN) as u16).to_be_bytes());
        // Don't fragment, TTL 64.
        ip[6] = 0x40;
        ip[8] = 64;
        ip[9] = match spec.protocol {
            Protocol::Tcp => IPPROTO_TCP,
            Protocol::Udp => IPPROTO_UDP,
        };
        ip[16..20].copy_from_slice(&spec.dst.octets());
        let l4 = &mut f[ETH_HLEN + IPV4_HLEN..];
        l4[2..4].copy_from_slice(&spec.dst_port.to_be_bytes());
        match spec.protocol {
            Protocol::Udp => {
                let udp_len = l4.len() as u16;
                l4[4..6].copy_from_slice(&udp_len.to_be_bytes());
            }
            Protocol::Tcp => {
                // seq 1, ack 1 (only meaningful with ACK), data offset 5, window 65535.
                l4[4..8].copy_from_slice(&1u32.to_be_bytes());
                l4[12] = 0x50;
                l4[13] = match spec.tcp {
                    TcpKind::Syn => TCP_SYN,
                    TcpKind::Established => {
                        l4[8..12].copy_from_slice(&1u32.to_be_bytes());
                        TCP_ACK
                    }
                };
                l4[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
            }
        }
        Ok(Template {
            bytes: f,
            protocol: spec.protocol,
        })
    }

    /// Sets the Ethernet addresses (which no checksum covers, so patches stay valid).
    pub fn set_macs(&mut self, src: [u8; 6], dst: [u8; 6]) {
        self.bytes[0..6].copy_from_slice(&dst);
        self.bytes[6..12].copy_from_slice(&src);
    }

    fn l4_check_offset(&self) -> usize {
        ETH_HLEN
            + IPV4_HLEN
            + match self.protocol {
                Protocol::Udp => 6,
                Protocol::Tcp => 16,
            }
    }

    /// The patch that turns the template into the frame from `src`:`sport`.
    pub fn patch(&self, src: Ipv4Addr, sport: u16) -> FlowPatch {
        let frame = self.frame(src, sport);
        let check = |at: usize| u16::from_ne_bytes([frame[at], frame[at + 1]]);
        FlowPatch {
            saddr_be: src.octets(),
            sport_be: sport.to_be(),
            ip_check_be: check(ETH_HLEN + 10),
            l4_check_be: check(self.l4_check_offset()),
            _pad: [0; 2],
        }
    }

    /// The whole frame from `src`:`sport`, checksums filled in.
    pub fn frame(&self, src: Ipv4Addr, sport: u16) -> Vec<u8> {
        let mut f = self.bytes.clone();
        f[ETH_HLEN + 12..ETH_HLEN + 16].copy_from_slice(&src.octets());
        f[ETH_HLEN + IPV4_HLEN..ETH_HLEN + IPV4_HLEN + 2].copy_from_slice(&sport.to_be_bytes());
        f[ETH_HLEN + 10..ETH_HLEN + 12].fill(0);
        let ip_check = checksum(&[&f[ETH_HLEN..ETH_HLEN + IPV4_HLEN]]);
        f[ETH_HLEN + 10..ETH_HLEN + 12].copy_from_slice(&ip_check.to_be_bytes());
        let at = self.l4_check_offset();
        f[at..at + 2].fill(0);
        let l4 = &f[ETH_HLEN + IPV4_HLEN..];
        let proto = f[ETH_HLEN + 9];
        let mut pseudo = [0u8; 12];
        pseudo[0..8].copy_from_slice(&f[ETH_HLEN + 12..ETH_HLEN + 20]);
        pseudo[9] = proto;
        pseudo[10..12].copy_from_slice(&(l4.len() as u16).to_be_bytes());
        let mut l4_check = checksum(&[&pseudo, l4]);
        // UDP sends a computed 0 as 0xffff: 0 means "no checksum".
        if self.protocol == Protocol::Udp && l4_check == 0 {
            l4_check = 0xffff;
        }
        f[at..at + 2].copy_from_slice(&l4_check.to_be_bytes());
        f
    }
}

/// The patches of `flows` flows from `sources`.
pub fn patches(
    template: &Template,
    sources: Sources,
    flows: u64,
) -> Result<Vec<FlowPatch>, FrameError> {
    if flows == 0 || flows > u64::from(BENCH_MAX_FLOWS) {
        return Err(FrameError::Flows(flows));
    }
    if flows > sources.capacity() {
        return Err(FrameError::SourcesTooSmall {
            flows: flows as u32,
            net: sources.net,
            prefix: sources.prefix,
            max: sources.capacity(),
        });
    }
    Ok((0..flows as u32)
        .map(|i| {
            let (src, port) = sources.flow(i);
            template.patch(src, port)
        })
        .collect())
}

/// The Internet checksum (RFC 1071) over the concatenation of `parts` (each of even length
/// but the last).
pub fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u64 = 0;
    for part in parts {
        let mut chunks = part.chunks_exact(2);
        for c in &mut chunks {
            sum += u64::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [last] = chunks.remainder() {
            sum += u64::from(*last) << 8;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(protocol: Protocol, tcp: TcpKind, size: usize) -> FrameSpec {
        FrameSpec {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            dst: Ipv4Addr::new(10, 0, 0, 1),
            dst_port: 80,
            protocol,
            tcp,
            size,
        }
    }

    /// A valid header sums (with its checksum) to 0xffff, i.e. checksums to 0.
    fn verify(frame: &[u8]) {
        assert_eq!(checksum(&[&frame[14..34]]), 0, "IPv4 header checksum");
        let l4 = &frame[34..];
        let mut pseudo = [0u8; 12];
        pseudo[0..8].copy_from_slice(&frame[26..34]);
        pseudo[9] = frame[23];
        pseudo[10..12].copy_from_slice(&(l4.len() as u16).to_be_bytes());
        assert_eq!(checksum(&[&pseudo, l4]), 0, "L4 checksum");
        assert_eq!(
            usize::from(u16::from_be_bytes([frame[16], frame[17]])),
            frame.len() - 14
        );
    }

    #[test]
    fn frames_have_valid_checksums_and_sizes() {
        for (protocol, tcp) in [
            (Protocol::Udp, TcpKind::Syn),
            (Protocol::Tcp, TcpKind::Syn),
            (Protocol::Tcp, TcpKind::Established),
        ] {
            for size in [64, 65, 128, 1518] {
                let t = Template::new(&spec(protocol, tcp, size)).unwrap();
                assert_eq!(t.bytes.len(), size - 4);
                for i in [0u32, 1, 77_777] {
                    let (src, port) = Sources::DEFAULT.flow(i);
                    verify(&t.frame(src, port));
                }
            }
        }
    }

    #[test]
    fn tcp_flags_follow_the_kind() {
        let syn = Template::new(&spec(Protocol::Tcp, TcpKind::Syn, 64)).unwrap();
        assert_eq!(syn.bytes[34 + 13], TCP_SYN);
        let est = Template::new(&spec(Protocol::Tcp, TcpKind::Established, 64)).unwrap();
        assert_eq!(est.bytes[34 + 13], TCP_ACK);
    }

    /// What the XDP program does with a patch gives exactly the frame built here.
    #[test]
    fn patching_the_template_gives_the_flow_frame() {
        for protocol in [Protocol::Udp, Protocol::Tcp] {
            let t = Template::new(&spec(protocol, TcpKind::Established, 64)).unwrap();
            let src = Ipv4Addr::new(198, 19, 3, 4);
            let p = t.patch(src, 4321);
            let mut f = t.bytes.clone();
            f[26..30].copy_from_slice(&p.saddr_be);
            f[24..26].copy_from_slice(&p.ip_check_be.to_ne_bytes());
            f[34..36].copy_from_slice(&p.sport_be.to_ne_bytes());
            let at = t.l4_check_offset();
            f[at..at + 2].copy_from_slice(&p.l4_check_be.to_ne_bytes());
            assert_eq!(f, t.frame(src, 4321));
        }
    }

    #[test]
    fn flows_are_distinct_and_vary_addresses_first() {
        let s: Sources = "10.1.2.3/30".parse().unwrap();
        assert_eq!(s.net, Ipv4Addr::new(10, 1, 2, 0));
        assert_eq!(s.flow(0), (Ipv4Addr::new(10, 1, 2, 0), 1024));
        assert_eq!(s.flow(3), (Ipv4Addr::new(10, 1, 2, 3), 1024));
        assert_eq!(s.flow(4), (Ipv4Addr::new(10, 1, 2, 0), 1025));
        let t = Template::new(&spec(Protocol::Udp, TcpKind::Syn, 64)).unwrap();
        let all = patches(&t, s, 1000).unwrap();
        let distinct: std::collections::HashSet<_> =
            all.iter().map(|p| (p.saddr_be, p.sport_be)).collect();
        assert_eq!(distinct.len(), 1000);
    }

    #[test]
    fn bad_input_is_refused_in_one_sentence() {
        assert_eq!(
            Template::new(&spec(Protocol::Udp, TcpKind::Syn, 63)),
            Err(FrameError::Size(63))
        );
        let t = Template::new(&spec(Protocol::Udp, TcpKind::Syn, 64)).unwrap();
        assert_eq!(patches(&t, Sources::DEFAULT, 0), Err(FrameError::Flows(0)));
        let tiny: Sources = "10.0.0.0/32".parse().unwrap();
        assert!(matches!(
            patches(&t, tiny, 70_000),
            Err(FrameError::SourcesTooSmall { .. })
        ));
        for bad in ["10.0.0.0", "10.0.0.0/33", "x/8", "::1/64"] {
            assert!(bad.parse::<Sources>().is_err(), "{bad}");
        }
    }
}
