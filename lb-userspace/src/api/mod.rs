//! The daemon's control API: HTTP/1.1 with JSON bodies on a Unix socket that only root can
//! open, so `curl --unix-socket /run/sluice/sluice.sock http://sluice/v1/stats` works.
//!
//! | method and path  | answer                                              |
//! |------------------|-----------------------------------------------------|
//! | `GET /v1/stats`  | 200, a [`StatsReport`]                              |
//!
//! Errors are `{"error": "..."}`: 404 for an unknown path, 405 (with `Allow`) for a method the
//! path does not take, 500 when the daemon cannot read its maps.
//!
//! The server runs on the daemon's single-threaded runtime and asks a [`Backend`] (the daemon's
//! controller) for answers, so a request never races a reload: each handler runs to completion
//! between two awaits.

pub mod client;
pub mod server;
mod stats;

pub use client::ClientError;
pub use server::{Backend, BindError, SocketFile};
pub use stats::{
    CollectError, CounterStats, ListenerStats, StatsReport, TargetStats, TargetStatus,
};

/// Where `sluice run` listens and `sluice stats` asks unless told otherwise (`--socket`).
pub const DEFAULT_SOCKET: &str = "/run/sluice/sluice.sock";

/// The path of the statistics endpoint.
pub const STATS_PATH: &str = "/v1/stats";
