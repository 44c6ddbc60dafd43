//! The daemon's control API: HTTP/1.1 with JSON bodies on a Unix socket that only root can
//! open, so `curl --unix-socket /run/sluice/sluice.sock http://sluice/v1/stats` works.
//!
//! | method and path  | answer                                              |
//! |------------------|-----------------------------------------------------|
//! | `GET /v1/stats`  | 200, a [`StatsReport`]                              |
//! | `POST /v1/reload` | re-reads `--config` as SIGHUP does; 200, the [`Changes`] |
//! | `POST /v1/targets` | adds a target ([`TargetSpec`]); 200, the [`Changes`] |
//! | `PATCH /v1/targets` | sets a target's weight ([`TargetWeight`]) |
//! | `DELETE /v1/targets` | deregisters a target ([`TargetRef`]): it drains |
//! | `POST /v1/listeners` | adds a listener ([`ListenerSpec`]) |
//! | `DELETE /v1/listeners` | removes a listener ([`ListenerRef`]) |
//! | `GET /v1/node`   | 200, the node's announcements ([`AnnounceStatus`]); 409 without `--bird-routes` |
//! | `POST /v1/node`  | `{"state": "draining"}` withdraws every address (`sluice node drain`), `"serving"` announces again; 200, the status |
//! | `GET /v1/tables` | 200, every tcp/udp listener's Maglev table ([`MaglevTable`]) by name |
//! | `POST /v1/down`  | detaches, removes the pins and stops the daemon (`sluice down`) |
//! | `GET /v1/config` | 200, a [`RunningConfig`]: the running model as TOML, run-time changes included |
//!
//! Changes edit the daemon's model, which is validated as a whole like the file and applied
//! like a reload; they last until the next reload, which re-reads the file. In store mode
//! (`sluice run --store`) they are written to the shared store instead and answered once this
//! node applied them (their answer's `stored` names the store and revision); 503 when the
//! store cannot be reached.
//!
//! Errors are `{"error": "..."}`: 400 for a body or change that does not validate (or a file
//! that does not, on reload), 404 for an unknown path, target group, target or listener, 405
//! (with `Allow`) for a method the path does not take, 409 for something that exists already
//! or that the daemon cannot take (e.g. more listeners than `--max-listeners`), 500 when the
//! daemon cannot read or write its maps.
//!
//! [`Changes`]: crate::controller::Changes
//! [`AnnounceStatus`]: crate::announce::AnnounceStatus
//! [`MaglevTable`]: MaglevTable
//! [`TargetSpec`]: crate::model::edit::TargetSpec
//! [`TargetRef`]: crate::model::edit::TargetRef
//! [`ListenerSpec`]: crate::model::edit::ListenerSpec
//!
//! The server runs on the daemon's single-threaded runtime and asks a [`Backend`] (the daemon's
//! controller) for answers, so a request never races a reload: each handler runs to completion
//! between two awaits.

pub mod client;
pub mod metrics;
pub mod server;
mod stats;
pub mod status_page;

pub use client::ClientError;
pub use server::{Backend, BindError, ControlError, SocketFile};
pub use stats::{
    CollectError, ConnectionTables, CounterStats, HealthTransition, HttpListenerStats,
    ListenerStats, StatsReport, TargetGroupStats, TargetStats, TargetStatus,
    HEALTH_TRANSITIONS_KEPT,
};

/// Where `sluice run` listens and `sluice stats` asks unless told otherwise (`--socket`).
pub const DEFAULT_SOCKET: &str = "/run/sluice/sluice.sock";

/// The path of the statistics endpoint.
pub const STATS_PATH: &str = "/v1/stats";

/// Re-reads the configuration file.
pub const RELOAD_PATH: &str = "/v1/reload";
/// Targets: `POST` adds, `PATCH` sets a weight, `DELETE` deregisters.
pub const TARGETS_PATH: &str = "/v1/targets";
/// Detaches the XDP program, removes the pins and stops the daemon (`sluice down`).
pub const DOWN_PATH: &str = "/v1/down";
/// Listeners: `POST` adds, `DELETE` removes.
pub const LISTENERS_PATH: &str = "/v1/listeners";
/// The node's announcements: `GET` shows them, `POST` drains or resumes the node.
pub const NODE_PATH: &str = "/v1/node";
/// The Maglev tables, as target addresses.
pub const TABLES_PATH: &str = "/v1/tables";

/// A listener's Maglev table as written to the data plane: the target address in each slot.
/// Nodes given the same model have equal tables (ids differ, addresses do not), so ECMP moving
/// a flow between nodes does not move it between targets; `sha256` compares them at a glance.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MaglevTable {
    pub size: usize,
    /// Of the slots, one address per line (`10.0.1.10:3000\n...`).
    pub sha256: String,
    pub slots: Vec<std::net::SocketAddr>,
}

impl MaglevTable {
    pub fn new(slots: Vec<std::net::SocketAddr>) -> MaglevTable {
        use sha2::Digest;
        let mut hasher = sha2::Sha256::new();
        for slot in &slots {
            hasher.update(slot.to_string().as_bytes());
            hasher.update(b"\n");
        }
        let sha256 = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        MaglevTable {
            size: slots.len(),
            sha256,
            slots,
        }
    }
}

/// The body of `POST /v1/node`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRequest {
    pub state: crate::announce::NodeState,
}

/// The running model as configuration text.
pub const CONFIG_PATH: &str = "/v1/config";

/// The answer to `GET /v1/config`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunningConfig {
    /// The configuration file the daemon reloads (`sluice run --config`), if any.
    pub file: Option<std::path::PathBuf>,
    /// The running model as TOML, which reads back into the same model
    /// ([`Model::to_toml`](crate::model::Model::to_toml)).
    pub toml: String,
}

/// The body of `PATCH /v1/targets`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetWeight {
    pub group: String,
    pub address: std::net::IpAddr,
    #[serde(default)]
    pub port: Option<u16>,
    pub weight: u32,
}

/// The body of `DELETE /v1/listeners`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerRef {
    pub name: String,
}
