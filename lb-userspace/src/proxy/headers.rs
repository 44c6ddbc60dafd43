//! Header handling between client and target: hop-by-hop headers removed (those RFC 9110
//! names and those listed in `Connection`), `X-Forwarded-For` appended, `X-Forwarded-Proto`
//! and `X-Forwarded-Port` set, `Host` kept as the client sent it.

use std::net::IpAddr;

use hyper::{
    header::{self, HeaderName, HeaderValue},
    HeaderMap, Version,
};

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");

/// Headers that describe one connection, not the message: names made once, so that removing
/// them costs no parsing per request.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers. With `upgrade` (a protocol upgrade being passed through),
/// `Upgrade` stays and `Connection` becomes just `upgrade`.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // Names listed in Connection that are not hop-by-hop anyway (rare: `Connection:
    // keep-alive` and `close` need no allocation).
    let mut listed: Vec<HeaderName> = Vec::new();
    for token in headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
    {
        let known = token.eq_ignore_ascii_case("close")
            || HOP_BY_HOP
                .iter()
                .any(|name| token.eq_ignore_ascii_case(name.as_str()));
        if !known {
            if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                listed.push(name);
            }
        }
    }
    for name in &listed {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        if !(upgrade && name == header::UPGRADE) {
            headers.remove(name);
        }
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Whether an HTTP/1 request asks for its connection to close after the response: HTTP/1.0
/// (whose keep-alive hyper may refuse for a body of unknown length), or `Connection: close`.
pub fn asks_to_close(version: Version, headers: &HeaderMap) -> bool {
    version < Version::HTTP_11
        || headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("close"))
}

/// Whether a request or response asks for a protocol upgrade (`Connection: upgrade` and an
/// `Upgrade` header).
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// Adds the client to `X-Forwarded-For` (after what earlier proxies wrote, all of it on one
/// line) and sets `X-Forwarded-Proto` and `X-Forwarded-Port` to this listener's, replacing
/// what the client sent.
/// `port`: the listener's port as a header value.
pub fn add_forwarded(headers: &mut HeaderMap, client: IpAddr, proto: &str, port: HeaderValue) {
    let client = client.to_canonical();
    let earlier: Vec<&str> = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    let value = if earlier.is_empty() {
        // The usual case: the address alone, written on the stack (an IPv6 address is at
        // most 45 characters).
        let mut text = [0u8; 64];
        let mut cursor = std::io::Cursor::new(&mut text[..]);
        let _ = std::io::Write::write_fmt(&mut cursor, format_args!("{client}"));
        let end = cursor.position() as usize;
        HeaderValue::from_bytes(&text[..end])
    } else {
        HeaderValue::from_str(&format!("{}, {client}", earlier.join(", ")))
    };
    if let Ok(value) = value {
        headers.insert(X_FORWARDED_FOR, value);
    }
    let proto = match proto {
        "https" => HeaderValue::from_static("https"),
        "http" => HeaderValue::from_static("http"),
        other => HeaderValue::from_str(other).expect("a scheme is a valid header value"),
    };
    headers.insert(X_FORWARDED_PROTO, proto);
    headers.insert(X_FORWARDED_PORT, port);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn http_1_0_and_connection_close_ask_to_close() {
        let none = map(&[]);
        assert!(!asks_to_close(Version::HTTP_11, &none));
        assert!(!asks_to_close(Version::HTTP_2, &none));
        assert!(asks_to_close(Version::HTTP_10, &none));
        assert!(asks_to_close(
            Version::HTTP_10,
            &map(&[("connection", "keep-alive")])
        ));
        assert!(asks_to_close(
            Version::HTTP_11,
            &map(&[("connection", "x-thing, Close")])
        ));
        assert!(!asks_to_close(
            Version::HTTP_11,
            &map(&[("connection", "keep-alive")])
        ));
    }

    #[test]
    fn hop_by_hop_headers_go_and_those_named_in_connection_too() {
        let mut h = map(&[
            ("host", "example.com"),
            ("connection", "keep-alive, X-Secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "Basic x"),
            ("x-kept", "yes"),
        ]);
        remove_hop_by_hop(&mut h, false);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["host", "x-kept"]);
    }

    #[test]
    fn upgrades_keep_upgrade_and_a_minimal_connection() {
        let mut h = map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "abc"),
        ]);
        assert!(wants_upgrade(&h));
        remove_hop_by_hop(&mut h, true);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["sec-websocket-key"], "abc");
        assert!(!wants_upgrade(&map(&[("upgrade", "websocket")])));
        assert!(!wants_upgrade(&map(&[("connection", "upgrade")])));
    }

    #[test]
    fn forwarded_headers_append_and_replace() {
        let mut h = map(&[
            ("x-forwarded-for", "203.0.113.1"),
            ("x-forwarded-for", "198.51.100.2, 192.0.2.3"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-port", "443"),
        ]);
        add_forwarded(
            &mut h,
            "::ffff:10.0.0.9".parse().unwrap(),
            "http",
            80.into(),
        );
        assert_eq!(
            h["x-forwarded-for"],
            "203.0.113.1, 198.51.100.2, 192.0.2.3, 10.0.0.9"
        );
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-port"], "80");
        let mut fresh = HeaderMap::new();
        add_forwarded(&mut fresh, "fd00::2".parse().unwrap(), "https", 443.into());
        assert_eq!(fresh["x-forwarded-for"], "fd00::2");
    }
}
