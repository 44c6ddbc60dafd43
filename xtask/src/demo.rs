//! `cargo xtask demo`: the embedded default topology, in network namespaces.
//!
//! ```text
//!  client ── lb (sluice on eth0) ── switch ─┬─ target0  (HTTP server answering "target0")
//!                                           ├─ target1
//!                                           └─ target2
//! ```
//! The client fetches a page from each target every second, through the load balancer, and
//! the demo prints the answers and how sluice's counters moved. sluice does not balance yet:
//! the traffic passes its XDP program (counted as `pass_no_listener`) to the kernel, which
//! routes it. Ctrl-C (or `--duration`) stops sluice and removes every namespace.

use std::{
    net::SocketAddr,
    path::Path,
    process::{Child, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use sluice_tests::{
    netns::{require_root, unique_pin_dir, wait_until, LbTopology, Namespace},
    servers::HttpServer,
};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Stop after this many seconds (default: run until Ctrl-C, at most an hour).
    #[arg(long, value_name = "SECS", default_value_t = 3600)]
    duration: u64,
    /// Number of backends.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=20))]
    targets: u8,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn request_stop(_signal: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

pub fn demo(sluice: &Path, args: DemoArgs) -> anyhow::Result<()> {
    if !crate::is_root() {
        bail!("the demo creates network namespaces and attaches XDP: run it as root (sudo -E cargo xtask demo)");
    }
    require_root();
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGINT,
            request_stop as *const () as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGTERM,
            request_stop as *const () as libc::sighandler_t,
        );
    }

    println!(
        "demo: building the topology (client, lb, switch, {} targets)",
        args.targets
    );
    let topology = LbTopology::new(args.targets.into());
    let servers: Vec<HttpServer> = topology
        .targets
        .iter()
        .enumerate()
        .map(|(i, t)| {
            HttpServer::start(
                &t.ns,
                SocketAddr::new(t.link.v4.into(), 80),
                &format!("target{i}"),
            )
        })
        .collect();

    let pin_dir = unique_pin_dir();
    let iface = topology.lb_client_side.iface.clone();
    let mut daemon = Daemon(
        topology
            .lb
            .command(sluice)
            .args(["run", "--iface", &iface, "--pin-dir"])
            .arg(&pin_dir)
            .stdin(Stdio::null())
            .spawn()
            .context("starting sluice in the lb namespace")?,
    );
    wait_until(
        Duration::from_secs(20),
        "sluice to attach in the lb namespace",
        || {
            topology.lb.xdp_attached(&iface).is_some()
                || daemon.0.try_wait().ok().flatten().is_some()
        },
    );
    if let Some(status) = daemon.0.try_wait()? {
        bail!("sluice exited early ({status})");
    }
    println!(
        "demo: sluice is attached to {iface} in namespace {}; client {} reaches targets {} through it",
        topology.lb.name(),
        topology.client.link.v4,
        topology
            .targets
            .iter()
            .map(|t| t.link.v4.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("demo: press Ctrl-C to stop\n");

    let passed = |pin_dir: &Path| -> anyhow::Result<u64> {
        let out = topology
            .lb
            .command(sluice)
            .args(["stats", "--json", "--pin-dir"])
            .arg(pin_dir)
            .output()?;
        if !out.status.success() {
            bail!(
                "sluice stats failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let counters: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("parsing `sluice stats --json`")?;
        counters["pass_no_listener"]["packets"]
            .as_u64()
            .context("`sluice stats --json` has no pass_no_listener counter")
    };

    let deadline = Instant::now() + Duration::from_secs(args.duration);
    let mut last_passed = passed(&pin_dir)?;
    let mut round = 0u64;
    while !STOP.load(Ordering::SeqCst) && Instant::now() < deadline {
        round += 1;
        let answers: Vec<String> = topology
            .targets
            .iter()
            .map(|t| curl(&topology.client.ns, &format!("http://{}/", t.link.v4)))
            .collect();
        let now_passed = passed(&pin_dir)?;
        println!(
            "round {round}: answers [{}]; sluice passed {} more packets to the kernel (pass_no_listener: {now_passed})",
            answers.join(", "),
            now_passed - last_passed
        );
        last_passed = now_passed;
        if let Some(status) = daemon.0.try_wait()? {
            bail!("sluice exited unexpectedly ({status})");
        }
        // Paced, and stoppable within 100 ms.
        for _ in 0..10 {
            if STOP.load(Ordering::SeqCst) {
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    println!("\ndemo: stopping sluice and removing the namespaces");
    daemon.stop()?;
    drop(servers);
    drop(topology);
    println!("demo: done");
    Ok(())
}

/// The `sluice run` child; interrupted and reaped on drop.
struct Daemon(Child);

impl Daemon {
    fn stop(&mut self) -> anyhow::Result<()> {
        if self.0.try_wait()?.is_none() {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGINT) };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.0.try_wait()?.is_none() {
            if Instant::now() >= deadline {
                self.0.kill()?;
                bail!("sluice did not stop within 10 s of SIGINT; killed it");
            }
            thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// One HTTP GET with curl from the client namespace: the body, or what went wrong.
fn curl(client: &Namespace, url: &str) -> String {
    let out = client
        .command("curl")
        .args(["--silent", "--show-error", "--max-time", "2", url])
        .output();
    match out {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_string(),
        Ok(out) => format!("error: {}", String::from_utf8_lossy(&out.stderr).trim()),
        Err(e) => format!("error: cannot run curl: {e}"),
    }
}
