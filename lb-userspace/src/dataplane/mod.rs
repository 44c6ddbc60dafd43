//! The kernel side of sluice: loading and attaching the XDP program (`load`), its maps
//! (`maps`), what is pinned in bpffs (`pins`, `bpffs`) with the controller's saved state
//! (`saved`), the global counters (`counters`), next hops kept resolved (`neighbors`), the
//! source address of `nat` traffic (`snat`) and interface names (`interface`).

pub mod bpffs;
pub mod counters;
pub mod interface;
pub mod load;
pub mod maps;
pub mod neighbors;
pub mod pins;
pub mod saved;
pub mod snat;
