//! `tunnel` mode: IPIP / IP6IP6 encapsulation to the target. (Stub: being implemented.)

use aya_ebpf::programs::XdpContext;
use lb_common::stats::Counter;

use crate::{parse::Packet, select::Selected};

#[inline(always)]
pub fn forward(
    _ctx: &XdpContext,
    _packet: &Packet,
    _selected: &Selected,
) -> Result<(Counter, u32), Counter> {
    Err(Counter::DropRewriteFailed)
}
