//! A builder for test frames: Ethernet, any number of VLAN tags, IPv4 (options, fragments) or
//! IPv6 (extension headers), optionally inside an outer IP header (IPIP, IP6IP6, 4in6, 6in4),
//! carrying TCP, UDP, ICMP/ICMPv6 or any other IP protocol, with a payload.
//!
//! [`Frame::build`] fills in every length and checksum from the bytes it actually writes, so a
//! frame is well-formed unless one field is deliberately broken with a setter such as
//! [`Frame::ipv4_ihl`] or [`Frame::ip_length`]. Such a setter overrides exactly that field and
//! leaves every checksum valid over the bytes as written, so a test sees one defect at a time.
//!
//! Checksums here are computed with etherparse's one's-complement sum, so that
//! [`crate::checksum`], which has its own, is an independent check of them.
//!
//! ```
//! use std::net::SocketAddrV4;
//! use sluice_tests::packet::Frame;
//!
//! let client: SocketAddrV4 = "10.0.0.1:40000".parse().unwrap();
//! let vip: SocketAddrV4 = "10.0.1.1:80".parse().unwrap();
//! let syn = Frame::tcp(client, vip).syn().mss(1460).vlan(100);
//! let bytes = syn.build();
//! // Byte-exact expectation for a NAT rewrite: the same frame, another destination.
//! let rewritten = syn.clone().dst_ip("10.0.2.7".parse().unwrap()).build();
//! assert_eq!(bytes.len(), rewritten.len());
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use etherparse::checksum::Sum16BitWords;

pub type Mac = [u8; 6];

/// EtherType values used by the tests.
pub mod ether_type {
    pub const IPV4: u16 = 0x0800;
    pub const ARP: u16 = 0x0806;
    /// 802.1Q customer VLAN tag.
    pub const VLAN: u16 = 0x8100;
    pub const IPV6: u16 = 0x86DD;
    /// 802.1ad service VLAN tag (the outer tag of QinQ).
    pub const QINQ: u16 = 0x88A8;
    pub const LLDP: u16 = 0x88CC;
}

/// IP protocol / IPv6 next-header numbers used by the tests.
pub mod ip_proto {
    pub const HOP_BY_HOP: u8 = 0;
    pub const ICMP: u8 = 1;
    pub const IPIP: u8 = 4;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const IPV6: u8 = 41;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const GRE: u8 = 47;
    pub const ESP: u8 = 50;
    pub const AH: u8 = 51;
    pub const ICMPV6: u8 = 58;
    pub const NO_NEXT_HEADER: u8 = 59;
    pub const DESTINATION_OPTIONS: u8 = 60;
    pub const SCTP: u8 = 132;
    pub const MOBILITY: u8 = 135;
    pub const HIP: u8 = 139;
    pub const SHIM6: u8 = 140;
}

/// TCP flag bits (byte 13 of the TCP header).
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;
}

pub const DEFAULT_SRC_MAC: Mac = [0x02, 0, 0, 0, 0, 0x01];
pub const DEFAULT_DST_MAC: Mac = [0x02, 0, 0, 0, 0, 0x02];

/// An IPv4 header. `build` derives IHL, total length, protocol and checksum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv4 {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub tos: u8,
    pub id: u16,
    pub dont_fragment: bool,
    pub more_fragments: bool,
    /// In 8-byte units; 13 bits.
    pub fragment_offset: u16,
    pub ttl: u8,
    /// Raw option bytes; zero-padded (End of Options List) to a multiple of 4, at most 40.
    pub options: Vec<u8>,
}

impl Ipv4 {
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr) -> Ipv4 {
        Ipv4 {
            src,
            dst,
            tos: 0,
            id: 0,
            dont_fragment: false,
            more_fragments: false,
            fragment_offset: 0,
            ttl: 64,
            options: Vec::new(),
        }
    }
}

/// An IPv6 header and its extension headers, in order. `build` derives the payload length and
/// the next-header chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv6 {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub traffic_class: u8,
    /// 20 bits.
    pub flow_label: u32,
    pub hop_limit: u8,
    pub extensions: Vec<Ipv6Extension>,
}

impl Ipv6 {
    pub fn new(src: Ipv6Addr, dst: Ipv6Addr) -> Ipv6 {
        Ipv6 {
            src,
            dst,
            traffic_class: 0,
            flow_label: 0,
            hop_limit: 64,
            extensions: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ip {
    V4(Ipv4),
    V6(Ipv6),
}

impl Ip {
    /// Panics if `src` and `dst` are of different families.
    pub fn new(src: IpAddr, dst: IpAddr) -> Ip {
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => Ip::V4(Ipv4::new(s, d)),
            (IpAddr::V6(s), IpAddr::V6(d)) => Ip::V6(Ipv6::new(s, d)),
            _ => panic!("source {src} and destination {dst} are of different IP families"),
        }
    }

    pub fn src(&self) -> IpAddr {
        match self {
            Ip::V4(h) => h.src.into(),
            Ip::V6(h) => h.src.into(),
        }
    }

    pub fn dst(&self) -> IpAddr {
        match self {
            Ip::V4(h) => h.dst.into(),
            Ip::V6(h) => h.dst.into(),
        }
    }

    fn is_v4(&self) -> bool {
        matches!(self, Ip::V4(_))
    }
}

impl From<Ipv4> for Ip {
    fn from(h: Ipv4) -> Ip {
        Ip::V4(h)
    }
}

impl From<Ipv6> for Ip {
    fn from(h: Ipv6) -> Ip {
        Ip::V6(h)
    }
}

/// One IPv6 extension header: its own next-header code and the bytes after its next-header
/// byte (the next-header byte itself is filled in by `build` from the chain).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ipv6Extension {
    pub code: u8,
    pub body: Vec<u8>,
}

impl Ipv6Extension {
    /// Hop-by-hop options: one PadN option filling the minimum 8 bytes.
    pub fn hop_by_hop() -> Ipv6Extension {
        Self::padded_options(ip_proto::HOP_BY_HOP)
    }

    /// Destination options: one PadN option filling the minimum 8 bytes.
    pub fn destination_options() -> Ipv6Extension {
        Self::padded_options(ip_proto::DESTINATION_OPTIONS)
    }

    /// A routing header of an unassigned type with no segments left, which a receiver skips.
    pub fn routing() -> Ipv6Extension {
        Ipv6Extension {
            code: ip_proto::ROUTING,
            // Hdr Ext Len 0, routing type 253 (RFC 4727 experiment), segments left 0, reserved.
            body: vec![0, 253, 0, 0, 0, 0, 0],
        }
    }

    /// A fragment header; `offset` in 8-byte units (13 bits).
    pub fn fragment(offset: u16, more_fragments: bool, id: u32) -> Ipv6Extension {
        let offset_flags = (offset << 3) | u16::from(more_fragments);
        let mut body = vec![0];
        body.extend(offset_flags.to_be_bytes());
        body.extend(id.to_be_bytes());
        Ipv6Extension {
            code: ip_proto::FRAGMENT,
            body,
        }
    }

    /// An authentication header (RFC 4302) with a 12-byte ICV: 24 bytes, whose length field
    /// counts 4-byte units minus 2, unlike every other extension header.
    pub fn authentication() -> Ipv6Extension {
        let mut body = vec![4, 0, 0];
        body.extend(0x1000_u32.to_be_bytes()); // SPI
        body.extend(1_u32.to_be_bytes()); // sequence number
        body.extend([0; 12]); // ICV
        Ipv6Extension {
            code: ip_proto::AH,
            body,
        }
    }

    /// A mobility header (RFC 6275), minimum size: a Binding Refresh Request.
    pub fn mobility() -> Ipv6Extension {
        Ipv6Extension {
            code: ip_proto::MOBILITY,
            // Hdr Ext Len 0, MH type 0, reserved, checksum, 2 reserved bytes.
            body: vec![0, 0, 0, 0, 0, 0, 0],
        }
    }

    /// Host Identity Protocol header (RFC 7401), as 8 opaque bytes.
    pub fn hip() -> Ipv6Extension {
        Self::opaque(ip_proto::HIP)
    }

    /// Shim6 header (RFC 5533), as 8 opaque bytes.
    pub fn shim6() -> Ipv6Extension {
        Self::opaque(ip_proto::SHIM6)
    }

    /// Every extension header type sluice must recognise (RFC 8200 section 4, RFC 7045).
    pub fn all() -> Vec<Ipv6Extension> {
        vec![
            Self::hop_by_hop(),
            Self::routing(),
            Self::fragment(0, true, 7),
            Self::authentication(),
            Self::destination_options(),
            Self::mobility(),
            Self::hip(),
            Self::shim6(),
        ]
    }

    fn padded_options(code: u8) -> Ipv6Extension {
        // Hdr Ext Len 0, then PadN (type 1) with 4 bytes of padding.
        Ipv6Extension {
            code,
            body: vec![0, 1, 4, 0, 0, 0, 0],
        }
    }

    fn opaque(code: u8) -> Ipv6Extension {
        Ipv6Extension {
            code,
            body: vec![0, 0, 0, 0, 0, 0, 0],
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Tcp {
    src_port: u16,
    dst_port: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    window: u16,
    urgent_pointer: u16,
    options: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Transport {
    Tcp(Tcp),
    Udp {
        src_port: u16,
        dst_port: u16,
    },
    /// ICMP over IPv4, ICMPv6 over IPv6.
    Icmp {
        kind: u8,
        code: u8,
        rest: [u8; 4],
    },
    /// Any other protocol: the payload is the whole IP payload.
    Other {
        protocol: u8,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Body {
    NotIp {
        ether_type: u16,
    },
    Ip {
        outer: Option<Ip>,
        ip: Ip,
        transport: Transport,
    },
}

/// Deliberately wrong header fields; each replaces the value `build` would derive.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Broken {
    ip_version: Option<u8>,
    ipv4_ihl: Option<u8>,
    ip_length: Option<u16>,
    ipv4_checksum: Option<u16>,
    tcp_data_offset: Option<u8>,
    udp_length: Option<u16>,
    l4_checksum: Option<u16>,
}

/// Where each header of a built frame starts (byte offsets from the frame's start).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Each VLAN tag's TCI, outermost first: a tag is the 4 bytes TCI + next EtherType (its
    /// TPID is the EtherType before it).
    pub vlan_tags: Vec<usize>,
    /// What the last EtherType announces: the (outer) IP header or a non-IP payload.
    pub l3: usize,
    /// The outer IP header of an encapsulated frame.
    pub outer_ip: Option<usize>,
    /// The carried IP header; equals `l3` unless encapsulated, and for non-IP frames.
    pub ip: usize,
    /// Each IPv6 extension header of the carried IP header.
    pub ipv6_extensions: Vec<usize>,
    /// The transport header (for other protocols, the IP payload).
    pub l4: usize,
    /// The transport payload.
    pub payload: usize,
    /// End of the IP packet; Ethernet padding, if any, follows.
    pub ip_end: usize,
    pub len: usize,
}

/// A frame to build; see the module documentation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    src_mac: Mac,
    dst_mac: Mac,
    /// (TPID, TCI), outermost first.
    vlan_tags: Vec<(u16, u16)>,
    body: Body,
    payload: Vec<u8>,
    pad_to: usize,
    broken: Broken,
}

impl Frame {
    /// A TCP segment with no flags set, seq 1, ack 0, window 65535. Panics on mixed families.
    pub fn tcp(src: impl Into<SocketAddr>, dst: impl Into<SocketAddr>) -> Frame {
        let (src, dst) = (src.into(), dst.into());
        Self::with_ip(
            Ip::new(src.ip(), dst.ip()),
            Transport::Tcp(Tcp {
                src_port: src.port(),
                dst_port: dst.port(),
                seq: 1,
                ack: 0,
                flags: 0,
                window: 65535,
                urgent_pointer: 0,
                options: Vec::new(),
            }),
        )
    }

    pub fn udp(src: impl Into<SocketAddr>, dst: impl Into<SocketAddr>) -> Frame {
        let (src, dst) = (src.into(), dst.into());
        Self::with_ip(
            Ip::new(src.ip(), dst.ip()),
            Transport::Udp {
                src_port: src.port(),
                dst_port: dst.port(),
            },
        )
    }

    /// An echo request: ICMP type 8 over IPv4, ICMPv6 type 128 over IPv6.
    pub fn icmp_echo_request(
        src: impl Into<IpAddr>,
        dst: impl Into<IpAddr>,
        id: u16,
        seq: u16,
    ) -> Frame {
        let ip = Ip::new(src.into(), dst.into());
        let kind = if ip.is_v4() { 8 } else { 128 };
        Self::icmp_with(ip, kind, 0, echo_rest(id, seq))
    }

    /// An echo reply: ICMP type 0 over IPv4, ICMPv6 type 129 over IPv6.
    pub fn icmp_echo_reply(
        src: impl Into<IpAddr>,
        dst: impl Into<IpAddr>,
        id: u16,
        seq: u16,
    ) -> Frame {
        let ip = Ip::new(src.into(), dst.into());
        let kind = if ip.is_v4() { 0 } else { 129 };
        Self::icmp_with(ip, kind, 0, echo_rest(id, seq))
    }

    /// Any ICMP (IPv4) or ICMPv6 (IPv6) message: type, code and the 4 header bytes after the
    /// checksum; the rest of the message is the payload.
    pub fn icmp(
        src: impl Into<IpAddr>,
        dst: impl Into<IpAddr>,
        kind: u8,
        code: u8,
        rest: [u8; 4],
    ) -> Frame {
        Self::icmp_with(Ip::new(src.into(), dst.into()), kind, code, rest)
    }

    /// An IP packet of any protocol whose IP payload is [`Frame::payload`] (GRE, SCTP, ...).
    pub fn ip(src: impl Into<IpAddr>, dst: impl Into<IpAddr>, protocol: u8) -> Frame {
        Self::with_ip(
            Ip::new(src.into(), dst.into()),
            Transport::Other { protocol },
        )
    }

    /// A non-IP frame (ARP, LLDP, ...) whose EtherType payload is [`Frame::payload`].
    pub fn ethernet(ether_type: u16) -> Frame {
        Self::with_body(Body::NotIp { ether_type })
    }

    fn icmp_with(ip: Ip, kind: u8, code: u8, rest: [u8; 4]) -> Frame {
        Self::with_ip(ip, Transport::Icmp { kind, code, rest })
    }

    fn with_ip(ip: Ip, transport: Transport) -> Frame {
        Self::with_body(Body::Ip {
            outer: None,
            ip,
            transport,
        })
    }

    fn with_body(body: Body) -> Frame {
        Frame {
            src_mac: DEFAULT_SRC_MAC,
            dst_mac: DEFAULT_DST_MAC,
            vlan_tags: Vec::new(),
            body,
            payload: Vec::new(),
            pad_to: 0,
            broken: Broken::default(),
        }
    }

    // --- Ethernet ---

    pub fn src_mac(mut self, mac: Mac) -> Frame {
        self.src_mac = mac;
        self
    }

    pub fn dst_mac(mut self, mac: Mac) -> Frame {
        self.dst_mac = mac;
        self
    }

    /// Adds an 802.1Q tag with VLAN `id` (priority 0) inside any tags already added.
    pub fn vlan(self, id: u16) -> Frame {
        assert!(id < 4096, "VLAN id {id} does not fit 12 bits");
        self.vlan_tag(ether_type::VLAN, id)
    }

    /// Adds a tag with any TPID (e.g. [`ether_type::QINQ`]) and raw TCI inside any tags
    /// already added.
    pub fn vlan_tag(mut self, tpid: u16, tci: u16) -> Frame {
        self.vlan_tags.push((tpid, tci));
        self
    }

    /// Appends zero bytes after the IP packet up to `len` bytes in all, as Ethernet pads
    /// frames to its 60-byte minimum. IP lengths do not count them.
    pub fn pad_to(mut self, len: usize) -> Frame {
        self.pad_to = len;
        self
    }

    pub fn payload(mut self, payload: &[u8]) -> Frame {
        self.payload = payload.to_vec();
        self
    }

    // --- IP (the carried header, not an outer one) ---

    /// Sets the source address; panics if the family differs.
    pub fn src_ip(mut self, addr: IpAddr) -> Frame {
        match (self.ip_mut("src_ip"), addr) {
            (Ip::V4(h), IpAddr::V4(a)) => h.src = a,
            (Ip::V6(h), IpAddr::V6(a)) => h.src = a,
            _ => panic!("src_ip({addr}) on a frame of the other IP family"),
        }
        self
    }

    /// Sets the destination address; panics if the family differs.
    pub fn dst_ip(mut self, addr: IpAddr) -> Frame {
        match (self.ip_mut("dst_ip"), addr) {
            (Ip::V4(h), IpAddr::V4(a)) => h.dst = a,
            (Ip::V6(h), IpAddr::V6(a)) => h.dst = a,
            _ => panic!("dst_ip({addr}) on a frame of the other IP family"),
        }
        self
    }

    /// IPv4 TTL or IPv6 hop limit.
    pub fn ttl(mut self, ttl: u8) -> Frame {
        match self.ip_mut("ttl") {
            Ip::V4(h) => h.ttl = ttl,
            Ip::V6(h) => h.hop_limit = ttl,
        }
        self
    }

    /// IPv4 type of service or IPv6 traffic class.
    pub fn tos(mut self, tos: u8) -> Frame {
        match self.ip_mut("tos") {
            Ip::V4(h) => h.tos = tos,
            Ip::V6(h) => h.traffic_class = tos,
        }
        self
    }

    pub fn ipv4_id(mut self, id: u16) -> Frame {
        self.ipv4_mut("ipv4_id").id = id;
        self
    }

    pub fn dont_fragment(mut self) -> Frame {
        self.ipv4_mut("dont_fragment").dont_fragment = true;
        self
    }

    pub fn more_fragments(mut self) -> Frame {
        self.ipv4_mut("more_fragments").more_fragments = true;
        self
    }

    /// In 8-byte units (13 bits).
    pub fn fragment_offset(mut self, offset: u16) -> Frame {
        assert!(
            offset < 1 << 13,
            "fragment offset {offset} does not fit 13 bits"
        );
        self.ipv4_mut("fragment_offset").fragment_offset = offset;
        self
    }

    /// Raw IPv4 option bytes, zero-padded to a multiple of 4 (at most 40).
    pub fn ipv4_options(mut self, options: &[u8]) -> Frame {
        assert!(
            options.len() <= 40,
            "IPv4 options are at most 40 bytes, got {}",
            options.len()
        );
        self.ipv4_mut("ipv4_options").options = options.to_vec();
        self
    }

    pub fn flow_label(mut self, label: u32) -> Frame {
        assert!(
            label < 1 << 20,
            "flow label {label:#x} does not fit 20 bits"
        );
        self.ipv6_mut("flow_label").flow_label = label;
        self
    }

    /// Appends an extension header after those already added.
    pub fn ipv6_extension(mut self, extension: Ipv6Extension) -> Frame {
        self.ipv6_mut("ipv6_extension").extensions.push(extension);
        self
    }

    /// Wraps the IP packet in `outer` (protocol 4 for an IPv4 packet, 41 for IPv6), as IPIP,
    /// IP6IP6, 4in6 or 6in4 encapsulation does.
    pub fn encapsulate(mut self, outer: impl Into<Ip>) -> Frame {
        match &mut self.body {
            Body::Ip { outer: slot, .. } => {
                assert!(slot.is_none(), "the frame is already encapsulated");
                *slot = Some(outer.into());
            }
            Body::NotIp { .. } => panic!("encapsulate needs an IP frame"),
        }
        self
    }

    // --- TCP, UDP ---

    pub fn src_port(mut self, port: u16) -> Frame {
        match self.transport_mut("src_port") {
            Transport::Tcp(t) => t.src_port = port,
            Transport::Udp { src_port, .. } => *src_port = port,
            _ => panic!("src_port needs a TCP or UDP frame"),
        }
        self
    }

    pub fn dst_port(mut self, port: u16) -> Frame {
        match self.transport_mut("dst_port") {
            Transport::Tcp(t) => t.dst_port = port,
            Transport::Udp { dst_port, .. } => *dst_port = port,
            _ => panic!("dst_port needs a TCP or UDP frame"),
        }
        self
    }

    /// Replaces all TCP flags (see [`tcp_flags`]).
    pub fn tcp_flags(mut self, flags: u8) -> Frame {
        self.tcp_mut("tcp_flags").flags = flags;
        self
    }

    pub fn syn(self) -> Frame {
        self.add_flag(tcp_flags::SYN)
    }

    pub fn ack(self) -> Frame {
        self.add_flag(tcp_flags::ACK)
    }

    pub fn fin(self) -> Frame {
        self.add_flag(tcp_flags::FIN)
    }

    pub fn rst(self) -> Frame {
        self.add_flag(tcp_flags::RST)
    }

    pub fn psh(self) -> Frame {
        self.add_flag(tcp_flags::PSH)
    }

    pub fn urg(self) -> Frame {
        self.add_flag(tcp_flags::URG)
    }

    pub fn seq(mut self, seq: u32) -> Frame {
        self.tcp_mut("seq").seq = seq;
        self
    }

    /// The acknowledgment number (the ACK flag is separate: [`Frame::ack`]).
    pub fn ack_number(mut self, ack: u32) -> Frame {
        self.tcp_mut("ack_number").ack = ack;
        self
    }

    pub fn window(mut self, window: u16) -> Frame {
        self.tcp_mut("window").window = window;
        self
    }

    pub fn urgent_pointer(mut self, pointer: u16) -> Frame {
        self.tcp_mut("urgent_pointer").urgent_pointer = pointer;
        self
    }

    /// Appends raw TCP option bytes; the whole is zero-padded to a multiple of 4 (at most 40).
    pub fn tcp_options(mut self, options: &[u8]) -> Frame {
        let tcp = self.tcp_mut("tcp_options");
        tcp.options.extend_from_slice(options);
        assert!(
            tcp.options.len() <= 40,
            "TCP options are at most 40 bytes, got {}",
            tcp.options.len()
        );
        self
    }

    /// Appends a maximum segment size option.
    pub fn mss(self, mss: u16) -> Frame {
        let [hi, lo] = mss.to_be_bytes();
        self.tcp_options(&[2, 4, hi, lo])
    }

    // --- Deliberately broken fields ---

    /// The IP version nibble of the carried IP header.
    pub fn ip_version(mut self, version: u8) -> Frame {
        assert!(version < 16, "IP version {version} does not fit 4 bits");
        self.ip_mut("ip_version");
        self.broken.ip_version = Some(version);
        self
    }

    /// The IPv4 IHL nibble, whatever the options' length.
    pub fn ipv4_ihl(mut self, ihl: u8) -> Frame {
        assert!(ihl < 16, "IHL {ihl} does not fit 4 bits");
        self.ipv4_mut("ipv4_ihl");
        self.broken.ipv4_ihl = Some(ihl);
        self
    }

    /// The IPv4 total length or IPv6 payload length of the carried IP header.
    pub fn ip_length(mut self, length: u16) -> Frame {
        self.ip_mut("ip_length");
        self.broken.ip_length = Some(length);
        self
    }

    pub fn ipv4_checksum(mut self, checksum: u16) -> Frame {
        self.ipv4_mut("ipv4_checksum");
        self.broken.ipv4_checksum = Some(checksum);
        self
    }

    /// The TCP data offset nibble (in 4-byte units), whatever the options' length.
    pub fn tcp_data_offset(mut self, offset: u8) -> Frame {
        assert!(offset < 16, "data offset {offset} does not fit 4 bits");
        self.tcp_mut("tcp_data_offset");
        self.broken.tcp_data_offset = Some(offset);
        self
    }

    pub fn udp_length(mut self, length: u16) -> Frame {
        assert!(
            matches!(self.transport_mut("udp_length"), Transport::Udp { .. }),
            "udp_length needs a UDP frame"
        );
        self.broken.udp_length = Some(length);
        self
    }

    /// The TCP, UDP, ICMP or ICMPv6 checksum (UDP 0 means "no checksum" over IPv4).
    pub fn l4_checksum(mut self, checksum: u16) -> Frame {
        self.transport_mut("l4_checksum");
        self.broken.l4_checksum = Some(checksum);
        self
    }

    // --- Output ---

    pub fn build(&self) -> Vec<u8> {
        self.assemble().0
    }

    pub fn layout(&self) -> Layout {
        self.assemble().1
    }

    fn assemble(&self) -> (Vec<u8>, Layout) {
        let mut out = Vec::with_capacity(128 + self.payload.len());
        out.extend(self.dst_mac);
        out.extend(self.src_mac);
        let mut vlan_tags = Vec::new();
        for (tpid, tci) in &self.vlan_tags {
            out.extend(tpid.to_be_bytes());
            vlan_tags.push(out.len());
            out.extend(tci.to_be_bytes());
        }
        let l3 = out.len() + 2;
        let mut layout = Layout {
            vlan_tags,
            l3,
            outer_ip: None,
            ip: l3,
            ipv6_extensions: Vec::new(),
            l4: l3,
            payload: l3,
            ip_end: 0,
            len: 0,
        };
        match &self.body {
            Body::NotIp { ether_type } => {
                out.extend(ether_type.to_be_bytes());
                out.extend(&self.payload);
            }
            Body::Ip {
                outer,
                ip,
                transport,
            } => {
                let ether = if outer.as_ref().unwrap_or(ip).is_v4() {
                    ether_type::IPV4
                } else {
                    ether_type::IPV6
                };
                out.extend(ether.to_be_bytes());
                let (segment, payload_at) = self.segment(ip, transport);
                let inner_protocol = protocol_of(ip, transport);
                let inner = ip_header(ip, inner_protocol, segment.len(), &self.broken);
                let mut packet = Vec::new();
                if let Some(outer) = outer {
                    let protocol = if ip.is_v4() {
                        ip_proto::IPIP
                    } else {
                        ip_proto::IPV6
                    };
                    let header = ip_header(
                        outer,
                        protocol,
                        inner.bytes.len() + segment.len(),
                        &Broken::default(),
                    );
                    layout.outer_ip = Some(l3);
                    packet.extend(header.bytes);
                }
                layout.ip = l3 + packet.len();
                layout.ipv6_extensions = inner.extensions.iter().map(|e| layout.ip + e).collect();
                packet.extend(inner.bytes);
                layout.l4 = l3 + packet.len();
                layout.payload = layout.l4 + payload_at;
                packet.extend(segment);
                out.extend(packet);
            }
        }
        layout.ip_end = out.len();
        if out.len() < self.pad_to {
            out.resize(self.pad_to, 0);
        }
        layout.len = out.len();
        (out, layout)
    }

    /// The transport header and payload with its checksum, and where the payload starts in it.
    fn segment(&self, ip: &Ip, transport: &Transport) -> (Vec<u8>, usize) {
        let broken = &self.broken;
        let mut seg = Vec::new();
        let checksum_at = match transport {
            Transport::Tcp(t) => {
                let options = pad(&t.options, 4);
                let data_offset = broken
                    .tcp_data_offset
                    .unwrap_or(((20 + options.len()) / 4) as u8);
                seg.extend(t.src_port.to_be_bytes());
                seg.extend(t.dst_port.to_be_bytes());
                seg.extend(t.seq.to_be_bytes());
                seg.extend(t.ack.to_be_bytes());
                seg.push(data_offset << 4);
                seg.push(t.flags);
                seg.extend(t.window.to_be_bytes());
                seg.extend([0, 0]);
                seg.extend(t.urgent_pointer.to_be_bytes());
                seg.extend(options);
                16
            }
            Transport::Udp { src_port, dst_port } => {
                let length = broken
                    .udp_length
                    .unwrap_or(len_u16(8 + self.payload.len(), "UDP length"));
                seg.extend(src_port.to_be_bytes());
                seg.extend(dst_port.to_be_bytes());
                seg.extend(length.to_be_bytes());
                seg.extend([0, 0]);
                6
            }
            Transport::Icmp { kind, code, rest } => {
                seg.extend([*kind, *code, 0, 0]);
                seg.extend(rest);
                2
            }
            Transport::Other { .. } => {
                seg.extend(&self.payload);
                return (seg, 0);
            }
        };
        let payload_at = seg.len();
        seg.extend(&self.payload);
        let protocol = protocol_of(ip, transport);
        let checksum = broken.l4_checksum.unwrap_or_else(|| {
            let mut sum = Sum16BitWords::new();
            // ICMP over IPv4 is the only one of these without a pseudo-header.
            if protocol != ip_proto::ICMP {
                sum = add_pseudo_header(sum, ip, protocol, seg.len());
            }
            sum = sum.add_slice(&seg);
            if protocol == ip_proto::UDP {
                // UDP sends a computed 0 as 0xFFFF: 0 means "no checksum".
                wire_order(sum.to_ones_complement_with_no_zero())
            } else {
                wire_order(sum.ones_complement())
            }
        });
        seg[checksum_at..checksum_at + 2].copy_from_slice(&checksum.to_be_bytes());
        (seg, payload_at)
    }

    fn add_flag(mut self, flag: u8) -> Frame {
        self.tcp_mut("a TCP flag").flags |= flag;
        self
    }

    fn ip_mut(&mut self, what: &str) -> &mut Ip {
        match &mut self.body {
            Body::Ip { ip, .. } => ip,
            Body::NotIp { .. } => panic!("{what} needs an IP frame"),
        }
    }

    fn ipv4_mut(&mut self, what: &str) -> &mut Ipv4 {
        match self.ip_mut(what) {
            Ip::V4(h) => h,
            Ip::V6(_) => panic!("{what} needs an IPv4 frame"),
        }
    }

    fn ipv6_mut(&mut self, what: &str) -> &mut Ipv6 {
        match self.ip_mut(what) {
            Ip::V6(h) => h,
            Ip::V4(_) => panic!("{what} needs an IPv6 frame"),
        }
    }

    fn transport_mut(&mut self, what: &str) -> &mut Transport {
        match &mut self.body {
            Body::Ip { transport, .. } => transport,
            Body::NotIp { .. } => panic!("{what} needs an IP frame"),
        }
    }

    fn tcp_mut(&mut self, what: &str) -> &mut Tcp {
        match self.transport_mut(what) {
            Transport::Tcp(t) => t,
            _ => panic!("{what} needs a TCP frame"),
        }
    }
}

fn echo_rest(id: u16, seq: u16) -> [u8; 4] {
    let [a, b] = id.to_be_bytes();
    let [c, d] = seq.to_be_bytes();
    [a, b, c, d]
}

fn protocol_of(ip: &Ip, transport: &Transport) -> u8 {
    match transport {
        Transport::Tcp(_) => ip_proto::TCP,
        Transport::Udp { .. } => ip_proto::UDP,
        Transport::Icmp { .. } if ip.is_v4() => ip_proto::ICMP,
        Transport::Icmp { .. } => ip_proto::ICMPV6,
        Transport::Other { protocol } => *protocol,
    }
}

/// RFC 793 / RFC 8200 section 8.1 pseudo-header. With IPv6 the destination is the final one,
/// which holds here because the routing headers built have no segments left.
fn add_pseudo_header(sum: Sum16BitWords, ip: &Ip, protocol: u8, upper_len: usize) -> Sum16BitWords {
    match ip {
        Ip::V4(h) => sum
            .add_slice(&h.src.octets())
            .add_slice(&h.dst.octets())
            .add_2bytes([0, protocol])
            .add_2bytes(len_u16(upper_len, "IPv4 payload").to_be_bytes()),
        Ip::V6(h) => sum
            .add_slice(&h.src.octets())
            .add_slice(&h.dst.octets())
            .add_slice(&(upper_len as u32).to_be_bytes())
            .add_slice(&[0, 0, 0, protocol]),
    }
}

struct IpHeader {
    bytes: Vec<u8>,
    /// Offsets of IPv6 extension headers within `bytes`.
    extensions: Vec<usize>,
}

/// An IP header (with IPv6 extension headers) for `upper_len` bytes of `protocol`.
fn ip_header(ip: &Ip, protocol: u8, upper_len: usize, broken: &Broken) -> IpHeader {
    match ip {
        Ip::V4(h) => {
            let options = pad(&h.options, 4);
            let header_len = 20 + options.len();
            let ihl = broken.ipv4_ihl.unwrap_or((header_len / 4) as u8);
            let version = broken.ip_version.unwrap_or(4);
            let total = broken
                .ip_length
                .unwrap_or(len_u16(header_len + upper_len, "IPv4 total length"));
            let flags = (u16::from(h.dont_fragment) << 14)
                | (u16::from(h.more_fragments) << 13)
                | h.fragment_offset;
            let mut b = vec![version << 4 | ihl, h.tos];
            b.extend(total.to_be_bytes());
            b.extend(h.id.to_be_bytes());
            b.extend(flags.to_be_bytes());
            b.extend([h.ttl, protocol, 0, 0]);
            b.extend(h.src.octets());
            b.extend(h.dst.octets());
            b.extend(options);
            let checksum = broken.ipv4_checksum.unwrap_or_else(|| {
                wire_order(Sum16BitWords::new().add_slice(&b).ones_complement())
            });
            b[10..12].copy_from_slice(&checksum.to_be_bytes());
            IpHeader {
                bytes: b,
                extensions: Vec::new(),
            }
        }
        Ip::V6(h) => {
            let mut chain = Vec::new();
            let mut extensions = Vec::new();
            for (i, ext) in h.extensions.iter().enumerate() {
                extensions.push(40 + chain.len());
                chain.push(h.extensions.get(i + 1).map_or(protocol, |e| e.code));
                chain.extend(&ext.body);
            }
            let first = h.extensions.first().map_or(protocol, |e| e.code);
            let version = broken.ip_version.unwrap_or(6);
            let payload_len = broken
                .ip_length
                .unwrap_or(len_u16(chain.len() + upper_len, "IPv6 payload length"));
            let word =
                (u32::from(version) << 28) | (u32::from(h.traffic_class) << 20) | h.flow_label;
            let mut b = word.to_be_bytes().to_vec();
            b.extend(payload_len.to_be_bytes());
            b.extend([first, h.hop_limit]);
            b.extend(h.src.octets());
            b.extend(h.dst.octets());
            b.extend(chain);
            IpHeader {
                bytes: b,
                extensions,
            }
        }
    }
}

/// etherparse sums native-endian words, so its result's native bytes are the wire bytes.
fn wire_order(checksum: u16) -> u16 {
    u16::from_be_bytes(checksum.to_ne_bytes())
}

fn pad(bytes: &[u8], multiple: usize) -> Vec<u8> {
    let mut v = bytes.to_vec();
    v.resize(bytes.len().div_ceil(multiple) * multiple, 0);
    v
}

fn len_u16(len: usize, what: &str) -> u16 {
    u16::try_from(len).unwrap_or_else(|_| panic!("{what} {len} does not fit 16 bits"))
}

#[cfg(test)]
mod tests {
    use std::net::{SocketAddrV4, SocketAddrV6};

    use etherparse::{NetHeaders, PacketHeaders, TransportHeader};

    use super::*;

    fn v4(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    fn v6(s: &str) -> SocketAddrV6 {
        s.parse().unwrap()
    }

    fn samples() -> Vec<Frame> {
        let (c4, s4) = (v4("10.0.0.1:40000"), v4("10.0.1.1:80"));
        let (c6, s6) = (v6("[fd00::1]:40000"), v6("[fd00:1::1]:443"));
        vec![
            Frame::tcp(c4, s4).syn().mss(1460),
            Frame::tcp(c4, s4)
                .ack()
                .psh()
                .payload(b"GET / HTTP/1.1\r\n\r\n")
                .vlan(100),
            Frame::tcp(c4, s4)
                .ack()
                .ipv4_options(&[1, 1, 1, 1])
                .payload(b"x"),
            Frame::udp(c4, s4)
                .payload(b"odd length")
                .vlan_tag(ether_type::QINQ, 7)
                .vlan(8),
            Frame::icmp_echo_request(*c4.ip(), *s4.ip(), 7, 1).payload(b"ping"),
            Frame::tcp(c6, s6).syn().tcp_options(&[1, 1, 4, 2]),
            Frame::udp(c6, s6).payload(b"abc").vlan(5),
            Frame::udp(c6, s6)
                .payload(b"with extensions")
                .ipv6_extension(Ipv6Extension::hop_by_hop())
                .ipv6_extension(Ipv6Extension::destination_options()),
            Frame::icmp_echo_request(*c6.ip(), *s6.ip(), 9, 2).payload(b"ping6"),
        ]
    }

    #[test]
    fn etherparse_reads_what_was_built_and_agrees_on_checksums() {
        for frame in samples() {
            let bytes = frame.build();
            let layout = frame.layout();
            assert_eq!(layout.len, bytes.len());
            let headers = PacketHeaders::from_ethernet_slice(&bytes)
                .unwrap_or_else(|e| panic!("etherparse rejects {frame:?}: {e}"));
            let mut transport = headers.transport.clone().expect("a transport header");
            let payload = &bytes[layout.payload..];
            let found = transport_checksum(&transport);
            match headers.net.as_ref().expect("an IP header") {
                NetHeaders::Ipv4(ip, _) => {
                    assert_eq!(ip.header_checksum, ip.calc_header_checksum());
                    assert_eq!(ip.header_len(), layout.l4 - layout.ip);
                    transport.update_checksum_ipv4(ip, payload).unwrap();
                }
                NetHeaders::Ipv6(ip, _) => transport.update_checksum_ipv6(ip, payload).unwrap(),
            }
            assert_eq!(found, transport_checksum(&transport), "{frame:?}");
            assert_eq!(
                transport.header_len(),
                layout.payload - layout.l4,
                "{frame:?}"
            );
        }
    }

    fn transport_checksum(t: &TransportHeader) -> u16 {
        match t {
            TransportHeader::Tcp(h) => h.checksum,
            TransportHeader::Udp(h) => h.checksum,
            TransportHeader::Icmpv4(h) => h.checksum,
            TransportHeader::Icmpv6(h) => h.checksum,
        }
    }

    #[test]
    fn fields_land_where_etherparse_expects_them() {
        let frame = Frame::tcp(v4("10.0.0.1:40000"), v4("10.0.1.1:80"))
            .syn()
            .ack()
            .seq(1000)
            .ack_number(2000)
            .window(512)
            .ttl(9)
            .tos(0x10)
            .ipv4_id(77)
            .dont_fragment()
            .vlan(100)
            .payload(b"hi");
        let bytes = frame.build();
        let h = PacketHeaders::from_ethernet_slice(&bytes).unwrap();
        let Some(NetHeaders::Ipv4(ip, _)) = h.net else {
            panic!("not IPv4")
        };
        assert_eq!((ip.source, ip.destination), ([10, 0, 0, 1], [10, 0, 1, 1]));
        assert_eq!(
            (ip.time_to_live, ip.identification, ip.dont_fragment),
            (9, 77, true)
        );
        let Some(TransportHeader::Tcp(tcp)) = h.transport else {
            panic!("not TCP")
        };
        assert_eq!((tcp.source_port, tcp.destination_port), (40000, 80));
        assert_eq!(
            (
                tcp.sequence_number,
                tcp.acknowledgment_number,
                tcp.window_size
            ),
            (1000, 2000, 512)
        );
        assert!(tcp.syn && tcp.ack && !tcp.fin && !tcp.rst);
        assert_eq!(h.payload.slice(), b"hi");
    }

    #[test]
    fn layout_marks_every_header() {
        let frame = Frame::udp(v6("[fd00::1]:1"), v6("[fd00::2]:2"))
            .vlan_tag(ether_type::QINQ, 1)
            .vlan(2)
            .ipv6_extension(Ipv6Extension::hop_by_hop())
            .ipv6_extension(Ipv6Extension::authentication())
            .payload(b"data")
            .pad_to(200);
        let l = frame.layout();
        assert_eq!(l.vlan_tags, vec![14, 18]);
        assert_eq!((l.l3, l.ip, l.outer_ip), (22, 22, None));
        assert_eq!(l.ipv6_extensions, vec![62, 70]);
        assert_eq!((l.l4, l.payload, l.ip_end, l.len), (94, 102, 106, 200));
        let b = frame.build();
        assert_eq!(
            (&b[12..14], &b[16..18], &b[20..22]),
            (&[0x88, 0xA8][..], &[0x81, 0x00][..], &[0x86, 0xDD][..])
        );
        assert_eq!(
            (b[l.ip + 6], b[62], b[70]),
            (ip_proto::HOP_BY_HOP, ip_proto::AH, ip_proto::UDP)
        );
        assert_eq!(u16::from_be_bytes([b[l.ip + 4], b[l.ip + 5]]), 106 - 62);
    }

    #[test]
    fn encapsulation_wraps_the_ip_packet() {
        let inner = Frame::tcp(v4("10.0.0.1:40000"), v4("10.0.1.1:80")).syn();
        let outer = Ipv4::new(
            "192.168.0.1".parse().unwrap(),
            "192.168.0.2".parse().unwrap(),
        );
        let plain = inner.build();
        let wrapped = inner.clone().encapsulate(outer).build();
        assert_eq!(wrapped.len(), plain.len() + 20);
        assert_eq!(wrapped[14 + 9], ip_proto::IPIP);
        assert_eq!(&wrapped[34..], &plain[14..]);
        let l = inner
            .encapsulate(Ipv6::new(
                "fd00::1".parse().unwrap(),
                "fd00::2".parse().unwrap(),
            ))
            .layout();
        assert_eq!((l.outer_ip, l.ip, l.l4), (Some(14), 54, 74));
    }

    #[test]
    fn broken_fields_change_only_that_field_and_keep_checksums_valid() {
        let good = Frame::tcp(v4("10.0.0.1:1"), v4("10.0.0.2:2")).ipv4_options(&[1; 8]);
        let l = good.layout();
        let cases: Vec<(Frame, usize, u8)> = vec![
            (good.clone().ipv4_ihl(3), l.ip, 0x43),
            (good.clone().ip_version(6), l.ip, 0x67),
            (good.clone().ip_length(10), l.ip + 3, 10),
            (good.clone().tcp_data_offset(2), l.l4 + 12, 0x20),
        ];
        for (frame, at, value) in cases {
            let bytes = frame.build();
            assert_eq!(bytes[at], value, "{frame:?}");
            let ip = &bytes[l.ip..l.l4];
            assert_eq!(
                Sum16BitWords::new().add_slice(ip).ones_complement(),
                0,
                "IPv4 checksum of {frame:?}"
            );
        }
        let udp = Frame::udp(v4("10.0.0.1:1"), v4("10.0.0.2:2"))
            .udp_length(3)
            .l4_checksum(0)
            .build();
        assert_eq!(&udp[38..42], &[0, 3, 0, 0]);
    }

    #[test]
    fn padding_is_outside_the_ip_packet() {
        let frame = Frame::udp(v4("10.0.0.1:1"), v4("10.0.0.2:2")).pad_to(60);
        let b = frame.build();
        assert_eq!(b.len(), 60);
        assert_eq!(u16::from_be_bytes([b[16], b[17]]), 28);
        assert_eq!(frame.layout().ip_end, 42);
    }

    #[test]
    #[should_panic(expected = "different IP families")]
    fn mixed_families_are_refused() {
        Frame::tcp(v4("10.0.0.1:1"), v6("[fd00::1]:2"));
    }
}
