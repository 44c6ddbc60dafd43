//! `sluice run` with an L7 (http/https) model in the lb namespace of an [`LbTopology`], for
//! the L7 proxy's end-to-end tests.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
};

use super::namespaces::{ApiSocket, PinDir, TIMEOUT};
use crate::{
    netns::{require_root, sluice_binary, wait_until, ChildGuard, LbTopology},
    servers::http_get,
};

/// The address http/https listeners listen on; the lb namespace holds it.
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 111, 100, 1);

/// The daemon; the model file is removed on drop.
pub struct L7Sluice {
    pub sluice: ChildGuard,
    /// Its control socket (`sluice stats`, `sluice target ...`).
    pub socket: ApiSocket,
    config: PathBuf,
    _pin_dir: PinDir,
}

impl Drop for L7Sluice {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
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
        require_root();
        topology
            .lb
            .add_addr(&topology.lb_client_side.iface, &format!("{VIP}/32"));
        let config = std::env::temp_dir().join(format!("{}.toml", topology.lb.name()));
        std::fs::write(&config, model).unwrap();
        let pin_dir = PinDir::new();
        let socket = ApiSocket::new();
        let mut cmd = topology.lb.command(sluice_binary());
        cmd.args(["run", "--iface", "eth0", "--iface", "eth1"])
            .args(["--pin-dir", pin_dir.arg()])
            .args(["--socket", socket.arg()])
            .args(["--flows", "65536", "--metrics-address", "off"])
            .arg("--config")
            .arg(&config)
            // The access log (target sluice::access) included.
            .env("RUST_LOG", "info");
        let sluice = topology.lb.spawn(cmd);
        let lb = L7Sluice {
            sluice,
            socket,
            config,
            _pin_dir: pin_dir,
        };
        wait_until(TIMEOUT, &format!("{healthy} healthy targets"), || {
            lb.check_running();
            lb.sluice.stderr().matches("-> healthy").count() >= healthy
        });
        lb
    }

    /// Writes `model` over the configuration file and asks the daemon to re-read it
    /// (SIGHUP); returns at once: wait for the log line that says how it went.
    pub fn reload(&self, model: &str) {
        std::fs::write(&self.config, model).unwrap();
        self.sluice.signal(libc::SIGHUP);
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
