//! `GET /metrics` on `sluice run --metrics-address`: the numbers of `GET /v1/stats` and the
//! health checker's latest latencies in the Prometheus text exposition format (0.0.4), named
//! after ELB's CloudWatch metrics with a `sluice_` prefix.
//!
//! [`render`] is pure: it turns a [`Scrape`] (a [`StatsReport`] plus latencies) into text.
//! The server around it runs on the daemon's single-threaded runtime, like the control API, so
//! a scrape never sees half a reload.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    fmt::{Display, Write as _},
    io,
    net::SocketAddr,
    rc::Rc,
    str::FromStr,
    time::Duration,
};

use http_body_util::Full;
use hyper::{
    body::{Bytes, Incoming},
    header,
    server::conn::http1,
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};

use crate::{
    api::{CollectError, StatsReport, TargetStatus},
    health::Health,
    proxy::metrics::{ProxyStats, RESPONSE_TIME_BUCKETS},
};

/// Where `sluice run` serves metrics unless told otherwise (the node exporter's usual port).
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:9100";
/// The only path served.
pub const PATH: &str = "/metrics";
/// The text exposition format, version 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A client that sends no complete request head within this long is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// After a failed accept (e.g. out of file descriptors), before the next one.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// `--metrics-address`: a TCP address, or `off` for none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricsAddress(pub Option<SocketAddr>);

impl FromStr for MetricsAddress {
    type Err = String;

    fn from_str(s: &str) -> Result<MetricsAddress, String> {
        if s == "off" {
            return Ok(MetricsAddress(None));
        }
        s.parse().map(|a| MetricsAddress(Some(a))).map_err(|_| {
            format!("'{s}' is not an address and port such as {DEFAULT_ADDRESS}, nor 'off'")
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("cannot serve metrics on {addr}: the address is in use; choose another --metrics-address, or 'off'")]
    InUse { addr: SocketAddr },
    #[error(
        "cannot serve metrics on {addr}: {source}; choose another --metrics-address, or 'off'"
    )]
    Bind { addr: SocketAddr, source: io::Error },
}

/// Listens on `addr`. The listener is non-blocking, ready for
/// `tokio::net::TcpListener::from_std`.
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, BindError> {
    let listener = std::net::TcpListener::bind(addr).map_err(|source| match source.kind() {
        io::ErrorKind::AddrInUse => BindError::InUse { addr },
        _ => BindError::Bind { addr, source },
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| BindError::Bind { addr, source })?;
    Ok(listener)
}

/// What a scrape reads: the daemon's statistics, the latest health-check latencies and the
/// L7 proxy's counters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scrape {
    pub report: StatsReport,
    /// By target group and target address; only targets checked at least once.
    pub latencies: BTreeMap<(String, SocketAddr), Duration>,
    /// Empty without http/https listeners.
    pub proxy: ProxyStats,
}

/// What the metrics server asks of the daemon.
pub trait Source {
    fn scrape(&self) -> Result<Scrape, CollectError>;
}

/// Serves `GET /metrics` until the task is dropped.
pub async fn serve<S: Source + 'static>(listener: tokio::net::TcpListener, source: Rc<S>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                log::warn!("metrics: accepting a connection: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let source = Rc::clone(&source);
        tokio::task::spawn_local(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let response = respond(&*source, request.method(), request.uri().path());
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = connection.await {
                log::debug!("metrics connection: {e}");
            }
        });
    }
}

fn respond(source: &impl Source, method: &Method, path: &str) -> Response<Full<Bytes>> {
    if path != PATH {
        return text(
            StatusCode::NOT_FOUND,
            format!("no {path} here; try {PATH}\n"),
        );
    }
    if method != Method::GET {
        let mut response = text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{PATH} takes GET\n"),
        );
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET"));
        return response;
    }
    match source.scrape() {
        Ok(scrape) => {
            let mut response = text(StatusCode::OK, render(&scrape));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(CONTENT_TYPE),
            );
            response
        }
        Err(e) => {
            log::error!("metrics: {e}");
            text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"))
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The exposition text. Families come in a fixed order, each with its HELP and TYPE once
/// (even without samples); samples follow the report's order (listeners as configured,
/// targets by group then address, counters by name), so two scrapes differ only in values.
pub fn render(scrape: &Scrape) -> String {
    let report = &scrape.report;
    let mut out = Exposition::default();

    // ELB counts neither `initial` nor draining targets as healthy or unhealthy.
    let hosts = |group: &str, health: Health| {
        report
            .targets
            .iter()
            .filter(|t| {
                t.group == group && t.state == TargetStatus::Active && t.health == health.name()
            })
            .count()
    };
    for (name, health) in [
        ("sluice_healthy_host_count", Health::Healthy),
        ("sluice_unhealthy_host_count", Health::Unhealthy),
    ] {
        out.family(
            name,
            "gauge",
            &format!(
                "Registered targets (not draining) whose health check state is {}.",
                health.name()
            ),
        );
        for group in &report.target_groups {
            out.sample(
                name,
                &[("target_group", &group.name)],
                hosts(&group.name, health),
            );
        }
    }
    let name = "sluice_target_group_failing_open";
    out.family(
        name,
        "gauge",
        "1 if the target group has no healthy target, so traffic goes to all of them.",
    );
    for group in &report.target_groups {
        out.sample(
            name,
            &[("target_group", &group.name)],
            u8::from(group.failing_open),
        );
    }

    type Traffic = (&'static str, &'static str, fn(u64, u64, u64) -> u64);
    const TRAFFIC: [Traffic; 3] = [
        ("processed_packets_total", "Packets", |p, _, _| p),
        ("processed_bytes_total", "Bytes (whole frames)", |_, b, _| b),
        ("new_flow_count_total", "New flows", |_, _, f| f),
    ];
    for (suffix, what, value) in TRAFFIC {
        let name = format!("sluice_{suffix}");
        out.family(
            &name,
            "counter",
            &format!("{what} balanced by the listener since it was added."),
        );
        for l in &report.listeners {
            out.sample(
                &name,
                &[("listener", &l.name)],
                value(l.packets, l.bytes, l.new_flows),
            );
        }
    }
    for (suffix, what, value) in TRAFFIC {
        let name = format!("sluice_target_{suffix}");
        out.family(
            &name,
            "counter",
            &format!("{what} sent to the target since it was registered, draining included."),
        );
        for t in &report.targets {
            out.sample(
                &name,
                &[
                    ("target_group", &t.group),
                    ("target", &t.address.to_string()),
                ],
                value(t.packets, t.bytes, t.new_flows),
            );
        }
    }

    let name = "sluice_packets_total";
    out.family(
        name,
        "counter",
        "Packets seen by the XDP program, by what it did with them (drop_*, pass_*, forward_*).",
    );
    for (outcome, counter) in &report.counters {
        out.sample(name, &[("outcome", outcome)], counter.packets);
    }
    let name = "sluice_port_allocation_error_count_total";
    out.family(
        name,
        "counter",
        "New nat flows dropped because no source port was free (drop_nat_ports_exhausted).",
    );
    let exhausted = report
        .counters
        .get("drop_nat_ports_exhausted")
        .map_or(0, |c| c.packets);
    out.sample(name, &[], exhausted);
    let name = "sluice_target_port_allocation_error_count_total";
    out.family(
        name,
        "counter",
        "New nat flows to the target dropped because no source port was free on it.",
    );
    for t in &report.targets {
        out.sample(
            name,
            &[
                ("target_group", &t.group),
                ("target", &t.address.to_string()),
            ],
            t.port_allocation_errors,
        );
    }

    let tables = report.connection_tables.as_ref();
    for (name, help, value) in [
        (
            "sluice_flow_table_entries",
            "Live entries of the flow table, as the last complete sweep counted them.",
            tables.map(|t| t.flows),
        ),
        (
            "sluice_nat_translations",
            "Live nat translations (one source port each), as the last complete sweep counted them.",
            tables.map(|t| t.nat_translations),
        ),
    ] {
        out.family(name, "gauge", help);
        if let Some(value) = value {
            out.sample(name, &[], value);
        }
    }
    let name = "sluice_target_nat_translations";
    out.family(
        name,
        "gauge",
        "Live nat translations towards the target (source ports in use on the address facing it).",
    );
    if let Some(tables) = tables {
        for t in &report.targets {
            out.sample(
                name,
                &[
                    ("target_group", &t.group),
                    ("target", &t.address.to_string()),
                ],
                tables
                    .nat_translations_by_target
                    .get(&t.id)
                    .copied()
                    .unwrap_or(0),
            );
        }
    }

    let name = "sluice_health_check_latency_seconds";
    out.family(
        name,
        "gauge",
        "Latency of the target's latest health check, passed or failed.",
    );
    for ((group, target), latency) in &scrape.latencies {
        out.sample(
            name,
            &[("target_group", group), ("target", &target.to_string())],
            latency.as_secs_f64(),
        );
    }
    render_proxy(&scrape.proxy, &mut out);
    out.text
}

/// The L7 proxy's families (ALB's names), always present so dashboards see zeros.
fn render_proxy(proxy: &ProxyStats, out: &mut Exposition) {
    type ListenerMetric = (
        &'static str,
        &'static str,
        &'static str,
        fn(&crate::proxy::metrics::ListenerNumbers) -> u64,
    );
    const LISTENER: [ListenerMetric; 7] = [
        ("sluice_request_count_total", "counter", "HTTP requests received by the listener (RequestCount).", |n| n.requests),
        ("sluice_httpcode_elb_4xx_count_total", "counter", "4XX responses made by sluice itself: 400 malformed or without Host, 408 header timeout, 414 URI too long, 431 header too large (HTTPCode_ELB_4XX_Count).", |n| n.elb_4xx),
        ("sluice_httpcode_elb_5xx_count_total", "counter", "5XX responses made by sluice itself: 502 target refused or broke, 503 no target, 504 target timeout (HTTPCode_ELB_5XX_Count).", |n| n.elb_5xx),
        ("sluice_active_connection_count", "gauge", "Client connections open now, upgraded ones included.", |n| n.active_connections),
        ("sluice_new_connection_count_total", "counter", "Client connections accepted (NewConnectionCount).", |n| n.new_connections),
        ("sluice_client_tls_negotiation_error_count_total", "counter", "https: client connections whose TLS handshake failed or timed out (ClientTLSNegotiationErrorCount).", |n| n.tls_negotiation_errors),
        ("sluice_rejected_connection_count_total", "counter", "Client connections reset at once because the listener's max_connections or the global --max-connections was reached (RejectedConnectionCount).", |n| n.rejected_connections),
    ];
    for (name, kind, help, value) in LISTENER {
        out.family(name, kind, help);
        for (listener, numbers) in &proxy.listeners {
            out.sample(name, &[("listener", listener)], value(numbers));
        }
    }
    let name = "sluice_httpcode_target_count_total";
    out.family(
        name,
        "counter",
        "Responses from targets by status class 2XX..5XX (HTTPCode_Target_2XX_Count...).",
    );
    for (group, numbers) in &proxy.groups {
        for (i, count) in numbers.target_responses.iter().enumerate() {
            let class = format!("{}xx", i + 2);
            out.sample(name, &[("target_group", group), ("code", &class)], count);
        }
    }
    let name = "sluice_non_sticky_request_count_total";
    out.family(name, "counter", "Requests of a sticky target group that could not use an existing sticky session: no cookie, an invalid one, or its target no longer routable (NonStickyRequestCount).");
    for (group, numbers) in &proxy.groups {
        out.sample(
            name,
            &[("target_group", group)],
            numbers.non_sticky_requests,
        );
    }
    let name = "sluice_target_connection_error_count_total";
    out.family(name, "counter", "Requests whose connection to a target failed before a response: refused, unreachable or reset (TargetConnectionErrorCount); retried ones count too.");
    for (group, numbers) in &proxy.groups {
        out.sample(
            name,
            &[("target_group", group)],
            numbers.target_connection_errors,
        );
    }
    let name = "sluice_target_response_time_seconds";
    out.family(
        name,
        "histogram",
        "From sending a request to its target to the target's response head (TargetResponseTime).",
    );
    for (group, numbers) in &proxy.groups {
        let bucket = format!("{name}_bucket");
        for (le, count) in RESPONSE_TIME_BUCKETS
            .iter()
            .zip(numbers.response_time_buckets)
        {
            out.sample(
                &bucket,
                &[("target_group", group), ("le", &le.to_string())],
                count,
            );
        }
        out.sample(
            &bucket,
            &[("target_group", group), ("le", "+Inf")],
            numbers.response_time_count,
        );
        out.sample(
            &format!("{name}_sum"),
            &[("target_group", group)],
            numbers.response_time_seconds,
        );
        out.sample(
            &format!("{name}_count"),
            &[("target_group", group)],
            numbers.response_time_count,
        );
    }
}

#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', r"\\").replace('\n', r"\n");
        // Writing to a String cannot fail.
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{label}=\"{}\"", escape_label(value));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }
}

/// Label values escape backslash, double quote and line feed; nothing else.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        api::{CounterStats, ListenerStats, TargetGroupStats, TargetStats},
        model::{Mode, Protocol},
    };

    fn target(group: &str, address: &str, health: Health, state: TargetStatus) -> TargetStats {
        TargetStats {
            group: group.into(),
            address: address.parse().unwrap(),
            id: 0,
            state,
            weight: Some(1),
            health: health.name().into(),
            packets: 4,
            bytes: 400,
            reason: None,
            new_flows: 2,
            port_allocation_errors: 0,
            rate: Default::default(),
            active_flows: None,
        }
    }

    fn scrape() -> Scrape {
        let report = StatsReport {
            connection_tables: None,
            announcement: None,
            counters: [
                ("forward_nat", 7),
                ("drop_nat_ports_exhausted", 3),
                ("pass_no_listener", 9),
            ]
            .into_iter()
            .map(|(n, p)| {
                (
                    n.to_string(),
                    CounterStats {
                        packets: p,
                        bytes: p * 60,
                    },
                )
            })
            .collect(),
            listeners: vec![ListenerStats {
                name: "dns".into(),
                address: "192.0.2.10".parse().unwrap(),
                port: 53,
                protocol: Protocol::Udp,
                mode: Mode::Nat,
                target_group: "dns".into(),
                id: 0,
                packets: 12,
                bytes: 888,
                new_flows: 12,
                rate: Default::default(),
                active_flows: None,
            }],
            targets: vec![
                target("dns", "10.0.0.1:53", Health::Healthy, TargetStatus::Active),
                target(
                    "dns",
                    "[2001:db8::2]:53",
                    Health::Unhealthy,
                    TargetStatus::Active,
                ),
                target("dns", "10.0.0.3:53", Health::Initial, TargetStatus::Active),
                target(
                    "dns",
                    "10.0.0.4:53",
                    Health::Healthy,
                    TargetStatus::Draining,
                ),
            ],
            target_groups: vec![
                TargetGroupStats {
                    name: "dns".into(),
                    failing_open: false,
                },
                TargetGroupStats {
                    name: "empty".into(),
                    failing_open: true,
                },
            ],
            http_listeners: Vec::new(),
        };
        Scrape {
            report,
            latencies: [(
                ("dns".to_string(), "10.0.0.1:53".parse().unwrap()),
                Duration::from_micros(1500),
            )]
            .into(),
            proxy: ProxyStats::default(),
        }
    }

    fn lines_of<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
        text.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with([' ', '{']))
            })
            .collect()
    }

    #[test]
    fn samples_carry_the_report_numbers() {
        let text = render(&scrape());
        assert_eq!(
            lines_of(&text, "sluice_healthy_host_count"),
            [
                "sluice_healthy_host_count{target_group=\"dns\"} 1",
                "sluice_healthy_host_count{target_group=\"empty\"} 0"
            ]
        );
        assert_eq!(
            lines_of(&text, "sluice_unhealthy_host_count"),
            [
                "sluice_unhealthy_host_count{target_group=\"dns\"} 1",
                "sluice_unhealthy_host_count{target_group=\"empty\"} 0"
            ]
        );
        assert_eq!(
            lines_of(&text, "sluice_target_group_failing_open"),
            [
                "sluice_target_group_failing_open{target_group=\"dns\"} 0",
                "sluice_target_group_failing_open{target_group=\"empty\"} 1"
            ]
        );
        assert_eq!(
            lines_of(&text, "sluice_processed_packets_total"),
            ["sluice_processed_packets_total{listener=\"dns\"} 12"]
        );
        assert_eq!(
            lines_of(&text, "sluice_processed_bytes_total"),
            ["sluice_processed_bytes_total{listener=\"dns\"} 888"]
        );
        assert_eq!(
            lines_of(&text, "sluice_new_flow_count_total"),
            ["sluice_new_flow_count_total{listener=\"dns\"} 12"]
        );
        let targets = lines_of(&text, "sluice_target_new_flow_count_total");
        assert_eq!(targets.len(), 4, "{text}");
        assert_eq!(
            targets[1],
            "sluice_target_new_flow_count_total{target_group=\"dns\",target=\"[2001:db8::2]:53\"} 2"
        );
        assert_eq!(
            lines_of(&text, "sluice_packets_total"),
            [
                "sluice_packets_total{outcome=\"drop_nat_ports_exhausted\"} 3",
                "sluice_packets_total{outcome=\"forward_nat\"} 7",
                "sluice_packets_total{outcome=\"pass_no_listener\"} 9"
            ]
        );
        assert_eq!(
            lines_of(&text, "sluice_port_allocation_error_count_total"),
            ["sluice_port_allocation_error_count_total 3"]
        );
        assert_eq!(
            lines_of(&text, "sluice_health_check_latency_seconds"),
            ["sluice_health_check_latency_seconds{target_group=\"dns\",target=\"10.0.0.1:53\"} 0.0015"]
        );
    }

    #[test]
    fn help_and_type_once_per_family_before_its_samples() {
        let text = render(&scrape());
        let mut families = Vec::new();
        let mut current = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap();
                assert!(!families.contains(&name), "{name} twice in\n{text}");
                families.push(name);
                current = Some(name);
            } else if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap();
                assert!(!families.contains(&name), "HELP of {name} after its TYPE");
            } else {
                let name = line.split(['{', ' ']).next().unwrap();
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|f| Some(*f) == current))
                    .unwrap_or(name);
                assert_eq!(Some(family), current, "{line} outside its family");
            }
        }
        assert_eq!(families.len(), 27, "{families:?}");
        // The same shape with nothing to report: every family, no samples but the global one.
        let empty = render(&Scrape::default());
        assert_eq!(empty.matches("# TYPE ").count(), 27, "{empty}");
        assert!(empty.contains("\nsluice_port_allocation_error_count_total 0\n"));
    }

    #[test]
    fn order_is_stable() {
        assert_eq!(render(&scrape()), render(&scrape()));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escape_label("line\nbreak"), r"line\nbreak");
        let mut scrape = scrape();
        scrape.report.listeners[0].name = "we\"ird\\\n".into();
        let text = render(&scrape);
        assert!(
            text.contains("sluice_processed_packets_total{listener=\"we\\\"ird\\\\\\n\"} 12"),
            "{text}"
        );
    }

    #[test]
    fn address_flag() {
        assert_eq!("off".parse(), Ok(MetricsAddress(None)));
        assert_eq!(
            DEFAULT_ADDRESS.parse(),
            Ok(MetricsAddress(Some("127.0.0.1:9100".parse().unwrap())))
        );
        assert!("localhost".parse::<MetricsAddress>().is_err());
    }
}

#[cfg(test)]
mod proxy_tests {
    use super::*;
    use crate::proxy::metrics::{GroupNumbers, ListenerNumbers};

    #[test]
    fn proxy_families_carry_listener_and_group_numbers() {
        let mut buckets = [0; RESPONSE_TIME_BUCKETS.len()];
        buckets[5..].fill(2);
        let scrape = Scrape {
            proxy: ProxyStats {
                listeners: vec![(
                    "web".into(),
                    ListenerNumbers {
                        requests: 9,
                        elb_5xx: 2,
                        active_connections: 1,
                        ..ListenerNumbers::default()
                    },
                )],
                groups: vec![(
                    "www".into(),
                    GroupNumbers {
                        target_responses: [5, 0, 1, 0],
                        non_sticky_requests: 3,
                        target_connection_errors: 2,
                        response_time_buckets: buckets,
                        response_time_count: 2,
                        response_time_seconds: 0.15,
                    },
                )],
            },
            ..Scrape::default()
        };
        let text = render(&scrape);
        for line in [
            "sluice_request_count_total{listener=\"web\"} 9",
            "sluice_httpcode_elb_5xx_count_total{listener=\"web\"} 2",
            "sluice_active_connection_count{listener=\"web\"} 1",
            "sluice_httpcode_target_count_total{target_group=\"www\",code=\"2xx\"} 5",
            "sluice_httpcode_target_count_total{target_group=\"www\",code=\"4xx\"} 1",
            "sluice_non_sticky_request_count_total{target_group=\"www\"} 3",
            "sluice_target_response_time_seconds_bucket{target_group=\"www\",le=\"0.05\"} 0",
            "sluice_target_response_time_seconds_bucket{target_group=\"www\",le=\"0.1\"} 2",
            "sluice_target_response_time_seconds_bucket{target_group=\"www\",le=\"+Inf\"} 2",
            "sluice_target_response_time_seconds_sum{target_group=\"www\"} 0.15",
            "sluice_target_response_time_seconds_count{target_group=\"www\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
    }
}
