//! Planning an apply: everything that can fail, decided before the first map write. It reads
//! the controller's state and what the data plane was asked beforehand ([`PlanInputs`]);
//! it opens no socket and writes nothing.

use std::{
    collections::{BTreeMap, BTreeSet},
    io,
    net::{IpAddr, SocketAddr},
};

use lb_common::{
    addr::ip_to_bytes,
    config::Config,
    listener::{self as abi, ForwardingMode, ListenerKey},
    target::{Target, TARGET_ACTIVE, TARGET_GONE},
};

use super::{
    ids::{Exhausted, IdPool},
    AppliedListener, AppliedTarget, ApplyError, Controller, TargetState,
};
use crate::{
    dataplane::Dataplane,
    health::{self, Health},
    maglev::{self, MaglevTarget, TableSize},
    model::{self, HashKey, Mode, Model, TargetKey},
};

/// What the data plane was asked before planning: each target address's source address
/// (or why there is none), and, when planning asked for it, the ids flow entries name.
#[derive(Debug, Default)]
pub(super) struct PlanInputs {
    pub sources: BTreeMap<IpAddr, Result<IpAddr, (io::ErrorKind, String)>>,
    pub flow_target_ids: Option<BTreeSet<u32>>,
}

impl PlanInputs {
    fn source_for(&self, target: IpAddr) -> Result<IpAddr, io::Error> {
        match self.sources.get(&target) {
            Some(Ok(source)) => Ok(*source),
            Some(Err((kind, message))) => Err(io::Error::new(*kind, message.clone())),
            None => Err(io::Error::other("no source address was looked up")),
        }
    }
}

/// Why a plan was not made.
#[derive(Debug)]
pub(super) enum PlanError {
    Apply(ApplyError),
    /// Read the flow table into [`PlanInputs::flow_target_ids`] and plan again.
    NeedsFlowScan,
}

impl<E: Into<ApplyError>> From<E> for PlanError {
    fn from(e: E) -> PlanError {
        PlanError::Apply(e.into())
    }
}

impl<D: Dataplane> Controller<D> {
    /// What `model` needs in the maps, decided without touching them: ids, tables, source
    /// addresses (from `inputs`), fail open. `Err(PlanError::NeedsFlowScan)` when an id can
    /// only come from quarantine and `inputs` has no flow-table ids yet.
    pub(super) fn plan(&self, model: &Model, inputs: &PlanInputs) -> Result<Plan, PlanError> {
        let mut ids = self.ids.clone();
        let mut targets: BTreeMap<TargetKey, AppliedTarget> = BTreeMap::new();
        let mut listeners = BTreeMap::new();
        let mut listener_ids: BTreeSet<u32> = BTreeSet::new();
        let mut failing_open = BTreeSet::new();
        let mut serving: BTreeSet<TargetKey> = BTreeSet::new();
        let max_listeners = self.dataplane.listener_capacity();

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
                let (_, member_keys) =
                    self.register(group, listener, inputs, &mut targets, &mut ids)?;
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
            let (members, member_keys) =
                self.register(group, listener, inputs, &mut targets, &mut ids)?;
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
        inputs: &PlanInputs,
        targets: &mut BTreeMap<TargetKey, AppliedTarget>,
        ids: &mut IdPool,
    ) -> Result<(Vec<MaglevTarget>, Vec<TargetKey>), PlanError> {
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
                    let snat = inputs.source_for(target.address).map_err(|source| {
                        ApplyError::NoRoute {
                            group: group.name.clone(),
                            target: key.addr,
                            source,
                        }
                    })?;
                    let id = match self.targets.get(&key) {
                        Some(current) => current.id,
                        None => {
                            ids.allocate(inputs.flow_target_ids.as_ref())
                                .map_err(|exhausted| match exhausted {
                                    Exhausted::NeedsFlowScan => PlanError::NeedsFlowScan,
                                    Exhausted::Full => ApplyError::TooManyTargets {
                                        max: self.dataplane.target_capacity(),
                                    }
                                    .into(),
                                })?
                        }
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

pub(super) struct Plan {
    pub(super) listeners: BTreeMap<String, AppliedListener>,
    pub(super) targets: BTreeMap<TargetKey, AppliedTarget>,
    pub(super) ids: IdPool,
    pub(super) config: Config,
    /// Target groups with no healthy target, sending traffic to all of them.
    pub(super) failing_open: BTreeSet<String>,
}

impl Plan {
    pub(super) fn target_entry(
        &self,
        key: &TargetKey,
        target: &AppliedTarget,
        state: u8,
    ) -> Target {
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

pub(super) fn forwarding_mode(mode: Mode) -> ForwardingMode {
    match mode {
        Mode::Nat => ForwardingMode::Nat,
        Mode::Dsr => ForwardingMode::Dsr,
        Mode::Tunnel => ForwardingMode::Tunnel,
    }
}
