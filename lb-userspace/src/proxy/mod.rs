//! The L7 proxy for http and https listeners.
//!
//! Pure parts, unit-tested without sockets: [`wildcard`] (ALB's `*`/`?` patterns),
//! [`rules`] (conditions and actions), [`balance`] (smooth weighted round robin, least
//! outstanding requests), [`sticky`] (signed stickiness cookies), [`redirect`] (redirect
//! templates), [`headers`] (hop-by-hop and X-Forwarded-*).

pub mod balance;
pub mod headers;
pub mod redirect;
pub mod rules;
pub mod sticky;
pub mod wildcard;
