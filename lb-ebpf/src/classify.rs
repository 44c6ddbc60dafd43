//! Classify: which listener, if any, a packet is for.
//!
//! A listener found in `LISTENERS` is remembered per CPU (`LISTENER_CACHE`): the hash lookup
//! (jhash of the 20-byte key, the bucket walk, a `memcmp`, each a kernel function call) was
//! about 30 ns of an established flow's 120-160, and a busy CPU sees the same few listeners
//! thousands of times a tick. An entry holds while `LISTENERS_GENERATION` is the value it was
//! read under (userspace adds one after every write or removal in `LISTENERS`, so a change
//! reaches every CPU's next packet, exactly as without the cache) and for the current jiffy
//! at most (a bound should anything write `LISTENERS` without counting). A destination whose
//! address bucket loses its `CLASS_LISTENER` bit is never looked up at all, cached or not;
//! only found listeners are cached.

use aya_ebpf::helpers::bpf_jiffies64;
use lb_common::{
    addr::{bucket_of_words, CLASS_ALL_PORTS, CLASS_LISTENER, CLASS_PORTS},
    listener::{Listener, ListenerKey},
};

use crate::{parse::Packet, ADDRESSES, LISTENERS, LISTENERS_GENERATION, LISTENER_CACHE};

/// Slots per CPU of `LISTENER_CACHE` (a power of two).
pub const LISTENER_CACHE_SLOTS: u32 = 256;

/// A listener found in `LISTENERS` during one jiffy, for the packets of that jiffy that ask
/// for the same destination (address, port, protocol, family) on this CPU. Direct-mapped by
/// address bucket and port; a slot holds one destination at a time.
#[repr(C)]
pub struct CachedListener {
    jiffies: u64,
    /// `LISTENERS_GENERATION` when the listener was read.
    generation: u64,
    /// The destination: address words in memory order, port (network order), then protocol
    /// and family as the `u32` of the bytes `[protocol, family, 0, 0]`.
    dst: [u32; 4],
    port_be: u32,
    protocol_family: u32,
    listener: Listener,
}

/// The class bits of the packet's destination address (`lb_common::addr::CLASS_*`): what the
/// hash maps may hold for it. Zero for most packets a host receives, which then cost no hash
/// lookup at all.
#[inline(always)]
pub fn address_class(packet: &Packet) -> u32 {
    ADDRESSES
        .get(bucket_of_words(packet.key.dst_words()))
        .copied()
        .unwrap_or(0)
}

/// The listener for the packet's destination address, port and protocol, from this CPU's
/// `LISTENER_CACHE` if this jiffy already looked it up and `LISTENERS` has not changed since,
/// else from [`lookup`].
#[inline(always)]
pub fn listener(packet: &Packet, class: u32) -> Option<Listener> {
    if class & CLASS_LISTENER == 0 {
        return None;
    }
    // SAFETY: plain helper call (inlined by the verifier into a load of `jiffies`).
    let jiffies = unsafe { bpf_jiffies64() };
    // Read before `LISTENERS`: a listener read after it is at least as new as this count.
    let generation = LISTENERS_GENERATION.get(0).copied().unwrap_or(0);
    let dst = packet.key.dst_words();
    let port_be = u32::from(packet.key.dst_port_be);
    let protocol_family = u32::from_ne_bytes([packet.key.protocol, packet.key.family, 0, 0]);
    let slot = (bucket_of_words(dst) ^ port_be) & (LISTENER_CACHE_SLOTS - 1);
    let Some(cached) = LISTENER_CACHE.get_ptr_mut(slot) else {
        return lookup(packet, class);
    };
    // SAFETY: this CPU's slot; XDP runs to completion with preemption off.
    let cached = unsafe { &mut *cached };
    if cached.jiffies == jiffies
        && cached.generation == generation
        && cached.dst == dst
        && cached.port_be == port_be
        && cached.protocol_family == protocol_family
    {
        return Some(cached.listener);
    }
    let listener = lookup(packet, class)?;
    cached.jiffies = jiffies;
    cached.generation = generation;
    cached.dst = dst;
    cached.port_be = port_be;
    cached.protocol_family = protocol_family;
    cached.listener = listener;
    Some(listener)
}

/// The listener in `LISTENERS`: the exact port first, then a port-0 (all ports) listener of
/// that address. `class` says which of the two lookups can find anything, so a listener
/// address costs one lookup, and the second only where both kinds share a bucket.
#[inline(always)]
fn lookup(packet: &Packet, class: u32) -> Option<Listener> {
    let mut key = ListenerKey {
        addr: packet.key.dst,
        port_be: packet.key.dst_port_be,
        protocol: packet.protocol,
        family: packet.key.family,
    };
    // Port 0 (ICMP, whose entries have port 0) is its own exact lookup.
    if key.port_be == 0 || class & CLASS_PORTS != 0 {
        // SAFETY: a hash-map value is read once and copied; userspace replaces whole entries.
        if let Some(listener) = unsafe { LISTENERS.get(&key) } {
            return Some(*listener);
        }
        if key.port_be == 0 {
            return None;
        }
    }
    if class & CLASS_ALL_PORTS == 0 {
        return None;
    }
    key.port_be = 0;
    // SAFETY: as above.
    unsafe { LISTENERS.get(&key) }.copied()
}
