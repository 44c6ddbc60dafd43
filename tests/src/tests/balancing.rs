//! End to end, per forwarding mode: `sluice run --config` in the lb namespace of an
//! [`LbTopology`], real servers on the targets, real clients. Connections spread over the
//! targets, a long-lived connection survives adding and removing targets (SIGHUP reload),
//! UDP and IPv6 listeners work.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
};

use super::namespaces::{PinDir, TIMEOUT};
use crate::{
    netns::{require_root, sluice_binary, unique_socket_path, wait_until, ChildGuard, LbTopology},
    servers::{
        http_get, http_get_timeout, udp_request, EchoClient, EchoServer, HttpServer, UdpReply,
        UdpServer,
    },
};

const VIP_V4: Ipv4Addr = Ipv4Addr::new(10, 111, 100, 1);
const VIP_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x5c, 0, 0x100, 0, 0, 0, 1);
const HTTP: u16 = 80;
const ECHO: u16 = 7000;
const DNS: u16 = 53;

/// The running system: topology, servers on every target, sluice.
struct Balanced {
    mode: &'static str,
    topology: LbTopology,
    servers: Vec<(HttpServer, Option<EchoServer>, UdpServer)>,
    /// `tunnel` mode: `sluice decap` on every target.
    _decaps: Vec<ChildGuard>,
    sluice: ChildGuard,
    config: PathBuf,
    pin_dir: PinDir,
    socket: PathBuf,
    /// Targets in the model now.
    members: Vec<usize>,
    health_port: u16,
    deregistration_delay: u64,
}

impl Drop for Balanced {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
    }
}

/// The port a target's servers use in `mode`: `nat` translates ports, the others cannot.
fn target_port(mode: &str, listener_port: u16) -> u16 {
    if mode == "nat" {
        listener_port + 3000
    } else {
        listener_port
    }
}

/// The model for targets `members` (indexes into the topology's targets).
fn config_text(mode: &str, topology: &LbTopology, members: &[usize]) -> String {
    config_checked_on(mode, topology, members, HTTP, 1)
}

/// [`config_text`] with health checks on the targets' `health_port` service.
fn config_checked_on(
    mode: &str,
    topology: &LbTopology,
    members: &[usize],
    health_port: u16,
    deregistration_delay: u64,
) -> String {
    let group = |name: &str, port: u16, v6: bool| {
        let targets: Vec<String> = members
            .iter()
            .map(|&i| {
                let link = &topology.targets[i].link;
                let address = if v6 {
                    IpAddr::from(link.v6)
                } else {
                    IpAddr::from(link.v4)
                };
                format!("{{ address = \"{address}\" }}")
            })
            .collect();
        // Every group is checked on the targets' HTTP server (UDP groups need a TCP port),
        // often, so tests see health changes quickly.
        format!(
            "[[target_group]]\nname = \"{name}\"\nport = {}\nderegistration_delay = {deregistration_delay}\ntargets = [{}]\nhealth_check = {{ port = {}, interval = \"200ms\", timeout = \"150ms\", healthy_threshold = 2, unhealthy_threshold = 2 }}\n\n",
            target_port(mode, port),
            targets.join(", "),
            target_port(mode, health_port),
        )
    };
    let listener = |name: &str, address: IpAddr, port: u16, protocol: &str, group: &str| {
        format!(
            "[[listener]]\nname = \"{name}\"\naddress = \"{address}\"\nport = {port}\nprotocol = \"{protocol}\"\nmode = \"{mode}\"\ndefault_target_group = \"{group}\"\nmaglev_table_size = 251\n\n"
        )
    };
    [
        group("web", HTTP, false),
        group("web6", HTTP, true),
        group("echo", ECHO, false),
        group("dns", DNS, false),
        listener("web", VIP_V4.into(), HTTP, "tcp", "web"),
        listener("web6", VIP_V6.into(), HTTP, "tcp", "web6"),
        listener("echo", VIP_V4.into(), ECHO, "tcp", "echo"),
        listener("dns", VIP_V4.into(), DNS, "udp", "dns"),
    ]
    .concat()
}

/// `sluice run` in the lb namespace on both interfaces, once it has applied `config`.
fn spawn_sluice(
    topology: &LbTopology,
    config: &std::path::Path,
    pin_dir: &PinDir,
    socket: &std::path::Path,
) -> ChildGuard {
    let mut cmd = topology.lb.command(sluice_binary());
    cmd.args([
        "run",
        "--iface",
        "eth0",
        "--iface",
        "eth1",
        "--pin-dir",
        pin_dir.arg(),
    ])
    .arg("--config")
    .arg(config)
    .arg("--socket")
    .arg(socket)
    .args(["--flows", "65536", "--metrics-address", "off"])
    .env("RUST_LOG", "info")
    // Nothing sluice needs is a program on PATH: the targets' next hops are managed over
    // rtnetlink (checked in `balances_and_survives_changes`), not with iproute2's `ip`.
    .env("PATH", "/nonexistent");
    let sluice = topology.lb.spawn(cmd);
    wait_until(
        TIMEOUT,
        "sluice to attach and apply its configuration",
        || {
            if let Some(status) = sluice.try_status() {
                panic!("sluice exited ({status}): {}", sluice.stderr());
            }
            sluice.stderr().contains("listener(s) from")
        },
    );
    sluice
}

impl Balanced {
    /// Four targets with servers; the model uses the first `members` of them.
    fn start(mode: &'static str, members: &[usize]) -> Balanced {
        Balanced::start_with(mode, members, HTTP, 1)
    }

    /// [`Balanced::start`] with health checks on the targets' `health_port` service.
    fn start_with(
        mode: &'static str,
        members: &[usize],
        health_port: u16,
        deregistration_delay: u64,
    ) -> Balanced {
        require_root();
        let topology = LbTopology::new(4);
        let servers = topology
            .targets
            .iter()
            .enumerate()
            .map(|(i, target)| {
                if mode != "nat" {
                    target.hold_vips(&[VIP_V4.into(), VIP_V6.into()]);
                }
                let name = format!("target{i}");
                let any = IpAddr::from(Ipv6Addr::UNSPECIFIED);
                // UDP replies must leave from the address the request went to: bind the VIP
                // where targets hold it, the target's own address in `nat` mode.
                let udp_addr = if mode == "nat" {
                    IpAddr::from(target.link.v4)
                } else {
                    VIP_V4.into()
                };
                (
                    HttpServer::start(
                        &target.ns,
                        SocketAddr::new(any, target_port(mode, HTTP)),
                        &name,
                    ),
                    Some(EchoServer::start(
                        &target.ns,
                        SocketAddr::new(any, target_port(mode, ECHO)),
                        &name,
                    )),
                    UdpServer::start(
                        &target.ns,
                        SocketAddr::new(udp_addr, target_port(mode, DNS)),
                        &name,
                        UdpReply::Name,
                    ),
                )
            })
            .collect();
        let decaps = if mode == "tunnel" {
            topology
                .targets
                .iter()
                .map(|target| {
                    let mut cmd = target.ns.command(sluice_binary());
                    cmd.args(["decap", "--iface", &target.link.iface])
                        .env("RUST_LOG", "info");
                    let decap = target.ns.spawn(cmd);
                    wait_until(TIMEOUT, "sluice decap to attach on a target", || {
                        if let Some(status) = decap.try_status() {
                            panic!("sluice decap exited ({status}): {}", decap.stderr());
                        }
                        target.ns.xdp_attached(&target.link.iface).is_some()
                    });
                    decap
                })
                .collect()
        } else {
            Vec::new()
        };
        let config = std::env::temp_dir().join(format!("{}.toml", topology.lb.name()));
        std::fs::write(
            &config,
            config_checked_on(mode, &topology, members, health_port, deregistration_delay),
        )
        .unwrap();
        let pin_dir = PinDir::new();
        let socket = unique_socket_path();
        let sluice = spawn_sluice(&topology, &config, &pin_dir, &socket);
        let lb = Balanced {
            mode,
            topology,
            servers,
            _decaps: decaps,
            sluice,
            config,
            pin_dir,
            socket,
            members: members.to_vec(),
            health_port,
            deregistration_delay,
        };
        // Four groups (web, web6, echo, dns) per target.
        lb.wait_healthy(4 * members.len());
        lb
    }

    /// Waits until the daemon has reported `n` targets healthy in all (health events are
    /// logged as `initial -> healthy`), so tables hold every target before traffic is counted.
    fn wait_healthy(&self, n: usize) {
        wait_until(TIMEOUT, &format!("{n} healthy targets"), || {
            self.sluice.stderr().matches("-> healthy").count() >= n
        });
    }

    /// Rewrites the model for `members` and reloads it with SIGHUP.
    fn reconfigure(&mut self, members: &[usize]) {
        let reloads = self.sluice.stderr().matches("reloaded").count();
        std::fs::write(
            &self.config,
            config_checked_on(
                self.mode,
                &self.topology,
                members,
                self.health_port,
                self.deregistration_delay,
            ),
        )
        .unwrap();
        let healthy = self.sluice.stderr().matches("-> healthy").count();
        let added = members.iter().filter(|i| !self.members.contains(i)).count();
        self.sluice.signal(libc::SIGHUP);
        wait_until(TIMEOUT, "sluice to reload", || {
            self.sluice.stderr().matches("reloaded").count() > reloads
        });
        self.wait_healthy(healthy + 4 * added);
        self.members = members.to_vec();
    }

    fn get(&self, vip: IpAddr) -> String {
        let addr = SocketAddr::new(vip, HTTP);
        http_get(&self.topology.client.ns, addr, "/")
            .unwrap_or_else(|e| {
                panic!(
                    "GET http://{addr}/ through sluice ({}): {e}\n{}",
                    self.mode,
                    self.sluice.stderr()
                )
            })
            .trim()
            .to_string()
    }

    /// `n` new connections; how many each target answered.
    fn spread(&self, vip: IpAddr, n: usize) -> BTreeMap<String, usize> {
        let mut seen = BTreeMap::new();
        for _ in 0..n {
            *seen.entry(self.get(vip)).or_insert(0) += 1;
        }
        seen
    }
}

fn assert_balanced(seen: &BTreeMap<String, usize>, names: &[&str], n: usize) {
    assert_eq!(
        seen.keys().map(String::as_str).collect::<Vec<_>>(),
        names,
        "{seen:?}"
    );
    for (name, count) in seen {
        let share = *count as f64 / n as f64;
        assert!(
            (0.20..=0.47).contains(&share),
            "{name} got {count} of {n}: {seen:?}"
        );
    }
}

fn balances_and_survives_changes(mode: &'static str) {
    let mut lb = Balanced::start(mode, &[0, 1, 2]);

    // sluice keeps every target's next hop resolved: kernel-managed neighbour entries, made
    // over rtnetlink (the daemon runs without `ip` on its PATH).
    let neighbours = lb
        .topology
        .lb
        .command("ip")
        .args(["-j", "neigh", "show"])
        .output()
        .unwrap();
    let neighbours: serde_json::Value = serde_json::from_slice(&neighbours.stdout).unwrap();
    for target in &lb.topology.targets[..3] {
        let address = target.link.v4.to_string();
        assert!(
            neighbours
                .as_array()
                .unwrap()
                .iter()
                .any(|n| n["dst"] == address.as_str() && n.get("managed").is_some()),
            "no managed neighbour entry for {address}: {neighbours}"
        );
    }

    // 300 connections reach all three targets, each with 20-47%.
    let seen = lb.spread(VIP_V4.into(), 300);
    assert_balanced(&seen, &["target0", "target1", "target2"], 300);

    // IPv6 listener.
    assert!(lb.get(VIP_V6.into()).starts_with("target"));

    // UDP request/response.
    let answer = udp_request(
        &lb.topology.client.ns,
        SocketAddr::new(VIP_V4.into(), DNS),
        b"query",
    )
    .unwrap_or_else(|e| panic!("UDP through sluice ({mode}): {e}"));
    assert!(String::from_utf8_lossy(&answer).starts_with("target"));

    // A long-lived connection keeps working while a fourth target is added and another
    // (not its own) removed.
    let mut echo =
        EchoClient::connect(&lb.topology.client.ns, SocketAddr::new(VIP_V4.into(), ECHO))
            .unwrap_or_else(|e| panic!("connecting to the echo listener ({mode}): {e}"));
    assert_eq!(echo.echo(b"before").unwrap(), b"before");
    let serving = lb
        .servers
        .iter()
        .position(|(_, echo_server, _)| !echo_server.as_ref().unwrap().peers().is_empty())
        .expect("one target serves the echo connection");
    let removed = (0..3).find(|&i| i != serving).unwrap();
    let members: Vec<usize> = (0..4).filter(|&i| i != removed).collect();
    lb.reconfigure(&members);
    for round in 0..20 {
        let payload = format!("during {round}");
        assert_eq!(echo.echo(payload.as_bytes()).unwrap(), payload.as_bytes());
    }
    let names: Vec<String> = members.iter().map(|i| format!("target{i}")).collect();
    let seen = lb.spread(VIP_V4.into(), 300);
    assert_balanced(
        &seen,
        &names.iter().map(String::as_str).collect::<Vec<_>>(),
        300,
    );
    assert_eq!(echo.echo(b"after").unwrap(), b"after");
}

#[test]
fn dsr_balances_and_survives_changes() {
    balances_and_survives_changes("dsr");
}

#[test]
fn nat_balances_and_survives_changes() {
    balances_and_survives_changes("nat");
}

#[test]
fn tunnel_balances_and_survives_changes() {
    balances_and_survives_changes("tunnel");
}

#[test]
fn a_broken_configuration_on_reload_changes_nothing() {
    let lb = Balanced::start("nat", &[0, 1]);
    let before = lb.spread(VIP_V4.into(), 40);
    std::fs::write(
        &lb.config,
        "[[listener]]\nname = \"web\"\nport = \"eighty\"\n",
    )
    .unwrap();
    lb.sluice.signal(libc::SIGHUP);
    wait_until(TIMEOUT, "sluice to refuse the broken configuration", || {
        lb.sluice
            .stderr()
            .contains("refused, running configuration kept")
    });
    let refusal = lb.sluice.stderr();
    assert!(
        refusal.contains("line 3"),
        "the error names the line: {refusal}"
    );
    let after = lb.spread(VIP_V4.into(), 40);
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "same targets before and after the refused reload"
    );
    assert!(lb.sluice.try_status().is_none(), "sluice keeps running");
}

#[test]
fn a_broken_configuration_at_start_is_one_line_and_attaches_nothing() {
    require_root();
    let topology = LbTopology::new(1);
    let config = std::env::temp_dir().join(format!("{}-bad.toml", topology.lb.name()));
    std::fs::write(
        &config,
        "[[listener]]\nname = \"web\"\naddress = \"10.111.100.1\"\nport = 80\nprotocol = \"tcp\"\ndefault_target_group = \"nope\"\n",
    )
    .unwrap();
    let pin_dir = PinDir::new();
    let out = topology
        .lb
        .command(sluice_binary())
        .args([
            "run",
            "--iface",
            "eth0",
            "--pin-dir",
            pin_dir.arg(),
            "--config",
        ])
        .arg(&config)
        .arg("--socket")
        .arg(unique_socket_path())
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}, line 6: listener 'web': default_target_group 'nope' does not exist; known target groups: none",
            config.display()
        )),
        "the file, the line, the object, the field and the fix: {stderr}"
    );
    assert_eq!(topology.lb.xdp_attached("eth0"), None);
    assert!(
        !pin_dir.0.exists() || std::fs::read_dir(&pin_dir.0).unwrap().next().is_none(),
        "a failed start leaves no pins"
    );
}

#[test]
fn more_listeners_than_the_maps_hold_is_refused() {
    require_root();
    let topology = LbTopology::new(1);
    let config = std::env::temp_dir().join(format!("{}-many.toml", topology.lb.name()));
    std::fs::write(&config, config_text("nat", &topology, &[0])).unwrap();
    let pin_dir = PinDir::new();
    let out = topology
        .lb
        .command(sluice_binary())
        .args([
            "run",
            "--iface",
            "eth0",
            "--max-listeners",
            "2",
            "--pin-dir",
            pin_dir.arg(),
            "--config",
        ])
        .arg(&config)
        .arg("--socket")
        .arg(unique_socket_path())
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("more than 2 listeners"), "{stderr}");
    assert_eq!(topology.lb.xdp_attached("eth0"), None);
}

impl Balanced {
    fn count(&self, text: &str) -> usize {
        self.sluice.stderr().matches(text).count()
    }

    fn stop_echo(&mut self, target: usize) {
        self.servers[target].1 = None;
    }

    fn start_echo(&mut self, target: usize) {
        let host = &self.topology.targets[target];
        let addr = SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), target_port(self.mode, ECHO));
        self.servers[target].1 = Some(EchoServer::start(
            &host.ns,
            addr,
            &format!("target{target}"),
        ));
    }
}

/// Health checks against the echo service while HTTP traffic is counted: a target whose
/// checks fail leaves the table (its HTTP server still works, so only the table can keep
/// connections away), comes back after the healthy threshold, and with every target
/// unhealthy the group fails open.
#[test]
fn unhealthy_targets_leave_the_table_and_all_unhealthy_fails_open() {
    let mut lb = Balanced::start_with("nat", &[0, 1, 2], ECHO, 1);
    let web_target1 = format!(
        "target {}:{} of 'web'",
        lb.topology.targets[1].link.v4,
        target_port("nat", HTTP)
    );
    lb.stop_echo(1);
    let went_down = format!("{web_target1}: healthy -> unhealthy: Target.FailedHealthChecks");
    wait_until(TIMEOUT, &went_down, || lb.count(&went_down) == 1);
    // `sluice status` shows it unhealthy, with ELB's reason.
    let address = format!(
        "{}:{}",
        lb.topology.targets[1].link.v4,
        target_port("nat", HTTP)
    );
    let status = sluice_status(&lb, false);
    let row = status
        .lines()
        .find(|l| l.starts_with("web ") && l.contains(&address))
        .unwrap_or_else(|| panic!("no row for {address}: {status}"));
    assert!(
        row.contains("unhealthy") && row.contains("Target.FailedHealthChecks"),
        "{row}"
    );
    let seen = lb.spread(VIP_V4.into(), 60);
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        ["target0", "target2"],
        "{seen:?}"
    );
    // The traffic shows as a rate once the daemon has sampled it.
    wait_until(TIMEOUT, "a packet rate for listener web", || {
        let status: serde_json::Value = serde_json::from_str(&sluice_status(&lb, true)).unwrap();
        status["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["name"] == "web" && l["rate"]["packets_per_second"].as_u64() > Some(0))
    });

    lb.start_echo(1);
    let came_back = format!("{web_target1}: unhealthy -> healthy");
    wait_until(TIMEOUT, &came_back, || lb.count(&came_back) == 1);
    let seen = lb.spread(VIP_V4.into(), 90);
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        ["target0", "target1", "target2"],
        "{seen:?}"
    );

    for target in 0..3 {
        lb.stop_echo(target);
    }
    let failing_open = "target group 'web' has no healthy target: failing open";
    wait_until(TIMEOUT, "the web group to fail open", || {
        lb.count(failing_open) == 1
    });
    let seen = lb.spread(VIP_V4.into(), 90);
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        ["target0", "target1", "target2"],
        "fail open: {seen:?}"
    );
}

/// Deregistration: an established connection to a removed target keeps working for the
/// deregistration delay while new connections avoid the target from the start; when the delay
/// is over the flow is re-hashed (the connection then breaks, which shows the delay is what
/// kept it).
#[test]
fn a_deregistered_target_keeps_its_connections_for_the_delay_only() {
    let mut lb = Balanced::start_with("nat", &[0, 1, 2], HTTP, 3);
    let mut echo =
        EchoClient::connect(&lb.topology.client.ns, SocketAddr::new(VIP_V4.into(), ECHO))
            .unwrap_or_else(|e| panic!("connecting to the echo listener: {e}"));
    assert_eq!(echo.echo(b"before").unwrap(), b"before");
    let serving = lb
        .servers
        .iter()
        .position(|(_, echo_server, _)| !echo_server.as_ref().unwrap().peers().is_empty())
        .expect("one target serves the echo connection");
    let others: Vec<usize> = (0..3).filter(|&i| i != serving).collect();
    lb.reconfigure(&others);
    let removed_at = std::time::Instant::now();

    // New connections avoid the draining target from the start...
    let seen = lb.spread(VIP_V4.into(), 60);
    let names: Vec<String> = others.iter().map(|i| format!("target{i}")).collect();
    assert_eq!(seen.keys().cloned().collect::<Vec<_>>(), names, "{seen:?}");
    // ...while the established one still works (the delay is 3 s).
    assert_eq!(echo.echo(b"draining").unwrap(), b"draining");
    assert!(
        removed_at.elapsed() < std::time::Duration::from_secs(3),
        "too slow to check within the delay"
    );

    // When the delay is over, its flow moves to another target, which resets it.
    let over = format!(
        "target {}:{} of 'echo': deregistration delay over",
        lb.topology.targets[serving].link.v4,
        target_port("nat", ECHO)
    );
    wait_until(TIMEOUT, &over, || lb.count(&over) == 1);
    assert!(
        echo.echo(b"after").is_err(),
        "the connection outlived the deregistration delay"
    );
}

/// An HTTP health check with matcher 200-299 marks a target answering 500 unhealthy, with
/// ELB's reason, and traffic avoids it; fixed, it comes back.
#[test]
fn an_http_check_with_a_matcher_marks_a_target_answering_500_unhealthy() {
    require_root();
    let topology = LbTopology::new(2);
    let servers: Vec<HttpServer> = topology
        .targets
        .iter()
        .enumerate()
        .map(|(i, t)| {
            HttpServer::start(
                &t.ns,
                SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 8080),
                &format!("target{i}"),
            )
        })
        .collect();
    let targets: Vec<String> = topology
        .targets
        .iter()
        .map(|t| format!("{{ address = \"{}\" }}", t.link.v4))
        .collect();
    let config = std::env::temp_dir().join(format!("{}-http.toml", topology.lb.name()));
    std::fs::write(
        &config,
        format!(
            "[[listener]]\nname = \"web\"\naddress = \"{VIP_V4}\"\nport = {HTTP}\nprotocol = \"tcp\"\ndefault_target_group = \"web\"\nmaglev_table_size = 251\n\n\
             [[target_group]]\nname = \"web\"\nport = 8080\ntargets = [{}]\n\
             health_check = {{ protocol = \"http\", path = \"/health\", matcher = \"200-299\", interval = \"200ms\", timeout = \"150ms\", healthy_threshold = 2, unhealthy_threshold = 2 }}\n",
            targets.join(", ")
        ),
    )
    .unwrap();
    let pin_dir = PinDir::new();
    let socket = unique_socket_path();
    let sluice = spawn_sluice(&topology, &config, &pin_dir, &socket);
    let count = |text: &str| sluice.stderr().matches(text).count();
    wait_until(TIMEOUT, "both targets healthy", || {
        count("initial -> healthy") == 2
    });

    servers[1].set_status(500);
    let went_down = format!(
        "target {}:8080 of 'web': healthy -> unhealthy: Target.ResponseCodeMismatch: Health checks failed with these codes: [500]",
        topology.targets[1].link.v4
    );
    wait_until(TIMEOUT, &went_down, || count(&went_down) == 1);
    for _ in 0..40 {
        let answer = http_get(
            &topology.client.ns,
            SocketAddr::new(VIP_V4.into(), HTTP),
            "/",
        )
        .unwrap_or_else(|e| panic!("traffic must avoid the unhealthy target: {e}"));
        assert_eq!(answer.trim(), "target0");
    }

    servers[1].set_status(200);
    wait_until(TIMEOUT, "target1 healthy again", || {
        count("unhealthy -> healthy") == 1
    });
    let _ = std::fs::remove_file(&socket);
}

/// `sluice status [--json]`'s output.
fn sluice_status(lb: &Balanced, json: bool) -> String {
    let mut cmd = lb.topology.lb.command(sluice_binary());
    cmd.args(["status", "--socket"]).arg(&lb.socket);
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "sluice status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Packets of every listener, from `sluice status --json`.
fn packets_counted(lb: &Balanced) -> u64 {
    let status: serde_json::Value = serde_json::from_str(&sluice_status(lb, true)).unwrap();
    status["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["packets"].as_u64().unwrap())
        .sum()
}

/// `sluice status --json` without the traffic numbers, which go on counting.
fn state_of(lb: &Balanced) -> serde_json::Value {
    let mut state: serde_json::Value = serde_json::from_str(&sluice_status(lb, true)).unwrap();
    // Counters and the live connection-state counts move with traffic; the rest is state.
    state.as_object_mut().unwrap().remove("counters");
    state.as_object_mut().unwrap().remove("connection_tables");
    // Health transitions are the running daemon's own news; a successor starts without.
    state.as_object_mut().unwrap().remove("health_transitions");
    for list in ["listeners", "targets"] {
        for item in state[list].as_array_mut().unwrap() {
            let item = item.as_object_mut().unwrap();
            for counter in [
                "packets",
                "bytes",
                "new_flows",
                "port_allocation_errors",
                "rate",
                "active_flows",
            ] {
                item.remove(counter);
            }
        }
    }
    state
}

/// A client streams over a connection through the VIP while the daemon is stopped, traffic
/// goes on without it, and a new daemon takes over: no byte lost, no reset, same state.
/// `without_addresses`: the stopped daemon's pins lack `ADDRESSES`, as a release before it
/// pinned none: the new daemon rebuilds it from the adopted listeners and targets.
fn restart_is_hitless_lb(mode: &'static str, without_addresses: bool) -> Balanced {
    let mut lb = Balanced::start(mode, &[0, 1, 2]);
    let before = state_of(&lb);
    let mut echo =
        EchoClient::connect(&lb.topology.client.ns, SocketAddr::new(VIP_V4.into(), ECHO))
            .unwrap_or_else(|e| panic!("connecting to the echo listener ({mode}): {e}"));
    assert_eq!(echo.echo(b"before").unwrap(), b"before");

    // The client streams from its own thread for the whole restart.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let streamer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let started = std::time::Instant::now();
            let mut rounds = 0u64;
            // Bounded in count and time.
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && rounds < 1_000_000
                && started.elapsed() < 3 * TIMEOUT
            {
                let payload = format!("round {rounds} {}", "x".repeat((rounds % 900) as usize));
                match echo.echo(payload.as_bytes()) {
                    Ok(back) if back == payload.as_bytes() => rounds += 1,
                    Ok(back) => {
                        return Err(format!(
                            "round {rounds}: sent {} bytes, got {} different ones back",
                            payload.len(),
                            back.len()
                        ))
                    }
                    Err(e) => return Err(format!("round {rounds}: {e}")),
                }
            }
            Ok((rounds, echo))
        })
    };
    let counted = packets_counted(&lb);
    // Stop the daemon: forwarding goes on with the last state.
    lb.sluice.signal(libc::SIGTERM);
    lb.sluice.wait_timeout(TIMEOUT);
    assert!(
        lb.sluice.stderr().contains("stays attached"),
        "{}",
        lb.sluice.stderr()
    );
    assert!(lb.topology.lb.xdp_attached("eth0").is_some());
    assert_eq!(
        lb.get(VIP_V4.into()).len(),
        "targetN".len(),
        "new connections are balanced without a daemon"
    );

    if without_addresses {
        std::fs::remove_file(lb.pin_dir.0.join("ADDRESSES")).unwrap();
    }
    // A new daemon takes over.
    lb.sluice = spawn_sluice(&lb.topology, &lb.config, &lb.pin_dir, &lb.socket);
    let log = lb.sluice.stderr();
    assert!(log.contains("adopting the data plane"), "{log}");
    assert!(log.contains("sluice took over eth0"), "{log}");
    assert!(
        !log.contains("registered"),
        "no target is new to the adopting daemon: {log}"
    );
    let after = state_of(&lb);
    // The XDP counters live in pinned maps: they went on counting without a daemon and the
    // new one reports them, not zeros (docs/OPERATING.md, "Metrics").
    assert!(
        packets_counted(&lb) > counted,
        "listener packets {} after the restart, {counted} before",
        packets_counted(&lb)
    );
    assert_eq!(before, after, "the new daemon shows the same state");
    // The stream is an active flow of the echo listener, seen through the adopted table.
    let status: serde_json::Value = serde_json::from_str(&sluice_status(&lb, true)).unwrap();
    let echo_listener = status["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "echo")
        .unwrap();
    assert_eq!(echo_listener["active_flows"], 1, "{echo_listener}");

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (rounds, mut echo) = streamer.join().unwrap().unwrap_or_else(|e| {
        panic!("the stream through the VIP broke during the restart ({mode}): {e}")
    });
    assert!(rounds > 10, "the stream made progress: {rounds} rounds");
    assert_eq!(echo.echo(b"after").unwrap(), b"after");
    let seen = lb.spread(VIP_V4.into(), 60);
    assert_eq!(
        seen.len(),
        3,
        "new connections reach every target: {seen:?}"
    );
    lb
}

/// `sluice down`: with the daemon running (it stops), or after it stopped (pins only).
fn down(lb: &mut Balanced, daemon_running: bool) {
    if !daemon_running {
        lb.sluice.signal(libc::SIGTERM);
        lb.sluice.wait_timeout(TIMEOUT);
        assert!(lb.topology.lb.xdp_attached("eth0").is_some());
    }
    let out = lb
        .topology
        .lb
        .command(sluice_binary())
        .args(["down", "--pin-dir", lb.pin_dir.arg(), "--socket"])
        .arg(&lb.socket)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "sluice down: {said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("sluice stopped"), "{said}");
    if daemon_running {
        lb.sluice.wait_timeout(TIMEOUT);
        assert!(
            lb.sluice
                .stderr()
                .contains("down: detached from eth0, eth1"),
            "{}",
            lb.sluice.stderr()
        );
    } else {
        assert!(said.contains("detached from eth0, eth1"), "{said}");
    }
    assert!(lb.topology.lb.xdp_attached("eth0").is_none());
    assert!(lb.topology.lb.xdp_attached("eth1").is_none());
    assert!(!lb.pin_dir.0.exists(), "the pins are gone");
    let addr = SocketAddr::new(VIP_V4.into(), HTTP);
    assert!(
        http_get_timeout(
            &lb.topology.client.ns,
            addr,
            "/",
            std::time::Duration::from_millis(300)
        )
        .is_err(),
        "nothing balances the VIP after sluice down"
    );
}

#[test]
fn nat_restart_is_hitless_and_down_detaches() {
    let mut lb = restart_is_hitless_lb("nat", false);
    down(&mut lb, false);
}

#[test]
fn dsr_restart_is_hitless_and_down_stops_the_daemon() {
    let mut lb = restart_is_hitless_lb("dsr", false);
    down(&mut lb, true);
}

/// Pins of a release without `ADDRESSES` (the address classes): the new daemon's program
/// finds every listener and translates every `nat` reply of the stream that runs through the
/// restart.
#[test]
fn nat_restart_over_pins_without_address_classes_is_hitless() {
    let mut lb = restart_is_hitless_lb("nat", true);
    down(&mut lb, false);
}
