//! Which listener addresses a node announces to the routers: decided from the model, the
//! targets' health and the node's own state, without I/O.
//!
//! Routers send a VIP's traffic to every node that announces it (ECMP), so an address is
//! announced exactly when this node can serve it:
//! - never while the node drains (`sluice node drain`): the routers move new flows to the other
//!   nodes while established ones finish here;
//! - else when at least one listener on the address can serve: its `when_unhealthy` is
//!   `fail_open` (ELB's default: with no healthy target every target gets traffic), or one of
//!   its target groups has a healthy target that is not draining.
//!
//! Listeners on `0.0.0.0` or `::` (http/https on every address) have no address to announce.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use serde::{Deserialize, Serialize};

use crate::{
    health::Health,
    model::{Model, TargetKey, TargetView, WhenUnhealthy},
};

/// The node's own state, set by `sluice node drain` and `sluice node resume`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    #[default]
    Serving,
    /// Announces nothing; established flows go on.
    Draining,
}

impl NodeState {
    pub const fn name(self) -> &'static str {
        match self {
            NodeState::Serving => "serving",
            NodeState::Draining => "draining",
        }
    }
}

/// Why an address is not announced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum Withheld {
    /// `sluice node drain`.
    NodeDraining,
    /// Every listener on the address says `when_unhealthy = "withdraw"` and none of their
    /// target groups has a healthy target.
    NoHealthyTarget { listeners: Vec<String> },
}

impl std::fmt::Display for Withheld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Withheld::NodeDraining => write!(f, "the node is draining (sluice node drain)"),
            Withheld::NoHealthyTarget { listeners } => write!(
                f,
                "no healthy target for listener(s) {} (when_unhealthy = \"withdraw\")",
                listeners.join(", ")
            ),
        }
    }
}

/// What the node should announce, and why the other addresses are not.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    pub routes: BTreeSet<IpAddr>,
    pub withheld: BTreeMap<IpAddr, Withheld>,
}

/// The addresses to announce for `model`, given every registered target's health.
pub fn plan(
    model: &Model,
    targets: &BTreeMap<TargetKey, TargetView>,
    node: NodeState,
) -> Announcement {
    let healthy_groups: BTreeSet<&str> = targets
        .iter()
        .filter(|(_, view)| view.health == Health::Healthy && !view.draining)
        .map(|(key, _)| key.group.as_str())
        .collect();
    // Per address: whether some listener can serve it, and the ones that cannot.
    let mut addresses: BTreeMap<IpAddr, (bool, Vec<String>)> = BTreeMap::new();
    for listener in &model.listeners {
        if listener.address.is_unspecified() {
            continue;
        }
        let serves = listener.when_unhealthy() == WhenUnhealthy::FailOpen
            || listener
                .target_groups()
                .any(|group| healthy_groups.contains(group));
        let entry = addresses.entry(listener.address).or_default();
        if serves {
            entry.0 = true;
        } else {
            entry.1.push(listener.name.clone());
        }
    }
    let mut announcement = Announcement::default();
    for (address, (serves, unserved)) in addresses {
        if node == NodeState::Draining {
            announcement
                .withheld
                .insert(address, Withheld::NodeDraining);
        } else if serves {
            announcement.routes.insert(address);
        } else {
            announcement.withheld.insert(
                address,
                Withheld::NoHealthyTarget {
                    listeners: unserved,
                },
            );
        }
    }
    announcement
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(when_unhealthy: &str) -> Model {
        Model::parse(
            &format!(
                r#"
[[listener]]
name = "web"
address = "10.0.0.100"
port = 80
protocol = "tcp"
default_target_group = "web"
{when_unhealthy}

[[listener]]
name = "web-tls"
address = "10.0.0.100"
port = 443
protocol = "tcp"
default_target_group = "web"
when_unhealthy = "withdraw"

[[target_group]]
name = "web"
targets = [{{ address = "10.1.0.1" }}, {{ address = "10.1.0.2" }}]
"#
            ),
            "test",
        )
        .unwrap()
    }

    fn views(health: &[(Health, bool)]) -> BTreeMap<TargetKey, TargetView> {
        health
            .iter()
            .enumerate()
            .map(|(i, &(health, draining))| {
                let key = TargetKey {
                    group: "web".into(),
                    addr: format!("10.1.0.{}:80", i + 1).parse().unwrap(),
                };
                (key, TargetView { health, draining })
            })
            .collect()
    }

    fn vip() -> IpAddr {
        "10.0.0.100".parse().unwrap()
    }

    #[test]
    fn fail_open_announces_whatever_the_health() {
        let all_down = views(&[(Health::Unhealthy, false), (Health::Unhealthy, false)]);
        let plan = plan(&model(""), &all_down, NodeState::Serving);
        assert_eq!(plan.routes, BTreeSet::from([vip()]));
        assert!(plan.withheld.is_empty(), "{plan:?}");
    }

    #[test]
    fn withdraw_needs_one_healthy_target_that_is_not_draining() {
        let m = model("when_unhealthy = \"withdraw\"");
        for (health, announced) in [
            (
                vec![(Health::Initial, false), (Health::Initial, false)],
                false,
            ),
            (
                vec![(Health::Unhealthy, false), (Health::Healthy, true)],
                false,
            ),
            (
                vec![(Health::Unhealthy, false), (Health::Healthy, false)],
                true,
            ),
        ] {
            let plan = plan(&m, &views(&health), NodeState::Serving);
            assert_eq!(plan.routes.contains(&vip()), announced, "{health:?}");
            if !announced {
                assert_eq!(
                    plan.withheld[&vip()],
                    Withheld::NoHealthyTarget {
                        listeners: vec!["web".into(), "web-tls".into()]
                    }
                );
            }
        }
    }

    #[test]
    fn one_fail_open_listener_keeps_a_shared_address_announced() {
        // `web` fails open, `web-tls` would withdraw: the address serves port 80 still.
        let plan = plan(&model(""), &views(&[]), NodeState::Serving);
        assert_eq!(plan.routes, BTreeSet::from([vip()]));
    }

    #[test]
    fn a_draining_node_announces_nothing() {
        let healthy = views(&[(Health::Healthy, false)]);
        let plan = plan(&model(""), &healthy, NodeState::Draining);
        assert!(plan.routes.is_empty());
        assert_eq!(plan.withheld[&vip()], Withheld::NodeDraining);
    }

    #[test]
    fn unspecified_addresses_are_never_announced() {
        let mut m = model("");
        m.listeners.push(crate::model::Listener::l4(
            "everywhere",
            "0.0.0.0".parse().unwrap(),
            8080,
            crate::model::Protocol::Tcp,
            crate::model::Mode::Nat,
            "web",
        ));
        let plan = plan(&m, &views(&[]), NodeState::Serving);
        assert_eq!(plan.routes, BTreeSet::from([vip()]));
        assert!(plan.routes.iter().all(|a| !a.is_unspecified()));
        assert!(plan.withheld.keys().all(|a| !a.is_unspecified()));
    }
}
