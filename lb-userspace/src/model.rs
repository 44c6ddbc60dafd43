//! The declarative model: listeners, target groups and targets, in ELB's vocabulary. It is
//! read from a TOML file, validated as a whole, and is the single source of truth from which
//! the kernel maps are derived (`controller.rs`).
//!
//! ```toml
//! [[listener]]
//! name = "web"
//! address = "192.0.2.10"      # the virtual IP
//! port = 80                   # 0 = every port of the address
//! protocol = "tcp"            # tcp | udp
//! mode = "nat"                # nat (default) | dsr | tunnel
//! default_target_group = "web"
//!
//! [[target_group]]
//! name = "web"
//! port = 3000                 # the targets' port when a target gives none
//! hash_key = "five_tuple"     # five_tuple (default) | source_ip
//! deregistration_delay = 300  # seconds a removed target keeps its flows
//! health_check = { protocol = "http", path = "/health", interval = 10, matcher = "200-299" }
//! targets = [
//!   { address = "10.0.1.10" },
//!   { address = "10.0.1.11", port = 3001, weight = 2 },
//! ]
//! ```

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::{
    health::{CheckProtocol, HealthCheck, HealthCheckSpec},
    maglev::{TableSize, MAX_WEIGHT},
};

mod l7;
pub use l7::{
    Action, Algorithm, Certificate, Cidr, FixedResponse, Forward, HeaderCondition, QueryCondition,
    Redirect, Rule, Stickiness, WeightedGroup, CONTENT_TYPES, DEFAULT_HEADER_READ_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_HEADER_BYTES,
};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: String, message: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    /// Served by the L7 proxy, not by XDP.
    Http,
    /// Served by the L7 proxy with TLS termination.
    Https,
}

impl Protocol {
    /// The IP protocol number of the transport (HTTP and HTTPS run over TCP).
    pub const fn number(self) -> u8 {
        match self {
            Protocol::Tcp | Protocol::Http | Protocol::Https => 6,
            Protocol::Udp => 17,
        }
    }

    /// As in the configuration.
    pub const fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Http => "http",
            Protocol::Https => "https",
        }
    }

    /// Served by the L7 proxy rather than the XDP program.
    pub const fn is_l7(self) -> bool {
        matches!(self, Protocol::Http | Protocol::Https)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Nat,
    Dsr,
    Tunnel,
}

impl Mode {
    /// As in the configuration.
    pub const fn name(self) -> &'static str {
        match self {
            Mode::Nat => "nat",
            Mode::Dsr => "dsr",
            Mode::Tunnel => "tunnel",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HashKey {
    #[default]
    FiveTuple,
    SourceIp,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub name: String,
    pub address: IpAddr,
    /// 0 = every port.
    pub port: u16,
    pub protocol: Protocol,
    /// tcp/udp only; default nat (see [`Listener::mode`]).
    #[serde(default)]
    pub mode: Option<Mode>,
    pub default_target_group: String,
    /// tcp/udp only: Maglev table size (a prime); default 65537.
    #[serde(default)]
    pub maglev_table_size: Option<u32>,
    /// http/https: a client connection with no data either way for this long is closed; also
    /// how long a target may take to answer (then 504). Default 60 s.
    /// tcp/udp: a flow with no packet either way for this long expires (its flow entry and
    /// `nat` port are freed). Default NLB's: 350 s for tcp, 120 s for udp.
    #[serde(default, deserialize_with = "crate::health::spec::optional_duration")]
    pub idle_timeout: Option<Duration>,
    /// http/https only: a request head must arrive within this (slowloris); else 408.
    /// Default 10 s.
    #[serde(default, deserialize_with = "crate::health::spec::optional_duration")]
    pub header_read_timeout: Option<Duration>,
    /// http/https only: the largest request head (request line and headers); larger gets 431.
    /// Default 16384.
    #[serde(default)]
    pub max_header_bytes: Option<usize>,
    /// https only: at least one; the first is the default when SNI matches none.
    #[serde(default)]
    pub certificates: Vec<Certificate>,
    /// http/https only: append access log lines to this file instead of the log target
    /// `sluice::access`.
    #[serde(default)]
    pub access_log: Option<PathBuf>,
    /// http/https only: evaluated by ascending priority; no match: the default target group.
    #[serde(default, rename = "rule")]
    pub rules: Vec<Rule>,
}

impl Listener {
    /// A tcp/udp listener with defaults for everything else.
    pub fn l4(
        name: &str,
        address: IpAddr,
        port: u16,
        protocol: Protocol,
        mode: Mode,
        default_target_group: &str,
    ) -> Listener {
        Listener {
            name: name.to_string(),
            address,
            port,
            protocol,
            mode: Some(mode),
            default_target_group: default_target_group.to_string(),
            maglev_table_size: None,
            idle_timeout: None,
            header_read_timeout: None,
            max_header_bytes: None,
            certificates: Vec::new(),
            access_log: None,
            rules: Vec::new(),
        }
    }

    pub fn mode(&self) -> Mode {
        self.mode.unwrap_or_default()
    }

    pub fn maglev_table_size(&self) -> u32 {
        self.maglev_table_size.unwrap_or(TableSize::DEFAULT.get())
    }

    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout.unwrap_or(l7::DEFAULT_IDLE_TIMEOUT)
    }

    /// tcp/udp listeners: how long a flow may be idle before its entries expire, in seconds
    /// (validated to fit the data plane's 16 bits).
    pub fn l4_idle_timeout_s(&self) -> u16 {
        match self.idle_timeout {
            Some(idle) => u16::try_from(idle.as_secs()).unwrap_or(u16::MAX),
            None if self.protocol == Protocol::Udp => lb_common::flow::DEFAULT_UDP_IDLE_TIMEOUT_S,
            None => lb_common::flow::DEFAULT_TCP_IDLE_TIMEOUT_S,
        }
    }

    pub fn header_read_timeout(&self) -> Duration {
        self.header_read_timeout
            .unwrap_or(l7::DEFAULT_HEADER_READ_TIMEOUT)
    }

    pub fn max_header_bytes(&self) -> usize {
        self.max_header_bytes
            .unwrap_or(l7::DEFAULT_MAX_HEADER_BYTES)
    }

    /// The target groups the listener may send to: its default and every forward action's.
    pub fn target_groups(&self) -> impl Iterator<Item = &str> {
        let forwards = self.rules.iter().flat_map(|rule| match &rule.action {
            Action::Forward(forward) => forward
                .target_groups
                .iter()
                .map(|g| g.name.as_str())
                .collect(),
            _ => Vec::new(),
        });
        std::iter::once(self.default_target_group.as_str()).chain(forwards)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetGroup {
    pub name: String,
    /// The targets' port when a target gives none.
    pub port: Option<u16>,
    #[serde(default)]
    pub hash_key: HashKey,
    /// Seconds a deregistered target keeps serving its existing flows (AWS default 300).
    #[serde(default = "default_deregistration_delay")]
    pub deregistration_delay: u64,
    #[serde(default)]
    pub targets: Vec<Target>,
    /// How targets are checked (ELB defaults: TCP on the traffic port every 30 s, 10 s
    /// timeout, healthy after 5 passes, unhealthy after 2 failures).
    #[serde(default)]
    pub health_check: HealthCheckSpec,
    /// http/https listeners: round_robin (default) or least_outstanding_requests; tcp/udp
    /// listeners always use Maglev.
    #[serde(default)]
    pub algorithm: Option<Algorithm>,
    /// http/https listeners only.
    #[serde(default)]
    pub stickiness: Option<Stickiness>,
}

fn default_deregistration_delay() -> u64 {
    300
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub address: IpAddr,
    pub port: Option<u16>,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// Data-plane settings (`[data_plane]`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataPlane {
    /// `nat` source ports, inclusive; keep it disjoint from net.ipv4.ip_local_port_range.
    pub nat_port_range: [u16; 2],
    /// Flood gate: new flow-table entries per second per CPU (0 = unlimited).
    pub max_new_flows_per_cpu: u32,
}

impl Default for DataPlane {
    fn default() -> Self {
        let config = lb_common::config::Config::default();
        DataPlane {
            nat_port_range: [config.nat_port_min, config.nat_port_max],
            max_new_flows_per_cpu: config.max_new_flows_per_cpu,
        }
    }
}

/// A validated model.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    #[serde(default, rename = "listener")]
    pub listeners: Vec<Listener>,
    #[serde(default, rename = "target_group")]
    pub target_groups: Vec<TargetGroup>,
    #[serde(default)]
    pub data_plane: DataPlane,
}

impl Model {
    /// Reads and validates a model file.
    pub fn load(path: &Path) -> Result<Model, ModelError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Read {
            path: shown.clone(),
            source,
        })?;
        Model::parse(&text, &shown)
    }

    /// Parses and validates model text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Model, ModelError> {
        let model: Model = toml::from_str(text).map_err(|e| ModelError::Syntax {
            path: origin.to_string(),
            message: one_line(&e.to_string()),
        })?;
        model.validate().map_err(|message| ModelError::Invalid {
            path: match crate::model_lines::locate(text, &message) {
                Some(line) => format!("{origin}, line {line}"),
                None => origin.to_string(),
            },
            message,
        })?;
        Ok(model)
    }

    pub fn target_group(&self, name: &str) -> Option<&TargetGroup> {
        self.target_groups.iter().find(|g| g.name == name)
    }

    /// Every rule that involves more than one field: names, references, ports per mode.
    pub(crate) fn validate(&self) -> Result<(), String> {
        let mut names = BTreeSet::new();
        let mut groups = BTreeMap::new();
        for group in &self.target_groups {
            if !names.insert(("target_group", group.name.as_str())) {
                return Err(format!(
                    "target group '{}' is defined twice; names must be unique",
                    group.name
                ));
            }
            groups.insert(group.name.as_str(), group);
            let mut seen = BTreeSet::new();
            for target in &group.targets {
                let port = target.port.or(group.port);
                let shown = show_target(target.address, port);
                if !(1..=MAX_WEIGHT).contains(&target.weight) {
                    return Err(format!(
                        "target group '{}': target {shown} has weight {}; weights are 1 to {MAX_WEIGHT}",
                        group.name, target.weight
                    ));
                }
                if !seen.insert((target.address, port)) {
                    return Err(format!(
                        "target group '{}': target {shown} is listed twice",
                        group.name
                    ));
                }
                if target.address.is_unspecified() || target.address.is_multicast() {
                    return Err(format!(
                        "target group '{}': target address {} is not a unicast address",
                        group.name, target.address
                    ));
                }
            }
            group
                .health_check
                .resolve()
                .map_err(|e| format!("target group '{}': health_check: {e}", group.name))?;
            if group.deregistration_delay > 3600 {
                return Err(format!(
                    "target group '{}': deregistration_delay {} is above the maximum 3600 seconds",
                    group.name, group.deregistration_delay
                ));
            }
            if let Some(stickiness) = &group.stickiness {
                l7::validate_stickiness(&group.name, stickiness)?;
            }
        }
        let mut endpoints = BTreeMap::new();
        let known: Vec<&str> = groups.keys().copied().collect();
        let known = if known.is_empty() {
            "none".to_string()
        } else {
            known.join(", ")
        };
        for listener in &self.listeners {
            let l = &listener.name;
            if !names.insert(("listener", l.as_str())) {
                return Err(format!(
                    "listener '{l}' is defined twice; names must be unique"
                ));
            }
            // http and https share TCP ports with tcp listeners.
            let transport = listener.protocol.number();
            if let Some((other, protocol)) = endpoints.insert(
                (listener.address, listener.port, transport),
                (l, listener.protocol),
            ) {
                let at = SocketAddr::new(listener.address, listener.port);
                return Err(if protocol == listener.protocol {
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
                });
            }
            if listener.address.is_unspecified() || listener.address.is_multicast() {
                return Err(format!(
                    "listener '{l}': address {} is not a unicast address",
                    listener.address
                ));
            }
            let Some(group) = groups.get(listener.default_target_group.as_str()) else {
                return Err(format!(
                    "listener '{l}': default_target_group '{}' does not exist; known target groups: {known}",
                    listener.default_target_group,
                ));
            };
            if listener.protocol.is_l7() {
                self.validate_l7_listener(listener, &groups, &known)?;
            } else {
                validate_l4_listener(listener, group)?;
            }
        }
        // An all-ports TCP listener takes every TCP packet to its address in XDP, so the
        // proxy would never see its listener's traffic.
        for listener in self.listeners.iter().filter(|l| l.protocol.is_l7()) {
            if let Some(all) = self.listeners.iter().find(|o| {
                o.port == 0 && o.protocol == Protocol::Tcp && o.address == listener.address
            }) {
                return Err(format!(
                    "listener '{}' ({}) takes every TCP port of {}, so {} listener '{}' on port {} would never see its traffic; give '{}' a port or use another address",
                    all.name,
                    all.protocol.name(),
                    all.address,
                    listener.protocol.name(),
                    listener.name,
                    listener.port,
                    all.name
                ));
            }
        }
        let [min, max] = self.data_plane.nat_port_range;
        if min == 0 || min > max {
            return Err(format!(
                "data_plane.nat_port_range [{min}, {max}] is not a range of ports from 1 to 65535 with the first not above the second"
            ));
        }
        Ok(())
    }
}

impl Model {
    fn validate_l7_listener(
        &self,
        listener: &Listener,
        groups: &BTreeMap<&str, &TargetGroup>,
        known: &str,
    ) -> Result<(), String> {
        let l = &listener.name;
        let protocol = listener.protocol.name();
        if listener.port == 0 {
            return Err(format!(
                "listener '{l}' ({protocol}) needs a port; port 0 (every port) is for tcp and udp listeners"
            ));
        }
        if listener.mode.is_some() {
            return Err(format!(
                "listener '{l}' ({protocol}) has a mode; the L7 proxy opens its own connections to targets, remove 'mode' (it is for tcp and udp listeners)"
            ));
        }
        if listener.maglev_table_size.is_some() {
            return Err(format!(
                "listener '{l}' ({protocol}) has maglev_table_size; {protocol} listeners balance per target group (algorithm), remove it"
            ));
        }
        if let Some(idle) = listener.idle_timeout {
            let secs = idle.as_secs();
            if !l7::IDLE_TIMEOUT_RANGE.contains(&secs) || idle.subsec_nanos() != 0 {
                return Err(format!(
                    "listener '{l}': idle_timeout {idle:?} must be whole seconds from 1 to 4000"
                ));
            }
        }
        if let Some(timeout) = listener.header_read_timeout {
            if timeout < Duration::from_millis(100) || timeout > Duration::from_secs(300) {
                return Err(format!(
                    "listener '{l}': header_read_timeout {timeout:?} must be 100 ms to 300 s"
                ));
            }
        }
        if let Some(bytes) = listener.max_header_bytes {
            if !l7::MAX_HEADER_BYTES_RANGE.contains(&bytes) {
                return Err(format!(
                    "listener '{l}': max_header_bytes {bytes} must be 1024 to 1048576"
                ));
            }
        }
        match listener.protocol {
            Protocol::Https if listener.certificates.is_empty() => {
                return Err(format!(
                    "listener '{l}' (https) needs certificates = [{{ cert = \"/path/cert.pem\", key = \"/path/key.pem\" }}]; the first is the default"
                ));
            }
            Protocol::Http if !listener.certificates.is_empty() => {
                return Err(format!(
                    "listener '{l}' (http) has certificates; use protocol = \"https\" to terminate TLS, or remove them"
                ));
            }
            _ => {}
        }
        for cert in &listener.certificates {
            if cert.cert.as_os_str().is_empty() || cert.key.as_os_str().is_empty() {
                return Err(format!(
                    "listener '{l}': a certificate needs both cert and key (PEM file paths)"
                ));
            }
        }
        let mut priorities = BTreeSet::new();
        for rule in &listener.rules {
            if !priorities.insert(rule.priority) {
                return Err(format!(
                    "listener '{l}': two rules have priority {}; priorities must be unique per listener",
                    rule.priority
                ));
            }
            l7::validate_rule(l, rule, |name| groups.contains_key(name), known)?;
        }
        for name in listener.target_groups() {
            let group = groups[name];
            if group.algorithm == Some(Algorithm::Maglev) {
                return Err(format!(
                    "target group '{name}' has algorithm maglev, which {protocol} listener '{l}' does not use; choose round_robin or least_outstanding_requests"
                ));
            }
        }
        Ok(())
    }
}

/// tcp/udp idle timeouts, seconds (NLB allows 60 to 6000 for tcp; shorter ones serve tests).
const L4_IDLE_TIMEOUT_RANGE: std::ops::RangeInclusive<u64> = 1..=6000;

fn validate_l4_listener(listener: &Listener, group: &TargetGroup) -> Result<(), String> {
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
        ("access_log", listener.access_log.is_some()),
    ];
    if let Some((field, _)) = l7_only.iter().find(|(_, set)| *set) {
        return Err(format!(
            "listener '{l}' ({protocol}) has {field}, which only http and https listeners take; use protocol = \"http\" or \"https\", or remove it"
        ));
    }
    if let Some(idle) = listener.idle_timeout {
        let secs = idle.as_secs();
        if !L4_IDLE_TIMEOUT_RANGE.contains(&secs) || idle.subsec_nanos() != 0 {
            return Err(format!(
                "listener '{l}' ({protocol}): idle_timeout {idle:?} must be whole seconds from 1 to 6000"
            ));
        }
    }
    if let Some(algorithm) = group.algorithm.filter(|a| *a != Algorithm::Maglev) {
        return Err(format!(
            "target group '{}' has algorithm {}, but {protocol} listener '{l}' balances with maglev; remove algorithm (or set \"maglev\")",
            group.name,
            algorithm.name()
        ));
    }
    if group.stickiness.is_some() {
        return Err(format!(
            "target group '{}' has stickiness, which {protocol} listener '{l}' cannot honour (it sees packets, not cookies); use hash_key = \"source_ip\" for L4 stickiness",
            group.name
        ));
    }
    let size = TableSize::new(listener.maglev_table_size())
        .map_err(|e| format!("listener '{l}': maglev_table_size: {e}"))?;
    if group.targets.len() as u64 * u64::from(crate::maglev::MIN_SLOTS_PER_TARGET)
        > u64::from(size.get())
    {
        return Err(format!(
            "listener '{l}': maglev_table_size {} is too small for the {} targets of '{}'; use a prime of at least {} targets x {}",
            size.get(),
            group.targets.len(),
            group.name,
            group.targets.len(),
            crate::maglev::MIN_SLOTS_PER_TARGET
        ));
    }
    if listener.protocol == Protocol::Udp
        && group.health_check.protocol == CheckProtocol::Tcp
        && group.health_check.port.is_none()
    {
        return Err(format!(
            "listener '{l}' is UDP, so target group '{}' needs health_check.port (a TCP or HTTP service on the targets): a TCP check on the UDP traffic port would always fail",
            group.name
        ));
    }
    let mode = listener.mode();
    for target in &group.targets {
        let port = target.port.or(group.port);
        let shown = show_target(target.address, port);
        if target.address.is_ipv4() != listener.address.is_ipv4() && mode != Mode::Tunnel {
            return Err(format!(
                "listener '{l}' ({}) cannot forward to target {shown} of '{}' in {} mode: address families differ (only tunnel mode carries one family inside the other)",
                listener.address,
                group.name,
                mode.name()
            ));
        }
        match mode {
            // A target without a port under an all-ports listener keeps each packet's
            // destination port.
            Mode::Nat => {}
            Mode::Dsr | Mode::Tunnel => {
                if let Some(port) = port {
                    if port != listener.port {
                        return Err(format!(
                            "listener '{l}' uses {} mode, where the packet reaches the target unchanged, so target {shown} of '{}' must use the listener's port {} (or none); port translation needs mode = \"nat\"",
                            mode.name(),
                            group.name,
                            listener.port
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

impl TargetGroup {
    pub fn deregistration_delay(&self) -> Duration {
        Duration::from_secs(self.deregistration_delay)
    }

    /// The group's health check with defaults filled in (validated when the model loaded).
    pub fn health_check(&self) -> HealthCheck {
        self.health_check
            .resolve()
            .expect("validated when the model was loaded")
    }
}

impl Target {
    /// The target's port for a listener: its own, else its group's, else the listener's.
    pub fn port_for(&self, group: &TargetGroup, listener: &Listener) -> u16 {
        self.port.or(group.port).unwrap_or(listener.port)
    }
}

fn show_target(address: IpAddr, port: Option<u16>) -> String {
    match port {
        Some(port) => SocketAddr::new(address, port).to_string(),
        None => address.to_string(),
    }
}

fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [[listener]]
        name = "web"
        address = "192.0.2.10"
        port = 80
        protocol = "tcp"
        default_target_group = "web"

        [[target_group]]
        name = "web"
        port = 3000
        targets = [ { address = "10.0.1.10" }, { address = "10.0.1.11", port = 3001, weight = 2 } ]
    "#;

    fn invalid(text: &str) -> String {
        match Model::parse(text, "sluice.toml") {
            Err(e) => e.to_string(),
            Ok(model) => panic!("accepted: {model:?}"),
        }
    }

    #[test]
    fn defaults_are_aws_like() {
        let model = Model::parse(GOOD, "sluice.toml").unwrap();
        let listener = &model.listeners[0];
        assert_eq!(listener.mode(), Mode::Nat);
        assert_eq!(listener.maglev_table_size(), 65537);
        let group = &model.target_groups[0];
        assert_eq!(group.deregistration_delay, 300);
        assert_eq!(group.hash_key, HashKey::FiveTuple);
        assert_eq!(group.targets[0].weight, 1);
        assert_eq!(group.targets[0].port_for(group, listener), 3000);
        assert_eq!(group.targets[1].port_for(group, listener), 3001);
    }

    #[test]
    fn syntax_errors_name_the_file_and_line() {
        let e = invalid("[[listener]]\nname = \"web\"\nport = \"eighty\"\n");
        assert!(e.starts_with("sluice.toml: "), "{e}");
        assert!(e.contains("line 3"), "{e}");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = invalid(&GOOD.replace("port = 80", "port = 80\nprot = 1"));
        assert!(e.contains("prot"), "{e}");
    }

    #[test]
    fn a_missing_group_is_named_with_the_known_ones() {
        let e = invalid(&GOOD.replace(
            "default_target_group = \"web\"",
            "default_target_group = \"api\"",
        ));
        assert!(
            e.contains("'api' does not exist; known target groups: web"),
            "{e}"
        );
    }

    #[test]
    fn semantic_errors_name_the_line() {
        let e = invalid(&GOOD.replace(
            "default_target_group = \"web\"",
            "default_target_group = \"api\"",
        ));
        assert!(
            e.starts_with("sluice.toml, line 7: listener 'web': default_target_group 'api'"),
            "{e}"
        );
    }

    #[test]
    fn weights_are_1_to_999() {
        for bad in ["0", "1000"] {
            let e = invalid(&GOOD.replace("weight = 2", &format!("weight = {bad}")));
            assert!(
                e.contains(&format!("has weight {bad}; weights are 1 to 999")),
                "{e}"
            );
        }
    }

    #[test]
    fn dsr_and_tunnel_refuse_port_translation() {
        for mode in ["dsr", "tunnel"] {
            let e = invalid(&GOOD.replace(
                "protocol = \"tcp\"",
                &format!("protocol = \"tcp\"\nmode = \"{mode}\""),
            ));
            assert!(e.contains("port translation needs mode = \"nat\""), "{e}");
        }
        let same_port = GOOD
            .replace("protocol = \"tcp\"", "protocol = \"tcp\"\nmode = \"dsr\"")
            .replace("port = 3000", "port = 80")
            .replace(", port = 3001", "");
        Model::parse(&same_port, "sluice.toml").unwrap();
    }

    #[test]
    fn families_must_match_except_in_tunnel_mode() {
        let e = invalid(&GOOD.replace("10.0.1.10", "fd00::10"));
        assert!(e.contains("address families differ"), "{e}");
    }

    #[test]
    fn duplicate_names_endpoints_and_targets_are_refused() {
        let twice = format!("{GOOD}\n[[listener]]\nname = \"web\"\naddress = \"192.0.2.11\"\nport = 80\nprotocol = \"tcp\"\ndefault_target_group = \"web\"\n");
        assert!(invalid(&twice).contains("listener 'web' is defined twice"));
        let same_endpoint = twice.replace(
            "name = \"web\"\naddress = \"192.0.2.11\"",
            "name = \"web2\"\naddress = \"192.0.2.10\"",
        );
        assert!(invalid(&same_endpoint).contains("both listen on 192.0.2.10:80"));
        let e = invalid(&GOOD.replace("\"10.0.1.11\", port = 3001", "\"10.0.1.10\""));
        assert!(e.contains("target 10.0.1.10:3000 is listed twice"), "{e}");
    }

    #[test]
    fn table_size_must_be_prime_and_big_enough() {
        let e = invalid(&GOOD.replace(
            "default_target_group = \"web\"",
            "default_target_group = \"web\"\nmaglev_table_size = 1000",
        ));
        assert!(
            e.contains("maglev_table_size") && e.contains("not prime"),
            "{e}"
        );
        let e = invalid(&GOOD.replace(
            "default_target_group = \"web\"",
            "default_target_group = \"web\"\nmaglev_table_size = 13",
        ));
        assert!(e.contains("maglev_table_size"), "{e}");
    }

    #[test]
    fn health_checks_default_to_elb_and_are_validated_with_the_group_named() {
        let model = Model::parse(GOOD, "sluice.toml").unwrap();
        let check = model.target_groups[0].health_check();
        assert_eq!(check.interval, std::time::Duration::from_secs(30));
        assert_eq!((check.healthy_threshold, check.unhealthy_threshold), (5, 2));
        let e = invalid(&GOOD.replace(
            "port = 3000\n",
            "port = 3000\nhealth_check = { protocol = \"http\", matcher = \"2x0\" }\n",
        ));
        assert!(e.contains("line 12") && e.contains("matcher '2x0'"), "{e}");
        let e = invalid(&GOOD.replace(
            "port = 3000\n",
            "port = 3000\nhealth_check = { interval = 5 }\n",
        ));
        assert!(
            e.contains("target group 'web': health_check: timeout 10s"),
            "{e}"
        );
    }

    #[test]
    fn udp_groups_need_a_health_check_port() {
        let udp = GOOD.replace("protocol = \"tcp\"", "protocol = \"udp\"");
        assert!(invalid(&udp).contains("needs health_check.port"));
        let checked = udp.replace(
            "port = 3000\n",
            "port = 3000\nhealth_check = { port = 8080 }\n",
        );
        Model::parse(&checked, "sluice.toml").unwrap();
    }

    #[test]
    fn nat_port_range_must_be_a_range() {
        let e = invalid(&format!(
            "{GOOD}\n[data_plane]\nnat_port_range = [5000, 4000]\n"
        ));
        assert!(e.contains("nat_port_range"), "{e}");
    }
}
