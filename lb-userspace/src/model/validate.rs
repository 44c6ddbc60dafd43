//! Validation of the model as a whole: every rule that involves more than one field (names,
//! references, ports per mode, L7-only settings). Errors say what is wrong and how to fix it,
//! and carry where: the object ([`Subject`]) and the field, from which [`super::lines`]
//! finds the line in the file.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    time::Duration,
};

use super::{l7, Algorithm, Listener, Mode, Model, Protocol, TargetGroup};
use crate::{
    health::CheckProtocol,
    maglev::{TableSize, MAX_WEIGHT},
};

/// What a validation error is about: an object of the model by its position in the file's
/// arrays (`[[listener]]`, `[[target_group]]`, a group's `targets`, a listener's
/// `[[listener.rule]]`), or `[data_plane]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subject {
    Listener { index: usize },
    TargetGroup { index: usize },
    Target { group: usize, index: usize },
    Rule { listener: usize, index: usize },
    DataPlane,
    Resolver,
}

/// A model that parses but breaks a rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Invalid {
    pub subject: Subject,
    /// The field of the subject to blame, when one is.
    pub field: Option<&'static str>,
    /// The sentence for people: it names the object and the field, and says the fix.
    pub message: String,
}

impl Subject {
    pub(super) fn invalid(self, field: Option<&'static str>, message: String) -> Invalid {
        Invalid {
            subject: self,
            field,
            message,
        }
    }
}

impl Model {
    /// Every rule that involves more than one field: names, references, ports per mode.
    pub(crate) fn validate(&self) -> Result<(), Invalid> {
        if let Some(refresh) = self.resolver.refresh {
            if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&refresh) {
                return Err(Subject::Resolver.invalid(
                    Some("refresh"),
                    format!("resolver.refresh {refresh:?} must be 1 s to 3600 s"),
                ));
            }
        }
        let mut names = BTreeSet::new();
        let mut groups = BTreeMap::new();
        for (gi, group) in self.target_groups.iter().enumerate() {
            if !names.insert(("target_group", group.name.as_str())) {
                return Err(Subject::TargetGroup { index: gi }.invalid(
                    Some("name"),
                    format!(
                        "target group '{}' is defined twice; names must be unique",
                        group.name
                    ),
                ));
            }
            groups.insert(group.name.as_str(), (gi, group));
            let mut seen = BTreeSet::new();
            for (ti, target) in group.targets.iter().enumerate() {
                let port = target.port.or(group.port);
                let shown = show_target(target, port);
                if !(1..=MAX_WEIGHT).contains(&target.weight) {
                    return Err(Subject::Target { group: gi, index: ti }.invalid(Some("weight"), format!(
                        "target group '{}': target {shown} has weight {}; weights are 1 to {MAX_WEIGHT}",
                        group.name, target.weight
                    )));
                }
                if !seen.insert((target.address, port)) {
                    return Err(Subject::Target {
                        group: gi,
                        index: ti,
                    }
                    .invalid(
                        None,
                        format!(
                            "target group '{}': target {shown} is listed twice",
                            group.name
                        ),
                    ));
                }
                if target.address.is_unspecified() || target.address.is_multicast() {
                    return Err(Subject::Target {
                        group: gi,
                        index: ti,
                    }
                    .invalid(
                        Some("address"),
                        format!(
                            "target group '{}': target address {} is not a unicast address",
                            group.name,
                            target.shown()
                        ),
                    ));
                }
            }
            group.health_check.resolve().map_err(|e| {
                Subject::TargetGroup { index: gi }.invalid(
                    Some("health_check"),
                    format!("target group '{}': health_check: {e}", group.name),
                )
            })?;
            if group.deregistration_delay > 3600 {
                return Err(Subject::TargetGroup { index: gi }.invalid(
                    Some("deregistration_delay"),
                    format!(
                    "target group '{}': deregistration_delay {} is above the maximum 3600 seconds",
                    group.name, group.deregistration_delay
                ),
                ));
            }
            if let Some(stickiness) = &group.stickiness {
                l7::validate_stickiness(&group.name, stickiness).map_err(|message| {
                    Subject::TargetGroup { index: gi }.invalid(Some("stickiness"), message)
                })?;
            }
        }
        let mut endpoints = BTreeMap::new();
        let known: Vec<&str> = groups.keys().copied().collect();
        let known = if known.is_empty() {
            "none".to_string()
        } else {
            known.join(", ")
        };
        for (li, listener) in self.listeners.iter().enumerate() {
            let l = &listener.name;
            if !names.insert(("listener", l.as_str())) {
                return Err(Subject::Listener { index: li }.invalid(
                    Some("name"),
                    format!("listener '{l}' is defined twice; names must be unique"),
                ));
            }
            // http and https share TCP ports with tcp listeners.
            let transport = listener.protocol.number();
            if let Some((other, protocol)) = endpoints.insert(
                (listener.address, listener.port, transport),
                (l, listener.protocol),
            ) {
                let at = SocketAddr::new(listener.address, listener.port);
                let at_listener = Subject::Listener { index: li };
                return Err(at_listener.invalid(Some("port"), if protocol == listener.protocol {
                    format!(
                        "listeners '{other}' and '{l}' both listen on {at} {}; each address, port and protocol may have one listener",
                        protocol.name()
                    )
                } else {
                    format!(
                        "listeners '{other}' ({}) and '{l}' ({}) both listen on {at} tcp; http and https listeners take the TCP port, so each address and port may have one of tcp, http, https",
                        protocol.name(),
                        listener.protocol.name()
                    )
                }));
            }
            if listener.address.is_multicast() {
                return Err(Subject::Listener { index: li }.invalid(
                    Some("address"),
                    format!(
                        "listener '{l}': address {} is not a unicast address",
                        listener.address
                    ),
                ));
            }
            // The proxy can listen on every address of the host; XDP matches packets by
            // their destination, which is never 0.0.0.0.
            if listener.address.is_unspecified() && !listener.protocol.is_l7() {
                return Err(Subject::Listener { index: li }.invalid(
                    Some("address"),
                    format!(
                        "listener '{l}' ({}): address {} is not an address packets are sent to; a tcp/udp listener takes its virtual IP (the address clients connect to), while http/https listeners may use {} for every address of the host",
                        listener.protocol.name(),
                        listener.address,
                        listener.address
                    ),
                ));
            }
            let Some(&(gi, group)) = groups.get(listener.default_target_group.as_str()) else {
                return Err(Subject::Listener { index: li }.invalid(Some("default_target_group"), format!(
                    "listener '{l}': default_target_group '{}' does not exist; known target groups: {known}",
                    listener.default_target_group,
                )));
            };
            if listener.protocol.is_l7() {
                self.validate_l7_listener(li, listener, &groups, &known)?;
            } else {
                validate_l4_listener(li, listener, gi, group)?;
            }
        }
        // An all-ports TCP listener takes every TCP packet to its address in XDP, so the
        // proxy would never see its listener's traffic.
        for listener in self.listeners.iter().filter(|l| l.protocol.is_l7()) {
            if let Some((all_index, all)) = self.listeners.iter().enumerate().find(|(_, o)| {
                o.port == 0 && o.protocol == Protocol::Tcp && o.address == listener.address
            }) {
                return Err(Subject::Listener { index: all_index }.invalid(Some("port"), format!(
                    "listener '{}' ({}) takes every TCP port of {}, so {} listener '{}' on port {} would never see its traffic; give '{}' a port or use another address",
                    all.name,
                    all.protocol.name(),
                    all.address,
                    listener.protocol.name(),
                    listener.name,
                    listener.port,
                    all.name
                )));
            }
        }
        let [min, max] = self.data_plane.nat_port_range;
        if min == 0 || min > max {
            return Err(Subject::DataPlane.invalid(Some("nat_port_range"), format!(
                "data_plane.nat_port_range [{min}, {max}] is not a range of ports from 1 to 65535 with the first not above the second"
            )));
        }
        Ok(())
    }

    fn validate_l7_listener(
        &self,
        li: usize,
        listener: &Listener,
        groups: &BTreeMap<&str, (usize, &TargetGroup)>,
        known: &str,
    ) -> Result<(), Invalid> {
        let at = Subject::Listener { index: li };
        let l = &listener.name;
        let protocol = listener.protocol.name();
        if listener.port == 0 {
            return Err(at.invalid(Some("port"), format!(
                "listener '{l}' ({protocol}) needs a port; port 0 (every port) is for tcp and udp listeners"
            )));
        }
        if listener.mode.is_some() {
            return Err(at.invalid(Some("mode"), format!(
                "listener '{l}' ({protocol}) has a mode; the L7 proxy opens its own connections to targets, remove 'mode' (it is for tcp and udp listeners)"
            )));
        }
        if listener.maglev_table_size.is_some() {
            return Err(at.invalid(Some("maglev_table_size"), format!(
                "listener '{l}' ({protocol}) has maglev_table_size; {protocol} listeners balance per target group (algorithm), remove it"
            )));
        }
        if let Some(idle) = listener.idle_timeout {
            let secs = idle.as_secs();
            if !l7::IDLE_TIMEOUT_RANGE.contains(&secs) || idle.subsec_nanos() != 0 {
                return Err(at.invalid(
                    Some("idle_timeout"),
                    format!(
                    "listener '{l}': idle_timeout {idle:?} must be whole seconds from 1 to 4000"
                ),
                ));
            }
        }
        if let Some(timeout) = listener.header_read_timeout {
            if timeout < Duration::from_millis(100) || timeout > Duration::from_secs(300) {
                return Err(at.invalid(
                    Some("header_read_timeout"),
                    format!(
                        "listener '{l}': header_read_timeout {timeout:?} must be 100 ms to 300 s"
                    ),
                ));
            }
        }
        if let Some(bytes) = listener.max_header_bytes {
            if !l7::MAX_HEADER_BYTES_RANGE.contains(&bytes) {
                return Err(at.invalid(
                    Some("max_header_bytes"),
                    format!("listener '{l}': max_header_bytes {bytes} must be 1024 to 1048576"),
                ));
            }
        }
        if let Some(connections) = listener.max_connections {
            if !l7::MAX_CONNECTIONS_RANGE.contains(&connections) {
                return Err(at.invalid(
                    Some("max_connections"),
                    format!("listener '{l}': max_connections {connections} must be 1 to 10000000"),
                ));
            }
        }
        match listener.protocol {
            Protocol::Https if listener.certificates.is_empty() => {
                return Err(at.invalid(Some("protocol"), format!(
                    "listener '{l}' (https) needs certificates = [{{ cert = \"/path/cert.pem\", key = \"/path/key.pem\" }}]; the first is the default"
                )));
            }
            Protocol::Http if !listener.certificates.is_empty() => {
                return Err(at.invalid(Some("certificates"), format!(
                    "listener '{l}' (http) has certificates; use protocol = \"https\" to terminate TLS, or remove them"
                )));
            }
            _ => {}
        }
        for cert in &listener.certificates {
            if cert.cert.as_os_str().is_empty() || cert.key.as_os_str().is_empty() {
                return Err(at.invalid(
                    Some("certificates"),
                    format!(
                        "listener '{l}': a certificate needs both cert and key (PEM file paths)"
                    ),
                ));
            }
        }
        let mut priorities = BTreeSet::new();
        for (ri, rule) in listener.rules.iter().enumerate() {
            if !priorities.insert(rule.priority) {
                return Err(Subject::Rule { listener: li, index: ri }.invalid(Some("priority"), format!(
                    "listener '{l}': two rules have priority {}; priorities must be unique per listener",
                    rule.priority
                )));
            }
            l7::validate_rule(l, rule, |name| groups.contains_key(name), known).map_err(
                |message| {
                    Subject::Rule {
                        listener: li,
                        index: ri,
                    }
                    .invalid(None, message)
                },
            )?;
        }
        for name in listener.target_groups() {
            let (gi, group) = groups[name];
            if group.algorithm == Some(Algorithm::Maglev) {
                return Err(Subject::TargetGroup { index: gi }.invalid(Some("algorithm"), format!(
                    "target group '{name}' has algorithm maglev, which {protocol} listener '{l}' does not use; choose round_robin or least_outstanding_requests"
                )));
            }
            // The proxy would connect to itself, again and again, until descriptors run out.
            let own = SocketAddr::new(listener.address, listener.port);
            for (ti, target) in group.targets.iter().enumerate() {
                let to = SocketAddr::new(target.address, target.port_for(group, listener));
                // A listener on every address also takes loopback.
                let every = listener.address.is_unspecified()
                    && to.port() == own.port()
                    && (to.ip().is_loopback() || to.ip().is_unspecified());
                if to == own || every {
                    return Err(Subject::Target { group: gi, index: ti }.invalid(
                        Some("address"),
                        format!(
                            "target group '{name}': target {to} is listener '{l}' itself, so requests would loop through the proxy; name the application's own address and port"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// tcp/udp idle timeouts, seconds (NLB allows 60 to 6000 for tcp; shorter ones serve tests).
const L4_IDLE_TIMEOUT_RANGE: std::ops::RangeInclusive<u64> = 1..=6000;

fn validate_l4_listener(
    li: usize,
    listener: &Listener,
    gi: usize,
    group: &TargetGroup,
) -> Result<(), Invalid> {
    let at = Subject::Listener { index: li };
    let l = &listener.name;
    let protocol = listener.protocol.name();
    let l7_only = [
        ("rule", !listener.rules.is_empty()),
        ("certificates", !listener.certificates.is_empty()),
        (
            "header_read_timeout",
            listener.header_read_timeout.is_some(),
        ),
        ("max_header_bytes", listener.max_header_bytes.is_some()),
        ("max_connections", listener.max_connections.is_some()),
        ("access_log", listener.access_log.is_some()),
    ];
    if let Some((field, _)) = l7_only.iter().find(|(_, set)| *set) {
        return Err(at.invalid(Some(*field), format!(
            "listener '{l}' ({protocol}) has {field}, which only http and https listeners take; use protocol = \"http\" or \"https\", or remove it"
        )));
    }
    if let Some(idle) = listener.idle_timeout {
        let secs = idle.as_secs();
        if !L4_IDLE_TIMEOUT_RANGE.contains(&secs) || idle.subsec_nanos() != 0 {
            return Err(at.invalid(
                Some("idle_timeout"),
                format!(
                    "listener '{l}' ({protocol}): idle_timeout {idle:?} must be whole seconds from 1 to 6000"
                ),
            ));
        }
    }
    if let Some(algorithm) = group.algorithm.filter(|a| *a != Algorithm::Maglev) {
        return Err(Subject::TargetGroup { index: gi }.invalid(Some("algorithm"), format!(
            "target group '{}' has algorithm {}, but {protocol} listener '{l}' balances with maglev; remove algorithm (or set \"maglev\")",
            group.name,
            algorithm.name()
        )));
    }
    if group.stickiness.is_some() {
        return Err(Subject::TargetGroup { index: gi }.invalid(Some("stickiness"), format!(
            "target group '{}' has stickiness, which {protocol} listener '{l}' cannot honour (it sees packets, not cookies); use hash_key = \"source_ip\" for L4 stickiness",
            group.name
        )));
    }
    let size = TableSize::new(listener.maglev_table_size()).map_err(|e| {
        at.invalid(
            Some("maglev_table_size"),
            format!("listener '{l}': maglev_table_size: {e}"),
        )
    })?;
    if group.targets.len() as u64 * u64::from(crate::maglev::MIN_SLOTS_PER_TARGET)
        > u64::from(size.get())
    {
        return Err(at.invalid(Some("maglev_table_size"), format!(
            "listener '{l}': maglev_table_size {} is too small for the {} targets of '{}'; use a prime of at least {} targets x {}",
            size.get(),
            group.targets.len(),
            group.name,
            group.targets.len(),
            crate::maglev::MIN_SLOTS_PER_TARGET
        )));
    }
    if listener.protocol == Protocol::Udp
        && group.health_check.protocol == CheckProtocol::Tcp
        && group.health_check.port.is_none()
    {
        return Err(Subject::TargetGroup { index: gi }.invalid(Some("health_check"), format!(
            "listener '{l}' is UDP, so target group '{}' needs health_check.port (a TCP or HTTP service on the targets): a TCP check on the UDP traffic port would always fail",
            group.name
        )));
    }
    let mode = listener.mode();
    for (ti, target) in group.targets.iter().enumerate() {
        let port = target.port.or(group.port);
        let shown = show_target(target, port);
        if target.address.is_ipv4() != listener.address.is_ipv4() && mode != Mode::Tunnel {
            return Err(Subject::Target { group: gi, index: ti }.invalid(Some("address"), format!(
                "listener '{l}' ({}) cannot forward to target {shown} of '{}' in {} mode: address families differ (only tunnel mode carries one family inside the other)",
                listener.address,
                group.name,
                mode.name()
            )));
        }
        match mode {
            // A target without a port under an all-ports listener keeps each packet's
            // destination port.
            Mode::Nat => {}
            Mode::Dsr | Mode::Tunnel => {
                if let Some(port) = port {
                    if port != listener.port {
                        return Err(Subject::Target { group: gi, index: ti }.invalid(Some("port"), format!(
                            "listener '{l}' uses {} mode, where the packet reaches the target unchanged, so target {shown} of '{}' must use the listener's port {} (or none); port translation needs mode = \"nat\"",
                            mode.name(),
                            group.name,
                            listener.port
                        )));
                    }
                }
            }
        }
    }
    Ok(())
}

/// `10.0.0.5:80`, or `app1:80 (10.0.0.5)` for a host-name target.
fn show_target(target: &super::Target, port: Option<u16>) -> String {
    let at = |address: String| match port {
        Some(port) if target.host.is_some() => format!("{address}:{port}"),
        Some(port) => SocketAddr::new(target.address, port).to_string(),
        None => address,
    };
    match &target.host {
        Some(host) => format!("{} ({})", at(host.clone()), target.address),
        None => at(target.address.to_string()),
    }
}
