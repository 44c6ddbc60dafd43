//! Scenarios 2, 3, 4, 6 and 7: per-packet cost, new-flow storm, Maglev, control plane and
//! memory. Each returns its figures as JSON for `results.json` and the summary.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, TcpListener},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use sluice_tests::netns::wait_until;

use super::{
    forwarding,
    topology::{Daemon, Topology, TIMEOUT},
    Plan, Progress,
};

/// Scenario 2: `sluice bench cost`, which interleaves the empty program with every path.
pub fn cost(sluice: &Path, plan: &Plan, progress: &mut Progress) -> anyhow::Result<Value> {
    progress.step("cost", 1, 1, "every path of every mode (sluice bench cost)");
    let mut cmd = std::process::Command::new(sluice);
    cmd.args(["bench", "cost", "--json"])
        .args(["--runs", &plan.cost_runs.to_string()])
        .args(["--iterations", &plan.cost_iterations.to_string()])
        .args(["--flows", &plan.cost_flows.to_string()]);
    if let Some(mode) = plan.cost_mode {
        cmd.args(["--mode", mode]);
    }
    let out = crate::cmd::output(&mut cmd)?;
    let rows: Value = serde_json::from_str(&out).context("parsing sluice bench cost --json")?;
    // The floor under a lookup whose entry is out of the caches, in a region about the size
    // of a flow table of a million entries (also in a quick run, whose table is small).
    let bytes = u64::from(plan.cost_flows.max(1 << 20)) * 128;
    let out = crate::cmd::output(std::process::Command::new(sluice).args([
        "bench",
        "random-read",
        "--json",
        "--bytes",
        &bytes.to_string(),
        "--reads",
        "500000",
    ]))?;
    let random_read: Value =
        serde_json::from_str(&out).context("parsing sluice bench random-read --json")?;
    Ok(json!({
        "runs": plan.cost_runs,
        "iterations": plan.cost_iterations,
        "table_size": plan.cost_flows,
        "paths": rows,
        "random_read": random_read,
    }))
}

/// Scenario 4: `sluice bench maglev`.
pub fn maglev(sluice: &Path, progress: &mut Progress) -> anyhow::Result<Value> {
    progress.step("maglev", 1, 1, "100 and 1000 targets");
    let out = crate::cmd::output(std::process::Command::new(sluice).args([
        "bench",
        "maglev",
        "--targets",
        "100,1000",
        "--runs",
        "5",
        "--json",
    ]))?;
    serde_json::from_str(&out).context("parsing sluice bench maglev --json")
}

/// Which sink saw each watched flow.
fn assignment(report: &Value) -> BTreeMap<(String, u64), String> {
    let mut out = BTreeMap::new();
    for sink in report["sinks"].as_array().into_iter().flatten() {
        for flow in sink["watched"].as_array().into_iter().flatten() {
            if let (Some(addr), Some(port)) = (flow[0].as_str(), flow[1].as_u64()) {
                out.insert(
                    (addr.to_string(), port),
                    sink["name"].as_str().unwrap_or("").to_string(),
                );
            }
        }
    }
    out
}

/// Scenario 3: 1,000 long-lived flows are opened over two targets; a third target joins
/// (Maglev moves about a third of all hashes to it); then SYNs from `storm` distinct sources
/// arrive; then the long-lived flows send again. A flow the storm pushed out of the flow table
/// (live entries are never evicted, so none should be) is re-hashed and may land elsewhere: a
/// misroute.
pub fn storm(sluice: &Path, plan: &Plan, progress: &mut Progress) -> anyhow::Result<Value> {
    const WATCH: &str = "10.124.0.0/16";
    const LONG_LIVED: u64 = 1000;
    progress.note("storm: building the topology (3 targets)");
    let topology = Topology::new(3);
    let config = forwarding::config("dsr", &topology.targets[..2]);
    let daemon = Daemon::start(sluice, &topology.lb, &config, &[]);
    topology.wait_neighbours(&topology.targets[..2]);
    let flows = |tcp: &str, count: u64, sources: &str, watch: bool| {
        let mut args: Vec<String> = [
            "--iface",
            "eth0",
            "--vip",
            &super::topology::VIP.to_string(),
            "--protocol",
            "tcp",
            "--tcp",
            tcp,
            "--flows",
            &count.to_string(),
            "--count",
            &count.to_string(),
            "--sources",
            sources,
            "--dst-mac",
            &topology.lb_mac(),
        ]
        .map(str::to_string)
        .to_vec();
        if watch {
            args.extend(["--watch", WATCH, "--rate", "100000"].map(str::to_string));
        }
        args.extend(topology.sink_args());
        args
    };
    progress.step("storm", 1, 1, "opening 1000 long-lived flows");
    // A SYN, then the client's handshake ACK: established connections, which stay for the
    // established idle timeout (a SYN alone is half-open, and goes after 10 s of silence:
    // on a slow machine the storm lasts longer than that).
    topology.bench(sluice, &flows("syn", LONG_LIVED, WATCH, false))?;
    let before =
        assignment(&topology.bench(sluice, &flows("established", LONG_LIVED, WATCH, true))?);
    let target = format!("{}:{}", topology.targets[2], super::topology::PORT);
    daemon.ask(sluice, &topology.lb, &["target", "add", "web", &target])?;
    topology.wait_neighbours(&topology.targets);
    progress.step(
        "storm",
        1,
        1,
        &format!(
            "a third target joined; {} SYNs from distinct sources",
            plan.storm_syns
        ),
    );
    let storm = topology.bench(
        sluice,
        &flows("syn", plan.storm_syns, "198.18.0.0/15", false),
    )?;
    progress.step("storm", 1, 1, "the long-lived flows again");
    let after =
        assignment(&topology.bench(sluice, &flows("established", LONG_LIVED, WATCH, true))?);
    let misrouted = before
        .iter()
        .filter(|(flow, sink)| after.get(*flow).is_some_and(|s| s != *sink))
        .count();
    let unseen = before.keys().filter(|f| !after.contains_key(*f)).count();
    let stats: Value =
        serde_json::from_str(&daemon.ask(sluice, &topology.lb, &["stats", "--json"])?)?;
    let counter = |name: &str| stats["counters"][name]["packets"].as_u64().unwrap_or(0);
    Ok(json!({
        "long_lived_flows": before.len(),
        "storm_syns_sent": storm["sent"],
        "storm_syns_received": storm["received"],
        "storm_mpps": storm["sent_mpps"],
        "misrouted": misrouted,
        "not_seen_after": unseen,
        "flow_table_size": 1_048_576,
        "flows_created": counter("flow_created"),
        "flood_gated": counter("flood_gated"),
    }))
}

/// A process's resident memory, in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS in /proc/PID/status")
}

/// The BPF maps a process holds, from `/proc/PID/fdinfo`: (map_type, max_entries, memlock).
fn maps_of(pid: u32) -> anyhow::Result<Vec<(u64, u64, u64)>> {
    let mut maps = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
        let Ok(text) = std::fs::read_to_string(entry?.path()) else {
            continue;
        };
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let (Some(kind), Some(entries), Some(memlock)) =
            (field("map_type:"), field("max_entries:"), field("memlock:"))
        {
            maps.push((kind, entries, memlock));
        }
    }
    Ok(maps)
}

/// Polls `sluice status --json` until `address` has health `health`.
fn wait_health(
    sluice: &Path,
    daemon: &Daemon,
    topology: &Topology,
    address: &str,
    health: &str,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    while start.elapsed() < TIMEOUT {
        let status: Value =
            serde_json::from_str(&daemon.ask(sluice, &topology.lb, &["status", "--json"])?)?;
        let now = status["targets"].as_array().into_iter().flatten().any(|t| {
            t["address"].as_str() == Some(address) && t["health"].as_str() == Some(health)
        });
        if now {
            return Ok(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    bail!("{address} did not become {health} within {TIMEOUT:?}")
}

/// Scenarios 6 and 7: health checks every 100 ms; a target's server goes away and the time
/// until the daemon reports it unhealthy (it leaves the table in the same step) is measured;
/// then a reload adds 1,000 targets. The daemon's memory is read before and after, and the
/// kernel's memory for its flow tables from the map fds.
pub fn control(sluice: &Path, progress: &mut Progress) -> anyhow::Result<Value> {
    const HEALTH_PORT: u16 = 8080;
    const INTERVAL_MS: u64 = 100;
    progress.note("control: building the topology (3 targets with servers)");
    let topology = Topology::new(3);
    let mut servers: Vec<Option<TcpListener>> = topology
        .sinks
        .iter()
        .map(|ns| {
            Some(
                ns.run_in(|| TcpListener::bind(("0.0.0.0", HEALTH_PORT)))
                    .expect("binding a health-check server"),
            )
        })
        .collect();
    let group = |name: &str, targets: &[String], interval: &str| {
        format!(
            "[[target_group]]\nname = \"{name}\"\nport = {HEALTH_PORT}\nderegistration_delay = 1\n\
             health_check = {{ interval = \"{interval}\", timeout = \"50ms\", healthy_threshold = 2, unhealthy_threshold = 2 }}\n\
             targets = [{}]\n\n",
            targets.join(", ")
        )
    };
    let small: Vec<String> = topology
        .targets
        .iter()
        .map(|t| format!("{{ address = \"{t}\" }}"))
        .collect();
    let listener = |name: &str, port: u16, group: &str| {
        format!(
            "[[listener]]\nname = \"{name}\"\naddress = \"{}\"\nport = {port}\nprotocol = \"tcp\"\nmode = \"nat\"\ndefault_target_group = \"{group}\"\n\n",
            super::topology::VIP
        )
    };
    let base = format!(
        "{}{}",
        listener("web", 80, "web"),
        group("web", &small, &format!("{INTERVAL_MS}ms"))
    );
    let daemon = Daemon::start(sluice, &topology.lb, &base, &[]);
    let pid = daemon.child.pid();
    for t in &topology.targets {
        wait_health(
            sluice,
            &daemon,
            &topology,
            &format!("{t}:{HEALTH_PORT}"),
            "healthy",
        )?;
    }
    let idle_rss = rss_kib(pid)?;

    progress.step("control", 1, 1, "a target dies");
    servers[0] = None;
    let death = wait_health(
        sluice,
        &daemon,
        &topology,
        &format!("{}:{HEALTH_PORT}", topology.targets[0]),
        "unhealthy",
    )?;

    progress.step("control", 1, 1, "a reload adds 1,000 targets");
    // The new targets sit behind target1 (one next hop to resolve); nothing answers them, and
    // their checks are rare.
    topology.lb.ip(&[
        "route",
        "add",
        "10.125.0.0/16",
        "via",
        &topology.targets[1].to_string(),
    ]);
    let big: Vec<String> = (0..1000)
        .map(|i| {
            format!(
                "{{ address = \"{}\" }}",
                Ipv4Addr::new(10, 125, (i / 250) as u8, 1 + (i % 250) as u8)
            )
        })
        .collect();
    let changed = format!(
        "{base}{}{}",
        listener("big", 81, "big"),
        group("big", &big, "300s")
    );
    std::fs::write(&daemon.config, changed)?;
    let start = Instant::now();
    daemon.ask(sluice, &topology.lb, &["reload"])?;
    let reload = start.elapsed();
    // Let the health checker's tasks for the new targets start before reading memory.
    wait_until(TIMEOUT, "the daemon to list 1003 targets", || {
        daemon
            .ask(sluice, &topology.lb, &["status", "--json"])
            .ok()
            .and_then(|s| serde_json::from_str::<Value>(&s).ok())
            .and_then(|s| s["targets"].as_array().map(|t| t.len() >= 1003))
            .unwrap_or(false)
    });
    let busy_rss = rss_kib(pid)?;

    // Hash maps (type 1) sized to --flows: the flow table and nat translations.
    const HASH: u64 = 1;
    let maps = maps_of(pid)?;
    let flows: u64 = 1 << 20;
    let flow_tables: u64 = maps
        .iter()
        .filter(|(kind, entries, _)| *kind == HASH && *entries == flows)
        .map(|(_, _, memlock)| memlock)
        .sum();
    let all_maps: u64 = maps.iter().map(|(_, _, memlock)| memlock).sum();
    drop(servers);
    Ok(json!({
        "health_check_interval_ms": INTERVAL_MS,
        "unhealthy_threshold": 2,
        "death_to_removal_ms": death.as_secs_f64() * 1e3,
        "reload_1000_targets_ms": reload.as_secs_f64() * 1e3,
        "rss_idle_kib": idle_rss,
        "rss_1000_targets_kib": busy_rss,
        "flow_table_entries": flows,
        "flow_tables_memlock_bytes": flow_tables,
        "flow_tables_bytes_per_million_flows": flow_tables as f64 / flows as f64 * 1e6,
        "all_maps_memlock_bytes": all_maps,
    }))
}
