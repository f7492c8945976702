//! Process lifetime: which new processes become traced (children, a matching comm, the
//! target cgroup), and forgetting a process at exit or exec.

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_task, bpf_probe_read_kernel,
        generated::bpf_get_current_ancestor_cgroup_id,
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use collapse_common::{consts::CLONE_THREAD, event::EventKind};

use crate::state::{
    CONFIG, FAULT_IN_FLIGHT, TRACKED, bit_clear, bit_set, clear_pending_all, conf, current_tgid,
    emit_range, end_generation, field, flush_pending_all, forget_mm, generation, is_tracked,
    learn_mm,
};

/// Whether the current task's comm is the `--comm` target.
#[inline(always)]
fn comm_matches() -> bool {
    let Ok(comm) = bpf_get_current_comm() else {
        return false;
    };
    // SAFETY: reading the frozen global byte array.
    let want = unsafe { core::ptr::read_volatile(&raw const CONFIG.comm) };
    comm == want
}

/// `task_newtask` runs in the parent during `copy_process` (`kernel/fork.c`).
#[tracepoint]
pub fn task_newtask(ctx: TracePointContext) -> u32 {
    try_newtask(&ctx).unwrap_or(0)
}

fn try_newtask(ctx: &TracePointContext) -> Result<u32, i64> {
    let clone_flags: u64 = field(ctx, conf!(newtask_clone_flags));
    if clone_flags & CLONE_THREAD != 0 {
        return Ok(0);
    }
    let parent = current_tgid();
    let follow = conf!(follow_children) != 0 && is_tracked(parent);
    // The whole subtree: on cgroup v2 a non-leaf cgroup (a slice, a pod) holds no processes of
    // its own, they are all in its descendants. The ancestor at the target's level is the
    // target itself for the target and everything below it (kernel/bpf/helpers.c).
    let level = conf!(cgroup_level) as i32;
    // SAFETY: no preconditions.
    let in_cgroup = conf!(match_cgroup) != 0
        && unsafe { bpf_get_current_ancestor_cgroup_id(level) } == conf!(cgroup_id);
    // The child inherits the parent's comm until it execs.
    let same_comm = conf!(match_comm) != 0 && comm_matches();
    if !(follow || in_cgroup || same_comm) {
        return Ok(0);
    }
    let child: i32 = field(ctx, conf!(newtask_pid));
    if child <= 0 {
        return Ok(0);
    }
    bit_set(&TRACKED, child as u32);
    // The child starts with a copy of the parent's pages: userspace seeds it from pagemap.
    emit_range(EventKind::Fork, parent, child as u64, 0);
    Ok(0)
}

/// `sched_process_exec` runs in the task after the new image replaced the old one.
#[tracepoint]
pub fn sched_process_exec(_ctx: TracePointContext) -> u32 {
    let tgid = current_tgid();
    let tracked = conf!(all) != 0 || is_tracked(tgid);
    if conf!(match_comm) != 0 {
        let matches = comm_matches();
        if matches && !tracked {
            // New to us: userspace seeds it whole, nothing to forget.
            bit_set(&TRACKED, tgid);
            forget_mm(tgid);
            learn_mm(tgid);
            emit_range(EventKind::Attach, tgid, 0, 0);
            return 0;
        } else if !matches && tracked && conf!(all) == 0 {
            bit_clear(&TRACKED, tgid);
            forget_mm(tgid);
            clear_pending_all(tgid);
            emit_range(EventKind::Exit, tgid, 0, 0);
            return 0;
        }
    }
    if tracked {
        // A new address space (fs/exec.c exec_mmap has installed it before this tracepoint):
        // learned here, in the process's own context; userspace re-reads the regions.
        forget_mm(tgid);
        learn_mm(tgid);
        clear_pending_all(tgid);
        emit_range(EventKind::Exec, tgid, 0, 0);
    }
    0
}

/// Whether the exiting task is the last of its thread group: the tracepoint's `group_dead`
/// (6.16+), else `current->signal->live == 0`, which `do_exit` decrements (with
/// atomic_dec_and_test, the same test that sets `group_dead`) before the tracepoint fires
/// (`kernel/exit.c`).
#[inline(always)]
fn group_dead(ctx: &TracePointContext) -> bool {
    if conf!(exit_by_live) == 0 {
        return field::<u8>(ctx, conf!(exit_group_dead)) != 0;
    }
    let (signal_offset, live_offset) = (conf!(task_signal) as usize, conf!(signal_live) as usize);
    // SAFETY: reading kernel fields of the current task with the checked helper.
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let Ok(signal) = bpf_probe_read_kernel(task.add(signal_offset) as *const u64) else {
            return false;
        };
        if signal == 0 {
            return false;
        }
        let live: Result<i32, _> =
            bpf_probe_read_kernel((signal as *const u8).add(live_offset).cast());
        live == Ok(0)
    }
}

#[inline(always)]
fn forget_fault_in_flight() {
    let tid = aya_ebpf::helpers::bpf_get_current_pid_tgid() as u32;
    if let Some(slot) = FAULT_IN_FLIGHT.get_ptr_mut(tid) {
        // SAFETY: the exiting thread's own slot.
        unsafe { *slot = 0 };
    }
}

#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    // Every thread: a thread id reused later must not find this one's fault in flight.
    forget_fault_in_flight();
    if !group_dead(&ctx) {
        return 0;
    }
    let tgid = current_tgid();
    let tracked = is_tracked(tgid);
    if tracked {
        bit_clear(&TRACKED, tgid);
        forget_mm(tgid);
        // Its last bits into the map (the ended snapshot reads them), then out of the slots.
        flush_pending_all(tgid);
        clear_pending_all(tgid);
        // `len` says which generation ended, so a late record never ends the pid's next process.
        emit_range(EventKind::Exit, tgid, 0, u64::from(generation(tgid)));
    }
    end_generation(tgid);
    0
}
