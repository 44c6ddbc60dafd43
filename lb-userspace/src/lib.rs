//! sluice's library: everything `sluice` does, grouped by role. The binary (`main.rs`,
//! `cli/`) only parses arguments and calls in here.
//!
//! - `model`: the declarative model (listeners, rules, target groups, targets), its
//!   validation and the run-time edits made to it;
//! - `controller`: keeps the data plane in step with the model and the targets' health,
//!   through the `dataplane::Dataplane` seam;
//! - `dataplane`: the kernel side: loading and attaching the XDP program, its maps, pins and
//!   saved state, counters, next hops;
//! - `daemon`: `sluice run`'s event loop, reloads, changes and health events;
//! - `announce`: announcing the listener addresses through BIRD (BGP), for several nodes;
//! - `api`: the control API on a Unix socket and the Prometheus endpoint;
//! - `proxy`: the L7 proxy; `health`: health checks; `bench`: `sluice bench`;
//! - `maglev` (table building) and `rates` (traffic rates) are pure helpers.

pub mod announce;
pub mod api;
pub mod bench;
pub mod controller;
pub mod daemon;
pub mod dataplane;
pub mod health;
pub mod maglev;
pub mod model;
pub mod proxy;
pub mod rates;
pub mod store;
