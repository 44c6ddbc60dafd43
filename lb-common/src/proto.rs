//! IP protocol numbers (IANA), as they appear in IPv4's protocol and IPv6's next header
//! fields and in the maps' keys.

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;
