//! Connection limits end to end: a listener's `max_connections`, and the global limit derived
//! from a lowered open-files limit, reached by idle clients: the next client is reset at once
//! and counted, `sluice status` answers, health checks go on passing, and the log says so in
//! a few lines.

use std::{
    io::{ErrorKind, Read},
    net::{IpAddr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use super::l7_support::{all_targets, fast_health_check, L7Sluice, VIP};
use crate::{
    netns::{wait_until, LbTopology},
    servers::HttpServer,
};

const PORT: u16 = 8080;

/// The daemon's open-files limit in the test: low enough that idle clients reach it soon.
const OPEN_FILES: u64 = 300;

fn model(topology: &LbTopology) -> String {
    format!(
        r#"
[[listener]]
name = "web"
address = "{VIP}"
port = 80
protocol = "http"
default_target_group = "www"

[[listener]]
name = "small"
address = "{VIP}"
port = 81
protocol = "http"
default_target_group = "www"
max_connections = 3

[[target_group]]
name = "www"
port = {PORT}
targets = [{targets}]
{health}"#,
        targets = all_targets(topology),
        health = fast_health_check(PORT),
    )
}

fn connect(topology: &LbTopology, port: u16) -> TcpStream {
    try_connect(topology, port).expect("connecting to the VIP (the kernel completes the handshake)")
}

fn try_connect(topology: &LbTopology, port: u16) -> std::io::Result<TcpStream> {
    let vip = SocketAddr::new(IpAddr::from(VIP), port);
    topology
        .client
        .ns
        .run_in(|| TcpStream::connect_timeout(&vip, Duration::from_secs(5)))
}

/// Whether a new connection to `port` is reset within a second (an admitted idle connection
/// stays open). The reset can come so soon after the handshake that connect itself reports
/// it.
fn new_connection_reset(topology: &LbTopology, port: u16) -> bool {
    match try_connect(topology, port) {
        Ok(mut stream) => reset_within_a_second(&mut stream),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => true,
        Err(e) => panic!("connecting to port {port}: {e}"),
    }
}

/// Whether the proxy reset `stream` within a second (an admitted idle connection stays open).
fn reset_within_a_second(stream: &mut TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Err(e) if e.kind() == ErrorKind::ConnectionReset => true,
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => false,
        other => panic!("unexpected read on an idle connection: {other:?}"),
    }
}

/// `sluice stats --json`'s http listener `name`.
fn listener_stats(lb: &L7Sluice, name: &str) -> serde_json::Value {
    let out = lb.cli(&["stats", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    stats["http_listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == name)
        .unwrap_or_else(|| panic!("no listener {name} in {stats}"))
        .clone()
}

fn active(lb: &L7Sluice, name: &str) -> u64 {
    listener_stats(lb, name)["active_connections"]
        .as_u64()
        .unwrap()
}

/// The global limit the daemon derived and logged.
fn logged_limit(lb: &L7Sluice) -> usize {
    let log = lb.sluice.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("the L7 proxy takes up to "))
        .unwrap_or_else(|| panic!("no limit logged:\n{log}"));
    let after = line.split("takes up to ").nth(1).unwrap();
    after.split(' ').next().unwrap().parse().unwrap()
}

#[test]
fn idle_clients_at_the_limits_leave_new_clients_reset_and_the_daemon_answering() {
    let topology = LbTopology::new(2);
    let _servers: Vec<HttpServer> = topology
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
        .collect();
    let lb = L7Sluice::start_with_open_files(&topology, &model(&topology), 2, OPEN_FILES);
    lb.wait_forwarding(&topology, 80, "target");

    // The listener's own limit: 3 idle clients, the fourth is reset and counted.
    let small: Vec<TcpStream> = (0..3).map(|_| connect(&topology, 81)).collect();
    wait_until(Duration::from_secs(5), "3 connections on 'small'", || {
        active(&lb, "small") == 3
    });
    let started = Instant::now();
    assert!(new_connection_reset(&topology, 81), "the fourth is reset");
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(listener_stats(&lb, "small")["rejected_connections"], 1);
    drop(small);
    wait_until(Duration::from_secs(5), "'small' empty again", || {
        active(&lb, "small") == 0
    });
    assert!(
        !new_connection_reset(&topology, 81),
        "a place is free again"
    );
    wait_until(Duration::from_secs(5), "'small' empty", || {
        active(&lb, "small") == 0
    });

    // The global limit, from the open-files limit: idle clients up to it.
    let limit = logged_limit(&lb);
    assert!(
        (10..OPEN_FILES as usize / 2).contains(&limit),
        "derived limit {limit} with {OPEN_FILES} open files"
    );
    // A client given a place that a just-closed connection still holds is reset, which its
    // connect may already report; it is counted as rejected below.
    let idle: Vec<TcpStream> = (0..limit)
        .filter_map(|_| match try_connect(&topology, 80) {
            Ok(stream) => Some(stream),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => None,
            Err(e) => panic!("connecting to port 80: {e}"),
        })
        .collect();
    let rejected = |lb: &L7Sluice| {
        listener_stats(lb, "web")["rejected_connections"]
            .as_u64()
            .unwrap()
    };
    // Every idle client is either admitted or reset...
    wait_until(
        Duration::from_secs(10),
        "every idle client admitted or reset",
        || active(&lb, "web") + rejected(&lb) == limit as u64,
    );
    // ... and all but the few places that connections closed a moment ago (the
    // probes above) may still hold are admitted.
    let admitted = active(&lb, "web");
    assert!(
        admitted + 4 >= limit as u64,
        "{admitted} of {limit} idle clients admitted"
    );
    let rejected_before = rejected(&lb);
    let lines_before = lb.sluice.stderr().lines().count();
    let refused_at = Instant::now();
    for i in 0..50 {
        let started = Instant::now();
        assert!(
            new_connection_reset(&topology, 80),
            "client {i} over the limit is reset"
        );
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    let refusing = refused_at.elapsed();
    // The control API and the health checks keep their descriptors.
    let started = Instant::now();
    let status = lb.cli(&["status"]);
    assert!(status.status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "status took {:?}",
        started.elapsed()
    );
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("rejected conns"), "{text}");
    assert_eq!(rejected(&lb), rejected_before + 50);
    // At the limit for 2 s (10 health check intervals, 2 failures would do): every target
    // stays healthy.
    let held = Instant::now();
    while held.elapsed() < Duration::from_secs(2) {
        let out = lb.cli(&["stats", "--json"]);
        let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let targets = stats["targets"].as_array().unwrap();
        assert_eq!(targets.len(), 2, "{stats}");
        assert!(targets.iter().all(|t| t["health"] == "healthy"), "{stats}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = lb.sluice.stderr();
    assert!(!log.contains("-> unhealthy"), "{log}");
    assert!(!log.contains("Too many open files"), "{log}");
    let about: Vec<&str> = log
        .lines()
        .skip(lines_before)
        .filter(|l| l.contains("new connection(s)"))
        .collect();
    let allowed = 1 + (refusing.as_secs() / 5) as usize;
    assert!(
        !about.is_empty() && about.len() <= allowed,
        "{} lines in {refusing:?} about refusals: {about:#?}",
        about.len()
    );
    assert!(
        about[0].contains("'web'") && about[0].contains("--max-connections"),
        "{about:?}"
    );

    // The clients leave: new clients are served again.
    drop(idle);
    wait_until(Duration::from_secs(10), "the idle clients gone", || {
        active(&lb, "web") == 0
    });
    lb.wait_forwarding(&topology, 80, "target");
}
