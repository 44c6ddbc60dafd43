//! A compose-style model: an http listener on every address (`0.0.0.0:80`), targets named
//! `app1:8080` and `app2:8080`, `sluice run` without `--iface`. The names come from a hosts
//! file of the test's own, bind-mounted over `/etc/hosts` in a mount namespace of the
//! daemon's alone (the host's `/etc/hosts` is never touched); the test edits that file while
//! the daemon runs and checks that traffic follows.

use std::{
    ffi::CString,
    io,
    net::{IpAddr, SocketAddr},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::Command,
};

use super::namespaces::{ApiSocket, PinDir, TIMEOUT};
use crate::{
    http_servers::L7Server,
    netns::{sluice_binary, unique_name, wait_until, ChildGuard, LbTopology},
    servers::http_get,
};

/// A file removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(what: &str, text: &str) -> TempFile {
        let path = std::env::temp_dir().join(unique_name(what));
        std::fs::write(&path, text).unwrap();
        TempFile(path)
    }

    /// Rewrites the file in place: the same inode, so a bind mount of it sees the change.
    fn rewrite(&self, text: &str) {
        std::fs::write(&self.0, text).unwrap();
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn hosts(entries: &[(IpAddr, &str)]) -> String {
    let mut text = String::from("127.0.0.1 localhost\n");
    for (address, name) in entries {
        text.push_str(&format!("{address} {name}\n"));
    }
    text
}

/// Makes `cmd`'s process see `hosts` as `/etc/hosts`: a mount namespace of its own, with
/// mounts kept from propagating back, and the file bind-mounted over `/etc/hosts` there.
fn with_hosts_file(cmd: &mut Command, hosts: &Path) {
    let source = CString::new(hosts.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: only async-signal-safe syscalls on strings made before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::unshare(libc::CLONE_NEWNS) != 0
                || libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
                || libc::mount(
                    source.as_ptr(),
                    c"/etc/hosts".as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

const MODEL: &str = r#"
[[listener]]
name = "web"
address = "0.0.0.0"
port = 80
protocol = "http"
default_target_group = "apps"

[[target_group]]
name = "apps"
deregistration_delay = 0
health_check = { protocol = "http", path = "/health", interval = "200ms", timeout = "150ms", healthy_threshold = 2, unhealthy_threshold = 2 }
targets = [ { address = "app1:8080" }, { address = "app2:8080" } ]

[resolver]
refresh = "1s"
"#;

/// The bodies (first word: the server's name) of `n` requests to `addr` from the client.
fn answers(topology: &LbTopology, addr: SocketAddr, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            http_get(&topology.client.ns, addr, "/")
                .map(|body| body.trim().to_string())
                .unwrap_or_else(|e| format!("error: {e}"))
        })
        .collect()
}

fn check_running(sluice: &ChildGuard) {
    if let Some(status) = sluice.try_status() {
        panic!("sluice exited ({status}): {}", sluice.stderr());
    }
}

#[test]
fn compose_style_host_names_resolve_from_the_hosts_file_and_follow_changes() {
    crate::netns::require_root();
    let topology = LbTopology::new(3);
    let at = |i: usize| SocketAddr::new(topology.targets[i].link.v4.into(), 8080);
    let app1 = L7Server::start(&topology.targets[0].ns, at(0), "app1");
    let app2_old = L7Server::start(&topology.targets[1].ns, at(1), "app2-old");
    let app2_new = L7Server::start(&topology.targets[2].ns, at(2), "app2-new");
    let t = |i: usize| IpAddr::from(topology.targets[i].link.v4);
    let hosts_file = TempFile::new("hosts", &hosts(&[(t(0), "app1"), (t(1), "app2")]));
    let config = TempFile::new("compose.toml", MODEL);
    let pin_dir = PinDir::new();
    let socket = ApiSocket::new();

    // No --iface: the model has only an http listener.
    let mut cmd = topology.lb.command(sluice_binary());
    cmd.args(["run", "--pin-dir", pin_dir.arg(), "--socket", socket.arg()])
        .args(["--metrics-address", "off", "--config"])
        .arg(&config.0)
        .env("RUST_LOG", "info");
    with_hosts_file(&mut cmd, &hosts_file.0);
    let sluice = topology.lb.spawn(cmd);
    wait_until(TIMEOUT, "both named targets healthy", || {
        check_running(&sluice);
        sluice.stderr().matches("-> healthy").count() >= 2
    });
    assert!(
        sluice
            .stderr()
            .contains("no --iface: serving http/https listeners only"),
        "{}",
        sluice.stderr()
    );

    // The listener on 0.0.0.0 answers on the lb's own client-side address.
    let lb = SocketAddr::new(topology.lb_client_side.v4.into(), 80);
    let seen = answers(&topology, lb, 20);
    for name in ["app1", "app2-old"] {
        assert!(seen.iter().any(|b| b == name), "{name} not among {seen:?}");
    }
    assert!(
        seen.iter().all(|b| b == "app1" || b == "app2-old"),
        "{seen:?}"
    );

    // app2 moves: the next refresh sends its share to the new address.
    hosts_file.rewrite(&hosts(&[(t(0), "app1"), (t(2), "app2")]));
    wait_until(TIMEOUT, "app2's new address to be used", || {
        check_running(&sluice);
        sluice
            .stderr()
            .contains(&format!("app2 now resolves to {} (was {})", t(2), t(1)))
    });
    wait_until(TIMEOUT, "the new app2 to answer", || {
        check_running(&sluice);
        answers(&topology, lb, 4).iter().any(|b| b == "app2-new")
    });
    let old_requests = app2_old.requests();
    let seen = answers(&topology, lb, 20);
    assert!(
        seen.iter().all(|b| b == "app1" || b == "app2-new"),
        "{seen:?}"
    );
    assert_eq!(
        app2_old.requests(),
        old_requests,
        "the old address got requests"
    );
    assert!(app2_new.requests() > 0);

    // app1 stops resolving: it keeps its address, and the log says so.
    hosts_file.rewrite(&hosts(&[(t(2), "app2")]));
    wait_until(TIMEOUT, "the warning for app1", || {
        check_running(&sluice);
        let log = sluice.stderr();
        log.contains("app1 does not resolve (")
            && log.contains(&format!("its targets keep their last address {}", t(0)))
    });
    let before = app1.requests();
    let seen = answers(&topology, lb, 20);
    assert!(
        seen.iter().all(|b| b == "app1" || b == "app2-new"),
        "{seen:?}"
    );
    assert!(app1.requests() > before, "app1 was dropped: {seen:?}");

    // A reload keeps app1's last address too.
    sluice.signal(libc::SIGHUP);
    wait_until(TIMEOUT, "the reload", || {
        check_running(&sluice);
        sluice.stderr().contains("reloaded ")
    });
    let before = app1.requests();
    answers(&topology, lb, 10);
    assert!(app1.requests() > before, "app1 was dropped by the reload");
}

#[test]
fn a_name_that_does_not_resolve_at_start_is_refused_with_its_line() {
    crate::netns::require_root();
    let topology = LbTopology::new(1);
    let hosts_file = TempFile::new("hosts", &hosts(&[]));
    let config = TempFile::new("compose.toml", MODEL);
    let pin_dir = PinDir::new();
    let socket = ApiSocket::new();
    let mut cmd = topology.lb.command(sluice_binary());
    cmd.args(["run", "--pin-dir", pin_dir.arg(), "--socket", socket.arg()])
        .args(["--metrics-address", "off", "--config"])
        .arg(&config.0);
    with_hosts_file(&mut cmd, &hosts_file.0);
    let mut sluice = topology.lb.spawn(cmd);
    let status = sluice.wait_timeout(TIMEOUT);
    assert_eq!(status.code(), Some(1), "{}", sluice.stderr());
    let expected = format!(
        "{}, line 13: target group 'apps': target app1 does not resolve (",
        config.0.display()
    );
    assert!(sluice.stderr().contains(&expected), "{}", sluice.stderr());
}

#[test]
fn a_tcp_listener_without_iface_is_refused_with_the_fix() {
    let config = TempFile::new(
        "l4.toml",
        "[[listener]]\nname = \"vip\"\naddress = \"192.0.2.10\"\nport = 80\nprotocol = \"tcp\"\ndefault_target_group = \"web\"\n\n[[target_group]]\nname = \"web\"\ntargets = [ { address = \"10.0.0.5\" } ]\n",
    );
    let out = Command::new(sluice_binary())
        .args(["run", "--socket", "/nonexistent/sluice.sock", "--config"])
        .arg(&config.0)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("listener(s) 'vip' (tcp) are served by XDP, which needs the interface(s) their traffic arrives on: add --iface IF"),
        "{stderr}"
    );
}
