//! khugepaged's scan and collapse tracepoints (`include/trace/events/huge_memory.h`). They run
//! in the khugepaged kthread (or in the caller of MADV_COLLAPSE), so the process is found by
//! the `mm` they report, through the `mm` → tgid map (`attribution.rs` fills it).

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use collapse_common::{
    event::{Event, EventKind},
    maps::{DropReason, KhugepagedEvent, KhugepagedKey, PendingIsolate},
};

use crate::state::{
    PENDING_ISOLATE, conf, count_drop, count_khugepaged, emit, field, generation, mm_owner, now,
};

#[inline(always)]
fn record(tgid: u32, which: KhugepagedEvent, status: i32, addr: u64, a: i32, b: i32, c: i32) {
    count_khugepaged(&KhugepagedKey {
        tgid,
        event: which as u16,
        status: status as i16,
        // The mm is forgotten when its group ends, so `tgid` is the live generation.
        generation: generation(tgid),
    });
    emit(&Event {
        ts_ns: now(),
        addr,
        kind: EventKind::Khugepaged as u32,
        tgid,
        pid: bpf_get_current_pid_tgid() as u32,
        khugepaged: which as u16,
        status,
        a,
        b,
        c,
        ..Event::default()
    });
}

#[tracepoint]
pub fn mm_khugepaged_scan_pmd(ctx: TracePointContext) -> u32 {
    let mm: u64 = field(&ctx, conf!(scan_mm));
    let pfn: u64 = field(&ctx, conf!(scan_pfn));
    let Some(tgid) = mm_owner(mm) else {
        return 0;
    };
    let referenced: i32 = field(&ctx, conf!(scan_referenced));
    let none_or_zero: i32 = field(&ctx, conf!(scan_none_or_zero));
    let status: i32 = field(&ctx, conf!(scan_status));
    let unmapped: i32 = field(&ctx, conf!(scan_unmapped));
    record(
        tgid,
        KhugepagedEvent::ScanPmd,
        status,
        pfn,
        referenced,
        none_or_zero,
        unmapped,
    );
    0
}

#[tracepoint]
pub fn mm_collapse_huge_page(ctx: TracePointContext) -> u32 {
    let pid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: copied out before the delete.
    let pending = unsafe { PENDING_ISOLATE.get(pid) }.copied();
    if pending.is_some() {
        let _ = PENDING_ISOLATE.remove(pid);
    }
    let mm: u64 = field(&ctx, conf!(collapse_mm));
    let Some(tgid) = mm_owner(mm) else {
        return 0;
    };
    if let Some(p) = pending {
        record(
            tgid,
            KhugepagedEvent::Isolate,
            p.status,
            p.pfn,
            p.none_or_zero,
            p.referenced,
            0,
        );
    }
    let isolated: i32 = field(&ctx, conf!(collapse_isolated));
    let status: i32 = field(&ctx, conf!(collapse_status));
    record(tgid, KhugepagedEvent::Collapse, status, 0, isolated, 0, 0);
    0
}

/// The isolate tracepoint has no `mm`: keep its result per task until the collapse attempt it
/// is part of ends (`mm/khugepaged.c` collapse_huge_page → __collapse_huge_page_isolate).
#[tracepoint]
pub fn mm_collapse_huge_page_isolate(ctx: TracePointContext) -> u32 {
    let pid = bpf_get_current_pid_tgid() as u32;
    let pending = PendingIsolate {
        ts_ns: now(),
        pfn: field(&ctx, conf!(isolate_pfn)),
        none_or_zero: field(&ctx, conf!(isolate_none_or_zero)),
        referenced: field(&ctx, conf!(isolate_referenced)),
        status: field(&ctx, conf!(isolate_status)),
        _pad: 0,
    };
    if PENDING_ISOLATE.insert(pid, pending, 0).is_err() {
        count_drop(DropReason::PendingMapFull);
    }
    0
}

#[tracepoint]
pub fn mm_collapse_huge_page_swapin(ctx: TracePointContext) -> u32 {
    let mm: u64 = field(&ctx, conf!(swapin_mm));
    let Some(tgid) = mm_owner(mm) else {
        return 0;
    };
    let swapped_in: i32 = field(&ctx, conf!(swapin_swapped_in));
    let referenced: i32 = field(&ctx, conf!(swapin_referenced));
    let ret: i32 = field(&ctx, conf!(swapin_ret));
    record(
        tgid,
        KhugepagedEvent::Swapin,
        ret,
        0,
        swapped_in,
        referenced,
        0,
    );
    0
}
