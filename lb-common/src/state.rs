//! The controller's saved state. It lives in a pinned map (`STATE`) beside the data plane's
//! maps, so it has their lifetime: a restarted daemon adopts both together, and `sluice down`
//! (or a reboot) removes both together. The XDP program never reads it.
//!
//! Entry 0 is a [`StateHeader`]; entries `1..=STATE_HALF` and `STATE_HALF+1..=2*STATE_HALF`
//! are two halves. A save writes the half the header does not name, then the header: a daemon
//! killed mid-save leaves the previous state whole.

/// Bytes per entry.
pub const STATE_CHUNK: usize = 16384;
/// Entries per half (1 MiB of state each).
pub const STATE_HALF: u32 = 64;
/// Entries of the map: the header and two halves.
pub const STATE_ENTRIES: u32 = 1 + 2 * STATE_HALF;
/// "SLST", marks a written header.
pub const STATE_MAGIC: u32 = 0x534c_5354;

/// Entry 0's first bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct StateHeader {
    pub magic: u32,
    /// Which half holds the state: 0 or 1.
    pub half: u32,
    /// Length in bytes of the saved document.
    pub len: u32,
    /// Format of the document; a daemon refuses to adopt a format it does not know.
    pub format: u32,
}

const _: () = assert!(core::mem::size_of::<StateHeader>() == 16);
