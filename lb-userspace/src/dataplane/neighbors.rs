//! Keeping the next hop of every target resolved. The XDP program takes MAC addresses from the
//! kernel's neighbour table (`bpf_fib_lookup`), but traffic it forwards never refreshes that
//! table, so sluice asks the kernel to manage those entries: a *managed* neighbour entry is
//! resolved and kept reachable by the kernel itself (Linux 5.16+).
//!
//! Asked over rtnetlink, as `ip route get` and `ip neigh replace ... managed` would: one
//! socket, one request and its answer per target and per next hop, no process started.

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    net::IpAddr,
    os::fd::AsFd,
    time::Duration,
};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE,
    NLM_F_REQUEST,
};
use netlink_packet_route::{
    neighbour::{
        NeighbourAddress, NeighbourAttribute, NeighbourExtFlags, NeighbourMessage, NeighbourState,
    },
    route::{RouteAddress, RouteAttribute, RouteMessage},
    AddressFamily, RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

#[derive(Debug, thiserror::Error)]
pub enum NeighborError {
    #[error("cannot talk to the kernel over rtnetlink: {0}")]
    Netlink(io::Error),
    #[error("no route to {0}")]
    NoRoute(IpAddr),
    #[error("the route to {target} leaves through interface {ifindex}, which has no name")]
    NoInterface { target: IpAddr, ifindex: u32 },
}

/// The interface and next hop (the target itself when on-link) towards `target`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NextHop {
    pub dev: String,
    pub addr: IpAddr,
}

/// How long the kernel may take to answer one request (it answers at once; this bounds a
/// daemon that would otherwise wait forever on a broken socket).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// Looks up the routes to `targets` and marks their next hops' neighbour entries managed:
/// each target's next hop, or why it has none. A next hop whose entry the kernel refuses is
/// logged; the entry then stays unmanaged.
pub fn manage_all(targets: &[IpAddr]) -> Vec<(IpAddr, Result<NextHop, NeighborError>)> {
    if targets.is_empty() {
        return Vec::new();
    }
    let mut rtnl = match Rtnl::open() {
        Ok(rtnl) => rtnl,
        Err(e) => {
            let e = e.to_string();
            return targets
                .iter()
                .map(|&t| (t, Err(NeighborError::Netlink(io::Error::other(e.clone())))))
                .collect();
        }
    };
    let routes: Vec<(IpAddr, Result<Route, NeighborError>)> =
        targets.iter().map(|&t| (t, rtnl.route_to(t))).collect();
    let hops: BTreeSet<(u32, IpAddr)> = routes
        .iter()
        .filter_map(|(_, route)| route.as_ref().ok())
        .map(|(ifindex, hop)| (*ifindex, hop.addr))
        .collect();
    let mut refused = BTreeMap::new();
    for (ifindex, addr) in hops {
        if let Err(e) = rtnl.manage(ifindex, addr) {
            refused.insert(addr, e);
        }
    }
    for (addr, e) in refused {
        log::warn!("keeping the next hop {addr} resolved: the kernel refused a managed neighbour entry: {e}");
    }
    routes
        .into_iter()
        .map(|(t, route)| (t, route.map(|(_, hop)| hop)))
        .collect()
}

/// A route's outgoing interface (index) and next hop.
type Route = (u32, NextHop);

/// A route netlink socket that asks one thing at a time.
struct Rtnl {
    socket: Socket,
    sequence: u32,
}

impl Rtnl {
    fn open() -> io::Result<Rtnl> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        rustix::net::sockopt::set_socket_timeout(
            socket.as_fd(),
            rustix::net::sockopt::Timeout::Recv,
            Some(ANSWER_TIMEOUT),
        )?;
        Ok(Rtnl {
            socket,
            sequence: 0,
        })
    }

    /// `ip route get TARGET`: the interface index and the next hop.
    fn route_to(&mut self, target: IpAddr) -> Result<Route, NeighborError> {
        let answer = self
            .ask(RouteNetlinkMessage::GetRoute(route_query(target)), 0)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENETUNREACH | libc::EHOSTUNREACH | libc::ESRCH) => {
                    NeighborError::NoRoute(target)
                }
                _ => NeighborError::Netlink(e),
            })?;
        let Some(RouteNetlinkMessage::NewRoute(route)) = answer else {
            return Err(NeighborError::NoRoute(target));
        };
        let (ifindex, addr) = next_hop(&route, target).ok_or(NeighborError::NoRoute(target))?;
        let dev = nix::net::if_::if_indextoname(ifindex)
            .ok()
            .and_then(|name| name.into_string().ok())
            .ok_or(NeighborError::NoInterface { target, ifindex })?;
        Ok((ifindex, NextHop { dev, addr }))
    }

    /// `ip neigh replace ADDR dev IFINDEX managed`.
    fn manage(&mut self, ifindex: u32, addr: IpAddr) -> io::Result<()> {
        let flags = NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
        self.ask(
            RouteNetlinkMessage::NewNeighbour(managed_entry(ifindex, addr)),
            flags,
        )
        .map(|_| ())
    }

    /// Sends `message` as a request with `flags` and waits for its answer: a message, or
    /// `None` for an acknowledgement.
    fn ask(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Option<RouteNetlinkMessage>> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.sequence;
        let mut request = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
        request.finalize();
        let mut buffer = vec![0; request.buffer_len()];
        request.serialize(&mut buffer);
        self.socket.send(&buffer, 0)?;
        loop {
            let (datagram, _) = self.socket.recv_from_full()?;
            let mut offset = 0;
            while offset < datagram.len() {
                let answer =
                    NetlinkMessage::<RouteNetlinkMessage>::deserialize(&datagram[offset..])
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let length = answer.header.length as usize;
                if length == 0 {
                    break;
                }
                // Netlink messages are 4-byte aligned.
                offset += (length + 3) & !3;
                if answer.header.sequence_number != self.sequence {
                    continue;
                }
                return match answer.payload {
                    NetlinkPayload::InnerMessage(inner) => Ok(Some(inner)),
                    NetlinkPayload::Error(e) if e.code.is_none() => Ok(None),
                    NetlinkPayload::Error(e) => Err(e.to_io()),
                    _ => continue,
                };
            }
        }
    }
}

fn family(addr: IpAddr) -> AddressFamily {
    if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

/// What `ip route get TARGET` asks.
fn route_query(target: IpAddr) -> RouteMessage {
    let mut route = RouteMessage::default();
    route.header.address_family = family(target);
    route.header.destination_prefix_length = if target.is_ipv4() { 32 } else { 128 };
    route
        .attributes
        .push(RouteAttribute::Destination(match target {
            IpAddr::V4(v4) => RouteAddress::Inet(v4),
            IpAddr::V6(v6) => RouteAddress::Inet6(v6),
        }));
    route
}

/// The outgoing interface and next hop of a route the kernel gave for `target`: its gateway,
/// or the target itself when on-link.
fn next_hop(route: &RouteMessage, target: IpAddr) -> Option<(u32, IpAddr)> {
    let mut ifindex = None;
    let mut gateway = None;
    for attribute in &route.attributes {
        match attribute {
            RouteAttribute::Oif(index) => ifindex = Some(*index),
            RouteAttribute::Gateway(RouteAddress::Inet(v4)) => gateway = Some(IpAddr::V4(*v4)),
            RouteAttribute::Gateway(RouteAddress::Inet6(v6)) => gateway = Some(IpAddr::V6(*v6)),
            _ => {}
        }
    }
    Some((ifindex?, gateway.unwrap_or(target)))
}

/// A neighbour entry the kernel resolves and keeps reachable (as iproute2's `managed`: state
/// NUD_NONE with NTF_EXT_MANAGED).
fn managed_entry(ifindex: u32, addr: IpAddr) -> NeighbourMessage {
    let mut entry = NeighbourMessage::default();
    entry.header.family = family(addr);
    entry.header.ifindex = ifindex;
    entry.header.state = NeighbourState::None;
    entry
        .attributes
        .push(NeighbourAttribute::Destination(match addr {
            IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
            IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
        }));
    entry
        .attributes
        .push(NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed));
    entry
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(attributes: Vec<RouteAttribute>) -> RouteMessage {
        let mut route = RouteMessage::default();
        route.attributes = attributes;
        route
    }

    #[test]
    fn on_link_targets_are_their_own_next_hop() {
        let target: IpAddr = "10.9.0.7".parse().unwrap();
        let on_link = route(vec![
            RouteAttribute::Destination(RouteAddress::Inet("10.9.0.7".parse().unwrap())),
            RouteAttribute::Oif(4),
        ]);
        assert_eq!(next_hop(&on_link, target), Some((4, target)));
    }

    #[test]
    fn routed_targets_go_via_their_gateway() {
        let routed = route(vec![
            RouteAttribute::Oif(7),
            RouteAttribute::Gateway(RouteAddress::Inet6("fd00::1".parse().unwrap())),
        ]);
        assert_eq!(
            next_hop(&routed, "fd00:9::9".parse().unwrap()),
            Some((7, "fd00::1".parse().unwrap()))
        );
        // No outgoing interface: no next hop.
        assert_eq!(next_hop(&route(vec![]), "10.0.0.1".parse().unwrap()), None);
    }

    /// The kernel itself answers: loopback is routed through `lo`, on-link.
    #[test]
    fn the_kernel_routes_loopback_through_lo() {
        let mut rtnl = Rtnl::open().unwrap();
        let target: IpAddr = "127.0.0.1".parse().unwrap();
        let (_, hop) = rtnl.route_to(target).unwrap();
        assert_eq!(
            hop,
            NextHop {
                dev: "lo".into(),
                addr: target
            }
        );
    }
}
