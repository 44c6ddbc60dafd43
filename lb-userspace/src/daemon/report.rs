//! The report behind `sluice stats`, `sluice status` and the metrics: the data plane's
//! counters and traffic, arranged by the controller's listeners and targets, with the
//! proxy's numbers for http/https listeners.

use std::collections::BTreeMap;

use lb_common::target::Traffic;

use crate::{
    api::{
        CollectError, HttpListenerStats, ListenerStats, StatsReport, TargetGroupStats, TargetStats,
        TargetStatus,
    },
    controller::{Controller, TargetState},
    dataplane::{counters::ReadCounters, Dataplane},
    model::{Model, TargetKey},
    proxy::metrics::ProxyStats,
    rates::Rate,
};

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

/// The counters, and the controller's listeners and targets with their traffic.
pub fn stats_report<D: Dataplane>(
    controller: &Controller<D>,
    counters: &dyn ReadCounters,
) -> Result<StatsReport, CollectError> {
    let counters = counters.read_counters().map_err(CollectError::Counters)?;
    let ids: BTreeMap<&str, u32> = controller.listener_ids().collect();
    let maps = controller.dataplane();
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
            // ELB shows a deregistered target as `draining`, whatever its last check said.
            health: match state {
                TargetState::Active => controller.health(key).name().to_string(),
                TargetState::Draining { .. } => TargetStatus::Draining.name().to_string(),
            },
            reason: None,
            packets,
            bytes,
            new_flows,
            port_allocation_errors,
            rate: Rate::default(),
            active_flows: None,
            requests: None,
            request_errors: None,
        });
    }
    Ok(StatsReport {
        connection_tables: None,
        announcement: None,
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
        warnings: Vec::new(),
        health_transitions: Vec::new(),
        store: None,
    })
}

/// Writes the L7 proxy's per-target numbers into `report`'s targets.
pub fn fill_requests(report: &mut StatsReport, proxy: &ProxyStats) {
    for t in &mut report.targets {
        if let Some((_, n)) = proxy
            .targets
            .iter()
            .find(|(key, _)| key.group == t.group && key.addr == t.address)
        {
            t.requests = Some(n.requests);
            t.request_errors = Some(n.errors);
        }
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

/// Every http/https listener of `model`, with the proxy's numbers where it has them.
pub fn http_listeners(model: &Model, proxy: &ProxyStats) -> Vec<HttpListenerStats> {
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
                rejected_connections: n.rejected_connections,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
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
