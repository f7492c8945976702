//! Which `mm` is whose, learned exactly when a process is attached: khugepaged's tracepoints
//! report only the `mm` (`include/trace/events/huge_memory.h`), and a process that stays idle
//! after it is attached never runs any of the other programs.
//!
//! `learn_task_mms` is a task iterator (`iter/task`, kernel/bpf/task_iter.c, since 5.8):
//! userspace runs it once per batch of newly traced processes, and it visits every task of the
//! system in one pass. On a kernel where it does not load (the `task_iter` fallback),
//! `sched_switch` learns a traced task's `mm` as it is switched out instead: exact, but a
//! process that never runs after it is attached stays unattributed.

use aya_ebpf::{helpers::bpf_probe_read_kernel, macros::tracepoint, programs::TracePointContext};

use crate::state::{
    conf, current_tgid, forget_mm, is_tracked, learn_mm, learn_mm_of, mm_known, task_mm,
};

/// `struct bpf_iter__task` (kernel/bpf/task_iter.c): `meta`, then `task`, NULL on the last call.
const ITER_TASK_OFFSET: usize = 1;

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task")]
pub extern "C" fn learn_task_mms(ctx: *mut core::ffi::c_void) -> i32 {
    try_learn_task_mms(ctx).unwrap_or(0)
}

fn try_learn_task_mms(ctx: *mut core::ffi::c_void) -> Result<i32, i64> {
    // SAFETY: the iterator's context is `struct bpf_iter__task`, two pointers.
    let task = unsafe { core::ptr::read_volatile((ctx as *const u64).add(ITER_TASK_OFFSET)) };
    if task == 0 {
        return Ok(0);
    }
    let task = task as *const u8;
    let tgid_offset = conf!(task_tgid) as usize;
    // SAFETY: reading a field of a task the iterator holds a reference to.
    let tgid: u32 = unsafe { bpf_probe_read_kernel(task.add(tgid_offset).cast()) }?;
    // Every thread is visited; the first one of a process learns its mm.
    if tgid == 0 || !is_tracked(tgid) || mm_known(tgid) {
        return Ok(0);
    }
    let Some(mm) = task_mm(task) else {
        return Ok(0);
    };
    learn_mm_of(tgid, mm);
    // An exec may have replaced the mm meanwhile (`fs/exec.c` exec_mmap runs before
    // `sched_process_exec`, which forgets the old one): then this one is stale.
    if task_mm(task) != Some(mm) {
        forget_mm(tgid);
    }
    Ok(0)
}

/// The `task_iter` fallback: `sched_switch` runs in the task being switched out.
#[tracepoint]
pub fn sched_switch(_ctx: TracePointContext) -> u32 {
    try_sched_switch().unwrap_or(0)
}

fn try_sched_switch() -> Result<u32, i64> {
    let tgid = current_tgid();
    if tgid != 0 && is_tracked(tgid) {
        learn_mm(tgid);
    }
    Ok(0)
}
