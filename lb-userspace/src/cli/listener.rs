//! `sluice listener add|remove`: listeners of the running daemon's model.

use std::{net::IpAddr, path::PathBuf};

use anyhow::Context;

use hyper::Method;
use sluice::{
    api::{self, ListenerRef},
    model::edit::ListenerSpec,
    model::{parse_listener_address, CertificateFiles, Mode, Protocol},
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
    /// Add a listener: traffic to ADDRESS:PORT is balanced over the target group's targets
    /// (tcp and udp by the XDP program, http and https by the L7 proxy, which binds
    /// ADDRESS:PORT before the change is made: a port in use refuses it).
    Add {
        /// A name no other listener has.
        name: String,
        /// tcp/udp: the virtual IP. http/https: the address to listen on (0.0.0.0 or :: for
        /// every address of the host).
        #[arg(long, value_parser = listener_address)]
        address: IpAddr,
        /// 0 = every port of the address (tcp/udp).
        #[arg(long)]
        port: u16,
        #[arg(long, value_enum)]
        protocol: ProtocolArg,
        /// tcp/udp only (default nat).
        #[arg(long, value_enum)]
        mode: Option<ModeArg>,
        /// The listener's (default) target group, which must exist.
        #[arg(long, value_name = "NAME")]
        target_group: String,
        /// Maglev table size, a prime (default 65537).
        #[arg(long, value_name = "PRIME")]
        maglev_table_size: Option<u32>,
        /// https: the certificate chain (PEM); give --key with it. Repeat the pair for more
        /// certificates (chosen by SNI; the first is the default).
        #[arg(long, value_name = "FILE")]
        cert: Vec<PathBuf>,
        /// https: the private key (PEM) of the --cert at the same position.
        #[arg(long, value_name = "FILE")]
        key: Vec<PathBuf>,
    },
    /// Remove a listener: its traffic passes to the kernel again.
    Remove { name: String },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ProtocolArg {
    Tcp,
    Udp,
    /// Served by the L7 proxy with the listener's defaults (no rules).
    Http,
    /// Served by the L7 proxy with TLS termination: needs --cert and --key.
    Https,
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
            cert,
            key,
        } => {
            let certificates = certificates(cert, key)?;
            let done = format!("listener '{name}' added");
            let body = ListenerSpec {
                name,
                address,
                port,
                protocol: match protocol {
                    ProtocolArg::Tcp => Protocol::Tcp,
                    ProtocolArg::Udp => Protocol::Udp,
                    ProtocolArg::Http => Protocol::Http,
                    ProtocolArg::Https => Protocol::Https,
                },
                mode: mode.map(|mode| match mode {
                    ModeArg::Nat => Mode::Nat,
                    ModeArg::Dsr => Mode::Dsr,
                    ModeArg::Tunnel => Mode::Tunnel,
                }),
                target_group,
                maglev_table_size,
                certificates,
            };
            super::change(socket, Method::POST, path, &body, &done)
        }
        ListenerCommand::Remove { name } => {
            let done = format!("listener '{name}' removed");
            super::change(socket, Method::DELETE, path, &ListenerRef { name }, &done)
        }
    }
}

/// `--address`, with the model's hints (a port belongs in --port).
fn listener_address(text: &str) -> Result<IpAddr, String> {
    parse_listener_address(text).map_err(|e| {
        e.replace("write address = ", "use --address ")
            .replace(" and port = ", " --port ")
    })
}

/// `--cert`/`--key` pairs, as absolute paths: the daemon reads them from its own directory.
fn certificates(cert: Vec<PathBuf>, key: Vec<PathBuf>) -> anyhow::Result<Vec<CertificateFiles>> {
    if cert.len() != key.len() {
        anyhow::bail!(
            "{} --cert and {} --key given; give each certificate its key (--cert FILE --key FILE)",
            cert.len(),
            key.len()
        );
    }
    let absolute = |path: PathBuf| -> anyhow::Result<PathBuf> {
        std::path::absolute(&path).with_context(|| format!("resolving {}", path.display()))
    };
    cert.into_iter()
        .zip(key)
        .map(|(cert, key)| {
            Ok(CertificateFiles {
                cert: absolute(cert)?,
                key: absolute(key)?,
            })
        })
        .collect()
}
