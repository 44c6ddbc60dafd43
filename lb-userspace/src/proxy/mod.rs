//! The L7 proxy for http and https listeners.
//!
//! Pure parts, unit-tested without sockets: [`wildcard`] (ALB's `*`/`?` patterns),
//! [`rules`] (conditions and actions), [`balance`] (smooth weighted round robin, least
//! outstanding requests), [`sticky`] (sealed stickiness cookies), [`redirect`] (redirect
//! templates), [`headers`] (hop-by-hop and X-Forwarded-*), [`snapshot`] (the routing state
//! built from the model), [`access_log`] and [`metrics`].
//!
//! I/O: [`server`] (accept, hyper, limits), [`forward`] (one request to its target),
//! [`upgrade`] (WebSocket tunnels), all on the proxy's [`workers`] (one current-thread runtime
//! per CPU, each accepting on every listening socket), reading the snapshot the daemon swaps
//! in after every change ([`Proxy::commit`], [`Proxy::update_routes`]).

pub mod access_log;
pub mod admission;
mod authority;
pub mod balance;
pub mod body;
pub mod check;
pub mod conn;
pub mod context;
pub mod cookie_keys;
pub mod forward;
pub mod h1;
pub mod handover;
pub mod headers;
pub mod metrics;
mod outlier;
pub mod redirect;
pub mod resets;
pub mod rules;
pub mod server;
pub mod snapshot;
pub mod sticky;
pub mod tls;
pub mod upgrade;
pub mod upstream;
pub mod wildcard;
pub mod workers;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed},
        Arc,
    },
};

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use arc_swap::ArcSwap;

pub use snapshot::Snapshot;

use crate::model::{Model, Protocol, TargetKey, TargetView};

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("starting the L7 proxy's runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Keys(#[from] cookie_keys::KeyFileError),
    #[error("listener '{name}': cannot listen on {addr}: {source}; is another program using it?")]
    Bind {
        name: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("listener '{name}' (https): {source}")]
    Tls { name: String, source: tls::TlsError },
    #[error("listener '{name}': cannot open access_log {path}: {source}")]
    AccessLog {
        name: String,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What every connection shares.
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    /// Sign and verify stickiness cookies; from the key file once a model has stickiness.
    pub keys: ArcSwap<cookie_keys::CookieKeys>,
    /// Bumped after every swap, so upgraded connections re-check their target.
    pub changed: tokio::sync::watch::Sender<u64>,
    /// Rotates where least-outstanding ties start.
    pub rotation: AtomicU64,
    /// Client connections open, upgraded ones included (see [`context::ConnCtx`]).
    pub connections: Arc<AtomicUsize>,
    /// Set when the daemon stops: connections finish their request in flight and close
    /// (HTTP/2 with GOAWAY); upgraded connections go on.
    pub draining: tokio::sync::watch::Sender<bool>,
    /// Set at the end of a stopping daemon's drain: upgraded connections close too (after a
    /// bump of `changed`).
    pub closing: AtomicBool,
    /// Client connections open under the global limit, and the limit (see [`admission`]).
    pub admitted: Arc<admission::Gate>,
    pub max_connections: usize,
    /// What is logged about HTTP/2 connections sent GOAWAY for their resets (see [`resets`]).
    pub reset_abuse_log: admission::Throttle,
}

/// The TLS configuration of every https listener, by listener name, with the certificate
/// files it was read from. Built by [`listener_tls`] before a model is applied, so that a
/// certificate problem refuses the model instead of leaving a listener unserved.
pub type ListenerTls = BTreeMap<
    String,
    (
        Vec<crate::model::CertificateFiles>,
        Arc<rustls::ServerConfig>,
    ),
>;

/// Reads and checks the certificates of every https listener of `model`. A listener of
/// `reuse` with the same certificate files keeps its configuration; the others are read
/// now (pass none to re-read every file, as a reload does: certificates renewed in place
/// are taken up). The first listener whose certificates fail is the error.
pub fn listener_tls(model: &Model, reuse: Option<&ListenerTls>) -> Result<ListenerTls, ProxyError> {
    let mut configs = ListenerTls::new();
    for listener in model
        .listeners
        .iter()
        .filter(|l| l.protocol == Protocol::Https)
    {
        let kept = reuse
            .and_then(|r| r.get(&listener.name))
            .filter(|(files, _)| *files == listener.certificates);
        let config = match kept {
            Some((_, config)) => Arc::clone(config),
            None => {
                tls::server_config(&listener.certificates).map_err(|source| ProxyError::Tls {
                    name: listener.name.clone(),
                    source,
                })?
            }
        };
        configs.insert(
            listener.name.clone(),
            (listener.certificates.clone(), config),
        );
    }
    Ok(configs)
}

/// What a change of the model needs from the proxy, made ready before the change is applied
/// (see [`Proxy::stage`]): a listening socket for every address not served yet, every
/// listener's access log opened, its certificates read. Committing it cannot fail; dropping it
/// instead undoes it (the new sockets close at once: nothing accepted on them yet).
pub struct Staged {
    listeners: BTreeMap<SocketAddr, StagedListener>,
    tls: ListenerTls,
    /// Read from the key file: the model has stickiness, and the keys were not read yet or
    /// are read again (reload).
    keys: Option<cookie_keys::CookieKeys>,
}

struct StagedListener {
    ctx: context::ListenerCtx,
    /// None: the address is served already, and its socket is kept.
    socket: Option<std::net::TcpListener>,
}

impl Staged {
    /// Whether the model has http or https listeners (so that the proxy must run).
    pub fn serves(&self) -> bool {
        !self.listeners.is_empty()
    }
}

/// What `sluice run` sets for the proxy; None derives each from the machine.
#[derive(Clone, Copy, Debug, Default)]
pub struct Settings {
    /// The limit on client connections over all listeners (`--max-connections`); None
    /// derives it from the open-files limit and the descriptors open when the proxy starts
    /// ([`admission::default_max_connections`]).
    pub max_connections: Option<usize>,
    /// Worker threads (`--proxy-workers`); None: one per CPU the process may run on.
    pub workers: Option<usize>,
    /// The accept queue of each listening socket (`--listen-backlog`); None: the kernel's
    /// ceiling, `net.core.somaxconn`.
    pub listen_backlog: Option<u32>,
}

impl Settings {
    /// The listen backlog to ask for: the setting, or `net.core.somaxconn` (the kernel caps
    /// any larger request at it), or 4096 (its default since Linux 5.4) when unreadable.
    pub fn backlog(&self) -> u32 {
        self.listen_backlog.unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/net/core/somaxconn")
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(4096)
        })
    }
}

/// A listening socket and the tasks accepting on it, one per worker.
struct Bound {
    slot: Arc<context::ListenerSlot>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The listening socket itself (a duplicate of the task's): it stays open when the task
    /// stops accepting, for a successor to take over.
    socket: OwnedFd,
}

impl Drop for Bound {
    fn drop(&mut self) {
        // Stops accepting; connections already accepted carry on.
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The running proxy. Dropping it stops everything.
pub struct Proxy {
    workers: workers::Workers,
    shared: Arc<Shared>,
    carried: snapshot::Carried,
    /// By address: a listener keeps its socket across renames and option changes.
    bound: BTreeMap<SocketAddr, Bound>,
    /// The certificates the https listeners serve, for the next change to reuse.
    tls: ListenerTls,
    /// Whether the stickiness keys came from the key file (else they are ephemeral).
    keys_read: bool,
    generation: u64,
}

impl Proxy {
    /// Starts the proxy's worker threads, with nothing to serve yet.
    pub fn start(settings: &Settings) -> Result<Proxy, ProxyError> {
        let max_connections = match settings.max_connections {
            Some(max) => max,
            None => {
                let (limit, open) = admission::open_files().map_err(ProxyError::Runtime)?;
                let max = admission::default_max_connections(limit, open);
                log::info!("the L7 proxy takes up to {max} client connections at once (open files limit {limit}, {open} open, {} reserved, 2 per connection; sluice run --max-connections sets it)", admission::RESERVED_DESCRIPTORS);
                max
            }
        };
        let count = settings.workers.unwrap_or_else(workers::cpus);
        let workers = workers::Workers::start(count).map_err(ProxyError::Runtime)?;
        log::info!(
            "the L7 proxy runs {count} worker thread(s) (sluice run --proxy-workers sets it)"
        );
        workers.spawn_each(upstream::pool::sweep_forever);
        let (changed, _) = tokio::sync::watch::channel(0);
        let (draining, _) = tokio::sync::watch::channel(false);
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(Snapshot::empty()),
            keys: ArcSwap::from_pointee(cookie_keys::CookieKeys::ephemeral()?),
            changed,
            rotation: AtomicU64::new(0),
            connections: Arc::new(AtomicUsize::new(0)),
            draining,
            closing: AtomicBool::new(false),
            admitted: Arc::default(),
            max_connections,
            reset_abuse_log: admission::Throttle::new(admission::LOG_INTERVAL),
        });
        Ok(Proxy {
            workers,
            shared,
            carried: snapshot::Carried::default(),
            bound: BTreeMap::new(),
            tls: ListenerTls::new(),
            keys_read: false,
            generation: 0,
        })
    }

    /// Makes ready what serving `model`'s http and https listeners needs, before the model
    /// is applied: reads the certificates (all of them again with `reread`, as a reload does,
    /// so that files renewed in place are taken up; otherwise a listener whose certificate
    /// files did not change keeps what `current` serves), reads the stickiness keys from
    /// `key_file` when a target group has stickiness (again with `reread`), opens every access
    /// log, and binds a socket for each address `current` does not listen on yet. The first
    /// thing that fails is the error, and nothing is left behind.
    pub fn stage(
        current: Option<&Proxy>,
        model: &Model,
        reread: bool,
        key_file: &std::path::Path,
    ) -> Result<Staged, ProxyError> {
        Proxy::stage_inheriting(
            current,
            model,
            reread,
            key_file,
            Vec::new(),
            &Settings::default(),
        )
    }

    /// [`Proxy::stage`], taking the listening sockets a predecessor handed over
    /// ([`handover`]) for the addresses they listen on, instead of binding new ones (so a
    /// connection waiting in their accept queues is served). Those no listener wants close.
    /// New and inherited sockets get `settings`' listen backlog.
    pub fn stage_inheriting(
        current: Option<&Proxy>,
        model: &Model,
        reread: bool,
        key_file: &std::path::Path,
        inherited: Vec<std::net::TcpListener>,
        settings: &Settings,
    ) -> Result<Staged, ProxyError> {
        let backlog = settings.backlog();
        let mut inherited: BTreeMap<SocketAddr, std::net::TcpListener> = inherited
            .into_iter()
            .filter_map(|socket| Some((socket.local_addr().ok()?, socket)))
            .collect();
        let reuse = current.filter(|_| !reread).map(|p| &p.tls);
        let tls = listener_tls(model, reuse)?;
        let sticky = model.listeners.iter().any(|l| l.protocol.is_l7())
            && model.target_groups.iter().any(|g| g.stickiness.is_some());
        let keys = match current {
            Some(proxy) if proxy.keys_read && !reread => None,
            _ if sticky => Some(cookie_keys::CookieKeys::load_or_create(key_file)?),
            _ => None,
        };
        let mut listeners = BTreeMap::new();
        for listener in model.listeners.iter().filter(|l| l.protocol.is_l7()) {
            let name = &listener.name;
            let addr = SocketAddr::new(listener.address, listener.port);
            let config = match listener.protocol {
                Protocol::Https => Some(Arc::clone(&tls[name].1)),
                _ => None,
            };
            let sink =
                access_log::Sink::open(listener.access_log.as_deref()).map_err(|source| {
                    ProxyError::AccessLog {
                        name: name.clone(),
                        path: listener.access_log.clone().unwrap_or_default(),
                        source,
                    }
                })?;
            let kept = current.and_then(|p| p.bound.get(&addr));
            let socket = match (kept, inherited.remove(&addr)) {
                (Some(_), _) => None,
                (None, Some(socket)) => {
                    // listen() again on a listening socket only resizes its accept queue
                    // (connections waiting in it stay).
                    socket
                        .set_nonblocking(true)
                        .and_then(|()| socket2::SockRef::from(&socket).listen(backlog as i32))
                        .map_err(|source| ProxyError::Bind {
                            name: name.clone(),
                            addr,
                            source,
                        })?;
                    log::info!("listener '{name}': took over the listening socket on {addr}");
                    Some(socket)
                }
                (None, None) => Some(listen(addr, backlog).map_err(|source| ProxyError::Bind {
                    name: name.clone(),
                    addr,
                    source,
                })?),
            };
            // Counters go on while the name does.
            let counters = kept
                .map(|b| b.slot.load_full())
                .filter(|ctx| ctx.name == *name)
                .map_or_else(Default::default, |ctx| Arc::clone(&ctx.counters));
            let ctx = context::ListenerCtx {
                name: name.clone(),
                protocol: listener.protocol,
                port: listener.port,
                forwarded_port: listener.port.into(),
                counters,
                sink,
                tls: config,
                max_connections: listener.max_connections,
            };
            listeners.insert(addr, StagedListener { ctx, socket });
        }
        Ok(Staged {
            listeners,
            tls,
            keys,
        })
    }

    /// Swaps in the routes of `model` for targets in `views` and serves the listeners
    /// `staged` (from [`Proxy::stage`] with this proxy and the same model) made ready: an
    /// address served before keeps its socket and its connections and serves the listener
    /// as it is now; new addresses start accepting; addresses no longer in the model stop
    /// (their connections carry on).
    pub fn commit(
        &mut self,
        model: &Model,
        views: &BTreeMap<TargetKey, TargetView>,
        staged: Staged,
    ) {
        // Routes first: a renamed listener's connections find their routes by the new name.
        self.update_routes(model, views);
        let mut old = std::mem::take(&mut self.bound);
        for (addr, StagedListener { ctx, socket }) in staged.listeners {
            let ctx = Arc::new(ctx);
            let bound = match (socket, old.remove(&addr)) {
                (None, Some(bound)) => {
                    let before = bound.slot.swap(Arc::clone(&ctx));
                    if before.name != ctx.name {
                        log::info!(
                            "listener '{}' now serves {addr} as '{}', on the same socket",
                            before.name,
                            ctx.name
                        );
                    }
                    bound
                }
                (Some(socket), _) => {
                    let slot = Arc::new(ArcSwap::new(Arc::clone(&ctx)));
                    let shared = Arc::clone(&self.shared);
                    // One listener limit over all workers.
                    let counted = Arc::new(server::Accepting::default());
                    let accepting = self.workers.serve(socket.as_fd(), |socket| {
                        server::accept_loop(
                            socket,
                            Arc::clone(&shared),
                            Arc::clone(&slot),
                            Arc::clone(&counted),
                        )
                    });
                    let (kept, tasks) = match accepting {
                        Ok(tasks) => (OwnedFd::from(socket), tasks),
                        // Duplicating a descriptor or registering a socket with epoll fails
                        // only without memory or descriptors; the listener stays unserved
                        // then, and says so.
                        Err(e) => {
                            log::error!("listener '{}': serving {addr}: {e}", ctx.name);
                            continue;
                        }
                    };
                    log::info!(
                        "listener '{}' ({}) serving on {addr}",
                        ctx.name,
                        ctx.protocol.name()
                    );
                    Bound {
                        slot,
                        tasks,
                        socket: kept,
                    }
                }
                (None, None) => {
                    log::error!(
                        "listener '{}': {addr} was staged as served already, but is not; reload to bind it",
                        ctx.name
                    );
                    continue;
                }
            };
            self.bound.insert(addr, bound);
        }
        for (addr, bound) in old {
            log::info!(
                "listener '{}' stopped listening on {addr}",
                bound.slot.load().name
            );
        }
        self.tls = staged.tls;
        if let Some(keys) = staged.keys {
            self.shared.keys.store(Arc::new(keys));
            self.keys_read = true;
        }
    }

    /// The listening sockets, for a successor ([`handover`]).
    pub fn listening(&self) -> Vec<BorrowedFd<'_>> {
        self.bound.values().map(|b| b.socket.as_fd()).collect()
    }

    /// The daemon stops: no more accepting (the listening sockets stay open, so connection
    /// attempts wait in their accept queues for a successor), and every connection finishes
    /// the request in flight and closes; upgraded connections go on.
    pub fn drain(&mut self) {
        for bound in self.bound.values() {
            for task in &bound.tasks {
                task.abort();
            }
        }
        self.shared.draining.send_replace(true);
    }

    /// Closes the listening sockets (after a hand-over, or when the daemon exits).
    pub fn close_listening(&mut self) {
        self.bound.clear();
    }

    /// Client connections still open, upgraded ones included.
    pub fn open_connections(&self) -> usize {
        self.shared.connections.load(Relaxed)
    }

    /// The end of a drain: upgraded connections close too, with a FIN to both sides.
    pub fn close_tunnels(&mut self) {
        self.shared.closing.store(true, Relaxed);
        self.generation += 1;
        self.shared.changed.send_replace(self.generation);
    }

    /// Only the routes (health changes, drains ending): no listener changes.
    pub fn update_routes(&mut self, model: &Model, views: &BTreeMap<TargetKey, TargetView>) {
        let snapshot = Snapshot::build(model, views, &mut self.carried);
        self.shared.snapshot.store(Arc::new(snapshot));
        self.generation += 1;
        self.shared.changed.send_replace(self.generation);
    }

    /// The numbers for a metrics scrape.
    pub fn stats(&self) -> metrics::ProxyStats {
        metrics::ProxyStats {
            listeners: self
                .bound
                .values()
                .map(|b| {
                    let ctx = b.slot.load();
                    (ctx.name.clone(), ctx.counters.read())
                })
                .collect(),
            groups: self
                .carried
                .groups()
                .map(|(name, c)| (name.clone(), c.read()))
                .collect(),
            targets: self
                .carried
                .targets()
                .map(|(key, c)| (key.clone(), c.read()))
                .collect(),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // The workers stop when `workers` drops, after this.
        self.bound.clear();
    }
}

/// A listening socket on `addr` with IP_FREEBIND, so the proxy can start before the
/// address is configured on an interface (or while it moves between hosts).
fn listen(addr: SocketAddr, backlog: u32) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
        socket.set_freebind_v6(true)?;
    } else {
        socket.set_freebind_v4(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// A model with one https listener `secure` serving `cert` and `key`.
    fn https_model(cert: &std::path::Path, key: &std::path::Path) -> Model {
        Model::parse(
            &format!(
                "[[listener]]\nname = \"secure\"\naddress = \"192.0.2.10\"\nport = 443\nprotocol = \"https\"\ndefault_target_group = \"web\"\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]\n\n\
                 [[target_group]]\nname = \"web\"\nport = 3000\ntargets = [{{ address = \"10.0.1.10\" }}]\n",
                cert.display(),
                key.display()
            ),
            "test",
        )
        .unwrap()
    }

    /// A model with one http listener `name` on 127.0.0.1:`port` answering every request
    /// with `body`, its access log in `log` if given.
    fn http_model(name: &str, port: u16, body: &str, log: Option<&std::path::Path>) -> Model {
        let log = log.map_or(String::new(), |p| {
            format!("access_log = \"{}\"\n", p.display())
        });
        Model::parse(
            &format!(
                "[[listener]]\nname = \"{name}\"\naddress = \"127.0.0.1\"\nport = {port}\nprotocol = \"http\"\ndefault_target_group = \"web\"\n{log}\n\
                 [[listener.rule]]\npriority = 1\npath = [\"/*\"]\naction = {{ type = \"fixed_response\", status = 200, content_type = \"text/plain\", body = \"{body}\" }}\n\n\
                 [[target_group]]\nname = \"web\"\nport = 3000\ntargets = [{{ address = \"10.0.1.10\" }}]\n"
            ),
            "test",
        )
        .unwrap()
    }

    /// A port on 127.0.0.1 nothing listens on (the kernel's pick, released again).
    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// Sends one keep-alive GET on `stream`; the response body.
    fn get(stream: &mut std::net::TcpStream) -> String {
        use std::io::{BufRead, BufReader, Read, Write};
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
            .unwrap();
        let mut reader = BufReader::new(stream);
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
            if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        String::from_utf8(body).unwrap()
    }

    fn serve(proxy: Option<&mut Proxy>, model: &Model) -> Result<(), ProxyError> {
        let staged = Proxy::stage(proxy.as_deref(), model, false, Path::new("/nonexistent"))?;
        proxy.unwrap().commit(model, &BTreeMap::new(), staged);
        Ok(())
    }

    #[test]
    fn a_listener_keeps_its_socket_and_connections_across_renames_and_option_changes() {
        let dir = std::env::temp_dir().join(format!("sluice-proxy-keep-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let mut proxy = Proxy::start(&Settings::default()).unwrap();
        let first = http_model("web", port, "one", None);
        let staged = Proxy::stage(None, &first, true, Path::new("/nonexistent")).unwrap();
        assert!(staged.serves());
        proxy.commit(&first, &BTreeMap::new(), staged);
        let mut kept = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        assert_eq!(get(&mut kept), "one");

        // Renamed, then given an access log: the socket stays, and so does the connection,
        // which is served as the listener is now.
        let log = dir.join("access.log");
        for (i, model) in [
            http_model("www", port, "two", None),
            http_model("www", port, "three", Some(&log)),
            http_model("web", port, "four", None),
        ]
        .iter()
        .enumerate()
        {
            serve(Some(&mut proxy), model).unwrap();
            let body = ["two", "three", "four"][i];
            assert_eq!(get(&mut kept), body);
            let mut fresh = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            assert_eq!(get(&mut fresh), body);
        }
        let lines = std::fs::read_to_string(&log).unwrap();
        assert_eq!(lines.lines().count(), 2, "{lines}");
        assert!(lines.lines().all(|l| l.contains(" www ")), "{lines}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_listener_that_cannot_be_served_is_refused_before_anything_changes() {
        let dir = std::env::temp_dir().join(format!("sluice-proxy-refuse-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let mut proxy = Proxy::start(&Settings::default()).unwrap();
        serve(Some(&mut proxy), &http_model("web", port, "one", None)).unwrap();

        // Another program holds the port a second listener wants.
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let taken_port = taken.local_addr().unwrap().port();
        let mut two = http_model("web", port, "two", None);
        let mut other = two.listeners[0].clone();
        other.name = "other".into();
        other.port = taken_port;
        two.listeners.push(other);
        let err = serve(Some(&mut proxy), &two).unwrap_err();
        assert!(
            err.to_string().starts_with(&format!(
                "listener 'other': cannot listen on 127.0.0.1:{taken_port}: Address already in use"
            )),
            "{err}"
        );
        // An access log that is a directory.
        let err = serve(
            Some(&mut proxy),
            &http_model("web", port, "two", Some(&dir)),
        )
        .unwrap_err();
        assert!(
            err.to_string().starts_with(&format!(
                "listener 'web': cannot open access_log {}: ",
                dir.display()
            )),
            "{err}"
        );
        // Nothing changed: the running listener serves as before.
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        assert_eq!(get(&mut stream), "one");
        // A staged listener that is dropped instead of committed releases its socket at once.
        let port2 = free_port();
        let mut moved = http_model("web", port, "one", None);
        moved.listeners[0].port = port2;
        drop(Proxy::stage(Some(&proxy), &moved, false, Path::new("/nonexistent")).unwrap());
        drop(std::net::TcpListener::bind(("127.0.0.1", port2)).unwrap());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn listener_tls_reads_certificates_before_a_model_is_applied() {
        let dir = std::env::temp_dir().join(format!("sluice-listener-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let rcgen::CertifiedKey { cert, key_pair } =
            rcgen::generate_simple_self_signed(vec!["a.example.com".to_string()]).unwrap();
        let (cert_path, key_path) = (dir.join("a.pem"), dir.join("a.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key_pair.serialize_pem()).unwrap();

        let model = https_model(&cert_path, &key_path);
        let first = listener_tls(&model, None).unwrap();
        assert_eq!(first.keys().collect::<Vec<_>>(), ["secure"]);
        // The same files: kept when reusing, read again otherwise.
        let kept = listener_tls(&model, Some(&first)).unwrap();
        assert!(Arc::ptr_eq(&kept["secure"].1, &first["secure"].1));
        let reread = listener_tls(&model, None).unwrap();
        assert!(!Arc::ptr_eq(&reread["secure"].1, &first["secure"].1));

        let missing = dir.join("missing.key");
        let err = listener_tls(&https_model(&cert_path, &missing), Some(&first)).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("listener 'secure' (https): cannot read the key file ")
                && text.contains(&missing.display().to_string()),
            "{text}"
        );
        assert!(listener_tls(&Model::default(), None).unwrap().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
