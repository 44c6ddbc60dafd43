//! `GET /metrics` of a running `sluice run`, scraped from the load balancer's namespace (the
//! daemon serves on that namespace's loopback): listener traffic matches what was sent, host
//! counts match the targets, and a taken port stops a second daemon before it attaches. Real
//! Prometheus scrapes it and `promtool` checks the text and the shipped rules; headless
//! Chromium loads the status page on the same listener.

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
/// The http listener's address, held by lb (the L7 proxy terminates connections there).
const HTTP_VIP: Ipv4Addr = Ipv4Addr::new(10, 111, 100, 2);
const SITE: u16 = 8080;
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
                 [[listener]]\nname = \"site\"\naddress = \"{HTTP_VIP}\"\nport = {SITE}\nprotocol = \"http\"\ndefault_target_group = \"web\"\n\n\
                 [[listener]]\nname = \"void\"\naddress = \"{VIP}\"\nport = {VOID}\nprotocol = \"udp\"\ndefault_target_group = \"void\"\nmaglev_table_size = 251\n\n\
                 [[target_group]]\nname = \"void\"\nhealth_check = {{ port = {HEALTH} }}\n"
            ),
        )
        .unwrap();
        topology
            .lb
            .add_addr(&topology.lb_client_side.iface, &format!("{HTTP_VIP}/32"));
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

/// A scratch directory, removed on drop (also when the test fails).
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("sluice-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The workspace's `deploy/` folder: the shipped dashboard and alert rules.
fn deploy_dir() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// `promtool ARGS`, with `stdin`; panics unless it succeeds, returns its stdout.
fn promtool(args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write as _;
    let mut child = std::process::Command::new("promtool")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("promtool (Debian's prometheus package; cargo xtask setup installs it): {e}")
        });
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    let output = child.wait_with_output().unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(
        output.status.success(),
        "promtool {args:?} failed ({}):\n{out}{err}",
        output.status
    );
    out.into_owned()
}

/// Real Prometheus (Debian's) scrapes the daemon on the lb namespace's loopback with the
/// shipped alert rules loaded, and answers a query for sluice series with what was sent,
/// L7 per-target requests included; `promtool check metrics` passes on a scrape and `check
/// rules` on the rules; `sluice status` shows the L7 targets' requests.
#[test]
fn prometheus_scrapes_and_promtool_passes() {
    const QUERIES: usize = 6;
    const REQUESTS: usize = 8;
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
    for _ in 0..QUERIES {
        udp_request(
            &run.topology.client.ns,
            SocketAddr::new(VIP.into(), DNS),
            QUERY,
        )
        .unwrap_or_else(|e| panic!("UDP through sluice: {e}\n{}", run.sluice.stderr()));
    }
    for _ in 0..REQUESTS {
        let answer = http_get(
            &run.topology.client.ns,
            SocketAddr::new(HTTP_VIP.into(), SITE),
            "/",
        )
        .unwrap_or_else(|e| panic!("HTTP through the proxy: {e}\n{}", run.sluice.stderr()));
        assert!(answer.starts_with("target"), "{answer}");
    }

    // The exposition passes promtool's lint (names, suffixes, HELP and TYPE).
    let text = run.scrape();
    let lint = promtool(&["check", "metrics"], Some(&text));
    assert!(lint.trim().is_empty(), "promtool check metrics: {lint}");
    let rules = deploy_dir().join("prometheus/sluice-rules.yml");
    promtool(&["check", "rules", rules.to_str().unwrap()], None);
    // Every series the shipped dashboard and rules name is one sluice serves (the connection
    // state's once the first sweep completed).
    let dashboard = deploy_dir().join("grafana/sluice-dashboard.json");
    let shipped =
        std::fs::read_to_string(&dashboard).unwrap() + &std::fs::read_to_string(&rules).unwrap();
    let _: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&dashboard).unwrap())
        .expect("the dashboard is JSON");
    let mut names: Vec<&str> = shipped
        .match_indices("sluice_")
        .map(|(at, _)| {
            let rest = &shipped[at..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    assert!(names.len() > 10, "{names:?}");
    wait_until(TIMEOUT, "every series the dashboard and rules use", || {
        let text = run.scrape();
        names
            .iter()
            .all(|name| text.contains(&format!("\n# TYPE {} ", name.trim_end_matches("_bucket"))))
    });

    // Per-target L7 numbers: every request went to one of the group's targets.
    let per_target: f64 = run
        .topology
        .targets
        .iter()
        .map(|t| {
            let target = SocketAddr::new(t.link.v4.into(), HEALTH);
            value(
                &text,
                &format!(
                    "sluice_http_target_requests_total{{target_group=\"web\",target=\"{target}\"}}"
                ),
            )
        })
        .sum();
    assert_eq!(per_target, REQUESTS as f64, "{text}");
    let status = sluice_status(&run, true);
    let requests: u64 = status["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["group"] == "web")
        .map(|t| {
            t["requests"]
                .as_u64()
                .expect("web targets take L7 requests")
        })
        .sum();
    assert_eq!(requests, REQUESTS as u64, "{status}");
    assert!(
        status["targets"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["group"] == "dns")
            .all(|t| t["requests"].is_null()),
        "{status}"
    );

    // Prometheus itself, in lb's namespace, where the daemon's loopback is.
    let scratch = Scratch::new("prometheus");
    let config = scratch.0.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: sluice\n    static_configs:\n      - targets: [\"{}\"]\n",
            rules.display(),
            run.metrics
        ),
    )
    .unwrap();
    const PROMETHEUS: &str = "127.0.0.1:9090";
    let mut cmd = run.topology.lb.command("prometheus");
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            scratch.0.join("data").display()
        ))
        .arg(format!("--web.listen-address={PROMETHEUS}"));
    let prometheus = run.topology.lb.spawn(cmd);
    let query =
        "/api/v1/query?query=sum%28sluice_listener_packets_total%7Blistener%3D%22dns%22%7D%29";
    let mut answer = String::new();
    wait_until(TIMEOUT, "Prometheus to have scraped sluice", || {
        if let Some(status) = prometheus.try_status() {
            panic!("prometheus exited ({status}): {}", prometheus.stderr());
        }
        answer = http_get(&run.topology.lb, PROMETHEUS.parse().unwrap(), query).unwrap_or_default();
        answer.contains(&format!("\"{QUERIES}\"]"))
    });
    assert!(answer.contains("\"status\":\"success\""), "{answer}");
    let up = http_get(
        &run.topology.lb,
        PROMETHEUS.parse().unwrap(),
        "/api/v1/query?query=sum%28sluice_http_target_requests_total%29",
    )
    .unwrap();
    assert!(up.contains(&format!("\"{REQUESTS}\"]")), "{up}");
    // The shipped rules loaded and evaluate (none fires: everything is healthy).
    let rules_api = http_get(
        &run.topology.lb,
        PROMETHEUS.parse().unwrap(),
        "/api/v1/rules",
    )
    .unwrap();
    assert!(
        rules_api.contains("SluiceTargetGroupFailingOpen"),
        "{rules_api}"
    );
}

/// `sluice status` of the running daemon (`--json`: parsed).
fn sluice_status(run: &Running, json: bool) -> serde_json::Value {
    let mut cmd = run.topology.lb.command(sluice_binary());
    cmd.args(["status", "--socket", run.socket.arg()]);
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    if json {
        serde_json::from_str(&text).unwrap()
    } else {
        serde_json::Value::String(text)
    }
}

/// How long one headless Chromium run may take.
/// Headless Chromium (Debian's) loads the status page from the daemon, runs its script, and
/// shows listeners, targets with health and the reason of the one that failed, its health
/// transition, the drops with their meaning and a set-up warning; the screenshot goes to
/// `target/status-page.png` (docs/status-page.png is a copy).
#[test]
fn the_status_page_shows_the_daemon_live_in_chromium() {
    const DATAGRAMS: usize = 3;
    let mut run = Running::start();
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
    for _ in 0..4 {
        http_get(
            &run.topology.client.ns,
            SocketAddr::new(HTTP_VIP.into(), SITE),
            "/",
        )
        .unwrap_or_else(|e| panic!("HTTP through the proxy: {e}"));
        udp_request(
            &run.topology.client.ns,
            SocketAddr::new(VIP.into(), DNS),
            QUERY,
        )
        .unwrap_or_else(|e| panic!("UDP through sluice: {e}"));
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
    // Target 1's health server stops: it goes unhealthy, a transition with ELB's reason.
    drop(run.health.remove(1));
    wait_until(TIMEOUT, "target 1 to fail its health checks", || {
        value(
            &run.scrape(),
            "sluice_unhealthy_targets{target_group=\"web\"}",
        ) == 1.0
    });

    let url = format!("http://{}/", run.metrics);
    let browser = crate::browser::Browser::new(&run.topology.lb);
    let dom = browser.dump_dom(&url);
    let target1 = format!("{}:{HEALTH}", run.topology.targets[1].link.v4);
    for expected in [
        "sluice status",
        "updated",
        ">dns<",
        ">site<",
        ">void<",
        &format!(">{target1}<"),
        ">unhealthy<",
        "Target.FailedHealthChecks",
        ">drop_no_target<",
        &format!(">{DATAGRAMS}<"),
        "the listener has no target to send new flows to",
        "not announcing: sluice run was started without --bird-routes",
    ] {
        assert!(dom.contains(expected), "{expected} not on the page:\n{dom}");
    }
    // The script's fetch succeeded: its error line is empty.
    assert!(dom.contains("<span id=\"error\"></span>"), "{dom}");
    // The transition table lists the target going from healthy to unhealthy.
    let transitions = &dom[dom.find("Recent health transitions").unwrap()..];
    assert!(
        transitions.contains(&format!(">{target1}<"))
            && transitions.contains(">healthy<")
            && transitions.contains(">unhealthy<"),
        "{transitions}"
    );

    let png = browser.screenshot(&url, 1280, 1100);
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    let keep = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/status-page.png");
    std::fs::write(&keep, &png).unwrap();
}
