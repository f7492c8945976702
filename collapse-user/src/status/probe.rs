//! The probes `status` runs for real: reading our own pagemap, and collapsing 2 MiB of our own
//! memory with MADV_COLLAPSE.

use std::path::Path;

use collapse_common::consts::{MADV_COLLAPSE, PMD_SIZE};

use crate::{
    kernel::{
        btf::KernelBtf,
        features::{FORCED, Feature},
        memcg,
        pagemap::{PagemapError, PagemapReader},
        tracefs::TracepointFormat,
    },
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

/// Whether this kernel has it, without loading anything (`collapse status`; the tracer
/// decides by loading). `tracefs`: the mounted tracefs, if any. `Err`: why not.
pub fn feature(feature: Feature, tracefs: Option<&Path>) -> Result<(), String> {
    if feature.forced_off() {
        return Err(FORCED.into());
    }
    match feature {
        Feature::BtfTracepoints => KernelBtf::open()
            .map_err(|e| e.to_string())?
            .raw_tracepoint_params("page_fault_user")
            .map_err(|e| e.to_string())?
            .map(|_| ())
            .ok_or_else(|| "BTF has no btf_trace_page_fault_user".into()),
        Feature::TaskIter => {
            let btf = KernelBtf::open().map_err(|e| e.to_string())?;
            if !btf.has_func("bpf_iter_task") {
                return Err("BTF has no bpf_iter_task (task iterators)".into());
            }
            btf.member_offset("task_struct", "tgid")
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
        Feature::ExitGroupDead => {
            let root = tracefs.ok_or("tracefs is not mounted")?;
            TracepointFormat::read(root, "sched", "sched_process_exit")
                .map_err(|e| e.to_string())?
                .offset("group_dead")
                .map(|_| ())
                .map_err(|_| "sched:sched_process_exit has no group_dead (before 6.16)".into())
        }
        Feature::PagemapScan => {
            let mut reader =
                PagemapReader::open(std::process::id() as i32).map_err(|e| e.to_string())?;
            reader.read_regions().map_err(|e| e.to_string())?;
            if reader.uses_pagemap_scan() {
                Ok(())
            } else {
                Err("no PAGEMAP_SCAN ioctl (before 6.7)".into())
            }
        }
        // Since 5.6, older than any kernel collapse loads on; the tracer still falls back
        // when a batch call is refused.
        Feature::MapBatch => Ok(()),
        Feature::CgroupV2Memory => memcg::probe_v2(),
        Feature::InUserFault => KernelBtf::open()
            .and_then(|b| b.bit_member_offset("task_struct", "in_user_fault"))
            .map(|_| ())
            .map_err(|e| e.to_string()),
    }
}
