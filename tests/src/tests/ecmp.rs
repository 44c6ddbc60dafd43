//! Several sluice nodes behind ECMP (see `crate::multinode`): a router running BIRD learns the
//! VIP from three nodes' BIRDs, which sluice drives, and spreads 300 long-lived connections
//! over them; every node computes the same Maglev table (compared through the API), so when
//! node 2 dies (SIGKILL, links gone) the router withdraws it and its connections, moved by
//! ECMP to the other nodes, reach the same targets and keep working (`dsr`: a node forwards a
//! flow it has never seen by Maglev alone); the same when a fourth node joins, and when a node
//! is drained (`sluice node drain`) and then stopped.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use super::namespaces::{sluice_output, start_sluice, stats_json, ApiSocket, PinDir};
use crate::{
    multinode::Cluster,
    netns::ChildGuard,
    servers::{EchoClient, EchoServer},
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 112, 100, 1);
const PORT: u16 = 7000;
const TARGETS: usize = 6;
const CONNECTIONS: usize = 300;
/// The BGP hold time (`bird::HOLD_TIME_S`) plus the time to install the new route, with room
/// for a busy machine.
const FAILOVER_BOUND: Duration = Duration::from_secs(20);
/// A node's first announcement: sluice starts, its first health checks pass, BGP converges.
const ANNOUNCE_BOUND: Duration = Duration::from_secs(30);

struct Sluice {
    _child: ChildGuard,
    socket: ApiSocket,
    _pin_dir: PinDir,
}

fn model() -> String {
    let targets = (0..TARGETS)
        .map(|j| format!("{{ address = \"10.112.2.{}\" }}", 100 + j))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "[[listener]]\nname = \"echo\"\naddress = \"{VIP}\"\nport = {PORT}\nprotocol = \"tcp\"\nmode = \"dsr\"\ndefault_target_group = \"echo\"\nmaglev_table_size = 251\n\n\
         [[target_group]]\nname = \"echo\"\nderegistration_delay = 1\ntargets = [{targets}]\n\
         health_check = {{ interval = \"500ms\", timeout = \"400ms\", healthy_threshold = 2, unhealthy_threshold = 2 }}\n"
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

/// One echo on every connection: how many failed.
fn echo_all(clients: &mut [EchoClient], round: u8) -> usize {
    let payload = [round; 16];
    let mut failed = 0;
    for client in clients {
        if client
            .echo(&payload)
            .map_or(true, |answer| answer != payload)
        {
            failed += 1;
        }
    }
    failed
}

#[test]
fn three_nodes_share_a_vip_and_connections_survive_losing_and_adding_nodes() {
    crate::netns::require_root();
    let mut cluster = Cluster::new(TARGETS, 4);
    let any = SocketAddr::new(IpAddr::from(Ipv4Addr::UNSPECIFIED), PORT);
    let mut servers = Vec::new();
    for target in &cluster.targets {
        // dsr: targets accept the VIP as their own and answer from it, through the router.
        target.ns.sysctl("net.ipv4.conf.all.arp_ignore", "1");
        target.ns.sysctl("net.ipv4.conf.all.arp_announce", "2");
        target.ns.add_addr("lo", &format!("{VIP}/32"));
        servers.push(EchoServer::start(&target.ns, any, "echo"));
    }
    let config = std::env::temp_dir().join(format!("{}-ecmp.toml", cluster.router.name()));
    std::fs::write(&config, model()).unwrap();
    let _config = RemoveOnDrop(config.clone());
    let prefix = format!("{VIP}/32");

    let mut nodes: Vec<Option<Sluice>> = (0..3)
        .map(|i| Some(start_node(&mut cluster, i, &config)))
        .collect();
    cluster.wait_next_hops(&prefix, &[0, 1, 2], ANNOUNCE_BOUND);

    // The same model gives every node the same table, slot for slot.
    let first = tables(nodes[0].as_ref().unwrap());
    assert_eq!(first["echo"]["size"], 251, "{first}");
    for node in nodes.iter().flatten().skip(1) {
        assert_eq!(tables(node), first, "Maglev tables differ between nodes");
    }

    let vip = SocketAddr::new(VIP.into(), PORT);
    let mut clients: Vec<EchoClient> = (0..CONNECTIONS)
        .map(|i| {
            EchoClient::connect(&cluster.client, vip)
                .unwrap_or_else(|e| panic!("connection {i} to the VIP: {e}"))
        })
        .collect();
    assert_eq!(
        echo_all(&mut clients, 1),
        0,
        "echoes failed through 3 nodes"
    );
    for (i, node) in nodes.iter().enumerate() {
        let stats = stats_json(&node.as_ref().unwrap().socket);
        let packets = stats["listeners"][0]["packets"].as_u64().unwrap();
        assert!(packets > 0, "node {i} got no traffic: ECMP did not spread");
    }
    let client = IpAddr::from(crate::multinode::CLIENT);
    for (j, server) in servers.iter().enumerate() {
        let peers = server.peers();
        assert!(
            peers.iter().any(|p| p.ip() == client),
            "target {j} got no connection of {CONNECTIONS}"
        );
        // Health is checked by every node on its own (no shared results): each target hears
        // from each node.
        for i in 0..3 {
            let node = IpAddr::from(Cluster::node_target_side(i));
            assert!(
                peers.iter().any(|p| p.ip() == node),
                "target {j} was never checked by node {i}"
            );
        }
    }

    // Node 2 dies: the router withdraws it when the hold time ends; its connections move to
    // nodes 0 and 1, which send them to the same targets.
    let died = Instant::now();
    cluster.kill_node(2);
    nodes[2] = None;
    cluster.wait_next_hops(&prefix, &[0, 1], FAILOVER_BOUND);
    eprintln!(
        "ecmp: node 2 withdrawn from the router {:.1} s after it died",
        died.elapsed().as_secs_f64()
    );
    assert_eq!(
        echo_all(&mut clients, 2),
        0,
        "connections broke when node 2 died"
    );

    // Node 3 joins: the flows ECMP moves to it keep their targets too.
    nodes.push(Some(start_node(&mut cluster, 3, &config)));
    cluster.wait_next_hops(&prefix, &[0, 1, 3], ANNOUNCE_BOUND);
    assert_eq!(tables(nodes[3].as_ref().unwrap()), first);
    assert_eq!(
        echo_all(&mut clients, 3),
        0,
        "connections broke when node 3 joined"
    );
    let stats = stats_json(&nodes[3].as_ref().unwrap().socket);
    assert!(
        stats["listeners"][0]["packets"].as_u64().unwrap() > 0,
        "node 3 got none of the moved flows"
    );

    // `sluice node drain` on node 0: the router stops sending to it, its flows go on through
    // the others; then it can be stopped without resetting anyone.
    let node0 = nodes[0].as_ref().unwrap();
    let out = sluice_output(&["node", "drain", "--socket", node0.socket.arg()]);
    assert!(out.status.success(), "{out:?}");
    cluster.wait_next_hops(&prefix, &[1, 3], FAILOVER_BOUND);
    assert_eq!(echo_all(&mut clients, 4), 0, "connections broke on a drain");
    nodes[0] = None;
    assert_eq!(
        echo_all(&mut clients, 5),
        0,
        "connections broke when the drained node stopped"
    );
}

struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
