//! What scenario 5 measures beside wrk's closed-loop requests per second: the balancer's CPU
//! time per request (the 2-core harness caps req/s by the load generator's core, not by the
//! balancer's), latency at a fixed offered rate (h2load, open loop), many connections (wrk
//! with 1,000 and 10,000, timeouts counted), and what idle keep-alive connections cost
//! (memory, and wake-ups of the balancer's threads).

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use serde_json::{json, Value};
use sluice_tests::netns::Namespace;

use super::{figures::median, scenarios::rss_kib};

/// CPU time (user and system, every thread) of process `pid` so far, in microseconds.
pub fn cpu_time_us(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command (which may hold spaces), from field 3: utime is field 14.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("no ')' in /proc/PID/stat")?
        .1
        .split_whitespace()
        .collect();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(fields
            .get(i)
            .context("short /proc/PID/stat")?
            .parse::<f64>()?)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((ticks(11)? + ticks(12)?) * 1e6 / hz)
}

/// Times the threads of `pid` were switched in so far (each a wake-up of an idle thread or a
/// return after preemption): the third field of `/proc/PID/task/TID/schedstat` summed, over
/// all threads and over sluice's proxy workers (threads named `sluice-proxy-N`) alone.
pub fn runs(pid: u32) -> anyhow::Result<Runs> {
    let mut total = Runs::default();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let dir = task?.path();
        // A thread that ended meanwhile.
        let Ok(text) = std::fs::read_to_string(dir.join("schedstat")) else {
            continue;
        };
        let n = text
            .split_whitespace()
            .nth(2)
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        total.all += n;
        if std::fs::read_to_string(dir.join("comm")).is_ok_and(|c| c.starts_with("sluice-proxy")) {
            total.proxy += n;
        }
    }
    Ok(total)
}

/// Thread runs counted by [`runs`].
#[derive(Clone, Copy, Default)]
pub struct Runs {
    pub all: u64,
    /// sluice's proxy workers only (0 for other balancers).
    pub proxy: u64,
}

/// Runs `measure` and adds the balancer's CPU time per request to its figures (which must
/// have `requests`).
pub fn with_cpu(pid: u32, measure: impl FnOnce() -> anyhow::Result<Value>) -> Value {
    let before = cpu_time_us(pid);
    let result = measure();
    let after = cpu_time_us(pid);
    match (result, before, after) {
        (Ok(mut figures), Ok(before), Ok(after)) => {
            if let Some(requests) = figures["requests"].as_f64().filter(|n| *n > 0.0) {
                figures["cpu_us_per_request"] = json!((after - before) / requests);
            }
            figures
        }
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => json!({ "error": format!("{e:#}") }),
    }
}

/// h2load over HTTP/1.1 from `client` on `cpu`: `clients` connections each sending
/// `rate_per_client` requests a second for `seconds`, open loop (the next request is due by
/// the clock, not by the last response). Latency percentiles from its per-request log.
pub fn fixed_rate(
    client: &Namespace,
    cpu: &str,
    url: &str,
    clients: u32,
    rate_per_client: u32,
    seconds: u64,
    dir: &Path,
) -> anyhow::Result<Value> {
    let log = dir.join(format!("h2load-{}.log", std::process::id()));
    let mut cmd = client.command("taskset");
    cmd.args(["-c", cpu, "h2load", "--h1", "-t1", "-m1"])
        .args(["-c", &clients.to_string()])
        .args(["--rps", &rate_per_client.to_string()])
        .args(["-D", &seconds.to_string()])
        .arg(format!("--log-file={}", log.display()))
        .arg(url);
    let mut child = client.spawn(cmd);
    let status = child.wait_timeout(Duration::from_secs(seconds + 30));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    if !status.success() {
        bail!("h2load failed ({status}): {}", child.stderr().trim());
    }
    let mut latencies_us: Vec<f64> = Vec::new();
    let mut errors = 0u64;
    for line in text.lines() {
        let columns: Vec<&str> = line.split('\t').collect();
        match columns.as_slice() {
            [_, status, elapsed, ..] => {
                if *status != "200" {
                    errors += 1;
                }
                latencies_us.push(elapsed.parse()?);
            }
            _ => bail!("h2load log line {line:?}"),
        }
    }
    let out = child.stdout();
    // "requests: 50000 total, 50000 started, 50000 done, 50000 succeeded, 0 failed, 0 errored, 0 timeout"
    let failed: u64 = out
        .lines()
        .find(|l| l.trim_start().starts_with("requests:"))
        .map(|l| {
            l.split(',')
                .filter(|part| {
                    ["failed", "errored", "timeout"]
                        .iter()
                        .any(|w| part.trim().ends_with(w))
                })
                .filter_map(|part| part.split_whitespace().next()?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    if latencies_us.is_empty() {
        bail!("h2load logged no request: {out}");
    }
    latencies_us.sort_by(f64::total_cmp);
    let at = |q: f64| latencies_us[((latencies_us.len() - 1) as f64 * q) as usize] / 1e3;
    Ok(json!({
        "offered_rps": clients * rate_per_client,
        "requests": latencies_us.len(),
        "rps": latencies_us.len() as f64 / seconds as f64,
        "p50_ms": at(0.5),
        "p99_ms": at(0.99),
        "p999_ms": at(0.999),
        "errors": errors + failed,
    }))
}

/// Opens `n` keep-alive connections to `addr` from `client`, one GET each (so each has been
/// served and, behind a balancer, has a target), then holds them idle for `window`: the
/// balancer's memory per connection and its threads' wake-ups per second while they idle.
pub fn idle(
    client: &Namespace,
    pid: u32,
    addr: SocketAddr,
    n: usize,
    window: Duration,
) -> anyhow::Result<Value> {
    let before_kib = rss_kib(pid)?;
    let opened = client.run_in(|| -> anyhow::Result<Vec<TcpStream>> {
        let mut held = Vec::with_capacity(n);
        let deadline = Instant::now() + Duration::from_secs(120);
        for i in 0..n {
            if Instant::now() > deadline {
                bail!("opened only {i} of {n} connections within 120 s");
            }
            let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .with_context(|| format!("connection {i} of {n}"))?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            stream.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")?;
            read_response(&mut stream).with_context(|| format!("response on connection {i}"))?;
            held.push(stream);
        }
        Ok(held)
    })?;
    // Let what the requests woke settle (health checks go on: they are the daemon's).
    std::thread::sleep(Duration::from_millis(500));
    let after_kib = rss_kib(pid)?;
    let runs_before = runs(pid)?;
    let cpu_before = cpu_time_us(pid)?;
    let start = Instant::now();
    std::thread::sleep(window);
    let elapsed = start.elapsed().as_secs_f64();
    let runs_after = runs(pid)?;
    let wakeups = (runs_after.all - runs_before.all) as f64 / elapsed;
    let proxy_wakeups = (runs_after.proxy - runs_before.proxy) as f64 / elapsed;
    let cpu = (cpu_time_us(pid)? - cpu_before) / elapsed / 1e4;
    drop(opened);
    Ok(json!({
        "connections": n,
        // Each connection was answered once before idling.
        "requests": n,
        "kib_per_connection": after_kib.saturating_sub(before_kib) as f64 / n as f64,
        "wakeups_per_s": wakeups,
        "proxy_wakeups_per_s": proxy_wakeups,
        "cpu_percent": cpu,
    }))
}

/// Reads one response with a Content-Length body.
fn read_response(stream: &mut TcpStream) -> anyhow::Result<()> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            bail!("closed before the response ended");
        }
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if buf.len() >= end + 4 + length {
            return Ok(());
        }
    }
}

/// The median of `key` over `runs` (null if no run has it).
pub fn median_of(runs: &[Value], key: &str) -> Value {
    let values: Vec<f64> = runs.iter().filter_map(|r| r[key].as_f64()).collect();
    json!(median(&values))
}

/// BENCHMARKS.md's table of what `l7` measures beside wrk's req/s: CPU per request, latency
/// at a fixed rate, many connections and idle cost, each balancer beside nginx.
pub fn markdown(l7: &Value) -> String {
    let Some(cells) = l7["cells"].as_array() else {
        return String::new();
    };
    let cell = |balancer: &str, mode: &str| {
        cells
            .iter()
            .find(|c| c["balancer"] == balancer && c["mode"] == mode)
    };
    let figure =
        |balancer: &str, mode: &str, key: &str| cell(balancer, mode).and_then(|c| c[key].as_f64());
    let shown = |v: Option<f64>, digits: usize| match v {
        Some(v) => format!("{v:.digits$}"),
        None => "–".to_string(),
    };
    let beside = |balancer: &str, mode: &str, key: &str, digits: usize| {
        let v = figure(balancer, mode, key);
        match (v, figure("nginx", mode, key)) {
            (Some(v), Some(n)) if n > 0.0 => format!("{v:.digits$} ({:.2})", v / n),
            _ => shown(v, digits),
        }
    };
    let many: Vec<String> = cells
        .iter()
        .filter_map(|c| c["mode"].as_str())
        .filter(|m| m.starts_with('c') && m[1..].parse::<u32>().is_ok())
        .map(str::to_string)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut md = format!(
        "The balancer's CPU time per request (all its threads, from `/proc/PID/stat`, over each measurement), with the ratio to nginx's in brackets; \
         p99 at a fixed offered rate of {} req/s (h2load over HTTP/1.1, open loop, latency from its per-request log); \
         wrk with many keep-alive connections (p99, and requests that timed out after 5 s); and, in a freshly started balancer, {} idle keep-alive connections (each served one request) held open: \
         the balancer's memory per connection (RSS growth) and its threads' wake-ups per second while they idle (from `/proc/PID/task/*/schedstat`; \
         sluice's include its own health checks, every 200 ms per target here, on the daemon's thread; in brackets its proxy workers' alone). Goals (issue 15): CPU per request and p99 ≤ nginx's, no timeouts, ≤ 2 KiB per idle connection, a few wake-ups per second.\n\n\
         | balancer | CPU µs/req keep-alive | CPU µs/req conn. per req. | p99 ms at fixed rate |",
        l7["fixed_rate_rps"], l7["idle_connections"],
    );
    for m in &many {
        md.push_str(&format!(" {} conns: p99 ms, timeouts |", &m[1..]));
    }
    md.push_str(" KiB per idle conn. | wake-ups/s idle |\n|---|---:|---:|---:|");
    for _ in &many {
        md.push_str("---:|");
    }
    md.push_str("---:|---:|\n");
    let mut balancers: Vec<&str> = Vec::new();
    for c in cells {
        if let Some(b) = c["balancer"].as_str() {
            if !balancers.contains(&b) {
                balancers.push(b);
            }
        }
    }
    for b in balancers {
        md.push_str(&format!(
            "| {b} | {} | {} | {} |",
            beside(b, "keepalive", "median_cpu_us_per_request", 1),
            beside(b, "close", "median_cpu_us_per_request", 1),
            beside(b, "fixed_rate", "median_p99_ms", 2),
        ));
        for m in &many {
            md.push_str(&format!(
                " {}, {} |",
                beside(b, m, "median_p99_ms", 0),
                shown(figure(b, m, "median_timeouts"), 0)
            ));
        }
        let proxy = if b.starts_with("sluice") {
            figure(b, "idle", "median_proxy_wakeups_per_s")
                .map(|p| format!(" ({p:.1})"))
                .unwrap_or_default()
        } else {
            String::new()
        };
        md.push_str(&format!(
            " {} | {}{proxy} |\n",
            shown(figure(b, "idle", "median_kib_per_connection"), 2),
            shown(figure(b, "idle", "median_wakeups_per_s"), 1),
        ));
    }
    md.push('\n');
    md
}
