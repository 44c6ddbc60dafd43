//! Command-line interface: one module per subcommand.

mod run;
mod stats;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "sluice", version, about = "An XDP load balancer for Linux")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the XDP program, attach it to an interface and run until SIGINT/SIGTERM.
    Run(run::RunArgs),
    /// Show the data plane's counters.
    Stats(stats::StatsArgs),
}

pub fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => run::run(args),
        Command::Stats(args) => stats::stats(args),
    }
}
