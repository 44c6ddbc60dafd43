//! Internet checksum arithmetic (RFC 1071) and incremental updates (RFC 1624).
//!
//! Checksums are handled as the `u16` whose memory bytes are the header's bytes (network
//! order), and so are the words fed in: one's-complement sums are byte-order independent as
//! long as every operand uses the same order, so no swapping is needed anywhere.

/// Folds a 32-bit one's-complement accumulator to 16 bits.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// RFC 1624 eqn. 3: the checksum after a 16-bit word of the covered data changes from `old`
/// to `new`: HC' = ~(~HC + ~m + m').
#[inline(always)]
pub fn replace16(check: u16, old: u16, new: u16) -> u16 {
    !fold(u32::from(!check) + u32::from(!old) + u32::from(new))
}

/// Like [`replace16`] for a 32-bit field (two words).
#[inline(always)]
pub fn replace32(check: u16, old: [u8; 4], new: [u8; 4]) -> u16 {
    let sum = u32::from(!check)
        + u32::from(!u16::from_ne_bytes([old[0], old[1]]))
        + u32::from(!u16::from_ne_bytes([old[2], old[3]]))
        + u32::from(u16::from_ne_bytes([new[0], new[1]]))
        + u32::from(u16::from_ne_bytes([new[2], new[3]]));
    !fold(sum)
}

/// RFC 1624's difference for a 32-bit field (two words in memory order, as the `u32` of its
/// memory bytes) changing from `old` to `new`: ~m + m' for both halves, unfolded (at most
/// 4 * 0xffff), for [`apply`] after summing with other fields' differences.
#[inline(always)]
pub fn word_diff(old: u32, new: u32) -> u32 {
    let old = !old;
    (old & 0xffff) + (old >> 16) + (new & 0xffff) + (new >> 16)
}

/// The checksum of a 20-byte IPv4 header without options given as its nine 16-bit words
/// other than the checksum (bytes 0-9 and 12-19, in order, each as the `u16` of its memory
/// bytes).
#[inline(always)]
pub fn ipv4_header_words(words: &[u16; 9]) -> u16 {
    let mut sum = 0u32;
    for word in words {
        sum += u32::from(*word);
    }
    !fold(sum)
}

/// The RFC 1624 difference between two equally long buffers (a multiple of 4 bytes, in
/// packet, map or stack memory), added to `seed`: the 32-bit one's-complement sum of `seed`,
/// the complement of every word of `from` and every word of `to`. Chaining several changed
/// fields through `seed` gives one difference for each checksum that covers them all, for
/// [`apply`].
///
/// Done by the kernel (`bpf_csum_diff`) rather than word by word here: 16-byte addresses read
/// byte by byte need more registers than BPF has and spill to the 512-byte stack, so IPv6
/// addresses go through this rather than a 128-bit variant of [`replace32`].
///
/// # Safety
/// `from` and `to` must be valid for reads of `len` bytes, and the verifier must be able to
/// prove it (bounds-checked packet pointers, map values, initialised stack).
#[inline(always)]
pub unsafe fn diff(from: *const u8, to: *const u8, len: u32, seed: u32) -> u32 {
    // The helper fails only for sizes that are not multiples of 4 (a bug caught by the tests);
    // its sum is the low 32 bits.
    unsafe {
        aya_ebpf::helpers::bpf_csum_diff(from as *mut u32, len, to as *mut u32, len, seed) as u32
    }
}

/// RFC 1624 eqn. 3 for a difference from [`diff`]: HC' = ~(~HC + Σ(~m + m')).
#[inline(always)]
pub fn apply(check: u16, diff: u32) -> u16 {
    !fold(u32::from(!check) + u32::from(fold(diff)))
}
