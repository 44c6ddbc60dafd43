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
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use lb_common::proto::{IPPROTO_TCP, IPPROTO_UDP};
use serde::{Deserialize, Serialize};

use crate::{
    health::{HealthCheck, HealthCheckSpec},
    maglev::TableSize,
};

mod address;
pub mod diff;
pub mod edit;
pub mod export;
pub mod files;
mod l7;
mod lines;
#[cfg(test)]
mod quick_start;
pub mod resolve;
mod target;
mod validate;
pub use address::{parse_listener_address, parse_target_address, TargetAddress};
pub use l7::{
    Action, Algorithm, CertificateFiles, Cidr, FixedResponse, Forward, HeaderCondition,
    QueryCondition, Redirect, Rule, Stickiness, WeightedGroup, CONTENT_TYPES,
    DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_HEADER_BYTES,
};
pub use target::{TargetKey, TargetView};
pub use validate::{Invalid, Subject};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: String, message: String },
    /// Parsed, but breaks a rule; `line` is where its subject is in the file.
    #[error("{}: {error}", at_line(path, *line))]
    Invalid {
        path: String,
        line: Option<usize>,
        error: Invalid,
    },
}

fn at_line(path: &str, line: Option<usize>) -> String {
    match line {
        Some(line) => format!("{path}, line {line}"),
        None => path.to_string(),
    }
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
            Protocol::Tcp | Protocol::Http | Protocol::Https => IPPROTO_TCP,
            Protocol::Udp => IPPROTO_UDP,
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

/// What a node does with a listener's address when no target of the listener's groups is
/// healthy (`when_unhealthy`): keep announcing it and send to every target (ELB's fail open),
/// or withdraw it from the routers, so that they send its clients to other nodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenUnhealthy {
    #[default]
    FailOpen,
    Withdraw,
}

impl WhenUnhealthy {
    /// As in the configuration.
    pub const fn name(self) -> &'static str {
        match self {
            WhenUnhealthy::FailOpen => "fail_open",
            WhenUnhealthy::Withdraw => "withdraw",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HashKey {
    #[default]
    FiveTuple,
    SourceIp,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub name: String,
    /// tcp/udp: the virtual IP. http/https: the address to listen on; 0.0.0.0 or :: for
    /// every address of the host.
    #[serde(deserialize_with = "address::listener_address")]
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
    #[serde(
        default,
        deserialize_with = "crate::health::spec::optional_duration",
        serialize_with = "crate::health::spec::serialize_optional_duration"
    )]
    pub idle_timeout: Option<Duration>,
    /// http/https only: a request head must arrive within this (slowloris); else 408.
    /// Default 10 s.
    #[serde(
        default,
        deserialize_with = "crate::health::spec::optional_duration",
        serialize_with = "crate::health::spec::serialize_optional_duration"
    )]
    pub header_read_timeout: Option<Duration>,
    /// http/https only: the largest request head (request line and headers); larger gets 431.
    /// Default 16384.
    #[serde(default)]
    pub max_header_bytes: Option<usize>,
    /// http/https only: client connections open at once on this listener; more are accepted
    /// and reset at once (RejectedConnectionCount). Default: only the global limit
    /// (`sluice run --max-connections`).
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// https only: at least one; the first is the default when SNI matches none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<CertificateFiles>,
    /// http/https only: append access log lines to this file instead of the log target
    /// `sluice::access`.
    #[serde(default)]
    pub access_log: Option<PathBuf>,
    /// http/https only: evaluated by ascending priority; no match: the default target group.
    #[serde(default, rename = "rule", skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
    /// With `sluice run --bird-routes`: what happens to the announcement of the listener's
    /// address when none of its targets is healthy. Default `fail_open`.
    #[serde(default)]
    pub when_unhealthy: Option<WhenUnhealthy>,
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
            max_connections: None,
            certificates: Vec::new(),
            access_log: None,
            rules: Vec::new(),
            when_unhealthy: None,
        }
    }

    pub fn when_unhealthy(&self) -> WhenUnhealthy {
        self.when_unhealthy.unwrap_or_default()
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

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
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
    /// http/https listeners only: targets ejected after consecutive failures of the proxy's
    /// own requests (see `proxy::outlier`).
    #[serde(default)]
    pub outlier_detection: OutlierDetection,
}

fn default_deregistration_delay() -> u64 {
    300
}

/// `outlier_detection = { consecutive_errors = 5 }` (0 turns it off). Ejections last one
/// health check interval, doubling while a target keeps failing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierDetection {
    #[serde(default = "default_consecutive_errors")]
    pub consecutive_errors: u32,
}

/// Envoy's default for consecutive 5XX.
fn default_consecutive_errors() -> u32 {
    5
}

impl Default for OutlierDetection {
    fn default() -> OutlierDetection {
        OutlierDetection {
            consecutive_errors: default_consecutive_errors(),
        }
    }
}

/// A target: an IP address, or a host name (`address = "app1"`, a compose service name)
/// resolved when the model is loaded and again while it runs (`resolve`). Written back as it
/// was given: the host name if there is one (`sluice config show`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "address::TargetSpec", into = "address::TargetSpec")]
pub struct Target {
    /// The address given, or the one `host` resolved to.
    pub address: IpAddr,
    /// The host name the model gives, if it gives one rather than an address.
    pub host: Option<String>,
    pub port: Option<u16>,
    pub weight: u32,
}

impl Target {
    /// A target at an IP address.
    pub fn at(address: IpAddr, port: Option<u16>, weight: u32) -> Target {
        Target {
            address,
            host: None,
            port,
            weight,
        }
    }

    /// As the model names it: `app1 (10.0.0.5)` for a host name, else the address.
    pub fn shown(&self) -> String {
        match &self.host {
            Some(host) => format!("{host} ({})", self.address),
            None => self.address.to_string(),
        }
    }
}

/// Data-plane settings (`[data_plane]`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
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
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    #[serde(default, rename = "listener")]
    pub listeners: Vec<Listener>,
    #[serde(default, rename = "target_group")]
    pub target_groups: Vec<TargetGroup>,
    #[serde(default)]
    pub data_plane: DataPlane,
    #[serde(default)]
    pub resolver: resolve::ResolverSettings,
}

impl Model {
    /// Reads and validates a model file.
    pub fn load(path: &Path) -> Result<Model, ModelError> {
        let shown = path.display().to_string();
        let text = files::read_regular_text(path).map_err(|source| ModelError::Read {
            path: shown.clone(),
            source,
        })?;
        Model::parse(&text, &shown)
    }

    /// Parses and validates model text; `origin` names it in errors. Host-name targets are
    /// resolved with the system's resolver (a model without them asks nothing).
    pub fn parse(text: &str, origin: &str) -> Result<Model, ModelError> {
        Model::parse_with(text, origin, &resolve::SystemResolver)
    }

    /// [`Model::parse`] with host names resolved by `resolver`.
    pub fn parse_with(
        text: &str,
        origin: &str,
        resolver: &dyn resolve::Resolve,
    ) -> Result<Model, ModelError> {
        let mut model: Model = toml::from_str(text).map_err(|e| ModelError::Syntax {
            path: origin.to_string(),
            message: one_line(&e.to_string()),
        })?;
        let invalid = |error: Invalid| ModelError::Invalid {
            path: origin.to_string(),
            line: lines::locate(text, &error),
            error,
        };
        let names = model.host_names();
        if !names.is_empty() {
            let answers = resolver.resolve(&names);
            model.fill_addresses(&answers).map_err(|unresolved| {
                let group = &model.target_groups[unresolved.group].name;
                invalid(Subject::Target { group: unresolved.group, index: unresolved.index }.invalid(
                    Some("address"),
                    format!(
                        "target group '{group}': target {} does not resolve ({}); check the name (compose service names resolve inside their compose network, and only while the service runs) or give an IP address",
                        unresolved.host, unresolved.why
                    ),
                ))
            })?;
        }
        model.validate().map_err(invalid)?;
        Ok(model)
    }

    /// Reads and validates a model file, resolving host names with `resolver`.
    pub fn load_with(path: &Path, resolver: &dyn resolve::Resolve) -> Result<Model, ModelError> {
        let shown = path.display().to_string();
        let text = files::read_regular_text(path).map_err(|source| ModelError::Read {
            path: shown.clone(),
            source,
        })?;
        Model::parse_with(&text, &shown, resolver)
    }

    /// http/https listeners on an address that is not among `held` (the host's addresses):
    /// the proxy binds them anyway (IP_FREEBIND) but gets no traffic until the address is
    /// added. One sentence each, with the fix.
    pub fn l7_listeners_not_held(&self, held: &[IpAddr]) -> Vec<String> {
        self.listeners
            .iter()
            .filter(|l| {
                l.protocol.is_l7() && !l.address.is_unspecified() && !held.contains(&l.address)
            })
            .map(|l| {
                let prefix = if l.address.is_ipv4() { 32 } else { 128 };
                format!(
                    "listener '{}' ({}) listens on {}, which no interface of this host holds: it gets no traffic until the address is added (e.g. `ip addr add {}/{prefix} dev IF`), or use address = \"{}\" for every address",
                    l.name,
                    l.protocol.name(),
                    l.address,
                    l.address,
                    if l.address.is_ipv4() { "0.0.0.0" } else { "::" }
                )
            })
            .collect()
    }

    /// Whether any listener is served by XDP (tcp/udp), which needs `sluice run --iface`.
    pub fn has_l4_listeners(&self) -> bool {
        self.listeners.iter().any(|l| !l.protocol.is_l7())
    }

    /// The listeners XDP serves, for sentences: `'vip' (tcp), 'dns' (udp)`; None if none.
    pub fn l4_listeners_shown(&self) -> Option<String> {
        let shown: Vec<String> = self
            .listeners
            .iter()
            .filter(|l| !l.protocol.is_l7())
            .map(|l| format!("'{}' ({})", l.name, l.protocol.name()))
            .collect();
        (!shown.is_empty()).then(|| shown.join(", "))
    }

    pub fn target_group(&self, name: &str) -> Option<&TargetGroup> {
        self.target_groups.iter().find(|g| g.name == name)
    }
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
    fn a_target_that_is_its_own_http_listener_is_refused() {
        let text = r#"
            [[listener]]
            name = "web"
            address = "192.0.2.10"
            port = 80
            protocol = "http"
            default_target_group = "web"

            [[target_group]]
            name = "web"
            targets = [ { address = "10.0.1.10", port = 8080 }, { address = "192.0.2.10" } ]
        "#;
        let e = invalid(text);
        assert!(
            e.contains(
                "line 11: target group 'web': target 192.0.2.10:80 is listener 'web' itself"
            ),
            "{e}"
        );
    }

    #[test]
    fn redirect_hosts_cannot_carry_what_breaks_a_location() {
        for (host, c) in [
            ("evil.example\\r\\nX-Injected: 1", "'\\r'"),
            ("a b", "' '"),
            ("a/b", "'/'"),
        ] {
            let text = format!(
                r#"
                [[listener]]
                name = "web"
                address = "192.0.2.10"
                port = 80
                protocol = "http"
                default_target_group = "web"

                [[listener.rule]]
                priority = 1
                path = ["/old"]
                action = {{ type = "redirect", status = 301, host = "{host}" }}

                [[target_group]]
                name = "web"
                targets = [ {{ address = "10.0.1.10", port = 8080 }} ]
                "#
            );
            let e = invalid(&text);
            assert!(e.contains(&format!("contains {c}")), "{host}: {e}");
        }
        // Variables and plain names are fine.
        let ok = GOOD_HTTP_REDIRECT.replace("HOST", "#{host}.example.com");
        Model::parse(&ok, "sluice.toml").unwrap();
    }

    const GOOD_HTTP_REDIRECT: &str = r#"
        [[listener]]
        name = "web"
        address = "192.0.2.10"
        port = 80
        protocol = "http"
        default_target_group = "web"

        [[listener.rule]]
        priority = 1
        path = ["/old"]
        action = { type = "redirect", status = 301, host = "HOST" }

        [[target_group]]
        name = "web"
        targets = [ { address = "10.0.1.10", port = 8080 } ]
    "#;

    #[test]
    fn a_rule_error_points_at_that_rule_and_carries_its_subject() {
        let text = r#"[[listener]]
name = "web"
address = "192.0.2.10"
port = 80
protocol = "http"
default_target_group = "web"

[[listener.rule]]
priority = 1
path = ["/a/*"]
action = { type = "forward", target_groups = [{ name = "web" }] }

[[listener.rule]]
priority = 2
path = ["no-slash"]
action = { type = "forward", target_groups = [{ name = "web" }] }

[[target_group]]
name = "web"
port = 3000
targets = [ { address = "10.0.1.10" } ]
"#;
        let Err(ModelError::Invalid { line, error, .. }) = Model::parse(text, "sluice.toml") else {
            panic!("accepted");
        };
        assert_eq!(
            error.subject,
            Subject::Rule {
                listener: 0,
                index: 1
            }
        );
        assert_eq!(line, Some(14), "the second rule's first line");
        assert!(error.message.contains("path 'no-slash'"), "{error}");
        // Rewording a message cannot lose the line: it comes from the subject.
        let reworded = Invalid {
            message: "something else".into(),
            ..error
        };
        assert_eq!(lines::locate(text, &reworded), Some(14));
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
    fn http_listeners_may_listen_on_every_address_and_l4_ones_are_told_why_not() {
        let http = GOOD
            .replace("protocol = \"tcp\"", "protocol = \"http\"")
            .replace("192.0.2.10", "0.0.0.0");
        Model::parse(&http, "sluice.toml").unwrap();
        Model::parse(
            &http.replace("0.0.0.0", "::").replace("10.0.1.1", "fd00::1"),
            "t",
        )
        .unwrap();
        let e = invalid(&GOOD.replace("192.0.2.10", "0.0.0.0"));
        assert!(
            e.contains("line 4: listener 'web' (tcp): address 0.0.0.0 is not an address packets are sent to; a tcp/udp listener takes its virtual IP")
                && e.contains("http/https listeners may use 0.0.0.0"),
            "{e}"
        );
        // Every address includes loopback: a target there on the same port is the proxy.
        let e = invalid(&http.replace(
            "{ address = \"10.0.1.10\" }",
            "{ address = \"127.0.0.1\", port = 80 }",
        ));
        assert!(
            e.contains("target 127.0.0.1:80 is listener 'web' itself"),
            "{e}"
        );
    }

    #[test]
    fn http_listeners_on_addresses_the_host_lacks_are_named() {
        let http = GOOD.replace("protocol = \"tcp\"", "protocol = \"http\"");
        let model = Model::parse(&http, "t").unwrap();
        let held: Vec<IpAddr> = vec!["127.0.0.1".parse().unwrap()];
        let warnings = model.l7_listeners_not_held(&held);
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].starts_with("listener 'web' (http) listens on 192.0.2.10, which no interface of this host holds")
                && warnings[0].contains("ip addr add 192.0.2.10/32 dev IF"),
            "{warnings:?}"
        );
        assert!(model
            .l7_listeners_not_held(&["192.0.2.10".parse().unwrap()])
            .is_empty());
        let every = Model::parse(&http.replace("192.0.2.10", "0.0.0.0"), "t").unwrap();
        assert!(every.l7_listeners_not_held(&held).is_empty());
        // tcp listeners' virtual IPs are XDP's, which the host need not hold.
        assert!(Model::parse(GOOD, "t")
            .unwrap()
            .l7_listeners_not_held(&held)
            .is_empty());
    }

    #[test]
    fn a_listener_address_with_a_port_says_to_use_port() {
        let e = invalid(&GOOD.replace("\"192.0.2.10\"", "\"192.0.2.10:80\""));
        assert!(
            e.starts_with("sluice.toml: TOML parse error at line 4"),
            "{e}"
        );
        assert!(
            e.contains("listener address '192.0.2.10:80' has a port; write address = \"192.0.2.10\" and port = 80"),
            "{e}"
        );
    }

    #[test]
    fn a_target_may_give_its_port_in_the_address() {
        let model = Model::parse(
            &GOOD.replace(
                "{ address = \"10.0.1.10\" }",
                "{ address = \"10.0.1.10:3005\" }",
            ),
            "t",
        )
        .unwrap();
        assert_eq!(model.target_groups[0].targets[0].port, Some(3005));
        let e = invalid(&GOOD.replace(
            "\"10.0.1.11\", port = 3001",
            "\"10.0.1.11:3002\", port = 3001",
        ));
        assert!(
            e.contains("names port 3002 but port = 3001; give the port once"),
            "{e}"
        );
        let e = invalid(&GOOD.replace("\"10.0.1.10\"", "\"10.0.1.10:http\""));
        assert!(
            e.contains("target address '10.0.1.10:http': 'http' is not a port"),
            "{e}"
        );
    }

    #[test]
    fn nat_port_range_must_be_a_range() {
        let e = invalid(&format!(
            "{GOOD}\n[data_plane]\nnat_port_range = [5000, 4000]\n"
        ));
        assert!(e.contains("nat_port_range"), "{e}");
    }
}
