//! The eBPF side of collapse: per-(process, PMD) occupancy bitmaps from page faults, cleared
//! by unmaps and exits, and khugepaged's scan/collapse events attributed to processes.
//!
//! One module per concern: `faults` (the hot path), `unmaps` (syscalls that drop or populate
//! pages), `procs` (fork, exec, exit), `khugepaged`, `attribution` (whose `mm` is which),
//! `correct` (userspace's corrections, applied as masks). Each `#[tracepoint]` is a thin wrapper
//! over a `try_*` function. Field offsets come from userspace (`CONFIG`, read from the tracefs
//! format files), so nothing here assumes one kernel's layout.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "atomic_or/and/xadd on map values: BPF has no CAS in Rust's target spec"
)]

mod attribution;
mod correct;
mod faults;
mod khugepaged;
mod procs;
mod state;
mod unmaps;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
