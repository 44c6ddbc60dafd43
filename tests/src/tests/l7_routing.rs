//! L7 end to end: `sluice run` in the lb namespace of an [`LbTopology`] with an http
//! listener on a VIP the lb holds; three targets each run two [`L7Server`]s (port 8080 for
//! the `www`, `sticky` (lb_cookie) and `app` (app_cookie) groups, 8081 for `api`); the
//! client uses curl and raw sockets.
//! This module holds the fixture and the routing tests (rules, redirect, fixed response,
//! forwarded headers).

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    process::Output,
    time::Duration,
};

use super::l7_support::L7Sluice;
use crate::{
    http_servers::{L7Server, APP_COOKIE},
    netns::{wait_until, LbTopology},
};

pub(super) use super::l7_support::VIP;
pub(super) const IDLE_TIMEOUT_SECS: u64 = 2;

/// The fixture: the topology, the targets' servers and the daemon.
pub(super) struct L7 {
    pub topology: LbTopology,
    /// Per target: (www/sticky/app server on 8080, api server on 8081).
    pub servers: Vec<(L7Server, L7Server)>,
    pub lb: L7Sluice,
}

fn model(topology: &LbTopology) -> String {
    let targets = |port: u16| {
        topology
            .targets
            .iter()
            .map(|t| format!("{{ address = \"{}\", port = {port} }}", t.link.v4))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let check = "health_check = { protocol = \"http\", path = \"/health\", interval = \"200ms\", timeout = \"150ms\", healthy_threshold = 2, unhealthy_threshold = 2 }";
    format!(
        r#"
[[listener]]
name = "web"
address = "{VIP}"
port = 80
protocol = "http"
default_target_group = "www"
idle_timeout = {IDLE_TIMEOUT_SECS}
header_read_timeout = "1s"
max_header_bytes = 4096

[[listener.rule]]
priority = 10
host = ["api.example.com"]
path = ["/v1/*"]
action = {{ type = "forward", target_groups = [{{ name = "api" }}] }}

[[listener.rule]]
priority = 20
host = ["www.example.com"]
action = {{ type = "forward", target_groups = [{{ name = "www" }}] }}

[[listener.rule]]
priority = 30
path = ["/old/*"]
action = {{ type = "redirect", status = 301, protocol = "https", host = "new.example.com", port = "443", path = "/new/#{{path}}" }}

[[listener.rule]]
priority = 40
path = ["/maintenance"]
action = {{ type = "fixed_response", status = 503, content_type = "application/json", body = "{{\"down\":true}}" }}

[[listener.rule]]
priority = 50
host = ["sticky.example.com"]
action = {{ type = "forward", target_groups = [{{ name = "sticky" }}] }}

[[listener.rule]]
priority = 60
host = ["app.example.com"]
action = {{ type = "forward", target_groups = [{{ name = "app" }}] }}

[[listener.rule]]
priority = 70
host = ["canary.example.com"]
action = {{ type = "forward", target_groups = [{{ name = "sticky", weight = 1 }}, {{ name = "canary", weight = 1 }}] }}

[[target_group]]
name = "www"
deregistration_delay = 1
targets = [{www}]
{check}

[[target_group]]
name = "api"
targets = [{api}]
{check}

[[target_group]]
name = "sticky"
deregistration_delay = 1
stickiness = {{ type = "lb_cookie", duration = 3600 }}
targets = [{www}]
{check}

[[target_group]]
name = "app"
deregistration_delay = 1
stickiness = {{ type = "app_cookie", cookie_name = "{APP_COOKIE}", duration = 3600 }}
targets = [{www}]
{check}

[[target_group]]
name = "canary"
deregistration_delay = 1
stickiness = {{ type = "lb_cookie", duration = 3600 }}
targets = [{api}]
{check}
"#,
        www = targets(8080),
        api = targets(8081),
    )
}

impl L7 {
    /// A connection from the client to the VIP, reads bounded by [`SHORT`].
    pub fn connect(&self) -> std::net::TcpStream {
        let stream = self
            .topology
            .client
            .ns
            .run_in(|| std::net::TcpStream::connect_timeout(&vip(), SHORT))
            .expect("connecting to the VIP");
        stream.set_read_timeout(Some(SHORT)).unwrap();
        stream
    }

    pub fn start() -> L7 {
        let topology = LbTopology::new(3);
        let any = IpAddr::from(Ipv4Addr::UNSPECIFIED);
        let servers = topology
            .targets
            .iter()
            .enumerate()
            .map(|(i, t)| {
                (
                    L7Server::start(&t.ns, SocketAddr::new(any, 8080), &format!("target{i}")),
                    L7Server::start(&t.ns, SocketAddr::new(any, 8081), &format!("api{i}")),
                )
            })
            .collect();
        // 5 groups x 3 targets.
        let lb = L7Sluice::start(&topology, &model(&topology), 15);
        L7 {
            topology,
            servers,
            lb,
        }
    }

    /// curl in the client namespace with `args` (a URL among them); 10 s at most.
    pub fn curl(&self, args: &[&str]) -> Output {
        self.topology
            .client
            .ns
            .command("curl")
            .args(["-sS", "--max-time", "10", "--noproxy", "*"])
            .args(args)
            .output()
            .expect("running curl")
    }

    /// `GET http://VIP{path}` with `Host: host`: status and body.
    pub fn get(&self, host: &str, path: &str, extra: &[&str]) -> (u16, String) {
        let url = format!("http://{VIP}{path}");
        let mut args = vec!["-H", &format!("Host: {host}")]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>();
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(["-w".to_string(), "\n%{http_code}".to_string(), url]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.curl(&refs);
        assert!(
            out.status.success(),
            "curl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').expect("-w appends the code");
        (code.parse().unwrap(), body.to_string())
    }

    /// A sluice CLI command against this daemon.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.lb.cli(args)
    }
}

pub(super) fn vip() -> SocketAddr {
    SocketAddr::new(VIP.into(), 80)
}

pub(super) const SHORT: Duration = Duration::from_secs(5);

#[test]
fn host_and_path_rules_route_to_their_groups() {
    let l7 = L7::start();
    for _ in 0..6 {
        let (status, body) = l7.get("api.example.com", "/v1/users", &[]);
        assert_eq!(status, 200);
        assert!(
            body.starts_with("api"),
            "api.example.com/v1/* goes to api: {body}"
        );
        let (status, body) = l7.get("www.example.com", "/v1/users", &[]);
        assert_eq!(status, 200);
        assert!(
            body.starts_with("target"),
            "www.example.com/* goes to www: {body}"
        );
        // api.example.com outside /v1/* takes the default (www).
        let (_, body) = l7.get("API.example.com", "/v2/users", &[]);
        assert!(body.starts_with("target"), "{body}");
        let (_, body) = l7.get("api.example.com:80", "/v1/x", &[]);
        assert!(
            body.starts_with("api"),
            "the port is not part of the host: {body}"
        );
    }
    // Round robin: the six www requests reached all three targets.
    let served: Vec<u64> = l7.servers.iter().map(|(www, _)| www.requests()).collect();
    assert!(served.iter().all(|n| *n >= 2), "{served:?}");
    let api: Vec<u64> = l7.servers.iter().map(|(_, api)| api.requests()).collect();
    assert!(api.iter().all(|n| *n >= 2), "{api:?}");
}

#[test]
fn redirect_and_fixed_response_return_exactly_what_is_configured() {
    let l7 = L7::start();
    // Any host but those of rules 10 and 20, which come first.
    let out = l7.curl(&[
        "-i",
        "-H",
        "Host: shop.example.com",
        &format!("http://{VIP}/old/page?a=1"),
    ]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.starts_with("HTTP/1.1 301"), "{text}");
    assert!(
        text.contains("location: https://new.example.com/new/old/page?a=1\r\n"),
        "{text}"
    );
    let out = l7.curl(&["-i", &format!("http://{VIP}/maintenance")]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    assert!(
        text.contains("content-type: application/json\r\n"),
        "{text}"
    );
    assert!(text.ends_with("\r\n\r\n{\"down\":true}"), "{text}");
    let total: u64 = l7
        .servers
        .iter()
        .map(|(a, b)| a.requests() + b.requests())
        .sum();
    assert_eq!(total, 0, "neither reached a target");
    // One access log line per request, with the rule and action.
    wait_until(SHORT, "access log lines", || {
        let log = l7.lb.sluice.stderr();
        log.contains(" 301 - ")
            && log.contains("\"redirect\" \"https://new.example.com/new/old/page?a=1\"")
            && log.contains(" 503 - 0 13 ")
            && log.contains(" 40 \"fixed-response\"")
    });
}

#[test]
fn targets_get_forwarded_headers_and_the_original_host() {
    let l7 = L7::start();
    let (status, head) = l7.get(
        "www.example.com",
        "/headers",
        &[
            "-H",
            "X-Forwarded-For: 198.51.100.7",
            "-H",
            "X-Forwarded-Proto: https",
            "-H",
            "Connection: keep-alive, X-Private",
            "-H",
            "X-Private: secret",
        ],
    );
    assert_eq!(status, 200);
    let client = l7.topology.client.link.v4;
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("\r\nhost: www.example.com\r\n"), "{head}");
    assert!(
        lower.contains(&format!("\r\nx-forwarded-for: 198.51.100.7, {client}\r\n")),
        "{head}"
    );
    assert!(lower.contains("\r\nx-forwarded-proto: http\r\n"), "{head}");
    assert!(lower.contains("\r\nx-forwarded-port: 80\r\n"), "{head}");
    assert!(
        !lower.contains("x-private"),
        "named in Connection, so hop-by-hop: {head}"
    );
    assert!(head.starts_with("GET /headers HTTP/1.1\r\n"), "{head}");
}
