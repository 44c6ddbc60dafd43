//! `GET /metrics` of a running `sluice run`, scraped from the load balancer's namespace (the
//! daemon serves on that namespace's loopback): listener traffic matches what was sent, host
//! counts match the targets, and a taken port stops a second daemon before it attaches.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
};

use super::namespaces::{one_line, start_sluice, stop_sluice, ApiSocket, PinDir, TIMEOUT};
use crate::{
    netns::{require_root, sluice_binary, wait_until, ChildGuard, LbTopology},
    servers::{http_get, udp_request, udp_request_timeout, HttpServer, UdpReply, UdpServer},
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 111, 100, 1);
const DNS: u16 = 53;
const DNS_TARGET: u16 = 3053;
/// A TCP listener balanced over the targets' HTTP servers.
const WEB: u16 = 80;
/// A UDP listener whose target group has no targets: everything to it is dropped.
const VOID: u16 = 54;
/// The health check's port: an HTTP server, so a TCP connect passes.
const HEALTH: u16 = 3080;
const QUERY: &[u8; 32] = b"which target answers this query?";
/// Each query is one frame: Ethernet, IPv4, UDP and the query, unpadded.
const QUERY_FRAME: u64 = 14 + 20 + 8 + 32;

struct Running {
    topology: LbTopology,
    dns: Vec<UdpServer>,
    health: Vec<HttpServer>,
    sluice: ChildGuard,
    config: PathBuf,
    pin_dir: PinDir,
    socket: ApiSocket,
    metrics: SocketAddr,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
    }
}

impl Running {
    fn start() -> Running {
        require_root();
        let topology = LbTopology::new(2);
        let dns = topology
            .targets
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let addr = SocketAddr::new(t.link.v4.into(), DNS_TARGET);
                UdpServer::start(&t.ns, addr, &format!("target{i}"), UdpReply::Name)
            })
            .collect();
        let health = topology
            .targets
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let addr = SocketAddr::new(t.link.v4.into(), HEALTH);
                HttpServer::start(&t.ns, addr, &format!("target{i}"))
            })
            .collect();
        let targets = topology
            .targets
            .iter()
            .map(|t| format!("{{ address = \"{}\" }}", t.link.v4))
            .collect::<Vec<_>>()
            .join(", ");
        let config = std::env::temp_dir().join(format!("{}.toml", topology.lb.name()));
        std::fs::write(
            &config,
            format!(
                "[[listener]]\nname = \"dns\"\naddress = \"{VIP}\"\nport = {DNS}\nprotocol = \"udp\"\ndefault_target_group = \"dns\"\nmaglev_table_size = 251\n\n\
                 [[target_group]]\nname = \"dns\"\nport = {DNS_TARGET}\ntargets = [{targets}]\nhealth_check = {{ port = {HEALTH}, interval = \"500ms\", timeout = \"400ms\" }}\n\n\
                 [[listener]]\nname = \"web\"\naddress = \"{VIP}\"\nport = {WEB}\nprotocol = \"tcp\"\ndefault_target_group = \"web\"\nmaglev_table_size = 251\n\n\
                 [[target_group]]\nname = \"web\"\nport = {HEALTH}\ntargets = [{targets}]\nhealth_check = {{ interval = \"500ms\", timeout = \"400ms\" }}\n\n\
                 [[listener]]\nname = \"void\"\naddress = \"{VIP}\"\nport = {VOID}\nprotocol = \"udp\"\ndefault_target_group = \"void\"\nmaglev_table_size = 251\n\n\
                 [[target_group]]\nname = \"void\"\nhealth_check = {{ port = {HEALTH} }}\n"
            ),
        )
        .unwrap();
        let pin_dir = PinDir::new();
        let socket = ApiSocket::new();
        let sluice = start_sluice(
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
                "127.0.0.1:0",
            ],
        );
        // Logged before the last start-up line, which start_sluice waited for.
        let stderr = sluice.stderr();
        let metrics = stderr
            .split("metrics on http://")
            .nth(1)
            .and_then(|rest| rest.split_once("/metrics"))
            .and_then(|(addr, _)| addr.parse().ok())
            .unwrap_or_else(|| panic!("no metrics address logged: {stderr}"));
        Running {
            topology,
            dns,
            health,
            sluice,
            config,
            pin_dir,
            socket,
            metrics,
        }
    }

    fn scrape(&self) -> String {
        http_get(&self.topology.lb, self.metrics, "/metrics")
            .unwrap_or_else(|e| panic!("scraping {}: {e}\n{}", self.metrics, self.sluice.stderr()))
    }
}

/// The value of the one sample whose name and labels are exactly `series`.
fn value(text: &str, series: &str) -> f64 {
    let values: Vec<f64> = text
        .lines()
        .filter_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .collect();
    assert_eq!(values.len(), 1, "{series} in\n{text}");
    values[0]
}

#[test]
fn metrics_count_what_was_sent_and_the_healthy_targets() {
    const QUERIES: usize = 10;
    let mut run = Running::start();

    let before = run.scrape();
    assert!(
        before.contains("# TYPE sluice_listener_packets_total counter\n"),
        "{before}"
    );
    assert_eq!(
        value(&before, "sluice_listener_packets_total{listener=\"dns\"}"),
        0.0
    );
    wait_until(TIMEOUT, "both targets to pass their health check", || {
        value(
            &run.scrape(),
            "sluice_healthy_targets{target_group=\"dns\"}",
        ) == 2.0
    });

    for _ in 0..QUERIES {
        let answer = udp_request(
            &run.topology.client.ns,
            SocketAddr::new(VIP.into(), DNS),
            QUERY,
        )
        .unwrap_or_else(|e| panic!("UDP through sluice: {e}\n{}", run.sluice.stderr()));
        assert!(answer.starts_with(b"target"));
    }
    let text = run.scrape();
    // Every query from a fresh source port: one packet and one new flow each.
    let listener = |name: &str| value(&text, &format!("{name}{{listener=\"dns\"}}"));
    assert_eq!(listener("sluice_listener_packets_total"), QUERIES as f64);
    assert_eq!(listener("sluice_listener_new_flows_total"), QUERIES as f64);
    assert_eq!(
        listener("sluice_listener_bytes_total"),
        (QUERIES as u64 * QUERY_FRAME) as f64
    );
    for (i, server) in run.dns.iter().enumerate() {
        let target = SocketAddr::new(run.topology.targets[i].link.v4.into(), DNS_TARGET);
        let labels = format!("{{target_group=\"dns\",target=\"{target}\"}}");
        assert_eq!(
            value(&text, &format!("sluice_target_new_flows_total{labels}")),
            server.requests() as f64
        );
        let latency = value(
            &text,
            &format!("sluice_health_check_latency_seconds{labels}"),
        );
        assert!(latency > 0.0 && latency < 1.0, "{latency}");
    }
    assert_eq!(
        value(&text, "sluice_healthy_targets{target_group=\"dns\"}"),
        2.0
    );
    assert_eq!(
        value(&text, "sluice_unhealthy_targets{target_group=\"dns\"}"),
        0.0
    );
    assert_eq!(
        value(
            &text,
            "sluice_target_group_failing_open{target_group=\"dns\"}"
        ),
        0.0
    );
    assert!(value(&text, "sluice_packets_total{outcome=\"forward_nat\"}") >= QUERIES as f64);
    assert_eq!(value(&text, "sluice_port_allocation_errors_total"), 0.0);

    // A second daemon on the same metrics port stops before it attaches anything.
    let pin_dir = PinDir::new();
    let socket = ApiSocket::new();
    let output = run
        .topology
        .lb
        .command(sluice_binary())
        .args(["run", "--iface", "eth1", "--pin-dir", pin_dir.arg()])
        .args(["--socket", socket.arg()])
        .args(["--metrics-address", &run.metrics.to_string()])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        one_line(&output.stderr),
        format!(
            "error: cannot serve metrics on {}: the address is in use; choose another --metrics-address, or 'off'",
            run.metrics
        )
    );
    assert!(!socket.0.exists());

    stop_sluice(
        &mut run.sluice,
        libc::SIGINT,
        &run.topology.lb,
        "eth0",
        &run.pin_dir,
        &run.socket,
    );
}

/// TCP: every connection is one new flow of the listener and of the target that served it,
/// and the listener's packets are its targets' packets. Drops: each datagram to a listener
/// without targets is one `drop_no_target`.
#[test]
fn metrics_count_tcp_connections_and_drops() {
    const CONNECTIONS: usize = 8;
    const DATAGRAMS: u64 = 5;
    let run = Running::start();
    wait_until(
        TIMEOUT,
        "both web targets to pass their health check",
        || {
            value(
                &run.scrape(),
                "sluice_healthy_targets{target_group=\"web\"}",
            ) == 2.0
        },
    );
    let before = run.scrape();
    let served_before: Vec<u64> = run.health.iter().map(HttpServer::requests).collect();
    for _ in 0..CONNECTIONS {
        let answer = http_get(
            &run.topology.client.ns,
            SocketAddr::new(VIP.into(), WEB),
            "/",
        )
        .unwrap_or_else(|e| panic!("HTTP through sluice: {e}\n{}", run.sluice.stderr()));
        assert!(answer.starts_with("target"), "{answer}");
    }
    for _ in 0..DATAGRAMS {
        let lost = udp_request_timeout(
            &run.topology.client.ns,
            SocketAddr::new(VIP.into(), VOID),
            QUERY,
            std::time::Duration::from_millis(100),
        );
        assert!(lost.is_err(), "a listener without targets answered");
    }
    let after = run.scrape();
    let delta = |series: &str| value(&after, series) - value(&before, series);

    assert_eq!(
        delta("sluice_listener_new_flows_total{listener=\"web\"}"),
        CONNECTIONS as f64
    );
    let mut target_packets = 0.0;
    for (i, server) in run.health.iter().enumerate() {
        let target = SocketAddr::new(run.topology.targets[i].link.v4.into(), HEALTH);
        let labels = format!("{{target_group=\"web\",target=\"{target}\"}}");
        assert_eq!(
            delta(&format!("sluice_target_new_flows_total{labels}")),
            (server.requests() - served_before[i]) as f64,
            "target {target}"
        );
        target_packets += delta(&format!("sluice_target_packets_total{labels}"));
    }
    let packets = delta("sluice_listener_packets_total{listener=\"web\"}");
    assert_eq!(
        packets, target_packets,
        "the listener's packets are its targets'"
    );
    // At least SYN, the request and FIN from the client per connection.
    assert!(packets >= 3.0 * CONNECTIONS as f64, "{packets}");
    let bytes = delta("sluice_listener_bytes_total{listener=\"web\"}");
    assert!(
        bytes >= packets * 54.0,
        "every frame has Ethernet, IP and TCP headers: {bytes}"
    );

    assert_eq!(
        delta("sluice_packets_total{outcome=\"drop_no_target\"}"),
        DATAGRAMS as f64
    );
}
