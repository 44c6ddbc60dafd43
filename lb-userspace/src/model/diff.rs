//! What a new model changes in the settings of an old one, one sentence each, for the log and
//! the answers of reload, change and takeover. The data plane's own effects (L4 listeners
//! added or removed, tables rebuilt, targets registered or draining) are the controller's to
//! report; this covers the rest: http/https listeners and every setting a change can touch
//! without moving a target (health checks, stickiness, algorithm, weights, timeouts, access
//! logs, rules, certificates).
//!
//! Models are compared through their [`Summary`]: each listener's and target group's settings
//! as the sentences show them (rules and certificates by digest). A summary is small and
//! serializable, so the controller saves the running model's with its state, and a daemon
//! that takes over describes its first model against its predecessor's, not against nothing.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{HashKey, Listener, Model, Stickiness, TargetGroup};
use crate::health::{spec::ShowDuration, HealthCheckSpec};

/// The sentences, listeners first, then target groups, each in the new model's order.
pub fn describe(old: &Model, new: &Model) -> Vec<String> {
    Summary::of(old).changes_to(&Summary::of(new))
}

/// A model's settings, as [`describe`] compares them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub listeners: Vec<Item>,
    pub target_groups: Vec<Item>,
}

/// One listener or target group: its settings in the order sentences name them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    pub name: String,
    /// An http/https listener (or a group; unused there).
    #[serde(default)]
    pub l7: bool,
    pub settings: Vec<(String, String)>,
    /// Groups: each target's weight, by target.
    #[serde(default)]
    pub weights: Vec<(String, u32)>,
}

impl Item {
    fn get(&self, key: &str) -> Option<&str> {
        self.settings
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

const ADDRESS: &str = "address";
const PROTOCOL: &str = "protocol";
const RULES: &str = "rules";
const CERTIFICATES: &str = "certificates";
const NO_ACCESS_LOG: &str = "off (log target sluice::access)";

impl Summary {
    pub fn of(model: &Model) -> Summary {
        Summary {
            listeners: model.listeners.iter().map(listener).collect(),
            target_groups: model.target_groups.iter().map(group).collect(),
        }
    }

    /// The sentences that describe going from `self` to `new`.
    pub fn changes_to(&self, new: &Summary) -> Vec<String> {
        let mut lines = listener_changes(&self.listeners, &new.listeners);
        lines.extend(group_changes(&self.target_groups, &new.target_groups));
        lines
    }
}

fn listener(l: &Listener) -> Item {
    let mut settings = vec![
        (
            ADDRESS.into(),
            SocketAddr::new(l.address, l.port).to_string(),
        ),
        (PROTOCOL.into(), l.protocol.name().into()),
    ];
    if !l.protocol.is_l7() {
        settings.push(("mode".into(), l.mode().name().into()));
        settings.push((
            "maglev_table_size".into(),
            l.maglev_table_size().to_string(),
        ));
    }
    settings.push((
        "default target group".into(),
        format!("'{}'", l.default_target_group),
    ));
    settings.push(("when_unhealthy".into(), l.when_unhealthy().name().into()));
    if l.protocol.is_l7() {
        settings.push((
            "idle_timeout".into(),
            ShowDuration(l.idle_timeout()).to_string(),
        ));
        settings.push((
            "header_read_timeout".into(),
            ShowDuration(l.header_read_timeout()).to_string(),
        ));
        settings.push(("max_header_bytes".into(), l.max_header_bytes().to_string()));
        settings.push((
            "max_connections".into(),
            l.max_connections
                .map_or("the global limit".into(), |n| n.to_string()),
        ));
        settings.push((
            "access_log".into(),
            l.access_log
                .as_ref()
                .map_or(NO_ACCESS_LOG.into(), |p| p.display().to_string()),
        ));
        settings.push((
            CERTIFICATES.into(),
            format!("{} {}", l.certificates.len(), digest(&l.certificates)),
        ));
        let priorities: Vec<String> = l.rules.iter().map(|r| r.priority.to_string()).collect();
        settings.push((
            RULES.into(),
            format!("[{}] {}", priorities.join(","), digest(&l.rules)),
        ));
    }
    Item {
        name: l.name.clone(),
        l7: l.protocol.is_l7(),
        settings,
        weights: Vec::new(),
    }
}

fn group(g: &TargetGroup) -> Item {
    let settings = vec![
        (
            "port".into(),
            g.port.map_or("none".into(), |p| p.to_string()),
        ),
        ("hash_key".into(), hash_key(g.hash_key)),
        (
            "deregistration_delay".into(),
            format!("{}s", g.deregistration_delay),
        ),
        ("health check".into(), health_check(&g.health_check)),
        (
            "algorithm".into(),
            g.algorithm.unwrap_or_default().name().into(),
        ),
        ("stickiness".into(), stickiness(g.stickiness.as_ref())),
    ];
    let weights = g
        .targets
        .iter()
        .map(|t| {
            let target = match t.port.or(g.port) {
                Some(port) => SocketAddr::new(t.address, port).to_string(),
                None => t.address.to_string(),
            };
            (target, t.weight)
        })
        .collect();
    Item {
        name: g.name.clone(),
        l7: false,
        settings,
        weights,
    }
}

/// A short digest of what `value` holds (its debug form), to tell changes apart in a summary
/// without keeping everything.
fn digest(value: &impl std::fmt::Debug) -> String {
    let hash = Sha256::digest(format!("{value:?}").as_bytes());
    hash.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

fn listener_changes(before: &[Item], after: &[Item]) -> Vec<String> {
    let find = |items: &'_ [Item], name: &str| items.iter().position(|i| i.name == name);
    let mut lines = Vec::new();
    let mut gone: Vec<&Item> = before
        .iter()
        .filter(|i| find(after, &i.name).is_none())
        .collect();
    for listener in after {
        let address = listener.get(ADDRESS).unwrap_or_default();
        match find(before, &listener.name) {
            Some(at) => lines.extend(changed("listener", &before[at], listener)),
            None if listener.l7 => {
                // A listener whose name is new on an address an old one served is that one
                // renamed: the proxy serves it on the same socket.
                let renamed = gone
                    .iter()
                    .position(|g| g.l7 && g.get(ADDRESS) == Some(address));
                match renamed.map(|at| gone.remove(at)) {
                    Some(previous) => {
                        lines.push(format!(
                            "listener '{}' renamed to '{}' on {address} (its socket and connections kept)",
                            previous.name, listener.name
                        ));
                        lines.extend(changed("listener", previous, listener));
                    }
                    None => lines.push(format!(
                        "listener '{}' ({}) added on {address}",
                        listener.name,
                        listener.get(PROTOCOL).unwrap_or_default()
                    )),
                }
            }
            // The controller reports L4 listeners it adds.
            None => {}
        }
    }
    for listener in gone.iter().filter(|l| l.l7) {
        lines.push(format!(
            "listener '{}' ({}) removed from {}",
            listener.name,
            listener.get(PROTOCOL).unwrap_or_default(),
            listener.get(ADDRESS).unwrap_or_default()
        ));
    }
    lines
}

/// One line naming every setting of `kind` `new` that differs from `old`, if any does.
fn changed(kind: &str, old: &Item, new: &Item) -> Option<String> {
    let mut parts = Vec::new();
    for (key, value) in &new.settings {
        let Some(was) = old.get(key).filter(|was| *was != value) else {
            continue;
        };
        let part = match key.as_str() {
            RULES => {
                let priorities = |v: &str| v.split(' ').next().unwrap_or_default().to_string();
                format!(
                    "rules changed (priorities {} -> {})",
                    priorities(was),
                    priorities(value)
                )
            }
            CERTIFICATES => {
                let count = |v: &str| v.split(' ').next().unwrap_or_default().to_string();
                format!("certificates changed ({} -> {})", count(was), count(value))
            }
            _ => format!("{key} {was} -> {value}"),
        };
        parts.push(part);
    }
    for (target, weight) in &new.weights {
        let before = old.weights.iter().find(|(t, _)| t == target);
        if let Some((_, was)) = before.filter(|(_, w)| w != weight) {
            parts.push(format!("target {target} weight {was} -> {weight}"));
        }
    }
    (!parts.is_empty()).then(|| format!("{kind} '{}': {}", new.name, parts.join("; ")))
}

fn group_changes(before: &[Item], after: &[Item]) -> Vec<String> {
    let mut lines = Vec::new();
    for group in after {
        match before.iter().find(|g| g.name == group.name) {
            None => lines.push(format!("target group '{}' added", group.name)),
            Some(previous) => lines.extend(changed("target group", previous, group)),
        }
    }
    for group in before {
        if !after.iter().any(|g| g.name == group.name) {
            lines.push(format!("target group '{}' removed", group.name));
        }
    }
    lines
}

fn hash_key(key: HashKey) -> String {
    match key {
        HashKey::FiveTuple => "five_tuple",
        HashKey::SourceIp => "source_ip",
    }
    .into()
}

/// The check as it runs (defaults applied), in the configuration's words.
fn health_check(spec: &HealthCheckSpec) -> String {
    let Ok(check) = spec.resolve() else {
        // Validated models resolve; show the raw settings otherwise.
        return format!("{spec:?}");
    };
    let mut text = check.protocol.name().to_string();
    if check.protocol == crate::health::CheckProtocol::Http {
        text.push_str(&format!(" {} matcher {}", check.path, check.matcher));
    }
    if let Some(port) = check.port {
        text.push_str(&format!(" port {port}"));
    }
    text.push_str(&format!(
        " every {} timeout {} healthy {} unhealthy {}",
        ShowDuration(check.interval),
        ShowDuration(check.timeout),
        check.healthy_threshold,
        check.unhealthy_threshold
    ));
    text
}

fn stickiness(stickiness: Option<&Stickiness>) -> String {
    match stickiness {
        None => "off".into(),
        Some(Stickiness::LbCookie { duration }) => format!("lb_cookie for {duration}s"),
        Some(Stickiness::AppCookie {
            cookie_name,
            duration,
        }) => format!("app_cookie '{cookie_name}' for {duration}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(extra_listener: &str, group: &str) -> Model {
        Model::parse(
            &format!(
                "[[listener]]\nname = \"web\"\naddress = \"192.0.2.10\"\nport = 80\nprotocol = \"http\"\ndefault_target_group = \"web\"\n{extra_listener}\n\
                 [[listener]]\nname = \"tcp\"\naddress = \"192.0.2.10\"\nport = 443\nprotocol = \"tcp\"\ndefault_target_group = \"l4\"\n\n\
                 [[target_group]]\nname = \"web\"\nport = 3000\n{group}\ntargets = [{{ address = \"10.0.1.10\" }}, {{ address = \"10.0.1.11\", weight = 2 }}]\n\n\
                 [[target_group]]\nname = \"l4\"\nport = 443\ntargets = [{{ address = \"10.0.1.12\" }}]\n"
            ),
            "test",
        )
        .unwrap()
    }

    #[test]
    fn the_same_model_changes_nothing() {
        let a = model("", "");
        assert!(describe(&a, &a).is_empty());
    }

    #[test]
    fn l7_listeners_added_removed_and_renamed() {
        let empty = Model::default();
        let a = model("", "");
        assert_eq!(
            describe(&empty, &a),
            [
                "listener 'web' (http) added on 192.0.2.10:80",
                "target group 'web' added",
                "target group 'l4' added"
            ]
        );
        assert_eq!(
            describe(&a, &empty),
            [
                "listener 'web' (http) removed from 192.0.2.10:80",
                "target group 'web' removed",
                "target group 'l4' removed"
            ]
        );
        let mut renamed = a.clone();
        renamed.listeners[0].name = "www".into();
        renamed.listeners[0].access_log = Some("/var/log/www.log".into());
        assert_eq!(
            describe(&a, &renamed),
            [
                "listener 'web' renamed to 'www' on 192.0.2.10:80 (its socket and connections kept)",
                "listener 'www': access_log off (log target sluice::access) -> /var/log/www.log"
            ]
        );
        // An L4 listener renamed is the controller's to report (removed and added).
        let mut l4 = a.clone();
        l4.listeners[1].name = "tcp2".into();
        assert!(describe(&a, &l4).is_empty());
    }

    #[test]
    fn settings_of_listeners_and_groups() {
        let a = model("", "");
        let b = model(
            "idle_timeout = 30\n[[listener.rule]]\npriority = 5\npath = [\"/api/*\"]\naction = { type = \"fixed_response\", status = 200 }\n",
            "algorithm = \"least_outstanding_requests\"\nstickiness = { type = \"lb_cookie\", duration = 60 }\nhealth_check = { protocol = \"http\", path = \"/health\", interval = 10 }\n",
        );
        assert_eq!(
            describe(&a, &b),
            [
                "listener 'web': idle_timeout 60s -> 30s; rules changed (priorities [] -> [5])",
                "target group 'web': health check tcp every 30s timeout 10s healthy 5 unhealthy 2 -> http /health matcher 200 every 10s timeout 5s healthy 5 unhealthy 2; algorithm round_robin -> least_outstanding_requests; stickiness off -> lb_cookie for 60s",
            ]
        );
        let mut weighted = a.clone();
        weighted.target_groups[0].targets[1].weight = 5;
        weighted.listeners[1].mode = Some(super::super::Mode::Dsr);
        assert_eq!(
            describe(&a, &weighted),
            [
                "listener 'tcp': mode nat -> dsr",
                "target group 'web': target 10.0.1.11:3000 weight 2 -> 5"
            ]
        );
    }

    #[test]
    fn a_saved_summary_describes_as_the_model_it_was_made_of() {
        let a = model("", "");
        let mut b = model(
            "idle_timeout = 30\n",
            "stickiness = { type = \"lb_cookie\" }\n",
        );
        b.listeners[0].name = "www".into();
        let saved: Summary =
            serde_json::from_str(&serde_json::to_string(&Summary::of(&a)).unwrap()).unwrap();
        assert_eq!(saved, Summary::of(&a));
        assert_eq!(saved.changes_to(&Summary::of(&b)), describe(&a, &b));
        assert_eq!(
            describe(&a, &b),
            [
                "listener 'web' renamed to 'www' on 192.0.2.10:80 (its socket and connections kept)",
                "listener 'www': idle_timeout 60s -> 30s",
                "target group 'web': stickiness off -> lb_cookie for 86400s",
            ]
        );
        // Rules are told apart by content, not only by priority.
        let mut c = model(
            "[[listener.rule]]\npriority = 5\npath = [\"/a\"]\naction = { type = \"fixed_response\", status = 200 }\n",
            "",
        );
        let d = c.clone();
        c.listeners[0].rules[0].path = vec!["/b".into()];
        assert_eq!(
            describe(&d, &c),
            ["listener 'web': rules changed (priorities [5] -> [5])"]
        );
    }
}
