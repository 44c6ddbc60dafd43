//! The proxy's workers and sockets: the listen backlog is the setting (or the namespace's
//! `net.core.somaxconn`), also for a socket a successor takes over; and an idle proxy holding
//! many keep-alive connections does not wake its workers (timers fire at deadlines only).

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    time::Duration,
};

use super::{
    l7_support::{all_targets, fast_health_check, L7Sluice, VIP},
    namespaces::TIMEOUT,
};
use crate::{
    netns::{sluice_binary, wait_until, LbTopology},
    servers::HttpServer,
};

const PORT: u16 = 8080;

fn model(topology: &LbTopology) -> String {
    format!(
        "[[listener]]\nname = \"web\"\naddress = \"{VIP}\"\nport = 80\nprotocol = \"http\"\ndefault_target_group = \"www\"\n\n\
         [[target_group]]\nname = \"www\"\nport = {PORT}\ntargets = [{}]\n{}",
        all_targets(topology),
        fast_health_check(PORT)
    )
}

fn targets(topology: &LbTopology) -> Vec<HttpServer> {
    topology
        .targets
        .iter()
        .enumerate()
        .map(|(i, t)| {
            HttpServer::start(
                &t.ns,
                SocketAddr::new(t.link.v4.into(), PORT),
                &format!("target{i}"),
            )
        })
        .collect()
}

/// The accept queue of the socket listening on VIP:80 in the lb namespace, as `ss -lnt`
/// shows it (Send-Q of a listening socket).
fn backlog(topology: &LbTopology) -> Option<u32> {
    let out = topology
        .lb
        .command("ss")
        .args(["-Hlnt", &format!("src {VIP}:80")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(2)?.parse().ok())
}

#[test]
fn the_listen_backlog_is_somaxconn_or_the_setting_also_for_a_taken_over_socket() {
    let topology = LbTopology::new(1);
    let _servers = targets(&topology);
    // A value of this namespace's own, so that the default is seen to come from it.
    topology.lb.sysctl("net.core.somaxconn", "3001");
    let mut lb = L7Sluice::start(&topology, &model(&topology), 1);
    lb.wait_forwarding(&topology, 80, "target");
    assert_eq!(backlog(&topology), Some(3001));

    // The successor takes the socket over and applies its own setting to it.
    let next = lb.spawn_next(
        &topology,
        &sluice_binary(),
        &["--take-over", "--listen-backlog", "77"],
    );
    // The old daemon drains meanwhile; it is killed on drop.
    let _old = std::mem::replace(&mut lb.sluice, next);
    wait_until(TIMEOUT, "the successor to take the socket over", || {
        lb.check_running();
        lb.sluice
            .stderr()
            .contains("listener 'web': took over the listening socket on")
    });
    assert_eq!(backlog(&topology), Some(77));
    lb.wait_forwarding(&topology, 80, "target");
}

/// Times the daemon's proxy worker threads were switched in so far (the third field of
/// `/proc/PID/task/TID/schedstat`, for threads named `sluice-proxy-*`), and how many there
/// are.
fn worker_runs(pid: u32) -> (u64, usize) {
    let mut runs = 0;
    let mut workers = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !comm.starts_with("sluice-proxy-") {
            continue;
        }
        workers += 1;
        let stat = std::fs::read_to_string(dir.join("schedstat")).unwrap();
        runs += stat
            .split_whitespace()
            .nth(2)
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap();
    }
    (runs, workers)
}

/// Sends a keep-alive GET on `stream` and reads the whole response (Content-Length).
fn get(stream: &mut TcpStream) -> std::io::Result<String> {
    stream.write_all(b"GET / HTTP/1.1\r\nHost: idle\r\n\r\n")?;
    let mut got = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        got.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&got).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if body.len() >= length {
                return Ok(body.to_string());
            }
        }
    }
}

#[test]
fn an_idle_proxy_holding_many_keep_alive_connections_does_not_wake_its_workers() {
    const CONNECTIONS: usize = 300;
    const WINDOW: Duration = Duration::from_secs(3);
    let topology = LbTopology::new(2);
    let _servers = targets(&topology);
    let lb = L7Sluice::start_with(&topology, &model(&topology), 2, &["--proxy-workers", "2"]);
    lb.wait_forwarding(&topology, 80, "target");
    let vip = SocketAddr::new(IpAddr::from(VIP), 80);
    let mut held: Vec<TcpStream> = topology.client.ns.run_in(|| {
        (0..CONNECTIONS)
            .map(|i| {
                let mut stream = TcpStream::connect_timeout(&vip, Duration::from_secs(5))
                    .unwrap_or_else(|e| panic!("connection {i}: {e}"));
                stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                let body = get(&mut stream).unwrap_or_else(|e| panic!("connection {i}: {e}"));
                assert!(body.starts_with("target"), "{body}");
                stream
            })
            .collect()
    });
    let pid = lb.sluice.pid();
    let (before, workers) = worker_runs(pid);
    assert_eq!(workers, 2);
    // A window of idleness to count in (not a wait for a condition). Before deadline timers,
    // each connection's watchdog woke a worker every second: 900 runs in this window.
    std::thread::sleep(WINDOW);
    let (after, _) = worker_runs(pid);
    let runs = after - before;
    // What may run meanwhile: each worker's pool sweep (every 4 s) and a few stray wake-ups.
    assert!(
        runs <= 20,
        "{runs} worker runs in {WINDOW:?} with {CONNECTIONS} idle connections"
    );
    // They are alive, and answered.
    for (i, stream) in held.iter_mut().enumerate().step_by(30) {
        let body = get(stream).unwrap_or_else(|e| panic!("connection {i} after idling: {e}"));
        assert!(body.starts_with("target"), "{body}");
    }
}
