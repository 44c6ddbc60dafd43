//! The benchmark's topology in network namespaces, and the daemons and rules each variant
//! runs in it. Everything lives in namespaces it creates (the root namespace gets no address)
//! and is removed on drop, also when a scenario fails.
//!
//! ```text
//!  gen ── eth0 ═ eth0 ── lb ── eth1 ═ eth0 ── target0     (3 targets: one namespace and
//!  (sluice bench)       (sluice | floor | nftables)        one link each, 10.121.i.0/24)
//!                            ── eth2 ═ eth0 ── target1
//!                            ── ...
//!                       lb ── eth1 ═ eth0 ── targets      (100 targets: one namespace
//!                                                          holding 10.122.1.1-100/16)
//! ```
//! The generator sends straight to lb's MAC; the VIP 10.123.0.1 exists nowhere, sluice or
//! nftables translate it.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context};
use sluice_tests::netns::{
    format_mac, unique_pin_dir, unique_socket_path, veth, wait_until, ChildGuard, Namespace,
};

pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 123, 0, 1);
pub const PORT: u16 = 80;
pub const TIMEOUT: Duration = Duration::from_secs(30);

pub struct Topology {
    pub generator: Namespace,
    pub lb: Namespace,
    pub lb_mac: [u8; 6],
    /// Sink namespaces (one per target, or one for all).
    pub sinks: Vec<Namespace>,
    pub targets: Vec<Ipv4Addr>,
    /// lb's interface towards each sink namespace, with the sink's MAC.
    pub hops: Vec<(String, [u8; 6])>,
}

impl Topology {
    /// `n` targets: up to 8 get a namespace and a link each, more share one namespace.
    pub fn new(n: usize) -> Topology {
        let generator = Namespace::new("bgen");
        let lb = Namespace::new("blb");
        veth(&generator, "eth0", &lb, "eth0");
        lb.add_addr("eth0", "10.120.0.1/24");
        generator.add_addr("eth0", "10.120.0.2/24");
        for key in ["net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"] {
            lb.sysctl(key, "1");
        }
        for key in [
            "net.ipv4.conf.all.rp_filter",
            "net.ipv4.conf.default.rp_filter",
            "net.ipv4.conf.eth0.rp_filter",
        ] {
            lb.sysctl(key, "0");
        }
        // Frames redirected into gen's eth0 arrive at lb's eth0, which accepts them only with
        // an XDP program or GRO: GRO for the nftables runs, which have no program there.
        lb.ethtool(&["-K", "eth0", "gro", "on"]);
        let lb_mac = lb.mac("eth0");
        let mut sinks = Vec::new();
        let mut targets = Vec::new();
        let mut hops = Vec::new();
        if n <= 8 {
            for i in 0..n {
                let ns = Namespace::new(&format!("bt{i}"));
                let lb_if = format!("eth{}", i + 1);
                veth(&lb, &lb_if, &ns, "eth0");
                lb.add_addr(&lb_if, &format!("10.121.{i}.1/24"));
                ns.add_addr("eth0", &format!("10.121.{i}.2/24"));
                ns.add_default_route(Ipv4Addr::new(10, 121, i as u8, 1).into());
                // A NAPI instance of its own (threaded for the CPU measurement, `napi.rs`).
                ns.ethtool(&["-K", "eth0", "gro", "on"]);
                targets.push(Ipv4Addr::new(10, 121, i as u8, 2));
                hops.push((lb_if, ns.mac("eth0")));
                sinks.push(ns);
            }
        } else {
            let ns = Namespace::new("bts");
            veth(&lb, "eth1", &ns, "eth0");
            lb.add_addr("eth1", "10.122.0.1/16");
            // One `ip` for all addresses: a hundred processes would take a while.
            let batch: String = (0..n)
                .map(|i| {
                    let addr = Ipv4Addr::new(10, 122, 1 + (i / 250) as u8, 1 + (i % 250) as u8);
                    targets.push(addr);
                    format!("addr add {addr}/16 dev eth0\n")
                })
                .collect();
            let file = std::env::temp_dir().join(format!("{}-addrs", ns.name()));
            std::fs::write(&file, batch).expect("writing an ip batch file");
            let out = Command::new("ip")
                .args(["-n", ns.name(), "-batch"])
                .arg(&file)
                .output()
                .expect("running ip -batch");
            let _ = std::fs::remove_file(&file);
            assert!(
                out.status.success(),
                "ip -batch: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            ns.add_default_route(Ipv4Addr::new(10, 122, 0, 1).into());
            ns.ethtool(&["-K", "eth0", "gro", "on"]);
            hops.push(("eth1".to_string(), ns.mac("eth0")));
            sinks.push(ns);
        }
        Topology {
            generator,
            lb,
            lb_mac,
            sinks,
            targets,
            hops,
        }
    }

    pub fn sink_args(&self) -> Vec<String> {
        self.sinks
            .iter()
            .flat_map(|ns| ["--sink".to_string(), format!("{}:eth0", ns.name())])
            .collect()
    }

    /// Waits until lb knows the MAC of every target (sluice keeps their entries managed).
    pub fn wait_neighbours(&self, targets: &[Ipv4Addr]) {
        wait_until(TIMEOUT, "the targets' MACs on lb", || {
            let neigh = self.lb.ip(&["neigh", "show"]);
            targets.iter().all(|t| {
                neigh
                    .lines()
                    .any(|l| l.starts_with(&format!("{t} ")) && l.contains("lladdr"))
            })
        });
    }

    /// `sluice bench ARGS --json` in the generator namespace.
    pub fn bench(&self, sluice: &Path, args: &[String]) -> anyhow::Result<serde_json::Value> {
        self.bench_with(self.generator.command(sluice), args)
    }

    /// Like [`bench`](Self::bench), on CPU `cpu` only (`taskset` execs sluice).
    pub fn bench_on(
        &self,
        sluice: &Path,
        cpu: usize,
        args: &[String],
    ) -> anyhow::Result<serde_json::Value> {
        let mut cmd = self.generator.command("taskset");
        cmd.args(["-c", &cpu.to_string()]).arg(sluice);
        self.bench_with(cmd, args)
    }

    fn bench_with(&self, mut cmd: Command, args: &[String]) -> anyhow::Result<serde_json::Value> {
        let out = cmd
            .arg("bench")
            .args(args)
            .arg("--json")
            .output()
            .context("running sluice bench")?;
        if !out.status.success() {
            bail!(
                "sluice bench {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        serde_json::from_slice(&out.stdout).context("parsing sluice bench's JSON report")
    }

    pub fn lb_mac(&self) -> String {
        format_mac(self.lb_mac)
    }
}

/// `sluice run` in lb: stopped with SIGINT on drop (so it removes its pins), then its pin
/// directory and config file are removed.
pub struct Daemon {
    pub child: ChildGuard,
    pub socket: PathBuf,
    pin_dir: PathBuf,
    pub config: PathBuf,
}

impl Daemon {
    pub fn start(sluice: &Path, lb: &Namespace, config: &str, extra: &[&str]) -> Daemon {
        Daemon::launch(sluice, lb, config, extra, None, "info")
    }

    /// Like [`start`](Self::start), but on the CPUs `cpus` (a `taskset` list, applied before
    /// sluice starts, so its runtimes size their thread pools to them) and with `rust_log`.
    pub fn start_pinned(
        sluice: &Path,
        lb: &Namespace,
        config: &str,
        cpus: &str,
        rust_log: &str,
    ) -> Daemon {
        Daemon::launch(sluice, lb, config, &[], Some(cpus), rust_log)
    }

    fn launch(
        sluice: &Path,
        lb: &Namespace,
        config: &str,
        extra: &[&str],
        cpus: Option<&str>,
        rust_log: &str,
    ) -> Daemon {
        let path = std::env::temp_dir().join(format!("{}-{}.toml", lb.name(), std::process::id()));
        std::fs::write(&path, config).expect("writing the bench's sluice config");
        let pin_dir = unique_pin_dir();
        let socket = unique_socket_path();
        // taskset execs sluice: the child's pid is sluice's.
        let mut cmd = match cpus {
            Some(cpus) => {
                let mut cmd = lb.command("taskset");
                cmd.args(["-c", cpus]).arg(sluice);
                cmd
            }
            None => lb.command(sluice),
        };
        cmd.args(["run", "--iface", "eth0", "--pin-dir"])
            .arg(&pin_dir)
            .arg("--socket")
            .arg(&socket)
            .arg("--config")
            .arg(&path)
            .args(extra)
            .env("RUST_LOG", rust_log);
        let child = lb.spawn(cmd);
        wait_until(TIMEOUT, "sluice to apply its configuration", || {
            if let Some(status) = child.try_status() {
                panic!("sluice exited ({status}): {}", child.stderr());
            }
            child.stderr().contains("listener(s) from")
        });
        Daemon {
            child,
            socket,
            pin_dir,
            config: path,
        }
    }

    /// `sluice ARGS --socket S` (stats, status, reload, target ...), its stdout.
    pub fn ask(&self, sluice: &Path, lb: &Namespace, args: &[&str]) -> anyhow::Result<String> {
        crate::cmd::output(
            lb.command(sluice)
                .args(args)
                .arg("--socket")
                .arg(&self.socket),
        )
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_status().is_none() {
            self.child.stop(libc::SIGINT, Duration::from_secs(10));
        }
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        let _ = std::fs::remove_file(&self.config);
    }
}

/// `sluice bench floor` in lb, stopped on drop.
pub struct FloorGuard(ChildGuard);

impl FloorGuard {
    pub fn start(sluice: &Path, topology: &Topology) -> FloorGuard {
        let mut cmd = topology.lb.command(sluice);
        cmd.args(["bench", "floor", "--iface", "eth0"]);
        for (iface, mac) in &topology.hops {
            cmd.arg("--to").arg(format!("{iface}={}", format_mac(*mac)));
        }
        let child = topology.lb.spawn(cmd);
        wait_until(TIMEOUT, "the floor program to attach", || {
            if let Some(status) = child.try_status() {
                panic!("sluice bench floor exited ({status}): {}", child.stderr());
            }
            topology.lb.xdp_attached("eth0").is_some()
        });
        FloorGuard(child)
    }
}

impl Drop for FloorGuard {
    fn drop(&mut self) {
        if self.0.try_status().is_none() {
            self.0.stop(libc::SIGINT, Duration::from_secs(10));
        }
    }
}

/// nftables DNAT of the VIP to the targets (jhash of the source address), in lb; the table
/// is deleted on drop.
pub struct Nftables<'a>(&'a Namespace);

impl<'a> Nftables<'a> {
    pub fn install(lb: &'a Namespace, targets: &[Ipv4Addr]) -> anyhow::Result<Nftables<'a>> {
        let map: Vec<String> = targets
            .iter()
            .enumerate()
            .map(|(i, t)| format!("{i} : {t}"))
            .collect();
        let map = map.join(", ");
        let n = targets.len();
        let rules = format!(
            "table ip sluicebench {{\n  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n    \
             ip daddr {VIP} udp dport {PORT} dnat to jhash ip saddr mod {n} map {{ {map} }}\n    \
             ip daddr {VIP} tcp dport {PORT} dnat to jhash ip saddr mod {n} map {{ {map} }}\n  }}\n}}\n"
        );
        let file = std::env::temp_dir().join(format!("{}.nft", lb.name()));
        std::fs::write(&file, rules)?;
        let out = lb.command("nft").arg("-f").arg(&file).output();
        let _ = std::fs::remove_file(&file);
        let out = out.context("running nft (is nftables installed?)")?;
        if !out.status.success() {
            bail!(
                "nft -f failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        // ACKs of connections conntrack did not see open are picked up mid-stream; liberal
        // window tracking keeps the generator's repeated segments from being marked invalid.
        let _ = lb
            .run_in(|| std::fs::write("/proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal", "1"));
        Ok(Nftables(lb))
    }
}

impl Drop for Nftables<'_> {
    fn drop(&mut self) {
        let _ = self
            .0
            .command("nft")
            .args(["delete", "table", "ip", "sluicebench"])
            .output();
    }
}
