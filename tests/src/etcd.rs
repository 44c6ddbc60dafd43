//! etcd 3.4 (Debian's `etcd-server`) in a test namespace: one member with a fresh data
//! directory, its client port on an address of that namespace, ready when `etcdctl` answers;
//! killed and its directory removed on drop. `etcdctl` (Debian's `etcd-client`) writes into
//! it by hand, as an operator would. It serves over TLS with client certificates when asked
//! ([`EtcdTls`]).

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    process::{Command, Output, Stdio},
    time::Duration,
};

use crate::{
    netns::{wait_until, ChildGuard, Namespace},
    tls::CertFiles,
};

pub const ETCD: &str = "/usr/bin/etcd";
pub const ETCDCTL: &str = "/usr/bin/etcdctl";
/// etcd's client port.
pub const PORT: u16 = 2379;
/// Bounds etcd's start-up on a busy machine.
const READY: Duration = Duration::from_secs(20);

pub struct Etcd {
    /// The client address (`10.112.1.250:2379`).
    pub endpoint: String,
    dir: PathBuf,
    ns_name: String,
    child: Option<ChildGuard>,
    tls: Option<EtcdTls>,
    extra: Vec<String>,
}

/// An etcd that serves its clients over TLS and asks them for certificates
/// (`--client-cert-auth`): its certificate and CA, and the client certificate `etcdctl` uses.
#[derive(Clone, Debug)]
pub struct EtcdTls {
    pub ca: PathBuf,
    pub server: CertFiles,
    pub etcdctl: CertFiles,
}

impl Etcd {
    /// Starts etcd in `ns` (which holds `ip`), with a data directory named after `ns`.
    pub fn start(ns: &Namespace, ip: Ipv4Addr) -> Etcd {
        Etcd::start_with(ns, ip, None, &[])
    }

    /// [`Etcd::start`], over TLS if `tls` says so, with `extra` arguments for etcd.
    pub fn start_with(ns: &Namespace, ip: Ipv4Addr, tls: Option<EtcdTls>, extra: &[&str]) -> Etcd {
        let dir = std::env::temp_dir().join(format!("{}-etcd", ns.name()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut etcd = Etcd {
            endpoint: format!("{ip}:{PORT}"),
            dir,
            ns_name: ns.name().to_string(),
            child: None,
            tls,
            extra: extra.iter().map(|a| a.to_string()).collect(),
        };
        etcd.restart(ns);
        etcd
    }

    /// (Re)starts etcd on the same data: what it held before is there again.
    pub fn restart(&mut self, ns: &Namespace) {
        assert!(self.child.is_none(), "etcd runs already");
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://{}", self.endpoint);
        let mut cmd = ns.command(ETCD);
        if let Some(tls) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&tls.server.cert)
                .arg("--key-file")
                .arg(&tls.server.key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        cmd.args(&self.extra);
        cmd.args(["--name", "test", "--data-dir"])
            .arg(self.dir.join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            // The peer port stays on the namespace's loopback: a cluster of one.
            .args(["--listen-peer-urls", "http://127.0.0.1:2380"])
            .args(["--initial-advertise-peer-urls", "http://127.0.0.1:2380"])
            .args(["--initial-cluster", "test=http://127.0.0.1:2380"])
            .args(["--log-level", "warn", "--logger", "zap"])
            .stdin(Stdio::null());
        let child = ns.spawn(cmd);
        wait_until(READY, "etcd to answer", || {
            if let Some(status) = child.try_status() {
                panic!("etcd exited ({status}): {}", child.stderr());
            }
            self.etcdctl(ns, &["endpoint", "health"]).status.success()
        });
        self.child = Some(child);
    }

    /// Kills etcd (SIGKILL), as a crash does; its data stays for [`Etcd::restart`].
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("etcd runs");
        child.stop(libc::SIGKILL, Duration::from_secs(10));
    }

    /// `etcdctl ARGS` against this etcd, run in `ns`.
    pub fn etcdctl(&self, ns: &Namespace, args: &[&str]) -> Output {
        let mut cmd: Command = ns.command(ETCDCTL);
        cmd.env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.endpoint, "--command-timeout=3s"]);
        if let Some(tls) = &self.tls {
            cmd.arg("--cacert")
                .arg(&tls.ca)
                .arg("--cert")
                .arg(&tls.etcdctl.cert)
                .arg("--key")
                .arg(&tls.etcdctl.key);
        }
        cmd.args(args).stdin(Stdio::null());
        cmd.output().expect("running etcdctl")
    }

    /// Puts `value` at `key` (etcdctl reads a value that starts with `-` as an option: `--`).
    pub fn put(&self, ns: &Namespace, key: &str, value: &str) {
        let out = self.etcdctl(ns, &["put", "--", key, value]);
        assert!(out.status.success(), "etcdctl put {key}: {out:?}");
    }

    /// The mod revision of `key`, if it exists.
    pub fn revision(&self, ns: &Namespace, key: &str) -> Option<i64> {
        let out = self.etcdctl(ns, &["get", key, "-w", "json"]);
        assert!(out.status.success(), "etcdctl get {key}: {out:?}");
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        json["kvs"].get(0)?["mod_revision"].as_i64()
    }

    /// The value at `key`, if it exists.
    pub fn value(&self, ns: &Namespace, key: &str) -> Option<String> {
        let out = self.etcdctl(ns, &["get", key, "--print-value-only"]);
        assert!(out.status.success(), "etcdctl get {key}: {out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        // etcdctl ends the value with a newline of its own.
        (!text.is_empty()).then(|| text.strip_suffix('\n').unwrap_or(&text).to_string())
    }

    pub fn ns_name(&self) -> &str {
        &self.ns_name
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.child.take();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
