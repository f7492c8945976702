//! Bad input of every kind: one line on stderr naming the problem, a non-zero exit, nothing
//! on stdout and nothing half-written.

mod common;

use std::{
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Command, Output},
};

use common::{
    skip::{needs_root_tests, skip_if},
    *,
};

fn collapse(args: &[&str], env: &[(&str, &str)], uid: Option<u32>) -> Output {
    let mut cmd = Command::new(collapse_bin());
    cmd.args(args).envs(env.iter().copied());
    if let Some(uid) = uid {
        cmd.uid(uid).gid(uid);
    }
    cmd.output().expect("run collapse")
}

#[test]
fn bad_arguments_and_targets() {
    skip_if!(needs_root_tests());
    let me = std::process::id().to_string();
    assert_error(&collapse(&["trace"], &[], None), "no target");
    assert_error(
        &collapse(&["trace", "--pid", &me, "--all"], &[], None),
        "one kind of target",
    );
    assert_error(
        &collapse(&["trace", "--pid", "999999999"], &[], None),
        "no process with pid 999999999",
    );
    assert_error(
        &collapse(&["trace", "--pid", &me, "--interval", "0"], &[], None),
        "--interval",
    );
    assert_error(
        &collapse(&["trace", "--pid", &me, "--duration=-3"], &[], None),
        "--duration",
    );
    assert_error(
        &collapse(&["trace", "--comm", "a-name-longer-than-15"], &[], None),
        "15 bytes",
    );
    assert_error(
        &collapse(&["trace", "--cgroup", "/nonexistent/cgroup"], &[], None),
        "/nonexistent/cgroup",
    );
    assert_error(
        &collapse(&["trace", "--", "/nonexistent/program"], &[], None),
        "/nonexistent/program",
    );
    // Found, but not executable: the exec error, not a silent exit 127.
    assert_error(
        &collapse(
            &["trace", "--duration", "1", "--", "/etc/passwd"],
            &[],
            None,
        ),
        "cannot run \"/etc/passwd\"",
    );
    assert_error(
        &collapse(&["trace", "--pid", &me, "--interval", "1e30"], &[], None),
        "--interval",
    );
    let dir = temp_dir("bad-snapshot");
    let snap = dir.join("missing-dir").join("snap.jsonl");
    assert_error(
        &collapse(
            &["trace", "--pid", &me, "--snapshot", snap.to_str().unwrap()],
            &[],
            None,
        ),
        "not a directory",
    );
    assert!(!snap.exists());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn not_root_is_refused() {
    skip_if!(needs_root_tests());
    let me = std::process::id().to_string();
    // nobody/nogroup: loading eBPF programs needs root.
    let out = collapse(
        &["trace", "--pid", &me, "--duration", "1"],
        &[],
        Some(65534),
    );
    assert_error(&out, "needs root");
}

/// A copy of the tracefs format files collapse reads, minus one tracepoint.
fn fake_tracefs(dir: &Path, without: &str) {
    let real = Path::new("/sys/kernel/tracing/events");
    for tp in [
        "exceptions/page_fault_user",
        "exceptions/page_fault_kernel",
        "kmem/mm_page_alloc",
        "huge_memory/mm_khugepaged_scan_pmd",
        "huge_memory/mm_collapse_huge_page",
        "huge_memory/mm_collapse_huge_page_isolate",
        "huge_memory/mm_collapse_huge_page_swapin",
        "syscalls/sys_enter_munmap",
        "syscalls/sys_exit_munmap",
        "syscalls/sys_enter_brk",
        "syscalls/sys_enter_mlock",
        "syscalls/sys_exit_mlock",
        "syscalls/sys_enter_mlock2",
        "syscalls/sys_exit_mlock2",
        "syscalls/sys_enter_mlockall",
        "syscalls/sys_exit_mlockall",
        "syscalls/sys_exit_brk",
        "syscalls/sys_enter_madvise",
        "syscalls/sys_exit_madvise",
        "syscalls/sys_enter_mmap",
        "syscalls/sys_exit_mmap",
        "syscalls/sys_enter_mremap",
        "syscalls/sys_exit_mremap",
        "task/task_newtask",
        "sched/sched_process_exec",
        "sched/sched_process_exit",
    ] {
        if tp == without {
            continue;
        }
        let to = dir.join("events").join(tp);
        std::fs::create_dir_all(&to).unwrap();
        std::fs::copy(real.join(tp).join("format"), to.join("format")).unwrap();
    }
}

#[test]
fn missing_tracepoint_is_named() {
    skip_if!(needs_root_tests());
    let dir = temp_dir("fake-tracefs");
    fake_tracefs(&dir, "huge_memory/mm_collapse_huge_page_swapin");
    let me = std::process::id().to_string();
    let out = collapse(
        &["trace", "--pid", &me, "--duration", "1"],
        &[("COLLAPSE_TRACEFS", dir.to_str().unwrap())],
        None,
    );
    assert_error(&out, "mm_collapse_huge_page_swapin");
    let _ = std::fs::remove_dir_all(dir);
}

/// Remounts tracefs if a test left it unmounted.
struct Remount;

impl Drop for Remount {
    fn drop(&mut self) {
        if !Path::new("/sys/kernel/tracing/events").exists() {
            let _ = Command::new("mount")
                .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
                .status();
        }
    }
}

#[test]
fn unmounted_tracefs_gets_mounted() {
    skip_if!(needs_root_tests());
    let _remount = Remount;
    if Path::new("/sys/kernel/tracing/events").exists() {
        let st = Command::new("umount")
            .arg("/sys/kernel/tracing")
            .status()
            .expect("umount");
        skip_if!((!st.success()).then_some("tracefs is busy and cannot be unmounted"));
    }
    let w = Workload::spawn();
    let out = collapse(
        &[
            "trace",
            "--pid",
            &w.pid.to_string(),
            "--duration",
            "0.3",
            "--json",
        ],
        &[],
        None,
    );
    assert!(
        out.status.success(),
        "trace failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        Path::new("/sys/kernel/tracing/events").exists(),
        "collapse did not mount tracefs"
    );
}
