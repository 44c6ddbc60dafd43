//! Tiny real servers and clients for tests that send traffic through sluice: an HTTP server
//! and a UDP server that answer with their own name (so a test can see which target got a
//! request), and a TCP echo server for long-lived connections.
//!
//! Servers run on threads inside a namespace (see [`Netns`]) and stop and join on drop. Every
//! loop is bounded in time: accepts poll with a short timeout, and reads time out, so each
//! thread notices a stop request within [`POLL_INTERVAL`]. Clients also run inside a
//! namespace, and give up after a timeout.

use std::{
    io::{self, Read, Write},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering},
        mpsc, Arc, Mutex,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use crate::netns::Netns;

/// How long a server thread may take to notice that it should stop.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How long a client waits for an answer by default: generous, so that only a real failure
/// (not a busy machine) reaches it.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Bounds on what the HTTP server buffers for one request.
const MAX_REQUEST_HEAD: usize = 16 * 1024;
const MAX_REQUEST_BODY: usize = 1024 * 1024;
/// Peers remembered per server; more are counted but not kept.
const MAX_PEERS: usize = 10_000;
/// A server start that takes longer than this has failed.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// What every server shares with its threads.
pub(crate) struct Shared {
    pub(crate) name: String,
    stop: AtomicBool,
    pub(crate) requests: AtomicU64,
    /// The HTTP status the HTTP server answers with (200 unless a test changes it).
    status: AtomicU16,
    peers: Mutex<Vec<SocketAddr>>,
}

impl Shared {
    fn new(name: &str) -> Arc<Shared> {
        Arc::new(Shared {
            name: name.to_string(),
            stop: AtomicBool::new(false),
            requests: AtomicU64::new(0),
            status: AtomicU16::new(200),
            peers: Mutex::new(Vec::new()),
        })
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Records a peer, IPv4 ones as IPv4 also when a `[::]` socket saw them IPv4-mapped.
    fn saw_peer(&self, peer: SocketAddr) {
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let mut peers = self.peers.lock().unwrap();
        if peers.len() < MAX_PEERS {
            peers.push(peer);
        }
    }
}

/// The parts every server has: its address, its counters and its thread, stopped on drop.
pub(crate) struct Running {
    pub(crate) addr: SocketAddr,
    pub(crate) shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Running {
    /// Binds with `bind` inside `ns`, then runs `serve` there on the bound socket.
    pub(crate) fn start<S: Send + 'static>(
        ns: &impl Netns,
        kind: &str,
        name: &str,
        bind: impl FnOnce() -> io::Result<(S, SocketAddr)> + Send + 'static,
        serve: impl FnOnce(S, Arc<Shared>) + Send + 'static,
    ) -> Running {
        let shared = Shared::new(name);
        let (bound_tx, bound_rx) = mpsc::channel();
        let thread_shared = Arc::clone(&shared);
        let thread = ns.spawn_thread(&format!("{kind} {name}"), move || match bind() {
            Ok((socket, addr)) => {
                let _ = bound_tx.send(Ok(addr));
                serve(socket, thread_shared);
            }
            Err(e) => {
                let _ = bound_tx.send(Err(e));
            }
        });
        let addr = match bound_rx.recv_timeout(START_TIMEOUT) {
            Ok(Ok(addr)) => addr,
            Ok(Err(e)) => panic!("{kind} server {name} cannot bind: {e}"),
            Err(_) => panic!("{kind} server {name} did not bind within {START_TIMEOUT:?}"),
        };
        Running {
            addr,
            shared,
            thread: Some(thread),
        }
    }

    pub(crate) fn peers(&self) -> Vec<SocketAddr> {
        self.shared.peers.lock().unwrap().clone()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            // A panic of the server thread was already printed; don't panic again in drop.
            let _ = thread.join();
        }
    }
}

pub(crate) fn tcp_listener(addr: SocketAddr) -> io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr)?;
    // Nonblocking, so a readiness poll that races with a reset connection cannot block accept.
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

/// Accepts connections until stopped, serving each on its own thread, then joins them all.
pub(crate) fn accept_loop(
    listener: TcpListener,
    shared: &Arc<Shared>,
    handle: fn(TcpStream, &Shared),
) {
    let mut connections: Vec<JoinHandle<()>> = Vec::new();
    while !shared.stopping() {
        connections.retain(|c| !c.is_finished());
        if !readable(&listener, POLL_INTERVAL) {
            continue;
        }
        let (stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => {
                // E.g. out of file descriptors: the listener stays readable, so pause.
                eprintln!("server {}: accept failed: {e}", shared.name);
                thread::sleep(POLL_INTERVAL);
                continue;
            }
        };
        shared.saw_peer(peer);
        let shared = Arc::clone(shared);
        let spawned = thread::Builder::new()
            .name(format!("conn {}", shared.name))
            .spawn(move || {
                if prepare_connection(&stream).is_ok() {
                    handle(stream, &shared);
                }
            });
        match spawned {
            Ok(connection) => connections.push(connection),
            Err(e) => eprintln!("server: cannot start a connection thread: {e}"),
        }
    }
    for connection in connections {
        let _ = connection.join();
    }
}

fn prepare_connection(stream: &TcpStream) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    // Reads wake up regularly to see whether the server is stopping.
    stream.set_read_timeout(Some(POLL_INTERVAL))?;
    // A peer that stops reading must not keep a stopping server waiting for long.
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_nodelay(true)
}

/// Waits up to `timeout` for `listener` to have a connection to accept.
fn readable(listener: &TcpListener, timeout: Duration) -> bool {
    let mut fd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let ready = unsafe { libc::poll(&mut fd, 1, timeout.as_millis() as libc::c_int) };
    ready > 0
}

/// Reads more bytes into `buf`; `Ok(0)` at EOF, `Err` on errors and when the server stops.
fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>, shared: &Shared) -> io::Result<usize> {
    let mut chunk = [0u8; 8192];
    loop {
        match stream.read(&mut chunk) {
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Ok(n);
            }
            Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {
                if shared.stopping() {
                    return Err(io::Error::other("server stopping"));
                }
            }
            Err(e) => return Err(e),
        }
    }
}

pub(crate) fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// An HTTP/1.x server answering every request with `200` and the body `<name>\n`.
pub struct HttpServer {
    running: Running,
}

impl HttpServer {
    /// Starts serving at `addr` inside `ns` (port 0 picks a free port, see [`addr`](Self::addr)).
    /// `[::]` also accepts IPv4.
    pub fn start(ns: &impl Netns, addr: SocketAddr, name: &str) -> HttpServer {
        let running = Running::start(
            ns,
            "http",
            name,
            move || tcp_listener(addr),
            |listener, shared| accept_loop(listener, &shared, serve_http),
        );
        HttpServer { running }
    }

    pub fn addr(&self) -> SocketAddr {
        self.running.addr
    }

    /// Makes the server answer every request from now on with `status` (e.g. 500, to fail an
    /// HTTP health check).
    pub fn set_status(&self, status: u16) {
        self.running.shared.status.store(status, Ordering::Relaxed);
    }

    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.running.shared.requests.load(Ordering::Relaxed)
    }

    /// The remote address of each connection accepted so far, in order (IPv4-mapped as IPv4).
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.running.peers()
    }
}

/// A TCP server that sends back whatever it receives, for long-lived connections.
pub struct EchoServer {
    running: Running,
}

impl EchoServer {
    pub fn start(ns: &impl Netns, addr: SocketAddr, name: &str) -> EchoServer {
        let running = Running::start(
            ns,
            "echo",
            name,
            move || tcp_listener(addr),
            |listener, shared| accept_loop(listener, &shared, serve_echo),
        );
        EchoServer { running }
    }

    pub fn addr(&self) -> SocketAddr {
        self.running.addr
    }

    /// The remote address of each connection accepted so far, in order (IPv4-mapped as IPv4).
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.running.peers()
    }
}

/// What [`UdpServer`] sends back for each datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UdpReply {
    /// The server's name, without a newline.
    Name,
    /// The datagram itself.
    Echo,
}

/// A UDP server replying to each datagram with its name or the datagram.
pub struct UdpServer {
    running: Running,
}

impl UdpServer {
    pub fn start(ns: &impl Netns, addr: SocketAddr, name: &str, reply: UdpReply) -> UdpServer {
        let bind = move || {
            let socket = UdpSocket::bind(addr)?;
            socket.set_read_timeout(Some(POLL_INTERVAL))?;
            let addr = socket.local_addr()?;
            Ok((socket, addr))
        };
        let running = Running::start(ns, "udp", name, bind, move |socket, shared| {
            serve_udp(socket, &shared, reply)
        });
        UdpServer { running }
    }

    pub fn addr(&self) -> SocketAddr {
        self.running.addr
    }

    /// Datagrams answered so far.
    pub fn requests(&self) -> u64 {
        self.running.shared.requests.load(Ordering::Relaxed)
    }

    /// The source of each datagram answered so far, in order (IPv4-mapped as IPv4).
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.running.peers()
    }
}

fn serve_udp(socket: UdpSocket, shared: &Shared, reply: UdpReply) {
    let mut buf = vec![0u8; 65536];
    while !shared.stopping() {
        let (n, peer) = match socket.recv_from(&mut buf) {
            Ok(received) => received,
            Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("udp server {}: {e}", shared.name);
                thread::sleep(POLL_INTERVAL);
                continue;
            }
        };
        let answer = match reply {
            UdpReply::Name => shared.name.as_bytes(),
            UdpReply::Echo => &buf[..n],
        };
        // Counted before answering, so a client holding the answer sees the count.
        shared.requests.fetch_add(1, Ordering::Relaxed);
        shared.saw_peer(peer);
        if let Err(e) = socket.send_to(answer, peer) {
            eprintln!("udp server {}: replying to {peer}: {e}", shared.name);
        }
    }
}

fn serve_echo(mut stream: TcpStream, shared: &Shared) {
    let mut buf = Vec::new();
    while let Ok(1..) = read_more(&mut stream, &mut buf, shared) {
        if stream.write_all(&buf).is_err() {
            return;
        }
        buf.clear();
    }
}

/// The parts of a request head the server acts on.
#[derive(Debug, PartialEq, Eq)]
struct RequestHead {
    method: String,
    content_length: usize,
    /// Whether the client wants the connection kept open after the response.
    keep_alive: bool,
}

fn parse_request_head(head: &[u8]) -> Result<RequestHead, &'static str> {
    let head = std::str::from_utf8(head).map_err(|_| "request head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or("").split(' ');
    let (Some(method), Some(target), Some(version), None) = (
        request_line.next(),
        request_line.next(),
        request_line.next(),
        request_line.next(),
    ) else {
        return Err("request line is not `METHOD TARGET VERSION`");
    };
    if method.is_empty() || target.is_empty() {
        return Err("empty method or target");
    }
    let mut keep_alive = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => return Err("unsupported HTTP version"),
    };
    let mut content_length = 0;
    for line in lines.take_while(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').ok_or("header line without a colon")?;
        let value = value.trim();
        match name.to_ascii_lowercase().as_str() {
            "content-length" => content_length = value.parse().map_err(|_| "bad Content-Length")?,
            "transfer-encoding" => return Err("chunked request bodies are not supported"),
            "connection" => {
                for option in value.split(',').map(str::trim) {
                    if option.eq_ignore_ascii_case("close") {
                        keep_alive = false;
                    } else if option.eq_ignore_ascii_case("keep-alive") {
                        keep_alive = true;
                    }
                }
            }
            _ => {}
        }
    }
    if content_length > MAX_REQUEST_BODY {
        return Err("request body too large");
    }
    Ok(RequestHead {
        method: method.to_string(),
        content_length,
        keep_alive,
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn serve_http(mut stream: TcpStream, shared: &Shared) {
    let mut buf = Vec::new();
    loop {
        // Requests may arrive pipelined: `buf` keeps what follows the current one.
        let head_len = loop {
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                break end + 4;
            }
            if buf.len() > MAX_REQUEST_HEAD {
                let _ = stream.write_all(&http_response(
                    431,
                    "request head too large\n",
                    false,
                    false,
                ));
                return;
            }
            match read_more(&mut stream, &mut buf, shared) {
                Ok(1..) => {}
                _ => return,
            }
        };
        let head = match parse_request_head(&buf[..head_len]) {
            Ok(head) => head,
            Err(reason) => {
                let _ = stream.write_all(&http_response(400, &format!("{reason}\n"), false, false));
                return;
            }
        };
        while buf.len() < head_len + head.content_length {
            match read_more(&mut stream, &mut buf, shared) {
                Ok(1..) => {}
                _ => return,
            }
        }
        buf.drain(..head_len + head.content_length);
        shared.requests.fetch_add(1, Ordering::Relaxed);
        let body = format!("{}\n", shared.name);
        let status = shared.status.load(Ordering::Relaxed);
        let response = http_response(status, &body, head.keep_alive, head.method == "HEAD");
        if stream.write_all(&response).is_err() || !head.keep_alive {
            return;
        }
    }
}

fn http_response(status: u16, body: &str, keep_alive: bool, head_only: bool) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        500 => "Internal Server Error",
        431 => "Request Header Fields Too Large",
        _ => "Unknown",
    };
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let mut response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: {connection}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        response.extend_from_slice(body.as_bytes());
    }
    response
}

/// Why a client request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to {addr}: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("no answer from {addr} within {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("talking to {addr}: {source}")]
    Io { addr: SocketAddr, source: io::Error },
    #[error("{addr} answered with HTTP status {status}: {body:?}")]
    Status {
        addr: SocketAddr,
        status: u16,
        body: String,
    },
    #[error("{addr} sent a malformed answer: {reason}")]
    Malformed { addr: SocketAddr, reason: String },
}

impl ClientError {
    pub(crate) fn from_io(addr: SocketAddr, timeout: Duration, source: io::Error) -> ClientError {
        if is_timeout(&source) {
            ClientError::Timeout { addr, timeout }
        } else {
            ClientError::Io { addr, source }
        }
    }
}

/// GETs `path` from `addr` over a new connection made inside `ns`; the body of a `200`.
pub fn http_get(ns: &impl Netns, addr: SocketAddr, path: &str) -> Result<String, ClientError> {
    http_get_timeout(ns, addr, path, CLIENT_TIMEOUT)
}

/// [`http_get`] giving up after `timeout` in all.
pub fn http_get_timeout(
    ns: &impl Netns,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<String, ClientError> {
    let deadline = Instant::now() + timeout;
    let mut stream = ns
        .run_in(|| TcpStream::connect_timeout(&addr, timeout))
        .map_err(|source| {
            if is_timeout(&source) {
                ClientError::Timeout { addr, timeout }
            } else {
                ClientError::Connect { addr, source }
            }
        })?;
    let io_err = |e| ClientError::from_io(addr, timeout, e);
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: sluice-tests\r\nConnection: close\r\n\r\n");
    stream.set_write_timeout(Some(timeout)).map_err(io_err)?;
    stream.write_all(request.as_bytes()).map_err(io_err)?;

    // The server closes after answering, so read everything until EOF or the deadline.
    let mut response = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ClientError::Timeout { addr, timeout });
        }
        stream.set_read_timeout(Some(left)).map_err(io_err)?;
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => response.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err(e)),
        }
    }
    let (status, body) = parse_response(&response).map_err(|reason| ClientError::Malformed {
        addr,
        reason: reason.to_string(),
    })?;
    if status != 200 {
        return Err(ClientError::Status { addr, status, body });
    }
    Ok(body)
}

/// A complete `Connection: close` response: its status and body.
fn parse_response(response: &[u8]) -> Result<(u16, String), &'static str> {
    let head_len = find(response, b"\r\n\r\n").ok_or("no end of the response head")? + 4;
    let head =
        std::str::from_utf8(&response[..head_len]).map_err(|_| "response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut words = status_line.split(' ');
    if !words.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Err("status line does not start with HTTP/1.x");
    }
    let status: u16 = words
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or("no status code")?;
    let mut body = &response[head_len..];
    let content_length = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .map(|(_, value)| {
            value
                .trim()
                .parse::<usize>()
                .map_err(|_| "bad Content-Length")
        })
        .transpose()?;
    if let Some(length) = content_length {
        if body.len() < length {
            return Err("body shorter than Content-Length");
        }
        body = &body[..length];
    }
    let body = String::from_utf8(body.to_vec()).map_err(|_| "body is not UTF-8")?;
    Ok((status, body))
}

/// One TCP connection, made inside a namespace and kept open, to an [`EchoServer`].
pub struct EchoClient {
    stream: TcpStream,
    peer: SocketAddr,
    timeout: Duration,
}

impl EchoClient {
    pub fn connect(ns: &impl Netns, addr: SocketAddr) -> Result<EchoClient, ClientError> {
        let timeout = CLIENT_TIMEOUT;
        let stream = ns
            .run_in(|| TcpStream::connect_timeout(&addr, timeout))
            .map_err(|source| ClientError::Connect { addr, source })?;
        let io_err = |e| ClientError::from_io(addr, timeout, e);
        stream.set_read_timeout(Some(timeout)).map_err(io_err)?;
        stream.set_write_timeout(Some(timeout)).map_err(io_err)?;
        stream.set_nodelay(true).map_err(io_err)?;
        Ok(EchoClient {
            stream,
            peer: addr,
            timeout,
        })
    }

    /// Sends `payload` and reads as many bytes back.
    pub fn echo(&mut self, payload: &[u8]) -> Result<Vec<u8>, ClientError> {
        let (addr, timeout) = (self.peer, self.timeout);
        let io_err = |e| ClientError::from_io(addr, timeout, e);
        self.stream.write_all(payload).map_err(io_err)?;
        let mut answer = vec![0u8; payload.len()];
        self.stream.read_exact(&mut answer).map_err(io_err)?;
        Ok(answer)
    }

    /// Sends `payload` without waiting for the answer (see [`EchoClient::receive`]), so that
    /// many connections can be checked against one deadline.
    pub fn send(&mut self, payload: &[u8]) -> Result<(), ClientError> {
        let (addr, timeout) = (self.peer, self.timeout);
        self.stream
            .write_all(payload)
            .map_err(|e| ClientError::from_io(addr, timeout, e))
    }

    /// Reads `len` bytes, waiting until `deadline` at most.
    pub fn receive(&mut self, len: usize, deadline: Instant) -> Result<Vec<u8>, ClientError> {
        let addr = self.peer;
        let timeout = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let io_err = |e| ClientError::from_io(addr, timeout, e);
        self.stream
            .set_read_timeout(Some(timeout))
            .map_err(io_err)?;
        let mut answer = vec![0u8; len];
        let read = self.stream.read_exact(&mut answer).map_err(io_err);
        self.stream
            .set_read_timeout(Some(self.timeout))
            .map_err(io_err)?;
        read.map(|()| answer)
    }

    /// The connection's local address (as the client sees it).
    pub fn local_addr(&self) -> SocketAddr {
        self.stream
            .local_addr()
            .expect("a connected socket has a local address")
    }
}

/// Sends one datagram from inside `ns` and returns the first answer.
pub fn udp_request(
    ns: &impl Netns,
    addr: SocketAddr,
    payload: &[u8],
) -> Result<Vec<u8>, ClientError> {
    udp_request_timeout(ns, addr, payload, CLIENT_TIMEOUT)
}

/// [`udp_request`] waiting at most `timeout` for the answer.
pub fn udp_request_timeout(
    ns: &impl Netns,
    addr: SocketAddr,
    payload: &[u8],
    timeout: Duration,
) -> Result<Vec<u8>, ClientError> {
    let io_err = |e| ClientError::from_io(addr, timeout, e);
    let any: SocketAddr = match addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = ns.run_in(|| UdpSocket::bind(any)).map_err(io_err)?;
    // Connected, so datagrams from anyone but `addr` are not taken for the answer.
    socket.connect(addr).map_err(io_err)?;
    socket.set_read_timeout(Some(timeout)).map_err(io_err)?;
    socket.send(payload).map_err(io_err)?;
    let mut answer = vec![0u8; 65536];
    let n = socket.recv(&mut answer).map_err(io_err)?;
    answer.truncate(n);
    Ok(answer)
}

#[cfg(test)]
mod tests {
    //! Loopback only, in the test's own namespace: no root needed.

    use super::*;
    use crate::netns::{wait_until, CurrentNetns};

    fn loopback_v4() -> SocketAddr {
        (Ipv4Addr::LOCALHOST, 0).into()
    }

    fn loopback_v6() -> SocketAddr {
        (Ipv6Addr::LOCALHOST, 0).into()
    }

    /// Sends raw bytes and reads until the server closes (bounded by the read timeout).
    fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
        stream.write_all(request).unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).unwrap();
        String::from_utf8(response).unwrap()
    }

    #[test]
    fn http_server_answers_with_its_name_over_ipv4_and_ipv6() {
        for addr in [loopback_v4(), loopback_v6()] {
            let server = HttpServer::start(&CurrentNetns, addr, "web-1");
            assert_eq!(
                http_get(&CurrentNetns, server.addr(), "/").unwrap(),
                "web-1\n"
            );
            assert_eq!(
                http_get(&CurrentNetns, server.addr(), "/x?y=1").unwrap(),
                "web-1\n"
            );
            assert_eq!(server.requests(), 2);
            assert_eq!(server.peers().len(), 2);
            assert!(server.peers().iter().all(|p| p.ip() == addr.ip()));
        }
    }

    #[test]
    fn http_server_keeps_connections_alive_and_serves_pipelined_requests() {
        let server = HttpServer::start(&CurrentNetns, loopback_v4(), "keep");
        let two = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /c HTTP/1.1\r\nconnection: Close\r\n\r\n";
        let response = exchange(server.addr(), two);
        assert_eq!(response.matches("HTTP/1.1 200 OK").count(), 3, "{response}");
        assert_eq!(response.matches("keep\n").count(), 3, "{response}");
        assert_eq!(
            response.matches("Connection: keep-alive").count(),
            2,
            "{response}"
        );
        assert!(
            response.ends_with("Connection: close\r\n\r\nkeep\n"),
            "{response}"
        );
        assert_eq!(server.requests(), 3);
        assert_eq!(server.peers().len(), 1, "one connection for all three");
    }

    #[test]
    fn http_1_0_closes_unless_asked_to_keep_alive() {
        let server = HttpServer::start(&CurrentNetns, loopback_v4(), "old");
        let response = exchange(server.addr(), b"GET / HTTP/1.0\r\n\r\n");
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
        assert!(response.contains("Connection: close"), "{response}");
        let response = exchange(
            server.addr(),
            b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\nHEAD / HTTP/1.0\r\n\r\n",
        );
        assert_eq!(
            response.matches("old\n").count(),
            1,
            "HEAD has no body: {response}"
        );
        assert_eq!(
            response.matches("Content-Length: 4").count(),
            2,
            "{response}"
        );
    }

    #[test]
    fn http_server_rejects_garbage_with_400() {
        let server = HttpServer::start(&CurrentNetns, loopback_v4(), "strict");
        let response = exchange(server.addr(), b"hello there\r\n\r\n");
        assert!(
            response.starts_with("HTTP/1.1 400 Bad Request"),
            "{response}"
        );
        assert_eq!(server.requests(), 0);
    }

    #[test]
    fn request_heads_are_parsed() {
        let head =
            parse_request_head(b"GET / HTTP/1.1\r\nContent-Length: 3\r\nConnection: close\r\n\r\n")
                .unwrap();
        assert_eq!(
            head,
            RequestHead {
                method: "GET".into(),
                content_length: 3,
                keep_alive: false
            }
        );
        assert!(
            parse_request_head(b"GET / HTTP/1.1\r\n\r\n")
                .unwrap()
                .keep_alive
        );
        assert!(parse_request_head(b"GET / HTTP/2\r\n\r\n").is_err());
        assert!(
            parse_request_head(b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").is_err()
        );
        assert!(parse_request_head(b"GET / HTTP/1.1\r\nno colon\r\n\r\n").is_err());
    }

    #[test]
    fn responses_are_parsed() {
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nab\nextra").unwrap(),
            (200, "ab\n".to_string())
        );
        assert_eq!(
            parse_response(b"HTTP/1.0 503 No\r\n\r\ndown").unwrap(),
            (503, "down".to_string())
        );
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab").is_err());
        assert!(parse_response(b"SSH-2.0\r\n\r\n").is_err());
    }

    #[test]
    fn echo_server_keeps_a_long_lived_connection() {
        for addr in [loopback_v4(), loopback_v6()] {
            let server = EchoServer::start(&CurrentNetns, addr, "echo");
            let mut client = EchoClient::connect(&CurrentNetns, server.addr()).unwrap();
            for i in 0..20u32 {
                let payload = format!("message {i}").repeat(i as usize + 1);
                assert_eq!(client.echo(payload.as_bytes()).unwrap(), payload.as_bytes());
            }
            assert_eq!(server.peers(), vec![client.local_addr()]);
        }
    }

    #[test]
    fn udp_server_replies_with_its_name_or_the_datagram() {
        for addr in [loopback_v4(), loopback_v6()] {
            let named = UdpServer::start(&CurrentNetns, addr, "dns-1", UdpReply::Name);
            assert_eq!(
                udp_request(&CurrentNetns, named.addr(), b"who?").unwrap(),
                b"dns-1"
            );
            let echo = UdpServer::start(&CurrentNetns, addr, "udp-echo", UdpReply::Echo);
            assert_eq!(
                udp_request(&CurrentNetns, echo.addr(), b"ping 1").unwrap(),
                b"ping 1"
            );
            assert_eq!(named.requests(), 1);
            assert_eq!(echo.peers().len(), 1);
        }
    }

    /// Whether a TCP socket listens on `port` in this namespace. (Binding the port to find out
    /// fails while the closed connection lingers; connecting can connect to itself, since the
    /// port is in the ephemeral range.)
    fn listening(port: u16) -> bool {
        const LISTEN: &str = "0A";
        ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|table| {
            std::fs::read_to_string(table)
                .unwrap()
                .lines()
                .skip(1)
                .any(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let local_port = fields[1].rsplit(':').next().unwrap();
                    u16::from_str_radix(local_port, 16) == Ok(port) && fields[3] == LISTEN
                })
        })
    }

    #[test]
    fn dropped_servers_stop_listening() {
        let server = HttpServer::start(&CurrentNetns, loopback_v4(), "gone");
        let addr = server.addr();
        // An open keep-alive connection, its handler waiting for the next request, must not
        // keep the server from stopping.
        let mut idle = TcpStream::connect(addr).unwrap();
        idle.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
        idle.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let mut response = Vec::new();
        while !response.ends_with(b"gone\n") {
            let mut chunk = [0u8; 1024];
            let n = idle.read(&mut chunk).unwrap();
            assert_ne!(
                n,
                0,
                "closed early: {:?}",
                String::from_utf8_lossy(&response)
            );
            response.extend_from_slice(&chunk[..n]);
        }
        assert!(listening(addr.port()));
        let started = Instant::now();
        drop(server);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "stopping took {:?}",
            started.elapsed()
        );
        let mut rest = Vec::new();
        idle.read_to_end(&mut rest)
            .expect("the server closes the connection");
        assert!(rest.is_empty());
        // A process forked by a parallel test holds copies of all our descriptors until it
        // calls exec, so the listener may outlive the server by that moment.
        wait_until(CLIENT_TIMEOUT, "the listener to close", || {
            !listening(addr.port())
        });
    }

    #[test]
    fn clients_time_out_on_silent_servers() {
        // Bound but never read: the datagram is queued and nothing answers.
        let silent = UdpSocket::bind(loopback_v4()).unwrap();
        let err = udp_request_timeout(
            &CurrentNetns,
            silent.local_addr().unwrap(),
            b"?",
            Duration::from_millis(50),
        )
        .unwrap_err();
        assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
        // Listening but never accepting: the handshake completes, no answer comes.
        let listener = TcpListener::bind(loopback_v4()).unwrap();
        let err = http_get_timeout(
            &CurrentNetns,
            listener.local_addr().unwrap(),
            "/",
            Duration::from_millis(50),
        )
        .unwrap_err();
        assert!(matches!(err, ClientError::Timeout { .. }), "{err}");
    }
}
