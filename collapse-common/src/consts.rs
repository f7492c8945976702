//! Geometry of x86-64 page tables and the fixed names shared by both sides.

/// log2 of the base page size (4 KiB).
pub const PAGE_SHIFT: u32 = 12;
pub const PAGE_SIZE: u64 = 1 << PAGE_SHIFT;
/// log2 of the PMD-mapped size (2 MiB).
pub const PMD_SHIFT: u32 = 21;
pub const PMD_SIZE: u64 = 1 << PMD_SHIFT;
pub const PMD_MASK: u64 = !(PMD_SIZE - 1);
/// PTEs in one PMD region; also the PMD order as a power of two.
pub const PTES_PER_PMD: usize = 512;
pub const PMD_ORDER: u8 = 9;
/// Words of a 512-bit bitmap.
pub const BITMAP_WORDS: usize = PTES_PER_PMD / 64;

/// Highest user-space address on x86-64 with 4-level paging (`TASK_SIZE_MAX`).
pub const USER_ADDR_END: u64 = 0x0000_7fff_ffff_f000;

/// `madvise` advice values that drop pages (`include/uapi/asm-generic/mman-common.h`).
pub const MADV_DONTNEED: u64 = 4;
pub const MADV_FREE: u64 = 8;
pub const MADV_REMOVE: u64 = 9;
/// `madvise(MADV_HUGEPAGE)`: the VMA may get THPs in `madvise` mode.
pub const MADV_HUGEPAGE: u64 = 14;
/// `madvise` advice values that populate pages without a user page fault.
pub const MADV_POPULATE_READ: u64 = 22;
pub const MADV_POPULATE_WRITE: u64 = 23;
/// `MADV_COLLAPSE`: synchronous collapse to PMD size (since 6.1).
pub const MADV_COLLAPSE: u64 = 25;

/// `CLONE_THREAD` (`include/uapi/linux/sched.h`): a new thread, not a new process.
pub const CLONE_THREAD: u64 = 0x0001_0000;

/// `page_fault_user` error code: the fault was a write (`arch/x86/include/asm/trap_pf.h`).
pub const PF_WRITE: u64 = 1 << 1;

/// `MIGRATE_MOVABLE` (`include/linux/mmzone.h`): user folios are allocated movable, slab and
/// page tables are not, which tells a large user folio from a large kernel allocation.
pub const MIGRATE_MOVABLE: i32 = 1;

/// Length of `task_struct::comm`.
pub const TASK_COMM_LEN: usize = 16;
