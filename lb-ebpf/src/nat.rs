//! `nat` mode: destination rewritten to the target, source to the load balancer's address
//! and an allocated port; replies from targets translated back.
//! (Stub: being implemented.)

use aya_ebpf::programs::XdpContext;
use lb_common::stats::Counter;

use crate::{parse::Packet, select::Selected};

/// Translates a reply from a target back to the client, if the packet is one.
#[inline(always)]
pub fn reply(_ctx: &XdpContext, _packet: &Packet) -> Option<(Counter, u32)> {
    None
}

#[inline(always)]
pub fn forward(
    _ctx: &XdpContext,
    _packet: &Packet,
    _selected: &mut Selected,
) -> Result<(Counter, u32), Counter> {
    Err(Counter::DropRewriteFailed)
}
