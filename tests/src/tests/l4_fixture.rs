//! A fixture for packet tests of the forwarding paths: sluice's real XDP program with its maps
//! programmed, run through `BPF_PROG_TEST_RUN` inside a namespace whose routes and neighbours
//! are fixed, so that the program's FIB lookups give known interfaces and MACs and every
//! expected output frame can be written byte for byte.
//!
//! ```text
//!  namespace:  lb0 (10.200.0.1/24, fd00:200::1/64, mac LB_MAC) ── veth ── peer0
//!  neighbours on lb0 (permanent): target i = 10.200.0.(10+i) / fd00:200::(10+i) → target_mac(i)
//!                                 gateway  = 10.200.0.254 / fd00:200::fe      → GATEWAY_MAC
//!  routes: client networks 10.201.0.0/16 and fd00:201::/48 via the gateway
//! ```
//! Frames "arrive" on lb0; a forwarded frame leaves with XDP_TX (out of lb0 again).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::{
    netns::{format_mac, Namespace},
    packet::Frame,
};
use lb_common::{
    addr::ip_to_bytes,
    config::Config,
    listener::{ForwardingMode, HashKey, Listener, ListenerKey},
    target::{Target, TARGET_ACTIVE},
};
use sluice::{
    dataplane::maps::Maps,
    maglev::{self, MaglevTarget, TableSize},
};

use super::packet_harness::{RunResult, XdpHarness};

pub const LB_V4: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
pub const LB_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 1);
pub const LB_MAC: [u8; 6] = [0x02, 0x5c, 0, 0, 0, 0x01];
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 254);
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 0xfe);
pub const GATEWAY_MAC: [u8; 6] = [0x02, 0x5c, 0, 0, 0, 0xfe];
/// A client, routed via the gateway.
pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 2);
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x201, 0, 0, 0, 0, 0, 2);
/// Listener addresses (not assigned to any interface; XDP owns them).
pub const VIP_V4: Ipv4Addr = Ipv4Addr::new(10, 210, 0, 1);
pub const VIP_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x210, 0, 0, 0, 0, 0, 1);
/// A Maglev table size small enough to build instantly, large enough for a few targets.
pub const TABLE_SIZE: u32 = 251;

pub fn target_v4(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 200, 0, 10 + i)
}

pub fn target_v6(i: u8) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 0x10 + i as u16)
}

pub fn target_mac(i: u8) -> [u8; 6] {
    [0x02, 0x5c, 0, 0, 0x10, i]
}

pub struct L4Fixture {
    pub ns: Namespace,
    pub harness: XdpHarness,
    pub maps: Maps,
    /// lb0's index in the namespace: where frames arrive and XDP_TX sends them.
    #[allow(dead_code, reason = "for tests that check redirects")]
    pub lb0_ifindex: u32,
}

impl L4Fixture {
    pub fn new() -> L4Fixture {
        Self::with_sizes(sluice::dataplane::load::MapSizes::default())
    }

    /// A fixture whose maps have `sizes` (a small flow table, for instance).
    pub fn with_sizes(sizes: sluice::dataplane::load::MapSizes) -> L4Fixture {
        let ns = Namespace::new("l4");
        ns.ip(&[
            "link", "add", "name", "lb0", "type", "veth", "peer", "name", "peer0",
        ]);
        ns.ip(&["link", "set", "lb0", "address", &format_mac(LB_MAC)]);
        for iface in ["lb0", "peer0"] {
            ns.ip(&["link", "set", iface, "up"]);
        }
        ns.add_addr("lb0", &format!("{LB_V4}/24"));
        ns.add_addr("lb0", &format!("{LB_V6}/64"));
        ns.sysctl("net.ipv4.ip_forward", "1");
        ns.sysctl("net.ipv6.conf.all.forwarding", "1");
        let mut neighbours: Vec<(IpAddr, [u8; 6])> = vec![
            (GATEWAY_V4.into(), GATEWAY_MAC),
            (GATEWAY_V6.into(), GATEWAY_MAC),
        ];
        for i in 0..8 {
            neighbours.push((target_v4(i).into(), target_mac(i)));
            neighbours.push((target_v6(i).into(), target_mac(i)));
        }
        for (ip, mac) in neighbours {
            ns.ip(&[
                "neigh",
                "replace",
                &ip.to_string(),
                "lladdr",
                &format_mac(mac),
                "nud",
                "permanent",
                "dev",
                "lb0",
            ]);
        }
        ns.ip(&[
            "route",
            "add",
            "10.201.0.0/16",
            "via",
            &GATEWAY_V4.to_string(),
        ]);
        ns.ip(&[
            "-6",
            "route",
            "add",
            "fd00:201::/48",
            "via",
            &GATEWAY_V6.to_string(),
        ]);
        let lb0_ifindex: u32 = ns
            .run_in(|| sluice::dataplane::interface::index("lb0"))
            .expect("lb0 exists");

        let mut harness = XdpHarness::with_sizes(sluice::dataplane::load::PROGRAM_NAME, sizes);
        harness.set_ingress(lb0_ifindex);
        let mut maps = Maps::take(harness.ebpf_mut()).expect("the object has the data-plane maps");
        maps.set_config(&Config::default()).unwrap();
        L4Fixture {
            ns,
            harness,
            maps,
            lb0_ifindex,
        }
    }

    /// Adds a listener (and its address's ICMP entry) with id `id`.
    pub fn listener(
        &mut self,
        id: u32,
        vip: SocketAddr,
        protocol: u8,
        mode: ForwardingMode,
        hash_key: HashKey,
    ) {
        self.listener_with(
            vip,
            protocol,
            Listener {
                id,
                mode: mode as u8,
                hash_key: hash_key as u8,
                idle_timeout_s: 0,
            },
        );
    }

    /// Adds a listener hashing the 5-tuple, with its own idle timeout (seconds).
    pub fn listener_with_idle_timeout(
        &mut self,
        id: u32,
        vip: SocketAddr,
        protocol: u8,
        mode: ForwardingMode,
        idle_timeout_s: u16,
    ) {
        self.listener_with(
            vip,
            protocol,
            Listener {
                id,
                mode: mode as u8,
                hash_key: HashKey::FiveTuple as u8,
                idle_timeout_s,
            },
        );
    }

    fn listener_with(&mut self, vip: SocketAddr, protocol: u8, listener: Listener) {
        let (addr, family) = ip_to_bytes(vip.ip());
        let key = ListenerKey {
            addr,
            port_be: vip.port().to_be(),
            protocol,
            family,
        };
        self.maps.set_listener(&key, &listener).unwrap();
        let icmp = if vip.is_ipv4() { 1 } else { 58 };
        let icmp_key = ListenerKey {
            port_be: 0,
            protocol: icmp,
            ..key
        };
        self.maps.set_listener(&icmp_key, &listener).unwrap();
    }

    /// Sets target `id` to `addr` (state active); `snat` is the load balancer's address on
    /// the target's side, for `nat` mode.
    pub fn target(&mut self, id: u32, addr: SocketAddr) {
        let (addr_bytes, family) = ip_to_bytes(addr.ip());
        let snat = if addr.is_ipv4() {
            IpAddr::from(LB_V4)
        } else {
            IpAddr::from(LB_V6)
        };
        self.target_with(
            id,
            Target {
                addr: addr_bytes,
                snat_addr: ip_to_bytes(snat).0,
                port_be: addr.port().to_be(),
                family,
                state: TARGET_ACTIVE,
                _pad: [0; 4],
            },
        );
    }

    pub fn target_with(&mut self, id: u32, target: Target) {
        self.maps.set_target(id, &target).unwrap();
    }

    /// Builds and installs listener `listener_id`'s Maglev table over `targets` (id, weight).
    pub fn table(&mut self, listener_id: u32, targets: &[(u32, u32)]) {
        let maglev_targets: Vec<MaglevTarget> = targets
            .iter()
            .map(|&(id, weight)| MaglevTarget {
                key: u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                id,
                weight,
            })
            .collect();
        let slots = if targets.is_empty() {
            Vec::new()
        } else {
            maglev::build(&maglev_targets, TableSize::new(TABLE_SIZE).unwrap()).unwrap()
        };
        self.maps.set_maglev_table(listener_id, &slots).unwrap();
    }

    /// Runs the program on `frame` as if it arrived on lb0.
    pub fn run(&mut self, frame: &[u8]) -> RunResult {
        let harness = &mut self.harness;
        self.ns.run_in(|| harness.run(frame))
    }

    /// A frame from the gateway's MAC to lb0's, as a client's packet arrives.
    pub fn inbound(frame: Frame) -> Frame {
        frame.src_mac(GATEWAY_MAC).dst_mac(LB_MAC)
    }
}
