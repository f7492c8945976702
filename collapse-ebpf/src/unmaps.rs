//! Syscalls that change which pages a traced process has without a page fault of its own.
//! munmap, madvise(DONTNEED/REMOVE), MAP_FIXED and a shrinking brk drop pages: their ranges
//! are cleared here, at syscall exit, once the pages are gone. A call that failed may still
//! have dropped part of the range (madvise goes VMA by VMA and reports a hole or a refused VMA
//! at the end, a failed MAP_FIXED may leave the old range unmapped): its range is cleared
//! where the error says every mapped part was done, and re-read from pagemap otherwise.
//! mremap moves pages; MADV_POPULATE_*, MADV_COLLAPSE, MAP_POPULATE create them; MADV_FREE
//! leaves them mapped until reclaim: userspace re-reads those ranges from pagemap once the
//! syscall has returned.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_kernel},
    macros::tracepoint,
    programs::TracePointContext,
};
use collapse_common::{
    consts::{
        MADV_COLLAPSE, MADV_DONTNEED, MADV_FREE, MADV_HUGEPAGE, MADV_POPULATE_READ,
        MADV_POPULATE_WRITE, MADV_REMOVE, USER_ADDR_END,
    },
    event::EventKind,
    maps::{DropReason, PendingSyscall},
};

use crate::state::{
    FAULT_IN_FLIGHT, PENDING_SYSCALL, clear_range, conf, count_drop, emit_range, field, is_tracked,
    large_folio_hook_on,
};

/// `-ENOMEM` from madvise: part of the range was not mapped; every VMA in it was still done
/// (`madvise_walk_vmas()` in `mm/madvise.c` remembers the hole and goes on).
const ENOMEM: i64 = 12;

/// `MADV_DONTNEED_LOCKED` (since 5.18) drops pages like DONTNEED.
const MADV_DONTNEED_LOCKED: u64 = 24;
/// `mmap` flags (`include/uapi/asm-generic/mman-common.h`, `mman.h`).
const MAP_FIXED: u64 = 0x10;
const MAP_POPULATE: u64 = 0x8000;
const MAP_LOCKED: u64 = 0x2000;
/// `mlockall` flag: lock (and populate) what is mapped now.
const MCL_CURRENT: u64 = 1;

/// What a syscall's exit does with the range kept at its entry (`PendingSyscall::kind`).
const CLEAR: u32 = 1;
const RESYNC: u32 = 2;
/// mremap: the old range in the first record, the new length in a second one.
const MREMAP: u32 = 4;
/// brk: the old break in `start`; the exit clears what lies between the new and the old.
const BRK: u32 = 8;

/// Page-rounded end of `[start, start + len)`, saturating.
#[inline(always)]
fn range_end(start: u64, len: u64) -> u64 {
    start.saturating_add(len).saturating_add(0xfff) & !0xfff
}

/// The syscall is about to run in this thread: whatever fault it remembered has ended (what
/// keeps a stale record from matching where the kernel lacks `in_user_fault`).
#[inline(always)]
fn end_fault_in_flight(pid_tgid: u64) {
    if large_folio_hook_on()
        && let Some(slot) = FAULT_IN_FLIGHT.get_ptr_mut(pid_tgid as u32)
    {
        // SAFETY: this thread's slot.
        unsafe { *slot = 0 };
    }
}

/// Whether another task uses the caller's mm (`mm_users` > 1: other threads, or a reader of
/// its memory for a moment): only then can a page come back between a zap and its exit.
#[inline(always)]
fn shares_mm() -> bool {
    let (task_mm, mm_users) = (conf!(task_mm) as usize, conf!(mm_users) as usize);
    if mm_users == 0 {
        return true;
    }
    // SAFETY: kernel pointers read with the checked helper.
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let Ok(mm) = bpf_probe_read_kernel(task.add(task_mm) as *const u64) else {
            return true;
        };
        if mm == 0 {
            return true;
        }
        bpf_probe_read_kernel((mm as *const u8).add(mm_users) as *const i32).map_or(true, |n| n > 1)
    }
}

/// Keeps what the exit needs, keyed by the calling thread.
#[inline(always)]
fn remember(key: u64, start: u64, len: u64, kind: u32) {
    let pending = PendingSyscall {
        start,
        len,
        kind,
        _pad: 0,
    };
    if PENDING_SYSCALL.insert(key, pending, 0).is_err() {
        count_drop(DropReason::PendingMapFull);
    }
}

/// The record kept at entry under `key`, removed.
#[inline(always)]
fn take(key: u64) -> Option<PendingSyscall> {
    // SAFETY: copied out before the delete.
    let pending = unsafe { PENDING_SYSCALL.get(key) }.copied()?;
    let _ = PENDING_SYSCALL.remove(key);
    Some(pending)
}

/// The calling thread's tgid if traced, with its pid_tgid.
#[inline(always)]
fn traced_caller() -> Option<(u32, u64)> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    is_tracked(tgid).then_some((tgid, pid_tgid))
}

/// The common exit: clear and/or resync the kept range. `done(ret)` says the call dropped
/// every page of its range it could reach (success, or an error reported after all of it was
/// walked); any other failure may have dropped part of it, which pagemap tells.
#[inline(always)]
fn finish(ctx: &TracePointContext, done: impl Fn(i64) -> bool) -> Result<u32, i64> {
    let Some((tgid, pid_tgid)) = traced_caller() else {
        return Ok(0);
    };
    let Some(p) = take(pid_tgid) else {
        return Ok(0);
    };
    let ret: i64 = field(ctx, conf!(sys_exit_ret));
    let cleared = p.kind & CLEAR != 0 && done(ret);
    if cleared {
        clear_range(tgid, p.start, range_end(p.start, p.len));
    }
    // Even a failed populate or collapse may have done part of the range. And a clear at exit
    // also wipes what another thread faulted in again after the pages went and before the
    // call returned (a purging thread beside a faulting one): pagemap tells.
    if p.kind & RESYNC != 0 || (p.kind & CLEAR != 0 && (!cleared || shares_mm())) {
        emit_range(EventKind::Resync, tgid, p.start, p.len);
    }
    Ok(0)
}

#[tracepoint]
pub fn sys_enter_munmap(ctx: TracePointContext) -> u32 {
    try_enter_munmap(&ctx).unwrap_or(0)
}

fn try_enter_munmap(ctx: &TracePointContext) -> Result<u32, i64> {
    let Some((_, pid_tgid)) = traced_caller() else {
        return Ok(0);
    };
    end_fault_in_flight(pid_tgid);
    remember(
        pid_tgid,
        field(ctx, conf!(munmap_addr)),
        field(ctx, conf!(munmap_len)),
        CLEAR,
    );
    Ok(0)
}

#[tracepoint]
pub fn sys_exit_munmap(ctx: TracePointContext) -> u32 {
    // munmap fails before it unmaps anything (`do_vmi_align_munmap()` gathers first); a failure
    // is re-read all the same.
    finish(&ctx, |ret| ret == 0).unwrap_or(0)
}

#[tracepoint]
pub fn sys_enter_madvise(ctx: TracePointContext) -> u32 {
    try_madvise(&ctx).unwrap_or(0)
}

fn try_madvise(ctx: &TracePointContext) -> Result<u32, i64> {
    let Some((tgid, pid_tgid)) = traced_caller() else {
        return Ok(0);
    };
    end_fault_in_flight(pid_tgid);
    let start: u64 = field(ctx, conf!(madvise_start));
    let len: u64 = field(ctx, conf!(madvise_len));
    let behavior: u64 = field::<u64>(ctx, conf!(madvise_behavior)) & 0xffff_ffff;
    match behavior {
        MADV_DONTNEED | MADV_DONTNEED_LOCKED | MADV_REMOVE => remember(pid_tgid, start, len, CLEAR),
        // MADV_FREE pages stay mapped (and in use again if written, without a fault) until
        // reclaim takes them: pagemap says which are still there.
        MADV_FREE | MADV_POPULATE_READ | MADV_POPULATE_WRITE | MADV_COLLAPSE => {
            remember(pid_tgid, start, len, RESYNC)
        }
        // Userspace attaches the large-folio hook if it is not yet (see tracer::bpf).
        MADV_HUGEPAGE => emit_range(EventKind::HugepageAdvice, tgid, start, len),
        _ => {}
    }
    Ok(0)
}

#[tracepoint]
pub fn sys_exit_madvise(ctx: TracePointContext) -> u32 {
    finish(&ctx, |ret| ret == 0 || ret == -ENOMEM).unwrap_or(0)
}

#[tracepoint]
pub fn sys_enter_mmap(ctx: TracePointContext) -> u32 {
    try_mmap(&ctx).unwrap_or(0)
}

fn try_mmap(ctx: &TracePointContext) -> Result<u32, i64> {
    let Some((_, pid_tgid)) = traced_caller() else {
        return Ok(0);
    };
    end_fault_in_flight(pid_tgid);
    let addr: u64 = field(ctx, conf!(mmap_addr));
    let len: u64 = field(ctx, conf!(mmap_len));
    let flags: u64 = field(ctx, conf!(mmap_flags));
    // MAP_FIXED replaces whatever was mapped there (cleared at exit, on success); the range
    // kept is the requested one, which MAP_FIXED guarantees is the mapped one.
    let clear = if flags & MAP_FIXED != 0 { CLEAR } else { 0 };
    // MAP_POPULATE and MAP_LOCKED fill the mapping without faults.
    let resync = if flags & (MAP_POPULATE | MAP_LOCKED) != 0 {
        RESYNC
    } else {
        0
    };
    let kind = clear | resync;
    if kind != 0 {
        remember(pid_tgid, addr, len, kind);
    }
    Ok(0)
}

#[tracepoint]
pub fn sys_exit_mmap(ctx: TracePointContext) -> u32 {
    try_exit_mmap(&ctx).unwrap_or(0)
}

fn try_exit_mmap(ctx: &TracePointContext) -> Result<u32, i64> {
    let Some((tgid, pid_tgid)) = traced_caller() else {
        return Ok(0);
    };
    let Some(p) = take(pid_tgid) else {
        return Ok(0);
    };
    let ret: i64 = field(ctx, conf!(sys_exit_ret));
    // mmap returns the address, or -errno (`IS_ERR_VALUE`: the last page of the space). A
    // failed MAP_FIXED may have unmapped the old range already (`mmap_region()`): re-read it.
    if ret < 0 && ret > -4096 {
        if p.kind & CLEAR != 0 {
            emit_range(EventKind::Resync, tgid, p.start, p.len);
        }
        return Ok(0);
    }
    let addr = ret as u64;
    if p.kind & CLEAR != 0 {
        clear_range(tgid, addr, range_end(addr, p.len));
    }
    if p.kind & RESYNC != 0 {
        emit_range(EventKind::Resync, tgid, addr, p.len);
    }
    Ok(0)
}

#[tracepoint]
pub fn sys_enter_mremap(ctx: TracePointContext) -> u32 {
    try_mremap(&ctx).unwrap_or(0)
}

fn try_mremap(ctx: &TracePointContext) -> Result<u32, i64> {
    let Some((_, pid_tgid)) = traced_caller() else {
        return Ok(0);
    };
    end_fault_in_flight(pid_tgid);
    // The exit needs the old range and the new length: two records, the second keyed by
    // the complemented id.
    remember(
        pid_tgid,
        field(ctx, conf!(mremap_addr)),
        field(ctx, conf!(mremap_old_len)),
        MREMAP,
    );
    remember(!pid_tgid, field(ctx, conf!(mremap_new_len)), 0, MREMAP);
    Ok(0)
}

#[tracepoint]
pub fn sys_exit_mremap(ctx: TracePointContext) -> u32 {
    try_exit_mremap(&ctx).unwrap_or(0)
}

fn try_exit_mremap(ctx: &TracePointContext) -> Result<u32, i64> {
    let Some((tgid, pid_tgid)) = traced_caller() else {
        return Ok(0);
    };
    let (Some(p), Some(new)) = (take(pid_tgid), take(!pid_tgid)) else {
        return Ok(0);
    };
    let new_len = new.start;
    let ret: i64 = field(ctx, conf!(sys_exit_ret));
    // A failed mremap moves back what it moved (`move_vma()`), but a shrink done before the
    // failure stays: re-read the old range.
    if ret < 0 && ret > -4096 {
        emit_range(EventKind::Resync, tgid, p.start, p.len);
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

/// The current break (`mm->brk`), read through `current->mm` with offsets from BTF.
#[inline(always)]
fn current_brk() -> Option<u64> {
    let (task_mm, mm_brk) = (conf!(task_mm) as usize, conf!(mm_brk) as usize);
    if mm_brk == 0 {
        return None;
    }
    // SAFETY: kernel pointers read with the checked helper.
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let mm = bpf_probe_read_kernel(task.add(task_mm) as *const u64).ok()?;
        if mm == 0 {
            return None;
        }
        bpf_probe_read_kernel((mm as *const u8).add(mm_brk) as *const u64).ok()
    }
}

/// A shrinking brk (glibc trims the heap top) unmaps `[new, old)`.
#[tracepoint]
pub fn sys_enter_brk(_ctx: TracePointContext) -> u32 {
    if let Some((_, pid_tgid)) = traced_caller() {
        end_fault_in_flight(pid_tgid);
        if let Some(old) = current_brk() {
            remember(pid_tgid, old, 0, BRK);
        }
    }
    0
}

#[tracepoint]
pub fn sys_exit_brk(ctx: TracePointContext) -> u32 {
    try_exit_brk(&ctx).unwrap_or(0)
}

fn try_exit_brk(ctx: &TracePointContext) -> Result<u32, i64> {
    let Some((tgid, pid_tgid)) = traced_caller() else {
        return Ok(0);
    };
    let Some(p) = take(pid_tgid) else {
        return Ok(0);
    };
    // brk returns the new break (the old one when it refuses).
    let new: i64 = field(ctx, conf!(sys_exit_ret));
    let (new, old) = (range_end(new as u64, 0), range_end(p.start, 0));
    if new < old {
        clear_range(tgid, new, old);
    }
    Ok(0)
}

/// mlock and mlock2 populate the range (through GUP, not faults).
#[tracepoint]
pub fn sys_enter_mlock(ctx: TracePointContext) -> u32 {
    enter_mlock(&ctx)
}

#[tracepoint]
pub fn sys_enter_mlock2(ctx: TracePointContext) -> u32 {
    enter_mlock(&ctx)
}

#[inline(always)]
fn enter_mlock(ctx: &TracePointContext) -> u32 {
    if let Some((_, pid_tgid)) = traced_caller() {
        end_fault_in_flight(pid_tgid);
        remember(
            pid_tgid,
            field(ctx, conf!(mlock_start)),
            field(ctx, conf!(mlock_len)),
            RESYNC,
        );
    }
    0
}

#[tracepoint]
pub fn sys_exit_mlock(ctx: TracePointContext) -> u32 {
    finish(&ctx, |_| false).unwrap_or(0)
}

#[tracepoint]
pub fn sys_exit_mlock2(ctx: TracePointContext) -> u32 {
    finish(&ctx, |_| false).unwrap_or(0)
}

#[tracepoint]
pub fn sys_exit_mlockall(ctx: TracePointContext) -> u32 {
    finish(&ctx, |_| false).unwrap_or(0)
}

/// `mlockall(MCL_CURRENT)` populates everything mapped.
#[tracepoint]
pub fn sys_enter_mlockall(ctx: TracePointContext) -> u32 {
    if let Some((_, pid_tgid)) = traced_caller() {
        end_fault_in_flight(pid_tgid);
        // The flags are the first argument, where mlock has `start`.
        let flags: u64 = field(&ctx, conf!(mlock_start));
        if flags & MCL_CURRENT != 0 {
            remember(pid_tgid, 0, USER_ADDR_END, RESYNC);
        }
    }
    0
}
