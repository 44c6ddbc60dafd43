//! TLS. First the test helpers ([`crate::tls`]) against sluice's own TLS configuration
//! (`sluice::proxy::tls::server_config`) served by a small blocking rustls server, in a
//! namespace of its own: curl trusts the self-signed certificates, sees the certificate chosen
//! by SNI, and `curl --http2` negotiates h2 through ALPN. Then the same through an https
//! listener of `sluice run` (issue 5's acceptance: two certificates by SNI, HTTP/2 over TLS).

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

use sluice::proxy::tls::{describe, server_config, CertificateFiles};

use crate::{
    netns::Namespace,
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

/// An https listener through sluice: two certificates chosen by SNI, HTTP/2 via ALPN
/// (`curl --http2`) and HTTP/1.1, forwarded to plain HTTP targets.
#[test]
fn https_listener_chooses_certificates_by_sni_and_speaks_http2() {
    use super::{
        l7_support::{all_targets, fast_health_check, L7Sluice, VIP},
        namespaces::TIMEOUT as START_TIMEOUT,
    };
    use crate::{
        netns::{wait_until, LbTopology},
        servers::HttpServer,
    };

    let topology = LbTopology::new(2);
    let _servers: Vec<HttpServer> = topology
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
        .collect();
    let certs = CertDir::new();
    let a = certs.self_signed("a", &["a.example.com"]);
    let b = certs.self_signed("b", &["*.b.example.com"]);
    let trusted = certs.bundle("ca.pem", &[&a, &b]);
    let model = format!(
        "[[listener]]\nname = \"secure\"\naddress = \"{VIP}\"\nport = 443\nprotocol = \"https\"\ndefault_target_group = \"web\"\ncertificates = [{}, {}]\n\n\
         [[target_group]]\nname = \"web\"\nport = 3000\n{}targets = [{}]\n",
        a.toml(),
        b.toml(),
        fast_health_check(3000),
        all_targets(&topology),
    );
    let lb = L7Sluice::start(&topology, &model, 2);
    let vip = SocketAddr::new(VIP.into(), 443);
    let curl = |host: &str, version| {
        curl_https(
            &topology.client.ns,
            host,
            vip,
            "/",
            &trusted,
            version,
            TIMEOUT,
        )
    };
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
