//! Userspace's corrections to the region map (resyncs from pagemap, PMD-mapped regions), applied
//! here as and/or masks so that no bit a fault program sets meanwhile is lost. Userspace never
//! writes a region value itself: a whole-value update would overwrite what programs ORed in
//! since it was read, and replacing a hash element recycles the old one while a program may
//! still hold a pointer into it.
//!
//! `correct` is a raw tracepoint program that is never attached: userspace fills
//! `CORRECTIONS`, then runs it with `BPF_PROG_TEST_RUN` (raw tracepoints since 5.10), passing
//! how many there are as its first argument. It returns how many could not be applied.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::generated::bpf_loop, macros::raw_tracepoint, programs::RawTracePointContext,
};
use collapse_common::maps::MAX_CORRECTIONS;

use crate::state::{apply_correction, correction};

#[raw_tracepoint]
pub fn correct(ctx: RawTracePointContext) -> i32 {
    try_correct(&ctx).unwrap_or(-1)
}

fn try_correct(ctx: &RawTracePointContext) -> Result<i32, i64> {
    let n: u64 = ctx.arg(0);
    let mut failed: u64 = 0;
    // One callback verified once, however many corrections there are.
    // SAFETY: the callback only touches `failed`, which outlives the call.
    let ret = unsafe {
        bpf_loop(
            n.min(u64::from(MAX_CORRECTIONS)) as u32,
            apply_nth as *mut c_void,
            (&raw mut failed).cast(),
            0,
        )
    };
    if ret < 0 {
        return Err(ret);
    }
    Ok(failed as i32)
}

#[inline(never)]
extern "C" fn apply_nth(index: u64, ctx: *mut c_void) -> i64 {
    let Some(c) = correction(index as u32) else {
        return 1;
    };
    if !apply_correction(&c) {
        // SAFETY: `ctx` is the caller's counter.
        if let Some(failed) = unsafe { ctx.cast::<u64>().as_mut() } {
            *failed += 1;
        }
    }
    0
}
