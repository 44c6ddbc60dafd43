//! The L7 proxy under hostile and careless input, end to end: slow uploads and stalled
//! ones, Host handling per RFC 9112/9113 (no rule bypass), CONNECT and `OPTIONS *`, HTTP/1.0
//! without Host, malformed client bodies, malformed and oversized responses from a target,
//! and a target killed under a loop of POSTs.

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use super::l7_support::{L7Sluice, VIP};
use crate::{
    http_servers::L7Server,
    netns::{wait_until, ChildGuard, LbTopology},
    tls::{CertDir, CertFiles},
};

const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

fn model(topology: &LbTopology, port: u16, certificate: &str) -> String {
    let targets: Vec<String> = topology
        .targets
        .iter()
        .map(|t| format!("{{ address = \"{}\", port = {port} }}", t.link.v4))
        .collect();
    format!(
        r#"
[[listener]]
name = "web"
address = "{VIP}"
port = 80
protocol = "http"
default_target_group = "www"
idle_timeout = {idle}

[[listener.rule]]
priority = 10
host = ["internal.example.com"]
action = {{ type = "fixed_response", status = 403, body = "internal only" }}

[[listener]]
name = "secure"
address = "{VIP}"
port = 443
protocol = "https"
default_target_group = "www"
certificates = [{certificate}]

[[listener.rule]]
priority = 10
host = ["internal.example.com"]
action = {{ type = "fixed_response", status = 403, body = "internal only" }}

[[target_group]]
name = "www"
deregistration_delay = 1
targets = [{targets}]
health_check = {{ port = {port}, interval = "200ms", timeout = "150ms", healthy_threshold = 2, unhealthy_threshold = 2 }}
"#,
        idle = IDLE_TIMEOUT.as_secs(),
        targets = targets.join(", "),
    )
}

struct Hostile {
    topology: LbTopology,
    _servers: Vec<L7Server>,
    lb: L7Sluice,
    certificate: CertFiles,
    _certs: CertDir,
}

impl Hostile {
    fn start() -> Hostile {
        let topology = LbTopology::new(2);
        let any = IpAddr::from(Ipv4Addr::UNSPECIFIED);
        let servers = topology
            .targets
            .iter()
            .enumerate()
            .map(|(i, t)| L7Server::start(&t.ns, SocketAddr::new(any, 8080), &format!("target{i}")))
            .collect();
        let certs = CertDir::new();
        let certificate = certs.self_signed("a", &["public.example.com", "internal.example.com"]);
        let lb = L7Sluice::start(&topology, &model(&topology, 8080, &certificate.toml()), 2);
        Hostile {
            topology,
            _servers: servers,
            lb,
            certificate,
            _certs: certs,
        }
    }

    fn connect(&self) -> TcpStream {
        let vip = SocketAddr::new(IpAddr::from(VIP), 80);
        let stream = self
            .topology
            .client
            .ns
            .run_in(|| TcpStream::connect_timeout(&vip, Duration::from_secs(5)))
            .expect("connecting to the VIP");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream
    }

    /// Sends `request` on a new connection and reads the whole answer (the proxy closes or
    /// the read times out).
    fn exchange(&self, request: &[u8]) -> String {
        let mut stream = self.connect();
        stream
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        stream.write_all(request).unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        String::from_utf8_lossy(&answer).into_owned()
    }
}

fn status_of(answer: &str) -> &str {
    answer.split(' ').nth(1).unwrap_or("")
}

#[test]
fn an_upload_that_keeps_moving_outlives_the_idle_timeout_and_a_stalled_one_does_not() {
    let h = Hostile::start();
    // A stalled upload, beside: 2 of 10 bytes, then nothing.
    let stalled = {
        let mut stream = h.connect();
        stream
            .write_all(
                b"POST /upload HTTP/1.1\r\nHost: a.example.com\r\nContent-Length: 10\r\n\r\nab",
            )
            .unwrap();
        stream
    };
    let stalled_at = Instant::now();
    let stalled_reader = std::thread::spawn(move || {
        let mut stream = stalled;
        let mut answer = [0u8; 256];
        let n = stream.read(&mut answer).unwrap_or(0);
        (
            String::from_utf8_lossy(&answer[..n]).into_owned(),
            stalled_at.elapsed(),
        )
    });
    // 2 minutes at one byte a second, with an idle timeout of 10 s.
    const BYTES: usize = 120;
    let mut stream = h.connect();
    write!(
        stream,
        "POST /upload HTTP/1.1\r\nHost: a.example.com\r\nContent-Length: {BYTES}\r\n\r\n"
    )
    .unwrap();
    for _ in 0..BYTES {
        stream.write_all(b"x").unwrap();
        // Pacing the client, not waiting for a condition.
        std::thread::sleep(Duration::from_secs(1));
    }
    let mut answer = [0u8; 512];
    let n = stream.read(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");

    let (stalled, after) = stalled_reader.join().unwrap();
    assert!(stalled.starts_with("HTTP/1.1 504 "), "{stalled}");
    assert!(
        after >= IDLE_TIMEOUT && after < IDLE_TIMEOUT + Duration::from_secs(5),
        "the stalled upload got its 504 {after:?} after it stopped"
    );
}

#[test]
fn the_host_that_rules_match_is_the_host_the_target_gets() {
    let h = Hostile::start();
    // Absolute-form: the request target's authority wins over Host, for the rules...
    let answer = h.exchange(
        b"GET http://internal.example.com/headers HTTP/1.1\r\nHost: public.example.com\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&answer), "403", "no rule bypass: {answer}");
    // ... and for the target.
    let answer = h.exchange(
        b"GET http://public.example.com/headers HTTP/1.1\r\nHost: internal.example.com\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&answer), "200", "{answer}");
    let head = answer.to_ascii_lowercase();
    assert!(
        head.contains("\r\nhost: public.example.com\r\n"),
        "{answer}"
    );
    assert!(!head.contains("internal.example.com"), "{answer}");
    // `Connection: Host` cannot strip the Host after routing.
    let answer = h.exchange(
        b"GET /headers HTTP/1.1\r\nHost: public.example.com\r\nConnection: Host, close\r\n\r\n",
    );
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("\r\nhost: public.example.com\r\n"),
        "{answer}"
    );
    // Duplicate and invalid Hosts: 400, none reaching a target.
    for host in [
        "Host: public.example.com\r\nHost: internal.example.com",
        "Host: public.example.com.",
        "Host: public.example.com:99999",
        "Host: user@public.example.com",
        "Host: public.example.com/x",
        "Host: public.example.com, internal.example.com",
    ] {
        let request = format!("GET /headers HTTP/1.1\r\n{host}\r\nConnection: close\r\n\r\n");
        let answer = h.exchange(request.as_bytes());
        assert_eq!(status_of(&answer), "400", "{host:?}: {answer}");
    }
    // The access log shows the authority used, not the Host header.
    wait_until(
        Duration::from_secs(5),
        "the absolute-form request's log line",
        || {
            h.lb.sluice
                .stderr()
                .contains("\"GET http://public.example.com/headers HTTP/1.1\"")
        },
    );
    // HTTP/2 (over TLS, ALPN h2): :authority and host must agree.
    let status = |authority: &str, host: &str| {
        let vip = SocketAddr::new(IpAddr::from(VIP), 443);
        let tcp = h
            .topology
            .client
            .ns
            .run_in(|| TcpStream::connect_timeout(&vip, Duration::from_secs(5)))
            .unwrap();
        h2_status(tcp, &h.certificate, authority, host)
    };
    assert_eq!(status("internal.example.com", "public.example.com"), 400);
    assert_eq!(status("public.example.com", "internal.example.com"), 400);
    assert_eq!(status("internal.example.com", "internal.example.com"), 403);
    assert_eq!(status("public.example.com", "public.example.com"), 200);
}

/// One HTTP/2 request over TLS (trusting `certificate`) with this `:authority` and `host`:
/// its status.
fn h2_status(tcp: TcpStream, certificate: &CertFiles, authority: &str, host: &str) -> u16 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = h2_client(tcp, certificate, authority).await;
        let mut client = client.ready().await.unwrap();
        let request = http::Request::get(format!("https://{authority}/headers"))
            .header("host", host)
            .body(())
            .unwrap();
        let (response, _) = client.send_request(request, true).unwrap();
        let response = tokio::time::timeout(Duration::from_secs(10), response)
            .await
            .expect("an answer within 10 s")
            .unwrap();
        response.status().as_u16()
    })
}

#[test]
fn connect_options_star_http10_and_broken_bodies_get_answers_of_their_own() {
    let h = Hostile::start();
    let answer = h.exchange(b"CONNECT target0:8080 HTTP/1.1\r\nHost: target0:8080\r\n\r\n");
    assert_eq!(status_of(&answer), "405", "{answer}");
    assert!(
        answer.contains("\r\nallow: GET,") || answer.contains("\r\nAllow: GET,"),
        "{answer}"
    );
    let answer =
        h.exchange(b"OPTIONS * HTTP/1.1\r\nHost: public.example.com\r\nConnection: close\r\n\r\n");
    assert_eq!(status_of(&answer), "200", "{answer}");
    // HTTP/1.0 without Host: forwarded with the listener's address as Host.
    let answer = h.exchange(b"GET /headers HTTP/1.0\r\n\r\n");
    assert_eq!(status_of(&answer), "200", "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains(&format!("\r\nhost: {VIP}:80\r\n")),
        "{answer}"
    );
    // A request line longer than the head limit (16 KiB by default): 414, not 431.
    let long = format!(
        "GET /{} HTTP/1.1\r\nHost: public.example.com\r\n\r\n",
        "a".repeat(20_000)
    );
    let answer = h.exchange(long.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 414 "), "{answer:?}");
    let big_header = format!(
        "GET / HTTP/1.1\r\nHost: public.example.com\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let answer = h.exchange(big_header.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer:?}");
    // A malformed chunked body is the client's error: 400, counted as an ELB 4XX.
    let answer = h.exchange(
        b"POST /hang HTTP/1.1\r\nHost: public.example.com\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nbroken\r\n",
    );
    assert_eq!(status_of(&answer), "400", "{answer}");
    let out = h.lb.cli(&["stats", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let web = &report["http_listeners"][0];
    assert_eq!(web["elb_5xx"], 0, "{web}");
    wait_until(
        Duration::from_secs(5),
        "the ClientBodyError log line",
        || h.lb.sluice.stderr().contains("\"ClientBodyError\""),
    );
}

#[test]
fn malformed_and_oversized_target_responses_get_502_and_count_as_target_errors() {
    let h = Hostile::start();
    for path in ["/bad-status", "/huge-head", "/two-lengths"] {
        let answer = h.exchange(
            format!("GET {path} HTTP/1.1\r\nHost: public.example.com\r\n\r\n").as_bytes(),
        );
        assert_eq!(status_of(&answer), "502", "{path}: {answer}");
    }
    // Valid if odd: Content-Length beside chunked; the chunks are the body.
    let answer = h.exchange(
        b"GET /length-and-chunked HTTP/1.1\r\nHost: public.example.com\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status_of(&answer), "200", "{answer}");
    assert!(
        !answer.to_ascii_lowercase().contains("content-length: 3"),
        "the target's Content-Length is not passed on: {answer}"
    );
    assert!(answer.contains("\r\n5\r\nhello\r\n0\r\n\r\n"), "{answer}");
    wait_until(
        Duration::from_secs(5),
        "three TargetResponseError log lines",
        || {
            h.lb.sluice
                .stderr()
                .lines()
                .filter(|l| l.ends_with("\"TargetResponseError\""))
                .count()
                == 3
        },
    );
    let out = h.lb.cli(&["stats", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let web = &report["http_listeners"][0];
    assert_eq!(web["elb_5xx"], 3, "{web}");
    let errors: u64 = report["targets"]
        .as_array()
        .expect("targets")
        .iter()
        .filter_map(|t| t["request_errors"].as_u64())
        .sum();
    assert_eq!(errors, 3, "{report}");
}

/// A POST target in its own process, so that it can be killed like a crashed service.
fn post_server(ns: &crate::netns::Namespace, port: u16, name: &str) -> ChildGuard {
    let script = format!(
        "require('http').createServer((q,s)=>{{q.on('data',()=>{{}});q.on('end',()=>s.end('{name}\\n'))}}).listen({port})"
    );
    let mut cmd = ns.command("node");
    cmd.args(["-e", &script]);
    ns.spawn(cmd)
}

#[test]
fn a_target_killed_under_a_post_loop_costs_no_request() {
    let topology = LbTopology::new(3);
    let mut servers: Vec<ChildGuard> = topology
        .targets
        .iter()
        .enumerate()
        .map(|(i, t)| post_server(&t.ns, 8090, &format!("target{i}")))
        .collect();
    // The default health check: a dead target is noticed only after a minute, so every
    // request below relies on retries and outlier detection.
    let targets: Vec<String> = topology
        .targets
        .iter()
        .map(|t| format!("{{ address = \"{}\", port = 8090 }}", t.link.v4))
        .collect();
    let model = format!(
        "[[listener]]\nname = \"web\"\naddress = \"{VIP}\"\nport = 80\nprotocol = \"http\"\ndefault_target_group = \"posts\"\n\n[[target_group]]\nname = \"posts\"\ntargets = [{}]\nhealth_check = {{ interval = 30, healthy_threshold = 2 }}\n",
        targets.join(", ")
    );
    // Started with the default checks: targets begin `initial` and get traffic at once.
    let lb = L7Sluice::start(&topology, &model, 0);
    let vip = format!("http://{VIP}/orders");
    let post = || {
        topology
            .client
            .ns
            .command("curl")
            .args([
                "-sS",
                "--max-time",
                "10",
                "--noproxy",
                "*",
                "-o",
                "/dev/null",
            ])
            .args(["-w", "%{http_code}", "-X", "POST", "--data", "item=1"])
            .arg(&vip)
            .output()
            .unwrap()
    };
    // Three node targets start meanwhile: slow when the machine is busy.
    wait_until(Duration::from_secs(30), "the first POST", || {
        String::from_utf8_lossy(&post().stdout) == "200"
    });
    let mut failed = Vec::new();
    for i in 0..90 {
        if i == 30 {
            servers[1].signal(libc::SIGKILL);
            let _ = servers[1].wait_timeout(Duration::from_secs(5));
        }
        let out = post();
        let code = String::from_utf8_lossy(&out.stdout).into_owned();
        if code != "200" {
            failed.push((i, code, String::from_utf8_lossy(&out.stderr).into_owned()));
        }
    }
    assert!(
        failed.is_empty(),
        "failed POSTs: {failed:?}\n{}",
        lb.sluice.stderr()
    );
    let log = lb.sluice.stderr();
    assert!(
        log.contains(&format!(
            "target {}:8090 of 'posts' ejected",
            topology.targets[1].link.v4
        )),
        "the dead target is ejected: {log}"
    );
    let metrics = lb.cli(&["stats", "--json"]);
    assert!(metrics.status.success());
    drop(servers);
}

/// Client-reset HTTP/2 streams a connection may have before GOAWAY, and its streams open at
/// once (sluice's `proxy::resets`, documented in OPERATING.md): a connection that resets
/// every stream causes at most their sum of target requests.
const MAX_CLIENT_RESETS: u64 = 100;
const MAX_CONCURRENT_STREAMS: u64 = 128;

#[test]
fn an_http2_client_that_resets_every_stream_gets_goaway_within_the_bound() {
    let h = Hostile::start();
    let vip = SocketAddr::new(IpAddr::from(VIP), 443);
    let tcp = h
        .topology
        .client
        .ns
        .run_in(|| TcpStream::connect_timeout(&vip, Duration::from_secs(5)))
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // The slow reset: HEADERS for a request the target holds (`/slow`), RST_STREAM 10 ms
    // later, again and again on one connection; bounded at 1000 streams and 60 s.
    let (streams, refused) = runtime.block_on(async {
        let mut client = h2_client(tcp, &h.certificate, "public.example.com").await;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut streams = 0u64;
        while streams < 1000 && Instant::now() < deadline {
            let ready = match tokio::time::timeout(Duration::from_secs(5), client.ready()).await {
                Ok(Ok(ready)) => ready,
                Ok(Err(e)) => return (streams, e),
                Err(_) => panic!("no stream could be opened for 5 s after {streams}"),
            };
            client = ready;
            let request = http::Request::get("https://public.example.com/slow")
                .body(())
                .unwrap();
            let (_response, mut stream) = match client.send_request(request, true) {
                Ok(sent) => sent,
                Err(e) => return (streams, e),
            };
            streams += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
            stream.send_reset(h2::Reason::CANCEL);
        }
        panic!("no GOAWAY after {streams} reset streams");
    });
    assert!(refused.is_go_away(), "{refused:?}");
    assert!(
        (MAX_CLIENT_RESETS..MAX_CLIENT_RESETS + 50).contains(&streams),
        "GOAWAY after {streams} reset streams"
    );
    let requests: u64 = h._servers.iter().map(|s| s.requests()).sum();
    assert!(
        (1..=MAX_CLIENT_RESETS + MAX_CONCURRENT_STREAMS).contains(&requests),
        "{requests} target requests (some reached the target before their reset)"
    );
    wait_until(Duration::from_secs(5), "the GOAWAY's log line", || {
        h.lb.sluice
            .stderr()
            .contains("HTTP/2 connection(s) sent GOAWAY")
    });
    // Another connection is served as before.
    let tcp = h
        .topology
        .client
        .ns
        .run_in(|| TcpStream::connect_timeout(&vip, Duration::from_secs(5)))
        .unwrap();
    let status = h2_status(
        tcp,
        &h.certificate,
        "public.example.com",
        "public.example.com",
    );
    assert_eq!(status, 200);
}

/// An HTTP/2 client over TLS (trusting `certificate`, SNI `authority`) on `tcp`.
async fn h2_client(
    tcp: TcpStream,
    certificate: &CertFiles,
    authority: &str,
) -> h2::client::SendRequest<bytes::Bytes> {
    tcp.set_nonblocking(true).unwrap();
    let tcp = tokio::net::TcpStream::from_std(tcp).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(
            certificate.der.clone(),
        ))
        .unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from(authority.to_string()).unwrap();
    let tls = connector.connect(name, tcp).await.expect("a TLS handshake");
    let (client, connection) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(connection);
    client
}
