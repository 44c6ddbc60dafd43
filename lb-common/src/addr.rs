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

/// The four 32-bit words of a map address, in memory order.
#[inline(always)]
pub fn words(addr: &[u8; 16]) -> [u32; 4] {
    let (chunks, _) = addr.as_chunks::<4>();
    [
        u32::from_ne_bytes(chunks[0]),
        u32::from_ne_bytes(chunks[1]),
        u32::from_ne_bytes(chunks[2]),
        u32::from_ne_bytes(chunks[3]),
    ]
}

/// Buckets of `ADDRESSES`, the address classes: what the program may find for a
/// destination address, so that most packets skip the hash lookups that cannot match.
pub const ADDRESS_BUCKETS: u32 = 4096;

/// Some `LISTENERS` entry (any port, protocol ICMP included) has an address in the bucket.
pub const CLASS_LISTENER: u32 = 1 << 0;
/// Some TCP/UDP listener in the bucket has a port (looked up by the packet's port).
pub const CLASS_PORTS: u32 = 1 << 1;
/// Some TCP/UDP listener in the bucket takes every port (port 0).
pub const CLASS_ALL_PORTS: u32 = 1 << 2;
/// Some target's `snat_addr` is in the bucket: a packet to it may be a `nat` reply. Set before
/// the target is written and never cleared while the map lives (translations to an address
/// outlive the target that used it), so no reply is ever missed.
pub const CLASS_NAT_SOURCE: u32 = 1 << 3;

/// The `ADDRESSES` bucket of a map address: its four 32-bit words folded and mixed with a
/// multiplicative hash (IPv4 has zeros beyond its first word). Two addresses may share a
/// bucket: a class bit says "may", and the lookup it guards decides.
#[inline(always)]
pub fn address_bucket(addr: &[u8; 16]) -> u32 {
    bucket_of_words(words(addr))
}

/// [`address_bucket`] of an address given as its words in memory order ([`words`],
/// `FlowKey::dst_words`).
#[inline(always)]
pub fn bucket_of_words([a, b, c, d]: [u32; 4]) -> u32 {
    let folded = a ^ b ^ c ^ d;
    // ADDRESS_BUCKETS is 2^12: the top 12 bits of the product.
    folded.wrapping_mul(0x9E37_79B1) >> 20
}
const _: () = assert!(ADDRESS_BUCKETS == 1 << (32 - 20));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_in_range_and_spread() {
        let mut seen = [false; ADDRESS_BUCKETS as usize];
        for i in 0..1024u32 {
            let v4 = ip_to_bytes(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))).0;
            let v6 = ip_to_bytes(IpAddr::V6(Ipv6Addr::from(
                0xfd00_u128 << 112 | u128::from(i),
            )))
            .0;
            for addr in [v4, v6] {
                let b = address_bucket(&addr);
                assert!(b < ADDRESS_BUCKETS);
                seen[b as usize] = true;
            }
        }
        // 2,048 consecutive addresses land in more than half as many distinct buckets.
        assert!(seen.iter().filter(|s| **s).count() > 1024);
    }

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
