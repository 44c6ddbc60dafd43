//! `--store etcd://host:port[,host:port...]/prefix`.

use std::{fmt, str::FromStr};

/// Where the shared model lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreUrl {
    /// `host:port` of each etcd member.
    pub endpoints: Vec<String>,
    /// The key prefix, with its leading `/` and without a trailing one (`/sluice`).
    pub prefix: String,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("--store {0:?}: only etcd is supported; write etcd://HOST:PORT[,HOST:PORT...]/PREFIX, e.g. etcd://10.0.0.5:2379/sluice")]
    Scheme(String),
    #[error("--store {0:?} names no key prefix: add one after the endpoints, e.g. etcd://10.0.0.5:2379/sluice (every node of one cluster uses the same)")]
    NoPrefix(String),
    #[error("--store {url:?}: endpoint {endpoint:?} is not HOST:PORT (e.g. 10.0.0.5:2379)")]
    Endpoint { url: String, endpoint: String },
}

/// etcd's client port.
const DEFAULT_PORT: u16 = 2379;

impl FromStr for StoreUrl {
    type Err = UrlError;

    fn from_str(url: &str) -> Result<StoreUrl, UrlError> {
        let rest = url
            .strip_prefix("etcd://")
            .ok_or_else(|| UrlError::Scheme(url.into()))?;
        let (hosts, prefix) = rest
            .split_once('/')
            .ok_or_else(|| UrlError::NoPrefix(url.into()))?;
        let prefix = prefix.trim_end_matches('/');
        if prefix.is_empty() {
            return Err(UrlError::NoPrefix(url.into()));
        }
        let endpoints = hosts
            .split(',')
            .map(|endpoint| endpoint_of(url, endpoint))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(StoreUrl {
            endpoints,
            prefix: format!("/{prefix}"),
        })
    }
}

fn endpoint_of(url: &str, endpoint: &str) -> Result<String, UrlError> {
    let bad = || UrlError::Endpoint {
        url: url.into(),
        endpoint: endpoint.into(),
    };
    // [v6]:port, host:port or host alone.
    let (host, port) = match endpoint.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && !port.contains(']') => {
            (host, port.parse::<u16>().map_err(|_| bad())?)
        }
        _ => (endpoint, DEFAULT_PORT),
    };
    let plain = host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    let v6 = host.starts_with('[') && host.ends_with(']') && host.len() > 2;
    if host.is_empty() || port == 0 || !(plain || v6) {
        return Err(bad());
    }
    Ok(format!("{host}:{port}"))
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "etcd://{}{}", self.endpoints.join(","), self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_and_prefix() {
        let url: StoreUrl = "etcd://10.0.0.5:2379,10.0.0.6:2380/sluice/"
            .parse()
            .unwrap();
        assert_eq!(url.endpoints, ["10.0.0.5:2379", "10.0.0.6:2380"]);
        assert_eq!(url.prefix, "/sluice");
        assert_eq!(url.to_string(), "etcd://10.0.0.5:2379,10.0.0.6:2380/sluice");
        let url: StoreUrl = "etcd://etcd-1/a/b".parse().unwrap();
        assert_eq!(url.endpoints, ["etcd-1:2379"]);
        assert_eq!(url.prefix, "/a/b");
        let url: StoreUrl = "etcd://[fd00::5]:2379/s".parse().unwrap();
        assert_eq!(url.endpoints, ["[fd00::5]:2379"]);
    }

    #[test]
    fn malformed_urls_say_what_to_write() {
        for (url, want) in [
            ("http://10.0.0.5:2379/sluice", "only etcd is supported"),
            ("10.0.0.5:2379", "only etcd is supported"),
            ("etcd://10.0.0.5:2379", "names no key prefix"),
            ("etcd://10.0.0.5:2379/", "names no key prefix"),
            ("etcd://10.0.0.5:port/s", "is not HOST:PORT"),
            ("etcd://10.0.0.5:0/s", "is not HOST:PORT"),
            ("etcd://,10.0.0.5/s", "is not HOST:PORT"),
            ("etcd://a b:1/s", "is not HOST:PORT"),
        ] {
            let e = url.parse::<StoreUrl>().unwrap_err().to_string();
            assert!(e.contains(want), "{url}: {e}");
        }
    }
}
