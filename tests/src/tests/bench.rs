//! `sluice bench`: frames from the in-kernel generator arrive at counting sinks, directly and
//! through sluice, and the counts add up.

use std::net::Ipv4Addr;

use super::namespaces::{ApiSocket, PinDir, TIMEOUT};
use crate::netns::{
    format_mac, require_root, sluice_binary, veth, wait_until, LbTopology, Namespace,
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 111, 100, 1);
/// Paced so that veth rings never overflow: every frame must arrive.
const COUNT: u64 = 3000;
const RATE: &str = "30000";

/// Runs `sluice bench ARGS --json` in `ns` and returns its report.
fn bench(ns: &Namespace, args: &[&str]) -> serde_json::Value {
    let out = ns
        .command(sluice_binary())
        .arg("bench")
        .args(args)
        .arg("--json")
        .output()
        .expect("running sluice bench");
    assert!(
        out.status.success(),
        "sluice bench failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "sluice bench printed no JSON report ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

#[test]
fn every_generated_frame_arrives_at_the_sink() {
    require_root();
    let generator = Namespace::new("gen");
    let sink = Namespace::new("sink");
    veth(&generator, "eth0", &sink, "eth0");
    let count = COUNT.to_string();
    let sink_spec = format!("{}:eth0", sink.name());
    for protocol in ["udp", "tcp"] {
        let report = bench(
            &generator,
            &[
                "--iface",
                "eth0",
                "--vip",
                "10.99.0.1",
                "--dst-mac",
                &format_mac(sink.mac("eth0")),
                "--protocol",
                protocol,
                "--flows",
                "100",
                "--size",
                "128",
                "--count",
                &count,
                "--rate",
                RATE,
                "--sink",
                &sink_spec,
            ],
        );
        assert_eq!(report["sent"], COUNT, "{report}");
        assert_eq!(report["received"], COUNT, "{protocol}: {report}");
        // The sink counts frames as received: 124 bytes (the size less the FCS).
        assert_eq!(report["sinks"][0]["bytes"], COUNT * 124, "{report}");
        assert_eq!(report["loss"], 0.0);
    }
}

#[test]
fn bad_arguments_are_one_sentence_and_a_failure() {
    require_root();
    let ns = Namespace::new("gen");
    for (args, expected) in [
        (
            vec!["--iface", "nosuch0", "--vip", "10.0.0.1"],
            "interface 'nosuch0' does not exist",
        ),
        (
            vec!["--iface", "lo", "--vip", "10.0.0.1", "--size", "20"],
            "--size 20 is outside",
        ),
        (
            vec![
                "--iface",
                "lo",
                "--vip",
                "10.0.0.1",
                "--flows",
                "0",
                "--dst-mac",
                "02:00:00:00:00:01",
            ],
            "--flows must be",
        ),
    ] {
        let out = ns
            .command(sluice_binary())
            .arg("bench")
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
    }
}

/// Through sluice (dsr, three targets): every frame reaches one target, each flow always the
/// same one, and the targets share the flows.
#[test]
fn sluice_spreads_generated_flows_over_its_targets_and_keeps_each_on_one() {
    require_root();
    let topology = LbTopology::new(3);
    let targets: Vec<String> = topology
        .targets
        .iter()
        .map(|t| format!("{{ address = \"{}\" }}", t.link.v4))
        .collect();
    let config = std::env::temp_dir().join(format!("{}-bench.toml", topology.lb.name()));
    std::fs::write(
        &config,
        format!(
            "[[listener]]\nname = \"web\"\naddress = \"{VIP}\"\nport = 80\nprotocol = \"tcp\"\nmode = \"dsr\"\ndefault_target_group = \"web\"\nmaglev_table_size = 251\n\n\
             [[target_group]]\nname = \"web\"\nport = 80\ntargets = [{}]\n",
            targets.join(", ")
        ),
    )
    .unwrap();
    let _remove = RemoveOnDrop(config.clone());
    let pin_dir = PinDir::new();
    let socket = ApiSocket::new();
    let mut cmd = topology.lb.command(sluice_binary());
    cmd.args(["run", "--iface", "eth0", "--pin-dir", pin_dir.arg()])
        .arg("--config")
        .arg(&config)
        .args(["--socket", socket.arg(), "--flows", "65536"])
        .env("RUST_LOG", "info");
    let sluice = topology.lb.spawn(cmd);
    wait_until(TIMEOUT, "sluice to apply its configuration", || {
        if let Some(status) = sluice.try_status() {
            panic!("sluice exited ({status}): {}", sluice.stderr());
        }
        sluice.stderr().contains("listener(s) from")
    });
    // sluice keeps the targets' neighbour entries managed; frames sent before they resolve
    // would be dropped, so wait for every MAC.
    wait_until(TIMEOUT, "the targets' MACs on lb", || {
        let neigh = topology.lb.ip(&["neigh", "show", "dev", "eth1"]);
        topology.targets.iter().all(|t| {
            neigh
                .lines()
                .any(|l| l.starts_with(&format!("{} ", t.link.v4)) && l.contains("lladdr"))
        })
    });

    let count = COUNT.to_string();
    let mut args: Vec<String> = [
        "--iface",
        "eth0",
        "--vip",
        &VIP.to_string(),
        "--dst-mac",
        &format_mac(topology.lb_client_side.mac),
        "--protocol",
        "tcp",
        "--tcp",
        "syn",
        "--flows",
        "1000",
        "--count",
        &count,
        "--rate",
        RATE,
        // Health checks from lb also reach the sinks; count the generator's flows apart.
        "--watch",
        "198.18.0.0/16",
    ]
    .map(str::to_string)
    .to_vec();
    for t in &topology.targets {
        args.extend(["--sink".to_string(), format!("{}:eth0", t.ns.name())]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let report = bench(&topology.client.ns, &args);

    let mut seen = std::collections::BTreeMap::new();
    let mut total = 0;
    for sink in report["sinks"].as_array().unwrap() {
        let mut packets = 0;
        for flow in sink["watched"].as_array().unwrap() {
            let key = (
                flow[0].as_str().unwrap().to_string(),
                flow[1].as_u64().unwrap(),
            );
            let name = sink["name"].as_str().unwrap();
            if let Some(other) = seen.insert(key.clone(), name) {
                panic!("flow {key:?} reached two targets, {other} and {name}");
            }
            packets += flow[2].as_u64().unwrap();
        }
        assert!(
            packets > COUNT / 10,
            "target {} got {packets} of {COUNT} packets: {report}",
            sink["name"]
        );
        total += packets;
    }
    assert_eq!(total, COUNT, "{report}");
    assert_eq!(seen.len(), 1000, "{report}");
}

/// Live frames come from recycled pages that keep what receivers wrote into them: after sluice's
/// `nat` rewrite, a frame sent again from the same page would be addressed to the target, no
/// longer to the listener. At full speed (pages recycled within one run), every frame must
/// still reach the listener.
#[test]
fn frames_stay_addressed_to_the_listener_when_receivers_rewrite_them() {
    require_root();
    let topology = LbTopology::new(1);
    let config = std::env::temp_dir().join(format!("{}-bench.toml", topology.lb.name()));
    std::fs::write(
        &config,
        format!(
            "[[listener]]\nname = \"dns\"\naddress = \"{VIP}\"\nport = 53\nprotocol = \"udp\"\nmode = \"nat\"\ndefault_target_group = \"dns\"\nmaglev_table_size = 251\n\n\
             [[target_group]]\nname = \"dns\"\nport = 53\nhealth_check = {{ port = 9, interval = \"300s\", timeout = \"5s\" }}\ntargets = [{{ address = \"{}\" }}]\n",
            topology.targets[0].link.v4
        ),
    )
    .unwrap();
    let _remove = RemoveOnDrop(config.clone());
    let pin_dir = PinDir::new();
    let socket = ApiSocket::new();
    let mut cmd = topology.lb.command(sluice_binary());
    cmd.args(["run", "--iface", "eth0", "--pin-dir", pin_dir.arg()])
        .arg("--config")
        .arg(&config)
        .args(["--socket", socket.arg(), "--flows", "65536"])
        .env("RUST_LOG", "info");
    let sluice = topology.lb.spawn(cmd);
    wait_until(TIMEOUT, "sluice to apply its configuration", || {
        if let Some(status) = sluice.try_status() {
            panic!("sluice exited ({status}): {}", sluice.stderr());
        }
        sluice.stderr().contains("listener(s) from")
    });
    let target = topology.targets[0].link.v4;
    wait_until(TIMEOUT, "the target's MAC on lb", || {
        topology
            .lb
            .ip(&["neigh", "show", &target.to_string()])
            .contains("lladdr")
    });
    let sink = format!("{}:eth0", topology.targets[0].ns.name());
    let mac = format_mac(topology.lb_client_side.mac);
    let report = bench(
        &topology.client.ns,
        &[
            "--iface",
            "eth0",
            "--vip",
            &VIP.to_string(),
            "--port",
            "53",
            "--dst-mac",
            &mac,
            "--count",
            "20000",
            "--sink",
            &sink,
        ],
    );
    assert_eq!(report["sent"], 20000, "{report}");
    let out = topology
        .lb
        .command(sluice_binary())
        .args(["stats", "--json", "--socket", socket.arg()])
        .output()
        .unwrap();
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let packets = |name: &str| stats["counters"][name]["packets"].as_u64().unwrap_or(0);
    // Frames that lost the listener's address would be thousands; the client namespace's
    // own IPv6 traffic (neighbour discovery, MLD: 86 bytes and the like) also passes as "no
    // listener", a packet or two now and then.
    assert!(packets("pass_no_listener") < 10, "{stats}");
    assert!(packets("forward_nat") > 0, "{stats}");
}

struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
