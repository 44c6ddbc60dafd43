//! The L7 proxy for http and https listeners.
//!
//! Pure parts, unit-tested without sockets: [`wildcard`] (ALB's `*`/`?` patterns),
//! [`rules`] (conditions and actions), [`balance`] (smooth weighted round robin, least
//! outstanding requests), [`sticky`] (signed stickiness cookies), [`redirect`] (redirect
//! templates), [`headers`] (hop-by-hop and X-Forwarded-*), [`snapshot`] (the routing state
//! built from the model), [`access_log`] and [`metrics`].
//!
//! I/O: [`server`] (accept, hyper, limits), [`forward`] (one request to its target),
//! [`upgrade`] (WebSocket tunnels), all on the proxy's own multi-thread runtime, reading the
//! snapshot the daemon swaps in after every change ([`Proxy::update`]).

pub mod access_log;
pub mod balance;
pub mod body;
pub mod conn;
pub mod context;
pub mod forward;
pub mod headers;
pub mod metrics;
pub mod redirect;
pub mod rules;
pub mod server;
pub mod snapshot;
pub mod sticky;
pub mod tls;
pub mod upgrade;
pub mod wildcard;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{atomic::AtomicU64, Arc},
};

use arc_swap::ArcSwap;

pub use snapshot::Snapshot;

use crate::model::{Model, Protocol, TargetKey, TargetView};

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("starting the L7 proxy's runtime: {0}")]
    Runtime(std::io::Error),
    #[error("drawing the stickiness key: {0}")]
    Key(std::io::Error),
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
    /// Signs stickiness cookies; drawn at start, never stored.
    pub key: sticky::StickyKey,
    pub client: forward::TargetClient,
    /// Bumped after every swap, so upgraded connections re-check their target.
    pub changed: tokio::sync::watch::Sender<u64>,
    /// Rotates where least-outstanding ties start.
    pub rotation: AtomicU64,
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

/// A bound listener: what it was bound for, and its accept task.
struct Bound {
    addr: SocketAddr,
    protocol: Protocol,
    access_log: Option<PathBuf>,
    ctx: Arc<context::ListenerCtx>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Bound {
    fn drop(&mut self) {
        // Stops accepting; connections already accepted carry on.
        self.task.abort();
    }
}

/// The running proxy. Dropping it stops everything.
pub struct Proxy {
    runtime: Option<tokio::runtime::Runtime>,
    shared: Arc<Shared>,
    carried: snapshot::Carried,
    bound: BTreeMap<String, Bound>,
    generation: u64,
}

impl Proxy {
    /// Starts the proxy's runtime (its own worker threads), with nothing to serve yet.
    pub fn start() -> Result<Proxy, ProxyError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name("sluice-proxy")
            .enable_all()
            .build()
            .map_err(ProxyError::Runtime)?;
        let client = {
            let _entered = runtime.enter();
            forward::target_client()
        };
        let (changed, _) = tokio::sync::watch::channel(0);
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(Snapshot::empty()),
            key: sticky::StickyKey::random().map_err(ProxyError::Key)?,
            client,
            changed,
            rotation: AtomicU64::new(0),
        });
        Ok(Proxy {
            runtime: Some(runtime),
            shared,
            carried: snapshot::Carried::default(),
            bound: BTreeMap::new(),
            generation: 0,
        })
    }

    /// Swaps in the routes of `model` for targets in `views`, then binds listeners that are
    /// new or moved and closes those that are gone; https listeners serve with their
    /// configuration in `tls` (from [`listener_tls`]; one already bound takes it for its next
    /// connections). Every listener that can be bound is; the errors of the others are
    /// returned.
    pub fn update(
        &mut self,
        model: &Model,
        views: &BTreeMap<TargetKey, TargetView>,
        tls: &ListenerTls,
    ) -> Vec<ProxyError> {
        let snapshot = Snapshot::build(model, views, &mut self.carried);
        self.shared.snapshot.store(Arc::new(snapshot));
        self.generation += 1;
        self.shared.changed.send_replace(self.generation);
        self.bind(model, tls)
    }

    /// Only the routes (health changes, drains ending): no listener changes.
    pub fn update_routes(&mut self, model: &Model, views: &BTreeMap<TargetKey, TargetView>) {
        let snapshot = Snapshot::build(model, views, &mut self.carried);
        self.shared.snapshot.store(Arc::new(snapshot));
        self.generation += 1;
        self.shared.changed.send_replace(self.generation);
    }

    fn bind(&mut self, model: &Model, tls: &ListenerTls) -> Vec<ProxyError> {
        let mut errors = Vec::new();
        let wanted: BTreeMap<&str, &crate::model::Listener> = model
            .listeners
            .iter()
            .filter(|l| l.protocol.is_l7())
            .map(|l| (l.name.as_str(), l))
            .collect();
        self.bound.retain(|name, bound| {
            wanted.get(name.as_str()).is_some_and(|l| {
                bound.addr == SocketAddr::new(l.address, l.port)
                    && bound.protocol == l.protocol
                    && bound.access_log == l.access_log
            })
        });
        let runtime = self.runtime.as_ref().expect("running until dropped");
        for (name, listener) in wanted {
            let config = match listener.protocol {
                Protocol::Https => match tls.get(name) {
                    Some((_, config)) => Some(Arc::clone(config)),
                    None => {
                        errors.push(ProxyError::Tls {
                            name: name.to_string(),
                            source: tls::TlsError::NotLoaded,
                        });
                        continue;
                    }
                },
                _ => None,
            };
            if let Some(bound) = self.bound.get(name) {
                if let (Some(slot), Some(config)) = (&bound.ctx.tls, config) {
                    slot.store(config);
                }
                continue;
            }
            let addr = SocketAddr::new(listener.address, listener.port);
            let tls = config.map(ArcSwap::new);
            let sink = match access_log::Sink::open(listener.access_log.as_deref()) {
                Ok(sink) => sink,
                Err(source) => {
                    errors.push(ProxyError::AccessLog {
                        name: name.to_string(),
                        path: listener.access_log.clone().unwrap_or_default(),
                        source,
                    });
                    continue;
                }
            };
            let _entered = runtime.enter();
            let socket = match listen(addr).and_then(tokio::net::TcpListener::from_std) {
                Ok(socket) => socket,
                Err(source) => {
                    errors.push(ProxyError::Bind {
                        name: name.to_string(),
                        addr,
                        source,
                    });
                    continue;
                }
            };
            let ctx = Arc::new(context::ListenerCtx {
                name: name.to_string(),
                protocol: listener.protocol,
                port: listener.port,
                counters: Arc::new(metrics::ListenerCounters::default()),
                sink,
                tls,
            });
            let task = runtime.spawn(server::accept_loop(
                socket,
                Arc::clone(&self.shared),
                Arc::clone(&ctx),
            ));
            log::info!(
                "listener '{name}' ({}) serving on {addr}",
                listener.protocol.name()
            );
            self.bound.insert(
                name.to_string(),
                Bound {
                    addr,
                    protocol: listener.protocol,
                    access_log: listener.access_log.clone(),
                    ctx,
                    task,
                },
            );
        }
        errors
    }

    /// The numbers for a metrics scrape.
    pub fn stats(&self) -> metrics::ProxyStats {
        metrics::ProxyStats {
            listeners: self
                .bound
                .iter()
                .map(|(name, b)| (name.clone(), b.ctx.counters.read()))
                .collect(),
            groups: self
                .carried
                .groups()
                .map(|(name, c)| (name.clone(), c.read()))
                .collect(),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.bound.clear();
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A listening socket on `addr` with IP_FREEBIND, so the proxy can start before the
/// address is configured on an interface (or while it moves between hosts).
fn listen(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
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
    socket.listen(1024)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

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
