//! The controller: keeps the kernel maps in step with the model.
//!
//! `apply` first plans (everything that can fail without touching the maps: validation,
//! Maglev tables, id allocation, source addresses), then commits in an order that keeps the
//! data plane's invariants at every step:
//! 1. new or returning targets are written to `TARGETS` as active before any table names them;
//! 2. Maglev tables are swapped whole (one map update per listener);
//! 3. listeners are added or updated after their table exists, removed before anything else;
//! 4. targets that left every table are marked draining; their flows keep them until the
//!    deregistration delay ends (`tick`), then they are gone and their flows re-hashed.
//!
//! Target ids are not reused while flow entries may still name them (see [`IdPool`]).
//!
//! The controller writes through the [`Dataplane`] trait: the kernel's maps in `sluice run`,
//! an in-memory recording in the unit tests (`tests.rs`), which check each rule above.

mod changes;
mod ids;
mod plan;
#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use lb_common::{
    listener::{self as abi, ListenerKey},
    proto::{IPPROTO_ICMP, IPPROTO_ICMPV6},
    target::{TARGET_ACTIVE, TARGET_DRAINING, TARGET_GONE},
};

pub use changes::Changes;
pub use ids::IdPool;
use plan::{PlanError, PlanInputs};

use crate::{
    dataplane::{
        saved::{SavedListener, SavedState, SavedTarget},
        Dataplane, Maps, MapsError,
    },
    health::{Health, HealthCheck},
    maglev,
    model::{self, Model, TargetKey, TargetView},
};

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("target {target} of target group '{group}' is unreachable from this host: {source}")]
    NoRoute {
        group: String,
        target: SocketAddr,
        source: std::io::Error,
    },
    #[error("more than {max} listeners; start sluice run with a larger --max-listeners")]
    TooManyListeners { max: u32 },
    #[error("more than {max} target ids in use (targets, plus removed ones still draining or named by flows); start sluice run with a larger --max-targets")]
    TooManyTargets { max: u32 },
    #[error(transparent)]
    Maglev(#[from] maglev::MaglevError),
    #[error("updating the kernel maps: {0}")]
    Maps(#[from] MapsError),
}

/// Where a target stands in the data plane.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetState {
    /// In its listeners' Maglev tables.
    Active,
    /// Deregistered: no new flows; existing flows keep it until `until`.
    Draining { until: Instant },
}

#[derive(Clone, Debug)]
struct AppliedTarget {
    id: u32,
    state: TargetState,
    snat: IpAddr,
    /// What `TARGETS` says: `TARGET_ACTIVE`, or `TARGET_GONE` for an unhealthy target outside
    /// every table (its flows are re-hashed); draining targets are `TARGET_DRAINING`.
    kernel_state: u8,
}

#[derive(Clone, Debug)]
struct AppliedListener {
    id: u32,
    key: ListenerKey,
    value: abi::Listener,
    table: Vec<u32>,
}

pub struct Controller<D: Dataplane = Maps> {
    dataplane: D,
    model: Model,
    /// The model's settings as changes describe them; adopted from the previous daemon's
    /// saved state, so a takeover describes what its first model changes.
    summary: model::diff::Summary,
    listeners: BTreeMap<String, AppliedListener>,
    targets: BTreeMap<TargetKey, AppliedTarget>,
    ids: IdPool,
    /// Health of registered targets, from the health checker; missing = initial.
    health: BTreeMap<TargetKey, Health>,
    /// Target groups failing open (no healthy target).
    failing_open: BTreeSet<String>,
    /// Deregistration delays of groups adopted from a previous daemon, for targets whose
    /// group the first model no longer has.
    adopted_delays: BTreeMap<String, Duration>,
}

impl<D: Dataplane> Controller<D> {
    /// Takes over a freshly loaded data plane (no listeners, no targets).
    pub fn new(dataplane: D) -> Controller<D> {
        let ids = IdPool::new(dataplane.target_capacity());
        Controller {
            dataplane,
            model: Model::default(),
            summary: model::diff::Summary::default(),
            listeners: BTreeMap::new(),
            targets: BTreeMap::new(),
            ids,
            health: BTreeMap::new(),
            failing_open: BTreeSet::new(),
            adopted_delays: BTreeMap::new(),
        }
    }

    /// Takes over maps that a previous daemon pinned, with the state it saved: the same ids
    /// for the same listeners and targets, the same drains (their remaining time), the same
    /// health. The next [`Controller::apply`] then changes only what the new model changes;
    /// it rewrites each listener's Maglev table once (with the same content, in one swap).
    pub fn adopt(
        dataplane: D,
        saved: &SavedState,
        now: Instant,
    ) -> Result<Controller<D>, ApplyError> {
        let mut controller = Controller::new(dataplane);
        controller.summary = saved.summary.clone();
        let mut keys = BTreeMap::new();
        for (key, value) in controller.dataplane.listeners()? {
            // ICMP entries (port 0, ICMP or ICMPv6) share their address's listener id.
            let icmp = key.port_be == 0 && matches!(key.protocol, IPPROTO_ICMP | IPPROTO_ICMPV6);
            if !icmp {
                keys.insert(value.id, (key, value));
            }
        }
        for listener in &saved.listeners {
            let Some(&(key, value)) = keys.get(&listener.id) else {
                log::warn!(
                    "saved listener '{}' (id {}) is not in the LISTENERS map; it starts afresh",
                    listener.name,
                    listener.id
                );
                continue;
            };
            controller.listeners.insert(
                listener.name.clone(),
                AppliedListener {
                    id: listener.id,
                    key,
                    value,
                    // Unknown here: the first apply writes the table again.
                    table: Vec::new(),
                },
            );
        }
        for target in &saved.targets {
            let key = TargetKey {
                group: target.group.clone(),
                addr: target.addr,
            };
            let state = match target.draining_for {
                Some(left) => TargetState::Draining { until: now + left },
                None => TargetState::Active,
            };
            controller.targets.insert(
                key.clone(),
                AppliedTarget {
                    id: target.id,
                    state,
                    snat: target.snat,
                    kernel_state: target.kernel_state,
                },
            );
            controller
                .adopted_delays
                .insert(target.group.clone(), target.deregistration_delay);
            match Health::from_name(&target.health) {
                Some(Health::Initial) | None => {}
                Some(health) => {
                    controller.health.insert(key, health);
                }
            }
        }
        controller.ids = IdPool::from_saved(&saved.ids, controller.dataplane.target_capacity());
        Ok(controller)
    }

    /// What a restarted daemon needs to adopt the maps (see [`Controller::adopt`]).
    pub fn saved(&self, now: Instant) -> SavedState {
        SavedState {
            listeners: self
                .listeners
                .iter()
                .map(|(name, l)| SavedListener {
                    name: name.clone(),
                    id: l.id,
                })
                .collect(),
            targets: self
                .targets
                .iter()
                .map(|(key, t)| SavedTarget {
                    group: key.group.clone(),
                    addr: key.addr,
                    id: t.id,
                    snat: t.snat,
                    kernel_state: t.kernel_state,
                    draining_for: match t.state {
                        TargetState::Active => None,
                        TargetState::Draining { until } => {
                            Some(until.saturating_duration_since(now))
                        }
                    },
                    deregistration_delay: self.drain_delay(&self.model, key),
                    health: self.health_of(key).name().to_string(),
                })
                .collect(),
            ids: self.ids.saved(),
            summary: self.summary.clone(),
            node: Default::default(),
        }
    }

    /// Health of every registered target that has left `initial`, for a new health checker.
    pub fn known_health(&self) -> impl Iterator<Item = (&TargetKey, Health)> {
        self.health.iter().map(|(k, h)| (k, *h))
    }

    fn health_of(&self, key: &TargetKey) -> Health {
        self.health.get(key).copied().unwrap_or(Health::Initial)
    }

    /// Records a target's new health and rebuilds what depends on it (tables, target states).
    pub fn set_health(
        &mut self,
        key: &TargetKey,
        health: Health,
        now: Instant,
    ) -> Result<Changes, ApplyError> {
        if !self.targets.contains_key(key) {
            // A late event about a target that is no longer registered.
            return Ok(Changes::default());
        }
        self.health.insert(key.clone(), health);
        let model = self.model.clone();
        self.apply(&model, now)
    }

    /// What the health checker should check: every registered target that is not draining,
    /// at its traffic address, with its group's settings.
    pub fn health_checks(&self) -> Vec<(TargetKey, SocketAddr, HealthCheck)> {
        self.targets
            .iter()
            .filter(|(_, t)| t.state == TargetState::Active)
            .filter_map(|(key, _)| {
                let group = self.model.target_group(&key.group)?;
                Some((key.clone(), key.addr, group.health_check()))
            })
            .collect()
    }

    /// Target groups with no healthy target, sending traffic to all of them.
    pub fn failing_open(&self) -> impl Iterator<Item = &str> {
        self.failing_open.iter().map(String::as_str)
    }

    /// A target's health (initial until the checker reports).
    pub fn health(&self, key: &TargetKey) -> Health {
        self.health_of(key)
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn dataplane(&self) -> &D {
        &self.dataplane
    }

    /// Expires idle and closed entries of the connection-state tables (see
    /// `dataplane::sweep`); the counts of the last complete walk.
    pub fn sweep(
        &mut self,
        now_ns: u64,
    ) -> Result<Option<crate::dataplane::sweep::TableCounts>, crate::dataplane::MapsError> {
        self.dataplane.sweep(now_ns)
    }

    #[cfg(test)]
    fn dataplane_mut(&mut self) -> &mut D {
        &mut self.dataplane
    }

    /// Makes the data plane match `model`. On error nothing was changed (a failure while
    /// writing the maps themselves, which the kernel does not do for valid input, is reported
    /// and may leave a partial update).
    pub fn apply(&mut self, model: &Model, now: Instant) -> Result<Changes, ApplyError> {
        let mut inputs = PlanInputs {
            sources: self.sources(model),
            flow_target_ids: None,
        };
        let plan = match self.plan(model, &inputs) {
            Err(PlanError::NeedsFlowScan) => {
                let named = self
                    .dataplane
                    .flows()
                    .iter()
                    .map(|(_, f)| f.target_id)
                    .collect();
                inputs.flow_target_ids = Some(named);
                self.plan(model, &inputs)
            }
            planned => planned,
        }
        .map_err(|e| match e {
            PlanError::Apply(e) => e,
            PlanError::NeedsFlowScan => unreachable!("planned with the flow table's ids"),
        })?;
        let mut changes = Changes {
            settings: self.summary.changes_to(&model::diff::Summary::of(model)),
            ..Changes::default()
        };

        self.dataplane.set_config(&plan.config)?;
        // Not fatal: the data plane hands packets for an unresolved next hop to the kernel
        // (nat, tunnel) or drops them, counted (dsr).
        let new_addresses: BTreeSet<IpAddr> = plan
            .targets
            .keys()
            .filter(|key| !self.targets.contains_key(*key))
            .map(|key| key.addr.ip())
            .collect();
        let addresses: Vec<IpAddr> = new_addresses.into_iter().collect();
        for (address, managed) in self.dataplane.manage_next_hops(&addresses) {
            if let Err(e) = managed {
                log::warn!("target {address}: cannot keep its next hop resolved: {e}");
            }
        }
        // 1. Targets that tables will name, active first.
        for (key, target) in &plan.targets {
            let current = self.targets.get(key);
            let unchanged = current.is_some_and(|c| {
                c.state == TargetState::Active
                    && c.snat == target.snat
                    && c.kernel_state == target.kernel_state
            });
            // Unhealthy targets are marked gone only after the tables without them (below).
            if !unchanged && target.kernel_state == TARGET_ACTIVE {
                if current.is_none() {
                    // The id may have served a target that is gone: count from zero.
                    self.dataplane.reset_target_traffic(target.id)?;
                }
                self.dataplane
                    .set_target(target.id, &plan.target_entry(key, target, TARGET_ACTIVE))?;
                if current.is_none() {
                    changes.targets_added.push(key.clone());
                }
            }
        }
        // 3 (removals first): traffic for removed listeners goes back to the kernel.
        for (name, applied) in &self.listeners {
            if !plan.listeners.contains_key(name) {
                self.dataplane.remove_listener(&applied.key)?;
                self.dataplane.set_maglev_table(applied.id, &[])?;
                changes.listeners_removed.push(name.clone());
            }
        }
        // 2. Tables, then listeners.
        for (name, listener) in &plan.listeners {
            let current = self.listeners.get(name);
            if current.map(|c| &c.table) != Some(&listener.table) {
                self.dataplane
                    .set_maglev_table(listener.id, &listener.table)?;
                changes.tables_rebuilt.push(name.clone());
            }
            if current.map(|c| (&c.key, &c.value)) != Some((&listener.key, &listener.value)) {
                if let Some(current) = current.filter(|c| c.key != listener.key) {
                    self.dataplane.remove_listener(&current.key)?;
                }
                if current.is_none() {
                    // The id may have served a removed listener (whose last packets, still
                    // in flight on other CPUs, may yet add a few).
                    self.dataplane.reset_listener_traffic(listener.id)?;
                }
                self.dataplane
                    .set_listener(&listener.key, &listener.value)?;
                if current.is_none() {
                    changes.listeners_added.push(name.clone());
                }
            }
        }
        self.sync_icmp_entries(&plan.listeners)?;
        // Unhealthy targets out of every table: their flows move on (re-hashed).
        for (key, target) in &plan.targets {
            let was = self.targets.get(key).map(|c| c.kernel_state);
            if target.kernel_state == TARGET_GONE && was != Some(TARGET_GONE) {
                self.dataplane
                    .set_target(target.id, &plan.target_entry(key, target, TARGET_GONE))?;
                if was.is_none() {
                    changes.targets_added.push(key.clone());
                }
            }
        }
        for group in plan.failing_open.difference(&self.failing_open) {
            changes.failing_open.push(group.clone());
        }
        for group in self.failing_open.difference(&plan.failing_open) {
            changes.failing_closed.push(group.clone());
        }
        self.failing_open = plan.failing_open.clone();
        // 4. Targets that left every table drain.
        let old_targets = std::mem::take(&mut self.targets);
        for (key, old) in old_targets {
            if plan.targets.contains_key(&key) {
                continue;
            }
            let state = match old.state {
                TargetState::Active => {
                    let delay = self.drain_delay(model, &key);
                    // An unhealthy target stays gone: its flows must not stick to it.
                    if old.kernel_state != TARGET_GONE {
                        self.dataplane
                            .set_target(old.id, &plan.target_entry(&key, &old, TARGET_DRAINING))?;
                    }
                    changes.targets_draining.push(key.clone());
                    TargetState::Draining { until: now + delay }
                }
                draining => draining,
            };
            self.targets.insert(key, AppliedTarget { state, ..old });
        }
        for (key, target) in plan.targets {
            self.targets.insert(key, target);
        }
        // Health is kept for registered targets only; a target registered again starts over.
        let active: BTreeSet<&TargetKey> = self
            .targets
            .iter()
            .filter(|(_, t)| t.state == TargetState::Active)
            .map(|(k, _)| k)
            .collect();
        self.health.retain(|k, _| active.contains(k));
        self.listeners = plan.listeners;
        self.ids = plan.ids;
        self.model = model.clone();
        self.summary = model::diff::Summary::of(model);
        self.tick(now)?;
        Ok(changes)
    }

    /// Ends drains whose deregistration delay is over: the target is gone, flows still naming
    /// it are re-hashed by the data plane, and its id waits in quarantine.
    pub fn tick(&mut self, now: Instant) -> Result<Vec<TargetKey>, ApplyError> {
        let expired: Vec<TargetKey> = self
            .targets
            .iter()
            .filter(|(_, t)| matches!(t.state, TargetState::Draining { until } if until <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for key in &expired {
            let target = self.targets.remove(key).expect("listed above");
            let mut entry = self.dataplane.target(target.id)?;
            entry.state = TARGET_GONE;
            self.dataplane.set_target(target.id, &entry)?;
            self.ids.quarantine(target.id);
        }
        Ok(expired)
    }

    /// Every registered target's health and whether it is draining, for the L7 proxy's
    /// routing snapshot.
    pub fn target_views(&self) -> BTreeMap<TargetKey, TargetView> {
        self.targets
            .iter()
            .map(|(key, t)| {
                let view = TargetView {
                    health: self.health_of(key),
                    draining: t.state != TargetState::Active,
                };
                (key.clone(), view)
            })
            .collect()
    }

    /// Every tcp/udp listener's Maglev table as last written to the data plane, slot by slot,
    /// as target addresses: ids are this node's own, addresses are what every node must agree
    /// on. An empty table (no target to send to) is empty here.
    pub fn maglev_tables(&self) -> BTreeMap<String, Vec<SocketAddr>> {
        let addresses: BTreeMap<u32, SocketAddr> = self
            .targets
            .iter()
            .map(|(key, t)| (t.id, key.addr))
            .collect();
        let unknown = SocketAddr::from(([0, 0, 0, 0], 0));
        self.listeners
            .iter()
            .map(|(name, listener)| {
                let slots = listener
                    .table
                    .iter()
                    .map(|id| addresses.get(id).copied().unwrap_or(unknown))
                    .collect();
                (name.clone(), slots)
            })
            .collect()
    }

    /// Targets with their id and state, for status output.
    pub fn targets(&self) -> impl Iterator<Item = (&TargetKey, u32, TargetState)> {
        self.targets.iter().map(|(k, t)| (k, t.id, t.state))
    }

    /// Listener ids by name.
    pub fn listener_ids(&self) -> impl Iterator<Item = (&str, u32)> {
        self.listeners.iter().map(|(n, l)| (n.as_str(), l.id))
    }

    /// The source address towards every target of a group a listener uses (the data plane
    /// asks the routing table: `nat` mode's source address, and whether the target is
    /// reachable at all).
    fn sources(
        &self,
        model: &Model,
    ) -> BTreeMap<IpAddr, Result<IpAddr, (std::io::ErrorKind, String)>> {
        let mut sources = BTreeMap::new();
        for listener in &model.listeners {
            for name in listener.target_groups() {
                let Some(group) = model.target_group(name) else {
                    continue;
                };
                for target in &group.targets {
                    sources.entry(target.address).or_insert_with(|| {
                        self.dataplane
                            .source_for(target.address)
                            .map_err(|e| (e.kind(), e.to_string()))
                    });
                }
            }
        }
        sources
    }

    fn drain_delay(&self, model: &Model, key: &TargetKey) -> Duration {
        // The group's delay in the new model, else in the model it was registered under.
        model
            .target_group(&key.group)
            .or_else(|| self.model.target_group(&key.group))
            .map(model::TargetGroup::deregistration_delay)
            .or_else(|| self.adopted_delays.get(&key.group).copied())
            .unwrap_or_default()
    }

    /// Each listener address gets an ICMP entry (port 0, ICMP/ICMPv6), so echo requests and
    /// ICMP errors about its flows are recognised.
    fn sync_icmp_entries(
        &mut self,
        listeners: &BTreeMap<String, AppliedListener>,
    ) -> Result<(), ApplyError> {
        let wanted: BTreeMap<([u8; 16], u8), abi::Listener> = listeners
            .values()
            .map(|l| ((l.key.addr, l.key.family), l.value))
            .collect();
        let existing: BTreeSet<([u8; 16], u8)> = self
            .listeners
            .values()
            .map(|l| (l.key.addr, l.key.family))
            .collect();
        for (addr, family) in existing.difference(&wanted.keys().copied().collect()) {
            self.dataplane.remove_listener(&icmp_key(*addr, *family))?;
        }
        for ((addr, family), value) in &wanted {
            self.dataplane
                .set_listener(&icmp_key(*addr, *family), value)?;
        }
        Ok(())
    }
}

fn icmp_key(addr: [u8; 16], family: u8) -> ListenerKey {
    ListenerKey {
        addr,
        port_be: 0,
        protocol: if family == lb_common::addr::FAMILY_V4 {
            IPPROTO_ICMP
        } else {
            IPPROTO_ICMPV6
        },
        family,
    }
}
