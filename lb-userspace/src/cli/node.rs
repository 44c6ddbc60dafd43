//! `sluice node drain|resume|status`: this node's BGP announcements (`sluice run
//! --bird-routes`). Draining withdraws every listener address, so the routers send new flows
//! to the other nodes while established flows finish here; `--wait` then waits until none is
//! left, so that the node can be stopped without resetting anyone.

use std::time::{Duration, Instant};

use anyhow::Context;
use hyper::Method;
use sluice::{
    announce::{AnnounceStatus, NodeState},
    api::{self, client::Client, NodeRequest},
};

use super::SocketArg;

#[derive(clap::Args)]
pub struct NodeArgs {
    #[command(subcommand)]
    command: NodeCommand,
    #[command(flatten)]
    socket: SocketArg,
}

#[derive(clap::Subcommand)]
enum NodeCommand {
    /// Withdraw every listener address from the routers; established flows go on here.
    Drain {
        /// Then wait, at most this many seconds, until no flow was active for the last
        /// seconds and no http/https connection is open (exit 1 if some still are).
        #[arg(long, value_name = "SECONDS",
              value_parser = clap::value_parser!(u64).range(1..=86400))]
        wait: Option<u64>,
    },
    /// Announce the listener addresses again.
    Resume,
    /// Show what this node announces and why it withholds the rest.
    Status {
        /// The status as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn node(args: NodeArgs) -> anyhow::Result<()> {
    let socket = &args.socket.socket;
    let set = |state| -> anyhow::Result<AnnounceStatus> {
        let answer = super::ask(
            socket,
            Method::POST,
            api::NODE_PATH,
            Some(&NodeRequest { state }),
        )?;
        serde_json::from_slice(&answer).context("the daemon's answer is not a node status")
    };
    match args.command {
        NodeCommand::Drain { wait } => {
            let status = set(NodeState::Draining)?;
            println!("node draining: every listener address is withdrawn from BGP; established flows go on");
            print!("{}", describe(&status));
            if let Some(wait) = wait {
                wait_for_quiet(socket, Duration::from_secs(wait))?;
            }
        }
        NodeCommand::Resume => {
            let status = set(NodeState::Serving)?;
            println!("node serving: the listener addresses are announced again");
            print!("{}", describe(&status));
        }
        NodeCommand::Status { json } => {
            let answer = super::ask(socket, Method::GET, api::NODE_PATH, None::<&()>)?;
            let status: AnnounceStatus = serde_json::from_slice(&answer)
                .context("the daemon's answer is not a node status")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", describe(&status));
            }
        }
    }
    Ok(())
}

/// What a node announces, one line each.
pub fn describe(status: &AnnounceStatus) -> String {
    let mut text = format!("  node: {}\n", status.node.name());
    let list = |addresses: &[std::net::IpAddr]| {
        if addresses.is_empty() {
            "nothing".to_string()
        } else {
            addresses
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    text += &format!("  announced by BIRD: {}\n", list(&status.announced));
    if status.wanted != status.announced {
        text += &format!("  to announce: {}\n", list(&status.wanted));
    }
    for withheld in &status.withheld {
        text += &format!("  withheld {}: {}\n", withheld.address, withheld.why);
    }
    if let Some(error) = &status.error {
        text += &format!("  BIRD: {error}\n");
    }
    text
}

/// Polls the daemon until no flow is active and no http/https connection is open.
fn wait_for_quiet(socket: &std::path::Path, patience: Duration) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let client = Client::new(socket);
    let deadline = Instant::now() + patience;
    loop {
        let report = runtime.block_on(client.stats())?;
        let flows: u64 = report.listeners.iter().filter_map(|l| l.active_flows).sum();
        let connections: u64 = report
            .http_listeners
            .iter()
            .map(|l| l.active_connections)
            .sum();
        if flows == 0 && connections == 0 {
            println!(
                "drained: no active flow and no open connection is left; the node can be stopped"
            );
            return Ok(());
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "still {flows} active flow(s) and {connections} open connection(s) after {} s of draining",
                patience.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
