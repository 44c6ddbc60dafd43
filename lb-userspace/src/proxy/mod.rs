//! The L7 proxy for http and https listeners.

pub mod tls;
