//! The daemon's side: binding the socket (refusing to share it with a live daemon, replacing
//! one left by a dead daemon) and answering requests.

use std::{
    convert::Infallible,
    fs, io,
    os::unix::{
        fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt},
        net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
    rc::Rc,
    time::Duration,
};

use http_body_util::{BodyExt, Full, Limited};
use hyper::{
    body::{Bytes, Incoming},
    header,
    server::conn::http1,
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{de::DeserializeOwned, Serialize};

use super::{
    CollectError, ListenerRef, MaglevTable, NodeRequest, RunningConfig, StatsReport, TargetWeight,
    CONFIG_PATH, DOWN_PATH, LISTENERS_PATH, NODE_PATH, RELOAD_PATH, STATS_PATH, TABLES_PATH,
    TARGETS_PATH,
};
use crate::{
    controller::Changes,
    model::edit::{Edit, EditError, ListenerSpec, TargetRef},
};

/// `POST /v1/reload`'s body (optional).
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadOptions {
    /// Apply a file without listeners even though the running model has some (it removes
    /// every listener).
    #[serde(default)]
    pub allow_empty: bool,
}

/// What the API asks of the daemon.
pub trait Backend {
    fn stats(&self) -> Result<StatsReport, CollectError>;
    /// Re-reads the configuration file, as on SIGHUP, dropping changes made through the API.
    /// A file without listeners replaces a model with listeners only with `allow_empty`.
    fn reload(&self, allow_empty: bool) -> Result<Changes, ControlError>;
    /// Changes the running model (until the next reload).
    fn change(&self, edit: Edit) -> Result<Changes, ControlError>;
    /// Changes the model, awaiting what that takes: in store mode, the write to the store and
    /// this node applying it. By default [`Backend::change`].
    fn submit(&self, edit: Edit) -> crate::store::LocalFuture<'_, Result<Changes, ControlError>> {
        let changed = self.change(edit);
        Box::pin(async move { changed })
    }
    /// Stops the daemon after detaching the XDP program and removing its pins (`sluice
    /// down`), instead of leaving forwarding running as a plain stop does.
    fn down(&self) -> Result<(), ControlError> {
        Err(ControlError::conflict("this daemon cannot be taken down"))
    }
    /// Every tcp/udp listener's Maglev table, by listener name.
    fn tables(&self) -> std::collections::BTreeMap<String, MaglevTable> {
        Default::default()
    }
    /// The node's announcements, after setting its state (`sluice node drain|resume`) if
    /// `state` is given.
    fn node(
        &self,
        _state: Option<crate::announce::NodeState>,
    ) -> Result<crate::announce::AnnounceStatus, ControlError> {
        Err(ControlError::conflict("this daemon announces nothing"))
    }
    /// The running model as TOML, and the file it would be saved to (`sluice config show`).
    fn config(&self) -> Result<RunningConfig, ControlError> {
        Err(ControlError::conflict("this daemon cannot show its model"))
    }
}

/// A refused reload or change: nothing was changed.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ControlError {
    pub status: StatusCode,
    pub message: String,
}

impl ControlError {
    /// A request that cannot be carried out as things stand (409).
    pub fn conflict(message: impl Into<String>) -> ControlError {
        ControlError {
            status: StatusCode::CONFLICT,
            message: message.into(),
        }
    }

    /// Input the daemon refuses, such as a configuration file that does not validate (400).
    pub fn invalid(message: impl Into<String>) -> ControlError {
        ControlError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    /// Something the daemon depends on cannot be reached, such as the shared store (503).
    pub fn unavailable(message: impl Into<String>) -> ControlError {
        ControlError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
        }
    }

    /// The daemon could not do what it should have been able to (500).
    pub fn internal(message: impl Into<String>) -> ControlError {
        ControlError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
        }
    }
}

impl From<EditError> for ControlError {
    fn from(e: EditError) -> ControlError {
        let status = match e {
            EditError::NotFound(_) => StatusCode::NOT_FOUND,
            EditError::Conflict(_) => StatusCode::CONFLICT,
            EditError::Invalid(_) => StatusCode::BAD_REQUEST,
        };
        ControlError {
            status,
            message: e.to_string(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error(
        "another sluice daemon answers on {path}: stop it first, or give this one its own --socket"
    )]
    InUse { path: String },
    #[error("{path} exists and is not a socket: remove it, or choose another --socket")]
    NotASocket { path: String },
    #[error("cannot create {dir} for the control socket: {source}")]
    CreateDir { dir: String, source: io::Error },
    #[error("cannot remove the stale control socket {path}: {source}")]
    RemoveStale { path: String, source: io::Error },
    #[error("cannot listen on {path}: {source}")]
    Bind { path: String, source: io::Error },
}

/// A client that sends no complete request head within this long is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// After a failed accept (e.g. out of file descriptors), before the next one.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Request bodies are small JSON objects.
const MAX_BODY: usize = 64 * 1024;

/// The socket file of a bound listener. Dropping it removes the file, if it is still the one
/// bound here: after someone removed it and another daemon bound the same path, it is theirs.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let ours = fs::symlink_metadata(&self.path)
            .is_ok_and(|meta| meta.dev() == self.dev && meta.ino() == self.ino);
        if ours {
            if let Err(e) = fs::remove_file(&self.path) {
                log::warn!("removing the control socket {}: {e}", self.path.display());
            }
        }
    }
}

/// Listens on `path`, creating its directory (mode 0700) if needed; the socket is mode 0600.
/// A socket file nobody answers on was left by a daemon that did not stop cleanly and is
/// replaced; one a daemon answers on is refused.
///
/// The listener is non-blocking, ready for `tokio::net::UnixListener::from_std`.
pub fn bind(path: &Path) -> Result<(UnixListener, SocketFile), BindError> {
    let shown = path.display().to_string();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| BindError::CreateDir {
                dir: dir.display().to_string(),
                source,
            })?;
    }
    let bind_err = |source| BindError::Bind {
        path: shown.clone(),
        source,
    };
    match fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(BindError::NotASocket { path: shown })
        }
        Ok(_) => match UnixStream::connect(path) {
            Ok(_) => return Err(BindError::InUse { path: shown }),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                log::warn!(
                    "replacing the stale control socket {shown} left by a sluice that did not stop cleanly"
                );
                fs::remove_file(path).map_err(|source| BindError::RemoveStale {
                    path: shown.clone(),
                    source,
                })?;
            }
            Err(e) => return Err(bind_err(e)),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(bind_err(e)),
    }
    let listener = UnixListener::bind(path).map_err(|source| match source.kind() {
        // Another daemon bound it between our look and our bind.
        io::ErrorKind::AddrInUse => BindError::InUse {
            path: shown.clone(),
        },
        _ => bind_err(source),
    })?;
    // Until this chmod the socket has the umask's mode. Connecting needs write permission, which
    // the usual umask (022) withholds from others, and a directory made here is 0700 anyway.
    // (Setting the umask instead would affect every thread of the process.)
    if let Err(e) = fs::set_permissions(path, fs::Permissions::from_mode(0o600)) {
        let _ = fs::remove_file(path);
        return Err(bind_err(e));
    }
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) => {
            let _ = fs::remove_file(path);
            return Err(bind_err(e));
        }
    };
    let file = SocketFile {
        path: path.to_path_buf(),
        dev: meta.dev(),
        ino: meta.ino(),
    };
    listener.set_nonblocking(true).map_err(bind_err)?;
    Ok((listener, file))
}

/// Answers requests on `listener`, each connection in a task of its own, until dropped.
/// Must run inside a `tokio::task::LocalSet` (the backend is not `Send`).
pub async fn serve<B: Backend + 'static>(listener: tokio::net::UnixListener, backend: Rc<B>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                log::warn!("control API: accepting a connection: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let backend = Rc::clone(&backend);
        tokio::task::spawn_local(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let backend = Rc::clone(&backend);
                async move {
                    let (head, body) = request.into_parts();
                    // The backend is asked only once the whole body is here, so each change
                    // runs to completion between two awaits.
                    let response = match Limited::new(body, MAX_BODY).collect().await {
                        Ok(body) => {
                            answer(&*backend, &head.method, head.uri.path(), &body.to_bytes()).await
                        }
                        Err(e) => error(
                            StatusCode::BAD_REQUEST,
                            format!("reading the request body (at most {MAX_BODY} bytes): {e}"),
                        ),
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = connection.await {
                log::debug!("control API connection: {e}");
            }
        });
    }
}

/// Every endpoint and the methods it takes.
const ENDPOINTS: &[(&str, &[Method])] = &[
    (STATS_PATH, &[Method::GET]),
    (RELOAD_PATH, &[Method::POST]),
    (TARGETS_PATH, &[Method::POST, Method::PATCH, Method::DELETE]),
    (LISTENERS_PATH, &[Method::POST, Method::DELETE]),
    (DOWN_PATH, &[Method::POST]),
    (NODE_PATH, &[Method::GET, Method::POST]),
    (TABLES_PATH, &[Method::GET]),
    (CONFIG_PATH, &[Method::GET]),
];

/// The answer to `method path` with `body`, changes awaited through [`Backend::submit`].
pub async fn answer(
    backend: &impl Backend,
    method: &Method,
    path: &str,
    body: &[u8],
) -> Response<Full<Bytes>> {
    match edit_of(method, path, body) {
        Some(Ok(edit)) => changed(backend.submit(edit).await),
        Some(Err(message)) => error(StatusCode::BAD_REQUEST, message),
        None => respond(backend, method, path, body),
    }
}

/// The answer to `method path` with `body`.
pub fn respond(
    backend: &impl Backend,
    method: &Method,
    path: &str,
    body: &[u8],
) -> Response<Full<Bytes>> {
    let Some((_, methods)) = ENDPOINTS.iter().find(|(p, _)| *p == path) else {
        let known: Vec<String> = ENDPOINTS
            .iter()
            .flat_map(|(p, methods)| methods.iter().map(move |m| format!("{m} {p}")))
            .collect();
        return error(
            StatusCode::NOT_FOUND,
            format!("no endpoint {path}; there are {}", known.join(", ")),
        );
    };
    match (path, method) {
        (STATS_PATH, &Method::GET) => match backend.stats() {
            Ok(report) => json(StatusCode::OK, &report),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
        (RELOAD_PATH, &Method::POST) => {
            // No body: the defaults (a daemon's older clients send none).
            let options = if body.is_empty() {
                Ok(ReloadOptions::default())
            } else {
                serde_json::from_slice::<ReloadOptions>(body)
            };
            match options {
                Ok(options) => changed(backend.reload(options.allow_empty)),
                Err(e) => error(
                    StatusCode::BAD_REQUEST,
                    format!("the reload request's body is not understood: {e}"),
                ),
            }
        }
        (TABLES_PATH, &Method::GET) => json(StatusCode::OK, &backend.tables()),
        (NODE_PATH, &Method::GET) => match backend.node(None) {
            Ok(status) => json(StatusCode::OK, &status),
            Err(e) => error(e.status, e.message),
        },
        (NODE_PATH, &Method::POST) => match serde_json::from_slice::<NodeRequest>(body) {
            Ok(request) => match backend.node(Some(request.state)) {
                Ok(status) => json(StatusCode::OK, &status),
                Err(e) => error(e.status, e.message),
            },
            Err(e) => error(
                StatusCode::BAD_REQUEST,
                format!("the body of POST {NODE_PATH}: {e} (expected {{\"state\": \"draining\"}} or {{\"state\": \"serving\"}})"),
            ),
        },
        (CONFIG_PATH, &Method::GET) => match backend.config() {
            Ok(config) => json(StatusCode::OK, &config),
            Err(e) => error(e.status, e.message),
        },
        (DOWN_PATH, &Method::POST) => match backend.down() {
            Ok(()) => json(StatusCode::OK, &serde_json::json!({ "stopping": true })),
            Err(e) => error(e.status, e.message),
        },
        (TARGETS_PATH | LISTENERS_PATH, _) if edit_of(method, path, body).is_some() => {
            match edit_of(method, path, body).expect("checked") {
                Ok(edit) => changed(backend.change(edit)),
                Err(message) => error(StatusCode::BAD_REQUEST, message),
            }
        }
        _ => {
            let names: Vec<&str> = methods.iter().map(Method::as_str).collect();
            let mut response = error(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{path} takes {}, not {method}", names.join(" or ")),
            );
            let allow = header::HeaderValue::from_str(&names.join(", "))
                .expect("method names are valid header text");
            response.headers_mut().insert(header::ALLOW, allow);
            response
        }
    }
}

/// The change `method path` asks for, if it is one, or why its body does not parse.
fn edit_of(method: &Method, path: &str, body: &[u8]) -> Option<Result<Edit, String>> {
    Some(match (path, method) {
        (TARGETS_PATH, &Method::POST) => parse(body, Edit::AddTarget),
        (TARGETS_PATH, &Method::DELETE) => parse(body, Edit::RemoveTarget),
        (TARGETS_PATH, &Method::PATCH) => parse(body, |w: TargetWeight| {
            let target = TargetRef {
                group: w.group,
                address: w.address,
                port: w.port,
            };
            Edit::SetWeight(target, w.weight)
        }),
        (LISTENERS_PATH, &Method::POST) => {
            parse(body, |spec: ListenerSpec| Edit::AddListener(spec.into()))
        }
        (LISTENERS_PATH, &Method::DELETE) => {
            parse(body, |r: ListenerRef| Edit::RemoveListener(r.name))
        }
        _ => return None,
    })
}

/// Parses `body` as `T`, the change it describes.
fn parse<T: DeserializeOwned>(body: &[u8], edit: impl FnOnce(T) -> Edit) -> Result<Edit, String> {
    serde_json::from_slice::<T>(body)
        .map(edit)
        .map_err(|e| format!("the request body is not what this endpoint takes: {e}"))
}

fn changed(result: Result<Changes, ControlError>) -> Response<Full<Bytes>> {
    match result {
        Ok(changes) => json(StatusCode::OK, &changes),
        Err(e) => error(e.status, e.message),
    }
}

/// The body of every error answer.
#[derive(Debug, serde::Deserialize, Serialize)]
pub struct ErrorBody {
    pub error: String,
}

fn error(status: StatusCode, message: String) -> Response<Full<Bytes>> {
    json(status, &ErrorBody { error: message })
}

fn json(status: StatusCode, body: &impl Serialize) -> Response<Full<Bytes>> {
    let mut bytes = serde_json::to_vec(body).expect("API bodies have string keys only");
    // For people reading `curl` output in a terminal.
    bytes.push(b'\n');
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use http_body_util::BodyExt;

    use super::*;
    use crate::{
        api::{client::Client, ClientError, CounterStats},
        dataplane::maps::MapsError,
    };

    /// A directory of its own under the temporary directory, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "sluice-api-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&dir);
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    struct Fake {
        broken: bool,
    }

    impl Backend for Fake {
        fn stats(&self) -> Result<StatsReport, CollectError> {
            if self.broken {
                return Err(MapsError::Missing("LISTENER_STATS").into());
            }
            Ok(StatsReport {
                connection_tables: None,
                announcement: None,
                store: None,
                counters: [(
                    "forward_nat".to_string(),
                    CounterStats {
                        packets: 1,
                        bytes: 60,
                    },
                )]
                .into(),
                ..StatsReport::default()
            })
        }

        /// Refuses, unless asked to allow an empty file.
        fn reload(&self, allow_empty: bool) -> Result<Changes, ControlError> {
            if allow_empty {
                return Ok(Changes::default());
            }
            Err(ControlError::invalid("reload of f refused"))
        }

        /// Knows target group `web`, listener `web`.
        fn change(&self, edit: Edit) -> Result<Changes, ControlError> {
            let model = crate::model::Model::parse(
                "[[target_group]]\nname = \"web\"\n[[listener]]\nname = \"web\"\naddress = \"192.0.2.1\"\nport = 80\nprotocol = \"tcp\"\ndefault_target_group = \"web\"\n",
                "fake",
            )
            .unwrap();
            edit.apply_to(&model)?;
            Ok(Changes {
                listeners_added: vec![format!("{edit:?}")],
                ..Changes::default()
            })
        }
    }

    fn body_text(response: Response<Full<Bytes>>) -> String {
        let collected = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(response.into_body().collect())
            .unwrap();
        String::from_utf8(collected.to_bytes().to_vec()).unwrap()
    }

    #[test]
    fn routes_stats_and_refuses_other_paths_and_methods() {
        let fake = Fake { broken: false };
        let ok = respond(&fake, &Method::GET, STATS_PATH, b"");
        assert_eq!(ok.status(), StatusCode::OK);
        assert_eq!(ok.headers()[header::CONTENT_TYPE], "application/json");
        let report: StatsReport = serde_json::from_str(&body_text(ok)).unwrap();
        assert_eq!(report.counters["forward_nat"].bytes, 60);

        let missing = respond(&fake, &Method::GET, "/v1/nothing", b"");
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        let text = body_text(missing);
        let error: ErrorBody = serde_json::from_str(&text).unwrap();
        assert!(error.error.contains("/v1/nothing") && error.error.contains(STATS_PATH));

        let post = respond(&fake, &Method::POST, STATS_PATH, b"");
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(post.headers()[header::ALLOW], "GET");
        assert!(body_text(post).contains("takes GET, not POST"));

        let broken = respond(&Fake { broken: true }, &Method::GET, STATS_PATH, b"");
        assert_eq!(broken.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(body_text(broken).contains("LISTENER_STATS"));
    }

    #[test]
    fn changes_parse_their_bodies_and_map_refusals_to_statuses() {
        let fake = Fake { broken: false };
        let ask = |method: Method, path: &str, body: &str| {
            let response = respond(&fake, &method, path, body.as_bytes());
            (response.status(), body_text(response))
        };
        let (status, text) = ask(
            Method::POST,
            TARGETS_PATH,
            r#"{"group": "web", "address": "10.0.1.10", "port": 80, "weight": 2}"#,
        );
        assert_eq!(status, StatusCode::OK, "{text}");
        let changes: Changes = serde_json::from_str(&text).unwrap();
        assert!(
            changes.listeners_added[0].starts_with("AddTarget"),
            "{text}"
        );

        let cases = [
            (
                Method::DELETE,
                TARGETS_PATH,
                r#"{"group": "nope", "address": "10.0.1.10"}"#,
                StatusCode::NOT_FOUND,
                "target group 'nope' does not exist",
            ),
            (
                Method::DELETE,
                TARGETS_PATH,
                r#"{"group": "web", "address": "10.0.1.10"}"#,
                StatusCode::NOT_FOUND,
                "is not in target group 'web'",
            ),
            (
                Method::PATCH,
                TARGETS_PATH,
                r#"{"group": "web", "address": "10.0.1"}"#,
                StatusCode::BAD_REQUEST,
                "not what this endpoint takes",
            ),
            (
                Method::POST,
                TARGETS_PATH,
                r#"{"group": "web", "address": "10.0.1.10", "weight": 0}"#,
                StatusCode::BAD_REQUEST,
                "weights are 1 to 999",
            ),
            (
                Method::POST,
                LISTENERS_PATH,
                r#"{"name": "web", "address": "192.0.2.2", "port": 80, "protocol": "tcp", "target_group": "web"}"#,
                StatusCode::CONFLICT,
                "listener 'web' already exists",
            ),
            (
                Method::DELETE,
                LISTENERS_PATH,
                r#"{"name": "www"}"#,
                StatusCode::NOT_FOUND,
                "listener 'www' does not exist; listeners: web",
            ),
            (
                Method::POST,
                RELOAD_PATH,
                "",
                StatusCode::BAD_REQUEST,
                "reload of f refused",
            ),
            (
                Method::POST,
                RELOAD_PATH,
                r#"{"allow_empty": false}"#,
                StatusCode::BAD_REQUEST,
                "reload of f refused",
            ),
            (
                Method::POST,
                RELOAD_PATH,
                r#"{"allow_empty": 1}"#,
                StatusCode::BAD_REQUEST,
                "the reload request's body is not understood",
            ),
            (
                Method::GET,
                TARGETS_PATH,
                "",
                StatusCode::METHOD_NOT_ALLOWED,
                "takes POST or PATCH or DELETE, not GET",
            ),
        ];
        for (method, path, body, status, message) in cases {
            let (got, text) = ask(method.clone(), path, body);
            let error: ErrorBody = serde_json::from_str(&text).unwrap();
            assert_eq!(got, status, "{method} {path} {body}: {text}");
            assert!(
                error.error.contains(message),
                "{method} {path} {body}: {text}"
            );
        }
        // Asked for, the backend applies the file.
        let (got, text) = ask(Method::POST, RELOAD_PATH, r#"{"allow_empty": true}"#);
        assert_eq!(got, StatusCode::OK, "{text}");
    }

    #[test]
    fn socket_is_private_and_removed_with_its_file_guard() {
        let dir = TempDir::new();
        let path = dir.0.join("run/sluice.sock");
        let (listener, file) = bind(&path).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        assert_eq!(mode(&path), 0o600);
        assert_eq!(file.path(), path);
        drop(listener);
        drop(file);
        assert!(!path.exists());
    }

    #[test]
    fn a_live_socket_is_refused_a_dead_one_replaced_and_a_file_kept() {
        let dir = TempDir::new();
        let path = dir.0.join("sluice.sock");
        let (listener, file) = bind(&path).unwrap();
        let refused = bind(&path).unwrap_err();
        assert!(matches!(refused, BindError::InUse { .. }), "{refused}");
        assert!(refused
            .to_string()
            .contains("another sluice daemon answers on"));

        // A daemon killed without cleaning up: the file stays, nobody answers.
        drop(listener);
        std::mem::forget(file);
        assert!(path.exists());
        let (_listener, _file) = bind(&path).expect("a stale socket is replaced");

        let other = dir.0.join("not-a-socket");
        fs::write(&other, "keep me").unwrap();
        let refused = bind(&other).unwrap_err();
        assert!(matches!(refused, BindError::NotASocket { .. }), "{refused}");
        assert_eq!(fs::read_to_string(&other).unwrap(), "keep me");
    }

    #[test]
    fn the_guard_leaves_a_socket_that_is_no_longer_its_own() {
        let dir = TempDir::new();
        let path = dir.0.join("sluice.sock");
        // The first daemon still runs (its socket's inode is alive) when its file is removed
        // and a second daemon binds the path.
        let (_first, first_file) = bind(&path).unwrap();
        fs::remove_file(&path).unwrap();
        let (_second, _second_file) = bind(&path).unwrap();
        drop(first_file);
        assert!(path.exists(), "the second daemon's socket was removed");
    }

    #[test]
    fn client_and_server_talk_over_the_socket() {
        let dir = TempDir::new();
        let path = dir.0.join("sluice.sock");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = Client::new(&path);
        let not_running = runtime.block_on(client.stats()).unwrap_err();
        assert!(
            matches!(not_running, ClientError::NotRunning { .. }),
            "{not_running}"
        );
        assert_eq!(
            not_running.to_string(),
            format!(
                "no sluice daemon answers on {}: is `sluice run` running (with the same --socket)?",
                path.display()
            )
        );

        let (listener, _file) = bind(&path).unwrap();
        tokio::task::LocalSet::new().block_on(&runtime, async {
            let listener = tokio::net::UnixListener::from_std(listener).unwrap();
            let server = tokio::task::spawn_local(serve(listener, Rc::new(Fake { broken: false })));
            let report = client.stats().await.unwrap();
            assert_eq!(report.counters["forward_nat"].packets, 1);
            let missing = client.get("/v2/stats").await.unwrap_err();
            match &missing {
                ClientError::Status {
                    status, message, ..
                } => {
                    assert_eq!(*status, StatusCode::NOT_FOUND);
                    assert!(message.starts_with("no endpoint /v2/stats"), "{message}");
                }
                other => panic!("{other}"),
            }
            server.abort();
        });
    }
}
