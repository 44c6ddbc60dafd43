//! Addresses in map keys and values: 16 bytes in network order, IPv4 in the first 4 bytes
//! with the rest zero, plus a family byte. Conversions live here and nowhere else.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// `addr` as 16 map bytes and its family.
pub const fn ip_to_bytes(addr: IpAddr) -> ([u8; 16], u8) {
    match addr {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            (
                [o[0], o[1], o[2], o[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                FAMILY_V4,
            )
        }
        IpAddr::V6(v6) => (v6.octets(), FAMILY_V6),
    }
}

/// The address held by 16 map bytes of the given family (anything but `FAMILY_V4` is IPv6).
pub fn bytes_to_ip(bytes: &[u8; 16], family: u8) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for ip in ["10.1.2.3", "::1", "fd00:5c::10", "255.255.255.255"] {
            let ip: IpAddr = ip.parse().unwrap();
            let (bytes, family) = ip_to_bytes(ip);
            assert_eq!(bytes_to_ip(&bytes, family), ip);
        }
        assert_eq!(ip_to_bytes("1.2.3.4".parse().unwrap()).0[4..], [0; 12]);
    }
}
