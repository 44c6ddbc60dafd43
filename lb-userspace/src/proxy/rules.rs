//! Listener rules compiled for matching: conditions (host, path, method, source IP, header,
//! query) and the action of the first rule, by ascending priority, whose conditions all hold;
//! the listener's default action when none does.

use std::{net::IpAddr, sync::Arc};

use hyper::HeaderMap;

use super::wildcard::Pattern;
use crate::model::{self, Cidr, FixedResponse, Redirect};

/// What a rule does with a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuleAction {
    /// To one of these target groups, chosen by weight (zero-weight groups never).
    Forward(Vec<(String, u32)>),
    Redirect(Arc<Redirect>),
    FixedResponse(Arc<FixedResponse>),
}

impl RuleAction {
    fn from_model(action: &model::Action) -> RuleAction {
        match action {
            model::Action::Forward(forward) => RuleAction::Forward(
                forward
                    .target_groups
                    .iter()
                    .map(|g| (g.name.clone(), g.weight))
                    .collect(),
            ),
            model::Action::Redirect(r) => RuleAction::Redirect(Arc::new(r.clone())),
            model::Action::FixedResponse(f) => RuleAction::FixedResponse(Arc::new(f.clone())),
        }
    }
}

/// The parts of a request that conditions look at.
#[derive(Clone, Copy, Debug)]
pub struct RequestView<'a> {
    /// The Host (or :authority) without port, any case.
    pub host: Option<&'a str>,
    pub path: &'a str,
    pub method: &'a str,
    /// The raw query string, without `?`.
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// The real peer (the TCP connection's source), never X-Forwarded-For.
    pub source: IpAddr,
}

#[derive(Clone, Debug)]
struct CompiledRule {
    priority: u32,
    hosts: Vec<Pattern>,
    paths: Vec<Pattern>,
    methods: Vec<String>,
    sources: Vec<Cidr>,
    headers: Vec<(hyper::header::HeaderName, Vec<Pattern>)>,
    queries: Vec<(Option<Pattern>, Pattern)>,
    action: RuleAction,
}

impl CompiledRule {
    fn compile(rule: &model::Rule) -> CompiledRule {
        CompiledRule {
            priority: rule.priority,
            hosts: rule
                .host
                .iter()
                .map(|h| Pattern::case_insensitive(h))
                .collect(),
            paths: rule
                .path
                .iter()
                .map(|p| Pattern::case_sensitive(p))
                .collect(),
            methods: rule.method.clone(),
            sources: rule.source_ip.clone(),
            headers: rule
                .header
                .iter()
                .map(|h| {
                    (
                        hyper::header::HeaderName::from_bytes(h.name.as_bytes())
                            .expect("validated: header names are tokens"),
                        h.values
                            .iter()
                            .map(|v| Pattern::case_insensitive(v))
                            .collect(),
                    )
                })
                .collect(),
            queries: rule
                .query
                .iter()
                .map(|q| {
                    (
                        q.key.as_deref().map(Pattern::case_insensitive),
                        Pattern::case_insensitive(&q.value),
                    )
                })
                .collect(),
            action: RuleAction::from_model(&rule.action),
        }
    }

    fn matches(&self, request: &RequestView<'_>, query: &[(String, String)]) -> bool {
        let any = |patterns: &[Pattern], text: &str| patterns.iter().any(|p| p.matches(text));
        (self.hosts.is_empty() || request.host.is_some_and(|h| any(&self.hosts, h)))
            && (self.paths.is_empty() || any(&self.paths, request.path))
            && (self.methods.is_empty() || self.methods.iter().any(|m| m == request.method))
            && (self.sources.is_empty() || self.sources.iter().any(|c| c.contains(request.source)))
            && self.headers.iter().all(|(name, values)| {
                request
                    .headers
                    .get_all(name)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .any(|v| any(values, v))
            })
            // Each query condition is one of the rule's OR-ed pairs: ALB lists key/value
            // pairs in one condition, any of which may match.
            && (self.queries.is_empty()
                || self.queries.iter().any(|(key, value)| {
                    query.iter().any(|(k, v)| {
                        key.as_ref().is_none_or(|key| key.matches(k)) && value.matches(v)
                    })
                }))
    }
}

/// A listener's rules, by priority, and its default action.
#[derive(Clone, Debug)]
pub struct RuleSet {
    rules: Vec<CompiledRule>,
    default: RuleAction,
    needs_query: bool,
}

/// Which rule matched: its priority, or none for the default.
pub type Matched = Option<u32>;

impl RuleSet {
    pub fn compile(listener: &model::Listener) -> RuleSet {
        let mut rules: Vec<CompiledRule> =
            listener.rules.iter().map(CompiledRule::compile).collect();
        rules.sort_by_key(|r| r.priority);
        RuleSet {
            needs_query: rules.iter().any(|r| !r.queries.is_empty()),
            rules,
            default: RuleAction::Forward(vec![(listener.default_target_group.clone(), 1)]),
        }
    }

    /// The action for `request` and the rule that chose it.
    pub fn choose(&self, request: &RequestView<'_>) -> (Matched, &RuleAction) {
        let query = if self.needs_query {
            parse_query(request.query.unwrap_or(""))
        } else {
            Vec::new()
        };
        for rule in &self.rules {
            if rule.matches(request, &query) {
                return (Some(rule.priority), &rule.action);
            }
        }
        (None, &self.default)
    }
}

/// `a=1&b=%20x&c` as decoded pairs (`+` is a space, as in forms).
pub fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(high), Some(low)) => {
                        out.push((high * 16 + low) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The host part of a Host header or authority: lower case, without port; IPv6 literals
/// keep their brackets.
pub fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Model;

    const MODEL: &str = r#"
        [[listener]]
        name = "web"
        address = "192.0.2.10"
        port = 80
        protocol = "http"
        default_target_group = "www"

        [[listener.rule]]
        priority = 20
        host = ["www.example.com"]
        action = { type = "forward", target_groups = [{ name = "www" }] }

        [[listener.rule]]
        priority = 10
        host = ["api.example.com", "*.api.example.com"]
        path = ["/v1/*"]
        action = { type = "forward", target_groups = [{ name = "api" }] }

        [[listener.rule]]
        priority = 30
        method = ["DELETE"]
        source_ip = ["10.0.0.0/8"]
        action = { type = "fixed_response", status = 403, body = "no" }

        [[listener.rule]]
        priority = 40
        header = [{ name = "x-env", values = ["beta*", "canary"] }]
        query = [{ key = "v", value = "2" }, { value = "debug" }]
        action = { type = "forward", target_groups = [{ name = "beta" }] }

        [[listener.rule]]
        priority = 50
        path = ["/old"]
        action = { type = "redirect", path = "/new" }

        [[target_group]]
        name = "www"
        [[target_group]]
        name = "api"
        [[target_group]]
        name = "beta"
    "#;

    fn rules() -> RuleSet {
        RuleSet::compile(&Model::parse(MODEL, "t").unwrap().listeners[0])
    }

    struct Req {
        host: Option<&'static str>,
        path: &'static str,
        method: &'static str,
        query: Option<&'static str>,
        headers: HeaderMap,
        source: IpAddr,
    }

    fn req(host: &'static str, path: &'static str) -> Req {
        Req {
            host: Some(host),
            path,
            method: "GET",
            query: None,
            headers: HeaderMap::new(),
            source: "192.0.2.99".parse().unwrap(),
        }
    }

    fn choose(rules: &RuleSet, r: &Req) -> (Matched, RuleAction) {
        let view = RequestView {
            host: r.host,
            path: r.path,
            method: r.method,
            query: r.query,
            headers: &r.headers,
            source: r.source,
        };
        let (m, a) = rules.choose(&view);
        (m, a.clone())
    }

    fn forward(group: &str) -> RuleAction {
        RuleAction::Forward(vec![(group.into(), 1)])
    }

    #[test]
    fn host_and_path_rules_route_by_priority() {
        let rules = rules();
        assert_eq!(
            choose(&rules, &req("api.example.com", "/v1/users")),
            (Some(10), forward("api"))
        );
        assert_eq!(
            choose(&rules, &req("API.Example.COM", "/v1/")),
            (Some(10), forward("api"))
        );
        assert_eq!(
            choose(&rules, &req("eu.api.example.com", "/v1/x")),
            (Some(10), forward("api"))
        );
        // Path is case-sensitive; host and path must both hold.
        assert_eq!(choose(&rules, &req("api.example.com", "/V1/x")).0, None);
        assert_eq!(choose(&rules, &req("api.example.com", "/v2/x")).0, None);
        assert_eq!(
            choose(&rules, &req("www.example.com", "/v1/x")),
            (Some(20), forward("www"))
        );
        let mut no_host = req("x", "/v1/x");
        no_host.host = None;
        assert_eq!(choose(&rules, &no_host), (None, forward("www")));
    }

    #[test]
    fn method_and_source_conditions_and_together() {
        let rules = rules();
        let mut r = req("other", "/x");
        r.method = "DELETE";
        assert_eq!(choose(&rules, &r).0, None, "source outside 10/8");
        r.source = "10.1.2.3".parse().unwrap();
        assert_eq!(choose(&rules, &r).0, Some(30));
        r.source = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(
            choose(&rules, &r).0,
            Some(30),
            "IPv4-mapped peers count as IPv4"
        );
        r.method = "delete";
        assert_eq!(choose(&rules, &r).0, None, "methods are case-sensitive");
    }

    #[test]
    fn header_and_query_conditions() {
        let rules = rules();
        let mut r = req("other", "/x");
        r.headers.insert("x-env", "Beta-7".parse().unwrap());
        assert_eq!(choose(&rules, &r).0, None, "the query condition is missing");
        r.query = Some("a=1&v=2");
        assert_eq!(choose(&rules, &r), (Some(40), forward("beta")));
        r.query = Some("mode=DEBUG");
        assert_eq!(
            choose(&rules, &r).0,
            Some(40),
            "a keyless pair matches any key"
        );
        r.query = Some("v=3");
        assert_eq!(choose(&rules, &r).0, None);
        r.query = Some("v=2");
        r.headers.insert("x-env", "prod".parse().unwrap());
        assert_eq!(choose(&rules, &r).0, None);
        r.headers.append("x-env", "canary".parse().unwrap());
        assert_eq!(
            choose(&rules, &r).0,
            Some(40),
            "any instance of the header may match"
        );
    }

    #[test]
    fn redirect_rules_carry_their_settings() {
        let (m, action) = choose(&rules(), &req("h", "/old"));
        assert_eq!(m, Some(50));
        let RuleAction::Redirect(r) = action else {
            panic!("{action:?}")
        };
        assert_eq!(r.path.as_deref(), Some("/new"));
    }

    #[test]
    fn queries_are_decoded() {
        assert_eq!(
            parse_query("a=1&b=x%20y+z&c&&d=%zz"),
            [("a", "1"), ("b", "x y z"), ("c", ""), ("d", "%zz")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        assert_eq!(parse_query("e=%4"), [("e".to_string(), "%4".to_string())]);
    }

    #[test]
    fn hosts_lose_their_ports() {
        assert_eq!(host_without_port("example.com:8080"), "example.com");
        assert_eq!(host_without_port("example.com"), "example.com");
        assert_eq!(host_without_port("[2001:db8::1]:80"), "[2001:db8::1]");
        assert_eq!(host_without_port("[2001:db8::1]"), "[2001:db8::1]");
    }
}
