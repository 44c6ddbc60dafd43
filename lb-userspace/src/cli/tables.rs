//! `sluice tables`: each tcp/udp listener's Maglev table as the daemon wrote it, by target
//! address. Nodes running the same model show the same digest: ECMP moving a flow from one
//! node to another then does not move it to another target.

use std::collections::BTreeMap;

use anyhow::Context;
use hyper::Method;
use sluice::api::{self, MaglevTable};

use super::SocketArg;

#[derive(clap::Args)]
pub struct TablesArgs {
    #[command(flatten)]
    socket: SocketArg,
    /// Every slot, as JSON (`GET /v1/tables`).
    #[arg(long)]
    json: bool,
}

pub fn tables(args: TablesArgs) -> anyhow::Result<()> {
    let body = super::ask(
        &args.socket.socket,
        Method::GET,
        api::TABLES_PATH,
        None::<&()>,
    )?;
    if args.json {
        print!("{}", String::from_utf8_lossy(&body));
        return Ok(());
    }
    let tables: BTreeMap<String, MaglevTable> =
        serde_json::from_slice(&body).context("the daemon's answer is not a set of tables")?;
    if tables.is_empty() {
        println!("no tcp/udp listener");
    }
    for (name, table) in &tables {
        let mut shares: BTreeMap<_, usize> = BTreeMap::new();
        for slot in &table.slots {
            *shares.entry(slot).or_default() += 1;
        }
        let shares: Vec<String> = shares
            .iter()
            .map(|(target, n)| format!("{target} {n}"))
            .collect();
        println!(
            "listener '{name}': {} slots, sha256 {}\n  slots per target: {}",
            table.size,
            table.sha256,
            if shares.is_empty() {
                "none (no target to send to)".to_string()
            } else {
                shares.join(", ")
            }
        );
    }
    Ok(())
}
