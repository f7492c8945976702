//! The hot path: every user page fault of every process runs `page_fault_user`, so untracked
//! processes leave after one inlined array load, and a traced fault costs an OR into this
//! CPU's pending-region slot in the common case (a hash update only when the fault is in
//! another region than the last one on this CPU).

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use collapse_common::{
    consts::{MIGRATE_MOVABLE, PF_WRITE, PMD_ORDER, USER_ADDR_END},
    event::{Event, EventKind},
    maps::FaultInFlight,
};

use crate::state::{
    FAULT_IN_FLIGHT, conf, emit, is_tracked, now, pte_index, record, record_bit, region_key,
    set_bits, u32_at, u64_at,
};

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
    if let Some(slot) = FAULT_IN_FLIGHT.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; the fault handler is not re-entered on one CPU.
        unsafe { *slot = FaultInFlight { pid_tgid, addr } };
    }
    Ok(0)
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

/// The in-flight fault of this CPU, if the current task is in one: allocations outside a
/// traced fault leave after one inlined per-CPU load and a compare.
#[inline(always)]
fn traced_fault_here() -> Option<(*mut FaultInFlight, u64)> {
    let slot = FAULT_IN_FLIGHT.get_ptr_mut(0)?;
    // SAFETY: this CPU's slot.
    let inflight = unsafe { *slot }.pid_tgid;
    if inflight == 0 {
        return None;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    (inflight == pid_tgid).then_some((slot, pid_tgid))
}

#[inline(always)]
fn large_folio(
    slot: *mut FaultInFlight,
    pid_tgid: u64,
    order: u32,
    allocated: bool,
    migratetype: i32,
) -> Result<u32, i64> {
    // User folios are movable; slab and page tables are not (`include/linux/gfp.h`).
    if order == 0 || order > PMD_ORDER as u32 || !allocated || migratetype != MIGRATE_MOVABLE {
        return Ok(0);
    }
    // SAFETY: this CPU's slot.
    let inflight = unsafe { &mut *slot };
    // One folio per fault: consume the slot so a later allocation of the same task outside
    // a fault (page cache readahead in a syscall) is not mistaken for it.
    inflight.pid_tgid = 0;
    let tgid = (pid_tgid >> 32) as u32;
    let pages = 1u64 << order;
    let start = inflight.addr & !((pages << 12) - 1);
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
