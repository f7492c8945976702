//! `collapse status` as a program runs it: one JSON object, exit 0 whatever works, tracefs
//! mounted when missing (in a private mount namespace), and honest verdicts without root.

use std::{os::unix::process::CommandExt, process::Command};

use serde_json::Value;

mod common;

use common::{
    as_nobody,
    skip::{needs_root, skip_if},
    without_tracefs,
};

/// Runs `collapse status --json` with `setup` run in the child before exec.
fn status_json(setup: Option<fn() -> std::io::Result<()>>) -> Value {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_collapse"));
    cmd.args(["status", "--json"]);
    if let Some(setup) = setup {
        // SAFETY: the setups only make async-signal-safe syscalls.
        unsafe { cmd.pre_exec(setup) };
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "status failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().count(),
        1,
        "one JSON object on one line: {stdout}"
    );
    serde_json::from_str(&stdout).unwrap()
}

#[test]
fn as_root_everything_but_mthp_collapse_works() {
    skip_if!(needs_root());
    let s = status_json(None);
    assert_eq!(s["root"], true);
    assert!(
        s["kernel"]["release"]
            .as_str()
            .unwrap()
            .starts_with(char::is_numeric)
    );
    assert_eq!(
        s["btf"]["task_struct_mm_offset"],
        collapse::kernel::btf::task_struct_mm_offset().unwrap()
    );
    assert_eq!(s["tracepoints"]["huge_memory:mm_khugepaged_scan_pmd"], true);
    assert_eq!(s["pagemap"]["readable"], true);
    assert!(s["thp"]["khugepaged"]["max_ptes_none"].is_u64());
    assert!(s["vmstat"]["thp_fault_alloc"].is_i64());
    let works = s["works"].as_object().unwrap();
    for name in [
        "trace",
        "large-folio detection",
        "khugepaged attribution",
        "MADV_COLLAPSE executor",
    ] {
        assert_eq!(works[name]["ok"], true, "{name}: {}", works[name]);
    }
    assert_eq!(works["mTHP collapse"]["ok"], false);
}

#[test]
fn mounts_tracefs_and_says_so() {
    skip_if!(needs_root());
    let s = status_json(Some(without_tracefs));
    assert_eq!(s["tracefs"]["mounted_now"], true, "{}", s["tracefs"]);
    assert_eq!(s["tracefs"]["path"], "/sys/kernel/tracing");
    assert_eq!(s["works"]["trace"]["ok"], true);
    // The machine's own tracefs was never touched.
    assert!(std::path::Path::new("/sys/kernel/tracing/events").is_dir());
}

#[test]
fn without_root_it_reports_and_exits_0() {
    skip_if!(needs_root());
    let s = status_json(Some(as_nobody));
    assert_eq!(s["root"], false);
    let trace = &s["works"]["trace"];
    assert_eq!(trace["ok"], false);
    assert!(
        trace["why"]
            .as_array()
            .unwrap()
            .contains(&"not running as root".into()),
        "{trace}"
    );
    assert_eq!(s["pagemap"]["readable"], false);
    assert!(
        s["pagemap"]["error"]
            .as_str()
            .unwrap()
            .contains("needs root")
    );
    // BTF is world-readable: the offset is still known.
    assert!(s["btf"]["task_struct_mm_offset"].is_u64());
}
