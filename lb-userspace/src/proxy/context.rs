//! What a client connection carries through its requests and, once upgraded, its tunnel:
//! the listener it came in on, as it is now, and the client.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering::Relaxed},
        Arc,
    },
};

use super::{access_log::Sink, admission::Permit, conn::ConnState, metrics::ListenerCounters};
use crate::model::Protocol;

/// The listener a connection came in on.
#[derive(Debug)]
pub struct ListenerCtx {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    /// `port` as the value of the X-Forwarded-Port header (made once; cloning it shares it).
    pub forwarded_port: hyper::header::HeaderValue,
    pub counters: Arc<ListenerCounters>,
    pub sink: Sink,
    /// https listeners: the certificates (by SNI) and ALPN.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Client connections open at once on the listener (see [`super::admission`]); None:
    /// only the global limit.
    pub max_connections: Option<usize>,
}

/// What serves a listening socket now: swapped whole when a change renames the listener or
/// changes its options, so the socket, and the connections it accepted, carry on.
pub type ListenerSlot = arc_swap::ArcSwap<ListenerCtx>;

/// One client connection.
#[derive(Debug)]
pub struct ConnCtx {
    /// The listener at accept time: its counters count the connection.
    opened: Arc<ListenerCtx>,
    /// The listener now (its name finds the routes; its sink takes the access log lines).
    slot: Arc<ListenerSlot>,
    pub peer: SocketAddr,
    pub state: Arc<ConnState>,
    /// Negotiated TLS cipher and protocol, for the access log.
    pub tls: Option<(String, String)>,
    /// Every connection of the proxy (`Shared::connections`), for a stopping daemon's drain.
    census: Arc<AtomicUsize>,
    /// Its places under the connection limits, held until the connection (or its tunnel)
    /// closes.
    _permit: Permit,
}

impl ConnCtx {
    /// `opened`: what `slot` held when the connection was accepted; `census` counts the
    /// proxy's open connections; `permit`: its places under the connection limits.
    pub fn new(
        opened: Arc<ListenerCtx>,
        slot: Arc<ListenerSlot>,
        peer: SocketAddr,
        state: Arc<ConnState>,
        tls: Option<(String, String)>,
        census: Arc<AtomicUsize>,
        permit: Permit,
    ) -> ConnCtx {
        opened.counters.new_connections.fetch_add(1, Relaxed);
        opened.counters.active_connections.fetch_add(1, Relaxed);
        census.fetch_add(1, Relaxed);
        ConnCtx {
            opened,
            slot,
            peer,
            state,
            tls,
            census,
            _permit: permit,
        }
    }

    /// The listener as it is now, after any change since the connection was accepted.
    pub fn listener(&self) -> Arc<ListenerCtx> {
        self.slot.load_full()
    }

    /// Whether the connection is TLS (the listener's protocol when it was accepted).
    pub fn https(&self) -> bool {
        self.opened.protocol == Protocol::Https
    }

    pub fn proto(&self) -> &'static str {
        match self.opened.protocol {
            Protocol::Https => "https",
            _ => "http",
        }
    }
}

impl Drop for ConnCtx {
    // Held by the connection and by an upgraded tunnel: the last one counts it closed.
    fn drop(&mut self) {
        self.opened
            .counters
            .active_connections
            .fetch_sub(1, Relaxed);
        self.census.fetch_sub(1, Relaxed);
    }
}
