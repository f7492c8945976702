//! A process that is not traced never appears: not in the region map, not in the khugepaged
//! counts. Uses the library in-process to look at the maps themselves.

mod common;

use std::time::Duration;

use collapse::tracer::{Observed, Session};
use common::{
    inproc::{poll_until, session_for},
    skip::{needs_root_tests, skip_if},
    thp::ThpSetup,
    *,
};

/// Neither faults nor khugepaged's scans of an untraced process reach the maps. Both
/// processes get the same MADV_HUGEPAGE memory and khugepaged scans quickly; the test waits
/// until khugepaged has counts for the traced process and has collapsed the untraced one's
/// dense region (so it scanned it too), and only then looks for strangers.
#[test]
fn untracked_processes_never_appear_in_the_maps() {
    skip_if!(needs_root_tests());
    let _thp = ThpSetup::default()
        .pmd_in_advised_memory()
        .fast_khugepaged();
    let mut traced = Workload::spawn();
    let mut other = Workload::spawn();
    let mut session = session_for(traced.pid);
    let mut areas = Vec::new();
    // The untraced one first: khugepaged walks its list of mms in the order they joined it.
    for w in [&mut other, &mut traced] {
        let a = Area::map(w, "a", 8, "nohuge");
        w.cmd("touch a 0 1024");
        w.cmd("dontneed a 0 100");
        w.cmd("huge a 0 2048");
        areas.push(a);
    }
    let other_area = areas[0];
    let (seen, scanned) = poll_until(&mut session, Duration::from_secs(120), |s, _| {
        let counts = s.bpf().khugepaged_counts().expect("counts");
        counts.iter().any(|(k, _)| k.tgid == traced.pid as u32)
            && pmd_mapped(other.pid, other_area.region(1))
    });
    assert!(
        scanned,
        "khugepaged did not scan both processes in 120 s{}: counts {:?}, seen {seen:?}",
        thp_changed(),
        session.bpf().khugepaged_counts()
    );
    let regions = session.bpf().regions().expect("regions");
    assert!(
        regions.iter().any(|(k, _)| k.tgid == traced.pid as u32),
        "the traced process has no regions"
    );
    let strangers: Vec<u32> = regions
        .iter()
        .map(|(k, _)| k.tgid)
        .filter(|&t| t != traced.pid as u32)
        .collect();
    assert!(
        strangers.is_empty(),
        "regions of untraced processes: {strangers:?}"
    );
    let counts = session.bpf().khugepaged_counts().expect("counts");
    let foreign: Vec<_> = counts
        .iter()
        .filter(|(k, _)| k.tgid != traced.pid as u32)
        .collect();
    assert!(
        foreign.is_empty(),
        "khugepaged counts of untraced processes (pid {} is the untraced workload): {foreign:?}",
        other.pid
    );
    let foreign_events: Vec<_> = seen
        .iter()
        .filter(|o| matches!(o, Observed::Khugepaged { tgid, .. } if *tgid != traced.pid as u32))
        .collect();
    assert!(
        foreign_events.is_empty(),
        "khugepaged records of untraced processes: {foreign_events:?}"
    );
    assert!(
        !session
            .bpf()
            .is_tracked(other.pid as u32)
            .expect("tracked bit")
    );
}

/// The region map itself (not the snapshot, which pagemap's VMAs mask): what an unmap, a
/// DONTNEED and a shrinking heap drop must be gone from it, in every CPU's pending slot too.
#[test]
fn cleared_ranges_leave_the_map() {
    skip_if!(needs_root_tests());
    let mut w = Workload::spawn();
    let mut session = session_for(w.pid);
    let small = w.map("s", 8, false);
    w.cmd("threads s 0 2048");
    w.cmd("dontneed s 100 700");
    w.cmd("unmap s 1024 1536");
    // Wider than one program clears: userspace finishes it from a ring-buffer record.
    let big = w.map("big", 600, false);
    w.cmd("threads big 0 153600");
    w.cmd("unmap big 0 153600");
    session.poll().expect("poll");
    let tgid = w.pid as u32;
    let map: std::collections::BTreeMap<u64, collapse_common::OccupancyBitmap> = session
        .bpf()
        .regions()
        .expect("regions")
        .into_iter()
        .filter(|(k, _)| k.tgid == tgid)
        .map(|(k, v)| (k.addr, v))
        .collect();
    let left_in_big: Vec<u64> = map
        .keys()
        .copied()
        .filter(|a| *a >= big && *a < big + (600 << 20))
        .collect();
    assert!(
        left_in_big.is_empty(),
        "unmapped regions still in the map: {} of 300",
        left_in_big.len()
    );
    let region = |i: u64| {
        map.get(&(small + i * (2 << 20)))
            .copied()
            .unwrap_or_default()
    };
    let mut want0 = collapse_common::OccupancyBitmap::FULL;
    want0.clear_range(100, 512);
    assert_eq!(region(0), want0, "DONTNEED'd pages still in region 0");
    let mut want1 = collapse_common::OccupancyBitmap::FULL;
    want1.clear_range(0, 700 - 512);
    assert_eq!(region(1), want1, "DONTNEED'd pages still in region 1");
    assert!(
        region(2).is_empty(),
        "the unmapped region 2 is still in the map"
    );
    assert_eq!(region(3), collapse_common::OccupancyBitmap::FULL);
}

/// A traced process that exits leaves the region map at the next sweep (a tick of the live
/// view; here `rescan`).
#[test]
fn an_exited_process_leaves_the_map() {
    skip_if!(needs_root_tests());
    let mut w = Workload::spawn();
    let tgid = w.pid as u32;
    let mut session = session_for(w.pid);
    w.map("a", 8, false);
    w.cmd("threads a 0 2048");
    let mine = |s: &Session| {
        s.bpf()
            .regions()
            .expect("regions")
            .iter()
            .filter(|(k, _)| k.tgid == tgid)
            .count()
    };
    assert!(
        mine(&session) >= 4,
        "the workload's regions are not in the map"
    );
    drop(w);
    // Its exit record, then the sweep.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while session.traces(tgid) && std::time::Instant::now() < deadline {
        session.poll().expect("poll");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(!session.traces(tgid), "no exit record for the workload");
    session.rescan().expect("rescan");
    assert_eq!(
        mine(&session),
        0,
        "an exited process's regions stay in the map"
    );
}
