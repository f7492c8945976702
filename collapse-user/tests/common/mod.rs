//! What the kernel-interface tests share: the skip idiom (shared with the root tests), the two child set-ups (a mount
//! namespace without tracefs, the nobody user), and re-running one test in such a child.
#![expect(
    dead_code,
    reason = "each test binary uses a different part of this module"
)]

use std::{os::unix::process::CommandExt as _, process::Command};

#[path = "../../../tests/tests/common/skip.rs"]
pub mod skip;

/// Child set-up: a private mount namespace from which tracefs is unmounted, so the machine's
/// own mount is never touched. Only async-signal-safe syscalls (it runs between fork and exec).
pub fn without_tracefs() -> std::io::Result<()> {
    // SAFETY: plain syscalls on constant strings.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // Keep the unmounts below from propagating to the machine's namespace.
        if libc::mount(
            c"none".as_ptr(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        for path in [
            c"/sys/kernel/tracing",
            c"/sys/kernel/debug/tracing",
            c"/sys/kernel/debug",
        ] {
            libc::umount2(path.as_ptr(), libc::MNT_DETACH);
        }
    }
    Ok(())
}

/// Child set-up: become nobody / nogroup.
pub fn as_nobody() -> std::io::Result<()> {
    // SAFETY: plain syscalls.
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0
            || libc::setgid(65534) != 0
            || libc::setuid(65534) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Runs test `name` of this test binary alone in a child prepared by `setup`, with `marker`
/// set in its environment (the child test returns at once without it), and checks it passed.
pub fn run_test_in_child(name: &str, marker: &str, setup: fn() -> std::io::Result<()>) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(marker, "1");
    // SAFETY: the set-ups only make async-signal-safe syscalls.
    unsafe { cmd.pre_exec(setup) };
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("1 passed"), "child did not run:\n{stdout}");
}
