//! Running sluice as operators do: `sluice check` refuses what `sluice run` and `sluice
//! reload` refuse, with their sentence, and needs no root; `sluice config show` after CLI
//! edits round-trips through `check` and `reload` without a change; under systemd the daemon
//! says READY=1 only once its listeners accept, RELOADING=1/READY=1 around a reload,
//! WATCHDOG=1 while it runs and STOPPING=1 when it stops.

use std::{
    net::{SocketAddr, TcpStream},
    os::unix::{fs::PermissionsExt, net::UnixDatagram},
    path::{Path, PathBuf},
    process::Output,
    time::{Duration, Instant},
};

use serde_json::Value;

use super::namespaces::{start_sluice, ApiSocket, PinDir, TIMEOUT};
use crate::netns::{require_root, sluice_binary, veth, wait_until, Namespace};

/// `nobody` on Debian-like systems.
const UNPRIVILEGED: u32 = 65534;
/// The load balancer namespace's address on eth0: L4 targets in its /24 have a route.
const LB_ADDR: &str = "10.77.0.1/24";
const TARGET: &str = "10.77.0.10";
const VIP: &str = "10.78.0.1";

/// A directory every user may read, removed at the end of the test.
struct SharedDir(PathBuf);

impl SharedDir {
    fn new(what: &str) -> SharedDir {
        let dir = std::env::temp_dir().join(format!(
            "sluice-{what}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        SharedDir(dir)
    }

    fn file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        path
    }
}

impl Drop for SharedDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A namespace with eth0 (to a peer) holding `LB_ADDR`, for a daemon to attach to.
fn lb_namespace() -> (Namespace, Namespace) {
    let ns = Namespace::new("ops");
    let peer = Namespace::new("opspeer");
    veth(&ns, "eth0", &peer, "eth0");
    ns.add_addr("eth0", LB_ADDR);
    (ns, peer)
}

/// One tcp listener on `VIP:80` to one group `web` of the given targets (port 8080).
fn l4_model(targets: &[&str]) -> String {
    let targets: Vec<String> = targets
        .iter()
        .map(|t| format!("{{ address = \"{t}\" }}"))
        .collect();
    format!(
        "[[listener]]\nname = \"web\"\naddress = \"{VIP}\"\nport = 80\nprotocol = \"tcp\"\ndefault_target_group = \"web\"\nmaglev_table_size = 251\n\n\
         [[target_group]]\nname = \"web\"\nport = 8080\nderegistration_delay = 1\ntargets = [{}]\n",
        targets.join(", ")
    )
}

/// The models the daemon refuses, each named for the failure message. Every one differs from
/// the valid model in one thing.
fn invalid_models(dir: &SharedDir) -> Vec<(&'static str, String)> {
    let good = l4_model(&[TARGET]);
    let not_pem = dir.file("garbage.pem", "this is not a certificate\n");
    let https = |cert: &Path| {
        format!(
            "{good}\n[[listener]]\nname = \"secure\"\naddress = \"127.0.0.1\"\nport = 8443\nprotocol = \"https\"\ndefault_target_group = \"local\"\n\
             certificates = [{{ cert = \"{}\", key = \"{}\" }}]\n\n\
             [[target_group]]\nname = \"local\"\ntargets = [ {{ address = \"127.0.0.1\", port = 3000 }} ]\n",
            cert.display(),
            cert.display()
        )
    };
    vec![
        ("syntax", good.replace("port = 80\n", "port = \"eighty\"\n")),
        (
            "unknown group",
            good.replace(
                "default_target_group = \"web\"",
                "default_target_group = \"api\"",
            ),
        ),
        (
            "weight",
            good.replace(
                &format!("{{ address = \"{TARGET}\" }}"),
                &format!("{{ address = \"{TARGET}\", weight = 0 }}"),
            ),
        ),
        ("missing certificate", https(&dir.0.join("missing.pem"))),
        ("certificate not PEM", https(&not_pem)),
        (
            "access log directory",
            format!(
                "{good}\n[[listener]]\nname = \"site\"\naddress = \"127.0.0.1\"\nport = 8081\nprotocol = \"http\"\ndefault_target_group = \"local\"\n\
                 access_log = \"{}/no-such-dir/access.log\"\n\n\
                 [[target_group]]\nname = \"local\"\ntargets = [ {{ address = \"127.0.0.1\", port = 3000 }} ]\n",
                dir.0.display()
            ),
        ),
        // The namespace has no route beyond 10.77.0.0/24.
        ("no route", l4_model(&[TARGET, "10.99.0.10"])),
        // The daemon runs with --max-listeners 1.
        (
            "too many listeners",
            format!(
                "{good}\n[[listener]]\nname = \"second\"\naddress = \"{VIP}\"\nport = 81\nprotocol = \"tcp\"\ndefault_target_group = \"web\"\nmaglev_table_size = 251\n"
            ),
        ),
    ]
}

/// The line of `output`'s stderr that holds the error.
fn error_line(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "one error line expected: {stderr}");
    errors[0].to_string()
}

fn check_as_nobody(ns: &Namespace, config: &Path, extra: &[&str]) -> Output {
    ns.command_as(sluice_binary(), UNPRIVILEGED, UNPRIVILEGED)
        .args(["check", "--config", config.to_str().unwrap()])
        .args(["--stickiness-keys", "/nonexistent/stickiness.keys"])
        .args(extra)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

#[test]
fn check_refuses_what_run_and_reload_refuse_with_the_same_sentence() {
    require_root();
    let (ns, _peer) = lb_namespace();
    let dir = SharedDir::new("check");
    let config = dir.file("sluice.toml", &l4_model(&[TARGET]));

    // Valid: check passes without root, and a daemon runs it.
    let output = check_as_nobody(&ns, &config, &["--max-listeners", "1"]);
    assert!(output.status.success(), "{output:?}");
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(
        said.contains("valid (1 listener(s), 1 target group(s), 1 target(s))"),
        "{said}"
    );
    let pin_dir = PinDir::new();
    let socket = ApiSocket::new();
    let daemon = start_sluice(
        &ns,
        "eth0",
        &pin_dir,
        &socket,
        &[
            "--config",
            config.to_str().unwrap(),
            "--max-listeners",
            "1",
            "--metrics-address",
            "off",
        ],
    );

    for (what, text) in invalid_models(&dir) {
        std::fs::write(&config, &text).unwrap();
        let checked = check_as_nobody(&ns, &config, &["--max-listeners", "1"]);
        assert_eq!(checked.status.code(), Some(1), "{what}: {checked:?}");
        let refusal = error_line(&checked);

        // A second daemon starting with the file (another pin directory and socket) stops
        // with the same sentence, before it attaches anything.
        let other_pins = PinDir::new();
        let other_socket = ApiSocket::new();
        let run = ns
            .command(sluice_binary())
            .args(["run", "--iface", "eth0", "--pin-dir", other_pins.arg()])
            .args(["--socket", other_socket.arg(), "--metrics-address", "off"])
            .args(["--max-listeners", "1", "--config", config.to_str().unwrap()])
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        assert_eq!(run.status.code(), Some(1), "{what}: {run:?}");
        assert_eq!(error_line(&run), refusal, "{what}: run and check differ");

        // The running daemon refuses the reload with it, and keeps its model.
        let reload = sluice(&socket, &["reload"]);
        assert_eq!(reload.status.code(), Some(1), "{what}: {reload:?}");
        let reason = refusal.strip_prefix("error: ").unwrap();
        assert_eq!(
            error_line(&reload),
            format!(
                "error: reload of {} refused, running configuration kept: {reason}",
                config.display()
            ),
            "{what}: reload and check differ"
        );
    }
    assert_eq!(
        targets(&status(&socket)),
        vec![format!("{TARGET}:8080")],
        "the running model was kept through every refusal"
    );
    drop(daemon);
    let _ = sluice(&socket, &["down", "--pin-dir", pin_dir.arg()]);
}

#[test]
fn check_passes_the_shipped_example_without_root() {
    require_root();
    let ns = Namespace::new("opsex");
    let dir = SharedDir::new("example");
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/sluice.toml"),
    )
    .unwrap();
    let config = dir.file("sluice.toml", &example);
    let output = check_as_nobody(&ns, &config, &[]);
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains(": valid ("));
    // Held by someone else: a note (it may be the running daemon), not a refusal.
    let held = ns.run_in(|| std::net::TcpListener::bind("127.0.0.1:8080").unwrap());
    let output = check_as_nobody(&ns, &config, &[]);
    drop(held);
    assert!(output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with("note: listener 'web': cannot listen on 127.0.0.1:8080"),
        "{stderr}"
    );
}

fn sluice(socket: &ApiSocket, args: &[&str]) -> Output {
    std::process::Command::new(sluice_binary())
        .args(args)
        .args(["--socket", socket.arg()])
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn ok(socket: &ApiSocket, args: &[&str]) -> String {
    let output = sluice(socket, args);
    assert!(output.status.success(), "sluice {args:?}: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}

fn status(socket: &ApiSocket) -> Value {
    serde_json::from_str(&ok(socket, &["status", "--json"])).unwrap()
}

fn targets(status: &Value) -> Vec<String> {
    status["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["state"] != "draining")
        .map(|t| t["address"].as_str().unwrap().to_string())
        .collect()
}

/// Listeners as (name, id) and targets as (address, id, weight, state).
type Identity = (Vec<(Value, Value)>, Vec<(Value, Value, Value, Value)>);

/// Listener names and ids, and registered targets with their ids, weights and states: what a
/// reload that changes nothing must leave as it was. (Draining targets end their drain on
/// their own clock.)
fn identity(status: &Value) -> Identity {
    let listeners = status["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["name"].clone(), l["id"].clone()))
        .collect();
    let targets = status["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["state"] != "draining")
        .map(|t| {
            (
                t["address"].clone(),
                t["id"].clone(),
                t["weight"].clone(),
                t["state"].clone(),
            )
        })
        .collect();
    (listeners, targets)
}

#[test]
fn config_show_after_cli_edits_round_trips_through_check_and_reload() {
    require_root();
    let (ns, _peer) = lb_namespace();
    let dir = SharedDir::new("show");
    let targets_in_file = ["10.77.0.10", "10.77.0.11", "10.77.0.12"];
    let config = dir.file("sluice.toml", &l4_model(&targets_in_file));
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o640)).unwrap();
    let pin_dir = PinDir::new();
    let socket = ApiSocket::new();
    let _daemon = start_sluice(
        &ns,
        "eth0",
        &pin_dir,
        &socket,
        &[
            "--config",
            config.to_str().unwrap(),
            "--metrics-address",
            "off",
        ],
    );

    ok(
        &socket,
        &["target", "add", "web", "10.77.0.13:8081", "--weight", "3"],
    );
    ok(&socket, &["target", "remove", "web", "10.77.0.11"]);
    ok(&socket, &["target", "drain", "web", "10.77.0.12"]);
    ok(&socket, &["target", "set-weight", "web", "10.77.0.10", "5"]);
    ok(
        &socket,
        &[
            "listener",
            "add",
            "alt",
            "--address",
            VIP,
            "--port",
            "8080",
            "--protocol",
            "tcp",
            "--target-group",
            "web",
        ],
    );
    let edited = status(&socket);

    let shown = ok(&socket, &["config", "show"]);
    assert!(
        shown.contains("10.77.0.13") && shown.contains("weight = 5"),
        "{shown}"
    );
    assert!(
        !shown.contains("10.77.0.11") && !shown.contains("10.77.0.12"),
        "{shown}"
    );
    let copy = dir.file("shown.toml", &shown);
    let checked = check_as_nobody(&ns, &copy, &[]);
    assert!(checked.status.success(), "{checked:?}");

    let saved = ok(&socket, &["config", "show", "--save"]);
    assert!(saved.starts_with(&format!("saved the running model to {}", config.display())));
    assert_eq!(std::fs::read_to_string(&config).unwrap(), shown);
    let mode = std::fs::metadata(&config).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o640, "the saved file keeps its mode");

    let reloaded = ok(&socket, &["reload"]);
    assert_eq!(reloaded, "reloaded the configuration file\n  no change\n");
    assert_eq!(
        identity(&status(&socket)),
        identity(&edited),
        "ids, weights and states after the reload"
    );
    assert_eq!(ok(&socket, &["config", "show"]), shown);
    let _ = sluice(&socket, &["down", "--pin-dir", pin_dir.arg()]);
}

/// A daemon killed when the test ends, also when it fails.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The datagrams a daemon sends to `$NOTIFY_SOCKET`, as systemd receives them.
struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    fn new() -> NotifySocket {
        let path = std::env::temp_dir().join(format!(
            "sluice-notify-{}-{:?}.sock",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path).unwrap();
        NotifySocket { socket, path }
    }

    /// The next message other than a watchdog ping, within `TIMEOUT`.
    fn next_state(&self, pings: &mut usize) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no notification within {TIMEOUT:?}");
            self.socket.set_read_timeout(Some(left)).unwrap();
            let mut buf = [0u8; 512];
            let n = self.socket.recv(&mut buf).expect("a notification");
            let message = String::from_utf8_lossy(&buf[..n]).into_owned();
            if message == "WATCHDOG=1\n" {
                *pings += 1;
                continue;
            }
            return message;
        }
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[test]
fn systemd_hears_ready_once_listeners_accept_and_reloading_around_reloads() {
    require_root();
    let (ns, _peer) = lb_namespace();
    let dir = SharedDir::new("notify");
    let http = format!(
        "{}\n[[listener]]\nname = \"site\"\naddress = \"127.0.0.1\"\nport = 8088\nprotocol = \"http\"\ndefault_target_group = \"local\"\n\n\
         [[target_group]]\nname = \"local\"\ntargets = [ {{ address = \"127.0.0.1\", port = 3000 }} ]\n",
        l4_model(&[TARGET])
    );
    let config = dir.file("sluice.toml", &http);
    let notify = NotifySocket::new();
    let pin_dir = PinDir::new();
    let socket = ApiSocket::new();
    let mut cmd = ns.command(sluice_binary());
    cmd.args(["run", "--iface", "eth0", "--pin-dir", pin_dir.arg()])
        .args(["--socket", socket.arg(), "--metrics-address", "off"])
        .args(["--config", config.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &notify.path)
        // Pings every second (half the interval).
        .env("WATCHDOG_USEC", "2000000")
        .env_remove("RUST_LOG");
    // Standard error is a file standing for the journal's stream: $JOURNAL_STREAM names it.
    let log_path = dir.0.join("journal");
    let log = std::fs::File::create(&log_path).unwrap();
    let stream = {
        use std::os::unix::fs::MetadataExt;
        let meta = log.metadata().unwrap();
        format!("{}:{}", meta.dev(), meta.ino())
    };
    cmd.env("JOURNAL_STREAM", stream)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log);
    let mut daemon = Killed(cmd.spawn().unwrap());
    let journal = || std::fs::read_to_string(&log_path).unwrap();
    let mut pings = 0;

    let ready = notify.next_state(&mut pings);
    // As soon as systemd hears it, the listener and the control API answer.
    let listener: SocketAddr = "127.0.0.1:8088".parse().unwrap();
    let connected = ns.run_in(|| TcpStream::connect_timeout(&listener, Duration::from_secs(1)));
    assert!(connected.is_ok(), "{connected:?}: {}", journal());
    assert!(sluice(&socket, &["status"]).status.success());
    assert_eq!(ready, format!("READY=1\nMAINPID={}\n", daemon.0.id()));

    ok(&socket, &["reload"]);
    let reloading = notify.next_state(&mut pings);
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading:?}"
    );
    assert_eq!(notify.next_state(&mut pings), "READY=1\n");
    // A refused reload ends the same way: the old model runs on.
    std::fs::write(&config, "[[listener]]\nname = 1\n").unwrap();
    assert_eq!(sluice(&socket, &["reload"]).status.code(), Some(1));
    assert!(notify.next_state(&mut pings).starts_with("RELOADING=1\n"));
    assert_eq!(notify.next_state(&mut pings), "READY=1\n");

    wait_until(TIMEOUT, "watchdog pings", || {
        notify.socket.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 64];
        while let Ok(n) = notify.socket.recv(&mut buf) {
            assert_eq!(&buf[..n], b"WATCHDOG=1\n");
            pings += 1;
        }
        pings >= 2
    });
    notify.socket.set_nonblocking(false).unwrap();

    // SAFETY: kill only sends a signal to the daemon this test started.
    unsafe { libc::kill(daemon.0.id() as i32, libc::SIGINT) };
    assert_eq!(notify.next_state(&mut pings), "STOPPING=1\n");
    let mut status = None;
    wait_until(TIMEOUT, "the daemon to exit", || {
        status = daemon.0.try_wait().unwrap();
        status.is_some()
    });
    assert!(status.unwrap().success(), "{status:?}: {}", journal());
    // Lines for the journal: a syslog priority, no timestamp, no colour.
    let lines = journal();
    assert!(
        lines.contains("<6>INFO sluice::daemon::serve: stopping\n"),
        "{lines}"
    );
    for line in lines.lines() {
        let level = line.get(..3).unwrap_or_default();
        assert!(["<3>", "<4>", "<6>", "<7>"].contains(&level), "{line:?}");
        // env_logger's own format starts with "[" and the time.
        assert!(
            !line.contains('\x1b') && !line[3..].starts_with('['),
            "{line:?}"
        );
    }
    let _ = sluice(&socket, &["down", "--pin-dir", pin_dir.arg()]);
}
