//! The integration tests: one binary, one module per area. They need root.

mod balancing;
mod bench;
mod cli_control;
mod decap;
mod forwarding_dsr;
mod forwarding_nat;
mod forwarding_tunnel;
mod icmp;
mod l4_fixture;
mod metrics;
mod namespaces;
mod packet_harness;
mod packets;
mod run_cli;
mod stats_api;
mod tunnel_decap;
