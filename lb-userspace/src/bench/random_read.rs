//! What one read costs when its data is in none of the caches: a chain of dependent reads
//! through a region, each to a cache line chosen at random, as a flow-table lookup at a
//! million distinct flows reads its bucket and its entry. The region is mapped in 4 KiB pages
//! (as the kernel's `vmalloc` maps a BPF map's), so a read pays its TLB miss as the
//! program's does. The figure is the floor under every lookup of an entry that is out of
//! the caches: no layout of a hash table makes such a lookup cheaper than one of these reads.

use std::time::Instant;

use serde::Serialize;

const LINE: usize = 64;
const WORDS_PER_LINE: usize = LINE / std::mem::size_of::<u64>();

/// One measurement.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct RandomRead {
    pub region_bytes: usize,
    pub reads: usize,
    /// Median over the runs of the mean time per read.
    pub ns_per_read: f64,
}

/// Times `reads` dependent random reads through a region of `region_bytes` (at least two
/// cache lines), `runs` times; the median run.
pub fn measure(region_bytes: usize, reads: usize, runs: usize) -> RandomRead {
    let lines = (region_bytes / LINE).max(2);
    let mut region = Region::new(lines * WORDS_PER_LINE);
    let words = region.words();
    // One cycle through every line in a random order (each line's first word holds the next
    // line's index), so no read can start before the one before it ended.
    let mut order: Vec<usize> = (0..lines).collect();
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    for i in (1..lines).rev() {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        order.swap(i, (rng % (i as u64 + 1)) as usize);
    }
    for (i, &line) in order.iter().enumerate() {
        words[line * WORDS_PER_LINE] = (order[(i + 1) % lines] * WORDS_PER_LINE) as u64;
    }
    let mut at = order[0] * WORDS_PER_LINE;
    let mut chase = |n: usize| {
        for _ in 0..n {
            at = words[at] as usize;
        }
        std::hint::black_box(at);
    };
    // Every page touched once before timing.
    chase(lines);
    let mut per_read: Vec<f64> = (0..runs.max(1))
        .map(|_| {
            let started = Instant::now();
            chase(reads.max(1));
            started.elapsed().as_nanos() as f64 / reads.max(1) as f64
        })
        .collect();
    per_read.sort_by(f64::total_cmp);
    RandomRead {
        region_bytes: lines * LINE,
        reads: reads.max(1),
        ns_per_read: per_read[per_read.len() / 2],
    }
}

/// Zeroed memory of its own mapping, in 4 KiB pages.
struct Region {
    ptr: *mut u64,
    len: usize,
}

impl Region {
    fn new(words: usize) -> Region {
        let bytes = words * std::mem::size_of::<u64>();
        // SAFETY: an anonymous private mapping, checked below; nothing else refers to it.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert!(ptr != libc::MAP_FAILED, "mmap of {bytes} bytes failed");
        // SAFETY: the mapping above, before any page of it is touched. Transparent huge pages
        // would map it in 2 MiB pages, which the kernel's map memory does not get.
        unsafe { libc::madvise(ptr, bytes, libc::MADV_NOHUGEPAGE) };
        Region {
            ptr: ptr.cast(),
            len: words,
        }
    }

    fn words(&mut self) -> &mut [u64] {
        // SAFETY: `len` zeroed words of a mapping this value owns.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, no longer borrowed.
        unsafe { libc::munmap(self.ptr.cast(), self.len * std::mem::size_of::<u64>()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_region_out_of_the_caches_costs_more_per_read_than_one_in_them() {
        // 16 KiB sits in L1; 256 MiB in no cache of any machine this runs on.
        let cached = measure(16 << 10, 200_000, 3);
        let uncached = measure(256 << 20, 200_000, 3);
        assert_eq!(cached.region_bytes, 16 << 10);
        assert!(
            uncached.ns_per_read > 3.0 * cached.ns_per_read,
            "{cached:?} {uncached:?}"
        );
    }
}
