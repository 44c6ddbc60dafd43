//! Scenario 1: L4 forwarding rate. Frames from the generator cross lb and are counted at the
//! targets' sinks, for the floor program, nftables DNAT and sluice in each mode; every run
//! measures every variant, so baselines and sluice share the machine's state of the moment.

use std::{net::Ipv4Addr, path::Path};

use serde_json::{json, Value};

use super::{
    napi::{ThreadedNapi, HARNESS_CPU},
    topology::{Daemon, FloorGuard, Nftables, Topology, PORT, VIP},
    Plan, Progress,
};

const FLOWS: &str = "1000";

/// One measurement: (variant, protocol, targets) and its per-run figures.
pub fn cell_key(variant: &str, protocol: &str, targets: usize) -> String {
    format!("{variant}/{protocol}/{targets}")
}

pub fn run(sluice: &Path, plan: &Plan, progress: &mut Progress) -> anyhow::Result<Value> {
    let mut cells: std::collections::BTreeMap<String, Vec<Value>> = Default::default();
    let topologies: Vec<Topology> = plan
        .forwarding_targets
        .iter()
        .map(|&n| {
            progress.note(&format!(
                "forwarding: building the topology for {n} targets"
            ));
            Topology::new(n)
        })
        .collect();
    for run in 1..=plan.runs {
        for topology in &topologies {
            let n = topology.targets.len();
            for &variant in plan.variants {
                progress.step(
                    "forwarding",
                    run,
                    plan.runs,
                    &format!("{variant}, {n} targets"),
                );
                let result = with_variant(sluice, topology, variant, || {
                    let mut out = Vec::new();
                    for &protocol in plan.protocols {
                        out.push((protocol, measure(sluice, topology, variant, protocol, plan)));
                    }
                    out
                });
                match result {
                    Ok(rows) => {
                        for (protocol, row) in rows {
                            let value = match row {
                                Ok(v) => v,
                                Err(e) => json!({ "error": format!("{e:#}") }),
                            };
                            cells
                                .entry(cell_key(variant, protocol, n))
                                .or_default()
                                .push(value);
                        }
                    }
                    Err(e) => {
                        for &protocol in plan.protocols {
                            cells
                                .entry(cell_key(variant, protocol, n))
                                .or_default()
                                .push(json!({ "error": format!("{e:#}") }));
                        }
                    }
                }
            }
        }
    }
    Ok(json!({
        "flows": 1000,
        "frame_bytes": 64,
        "count_per_run": plan.forwarding_count,
        "cells": cells
            .into_iter()
            .map(|(key, runs)| {
                let mpps: Vec<f64> = runs.iter().filter_map(|r| r["received_mpps"].as_f64()).collect();
                let loss: Vec<f64> = runs.iter().filter_map(|r| r["loss"].as_f64()).collect();
                let cpu: Vec<f64> = runs
                    .iter()
                    .filter_map(|r| r["lb_cpu_ns_per_frame"].as_f64())
                    .collect();
                let batch: Vec<f64> = runs
                    .iter()
                    .filter_map(|r| r["lb_frames_per_run"].as_f64())
                    .collect();
                let idle: Vec<f64> = runs
                    .iter()
                    .filter_map(|r| r["generator_idle_ns_per_frame"].as_f64())
                    .collect();
                let mut parts = key.split('/');
                json!({
                    "variant": parts.next(),
                    "protocol": parts.next(),
                    "targets": parts.next().and_then(|t| t.parse::<u64>().ok()),
                    "median_mpps": super::figures::median(&mpps),
                    "min_mpps": mpps.iter().copied().reduce(f64::min),
                    "max_mpps": mpps.iter().copied().reduce(f64::max),
                    "median_loss": super::figures::median(&loss),
                    "median_lb_cpu_ns_per_frame": super::figures::median(&cpu),
                    "median_lb_frames_per_run": super::figures::median(&batch),
                    // Dead time inside the generator's calls: in every variant's figure alike.
                    "median_generator_idle_ns_per_frame": super::figures::median(&idle),
                    "runs": runs,
                })
            })
            .collect::<Vec<_>>(),
    }))
}

/// Sets lb up for `variant`, runs `f`, and takes it down again.
fn with_variant<T>(
    sluice: &Path,
    topology: &Topology,
    variant: &str,
    f: impl FnOnce() -> T,
) -> anyhow::Result<T> {
    match variant {
        "floor" => {
            let _floor = FloorGuard::start(sluice, topology);
            Ok(f())
        }
        "nftables" => {
            let _nft = Nftables::install(&topology.lb, &topology.targets)?;
            Ok(f())
        }
        mode => {
            let _daemon =
                Daemon::start(sluice, &topology.lb, &config(mode, &topology.targets), &[]);
            topology.wait_neighbours(&topology.targets);
            Ok(f())
        }
    }
}

/// TCP and UDP listeners on the VIP over every target. Health checks go to a closed port
/// every 300 s: the sinks drop them, the targets fail open and stay in the table, and the
/// checks add a handful of packets at most.
pub fn config(mode: &str, targets: &[Ipv4Addr]) -> String {
    let list: Vec<String> = targets
        .iter()
        .map(|t| format!("{{ address = \"{t}\" }}"))
        .collect();
    let table = if targets.len() > 10 { 65537 } else { 251 };
    let listener = |protocol: &str| {
        format!(
            "[[listener]]\nname = \"{protocol}\"\naddress = \"{VIP}\"\nport = {PORT}\nprotocol = \"{protocol}\"\nmode = \"{mode}\"\ndefault_target_group = \"web\"\nmaglev_table_size = {table}\n\n"
        )
    };
    format!(
        "{}{}[[target_group]]\nname = \"web\"\nport = {PORT}\nderegistration_delay = 1\nhealth_check = {{ port = 9, interval = \"300s\", timeout = \"5s\" }}\ntargets = [{}]\n",
        listener("tcp"),
        listener("udp"),
        list.join(", ")
    )
}

fn measure(
    sluice: &Path,
    topology: &Topology,
    variant: &str,
    protocol: &str,
    plan: &Plan,
) -> anyhow::Result<Value> {
    let common = |tcp: &str, count: u64| -> Vec<String> {
        let mut args: Vec<String> = [
            "--iface",
            "eth0",
            "--vip",
            &VIP.to_string(),
            "--port",
            &PORT.to_string(),
            "--protocol",
            protocol,
            "--tcp",
            tcp,
            "--flows",
            FLOWS,
            "--count",
            &count.to_string(),
            "--dst-mac",
            &topology.lb_mac(),
        ]
        .map(str::to_string)
        .to_vec();
        args.extend(topology.sink_args());
        args
    };
    // Warm-up: flows enter sluice's flow table (a SYN opens a TCP flow; conntrack instead
    // picks up mid-stream ACKs and would mark a SYN-then-ACK without reply invalid), and
    // neighbours resolve. Paced, so no frame is lost to a full ring.
    let warm_tcp = if variant == "nftables" {
        "established"
    } else {
        "syn"
    };
    let mut warm = common(warm_tcp, 2000);
    warm.extend(["--rate".to_string(), "20000".to_string()]);
    topology.bench(sluice, &warm)?;
    let mut report = topology.bench(sluice, &common("established", plan.forwarding_count))?;
    // lb's CPU per frame, in a second pass of the same frames (see `napi.rs`).
    match lb_cpu_per_frame(
        sluice,
        topology,
        &common("established", plan.forwarding_count),
    ) {
        Ok((ns, frames_per_run)) => {
            report["lb_cpu_ns_per_frame"] = ns.into();
            report["lb_frames_per_run"] = frames_per_run.into();
        }
        Err(e) => report["lb_cpu_error"] = format!("{e:#}").into(),
    }
    Ok(report)
}

/// Nanoseconds of lb's receive thread per frame the sinks received, with lb's NAPI threaded
/// on its own CPU, and the frames per time the thread was switched in (how well its work was
/// batched: a thread that keeps up with the generator wakes for fewer frames at a time).
fn lb_cpu_per_frame(
    sluice: &Path,
    topology: &Topology,
    args: &[String],
) -> anyhow::Result<(f64, f64)> {
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        anyhow::bail!("needs two CPUs: lb's receive thread alone on one");
    }
    let napi = ThreadedNapi::start(topology)?;
    let (ns_before, runs_before) = napi.lb_runtime()?;
    let report = topology.bench_on(sluice, HARNESS_CPU, args)?;
    let (ns_after, runs_after) = napi.lb_runtime()?;
    let received = report["received"].as_u64().unwrap_or(0);
    if received == 0 {
        anyhow::bail!("no frame reached the sinks");
    }
    let runs = (runs_after - runs_before).max(1);
    Ok((
        (ns_after - ns_before) as f64 / received as f64,
        received as f64 / runs as f64,
    ))
}
