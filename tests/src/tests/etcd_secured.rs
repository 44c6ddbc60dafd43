//! A node and a secured etcd (`sluice run --store ... --store-cacert/--store-cert/--store-key/
//! --store-user/--store-password-file`): etcd serving over TLS and asking for client
//! certificates (`--client-cert-auth`), then with `auth enable`. Every wrong access (plain
//! gRPC, an unknown CA, no client certificate, one from another CA, a wrong password) is
//! refused with its reason and writes nothing; the right one seeds, serves and writes edits;
//! tokens that etcd forgets (auth disabled and enabled again) are renewed without a failed
//! edit.

use std::{
    net::Ipv4Addr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Output,
    time::{Duration, Instant},
};

use super::namespaces::{sluice_output, ApiSocket, PinDir, TIMEOUT};
use crate::{
    etcd::{Etcd, EtcdTls},
    netns::{wait_until, ChildGuard, Namespace},
    tls::{CertDir, CertFiles, Usage},
};

const PREFIX: &str = "/sluice-secured";

fn store_url() -> String {
    format!("etcd://127.0.0.1:2379{PREFIX}")
}

fn model_key() -> String {
    format!("{PREFIX}/model")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn arg(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// `sluice run --store` in `ns`, seeding from `config`, with `access` (the `--store-*`
/// flags).
fn run_command(
    ns: &Namespace,
    config: &Path,
    socket: &ApiSocket,
    pin_dir: &PinDir,
    keys: &Path,
    access: &[&str],
) -> std::process::Command {
    let mut cmd = ns.command(crate::netns::sluice_binary());
    cmd.args(["run", "--store", &store_url(), "--config", arg(config)])
        .args(["--socket", socket.arg(), "--pin-dir", pin_dir.arg()])
        .args(["--metrics-address", "off", "--node-name", "node1"])
        .args(["--stickiness-keys", arg(keys)])
        .args(access)
        .env_remove("RUST_LOG");
    cmd
}

/// A node that must refuse to start: its output, and how long it took.
fn refused(ns: &Namespace, config: &Path, keys: &Path, access: &[&str]) -> (String, Duration) {
    let socket = ApiSocket::new();
    let pin_dir = PinDir::new();
    let started = Instant::now();
    let out = run_command(ns, config, &socket, &pin_dir, keys, access)
        .output()
        .unwrap();
    assert!(!out.status.success(), "started: {}", text(&out));
    (text(&out), started.elapsed())
}

struct Node {
    child: ChildGuard,
    socket: ApiSocket,
    _pin_dir: PinDir,
}

impl Node {
    fn start(ns: &Namespace, config: &Path, keys: &Path, access: &[&str]) -> Node {
        let socket = ApiSocket::new();
        let pin_dir = PinDir::new();
        let child = ns.spawn(run_command(ns, config, &socket, &pin_dir, keys, access));
        let node = Node {
            child,
            socket,
            _pin_dir: pin_dir,
        };
        wait_until(TIMEOUT, "the node to apply the store's model", || {
            if let Some(status) = node.child.try_status() {
                panic!("sluice exited ({status}): {}", node.child.stderr());
            }
            node.applied().is_some()
        });
        node
    }

    /// `sluice status --json`'s store part, once the node answers.
    fn store_status(&self) -> Option<serde_json::Value> {
        let out = sluice_output(&["status", "--json", "--socket", self.socket.arg()]);
        if !out.status.success() {
            return None;
        }
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        Some(status["store"].clone())
    }

    fn applied(&self) -> Option<i64> {
        self.store_status()?["applied_revision"].as_i64()
    }

    /// `sluice target add web 127.0.0.1:PORT` through this node: written to the store.
    fn add_target(&self, port: u16) -> Output {
        sluice_output(&[
            "target",
            "add",
            "web",
            &format!("127.0.0.1:{port}"),
            "--socket",
            self.socket.arg(),
        ])
    }

    fn stop(mut self) {
        self.child.stop(libc::SIGTERM, Duration::from_secs(20));
    }
}

struct Pki {
    dir: CertDir,
    ca: CertFiles,
    other_ca: CertFiles,
    node: CertFiles,
    /// The node's next certificate, of the same CA, with another name.
    renewed: CertFiles,
    stranger: CertFiles,
    tls: EtcdTls,
}

impl Pki {
    fn new() -> Pki {
        let dir = CertDir::new();
        let ca = dir.ca("ca");
        let other_ca = dir.ca("other-ca");
        let server = dir.issued(&ca, "etcd", "etcd", &["127.0.0.1"], Usage::Server);
        let root = dir.issued(&ca, "root", "root", &[], Usage::Client);
        let node = dir.issued(&ca, "node1", "node1", &[], Usage::Client);
        let renewed = dir.issued(&ca, "node1-renewed", "node1-renewed", &[], Usage::Client);
        // The same name, another issuer.
        let stranger = dir.issued(&other_ca, "stranger", "node1", &[], Usage::Client);
        let tls = EtcdTls {
            ca: ca.files.cert.clone(),
            server,
            etcdctl: root,
        };
        Pki {
            ca: ca.files,
            other_ca: other_ca.files,
            node,
            renewed,
            stranger,
            tls,
            dir,
        }
    }

    fn write(&self, name: &str, contents: &str, mode: u32) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }
}

/// etcd over TLS with `--client-cert-auth` in its own namespace, and a model to seed it with.
struct Secured {
    ns: Namespace,
    pki: Pki,
    etcd: Etcd,
    config: PathBuf,
    keys: PathBuf,
}

impl Secured {
    fn start(name: &str) -> Secured {
        crate::netns::require_root();
        let ns = Namespace::new(name);
        let pki = Pki::new();
        let etcd = Etcd::start_with(&ns, Ipv4Addr::LOCALHOST, Some(pki.tls.clone()), &[]);
        let config = pki.write(
            "model.toml",
            "[[listener]]\nname = \"web\"\naddress = \"127.0.0.1\"\nport = 8080\nprotocol = \"http\"\ndefault_target_group = \"web\"\n\n\
             [[target_group]]\nname = \"web\"\ntargets = [{ address = \"127.0.0.1\", port = 9000 }]\n",
            0o644,
        );
        let keys = pki.dir.path().join("stickiness.keys");
        Secured {
            ns,
            pki,
            etcd,
            config,
            keys,
        }
    }
}

fn etcdctl_ok(etcd: &Etcd, ns: &Namespace, args: &[&str]) {
    let out = etcd.etcdctl(ns, args);
    assert!(out.status.success(), "etcdctl {args:?}: {}", text(&out));
}

/// etcd's root user, and the role `sluice` that may read and write the prefix.
fn add_role(etcd: &Etcd, ns: &Namespace) {
    etcdctl_ok(etcd, ns, &["user", "add", "root:rootpw"]);
    etcdctl_ok(etcd, ns, &["role", "add", "sluice"]);
    etcdctl_ok(
        etcd,
        ns,
        &[
            "role",
            "grant-permission",
            "sluice",
            "--prefix=true",
            "readwrite",
            &format!("{PREFIX}/"),
        ],
    );
}

/// A user of the role `sluice`.
fn add_user(etcd: &Etcd, ns: &Namespace, name: &str, password: &str) {
    etcdctl_ok(etcd, ns, &["user", "add", &format!("{name}:{password}")]);
    etcdctl_ok(etcd, ns, &["user", "grant-role", name, "sluice"]);
}

/// Replaces `path` with `contents` as a renewal tool does: a new file renamed over it.
fn renew_file(path: &Path, contents: &[u8], mode: u32) {
    let next = path.with_extension("next");
    std::fs::write(&next, contents).unwrap();
    std::fs::set_permissions(&next, std::fs::Permissions::from_mode(mode)).unwrap();
    std::fs::rename(&next, path).unwrap();
}

#[test]
fn a_node_reaches_an_etcd_that_asks_for_tls_client_certificates_and_a_user() {
    let Secured {
        ns,
        pki,
        etcd,
        config,
        keys,
    } = Secured::start("etcd-secured");
    let ca = arg(&pki.ca.cert);
    let (node_cert, node_key) = (arg(&pki.node.cert), arg(&pki.node.key));

    // Wrong access, each refused with its reason, nothing written. They wait out the start's
    // patience (10 s) at once, in parallel.
    let cases: Vec<(&str, Vec<&str>, &str)> = vec![
        ("plain gRPC to a TLS port", vec![], "cannot be reached"),
        (
            "a CA that did not sign etcd's certificate",
            vec![
                "--store-cacert",
                arg(&pki.other_ca.cert),
                "--store-cert",
                node_cert,
                "--store-key",
                node_key,
            ],
            "UnknownIssuer",
        ),
        (
            "no client certificate",
            vec!["--store-cacert", ca],
            "cannot be reached",
        ),
        (
            "a client certificate of another CA",
            vec![
                "--store-cacert",
                ca,
                "--store-cert",
                arg(&pki.stranger.cert),
                "--store-key",
                arg(&pki.stranger.key),
            ],
            "cannot be reached",
        ),
    ];
    std::thread::scope(|scope| {
        let runs: Vec<_> = cases
            .iter()
            .map(|(case, access, _)| {
                let (ns, config, keys) = (&ns, &config, &keys);
                (
                    *case,
                    scope.spawn(move || refused(ns, config, keys, access)),
                )
            })
            .collect();
        for ((case, run), (_, _, reason)) in runs.into_iter().zip(&cases) {
            let (said, took) = run.join().unwrap();
            println!("{case}: refused in {took:?}: {said}");
            assert!(
                said.contains("the store etcd://127.0.0.1:2379/sluice-secured cannot be reached")
                    && said.contains(reason),
                "{case}: {said}"
            );
            assert!(took < Duration::from_secs(30), "{case}: took {took:?}");
        }
    });
    assert_eq!(
        etcd.revision(&ns, &model_key()),
        None,
        "nothing was written"
    );

    // Bad files are refused before anything is tried.
    let open_password = pki.write("open-password", "s3cret\n", 0o644);
    let (said, _) = refused(
        &ns,
        &config,
        &keys,
        &[
            "--store-user",
            "sluice",
            "--store-password-file",
            arg(&open_password),
        ],
    );
    assert!(
        said.contains("--store-password-file: ")
            && said.contains("may be read by others (mode 644)"),
        "{said}"
    );
    let (said, _) = refused(
        &ns,
        &config,
        &keys,
        &[
            "--store-cacert",
            ca,
            "--store-cert",
            node_cert,
            "--store-key",
            arg(&pki.stranger.key),
        ],
    );
    assert!(
        said.contains("does not belong to the certificate"),
        "{said}"
    );

    // The right CA and client certificate: seeds the store, serves, writes edits.
    let cert_access = [
        "--store-cacert",
        ca,
        "--store-cert",
        node_cert,
        "--store-key",
        node_key,
    ];
    let node = Node::start(&ns, &config, &keys, &cert_access);
    let seeded = etcd
        .revision(&ns, &model_key())
        .expect("the model was seeded");
    let out = node.add_target(9001);
    assert!(out.status.success(), "{}", text(&out));
    let edited = etcd.revision(&ns, &model_key()).unwrap();
    assert!(edited > seeded);
    assert!(etcd.value(&ns, &model_key()).unwrap().contains("9001"));
    wait_until(TIMEOUT, "the node to apply its edit", || {
        node.applied() >= Some(edited)
    });
    node.stop();

    // etcd's users: a role with read and write on the prefix only.
    add_role(&etcd, &ns);
    add_user(&etcd, &ns, "sluice", "s3cret");
    etcdctl_ok(&etcd, &ns, &["auth", "enable"]);

    // A wrong password is refused at once (no waiting: trying again cannot help).
    let as_user = |password_file: &Path| -> Vec<String> {
        let mut access: Vec<String> = cert_access.iter().map(|a| a.to_string()).collect();
        access.extend(
            [
                "--store-user",
                "sluice",
                "--store-password-file",
                arg(password_file),
            ]
            .map(String::from),
        );
        access
    };
    let wrong = as_user(&pki.write("wrong-password", "guess\n", 0o600));
    let wrong: Vec<&str> = wrong.iter().map(String::as_str).collect();
    let (said, took) = refused(&ns, &config, &keys, &wrong);
    assert!(
        said.contains("the store etcd://127.0.0.1:2379/sluice-secured refused this node")
            && said.contains("authentication failed")
            && said.contains("check --store-user and --store-password-file"),
        "{said}"
    );
    assert!(took < Duration::from_secs(8), "took {took:?}");

    // The right one: serves, and keeps writing after etcd forgot every token (auth disabled
    // and enabled again), asking for a new one.
    let right = as_user(&pki.write("password", "s3cret\n", 0o600));
    let right: Vec<&str> = right.iter().map(String::as_str).collect();
    let node = Node::start(&ns, &config, &keys, &right);
    let mut failed = Vec::new();
    for (round, port) in (9002..9005).enumerate() {
        if round > 0 {
            etcdctl_ok(&etcd, &ns, &["auth", "disable"]);
            etcdctl_ok(&etcd, &ns, &["auth", "enable"]);
        }
        let out = node.add_target(port);
        if !out.status.success() {
            failed.push(text(&out));
        }
    }
    assert!(failed.is_empty(), "edits refused: {failed:?}");
    let last = etcd.revision(&ns, &model_key()).unwrap();
    assert!(etcd.value(&ns, &model_key()).unwrap().contains("9004"));
    // Its report in the store (written under its lease, with a renewed token) says so too.
    wait_until(
        TIMEOUT,
        "the node to apply its edits and report them",
        || {
            node.store_status().is_some_and(|store| {
                store["reachable"] == true
                    && store["applied_revision"].as_i64() >= Some(last)
                    && store["nodes"]["node1"]["applied_revision"].as_i64() >= Some(last)
            })
        },
    );
    node.stop();
}

/// An edit through `node` after a renewal: written, applied and reported by the node.
fn edit_goes_on(etcd: &Etcd, ns: &Namespace, node: Node, port: u16) {
    let out = node.add_target(port);
    assert!(out.status.success(), "after the renewal: {}", text(&out));
    let written = etcd.revision(ns, &model_key()).unwrap();
    assert!(etcd
        .value(ns, &model_key())
        .unwrap()
        .contains(&port.to_string()));
    wait_until(TIMEOUT, "the node to apply and report its edit", || {
        node.store_status().is_some_and(|store| {
            store["reachable"] == true
                && store["applied_revision"].as_i64() >= Some(written)
                && store["nodes"]["node1"]["applied_revision"].as_i64() >= Some(written)
                // The renewed files are the ones in use: nothing to report.
                && store["credentials_not_used"].is_null()
        })
    });
    node.stop();
}

/// Certificates and passwords are rotated in place on a running node: it reads its files again,
/// reaches the store with the new ones as soon as the store takes them, and keeps serving and
/// writing edits; the old certificate's user and the old password are then refused by etcd,
/// so an edit that succeeds afterwards shows the new ones in use.
#[test]
fn credentials_renewed_in_place_are_taken_up_without_a_restart() {
    let Secured {
        ns,
        pki,
        etcd,
        config,
        keys,
    } = Secured::start("etcd-rotate");
    // With auth on, a client without a user is the user its certificate names.
    add_role(&etcd, &ns);
    add_user(&etcd, &ns, "node1", "unused1");
    add_user(&etcd, &ns, "node1-renewed", "unused2");
    add_user(&etcd, &ns, "sluice", "first");
    etcdctl_ok(&etcd, &ns, &["auth", "enable"]);

    // The files the node is given, renewed in place below.
    let read = |path: &Path| std::fs::read(path).unwrap();
    let cert = pki.write(
        "live.pem",
        &String::from_utf8(read(&pki.node.cert)).unwrap(),
        0o644,
    );
    let key = pki.write(
        "live.key",
        &String::from_utf8(read(&pki.node.key)).unwrap(),
        0o600,
    );
    let password = pki.write("live-password", "first\n", 0o600);
    let cert_access = [
        "--store-cacert",
        arg(&pki.ca.cert),
        "--store-cert",
        arg(&cert),
        "--store-key",
        arg(&key),
    ];
    let taken_up = "credential files changed: etcd://127.0.0.1:2379/sluice-secured is reached with them from now on";

    // A certificate renewed (key first, then certificate, as two renames: the node meets a
    // key that is not its certificate's in between and keeps the pair it has).
    let node = Node::start(&ns, &config, &keys, &cert_access);
    let out = node.add_target(9001);
    assert!(out.status.success(), "{}", text(&out));
    renew_file(&key, &read(&pki.renewed.key), 0o600);
    renew_file(&cert, &read(&pki.renewed.cert), 0o644);
    wait_until(
        TIMEOUT,
        "the node to take up its renewed certificate",
        || node.child.stderr().contains(taken_up),
    );
    etcdctl_ok(&etcd, &ns, &["user", "delete", "node1"]);
    edit_goes_on(&etcd, &ns, node, 9002);

    // A password changed in etcd, then in the file: refused in between, then taken up.
    let mut access: Vec<&str> = cert_access.to_vec();
    access.extend([
        "--store-user",
        "sluice",
        "--store-password-file",
        arg(&password),
    ]);
    let node = Node::start(&ns, &config, &keys, &access);
    let out = node.add_target(9003);
    assert!(out.status.success(), "{}", text(&out));
    etcdctl_ok(&etcd, &ns, &["user", "delete", "sluice"]);
    add_user(&etcd, &ns, "sluice", "second");
    renew_file(&password, b"second\n", 0o600);
    wait_until(TIMEOUT, "the node to take up its renewed password", || {
        node.child.stderr().contains(taken_up)
    });
    edit_goes_on(&etcd, &ns, node, 9004);
}
