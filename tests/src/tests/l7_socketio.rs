//! socket.io end to end (issue 5): three real socket.io servers as the targets of an http
//! listener, 50 real socket.io clients with the default transports (long-polling, then the
//! upgrade to WebSocket) and `withCredentials: true`. With `lb_cookie` stickiness every
//! client connects, upgrades and gets its echo, and no server sees a "Session ID unknown"
//! error; without stickiness the servers do see them, which shows the test can fail.

use std::{net::SocketAddr, time::Duration};

use super::l7_support::{all_targets, fast_health_check, L7Sluice, VIP};
use crate::{
    netns::{require_root, LbTopology},
    socketio::{run_clients, ClientsSummary, RoundRobinProxy, ServerStats, SocketIoServer},
};

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

/// `sluice run` with an http listener on [`VIP`] for a group of three socket.io targets.
struct L7Lb {
    topology: LbTopology,
    servers: Vec<SocketIoServer>,
    _sluice: L7Sluice,
}

/// The model (L7-SPEC.md): one http listener, one group of three socket.io targets.
fn model(topology: &LbTopology, stickiness: Option<&str>) -> String {
    let stickiness = stickiness
        .map(|s| format!("stickiness = {s}\n"))
        .unwrap_or_default();
    format!(
        "[[listener]]\nname = \"socketio\"\naddress = \"{VIP}\"\nport = {LISTENER_PORT}\nprotocol = \"http\"\ndefault_target_group = \"socketio\"\nidle_timeout = 60\n\n\
         [[target_group]]\nname = \"socketio\"\nport = {TARGET_PORT}\nalgorithm = \"round_robin\"\n{stickiness}{}targets = [{}]\n",
        fast_health_check(TARGET_PORT),
        all_targets(topology),
    )
}

impl L7Lb {
    fn start(stickiness: Option<&str>) -> L7Lb {
        require_root();
        let topology = LbTopology::new(3);
        let servers = socketio_targets(&topology);
        let sluice = L7Sluice::start(&topology, &model(&topology, stickiness), 3);
        // server.js answers any other path with its name.
        sluice.wait_forwarding(&topology, LISTENER_PORT, "target");
        L7Lb {
            topology,
            servers,
            _sluice: sluice,
        }
    }

    /// Runs the clients, then stops the servers and returns what both saw.
    fn run(self) -> (ClientsSummary, Vec<ServerStats>) {
        let url = format!("http://{VIP}:{LISTENER_PORT}");
        let summary = run_clients(&self.topology.client.ns, &url, CLIENTS, CLIENTS_TIMEOUT);
        (summary, stop_all(self.servers))
    }
}

#[test]
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
fn socketio_without_stickiness_sees_session_id_unknown() {
    let (summary, stats) = L7Lb::start(None).run();
    assert!(
        session_id_unknown(&stats) > 0,
        "round robin without stickiness must split sessions: {summary:#?}\n{stats:#?}"
    );
    assert!(!summary.all_succeeded(), "{summary:#?}");
}
