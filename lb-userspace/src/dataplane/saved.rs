//! The controller's state as a restarted daemon needs it: which names the ids in the kernel
//! maps stand for, which targets are draining and until when, and each target's health. It
//! is saved as JSON in the pinned `STATE` map after every change (layout in
//! `lb_common::state`), so a daemon stopped at any point (even killed) leaves a whole state
//! that matches the maps it pinned.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use aya::maps::{Array, MapData, MapError};
use lb_common::state::{StateHeader, STATE_CHUNK, STATE_HALF, STATE_MAGIC};
use serde::{Deserialize, Serialize};

/// The document format this daemon writes and adopts.
pub const FORMAT: u32 = 1;

/// The `STATE` map as userspace sees it.
pub type StateMap = Array<MapData, [u8; STATE_CHUNK]>;

#[derive(Debug, thiserror::Error)]
pub enum SavedError {
    #[error("the saved state is {len} bytes, more than the {max} bytes the STATE map holds")]
    TooBig { len: usize, max: usize },
    #[error("the saved state has format {found}; this sluice reads format {FORMAT}: run `sluice down` (this drops established flows) and start again")]
    Format { found: u32 },
    #[error("the saved state in the STATE map does not parse ({0}); run `sluice down` (this drops established flows) and start again")]
    Parse(#[from] serde_json::Error),
    #[error("STATE map: {0}")]
    Map(#[from] MapError),
}

/// Everything a new daemon adopts besides the maps themselves.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedState {
    pub listeners: Vec<SavedListener>,
    pub targets: Vec<SavedTarget>,
    pub ids: SavedIds,
    /// The running model's settings, so that the next daemon describes what its first model
    /// changes (absent from an older daemon's state: everything is described as new).
    #[serde(default)]
    pub summary: crate::model::diff::Summary,
    /// Serving or draining (`sluice node drain`): a restart keeps a drained node drained.
    #[serde(default)]
    pub node: crate::announce::NodeState,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedListener {
    pub name: String,
    pub id: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedTarget {
    pub group: String,
    pub addr: SocketAddr,
    pub id: u32,
    pub snat: IpAddr,
    pub kernel_state: u8,
    /// Time left of its deregistration delay when saved; `None`: active.
    pub draining_for: Option<Duration>,
    /// The group's deregistration delay, for a target whose group a new model drops.
    pub deregistration_delay: Duration,
    /// `initial`, `healthy` or `unhealthy`.
    pub health: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedIds {
    pub next_fresh: u32,
    pub quarantined: Vec<u32>,
    pub free: Vec<u32>,
}

/// Where saved bytes go: the `STATE` map, or a vector in unit tests.
pub trait Store {
    fn read(&self, index: u32) -> Result<[u8; STATE_CHUNK], MapError>;
    fn write(&mut self, index: u32, chunk: &[u8; STATE_CHUNK]) -> Result<(), MapError>;
}

impl Store for StateMap {
    fn read(&self, index: u32) -> Result<[u8; STATE_CHUNK], MapError> {
        self.get(&index, 0)
    }

    fn write(&mut self, index: u32, chunk: &[u8; STATE_CHUNK]) -> Result<(), MapError> {
        self.set(index, chunk, 0)
    }
}

/// Writes `state` into the half the header does not name, then flips the header.
pub fn save(store: &mut impl Store, state: &SavedState) -> Result<(), SavedError> {
    let bytes = serde_json::to_vec(state)?;
    let max = STATE_CHUNK * STATE_HALF as usize;
    if bytes.len() > max {
        return Err(SavedError::TooBig {
            len: bytes.len(),
            max,
        });
    }
    let current = header(store)?;
    let half = match current {
        Some(h) if h.half == 0 => 1,
        _ => 0,
    };
    for (i, part) in bytes.chunks(STATE_CHUNK).enumerate() {
        let mut chunk = [0u8; STATE_CHUNK];
        chunk[..part.len()].copy_from_slice(part);
        store.write(first_entry(half) + i as u32, &chunk)?;
    }
    let header = StateHeader {
        magic: STATE_MAGIC,
        half,
        len: bytes.len() as u32,
        format: FORMAT,
    };
    let mut chunk = [0u8; STATE_CHUNK];
    chunk[..size_of::<StateHeader>()].copy_from_slice(bytemuck::bytes_of(&header));
    store.write(0, &chunk)?;
    Ok(())
}

/// The saved state, or `None` when nothing was saved yet.
pub fn load(store: &impl Store) -> Result<Option<SavedState>, SavedError> {
    let Some(header) = header(store)? else {
        return Ok(None);
    };
    if header.format != FORMAT {
        return Err(SavedError::Format {
            found: header.format,
        });
    }
    let len = header.len as usize;
    let mut bytes = Vec::with_capacity(len);
    let mut index = first_entry(header.half);
    while bytes.len() < len {
        let chunk = store.read(index)?;
        let take = (len - bytes.len()).min(STATE_CHUNK);
        bytes.extend_from_slice(&chunk[..take]);
        index += 1;
    }
    Ok(Some(serde_json::from_slice(&bytes)?))
}

fn header(store: &impl Store) -> Result<Option<StateHeader>, SavedError> {
    let chunk = store.read(0)?;
    let header: StateHeader = bytemuck::pod_read_unaligned(&chunk[..size_of::<StateHeader>()]);
    Ok((header.magic == STATE_MAGIC && header.half <= 1).then_some(header))
}

fn first_entry(half: u32) -> u32 {
    1 + half * STATE_HALF
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::memory::MemoryStore as Memory;

    fn state(targets: usize) -> SavedState {
        SavedState {
            listeners: vec![SavedListener {
                name: "web".into(),
                id: 3,
            }],
            targets: (0..targets)
                .map(|i| SavedTarget {
                    group: "web".into(),
                    addr: SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8], 8080)),
                    id: i as u32,
                    snat: IpAddr::from([10, 0, 0, 1]),
                    kernel_state: 1,
                    draining_for: (i % 3 == 0).then(|| Duration::from_millis(1500)),
                    deregistration_delay: Duration::from_secs(300),
                    health: "healthy".into(),
                })
                .collect(),
            ids: SavedIds {
                next_fresh: targets as u32,
                quarantined: vec![7],
                free: vec![],
            },
            summary: Default::default(),
            node: crate::announce::NodeState::Draining,
        }
    }

    #[test]
    fn nothing_saved_reads_as_none() {
        assert_eq!(load(&Memory::new()).unwrap(), None);
    }

    #[test]
    fn a_save_reads_back_across_chunks_and_alternates_halves() {
        let mut store = Memory::new();
        let big = state(4096);
        assert!(serde_json::to_vec(&big).unwrap().len() > 2 * STATE_CHUNK);
        save(&mut store, &big).unwrap();
        assert_eq!(load(&store).unwrap(), Some(big.clone()));
        let first_half = header(&store).unwrap().unwrap().half;
        let small = state(2);
        save(&mut store, &small).unwrap();
        assert_eq!(load(&store).unwrap(), Some(small));
        assert_ne!(header(&store).unwrap().unwrap().half, first_half);
    }

    #[test]
    fn an_interrupted_save_leaves_the_previous_state() {
        let mut store = Memory::new();
        let old = state(10);
        save(&mut store, &old).unwrap();
        // A save that died after writing its half but before the header.
        let half = 1 - header(&store).unwrap().unwrap().half;
        store.0[first_entry(half) as usize] = [b'x'; STATE_CHUNK];
        assert_eq!(load(&store).unwrap(), Some(old));
    }

    #[test]
    fn another_format_is_refused_with_the_fix() {
        let mut store = Memory::new();
        save(&mut store, &state(1)).unwrap();
        store.0[0][12] = 9;
        let e = load(&store).unwrap_err().to_string();
        assert!(e.contains("format 9") && e.contains("sluice down"), "{e}");
    }
}
