//! Syscalls that change which pages a traced process has without a page fault of its own:
//! munmap, madvise(DONTNEED/FREE/REMOVE) and MAP_FIXED drop pages (cleared here, in the
//! program); mremap moves them, MADV_POPULATE_* / MADV_COLLAPSE / MAP_POPULATE create them
//! (userspace re-reads those ranges from pagemap once the syscall has returned).

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use collapse_common::{
    consts::{
        MADV_COLLAPSE, MADV_DONTNEED, MADV_FREE, MADV_HUGEPAGE, MADV_POPULATE_READ,
        MADV_POPULATE_WRITE, MADV_REMOVE,
    },
    event::EventKind,
    maps::{DropReason, PendingSyscall},
};

use crate::state::{
    FAULT_IN_FLIGHT, PENDING_SYSCALL, clear_range, conf, count_drop, emit_range, field, is_tracked,
    learn_mm,
};

/// `MADV_DONTNEED_LOCKED` (since 5.18) drops pages like DONTNEED.
const MADV_DONTNEED_LOCKED: u64 = 24;
/// `mmap` flags (`include/uapi/asm-generic/mman-common.h`, `mman.h`).
const MAP_FIXED: u64 = 0x10;
const MAP_POPULATE: u64 = 0x8000;
/// `PendingSyscall::kind` for mremap: the exit handler needs the enter arguments.
const PENDING_MREMAP: u32 = 0x100;

/// Page-rounded end of `[start, start + len)`, saturating.
#[inline(always)]
fn range_end(start: u64, len: u64) -> u64 {
    start.saturating_add(len).saturating_add(0xfff) & !0xfff
}

/// The syscall is about to run in this task: whatever fault it remembered has ended.
#[inline(always)]
fn end_fault_in_flight(tgid: u32) {
    // Also a chance to learn the mm of a process that has not faulted since it was attached.
    learn_mm(tgid);
    if let Some(slot) = FAULT_IN_FLIGHT.get_ptr_mut(0) {
        // SAFETY: this CPU's slot.
        unsafe { (*slot).pid_tgid = 0 };
    }
}

#[inline(always)]
fn remember(pid_tgid: u64, start: u64, len: u64, kind: u32) {
    let pending = PendingSyscall {
        start,
        len,
        kind,
        _pad: 0,
    };
    if PENDING_SYSCALL.insert(pid_tgid, pending, 0).is_err() {
        count_drop(DropReason::PendingMapFull);
    }
}

/// The syscall's enter arguments, if we kept them, and whether it succeeded.
#[inline(always)]
fn take_pending(ctx: &TracePointContext) -> Option<(u32, PendingSyscall, i64)> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !is_tracked(tgid) {
        return None;
    }
    // SAFETY: value copied out before the delete.
    let pending = unsafe { PENDING_SYSCALL.get(pid_tgid) }.copied()?;
    let _ = PENDING_SYSCALL.remove(pid_tgid);
    let ret: i64 = field(ctx, conf!(sys_exit_ret));
    Some((tgid, pending, ret))
}

#[tracepoint]
pub fn sys_enter_munmap(ctx: TracePointContext) -> u32 {
    try_munmap(&ctx).unwrap_or(0)
}

fn try_munmap(ctx: &TracePointContext) -> Result<u32, i64> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !is_tracked(tgid) {
        return Ok(0);
    }
    end_fault_in_flight(tgid);
    let start: u64 = field(ctx, conf!(munmap_addr));
    let len: u64 = field(ctx, conf!(munmap_len));
    clear_range(tgid, start, range_end(start, len));
    Ok(0)
}

#[tracepoint]
pub fn sys_enter_madvise(ctx: TracePointContext) -> u32 {
    try_madvise(&ctx).unwrap_or(0)
}

fn try_madvise(ctx: &TracePointContext) -> Result<u32, i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !is_tracked(tgid) {
        return Ok(0);
    }
    end_fault_in_flight(tgid);
    let start: u64 = field(ctx, conf!(madvise_start));
    let len: u64 = field(ctx, conf!(madvise_len));
    let behavior: u64 = field::<u64>(ctx, conf!(madvise_behavior)) & 0xffff_ffff;
    match behavior {
        MADV_DONTNEED | MADV_DONTNEED_LOCKED | MADV_FREE | MADV_REMOVE => {
            clear_range(tgid, start, range_end(start, len))
        }
        MADV_POPULATE_READ | MADV_POPULATE_WRITE | MADV_COLLAPSE => {
            remember(pid_tgid, start, len, EventKind::Resync as u32)
        }
        // Userspace attaches the large-folio hook if it is not yet (see tracer::bpf).
        MADV_HUGEPAGE => emit_range(EventKind::HugepageAdvice, tgid, start, len),
        _ => {}
    }
    Ok(0)
}

#[tracepoint]
pub fn sys_exit_madvise(ctx: TracePointContext) -> u32 {
    if let Some((tgid, p, _ret)) = take_pending(&ctx) {
        // Even a failed populate or collapse may have done part of the range.
        emit_range(EventKind::Resync, tgid, p.start, p.len);
    }
    0
}

#[tracepoint]
pub fn sys_enter_mmap(ctx: TracePointContext) -> u32 {
    try_mmap(&ctx).unwrap_or(0)
}

fn try_mmap(ctx: &TracePointContext) -> Result<u32, i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !is_tracked(tgid) {
        return Ok(0);
    }
    end_fault_in_flight(tgid);
    let addr: u64 = field(ctx, conf!(mmap_addr));
    let len: u64 = field(ctx, conf!(mmap_len));
    let flags: u64 = field(ctx, conf!(mmap_flags));
    // MAP_FIXED replaces whatever was mapped there.
    if flags & MAP_FIXED != 0 {
        clear_range(tgid, addr, range_end(addr, len));
    }
    if flags & MAP_POPULATE != 0 {
        remember(pid_tgid, addr, len, EventKind::Resync as u32);
    }
    Ok(0)
}

#[tracepoint]
pub fn sys_exit_mmap(ctx: TracePointContext) -> u32 {
    if let Some((tgid, p, ret)) = take_pending(&ctx)
        && ret > 0
    {
        emit_range(EventKind::Resync, tgid, ret as u64, p.len);
    }
    0
}

#[tracepoint]
pub fn sys_enter_mremap(ctx: TracePointContext) -> u32 {
    try_mremap(&ctx).unwrap_or(0)
}

fn try_mremap(ctx: &TracePointContext) -> Result<u32, i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !is_tracked(tgid) {
        return Ok(0);
    }
    end_fault_in_flight(tgid);
    let addr: u64 = field(ctx, conf!(mremap_addr));
    let old_len: u64 = field(ctx, conf!(mremap_old_len));
    let new_len: u64 = field(ctx, conf!(mremap_new_len));
    // The exit needs the old range and the new length: two records, the second keyed by
    // the complemented id.
    remember(pid_tgid, addr, old_len, PENDING_MREMAP);
    let new = PendingSyscall {
        start: new_len,
        len: 0,
        kind: PENDING_MREMAP,
        _pad: 0,
    };
    if PENDING_SYSCALL.insert(!pid_tgid, new, 0).is_err() {
        count_drop(DropReason::PendingMapFull);
    }
    Ok(0)
}

#[tracepoint]
pub fn sys_exit_mremap(ctx: TracePointContext) -> u32 {
    try_exit_mremap(&ctx).unwrap_or(0)
}

fn try_exit_mremap(ctx: &TracePointContext) -> Result<u32, i64> {
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: copied out before the delete.
    let new_len = match unsafe { PENDING_SYSCALL.get(!pid_tgid) } {
        Some(p) => p.start,
        None => return Ok(0),
    };
    let _ = PENDING_SYSCALL.remove(!pid_tgid);
    let Some((tgid, p, ret)) = take_pending(ctx) else {
        return Ok(0);
    };
    if ret < 0 {
        return Ok(0);
    }
    let new_addr = ret as u64;
    let old_end = range_end(p.start, p.len);
    if new_addr != p.start {
        // Moved: the old range is empty now (also with MREMAP_DONTUNMAP, which leaves it
        // mapped but without pages), the new one holds the moved pages.
        clear_range(tgid, p.start, old_end);
        emit_range(EventKind::Resync, tgid, new_addr, new_len);
    } else if new_len < p.len {
        clear_range(tgid, range_end(p.start, new_len), old_end);
    }
    Ok(0)
}
