//! BIRD 2 (Debian's `bird2`) in a test namespace: a router that learns routes over BGP and
//! installs them (ECMP over several next hops), or a node's own BIRD that sluice drives.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use crate::netns::{wait_until, ChildGuard, Namespace};

/// Where Debian installs it.
pub const BIRD: &str = "/usr/sbin/bird";

/// A running `bird` with its own configuration, control socket and files, removed on drop.
pub struct Bird {
    pub socket: PathBuf,
    pub dir: PathBuf,
    child: Option<ChildGuard>,
}

impl Bird {
    /// Starts `bird` in `ns` with `config` (its files in a fresh directory named after the
    /// namespace), and waits until its control socket answers.
    pub fn start(ns: &Namespace, config: &str) -> Bird {
        let dir = std::env::temp_dir().join(format!("{}-bird", ns.name()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("bird.conf");
        std::fs::write(&conf, config).unwrap();
        let socket = dir.join("bird.ctl");
        let mut bird = Bird {
            socket,
            dir,
            child: None,
        };
        bird.restart(ns);
        bird
    }

    /// (Re)starts the daemon on the same files.
    pub fn restart(&mut self, ns: &Namespace) {
        let mut cmd = ns.command(BIRD);
        cmd.arg("-f")
            .arg("-c")
            .arg(self.dir.join("bird.conf"))
            .arg("-s")
            .arg(&self.socket)
            .arg("-P")
            .arg(self.dir.join("bird.pid"))
            .stdin(Stdio::null());
        let child = ns.spawn(cmd);
        // The socket may exist before the configuration is read: up is what `show status` says.
        wait_until(Duration::from_secs(10), "bird to be up", || {
            if let Some(status) = child.try_status() {
                panic!("bird exited ({status}): {}", child.stderr());
            }
            self.birdc(&["show", "status"])
                .contains("Daemon is up and running")
        });
        self.child = Some(child);
    }

    /// Stops the daemon (SIGTERM): its routes go with it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.stop(libc::SIGTERM, Duration::from_secs(10));
        }
    }

    /// A file in this BIRD's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `birdc -s SOCKET ARGS`: its output.
    pub fn birdc(&self, args: &[&str]) -> String {
        let out = Command::new("/usr/sbin/birdc")
            .arg("-s")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("running birdc");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The kernel's route to `address` in `ns` (`ip route show ADDRESS/32`): empty if none.
pub fn route(ns: &Namespace, prefix: &str) -> String {
    ns.ip(&["route", "show", prefix]).trim().to_string()
}

/// BGP hold time (keepalives every third of it): a lost peer is noticed when it ends, if BFD
/// has not noticed first. Long enough that a busy 2-core machine never misses it.
pub const HOLD_TIME_S: u32 = 6;

/// BFD on every BGP session: control packets every [`BFD_INTERVAL_MS`], a peer is down after
/// [`BFD_MULTIPLIER`] missed ones (1.5 s), which is what failover takes when a node dies. Long
/// enough that a busy 2-core machine does not miss five in a row. A session that BFD (or
/// anything else) took down is retried after 1-5 s (`error wait time`; BIRD's default, 60-300 s,
/// would keep a restarted node out for a minute).
pub const BFD_INTERVAL_MS: u32 = 300;
pub const BFD_MULTIPLIER: u32 = 5;

/// The BFD protocol (on every interface) and the line that ties a BGP session to it.
fn bfd() -> String {
    format!(
        "protocol bfd {{\n  interface \"*\" {{ min rx interval {BFD_INTERVAL_MS} ms; min tx interval {BFD_INTERVAL_MS} ms; idle tx interval 1000 ms; multiplier {BFD_MULTIPLIER}; }};\n}}\n"
    )
}

/// A router's configuration: BGP sessions to each `(name, neighbour, its AS)` from AS
/// `local_as`, accepting their routes, installing them in the kernel with ECMP (several nodes
/// announcing one VIP give a multipath route), with BFD and short timers ([`BFD_MULTIPLIER`],
/// [`HOLD_TIME_S`]) so that a lost node is noticed in seconds.
pub fn router_config(router_id: &str, local_as: u32, peers: &[(&str, &str, u32)]) -> String {
    let mut text = format!(
        "router id {router_id};\nprotocol device {{ scan time 1; }}\nprotocol kernel {{\n  ipv4 {{ export all; }};\n  merge paths on;\n}}\n{}",
        bfd()
    );
    let keepalive = HOLD_TIME_S / 3;
    for (name, neighbour, peer_as) in peers {
        text += &format!(
            "protocol bgp {name} {{\n  local as {local_as};\n  neighbor {neighbour} as {peer_as};\n  hold time {HOLD_TIME_S};\n  keepalive time {keepalive};\n  bfd on;\n  connect retry time 1;\n  error wait time 1, 5;\n  ipv4 {{ import all; export none; }};\n}}\n"
        );
    }
    text
}

/// A sluice node's configuration: one BGP session to the router, exporting only what sluice
/// writes into `routes_file` (included here), never anything to the kernel.
pub fn node_config(
    router_id: &str,
    local_as: u32,
    router: &str,
    router_as: u32,
    routes_file: &Path,
) -> String {
    let keepalive = HOLD_TIME_S / 3;
    format!(
        "router id {router_id};\nprotocol device {{ scan time 1; }}\n{}include \"{}\";\nprotocol bgp uplink {{\n  local as {local_as};\n  neighbor {router} as {router_as};\n  hold time {HOLD_TIME_S};\n  keepalive time {keepalive};\n  bfd on;\n  connect retry time 1;\n  error wait time 1, 5;\n  ipv4 {{ import none; export where proto = \"sluice4\"; }};\n}}\n",
        bfd(),
        routes_file.display()
    )
}
