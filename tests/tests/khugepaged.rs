//! khugepaged's events, attributed to the traced process by its `mm`, with the status names of
//! the tracepoint's format. khugepaged is made to scan quickly for the test and restored.

mod common;

use std::time::Duration;

use collapse::kernel::thp::SysfsGuard;
use common::{
    skip::{needs_root_tests, skip_if},
    thp::ThpSetup,
    *,
};

const KHUGEPAGED: &str = "/sys/kernel/mm/transparent_hugepage/khugepaged";

/// khugepaged scanning every 100 ms with max_ptes_none 64, and PMD THPs allowed in
/// MADV_HUGEPAGE memory, for the test's lifetime: the guards restore everything when they
/// drop, also if an assertion fails (unwinding runs Drop).
fn fast_khugepaged() -> (ThpSetup, SysfsGuard) {
    let thp = ThpSetup::default()
        .pmd_in_advised_memory()
        .fast_khugepaged();
    let none =
        SysfsGuard::set(format!("{KHUGEPAGED}/max_ptes_none"), "64").expect("set max_ptes_none");
    (thp, none)
}

#[test]
fn khugepaged_events_are_attributed_with_status_names() {
    skip_if!(needs_root_tests());
    let _khugepaged = fast_khugepaged();

    let mut w = Workload::spawn();
    let mut bystander = Workload::spawn();
    // A dense region (collapses) and a sparse one (10 of 512 pages: exceeds max_ptes_none 64),
    // faulted as 4 KiB pages first.
    let addr = w.map("k", 4, false);
    w.cmd("touch k 0 512");
    w.cmd("touch k 512 522");
    // The same in an untraced process, which must never show up.
    let bystander_addr = bystander.map("k", 4, false);
    bystander.cmd("touch k 0 512");
    let mut traced_run = TracedWorkload::start("khugepaged", &w, &["--events"]);
    // Now register both with khugepaged.
    w.cmd("huge k 0 1024");
    bystander.cmd("huge k 0 1024");
    let ok = traced_run.tracer.wait_for(Duration::from_secs(90), |v| {
        v["event"] == "collapse" && v["status"] == "succeeded"
    });
    assert!(
        ok.is_some(),
        "no successful khugepaged collapse seen in 90 s"
    );
    let exceed = traced_run.tracer.wait_for(Duration::from_secs(60), |v| {
        v["event"] == "scan_pmd" && v["status"] == "exceed_none_pte"
    });
    // Only once khugepaged has collapsed the bystander's dense region (it scanned it) can
    // its absence from the stream mean anything.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while !pmd_mapped(bystander.pid, bystander_addr) {
        assert!(
            std::time::Instant::now() < deadline,
            "khugepaged did not collapse the bystander's dense region in 90 s{}",
            thp_changed()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The sparse region may be scanned before the dense one: look at everything seen so far.
    let (traced, truth, seen) = traced_run.finish();
    let khugepaged: Vec<_> = seen
        .iter()
        .filter(|v| {
            matches!(
                v["event"].as_str(),
                Some("scan_pmd" | "collapse" | "isolate" | "swapin")
            )
        })
        .collect();
    assert!(!khugepaged.is_empty());
    for v in &khugepaged {
        assert_eq!(
            v["pid"], w.pid,
            "khugepaged event attributed to another process: {v}"
        );
        assert_ne!(v["pid"], bystander.pid);
        assert!(
            !v["status"].as_str().unwrap_or("").starts_with("status_"),
            "unnamed status: {v}"
        );
    }
    let scan_ok = khugepaged
        .iter()
        .any(|v| v["event"] == "scan_pmd" && v["status"] == "succeeded");
    let scan_exceed = exceed.is_some()
        || khugepaged
            .iter()
            .any(|v| v["event"] == "scan_pmd" && v["status"] == "exceed_none_pte");
    assert!(scan_ok, "no scan_pmd succeeded event: {khugepaged:?}");
    assert!(
        scan_exceed,
        "no scan_pmd exceed_none_pte event for the sparse region: {khugepaged:?}"
    );
    // The per-process counts in the samples agree with the stream.
    let last = seen
        .iter()
        .rev()
        .find(|v| v["type"] == "sample")
        .unwrap_or_else(|| panic!("no sample in {seen:?}"));
    let procs = last["processes"].as_array().expect("processes");
    assert_eq!(procs.len(), 1, "only the traced process is shown: {last}");
    assert!(
        procs[0]["collapses_ok"].as_u64().unwrap_or(0) >= 1,
        "{last}"
    );
    // After the collapse the holes are zero-filled pages: the tracer re-read them.
    assert_same(
        "after khugepaged's collapse",
        &within(&traced, addr, 4 << 20),
        &within(&truth, addr, 4 << 20),
    );
}

/// A process that neither faults nor makes a hooked syscall after the tracer attaches (idle,
/// blocked in a read): the task iterator learned its `mm` when it was attached.
#[test]
fn khugepaged_events_of_an_idle_process_are_attributed() {
    skip_if!(needs_root_tests());
    let _khugepaged = fast_khugepaged();
    let mut w = Workload::spawn();
    // 10 pages at the start of a region: every scan of it ends exceed_none_pte, with a page
    // frame to report. Registered with khugepaged before the tracer exists.
    w.map("k", 4, false);
    w.cmd("touch k 0 10");
    w.cmd("huge k 0 1024");
    let pid = w.pid.to_string();
    let mut tracer = Tracer::start(&["--pid", &pid, "--interval", "0.5", "--events"]);
    let seen = tracer.wait_for(Duration::from_secs(60), |v| {
        v["event"] == "scan_pmd" && v["pid"] == w.pid
    });
    let (status, all) = tracer.stop();
    assert!(status.success());
    assert!(
        seen.is_some(),
        "no khugepaged scan attributed to the idle process: {all:?}"
    );
}

/// A child that shares its parent's pages copy-on-write (the same page frames in both mms):
/// both are idle after the tracer attaches, and each one's khugepaged scans are its own.
#[test]
fn khugepaged_events_of_a_forked_child_are_its_own() {
    skip_if!(needs_root_tests());
    let _khugepaged = fast_khugepaged();
    let mut w = Workload::spawn();
    // 10 pages at the start of a region, registered with khugepaged, then shared with a child:
    // every scan of either mm ends exceed_none_pte, at the same page frame.
    w.map("k", 4, false);
    w.cmd("touch k 0 10");
    w.cmd("huge k 0 1024");
    let child_w = w.fork();
    let child = child_w.pid;
    let (parent_s, child_s) = (w.pid.to_string(), child.to_string());
    let mut tracer = Tracer::start(&[
        "--pid",
        &parent_s,
        "--pid",
        &child_s,
        "--interval",
        "0.5",
        "--events",
    ]);
    let scanned =
        |pid: i32| move |v: &serde_json::Value| v["event"] == "scan_pmd" && v["pid"] == pid;
    let seen_child = tracer
        .wait_for(Duration::from_secs(60), scanned(child))
        .is_some()
        || tracer.seen.iter().any(scanned(child));
    let seen_parent = tracer.seen.iter().any(scanned(w.pid))
        || tracer
            .wait_for(Duration::from_secs(60), scanned(w.pid))
            .is_some();
    let (status, all) = tracer.stop();
    assert!(status.success());
    assert!(
        seen_child,
        "no khugepaged scan attributed to the child: {all:?}"
    );
    assert!(
        seen_parent,
        "no khugepaged scan attributed to the parent: {all:?}"
    );
    for v in all.iter().filter(|v| v["event"] == "scan_pmd") {
        assert!(v["pid"] == w.pid || v["pid"] == child, "{v}");
    }
}

/// The `task_iter` fallback (sched_switch learns a traced process's `mm` as it is switched
/// out): a process idle since it was attached is attributed once it runs again, without a
/// fault or a hooked syscall (a prctl, then blocking in its read of stdin).
#[test]
fn khugepaged_attribution_with_the_sched_switch_fallback() {
    skip_if!(needs_root_tests());
    let _khugepaged = fast_khugepaged();
    let mut w = Workload::spawn();
    w.map("k", 4, false);
    w.cmd("touch k 0 10");
    w.cmd("huge k 0 1024");
    let pid = w.pid.to_string();
    let mut tracer = Tracer::start_with_env(
        &["--pid", &pid, "--interval", "0.5", "--events"],
        &[("COLLAPSE_FALLBACKS", "task_iter")],
    );
    let attached = tracer
        .seen
        .iter()
        .find(|v| v["type"] == "attached")
        .cloned()
        .expect("attached line");
    assert!(
        attached["fallbacks"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f["feature"] == "task_iter")),
        "{attached}"
    );
    w.cmd("thp on");
    let seen = tracer.wait_for(Duration::from_secs(60), |v| {
        v["event"] == "scan_pmd" && v["pid"] == w.pid
    });
    let (status, all) = tracer.stop();
    assert!(status.success());
    assert!(
        seen.is_some(),
        "no khugepaged scan attributed on the sched_switch fallback: {all:?}"
    );
}
