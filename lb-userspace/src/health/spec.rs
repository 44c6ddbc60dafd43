//! Health check settings as configured (`HealthCheckSpec`, every field optional) and as used
//! (`HealthCheck`, defaults filled in and validated).

use std::{fmt, ops::RangeInclusive, str::FromStr, time::Duration};

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// Shortest interval accepted. AWS's floor is 5 s, a cost control for a shared fleet; here
/// one host checks its own targets, and fast failover (and fast tests) need sub-second
/// intervals. 50 ms still keeps a typo from turning into a flood of connections.
pub const MIN_INTERVAL: Duration = Duration::from_millis(50);
/// Longest interval accepted (AWS's).
pub const MAX_INTERVAL: Duration = Duration::from_secs(300);
/// Shortest timeout accepted: below this a healthy target on a busy host times out.
pub const MIN_TIMEOUT: Duration = Duration::from_millis(10);
/// Longest timeout accepted (AWS's).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(120);
/// Healthy and unhealthy thresholds, as in AWS.
pub const THRESHOLDS: RangeInclusive<u32> = 2..=10;
/// Status codes a matcher may name, as for an NLB's HTTP health check.
pub const MATCHER_CODES: RangeInclusive<u16> = 200..=599;
/// Longest path accepted (AWS's).
pub const MAX_PATH_LEN: usize = 1024;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HealthCheckError {
    #[error("port 0 is not a port; give 1 to 65535, or leave port out to check each target's traffic port")]
    Port,
    #[error("{field} {value} is outside {min} to {max}")]
    Duration {
        field: &'static str,
        value: ShowDuration,
        min: ShowDuration,
        max: ShowDuration,
    },
    #[error("timeout {timeout}{default} must be less than interval {interval}; {fix}",
        default = if *.timeout_is_default { " (the default)" } else { "" },
        fix = if *.timeout_is_default { "set a shorter timeout" } else { "shorten timeout or lengthen interval" })]
    TimeoutNotBelowInterval {
        timeout: ShowDuration,
        interval: ShowDuration,
        timeout_is_default: bool,
    },
    #[error("{field} {value} is outside {} to {}", THRESHOLDS.start(), THRESHOLDS.end())]
    Threshold { field: &'static str, value: u32 },
    #[error("path '{path}': {reason}")]
    Path { path: String, reason: String },
    #[error(
        "{field} applies to http health checks only; set protocol = \"http\" or remove {field}"
    )]
    HttpOnly { field: &'static str },
}

/// A duration shown as it would be configured ("500ms", "30s").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShowDuration(pub Duration);

impl fmt::Display for ShowDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckProtocol {
    /// Passes when a TCP connection is established.
    #[default]
    Tcp,
    /// Passes when `GET path` answers with a status the matcher accepts.
    Http,
}

impl CheckProtocol {
    /// As in the configuration.
    pub const fn name(self) -> &'static str {
        match self {
            CheckProtocol::Tcp => "tcp",
            CheckProtocol::Http => "http",
        }
    }

    /// AWS's: an HTTP check waits 5 s for its answer, a TCP check 10 s for its connection.
    pub const fn default_timeout(self) -> Duration {
        match self {
            CheckProtocol::Tcp => Duration::from_secs(10),
            CheckProtocol::Http => Duration::from_secs(5),
        }
    }
}

/// `[target_group.health_check]` as written. Durations are whole seconds (`interval = 30`)
/// or a string with a unit, `ms`, `s` or `m` (`interval = "500ms"`).
///
/// ```toml
/// [target_group.health_check]
/// protocol = "http"           # tcp (default) | http
/// port = 8080                 # default: each target's traffic port
/// path = "/healthz"           # http only; default "/"
/// interval = "10s"            # default 30 s; 50 ms to 300 s
/// timeout = "2s"              # default 5 s (http) or 10 s (tcp); below interval
/// healthy_threshold = 3       # default 5; 2 to 10
/// unhealthy_threshold = 2     # default 2; 2 to 10
/// matcher = "200-299"         # http only; default "200"; lists like "200,202"
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSpec {
    #[serde(default)]
    pub protocol: CheckProtocol,
    pub port: Option<u16>,
    pub path: Option<String>,
    #[serde(
        default,
        deserialize_with = "optional_duration",
        serialize_with = "serialize_optional_duration"
    )]
    pub interval: Option<Duration>,
    #[serde(
        default,
        deserialize_with = "optional_duration",
        serialize_with = "serialize_optional_duration"
    )]
    pub timeout: Option<Duration>,
    pub healthy_threshold: Option<u32>,
    pub unhealthy_threshold: Option<u32>,
    pub matcher: Option<Matcher>,
}

/// Health check settings with defaults applied; what the prober and checker use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub protocol: CheckProtocol,
    /// `None`: the target's traffic port.
    pub port: Option<u16>,
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    pub matcher: Matcher,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheckSpec::default()
            .resolve()
            .expect("the defaults are valid")
    }
}

pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 5;
pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 2;
pub const DEFAULT_PATH: &str = "/";

impl HealthCheckSpec {
    /// Fills in the defaults and validates the result.
    pub fn resolve(&self) -> Result<HealthCheck, HealthCheckError> {
        if self.protocol == CheckProtocol::Tcp {
            if self.path.is_some() {
                return Err(HealthCheckError::HttpOnly { field: "path" });
            }
            if self.matcher.is_some() {
                return Err(HealthCheckError::HttpOnly { field: "matcher" });
            }
        }
        if self.port == Some(0) {
            return Err(HealthCheckError::Port);
        }
        let interval = self.interval.unwrap_or(DEFAULT_INTERVAL);
        check_duration("interval", interval, MIN_INTERVAL, MAX_INTERVAL)?;
        let timeout = self
            .timeout
            .unwrap_or_else(|| self.protocol.default_timeout());
        check_duration("timeout", timeout, MIN_TIMEOUT, MAX_TIMEOUT)?;
        // A check that may outlast its interval would overlap the next one.
        if timeout >= interval {
            return Err(HealthCheckError::TimeoutNotBelowInterval {
                timeout: ShowDuration(timeout),
                interval: ShowDuration(interval),
                timeout_is_default: self.timeout.is_none(),
            });
        }
        let healthy_threshold = self.healthy_threshold.unwrap_or(DEFAULT_HEALTHY_THRESHOLD);
        check_threshold("healthy_threshold", healthy_threshold)?;
        let unhealthy_threshold = self
            .unhealthy_threshold
            .unwrap_or(DEFAULT_UNHEALTHY_THRESHOLD);
        check_threshold("unhealthy_threshold", unhealthy_threshold)?;
        let path = self
            .path
            .clone()
            .unwrap_or_else(|| DEFAULT_PATH.to_string());
        check_path(&path)?;
        Ok(HealthCheck {
            protocol: self.protocol,
            port: self.port,
            path,
            interval,
            timeout,
            healthy_threshold,
            unhealthy_threshold,
            matcher: self.matcher.clone().unwrap_or_default(),
        })
    }
}

fn check_duration(
    field: &'static str,
    value: Duration,
    min: Duration,
    max: Duration,
) -> Result<(), HealthCheckError> {
    if (min..=max).contains(&value) {
        return Ok(());
    }
    Err(HealthCheckError::Duration {
        field,
        value: ShowDuration(value),
        min: ShowDuration(min),
        max: ShowDuration(max),
    })
}

fn check_threshold(field: &'static str, value: u32) -> Result<(), HealthCheckError> {
    if THRESHOLDS.contains(&value) {
        return Ok(());
    }
    Err(HealthCheckError::Threshold { field, value })
}

fn check_path(path: &str) -> Result<(), HealthCheckError> {
    let reason = if !path.starts_with('/') {
        "a path starts with '/'".to_string()
    } else if path.len() > MAX_PATH_LEN {
        format!("a path is at most {MAX_PATH_LEN} characters")
    } else if let Err(e) = path.parse::<hyper::Uri>() {
        format!(
            "not a valid request path ({e}); percent-encode spaces and other special characters"
        )
    } else {
        return Ok(());
    };
    Err(HealthCheckError::Path {
        path: path.to_string(),
        reason,
    })
}

impl HealthCheck {
    /// Where to check a target that receives traffic at `target`.
    pub fn probe_addr(&self, target: std::net::SocketAddr) -> std::net::SocketAddr {
        std::net::SocketAddr::new(target.ip(), self.port.unwrap_or(target.port()))
    }
}

/// The HTTP status codes that pass a check: codes, lists and ranges ("200", "200,202",
/// "200-399", "200,300-399").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Matcher {
    ranges: Vec<RangeInclusive<u16>>,
}

impl Default for Matcher {
    fn default() -> Self {
        Matcher {
            ranges: vec![200..=200],
        }
    }
}

impl Matcher {
    pub fn matches(&self, status: u16) -> bool {
        self.ranges.iter().any(|r| r.contains(&status))
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("matcher '{text}': {problem}; use codes {}-{}, lists like 200,202 or ranges like 200-399", MATCHER_CODES.start(), MATCHER_CODES.end())]
pub struct MatcherError {
    text: String,
    problem: String,
}

impl FromStr for Matcher {
    type Err = MatcherError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = |problem: String| MatcherError {
            text: text.to_string(),
            problem,
        };
        let code = |part: &str| -> Result<u16, MatcherError> {
            let part = part.trim();
            match part.parse::<u16>() {
                Ok(code) if MATCHER_CODES.contains(&code) => Ok(code),
                Ok(code) => Err(error(format!(
                    "{code} is not a code from {}-{}",
                    MATCHER_CODES.start(),
                    MATCHER_CODES.end()
                ))),
                Err(_) if part.is_empty() => Err(error("a code is missing".to_string())),
                Err(_) => Err(error(format!("'{part}' is not an HTTP status code"))),
            }
        };
        let mut ranges = Vec::new();
        for item in text.split(',') {
            let range = match item.split_once('-') {
                Some((low, high)) => {
                    let (low, high) = (code(low)?, code(high)?);
                    if low > high {
                        return Err(error(format!("range {low}-{high} is backwards")));
                    }
                    low..=high
                }
                None => {
                    let code = code(item)?;
                    code..=code
                }
            };
            ranges.push(range);
        }
        Ok(Matcher { ranges })
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, range) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if range.start() == range.end() {
                write!(f, "{}", range.start())?;
            } else {
                write!(f, "{}-{}", range.start(), range.end())?;
            }
        }
        Ok(())
    }
}

impl Serialize for Matcher {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Matcher {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Matcher;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("HTTP status codes like \"200\", \"200,202\" or \"200-399\"")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Matcher, E> {
                text.parse().map_err(E::custom)
            }
            // `matcher = 200` reads as naturally as `matcher = "200"`.
            fn visit_i64<E: de::Error>(self, code: i64) -> Result<Matcher, E> {
                self.visit_str(&code.to_string())
            }
            fn visit_u64<E: de::Error>(self, code: u64) -> Result<Matcher, E> {
                self.visit_str(&code.to_string())
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("duration '{0}': use whole seconds (30) or a number with ms, s or m (\"500ms\", \"30s\", \"5m\")")]
pub struct DurationError(String);

/// Parses "500ms", "30s", "5m" or "30" (seconds).
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| DurationError(text.to_string()))?;
    let duration = match unit.trim() {
        "ms" => Duration::from_millis(number),
        "" | "s" => Duration::from_secs(number),
        "m" => Duration::from_secs(number.saturating_mul(60)),
        _ => return Err(DurationError(text.to_string())),
    };
    Ok(duration)
}

pub(crate) fn optional_duration<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    struct Visitor;
    impl de::Visitor<'_> for Visitor {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("whole seconds (30) or a string like \"500ms\", \"30s\" or \"5m\"")
        }
        fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
            parse_duration(text).map_err(E::custom)
        }
        fn visit_u64<E: de::Error>(self, secs: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(secs))
        }
        fn visit_i64<E: de::Error>(self, secs: i64) -> Result<Duration, E> {
            u64::try_from(secs)
                .map(Duration::from_secs)
                .map_err(|_| E::custom(DurationError(secs.to_string())))
        }
    }
    deserializer.deserialize_any(Visitor).map(Some)
}

/// The inverse of [`optional_duration`]: whole seconds as a number, anything finer in
/// milliseconds (`"500ms"`), the finest unit [`parse_duration`] reads.
pub(crate) fn serialize_optional_duration<S: Serializer>(
    duration: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match duration {
        None => serializer.serialize_none(),
        Some(d) if d.subsec_nanos() == 0 => serializer.serialize_u64(d.as_secs()),
        Some(d) => serializer.collect_str(&format_args!("{}ms", d.as_millis())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> HealthCheckSpec {
        toml::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn resolve_err(text: &str) -> String {
        match spec(text).resolve() {
            Err(e) => e.to_string(),
            Ok(check) => panic!("accepted: {check:?}"),
        }
    }

    #[test]
    fn defaults_are_aws_like() {
        let tcp = HealthCheck::default();
        assert_eq!(tcp.protocol, CheckProtocol::Tcp);
        assert_eq!(tcp.port, None);
        assert_eq!(tcp.interval, Duration::from_secs(30));
        assert_eq!(tcp.timeout, Duration::from_secs(10));
        assert_eq!((tcp.healthy_threshold, tcp.unhealthy_threshold), (5, 2));
        let http = spec("protocol = \"http\"").resolve().unwrap();
        assert_eq!(http.timeout, Duration::from_secs(5));
        assert_eq!(http.path, "/");
        assert_eq!(http.matcher.to_string(), "200");
        assert!(http.matcher.matches(200) && !http.matcher.matches(204));
    }

    #[test]
    fn durations_are_seconds_or_strings_with_units() {
        let check = spec("interval = \"500ms\"\ntimeout = \"100ms\"")
            .resolve()
            .unwrap();
        assert_eq!(check.interval, Duration::from_millis(500));
        assert_eq!(check.timeout, Duration::from_millis(100));
        let check = spec("interval = 20\ntimeout = \"2s\"").resolve().unwrap();
        assert_eq!(check.interval, Duration::from_secs(20));
        assert_eq!(
            spec("interval = \"5m\"").interval,
            Some(Duration::from_secs(300))
        );
        let e = toml::from_str::<HealthCheckSpec>("interval = \"5x\"").unwrap_err();
        assert!(
            e.to_string().contains("duration '5x': use whole seconds"),
            "{e}"
        );
        assert!(toml::from_str::<HealthCheckSpec>("interval = -1").is_err());
    }

    #[test]
    fn matchers_take_codes_lists_and_ranges() {
        let m: Matcher = "200,202, 300-399".parse().unwrap();
        assert_eq!(m.to_string(), "200,202,300-399");
        for (code, ok) in [
            (200, true),
            (201, false),
            (202, true),
            (300, true),
            (399, true),
            (400, false),
        ] {
            assert_eq!(m.matches(code), ok, "{code}");
        }
        assert_eq!(
            spec("protocol = \"http\"\nmatcher = 204")
                .matcher
                .unwrap()
                .to_string(),
            "204"
        );
    }

    #[test]
    fn matcher_errors_say_what_is_wrong_and_how_to_write_one() {
        let e = "2x0".parse::<Matcher>().unwrap_err().to_string();
        assert_eq!(e, "matcher '2x0': '2x0' is not an HTTP status code; use codes 200-599, lists like 200,202 or ranges like 200-399");
        let e = "100".parse::<Matcher>().unwrap_err().to_string();
        assert!(e.contains("100 is not a code from 200-599"), "{e}");
        let e = "399-200".parse::<Matcher>().unwrap_err().to_string();
        assert!(e.contains("range 399-200 is backwards"), "{e}");
        let e = "200,".parse::<Matcher>().unwrap_err().to_string();
        assert!(e.contains("a code is missing"), "{e}");
        let e = toml::from_str::<HealthCheckSpec>("matcher = \"2x0\"").unwrap_err();
        assert!(e.to_string().contains("matcher '2x0'"), "{e}");
    }

    #[test]
    fn validation_names_the_setting_and_the_fix() {
        let e = resolve_err("interval = 5\n");
        assert_eq!(
            e,
            "timeout 10s (the default) must be less than interval 5s; set a shorter timeout"
        );
        let e = resolve_err("interval = 5\ntimeout = 5\n");
        assert!(e.contains("shorten timeout or lengthen interval"), "{e}");
        assert_eq!(
            resolve_err("interval = \"10ms\"\ntimeout = \"10ms\""),
            "interval 10ms is outside 50ms to 300s"
        );
        assert_eq!(
            resolve_err("timeout = 121\ninterval = 300"),
            "timeout 121s is outside 10ms to 120s"
        );
        assert_eq!(
            resolve_err("healthy_threshold = 1"),
            "healthy_threshold 1 is outside 2 to 10"
        );
        assert_eq!(
            resolve_err("unhealthy_threshold = 11"),
            "unhealthy_threshold 11 is outside 2 to 10"
        );
        assert!(resolve_err("port = 0").starts_with("port 0 is not a port"));
        assert_eq!(
            resolve_err("path = \"/x\""),
            "path applies to http health checks only; set protocol = \"http\" or remove path"
        );
        assert!(resolve_err("matcher = \"200\"").starts_with("matcher applies to http"));
        let e = resolve_err("protocol = \"http\"\npath = \"healthz\"");
        assert!(e.contains("starts with '/'"), "{e}");
        let e = resolve_err("protocol = \"http\"\npath = \"/a b\"");
        assert!(e.contains("percent-encode"), "{e}");
        assert!(toml::from_str::<HealthCheckSpec>("intervall = 5").is_err());
    }

    #[test]
    fn the_probe_port_defaults_to_the_traffic_port() {
        let target: std::net::SocketAddr = "10.0.0.5:3000".parse().unwrap();
        assert_eq!(HealthCheck::default().probe_addr(target), target);
        let check = spec("port = 8080").resolve().unwrap();
        assert_eq!(check.probe_addr(target), "10.0.0.5:8080".parse().unwrap());
    }
}
