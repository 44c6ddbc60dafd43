//! Announcing VIPs through a real BGP daemon (BIRD 2): a router namespace peers with the lb
//! namespace's BIRD, which sluice drives (`sluice run --bird-routes`). The router's kernel
//! table shows what the node announces: the VIP once the node forwards, withdrawn when every
//! target of a `when_unhealthy = "withdraw"` listener is down and announced again when one
//! recovers, withdrawn by `sluice node drain` (and still after a restart) and back on
//! `resume`, kept across a plain restart of sluice, withdrawn by `sluice down`; BIRD away and
//! back is caught up with.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use super::namespaces::{sluice_output, start_sluice, ApiSocket, PinDir};
use crate::{
    bird::{self, route, Bird},
    netns::{require_root, veth, wait_until, ChildGuard, LbTopology, Namespace},
    servers::{http_get, HttpServer},
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 111, 100, 7);
const PORT: u16 = 80;
const TARGET_PORT: u16 = 3080;
/// lb and router face each other on 10.111.200.0/30, AS 65001 and 65000.
const LB_PEER: &str = "10.111.200.1";
const ROUTER_PEER: &str = "10.111.200.2";
/// How long BGP may take to carry a change to the router (BIRD reconfigures at once and
/// sends the update; the router installs it).
const CONVERGE: Duration = Duration::from_secs(20);

struct Node {
    topology: LbTopology,
    router: Namespace,
    /// Held for its lifetime: the router's BGP speaker.
    _router_bird: Bird,
    node_bird: Bird,
    routes_file: PathBuf,
    config: PathBuf,
    pin_dir: PinDir,
    socket: ApiSocket,
    servers: Vec<Option<HttpServer>>,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
    }
}

impl Node {
    fn new(when_unhealthy: &str) -> Node {
        require_root();
        let topology = LbTopology::new(2);
        let router = Namespace::new("router");
        veth(&topology.lb, "bgp0", &router, "bgp0");
        topology.lb.add_addr("bgp0", &format!("{LB_PEER}/30"));
        router.add_addr("bgp0", &format!("{ROUTER_PEER}/30"));
        let any = IpAddr::from(Ipv6Addr::UNSPECIFIED);
        let servers = topology
            .targets
            .iter()
            .enumerate()
            .map(|(i, t)| {
                Some(HttpServer::start(
                    &t.ns,
                    SocketAddr::new(any, TARGET_PORT),
                    &format!("target{i}"),
                ))
            })
            .collect();
        let router_bird = Bird::start(
            &router,
            &bird::router_config(ROUTER_PEER, 65000, &[("lb", LB_PEER, 65001)]),
        );
        // The operator's part: bird.conf includes the file sluice writes; it starts empty.
        let node_dir = std::env::temp_dir().join(format!("{}-sluice-routes", topology.lb.name()));
        std::fs::create_dir_all(&node_dir).unwrap();
        let routes_file = node_dir.join("sluice.conf");
        std::fs::write(&routes_file, "").unwrap();
        let node_bird = Bird::start(
            &topology.lb,
            &bird::node_config(LB_PEER, 65001, ROUTER_PEER, 65000, &routes_file),
        );
        let targets = topology
            .targets
            .iter()
            .map(|t| format!("{{ address = \"{}\" }}", t.link.v4))
            .collect::<Vec<_>>()
            .join(", ");
        let config = std::env::temp_dir().join(format!("{}-bgp.toml", topology.lb.name()));
        std::fs::write(
            &config,
            format!(
                "[[listener]]\nname = \"web\"\naddress = \"{VIP}\"\nport = {PORT}\nprotocol = \"tcp\"\nmode = \"nat\"\ndefault_target_group = \"web\"\nmaglev_table_size = 251\n{when_unhealthy}\n\n\
                 [[target_group]]\nname = \"web\"\nport = {TARGET_PORT}\nderegistration_delay = 1\ntargets = [{targets}]\n\
                 health_check = {{ interval = \"200ms\", timeout = \"150ms\", healthy_threshold = 2, unhealthy_threshold = 2 }}\n"
            ),
        )
        .unwrap();
        Node {
            topology,
            router,
            _router_bird: router_bird,
            node_bird,
            routes_file,
            config,
            pin_dir: PinDir::new(),
            socket: ApiSocket::new(),
            servers,
        }
    }

    fn start_sluice(&self) -> ChildGuard {
        self.start_sluice_with(&[
            "--bird-routes",
            self.routes_file.to_str().unwrap(),
            "--bird-socket",
            self.node_bird.socket.to_str().unwrap(),
        ])
    }

    fn start_sluice_with(&self, extra: &[&str]) -> ChildGuard {
        let mut args = vec![
            "--iface",
            "eth1",
            "--config",
            self.config.to_str().unwrap(),
            // Inside the node's namespace: the status page shows the announcements.
            "--metrics-address",
            METRICS,
        ];
        args.extend(extra);
        start_sluice(
            &self.topology.lb,
            "eth0",
            &self.pin_dir,
            &self.socket,
            &args,
        )
    }

    /// The router's kernel route to the VIP.
    fn route(&self) -> String {
        route(&self.router, &format!("{VIP}/32"))
    }

    fn wait_announced(&self, sluice: &ChildGuard, what: &str) {
        wait_until(CONVERGE, what, || {
            let route = self.route();
            if !route.is_empty() {
                assert!(
                    route.contains(&format!("via {LB_PEER}")) && route.contains("bird"),
                    "the router's route to the VIP: {route}"
                );
            }
            !route.is_empty() || sluice.try_status().is_some()
        });
        assert!(sluice.try_status().is_none(), "{}", sluice.stderr());
    }

    fn wait_withdrawn(&self, what: &str) {
        wait_until(CONVERGE, what, || self.route().is_empty());
    }

    fn sluice(&self, args: &[&str]) -> std::process::Output {
        let mut all = args.to_vec();
        all.extend(["--socket", self.socket.arg()]);
        sluice_output(&all)
    }

    fn node_status(&self) -> serde_json::Value {
        let out = self.sluice(&["node", "status", "--json"]);
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

/// The status page of the node (on its namespace's loopback).
const METRICS: &str = "127.0.0.1:8489";

#[test]
fn the_vip_is_announced_while_served_and_withdrawn_when_not() {
    let mut node = Node::new("when_unhealthy = \"withdraw\"");
    let sluice = node.start_sluice();
    node.wait_announced(&sluice, "the router to learn the VIP from sluice's BIRD");
    // The route is real: the client reaches a target through it... from the lb side here,
    // since the router only peers (the data path through a router is the ECMP test's).
    assert!(http_get(
        &node.topology.client.ns,
        SocketAddr::new(VIP.into(), PORT),
        "/"
    )
    .is_ok());
    let status = node.node_status();
    assert_eq!(status["node"], "serving");
    assert_eq!(status["announced"], serde_json::json!([VIP.to_string()]));

    // Every target down: nobody can be served here, the VIP is withdrawn...
    node.servers.iter_mut().for_each(|s| *s = None);
    node.wait_withdrawn("the VIP to be withdrawn with every target unhealthy");
    let status = node.node_status();
    assert_eq!(status["announced"], serde_json::json!([]));
    assert_eq!(status["withheld"][0]["reason"], "no_healthy_target");
    let shown = node.sluice(&["status"]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains("withheld 10.111.100.7: no healthy target for listener(s) web"),
        "{shown}"
    );
    // The status page says so too.
    let dom =
        crate::browser::Browser::new(&node.topology.lb).dump_dom(&format!("http://{METRICS}/"));
    let section = &dom[dom.find("BGP announcements").expect("a BGP section")..];
    assert!(
        section.contains(">10.111.100.7<")
            && section.contains(">withheld<")
            && section.contains("no healthy target for listener(s) web"),
        "{section}"
    );
    // ... and announced again when one recovers.
    let any = IpAddr::from(Ipv6Addr::UNSPECIFIED);
    node.servers[1] = Some(HttpServer::start(
        &node.topology.targets[1].ns,
        SocketAddr::new(any, TARGET_PORT),
        "target1",
    ));
    node.wait_announced(&sluice, "the VIP to come back with a healthy target");
}

#[test]
fn drain_resume_restart_and_down() {
    let node = Node::new("");
    let mut sluice = node.start_sluice();
    node.wait_announced(&sluice, "the router to learn the VIP");

    let out = node.sluice(&["node", "drain"]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("node draining"));
    node.wait_withdrawn("sluice node drain to withdraw the VIP");
    // Established flows are this node's to finish: forwarding goes on.
    assert!(http_get(
        &node.topology.client.ns,
        SocketAddr::new(VIP.into(), PORT),
        "/"
    )
    .is_ok());

    // A restarted node stays drained.
    sluice.stop(libc::SIGTERM, Duration::from_secs(20));
    let sluice = node.start_sluice();
    assert_eq!(node.node_status()["node"], "draining");
    assert!(node.route().is_empty(), "{}", node.route());

    let out = node.sluice(&["node", "resume"]);
    assert!(out.status.success(), "{out:?}");
    node.wait_announced(&sluice, "sluice node resume to announce the VIP again");

    // A plain stop keeps it announced (forwarding goes on, the next daemon takes over)...
    let mut sluice = sluice;
    sluice.stop(libc::SIGTERM, Duration::from_secs(20));
    assert!(!node.route().is_empty(), "a stop withdrew the VIP");
    // ... `sluice down` withdraws it.
    let sluice = node.start_sluice();
    node.wait_announced(&sluice, "the VIP after a restart");
    let out = node.sluice(&["down", "--pin-dir", node.pin_dir.arg()]);
    assert!(out.status.success(), "{out:?}");
    node.wait_withdrawn("sluice down to withdraw the VIP");
    let file = std::fs::read_to_string(&node.routes_file).unwrap();
    assert!(!file.contains("route "), "{file}");
}

#[test]
fn bird_away_and_back_is_caught_up_with() {
    let mut node = Node::new("");
    // Without --bird-routes there is nothing to drain: refused in one line.
    let mut plain = node.start_sluice_with(&[]);
    let out = node.sluice(&["node", "drain"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("start it with --bird-routes"),
        "{out:?}"
    );
    plain.stop(libc::SIGTERM, Duration::from_secs(20));

    node.node_bird.stop();
    let sluice = node.start_sluice();
    wait_until(CONVERGE, "sluice to say BIRD cannot be reached", || {
        node.node_status()["error"]
            .as_str()
            .is_some_and(|e| e.contains("asking BIRD on"))
    });
    let shown = node.sluice(&["status"]);
    assert!(
        String::from_utf8_lossy(&shown.stdout).contains("BIRD: asking BIRD on"),
        "{shown:?}"
    );
    node.node_bird.restart(&node.topology.lb);
    // BIRD reads the routes file sluice kept writing, so the route may be back before
    // sluice's next attempt to reconfigure clears the error.
    node.wait_announced(&sluice, "the VIP once BIRD is back");
    wait_until(CONVERGE, "sluice to reach BIRD again", || {
        node.node_status()["error"].is_null()
    });
    assert_eq!(
        node.node_status()["announced"],
        serde_json::json!([VIP.to_string()])
    );
}

#[test]
fn a_routes_file_sluice_cannot_write_stops_the_start() {
    require_root();
    // In a namespace of its own: if the check ever let it through, nothing outside is touched.
    let ns = Namespace::new("badbird");
    let pin_dir = PinDir::new();
    let socket = ApiSocket::new();
    let mut cmd = ns.command(crate::netns::sluice_binary());
    cmd.args(["run", "--iface", "lo", "--pin-dir", pin_dir.arg()])
        .args(["--socket", socket.arg(), "--metrics-address", "off"])
        .args(["--bird-routes", "/nonexistent/bird/sluice.conf"]);
    let mut sluice = ns.spawn(cmd);
    // Bounded: a sluice that starts anyway is killed with the namespace.
    let status = sluice.wait_timeout(Duration::from_secs(20));
    let stderr = sluice.stderr();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--bird-routes /nonexistent/bird/sluice.conf: its directory /nonexistent/bird does not exist"),
        "{stderr}"
    );
    assert!(ns.xdp_attached("lo").is_none());
}
