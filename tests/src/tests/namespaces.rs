//! `sluice run` attached inside an [`LbTopology`], with real TCP and UDP crossing it, and
//! detaching cleanly on SIGINT and SIGTERM. Also the helpers `run_cli` shares.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use lb_common::stats::Counter;

use crate::{
    netns::{
        list_namespaces, require_root, sluice_binary, unique_pin_dir, unique_socket_path, veth,
        wait_until, ChildGuard, LbTopology, Namespace,
    },
    servers::{http_get, udp_request, HttpServer, UdpReply, UdpServer},
};

/// Bounds waits that only a failure reaches, generous for a busy 2-core machine.
pub(super) const TIMEOUT: Duration = Duration::from_secs(20);

/// A pin directory removed at the end of a test, also a failing one.
pub(super) struct PinDir(pub PathBuf);

impl PinDir {
    pub fn new() -> PinDir {
        PinDir(unique_pin_dir())
    }

    pub fn stats_pin(&self) -> PathBuf {
        self.0.join("STATS")
    }

    pub fn arg(&self) -> &str {
        self.0.to_str().expect("pin dirs are UTF-8")
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A control socket path of its own for one daemon, removed at the end of a test (a killed
/// daemon leaves its socket behind).
pub(super) struct ApiSocket(pub PathBuf);

impl ApiSocket {
    pub fn new() -> ApiSocket {
        ApiSocket(unique_socket_path())
    }

    pub fn arg(&self) -> &str {
        self.0.to_str().expect("socket paths are UTF-8")
    }
}

impl Drop for ApiSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Starts `sluice run --iface IFACE --pin-dir DIR --socket PATH EXTRA...` in `ns` and waits
/// until its XDP program shows up on the interface.
pub(super) fn start_sluice(
    ns: &Namespace,
    iface: &str,
    pin_dir: &PinDir,
    socket: &ApiSocket,
    extra: &[&str],
) -> ChildGuard {
    let mut cmd = ns.command(sluice_binary());
    cmd.args(["run", "--iface", iface, "--pin-dir", pin_dir.arg()])
        .args(["--socket", socket.arg()])
        .args(extra)
        .env_remove("RUST_LOG");
    let sluice = ns.spawn(cmd);
    wait_until(TIMEOUT, &format!("sluice to attach XDP to {iface}"), || {
        if let Some(status) = sluice.try_status() {
            panic!(
                "sluice exited before attaching ({status}): {}",
                sluice.stderr()
            );
        }
        // The last start-up line comes after every attach, and the captured stderr is in
        // order: once it is there, so is everything logged before it.
        ns.xdp_attached(iface).is_some() && sluice.stderr().contains("listener(s) from")
    });
    sluice
}

/// Stops sluice with `signal` and checks that it exits 0, leaving neither the XDP program
/// nor the pin nor the control socket behind.
pub(super) fn stop_sluice(
    sluice: &mut ChildGuard,
    signal: i32,
    ns: &Namespace,
    iface: &str,
    pin_dir: &PinDir,
    socket: &ApiSocket,
) {
    let status = sluice.stop(signal, TIMEOUT);
    assert!(
        status.success(),
        "sluice exited with {status}: {}",
        sluice.stderr()
    );
    // A stopped daemon leaves forwarding running, for the next one to take over.
    assert!(
        ns.xdp_attached(iface).is_some(),
        "XDP detached when sluice stopped: {}",
        sluice.stderr()
    );
    assert!(
        pin_dir.stats_pin().exists(),
        "the pins went with the daemon"
    );
    assert_gone(&socket.0);
    assert!(
        sluice.stderr().contains("stays attached"),
        "{}",
        sluice.stderr()
    );
    // `sluice down` ends it on purpose.
    let down = ns
        .command(sluice_binary())
        .args(["down", "--pin-dir", pin_dir.arg(), "--socket", socket.arg()])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&down.stdout);
    assert!(
        down.status.success(),
        "sluice down: {said}{}",
        one_line(&down.stderr)
    );
    assert!(said.contains(&format!("detached from {iface}")), "{said}");
    assert_eq!(
        ns.xdp_attached(iface),
        None,
        "XDP still attached after sluice down"
    );
    assert_gone(&pin_dir.stats_pin());
}

/// Runs a `sluice` command to completion (outside any test namespace: it needs none).
pub(super) fn sluice_output(args: &[&str]) -> Output {
    Command::new(sluice_binary())
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("running sluice")
}

/// `sluice stats --json`: the control API's answer to `GET /v1/stats`.
pub(super) fn stats_json(socket: &ApiSocket) -> serde_json::Value {
    let output = sluice_output(&["stats", "--json", "--socket", socket.arg()]);
    assert!(
        output.status.success(),
        "sluice stats failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("sluice stats --json prints JSON")
}

/// `sluice stats --json`: packets per global counter name.
pub(super) fn stats(socket: &ApiSocket) -> BTreeMap<String, u64> {
    let json = stats_json(socket);
    let counters = json["counters"]
        .as_object()
        .expect("a JSON object of counters");
    for counter in Counter::ALL {
        let value = &counters[counter.name()];
        assert!(value["bytes"].is_u64(), "{}: {value}", counter.name());
    }
    counters
        .iter()
        .map(|(name, value)| {
            (
                name.clone(),
                value["packets"].as_u64().expect("packets is a number"),
            )
        })
        .collect()
}

/// The first line of a process's stderr, asserting there is exactly one.
pub(super) fn one_line(stderr: &[u8]) -> String {
    let stderr = String::from_utf8_lossy(stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "expected exactly one line on stderr, got: {stderr:?}"
    );
    lines[0].to_string()
}

fn assert_gone(path: &Path) {
    assert!(!path.exists(), "{} survived sluice's exit", path.display());
}

#[test]
fn sluice_passes_tcp_and_udp_through_the_lb_and_detaches_on_sigint() {
    require_root();
    const REQUESTS_PER_TARGET: u64 = 3;
    let topo = LbTopology::new(2);
    let any = |port| SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port);
    let names: Vec<String> = (0..topo.targets.len())
        .map(|i| format!("target-{i}"))
        .collect();
    let http: Vec<HttpServer> = topo
        .targets
        .iter()
        .zip(&names)
        .map(|(t, name)| HttpServer::start(&t.ns, any(80), name))
        .collect();
    let udp: Vec<UdpServer> = topo
        .targets
        .iter()
        .zip(&names)
        .map(|(t, name)| UdpServer::start(&t.ns, any(5353), name, UdpReply::Name))
        .collect();
    let pin_dir = PinDir::new();
    let socket = ApiSocket::new();
    let iface = topo.lb_client_side.iface.clone();
    let mut sluice = start_sluice(&topo.lb, &iface, &pin_dir, &socket, &[]);
    assert_eq!(
        topo.lb.xdp_attached(&iface).as_deref(),
        Some("xdp"),
        "auto mode on veth is native"
    );
    let before = stats(&socket);

    let mut tcp_connections = 0;
    let mut datagrams = 0;
    for (target, name) in topo.targets.iter().zip(&names) {
        for ip in [IpAddr::V4(target.link.v4), IpAddr::V6(target.link.v6)] {
            for i in 0..REQUESTS_PER_TARGET {
                let body = http_get(&topo.client.ns, SocketAddr::new(ip, 80), &format!("/{i}"))
                    .unwrap_or_else(|e| panic!("GET through the lb to {name}: {e}"));
                assert_eq!(body, format!("{name}\n"));
                tcp_connections += 1;
                let answer =
                    udp_request(&topo.client.ns, SocketAddr::new(ip, 5353), b"who are you?")
                        .unwrap_or_else(|e| panic!("UDP through the lb to {name}: {e}"));
                assert_eq!(answer, name.as_bytes());
                datagrams += 1;
            }
        }
    }
    for (server, _) in http.iter().zip(&udp) {
        assert_eq!(server.requests(), 2 * REQUESTS_PER_TARGET);
        // The lb routes, so the targets see the client's own address.
        assert!(server.peers().iter().all(|p| [
            IpAddr::V4(topo.client.link.v4),
            IpAddr::V6(topo.client.link.v6)
        ]
        .contains(&p.ip())));
    }

    // Each answered GET needed at least its SYN, the handshake's ACK and the request to cross
    // lb's client-side interface; each datagram, itself. No listener is configured, so the
    // program passes them all on as `pass_no_listener`.
    let after = stats(&socket);
    let moved = |counter: Counter| after[counter.name()] - before[counter.name()];
    let at_least = 3 * tcp_connections + datagrams;
    assert!(
        moved(Counter::PassNoListener) >= at_least,
        "pass_no_listener moved by {}, expected at least {at_least}; before {before:?}, after {after:?}",
        moved(Counter::PassNoListener)
    );
    for malformed in Counter::ALL
        .iter()
        .filter(|c| c.name().starts_with("malformed_"))
    {
        assert_eq!(moved(*malformed), 0, "{}", malformed.name());
    }

    stop_sluice(
        &mut sluice,
        libc::SIGINT,
        &topo.lb,
        &iface,
        &pin_dir,
        &socket,
    );
    // With sluice gone, traffic still flows.
    let target = &topo.targets[0];
    assert_eq!(
        http_get(
            &topo.client.ns,
            SocketAddr::new(target.link.v4.into(), 80),
            "/"
        )
        .unwrap(),
        "target-0\n"
    );

    let namespaces = topo.namespace_names();
    assert!(namespaces.iter().all(|n| list_namespaces().contains(n)));
    drop((http, udp));
    drop(topo);
    let left: Vec<String> = list_namespaces()
        .into_iter()
        .filter(|n| namespaces.contains(n))
        .collect();
    assert!(
        left.is_empty(),
        "namespaces left after the topology was dropped: {left:?}"
    );
    drop(sluice);
    drop((pin_dir, socket));
}

#[test]
fn generic_mode_attaches_as_xdpgeneric_and_still_passes_traffic() {
    require_root();
    let topo = LbTopology::new(1);
    let target = &topo.targets[0];
    let server = HttpServer::start(
        &target.ns,
        SocketAddr::new(target.link.v6.into(), 8080),
        "generic-target",
    );
    let pin_dir = PinDir::new();
    let socket = ApiSocket::new();
    let iface = topo.lb_client_side.iface.clone();
    let mut sluice = start_sluice(
        &topo.lb,
        &iface,
        &pin_dir,
        &socket,
        &["--xdp-mode", "generic"],
    );
    assert_eq!(topo.lb.xdp_attached(&iface).as_deref(), Some("xdpgeneric"));
    // The log line follows the attach: wait for it rather than race it.
    wait_until(TIMEOUT, "sluice to log the generic attach", || {
        sluice.stderr().contains("in generic mode")
    });

    let before = stats(&socket);
    assert_eq!(
        http_get(&topo.client.ns, server.addr(), "/").unwrap(),
        "generic-target\n"
    );
    let after = stats(&socket);
    let name = Counter::PassNoListener.name();
    assert!(
        after[name] >= before[name] + 3,
        "before {before:?}, after {after:?}"
    );

    stop_sluice(
        &mut sluice,
        libc::SIGINT,
        &topo.lb,
        &iface,
        &pin_dir,
        &socket,
    );
}

#[test]
fn sigterm_also_detaches_cleanly() {
    require_root();
    let lb = Namespace::new("lb");
    let peer = Namespace::new("peer");
    veth(&lb, "eth0", &peer, "eth0");
    let pin_dir = PinDir::new();
    let socket = ApiSocket::new();
    let mut sluice = start_sluice(&lb, "eth0", &pin_dir, &socket, &[]);
    assert!(pin_dir.stats_pin().exists());
    assert!(socket.0.exists());
    stop_sluice(&mut sluice, libc::SIGTERM, &lb, "eth0", &pin_dir, &socket);
}
