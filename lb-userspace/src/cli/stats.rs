//! `sluice stats`: the data plane's counters.

use std::path::PathBuf;

use lb_common::stats::CounterKind;
use sluice::{bpffs, stats};

#[derive(clap::Args)]
pub struct StatsArgs {
    /// bpffs directory given to `sluice run --pin-dir`.
    #[arg(long, value_name = "DIR", default_value = bpffs::DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// Print JSON (`{"counter_name": {"packets": N, "bytes": N}, ...}`) for scripts.
    #[arg(long)]
    json: bool,
}

pub fn stats(args: StatsArgs) -> anyhow::Result<()> {
    let counters = stats::read_pinned(&args.pin_dir)?;
    if args.json {
        let map: serde_json::Map<String, serde_json::Value> = counters
            .0
            .iter()
            .map(|(c, v)| {
                (
                    c.name().to_string(),
                    serde_json::json!({ "packets": v.packets, "bytes": v.bytes }),
                )
            })
            .collect();
        println!("{}", serde_json::Value::Object(map));
        return Ok(());
    }
    let width = counters
        .0
        .iter()
        .map(|(c, _)| c.name().len())
        .max()
        .unwrap_or(0);
    println!(
        "{:<width$}  {:>14}  {:>16}  meaning",
        "counter", "packets", "bytes"
    );
    for kind in [CounterKind::Outcome, CounterKind::Observation] {
        for (counter, value) in counters.0.iter().filter(|(c, _)| c.kind() == kind) {
            println!(
                "{:<width$}  {:>14}  {:>16}  {}",
                counter.name(),
                value.packets,
                value.bytes,
                counter.help()
            );
        }
    }
    Ok(())
}
