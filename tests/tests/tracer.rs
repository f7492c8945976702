//! The tracer against the real kernel: its bitmaps must equal pagemap's present bits, exactly.
//! Runs as root (CI); each test starts its own workload child and its own `collapse trace`.

mod common;

use std::{io::Write as _, process::Stdio, time::Duration};

use collapse_common::{OccupancyBitmap, consts::PMD_SIZE};
use common::{
    skip::{needs_root_tests, skip, skip_if},
    thp::ThpSetup,
    *,
};

/// What `shape` and then `remap_shape_holes` leave in its 4 regions, derived from the
/// commands alone.
fn expected_shape(addr: u64) -> Regions {
    let mut r = [OccupancyBitmap::EMPTY; 4];
    let mut set = |lo: usize, hi: usize, on: bool| {
        for p in lo..hi {
            let (reg, pte) = (p / 512, p % 512);
            if on {
                r[reg].set(pte)
            } else {
                r[reg].clear(pte)
            }
        }
    };
    set(0, 512, true);
    for p in (512..1024).step_by(7) {
        set(p, p + 1, true);
    }
    set(1021, 1100, true);
    set(1333, 1337, true);
    set(1536, 2048, true);
    set(100, 164, false);
    set(1000, 1030, false);
    set(1800, 1900, false);
    set(1024, 1536, false);
    set(120, 130, true);
    set(1124, 1125, true);
    r.iter()
        .enumerate()
        .filter(|(_, b)| !b.is_empty())
        .map(|(i, b)| (addr + i as u64 * PMD_SIZE, *b))
        .collect()
}

#[test]
fn bitmaps_follow_faults_unmaps_and_dontneed() {
    skip_if!(needs_root_tests());
    follow_faults_unmaps_and_dontneed("follow", &[]);
}

/// The same with the classic tracepoints (offsets from the format files), which run where BTF
/// does not show the parameters the fast path reads.
#[test]
fn bitmaps_follow_faults_with_classic_tracepoints() {
    skip_if!(needs_root_tests());
    let seen =
        follow_faults_unmaps_and_dontneed("classic", &[("COLLAPSE_CLASSIC_TRACEPOINTS", "1")]);
    let attached = seen
        .iter()
        .find(|v| v["type"] == "attached")
        .expect("attached line");
    assert_eq!(attached["fast_path"], serde_json::json!([]), "{attached}");
}

/// The same with pagemap read PTE by PTE, as on kernels without PAGEMAP_SCAN (before 6.7).
#[test]
fn bitmaps_follow_faults_without_pagemap_scan() {
    skip_if!(needs_root_tests());
    let seen = follow_faults_unmaps_and_dontneed(
        "no-pagemap-scan",
        &[("COLLAPSE_FALLBACKS", "pagemap_scan")],
    );
    assert_fallback(&seen, "pagemap_scan");
}

/// The `attached` line says the fallback of `feature` is in use.
fn assert_fallback(seen: &[serde_json::Value], feature: &str) {
    let attached = seen
        .iter()
        .find(|v| v["type"] == "attached")
        .expect("attached line");
    assert!(
        attached["fallbacks"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f["feature"] == feature)),
        "{feature} fallback not in use: {attached}"
    );
}

/// Without `sched_process_exit`'s `group_dead` (before 6.16), a thread's exit leaves its
/// process traced, and the last one's ends it (`signal->live` read through BTF).
#[test]
fn exits_are_seen_with_the_signal_live_fallback() {
    skip_if!(needs_root_tests());
    let mut w = Workload::spawn();
    let pid = w.pid;
    let pid_s = pid.to_string();
    let mut tracer = Tracer::start_with_env(
        &["--pid", &pid_s, "--interval", "1", "--events"],
        &[("COLLAPSE_FALLBACKS", "exit_group_dead")],
    );
    assert_fallback(&tracer.seen, "exit_group_dead");
    w.map("a", 2, false);
    // One thread per CPU touches pages and exits.
    w.cmd("threads a 0 64");
    w.cmd("touch a 64 128");
    let traced = tracer.wait_for(Duration::from_secs(30), |v| {
        v["type"] == "sample"
            && v["processes"].as_array().is_some_and(|p| {
                p.iter().any(|p| {
                    p["pid"] == pid && p["populated_bytes"].as_u64().unwrap_or(0) >= 128 * 4096
                })
            })
    });
    assert!(
        traced.is_some(),
        "the process is not traced after its threads exited: {:?}",
        tracer.seen
    );
    assert!(
        !tracer.seen.iter().any(|v| v["event"] == "ended"),
        "a thread's exit ended the process: {:?}",
        tracer.seen
    );
    drop(w);
    let ended = tracer.wait_for(Duration::from_secs(30), |v| {
        v["event"] == "ended" && v["pid"] == pid
    });
    let (_, all) = tracer.stop();
    let ended = ended.unwrap_or_else(|| panic!("no ended event: {all:?}"));
    assert_eq!(ended["how"], "exited", "{ended}");
}

fn follow_faults_unmaps_and_dontneed(test: &str, env: &[(&str, &str)]) -> Vec<serde_json::Value> {
    let mut w = Workload::spawn();
    let traced_run = TracedWorkload::start_with_env(test, &w, &[], env);
    // Everything below happens while traced: only events build these bitmaps.
    let addr = w.map("a", 8, false);
    shape(&mut w, "a");
    // The snapshot shows only populated regions, masked to their VMAs: map the unmapped
    // ranges again, so bits an unmap failed to clear would show.
    remap_shape_holes(&mut w, "a");
    let (traced, truth, seen) = traced_run.finish();
    assert_same(
        "pagemap vs the pattern itself",
        &within(&truth, addr, 8 << 20),
        &expected_shape(addr),
    );
    assert_same_mapping_and_process("the traced mapping", &traced, &truth, addr, 8 << 20);
    seen
}

#[test]
fn attaching_seeds_from_pagemap() {
    skip_if!(needs_root_tests());
    let mut w = Workload::spawn();
    // Populated before the tracer exists: only seeding can know these pages.
    let addr = w.map("a", 8, false);
    shape(&mut w, "a");
    let traced_run = TracedWorkload::start("seed", &w, &[]);
    // And changes after attaching, on top of the seeded state.
    w.cmd("dontneed a 0 32");
    w.cmd("touch a 600 700");
    w.cmd("unmap a 1536 1600");
    // Empty again, so a bit the unmap failed to clear would show in the snapshot.
    w.cmd("remap a 1536 1600");
    remap_shape_holes(&mut w, "a");
    let (traced, truth, _) = traced_run.finish();
    assert!(
        !within(&truth, addr, 8 << 20).is_empty(),
        "the workload populated nothing"
    );
    assert_same_mapping_and_process("the seeded mapping", &traced, &truth, addr, 8 << 20);
}

/// A PMD THP faulted in by one write sets all 512 bits, in the programs themselves: the map is
/// read in this process before any poll, whose re-reads from pagemap would fill them in too.
#[test]
fn thp_fault_sets_all_512_bits() {
    skip_if!(needs_root_tests());
    let _thp = ThpSetup::default().pmd_in_advised_memory();
    let mut w = Workload::spawn();
    let mut session = inproc::session_for(w.pid);
    let addr = w.map("h", 4, true);
    // MADV_HUGEPAGE in a traced process attaches the large-folio hook (THP `madvise` mode)
    // when its record is handled; it re-reads the advised range, still empty.
    let mut seen = session.poll().expect("poll");
    assert!(
        session.bpf().large_folio_hook().is_some(),
        "the large-folio hook was not attached: {seen:?}"
    );
    // One byte per region: each write fault maps a whole PMD THP.
    w.cmd("touch h 0 1");
    w.cmd("touch h 700 701");
    let recorded = within(&inproc::map_regions(&session, w.pid), addr, 4 << 20);
    let mapping = within(&truth(w.pid), addr, 4 << 20);
    let full = mapping.values().filter(|b| b.count() == 512).count();
    assert!(
        full == 2 && pmd_mapped(w.pid, addr) && pmd_mapped(w.pid, addr + PMD_SIZE),
        "the kernel did not fault THPs here (pagemap: {mapping:?}); is memory fragmented?"
    );
    assert_same("THP regions as the programs set them", &recorded, &mapping);
    seen.extend(session.poll().expect("poll"));
    assert_eq!(
        inproc::large_folios(&seen, w.pid, 9),
        2,
        "expected two order-9 large-folio records, saw {seen:?}"
    );
    assert_same(
        "THP regions after the poll",
        &within(&inproc::map_regions(&session, w.pid), addr, 4 << 20),
        &mapping,
    );
}

#[test]
fn faults_on_every_cpu_and_clears_from_another() {
    skip_if!(needs_root_tests());
    let mut w = Workload::spawn();
    let traced_run = TracedWorkload::start("cpus", &w, &[]);
    let addr = w.map("m", 8, false);
    // Each region is faulted from every CPU, so every CPU holds pending bits of it; then the
    // main thread drops and unmaps parts, which must clear the other CPUs' pending bits too.
    w.cmd("threads m 0 1024");
    w.cmd("threads m 1500 1700");
    w.cmd("dontneed m 10 300");
    w.cmd("unmap m 700 800");
    w.cmd("dontneed m 1600 1700");
    w.cmd("threads m 20 40");
    // Empty again: the other CPUs' pending bits of the unmapped range must be gone.
    w.cmd("remap m 700 800");
    let (traced, truth, _) = traced_run.finish();
    assert_same_mapping_and_process(
        "regions faulted on every CPU",
        &traced,
        &truth,
        addr,
        8 << 20,
    );
}

#[test]
fn pages_that_move_or_appear_without_faults() {
    skip_if!(needs_root_tests());
    let mut w = Workload::spawn();
    let traced_run = TracedWorkload::start("nofault", &w, &[]);
    // mremap moves pages to a new address: no fault there, the old range empties.
    let old = w.map("r", 8, false);
    shape(&mut w, "r");
    let moved = w.cmd("move r");
    let new = u64::from_str_radix(
        moved
            .split_whitespace()
            .nth(2)
            .unwrap()
            .trim_start_matches("0x"),
        16,
    )
    .unwrap();
    assert_ne!(new, old);
    // MADV_POPULATE_WRITE populates without a fault.
    w.map("p", 4, false);
    w.cmd("populate p 100 900");
    // mlock populates through GUP, not faults.
    w.map("l", 4, false);
    w.cmd("lock l 10 700");
    // An unmap wider than one program clears (300 regions): userspace finishes it.
    let big = w.map("big", 600, false);
    for region in 0..300 {
        w.cmd(&format!(
            "touch big {} {}",
            region * 512 + 7,
            region * 512 + 9
        ));
    }
    w.cmd("unmap big 0 153600");
    // Mapped again with one page in each region (the snapshot has only populated regions):
    // whatever of the wide unmap was not cleared would show beside it.
    w.cmd("remap big 0 153600");
    // The new mapping is plain: without this an mTHP size set `always` (the mTHP test, run
    // beside this one, sets 64 KiB so) would fault in 16 pages where one is touched.
    w.cmd("nohuge big 0 153600");
    for region in 0..300 {
        w.cmd(&format!("touch big {} {}", region * 512, region * 512 + 1));
    }
    let (traced, truth, _) = traced_run.finish();
    // The old range may have been reused by the later mappings: pagemap says what is there.
    assert_same(
        "the old range of the moved area",
        &within(&traced, old, 8 << 20),
        &within(&truth, old, 8 << 20),
    );
    assert_same(
        "moved area",
        &within(&traced, new, 8 << 20),
        &within(&truth, new, 8 << 20),
    );
    assert!(!within(&truth, new, 8 << 20).is_empty());
    let first_pages: Regions = (0..300)
        .map(|r| (big + r * PMD_SIZE, OccupancyBitmap::from_range(0, 1)))
        .collect();
    assert_same(
        "the re-mapped range of the wide unmap",
        &within(&traced, big, 600 << 20),
        &first_pages,
    );
    assert_same("every region of the child", &traced, &truth);
}

#[test]
fn a_command_traced_to_its_end_still_has_a_snapshot() {
    skip_if!(needs_root_tests());
    let dir = temp_dir("cmd-end");
    let snap = dir.join("snap.jsonl");
    let bin = collapse_bin();
    // The command populates 24 regions over ~3 s, holds them 1 s and ends by itself; trace
    // ends with it, and the snapshot has the command's memory as of its last moments.
    let out = std::process::Command::new(&bin)
        .args([
            "trace",
            "--interval",
            "0.2",
            "--json",
            "--snapshot",
            snap.to_str().unwrap(),
            "--",
        ])
        .arg(&bin)
        .args(["workload", "demo", "--hold", "1"])
        .output()
        .expect("run collapse trace");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&snap).expect("snapshot written");
    let regions = collapse::snapshot::read_snapshot(text.as_bytes()).expect("valid snapshot");
    let populated: u32 = regions.iter().map(|r| r.state.present.count()).sum();
    // 8 dense regions, 8 half-full, 8 with 16 pages: at least 6272 pages.
    assert!(
        populated >= 6272,
        "{populated} pages in the snapshot of a command that ended: {text:?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A command whose whole life falls between two ticks (`--interval 60`: the first would come
/// long after it ends) is in the snapshot with what the map held when it ended (its pending
/// bits flushed at exit), not as the empty view of its start. Its end stops the trace at once,
/// not at the next tick.
#[test]
fn a_command_that_ends_between_ticks_is_snapshotted_as_it_ended() {
    skip_if!(needs_root_tests());
    let dir = temp_dir("cmd-between-ticks");
    let snap = dir.join("snap.jsonl");
    let bin = collapse_bin();
    let mut trace = std::process::Command::new(&bin)
        .args(["trace", "--interval", "60", "--json", "--snapshot"])
        .arg(&snap)
        .arg("--")
        .arg(&bin)
        .args(["workload", "script"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run collapse trace");
    // Two regions full, one with 100 pages, one page each in 61 more; then exit_group with
    // all of it mapped, as most programs end.
    let mut script = String::from("map a 128 plain\ntouch a 0 1024\ntouch a 1024 1124\n");
    for r in 3..64 {
        script.push_str(&format!("touch a {} {}\n", r * 512, r * 512 + 1));
    }
    script.push_str("exit-mapped\n");
    trace
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = trace.wait_with_output().expect("collapse trace");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&out);
    let samples = lines.iter().filter(|v| v["type"] == "sample").count();
    // Only the last one, after the command ended: no tick saw its memory.
    assert_eq!(samples, 1, "{lines:?}");
    assert_eq!(
        lines.last().map(|v| v["reason"].clone()),
        Some("targets ended".into())
    );
    let text = std::fs::read_to_string(&snap).expect("snapshot written");
    let regions = collapse::snapshot::read_snapshot(text.as_bytes()).expect("valid snapshot");
    let base = regions
        .iter()
        .filter(|r| r.state.present.count() == 512)
        .map(|r| r.addr)
        .min()
        .expect("a full region in the snapshot");
    let area = |i: u64| {
        regions
            .iter()
            .find(|r| r.addr == base + i * PMD_SIZE)
            .map_or(0, |r| r.state.present.count())
    };
    assert_eq!((area(0), area(1), area(2)), (512, 512, 100), "{text}");
    assert!((3..64).all(|i| area(i) == 1), "{text}");
    let _ = std::fs::remove_dir_all(dir);
}

/// mTHP at fault time: with 64 KiB folios `always` (and every other size `never`, so neither
/// the global setting nor another size decides), each write fault maps 16 PTEs, and the
/// large-folio hook (attached at start in that mode) sets all of them, in the map itself
/// before any poll. The settings are restored when the setup drops.
#[test]
fn mthp_faults_set_the_whole_folio() {
    skip_if!(needs_root_tests());
    let Some(_thp) = ThpSetup::default().only_size_always(64) else {
        skip!("no hugepages-64kB (kernel without mTHP)");
    };
    let mut w = Workload::spawn();
    let mut session = inproc::session_for(w.pid);
    assert!(
        session.bpf().large_folio_hook().is_some(),
        "the hook is attached at start when a size is `always`"
    );
    let addr = w.map_advised("m", 4, "plain");
    // One byte in every other 64 KiB block of the first region.
    for block in (0..32).step_by(2) {
        w.cmd(&format!("touch m {} {}", block * 16 + 3, block * 16 + 4));
    }
    let recorded = within(&inproc::map_regions(&session, w.pid), addr, 4 << 20);
    let mapping = within(&truth(w.pid), addr, 4 << 20);
    let pages: u32 = mapping.values().map(|b| b.count()).sum();
    assert_eq!(
        pages,
        16 * 16,
        "the kernel did not fault 64 KiB folios here: {mapping:?}"
    );
    assert_same(
        "64 KiB folios as the programs set them",
        &recorded,
        &mapping,
    );
    let seen = session.poll().expect("poll");
    assert_eq!(
        inproc::large_folios(&seen, w.pid, 4),
        16,
        "expected 16 order-4 large-folio records: {seen:?}"
    );
}

/// A traced command's own output does not mix into collapse's stdout (JSON lines here).
#[test]
fn a_traced_command_writes_to_stderr() {
    skip_if!(needs_root_tests());
    let out = std::process::Command::new(collapse_bin())
        .args([
            "trace",
            "--json",
            "--interval",
            "0.2",
            "--",
            "sh",
            "-c",
            "echo not-json; sleep 0.5",
        ])
        .output()
        .expect("run collapse trace");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in stdout.lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not JSON on stdout: {line:?}"
        );
    }
    assert!(String::from_utf8_lossy(&out.stderr).contains("not-json"));
}
