//! `cargo xtask bench`: builds its own topology in network namespaces, runs each scenario of
//! issue 6 (all but the L7 ones) several times with its baselines, and writes
//! `bench/results.json`, `docs/BENCHMARKS.md` and `docs/bench.svg`.
//!
//! Benchmarks report, they do not judge: no figure fails the run. A scenario that cannot run
//! (a missing tool, a set-up failure) is recorded with its error and the others go on.

mod forwarding;
mod report;
mod scenarios;
mod topology;

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::Context;
use serde_json::{json, Value};

pub const SCENARIOS: &[&str] = &["forwarding", "cost", "storm", "maglev", "control"];

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Seconds, not minutes: tiny counts, one run, the generator, a sink, one forwarding mode
    /// against the floor, and the per-packet cost path.
    #[arg(long)]
    quick: bool,
    /// Runs of each repeated scenario (default 3; 1 with --quick).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=50))]
    runs: Option<u64>,
    /// Only these scenarios (repeatable): forwarding, cost, storm, maglev, control.
    #[arg(long, value_parser = SCENARIOS.to_vec())]
    scenario: Vec<String>,
    /// Write results.json, BENCHMARKS.md and bench.svg into this directory instead of
    /// bench/ and docs/.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Measure nothing: re-write BENCHMARKS.md and bench.svg from an existing results.json.
    #[arg(long)]
    render: bool,
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
}

impl Plan {
    fn new(args: &BenchArgs) -> Plan {
        let chosen: Vec<&'static str> = if args.scenario.is_empty() {
            if args.quick {
                vec!["forwarding", "cost", "maglev"]
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
            }
        } else {
            Plan {
                quick: false,
                runs: args.runs.unwrap_or(3) as usize,
                scenarios: chosen,
                variants: forwarding::VARIANTS,
                protocols: &["udp", "tcp"],
                forwarding_targets: vec![3, 100],
                forwarding_count: 1_000_000,
                cost_runs: 30,
                cost_iterations: 500,
                cost_flows: 100_000,
                cost_mode: None,
                storm_syns: 1_000_000,
            }
        }
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

/// Where results.json, BENCHMARKS.md and bench.svg go.
fn output_paths(args: &BenchArgs) -> (PathBuf, PathBuf, PathBuf) {
    let root = crate::workspace_root();
    match &args.out {
        Some(dir) => (
            dir.join("results.json"),
            dir.join("BENCHMARKS.md"),
            dir.join("bench.svg"),
        ),
        None => (
            root.join("bench/results.json"),
            root.join("docs/BENCHMARKS.md"),
            root.join("docs/bench.svg"),
        ),
    }
}

/// `--render`: the summary and chart again from results.json.
pub fn render(args: &BenchArgs) -> anyhow::Result<()> {
    let (json_path, md_path, svg_path) = output_paths(args);
    let results: Value = serde_json::from_str(
        &std::fs::read_to_string(&json_path)
            .with_context(|| format!("reading {}", json_path.display()))?,
    )?;
    std::fs::write(&md_path, report::markdown(&results))?;
    std::fs::write(&svg_path, report::svg(&results))?;
    println!(
        "bench: wrote {} and {}",
        md_path.display(),
        svg_path.display()
    );
    Ok(())
}

pub fn is_render(args: &BenchArgs) -> bool {
    args.render
}

pub fn bench(sluice: &Path, args: BenchArgs) -> anyhow::Result<()> {
    sluice_tests::netns::require_root();
    let plan = Plan::new(&args);
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
            "control" => scenarios::control(sluice, &mut progress),
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

    let (json_path, md_path, svg_path) = output_paths(&args);
    for path in [&json_path, &md_path, &svg_path] {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
    }
    std::fs::write(&json_path, serde_json::to_string_pretty(&results)? + "\n")
        .with_context(|| format!("writing {}", json_path.display()))?;
    std::fs::write(&md_path, report::markdown(&results))
        .with_context(|| format!("writing {}", md_path.display()))?;
    std::fs::write(&svg_path, report::svg(&results))
        .with_context(|| format!("writing {}", svg_path.display()))?;
    progress.note(&format!(
        "bench: wrote {}, {} and {}",
        json_path.display(),
        md_path.display(),
        svg_path.display()
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
            if run["received"].as_u64().unwrap_or(0) == 0 {
                anyhow::bail!(
                    "forwarding {}/{}: nothing reached the targets",
                    cell["variant"],
                    cell["protocol"]
                );
            }
        }
    }
    Ok(())
}
