//! A WebSocket server and client (tungstenite, on plain threads like [`crate::servers`]) for
//! the L7 proxy's tests: upgrades pass through, an upgraded connection stays on its target,
//! and it stays open while idle past the listener's idle timeout as long as heartbeats
//! (WebSocket pings) flow, while a silent one is closed.
//!
//! The server answers every text message `M` with `NAME M`, so a client sees which target
//! holds its connection, and answers pings with pongs (tungstenite does that by itself).

use std::{
    io,
    net::{SocketAddr, TcpStream},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use tungstenite::{
    handshake::HandshakeError, protocol::WebSocket, Error as WsError, Message, Utf8Bytes,
};

use crate::{
    netns::Netns,
    servers::{
        accept_loop, is_timeout, tcp_listener, ClientError, Running, Shared, CLIENT_TIMEOUT,
    },
};

/// A WebSocket server answering text messages with its name; stops and joins on drop (open
/// connections get a close frame).
pub struct WebSocketServer {
    running: Running,
}

impl WebSocketServer {
    pub fn start(ns: &impl Netns, addr: SocketAddr, name: &str) -> WebSocketServer {
        let running = Running::start(
            ns,
            "websocket",
            name,
            move || tcp_listener(addr),
            |listener, shared| accept_loop(listener, &shared, serve_websocket),
        );
        WebSocketServer { running }
    }

    pub fn addr(&self) -> SocketAddr {
        self.running.addr
    }

    /// The remote address of each TCP connection accepted so far (IPv4-mapped as IPv4).
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.running.peers()
    }

    /// Text and binary messages answered so far (pings not counted).
    pub fn messages(&self) -> u64 {
        self.running.shared.requests.load(Ordering::Relaxed)
    }
}

/// Serves one connection: the opening handshake, then answers until the peer closes or the
/// server stops. The stream's read timeout ([`crate::servers::POLL_INTERVAL`]) lets it notice
/// a stop.
fn serve_websocket(stream: TcpStream, shared: &Shared) {
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    let mut handshake = tungstenite::accept(stream);
    let mut ws = loop {
        match handshake {
            Ok(ws) => break ws,
            // The read timed out mid-handshake: go on unless stopping or too slow.
            Err(HandshakeError::Interrupted(mid))
                if !shared.stopping() && Instant::now() < deadline =>
            {
                handshake = mid.handshake();
            }
            Err(_) => return,
        }
    };
    loop {
        if shared.stopping() {
            let _ = ws.close(None);
            let _ = ws.flush();
            return;
        }
        let answer = match ws.read() {
            Ok(Message::Text(text)) => Message::text(format!("{} {text}", shared.name)),
            Ok(Message::Binary(data)) => Message::Binary(data),
            // Pongs for pings are queued by tungstenite and sent by the next read.
            Ok(_) => continue,
            Err(WsError::Io(e)) if is_timeout(&e) => continue,
            Err(_) => return,
        };
        shared.requests.fetch_add(1, Ordering::Relaxed);
        if ws.send(answer).is_err() {
            return;
        }
    }
}

/// A WebSocket client connection made inside a namespace.
pub struct WebSocketClient {
    ws: WebSocket<TcpStream>,
    addr: SocketAddr,
    next_ping: u64,
}

impl WebSocketClient {
    /// Connects to `ws://HOST/PATH` at `addr` from inside `ns`, `HOST` being `addr` itself.
    pub fn connect(
        ns: &impl Netns,
        addr: SocketAddr,
        path: &str,
    ) -> Result<WebSocketClient, ClientError> {
        WebSocketClient::connect_to_host(ns, addr, &addr.to_string(), path)
    }

    /// [`connect`](Self::connect) with `host` as the Host header (for host rules).
    pub fn connect_to_host(
        ns: &impl Netns,
        addr: SocketAddr,
        host: &str,
        path: &str,
    ) -> Result<WebSocketClient, ClientError> {
        let io_err = |e| ClientError::from_io(addr, CLIENT_TIMEOUT, e);
        let stream = ns
            .run_in(|| TcpStream::connect_timeout(&addr, CLIENT_TIMEOUT))
            .map_err(|source| ClientError::Connect { addr, source })?;
        stream
            .set_read_timeout(Some(CLIENT_TIMEOUT))
            .map_err(io_err)?;
        stream
            .set_write_timeout(Some(CLIENT_TIMEOUT))
            .map_err(io_err)?;
        stream.set_nodelay(true).map_err(io_err)?;
        let url = format!("ws://{host}{path}");
        let (ws, _response) = tungstenite::client(url.as_str(), stream).map_err(|e| match e {
            HandshakeError::Interrupted(_) => ClientError::Timeout {
                addr,
                timeout: CLIENT_TIMEOUT,
            },
            HandshakeError::Failure(e) => ws_error(addr, CLIENT_TIMEOUT, e),
        })?;
        Ok(WebSocketClient {
            ws,
            addr,
            next_ping: 0,
        })
    }

    /// Sends `text` and returns the answer, `NAME TEXT` from the server holding the connection.
    pub fn echo(&mut self, text: &str) -> Result<String, ClientError> {
        self.send(Message::text(text))?;
        let deadline = Instant::now() + CLIENT_TIMEOUT;
        loop {
            match self.read_until(deadline)? {
                Message::Text(answer) => return Ok(answer.to_string()),
                Message::Close(frame) => return Err(self.closed(frame.map(|f| f.reason))),
                _ => continue,
            }
        }
    }

    /// The name of the server holding the connection (asked with a message).
    pub fn server_name(&mut self) -> Result<String, ClientError> {
        let answer = self.echo("who")?;
        answer
            .strip_suffix(" who")
            .map(str::to_string)
            .ok_or_else(|| ClientError::Malformed {
                addr: self.addr,
                reason: format!("answer {answer:?} to \"who\""),
            })
    }

    /// One heartbeat: a ping, and the wait for its pong. Returns the round trip time.
    pub fn ping(&mut self) -> Result<Duration, ClientError> {
        self.next_ping += 1;
        let payload = self.next_ping.to_be_bytes().to_vec();
        let sent = Instant::now();
        self.send(Message::Ping(payload.clone().into()))?;
        let deadline = sent + CLIENT_TIMEOUT;
        loop {
            match self.read_until(deadline)? {
                Message::Pong(data) if data[..] == payload[..] => return Ok(sent.elapsed()),
                Message::Close(frame) => return Err(self.closed(frame.map(|f| f.reason))),
                _ => continue,
            }
        }
    }

    /// Keeps the connection otherwise idle for `total`, sending a heartbeat every `every`;
    /// returns how many were answered. Between heartbeats it waits on the socket, so a close
    /// by the other side (e.g. a proxy's idle timeout) ends it at once with an error.
    pub fn heartbeat_for(&mut self, total: Duration, every: Duration) -> Result<u32, ClientError> {
        assert!(!every.is_zero(), "heartbeats need an interval");
        let end = Instant::now() + total;
        let mut answered = 0;
        while Instant::now() < end {
            self.ping()?;
            answered += 1;
            let next = (Instant::now() + every).min(end);
            self.expect_silence_until(next)?;
        }
        Ok(answered)
    }

    /// Sends nothing and waits up to `timeout` for the other side to close the connection;
    /// returns how long that took. `Err(Timeout)` if it is still open.
    pub fn wait_closed(&mut self, timeout: Duration) -> Result<Duration, ClientError> {
        let start = Instant::now();
        match self.expect_silence_until(start + timeout) {
            Ok(()) => Err(ClientError::Timeout {
                addr: self.addr,
                timeout,
            }),
            Err(ClientError::Timeout { .. }) => unreachable!("silence is Ok"),
            Err(ClientError::Malformed { addr, reason }) => {
                Err(ClientError::Malformed { addr, reason })
            }
            Err(_closed) => Ok(start.elapsed()),
        }
    }

    /// Reads until `until`: `Ok` if nothing but pongs arrived, an error if the connection
    /// closed or a message came.
    fn expect_silence_until(&mut self, until: Instant) -> Result<(), ClientError> {
        loop {
            match self.read_until(until) {
                Ok(Message::Pong(_)) => continue,
                Ok(Message::Close(frame)) => return Err(self.closed(frame.map(|f| f.reason))),
                Ok(other) => {
                    return Err(ClientError::Malformed {
                        addr: self.addr,
                        reason: format!("unexpected message {other:?}"),
                    })
                }
                Err(ClientError::Timeout { .. }) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// The next message before `deadline` (`Err(Timeout)` after it).
    fn read_until(&mut self, deadline: Instant) -> Result<Message, ClientError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ClientError::Timeout {
                addr: self.addr,
                timeout: CLIENT_TIMEOUT,
            });
        }
        let addr = self.addr;
        self.ws
            .get_mut()
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .map_err(|e| ClientError::from_io(addr, left, e))?;
        self.ws.read().map_err(|e| ws_error(addr, left, e))
    }

    fn send(&mut self, message: Message) -> Result<(), ClientError> {
        let addr = self.addr;
        self.ws
            .send(message)
            .map_err(|e| ws_error(addr, CLIENT_TIMEOUT, e))
    }

    fn closed(&self, reason: Option<Utf8Bytes>) -> ClientError {
        ClientError::Io {
            addr: self.addr,
            source: io::Error::new(
                io::ErrorKind::ConnectionAborted,
                format!(
                    "the WebSocket was closed ({})",
                    reason.as_deref().unwrap_or("no reason")
                ),
            ),
        }
    }
}

fn ws_error(addr: SocketAddr, timeout: Duration, e: WsError) -> ClientError {
    match e {
        WsError::Io(source) => ClientError::from_io(addr, timeout, source),
        WsError::ConnectionClosed | WsError::AlreadyClosed => ClientError::Io {
            addr,
            source: io::Error::new(io::ErrorKind::ConnectionAborted, "the WebSocket is closed"),
        },
        WsError::Protocol(p) => ClientError::Io {
            addr,
            source: io::Error::new(io::ErrorKind::ConnectionReset, p.to_string()),
        },
        other => ClientError::Malformed {
            addr,
            reason: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    //! Loopback only, in the test's own namespace: no root needed.

    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener};

    use super::*;
    use crate::netns::CurrentNetns;

    #[test]
    fn messages_are_answered_with_the_server_name() {
        for ip in [
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ] {
            let server = WebSocketServer::start(&CurrentNetns, SocketAddr::new(ip, 0), "ws-1");
            let mut client =
                WebSocketClient::connect(&CurrentNetns, server.addr(), "/chat").unwrap();
            assert_eq!(client.echo("hello").unwrap(), "ws-1 hello");
            assert_eq!(client.server_name().unwrap(), "ws-1");
            assert!(client.ping().unwrap() < CLIENT_TIMEOUT);
            assert_eq!(server.messages(), 2);
            assert_eq!(server.peers().len(), 1);
        }
    }

    #[test]
    fn heartbeats_keep_going_and_a_stopped_server_closes() {
        let server = WebSocketServer::start(&CurrentNetns, (Ipv4Addr::LOCALHOST, 0).into(), "hb");
        let mut client = WebSocketClient::connect(&CurrentNetns, server.addr(), "/").unwrap();
        let answered = client
            .heartbeat_for(Duration::from_millis(250), Duration::from_millis(50))
            .unwrap();
        assert!((3..=6).contains(&answered), "{answered} heartbeats");
        // Open and silent: no close within a short wait.
        assert!(matches!(
            client.wait_closed(Duration::from_millis(100)),
            Err(ClientError::Timeout { .. })
        ));
        drop(server);
        let took = client.wait_closed(CLIENT_TIMEOUT).unwrap();
        assert!(took < CLIENT_TIMEOUT);
        assert!(client.echo("late").is_err());
    }

    #[test]
    fn a_plain_tcp_server_is_not_a_websocket() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let answer = std::thread::spawn(move || {
            use std::io::{Read, Write};
            let (mut stream, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf).unwrap();
            stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno")
                .unwrap();
        });
        let err = WebSocketClient::connect(&CurrentNetns, addr, "/")
            .err()
            .expect("a 200 is not an upgrade");
        assert!(matches!(err, ClientError::Malformed { .. }), "{err}");
        answer.join().unwrap();
    }
}
