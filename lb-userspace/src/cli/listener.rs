//! `sluice listener add|remove`: listeners of the running daemon's model.

use std::net::IpAddr;

use hyper::Method;
use sluice::{
    api::{self, ListenerRef},
    model::edit::ListenerSpec,
    model::{Mode, Protocol},
};

use super::SocketArg;

#[derive(clap::Args)]
pub struct ListenerArgs {
    #[command(subcommand)]
    command: ListenerCommand,
    #[command(flatten)]
    socket: SocketArg,
}

#[derive(clap::Subcommand)]
enum ListenerCommand {
    /// Add a listener: traffic to ADDRESS:PORT is balanced over the target group's targets.
    Add {
        /// A name no other listener has.
        name: String,
        /// The virtual IP.
        #[arg(long)]
        address: IpAddr,
        /// 0 = every port of the address.
        #[arg(long)]
        port: u16,
        #[arg(long, value_enum)]
        protocol: ProtocolArg,
        #[arg(long, value_enum, default_value = "nat")]
        mode: ModeArg,
        /// The listener's (default) target group, which must exist.
        #[arg(long, value_name = "NAME")]
        target_group: String,
        /// Maglev table size, a prime (default 65537).
        #[arg(long, value_name = "PRIME")]
        maglev_table_size: Option<u32>,
    },
    /// Remove a listener: its traffic passes to the kernel again.
    Remove { name: String },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ProtocolArg {
    Tcp,
    Udp,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ModeArg {
    Nat,
    Dsr,
    Tunnel,
}

pub fn listener(args: ListenerArgs) -> anyhow::Result<()> {
    let socket = &args.socket.socket;
    let path = api::LISTENERS_PATH;
    match args.command {
        ListenerCommand::Add {
            name,
            address,
            port,
            protocol,
            mode,
            target_group,
            maglev_table_size,
        } => {
            let done = format!("listener '{name}' added");
            let body = ListenerSpec {
                name,
                address,
                port,
                protocol: match protocol {
                    ProtocolArg::Tcp => Protocol::Tcp,
                    ProtocolArg::Udp => Protocol::Udp,
                },
                mode: Some(match mode {
                    ModeArg::Nat => Mode::Nat,
                    ModeArg::Dsr => Mode::Dsr,
                    ModeArg::Tunnel => Mode::Tunnel,
                }),
                target_group,
                maglev_table_size,
            };
            super::change(socket, Method::POST, path, &body, &done)
        }
        ListenerCommand::Remove { name } => {
            let done = format!("listener '{name}' removed");
            super::change(socket, Method::DELETE, path, &ListenerRef { name }, &done)
        }
    }
}
