//! Set-up that explains itself: `sluice run` started where traffic would vanish (IP forwarding
//! off, a veth peer that drops the frames sluice sends it, checksum offload on, an L4 target
//! on 127.0.0.1) logs a warning naming the fix for each, and `sluice status` shows them; on
//! the harness's correct topology it warns about none of them.

use std::net::Ipv4Addr;

use super::namespaces::{start_sluice, stop_sluice, ApiSocket, PinDir};
use crate::netns::{require_root, sluice_binary, LbTopology};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 111, 100, 1);

/// A model with one tcp listener whose targets are target 0 and `extra` targets.
fn config(topology: &LbTopology, name: &str, extra: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("{}-{name}.toml", topology.lb.name()));
    std::fs::write(
        &path,
        format!(
            "[[listener]]\nname = \"web\"\naddress = \"{VIP}\"\nport = 80\nprotocol = \"tcp\"\ndefault_target_group = \"web\"\nmaglev_table_size = 251\n\n\
             [[target_group]]\nname = \"web\"\nport = 8080\ntargets = [{{ address = \"{}\" }}{extra}]\n",
            topology.targets[0].link.v4
        ),
    )
    .unwrap();
    path
}

/// Runs sluice on lb's two interfaces until it has started, runs `sluice ARGS` for each of
/// `changes`; returns its log and `status` after them.
fn start_and_look(
    topology: &LbTopology,
    config: &std::path::Path,
    changes: &[&[&str]],
) -> (String, String) {
    let pin_dir = PinDir::new();
    let socket = ApiSocket::new();
    let mut sluice = start_sluice(
        &topology.lb,
        "eth0",
        &pin_dir,
        &socket,
        &[
            "--iface",
            "eth1",
            "--config",
            config.to_str().unwrap(),
            "--metrics-address",
            "off",
        ],
    );
    for change in changes {
        let out = topology
            .lb
            .command(sluice_binary())
            .args(*change)
            .args(["--socket", socket.arg()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let status = topology
        .lb
        .command(sluice_binary())
        .args(["status", "--socket", socket.arg()])
        .output()
        .unwrap();
    assert!(status.status.success());
    let log = sluice.stderr();
    stop_sluice(
        &mut sluice,
        libc::SIGINT,
        &topology.lb,
        "eth0",
        &pin_dir,
        &socket,
    );
    (log, String::from_utf8(status.stdout).unwrap())
}

#[test]
fn a_bad_setup_is_warned_about_with_the_fix_and_a_good_one_is_not() {
    require_root();
    let topology = LbTopology::new(1);
    let good = config(&topology, "good", "");
    let _cleanup = RemoveOnDrop(good.clone());
    let with_loopback = config(&topology, "loopback", ", { address = \"127.0.0.1\" }");
    let _cleanup_too = RemoveOnDrop(with_loopback.clone());

    // The harness's topology is right: forwarding on, GRO on the peers, offload off.
    let (log, status) = start_and_look(&topology, &good, &[]);
    // (Every set-up warning names its fix.)
    assert!(
        !log.contains("fix:"),
        "set-up warnings on a good set-up:\n{log}"
    );
    assert!(!status.contains("warnings"), "{status}");
    // A loopback target added at run time is flagged as soon as it is.
    let loopback =
        "target 127.0.0.1 of target group 'web' (tcp/udp listener 'web') is a loopback address";
    let (log, status) = start_and_look(
        &topology,
        &good,
        &[&["target", "add", "web", "127.0.0.1:8080"]],
    );
    assert!(log.contains(loopback), "{log}");
    assert!(
        status.starts_with("warnings (set-up problems that lose traffic):\n"),
        "{status}"
    );
    assert!(status.contains(loopback), "{status}");

    // Now as a user trying it by hand: forwarding off, the client's peer without GRO (and
    // without an XDP program), checksum offload back on at the target side, and the
    // loopback target in the file.
    topology.lb.sysctl("net.ipv4.ip_forward", "0");
    topology.client.ns.ethtool(&["-K", "eth0", "gro", "off"]);
    topology.lb.ethtool(&["-K", "eth1", "tx", "on"]);
    let (log, status) = start_and_look(&topology, &with_loopback, &[]);
    for (problem, fix) in [
        (
            "IP forwarding is off in this network namespace (net.ipv4.ip_forward = 0)",
            "fix: sysctl -w net.ipv4.ip_forward=1",
        ),
        (
            "eth0 is a veth whose peer eth0 has no XDP program (and GRO is off)",
            "fix: ethtool -K eth0 gro on (in the peer's network namespace",
        ),
        (
            "checksum offload is on for veth eth1",
            "fix: ethtool -K eth1 tx off rx off",
        ),
        (loopback, "fix: use the target's address on the network"),
    ] {
        let line = log
            .lines()
            .find(|l| l.contains(problem))
            .unwrap_or_else(|| panic!("no warning {problem:?} in\n{log}"));
        assert!(line.contains(fix), "{line}");
        assert!(line.contains("WARN"), "{line}");
        assert!(status.contains(problem) && status.contains(fix), "{status}");
    }
}

struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
