//! `cargo xtask demo`: the embedded default topology, in network namespaces.
//!
//! ```text
//!  client ── lb (sluice on eth0 and eth1) ── switch ─┬─ target0  (HTTP server answering "target0")
//!                                                    ├─ target1
//!                                                    └─ target2
//! ```
//! sluice balances the listener 10.111.100.1:80 over the targets (Maglev, one flow per
//! connection); the client fetches the VIP every round and the demo prints which target
//! answered and how sluice's counters moved. Ctrl-C (or `--duration`) stops sluice and removes
//! every namespace.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    process::{Child, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use sluice_tests::{
    netns::{require_root, unique_pin_dir, unique_socket_path, wait_until, LbTopology, Namespace},
    servers::HttpServer,
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 111, 100, 1);
const PORT: u16 = 80;
/// In `nat` mode the targets listen elsewhere, to show port translation.
const NAT_TARGET_PORT: u16 = 8080;
pub(crate) const REQUESTS_PER_ROUND: usize = 6;
/// `--check` keeps going past `--duration` until every target has answered, for at most this
/// many rounds: flows land on targets by hash, so a few requests can miss one target by chance
/// (6 requests miss one of 3 targets 25% of the time; 120 requests, 3 in 10^10).
pub(crate) const CHECK_MAX_ROUNDS: u64 = 20;

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Stop after this many seconds (default: run until Ctrl-C, at most an hour).
    #[arg(long, value_name = "SECS", default_value_t = 3600)]
    pub(crate) duration: u64,
    /// Number of backends.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=20))]
    pub(crate) targets: u8,
    /// Fail unless every target answered and no request failed (for CI).
    #[arg(long)]
    pub(crate) check: bool,
    /// Forwarding mode of the demo listener (several nodes: always dsr).
    #[arg(long, default_value = "nat", value_parser = ["nat", "dsr", "tunnel"])]
    mode: String,
    /// Several sluice nodes behind a router (BIRD, BGP, ECMP) instead of one: 2 to 4.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=4))]
    pub(crate) nodes: u8,
}

impl DemoArgs {
    /// A few seconds, checked: what `cargo xtask test` runs.
    pub fn smoke() -> DemoArgs {
        DemoArgs {
            duration: 3,
            targets: 3,
            check: true,
            mode: "nat".to_string(),
            nodes: 1,
        }
    }

    /// The same with three nodes behind a router.
    pub fn smoke_nodes() -> DemoArgs {
        DemoArgs {
            nodes: 3,
            targets: 4,
            ..DemoArgs::smoke()
        }
    }
}

pub(crate) static STOP: AtomicBool = AtomicBool::new(false);

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

    if args.nodes > 1 {
        return crate::demo_nodes::demo_nodes(sluice, &args);
    }
    println!(
        "demo: building the topology (client, lb, switch, {} targets)",
        args.targets
    );
    let topology = LbTopology::new(args.targets.into());
    let nat = args.mode == "nat";
    let target_port = if nat { NAT_TARGET_PORT } else { PORT };
    // Every address: dsr targets must also answer on the VIP they hold on lo.
    let servers: Vec<HttpServer> = topology
        .targets
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if !nat {
                t.hold_vips(&[VIP.into()]);
            }
            let any = SocketAddr::new(IpAddr::from(Ipv4Addr::UNSPECIFIED), target_port);
            HttpServer::start(&t.ns, any, &format!("target{i}"))
        })
        .collect();

    // `tunnel` targets decapsulate with sluice's own XDP program (this kernel has no ipip).
    let mut decaps = Vec::new();
    if args.mode == "tunnel" {
        for t in &topology.targets {
            decaps.push(Daemon(
                t.ns.command(sluice)
                    .args(["decap", "--iface", &t.link.iface])
                    .stdin(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("starting sluice decap on a target")?,
            ));
            wait_until(
                Duration::from_secs(20),
                "sluice decap to attach on a target",
                || t.ns.xdp_attached(&t.link.iface).is_some(),
            );
        }
    }

    let config = std::env::temp_dir().join(format!("{}-demo.toml", topology.lb.name()));
    let targets: Vec<String> = topology
        .targets
        .iter()
        .map(|t| format!("{{ address = \"{}\" }}", t.link.v4))
        .collect();
    let model = format!(
        "[[listener]]\nname = \"web\"\naddress = \"{VIP}\"\nport = {PORT}\nprotocol = \"tcp\"\nmode = \"{mode}\"\ndefault_target_group = \"web\"\n\n\
         [[target_group]]\nname = \"web\"\nport = {target_port}\nderegistration_delay = 5\ntargets = [{}]\n",
        targets.join(", "),
        mode = args.mode,
    );
    std::fs::write(&config, &model).with_context(|| format!("writing {}", config.display()))?;
    let _config_file = RemoveOnDrop(config.clone());
    println!("demo: configuration ({}):\n{model}", config.display());

    let pin_dir = unique_pin_dir();
    // A stopped daemon leaves its data plane pinned (for a hitless restart); the demo's goes
    // with it, whatever happens.
    let _pins = RemoveDirOnDrop(pin_dir.clone());
    let socket = unique_socket_path();
    let mut daemon = Daemon(
        topology
            .lb
            .command(sluice)
            .args(["run", "--iface", "eth0", "--iface", "eth1", "--pin-dir"])
            .arg(&pin_dir)
            .arg("--socket")
            .arg(&socket)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .spawn()
            .context("starting sluice in the lb namespace")?,
    );
    wait_until(
        Duration::from_secs(20),
        "sluice to attach in the lb namespace",
        || {
            (topology.lb.xdp_attached("eth0").is_some()
                && topology.lb.xdp_attached("eth1").is_some())
                || daemon.0.try_wait().ok().flatten().is_some()
        },
    );
    if let Some(status) = daemon.0.try_wait()? {
        bail!("sluice exited early ({status})");
    }
    println!(
        "demo: sluice balances {VIP}:{PORT} ({} mode) in namespace {} over {}; press Ctrl-C to stop\n",
        args.mode,
        topology.lb.name(),
        topology
            .targets
            .iter()
            .map(|t| format!("{}:{target_port}", t.link.v4))
            .collect::<Vec<_>>()
            .join(", ")
    );

    let forwarded = |socket: &Path| -> anyhow::Result<u64> {
        let out = topology
            .lb
            .command(sluice)
            .args(["stats", "--json", "--socket"])
            .arg(socket)
            .output()?;
        if !out.status.success() {
            bail!(
                "sluice stats failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let stats: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("parsing `sluice stats --json`")?;
        let counters = &stats["counters"];
        Ok(
            ["forward_nat", "forward_dsr", "forward_tunnel", "nat_reply"]
                .iter()
                .filter_map(|name| counters[name]["packets"].as_u64())
                .sum(),
        )
    };

    let deadline = Instant::now() + Duration::from_secs(args.duration);
    let mut last = forwarded(&socket)?;
    let mut totals: BTreeMap<String, usize> = BTreeMap::new();
    let mut round = 0u64;
    let everyone_answered = |totals: &BTreeMap<String, usize>| {
        (0..args.targets).all(|i| totals.contains_key(&format!("target{i}")))
    };
    let go_on = |round: u64, totals: &BTreeMap<String, usize>| {
        Instant::now() < deadline
            || (args.check && round < CHECK_MAX_ROUNDS && !everyone_answered(totals))
    };
    while !STOP.load(Ordering::SeqCst) && go_on(round, &totals) {
        round += 1;
        let answers: Vec<String> = (0..REQUESTS_PER_ROUND)
            .map(|_| curl(&topology.client.ns, &format!("http://{VIP}:{PORT}/")))
            .collect();
        for answer in &answers {
            *totals.entry(answer.clone()).or_insert(0) += 1;
        }
        let now = forwarded(&socket)?;
        println!(
            "round {round}: {} | packets forwarded by XDP: +{} | answers so far: {}",
            answers.join(" "),
            now - last,
            totals
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        last = now;
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
    for mut decap in decaps {
        decap.stop()?;
    }
    drop(servers);
    drop(topology);
    println!("demo: done");
    if args.check {
        let expected: Vec<String> = (0..args.targets).map(|i| format!("target{i}")).collect();
        let answered: Vec<&String> = totals.keys().collect();
        if answered != expected.iter().collect::<Vec<_>>() {
            bail!("demo check failed: expected answers from {expected:?}, got {totals:?}");
        }
        println!("demo: check passed, every target answered");
    }
    Ok(())
}

pub(crate) struct RemoveOnDrop(pub(crate) std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub(crate) struct RemoveDirOnDrop(pub(crate) std::path::PathBuf);

impl Drop for RemoveDirOnDrop {
    fn drop(&mut self) {
        // Removing the pins detaches the program and frees the maps.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `sluice run` child; interrupted and reaped on drop.
pub(crate) struct Daemon(pub(crate) Child);

impl Daemon {
    pub(crate) fn stop(&mut self) -> anyhow::Result<()> {
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
pub(crate) fn curl(client: &Namespace, url: &str) -> String {
    let out = client
        .command("curl")
        .args(["--silent", "--show-error", "--max-time", "2", url])
        .output();
    match out {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_string(),
        Ok(out) => format!("error({})", String::from_utf8_lossy(&out.stderr).trim()),
        Err(e) => format!("error(cannot run curl: {e})"),
    }
}
