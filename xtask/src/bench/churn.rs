//! The connection-churn scenario: sequential TCP connections (connect, one echo, close by the
//! client) through a translation of 1,024 source ports, many times the range, once with
//! sluice in `nat` mode and once with nftables DNAT and SNAT under conntrack doing the same
//! job on the same topology (the integration tests' [`LbTopology`], one target). It reports
//! connections per second and failures; a failure is a connection that could not be made or
//! whose echo did not come back within the client's timeout.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use sluice_tests::{
    netns::{wait_until, LbTopology, Namespace},
    servers::{EchoClient, EchoServer},
};

use super::{topology::Daemon, Plan, Progress};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 111, 100, 1);
const PORT: u16 = 7000;
const TARGET_PORT: u16 = 10000;
/// The source ports both translate to: 1,024.
const PORTS: [u16; 2] = [20000, 21023];
/// A run is abandoned (and reported as such) after this long.
const LIMIT: Duration = Duration::from_secs(900);
const TIMEOUT: Duration = Duration::from_secs(20);

pub fn churn(sluice: &Path, plan: &Plan, progress: &mut Progress) -> anyhow::Result<Value> {
    let mut variants = serde_json::Map::new();
    for variant in ["sluice_nat", "nftables"] {
        progress.step(
            "churn",
            1,
            1,
            &format!(
                "{variant}: {} sequential connections",
                plan.churn_connections
            ),
        );
        let result = run(sluice, variant, plan.churn_connections)
            .unwrap_or_else(|e| json!({ "error": format!("{e:#}") }));
        variants.insert(variant.to_string(), result);
    }
    Ok(json!({
        "connections": plan.churn_connections,
        "nat_ports": u32::from(PORTS[1] - PORTS[0]) + 1,
        "variants": Value::Object(variants),
    }))
}

fn run(sluice: &Path, variant: &str, connections: u64) -> anyhow::Result<Value> {
    let topology = LbTopology::new(1);
    let target = &topology.targets[0];
    // One client making every connection: its own ports must come back quickly.
    topology.client.ns.sysctl("net.ipv4.tcp_tw_reuse", "1");
    topology
        .client
        .ns
        .sysctl("net.ipv4.ip_local_port_range", "1024 65000");
    let _echo = EchoServer::start(
        &target.ns,
        SocketAddr::new(IpAddr::from(Ipv4Addr::UNSPECIFIED), TARGET_PORT),
        "echo",
    );
    let _daemon = match variant {
        "sluice_nat" => Some(start_sluice(sluice, &topology)?),
        _ => {
            nftables(&topology.lb, target.link.v4, topology.lb_target_side.v4)?;
            None
        }
    };
    let started = Instant::now();
    let mut failures = 0u64;
    let mut first_failures = Vec::new();
    let mut made = 0u64;
    while made < connections && started.elapsed() < LIMIT {
        if let Err(e) = one_connection(&topology.client.ns) {
            failures += 1;
            if first_failures.len() < 5 {
                first_failures.push(e);
            }
        }
        made += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(json!({
        "made": made,
        "failures": failures,
        "first_failures": first_failures,
        "seconds": elapsed,
        "connections_per_second": made as f64 / elapsed,
    }))
}

fn one_connection(client: &Namespace) -> Result<(), String> {
    let mut c = EchoClient::connect(client, (VIP, PORT).into()).map_err(|e| e.to_string())?;
    match c.echo(b"ping") {
        Ok(answer) if answer == b"ping" => Ok(()),
        Ok(answer) => Err(format!("echoed {answer:?}")),
        Err(e) => Err(e.to_string()),
    }
}

fn start_sluice(sluice: &Path, topology: &LbTopology) -> anyhow::Result<Daemon> {
    let target = topology.targets[0].link.v4;
    let config = format!(
        "[[listener]]\nname = \"echo\"\naddress = \"{VIP}\"\nport = {PORT}\nprotocol = \"tcp\"\nmode = \"nat\"\ndefault_target_group = \"echo\"\n\n\
         [[target_group]]\nname = \"echo\"\nport = {TARGET_PORT}\ntargets = [{{ address = \"{target}\" }}]\n\
         health_check = {{ interval = \"200ms\", timeout = \"150ms\", healthy_threshold = 2 }}\n\n\
         [data_plane]\nnat_port_range = [{}, {}]\n",
        PORTS[0], PORTS[1]
    );
    let daemon = Daemon::start(
        sluice,
        &topology.lb,
        &config,
        &["--iface", "eth1", "--metrics-address", "off"],
    );
    wait_until(TIMEOUT, "the target to be healthy", || {
        daemon
            .ask(sluice, &topology.lb, &["stats", "--json"])
            .ok()
            .and_then(|s| serde_json::from_str::<Value>(&s).ok())
            .is_some_and(|s| s["targets"][0]["health"] == "healthy")
    });
    Ok(daemon)
}

/// DNAT of the VIP to the target and SNAT to the same 1,024 ports, in lb; conntrack does the
/// rest. The namespace (and the rules with it) goes with the topology.
fn nftables(lb: &Namespace, target: Ipv4Addr, snat: Ipv4Addr) -> anyhow::Result<()> {
    let rules = format!(
        "table ip churn {{\n\
         \tchain prerouting {{ type nat hook prerouting priority dstnat; policy accept; ip daddr {VIP} tcp dport {PORT} dnat to {target}:{TARGET_PORT}; }}\n\
         \tchain postrouting {{ type nat hook postrouting priority srcnat; policy accept; ip daddr {target} tcp dport {TARGET_PORT} snat to {snat}:{}-{}; }}\n\
         }}\n",
        PORTS[0], PORTS[1]
    );
    let file = std::env::temp_dir().join(format!("{}-churn.nft", lb.name()));
    std::fs::write(&file, rules).context("writing the nftables rules")?;
    let out = lb.command("nft").arg("-f").arg(&file).output();
    let _ = std::fs::remove_file(&file);
    let out = out.context("running nft (is nftables installed?)")?;
    if !out.status.success() {
        bail!(
            "nft -f failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}
