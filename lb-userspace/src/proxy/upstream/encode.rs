//! The request head as sent to a target, written from the request's parts into the
//! connection's reused buffer, and the framing of a request body.

use hyper::{header, HeaderMap, Method};

/// How a request body goes to the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestFraming {
    /// No body (nothing follows the head).
    Empty,
    /// Exactly this many bytes, as the `Content-Length` sent says.
    Length(u64),
    /// `Transfer-Encoding: chunked`, added to the head.
    Chunked,
}

/// Why a request cannot be sent as it is.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EncodeError {
    #[error("the request's Content-Length is invalid or repeated with different values")]
    ContentLength,
}

/// The framing of a request body: the client's `Content-Length` when it sent one (the body
/// read from it has that length), otherwise the body's own exact size, otherwise chunked.
/// `Transfer-Encoding` is hop-by-hop and was removed before.
pub fn request_framing(
    headers: &HeaderMap,
    end_stream: bool,
    exact_size: Option<u64>,
) -> Result<RequestFraming, EncodeError> {
    if let Some(length) = content_length(headers).map_err(|_| EncodeError::ContentLength)? {
        return Ok(if length == 0 {
            RequestFraming::Empty
        } else {
            RequestFraming::Length(length)
        });
    }
    if end_stream {
        return Ok(RequestFraming::Empty);
    }
    Ok(match exact_size {
        Some(length) => RequestFraming::Length(length),
        None => RequestFraming::Chunked,
    })
}

/// A `Content-Length` that is not a number, or repeated with different numbers.
#[derive(Debug, PartialEq, Eq)]
pub struct InvalidContentLength;

/// `Content-Length`'s value: every field and every comma-separated element must be the
/// same number (RFC 9110 8.6).
pub fn content_length(headers: &HeaderMap) -> Result<Option<u64>, InvalidContentLength> {
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for element in value.as_bytes().split(|b| *b == b',') {
            let element = element.trim_ascii();
            if element.is_empty() || element.len() > 19 || !element.iter().all(u8::is_ascii_digit) {
                return Err(InvalidContentLength);
            }
            let n = element
                .iter()
                .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
            match length {
                Some(seen) if seen != n => return Err(InvalidContentLength),
                _ => length = Some(n),
            }
        }
    }
    Ok(length)
}

/// Appends the request head to `out`: the request line (origin-form) and the headers as
/// they are, with the framing header a body needs that the headers do not already carry.
pub fn request_head(
    out: &mut Vec<u8>,
    method: &Method,
    path_and_query: &str,
    headers: &HeaderMap,
    framing: RequestFraming,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path_and_query.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        RequestFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        RequestFraming::Length(length) if !headers.contains_key(header::CONTENT_LENGTH) => {
            out.extend_from_slice(b"content-length: ");
            push_decimal(out, length);
            out.extend_from_slice(b"\r\n");
        }
        _ => {}
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends a chunk's size line (`<hex>\r\n`).
pub fn chunk_size(out: &mut Vec<u8>, size: usize) {
    let mut digits = [0u8; 16];
    let mut at = digits.len();
    let mut n = size;
    loop {
        at -= 1;
        digits[at] = b"0123456789abcdef"[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
    out.extend_from_slice(b"\r\n");
}

/// The end of a chunked body: the last chunk and no trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

fn push_decimal(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn a_head_is_written_as_the_parts_say_with_the_framing_a_body_needs() {
        let map = headers(&[
            ("host", "example.com"),
            ("x-forwarded-for", "10.0.0.1"),
            ("accept", "a"),
            ("accept", "b"),
        ]);
        let mut out = Vec::new();
        request_head(
            &mut out,
            &Method::GET,
            "/a?b=c",
            &map,
            RequestFraming::Empty,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /a?b=c HTTP/1.1\r\nhost: example.com\r\nx-forwarded-for: 10.0.0.1\r\naccept: a\r\naccept: b\r\n\r\n"
        );
        let mut out = b"old".to_vec();
        out.clear();
        request_head(&mut out, &Method::POST, "/", &map, RequestFraming::Chunked);
        assert!(out.ends_with(b"accept: b\r\ntransfer-encoding: chunked\r\n\r\n"));
        out.clear();
        request_head(
            &mut out,
            &Method::PUT,
            "/",
            &map,
            RequestFraming::Length(1234567),
        );
        assert!(out.ends_with(b"content-length: 1234567\r\n\r\n"));
        // The client's own Content-Length is not repeated.
        let with_length = headers(&[("content-length", "5")]);
        out.clear();
        request_head(
            &mut out,
            &Method::POST,
            "/",
            &with_length,
            RequestFraming::Length(5),
        );
        assert_eq!(out, b"POST / HTTP/1.1\r\ncontent-length: 5\r\n\r\n");
    }

    #[test]
    fn a_body_is_framed_by_its_content_length_else_its_size_else_chunked() {
        let none = HeaderMap::new();
        assert_eq!(
            request_framing(&none, true, Some(0)),
            Ok(RequestFraming::Empty)
        );
        assert_eq!(
            request_framing(&none, false, Some(7)),
            Ok(RequestFraming::Length(7))
        );
        assert_eq!(
            request_framing(&none, false, None),
            Ok(RequestFraming::Chunked)
        );
        let cl = headers(&[("content-length", "12")]);
        assert_eq!(
            request_framing(&cl, false, None),
            Ok(RequestFraming::Length(12))
        );
        let zero = headers(&[("content-length", "0")]);
        assert_eq!(
            request_framing(&zero, true, None),
            Ok(RequestFraming::Empty)
        );
        let same = headers(&[("content-length", "3, 3"), ("content-length", "3")]);
        assert_eq!(content_length(&same), Ok(Some(3)));
        for bad in ["3, 4", "-1", "", "0x10", "99999999999999999999", "1 2"] {
            let map = headers(&[("content-length", bad)]);
            assert_eq!(content_length(&map), Err(InvalidContentLength), "{bad:?}");
            assert_eq!(
                request_framing(&map, false, None),
                Err(EncodeError::ContentLength)
            );
        }
    }

    #[test]
    fn chunk_sizes_are_lower_case_hex() {
        let mut out = Vec::new();
        chunk_size(&mut out, 0);
        chunk_size(&mut out, 10);
        chunk_size(&mut out, 0x1f2e3d);
        assert_eq!(out, b"0\r\na\r\n1f2e3d\r\n");
    }
}
