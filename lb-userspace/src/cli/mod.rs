//! Command-line interface: one module per subcommand.

mod bench;
mod check;
mod config;
mod decap;
mod down;
mod listener;
mod manual;
mod node;
mod reload;
mod run;
mod stats;
mod status;
mod stickiness;
mod table;
mod tables;
mod target;

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};
use hyper::{body::Bytes, Method};
use sluice::{
    api::{self, client::Client, ClientError},
    controller::Changes,
};

#[derive(Parser)]
#[command(name = "sluice", version, about = "An XDP load balancer for Linux")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Shown under the help of every subcommand that changes the running daemon.
const RUN_TIME_RULE: &str = "Changes edit the running daemon's model, validated as a whole like the configuration file and applied at once. They last until `sluice reload` (or SIGHUP), which re-reads the file and drops them: to keep a change, write it to the file too.";

#[derive(Subcommand)]
enum Command {
    /// Load the XDP program, attach it to interfaces and run until SIGINT/SIGTERM; forwarding
    /// goes on after it stops, and the next `sluice run` takes over without a gap.
    Run(Box<run::RunArgs>),
    /// Stop forwarding: detach the XDP program and remove its pins (and the daemon, if running).
    Down(down::DownArgs),
    /// Show the data plane's counters.
    Stats(stats::StatsArgs),
    /// Show listeners, target groups and targets: weights, states, health and traffic.
    Status(status::StatusArgs),
    /// Register, deregister or re-weight targets of the running daemon (until the next reload).
    #[command(after_help = RUN_TIME_RULE)]
    Target(target::TargetArgs),
    /// Add or remove listeners of the running daemon (until the next reload).
    #[command(after_help = RUN_TIME_RULE)]
    Listener(listener::ListenerArgs),
    /// This node's BGP announcements: drain it (withdraw every listener address, so routers
    /// send new flows to other nodes), resume it, or show them.
    Node(node::NodeArgs),
    /// Show each tcp/udp listener's Maglev table (slots per target and a digest to compare
    /// nodes).
    Tables(tables::TablesArgs),
    /// Re-read the daemon's configuration file (as SIGHUP does), dropping run-time changes.
    Reload(reload::ReloadArgs),
    /// Rotate the key stickiness cookies are signed with.
    Stickiness(stickiness::StickinessArgs),
    /// On a target of a `tunnel` listener: strip IPIP/IP6IP6 outer headers in XDP until SIGINT/SIGTERM.
    Decap(decap::DecapArgs),
    /// Generate traffic from inside the kernel and count it at sinks; `cost`, `maglev` and
    /// `floor` for the other measurements.
    Bench(bench::BenchArgs),
    /// Validate a configuration file as `sluice run` and `sluice reload` would, without loading
    /// or attaching anything; exits 1 with the daemon's own sentence if it would be refused.
    Check(check::CheckArgs),
    /// The running daemon's model: `sluice config show [--save]`.
    Config(config::ConfigArgs),
    /// Print shell completions (bash, zsh, fish, elvish, powershell) for sluice.
    Completions(manual::CompletionsArgs),
    /// Print the man page sluice(1) (roff), or write every page with --dir.
    Man(manual::ManArgs),
}

pub fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => run::run(*args),
        Command::Down(args) => down::down(args),
        Command::Stats(args) => stats::stats(args),
        Command::Status(args) => status::status(args),
        Command::Target(args) => target::target(args),
        Command::Listener(args) => listener::listener(args),
        Command::Node(args) => node::node(args),
        Command::Tables(args) => tables::tables(args),
        Command::Reload(args) => reload::reload(args),
        Command::Stickiness(args) => stickiness::stickiness(args),
        Command::Decap(args) => decap::decap(args),
        Command::Bench(args) => bench::bench(args),
        Command::Check(args) => check::check(args),
        Command::Config(args) => config::config(args),
        Command::Completions(args) => manual::completions(args),
        Command::Man(args) => manual::man(args),
    }
}

/// The daemon's control socket, for the subcommands that talk to it.
#[derive(clap::Args)]
struct SocketArg {
    /// The daemon's control socket (`sluice run --socket`).
    #[arg(long, value_name = "PATH", default_value = api::DEFAULT_SOCKET, global = true)]
    socket: PathBuf,
}

/// One request to the daemon. A refusal is the daemon's own sentence, which names what is
/// wrong; the status code adds nothing for people.
fn ask(
    socket: &Path,
    method: Method,
    path: &str,
    body: Option<&impl serde::Serialize>,
) -> anyhow::Result<Bytes> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let client = Client::new(socket);
    match runtime.block_on(client.send(method, path, body)) {
        Ok(body) => Ok(body),
        Err(ClientError::Status { message, .. }) => Err(anyhow::anyhow!(message)),
        Err(e) => Err(e.into()),
    }
}

/// Asks for a change of the running model and prints `done` and what the data plane did.
fn change(
    socket: &Path,
    method: Method,
    path: &str,
    body: &impl serde::Serialize,
    done: &str,
) -> anyhow::Result<()> {
    let answer = ask(socket, method, path, Some(body))?;
    let changes: Changes = serde_json::from_slice(&answer)
        .context("the daemon's answer is not the changes this sluice expects")?;
    match &changes.stored {
        Some((store, revision)) => {
            println!("{done}: revision {revision} of the model in {store}, applied here; every node follows")
        }
        None => println!(
            "{done} until the next reload (to keep it, write it to the configuration file)"
        ),
    }
    print!("{}", describe(&changes));
    Ok(())
}

/// One line per change, indented (the same sentences the daemon logs).
fn describe(changes: &Changes) -> String {
    let lines: Vec<String> = changes.lines().into_iter().map(|l| l.text).collect();
    if lines.is_empty() {
        return "  no change\n".to_string();
    }
    lines.iter().map(|l| format!("  {l}\n")).collect()
}
