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

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use lb_common::{
    addr::ip_to_bytes,
    config::Config,
    listener::{self as abi, ForwardingMode, ListenerKey},
    target::{Target, TARGET_ACTIVE, TARGET_DRAINING, TARGET_GONE},
};

use crate::{
    health::{self, Health, HealthCheck},
    maglev::{self, MaglevTarget, TableSize},
    maps::{Maps, MapsError},
    model::{self, HashKey, Mode, Model},
    neighbors,
    saved::{SavedIds, SavedListener, SavedState, SavedTarget},
    snat,
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

/// A target as the data plane knows it: in one target group, at one address and port.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct TargetKey {
    pub group: String,
    pub addr: SocketAddr,
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

/// What an `apply` changed, for the log and the control API's answers.
#[derive(Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Changes {
    pub listeners_added: Vec<String>,
    pub listeners_removed: Vec<String>,
    pub tables_rebuilt: Vec<String>,
    pub targets_added: Vec<TargetKey>,
    pub targets_draining: Vec<TargetKey>,
    /// Target groups that now have no healthy target and send traffic to all (fail open).
    pub failing_open: Vec<String>,
    /// Target groups that have a healthy target again.
    pub failing_closed: Vec<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        *self == Changes::default()
    }
}

pub struct Controller {
    maps: Maps,
    model: Model,
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

impl Controller {
    /// Takes over freshly loaded maps (no listeners, no targets).
    pub fn new(maps: Maps) -> Controller {
        let ids = IdPool::new(maps.targets.len());
        Controller {
            maps,
            model: Model::default(),
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
    pub fn adopt(maps: Maps, saved: &SavedState, now: Instant) -> Result<Controller, ApplyError> {
        let mut controller = Controller::new(maps);
        let mut keys = BTreeMap::new();
        for entry in controller.maps.listeners.iter() {
            let (key, value) = entry.map_err(|source| MapsError::Map {
                name: "LISTENERS",
                source,
            })?;
            // ICMP entries (port 0, ICMP or ICMPv6) share their address's listener id.
            let icmp = key.port_be == 0 && (key.protocol == 1 || key.protocol == 58);
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
        controller.ids = IdPool::from_saved(&saved.ids, controller.maps.targets.len());
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

    pub fn maps(&self) -> &Maps {
        &self.maps
    }

    /// Makes the data plane match `model`. On error nothing was changed (a failure while
    /// writing the maps themselves, which the kernel does not do for valid input, is reported
    /// and may leave a partial update).
    pub fn apply(&mut self, model: &Model, now: Instant) -> Result<Changes, ApplyError> {
        let plan = self.plan(model)?;
        let mut changes = Changes::default();

        self.maps.set_config(&plan.config)?;
        // Not fatal: the data plane hands packets for an unresolved next hop to the kernel
        // (nat, tunnel) or drops them, counted (dsr).
        let new_addresses: BTreeSet<IpAddr> = plan
            .targets
            .keys()
            .filter(|key| !self.targets.contains_key(*key))
            .map(|key| key.addr.ip())
            .collect();
        let addresses: Vec<IpAddr> = new_addresses.into_iter().collect();
        for (address, managed) in neighbors::manage_all(&addresses) {
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
                    self.maps.reset_target_traffic(target.id)?;
                }
                self.maps
                    .set_target(target.id, &plan.target_entry(key, target, TARGET_ACTIVE))?;
                if current.is_none() {
                    changes.targets_added.push(key.clone());
                }
            }
        }
        // 3 (removals first): traffic for removed listeners goes back to the kernel.
        for (name, applied) in &self.listeners {
            if !plan.listeners.contains_key(name) {
                self.maps.remove_listener(&applied.key)?;
                self.maps.set_maglev_table(applied.id, &[])?;
                changes.listeners_removed.push(name.clone());
            }
        }
        // 2. Tables, then listeners.
        for (name, listener) in &plan.listeners {
            let current = self.listeners.get(name);
            if current.map(|c| &c.table) != Some(&listener.table) {
                self.maps.set_maglev_table(listener.id, &listener.table)?;
                changes.tables_rebuilt.push(name.clone());
            }
            if current.map(|c| (&c.key, &c.value)) != Some((&listener.key, &listener.value)) {
                if let Some(current) = current.filter(|c| c.key != listener.key) {
                    self.maps.remove_listener(&current.key)?;
                }
                if current.is_none() {
                    // The id may have served a removed listener (whose last packets, still
                    // in flight on other CPUs, may yet add a few).
                    self.maps.reset_listener_traffic(listener.id)?;
                }
                self.maps.set_listener(&listener.key, &listener.value)?;
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
                self.maps
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
                        self.maps
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
            let mut entry =
                self.maps
                    .targets
                    .get(&target.id, 0)
                    .map_err(|source| MapsError::Map {
                        name: "TARGETS",
                        source,
                    })?;
            entry.state = TARGET_GONE;
            self.maps.set_target(target.id, &entry)?;
            self.ids.quarantine(target.id);
        }
        Ok(expired)
    }

    /// Every registered target's health and whether it is draining, for the L7 proxy's
    /// routing snapshot.
    pub fn target_views(&self) -> BTreeMap<TargetKey, crate::proxy::TargetView> {
        self.targets
            .iter()
            .map(|(key, t)| {
                let view = crate::proxy::TargetView {
                    health: self.health_of(key),
                    draining: t.state != TargetState::Active,
                };
                (key.clone(), view)
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
            self.maps.remove_listener(&icmp_key(*addr, *family))?;
        }
        for ((addr, family), value) in &wanted {
            self.maps.set_listener(&icmp_key(*addr, *family), value)?;
        }
        Ok(())
    }

    fn plan(&self, model: &Model) -> Result<Plan, ApplyError> {
        let mut ids = self.ids.clone();
        let mut targets: BTreeMap<TargetKey, AppliedTarget> = BTreeMap::new();
        let mut listeners = BTreeMap::new();
        let mut listener_ids: BTreeSet<u32> = BTreeSet::new();
        let mut failing_open = BTreeSet::new();
        let mut serving: BTreeSet<TargetKey> = BTreeSet::new();
        let max_listeners = self.maps.maglev.len();

        // Listener ids stay with their names; new listeners take the lowest free id.
        for listener in &model.listeners {
            if let Some(current) = self.listeners.get(&listener.name) {
                listener_ids.insert(current.id);
            }
        }
        // HTTP/HTTPS listeners are served by the proxy, not XDP: they get no kernel listener
        // or table, but the targets of every group they may send to are registered like any
        // other (ids, health checks, draining).
        for listener in model.listeners.iter().filter(|l| l.protocol.is_l7()) {
            let mut seen = BTreeSet::new();
            for name in listener.target_groups().filter(|g| seen.insert(*g)) {
                let group = model
                    .target_group(name)
                    .expect("validated: rules name existing target groups");
                let (_, member_keys) = self.register(group, listener, &mut targets, &mut ids)?;
                self.route(&member_keys, group, &mut failing_open, &mut serving);
            }
        }
        for listener in model.listeners.iter().filter(|l| !l.protocol.is_l7()) {
            let group = model
                .target_group(&listener.default_target_group)
                .expect("validated: the default target group exists");
            let id = match self.listeners.get(&listener.name) {
                Some(current) => current.id,
                None => {
                    let id = (0..max_listeners)
                        .find(|id| !listener_ids.contains(id))
                        .ok_or(ApplyError::TooManyListeners { max: max_listeners })?;
                    listener_ids.insert(id);
                    id
                }
            };
            let (members, member_keys) = self.register(group, listener, &mut targets, &mut ids)?;
            let routable = self.route(&member_keys, group, &mut failing_open, &mut serving);
            let members: Vec<MaglevTarget> = routable.iter().map(|&i| members[i]).collect();
            let table = if members.is_empty() {
                Vec::new()
            } else {
                maglev::build(&members, TableSize::new(listener.maglev_table_size())?)?
            };
            let (addr, family) = ip_to_bytes(listener.address);
            listeners.insert(
                listener.name.clone(),
                AppliedListener {
                    id,
                    key: ListenerKey {
                        addr,
                        port_be: listener.port.to_be(),
                        protocol: listener.protocol.number(),
                        family,
                    },
                    value: abi::Listener {
                        id,
                        mode: forwarding_mode(listener.mode()) as u8,
                        hash_key: match group.hash_key {
                            HashKey::FiveTuple => abi::HashKey::FiveTuple,
                            HashKey::SourceIp => abi::HashKey::SourceIp,
                        } as u8,
                        idle_timeout_s: listener.l4_idle_timeout_s(),
                    },
                    table,
                },
            );
        }
        let config = Config {
            nat_port_min: model.data_plane.nat_port_range[0],
            nat_port_max: model.data_plane.nat_port_range[1],
            max_new_flows_per_cpu: model.data_plane.max_new_flows_per_cpu,
            ..Config::default()
        };
        for (key, target) in targets.iter_mut() {
            target.kernel_state =
                if self.health_of(key) == Health::Unhealthy && !serving.contains(key) {
                    TARGET_GONE
                } else {
                    TARGET_ACTIVE
                };
        }
        Ok(Plan {
            listeners,
            targets,
            ids,
            config,
            failing_open,
        })
    }

    /// Registers `group`'s targets as `listener` reaches them (ids and source addresses of
    /// new ones): the Maglev members and their keys, in the group's order.
    fn register(
        &self,
        group: &model::TargetGroup,
        listener: &model::Listener,
        targets: &mut BTreeMap<TargetKey, AppliedTarget>,
        ids: &mut IdPool,
    ) -> Result<(Vec<MaglevTarget>, Vec<TargetKey>), ApplyError> {
        let mut members = Vec::new();
        let mut member_keys = Vec::new();
        for target in &group.targets {
            let key = TargetKey {
                group: group.name.clone(),
                addr: SocketAddr::new(target.address, target.port_for(group, listener)),
            };
            let applied = match targets.get(&key) {
                Some(t) => t.clone(),
                None => {
                    let snat =
                        snat::source_for(target.address).map_err(|source| ApplyError::NoRoute {
                            group: group.name.clone(),
                            target: key.addr,
                            source,
                        })?;
                    let id = match self.targets.get(&key) {
                        Some(current) => current.id,
                        None => ids
                            .allocate(|| self.maps.flows().map(|(_, flow)| flow.target_id))
                            .ok_or(ApplyError::TooManyTargets {
                                max: self.maps.targets.len(),
                            })?,
                    };
                    AppliedTarget {
                        id,
                        state: TargetState::Active,
                        snat,
                        kernel_state: TARGET_ACTIVE,
                    }
                }
            };
            members.push(MaglevTarget {
                key: maglev::target_key(key.addr),
                id: applied.id,
                weight: target.weight,
            });
            member_keys.push(key.clone());
            targets.insert(key, applied);
        }
        Ok((members, member_keys))
    }

    /// Which of `member_keys` get new traffic (indexes): the healthy ones, or all when none
    /// is (fail open, recorded in `failing_open` when some are unhealthy).
    fn route(
        &self,
        member_keys: &[TargetKey],
        group: &model::TargetGroup,
        failing_open: &mut BTreeSet<String>,
        serving: &mut BTreeSet<TargetKey>,
    ) -> Vec<usize> {
        let routable = health::routable(
            member_keys
                .iter()
                .enumerate()
                .map(|(i, key)| (i, self.health_of(key))),
        );
        // Targets still in their initial checks get traffic too until one passes, but
        // that is a start, not a failure: only a group with unhealthy targets and no
        // healthy one is reported as failing open.
        let any_unhealthy = member_keys
            .iter()
            .any(|key| self.health_of(key) == Health::Unhealthy);
        if routable.failing_open && any_unhealthy {
            failing_open.insert(group.name.clone());
        }
        serving.extend(routable.targets.iter().map(|&i| member_keys[i].clone()));
        routable.targets
    }
}

struct Plan {
    listeners: BTreeMap<String, AppliedListener>,
    targets: BTreeMap<TargetKey, AppliedTarget>,
    ids: IdPool,
    config: Config,
    /// Target groups with no healthy target, sending traffic to all of them.
    failing_open: BTreeSet<String>,
}

impl Plan {
    fn target_entry(&self, key: &TargetKey, target: &AppliedTarget, state: u8) -> Target {
        let (addr, family) = ip_to_bytes(key.addr.ip());
        Target {
            addr,
            snat_addr: ip_to_bytes(target.snat).0,
            port_be: key.addr.port().to_be(),
            family,
            state,
            _pad: [0; 4],
        }
    }
}

fn icmp_key(addr: [u8; 16], family: u8) -> ListenerKey {
    ListenerKey {
        addr,
        port_be: 0,
        protocol: if family == lb_common::addr::FAMILY_V4 {
            1
        } else {
            58
        },
        family,
    }
}

fn forwarding_mode(mode: Mode) -> ForwardingMode {
    match mode {
        Mode::Nat => ForwardingMode::Nat,
        Mode::Dsr => ForwardingMode::Dsr,
        Mode::Tunnel => ForwardingMode::Tunnel,
    }
}

/// Target ids. Fresh ids are handed out first; an id whose target is gone is quarantined and
/// only reused once no flow entry names it any more (checked by scanning the flow table when
/// fresh ids run out), so a stale flow can never be sent to an unrelated new target.
#[derive(Clone, Debug)]
pub struct IdPool {
    next_fresh: u32,
    max: u32,
    quarantined: BTreeSet<u32>,
    free: BTreeSet<u32>,
}

impl IdPool {
    pub fn new(max: u32) -> IdPool {
        IdPool {
            next_fresh: 0,
            max,
            quarantined: BTreeSet::new(),
            free: BTreeSet::new(),
        }
    }

    /// A free id; `named` lists the ids flow entries name (called only when fresh ids run
    /// out, since it scans the flow table).
    fn allocate<I: Iterator<Item = u32>>(&mut self, named: impl FnOnce() -> I) -> Option<u32> {
        if let Some(id) = self.free.pop_first() {
            return Some(id);
        }
        if self.next_fresh < self.max {
            self.next_fresh += 1;
            return Some(self.next_fresh - 1);
        }
        self.reclaim(named());
        self.free.pop_first()
    }

    fn from_saved(saved: &SavedIds, max: u32) -> IdPool {
        IdPool {
            next_fresh: saved.next_fresh.min(max),
            max,
            quarantined: saved.quarantined.iter().copied().collect(),
            free: saved.free.iter().copied().filter(|&id| id < max).collect(),
        }
    }

    fn saved(&self) -> SavedIds {
        SavedIds {
            next_fresh: self.next_fresh,
            quarantined: self.quarantined.iter().copied().collect(),
            free: self.free.iter().copied().collect(),
        }
    }

    fn quarantine(&mut self, id: u32) {
        self.quarantined.insert(id);
    }

    /// Frees quarantined ids that no flow names.
    fn reclaim(&mut self, named: impl Iterator<Item = u32>) {
        let named: BTreeSet<u32> = named.collect();
        let reusable: Vec<u32> = self.quarantined.difference(&named).copied().collect();
        for id in reusable {
            self.quarantined.remove(&id);
            self.free.insert(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_fresh_until_exhausted_then_reclaimed_only_when_unreferenced() {
        let mut pool = IdPool::new(3);
        let no_flows = || std::iter::empty();
        let taken: Vec<_> = (0..3).map(|_| pool.allocate(no_flows).unwrap()).collect();
        assert_eq!(taken, [0, 1, 2]);
        assert_eq!(pool.allocate(no_flows), None);
        pool.quarantine(1);
        pool.quarantine(2);
        // A flow still names 2: only 1 may be reused.
        assert_eq!(pool.allocate(|| [2].into_iter()), Some(1));
        assert_eq!(pool.allocate(|| [2].into_iter()), None);
        assert_eq!(pool.allocate(no_flows), Some(2));
    }
}
