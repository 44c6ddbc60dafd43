//! The one authority (host and port) of a request, per RFC 9112 section 3.2 and RFC 9113
//! section 8.3.1: rules match it, the target receives it as `Host`, and the access log shows
//! it. A request whose authority is missing where required, ambiguous or invalid gets 400.
//!
//! - HTTP/1.1 in origin-form: exactly one valid `Host` header.
//! - Absolute-form (`GET http://a.example/ HTTP/1.1`): the request target's authority; the
//!   `Host` header, whatever it says, is replaced by it (RFC 9112 section 3.2.2).
//! - HTTP/2: `:authority`, else `host`; both present and different is malformed.
//! - HTTP/1.0 may omit `Host`; the target then gets none from the client (the proxy adds
//!   the listener's own address, since it speaks HTTP/1.1 to targets).

use std::borrow::Cow;

use hyper::{header, http::uri::Authority as UriAuthority, HeaderMap, Uri, Version};

/// A validated authority: `host` lower case (IPv6 in brackets), `port` if one was given;
/// `host` borrows from the request unless it had to be lower-cased.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authority<'a> {
    pub host: Cow<'a, str>,
    pub port: Option<u16>,
}

impl Authority<'_> {
    /// As a `Host` header value.
    pub fn header_value(&self) -> String {
        match self.port {
            Some(port) => format!("{}:{port}", self.host),
            None => self.host.to_string(),
        }
    }

    /// Whether `value` is [`Authority::header_value`], without building it.
    pub fn is_header_value(&self, value: &[u8]) -> bool {
        match self.port {
            None => value == self.host.as_bytes(),
            Some(port) => value
                .strip_prefix(self.host.as_bytes())
                .is_some_and(|rest| {
                    let mut digits = [0u8; 6];
                    let mut cursor = std::io::Cursor::new(&mut digits[..]);
                    let _ = std::io::Write::write_fmt(&mut cursor, format_args!(":{port}"));
                    let end = cursor.position() as usize;
                    rest == &digits[..end]
                }),
        }
    }

    #[cfg(test)]
    fn into_owned(self) -> Authority<'static> {
        Authority {
            host: Cow::Owned(self.host.into_owned()),
            port: self.port,
        }
    }
}

/// Why a request's authority is refused (400).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthorityError {
    #[error("HTTP/1.1 requests need a Host header")]
    Missing,
    #[error("the request has {0} Host headers; it must have one")]
    Duplicate(usize),
    #[error("the Host header is not a valid authority: {0}")]
    Invalid(&'static str),
    #[error("the :authority and host of the HTTP/2 request differ")]
    Conflicting,
}

/// The authority of a request with this version, target and headers; `None` for an HTTP/1.0
/// request without one.
pub fn of_request<'a>(
    version: Version,
    uri: &'a Uri,
    headers: &'a HeaderMap,
) -> Result<Option<Authority<'a>>, AuthorityError> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let first = hosts.next();
    let more = hosts.count();
    if more > 0 {
        return Err(AuthorityError::Duplicate(more + 1));
    }
    let host = match first {
        Some(value) => Some(parse(value.as_bytes())?),
        None => None,
    };
    let target = match uri.authority() {
        Some(authority) => Some(from_uri(authority)?),
        None => None,
    };
    match (version, target, host) {
        (Version::HTTP_2, Some(target), Some(host)) if target != host => {
            Err(AuthorityError::Conflicting)
        }
        // Absolute-form (and HTTP/2's :authority): the request target wins.
        (_, Some(target), _) => Ok(Some(target)),
        (_, None, Some(host)) => Ok(Some(host)),
        (Version::HTTP_09 | Version::HTTP_10, None, None) => Ok(None),
        (_, None, None) => Err(AuthorityError::Missing),
    }
}

fn from_uri(authority: &UriAuthority) -> Result<Authority<'_>, AuthorityError> {
    parse(authority.as_str().as_bytes())
}

/// `host [ ":" port ]` with host a reg-name (letters, digits, `-`, `_`, dots between
/// labels), an IPv4 address or a bracketed IPv6 address; no userinfo, path, list or
/// whitespace, no trailing dot, port 0 to 65535 in digits.
pub fn parse(bytes: &[u8]) -> Result<Authority<'_>, AuthorityError> {
    let text = std::str::from_utf8(bytes).map_err(|_| AuthorityError::Invalid("not ASCII"))?;
    if text.is_empty() {
        return Err(AuthorityError::Invalid("empty"));
    }
    if let Some(c) = text
        .chars()
        .find(|c| matches!(c, '@' | '/' | ',' | '?' | '#' | '\\'))
    {
        return Err(AuthorityError::Invalid(match c {
            '@' => "it carries userinfo",
            ',' => "it is a list",
            _ => "it carries a path",
        }));
    }
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let Some((inside, after)) = rest.split_once(']') else {
            return Err(AuthorityError::Invalid("an unclosed IPv6 bracket"));
        };
        if inside.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(AuthorityError::Invalid("not an IPv6 address in brackets"));
        }
        let port = match after {
            "" => None,
            _ => Some(
                after
                    .strip_prefix(':')
                    .ok_or(AuthorityError::Invalid("text after the IPv6 address"))?,
            ),
        };
        (
            Cow::Owned(format!("[{}]", inside.to_ascii_lowercase())),
            port,
        )
    } else {
        let (name, port) = match text.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (text, None),
        };
        valid_name(name)?;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(name.to_ascii_lowercase())
        } else {
            Cow::Borrowed(name)
        };
        (name, port)
    };
    let port = match port {
        None => None,
        Some(digits) => {
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.len() > 5
            {
                return Err(AuthorityError::Invalid("a port that is not a number"));
            }
            Some(
                digits
                    .parse::<u16>()
                    .map_err(|_| AuthorityError::Invalid("a port above 65535"))?,
            )
        }
    };
    Ok(Authority { host, port })
}

fn valid_name(name: &str) -> Result<(), AuthorityError> {
    if name.is_empty() {
        return Err(AuthorityError::Invalid("an empty host"));
    }
    if name.ends_with('.') {
        return Err(AuthorityError::Invalid("a trailing dot"));
    }
    if name.len() > 253 {
        return Err(AuthorityError::Invalid("a host longer than 253 characters"));
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(AuthorityError::Invalid("an empty or overlong label"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(AuthorityError::Invalid("characters a host cannot have"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use hyper::header::HeaderValue;

    use super::*;

    fn headers(hosts: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for host in hosts {
            map.append(header::HOST, HeaderValue::from_str(host).unwrap());
        }
        map
    }

    fn of(
        version: Version,
        uri: &str,
        hosts: &[&str],
    ) -> Result<Option<Authority<'static>>, AuthorityError> {
        let uri = uri.parse().unwrap();
        let headers = headers(hosts);
        of_request(version, &uri, &headers).map(|a| a.map(Authority::into_owned))
    }

    fn host(h: &str, port: Option<u16>) -> Option<Authority<'_>> {
        Some(Authority {
            host: h.into(),
            port,
        })
    }

    #[test]
    fn origin_form_takes_the_one_host_header() {
        assert_eq!(
            of(Version::HTTP_11, "/a", &["API.example.com:8080"]),
            Ok(host("api.example.com", Some(8080)))
        );
        assert_eq!(
            of(Version::HTTP_11, "/a", &[]),
            Err(AuthorityError::Missing)
        );
        assert_eq!(
            of(Version::HTTP_11, "/a", &["a.example", "b.example"]),
            Err(AuthorityError::Duplicate(2))
        );
        assert_eq!(of(Version::HTTP_10, "/a", &[]), Ok(None));
    }

    #[test]
    fn absolute_form_replaces_the_host_header() {
        assert_eq!(
            of(
                Version::HTTP_11,
                "http://internal.example/x",
                &["public.example"]
            ),
            Ok(host("internal.example", None))
        );
    }

    #[test]
    fn http2_authority_and_host_must_agree() {
        assert_eq!(
            of(Version::HTTP_2, "https://a.example/x", &["b.example"]),
            Err(AuthorityError::Conflicting)
        );
        assert_eq!(
            of(Version::HTTP_2, "https://a.example/x", &["A.example"]),
            Ok(host("a.example", None))
        );
        assert_eq!(
            of(Version::HTTP_2, "/x", &["b.example"]),
            Ok(host("b.example", None))
        );
    }

    #[test]
    fn invalid_hosts_are_refused() {
        for bad in [
            "a.example.",
            "a.example:99999",
            "a.example:8o",
            "a.example:",
            "user@a.example",
            "a.example/path",
            "a.example,b.example",
            "a..example",
            "a example",
            "[::1",
            "[nope]:80",
            "",
        ] {
            let parsed = parse(bad.as_bytes());
            assert!(parsed.is_err(), "{bad:?} was accepted: {parsed:?}");
        }
        assert_eq!(
            parse(b"[2001:DB8::1]:443"),
            Ok(Authority {
                host: "[2001:db8::1]".into(),
                port: Some(443)
            })
        );
        assert_eq!(parse(b"10.0.0.1").unwrap().header_value(), "10.0.0.1");
        for (value, is) in [
            ("a.example:8080", true),
            ("a.example:808", false),
            ("a.example", false),
            ("A.example:8080", false),
        ] {
            let authority = parse(b"a.example:8080").unwrap();
            assert_eq!(authority.is_header_value(value.as_bytes()), is, "{value}");
        }
        let plain = parse(b"a.example").unwrap();
        assert!(plain.is_header_value(b"a.example"));
        assert!(!plain.is_header_value(b"a.example:80"));
        assert!(matches!(plain.host, Cow::Borrowed(_)), "no allocation");
    }
}
