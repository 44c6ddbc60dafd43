//! Packet bytes read and written two at a time.
//!
//! Header fields are byte arrays (alignment 1), and LLVM's BPF backend splits every access it
//! cannot prove aligned into single bytes: the tunnel's outer IPv4 header was 20 byte stores,
//! and each MAC copy 12 byte loads and 12 stores. The functions here access 16-bit words at
//! addresses the caller knows to be even: an even offset from the frame's start, which is
//! itself even (drivers leave `XDP_PACKET_HEADROOM`, 256 bytes, or `NET_SKB_PAD` +
//! `NET_IP_ALIGN` of headroom, and this program moves the start by 20 or 40 bytes only), or
//! an even offset in a map value (8-aligned).

/// Stores `words` (each the `u16` of its two memory bytes) at `p`, `p + 2`, ...
///
/// # Safety
///
/// `p` is even and the `2 * N` bytes from it are writable.
#[inline(always)]
pub unsafe fn store<const N: usize>(p: *mut u8, words: [u16; N]) {
    let p = p as *mut u16;
    for (i, word) in words.into_iter().enumerate() {
        // SAFETY: in bounds and aligned, as the caller guarantees.
        unsafe { p.add(i).write(word) };
    }
}

/// Loads the word at `p` (the `u16` of its two memory bytes).
///
/// # Safety
///
/// `p` is even and the 2 bytes from it are readable.
#[inline(always)]
pub unsafe fn load(p: *const u8) -> u16 {
    // SAFETY: in bounds and aligned, as the caller guarantees.
    unsafe { (p as *const u16).read() }
}

/// Copies `2 * N` bytes from `src` to `dst`, a word at a time, in increasing address order.
///
/// # Safety
///
/// `src` and `dst` are even, the ranges are readable and writable, and `dst` does not overlap
/// the part of `src` after it.
#[inline(always)]
pub unsafe fn copy<const N: usize>(dst: *mut u8, src: *const u8) {
    let (dst, src) = (dst as *mut u16, src as *const u16);
    for i in 0..N {
        // SAFETY: as the caller guarantees.
        unsafe { dst.add(i).write(src.add(i).read()) };
    }
}

/// The word at `a[2 * i..2 * i + 2]` of a map value's byte-array field.
///
/// # Safety
///
/// `a` is at an even address (a field at an even offset of a map value) and `2 * i + 2 <= N`.
#[inline(always)]
pub unsafe fn half<const N: usize>(a: &[u8; N], i: usize) -> u16 {
    // SAFETY: as the caller guarantees; any bit pattern is a valid u16.
    unsafe { (a.as_ptr() as *const u16).add(i).read() }
}
