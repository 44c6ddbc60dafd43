//! `cargo xtask demo --nodes N`: several sluice nodes behind a router, in namespaces (see
//! `sluice_tests::multinode`).
//!
//! ```text
//!  client ── router (BIRD: BGP from every node, ECMP) ── fabric ─┬─ node0 ─┐
//!                 └──────────────── targets' bridge ─────────────├─ node1 ─┼── target0..
//!                                                                └─ node2 ─┘
//! ```
//! Each node runs sluice (`dsr`, so replies go from the targets through the router) and its
//! own BIRD, which sluice tells what to announce. The nodes share one model in etcd (in a
//! namespace of its own on the fabric, `sluice run --store etcd://...`): the first node seeds
//! it from the demo's configuration, which holds every target but the last; once traffic flows,
//! the demo adds the last target with the CLI on node 1 (the second node) and prints the
//! revision each node runs. The demo prints the router's route to the VIP (one next hop per
//! node), which target answered each request, and what each node forwarded; Ctrl-C (or
//! `--duration`) stops everything and removes every namespace. With `--check`, the added target
//! must answer too: the change reached the nodes through the store.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    process::Stdio,
    sync::atomic::Ordering,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use sluice_tests::{
    etcd::Etcd,
    multinode::Cluster,
    netns::{unique_pin_dir, unique_socket_path, Namespace},
    servers::HttpServer,
};

use crate::demo::{
    curl, Daemon, DemoArgs, RemoveDirOnDrop, RemoveOnDrop, CHECK_MAX_ROUNDS, REQUESTS_PER_ROUND,
    STOP,
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 112, 100, 1);
const PORT: u16 = 80;
/// A node's first announcement: sluice starts, health checks pass, BGP converges.
const ANNOUNCED: Duration = Duration::from_secs(60);
/// etcd's address, on the fabric beside the nodes.
const ETCD_IP: Ipv4Addr = Ipv4Addr::new(10, 112, 1, 250);
/// Where the nodes keep their model in etcd.
const PREFIX: &str = "/sluice-demo";
/// A change made on one node runs on every node within this (measured well under a second).
const CONVERGED: Duration = Duration::from_secs(10);
/// The round after which the demo adds the last target on node 1.
const CHANGE_ROUND: u64 = 2;

struct RunningNode {
    daemon: Daemon,
    socket: std::path::PathBuf,
    _pins: RemoveDirOnDrop,
}

pub fn demo_nodes(sluice: &Path, args: &DemoArgs) -> anyhow::Result<()> {
    let nodes = usize::from(args.nodes);
    let n_targets = usize::from(args.targets);
    println!(
        "demo: building the topology (client, router running BIRD, {nodes} sluice nodes with their own BIRD, {n_targets} targets); several nodes use dsr mode"
    );
    let mut cluster = Cluster::new(n_targets, nodes);
    let any = SocketAddr::new(IpAddr::from(Ipv4Addr::UNSPECIFIED), PORT);
    let servers: Vec<HttpServer> = cluster
        .targets
        .iter()
        .enumerate()
        .map(|(j, t)| {
            // dsr: the targets accept the VIP as their own and answer from it.
            t.ns.sysctl("net.ipv4.conf.all.arp_ignore", "1");
            t.ns.sysctl("net.ipv4.conf.all.arp_announce", "2");
            t.ns.add_addr("lo", &format!("{VIP}/32"));
            HttpServer::start(&t.ns, any, &format!("target{j}"))
        })
        .collect();

    let config = std::env::temp_dir().join(format!("{}-demo.toml", cluster.router.name()));
    if n_targets < 2 {
        bail!("several nodes need at least two targets: the demo adds the last one with the CLI");
    }
    let (etcd_ns, etcd) = start_etcd(&cluster)?;
    let store = format!("etcd://{}{PREFIX}", etcd.endpoint);
    println!(
        "demo: etcd runs in namespace {}; every node follows the model at {store}",
        etcd_ns.name()
    );
    // The last target joins later, through the CLI of one node and the store.
    let added = cluster.targets[n_targets - 1].v4;
    let targets: Vec<String> = cluster.targets[..n_targets - 1]
        .iter()
        .map(|t| format!("{{ address = \"{}\" }}", t.v4))
        .collect();
    let model = format!(
        "[[listener]]\nname = \"web\"\naddress = \"{VIP}\"\nport = {PORT}\nprotocol = \"tcp\"\nmode = \"dsr\"\ndefault_target_group = \"web\"\n\n\
         [[target_group]]\nname = \"web\"\nderegistration_delay = 5\ntargets = [{}]\n\
         health_check = {{ interval = \"1s\", timeout = \"500ms\", healthy_threshold = 2, unhealthy_threshold = 2 }}\n",
        targets.join(", ")
    );
    std::fs::write(&config, &model).with_context(|| format!("writing {}", config.display()))?;
    let _config_file = RemoveOnDrop(config.clone());
    println!(
        "demo: the model the first node seeds the store with ({}):\n{model}",
        config.display()
    );

    let mut running = Vec::new();
    for i in 0..nodes {
        let node = cluster.add_node(i);
        let pin_dir = unique_pin_dir();
        let pins = RemoveDirOnDrop(pin_dir.clone());
        let socket = unique_socket_path();
        let daemon = Daemon(
            node.ns
                .command(sluice)
                .args(["run", "--iface", "eth0", "--iface", "eth1", "--pin-dir"])
                .arg(&pin_dir)
                .arg("--socket")
                .arg(&socket)
                .args(["--store", &store, "--node-name", &format!("node{i}")])
                .arg("--config")
                .arg(&config)
                .args(["--metrics-address", "off", "--bird-routes"])
                .arg(&node.routes_file)
                .arg("--bird-socket")
                .arg(&node.bird.socket)
                .stdin(Stdio::null())
                .spawn()
                .with_context(|| format!("starting sluice on node{i}"))?,
        );
        running.push(RunningNode {
            daemon,
            socket,
            _pins: pins,
        });
    }
    let prefix = format!("{VIP}/32");
    let all: Vec<usize> = (0..nodes).collect();
    let deadline = Instant::now() + ANNOUNCED;
    while cluster.next_hops(&prefix).len() < nodes {
        for (i, node) in running.iter_mut().enumerate() {
            if let Some(status) = node.daemon.0.try_wait()? {
                bail!("sluice on node{i} exited early ({status})");
            }
        }
        if Instant::now() >= deadline || STOP.load(Ordering::SeqCst) {
            bail!(
                "the router did not learn {VIP} from every node within {} s: next hops {:?}",
                ANNOUNCED.as_secs(),
                cluster.next_hops(&prefix)
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
    cluster.wait_next_hops(&prefix, &all, Duration::from_secs(5));
    println!(
        "demo: the router's route to {VIP}: {}\n",
        sluice_tests::bird::route(&cluster.router, &prefix).replace('\n', " ")
    );

    let forwarded = |socket: &Path| -> anyhow::Result<u64> {
        let stats: serde_json::Value =
            serde_json::from_str(&cli(sluice, socket, &["stats", "--json"])?)?;
        Ok(stats["counters"]["forward_dsr"]["packets"]
            .as_u64()
            .unwrap_or(0))
    };
    let applied = |socket: &Path| -> anyhow::Result<Option<i64>> {
        let status: serde_json::Value =
            serde_json::from_str(&cli(sluice, socket, &["status", "--json"])?)?;
        Ok(status["store"]["applied_revision"].as_i64())
    };
    let mut changed = false;

    let end = Instant::now() + Duration::from_secs(args.duration);
    let mut totals: BTreeMap<String, usize> = BTreeMap::new();
    let mut per_node = vec![0u64; nodes];
    let mut round = 0u64;
    let done = |totals: &BTreeMap<String, usize>, per_node: &[u64], changed: bool| {
        changed
            && (0..n_targets).all(|j| totals.contains_key(&format!("target{j}")))
            && per_node.iter().all(|&p| p > 0)
    };
    while !STOP.load(Ordering::SeqCst)
        && (Instant::now() < end
            || (args.check && round < CHECK_MAX_ROUNDS && !done(&totals, &per_node, changed)))
    {
        round += 1;
        let answers: Vec<String> = (0..REQUESTS_PER_ROUND)
            .map(|_| curl(&cluster.client, &format!("http://{VIP}:{PORT}/")))
            .collect();
        for answer in &answers {
            *totals.entry(answer.clone()).or_insert(0) += 1;
        }
        for (i, node) in running.iter().enumerate() {
            per_node[i] = forwarded(&node.socket)?;
        }
        println!(
            "round {round}: {} | packets forwarded per node: {}",
            answers.join(" "),
            per_node
                .iter()
                .enumerate()
                .map(|(i, p)| format!("node{i}={p}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        if round == CHANGE_ROUND && nodes > 1 {
            let node = &running[1];
            let answer = cli(
                sluice,
                &node.socket,
                &["target", "add", "web", &added.to_string()],
            )?;
            println!(
                "demo: node1$ sluice target add web {added}\n{}",
                answer.trim_end()
            );
            let issued = Instant::now();
            let revision = applied(&node.socket)?;
            loop {
                let revisions = running
                    .iter()
                    .map(|n| applied(&n.socket))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                if revisions.iter().all(|r| *r == revision) {
                    println!(
                        "demo: every node runs revision {} of the model, {} ms after the change",
                        revision.unwrap_or_default(),
                        issued.elapsed().as_millis()
                    );
                    break;
                }
                if issued.elapsed() > CONVERGED || STOP.load(Ordering::SeqCst) {
                    bail!(
                        "the nodes did not all run revision {revision:?} within {CONVERGED:?}: {revisions:?}"
                    );
                }
                thread::sleep(Duration::from_millis(50));
            }
            changed = true;
        }
        for _ in 0..10 {
            if STOP.load(Ordering::SeqCst) {
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    println!("\ndemo: stopping sluice on every node and removing the namespaces");
    for node in &mut running {
        node.daemon.stop()?;
    }
    drop(running);
    drop(servers);
    drop(etcd);
    drop(etcd_ns);
    drop(cluster);
    println!("demo: done");
    if args.check {
        if !done(&totals, &per_node, changed) || totals.keys().any(|k| !k.starts_with("target")) {
            bail!(
                "demo check failed: expected answers from all {n_targets} targets (the last added on node1 through the store) through all {nodes} nodes, got {totals:?}, packets per node {per_node:?}"
            );
        }
        println!("demo: check passed, every target answered and every node forwarded");
    }
    Ok(())
}

/// etcd in a namespace of its own on the fabric.
fn start_etcd(cluster: &Cluster) -> anyhow::Result<(Namespace, Etcd)> {
    if !Path::new(sluice_tests::etcd::ETCD).exists() {
        bail!(
            "{} is missing: install Debian's etcd-server (cargo xtask setup does)",
            sluice_tests::etcd::ETCD
        );
    }
    let ns = Namespace::new("etcd");
    cluster.fabric.connect("etcd", &ns, "eth0");
    ns.add_addr("eth0", &format!("{ETCD_IP}/24"));
    let etcd = Etcd::start(&ns, ETCD_IP);
    Ok((ns, etcd))
}

/// `sluice ARGS --socket SOCKET`: its standard output, or its error as a sentence.
fn cli(sluice: &Path, socket: &Path, args: &[&str]) -> anyhow::Result<String> {
    crate::cmd::output(
        std::process::Command::new(sluice)
            .args(args)
            .arg("--socket")
            .arg(socket),
    )
}
