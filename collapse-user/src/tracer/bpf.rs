//! Loading and attaching the eBPF programs, and typed access to their maps.

use std::{collections::HashMap as StdHashMap, path::Path};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, Iter, RawTracePoint, RawTracePointRunOptions, TestRun, TracePoint},
};
use collapse_common::{
    OccupancyBitmap,
    consts::TASK_COMM_LEN,
    maps::{
        Config, Correction, DropReason, KhugepagedEvent, KhugepagedKey, MAX_CORRECTIONS,
        MAX_PENDING_CPUS, PendingRegion, RegionKey, Switch, names,
    },
};

use super::map_batch;
use crate::kernel::{
    btf::{self, BtfError},
    features::{FORCED, Fallback, Feature},
    tracefs::{TracefsError, TracepointFormat},
};

/// Loading, attaching or reading the programs and their maps failed.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error(
        "this collapse was built with AYA_BUILD_SKIP=1 and has no eBPF programs; rebuild with `cargo xtask build`"
    )]
    NoPrograms,
    #[error(
        "tracing needs root (loading eBPF programs); run it with sudo or `cargo xtask run -- ...`"
    )]
    NotRoot,
    #[error(transparent)]
    Tracefs(#[from] TracefsError),
    #[error(
        "{tracepoint} field {field} is at offset {offset} size {size}; collapse expects a {want}-byte field within the first {limit} bytes"
    )]
    FieldLayout {
        tracepoint: String,
        field: String,
        offset: u32,
        size: u32,
        want: u32,
        limit: u32,
    },
    #[error("exceptions:page_fault_kernel and page_fault_user have different layouts")]
    FaultLayouts,
    #[error("syscalls:{name} has its {field} at another offset than sys_enter_mlock")]
    MlockLayout {
        name: &'static str,
        field: &'static str,
    },
    #[error("khugepaged attribution needs task_struct::mm")]
    TaskMm(#[source] BtfError),
    #[error(
        "sched:sched_process_exit has no group_dead (before 6.16) and BTF lacks the fallback's task_struct.signal or signal_struct.live"
    )]
    ExitFallback(#[source] BtfError),
    #[error("running the task iterator that learns traced processes' mm")]
    TaskIterLink(#[source] aya::programs::ProgramError),
    #[error("running the task iterator that learns traced processes' mm")]
    TaskIterFile(#[source] aya::programs::links::LinkError),
    #[error("reading the task iterator that learns traced processes' mm")]
    TaskIterRead(#[source] std::io::Error),
    #[error("reading {path}: {source}")]
    Cpus {
        path: String,
        source: std::io::Error,
    },
    #[error("--comm {0:?} is longer than the kernel's 15-byte comm")]
    CommTooLong(String),
    #[error("--max-regions and --max-processes must be at least 1")]
    ZeroCapacity,
    #[error("--ringbuf-kib {0} is too large (at most 1 GiB)")]
    RingTooLarge(u32),
    #[error("loading the eBPF programs")]
    Object(#[source] aya::EbpfError),
    #[error("tracepoint {category}:{name} is missing from this kernel ({root}); collapse needs it")]
    MissingTracepoint {
        category: &'static str,
        name: &'static str,
        root: String,
    },
    #[error("tracepoint kmem:mm_page_alloc is missing: large folios faulted in cannot be seen")]
    NoAllocTracepoint,
    #[error("program {0} is missing from the eBPF object")]
    MissingProgram(&'static str),
    #[error("program {program}: {source}")]
    ProgramType {
        program: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("loading program {program}")]
    Load {
        program: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("attaching to tracepoint {tracepoint}")]
    Attach {
        tracepoint: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("map {0} is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("the ring buffer is being polled elsewhere")]
    RingTaken,
    #[error("pid {pid} is above pid_max {limit}")]
    PidAboveLimit { pid: u32, limit: u32 },
    #[error("running the correction program")]
    Correct(#[source] aya::programs::ProgramError),
    #[error("recording a process's mm")]
    RecordMm(#[source] aya::maps::MapError),
    #[error("recording an mm's owner")]
    RecordOwner(#[source] aya::maps::MapError),
    #[error(transparent)]
    Map(#[from] aya::maps::MapError),
}

type Result<T, E = BpfError> = std::result::Result<T, E>;

/// The eBPF object, built by build.rs from collapse-ebpf.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/collapse"));

/// Every program attached at load: (name in the object, tracepoint category, tracepoint name,
/// required). The large-folio hook (`mm_page_alloc`) is not among them: see
/// [`Bpf::attach_large_folio_hook`].
/// Optional ones make collapse less exact when missing, and it says so; required ones are
/// what the tool is for.
const PROGRAMS: &[(&str, &str, &str, bool)] = &[
    ("page_fault_user", "exceptions", "page_fault_user", true),
    (
        "page_fault_kernel",
        "exceptions",
        "page_fault_kernel",
        false,
    ),
    ("sys_enter_munmap", "syscalls", "sys_enter_munmap", true),
    ("sys_exit_munmap", "syscalls", "sys_exit_munmap", true),
    ("sys_enter_madvise", "syscalls", "sys_enter_madvise", true),
    ("sys_exit_madvise", "syscalls", "sys_exit_madvise", true),
    ("sys_enter_mlock", "syscalls", "sys_enter_mlock", false),
    ("sys_exit_mlock", "syscalls", "sys_exit_mlock", false),
    ("sys_enter_mlock2", "syscalls", "sys_enter_mlock2", false),
    ("sys_exit_mlock2", "syscalls", "sys_exit_mlock2", false),
    (
        "sys_enter_mlockall",
        "syscalls",
        "sys_enter_mlockall",
        false,
    ),
    ("sys_exit_mlockall", "syscalls", "sys_exit_mlockall", false),
    ("sys_enter_brk", "syscalls", "sys_enter_brk", false),
    ("sys_exit_brk", "syscalls", "sys_exit_brk", false),
    ("sys_enter_mmap", "syscalls", "sys_enter_mmap", false),
    ("sys_exit_mmap", "syscalls", "sys_exit_mmap", false),
    ("sys_enter_mremap", "syscalls", "sys_enter_mremap", false),
    ("sys_exit_mremap", "syscalls", "sys_exit_mremap", false),
    ("task_newtask", "task", "task_newtask", false),
    ("sched_process_exec", "sched", "sched_process_exec", false),
    ("sched_process_exit", "sched", "sched_process_exit", true),
    (
        "mm_khugepaged_scan_pmd",
        "huge_memory",
        "mm_khugepaged_scan_pmd",
        true,
    ),
    (
        "mm_collapse_huge_page",
        "huge_memory",
        "mm_collapse_huge_page",
        true,
    ),
    (
        "mm_collapse_huge_page_isolate",
        "huge_memory",
        "mm_collapse_huge_page_isolate",
        true,
    ),
    (
        "mm_collapse_huge_page_swapin",
        "huge_memory",
        "mm_collapse_huge_page_swapin",
        true,
    ),
];

/// The hot programs again as BTF-typed raw tracepoints: (program, tracepoint, the parameters
/// (name, C type) the program reads by position). The kernel then skips building a trace record and the
/// program reads its arguments without a helper call, which is most of the per-fault cost of a
/// classic tracepoint. Used only when BTF shows exactly these parameters, else the classic
/// program (offsets from the format file) runs instead. `COLLAPSE_CLASSIC_TRACEPOINTS=1` forces
/// the classic programs.
type Params = &'static [(&'static str, &'static str)];
// Types as BTF spells them (from DWARF: `long unsigned int`).
const FAULT_PARAMS: Params = &[
    ("address", "long unsigned int"),
    ("regs", "struct pt_regs *"),
    ("error_code", "long unsigned int"),
];
const ALLOC_PARAMS: Params = &[
    ("page", "struct page *"),
    ("order", "unsigned int"),
    ("gfp_flags", "gfp_t"),
    ("migratetype", "int"),
];
const FAST_PATH: &[(&str, &str, Params)] = &[
    ("page_fault_user_btf", "page_fault_user", FAULT_PARAMS),
    ("page_fault_kernel_btf", "page_fault_kernel", FAULT_PARAMS),
];
const ALLOC_FAST_PATH: (&str, &str, Params) = ("mm_page_alloc_btf", "mm_page_alloc", ALLOC_PARAMS);

/// Which processes the programs record, decided before load (it is `.rodata`).
#[derive(Clone, Debug, Default)]
pub struct Selection {
    pub all: bool,
    pub follow_children: bool,
    pub comm: Option<String>,
    pub cgroup_id: Option<u64>,
    /// Depth of the `--cgroup` directory below the cgroup v2 root.
    pub cgroup_level: u32,
}

/// Map capacities.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// Region map entries (one per traced 2 MiB region).
    pub max_regions: u32,
    /// Ring buffer size (a power of two).
    pub ringbuf_bytes: u32,
    /// Processes whose mm can be attributed khugepaged events.
    pub max_processes: u32,
}

impl Default for Capacity {
    fn default() -> Self {
        Self {
            max_regions: 262_144,
            ringbuf_bytes: 1 << 20,
            max_processes: 16_384,
        }
    }
}

/// The status-name tables of the khugepaged tracepoints (`__print_symbolic` in their formats).
#[derive(Clone, Debug, Default)]
pub struct StatusNames(StdHashMap<i64, String>);

impl StatusNames {
    pub fn name(&self, status: i64) -> String {
        self.0
            .get(&status)
            .cloned()
            .unwrap_or_else(|| format!("status_{status}"))
    }

    /// How a khugepaged event's status reads: its `enum scan_result` name, except for swapin,
    /// whose `ret` is 0 or an error.
    pub fn describe(&self, which: KhugepagedEvent, status: i64) -> String {
        match (which, status) {
            (KhugepagedEvent::Swapin, 0) => "ok".into(),
            (KhugepagedEvent::Swapin, ret) => format!("ret={ret}"),
            _ => self.name(status),
        }
    }
}

/// The loaded, attached programs and their maps.
pub struct Bpf {
    ebpf: Ebpf,
    status_names: StatusNames,
    pid_limit: u32,
    /// Optional programs that could not be attached, with why.
    missing: Vec<String>,
    /// Tracepoints served by the BTF-typed fast path.
    fast_path: Vec<&'static str>,
    /// Why the other hot tracepoints run as classic ones.
    slow_path: Vec<String>,
    root: std::path::PathBuf,
    btfs: Option<Btfs>,
    /// How `mm_page_alloc` is hooked, once it is.
    large_folio_hook: Option<&'static str>,
    /// The task iterator is loaded: [`Bpf::learn_mms`] runs it.
    task_iter: bool,
    /// Features this kernel lacks (or that were forced off), worked around.
    fallbacks: Vec<Fallback>,
    /// The ring buffer while nobody polls it.
    events: Option<RingBuf<MapData>>,
    /// Losses userspace ran into (a full map on a write-back, a vanished cgroup), by
    /// [`DropReason`]; added to the programs' own in [`Bpf::drops`].
    user_drops: [u64; DropReason::COUNT as usize],
    /// `BPF_MAP_LOOKUP_BATCH` reads the region map (cleared when the kernel refuses it).
    map_batch: std::cell::Cell<bool>,
}

/// The largest pid any kernel can have (PID_MAX_LIMIT, include/linux/threads.h): the pid
/// bitmaps are this large, so a pid above the pid_max read at start (raised meanwhile) still
/// fits.
const PID_MAX_LIMIT: u32 = 1 << 22;

/// A delete of a key that is not there is done: the programs delete regions too (munmap), and
/// may have got there first. aya reports that as the syscall's `ENOENT`, not `KeyNotFound`.
fn removed(r: Result<(), aya::maps::MapError>) -> Result<()> {
    match r {
        Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// Where tracefs is; `COLLAPSE_TRACEFS` overrides it (tests point it at a fake tree).
pub fn tracefs_root() -> Result<std::path::PathBuf> {
    if let Some(root) = std::env::var_os("COLLAPSE_TRACEFS") {
        return Ok(root.into());
    }
    Ok(crate::kernel::tracefs::ensure_mounted()?)
}

fn pid_limit() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(1 << 22)
        .clamp(64, 1 << 22)
}

/// The task iterator program (`collapse-ebpf/src/attribution.rs`) and its fallback.
const TASK_ITER: &str = "learn_task_mms";
const SCHED_SWITCH: &str = "sched_switch";

/// Builds the program configuration from the tracefs formats and BTF; `fallbacks` gets the
/// features this kernel lacks (or that were forced off) that the configuration works around.
fn config(
    root: &Path,
    sel: &Selection,
    cap: Capacity,
    fallbacks: &mut Vec<Fallback>,
) -> Result<(Config, StatusNames)> {
    let fmt = |cat: &str, name: &str| -> Result<TracepointFormat> {
        Ok(TracepointFormat::read(root, cat, name)?)
    };
    // The fault and allocation programs read their record's first 32 / 40 bytes in one helper
    // call and pick fields out of it: each field must lie inside, naturally aligned.
    let within = |f: &TracepointFormat, name: &str, size: u32, limit: u32| -> Result<u32> {
        let field = f.field(name)?;
        if field.size != size || field.offset % size != 0 || field.offset + size > limit {
            return Err(BpfError::FieldLayout {
                tracepoint: format!("{}:{}", f.category, f.name),
                field: name.to_owned(),
                offset: field.offset,
                size: field.size,
                want: size,
                limit,
            });
        }
        Ok(field.offset)
    };
    let mut c = Config::ZERO;
    let fault = fmt("exceptions", "page_fault_user")?;
    c.fault_address = within(&fault, "address", 8, 32)?;
    c.fault_error_code = within(&fault, "error_code", 8, 32)?;
    // One program serves both fault tracepoints: they must agree.
    if let Ok(kfault) = fmt("exceptions", "page_fault_kernel")
        && (
            within(&kfault, "address", 8, 32)?,
            within(&kfault, "error_code", 8, 32)?,
        ) != (c.fault_address, c.fault_error_code)
    {
        return Err(BpfError::FaultLayouts);
    }
    if let Ok(alloc) = fmt("kmem", "mm_page_alloc") {
        c.alloc_order = within(&alloc, "order", 4, 40)?;
        c.alloc_migratetype = within(&alloc, "migratetype", 4, 40)?;
        c.alloc_pfn = within(&alloc, "pfn", 8, 40)?;
    }
    let scan = fmt("huge_memory", "mm_khugepaged_scan_pmd")?;
    c.scan_mm = scan.offset("mm")?;
    c.scan_pfn = scan.offset("pfn")?;
    c.scan_referenced = scan.offset("referenced")?;
    c.scan_none_or_zero = scan.offset("none_or_zero")?;
    c.scan_status = scan.offset("status")?;
    c.scan_unmapped = scan.offset("unmapped")?;
    let collapse = fmt("huge_memory", "mm_collapse_huge_page")?;
    c.collapse_mm = collapse.offset("mm")?;
    c.collapse_isolated = collapse.offset("isolated")?;
    c.collapse_status = collapse.offset("status")?;
    let isolate = fmt("huge_memory", "mm_collapse_huge_page_isolate")?;
    c.isolate_pfn = isolate.offset("pfn")?;
    c.isolate_none_or_zero = isolate.offset("none_or_zero")?;
    c.isolate_referenced = isolate.offset("referenced")?;
    c.isolate_status = isolate.offset("status")?;
    let swapin = fmt("huge_memory", "mm_collapse_huge_page_swapin")?;
    c.swapin_mm = swapin.offset("mm")?;
    c.swapin_swapped_in = swapin.offset("swapped_in")?;
    c.swapin_referenced = swapin.offset("referenced")?;
    c.swapin_ret = swapin.offset("ret")?;
    let munmap = fmt("syscalls", "sys_enter_munmap")?;
    c.munmap_addr = munmap.offset("addr")?;
    c.munmap_len = munmap.offset("len")?;
    let madvise = fmt("syscalls", "sys_enter_madvise")?;
    c.madvise_start = madvise.offset("start")?;
    c.madvise_len = madvise.offset("len_in")?;
    c.madvise_behavior = madvise.offset("behavior")?;
    if let Ok(mremap) = fmt("syscalls", "sys_enter_mremap") {
        c.mremap_addr = mremap.offset("addr")?;
        c.mremap_old_len = mremap.offset("old_len")?;
        c.mremap_new_len = mremap.offset("new_len")?;
    }
    if let Ok(mmap) = fmt("syscalls", "sys_enter_mmap") {
        c.mmap_addr = mmap.offset("addr")?;
        c.mmap_len = mmap.offset("len")?;
        c.mmap_flags = mmap.offset("flags")?;
    }
    // mlock and mlock2 share one layout for what is read; mlockall's flags sit where `start` is.
    if let Ok(mlock) = fmt("syscalls", "sys_enter_mlock") {
        c.mlock_start = mlock.offset("start")?;
        c.mlock_len = mlock.offset("len")?;
        for (name, field) in [
            ("sys_enter_mlock2", "start"),
            ("sys_enter_mlockall", "flags"),
        ] {
            if let Ok(other) = fmt("syscalls", name)
                && other.offset(field)? != c.mlock_start
            {
                return Err(BpfError::MlockLayout { name, field });
            }
        }
    }
    // Every sys_exit_* record has the same layout (`include/trace/syscall.h`).
    c.sys_exit_ret = fmt("syscalls", "sys_exit_munmap")?.offset("ret")?;
    if let Ok(newtask) = fmt("task", "task_newtask") {
        c.newtask_pid = newtask.offset("pid")?;
        c.newtask_clone_flags = newtask.offset("clone_flags")?;
    }
    let kbtf = btf::KernelBtf::open().map_err(BpfError::TaskMm)?;
    c.task_mm = kbtf
        .member_offset("task_struct", "mm")
        .map_err(BpfError::TaskMm)?;
    // group_dead appeared in 6.16 (include/trace/events/sched.h); before, do_exit has already
    // decremented signal->live when the tracepoint fires (kernel/exit.c, 6.1 to 6.15).
    let exit = fmt("sched", "sched_process_exit")?;
    let group_dead = if Feature::ExitGroupDead.forced_off() {
        Err(FORCED.to_owned())
    } else {
        exit.offset("group_dead").map_err(|e| e.to_string())
    };
    match group_dead {
        Ok(offset) => c.exit_group_dead = offset,
        Err(why) => {
            c.task_signal = kbtf
                .member_offset("task_struct", "signal")
                .map_err(BpfError::ExitFallback)?;
            c.signal_live = kbtf
                .member_offset("signal_struct", "live")
                .map_err(BpfError::ExitFallback)?;
            c.exit_by_live = 1;
            fallbacks.push(Fallback {
                feature: Feature::ExitGroupDead,
                why,
            });
        }
    }
    // The task iterator reads the tgid of each task; without it, the iterator is not loaded.
    c.task_tgid = kbtf.member_offset("task_struct", "tgid").unwrap_or(0);
    // Without it a shrinking brk is not seen (the heap top keeps stale bits until it regrows).
    c.mm_brk = kbtf.member_offset("mm_struct", "brk").unwrap_or(0);
    c.task_in_user_fault = match in_user_fault_bit(&kbtf) {
        Ok(bit) => bit + 1,
        Err(why) => {
            fallbacks.push(Fallback {
                feature: Feature::InUserFault,
                why,
            });
            0
        }
    };
    c.max_regions = cap.max_regions;
    // Without it every clear in a process is re-read from pagemap too.
    c.mm_users = kbtf.member_offset("mm_struct", "mm_users").unwrap_or(0);
    c.self_tgid = std::process::id();
    let cpus = aya::util::nr_cpus().map_err(|(path, source)| BpfError::Cpus {
        path: path.to_owned(),
        source,
    })? as u32;
    // Beyond MAX_PENDING_CPUS faults skip the per-CPU pending slots (see collapse-common).
    c.nr_cpus = if cpus <= MAX_PENDING_CPUS { cpus } else { 0 };
    c.all = sel.all.into();
    c.follow_children = sel.follow_children.into();
    if let Some(comm) = &sel.comm {
        let bytes = comm.as_bytes();
        if bytes.len() >= TASK_COMM_LEN {
            return Err(BpfError::CommTooLong(comm.clone()));
        }
        c.match_comm = 1;
        c.comm[..bytes.len()].copy_from_slice(bytes);
    }
    if let Some(id) = sel.cgroup_id {
        c.match_cgroup = 1;
        c.cgroup_id = id;
        c.cgroup_level = sel.cgroup_level;
    }
    let names = StatusNames(
        scan.symbolic("status")
            .unwrap_or_default()
            .into_iter()
            .collect(),
    );
    Ok((c, names))
}

/// The bit offset of `task_struct::in_user_fault`, or why it cannot be used.
fn in_user_fault_bit(kbtf: &btf::KernelBtf) -> Result<u32, String> {
    if Feature::InUserFault.forced_off() {
        return Err(FORCED.into());
    }
    kbtf.bit_member_offset("task_struct", "in_user_fault")
        .map_err(|e| e.to_string())
}

/// The kernel's BTF, as collapse reads it (parameter checks) and as aya loads it.
struct Btfs {
    kernel: btf::KernelBtf,
    aya: aya::Btf,
}

impl Btfs {
    /// `Err` says why the fast path is off.
    fn open() -> Result<Self, String> {
        if Feature::BtfTracepoints.forced_off() {
            return Err(crate::kernel::features::FORCED.into());
        }
        let kernel = btf::KernelBtf::open().map_err(|e| e.to_string())?;
        let aya = aya::Btf::from_sys_fs().map_err(|e| format!("loading kernel BTF: {e}"))?;
        Ok(Self { kernel, aya })
    }

    /// Loads and attaches `prog` on `tracepoint` as a BTF-typed raw tracepoint, if BTF shows
    /// exactly the parameters it reads.
    fn attach(
        &self,
        ebpf: &mut Ebpf,
        (prog, tracepoint, params): (&str, &str, Params),
    ) -> Result<(), String> {
        match self.kernel.raw_tracepoint_params(tracepoint) {
            // The types must match; names too, where BTF has them.
            Ok(Some(p))
                if p.len() == params.len()
                    && p.iter().zip(params).all(|(a, (name, ty))| {
                        a.c_type == *ty && (a.name.is_empty() || a.name == *name)
                    }) => {}
            Ok(found) => {
                return Err(format!(
                    "{tracepoint}: BTF parameters {found:?}, expected {params:?}"
                ));
            }
            Err(e) => return Err(format!("{tracepoint}: {e}")),
        }
        let result = (|| -> Result<(), String> {
            let program: &mut BtfTracePoint = ebpf
                .program_mut(prog)
                .ok_or_else(|| format!("program {prog} is missing from the eBPF object"))?
                .try_into()
                .map_err(|e: aya::programs::ProgramError| e.to_string())?;
            program
                .load(tracepoint, &self.aya)
                .map_err(|e| crate::render::error_chain(&e))?;
            program
                .attach()
                .map_err(|e| crate::render::error_chain(&e))?;
            Ok(())
        })();
        // A kernel that refuses tracing programs falls back to the classic tracepoint.
        result.map_err(|e| format!("{tracepoint}: {e}"))
    }
}

/// Loads the task iterator; `Err` says why the `task_iter` fallback runs instead.
fn load_task_iter(ebpf: &mut Ebpf, btfs: Option<&Btfs>, config: &Config) -> Result<(), String> {
    if Feature::TaskIter.forced_off() {
        return Err(FORCED.into());
    }
    if config.task_tgid == 0 {
        return Err("BTF has no task_struct.tgid".into());
    }
    let owned;
    let btf = match btfs {
        Some(b) => &b.aya,
        None => {
            owned = aya::Btf::from_sys_fs().map_err(|e| format!("loading kernel BTF: {e}"))?;
            &owned
        }
    };
    let program: &mut Iter = ebpf
        .program_mut(TASK_ITER)
        .ok_or_else(|| format!("program {TASK_ITER} is missing from the eBPF object"))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| e.to_string())?;
    program.load("task", btf).map_err(|e| {
        format!(
            "loading the task iterator: {}",
            crate::render::error_chain(&e)
        )
    })
}

/// The `task_iter` fallback: `sched:sched_switch` learns the `mm` of a traced task as it is
/// switched out.
fn attach_mm_fallback(ebpf: &mut Ebpf) -> Result<()> {
    let program: &mut TracePoint = ebpf
        .program_mut(SCHED_SWITCH)
        .ok_or(BpfError::MissingProgram(SCHED_SWITCH))?
        .try_into()
        .map_err(|source| BpfError::ProgramType {
            program: SCHED_SWITCH,
            source,
        })?;
    program.load().map_err(|source| BpfError::Load {
        program: SCHED_SWITCH,
        source,
    })?;
    program
        .attach("sched", "sched_switch")
        .map_err(|source| BpfError::Attach {
            tracepoint: "sched:sched_switch".to_owned(),
            source,
        })?;
    Ok(())
}

impl Bpf {
    /// The names of the khugepaged tracepoints' status codes.
    pub fn status_names(&self) -> &StatusNames {
        &self.status_names
    }

    /// The largest pid the tracked-process bitmap holds (the kernel's pid_max).
    pub fn pid_limit(&self) -> u32 {
        self.pid_limit
    }

    /// Optional programs that could not be attached, with why.
    pub fn missing(&self) -> &[String] {
        &self.missing
    }

    /// Tracepoints served by the BTF-typed fast path.
    pub fn fast_path(&self) -> &[&'static str] {
        &self.fast_path
    }

    /// Why the other hot tracepoints run as classic ones.
    pub fn slow_path(&self) -> &[String] {
        &self.slow_path
    }

    /// How `mm_page_alloc` is hooked, once it is.
    pub fn large_folio_hook(&self) -> Option<&'static str> {
        self.large_folio_hook
    }

    /// The features this kernel lacks (or that were forced off) and what runs instead. The
    /// hot tracepoints' fallback is in [`Bpf::slow_path`].
    pub fn fallbacks(&self) -> &[Fallback] {
        &self.fallbacks
    }

    /// Loads the programs configured for `sel` and attaches them all.
    pub fn load(sel: &Selection, cap: Capacity) -> Result<Self> {
        if OBJECT.is_empty() {
            return Err(BpfError::NoPrograms);
        }
        if !nix::unistd::geteuid().is_root() {
            return Err(BpfError::NotRoot);
        }
        let root = tracefs_root()?;
        let pid_limit = pid_limit();
        let mut fallbacks = Vec::new();
        let (config, status_names) = config(&root, sel, cap, &mut fallbacks)?;
        let bitset_words = PID_MAX_LIMIT.div_ceil(64);
        if cap.max_regions == 0 || cap.max_processes == 0 {
            return Err(BpfError::ZeroCapacity);
        }
        let ringbuf = cap
            .ringbuf_bytes
            .checked_next_power_of_two()
            .filter(|&b| b <= 1 << 30)
            .ok_or(BpfError::RingTooLarge(cap.ringbuf_bytes / 1024))?
            .max(4096);
        let mut ebpf = EbpfLoader::new()
            .override_global(names::CONFIG, &config, true)
            .map_max_entries(names::REGIONS, cap.max_regions)
            .map_max_entries(names::TRACKED, bitset_words)
            .map_max_entries(names::MM_KNOWN, bitset_words)
            .map_max_entries(names::GENERATIONS, pid_limit)
            .map_max_entries(names::MM_OWNERS, cap.max_processes)
            .map_max_entries(names::TGID_MM, cap.max_processes)
            .map_max_entries(names::EVENTS, ringbuf)
            .map_max_entries(names::FAULT_IN_FLIGHT, pid_limit)
            .load(OBJECT)
            .map_err(BpfError::Object)?;
        // The correction program is never attached, only run (see `Bpf::correct`).
        let correct: &mut RawTracePoint = ebpf
            .program_mut(names::CORRECT)
            .ok_or(BpfError::MissingProgram(names::CORRECT))?
            .try_into()
            .map_err(|source| BpfError::ProgramType {
                program: names::CORRECT,
                source,
            })?;
        correct.load().map_err(|source| BpfError::Load {
            program: names::CORRECT,
            source,
        })?;
        let btfs = Btfs::open();
        let mut fast_path = Vec::new();
        let mut slow_path = Vec::new();
        for &entry in FAST_PATH {
            match &btfs {
                Ok(b) => match b.attach(&mut ebpf, entry) {
                    Ok(()) => fast_path.push(entry.1),
                    Err(why) => slow_path.push(why),
                },
                Err(why) => slow_path.push(format!("{}: {why}", entry.1)),
            }
        }
        let mut missing = Vec::new();
        for &(prog, category, name, required) in PROGRAMS {
            if fast_path.contains(&name) {
                continue;
            }
            if !root.join("events").join(category).join(name).exists() {
                if required {
                    return Err(BpfError::MissingTracepoint {
                        category,
                        name,
                        root: root.display().to_string(),
                    });
                }
                missing.push(format!("{category}:{name} (not in this kernel)"));
                continue;
            }
            let program: &mut TracePoint = ebpf
                .program_mut(prog)
                .ok_or(BpfError::MissingProgram(prog))?
                .try_into()
                .map_err(|source| BpfError::ProgramType {
                    program: prog,
                    source,
                })?;
            program.load().map_err(|source| BpfError::Load {
                program: prog,
                source,
            })?;
            if let Err(source) = program.attach(category, name) {
                if required {
                    return Err(BpfError::Attach {
                        tracepoint: format!("{category}:{name}"),
                        source,
                    });
                }
                let err = source;
                missing.push(format!("{category}:{name} ({err})"));
            }
        }
        let btfs = btfs.ok();
        let task_iter = match load_task_iter(&mut ebpf, btfs.as_ref(), &config) {
            Ok(()) => true,
            Err(why) => {
                attach_mm_fallback(&mut ebpf)?;
                fallbacks.push(Fallback {
                    feature: Feature::TaskIter,
                    why,
                });
                false
            }
        };
        if !crate::kernel::pagemap::scan_works() {
            fallbacks.push(Fallback {
                feature: Feature::PagemapScan,
                why: if Feature::PagemapScan.forced_off() {
                    FORCED
                } else {
                    "no PAGEMAP_SCAN ioctl (before 6.7)"
                }
                .to_owned(),
            });
        }
        if Feature::MapBatch.forced_off() {
            fallbacks.push(Fallback {
                feature: Feature::MapBatch,
                why: FORCED.to_owned(),
            });
        }
        Ok(Self {
            ebpf,
            status_names,
            pid_limit,
            missing,
            fast_path,
            slow_path,
            root,
            btfs,
            large_folio_hook: None,
            task_iter,
            fallbacks,
            events: None,
            user_drops: [0; DropReason::COUNT as usize],
            map_batch: std::cell::Cell::new(!Feature::MapBatch.forced_off()),
        })
    }

    /// Records the `mm` of every traced process not yet known, in one pass of the task
    /// iterator over the system's tasks (a no-op on the `task_iter` fallback, where
    /// `sched_switch` learns them).
    pub fn learn_mms(&mut self) -> Result<()> {
        use std::io::Read as _;
        if !self.task_iter {
            return Ok(());
        }
        let program: &mut Iter = self
            .ebpf
            .program_mut(TASK_ITER)
            .ok_or(BpfError::MissingProgram(TASK_ITER))?
            .try_into()
            .map_err(BpfError::TaskIterLink)?;
        let id = program.attach().map_err(BpfError::TaskIterLink)?;
        let link = program.take_link(id).map_err(BpfError::TaskIterLink)?;
        let mut file = link.into_file().map_err(BpfError::TaskIterFile)?;
        // The program prints nothing: one read walks every task. Past a million tasks in one
        // read the kernel stops with EAGAIN and the next read goes on (kernel/bpf/bpf_iter.c).
        let mut buf = [0u8; 64];
        let mut again = 0;
        loop {
            match file.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) && again < 64 => again += 1,
                Err(e) => return Err(BpfError::TaskIterRead(e)),
            }
        }
    }

    /// Attaches the large-folio hook on `kmem:mm_page_alloc`, if not yet. It runs on every
    /// page allocation in the system, so it is attached only once a traced process can get a
    /// large folio at fault time (THP or an mTHP size `always`, or `madvise` and a traced
    /// process with MADV_HUGEPAGE memory); the caller then re-reads from pagemap what may have
    /// been faulted before. Returns whether it attached now.
    pub fn attach_large_folio_hook(&mut self) -> Result<bool> {
        if self.large_folio_hook.is_some() {
            return Ok(false);
        }
        // Faults keep their in-flight record from now on; the hook may see a fault that
        // started before with no record, which the caller's re-read from pagemap covers.
        let mut switches: Array<&mut MapData, u64> =
            Array::try_from(self.map_mut(names::SWITCHES)?)?;
        switches.set(Switch::LargeFolioHook as u32, 1, 0)?;
        if let Some(btfs) = &self.btfs {
            match btfs.attach(&mut self.ebpf, ALLOC_FAST_PATH) {
                Ok(()) => {
                    self.large_folio_hook = Some("raw tracepoint (BTF)");
                    return Ok(true);
                }
                Err(why) => self.slow_path.push(why),
            }
        }
        if !self.root.join("events/kmem/mm_page_alloc").exists() {
            return Err(BpfError::NoAllocTracepoint);
        }
        let program: &mut TracePoint = self
            .ebpf
            .program_mut("mm_page_alloc")
            .ok_or(BpfError::MissingProgram("mm_page_alloc"))?
            .try_into()
            .map_err(|source| BpfError::ProgramType {
                program: "mm_page_alloc",
                source,
            })?;
        program.load().map_err(|source| BpfError::Load {
            program: "mm_page_alloc",
            source,
        })?;
        program
            .attach("kmem", "mm_page_alloc")
            .map_err(|source| BpfError::Attach {
                tracepoint: "kmem:mm_page_alloc".to_owned(),
                source,
            })?;
        self.large_folio_hook = Some("tracepoint");
        Ok(true)
    }

    fn map<'a>(&'a self, name: &'static str) -> Result<&'a aya::maps::Map> {
        self.ebpf.map(name).ok_or(BpfError::MissingMap(name))
    }

    fn map_mut<'a>(&'a mut self, name: &'static str) -> Result<&'a mut aya::maps::Map> {
        self.ebpf.map_mut(name).ok_or(BpfError::MissingMap(name))
    }

    /// The ring buffer, for the caller to poll; hand it back with [`Bpf::give_back_events`].
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        if let Some(ring) = self.events.take() {
            return Ok(ring);
        }
        let map = self
            .ebpf
            .take_map(names::EVENTS)
            .ok_or(BpfError::RingTaken)?;
        Ok(RingBuf::try_from(map)?)
    }

    pub fn give_back_events(&mut self, ring: RingBuf<MapData>) {
        self.events = Some(ring);
    }

    fn set_bit(&mut self, name: &'static str, id: u32, on: bool) -> Result<()> {
        if id >= PID_MAX_LIMIT {
            return Err(BpfError::PidAboveLimit {
                pid: id,
                limit: PID_MAX_LIMIT,
            });
        }
        let mut arr: Array<&mut MapData, u64> = Array::try_from(self.map_mut(name)?)?;
        let word = arr.get(&(id / 64), 0)?;
        let bit = 1u64 << (id % 64);
        arr.set(id / 64, if on { word | bit } else { word & !bit }, 0)?;
        Ok(())
    }

    /// Starts or stops recording `tgid`'s faults.
    pub fn set_tracked(&mut self, tgid: u32, on: bool) -> Result<()> {
        self.set_bit(names::TRACKED, tgid, on)
    }

    /// The generation of the process holding pid `tgid` now (see [`RegionKey`]); 0 above the
    /// pid_max read at start.
    pub fn generation(&self, tgid: u32) -> Result<u32> {
        if tgid >= self.pid_limit {
            return Ok(0);
        }
        let arr: Array<&MapData, u32> = Array::try_from(self.map(names::GENERATIONS)?)?;
        Ok(arr.get(&tgid, 0)?)
    }

    /// Counts a loss userspace ran into.
    pub fn count_drop(&mut self, reason: DropReason) {
        self.user_drops[reason as usize] += 1;
    }

    pub fn is_tracked(&self, tgid: u32) -> Result<bool> {
        let arr: Array<&MapData, u64> = Array::try_from(self.map(names::TRACKED)?)?;
        Ok(arr.get(&(tgid / 64), 0)? >> (tgid % 64) & 1 == 1)
    }

    /// The bits each CPU has recorded but not yet moved into the region map.
    fn pending(&self) -> Result<Vec<(RegionKey, OccupancyBitmap)>> {
        let arr: PerCpuArray<&MapData, PendingRegion> =
            PerCpuArray::try_from(self.map(names::PENDING_REGION)?)?;
        Ok(arr
            .get(&0, 0)?
            .iter()
            .filter(|p| p.tgid != 0 && !p.bits.is_empty())
            .map(|p| (RegionKey::of(p.tgid, p.generation, p.addr), p.bits))
            .collect())
    }

    /// The region map's entries as they are: in a few `BPF_MAP_LOOKUP_BATCH` calls where the
    /// kernel has it (feature `map_batch`), else one `get_next_key` and lookup per entry.
    fn region_entries(&self) -> Result<Vec<(RegionKey, OccupancyBitmap)>> {
        let map = self.map(names::REGIONS)?;
        if self.map_batch.get()
            && let aya::maps::Map::HashMap(data) = map
        {
            use std::os::fd::AsFd as _;
            match map_batch::lookup_all::<RegionKey, OccupancyBitmap>(data.fd().as_fd()) {
                Ok(all) => return Ok(all),
                // A kernel without it for this map: iterate from now on.
                Err(_) => self.map_batch.set(false),
            }
        }
        let map: HashMap<&MapData, RegionKey, OccupancyBitmap> = HashMap::try_from(map)?;
        // An entry deleted between get_next_key and lookup shows up as KeyNotFound: skip it.
        Ok(map.iter().filter_map(Result::ok).collect())
    }

    /// Whether the region map is read in batches (feature `map_batch`).
    pub fn reads_in_batches(&self) -> bool {
        self.map_batch.get()
    }

    /// Every region: the map, with what the CPUs still hold ORed in. The pending slots are read
    /// first: a slot flushed meanwhile is then found in the map, not lost between the two.
    pub fn regions(&self) -> Result<Vec<(RegionKey, OccupancyBitmap)>> {
        let pending = self.pending()?;
        let mut all: StdHashMap<RegionKey, OccupancyBitmap> =
            self.region_entries()?.into_iter().collect();
        for (key, bits) in pending {
            let entry = all.entry(key).or_default();
            *entry = entry.union(&bits);
        }
        Ok(all.into_iter().collect())
    }

    /// The keys of the region map (without reading the values).
    pub fn region_keys(&self) -> Result<Vec<RegionKey>> {
        if self.map_batch.get() {
            return Ok(self.region_entries()?.into_iter().map(|(k, _)| k).collect());
        }
        let map: HashMap<&MapData, RegionKey, OccupancyBitmap> =
            HashMap::try_from(self.map(names::REGIONS)?)?;
        Ok(map.keys().filter_map(Result::ok).collect())
    }

    /// One region, pending bits included.
    pub fn region(&self, key: &RegionKey) -> Result<Option<OccupancyBitmap>> {
        let pending: Vec<OccupancyBitmap> = self
            .pending()?
            .into_iter()
            .filter(|(k, _)| k == key)
            .map(|(_, b)| b)
            .collect();
        let map: HashMap<&MapData, RegionKey, OccupancyBitmap> =
            HashMap::try_from(self.map(names::REGIONS)?)?;
        let stored = match map.get(key, 0) {
            Ok(v) => Some(v),
            Err(aya::maps::MapError::KeyNotFound) => None,
            Err(e) => return Err(e.into()),
        };
        Ok(pending
            .into_iter()
            .fold(stored, |acc, b| Some(acc.unwrap_or_default().union(&b))))
    }

    /// Applies `corrections` in the kernel: for each, its `clear` bits are cleared and then its
    /// `set` bits set, atomically, in the region map and in every CPU's pending slot (a missing
    /// region is created when something is set). A bit a program sets meanwhile outside
    /// `clear` is kept, and no region value is ever replaced from here. A correction that
    /// needs a new region in a full map is not applied: the program counts it as a
    /// [`DropReason::RegionMapFull`] drop, and tracing goes on. Returns how many were not.
    pub fn correct(&mut self, corrections: &[Correction]) -> Result<u32> {
        let mut dropped = 0;
        for batch in corrections.chunks(MAX_CORRECTIONS as usize) {
            let mut arr: Array<&mut MapData, Correction> =
                Array::try_from(self.map_mut(names::CORRECTIONS)?)?;
            for (i, c) in batch.iter().enumerate() {
                arr.set(i as u32, c, 0)?;
            }
            let program: &RawTracePoint = self
                .ebpf
                .program(names::CORRECT)
                .ok_or(BpfError::MissingProgram(names::CORRECT))?
                .try_into()
                .map_err(|source| BpfError::ProgramType {
                    program: names::CORRECT,
                    source,
                })?;
            let mut opts = RawTracePointRunOptions::new();
            opts.args[0] = batch.len() as u64;
            let run = program.test_run(opts).map_err(BpfError::Correct)?;
            dropped += run.return_value;
        }
        Ok(dropped)
    }

    /// Makes one region `bits` as of now (empty: deletes it): whatever a program sets between
    /// the caller's read and this call is overwritten where `bits` lacks it. Prefer
    /// [`Bpf::correct`] with masks computed against what was read.
    pub fn set_region(&mut self, key: &RegionKey, bits: &OccupancyBitmap) -> Result<()> {
        if bits.is_empty() {
            return self.remove_regions(std::slice::from_ref(key));
        }
        self.correct(&[Correction {
            key: *key,
            clear: OccupancyBitmap::FULL.difference(bits),
            set: *bits,
        }])
        .map(|_| ())
    }

    /// Deletes the regions and khugepaged counts of every (tgid, generation) `keep` refuses;
    /// returns the regions deleted, with their last bits (an ended process's last state).
    pub fn prune(
        &mut self,
        keep: impl Fn(u32, u32) -> bool,
    ) -> Result<Vec<(RegionKey, OccupancyBitmap)>> {
        let gone: Vec<(RegionKey, OccupancyBitmap)> = self
            .region_entries()?
            .into_iter()
            .filter(|(k, _)| !keep(k.tgid, k.generation))
            .collect();
        let keys: Vec<RegionKey> = gone.iter().map(|(k, _)| *k).collect();
        self.remove_regions(&keys)?;
        let mut counts: HashMap<&mut MapData, KhugepagedKey, u64> =
            HashMap::try_from(self.map_mut(names::KHUGEPAGED_COUNTS)?)?;
        let stale: Vec<KhugepagedKey> = counts
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !keep(k.tgid, k.generation))
            .collect();
        for key in stale {
            removed(counts.remove(&key))?;
        }
        Ok(gone)
    }

    /// Deletes regions no program writes any more (of processes that ended).
    pub fn remove_regions(&mut self, keys: &[RegionKey]) -> Result<()> {
        let mut map: HashMap<&mut MapData, RegionKey, OccupancyBitmap> =
            HashMap::try_from(self.map_mut(names::REGIONS)?)?;
        for key in keys {
            removed(map.remove(key))?;
        }
        Ok(())
    }

    /// Whether the programs know `tgid`'s `mm` (its khugepaged events are attributed).
    pub fn knows_mm(&self, tgid: u32) -> Result<bool> {
        let map: HashMap<&MapData, u32, u64> = HashMap::try_from(self.map(names::TGID_MM)?)?;
        match map.get(&tgid, 0) {
            Ok(_) => Ok(true),
            Err(aya::maps::MapError::KeyNotFound) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// khugepaged counts per (tgid, event, status).
    pub fn khugepaged_counts(&self) -> Result<Vec<(KhugepagedKey, u64)>> {
        let map: HashMap<&MapData, KhugepagedKey, u64> =
            HashMap::try_from(self.map(names::KHUGEPAGED_COUNTS)?)?;
        Ok(map.iter().filter_map(Result::ok).collect())
    }

    /// Drops so far, summed over CPUs, by reason.
    pub fn drops(&self) -> Result<Vec<(DropReason, u64)>> {
        let arr: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(self.map(names::DROPS)?)?;
        DropReason::ALL
            .iter()
            .map(|&r| {
                let programs: u64 = arr.get(&(r as u32), 0)?.iter().sum();
                Ok((r, programs + self.user_drops[r as usize]))
            })
            .collect()
    }
}
