//! The live status page on the metrics listener (`GET /`): one HTML file with its script and
//! style inline (no external assets, so it works on an isolated host), which fetches
//! `GET /status.json` every two seconds and draws listeners, target groups, targets with
//! health and reasons, rates, drops with their meaning, set-up warnings and recent health
//! transitions. Like `/metrics` it is served on loopback unless `--metrics-address` says
//! otherwise, and it only reads.

use http_body_util::Full;
use hyper::{body::Bytes, header, Response, StatusCode};
use lb_common::stats::{Counter, CounterKind};
use serde::Serialize;

use super::StatsReport;

/// The page.
pub const PAGE_PATH: &str = "/";
/// Its data: the report, with the non-zero drops explained.
pub const JSON_PATH: &str = "/status.json";

const PAGE: &str = include_str!("status_page.html");

/// What `GET /status.json` answers.
#[derive(Debug, Serialize)]
pub struct StatusData<'a> {
    pub version: &'static str,
    pub report: &'a StatsReport,
    /// Non-zero outcome counters that lose packets (drops, malformed), with their meaning.
    pub drops: Vec<DroppedPackets>,
}

#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct DroppedPackets {
    pub counter: &'static str,
    pub packets: u64,
    pub meaning: &'static str,
}

/// The outcome counters of `report` that lost packets, with their meaning, in index order.
pub fn drops(report: &StatsReport) -> Vec<DroppedPackets> {
    Counter::ALL
        .iter()
        .filter(|c| c.kind() == CounterKind::Outcome && loses_packets(c.name()))
        .filter_map(|c| {
            let packets = report.counters.get(c.name())?.packets;
            (packets > 0).then(|| DroppedPackets {
                counter: c.name(),
                packets,
                meaning: c.help().trim(),
            })
        })
        .collect()
}

/// The outcomes under which a packet goes nowhere: dropped or malformed (the names say so).
pub fn loses_packets(counter: &str) -> bool {
    counter.starts_with("drop_") || counter.starts_with("malformed_")
}

pub fn page() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(PAGE.as_bytes())));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // Nothing but the page itself and its own endpoint.
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'",
        ),
    );
    response
}

pub fn json(report: &StatsReport) -> Response<Full<Bytes>> {
    let data = StatusData {
        version: env!("CARGO_PKG_VERSION"),
        report,
        drops: drops(report),
    };
    match serde_json::to_vec(&data) {
        Ok(body) => {
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            response.headers_mut().insert(
                header::CACHE_CONTROL,
                header::HeaderValue::from_static("no-store"),
            );
            response
        }
        Err(e) => super::metrics::text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::CounterStats;

    #[test]
    fn only_nonzero_losses_are_drops() {
        let mut report = StatsReport::default();
        for (name, packets) in [
            ("drop_no_route", 3),
            ("drop_no_target", 0),
            ("forward_nat", 9),
            ("malformed_tcp", 1),
            ("flow_created", 4),
        ] {
            report
                .counters
                .insert(name.into(), CounterStats { packets, bytes: 0 });
        }
        let drops = drops(&report);
        let names: Vec<_> = drops.iter().map(|d| (d.counter, d.packets)).collect();
        assert_eq!(names, [("drop_no_route", 3), ("malformed_tcp", 1)]);
        assert!(
            drops[0].meaning.contains("no route"),
            "{}",
            drops[0].meaning
        );
    }

    #[test]
    fn the_page_needs_nothing_from_elsewhere() {
        for external in ["http://", "https://", "src=\"//", "@import"] {
            assert!(!PAGE.contains(external), "{external} in the page");
        }
        assert!(PAGE.contains(JSON_PATH.trim_start_matches('/')));
    }
}
