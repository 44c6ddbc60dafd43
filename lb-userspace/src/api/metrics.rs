//! The metrics listener of `sluice run --metrics-address`: `GET /metrics`, the numbers of
//! `GET /v1/stats`, the health checker's latest latencies and the L7 proxy's counters in the
//! Prometheus text exposition format (0.0.4), and the live status page (`GET /`, with its
//! data at `GET /status.json`, see [`super::status_page`]).
//!
//! [`families`] is pure: it turns a [`Scrape`] into metric families, named by Prometheus'
//! conventions (`_total` counters, base units, no `_count` on gauges) with ELB's CloudWatch
//! names in the help; the `prometheus` crate writes the text, with the process collector's
//! `process_*` families. The server runs on the daemon's single-threaded runtime, like the
//! control API, so a scrape never sees half a reload.

use std::{
    collections::BTreeMap, convert::Infallible, io, net::SocketAddr, rc::Rc, str::FromStr,
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

use lb_common::stats::{Counter, CounterKind};
use prometheus::{
    core::Collector,
    proto::{self, MetricFamily, MetricType},
    Encoder as _, TextEncoder,
};

use crate::{
    api::{status_page, CollectError, StatsReport, TargetStatus},
    health::Health,
    proxy::metrics::{GroupNumbers, ProxyStats, RESPONSE_TIME_BUCKETS},
};

/// Where `sluice run` serves metrics and the status page unless told otherwise: loopback, on
/// a port outside 9090-9999, the range of Prometheus' default port allocations for its own
/// components and exporters (9100 is the node exporter's, which Debian's `prometheus` package
/// installs and starts), and not in `/etc/services`.
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:8489";
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
    /// The report behind the status page: `GET /v1/stats` without the walk of the flow table.
    fn status(&self) -> Result<StatsReport, CollectError>;
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
    if ![PATH, status_page::PAGE_PATH, status_page::JSON_PATH].contains(&path) {
        return text(
            StatusCode::NOT_FOUND,
            format!(
                "no {path} here; try {PATH}, or {} for the status page\n",
                status_page::PAGE_PATH
            ),
        );
    }
    if method != Method::GET {
        let mut response = text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{path} takes GET\n"),
        );
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET"));
        return response;
    }
    if path == status_page::PAGE_PATH {
        return status_page::page();
    }
    if path == status_page::JSON_PATH {
        return match source.status() {
            Ok(report) => status_page::json(&report),
            Err(e) => {
                log::error!("status page: {e}");
                text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"))
            }
        };
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

pub(super) fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The exposition text: sluice's families, then the process collector's.
pub fn render(scrape: &Scrape) -> String {
    let mut families = families(scrape);
    families.extend(prometheus::process_collector::ProcessCollector::for_self().collect());
    let mut text = Vec::new();
    // Every family has a name and at least one sample (`families` leaves out empty ones),
    // which is all the encoder checks.
    if let Err(e) = TextEncoder::new().encode(&families, &mut text) {
        log::error!("metrics: encoding: {e}");
    }
    String::from_utf8(text).unwrap_or_default()
}

/// sluice's metric families, in a fixed order; samples follow the report's order (listeners
/// as configured, targets by group then address, counters by index), so two scrapes differ only
/// in values. A family without samples is left out (the text format has no empty families).
pub fn families(scrape: &Scrape) -> Vec<MetricFamily> {
    let report = &scrape.report;
    let mut out = Families::default();

    out.family(
        "sluice_build_info",
        MetricType::GAUGE,
        "Always 1; the labels say which sluice runs.",
    )
    .gauge(&[("version", env!("CARGO_PKG_VERSION"))], 1.0);

    // ELB counts neither `initial` nor draining targets as healthy or unhealthy.
    let hosts = |group: &str, health: Health| {
        report
            .targets
            .iter()
            .filter(|t| {
                t.group == group && t.state == TargetStatus::Active && t.health == health.name()
            })
            .count() as f64
    };
    for (name, health, elb) in [
        (
            "sluice_healthy_targets",
            Health::Healthy,
            "HealthyHostCount",
        ),
        (
            "sluice_unhealthy_targets",
            Health::Unhealthy,
            "UnHealthyHostCount",
        ),
    ] {
        let family = out.family(
            name,
            MetricType::GAUGE,
            &format!(
                "Registered targets (not draining) whose health check state is {} ({elb}).",
                health.name()
            ),
        );
        for group in &report.target_groups {
            family.gauge(&[("target_group", &group.name)], hosts(&group.name, health));
        }
    }
    let family = out.family(
        "sluice_target_health",
        MetricType::GAUGE,
        "1 for the target's health (initial, healthy, unhealthy, or draining once deregistered), 0 for the others.",
    );
    for t in &report.targets {
        let address = t.address.to_string();
        for health in HEALTH_STATES {
            family.gauge(
                &[
                    ("target_group", &t.group),
                    ("target", &address),
                    ("health", health),
                ],
                f64::from(u8::from(t.health == health)),
            );
        }
    }
    let family = out.family(
        "sluice_target_group_failing_open",
        MetricType::GAUGE,
        "1 if the target group has no healthy target, so traffic goes to all of them.",
    );
    for group in &report.target_groups {
        family.gauge(
            &[("target_group", &group.name)],
            f64::from(u8::from(group.failing_open)),
        );
    }

    type Traffic = (&'static str, &'static str, fn(u64, u64, u64) -> u64);
    const TRAFFIC: [Traffic; 3] = [
        ("packets_total", "Packets", |p, _, _| p),
        ("bytes_total", "Bytes (whole frames)", |_, b, _| b),
        ("new_flows_total", "New flows", |_, _, f| f),
    ];
    for (suffix, what, value) in TRAFFIC {
        let family = out.family(
            &format!("sluice_listener_{suffix}"),
            MetricType::COUNTER,
            &format!(
                "{what} the XDP program balanced for the tcp/udp listener since it was added."
            ),
        );
        for l in &report.listeners {
            family.counter(
                &[("listener", &l.name)],
                value(l.packets, l.bytes, l.new_flows),
            );
        }
    }
    for (suffix, what, value) in TRAFFIC {
        let family = out.family(
            &format!("sluice_target_{suffix}"),
            MetricType::COUNTER,
            &format!("{what} the XDP program sent to the target since it was registered, draining included."),
        );
        for t in &report.targets {
            family.counter(
                &[
                    ("target_group", &t.group),
                    ("target", &t.address.to_string()),
                ],
                value(t.packets, t.bytes, t.new_flows),
            );
        }
    }

    for (name, kind, help) in [
        (
            "sluice_packets_total",
            CounterKind::Outcome,
            "Packets the XDP program saw, by what it did with them (pass_*, forward_*, drop_*, malformed_*, ...): each packet counts once, so sum() is every packet.",
        ),
        (
            "sluice_packet_observations_total",
            CounterKind::Observation,
            "Packets with a property worth knowing (vlan_tagged, flow_created, ...), counted in addition to their outcome in sluice_packets_total.",
        ),
    ] {
        let label = match kind {
            CounterKind::Outcome => "outcome",
            CounterKind::Observation => "observation",
        };
        let family = out.family(name, MetricType::COUNTER, help);
        for counter in Counter::ALL.iter().filter(|c| c.kind() == kind) {
            if let Some(value) = report.counters.get(counter.name()) {
                family.counter(&[(label, counter.name())], value.packets);
            }
        }
    }
    let exhausted = report
        .counters
        .get(Counter::DropNatPortsExhausted.name())
        .map_or(0, |c| c.packets);
    out.family(
        "sluice_port_allocation_errors_total",
        MetricType::COUNTER,
        "New nat flows dropped because no source port was free (PortAllocationErrorCount; the same packets as sluice_packets_total{outcome=\"drop_nat_ports_exhausted\"}).",
    )
    .counter(&[], exhausted);
    let family = out.family(
        "sluice_target_port_allocation_errors_total",
        MetricType::COUNTER,
        "New nat flows to the target dropped because no source port was free on it.",
    );
    for t in &report.targets {
        family.counter(
            &[
                ("target_group", &t.group),
                ("target", &t.address.to_string()),
            ],
            t.port_allocation_errors,
        );
    }

    if let Some(store) = report.store.as_ref() {
        out.family(
            "sluice_store_applied_revision",
            MetricType::GAUGE,
            "The revision of the shared store's model this node runs (sluice run --store); compare across nodes.",
        )
        .gauge(&[("store", &store.store)], store.applied_revision.unwrap_or(0) as f64);
        out.family(
            "sluice_store_latest_revision",
            MetricType::GAUGE,
            "The newest revision of the shared store's model this node has seen.",
        )
        .gauge(
            &[("store", &store.store)],
            store.latest_revision.unwrap_or(0) as f64,
        );
        out.family(
            "sluice_store_reachable",
            MetricType::GAUGE,
            "1 while the shared store answers, 0 while this node forwards with its last model without it.",
        )
        .gauge(&[("store", &store.store)], f64::from(u8::from(store.reachable)));
    }

    if let Some(tables) = report.connection_tables.as_ref() {
        out.family(
            "sluice_flow_table_entries",
            MetricType::GAUGE,
            "Live entries of the flow table, as the last complete sweep counted them.",
        )
        .gauge(&[], tables.flows as f64);
        out.family(
            "sluice_nat_translations",
            MetricType::GAUGE,
            "Live nat translations (one source port each), as the last complete sweep counted them.",
        )
        .gauge(&[], tables.nat_translations as f64);
        let family = out.family(
            "sluice_target_nat_translations",
            MetricType::GAUGE,
            "Live nat translations towards the target (source ports in use on the address facing it).",
        );
        for t in &report.targets {
            let n = tables.nat_translations_by_target.get(&t.id).copied();
            family.gauge(
                &[
                    ("target_group", &t.group),
                    ("target", &t.address.to_string()),
                ],
                n.unwrap_or(0) as f64,
            );
        }
    }

    let family = out.family(
        "sluice_health_check_latency_seconds",
        MetricType::GAUGE,
        "Latency of the target's latest health check, passed or failed.",
    );
    for ((group, target), latency) in &scrape.latencies {
        family.gauge(
            &[("target_group", group), ("target", &target.to_string())],
            latency.as_secs_f64(),
        );
    }
    proxy_families(&scrape.proxy, &mut out);
    out.done()
}

/// The health states of `sluice_target_health`, a target's `health` in the status page.
const HEALTH_STATES: [&str; 4] = ["initial", "healthy", "unhealthy", "draining"];

/// The L7 proxy's families (ALB's names in the help).
fn proxy_families(proxy: &ProxyStats, out: &mut Families) {
    type ListenerMetric = (
        &'static str,
        MetricType,
        &'static str,
        fn(&crate::proxy::metrics::ListenerNumbers) -> u64,
    );
    const LISTENER: [ListenerMetric; 5] = [
        ("sluice_http_requests_total", MetricType::COUNTER, "HTTP requests received by the http/https listener, whatever their outcome (RequestCount).", |n| n.requests),
        ("sluice_http_active_connections", MetricType::GAUGE, "Client connections open now, upgraded ones included.", |n| n.active_connections),
        ("sluice_http_new_connections_total", MetricType::COUNTER, "Client connections accepted (NewConnectionCount).", |n| n.new_connections),
        ("sluice_http_client_tls_negotiation_errors_total", MetricType::COUNTER, "https: client connections whose TLS handshake failed or timed out (ClientTLSNegotiationErrorCount).", |n| n.tls_negotiation_errors),
        ("sluice_http_rejected_connections_total", MetricType::COUNTER, "Client connections reset at once because the listener's max_connections or the global --max-connections was reached (RejectedConnectionCount).", |n| n.rejected_connections),
    ];
    for (name, kind, help, value) in LISTENER {
        let family = out.family(name, kind, help);
        for (listener, numbers) in &proxy.listeners {
            let labels = [("listener", listener.as_str())];
            match kind {
                MetricType::GAUGE => family.gauge(&labels, value(numbers) as f64),
                _ => family.counter(&labels, value(numbers)),
            }
        }
    }
    let family = out.family(
        "sluice_http_elb_responses_total",
        MetricType::COUNTER,
        "Error responses sluice made itself, by class: 4xx (400 malformed or without Host, 408 header timeout, 414, 431), 5xx (502 target refused or broke, 503 no target, 504 target timeout) (HTTPCode_ELB_4XX_Count, HTTPCode_ELB_5XX_Count).",
    );
    for (listener, numbers) in &proxy.listeners {
        for (code, value) in [("4xx", numbers.elb_4xx), ("5xx", numbers.elb_5xx)] {
            family.counter(&[("listener", listener), ("code", code)], value);
        }
    }
    let family = out.family(
        "sluice_http_non_sticky_requests_total",
        MetricType::COUNTER,
        "Requests of a sticky target group that could not use an existing sticky session: no cookie, an invalid one, or its target no longer routable (NonStickyRequestCount).",
    );
    for (group, numbers) in &proxy.groups {
        family.counter(&[("target_group", group)], numbers.non_sticky_requests);
    }
    let family = out.family(
        "sluice_http_target_requests_total",
        MetricType::COUNTER,
        "Requests the proxy sent to the target, retries included (RequestCountPerTarget).",
    );
    for (key, numbers) in &proxy.targets {
        family.counter(
            &[
                ("target_group", &key.group),
                ("target", &key.addr.to_string()),
            ],
            numbers.requests,
        );
    }
    let family = out.family(
        "sluice_http_target_errors_total",
        MetricType::COUNTER,
        "Requests to the target that got no response: connection refused, reset or unreachable, response broken, or timed out (TargetConnectionErrorCount and more).",
    );
    for (key, numbers) in &proxy.targets {
        family.counter(
            &[
                ("target_group", &key.group),
                ("target", &key.addr.to_string()),
            ],
            numbers.errors,
        );
    }
    let family = out.family(
        "sluice_http_target_responses_total",
        MetricType::COUNTER,
        "Responses from the target by status class 2xx..5xx (HTTPCode_Target_2XX_Count...).",
    );
    for (key, numbers) in &proxy.targets {
        let address = key.addr.to_string();
        for (i, count) in numbers.responses.target_responses.iter().enumerate() {
            let class = format!("{}xx", i + 2);
            family.counter(
                &[
                    ("target_group", &key.group),
                    ("target", &address),
                    ("code", &class),
                ],
                *count,
            );
        }
    }
    let family = out.family(
        "sluice_http_target_response_time_seconds",
        MetricType::HISTOGRAM,
        "From sending a request to the target to its response head (TargetResponseTime).",
    );
    for (key, numbers) in &proxy.targets {
        family.histogram(
            &[
                ("target_group", &key.group),
                ("target", &key.addr.to_string()),
            ],
            &numbers.responses,
        );
    }
}

/// Metric families under construction.
#[derive(Default)]
struct Families {
    done: Vec<MetricFamily>,
}

impl Families {
    fn family(&mut self, name: &str, kind: MetricType, help: &str) -> &mut MetricFamily {
        let mut family = MetricFamily::default();
        family.set_name(name.to_string());
        family.set_help(help.to_string());
        family.set_field_type(kind);
        self.done.push(family);
        self.done.last_mut().expect("just pushed")
    }

    fn done(self) -> Vec<MetricFamily> {
        self.done
            .into_iter()
            .filter(|f| !f.get_metric().is_empty())
            .collect()
    }
}

/// Adding samples to a family.
trait Samples {
    fn gauge(&mut self, labels: &[(&str, &str)], value: f64);
    fn counter(&mut self, labels: &[(&str, &str)], value: u64);
    fn histogram(&mut self, labels: &[(&str, &str)], numbers: &GroupNumbers);
}

impl Samples for MetricFamily {
    fn gauge(&mut self, labels: &[(&str, &str)], value: f64) {
        let mut gauge = proto::Gauge::default();
        gauge.set_value(value);
        let mut metric = metric(labels);
        metric.set_gauge(gauge);
        self.mut_metric().push(metric);
    }

    fn counter(&mut self, labels: &[(&str, &str)], value: u64) {
        let mut counter = proto::Counter::default();
        counter.set_value(value as f64);
        let mut metric = metric(labels);
        metric.set_counter(counter);
        self.mut_metric().push(metric);
    }

    fn histogram(&mut self, labels: &[(&str, &str)], numbers: &GroupNumbers) {
        let mut histogram = proto::Histogram::default();
        histogram.set_sample_count(numbers.response_time_count);
        histogram.set_sample_sum(numbers.response_time_seconds);
        let buckets = RESPONSE_TIME_BUCKETS
            .iter()
            .zip(numbers.response_time_buckets)
            .map(|(le, count)| {
                let mut bucket = proto::Bucket::default();
                bucket.set_upper_bound(*le);
                bucket.set_cumulative_count(count);
                bucket
            })
            .collect();
        histogram.set_bucket(buckets);
        let mut metric = metric(labels);
        metric.set_histogram(histogram);
        self.mut_metric().push(metric);
    }
}

fn metric(labels: &[(&str, &str)]) -> proto::Metric {
    let pairs = labels
        .iter()
        .map(|(name, value)| {
            let mut pair = proto::LabelPair::default();
            pair.set_name(name.to_string());
            pair.set_value(value.to_string());
            pair
        })
        .collect();
    proto::Metric::from_label(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        api::{CounterStats, ListenerStats, TargetGroupStats, TargetStats},
        model::{Mode, Protocol, TargetKey},
        proxy::metrics::TargetNumbers,
    };

    fn target(group: &str, address: &str, health: &str, state: TargetStatus) -> TargetStats {
        TargetStats {
            group: group.into(),
            address: address.parse().unwrap(),
            id: 0,
            state,
            weight: Some(1),
            health: health.into(),
            packets: 4,
            bytes: 400,
            reason: None,
            new_flows: 2,
            port_allocation_errors: 0,
            rate: Default::default(),
            active_flows: None,
            requests: None,
            request_errors: None,
        }
    }

    fn scrape() -> Scrape {
        let report = StatsReport {
            connection_tables: None,
            announcement: None,
            store: None,
            counters: [
                ("forward_nat", 7),
                ("drop_nat_ports_exhausted", 3),
                ("pass_no_listener", 9),
                ("flow_created", 5),
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
                target("dns", "10.0.0.1:53", "healthy", TargetStatus::Active),
                target("dns", "[2001:db8::2]:53", "unhealthy", TargetStatus::Active),
                target("dns", "10.0.0.3:53", "initial", TargetStatus::Active),
                target("dns", "10.0.0.4:53", "draining", TargetStatus::Draining),
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
            ..StatsReport::default()
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
            lines_of(&text, "sluice_healthy_targets"),
            [
                "sluice_healthy_targets{target_group=\"dns\"} 1",
                "sluice_healthy_targets{target_group=\"empty\"} 0"
            ]
        );
        assert_eq!(
            lines_of(&text, "sluice_unhealthy_targets"),
            [
                "sluice_unhealthy_targets{target_group=\"dns\"} 1",
                "sluice_unhealthy_targets{target_group=\"empty\"} 0"
            ]
        );
        assert_eq!(
            lines_of(&text, "sluice_target_group_failing_open"),
            [
                "sluice_target_group_failing_open{target_group=\"dns\"} 0",
                "sluice_target_group_failing_open{target_group=\"empty\"} 1"
            ]
        );
        let draining: Vec<_> = lines_of(&text, "sluice_target_health")
            .into_iter()
            .filter(|l| l.contains("10.0.0.4:53"))
            .collect();
        assert_eq!(
            draining,
            [
                "sluice_target_health{target_group=\"dns\",target=\"10.0.0.4:53\",health=\"initial\"} 0",
                "sluice_target_health{target_group=\"dns\",target=\"10.0.0.4:53\",health=\"healthy\"} 0",
                "sluice_target_health{target_group=\"dns\",target=\"10.0.0.4:53\",health=\"unhealthy\"} 0",
                "sluice_target_health{target_group=\"dns\",target=\"10.0.0.4:53\",health=\"draining\"} 1",
            ]
        );
        assert_eq!(
            lines_of(&text, "sluice_listener_packets_total"),
            ["sluice_listener_packets_total{listener=\"dns\"} 12"]
        );
        assert_eq!(
            lines_of(&text, "sluice_listener_bytes_total"),
            ["sluice_listener_bytes_total{listener=\"dns\"} 888"]
        );
        let targets = lines_of(&text, "sluice_target_new_flows_total");
        assert_eq!(targets.len(), 4, "{text}");
        assert_eq!(
            targets[1],
            "sluice_target_new_flows_total{target_group=\"dns\",target=\"[2001:db8::2]:53\"} 2"
        );
        // Outcomes alone in sluice_packets_total, in index order: their sum is every packet.
        assert_eq!(
            lines_of(&text, "sluice_packets_total"),
            [
                "sluice_packets_total{outcome=\"pass_no_listener\"} 9",
                "sluice_packets_total{outcome=\"forward_nat\"} 7",
                "sluice_packets_total{outcome=\"drop_nat_ports_exhausted\"} 3",
            ]
        );
        assert_eq!(
            lines_of(&text, "sluice_packet_observations_total"),
            ["sluice_packet_observations_total{observation=\"flow_created\"} 5"]
        );
        assert_eq!(
            lines_of(&text, "sluice_port_allocation_errors_total"),
            ["sluice_port_allocation_errors_total 3"]
        );
        assert_eq!(
            lines_of(&text, "sluice_health_check_latency_seconds"),
            ["sluice_health_check_latency_seconds{target_group=\"dns\",target=\"10.0.0.1:53\"} 0.0015"]
        );
        assert_eq!(
            lines_of(&text, "sluice_build_info"),
            [format!(
                "sluice_build_info{{version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            )]
        );
        assert!(text.contains("\nprocess_resident_memory_bytes "), "{text}");
    }

    /// promtool's rules, checked here without it (the integration test runs promtool): no
    /// gauge ends in `_count` or `_total`, every counter ends in `_total`, every family has
    /// HELP and TYPE once, before its samples.
    #[test]
    fn names_follow_prometheus_conventions() {
        let mut scrape = scrape();
        scrape.report.connection_tables = Some(Default::default());
        scrape.proxy = proxy();
        let families = families(&scrape);
        assert_eq!(
            families.len(),
            30,
            "{:?}",
            families.iter().map(|f| f.name()).collect::<Vec<_>>()
        );
        for f in &families {
            let name = f.name();
            assert!(name.starts_with("sluice_"), "{name}");
            match f.get_field_type() {
                MetricType::COUNTER => assert!(name.ends_with("_total"), "{name}"),
                _ => assert!(
                    !name.ends_with("_total") && !name.ends_with("_count"),
                    "{name}"
                ),
            }
        }
        let text = render(&scrape);
        let mut seen = Vec::new();
        let mut current = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap();
                assert!(!seen.contains(&name), "{name} twice in\n{text}");
                seen.push(name);
                current = Some(name);
            } else if line.starts_with("# HELP ") {
                continue;
            } else {
                let name = line.split(['{', ' ']).next().unwrap();
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|f| Some(*f) == current))
                    .unwrap_or(name);
                assert_eq!(Some(family), current, "{line} outside its family");
            }
        }
    }

    #[test]
    fn store_mode_shows_revisions_and_reachability() {
        let mut scrape = scrape();
        assert!(lines_of(&render(&scrape), "sluice_store_reachable").is_empty());
        let mut store = crate::store::Follow::new("etcd://e:2379/s".into(), "n1".into());
        store.offer(9);
        store.applied(7);
        store.lost(1, "connection refused".into());
        scrape.report.store = Some(store.status().clone());
        let text = render(&scrape);
        assert_eq!(
            lines_of(&text, "sluice_store_applied_revision"),
            ["sluice_store_applied_revision{store=\"etcd://e:2379/s\"} 7"]
        );
        assert_eq!(
            lines_of(&text, "sluice_store_latest_revision"),
            ["sluice_store_latest_revision{store=\"etcd://e:2379/s\"} 9"]
        );
        assert_eq!(
            lines_of(&text, "sluice_store_reachable"),
            ["sluice_store_reachable{store=\"etcd://e:2379/s\"} 0"]
        );
    }

    #[test]
    fn order_is_stable() {
        let a = families(&scrape());
        assert_eq!(a, families(&scrape()));
    }

    #[test]
    fn label_values_are_escaped() {
        let mut scrape = scrape();
        scrape.report.listeners[0].name = "we\"ird\\\n".into();
        let text = render(&scrape);
        assert!(
            text.contains("sluice_listener_packets_total{listener=\"we\\\"ird\\\\\\n\"} 12"),
            "{text}"
        );
    }

    struct Fixed(Scrape);

    impl Source for Fixed {
        fn scrape(&self) -> Result<Scrape, CollectError> {
            Ok(self.0.clone())
        }
        fn status(&self) -> Result<StatsReport, CollectError> {
            Ok(self.0.report.clone())
        }
    }

    fn body(response: Response<Full<Bytes>>) -> (StatusCode, String, String) {
        use http_body_util::BodyExt;
        let status = response.status();
        let kind = response.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_string();
        // A `Full` body is ready at once.
        let collected = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(response.into_body().collect());
        let bytes = match collected {
            Ok(collected) => collected.to_bytes(),
            Err(never) => match never {},
        };
        (status, kind, String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[test]
    fn the_listener_serves_metrics_the_page_and_its_data() {
        let mut fixed = scrape();
        fixed.report.counters.insert(
            "drop_no_target".into(),
            CounterStats {
                packets: 2,
                bytes: 120,
            },
        );
        let source = Fixed(fixed);
        let (status, kind, text) = body(respond(&source, &Method::GET, PATH));
        assert_eq!((status, kind.as_str()), (StatusCode::OK, CONTENT_TYPE));
        assert!(text.contains("sluice_listener_packets_total"), "{text}");
        let (status, kind, page) = body(respond(&source, &Method::GET, "/"));
        assert_eq!(status, StatusCode::OK);
        assert_eq!(kind, "text/html; charset=utf-8");
        assert!(page.contains("<title>sluice status</title>"));
        let (status, kind, json) = body(respond(&source, &Method::GET, "/status.json"));
        assert_eq!(
            (status, kind.as_str()),
            (StatusCode::OK, "application/json")
        );
        let json: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(json["report"]["listeners"][0]["name"], "dns");
        assert_eq!(json["drops"][0]["counter"], "drop_no_target");
        assert_eq!(json["drops"][0]["packets"], 2);
        let (status, _, text) = body(respond(&source, &Method::GET, "/nothing"));
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(
            text,
            "no /nothing here; try /metrics, or / for the status page\n"
        );
        let (status, _, text) = body(respond(&source, &Method::POST, "/status.json"));
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(text, "/status.json takes GET\n");
    }

    #[test]
    fn address_flag() {
        assert_eq!("off".parse(), Ok(MetricsAddress(None)));
        assert_eq!(
            DEFAULT_ADDRESS.parse(),
            Ok(MetricsAddress(Some("127.0.0.1:8489".parse().unwrap())))
        );
        assert!("localhost".parse::<MetricsAddress>().is_err());
    }

    fn proxy() -> ProxyStats {
        use crate::proxy::metrics::ListenerNumbers;
        let mut buckets = [0; RESPONSE_TIME_BUCKETS.len()];
        buckets[5..].fill(2);
        let responses = GroupNumbers {
            target_responses: [5, 0, 1, 0],
            non_sticky_requests: 3,
            target_connection_errors: 2,
            response_time_buckets: buckets,
            response_time_count: 2,
            response_time_seconds: 0.15,
        };
        ProxyStats {
            listeners: vec![(
                "web".into(),
                ListenerNumbers {
                    requests: 9,
                    elb_5xx: 2,
                    active_connections: 1,
                    ..ListenerNumbers::default()
                },
            )],
            groups: vec![("www".into(), responses.clone())],
            targets: vec![(
                TargetKey {
                    group: "www".into(),
                    addr: "10.0.0.9:80".parse().unwrap(),
                },
                TargetNumbers {
                    requests: 8,
                    errors: 2,
                    responses,
                },
            )],
        }
    }

    #[test]
    fn proxy_families_carry_listener_group_and_target_numbers() {
        let text = render(&Scrape {
            proxy: proxy(),
            ..Scrape::default()
        });
        let t = "target_group=\"www\",target=\"10.0.0.9:80\"";
        for line in [
            "sluice_http_requests_total{listener=\"web\"} 9".to_string(),
            "sluice_http_elb_responses_total{listener=\"web\",code=\"5xx\"} 2".into(),
            "sluice_http_active_connections{listener=\"web\"} 1".into(),
            "sluice_http_non_sticky_requests_total{target_group=\"www\"} 3".into(),
            format!("sluice_http_target_requests_total{{{t}}} 8"),
            format!("sluice_http_target_errors_total{{{t}}} 2"),
            format!("sluice_http_target_responses_total{{{t},code=\"2xx\"}} 5"),
            format!("sluice_http_target_responses_total{{{t},code=\"4xx\"}} 1"),
            format!("sluice_http_target_response_time_seconds_bucket{{{t},le=\"0.05\"}} 0"),
            format!("sluice_http_target_response_time_seconds_bucket{{{t},le=\"0.1\"}} 2"),
            format!("sluice_http_target_response_time_seconds_bucket{{{t},le=\"+Inf\"}} 2"),
            format!("sluice_http_target_response_time_seconds_sum{{{t}}} 0.15"),
            format!("sluice_http_target_response_time_seconds_count{{{t}}} 2"),
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
    }
}
