//! How `sluice run` and `sluice stats` fail: one clear line and a non-zero exit for people and
//! scripts, recovery from a daemon that was killed without cleaning up, and a second daemon
//! refused on a socket the first still answers on.

use super::namespaces::{
    one_line, sluice_output, start_sluice, stats, stop_sluice, ApiSocket, PinDir, TIMEOUT,
};
use crate::{
    netns::{require_root, sluice_binary, veth, Namespace},
    servers::{udp_request, UdpReply, UdpServer},
};
use lb_common::stats::Counter;

/// `nobody` on Debian-like systems.
const UNPRIVILEGED: u32 = 65534;

#[test]
fn run_on_a_missing_interface_names_it() {
    require_root();
    // In a fresh namespace, nothing called nosuch0 can exist and nothing can be attached to.
    let ns = Namespace::new("cli");
    let pin_dir = PinDir::new();
    let socket = ApiSocket::new();
    let output = ns
        .command(sluice_binary())
        .args(["run", "--iface", "nosuch0", "--pin-dir", pin_dir.arg()])
        .args(["--socket", socket.arg()])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let line = one_line(&output.stderr);
    assert!(line.contains("'nosuch0'"), "{line}");
    assert!(line.contains("does not exist"), "{line}");
}

#[test]
fn run_without_root_says_permission_denied() {
    require_root();
    let ns = Namespace::new("cli");
    let peer = Namespace::new("peer");
    veth(&ns, "eth0", &peer, "eth0");
    let pin_dir = PinDir::new();
    let socket = ApiSocket::new();
    let output = ns
        .command_as(sluice_binary(), UNPRIVILEGED, UNPRIVILEGED)
        .args(["run", "--iface", "eth0", "--pin-dir", pin_dir.arg()])
        .args(["--socket", socket.arg()])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let line = one_line(&output.stderr).to_lowercase();
    assert!(
        line.contains("permission denied") && line.contains("root"),
        "{line}"
    );
    assert_eq!(ns.xdp_attached("eth0"), None);
    assert!(!pin_dir.stats_pin().exists());
    assert!(!socket.0.exists());
}

#[test]
fn stats_without_a_running_sluice_says_so() {
    require_root();
    let socket = ApiSocket::new();
    for json in [false, true] {
        let mut args = vec!["stats", "--socket", socket.arg()];
        if json {
            args.push("--json");
        }
        let output = sluice_output(&args);
        assert_eq!(output.status.code(), Some(1));
        assert_eq!(
            one_line(&output.stderr),
            format!(
                "error: no sluice daemon answers on {}: is `sluice run` running (with the same --socket)?",
                socket.arg()
            )
        );
        assert!(output.stdout.is_empty());
    }
}

#[test]
fn down_without_a_daemon_removes_pins_only() {
    require_root();
    let socket = ApiSocket::new();
    // Nothing pinned: nothing to do, and saying so is not an error.
    let pin_dir = PinDir::new();
    let output = sluice_output(&["down", "--pin-dir", pin_dir.arg(), "--socket", socket.arg()]);
    assert!(output.status.success(), "{}", one_line(&output.stderr));
    assert!(
        String::from_utf8_lossy(&output.stdout).starts_with("nothing to take down"),
        "{output:?}"
    );
    // A directory that is not on bpffs is a wrong argument: refused, left alone.
    let plain = std::env::temp_dir().join(format!("sluice-down-{}", std::process::id()));
    std::fs::create_dir_all(&plain).unwrap();
    let output = sluice_output(&[
        "down",
        "--pin-dir",
        plain.to_str().unwrap(),
        "--socket",
        socket.arg(),
    ]);
    let exists = plain.exists();
    let _ = std::fs::remove_dir(&plain);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        one_line(&output.stderr).starts_with(&format!(
            "error: {} is not on a BPF filesystem",
            plain.display()
        )),
        "{}",
        one_line(&output.stderr)
    );
    assert!(exists, "the directory was left alone");
}

#[test]
fn a_second_daemon_on_the_same_socket_is_refused() {
    require_root();
    let lb = Namespace::new("lb");
    let peer = Namespace::new("peer");
    veth(&lb, "eth0", &peer, "eth0");
    veth(&lb, "eth1", &peer, "eth1");
    let pin_dir = PinDir::new();
    let socket = ApiSocket::new();
    let mut first = start_sluice(&lb, "eth0", &pin_dir, &socket, &[]);

    // Same socket and pin directory, another interface: refused before it touches either.
    let output = lb
        .command(sluice_binary())
        .args(["run", "--iface", "eth1", "--pin-dir", pin_dir.arg()])
        .args(["--socket", socket.arg()])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        one_line(&output.stderr),
        format!(
            "error: a sluice daemon runs on {}: stop it first (SIGTERM; it hands its listeners to the next sluice run), or start this one with --take-over to replace it without a gap",
            socket.arg()
        )
    );
    assert_eq!(lb.xdp_attached("eth1"), None);
    // The first daemon still answers, with its pin in place.
    assert!(pin_dir.stats_pin().exists());
    assert!(stats(&socket).contains_key(Counter::PassNoListener.name()));
    stop_sluice(&mut first, libc::SIGINT, &lb, "eth0", &pin_dir, &socket);
}

#[test]
fn bad_arguments_are_refused() {
    let cases: [(&[&str], &str); 4] = [
        (&["run", "--iface", "lo", "--xdp-mode", "bogus"], "bogus"),
        (&["run"], "--iface"),
        (&["run", "--iface"], "--iface"),
        (&["stats", "--no-such-flag"], "--no-such-flag"),
    ];
    for (args, named) in cases {
        let output = sluice_output(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "sluice {args:?}: {stderr}");
        assert!(
            stderr.contains(named),
            "sluice {args:?} should name {named}: {stderr}"
        );
    }
}

#[test]
fn a_killed_sluice_leaves_forwarding_to_the_next_one() {
    require_root();
    let lb = Namespace::new("lb");
    let peer = Namespace::new("peer");
    veth(&lb, "eth0", &peer, "eth0");
    let pin_dir = PinDir::new();
    let socket = ApiSocket::new();

    let mut killed = start_sluice(&lb, "eth0", &pin_dir, &socket, &[]);
    let status = killed.stop(libc::SIGKILL, TIMEOUT);
    assert!(!status.success());
    // The pins, the socket file and the program's attachment outlive the process.
    assert!(
        pin_dir.stats_pin().exists(),
        "SIGKILL leaves the pins behind"
    );
    assert!(socket.0.exists(), "SIGKILL leaves the socket file behind");
    assert!(
        lb.xdp_attached("eth0").is_some(),
        "the program stays attached without its daemon"
    );

    let mut sluice = start_sluice(&lb, "eth0", &pin_dir, &socket, &[]);
    for said in [
        "adopting the data plane",
        "sluice took over eth0",
        "replacing the stale control socket",
    ] {
        assert!(sluice.stderr().contains(said), "{}", sluice.stderr());
    }
    // The counters are the same ones, and the new program moves them.
    lb.add_addr("eth0", "10.112.0.1/24");
    peer.add_addr("eth0", "10.112.0.2/24");
    let server = UdpServer::start(
        &lb,
        "10.112.0.1:5353".parse().unwrap(),
        "lb",
        UdpReply::Echo,
    );
    let before = stats(&socket);
    assert_eq!(
        udp_request(&peer, server.addr(), b"hello").unwrap(),
        b"hello"
    );
    let after = stats(&socket);
    let name = Counter::PassNoListener.name();
    assert!(
        after[name] > before[name],
        "before {before:?}, after {after:?}"
    );
    stop_sluice(&mut sluice, libc::SIGINT, &lb, "eth0", &pin_dir, &socket);
}
