//! One health check against one target: a TCP connect, or an HTTP/1.1 GET whose status the
//! matcher judges. The connection is closed after each check, as ELB does.

use std::{io, net::SocketAddr, time::Duration};

use http_body_util::Empty;
use hyper::{body::Bytes, header, Request};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpStream, time::Instant};

use super::{
    state::{Failure, Outcome},
    CheckProtocol, HealthCheck,
};

/// Sent so that a target's access log can tell health checks from users (ELB sends
/// `ELB-HealthChecker/2.0`).
pub const USER_AGENT: &str = "sluice-health-checker/1";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeResult {
    pub outcome: Outcome,
    /// From the start of the connect to the connection (tcp) or the response head (http), or
    /// to the failure.
    pub latency: Duration,
    /// The HTTP status received, matched or not.
    pub status: Option<u16>,
}

/// Checks the target whose traffic address is `target` (the check's port, if set, replaces
/// the target's). Never takes much longer than `check.timeout`.
pub async fn probe(check: &HealthCheck, target: SocketAddr) -> ProbeResult {
    let addr = check.probe_addr(target);
    let start = Instant::now();
    let result = tokio::time::timeout(check.timeout, attempt(check, addr)).await;
    let latency = start.elapsed();
    let (outcome, status) = match result {
        Err(_) => (Outcome::Fail(Failure::Timeout), None),
        Ok(Err(failure)) => (Outcome::Fail(failure), None),
        Ok(Ok(None)) => (Outcome::Pass, None),
        Ok(Ok(Some(status))) if check.matcher.matches(status) => (Outcome::Pass, Some(status)),
        Ok(Ok(Some(status))) => (Outcome::Fail(Failure::CodeMismatch(status)), Some(status)),
    };
    ProbeResult {
        outcome,
        latency,
        status,
    }
}

/// The HTTP status, for an http check.
async fn attempt(check: &HealthCheck, addr: SocketAddr) -> Result<Option<u16>, Failure> {
    let stream = TcpStream::connect(addr).await.map_err(connect_failure)?;
    match check.protocol {
        CheckProtocol::Tcp => Ok(None),
        CheckProtocol::Http => http_status(stream, addr, &check.path).await.map(Some),
    }
}

fn connect_failure(e: io::Error) -> Failure {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => Failure::Refused,
        io::ErrorKind::TimedOut => Failure::Timeout,
        _ => Failure::Connection(e.to_string()),
    }
}

async fn http_status(stream: TcpStream, addr: SocketAddr, path: &str) -> Result<u16, Failure> {
    let bad = |e: hyper::Error| Failure::Response(e.to_string());
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(bad)?;
    let request = Request::get(path)
        .header(header::HOST, addr.to_string())
        .header(header::USER_AGENT, USER_AGENT)
        .header(header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| Failure::Response(format!("cannot build the request: {e}")))?;
    // The connection is driven here rather than spawned, so that a timeout (dropping this
    // future) closes it and nothing outlives the check.
    let send = sender.send_request(request);
    tokio::pin!(send, connection);
    let response = tokio::select! {
        biased;
        response = &mut send => response,
        // Ending (even cleanly) may come with the response already handed over; the request
        // future says which.
        _ = &mut connection => send.await,
    };
    // Only the status matters; dropping the response closes the connection without reading
    // the body.
    Ok(response.map_err(bad)?.status().as_u16())
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::state::ReasonCode;
    use std::sync::{
        atomic::{AtomicU16, Ordering},
        Arc,
    };

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    use super::*;

    /// An HTTP server on an ephemeral port answering every request with `status` (which the
    /// test may change); 0 = accept and never answer.
    pub struct HttpServer {
        pub addr: SocketAddr,
        pub status: Arc<AtomicU16>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for HttpServer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl HttpServer {
        pub async fn start(status: u16) -> HttpServer {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            HttpServer::serve(listener, Arc::new(AtomicU16::new(status)))
        }

        pub fn serve(listener: TcpListener, status: Arc<AtomicU16>) -> HttpServer {
            let addr = listener.local_addr().unwrap();
            let shared = status.clone();
            let task = tokio::spawn(async move {
                let mut silent = Vec::new();
                loop {
                    let Ok((mut stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let status = shared.load(Ordering::Relaxed);
                    if status == 0 {
                        silent.push(stream);
                        continue;
                    }
                    tokio::spawn(async move {
                        let mut head = Vec::new();
                        let mut buf = [0; 1024];
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                            match stream.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => head.extend_from_slice(&buf[..n]),
                            }
                        }
                        let answer = format!(
                            "HTTP/1.1 {status} Status\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                        );
                        let _ = stream.write_all(answer.as_bytes()).await;
                    });
                }
            });
            HttpServer { addr, status, task }
        }
    }

    fn http(matcher: &str) -> HealthCheck {
        HealthCheck {
            protocol: CheckProtocol::Http,
            matcher: matcher.parse().unwrap(),
            timeout: Duration::from_secs(5),
            ..HealthCheck::default()
        }
    }

    /// A port nothing listens on: bound, then released.
    async fn closed_port() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    }

    #[tokio::test]
    async fn tcp_passes_on_connect_and_fails_on_refusal() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let check = HealthCheck::default();
        let result = probe(&check, listener.local_addr().unwrap()).await;
        assert_eq!(result.outcome, Outcome::Pass);
        assert!(result.latency < check.timeout);
        let result = probe(&check, closed_port().await).await;
        assert_eq!(result.outcome, Outcome::Fail(Failure::Refused));
    }

    #[tokio::test]
    async fn the_check_port_overrides_the_traffic_port() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let check = HealthCheck {
            port: Some(listener.local_addr().unwrap().port()),
            ..HealthCheck::default()
        };
        let result = probe(&check, closed_port().await).await;
        assert_eq!(result.outcome, Outcome::Pass);
    }

    #[tokio::test]
    async fn http_status_is_matched() {
        let ok = HttpServer::start(200).await;
        let result = probe(&http("200"), ok.addr).await;
        assert_eq!((result.outcome, result.status), (Outcome::Pass, Some(200)));

        let error = HttpServer::start(500).await;
        let result = probe(&http("200-299"), error.addr).await;
        assert_eq!(result.outcome, Outcome::Fail(Failure::CodeMismatch(500)));
        assert_eq!(result.status, Some(500));

        error.status.store(202, Ordering::Relaxed);
        assert_eq!(
            probe(&http("200,202"), error.addr).await.outcome,
            Outcome::Pass
        );
        assert_eq!(
            probe(&http("200-201,203-399"), error.addr).await.outcome,
            Outcome::Fail(Failure::CodeMismatch(202))
        );
        error.status.store(302, Ordering::Relaxed);
        assert_eq!(
            probe(&http("200-399"), error.addr).await.outcome,
            Outcome::Pass
        );
    }

    #[tokio::test]
    async fn http_refused_and_garbage_fail() {
        let result = probe(&http("200"), closed_port().await).await;
        assert_eq!(result.outcome, Outcome::Fail(Failure::Refused));

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let _ = stream.write_all(b"SSH-2.0-OpenSSH\r\n").await;
            let _ = stream.shutdown().await;
            // Hold the socket until the client closes it.
            let _ = stream.read(&mut [0; 64]).await;
        });
        let result = probe(&http("200"), addr).await;
        let Outcome::Fail(failure @ Failure::Response(_)) = &result.outcome else {
            panic!("{result:?}");
        };
        assert_eq!(failure.reason_code(), ReasonCode::FailedHealthChecks);
        server.abort();
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let silent = HttpServer::start(0).await;
        let check = HealthCheck {
            timeout: Duration::from_millis(200),
            ..http("200")
        };
        let result = probe(&check, silent.addr).await;
        assert_eq!(result.outcome, Outcome::Fail(Failure::Timeout));
        assert_eq!(Failure::Timeout.reason_code(), ReasonCode::Timeout);
        assert!(result.latency >= check.timeout, "{result:?}");
        // Bounded: the probe gives up at its timeout, not when the server does.
        assert!(result.latency < Duration::from_secs(5), "{result:?}");
    }
}
