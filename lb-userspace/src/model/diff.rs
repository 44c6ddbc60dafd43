//! What a new model changes in the settings of an old one, one sentence each, for the log and
//! the answers of reload, change and takeover. The data plane's own effects (L4 listeners
//! added or removed, tables rebuilt, targets registered or draining) are the controller's to
//! report; this covers the rest: http/https listeners and every setting a change can touch
//! without moving a target (health checks, stickiness, algorithm, weights, timeouts, access
//! logs, rules, certificates).

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use super::{HashKey, Listener, Model, Stickiness, TargetGroup};
use crate::health::{spec::ShowDuration, HealthCheckSpec};

/// The sentences, listeners first, then target groups, each in name order.
pub fn describe(old: &Model, new: &Model) -> Vec<String> {
    let mut lines = listeners(old, new);
    lines.extend(target_groups(old, new));
    lines
}

fn listeners(old: &Model, new: &Model) -> Vec<String> {
    let before: BTreeMap<&str, &Listener> =
        old.listeners.iter().map(|l| (l.name.as_str(), l)).collect();
    let after: BTreeMap<&str, &Listener> =
        new.listeners.iter().map(|l| (l.name.as_str(), l)).collect();
    let mut lines = Vec::new();
    let mut gone: Vec<&Listener> = before
        .iter()
        .filter(|(name, _)| !after.contains_key(*name))
        .map(|(_, l)| *l)
        .collect();
    for (name, listener) in &after {
        match before.get(name) {
            Some(previous) => lines.extend(changed(previous, listener)),
            None if listener.protocol.is_l7() => {
                // A listener whose name is new on an address an old one served is that one
                // renamed: the proxy serves it on the same socket.
                let renamed = gone
                    .iter()
                    .position(|g| g.protocol.is_l7() && address(g) == address(listener));
                match renamed.map(|at| gone.remove(at)) {
                    Some(previous) => {
                        lines.push(format!(
                            "listener '{}' renamed to '{name}' on {} (its socket and connections kept)",
                            previous.name,
                            address(listener)
                        ));
                        lines.extend(changed(previous, listener));
                    }
                    None => lines.push(format!(
                        "listener '{name}' ({}) added on {}",
                        listener.protocol.name(),
                        address(listener)
                    )),
                }
            }
            // The controller reports L4 listeners it adds.
            None => {}
        }
    }
    for listener in gone.iter().filter(|l| l.protocol.is_l7()) {
        lines.push(format!(
            "listener '{}' ({}) removed from {}",
            listener.name,
            listener.protocol.name(),
            address(listener)
        ));
    }
    lines
}

fn address(listener: &Listener) -> SocketAddr {
    SocketAddr::new(listener.address, listener.port)
}

/// One line naming every setting of a listener that changed, if any did.
fn changed(old: &Listener, new: &Listener) -> Option<String> {
    let mut parts = Vec::new();
    let mut compare = |what: &str, a: String, b: String| {
        if a != b {
            parts.push(format!("{what} {a} -> {b}"));
        }
    };
    compare(
        "address",
        address(old).to_string(),
        address(new).to_string(),
    );
    compare(
        "protocol",
        old.protocol.name().into(),
        new.protocol.name().into(),
    );
    if !new.protocol.is_l7() {
        compare("mode", old.mode().name().into(), new.mode().name().into());
        compare(
            "maglev_table_size",
            old.maglev_table_size().to_string(),
            new.maglev_table_size().to_string(),
        );
    }
    compare(
        "default target group",
        quoted(&old.default_target_group),
        quoted(&new.default_target_group),
    );
    if new.protocol.is_l7() {
        compare(
            "idle_timeout",
            ShowDuration(old.idle_timeout()).to_string(),
            ShowDuration(new.idle_timeout()).to_string(),
        );
        compare(
            "header_read_timeout",
            ShowDuration(old.header_read_timeout()).to_string(),
            ShowDuration(new.header_read_timeout()).to_string(),
        );
        compare(
            "max_header_bytes",
            old.max_header_bytes().to_string(),
            new.max_header_bytes().to_string(),
        );
        compare(
            "access_log",
            old.access_log
                .as_ref()
                .map_or("off (log target sluice::access)".into(), |p| {
                    p.display().to_string()
                }),
            new.access_log
                .as_ref()
                .map_or("off (log target sluice::access)".into(), |p| {
                    p.display().to_string()
                }),
        );
        if old.certificates != new.certificates {
            parts.push(format!(
                "certificates changed ({} -> {})",
                old.certificates.len(),
                new.certificates.len()
            ));
        }
        if old.rules != new.rules {
            let priorities = |l: &Listener| {
                l.rules
                    .iter()
                    .map(|r| r.priority.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            parts.push(format!(
                "rules changed (priorities [{}] -> [{}])",
                priorities(old),
                priorities(new)
            ));
        }
    }
    (!parts.is_empty()).then(|| format!("listener '{}': {}", new.name, parts.join("; ")))
}

fn quoted(text: &str) -> String {
    format!("'{text}'")
}

fn target_groups(old: &Model, new: &Model) -> Vec<String> {
    let before: BTreeMap<&str, &TargetGroup> = old
        .target_groups
        .iter()
        .map(|g| (g.name.as_str(), g))
        .collect();
    let mut lines = Vec::new();
    for group in &new.target_groups {
        match before.get(group.name.as_str()) {
            None => lines.push(format!("target group '{}' added", group.name)),
            Some(previous) => lines.extend(group_changed(previous, group)),
        }
    }
    for name in before.keys() {
        if new.target_group(name).is_none() {
            lines.push(format!("target group '{name}' removed"));
        }
    }
    lines
}

fn group_changed(old: &TargetGroup, new: &TargetGroup) -> Option<String> {
    let mut parts = Vec::new();
    let mut compare = |what: &str, a: String, b: String| {
        if a != b {
            parts.push(format!("{what} {a} -> {b}"));
        }
    };
    compare(
        "port",
        old.port.map_or("none".into(), |p| p.to_string()),
        new.port.map_or("none".into(), |p| p.to_string()),
    );
    compare("hash_key", hash_key(old.hash_key), hash_key(new.hash_key));
    compare(
        "deregistration_delay",
        format!("{}s", old.deregistration_delay),
        format!("{}s", new.deregistration_delay),
    );
    compare(
        "health check",
        health_check(&old.health_check),
        health_check(&new.health_check),
    );
    compare(
        "algorithm",
        old.algorithm.unwrap_or_default().name().into(),
        new.algorithm.unwrap_or_default().name().into(),
    );
    compare(
        "stickiness",
        stickiness(old.stickiness.as_ref()),
        stickiness(new.stickiness.as_ref()),
    );
    let weights = |g: &TargetGroup| -> BTreeMap<(IpAddr, Option<u16>), u32> {
        g.targets
            .iter()
            .map(|t| ((t.address, t.port.or(g.port)), t.weight))
            .collect()
    };
    let after = weights(new);
    for ((address, port), weight) in weights(old) {
        if let Some(&now) = after.get(&(address, port)).filter(|&&w| w != weight) {
            let target = match port {
                Some(port) => SocketAddr::new(address, port).to_string(),
                None => address.to_string(),
            };
            parts.push(format!("target {target} weight {weight} -> {now}"));
        }
    }
    (!parts.is_empty()).then(|| format!("target group '{}': {}", new.name, parts.join("; ")))
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
                "target group 'l4' removed",
                "target group 'web' removed"
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
}
