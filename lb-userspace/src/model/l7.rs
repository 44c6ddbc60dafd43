//! The HTTP/HTTPS side of the model: listener rules (conditions and actions), target group
//! algorithms and stickiness, certificates, and their validation. The proxy compiles these
//! into its routing snapshot (`proxy::snapshot`).

use std::{fmt, net::IpAddr, path::PathBuf, str::FromStr, time::Duration};

use serde::{de, Deserialize, Deserializer, Serialize};

/// Rule priorities, as in ALB.
pub const PRIORITIES: std::ops::RangeInclusive<u32> = 1..=50_000;
/// Seconds; ALB's range for idle timeouts.
pub const IDLE_TIMEOUT_RANGE: std::ops::RangeInclusive<u64> = 1..=4000;
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;
pub const MAX_HEADER_BYTES_RANGE: std::ops::RangeInclusive<usize> = 1024..=1024 * 1024;
pub const MAX_CONNECTIONS_RANGE: std::ops::RangeInclusive<usize> = 1..=10_000_000;
/// Stickiness durations in seconds: 1 s to 7 days (ALB).
pub const STICKINESS_DURATION: std::ops::RangeInclusive<u64> = 1..=604_800;
pub const DEFAULT_STICKINESS_DURATION: u64 = 86_400;
/// Patterns and values longer than this are refused (ALB: 128 characters).
const MAX_PATTERN_LEN: usize = 128;
/// Target groups one forward action may name (ALB: 5).
const MAX_FORWARD_GROUPS: usize = 5;
/// Fixed-response bodies (ALB: 1024 bytes).
const MAX_FIXED_BODY: usize = 1024;
/// Fixed-response content types (ALB's list).
pub const CONTENT_TYPES: [&str; 5] = [
    "text/plain",
    "text/css",
    "text/html",
    "application/javascript",
    "application/json",
];
/// Cookie names the proxy sets itself; an application cookie may not use them.
pub const RESERVED_COOKIE_PREFIX: &str = "SLUICE";

/// One certificate of an https listener: PEM files, as in the model's
/// `certificates = [{ cert = "...", key = "..." }]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFiles {
    /// The certificate chain, the server's own certificate first, then intermediates.
    pub cert: PathBuf,
    /// The private key: PKCS#8 (`PRIVATE KEY`), PKCS#1 (`RSA PRIVATE KEY`) or SEC1
    /// (`EC PRIVATE KEY`).
    pub key: PathBuf,
}

/// `[[listener.rule]]`: every condition present must match (AND); within one condition any
/// value matches (OR).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub priority: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub path: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub method: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_ip: Vec<Cidr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub header: Vec<HeaderCondition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query: Vec<QueryCondition>,
    pub action: Action,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderCondition {
    pub name: String,
    pub values: Vec<String>,
}

/// A query-string pair; without `key`, any parameter whose value matches.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QueryCondition {
    pub key: Option<String>,
    pub value: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Action {
    Forward(Forward),
    Redirect(Redirect),
    FixedResponse(FixedResponse),
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Forward {
    pub target_groups: Vec<WeightedGroup>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedGroup {
    pub name: String,
    /// 0 to 999 (ALB); at least one group of the action must weigh more than 0.
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// Each part defaults to the request's own (`#{protocol}`, `#{host}`, `#{port}`, `/#{path}`,
/// `#{query}`); templates may combine literal text and those variables.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    #[serde(default = "moved_permanently")]
    pub status: u16,
    pub protocol: Option<String>,
    pub host: Option<String>,
    #[serde(default, deserialize_with = "optional_port")]
    pub port: Option<String>,
    pub path: Option<String>,
    pub query: Option<String>,
}

fn moved_permanently() -> u16 {
    301
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FixedResponse {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: Option<String>,
}

/// How an L7 target group picks a target. L4 listeners always use Maglev.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Smooth weighted round robin.
    #[default]
    RoundRobin,
    LeastOutstandingRequests,
    Maglev,
}

impl Algorithm {
    pub const fn name(self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "round_robin",
            Algorithm::LeastOutstandingRequests => "least_outstanding_requests",
            Algorithm::Maglev => "maglev",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Stickiness {
    /// The proxy's own cookie, `SLUICE` (and `SLUICECORS` on https).
    LbCookie {
        #[serde(default = "default_duration")]
        duration: u64,
    },
    /// Follows the application's cookie: while requests carry `cookie_name`, they go to the
    /// target that set it (tracked in the proxy's `SLUICEAPP` cookie).
    AppCookie {
        cookie_name: String,
        #[serde(default = "default_duration")]
        duration: u64,
    },
}

fn default_duration() -> u64 {
    DEFAULT_STICKINESS_DURATION
}

impl Stickiness {
    pub fn duration(&self) -> Duration {
        match self {
            Stickiness::LbCookie { duration } | Stickiness::AppCookie { duration, .. } => {
                Duration::from_secs(*duration)
            }
        }
    }
}

/// An address prefix, `10.0.0.0/8` or `fd00::/8`; a bare address is one host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// Whether `ip` is inside; IPv4-mapped IPv6 peers count as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                mask(u32::from(ip).into(), 32, self.prefix) == u32::from(net) as u128
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                mask(u128::from(ip), 128, self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }
}

fn mask(bits: u128, width: u8, prefix: u8) -> u128 {
    if prefix == 0 {
        return 0;
    }
    let keep = u128::MAX << (width - prefix);
    let width_mask = if width == 128 {
        u128::MAX
    } else {
        (1u128 << width) - 1
    };
    bits & keep & width_mask
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| {
            format!("'{text}' is not an address or prefix like 10.0.0.0/8 or fd00::/8")
        })?;
        let width = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => width,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= width)
                .ok_or_else(|| format!("'{text}': the prefix length must be 0 to {width}"))?,
        };
        let bits = match addr {
            IpAddr::V4(a) => u128::from(u32::from(a)),
            IpAddr::V6(a) => u128::from(a),
        };
        let network = mask(bits, width, prefix);
        if network != bits {
            let shown: IpAddr = match addr {
                IpAddr::V4(_) => std::net::Ipv4Addr::from(network as u32).into(),
                IpAddr::V6(_) => std::net::Ipv6Addr::from(network).into(),
            };
            return Err(format!(
                "'{text}' has host bits set; did you mean {shown}/{prefix}?"
            ));
        }
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Cidr, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(de::Error::custom)
    }
}

/// A redirect port: a number or a template such as `"#{port}"`.
fn optional_port<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Port {
        Number(u16),
        Text(String),
    }
    Ok(Some(match Port::deserialize(deserializer)? {
        Port::Number(n) => n.to_string(),
        Port::Text(t) => t,
    }))
}

/// The variables redirect templates may use.
pub const REDIRECT_VARIABLES: [&str; 5] =
    ["#{protocol}", "#{host}", "#{port}", "#{path}", "#{query}"];

/// Checks one rule; `known_group` says whether a target group exists, `groups` lists them
/// for the message.
pub(crate) fn validate_rule(
    listener: &str,
    rule: &Rule,
    known_group: impl Fn(&str) -> bool,
    groups: &str,
) -> Result<(), String> {
    let at = format!("listener '{listener}': rule {}", rule.priority);
    if !PRIORITIES.contains(&rule.priority) {
        return Err(format!(
            "listener '{listener}': rule priority {} is outside 1 to 50000",
            rule.priority
        ));
    }
    if rule.host.is_empty()
        && rule.path.is_empty()
        && rule.method.is_empty()
        && rule.source_ip.is_empty()
        && rule.header.is_empty()
        && rule.query.is_empty()
    {
        return Err(format!(
            "{at} has no condition; give at least one of host, path, method, source_ip, header, query (requests that match no rule go to default_target_group)"
        ));
    }
    for host in &rule.host {
        pattern(&at, "host", host)?;
        if let Some(c) = host
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '*' | '?' | '_')))
        {
            return Err(format!(
                "{at}: host '{host}' contains '{c}'; host patterns use letters, digits, '-', '.', '*' and '?' (no port, no scheme)"
            ));
        }
    }
    for path in &rule.path {
        pattern(&at, "path", path)?;
        if !path.starts_with(['/', '*']) {
            return Err(format!(
                "{at}: path '{path}' must start with '/' (or a wildcard), e.g. \"/v1/*\""
            ));
        }
    }
    for method in &rule.method {
        pattern(&at, "method", method)?;
        if !method
            .chars()
            .all(|c| c.is_ascii_uppercase() || c == '-' || c == '_')
        {
            return Err(format!(
                "{at}: method '{method}' must be upper case letters, '-' or '_' (methods are case-sensitive: \"GET\", not \"get\")"
            ));
        }
    }
    for header in &rule.header {
        if header.name.is_empty()
            || header.name.len() > 40
            || !header.name.bytes().all(is_token_byte)
        {
            return Err(format!(
                "{at}: header name '{}' is not a valid HTTP header name (letters, digits and !#$%&'*+-.^_`|~, up to 40)",
                header.name
            ));
        }
        if header.values.is_empty() {
            return Err(format!(
                "{at}: header '{}' has no values; list at least one (\"*\" matches any)",
                header.name
            ));
        }
        for value in &header.values {
            pattern(&at, "header value", value)?;
        }
    }
    for query in &rule.query {
        if let Some(key) = &query.key {
            pattern(&at, "query key", key)?;
        }
        if query.value.is_empty() {
            return Err(format!(
                "{at}: a query condition needs a value (\"*\" matches any)"
            ));
        }
        pattern(&at, "query value", &query.value)?;
    }
    validate_action(&at, &rule.action, known_group, groups)
}

pub(crate) fn validate_action(
    at: &str,
    action: &Action,
    known_group: impl Fn(&str) -> bool,
    groups: &str,
) -> Result<(), String> {
    match action {
        Action::Forward(forward) => {
            if forward.target_groups.is_empty() || forward.target_groups.len() > MAX_FORWARD_GROUPS
            {
                return Err(format!(
                    "{at}: a forward action names 1 to {MAX_FORWARD_GROUPS} target groups, not {}",
                    forward.target_groups.len()
                ));
            }
            for (i, group) in forward.target_groups.iter().enumerate() {
                if !known_group(&group.name) {
                    return Err(format!(
                        "{at}: target group '{}' does not exist; known target groups: {groups}",
                        group.name
                    ));
                }
                if group.weight > 999 {
                    return Err(format!(
                        "{at}: target group '{}' has weight {}; weights are 0 to 999",
                        group.name, group.weight
                    ));
                }
                if forward.target_groups[..i]
                    .iter()
                    .any(|g| g.name == group.name)
                {
                    return Err(format!(
                        "{at}: target group '{}' is named twice in one forward action",
                        group.name
                    ));
                }
            }
            if forward.target_groups.iter().all(|g| g.weight == 0) {
                return Err(format!(
                    "{at}: every target group of the forward action has weight 0; give one a weight above 0"
                ));
            }
        }
        Action::Redirect(redirect) => {
            if !matches!(redirect.status, 301 | 302) {
                return Err(format!(
                    "{at}: redirect status {} must be 301 (permanent) or 302 (found)",
                    redirect.status
                ));
            }
            if let Some(protocol) = &redirect.protocol {
                if !["http", "https", "#{protocol}"]
                    .contains(&protocol.to_ascii_lowercase().as_str())
                {
                    return Err(format!(
                        "{at}: redirect protocol '{protocol}' must be \"http\", \"https\" or \"#{{protocol}}\""
                    ));
                }
            }
            for (field, value) in [
                ("host", &redirect.host),
                ("port", &redirect.port),
                ("path", &redirect.path),
                ("query", &redirect.query),
            ] {
                let Some(value) = value else { continue };
                template(at, field, value)?;
            }
            if let Some(host) = &redirect.host {
                // What is left once the variables are taken out must be host characters:
                // anything else (CR, LF, spaces, '/', '@') would make a broken or hostile
                // Location.
                let literal = REDIRECT_VARIABLES
                    .iter()
                    .fold(host.clone(), |text, variable| text.replace(variable, ""));
                if let Some(c) = literal
                    .chars()
                    .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')))
                {
                    return Err(format!(
                        "{at}: redirect host '{}' contains {c:?}; a host has letters, digits, '-', '.' and '_' (and the #{{host}} variable)",
                        host.escape_debug()
                    ));
                }
            }
            if let Some(port) = &redirect.port {
                if !port.contains("#{") && !port.parse::<u16>().is_ok_and(|p| p > 0) {
                    return Err(format!(
                        "{at}: redirect port '{port}' must be 1 to 65535 or \"#{{port}}\""
                    ));
                }
            }
            if let Some(path) = &redirect.path {
                if !path.starts_with('/') {
                    return Err(format!(
                        "{at}: redirect path '{path}' must start with '/' (the default is \"/#{{path}}\")"
                    ));
                }
            }
            if let Some(query) = &redirect.query {
                if query.starts_with('?') {
                    return Err(format!(
                        "{at}: redirect query '{query}' must not start with '?' (the default is \"#{{query}}\")"
                    ));
                }
            }
            if redirect.host.as_deref().unwrap_or("#{host}").eq("#{host}")
                && redirect.port.as_deref().unwrap_or("#{port}").eq("#{port}")
                && redirect
                    .path
                    .as_deref()
                    .unwrap_or("/#{path}")
                    .eq("/#{path}")
                && redirect
                    .query
                    .as_deref()
                    .unwrap_or("#{query}")
                    .eq("#{query}")
                && redirect
                    .protocol
                    .as_deref()
                    .is_none_or(|p| p.eq_ignore_ascii_case("#{protocol}"))
            {
                return Err(format!(
                    "{at}: the redirect changes nothing, so it would loop; set at least one of protocol, host, port, path, query"
                ));
            }
        }
        Action::FixedResponse(fixed) => {
            if !(200..=299).contains(&fixed.status) && !(400..=599).contains(&fixed.status) {
                return Err(format!(
                    "{at}: fixed_response status {} must be 2XX, 4XX or 5XX",
                    fixed.status
                ));
            }
            if let Some(content_type) = &fixed.content_type {
                if !CONTENT_TYPES.contains(&content_type.as_str()) {
                    return Err(format!(
                        "{at}: fixed_response content_type '{content_type}' is not one of {}",
                        CONTENT_TYPES.join(", ")
                    ));
                }
            }
            if let Some(body) = &fixed.body {
                if body.len() > MAX_FIXED_BODY {
                    return Err(format!(
                        "{at}: fixed_response body is {} bytes; at most {MAX_FIXED_BODY}",
                        body.len()
                    ));
                }
            }
        }
    }
    Ok(())
}

pub(crate) fn validate_stickiness(group: &str, stickiness: &Stickiness) -> Result<(), String> {
    let duration = stickiness.duration().as_secs();
    if !STICKINESS_DURATION.contains(&duration) {
        return Err(format!(
            "target group '{group}': stickiness duration {duration} is outside 1 to 604800 seconds (7 days)"
        ));
    }
    if let Stickiness::AppCookie { cookie_name, .. } = stickiness {
        if cookie_name.is_empty() || !cookie_name.bytes().all(is_token_byte) {
            return Err(format!(
                "target group '{group}': stickiness cookie_name '{cookie_name}' is not a valid cookie name"
            ));
        }
        if cookie_name
            .to_ascii_uppercase()
            .starts_with(RESERVED_COOKIE_PREFIX)
        {
            return Err(format!(
                "target group '{group}': stickiness cookie_name '{cookie_name}' starts with {RESERVED_COOKIE_PREFIX}, which sluice's own cookies use; choose another name"
            ));
        }
    }
    Ok(())
}

fn pattern(at: &str, what: &str, value: &str) -> Result<(), String> {
    if value.is_empty() || value.len() > MAX_PATTERN_LEN {
        return Err(format!(
            "{at}: {what} '{value}' must be 1 to {MAX_PATTERN_LEN} characters"
        ));
    }
    Ok(())
}

fn template(at: &str, field: &str, value: &str) -> Result<(), String> {
    let mut rest = value;
    while let Some(start) = rest.find("#{") {
        let Some(end) = rest[start..].find('}') else {
            return Err(format!(
                "{at}: redirect {field} '{value}' has an unclosed '#{{'"
            ));
        };
        let variable = &rest[start..start + end + 1];
        if !REDIRECT_VARIABLES.contains(&variable) {
            return Err(format!(
                "{at}: redirect {field} '{value}' uses {variable}; the variables are {}",
                REDIRECT_VARIABLES.join(", ")
            ));
        }
        rest = &rest[start + end + 1..];
    }
    if value.is_empty() && field != "query" {
        return Err(format!("{at}: redirect {field} is empty"));
    }
    Ok(())
}

/// RFC 9110 token characters (header and cookie names).
pub(crate) fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Model, Protocol};

    const HTTP: &str = r#"
        [[listener]]
        name = "web"
        address = "192.0.2.10"
        port = 80
        protocol = "http"
        default_target_group = "www"
        idle_timeout = 30

        [[listener.rule]]
        priority = 10
        host = ["api.example.com", "*.api.example.com"]
        path = ["/v1/*"]
        method = ["GET", "POST"]
        source_ip = ["10.0.0.0/8", "fd00::/8"]
        header = [{ name = "x-env", values = ["beta*"] }]
        query = [{ key = "version", value = "2" }, { value = "x" }]
        action = { type = "forward", target_groups = [{ name = "api", weight = 3 }, { name = "www" }] }

        [[listener.rule]]
        priority = 20
        path = ["/old/*"]
        action = { type = "redirect", status = 302, protocol = "https", port = 443, path = "/new/#{path}" }

        [[listener.rule]]
        priority = 30
        path = ["/down"]
        action = { type = "fixed_response", status = 503, content_type = "text/plain", body = "down" }

        [[target_group]]
        name = "www"
        port = 3000
        stickiness = { type = "lb_cookie" }
        targets = [ { address = "10.0.1.10" } ]

        [[target_group]]
        name = "api"
        algorithm = "least_outstanding_requests"
        stickiness = { type = "app_cookie", cookie_name = "SESSIONID", duration = 600 }
        targets = [ { address = "fd00::10", port = 8080 } ]
    "#;

    fn invalid(text: &str) -> String {
        match Model::parse(text, "sluice.toml") {
            Err(e) => e.to_string(),
            Ok(model) => panic!("accepted: {model:?}"),
        }
    }

    #[test]
    fn an_http_listener_with_rules_parses_with_defaults() {
        let model = Model::parse(HTTP, "sluice.toml").unwrap();
        let web = &model.listeners[0];
        assert_eq!(web.protocol, Protocol::Http);
        assert_eq!(web.idle_timeout(), Duration::from_secs(30));
        assert_eq!(web.header_read_timeout(), DEFAULT_HEADER_READ_TIMEOUT);
        assert_eq!(web.max_header_bytes(), 16384);
        assert_eq!(web.rules.len(), 3);
        let rule = &web.rules[0];
        assert_eq!(rule.source_ip[1].to_string(), "fd00::/8");
        assert_eq!(rule.query[1].key, None);
        let Action::Forward(forward) = &rule.action else {
            panic!("{rule:?}")
        };
        assert_eq!(forward.target_groups[1].weight, 1);
        let Action::Redirect(redirect) = &web.rules[1].action else {
            panic!()
        };
        assert_eq!(redirect.port.as_deref(), Some("443"));
        assert_eq!(redirect.host, None);
        let groups: Vec<&str> = web.target_groups().collect();
        assert_eq!(groups, ["www", "api", "www"]);
        let www = model.target_group("www").unwrap();
        assert_eq!(
            www.stickiness,
            Some(Stickiness::LbCookie { duration: 86400 })
        );
        assert_eq!(www.algorithm, None);
        // An L7 listener reaches targets of either family.
        assert!(model.target_group("api").unwrap().targets[0]
            .address
            .is_ipv6());
    }

    #[test]
    fn l4_only_and_l7_only_fields_are_refused_on_the_other_kind() {
        let e = invalid(&HTTP.replace("idle_timeout = 30", "mode = \"nat\""));
        assert!(e.contains("listener 'web' (http) has a mode"), "{e}");
        let e = invalid(&HTTP.replace("idle_timeout = 30", "maglev_table_size = 251"));
        assert!(e.contains("has maglev_table_size"), "{e}");
        let tcp = HTTP.replace("protocol = \"http\"", "protocol = \"tcp\"");
        let e = invalid(&tcp);
        assert!(
            e.contains("listener 'web' (tcp) has rule, which only http and https listeners take"),
            "{e}"
        );
        let e = invalid(&HTTP.replacen("port = 80", "port = 0", 1));
        assert!(e.contains("needs a port"), "{e}");
    }

    #[test]
    fn l4_groups_refuse_l7_balancing_settings() {
        let text = r#"
            [[listener]]
            name = "tcp"
            address = "192.0.2.10"
            port = 81
            protocol = "tcp"
            default_target_group = "g"
            [[target_group]]
            name = "g"
            targets = [ { address = "10.0.1.10" } ]
        "#;
        Model::parse(text, "t").unwrap();
        let e = invalid(&text.replace(
            "name = \"g\"\n",
            "name = \"g\"\nalgorithm = \"round_robin\"\n",
        ));
        assert!(e.contains("target group 'g' has algorithm round_robin, but tcp listener 'tcp' balances with maglev"), "{e}");
        Model::parse(
            &text.replace("name = \"g\"\n", "name = \"g\"\nalgorithm = \"maglev\"\n"),
            "t",
        )
        .unwrap();
        let e = invalid(&text.replace(
            "name = \"g\"\n",
            "name = \"g\"\nstickiness = { type = \"lb_cookie\" }\n",
        ));
        assert!(e.contains("use hash_key = \"source_ip\""), "{e}");
        let e = invalid(&HTTP.replace(
            "name = \"www\"\n",
            "name = \"www\"\nalgorithm = \"maglev\"\n",
        ));
        assert!(e.contains("target group 'www' has algorithm maglev"), "{e}");
    }

    #[test]
    fn https_needs_certificates_and_http_refuses_them() {
        let https = HTTP.replace("protocol = \"http\"", "protocol = \"https\"");
        assert!(invalid(&https).contains("listener 'web' (https) needs certificates"));
        let with = https.replace(
            "idle_timeout = 30",
            "certificates = [{ cert = \"/etc/a.pem\", key = \"/etc/a.key\" }]",
        );
        let model = Model::parse(&with, "t").unwrap();
        assert_eq!(
            model.listeners[0].certificates[0].key,
            std::path::PathBuf::from("/etc/a.key")
        );
        let e = invalid(&HTTP.replace(
            "idle_timeout = 30",
            "certificates = [{ cert = \"/etc/a.pem\", key = \"/etc/a.key\" }]",
        ));
        assert!(e.contains("use protocol = \"https\""), "{e}");
    }

    #[test]
    fn endpoints_conflict_across_tcp_and_http_and_with_all_ports() {
        let tcp_too = format!(
            "{HTTP}\n[[listener]]\nname = \"raw\"\naddress = \"192.0.2.10\"\nport = 80\nprotocol = \"tcp\"\ndefault_target_group = \"plain\"\n[[target_group]]\nname = \"plain\"\nhealth_check = {{ port = 3000 }}\n"
        );
        let e = invalid(&tcp_too);
        assert!(
            e.contains("listeners 'web' (http) and 'raw' (tcp) both listen on 192.0.2.10:80 tcp"),
            "{e}"
        );
        let all_ports = tcp_too.replace(
            "port = 80\nprotocol = \"tcp\"",
            "port = 0\nprotocol = \"tcp\"",
        );
        let e = invalid(&all_ports);
        assert!(
            e.contains("listener 'raw' (tcp) takes every TCP port of 192.0.2.10"),
            "{e}"
        );
        // UDP on every port leaves TCP to the proxy.
        let udp = all_ports.replace(
            "port = 0\nprotocol = \"tcp\"",
            "port = 0\nprotocol = \"udp\"",
        );
        Model::parse(&udp, "t").unwrap();
    }

    #[test]
    fn rules_are_checked_with_precise_messages() {
        let cases = [
            (
                "priority = 20",
                "priority = 10",
                "two rules have priority 10",
            ),
            (
                "priority = 20",
                "priority = 50001",
                "rule priority 50001 is outside 1 to 50000",
            ),
            ("path = [\"/down\"]\n", "", "rule 30 has no condition"),
            (
                "host = [\"api.example.com\",",
                "host = [\"api.example.com:80\",",
                "host 'api.example.com:80' contains ':'",
            ),
            (
                "path = [\"/v1/*\"]",
                "path = [\"v1/*\"]",
                "path 'v1/*' must start with '/'",
            ),
            (
                "method = [\"GET\",",
                "method = [\"get\",",
                "method 'get' must be upper case",
            ),
            (
                "\"10.0.0.0/8\"",
                "\"10.0.0.1/8\"",
                "did you mean 10.0.0.0/8?",
            ),
            (
                "{ name = \"x-env\", values = [\"beta*\"] }",
                "{ name = \"x env\", values = [\"b\"] }",
                "header name 'x env'",
            ),
            (
                "{ name = \"api\", weight = 3 }",
                "{ name = \"nope\" }",
                "rule 10: target group 'nope' does not exist; known target groups: api, www",
            ),
            (
                "{ name = \"api\", weight = 3 }, { name = \"www\" }",
                "{ name = \"api\", weight = 0 }",
                "every target group of the forward action has weight 0",
            ),
            (
                "status = 302",
                "status = 307",
                "redirect status 307 must be 301",
            ),
            (
                "path = \"/new/#{path}\"",
                "path = \"/new/#{paht}\"",
                "uses #{paht}; the variables are",
            ),
            (
                "protocol = \"https\", port = 443, path = \"/new/#{path}\"",
                "query = \"#{query}\"",
                "the redirect changes nothing",
            ),
            (
                "status = 503",
                "status = 302",
                "fixed_response status 302 must be 2XX, 4XX or 5XX",
            ),
            (
                "content_type = \"text/plain\"",
                "content_type = \"image/png\"",
                "content_type 'image/png' is not one of",
            ),
            (
                "duration = 600",
                "duration = 700000",
                "stickiness duration 700000 is outside",
            ),
            (
                "cookie_name = \"SESSIONID\"",
                "cookie_name = \"SLUICEX\"",
                "starts with SLUICE",
            ),
            (
                "idle_timeout = 30",
                "idle_timeout = 5000",
                "idle_timeout 5000s must be whole seconds from 1 to 4000",
            ),
            (
                "idle_timeout = 30",
                "max_header_bytes = 100",
                "max_header_bytes 100 must be 1024 to 1048576",
            ),
            (
                "idle_timeout = 30",
                "max_connections = 0",
                "max_connections 0 must be 1 to 10000000",
            ),
        ];
        for (from, to, expected) in cases {
            assert!(HTTP.contains(from), "{from}");
            let e = invalid(&HTTP.replacen(from, to, 1));
            assert!(e.contains(expected), "{from} -> {to}: {e}");
        }
        let e = invalid(&HTTP.replace("type = \"forward\"", "type = \"froward\""));
        assert!(e.contains("froward"), "{e}");
    }

    #[test]
    fn cidrs_contain_their_addresses_and_mapped_peers() {
        let net: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains("10.200.1.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert!(!net.contains("fd00::1".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("fe80::1".parse().unwrap()));
        let host: Cidr = "192.0.2.1".parse().unwrap();
        assert_eq!(host.prefix, 32);
        assert!(host.contains("192.0.2.1".parse().unwrap()));
        assert!(!host.contains("192.0.2.2".parse().unwrap()));
        let any: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(any.contains("203.0.113.9".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nonsense".parse::<Cidr>().is_err());
    }
}
