//! The integration tests: one binary, one module per area. They need root.

mod forwarding_dsr;
mod l4_fixture;
mod namespaces;
mod packet_harness;
mod packets;
mod run_cli;
