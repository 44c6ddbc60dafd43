//! `cargo xtask bench`: builds its own topology in network namespaces, runs each scenario of
//! issue 6 several times with its baselines, and writes `bench/results.json`,
//! `docs/BENCHMARKS.md`, `docs/bench.svg` and `docs/bench-l7.svg`.
//!
//! Benchmarks report, they do not judge: no figure fails the run. A scenario that cannot run
//! (a missing tool, a set-up failure) is recorded with its error and the others go on.

mod churn;
mod figures;
mod forwarding;
mod l7;
mod l7_load;
mod lineup;
mod napi;
mod report;
mod scenarios;
mod topology;

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::Context;
use serde_json::{json, Value};

pub const SCENARIOS: &[&str] = &[
    "forwarding",
    "cost",
    "storm",
    "maglev",
    "l7",
    "control",
    "memory",
    "churn",
];

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Seconds, not minutes: tiny counts, one run, the generator, a sink, one forwarding mode
    /// against the floor, the per-packet cost path, a second of wrk per L7 case and 100
    /// WebSocket connections.
    #[arg(long)]
    quick: bool,
    /// Runs of each repeated scenario (default 3; 1 with --quick).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=50))]
    runs: Option<u64>,
    /// Only these scenarios (repeatable): forwarding, cost, storm, maglev, l7, control, memory,
    /// churn.
    /// Their results replace those of the same scenarios in an existing results.json; the
    /// others are kept.
    #[arg(long, value_parser = SCENARIOS.to_vec())]
    scenario: Vec<String>,
    /// Write results.json, BENCHMARKS.md and the charts into this directory instead of
    /// bench/ and docs/.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Measure nothing: re-write BENCHMARKS.md and the charts from an existing results.json.
    #[arg(long)]
    render: bool,
    /// The L7 scenario also runs this `sluice` binary (e.g. one built from an earlier
    /// commit), as the balancer `sluice-before`, interleaved with the others.
    #[arg(long, value_name = "PATH")]
    before: Option<PathBuf>,
}

impl BenchArgs {
    /// What `cargo xtask test` runs: quick, into a temporary directory.
    pub fn smoke(out: PathBuf) -> BenchArgs {
        BenchArgs {
            quick: true,
            runs: None,
            scenario: Vec::new(),
            out: Some(out),
            render: false,
            before: None,
        }
    }
}

/// What a run does, from the arguments.
pub struct Plan {
    pub quick: bool,
    pub runs: usize,
    pub scenarios: Vec<&'static str>,
    pub variants: &'static [&'static str],
    pub protocols: &'static [&'static str],
    pub forwarding_targets: Vec<usize>,
    pub forwarding_count: u64,
    pub cost_runs: u64,
    pub cost_iterations: u64,
    pub cost_flows: u32,
    pub cost_mode: Option<&'static str>,
    pub storm_syns: u64,
    /// wrk: connections, seconds per measurement, seconds of warm-up per balancer start.
    pub l7_connections: u32,
    pub l7_seconds: u64,
    pub l7_warmup_seconds: u64,
    /// h2load's open-loop run: connections, and requests per second each.
    pub l7_fixed_rate: (u32, u32),
    /// wrk runs with many keep-alive connections (p99, timeouts).
    pub l7_many_connections: Vec<u32>,
    /// Idle keep-alive connections held open to measure memory and wake-ups.
    pub l7_idle_connections: usize,
    /// `--before`: an earlier sluice, run as `sluice-before` in the L7 scenario.
    pub l7_before: Option<PathBuf>,
    pub websocket_connections: usize,
    /// Sequential connections per churn variant (at least ten times the 1,024 nat ports).
    pub churn_connections: u64,
}

impl Plan {
    fn new(args: &BenchArgs) -> Plan {
        let chosen: Vec<&'static str> = if args.scenario.is_empty() {
            if args.quick {
                vec!["forwarding", "cost", "maglev", "l7", "memory"]
            } else {
                SCENARIOS.to_vec()
            }
        } else {
            SCENARIOS
                .iter()
                .copied()
                .filter(|s| args.scenario.iter().any(|a| a == s))
                .collect()
        };
        if args.quick {
            Plan {
                quick: true,
                runs: args.runs.unwrap_or(1) as usize,
                scenarios: chosen,
                variants: &["floor", "dsr"],
                protocols: &["udp"],
                forwarding_targets: vec![3],
                forwarding_count: 50_000,
                cost_runs: 2,
                cost_iterations: 50,
                cost_flows: 1000,
                cost_mode: Some("dsr"),
                storm_syns: 20_000,
                l7_connections: 8,
                l7_seconds: 1,
                l7_warmup_seconds: 0,
                l7_fixed_rate: (8, 50),
                l7_many_connections: vec![100],
                l7_idle_connections: 100,
                l7_before: args.before.clone(),
                websocket_connections: 100,
                churn_connections: 2_048,
            }
        } else {
            Plan {
                quick: false,
                runs: args.runs.unwrap_or(3) as usize,
                scenarios: chosen,
                variants: lineup::VARIANTS,
                protocols: &["udp", "tcp"],
                forwarding_targets: vec![3, 100],
                forwarding_count: 1_000_000,
                cost_runs: 30,
                cost_iterations: 500,
                cost_flows: 1 << 20,
                cost_mode: None,
                storm_syns: 1_000_000,
                l7_connections: 64,
                l7_seconds: 10,
                l7_warmup_seconds: 2,
                l7_fixed_rate: (64, 78),
                l7_many_connections: vec![1_000, 10_000],
                l7_idle_connections: 5_000,
                l7_before: args.before.clone(),
                websocket_connections: 10_000,
                churn_connections: 20_480,
            }
        }
    }

    /// The Debian packages the chosen scenarios run (the bench's set-up installs them).
    pub fn packages(&self) -> Vec<&'static str> {
        let mut packages = crate::setup::BENCH_PACKAGES.to_vec();
        if (self.scenarios.contains(&"forwarding") && self.variants.contains(&"nftables"))
            || self.scenarios.contains(&"churn")
        {
            packages.push("nftables");
        }
        if self.scenarios.iter().any(|s| matches!(*s, "l7" | "memory")) {
            packages.extend(crate::setup::L7_BENCH_PACKAGES);
        }
        packages
    }
}

/// Progress lines: scenario, run i of n, elapsed, so a person knows it is alive.
pub struct Progress {
    start: Instant,
}

impl Progress {
    pub fn step(&mut self, scenario: &str, run: usize, of: usize, what: &str) {
        println!(
            "[{:>6.1}s] {scenario}: run {run} of {of}: {what}",
            self.start.elapsed().as_secs_f64()
        );
    }

    pub fn note(&mut self, what: &str) {
        println!("[{:>6.1}s] {what}", self.start.elapsed().as_secs_f64());
    }
}

/// Where results.json, BENCHMARKS.md and the charts go.
struct Outputs {
    json: PathBuf,
    markdown: PathBuf,
    svg: PathBuf,
    l7_svg: PathBuf,
}

fn output_paths(args: &BenchArgs) -> Outputs {
    let root = crate::workspace_root();
    let (json, docs) = match &args.out {
        Some(dir) => (dir.join("results.json"), dir.clone()),
        None => (root.join("bench/results.json"), root.join("docs")),
    };
    Outputs {
        json,
        markdown: docs.join("BENCHMARKS.md"),
        svg: docs.join("bench.svg"),
        l7_svg: docs.join("bench-l7.svg"),
    }
}

/// Writes the summary and the charts from `results`.
fn write_reports(out: &Outputs, results: &Value) -> anyhow::Result<()> {
    for (path, text) in [
        (&out.markdown, report::markdown(results)),
        (&out.svg, report::svg(results)),
        (&out.l7_svg, report::l7_svg(results)),
    ] {
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// `--render`: the summary and charts again from results.json.
pub fn render(args: &BenchArgs) -> anyhow::Result<()> {
    let out = output_paths(args);
    let results: Value = serde_json::from_str(
        &std::fs::read_to_string(&out.json)
            .with_context(|| format!("reading {}", out.json.display()))?,
    )?;
    write_reports(&out, &results)?;
    println!(
        "bench: wrote {}, {} and {}",
        out.markdown.display(),
        out.svg.display(),
        out.l7_svg.display()
    );
    Ok(())
}

/// A run of some scenarios only: its results go into the previous results, which keep their
/// other scenarios and note the partial run in `later_runs`. A run of everything (or without
/// a readable previous file) starts afresh.
fn merge(previous: Option<Value>, run: Value, partial: bool) -> Value {
    let Some(mut merged) = previous.filter(|p| partial && p["scenarios"].is_object()) else {
        return run;
    };
    let scenarios = run["scenarios"].as_object().cloned().unwrap_or_default();
    let names: Vec<&String> = scenarios.keys().collect();
    let note = json!({
        "scenarios": names,
        "date": run["machine"]["date"],
        "quick": run["quick"],
        "runs": run["runs"],
        "elapsed_s": run["elapsed_s"],
    });
    match merged["later_runs"].as_array_mut() {
        // An earlier note for the same scenarios is now stale.
        Some(notes) => {
            notes.retain(|n| {
                !n["scenarios"].as_array().is_some_and(|s| {
                    s.iter()
                        .all(|s| scenarios.contains_key(s.as_str().unwrap_or("")))
                })
            });
            notes.push(note);
        }
        None => merged["later_runs"] = json!([note]),
    }
    for (name, value) in scenarios {
        merged["scenarios"][name] = value;
    }
    merged
}

pub fn is_render(args: &BenchArgs) -> bool {
    args.render
}

pub fn bench(sluice: &Path, args: BenchArgs) -> anyhow::Result<()> {
    sluice_tests::netns::require_root();
    let plan = Plan::new(&args);
    crate::setup::debian_packages(&plan.packages())?;
    let mut progress = Progress {
        start: Instant::now(),
    };
    progress.note(&format!(
        "bench: {} ({} run{} each): {}",
        if plan.quick { "quick" } else { "full" },
        plan.runs,
        if plan.runs == 1 { "" } else { "s" },
        plan.scenarios.join(", ")
    ));
    let mut results = serde_json::Map::new();
    for &scenario in &plan.scenarios {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match scenario {
            "forwarding" => forwarding::run(sluice, &plan, &mut progress),
            "cost" => scenarios::cost(sluice, &plan, &mut progress),
            "storm" => scenarios::storm(sluice, &plan, &mut progress),
            "maglev" => scenarios::maglev(sluice, &mut progress),
            "l7" => l7::l7(sluice, &plan, &mut progress),
            "control" => scenarios::control(sluice, &mut progress),
            "memory" => l7::memory(sluice, &plan, &mut progress),
            "churn" => churn::churn(sluice, &plan, &mut progress),
            other => unreachable!("unknown scenario {other}"),
        }));
        let value = match outcome {
            Ok(Ok(value)) => value,
            Ok(Err(e)) => {
                eprintln!("bench: {scenario} failed: {e:#}");
                json!({ "error": format!("{e:#}") })
            }
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panicked".to_string());
                eprintln!("bench: {scenario} failed: {message}");
                json!({ "error": message })
            }
        };
        results.insert(scenario.to_string(), value);
    }
    let results = json!({
        "machine": report::machine(),
        "quick": plan.quick,
        "runs": plan.runs,
        "elapsed_s": progress.start.elapsed().as_secs_f64(),
        "scenarios": Value::Object(results),
    });

    let out = output_paths(&args);
    for path in [&out.json, &out.markdown, &out.svg, &out.l7_svg] {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
    }
    let previous = std::fs::read_to_string(&out.json)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok());
    let results = merge(previous, results, !args.scenario.is_empty());
    std::fs::write(&out.json, serde_json::to_string_pretty(&results)? + "\n")
        .with_context(|| format!("writing {}", out.json.display()))?;
    write_reports(&out, &results)?;
    progress.note(&format!(
        "bench: wrote {}, {}, {} and {}",
        out.json.display(),
        out.markdown.display(),
        out.svg.display(),
        out.l7_svg.display()
    ));
    Ok(())
}

/// Fails if a scenario of the run in `dir` could not run or the forwarding scenario received
/// nothing: the smoke run checks that the benchmark works, not what it measures.
pub fn check_smoke(dir: &Path) -> anyhow::Result<()> {
    let path = dir.join("results.json");
    let results: Value = serde_json::from_str(
        &std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
    )?;
    let scenarios = results["scenarios"]
        .as_object()
        .context("results.json has no scenarios")?;
    for (name, value) in scenarios {
        if let Some(error) = value["error"].as_str() {
            anyhow::bail!("scenario {name} could not run: {error}");
        }
    }
    for cell in scenarios["forwarding"]["cells"]
        .as_array()
        .into_iter()
        .flatten()
    {
        for run in cell["runs"].as_array().into_iter().flatten() {
            if let Some(error) = run["error"].as_str() {
                anyhow::bail!(
                    "forwarding {}/{}: {error}",
                    cell["variant"],
                    cell["protocol"]
                );
            }
            if let Some(error) = run["lb_cpu_error"].as_str() {
                anyhow::bail!(
                    "forwarding {}/{}: lb's CPU per frame: {error}",
                    cell["variant"],
                    cell["protocol"]
                );
            }
            if run["received"].as_u64().unwrap_or(0) == 0 {
                anyhow::bail!(
                    "forwarding {}/{}: nothing reached the targets",
                    cell["variant"],
                    cell["protocol"]
                );
            }
        }
    }
    for cell in scenarios
        .get("l7")
        .and_then(|l7| l7["cells"].as_array())
        .into_iter()
        .flatten()
    {
        for run in cell["runs"].as_array().into_iter().flatten() {
            let what = format!("l7 {} ({})", cell["balancer"], cell["mode"]);
            if let Some(error) = run["error"].as_str() {
                anyhow::bail!("{what}: {error}");
            }
            if run["requests"].as_u64().unwrap_or(0) == 0 {
                anyhow::bail!("{what}: no request was answered");
            }
        }
    }
    for row in scenarios
        .get("memory")
        .and_then(|m| m["balancers"].as_array())
        .into_iter()
        .flatten()
    {
        if let Some(error) = row["error"].as_str() {
            anyhow::bail!("memory {}: {error}", row["balancer"]);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(scenarios: Value) -> Value {
        json!({ "machine": { "date": "later" }, "quick": false, "runs": 3, "elapsed_s": 60.0, "scenarios": scenarios })
    }

    #[test]
    fn a_partial_run_replaces_its_scenarios_only() {
        let old = run(json!({ "forwarding": { "a": 1 }, "l7": { "old": true } }));
        let merged = merge(
            Some(old.clone()),
            run(json!({ "l7": { "new": true } })),
            true,
        );
        assert_eq!(merged["scenarios"]["forwarding"], json!({ "a": 1 }));
        assert_eq!(merged["scenarios"]["l7"], json!({ "new": true }));
        assert_eq!(merged["later_runs"][0]["scenarios"], json!(["l7"]));
        // Again: the stale note goes, the new one stays.
        let again = merge(Some(merged), run(json!({ "l7": { "newer": true } })), true);
        assert_eq!(again["later_runs"].as_array().unwrap().len(), 1);
        assert_eq!(again["scenarios"]["l7"], json!({ "newer": true }));
        // A full run starts afresh.
        let full = merge(Some(old), run(json!({ "l7": {} })), false);
        assert!(full["scenarios"].get("forwarding").is_none());
        assert!(full.get("later_runs").is_none());
    }
}
