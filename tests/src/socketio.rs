//! socket.io servers and clients (Node, `tests/socketio/`) for the end-to-end test of the L7
//! proxy: real socket.io 4 servers as targets, real socket.io-client instances as clients.
//!
//! The npm packages are installed by `cargo xtask setup` (and `cargo xtask test`) into
//! `tests/socketio/node_modules`.
//!
//! A socket.io session starts with HTTP long-polling and then upgrades to a WebSocket; every
//! request of a session must reach the server that opened it, or that server answers
//! "Session ID unknown". Behind a load balancer that takes stickiness: the servers count those
//! errors ([`ServerStats::session_id_unknown`]), and the clients keep the load balancer's
//! cookie (`withCredentials: true` gives each Node client its own cookie jar).

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde::Deserialize;

use crate::{
    netns::{wait_until, ChildGuard, Namespace, Netns},
    servers::http_get,
};

/// How long a server may take to start listening (Node loads socket.io first).
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a server may take to print its counts and exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// clients.js's exit status when its overall timeout expired.
const CLIENTS_TIMED_OUT: i32 = 3;

/// `tests/socketio/`, with the scripts and their `node_modules`.
pub fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("socketio")
}

/// `node SCRIPT` in `ns`, after checking that the npm packages are installed.
fn node(ns: &Namespace, script: &str) -> Command {
    let dir = scripts_dir();
    assert!(
        dir.join("node_modules/socket.io/package.json").is_file()
            && dir
                .join("node_modules/socket.io-client/package.json")
                .is_file(),
        "socket.io is not installed in {}: run `cargo xtask setup` (npm ci there)",
        dir.display()
    );
    let mut cmd = ns.command("node");
    cmd.arg(dir.join(script)).current_dir(&dir);
    cmd
}

/// What a socket.io server counted (`server.js`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct ServerStats {
    pub name: String,
    /// socket.io connections opened on this server.
    pub connections: u64,
    /// Connections upgraded from polling to WebSocket here.
    pub upgrades: u64,
    /// Messages echoed.
    pub echoed: u64,
    /// engine.io connection errors with code 1, "Session ID unknown": requests of a session
    /// that another server opened.
    pub session_id_unknown: u64,
    /// Other engine.io connection errors (at most 100).
    pub other_errors: Vec<EngineError>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct EngineError {
    pub code: Option<i64>,
    pub message: String,
}

/// A socket.io server (`server.js`) in a namespace; killed on drop.
pub struct SocketIoServer {
    child: ChildGuard,
    addr: SocketAddr,
    name: String,
}

impl SocketIoServer {
    /// Starts a server on `addr` (port 0: any free port) answering with `name`, and waits
    /// until it listens.
    pub fn start(ns: &Namespace, addr: SocketAddr, name: &str) -> SocketIoServer {
        let mut cmd = node(ns, "server.js");
        cmd.args(["--host", &addr.ip().to_string()])
            .args(["--port", &addr.port().to_string()])
            .args(["--name", name]);
        let child = ns.spawn(cmd);
        let port = wait_listening(&child, &format!("socket.io server {name}"), addr);
        SocketIoServer {
            child,
            addr: SocketAddr::new(addr.ip(), port),
            name: name.to_string(),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The counts so far, asked over HTTP (`GET /stats`) from `ns`, which must reach the
    /// server (usually the server's own namespace).
    pub fn stats(&self, ns: &impl Netns) -> ServerStats {
        let body = http_get(ns, self.addr, "/stats").unwrap_or_else(|e| {
            panic!(
                "GET /stats from socket.io server {}: {e}\n{}",
                self.name,
                self.child.stderr()
            )
        });
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("stats of socket.io server {}: {e}: {body}", self.name))
    }

    /// Stops the server (SIGTERM) and returns its final counts.
    pub fn stop(mut self) -> ServerStats {
        let status = self.child.stop(libc::SIGTERM, STOP_TIMEOUT);
        let stdout = self.child.stdout();
        stdout
            .lines()
            .rev()
            .find_map(|line| serde_json::from_str(line).ok())
            .unwrap_or_else(|| {
                panic!(
                    "socket.io server {} ({status}) printed no counts: {stdout}\n{}",
                    self.name,
                    self.child.stderr()
                )
            })
    }
}

/// Waits until a script started with `child` prints `{"listening":{"port":...}}`; returns the
/// port.
fn wait_listening(child: &ChildGuard, what: &str, addr: SocketAddr) -> u16 {
    let mut port = None;
    wait_until(
        START_TIMEOUT,
        &format!("{what} to listen on {addr}"),
        || {
            if let Some(status) = child.try_status() {
                panic!("{what} exited ({status}): {}", child.stderr());
            }
            port = child.stdout().lines().find_map(|line| {
                serde_json::from_str::<serde_json::Value>(line).ok()?["listening"]["port"].as_u64()
            });
            port.is_some()
        },
    );
    port.expect("set by wait_until") as u16
}

/// A deliberately non-sticky HTTP reverse proxy (`roundrobin.js`): each request and each
/// WebSocket upgrade goes to the next target in turn. It shows what the socket.io test sees
/// behind a load balancer without stickiness. Killed on drop.
pub struct RoundRobinProxy {
    _child: ChildGuard,
    addr: SocketAddr,
}

impl RoundRobinProxy {
    pub fn start(ns: &Namespace, addr: SocketAddr, targets: &[SocketAddr]) -> RoundRobinProxy {
        let targets: Vec<String> = targets.iter().map(SocketAddr::to_string).collect();
        let mut cmd = node(ns, "roundrobin.js");
        cmd.args(["--host", &addr.ip().to_string()])
            .args(["--port", &addr.port().to_string()])
            .args(["--targets", &targets.join(",")]);
        let child = ns.spawn(cmd);
        let port = wait_listening(&child, "the round-robin proxy", addr);
        RoundRobinProxy {
            _child: child,
            addr: SocketAddr::new(addr.ip(), port),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// What a run of `clients.js` reports.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct ClientsSummary {
    pub clients: usize,
    /// Clients whose socket.io connection opened.
    pub connected: usize,
    /// Clients that upgraded to WebSocket.
    pub upgraded: usize,
    /// Clients whose message came back.
    pub echoed: usize,
    /// Held clients ([`HeldClients`]) whose second message came back.
    #[serde(default)]
    pub echoed_again: usize,
    /// Clients that ended with an error.
    pub failed: usize,
    /// The overall timeout expired before every client finished.
    pub timed_out: bool,
    /// How many echoes each server (by name) sent.
    pub by_server: BTreeMap<String, usize>,
    /// The first 200 failures.
    pub errors: Vec<ClientFailure>,
}

impl ClientsSummary {
    /// Every client connected, upgraded to WebSocket and got its echo, in time.
    pub fn all_succeeded(&self) -> bool {
        !self.timed_out
            && self.failed == 0
            && [self.connected, self.upgraded, self.echoed] == [self.clients; 3]
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct ClientFailure {
    pub client: usize,
    /// `connect`, `upgrade` or `echo`: how far the client got.
    pub stage: String,
    pub message: String,
}

/// Runs `clients` socket.io clients at once from `ns` against `url` (e.g.
/// `http://10.111.100.1`), all with the default transports and `withCredentials: true`;
/// each connects, waits for the upgrade to WebSocket, sends a message and waits for its echo.
///
/// Returns once every client succeeded or failed, or after `timeout` (then
/// [`ClientsSummary::timed_out`] is set).
pub fn run_clients(ns: &Namespace, url: &str, clients: usize, timeout: Duration) -> ClientsSummary {
    let mut cmd = node(ns, "clients.js");
    cmd.args(["--url", url])
        .args(["--clients", &clients.to_string()])
        .args(["--timeout-ms", &timeout.as_millis().to_string()]);
    let mut child = ns.spawn(cmd);
    // The script's own timeout comes first; this one only catches a hung Node.
    let status = child.wait_timeout(timeout + START_TIMEOUT);
    let stdout = child.stdout();
    if !status.success() && status.code() != Some(CLIENTS_TIMED_OUT) {
        panic!(
            "socket.io clients failed ({status}): {stdout}\n{}",
            child.stderr()
        );
    }
    stdout
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str(line).ok())
        .unwrap_or_else(|| {
            panic!(
                "socket.io clients ({status}) printed no summary: {stdout}\n{}",
                child.stderr()
            )
        })
}

/// socket.io clients that stay connected after their first echo, and send a second message
/// on the same connection when asked ([`HeldClients::again`]); `clients.js --again-file`.
pub struct HeldClients {
    child: crate::netns::ChildGuard,
    again: std::path::PathBuf,
    timeout: Duration,
}

impl HeldClients {
    /// Starts `clients` clients from `ns` against `url` and waits until each connected,
    /// upgraded to WebSocket and got its first echo; `timeout` bounds the whole run.
    pub fn start(ns: &Namespace, url: &str, clients: usize, timeout: Duration) -> HeldClients {
        let again = std::env::temp_dir().join(format!("{}-socketio-again", ns.name()));
        let _ = std::fs::remove_file(&again);
        let mut cmd = node(ns, "clients.js");
        cmd.args(["--url", url])
            .args(["--clients", &clients.to_string()])
            .args(["--timeout-ms", &timeout.as_millis().to_string()])
            .arg("--again-file")
            .arg(&again);
        let held = HeldClients {
            child: ns.spawn(cmd),
            again,
            timeout,
        };
        crate::netns::wait_until(timeout, "every socket.io client's first echo", || {
            if let Some(status) = held.child.try_status() {
                panic!(
                    "socket.io clients ended early ({status}): {}\n{}",
                    held.child.stdout(),
                    held.child.stderr()
                );
            }
            held.child.stdout().contains("{\"ready\":")
        });
        held
    }

    /// Every client sends its second message; the summary once all are done.
    pub fn again(mut self) -> ClientsSummary {
        std::fs::write(&self.again, "").unwrap();
        let status = self.child.wait_timeout(self.timeout + START_TIMEOUT);
        let stdout = self.child.stdout();
        let _ = std::fs::remove_file(&self.again);
        if !status.success() && status.code() != Some(CLIENTS_TIMED_OUT) {
            panic!(
                "socket.io clients failed ({status}): {stdout}\n{}",
                self.child.stderr()
            );
        }
        stdout
            .lines()
            .rev()
            .find_map(|line| serde_json::from_str(line).ok())
            .unwrap_or_else(|| panic!("socket.io clients printed no summary: {stdout}"))
    }
}

impl Drop for HeldClients {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.again);
    }
}
