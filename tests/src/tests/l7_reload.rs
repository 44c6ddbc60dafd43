//! Reloads and run-time changes of http listeners under traffic: a listener whose address
//! stays keeps its socket and its connections (renames, access log on and off), a change
//! whose listener cannot be served is refused whole, and the answers say what changed.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use super::{
    l7_support::{fast_health_check, L7Sluice, RequestLoop, VIP},
    namespaces::one_line,
};
use crate::{
    http_servers::L7Server,
    netns::{wait_until, LbTopology},
};

const PORT: u16 = 80;
const TARGET_PORT: u16 = 8080;

/// An http listener `name` on VIP:80 (and `extra` after it) forwarding to every target.
fn model(topology: &LbTopology, name: &str, listener_extra: &str, extra: &str) -> String {
    let targets: Vec<String> = topology
        .targets
        .iter()
        .map(|t| format!("{{ address = \"{}\" }}", t.link.v4))
        .collect();
    format!(
        "[[listener]]\nname = \"{name}\"\naddress = \"{VIP}\"\nport = {PORT}\nprotocol = \"http\"\ndefault_target_group = \"www\"\n{listener_extra}\n\
         {extra}\n\
         [[target_group]]\nname = \"www\"\nport = {TARGET_PORT}\ntargets = [{}]\n{}",
        targets.join(", "),
        fast_health_check(TARGET_PORT)
    )
}

struct Fixture {
    topology: LbTopology,
    _servers: Vec<L7Server>,
    lb: L7Sluice,
    dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Fixture {
    fn start() -> Fixture {
        let topology = LbTopology::new(2);
        let any = SocketAddr::new(IpAddr::from(Ipv4Addr::UNSPECIFIED), TARGET_PORT);
        let servers = topology
            .targets
            .iter()
            .enumerate()
            .map(|(i, t)| L7Server::start(&t.ns, any, &format!("target{i}")))
            .collect();
        let lb = L7Sluice::start(&topology, &model(&topology, "web", "", ""), 2);
        lb.wait_forwarding(&topology, PORT, "target");
        let dir = TempDir(std::env::temp_dir().join(format!("{}-files", topology.lb.name())));
        std::fs::create_dir_all(&dir.0).unwrap();
        Fixture {
            topology,
            _servers: servers,
            lb,
            dir,
        }
    }

    fn vip(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::from(VIP), PORT)
    }

    /// `sluice reload` with `model` in the file: its exit status, stdout and stderr.
    fn reload(&self, model: &str) -> (Option<i32>, String, String) {
        self.lb.write_config(model);
        let out = self.lb.cli(&["reload"]);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `sluice status --json`.
    fn status(&self) -> serde_json::Value {
        let out = self.lb.cli(&["status", "--json"]);
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The http listeners in the status: (name, protocol, port).
    fn http_listeners(&self) -> Vec<(String, String, u64)> {
        let status = self.status();
        status["http_listeners"]
            .as_array()
            .expect("http_listeners")
            .iter()
            .map(|l| {
                (
                    l["name"].as_str().unwrap().to_string(),
                    l["protocol"].as_str().unwrap().to_string(),
                    l["port"].as_u64().unwrap_or_default(),
                )
            })
            .collect()
    }
}

#[test]
fn fifty_reloads_renaming_a_listener_and_toggling_its_access_log_fail_no_request() {
    let f = Fixture::start();
    let log = f.dir.0.join("access.log");
    let requests = RequestLoop::start(&f.topology, f.vip(), "/");
    requests.wait_for(20);
    let mut name = "web";
    let mut logging = false;
    for i in 0..50 {
        let answered = requests.ok();
        let before = name;
        if i % 2 == 0 {
            name = if name == "web" { "www" } else { "web" };
        } else {
            logging = !logging;
        }
        let access_log = if logging {
            format!("access_log = \"{}\"\n", log.display())
        } else {
            String::new()
        };
        let (code, stdout, stderr) = f.reload(&model(&f.topology, name, &access_log, ""));
        assert_eq!(code, Some(0), "reload {i}: {stdout}{stderr}");
        let expected = if i % 2 == 0 {
            format!(
                "listener '{before}' renamed to '{name}' on {} (its socket and connections kept)",
                f.vip()
            )
        } else {
            format!("listener '{name}': access_log ")
        };
        assert!(stdout.contains(&expected), "reload {i}: {stdout}");
        // Requests go on between reloads too, not only around them.
        wait_until(
            super::namespaces::TIMEOUT,
            "requests after the reload",
            || requests.ok() >= answered + 4,
        );
    }
    let report = requests.stop();
    assert!(
        report.failed.is_empty(),
        "{} of {} requests failed: {:?}",
        report.failed.len(),
        report.ok + report.failed.len() as u64,
        report.failed
    );
    assert!(report.ok >= 200, "{report:?}");
    // The keep-alive connection was never closed under the client: its socket stayed.
    assert_eq!(report.retried, 0, "{report:?}");
    // The access log took lines while it was on, under the name the listener had then.
    let lines = std::fs::read_to_string(&log).unwrap();
    assert!(
        lines.lines().count() > 10
            && lines
                .lines()
                .all(|l| l.contains(" www ") || l.contains(" web ")),
        "{lines}"
    );
    assert_eq!(
        f.http_listeners(),
        [(name.to_string(), "http".to_string(), u64::from(PORT))]
    );
    f.lb.check_running();
}

#[test]
fn a_reload_or_change_whose_listener_cannot_be_served_is_refused_and_changes_nothing() {
    let f = Fixture::start();
    let before = f.status();
    let listeners = f.http_listeners();
    let second = |port: u16, extra: &str| {
        format!(
            "[[listener]]\nname = \"second\"\naddress = \"{VIP}\"\nport = {port}\nprotocol = \"http\"\ndefault_target_group = \"www\"\n{extra}\n"
        )
    };
    // Another program listens on VIP:8081 in the lb namespace.
    let taken = f
        .topology
        .lb
        .run_in(|| std::net::TcpListener::bind((VIP, 8081)).unwrap());
    let dir = f.dir.0.display().to_string();
    let fifo = f.dir.0.join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let fifo = fifo.display().to_string();
    let cases: [(String, String); 5] = [
        (
            model(&f.topology, "web", "", &second(8081, "")),
            format!("listener 'second': cannot listen on {VIP}:8081: Address already in use"),
        ),
        (
            model(&f.topology, "web", &format!("access_log = \"{dir}\"\n"), ""),
            format!("listener 'web': cannot open access_log {dir}: "),
        ),
        (
            model(&f.topology, "web", &format!("access_log = \"{fifo}\"\n"), ""),
            format!("listener 'web': cannot open access_log {fifo}: "),
        ),
        (
            model(&f.topology, "web", "", &second(8082, &format!("access_log = \"{dir}/missing/a.log\"\n"))),
            format!("listener 'second': cannot open access_log {dir}/missing/a.log: No such file or directory"),
        ),
        (
            model(
                &f.topology,
                "web",
                "",
                &format!("[[listener]]\nname = \"secure\"\naddress = \"{VIP}\"\nport = 8443\nprotocol = \"https\"\ndefault_target_group = \"www\"\ncertificates = [{{ cert = \"{fifo}\", key = \"{fifo}\" }}]\n"),
            ),
            format!("listener 'secure' (https): cannot read the certificate file {fifo}: a FIFO; give a regular file"),
        ),
    ];
    for (model, expected) in &cases {
        let (code, stdout, stderr) = f.reload(model);
        assert_eq!(code, Some(1), "{stdout}{stderr}");
        let line = one_line(stderr.as_bytes());
        assert!(
            line.starts_with("error: reload of ") && line.contains(expected.as_str()),
            "{line}\nexpected: {expected}"
        );
        // The running listener serves as before, and nothing else listens.
        f.lb.wait_forwarding(&f.topology, PORT, "target");
        assert_eq!(f.http_listeners(), listeners);
        assert_eq!(f.status()["listeners"], before["listeners"]);
        assert_eq!(
            f.status()["targets"].as_array().map(Vec::len),
            before["targets"].as_array().map(Vec::len)
        );
        for port in [8082, 8443] {
            let refused = f
                .topology
                .client
                .ns
                .run_in(|| std::net::TcpStream::connect((VIP, port)));
            assert!(
                refused.is_err(),
                "port {port} listens after a refused reload"
            );
        }
    }
    // The API's changes too: a listener on the taken port is refused, whole.
    f.lb.write_config(&model(&f.topology, "web", "", ""));
    let vip = VIP.to_string();
    let out = f.lb.cli(&[
        "listener",
        "add",
        "second",
        "--address",
        &vip,
        "--port",
        "8081",
        "--protocol",
        "http",
        "--target-group",
        "www",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let line = one_line(&out.stderr);
    assert!(
        line.contains(&format!(
            "cannot listen on {VIP}:8081: Address already in use"
        )),
        "{line}"
    );
    assert_eq!(f.http_listeners(), listeners);
    // Once the port is free, the same change is served.
    drop(taken);
    let out = f.lb.cli(&[
        "listener",
        "add",
        "second",
        "--address",
        &vip,
        "--port",
        "8081",
        "--protocol",
        "http",
        "--target-group",
        "www",
    ]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("listener 'second' (http) added on {VIP}:8081")),
        "{stdout}"
    );
    f.lb.wait_forwarding(&f.topology, 8081, "target");
    f.lb.check_running();
}

#[test]
fn reload_and_change_answers_name_l7_changes() {
    let f = Fixture::start();
    let target = format!("{}:{TARGET_PORT}", f.topology.targets[0].link.v4);
    let out = f.lb.cli(&["target", "set-weight", "www", &target, "3"]);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "target group 'www': target {target} weight 1 -> 3"
        )),
        "{stdout}"
    );
    // The file again: the weight goes back, stickiness and an http health check come, and
    // a second http listener is added.
    let with = model(&f.topology, "web", "", "")
        .replace(
            "[[target_group]]\nname = \"www\"\n",
            "[[target_group]]\nname = \"www\"\nstickiness = { type = \"lb_cookie\", duration = 600 }\n",
        )
        .replace("health_check = { port", "health_check = { protocol = \"http\", path = \"/health\", port");
    let with = format!(
        "{with}\n[[listener]]\nname = \"alt\"\naddress = \"{VIP}\"\nport = 8088\nprotocol = \"http\"\ndefault_target_group = \"www\"\n"
    );
    let (code, stdout, stderr) = f.reload(&with);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    for expected in [
        format!("listener 'alt' (http) added on {VIP}:8088"),
        format!("target group 'www': health check tcp port {TARGET_PORT} every 200ms"),
        format!("-> http /health matcher 200 port {TARGET_PORT} every 200ms"),
        "stickiness off -> lb_cookie for 600s".to_string(),
        format!("target {target} weight 3 -> 1"),
    ] {
        assert!(stdout.contains(&expected), "{expected}\n{stdout}");
    }
    assert!(!stdout.contains("no change"), "{stdout}");
    let (code, stdout, _) = f.reload(&with);
    assert_eq!(
        (code, stdout.trim_end()),
        (Some(0), "reloaded the configuration file\n  no change")
    );
    f.lb.wait_forwarding(&f.topology, 8088, "target");
}

#[test]
fn a_reload_to_an_empty_file_is_refused_unless_asked_for() {
    let f = Fixture::start();
    // SIGHUP with a comments-only file: refused, with a line that says how to do it anyway.
    f.lb.reload("# [[listener]] commented out while editing\n");
    wait_until(
        std::time::Duration::from_secs(5),
        "the refusal's log line",
        || {
            f.lb.sluice.stderr().contains(
                "refused, running configuration kept: the file has no listeners, and applying it would remove all 1; to do that on purpose run `sluice reload --allow-empty`",
            )
        },
    );
    f.lb.wait_forwarding(&f.topology, PORT, "target");
    assert_eq!(f.http_listeners().len(), 1);
    // `sluice reload` with an empty file: one line, exit 1, still serving.
    let (code, _, stderr) = f.reload("");
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(
        one_line(stderr.as_bytes()).matches("--allow-empty").count(),
        1,
        "{stderr}"
    );
    f.lb.wait_forwarding(&f.topology, PORT, "target");
    // Asked for: every listener goes.
    let out = f.lb.cli(&["reload", "--allow-empty"]);
    assert!(out.status.success(), "{out:?}");
    assert!(f.http_listeners().is_empty());
    let vip = f.vip();
    wait_until(
        std::time::Duration::from_secs(5),
        "connections to the VIP refused",
        || {
            f.topology
                .client
                .ns
                .run_in(|| {
                    std::net::TcpStream::connect_timeout(&vip, std::time::Duration::from_secs(1))
                })
                .is_err()
        },
    );
}
