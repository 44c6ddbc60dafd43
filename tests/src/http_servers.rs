//! A target for the L7 proxy's tests: an HTTP/1.1 server on a thread inside a namespace
//! that keeps connections alive and, by path:
//! - `/headers`: answers with the request head it received (to check what the proxy sent);
//! - `/hang`: never answers (until the server stops);
//! - `/slow`: answers `<name>\n` once [`L7Server::release_slow`] was called (a request kept
//!   in flight for as long as a test needs);
//! - `/die`: resets the connection mid-request and stops listening, like a crashed process;
//! - `/login`: sets the application cookie [`APP_COOKIE`] (a session starts), body `<name>\n`;
//! - `/health`: 200, or 500 after [`L7Server::set_healthy(false)`];
//! - `/ws` with `Upgrade: websocket`: a WebSocket handshake, then echoes every frame;
//! - anything else: `200` with the body `<name>\n`.
//!
//! Every loop is bounded: reads time out every [`POLL`] to notice a stop request.

use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        mpsc, Arc,
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use sha1::{Digest, Sha1};

use crate::netns::Netns;

const POLL: Duration = Duration::from_millis(50);
/// The session cookie `/login` sets: what app_cookie stickiness follows.
pub const APP_COOKIE: &str = "SESSIONID";
const MAX_HEAD: usize = 64 * 1024;

struct State {
    name: String,
    stop: AtomicBool,
    dead: AtomicBool,
    healthy: AtomicBool,
    /// Requests other than health checks.
    requests: AtomicU64,
    /// `/slow` requests waiting for their release.
    slow_waiting: AtomicU64,
    released: AtomicBool,
}

pub struct L7Server {
    addr: SocketAddr,
    state: Arc<State>,
    thread: Option<JoinHandle<()>>,
}

impl L7Server {
    pub fn start(ns: &impl Netns, addr: SocketAddr, name: &str) -> L7Server {
        let state = Arc::new(State {
            name: name.to_string(),
            stop: AtomicBool::new(false),
            dead: AtomicBool::new(false),
            healthy: AtomicBool::new(true),
            requests: AtomicU64::new(0),
            slow_waiting: AtomicU64::new(0),
            released: AtomicBool::new(false),
        });
        let (bound_tx, bound_rx) = mpsc::channel();
        let thread_state = Arc::clone(&state);
        let thread = ns.spawn_thread(&format!("l7 {name}"), move || {
            let listener = match TcpListener::bind(addr).and_then(|l| {
                l.set_nonblocking(true)?;
                Ok(l)
            }) {
                Ok(l) => l,
                Err(e) => {
                    let _ = bound_tx.send(Err(e));
                    return;
                }
            };
            let _ = bound_tx.send(Ok(listener.local_addr().unwrap()));
            accept_loop(listener, &thread_state);
        });
        let addr = match bound_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(addr)) => addr,
            Ok(Err(e)) => panic!("l7 server {name} cannot bind {addr}: {e}"),
            Err(_) => panic!("l7 server {name} did not bind"),
        };
        L7Server {
            addr,
            state,
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.state.healthy.store(healthy, Relaxed);
    }

    /// Requests other than `/health` so far.
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Relaxed)
    }

    /// `/slow` requests waiting to be answered.
    pub fn slow_waiting(&self) -> u64 {
        self.state.slow_waiting.load(Relaxed)
    }

    /// Answers the `/slow` requests, waiting and later ones.
    pub fn release_slow(&self) {
        self.state.released.store(true, Relaxed);
    }

    /// Whether `/die` killed it.
    pub fn dead(&self) -> bool {
        self.state.dead.load(Relaxed)
    }
}

impl Drop for L7Server {
    fn drop(&mut self) {
        self.state.stop.store(true, Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn accept_loop(listener: TcpListener, state: &Arc<State>) {
    let mut connections: Vec<JoinHandle<()>> = Vec::new();
    while !state.stop.load(Relaxed) && !state.dead.load(Relaxed) {
        connections.retain(|c| !c.is_finished());
        match listener.accept() {
            Ok((stream, _)) => {
                let state = Arc::clone(state);
                connections.push(thread::spawn(move || {
                    let _ = serve(stream, &state);
                }));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(5))
            }
            Err(_) => thread::sleep(POLL),
        }
    }
    // A dead server stops listening at once: new connections are refused.
    drop(listener);
    for c in connections {
        let _ = c.join();
    }
}

fn stopping(state: &State) -> bool {
    state.stop.load(Relaxed)
}

/// Reads until `buf` holds a complete head; its length. None at EOF or stop.
fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>, state: &State) -> Option<usize> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            return Some(end + 4);
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
        match stream.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                if stopping(state) {
                    return None;
                }
            }
            Err(_) => return None,
        }
    }
}

fn serve(mut stream: TcpStream, state: &State) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(POLL))?;
    stream.set_nodelay(true)?;
    let mut buf = Vec::new();
    loop {
        let Some(head_len) = read_head(&mut stream, &mut buf, state) else {
            return Ok(());
        };
        let head = String::from_utf8_lossy(&buf[..head_len]).into_owned();
        let length: usize = header(&head, "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < head_len + length {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk) {
                Ok(0) => return Ok(()),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut =>
                {
                    if stopping(state) {
                        return Ok(());
                    }
                }
                Err(e) => return Err(e),
            }
        }
        buf.drain(..head_len + length);
        let path = head.split(' ').nth(1).unwrap_or("/").to_string();
        if path != "/health" {
            state.requests.fetch_add(1, Relaxed);
        }
        match path.as_str() {
            "/health" => {
                let status = if state.healthy.load(Relaxed) {
                    "200 OK"
                } else {
                    "500 Internal Server Error"
                };
                respond(&mut stream, status, "", &format!("{}\n", state.name))?;
            }
            "/headers" => respond(&mut stream, "200 OK", "", &head)?,
            "/login" => respond(
                &mut stream,
                "200 OK",
                &format!(
                    "Set-Cookie: {APP_COOKIE}={}; Path=/; HttpOnly\r\n",
                    state.name
                ),
                &format!("{}\n", state.name),
            )?,
            "/slow" => {
                state.slow_waiting.fetch_add(1, Relaxed);
                while !state.released.load(Relaxed) {
                    if stopping(state) {
                        return Ok(());
                    }
                    thread::sleep(POLL);
                }
                state.slow_waiting.fetch_sub(1, Relaxed);
                respond(&mut stream, "200 OK", "", &format!("{}\n", state.name))?;
            }
            "/hang" => {
                while !stopping(state) {
                    thread::sleep(POLL);
                }
                return Ok(());
            }
            "/die" => {
                state.dead.store(true, Relaxed);
                // Linger 0: close sends a reset, as a crashed process's kernel would for
                // data it never read.
                let linger = libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                };
                // SAFETY: a valid socket and a correctly sized option value.
                unsafe {
                    libc::setsockopt(
                        std::os::fd::AsRawFd::as_raw_fd(&stream),
                        libc::SOL_SOCKET,
                        libc::SO_LINGER,
                        (&linger as *const libc::linger).cast(),
                        std::mem::size_of::<libc::linger>() as libc::socklen_t,
                    );
                }
                return Ok(());
            }
            // Hostile answers (the proxy must refuse them with a 502), then closes.
            "/bad-status" => {
                stream.write_all(b"HTTP/1.1 2OO OK\r\nContent-Length: 2\r\n\r\nok")?;
                return Ok(());
            }
            "/huge-head" => {
                write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 2\r\n\r\nok",
                    "a".repeat(500_000)
                )?;
                return Ok(());
            }
            "/two-lengths" => {
                stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
                )?;
                return Ok(());
            }
            // Framings a target may answer a GET with, on a connection it keeps.
            "/chunked" => stream.write_all(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Target: ok\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            )?,
            "/no-content" => stream.write_all(b"HTTP/1.1 204 No Content\r\nX-Target: ok\r\n\r\n")?,
            // The length of the representation the client has: no body follows (RFC 9110 8.6).
            "/not-modified" => stream.write_all(
                b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 42\r\n\r\n",
            )?,
            // A body that ends with the connection, then one that ends before its length.
            "/until-close" => {
                stream.write_all(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the close\n")?;
                return Ok(());
            }
            "/short-body" => {
                stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")?;
                return Ok(());
            }
            // Content-Length beside chunked: the chunks count (RFC 9112 6.3).
            "/length-and-chunked" => stream.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            )?,
            "/ws"
                if header(&head, "upgrade")
                    .is_some_and(|u| u.eq_ignore_ascii_case("websocket")) =>
            {
                let key = header(&head, "sec-websocket-key").unwrap_or_default();
                let accept = websocket_accept(&key);
                write!(
                    stream,
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\nX-Target: {}\r\n\r\n",
                    state.name
                )?;
                return echo_frames(stream, buf, state);
            }
            _ => respond(&mut stream, "200 OK", "", &format!("{}\n", state.name))?,
        }
    }
}

fn respond(stream: &mut TcpStream, status: &str, extra: &str, body: &str) -> io::Result<()> {
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nX-Target: ok\r\n{extra}\r\n{body}",
        body.len()
    )
}

fn header(head: &str, name: &str) -> Option<String> {
    head.split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_string())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `Sec-WebSocket-Accept` for a key (RFC 6455).
pub fn websocket_accept(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64(&sha.finalize())
}

/// Asserts that `head` (a response head, lower-cased) switches protocols to WebSocket for
/// `key`: `101` and the matching `Sec-WebSocket-Accept`.
pub fn assert_websocket_switched(head: &str, key: &str) {
    assert!(head.starts_with("http/1.1 101 "), "{head}");
    assert!(
        head.contains(&format!(
            "sec-websocket-accept: {}\r\n",
            websocket_accept(key).to_ascii_lowercase()
        )),
        "{head}"
    );
}

pub fn base64(bytes: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Echoes WebSocket frames (payloads under 126 bytes) until close or stop.
fn echo_frames(mut stream: TcpStream, mut buf: Vec<u8>, state: &State) -> io::Result<()> {
    let mut chunk = [0u8; 4096];
    loop {
        while let Some((opcode, payload, used)) = parse_frame(&buf) {
            buf.drain(..used);
            if opcode == 8 {
                return Ok(());
            }
            stream.write_all(&frame(opcode, &payload, None))?;
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                if stopping(state) {
                    return Ok(());
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// A complete frame at the start of `buf`: opcode, unmasked payload, bytes used.
pub fn parse_frame(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let len = (buf[1] & 0x7f) as usize;
    assert!(len < 126, "test frames are short");
    let start = 2 + if masked { 4 } else { 0 };
    if buf.len() < start + len {
        return None;
    }
    let mut payload = buf[start..start + len].to_vec();
    if masked {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= buf[2 + i % 4];
        }
    }
    Some((opcode, payload, start + len))
}

/// A final frame; clients must mask.
pub fn frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut out = vec![
        0x80 | opcode,
        payload.len() as u8 | if mask.is_some() { 0x80 } else { 0 },
    ];
    match mask {
        Some(mask) => {
            out.extend_from_slice(&mask);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_accept_matches_rfc_6455() {
        assert_eq!(
            websocket_accept("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"a"), "YQ==");
    }

    #[test]
    fn frames_round_trip() {
        let f = frame(1, b"ping", Some([1, 2, 3, 4]));
        assert_eq!(parse_frame(&f), Some((1, b"ping".to_vec(), f.len())));
        let f = frame(1, b"pong", None);
        assert_eq!(parse_frame(&f[..3]), None);
    }
}
