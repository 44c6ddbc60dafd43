//! The connection-state life cycle end to end: `sluice run` in the lb namespace of an
//! [`LbTopology`], real TCP servers on the targets, real clients. Ports of closed connections
//! return (100,000 sequential connections through 1,024 ports), a lone-ACK flood allocates
//! nothing and starves no one, idle connections keep working through churn of ten times the
//! flow table and expire after their listener's idle timeout, and the live counts in
//! `sluice stats` return to their baseline.

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::namespaces::{stats, stats_json, ApiSocket, PinDir, TIMEOUT};
use crate::{
    netns::{require_root, sluice_binary, wait_until, ChildGuard, LbTopology, Netns},
    packet::Frame,
    servers::{EchoClient, EchoServer},
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 111, 100, 1);
/// Listeners: echo (churn, sequential connections) and push (idle connections whose server
/// speaks first); `short` pushes too, with a short idle timeout.
const ECHO: u16 = 7000;
const PUSH: u16 = 9000;
const SHORT: u16 = 9100;
/// Seconds of the `short` listener's idle timeout.
const SHORT_IDLE: u64 = 3;

/// The ports targets listen on: `nat` translates ports, the other modes cannot.
fn target_port(mode: &str, port: u16) -> u16 {
    if mode == "nat" {
        port + 3000
    } else {
        port
    }
}

/// A TCP server that accepts connections and keeps them, and writes to all of them on
/// [`PushServer::push`]: the server speaks first, as WebSocket or long-polling servers do.
struct PushServer {
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    thread: Option<JoinHandle<()>>,
}

impl PushServer {
    fn start(ns: &impl Netns, addr: SocketAddr) -> PushServer {
        let listener = ns.run_in(|| TcpListener::bind(addr)).expect("binding");
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, conns) = (Arc::clone(&stop), Arc::clone(&conns));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            stream.set_nonblocking(false).unwrap();
                            stream
                                .set_write_timeout(Some(Duration::from_secs(5)))
                                .unwrap();
                            conns.lock().unwrap().push(stream);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        PushServer {
            stop,
            conns,
            thread: Some(thread),
        }
    }

    fn accepted(&self) -> usize {
        self.conns.lock().unwrap().len()
    }

    /// Writes `message` on every connection accepted so far.
    fn push(&self, message: &[u8]) {
        for stream in self.conns.lock().unwrap().iter_mut() {
            // A failed write shows as a lost push on the client's side.
            let _ = stream.write_all(message);
        }
    }
}

impl Drop for PushServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A client of a [`PushServer`]: connects and waits for what the server says.
struct Listening {
    stream: TcpStream,
}

impl Listening {
    fn connect(ns: &impl Netns, addr: SocketAddr) -> Listening {
        let stream = ns
            .run_in(|| TcpStream::connect_timeout(&addr, Duration::from_secs(10)))
            .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Listening { stream }
    }

    /// Whether `message` arrives (a reset, a timeout or anything else is a lost push).
    fn hears(&mut self, message: &[u8]) -> bool {
        let mut got = vec![0u8; message.len()];
        self.stream.read_exact(&mut got).is_ok() && got == message
    }
}

/// sluice in front of targets running an echo server and two push servers each; the model
/// has the first target only.
struct Stack {
    topology: LbTopology,
    _decaps: Vec<ChildGuard>,
    _echo: Vec<EchoServer>,
    /// The first target's push servers (a second target's, if any, are in `_more_push`).
    push: PushServer,
    short: PushServer,
    _more_push: Vec<PushServer>,
    _sluice: ChildGuard,
    config: PathBuf,
    _pin_dir: PinDir,
    socket: ApiSocket,
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
    }
}

impl Stack {
    /// `mode` listeners, a flow table of `flows` entries, `nat` ports `ports`, one target.
    fn start(mode: &str, flows: u32, ports: [u16; 2]) -> Stack {
        Stack::start_with(mode, flows, ports, 1)
    }

    /// [`Stack::start`] with `targets` targets running servers, the first in the model.
    fn start_with(mode: &str, flows: u32, ports: [u16; 2], targets: usize) -> Stack {
        require_root();
        let topology = LbTopology::new(targets);
        if mode != "nat" {
            for target in &topology.targets {
                target.hold_vips(&[VIP.into()]);
            }
        }
        // 100,000 sequential connections from one client: its ports must come back quickly.
        topology.client.ns.sysctl("net.ipv4.tcp_tw_reuse", "1");
        topology
            .client
            .ns
            .sysctl("net.ipv4.ip_local_port_range", "1024 65000");
        let decaps = if mode == "tunnel" {
            topology
                .targets
                .iter()
                .map(|target| {
                    let mut cmd = target.ns.command(sluice_binary());
                    cmd.args(["decap", "--iface", &target.link.iface])
                        .env_remove("RUST_LOG");
                    let decap = target.ns.spawn(cmd);
                    wait_until(TIMEOUT, "sluice decap to attach", || {
                        target.ns.xdp_attached(&target.link.iface).is_some()
                    });
                    decap
                })
                .collect()
        } else {
            Vec::new()
        };
        let any = IpAddr::from(Ipv4Addr::UNSPECIFIED);
        let echo = topology
            .targets
            .iter()
            .map(|t| {
                EchoServer::start(&t.ns, SocketAddr::new(any, target_port(mode, ECHO)), "echo")
            })
            .collect();
        let mut push: Vec<PushServer> = topology
            .targets
            .iter()
            .map(|t| PushServer::start(&t.ns, SocketAddr::new(any, target_port(mode, PUSH))))
            .collect();
        let target = &topology.targets[0];
        let short = PushServer::start(&target.ns, SocketAddr::new(any, target_port(mode, SHORT)));
        let more_push = push.split_off(1);
        let push = push.pop().expect("one target at least");

        let group = |name: &str, port: u16| {
            format!(
                "[[target_group]]\nname = \"{name}\"\nport = {}\ntargets = [{{ address = \"{}\" }}]\nhealth_check = {{ port = {}, interval = \"200ms\", timeout = \"150ms\", healthy_threshold = 2, unhealthy_threshold = 2 }}\n\n",
                target_port(mode, port),
                target.link.v4,
                target_port(mode, ECHO),
            )
        };
        let listener = |name: &str, port: u16, extra: &str| {
            format!(
                "[[listener]]\nname = \"{name}\"\naddress = \"{VIP}\"\nport = {port}\nprotocol = \"tcp\"\nmode = \"{mode}\"\ndefault_target_group = \"{name}\"\nmaglev_table_size = 251\n{extra}\n"
            )
        };
        let text = [
            group("echo", ECHO),
            group("push", PUSH),
            group("short", SHORT),
            listener("echo", ECHO, ""),
            listener("push", PUSH, ""),
            listener("short", SHORT, &format!("idle_timeout = {SHORT_IDLE}\n")),
            format!(
                "[data_plane]\nnat_port_range = [{}, {}]\n",
                ports[0], ports[1]
            ),
        ]
        .concat();
        let config = std::env::temp_dir().join(format!("{}.toml", topology.lb.name()));
        std::fs::write(&config, text).unwrap();
        let pin_dir = PinDir::new();
        let socket = ApiSocket::new();
        let mut cmd = topology.lb.command(sluice_binary());
        cmd.args(["run", "--iface", "eth0", "--iface", "eth1"])
            .args(["--pin-dir", pin_dir.arg(), "--socket", socket.arg()])
            .arg("--config")
            .arg(&config)
            .args(["--flows", &flows.to_string(), "--metrics-address", "off"])
            .env("RUST_LOG", "info");
        let sluice = topology.lb.spawn(cmd);
        wait_until(TIMEOUT, "sluice to apply its configuration", || {
            if let Some(status) = sluice.try_status() {
                panic!("sluice exited ({status}): {}", sluice.stderr());
            }
            sluice.stderr().matches("-> healthy").count() >= 3
        });
        Stack {
            topology,
            _decaps: decaps,
            _echo: echo,
            push,
            short,
            _more_push: more_push,
            _sluice: sluice,
            config,
            _pin_dir: pin_dir,
            socket,
        }
    }

    /// One connection to the echo listener: connect, one round trip, close (the client
    /// closes first). The error, if any.
    fn one_connection(&self) -> Result<(), String> {
        let mut client = EchoClient::connect(&self.topology.client.ns, (VIP, ECHO).into())
            .map_err(|e| e.to_string())?;
        match client.echo(b"ping") {
            Ok(answer) if answer == b"ping" => Ok(()),
            Ok(answer) => Err(format!("echoed {answer:?}")),
            Err(e) => Err(e.to_string()),
        }
    }

    /// `n` sequential connections, bounded by `limit`; the failures (at most 10 reasons).
    fn connections(&self, n: u32, limit: Duration) -> (u32, Vec<String>) {
        let started = Instant::now();
        let mut failed = 0;
        let mut reasons = Vec::new();
        for i in 0..n {
            assert!(
                started.elapsed() < limit,
                "only {i} of {n} connections in {limit:?} ({failed} failed: {reasons:?})"
            );
            if let Err(e) = self.one_connection() {
                failed += 1;
                if reasons.len() < 10 {
                    reasons.push(e);
                }
            }
        }
        (failed, reasons)
    }

    /// The live counts of the last complete sweep: (flow entries, nat translations).
    fn tables(&self) -> Option<(u64, u64)> {
        let json = stats_json(&self.socket);
        let tables = json.get("connection_tables")?;
        Some((
            tables["flows"].as_u64()?,
            tables["nat_translations"].as_u64()?,
        ))
    }

    /// Waits until the sweep counts `flows` flow entries and `translations` translations.
    fn wait_tables(&self, flows: u64, translations: u64, what: &str) {
        wait_until(TIMEOUT, what, || {
            self.tables() == Some((flows, translations))
        });
    }
}

/// Sends `n` lone ACKs (no connection behind them) from `client` to the lb's `lb_mac`, as
/// fast as an AF_PACKET socket takes them, from varied source ports and three addresses.
fn lone_ack_flood(client: &crate::netns::Host, lb_mac: [u8; 6], n: u32) {
    {
        let frames: Vec<Vec<u8>> = (0..n)
            .map(|i| {
                let src = Ipv4Addr::new(10, 111, 0, 2 + (i % 3) as u8);
                Frame::tcp((src, 1024 + (i % 60000) as u16), (VIP, ECHO))
                    .ack()
                    .seq(i)
                    .src_mac(client.link.mac)
                    .dst_mac(lb_mac)
                    .build()
            })
            .collect();
        client.ns.run_in(|| send_frames("eth0", &frames));
    }
}

/// Sends every frame out of `iface` (in the calling thread's namespace), retrying a frame the
/// socket has no room for.
fn send_frames(iface: &str, frames: &[Vec<u8>]) {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let ifindex = sluice::dataplane::interface::index(iface).unwrap();
    // SAFETY: plain socket call; the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    assert!(
        fd >= 0,
        "AF_PACKET socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: all-integer C struct; zero is valid.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = ifindex as i32;
    addr.sll_halen = 6;
    let started = Instant::now();
    for frame in frames {
        addr.sll_addr[..6].copy_from_slice(&frame[..6]);
        loop {
            assert!(started.elapsed() < TIMEOUT, "the flood took too long");
            // SAFETY: frame and addr are valid for the lengths passed.
            let sent = unsafe {
                libc::sendto(
                    socket.as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&addr as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            if sent == frame.len() as isize {
                break;
            }
            let e = std::io::Error::last_os_error();
            assert_eq!(
                e.raw_os_error(),
                Some(libc::ENOBUFS),
                "sending a frame: {e}"
            );
            std::thread::yield_now();
        }
    }
}

/// 100,000 sequential connections through a range of 1,024 `nat` ports: every closed
/// connection gives its port back at once, so none fails; afterwards no translation is left.
#[test]
fn nat_100000_sequential_connections_through_1024_ports() {
    let stack = Stack::start("nat", 65536, [20000, 21023]);
    let (failed, reasons) = stack.connections(100_000, Duration::from_secs(600));
    assert_eq!(failed, 0, "failures: {reasons:?}");
    let counters = stats(&stack.socket);
    assert_eq!(counters["drop_nat_ports_exhausted"], 0);
    assert_eq!(counters["drop_flow_table_full"], 0);
    assert!(counters["connection_closed"] >= 100_000, "{counters:?}");
    stack.wait_tables(0, 0, "no flow entry and no translation left");
}

/// A flood of lone ACKs allocates no port and no flow entry, and the client's own new
/// connections, made while it lasts, all succeed.
#[test]
fn nat_lone_ack_flood_allocates_nothing_and_starves_no_one() {
    let stack = Stack::start("nat", 65536, [20000, 21023]);
    let before = stats(&stack.socket);
    let socket = &stack.socket;
    let seen = || stats(socket)["drop_no_connection"] - before["drop_no_connection"];
    let (client, lb_mac) = (&stack.topology.client, stack.topology.lb_client_side.mac);
    std::thread::scope(|s| {
        // Until the program has seen 100,000 (a veth drops what its ring cannot take).
        let flood = s.spawn(|| {
            for _ in 0..10 {
                lone_ack_flood(client, lb_mac, 40_000);
                if seen() >= 100_000 {
                    break;
                }
            }
        });
        let (failed, reasons) = stack.connections(300, TIMEOUT * 3);
        flood.join().unwrap();
        assert_eq!(failed, 0, "failures during the flood: {reasons:?}");
    });
    assert!(seen() >= 100_000, "the program saw {} of the flood", seen());
    let after = stats(&stack.socket);
    let delta = |name: &str| after[name] - before[name];
    // Only the real connections made state.
    assert_eq!(delta("flow_created"), 300);
    assert_eq!(delta("drop_nat_ports_exhausted"), 0);
    stack.wait_tables(0, 0, "no flow entry and no translation left by the flood");
}

/// 50 idle connections whose server speaks first survive ten times the flow table's size in
/// new connections, in every mode; `nat`: on a listener with a short idle timeout they expire
/// instead, and their ports return.
fn idle_connections_survive_churn(mode: &str) {
    const FLOWS: u32 = 1024;
    let stack = Stack::start(mode, FLOWS, [20000, 31999]);
    let push = SocketAddr::from((VIP, PUSH));
    let mut idle: Vec<Listening> = (0..50)
        .map(|_| Listening::connect(&stack.topology.client.ns, push))
        .collect();
    wait_until(TIMEOUT, "the push server to accept 50", || {
        stack.push.accepted() == 50
    });
    let (failed, reasons) = stack.connections(10 * FLOWS, Duration::from_secs(300));
    assert_eq!(failed, 0, "{mode}: churn failures: {reasons:?}");
    stack.push.push(b"news\n");
    let lost = idle
        .iter_mut()
        .map(|c| c.hears(b"news\n"))
        .filter(|heard| !heard)
        .count();
    assert_eq!(
        lost, 0,
        "{mode}: {lost} of 50 idle connections lost the push"
    );
    let counters = stats(&stack.socket);
    assert_eq!(counters["drop_flow_table_full"], 0, "{mode}");

    if mode == "nat" {
        idle_connections_expire(&stack);
    }
    drop(idle);
}

/// `nat`: 20 connections idle past the `short` listener's idle timeout lose their flow
/// entries and translations (their ports return), while the 50 idle connections of the
/// `push` listener (default timeout, 350 s) keep theirs. Closed connections leave nothing
/// in `nat` mode, so the counts are exact.
fn idle_connections_expire(stack: &Stack) {
    stack.wait_tables(50, 50, "the 50 idle connections' entries, and nothing else");
    let short = SocketAddr::from((VIP, SHORT));
    let _quiet: Vec<Listening> = (0..20)
        .map(|_| Listening::connect(&stack.topology.client.ns, short))
        .collect();
    wait_until(TIMEOUT, "the short listener's server to accept 20", || {
        stack.short.accepted() == 20
    });
    stack.wait_tables(70, 70, "20 more entries");
    stack.wait_tables(50, 50, "the short listener's idle entries to expire");
}

#[test]
fn nat_idle_connections_survive_churn_and_expire_after_idle_timeout() {
    idle_connections_survive_churn("nat");
}

#[test]
fn dsr_idle_connections_survive_churn() {
    idle_connections_survive_churn("dsr");
}

#[test]
fn tunnel_idle_connections_survive_churn() {
    idle_connections_survive_churn("tunnel");
}

/// Idle connections keep working after a flood (lone ACKs and spoofed SYNs that fill the flow
/// table) and a target addition that moves Maglev slots: their entries are never evicted, so
/// the new table is never asked about them. Both directions are checked: the server speaks
/// first on 50 connections (in `nat` its packets need the translation), the client on 50
/// others (its packets need the flow entry in every mode, or the new table may send them to
/// the new target, which resets them).
fn flows_survive_a_flood_and_a_target_addition(mode: &str) {
    const FLOWS: u32 = 1024;
    let stack = Stack::start_with(mode, FLOWS, [20000, 31999], 2);
    let push = SocketAddr::from((VIP, PUSH));
    let mut idle: Vec<Listening> = (0..50)
        .map(|_| Listening::connect(&stack.topology.client.ns, push))
        .collect();
    wait_until(TIMEOUT, "the push server to accept 50", || {
        stack.push.accepted() == 50
    });
    let mut talking: Vec<EchoClient> = (0..50)
        .map(|_| {
            let mut c = EchoClient::connect(&stack.topology.client.ns, (VIP, ECHO).into())
                .expect("connecting to the echo listener");
            assert_eq!(c.echo(b"hello").unwrap(), b"hello");
            c
        })
        .collect();
    let client = &stack.topology.client;
    let lb_mac = stack.topology.lb_client_side.mac;
    lone_ack_flood(client, lb_mac, 40_000);
    syn_flood(client, lb_mac, 4 * FLOWS);
    // The flood filled the table: new flows were refused or forwarded without an entry.
    let counters = stats(&stack.socket);
    assert!(
        counters["flow_table_full"] + counters["drop_flow_table_full"] > 0,
        "{mode}: the flood did not fill the flow table: {counters:?}"
    );
    let second = stack.topology.targets[1].link.v4.to_string();
    for group in ["push", "echo"] {
        let added = super::namespaces::sluice_output(&[
            "target",
            "add",
            group,
            &second,
            "--socket",
            stack.socket.arg(),
        ]);
        assert!(
            added.status.success(),
            "{}",
            String::from_utf8_lossy(&added.stderr)
        );
    }
    wait_until(
        TIMEOUT,
        "the second target to be healthy in both groups",
        || {
            stats_json(&stack.socket)["targets"]
                .as_array()
                .is_some_and(|targets| {
                    targets
                        .iter()
                        .filter(|t| {
                            t["address"]
                                .as_str()
                                .is_some_and(|a| a.starts_with(&second))
                                && t["health"] == "healthy"
                        })
                        .count()
                        == 2
                })
        },
    );
    stack.push.push(b"after\n");
    let lost = idle
        .iter_mut()
        .map(|c| c.hears(b"after\n"))
        .filter(|heard| !heard)
        .count();
    assert_eq!(
        lost, 0,
        "{mode}: {lost} of 50 server-first connections lost the push after the flood and the change"
    );
    let broke = talking
        .iter_mut()
        .filter_map(|c| c.echo(b"again").err())
        .count();
    assert_eq!(
        broke, 0,
        "{mode}: {broke} of 50 client-first connections broke after the flood and the change"
    );
}

/// Sends `n` SYNs from spoofed client addresses (no one answers the target's replies).
fn syn_flood(client: &crate::netns::Host, lb_mac: [u8; 6], n: u32) {
    let frames: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let src = Ipv4Addr::new(10, 111, 0, 100 + (i % 100) as u8);
            Frame::tcp((src, 1024 + (i / 100) as u16), (VIP, PUSH))
                .syn()
                .seq(i)
                .src_mac(client.link.mac)
                .dst_mac(lb_mac)
                .build()
        })
        .collect();
    client.ns.run_in(|| send_frames("eth0", &frames));
}

#[test]
fn nat_flows_survive_a_flood_and_a_target_addition() {
    flows_survive_a_flood_and_a_target_addition("nat");
}

#[test]
fn dsr_flows_survive_a_flood_and_a_target_addition() {
    flows_survive_a_flood_and_a_target_addition("dsr");
}

#[test]
fn tunnel_flows_survive_a_flood_and_a_target_addition() {
    flows_survive_a_flood_and_a_target_addition("tunnel");
}
