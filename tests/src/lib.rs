//! Test harnesses for sluice, shared by the integration tests (`src/tests/`, root only) and by
//! `cargo xtask demo`:
//! - [`netns`]: named network namespaces joined by veth pairs or a bridge, processes and
//!   threads inside them, teardown on drop and on panic;
//! - [`servers`]: tiny TCP/HTTP/UDP servers that answer with their own name;
//! - [`packet`]: a frame builder for Ethernet/VLAN/IPv4/IPv6/TCP/UDP/ICMP;
//! - [`checksum`]: an independent checksum verifier for frames the XDP program rewrites.

pub mod checksum;
pub mod http_servers;
pub mod netns;
pub mod packet;
pub mod servers;

#[cfg(test)]
mod tests;
