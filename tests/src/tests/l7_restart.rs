//! Hitless restart and upgrade of the L7 proxy: the next `sluice run` takes the listening
//! sockets over from the running one, which drains. Under a loop of requests (new and
//! keep-alive connections) nothing is refused or fails; a request in flight completes;
//! WebSockets and socket.io sessions opened before still echo after; a sticky client keeps
//! its target; at the drain deadline the old daemon closes what is left, cleanly, and exits.

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    path::PathBuf,
    time::{Duration, Instant},
};

use super::{
    l7_support::{fast_health_check, L7Sluice, RequestLoop, VIP},
    namespaces::TIMEOUT,
};
use crate::{
    http_servers::{assert_websocket_switched, frame, parse_frame, L7Server},
    netns::{sluice_binary, wait_until, ChildGuard, LbTopology},
    servers::http_get,
    socketio::{HeldClients, SocketIoServer},
};

const WEB: u16 = 80;
const SOCKETIO: u16 = 8000;
const WEB_TARGET: u16 = 8080;
const SOCKETIO_TARGET: u16 = 3000;
/// WebSockets and socket.io clients each, opened before the restart.
const LONG_LIVED: usize = 20;
/// The old daemon's drain deadline: long enough for the checks after the hand-over on a
/// busy machine, short enough to see it end.
const DRAIN_SECS: u64 = 12;
const SOCKETIO_TIMEOUT: Duration = Duration::from_secs(60);

fn model(topology: &LbTopology) -> String {
    let targets: Vec<String> = topology
        .targets
        .iter()
        .map(|t| format!("{{ address = \"{}\" }}", t.link.v4))
        .collect();
    let targets = targets.join(", ");
    format!(
        "[[listener]]\nname = \"web\"\naddress = \"{VIP}\"\nport = {WEB}\nprotocol = \"http\"\ndefault_target_group = \"www\"\nidle_timeout = 60\n\n\
         [[listener]]\nname = \"socketio\"\naddress = \"{VIP}\"\nport = {SOCKETIO}\nprotocol = \"http\"\ndefault_target_group = \"socketio\"\nidle_timeout = 60\n\n\
         [[target_group]]\nname = \"www\"\nport = {WEB_TARGET}\nstickiness = {{ type = \"lb_cookie\" }}\n{}targets = [{targets}]\n\n\
         [[target_group]]\nname = \"socketio\"\nport = {SOCKETIO_TARGET}\nstickiness = {{ type = \"lb_cookie\" }}\n{}targets = [{targets}]\n",
        fast_health_check(WEB_TARGET),
        fast_health_check(SOCKETIO_TARGET),
    )
}

struct Fixture {
    topology: LbTopology,
    web: Vec<L7Server>,
    _socketio: Vec<SocketIoServer>,
    lb: L7Sluice,
}

impl Fixture {
    fn start() -> Fixture {
        let topology = LbTopology::new(3);
        let any = SocketAddr::new(IpAddr::from(Ipv4Addr::UNSPECIFIED), WEB_TARGET);
        let web = topology
            .targets
            .iter()
            .enumerate()
            .map(|(i, t)| L7Server::start(&t.ns, any, &format!("target{i}")))
            .collect();
        let socketio = topology
            .targets
            .iter()
            .enumerate()
            .map(|(i, t)| {
                SocketIoServer::start(
                    &t.ns,
                    SocketAddr::new(t.link.v4.into(), SOCKETIO_TARGET),
                    &format!("target{i}"),
                )
            })
            .collect();
        let drain = DRAIN_SECS.to_string();
        // Several workers accept on each listening socket, whatever the CPUs of the
        // machine; the successors run another number (see `hitless`).
        let lb = L7Sluice::start_with(
            &topology,
            &model(&topology),
            6,
            &["--drain-timeout", &drain, "--proxy-workers", "3"],
        );
        lb.wait_forwarding(&topology, WEB, "target");
        lb.wait_forwarding(&topology, SOCKETIO, "target");
        Fixture {
            topology,
            web,
            _socketio: socketio,
            lb,
        }
    }

    fn vip(port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::from(VIP), port)
    }

    /// `GET /` with the `SLUICE` cookie `cookie`: the target's name and the cookie set.
    fn sticky_get(&self, cookie: Option<&str>) -> (String, Option<String>) {
        let mut stream = self
            .topology
            .client
            .ns
            .run_in(|| TcpStream::connect_timeout(&Fixture::vip(WEB), TIMEOUT))
            .unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let cookie = cookie.map_or(String::new(), |c| format!("Cookie: SLUICE={c}\r\n"));
        write!(
            stream,
            "GET / HTTP/1.1\r\nHost: www.example.com\r\n{cookie}Connection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
        let set = answer
            .lines()
            .filter_map(|l| l.strip_prefix("set-cookie: SLUICE="))
            .map(|v| v.split(';').next().unwrap().to_string())
            .next();
        let body = answer.rsplit("\r\n\r\n").next().unwrap().trim().to_string();
        (body, set)
    }
}

/// A WebSocket to `/ws` through the proxy, echoed by its target.
struct WebSocket {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl WebSocket {
    fn open(f: &Fixture) -> WebSocket {
        let mut stream = f
            .topology
            .client
            .ns
            .run_in(|| TcpStream::connect_timeout(&Fixture::vip(WEB), TIMEOUT))
            .unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        write!(
            stream,
            "GET /ws HTTP/1.1\r\nHost: www.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        let end = loop {
            let n = stream.read(&mut chunk).expect("the handshake answer");
            assert!(n > 0, "closed in the handshake");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        assert_websocket_switched(&head, key);
        buf.drain(..end);
        WebSocket { stream, buf }
    }

    /// Sends `text` and reads the echo.
    fn echoes(&mut self, text: &str) -> bool {
        if self
            .stream
            .write_all(&frame(1, text.as_bytes(), Some([1, 2, 3, 4])))
            .is_err()
        {
            return false;
        }
        loop {
            if let Some((op, payload, used)) = parse_frame(&self.buf) {
                self.buf.drain(..used);
                return op == 1 && payload == text.as_bytes();
            }
            let mut chunk = [0u8; 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return false,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads until the proxy closes the connection: true for a clean end of stream (FIN),
    /// false for a reset or an error.
    fn closes_cleanly(&mut self) -> bool {
        let mut chunk = [0u8; 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    }
}

/// How the next daemon comes.
enum Successor {
    /// SIGTERM to the running daemon, then `sluice run` with the same binary.
    Restart,
    /// `sluice run --take-over` with another binary (a copy at another path) while the
    /// running daemon runs on.
    Upgrade,
}

/// A copy of the sluice binary at another path, removed on drop.
struct BinaryCopy(PathBuf);

impl BinaryCopy {
    fn new(topology: &LbTopology) -> BinaryCopy {
        let path = std::env::temp_dir().join(format!("{}-sluice-next", topology.lb.name()));
        std::fs::copy(sluice_binary(), &path).unwrap();
        BinaryCopy(path)
    }
}

impl Drop for BinaryCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn hitless(successor: Successor) {
    let mut f = Fixture::start();
    let mut sockets: Vec<WebSocket> = (0..LONG_LIVED).map(|_| WebSocket::open(&f)).collect();
    for (i, ws) in sockets.iter_mut().enumerate() {
        assert!(ws.echoes(&format!("before {i}")), "WebSocket {i}");
    }
    let url = format!("http://{VIP}:{SOCKETIO}");
    let sessions = HeldClients::start(&f.topology.client.ns, &url, LONG_LIVED, SOCKETIO_TIMEOUT);
    let (pinned, cookie) = f.sticky_get(None);
    let cookie = cookie.expect("a sticky group sets its cookie");
    let requests = RequestLoop::start(&f.topology, Fixture::vip(WEB), "/");
    requests.wait_for(20);
    // A request in flight across the hand-over: its target answers only when released.
    let slow = f.topology.client.ns.spawn_thread("slow request", || {
        http_get(&crate::netns::CurrentNetns, Fixture::vip(WEB), "/slow")
    });
    wait_until(TIMEOUT, "the slow request to reach its target", || {
        f.web.iter().map(L7Server::slow_waiting).sum::<u64>() == 1
    });

    let copy;
    assert!(f
        .lb
        .sluice
        .stderr()
        .contains("the L7 proxy runs 3 worker thread(s)"));
    let (binary, extra, workers): (PathBuf, &[&str], usize) = match successor {
        Successor::Restart => {
            f.lb.sluice.signal(libc::SIGTERM);
            (sluice_binary(), &["--proxy-workers", "2"], 2)
        }
        Successor::Upgrade => {
            copy = BinaryCopy::new(&f.topology);
            (copy.0.clone(), &["--take-over", "--proxy-workers", "1"], 1)
        }
    };
    let old_started = Instant::now();
    let next: ChildGuard = f.lb.spawn_next(&f.topology, &binary, extra);
    let mut old = std::mem::replace(&mut f.lb.sluice, next);
    wait_until(
        TIMEOUT,
        "the next daemon to take the listening sockets",
        || {
            f.lb.check_running();
            f.lb.sluice
                .stderr()
                .contains("took over from the previous daemon: 2 listening socket(s)")
        },
    );
    // The predecessor logs it once the successor confirmed, which may be after the
    // successor's own line.
    wait_until(TIMEOUT, "the old daemon to log the hand-over", || {
        old.stderr()
            .contains("handed 2 listening socket(s) to the next daemon")
    });
    // One socket per listener whatever the workers on either side: none is left unserved.
    wait_until(TIMEOUT, "the next daemon's proxy to start", || {
        f.lb.sluice
            .stderr()
            .contains(&format!("the L7 proxy runs {workers} worker thread(s)"))
    });
    // The loop goes on through the new daemon.
    requests.wait_for(40);

    // The request in flight completes, through the old daemon.
    for server in &f.web {
        server.release_slow();
    }
    let answered = slow.join().unwrap();
    assert!(
        answered
            .as_deref()
            .is_ok_and(|body| body.starts_with("target")),
        "{answered:?}"
    );
    // Long-lived connections opened before still work.
    for (i, ws) in sockets.iter_mut().enumerate() {
        assert!(
            ws.echoes(&format!("after {i}")),
            "WebSocket {i} after the hand-over"
        );
    }
    let summary = sessions.again();
    assert!(
        summary.failed == 0 && summary.echoed_again == LONG_LIVED && !summary.timed_out,
        "{summary:#?}"
    );
    // The sticky client keeps its target with the new daemon.
    for _ in 0..5 {
        assert_eq!(f.sticky_get(Some(&cookie)).0, pinned);
    }
    let report = requests.stop();
    assert!(
        report.failed.is_empty(),
        "{} of {} requests failed: {:?}",
        report.failed.len(),
        report.ok + report.failed.len() as u64,
        report.failed
    );

    // At the drain deadline the old daemon closes the WebSockets (a clean end of stream)
    // and exits; the new one serves on.
    let status = old.wait_timeout(Duration::from_secs(DRAIN_SECS) + TIMEOUT);
    assert!(status.success(), "{status}: {}", old.stderr());
    assert!(
        old_started.elapsed() >= Duration::from_secs(DRAIN_SECS) - Duration::from_secs(1),
        "the old daemon left after {:?}, before its drain deadline",
        old_started.elapsed()
    );
    for (i, ws) in sockets.iter_mut().enumerate() {
        assert!(ws.closes_cleanly(), "WebSocket {i} was reset");
    }
    let log = old.stderr();
    assert!(
        log.contains(&format!("drain deadline ({DRAIN_SECS}s) reached with"))
            && log.contains("the daemon's drain is over"),
        "{log}"
    );
    f.lb.wait_forwarding(&f.topology, WEB, "target");
    let fresh = WebSocket::open(&f).echoes("new");
    assert!(fresh, "a WebSocket through the new daemon");
    f.lb.check_running();
}

#[test]
fn a_restart_under_traffic_refuses_nothing_and_keeps_long_lived_connections() {
    hitless(Successor::Restart);
}

#[test]
fn an_upgrade_to_another_binary_under_traffic_refuses_nothing_and_keeps_long_lived_connections() {
    hitless(Successor::Upgrade);
}

#[test]
fn a_second_daemon_without_take_over_is_refused_while_one_runs() {
    let f = Fixture::start();
    let mut second = f.lb.spawn_next(&f.topology, &sluice_binary(), &[]);
    let status = second.wait_timeout(TIMEOUT);
    assert_eq!(status.code(), Some(1), "{}", second.stderr());
    let stderr = second.stderr();
    assert!(
        stderr.contains("a sluice daemon runs on ") && stderr.contains("--take-over"),
        "{stderr}"
    );
    // The running one serves on, still accepting.
    f.lb.check_running();
    let requests = RequestLoop::start(&f.topology, Fixture::vip(WEB), "/");
    requests.wait_for(10);
    assert!(requests.stop().failed.is_empty());
}

/// Kills a process this test did not spawn itself (a daemon's successor) when dropped.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: a signal to a pid read from the daemon's own log.
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}

/// The old daemon's drain in the SIGUSR2 test.
const SIGUSR2_DRAIN: Duration = Duration::from_secs(15);

#[test]
fn sigusr2_restarts_in_place_with_the_binary_now_at_the_daemons_path() {
    let topology = LbTopology::new(3);
    let any = SocketAddr::new(IpAddr::from(Ipv4Addr::UNSPECIFIED), WEB_TARGET);
    let web: Vec<L7Server> = topology
        .targets
        .iter()
        .enumerate()
        .map(|(i, t)| L7Server::start(&t.ns, any, &format!("target{i}")))
        .collect();
    let model = format!(
        "[[listener]]\nname = \"web\"\naddress = \"{VIP}\"\nport = {WEB}\nprotocol = \"http\"\ndefault_target_group = \"www\"\nidle_timeout = 60\n\n\
         [[target_group]]\nname = \"www\"\nport = {WEB_TARGET}\nstickiness = {{ type = \"lb_cookie\" }}\n{}targets = [{}]\n",
        fast_health_check(WEB_TARGET),
        super::l7_support::all_targets(&topology),
    );
    let installed = BinaryCopy::new(&topology);
    // The drain must outlast the successor's start, whose XDP program load took 5-7 s on a
    // busy 2-core machine: the WebSocket is checked on the old daemon after the successor serves.
    let lb = L7Sluice::start_from(
        &topology,
        &model,
        3,
        &installed.0,
        &["--drain-timeout", &SIGUSR2_DRAIN.as_secs().to_string()],
    );
    lb.wait_forwarding(&topology, WEB, "target");
    let fixture = Fixture {
        topology,
        web,
        _socketio: Vec::new(),
        lb,
    };
    let f = &fixture;
    let mut socket = WebSocket::open(f);
    assert!(socket.echoes("before"));
    let (pinned, cookie) = f.sticky_get(None);
    let cookie = cookie.unwrap();
    let requests = RequestLoop::start(&f.topology, Fixture::vip(WEB), "/");
    requests.wait_for(20);
    // An upgrade: a new binary replaces the file at the daemon's path (renamed over it, as
    // package managers do), then SIGUSR2.
    let staged = installed.0.with_extension("new");
    std::fs::copy(sluice_binary(), &staged).unwrap();
    std::fs::rename(&staged, &installed.0).unwrap();
    f.lb.sluice.signal(libc::SIGUSR2);
    let mut next = None;
    wait_until(TIMEOUT, "the successor to take over", || {
        let log = f.lb.sluice.stderr();
        next = log
            .lines()
            .find_map(|l| l.split("took over from the previous daemon: 1 listening socket(s) (this daemon is pid ").nth(1))
            .and_then(|rest| rest.trim_end_matches(')').parse::<i32>().ok());
        next.is_some()
    });
    let pid = next.unwrap();
    let _next = KillOnDrop(pid);
    // The successor runs the new binary, not the one the old daemon was started from.
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert_eq!(exe, installed.0);
    requests.wait_for(40);
    assert!(socket.echoes("after"), "the WebSocket outlives the restart");
    assert_eq!(f.sticky_get(Some(&cookie)).0, pinned);
    let report = requests.stop();
    assert!(report.failed.is_empty(), "{report:?}");
    // The old daemon drains, closes the WebSocket at its deadline and exits; the successor
    // serves on, and `sluice status` answers from it.
    wait_until(SIGUSR2_DRAIN + TIMEOUT, "the old daemon to exit", || {
        f.lb.sluice.try_status().is_some()
    });
    assert!(
        f.lb.sluice.try_status().unwrap().success(),
        "{}",
        f.lb.sluice.stderr()
    );
    assert!(socket.closes_cleanly());
    let out = f.lb.cli(&["status", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let body = http_get(&f.topology.client.ns, Fixture::vip(WEB), "/").unwrap();
    assert!(body.starts_with("target"), "{body}");
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
}
