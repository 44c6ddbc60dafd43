//! `sluice target add|remove|drain|set-weight`: targets of the running daemon's model.

use hyper::Method;
use sluice::{
    api::{self, TargetWeight},
    maglev::MAX_WEIGHT,
    model::edit::{self, TargetRef, TargetSpec},
};

use super::SocketArg;

#[derive(clap::Args)]
pub struct TargetArgs {
    #[command(subcommand)]
    command: TargetCommand,
    #[command(flatten)]
    socket: SocketArg,
}

#[derive(clap::Subcommand)]
enum TargetCommand {
    /// Register a target in a target group; new flows may reach it at once.
    Add {
        /// The target group.
        group: String,
        /// ADDRESS or ADDRESS:PORT (IPv6 with a port as [ADDRESS]:PORT); without a port, the
        /// group's port, else the listener's.
        #[arg(value_name = "ADDRESS[:PORT]", value_parser = parse_address)]
        address: Address,
        /// Its share of new flows relative to the group's other targets (1 to 999).
        #[arg(long, value_name = "N", default_value_t = 1, value_parser = weight())]
        weight: u32,
    },
    /// Deregister a target: it takes no new flows, keeps its flows for the group's
    /// deregistration delay (draining), then is gone. `drain` is another name for the same.
    #[command(visible_alias = "drain")]
    Remove {
        group: String,
        /// As the target was registered; the port may be left out when one target of the
        /// group has the address.
        #[arg(value_name = "ADDRESS[:PORT]", value_parser = parse_address)]
        address: Address,
    },
    /// Change a target's weight (1 to 999); existing flows stay where they are.
    SetWeight {
        group: String,
        #[arg(value_name = "ADDRESS[:PORT]", value_parser = parse_address)]
        address: Address,
        #[arg(value_parser = weight())]
        weight: u32,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Address {
    ip: std::net::IpAddr,
    port: Option<u16>,
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.port {
            Some(port) => std::net::SocketAddr::new(self.ip, port).fmt(f),
            None => self.ip.fmt(f),
        }
    }
}

fn parse_address(text: &str) -> Result<Address, String> {
    edit::parse_target_address(text).map(|(ip, port)| Address { ip, port })
}

fn weight() -> clap::builder::RangedI64ValueParser<u32> {
    clap::value_parser!(u32).range(1..=i64::from(MAX_WEIGHT))
}

pub fn target(args: TargetArgs) -> anyhow::Result<()> {
    let socket = &args.socket.socket;
    let path = api::TARGETS_PATH;
    match args.command {
        TargetCommand::Add {
            group,
            address,
            weight,
        } => {
            let done =
                format!("target {address} added to target group '{group}' with weight {weight}");
            let body = TargetSpec {
                group,
                address: address.ip,
                port: address.port,
                weight: Some(weight),
            };
            super::change(socket, Method::POST, path, &body, &done)
        }
        TargetCommand::Remove { group, address } => {
            let done = format!("target {address} removed from target group '{group}'");
            let body = TargetRef {
                group,
                address: address.ip,
                port: address.port,
            };
            super::change(socket, Method::DELETE, path, &body, &done)
        }
        TargetCommand::SetWeight {
            group,
            address,
            weight,
        } => {
            let done = format!("target {address} of target group '{group}' has weight {weight}");
            let body = TargetWeight {
                group,
                address: address.ip,
                port: address.port,
                weight,
            };
            super::change(socket, Method::PATCH, path, &body, &done)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::cli::Cli;

    fn refusal(args: &[&str]) -> String {
        match Cli::try_parse_from(std::iter::once("sluice").chain(args.iter().copied())) {
            Ok(_) => panic!("{args:?} was accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn weights_out_of_range_and_bad_addresses_are_refused_before_asking() {
        for args in [
            &["target", "set-weight", "web", "10.0.1.10", "0"][..],
            &["target", "set-weight", "web", "10.0.1.10", "1000"],
            &["target", "add", "web", "10.0.1.10", "--weight", "0"],
            &["target", "add", "web", "10.0.1.10", "--weight", "1000"],
        ] {
            assert!(refusal(args).contains("is not in 1..=999"), "{args:?}");
        }
        let bad = refusal(&["target", "remove", "web", "10.0.1"]);
        assert!(
            bad.contains("'10.0.1' is not ADDRESS or ADDRESS:PORT"),
            "{bad}"
        );
        for ok in [
            &["target", "add", "web", "10.0.1.10:3000", "--weight", "999"][..],
            &["target", "drain", "web", "[2001:db8::5]:80"],
            &[
                "target",
                "set-weight",
                "web",
                "10.0.1.10",
                "1",
                "--socket",
                "/tmp/s",
            ],
            &[
                "target",
                "--socket",
                "/tmp/s",
                "remove",
                "web",
                "2001:db8::5",
            ],
        ] {
            let parsed = Cli::try_parse_from(std::iter::once("sluice").chain(ok.iter().copied()));
            assert!(parsed.is_ok(), "{ok:?}: {}", parsed.err().unwrap());
        }
    }
}
