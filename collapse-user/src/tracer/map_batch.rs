//! `BPF_MAP_LOOKUP_BATCH` (Linux 5.6+; `include/uapi/linux/bpf.h`, served for hash maps by
//! `__htab_map_lookup_and_delete_batch` in `kernel/bpf/hashtab.c`): a whole hash map in a few
//! bpf(2) calls, where aya 0.14, which has no batch operations, needs a `get_next_key` and a
//! lookup per entry.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
};

/// `enum bpf_cmd` BPF_MAP_LOOKUP_BATCH.
const BPF_MAP_LOOKUP_BATCH: libc::c_int = 24;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Debug, Default)]
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

const _: () = assert!(size_of::<BatchAttr>() == 56);

/// Entries asked for per call. A hash map's batch ends at a bucket boundary, so a call may
/// return fewer; a bucket larger than this (ENOSPC) doubles it.
const CHUNK: usize = 4096;

/// Every (key, value) of the hash map `fd` (a plain, not per-CPU, hash map whose keys are `K`
/// and values `V`). `Err` with `ENOSYS`/`EINVAL`/`ENOTSUPP` when the kernel has no batch
/// lookup for it: the caller then iterates.
pub(crate) fn lookup_all<K: aya::Pod, V: aya::Pod>(fd: BorrowedFd<'_>) -> io::Result<Vec<(K, V)>> {
    let mut out = Vec::new();
    let mut chunk = CHUNK;
    // The hash map's batch token is a bucket index (u32); 8 bytes leave room.
    let mut token_in = [0u8; 8];
    let mut token_out = [0u8; 8];
    let mut first = true;
    loop {
        let mut keys = vec![0u8; chunk * size_of::<K>()];
        let mut values = vec![0u8; chunk * size_of::<V>()];
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                token_in.as_mut_ptr() as u64
            },
            out_batch: token_out.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` is a valid bpf_attr prefix for this command; the key and value buffers
        // hold `count` elements each and the batch tokens 8 bytes, all alive for the call.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                size_of::<BatchAttr>() as u32,
            )
        };
        let err = (ret < 0).then(io::Error::last_os_error);
        let done = match &err {
            None => false,
            // The end: `count` says how many the last call still filled.
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
            Some(e) if e.raw_os_error() == Some(libc::ENOSPC) && chunk < 1 << 20 => {
                chunk *= 2;
                continue;
            }
            Some(_) => return Err(err.unwrap_or_else(|| io::Error::other("bpf"))),
        };
        let n = attr.count as usize;
        out.reserve(n);
        for i in 0..n {
            // SAFETY: the kernel wrote `n` whole keys and values; `K` and `V` are plain data.
            let (k, v) = unsafe {
                (
                    std::ptr::read_unaligned(keys.as_ptr().add(i * size_of::<K>()).cast::<K>()),
                    std::ptr::read_unaligned(values.as_ptr().add(i * size_of::<V>()).cast::<V>()),
                )
            };
            out.push((k, v));
        }
        if done {
            return Ok(out);
        }
        token_in = token_out;
        first = false;
    }
}
