//! Keys and values of the BPF maps, and the names userspace finds them by.
//!
//! Every type is `#[repr(C)]` with explicit padding and a size assert: the eBPF programs and
//! userspace read the same bytes.

/// Map and global names, shared so a rename cannot silently break the loader.
pub mod names {
    /// `HashMap<RegionKey, OccupancyBitmap>`: the occupancy of every tracked region.
    pub const REGIONS: &str = "REGIONS";
    /// `Array<u64>`: one bit per pid; set for the thread-group ids being traced.
    pub const TRACKED: &str = "TRACKED";
    /// `Array<u64>`: one bit per pid; set once the tgid's `mm` is in `MM_OWNERS`.
    pub const MM_KNOWN: &str = "MM_KNOWN";
    /// `HashMap<u64, u32>`: `mm_struct` address → tgid, learned by the task iterator when a
    /// process is attached, and in the process's own context after an exec.
    pub const MM_OWNERS: &str = "MM_OWNERS";
    /// `HashMap<u32, u64>`: tgid → `mm_struct` address (to forget it at exit and exec).
    pub const TGID_MM: &str = "TGID_MM";
    /// `HashMap<KhugepagedKey, u64>`: khugepaged event counts per (tgid, event, status).
    pub const KHUGEPAGED_COUNTS: &str = "KHUGEPAGED_COUNTS";
    /// `PerCpuArray<u64>`: losses by [`DropReason`].
    pub const DROPS: &str = "DROPS";
    /// `RingBuf` of [`crate::event::Event`].
    pub const EVENTS: &str = "EVENTS";
    /// `Array<u64>`, one slot per thread id: the user fault that thread is in, see
    /// [`super::fault_in_flight`]. Written only while the large-folio hook is attached.
    pub const FAULT_IN_FLIGHT: &str = "FAULT_IN_FLIGHT";
    /// `Array<u64>`: switches userspace flips while the programs run, see [`super::Switch`].
    pub const SWITCHES: &str = "SWITCHES";
    /// `Array<Correction>`: userspace's corrections, applied in the kernel by the `correct`
    /// program (run with `BPF_PROG_TEST_RUN`).
    pub const CORRECTIONS: &str = "CORRECTIONS";
    /// The program that applies [`CORRECTIONS`] to the region map.
    pub const CORRECT: &str = "correct";
    /// `HashMap<u32, PendingIsolate>`: isolate results waiting for their collapse event.
    pub const PENDING_ISOLATE: &str = "PENDING_ISOLATE";
    /// `HashMap<u64, PendingSyscall>`: syscalls whose effect is known only at exit.
    pub const PENDING_SYSCALL: &str = "PENDING_SYSCALL";
    /// `PerCpuArray<PendingRegion>` (one slot): the region each CPU is recording faults for.
    pub const PENDING_REGION: &str = "PENDING_REGION";
    /// `Array<u32>`: one generation per pid, bumped when a thread group ends, so a reused pid
    /// keys its regions and khugepaged counts apart from the previous process's.
    pub const GENERATIONS: &str = "GENERATIONS";
    /// The `.rodata` globals, see [`super::Config`].
    pub const CONFIG: &str = "CONFIG";
}

/// Key of the region map: one PMD-aligned 2 MiB range of one process.
///
/// A process is (tgid, generation): the programs bump a pid's generation when its thread group
/// ends (`GENERATIONS`), so a process that gets a reused pid never finds the regions of the
/// one before it, and userspace can tell the old keys from the new ones.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegionKey {
    pub tgid: u32,
    /// `GENERATIONS[tgid]` while the process lived.
    pub generation: u32,
    /// PMD-aligned start address.
    pub addr: u64,
}

const _: () = assert!(core::mem::size_of::<RegionKey>() == 16);

impl RegionKey {
    /// The region of `addr` of generation 0 of `tgid` (processes that ran before the programs
    /// were loaded and whose pid has not been reused since).
    pub const fn new(tgid: u32, addr: u64) -> Self {
        Self::of(tgid, 0, addr)
    }

    /// The region of `addr` of process (`tgid`, `generation`).
    pub const fn of(tgid: u32, generation: u32, addr: u64) -> Self {
        Self {
            tgid,
            generation,
            addr: addr & crate::consts::PMD_MASK,
        }
    }
}

/// Which khugepaged tracepoint an event or count comes from
/// (`include/trace/events/huge_memory.h`).
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KhugepagedEvent {
    /// `mm_khugepaged_scan_pmd`: one PMD scanned.
    ScanPmd = 0,
    /// `mm_collapse_huge_page`: end of a collapse attempt.
    Collapse = 1,
    /// `mm_collapse_huge_page_isolate`: PTE isolation inside a collapse.
    Isolate = 2,
    /// `mm_collapse_huge_page_swapin`: swap-in inside a collapse.
    Swapin = 3,
}

impl KhugepagedEvent {
    pub const ALL: [Self; 4] = [Self::ScanPmd, Self::Collapse, Self::Isolate, Self::Swapin];

    pub const fn from_u16(v: u16) -> Option<Self> {
        match v {
            0 => Some(Self::ScanPmd),
            1 => Some(Self::Collapse),
            2 => Some(Self::Isolate),
            3 => Some(Self::Swapin),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::ScanPmd => "scan_pmd",
            Self::Collapse => "collapse",
            Self::Isolate => "isolate",
            Self::Swapin => "swapin",
        }
    }
}

/// Key of the khugepaged count map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KhugepagedKey {
    pub tgid: u32,
    /// A [`KhugepagedEvent`] as u16.
    pub event: u16,
    /// The tracepoint's `status` (`enum scan_result`); for swapin its `ret`.
    pub status: i16,
    /// The process's generation, as in [`RegionKey`].
    pub generation: u32,
}

const _: () = assert!(core::mem::size_of::<KhugepagedKey>() == 12);

/// Why something was not recorded; index into the `DROPS` per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// A new region could not be inserted: the region map is full.
    RegionMapFull = 0,
    /// The ring buffer had no room for an event.
    RingBufFull = 1,
    /// `mm` → tgid could not be recorded: khugepaged events of that process go unattributed.
    MmMapFull = 2,
    /// An unmap spanned more regions than one program can visit; userspace re-read them from
    /// pagemap. No longer emitted since wide unmaps finish in the kernel (`bpf_loop`); kept
    /// so the indices stay stable.
    ClearDeferred = 3,
    /// A khugepaged count could not be inserted.
    CountMapFull = 4,
    /// A syscall's arguments could not be kept until its exit.
    PendingMapFull = 5,
    /// The `--cgroup` directory vanished while traced (counted by userspace).
    CgroupGone = 6,
}

impl DropReason {
    pub const COUNT: u32 = 7;
    pub const ALL: [Self; 7] = [
        Self::RegionMapFull,
        Self::RingBufFull,
        Self::MmMapFull,
        Self::ClearDeferred,
        Self::CountMapFull,
        Self::PendingMapFull,
        Self::CgroupGone,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Self::RegionMapFull => "region map full",
            Self::RingBufFull => "ring buffer full",
            Self::MmMapFull => "mm map full",
            Self::ClearDeferred => "unmap finished in userspace",
            Self::CountMapFull => "count map full",
            Self::PendingMapFull => "syscall map full",
            Self::CgroupGone => "cgroup removed",
        }
    }

    /// Whether this is a real loss of information (as opposed to work moved to userspace).
    pub const fn is_loss(self) -> bool {
        !matches!(self, Self::ClearDeferred)
    }
}

/// The per-thread in-flight fault record (`FAULT_IN_FLIGHT[tid]`): the faulting address, page
/// aligned, with these flags in its low bits; 0 when nothing is in flight.
pub mod fault_in_flight {
    /// A user-mode fault (`page_fault_user`) whose folio `mm_page_alloc` has not seen yet.
    pub const USER: u64 = 1;
    /// The last kernel-mode fault on a user address (`page_fault_kernel`): the region it was in
    /// was handed to userspace to re-read, and is not handed over again for the next one.
    pub const KERNEL: u64 = 2;
    pub const FLAGS: u64 = 0xfff;
}

/// Indices of the `SWITCHES` array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Switch {
    /// Non-zero once the large-folio hook (`mm_page_alloc`) is attached: only then do faults
    /// keep a per-thread in-flight record.
    LargeFolioHook = 0,
}

impl Switch {
    pub const COUNT: u32 = 1;
}

/// One correction userspace makes to a region: `clear` is cleared, then `set` is set, both
/// atomically in the kernel, so whatever a program ORs in meanwhile outside `clear` stays.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Correction {
    pub key: RegionKey,
    pub clear: crate::OccupancyBitmap,
    pub set: crate::OccupancyBitmap,
}

const _: () = assert!(core::mem::size_of::<Correction>() == 144);

/// Corrections one run of the `correct` program applies (the size of `CORRECTIONS`).
pub const MAX_CORRECTIONS: u32 = 256;

/// The region one CPU is recording faults for, and the bits it has recorded that are not yet
/// in the region map. Faults usually come in runs within one region, so the common fault
/// costs an OR into this per-CPU slot instead of a hash lookup; the slot is flushed into the
/// region map when a fault lands in another region. Readers (userspace) OR every CPU's slot
/// into what the map says; clears (munmap, exit) clear the slots of all CPUs too.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingRegion {
    /// 0: empty.
    pub tgid: u32,
    /// The generation of `tgid` the bits belong to (see [`RegionKey`]).
    pub generation: u32,
    pub addr: u64,
    pub bits: crate::OccupancyBitmap,
}

const _: () = assert!(core::mem::size_of::<PendingRegion>() == 80);

/// Most CPUs for which faults go through [`PendingRegion`] slots: a clear visits every CPU's
/// slot in a loop the verifier walks in full.
pub const MAX_PENDING_CPUS: u32 = 64;

/// An isolate result, kept per khugepaged task until the collapse it belongs to reports the
/// `mm` (the isolate tracepoint has no `mm` field).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PendingIsolate {
    pub ts_ns: u64,
    pub pfn: u64,
    pub none_or_zero: i32,
    pub referenced: i32,
    pub status: i32,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<PendingIsolate>() == 32);

/// What a syscall was asked to do, kept from its entry to its exit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PendingSyscall {
    pub start: u64,
    pub len: u64,
    /// [`crate::event::EventKind`] to emit at exit for the affected range.
    pub kind: u32,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<PendingSyscall>() == 24);

/// Field offsets and switches handed to the programs as `.rodata` globals at load time.
///
/// Offsets come from the tracefs `format` files (and `task_struct::mm` from BTF), so nothing
/// here depends on one kernel's layout.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// `page_fault_user` / `page_fault_kernel`: `address`, `error_code`.
    pub fault_address: u32,
    pub fault_error_code: u32,
    /// `mm_page_alloc`: `order`, `migratetype`.
    pub alloc_order: u32,
    pub alloc_migratetype: u32,
    pub alloc_pfn: u32,
    /// `mm_khugepaged_scan_pmd`: `mm`, `pfn`, `referenced`, `none_or_zero`, `status`, `unmapped`.
    pub scan_mm: u32,
    pub scan_pfn: u32,
    pub scan_referenced: u32,
    pub scan_none_or_zero: u32,
    pub scan_status: u32,
    pub scan_unmapped: u32,
    /// `mm_collapse_huge_page`: `mm`, `isolated`, `status`.
    pub collapse_mm: u32,
    pub collapse_isolated: u32,
    pub collapse_status: u32,
    /// `mm_collapse_huge_page_isolate`: `pfn`, `none_or_zero`, `referenced`, `status`.
    pub isolate_pfn: u32,
    pub isolate_none_or_zero: u32,
    pub isolate_referenced: u32,
    pub isolate_status: u32,
    /// `mm_collapse_huge_page_swapin`: `mm`, `swapped_in`, `referenced`, `ret`.
    pub swapin_mm: u32,
    pub swapin_swapped_in: u32,
    pub swapin_referenced: u32,
    pub swapin_ret: u32,
    /// `sys_enter_munmap`: `addr`, `len`.
    pub munmap_addr: u32,
    pub munmap_len: u32,
    /// `sys_enter_madvise`: `start`, `len_in`, `behavior`.
    pub madvise_start: u32,
    pub madvise_len: u32,
    pub madvise_behavior: u32,
    /// `sys_enter_mremap`: `addr`, `old_len`, `new_len`.
    pub mremap_addr: u32,
    pub mremap_old_len: u32,
    pub mremap_new_len: u32,
    /// `sys_enter_mmap`: `addr`, `len`, `flags`.
    pub mmap_addr: u32,
    pub mmap_len: u32,
    pub mmap_flags: u32,
    /// `sys_enter_mlock` / `sys_enter_mlock2`: `start`, `len`.
    pub mlock_start: u32,
    pub mlock_len: u32,
    /// `sys_exit_*`: `ret`.
    pub sys_exit_ret: u32,
    /// `task_newtask`: `pid`, `clone_flags`.
    pub newtask_pid: u32,
    pub newtask_clone_flags: u32,
    /// `sched_process_exit`: `group_dead`.
    pub exit_group_dead: u32,
    /// Offset of `mm` in `struct task_struct` (from BTF).
    pub task_mm: u32,
    /// Possible CPUs: how many `PENDING_REGION` slots a clear visits; 0 turns the pending
    /// regions off (more than [`MAX_PENDING_CPUS`] CPUs).
    pub nr_cpus: u32,
    /// The tracer's own tgid, never traced (not even with `all`).
    pub self_tgid: u32,
    /// Offset of `brk` in `struct mm_struct` (from BTF); 0: unknown, brk shrinks not seen.
    pub mm_brk: u32,
    /// Offset of `tgid` in `struct task_struct` (from BTF): the task iterator's process.
    pub task_tgid: u32,
    /// Offsets of `signal` in `struct task_struct` and of `live` in `struct signal_struct`
    /// (from BTF): the `group_dead` fallback.
    pub task_signal: u32,
    pub signal_live: u32,
    /// Non-zero: `sched_process_exit` has no `group_dead` (before 6.16); the group is dead
    /// when `current->signal->live` is 0, which `do_exit` decrements before the tracepoint
    /// (`kernel/exit.c`).
    pub exit_by_live: u32,
    /// Bit offset of `in_user_fault` in `struct task_struct` (from BTF) plus one; 0: not
    /// available (CONFIG_MEMCG_V1 off since 6.11) or forced off, and an in-flight record is
    /// trusted until its first large folio, the next fault or a hooked syscall.
    pub task_in_user_fault: u32,
    /// Regions the region map holds at most: a wide unmap covering more PMDs than this walks
    /// the map instead of the range.
    pub max_regions: u32,
    /// Offset of `mm_users` in `struct mm_struct` (from BTF); 0: unknown, every process counts
    /// as multi-threaded.
    pub mm_users: u32,
    pub _pad0: u32,
    /// Non-zero: every process is traced; `TRACKED` is not consulted.
    pub all: u8,
    /// Non-zero: new processes forked by a traced one are traced too.
    pub follow_children: u8,
    /// Non-zero: a process whose exec gives it `comm` becomes traced, any other exec untraced.
    pub match_comm: u8,
    /// Non-zero: new tasks in cgroup `cgroup_id` or below it are traced.
    pub match_cgroup: u8,
    pub cgroup_id: u64,
    /// Depth of `cgroup_id` below the cgroup v2 root (0: the root), the ancestor level
    /// `bpf_get_current_ancestor_cgroup_id` is asked for.
    pub cgroup_level: u32,
    pub _pad: u32,
    pub comm: [u8; crate::consts::TASK_COMM_LEN],
}

const _: () = assert!(core::mem::size_of::<Config>() == 240);

impl Config {
    /// All offsets zero and every switch off: the placeholder compiled into the object.
    pub const ZERO: Self = {
        // SAFETY: every field is an integer or an integer array, for which zero is valid.
        unsafe { core::mem::zeroed() }
    };
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for RegionKey {}
    unsafe impl aya::Pod for KhugepagedKey {}
    unsafe impl aya::Pod for Correction {}
    unsafe impl aya::Pod for PendingIsolate {}
    unsafe impl aya::Pod for PendingSyscall {}
    unsafe impl aya::Pod for PendingRegion {}
    unsafe impl aya::Pod for Config {}
}
