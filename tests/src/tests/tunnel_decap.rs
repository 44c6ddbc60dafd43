//! `sluice decap` on a real target: tunnelled UDP datagrams (IPIP, IP6IP6, 4in6, 6in4), sent
//! as raw frames from another namespace the way sluice's `tunnel` mode writes them, reach a
//! real UDP server bound to the VIP on the target's `lo`, whose answer goes straight back to
//! the client (direct server return). Without `sluice decap` the kernel, which has no ipip
//! driver, cannot deliver them. Also how `sluice decap` fails.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use super::namespaces::{one_line, TIMEOUT};
use crate::{
    netns::{require_root, sluice_binary, veth, wait_until, ChildGuard, Namespace},
    packet::{Frame, Ip, Ipv4, Ipv6},
    servers::{UdpReply, UdpServer},
};

/// `nobody` on Debian-like systems.
const UNPRIVILEGED: u32 = 65534;

const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(10, 120, 0, 1);
const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x120, 0, 0, 0, 0, 0, 1);
const TARGET_V4: Ipv4Addr = Ipv4Addr::new(10, 120, 0, 2);
const TARGET_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x120, 0, 0, 0, 0, 0, 2);
const VIP_V4: Ipv4Addr = Ipv4Addr::new(10, 121, 0, 1);
const VIP_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x121, 0, 0, 0, 0, 0, 1);
const VIP_PORT: u16 = 5353;

/// A client (also playing the load balancer: it writes the outer headers) and a target
/// holding the VIPs on `lo`, on one veth link.
struct Setup {
    client: Namespace,
    target: Namespace,
    client_mac: [u8; 6],
    target_mac: [u8; 6],
}

impl Setup {
    fn new() -> Setup {
        require_root();
        let client = Namespace::new("client");
        let target = Namespace::new("target");
        veth(&client, "eth0", &target, "eth0");
        client.add_addr("eth0", &format!("{CLIENT_V4}/24"));
        client.add_addr("eth0", &format!("{CLIENT_V6}/64"));
        target.add_addr("eth0", &format!("{TARGET_V4}/24"));
        target.add_addr("eth0", &format!("{TARGET_V6}/64"));
        target.add_addr("lo", &format!("{VIP_V4}/32"));
        target.add_addr("lo", &format!("{VIP_V6}/128"));
        let client_mac = client.mac("eth0");
        let target_mac = target.mac("eth0");
        Setup {
            client,
            target,
            client_mac,
            target_mac,
        }
    }

    /// A UDP datagram from the client's `port` to the VIP, in an outer header from the
    /// tunnel prefix to the target, as a frame from the client's MAC to the target's.
    fn tunnelled(&self, port: u16, inner_v6: bool, outer_v6: bool, payload: &[u8]) -> Vec<u8> {
        let (client, vip): (IpAddr, IpAddr) = if inner_v6 {
            (CLIENT_V6.into(), VIP_V6.into())
        } else {
            (CLIENT_V4.into(), VIP_V4.into())
        };
        let outer: Ip = if outer_v6 {
            Ipv6::new("fd00:51c::1:2".parse().unwrap(), TARGET_V6).into()
        } else {
            Ipv4 {
                dont_fragment: true,
                ..Ipv4::new(Ipv4Addr::new(172, 16, 1, 2), TARGET_V4)
            }
            .into()
        };
        Frame::udp(
            SocketAddr::new(client, port),
            SocketAddr::new(vip, VIP_PORT),
        )
        .payload(payload)
        .src_mac(self.client_mac)
        .dst_mac(self.target_mac)
        .encapsulate(outer)
        .build()
    }

    /// Sends `frame` out of the client's eth0 as it is (an AF_PACKET raw socket).
    fn send(&self, frame: &[u8]) {
        self.client.run_in(|| send_raw("eth0", frame));
    }

    fn start_decap(&self, extra: &[&str]) -> ChildGuard {
        let mut cmd = self.target.command(sluice_binary());
        cmd.args(["decap", "--iface", "eth0"])
            .args(extra)
            .env_remove("RUST_LOG");
        let decap = self.target.spawn(cmd);
        wait_until(TIMEOUT, "sluice decap to attach to eth0", || {
            if let Some(status) = decap.try_status() {
                panic!(
                    "sluice decap exited before attaching ({status}): {}",
                    decap.stderr()
                );
            }
            self.target.xdp_attached("eth0").is_some()
        });
        decap
    }
}

fn send_raw(iface: &str, frame: &[u8]) {
    let ifindex = sluice::dataplane::interface::index(iface).unwrap();
    // SAFETY: plain socket call; the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    assert!(
        fd >= 0,
        "AF_PACKET socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: all-integer C struct; zero is valid.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = ifindex as i32;
    addr.sll_halen = 6;
    addr.sll_addr[..6].copy_from_slice(&frame[..6]);
    // SAFETY: frame and addr are valid for the lengths passed.
    let sent = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(
        sent,
        frame.len() as isize,
        "sending a raw frame: {}",
        std::io::Error::last_os_error()
    );
}

/// The target's `Ip: InUnknownProtos` (/proc/net/snmp), read inside its namespace.
fn unknown_protocols(ns: &Namespace) -> u64 {
    let snmp = ns.run_in(|| std::fs::read_to_string("/proc/thread-self/net/snmp").unwrap());
    let mut ip_lines = snmp.lines().filter(|l| l.starts_with("Ip: "));
    let names: Vec<&str> = ip_lines.next().unwrap().split_whitespace().collect();
    let values: Vec<&str> = ip_lines.next().unwrap().split_whitespace().collect();
    let at = names.iter().position(|n| *n == "InUnknownProtos").unwrap();
    values[at].parse().unwrap()
}

#[test]
fn tunnelled_datagrams_reach_the_vip_through_sluice_decap() {
    let setup = Setup::new();
    let servers = [IpAddr::from(VIP_V4), IpAddr::from(VIP_V6)].map(|vip| {
        UdpServer::start(
            &setup.target,
            SocketAddr::new(vip, VIP_PORT),
            "vip",
            UdpReply::Echo,
        )
    });

    // The kernel alone cannot take IPIP apart (no ipip driver): it counts an unknown protocol.
    let before = unknown_protocols(&setup.target);
    setup.send(&setup.tunnelled(30000, false, false, b"no decap"));
    wait_until(TIMEOUT, "the target to refuse IPIP by itself", || {
        unknown_protocols(&setup.target) > before
    });

    let mut decap = setup.start_decap(&[]);
    // The line follows the attachment, which `start_decap` waited for.
    wait_until(TIMEOUT, "sluice decap to say it is attached", || {
        decap.stderr().contains("sluice decap attached to eth0")
    });
    let combinations = [
        ("IPIP", false, false),
        ("IP6IP6", true, true),
        ("4in6", false, true),
        ("6in4", true, false),
    ];
    for (i, (name, inner_v6, outer_v6)) in combinations.into_iter().enumerate() {
        let port = 30001 + i as u16;
        let client_ip: IpAddr = if inner_v6 {
            CLIENT_V6.into()
        } else {
            CLIENT_V4.into()
        };
        // The client's socket, which the answer (VIP to client, not tunnelled) must reach.
        let socket = setup
            .client
            .run_in(|| UdpSocket::bind(SocketAddr::new(client_ip, port)))
            .unwrap();
        socket.set_read_timeout(Some(TIMEOUT)).unwrap();
        let payload = format!("through {name}");
        setup.send(&setup.tunnelled(port, inner_v6, outer_v6, payload.as_bytes()));
        let mut answer = [0u8; 256];
        let (n, from) = socket
            .recv_from(&mut answer)
            .unwrap_or_else(|e| panic!("no answer to the {name} datagram: {e}"));
        assert_eq!(&answer[..n], payload.as_bytes(), "{name}");
        let vip: IpAddr = if inner_v6 {
            VIP_V6.into()
        } else {
            VIP_V4.into()
        };
        assert_eq!(from, SocketAddr::new(vip, VIP_PORT), "{name}");
    }
    // Each server saw the client's own address: only the outer header was removed.
    assert_eq!(
        servers[0].peers(),
        vec![
            SocketAddr::from((CLIENT_V4, 30001)),
            SocketAddr::from((CLIENT_V4, 30003))
        ]
    );
    assert_eq!(
        servers[1].peers(),
        vec![
            SocketAddr::from((CLIENT_V6, 30002)),
            SocketAddr::from((CLIENT_V6, 30004))
        ]
    );

    let status = decap.stop(libc::SIGINT, TIMEOUT);
    assert!(status.success(), "{status}: {}", decap.stderr());
    assert_eq!(setup.target.xdp_attached("eth0"), None);
    let stderr = decap.stderr();
    assert!(stderr.contains("detached from eth0"), "{stderr}");
    let decapsulated: u64 = stderr
        .split_whitespace()
        .find_map(|w| w.strip_prefix("decapsulated="))
        .unwrap_or_else(|| panic!("no decapsulated count in: {stderr}"))
        .parse()
        .unwrap();
    assert_eq!(decapsulated, 4, "{stderr}");
}

#[test]
fn sluice_decap_detaches_on_sigterm_in_generic_mode() {
    let setup = Setup::new();
    let mut decap = setup.start_decap(&["--xdp-mode", "generic"]);
    assert_eq!(
        setup.target.xdp_attached("eth0").as_deref(),
        Some("xdpgeneric")
    );
    let status = decap.stop(libc::SIGTERM, TIMEOUT);
    assert!(status.success(), "{status}: {}", decap.stderr());
    assert_eq!(setup.target.xdp_attached("eth0"), None);
}

#[test]
fn sluice_decap_on_a_missing_interface_names_it() {
    require_root();
    let ns = Namespace::new("decap");
    let output = ns
        .command(sluice_binary())
        .args(["decap", "--iface", "nosuch0"])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let line = one_line(&output.stderr);
    assert!(
        line.contains("'nosuch0'") && line.contains("does not exist"),
        "{line}"
    );
}

#[test]
fn sluice_decap_without_root_says_permission_denied() {
    let setup = Setup::new();
    let output = setup
        .target
        .command_as(sluice_binary(), UNPRIVILEGED, UNPRIVILEGED)
        .args(["decap", "--iface", "eth0"])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let line = one_line(&output.stderr).to_lowercase();
    assert!(
        line.contains("permission denied") && line.contains("root"),
        "{line}"
    );
    assert_eq!(setup.target.xdp_attached("eth0"), None);
}
