//! The control API of a running `sluice run`: per-listener and per-target traffic that matches
//! what was sent, target states across a reload, `sluice stats` tables, and plain `curl` over
//! the Unix socket.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    process::Command,
};

use serde_json::Value;

use super::namespaces::{sluice_output, start_sluice, stats_json, stop_sluice, ApiSocket, PinDir};
use crate::{
    netns::{require_root, wait_until, ChildGuard, LbTopology},
    servers::{http_get, udp_request, HttpServer, UdpReply, UdpServer},
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 111, 100, 1);
const DNS: u16 = 53;
const WEB: u16 = 80;
/// `nat` translates ports: the targets listen here.
const DNS_TARGET: u16 = 3053;
const WEB_TARGET: u16 = 3080;
/// Long enough that no frame is padded: each request is exactly 14 + 20 + 8 + 32 bytes.
const QUERY: &[u8; 32] = b"which target answers this query?";
const QUERY_FRAME: u64 = 14 + 20 + 8 + 32;

/// Listener `web` (or `web_name`) on TCP, `dns` on UDP; `dns` has `dns_targets` of the two.
fn config_text(topology: &LbTopology, web_name: &str, dns_targets: &[usize]) -> String {
    let targets = |members: &[usize]| {
        members
            .iter()
            .map(|&i| format!("{{ address = \"{}\" }}", topology.targets[i].link.v4))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "[[listener]]\nname = \"{web_name}\"\naddress = \"{VIP}\"\nport = {WEB}\nprotocol = \"tcp\"\ndefault_target_group = \"web\"\nmaglev_table_size = 251\n\n\
         [[listener]]\nname = \"dns\"\naddress = \"{VIP}\"\nport = {DNS}\nprotocol = \"udp\"\ndefault_target_group = \"dns\"\nmaglev_table_size = 251\n\n\
         [[target_group]]\nname = \"web\"\nport = {WEB_TARGET}\nderegistration_delay = 1\ntargets = [{}]\n\n\
         [[target_group]]\nname = \"dns\"\nport = {DNS_TARGET}\nderegistration_delay = 600\ntargets = [{}]\nhealth_check = {{ port = {WEB_TARGET} }}\n",
        targets(&[0, 1]),
        targets(dns_targets),
    )
}

fn listener<'a>(stats: &'a Value, name: &str) -> &'a Value {
    stats["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == name)
        .unwrap_or_else(|| panic!("no listener {name} in {stats}"))
}

fn target<'a>(stats: &'a Value, group: &str, address: SocketAddr) -> &'a Value {
    stats["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["group"] == group && t["address"] == address.to_string())
        .unwrap_or_else(|| panic!("no target {address} in {group}: {stats}"))
}

fn number(value: &Value, field: &str) -> u64 {
    value[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} of {value}"))
}

/// `curl --unix-socket SOCKET -X METHOD http://sluice/PATH`: status code and body.
fn curl(socket: &ApiSocket, method: &str, path: &str) -> (u16, String) {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--unix-socket", socket.arg()])
        .args(["-X", method, "-w", "\n%{http_code}"])
        .arg(format!("http://sluice{path}"))
        .output()
        .expect("running curl (cargo xtask setup installs it)");
    assert!(
        output.status.success(),
        "curl {method} {path}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_string())
}

struct Running {
    topology: LbTopology,
    dns: Vec<UdpServer>,
    web: Vec<HttpServer>,
    sluice: ChildGuard,
    config: PathBuf,
    pin_dir: PinDir,
    socket: ApiSocket,
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
        let any = IpAddr::from(Ipv6Addr::UNSPECIFIED);
        let dns = topology
            .targets
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let addr = SocketAddr::new(t.link.v4.into(), DNS_TARGET);
                UdpServer::start(&t.ns, addr, &format!("target{i}"), UdpReply::Name)
            })
            .collect();
        let web = topology
            .targets
            .iter()
            .enumerate()
            .map(|(i, t)| {
                HttpServer::start(
                    &t.ns,
                    SocketAddr::new(any, WEB_TARGET),
                    &format!("target{i}"),
                )
            })
            .collect();
        let config = std::env::temp_dir().join(format!("{}.toml", topology.lb.name()));
        std::fs::write(&config, config_text(&topology, "web", &[0, 1])).unwrap();
        let pin_dir = PinDir::new();
        let socket = ApiSocket::new();
        let config_arg = config.to_str().unwrap();
        let sluice = start_sluice(
            &topology.lb,
            "eth0",
            &pin_dir,
            &socket,
            &["--iface", "eth1", "--config", config_arg],
        );
        Running {
            topology,
            dns,
            web,
            sluice,
            config,
            pin_dir,
            socket,
        }
    }

    fn target_addr(&self, i: usize, port: u16) -> SocketAddr {
        SocketAddr::new(self.topology.targets[i].link.v4.into(), port)
    }

    fn query(&self, n: usize) {
        for _ in 0..n {
            let answer = udp_request(
                &self.topology.client.ns,
                SocketAddr::new(VIP.into(), DNS),
                QUERY,
            )
            .unwrap_or_else(|e| panic!("UDP through sluice: {e}\n{}", self.sluice.stderr()));
            assert!(answer.starts_with(b"target"));
        }
    }

    fn get(&self, n: usize) {
        for _ in 0..n {
            http_get(
                &self.topology.client.ns,
                SocketAddr::new(VIP.into(), WEB),
                "/",
            )
            .unwrap_or_else(|e| panic!("GET through sluice: {e}\n{}", self.sluice.stderr()));
        }
    }

    fn reload(&mut self, web_name: &str, dns_targets: &[usize]) {
        let reloads = self.sluice.stderr().matches("reloaded").count();
        let text = config_text(&self.topology, web_name, dns_targets);
        std::fs::write(&self.config, text).unwrap();
        self.sluice.signal(libc::SIGHUP);
        wait_until(super::namespaces::TIMEOUT, "sluice to reload", || {
            self.sluice.stderr().matches("reloaded").count() > reloads
        });
    }
}

#[test]
fn stats_count_each_listener_and_target_and_follow_reloads() {
    const QUERIES: usize = 12;
    const GETS: usize = 6;
    let mut run = Running::start();

    let before = stats_json(&run.socket);
    let dns = listener(&before, "dns");
    assert_eq!(
        (
            &dns["address"],
            &dns["port"],
            &dns["protocol"],
            &dns["mode"]
        ),
        (
            &Value::from(VIP.to_string()),
            &Value::from(DNS),
            &Value::from("udp"),
            &Value::from("nat")
        ),
        "{dns}"
    );
    assert_eq!(number(dns, "packets"), 0);
    assert_eq!(run.sluice.try_status(), None);

    run.query(QUERIES);
    run.get(GETS);
    let stats = stats_json(&run.socket);

    // Listener `dns`: every query once, each from a fresh source port, so a new flow.
    let dns = listener(&stats, "dns");
    assert_eq!(number(dns, "packets"), QUERIES as u64, "{dns}");
    assert_eq!(number(dns, "new_flows"), QUERIES as u64, "{dns}");
    assert_eq!(number(dns, "bytes"), QUERIES as u64 * QUERY_FRAME, "{dns}");
    // Its targets: exactly the queries each answered.
    for (i, server) in run.dns.iter().enumerate() {
        let t = target(&stats, "dns", run.target_addr(i, DNS_TARGET));
        assert_eq!(t["state"], "active");
        assert_eq!(number(t, "packets"), server.requests(), "{t}");
        assert_eq!(number(t, "new_flows"), server.requests(), "{t}");
        assert_eq!(number(t, "bytes"), server.requests() * QUERY_FRAME, "{t}");
    }
    // Listener `web`: one flow per connection, at least SYN, ACK and request for each.
    let web = listener(&stats, "web");
    assert_eq!(number(web, "new_flows"), GETS as u64, "{web}");
    assert!(number(web, "packets") >= 3 * GETS as u64, "{web}");
    let mut web_packets = 0;
    for (i, server) in run.web.iter().enumerate() {
        let t = target(&stats, "web", run.target_addr(i, WEB_TARGET));
        assert_eq!(number(t, "new_flows"), server.requests(), "{t}");
        web_packets += number(t, "packets");
    }
    assert_eq!(web_packets, number(web, "packets"));
    assert!(number(&stats["counters"]["forward_nat"], "packets") >= (QUERIES + 3 * GETS) as u64);

    // The table view shows the same numbers.
    let output = sluice_output(&["stats", "--socket", run.socket.arg()]);
    assert!(output.status.success());
    let table = String::from_utf8(output.stdout).unwrap();
    let row = |first: &str, second: &str| -> Vec<String> {
        table
            .lines()
            .map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>())
            .find(|w| w.len() > 2 && w[0] == first && w[1] == second)
            .unwrap_or_else(|| panic!("no row {first} {second} in\n{table}"))
    };
    assert_eq!(
        row("dns", &format!("{VIP}:{DNS}"))[2..],
        [
            "udp".to_string(),
            "nat".into(),
            QUERIES.to_string(),
            (QUERIES as u64 * QUERY_FRAME).to_string(),
            QUERIES.to_string()
        ]
    );
    let target0 = run.target_addr(0, DNS_TARGET).to_string();
    let dns0 = row("dns", &target0);
    assert_eq!(dns0[2], "active");
    // Health checks run on their own schedule: the first may or may not have answered yet.
    assert!(
        ["initial", "healthy"].contains(&dns0[3].as_str()),
        "{dns0:?}"
    );
    assert_eq!(dns0[4], run.dns[0].requests().to_string());

    // Reload: `web` renamed (the new listener counts from zero, though it inherits the id),
    // target 1 leaves `dns` and drains, keeping its numbers and receiving no new flows.
    let web_id = number(web, "id");
    let target1 = target(&stats, "dns", run.target_addr(1, DNS_TARGET)).clone();
    let target0_before = run.dns[0].requests();
    run.reload("www", &[0]);
    run.query(QUERIES);
    let after = stats_json(&run.socket);
    assert!(
        after["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["name"] != "web"),
        "{after}"
    );
    let www = listener(&after, "www");
    assert_eq!(number(www, "id"), web_id);
    assert_eq!(
        (number(www, "packets"), number(www, "new_flows")),
        (0, 0),
        "{www}"
    );
    let dns = listener(&after, "dns");
    assert_eq!(number(dns, "packets"), 2 * QUERIES as u64, "{dns}");
    let drained = target(&after, "dns", run.target_addr(1, DNS_TARGET));
    assert_eq!(drained["state"], "draining");
    // ELB shows a deregistered target as draining, whatever its last health check said.
    assert_eq!(drained["health"], "draining");
    assert_eq!(drained["packets"], target1["packets"]);
    let t0 = target(&after, "dns", run.target_addr(0, DNS_TARGET));
    assert_eq!(run.dns[0].requests(), target0_before + QUERIES as u64);
    assert_eq!(number(t0, "packets"), run.dns[0].requests());

    stop_sluice(
        &mut run.sluice,
        libc::SIGINT,
        &run.topology.lb,
        "eth0",
        &run.pin_dir,
        &run.socket,
    );
}

#[test]
fn curl_reads_the_api_over_the_socket() {
    let run = Running::start();
    run.query(3);

    let (status, body) = curl(&run.socket, "GET", "/v1/stats");
    assert_eq!(status, 200, "{body}");
    let stats: Value = serde_json::from_str(&body).expect("the API answers JSON");
    assert_eq!(number(listener(&stats, "dns"), "packets"), 3);
    assert_eq!(stats["targets"].as_array().unwrap().len(), 4, "{stats}");
    assert!(stats["counters"]["pass_no_listener"]["bytes"].is_u64());

    let (status, body) = curl(&run.socket, "GET", "/v1/nothing");
    assert_eq!(status, 404, "{body}");
    let error: Value = serde_json::from_str(&body).unwrap();
    assert!(
        error["error"].as_str().unwrap().contains("/v1/nothing"),
        "{body}"
    );

    let (status, body) = curl(&run.socket, "DELETE", "/v1/stats");
    assert_eq!(status, 405, "{body}");
    assert!(body.contains("takes GET"), "{body}");

    // `sluice stats --json` prints exactly what the API says (the numbers move with traffic,
    // so compare after the same traffic: none since the curl above).
    let output = sluice_output(&["stats", "--json", "--socket", run.socket.arg()]);
    let json: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        json["listeners"], stats["listeners"],
        "sluice stats --json and curl disagree"
    );
}
