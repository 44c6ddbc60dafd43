//! Several sluice nodes behind ECMP (see `crate::multinode`): a router running BIRD learns the
//! VIP from three nodes' BIRDs, which sluice drives, and spreads 300 long-lived connections
//! over them; every node computes the same Maglev table (compared through the API), so when
//! node 2 dies (links gone, then SIGKILL) BFD tells the router, which withdraws it, and its
//! connections, moved by ECMP to the other nodes, reach the same targets and keep working
//! (`dsr` and `tunnel`: a node forwards a flow it has never seen by Maglev alone); the same
//! when a fourth node joins, and when a node is drained (`sluice node drain`) and then stopped.
//! In `nat` the translations are the node's own: what a moved flow gets is measured and
//! counted (`drop_no_connection`), not survived.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use super::namespaces::{sluice_output, start_sluice, stats, stats_json, ApiSocket, PinDir};
use crate::{
    multinode::Cluster,
    netns::{sluice_binary, wait_until, ChildGuard, Namespace},
    servers::{EchoClient, EchoServer},
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 112, 100, 1);
const PORT: u16 = 7000;
const TARGETS: usize = 6;
const CONNECTIONS: usize = 300;
/// BFD's detection time (`bird::BFD_INTERVAL_MS` x `bird::BFD_MULTIPLIER` = 1.5 s) plus the
/// time to install the new route, with room for a busy machine; the hold time (6 s) would be
/// later.
const FAILOVER_BOUND: Duration = Duration::from_secs(5);
/// A node's BFD session: up once BGP and BFD have both started.
const BFD_BOUND: Duration = Duration::from_secs(20);
/// How long a round of echoes on every connection may take.
const ECHO_BOUND: Duration = Duration::from_secs(10);
/// A node's first announcement: sluice starts, its first health checks pass, BGP converges.
const ANNOUNCE_BOUND: Duration = Duration::from_secs(30);

struct Sluice {
    _child: ChildGuard,
    socket: ApiSocket,
    _pin_dir: PinDir,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Nat,
    Dsr,
    Tunnel,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Nat => "nat",
            Mode::Dsr => "dsr",
            Mode::Tunnel => "tunnel",
        }
    }
}

fn model(mode: Mode) -> String {
    let targets = (0..TARGETS)
        .map(|j| format!("{{ address = \"10.112.2.{}\" }}", 100 + j))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "[[listener]]\nname = \"echo\"\naddress = \"{VIP}\"\nport = {PORT}\nprotocol = \"tcp\"\nmode = \"{mode}\"\ndefault_target_group = \"echo\"\nmaglev_table_size = 251\n\n\
         [[target_group]]\nname = \"echo\"\nderegistration_delay = 1\ntargets = [{targets}]\n\
         health_check = {{ interval = \"500ms\", timeout = \"400ms\", healthy_threshold = 2, unhealthy_threshold = 2 }}\n",
        mode = mode.name()
    )
}

fn start_node(cluster: &mut Cluster, i: usize, config: &std::path::Path) -> Sluice {
    let node = cluster.add_node(i);
    let socket = ApiSocket::new();
    let pin_dir = PinDir::new();
    let child = start_sluice(
        &node.ns,
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
            "--bird-routes",
            node.routes_file.to_str().unwrap(),
            "--bird-socket",
            node.bird.socket.to_str().unwrap(),
        ],
    );
    Sluice {
        _child: child,
        socket,
        _pin_dir: pin_dir,
    }
}

/// `sluice tables --json` of one node.
fn tables(node: &Sluice) -> serde_json::Value {
    let out = sluice_output(&["tables", "--json", "--socket", node.socket.arg()]);
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// One echo on every connection, all sent at once and answered within one deadline: the
/// indices of the connections that failed.
fn echo_all(clients: &mut [EchoClient], round: u8) -> Vec<usize> {
    let payload = [round; 16];
    let sent: Vec<bool> = clients
        .iter_mut()
        .map(|client| client.send(&payload).is_ok())
        .collect();
    let deadline = Instant::now() + ECHO_BOUND;
    let mut failed = Vec::new();
    for (i, (client, sent)) in clients.iter_mut().zip(sent).enumerate() {
        let answered = sent
            && client
                .receive(payload.len(), deadline)
                .is_ok_and(|answer| answer == payload);
        if !answered {
            failed.push(i);
        }
    }
    failed
}

/// `sluice decap` on a target's eth0: takes the `tunnel` mode's IPIP apart (the kernel here
/// has no ipip driver).
fn start_decap(ns: &Namespace) -> ChildGuard {
    let mut cmd = ns.command(sluice_binary());
    cmd.args(["decap", "--iface", "eth0"])
        .env_remove("RUST_LOG");
    let decap = ns.spawn(cmd);
    wait_until(ANNOUNCE_BOUND, "sluice decap to attach to eth0", || {
        if let Some(status) = decap.try_status() {
            panic!(
                "sluice decap exited before attaching ({status}): {}",
                decap.stderr()
            );
        }
        ns.xdp_attached("eth0").is_some()
    });
    decap
}

#[test]
fn three_dsr_nodes_share_a_vip_and_connections_survive_losing_and_adding_nodes() {
    connections_survive_losing_and_adding_nodes(Mode::Dsr);
}

#[test]
fn three_tunnel_nodes_share_a_vip_and_connections_survive_losing_and_adding_nodes() {
    connections_survive_losing_and_adding_nodes(Mode::Tunnel);
}

/// The router, six targets serving the VIP (plus `sluice decap` in `tunnel` mode), the model
/// file, and nodes 0 to 2 announcing the VIP with BFD up.
struct Setup {
    /// Declared first: nodes go before the cluster's namespaces.
    nodes: Vec<Option<Sluice>>,
    cluster: Cluster,
    servers: Vec<EchoServer>,
    _decaps: Vec<ChildGuard>,
    config: RemoveOnDrop,
    prefix: String,
}

impl Setup {
    fn new(mode: Mode) -> Setup {
        crate::netns::require_root();
        let mut cluster = Cluster::new(TARGETS, 4);
        let any = SocketAddr::new(IpAddr::from(Ipv4Addr::UNSPECIFIED), PORT);
        let mut servers = Vec::new();
        let mut decaps = Vec::new();
        for target in &cluster.targets {
            if mode != Mode::Nat {
                // dsr and tunnel: targets accept the VIP as their own and answer from it,
                // through the router.
                target.ns.sysctl("net.ipv4.conf.all.arp_ignore", "1");
                target.ns.sysctl("net.ipv4.conf.all.arp_announce", "2");
                target.ns.add_addr("lo", &format!("{VIP}/32"));
            }
            if mode == Mode::Tunnel {
                decaps.push(start_decap(&target.ns));
            }
            servers.push(EchoServer::start(&target.ns, any, "echo"));
        }
        let config = std::env::temp_dir().join(format!("{}-ecmp.toml", cluster.router.name()));
        std::fs::write(&config, model(mode)).unwrap();
        let config = RemoveOnDrop(config);
        let nodes: Vec<Option<Sluice>> = (0..3)
            .map(|i| Some(start_node(&mut cluster, i, &config.0)))
            .collect();
        let prefix = format!("{VIP}/32");
        cluster.wait_next_hops(&prefix, &[0, 1, 2], ANNOUNCE_BOUND);
        cluster.wait_bfd_up(&[0, 1, 2], BFD_BOUND);
        Setup {
            nodes,
            cluster,
            servers,
            _decaps: decaps,
            config,
            prefix,
        }
    }

    fn node(&self, i: usize) -> &Sluice {
        self.nodes[i].as_ref().expect("a running node")
    }

    /// 300 connections from the client to the VIP, one echo each: they spread over the three
    /// nodes (each node's counters show traffic) and over the six targets, and each target is
    /// health-checked by each node.
    fn connect_all(&self) -> Vec<EchoClient> {
        let vip = SocketAddr::new(VIP.into(), PORT);
        let mut clients: Vec<EchoClient> = (0..CONNECTIONS)
            .map(|i| {
                EchoClient::connect(&self.cluster.client, vip)
                    .unwrap_or_else(|e| panic!("connection {i} to the VIP: {e}"))
            })
            .collect();
        assert_eq!(
            echo_all(&mut clients, 1),
            Vec::<usize>::new(),
            "echoes failed through 3 nodes"
        );
        for i in 0..3 {
            let stats = stats_json(&self.node(i).socket);
            let packets = stats["listeners"][0]["packets"].as_u64().unwrap();
            assert!(packets > 0, "node {i} got no traffic: ECMP did not spread");
        }
        for (j, server) in self.servers.iter().enumerate() {
            let peers = server.peers();
            // Health is checked by every node on its own (no shared results): each target
            // hears from each node.
            for i in 0..3 {
                let node = IpAddr::from(Cluster::node_target_side(i));
                assert!(
                    peers.iter().any(|p| p.ip() == node),
                    "target {j} was never checked by node {i}"
                );
            }
        }
        clients
    }

    /// Node `i` dies: BFD tells the router, which withdraws it; returns how long that took.
    fn kill(&mut self, i: usize, survivors: &[usize]) -> Duration {
        let died = Instant::now();
        self.cluster.kill_node(i);
        self.nodes[i] = None;
        self.cluster
            .wait_next_hops(&self.prefix, survivors, FAILOVER_BOUND);
        let took = died.elapsed();
        eprintln!(
            "ecmp: node {i} withdrawn from the router {:.2} s after it died",
            took.as_secs_f64()
        );
        took
    }

    /// Node `i` joins; returns once the router sends it traffic.
    fn add(&mut self, i: usize, announcing: &[usize]) {
        let node = start_node(&mut self.cluster, i, &self.config.0);
        while self.nodes.len() <= i {
            self.nodes.push(None);
        }
        self.nodes[i] = Some(node);
        self.cluster
            .wait_next_hops(&self.prefix, announcing, ANNOUNCE_BOUND);
    }
}

fn connections_survive_losing_and_adding_nodes(mode: Mode) {
    let mut setup = Setup::new(mode);
    // The same model gives every node the same table, slot for slot.
    let first = tables(setup.node(0));
    assert_eq!(first["echo"]["size"], 251, "{first}");
    for i in 1..3 {
        assert_eq!(
            tables(setup.node(i)),
            first,
            "Maglev tables differ between nodes"
        );
    }
    let mut clients = setup.connect_all();
    let client = IpAddr::from(crate::multinode::CLIENT);
    for (j, server) in setup.servers.iter().enumerate() {
        assert!(
            server.peers().iter().any(|p| p.ip() == client),
            "target {j} got no connection of {CONNECTIONS}"
        );
    }

    // Node 2 dies: its connections move to nodes 0 and 1, which send them to the same
    // targets; the connections nodes 0 and 1 had are untouched.
    setup.kill(2, &[0, 1]);
    assert_eq!(
        echo_all(&mut clients, 2),
        Vec::<usize>::new(),
        "connections broke when node 2 died ({mode:?})"
    );

    // Node 3 joins: the flows ECMP moves to it keep their targets too.
    setup.add(3, &[0, 1, 3]);
    assert_eq!(tables(setup.node(3)), first);
    assert_eq!(
        echo_all(&mut clients, 3),
        Vec::<usize>::new(),
        "connections broke when node 3 joined ({mode:?})"
    );
    let stats = stats_json(&setup.node(3).socket);
    assert!(
        stats["listeners"][0]["packets"].as_u64().unwrap() > 0,
        "node 3 got none of the moved flows"
    );

    // `sluice node drain` on node 0: the router stops sending to it, its flows go on through
    // the others; then it can be stopped without resetting anyone.
    let out = sluice_output(&["node", "drain", "--socket", setup.node(0).socket.arg()]);
    assert!(out.status.success(), "{out:?}");
    setup
        .cluster
        .wait_next_hops(&setup.prefix, &[1, 3], FAILOVER_BOUND);
    assert_eq!(
        echo_all(&mut clients, 4),
        Vec::<usize>::new(),
        "connections broke on a drain ({mode:?})"
    );
    setup.nodes[0] = None;
    assert_eq!(
        echo_all(&mut clients, 5),
        Vec::<usize>::new(),
        "connections broke when the drained node stopped ({mode:?})"
    );
}

/// `nat` behind ECMP: a node's translations are its own, so a flow that ECMP moves to another
/// node is lost there. What it gets is a counted drop (`drop_no_connection` on the node that
/// receives it), never a wrong target; the flows that stay on their node are untouched. The
/// share of connections lost is printed: Linux's multipath routes map the hash space by
/// thresholds, so losing one of three nodes also moves some flows between the survivors.
#[test]
fn nat_flows_that_ecmp_moves_are_dropped_and_counted_and_the_others_survive() {
    let mut setup = Setup::new(Mode::Nat);
    let mut clients = setup.connect_all();
    // Replies come back to the node that translated the flow: the targets see node
    // addresses, never the client.
    for (j, server) in setup.servers.iter().enumerate() {
        let peers = server.peers();
        assert!(
            peers
                .iter()
                .all(|p| (0..3).any(|i| p.ip() == IpAddr::from(Cluster::node_target_side(i)))),
            "target {j} saw a peer that is not a node: {peers:?}"
        );
    }
    let dropped = |setup: &Setup, nodes: &[usize]| -> u64 {
        nodes
            .iter()
            .map(|&i| stats(&setup.node(i).socket)["drop_no_connection"])
            .sum()
    };
    let before = dropped(&setup, &[0, 1]);
    setup.kill(2, &[0, 1]);
    let lost = echo_all(&mut clients, 2);
    let counted = dropped(&setup, &[0, 1]) - before;
    eprintln!(
        "ecmp nat: node 2 died: {} of {CONNECTIONS} connections lost, {counted} segments dropped and counted by nodes 0 and 1",
        lost.len()
    );
    assert!(
        !lost.is_empty() && lost.len() < CONNECTIONS,
        "expected node 2's connections lost and the others kept: {} of {CONNECTIONS} lost",
        lost.len()
    );
    assert!(
        counted >= lost.len() as u64,
        "{} connections lost but only {counted} drops counted",
        lost.len()
    );
    // The ones that survived go on surviving: they never moved.
    let mut kept: Vec<EchoClient> = clients
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !lost.contains(i))
        .map(|(_, c)| c)
        .collect();
    assert_eq!(
        echo_all(&mut kept, 3),
        Vec::<usize>::new(),
        "a nat connection that did not move broke"
    );

    // A node joins: the flows ECMP moves to it are lost there, counted by it.
    setup.add(3, &[0, 1, 3]);
    let lost = echo_all(&mut kept, 4);
    let counted = stats(&setup.node(3).socket)["drop_no_connection"];
    eprintln!(
        "ecmp nat: node 3 joined: {} of {} connections lost, {counted} segments dropped and counted by node 3",
        lost.len(),
        kept.len()
    );
    assert!(
        counted >= lost.len() as u64,
        "{} connections lost but node 3 counted {counted} drops",
        lost.len()
    );
}

/// Health from many places: every node checks every target on its own, so a target's check
/// load is nodes / interval. Measured here at ten nodes (printed, for OPERATING.md): each
/// target hears from each node, and no node checks more often than its interval (checks are
/// delayed on a busy machine, never bunched), so the load is bounded by the arithmetic.
#[test]
fn ten_nodes_each_check_every_target_at_their_interval() {
    const NODES: usize = 10;
    /// The model's health check interval.
    const INTERVAL: Duration = Duration::from_millis(500);
    crate::netns::require_root();
    let mut cluster = Cluster::new(TARGETS, NODES);
    let any = SocketAddr::new(IpAddr::from(Ipv4Addr::UNSPECIFIED), PORT);
    let servers: Vec<EchoServer> = cluster
        .targets
        .iter()
        .map(|target| EchoServer::start(&target.ns, any, "echo"))
        .collect();
    let config = std::env::temp_dir().join(format!("{}-ecmp.toml", cluster.router.name()));
    std::fs::write(&config, model(Mode::Nat)).unwrap();
    let config = RemoveOnDrop(config);
    let nodes: Vec<Sluice> = (0..NODES)
        .map(|i| start_node(&mut cluster, i, &config.0))
        .collect();
    let from_node = |peers: &[SocketAddr], i: usize| {
        let node = IpAddr::from(Cluster::node_target_side(i));
        peers.iter().filter(|p| p.ip() == node).count()
    };
    // Every node has started checking every target.
    wait_until(ANNOUNCE_BOUND, "every node to check every target", || {
        servers.iter().all(|server| {
            let peers = server.peers();
            (0..NODES).all(|i| from_node(&peers, i) > 0)
        })
    });
    let before: Vec<Vec<SocketAddr>> = servers.iter().map(|s| s.peers()).collect();
    let started = Instant::now();
    // A measurement window, not a wait for a condition: the bound below holds for any length.
    std::thread::sleep(Duration::from_secs(5));
    let after: Vec<Vec<SocketAddr>> = servers.iter().map(|s| s.peers()).collect();
    let window = started.elapsed();
    // At most one check per interval per node, plus the one that may straddle each edge.
    let most = (window.as_secs_f64() / INTERVAL.as_secs_f64()).ceil() as usize + 1;
    let mut per_target = Vec::new();
    for (j, (before, after)) in before.iter().zip(&after).enumerate() {
        let mut total = 0;
        for i in 0..NODES {
            let checks = from_node(after, i) - from_node(before, i);
            assert!(
                checks <= most,
                "node {i} checked target {j} {checks} times in {window:?} (interval {INTERVAL:?}: at most {most})"
            );
            total += checks;
        }
        per_target.push(total as f64 / window.as_secs_f64());
    }
    let mean = per_target.iter().sum::<f64>() / per_target.len() as f64;
    eprintln!(
        "ecmp: {NODES} nodes, interval {INTERVAL:?}: {mean:.1} checks/s per target measured over {:.1} s (arithmetic: {:.1}); per target {per_target:.1?}",
        window.as_secs_f64(),
        NODES as f64 / INTERVAL.as_secs_f64()
    );
    drop(nodes);
}

struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
