//! Several nodes sharing one model through etcd (`sluice run --store etcd://...`), in the ECMP
//! topology of `crate::multinode` with etcd in a namespace of its own on the fabric: a change
//! made with the CLI on one node reaches all three (bound measured and logged) and their
//! Maglev tables are identical; edits on two nodes at once are all kept; an invalid model
//! written by hand is refused by every node with the reason in status while traffic goes on;
//! losing etcd (killed, then cut off while someone writes into it) keeps traffic flowing,
//! refuses changes with a sentence and converges when etcd is back; a restarted node resumes
//! from the store; a stickiness cookie minted by one node is honoured by another; bad
//! `--store` inputs are refused with a sentence.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    process::Output,
    time::{Duration, Instant},
};

use super::namespaces::{sluice_output, start_sluice, ApiSocket, PinDir, TIMEOUT};
use crate::{
    etcd::Etcd,
    http_servers::L7Server,
    multinode::Cluster,
    netns::{wait_until, ChildGuard, Namespace},
    servers::{EchoClient, EchoServer},
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 112, 100, 1);
const PORT: u16 = 7000;
const TARGETS: usize = 6;
const ETCD_IP: Ipv4Addr = Ipv4Addr::new(10, 112, 1, 250);
const PREFIX: &str = "/sluice-test";
/// A change reaches every node within this (measured: well under a second; see
/// docs/OPERATING.md).
const CONVERGENCE_BOUND: Duration = Duration::from_secs(5);
/// A node notices a lost store within its keep-alive (3 s) plus a call's timeout (3 s).
const OUTAGE_BOUND: Duration = Duration::from_secs(15);
/// After etcd returns: the reconnection backoff (at most 5 s) plus a read and a watch.
const RETURN_BOUND: Duration = Duration::from_secs(20);
const ANNOUNCE_BOUND: Duration = Duration::from_secs(30);
const CONNECTIONS: usize = 60;

struct Node {
    child: Option<ChildGuard>,
    socket: ApiSocket,
    pin_dir: PinDir,
}

fn store_url() -> String {
    format!("etcd://{ETCD_IP}:2379{PREFIX}")
}

fn model_key() -> String {
    format!("{PREFIX}/model")
}

fn model(targets: usize) -> String {
    let targets = (0..targets)
        .map(|j| format!("{{ address = \"10.112.2.{}\" }}", 100 + j))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "[[listener]]\nname = \"echo\"\naddress = \"{VIP}\"\nport = {PORT}\nprotocol = \"tcp\"\nmode = \"dsr\"\ndefault_target_group = \"echo\"\nmaglev_table_size = 251\n\n\
         [[target_group]]\nname = \"echo\"\nderegistration_delay = 1\ntargets = [{targets}]\n\
         health_check = {{ interval = \"500ms\", timeout = \"400ms\", healthy_threshold = 2, unhealthy_threshold = 2 }}\n"
    )
}

/// etcd in its own namespace on the fabric.
fn start_etcd(cluster: &Cluster) -> (Namespace, Etcd) {
    let ns = Namespace::new("etcd");
    cluster.fabric.connect("etcd", &ns, "eth0");
    ns.add_addr("eth0", &format!("{ETCD_IP}/24"));
    let etcd = Etcd::start(&ns, ETCD_IP);
    (ns, etcd)
}

/// `sluice run --store` on node `i` (added to the cluster unless it is there), with `extra`.
fn start_node(cluster: &mut Cluster, i: usize, extra: &[&str]) -> Node {
    if cluster.nodes.get(i).is_none_or(Option::is_none) {
        cluster.add_node(i);
    }
    let node = cluster.nodes[i].as_ref().unwrap();
    let socket = ApiSocket::new();
    let pin_dir = PinDir::new();
    let child = run_node(node, &socket, &pin_dir, extra);
    Node {
        child: Some(child),
        socket,
        pin_dir,
    }
}

fn run_node(
    node: &crate::multinode::Node,
    socket: &ApiSocket,
    pin_dir: &PinDir,
    extra: &[&str],
) -> ChildGuard {
    let args = node_args(node, extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    start_sluice(&node.ns, "eth0", pin_dir, socket, &args)
}

/// `sluice run`'s arguments for `node` besides its interface, pin directory and socket.
fn node_args(node: &crate::multinode::Node, extra: &[&str]) -> Vec<String> {
    let keys = std::env::temp_dir().join(format!("{}-stickiness.keys", node.ns.name()));
    let mut args: Vec<String> = [
        "--iface",
        "eth1",
        "--store",
        &store_url(),
        "--node-name",
        &format!("node{}", node.index),
        "--metrics-address",
        "off",
        "--stickiness-keys",
        keys.to_str().unwrap(),
        "--bird-routes",
        node.routes_file.to_str().unwrap(),
        "--bird-socket",
        node.bird.socket.to_str().unwrap(),
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

fn status(node: &Node) -> serde_json::Value {
    let out = sluice_output(&["status", "--json", "--socket", node.socket.arg()]);
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn applied(node: &Node) -> Option<i64> {
    status(node)["store"]["applied_revision"].as_i64()
}

fn tables(node: &Node) -> serde_json::Value {
    let out = sluice_output(&["tables", "--json", "--socket", node.socket.arg()]);
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn sluice(node: &Node, args: &[&str]) -> Output {
    let mut all = args.to_vec();
    all.extend(["--socket", node.socket.arg()]);
    sluice_output(&all)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Waits until every node runs `revision`; how long that took.
fn converge(nodes: &[&Node], revision: i64, bound: Duration, what: &str) -> Duration {
    let start = Instant::now();
    wait_until(
        bound,
        &format!("every node on revision {revision} ({what})"),
        || nodes.iter().all(|n| applied(n) == Some(revision)),
    );
    start.elapsed()
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

/// New connections through the VIP, one echo each: how many failed.
fn fresh_connections(cluster: &Cluster, n: usize) -> usize {
    let vip = SocketAddr::new(VIP.into(), PORT);
    (0..n)
        .filter(|_| {
            EchoClient::connect(&cluster.client, vip)
                .and_then(|mut c| c.echo(b"fresh"))
                .map_or(true, |answer| answer != b"fresh")
        })
        .count()
}

#[test]
fn three_nodes_follow_one_model_in_etcd_through_edits_invalid_revisions_and_outages() {
    crate::netns::require_root();
    let mut cluster = Cluster::new(TARGETS, 3);
    let any = SocketAddr::new(IpAddr::from(Ipv4Addr::UNSPECIFIED), PORT);
    let mut _servers = Vec::new();
    for target in &cluster.targets {
        target.ns.sysctl("net.ipv4.conf.all.arp_ignore", "1");
        target.ns.sysctl("net.ipv4.conf.all.arp_announce", "2");
        target.ns.add_addr("lo", &format!("{VIP}/32"));
        _servers.push(EchoServer::start(&target.ns, any, "echo"));
    }
    let (etcd_ns, mut etcd) = start_etcd(&cluster);
    let config = std::env::temp_dir().join(format!("{}-store.toml", cluster.router.name()));
    std::fs::write(&config, model(TARGETS - 1)).unwrap();
    let _config = RemoveOnDrop(config.clone());
    let config_arg = config.to_str().unwrap().to_string();

    // Node 0 seeds the empty store from its file; the others are given the file too, and the
    // store wins.
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| start_node(&mut cluster, i, &["--config", &config_arg]))
        .collect();
    let seeded = etcd.revision(&etcd_ns, &model_key()).expect("seeded");
    assert!(
        nodes[0]
            .child
            .as_ref()
            .unwrap()
            .stderr()
            .contains("held no model: seeded it from"),
        "{}",
        nodes[0].child.as_ref().unwrap().stderr()
    );
    for node in &nodes[1..] {
        let log = node.child.as_ref().unwrap().stderr();
        assert!(log.contains("the store wins"), "{log}");
    }
    let all: Vec<&Node> = nodes.iter().collect();
    converge(&all, seeded, TIMEOUT, "start");
    let prefix = format!("{VIP}/32");
    cluster.wait_next_hops(&prefix, &[0, 1, 2], ANNOUNCE_BOUND);
    let vip = SocketAddr::new(VIP.into(), PORT);
    let mut clients: Vec<EchoClient> = (0..CONNECTIONS)
        .map(|i| {
            EchoClient::connect(&cluster.client, vip)
                .unwrap_or_else(|e| panic!("connection {i} to the VIP: {e}"))
        })
        .collect();
    assert_eq!(echo_all(&mut clients, 1), 0);

    // A change with the CLI on node 2 (index 1) reaches all three.
    let started = Instant::now();
    let out = sluice(&nodes[1], &["target", "add", "echo", "10.112.2.105"]);
    assert!(out.status.success(), "{}", text(&out));
    let answered = started.elapsed();
    let revision = etcd.revision(&etcd_ns, &model_key()).unwrap();
    assert!(revision > seeded);
    assert!(
        text(&out).contains(&format!(
            "revision {revision} of the model in {}, applied here",
            store_url()
        )),
        "{}",
        text(&out)
    );
    // The CLI returns once its node runs the new revision.
    assert_eq!(applied(&nodes[1]), Some(revision));
    let all: Vec<&Node> = nodes.iter().collect();
    converge(&all, revision, CONVERGENCE_BOUND, "a CLI edit");
    eprintln!(
        "etcd_store: `sluice target add` on node 2 answered in {} ms; all three nodes ran revision {revision} {} ms after it was issued (bound {CONVERGENCE_BOUND:?})",
        answered.as_millis(),
        started.elapsed().as_millis()
    );
    let first = tables(&nodes[0]);
    assert_eq!(first["echo"]["slots"].as_array().unwrap().len(), 251);
    assert!(first["echo"]["slots"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s == "10.112.2.105:7000"));
    for node in &nodes[1..] {
        assert_eq!(
            tables(node)["echo"]["sha256"],
            first["echo"]["sha256"],
            "Maglev tables differ"
        );
        assert_eq!(tables(node), first);
    }
    // Every node sees every node's revision.
    wait_until(TIMEOUT, "three node reports on the revision", || {
        let nodes_seen = &status(&nodes[0])["store"]["nodes"];
        (0..3).all(|i| nodes_seen[format!("node{i}")]["applied_revision"] == revision)
    });
    let shown = text(&sluice(&nodes[2], &["status"]));
    assert!(
        shown.contains(&format!(
            "serving revision {revision}, latest seen {revision}"
        )) && shown.contains(&format!("node node1: revision {revision}")),
        "{shown}"
    );

    // Edits on two nodes at once: each is kept, or refused with a sentence; no node differs.
    let spawn = |node: &Node, address: &str| {
        std::process::Command::new(crate::netns::sluice_binary())
            .args([
                "target",
                "set-weight",
                "echo",
                address,
                "7",
                "--socket",
                node.socket.arg(),
            ])
            .env_remove("RUST_LOG")
            .spawn()
            .unwrap()
    };
    let a = spawn(&nodes[0], "10.112.2.100");
    let b = spawn(&nodes[2], "10.112.2.101");
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    for out in [&a, &b] {
        assert!(
            out.status.success() || text(out).contains("try again"),
            "{}",
            text(out)
        );
    }
    let revision = etcd.revision(&etcd_ns, &model_key()).unwrap();
    let all: Vec<&Node> = nodes.iter().collect();
    converge(&all, revision, CONVERGENCE_BOUND, "two edits at once");
    let stored = etcd.value(&etcd_ns, &model_key()).unwrap();
    let weights = stored.matches("weight = 7").count();
    let kept = [&a, &b].iter().filter(|o| o.status.success()).count();
    assert_eq!(weights, kept, "an accepted edit was lost:\n{stored}");
    assert!(kept >= 1, "both edits refused: {} / {}", text(&a), text(&b));
    let first = tables(&nodes[0]);
    for node in &nodes[1..] {
        assert_eq!(tables(node), first);
    }

    // An invalid model written by hand: refused by every node, which keeps forwarding.
    let valid = stored;
    etcd.put(
        &etcd_ns,
        &model_key(),
        "[[listener]]\nname = \"echo\"\nport = \"seventy\"\n",
    );
    let bad = etcd.revision(&etcd_ns, &model_key()).unwrap();
    wait_until(
        CONVERGENCE_BOUND,
        "every node refusing the invalid revision",
        || {
            nodes
                .iter()
                .all(|n| status(n)["store"]["refused"]["revision"] == bad)
        },
    );
    for node in &nodes {
        let store = &status(node)["store"];
        assert_eq!(store["applied_revision"], revision);
        let reason = store["refused"]["reason"].as_str().unwrap();
        assert!(reason.contains(&format!("revision {bad}")), "{reason}");
    }
    assert!(text(&sluice(&nodes[0], &["status"])).contains(&format!("revision {bad} refused")));
    assert_eq!(
        echo_all(&mut clients, 2),
        0,
        "traffic failed on the kept revision"
    );
    assert_eq!(fresh_connections(&cluster, 20), 0);
    etcd.put(&etcd_ns, &model_key(), &valid);
    let revision = etcd.revision(&etcd_ns, &model_key()).unwrap();
    let all: Vec<&Node> = nodes.iter().collect();
    converge(&all, revision, CONVERGENCE_BOUND, "the next valid revision");
    assert!(status(&nodes[1])["store"]["refused"].is_null());

    // Losing etcd: the nodes keep forwarding and say so; changes are refused.
    etcd.kill();
    wait_until(
        OUTAGE_BOUND,
        "every node to notice the store is gone",
        || {
            nodes
                .iter()
                .all(|n| status(n)["store"]["reachable"] == false)
        },
    );
    assert_eq!(echo_all(&mut clients, 3), 0, "traffic failed without etcd");
    assert_eq!(
        fresh_connections(&cluster, 20),
        0,
        "new connections failed without etcd"
    );
    let shown = text(&sluice(&nodes[0], &["status"]));
    assert!(
        shown.contains("store unreachable for")
            && shown.contains(&format!("serving revision {revision}")),
        "{shown}"
    );
    let refused = sluice(&nodes[1], &["target", "remove", "echo", "10.112.2.105"]);
    assert!(!refused.status.success());
    let said = text(&refused);
    assert!(
        said.contains(&format!("the store {} cannot be reached", store_url()))
            && said.contains(&format!("keeps running revision {revision}")),
        "{said}"
    );
    etcd.restart(&etcd_ns);
    let all: Vec<&Node> = nodes.iter().collect();
    let back = Instant::now();
    wait_until(RETURN_BOUND, "every node to reach the store again", || {
        nodes
            .iter()
            .all(|n| status(n)["store"]["reachable"] == true)
    });
    converge(&all, revision, RETURN_BOUND, "etcd back");
    eprintln!(
        "etcd_store: after etcd restarted, every node reached it again within {} ms",
        back.elapsed().as_millis()
    );

    // Cut off from the nodes while an operator writes into it: they converge on return.
    cluster.fabric.ns.ip(&["link", "set", "etcd", "down"]);
    wait_until(OUTAGE_BOUND, "every node to notice it is cut off", || {
        nodes
            .iter()
            .all(|n| status(n)["store"]["reachable"] == false)
    });
    etcd.put(&etcd_ns, &model_key(), &model(TARGETS));
    let written_meanwhile = etcd.revision(&etcd_ns, &model_key()).unwrap();
    assert_eq!(echo_all(&mut clients, 4), 0);
    cluster.fabric.ns.ip(&["link", "set", "etcd", "up"]);
    let all: Vec<&Node> = nodes.iter().collect();
    converge(
        &all,
        written_meanwhile,
        RETURN_BOUND,
        "a write made while they were cut off",
    );
    let first = tables(&nodes[0]);
    for node in &nodes[1..] {
        assert_eq!(tables(node), first);
    }

    // A restart (the next daemon adopts the pinned data plane) resumes from the store.
    let out = sluice(
        &nodes[1],
        &["target", "set-weight", "echo", "10.112.2.102", "3"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let latest = etcd.revision(&etcd_ns, &model_key()).unwrap();
    let mut old = nodes[1].child.take().unwrap();
    let stopped = old.stop(libc::SIGTERM, TIMEOUT);
    assert!(stopped.success(), "{}", old.stderr());
    let node = cluster.nodes[1].as_ref().unwrap();
    nodes[1].child = Some(run_node(node, &nodes[1].socket, &nodes[1].pin_dir, &[]));
    let all: Vec<&Node> = nodes.iter().collect();
    converge(&all, latest, TIMEOUT, "a restarted node");
    assert_eq!(tables(&nodes[1]), tables(&nodes[0]));
    assert_eq!(
        echo_all(&mut clients, 5),
        0,
        "traffic failed across a restart"
    );
    drop(etcd);
}

#[test]
fn a_stickiness_cookie_minted_by_one_node_is_honoured_by_another() {
    crate::netns::require_root();
    let mut cluster = Cluster::new(3, 2);
    let _servers: Vec<L7Server> = cluster
        .targets
        .iter()
        .enumerate()
        .map(|(j, t)| {
            L7Server::start(
                &t.ns,
                SocketAddr::new(t.v4.into(), 8080),
                &format!("target{j}"),
            )
        })
        .collect();
    let (etcd_ns, etcd) = start_etcd(&cluster);
    let targets = (0..3)
        .map(|j| format!("{{ address = \"10.112.2.{}\" }}", 100 + j))
        .collect::<Vec<_>>()
        .join(", ");
    let config = std::env::temp_dir().join(format!("{}-sticky.toml", cluster.router.name()));
    std::fs::write(
        &config,
        format!(
            "[[listener]]\nname = \"web\"\naddress = \"0.0.0.0\"\nport = 80\nprotocol = \"http\"\ndefault_target_group = \"web\"\n\n\
             [[target_group]]\nname = \"web\"\nport = 8080\nderegistration_delay = 1\n\
             stickiness = {{ type = \"lb_cookie\", duration = 3600 }}\ntargets = [{targets}]\n\
             health_check = {{ protocol = \"http\", path = \"/health\", interval = \"300ms\", timeout = \"250ms\", healthy_threshold = 2, unhealthy_threshold = 2 }}\n"
        ),
    )
    .unwrap();
    let _config = RemoveOnDrop(config.clone());
    // Both nodes start at once on an empty store, each with --config: exactly one seeds it.
    cluster.add_node(0);
    cluster.add_node(1);
    let config_arg = config.to_str().unwrap();
    // Spawned together, then waited for: their start-ups overlap.
    let mut nodes: Vec<Node> = (0..2)
        .map(|i| {
            let node = cluster.nodes[i].as_ref().unwrap();
            let socket = ApiSocket::new();
            let pin_dir = PinDir::new();
            let mut cmd = node.ns.command(crate::netns::sluice_binary());
            cmd.args(["run", "--iface", "eth0", "--pin-dir", pin_dir.arg()])
                .args(["--socket", socket.arg()])
                .args(node_args(node, &["--config", config_arg]))
                .env_remove("RUST_LOG");
            Node {
                child: Some(node.ns.spawn(cmd)),
                socket,
                pin_dir,
            }
        })
        .collect();
    for (i, node) in nodes.iter_mut().enumerate() {
        let child = node.child.as_ref().unwrap();
        wait_until(TIMEOUT, &format!("node {i} to start"), || {
            if let Some(status) = child.try_status() {
                panic!("node {i} exited ({status}): {}", child.stderr());
            }
            child.stderr().contains("listener(s) from")
        });
    }
    let logs: Vec<String> = nodes
        .iter()
        .map(|n| n.child.as_ref().unwrap().stderr())
        .collect();
    let seeders = logs
        .iter()
        .filter(|l| l.contains("held no model: seeded it from"))
        .count();
    assert_eq!(seeders, 1, "{logs:#?}");
    assert_eq!(
        applied(&nodes[0]),
        applied(&nodes[1]),
        "the nodes started on different revisions"
    );
    // Each node's key file now holds the store's keys.
    let key_file = |i: usize| {
        let ns = cluster.nodes[i].as_ref().unwrap().ns.name().to_string();
        std::env::temp_dir().join(format!("{ns}-stickiness.keys"))
    };
    let keys: Vec<String> = (0..2)
        .map(|i| std::fs::read_to_string(key_file(i)).unwrap())
        .collect();
    assert_eq!(keys[0], keys[1], "the nodes' key files differ");
    let get = |node: usize, cookie: Option<&str>| -> (String, Option<String>) {
        let url = format!("http://{}/", Cluster::node_fabric(node));
        let mut cmd = cluster.client.command("curl");
        cmd.args(["-s", "-i", "--max-time", "5"]);
        if let Some(cookie) = cookie {
            cmd.args(["-H", &format!("Cookie: {cookie}")]);
        }
        let out = cmd.arg(&url).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(text.starts_with("HTTP/1.1 200"), "{url}: {text}");
        let set = text
            .lines()
            .find_map(|l| l.strip_prefix("set-cookie: SLUICE="))
            .map(|v| format!("SLUICE={}", v.split(';').next().unwrap()));
        (
            text.rsplit("\r\n\r\n").next().unwrap().trim().to_string(),
            set,
        )
    };
    wait_until(TIMEOUT, "both nodes to serve", || {
        (0..2).all(|i| {
            let url = format!("http://{}/", Cluster::node_fabric(i));
            cluster
                .client
                .command("curl")
                .args([
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--max-time",
                    "2",
                    &url,
                ])
                .output()
                .is_ok_and(|o| o.stdout == b"200")
        })
    });
    // Cookies minted by node 0 for each target, presented to node 1: the same target.
    let mut pinned = std::collections::BTreeMap::new();
    for _ in 0..30 {
        let (target, cookie) = get(0, None);
        pinned
            .entry(target)
            .or_insert(cookie.expect("node 0 sets a cookie"));
    }
    assert!(
        pinned.len() >= 2,
        "cookieless requests stayed on {pinned:?}"
    );
    for (target, cookie) in &pinned {
        for _ in 0..10 {
            let (answered, _) = get(1, Some(cookie));
            assert_eq!(&answered, target, "node 1 did not honour node 0's cookie");
        }
    }

    // New keys written into the store (none of the old ones kept): both nodes take them up at
    // once, so an old cookie no longer verifies (the client is pinned afresh) and a new one
    // minted by node 0 is honoured by node 1.
    let fresh = std::env::temp_dir().join(format!("{}-fresh.keys", cluster.router.name()));
    let _fresh = RemoveOnDrop(fresh.clone());
    let out = sluice_output(&[
        "stickiness",
        "rotate-key",
        "--key-file",
        fresh.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let fresh_text = std::fs::read_to_string(&fresh).unwrap();
    etcd.put(&etcd_ns, &format!("{PREFIX}/stickiness-keys"), &fresh_text);
    wait_until(TIMEOUT, "both key files to hold the new keys", || {
        (0..2).all(|i| std::fs::read_to_string(key_file(i)).is_ok_and(|t| t == fresh_text))
    });
    // A cookie no key verifies is pinned afresh, like no cookie: requests spread again.
    let (old_target, old_cookie) = pinned.iter().next().unwrap();
    wait_until(
        TIMEOUT,
        "node 1 to stop honouring a cookie of the old keys",
        || (0..20).any(|_| get(1, Some(old_cookie)).0 != *old_target),
    );
    let (target, cookie) = get(0, None);
    let cookie = cookie.expect("node 0 sets a cookie");
    for _ in 0..10 {
        let (answered, _) = get(1, Some(&cookie));
        assert_eq!(
            answered, target,
            "node 1 did not honour a cookie of the new keys"
        );
    }
    drop(nodes);
    for i in 0..2 {
        let _ = std::fs::remove_file(key_file(i));
    }
}

#[test]
fn bad_store_inputs_are_refused_with_a_sentence() {
    crate::netns::require_root();
    let ns = Namespace::new("store-inputs");
    let run = |store: &str, extra: &[&str]| -> (Output, Duration) {
        let socket = ApiSocket::new();
        let pin_dir = PinDir::new();
        let mut cmd = ns.command(crate::netns::sluice_binary());
        cmd.args([
            "run",
            "--store",
            store,
            "--socket",
            socket.arg(),
            "--pin-dir",
            pin_dir.arg(),
        ])
        .args(["--metrics-address", "off"])
        .args(extra)
        .env_remove("RUST_LOG");
        let started = Instant::now();
        let out = cmd.output().unwrap();
        (out, started.elapsed())
    };
    let (out, _) = run("etcd://127.0.0.1:2379", &[]);
    assert!(!out.status.success());
    assert!(text(&out).contains("names no key prefix"), "{}", text(&out));
    let (out, _) = run("http://127.0.0.1:2379/s", &[]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("only etcd is supported"),
        "{}",
        text(&out)
    );
    // Nothing listens: refused after a bounded wait.
    let (out, took) = run("etcd://127.0.0.1:2399/s", &[]);
    assert!(!out.status.success());
    let said = text(&out);
    assert!(
        said.contains("the store etcd://127.0.0.1:2399/s cannot be reached")
            && said.contains("starts only with the shared model"),
        "{said}"
    );
    assert!(took < Duration::from_secs(30), "took {took:?}");
    // An empty prefix and no --config to seed it.
    let etcd = Etcd::start(&ns, Ipv4Addr::LOCALHOST);
    let (out, _) = run("etcd://127.0.0.1:2379/empty", &[]);
    assert!(!out.status.success());
    let said = text(&out);
    assert!(
        said.contains("holds no model (/empty/model is absent) and no --config was given"),
        "{said}"
    );
    assert_eq!(
        etcd.revision(&ns, "/empty/model"),
        None,
        "nothing was written"
    );
}

struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
