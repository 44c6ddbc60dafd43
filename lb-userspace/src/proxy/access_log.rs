//! One line per request, with ALB's access-log fields that matter, space separated in ALB's
//! order (quoted where a field may hold spaces; `-` for none, `-1` for a time that does not
//! apply):
//!
//! ```text
//! type time listener client:port target:port request_processing_time target_processing_time
//! response_processing_time elb_status_code target_status_code received_bytes sent_bytes
//! "request" "user_agent" ssl_cipher ssl_protocol target_group matched_rule_priority
//! "actions_executed" "redirect_url" "error_reason"
//! ```
//! Lines go to the log target `sluice::access` (at `info`), or are appended to the
//! listener's `access_log` file.

use std::{
    fs::File,
    io::Write,
    net::SocketAddr,
    path::Path,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// Where a listener's lines go.
#[derive(Clone, Debug)]
pub enum Sink {
    Log,
    /// Opened for appending; each line is one `write` of the whole line, so lines from
    /// concurrent requests never interleave and no lock is needed.
    File(Arc<File>),
}

impl Sink {
    pub fn open(path: Option<&Path>) -> std::io::Result<Sink> {
        match path {
            None => Ok(Sink::Log),
            Some(path) => Ok(Sink::File(Arc::new(
                crate::model::files::open_append_regular(path)?,
            ))),
        }
    }

    /// Whether a line would be written: what a request builds for its record is built only
    /// then.
    pub fn enabled(&self) -> bool {
        match self {
            Sink::Log => log::log_enabled!(target: "sluice::access", log::Level::Info),
            Sink::File(_) => true,
        }
    }

    /// Writes `record`'s line, unless nobody would read it: the line is only built when the
    /// `sluice::access` log target is enabled (`RUST_LOG=...,sluice::access=off` turns the
    /// access log off at no cost per request) or a file is configured.
    pub fn record(&self, record: &Record) {
        if self.enabled() {
            self.write(&record.line());
        }
    }

    pub fn write(&self, line: &str) {
        match self {
            Sink::Log => log::info!(target: "sluice::access", "{line}"),
            Sink::File(file) => {
                let mut text = String::with_capacity(line.len() + 1);
                text.push_str(line);
                text.push('\n');
                if let Err(e) = (&**file).write_all(text.as_bytes()) {
                    log::warn!("writing the access log: {e}");
                }
            }
        }
    }
}

/// What is known of a finished request.
#[derive(Clone, Debug, Default)]
pub struct Record {
    /// `http`, `https` or `h2`.
    pub kind: &'static str,
    pub time: Option<SystemTime>,
    pub listener: String,
    pub client: Option<SocketAddr>,
    pub target: Option<SocketAddr>,
    /// From the request head to sending it to the target.
    pub request_processing: Option<Duration>,
    /// From sending to the target's response head.
    pub target_processing: Option<Duration>,
    /// From the response head to the end of the response.
    pub response_processing: Option<Duration>,
    pub elb_status: u16,
    pub target_status: Option<u16>,
    pub received_bytes: u64,
    pub sent_bytes: u64,
    /// `METHOD URL VERSION`.
    pub request: String,
    pub user_agent: Option<String>,
    pub ssl_cipher: Option<String>,
    pub ssl_protocol: Option<String>,
    pub target_group: Option<String>,
    /// None for the default rule (logged `0`, as ALB's default rule).
    pub rule: Option<u32>,
    /// `forward`, `redirect`, `fixed-response`, ...
    pub action: &'static str,
    pub redirect_url: Option<String>,
    pub error_reason: Option<&'static str>,
}

impl Record {
    pub fn line(&self) -> String {
        let time = |d: Option<Duration>| match d {
            Some(d) => format!("{:.6}", d.as_secs_f64()),
            None => "-1".to_string(),
        };
        let or_dash = |s: Option<String>| s.unwrap_or_else(|| "-".to_string());
        format!(
            "{} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {} {}",
            self.kind,
            rfc3339(self.time.unwrap_or_else(SystemTime::now)),
            self.listener,
            or_dash(self.client.map(show_addr)),
            or_dash(self.target.map(show_addr)),
            time(self.request_processing),
            time(self.target_processing),
            time(self.response_processing),
            self.elb_status,
            or_dash(self.target_status.map(|s| s.to_string())),
            self.received_bytes,
            self.sent_bytes,
            quote(&self.request),
            quote(self.user_agent.as_deref().unwrap_or("-")),
            or_dash(self.ssl_cipher.clone()),
            or_dash(self.ssl_protocol.clone()),
            or_dash(self.target_group.clone()),
            self.rule.unwrap_or(0),
            quote(self.action),
            quote(self.redirect_url.as_deref().unwrap_or("-")),
            quote(self.error_reason.unwrap_or("-")),
        )
    }
}

/// `10.0.0.1:80`, and IPv4-mapped IPv6 peers as IPv4.
fn show_addr(addr: SocketAddr) -> String {
    SocketAddr::new(addr.ip().to_canonical(), addr.port()).to_string()
}

/// Double quotes around, with `"` and `\` escaped and control characters dropped, so a
/// hostile user agent cannot forge fields or lines.
fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `2026-11-21T10:00:00.123456Z`.
pub fn rfc3339(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60,
        since.subsec_micros()
    )
}

/// Howard Hinnant's days-to-civil-date algorithm (proleptic Gregorian, UTC).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let t = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.123456Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000000Z");
    }

    #[test]
    fn a_line_has_albs_fields_in_order() {
        let record = Record {
            kind: "http",
            time: Some(UNIX_EPOCH),
            listener: "web".into(),
            client: Some("[::ffff:10.0.0.2]:5555".parse().unwrap()),
            target: Some("10.0.1.10:3000".parse().unwrap()),
            request_processing: Some(Duration::from_micros(10)),
            target_processing: Some(Duration::from_millis(2)),
            response_processing: Some(Duration::ZERO),
            elb_status: 200,
            target_status: Some(200),
            received_bytes: 78,
            sent_bytes: 120,
            request: "GET http://www.example.com:80/a?b=1 HTTP/1.1".into(),
            user_agent: Some("curl/8 \"evil\"\nline".into()),
            target_group: Some("www".into()),
            rule: Some(10),
            action: "forward",
            ..Record::default()
        };
        assert_eq!(
            record.line(),
            "http 1970-01-01T00:00:00.000000Z web 10.0.0.2:5555 10.0.1.10:3000 0.000010 0.002000 0.000000 200 200 78 120 \"GET http://www.example.com:80/a?b=1 HTTP/1.1\" \"curl/8 \\\"evil\\\"line\" - - www 10 \"forward\" \"-\" \"-\""
        );
        let refused = Record {
            kind: "http",
            time: Some(UNIX_EPOCH),
            listener: "web".into(),
            elb_status: 503,
            action: "forward",
            error_reason: Some("NoTarget"),
            ..Record::default()
        };
        assert!(
            refused.line().contains(" - - -1 -1 -1 503 - 0 0 "),
            "{}",
            refused.line()
        );
    }
}
