//! Command-line interface: one module per subcommand.

mod decap;
mod run;
mod signals;
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
    /// On a target of a `tunnel` listener: strip IPIP/IP6IP6 outer headers in XDP until SIGINT/SIGTERM.
    Decap(decap::DecapArgs),
}

pub fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => run::run(args),
        Command::Stats(args) => stats::stats(args),
        Command::Decap(args) => decap::decap(args),
    }
}
