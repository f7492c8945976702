//! The demo's memory: dense, sparse and half-full regions populated over a few seconds.

use std::{process::ExitCode, time::Duration};

use collapse_common::consts::{PAGE_SIZE, PMD_SIZE};
use nix::sys::mman::MmapAdvise;

use super::{Area, WorkloadError};

/// The demo's layout, in 2 MiB regions: 8 dense (every page), 8 sparse (one page in 32),
/// 8 half-full (first half of each region), populated one region set per second so the live
/// view moves; then MADV_HUGEPAGE so khugepaged may collapse what its rules allow. It ends
/// with its memory mapped, as most programs end (the kernel unmaps it at exit, which no
/// syscall tracepoint sees): `trace -- collapse workload demo` has it all in the snapshot,
/// whenever the last tick came. Unmapping first would leave a window before the exit in which
/// a tick sees the memory gone.
pub(super) fn run(hold: u64) -> Result<ExitCode, WorkloadError> {
    const REGIONS: u64 = 8;
    let per_region = PMD_SIZE / PAGE_SIZE;
    let dense = Area::map(REGIONS * PMD_SIZE, Some(MmapAdvise::MADV_NOHUGEPAGE))?;
    let sparse = Area::map(REGIONS * PMD_SIZE, Some(MmapAdvise::MADV_NOHUGEPAGE))?;
    let half = Area::map(REGIONS * PMD_SIZE, Some(MmapAdvise::MADV_NOHUGEPAGE))?;
    for r in 0..REGIONS {
        let base = r * per_region;
        dense.touch(base, base + per_region)?;
        for p in (base..base + per_region).step_by(32) {
            sparse.touch(p, p + 1)?;
        }
        half.touch(base, base + per_region / 2)?;
        std::thread::sleep(Duration::from_millis(400));
    }
    for a in [&dense, &sparse, &half] {
        a.advise(0, a.pages(), MmapAdvise::MADV_HUGEPAGE)?;
    }
    std::thread::sleep(Duration::from_secs(hold));
    for a in [dense, sparse, half] {
        std::mem::forget(a);
    }
    Ok(ExitCode::SUCCESS)
}
