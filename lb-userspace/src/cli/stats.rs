//! `sluice stats`: the data plane's counters and every listener's and target's traffic, asked
//! of the running daemon over its control socket.

use std::{fmt::Write as _, path::PathBuf};

use anyhow::Context;
use lb_common::stats::{Counter, CounterKind};
use sluice::api::{self, client::Client, StatsReport};

use super::table::{column_width, listener_address};

#[derive(clap::Args)]
pub struct StatsArgs {
    /// The daemon's control socket (`sluice run --socket`).
    #[arg(long, value_name = "PATH", default_value = api::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Print the control API's JSON (`GET /v1/stats`) for scripts.
    #[arg(long)]
    json: bool,
    /// Every counter, zeros included (by default only those that moved).
    #[arg(long)]
    all: bool,
}

pub fn stats(args: StatsArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let client = Client::new(&args.socket);
    if args.json {
        let body = runtime.block_on(client.get(api::STATS_PATH))?;
        print!("{}", String::from_utf8_lossy(&body));
    } else {
        let report = runtime.block_on(client.stats())?;
        print!("{}", render(&report, args.all));
    }
    Ok(())
}

/// The counters table (outcomes, then observations, each in index order; counters this
/// version does not know, from a newer daemon, last; only those that moved unless `all`),
/// then the listeners and the targets.
fn render(report: &StatsReport, all: bool) -> String {
    let mut counters: Vec<(&str, &api::CounterStats, &str)> = Vec::new();
    for kind in [CounterKind::Outcome, CounterKind::Observation] {
        for counter in Counter::ALL.iter().filter(|c| c.kind() == kind) {
            if let Some(value) = report.counters.get(counter.name()) {
                counters.push((counter.name(), value, counter.help()));
            }
        }
    }
    for (name, value) in &report.counters {
        if !Counter::ALL.iter().any(|c| c.name() == name) {
            counters.push((name, value, ""));
        }
    }
    let total = counters.len();
    if !all {
        counters.retain(|(_, value, _)| value.packets > 0 || value.bytes > 0);
    }
    let mut out = String::new();
    if counters.is_empty() {
        let _ = writeln!(
            out,
            "no packet counted yet ({total} counters at 0; --all lists them)"
        );
        return out + &render_traffic(report);
    }
    let width = column_width("counter", counters.iter().map(|(name, _, _)| *name));
    let _ = writeln!(
        out,
        "{:<width$}  {:>14}  {:>16}  meaning",
        "counter", "packets", "bytes"
    );
    for (name, value, help) in &counters {
        let _ = writeln!(
            out,
            "{name:<width$}  {:>14}  {:>16}  {help}",
            value.packets, value.bytes
        );
    }
    if counters.len() < total {
        let _ = writeln!(
            out,
            "({} more counters at 0; --all lists them)",
            total - counters.len()
        );
    }
    out + &render_traffic(report)
}

/// The listeners' and targets' tables.
fn render_traffic(report: &StatsReport) -> String {
    let mut out = String::new();
    out.push('\n');
    if report.listeners.is_empty() && report.http_listeners.is_empty() {
        out.push_str("no listeners\n");
    } else if !report.listeners.is_empty() {
        let addresses: Vec<String> = report
            .listeners
            .iter()
            .map(|l| listener_address(l.address, l.port))
            .collect();
        let name_w = column_width("listener", report.listeners.iter().map(|l| l.name.as_str()));
        let addr_w = column_width("address", addresses.iter().map(String::as_str));
        let _ = writeln!(
            out,
            "{:<name_w$}  {:<addr_w$}  {:<8}  {:<6}  {:>14}  {:>16}  {:>12}",
            "listener", "address", "protocol", "mode", "packets", "bytes", "new flows"
        );
        for (l, address) in report.listeners.iter().zip(&addresses) {
            let _ = writeln!(
                out,
                "{:<name_w$}  {address:<addr_w$}  {:<8}  {:<6}  {:>14}  {:>16}  {:>12}",
                l.name,
                l.protocol.name(),
                l.mode.name(),
                l.packets,
                l.bytes,
                l.new_flows
            );
        }
    }
    if !report.http_listeners.is_empty() {
        if !report.listeners.is_empty() {
            out.push('\n');
        }
        super::table::http_listeners(&mut out, &report.http_listeners);
    }

    out.push('\n');
    if report.targets.is_empty() {
        out.push_str("no targets\n");
    } else {
        let addresses: Vec<String> = report
            .targets
            .iter()
            .map(|t| t.address.to_string())
            .collect();
        let group_w = column_width(
            "target group",
            report.targets.iter().map(|t| t.group.as_str()),
        );
        let addr_w = column_width("target", addresses.iter().map(String::as_str));
        let _ = writeln!(
            out,
            "{:<group_w$}  {:<addr_w$}  {:<8}  {:<9}  {:>14}  {:>16}  {:>12}",
            "target group", "target", "state", "health", "packets", "bytes", "new flows"
        );
        for (t, address) in report.targets.iter().zip(&addresses) {
            let _ = writeln!(
                out,
                "{:<group_w$}  {address:<addr_w$}  {:<8}  {:<9}  {:>14}  {:>16}  {:>12}",
                t.group,
                t.state.name(),
                t.health,
                t.packets,
                t.bytes,
                t.new_flows
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use sluice::{
        api::{CounterStats, ListenerStats, TargetStats, TargetStatus},
        model::{Mode, Protocol},
    };

    use super::*;

    fn report() -> StatsReport {
        let mut counters: std::collections::BTreeMap<String, CounterStats> = Counter::ALL
            .iter()
            .map(|c| (c.name().to_string(), CounterStats::default()))
            .collect();
        counters.insert(
            "forward_nat".into(),
            CounterStats {
                packets: 12,
                bytes: 960,
            },
        );
        counters.insert("from_a_newer_daemon".into(), CounterStats::default());
        StatsReport {
            connection_tables: None,
            announcement: None,
            store: None,
            counters,
            listeners: vec![
                ListenerStats {
                    name: "web".into(),
                    address: "192.0.2.10".parse().unwrap(),
                    port: 80,
                    protocol: Protocol::Tcp,
                    mode: Mode::Nat,
                    target_group: "web".into(),
                    id: 0,
                    packets: 12,
                    bytes: 960,
                    new_flows: 2,
                    rate: Default::default(),
                    active_flows: None,
                },
                ListenerStats {
                    name: "everything6".into(),
                    address: "2001:db8::10".parse().unwrap(),
                    port: 0,
                    protocol: Protocol::Udp,
                    mode: Mode::Tunnel,
                    target_group: "all".into(),
                    id: 1,
                    packets: 0,
                    bytes: 0,
                    new_flows: 0,
                    rate: Default::default(),
                    active_flows: None,
                },
            ],
            targets: vec![
                TargetStats {
                    group: "web".into(),
                    address: "10.0.1.10:3000".parse().unwrap(),
                    id: 0,
                    state: TargetStatus::Active,
                    weight: Some(1),
                    health: "healthy".into(),
                    packets: 7,
                    bytes: 560,
                    reason: None,
                    new_flows: 1,
                    port_allocation_errors: 0,
                    rate: Default::default(),
                    active_flows: None,
                    requests: None,
                    request_errors: None,
                },
                TargetStats {
                    group: "web".into(),
                    address: "10.0.1.11:3000".parse().unwrap(),
                    id: 1,
                    state: TargetStatus::Draining,
                    weight: None,
                    health: "initial".into(),
                    packets: 5,
                    bytes: 400,
                    reason: None,
                    new_flows: 1,
                    port_allocation_errors: 0,
                    rate: Default::default(),
                    active_flows: None,
                    requests: None,
                    request_errors: None,
                },
            ],
            target_groups: Vec::new(),
            http_listeners: Vec::new(),
            warnings: Vec::new(),
            health_transitions: Vec::new(),
        }
    }

    #[test]
    fn by_default_only_counters_that_moved() {
        let text = render(&report(), false);
        let counters: Vec<&str> = text.lines().take_while(|l| !l.is_empty()).collect();
        assert!(counters[0].starts_with("counter "), "{text}");
        assert!(counters[1].starts_with("forward_nat "), "{text}");
        assert_eq!(
            counters[2],
            format!(
                "({} more counters at 0; --all lists them)",
                Counter::ALL.len()
            ),
            "{text}"
        );
        assert_eq!(counters.len(), 3, "{text}");
        let mut quiet = report();
        quiet
            .counters
            .values_mut()
            .for_each(|c| *c = CounterStats::default());
        let text = render(&quiet, false);
        assert!(
            text.starts_with(&format!(
                "no packet counted yet ({} counters at 0; --all lists them)\n\nlistener ",
                Counter::ALL.len() + 1
            )),
            "{text}"
        );
    }

    #[test]
    fn tables_list_counters_in_order_then_listeners_then_targets() {
        let text = render(&report(), true);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("counter "), "{text}");
        let first = Counter::ALL
            .iter()
            .find(|c| c.kind() == CounterKind::Outcome)
            .unwrap();
        assert!(lines[1].starts_with(first.name()), "{text}");
        let nat = lines
            .iter()
            .find(|l| l.starts_with("forward_nat "))
            .unwrap();
        assert!(nat.contains(" 12 ") && nat.contains(" 960 "), "{nat}");
        assert!(nat.ends_with(Counter::ForwardNat.help()), "{nat}");
        // Unknown counters come last among the counters, without a meaning.
        let unknown = lines
            .iter()
            .position(|l| l.starts_with("from_a_newer_daemon"))
            .unwrap();
        assert_eq!(lines[unknown + 1], "", "{text}");

        let listeners = lines
            .iter()
            .position(|l| l.starts_with("listener "))
            .unwrap();
        let words = |line: &str| {
            line.split_whitespace()
                .map(String::from)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            words(lines[listeners + 1]),
            ["web", "192.0.2.10:80", "tcp", "nat", "12", "960", "2"]
        );
        assert_eq!(
            words(lines[listeners + 2]),
            [
                "everything6",
                "[2001:db8::10]:*",
                "udp",
                "tunnel",
                "0",
                "0",
                "0"
            ]
        );
        let targets = lines
            .iter()
            .position(|l| l.starts_with("target group "))
            .unwrap();
        assert_eq!(
            words(lines[targets + 1]),
            [
                "web",
                "10.0.1.10:3000",
                "active",
                "healthy",
                "7",
                "560",
                "1"
            ]
        );
        assert_eq!(
            words(lines[targets + 2]),
            [
                "web",
                "10.0.1.11:3000",
                "draining",
                "initial",
                "5",
                "400",
                "1"
            ]
        );
        // Columns line up: every row of a table is as wide as its header.
        for table in [listeners, targets] {
            let header = lines[table];
            for row in &lines[table + 1..table + 3] {
                assert_eq!(row.len(), header.len(), "{header:?} vs {row:?}");
            }
        }
    }

    #[test]
    fn no_listeners_and_no_targets_say_so() {
        let report = StatsReport {
            connection_tables: None,
            announcement: None,
            store: None,
            listeners: Vec::new(),
            targets: Vec::new(),
            ..report()
        };
        let text = render(&report, true);
        assert!(text.ends_with("\nno listeners\n\nno targets\n"), "{text}");
    }

    #[test]
    fn http_listeners_follow_the_listeners() {
        let report = StatsReport {
            connection_tables: None,
            announcement: None,
            store: None,
            http_listeners: vec![sluice::api::HttpListenerStats {
                name: "site".into(),
                address: "192.0.2.10".parse().unwrap(),
                port: 80,
                protocol: Protocol::Http,
                target_group: "www".into(),
                requests: 7,
                active_connections: 1,
                new_connections: 2,
                elb_4xx: 3,
                elb_5xx: 0,
                tls_negotiation_errors: 0,
                rejected_connections: 0,
            }],
            ..report()
        };
        let text = render(&report, true);
        let listeners = text.find("\nlistener ").unwrap();
        let http = text.find("\n\nhttp listener ").unwrap();
        let targets = text.find("\ntarget group ").unwrap();
        assert!(listeners < http && http < targets, "{text}");
        assert!(
            text.lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>()
                    == [
                        "site",
                        "192.0.2.10:80/http",
                        "www",
                        "1",
                        "2",
                        "7",
                        "3",
                        "0",
                        "0",
                        "0"
                    ]),
            "{text}"
        );
    }
}
