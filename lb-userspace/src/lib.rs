//! sluice's userspace: loading and attaching the XDP program, reading its counters, and (in
//! later stages) the controller, health checker, control API and L7 proxy.

pub mod api;
pub mod bench;
pub mod bpffs;
pub mod controller;
pub mod datapath;
pub mod edit;
pub mod health;
pub mod interface;
pub mod maglev;
pub mod maps;
pub mod metrics;
pub mod model;
pub mod model_lines;
pub mod neighbors;
pub mod pins;
pub mod proxy;
pub mod rates;
pub mod saved;
pub mod snat;
pub mod stats;
