//! Several sluice nodes behind a router that spreads flows over them with ECMP:
//!
//! ```text
//!  client ── veth ── router ── fabric (bridge) ─┬─ node 0 ─┐
//!  10.112.0.2    10.112.0.1    10.112.1.0/24    ├─ node 1 ─┼─ targets (bridge) ─┬─ target 0
//!                    │        (router .1,       └─ node 2 ─┘  10.112.2.0/24      ├─ target 1
//!                    │         node i .10+i)                  (router .1,        └─ ...
//!                    └───────────────── targets bridge ────── node i .10+i,
//!                                                              target j .100+j)
//! ```
//!
//! The router learns each VIP from every node's BIRD over BGP and installs one multipath route
//! (`fib_multipath_hash_policy = 1`: by ports too, so one client's connections spread). Targets
//! send their replies through the router (their default route), as `dsr` needs. Everything
//! lives in namespaces and goes with them.

use std::net::Ipv4Addr;

use crate::{
    bird::{self, Bird},
    netns::{accept_xdp_frames, veth, wait_until, Bridge, Namespace},
};

/// The router's AS; node i is AS 65101 + i.
pub const ROUTER_AS: u32 = 65000;
pub const ROUTER_FABRIC: Ipv4Addr = Ipv4Addr::new(10, 112, 1, 1);
pub const ROUTER_TARGETS: Ipv4Addr = Ipv4Addr::new(10, 112, 2, 1);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 112, 0, 2);

/// A sluice node: its namespace (eth0 on the fabric, eth1 on the targets' bridge) and its BIRD.
pub struct Node {
    pub index: usize,
    pub ns: Namespace,
    pub fabric: Ipv4Addr,
    pub bird: Bird,
    /// The file sluice writes and this node's BIRD includes.
    pub routes_file: std::path::PathBuf,
}

pub struct Target {
    pub ns: Namespace,
    pub v4: Ipv4Addr,
}

pub struct Cluster {
    pub client: Namespace,
    pub router: Namespace,
    pub fabric: Bridge,
    pub targets_bridge: Bridge,
    pub targets: Vec<Target>,
    /// None once removed.
    pub nodes: Vec<Option<Node>>,
    router_bird: Option<Bird>,
}

impl Cluster {
    /// The router, the client, `n_targets` targets and room for `max_nodes` nodes (the router
    /// peers with all of them from the start; a node not yet there is an idle session).
    pub fn new(n_targets: usize, max_nodes: usize) -> Cluster {
        let client = Namespace::new("client");
        let router = Namespace::new("router");
        let fabric = Bridge::new("fabric");
        let targets_bridge = Bridge::new("tbridge");
        veth(&client, "eth0", &router, "eth0");
        client.add_addr("eth0", &format!("{CLIENT}/24"));
        router.add_addr("eth0", "10.112.0.1/24");
        client.add_default_route("10.112.0.1".parse().unwrap());
        fabric.connect("router", &router, "fab0");
        router.add_addr("fab0", &format!("{ROUTER_FABRIC}/24"));
        targets_bridge.connect("router", &router, "tgt0");
        router.add_addr("tgt0", &format!("{ROUTER_TARGETS}/24"));
        router.sysctl("net.ipv4.ip_forward", "1");
        router.sysctl("net.ipv4.fib_multipath_hash_policy", "1");
        let targets = (0..n_targets)
            .map(|j| {
                let ns = Namespace::new(&format!("target{j}"));
                targets_bridge.connect(&format!("t{j}"), &ns, "eth0");
                let v4 = Ipv4Addr::new(10, 112, 2, 100 + j as u8);
                ns.add_addr("eth0", &format!("{v4}/24"));
                ns.add_default_route(ROUTER_TARGETS.into());
                Target { ns, v4 }
            })
            .collect();
        let peers: Vec<(String, String, u32)> = (0..max_nodes)
            .map(|i| {
                (
                    format!("node{i}"),
                    Self::node_fabric(i).to_string(),
                    ROUTER_AS + 101 + i as u32,
                )
            })
            .collect();
        let peers: Vec<(&str, &str, u32)> = peers
            .iter()
            .map(|(n, a, s)| (n.as_str(), a.as_str(), *s))
            .collect();
        let router_bird = Bird::start(
            &router,
            &bird::router_config(&ROUTER_FABRIC.to_string(), ROUTER_AS, &peers),
        );
        Cluster {
            client,
            router,
            fabric,
            targets_bridge,
            targets,
            nodes: Vec::new(),
            router_bird: Some(router_bird),
        }
    }

    pub fn node_fabric(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 112, 1, 10 + i as u8)
    }

    pub fn node_target_side(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 112, 2, 10 + i as u8)
    }

    /// Adds node `i` (its namespace, links and BIRD with an empty routes file); sluice is the
    /// caller's to start in it.
    pub fn add_node(&mut self, i: usize) -> &Node {
        let ns = Namespace::new(&format!("node{i}"));
        self.fabric.connect(&format!("n{i}"), &ns, "eth0");
        self.targets_bridge.connect(&format!("n{i}"), &ns, "eth1");
        // sluice may send frames out of either side: their bridge ports take them.
        accept_xdp_frames(&self.fabric.ns, &format!("n{i}"));
        accept_xdp_frames(&self.targets_bridge.ns, &format!("n{i}"));
        let fabric = Self::node_fabric(i);
        ns.add_addr("eth0", &format!("{fabric}/24"));
        ns.add_addr("eth1", &format!("{}/24", Self::node_target_side(i)));
        ns.add_default_route(ROUTER_FABRIC.into());
        ns.sysctl("net.ipv4.ip_forward", "1");
        let dir = std::env::temp_dir().join(format!("{}-routes", ns.name()));
        std::fs::create_dir_all(&dir).unwrap();
        let routes_file = dir.join("sluice.conf");
        std::fs::write(&routes_file, "").unwrap();
        let bird = Bird::start(
            &ns,
            &bird::node_config(
                &fabric.to_string(),
                ROUTER_AS + 101 + i as u32,
                &ROUTER_FABRIC.to_string(),
                ROUTER_AS,
                &routes_file,
            ),
        );
        while self.nodes.len() <= i {
            self.nodes.push(None);
        }
        self.nodes[i] = Some(Node {
            index: i,
            ns,
            fabric,
            bird,
            routes_file,
        });
        self.nodes[i].as_ref().unwrap()
    }

    /// Node `i` dies as a host does: its links go first (nothing it sends gets out, not even
    /// the FIN of its BGP session, so the router notices only when BFD or the hold time says
    /// so), then its processes (SIGKILL) with its namespace.
    pub fn kill_node(&mut self, i: usize) {
        let node = self.nodes[i].take().expect("a running node");
        self.fabric.ns.ip(&["link", "del", &format!("n{i}")]);
        self.targets_bridge
            .ns
            .ip(&["link", "del", &format!("n{i}")]);
        drop(node);
    }

    /// The router's next hops for `prefix`, sorted: one per node announcing it.
    pub fn next_hops(&self, prefix: &str) -> Vec<Ipv4Addr> {
        let route = bird::route(&self.router, prefix);
        let mut hops: Vec<Ipv4Addr> = route
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|w| w[0] == "via")
            .filter_map(|w| w[1].parse().ok())
            .collect();
        hops.sort();
        hops
    }

    /// Waits until the router's BFD sessions with `nodes` are up, so that losing one of them
    /// is noticed by BFD (`bird::BFD_MULTIPLIER` missed packets), not by the hold time.
    pub fn wait_bfd_up(&self, nodes: &[usize], timeout: std::time::Duration) {
        let bird = self.router_bird.as_ref().expect("the router's BIRD runs");
        wait_until(
            timeout,
            &format!("BFD sessions up with nodes {nodes:?}"),
            || {
                let sessions = bird.birdc(&["show", "bfd", "sessions"]);
                nodes.iter().all(|&i| {
                    let address = Self::node_fabric(i).to_string();
                    sessions.lines().any(|line| {
                        let mut words = line.split_whitespace();
                        words.next() == Some(address.as_str()) && words.any(|w| w == "Up")
                    })
                })
            },
        );
    }

    /// Waits until the router's route to `prefix` goes through exactly `nodes`.
    pub fn wait_next_hops(&self, prefix: &str, nodes: &[usize], timeout: std::time::Duration) {
        let mut want: Vec<Ipv4Addr> = nodes.iter().map(|&i| Self::node_fabric(i)).collect();
        want.sort();
        wait_until(
            timeout,
            &format!("the router's route to {prefix} via {want:?}"),
            || self.next_hops(prefix) == want,
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Nodes (and their BIRDs) before the router's BIRD and the bridges.
        self.nodes.clear();
        self.router_bird.take();
    }
}
