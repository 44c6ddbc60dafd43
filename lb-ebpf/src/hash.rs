//! The flow hash that indexes Maglev tables (murmur3's 32-bit mixing), and the cheap one that
//! spreads tunnelled flows over the outer source addresses.
//!
//! Only the XDP program computes them; userspace never needs to predict them.

use lb_common::flow::FlowKey;

#[inline(always)]
fn mix(h: u32, word: u32) -> u32 {
    let k = word
        .wrapping_mul(0xcc9e_2d51)
        .rotate_left(15)
        .wrapping_mul(0x1b87_3593);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
fn finish(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

#[inline(always)]
fn word(bytes: &[u8; 16], i: usize) -> u32 {
    u32::from_ne_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]])
}

/// Hash of the source address only (`source_ip` stickiness).
#[inline(always)]
pub fn source(key: &FlowKey) -> u32 {
    let mut h = 0x5c1c_e000 ^ key.family as u32;
    h = mix(h, word(&key.src, 0));
    h = mix(h, word(&key.src, 4));
    h = mix(h, word(&key.src, 8));
    h = mix(h, word(&key.src, 12));
    finish(h)
}

/// Hash of the 5-tuple.
#[inline(always)]
pub fn five_tuple(key: &FlowKey) -> u32 {
    let mut h = source(key);
    h = mix(h, word(&key.dst, 0));
    h = mix(h, word(&key.dst, 4));
    h = mix(h, word(&key.dst, 8));
    h = mix(h, word(&key.dst, 12));
    h = mix(h, ((key.src_port_be as u32) << 16) | key.dst_port_be as u32);
    h = mix(h, key.protocol as u32);
    finish(h)
}

/// A cheap per-flow spread for `tunnel`'s outer source address, computed on every packet: the
/// client's address folded by XOR with both ports (Katran's choice), then one multiply so
/// that the varying low bytes of addresses and ports reach every bit. Only spread matters
/// here (the target's RSS), not resistance to crafted input: Maglev uses [`five_tuple`].
#[inline(always)]
pub fn outer_source(key: &FlowKey) -> u32 {
    let folded = word(&key.src, 0)
        ^ word(&key.src, 4)
        ^ word(&key.src, 8)
        ^ word(&key.src, 12)
        ^ (((key.src_port_be as u32) << 16) | key.dst_port_be as u32);
    (folded ^ (folded >> 16)).wrapping_mul(0x9E37_79B1)
}
