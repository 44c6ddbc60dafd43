//! The common plain HTTP/1.1 request, served without hyper's server (see `server`): its head
//! parsed with `httparse` into the `http` types `forward` works on (the header values share
//! the bytes read), and the response head written from the response's parts, as hyper's
//! server writes it. Pure: no sockets.
//!
//! Only a request whose meaning hyper would give it too is taken: a complete, well-formed
//! HTTP/1.1 `GET` without a body, `Expect`, `Upgrade` or a head near the limit. Anything
//! else, from a malformed byte to a `Content-Length`, is [`Parsed::Hyper`]: its bytes, none
//! of them consumed, go to hyper's server, which answers as it always did (400, 413, 431,
//! 100-continue, upgrades, bodies, HTTP/1.0).

use std::{cell::RefCell, mem::MaybeUninit, time::SystemTime};

use bytes::BytesMut;
use hyper::{
    body::SizeHint,
    header::{self, HeaderName, HeaderValue},
    HeaderMap, Method, Request, StatusCode, Uri, Version,
};

/// The most header fields in a request head (hyper's limit; more is hyper's 431).
pub const MAX_HEADERS: usize = 100;
/// The longest request target taken here (hyper refuses longer ones with 414).
const MAX_TARGET: usize = u16::MAX as usize - 1;

/// What the bytes at the start of a connection's buffer are.
// Matched at once where it is returned: boxing the request would cost an allocation each.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Parsed<B> {
    /// A request this module serves; its head's bytes were taken from the buffer.
    Request(Request<B>),
    /// The head is not complete yet and may still be served here.
    Partial,
    /// For hyper's server: nothing was taken from the buffer.
    Hyper,
}

/// Parses a request head from the start of `buf` (see the module's description). A head
/// that is not complete within `max_head` bytes is hyper's (which answers 431 or 414).
/// `body`: the request's body, empty (a request with one is hyper's).
pub fn parse_request<B>(buf: &mut BytesMut, max_head: usize, body: B) -> Parsed<B> {
    let mut fields = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut request,
        buf,
        &mut fields,
    );
    let len = match parsed {
        // hyper's limit is on the bytes buffered: at it, the head is hyper's to refuse.
        Ok(httparse::Status::Partial) if buf.len() < max_head => return Parsed::Partial,
        Ok(httparse::Status::Complete(len)) if len < max_head => len,
        _ => return Parsed::Hyper,
    };
    if request.method != Some("GET") || request.version != Some(1) {
        return Parsed::Hyper;
    }
    let target = request.path.unwrap_or("");
    if target.len() > MAX_TARGET {
        return Parsed::Hyper;
    }
    // Where the target and each field are in `buf`, so that they can share its bytes once
    // the head is split off (httparse's slices borrow `buf`).
    let base = buf.as_ptr() as usize;
    let span = |s: &[u8]| (s.as_ptr() as usize - base, s.len());
    let target = span(target.as_bytes());
    let mut spans = [((0usize, 0usize), (0usize, 0usize)); MAX_HEADERS];
    let count = request.headers.len();
    for (slot, field) in spans.iter_mut().zip(request.headers.iter()) {
        let name = field.name.as_bytes();
        // What gives a GET a body, an interim response or another protocol: hyper's.
        if name.eq_ignore_ascii_case(b"content-length")
            || name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"expect")
            || name.eq_ignore_ascii_case(b"upgrade")
        {
            return Parsed::Hyper;
        }
        *slot = (span(name), span(field.value));
    }
    // Taken now; given back whole (a copy, rare) if a part turns out invalid.
    let head = buf.split_to(len).freeze();
    let parts = || -> Option<(Uri, HeaderMap)> {
        let (start, target_len) = target;
        let uri = Uri::from_maybe_shared(head.slice(start..start + target_len)).ok()?;
        // Room for the X-Forwarded-* fields `forward` adds, so that the map does not grow.
        let mut headers = HeaderMap::with_capacity(count + 3);
        for &((name, name_len), (value, value_len)) in &spans[..count] {
            let name = HeaderName::from_bytes(&head[name..name + name_len]).ok()?;
            let value =
                HeaderValue::from_maybe_shared(head.slice(value..value + value_len)).ok()?;
            headers.append(name, value);
        }
        Some((uri, headers))
    };
    let Some((uri, headers)) = parts() else {
        let mut whole = BytesMut::with_capacity(head.len() + buf.len());
        whole.extend_from_slice(&head);
        whole.extend_from_slice(buf);
        *buf = whole;
        return Parsed::Hyper;
    };
    let mut request = Request::new(body);
    *request.method_mut() = Method::GET;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = headers;
    Parsed::Request(request)
}

/// Whether a request (HTTP/1.1, see [`parse_request`]) asks to close after its response.
pub fn asks_to_close(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| has_token(v.as_bytes(), b"close"))
}

/// Whether a comma-separated header value lists `token` (ASCII case-insensitive).
fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// How a response body is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Exactly this many bytes (0: none, whatever the body has).
    Length(u64),
    Chunked,
}

/// What a response's body is known to be before it is read (hyper's `BodyLength`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLength {
    /// The body has ended already.
    Empty,
    Known(u64),
    Unknown,
}

impl BodyLength {
    pub fn of(end_stream: bool, hint: &SizeHint) -> BodyLength {
        match (end_stream, hint.exact()) {
            (true, _) => BodyLength::Empty,
            (false, Some(len)) => BodyLength::Known(len),
            (false, None) => BodyLength::Unknown,
        }
    }
}

/// Why a response head cannot be written (hyper's "user header" error: it closes the
/// connection without answering).
#[derive(Debug, PartialEq, Eq)]
pub struct InvalidContentLength;

/// Writes the head of a response to a GET over HTTP/1.1 into `out`, as hyper's server does:
/// the status line, the fields in the map's order with lower-case names, the framing
/// (`Content-Length` kept or added, else `transfer-encoding: chunked`; none for 1xx, 204
/// and 304), `connection: close` added when `close`, and a `date` if there is none.
/// The response's `Connection`, `Transfer-Encoding` and `Trailer` were removed before
/// (hop-by-hop), or never there (the proxy's own responses).
pub fn response_head(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &mut HeaderMap,
    body: BodyLength,
    close: bool,
) -> Result<Framing, InvalidContentLength> {
    if close {
        match headers.entry(header::CONNECTION) {
            header::Entry::Occupied(mut entry) => {
                if !entry.iter().any(|v| has_token(v.as_bytes(), b"close")) {
                    entry.append(HeaderValue::from_static("close"));
                }
            }
            header::Entry::Vacant(entry) => {
                entry.insert(HeaderValue::from_static("close"));
            }
        }
    }
    let start = out.len();
    if status == StatusCode::OK {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let no_length = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let mut framing = None;
    let mut wrote_date = false;
    let mut last_name: Option<&HeaderName> = None;
    for (name, value) in headers.iter() {
        let repeated = last_name == Some(name);
        last_name = Some(name);
        if name == header::CONTENT_LENGTH {
            match body {
                BodyLength::Known(len) => {
                    if repeated {
                        continue;
                    }
                    framing = Some(Framing::Length(len));
                }
                BodyLength::Unknown => {
                    let len = std::str::from_utf8(value.as_bytes())
                        .ok()
                        .and_then(|v| v.parse::<u64>().ok())
                        .filter(|_| value.as_bytes().iter().all(u8::is_ascii_digit))
                        .ok_or(InvalidContentLength)?;
                    match framing {
                        Some(Framing::Length(first)) if first != len => {
                            out.truncate(start);
                            return Err(InvalidContentLength);
                        }
                        Some(Framing::Length(_)) => continue,
                        _ => framing = Some(Framing::Length(len)),
                    }
                }
                // Nothing to send: the field goes (hyper adds its own `content-length: 0`
                // below where one may be).
                BodyLength::Empty => continue,
            }
        } else if name == header::DATE {
            wrote_date = true;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let framing = match (framing, body) {
        (Some(framing), _) => framing,
        (None, BodyLength::Unknown) if no_length => Framing::Length(0),
        (None, BodyLength::Unknown) => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            Framing::Chunked
        }
        (None, BodyLength::Empty | BodyLength::Known(0)) => {
            if !no_length {
                out.extend_from_slice(b"content-length: 0\r\n");
            }
            Framing::Length(0)
        }
        (None, BodyLength::Known(_)) if no_length => Framing::Length(0),
        (None, BodyLength::Known(len)) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(len).as_bytes());
            out.extend_from_slice(b"\r\n");
            Framing::Length(len)
        }
    };
    if !wrote_date {
        out.extend_from_slice(b"date: ");
        date(out);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    // 204, 304 (and 1xx) carry no body, whatever the fields say.
    Ok(if no_length {
        Framing::Length(0)
    } else {
        framing
    })
}

/// Appends a chunk's size line.
pub fn chunk_size(out: &mut Vec<u8>, size: usize) {
    use std::io::Write;
    let _ = write!(out, "{size:X}\r\n");
}

/// The end of a chunked body (trailers are never sent: hyper sends them only for fields a
/// `Trailer` header lists, which is hop-by-hop and removed).
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Appends the current time as an HTTP date, formatted once a second per thread.
fn date(out: &mut Vec<u8>) {
    thread_local! {
        static CACHED: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
    }
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    CACHED.with_borrow_mut(|(at, text)| {
        if *at != secs {
            let formatted = httpdate::fmt_http_date(now);
            if formatted.len() == text.len() {
                text.copy_from_slice(formatted.as_bytes());
                *at = secs;
            } else {
                out.extend_from_slice(formatted.as_bytes());
                return;
            }
        }
        out.extend_from_slice(&text[..]);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> (Parsed<()>, BytesMut) {
        let mut buf = BytesMut::from(bytes);
        let parsed = parse_request(&mut buf, 8192, ());
        (parsed, buf)
    }

    fn is_hyper(bytes: &[u8]) -> bool {
        let (parsed, buf) = parse(bytes);
        assert_eq!(&buf[..], bytes, "nothing taken");
        matches!(parsed, Parsed::Hyper)
    }

    #[test]
    fn a_plain_get_is_parsed_and_its_bytes_taken() {
        let (parsed, buf) = parse(
            b"GET /a/b?c=d HTTP/1.1\r\nHost: example.com\r\nX-Two: 1\r\nx-two: 2\r\nCookie: a=b\r\n\r\nGET /next",
        );
        let Parsed::Request(request) = parsed else {
            panic!("{parsed:?}")
        };
        assert_eq!(&buf[..], b"GET /next", "the next request stays");
        assert_eq!(request.method(), Method::GET);
        assert_eq!(request.version(), Version::HTTP_11);
        assert_eq!(request.uri(), "/a/b?c=d");
        assert_eq!(request.headers()["host"], "example.com");
        let twos: Vec<_> = request.headers().get_all("x-two").iter().collect();
        assert_eq!(twos, ["1", "2"]);
        assert_eq!(request.headers().len(), 4);
    }

    #[test]
    fn absolute_form_and_leading_empty_lines_are_as_hyper_reads_them() {
        let (parsed, _) = parse(b"\r\nGET http://h.example:8080/p?q HTTP/1.1\r\nHost: x\r\n\r\n");
        let Parsed::Request(request) = parsed else {
            panic!("{parsed:?}")
        };
        assert_eq!(request.uri().host(), Some("h.example"));
        assert_eq!(request.uri().path(), "/p");
        // Bare LF line ends: httparse's (so hyper's) leniency, kept.
        let (parsed, buf) = parse(b"GET / HTTP/1.1\nHost: x\n\n\x01");
        assert!(matches!(parsed, Parsed::Request(_)), "{parsed:?}");
        assert_eq!(&buf[..], b"\x01");
    }

    #[test]
    fn an_incomplete_head_waits_until_the_limit() {
        let (parsed, buf) = parse(b"GET / HTTP/1.1\r\nHost: x\r\n");
        assert!(matches!(parsed, Parsed::Partial));
        assert_eq!(buf.len(), 25);
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\nX: "[..]);
        buf.extend_from_slice(&[b'a'; 100]);
        assert!(matches!(parse_request(&mut buf, 100, ()), Parsed::Hyper));
        // A complete head at the limit is hyper's too (it decides 431 against its own count).
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..]);
        assert!(matches!(parse_request(&mut buf, 27, ()), Parsed::Hyper));
        assert!(matches!(
            parse_request(&mut buf, 28, ()),
            Parsed::Request(_)
        ));
    }

    #[test]
    fn what_is_not_a_plain_get_goes_to_hyper_untouched() {
        for head in [
            &b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\na"[..],
            b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"PUT / HTTP/1.1\r\nHost: x\r\n\r\n",
            b"CONNECT x:443 HTTP/1.1\r\nHost: x\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.0\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\ncontent-length: 5\r\n\r\nhello",
            b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n",
            b"GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            assert!(is_hyper(head), "{}", String::from_utf8_lossy(head));
        }
    }

    #[test]
    fn malformed_heads_go_to_hyper_untouched() {
        for head in [
            &b"GET /not a request line\r\nHost: x\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\0b\r\n\r\n",
            b"GET / HTTP/1.1\r\n: empty\r\n\r\n",
            b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
            b"GET http://[::1 HTTP/1.1\r\nHost: x\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        ] {
            assert!(is_hyper(head), "{}", String::from_utf8_lossy(head));
        }
        // 101 fields.
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..101 {
            many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        let mut buf = BytesMut::from(&many[..]);
        assert!(matches!(
            parse_request(&mut buf, 1 << 20, ()),
            Parsed::Hyper
        ));
        assert_eq!(buf.len(), many.len());
    }

    #[test]
    fn a_close_is_found_among_the_tokens() {
        let mut headers = HeaderMap::new();
        assert!(!asks_to_close(&headers));
        headers.append(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        assert!(!asks_to_close(&headers));
        headers.append(header::CONNECTION, HeaderValue::from_static("x-a, Close "));
        assert!(asks_to_close(&headers));
    }

    fn head(
        status: u16,
        fields: &[(&str, &str)],
        body: BodyLength,
        close: bool,
    ) -> (String, Result<Framing, InvalidContentLength>) {
        let mut headers = HeaderMap::new();
        for (name, value) in fields {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        let mut out = Vec::new();
        let framing = response_head(
            &mut out,
            StatusCode::from_u16(status).unwrap(),
            &mut headers,
            body,
            close,
        );
        (String::from_utf8(out).unwrap(), framing)
    }

    #[test]
    fn response_heads_are_written_as_hyper_writes_them() {
        let date = "date: Sat, 05 Dec 2026 13:00:00 GMT";
        let dated = ("date", "Sat, 05 Dec 2026 13:00:00 GMT");
        let (text, framing) = head(
            200,
            &[
                ("content-type", "text/plain"),
                ("content-length", "3"),
                dated,
            ],
            BodyLength::Known(3),
            false,
        );
        assert_eq!(
            text,
            format!("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 3\r\n{date}\r\n\r\n")
        );
        assert_eq!(framing, Ok(Framing::Length(3)));
        // A length from the body alone; another status; connection: close asked.
        let (text, framing) = head(404, &[dated], BodyLength::Known(9), true);
        assert_eq!(
            text,
            format!("HTTP/1.1 404 Not Found\r\n{date}\r\nconnection: close\r\ncontent-length: 9\r\n\r\n")
        );
        assert_eq!(framing, Ok(Framing::Length(9)));
        // Unknown length: the field's, else chunked.
        let (text, framing) = head(
            200,
            &[("content-length", "12"), dated],
            BodyLength::Unknown,
            false,
        );
        assert_eq!(
            text,
            format!("HTTP/1.1 200 OK\r\ncontent-length: 12\r\n{date}\r\n\r\n")
        );
        assert_eq!(framing, Ok(Framing::Length(12)));
        let (text, framing) = head(200, &[dated], BodyLength::Unknown, false);
        assert_eq!(
            text,
            format!("HTTP/1.1 200 OK\r\n{date}\r\ntransfer-encoding: chunked\r\n\r\n")
        );
        assert_eq!(framing, Ok(Framing::Chunked));
        // An empty body: a length field goes, `content-length: 0` is written instead.
        let (text, framing) = head(
            200,
            &[("content-length", "0"), dated],
            BodyLength::Empty,
            false,
        );
        assert_eq!(
            text,
            format!("HTTP/1.1 200 OK\r\n{date}\r\ncontent-length: 0\r\n\r\n")
        );
        assert_eq!(framing, Ok(Framing::Length(0)));
        // 204 and 304: no length added, no body; a 304's field kept when the body is known.
        let (text, framing) = head(204, &[dated], BodyLength::Empty, false);
        assert_eq!(text, format!("HTTP/1.1 204 No Content\r\n{date}\r\n\r\n"));
        assert_eq!(framing, Ok(Framing::Length(0)));
        let (text, framing) = head(
            304,
            &[("content-length", "50"), dated],
            BodyLength::Unknown,
            false,
        );
        assert_eq!(
            text,
            format!("HTTP/1.1 304 Not Modified\r\ncontent-length: 50\r\n{date}\r\n\r\n")
        );
        assert_eq!(framing, Ok(Framing::Length(0)));
        // A status without a reason phrase.
        let (text, _) = head(299, &[dated], BodyLength::Empty, false);
        assert!(text.starts_with("HTTP/1.1 299 <none>\r\n"), "{text}");
        // Two lengths: the first kept for a known body; conflicting ones refused.
        let (text, _) = head(
            200,
            &[("content-length", "3"), ("content-length", "3"), dated],
            BodyLength::Known(3),
            false,
        );
        assert_eq!(text.matches("content-length").count(), 1, "{text}");
        let (_, framing) = head(
            200,
            &[("content-length", "3"), ("content-length", "4")],
            BodyLength::Unknown,
            false,
        );
        assert_eq!(framing, Err(InvalidContentLength));
        let (_, framing) = head(200, &[("content-length", "x")], BodyLength::Unknown, false);
        assert_eq!(framing, Err(InvalidContentLength));
    }

    #[test]
    fn a_date_is_added_when_missing() {
        let (text, _) = head(200, &[], BodyLength::Known(1), false);
        let date = text
            .lines()
            .find_map(|l| l.strip_prefix("date: "))
            .expect("a date");
        assert!(httpdate::parse_http_date(date).is_ok(), "{date}");
        // A connection's existing close is not repeated.
        let (text, _) = head(200, &[("connection", "close")], BodyLength::Known(1), true);
        assert_eq!(text.matches("close").count(), 1, "{text}");
    }

    #[test]
    fn chunk_sizes_are_hex() {
        let mut out = Vec::new();
        chunk_size(&mut out, 4096);
        assert_eq!(out, b"1000\r\n");
    }
}
