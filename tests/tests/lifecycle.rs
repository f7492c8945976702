//! Process and mapping lifecycles against the real kernel: fork, exec, MAP_FIXED over
//! populated memory, an mremap shrink, and the targets that pick processes up as they come
//! (`--comm`, `--all`). Each test runs a session in this process and reads the programs' map
//! itself, before a poll where the programs alone must be right, and compares it with pagemap.

mod common;

use collapse::tracer::{Capacity, Session, TargetSpec};
use collapse_common::OccupancyBitmap;
use common::{
    inproc::{SMALL, map_regions, session, session_for},
    skip::{needs_root_tests, skip_if},
    *,
};

/// Asserts that the programs' map and pagemap agree on `area` of `pid`, and that pagemap has
/// pages there (so the comparison is not over nothing).
fn assert_map_is_pagemap(what: &str, session: &Session, pid: i32, area: &Area) {
    let len = area.pages * 4096;
    let truth = within(&truth(pid), area.addr, len);
    assert!(
        !truth.is_empty(),
        "{what}: pid {pid} has no pages in {}",
        area.name
    );
    assert_same(
        what,
        &within(&map_regions(session, pid), area.addr, len),
        &truth,
    );
}

/// Asserts that the programs' map has no bit of `pid` in `[addr, addr + len)`.
fn assert_map_empty(what: &str, session: &Session, pid: i32, addr: u64, len: u64) {
    assert_same(
        what,
        &within(&map_regions(session, pid), addr, len),
        &Regions::new(),
    );
}

/// A comm no other process has: `prefix` and this test process's pid.
fn unique_comm(prefix: &str) -> String {
    let name = format!("{prefix}{}", std::process::id());
    assert!(name.len() <= 15, "{name} is longer than a comm");
    name
}

/// The child of a traced process is traced from its first instruction, its bitmaps seeded
/// from the pages it shares copy-on-write with its parent; afterwards each process's bitmaps
/// follow its own faults and unmaps only.
#[test]
fn a_forked_child_starts_with_its_parents_pages_then_keeps_its_own() {
    skip_if!(needs_root_tests());
    let comm = unique_comm("cfork");
    let alias = Alias::new(&comm);
    let mut parent = Workload::spawn_as(&alias.path);
    let mut session = session(TargetSpec::Comm(comm), SMALL);
    assert!(
        session.traces(parent.pid as u32),
        "the parent is not traced"
    );
    let a = Area::map(&mut parent, "a", 8, "nohuge");
    parent.cmd("touch a 0 1024");
    parent.cmd("touch a 1536 1600");
    let mut child = parent.fork();
    assert!(
        session
            .bpf()
            .is_tracked(child.pid as u32)
            .expect("tracked bit"),
        "the programs did not start tracing the child at fork"
    );
    // Its fork record makes userspace seed it: the pages it shares with its parent.
    session.poll().expect("poll");
    assert!(session.traces(child.pid as u32), "the child is not traced");
    assert_map_is_pagemap("the child as seeded", &session, child.pid, &a);
    assert_eq!(
        within(&truth(child.pid), a.addr, 8 << 20),
        within(&truth(parent.pid), a.addr, 8 << 20),
        "right after fork the child maps its parent's pages"
    );
    // From here each one on its own: a copy-on-write break, new pages, drops on both sides.
    child.cmd("touch a 200 300");
    child.cmd("touch a 2000 2048");
    child.cmd("dontneed a 1536 1560");
    parent.cmd("dontneed a 0 100");
    parent.cmd("touch a 1100 1200");
    parent.cmd("unmap a 1580 1600");
    // Before any poll: the programs alone.
    assert_map_is_pagemap("the child after its own changes", &session, child.pid, &a);
    assert_map_is_pagemap("the parent after its own changes", &session, parent.pid, &a);
    let only_child = within(&truth(child.pid), a.addr, 8 << 20);
    let only_parent = within(&truth(parent.pid), a.addr, 8 << 20);
    assert!(
        only_child[&a.region(0)].count() == 512 && only_parent[&a.region(0)].count() == 412,
        "the workloads did not diverge as scripted: child {only_child:?}, parent {only_parent:?}"
    );
    session.poll().expect("poll");
    assert_map_is_pagemap("the child after a poll", &session, child.pid, &a);
    assert_map_is_pagemap("the parent after a poll", &session, parent.pid, &a);
}

/// exec replaces the address space: the old image's regions leave the map, the new image's
/// faults are recorded from its start.
#[test]
fn exec_drops_the_old_image_and_records_the_new() {
    skip_if!(needs_root_tests());
    let mut w = Workload::spawn();
    let mut session = session_for(w.pid);
    let old = Area::map(&mut w, "old", 8, "nohuge");
    w.cmd("touch old 0 2048");
    assert_map_is_pagemap("the old image", &session, w.pid, &old);
    w.exec(&collapse_bin());
    session.poll().expect("poll");
    assert!(session.traces(w.pid as u32), "exec ended the tracing");
    // The new image may have mapped something there by now: pagemap says what.
    let len = old.pages * 4096;
    assert_same(
        "the old image's range after exec",
        &within(&map_regions(&session, w.pid), old.addr, len),
        &within(&truth(w.pid), old.addr, len),
    );
    let new = Area::map(&mut w, "new", 8, "nohuge");
    shape(&mut w, "new");
    assert_map_is_pagemap("the new image", &session, w.pid, &new);
    let (traced, truth) = (snapshot_of(&mut session, w.pid), truth(w.pid));
    assert_same("every region after exec", &traced, &truth);
}

/// The region snapshot of `pid` as `collapse trace --snapshot` would write it now.
fn snapshot_of(session: &mut Session, pid: i32) -> Regions {
    session
        .snapshot()
        .expect("snapshot")
        .into_iter()
        .filter(|r| r.pid == pid)
        .map(|r| (r.addr, r.state.present))
        .collect()
}

/// MAP_FIXED over populated memory drops its pages (cleared by the programs at the mmap's
/// exit); the fresh mapping then fills by faults like any other.
#[test]
fn map_fixed_over_populated_memory_clears_it() {
    skip_if!(needs_root_tests());
    let mut w = Workload::spawn();
    let session = session_for(w.pid);
    let a = Area::map(&mut w, "a", 8, "nohuge");
    w.cmd("touch a 0 2048");
    // Across the boundary of regions 0 and 1, and region 2 whole.
    w.cmd("fixed a 100 700");
    w.cmd("fixed a 1024 1536");
    let mut want = Regions::new();
    let mut r0 = OccupancyBitmap::FULL;
    r0.clear_range(100, 512);
    let mut r1 = OccupancyBitmap::FULL;
    r1.clear_range(0, 700 - 512);
    want.insert(a.region(0), r0);
    want.insert(a.region(1), r1);
    want.insert(a.region(3), OccupancyBitmap::FULL);
    assert_same(
        "pagemap after MAP_FIXED",
        &within(&truth(w.pid), a.addr, 8 << 20),
        &want,
    );
    assert_map_is_pagemap("after MAP_FIXED", &session, w.pid, &a);
    w.cmd("touch a 300 310");
    w.cmd("touch a 1100 1101");
    assert_map_is_pagemap("the fixed mappings faulted again", &session, w.pid, &a);
}

/// mremap shrinking a mapping in place unmaps its tail: its bits go at the call's exit.
#[test]
fn an_mremap_shrink_clears_the_tail() {
    skip_if!(needs_root_tests());
    let mut w = Workload::spawn();
    let mut session = session_for(w.pid);
    let a = Area::map(&mut w, "a", 8, "nohuge");
    w.cmd("touch a 0 2048");
    w.cmd("shrink a 1100");
    let len = a.pages * 4096;
    let mut want = Regions::new();
    for r in 0..2 {
        want.insert(a.region(r), OccupancyBitmap::FULL);
    }
    want.insert(a.region(2), OccupancyBitmap::from_range(0, 1100 - 1024));
    assert_same(
        "pagemap after the shrink",
        &within(&truth(w.pid), a.addr, len),
        &want,
    );
    // The map itself, not the snapshot: the snapshot has nothing past the VMA's new end.
    assert_map_is_pagemap("after the shrink", &session, w.pid, &a);
    session.poll().expect("poll");
    assert_map_is_pagemap("after the shrink and a poll", &session, w.pid, &a);
}

/// `--comm NAME`: a process that execs into the name is traced from then on (seeded, then
/// its faults recorded); when it execs into another name it is no longer traced.
#[test]
fn comm_target_follows_exec_into_and_out_of_the_name() {
    skip_if!(needs_root_tests());
    let comm = unique_comm("ccomm");
    let alias = Alias::new(&comm);
    let mut session = session(TargetSpec::Comm(comm), SMALL);
    let mut w = Workload::spawn();
    let before = Area::map(&mut w, "before", 4, "nohuge");
    w.cmd("touch before 0 1024");
    assert!(
        !session.bpf().is_tracked(w.pid as u32).expect("tracked bit"),
        "a process of another name is traced"
    );
    assert_map_empty("another name", &session, w.pid, before.addr, 4 << 20);

    w.exec(&alias.path);
    assert!(
        session.bpf().is_tracked(w.pid as u32).expect("tracked bit"),
        "exec into the name did not start tracing"
    );
    session.poll().expect("poll");
    assert!(
        session.traces(w.pid as u32),
        "the session did not pick the process up"
    );
    let a = Area::map(&mut w, "a", 8, "nohuge");
    shape(&mut w, "a");
    assert_map_is_pagemap("under the name", &session, w.pid, &a);
    session.poll().expect("poll");
    assert_same(
        "every region under the name",
        &snapshot_of(&mut session, w.pid),
        &truth(w.pid),
    );

    w.exec(&collapse_bin());
    assert!(
        !session.bpf().is_tracked(w.pid as u32).expect("tracked bit"),
        "exec out of the name did not stop tracing"
    );
    session.poll().expect("poll");
    assert!(!session.traces(w.pid as u32), "the session still traces it");
    let after = Area::map(&mut w, "after", 4, "nohuge");
    w.cmd("touch after 0 1024");
    assert_map_empty(
        "after exec out of the name",
        &session,
        w.pid,
        after.addr,
        4 << 20,
    );
}

/// `--all`: a process started after the session is recorded from its first fault without
/// being named; the tracing process's own faults never are.
#[test]
fn all_records_a_fresh_process_but_not_itself() {
    skip_if!(needs_root_tests());
    let mut session = session(TargetSpec::All, Capacity::default());
    let mut w = Workload::spawn();
    let a = Area::map(&mut w, "a", 8, "nohuge");
    shape(&mut w, "a");
    // Before any poll or rescan: nothing in userspace knows this process yet.
    assert_map_is_pagemap("a fresh process under --all", &session, w.pid, &a);
    // Our own memory, faulted while we trace everything.
    let me = std::process::id() as i32;
    let own =
        collapse::workload::Area::map(8 << 20, Some(nix::sys::mman::MmapAdvise::MADV_NOHUGEPAGE))
            .expect("map in the test process");
    own.touch(0, 2048).expect("touch in the test process");
    assert!(
        within(&truth(me), own.addr(), 8 << 20).len() == 4,
        "the test process did not populate its own area"
    );
    assert_map_empty("the tracer's own faults", &session, me, own.addr(), 8 << 20);
    session.rescan().expect("rescan");
    assert!(
        session.traces(w.pid as u32),
        "the rescan did not pick up the fresh process"
    );
    assert!(!session.traces(me as u32), "the session traces itself");
    assert_map_is_pagemap("a fresh process after a rescan", &session, w.pid, &a);
    assert!(
        map_regions(&session, me).is_empty(),
        "the tracer's own regions are in the map"
    );
}

/// The same through the binary: `collapse trace --comm NAME` picks up a process started under
/// that name after it attached, says so, and its snapshot equals pagemap.
#[test]
fn trace_comm_picks_up_a_process_started_later() {
    skip_if!(needs_root_tests());
    let comm = unique_comm("ctrace");
    let alias = Alias::new(&comm);
    let dir = temp_dir("trace-comm");
    let snap = dir.join("snap.jsonl");
    let mut tracer = Tracer::start(&[
        "--comm",
        &comm,
        "--interval",
        "0.2",
        "--events",
        "--snapshot",
        snap.to_str().expect("UTF-8 temp path"),
    ]);
    let mut w = Workload::spawn_as(&alias.path);
    let traced = tracer.wait_for(std::time::Duration::from_secs(30), |v| {
        v["event"] == "traced" && v["pid"] == w.pid
    });
    assert!(
        traced.is_some(),
        "no `traced` line for the process named {comm}: {:?}",
        tracer.seen
    );
    let a = Area::map(&mut w, "a", 8, "nohuge");
    shape(&mut w, "a");
    remap_shape_holes(&mut w, "a");
    let (status, _) = tracer.stop();
    assert!(status.success(), "collapse trace exited with {status}");
    let snapshot = snapshot_regions(&snap, w.pid);
    assert_same_mapping_and_process(
        "a process traced by its comm",
        &snapshot,
        &truth(w.pid),
        a.addr,
        8 << 20,
    );
    let _ = std::fs::remove_dir_all(dir);
}
