//! `GET /v1/stats`: the global counters and the traffic of every listener and target.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use aya::maps::{MapData, MapError, PerCpuArray};
use lb_common::{stats::CounterValue, target::Traffic};
use serde::{Deserialize, Serialize};

use crate::{
    controller::{Controller, TargetKey, TargetState},
    maps::MapsError,
    model::{Mode, Model, Protocol},
    rates::Rate,
    stats,
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
}

impl HttpListenerStats {
    /// Every http/https listener of `model`, with the proxy's numbers where it has them.
    pub fn collect(
        model: &Model,
        proxy: &crate::proxy::metrics::ProxyStats,
    ) -> Vec<HttpListenerStats> {
        model
            .listeners
            .iter()
            .filter(|l| l.protocol.is_l7())
            .map(|l| {
                let n = proxy
                    .listeners
                    .iter()
                    .find(|(name, _)| *name == l.name)
                    .map(|(_, n)| n.clone())
                    .unwrap_or_default();
                HttpListenerStats {
                    name: l.name.clone(),
                    address: l.address,
                    port: l.port,
                    protocol: l.protocol,
                    target_group: l.default_target_group.clone(),
                    requests: n.requests,
                    active_connections: n.active_connections,
                    new_connections: n.new_connections,
                    elb_4xx: n.elb_4xx,
                    elb_5xx: n.elb_5xx,
                    tls_negotiation_errors: n.tls_negotiation_errors,
                }
            })
            .collect()
    }
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
    /// `initial`, `healthy` or `unhealthy`, from the health checker.
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

/// A flow is active when a packet of it was seen this recently (ELB's ActiveFlowCount counts
/// flows active during the period; the flow table keeps idle entries until evicted).
pub const ACTIVE_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// Active flows per listener id and per target id.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ActiveFlows {
    pub listeners: BTreeMap<u32, u64>,
    pub targets: BTreeMap<u32, u64>,
}

impl ActiveFlows {
    /// Counts the flows last seen within `window` of `now_ns` (both CLOCK_MONOTONIC time; the
    /// XDP program's `bpf_ktime_get_coarse_ns` lags it by at most a tick).
    pub fn count(
        flows: impl Iterator<Item = lb_common::flow::Flow>,
        now_ns: u64,
        window: std::time::Duration,
    ) -> ActiveFlows {
        let mut active = ActiveFlows::default();
        let since = now_ns.saturating_sub(window.as_nanos() as u64);
        for flow in flows.filter(|f| f.last_seen_ns >= since) {
            *active.listeners.entry(flow.listener_id).or_default() += 1;
            *active.targets.entry(flow.target_id).or_default() += 1;
        }
        active
    }

    /// Writes the counts into `report` (zero for whoever has none).
    pub fn fill(&self, report: &mut StatsReport) {
        for l in &mut report.listeners {
            l.active_flows = Some(self.listeners.get(&l.id).copied().unwrap_or(0));
        }
        for t in &mut report.targets {
            t.active_flows = Some(self.targets.get(&t.id).copied().unwrap_or(0));
        }
    }
}

impl StatsReport {
    /// Reads the counters and the controller's listeners and targets.
    pub fn collect(
        controller: &Controller,
        counters: &PerCpuArray<MapData, CounterValue>,
    ) -> Result<StatsReport, CollectError> {
        let counters = stats::read(counters).map_err(CollectError::Counters)?;
        let ids: BTreeMap<&str, u32> = controller.listener_ids().collect();
        let maps = controller.maps();
        let model = controller.model();
        let failing_open: Vec<&str> = controller.failing_open().collect();
        let mut listeners = Vec::new();
        for listener in &controller.model().listeners {
            let Some(&id) = ids.get(listener.name.as_str()) else {
                continue;
            };
            let Traffic {
                packets,
                bytes,
                new_flows,
                port_allocation_errors: _,
            } = maps.listener_traffic(id)?;
            listeners.push(ListenerStats {
                name: listener.name.clone(),
                address: listener.address,
                port: listener.port,
                protocol: listener.protocol,
                mode: listener.mode(),
                target_group: listener.default_target_group.clone(),
                id,
                packets,
                bytes,
                new_flows,
                rate: Rate::default(),
                active_flows: None,
            });
        }
        let mut targets = Vec::new();
        for (key, id, state) in controller.targets() {
            let Traffic {
                packets,
                bytes,
                new_flows,
                port_allocation_errors,
            } = maps.target_traffic(id)?;
            targets.push(TargetStats {
                group: key.group.clone(),
                address: key.addr,
                id,
                state: match state {
                    TargetState::Active => TargetStatus::Active,
                    TargetState::Draining { .. } => TargetStatus::Draining,
                },
                weight: weight(model, key, state),
                health: controller.health(key).name().to_string(),
                reason: None,
                packets,
                bytes,
                new_flows,
                port_allocation_errors,
                rate: Rate::default(),
                active_flows: None,
            });
        }
        Ok(StatsReport {
            counters: counters
                .0
                .iter()
                .map(|(c, v)| (c.name().to_string(), (*v).into()))
                .collect(),
            listeners,
            targets,
            target_groups: model
                .target_groups
                .iter()
                .map(|g| TargetGroupStats {
                    name: g.name.clone(),
                    failing_open: failing_open.contains(&g.name.as_str()),
                })
                .collect(),
            http_listeners: Vec::new(),
        })
    }
}

/// A registered target's weight in the model. A target without a port of its own or its
/// group's takes each listener's port, so any port matches it.
fn weight(model: &Model, key: &TargetKey, state: TargetState) -> Option<u32> {
    if state != TargetState::Active {
        return None;
    }
    let group = model.target_group(&key.group)?;
    group
        .targets
        .iter()
        .find(|t| {
            t.address == key.addr.ip() && t.port.or(group.port).is_none_or(|p| p == key.addr.port())
        })
        .map(|t| t.weight)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wire format scripts and `curl` users rely on.
    #[test]
    fn json_shape() {
        let report = StatsReport {
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
            }],
        };
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
                    "rate": { "packets_per_second": 0, "bits_per_second": 0 }, "active_flows": null
                }],
                "target_groups": [{ "name": "web", "failing_open": true }],
                "http_listeners": [{
                    "name": "site", "address": "192.0.2.10", "port": 443, "protocol": "https",
                    "target_group": "www", "requests": 9, "active_connections": 1,
                    "new_connections": 4, "elb_4xx": 2, "elb_5xx": 1, "tls_negotiation_errors": 3
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

#[cfg(test)]
mod active_tests {
    use lb_common::flow::Flow;

    use super::*;

    #[test]
    fn only_recently_seen_flows_are_active() {
        const S: u64 = 1_000_000_000;
        let flow = |listener_id, target_id, last_seen_ns| Flow {
            listener_id,
            target_id,
            last_seen_ns,
            ..Flow::default()
        };
        let flows = [flow(0, 3, 100 * S), flow(0, 4, 41 * S), flow(1, 3, 39 * S)];
        let active = ActiveFlows::count(flows.into_iter(), 100 * S, ACTIVE_WINDOW);
        assert_eq!(active.listeners, BTreeMap::from([(0, 2)]));
        assert_eq!(active.targets, BTreeMap::from([(3, 1), (4, 1)]));
    }
}
