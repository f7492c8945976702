//! Whether `MADV_COLLAPSE` may take a process's memory at all: the process-wide opt-out
//! (`prctl(PR_SET_THP_DISABLE)`) and what each VMA allows, as /proc shows them
//! (Documentation/filesystems/proc.rst: `THP_enabled` in status, `VmFlags` in smaps).
//!
//! The kernel's rules are in `mm/huge_memory.c` `__thp_vma_allowable_orders` (called with
//! `TVA_FORCED_COLLAPSE` from `mm/khugepaged.c` `madvise_collapse`) and `thp_vma_suitable_order`:
//! the VMA must not be `VM_NOHUGEPAGE`, the process must not have THP disabled, and one VMA
//! must cover the whole PMD-aligned 2 MiB range.

use std::{io, path::PathBuf};

use collapse_common::consts::PMD_SIZE;
use procfs::{
    ProcError,
    process::{MMPermissions, MMapPath, Process, VmFlags},
};

use super::AccessDenied;

#[derive(Debug, thiserror::Error)]
pub enum EligibilityError {
    #[error("no process with pid {pid}")]
    NoProcess { pid: i32 },
    #[error(transparent)]
    Denied(#[from] AccessDenied),
    #[error("reading {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("{}: malformed: {what}", path.display())]
    Parse { path: PathBuf, what: String },
}

type Result<T> = std::result::Result<T, EligibilityError>;

/// Whether `pid` has THP disabled for all of its memory: `THP_enabled: 0` in its status, set by
/// `prctl(PR_SET_THP_DISABLE, 1, 0)` (`fs/proc/array.c` `task_thp_status`). MADV_COLLAPSE
/// fails with EINVAL on every range of such a process. The 6.18 variant
/// `PR_THP_DISABLE_EXCEPT_ADVISED` leaves `THP_enabled: 1` and does not stop MADV_COLLAPSE.
pub fn thp_disabled(pid: i32) -> Result<bool> {
    let path = || PathBuf::from(format!("/proc/{pid}/status"));
    let status = Process::new(pid)
        .and_then(|p| p.status())
        .map_err(|e| proc_error(pid, path(), e))?;
    // Kernels without CONFIG_TRANSPARENT_HUGEPAGE print no line; nothing is disabled by prctl
    // there (MADV_COLLAPSE itself is then missing and fails on its own).
    Ok(status.thp_enabled == Some(false))
}

/// What one VMA allows MADV_COLLAPSE to do with the PMD region at an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmaVerdict {
    /// One anonymous private VMA covers the region and allows THP.
    Eligible,
    /// `MADV_NOHUGEPAGE` (`nh`): the process asked for no huge pages here.
    NoHugePage,
    /// No VMA covers the whole 2 MiB: the region is split between VMAs or hangs over an end.
    NotCovered,
    /// Not anonymous private memory (file, shmem), or a mapping THP never applies to (hugetlb,
    /// PFN or I/O mappings, mixed maps).
    Unsuitable,
    /// No VMA overlaps the region at all.
    Unmapped,
}

/// One VMA of smaps, reduced to what the verdict needs.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Vma {
    start: u64,
    end: u64,
    anonymous: bool,
    flags: VmFlags,
}

/// The VMAs of one process as smaps showed them once: read it once per pass, since the kernel
/// walks every page table of the process to print smaps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CollapseVmas {
    /// Ascending, non-overlapping (smaps prints them in address order).
    vmas: Vec<Vma>,
}

impl CollapseVmas {
    /// `/proc/<pid>/smaps` now.
    pub fn read(pid: i32) -> Result<Self> {
        let path = || PathBuf::from(format!("/proc/{pid}/smaps"));
        let maps = Process::new(pid)
            .and_then(|p| p.smaps())
            .map_err(|e| proc_error(pid, path(), e))?;
        let mut vmas: Vec<Vma> = maps
            .iter()
            .map(|m| Vma {
                start: m.address.0,
                end: m.address.1,
                // The same test as `pagemap::anon_vmas`, whose regions the plans come from.
                anonymous: m.inode == 0
                    && m.perms.contains(MMPermissions::PRIVATE)
                    && match &m.pathname {
                        MMapPath::Anonymous
                        | MMapPath::Heap
                        | MMapPath::Stack
                        | MMapPath::TStack(_) => true,
                        MMapPath::Other(name) => name.starts_with("anon:"),
                        _ => false,
                    },
                flags: m.extension.vm_flags,
            })
            .collect();
        vmas.sort_by_key(|v| v.start);
        Ok(Self { vmas })
    }

    /// The verdict for the PMD region starting at `addr` (PMD-aligned).
    pub fn verdict(&self, addr: u64) -> VmaVerdict {
        let end = addr + PMD_SIZE;
        let first = self.vmas.partition_point(|v| v.end <= addr);
        let mut overlapping = self.vmas[first..].iter().take_while(|v| v.start < end);
        let Some(vma) = overlapping.next() else {
            return VmaVerdict::Unmapped;
        };
        // MADV_NOHUGEPAGE is the process's own word: say it even when the region is also
        // split, so it reads as the process's choice.
        if vma.flags.contains(VmFlags::NH) {
            return VmaVerdict::NoHugePage;
        }
        if !vma.anonymous
            || vma
                .flags
                .intersects(VmFlags::HT | VmFlags::PF | VmFlags::IO | VmFlags::MM)
        {
            return VmaVerdict::Unsuitable;
        }
        if vma.start > addr || vma.end < end {
            return VmaVerdict::NotCovered;
        }
        VmaVerdict::Eligible
    }

    /// How many VMAs smaps listed.
    pub fn len(&self) -> usize {
        self.vmas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.vmas.is_empty()
    }
}

fn proc_error(pid: i32, path: PathBuf, e: ProcError) -> EligibilityError {
    match e {
        ProcError::NotFound(_) => EligibilityError::NoProcess { pid },
        ProcError::PermissionDenied(p) => AccessDenied::of(p.unwrap_or(path)).into(),
        ProcError::Io(source, _) if source.raw_os_error() == Some(libc::ESRCH) => {
            EligibilityError::NoProcess { pid }
        }
        ProcError::Io(source, p) => EligibilityError::Read {
            path: p.unwrap_or(path),
            source,
        },
        // An Incomplete read is what a process exiting mid-read leaves.
        ProcError::Incomplete(_) if !std::path::Path::new(&format!("/proc/{pid}")).exists() => {
            EligibilityError::NoProcess { pid }
        }
        other => EligibilityError::Parse {
            path,
            what: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = PMD_SIZE;

    fn vma(start: u64, end: u64, anonymous: bool, flags: VmFlags) -> Vma {
        Vma {
            start,
            end,
            anonymous,
            flags,
        }
    }

    #[test]
    fn verdicts() {
        let rw = VmFlags::RD | VmFlags::WR;
        let vmas = CollapseVmas {
            vmas: vec![
                vma(2 * M, 6 * M, true, rw),
                vma(6 * M, 7 * M - 4096, true, rw),
                vma(8 * M, 10 * M, true, rw | VmFlags::NH),
                vma(10 * M, 12 * M, false, rw),
                vma(12 * M, 14 * M, true, rw | VmFlags::HG),
                vma(14 * M, 16 * M, true, rw | VmFlags::PF),
            ],
        };
        assert_eq!(vmas.verdict(2 * M), VmaVerdict::Eligible);
        assert_eq!(vmas.verdict(4 * M), VmaVerdict::Eligible);
        // The region at 6M ends one page past the second VMA.
        assert_eq!(vmas.verdict(6 * M), VmaVerdict::NotCovered);
        assert_eq!(vmas.verdict(8 * M), VmaVerdict::NoHugePage);
        assert_eq!(vmas.verdict(10 * M), VmaVerdict::Unsuitable);
        assert_eq!(vmas.verdict(12 * M), VmaVerdict::Eligible);
        assert_eq!(vmas.verdict(14 * M), VmaVerdict::Unsuitable);
        assert_eq!(vmas.verdict(0), VmaVerdict::Unmapped);
        assert_eq!(vmas.verdict(20 * M), VmaVerdict::Unmapped);
        // A region whose start is a hole but whose tail is mapped.
        let tail = CollapseVmas {
            vmas: vec![vma(M + 4096, 2 * M, true, rw)],
        };
        assert_eq!(tail.verdict(M), VmaVerdict::NotCovered);
    }

    #[test]
    fn ourselves() {
        let me = std::process::id() as i32;
        assert!(!thp_disabled(me).unwrap());
        let vmas = CollapseVmas::read(me).unwrap();
        assert!(!vmas.is_empty());
        assert!(matches!(
            thp_disabled(4_194_305),
            Err(EligibilityError::NoProcess { .. })
        ));
        assert!(matches!(
            CollapseVmas::read(4_194_305),
            Err(EligibilityError::NoProcess { .. })
        ));
    }
}
