//! The probes `status` runs for real: reading our own pagemap, and collapsing 2 MiB of our own
//! memory with MADV_COLLAPSE.

use collapse_common::consts::{MADV_COLLAPSE, PMD_SIZE};

use crate::{
    kernel::pagemap::{PagemapError, PagemapReader},
    workload::{Area, AreaError},
};

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Pagemap(#[from] PagemapError),
    #[error("no anonymous memory found in our own process")]
    NoAnonMemory,
    #[error("no THP support in this kernel")]
    NoThp,
    #[error(transparent)]
    Area(#[from] AreaError),
    #[error("{0} (MADV_COLLAPSE unknown, or THP disabled for this process)")]
    Ineligible(std::io::Error),
    #[error("{0} (no huge page available right now)")]
    NoHugePage(std::io::Error),
    #[error("{0}")]
    Madvise(std::io::Error),
}

/// Whether pagemap of our own process reads with PFNs and kpageflags; Ok(PAGEMAP_SCAN works).
pub(super) fn pagemap() -> Result<bool, ProbeError> {
    let me = std::process::id() as i32;
    let mut reader = PagemapReader::open(me)?;
    if reader.read_regions()?.is_empty() {
        return Err(ProbeError::NoAnonMemory);
    }
    Ok(reader.uses_pagemap_scan())
}

/// Collapses 2 MiB of our own memory with MADV_COLLAPSE (include/uapi/asm-generic/mman-common.h,
/// mm/khugepaged.c madvise_collapse): the real test of whether the executor can work.
pub(super) fn madv_collapse() -> Result<(), ProbeError> {
    let area = Area::map(PMD_SIZE, None)?;
    area.touch(0, 1)?;
    // SAFETY: one 2 MiB-aligned PMD of our own mapping, unmapped when `area` drops.
    let rc = unsafe {
        libc::madvise(
            area.addr() as *mut libc::c_void,
            PMD_SIZE as usize,
            MADV_COLLAPSE as i32,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    Err(match e.raw_os_error() {
        Some(libc::EINVAL) => ProbeError::Ineligible(e),
        Some(libc::EAGAIN | libc::ENOMEM | libc::EBUSY) => ProbeError::NoHugePage(e),
        _ => ProbeError::Madvise(e),
    })
}
