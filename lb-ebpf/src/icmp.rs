//! ICMP and ICMPv6 to a listener's address. (Stub: being implemented.)

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::stats::Counter;

use crate::parse::Packet;

#[inline(always)]
pub fn handle(_ctx: &XdpContext, _packet: &Packet) -> (Counter, u32) {
    (Counter::PassVipIcmp, xdp_action::XDP_PASS)
}
