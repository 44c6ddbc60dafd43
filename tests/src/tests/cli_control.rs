//! Run-time control of a running `sluice run` with `sluice target`, `sluice listener`,
//! `sluice reload` and `sluice status`: each change shows in the status and moves real
//! connections; bad input is refused in one line and changes nothing; a reload drops the
//! changes and re-reads the file, and a broken file is refused.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    process::Output,
};

use serde_json::Value;

use super::namespaces::{one_line, sluice_output, start_sluice, stop_sluice, ApiSocket, PinDir};
use crate::{
    netns::{require_root, wait_until, ChildGuard, LbTopology},
    servers::{http_get, HttpServer},
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 111, 100, 1);
const WEB: u16 = 80;
/// Where `sluice listener add` puts a second listener.
const ALT: u16 = 8080;
/// `nat` translates ports: the targets listen here.
const TARGET_PORT: u16 = 3080;
/// Enough connections that each of three targets gets some (a miss is 1 in (3/2)^GETS).
const GETS: usize = 30;

/// Listener `web`; target group `web` with targets 0 and 1 (target 2 runs a server but is not
/// in the file).
fn config_text(topology: &LbTopology) -> String {
    let targets = [0, 1]
        .iter()
        .map(|&i| format!("{{ address = \"{}\" }}", topology.targets[i].link.v4))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "[[listener]]\nname = \"web\"\naddress = \"{VIP}\"\nport = {WEB}\nprotocol = \"tcp\"\ndefault_target_group = \"web\"\nmaglev_table_size = 251\n\n\
         [[target_group]]\nname = \"web\"\nport = {TARGET_PORT}\nderegistration_delay = 1\ntargets = [{targets}]\n"
    )
}

/// Listeners as (name, port) and targets as (address, weight, state).
type Shape = (Vec<(String, u64)>, Vec<(String, Value, String)>);

struct Running {
    topology: LbTopology,
    web: Vec<HttpServer>,
    sluice: ChildGuard,
    config: PathBuf,
    pin_dir: PinDir,
    socket: ApiSocket,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
    }
}

impl Running {
    fn start() -> Running {
        require_root();
        let topology = LbTopology::new(3);
        let any = IpAddr::from(Ipv6Addr::UNSPECIFIED);
        let web = topology
            .targets
            .iter()
            .enumerate()
            .map(|(i, t)| {
                HttpServer::start(
                    &t.ns,
                    SocketAddr::new(any, TARGET_PORT),
                    &format!("target{i}"),
                )
            })
            .collect();
        let config = std::env::temp_dir().join(format!("{}.toml", topology.lb.name()));
        std::fs::write(&config, config_text(&topology)).unwrap();
        let pin_dir = PinDir::new();
        let socket = ApiSocket::new();
        let sluice = start_sluice(
            &topology.lb,
            "eth0",
            &pin_dir,
            &socket,
            &["--iface", "eth1", "--config", config.to_str().unwrap()],
        );
        Running {
            topology,
            web,
            sluice,
            config,
            pin_dir,
            socket,
        }
    }

    fn target(&self, i: usize) -> String {
        self.topology.targets[i].link.v4.to_string()
    }

    fn target_addr(&self, i: usize) -> String {
        format!("{}:{TARGET_PORT}", self.target(i))
    }

    /// `sluice ARGS --socket SOCKET`.
    fn sluice(&self, args: &[&str]) -> Output {
        let mut all = args.to_vec();
        all.extend(["--socket", self.socket.arg()]);
        sluice_output(&all)
    }

    /// Runs a change that must succeed; its first line of output.
    fn ok(&self, args: &[&str]) -> String {
        let output = self.sluice(args);
        assert!(
            output.status.success(),
            "sluice {args:?}: {}\n{}",
            String::from_utf8_lossy(&output.stderr),
            self.sluice.stderr()
        );
        let stdout = String::from_utf8(output.stdout).unwrap();
        stdout.lines().next().unwrap_or_default().to_string()
    }

    fn status(&self) -> Value {
        let output = self.sluice(&["status", "--json"]);
        assert!(output.status.success(), "{output:?}");
        serde_json::from_slice(&output.stdout).unwrap()
    }

    /// Listeners (name, port) and targets (address, weight, state): what changes change.
    fn shape(&self) -> Shape {
        let status = self.status();
        let listeners = status["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                (
                    l["name"].as_str().unwrap().to_string(),
                    l["port"].as_u64().unwrap(),
                )
            })
            .collect();
        let targets = status["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["address"].as_str().unwrap().to_string(),
                    t["weight"].clone(),
                    t["state"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        (listeners, targets)
    }

    /// The target at `address` in the status, if registered.
    fn find(&self, address: &str) -> Option<(Value, String)> {
        self.shape()
            .1
            .into_iter()
            .find(|(a, _, _)| a == address)
            .map(|(_, weight, state)| (weight, state))
    }

    /// Requests each target answered during `GETS` connections to `port`.
    fn spread(&self, port: u16) -> Vec<u64> {
        let before: Vec<u64> = self.web.iter().map(HttpServer::requests).collect();
        for _ in 0..GETS {
            http_get(
                &self.topology.client.ns,
                SocketAddr::new(VIP.into(), port),
                "/",
            )
            .unwrap_or_else(|e| panic!("GET through sluice: {e}\n{}", self.sluice.stderr()));
        }
        self.web
            .iter()
            .zip(before)
            .map(|(s, b)| s.requests() - b)
            .collect()
    }

    fn stop(mut self) {
        stop_sluice(
            &mut self.sluice,
            libc::SIGINT,
            &self.topology.lb,
            "eth0",
            &self.pin_dir,
            &self.socket,
        );
    }
}

#[test]
fn changes_move_traffic_until_a_reload_drops_them() {
    let run = Running::start();
    assert_eq!(run.spread(WEB)[2], 0, "target 2 is not in the file");

    // target add: the new target takes new connections at once.
    let t2 = run.target(2);
    let line = run.ok(&["target", "add", "web", &t2, "--weight", "2"]);
    assert!(line.contains("until the next reload"), "{line}");
    assert_eq!(
        run.find(&run.target_addr(2)),
        Some((Value::from(2), "active".to_string()))
    );
    let spread = run.spread(WEB);
    assert!(spread.iter().all(|&n| n > 0), "{spread:?}");

    // set-weight shows in the status.
    run.ok(&["target", "set-weight", "web", &run.target_addr(0), "7"]);
    assert_eq!(run.find(&run.target_addr(0)).unwrap().0, Value::from(7));

    // listener add: a second port on the VIP balances to the same targets.
    run.ok(&[
        "listener",
        "add",
        "alt",
        "--address",
        &VIP.to_string(),
        "--port",
        &ALT.to_string(),
        "--protocol",
        "tcp",
        "--target-group",
        "web",
    ]);
    assert!(run.shape().0.contains(&("alt".to_string(), u64::from(ALT))));
    assert_eq!(run.spread(ALT).iter().sum::<u64>(), GETS as u64);

    // target remove: it drains (deregistration delay 1 s), then new connections avoid it.
    run.ok(&["target", "remove", "web", &t2]);
    let state = run.find(&run.target_addr(2)).map(|(_, s)| s);
    assert!(
        state.is_none() || state.as_deref() == Some("draining"),
        "{state:?}"
    );
    assert_eq!(run.spread(WEB)[2], 0);
    // drain is the same: target 1 leaves too.
    run.ok(&["target", "drain", "web", &run.target_addr(1)]);
    let spread = run.spread(WEB);
    assert_eq!(spread, [GETS as u64, 0, 0]);

    // listener remove: gone from the status.
    run.ok(&["listener", "remove", "alt"]);
    assert!(run.shape().0.iter().all(|(name, _)| name != "alt"));

    // reload: the file again; run-time changes are gone.
    let line = run.ok(&["reload"]);
    assert_eq!(line, "reloaded the configuration file");
    wait_until(
        super::namespaces::TIMEOUT,
        "target 2's drain to end",
        || run.find(&run.target_addr(2)).is_none(),
    );
    let (listeners, targets) = run.shape();
    assert_eq!(listeners, [("web".to_string(), u64::from(WEB))]);
    let mut active: Vec<(String, Value)> = targets
        .into_iter()
        .filter(|(_, _, state)| state == "active")
        .map(|(a, w, _)| (a, w))
        .collect();
    active.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        active,
        [
            (run.target_addr(0), Value::from(1)),
            (run.target_addr(1), Value::from(1))
        ]
    );
    let spread = run.spread(WEB);
    assert!(
        spread[0] > 0 && spread[1] > 0 && spread[2] == 0,
        "{spread:?}"
    );

    // A broken file is refused on reload and changes nothing.
    let before = run.shape();
    std::fs::write(&run.config, "[[listener]]\nname = \"web\"\n").unwrap();
    let output = run.sluice(&["reload"]);
    assert_eq!(output.status.code(), Some(1));
    let line = one_line(&output.stderr);
    assert!(
        line.starts_with("error: reload of ")
            && line.contains("refused, running configuration kept"),
        "{line}"
    );
    assert_eq!(run.shape(), before);
    run.stop();
}

#[test]
fn bad_changes_are_refused_in_one_line_and_change_nothing() {
    let run = Running::start();
    let before = run.shape();
    let vip = VIP.to_string();
    let (t0, t0_addr, t2) = (run.target(0), run.target_addr(0), run.target(2));
    let refused_by_daemon: [(&[&str], String); 7] = [
        (
            &["target", "add", "nope", &t2],
            "error: target group 'nope' does not exist; target groups: web".into(),
        ),
        (
            &["target", "remove", "web", "10.111.1.99:80"],
            format!(
                "error: target 10.111.1.99:80 is not in target group 'web'; its targets: {t0_addr}, {}",
                run.target_addr(1)
            ),
        ),
        (
            &["target", "set-weight", "nope", &t0, "3"],
            "error: target group 'nope' does not exist; target groups: web".into(),
        ),
        (
            &["target", "add", "web", &t0],
            format!("error: target {t0_addr} is already in target group 'web'"),
        ),
        (
            &["listener", "add", "web", "--address", &vip, "--port", "81", "--protocol", "tcp", "--target-group", "web"],
            "error: listener 'web' already exists; listeners: web".into(),
        ),
        (
            &["listener", "add", "dup", "--address", &vip, "--port", "80", "--protocol", "tcp", "--target-group", "web"],
            format!("error: listeners 'web' and 'dup' both listen on {vip}:80 tcp; each address, port and protocol may have one listener"),
        ),
        (
            &["listener", "remove", "nope"],
            "error: listener 'nope' does not exist; listeners: web".into(),
        ),
    ];
    for (args, expected) in refused_by_daemon {
        let output = run.sluice(args);
        assert_eq!(output.status.code(), Some(1), "sluice {args:?}");
        assert_eq!(one_line(&output.stderr), expected, "sluice {args:?}");
        assert!(output.stdout.is_empty());
    }
    let refused_by_clap: [(&[&str], &str); 5] = [
        (
            &["target", "add", "web", "10.111.1"],
            "'10.111.1' is not ADDRESS or ADDRESS:PORT",
        ),
        (
            &["target", "add", "web", &t2, "--weight", "0"],
            "0 is not in 1..=999",
        ),
        (
            &["target", "set-weight", "web", &t0, "1000"],
            "1000 is not in 1..=999",
        ),
        (
            &["target", "set-weight", "web", &t0, "0"],
            "0 is not in 1..=999",
        ),
        (
            &[
                "listener",
                "add",
                "x",
                "--address",
                &vip,
                "--port",
                "82",
                "--protocol",
                "sctp",
                "--target-group",
                "web",
            ],
            "sctp",
        ),
    ];
    for (args, named) in refused_by_clap {
        let output = run.sluice(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "sluice {args:?}: {stderr}");
        assert!(
            stderr.lines().next().unwrap().contains(named),
            "sluice {args:?}: {stderr}"
        );
    }
    assert_eq!(run.shape(), before);
    run.stop();
}

#[test]
fn changes_without_a_running_daemon_say_so() {
    let socket = ApiSocket::new();
    for args in [
        &["target", "add", "web", "10.0.1.10"][..],
        &["target", "remove", "web", "10.0.1.10"],
        &["target", "set-weight", "web", "10.0.1.10", "2"],
        &["listener", "remove", "web"],
        &["reload"],
        &["status"],
    ] {
        let mut all = args.to_vec();
        all.extend(["--socket", socket.arg()]);
        let output = sluice_output(&all);
        assert_eq!(output.status.code(), Some(1), "sluice {args:?}");
        assert_eq!(
            one_line(&output.stderr),
            format!(
                "error: no sluice daemon answers on {}: is `sluice run` running (with the same --socket)?",
                socket.arg()
            )
        );
        assert!(output.stdout.is_empty());
    }
}
