//! What a client connection carries through its requests and, once upgraded, its tunnel:
//! the listener it came in on and the client.

use std::{
    net::SocketAddr,
    sync::{atomic::Ordering::Relaxed, Arc},
};

use super::{access_log::Sink, conn::ConnState, metrics::ListenerCounters};
use crate::model::Protocol;

/// The listener a connection came in on.
#[derive(Debug)]
pub struct ListenerCtx {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub counters: Arc<ListenerCounters>,
    pub sink: Sink,
    /// https listeners: the certificates (by SNI) and ALPN; a reload swaps in new ones.
    pub tls: Option<arc_swap::ArcSwap<rustls::ServerConfig>>,
}

/// One client connection.
#[derive(Debug)]
pub struct ConnCtx {
    pub listener: Arc<ListenerCtx>,
    pub peer: SocketAddr,
    pub state: Arc<ConnState>,
    /// Negotiated TLS cipher and protocol, for the access log.
    pub tls: Option<(String, String)>,
}

impl ConnCtx {
    pub fn new(
        listener: Arc<ListenerCtx>,
        peer: SocketAddr,
        state: Arc<ConnState>,
        tls: Option<(String, String)>,
    ) -> ConnCtx {
        listener.counters.new_connections.fetch_add(1, Relaxed);
        listener.counters.active_connections.fetch_add(1, Relaxed);
        ConnCtx {
            listener,
            peer,
            state,
            tls,
        }
    }

    pub fn proto(&self) -> &'static str {
        match self.listener.protocol {
            Protocol::Https => "https",
            _ => "http",
        }
    }
}

impl Drop for ConnCtx {
    // Held by the connection and by an upgraded tunnel: the last one counts it closed.
    fn drop(&mut self) {
        self.listener
            .counters
            .active_connections
            .fetch_sub(1, Relaxed);
    }
}
