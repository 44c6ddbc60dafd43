//! `dsr` mode: direct server return on one L2 segment. Only the destination MAC changes (to
//! the target's); the target holds the VIP on loopback and replies straight to the client.

use aya_ebpf::programs::XdpContext;
use lb_common::{stats::Counter, target::Target};

use crate::{forward, parse::Packet, select::Selected};

#[inline(always)]
pub fn forward(
    ctx: &XdpContext,
    packet: &Packet,
    selected: &Selected,
) -> Result<(Counter, u32), Counter> {
    send(
        ctx,
        &packet.key.src,
        selected.target,
        Some((selected.target_id, selected.now)),
        Counter::ForwardDsr,
    )
}

/// Sends the frame, unchanged but for its MACs, to `target` (also used by `icmp.rs` for
/// errors about a `dsr` flow); `src` is the packet's source address, for the FIB lookup.
/// `cached`: the target's id and the packet's time, to use the next-hop cache.
#[inline(always)]
pub fn send(
    ctx: &XdpContext,
    src: &[u8; 16],
    target: &Target,
    cached: Option<(u32, u64)>,
    forwarded: Counter,
) -> Result<(Counter, u32), Counter> {
    // The FIB lookup is for the target's address, so the next hop is the target itself when it
    // is on-link (DSR's requirement); the packet keeps the VIP as its destination.
    let sent = match cached {
        Some((target_id, now)) => forward::to_target(ctx, src, target_id, target, now, forwarded),
        None => forward::to(ctx, target.family, src, &target.addr, forwarded),
    };
    match sent {
        // The kernel would route a packet to the VIP, not to the target: handing it over
        // cannot help, so drop it (the client retransmits once the neighbour is resolved).
        Ok((Counter::PassNeighborUnresolved, _)) => Err(Counter::DropNeighborUnresolved),
        other => other,
    }
}
