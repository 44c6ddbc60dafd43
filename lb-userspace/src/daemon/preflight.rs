//! Set-up checks: what makes the XDP path lose traffic silently, found before it does, each
//! warning naming its fix. The daemon runs them at start and after every change of the model,
//! logs each new one, and `sluice status` and the status page show them:
//! - IP forwarding off in the daemon's network namespace (the FIB lookups of the XDP program
//!   fail: `drop_forwarding_disabled`);
//! - a veth whose peer has neither an XDP program nor GRO: the frames sluice sends out of it
//!   (XDP_TX, redirect) are dropped by the kernel at the peer;
//! - checksum offload on such a veth pair: packets leave with partial checksums, which the
//!   program's incremental rewrites carry to the target, whose stack drops them;
//! - L4 targets the XDP program cannot reach: loopback, unspecified or multicast addresses.
//!
//! What to warn about is pure ([`forwarding`], [`unreachable_targets`], [`veth`]); reading
//! the facts (procfs, rtnetlink, ethtool ioctls) is kept thin around it.

use std::{
    fs::File,
    io,
    os::fd::{AsRawFd, RawFd},
};

use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_REQUEST};
use netlink_packet_route::{
    link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage, LinkXdp, XdpAttached},
    nsid::{NsidAttribute, NsidMessage},
    RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::model::Model;

/// Every warning for `model` with sluice attached to `ifaces`, from this namespace's facts.
/// A fact that cannot be read gives no warning (and a debug log line).
pub fn check(ifaces: &[String], model: &Model) -> Vec<String> {
    let mut warnings = forwarding(
        model,
        read_flag("/proc/sys/net/ipv4/ip_forward"),
        read_flag("/proc/sys/net/ipv6/conf/all/forwarding"),
    );
    for iface in ifaces {
        match veth_facts(iface) {
            Ok(Some(facts)) => warnings.extend(veth(&facts)),
            Ok(None) => {}
            Err(e) => log::debug!("set-up check of {iface}: {e}"),
        }
    }
    warnings.extend(unreachable_targets(model));
    warnings
}

/// The L4 listeners' target addresses, by family: what needs forwarding.
fn l4_families(model: &Model) -> (bool, bool) {
    let mut v4 = false;
    let mut v6 = false;
    for listener in model.listeners.iter().filter(|l| !l.protocol.is_l7()) {
        for group in listener
            .target_groups()
            .filter_map(|g| model.target_group(g))
        {
            for target in &group.targets {
                v4 |= target.address.is_ipv4();
                v6 |= target.address.is_ipv6();
            }
        }
    }
    (v4, v6)
}

/// IP forwarding off where an L4 listener has targets of that family. `None`: unknown.
pub fn forwarding(model: &Model, ipv4: Option<bool>, ipv6: Option<bool>) -> Vec<String> {
    let (v4, v6) = l4_families(model);
    let mut warnings = Vec::new();
    for (needed, on, sysctl) in [
        (v4, ipv4, "net.ipv4.ip_forward"),
        (v6, ipv6, "net.ipv6.conf.all.forwarding"),
    ] {
        if needed && on == Some(false) {
            warnings.push(format!(
                "IP forwarding is off in this network namespace ({sysctl} = 0): the XDP program's route lookups fail and L4 packets are dropped (drop_forwarding_disabled); fix: sysctl -w {sysctl}=1"
            ));
        }
    }
    warnings
}

/// L4 targets whose address the XDP program cannot forward to.
pub fn unreachable_targets(model: &Model) -> Vec<String> {
    let mut warnings = Vec::new();
    for listener in model.listeners.iter().filter(|l| !l.protocol.is_l7()) {
        for group in listener
            .target_groups()
            .filter_map(|g| model.target_group(g))
        {
            for target in &group.targets {
                let why = match target.address {
                    a if a.is_loopback() => {
                        "a loopback address, which only this host's own stack can reach"
                    }
                    a if a.is_unspecified() => "the unspecified address",
                    a if a.is_multicast() => "a multicast address",
                    _ => continue,
                };
                let warning = format!(
                    "target {} of target group '{}' (tcp/udp listener '{}') is {why}: the XDP program cannot forward to it and drops its share (drop_no_route); fix: use the target's address on the network, or an http listener, whose proxy can reach {}",
                    target.address, group.name, listener.name, target.address
                );
                if !warnings.contains(&warning) {
                    warnings.push(warning);
                }
            }
        }
    }
    warnings
}

/// What the checks know of a veth sluice is attached to and of its peer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VethFacts {
    pub iface: String,
    /// The peer's name where it could be read.
    pub peer: Option<String>,
    /// Whether the peer is in this namespace.
    pub peer_here: bool,
    pub peer_xdp: bool,
    /// None: not readable (the peer is in a namespace this process cannot enter).
    pub peer_gro: Option<bool>,
    pub tx_checksum: Option<bool>,
    pub peer_tx_checksum: Option<bool>,
}

pub fn veth(facts: &VethFacts) -> Vec<String> {
    let iface = &facts.iface;
    let peer = facts.peer.as_deref().unwrap_or("the peer");
    let where_ = if facts.peer_here {
        String::new()
    } else {
        " (in the peer's network namespace: ip netns exec NS ...)".to_string()
    };
    let mut warnings = Vec::new();
    if !facts.peer_xdp && facts.peer_gro != Some(true) {
        let unknown = if facts.peer_gro.is_none() {
            "sluice cannot see its GRO setting from here; if it is on, ignore this"
        } else {
            "and GRO is off"
        };
        warnings.push(format!(
            "{iface} is a veth whose peer {peer} has no XDP program ({unknown}): frames sluice sends back out of {iface} (XDP_TX, redirect) are dropped by the kernel at the peer; fix: ethtool -K {peer} gro on{where_}, or attach an XDP program (one that returns XDP_PASS is enough) to {peer}"
        ));
    }
    for (name, on) in [
        (iface.as_str(), facts.tx_checksum),
        (peer, facts.peer_tx_checksum),
    ] {
        if on == Some(true) {
            let where_ = if name == iface { "" } else { where_.as_str() };
            warnings.push(format!(
                "checksum offload is on for veth {name}: packets cross the pair with partial checksums, which sluice's rewrites carry to the targets, whose stacks drop them; fix: ethtool -K {name} tx off rx off{where_}"
            ));
        }
    }
    warnings
}

fn read_flag(path: &str) -> Option<bool> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(text.trim() != "0")
}

/// Facts about `iface` if it is a veth; `None` otherwise.
fn veth_facts(iface: &str) -> io::Result<Option<VethFacts>> {
    let index = crate::dataplane::interface::index(iface).map_err(io::Error::other)?;
    let mut netlink = Netlink::open()?;
    let link = netlink.link(index, None)?;
    let is_veth = link.attributes.iter().any(|a| {
        matches!(a, LinkAttribute::LinkInfo(infos) if infos.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth))))
    });
    if !is_veth {
        return Ok(None);
    }
    let peer_index = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Link(index) => Some(*index),
        _ => None,
    });
    let nsid = link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkNetNsId(id) => Some(*id),
        _ => None,
    });
    let mut facts = VethFacts {
        iface: iface.to_string(),
        peer_here: nsid.is_none(),
        tx_checksum: ethtool_flag(iface, ETHTOOL_GTXCSUM).ok(),
        ..VethFacts::default()
    };
    let Some(peer_index) = peer_index else {
        return Ok(Some(facts));
    };
    let peer = netlink.link(peer_index, nsid)?;
    facts.peer_xdp = peer.attributes.iter().any(|a| {
        matches!(a, LinkAttribute::Xdp(xdp) if xdp.iter().any(|x| matches!(x, LinkXdp::Attached(at) if *at != XdpAttached::None)))
    });
    facts.peer = peer.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(name) => Some(name.clone()),
        _ => None,
    });
    if let Some(name) = facts.peer.clone() {
        let read = |name: &str| {
            (
                ethtool_flag(name, ETHTOOL_GGRO).ok(),
                ethtool_flag(name, ETHTOOL_GTXCSUM).ok(),
            )
        };
        let (gro, tx) = match nsid {
            None => read(&name),
            Some(id) => match netlink.namespace_of(id) {
                Some(ns) => in_namespace(&ns, || read(&name)).unwrap_or((None, None)),
                None => (None, None),
            },
        };
        facts.peer_gro = gro;
        facts.peer_tx_checksum = tx;
    }
    Ok(Some(facts))
}

/// Runs `f` on a thread that entered the network namespace `ns`.
fn in_namespace<T: Send>(ns: &File, f: impl FnOnce() -> T + Send) -> Option<T> {
    let fd = ns.as_raw_fd();
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                // SAFETY: setns only changes this (short-lived) thread's namespace.
                (unsafe { libc::setns(fd, libc::CLONE_NEWNET) } == 0).then(f)
            })
            .join()
            .ok()
            .flatten()
    })
}

/// A blocking rtnetlink socket for one request at a time.
struct Netlink {
    socket: Socket,
    sequence: u32,
}

impl Netlink {
    fn open() -> io::Result<Netlink> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Netlink {
            socket,
            sequence: 0,
        })
    }

    fn request(&mut self, message: RouteNetlinkMessage) -> io::Result<RouteNetlinkMessage> {
        let mut request = NetlinkMessage::from(message);
        request.header.flags = NLM_F_REQUEST;
        self.sequence += 1;
        request.header.sequence_number = self.sequence;
        request.finalize();
        let mut buf = vec![0; request.header.length as usize];
        request.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        let (reply, _) = self.socket.recv_from_full()?;
        let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        match reply.payload {
            NetlinkPayload::InnerMessage(message) => Ok(message),
            NetlinkPayload::Error(e) => Err(e.to_io()),
            other => Err(io::Error::other(format!(
                "unexpected netlink reply {other:?}"
            ))),
        }
    }

    /// The link `index`, in the namespace with id `nsid` (as this namespace knows it) if given.
    fn link(&mut self, index: u32, nsid: Option<i32>) -> io::Result<LinkMessage> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        if let Some(id) = nsid {
            message.attributes.push(LinkAttribute::IfNetnsId(id));
        }
        match self.request(RouteNetlinkMessage::GetLink(message))? {
            RouteNetlinkMessage::NewLink(link) => Ok(link),
            other => Err(io::Error::other(format!("unexpected reply {other:?}"))),
        }
    }

    /// The namespace whose id here is `nsid`, among those `ip netns` names (the only ones
    /// with a well-known place); None if it is not among them.
    fn namespace_of(&mut self, nsid: i32) -> Option<File> {
        let entries = std::fs::read_dir("/run/netns").ok()?;
        // Bounded: one request per named namespace.
        for entry in entries.flatten() {
            let Ok(file) = File::open(entry.path()) else {
                continue;
            };
            if self.nsid_of(file.as_raw_fd()).ok() == Some(nsid) {
                return Some(file);
            }
        }
        None
    }

    fn nsid_of(&mut self, fd: RawFd) -> io::Result<i32> {
        let mut message = NsidMessage::default();
        message.attributes.push(NsidAttribute::Fd(fd as u32));
        match self.request(RouteNetlinkMessage::GetNsId(message))? {
            RouteNetlinkMessage::NewNsId(reply) => reply
                .attributes
                .iter()
                .find_map(|a| match a {
                    NsidAttribute::Id(id) => Some(*id),
                    _ => None,
                })
                .ok_or_else(|| io::Error::other("no id in the answer")),
            other => Err(io::Error::other(format!("unexpected reply {other:?}"))),
        }
    }
}

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_GGRO: u32 = 0x2b;

/// `struct ethtool_value` of <linux/ethtool.h>.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// An on/off setting of `iface` by the ethtool ioctl `cmd` (ETHTOOL_G*), in this thread's
/// namespace. No kept crate wraps these ioctls without an async netlink stack.
fn ethtool_flag(iface: &str, cmd: u32) -> io::Result<bool> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)?;
    let mut value = EthtoolValue { cmd, data: 0 };
    // SAFETY: ifreq is plain data; all zeros is valid.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = iface.as_bytes();
    if name.len() >= request.ifr_name.len() {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    for (dst, src) in request.ifr_name.iter_mut().zip(name) {
        *dst = *src as libc::c_char;
    }
    request.ifr_ifru.ifru_data = (&mut value as *mut EthtoolValue).cast();
    // SAFETY: SIOCETHTOOL reads the name and writes `value` through the pointer, which lives
    // until the call returns.
    if unsafe { libc::ioctl(socket.as_raw_fd(), SIOCETHTOOL as _, &mut request) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value.data != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(text: &str) -> Model {
        Model::parse(text, "test.toml").unwrap()
    }

    const L4: &str = r#"
        [[listener]]
        name = "web"
        address = "192.0.2.10"
        port = 80
        protocol = "tcp"
        mode = "tunnel"
        default_target_group = "web"

        [[target_group]]
        name = "web"
        targets = [{ address = "127.0.0.1" }, { address = "10.0.0.5" }, { address = "2001:db8::5" }]
    "#;

    #[test]
    fn forwarding_off_is_named_with_its_sysctl_where_targets_need_it() {
        let m = model(L4);
        let warnings = forwarding(&m, Some(false), Some(true));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("fix: sysctl -w net.ipv4.ip_forward=1"),
            "{}",
            warnings[0]
        );
        assert_eq!(forwarding(&m, Some(false), Some(false)).len(), 2);
        assert!(forwarding(&m, Some(true), Some(true)).is_empty());
        assert!(
            forwarding(&m, None, None).is_empty(),
            "unknown is no warning"
        );
        assert!(forwarding(&Model::default(), Some(false), Some(false)).is_empty());
    }

    #[test]
    fn a_loopback_l4_target_is_flagged_once() {
        let warnings = unreachable_targets(&model(L4));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with("target 127.0.0.1 of target group 'web' (tcp/udp listener 'web') is a loopback address"),
            "{}",
            warnings[0]
        );
        let http = L4
            .replace("\"tcp\"", "\"http\"")
            .replace("mode = \"tunnel\"", "");
        assert!(
            unreachable_targets(&model(&http)).is_empty(),
            "the proxy reaches loopback"
        );
    }

    #[test]
    fn veth_peers_without_xdp_or_gro_and_offload_are_named_with_the_fix() {
        let facts = VethFacts {
            iface: "eth0".into(),
            peer: Some("veth-c".into()),
            peer_here: true,
            peer_xdp: false,
            peer_gro: Some(false),
            tx_checksum: Some(false),
            peer_tx_checksum: Some(true),
        };
        let warnings = veth(&facts);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings[0].contains("fix: ethtool -K veth-c gro on, or attach an XDP program"),
            "{}",
            warnings[0]
        );
        assert!(
            warnings[1].contains("fix: ethtool -K veth-c tx off rx off"),
            "{}",
            warnings[1]
        );
        for fine in [
            VethFacts {
                peer_gro: Some(true),
                peer_tx_checksum: Some(false),
                ..facts.clone()
            },
            VethFacts {
                peer_xdp: true,
                peer_gro: None,
                peer_tx_checksum: None,
                ..facts.clone()
            },
        ] {
            assert!(veth(&fine).is_empty(), "{fine:?}: {:?}", veth(&fine));
        }
        let elsewhere = VethFacts {
            peer_here: false,
            peer_gro: None,
            peer_tx_checksum: None,
            ..facts
        };
        let warnings = veth(&elsewhere);
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].contains("cannot see its GRO setting")
                && warnings[0].contains("ip netns exec"),
            "{}",
            warnings[0]
        );
    }
}
