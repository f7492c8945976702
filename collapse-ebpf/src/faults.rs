//! The hot path: every user page fault of every process runs `page_fault_user`, so untracked
//! processes leave after one inlined array load, and a traced fault costs an OR into this
//! CPU's pending-region slot in the common case (a hash update only when the fault is in
//! another region than the last one on this CPU).
//!
//! Once the large-folio hook (`mm_page_alloc`) is attached, a traced fault also leaves its
//! address in its thread's in-flight slot, and an allocation takes it only while that thread
//! is inside a user fault now (`task_struct::in_user_fault`, set and cleared around
//! `handle_mm_fault()` for FAULT_FLAG_USER faults, `mm/memory.c`), so a fault that slept and
//! migrated is still matched, and a later allocation of that thread outside a fault
//! (readahead in a syscall) is not.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_kernel},
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use collapse_common::{
    consts::{MIGRATE_MOVABLE, PF_WRITE, PMD_MASK, PMD_ORDER, PMD_SIZE, USER_ADDR_END},
    event::{Event, EventKind},
    maps::fault_in_flight,
};

use crate::state::{
    FAULT_IN_FLIGHT, conf, emit, emit_range, is_tracked, large_folio_hook_on, now, pte_index,
    record, record_bit, region_key, set_bits, u32_at, u64_at,
};

/// `error_code` bit 2 (x86 `X86_PF_USER`): the fault came from user mode.
const PF_USER: u64 = 4;

#[tracepoint]
pub fn page_fault_user(ctx: TracePointContext) -> u32 {
    try_fault(&ctx).unwrap_or(0)
}

/// Kernel-mode faults on user addresses (a syscall writing into an untouched buffer) populate
/// user pages too.
#[tracepoint]
pub fn page_fault_kernel(ctx: TracePointContext) -> u32 {
    try_fault(&ctx).unwrap_or(0)
}

fn try_fault(ctx: &TracePointContext) -> Result<u32, i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !is_tracked(tgid) {
        return Ok(0);
    }
    // One helper call for the whole record (common header + address, ip, error_code).
    let Some(rec) = record::<4>(ctx) else {
        return Ok(0);
    };
    fault(
        pid_tgid,
        u64_at(&rec, conf!(fault_address)),
        u64_at(&rec, conf!(fault_error_code)),
    )
}

/// The fast path: the same tracepoints as BTF-typed raw tracepoints. The kernel skips building
/// the trace record and the arguments are plain context loads, no helper call. Userspace uses
/// these only after checking in BTF that `btf_trace_page_fault_user` takes
/// (address, regs, error_code) in that order (`arch/x86/include/asm/trace/exceptions.h`).
#[btf_tracepoint(function = "page_fault_user")]
pub fn page_fault_user_btf(ctx: BtfTracePointContext) -> i32 {
    try_fault_btf(&ctx).unwrap_or(0) as i32
}

#[btf_tracepoint(function = "page_fault_kernel")]
pub fn page_fault_kernel_btf(ctx: BtfTracePointContext) -> i32 {
    try_fault_btf(&ctx).unwrap_or(0) as i32
}

#[inline(always)]
fn try_fault_btf(ctx: &BtfTracePointContext) -> Result<u32, i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !is_tracked((pid_tgid >> 32) as u32) {
        return Ok(0);
    }
    fault(pid_tgid, ctx.arg::<u64>(0), ctx.arg::<u64>(2))
}

/// Records one fault of a traced process.
#[inline(always)]
fn fault(pid_tgid: u64, addr: u64, error_code: u64) -> Result<u32, i64> {
    let tgid = (pid_tgid >> 32) as u32;
    if addr >= USER_ADDR_END {
        return Ok(0);
    }
    // A write fault leaves a private page mapped: a new page, a copy of the zero page, or a
    // copy of a shared one (`mm/memory.c` do_anonymous_page / wp_page_copy). A read fault on
    // anonymous memory maps the shared zero page, which does not count as present
    // (policies.md); a large folio faulted in on read is caught by `mm_page_alloc` below.
    if error_code & PF_WRITE != 0 {
        record_bit(tgid, addr);
    }
    // Without the hook nothing reads the slot: a traced fault pays one array load for this.
    if large_folio_hook_on() {
        note_in_flight(pid_tgid, addr, error_code & PF_USER == 0);
    }
    Ok(0)
}

/// Keeps the fault in its thread's slot for `mm_page_alloc`.
#[inline(always)]
fn note_in_flight(pid_tgid: u64, addr: u64, kernel_mode: bool) {
    let Some(slot) = FAULT_IN_FLIGHT.get_ptr_mut(pid_tgid as u32) else {
        return;
    };
    // SAFETY: this thread's slot; only this thread writes it outside its exit.
    let slot = unsafe { &mut *slot };
    if !kernel_mode {
        *slot = (addr & !fault_in_flight::FLAGS) | fault_in_flight::USER;
        return;
    }
    // A kernel-mode fault (a syscall writing into an untouched buffer) does not set
    // `in_user_fault`, and the syscall's own large allocations (readahead) cannot be told from
    // its folio: its region is re-read from pagemap instead, once per run of kernel-mode
    // faults in one region.
    let region = addr & PMD_MASK;
    if *slot == region | fault_in_flight::KERNEL {
        return;
    }
    *slot = region | fault_in_flight::KERNEL;
    emit_range(EventKind::Resync, (pid_tgid >> 32) as u32, region, PMD_SIZE);
}

/// A large folio allocated inside a traced fault maps 2^order PTEs at once (THP at fault time,
/// mTHP). Order-0 allocations, the vast majority, leave at the first test.
#[tracepoint]
pub fn mm_page_alloc(ctx: TracePointContext) -> u32 {
    try_page_alloc(&ctx).unwrap_or(0)
}

fn try_page_alloc(ctx: &TracePointContext) -> Result<u32, i64> {
    let Some((slot, pid_tgid)) = traced_fault_here() else {
        return Ok(0);
    };
    // pfn, order, gfp_flags, migratetype: 40 bytes with the common header.
    let Some(rec) = record::<5>(ctx) else {
        return Ok(0);
    };
    let order = u32_at(&rec, conf!(alloc_order));
    // A failed attempt (an mTHP order falling back) is traced with pfn -1.
    let allocated = u64_at(&rec, conf!(alloc_pfn)) != u64::MAX;
    let migratetype = u32_at(&rec, conf!(alloc_migratetype)) as i32;
    large_folio(slot, pid_tgid, order, allocated, migratetype)
}

/// The fast path of `mm_page_alloc`: TP_PROTO(page, order, gfp_flags, migratetype)
/// (`include/trace/events/kmem.h`), checked in BTF by userspace.
#[btf_tracepoint(function = "mm_page_alloc")]
pub fn mm_page_alloc_btf(ctx: BtfTracePointContext) -> i32 {
    // The order is a plain context load here: order-0 allocations, nearly all of them, leave
    // before anything else.
    let order: u64 = ctx.arg(1);
    if order == 0 {
        return 0;
    }
    let Some((slot, pid_tgid)) = traced_fault_here() else {
        return 0;
    };
    let page: u64 = ctx.arg(0);
    let migratetype: i64 = ctx.arg(3);
    large_folio(slot, pid_tgid, order as u32, page != 0, migratetype as i32).unwrap_or(0) as i32
}

/// The current thread's in-flight slot, if it holds a user fault: allocations of other
/// threads leave after one inlined array load and a test.
#[inline(always)]
fn traced_fault_here() -> Option<(*mut u64, u64)> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let slot = FAULT_IN_FLIGHT.get_ptr_mut(pid_tgid as u32)?;
    // SAFETY: this thread's slot.
    let inflight = unsafe { *slot };
    (inflight & fault_in_flight::USER != 0).then_some((slot, pid_tgid))
}

/// Whether the fault in the slot is still going on. Exact where the kernel has
/// `in_user_fault`: the slot holds the thread's last user fault, and the thread is inside a
/// user fault now, so that fault is this one.
#[inline(always)]
fn still_in_fault(slot: &mut u64) -> bool {
    let bit = conf!(task_in_user_fault);
    if bit != 0 && !in_user_fault(bit - 1) {
        *slot = 0;
        return false;
    }
    true
}

/// `current->in_user_fault`, at bit offset `bit` of `struct task_struct` (from BTF; x86 is
/// little endian, so bit n of the struct is bit n % 8 of byte n / 8).
#[inline(always)]
fn in_user_fault(bit: u32) -> bool {
    // SAFETY: reading one byte of the current task with the checked helper.
    let byte: u8 = unsafe {
        let task = bpf_get_current_task() as *const u8;
        bpf_probe_read_kernel(task.add((bit / 8) as usize)).unwrap_or(0)
    };
    byte >> (bit % 8) & 1 == 1
}

#[inline(always)]
fn large_folio(
    slot: *mut u64,
    pid_tgid: u64,
    order: u32,
    allocated: bool,
    migratetype: i32,
) -> Result<u32, i64> {
    // User folios are movable; slab and page tables are not (`include/linux/gfp.h`).
    if order == 0 || order > PMD_ORDER as u32 || !allocated || migratetype != MIGRATE_MOVABLE {
        return Ok(0);
    }
    // SAFETY: this thread's slot.
    let inflight = unsafe { &mut *slot };
    if !still_in_fault(inflight) {
        return Ok(0);
    }
    let tgid = (pid_tgid >> 32) as u32;
    if !is_tracked(tgid) {
        return Ok(0);
    }
    let addr = *inflight & !fault_in_flight::FLAGS;
    // One folio per fault: consume the slot (where `in_user_fault` is missing, that is what
    // keeps a later allocation of the task outside a fault from being taken for it).
    *inflight = 0;
    let pages = 1u64 << order;
    let start = addr & !((pages << 12) - 1);
    let lo = pte_index(start);
    set_bits(&region_key(tgid, start), lo, lo + pages as u32);
    emit(&Event {
        ts_ns: now(),
        addr: start,
        len: pages << 12,
        kind: EventKind::LargeFolioFault as u32,
        tgid,
        pid: pid_tgid as u32,
        order: order as u16,
        ..Event::default()
    });
    Ok(0)
}
