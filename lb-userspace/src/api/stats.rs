//! `GET /v1/stats`: the global counters and the traffic of every listener and target.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use aya::maps::MapError;
use lb_common::stats::CounterValue;
use serde::{Deserialize, Serialize};

use crate::{
    dataplane::MapsError,
    model::{Mode, Protocol},
    rates::Rate,
};

#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    #[error("reading the global counters (STATS): {0}")]
    Counters(#[source] MapError),
    #[error(transparent)]
    Maps(#[from] MapsError),
}

/// The answer to `GET /v1/stats`. Every number counts from the daemon's start, or for a
/// listener or target from when it was added; all are summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsReport {
    /// Global counters by name (see `lb_common::stats::Counter`).
    pub counters: BTreeMap<String, CounterStats>,
    /// In the configuration's order.
    pub listeners: Vec<ListenerStats>,
    /// By target group, then address; draining targets too.
    pub targets: Vec<TargetStats>,
    /// In the configuration's order.
    #[serde(default)]
    pub target_groups: Vec<TargetGroupStats>,
    /// http/https listeners, in the configuration's order: served by the L7 proxy, so
    /// counted in requests and connections rather than packets (absent from `listeners`).
    #[serde(default)]
    pub http_listeners: Vec<HttpListenerStats>,
    /// The connection-state tables as the last complete sweep counted them (none before the
    /// first one).
    #[serde(default)]
    pub connection_tables: Option<ConnectionTables>,
    /// The node's BGP announcements, when it announces (`sluice run --bird-routes`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announcement: Option<crate::announce::AnnounceStatus>,
    /// Set-up problems that make traffic disappear, each naming its fix (see
    /// `dataplane::preflight`); found at start and when the model changes.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// The latest health transitions, oldest first (at most [`HEALTH_TRANSITIONS_KEPT`]).
    #[serde(default)]
    pub health_transitions: Vec<HealthTransition>,
    /// The shared store the model comes from (`sluice run --store`), as this node sees it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<crate::store::StoreStatus>,
}

/// How many health transitions the daemon keeps for `status` and the status page.
pub const HEALTH_TRANSITIONS_KEPT: usize = 50;

/// A target's health changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthTransition {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub group: String,
    pub target: SocketAddr,
    pub from: String,
    pub to: String,
    pub reason: String,
}

/// Live entries of the flow table and of `nat` translations, and what the sweeps expired.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionTables {
    pub flows: u64,
    pub nat_translations: u64,
    /// Live translations per target id (a port each on the load balancer's address facing it).
    #[serde(default)]
    pub nat_translations_by_target: BTreeMap<u32, u64>,
    /// Entries the sweeps deleted since the daemon started.
    pub expired_flows: u64,
    pub expired_translations: u64,
}

impl From<&crate::dataplane::sweep::TableCounts> for ConnectionTables {
    fn from(c: &crate::dataplane::sweep::TableCounts) -> Self {
        ConnectionTables {
            flows: c.flows,
            nat_translations: c.nat_translations,
            nat_translations_by_target: c.nat_translations_by_target.clone(),
            expired_flows: c.expired_flows,
            expired_translations: c.expired_translations,
        }
    }
}

/// An http/https listener's numbers, from the L7 proxy (ALB's names in parentheses). Zero
/// while the proxy does not serve it (it could not bind its address).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpListenerStats {
    pub name: String,
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    /// The listener's default target group.
    pub target_group: String,
    /// Requests received, whatever their outcome (RequestCount).
    pub requests: u64,
    /// Client connections open now, upgraded ones included.
    pub active_connections: u64,
    /// Client connections accepted (NewConnectionCount).
    pub new_connections: u64,
    /// 4XX / 5XX answers the proxy made itself (HTTPCode_ELB_4XX_Count, ..._5XX_Count).
    pub elb_4xx: u64,
    pub elb_5xx: u64,
    /// https: handshakes that failed or timed out (ClientTLSNegotiationErrorCount).
    #[serde(default)]
    pub tls_negotiation_errors: u64,
    /// Connections reset at once because a connection limit was reached
    /// (RejectedConnectionCount).
    #[serde(default)]
    pub rejected_connections: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetGroupStats {
    pub name: String,
    /// No target is healthy, so traffic goes to all of them.
    pub failing_open: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterStats {
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerStats {
    pub name: String,
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub mode: Mode,
    /// The listener's default target group.
    #[serde(default)]
    pub target_group: String,
    pub id: u32,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// Over the last seconds (see `rates.rs`); zero until the daemon has sampled twice.
    #[serde(default)]
    pub rate: Rate,
    /// Flows seen in the last [`ACTIVE_WINDOW`]; counted for `GET /v1/stats`, not for metrics.
    #[serde(default)]
    pub active_flows: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetStats {
    pub group: String,
    pub address: SocketAddr,
    pub id: u32,
    pub state: TargetStatus,
    /// The weight in the running model; none for a draining target no longer in it.
    #[serde(default)]
    pub weight: Option<u32>,
    /// `initial`, `healthy` or `unhealthy`, from the health checker; `draining` once
    /// deregistered (ELB's states).
    #[serde(default)]
    pub health: String,
    /// Why it is not healthy, in ELB's words (`Target.Timeout: Request timed out`).
    #[serde(default)]
    pub reason: Option<String>,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// `nat` new connections refused for want of a free source port on this target (ELB's
    /// PortAllocationErrorCount).
    #[serde(default)]
    pub port_allocation_errors: u64,
    #[serde(default)]
    pub rate: Rate,
    #[serde(default)]
    pub active_flows: Option<u64>,
    /// Requests the L7 proxy sent to it, and those that got no response (connection
    /// failed, response broken, timed out); none when no http/https listener routes to it.
    #[serde(default)]
    pub requests: Option<u64>,
    #[serde(default)]
    pub request_errors: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetStatus {
    /// In its listeners' Maglev tables.
    Active,
    /// Deregistered: keeps its existing flows until the deregistration delay ends.
    Draining,
}

impl TargetStatus {
    pub const fn name(self) -> &'static str {
        match self {
            TargetStatus::Active => "active",
            TargetStatus::Draining => "draining",
        }
    }
}

impl From<CounterValue> for CounterStats {
    fn from(v: CounterValue) -> Self {
        CounterStats {
            packets: v.packets,
            bytes: v.bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wire format scripts and `curl` users rely on.
    #[test]
    fn json_shape() {
        let mut report = StatsReport {
            connection_tables: None,
            announcement: None,
            store: None,
            counters: [(
                "forward_nat".to_string(),
                CounterStats {
                    packets: 3,
                    bytes: 180,
                },
            )]
            .into(),
            listeners: vec![ListenerStats {
                name: "web".into(),
                address: "192.0.2.10".parse().unwrap(),
                port: 80,
                protocol: Protocol::Tcp,
                mode: Mode::Nat,
                target_group: "web".into(),
                id: 0,
                packets: 3,
                bytes: 180,
                new_flows: 1,
                rate: Default::default(),
                active_flows: None,
            }],
            targets: vec![TargetStats {
                group: "web".into(),
                address: "[2001:db8::5]:3000".parse().unwrap(),
                id: 7,
                state: TargetStatus::Draining,
                weight: None,
                health: "initial".into(),
                packets: 3,
                bytes: 180,
                reason: None,
                new_flows: 1,
                port_allocation_errors: 0,
                rate: Default::default(),
                active_flows: None,
                requests: Some(5),
                request_errors: Some(1),
            }],
            target_groups: vec![TargetGroupStats {
                name: "web".into(),
                failing_open: true,
            }],
            http_listeners: vec![HttpListenerStats {
                name: "site".into(),
                address: "192.0.2.10".parse().unwrap(),
                port: 443,
                protocol: Protocol::Https,
                target_group: "www".into(),
                requests: 9,
                active_connections: 1,
                new_connections: 4,
                elb_4xx: 2,
                elb_5xx: 1,
                tls_negotiation_errors: 3,
                rejected_connections: 6,
            }],
            warnings: vec!["IP forwarding is off".into()],
            health_transitions: vec![HealthTransition {
                at_ms: 1000,
                group: "web".into(),
                target: "[2001:db8::5]:3000".parse().unwrap(),
                from: "initial".into(),
                to: "healthy".into(),
                reason: "passed".into(),
            }],
        };
        report.connection_tables = Some(ConnectionTables {
            flows: 2,
            nat_translations: 1,
            nat_translations_by_target: [(7, 1)].into(),
            expired_flows: 5,
            expired_translations: 4,
        });
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "counters": { "forward_nat": { "packets": 3, "bytes": 180 } },
                "listeners": [{
                    "name": "web", "address": "192.0.2.10", "port": 80, "protocol": "tcp",
                    "mode": "nat", "target_group": "web", "id": 0, "packets": 3, "bytes": 180, "new_flows": 1,
                    "rate": { "packets_per_second": 0, "bits_per_second": 0 }, "active_flows": null
                }],
                "targets": [{
                    "group": "web", "address": "[2001:db8::5]:3000", "id": 7,
                    "state": "draining", "weight": null, "health": "initial", "reason": null, "packets": 3, "bytes": 180, "new_flows": 1, "port_allocation_errors": 0,
                    "rate": { "packets_per_second": 0, "bits_per_second": 0 }, "active_flows": null,
                    "requests": 5, "request_errors": 1
                }],
                "target_groups": [{ "name": "web", "failing_open": true }],
                "http_listeners": [{
                    "name": "site", "address": "192.0.2.10", "port": 443, "protocol": "https",
                    "target_group": "www", "requests": 9, "active_connections": 1,
                    "new_connections": 4, "elb_4xx": 2, "elb_5xx": 1, "tls_negotiation_errors": 3,
                    "rejected_connections": 6
                }],
                "connection_tables": {
                    "flows": 2, "nat_translations": 1, "nat_translations_by_target": { "7": 1 },
                    "expired_flows": 5, "expired_translations": 4
                },
                "warnings": ["IP forwarding is off"],
                "health_transitions": [{
                    "at_ms": 1000, "group": "web", "target": "[2001:db8::5]:3000",
                    "from": "initial", "to": "healthy", "reason": "passed"
                }]
            })
        );
        let mut old = json.clone();
        let back: StatsReport = serde_json::from_value(json).unwrap();
        assert_eq!(back, report);
        // A daemon from before http listeners were reported: none.
        old.as_object_mut().unwrap().remove("http_listeners");
        let back: StatsReport = serde_json::from_value(old).unwrap();
        assert!(back.http_listeners.is_empty());
    }
}
