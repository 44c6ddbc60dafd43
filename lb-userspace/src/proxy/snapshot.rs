//! The routing snapshot: everything a request needs to find its target, immutable, built by
//! a pure function from the model and the controller's view of each target, and swapped
//! whole (`ArcSwap`) after every change, so requests never take a lock.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::SocketAddr,
    path::PathBuf,
    sync::{atomic::AtomicUsize, Arc},
    time::Duration,
};

use super::{
    balance::RoundRobin,
    metrics::{GroupCounters, TargetCounters},
    outlier::{Detection, Outlier},
    rules::RuleSet,
};
use crate::{
    health::{self, Health},
    model::{Algorithm, Model, Protocol, Stickiness, TargetKey, TargetView},
};

/// State that outlives snapshots: per-target outstanding requests and per-group counters.
#[derive(Debug, Default)]
pub struct Carried {
    outstanding: HashMap<TargetKey, Arc<AtomicUsize>>,
    outliers: HashMap<TargetKey, Arc<Outlier>>,
    groups: BTreeMap<String, Arc<GroupCounters>>,
    targets: BTreeMap<TargetKey, Arc<TargetCounters>>,
}

impl Carried {
    /// Every group's counters, for metrics.
    pub fn groups(&self) -> impl Iterator<Item = (&String, &Arc<GroupCounters>)> {
        self.groups.iter()
    }

    /// Every routed target's counters, for metrics and status.
    pub fn targets(&self) -> impl Iterator<Item = (&TargetKey, &Arc<TargetCounters>)> {
        self.targets.iter()
    }
}

#[derive(Debug)]
pub struct Snapshot {
    pub listeners: HashMap<String, Arc<ListenerRoutes>>,
    /// Registered targets, draining ones included: an upgraded connection to any other
    /// target is closed.
    pub reachable: HashSet<TargetKey>,
}

#[derive(Debug)]
pub struct ListenerRoutes {
    pub name: String,
    pub address: SocketAddr,
    pub protocol: Protocol,
    pub idle_timeout: Duration,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub access_log: Option<PathBuf>,
    pub rules: RuleSet,
    /// Every group the listener may forward to.
    pub groups: HashMap<String, Arc<GroupRoutes>>,
    /// Forward actions with several groups, by rule priority: which group next.
    pub group_choice: HashMap<u32, (Vec<String>, RoundRobin)>,
}

#[derive(Debug)]
pub struct GroupRoutes {
    pub name: String,
    /// Targets that take new requests: the healthy ones, or all when none is (fail open).
    pub targets: Vec<RoutedTarget>,
    pub by_addr: HashMap<SocketAddr, usize>,
    pub round_robin: RoundRobin,
    pub algorithm: Algorithm,
    pub stickiness: Option<Stickiness>,
    pub counters: Arc<GroupCounters>,
    /// `None`: outlier detection is off.
    pub detection: Option<Detection>,
}

#[derive(Debug)]
pub struct RoutedTarget {
    pub key: TargetKey,
    pub outstanding: Arc<AtomicUsize>,
    /// What the proxy's own requests saw of it (kept across snapshots).
    pub outlier: Arc<Outlier>,
    /// Its requests, errors and response times (kept across snapshots).
    pub counters: Arc<TargetCounters>,
}

impl Snapshot {
    pub fn empty() -> Snapshot {
        Snapshot {
            listeners: HashMap::new(),
            reachable: HashSet::new(),
        }
    }

    /// The routes of `model`'s http/https listeners for targets in `views` (registered
    /// targets; one missing is `initial`, not draining). `carried` keeps counters across
    /// snapshots and forgets targets and groups that are gone.
    pub fn build(
        model: &Model,
        views: &BTreeMap<TargetKey, TargetView>,
        carried: &mut Carried,
    ) -> Snapshot {
        let mut listeners = HashMap::new();
        let mut used_targets = HashSet::new();
        let mut used_groups = HashSet::new();
        for listener in model.listeners.iter().filter(|l| l.protocol.is_l7()) {
            let mut groups = HashMap::new();
            for name in listener.target_groups() {
                if groups.contains_key(name) {
                    continue;
                }
                let Some(group) = model.target_group(name) else {
                    continue;
                };
                let keys: Vec<(TargetKey, u32)> = group
                    .targets
                    .iter()
                    .map(|t| {
                        let key = TargetKey {
                            group: group.name.clone(),
                            addr: SocketAddr::new(t.address, t.port_for(group, listener)),
                        };
                        (key, t.weight)
                    })
                    .filter(|(key, _)| !views.get(key).is_some_and(|v| v.draining))
                    .collect();
                let routable = health::routable(keys.iter().enumerate().map(|(i, (key, _))| {
                    (i, views.get(key).map_or(Health::Initial, |v| v.health))
                }));
                let mut targets = Vec::new();
                let mut weights = Vec::new();
                for i in routable.targets {
                    let (key, weight) = &keys[i];
                    let outstanding = carried.outstanding.entry(key.clone()).or_default();
                    let outlier = carried.outliers.entry(key.clone()).or_default();
                    let counters = carried.targets.entry(key.clone()).or_default();
                    used_targets.insert(key.clone());
                    targets.push(RoutedTarget {
                        key: key.clone(),
                        outstanding: Arc::clone(outstanding),
                        outlier: Arc::clone(outlier),
                        counters: Arc::clone(counters),
                    });
                    weights.push(*weight);
                }
                used_groups.insert(group.name.clone());
                let counters = Arc::clone(carried.groups.entry(group.name.clone()).or_default());
                groups.insert(
                    group.name.clone(),
                    Arc::new(GroupRoutes {
                        name: group.name.clone(),
                        by_addr: targets
                            .iter()
                            .enumerate()
                            .map(|(i, t)| (t.key.addr, i))
                            .collect(),
                        targets,
                        round_robin: RoundRobin::new(&weights, 0),
                        algorithm: group.algorithm.unwrap_or_default(),
                        stickiness: group.stickiness.clone(),
                        counters,
                        detection: (group.outlier_detection.consecutive_errors > 0).then(|| {
                            Detection {
                                consecutive_errors: group.outlier_detection.consecutive_errors,
                                ejection: group.health_check().interval,
                            }
                        }),
                    }),
                );
            }
            let group_choice = listener
                .rules
                .iter()
                .filter_map(|rule| match &rule.action {
                    crate::model::Action::Forward(f) if f.target_groups.len() > 1 => {
                        let names = f.target_groups.iter().map(|g| g.name.clone()).collect();
                        let weights: Vec<u32> = f.target_groups.iter().map(|g| g.weight).collect();
                        Some((rule.priority, (names, RoundRobin::new(&weights, 0))))
                    }
                    _ => None,
                })
                .collect();
            listeners.insert(
                listener.name.clone(),
                Arc::new(ListenerRoutes {
                    name: listener.name.clone(),
                    address: SocketAddr::new(listener.address, listener.port),
                    protocol: listener.protocol,
                    idle_timeout: listener.idle_timeout(),
                    header_read_timeout: listener.header_read_timeout(),
                    max_header_bytes: listener.max_header_bytes(),
                    access_log: listener.access_log.clone(),
                    rules: RuleSet::compile(listener),
                    groups,
                    group_choice,
                }),
            );
        }
        // In-flight requests of a target that left keep their own Arc.
        carried.outstanding.retain(|k, _| used_targets.contains(k));
        carried.outliers.retain(|k, _| used_targets.contains(k));
        // Counters outlive a target's time out of rotation (unhealthy, draining) while it is
        // registered, so its request count does not start over.
        carried
            .targets
            .retain(|k, _| used_targets.contains(k) || views.contains_key(k));
        carried.groups.retain(|g, _| used_groups.contains(g));
        Snapshot {
            listeners,
            reachable: views.keys().cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODEL: &str = r#"
        [[listener]]
        name = "web"
        address = "192.0.2.10"
        port = 80
        protocol = "http"
        default_target_group = "www"

        [[listener.rule]]
        priority = 5
        path = ["/split/*"]
        action = { type = "forward", target_groups = [{ name = "www", weight = 1 }, { name = "api", weight = 3 }] }

        [[listener]]
        name = "raw"
        address = "192.0.2.10"
        port = 81
        protocol = "tcp"
        default_target_group = "l4"

        [[target_group]]
        name = "www"
        targets = [ { address = "10.0.1.10" }, { address = "10.0.1.11", weight = 2 }, { address = "10.0.1.12" } ]

        [[target_group]]
        name = "api"
        port = 8080
        algorithm = "least_outstanding_requests"
        targets = [ { address = "10.0.2.10" } ]

        [[target_group]]
        name = "l4"
        targets = [ { address = "10.0.3.10" } ]
    "#;

    fn key(group: &str, addr: &str) -> TargetKey {
        TargetKey {
            group: group.into(),
            addr: addr.parse().unwrap(),
        }
    }

    fn view(health: Health, draining: bool) -> TargetView {
        TargetView { health, draining }
    }

    fn addrs(group: &GroupRoutes) -> Vec<String> {
        group
            .targets
            .iter()
            .map(|t| t.key.addr.to_string())
            .collect()
    }

    #[test]
    fn only_http_listeners_get_routes_with_ports_resolved() {
        let model = Model::parse(MODEL, "t").unwrap();
        let snapshot = Snapshot::build(&model, &BTreeMap::new(), &mut Carried::default());
        assert_eq!(snapshot.listeners.len(), 1);
        let web = &snapshot.listeners["web"];
        let mut names: Vec<&String> = web.groups.keys().collect();
        names.sort();
        assert_eq!(names, ["api", "www"]);
        // No target port, no group port: the listener's.
        assert_eq!(
            addrs(&web.groups["www"]),
            ["10.0.1.10:80", "10.0.1.11:80", "10.0.1.12:80"]
        );
        assert_eq!(addrs(&web.groups["api"]), ["10.0.2.10:8080"]);
        assert_eq!(
            web.groups["api"].algorithm,
            Algorithm::LeastOutstandingRequests
        );
        assert_eq!(web.group_choice[&5].0, ["www", "api"]);
        let picks: Vec<usize> = (0..4)
            .map(|_| web.groups["www"].round_robin.pick().unwrap())
            .collect();
        assert_eq!(
            picks.iter().filter(|&&i| i == 1).count(),
            2,
            "weight 2: {picks:?}"
        );
    }

    #[test]
    fn healthy_targets_route_unless_none_is_and_draining_ones_never() {
        let model = Model::parse(MODEL, "t").unwrap();
        let mut views = BTreeMap::new();
        views.insert(key("www", "10.0.1.10:80"), view(Health::Healthy, false));
        views.insert(key("www", "10.0.1.11:80"), view(Health::Unhealthy, false));
        views.insert(key("www", "10.0.1.12:80"), view(Health::Initial, false));
        views.insert(key("www", "10.0.1.99:80"), view(Health::Healthy, true));
        let mut carried = Carried::default();
        let snapshot = Snapshot::build(&model, &views, &mut carried);
        let www = &snapshot.listeners["web"].groups["www"];
        assert_eq!(addrs(www), ["10.0.1.10:80"]);
        assert!(
            snapshot.reachable.contains(&key("www", "10.0.1.99:80")),
            "draining stays reachable"
        );
        // None healthy: fail open to all registered, still not the draining one.
        views.insert(key("www", "10.0.1.10:80"), view(Health::Unhealthy, false));
        let snapshot = Snapshot::build(&model, &views, &mut carried);
        assert_eq!(addrs(&snapshot.listeners["web"].groups["www"]).len(), 3);
    }

    #[test]
    fn request_counters_outlive_a_target_out_of_rotation_until_it_is_gone() {
        let model = Model::parse(MODEL, "t").unwrap();
        let mut carried = Carried::default();
        let mut views = BTreeMap::new();
        views.insert(key("www", "10.0.1.10:80"), view(Health::Healthy, false));
        views.insert(key("www", "10.0.1.11:80"), view(Health::Healthy, false));
        let first = Snapshot::build(&model, &views, &mut carried);
        let routed = &first.listeners["web"].groups["www"].targets;
        let target = routed
            .iter()
            .find(|t| t.key == key("www", "10.0.1.11:80"))
            .unwrap();
        target
            .counters
            .requests
            .fetch_add(5, std::sync::atomic::Ordering::Relaxed);
        // Unhealthy while another is healthy: out of rotation, its count kept.
        views.insert(key("www", "10.0.1.11:80"), view(Health::Unhealthy, false));
        let second = Snapshot::build(&model, &views, &mut carried);
        assert!(second.listeners["web"].groups["www"]
            .targets
            .iter()
            .all(|t| t.key != key("www", "10.0.1.11:80")));
        let kept: Vec<_> = carried
            .targets()
            .map(|(k, c)| (k.addr.to_string(), c.read().requests))
            .collect();
        assert!(kept.contains(&("10.0.1.11:80".to_string(), 5)), "{kept:?}");
        // Deregistered and gone from the views: forgotten.
        views.remove(&key("www", "10.0.1.11:80"));
        let without = MODEL.replace("{ address = \"10.0.1.11\", weight = 2 }, ", "");
        assert_ne!(without, MODEL);
        let model = Model::parse(&without, "t").unwrap();
        Snapshot::build(&model, &views, &mut carried);
        assert!(carried
            .targets()
            .all(|(k, _)| k.addr.to_string() != "10.0.1.11:80"));
    }

    #[test]
    fn outstanding_counters_outlive_snapshots() {
        let model = Model::parse(MODEL, "t").unwrap();
        let mut carried = Carried::default();
        let first = Snapshot::build(&model, &BTreeMap::new(), &mut carried);
        first.listeners["web"].groups["api"].targets[0]
            .outstanding
            .fetch_add(3, std::sync::atomic::Ordering::Relaxed);
        let second = Snapshot::build(&model, &BTreeMap::new(), &mut carried);
        let counter = &second.listeners["web"].groups["api"].targets[0].outstanding;
        assert_eq!(counter.load(std::sync::atomic::Ordering::Relaxed), 3);
        let empty = Model::default();
        Snapshot::build(&empty, &BTreeMap::new(), &mut carried);
        assert!(carried.outstanding.is_empty() && carried.groups.is_empty());
    }
}
