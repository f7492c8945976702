//! The hot path: every user page fault of every process runs `page_fault_user`, so untracked
//! processes leave after one inlined array load, and a tracked fault costs one hash lookup
//! and one atomic OR in the common case.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::tracepoint,
    programs::TracePointContext,
};
use collapse_common::{
    consts::{MIGRATE_MOVABLE, PF_WRITE, PMD_ORDER, USER_ADDR_END},
    event::{Event, EventKind},
    maps::{FaultInFlight, RegionKey},
};

use crate::state::{
    conf, emit, is_tracked, record, u32_at, u64_at, learn_mm, now, pte_index, set_bit, set_bits, FAULT_IN_FLIGHT,
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
    let addr = u64_at(&rec, conf!(fault_address));
    if addr >= USER_ADDR_END {
        return Ok(0);
    }
    let error_code = u64_at(&rec, conf!(fault_error_code));
    // A write fault leaves a private page mapped: a new page, a copy of the zero page, or a
    // copy of a shared one (`mm/memory.c` do_anonymous_page / wp_page_copy). A read fault on
    // anonymous memory maps the shared zero page, which does not count as present
    // (policies.md); a large folio faulted in on read is caught by `mm_page_alloc` below.
    if error_code & PF_WRITE != 0 {
        set_bit(&RegionKey::new(tgid, addr), pte_index(addr));
    }
    if let Some(slot) = FAULT_IN_FLIGHT.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; the fault handler is not re-entered on one CPU.
        unsafe { *slot = FaultInFlight { pid_tgid, addr, ts_ns: 0 } };
    }
    learn_mm(tgid);
    Ok(0)
}

/// A large folio allocated inside a traced fault maps 2^order PTEs at once (THP at fault time,
/// mTHP). Order-0 allocations, the vast majority, leave at the first test.
#[tracepoint]
pub fn mm_page_alloc(ctx: TracePointContext) -> u32 {
    try_page_alloc(&ctx).unwrap_or(0)
}

fn try_page_alloc(ctx: &TracePointContext) -> Result<u32, i64> {
    // Allocations outside a traced fault leave after one inlined per-CPU load and a compare.
    let Some(slot) = FAULT_IN_FLIGHT.get_ptr_mut(0) else {
        return Ok(0);
    };
    // SAFETY: this CPU's slot.
    let inflight = unsafe { &mut *slot };
    if inflight.pid_tgid == 0 {
        return Ok(0);
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    if inflight.pid_tgid != pid_tgid {
        return Ok(0);
    }
    // pfn, order, gfp_flags, migratetype: 40 bytes with the common header.
    let Some(rec) = record::<5>(ctx) else {
        return Ok(0);
    };
    let order = u32_at(&rec, conf!(alloc_order));
    if order == 0 || order > PMD_ORDER as u32 {
        return Ok(0);
    }
    // User folios are movable; slab and page tables are not (`include/linux/gfp.h`). A failed
    // attempt (an mTHP order falling back) is traced with pfn -1.
    let migratetype = u32_at(&rec, conf!(alloc_migratetype)) as i32;
    let pfn = u64_at(&rec, conf!(alloc_pfn));
    if migratetype != MIGRATE_MOVABLE || pfn == u64::MAX {
        return Ok(0);
    }
    // One folio per fault: consume the slot so a later allocation of the same task outside
    // a fault (page cache readahead in a syscall) is not mistaken for it.
    inflight.pid_tgid = 0;
    let tgid = (pid_tgid >> 32) as u32;
    let pages = 1u64 << order;
    let start = inflight.addr & !((pages << 12) - 1);
    let lo = pte_index(start);
    set_bits(&RegionKey::new(tgid, start), lo, lo + pages as u32);
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
