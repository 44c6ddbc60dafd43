//! TLS. First the test helpers ([`crate::tls`]) against sluice's own TLS configuration
//! (`sluice::proxy::tls::server_config`) served by a small blocking rustls server, in a
//! namespace of its own: curl trusts the self-signed certificates, sees the certificate chosen
//! by SNI, and `curl --http2` negotiates h2 through ALPN. Then the same through an https
//! listener of `sluice run` (issue 5's acceptance: two certificates by SNI, HTTP/2 over TLS),
//! and certificates that cannot be served: refused at start and on reload.

use std::{
    io::{self, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use sluice::{
    model::CertificateFiles,
    proxy::tls::{describe, server_config},
};

use super::{
    l7_support::{all_targets, fast_health_check, L7Sluice, VIP},
    namespaces::{one_line, ApiSocket, PinDir, TIMEOUT as START_TIMEOUT},
};
use crate::{
    netns::{require_root, sluice_binary, veth, wait_until, LbTopology, Namespace},
    servers::HttpServer,
    tls::{curl_https, CertDir, CertFiles, HttpVersion},
};

const TIMEOUT: Duration = Duration::from_secs(10);

/// What the server saw of one handshake: SNI and ALPN.
type Seen = Arc<Mutex<Vec<(Option<String>, Option<Vec<u8>>)>>>;

/// Serves HTTP/1.1 over TLS with sluice's configuration, answering `SNI PROTOCOL CIPHER`;
/// an h2 connection is closed after the handshake (this server speaks no HTTP/2).
struct TlsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    seen: Seen,
}

impl TlsServer {
    fn start(ns: &Namespace, certs: &[&CertFiles]) -> TlsServer {
        let files: Vec<CertificateFiles> = certs
            .iter()
            .map(|c| CertificateFiles {
                cert: c.cert.clone(),
                key: c.key.clone(),
            })
            .collect();
        let config = server_config(&files).unwrap();
        let listener = ns
            .run_in(|| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
            .unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Seen::default();
        let (thread_stop, thread_seen) = (Arc::clone(&stop), Arc::clone(&seen));
        let thread = thread::spawn(move || {
            while !thread_stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        if let Err(e) = serve(stream, Arc::clone(&config), &thread_seen) {
                            eprintln!("tls test server: {e}");
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(10))
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            }
        });
        TlsServer {
            addr,
            stop,
            thread: Some(thread),
            seen,
        }
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(mut tcp: TcpStream, config: Arc<rustls::ServerConfig>, seen: &Seen) -> Result<(), String> {
    tcp.set_nonblocking(false).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    let mut conn = rustls::ServerConnection::new(config).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + TIMEOUT;
    while conn.is_handshaking() {
        if Instant::now() > deadline {
            return Err("handshake timed out".into());
        }
        conn.complete_io(&mut tcp).map_err(|e| e.to_string())?;
    }
    let sni = conn.server_name().map(str::to_string);
    let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
    seen.lock().unwrap().push((sni.clone(), alpn.clone()));
    if alpn.as_deref() == Some(b"h2") {
        return Ok(());
    }
    let (protocol, cipher) = describe(&conn);
    let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tls.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 || head.len() > 16 * 1024 {
            return Err("no complete request head".into());
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let body = format!("{} {protocol} {cipher}\n", sni.as_deref().unwrap_or("-"));
    write!(
        tls,
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    tls.flush().map_err(|e| e.to_string())?;
    conn.send_close_notify();
    let _ = conn.complete_io(&mut tcp);
    Ok(())
}

#[test]
fn curl_sees_the_certificate_chosen_by_sni_and_negotiates_h2() {
    let ns = Namespace::new("tls");
    let certs = CertDir::new();
    let a = certs.self_signed("a", &["a.example.com"]);
    let b = certs.self_signed("b", &["*.b.example.com"]);
    let trusted = certs.bundle("ca.pem", &[&a, &b]);
    let server = TlsServer::start(&ns, &[&a, &b]);
    let curl =
        |host: &str, version| curl_https(&ns, host, server.addr, "/", &trusted, version, TIMEOUT);

    // curl checks the certificate against the name: each answer proves which one was sent.
    let answer = curl("a.example.com", HttpVersion::Http1).unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.http_version, "1.1");
    assert!(
        answer.body.starts_with("a.example.com TLSv1.3 TLS13_"),
        "{answer:?}"
    );
    let answer = curl("api.b.example.com", HttpVersion::Http1).unwrap();
    assert!(
        answer.body.starts_with("api.b.example.com TLSv1.3 "),
        "{answer:?}"
    );
    // Covered by neither: the default (first) certificate, which curl rejects for this name.
    let err = curl("other.example.org", HttpVersion::Http1).unwrap_err();
    assert!(
        err.contains("certificate") || err.contains("SSL"),
        "curl refuses the default certificate for another name: {err}"
    );

    // --http2 offers h2 first, and sluice's configuration takes it.
    let _ = curl("a.example.com", HttpVersion::Http2);
    let seen = server.seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            (
                Some("a.example.com".to_string()),
                Some(b"http/1.1".to_vec())
            ),
            (
                Some("api.b.example.com".to_string()),
                Some(b"http/1.1".to_vec())
            ),
            (
                Some("other.example.org".to_string()),
                Some(b"http/1.1".to_vec())
            ),
            (Some("a.example.com".to_string()), Some(b"h2".to_vec())),
        ]
    );
}

/// Two plain HTTP targets (port 3000) answering with their names.
fn targets(topology: &LbTopology) -> Vec<HttpServer> {
    topology
        .targets
        .iter()
        .enumerate()
        .map(|(i, t)| {
            HttpServer::start(
                &t.ns,
                SocketAddr::new(t.link.v4.into(), 3000),
                &format!("target{i}"),
            )
        })
        .collect()
}

/// An https listener `secure` on VIP:443 with `certificates` (the model's inline tables) in
/// front of every target of `topology`.
fn https_model(topology: &LbTopology, certificates: &[String]) -> String {
    format!(
        "[[listener]]\nname = \"secure\"\naddress = \"{VIP}\"\nport = 443\nprotocol = \"https\"\ndefault_target_group = \"web\"\ncertificates = [{}]\n\n\
         [[target_group]]\nname = \"web\"\nport = 3000\n{}targets = [{}]\n",
        certificates.join(", "),
        fast_health_check(3000),
        all_targets(topology),
    )
}

/// `curl https://HOST/` through the VIP from the client, trusting `trusted`.
fn curl_vip(
    topology: &LbTopology,
    host: &str,
    trusted: &std::path::Path,
    version: HttpVersion,
) -> Result<crate::tls::CurlResponse, String> {
    let vip = SocketAddr::new(VIP.into(), 443);
    curl_https(
        &topology.client.ns,
        host,
        vip,
        "/",
        trusted,
        version,
        TIMEOUT,
    )
}

/// An https listener through sluice: two certificates chosen by SNI, HTTP/2 via ALPN
/// (`curl --http2`) and HTTP/1.1, forwarded to plain HTTP targets.
#[test]
fn https_listener_chooses_certificates_by_sni_and_speaks_http2() {
    let topology = LbTopology::new(2);
    let _servers = targets(&topology);
    let certs = CertDir::new();
    let a = certs.self_signed("a", &["a.example.com"]);
    let b = certs.self_signed("b", &["*.b.example.com"]);
    let trusted = certs.bundle("ca.pem", &[&a, &b]);
    let lb = L7Sluice::start(&topology, &https_model(&topology, &[a.toml(), b.toml()]), 2);
    let curl = |host: &str, version| curl_vip(&topology, host, &trusted, version);
    wait_until(START_TIMEOUT, "the https listener to answer", || {
        lb.check_running();
        curl("a.example.com", HttpVersion::Http2).is_ok()
    });

    for host in ["a.example.com", "api.b.example.com"] {
        let answer = curl(host, HttpVersion::Http2)
            .unwrap_or_else(|e| panic!("{e}\n{}", lb.sluice.stderr()));
        assert_eq!(answer.status, 200, "{host}: {answer:?}");
        assert_eq!(answer.http_version, "2", "{host}: {answer:?}");
        assert!(answer.body.starts_with("target"), "{host}: {answer:?}");
        let answer = curl(host, HttpVersion::Http1).unwrap();
        assert_eq!(
            (answer.status, answer.http_version.as_str()),
            (200, "1.1"),
            "{host}"
        );
    }
    // Neither certificate covers this name: the default one is sent, and curl refuses it.
    assert!(curl("www.example.org", HttpVersion::Http2).is_err());
}

/// A certificate that cannot be served stops `sluice run` before anything changes: one line
/// naming the file and the fix, exit 1, nothing attached, no pins, no control socket.
#[test]
fn an_https_listener_with_a_bad_certificate_is_refused_at_start() {
    require_root();
    let lb = Namespace::new("lb");
    let peer = Namespace::new("peer");
    veth(&lb, "eth0", &peer, "eth0");
    let certs = CertDir::new();
    let a = certs.self_signed("a", &["a.example.com"]);
    let b = certs.self_signed("b", &["b.example.com"]);
    let missing = certs.path().join("missing.key");
    let cases = [
        (
            format!(
                "{{ cert = \"{}\", key = \"{}\" }}",
                a.cert.display(),
                missing.display()
            ),
            format!(
                "error: listener 'secure' (https): cannot read the key file {}: No such file or directory (os error 2); check the path and that sluice may read it",
                missing.display()
            ),
        ),
        (
            format!(
                "{{ cert = \"{}\", key = \"{}\" }}",
                a.cert.display(),
                b.key.display()
            ),
            format!(
                "error: listener 'secure' (https): the private key in {} does not belong to the certificate in {}; give the key the certificate was issued for",
                b.key.display(),
                a.cert.display()
            ),
        ),
    ];
    for (certificate, expected) in cases {
        let config = certs.path().join("sluice.toml");
        std::fs::write(
            &config,
            format!(
                "[[listener]]\nname = \"secure\"\naddress = \"{VIP}\"\nport = 443\nprotocol = \"https\"\ndefault_target_group = \"web\"\ncertificates = [{certificate}]\n\n\
                 [[target_group]]\nname = \"web\"\nport = 3000\ntargets = [{{ address = \"10.0.0.2\" }}]\n"
            ),
        )
        .unwrap();
        let pin_dir = PinDir::new();
        let socket = ApiSocket::new();
        let output = lb
            .command(sluice_binary())
            .args(["run", "--iface", "eth0", "--pin-dir", pin_dir.arg()])
            .args(["--socket", socket.arg(), "--metrics-address", "off"])
            .arg("--config")
            .arg(&config)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1));
        assert_eq!(one_line(&output.stderr), expected);
        assert_eq!(lb.xdp_attached("eth0"), None);
        assert!(!pin_dir.stats_pin().exists());
        assert!(!socket.0.exists());
    }
}

/// A reload naming a certificate that cannot be served is refused whole and the listener
/// keeps serving; a reload after certificates were renewed in place serves the new ones.
#[test]
fn a_reload_with_a_bad_certificate_is_refused_and_renewed_ones_are_taken_up() {
    let topology = LbTopology::new(2);
    let _servers = targets(&topology);
    let certs = CertDir::new();
    let a = certs.self_signed("a", &["a.example.com"]);
    let trusted = certs.bundle("ca.pem", &[&a]);
    let model = https_model(&topology, &[a.toml()]);
    let lb = L7Sluice::start(&topology, &model, 2);
    let curl = |trusted: &std::path::Path| {
        curl_vip(&topology, "a.example.com", trusted, HttpVersion::Http2)
    };
    wait_until(START_TIMEOUT, "the https listener to answer", || {
        lb.check_running();
        curl(&trusted).is_ok()
    });

    let missing = certs.path().join("missing.pem");
    let broken = https_model(
        &topology,
        &[format!(
            "{{ cert = \"{}\", key = \"{}\" }}",
            missing.display(),
            a.key.display()
        )],
    );
    lb.reload(&broken);
    let refused = format!(
        "running configuration kept: listener 'secure' (https): cannot read the certificate file {}",
        missing.display()
    );
    wait_until(START_TIMEOUT, "the reload to be refused", || {
        lb.check_running();
        lb.sluice.stderr().contains(&refused)
    });
    let answer = curl(&trusted).unwrap_or_else(|e| panic!("{e}\n{}", lb.sluice.stderr()));
    assert_eq!(answer.status, 200, "{answer:?}");
    assert!(!lb.sluice.stderr().contains("listener 'secure' removed"));

    // Renewed in place: same paths, a new certificate and key.
    let renewed = certs.self_signed("a", &["a.example.com"]);
    assert_ne!(renewed.der, a.der);
    let trusted_renewed = certs.bundle("renewed.pem", &[&renewed]);
    lb.reload(&model);
    wait_until(
        START_TIMEOUT,
        "the renewed certificate to be served",
        || {
            lb.check_running();
            curl(&trusted_renewed).is_ok()
        },
    );
    assert!(
        curl(&trusted).is_err(),
        "the old certificate is no longer sent"
    );
}
