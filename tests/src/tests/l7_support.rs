//! `sluice run` with an L7 (http/https) model in the lb namespace of an [`LbTopology`], for
//! the L7 proxy's end-to-end tests.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, Instant},
};

use super::namespaces::{ApiSocket, PinDir, TIMEOUT};
use crate::{
    netns::{require_root, sluice_binary, wait_until, ChildGuard, CurrentNetns, LbTopology},
    servers::http_get,
};

/// The address http/https listeners listen on; the lb namespace holds it.
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 111, 100, 1);

thread_local! {
    /// [`L7Sluice::start_with_open_files`]'s limit for the daemon it spawns.
    static OPEN_FILES: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// The daemon; the model file and the stickiness key file are removed on drop.
pub struct L7Sluice {
    pub sluice: ChildGuard,
    /// Its control socket (`sluice stats`, `sluice target ...`).
    pub socket: ApiSocket,
    config: PathBuf,
    /// `--stickiness-keys`: the fixture's own, so tests never share keys.
    pub keys: PathBuf,
    pin_dir: PinDir,
}

impl Drop for L7Sluice {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
        let _ = std::fs::remove_file(&self.keys);
    }
}

/// `targets = [...]`'s contents: every target of the topology by its IPv4 address.
pub fn all_targets(topology: &LbTopology) -> String {
    let targets: Vec<String> = topology
        .targets
        .iter()
        .map(|t| format!("{{ address = \"{}\" }}", t.link.v4))
        .collect();
    targets.join(", ")
}

/// A fast health check on `port`: targets count as healthy (or not) within a second.
pub fn fast_health_check(port: u16) -> String {
    format!("health_check = {{ port = {port}, interval = \"200ms\", timeout = \"150ms\", healthy_threshold = 2, unhealthy_threshold = 2 }}\n")
}

impl L7Sluice {
    /// Gives the lb namespace [`VIP`] (the proxy terminates connections to it, so the lb's
    /// own stack must accept them), runs `sluice run` with `model`, and waits until `healthy`
    /// targets are reported healthy.
    pub fn start(topology: &LbTopology, model: &str, healthy: usize) -> L7Sluice {
        L7Sluice::start_with(topology, model, healthy, &[])
    }

    /// [`L7Sluice::start`] with more arguments for `sluice run`.
    pub fn start_with(
        topology: &LbTopology,
        model: &str,
        healthy: usize,
        extra: &[&str],
    ) -> L7Sluice {
        L7Sluice::start_from(topology, model, healthy, &sluice_binary(), extra)
    }

    /// [`L7Sluice::start`] with the daemon's open-files limit (soft and hard, so that it
    /// cannot raise it) lowered to `open_files`.
    pub fn start_with_open_files(
        topology: &LbTopology,
        model: &str,
        healthy: usize,
        open_files: u64,
    ) -> L7Sluice {
        OPEN_FILES.with(|limit| limit.set(Some(open_files)));
        let lb = L7Sluice::start(topology, model, healthy);
        OPEN_FILES.with(|limit| limit.set(None));
        lb
    }

    /// [`L7Sluice::start_with`] with the sluice binary at `binary`.
    pub fn start_from(
        topology: &LbTopology,
        model: &str,
        healthy: usize,
        binary: &std::path::Path,
        extra: &[&str],
    ) -> L7Sluice {
        require_root();
        topology
            .lb
            .add_addr(&topology.lb_client_side.iface, &format!("{VIP}/32"));
        let config = std::env::temp_dir().join(format!("{}.toml", topology.lb.name()));
        std::fs::write(&config, model).unwrap();
        let keys = std::env::temp_dir().join(format!("{}.keys", topology.lb.name()));
        let pin_dir = PinDir::new();
        let socket = ApiSocket::new();
        let sluice = L7Sluice::spawn(topology, binary, &pin_dir, &socket, &config, &keys, extra);
        let lb = L7Sluice {
            sluice,
            socket,
            config,
            keys,
            pin_dir,
        };
        lb.wait_healthy(healthy);
        lb
    }

    fn spawn(
        topology: &LbTopology,
        binary: &std::path::Path,
        pin_dir: &PinDir,
        socket: &ApiSocket,
        config: &std::path::Path,
        keys: &std::path::Path,
        extra: &[&str],
    ) -> ChildGuard {
        let mut cmd = topology.lb.command(binary);
        cmd.args(["run", "--iface", "eth0", "--iface", "eth1"])
            .args(["--pin-dir", pin_dir.arg()])
            .args(["--socket", socket.arg()])
            .args(["--flows", "65536", "--metrics-address", "off"])
            .arg("--config")
            .arg(config)
            .arg("--stickiness-keys")
            .arg(keys)
            .args(extra)
            // The access log (target sluice::access) included.
            .env("RUST_LOG", "info");
        if let Some(open_files) = OPEN_FILES.with(|limit| limit.get()) {
            let limit = libc::rlimit {
                rlim_cur: open_files,
                rlim_max: open_files,
            };
            // SAFETY: setrlimit is async-signal-safe and only reads `limit`, a copy.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        topology.lb.spawn(cmd)
    }

    /// Waits until the daemon reported `healthy` targets healthy.
    pub fn wait_healthy(&self, healthy: usize) {
        wait_until(TIMEOUT, &format!("{healthy} healthy targets"), || {
            self.check_running();
            self.sluice.stderr().matches("-> healthy").count() >= healthy
        });
    }

    /// Starts another daemon (`binary`, with `extra` arguments) with the same pin directory,
    /// control socket, configuration and key file; returns it. The running one is left
    /// alone: stop it before or after, as the test needs.
    pub fn spawn_next(
        &self,
        topology: &LbTopology,
        binary: &std::path::Path,
        extra: &[&str],
    ) -> ChildGuard {
        L7Sluice::spawn(
            topology,
            binary,
            &self.pin_dir,
            &self.socket,
            &self.config,
            &self.keys,
            extra,
        )
    }

    /// Writes `model` over the configuration file and asks the daemon to re-read it
    /// (SIGHUP); returns at once: wait for the log line that says how it went.
    pub fn reload(&self, model: &str) {
        self.write_config(model);
        self.sluice.signal(libc::SIGHUP);
    }

    /// Writes `model` over the configuration file (for `sluice reload`).
    pub fn write_config(&self, model: &str) {
        std::fs::write(&self.config, model).unwrap();
    }

    /// A sluice CLI command against this daemon.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new(sluice_binary())
            .args(args)
            .args(["--socket", self.socket.arg()])
            .output()
            .expect("running sluice")
    }

    /// Panics with the daemon's log if it exited.
    pub fn check_running(&self) {
        if let Some(status) = self.sluice.try_status() {
            panic!("sluice exited ({status}): {}", self.sluice.stderr());
        }
    }

    /// Waits until `GET /` to `VIP:port` from the client answers with a body starting with
    /// `prefix` (e.g. a target's name).
    pub fn wait_forwarding(&self, topology: &LbTopology, port: u16, prefix: &str) {
        let vip = SocketAddr::new(IpAddr::from(VIP), port);
        wait_until(TIMEOUT, &format!("{vip} to forward GET /"), || {
            self.check_running();
            http_get(&topology.client.ns, vip, "/").is_ok_and(|body| body.starts_with(prefix))
        });
    }
}

/// What a [`RequestLoop`] saw.
#[derive(Debug)]
pub struct LoopReport {
    /// Requests answered 200.
    pub ok: u64,
    /// Every other outcome, in order: what was asked and what happened.
    pub failed: Vec<String>,
    /// Requests on a reused keep-alive connection that the server had closed before any
    /// answer, sent again on a new connection (as HTTP clients do for idempotent requests).
    pub retried: u64,
}

/// Two clients in the client namespace that send `GET path` to an address until stopped: one
/// on a new connection each time (a refused or reset connection counts), one on a keep-alive
/// connection, reused until the server says `Connection: close` (a connection the server
/// closed before answering a request sent on it is retried once on a new one, as clients
/// do, and counted in [`LoopReport::retried`]; any other failure counts). Bounded: it stops
/// by itself after [`RequestLoop::LIMIT`].
pub struct RequestLoop {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<(Vec<String>, u64)>>,
}

impl RequestLoop {
    pub const LIMIT: Duration = Duration::from_secs(180);

    pub fn start(topology: &LbTopology, addr: SocketAddr, path: &'static str) -> RequestLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let (thread_stop, thread_ok) = (Arc::clone(&stop), Arc::clone(&ok));
        let thread = topology.client.ns.spawn_thread("request loop", move || {
            let started = Instant::now();
            let mut failed = Vec::new();
            let mut retried = 0;
            let mut kept: Option<TcpStream> = None;
            while !thread_stop.load(Relaxed) && started.elapsed() < RequestLoop::LIMIT {
                match http_get(&CurrentNetns, addr, path) {
                    Ok(_) => {
                        thread_ok.fetch_add(1, Relaxed);
                    }
                    Err(e) => failed.push(format!("new connection: {e}")),
                }
                let attempt = |stream: Option<TcpStream>| {
                    let mut stream = match stream {
                        Some(stream) => stream,
                        None => TcpStream::connect_timeout(&addr, CLIENT_TIMEOUT)?,
                    };
                    let (status, close) = keep_alive_get(&mut stream, addr, path)?;
                    Ok::<_, std::io::Error>((stream, status, close))
                };
                let reused = kept.is_some();
                let answered = match attempt(kept.take()) {
                    // The server closed the idle connection as the request went out: it
                    // shows as an end of stream, or as a broken pipe or reset when the
                    // request was written after the close (curl and browsers retry all three).
                    Err(e)
                        if reused
                            && matches!(
                                e.kind(),
                                std::io::ErrorKind::UnexpectedEof
                                    | std::io::ErrorKind::BrokenPipe
                                    | std::io::ErrorKind::ConnectionReset
                            ) =>
                    {
                        retried += 1;
                        attempt(None)
                    }
                    other => other,
                };
                match answered {
                    Ok((stream, 200, close)) => {
                        thread_ok.fetch_add(1, Relaxed);
                        if !close {
                            kept = Some(stream);
                        }
                    }
                    Ok((_, status, _)) => failed.push(format!("keep-alive: status {status}")),
                    Err(e) => failed.push(format!("keep-alive: {e}")),
                }
            }
            (failed, retried)
        });
        RequestLoop {
            stop,
            ok,
            thread: Some(thread),
        }
    }

    /// Requests answered 200 so far.
    pub fn ok(&self) -> u64 {
        self.ok.load(Relaxed)
    }

    /// Waits until `more` requests more than now were answered (the loop is going).
    pub fn wait_for(&self, more: u64) {
        let target = self.ok() + more;
        wait_until(TIMEOUT, &format!("{more} more answered requests"), || {
            self.ok() >= target
        });
    }

    pub fn stop(mut self) -> LoopReport {
        self.stop.store(true, Relaxed);
        let (failed, retried) = self
            .thread
            .take()
            .expect("joined once")
            .join()
            .expect("the request loop panicked");
        LoopReport {
            ok: self.ok(),
            failed,
            retried,
        }
    }
}

impl Drop for RequestLoop {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// One `GET` on a keep-alive connection: the status once the whole body arrived, and whether
/// the server closes the connection after it (`Connection: close`). A connection closed (or
/// reset) before any answer is `UnexpectedEof`.
fn keep_alive_get(
    stream: &mut TcpStream,
    addr: SocketAddr,
    path: &str,
) -> std::io::Result<(u16, bool)> {
    use std::io::{BufRead, BufReader, Read, Write};
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: sluice-tests\r\n\r\n"
    )?;
    let mut reader = BufReader::new(&mut *stream);
    let mut status_line = String::new();
    let first = reader.read_line(&mut status_line);
    if matches!(&first, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "reset before answering",
        ));
    }
    if first? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed before answering",
        ));
    }
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
    let mut length = None;
    let mut close = false;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed in the response head",
            ));
        }
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse::<usize>().ok();
            }
            if name.eq_ignore_ascii_case("connection") && value.trim().eq_ignore_ascii_case("close")
            {
                close = true;
            }
        }
    }
    let length = length
        .ok_or_else(|| std::io::Error::other("a keep-alive answer without Content-Length"))?;
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok((status, close))
}
