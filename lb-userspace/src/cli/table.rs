//! Tables for people: columns as wide as their widest cell, shared by `status` and `stats`.

use std::fmt::Write as _;

use sluice::api::HttpListenerStats;

/// Rows of cells under a header, each column as wide as its widest cell; numbers (columns in
/// `right`) aligned right.
pub(super) fn table(out: &mut String, header: &[&str], rows: &[Vec<String>], right: &[usize]) {
    let widths: Vec<usize> = (0..header.len())
        .map(|i| column_width(header[i], rows.iter().map(|r| r[i].as_str())))
        .collect();
    let line = |cells: Vec<&str>| {
        let cells: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| match right.contains(&i) {
                true => format!("{c:>w$}", w = widths[i]),
                false => format!("{c:<w$}", w = widths[i]),
            })
            .collect();
        cells.join("  ").trim_end().to_string()
    };
    let _ = writeln!(out, "{}", line(header.to_vec()));
    for row in rows {
        let _ = writeln!(out, "{}", line(row.iter().map(String::as_str).collect()));
    }
}

/// The http/https listeners' table (nothing when there are none), for `status` and `stats`.
pub(super) fn http_listeners(out: &mut String, listeners: &[HttpListenerStats]) {
    if listeners.is_empty() {
        return;
    }
    let rows: Vec<Vec<String>> = listeners
        .iter()
        .map(|l| {
            vec![
                l.name.clone(),
                format!(
                    "{}/{}",
                    listener_address(l.address, l.port),
                    l.protocol.name()
                ),
                l.target_group.clone(),
                l.active_connections.to_string(),
                l.new_connections.to_string(),
                l.requests.to_string(),
                l.elb_4xx.to_string(),
                l.elb_5xx.to_string(),
                l.tls_negotiation_errors.to_string(),
                l.rejected_connections.to_string(),
            ]
        })
        .collect();
    table(
        out,
        &[
            "http listener",
            "address",
            "target group",
            "active conns",
            "new conns",
            "requests",
            "elb 4xx",
            "elb 5xx",
            "tls errors",
            "rejected conns",
        ],
        &rows,
        &[3, 4, 5, 6, 7, 8, 9],
    );
}

pub(super) fn column_width<'a>(header: &str, cells: impl Iterator<Item = &'a str>) -> usize {
    cells.map(str::len).max().unwrap_or(0).max(header.len())
}

/// `192.0.2.10:80`, `[2001:db8::1]:53`; port 0 (every port) as `*`.
pub(super) fn listener_address(address: std::net::IpAddr, port: u16) -> String {
    let port = if port == 0 {
        "*".to_string()
    } else {
        port.to_string()
    };
    match address {
        std::net::IpAddr::V4(a) => format!("{a}:{port}"),
        std::net::IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}
