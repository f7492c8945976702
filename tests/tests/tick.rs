//! The tracer's tick against the real kernel: what it reads from pagemap at a tick (pages that
//! appear without a fault of the process get their bits), and the fallbacks of the features
//! that make a tick cheap (PAGEMAP_SCAN, BPF_MAP_LOOKUP_BATCH) forced on this kernel.

mod common;

use std::{io::IoSlice, time::Duration};

use collapse_common::consts::PAGE_SIZE;
use common::{
    skip::{needs_root_tests, skip_if},
    *,
};
use nix::{
    sys::uio::{RemoteIoVec, process_vm_writev},
    unistd::Pid,
};
use serde_json::Value;

/// `populated_bytes` of `pid` in a `sample` line.
fn populated_of(v: &Value, pid: i32) -> Option<u64> {
    if v["type"] != "sample" {
        return None;
    }
    v["processes"]
        .as_array()?
        .iter()
        .find(|p| p["pid"] == pid)?["populated_bytes"]
        .as_u64()
}

/// Writes `pages` pages at `addr` of `pid` from this process (process_vm_writev): the pages
/// are populated by our GUP, not by a fault of `pid`.
fn write_from_outside(pid: i32, addr: u64, pages: u64) {
    let buf = vec![0x5au8; (pages * PAGE_SIZE) as usize];
    let n = process_vm_writev(
        Pid::from_raw(pid),
        &[IoSlice::new(&buf)],
        &[RemoteIoVec {
            base: addr as usize,
            len: buf.len(),
        }],
    )
    .expect("process_vm_writev");
    assert_eq!(n, buf.len());
}

/// Pages filled by UFFDIO_COPY and from another process, with no write fault of the traced
/// process, get their bits at the next tick (a sample line counts them, before any snapshot)
/// and are in the snapshot.
fn pages_filled_without_a_fault(test: &str, env: &[(&str, &str)]) -> Vec<Value> {
    let mut w = Workload::spawn();
    let mut traced_run = TracedWorkload::start_with_env(test, &w, &[], env);
    let addr = w.map("u", 4, false);
    w.cmd("touch u 0 16");
    w.cmd("uffd u 100 200");
    write_from_outside(w.pid, addr + 600 * PAGE_SIZE, 50);
    w.cmd("dontneed u 0 4");
    let now = truth(w.pid);
    let area = within(&now, addr, 4 << 20);
    let pages: u32 = area.values().map(|b| b.count()).sum();
    assert_eq!(
        pages,
        12 + 100 + 50,
        "pagemap of the area is not what the commands made: {area:?}"
    );
    let total: u64 = now.values().map(|b| u64::from(b.count())).sum::<u64>() * PAGE_SIZE;
    // 150 pages came without a fault: without their bits the count stays 600 KiB short. A
    // little slack for the workload's own heap moving meanwhile.
    let pid = w.pid;
    let seen_at_tick = traced_run.tracer.wait_for(Duration::from_secs(20), |v| {
        populated_of(v, pid).is_some_and(|n| n + 16 * PAGE_SIZE >= total)
    });
    assert!(
        seen_at_tick.is_some(),
        "no sample counted the {total} bytes pagemap shows populated; last samples: {:?}",
        traced_run
            .tracer
            .seen
            .iter()
            .rev()
            .filter_map(|v| populated_of(v, pid))
            .take(3)
            .collect::<Vec<_>>()
    );
    let (traced, truth, seen) = traced_run.finish();
    assert_same_mapping_and_process(
        "pages filled without a fault",
        &traced,
        &truth,
        addr,
        4 << 20,
    );
    seen
}

#[test]
fn pages_filled_without_a_fault_get_their_bits() {
    skip_if!(needs_root_tests());
    pages_filled_without_a_fault("nofault-bits", &[]);
}

/// The same, and the bitmaps through faults, unmaps and DONTNEED, with PAGEMAP_SCAN and the
/// batched map reads both forced off: every PTE of every VMA is read, and the region map is
/// walked key by key.
#[test]
fn the_fallbacks_of_the_tick_give_the_same_bitmaps() {
    skip_if!(needs_root_tests());
    let env = [("COLLAPSE_FALLBACKS", "pagemap_scan,map_batch")];
    let seen = pages_filled_without_a_fault("tick-fallbacks", &env);
    let attached = seen
        .iter()
        .find(|v| v["type"] == "attached")
        .expect("attached line");
    for f in ["pagemap_scan", "map_batch"] {
        assert!(
            attached["fallbacks"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x["feature"] == f)),
            "{f} not in fallbacks: {attached}"
        );
    }

    let mut w = Workload::spawn();
    let traced_run = TracedWorkload::start_with_env("tick-fallbacks-shape", &w, &[], &env);
    let addr = w.map("a", 8, false);
    shape(&mut w, "a");
    let (traced, truth, _) = traced_run.finish();
    assert!(!within(&truth, addr, 8 << 20).is_empty());
    assert_same_mapping_and_process(
        "the shaped mapping, fallbacks forced",
        &traced,
        &truth,
        addr,
        8 << 20,
    );
}

/// Without anything forced, the tick uses batched map reads (every supported kernel has them)
/// and PAGEMAP_SCAN wherever the kernel has it (6.7+): neither is listed as a fallback then.
#[test]
fn this_kernel_uses_pagemap_scan_and_batched_map_reads() {
    skip_if!(needs_root_tests());
    let w = Workload::spawn();
    let traced_run = TracedWorkload::start("tick-features", &w, &[]);
    let (_, _, seen) = traced_run.finish();
    let attached = seen
        .iter()
        .find(|v| v["type"] == "attached")
        .expect("attached line");
    let listed = |name: &str| {
        attached["fallbacks"]
            .as_array()
            .expect("fallbacks")
            .iter()
            .any(|f| f["feature"] == name)
    };
    assert!(!listed("map_batch"), "{attached}");
    assert_eq!(
        listed("pagemap_scan"),
        !collapse::kernel::pagemap::scan_works(),
        "{attached}"
    );
}

/// The bits a tick learns from pagemap land in the programs' map itself, not only in the
/// tick's view: pages filled by UFFDIO_COPY and from another process are in the map after a
/// refresh (read in-process, before any snapshot), and faults afterwards keep them.
#[test]
fn bits_learned_at_a_tick_are_written_to_the_map() {
    skip_if!(needs_root_tests());
    let mut w = Workload::spawn();
    let addr = w.map("u", 4, false);
    w.cmd("touch u 0 16");
    let mut session = inproc::session_for(w.pid);
    w.cmd("uffd u 100 200");
    write_from_outside(w.pid, addr + 600 * PAGE_SIZE, 50);
    let want = within(&truth(w.pid), addr, 4 << 20);
    assert_eq!(
        want.values().map(|b| b.count()).sum::<u32>(),
        16 + 100 + 50,
        "the pages written without a fault are there: {want:?}"
    );
    let before = within(&inproc::map_regions(&session, w.pid), addr, 4 << 20);
    assert_ne!(before, want, "no fault of the process set those bits");
    // A refresh re-reads what changed within its budget; a few cover the process.
    let mut got = before;
    for _ in 0..50 {
        session.poll().expect("poll");
        session.refresh().expect("refresh");
        got = within(&inproc::map_regions(&session, w.pid), addr, 4 << 20);
        if got == want {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(got, want, "the map after the ticks, against pagemap");
    w.cmd("touch u 300 310");
    session.poll().expect("poll");
    let after = within(&inproc::map_regions(&session, w.pid), addr, 4 << 20);
    assert_eq!(after, within(&truth(w.pid), addr, 4 << 20));
}
