//! A target's response as read from its connection: the head parsed with `httparse` (the
//! header values share the bytes read, nothing copied), the body's framing (RFC 9112 6.3),
//! and the chunked decoder. Pure: no sockets.

use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use hyper::{
    header::{self, HeaderName, HeaderValue},
    HeaderMap, StatusCode, Version,
};

use super::encode::content_length;

/// The most bytes a response head may take (hyper's default read buffer limit, which
/// applied before).
pub const MAX_HEAD: usize = 8192 + 4096 * 100;
/// The most header fields in a response head (hyper's default).
pub const MAX_HEADERS: usize = 100;
/// The longest chunk-size line (with extensions) and the most trailer bytes accepted.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;

/// Why a response from a target is refused (the client gets a 502).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("malformed response head: {0}")]
    Head(httparse::Error),
    #[error("response head larger than {MAX_HEAD} bytes")]
    TooLarge,
    #[error("response status {0} is out of range")]
    Status(u16),
    #[error("response header {0:?} is invalid")]
    Header(String),
    #[error("an HTTP/1.0 response with Transfer-Encoding")]
    TransferEncodingInHttp10,
    #[error("invalid or conflicting Content-Length")]
    ContentLength,
    #[error("malformed chunk: {0}")]
    Chunk(&'static str),
}

/// A response head.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
}

/// Parses a response head from the start of `buf`; once it is complete, its bytes are
/// taken from `buf` (the header values keep sharing them). `None`: more bytes are needed.
pub fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, ParseError> {
    // Left uninitialised: httparse writes only the fields it finds (most heads have a
    // dozen), where an initialised array would be 3.2 KB of stores per response.
    let mut fields = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut fields,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => return Err(ParseError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(ParseError::Head(e)),
    };
    if len > MAX_HEAD {
        return Err(ParseError::TooLarge);
    }
    let code = response.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| ParseError::Status(code))?;
    let version = if response.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // Where each field is in `buf`, so that the values can share the bytes once they are
    // split off (httparse's slices borrow `buf`).
    let base = buf.as_ptr() as usize;
    // (u32: a head is at most `MAX_HEAD` bytes.)
    let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
    let count = response.headers.len();
    for (span, field) in spans.iter_mut().zip(response.headers.iter()) {
        let name = field.name.as_ptr() as usize - base;
        let value = field.value.as_ptr() as usize - base;
        *span = (
            name as u32,
            field.name.len() as u32,
            value as u32,
            field.value.len() as u32,
        );
    }
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(count);
    for &(name, name_len, value, value_len) in &spans[..count] {
        let (name, name_len, value, value_len) = (
            name as usize,
            name_len as usize,
            value as usize,
            value_len as usize,
        );
        let name = &head[name..name + name_len];
        let field = HeaderName::from_bytes(name)
            .map_err(|_| ParseError::Header(String::from_utf8_lossy(name).into_owned()))?;
        let value = HeaderValue::from_maybe_shared(head.slice(value..value + value_len))
            .map_err(|_| ParseError::Header(field.as_str().to_string()))?;
        headers.append(field, value);
    }
    Ok(Some(Head {
        status,
        version,
        headers,
    }))
}

/// How a response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: HEAD, 1xx, 204, 304.
    Empty,
    Length(u64),
    Chunked,
    /// Until the target closes the connection.
    Close,
}

/// The framing of a response body (RFC 9112 6.3), as hyper decided it: `Transfer-Encoding`
/// wins over `Content-Length`; a body with neither lasts until the connection closes.
pub fn framing(head: &Head, to_head_request: bool) -> Result<Framing, ParseError> {
    let code = head.status.as_u16();
    if code < 200 || code == 204 || code == 304 || to_head_request {
        return Ok(Framing::Empty);
    }
    if head.headers.contains_key(header::TRANSFER_ENCODING) {
        if head.version == Version::HTTP_10 {
            return Err(ParseError::TransferEncodingInHttp10);
        }
        return Ok(if is_chunked(&head.headers) {
            Framing::Chunked
        } else {
            Framing::Close
        });
    }
    match content_length(&head.headers).map_err(|_| ParseError::ContentLength)? {
        Some(0) => Ok(Framing::Empty),
        Some(length) => Ok(Framing::Length(length)),
        None => Ok(Framing::Close),
    }
}

/// Whether the last transfer coding is `chunked`.
fn is_chunked(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .next_back()
        .and_then(|v| v.as_bytes().rsplit(|b| *b == b',').next())
        .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// Whether the connection may carry another request after this response: HTTP/1.1 unless
/// it says `Connection: close`, HTTP/1.0 only with `Connection: keep-alive`.
pub fn keeps_alive(head: &Head) -> bool {
    let mut close = false;
    let mut keep_alive = false;
    for token in head
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
    {
        close |= token.eq_ignore_ascii_case(b"close");
        keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
    }
    !close && (head.version == Version::HTTP_11 || keep_alive)
}

/// What the chunked decoder produced from the bytes it had.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Data(Bytes),
    /// The bytes so far end inside framing: read more.
    NeedMore,
    /// The trailer fields after the last chunk.
    Trailers(HeaderMap),
    /// The last chunk and the trailers have been read.
    End,
}

/// The chunked transfer coding's decoder (RFC 9112 7.1).
#[derive(Debug, Default)]
pub struct Chunked {
    state: ChunkState,
    /// The trailer section's lines so far, each with its CRLF.
    trailers: Vec<u8>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    Trailers,
    Done,
}

impl Chunked {
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Decodes from the start of `buf`, taking what it consumed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ParseError> {
        loop {
            match self.state {
                ChunkState::Size => {
                    let Some(line) = take_line(buf, MAX_CHUNK_LINE, "chunk size line too long")?
                    else {
                        return Ok(Decoded::NeedMore);
                    };
                    let size = chunk_size(&line)?;
                    self.state = if size == 0 {
                        ChunkState::Trailers
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                    return Ok(Decoded::Data(buf.split_to(take).freeze()));
                }
                ChunkState::DataEnd => {
                    if buf.len() < 2 {
                        if buf.first().is_some_and(|b| *b != b'\r') {
                            return Err(ParseError::Chunk("no CRLF after chunk data"));
                        }
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(ParseError::Chunk("no CRLF after chunk data"));
                    }
                    buf.advance(2);
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    let limit = MAX_TRAILERS.saturating_sub(self.trailers.len()).max(2);
                    let Some(line) = take_line(buf, limit, "trailers too large")? else {
                        return Ok(Decoded::NeedMore);
                    };
                    if !line.is_empty() {
                        self.trailers.extend_from_slice(&line);
                        self.trailers.extend_from_slice(b"\r\n");
                        continue;
                    }
                    self.state = ChunkState::Done;
                    if !self.trailers.is_empty() {
                        return parse_trailers(&self.trailers).map(Decoded::Trailers);
                    }
                }
                ChunkState::Done => return Ok(Decoded::End),
            }
        }
    }
}

/// The trailer section's fields (without its final empty line).
fn parse_trailers(lines: &[u8]) -> Result<HeaderMap, ParseError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut section = Vec::with_capacity(lines.len() + 2);
    section.extend_from_slice(lines);
    section.extend_from_slice(b"\r\n");
    let parsed = match httparse::parse_headers(&section, &mut fields) {
        Ok(httparse::Status::Complete((_, parsed))) => parsed,
        _ => return Err(ParseError::Chunk("malformed trailers")),
    };
    let mut trailers = HeaderMap::with_capacity(parsed.len());
    for field in parsed {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(field.name.as_bytes()),
            HeaderValue::from_bytes(field.value),
        ) else {
            return Err(ParseError::Chunk("malformed trailers"));
        };
        trailers.append(name, value);
    }
    Ok(trailers)
}

/// Takes a CRLF-terminated line (without its CRLF) from the start of `buf`; `None` if it
/// has not all arrived; an error if it is longer than `limit` or ends in a bare LF.
fn take_line(
    buf: &mut BytesMut,
    limit: usize,
    too_long: &'static str,
) -> Result<Option<BytesMut>, ParseError> {
    let Some(lf) = buf.iter().take(limit).position(|b| *b == b'\n') else {
        return if buf.len() >= limit {
            Err(ParseError::Chunk(too_long))
        } else {
            Ok(None)
        };
    };
    if lf == 0 || buf[lf - 1] != b'\r' {
        return Err(ParseError::Chunk("line not ended by CRLF"));
    }
    let mut line = buf.split_to(lf + 1);
    line.truncate(lf - 1);
    Ok(Some(line))
}

/// A chunk-size line's size: hex digits, then optional whitespace and `;` extensions.
fn chunk_size(line: &[u8]) -> Result<u64, ParseError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(ParseError::Chunk("no chunk size"));
    }
    if digits > 15 {
        return Err(ParseError::Chunk("chunk size too large"));
    }
    let rest = line[digits..].trim_ascii_start();
    if !(rest.is_empty() || rest[0] == b';') {
        return Err(ParseError::Chunk("invalid chunk size"));
    }
    if rest.iter().any(|b| b.is_ascii_control() && *b != b'\t') {
        return Err(ParseError::Chunk("invalid chunk extension"));
    }
    Ok(line[..digits].iter().fold(0u64, |n, d| {
        n * 16 + u64::from((*d as char).to_digit(16).expect("a hex digit"))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<Option<Head>, ParseError> {
        parse_head(&mut BytesMut::from(text))
    }

    fn full(text: &str) -> Head {
        head(text).unwrap().expect("a complete head")
    }

    #[test]
    fn a_head_is_parsed_and_its_bytes_taken_leaving_the_body() {
        let mut buf = BytesMut::from(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nx-a: 2\r\nServer: t\r\n\r\nhello",
        );
        let head = parse_head(&mut buf).unwrap().unwrap();
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.version, Version::HTTP_11);
        assert_eq!(head.headers["content-length"], "5");
        let a: Vec<_> = head.headers.get_all("x-a").iter().collect();
        assert_eq!(a, ["1", "2"]);
        assert_eq!(&buf[..], b"hello");
        assert_eq!(framing(&head, false), Ok(Framing::Length(5)));
        assert_eq!(framing(&head, true), Ok(Framing::Empty));
        assert!(keeps_alive(&head));
    }

    #[test]
    fn a_partial_head_needs_more_and_takes_nothing() {
        let mut buf = BytesMut::from("HTTP/1.1 200 OK\r\nContent-Le");
        assert!(parse_head(&mut buf).unwrap().is_none());
        assert_eq!(buf.len(), 27);
        assert!(head("").unwrap().is_none());
    }

    #[test]
    fn hostile_heads_are_refused() {
        for bad in [
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/1.1 abc OK\r\n\r\n",
            "HTTP/2.0 200 OK\r\n\r\n",
            "XTTP/1.1 200 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
            "HTTP/1.1 200 OK\r\nFolded: a\r\n b\r\n\r\n",
            "HTTP/1.1 200 OK\r\nX: a\x00b\r\n\r\n",
        ] {
            assert!(head(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            head("HTTP/1.1 099 Low\r\n\r\n").unwrap_err(),
            ParseError::Status(99)
        );
        // Too many fields.
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: v\r\n")).collect();
        assert_eq!(
            head(&format!("HTTP/1.1 200 OK\r\n{many}\r\n")).unwrap_err(),
            ParseError::Head(httparse::Error::TooManyHeaders)
        );
        // A head that never ends: refused once it passes the limit, complete or not.
        let huge = format!("HTTP/1.1 200 OK\r\nx-big: {}\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(head(&huge).unwrap_err(), ParseError::TooLarge);
        assert_eq!(
            head(&format!("{huge}\r\n")).unwrap_err(),
            ParseError::TooLarge
        );
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let with =
            |fields: &str, status: u16| full(&format!("HTTP/1.1 {status} X\r\n{fields}\r\n"));
        for status in [100, 101, 204, 304] {
            assert_eq!(
                framing(&with("content-length: 9\r\n", status), false),
                Ok(Framing::Empty)
            );
        }
        assert_eq!(
            framing(&with("transfer-encoding: chunked\r\n", 200), false),
            Ok(Framing::Chunked)
        );
        assert_eq!(
            framing(&with("transfer-encoding: gzip, Chunked\r\n", 200), false),
            Ok(Framing::Chunked)
        );
        assert_eq!(
            framing(&with("transfer-encoding: chunked, gzip\r\n", 200), false),
            Ok(Framing::Close)
        );
        // Content-Length with chunked: chunked wins (the length is not trusted).
        assert_eq!(
            framing(
                &with("content-length: 3\r\ntransfer-encoding: chunked\r\n", 200),
                false
            ),
            Ok(Framing::Chunked)
        );
        assert_eq!(framing(&with("", 200), false), Ok(Framing::Close));
        assert_eq!(
            framing(&with("content-length: 0\r\n", 200), false),
            Ok(Framing::Empty)
        );
        for bad in [
            "content-length: 3\r\ncontent-length: 4\r\n",
            "content-length: x\r\n",
            "content-length: -3\r\n",
        ] {
            assert_eq!(
                framing(&with(bad, 200), false),
                Err(ParseError::ContentLength),
                "{bad:?}"
            );
        }
        let old = full("HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n");
        assert_eq!(
            framing(&old, false),
            Err(ParseError::TransferEncodingInHttp10)
        );
    }

    #[test]
    fn keep_alive_is_read_from_the_version_and_connection() {
        assert!(!keeps_alive(&full(
            "HTTP/1.1 200 OK\r\nConnection: Close\r\n\r\n"
        )));
        assert!(!keeps_alive(&full("HTTP/1.0 200 OK\r\n\r\n")));
        assert!(keeps_alive(&full(
            "HTTP/1.0 200 OK\r\nConnection: foo, keep-alive\r\n\r\n"
        )));
    }

    /// Decodes `input` fed in pieces of `step` bytes; the data, or the error.
    fn dechunk(input: &[u8], step: usize) -> Result<(Vec<u8>, usize), ParseError> {
        let mut decoder = Chunked::default();
        let mut buf = BytesMut::new();
        let mut data = Vec::new();
        for piece in input.chunks(step) {
            buf.extend_from_slice(piece);
            loop {
                match decoder.decode(&mut buf)? {
                    Decoded::Data(bytes) => data.extend_from_slice(&bytes),
                    Decoded::Trailers(fields) => {
                        for (name, value) in &fields {
                            data.extend_from_slice(format!("[{name}={value:?}]").as_bytes());
                        }
                    }
                    Decoded::NeedMore => break,
                    Decoded::End => return Ok((data, buf.len())),
                }
            }
        }
        Err(ParseError::Chunk("unfinished"))
    }

    #[test]
    fn chunked_bodies_are_decoded_whatever_the_pieces() {
        let body = b"5\r\nhello\r\n1;ext=\"x\"\r\n \r\nA \r\n0123456789\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, 100] {
            let (data, left) = dechunk(body, step).unwrap();
            assert_eq!(
                String::from_utf8(data).unwrap(),
                "hello 0123456789[x-t=\"1\"]",
                "step {step}"
            );
            // What follows the body stays for the next response.
            if step == 100 {
                assert_eq!(left, 4);
            }
        }
    }

    #[test]
    fn bad_chunks_are_refused() {
        for bad in [
            &b"x\r\nhello\r\n0\r\n\r\n"[..],
            b"\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"5 5\r\nhello\r\n0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"ffffffffffffffffff\r\n",
            b"-1\r\n",
        ] {
            assert!(
                dechunk(bad, 1).is_err() && dechunk(bad, 100).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            dechunk(b"0\r\nno colon\r\n\r\n", 100).unwrap_err(),
            ParseError::Chunk("malformed trailers")
        );
        let long_line = format!("5;{}\r\n", "e".repeat(MAX_CHUNK_LINE));
        assert_eq!(
            dechunk(long_line.as_bytes(), 64).unwrap_err(),
            ParseError::Chunk("chunk size line too long")
        );
        let endless_trailers = format!("0\r\n{}", "x-t: 1\r\n".repeat(MAX_TRAILERS));
        assert_eq!(
            dechunk(endless_trailers.as_bytes(), 512).unwrap_err(),
            ParseError::Chunk("trailers too large")
        );
    }
}
