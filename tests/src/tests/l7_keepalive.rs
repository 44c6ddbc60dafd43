//! Keep-alive connections between requests. The proxy holds an idle plain HTTP/1.1
//! connection without hyper (and without its buffers) and gives it to hyper again once bytes
//! arrive: whatever a client does after idling must see what it would with hyper holding the
//! connection throughout: the next request, pipelined requests, an upgrade, a slow head (408
//! at the header read timeout from the head's first byte), its close, the idle timeout.

use std::{
    io::{Read, Write},
    net::{Shutdown, TcpStream},
    time::{Duration, Instant},
};

use super::l7_routing::{IDLE_TIMEOUT_SECS, L7, SHORT};
use crate::http_servers::{assert_websocket_switched, frame, parse_frame};

/// A pause in the client's traffic: the proxy has answered and read nothing more, so it
/// holds the connection idle. Part of the scenario (the connection must idle), not a wait
/// for a condition; shorter than the idle (2 s) and header read (1 s) timeouts.
const PAUSE: Duration = Duration::from_millis(200);
/// A pause long enough for the proxy to take hyper's connection apart after later requests
/// too (idle for 1 s, on a 250 ms grid), shorter than the idle timeout (2 s).
const LONG_PAUSE: Duration = Duration::from_millis(1500);

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: www.example.com\r\n\r\n")
}

/// Reads one response with a Content-Length body from `stream`, `buf` holding bytes read
/// before (and keeping those read past it): its head, lower-cased, and its body.
fn response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> (String, String) {
    let deadline = Instant::now() + SHORT;
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).to_ascii_lowercase();
            let length: usize = head
                .split("content-length: ")
                .nth(1)
                .and_then(|v| v.split("\r\n").next())
                .map_or(0, |v| v.trim().parse().expect("a Content-Length"));
            if buf.len() >= end + 4 + length {
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + length]).into_owned();
                buf.drain(..end + 4 + length);
                return (head, body);
            }
        }
        assert!(Instant::now() < deadline, "no whole response: {buf:?}");
        let n = stream.read(&mut chunk).expect("reading a response");
        assert!(n > 0, "closed before a whole response: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads until the proxy closes: what it sent first, and how long it took.
fn until_closed(stream: &mut TcpStream) -> (String, Duration) {
    let started = Instant::now();
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .expect("the proxy to close the connection");
    (
        String::from_utf8_lossy(&answer).into_owned(),
        started.elapsed(),
    )
}

#[test]
fn keep_alive_connections_are_served_again_whatever_the_client_does_after_idling() {
    let l7 = L7::start();
    let mut stream = l7.connect();
    let mut buf = Vec::new();
    // Requests one at a time, idle between them, on one connection.
    for i in 0..6 {
        stream
            .write_all(get(&format!("/one/{i}")).as_bytes())
            .unwrap();
        let (head, body) = response(&mut stream, &mut buf);
        assert!(head.starts_with("http/1.1 200 "), "request {i}: {head}");
        assert!(body.starts_with("target"), "request {i}: {body}");
        std::thread::sleep(if i % 3 == 2 { LONG_PAUSE } else { PAUSE });
    }
    // Pipelined after idling: three requests in one write, three answers in order.
    stream
        .write_all(format!("{}{}{}", get("/p/0"), get("/p/1"), get("/p/2")).as_bytes())
        .unwrap();
    for i in 0..3 {
        let (head, _) = response(&mut stream, &mut buf);
        assert!(head.starts_with("http/1.1 200 "), "pipelined {i}: {head}");
    }
    std::thread::sleep(PAUSE);
    // A response the proxy makes itself (a redirect rule, for hosts other than www's), then
    // another request on the same connection.
    stream
        .write_all(b"GET /old/x HTTP/1.1\r\nHost: other.example.com\r\n\r\n")
        .unwrap();
    let (head, _) = response(&mut stream, &mut buf);
    assert!(head.starts_with("http/1.1 301 "), "{head}");
    stream.write_all(get("/after-redirect").as_bytes()).unwrap();
    let (head, _) = response(&mut stream, &mut buf);
    assert!(head.starts_with("http/1.1 200 "), "{head}");
    std::thread::sleep(PAUSE);
    // A request with a body, forwarded, then another.
    let body = "x".repeat(3000);
    write!(
        stream,
        "POST /upload HTTP/1.1\r\nHost: www.example.com\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let (head, _) = response(&mut stream, &mut buf);
    assert!(head.starts_with("http/1.1 200 "), "{head}");
    std::thread::sleep(PAUSE);
    // A body the proxy does not read (a redirect answers it), whole: hyper reads past it,
    // and the next request is served.
    stream
        .write_all(
            b"POST /old/y HTTP/1.1\r\nHost: other.example.com\r\nContent-Length: 5\r\n\r\nhello",
        )
        .unwrap();
    let (head, _) = response(&mut stream, &mut buf);
    assert!(head.starts_with("http/1.1 301 "), "{head}");
    std::thread::sleep(PAUSE);
    stream
        .write_all(get("/after-unread-body").as_bytes())
        .unwrap();
    let (head, _) = response(&mut stream, &mut buf);
    assert!(head.starts_with("http/1.1 200 "), "{head}");
    std::thread::sleep(LONG_PAUSE);
    // A head that starts after idling and stalls: 408 at the header read timeout (1 s) from
    // its first byte.
    stream
        .write_all(b"GET /slow HTTP/1.1\r\nHost: www.example.com\r\nX-Slow: 1")
        .unwrap();
    let (answer, took) = until_closed(&mut stream);
    assert!(
        answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{answer:?}"
    );
    assert!(
        took >= Duration::from_millis(900) && took < SHORT,
        "{took:?}"
    );
    assert!(buf.is_empty(), "{buf:?}");

    // A body the proxy does not read and that has not all arrived: the answer, then the close
    // (hyper gives up on the rest), never a request made of the body's bytes.
    let mut stream = l7.connect();
    stream.write_all(get("/first").as_bytes()).unwrap();
    response(&mut stream, &mut buf);
    std::thread::sleep(PAUSE);
    let smuggled = get("/smuggled");
    write!(
        stream,
        "POST /old/z HTTP/1.1\r\nHost: other.example.com\r\nContent-Length: {}\r\n\r\nab",
        smuggled.len() + 2
    )
    .unwrap();
    let (head, _) = response(&mut stream, &mut buf);
    assert!(head.starts_with("http/1.1 301 "), "{head}");
    // Written once the proxy has answered (it may have closed by then).
    let _ = stream.write_all(smuggled.as_bytes());
    let mut rest = Vec::new();
    match stream.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the proxy to close the connection: {e}"),
    }
    assert!(
        rest.is_empty() && buf.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&rest)
    );

    // An upgrade on a connection that made a request and idled.
    let mut stream = l7.connect();
    stream.write_all(get("/before-upgrade").as_bytes()).unwrap();
    let (head, _) = response(&mut stream, &mut buf);
    assert!(head.starts_with("http/1.1 200 "), "{head}");
    std::thread::sleep(PAUSE);
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    write!(
        stream,
        "GET /ws HTTP/1.1\r\nHost: www.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let (head, _) = response(&mut stream, &mut buf);
    assert_websocket_switched(&head, key);
    stream
        .write_all(&frame(1, b"after idling", Some([1, 2, 3, 4])))
        .unwrap();
    let deadline = Instant::now() + SHORT;
    let echoed = loop {
        if let Some((op, payload, used)) = parse_frame(&buf) {
            buf.drain(..used);
            break (op, payload);
        }
        assert!(Instant::now() < deadline, "no echo");
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).expect("the echo");
        assert!(n > 0, "closed before the echo");
        buf.extend_from_slice(&chunk[..n]);
    };
    assert_eq!(echoed, (1, b"after idling".to_vec()));
    drop(stream);
    buf.clear();

    // A client that ends its side after idling (FIN) gets the close at once, not at the idle
    // timeout.
    let mut stream = l7.connect();
    stream.write_all(get("/first").as_bytes()).unwrap();
    response(&mut stream, &mut buf);
    std::thread::sleep(PAUSE);
    stream.shutdown(Shutdown::Write).unwrap();
    let (answer, took) = until_closed(&mut stream);
    assert_eq!(answer, "");
    assert!(took < Duration::from_millis(500), "{took:?}");

    // HTTP/1.0 without keep-alive after idling: the answer, then the close.
    let mut stream = l7.connect();
    stream.write_all(get("/first").as_bytes()).unwrap();
    response(&mut stream, &mut buf);
    std::thread::sleep(PAUSE);
    stream
        .write_all(b"GET /ten HTTP/1.0\r\nHost: www.example.com\r\n\r\n")
        .unwrap();
    let (answer, _) = until_closed(&mut stream);
    assert!(
        answer.starts_with("HTTP/1.") && answer[..12].ends_with(" 200"),
        "{answer:?}"
    );

    // `Connection: close` after idling: the answer, then the close.
    let mut stream = l7.connect();
    stream.write_all(get("/first").as_bytes()).unwrap();
    response(&mut stream, &mut buf);
    std::thread::sleep(PAUSE);
    stream
        .write_all(b"GET /last HTTP/1.1\r\nHost: www.example.com\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (answer, _) = until_closed(&mut stream);
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer:?}");

    // Idle connections, one that never sent a byte and one after a request, are closed at
    // the idle timeout from their last data.
    let mut silent = l7.connect();
    let silent_since = Instant::now();
    let mut used = l7.connect();
    used.write_all(get("/then-silence").as_bytes()).unwrap();
    response(&mut used, &mut buf);
    let used_since = Instant::now();
    let idle = Duration::from_secs(IDLE_TIMEOUT_SECS);
    for (what, stream, since) in [
        ("silent", &mut silent, silent_since),
        ("used", &mut used, used_since),
    ] {
        let (answer, _) = until_closed(stream);
        let took = since.elapsed();
        assert_eq!(answer, "", "{what}");
        assert!(
            took >= idle - Duration::from_millis(100) && took < idle + Duration::from_secs(1),
            "{what}: {took:?}"
        );
    }
    assert!(buf.is_empty(), "{buf:?}");
}

/// The common request (a GET without a body) is served without hyper's server: heads that
/// arrive in pieces, the response head as hyper wrote it (lower-case names, a `date`,
/// `connection: close` when asked), and heads that start like one and turn out otherwise,
/// which hyper answers as before, whatever was read of them first.
#[test]
fn common_requests_in_pieces_and_heads_that_turn_out_otherwise_get_hyper_s_answers() {
    let l7 = L7::start();
    let mut buf = Vec::new();
    // One byte a write.
    let mut stream = l7.connect();
    stream.set_nodelay(true).unwrap();
    for byte in get("/in-pieces").as_bytes() {
        stream.write_all(&[*byte]).unwrap();
    }
    let (head, body) = response(&mut stream, &mut buf);
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
    assert!(body.starts_with("target"), "{body}");
    assert!(head.contains("\r\ndate: "), "{head}");
    assert!(!head.contains("\r\nconnection:"), "{head}");
    // Two requests in one write, the second cut in the middle, then its end.
    let second = get("/second");
    let (first_part, last_part) = second.split_at(20);
    stream
        .write_all(format!("{}{first_part}", get("/first")).as_bytes())
        .unwrap();
    let (head, _) = response(&mut stream, &mut buf);
    assert!(head.starts_with("http/1.1 200 "), "{head}");
    stream.write_all(last_part.as_bytes()).unwrap();
    let (head, _) = response(&mut stream, &mut buf);
    assert!(head.starts_with("http/1.1 200 "), "{head}");
    // `Connection: close`: said in the response, then the close.
    stream
        .write_all(b"GET /bye HTTP/1.1\r\nHost: www.example.com\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (answer, _) = until_closed(&mut stream);
    let answer = answer.to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 200 "), "{answer}");
    assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");

    // A head that starts as a GET and has a folded line: hyper's 400, then the close.
    let mut stream = l7.connect();
    stream.set_nodelay(true).unwrap();
    stream
        .write_all(b"GET /folded HTTP/1.1\r\nHost: www.example.com\r\n")
        .unwrap();
    stream.write_all(b"X-A: 1\r\n folded\r\n\r\n").unwrap();
    let (answer, _) = until_closed(&mut stream);
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer:?}");
    // One that turns into a request with a body after a served GET: forwarded by hyper, and
    // the connection goes on.
    let mut stream = l7.connect();
    stream.write_all(get("/before-post").as_bytes()).unwrap();
    let (head, _) = response(&mut stream, &mut buf);
    assert!(head.starts_with("http/1.1 200 "), "{head}");
    stream
        .write_all(b"GET /with-body HTTP/1.1\r\nHost: www.example.com\r\n")
        .unwrap();
    stream.write_all(b"Content-Length: 3\r\n\r\nabc").unwrap();
    let (head, _) = response(&mut stream, &mut buf);
    assert!(head.starts_with("http/1.1 200 "), "{head}");
    stream.write_all(get("/after").as_bytes()).unwrap();
    let (head, _) = response(&mut stream, &mut buf);
    assert!(head.starts_with("http/1.1 200 "), "{head}");
    // A head over the limit (4096 bytes) that starts as a GET: hyper's 431.
    let mut stream = l7.connect();
    write!(
        stream,
        "GET / HTTP/1.1\r\nHost: www.example.com\r\nX-Big: {}\r\n\r\n",
        "a".repeat(5000)
    )
    .unwrap();
    let (answer, _) = until_closed(&mut stream);
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer:?}");
    assert!(buf.is_empty(), "{buf:?}");
}

/// Reads one response to a GET from `stream` (`buf` as for [`response`]), framed by its head
/// as a client must: no body for 204 and 304, chunks, or Content-Length. Its head, lower-cased,
/// and its body.
fn framed_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> (String, String) {
    let deadline = Instant::now() + SHORT;
    let mut chunk = [0u8; 4096];
    let mut more = |buf: &mut Vec<u8>| {
        assert!(Instant::now() < deadline, "no whole response: {buf:?}");
        let n = stream.read(&mut chunk).expect("reading a response");
        assert!(n > 0, "closed before a whole response: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    };
    let end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        more(buf);
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    buf.drain(..end);
    let field = |name: &str| {
        head.split("\r\n")
            .find_map(|l| l.strip_prefix(&format!("{name}: ")).map(str::to_string))
    };
    if head.starts_with("http/1.1 204 ") || head.starts_with("http/1.1 304 ") {
        return (head, String::new());
    }
    let mut body = Vec::new();
    if field("transfer-encoding").as_deref() == Some("chunked") {
        loop {
            let line = loop {
                if let Some(at) = buf.windows(2).position(|w| w == b"\r\n") {
                    break at;
                }
                more(buf);
            };
            let size = usize::from_str_radix(std::str::from_utf8(&buf[..line]).unwrap(), 16)
                .expect("a chunk size");
            while buf.len() < line + 2 + size + 2 {
                more(buf);
            }
            body.extend_from_slice(&buf[line + 2..line + 2 + size]);
            buf.drain(..line + 2 + size + 2);
            if size == 0 {
                break;
            }
        }
    } else {
        let length: usize = field("content-length").map_or(0, |v| v.parse().unwrap());
        while buf.len() < length {
            more(buf);
        }
        body.extend(buf.drain(..length));
    }
    (head, String::from_utf8_lossy(&body).into_owned())
}

/// What targets answer a GET with reaches the client framed right, in HTTP/1.1, on a
/// connection that goes on: chunks, 204 and 304 without a body (a 304's Content-Length is
/// the cached representation's, not a body's), an HTTP/1.0 body that ends with the target's
/// connection; a body that ends before its length ends the client's connection, whose
/// response is then cut. Each GET first as the common request (served without hyper's
/// server), then with `Content-Length: 0` (served by hyper's).
#[test]
fn target_framings_reach_a_keep_alive_client_framed_right() {
    let l7 = L7::start();
    let mut buf = Vec::new();
    let mut stream = l7.connect();
    for round in 0..2 {
        let get = |path: &str| match round {
            0 => get(path),
            _ => {
                format!("GET {path} HTTP/1.1\r\nHost: www.example.com\r\nContent-Length: 0\r\n\r\n")
            }
        };
        stream.write_all(get("/chunked").as_bytes()).unwrap();
        let (head, body) = framed_response(&mut stream, &mut buf);
        assert!(head.starts_with("http/1.1 200 "), "{round}: {head}");
        assert_eq!(body, "hello world", "{round}: {head}");

        stream.write_all(get("/no-content").as_bytes()).unwrap();
        let (head, _) = framed_response(&mut stream, &mut buf);
        assert!(head.starts_with("http/1.1 204 "), "{round}: {head}");
        assert!(!head.contains("transfer-encoding"), "{round}: {head}");

        stream.write_all(get("/not-modified").as_bytes()).unwrap();
        let (head, _) = framed_response(&mut stream, &mut buf);
        assert!(head.starts_with("http/1.1 304 "), "{round}: {head}");
        assert!(head.contains("\r\netag: \"v1\"\r\n"), "{round}: {head}");

        stream.write_all(get("/until-close").as_bytes()).unwrap();
        let (head, body) = framed_response(&mut stream, &mut buf);
        assert!(head.starts_with("http/1.1 200 "), "{round}: {head}");
        assert_eq!(body, "until the close\n", "{round}: {head}");

        // Nothing stray in between: the next response starts where the last ended.
        stream.write_all(get("/").as_bytes()).unwrap();
        let (head, body) = framed_response(&mut stream, &mut buf);
        assert!(head.starts_with("http/1.1 200 "), "{round}: {head}");
        assert!(body.starts_with("target"), "{round}: {body}");
        assert!(buf.is_empty(), "{round}: {buf:?}");
    }
    // The body that ends early, as the common request and as hyper's: the connection ends,
    // and what came before the end is the head and the bytes there were, or nothing (hyper's
    // server drops what it had not written yet).
    for short in [
        get("/short-body"),
        "GET /short-body HTTP/1.1\r\nHost: www.example.com\r\nContent-Length: 0\r\n\r\n"
            .to_string(),
    ] {
        let mut stream = l7.connect();
        stream.write_all(short.as_bytes()).unwrap();
        let (answer, _) = until_closed(&mut stream);
        let answer = answer.to_ascii_lowercase();
        assert!(
            answer.is_empty()
                || (answer.starts_with("http/1.1 200 ") && answer.ends_with("\r\n\r\nabc")),
            "{short:?}: {answer:?}"
        );
    }
}
