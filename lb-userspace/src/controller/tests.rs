//! The controller's rules, checked against the in-memory data plane: the order of its writes
//! (the invariants in the module's header), id quarantine, fail open, drains, adoption.

use std::{
    collections::{BTreeSet, HashMap},
    time::{Duration, Instant},
};

use lb_common::{
    flow::{Flow, FlowKey},
    listener::ListenerKey,
    target::{TARGET_ACTIVE, TARGET_DRAINING, TARGET_GONE},
};

use super::{ApplyError, Controller, TargetState};
use crate::{
    dataplane::memory::{MemoryDataplane, Op},
    health::Health,
    model::{Model, TargetKey},
};

const TABLE: usize = 251;

/// One tcp listener `web` on 192.0.2.10:80 over target group `web` (port 8080).
fn model(targets: &[&str], delay: u64) -> Model {
    model_with(targets, delay, true)
}

fn model_with(targets: &[&str], delay: u64, listener: bool) -> Model {
    let targets: Vec<String> = targets
        .iter()
        .map(|t| format!("{{ address = \"{t}\" }}"))
        .collect();
    let listener = if listener {
        "[[listener]]\nname = \"web\"\naddress = \"192.0.2.10\"\nport = 80\nprotocol = \"tcp\"\ndefault_target_group = \"web\"\nmaglev_table_size = 251\n"
    } else {
        ""
    };
    let text = format!(
        "{listener}\n[[target_group]]\nname = \"web\"\nport = 8080\nderegistration_delay = {delay}\ntargets = [ {} ]\n",
        targets.join(", ")
    );
    Model::parse(&text, "test.toml").expect("a valid model")
}

fn controller(max_targets: u32) -> Controller<MemoryDataplane> {
    Controller::new(MemoryDataplane::new(8, max_targets))
}

fn key(addr: &str) -> TargetKey {
    TargetKey {
        group: "web".into(),
        addr: format!("{addr}:8080").parse().unwrap(),
    }
}

fn id_of(c: &Controller<MemoryDataplane>, addr: &str) -> u32 {
    let key = key(addr);
    c.targets()
        .find(|(k, _, _)| **k == key)
        .map(|(_, id, _)| id)
        .expect("registered")
}

fn web_key() -> ListenerKey {
    let (addr, family) = lb_common::addr::ip_to_bytes("192.0.2.10".parse().unwrap());
    ListenerKey {
        addr,
        port_be: 80u16.to_be(),
        protocol: lb_common::proto::IPPROTO_TCP,
        family,
    }
}

/// Replays `ops` and checks that no table ever names a target that `TARGETS` does not hold
/// as active at that moment, and that no listener entry exists while its table is empty.
fn assert_tables_name_only_active_targets(ops: &[Op], before: &MemoryDataplane) {
    let mut states: Vec<u8> = before.targets.iter().map(|t| t.state).collect();
    for (i, op) in ops.iter().enumerate() {
        match op {
            Op::SetTarget(id, target) => states[*id as usize] = target.state,
            Op::SetMaglevTable { slots, .. } => {
                for id in slots.iter().collect::<BTreeSet<_>>() {
                    assert_eq!(
                        states[*id as usize], TARGET_ACTIVE,
                        "op {i} installs a table naming target id {id}, which TARGETS does not hold as active: {ops:?}"
                    );
                }
            }
            _ => {}
        }
    }
}

fn position(ops: &[Op], wanted: impl Fn(&Op) -> bool) -> Option<usize> {
    ops.iter().position(wanted)
}

#[test]
fn targets_are_active_before_a_table_names_them() {
    let mut c = controller(16);
    let now = Instant::now();
    let empty = MemoryDataplane::new(8, 16);
    c.apply(&model(&["10.0.1.1", "10.0.1.2"], 0), now).unwrap();
    let ops = c.dataplane_mut().take_ops();
    assert_tables_name_only_active_targets(&ops, &empty);

    // A third target joins: it is written before the table that names it.
    let snapshot = MemoryDataplane {
        targets: c.dataplane().targets.clone(),
        ..MemoryDataplane::new(8, 16)
    };
    let changes = c
        .apply(&model(&["10.0.1.1", "10.0.1.2", "10.0.1.3"], 0), now)
        .unwrap();
    assert_eq!(changes.targets_added, [key("10.0.1.3")]);
    let ops = c.dataplane_mut().take_ops();
    assert_tables_name_only_active_targets(&ops, &snapshot);
    let third = id_of(&c, "10.0.1.3");
    let written = position(
        &ops,
        |op| matches!(op, Op::SetTarget(id, _) if *id == third),
    );
    let table = position(&ops, |op| matches!(op, Op::SetMaglevTable { .. }));
    assert!(written.unwrap() < table.unwrap(), "{ops:?}");
}

#[test]
fn tables_are_swapped_whole_once_per_listener() {
    let mut c = controller(16);
    let now = Instant::now();
    c.apply(&model(&["10.0.1.1", "10.0.1.2"], 0), now).unwrap();
    c.dataplane_mut().take_ops();
    c.apply(&model(&["10.0.1.1", "10.0.1.2", "10.0.1.3"], 0), now)
        .unwrap();
    let tables: Vec<&Vec<u32>> = c
        .dataplane()
        .ops
        .iter()
        .filter_map(|op| match op {
            Op::SetMaglevTable { slots, .. } => Some(slots),
            _ => None,
        })
        .collect();
    assert_eq!(tables.len(), 1, "one swap for the one listener");
    assert_eq!(tables[0].len(), TABLE, "the whole table in one write");
    let ids: BTreeSet<u32> = tables[0].iter().copied().collect();
    assert_eq!(ids.len(), 3);

    // The same model again writes no table at all.
    c.dataplane_mut().take_ops();
    let changes = c
        .apply(&model(&["10.0.1.1", "10.0.1.2", "10.0.1.3"], 0), now)
        .unwrap();
    assert!(changes.is_empty(), "{changes:?}");
    assert!(!c
        .dataplane()
        .ops
        .iter()
        .any(|op| matches!(op, Op::SetMaglevTable { .. } | Op::SetTarget(..))));
}

#[test]
fn listeners_follow_their_tables_and_leave_before_them() {
    let mut c = controller(16);
    let now = Instant::now();
    let changes = c.apply(&model(&["10.0.1.1"], 0), now).unwrap();
    assert_eq!(changes.listeners_added, ["web"]);
    let ops = c.dataplane_mut().take_ops();
    let table = position(
        &ops,
        |op| matches!(op, Op::SetMaglevTable { slots, .. } if !slots.is_empty()),
    );
    let listener = position(
        &ops,
        |op| matches!(op, Op::SetListener(k, _) if *k == web_key()),
    );
    assert!(table.unwrap() < listener.unwrap(), "{ops:?}");

    // Removed: the listener entry goes first, then its table is emptied.
    let changes = c.apply(&model_with(&["10.0.1.1"], 0, false), now).unwrap();
    assert_eq!(changes.listeners_removed, ["web"]);
    let ops = c.dataplane_mut().take_ops();
    let removed = position(
        &ops,
        |op| matches!(op, Op::RemoveListener(k) if *k == web_key()),
    );
    let emptied = position(
        &ops,
        |op| matches!(op, Op::SetMaglevTable { slots, .. } if slots.is_empty()),
    );
    let removed = removed.expect("the listener entry is removed");
    assert!(removed < emptied.expect("the table is emptied"), "{ops:?}");
    assert!(
        !ops[..removed]
            .iter()
            .any(|op| matches!(op, Op::SetMaglevTable { .. } | Op::SetListener(..))),
        "nothing else of the listeners changes before the removal: {ops:?}"
    );
    assert!(
        c.dataplane().listeners.is_empty(),
        "the ICMP entry went too"
    );
}

#[test]
fn removed_targets_drain_for_their_deregistration_delay_then_are_gone() {
    let mut c = controller(16);
    let start = Instant::now();
    c.apply(&model(&["10.0.1.1", "10.0.1.2"], 30), start)
        .unwrap();
    let leaving = id_of(&c, "10.0.1.2");
    c.dataplane_mut().take_ops();
    let changes = c.apply(&model(&["10.0.1.1"], 30), start).unwrap();
    assert_eq!(changes.targets_draining, [key("10.0.1.2")]);
    let ops = c.dataplane_mut().take_ops();
    // Marked draining only after the table that no longer names it.
    let table = position(
        &ops,
        |op| matches!(op, Op::SetMaglevTable { slots, .. } if !slots.contains(&leaving)),
    );
    let draining = position(
        &ops,
        |op| matches!(op, Op::SetTarget(id, t) if *id == leaving && t.state == TARGET_DRAINING),
    );
    assert!(table.unwrap() < draining.unwrap(), "{ops:?}");
    assert_eq!(
        c.dataplane().targets[leaving as usize].state,
        TARGET_DRAINING
    );
    // The draining target is not health-checked.
    assert!(c
        .health_checks()
        .iter()
        .all(|(k, _, _)| *k != key("10.0.1.2")));

    assert!(c.tick(start + Duration::from_secs(29)).unwrap().is_empty());
    assert_eq!(
        c.dataplane().targets[leaving as usize].state,
        TARGET_DRAINING
    );
    let expired = c.tick(start + Duration::from_secs(30)).unwrap();
    assert_eq!(expired, [key("10.0.1.2")]);
    assert_eq!(c.dataplane().targets[leaving as usize].state, TARGET_GONE);
    assert!(c.targets().all(|(k, _, _)| *k != key("10.0.1.2")));
}

#[test]
fn a_gone_targets_id_is_reused_only_when_no_flow_names_it() {
    // Room for exactly two target ids.
    let mut c = controller(2);
    let now = Instant::now();
    c.apply(&model(&["10.0.1.1", "10.0.1.2"], 0), now).unwrap();
    let gone = id_of(&c, "10.0.1.2");
    c.apply(&model(&["10.0.1.1"], 0), now).unwrap();
    c.tick(now).unwrap();
    // A flow still names the gone target's id: a new target cannot have it.
    c.dataplane_mut().flows = vec![(
        FlowKey::default(),
        Flow {
            target_id: gone,
            ..Flow::default()
        },
    )];
    c.dataplane_mut().take_ops();
    let refused = c.apply(&model(&["10.0.1.1", "10.0.1.3"], 0), now);
    assert!(
        matches!(refused, Err(ApplyError::TooManyTargets { max: 2 })),
        "{refused:?}"
    );
    assert!(
        c.dataplane().ops.is_empty(),
        "a refused apply writes nothing"
    );
    // Once no flow names it, the id is reclaimed.
    c.dataplane_mut().flows.clear();
    let changes = c.apply(&model(&["10.0.1.1", "10.0.1.3"], 0), now).unwrap();
    assert_eq!(changes.targets_added, [key("10.0.1.3")]);
    assert_eq!(id_of(&c, "10.0.1.3"), gone);
}

#[test]
fn a_group_without_healthy_targets_fails_open_and_closes_again() {
    let mut c = controller(16);
    let now = Instant::now();
    c.apply(&model(&["10.0.1.1", "10.0.1.2"], 0), now).unwrap();
    let (a, b) = (id_of(&c, "10.0.1.1"), id_of(&c, "10.0.1.2"));
    c.set_health(&key("10.0.1.1"), Health::Healthy, now)
        .unwrap();
    c.set_health(&key("10.0.1.2"), Health::Unhealthy, now)
        .unwrap();
    // One healthy target: the unhealthy one leaves the table and is gone (flows re-hashed).
    let table: BTreeSet<u32> = c.dataplane().tables[&0].iter().copied().collect();
    assert_eq!(table, BTreeSet::from([a]));
    assert_eq!(c.dataplane().targets[b as usize].state, TARGET_GONE);

    let changes = c
        .set_health(&key("10.0.1.1"), Health::Unhealthy, now)
        .unwrap();
    assert_eq!(changes.failing_open, ["web"]);
    assert_eq!(c.failing_open().collect::<Vec<_>>(), ["web"]);
    let table: BTreeSet<u32> = c.dataplane().tables[&0].iter().copied().collect();
    assert_eq!(
        table,
        BTreeSet::from([a, b]),
        "failing open: traffic to all"
    );
    assert_eq!(c.dataplane().targets[b as usize].state, TARGET_ACTIVE);

    let changes = c
        .set_health(&key("10.0.1.2"), Health::Healthy, now)
        .unwrap();
    assert_eq!(changes.failing_closed, ["web"]);
    let table: BTreeSet<u32> = c.dataplane().tables[&0].iter().copied().collect();
    assert_eq!(table, BTreeSet::from([b]));
}

#[test]
fn an_unreachable_target_refuses_the_whole_change() {
    let mut c = controller(16);
    let now = Instant::now();
    c.apply(&model(&["10.0.1.1"], 0), now).unwrap();
    c.dataplane_mut().take_ops();
    c.dataplane_mut()
        .unreachable
        .insert("10.0.1.9".parse().unwrap());
    let refused = c.apply(&model(&["10.0.1.1", "10.0.1.9"], 0), now);
    let Err(ApplyError::NoRoute { target, .. }) = refused else {
        panic!("{refused:?}");
    };
    assert_eq!(target, "10.0.1.9:8080".parse().unwrap());
    assert!(c.dataplane().ops.is_empty(), "nothing was written");
    assert_eq!(c.model(), &model(&["10.0.1.1"], 0));
}

#[test]
fn an_adopting_controller_keeps_ids_drains_and_health() {
    let start = Instant::now();
    let mut first = controller(16);
    first
        .apply(&model(&["10.0.1.1", "10.0.1.2", "10.0.1.3"], 60), start)
        .unwrap();
    first
        .set_health(&key("10.0.1.1"), Health::Healthy, start)
        .unwrap();
    first
        .apply(&model(&["10.0.1.1", "10.0.1.2"], 60), start)
        .unwrap();
    let ids: HashMap<&str, u32> = ["10.0.1.1", "10.0.1.2", "10.0.1.3"]
        .into_iter()
        .map(|a| (a, id_of(&first, a)))
        .collect();
    let later = start + Duration::from_secs(20);
    let saved = first.saved(later);

    // The next daemon finds the same maps (pinned) and the saved state.
    let pinned = MemoryDataplane {
        listeners: first.dataplane().listeners.clone(),
        tables: first.dataplane().tables.clone(),
        targets: first.dataplane().targets.clone(),
        ..MemoryDataplane::new(8, 16)
    };
    let mut second = Controller::adopt(pinned, &saved, later).unwrap();
    let changes = second
        .apply(&model(&["10.0.1.1", "10.0.1.2"], 60), later)
        .unwrap();
    assert!(changes.listeners_added.is_empty(), "{changes:?}");
    assert!(changes.targets_added.is_empty(), "{changes:?}");
    assert!(changes.targets_draining.is_empty(), "{changes:?}");
    assert!(changes.settings.is_empty(), "{changes:?}");
    for (addr, id) in &ids {
        assert_eq!(id_of(&second, addr), *id, "{addr} keeps its id");
    }
    assert_eq!(second.health(&key("10.0.1.1")), Health::Healthy);
    let draining = second
        .targets()
        .find(|(k, _, _)| **k == key("10.0.1.3"))
        .map(|(_, _, state)| state);
    assert_eq!(
        draining,
        Some(TargetState::Draining {
            until: later + Duration::from_secs(40)
        }),
        "the drain goes on for the 40 s it had left"
    );
    assert_eq!(second.saved(later), saved);
    // The adopted drain ends on time, and a new target does not get a drained one's id.
    assert_eq!(
        second.tick(later + Duration::from_secs(40)).unwrap(),
        [key("10.0.1.3")]
    );
    second
        .apply(&model(&["10.0.1.1", "10.0.1.2", "10.0.1.4"], 60), later)
        .unwrap();
    assert!(!ids.values().any(|&id| id == id_of(&second, "10.0.1.4")));
}

#[test]
fn a_takeover_describes_l7_changes_against_the_previous_daemons_model() {
    let http = |name: &str, stickiness: &str| {
        Model::parse(
            &format!(
                "[[listener]]\nname = \"{name}\"\naddress = \"192.0.2.10\"\nport = 80\nprotocol = \"http\"\ndefault_target_group = \"web\"\n\n\
                 [[target_group]]\nname = \"web\"\nport = 8080\n{stickiness}targets = [ {{ address = \"10.0.1.1\" }} ]\n"
            ),
            "test.toml",
        )
        .unwrap()
    };
    let start = Instant::now();
    let mut first = controller(16);
    let changes = first.apply(&http("web", ""), start).unwrap();
    assert_eq!(
        changes.settings,
        [
            "listener 'web' (http) added on 192.0.2.10:80",
            "target group 'web' added"
        ]
    );
    let saved = first.saved(start);
    let pinned = MemoryDataplane {
        targets: first.dataplane().targets.clone(),
        ..MemoryDataplane::new(8, 16)
    };
    let mut second = Controller::adopt(pinned, &saved, start).unwrap();
    let changes = second
        .apply(
            &http(
                "www",
                "stickiness = { type = \"lb_cookie\", duration = 60 }\n",
            ),
            start,
        )
        .unwrap();
    assert_eq!(
        changes.settings,
        [
            "listener 'web' renamed to 'www' on 192.0.2.10:80 (its socket and connections kept)",
            "target group 'web': stickiness off -> lb_cookie for 60s"
        ]
    );
    // A state saved by a daemon that kept no summary: everything is new to the next one.
    let older = crate::dataplane::saved::SavedState {
        summary: Default::default(),
        ..second.saved(start)
    };
    let mut third = Controller::adopt(MemoryDataplane::new(8, 16), &older, start).unwrap();
    let changes = third.apply(&http("www", ""), start).unwrap();
    assert!(
        changes.settings[0].starts_with("listener 'www' (http) added"),
        "{changes:?}"
    );
}
