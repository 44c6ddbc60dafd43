//! The command-line side: one request to the daemon over its socket.

use std::{
    io,
    path::{Path, PathBuf},
    time::Duration,
};

use http_body_util::{BodyExt, Full};
use hyper::{body::Bytes, header, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;

use super::{server::ErrorBody, StatsReport, STATS_PATH};

/// A daemon busy for longer than this is reported rather than waited for.
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "no sluice daemon answers on {socket}: is `sluice run` running (with the same --socket)?"
    )]
    NotRunning { socket: String },
    #[error("cannot open {socket}: permission denied; only root may use the control socket")]
    PermissionDenied { socket: String },
    #[error("cannot connect to {socket}: {source}")]
    Connect { socket: String, source: io::Error },
    #[error("talking to the sluice daemon on {socket}: {source}")]
    Http {
        socket: String,
        source: hyper::Error,
    },
    #[error("the sluice daemon on {socket} did not answer within {} seconds", TIMEOUT.as_secs())]
    Timeout { socket: String },
    #[error("the sluice daemon on {socket} answered {status}: {message}")]
    Status {
        socket: String,
        status: StatusCode,
        message: String,
    },
    #[error("the sluice daemon on {socket} sent an answer this sluice cannot read: {message}")]
    Unreadable { socket: String, message: String },
}

/// Talks to the daemon listening on one socket.
pub struct Client {
    socket: PathBuf,
}

impl Client {
    pub fn new(socket: &Path) -> Client {
        Client {
            socket: socket.to_path_buf(),
        }
    }

    fn shown(&self) -> String {
        self.socket.display().to_string()
    }

    /// `GET /v1/stats`, parsed.
    pub async fn stats(&self) -> Result<StatsReport, ClientError> {
        let body = self.get(STATS_PATH).await?;
        serde_json::from_slice(&body).map_err(|e| ClientError::Unreadable {
            socket: self.shown(),
            message: e.to_string(),
        })
    }

    /// `GET path`: the body of a 2xx answer; any other status is an error carrying the
    /// daemon's message.
    pub async fn get(&self, path: &str) -> Result<Bytes, ClientError> {
        self.send(Method::GET, path, None::<&()>).await
    }

    /// `METHOD path` with `body` as JSON: like [`Client::get`].
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl serde::Serialize>,
    ) -> Result<Bytes, ClientError> {
        let body = body.map(|b| serde_json::to_vec(b).expect("request bodies have string keys"));
        match tokio::time::timeout(TIMEOUT, self.send_untimed(method, path, body)).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout {
                socket: self.shown(),
            }),
        }
    }

    async fn send_untimed(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, ClientError> {
        let socket = self.shown();
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| match source.kind() {
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                    ClientError::NotRunning {
                        socket: socket.clone(),
                    }
                }
                io::ErrorKind::PermissionDenied => ClientError::PermissionDenied {
                    socket: socket.clone(),
                },
                _ => ClientError::Connect {
                    socket: socket.clone(),
                    source,
                },
            })?;
        let http = |source| ClientError::Http {
            socket: socket.clone(),
            source,
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http)?;
        let connection = tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "sluice");
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .expect("a method, a path and constant headers make a valid request");
        let response = sender.send_request(request).await.map_err(http)?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(http)?
            .to_bytes();
        drop(sender);
        let _ = connection.await;
        if status.is_success() {
            return Ok(body);
        }
        let message = match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(ErrorBody { error }) => error,
            Err(_) => String::from_utf8_lossy(&body).trim().to_string(),
        };
        Err(ClientError::Status {
            socket,
            status,
            message,
        })
    }
}
