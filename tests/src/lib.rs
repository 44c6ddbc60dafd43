//! Test harnesses for sluice, shared by the integration tests (`src/tests/`, root only) and by
//! `cargo xtask demo`:
//! - [`bird`]: BIRD 2 (BGP) routers and node daemons in namespaces;
//! - [`browser`]: headless Chromium loading a page inside a namespace;
//! - [`etcd`]: etcd in a namespace, for the shared model of several nodes;
//! - [`multinode`]: several sluice nodes behind a BGP/ECMP router, with targets;
//! - [`netns`]: named network namespaces joined by veth pairs or a bridge, processes and
//!   threads inside them, teardown on drop and on panic;
//! - [`servers`]: tiny TCP/HTTP/UDP servers that answer with their own name;
//! - [`packet`]: a frame builder for Ethernet/VLAN/IPv4/IPv6/TCP/UDP/ICMP;
//! - [`checksum`]: an independent checksum verifier for frames the XDP program rewrites;
//! - [`socketio`]: real socket.io servers and clients (Node) for the L7 proxy's tests;
//! - [`tls`]: self-signed certificates and `curl` over TLS for https listeners;
//! - [`http_servers`]: the L7 proxy's targets (HTTP/1.1 by path, WebSocket echo) and the
//!   WebSocket frames its tests speak.

pub mod bird;
pub mod browser;
pub mod checksum;
pub mod etcd;
pub mod http_servers;
pub mod multinode;
pub mod netns;
pub mod packet;
pub mod servers;
pub mod socketio;
pub mod tls;

#[cfg(test)]
mod tests;
