//! How the rest of sluice names a registered target, and what the controller tells the L7
//! proxy about it.

use std::net::SocketAddr;

use crate::health::Health;

/// A target as the data plane knows it: in one target group, at one address and port.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct TargetKey {
    pub group: String,
    pub addr: SocketAddr,
}

/// What the controller knows of a registered target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TargetView {
    pub health: Health,
    /// Deregistered: no new requests; upgraded connections stay until the delay ends.
    pub draining: bool,
}
