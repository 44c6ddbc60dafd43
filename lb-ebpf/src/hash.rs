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

/// Hash of the source address only (`source_ip` stickiness).
#[inline(always)]
pub fn source(key: &FlowKey) -> u32 {
    let [a, b, c, d] = key.src_words();
    let mut h = 0x5c1c_e000 ^ key.family as u32;
    h = mix(h, a);
    h = mix(h, b);
    h = mix(h, c);
    h = mix(h, d);
    finish(h)
}

/// Hash of the 5-tuple.
#[inline(always)]
pub fn five_tuple(key: &FlowKey) -> u32 {
    let [a, b, c, d] = key.dst_words();
    let mut h = source(key);
    h = mix(h, a);
    h = mix(h, b);
    h = mix(h, c);
    h = mix(h, d);
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
    let [a, b, c, d] = key.src_words();
    let folded = a ^ b ^ c ^ d ^ (((key.src_port_be as u32) << 16) | key.dst_port_be as u32);
    (folded ^ (folded >> 16)).wrapping_mul(0x9E37_79B1)
}
