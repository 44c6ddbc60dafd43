//! socket.io end to end (issue 5): three real socket.io servers as the targets of an http
//! listener, 50 real socket.io clients with the default transports (long-polling, then the
//! upgrade to WebSocket) and `withCredentials: true`. With `lb_cookie` stickiness every
//! client connects, upgrades and gets its echo, and no server sees a "Session ID unknown"
//! error; without stickiness the servers do see them, which shows the test can fail.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use super::namespaces::{PinDir, TIMEOUT};
use crate::{
    netns::{require_root, sluice_binary, unique_socket_path, wait_until, ChildGuard, LbTopology},
    servers::http_get,
    socketio::{run_clients, ClientsSummary, RoundRobinProxy, ServerStats, SocketIoServer},
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 111, 100, 1);
const LISTENER_PORT: u16 = 80;
const TARGET_PORT: u16 = 3000;
const CLIENTS: usize = 50;
/// For all clients together; they normally finish in about a second.
const CLIENTS_TIMEOUT: Duration = Duration::from_secs(30);

/// Three targets, each running a socket.io server named `target<i>` on port 3000.
fn socketio_targets(topology: &LbTopology) -> Vec<SocketIoServer> {
    topology
        .targets
        .iter()
        .enumerate()
        .map(|(i, target)| {
            SocketIoServer::start(
                &target.ns,
                SocketAddr::new(target.link.v4.into(), TARGET_PORT),
                &format!("target{i}"),
            )
        })
        .collect()
}

fn stop_all(servers: Vec<SocketIoServer>) -> Vec<ServerStats> {
    servers.into_iter().map(SocketIoServer::stop).collect()
}

fn session_id_unknown(stats: &[ServerStats]) -> u64 {
    stats.iter().map(|s| s.session_id_unknown).sum()
}

/// The harness itself, without sluice: clients talk straight to one server (routed through
/// the lb namespace, which only forwards), so every session stays on it.
#[test]
fn socketio_harness_works_against_one_server() {
    require_root();
    let topology = LbTopology::new(3);
    let servers = socketio_targets(&topology);
    let url = format!("http://{}", servers[0].addr());
    let summary = run_clients(&topology.client.ns, &url, CLIENTS, CLIENTS_TIMEOUT);
    assert!(summary.all_succeeded(), "{summary:#?}");
    assert_eq!(
        summary.by_server.into_iter().collect::<Vec<_>>(),
        [("target0".to_string(), CLIENTS)]
    );
    let live = servers[0].stats(&topology.targets[0].ns);
    assert_eq!(live.connections, CLIENTS as u64);
    let stats = stop_all(servers);
    assert_eq!(
        stats[0],
        ServerStats {
            name: "target0".into(),
            connections: CLIENTS as u64,
            upgrades: CLIENTS as u64,
            echoed: CLIENTS as u64,
            session_id_unknown: 0,
            other_errors: Vec::new(),
        }
    );
    assert!(stats[1..].iter().all(|s| s.connections == 0), "{stats:?}");
}

/// The harness notices a load balancer without stickiness: behind a round-robin proxy (in
/// Node, no sluice) sessions are split and the servers count "Session ID unknown".
#[test]
fn socketio_harness_detects_a_balancer_without_stickiness() {
    require_root();
    let topology = LbTopology::new(3);
    let servers = socketio_targets(&topology);
    let targets: Vec<SocketAddr> = servers.iter().map(SocketIoServer::addr).collect();
    let proxy = RoundRobinProxy::start(
        &topology.lb,
        SocketAddr::new(topology.lb_client_side.v4.into(), 8080),
        &targets,
    );
    let url = format!("http://{}", proxy.addr());
    let summary = run_clients(&topology.client.ns, &url, CLIENTS, CLIENTS_TIMEOUT);
    let stats = stop_all(servers);
    assert!(session_id_unknown(&stats) > 0, "{summary:#?}\n{stats:#?}");
    assert!(!summary.all_succeeded(), "{summary:#?}");
    assert!(!summary.timed_out, "clients fail fast: {summary:#?}");
}

/// `sluice run` in the lb namespace with an http listener on [`VIP`] for the socket.io group.
struct L7Lb {
    topology: LbTopology,
    servers: Vec<SocketIoServer>,
    sluice: ChildGuard,
    config: PathBuf,
    _pin_dir: PinDir,
}

impl Drop for L7Lb {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
    }
}

/// The model (L7-SPEC.md): one http listener, one group of three socket.io targets.
fn model(topology: &LbTopology, stickiness: Option<&str>) -> String {
    let targets: Vec<String> = topology
        .targets
        .iter()
        .map(|t| format!("{{ address = \"{}\" }}", t.link.v4))
        .collect();
    let stickiness = stickiness
        .map(|s| format!("stickiness = {s}\n"))
        .unwrap_or_default();
    format!(
        "[[listener]]\nname = \"socketio\"\naddress = \"{VIP}\"\nport = {LISTENER_PORT}\nprotocol = \"http\"\ndefault_target_group = \"socketio\"\nidle_timeout = 60\n\n\
         [[target_group]]\nname = \"socketio\"\nport = {TARGET_PORT}\nalgorithm = \"round_robin\"\n{stickiness}\
         health_check = {{ port = {TARGET_PORT}, interval = \"200ms\", timeout = \"150ms\", healthy_threshold = 2, unhealthy_threshold = 2 }}\n\
         targets = [{}]\n",
        targets.join(", ")
    )
}

impl L7Lb {
    fn start(stickiness: Option<&str>) -> L7Lb {
        require_root();
        let topology = LbTopology::new(3);
        // The proxy terminates connections to the VIP: the lb's own stack must accept them.
        topology
            .lb
            .add_addr(&topology.lb_client_side.iface, &format!("{VIP}/32"));
        let servers = socketio_targets(&topology);
        let config = std::env::temp_dir().join(format!("{}.toml", topology.lb.name()));
        std::fs::write(&config, model(&topology, stickiness)).unwrap();
        let pin_dir = PinDir::new();
        let mut cmd = topology.lb.command(sluice_binary());
        cmd.args(["run", "--iface", "eth0", "--iface", "eth1"])
            .args(["--pin-dir", pin_dir.arg()])
            .arg("--config")
            .arg(&config)
            .arg("--socket")
            .arg(unique_socket_path())
            .env("RUST_LOG", "info");
        let sluice = topology.lb.spawn(cmd);
        let lb = L7Lb {
            topology,
            servers,
            sluice,
            config,
            _pin_dir: pin_dir,
        };
        lb.wait_serving();
        lb
    }

    /// Waits until all three targets are healthy and the listener forwards a plain request.
    fn wait_serving(&self) {
        wait_until(TIMEOUT, "3 healthy socket.io targets", || {
            if let Some(status) = self.sluice.try_status() {
                panic!("sluice exited ({status}): {}", self.sluice.stderr());
            }
            self.sluice.stderr().matches("-> healthy").count() >= 3
        });
        let vip = SocketAddr::new(IpAddr::from(VIP), LISTENER_PORT);
        wait_until(TIMEOUT, "the http listener to forward GET /", || {
            http_get(&self.topology.client.ns, vip, "/")
                .is_ok_and(|body| body.starts_with("target"))
        });
    }

    fn url(&self) -> String {
        format!("http://{VIP}:{LISTENER_PORT}")
    }

    /// Runs the clients, then stops the servers and returns what both saw.
    fn run(self) -> (ClientsSummary, Vec<ServerStats>) {
        let summary = run_clients(
            &self.topology.client.ns,
            &self.url(),
            CLIENTS,
            CLIENTS_TIMEOUT,
        );
        let mut lb = self;
        let stats = stop_all(std::mem::take(&mut lb.servers));
        (summary, stats)
    }
}

#[test]
#[ignore = "needs the L7 proxy (merged by the lead)"]
fn socketio_end_to_end_with_lb_cookie_stickiness() {
    let (summary, stats) = L7Lb::start(Some("{ type = \"lb_cookie\" }")).run();
    assert!(summary.all_succeeded(), "{summary:#?}\n{stats:#?}");
    assert_eq!(session_id_unknown(&stats), 0, "{stats:#?}");
    assert!(
        stats.iter().all(|s| s.other_errors.is_empty()),
        "{stats:#?}"
    );
    // Each client's whole session, polling and WebSocket, stayed on one server.
    assert_eq!(
        stats.iter().map(|s| s.connections).sum::<u64>(),
        CLIENTS as u64
    );
    assert_eq!(
        stats.iter().map(|s| s.upgrades).sum::<u64>(),
        CLIENTS as u64
    );
    // New sessions were still spread: every server got some.
    assert_eq!(summary.by_server.len(), 3, "{summary:#?}");
}

#[test]
#[ignore = "needs the L7 proxy (merged by the lead)"]
fn socketio_without_stickiness_sees_session_id_unknown() {
    let (summary, stats) = L7Lb::start(None).run();
    assert!(
        session_id_unknown(&stats) > 0,
        "round robin without stickiness must split sessions: {summary:#?}\n{stats:#?}"
    );
    assert!(!summary.all_succeeded(), "{summary:#?}");
}
