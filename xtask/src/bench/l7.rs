//! Scenario 5 (L7) and the proxy's part of scenario 7 (memory per idle WebSocket connection):
//! sluice's L7 proxy (an http listener of `sluice run`) against nginx and HAProxy configured
//! for the same job: the same targets, round robin, keep-alive to the targets, X-Forwarded-For,
//! no logging, each pinned to the same CPU.
//!
//! ```text
//!  gen ── eth0 ═ eth0 ── lb ── eth1 ═ eth0 ── target0     wrk and the WebSocket clients in
//!  (wrk, clients)       (sluice | nginx |                  gen; nginx targets answering 200
//!                        haproxy on 10.120.0.1:80)         "tN" (L7), or one WebSocket target
//!                            ── eth2 ═ eth0 ── target1     that holds every connection idle
//!                            ── ...                        (memory)
//! ```
//! The balancer runs alone on the first CPU; wrk and the targets share the last one.

use std::{
    collections::BTreeMap,
    io::{self, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed},
        mpsc, Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use sluice_tests::{
    http_servers::websocket_accept,
    netns::{ChildGuard, Namespace},
    servers::http_get,
};

use super::{
    figures::median,
    l7_load,
    lineup::BALANCERS,
    scenarios::rss_kib,
    topology::{Daemon, Topology, TIMEOUT},
    Plan, Progress,
};

/// lb's own address on the client side: every balancer listens on it.
const LISTEN: Ipv4Addr = Ipv4Addr::new(10, 120, 0, 1);
const LISTEN_PORT: u16 = 80;
const TARGET_PORT: u16 = 80;
const WEBSOCKET_PORT: u16 = 8080;
/// Idle and tunnel timeouts of every balancer: far longer than any measurement.
const IDLE_TIMEOUT_S: u64 = 600;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// File descriptors the bench process and the balancers keep for themselves besides two per
/// WebSocket connection (this process holds the client's and the target's end of each, a
/// balancer its two sockets).
const SPARE_FDS: u64 = 500;

/// (the balancer's CPU, the load generator's and targets' CPU), as `taskset` lists.
fn cpus() -> (String, String) {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    ("0".to_string(), (n - 1).to_string())
}

/// A directory for a daemon's configuration and state, removed on drop.
struct WorkDir(PathBuf);

impl WorkDir {
    fn new(what: &str) -> anyhow::Result<WorkDir> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "sluice-bench-{what}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Relaxed)
        ));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(WorkDir(path))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// nginx or HAProxy, one process each (nginx without its master process), killed on drop.
struct Server {
    child: ChildGuard,
    _dir: WorkDir,
}

/// Waits until `addr` accepts connections from `ns`; fails if `child` exits first.
fn wait_listening(
    ns: &Namespace,
    addr: SocketAddr,
    child: &ChildGuard,
    what: &str,
) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < TIMEOUT {
        if let Some(status) = child.try_status() {
            bail!("{what} exited ({status}): {}", child.stderr().trim());
        }
        if ns
            .run_in(|| TcpStream::connect_timeout(&addr, Duration::from_secs(1)))
            .is_ok()
        {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("{what} did not listen on {addr} within {TIMEOUT:?}")
}

/// nginx with `http` as its http block's directives, on `cpus`, logging errors only.
fn nginx(ns: &Namespace, cpus: &str, name: &str, http: &str) -> anyhow::Result<Server> {
    let dir = WorkDir::new(name)?;
    let d = dir.0.display();
    // master_process off: one process that serves (what a worker does), so its RSS is all of
    // nginx's and a kill on drop leaves no worker behind.
    let nofile = raise_nofile()?;
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_rlimit_nofile {nofile};\npid {d}/nginx.pid;\nerror_log stderr error;\n\
         events {{ worker_connections {nofile}; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
         keepalive_requests 1000000;\n  keepalive_timeout {IDLE_TIMEOUT_S}s;\n{http}}}\n"
    );
    let path = dir.0.join("nginx.conf");
    std::fs::write(&path, conf)?;
    let mut cmd = ns.command("taskset");
    cmd.args(["-c", cpus, "nginx", "-e", "stderr", "-p"])
        .arg(&dir.0)
        .arg("-c")
        .arg(&path);
    Ok(Server {
        child: ns.spawn(cmd),
        _dir: dir,
    })
}

/// The targets of the L7 scenario: nginx answering `200 tN` on each target's address.
fn http_targets(topology: &Topology, cpu: &str) -> anyhow::Result<Vec<Server>> {
    let mut servers = Vec::new();
    for (i, (ns, addr)) in topology.sinks.iter().zip(&topology.targets).enumerate() {
        let server = nginx(
            ns,
            cpu,
            &format!("target{i}"),
            &format!(
                "  server {{\n    listen {addr}:{TARGET_PORT} backlog=4096;\n    location / {{ default_type text/plain; return 200 \"t{i}\\n\"; }}\n  }}\n"
            ),
        )?;
        wait_listening(
            ns,
            SocketAddr::from((*addr, TARGET_PORT)),
            &server.child,
            "an nginx target",
        )?;
        servers.push(server);
    }
    Ok(servers)
}

/// The balancer under test, listening on [`LISTEN`]:[`LISTEN_PORT`].
enum Balancer {
    Sluice(Daemon),
    Other(Server),
}

impl Balancer {
    fn pid(&self) -> u32 {
        match self {
            Balancer::Sluice(d) => d.child.pid(),
            Balancer::Other(s) => s.child.pid(),
        }
    }

    fn start(
        sluice: &Path,
        topology: &Topology,
        which: &str,
        targets: &[SocketAddr],
        cpu: &str,
    ) -> anyhow::Result<Balancer> {
        let balancer = match which {
            "sluice" => {
                let list: Vec<String> = targets
                    .iter()
                    .map(|t| format!("{{ address = \"{}\" }}", t.ip()))
                    .collect();
                let config = format!(
                    "[[listener]]\nname = \"web\"\naddress = \"{LISTEN}\"\nport = {LISTEN_PORT}\nprotocol = \"http\"\n\
                     default_target_group = \"web\"\nidle_timeout = {IDLE_TIMEOUT_S}\n\n\
                     [[target_group]]\nname = \"web\"\nport = {}\nalgorithm = \"round_robin\"\n\
                     health_check = {{ interval = \"200ms\", timeout = \"150ms\", healthy_threshold = 2, unhealthy_threshold = 2 }}\n\
                     targets = [{}]\n",
                    targets[0].port(),
                    list.join(", ")
                );
                // The access log goes to the log target sluice::access unless a file is set:
                // off, like the baselines' logs.
                let daemon = Daemon::start_pinned(
                    sluice,
                    &topology.lb,
                    &config,
                    cpu,
                    "info,sluice::access=off",
                );
                let start = Instant::now();
                while daemon.child.stderr().matches("-> healthy").count() < targets.len() {
                    if let Some(status) = daemon.child.try_status() {
                        bail!("sluice exited ({status}): {}", daemon.child.stderr());
                    }
                    if start.elapsed() > TIMEOUT {
                        bail!("sluice's targets were not healthy within {TIMEOUT:?}");
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Balancer::Sluice(daemon)
            }
            "nginx" => {
                let servers: String = targets
                    .iter()
                    .map(|t| format!("    server {t};\n"))
                    .collect();
                // The upgrade map sends `Connection: upgrade` for WebSocket handshakes and an
                // empty Connection otherwise, which keeps target connections alive.
                let http = format!(
                    "  upstream targets {{\n{servers}    keepalive 256;\n    keepalive_requests 1000000;\n    keepalive_timeout {IDLE_TIMEOUT_S}s;\n  }}\n  \
                     map $http_upgrade $connection_upgrade {{ default upgrade; '' ''; }}\n  \
                     server {{\n    listen {LISTEN}:{LISTEN_PORT} backlog=4096;\n    location / {{\n      proxy_pass http://targets;\n      proxy_http_version 1.1;\n      \
                     proxy_set_header Upgrade $http_upgrade;\n      proxy_set_header Connection $connection_upgrade;\n      \
                     proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n      proxy_read_timeout {IDLE_TIMEOUT_S}s;\n      proxy_send_timeout {IDLE_TIMEOUT_S}s;\n    }}\n  }}\n"
                );
                Balancer::Other(nginx(&topology.lb, cpu, "nginx", &http)?)
            }
            "haproxy" => {
                let dir = WorkDir::new("haproxy")?;
                let servers: String = targets
                    .iter()
                    .enumerate()
                    .map(|(i, t)| format!("    server t{i} {t}\n"))
                    .collect();
                // No `log` line: HAProxy logs nothing. Its thread count follows the CPUs it
                // is given, as sluice's does.
                // HAProxy refuses to start if maxconn needs more descriptors than it may open
                // (two per connection and a few of its own); at maxconn it stops accepting.
                let maxconn = raise_nofile()?.saturating_sub(100) / 2;
                let conf = format!(
                    "global\n    maxconn {maxconn}\n\ndefaults\n    mode http\n    option forwardfor\n    timeout connect 5s\n    \
                     timeout client {IDLE_TIMEOUT_S}s\n    timeout server {IDLE_TIMEOUT_S}s\n    timeout tunnel {IDLE_TIMEOUT_S}s\n    \
                     timeout http-keep-alive {IDLE_TIMEOUT_S}s\n\n\
                     frontend web\n    bind {LISTEN}:{LISTEN_PORT}\n    default_backend targets\n\n\
                     backend targets\n    balance roundrobin\n    http-reuse always\n{servers}"
                );
                let path = dir.0.join("haproxy.cfg");
                std::fs::write(&path, conf)?;
                let mut cmd = topology.lb.command("taskset");
                cmd.args(["-c", cpu, "haproxy", "-db", "-f"]).arg(&path);
                Balancer::Other(Server {
                    child: topology.lb.spawn(cmd),
                    _dir: dir,
                })
            }
            other => bail!("unknown balancer {other}"),
        };
        if let Balancer::Other(server) = &balancer {
            wait_listening(
                &topology.generator,
                SocketAddr::from((LISTEN, LISTEN_PORT)),
                &server.child,
                which,
            )?;
        }
        Ok(balancer)
    }
}

/// Checks that `GET /` through the balancer reaches every target (the targets answer their
/// names), so that a misconfigured baseline cannot pass for a fast one.
fn check_round_robin(client: &Namespace, targets: usize) -> anyhow::Result<()> {
    let vip = SocketAddr::from((LISTEN, LISTEN_PORT));
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..targets * 4 {
        let body =
            http_get(client, vip, "/").map_err(|e| anyhow::anyhow!("GET / via {vip}: {e}"))?;
        seen.insert(body.trim().to_string());
    }
    if seen.len() != targets {
        bail!("GET / via {vip} reached {seen:?}, not all {targets} targets");
    }
    Ok(())
}

/// A latency as wrk prints it (`392.00us`, `1.06ms`, `2.00s`), in milliseconds.
fn wrk_duration_ms(text: &str) -> Option<f64> {
    let (number, factor) = if let Some(n) = text.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1e3)
    } else if let Some(n) = text.strip_suffix('m') {
        (n, 60e3)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| n * factor)
}

/// The figures of `wrk --latency`'s report.
pub fn parse_wrk(out: &str) -> anyhow::Result<Value> {
    let mut figures = serde_json::Map::new();
    let mut socket_errors = 0u64;
    let mut timeouts = 0u64;
    let mut non_2xx = 0u64;
    for line in out.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [p @ ("50%" | "75%" | "90%" | "99%"), value] => {
                let ms = wrk_duration_ms(value)
                    .with_context(|| format!("wrk latency {value:?} in {line:?}"))?;
                figures.insert(format!("p{}_ms", p.trim_end_matches('%')), json!(ms));
            }
            ["Requests/sec:", value] => {
                figures.insert("rps".into(), json!(value.parse::<f64>()?));
            }
            [requests, "requests", "in", ..] => {
                figures.insert("requests".into(), json!(requests.parse::<u64>()?));
            }
            ["Socket", "errors:", rest @ ..] => {
                socket_errors = rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum();
                timeouts = rest
                    .windows(2)
                    .find(|w| w[0] == "timeout")
                    .and_then(|w| w[1].trim_end_matches(',').parse().ok())
                    .unwrap_or(0);
            }
            ["Non-2xx", "or", "3xx", "responses:", n] => non_2xx = n.parse()?,
            _ => {}
        }
    }
    for key in ["rps", "requests", "p50_ms", "p99_ms"] {
        if !figures.contains_key(key) {
            bail!("no {key} in wrk's report: {out}");
        }
    }
    figures.insert("socket_errors".into(), json!(socket_errors));
    figures.insert("timeouts".into(), json!(timeouts));
    figures.insert("non_2xx".into(), json!(non_2xx));
    Ok(Value::Object(figures))
}

/// `wrk` from the client namespace on `cpu`: one thread, `connections` connections, for
/// `seconds`; with `close`, every request asks for its connection to be closed.
fn wrk(
    client: &Namespace,
    cpu: &str,
    connections: u32,
    seconds: u64,
    close: bool,
) -> anyhow::Result<Value> {
    let mut cmd = client.command("taskset");
    cmd.args(["-c", cpu, "wrk", "-t1", "--latency", "--timeout", "5s"])
        .args(["-c", &connections.to_string()])
        .args(["-d", &format!("{seconds}s")]);
    if close {
        cmd.args(["-H", "Connection: close"]);
    }
    cmd.arg(format!("http://{LISTEN}:{LISTEN_PORT}/"));
    let mut child = client.spawn(cmd);
    let status = child.wait_timeout(Duration::from_secs(seconds + 30));
    if !status.success() {
        bail!("wrk failed ({status}): {}", child.stderr().trim());
    }
    parse_wrk(&child.stdout())
}

/// Room for the memory scenario's connections and, with `close`, a connection per request:
/// ephemeral ports on both of lb's sides and the client's.
fn tune(topology: &Topology) {
    for ns in [&topology.generator, &topology.lb] {
        ns.sysctl("net.ipv4.ip_local_port_range", "1024 65000");
        ns.sysctl("net.ipv4.tcp_tw_reuse", "1");
    }
}

/// Scenario 5: requests per second and latency through each balancer, keep-alive and with a
/// connection per request. Runs interleave the balancers.
pub fn l7(sluice: &Path, plan: &Plan, progress: &mut Progress) -> anyhow::Result<Value> {
    let (lb_cpu, client_cpu) = cpus();
    progress.note("l7: building the topology (3 nginx targets)");
    let topology = Topology::new(3);
    tune(&topology);
    let _targets = http_targets(&topology, &client_cpu)?;
    let targets: Vec<SocketAddr> = topology
        .targets
        .iter()
        .map(|t| SocketAddr::from((*t, TARGET_PORT)))
        .collect();
    let mut cells: BTreeMap<(usize, String), Vec<Value>> = BTreeMap::new();
    let url = format!("http://{LISTEN}:{LISTEN_PORT}/");
    let vip = SocketAddr::from((LISTEN, LISTEN_PORT));
    let scratch = WorkDir::new("l7-load")?;
    // 10,000 connections: wrk's, and the balancer's (two descriptors each).
    raise_nofile()?;
    let mut balancers: Vec<&str> = BALANCERS.to_vec();
    if plan.l7_before.is_some() {
        balancers.insert(1, "sluice-before");
    }
    for run in 1..=plan.runs {
        for (b, &which) in balancers.iter().enumerate() {
            progress.step(
                "l7",
                run,
                plan.runs,
                &format!(
                    "{which}: {} connections, keep-alive then a connection per request, {} s each",
                    plan.l7_connections, plan.l7_seconds
                ),
            );
            let measured = (|| -> anyhow::Result<Vec<(String, Value)>> {
                let start = || match (which, &plan.l7_before) {
                    ("sluice-before", Some(before)) => {
                        Balancer::start(before, &topology, "sluice", &targets, &lb_cpu)
                    }
                    _ => Balancer::start(sluice, &topology, which, &targets, &lb_cpu),
                };
                let balancer = start()?;
                let pid = balancer.pid();
                check_round_robin(&topology.generator, targets.len())?;
                if plan.l7_warmup_seconds > 0 {
                    wrk(
                        &topology.generator,
                        &client_cpu,
                        plan.l7_connections,
                        plan.l7_warmup_seconds,
                        false,
                    )?;
                }
                let mut runs: Vec<(String, Value)> = [("keepalive", false), ("close", true)]
                    .into_iter()
                    .map(|(mode, close)| {
                        let figures = l7_load::with_cpu(pid, || {
                            wrk(
                                &topology.generator,
                                &client_cpu,
                                plan.l7_connections,
                                plan.l7_seconds,
                                close,
                            )
                        });
                        (mode.to_string(), figures)
                    })
                    .collect();
                let (clients, rate) = plan.l7_fixed_rate;
                let figures = l7_load::with_cpu(pid, || {
                    l7_load::fixed_rate(
                        &topology.generator,
                        &client_cpu,
                        &url,
                        clients,
                        rate,
                        plan.l7_seconds,
                        &scratch.0,
                    )
                });
                runs.push(("fixed_rate".to_string(), figures));
                for &n in &plan.l7_many_connections {
                    let figures = l7_load::with_cpu(pid, || {
                        wrk(&topology.generator, &client_cpu, n, plan.l7_seconds, false)
                    });
                    runs.push((format!("c{n}"), figures));
                }
                // Idle cost in a fresh process: after the loads above, freed memory would be
                // reused and new connections would look cheaper than they are.
                drop(balancer);
                let balancer = start()?;
                check_round_robin(&topology.generator, targets.len())?;
                let idle = l7_load::idle(
                    &topology.generator,
                    balancer.pid(),
                    vip,
                    plan.l7_idle_connections,
                    Duration::from_secs(plan.l7_seconds.clamp(1, 5)),
                )
                .unwrap_or_else(|e| json!({ "error": format!("{e:#}") }));
                runs.push(("idle".to_string(), idle));
                Ok(runs)
            })();
            let runs = match measured {
                Ok(runs) => runs,
                Err(e) => {
                    eprintln!("bench: l7 {which}: {e:#}");
                    vec![(
                        "keepalive".to_string(),
                        json!({ "error": format!("{e:#}") }),
                    )]
                }
            };
            for (mode, value) in runs {
                cells.entry((b, mode)).or_default().push(value);
            }
        }
    }
    let figure = |runs: &[Value], key: &str| -> Vec<f64> {
        runs.iter().filter_map(|r| r[key].as_f64()).collect()
    };
    Ok(json!({
        "targets": targets.len(),
        "connections": plan.l7_connections,
        "seconds": plan.l7_seconds,
        "warmup_seconds": plan.l7_warmup_seconds,
        "fixed_rate_rps": plan.l7_fixed_rate.0 * plan.l7_fixed_rate.1,
        "idle_connections": plan.l7_idle_connections,
        "balancer_cpu": lb_cpu,
        "client_cpu": client_cpu,
        "cells": cells
            .into_iter()
            .map(|((b, mode), runs)| {
                json!({
                    "balancer": balancers[b],
                    "mode": mode,
                    "median_rps": median(&figure(&runs, "rps")),
                    "median_p50_ms": median(&figure(&runs, "p50_ms")),
                    "median_p99_ms": median(&figure(&runs, "p99_ms")),
                    "median_cpu_us_per_request": l7_load::median_of(&runs, "cpu_us_per_request"),
                    "median_timeouts": l7_load::median_of(&runs, "timeouts"),
                    "median_errors": l7_load::median_of(&runs, "errors"),
                    "median_kib_per_connection": l7_load::median_of(&runs, "kib_per_connection"),
                    "median_wakeups_per_s": l7_load::median_of(&runs, "wakeups_per_s"),
                    "median_proxy_wakeups_per_s": l7_load::median_of(&runs, "proxy_wakeups_per_s"),
                    "runs": runs,
                })
            })
            .collect::<Vec<_>>(),
    }))
}

/// Raises this process's open-file limit (children inherit it) to its hard limit, and returns
/// it. Raising the hard limit needs CAP_SYS_RESOURCE, which containers often lack: the memory
/// scenario fits its connection count to what it gets instead.
fn raise_nofile() -> anyhow::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write `limit`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
        }
        if limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(io::Error::last_os_error()).with_context(|| {
                    format!("raising RLIMIT_NOFILE to its hard limit {}", limit.rlim_max)
                });
            }
        }
    }
    Ok(limit.rlim_cur)
}

/// A WebSocket target that answers every handshake and then holds the connection without
/// reading or writing, until dropped. One thread, handshakes one at a time (the clients open
/// theirs one at a time too); a connection without `Sec-WebSocket-Key` (a health check) is
/// closed.
struct WebSocketTarget {
    stop: Arc<AtomicBool>,
    held: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl WebSocketTarget {
    fn start(ns: &Namespace, addr: SocketAddr) -> anyhow::Result<WebSocketTarget> {
        let stop = Arc::new(AtomicBool::new(false));
        let held = Arc::new(AtomicUsize::new(0));
        let (bound_tx, bound_rx) = mpsc::channel();
        let (thread_stop, thread_held) = (Arc::clone(&stop), Arc::clone(&held));
        let thread = ns.spawn_thread("websocket target", move || {
            let listener = match TcpListener::bind(addr) {
                Ok(l) => l,
                Err(e) => {
                    let _ = bound_tx.send(Err(e));
                    return;
                }
            };
            let _ = bound_tx.send(Ok(()));
            let mut connections = Vec::new();
            let mut poll = libc::pollfd {
                fd: listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            while !thread_stop.load(Relaxed) {
                // SAFETY: one valid pollfd; a 100 ms timeout bounds the wait for a stop.
                let ready = unsafe { libc::poll(&mut poll, 1, 100) };
                if ready <= 0 {
                    continue;
                }
                if let Ok((stream, _)) = listener.accept() {
                    if let Some(stream) = answer_handshake(stream) {
                        connections.push(stream);
                        thread_held.store(connections.len(), Relaxed);
                    }
                }
            }
        });
        match bound_rx.recv_timeout(TIMEOUT) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("the WebSocket target cannot bind {addr}: {e}"),
            Err(_) => bail!("the WebSocket target did not bind {addr}"),
        }
        Ok(WebSocketTarget {
            stop,
            held,
            thread: Some(thread),
        })
    }

    fn held(&self) -> usize {
        self.held.load(Relaxed)
    }
}

impl Drop for WebSocketTarget {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads a request head (bounded in size and time) from `stream`.
fn read_head(stream: &mut TcpStream) -> io::Result<String> {
    stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    let mut head = Vec::new();
    let mut chunk = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > 16 * 1024 {
            return Err(io::Error::other("request head over 16 KiB"));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&chunk[..n]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

fn answer_handshake(mut stream: TcpStream) -> Option<TcpStream> {
    let head = read_head(&mut stream).ok()?;
    let key = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("sec-websocket-key")
            .then(|| value.trim().to_string())
    })?;
    write!(
        stream,
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        websocket_accept(&key)
    )
    .ok()?;
    Some(stream)
}

/// Opens a WebSocket through the balancer and returns the idle connection.
fn open_websocket(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let mut stream = TcpStream::connect_timeout(&addr, HANDSHAKE_TIMEOUT)?;
    stream.set_write_timeout(Some(HANDSHAKE_TIMEOUT))?;
    stream.write_all(
        b"GET /ws HTTP/1.1\r\nHost: bench.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )?;
    // The target sends nothing after its 101, so the head is all there is to read.
    let head = read_head(&mut stream)?;
    if !head.starts_with("HTTP/1.1 101 ") {
        bail!(
            "the WebSocket handshake was answered with {:?}",
            head.lines().next().unwrap_or("")
        );
    }
    Ok(stream)
}

/// Opens up to `n` WebSockets from `client`, one after the other, stopping at the first
/// failure or after `limit`: the connections and the failure, if any.
fn open_websockets(
    client: &Namespace,
    n: usize,
    limit: Duration,
) -> (Vec<TcpStream>, Option<String>) {
    let addr = SocketAddr::from((LISTEN, LISTEN_PORT));
    client.run_in(|| {
        let start = Instant::now();
        let mut open = Vec::with_capacity(n);
        while open.len() < n {
            if start.elapsed() > limit {
                return (
                    open,
                    Some(format!("not all {n} connections opened within {limit:?}")),
                );
            }
            match open_websocket(addr) {
                Ok(stream) => open.push(stream),
                Err(e) => {
                    let error = format!("connection {} of {n}: {e:#}", open.len() + 1);
                    return (open, Some(error));
                }
            }
        }
        (open, None)
    })
}

/// The balancer's resident memory before and after `n` idle WebSocket connections through it.
fn websocket_memory(
    sluice: &Path,
    topology: &Topology,
    which: &str,
    n: usize,
    cpu: &str,
    settle: Duration,
) -> anyhow::Result<Value> {
    let addr = SocketAddr::from((topology.targets[0], WEBSOCKET_PORT));
    let target = WebSocketTarget::start(&topology.sinks[0], addr)?;
    let balancer = Balancer::start(sluice, topology, which, &[addr], cpu)?;
    // One connection end to end first: the path works, and what is allocated once (buffers,
    // pools, the first target connection's state) is in the baseline.
    let (first, error) = open_websockets(&topology.generator, 1, TIMEOUT);
    if let Some(error) = error {
        bail!("{which}: {error}");
    }
    drop(first);
    std::thread::sleep(settle / 2);
    let before = rss_kib(balancer.pid())?;
    let start = Instant::now();
    let (open, error) = open_websockets(&topology.generator, n, Duration::from_secs(300));
    let open_s = start.elapsed().as_secs_f64();
    // Let lazily allocated per-connection state settle before reading memory.
    std::thread::sleep(settle);
    let after = rss_kib(balancer.pid())?;
    let opened = open.len();
    let held = target.held();
    drop(open);
    let per_connection_kib = (opened > 0).then(|| (after as f64 - before as f64) / opened as f64);
    Ok(json!({
        "balancer": which,
        "connections": n,
        "opened": opened,
        "held_by_target": held,
        "open_seconds": open_s,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "kib_per_connection": per_connection_kib,
        "mib_per_10000": per_connection_kib.map(|k| k * 10_000.0 / 1024.0),
        "error": error,
    }))
}

/// Scenario 7's proxy part: memory per idle WebSocket connection through each balancer.
pub fn memory(sluice: &Path, plan: &Plan, progress: &mut Progress) -> anyhow::Result<Value> {
    let (lb_cpu, _) = cpus();
    let nofile = raise_nofile()?;
    let connections = plan
        .websocket_connections
        .min((nofile.saturating_sub(SPARE_FDS) / 2) as usize);
    if connections < plan.websocket_connections {
        progress.note(&format!(
            "memory: {connections} connections, not {}: the open-file limit is {nofile} (raising it needs CAP_SYS_RESOURCE)",
            plan.websocket_connections
        ));
    }
    progress.note("memory: building the topology (one WebSocket target)");
    let topology = Topology::new(1);
    tune(&topology);
    let mut rows = Vec::new();
    for &which in BALANCERS {
        progress.step(
            "memory",
            1,
            1,
            &format!("{which}: {connections} idle WebSocket connections"),
        );
        let settle = Duration::from_millis(if plan.quick { 200 } else { 1000 });
        let row = websocket_memory(sluice, &topology, which, connections, &lb_cpu, settle)
            .unwrap_or_else(|e| {
                eprintln!("bench: memory {which}: {e:#}");
                json!({ "balancer": which, "error": format!("{e:#}") })
            });
        rows.push(row);
    }
    Ok(json!({
        "connections": connections,
        "wanted_connections": plan.websocket_connections,
        "open_file_limit": nofile,
        "idle_timeout_s": IDLE_TIMEOUT_S,
        "balancers": rows,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "Running 1s test @ http://10.120.0.1:80/
  1 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   425.63us  178.64us   3.59ms   86.60%
    Req/Sec    23.67k     1.48k   25.23k    80.00%
  Latency Distribution
     50%  392.00us
     75%  469.00us
     90%  577.00us
     99%    1.06ms
  23529 requests in 1.00s, 3.79MB read
  Socket errors: connect 0, read 2, write 1, timeout 0
  Non-2xx or 3xx responses: 5
Requests/sec:  23497.82
Transfer/sec:      3.78MB
";

    #[test]
    fn wrk_reports_are_parsed() {
        let r = parse_wrk(REPORT).unwrap();
        assert_eq!(r["rps"], 23497.82);
        assert_eq!(r["requests"], 23529);
        assert!((r["p50_ms"].as_f64().unwrap() - 0.392).abs() < 1e-9);
        assert_eq!(r["p99_ms"], 1.06);
        assert_eq!(r["socket_errors"], 3);
        assert_eq!(r["non_2xx"], 5);
        let clean = REPORT
            .lines()
            .filter(|l| !l.contains("Socket") && !l.contains("Non-2xx"))
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(parse_wrk(&clean).unwrap()["socket_errors"], 0);
        assert!(parse_wrk("Running 1s test").is_err());
    }

    #[test]
    fn wrk_durations_are_milliseconds() {
        assert_eq!(wrk_duration_ms("2.00s"), Some(2000.0));
        assert_eq!(wrk_duration_ms("1.50ms"), Some(1.5));
        assert_eq!(wrk_duration_ms("1.00m"), Some(60000.0));
        assert!((wrk_duration_ms("250.00us").unwrap() - 0.25).abs() < 1e-12);
        assert_eq!(wrk_duration_ms("fast"), None);
    }
}
