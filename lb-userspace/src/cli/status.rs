//! `sluice status`: what the running daemon balances: listeners, target groups (failing open
//! or not) and targets (weight, state, health, traffic). The same report as `sluice stats`
//! (`GET /v1/stats`), arranged for reading the configuration rather than the counters.

use hyper::Method;
use sluice::api::{self, StatsReport};

use super::{
    table::{http_listeners, listener_address, table},
    SocketArg,
};

#[derive(clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    socket: SocketArg,
    /// Print the control API's JSON (`GET /v1/stats`) for scripts.
    #[arg(long)]
    json: bool,
}

pub fn status(args: StatusArgs) -> anyhow::Result<()> {
    let body = super::ask(
        &args.socket.socket,
        Method::GET,
        api::STATS_PATH,
        None::<&()>,
    )?;
    if args.json {
        print!("{}", String::from_utf8_lossy(&body));
    } else {
        let report: StatsReport = serde_json::from_slice(&body)?;
        print!("{}", render(&report));
    }
    Ok(())
}

/// The shared store's part of status: what this node runs, what it refused, every node.
fn describe_store(store: &sluice::store::StoreStatus) -> String {
    let revision = |r: Option<i64>| r.map_or("none".to_string(), |r| r.to_string());
    let mut out = format!(
        "\nstore {} (this node: {}): serving revision {}, latest seen {}\n",
        store.store,
        store.node,
        revision(store.applied_revision),
        revision(store.latest_revision)
    );
    if !store.reachable {
        let since = store.unreachable_since_ms.map_or("?".into(), |ms| {
            let ago = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64)
                .saturating_sub(ms);
            format!("{:.0} s", ago as f64 / 1000.0)
        });
        out.push_str(&format!(
            "  store unreachable for {since}, serving revision {} (changes are refused until it answers): {}\n",
            revision(store.applied_revision),
            store.last_error.as_deref().unwrap_or("")
        ));
    }
    if let Some(refused) = &store.refused {
        out.push_str(&format!(
            "  revision {} refused: {}\n",
            refused.revision, refused.reason
        ));
    }
    if let Some(why) = &store.credentials_not_used {
        out.push_str(&format!(
            "  renewed credential files not used (this node keeps the ones it has): {why}\n"
        ));
    }
    for (name, node) in &store.nodes {
        out.push_str(&format!(
            "  node {name}: revision {}{}\n",
            revision(node.applied_revision),
            node.refused.as_ref().map_or(String::new(), |r| format!(
                ", refused revision {}",
                r.revision
            ))
        ));
    }
    out
}

fn render(report: &StatsReport) -> String {
    let mut out = String::new();
    if !report.warnings.is_empty() {
        out.push_str("warnings (set-up problems that lose traffic):\n");
        for warning in &report.warnings {
            out.push_str(&format!("  - {warning}\n"));
        }
        out.push('\n');
    }
    if report.listeners.is_empty() && report.http_listeners.is_empty() {
        out.push_str("no listeners\n");
    } else if !report.listeners.is_empty() {
        let rows: Vec<Vec<String>> = report
            .listeners
            .iter()
            .map(|l| {
                vec![
                    l.name.clone(),
                    format!(
                        "{}/{}",
                        listener_address(l.address, l.port),
                        l.protocol.name()
                    ),
                    l.mode.name().to_string(),
                    l.target_group.clone(),
                    count(l.active_flows),
                    l.packets.to_string(),
                    si(l.rate.packets_per_second),
                    si(l.rate.bits_per_second),
                ]
            })
            .collect();
        table(
            &mut out,
            &[
                "listener",
                "address",
                "mode",
                "target group",
                "active flows",
                "packets",
                "pkt/s",
                "bit/s",
            ],
            &rows,
            &[4, 5, 6, 7],
        );
    }
    if !report.http_listeners.is_empty() {
        if !report.listeners.is_empty() {
            out.push('\n');
        }
        http_listeners(&mut out, &report.http_listeners);
    }
    out.push('\n');
    if report.target_groups.is_empty() {
        out.push_str("no target groups\n");
    } else {
        let rows: Vec<Vec<String>> = report
            .target_groups
            .iter()
            .map(|g| {
                let open = if g.failing_open { "yes" } else { "no" };
                vec![g.name.clone(), open.to_string()]
            })
            .collect();
        table(&mut out, &["target group", "failing open"], &rows, &[]);
    }
    out.push('\n');
    if report.targets.is_empty() {
        out.push_str("no targets\n");
    } else {
        let rows: Vec<Vec<String>> = report
            .targets
            .iter()
            .map(|t| {
                // A target only the L7 proxy sends to has requests, not packets.
                let l7_only = t.requests.is_some() && t.packets == 0;
                let packets = |text: String| if l7_only { "-".to_string() } else { text };
                vec![
                    t.group.clone(),
                    t.address.to_string(),
                    t.weight.map_or("-".to_string(), |w| w.to_string()),
                    t.state.name().to_string(),
                    t.health.clone(),
                    packets(count(t.active_flows)),
                    packets(t.new_flows.to_string()),
                    packets(t.packets.to_string()),
                    packets(si(t.rate.packets_per_second)),
                    packets(si(t.rate.bits_per_second)),
                    count(t.requests),
                    count(t.request_errors),
                    t.reason.clone().unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        table(
            &mut out,
            &[
                "target group",
                "target",
                "weight",
                "state",
                "health",
                "active flows",
                "new flows",
                "packets",
                "pkt/s",
                "bit/s",
                "requests",
                "errors",
                "reason",
            ],
            &rows,
            &[2, 5, 6, 7, 8, 9, 10, 11],
        );
    }
    if let Some(t) = &report.connection_tables {
        out.push_str(&format!(
            "\nconnection state: {} flow entries, {} nat translations; expired so far: {} flow entries, {} translations\n",
            t.flows, t.nat_translations, t.expired_flows, t.expired_translations
        ));
    }
    let refused = |name: &str| report.counters.get(name).map_or(0, |c| c.packets);
    let (full, gated, ports) = (
        refused("drop_flow_table_full"),
        refused("drop_flood_gated"),
        refused("drop_nat_ports_exhausted"),
    );
    if full + gated + ports > 0 {
        out.push_str(&format!(
            "refused new connections: {full} flow table full, {gated} flood gate, {ports} no nat port\n"
        ));
    }
    if let Some(store) = &report.store {
        out.push_str(&describe_store(store));
    }
    if let Some(announcement) = &report.announcement {
        out.push_str(&format!(
            "\nBGP announcements (through BIRD, {}):\n",
            announcement.routes_file
        ));
        out.push_str(&super::node::describe(announcement));
    }
    let drops = sluice::api::status_page::drops(report);
    if !drops.is_empty() {
        out.push_str("\npackets lost (`sluice stats` has every counter):\n");
        for drop in drops {
            out.push_str(&format!(
                "  {} {}: {}\n",
                drop.packets, drop.counter, drop.meaning
            ));
        }
    }
    out
}

/// A count, or `-` when the daemon did not count it.
fn count(value: Option<u64>) -> String {
    value.map_or("-".to_string(), |v| v.to_string())
}

/// A rate with an SI prefix: 950, 1.2k, 34.5M.
fn si(value: u64) -> String {
    const PREFIXES: [(u64, &str); 3] = [(1_000_000_000, "G"), (1_000_000, "M"), (1_000, "k")];
    for (scale, prefix) in PREFIXES {
        if value >= scale {
            return format!("{:.1}{prefix}", value as f64 / scale as f64);
        }
    }
    value.to_string()
}

#[cfg(test)]
mod tests {
    use sluice::{
        api::{HttpListenerStats, ListenerStats, TargetGroupStats, TargetStats, TargetStatus},
        model::{Mode, Protocol},
    };

    use super::*;

    #[test]
    fn connection_state_and_refusals() {
        let mut report = StatsReport::default();
        assert!(!render(&report).contains("connection state"));
        report.connection_tables = Some(sluice::api::ConnectionTables {
            flows: 50,
            nat_translations: 48,
            expired_flows: 20,
            expired_translations: 19,
            ..Default::default()
        });
        report.counters.insert(
            "drop_flow_table_full".into(),
            sluice::api::CounterStats {
                packets: 3,
                bytes: 180,
            },
        );
        let text = render(&report);
        assert!(
            text.contains("connection state: 50 flow entries, 48 nat translations; expired so far: 20 flow entries, 19 translations\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "refused new connections: 3 flow table full, 0 flood gate, 0 no nat port\n"
            ),
            "{text}"
        );
        assert!(
            text.ends_with(&format!(
                "\npackets lost (`sluice stats` has every counter):\n  3 drop_flow_table_full: {}\n",
                lb_common::stats::Counter::DropFlowTableFull.help().trim()
            )),
            "{text}"
        );
    }

    #[test]
    fn warnings_first_and_l7_targets_with_requests() {
        let report = StatsReport {
            warnings: vec!["IP forwarding is off: run sysctl -w net.ipv4.ip_forward=1".into()],
            targets: vec![TargetStats {
                group: "www".into(),
                address: "10.0.1.10:8080".parse().unwrap(),
                id: 0,
                state: TargetStatus::Active,
                weight: Some(1),
                health: "healthy".into(),
                packets: 0,
                bytes: 0,
                reason: None,
                new_flows: 0,
                port_allocation_errors: 0,
                rate: Default::default(),
                active_flows: Some(0),
                requests: Some(42),
                request_errors: Some(1),
            }],
            ..StatsReport::default()
        };
        let text = render(&report);
        assert!(
            text.starts_with("warnings (set-up problems that lose traffic):\n  - IP forwarding is off: run sysctl -w net.ipv4.ip_forward=1\n\n"),
            "{text}"
        );
        let row: Vec<&str> = text
            .lines()
            .find(|l| l.starts_with("www "))
            .unwrap()
            .split_whitespace()
            .collect();
        assert_eq!(
            row,
            [
                "www",
                "10.0.1.10:8080",
                "1",
                "active",
                "healthy",
                "-",
                "-",
                "-",
                "-",
                "-",
                "42",
                "1",
                "-"
            ],
            "{text}"
        );
    }

    #[test]
    fn tables_of_listeners_groups_and_targets() {
        let target = |address: &str, weight, state| TargetStats {
            group: "web".into(),
            address: address.parse().unwrap(),
            id: 0,
            state,
            weight,
            health: "healthy".into(),
            packets: 40,
            bytes: 4000,
            reason: None,
            new_flows: 4,
            port_allocation_errors: 0,
            rate: Default::default(),
            active_flows: Some(2),
            requests: None,
            request_errors: None,
        };
        let report = StatsReport {
            connection_tables: None,
            announcement: None,
            store: None,
            listeners: vec![ListenerStats {
                name: "web".into(),
                address: "192.0.2.10".parse().unwrap(),
                port: 80,
                protocol: Protocol::Tcp,
                mode: Mode::Dsr,
                target_group: "web".into(),
                id: 0,
                packets: 12,
                bytes: 960,
                new_flows: 2,
                rate: sluice::rates::Rate {
                    packets_per_second: 1500,
                    bits_per_second: 12_000_000,
                },
                active_flows: None,
            }],
            targets: vec![
                target("10.0.1.10:3000", Some(2), TargetStatus::Active),
                TargetStats {
                    health: "draining".into(),
                    reason: Some("Target.Timeout: Request timed out".into()),
                    active_flows: None,
                    ..target("10.0.1.11:3000", None, TargetStatus::Draining)
                },
            ],
            target_groups: vec![TargetGroupStats {
                name: "web".into(),
                failing_open: true,
            }],
            ..StatsReport::default()
        };
        let text = render(&report);
        let rows: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert!(
            rows.contains(&vec![
                "web",
                "192.0.2.10:80/tcp",
                "dsr",
                "web",
                "-",
                "12",
                "1.5k",
                "12.0M"
            ]),
            "{text}"
        );
        assert!(rows.contains(&vec!["web", "yes"]), "{text}");
        assert!(
            rows.contains(&vec![
                "web",
                "10.0.1.10:3000",
                "2",
                "active",
                "healthy",
                "2",
                "4",
                "40",
                "0",
                "0",
                "-",
                "-",
                "-"
            ]),
            "{text}"
        );
        assert!(
            rows.contains(&vec![
                "web",
                "10.0.1.11:3000",
                "-",
                "draining",
                "draining",
                "-",
                "4",
                "40",
                "0",
                "0",
                "-",
                "-",
                "Target.Timeout:",
                "Request",
                "timed",
                "out"
            ]),
            "{text}"
        );
        let with_http = render(&StatsReport {
            connection_tables: None,
            announcement: None,
            store: None,
            http_listeners: vec![HttpListenerStats {
                name: "site".into(),
                address: "192.0.2.10".parse().unwrap(),
                port: 443,
                protocol: Protocol::Https,
                target_group: "www".into(),
                requests: 120,
                active_connections: 3,
                new_connections: 40,
                elb_4xx: 2,
                elb_5xx: 1,
                tls_negotiation_errors: 5,
                rejected_connections: 7,
            }],
            ..report.clone()
        });
        let rows: Vec<Vec<&str>> = with_http
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert!(
            rows.contains(&vec![
                "site",
                "192.0.2.10:443/https",
                "www",
                "3",
                "40",
                "120",
                "2",
                "1",
                "5",
                "7"
            ]),
            "{with_http}"
        );
        assert!(with_http.starts_with(&text[..text.find("\n\n").unwrap()]));
        let only_http = render(&StatsReport {
            connection_tables: None,
            announcement: None,
            store: None,
            http_listeners: vec![HttpListenerStats {
                name: "site".into(),
                address: "192.0.2.10".parse().unwrap(),
                port: 80,
                protocol: Protocol::Http,
                target_group: "www".into(),
                requests: 0,
                active_connections: 0,
                new_connections: 0,
                elb_4xx: 0,
                elb_5xx: 0,
                tls_negotiation_errors: 0,
                rejected_connections: 0,
            }],
            ..StatsReport::default()
        });
        assert!(only_http.starts_with("http listener "), "{only_http}");
        let empty = render(&StatsReport::default());
        assert_eq!(empty, "no listeners\n\nno target groups\n\nno targets\n");
    }
}
