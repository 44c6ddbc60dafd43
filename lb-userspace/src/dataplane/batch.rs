//! Batched reads of a BPF hash map (`BPF_MAP_LOOKUP_BATCH`, which aya does not wrap): one
//! syscall per few thousand entries instead of two per entry, so that walking a table of
//! millions of entries costs tens of milliseconds, not seconds. Also the single-entry delete
//! the sweep needs, by file descriptor.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
};

use bytemuck::Pod;

const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// The `map_elem` member of `union bpf_attr`, for a delete.
#[repr(C)]
#[derive(Default)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// Where a walk of a hash map stands: the kernel's opaque position (a bucket index).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cursor(Option<u32>);

impl Cursor {
    pub fn at_start(self) -> bool {
        self.0.is_none()
    }
}

/// Reads up to `keys.len()` entries after `cursor` into `keys` and `values` (of equal
/// length); returns how many were read and the cursor for the next call, or
/// `Cursor::default()` when the walk is complete. The buffer must hold at least one hash
/// bucket's entries (a few thousand is plenty); the kernel answers ENOSPC otherwise.
pub fn lookup<K: Pod, V: Pod>(
    fd: BorrowedFd<'_>,
    cursor: Cursor,
    keys: &mut [K],
    values: &mut [V],
) -> io::Result<(usize, Cursor)> {
    assert_eq!(keys.len(), values.len());
    let mut out_batch = 0u32;
    let in_batch = cursor.0;
    let mut attr = BatchAttr {
        in_batch: in_batch.as_ref().map_or(0, |b| b as *const u32 as u64),
        out_batch: &mut out_batch as *mut u32 as u64,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count: u32::try_from(keys.len()).expect("batches are small"),
        map_fd: fd.as_raw_fd() as u32,
        ..BatchAttr::default()
    };
    // SAFETY: the attribute points at live buffers of `count` keys and values (and the two
    // batch tokens), which the kernel writes within those bounds.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_BATCH,
            &mut attr as *mut BatchAttr,
            std::mem::size_of::<BatchAttr>(),
        )
    };
    let read = attr.count as usize;
    if ret == 0 {
        return Ok((read, Cursor(Some(out_batch))));
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        // The end of the map: `count` holds what this last call read.
        Some(libc::ENOENT) => Ok((read, Cursor::default())),
        _ => Err(e),
    }
}

/// Deletes `key`; a key that is not there (deleted meanwhile) is not an error.
pub fn delete<K: Pod>(fd: BorrowedFd<'_>, key: &K) -> io::Result<()> {
    let mut attr = ElemAttr {
        map_fd: fd.as_raw_fd() as u32,
        key: key as *const K as u64,
        ..ElemAttr::default()
    };
    // SAFETY: the attribute points at a live key of the map's key size.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_DELETE_ELEM,
            &mut attr as *mut ElemAttr,
            std::mem::size_of::<ElemAttr>(),
        )
    };
    if ret == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENOENT) => Ok(()),
        _ => Err(e),
    }
}
