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
mod l7_hostile;
mod l7_limits;
mod l7_reload;
mod l7_restart;
mod l7_routing;
mod l7_socketio;
mod l7_sticky;
mod l7_support;
mod l7_tls;
mod l7_websocket;
mod metrics;
mod namespaces;
mod packet_harness;
mod packets;
mod run_cli;
mod stats_api;
mod tunnel_decap;
