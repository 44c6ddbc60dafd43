//! What each scenario compares, in the order the report shows them.

/// The forwarding scenario's variants: the kernel's floor, nftables DNAT, then sluice's modes.
pub const VARIANTS: &[&str] = &["floor", "nftables", "nat", "dsr", "tunnel"];

/// The L7 scenarios' balancers.
pub const BALANCERS: &[&str] = &["sluice", "nginx", "haproxy"];
